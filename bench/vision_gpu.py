"""ResNet-50 on one GPU: candlejax (jit, NCHW; plain-JAX NHWC on the same folded weights) vs torch
eager and torch.compile, f32 and bf16, batch 1 and 32, same random weights (transformers' ResNet-50).

    PYTHONPATH=. python3 bench/vision_gpu.py [--out DIR]
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import torch
import transformers
from safetensors.torch import save_file

from candlejax import Device, DType, Tensor
from candlejax.models import resnet
from candlejax.nn import VarBuilder

spec = importlib.util.spec_from_file_location("bench_vision", Path(__file__).with_name("vision.py"))
bv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bv)


def _time(fn, sync, n: int = 50) -> float:
    for _ in range(5):
        fn()
    sync()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def _measure(net, fwd, nhwc, th, tc, xj, xt) -> dict:
    def nop() -> None:
        return None

    with torch.no_grad():
        ref = th(xt).float().cpu().numpy()
        return {
            "max |d| vs torch": float(np.abs(np.asarray(fwd(net, xj), np.float32) - ref).max()),
            "candlejax jit ms": _time(lambda: fwd(net, xj).block_until_ready(), nop),
            "jax NHWC ms": _time(lambda: nhwc(net, xj).block_until_ready(), nop),
            "torch eager ms": _time(lambda: th(xt), torch.cuda.synchronize),
            "torch.compile ms": _time(lambda: tc(xt), torch.cuda.synchronize),
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.manual_seed(0)
    hf = transformers.ResNetForImageClassification(transformers.ResNetConfig(num_labels=1000)).eval()
    rows = [{"jax": jax.__version__, "torch": torch.__version__, "devices": [str(d) for d in jax.devices()]}]
    with tempfile.TemporaryDirectory() as d:
        save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, f"{d}/r50.safetensors")
        for dt, tdt in ((DType.F32, torch.float32), (DType.BF16, torch.bfloat16)):
            vb = VarBuilder.from_mmaped_safetensors([f"{d}/r50.safetensors"], dt, Device.cuda_if_available(0))
            net = resnet.resnet50(1000, vb.rename_f(resnet.hf_to_torchvision))
            fwd = jax.jit(lambda m, x: m.forward(Tensor(x)).jax)
            nhwc = bv._nhwc_forward(net)
            th = hf.to("cuda", tdt)
            tc = bv.compile_static(th)
            for b in (1, 32):
                x = np.random.default_rng(0).standard_normal((b, 3, 224, 224)).astype(np.float32)
                xj = jax.device_put(jax.numpy.asarray(x, jax.numpy.float32 if dt == DType.F32 else jax.numpy.bfloat16))
                xt = torch.from_numpy(x).to("cuda", tdt)
                row = {"dtype": str(dt), "batch": b, **_measure(net, fwd, nhwc, th, tc, xj, xt)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if a.out:
        Path(a.out, "vision_gpu.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
