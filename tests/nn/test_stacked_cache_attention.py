"""``StackedKvCache.attend`` / ``ops.stacked_layer_sdpa``: causal attention over one layer of a stacked
decoding cache. A decoding step (one query position) in f32 reads the layer's slots in place in the
native attention on AVX2 / AVX-512 CPUs; everything else is ``update`` + ``ops.sdpa``.

The reference is float64 numpy attention of each query head over its key head's slots up to the
query's position (and inside the window), written here from the definition; gradients are checked
against XLA's attention of the same slices (``ops.sdpa``, which never takes the native path for
causal attention).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from candlejax import errors
from candlejax.nn import StackedKvCache, ops
from candlejax.quantized import native
from candlejax.tensor import unwrap


def _reference(q, k_layer, v_layer, pos, window):
    """float64 attention of q ``(B, T, Hq, D)`` at positions pos.. over ``(B, Hkv, S, D)`` slots."""
    b, t, hq, d = q.shape
    hkv, s = k_layer.shape[1], k_layer.shape[2]
    out = np.zeros((b, t, hq, v_layer.shape[-1]))
    j = np.arange(s)
    for i in range(t):
        keep = j <= pos + i
        if window is not None:
            keep &= pos + i - j < window
        for h in range(hq):
            kh, vh = k_layer[:, h // (hq // hkv)].astype(np.float64), v_layer[:, h // (hq // hkv)].astype(np.float64)
            sc = np.einsum("bd,bsd->bs", q[:, i, h].astype(np.float64), kh) / np.sqrt(d)
            sc = np.where(keep, sc, -np.inf)
            if not keep.any():
                continue  # a query that sees no key: zeros
            p = np.exp(sc - sc.max(-1, keepdims=True))
            out[:, i, h] = np.einsum("bs,bsd->bd", p / p.sum(-1, keepdims=True), vh)
    return out


def _cache(rng, layers=3, b=2, hkv=2, s=24, d=16, dtype=np.float32):
    k = rng.standard_normal((layers, b, hkv, s, d)).astype(dtype)
    v = rng.standard_normal((layers, b, hkv, s, d)).astype(dtype)
    return StackedKvCache(jnp.asarray(k), jnp.asarray(v))


@pytest.mark.parametrize("hq,window,pos,t", [
    (6, None, 0, 1),  # grouped heads (3 per key head), the first position
    (6, None, 13, 1),
    (2, 4, 20, 1),  # one query head per key head, a sliding window
    (4, None, 23, 1),  # the last slot
    (6, None, 5, 4),  # a prompt chunk: XLA's attention over the layer
])  # fmt: skip
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
def test_attend_writes_the_layer_and_matches_float64(rng, hq, window, pos, t, layout):
    cache = _cache(rng)
    b, hkv, d = 2, 2, 16
    q = rng.standard_normal((b, t, hq, d)).astype(np.float32)
    k_new = rng.standard_normal((b, t, hkv, d)).astype(np.float32)
    v_new = rng.standard_normal((b, t, hkv, d)).astype(np.float32)
    tr = (lambda x: x.transpose(0, 2, 1, 3)) if layout == "bhsd" else (lambda x: x)

    def run(cache, layer, pos):
        y, c = cache.attend(layer, tr(q), tr(k_new), tr(v_new), pos, window=window, layout=layout)
        return unwrap(y), c

    for layer in (0, 2):
        k_ref = np.asarray(cache.k[layer]).copy()
        v_ref = np.asarray(cache.v[layer]).copy()
        k_ref[:, :, pos : pos + t] = k_new.transpose(0, 2, 1, 3)
        v_ref[:, :, pos : pos + t] = v_new.transpose(0, 2, 1, 3)
        ref = tr(_reference(q, k_ref, v_ref, pos, window))
        for how, fn in (("eager", run), ("jit", jax.jit(run))):
            y, c = fn(cache, layer, np.int32(pos) if how == "jit" else pos)
            np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=2e-6, err_msg=f"{how}, layer {layer}")
            np.testing.assert_array_equal(np.asarray(c.k[layer]), k_ref)
            np.testing.assert_array_equal(np.asarray(c.v[layer]), v_ref)
            np.testing.assert_array_equal(np.asarray(c.k[1 - layer // 2]), np.asarray(cache.k[1 - layer // 2]))


def test_attend_equals_update_then_sdpa_with_gradients(rng):
    """Values and gradients (q, the buffers) of the decoding step equal XLA's attention of the slices."""
    cache = _cache(rng, layers=2, b=1, hkv=2, s=20, d=8)
    q = jnp.asarray(rng.standard_normal((1, 1, 4, 8)), jnp.float32)
    kv = jnp.asarray(rng.standard_normal((1, 1, 2, 8)), jnp.float32)

    def via_attend(q, ks, vs, pos):
        y, _ = StackedKvCache(ks, vs).attend(1, q, kv, kv, pos)
        return jnp.sum(unwrap(y) * jnp.arange(1, 33, dtype=jnp.float32).reshape(1, 1, 4, 8))

    def via_sdpa(q, ks, vs, pos):
        k_all, v_all, _ = StackedKvCache(ks, vs).update(1, kv, kv, pos)
        y = ops.sdpa(q, k_all, v_all, do_causal=True, offset=pos, layout="bshd", kv_layout="bhsd")
        return jnp.sum(unwrap(y) * jnp.arange(1, 33, dtype=jnp.float32).reshape(1, 1, 4, 8))

    for pos in (0, 11):
        args = (q, cache.k, cache.v, np.int32(pos))
        got = jax.jit(jax.value_and_grad(via_attend, argnums=(0, 1, 2)))(*args)
        want = jax.jit(jax.value_and_grad(via_sdpa, argnums=(0, 1, 2)))(*args)
        np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-5)
        for g, w in zip(got[1], want[1], strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pos", [3, 509, 700, 1090, 1096])  # the first 512 slots, 1024 (509 + 4 > 512), all 1100
def test_prompt_chunks_in_a_large_cache_attend_its_first_slots_only(rng, pos):
    """A prompt chunk in a cache of more than 512 slots attends the first 512, 1024, ... slots that
    hold its positions (``lax.switch`` under jit, a static choice eagerly): values equal float64
    attention over the whole layer, and gradients equal XLA's attention of the whole layer."""
    cache = _cache(rng, layers=2, b=1, hkv=1, s=1100, d=8)
    t = 4
    q = rng.standard_normal((1, t, 2, 8)).astype(np.float32)
    kv = rng.standard_normal((1, t, 1, 8)).astype(np.float32)
    k_ref, v_ref = np.asarray(cache.k[1]).copy(), np.asarray(cache.v[1]).copy()
    k_ref[:, :, pos : pos + t] = kv.transpose(0, 2, 1, 3)
    v_ref[:, :, pos : pos + t] = kv.transpose(0, 2, 1, 3)
    ref = _reference(q, k_ref, v_ref, pos, None)

    def run(q, ks, vs, pos):
        y, _ = StackedKvCache(ks, vs).attend(1, q, kv, kv, pos)
        return unwrap(y)

    for how, fn in (("eager", run), ("jit", jax.jit(run))):
        y = fn(q, cache.k, cache.v, np.int32(pos) if how == "jit" else pos)
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=2e-6, err_msg=how)

    def via_sdpa(q, ks, vs, pos):
        k_all, v_all, _ = StackedKvCache(ks, vs).update(1, kv, kv, pos)
        return unwrap(ops.sdpa(q, k_all, v_all, do_causal=True, offset=pos, layout="bshd", kv_layout="bhsd"))

    weights = jnp.asarray(rng.standard_normal((1, t, 2, 8)), jnp.float32)
    args = (jnp.asarray(q), cache.k, cache.v, np.int32(pos))
    got = jax.jit(jax.grad(lambda *a: jnp.sum(run(*a) * weights), argnums=(0, 1, 2)))(*args)
    want = jax.jit(jax.grad(lambda *a: jnp.sum(via_sdpa(*a) * weights), argnums=(0, 1, 2)))(*args)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)


