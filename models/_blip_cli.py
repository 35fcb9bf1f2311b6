"""``python -m candlejax.models.blip caption IMAGE --model DIR``: caption an image.

``DIR`` holds a ``BlipForConditionalGeneration`` checkpoint: ``config.json``, ``*.safetensors`` and
``tokenizer.json``. Candle: the ``blip`` example.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from candlejax import Device, DType, errors
from candlejax.models._clip_cli import safetensors_files
from candlejax.nn import VarBuilder

__all__ = ["load_dir", "main"]


def load_dir(model_dir: str, dtype: DType = DType.F32):  # type: ignore[no-untyped-def]
    """``(BlipForConditionalGeneration, config)`` from a checkpoint folder."""
    from candlejax.models import blip

    config = blip.Config.from_json_file(os.path.join(model_dir, "config.json"))
    vb = VarBuilder.from_mmaped_safetensors(safetensors_files(model_dir), dtype, Device.Cpu)
    return blip.BlipForConditionalGeneration.load(vb, config), config


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m candlejax.models.blip", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("caption", help="caption an image")
    c.add_argument("image", help="image file")
    c.add_argument("--model", required=True, help="folder with config.json, *.safetensors, tokenizer.json")
    c.add_argument("--tokenizer", help="tokenizer.json (default: the one in --model)")
    c.add_argument("--max-new-tokens", type=int, default=30)
    c.add_argument("--temperature", type=float, default=None, help="sample at this temperature (default: greedy)")
    c.add_argument("--top-p", type=float, default=None)
    c.add_argument("--seed", type=int, default=299792458)
    c.add_argument("--ids", action="store_true", help="also print the token ids")
    a = p.parse_args(argv)
    from candlejax.models import _blip_pipeline

    try:
        model, _ = load_dir(a.model)
        ids = _blip_pipeline.caption_ids(model, a.image, a.max_new_tokens, a.temperature, a.top_p, a.seed)
        from candlejax.models._clip_pipeline import load_tokenizer

        text = load_tokenizer(a.tokenizer or a.model).decode(ids, skip_special_tokens=True).strip()
    except errors.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(text)
    if a.ids:
        print("ids:", " ".join(map(str, ids)))
    return 0
