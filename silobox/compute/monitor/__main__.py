import sys

from silobox.compute.monitor import main

sys.exit(main(sys.argv[1:]))
