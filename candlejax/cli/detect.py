"""``candlejax detect IMAGE --weights FILE``: YOLOv8 / YOLO11 detection (boxes, or keypoints with
pose weights), printed and drawn into ``--out`` (= ``python -m candlejax.models.yolo detect|pose``;
Candle's ``yolo-v8`` example). ``python -m candlejax.models.yolo convert IN.pt OUT.safetensors``
converts an Ultralytics checkpoint once."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from candlejax.cli._help import HelpFormatter
from candlejax.cli._script import count, number, parser, run_script

__all__ = ["add_arguments", "run", "yolo_main"]


def add_arguments(p: argparse.ArgumentParser, task: str | None = None) -> None:
    p.add_argument("image", help="an image file")
    p.add_argument("--weights", "--model", required=True,
                   help="Ultralytics .pt checkpoint or .safetensors (Ultralytics names)")  # fmt: skip
    p.add_argument("--which", default=None, help="size n|s|m|l|x (default: read from the weights)")
    p.add_argument("--version", default=None, help="v8 or 11 (default: read from the weights)")
    if task is None:
        p.add_argument("--task", choices=("detect", "pose"), default=None, help="(default: read from the weights)")
    else:
        p.set_defaults(task=task)
    p.add_argument("--conf", "--confidence-threshold", type=number(0.0, 1.0), default=0.25,
                   help="confidence threshold")  # fmt: skip
    p.add_argument("--iou", "--nms-threshold", type=number(0.0, 1.0), default=0.45, help="IoU threshold of the NMS")
    p.add_argument("--imgsz", type=count(32), default=640, help="letterbox size (sides rounded up to multiples of 32)")
    p.add_argument("--out", default="out.jpg", help="where to write the annotated image")


def run(args: argparse.Namespace) -> int:
    from candlejax.pipelines import ObjectDetector
    from candlejax.vision import load_image

    det = ObjectDetector.from_file(args.weights, conf=args.conf, iou=args.iou, imgsz=args.imgsz, which=args.which,
                                   version=args.version, task=args.task)  # fmt: skip
    img = load_image(args.image)
    dets = det(img)
    for i in range(len(dets)):
        x1, y1, x2, y2 = (float(v) for v in dets.boxes[i])
        print(f"{det.names[int(dets.classes[i])]:>14s} {float(dets.scores[i]):.3f}  "
              f"[{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")  # fmt: skip
    det.annotate(img, dets).save(args.out)
    print(f"{len(dets)} detections, annotated image written to {args.out}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from candlejax.models import yolo

    yolo.pt_to_safetensors(args.src, args.dst)
    print(f"wrote {args.dst}")
    return 0


def yolo_main(argv: Sequence[str] | None = None) -> int:
    """``python -m candlejax.models.yolo detect|pose IMAGE --weights FILE ...`` and ``convert IN.pt OUT``."""
    p = parser("python -m candlejax.models.yolo", "YOLOv8 / YOLO11 detection and pose estimation")
    sub = p.add_subparsers(dest="cmd", required=True)
    fmt = HelpFormatter
    for task in ("detect", "pose"):
        add_arguments(sub.add_parser(task, help=f"{task} in an image and draw the result", formatter_class=fmt), task)
    c = sub.add_parser("convert", help="an Ultralytics .pt checkpoint -> safetensors (names, size kept in metadata)")
    c.add_argument("src", help="the .pt checkpoint")
    c.add_argument("dst", help="the .safetensors file to write")
    return run_script(p, argv, lambda a: _convert(a) if a.cmd == "convert" else run(a))
