import sys

from silobox.kernel.entry import main

sys.exit(main(sys.argv[1:]))
