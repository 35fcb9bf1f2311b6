"""matmul, broadcast_matmul, dot, mv, norm vs numpy float64 (eager and under jax.jit), gradients vs
jax.numpy, candle-pyo3 parity, dtype preservation, and a bad-input test for each error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from candlejax import Tensor, errors

from helpers import (  # isort: skip
    BF16, F16, F32, I32, U32, T, assert_close, eager_and_jit_many, f64, from_candle, rand, raises, to_candle,
)  # fmt: skip

candle = pytest.importorskip("candle")


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_matmul_family(rng, dtype):
    a2, b2 = rand(rng, (3, 5), dtype), rand(rng, (5, 4), dtype)
    a4, b4 = rand(rng, (2, 3, 3, 5), dtype), rand(rng, (2, 3, 5, 2), dtype)
    lb, rb = rand(rng, (2, 1, 3, 5), dtype), rand(rng, (4, 5, 2), dtype)
    v = rand(rng, (5,), dtype)
    args = [T(x) for x in (a2, b2, a4, b4, lb, rb, v)]
    d = [f64(x) for x in (a2, b2, a4, b4, lb, rb, v)]
    cases = [
        (lambda a2, b2, a4, b4, lb, rb, v: a2.matmul(b2), d[0] @ d[1]),
        (lambda a2, b2, a4, b4, lb, rb, v: a4.matmul(b4), d[2] @ d[3]),
        (lambda a2, b2, a4, b4, lb, rb, v: lb.broadcast_matmul(rb), d[4] @ d[5]),
        (lambda a2, b2, a4, b4, lb, rb, v: a4.broadcast_matmul(b2), d[2] @ d[1]),
        (lambda a2, b2, a4, b4, lb, rb, v: lb @ rb, d[4] @ d[5]),
        (lambda a2, b2, a4, b4, lb, rb, v: a2.mv(v), d[0] @ d[6]),
        (lambda a2, b2, a4, b4, lb, rb, v: v.dot(v), d[6] @ d[6]),
        (lambda a2, b2, a4, b4, lb, rb, v: a4.norm(), np.sqrt((d[2] ** 2).sum())),
    ]
    for outs in eager_and_jit_many([f for f, _ in cases], *args):
        for got, (_, want) in zip(outs, cases):
            assert got.dtype.np == dtype and got.shape == np.shape(want)
            assert_close(got, want, dtype, scale=5)


def test_f16_matmul(rng):
    a, b = rand(rng, (3, 5), F16), rand(rng, (5, 4), F16)
    got = T(a).matmul(T(b))
    assert got.dtype.np == F16
    assert_close(got, f64(a) @ f64(b), F16, scale=5)


def test_int_dot():
    a = T(np.array([1, 2, 3], np.int32))
    assert int(np.asarray(a.dot(a).jax)) == 14 and a.dot(a).dtype.np == I32


def test_grads(rng):
    a, b = jnp.asarray(rand(rng, (2, 3, 4), F32)), jnp.asarray(rand(rng, (4, 5), F32))
    v = jnp.asarray(rand(rng, (4,), F32))
    m = jnp.asarray(rand(rng, (3, 4), F32))
    cases = [
        (lambda a, b, v, m: a.broadcast_matmul(b).sum_all(), lambda a, b, v, m: jnp.sum(a @ b)),
        (lambda a, b, v, m: m.mv(v).sqr().sum_all(), lambda a, b, v, m: jnp.sum((m @ v) ** 2)),
        (lambda a, b, v, m: v.dot(v), lambda a, b, v, m: v @ v),
        (lambda a, b, v, m: a.norm(), lambda a, b, v, m: jnp.sqrt(jnp.sum(a * a))),
        (lambda a, b, v, m: m.matmul(Tensor._wrap(m.jax.T)).sum_all(), lambda a, b, v, m: jnp.sum(m @ m.T)),
    ]

    @jax.jit
    def grads(*xs):
        W = Tensor._wrap
        got = [jax.grad(lambda *z, f=f: f(*map(W, z)).jax, argnums=(0, 1, 2, 3))(*xs) for f, _ in cases]
        want = [jax.grad(r, argnums=(0, 1, 2, 3))(*xs) for _, r in cases]
        return got, want

    got, want = grads(a, b, v, m)
    for gs, ws in zip(got, want):
        for g, w in zip(gs, ws):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_candle_parity(rng):
    a, b = rand(rng, (2, 3, 4), F32), rand(rng, (2, 4, 5), F32)
    assert_close(T(a).matmul(T(b)), from_candle(to_candle(a).matmul(to_candle(b))), F32)
    # candle-pyo3 0.4.2 has no bf16 matmul on CPU (UnsupportedDTypeForOp(BF16, "matmul")); candlejax does
    a, b = rand(rng, (3, 4), BF16), rand(rng, (4, 2), BF16)
    with pytest.raises(ValueError, match="UnsupportedDTypeForOp"):
        to_candle(a).matmul(to_candle(b))
    assert_close(T(a).matmul(T(b)), f64(a) @ f64(b), BF16)
    # Candle only compares the product of the batch dims: (2, 3) x (3, 2) batches multiply there
    a, b = rand(rng, (2, 3, 2, 4), F32), rand(rng, (3, 2, 4, 2), F32)
    assert tuple(to_candle(a).matmul(to_candle(b)).shape) == (2, 3, 2, 2)
    with pytest.raises(errors.ShapeMismatchBinaryOp, match="batch dims must be equal"):
        T(a).matmul(T(b))


def test_errors():
    f = lambda x, y: x.matmul(y)  # noqa: E731
    m22, v2 = T(np.ones((2, 2), np.float32)), T(np.ones(2, np.float32))
    raises(errors.ShapeMismatchBinaryOp, f, m22, v2, match=r"shape mismatch in matmul, lhs: \[2, 2\], rhs: \[2\]")
    raises(errors.ShapeMismatchBinaryOp, f, T(np.ones((2, 2, 2), np.float32)), m22, match="same rank")
    raises(errors.ShapeMismatchBinaryOp, f, m22, T(np.ones((3, 2), np.float32)), match="inner dimensions")
    raises(errors.ShapeMismatchBinaryOp, f, T(np.ones((2, 2, 3), np.float32)), T(np.ones((3, 3, 2), np.float32)),
           match="broadcast_matmul")  # fmt: skip
    u = T(np.ones((2, 2), np.uint32))
    raises(errors.UnsupportedDTypeForOp, f, u, u, match="unsupported dtype U32 for op matmul")
    raises(errors.DTypeMismatchBinaryOp, f, m22, T(np.ones((2, 2), F16)), match="dtype mismatch in matmul, lhs: F32")
    g = lambda x, y: x.broadcast_matmul(y)  # noqa: E731
    raises(errors.Error, g, m22, T(np.ones((3, 2), np.float32)),
           match=r"different inner dimensions in broadcast matmul \[2, 2\] \[3, 2\]")  # fmt: skip
    raises(errors.Error, g, m22, v2, match="only 2d matrixes are supported")
    raises(errors.ShapeMismatchBinaryOp, g, T(np.ones((2, 2, 2), np.float32)), T(np.ones((3, 2, 2), np.float32)),
           match="broadcast_matmul")  # fmt: skip
    raises(errors.ShapeMismatchBinaryOp, lambda x, y: x.dot(y), v2, m22, match="shape mismatch in dot")
    raises(errors.ShapeMismatchBinaryOp, lambda x, y: x.dot(y), v2, T(np.ones(3, np.float32)), match="dot")
    raises(errors.ShapeMismatchBinaryOp, lambda x, y: x.mv(y), m22, T(np.ones(3, np.float32)), match="in mv")
    raises(errors.UnsupportedDTypeForOp, lambda x: x.norm(), T(np.ones(3, np.int32)), match="for op norm")
    raises(errors.UnsupportedDTypeForOp, lambda x, y: x.mv(y), T(np.ones((2, 2), np.int32)), T(np.ones(2, np.int32)))
    with pytest.raises(TypeError):
        m22 @ 2
    assert U32 is not None


def test_empty_matmul():
    a, b = T(np.ones((2, 0), np.float32)), T(np.ones((0, 3), np.float32))
    np.testing.assert_array_equal(f64(a.matmul(b)), np.zeros((2, 3)))
