"""``python -m silobox.daemon``: run silod."""

from silobox.daemon.main import main

main()
