"""The model kit in candlejax.nn: sdpa (layouts, GQA, masks, cache offset, sliding window) against
torch and sdpa_slow with gradients, rotary variants, KV caches (decode == full forward), nn.quantized."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from candlejax import errors, nn
from candlejax.nn import ops
from candlejax.tensor import unwrap

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _torch_ref(q, k, v, mask=None, causal=False):
    """torch's sdpa (GQA, bool mask = keep) on (B, H, S, D) numpy arrays, with q/k/v grads of sum(out * w)."""
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    m = None if mask is None else torch.tensor(mask)
    out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=m, is_causal=causal, enable_gqa=True)
    w = torch.tensor(_x(*out.shape, seed=9))
    (out * w).sum().backward()
    return out.detach().numpy(), [t.grad.numpy() for t in (tq, tk, tv)], np.asarray(w)


def _ours(fn, q, k, v, w, **kw):
    def loss(q, k, v):
        return jnp.sum(unwrap(fn(q, k, v, **kw)) * w)

    out = unwrap(fn(q, k, v, **kw))
    grads = jax.grad(loss, argnums=(0, 1, 2))(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    return np.asarray(out), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("case", ["gqa_causal", "bool_mask", "float_mask", "bshd_layout", "window"])
def test_sdpa_matches_torch_with_gradients(case):
    b, hq, hkv, s, d = 2, 4, 2, 6, 8
    q, k, v = _x(b, hq, s, d), _x(b, hkv, s, d, seed=1), _x(b, hkv, s, d, seed=2)
    kw: dict = {}
    mask = None
    causal = False
    if case == "gqa_causal":
        causal, kw = True, {"do_causal": True}
    elif case == "bool_mask":
        mask = np.random.default_rng(3).random((b, 1, s, s)) > 0.3
        mask[..., 0] = True
        kw = {"mask": mask}
    elif case == "float_mask":
        mask = _x(b, hq, s, s, seed=4)
        kw = {"mask": mask}
    elif case == "window":  # sliding window 3: key j visible from query i iff i - 3 < j <= i
        i, j = np.arange(s)[:, None], np.arange(s)[None, :]
        mask = (j <= i) & (j > i - 3)
        kw = {"do_causal": True, "window": 3}
    ref, ref_g, w = _torch_ref(q, k, v, mask, causal)
    for fn in (ops.sdpa, ops.sdpa_slow):
        if case == "bshd_layout":
            t = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731
            out, g = _ours(fn, t(q), t(k), t(v), t(w), layout="bshd")
            out, g = t(out), [t(x) for x in g]
        else:
            out, g = _ours(fn, q, k, v, w, **kw)
        np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)
        for a, r in zip(g, ref_g):
            np.testing.assert_allclose(a, r, atol=5e-5, rtol=1e-4)


def test_sdpa_cache_offset_hides_unwritten_slots_and_mixed_layouts():
    b, hq, hkv, d, smax, pos, t = 1, 4, 1, 8, 10, 3, 2
    q = _x(b, t, hq, d)  # (B, T, H, D)
    kc, vc = _x(b, hkv, smax, d, seed=1), _x(b, hkv, smax, d, seed=2)  # a cache, slots >= pos + t unwritten
    got = unwrap(jax.jit(lambda q, k, v, p: ops.sdpa(q, k, v, do_causal=True, offset=p, layout="bshd",
                                                     kv_layout="bhsd"))(q, kc, vc, jnp.int32(pos)))  # fmt: skip
    n = pos + t
    ref = unwrap(ops.sdpa_slow(q.transpose(0, 2, 1, 3), kc[:, :, :n], vc[:, :, :n], do_causal=True))
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref).transpose(0, 2, 1, 3), atol=1e-5)
    with pytest.raises(errors.Error, match="sdpa"):
        ops.sdpa(q, kc, vc, layout="bthd")
    with pytest.raises(errors.Error, match="mask"):
        ops.sdpa(_x(1, 4, 3, 8), _x(1, 2, 5, 8), _x(1, 2, 5, 8), mask=np.ones((2, 1, 3, 5), bool))


def test_repeat_kv_and_masks():
    x = _x(2, 3, 5, 4)
    ref = torch.tensor(x).repeat_interleave(2, dim=1).numpy()
    np.testing.assert_array_equal(np.asarray(unwrap(ops.repeat_kv(x, 2))), ref)
    m = np.asarray(unwrap(ops.causal_mask(2, 5, window=2)))
    np.testing.assert_array_equal(m, [[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]])
    pm = np.asarray(unwrap(ops.padding_mask(np.array([[1, 1, 0]]))))
    assert pm.shape == (1, 1, 1, 3) and pm.tolist() == [[[[True, True, False]]]]


def test_rotary_variants():
    d = 8
    sc = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}  # fmt: skip
    inv = nn.rotary.rope_inv_freq(d, 500000.0, sc)
    tf = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = tf.LlamaConfig(hidden_size=32, num_attention_heads=4, max_position_embeddings=64, rope_theta=500000.0,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 32})  # fmt: skip
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    np.testing.assert_allclose(inv, ref.numpy(), rtol=1e-6)
    # interleaved pairs on (B, T, H, D) == rope_i on (B, H, T, D); on-the-fly tables == precomputed
    rot_i = nn.RotaryEmbedding(d, 16, interleaved=True, layout="bthd", precompute=False)
    x = _x(1, 5, 2, d)
    got = np.asarray(unwrap(rot_i.apply_one(x, 3)))
    cos, sin = nn.rotary.rotary_tables(d, 16)
    ref = np.asarray(unwrap(ops.rope_i_slow(x.transpose(0, 2, 1, 3), cos[3:8].astype(np.float32),
                                            sin[3:8].astype(np.float32)))).transpose(0, 2, 1, 3)  # fmt: skip
    np.testing.assert_allclose(got, ref, atol=1e-5)
    with pytest.raises(errors.Error, match="negative position"):
        rot_i.apply_one(x, -1)
    with pytest.raises(errors.Error, match="exceed max_position_embeddings"):
        rot_i.apply_one(x, 12)


