"""Reductions vs numpy float64 (eager and under jax.jit), gradients vs jax.numpy, candle-pyo3 parity,
dtype preservation, and a bad-input test for each error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from candlejax import D, Tensor, errors

from helpers import (  # isort: skip
    BF16, F16, F32, I32, U8, U32, T, assert_close, eager_and_jit, eager_and_jit_many, f64, from_candle, rand, raises,
    to_candle,
)  # fmt: skip

candle = pytest.importorskip("candle")

SHAPE = (2, 3, 4)


@pytest.mark.parametrize("dtype", [F32, BF16, F16, U8, U32, I32], ids=str)
def test_sum(rng, dtype):
    x = rand(rng, SHAPE, dtype)
    xd = f64(x)
    cases = [
        (lambda t: t.sum_keepdim(1), xd.sum(1, keepdims=True)),
        (lambda t: t.sum(1), xd.sum(1)),
        (lambda t: t.sum_keepdim((0, 2)), xd.sum((0, 2), keepdims=True)),
        (lambda t: t.sum([0, 2]), xd.sum((0, 2))),
        (lambda t: t.sum(D.Minus1), xd.sum(-1)),
        (lambda t: t.sum(-2), xd.sum(-2)),
        (lambda t: t.sum(()), xd),
        (lambda t: t.sum_all(), xd.sum()),
    ]
    if dtype.kind in "iu":
        cases = [(f, w.astype(np.int64).astype(dtype)) for f, w in cases]  # keeps the dtype: u8 sums wrap
    for outs in eager_and_jit_many([f for f, _ in cases], T(x)):
        for got, (_, want) in zip(outs, cases):
            assert got.dtype.np == dtype and got.shape == np.shape(want)
            assert_close(got, want, dtype, scale=10)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=str)
def test_half_sum_mean_accumulate_in_f32(dtype):
    # 2000 copies of bf16(0.1): a half-precision accumulator stalls (bf16 sum_all gave 190, mean 0.0952);
    # f32 accumulation rounded once gives the float64 sum rounded to the dtype, as PyTorch
    x = np.full((2, 1000), 0.1, np.float32).astype(dtype)
    xd = f64(x)
    cases = [
        (lambda t: t.sum(1), xd.sum(1)),
        (lambda t: t.sum_keepdim(1), xd.sum(1, keepdims=True)),
        (lambda t: t.sum_all(), xd.sum()),
        (lambda t: t.mean(1), xd.mean(1)),
        (lambda t: t.mean_keepdim((0, 1)), xd.mean((0, 1), keepdims=True)),
        (lambda t: t.mean_all(), xd.mean()),
    ]
    for outs in eager_and_jit_many([f for f, _ in cases], T(x)):
        for got, (_, want) in zip(outs, cases):
            assert got.dtype.np == dtype
            np.testing.assert_array_equal(np.asarray(got.jax).astype(np.float64), want.astype(dtype).astype(np.float64))


def test_u8_sum_wraps_like_candle():
    x = np.full((300,), 1, np.uint8)
    assert int(np.asarray(T(x).sum_all().jax)) == 300 % 256
    assert int(from_candle(to_candle(x).sum_all())) == 300 % 256


@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=str)
def test_mean_var(rng, dtype):
    x = rand(rng, SHAPE, dtype)
    xd = f64(x)
    cases = [
        (lambda t: t.mean_keepdim(2), xd.mean(2, keepdims=True)),
        (lambda t: t.mean((0, 1)), xd.mean((0, 1))),
        (lambda t: t.mean_all(), xd.mean()),
        (lambda t: t.var_keepdim(1), xd.var(1, ddof=1, keepdims=True)),
        (lambda t: t.var(D.Minus1), xd.var(-1, ddof=1)),
    ]
    for outs in eager_and_jit_many([f for f, _ in cases], T(x)):
        for got, (_, want) in zip(outs, cases):
            assert got.dtype.np == dtype and got.shape == np.shape(want)
            assert_close(got, want, dtype)


@pytest.mark.parametrize("dtype", [F32, BF16, U8], ids=str)
def test_max_min_argmax_argmin(rng, dtype):
    x = rand(rng, SHAPE, dtype)
    x[:, 0, :] = x[:, 1, :]  # ties along dim 1: the first occurrence wins
    xd = f64(x)
    cases = [
        (lambda t: t.max_keepdim(1), xd.max(1, keepdims=True), dtype),
        (lambda t: t.max(0), xd.max(0), dtype),
        (lambda t: t.min_keepdim(-1), xd.min(-1, keepdims=True), dtype),
        (lambda t: t.min(D.Minus2), xd.min(1), dtype),
        (lambda t: t.argmax_keepdim(1), xd.argmax(1)[:, None], U32),
        (lambda t: t.argmax([1]), xd.argmax(1), U32),
        (lambda t: t.argmin_keepdim(2), xd.argmin(2)[..., None], U32),
        (lambda t: t.argmin(1), xd.argmin(1), U32),
        (lambda t: t.max_all(), xd.max(), dtype),
        (lambda t: t.min_all(), xd.min(), dtype),
    ]
    for outs in eager_and_jit_many([f for f, _, _ in cases], T(x)):
        for got, (_, want, dt) in zip(outs, cases):
            assert got.dtype.np == dt and got.shape == np.shape(want)
            np.testing.assert_array_equal(f64(got), want)


def test_reduce_grads(rng):
    x = jnp.asarray(rand(rng, SHAPE, F32))
    cases = [
        (lambda t: t.sum((0, 2)), lambda a: jnp.sum(a, (0, 2))),
        (lambda t: t.mean_keepdim(1), lambda a: jnp.mean(a, 1, keepdims=True)),
        (lambda t: t.max(1), lambda a: jnp.max(a, 1)),
        (lambda t: t.min_keepdim(2), lambda a: jnp.min(a, 2, keepdims=True)),
        (lambda t: t.var(2), lambda a: jnp.var(a, 2, ddof=1)),
        (lambda t: t.log_sum_exp((1, 2)), lambda a: jax.nn.logsumexp(a, (1, 2))),
        (lambda t: t.cumsum(1), lambda a: jnp.cumsum(a, 1)),
        (lambda t: t.sort_last_dim(False)[0], lambda a: -jnp.sort(-a, -1)),
        (lambda t: t.max_all(), jnp.max),
        (lambda t: t.mean_all(), jnp.mean),
    ]
    w = jnp.asarray(rand(rng, SHAPE, F32))

    @jax.jit
    def grads(x):
        got = [jax.grad(lambda a, f=f: jnp.sum(f(Tensor._wrap(a)).jax * jnp.sum(w)))(x) for f, _ in cases]
        want = [jax.grad(lambda a, r=r: jnp.sum(r(a) * jnp.sum(w)))(x) for _, r in cases]
        return got, want

    for g, wnt in zip(*grads(x)):
        np.testing.assert_allclose(g, wnt, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_log_sum_exp(rng, dtype):
    x = rand(rng, SHAPE, dtype) * 30  # large values: needs the max-subtraction
    x[0, 0, :] = 1000
    xd = f64(x)

    def lse(a, ax):
        m = a.max(ax, keepdims=True)
        return (np.log(np.exp(a - m).sum(ax, keepdims=True)) + m).squeeze(ax)

    cases = [
        (lambda t: t.log_sum_exp(2), lse(xd, (2,))),
        (lambda t: t.log_sum_exp((0, 1)), lse(xd, (0, 1))),
        (lambda t: t.log_sum_exp(()), xd),
    ]
    for outs in eager_and_jit_many([f for f, _ in cases], T(x)):
        for got, (_, want) in zip(outs, cases):
            assert got.dtype.np == dtype and got.shape == np.shape(want)
            assert_close(got, want, dtype, scale=30)
    # a row of -inf gives -inf (Candle: NaN)
    ninf = T(np.array([[-np.inf, -np.inf], [0.0, 0.0]], np.float32)).log_sum_exp(1)
    np.testing.assert_allclose(f64(ninf), [-np.inf, np.log(2)])


@pytest.mark.parametrize("dtype", [F32, BF16, I32], ids=str)
def test_cumsum(rng, dtype):
    x = rand(rng, SHAPE, dtype)
    xd = f64(x)
    cases = [(lambda t: t.cumsum(0), xd.cumsum(0)), (lambda t: t.cumsum(D.Minus1), xd.cumsum(-1))]
    for outs in eager_and_jit_many([f for f, _ in cases], T(x)):
        for got, (_, want) in zip(outs, cases):
            assert got.dtype.np == dtype
            assert_close(got, want, dtype, scale=10)
    if dtype == F32:  # exact on long sequences (Candle: O(n^2) matmul)
        n = 4096
        ones = T(np.ones(n, np.float32)).cumsum(0)
        np.testing.assert_array_equal(f64(ones), np.arange(1, n + 1))


@pytest.mark.parametrize("dtype", [F32, BF16, U8], ids=str)
def test_sort(rng, dtype):
    x = rand(rng, (3, 6), dtype)
    x[:, 1] = x[:, 4]  # ties: stable order
    xd = f64(x)
    asc = np.argsort(xd, -1, kind="stable")
    desc = np.argsort(-xd, -1, kind="stable")
    fs = [lambda t: t.sort_last_dim(True), lambda t: t.sort_last_dim(False), lambda t: t.arg_sort_last_dim(),
          lambda t: t.arg_sort_last_dim(asc=False)]  # fmt: skip
    for outs in eager_and_jit_many(fs, T(x)):
        (v1, i1), (v2, i2), i3, i4 = outs
        for v, i, want in ((v1, i1, asc), (v2, i2, desc)):
            assert v.dtype.np == dtype and i.dtype.np == U32
            np.testing.assert_array_equal(f64(i), want)
            np.testing.assert_array_equal(f64(v), np.take_along_axis(xd, want, -1))
        np.testing.assert_array_equal(f64(i3), asc)
        np.testing.assert_array_equal(f64(i4), desc)


def test_sort_asc_must_be_a_bool():
    x = T(np.array([3.0, 1.0, 2.0], np.float32))
    for f in (x.sort_last_dim, x.arg_sort_last_dim):
        for bad in (None, 1, "asc"):
            with pytest.raises(errors.InvalidArgument, match=r"sort_last_dim: asc must be a bool .* got "):
                f(bad)
    assert x.sort_last_dim(np.bool_(False))[0].to_vec1() == [3.0, 2.0, 1.0]


def test_reduction_dims_of_a_wrong_type_raise():
    x = T(np.ones((2, 3), np.float32))
    for f in (lambda: x.sum(1.0), lambda: x.sum_keepdim(1.0), lambda: x.mean(0.5)):
        with pytest.raises(errors.InvalidArgument, match="dims must be an int, a D or a sequence of them, got"):
            f()


def test_candle_parity(rng):
    x = rand(rng, (3, 4), F32)
    c, t = to_candle(x), T(x)
    pairs = [
        (t.sum_keepdim(1), c.sum_keepdim(1)),
        (t.sum_keepdim((0, 1)), c.sum_keepdim([0, 1])),
        (t.max_keepdim(0), c.max_keepdim(0)),
        (t.min_keepdim(1), c.min_keepdim(1)),
        (t.argmax_keepdim(1), c.argmax_keepdim(1)),
        (t.argmin_keepdim(0), c.argmin_keepdim(0)),
        (t.sum_all(), c.sum_all()),
        (t.mean_all(), c.mean_all()),
    ]
    for got, want in pairs:
        assert_close(got, from_candle(want), F32)
    assert t.argmax_keepdim(1).dtype.name == "U32" and str(c.argmax_keepdim(1).dtype) == "U32"
    # Candle's mean of an integer tensor is 0 (the 1/n scale is cast to the dtype); candlejax raises
    u = np.array([1, 2, 3], np.uint32)
    assert float(from_candle(to_candle(u).mean_all())) == 0.0
    with pytest.raises(errors.UnsupportedDTypeForOp, match="mean"):
        T(u).mean_all()


def test_bf16_in_bf16_out(rng):
    t = T(rand(rng, SHAPE, BF16))
    outs = [t.sum(1), t.sum_keepdim((0, 1)), t.mean(2), t.mean_keepdim(0), t.max(1), t.min_keepdim(0), t.var(2),
            t.var_keepdim(1), t.sum_all(), t.mean_all(), t.max_all(), t.min_all(), t.log_sum_exp(1), t.cumsum(2),
            t.sort_last_dim(True)[0]]  # fmt: skip
    for o in outs:
        assert o.dtype.np == BF16
    for o in (t.argmax(1), t.argmin_keepdim(0), t.arg_sort_last_dim(), t.sort_last_dim(False)[1]):
        assert o.dtype.np == U32


def test_errors():
    t = T(np.zeros(SHAPE, np.float32))
    i = T(np.zeros(SHAPE, np.int32))
    e = T(np.zeros((0, 3), np.float32))
    raises(errors.OnlySingleDimension, lambda t: t.max((0, 1)), t, match="max can only be performed on a single")
    raises(errors.OnlySingleDimension, lambda t: t.argmin([0, 1]), t, match="argmin")
    raises(errors.OnlySingleDimension, lambda t: t.var_keepdim((1, 2)), t, match="var")
    raises(errors.EmptyTensor, lambda e: e.max(0), e, match="empty tensor for reduce")
    raises(errors.EmptyTensor, lambda e: e.argmax_keepdim(0), e)
    raises(errors.EmptyTensor, lambda e: e.min_all(), e)
    assert e.max(1).shape == (0,)  # reducing a non-empty dim of an empty tensor is fine
    msg = r"sum: dimension index 3 out of range for shape \[2, 3, 4\]"
    raises(errors.DimOutOfRange, lambda t: t.sum(3), t, match=msg)
    raises(errors.DimOutOfRange, lambda t: t.max(-4), t, match="max")
    raises(errors.DimOutOfRange, lambda t: t.cumsum(5), t, match="cumsum")
    raises(errors.DuplicateDimIndex, lambda t: t.sum((1, 1)), t, match="sum: duplicate dim index")
    raises(errors.UnsupportedDTypeForOp, lambda i: i.mean(1), i, match="Candle returns 0")
    raises(errors.UnsupportedDTypeForOp, lambda i: i.var(1), i)
    raises(errors.UnsupportedDTypeForOp, lambda i: i.log_sum_exp(1), i)
    raises(errors.Error, lambda s: s.arg_sort_last_dim(), T(np.float32(1.0)), match="empty last-dim")


def test_scalar_and_empty_sums():
    s = T(np.float32(3.0))
    assert s.max_all() is s and s.min_all() is s
    assert float(np.asarray(s.sum_all().jax)) == 3.0
    e = T(np.zeros((0, 3), np.float32))
    np.testing.assert_array_equal(f64(e.sum(0)), np.zeros(3))
    assert eager_and_jit(lambda e: e.sum_all(), e)[1].shape == ()
