"""candlejax.generation: sampling rules and distributions, repeat penalty, the compiled
prefill + decode driver, and streaming text."""

from __future__ import annotations

import dataclasses
import functools
import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import candlejax as cj
from candlejax.generation import (
    LogitsProcessor,
    RecentTokens,
    Sampling,
    TokenOutputStream,
    apply_repeat_penalty,
    apply_repeat_penalty_mask,
    compile_generation,
    context_mask,
    generate,
    normalize_sampling,
    sample_jax,
    sampling_from_args,
    sampling_key,
    seed_key,
)
from candlejax.quantized import native

# --- references ------------------------------------------------------------------------------------


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _candle_topp(prs: np.ndarray, p: float) -> np.ndarray:
    """Candle's sample_topp: walk descending (stable), zero once the running sum reaches p."""
    prs = prs.copy()
    order = sorted(range(len(prs)), key=lambda i: -prs[i])
    cum = 0.0
    for i in order:
        if cum >= p:
            prs[i] = 0.0
        else:
            cum += prs[i]
    return prs


def candle_distribution(logits: np.ndarray, s: Sampling) -> np.ndarray:
    """The distribution Candle's LogitsProcessor samples from, written from its Rust source."""
    v = len(logits)
    if isinstance(s, Sampling.ArgMax):
        out = np.zeros(v)
        out[np.argmax(logits)] = 1
        return out
    prs = _softmax(logits.astype(np.float64) / s.temperature)
    if isinstance(s, Sampling.All | Sampling.GumbelSoftmax):
        out = prs
    elif isinstance(s, Sampling.TopP):
        out = prs if s.p <= 0 or s.p >= 1 else _candle_topp(prs, s.p)
    elif isinstance(s, Sampling.TopK):
        out = prs.copy()
        if s.k < v:
            out[np.argsort(-prs)[s.k :]] = 0
    elif isinstance(s, Sampling.TopKThenTopP):
        if s.k >= v:
            out = _candle_topp(prs, s.p)
        else:
            idx = np.argsort(-prs)[: s.k]
            sub = prs[idx]
            sub = sub if s.p <= 0 or s.p >= sub.sum() else _candle_topp(sub, s.p)
            out = np.zeros(v)
            out[idx] = sub
    else:
        raise AssertionError(s)
    return out / out.sum()


def candle_repeat_penalty(logits: np.ndarray, penalty: float, context: list[int]) -> np.ndarray:
    """candle_transformers::utils::apply_repeat_penalty, line by line."""
    out = logits.astype(np.float32).copy()
    seen: set[int] = set()
    for t in context:
        if t in seen:
            continue
        seen.add(t)
        if 0 <= t < len(out):
            out[t] = out[t] / penalty if out[t] >= 0 else out[t] * penalty
    return out


# --- Sampling rules ---------------------------------------------------------------------------------


def test_argmax_exact(rng):
    x = rng.normal(size=(5, 101)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(sample_jax(x, None, Sampling.ArgMax())), x.argmax(-1))
    lp = LogitsProcessor(1, temperature=None)
    for row in x:
        assert lp.sample(cj.Tensor.from_jax(jnp.asarray(row))) == int(row.argmax())
        assert lp.sample(row) == int(row.argmax())
    assert lp.step == 0  # greedy draws use no randomness
    # bf16 logits are compared in f32
    assert lp.sample(jnp.asarray(x[0], dtype=jnp.bfloat16)) == int(np.asarray(jnp.asarray(x[0], jnp.bfloat16)).argmax())


def test_constructor_rules():
    assert LogitsProcessor(0).sampling == Sampling.ArgMax()
    assert LogitsProcessor(0, temperature=1e-8).sampling == Sampling.ArgMax()
    assert LogitsProcessor(0, temperature=0.0, top_p=0.9).sampling == Sampling.ArgMax()
    assert LogitsProcessor(0, temperature=0.7).sampling == Sampling.All(0.7)
    assert LogitsProcessor(0, temperature=0.7, top_p=0.9).sampling == Sampling.TopP(0.9, 0.7)
    lp = LogitsProcessor.from_sampling(3, Sampling.TopK(k=5, temperature=1.0))
    assert lp.sampling == Sampling.TopK(5, 1.0) and lp.seed == 3
    assert LogitsProcessor.from_sampling(3, Sampling.ArgMax).sampling == Sampling.ArgMax()
    assert hash(Sampling.TopKThenTopP(3, 0.5, 1.0)) == hash(Sampling.TopKThenTopP(3, 0.5, 1.0))


@pytest.mark.parametrize(
    ("given", "vocab", "expected"),
    [
        (Sampling.All(0.0), 10, Sampling.ArgMax()),
        (Sampling.TopP(0.0, 0.8), 10, Sampling.All(0.8)),
        (Sampling.TopP(-0.5, 0.8), 10, Sampling.All(0.8)),
        (Sampling.TopP(1.0, 0.8), 10, Sampling.All(0.8)),
        (Sampling.TopP(0.9, 0.8), 10, Sampling.TopP(0.9, 0.8)),
        (Sampling.TopP(float("nan"), 0.8), 10, Sampling.All(0.8)),  # Candle's cut at NaN keeps every token
        (Sampling.TopKThenTopP(3, float("nan"), 0.8), 10, Sampling.TopK(3, 0.8)),
        (Sampling.TopK(10, 0.8), 10, Sampling.All(0.8)),
        (Sampling.TopK(50, 0.8), 10, Sampling.All(0.8)),
        (Sampling.TopK(3, 0.8), 10, Sampling.TopK(3, 0.8)),
        (Sampling.TopKThenTopP(10, 0.5, 0.8), 10, Sampling.TopP(0.5, 0.8)),
        (Sampling.TopKThenTopP(10, 1.0, 0.8), 10, Sampling.All(0.8)),
        (Sampling.TopKThenTopP(3, 0.0, 0.8), 10, Sampling.TopK(3, 0.8)),
        (Sampling.GumbelSoftmax(1e-9), 10, Sampling.ArgMax()),
        (None, 10, Sampling.ArgMax()),
    ],
)
def test_edge_rules(given, vocab, expected):
    assert normalize_sampling(given, vocab) == expected


def test_sampling_from_cli_args():
    assert sampling_from_args(None) == Sampling.ArgMax()
    assert sampling_from_args(0.0, top_k=5) == Sampling.ArgMax()
    assert sampling_from_args(0.8) == Sampling.All(0.8)
    assert sampling_from_args(0.8, top_k=5) == Sampling.TopK(5, 0.8)
    assert sampling_from_args(0.8, top_p=0.9) == Sampling.TopP(0.9, 0.8)
    assert sampling_from_args(0.8, 5, 0.9) == Sampling.TopKThenTopP(5, 0.9, 0.8)


