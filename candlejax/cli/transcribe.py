"""``candlejax transcribe``: speech to text with Whisper (= ``python -m candlejax.models.whisper transcribe``)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from candlejax.models.whisper.__main__ import add_arguments as whisper_arguments

    whisper_arguments(p)


def run(args: argparse.Namespace) -> int:
    from candlejax.models.whisper.__main__ import run as whisper_run

    return whisper_run(args)
