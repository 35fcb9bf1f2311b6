"""``candlejax classify IMAGE --weights FILE``: the top ImageNet classes of an image with a ResNet
(= ``python -m candlejax.models.resnet classify``; Candle's ``resnet`` example)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from candlejax.cli._help import HelpFormatter
from candlejax.cli._script import add_image_argument, count, image_argument, parser, run_script

__all__ = ["add_arguments", "resnet_main", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_image_argument(p, "an image file")
    p.add_argument("--weights", "--model", required=True,
                   help="ResNet safetensors, torchvision/timm or HF names (--model: Candle's spelling)")  # fmt: skip
    p.add_argument("--which", choices=("18", "34", "50", "101", "152"), default=None,
                   help="ResNet depth (default: read from the weights)")  # fmt: skip
    p.add_argument("--top", type=count(1), default=5, help="how many classes to print")


def run(args: argparse.Namespace) -> int:
    from candlejax.models import resnet
    from candlejax.vision import IMAGENET_CLASSES, load_image224

    image = image_argument(args)
    net = resnet.load(args.weights, 1000, args.which)
    logits = resnet.forward_jit(net, load_image224(image).unsqueeze(0)).numpy()[0]
    pr = np.exp(logits - logits.max())
    pr /= pr.sum()
    for i in np.argsort(-pr, kind="stable")[: args.top]:  # ties in class order, as Candle's sort_by
        print(f"{IMAGENET_CLASSES[i]:40s}: {100 * pr[i]:5.2f}%")
    return 0


def resnet_main(argv: Sequence[str] | None = None) -> int:
    """``python -m candlejax.models.resnet classify IMAGE --weights FILE [--which 18|34|50|101|152]``."""
    p = parser("python -m candlejax.models.resnet", "ResNet image classification (ImageNet classes)")
    sub = p.add_subparsers(dest="cmd", required=True)
    add_arguments(sub.add_parser("classify", help="the top ImageNet classes of an image",
                                 formatter_class=HelpFormatter))  # fmt: skip
    return run_script(p, argv, run)
