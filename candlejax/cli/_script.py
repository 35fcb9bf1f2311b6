"""What the vision sub-commands share with their ``python -m candlejax.models.X`` entry points:
argument checks, and one ``error: ...`` line on stderr (exit status 1) for a user error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from candlejax import errors
from candlejax.cli._help import HelpFormatter
from candlejax.cli.generate import _count as count
from candlejax.cli.generate import _number as number
from candlejax.xla import enable_compilation_cache

__all__ = ["count", "number", "parser", "run_script"]


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=HelpFormatter)  # fmt: skip


def run_script(p: argparse.ArgumentParser, argv: Sequence[str] | None, run: Callable[[argparse.Namespace], int]) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run; a candlejax error, a missing file or a bad
    value prints ``error: ...`` and returns 1 (``--debug`` shows the traceback)."""
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    enable_compilation_cache()
    try:
        return int(run(args) or 0)
    except (errors.Error, OSError, ValueError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
