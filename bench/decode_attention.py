"""LLaMA's decoding attention: ``StackedKvCache.attend`` (the native attention over the stacked cache,
in place) against the former ``update`` + ``ops.sdpa`` (XLA's attention of the layer's slices), in
one process, alternating, so that a host whose speed drifts affects both alike.

Three measures (each printed as a markdown table row, medians, and the new / former ratio):

* ``loop``: 30 layers of attention at SmolLM2-135M's shapes (9 query heads on 3 key heads, 160 slots,
  head dim 64) in a ``fori_loop``, µs per loop;
* ``step``: SmolLM2's bare decode step (``jax.jit(llama.step)``), compiled with XLA's default options
  and with ``GENERATION_OPTIONS``, ms per step;
* ``generate``: the user path, ``candlejax.generation.generate`` (128 tokens, greedy), tok/s by the
  median step, and whether both attentions give the same tokens.

The former attention is patched back into ``llama.CausalSelfAttention.forward`` for its turns, and
``jax.clear_caches()`` makes every turn trace and compile its own programs.

    python bench/decode_attention.py                 # all three, 10 alternations each
    python bench/decode_attention.py --only generate --pairs 16
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import PROMPT, _gguf_path  # bench/generate.py: the same GGUF and prompt

from candlejax import Device
from candlejax.generation import Sampling, generate
from candlejax.models import llama, quantized_llama
from candlejax.nn import StackedKvCache, ops
from candlejax.tensor import unwrap
from candlejax.xla import GENERATION_OPTIONS

NEW_FORWARD = llama.CausalSelfAttention.forward


def former_forward(self: Any, x: Any, rotary: Any, cos: Any, sin: Any, cache: Any, layer: Any, pos: Any) -> Any:
    """``CausalSelfAttention.forward`` as it was: ``update`` returns the layer's slices, then ``ops.sdpa``."""
    b, t, _ = x.shape
    nh, nkv, d = self.num_heads, self.num_kv_heads, self.head_dim
    qkv = unwrap(self.q_proj(x))
    q, k, v = qkv[..., : nh * d], qkv[..., nh * d : (nh + nkv) * d], qkv[..., (nh + nkv) * d :]
    q = rotary.apply_tables(q.reshape(b, t, nh, d), cos, sin)
    k = rotary.apply_tables(k.reshape(b, t, nkv, d), cos, sin)
    k_all, v_all, cache = cache.update(layer, k, v.reshape(b, t, nkv, d), pos)
    y = ops.sdpa(q, k_all, v_all, do_causal=True, offset=pos, window=self.window, layout="bshd", kv_layout="bhsd")
    return unwrap(self.o_proj(unwrap(y).reshape(b, t, nh * d))), cache


def use(forward: Any) -> None:
    llama.CausalSelfAttention.forward = forward
    jax.clear_caches()


def row(name: str, unit: str, former: list[float], new: list[float], higher_is_better: bool) -> str:
    ratios = [(n / f) if higher_is_better else (f / n) for f, n in zip(former, new, strict=True)]
    return (f"| {name} | {statistics.median(former):.2f} | {statistics.median(new):.2f} | {unit} | "
            f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |")  # fmt: skip


def measure_loop(pairs: int) -> str:
    layers, hq, hkv, d, slots = 30, 9, 3, 64, 160
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((1, 1, hq, d)), jnp.float32)
    kv = jnp.asarray(rng.standard_normal((1, 1, hkv, d)), jnp.float32)
    shape = (layers, 1, hkv, slots, d)

    def former(cache: Any, pos: Any) -> Any:
        def body(i: Any, carry: Any) -> Any:
            acc, c = carry
            k_all, v_all, c = c.update(i, kv + acc[:, :, :hkv], kv, pos)
            y = ops.sdpa(q + acc, k_all, v_all, do_causal=True, offset=pos, layout="bshd", kv_layout="bhsd")
            return acc + unwrap(y) * 1e-3, c

        return jax.lax.fori_loop(0, layers, body, (jnp.zeros_like(q), cache))

    def new(cache: Any, pos: Any) -> Any:
        def body(i: Any, carry: Any) -> Any:
            acc, c = carry
            y, c = c.attend(i, q + acc, kv + acc[:, :, :hkv], kv, pos)
            return acc + unwrap(y) * 1e-3, c

        return jax.lax.fori_loop(0, layers, body, (jnp.zeros_like(q), cache))

    fns = {"former": jax.jit(former, donate_argnums=0), "new": jax.jit(new, donate_argnums=0)}
    caches = {n: StackedKvCache(jnp.asarray(rng.standard_normal(shape), jnp.float32),
                                jnp.asarray(rng.standard_normal(shape), jnp.float32)) for n in fns}  # fmt: skip
    times: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(pairs):
        for n, fn in fns.items():
            ts = []
            for _ in range(200):
                t = time.perf_counter()
                out, caches[n] = fn(caches[n], np.int32(100))
                out.block_until_ready()
                ts.append(time.perf_counter() - t)
            times[n].append(statistics.median(ts[10:]) * 1e6)
    return row("30 layers of attention (fori_loop)", "µs", times["former"], times["new"], False)