def test_bad_sampling_raises():
    with pytest.raises(cj.Error, match="k >= 1"):
        normalize_sampling(Sampling.TopK(0, 1.0))
    with pytest.raises(cj.Error, match="needs arguments"):
        normalize_sampling(Sampling.TopK)
    with pytest.raises(cj.Error):
        LogitsProcessor(0, 1.0).sample(np.zeros((2, 3), np.float32))
    # every logit -inf: softmax is NaN, nothing to draw (Candle's WeightedIndex fails); argmax gives 0
    for sampling in (Sampling.All(1.0), Sampling.TopK(2, 1.0), Sampling.TopP(0.5, 1.0)):
        with pytest.raises(cj.Error, match="every logit is -inf"):
            LogitsProcessor.from_sampling(0, sampling).sample(np.full(4, -np.inf, np.float32))
    assert LogitsProcessor.from_sampling(0, Sampling.ArgMax()).sample(np.full(4, -np.inf, np.float32)) == 0
    # the draw with p = NaN is the plain multinomial's (it used to return token 0 every time)
    x = np.log(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    a = LogitsProcessor.from_sampling(5, Sampling.TopP(float("nan"), 1.0))
    b = LogitsProcessor.from_sampling(5, Sampling.All(1.0))
    assert [a.sample(x) for _ in range(20)] == [b.sample(x) for _ in range(20)]


def test_overflowed_logits_raise_as_candle_and_torch_refuse_them():
    """A +inf logit (or one that overflows once divided by the temperature) makes the softmax NaN:
    Candle's WeightedIndex and torch.multinomial refuse it; sampling used to return token 0."""
    torch = pytest.importorskip("torch")
    x = np.array([0.0, np.inf, 1.0, -np.inf], np.float32)
    with pytest.raises(RuntimeError):
        torch.multinomial(torch.softmax(torch.from_numpy(x), -1), 1)
    huge = np.array([3e38, 3e38, 1.0], np.float32)  # finite, but +inf once divided by 0.5
    variants = (Sampling.All(1.0), Sampling.TopK(2, 1.0), Sampling.TopP(0.5, 1.0), Sampling.TopKThenTopP(2, 0.5, 1.0))
    for sampling in variants:
        lp = LogitsProcessor.from_sampling(0, sampling)
        with pytest.raises(cj.Error, match=r"\+inf once divided by the temperature"):
            lp.sample(x)
        with pytest.raises(cj.Error, match=r"\+inf"):
            lp.sample_f(x, lambda p: p)
    with pytest.raises(cj.Error, match=r"\+inf"):
        LogitsProcessor.from_sampling(0, Sampling.All(0.5)).sample(huge)
    assert LogitsProcessor.from_sampling(0, Sampling.All(1.0)).sample(huge) in (0, 1)
    assert LogitsProcessor.from_sampling(0, Sampling.ArgMax()).sample(x) == 1  # argmax is defined
    assert LogitsProcessor.from_sampling(0, Sampling.GumbelSoftmax(1.0)).sample(x) == 1



def test_seed_key_is_candles_stdrng_key_without_compiling(jax_compiles):
    from candlejax.generation.candle_rng import chacha_block, stdrng_key

    for seed in (0, 1, 7, 2**31 - 1, 2**32 - 1, 2**64 - 1):
        jax_compiles.clear()
        got = np.asarray(seed_key(seed))
        assert got.dtype == np.uint32 and got.shape == (8,)
        assert got.tolist() == stdrng_key(seed).tolist(), seed
        assert not jax_compiles
    # rand's StdRng value-stability vector (ChaCha12 from a fixed 32-byte seed, first next_u64)
    key = np.array([1, 23, 200 + 256, 210 + 30 * 256, 0, 0, 0, 0], np.uint32)
    words = chacha_block(key, np.uint32(0), np.uint32(0))
    assert (int(words[1]) << 32) | int(words[0]) == 10719222850664546238
    # ... and its second value: StdRng::from_rng(&mut rng0) keys a new ChaCha12 with words 2..10
    again = chacha_block(np.array(words[2:10], np.uint32), np.uint32(0), np.uint32(0))
    assert (int(again[1]) << 32) | int(again[0]) == 14064965282130556830
    # ChaCha20's IETF test vector 1 (zero key and nonce), the same block function with 10 double rounds
    words = chacha_block(np.zeros(8, np.uint32), np.uint32(0), np.uint32(0), double_rounds=10)
    assert [int(w) for w in words[:4]] == [0xADE0B876, 0x903DF1A0, 0xE56A5D40, 0x28BD8653]


def test_host_stdrng_and_weighted_index_are_rands():
    """``StdRng.next_u32`` walks the ChaCha12 key stream word by word (rand's BlockRng), and
    ``weighted_index`` is rand's ``WeightedIndex<f32>``: running sums in index order, the point
    ``u * total``, ``partition_point(|w| *w <= chosen)``; invalid weights raise as rand refuses them."""
    from candlejax.generation.candle_rng import StdRng, chacha_block, stdrng_key, stream_u32, weighted_index

    key = stdrng_key(2**40 + 9)
    words = [int(w) for b in range(3) for w in chacha_block(key, np.uint32(b), np.uint32(0))]
    host = StdRng.seed_from_u64(2**40 + 9)
    assert [host.next_u32() for _ in range(40)] == words[:40] and host.index == 40
    assert int(np.asarray(jax.jit(stream_u32)(jnp.asarray(key), jnp.uint32(39)))) == words[39]
    rng = np.random.default_rng(4)
    for n in range(40):
        w = rng.exponential(size=200).astype(np.float32)
        w[rng.integers(0, 200, 20)] = 0.0
        total, cum = np.float32(0.0), []
        for v in w:
            total = np.float32(total + v)
            cum.append(total)
        u = np.float32((words[n] >> 9) / 2.0**23)  # UniformFloat<f32>: 23 bits in [0, 1)
        chosen = np.float32(u * total)
        want = next((i for i, c in enumerate(cum[:-1]) if c > chosen), len(w) - 1)
        assert weighted_index(w, words[n]) == want, n
    assert weighted_index([0.0, 0.0, 1.0, 0.0], 0xFFFFFFFF) == 2 and weighted_index([0.0, 2.0], 0) == 1
    for bad in ([0.0, 0.0], [1.0, -0.5], [np.nan, 1.0], []):
        with pytest.raises(cj.Error, match="WeightedIndex"):
            weighted_index(bad, 0)
    with pytest.raises(cj.Error, match="seed"):
        StdRng.seed_from_u64(-1)


def _candle_sample_topk_topp(prs: np.ndarray, k: int, p: float, word: int) -> int:
    """Candle's ``sample_topk_topp`` (k <= 16 distinct probabilities: ``select_nth_unstable`` leaves
    them in descending order) written from generation/mod.rs: ``sum_p`` and ``sample_topp``'s
    ``cumsum`` are f32 running sums; a token is cut once the sum of those before it reaches ``p``."""
    from candlejax.generation.candle_rng import weighted_index

    indices = sorted(range(len(prs)), key=lambda i: -prs[i])[:k]
    sub = [np.float32(prs[i]) for i in indices]
    top_p, sum_p = np.float32(p), np.float32(0.0)
    for v in sub:
        sum_p = np.float32(sum_p + v)
    if not (top_p <= 0 or top_p >= sum_p):
        cumsum = np.float32(0.0)
        for i, v in enumerate(list(sub)):
            if cumsum >= top_p:
                sub[i] = np.float32(0.0)
            else:
                cumsum = np.float32(cumsum + v)
    return indices[weighted_index(np.array(sub, np.float32), word)]


@pytest.mark.parametrize("vals,j", [
    ([0.3159608542919159, 0.23375312983989716, 0.20328378677368164, 0.07018567621707916, 0.052840784192085266,
      0.052552975714206696, 0.02549062855541706, 0.015932176262140274], 0),
    ([0.2650739848613739, 0.2084944248199463, 0.1571432650089264, 0.13855214416980743, 0.06970295310020447,
      0.06016010046005249, 0.0537799671292305, 0.017093196511268616], 3),
])  # fmt: skip
def test_top_k_then_top_p_cuts_at_candles_f32_running_sum(vals, j):
    """``p`` equal to a running sum of the top k: Candle's ``cumsum >= top_p`` cuts every token after
    it. The cut used ``cumsum - vals``, which rounds below the running sum and kept one more token."""
    from candlejax.generation.candle_rng import StdRng

    probs = np.array([*vals, 0.01, 0.004, 0.003, 0.002], np.float32)
    p = float(np.add.accumulate(np.array(vals, np.float32), dtype=np.float32)[j])
    lp = LogitsProcessor.from_sampling(11, Sampling.TopKThenTopP(8, p, 1.0))
    host = StdRng.seed_from_u64(11)
    got = [lp.sample_f(np.zeros(12, np.float32), lambda _: probs) for _ in range(100)]
    want = [_candle_sample_topk_topp(probs, 8, p, host.next_u32()) for _ in range(100)]
    assert got == want
    assert set(want) == set(range(j + 1))


def test_sample_reads_the_device_once_per_token(monkeypatch):
    """``LogitsProcessor.sample`` reads its token and the logits' checks in one transfer (it read the
    NaN count, the whole row for the +inf / all -inf check, then the token); the refusals keep their
    messages and draw nothing."""
    from candlejax.generation import sampling as sampling_mod

    reads = []
    real = sampling_mod.read_to_host
    monkeypatch.setattr(sampling_mod, "read_to_host", lambda a: reads.append(1) or real(a))
    x = np.log(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    for s in (Sampling.ArgMax(), Sampling.All(0.8), Sampling.TopP(0.9, 0.8), Sampling.TopKThenTopP(2, 0.5, 1.0)):
        lp = LogitsProcessor.from_sampling(3, s)
        reads.clear()
        lp.sample(cj.Tensor.from_numpy(x))
        assert len(reads) == 1, s
    lp = LogitsProcessor.from_sampling(3, Sampling.All(1.0))
    with pytest.raises(cj.Error, match=r"LogitsProcessor::sample: 2 of 4 logits are NaN \(the model produced NaN"):
        lp.sample(np.array([np.nan, 1.0, np.nan, 0.0], np.float32))
    with pytest.raises(cj.Error, match="LogitsProcessor::sample: all logits are NaN"):
        LogitsProcessor.from_sampling(3, Sampling.ArgMax()).sample(np.full(3, np.nan, np.float32))
    with pytest.raises(cj.Error, match="LogitsProcessor::sample: every logit is -inf, there is no token to sample"):
        lp.sample(np.full(4, -np.inf, np.float32))
    assert lp.step == 0


def test_seeded_determinism(rng):
    x = rng.normal(size=(40, 50)).astype(np.float32)
    s = Sampling.TopKThenTopP(10, 0.9, 1.2)
    a = LogitsProcessor.from_sampling(42, s)
    b = LogitsProcessor.from_sampling(42, s)
    c = LogitsProcessor.from_sampling(43, s)
    ta = [a.sample(r) for r in x]
    assert ta == [b.sample(r) for r in x]
    assert ta != [c.sample(r) for r in x]
    assert a.step == 40
    # draw n is word n of the seed's StdRng stream: the compiled (here also vmapped) sampler agrees
    base = seed_key(42)
    batched = jax.jit(jax.vmap(lambda r, n: sample_jax(r, sampling_key(base, n), s)))(x, jnp.arange(40))
    assert ta == np.asarray(batched).tolist()
    # seeds are u64: the high 32 bits matter
    assert np.asarray(seed_key(2**40 + 5)).tolist() != np.asarray(seed_key(5)).tolist()


SAMPLINGS = [
    Sampling.All(1.0),
    Sampling.All(0.5),
    Sampling.GumbelSoftmax(0.7),
    Sampling.TopK(3, 1.0),
    Sampling.TopK(1, 1.0),
    Sampling.TopP(0.6, 1.0),
    Sampling.TopP(0.9, 1.5),
    Sampling.TopKThenTopP(4, 0.5, 1.0),
    Sampling.TopKThenTopP(4, 0.95, 0.8),  # p above the mass of the top 4: all 4 kept
]


@pytest.mark.parametrize("s", SAMPLINGS, ids=repr)
def test_distribution(s):
    logits = np.array([1.0, 2.5, 0.3, -1.0, 2.0, 0.9, -0.2, 1.7], np.float32)
    n = 200_000
    keys = jax.random.split(jax.random.key(7), n)
    draws = jax.jit(jax.vmap(lambda k: sample_jax(logits, k, s)))(keys)
    freq = np.bincount(np.asarray(draws), minlength=len(logits)) / n
    expected = candle_distribution(logits, s)
    np.testing.assert_allclose(freq, expected, atol=0.006)
    assert np.all(freq[expected == 0] == 0)  # cut tokens are never drawn


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999])
def test_nucleus_set_is_candles_on_a_large_vocab(rng, p):
    """The sort-free top-p cut keeps exactly the tokens Candle's sorted walk keeps."""
    from candlejax.generation.sampling import _nucleus_mask

    logits = (rng.normal(size=(3, 5000)) * 2).astype(np.float32)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
    got = np.asarray(jax.jit(_nucleus_mask, static_argnums=1)(jnp.asarray(probs), p))
    for b in range(3):
        want = _candle_topp(probs[b].astype(np.float64), p) > 0
        assert (got[b] != want).sum() <= 1, (got[b].sum(), want.sum())  # f32 vs f64 sums at the cut
        assert got[b][np.argmax(probs[b])]


