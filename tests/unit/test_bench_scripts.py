"""Measurement helpers of the bench/ scripts: what they time is what their tables say."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import candlejax as cj
from candlejax.generation import generate

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bigram_step(params, cache, tokens, pos):
    tokens = cj.tensor._core.unwrap(tokens)
    return params[tokens[:, -1]], cache


def test_ms_per_decode_token_matches_the_host_clock():
    # 6 tokens: the prefill gives the first, then 5 decode steps; the consumer holds each token 0.1 s,
    # so the time between the first token's arrival and the last one's is 5 x ~0.1 s: ~100 ms per step
    # (dividing by decode_steps - 1 gave 125 ms)
    ms_per_decode_token = _bench_module("scaling").ms_per_decode_token
    params = jnp.asarray(np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32))
    list(generate(_bigram_step, params, {}, [1, 2, 3], 6))  # compile
    g = generate(_bigram_step, params, {}, [1, 2, 3], 6)
    stamps = []
    for _ in g:
        stamps.append(time.perf_counter())
        time.sleep(0.1)
    host_ms = (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1e3
    assert len(g.tokens) == 6 and g.stats["decode_steps"] == 5
    got = ms_per_decode_token(g.stats)
    assert abs(got - host_ms) < 0.1 * host_ms, (got, host_ms)
    assert 100.0 <= got < 115.0, got

