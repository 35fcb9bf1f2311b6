"""Candle's ``candle_transformers::object_detection``: ``Bbox``, ``KeyPoint``, ``iou``,
``non_maximum_suppression`` and ``soft_non_maximum_suppression`` on host lists of boxes.

These are the per-class box lists Candle's YOLO examples build after the forward pass
(``bboxes[class].append(Bbox(...))``), filtered in place as Candle's ``&mut [Vec<Bbox<D>>]``. The
arithmetic is f32, as Candle's, and ``iou`` counts the edge pixels (``xmax - xmin + 1``), as Candle
does. For detections as arrays (batched, jit-friendly, torchvision's ``iou`` convention), use
:func:`candlejax.vision.nms`.

>>> from candlejax.models.object_detection import Bbox, non_maximum_suppression
>>> boxes = [[Bbox(0, 0, 10, 10, 0.9), Bbox(1, 1, 10, 10, 0.8), Bbox(20, 20, 30, 30, 0.7)]]
>>> non_maximum_suppression(boxes, 0.5)
>>> [b.confidence for b in boxes[0]]
[0.9, 0.7]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import MutableSequence
from typing import Any

import numpy as np

from candlejax import errors

__all__ = ["Bbox", "KeyPoint", "iou", "non_maximum_suppression", "soft_non_maximum_suppression"]

_F32 = np.float32


@dataclasses.dataclass
class Bbox:
    """A detected box with its confidence and any ``data`` (e.g. a list of :class:`KeyPoint`).
    Candle: ``Bbox<D> { xmin, ymin, xmax, ymax, confidence, data }``."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    confidence: float
    data: Any = None


@dataclasses.dataclass
class KeyPoint:
    """A pose key point: position and visibility score. Candle: ``KeyPoint { x, y, mask }``."""

    x: float
    y: float
    mask: float


def iou(b1: Bbox, b2: Bbox) -> float:
    """Intersection over union, in f32, with Candle's inclusive pixel edges (``width = xmax - xmin
    + 1``). Candle: ``object_detection::iou(&b1, &b2)``."""
    one = _F32(1)
    a1 = (_F32(b1.xmax) - _F32(b1.xmin) + one) * (_F32(b1.ymax) - _F32(b1.ymin) + one)
    a2 = (_F32(b2.xmax) - _F32(b2.xmin) + one) * (_F32(b2.ymax) - _F32(b2.ymin) + one)
    iw = max(min(_F32(b1.xmax), _F32(b2.xmax)) - max(_F32(b1.xmin), _F32(b2.xmin)) + one, _F32(0))
    ih = max(min(_F32(b1.ymax), _F32(b2.ymax)) - max(_F32(b1.ymin), _F32(b2.ymin)) + one, _F32(0))
    inter = iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(inter / (a1 + a2 - inter))


def _sorted_by_confidence(boxes: MutableSequence[Bbox], where: str) -> None:
    for i, b in enumerate(boxes):
        if math.isnan(float(b.confidence)):
            raise errors.Msg(f"{where}: box {i} has a NaN confidence ({b})")
    boxes.sort(key=lambda b: float(b.confidence), reverse=True)  # stable, as Candle's sort_by


def _check_lists(bboxes: Any, where: str) -> None:
    if not isinstance(bboxes, MutableSequence) or not all(isinstance(c, MutableSequence) for c in bboxes):
        raise errors.Msg(
            f"{where}: expected a list with one list of Bbox per class (filtered in place), got {type(bboxes).__name__}"
        )


def non_maximum_suppression(bboxes: MutableSequence[MutableSequence[Bbox]], threshold: float) -> None:
    """Keep, in each class's list, the boxes that overlap no higher-confidence kept box by more
    than ``threshold`` IoU; each list ends sorted by confidence, highest first. In place, as
    Candle's ``non_maximum_suppression(&mut bboxes, threshold)``; returns ``None``."""
    _check_lists(bboxes, "non_maximum_suppression")
    t = _F32(threshold)
    for boxes in bboxes:
        _sorted_by_confidence(boxes, "non_maximum_suppression")
        kept: list[Bbox] = []
        for b in boxes:
            if all(not _F32(iou(k, b)) > t for k in kept):
                kept.append(b)
        boxes[:] = kept


def soft_non_maximum_suppression(
    bboxes: MutableSequence[MutableSequence[Bbox]],
    iou_threshold: float | None = None,
    confidence_threshold: float | None = None,
    sigma: float | None = None,
) -> None:
    """Soft-NMS (Bodla et al., https://arxiv.org/abs/1704.04503) as Candle computes it: each class's
    boxes are sorted by confidence; a box overlapping a higher one by more than ``iou_threshold``
    (default 0.5) gets its original confidence times ``exp(-iou² / sigma)`` (default sigma 0.5; the
    last such higher box decides); confidences below ``confidence_threshold`` (default 0.1) become
    0. Boxes are kept. In place on each :class:`Bbox`, as Candle's
    ``soft_non_maximum_suppression(&mut bboxes, iou_threshold, confidence_threshold, sigma)``."""
    _check_lists(bboxes, "soft_non_maximum_suppression")
    t_iou = _F32(0.5 if iou_threshold is None else iou_threshold)
    t_conf = _F32(0.1 if confidence_threshold is None else confidence_threshold)
    s = _F32(0.5 if sigma is None else sigma)
    for boxes in bboxes:
        _sorted_by_confidence(boxes, "soft_non_maximum_suppression")
        updated: list[Any] = [None] * len(boxes)  # the decayed confidences; None: unchanged
        for i, cur in enumerate(boxes):
            for j in range(i + 1, len(boxes)):
                v = _F32(iou(cur, boxes[j]))
                if v > t_iou:
                    updated[j] = _F32(boxes[j].confidence) * np.exp(-v * v / s, dtype=_F32)
        for b, c in zip(boxes, updated, strict=True):
            if (_F32(b.confidence) if c is None else c) < t_conf:
                b.confidence = 0.0
            elif c is not None:  # a box no higher box overlaps keeps its confidence as given
                b.confidence = float(c)
