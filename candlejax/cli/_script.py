"""What the vision sub-commands share with their ``python -m candlejax.models.X`` entry points:
argument checks, and one ``error: ...`` line on stderr (exit status 1) for a user error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from candlejax import errors
from candlejax.cli._help import HelpFormatter
from candlejax.cli.generate import _count as count
from candlejax.cli.generate import _number as number
from candlejax.xla import enable_compilation_cache

__all__ = ["add_image_argument", "count", "image_argument", "number", "parser", "run_script"]


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=HelpFormatter)  # fmt: skip


def add_image_argument(p: argparse.ArgumentParser, help: str, many: bool = False) -> None:
    """The image as the command's argument (``many``: one or more), or as ``--image FILE`` (repeatable
    with ``many``), the spelling of Candle's resnet, blip and segment-anything examples; read it
    with :func:`image_argument`."""
    p.add_argument("image", nargs="*" if many else "?", help=f"{help} (or --image)")
    p.add_argument("--image", dest="image_option", action="append", metavar="IMAGE",
                   help="the image, as Candle's examples take it" + (" (repeatable)" if many else ""))  # fmt: skip


def image_argument(args: argparse.Namespace, many: bool = False) -> Any:
    """The image path of :func:`add_image_argument` (``many``: the list of them); a clear error when
    there is none, or when both spellings (or, without ``many``, two ``--image``) are given."""
    pos = [] if args.image is None else [args.image] if isinstance(args.image, str) else list(args.image)
    opt = list(args.image_option or [])
    if not pos and not opt:
        raise errors.Msg("no image: give IMAGE (or --image IMAGE)")
    if (pos and opt) or (not many and len(opt) > 1):
        raise errors.Msg(f"the image twice ({', '.join(pos + opt)}): give IMAGE or --image IMAGE"
                         + ("" if many else ", once"))  # fmt: skip
    return pos + opt if many else (pos + opt)[0]


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
