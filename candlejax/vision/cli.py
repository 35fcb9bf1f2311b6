"""Command lines of the vision models: ``python -m candlejax.models.resnet classify`` and
``python -m candlejax.models.yolo detect|pose`` (Candle's ``resnet`` and ``yolo-v8`` examples)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from candlejax import errors

_RESNETS = ("18", "34", "50", "101", "152")


def _resnet_which(names: set[str]) -> str:
    """The ResNet size a checkpoint holds, from its tensor names (torchvision or Hugging Face)."""
    from candlejax.models import resnet

    tv = {n for n in names if n.startswith(("layer", "conv1", "bn1", "fc."))}
    if not tv:
        hf = {k for k in names if "encoder.stages" in k}
        inv = {resnet.hf_to_torchvision(f"layer{s}.{b}.{t}"): f"layer{s}.{b}.{t}" for s in range(1, 5)
               for b in range(40) for t in ("conv1.weight", "conv3.weight")}  # fmt: skip
        tv = {inv[k] for k in hf if k in inv}
    depths = tuple(len({n.split(".")[1] for n in tv if n.startswith(f"layer{i}.")}) for i in range(1, 5))
    bottleneck = any(".conv3." in n for n in tv)
    table = {((2, 2, 2, 2), False): "18", ((3, 4, 6, 3), False): "34", ((3, 4, 6, 3), True): "50",
             ((3, 4, 23, 3), True): "101", ((3, 8, 36, 3), True): "152"}  # fmt: skip
    if (depths, bottleneck) not in table:
        raise errors.Msg(f"the weights do not hold a ResNet-18/34/50/101/152 (stage depths {depths})")
    return table[(depths, bottleneck)]


def resnet_main(argv: Sequence[str] | None = None) -> int:
    """``classify IMAGE --weights FILE [--which 18|34|50|101|152]``: print the top-5 ImageNet classes."""
    p = argparse.ArgumentParser(prog="python -m candlejax.models.resnet")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("classify", help="classify an image with ImageNet weights")
    c.add_argument("image")
    c.add_argument("--weights", required=True, help="safetensors, torchvision/timm or Hugging Face names")
    c.add_argument("--which", choices=_RESNETS, help="ResNet depth (default: read from the weights)")
    c.add_argument("--top", type=int, default=5)
    a = p.parse_args(argv)
    try:
        from candlejax import Device, DType
        from candlejax.io.safetensors import MmapedSafetensors
        from candlejax.models import resnet
        from candlejax.nn import VarBuilder
        from candlejax.vision import IMAGENET_CLASSES, load_image224

        names = set(MmapedSafetensors([a.weights]).names())
        which = a.which or _resnet_which(names)
        vb = VarBuilder.from_mmaped_safetensors([a.weights], DType.F32, Device.Cpu)
        if "fc.weight" not in names:
            vb = vb.rename_f(resnet.hf_to_torchvision)
        net = getattr(resnet, f"resnet{which}")(1000, vb)
        x = load_image224(a.image)
        logits = net.forward(x.unsqueeze(0)).numpy()[0]
    except errors.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    pr = np.exp(logits - logits.max())
    pr /= pr.sum()
    for i in np.argsort(-pr)[: a.top]:
        print(f"{IMAGENET_CLASSES[i]:40s}: {100 * pr[i]:5.2f}%")
    return 0


def yolo_main(argv: Sequence[str] | None = None) -> int:
    """``detect|pose IMAGE --weights FILE [--which] [--conf --iou] --out out.jpg``; ``convert IN.pt OUT``."""
    p = argparse.ArgumentParser(prog="python -m candlejax.models.yolo")
    sub = p.add_subparsers(dest="cmd", required=True)
    for task in ("detect", "pose"):
        c = sub.add_parser(task, help=f"{task} in an image and draw the result")
        c.add_argument("image")
        c.add_argument("--weights", required=True, help="Ultralytics .pt or .safetensors (Ultralytics names)")
        c.add_argument("--which", help="size n|s|m|l|x (default: read from the weights)")
        c.add_argument("--version", help="v8 or 11 (default: read from the weights)")
        c.add_argument("--conf", type=float, default=0.25)
        c.add_argument("--iou", type=float, default=0.45)
        c.add_argument("--imgsz", type=int, default=640)
        c.add_argument("--out", default="out.jpg")
    c = sub.add_parser("convert", help="an Ultralytics .pt checkpoint -> safetensors")
    c.add_argument("src")
    c.add_argument("dst")
    a = p.parse_args(argv)
    try:
        from candlejax.models import yolo, yolo_predict
        from candlejax.vision import draw_detections, load_image

        if a.cmd == "convert":
            yolo_predict.pt_to_safetensors(a.src, a.dst)
            print(f"wrote {a.dst}")
            return 0
        model = yolo.load(a.weights, which=a.which, version=a.version, task=a.cmd)
        img = load_image(a.image)
        dets = yolo.detect(model, img, conf=a.conf, iou=a.iou, imgsz=a.imgsz)
    except errors.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for i in range(len(dets)):
        x1, y1, x2, y2 = (float(v) for v in dets.boxes[i])
        print(f"{model.names[int(dets.classes[i])]:>14s} {float(dets.scores[i]):.3f}  "
              f"[{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")  # fmt: skip
    draw_detections(img, dets, model.names).save(a.out)
    print(f"{len(dets)} detections, annotated image written to {a.out}")
    return 0
