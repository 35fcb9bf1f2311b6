"""YOLOv8 (detect, pose) and YOLO11 (pose, detect) (~ Candle's ``yolo-v8`` example, Ultralytics' modules).

The network is in :mod:`~candlejax.models.yolo.model` (Candle's ``model.rs`` classes on Ultralytics'
tensor names; files of Candle's example, with Candle's names, load too: :mod:`~candlejax.models.yolo.naming`);
loading and detection in :mod:`~candlejax.models.yolo.predict`::

    det = yolo.load("yolov8n.safetensors", version="v8", which="n", task="detect", num_classes=80)
    det = yolo.YoloV8.load(vb, yolo.Multiples.n(), 80)    # as Candle's example: Ultralytics' or Candle's names
    det = yolo.load("yolo11n-pose.pt")                    # an Ultralytics checkpoint (read without pickle code)
    raw = det.forward(x)                                  # (B, 3, H, W) f32 in [0, 1] -> (B, 4 + nc [+ K*3], A)
    dets = yolo.detect(det, img, conf=0.25, iou=0.45)     # letterbox, forward + NMS under one jax.jit, un-letterbox

``raw`` is Ultralytics' eval-mode output: boxes as (cx, cy, w, h) in input pixels, class
probabilities, then keypoints (x, y, visibility) per anchor. Shell: ``python -m candlejax.models.yolo
detect|pose IMAGE --weights FILE [--which n|s|m|l|x] [--conf --iou] --out out.jpg`` (= ``candlejax detect``).
"""

from candlejax.models.yolo.model import (
    C2PSA,
    COCO_NAMES,
    SCALES,
    SIZES,
    Attention,
    Bottleneck,
    C2f,
    C3k,
    C3k2,
    ConvBlock,
    DarkNet,
    DetectionHead,
    Dfl,
    Multiples,
    PoseHead,
    PSABlock,
    Sppf,
    YoloV8,
    YoloV8Neck,
    YoloV8Pose,
)
from candlejax.models.yolo.predict import detect, imgsz_arg, load, pt_to_safetensors
from candlejax.vision import Detections

__all__ = [
    "C2PSA", "C2f", "C3k", "C3k2", "COCO_NAMES", "ConvBlock", "DarkNet", "DetectionHead", "Dfl", "Multiples",
    "PSABlock", "PoseHead", "SCALES", "SIZES", "Sppf", "YoloV8", "YoloV8Neck", "YoloV8Pose", "detect", "load",
    "pt_to_safetensors", "Attention", "Bottleneck", "Detections", "imgsz_arg",
]  # fmt: skip
