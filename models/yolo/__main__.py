"""``python -m candlejax.models.yolo detect|pose|convert ...``: the command line of :mod:`candlejax.cli.detect`."""

if __name__ == "__main__":
    from candlejax.cli.detect import yolo_main

    raise SystemExit(yolo_main())
