"""``python -m candlejax.models.clip IMAGE --model DIR --labels "a,b,c"``: zero-shot label probabilities.

``DIR`` holds a ``CLIPModel`` checkpoint: ``config.json``, ``model.safetensors`` (or a sharded
index) and ``tokenizer.json``. Candle: the ``clip`` example.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from collections.abc import Sequence

from candlejax import Device, DType, errors
from candlejax.nn import VarBuilder

__all__ = ["load_dir", "main", "safetensors_files"]


def safetensors_files(model_dir: str) -> list[str]:
    """The safetensors files of a checkpoint folder (``model.safetensors`` or all shards)."""
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise errors.Msg(f"no .safetensors file in {model_dir!r}")
    return files


def load_dir(model_dir: str, dtype: DType = DType.F32):  # type: ignore[no-untyped-def]
    """``(ClipModel, config)`` from a checkpoint folder."""
    from candlejax.models import clip

    config = clip.ClipConfig.from_json_file(os.path.join(model_dir, "config.json"))
    vb = VarBuilder.from_mmaped_safetensors(safetensors_files(model_dir), dtype, Device.Cpu)
    return clip.ClipModel.load(vb, config), config


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m candlejax.models.clip", description=__doc__.splitlines()[0])
    p.add_argument("image", help="image file")
    p.add_argument("--model", required=True, help="folder with config.json, *.safetensors, tokenizer.json")
    p.add_argument("--labels", required=True, help='comma-separated labels, e.g. "a cat,a dog"')
    p.add_argument("--tokenizer", help="tokenizer.json (default: the one in --model)")
    a = p.parse_args(argv)
    from candlejax.models import clip

    try:
        labels = [s.strip() for s in a.labels.split(",") if s.strip()]
        model, _ = load_dir(a.model)
        probs = clip.zero_shot(model, a.image, labels, tokenizer=a.tokenizer or a.model).numpy()
    except errors.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    width = max(len(s) for s in labels)
    for lab, pr in sorted(zip(labels, probs, strict=True), key=lambda t: -float(t[1])):
        print(f"{lab:<{width}} : {float(pr):.6f}")
    return 0
