"""``candlejax.vision``: image I/O, transforms, detections and drawing (PIL in, Tensor out).

requires: numpy, PIL, jax.image, candlejax.tensor
provides: ``load_image``, ``open_rgb``, ``image_to_tensor``, ``resize_center_crop``, ``imagenet_normalize``,
``letterbox``, ``Letterbox``, ``scale_boxes``, ``scale_keypoints``, ``Detections``, ``nms``,
``draw_detections``, ``IMAGENET_CLASSES``; transformers' processor steps ``as_image``, ``resize``,
``resize_shortest``, ``center_crop``, ``normalize`` (``OPENAI_CLIP_MEAN``, ``OPENAI_CLIP_STD``);
the datasets of ``candlejax.data.vision``
(``load_mnist``, ``load_digits``, ``VisionDataset``) are re-exported.

Candle: ``candle_examples::imagenet::load_image224`` (= ``imagenet_normalize(resize_center_crop(
load_image(p), 224))``), ``candle_examples::load_image`` and the yolo-v8 example's ``report_detect``.
"""

from candlejax.data.vision import VisionDataset, load_digits, load_mnist
from candlejax.vision._draw import COCO_SKELETON, draw_detections
from candlejax.vision._image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageError,
    Letterbox,
    check_image,
    image_to_tensor,
    imagenet_normalize,
    letterbox,
    load_image,
    load_image224,
    open_rgb,
    resize_center_crop,
    scale_boxes,
    scale_keypoints,
)
from candlejax.vision._nms import Detections, nms, nms_arrays
from candlejax.vision._processors import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    as_image,
    as_pixel_batch,
    center_crop,
    normalize,
    resize,
    resize_shortest,
)
from candlejax.vision.imagenet import IMAGENET_CLASSES

__all__ = [
    "COCO_SKELETON", "IMAGENET_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "Detections", "ImageError", "Letterbox",
    "check_image", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "as_image", "as_pixel_batch", "center_crop", "normalize",
    "resize", "resize_shortest",
    "VisionDataset", "draw_detections", "image_to_tensor", "imagenet_normalize", "letterbox", "load_digits",
    "load_image", "load_image224", "load_mnist", "nms", "nms_arrays", "open_rgb",
    "resize_center_crop", "scale_boxes", "scale_keypoints",
]  # fmt: skip
