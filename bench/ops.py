"""Eager per-op latency: candlejax vs raw jax.numpy, candle-pyo3, torch and numpy, side by side.

Each library runs in its own fresh worker processes (``--procs``); a worker times every op as
"call, then wait for the result" (``block_until_ready`` for JAX), takes the median of
``--repeats`` timing runs, and the parent reports the median over processes. A second part checks
that a jitted candlejax function lowers to the same HLO op counts as the hand-written jnp one.

    python bench/ops.py --procs 3       # the Markdown table recorded in bench/RESULTS.md, on stdout
    python bench/ops.py --new-shapes    # ms for the first call of an op / BertModel.forward on a new shape,
                                        # with shape buckets on and off (CANDLEJAX_SHAPE_BUCKETS=0)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

OPS = ["add", "mul", "matmul64", "matmul1024", "softmax", "reshape", "index", "sum"]
LIBS = ["candlejax", "jnp", "jnp-defaults", "candle", "torch", "numpy"]


def _time(fn: Callable[[], object], sync: Callable[[object], object], number: int, repeats: int) -> float:
    for _ in range(max(3, number // 10)):
        sync(fn())
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            sync(fn())
        runs.append((time.perf_counter() - t0) / number * 1e6)
    return statistics.median(runs)


def _cases(lib: str):
    import numpy as np

    rng = np.random.default_rng(0)
    a64, b64 = (rng.standard_normal((64, 64)).astype(np.float32) for _ in range(2))
    a1k, b1k = (rng.standard_normal((1024, 1024)).astype(np.float32) for _ in range(2))
    if lib == "candlejax":
        import candlejax as cj
        from candlejax import Tensor
        from candlejax.nn import ops as nn_ops

        x, y, X, Y = (Tensor.new(v) for v in (a64, b64, a1k, b1k))
        sync = lambda t: t.jax.block_until_ready()  # noqa: E731
        return sync, {
            "add": lambda: x.add(y),
            "mul": lambda: x.mul(y),
            "matmul64": lambda: x.matmul(y),
            "matmul1024": lambda: X.matmul(Y),
            "softmax": lambda: nn_ops.softmax_last_dim(x),
            "reshape": lambda: x.reshape((4096,)),
            "index": lambda: x.i((slice(None), slice(0, 4))),
            "sum": lambda: x.sum_keepdim(1),
        }, cj
    if lib in ("jnp", "jnp-defaults"):
        if lib == "jnp":
            import candlejax  # noqa: F401  (same process settings as candlejax)
        import jax
        import jax.numpy as jnp

        x, y, X, Y = (jnp.asarray(v) for v in (a64, b64, a1k, b1k))
        sync = lambda t: t.block_until_ready()  # noqa: E731
        return sync, {
            "add": lambda: jnp.add(x, y),
            "mul": lambda: jnp.multiply(x, y),
            "matmul64": lambda: jnp.matmul(x, y),
            "matmul1024": lambda: jnp.matmul(X, Y),
            "softmax": lambda: jax.nn.softmax(x, axis=-1),
            "reshape": lambda: x.reshape((4096,)),
            "index": lambda: x[:, :4],
            "sum": lambda: jnp.sum(x, axis=1, keepdims=True),
        }, jax
    if lib == "candle":
        import candle

        x, y, X, Y = (candle.Tensor(v) for v in (a64, b64, a1k, b1k))
        sync = lambda t: t  # noqa: E731
        return sync, {
            "add": lambda: x + y,
            "mul": lambda: x * y,
            "matmul64": lambda: x.matmul(y),
            "matmul1024": lambda: X.matmul(Y),
            "softmax": lambda: candle.functional.softmax(x, -1),
            "reshape": lambda: x.reshape((4096,)),
            "index": lambda: x[:, :4],
            "sum": lambda: x.sum_keepdim(1),
        }, candle
    if lib == "torch":
        import torch

        x, y, X, Y = (torch.from_numpy(v) for v in (a64, b64, a1k, b1k))
        sync = lambda t: t  # noqa: E731
        return sync, {
            "add": lambda: torch.add(x, y),
            "mul": lambda: torch.mul(x, y),
            "matmul64": lambda: torch.matmul(x, y),
            "matmul1024": lambda: torch.matmul(X, Y),
            "softmax": lambda: torch.softmax(x, -1),
            "reshape": lambda: x.reshape(4096),
            "index": lambda: x[:, :4],
            "sum": lambda: x.sum(1, keepdim=True),
        }, torch
    if lib == "numpy":

        def softmax(v):
            e = np.exp(v - v.max(-1, keepdims=True))
            return e / e.sum(-1, keepdims=True)

        sync = lambda t: t  # noqa: E731
        return sync, {
            "add": lambda: np.add(a64, b64),
            "mul": lambda: np.multiply(a64, b64),
            "matmul64": lambda: a64 @ b64,
            "matmul1024": lambda: a1k @ b1k,
            "softmax": lambda: softmax(a64),
            "reshape": lambda: a64.reshape(4096),
            "index": lambda: a64[:, :4],
            "sum": lambda: a64.sum(1, keepdims=True),
        }, np
    raise SystemExit(f"unknown lib {lib}")


def worker(lib: str, repeats: int) -> dict[str, float | None]:
    sync, cases, _ = _cases(lib)
    out: dict[str, float | None] = {}
    for name in OPS:
        fn = cases.get(name)
        if fn is None:
            out[name] = None
            continue
        number = 20 if name == "matmul1024" else 2000
        try:
            out[name] = _time(fn, sync, number, repeats)
        except Exception as e:
            print(f"{lib} {name}: {type(e).__name__}: {e}", file=sys.stderr)
            out[name] = None
    return out


def hlo_check() -> list[tuple[str, dict[str, int], dict[str, int]]]:
    """Op counts of the optimised HLO of a candlejax function vs the same function in jnp."""
    import collections
    import re

    import jax
    import jax.numpy as jnp
    import numpy as np

    from candlejax import Tensor
    from candlejax.nn import ops as nn_ops

    def counts(fn, *args):
        text = jax.jit(fn).lower(*args).compile().as_text()
        ops = re.findall(r"=\s*\S+\s+([a-z][a-z0-9\-]*)\(", text)
        return dict(collections.Counter(o for o in ops if o not in ("parameter",)))

    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32)
    rows = []

    def cj_mlp(x, w):
        return nn_ops.softmax_last_dim(x.matmul(w).relu().broadcast_add(x.sum_keepdim(1)))

    def jnp_mlp(x, w):
        return jax.nn.softmax(jnp.maximum(x @ w, 0) + jnp.sum(x, 1, keepdims=True), axis=-1)

    rows.append(("matmul+relu+bcast add+softmax", counts(cj_mlp, Tensor.new(x), Tensor.new(w)),
                 counts(jnp_mlp, jnp.asarray(x), jnp.asarray(w))))
    return rows


NEW_SHAPE_OPS = ["add", "mul", "exp", "gelu", "x*2.0", "to_dtype", "where_cond", "sum(1)", "matmul", "softmax"]


def new_shape_worker(n_shapes: int) -> dict[str, float]:
    """ms of the first call of each op on ``n_shapes`` fresh shapes (median), after one warm-up call
    of the op on another shape; and of an eager MiniLM ``BertModel.forward`` on fresh lengths."""
    import numpy as np

    from candlejax import DType, Tensor
    from candlejax.nn import ops as nn_ops

    cases = {
        "add": lambda x, y: x + y,
        "mul": lambda x, y: x.mul(y),
        "exp": lambda x, y: x.exp(),
        "gelu": lambda x, y: x.gelu(),
        "x*2.0": lambda x, y: x * 2.0,
        "to_dtype": lambda x, y: x.to_dtype(DType.F16),
        "where_cond": lambda x, y: x.ge(y).where_cond(x, y),
        "sum(1)": lambda x, y: x.sum_keepdim(1),
        "matmul": lambda x, y: x.matmul(y.t()),
        "softmax": lambda x, y: nn_ops.softmax_last_dim(x),
    }
    rng = np.random.default_rng(0)
    out: dict[str, float] = {}
    for i, (name, f) in enumerate(cases.items()):
        w = Tensor.new(rng.standard_normal((11, 5)).astype(np.float32))
        f(w, w).jax.block_until_ready()  # the op has run before, on another shape
        times = []
        for j in range(n_shapes):
            a = rng.standard_normal((64 + 31 * i + j, 48)).astype(np.float32)
            x, y = Tensor.new(a), Tensor.new(a + 1)
            t0 = time.perf_counter()
            f(x, y).jax.block_until_ready()
            times.append((time.perf_counter() - t0) * 1e3)
        out[name] = statistics.median(times)
    try:
        from candlejax.models import bert, weights
        from candlejax.nn import VarBuilder

        minilm = weights.path("all-MiniLM-L6-v2")
        cfg = bert.Config.from_json_file(minilm / "config.json")
        vb = VarBuilder.from_mmaped_safetensors([minilm / "model.safetensors"], DType.F32)
        model = bert.BertModel.load(vb, cfg)
        model.forward(Tensor.new(np.arange(5, dtype=np.uint32)[None] + 1000)).jax.block_until_ready()
        times = []
        for length in range(7, 7 + n_shapes):
            ids = Tensor.new(rng.integers(1000, 2000, (1, length)).astype(np.uint32))
            t0 = time.perf_counter()
            model.forward(ids).jax.block_until_ready()
            times.append((time.perf_counter() - t0) * 1e3)
        out["BertModel.forward"] = statistics.median(times)
        times = []
        for length in (20, 40, 70):  # lengths in length buckets not run before (32, 64, 128 tokens)
            ids_new = Tensor.new(rng.integers(1000, 2000, (1, length)).astype(np.uint32))
            t0 = time.perf_counter()
            model.forward(ids_new).jax.block_until_ready()
            times.append((time.perf_counter() - t0) * 1e3)
        out["BertModel.forward (new bucket)"] = statistics.median(times)
        t0 = time.perf_counter()
        model.forward(ids).jax.block_until_ready()
        out["BertModel.forward (repeat)"] = (time.perf_counter() - t0) * 1e3
    except Exception as e:  # weights package missing
        print(f"bert: {type(e).__name__}: {e}", file=sys.stderr)
    return out


def new_shapes_main(n_shapes: int) -> None:
    rows = {}
    for label, flag in [("shape buckets on", "1"), ("shape buckets off (CANDLEJAX_SHAPE_BUCKETS=0)", "0")]:
        env = dict(os.environ, CANDLEJAX_SHAPE_BUCKETS=flag)
        out = subprocess.run([sys.executable, __file__, "--new-shape-worker", str(n_shapes)],
                             capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(f"{label}: worker failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows[label] = json.loads(out.stdout.strip().splitlines()[-1])
    cols = list(next(iter(rows.values())).keys()) if rows else []
    print("| ms, first call on a new shape | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for label, r in rows.items():
        print(f"| {label} | " + " | ".join(f"{r[c]:.2f}" if c in r else "n/a" for c in cols) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--libs", default=",".join(LIBS))
    p.add_argument("--markdown", action="store_true", help="no effect: the table is always Markdown")
    p.add_argument("--worker")
    p.add_argument("--new-shapes", action="store_true")
    p.add_argument("--new-shape-worker", type=int)
    p.add_argument("--shapes", type=int, default=6)
    args = p.parse_args()
    if args.new_shape_worker:
        print(json.dumps(new_shape_worker(args.new_shape_worker)))
        return
    if args.new_shapes:
        new_shapes_main(args.shapes)
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeats)))
        return
    results: dict[str, dict[str, float | None]] = {}
    for lib in args.libs.split(","):
        per_proc = []
        for _ in range(args.procs):
            env = dict(os.environ)
            out = subprocess.run([sys.executable, __file__, "--worker", lib, "--repeats", str(args.repeats)],
                                 capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(f"{lib}: worker failed\n{out.stderr[-2000:]}", file=sys.stderr)
                break
            per_proc.append(json.loads(out.stdout.strip().splitlines()[-1]))
        results[lib] = {
            op: (statistics.median([r[op] for r in per_proc if r.get(op) is not None])
                 if any(r.get(op) is not None for r in per_proc) else None)
            for op in OPS
        }
    from provenance import describe

    print(describe())
    fmt = lambda v: "n/a" if v is None else (f"{v:.1f}" if v < 100 else f"{v:.0f}")  # noqa: E731
    print("| lib | " + " | ".join(OPS) + " |")
    print("|---|" + "---|" * len(OPS))
    for lib, row in results.items():
        print(f"| {lib} | " + " | ".join(fmt(row[o]) for o in OPS) + " |")
    if "candlejax" in results and "jnp" in results:
        cjr, jr = results["candlejax"], results["jnp"]
        print("| candlejax − jnp (µs) | " + " | ".join(
            fmt(cjr[o] - jr[o]) if cjr[o] is not None and jr[o] is not None else "n/a" for o in OPS) + " |")
    print()
    for name, a, b in hlo_check():
        same = "identical" if a == b else "DIFFERENT"
        print(f"HLO op counts, {name}: candlejax {sum(a.values())} ops, jnp {sum(b.values())} ops -> {same}")
        if a != b:
            print(f"  candlejax {a}\n  jnp       {b}")


if __name__ == "__main__":
    main()
