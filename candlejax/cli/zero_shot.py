"""``candlejax clip IMAGE --model DIR --labels "a,b,c"``: CLIP zero-shot label probabilities
(= ``python -m candlejax.models.clip``; Candle's ``clip`` example, whose ``--images a.jpg,b.jpg``
and ``--sequences`` spellings are taken too). ``DIR`` holds a ``CLIPModel`` checkpoint:
``config.json``, ``model.safetensors`` (or shards) and ``tokenizer.json``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from candlejax.cli._script import add_image_argument, image_argument, parser, run_script

__all__ = ["add_arguments", "clip_main", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_image_argument(p, "image files (each ranked on its own)", many=True, flag="--images",
                       what="the images, comma-separated")  # fmt: skip
    p.add_argument("--model", required=True, help="folder with config.json, *.safetensors, tokenizer.json")
    p.add_argument("--labels", "--sequences", required=True,
                   help='comma-separated labels, e.g. "a cat,a dog" (--sequences: Candle\'s spelling)')  # fmt: skip
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the one in --model)")


def run(args: argparse.Namespace) -> int:
    from candlejax.pipelines import ZeroShotClassifier

    opt = args.image_option
    args.image_option = opt and [f for v in opt for f in v.split(",") if f]  # Candle's use_value_delimiter
    images = image_argument(args, many=True, flag="--images")
    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    clf = ZeroShotClassifier.from_pretrained(args.model, args.tokenizer)
    ranked = clf(images[0], labels) if len(images) == 1 else clf(images, labels)
    width = max(len(s) for s in labels)
    for path, ranking in [(None, ranked)] if len(images) == 1 else zip(images, ranked, strict=True):
        if path is not None:
            print(f"{path}:")
        for lab, pr in ranking:
            print(f"{lab:<{width}} : {pr:.6f}")
    return 0


def clip_main(argv: Sequence[str] | None = None) -> int:
    """``python -m candlejax.models.clip IMAGE... --model DIR --labels "a,b,c" [--tokenizer FILE]``."""
    p = parser("python -m candlejax.models.clip", "CLIP zero-shot image classification")
    add_arguments(p)
    return run_script(p, argv, run)
