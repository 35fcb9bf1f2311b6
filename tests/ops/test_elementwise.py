"""Elementwise ops vs numpy float64 (eager and under jax.jit), gradients vs jax.numpy, candle-pyo3
parity, dtype preservation, and a bad-input test for each error."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from candlejax import Tensor, errors

from helpers import (  # isort: skip
    BF16, F16, F32, FLOATS, I32, INTS, U8, U32, T, assert_close, eager_and_jit, eager_and_jit_many, f64, from_candle,
    rand, raises, to_candle,
)  # fmt: skip

candle = pytest.importorskip("candle")

SQ2PI = math.sqrt(2 / math.pi)


def _round_away(x):
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


# name -> (float64 reference, domain (lo, hi) or None, dtypes-allowed: "float" | "signed" | "all")
UNARY = {
    "neg": (np.negative, None, "signed"),
    "recip": (np.reciprocal, (0.5, 3), "float"),
    "exp": (np.exp, None, "float"),
    "log": (np.log, (0.1, 5), "float"),
    "sin": (np.sin, None, "float"),
    "cos": (np.cos, None, "float"),
    "tanh": (np.tanh, None, "float"),
    "abs": (np.abs, None, "all"),
    "sqr": (np.square, None, "all"),
    "sqrt": (np.sqrt, (0.01, 5), "float"),
    "gelu": (lambda x: 0.5 * x * (1 + np.tanh(SQ2PI * (x + 0.044715 * x**3))), None, "float"),
    "gelu_erf": (lambda x: 0.5 * x * (1 + special.erf(x / math.sqrt(2))), None, "float"),
    "erf": (special.erf, None, "float"),
    "relu": (lambda x: np.maximum(x, 0), None, "all"),
    "silu": (lambda x: x / (1 + np.exp(-x)), None, "float"),
    "sigmoid": (lambda x: 1 / (1 + np.exp(-x)), None, "float"),
    "ceil": (np.ceil, None, "all"),
    "floor": (np.floor, None, "all"),
    "round": (_round_away, None, "all"),
    "sign": (np.sign, None, "all"),
}
# reference jnp expressions for gradients (independent of the implementation)
JNP = {
    "neg": lambda x: -x,
    "recip": lambda x: 1 / x,
    "exp": jnp.exp,
    "log": jnp.log,
    "sin": jnp.sin,
    "cos": jnp.cos,
    "tanh": jnp.tanh,
    "abs": jnp.abs,
    "sqr": lambda x: x * x,
    "sqrt": jnp.sqrt,
    "gelu": lambda x: 0.5 * x * (1 + jnp.tanh(SQ2PI * (x + 0.044715 * x**3))),
    "gelu_erf": lambda x: 0.5 * x * (1 + jax.scipy.special.erf(x / math.sqrt(2))),
    "erf": jax.scipy.special.erf,
    "relu": lambda x: jnp.where(x > 0, x, 0.0),
    "silu": lambda x: x / (1 + jnp.exp(-x)),
    "sigmoid": lambda x: 1 / (1 + jnp.exp(-x)),
    "ceil": jnp.ceil,
    "floor": jnp.floor,
    "round": jnp.round,
    "sign": jnp.sign,
}


def _ok_on(kind: str, dt: np.dtype) -> bool:
    if dt.kind == "f" or dt == BF16:
        return True
    return kind == "all" or (kind == "signed" and dt.kind == "i")


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_unary_float(rng, dtype):
    for shape in [(3, 4)]:
        xs, wants, fs = [], [], []
        for name, (ref, dom, _) in UNARY.items():
            lo, hi = dom or (-3, 3)
            x = rand(rng, shape, dtype, lo, hi)
            if name == "round":  # exercise ties: Rust rounds half away from zero
                x.flat[:4] = np.array([0.5, -0.5, 2.5, -1.5]).astype(dtype)
            xs.append(T(x))
            wants.append(ref(f64(x)))
            i = len(fs)
            fs.append(lambda ts, i=i, n=name: getattr(ts[i], n)())
        for outs in eager_and_jit_many(fs, xs):
            for name, got, want in zip(UNARY, outs, wants):
                assert got.dtype.np == dtype and got.shape == shape, name
                assert_close(got, want, dtype, scale=max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("dtype", INTS, ids=str)
def test_unary_int(rng, dtype):
    x = rand(rng, (3, 4), dtype)
    ok = [n for n, (_, _, kind) in UNARY.items() if _ok_on(kind, dtype)]
    for n, (_, _, kind) in UNARY.items():
        if not _ok_on(kind, dtype):
            raises(errors.UnsupportedDTypeForOp, lambda t, n=n: getattr(t, n)(), T(x),
                   match=f"unsupported dtype {dtype.name[0].upper()}")  # fmt: skip
    for outs in eager_and_jit_many([lambda t, n=n: getattr(t, n)() for n in ok], T(x)):
        for n, got in zip(ok, outs):
            want = UNARY[n][0](x.astype(np.int64)).astype(dtype)  # sqr wraps like Rust release builds
            assert got.dtype.np == dtype
            np.testing.assert_array_equal(np.asarray(got.jax), want)


def test_unary_int_error_message():
    with pytest.raises(errors.UnsupportedDTypeForOp, match=r"unsupported dtype U32 for op exp \(convert with"):
        T(np.arange(3, dtype=np.uint32)).exp()
    with pytest.raises(errors.UnsupportedDTypeForOp, match="unsupported dtype U8 for op neg"):
        T(np.arange(3, dtype=np.uint8)).neg()


def test_unary_grad(rng):
    names = [n for n in UNARY if n not in ("ceil", "floor", "round", "sign")]
    xs = [jnp.asarray(rand(rng, (2, 5), F32, *(UNARY[n][1] or (-3, 3)))) for n in names]

    @jax.jit
    def grads(xs):
        got = [jax.grad(lambda a, n=n: getattr(Tensor._wrap(a), n)().sum_all().jax)(x) for n, x in zip(names, xs)]
        want = [jax.grad(lambda a, n=n: jnp.sum(JNP[n](a)))(x) for n, x in zip(names, xs)]
        return got, want

    got, want = grads(xs)
    for n, g, w in zip(names, got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=n)
    # eagerly (op by op under the grad trace) for one op
    g = jax.grad(lambda a: Tensor._wrap(a).silu().sum_all().jax)(xs[0])
    np.testing.assert_allclose(g, jax.grad(lambda a: jnp.sum(JNP["silu"](a)))(xs[0]), rtol=1e-5, atol=1e-6)


def test_grad_through_tensor_pytree(rng):
    t = T(rand(rng, (3, 4), F32))
    g = jax.grad(lambda t: (t.exp() * t).sum_all().jax)(t)
    assert isinstance(g, Tensor)
    x = f64(t)
    np.testing.assert_allclose(f64(g), np.exp(x) * (1 + x), rtol=1e-5, atol=1e-6)
    g = jax.jit(jax.grad(lambda t: t.tanh().sqr().sum_all().jax))(t)
    np.testing.assert_allclose(f64(g), 2 * np.tanh(x) * (1 - np.tanh(x) ** 2), rtol=1e-5, atol=1e-6)


def test_sign_of_nan_is_zero():
    """Candle's sign is (v > 0) - (v < 0): 0 for NaN, as PyTorch's ``torch.sign`` (jnp.sign gave NaN);
    -0.0 gives +0.0."""
    x = np.array([np.nan, -0.0, 0.0, -3.0, 2.0, -np.inf], np.float32)
    for dt in (F32, BF16, F16):
        got = f64(T(x.astype(dt)).sign())
        np.testing.assert_array_equal(got, [0, 0, 0, -1, 1, -1])
        assert not np.signbit(got[:3]).any()


def test_rounding_grads_are_zero(rng):
    x = jnp.asarray(rand(rng, (5,), F32))
    for name in ("ceil", "floor", "round", "sign"):
        g = jax.grad(lambda a, n=name: getattr(Tensor._wrap(a), n)().sum_all().jax)(x)
        np.testing.assert_array_equal(g, 0)


# --- parameterised unary ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_affine_elu_powf_round_to_clamp(rng, dtype):
    x = rand(rng, (3, 4), dtype)
    xd = f64(x)
    t = T(x)
    sc = 4.0
    cases = [
        (lambda t: t.affine(2.0, -1.5), 2 * xd - 1.5),
        (lambda t: t.elu(0.7), np.where(xd > 0, xd, 0.7 * np.expm1(xd))),
        (lambda t: t.abs().powf(1.7), np.abs(xd) ** 1.7),
        (lambda t: t.powf(2.0), xd**2.0),  # negative base, integral exponent: exact
        (lambda t: t.powf(3), xd**3),
        (lambda t: t.clamp(-1.0, 0.5), np.clip(xd, -1, 0.5)),
        (lambda t: t.clamp(T(np.full(x.shape, -1, dtype)), T(np.full(x.shape, 1, dtype))), np.clip(xd, -1, 1)),
    ]
    for outs in eager_and_jit_many([f for f, _ in cases], t):
        for got, (_, want) in zip(outs, cases):
            assert got.dtype.np == dtype
            assert_close(got, want, dtype, scale=sc)
    if dtype == F32:
        x2 = np.array([1.2345, -1.2355, 0.125, 2.5, -2.5, 1234.5678], np.float32)
        for got in eager_and_jit(lambda t: t.round_to(2), T(x2)):
            np.testing.assert_allclose(f64(got), [1.23, -1.24, 0.13, 2.5, -2.5, 1234.57], rtol=1e-6)
        for got in eager_and_jit(lambda t: t.round_to(-2), T(x2)):
            np.testing.assert_allclose(f64(got), [0, 0, 0, 0, 0, 1200], atol=1e-6)
    else:
        for got in eager_and_jit(lambda t: t.round_to(1), t):
            assert got.dtype.np == dtype
            np.testing.assert_allclose(f64(got), _round_away(xd * 10) / 10, atol=0.02)


def test_parameterised_on_ints(rng):
    x = rand(rng, (3, 4), I32)
    t = T(x)
    np.testing.assert_array_equal(np.asarray(t.affine(3, -2).jax), 3 * x - 2)
    np.testing.assert_array_equal(np.asarray(t.affine(2.0, 1.0).jax), 2 * x + 1)  # integral floats are fine
    np.testing.assert_array_equal(np.asarray(t.clamp(-2, 3).jax), np.clip(x, -2, 3))
    assert t.clamp(-2, 3).dtype.np == I32
    raises(errors.Error, lambda t: t.affine(0.5, 0.0), t, match="not representable in the integer dtype I32")
    for f in (lambda t: t.elu(1.0), lambda t: t.powf(2.0), lambda t: t.round_to(1)):
        raises(errors.UnsupportedDTypeForOp, f, t)


def test_parameterised_grads(rng):
    x = jnp.asarray(rand(rng, (6,), F32))
    cases = [
        (lambda t: t.affine(3.0, 1.0), lambda a: 3 * a + 1),
        (lambda t: t.elu(0.5), lambda a: jnp.where(a > 0, a, 0.5 * (jnp.exp(a) - 1))),
        (lambda t: t.abs().powf(1.5), lambda a: jnp.abs(a) ** 1.5),
        (lambda t: t.clamp(-1.0, 1.0), lambda a: jnp.clip(a, -1, 1)),
    ]

    @jax.jit
    def grads(x):
        got = [jax.grad(lambda a, f=f: f(Tensor._wrap(a)).sum_all().jax)(x) for f, _ in cases]
        return got, [jax.grad(lambda a, r=r: jnp.sum(r(a)))(x) for _, r in cases]

    for g, w in zip(*grads(x)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_clamp_errors():
    t = T(np.zeros((2, 3), np.float32))
    raises(errors.ShapeMismatchBinaryOp, lambda t: t.clamp(T(np.zeros(3, np.float32)), 1.0), t, match="clamp")
    raises(errors.DTypeMismatchBinaryOp, lambda t: t.clamp(T(np.zeros((2, 3), np.float16)), 1.0), t)


# --- binary -----------------------------------------------------------------------------------
def _ref_div(a, b, dt):
    if dt.kind in "iu":
        return np.trunc(a / b).astype(np.int64)  # Rust: truncation toward zero
    return a / b


BIN_REF = {
    "add": lambda a, b, dt: a + b,
    "sub": lambda a, b, dt: a - b,
    "mul": lambda a, b, dt: a * b,
    "div": _ref_div,
    "maximum": lambda a, b, dt: np.maximum(a, b),
    "minimum": lambda a, b, dt: np.minimum(a, b),
}


def _ints_to(want, dt):
    return want.astype(np.int64).astype(dt) if dt.kind in "iu" else want


@pytest.mark.parametrize("dtype", [F32, BF16, F16, U8, U32, I32], ids=str)
def test_binary_same_shape_and_scalar(rng, dtype):
    x, y = rand(rng, (3, 4), dtype), rand(rng, (3, 4), dtype)
    y = np.where(f64(y) == 0, 1, y).astype(dtype)  # div needs non-zero
    if dtype.kind == "f" or dtype == BF16:
        y = np.where(np.abs(f64(y)) < 0.3, 0.5, y).astype(dtype)
    if dtype.kind == "u":  # unsigned: keep x >= y so that sub does not wrap
        x, y = np.maximum(x, y), np.maximum(np.minimum(x, y), 1).astype(dtype)
    xd, yd = f64(x), f64(y)
    names = list(BIN_REF)
    fs = [lambda a, b, n=n: getattr(a, n)(b) for n in names] + [lambda a, b, n=n: getattr(a, n)(1) for n in names]
    wants = [_ints_to(BIN_REF[n](xd, yd, dtype), dtype) for n in names]
    wants += [_ints_to(BIN_REF[n](xd, np.float64(1), dtype), dtype) for n in names]
    for outs in eager_and_jit_many(fs, T(x), T(y)):
        for got, want in zip(outs, wants):
            assert got.dtype.np == dtype and got.shape == (3, 4)
            assert_close(got, want, dtype, scale=10)


@pytest.mark.parametrize("name", [*BIN_REF, "pow"])
def test_broadcast_binary(rng, name):
    ref = BIN_REF.get(name, lambda a, b, dt: a**b)
    x = rand(rng, (2, 1, 4), F32, 0.5, 2)
    y = rand(rng, (3, 1), F32, 0.5, 2)
    want = ref(f64(x), f64(y), F32)
    for got in eager_and_jit(lambda a, b: getattr(a, "broadcast_" + name)(b), T(x), T(y)):
        assert got.shape == (2, 3, 4)
        assert_close(got, want, F32, scale=10)
    raises(
        errors.ShapeMismatchBinaryOp,
        lambda a, b: getattr(a, "broadcast_" + name)(b),
        T(x),
        T(rand(rng, (3, 2), F32)),
        match=f"shape mismatch in broadcast_{name}, lhs: \\[2, 1, 4\\], rhs: \\[3, 2\\]",
    )


def test_pow(rng):
    x = rand(rng, (3, 4), F32, 0.1, 3)
    y = rand(rng, (3, 4), F32, -2, 2)
    for got in eager_and_jit(lambda a, b: a.pow(b), T(x), T(y)):
        assert_close(got, f64(x) ** f64(y), F32, scale=10)
    # negative base with integral exponent is exact (Candle's exp(y * ln x) gives NaN)
    got = T(np.array([-2.0, -3.0], np.float32)).pow(T(np.array([2.0, 3.0], np.float32)))
    np.testing.assert_allclose(f64(got), [4.0, -27.0])
    raises(errors.UnsupportedDTypeForOp, lambda a, b: a.pow(b), T(np.ones(3, np.int32)), T(np.ones(3, np.int32)))
    gx, gy = jax.grad(lambda a, b: a.pow(b).sum_all().jax, argnums=(0, 1))(T(x), T(y))
    wx, wy = jax.grad(lambda a, b: jnp.sum(a**b), argnums=(0, 1))(jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(f64(gx), wx, rtol=1e-5)
    np.testing.assert_allclose(f64(gy), wy, rtol=1e-5)


def test_integer_division_truncates_toward_zero():
    a = T(np.array([-7, 7, -7, 7, 0], np.int32))
    b = T(np.array([2, -2, -2, 2, 3], np.int32))
    for got in eager_and_jit(lambda a, b: a.div(b), a, b):
        np.testing.assert_array_equal(np.asarray(got.jax), [-3, -3, 3, 3, 0])
    np.testing.assert_array_equal(np.asarray((a / 2).jax), [-3, 3, -3, 3, 0])
    np.testing.assert_array_equal(np.asarray((-7 / b).jax), [-3, 3, 3, -3, -2])


def test_binary_grads(rng):
    x = jnp.asarray(rand(rng, (3, 4), F32, 0.5, 2))
    y = jnp.asarray(rand(rng, (4,), F32, 0.5, 2))
    for name, ref in [("add", jnp.add), ("sub", jnp.subtract), ("mul", jnp.multiply), ("div", jnp.divide)]:
        got = jax.grad(lambda a, b, n=name: getattr(Tensor._wrap(a), "broadcast_" + n)(Tensor._wrap(b)).sum_all().jax,
                       argnums=(0, 1))(x, y)  # fmt: skip
        want = jax.grad(lambda a, b, r=ref: jnp.sum(r(a, b)), argnums=(0, 1))(x, y)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_binary_errors():
    a = T(np.zeros((2, 3), np.float32))
    msg = r"shape mismatch in add, lhs: \[2, 3\], rhs: \[3\].*broadcast_add"
    with pytest.raises(errors.ShapeMismatchBinaryOp, match=msg):
        a.add(T(np.zeros(3, np.float32)))
    raises(errors.ShapeMismatchBinaryOp, lambda a, b: a.mul(b), a, T(np.zeros(3, np.float32)), match="broadcast_mul")
    raises(errors.ShapeMismatchBinaryOp, lambda a, b: a.maximum(b), a, T(np.zeros((3, 2), np.float32)))
    raises(errors.DTypeMismatchBinaryOp, lambda a, b: a.add(b), a, T(np.zeros((2, 3), np.float16)),
           match="dtype mismatch in add, lhs: F32, rhs: F16")  # fmt: skip
    raises(errors.DTypeMismatchBinaryOp, lambda a, b: a + b, a, T(np.zeros((3,), BF16)),
           match="dtype mismatch in add, lhs: F32, rhs: BF16")  # fmt: skip
    raises(errors.ShapeMismatchBinaryOp, lambda a, b: a + b, a, T(np.zeros((2,), np.float32)))
    with pytest.raises(errors.Error, match="expected a Tensor or a scalar"):
        a.add("x")


# --- scalars and operators --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F32, BF16, U32], ids=str)
def test_operators(rng, dtype):
    x = rand(rng, (3, 4), dtype)
    y = rand(rng, (4,), dtype)
    if dtype.kind in "iu":
        y = np.maximum(y, 1).astype(dtype)
        x = (x + 20).astype(dtype) if dtype.kind == "u" else x
    else:
        y = np.where(np.abs(f64(y)) < 0.3, 0.5, y).astype(dtype)
    xd, yd = f64(x), f64(y)
    div = (lambda a, b: np.trunc(a / b)) if dtype.kind in "iu" else np.divide
    cases = [
        (lambda a, b: a + b, xd + yd),
        (lambda a, b: a - b, xd - yd),
        (lambda a, b: a * b, xd * yd),
        (lambda a, b: a / b, div(xd, yd)),
        (lambda a, b: a + 2, xd + 2),
        (lambda a, b: 2 + a, xd + 2),
        (lambda a, b: a - 3, xd - 3),
        (lambda a, b: 30 - a, 30 - xd),
        (lambda a, b: a * 3.0, xd * 3),
        (lambda a, b: 3 * a, xd * 3),
        (lambda a, b: a / 2, div(xd, 2)),
        (lambda a, b: 40 / b, div(40, yd)),
        (lambda a, b: np.float32(2) * a if dtype.kind == "f" else a * np.int64(2), xd * 2),
    ]
    if dtype.kind != "u":
        cases.append((lambda a, b: -a, -xd))
    if dtype.kind == "f" or dtype == BF16:
        cases += [(lambda a, b: abs(a) ** 2.0, xd**2), (lambda a, b: abs(a) ** abs(b), np.abs(xd) ** np.abs(yd))]
    for outs in eager_and_jit_many([f for f, _ in cases], T(x), T(y)):
        for got, (_, want) in zip(outs, cases):
            assert got.dtype.np == dtype, (got.dtype, dtype)
            assert_close(got, np.broadcast_to(_ints_to(want, dtype), got.shape), dtype, scale=40)


def test_scalar_rules():
    u = T(np.array([1, 2, 3], np.uint32))
    with pytest.raises(errors.Error, match=r"scalar 0.5 is not representable in the integer dtype U32.*to_dtype"):
        u * 0.5
    with pytest.raises(errors.Error, match="out of range"):
        T(np.array([1, 2], np.uint8)) + 300
    with pytest.raises(errors.Error, match="out of range"):
        u - (-1)
    with pytest.raises(errors.Error, match="not representable"):
        u.lt(2.5)
    np.testing.assert_array_equal(np.asarray((u * 2.0).jax), [2, 4, 6])
    np.testing.assert_array_equal(np.asarray((u + 4_000_000_000).jax), [4_000_000_001, 4_000_000_002, 4_000_000_003])
    b = T(np.array([1.0, 2.0], BF16))
    assert (b * 0.1).dtype.np == BF16 and (0.1 + b).dtype.np == BF16 and (b / 3).dtype.np == BF16
    # a python number that became a weak jax scalar under jit is still a scalar
    out = jax.jit(lambda t, s: t * s)(b, 0.5)
    assert out.dtype.np == BF16
    np.testing.assert_allclose(f64(out), [0.5, 1.0])
    with pytest.raises(errors.Error, match="float scalar"):
        jax.jit(lambda t, s: t * s)(u, 0.5)
    # numpy arrays are not silently mixed in
    with pytest.raises(errors.Error, match="wrap it first"):
        b + np.ones(2, np.float32)
    with pytest.raises(errors.Error, match="wrap it first"):
        np.ones(2, np.float32) + b
    with pytest.raises(TypeError):
        b + "x"


CMP_REF = {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater,
           "ge": np.greater_equal}  # fmt: skip


@pytest.mark.parametrize("dtype", [F32, BF16, I32], ids=str)
def test_comparisons(rng, dtype):
    x = rand(rng, (3, 4), dtype)
    y = rand(rng, (3, 4), dtype)
    y[0] = x[0]  # ties
    xd, yd = f64(x), f64(y)
    fs, wants = [], []
    for name, ref in CMP_REF.items():
        fs += [
            lambda a, b, n=name: getattr(a, n)(b),
            lambda a, b, n=name: a.cmp(b, n),
            lambda a, b, n=name: getattr(a, n)(1),
            lambda a, b, n=name: getattr(a, "broadcast_" + n)(b),
        ]
        wants += [ref(xd, yd), ref(xd, yd), ref(xd, 1), ref(xd, yd)]
    for outs in eager_and_jit_many(fs, T(x), T(y)):
        for got, want in zip(outs, wants):
            assert got.dtype.np == U8
            np.testing.assert_array_equal(np.asarray(got.jax), want.astype(np.uint8))
    t, r = T(x), T(y[0])
    pairs = [(t == r, xd == yd[0]), (t != r, xd != yd[0]), (t < r, xd < yd[0]), (t <= r, xd <= yd[0]),
             (t > r, xd > yd[0]), (t >= r, xd >= yd[0]), (t == 2, xd == 2), (2 < t, 2 < xd)]  # fmt: skip
    for got, want in pairs:
        assert got.dtype.np == U8
        np.testing.assert_array_equal(np.asarray(got.jax), want.astype(np.uint8))


def test_comparison_errors_and_hash():
    a = T(np.zeros((2, 3), np.float32))
    raises(errors.ShapeMismatchBinaryOp, lambda a, b: a.lt(b), a, T(np.zeros(3, np.float32)),
           match=r"shape mismatch in cmp, lhs: \[2, 3\], rhs: \[3\].*broadcast_lt")  # fmt: skip
    raises(errors.DTypeMismatchBinaryOp, lambda a, b: a.eq(b), a, T(np.zeros((2, 3), np.int32)), match="in cmp")
    raises(errors.ShapeMismatchBinaryOp, lambda a, b: a.broadcast_gt(b), a, T(np.zeros(2, np.float32)),
           match="broadcast_gt")  # fmt: skip
    with pytest.raises(errors.Error, match="unknown comparison"):
        a.cmp(a, "almost")
    assert a.cmp(a, "Ge").dtype.np == U8 and a.cmp(a, ">=").dtype.np == U8
    d = {a: 1}
    assert d[a] == 1 and hash(a) == id(a)
    assert (a == None) is False  # noqa: E711 - falls back to identity for non-tensor operands


# --- candle-pyo3 parity -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_candle_unary_parity(rng, dtype):
    x = rand(rng, (3, 4), dtype, 0.1, 3)
    c = to_candle(x)
    t = T(x)
    for name in ("abs", "cos", "sin", "exp", "log", "sqr", "sqrt", "recip"):
        assert_close(getattr(t, name)(), from_candle(getattr(c, name)()), dtype)
    assert_close(t.powf(1.5), from_candle(c.powf(1.5)), dtype)
    y = rand(rng, (3, 4), dtype, -3, 3)
    c, t = to_candle(y), T(y)
    # candle.functional.gelu is the erf GELU; Tensor.gelu in Rust is the tanh approximation
    assert_close(t.gelu_erf(), from_candle(candle.functional.gelu(c)), dtype)
    assert_close(t.relu(), from_candle(candle.functional.relu(c)), dtype)
    assert_close(t.silu(), from_candle(candle.functional.silu(c)), dtype)
    assert_close(t.tanh(), from_candle(candle.functional.tanh(c)), dtype)


def test_candle_binary_parity(rng):
    x, y = rand(rng, (2, 1, 4), F32), rand(rng, (3, 1), F32)
    cx, cy, tx, ty = to_candle(x), to_candle(y), T(x), T(y)
    for name in ("add", "sub", "mul", "div"):
        assert_close(getattr(tx, "broadcast_" + name)(ty), from_candle(getattr(cx, "broadcast_" + name)(cy)), F32)
    assert_close(tx + ty, from_candle(cx + cy), F32)
    assert_close(tx * 2.5 - 1, from_candle(cx * 2.5 - 1), F32)
    assert_close(2 + tx, from_candle(2 + cx), F32)
    z = rand(rng, (2, 1, 4), F32)
    for op in ("__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__"):
        np.testing.assert_array_equal(f64(getattr(tx, op)(T(z))), from_candle(getattr(cx, op)(to_candle(z))))
        np.testing.assert_array_equal(f64(getattr(tx, op)(0.0)), from_candle(getattr(cx, op)(0.0)))
    # candle-pyo3 truncates a float scalar on an integer tensor (u32 * 0.5 -> zeros); candlejax raises
    u = np.array([1, 2, 3], np.uint32)
    np.testing.assert_array_equal(from_candle(to_candle(u) * 0.5), [0, 0, 0])
    with pytest.raises(errors.Error):
        T(u) * 0.5


# --- dtype preservation -------------------------------------------------------------------------
def test_bf16_in_bf16_out(rng):
    x = T(rand(rng, (3, 4), BF16, 0.1, 2))
    y = T(rand(rng, (3, 4), BF16, 0.1, 2))
    outs = [getattr(x, n)() for n in UNARY] + [
        x.affine(2.0, 1.0), x.elu(1.0), x.powf(2.0), x.round_to(1), x.clamp(0.5, 1.0),
        x.add(y), x.sub(y), x.mul(y), x.div(y), x.maximum(y), x.minimum(y), x.pow(y),
        x.broadcast_add(y), x.broadcast_pow(y), x + 1, 1 - x, x * y, x / 2, 2 / x, -x, x**2, x ** y, abs(x),
    ]  # fmt: skip
    for o in outs:
        assert o.dtype.np == BF16
    for o in (x.eq(y), x < y, x.broadcast_ge(y), x.cmp(y, "ne")):
        assert o.dtype.np == U8


def test_empty_tensors():
    e = T(np.zeros((0, 3), np.float32))
    for o in (e.exp(), e + 1, e.add(e), e.gelu(), e.affine(2, 1), e.lt(e)):
        assert o.shape == (0, 3)


def test_f16_and_u32_ops_keep_dtype(rng):
    h = T(rand(rng, (4,), F16))
    assert h.exp().dtype.np == F16 and (h * 2).dtype.np == F16
    u = T(rand(rng, (4,), U32))
    assert (u + 1).dtype.np == U32 and u.abs().dtype.np == U32 and u.sign().dtype.np == U32


def test_relu_gradient_at_zero_matches_torch():
    import torch

    x = np.array([-1.0, 0.0, 2.0], np.float32)
    g = jax.grad(lambda a: Tensor._wrap(a).relu().sum_all().jax)(jnp.asarray(x))
    tx = torch.tensor(x, requires_grad=True)
    torch.relu(tx).sum().backward()
    np.testing.assert_array_equal(np.asarray(g), tx.grad.numpy())
    assert Tensor.new(np.array([-3, 0, 4], np.int32)).relu().to_vec1() == [0, 0, 4]


def test_half_precision_scalar_arithmetic_rounds_once(rng):
    """f16 / bf16 with a Python scalar: computed in f32 and rounded once to the tensor's dtype
    (PyTorch's "opmath" for division), so a scalar beyond the half range does not overflow first
    (f16 / 1e5 was a division by inf: zeros)."""
    x = np.concatenate([rng.standard_normal(64) * 100, [60000.0, 1.0, -3.0, 7.0]]).astype(np.float32)
    ops = {"+": lambda a, s: a + s, "-": lambda a, s: a - s, "*": lambda a, s: a * s, "/": lambda a, s: a / s,
           "r-": lambda a, s: s - a, "r/": lambda a, s: s / a}  # fmt: skip
    for dt, np_dt in (("f16", np.float16), ("bf16", jnp.bfloat16)):
        t = Tensor(x).to_dtype(dt)
        x32 = x.astype(np_dt).astype(np.float32)
        for s in (1e5, 0.1, 3.0, 1e-3):
            for name, f in ops.items():
                ours = f(t, s)
                assert ours.dtype.as_str() == dt, (dt, name)
                with np.errstate(divide="ignore", over="ignore"):
                    want = f(x32, np.float32(s)).astype(np_dt).astype(np.float32)
                np.testing.assert_array_equal(np.asarray(ours.to_dtype("f32")), want, err_msg=f"{dt} {name} {s}")
    got = (Tensor(np.array([60000.0, 1.0], np.float32)).to_dtype("f16") / 1e5).to_dtype("f32").values()
    np.testing.assert_allclose(got, [0.6001, 1.0014e-05], rtol=1e-3)
    c = candle.Tensor([60000.0, 1.0]).to_dtype("f16") / 1e5  # Candle: x * (1 / s), also finite
    np.testing.assert_allclose(got, c.to_dtype("f32").values(), rtol=2e-3)


def test_half_precision_activations_are_computed_in_f32():
    """gelu, gelu_erf, silu and sigmoid on f16 / bf16 are evaluated in f32 and rounded once, as
    PyTorch does (Candle's gelu_erf evaluates in f64): in half precision ``1 + erf(x / √2)`` cancels,
    so bf16 ``gelu_erf(-3.5)`` was -0.0 (Candle and PyTorch: -0.000813) and f16 ``sigmoid(-12)`` 0."""
    from candlejax.nn import ops

    x = np.array([-3.5, -3.0, -2.0, -0.3, 0.5, 1.7, 4.0], np.float32)
    refs = {
        "gelu": (x, lambda v: 0.5 * v * (1 + np.tanh(SQ2PI * (v + 0.044715 * v**3)))),
        "gelu_erf": (x, lambda v: 0.5 * v * (1 + special.erf(v / math.sqrt(2)))),
        "silu": (np.append(x, -12.0), lambda v: v / (1 + np.exp(-v))),
        "sigmoid": (np.append(x, -12.0), lambda v: 1 / (1 + np.exp(-v))),
    }
    for dt, np_dt in (("f16", np.float16), ("bf16", jnp.bfloat16)):
        for name, (xs, ref) in refs.items():
            t = Tensor(xs.astype(np.float32)).to_dtype(dt)
            want = ref(xs.astype(np_dt).astype(np.float64))
            for got in (getattr(t, name)(), getattr(ops, name)(t), jax.jit(lambda a, n=name: getattr(a, n)())(t)):
                assert got.dtype.as_str() == dt
                rtol = 2**-10 if dt == "f16" else 2**-7  # one unit in the last place
                np.testing.assert_allclose(np.asarray(got.to_dtype("f32")), want, rtol=rtol, atol=0,
                                           err_msg=f"{dt} {name}")  # fmt: skip
    for dt, rtol in (("f16", 2**-10), ("bf16", 2**-7)):
        c = candle.functional.gelu(candle.Tensor(x.tolist()).to_dtype(dt))  # Candle: f64 inside, one rounding
        np.testing.assert_allclose(np.asarray(Tensor(x).to_dtype(dt).gelu_erf().to_dtype("f32")),
                                   np.asarray(c.to_dtype("f32").values(), np.float32), rtol=rtol, atol=0)


def test_in_f32_keeps_the_wrapped_docstring():
    # help(gelu_erf_jnp) showed nothing: the in_f32 wrapper dropped the function's docstring
    from candlejax.tensor.elementwise import gelu_erf_jnp

    assert gelu_erf_jnp.__doc__ and gelu_erf_jnp.__doc__.startswith("Exact GELU")