def test_batched_rows_are_independent(rng):
    logits = np.zeros((4, 16), np.float32)
    tok = np.asarray(sample_jax(logits, jax.random.key(0), Sampling.All(1.0)))
    assert tok.shape == (4,) and tok.dtype == np.int32
    assert len(set(tok.tolist())) > 1
    tk = np.asarray(sample_jax(rng.normal(size=(3, 16)).astype(np.float32), jax.random.key(1), Sampling.TopP(0.5, 1)))
    assert tk.shape == (3,)


def test_sample_f_edits_probabilities(rng):
    x = rng.normal(size=20).astype(np.float32)

    def forbid_top(p: np.ndarray) -> None:
        p[np.argmax(p)] = 0.0

    lp = LogitsProcessor(5, temperature=1.0)
    toks = [lp.sample_f(x, forbid_top) for _ in range(50)]
    assert int(x.argmax()) not in toks
    assert LogitsProcessor(5).sample_f(x, forbid_top) == int(x.argmax())  # ArgMax ignores f, as Candle


def _candle_topp_tokens(probs: np.ndarray, p: float) -> set[int]:
    """The tokens Candle's sample_topp can draw from (edited, not renormalised) probabilities."""
    return {int(i) for i in np.flatnonzero(_candle_topp(probs, p) > 0)}


def test_sample_f_top_p_cuts_the_edited_probabilities_as_candle():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))

    def halve(p: np.ndarray) -> None:
        p *= 0.5

    lp = LogitsProcessor.from_sampling(3, Sampling.TopP(0.7, 1.0))
    drawn = {lp.sample_f(logits, halve) for _ in range(300)}
    assert drawn == _candle_topp_tokens(np.array([0.25, 0.15, 0.075, 0.025]), 0.7) == {0, 1, 2, 3}
    lp = LogitsProcessor.from_sampling(3, Sampling.TopP(0.7, 1.0))
    unedited = {lp.sample_f(logits, lambda p: None) for _ in range(200)}
    assert unedited == _candle_topp_tokens(np.exp(logits), 0.7) == {0, 1}


