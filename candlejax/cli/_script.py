"""What the vision sub-commands share with their ``python -m candlejax.models.X`` entry points:
argument checks, and one ``error: ...`` line on stderr (exit status 1) for a user error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from candlejax import errors
from candlejax.cli._help import HelpFormatter, add_cpu_argument, use_cpu_if_asked
from candlejax.cli.generate import _count as count
from candlejax.cli.generate import _number as number
from candlejax.xla import enable_compilation_cache

__all__ = ["add_image_argument", "count", "image_argument", "number", "parser", "run_script"]


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=HelpFormatter)  # fmt: skip


def add_image_argument(p: argparse.ArgumentParser, help: str, many: bool = False, dest: str = "image",
                       flag: str = "--image", what: str = "the image") -> None:  # fmt: skip
    """The image as the command's argument ``dest`` (``many``: one or more), or as ``--image FILE``
    (repeatable with ``many``), the spelling of Candle's resnet, blip and segment-anything examples
    (``flag``: another spelling, such as whisper's ``--input``); read it with :func:`image_argument`."""
    p.add_argument(dest, nargs="*" if many else "?", help=f"{help} (or {flag})")
    p.add_argument(flag, dest=f"{dest}_option", action="append", metavar=dest.upper(),
                   help=f"{what}, as Candle's examples take it" + (" (repeatable)" if many else ""))  # fmt: skip


def image_argument(args: argparse.Namespace, many: bool = False, dest: str = "image", flag: str = "--image",
                   what: str = "image") -> Any:  # fmt: skip
    """The path of :func:`add_image_argument` (``many``: the list of them); a clear error when there
    is none, or when both spellings (or, without ``many``, two ``flag``) are given."""
    val, meta = getattr(args, dest), dest.upper()
    pos = [] if val is None else [val] if isinstance(val, str) else list(val)
    opt = list(getattr(args, f"{dest}_option") or [])
    if not pos and not opt:
        raise errors.Msg(f"no {what}: give {meta} (or {flag} {meta})")
    if (pos and opt) or (not many and len(opt) > 1):
        raise errors.Msg(f"the {what} twice ({', '.join(pos + opt)}): give {meta} or {flag} {meta}"
                         + ("" if many else ", once"))  # fmt: skip
    return pos + opt if many else (pos + opt)[0]


def _subparsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The sub-command parsers of ``p`` (one parser per command, aliases once)."""
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return list({id(q): q for a in subs for q in a.choices.values()}.values())


def run_script(p: argparse.ArgumentParser, argv: Sequence[str] | None, run: Callable[[argparse.Namespace], int]) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run; a candlejax error, a missing file or a bad
    value prints ``error: ...`` and returns 1 (``--debug`` shows the traceback)."""
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    add_cpu_argument(p)
    for sub in _subparsers(p):  # after a sub-command's arguments too, as Candle's examples take them anywhere
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show the full traceback on errors")  # fmt: skip
        add_cpu_argument(sub, default=argparse.SUPPRESS)
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    use_cpu_if_asked(args)
    enable_compilation_cache()
    try:
        return int(run(args) or 0)
    except (errors.Error, OSError, ValueError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
