"""CLIP and BLIP with random weights at their base sizes, batch 1: candlejax vs transformers eager.

Configs: CLIP ViT-B/32 (``CLIPConfig()`` defaults: 224² images, 12+12 layers, projection 512) and
BLIP base captioning (``BlipConfig()`` defaults: ViT-B/16 at 384², 12-layer text decoder). The
transformers models get random weights (seeded), are saved to safetensors in a temporary folder and
loaded by candlejax, so both run the same weights in f32. Rows:

* CLIP image features (1 x 3 x 224 x 224), text features (1 x 16 tokens), forward (1 image, 1 text);
* BLIP vision model (1 x 3 x 384 x 384) and a greedy caption of up to ``--tokens`` new tokens
  (vision model + decoder, candlejax: :func:`candlejax.models.blip.caption_ids`, transformers:
  ``generate(do_sample=False)``); both produce the same ids (checked).

candlejax runs compiled (weights as arguments; compile time reported separately); transformers
runs eagerly under ``torch.no_grad()`` with its default attention (SDPA), torch at the process's
default thread count. Repeats are interleaved so load from other processes hits both alike;
medians are reported.

    python bench/blip_clip.py
    python bench/blip_clip.py --repeats 10 --tokens 20 --only clip
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _timeit(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():  # one untimed call each: both sides timed warm (torch's first call of a shape)
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _row(name: str, ms: dict[str, float], rows: list[str]) -> None:
    cj, hf = ms["candlejax"], ms["transformers"]
    line = f"| {name} | {cj:.1f} | {hf:.1f} | {hf / cj:.2f}x |"
    rows.append(line)
    print(line, flush=True)


def bench_clip(repeats: int, rows: list[str]) -> None:
    import numpy as np
    import torch
    import transformers

    from candlejax import Device, DType, Tensor
    from candlejax.models import clip
    from candlejax.nn import VarBuilder

    torch.manual_seed(0)
    hf = transformers.CLIPModel(transformers.CLIPConfig()).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d, safe_serialization=True)
        config = clip.ClipConfig.from_json_file(os.path.join(d, "config.json"))
        vb = VarBuilder.from_mmaped_safetensors([os.path.join(d, "model.safetensors")], DType.F32, Device.Cpu)
        model = clip.ClipModel.load(vb, config)
    rng = np.random.default_rng(0)
    px = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    ids = rng.integers(1, 49000, size=(1, 16))
    ids[0, 0], ids[0, -1] = 49406, 49407
    px_t, ids_t = Tensor.from_numpy(px), Tensor.from_numpy(ids.astype(np.uint32))
    px_h, ids_h = torch.from_numpy(px), torch.from_numpy(ids)

    t0 = time.perf_counter()
    ours = clip.forward_jit(model, px_t, ids_t)[1].numpy()
    clip.image_features_jit(model, px_t).numpy()
    clip.text_features_jit(model, ids_t).numpy()
    print(f"candlejax CLIP compile (3 programs): {time.perf_counter() - t0:.1f} s", flush=True)
    with torch.no_grad():
        ref = hf(input_ids=ids_h, pixel_values=px_h).logits_per_image.numpy()
    print(f"CLIP logits max |diff| vs transformers: {np.abs(ours - ref).max():.2e}", flush=True)

    def hf_img() -> object:
        with torch.no_grad():
            return hf.get_image_features(pixel_values=px_h)

    def hf_txt() -> object:
        with torch.no_grad():
            return hf.get_text_features(input_ids=ids_h)

    def hf_fwd() -> object:
        with torch.no_grad():
            return hf(input_ids=ids_h, pixel_values=px_h)

    work = [
        ("CLIP B/32 image features 1x224²", lambda: clip.image_features_jit(model, px_t).numpy(), hf_img),
        ("CLIP B/32 text features 1x16", lambda: clip.text_features_jit(model, ids_t).numpy(), hf_txt),
        ("CLIP B/32 forward (1 image, 1 text)", lambda: clip.forward_jit(model, px_t, ids_t)[1].numpy(), hf_fwd),
    ]
    for name, cj, h in work:
        _row(name, _timeit({"candlejax": cj, "transformers": h}, repeats), rows)


def bench_blip(repeats: int, tokens: int, rows: list[str]) -> None:
    import numpy as np
    import torch
    import transformers

    from candlejax import Device, DType, Tensor
    from candlejax.models import blip
    from candlejax.nn import VarBuilder

    torch.manual_seed(0)
    hf = transformers.BlipForConditionalGeneration(transformers.BlipConfig()).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d, safe_serialization=True)
        config = blip.Config.from_json_file(os.path.join(d, "config.json"))
        vb = VarBuilder.from_mmaped_safetensors([os.path.join(d, "model.safetensors")], DType.F32, Device.Cpu)
        model = blip.BlipForConditionalGeneration.load(vb, config)
    rng = np.random.default_rng(0)
    px = rng.standard_normal((1, 3, 384, 384)).astype(np.float32)
    px_t, px_h = Tensor.from_numpy(px), torch.from_numpy(px)

    t0 = time.perf_counter()
    ours = blip.caption_ids(model, px_t, max_new_tokens=tokens)
    print(f"candlejax BLIP compile (vision, prefill, decode step): {time.perf_counter() - t0:.1f} s", flush=True)

    def hf_caption() -> list[int]:
        with torch.no_grad():
            out = hf.generate(pixel_values=px_h, max_new_tokens=tokens, do_sample=False, num_beams=1)[0].tolist()
        out = out[1:]
        sep = config.text_config.sep_token_id
        return out[: out.index(sep)] if sep in out else out

    ref = hf_caption()
    print(f"BLIP greedy ids identical: {ours == ref} ({len(ours)} tokens)", flush=True)

    def hf_vision() -> object:
        with torch.no_grad():
            return hf.vision_model(pixel_values=px_h).last_hidden_state

    _row("BLIP base vision 1x384²", _timeit({
        "candlejax": lambda: blip.vision_forward_jit(model, px_t).numpy(), "transformers": hf_vision}, repeats), rows)
    ms = _timeit({"candlejax": lambda: blip.caption_ids(model, px_t, max_new_tokens=tokens),
                  "transformers": hf_caption}, max(3, repeats // 2))  # fmt: skip
    _row(f"BLIP base caption ({len(ours)} tokens, incl. vision)", ms, rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--only", choices=["clip", "blip"])
    a = p.parse_args(argv)
    import jax
    import torch
    import transformers

    print(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads),"
          f" transformers {transformers.__version__}, load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    from provenance import describe

    print(describe(), flush=True)
    rows: list[str] = []
    print("| work (batch 1, f32) | candlejax ms | transformers eager ms | speed-up |\n|---|---:|---:|---:|")
    if a.only in (None, "clip"):
        bench_clip(a.repeats, rows)
    if a.only in (None, "blip"):
        bench_blip(a.repeats, a.tokens, rows)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