def test_sample_f_top_p_cuts_weights_above_one_as_candle(rng):
    """``f`` may return weights > 1 (counts, unnormalised scores): Candle's walk reaches ``p`` after the
    first of [5, 3, 1.5, 0.5], so only token 0 can be drawn."""
    from candlejax.generation.sampling import _nucleus_mask

    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))

    def times_ten(p: np.ndarray) -> None:
        p *= 10.0

    lp = LogitsProcessor.from_sampling(3, Sampling.TopP(0.7, 1.0))
    drawn = {lp.sample_f(logits, times_ten) for _ in range(100)}
    assert drawn == _candle_topp_tokens(np.array([5.0, 3.0, 1.5, 0.5]), 0.7) == {0}
    w = (rng.random((2, 300)) * 50).astype(np.float32)
    got = np.asarray(_nucleus_mask(jnp.asarray(w), 0.9))
    for b in range(2):
        assert set(np.flatnonzero(got[b])) == _candle_topp_tokens(w[b], 0.9) == {int(np.argmax(w[b]))}
    w[:, :] = 0.25
    assert np.asarray(_nucleus_mask(jnp.asarray(w), 0.9)).all()  # equal weights at the cut: all kept


def test_logits_processor_new_is_candles_constructor():
    assert LogitsProcessor.new(42, 0.8, None).sampling == LogitsProcessor(42, 0.8, None).sampling == Sampling.All(0.8)


def test_sample_f_gumbel_softmax_ignores_f_as_candle():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))

    def forbid_first(p: np.ndarray) -> None:
        p[0] = 0.0

    lp = LogitsProcessor.from_sampling(3, Sampling.GumbelSoftmax(1.0))
    assert sum(lp.sample_f(logits, forbid_first) == 0 for _ in range(200)) > 60


# --- repeat penalty ---------------------------------------------------------------------------------


def test_repeat_penalty_matches_candle(rng):
    x = rng.normal(size=30).astype(np.float32) * 3
    ctx = [3, 3, 7, 0, 29, 7, 12, 45, 3]  # duplicates count once; 45 is outside the vocab
    want = candle_repeat_penalty(x, 1.3, ctx)
    np.testing.assert_allclose(np.asarray(apply_repeat_penalty(x, 1.3, ctx)), want, rtol=1e-6)
    t = apply_repeat_penalty(cj.Tensor.from_jax(jnp.asarray(x, dtype=jnp.bfloat16)), 1.3, ctx)
    assert isinstance(t, cj.Tensor) and t.dtype == cj.DType.F32
    # untouched tokens keep their values, a penalty of 1 is the identity
    np.testing.assert_array_equal(np.asarray(apply_repeat_penalty(x, 1.0, ctx)), x)
    np.testing.assert_array_equal(np.asarray(apply_repeat_penalty(x, 1.3, [])), x)
    for penalty in (0.0, -1.0, float("nan")):  # inf logits or a flipped order (transformers raises too)
        with pytest.raises(cj.Error, match="repeat penalty must be > 0"):
            apply_repeat_penalty(x, penalty, ctx)
    with pytest.raises(cj.Error, match="context ids must be integers"):
        apply_repeat_penalty(x, 1.3, [0.5])


def test_repeat_penalty_matches_transformers(rng):
    torch = pytest.importorskip("torch")
    from transformers import RepetitionPenaltyLogitsProcessor

    x = rng.normal(size=(1, 40)).astype(np.float32) * 2
    ctx = rng.integers(0, 40, size=25)
    ref = RepetitionPenaltyLogitsProcessor(penalty=1.7)(torch.tensor(ctx[None]), torch.tensor(x.copy()))
    ours = apply_repeat_penalty(x[0], 1.7, ctx.tolist())
    np.testing.assert_allclose(np.asarray(ours), ref.numpy()[0], rtol=1e-6)


def test_repeat_penalty_jit_forms(rng):
    x = rng.normal(size=(2, 30)).astype(np.float32)
    ctx = np.array([[1, 1, 5, -1, -1], [29, 0, 7, 7, 3]], np.int32)  # -1 = padding
    f = jax.jit(lambda lg, c, p: apply_repeat_penalty(lg, p, c))
    out = np.asarray(f(x, ctx, 1.5))
    for b in range(2):
        want = candle_repeat_penalty(x[b], 1.5, [int(t) for t in ctx[b] if t >= 0])
        np.testing.assert_allclose(out[b], want, rtol=1e-6)
    counts = np.zeros((30,), np.int32)
    counts[[2, 4, 4]] = 3
    np.testing.assert_allclose(
        np.asarray(jax.jit(apply_repeat_penalty_mask)(x[0], 2.0, counts)), candle_repeat_penalty(x[0], 2.0, [2, 4])
    )
    valid = np.array([True, False, True])
    m = np.asarray(context_mask(np.array([3, 4, 5]), 8, valid))
    assert m.tolist() == [False, False, False, True, False, True, False, False]
    # uint32 ids, including huge ones, are safe
    m = np.asarray(context_mask(np.array([1, 2**32 - 1], np.uint32), 4))
    assert m.tolist() == [False, True, False, False]
    # so are 64-bit ones: out of the vocabulary, never wrapped to 32 bits (2**32 + 3 is not id 3)
    for dt in (np.int64, np.uint64):
        big = np.array([2, 2**32 + 3, 2**32], dt)
        assert np.asarray(context_mask(big, 8)).tolist() == [False, False, True, False, False, False, False, False]
        np.testing.assert_array_equal(np.asarray(apply_repeat_penalty(x[0, :8], 2.0, big)),
                                      candle_repeat_penalty(x[0, :8], 2.0, [2]))  # fmt: skip


def test_recent_tokens_window():
    r = RecentTokens.create(4, [9, 8, 7, 6, 5, 4])
    assert set(np.flatnonzero(np.asarray(r.mask(10))).tolist()) == {7, 6, 5, 4}
    r = jax.jit(RecentTokens.push)(r, jnp.int32(1))
    assert set(np.flatnonzero(np.asarray(r.mask(10))).tolist()) == {6, 5, 4, 1}
    r = RecentTokens.create(3)
    assert not np.asarray(r.mask(5)).any()
    r = r.push(2).push(2).push(3).push(4)
    assert set(np.flatnonzero(np.asarray(r.mask(5))).tolist()) == {2, 3, 4}


# --- generate() with a toy model ---------------------------------------------------------------------

V, L = 32, 96


def make_model(seed: int = 0):
    """A bigram model with a pre-allocated token cache whose sum shifts the logits, so a wrong
    cache or position shows up in the tokens. Returns (params, fresh_cache, step, trace_log)."""
    r = np.random.default_rng(seed)
    params = {
        "W": jnp.asarray(r.normal(size=(V, V)).astype(np.float32) * 3),
        "U": jnp.asarray(r.normal(size=(V,)).astype(np.float32)),
    }
    traces: list[tuple[int, ...]] = []

    def step(params, cache, tokens, pos):
        tokens = cj.tensor._core.unwrap(tokens)
        traces.append(tuple(tokens.shape))
        _, s = tokens.shape
        buf = jax.lax.dynamic_update_slice(cache["buf"], tokens.astype(jnp.int32), (0, pos))
        valid = jnp.arange(L) < pos + s
        hist = jnp.sum(jnp.where(valid[None, :], params["U"][buf], 0.0), axis=1)
        logits = params["W"][tokens[:, -1]] + 0.3 * hist[:, None] * params["U"][None, :]
        return logits, {"buf": buf}

    def fresh():
        return {"buf": jnp.zeros((1, L), jnp.int32)}

    return params, fresh, step, traces


