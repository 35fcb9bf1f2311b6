"""``candle_examples::imagenet``: ImageNet preprocessing and class names.

requires: candlejax.vision
provides: ``IMAGENET_MEAN``, ``IMAGENET_STD``, ``load_image_with_std_mean``, ``load_image``,
``load_image224``, ``load_image518``, ``CLASS_COUNT``, ``CLASSES``

Images are scaled so that the shorter side is ``res`` (bilinear, antialiased: the ``image`` crate's
``resize_to_fill(res, res, Triangle)``), centre-cropped to ``res x res``, then normalised:
``(3, res, res)`` f32 on the CPU.

``CLASSES`` holds torchvision's short class names (``"tench"``, ``"goldfish"``); Candle's strings are
the full WordNet synonym lists (``"tench, Tinca tinca"``), whose first name is the short one for
998 of the 1,000 classes (the others: ``"crane bird"``, ``"maillot tank suit"``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from candlejax import vision
from candlejax.tensor import int_arg

IMAGENET_MEAN: tuple[float, float, float] = vision.IMAGENET_MEAN
IMAGENET_STD: tuple[float, float, float] = vision.IMAGENET_STD
CLASS_COUNT: int = 1000
CLASSES: tuple[str, ...] = vision.IMAGENET_CLASSES

__all__ = [
    "CLASSES", "CLASS_COUNT", "IMAGENET_MEAN", "IMAGENET_STD", "load_image", "load_image224", "load_image518",
    "load_image_with_std_mean",
]  # fmt: skip


def load_image_with_std_mean(p: str | os.PathLike[str], res: int, mean: Sequence[float], std: Sequence[float]) -> Any:
    """``(3, res, res)`` f32: the image at ``p`` resized and cropped to ``res x res``, then
    ``(x / 255 - mean) / std`` per channel. Raises :class:`candlejax.vision.ImageError` naming the
    file when it is missing or not an image."""
    res = int_arg(res, "imagenet.load_image", "res")
    return vision.normalize(vision.resize_center_crop(vision.load_image(p), res), mean, std)


def load_image(p: str | os.PathLike[str], res: int) -> Any:
    """``(3, res, res)`` f32 with ImageNet's mean and std."""
    return load_image_with_std_mean(p, res, IMAGENET_MEAN, IMAGENET_STD)


def load_image224(p: str | os.PathLike[str]) -> Any:
    """``(3, 224, 224)`` f32 with ImageNet's mean and std (= :func:`candlejax.vision.load_image224`)."""
    return load_image(p, 224)


def load_image518(p: str | os.PathLike[str]) -> Any:
    """``(3, 518, 518)`` f32 with ImageNet's mean and std (DINOv2 with registers: 37 x 37 patches)."""
    return load_image(p, 518)
