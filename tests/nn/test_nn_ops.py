"""candlejax.nn.ops, encoding, rotary and KV caches: against torch, fast vs *_slow parity, gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import candlejax as cj
import candlejax.nn as nn
from candlejax import DType
from candlejax.nn import ops
from candlejax.tensor._core import wrap
from candlejax.transforms import jit

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _np(t):
    return np.asarray(t._a)


def test_softmax_family_vs_torch():
    x = _x(3, 4, 5)
    tx = torch.tensor(x)
    np.testing.assert_allclose(_np(ops.softmax(x, 1)), torch.softmax(tx, 1).numpy(), atol=1e-6)
    np.testing.assert_allclose(_np(ops.softmax(wrap(jnp.asarray(x)), -1)), torch.softmax(tx, -1).numpy(), atol=1e-6)
    np.testing.assert_allclose(_np(ops.softmax_last_dim(x)), torch.softmax(tx, -1).numpy(), atol=1e-6)
    np.testing.assert_allclose(_np(ops.log_softmax(x, 2)), torch.log_softmax(tx, 2).numpy(), atol=1e-5)
    with pytest.raises(Exception, match="out of range"):
        ops.softmax(x, 3)
    with pytest.raises(Exception, match="unsupported dtype U32"):
        ops.softmax(np.ones(3, np.uint32), 0)


def test_softmax_family_over_an_empty_dim_is_empty_as_torch():
    x = np.zeros((3, 0), np.float32)
    for got, want in ((ops.softmax_last_dim(x), torch.softmax(torch.tensor(x), -1)),
                      (ops.softmax(x, 1), torch.softmax(torch.tensor(x), 1)),
                      (ops.log_softmax(x, -1), torch.log_softmax(torch.tensor(x), -1))):  # fmt: skip
        assert got.shape == tuple(want.shape) and got.dtype == DType.F32
    g = jax.grad(lambda a: ops.softmax_last_dim(a)._a.sum())(jnp.zeros((3, 0), jnp.float32))
    assert g.shape == (3, 0)


def test_softmax_last_dim_is_differentiable():
    x = jnp.asarray(_x(2, 5))
    g = jax.jit(jax.grad(lambda a: jnp.sum(ops.softmax_last_dim(a)._a * jnp.arange(5.0))))(x)
    tx = torch.tensor(np.asarray(x), requires_grad=True)
    (torch.softmax(tx, -1) * torch.arange(5.0)).sum().backward()
    np.testing.assert_allclose(np.asarray(g), tx.grad.numpy(), atol=1e-6)


def test_norm_fast_vs_slow_and_grads():
    x, w, b = _x(2, 3, 8), _x(8, seed=1), _x(8, seed=2)

    def both(fast, slow, *args):
        np.testing.assert_allclose(_np(fast(*args)), _np(slow(*args)), atol=1e-5)
        gf = jax.jit(jax.grad(lambda a: jnp.sum(fast(a, *args[1:])._a ** 2)))(jnp.asarray(args[0]))
        gs = jax.jit(jax.grad(lambda a: jnp.sum(slow(a, *args[1:])._a ** 2)))(jnp.asarray(args[0]))
        np.testing.assert_allclose(np.asarray(gf), np.asarray(gs), atol=1e-4)

    both(ops.rms_norm, ops.rms_norm_slow, x, w, 1e-5)
    both(ops.layer_norm, ops.layer_norm_slow, x, w, b, 1e-5)
    tl = F.layer_norm(torch.tensor(x), (8,), torch.tensor(w), torch.tensor(b), 1e-5)
    np.testing.assert_allclose(_np(ops.layer_norm(x, w, b, 1e-5)), tl.numpy(), atol=1e-5)
    with pytest.raises(Exception, match=r"shape mismatch in rms-norm \[2, 3, 8\] \[7\]"):
        ops.rms_norm(x, _x(7), 1e-5)
    xb = jnp.asarray(x, jnp.bfloat16)
    assert ops.rms_norm(xb, jnp.asarray(w, jnp.bfloat16), 1e-5).dtype == DType.BF16


def _cos_sin(t, d):
    cos, sin = nn.rotary.rotary_tables(d, t)
    return cos.astype(np.float32), sin.astype(np.float32)


def test_rope_variants_fast_vs_slow_and_reference():
    b, h, t, d = 2, 3, 5, 8
    x = _x(b, h, t, d)
    cos, sin = _cos_sin(t + 2, d)  # T' >= T
    # reference: HF rotate_half
    c = np.concatenate([cos[:t], cos[:t]], -1)
    s = np.concatenate([sin[:t], sin[:t]], -1)
    rot = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], -1)
    np.testing.assert_allclose(_np(ops.rope(x, cos, sin)), x * c + rot * s, atol=1e-5)
    np.testing.assert_allclose(_np(ops.rope(x, cos, sin)), _np(ops.rope_slow(x, cos, sin)), atol=1e-5)
    np.testing.assert_allclose(_np(ops.rope_i(x, cos, sin)), _np(ops.rope_i_slow(x, cos, sin)), atol=1e-5)
    xt = np.swapaxes(x, 1, 2)  # (B, T, H, D)
    np.testing.assert_allclose(_np(ops.rope_thd(xt, cos, sin)), _np(ops.rope_thd_slow(xt, cos, sin)), atol=1e-5)
    np.testing.assert_allclose(np.swapaxes(_np(ops.rope_thd_slow(xt, cos, sin)), 1, 2), x * c + rot * s, atol=1e-5)
    ref_thd = np.swapaxes(_np(ops.rope(x, cos, sin)), 1, 2)
    np.testing.assert_allclose(_np(ops.rope_thd(xt, cos, sin)), ref_thd, atol=1e-6)
    # batched tables (B, T, D/2)
    cb, sb = np.stack([cos[:t]] * b), np.stack([sin[:t]] * b)
    np.testing.assert_allclose(_np(ops.rope(x, cb, sb)), _np(ops.rope(x, cos, sin)), atol=1e-6)
    g = jax.jit(jax.grad(lambda a: jnp.sum(ops.rope_i(a, cos, sin)._a ** 2)))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(g), 2 * x, atol=1e-4)  # rotation preserves the norm
    with pytest.raises(Exception, match="inconsistent last dim size in rope"):
        ops.rope(x, cos[:, :3], sin[:, :3])


def test_rotary_embedding_offsets_and_traced_offset():
    rot = nn.RotaryEmbedding(8, 16)
    q, k = _x(1, 2, 3, 8), _x(1, 2, 3, 8, seed=1)
    q1, _k1 = rot.apply(q, k, 4)
    cos, sin = _cos_sin(16, 8)
    np.testing.assert_allclose(_np(q1), _np(ops.rope(q, cos[4:7], sin[4:7])), atol=1e-6)
    f = jit(lambda r, q, k, off: r.apply(q, k, off))
    q2, _ = f(rot, q, k, jnp.int32(4))
    np.testing.assert_allclose(_np(q2), _np(q1), atol=1e-6)
    assert not rot.named_vars()  # tables are plain Tensors: not trained, not saved
    with pytest.raises(Exception, match="exceed max_position_embeddings"):
        rot.apply(q, k, 15)


@pytest.mark.parametrize("off", [7.5, 1.5, True, np.float32(2), jnp.float32(2), np.array([1, 2])])
def test_rotary_embedding_refuses_non_integer_offsets(off):
    # a float offset skipped the range check: 7.5 was silently offset 5 (clamped), 1.5 offset 1
    rot = nn.RotaryEmbedding(4, 8)
    q = _x(1, 1, 3, 4)
    with pytest.raises(cj.errors.DimType, match="RotaryEmbedding: offset must be an integer position") as e:
        rot.apply(q, q, off)
    assert isinstance(e.value, TypeError)
    with pytest.raises(cj.errors.DimType):
        jit(lambda r, o: r.apply(q, q, o))(rot, jnp.float32(2))


def _torch_sdpa(q, k, v, mask=None, causal=False, scale=None):
    g = q.shape[1] // k.shape[1]
    tk = torch.tensor(k).repeat_interleave(g, 1)
    tv = torch.tensor(v).repeat_interleave(g, 1)
    m = None if mask is None else torch.tensor(mask)
    return F.scaled_dot_product_attention(torch.tensor(q), tk, tv, attn_mask=m, is_causal=causal, scale=scale).numpy()


@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2)], ids=["mha", "gqa"])
def test_sdpa_vs_torch(hq, hkv):
    q, k, v = _x(2, hq, 5, 8), _x(2, hkv, 5, 8, seed=1), _x(2, hkv, 5, 8, seed=2)
    np.testing.assert_allclose(_np(ops.sdpa(q, k, v)), _torch_sdpa(q, k, v), atol=1e-5)
    np.testing.assert_allclose(_np(ops.sdpa(q, k, v, do_causal=True)), _torch_sdpa(q, k, v, causal=True), atol=1e-5)
    mask = np.random.default_rng(3).random((1, 1, 5, 5)) > 0.3
    mask[..., 0] = True
    np.testing.assert_allclose(_np(ops.sdpa(q, k, v, mask=mask)), _torch_sdpa(q, k, v, mask), atol=1e-5)
    fmask = np.where(mask, 0.0, -1e9).astype(np.float32)
    np.testing.assert_allclose(_np(ops.sdpa(q, k, v, mask=fmask, scale=0.3)), _torch_sdpa(q, k, v, fmask, scale=0.3),
                               atol=1e-5)  # fmt: skip
    for kw in (dict(), dict(do_causal=True), dict(mask=mask, softcapping=2.0)):
        np.testing.assert_allclose(_np(ops.sdpa(q, k, v, **kw)), _np(ops.sdpa_slow(q, k, v, **kw)), atol=1e-5)


@pytest.mark.parametrize("hq,hkv", [(2, 2), (4, 2)], ids=["mha", "gqa"])
def test_sdpa_query_that_sees_no_key_gives_zeros_as_torch(hq, hkv):
    # torch's scaled_dot_product_attention (and Candle's CPU attention kernels) return zeros for a
    # query whose every key is masked, for bool masks, -inf float masks and causal rows alike
    q, k, v = _x(2, hq, 6, 64), _x(2, hkv, 4, 64, seed=1), _x(2, hkv, 4, 64, seed=2)
    bmask = np.ones((2, 1, 6, 4), bool)
    bmask[0, :, 1] = False  # one dead query row
    bmask[1] = False  # a batch entry that sees no key at all
    fmask = np.where(bmask, 0.0, -np.inf).astype(np.float32)
    keys = np.ones((2, 1, 1, 4), bool)
    keys[1] = False  # a key-only (padding) mask: the native attention's case
    for m in (bmask, fmask, keys, np.where(keys, 0.0, -np.inf).astype(np.float32)):
        want = _torch_sdpa(q, k, v, m)
        assert not np.isnan(want).any()
        np.testing.assert_allclose(_np(ops.sdpa(q, k, v, mask=m)), want, atol=1e-5)
        np.testing.assert_allclose(_np(ops.sdpa_slow(q, k, v, mask=m)), want, atol=1e-5)
        if hq == hkv and m.shape[2] == 1:  # the decoding cache's transposed keys
            got = ops.sdpa(q, np.swapaxes(k, 2, 3), v, mask=m, keys_transposed=True)
            np.testing.assert_allclose(_np(got), want, atol=1e-5)
    # causal with more queries than keys (aligned at the end): the first two queries see nothing
    causal = np.tril(np.ones((6, 4), bool), k=4 - 6)
    want = _torch_sdpa(q, k, v, causal)
    np.testing.assert_allclose(_np(ops.sdpa(q, k, v, do_causal=True)), want, atol=1e-5)
    np.testing.assert_allclose(_np(ops.sdpa_slow(q, k, v, do_causal=True)), want, atol=1e-5)
    # gradients stay finite (zero through the dead rows), as torch's
    gs = jax.grad(lambda q, k, v: jnp.sum(ops.sdpa(q, k, v, mask=fmask)._a ** 2), argnums=(0, 1, 2))(
        jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    )
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    g = hq // hkv
    (F.scaled_dot_product_attention(tq, tk.repeat_interleave(g, 1), tv.repeat_interleave(g, 1),
                                    attn_mask=torch.tensor(fmask)) ** 2).sum().backward()  # fmt: skip
    for got, t in zip(gs, (tq, tk, tv)):
        np.testing.assert_allclose(np.asarray(got), t.grad.numpy(), atol=1e-4)


def test_sdpa_and_causal_mask_refuse_a_non_integer_offset():
    # a query position is an integer: 1.5 was truncated to 1 silently, True read as 1
    q = _x(1, 2, 3, 4)
    for bad in (1.5, True, np.float32(2.0), jnp.asarray(1.0)):
        for f in (lambda o: ops.sdpa(q, q, q, do_causal=True, offset=o), lambda o: ops.causal_mask(3, 5, o),
                  lambda o: ops.sdpa_slow(q, q, q, do_causal=True, offset=o)):  # fmt: skip
            with pytest.raises(cj.errors.NotAnInteger, match="offset must be an int"):
                f(bad)
    want = _np(ops.sdpa(q, q, q, mask=np.tril(np.ones((3, 3), bool), k=-1) | np.eye(3, dtype=bool)))
    for ok in (0, np.int64(0), jnp.int32(0)):
        np.testing.assert_allclose(_np(ops.sdpa(q, q, q, do_causal=True, offset=ok)), want, atol=1e-6)
    step = jax.jit(lambda o: ops.sdpa(q, q, q, do_causal=True, offset=o)._a)  # a traced position
    np.testing.assert_allclose(np.asarray(step(jnp.int32(0))), want, atol=1e-6)


def test_causal_mask_and_repeat_kv_refuse_non_integer_lengths():
    # Candle's lengths are usize: 1.5 was truncated to 1, True read as 1
    for f in (lambda n: ops.causal_mask(n, 5), lambda n: ops.causal_mask(3, n),
              lambda n: ops.causal_mask(3, 5, window=n), lambda n: ops.repeat_kv(_x(1, 2, 3, 4), n)):  # fmt: skip
        for bad in (1.5, True, "2"):
            with pytest.raises(cj.errors.NotAnInteger):
                f(bad)
    with pytest.raises(cj.errors.InvalidArgument, match="must be >= 0"):
        ops.causal_mask(-1, 5)
    np.testing.assert_array_equal(_np(ops.causal_mask(np.int64(2), 3, window=np.int32(1))), [[0, 1, 0], [0, 0, 1]])
    assert _np(ops.repeat_kv(_x(1, 2, 3, 4), np.int64(2))).shape == (1, 4, 3, 4)


def test_sdpa_gradients_vs_torch():
    q, k, v = _x(1, 2, 4, 8), _x(1, 2, 4, 8, seed=1), _x(1, 2, 4, 8, seed=2)
    gs = jax.jit(jax.grad(lambda q, k, v: jnp.sum(ops.sdpa(q, k, v, do_causal=True)._a ** 2), argnums=(0, 1, 2)))(
        jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    )
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    (F.scaled_dot_product_attention(tq, tk, tv, is_causal=True) ** 2).sum().backward()
    for g, t in zip(gs, (tq, tk, tv)):
        np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), atol=1e-4)


def test_kv_cache_decode_matches_full_attention():
    b, h, t, d = 1, 2, 6, 4
    q, k, v = _x(b, h, t, d), _x(b, h, t, d, seed=1), _x(b, h, t, d, seed=2)
    full = _np(ops.sdpa(q, k, v, do_causal=True))
    cache = nn.KvCache.new(2, 8)
    (ka, va), cache = cache.append(k[:, :, :3], v[:, :, :3])  # prefill 3
    out0 = ops.sdpa(q[:, :, :3], ka, va, mask=cache.attn_mask(3))
    np.testing.assert_allclose(_np(out0), full[:, :, :3], atol=1e-5)
    assert cache.current_seq_len() == 3 and cache.k().shape == (b, h, 3, d)

    @jit
    def step(cache, q, k, v):
        (ka, va), cache = cache.append(k, v)
        return ops.sdpa(q, ka, va, mask=cache.attn_mask(1)), cache

    for i in range(3, 6):
        o, cache = step(cache, q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1])
        np.testing.assert_allclose(_np(o), full[:, :, i : i + 1], atol=1e-5)
    assert step._cache_size() == 1  # one compiled step serves every token
    with pytest.raises(Exception, match="exceeds max_seq_len 8"):
        cache.append(k[:, :, :3], v[:, :, :3])


@pytest.mark.parametrize("b,h", [(2, 3), (1, 3), (2, 1), (1, 1)])
def test_decode_kv_cache_matches_full_attention_and_updates_in_place(b, h):
    t, d, n = 6, 4, 8
    q, k, v = _x(b, h, t, d), _x(b, h, t, d, seed=1), _x(b, h, t, d, seed=2)
    full = _np(ops.sdpa(q, k, v, do_causal=True))
    cache = nn.DecodeKvCache.preallocated(n, k[:, :, :1])
    lead = tuple(x for x in (b, h) if x != 1)  # size-1 batch dims are dropped, as XLA drops them
    assert cache.k_buf.shape == (*lead, d, n) and cache.v_buf.shape == (*lead, n, d) and cache.max_seq_len == n
    (ka, va), cache = cache.append(k[:, :, :3], v[:, :, :3])  # prefill 3, eagerly
    assert ka.shape == va.shape == (b, h, n, d)
    np.testing.assert_allclose(_np(ops.sdpa(q[:, :, :3], ka, va, mask=cache.attn_mask(3))), full[:, :, :3], atol=1e-5)
    np.testing.assert_array_equal(_np(cache.k()), k[:, :, :3])
    np.testing.assert_array_equal(_np(cache.v()), v[:, :, :3])
    assert cache.current_seq_len() == 3

    def step(cache, q, k, v):
        (ka, va), cache = cache.append(k, v)
        return ops.sdpa(q, ka, va, mask=cache.attn_mask(1)), cache

    # the buffer as stored, for sdpa(..., keys_transposed=True): the same attention
    kt = cache.transposed_keys()
    assert kt.shape == (b, h, d, n)
    np.testing.assert_array_equal(_np(kt).transpose(0, 1, 3, 2), _np(ka))
    np.testing.assert_allclose(_np(ops.sdpa(q[:, :, 2:3], kt, va, mask=cache.attn_mask(1), keys_transposed=True)),
                               full[:, :, 2:3], atol=1e-5)  # fmt: skip

    jstep = jit(step, donate_argnums=(0,))
    for i in range(3, 6):
        o, cache = jstep(cache, q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1])
        np.testing.assert_allclose(_np(o), full[:, :, i : i + 1], atol=1e-5)
    assert jstep._cache_size() == 1
    np.testing.assert_array_equal(_np(cache.k()), k)
    # the donated buffers are written in place: no copy of a cache buffer in the compiled step
    args = (cache, q[:, :, :1], k[:, :, :1], v[:, :, :1])
    hlo = jax.jit(step, donate_argnums=(0,)).lower(*args).compile().as_text()
    bufs = ("f32[" + ",".join(map(str, (*lead, d, n))) + "]", "f32[" + ",".join(map(str, (*lead, n, d))) + "]")
    copies = [ln for ln in hlo.splitlines() if " copy(" in ln and any(s in ln.split("=")[1] for s in bufs)]
    assert not copies, copies

    def step_t(cache, q, k, v):  # the key buffer as stored, for the native attention
        (_, va), cache = cache.append(k, v)
        return ops.sdpa(q, cache.transposed_keys(), va, mask=cache.attn_mask(1), keys_transposed=True), cache

    hlo = jax.jit(step_t, donate_argnums=(0,)).lower(*args).compile().as_text()
    copies = [ln for ln in hlo.splitlines() if " copy(" in ln and any(s in ln.split("=")[1] for s in bufs)]
    assert not copies, copies
    o, _ = jax.jit(step_t)(cache.at_position(5), q[:, :, 5:6], k[:, :, 5:6], v[:, :, 5:6])
    np.testing.assert_allclose(_np(o), full[:, :, 5:6], atol=1e-5)
    # back to position 4: slot 4 onwards is masked out and rewritten
    cache = cache.at_position(4)
    assert cache.current_seq_len() == 4 and cache.reset().current_seq_len() == 0
    (ka, va), cache = cache.append(k[:, :, 4:6], v[:, :, 4:6])
    np.testing.assert_allclose(_np(ops.sdpa(q[:, :, 4:6], ka, va, mask=cache.attn_mask(2))), full[:, :, 4:6], atol=1e-5)
    with pytest.raises(Exception, match="exceeds max_seq_len 8"):
        cache.append(k[:, :, :3], v[:, :, :3])
    with pytest.raises(Exception, match=rf"DecodeKvCache.append: k \({b}, {h}, 1, 3\).*key dim 4"):
        cache.append(k[:, :, :1, :3], v[:, :, :1, :3])
    with pytest.raises(Exception, match="batch, heads, seq, head_dim"):
        nn.DecodeKvCache.preallocated(n, k[0])


def test_rotating_kv_cache_sliding_window():
    b, h, t, d, w = 1, 1, 7, 4, 3
    q, k, v = _x(b, h, t, d), _x(b, h, t, d, seed=1), _x(b, h, t, d, seed=2)
    qp = np.arange(t)[:, None]
    kp = np.arange(t)[None, :]
    ref = _np(ops.sdpa(q, k, v, mask=(kp <= qp) & (kp > qp - w)))
    cache = nn.RotatingKvCache.new(2, w)
    outs = []
    for lo, hi in ((0, 2), (2, 5), (5, 6), (6, 7)):  # chunks that wrap around the ring
        (ka, va), cache = cache.append(k[:, :, lo:hi], v[:, :, lo:hi])
        outs.append(_np(ops.sdpa(q[:, :, lo:hi], ka, va, mask=cache.attn_mask(hi - lo))))
    np.testing.assert_allclose(np.concatenate(outs, 2), ref, atol=1e-5)
    assert cache.offset() == 7


def test_activations_and_dropout_functions():
    x = _x(4, 6)
    tx = torch.tensor(x)
    np.testing.assert_allclose(_np(ops.sigmoid(x)), torch.sigmoid(tx).numpy(), atol=1e-6)
    np.testing.assert_allclose(_np(ops.silu(x)), F.silu(tx).numpy(), atol=1e-6)
    np.testing.assert_allclose(_np(ops.swiglu(x)), (F.silu(tx[:, :3]) * tx[:, 3:]).numpy(), atol=1e-6)
    np.testing.assert_allclose(_np(ops.leaky_relu(x, 0.2)), F.leaky_relu(tx, 0.2).numpy(), atol=1e-6)
    np.testing.assert_allclose(_np(ops.selu(x)), F.selu(tx).numpy(), atol=1e-5)
    np.testing.assert_allclose(_np(ops.elu(x, 1.0)), F.elu(tx).numpy(), atol=1e-6)
    np.testing.assert_allclose(_np(ops.gelu_erf(x)), F.gelu(tx).numpy(), atol=1e-6)
    with pytest.raises(Exception, match=r"got 1\.5"):
        ops.dropout(x, 1.5)
    y = _np(ops.dropout(x, 0.25, key=jax.random.key(1)))
    assert np.all((y == 0) | np.isclose(y, x / 0.75))
    with pytest.raises(Exception, match="pass key="):
        jax.jit(lambda a: ops.dropout(a, 0.5)._a)(jnp.asarray(x))


def test_pixel_shuffle_and_padding():
    x = _x(2, 8, 3, 3)
    tx = torch.tensor(x)
    np.testing.assert_allclose(_np(ops.pixel_shuffle(x, 2)), F.pixel_shuffle(tx, 2).numpy())
    y = _np(ops.pixel_shuffle(x, 2))
    np.testing.assert_allclose(_np(ops.pixel_unshuffle(y, 2)), x)
    np.testing.assert_allclose(_np(ops.replication_pad2d(x, 1)), F.pad(tx, (1, 1, 1, 1), mode="replicate").numpy())


def test_one_hot():
    idx = np.array([[0, 2], [-1, 1]], np.int32)
    out = nn.one_hot(idx, 3, 1.0, 0.0)
    assert out.dtype == DType.F32 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(_np(out)[1, 0], [0, 0, 0])
    np.testing.assert_array_equal(_np(out)[0, 1], [0, 0, 1])
    assert nn.one_hot(idx, 3, 5, 0).dtype == DType.U32
    typed = nn.one_hot(idx, 3, np.float32(0.5), np.float32(0.25))  # the values' own dtype, as Candle's D
    assert typed.dtype == DType.F32
    np.testing.assert_array_equal(_np(typed)[0, 0], [0.5, 0.25, 0.25])
    assert nn.one_hot(idx, 3, jnp.float32(2.0), jnp.float32(0.0)).dtype == DType.F32
    assert nn.one_hot(idx, 3, np.uint8(1), np.uint8(0)).dtype == DType.U8
    with pytest.raises(Exception, match="one_hot: index value 5 exceeds depth 4"):
        nn.one_hot(np.array([5], np.uint32), 4)


@pytest.mark.parametrize("depth", [0, -1, 2.0, True])
def test_one_hot_checks_depth_first(depth):
    # depth -1 reported "index value 0 exceeds depth -1"
    with pytest.raises(cj.errors.Msg, match=r"one_hot: depth must be an integer >= 1, got"):
        nn.one_hot(np.array([0, 1], np.int32), depth)


@pytest.mark.parametrize("on,dtype,rule", [(300, DType.U8, r"U8 \(\[0, 255\]\)"), (-1, DType.U32, "U32"),
                                           (1e6, DType.F16, "F16 .at most 65504")])  # fmt: skip
def test_one_hot_values_must_fit_the_dtype(on, dtype, rule):
    # 300 into u8 raised a raw OverflowError from inside JAX
    with pytest.raises(cj.errors.Msg, match=f"one_hot: on_value {on!r} does not fit the output dtype {rule}"):
        nn.one_hot(np.array([0, 3], np.int32), 4, on, 0, dtype=dtype)


def test_one_hot_out_of_range_ids_under_jit_give_off_rows():
    # documented: eagerly they raise, traced they give a row of off_value (torch raises, Candle's host loop too)
    out = jax.jit(lambda i: nn.one_hot(i, 3, 1.0, 0.0).jax)(jnp.asarray(np.array([5, -4, 1], np.int32)))
    np.testing.assert_array_equal(np.asarray(out), [[0, 0, 0], [0, 0, 0], [0, 1, 0]])


def test_identity():
    x = wrap(jnp.ones(2))
    assert ops.Identity()(x) is x


def test_gumbel_softmax_samples_softmax_of_logits_over_temperature():
    import candlejax as cj
    from candlejax import nn

    p = np.array([0.1, 0.2, 0.7])
    logits = cj.Tensor.new(np.log(np.tile(p, (20000, 1))).astype(np.float32))
    for temperature, seed in ((1.0, 0), (0.5, 1)):
        s = nn.sampling.gumbel_softmax(logits, temperature, 1, key=seed)
        assert s.dtype == cj.DType.U32 and s.shape == (20000,)
        want = p ** (1 / temperature) / (p ** (1 / temperature)).sum()
        np.testing.assert_allclose(np.bincount(np.asarray(s), minlength=3) / 20000, want, atol=0.015)
    assert nn.sampling.gumbel_softmax(logits, 0.0, 1).to_vec1()[:2] == [2, 2]  # temperature <= 0: argmax


@pytest.mark.parametrize("name", ["elu", "selu"])
def test_elu_selu_gradients_match_torch_at_zero_and_stay_finite_for_large_inputs(name):
    import torch

    x = np.array([-1.0, 0.0, -2.0, 3.0, 100.0], np.float32)
    f = (lambda t: ops.elu(t, 2.0)) if name == "elu" else ops.selu
    tf = (lambda t: torch.nn.functional.elu(t, 2.0)) if name == "elu" else torch.nn.functional.selu
    g = jax.grad(lambda a: f(cj.Tensor.from_jax(a)).sum_all().jax)(jnp.asarray(x))
    tx = torch.tensor(x, requires_grad=True)
    tf(tx).sum().backward()
    np.testing.assert_allclose(np.asarray(g), tx.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(f(cj.Tensor.new(x)).to_vec1(), tf(torch.tensor(x)).numpy(), rtol=1e-6)


_BF, _H = jnp.bfloat16, jnp.float16


@pytest.mark.parametrize("fn", [ops.rope, ops.rope_i, ops.rope_thd])
@pytest.mark.parametrize("xdt,tdt", [(np.float32, _BF), (np.float32, _H), (_BF, _H), (_H, _BF)])
def test_rope_refuses_mixed_dtypes(fn, xdt, tdt):
    # Candle: "unsupported dtype for rope F32 F16 F16"; the tables were cast to x's dtype silently
    x = _x(1, 2, 3, 4).astype(xdt)
    c, s = _x(3, 2).astype(tdt), _x(3, 2, seed=1).astype(tdt)
    with pytest.raises(cj.errors.DTypeMismatchBinaryOp, match="cos/sin"):
        fn(x, c, s)
    with pytest.raises(cj.errors.DTypeMismatchBinaryOp, match=r"\(cos, sin\)"):
        fn(_x(1, 2, 3, 4), _x(3, 2), _x(3, 2).astype(_BF))


def test_rope_takes_f32_tables_for_half_input():
    # the documented exception (transformers' f32 tables): the activations keep their dtype
    x = _x(1, 2, 3, 4)
    c, s = _x(3, 2), _x(3, 2, seed=1)
    out = ops.rope(x.astype(_BF), c, s)
    assert out.dtype == DType.BF16
    np.testing.assert_allclose(_np(out).astype(np.float32), _np(ops.rope(x, c, s)), atol=0.05)
    rot = nn.RotaryEmbedding(4, 8, dtype=DType.BF16)
    with pytest.raises(cj.errors.DTypeMismatchBinaryOp):  # bf16 tables applied to f32 input ran silently
        rot.apply(_x(1, 1, 3, 4), _x(1, 1, 3, 4), 0)


@pytest.mark.parametrize("hdt", [_BF, _H], ids=["bf16", "f16"])
def test_rope_with_f32_tables_computes_in_f32(hdt):
    # as documented: half input with f32 tables is rotated in f32 and rounded once (the tables were
    # rounded to the half dtype and each product rounded: 21% of bf16 results off by one unit)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1, 2, 16, 64)) * 4).astype(hdt)
    ang = np.arange(16)[:, None] * (10000.0 ** (-np.arange(32) / 32))[None]
    c, s = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    xd, cd, sd = x.astype(np.float64), c.astype(np.float64), s.astype(np.float64)
    x1, x2 = xd[..., :32], xd[..., 32:]
    want = np.concatenate([x1 * cd - x2 * sd, x2 * cd + x1 * sd], axis=-1)
    x0, xo = xd[..., 0::2], xd[..., 1::2]
    want_i = np.stack([x0 * cd - xo * sd, x0 * sd + xo * cd], axis=-1).reshape(xd.shape)
    xt = np.ascontiguousarray(x.transpose(0, 2, 1, 3))
    for fn, xin, ref, back in ((ops.rope, x, want, None), (ops.rope_slow, x, want, None), (ops.rope_i, x, want_i, None),
                               (ops.rope_thd, xt, want, (0, 2, 1, 3))):  # fmt: skip
        out = fn(xin, c, s)
        assert out.dtype.np == hdt
        got = _np(out).astype(np.float32).astype(np.float64)
        got = got.transpose(back) if back else got
        ulp = np.spacing(np.abs(ref.astype(hdt)).astype(hdt)).astype(np.float64)
        assert (np.abs(got - ref) <= 0.5 * ulp + 1e-12).mean() > 0.999, fn.__name__


@pytest.mark.parametrize("xdt,wdt", [(np.float32, _BF), (np.float32, _H), (_BF, _H), (_H, _BF)])
def test_norm_ops_refuse_mixed_dtypes(xdt, wdt):
    x, w = _x(2, 3).astype(xdt), np.ones(3, wdt)
    with pytest.raises(cj.errors.DTypeMismatchBinaryOp, match=r"rms-norm \(input, alpha\)"):
        ops.rms_norm(x, w, 1e-5)
    with pytest.raises(cj.errors.DTypeMismatchBinaryOp, match=r"layer-norm \(input, alpha\)"):
        ops.layer_norm(x, w, np.zeros(3, wdt), 1e-5)
    ok = np.ones(3, xdt)
    with pytest.raises(cj.errors.DTypeMismatchBinaryOp, match=r"layer-norm \(input, beta\)"):
        ops.layer_norm(x, ok, np.zeros(3, wdt), 1e-5)


def test_sdpa_refuses_mixed_dtypes_like_torch():
    q, k = _x(1, 2, 3, 4), _x(1, 2, 3, 4, seed=1)
    for a, b, c in ((q, k.astype(_BF), k), (q, k, k.astype(_H)), (q.astype(_BF), k, k)):
        with pytest.raises(cj.errors.DTypeMismatchBinaryOp, match=r"sdpa \(q, [kv]\)"):
            ops.sdpa(a, b, c)
    with pytest.raises(RuntimeError):  # torch: a float mask must match the query's dtype
        F.scaled_dot_product_attention(torch.tensor(q), torch.tensor(k), torch.tensor(k),
                                       attn_mask=torch.zeros(3, 3, dtype=torch.float16))  # fmt: skip
    with pytest.raises(cj.errors.DTypeMismatchBinaryOp, match="additive float mask"):
        ops.sdpa(q, k, k, np.zeros((3, 3), _H))
    with pytest.raises(cj.errors.DTypeMismatchBinaryOp, match="additive float mask"):
        ops.sdpa(q.astype(_BF), k.astype(_BF), k.astype(_BF), np.zeros((3, 3), _H))
    assert ops.sdpa(q.astype(_BF), k.astype(_BF), k.astype(_BF), np.ones((3, 3), bool)).dtype == DType.BF16
    assert ops.sdpa(q.astype(_BF), k.astype(_BF), k.astype(_BF), np.zeros((3, 3), np.float32)).dtype == DType.BF16


@pytest.mark.parametrize("q,k,v,rule", [
    ((1, 2, 3, 4), (1, 2, 3, 5), (1, 2, 3, 5), "q and k head dims differ"),
    ((1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 2, 4), "k and v lengths differ"),
    ((1, 3, 3, 4), (1, 2, 3, 4), (1, 2, 3, 4), "q heads must be a multiple of kv heads"),
])  # fmt: skip
def test_sdpa_shape_errors_name_the_rule_broken(q, k, v, rule):
    # a head-dim or length mismatch carried the hint "(q heads must be a multiple of kv heads)"
    with pytest.raises(cj.errors.Msg, match=r"sdpa: incompatible shapes") as e:
        ops.sdpa(_x(*q), _x(*k), _x(*v))
    assert str(e.value).endswith(f"({rule})")


def test_ops_refuse_bad_arguments_with_candlejax_errors():
    # each raised a raw JAX ValueError or a ZeroDivisionError
    x = _x(1, 4, 2, 2)
    with pytest.raises(cj.errors.Msg, match="softmax-last-dim: the input has no last dim"):
        ops.softmax_last_dim(wrap(jnp.float32(1.0)))
    for r in (0, -1, 2.0):
        with pytest.raises(cj.errors.Msg, match=f"pixel_shuffle: upscale_factor must be an integer >= 1, got {r}"):
            ops.pixel_shuffle(x, r)
        with pytest.raises(cj.errors.Msg, match="pixel_unshuffle: downscale_factor must be an integer >= 1"):
            ops.pixel_unshuffle(x, r)
    with pytest.raises(cj.errors.Msg, match="replication_pad2d: pad must be an integer >= 0, got -1"):
        ops.replication_pad2d(x, -1)
    np.testing.assert_array_equal(_np(ops.replication_pad2d(x, 2)), F.pad(torch.tensor(x), (2,) * 4, "replicate"))
