"""Ctrl-C while candlejax imports JAX: delivered when the import ends, never lost or shown as a traceback wall.

requires: the standard library only (imported first, before JAX)
provides: ``defer``, ``restore``

A SIGINT that lands while ``import jax`` runs can be raised inside JAX's garbage-collection callback,
where Python prints "Exception ignored in ... KeyboardInterrupt" and goes on. ``defer()`` swaps
Python's default handler for one that notes the signal; ``restore()`` puts the default back and then
raises ``KeyboardInterrupt`` (a ``candlejax`` command line: exits 130 quietly, as after a Ctrl-C
later on). A handler someone else installed is left alone.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

_fired = False
_depth = 0


def _note(signum: int, frame: Any) -> None:
    global _fired
    _fired = True


def _is_command_line() -> bool:
    """``candlejax ...`` (the console script) or ``python -m candlejax...``."""
    argv = list(getattr(sys, "orig_argv", ()))
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1].split(".")[0] == "candlejax"
    return os.path.basename(sys.argv[0] if sys.argv else "") in ("candlejax", "candlejax.exe")


def defer() -> None:
    """Note a SIGINT instead of raising it, until the matching :func:`restore` (nests)."""
    global _depth
    if _depth:
        _depth += 1
        return
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:  # ignored, or the program's own
        return
    signal.signal(signal.SIGINT, _note)
    _depth = 1


def restore() -> None:
    """Put Python's handler back; a SIGINT noted meanwhile raises ``KeyboardInterrupt`` now
    (``SystemExit(130)`` on a candlejax command line)."""
    global _depth, _fired
    if not _depth:
        return
    _depth -= 1
    if _depth:
        return
    if signal.getsignal(signal.SIGINT) is _note:  # (unless the program installed its own meanwhile)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _fired:
        _fired = False
        if _is_command_line():
            sys.stderr.write("\n")
            raise SystemExit(130)
        raise KeyboardInterrupt