def measure_step(model: Any, pairs: int, options: dict[str, Any] | None, name: str) -> str:
    tok = jnp.zeros((1, 1), jnp.uint32)
    times: dict[str, list[float]] = {"former": [], "new": []}
    for _ in range(pairs):
        for n, fwd in (("former", former_forward), ("new", NEW_FORWARD)):
            use(fwd)
            cache = model.new_cache(1, 160)
            step = jax.jit(llama.step, donate_argnums=1).lower(model, cache, tok, np.int32(100)).compile(options)
            ts = []
            for _ in range(60):
                t = time.perf_counter()
                logits, cache = step(model, cache, tok, np.int32(100))
                logits.block_until_ready()
                ts.append(time.perf_counter() - t)
            times[n].append(statistics.median(ts[5:]) * 1e3)
    use(NEW_FORWARD)
    return row(name, "ms", times["former"], times["new"], False)


def measure_generate(model: Any, pairs: int, n_new: int) -> tuple[str, bool]:
    ids = model.tokenizer.encode(PROMPT)
    rates: dict[str, list[float]] = {"former": [], "new": []}
    same = True
    for _ in range(pairs):
        tokens = {}
        for n, fwd in (("former", former_forward), ("new", NEW_FORWARD)):
            use(fwd)
            gen = generate(llama.step, model, model.new_cache(1, len(ids) + n_new + 1), ids, n_new, Sampling.ArgMax())
            stamps = [time.perf_counter()]
            for _ in gen:
                stamps.append(time.perf_counter())
            steps = [b - a for a, b in itertools.pairwise(stamps[2:])]  # from the 2nd decode step
            rates[n].append(1 / statistics.median(steps))
            tokens[n] = list(gen.tokens)
        same = same and tokens["former"] == tokens["new"]
    use(NEW_FORWARD)
    return row(f"`generate`, {n_new} tokens greedy", "tok/s", rates["former"], rates["new"], True), same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=10, help="alternations of former and new per measure")
    ap.add_argument("--only", choices=["loop", "step", "generate"], help="one measure only")
    ap.add_argument("-n", type=int, default=128, help="new tokens for the generate measure")
    args = ap.parse_args()
    print("| measure | former (median) | new (median) | unit | new / former, median (range) |")
    print("|---|---:|---:|---|---|")
    if args.only in (None, "loop"):
        print(measure_loop(args.pairs), flush=True)
    if args.only in ("step", "generate", None):
        model = quantized_llama.ModelWeights.from_gguf(_gguf_path(), Device.Cpu)
        if args.only in (None, "step"):
            print(measure_step(model, args.pairs, None, "bare decode step, XLA's default options"), flush=True)
            print(measure_step(model, args.pairs, dict(GENERATION_OPTIONS), "bare decode step, `GENERATION_OPTIONS`"),
                  flush=True)  # fmt: skip
        if args.only in (None, "generate"):
            line, same = measure_generate(model, args.pairs, args.n)
            print(line)
            print(f"\ngreedy tokens of the two attentions identical in every pair: {same}")


if __name__ == "__main__":
    main()
