"""``candlejax caption IMAGE... --model DIR [--prompt TEXT]``: caption images with BLIP (= ``python -m
candlejax.models.blip caption``; Candle's ``blip`` example). ``DIR`` holds a
``BlipForConditionalGeneration`` checkpoint: ``config.json``, ``*.safetensors``, ``tokenizer.json``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from candlejax import errors
from candlejax.cli._help import HelpFormatter
from candlejax.cli._script import add_image_argument, count, image_argument, number, parser, run_script

__all__ = ["add_arguments", "blip_main", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_image_argument(p, "image files (several: captioned together, greedy)", many=True)
    p.add_argument("--model", required=True,
                   help="folder with config.json, *.safetensors (or one .gguf: quantized BLIP), tokenizer.json")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the one in --model)")
    p.add_argument("--max-new-tokens", type=count(1), default=30, help="the most caption tokens")
    p.add_argument("--temperature", type=number(0.0), default=None, help="sample at this temperature (default: greedy)")
    p.add_argument("--top-p", type=number(0.0, 1.0, lo_open=True), default=None, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=299792458, help="sampling seed")
    p.add_argument("--prompt", default=None,
                   help='conditional captioning: the caption begins with this text ("a photography of")')
    p.add_argument("--ids", action="store_true", help="also print the token ids")


def run(args: argparse.Namespace) -> int:
    from candlejax.pipelines import ImageCaptioner

    images = image_argument(args, many=True)
    if args.top_p is not None and not args.temperature:  # (0 is greedy too, as Candle's LogitsProcessor)
        raise errors.Msg("--top-p needs --temperature > 0 (without one, decoding is greedy)")
    cap = ImageCaptioner.from_pretrained(args.model, args.tokenizer, max_new_tokens=args.max_new_tokens,
                                         temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                                         prompt=args.prompt)  # fmt: skip
    rows = cap.ids(images) if len(images) > 1 else [cap.ids(images[0])]
    for row in rows:
        print(cap.decode(row))  # type: ignore[arg-type]
        if args.ids:
            print("ids:", " ".join(map(str, row)))  # type: ignore[arg-type]
    return 0


def blip_main(argv: Sequence[str] | None = None) -> int:
    """``python -m candlejax.models.blip caption IMAGE... --model DIR [--prompt TEXT] [--max-new-tokens N] [--ids]``."""
    p = parser("python -m candlejax.models.blip", "BLIP image captioning")
    sub = p.add_subparsers(dest="cmd", required=True)
    fmt = HelpFormatter
    add_arguments(sub.add_parser("caption", help="caption an image", formatter_class=fmt))
    return run_script(p, argv, run)