_SHARED = make_model(3)


def host_loop(step, params, cache, prompt, n, choose, eos=None, penalty=1.0, last_n=64):
    """Candle's example loop, eagerly: forward, (penalty), choose, feed back."""
    tokens = list(prompt)
    out = []
    pos = 0
    inp = prompt
    for _ in range(n):
        logits, cache = step(params, cache, jnp.asarray([inp], jnp.uint32), pos)
        pos += len(inp)
        row = np.asarray(logits)[0]
        if penalty != 1.0:
            row = np.asarray(apply_repeat_penalty(row, penalty, tokens[-last_n:]))
        t = choose(row)
        if t == eos:
            break
        tokens.append(t)
        out.append(t)
        inp = [t]
    return out


def test_generate_greedy_one_compile():
    params, fresh, step, traces = make_model()
    prompt = [1, 2, 3, 4, 5]
    want = host_loop(step, params, fresh(), prompt, 30, lambda r: int(np.argmax(r)))
    traces.clear()
    g = generate(step, params, fresh(), prompt, 30)
    got = list(g)
    assert got == want
    # the prompt went through the model in one call, then one compiled (1, 1) step served every token
    assert traces == [(1, 5), (1, 1)]
    assert g.finish_reason == "length" and g.pos == 5 + 29 and g.stats["decode_steps"] == 29
    # a second generation with the same prompt length compiles nothing new
    want = host_loop(step, params, fresh(), [5, 4, 3, 2, 1], 10, lambda r: int(np.argmax(r)))
    traces.clear()
    assert list(generate(step, params, fresh(), [5, 4, 3, 2, 1], 10)) == want
    assert traces == []
    list(generate(step, params, fresh(), [7, 7], 3))
    assert traces == [(1, 2)]


def test_generate_stops_at_eos():
    params, fresh, step, _ = _SHARED
    full = list(generate(step, params, fresh(), [3, 1], 20))
    eos = full[6]
    k = full.index(eos)
    g = generate(step, params, fresh(), [3, 1], 20, eos_token_id=eos)
    assert list(g) == full[:k] and g.finish_reason == "eos" and g.last_token == eos
    g = generate(step, params, fresh(), [3, 1], 20, eos_token_id=[999, eos], yield_eos=True)
    assert list(g) == full[: k + 1]
    # a numpy / jax scalar (e.g. a tokenizer's id kept as an array) is one id; it used to raise
    # numpy's "iteration over a 0-d array", and a str was read digit by digit ("25": ids 2 and 5)
    for one in (np.int64(eos), np.array(eos), jnp.int32(eos), jnp.asarray([999, eos])):
        assert list(generate(step, params, fresh(), [3, 1], 20, eos_token_id=one)) == full[:k]
    for bad in (str(eos), float(eos), [eos, None], True, np.array([1.0])):
        with pytest.raises(cj.Error, match="eos_token_id"):
            generate(step, params, fresh(), [3, 1], 20, eos_token_id=bad)


@pytest.mark.parametrize("pipeline", [False, True])
def test_generate_raises_where_the_logits_cannot_be_sampled(pipeline):
    """NaN logits (and, for the multinomial variants, a +inf one) raise as LogitsProcessor.sample
    does; the compiled step used to hand out token 0 for them, step after step."""
    params, fresh, step, _ = _SHARED
    nan = dict(params, W=params["W"].at[7].set(jnp.nan))
    inf = dict(params, W=params["W"].at[7, 3].set(jnp.inf))
    full = list(generate(step, params, fresh(), [3, 1], 6, pipeline=pipeline))
    for sampling in (Sampling.ArgMax(), Sampling.All(1.0), Sampling.TopP(0.9, 1.0)):
        with pytest.raises(cj.Error, match="new token 1: a logit is NaN"):
            list(generate(step, nan, fresh(), [7], 5, sampling, pipeline=pipeline))
        with pytest.raises(cj.Error, match="NaN"):  # eager: the same refusal
            LogitsProcessor.from_sampling(0, sampling).sample(step(nan, fresh(), jnp.asarray([[7]]), 0)[0][0])
    with pytest.raises(cj.Error, match=r"new token 1: a logit is \+inf"):
        list(generate(step, inf, fresh(), [7], 3, Sampling.TopK(4, 1.0), pipeline=pipeline))
    assert list(generate(step, inf, fresh(), [7], 1, Sampling.ArgMax(), pipeline=pipeline)) == [3]
    # token ids as int32: the same check
    with pytest.raises(cj.Error, match="NaN"):
        list(generate(step, nan, fresh(), [7], 2, token_dtype=jnp.int32, pipeline=pipeline))
    # a later token: the NaN shows up only once token 7 is generated
    g = generate(step, dict(params, W=params["W"].at[full[2]].set(jnp.nan)), fresh(), [3, 1], 6, pipeline=pipeline)
    with pytest.raises(cj.Error, match="new token 4: a logit is NaN"):
        list(g)
    assert g.tokens == full[:3]


def test_generate_streams_lazily():
    params, fresh, step, _ = _SHARED
    g = generate(step, params, fresh(), [1, 2], 10)
    assert g.tokens == [] and g.pos == 0  # nothing runs before the first next()
    first = next(g)
    assert g.tokens == [first] and g.stats["decode_steps"] == 0
    second = next(g)
    assert g.tokens == [first, second] and g.stats["decode_steps"] == 1


@pytest.mark.parametrize(
    ("sampling", "pipeline"),
    [(Sampling.TopKThenTopP(8, 0.9, 0.8), False), (Sampling.All(1.0), True)],
    ids=["topk-topp", "all-pipelined"],
)
def test_generate_sampling_same_tokens_as_processor(sampling, pipeline):
    params, fresh, step, _ = _SHARED
    ref = LogitsProcessor.from_sampling(11, sampling)
    want = host_loop(step, params, fresh(), [4, 5, 6], 25, ref.sample, penalty=1.3, last_n=8)
    lp = LogitsProcessor.from_sampling(11, sampling)
    g = generate(step, params, fresh(), [4, 5, 6], 25, lp, repeat_penalty=1.3, repeat_last_n=8, pipeline=pipeline)
    assert list(g) == want
    assert lp.step == ref.step == 25  # the processor's stream advanced as if it had sampled
    # same seed, same text; another seed, other text
    lp2 = LogitsProcessor.from_sampling(11, sampling)
    assert list(generate(step, params, fresh(), [4, 5, 6], 25, lp2, repeat_penalty=1.3, repeat_last_n=8)) == want
    lp3 = LogitsProcessor.from_sampling(12, sampling)
    assert list(generate(step, params, fresh(), [4, 5, 6], 25, lp3, repeat_penalty=1.3, repeat_last_n=8)) != want


