"""Host memory of weight loading: peak and steady RSS above a baseline, and the file's mapped pages.

Each loader runs in a fresh subprocess (``ru_maxrss`` only grows) on a ~96 MB synthetic file; the
baseline is the same process after ``import candlejax`` and a JAX warm-up op. Reading a tensor copies
it once from the file into its buffer, so the peak stays near the weights' final size and the file's
pages are not kept resident once the tensors are loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest

MB = 2**20
N_TENSORS = 8
TOTAL_MB = 96

_PROBE = textwrap.dedent(
    """
    import gc, json, os, resource, sys

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def maxrss():
        # VmHWM: this process's own peak (ru_maxrss starts at the parent's RSS when spawned by vfork)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def file_resident(path):
        tot, cur, real = 0, None, os.path.realpath(path)
        with open("/proc/self/smaps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 5 and "-" in parts[0] and ":" in parts[3]:
                    cur = parts[5] if len(parts) > 5 else None
                elif line.startswith("Rss:") and cur == real:
                    tot += int(parts[1]) * 1024
        return tot

    import jax.numpy as jnp
    import candlejax as cj

    (jnp.ones(1000) * 2).block_until_ready()
    path, code = sys.argv[1], sys.argv[2]
    gc.collect()
    base = rss()
    try:  # reset VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    scope = {"cj": cj, "path": path}
    exec(code, scope)
    out = scope["out"]
    for v in out.values():
        getattr(v, "_a", v).block_until_ready()
    peak = maxrss()
    gc.collect()
    try:  # freed host buffers glibc keeps in its heap are not held by the loader
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    print(json.dumps({"peak": peak - base, "steady": rss() - base, "file": file_resident(path)}))
    """
)


def _probe(path: str, code: str) -> dict[str, float]:
    """Peak / steady RSS above the baseline and the file's resident mapped bytes, in MB."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, path, textwrap.dedent(code)], capture_output=True, text=True, env=env,
        timeout=300, cwd=os.path.dirname(path),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return {k: v / MB for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}


def _weights(dtype: np.dtype) -> dict[str, np.ndarray]:
    rows = TOTAL_MB * MB // N_TENSORS // np.dtype(dtype).itemsize // 1024
    rng = np.random.default_rng(0)
    return {f"layer{i}.weight": rng.standard_normal((rows, 1024), dtype=np.float32).astype(dtype)
            for i in range(N_TENSORS)}


@pytest.fixture(scope="module")
def st_files(tmp_path_factory):
    from safetensors.numpy import save_file

    d = tmp_path_factory.mktemp("weights")
    out = {}
    for name, dt in (("f32", np.float32), ("bf16", ml_dtypes.bfloat16)):
        p = str(d / f"{name}.safetensors")
        save_file(_weights(dt), p)
        out[name] = p
    return out


_VB = """
    vb = cj.nn.VarBuilder.from_mmaped_safetensors([path], cj.DType.{dt}, cj.Device.Cpu)
    out = {{n: vb.get_unchecked(n) for n in vb.unused_names()}}
"""


@pytest.mark.parametrize(
    ("file", "code", "final_mb"),
    [
        ("f32", "out = cj.safetensors.load(path, 'cpu')", TOTAL_MB),
        ("f32", "st = cj.safetensors.MmapedSafetensors(path)\nout = {n: st.load(n, 'cpu') for n in st.names()}",
         TOTAL_MB),
        ("f32", _VB.format(dt="F32"), TOTAL_MB),
        ("bf16", _VB.format(dt="BF16"), TOTAL_MB),
        ("bf16", _VB.format(dt="F32"), 2 * TOTAL_MB),
        ("bf16", "out = cj.safetensors.load(path, 'cpu', dtype=cj.DType.F32)", 2 * TOTAL_MB),
    ],
    ids=["load", "mmaped_load", "vb_f32", "vb_bf16", "vb_bf16_to_f32", "load_bf16_to_f32"],
)
def test_safetensors_one_copy(st_files, file, code, final_mb):
    m = _probe(st_files[file], code)
    # one or two tensors (12 MB each) in flight on top of the final weights (it was twice the file)
    assert m["peak"] < final_mb * 1.5, m
    assert m["steady"] < final_mb * 1.4, m
    # the file's pages are not kept mapped and resident after the load (the builder keeps the file open)
    assert m["file"] < 0.1 * TOTAL_MB, m


@pytest.fixture(scope="module")
def pth_file(tmp_path_factory):
    torch = pytest.importorskip("torch")
    p = str(tmp_path_factory.mktemp("weights") / "f32.pth")
    torch.save({k: torch.from_numpy(v) for k, v in _weights(np.float32).items()}, p)
    return p


def test_from_pth_reads_tensor_by_tensor(pth_file):
    # Candle's VarBuilder::from_pth reads through PthTensors, one tensor per get; reading the whole
    # state dict first held it on the host next to the loaded tensors (peak 2x)
    code = """
        vb = cj.nn.VarBuilder.from_pth(path, cj.DType.F32, cj.Device.Cpu)
        out = {n: vb.get_unchecked(n) for n in vb.unused_names()}
    """
    m = _probe(pth_file, code)
    assert m["peak"] < TOTAL_MB * 1.5, m
    assert m["steady"] < TOTAL_MB * 1.4, m


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    gguf = pytest.importorskip("gguf")
    p = str(tmp_path_factory.mktemp("weights") / "f32.gguf")
    w = gguf.GGUFWriter(p, "llama")
    for k, v in _weights(np.float32).items():
        w.add_tensor(k, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return p


def test_gguf_tensors_do_not_keep_the_file_resident(gguf_file):
    code = """
        content = cj.quantized.gguf_file.Content.read(path)
        out = {n: content.tensor(n, cj.Device.Cpu).dequantize(cj.Device.Cpu) for n in content.tensor_infos}
    """
    m = _probe(gguf_file, code)
    assert m["file"] < 0.1 * TOTAL_MB, m  # the Content is still open
    assert m["steady"] < TOTAL_MB * 2.4, m  # the QTensors' bytes and the dequantized tensors
