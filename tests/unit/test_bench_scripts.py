"""Measurement helpers of the bench/ scripts: what they time is what their tables say."""

from __future__ import annotations

import importlib.util
import sys
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
    # the consumer's own clock is the reference (a loaded machine stretches both alike); one step too
    # few in the divisor is 25% off it
    assert abs(got - host_ms) < 0.1 * host_ms, (got, host_ms)
    assert got >= 100.0, got  # each step waited at least the consumer's 0.1 s


def test_vision_torch_compile_keeps_static_shapes():
    # bench/vision.py times torch.compile at batch 1, then batch 32 in the same process: torch's default
    # (automatic dynamic shapes) recompiles the second with a symbolic batch; the row must time a
    # static graph for each batch, as candlejax compiles one program per shape
    import torch

    compile_static = _bench_module("vision").compile_static
    graphs: list[list[object]] = []

    def backend(gm, example_inputs):
        graphs.append([type(a).__name__ if not isinstance(a, torch.Tensor) else tuple(a.shape)
                       for a in example_inputs])  # fmt: skip
        return gm.forward

    f = compile_static(torch.nn.Linear(8, 4), backend=backend)
    for b in (1, 32):
        f(torch.ones(b, 8))
    assert len(graphs) == 2
    assert all("SymInt" not in g for g in graphs), graphs
    assert graphs[1][-1] == (32, 8)


def test_io_names_the_candlejax_its_children_import(tmp_path, monkeypatch):
    # without PYTHONPATH, this interpreter may resolve candlejax through an editable install of another
    # checkout, while bench/io.py's children put its own checkout on their path: the line it prints must
    # name the tree the children measure
    io = _bench_module("io")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    got = io.children_candlejax(tmp_path)
    assert Path(got) == io.ROOT / "candlejax" / "__init__.py", got


def test_generate_ratios_pair_the_same_rounds():
    # bench/generate.py --rounds R: candlejax / llama.cpp per round; a failed round of one engine must not
    # shift the pairing (round 2 of candlejax against round 3 of llama.cpp)
    ratios = _bench_module("generate").same_round_ratios
    cj = [{"decode_tok_s": 100.0}, {"skipped": "failed"}, {"decode_tok_s": 120.0}]
    lc = [{"decode_tok_s": 50.0}, {"decode_tok_s": 80.0}, {"decode_tok_s": 40.0}]
    assert ratios(cj, lc) == [2.0, 3.0]
    assert ratios(lc, [{"skipped": "not installed"}]) == []


def test_whisper_same_words():
    same_words = _bench_module("whisper").same_words
    assert same_words(" The quick brown fox.", "the quick, brown fox") == "yes"
    assert same_words("the quick brown fox", "the quick brown box").startswith("no (word 3")
    assert same_words("the quick brown", "the quick brown fox") == "no (3 / 4 words)"


def test_provenance_names_the_tree_and_a_missing_native_build(tmp_path, monkeypatch):
    describe = _bench_module("provenance").describe
    here = Path(cj.__file__).resolve().parent
    built = any(here.glob("quantized/_native*.so"))
    assert describe().startswith(f"candlejax from {here} (commit ")
    assert describe().endswith("built") == built
    monkeypatch.setenv("CANDLEJAX_NATIVE", "0")
    assert describe().endswith("off (CANDLEJAX_NATIVE=0: pure-JAX paths)")
    monkeypatch.delenv("CANDLEJAX_NATIVE")
    # another checkout without the built kernels (a fresh worktree): its scripts would take the pure-JAX paths
    (tmp_path / "candlejax" / "quantized").mkdir(parents=True)
    (tmp_path / "candlejax" / "__init__.py").write_text("")
    monkeypatch.delitem(sys.modules, "candlejax")
    monkeypatch.syspath_prepend(str(tmp_path))
    got = describe()
    assert got.startswith(f"candlejax from {tmp_path.resolve() / 'candlejax'}")
    assert got.endswith("NOT BUILT (pure-JAX paths)")
