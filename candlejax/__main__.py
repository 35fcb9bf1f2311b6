import sys

from candlejax.cli import main

raise SystemExit(main(sys.argv[1:]))
