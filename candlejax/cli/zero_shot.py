"""``candlejax clip IMAGE --model DIR --labels "a,b,c"``: CLIP zero-shot label probabilities
(= ``python -m candlejax.models.clip``; Candle's ``clip`` example). ``DIR`` holds a ``CLIPModel``
checkpoint: ``config.json``, ``model.safetensors`` (or shards) and ``tokenizer.json``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from candlejax.cli._script import parser, run_script

__all__ = ["add_arguments", "clip_main", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="an image file")
    p.add_argument("--model", required=True, help="folder with config.json, *.safetensors, tokenizer.json")
    p.add_argument("--labels", "--sequences", required=True,
                   help='comma-separated labels, e.g. "a cat,a dog" (--sequences: Candle\'s spelling)')  # fmt: skip
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the one in --model)")


def run(args: argparse.Namespace) -> int:
    from candlejax.pipelines import ZeroShotClassifier

    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    clf = ZeroShotClassifier.from_pretrained(args.model, args.tokenizer)
    ranked = clf(args.image, labels)
    width = max(len(s) for s in labels)
    for lab, pr in ranked:
        print(f"{lab:<{width}} : {pr:.6f}")
    return 0


def clip_main(argv: Sequence[str] | None = None) -> int:
    """``python -m candlejax.models.clip IMAGE --model DIR --labels "a,b,c" [--tokenizer FILE]``."""
    p = parser("python -m candlejax.models.clip", "CLIP zero-shot image classification")
    add_arguments(p)
    return run_script(p, argv, run)