def test_generate_host_processor_and_penalty():
    params, fresh, step, traces = make_model(4)
    want = host_loop(step, params, fresh(), [1, 9], 15, lambda r: int(np.argmax(r)), penalty=2.0, last_n=4)
    traces.clear()
    got = list(
        generate(
            step,
            params,
            fresh(),
            [1, 9],
            15,
            lambda t: int(np.argmax(np.asarray(t))),
            repeat_penalty=2.0,
            repeat_last_n=4,
        )
    )
    assert got == want
    assert traces == [(1, 2), (1, 1)]
    # the fused (on-device) penalty agrees with the host one
    assert list(generate(step, params, fresh(), [1, 9], 15, None, repeat_penalty=2.0, repeat_last_n=4)) == want


@pytest.mark.parametrize("pipeline", [False, True])
def test_generate_continues_from_cache(pipeline):
    params, fresh, step, _ = _SHARED
    whole = list(generate(step, params, fresh(), [2, 3], 12))
    g = generate(step, params, fresh(), [2, 3], 5, pipeline=pipeline)
    assert list(g) == whole[:5]
    # stopped by length: the last token was sampled but not fed; the cache holds prompt + 4
    assert g.pos == 2 + 4 and g.pending_token == g.last_token == whole[4]
    rest = list(generate(step, params, g.cache, g.continuation(), 7, start_pos=g.pos, pipeline=pipeline))
    assert rest == whole[5:]


@pytest.mark.parametrize("pipeline", [False, True])
def test_generate_continues_after_eos(pipeline):
    params, fresh, step, _ = _SHARED
    whole = list(generate(step, params, fresh(), [2, 3], 12))
    eos = whole[3]
    k = whole.index(eos)
    g = generate(step, params, fresh(), [2, 3], 12, eos_token_id=eos, pipeline=pipeline)
    assert list(g) == whole[:k]
    # a pipelined run has already fed the EOS (pending_token None); continuation() covers both
    assert (g.pending_token is None) == pipeline and g.pos == 2 + k + (1 if pipeline else 0)
    nxt = g.continuation([7])
    assert nxt == ([7] if pipeline else [eos, 7])
    rest = list(generate(step, params, g.cache, nxt, 6, start_pos=g.pos))
    assert rest == list(generate(step, params, fresh(), [2, 3, *whole[: k + 1], 7], 6))


def test_generate_tensor_tokens_and_errors():
    params, fresh, step, _ = _SHARED

    def tstep(params, cache, tokens, pos):
        assert isinstance(tokens, cj.Tensor) and tokens.dtype == cj.DType.U32
        return step(params, cache, tokens, pos)

    want = list(generate(step, params, fresh(), [1, 2], 6))
    assert list(generate(tstep, params, fresh(), np.array([[1, 2]]), 6, tokens_as_tensor=True)) == want
    assert list(generate(step, params, fresh(), [1, 2], 0)) == []
    with pytest.raises(cj.Error, match="one sequence"):
        generate(step, params, fresh(), [[1, 2], [3, 4]], 4)
    with pytest.raises(cj.Error, match="empty"):
        generate(step, params, fresh(), [], 4)
    with pytest.raises(cj.Error, match="must be integers"):
        generate(step, params, fresh(), [1.9, 2.0], 4)
    with pytest.raises(cj.Error, match="invalid index -1"):
        generate(step, params, fresh(), [1, -1], 4)
    with pytest.raises(cj.Error, match="repeat penalty must be > 0"):
        generate(step, params, fresh(), [1, 2], 4, repeat_penalty=0.0)
    # Candle's repeat_last_n is a usize: a negative window used to turn the penalty off silently
    with pytest.raises(cj.Error, match="repeat_last_n must be >= 0"):
        generate(step, params, fresh(), [1, 2], 4, repeat_penalty=1.3, repeat_last_n=-4)
    with pytest.raises(cj.Error, match="the cache holds batch 2"):
        generate(step, params, cj.nn.StackedKvCache.new(1, 2, 1, 8, 4), [1, 2], 4)


@pytest.mark.parametrize("processor", [None, lambda row: int(np.argmax(np.asarray(row.jax)))], ids=["fused", "host"])
def test_generate_with_a_cache_donated_to_an_earlier_generation_raises(processor):
    """``donate_cache`` (the default) hands the cache to the generation: feeding it to a second one
    raised XLA's bare ``ValueError: ... Buffer has been deleted or donated``."""
    params, fresh, step, _ = _SHARED
    cache = fresh()
    list(generate(step, params, cache, [1, 2], 3, processor))
    with pytest.raises(cj.errors.DeletedBuffer, match=r"generate: .*donate_cache.*g\.cache"):
        list(generate(step, params, cache, [1, 2], 3, processor))


def test_generate_refuses_transformers_options_it_does_not_have():
    """transformers' ``generate`` keywords that ``generate`` lacks (``attention_mask``, ``max_length``,
    ``do_sample``, ...) raise a candlejax error naming the keyword and what to use instead, never
    a bare ``TypeError`` from a constructor."""
    params, fresh, step, _ = _SHARED
    for kw, hint in (("attention_mask", "padding"), ("max_length", "max_new_tokens"), ("do_sample", "processor"),
                     ("repetition_penalty", "repeat_penalty"), ("top_k", "processor"), ("bogus", "repeat_last_n")):
        with pytest.raises(cj.errors.ArgumentType, match=rf"generate: no option {kw}=.*{hint}"):
            generate(step, params, fresh(), [1, 2], 4, **{kw: 1})
        with pytest.raises(cj.errors.ArgumentType, match=rf"no option {kw}="):
            compile_generation(step, params, fresh(), [1, 2], 4, **{kw: 1})


# --- TokenOutputStream ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def byte_tokenizer():
    """A byte-level BPE with no merges: one token per UTF-8 byte, so characters span tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from candlejax.tokenizer import bytes_to_unicode

    vocab = {c: b for b, c in bytes_to_unicode().items()}
    tk = Tokenizer(models.BPE(vocab, []))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return tk


def test_token_output_stream(byte_tokenizer):
    text = "héllo wörld, 日本語 😀 ok"
    ids = byte_tokenizer.encode(text).ids
    assert len(ids) == len(text.encode())
    stream = TokenOutputStream(byte_tokenizer)
    pieces = []
    for i in ids:
        p = stream.next_token(i)
        if p is not None:
            assert "\ufffd" not in p
            pieces.append(p)
    rest = stream.decode_rest()
    assert "".join(pieces) + (rest or "") == text
    assert stream.decode_all() == text
    assert len(pieces) > 10  # text came out as it was produced, not at the end
    # half a character is held back until the next byte completes it
    s2 = TokenOutputStream.new(byte_tokenizer)  # Candle's TokenOutputStream::new(tokenizer)
    e_bytes = byte_tokenizer.encode("é").ids
    assert s2.next_token(e_bytes[0]) is None and s2.next_token(e_bytes[1]) == "é"
    s2.clear()
    assert s2.tokens == [] and list(s2.stream(byte_tokenizer.encode("a😀b").ids)) == ["a", "😀", "b"]


def test_token_output_stream_context_joins_the_text_on_to_the_prompt(byte_tokenizer):
    """``context``: the prompt's ids; the new text continues its decoded text (a SentencePiece decoder
    strips the first token's space only at the start of the whole text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tk = Tokenizer(models.WordLevel({"<unk>": 0, "\u2581a": 1, "\u2581time": 2, "\u2581there": 3}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    assert "".join(TokenOutputStream(tk).stream([2, 3])) == "time there"  # Candle's: the space is lost
    stream = TokenOutputStream(tk, context=[1])
    assert "".join(stream.stream([2, 3])) == " time there" == tk.decode([1, 2, 3])[len(tk.decode([1])) :]
    assert stream.decode_all() == "time there"  # the context is not part of the stream's text
    stream.clear()
    assert stream.tokens == [] and "".join(stream.stream([2])) == "time"
    ids = byte_tokenizer.encode("日本 x").ids  # byte-level: the same text as without a context
    assert "".join(TokenOutputStream(byte_tokenizer, context=ids[:6]).stream(ids[6:])) == " x"



