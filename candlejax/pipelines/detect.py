"""YOLO object detection for serving: a model and its thresholds in one object, plus drawing.

requires: candlejax.models.yolo, candlejax.vision
provides: ``ObjectDetector``
"""

from __future__ import annotations

import os
from typing import Any

from candlejax import errors, vision
from candlejax.models import yolo
from candlejax.tensor import float_arg

__all__ = ["ObjectDetector"]


class ObjectDetector:
    """``ObjectDetector(model, conf=0.25, iou=0.45, imgsz=640)``: ``det(image)`` -> ``Detections``
    (:func:`candlejax.models.yolo.detect`; a list of images -> a list); ``det.annotate(image, dets)``
    draws them (a PIL image). transformers: ``pipeline("object-detection")``; Ultralytics: ``YOLO(...).predict``."""

    def __init__(self, model: yolo.YoloV8, conf: float = 0.25, iou: float = 0.45,
                 imgsz: int | tuple[int, int] = 640):  # fmt: skip
        self.model, self.imgsz = model, yolo.imgsz_arg(imgsz, "ObjectDetector")
        self.conf, self.iou = float_arg(conf, "ObjectDetector", "conf"), float_arg(iou, "ObjectDetector", "iou")

    def __repr__(self) -> str:
        return (f"ObjectDetector(model={type(self.model).__name__}, conf={self.conf}, iou={self.iou},"
                f" imgsz={self.imgsz})")  # fmt: skip

    @classmethod
    def from_file(cls, weights: str | os.PathLike, *, conf: float = 0.25, iou: float = 0.45,
                  imgsz: int | tuple[int, int] = 640,
                  **load: Any) -> ObjectDetector:  # fmt: skip
        """Ultralytics weights (``.pt`` or ``.safetensors``); ``load``: the keywords of
        :func:`~candlejax.models.yolo.load` (``which``, ``version``, ``task``, ...)."""
        return cls(yolo.load(weights, **load), conf, iou, imgsz)

    @property
    def names(self) -> tuple[str, ...]:
        """The model's class names, by class index."""
        return tuple(self.model.names)

    def __call__(self, image: Any) -> vision.Detections | list[vision.Detections]:
        """One image -> its ``Detections``; a list (or tuple) of images -> one ``Detections`` per image,
        in order (transformers' object-detection pipeline and Ultralytics' ``predict`` take lists too)."""
        if isinstance(image, list | tuple):
            if not image:
                raise errors.InvalidArgument("ObjectDetector: an empty list of images")
            return [self(im) for im in image]
        return yolo.detect(self.model, image, conf=self.conf, iou=self.iou, imgsz=self.imgsz)

    def annotate(self, image: Any, dets: vision.Detections) -> Any:
        """The image with the boxes (and keypoints) drawn, as a ``PIL.Image``."""
        return vision.draw_detections(vision.as_image(image, "ObjectDetector.annotate"), dets, self.model.names)
