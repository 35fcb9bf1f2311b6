"""SmolLM2-135M's quantized products for one decoded token, alone: every layer's q/k/v, output,
gate/up and down products (Q4_1, read in place from the stacked weights) and the output head
(Q8_0) on one activation row, in one compiled loop, through the native kernel
(``candlejax.quantized.native.matmul``). Prints ms per token (median of ``--steps`` calls, per
round), the weight bytes read and the rate. Between the products only a resize and a scaling of
the last output run (each product's input comes from the one before), so this is about the floor
that the products set for a decode step.

    python bench/quantized_products.py                            # the pool's threads
    CANDLEJAX_NATIVE_THREADS=1 python bench/quantized_products.py # one thread

To compare two builds of the kernel, run this script from each tree alternately
(``PYTHONPATH=<tree> python <tree>/bench/quantized_products.py``), as in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import _gguf_path  # bench/generate.py: the same GGUF

from candlejax import Device
from candlejax.models import quantized_llama
from candlejax.quantized import PackedWeight, native


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=50, help="timed calls per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if not native.available():
        sys.exit("the native kernel is not built here (pip install -e .)")
    model = quantized_llama.ModelWeights.from_gguf(_gguf_path(), Device.Cpu)
    packed = [w for w in jax.tree_util.tree_leaves(model, is_leaf=lambda x: isinstance(x, PackedWeight))
              if isinstance(w, PackedWeight)]  # fmt: skip
    stacked = [w for w in packed if w.raw.ndim == 3]
    single = [w for w in packed if w.raw.ndim == 2]
    n_layers = stacked[0].raw.shape[0]
    width = max(w.shape[1] for w in packed)

    def row(x: jax.Array, k: int) -> jax.Array:  # the next product's input, from the last output
        return jnp.resize(x, (1, k)) * 1e-3

    @jax.jit
    def products(raws: list[jax.Array], heads: list[jax.Array], x: jax.Array) -> jax.Array:
        def layer(i: jax.Array, x: jax.Array) -> jax.Array:
            for w, raw in zip(stacked, raws, strict=True):
                x = native.matmul(row(x, w.shape[1]), raw, w.ggml_dtype, i)
            return jnp.resize(x, (1, width))

        x = jax.lax.fori_loop(0, n_layers, layer, x)
        for w, raw in zip(single, heads, strict=True):
            x = native.matmul(row(x, w.shape[1]), raw, w.ggml_dtype)
        return x

    raws, heads = [w.raw for w in stacked], [w.raw for w in single]
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, width)), jnp.float32)
    products(raws, heads, x).block_until_ready()
    nbytes = sum(w.raw.nbytes for w in packed)
    threads = os.environ.get("CANDLEJAX_NATIVE_THREADS", "pool")
    print(f"native ISA {native.isa()}, threads {threads}, {len(stacked)} stacked weights x {n_layers} layers "
          f"+ {len(single)} head, {nbytes / 2**20:.1f} MiB read per token")  # fmt: skip
    medians = []
    for r in range(args.rounds):
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            products(raws, heads, x).block_until_ready()
            times.append(time.perf_counter() - t)
        medians.append(statistics.median(times))
        print(f"round {r + 1}: {medians[-1] * 1e3:.2f} ms per token ({nbytes / medians[-1] / 1e9:.1f} GB/s)")
    m = statistics.median(medians)
    print(f"median {m * 1e3:.2f} ms per token, {nbytes / m / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