def test_token_output_stream_context_ending_in_special_tokens(tmp_path):
    """A prompt that ends in a special token (skipped when decoding): the new text still continues
    the prompt's, as ``decode(prompt + new)`` and transformers' ``TextStreamer`` give; the first
    new word lost its space (the decoder's Strip saw it as the text's first token)."""
    from sentencepiece_fixture import write_sentencepiece_tokenizer

    from candlejax.tokenizer import load_tokenizer

    write_sentencepiece_tokenizer(tmp_path / "tokenizer.json", 50)
    tk = load_tokenizer(tmp_path)
    rng = np.random.default_rng(0)
    randoms = [rng.integers(0, 50, 5).tolist() for _ in range(40)]
    for ctx in ([16, 43, 2], [36, 1], [3, 26, 32, 2, 1, 2], [1], [2, 2], *randoms):
        new = rng.integers(0, 50, 6).tolist()
        want = tk.decode(ctx + new)[len(tk.decode(ctx)) :]
        assert tk.decode(ctx + new).startswith(tk.decode(ctx))
        assert "".join(TokenOutputStream(tk, context=ctx).stream(new)) == want, (ctx, new)
    with pytest.raises(cj.errors.InvalidArgument, match=r"TokenOutputStream: context token id -1 is out of range"):
        TokenOutputStream(tk, context=[5, -1])
    with pytest.raises(cj.errors.NotAnInteger, match="TokenOutputStream: context token must be an int"):
        TokenOutputStream(tk, context="ab")
    with pytest.raises(cj.errors.ArgumentType, match="TokenOutputStream: skip_special_tokens must be a bool"):
        TokenOutputStream(tk.hf, skip_special_tokens="yes")  # (the tokenizers library's TypeError at next_token)

def test_streaming_generation_same_seed_same_text(byte_tokenizer):
    params, fresh, step, _ = _SHARED

    def run(seed: int) -> str:
        lp = LogitsProcessor(seed, temperature=1.0, top_p=0.95)
        stream = TokenOutputStream(byte_tokenizer)
        return "".join(stream.stream(generate(step, params, fresh(), [65, 66], 20, lp)))

    assert run(3) == run(3)
    assert run(3) != run(4)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["buf"], meta_fields=["max_seq_len"])
@dataclasses.dataclass
class SlotCache:
    """A token cache with a fixed number of slots (``max_seq_len``: generate's capacity)."""

    buf: jax.Array
    max_seq_len: int


def make_last_model(seed: int = 0):
    """The bigram model of :func:`make_model` with a ``last=`` index: the logits of ``tokens[:, last]``,
    seeing cache slots up to ``pos + last`` only (the causal mask of a real model)."""
    params, _, plain, _ = make_model(seed)
    traces: list[tuple[int, ...]] = []

    def step(params, cache, tokens, pos, last=None):
        tokens = cj.tensor.unwrap(tokens)
        traces.append(tuple(tokens.shape))
        last = tokens.shape[1] - 1 if last is None else last
        buf = jax.lax.dynamic_update_slice(cache.buf, tokens.astype(jnp.int32), (0, pos))
        valid = jnp.arange(L) <= pos + last
        hist = jnp.sum(jnp.where(valid[None, :], params["U"][buf], 0.0), axis=1)
        logits = params["W"][jnp.take(tokens, last, axis=1)] + 0.3 * hist[:, None] * params["U"][None, :]
        return logits, SlotCache(buf, L)

    return params, lambda: SlotCache(jnp.zeros((1, L), jnp.int32), L), step, plain, traces


def test_new_temperatures_and_top_p_reuse_the_compiled_sampler(jax_compiles):
    """Candle's loop makes a ``LogitsProcessor::new(seed, Some(temperature), top_p)`` per request:
    another temperature or top-p is a traced value of the compiled sampler, not a new program."""
    x = jnp.asarray(np.random.default_rng(1).normal(size=(61,)).astype(np.float32) * 3)  # a vocab no other test uses
    for make in (lambda v: LogitsProcessor(5, v), lambda v: LogitsProcessor(5, 0.8, v / 1.2),
                 lambda v: LogitsProcessor.from_sampling(5, Sampling.TopKThenTopP(9, v / 1.1, v))):  # fmt: skip
        make(0.5).sample(x)
        jax_compiles.clear()
        for v in (0.6, 0.7, 0.9):
            lp = make(v)
            toks = [lp.sample(x) for _ in range(3)]
            assert all(0 <= t < 61 for t in toks)
        assert jax_compiles == [], jax_compiles[:2]


def test_generate_with_new_sampling_values_traces_nothing():
    """A generation at another temperature / top-p reuses the compiled prefill and decode steps and
    gives the tokens of Candle's loop (the eager processor) for each value."""
    params, fresh, step, traces = make_model(8)
    # held: a closure's compiled steps are cached only while a Generation uses them (else it was the
    # garbage collector's timing whether the warm-up's steps were still there)
    first = generate(step, params, fresh(), [3, 1, 4], 6, LogitsProcessor.from_sampling(2, Sampling.TopP(0.5, 0.5)))
    list(first)
    gc.collect()
    traces.clear()
    for t, p in ((0.7, 0.6), (1.3, 0.9), (0.9, 0.75)):
        s = Sampling.TopP(p, t)
        want = host_loop(step, params, fresh(), [3, 1, 4], 6, LogitsProcessor.from_sampling(2, s).sample)
        traces.clear()
        assert list(generate(step, params, fresh(), [3, 1, 4], 6, LogitsProcessor.from_sampling(2, s))) == want
        assert traces == [], (t, p, traces)


