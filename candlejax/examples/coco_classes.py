"""``candle_examples::coco_classes``: the 80 COCO class names in darknet spelling (``"motorbike"``,
``"aeroplane"``, ...), in the class-index order of YOLO checkpoints.

requires: candlejax.models.yolo
provides: ``NAMES``
"""

from __future__ import annotations

from candlejax.models.yolo import COCO_NAMES

NAMES: tuple[str, ...] = COCO_NAMES

__all__ = ["NAMES"]