def test_attend_gives_zeros_to_a_query_that_sees_no_key(rng):
    """A traced position outside the cache (not checked under jit) hides every slot: zeros, as
    ``ops.sdpa``, on the native path too."""
    cache = _cache(rng, layers=2, b=1, hkv=1, s=8, d=8)
    q = jnp.asarray(rng.standard_normal((1, 1, 2, 8)), jnp.float32)
    kv = jnp.ones((1, 1, 1, 8), jnp.float32)
    y, _ = jax.jit(lambda c, pos: c.attend(0, q, kv, kv, pos, window=2))(cache, np.int32(-5))
    np.testing.assert_array_equal(np.asarray(unwrap(y)), 0)


def test_attend_in_half_precision_matches_float64(rng):
    """bf16 takes XLA's attention (the native one is f32): the same attention, at bf16's precision."""
    cache = _cache(rng, layers=2, b=1, hkv=2, s=12, d=8)
    cache = StackedKvCache(cache.k.astype(jnp.bfloat16), cache.v.astype(jnp.bfloat16))
    q = jnp.asarray(rng.standard_normal((1, 1, 4, 8)), jnp.bfloat16)
    kv = jnp.asarray(rng.standard_normal((1, 1, 2, 8)), jnp.bfloat16)
    y, c = cache.attend(1, q, kv, kv, 6)
    assert unwrap(y).dtype == jnp.bfloat16
    def f32(x):
        return np.asarray(x.astype(jnp.float32))

    ref = _reference(f32(q), f32(c.k[1]), f32(c.v[1]), 6, None)
    np.testing.assert_allclose(f32(unwrap(y)), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(not native.attention_available(), reason="native f32 attention not built")
def test_decode_loop_reads_the_stacked_buffers_in_place(rng):
    """Over a scan of layers, the decoding step hands the whole (donated) buffers to the native
    attention: no copy of a buffer or of a layer's slots."""
    cache = _cache(rng, layers=4, b=1, hkv=2, s=32, d=16)
    q = jnp.asarray(rng.standard_normal((1, 1, 6, 16)), jnp.float32)

    def step(cache, pos):
        def body(i, carry):
            x, c = carry
            y, c = c.attend(i, x, x[:, :, :2], x[:, :, :2], pos)
            return unwrap(y), c

        return jax.lax.fori_loop(0, 4, body, (q, cache))

    hlo = jax.jit(step, donate_argnums=0).lower(cache, np.int32(3)).compile().as_text()
    assert "candlejax_f32_attention" in hlo
    assert not re.search(r"f32\[4,1,2,32,16\]\{[0-9,]*\} copy\(", hlo)
    assert not re.search(r"f32\[1,2,32,16\]\{[0-9,]*\} (copy|dynamic-slice|fusion)\(", hlo)


def test_stacked_layer_sdpa_rejects_bad_buffers_and_layers(rng):
    cache = _cache(rng, layers=2, b=1, hkv=2, s=8, d=8)
    q = jnp.ones((1, 1, 4, 8), jnp.float32)
    with pytest.raises(errors.Error, match=r"k_stack \[1, 2, 8, 8\] and v_stack"):
        ops.stacked_layer_sdpa(q, cache.k[0], cache.v[0], 0, 3)
    with pytest.raises(errors.Error, match="layer"):
        ops.stacked_layer_sdpa(q, cache.k, cache.v, 0.5, 3)
    for layer in (2, -1):  # a concrete layer is checked on both paths (XLA's slice would clamp it)
        with pytest.raises(errors.Error, match=f"layer {layer} is out of range for 2 layers"):
            ops.stacked_layer_sdpa(q, cache.k, cache.v, layer, 3)
        with pytest.raises(errors.Error, match=f"layer {layer} is out of range for 2 layers"):
            ops.stacked_layer_sdpa(q.astype(jnp.bfloat16), cache.k.astype(jnp.bfloat16), cache.v.astype(jnp.bfloat16),
                                   np.int32(layer), 3)  # fmt: skip
    with pytest.raises(errors.Error, match="q heads must be a multiple of kv heads"):
        ops.stacked_layer_sdpa(jnp.ones((1, 1, 3, 8), jnp.float32), cache.k, cache.v, 0, 3)
    with pytest.raises(errors.Error, match="layer 2 is out of range for 2 layers"):
        cache.attend(2, q, q[:, :, :2], q[:, :, :2], 3)