@pytest.mark.parametrize("processor", [None, "host"])
def test_generate_pads_prompts_to_buckets(processor):
    params, fresh, step, plain, traces = make_last_model(6)
    proc = (lambda t: int(np.argmax(np.asarray(t)))) if processor else None
    r = np.random.default_rng(0)
    for n in (17, 19, 23):
        prompt = r.integers(0, V, n).tolist()
        want = host_loop(plain, params, {"buf": jnp.zeros((1, L), jnp.int32)}, prompt, 12, lambda x: int(np.argmax(x)))
        g = generate(step, params, fresh(), prompt, 12, proc)
        assert list(g) == want and g.prefill_length == 32 and g.pos == n + 11
        assert list(generate(step, params, fresh(), prompt, 12, proc, prefill_buckets=False)) == want
    for n in (40, 70):  # longer prompts: chunks of 32 tokens, the last one padded
        prompt = r.integers(0, V, n).tolist()
        want = host_loop(plain, params, {"buf": jnp.zeros((1, L), jnp.int32)}, prompt, 5, lambda x: int(np.argmax(x)))
        g = generate(step, params, fresh(), prompt, 5, proc)
        assert list(g) == want and g.prefill_length == 32 * -(-n // 32) and g.pos == n + 4
    assert traces.count((1, 32)) == 1  # one prefill program for all prompt lengths
    # continuing the cache overwrites the padding's slots
    whole = list(generate(step, params, fresh(), [2, 3, 4], 20, proc, prefill_buckets=False))
    g = generate(step, params, fresh(), [2, 3, 4], 6, proc)
    assert list(g) == whole[:6] and g.prefill_length == 32
    assert list(generate(step, params, g.cache, g.continuation(), 14, proc, start_pos=g.pos)) == whole[6:]
    # a bucket that does not fit the cache: the exact length
    assert generate(step, params, fresh(), list(range(10)), 1, proc, start_pos=70).prefill_length == 10


def test_generate_prefill_buckets_need_a_last_argument():
    params, fresh, step, _ = _SHARED
    assert generate(step, params, fresh(), [1, 2], 3).prefill_length == 2
    with pytest.raises(cj.Error, match="last="):
        generate(step, params, fresh(), [1, 2], 3, prefill_buckets=True)


def test_programs_compiled_ahead_serve_generate_after_the_caches_are_cleared():
    """``compile_generation`` hands its programs to the step functions (``StepProgram``): after
    ``jax.clear_caches()`` a generation with the same shapes traces nothing and gives the same
    tokens; other shapes fall back to tracing as usual."""
    from candlejax.generation import StepProgram, compile_generation, decode_fns
    from candlejax.xla import SerializedProgram

    params, fresh, step, traces = make_model(5)
    prompt = [4, 2, 7]
    want = host_loop(step, params, fresh(), prompt, 8, lambda r: int(np.argmax(r)))
    traces.clear()
    programs = compile_generation(step, params, fresh(), prompt, 8)
    assert len(programs) == 2 and traces == [(1, 3), (1, 1)]
    assert all(isinstance(p, SerializedProgram) and not p.loaded for p in programs)  # loaded when they first run
    jax.clear_caches()
    traces.clear()
    assert list(generate(step, params, fresh(), prompt, 8)) == want
    assert traces == []  # both programs came from compile_generation, nothing was traced again
    assert all(p.loaded for p in programs)
    fns = decode_fns(step, Sampling.ArgMax(), False)  # the steps now call the loaded programs directly
    held = [*fns.fused.compiled, *fns.logits.compiled]
    assert held and not any(isinstance(p, SerializedProgram) for p in held)
    assert {id(p) for p in held} <= {id(p.load()) for p in programs}
    other = [1, 1, 2, 3, 5]  # another prompt length: the prefill is traced, the decode program is reused
    want = host_loop(step, params, fresh(), other, 4, lambda r: int(np.argmax(r)))
    traces.clear()
    assert list(generate(step, params, fresh(), other, 4)) == want
    assert traces == [(1, 5)]

    calls = []

    def double(x):
        calls.append(x.shape)
        return x * 2

    sp = StepProgram(jax.jit(double))
    sp.add(sp.lower(jnp.ones(3)).compile())
    sp.add(sp.lower(jnp.ones(4)).compile())
    calls.clear()
    np.testing.assert_array_equal(sp(jnp.arange(3.0)), [0.0, 2.0, 4.0])  # the second program: moved to the front
    assert [p.in_avals[0][0].shape for p in sp.compiled] == [(3,), (4,)]
    np.testing.assert_array_equal(sp(jnp.arange(5.0)), np.arange(5.0) * 2)  # none fits: jax.jit
    assert calls == [(5,)]
    for n in range(StepProgram.MAX_PROGRAMS + 2):
        sp.add(sp.lower(jnp.ones(10 + n)).compile())
    assert len(sp.compiled) == StepProgram.MAX_PROGRAMS


def test_generate_keeps_its_programs_out_of_jaxs_caches():
    """A generation compiles each new step through a throwaway ``jax.jit`` and keeps the program in
    its ``StepProgram`` (compact form): the step's own jit never compiles (JAX's caches hold no
    second copy of the programs, their lowerings or traces), and a second generation with the same
    shapes traces and compiles nothing."""
    from candlejax.generation import decode_fns

    params, fresh, step, traces = make_model(7)
    prompt = [4, 2, 7]
    want = host_loop(step, params, fresh(), prompt, 6, lambda r: int(np.argmax(r)))
    traces.clear()
    assert list(generate(step, params, fresh(), prompt, 6)) == want
    assert traces == [(1, 3), (1, 1)]  # the prompt's step, then one decode step for all later tokens
    fns = decode_fns(step, Sampling.ArgMax(), False)
    assert len(fns.fused.compiled) == 2
    assert fns.fused.jitted._cache_size() == 0  # the jit the step would otherwise run never compiled
    traces.clear()
    assert list(generate(step, params, fresh(), prompt, 6)) == want
    assert traces == []
    with jax.disable_jit():  # no compiled program takes part: the step runs op by op, as jax.jit's would
        traces.clear()
        assert list(generate(step, params, fresh(), [1, 2, 3, 4], 3)) == host_loop(
            step, params, fresh(), [1, 2, 3, 4], 3, lambda r: int(np.argmax(r))
        )
    assert traces and len(fns.fused.compiled) == 2


@pytest.mark.skipif(not native.sampling_available(), reason="native sampling kernels not built")
def test_native_softmax_is_candles_bit_for_bit():
    import candle

    rng = np.random.default_rng(0)
    for n in (4, 100, 1000, 49155):
        x = (rng.standard_normal((2, n)) * 3).astype(np.float32)
        want = np.array([candle.functional.softmax(candle.Tensor(r.tolist()), 0).values() for r in x], np.float32)
        got = np.asarray(jax.jit(native.candle_softmax)(jnp.asarray(x)))
        assert np.array_equal(got, want), n


@pytest.mark.skipif(not native.sampling_available(), reason="native sampling kernels not built")
def test_native_weighted_index_sums_in_index_order_as_rand():
    # rand's WeightedIndex<f32>: running sums accumulated one weight at a time; XLA's cumulative sum
    # associates differently, which over a 49k vocabulary moves ~5% of draws to another token
    rng = np.random.default_rng(1)
    w = np.exp(rng.standard_normal((400, 49152)) * 3).astype(np.float32)
    w /= w.sum(axis=1, keepdims=True)
    w[3, :] = 0.0
    w[3, 7] = 0.25
    u = rng.random(400).astype(np.float32)
    got = np.asarray(jax.jit(native.weighted_index)(jnp.asarray(w), jnp.asarray(u)))
    for r in range(400):
        cum = np.add.accumulate(w[r], dtype=np.float32)
        want = int((cum[:-1] <= np.float32(u[r] * cum[-1])).sum())
        assert got[r] == want, r
    assert got[3] == 7
    assert int(native.weighted_index(jnp.zeros((1, 5), jnp.float32), jnp.zeros((1,), jnp.float32))[0]) == -1


def test_token_output_stream_over_a_transformers_tokenizer(byte_tokenizer):
    """A transformers tokenizer has no ``token_to_id``: ``get_token`` used to answer None for every
    token (an EOS check on it never matched); it is looked up in ``get_vocab()``, as Candle does."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import AddedToken, Tokenizer

    raw = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(byte_tokenizer.to_str()))
    raw.add_special_tokens({"eos_token": AddedToken("</s>", special=True)})
    stream = TokenOutputStream(raw)
    assert stream.get_token("</s>") == raw.eos_token_id == 256 and stream.get_token("nope") is None
    assert stream.get_token("a") == byte_tokenizer.token_to_id("a")
    ids = raw.encode("日本 ok")
    assert "".join(stream.stream([*ids, 256])) == "日本 ok"
