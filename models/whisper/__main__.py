"""``python -m candlejax.models.whisper transcribe FILE.wav [--model DIR] [--timestamps]``: the command
line of :mod:`candlejax.cli.transcribe` (``candlejax transcribe``)."""

from candlejax.cli.transcribe import add_arguments, run
from candlejax.cli.transcribe import whisper_main as main
from candlejax.models.whisper import default_model_dir

__all__ = ["add_arguments", "default_model_dir", "main", "run"]

if __name__ == "__main__":
    raise SystemExit(main())
