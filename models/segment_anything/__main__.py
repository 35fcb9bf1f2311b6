"""``python -m candlejax.models.segment_anything IMAGE --point X,Y [--auto] --out mask.png``: the
command line of :mod:`candlejax.cli.segment` (``candlejax segment``)."""

from candlejax.cli.segment import sam_main as main

if __name__ == "__main__":
    raise SystemExit(main())
