"""The ``candlejax`` console script: ``candlejax COMMAND ...``.

    candlejax embed --model DIR "a sentence" ...            # = python -m candlejax.models.bert embed
    candlejax generate --gguf FILE --prompt "..." -n 128     # = python -m candlejax.models.llama generate
    candlejax chat --gguf FILE                               # interactive, history kept in the KV cache
    candlejax llama2-c --config FILE.bin --tokenizer FILE    # sample from a llama2.c model (or .gguf)
    candlejax transcribe FILE.wav --timestamps               # = python -m candlejax.models.whisper transcribe
    candlejax classify IMAGE --weights resnet50.safetensors  # = python -m candlejax.models.resnet classify
    candlejax detect IMAGE --weights yolo11n-pose.pt         # = python -m candlejax.models.yolo detect|pose
    candlejax caption IMAGE... --model DIR [--prompt TEXT]   # = python -m candlejax.models.blip caption
    candlejax clip IMAGE --model DIR --labels "a cat,a dog"  # = python -m candlejax.models.clip
    candlejax segment IMAGE --point 0.5,0.5                  # = python -m candlejax.models.segment_anything
    candlejax demo                                           # = python -m candlejax.demo

User errors (a candlejax error, a missing file, a bad value) print one line on stderr and exit 1;
``--debug`` shows the traceback. Compiled programs are kept on disk for the next run
(:func:`candlejax.xla.enable_compilation_cache`; ``CANDLEJAX_COMPILATION_CACHE=0`` turns that off,
``CANDLEJAX_COMPILATION_CACHE=DIR`` moves it).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from candlejax import __version__, errors
from candlejax.cli._help import HelpFormatter, add_cpu_argument, use_cpu_if_asked
from candlejax.xla import enable_compilation_cache, limit_malloc_arenas

#: sub-command -> (module, help); each module has ``add_arguments(parser)`` and ``run(args) -> int``
_COMMANDS = {
    "embed": ("candlejax.cli.embed", "sentence embeddings with a BERT model (mean pooling + L2 normalisation)"),
    "generate": ("candlejax.cli.generate", "generate text with a LLaMA-family model, streaming tokens"),
    "chat": ("candlejax.cli.chat", "interactive chat with a LLaMA-family model, history kept in the KV cache"),
    "llama2-c": ("candlejax.cli.llama2_c", "sample text from a llama2.c model (.bin, .gguf), streaming tokens"),
    "transcribe": ("candlejax.cli.transcribe", "transcribe speech with Whisper (tiny.en by default)"),
    "classify": ("candlejax.cli.classify", "the top ImageNet classes of an image with a ResNet"),
    "detect": ("candlejax.cli.detect", "detect objects (or poses) with YOLOv8 / YOLO11 and draw them"),
    "caption": ("candlejax.cli.caption", "caption an image with BLIP"),
    "clip": ("candlejax.cli.zero_shot", "zero-shot label probabilities for an image with CLIP"),
    "segment": ("candlejax.cli.segment", "Segment Anything masks for points, a box or the whole image"),
    "demo": ("candlejax.demo", "the main demo (an MLP and a CNN on the 8x8 digits; candlejax demo -- --help)"),
}


def parser(prog: str = "candlejax") -> argparse.ArgumentParser:
    """The console script's ``argparse`` parser: one sub-parser per command, ``--version``, ``--debug``."""
    p = argparse.ArgumentParser(prog=prog, description="candlejax: Candle's models on JAX, from the command line",
                                formatter_class=HelpFormatter)  # fmt: skip
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in _COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text,
                            formatter_class=HelpFormatter)  # fmt: skip
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback on errors")
        if module == "candlejax.demo":
            sp.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to python -m candlejax.demo")
        else:
            importlib.import_module(module).add_arguments(sp)
            add_cpu_argument(sp)
    return p


def main(argv: Sequence[str] | None = None, prog: str = "candlejax") -> int:
    """Run one sub-command; returns the exit status (130 after a Ctrl-C, at any point)."""
    try:  # (a Ctrl-C during `import candlejax` exits 130 there: candlejax._sigint)
        args = parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    if args.command in ("generate", "chat"):
        # one glibc heap for all threads, set before XLA's threads start: the compiler's freed heap
        # is reused rather than spread over per-thread arenas (docs/performance.md)
        limit_malloc_arenas(1)
    try:
        use_cpu_if_asked(args)
        enable_compilation_cache()  # programs compiled by an earlier run load from disk
        if args.command == "demo":
            rest = [a for a in args.rest if a != "--"]
            return int(importlib.import_module("candlejax.demo").main(rest) or 0)
        return int(importlib.import_module(_COMMANDS[args.command][0]).run(args) or 0)
    except (errors.Error, OSError, ValueError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"candlejax {args.command}: error: {e} (--debug shows the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