def test_stacked_cache_decode_equals_full_attention():
    layers, b, hkv, hq, d, n = 2, 1, 2, 4, 8, 7
    q, k, v = _x(b, n, hq, d), _x(b, n, hkv, d, seed=1), _x(b, n, hkv, d, seed=2)
    full = np.asarray(unwrap(ops.sdpa(q, k, v, do_causal=True, layout="bshd")))

    @jax.jit
    def step(cache, q, k, v, pos):
        k_all, v_all, cache = cache.update(1, k, v, pos)
        return unwrap(ops.sdpa(q, k_all, v_all, do_causal=True, offset=pos, layout="bshd", kv_layout="bhsd")), cache

    cache = nn.StackedKvCache.new(layers, b, hkv, 16, d)
    out, cache = step(cache, q[:, :4], k[:, :4], v[:, :4], jnp.int32(0))
    np.testing.assert_allclose(np.asarray(out), full[:, :4], atol=1e-5)
    for p in range(4, n):
        out, cache = step(cache, q[:, p : p + 1], k[:, p : p + 1], v[:, p : p + 1], jnp.int32(p))
        np.testing.assert_allclose(np.asarray(out)[:, 0], full[:, p], atol=1e-5)
    assert not np.asarray(cache.k[0]).any()  # layer 0 untouched
    grown = cache.grow(32)
    assert grown.max_seq_len == 32 and np.array_equal(np.asarray(grown.k[:, :, :, :16]), np.asarray(cache.k))
    assert not np.asarray(grown.v[:, :, :, 16:]).any()  # the new slots are zero
    np.testing.assert_array_equal(np.asarray(cache.grow(8).v), np.asarray(cache.v[:, :, :, :8]))
    kept = cache.grow(32, keep=4)
    assert np.array_equal(np.asarray(kept.k[:, :, :, :4]), np.asarray(cache.k[:, :, :, :4]))
    assert not np.asarray(kept.k[:, :, :, 4:]).any()
    with pytest.raises(errors.Error, match=r"grow: keep=20 slots, but 16 fit"):
        cache.grow(32, keep=20)
    assert [nn.StackedKvCache.slots_for(p, 4096) for p in (1, 256, 257, 3000, 9000)] == [256, 256, 512, 4096, 4096]
    assert cache.fits(15, 1) and not cache.fits(15, 2)
    (ka, _), c = nn.ConcatKvCache.new(2).append(k[:, :3].transpose(0, 2, 1, 3), v[:, :3].transpose(0, 2, 1, 3))
    (ka, _), c = c.append(k[:, 3:].transpose(0, 2, 1, 3), v[:, 3:].transpose(0, 2, 1, 3))
    assert c.current_seq_len() == n and np.allclose(np.asarray(unwrap(ka)), k.transpose(0, 2, 1, 3))


def test_quantized_layers():
    from candlejax.quantized import GgmlDType, QTensor

    w, bias = _x(64, 32), _x(64, seed=1)
    qt = QTensor.quantize(w, GgmlDType.Q8_0)
    deq = np.asarray(unwrap(qt.dequantize()))
    x = _x(2, 3, 32, seed=2)
    for direct in (False, True):
        lin = nn.quantized.QLinear.from_qtensor(qt, bias)
        lin.direct = direct
        np.testing.assert_allclose(np.asarray(unwrap(jax.jit(lambda m, x: m(x))(lin, x))), x @ deq.T + bias,
                                   atol=1e-3, rtol=1e-4)  # fmt: skip
    emb = nn.quantized.QEmbedding(nn.quantized.QLinear.from_qtensor(qt))
    np.testing.assert_allclose(np.asarray(unwrap(emb(np.array([[3, 5]])))), deq[[[3, 5]]], atol=1e-6)
    norm = nn.quantized.QRmsNorm(np.ones(32, np.float32), 1e-6)
    ref = np.asarray(unwrap(ops.rms_norm_slow(x, np.ones(32, np.float32), 1e-6)))
    np.testing.assert_allclose(np.asarray(unwrap(norm(x))), ref, atol=1e-5)


def test_var_builder_records_reads():
    vb = nn.VarBuilder.from_tensors({"a.weight": np.ones((2, 2), np.float32), "a.bias": np.ones(2, np.float32),
                                     "b.weight": np.ones(3, np.float32)})  # fmt: skip
    vb.pp("a").get((2, 2), "weight")
    assert vb.unused_names() == ["a.bias", "b.weight"] and vb.read_names() == {"a.weight"}
    assert vb.unused_names(ignore=("b.*",)) == ["a.bias"]
    with pytest.raises(errors.Error, match=r"2 checkpoint tensor\(s\) .* never read: a\.bias, b\.weight"):
        vb.check_all_used(context="demo")
    vb.mark_used("a.bias")
    with pytest.warns(UserWarning, match="b.weight") as rec:
        assert vb.check_all_used(strict=False) == ["b.weight"]
    assert rec[0].filename == __file__  # the warning points at the caller's line
