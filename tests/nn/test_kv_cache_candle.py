"""Candle's ``candle_nn::kv_cache`` single-tensor caches (``Cache``, ``RotatingCache``) and the
per-row ``ScatteredKvCache`` / ``ScatteredCacheBuilder`` / ``IndicesAndMask``.

References are written here from Candle's documented semantics, independently of candlejax: numpy
concatenation, a numpy ring, and a per-row numpy model of the scattered cache. Attention through the
caches is checked in float64 against attention over the explicitly kept history.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import candlejax as cj
import candlejax.nn as nn
from candlejax import DType, errors
from candlejax.nn import ops
from candlejax.transforms import jit


def _np(t):
    return np.asarray(t._a)


def _attend(q, k, v, visible):
    """float64 softmax attention of ``q`` (T, D) over ``k``/``v`` (S, D); ``visible`` bool (T, S)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    s = q @ k.T / np.sqrt(q.shape[-1])
    s = np.where(visible, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def _visible(mask):
    """Bool "may attend" from a bool mask or an additive float mask (0 visible, -inf hidden)."""
    m = np.asarray(mask)
    if m.dtype == bool:
        return m
    assert np.all((m == 0) | (m == -np.inf)), m
    return m == 0


# ------------------------------------------------------------------------------------------------
# Cache
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim,shape", [(2, (2, 3, None, 4)), (1, (3, None, 5)), (0, (None, 2))])
def test_cache_matches_concatenation(rng, dim, shape):
    n = 9
    chunks = [rng.standard_normal(tuple(t if s is None else s for s in shape)).astype(np.float32)
              for t in (3, 1, 1, 4)]  # fmt: skip
    cache = nn.Cache.new(dim, n)
    assert cache.dim == dim and cache.max_seq_len == n and cache.current_seq_len() == 0
    assert cache.all_data() is None and cache.current_data() is None
    hist = None
    for x in chunks:
        data, cache = cache.append(x)
        hist = x if hist is None else np.concatenate([hist, x], axis=dim)
        t = hist.shape[dim]
        want = np.zeros(tuple(n if s is None else s for s in shape), np.float32)
        want[(slice(None),) * dim + (slice(0, t),)] = hist
        np.testing.assert_array_equal(_np(data), want)  # the whole buffer, zero past the written part
        np.testing.assert_array_equal(_np(cache.all_data()), want)
        np.testing.assert_array_equal(_np(cache.current_data()), hist)
        assert cache.current_seq_len() == t
        assert _np(cache.attn_mask(x.shape[dim])).tolist() == [
            [j <= t - x.shape[dim] + i for j in range(n)] for i in range(x.shape[dim])
        ]
    # reset keeps the buffer (its contents are masked out and overwritten), unlike Candle's
    fresh = cache.reset()
    assert fresh.current_seq_len() == 0 and fresh.current_data() is None
    assert fresh.all_data() is cache.all_data()
    _, fresh = fresh.append(chunks[1])
    np.testing.assert_array_equal(_np(fresh.current_data()), chunks[1])
    assert not _np(fresh.attn_mask(1))[0, 1:].any()


def test_cache_pair_attention_matches_full_history(rng):
    # Candle's KvCache is two Caches: keys and values concatenated along the sequence dim
    b, h, t, d, n = 2, 2, 7, 4, 8
    q, k, v = (rng.standard_normal((b, h, t, d)).astype(np.float32) for _ in range(3))
    kc, vc = nn.Cache.new(2, n), nn.Cache.new(2, n)
    causal = np.tril(np.ones((t, t), bool))
    ref = np.stack([[_attend(q[i, j], k[i, j], v[i, j], causal) for j in range(h)] for i in range(b)])
    for lo, hi in ((0, 3), (3, 4), (4, 7)):
        k_all, kc = kc.append(k[:, :, lo:hi])
        v_all, vc = vc.append(v[:, :, lo:hi])
        vis = _np(kc.attn_mask(hi - lo))
        out = np.stack([[_attend(q[i, j, lo:hi], _np(k_all)[i, j], _np(v_all)[i, j], vis) for j in range(h)]
                        for i in range(b)])  # fmt: skip
        np.testing.assert_allclose(out, ref[:, :, lo:hi], rtol=1e-12, atol=1e-12)


def test_cache_overflow_and_shape_errors_raise_eagerly():
    x = np.ones((1, 2, 3, 4), np.float32)
    _, cache = nn.Cache.new(2, 4).append(x)
    with pytest.raises(errors.Msg, match=r"Cache.append: appending 3 positions at 3 exceeds max_seq_len 4 "
                                         r"\(create the cache with a larger max_seq_len\)"):  # fmt: skip
        cache.append(x)
    with pytest.raises(errors.Msg, match=r"source of shape \(1, 5, 1, 4\) does not fit the cache's buffer "
                                         r"\(1, 2, 4, 4\)"):  # fmt: skip
        cache.append(np.ones((1, 5, 1, 4), np.float32))
    with pytest.raises(errors.Msg, match="dim 4 is out of range"):
        nn.Cache.new(4, 8).append(x)
    with pytest.raises(errors.Msg, match="max_seq_len must be >= 1"):
        nn.Cache.new(0, 0)
    pre = nn.Cache.preallocated(2, 6, x)
    assert pre.all_data().shape == (1, 2, 6, 4) and pre.current_data() is None


@pytest.mark.parametrize("make", [lambda: nn.Cache.new(2, 8), lambda: nn.RotatingCache.new(2, 3)])
def test_cache_append_bound_to_one_name_raises_naming_the_spelling(make):
    x = cj.Tensor.ones((1, 2, 1, 4))
    data, cache = make().append(x)  # candlejax's spelling
    assert data.shape[3] == 4 and cache.current_seq_len() == 1
    spelling = re.escape("data, cache = cache.append(x)")
    wrong = make().append(x)  # Candle's `cache.append(&x)?` ported as `x = cache.append(x)`
    for use in (lambda: wrong + 1, lambda: 2 * wrong, lambda: wrong @ x, lambda: -wrong, lambda: wrong.shape,
                lambda: wrong.reshape(4)):  # fmt: skip
        with pytest.raises(errors.Msg, match=spelling):
            use()
    with pytest.raises(errors.Msg, match=r"got DataAndCache .*" + spelling):
        x.matmul(wrong)
    with pytest.raises(errors.Msg, match=r"Cache .*" + spelling):  # the cache itself, used as a tensor
        x.matmul(wrong[1])
    assert len(wrong + ("z",)) == 3  # noqa: RUF005 - still a tuple for tuple concatenation


def test_cache_views_need_a_concrete_length():
    _, cache = nn.Cache.new(0, 4).append(np.ones(2, np.float32))

    @jit
    def bad(c):
        return c.current_data()

    with pytest.raises(errors.Msg, match=r"Cache.current_data\(\) is narrowed to the written length.*all_data\(\)"):
        bad(cache)


def test_cache_jitted_step_matches_eager_without_retracing(rng):
    b, h, t, d, n = 1, 2, 6, 4, 8
    q, k, v = (rng.standard_normal((b, h, t, d)).astype(np.float32) for _ in range(3))

    def step(kc, vc, q, k, v):
        k_all, kc = kc.append(k)
        v_all, vc = vc.append(v)
        return ops.sdpa(q, k_all, v_all, mask=kc.attn_mask(q.shape[2])), kc, vc

    jstep = jit(step)
    ek, ev = nn.Cache.preallocated(2, n, k[:, :, :1]), nn.Cache.preallocated(2, n, v[:, :, :1])
    jk, jv = ek, ev
    for i in range(t):
        sl = (slice(None), slice(None), slice(i, i + 1))
        eo, ek, ev = step(ek, ev, q[sl], k[sl], v[sl])
        jo, jk, jv = jstep(jk, jv, q[sl], k[sl], v[sl])
        np.testing.assert_allclose(_np(jo), _np(eo), rtol=1e-6, atol=1e-6)
        ref = np.stack([_attend(q[0, j, i : i + 1], k[0, j, : i + 1], v[0, j, : i + 1], np.ones((1, i + 1), bool))
                        for j in range(h)])[None]  # fmt: skip
        np.testing.assert_allclose(_np(jo), ref, rtol=1e-5, atol=1e-5)
    assert jstep._cache_size() == 1  # one compiled step serves every token
    assert jk.current_seq_len() == t
    np.testing.assert_array_equal(_np(jk.current_data()), k)


# ------------------------------------------------------------------------------------------------
# RotatingCache
# ------------------------------------------------------------------------------------------------
class _Ring:
    """numpy ring of ``w`` slots along axis ``dim``: position p lives in slot p % w."""

    def __init__(self, w, dim):
        self.w, self.dim, self.buf, self.held, self.n = w, dim, None, np.full(w, -1), 0

    def append(self, x):
        if self.buf is None:
            shape = list(x.shape)
            shape[self.dim] = self.w
            self.buf = np.zeros(shape, x.dtype)
        prev, prev_held = self.buf.copy(), self.held.copy()
        xs = np.moveaxis(x, self.dim, 0)
        for i in range(xs.shape[0]):
            p = self.n + i
            np.moveaxis(self.buf, self.dim, 0)[p % self.w] = xs[i]
            self.held[p % self.w] = p
        self.n += xs.shape[0]
        return np.concatenate([prev, x], axis=self.dim), prev_held


def test_rotating_cache_matches_ring_reference(rng):
    w, dim = 4, 1
    cache, ring = nn.RotatingCache.new(dim, w), _Ring(w, dim)
    assert cache.all_data() is None and cache.current_data() is None and cache.offset() == 0
    for t in (2, 1, 3, 6, 1, 4):  # wraps, and one chunk longer than the window
        np.testing.assert_array_equal(_np(cache.positions(t)), ring.n + np.arange(t))
        x = rng.standard_normal((2, t, 3)).astype(np.float32)
        data, cache = cache.append(x)
        want, prev_held = ring.append(x)
        np.testing.assert_array_equal(_np(data), want)  # the ring before the write, then the new tokens
        np.testing.assert_array_equal(_np(cache.all_data()), ring.buf)
        np.testing.assert_array_equal(_np(cache.current_data()), ring.buf[:, : min(ring.n, w)])
        assert cache.offset() == cache.current_seq_len() == ring.n
        kp = np.concatenate([prev_held, ring.n - t + np.arange(t)])
        qp = (ring.n - t + np.arange(t))[:, None]
        np.testing.assert_array_equal(_np(cache.attn_mask(t)), (kp >= 0) & (kp <= qp) & (kp > qp - w))
    fresh = cache.reset()
    assert fresh.offset() == 0 and fresh.current_data() is None and fresh.all_data() is cache.all_data()
    data, fresh = fresh.append(np.ones((2, 1, 3), np.float32))
    assert not _np(fresh.attn_mask(1))[0, :w].any()  # the old ring is hidden after a reset


def test_rotating_cache_attention_is_a_sliding_window_and_matches_rotating_kv_cache(rng):
    b, h, t, d, w = 1, 2, 9, 4, 3
    q, k, v = (rng.standard_normal((b, h, t, d)).astype(np.float32) for _ in range(3))
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    window = (j <= i) & (j > i - w)
    ref = np.stack([_attend(q[0, hh], k[0, hh], v[0, hh], window) for hh in range(h)])[None]
    kc, vc, kv = nn.RotatingCache.new(2, w), nn.RotatingCache.new(2, w), nn.RotatingKvCache.new(2, w)
    for lo, hi in ((0, 2), (2, 6), (6, 7), (7, 9)):
        k_all, kc = kc.append(k[:, :, lo:hi])
        v_all, vc = vc.append(v[:, :, lo:hi])
        (k2, v2), kv = kv.append(k[:, :, lo:hi], v[:, :, lo:hi])
        np.testing.assert_array_equal(_np(k2), _np(k_all))
        np.testing.assert_array_equal(_np(v2), _np(v_all))
        vis = _np(kc.attn_mask(hi - lo))
        np.testing.assert_array_equal(_np(kv.attn_mask(hi - lo)), vis)
        out = np.stack([_attend(q[0, hh, lo:hi], _np(k_all)[0, hh], _np(v_all)[0, hh], vis) for hh in range(h)])
        np.testing.assert_allclose(out[None], ref[:, :, lo:hi], rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(_np(kv.k()), _np(kc.current_data()))
        np.testing.assert_array_equal(_np(kv.v()), _np(vc.current_data()))
    assert kv.offset() == kc.offset() == t
    assert nn.RotatingKvCache.new(2, w).k() is None


def test_rotating_cache_jitted_step_matches_eager_without_retracing(rng):
    w, t = 3, 7
    xs = rng.standard_normal((t, 2, 1, 4)).astype(np.float32)

    def step(c, x):
        data, c = c.append(x)
        return data, c.attn_mask(1), c

    jstep = jit(step)
    # the first append allocates the ring: run it eagerly, then one compiled step serves every token
    _, _, ec = step(nn.RotatingCache.new(1, w), xs[0])
    jc = ec
    for x in xs[1:]:
        ed, em, ec = step(ec, x)
        jd, jm, jc = jstep(jc, x)
        np.testing.assert_array_equal(_np(jd), _np(ed))
        np.testing.assert_array_equal(_np(jm), _np(em))
    assert jstep._cache_size() == 1
    assert jc.offset() == t
    np.testing.assert_array_equal(_np(jc.current_data()), _np(ec.current_data()))
    with pytest.raises(errors.Msg, match="max_seq_len \\(the window\\) must be >= 1"):
        nn.RotatingCache.new(0, 0)
    with pytest.raises(errors.Msg, match=r"RotatingCache\.append: a source of shape"):
        jc.append(np.ones((3, 1, 4), np.float32))


# ------------------------------------------------------------------------------------------------
# ScatteredKvCache
# ------------------------------------------------------------------------------------------------
def test_scattered_indices_and_masks_match_candles_example():
    # the call sequence of Candle's test_scattered_kv_cache (batch 2, context 5) and its expectations,
    # written as visible (True) / hidden (False) slots
    builder = nn.ScatteredCacheBuilder.new(2, 5, DType.F32, cj.Device.Cpu)
    T, F = True, False
    all5 = [T] * 5
    steps = [
        (1, [T, F], [[0], [0]], [[[T, F, F, F, F]], [all5]]),
        (1, [T, F], [[1], [0]], [[[T, T, F, F, F]], [all5]]),
        (3, [F, T], [[2, 2, 2], [0, 1, 2]], [[all5] * 3, [[T, F, F, F, F], [T, T, F, F, F], [T, T, T, F, F]]]),
        (3, [T, T], [[2, 3, 4], [3, 4, 0]],
         [[[T, T, T, F, F], [T, T, T, T, F], all5], [[F, T, T, T, F], [F, T, T, T, T], all5]]),
        (1, [T, F], [[0], [1]], [[all5], [all5]]),
        (2, [T, F], [[1, 2], [1, 1]], [[[T, T, F, T, T], all5], [all5, all5]]),
    ]  # fmt: skip
    for t, bm, idx, vis in steps:
        iam = builder.indices_and_mask(t, bm)
        assert iam.indices.dtype == DType.U32 and iam.mask().dtype == DType.F32
        assert _np(iam.indices).tolist() == idx
        assert iam.mask().shape == (2, 1, t, 5)
        assert _visible(_np(iam.mask())[:, 0]).tolist() == vis
    assert builder.positions() == [8, 6] and builder.batch_size() == 2 and builder.device() == cj.Device.Cpu


class _ScatteredRef:
    """numpy model: per row a ring of ``c`` slots (position p in slot p % c), the position each slot
    holds (-1 empty, -2 overwritten by a row that did not advance), and the row's whole history."""

    def __init__(self, b, h, c, d):
        self.c = c
        self.k, self.v = np.zeros((b, h, c, d)), np.zeros((b, h, c, d))
        self.held = np.full((b, c), -1)
        self.pos = np.zeros(b, int)
        self.hist = [([], []) for _ in range(b)]  # per row: keys (H, D) and values by position

    def reset_row(self, r):
        self.pos[r] = 0
        self.held[r] = -1
        self.hist[r] = ([], [])

    def step(self, k, v, active):
        t = k.shape[2]
        idx = np.zeros((len(active), t), int)
        for r, on in enumerate(active):
            p = self.pos[r]
            if not on:
                idx[r] = p % self.c
                self.held[r, p % self.c] = -2  # the row's tokens land there, to be overwritten unread
                continue
            for i in range(t):
                s = (p + i) % self.c
                idx[r, i] = s
                if i >= t - self.c:  # only the last c tokens survive
                    self.k[r, :, s], self.v[r, :, s], self.held[r, s] = k[r, :, i], v[r, :, i], p + i
                self.hist[r][0].append(k[r, :, i])
                self.hist[r][1].append(v[r, :, i])
            self.pos[r] += t
        return idx


def _scattered_scenario():
    """(seq_len, batch_mask, rows to reset first) for batch 3, context 4."""
    return [
        (5, [True, True, False], ()),  # a prefill of >= context tokens: the chunk attends within itself
        (1, [True, True, True], ()),
        (2, [False, True, True], ()),
        (3, [True, False, True], ()),
        (1, [True, True, False], ()),
        (1, [True, True, True], (1,)),  # row 1 restarts
        (2, [False, True, True], ()),
        (3, [True, True, True], ()),
        (1, [False, False, True], ()),
        (1, [True, True, True], (0, 2)),
    ]


def test_scattered_cache_matches_numpy_model_and_full_history_attention(rng):
    b, h, c, d = 3, 2, 4, 3
    builder = nn.ScatteredCacheBuilder(b, c)
    cache = builder.make_cache(h, d)
    assert cache.k().shape == cache.v().shape == (b, h, c, d) and cache.k().dtype == DType.F32
    ref = _ScatteredRef(b, h, c, d)
    for t, active, resets in _scattered_scenario():
        for r in resets:
            builder.reset_batch_index(r)
            ref.reset_row(r)
        start = ref.pos.copy()
        q, k, v = (rng.standard_normal((b, h, t, d)).astype(np.float32) for _ in range(3))
        iam = builder.indices_and_mask(t, active)
        (k_all, v_all), cache = cache.append(k, v, iam)
        want_idx = ref.step(k, v, active)
        np.testing.assert_array_equal(_np(iam.indices), want_idx)
        assert builder.positions() == ref.pos.tolist()
        # the buffers hold every slot that a later step may read
        ok = ref.held >= 0
        np.testing.assert_array_equal(_np(cache.k()).transpose(0, 2, 1, 3)[ok], ref.k.transpose(0, 2, 1, 3)[ok])
        np.testing.assert_array_equal(_np(cache.v()).transpose(0, 2, 1, 3)[ok], ref.v.transpose(0, 2, 1, 3)[ok])
        vis = _visible(_np(iam.mask()))
        if t >= c:
            assert k_all.shape == (b, h, t, d) and vis.shape == (t, t)
            np.testing.assert_array_equal(_np(k_all), k)
        else:
            assert k_all.shape == (b, h, c, d) and vis.shape == (b, 1, t, c)
            np.testing.assert_array_equal(_np(k_all), _np(cache.k()))
        for r in range(b):
            if not active[r]:
                if t < c:
                    assert vis[r].all()  # a row that does not advance hides nothing (its output is ignored)
                continue
            hk, hv = np.stack(ref.hist[r][0]), np.stack(ref.hist[r][1])  # (P, H, D)
            end = ref.pos[r]
            for i in range(t):
                my = start[r] + i
                # the keys the ring holds once this step is written, up to the query's own position
                lo = my - c + 1 if t >= c else max(end - c, 0)
                keep = np.arange(lo if lo > 0 else 0, my + 1)
                m = vis[i : i + 1] if t >= c else vis[r, 0, i : i + 1]
                for hh in range(h):
                    got = _attend(q[r, hh, i : i + 1], _np(k_all)[r, hh], _np(v_all)[r, hh], m)
                    want = _attend(q[r, hh, i : i + 1], hk[keep, hh], hv[keep, hh], np.ones((1, len(keep)), bool))
                    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        if t < c:  # the mask is exactly "slot holds a position <= the query's"
            held = ref.held[:, None, :]
            qpos = start[:, None, None] + np.arange(t)[None, :, None]
            want_vis = ((held >= 0) & (held <= qpos)) | ~np.asarray(active)[:, None, None]
            np.testing.assert_array_equal(vis[:, 0], want_vis)
    builder.reset()
    assert builder.positions() == [0, 0, 0]
    iam = builder.indices_and_mask(1, [True] * b)
    assert _visible(_np(iam.mask()))[:, 0, 0].tolist() == [[True, False, False, False]] * b


def test_scattered_jitted_step_matches_eager_without_retracing(rng):
    b, h, c, d, steps = 2, 2, 4, 4, 7
    builder = nn.ScatteredCacheBuilder.new(b, c, DType.F32, None)
    qs, ks, vs = (rng.standard_normal((steps, b, h, 1, d)).astype(np.float32) for _ in range(3))

    def step(cache, q, k, v, iam):
        (k_all, v_all), cache = cache.append(k, v, iam)
        return ops.sdpa(q, k_all, v_all, mask=iam.mask()), cache

    jstep = jit(step)
    ec = jc = builder.make_cache(h, d)
    masks = [[True, True], [True, False], [False, True], [True, True], [True, True], [False, True], [True, True]]
    for i, bm in enumerate(masks):
        iam = builder.indices_and_mask(1, bm)
        eo, ec = step(ec, qs[i], ks[i], vs[i], iam)
        jo, jc = jstep(jc, qs[i], ks[i], vs[i], iam)
        for r in range(b):
            if bm[r]:
                np.testing.assert_allclose(_np(jo)[r], _np(eo)[r], rtol=1e-6, atol=1e-6)
    assert jstep._cache_size() == 1  # the builder's bookkeeping stays on the host: one compiled step
    np.testing.assert_array_equal(_np(jc.k()), _np(ec.k()))
    np.testing.assert_array_equal(_np(jc.v()), _np(ec.v()))


def test_scattered_errors_and_misuse():
    builder = nn.ScatteredCacheBuilder.new(2, 4)
    cache = builder.make_cache(1, 3)
    k = np.ones((2, 1, 1, 3), np.float32)
    with pytest.raises(errors.Msg, match=r"batch_mask needs one bool per row \(2\), got shape \(3,\)"):
        builder.indices_and_mask(1, [True] * 3)
    with pytest.raises(errors.Msg, match="seq_len must be >= 1"):
        builder.indices_and_mask(0, [True, True])
    with pytest.raises(errors.Msg, match="reset_batch_index: 2 is out of range"):
        builder.reset_batch_index(2)
    with pytest.raises(errors.Msg, match="batch_size 0 and context 4 must be >= 1"):
        nn.ScatteredCacheBuilder.new(0, 4)
    with pytest.raises(errors.Msg, match="must be a float dtype"):
        nn.ScatteredCacheBuilder.new(1, 4, DType.U32)
    iam2 = builder.indices_and_mask(2, [True, True])
    with pytest.raises(errors.Msg, match=r"not made for 1 new tokens.*indices_and_mask\(1, batch_mask\)"):
        cache.append(k, k, iam2)
    with pytest.raises(errors.Msg, match=r"do not fit the cache's batch 2, 1 heads, key dim 3"):
        cache.append(np.ones((2, 1, 2, 5), np.float32), np.ones((2, 1, 2, 5), np.float32), iam2)
    with pytest.raises(errors.Msg, match="iam must be the IndicesAndMask"):
        cache.append(k, k, None)
    iam = builder.indices_and_mask(1, [True, True])
    spelling = re.escape("(k, v), cache = cache.append(k, v, iam)")
    k_wrong, v_wrong = cache.append(k, k, iam)  # Candle's `let (k, v) = cache.append(&k, &v, &iam)?`
    for use in (lambda: k_wrong * 2, lambda: k_wrong + 1, lambda: k_wrong.shape):
        with pytest.raises(errors.Msg, match=spelling):
            use()
    with pytest.raises(errors.Msg, match=r"ScatteredKvCache .*" + spelling):
        cj.Tensor.ones((2, 1, 1, 3)).matmul(v_wrong)


# ------------------------------------------------------------------------------------------------
# bad input: k against v, dtypes, sizes (Candle's matmul / slice_set / cat raise)
# ------------------------------------------------------------------------------------------------
_K3 = np.ones((1, 1, 3, 2), np.float32)
_BF = _K3.astype(jnp.bfloat16)


@pytest.mark.parametrize("make", [lambda: nn.KvCache.new(2, 6), lambda: nn.KvCache.preallocated(2, 6, _K3),
                                  lambda: nn.RotatingKvCache.new(2, 8), lambda: nn.ConcatKvCache.new(2)])  # fmt: skip
def test_kv_caches_check_values_against_keys(make):
    # a shorter v used to leave zero value rows that attention saw (v rows [5, 5, 0, 0, 0, 0], pos 3)
    with pytest.raises(errors.Msg, match=r"values of shape \(1, 1, 2, 2\) do not pair with keys of shape \(1, 1, 3, 2\)"):  # noqa: E501
        make().append(_K3, np.full((1, 1, 2, 2), 5, np.float32))
    with pytest.raises(errors.DTypeMismatchBinaryOp, match=r"\(k, v\), lhs: F32, rhs: BF16"):
        make().append(_K3, _BF)
    cache = make()
    if getattr(cache, "v_buf", None) is None:  # not preallocated: only the head dim may differ (MLA)
        (_, v_all), _ = cache.append(_K3, np.ones((1, 1, 3, 5), np.float32))
        assert v_all.shape[-1] == 5


@pytest.mark.parametrize("make", [lambda: nn.KvCache.new(2, 6).append(_K3, _K3)[1],
                                  lambda: nn.KvCache.preallocated(2, 6, _K3),
                                  lambda: nn.DecodeKvCache.preallocated(6, _K3),
                                  lambda: nn.ConcatKvCache.new(2).append(_K3, _K3)[1],
                                  lambda: nn.RotatingKvCache.new(2, 4).append(_K3, _K3)[1]])  # fmt: skip
def test_kv_caches_refuse_another_dtype_like_candle_slice_set(make):
    # they used to cast bf16 keys into an f32 cache silently
    with pytest.raises(errors.DTypeMismatchBinaryOp, match=r"lhs: F32, rhs: BF16"):
        make().append(_BF, _BF)


def test_single_tensor_cache_refuses_another_dtype():
    with pytest.raises(errors.DTypeMismatchBinaryOp, match=r"dtype mismatch in Cache.append.*lhs: F32, rhs: BF16"):
        nn.Cache.preallocated(2, 6, _K3).append(_BF)


@pytest.mark.parametrize("cache", ["kv", "cache", "decode"])
def test_append_longer_than_max_seq_len_raises_under_jit(cache):
    # the appended length is static: this raised a raw TypeError from dynamic_update_slice
    def f(a):
        if cache == "kv":
            return nn.KvCache.new(2, 2).append(a, a)[0][0].jax
        if cache == "cache":
            return nn.Cache.new(2, 2).append(a)[0].jax
        return nn.DecodeKvCache.preallocated(2, a).append(a, a)[0][0].jax
    with pytest.raises(errors.Msg, match=r"3 positions .*(longer than|more than) max_seq_len 2"):
        jax.jit(f)(_K3)


def test_kv_cache_new_validates_sizes_and_dims():
    with pytest.raises(errors.Msg, match=r"KvCache: max_seq_len must be >= 1 \(an integer\), got -1"):
        nn.KvCache.new(2, -1)
    with pytest.raises(errors.Msg, match=r"ConcatKvCache.append \(keys\): dim 5 is out of range for a source of shape"):
        nn.ConcatKvCache.new(5).append(_K3, _K3)  # was accepted, the second append raised a raw ValueError
    with pytest.raises(errors.Msg, match=r"RotatingKvCache.append: dim 4 is out of range"):
        nn.RotatingKvCache.new(4, 8).append(_K3, _K3)


def test_rotating_caches_validate_the_window_like_kv_cache():
    # Candle's max_seq_len is a usize: a float window was truncated silently (2.5 -> a ring of 2)
    for make in (nn.RotatingKvCache.new, nn.RotatingCache.new):
        for bad in (2.5, True, -1, 0):
            with pytest.raises(errors.Msg, match=r"max_seq_len"):
                make(2, bad)
    assert nn.RotatingKvCache.new(2, np.int64(3)).max_seq_len() == 3


def test_decode_cache_at_position_checks_the_position_eagerly():
    cache = nn.DecodeKvCache.preallocated(4, _K3)
    for pos in (-1, 5, np.int32(-2)):  # k()/v() sliced with a negative length showed unwritten slots
        with pytest.raises(errors.Msg, match=r"DecodeKvCache.at_position: position .* 0\.\.4"):
            cache.at_position(pos)
    assert cache.at_position(4).current_seq_len() == 4 and cache.at_position(0).k().shape[2] == 0


def test_stacked_cache_checks_positions_shapes_and_dtypes():
    s = nn.StackedKvCache.new(2, 1, 1, 8, 2)
    kb = np.ones((1, 1, 1, 2), np.float32)
    for pos in (8, -1, np.int32(8), jnp.int32(8)):  # concrete positions: XLA used to clamp the write silently
        with pytest.raises(errors.Msg, match=r"writing 1 positions at pos -?\d .*does not fit the 8 slots 0..7"):
            s.update(0, kb, kb, pos)
    with pytest.raises(errors.Msg, match=r"layer 2 is out of range for 2 layers"):
        s.update(2, kb, kb, 0)
    k9 = np.ones((1, 9, 1, 2), np.float32)
    with pytest.raises(errors.Msg, match=r"9 positions are more than the 8 slots"):  # static, even traced
        jax.jit(lambda p: s.update(0, k9, k9, p)[0])(0)
    with pytest.raises(errors.Msg, match=r"k of shape \(B, Hkv, T, D\) \(1, 2, 1, 2\) does not fit the cache"):
        s.update(0, np.ones((1, 1, 2, 2), np.float32), np.ones((1, 1, 2, 2), np.float32), 0)
    with pytest.raises(errors.Msg, match=r"v of shape .* does not fit"):
        s.update(0, kb, np.ones((1, 2, 1, 2), np.float32), 0)
    with pytest.raises(errors.DTypeMismatchBinaryOp, match=r"StackedKvCache.update \(k cache, k\), lhs: F32"):
        s.update(0, kb.astype(jnp.bfloat16), kb.astype(jnp.bfloat16), 0)
    k_all, _, _ = s.update(1, kb * 3, kb, 7)  # the last slot still fits
    assert float(k_all[0, 0, 7, 0]) == 3.0
    k_all = jax.jit(lambda p: s.update(0, kb, kb, p)[0])(3)  # traced positions are not checked (clamped)
    assert k_all.shape == (1, 1, 8, 2)


def test_scattered_cache_refuses_another_dtype():
    builder = nn.ScatteredCacheBuilder.new(1, 4)
    cache, k = builder.make_cache(1, 3), np.ones((1, 1, 1, 3), jnp.bfloat16)
    with pytest.raises(errors.DTypeMismatchBinaryOp, match=r"ScatteredKvCache.append \(k cache, k\), lhs: F32"):
        cache.append(k, k, builder.indices_and_mask(1, [True]))


@pytest.mark.parametrize("make", [lambda: nn.Cache.new(2, 6).append(_K3)[1],
                                  lambda: nn.KvCache.new(2, 6).append(_K3, _K3)[1],
                                  lambda: nn.DecodeKvCache.preallocated(6, _K3).append(_K3, _K3)[1],
                                  lambda: nn.RotatingCache.new(2, 4).append(_K3)[1],
                                  lambda: nn.RotatingKvCache.new(2, 4).append(_K3, _K3)[1]])  # fmt: skip
def test_attn_mask_checks_q_len_like_candle_usize(make):
    # Candle's seq_len is a usize: -1 used to give an empty (0, n) mask, 1.5 / True were taken as 1
    cache = make()
    name = type(cache).__name__
    with pytest.raises(errors.InvalidArgument, match=rf"{name}.attn_mask: q_len must be >= 0, got -1"):
        cache.attn_mask(-1)
    for bad in (1.5, True, "2", None):
        with pytest.raises(errors.NotAnInteger, match=rf"{name}.attn_mask: q_len must be an int"):
            cache.attn_mask(bad)
    assert _np(cache.attn_mask(np.int64(3))).shape[0] == 3 and _np(cache.attn_mask(0)).shape[0] == 0
    if not name.startswith("Rotating"):  # a rotating cache takes chunks longer than its window
        with pytest.raises(errors.InvalidArgument, match=rf"{name}.attn_mask: q_len 7 is larger than the cache"):
            cache.attn_mask(7)
    else:
        assert _np(cache.attn_mask(7)).shape == (7, 11)
        with pytest.raises(errors.InvalidArgument, match=rf"{name}.positions: seq_len must be >= 0"):
            cache.positions(-2)
        with pytest.raises(errors.NotAnInteger, match=rf"{name}.positions: seq_len must be an int"):
            cache.positions(2.5)


def test_scattered_indices_and_mask_checks_seq_len():
    builder = nn.ScatteredCacheBuilder.new(1, 4)
    for bad in (1.5, True):  # was truncated to 1
        with pytest.raises(errors.NotAnInteger, match=r"indices_and_mask: seq_len must be an int"):
            builder.indices_and_mask(bad, [True])
    with pytest.raises(errors.Msg, match=r"seq_len must be >= 1, got -1"):
        builder.indices_and_mask(-1, [True])
