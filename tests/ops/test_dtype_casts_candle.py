"""``to_dtype`` for the dtypes candle-pyo3 0.4.2 lacks (i16, i32, f8e4m3) against the rules of Candle's
cpu backend (``cpu_backend/mod.rs``: Rust ``as`` casts, ``half`` and ``float8``'s ``from_f32``), computed
here exactly with Python ints and Fractions; and f64 -> bf16 / f16 / f32 rounding against candle-pyo3.
(tests/ops/test_fuzz_arith_candle.py covers every pair of u8 u32 i64 bf16 f16 f32 f64.)"""

from __future__ import annotations

import math
import operator
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from candlejax import DType, Tensor

pytestmark = pytest.mark.usefixtures("x64")  # i64 / f64 tensors need JAX's 64-bit mode (tests/conftest.py)

INT_RANGE = {"u8": (0, 2**8 - 1), "u32": (0, 2**32 - 1), "i16": (-(2**15), 2**15 - 1),
             "i32": (-(2**31), 2**31 - 1), "i64": (-(2**63), 2**63 - 1)}  # fmt: skip
INTS = list(INT_RANGE)
HALVES = ["bf16", "f16", "f32"]  # float targets Candle reaches through f32 from an integer


def rust_float_to_int(x: float, dt: str) -> int:
    """Rust ``x as iN``: truncation toward zero, saturation at the bounds, NaN -> 0."""
    lo, hi = INT_RANGE[dt]
    if math.isnan(x):
        return 0
    if math.isinf(x):
        return hi if x > 0 else lo
    return min(max(math.trunc(x), lo), hi)


def rust_int_to_int(v: int, dt: str) -> int:
    """Rust ``v as iN`` between integers: two's complement wrapping."""
    lo, hi = INT_RANGE[dt]
    v %= hi - lo + 1
    return v - (hi - lo + 1) if v > hi else v


def round_to_f32(v: int) -> float:
    """Rust ``v as f32`` for an integer: the nearest f32, ties to even (exact, no f64 step)."""
    if v == 0:
        return 0.0
    e = abs(v).bit_length() - 24  # keep 24 significant bits
    if e <= 0:
        return float(np.float32(v))
    q, r = divmod(abs(v), 2**e)
    if 2 * r > 2**e or (2 * r == 2**e and q % 2):
        q += 1
    return math.copysign(float(np.float32(q * 2**e)), v)


# --- f8e4m3 (float8's e4m3fn: no inf, one NaN, largest finite 448) --------------------------------
def _f8_value(bits: int) -> float:
    e, m = (bits >> 3) & 0xF, bits & 7
    v = (m / 8) * 2.0**-6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
    return -v if bits & 0x80 else v


F8_POS = [(b, _f8_value(b)) for b in range(0x7F)]  # every non-negative finite value with its bits


def rust_to_f8(x: float) -> float:
    """float8's ``F8E4M3::from_f64`` (``SatFinite``): round to nearest, ties to the even bit pattern;
    beyond the largest finite value, +-inf included, saturate to +-448; NaN stays NaN."""
    if math.isnan(x):
        return math.nan
    a = Fraction(abs(x)) if math.isfinite(x) else Fraction(10**9)
    best = min(F8_POS, key=lambda bv: (abs(Fraction(bv[1]) - a), bv[0] & 1))
    return math.copysign(best[1], x)


def values(t: Tensor) -> list:
    return t.to_dtype("f64" if t.dtype.is_float() else "i64").values()


def same(got: list, want: list) -> bool:
    return all((math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
               if isinstance(b, float) else a == b for a, b in zip(got, want, strict=True))  # fmt: skip


FLOAT_VALS = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 0.999, -0.999, 1.5, 2.5, -2.5, 255.75, 256.0, 300.5, -300.5,
              32767.9, 32768.0, -32768.5, -32769.0, 65504.0, 70000.0, 2.0**31, -(2.0**31) - 4096, 4294967296.0,
              5e9, -5e9, 1e20, -1e20, 2.0**63, -(2.0**63), math.nan, math.inf, -math.inf,
              448.0, 449.0, 464.0, 465.0, 480.0, -600.0, 2.0**-10, 2.0**-9, 1.0625, 1.1875, 0.0029296875]  # fmt: skip
INT_VALS = [0, 1, 2, 127, 128, 255, 256, 300, 448, 449, 465, 1000, 32767, 32768, 65535, 65536, 2**31 - 1, 2**31,
            2**32 - 1, 2**32, -1, -2, -255, -300, -449, -1000, -32768, -32769, -(2**31), -(2**31) - 1,
            16777217, 2**24 + 3, 2**31 - 65, 2**63 - 1, -(2**63), 2**40 + 2**16 + 1]  # fmt: skip


@pytest.mark.parametrize("src", ["f64", "f32", "f16", "bf16", "f8e4m3"])
def test_float_to_every_dtype(src):
    """A float source to every integer dtype (truncate, saturate, NaN -> 0) and to f8e4m3 (saturating)."""
    t = Tensor(FLOAT_VALS, dtype="f64").to_dtype(src)
    src_vals = values(t)
    for dst in INTS:
        assert values(t.to_dtype(dst)) == [rust_float_to_int(x, dst) for x in src_vals], (src, dst)
    assert same(values(t.to_dtype("f8e4m3")), [rust_to_f8(x) for x in src_vals]), src


@pytest.mark.parametrize("src", INTS)
def test_int_to_every_dtype(src):
    """An integer source to every integer dtype (wrapping), to f32 / f16 / bf16 (through f32, as
    Candle's ``v as f32``) and to f8e4m3 (through f32, saturating)."""
    src_vals = [rust_int_to_int(v, src) for v in INT_VALS]
    t = Tensor(src_vals, dtype="i64").to_dtype(src)
    assert values(t) == src_vals
    for dst in INTS:
        assert values(t.to_dtype(dst)) == [rust_int_to_int(v, dst) for v in src_vals], (src, dst)
    f32 = [round_to_f32(v) for v in src_vals]
    for dst in HALVES:
        npd = DType.parse(dst).np
        with np.errstate(over="ignore"):  # f16 overflows to inf, as half's from_f32
            want = [float(np.float32(x).astype(npd)) for x in f32]
        assert same(values(t.to_dtype(dst)), want), (src, dst)
    assert values(t.to_dtype("f64")) == [float(v) for v in src_vals]
    assert same(values(t.to_dtype("f8e4m3")), [rust_to_f8(x) for x in f32]), src


def test_every_f8e4m3_value_to_every_dtype():
    """All 256 f8e4m3 bit patterns widen exactly (NaN stays NaN) and narrow to integers as Rust's ``as``."""
    bits = np.arange(256, dtype=np.uint8)
    t = Tensor(bits.view(ml_dtypes.float8_e4m3fn))
    assert t.dtype == DType.F8E4M3
    want = [math.nan if b & 0x7F == 0x7F else _f8_value(b) for b in range(256)]
    for dst in ["f64", "f32", "f16", "bf16"]:
        assert same(values(t.to_dtype(dst)), want), dst
    for dst in INTS:
        assert values(t.to_dtype(dst)) == [rust_float_to_int(x, dst) for x in want], dst


def test_f8e4m3_saturates_like_candle_under_jit():
    """The saturating cast is the same traced (``jax.jit``) as eager."""
    import jax

    x = Tensor([500.0, -1e30, math.inf, -math.inf, math.nan, 3.0])
    got = jax.jit(lambda a: a.to_dtype(DType.F8E4M3).to_dtype(DType.F32))(x)
    assert same(got.values(), [448.0, -448.0, 448.0, -448.0, math.nan, 3.0])


candle = pytest.importorskip("candle")


def test_f64_to_narrow_floats_vs_candle():
    """f64 values that are not f32 values: bf16 / f16 / f32 rounding, ties, overflow to inf, as candle-pyo3
    (values in the f32 subnormal range are left out: XLA on CPU flushes them, documented)."""
    vals = [1 + 2**-8 + 2**-30, 1 + 2**-11 + 2**-40, 1 + 2**-24 + 2**-50, 1 + 2**-24, 65519.99999, 65520.0,
            3.4028235677973366e38, 3.5e38, 1e300, -1e300, 2.0**-25, 2.0**-24 * 1.5, 6e-8, -(2**-25) * 1.0001,
            1.0000001, -3.14159265358979, 1e-30]  # fmt: skip
    c = candle.Tensor(vals).to_dtype(candle.f64)
    j = Tensor(vals, dtype="f64")
    for dst in ["bf16", "f16", "f32"]:
        want = c.to_dtype(getattr(candle, dst)).to_dtype(candle.f64).values()
        assert same(values(j.to_dtype(dst)), want), dst


def test_f8e4m3_creation_saturates():
    """Values put into an F8E4M3 tensor at creation round as ``F8E4M3::from_f64`` does: +-448 beyond the
    range (Candle's ``Tensor::full(F8E4M3::from_f32(1000.), ..)``), from lists, numpy / jax arrays, fills."""
    import jax.numpy as jnp

    vals = [1000.0, -1e9, math.inf, -math.inf, math.nan, 3.0, 465.0, -0.0]
    want = [rust_to_f8(v) for v in vals]
    f8 = DType.F8E4M3
    for data in (vals, np.array(vals, np.float32), np.array(vals), jnp.asarray(vals, jnp.float32)):
        assert same(values(Tensor(data, dtype=f8)), want), type(data)
    assert same(values(Tensor(np.array([1000, 7, 2**31], np.uint32), dtype=f8)), [448.0, 7.0, 448.0])
    assert same(values(Tensor([-1000, 7], dtype=f8)), [-448.0, 7.0])
    for v in (1000.0, -math.inf, 2**40):
        assert same(values(Tensor.full(v, (2,), dtype=f8)), [rust_to_f8(v)] * 2), v
        assert same(values(Tensor.zeros((2,), f8).full_like(v)), [rust_to_f8(v)] * 2), v
    assert same(values(Tensor.arange_step(0.0, 1000.0, 200.0, dtype=f8)), [0.0, 192.0, 384.0, 448.0, 448.0])


@pytest.mark.parametrize("dt", ["i16", "i32"])
def test_i16_i32_arithmetic_wraps_like_rust(dt):
    """The dtypes the fuzz against candle-pyo3 cannot reach: wrapping ``+ - *``, ``sqr`` and ``affine``,
    truncating ``/``, U8 comparisons, as Rust's release-build integer ops in Candle's cpu backend."""
    lo, hi = INT_RANGE[dt]
    xs = [0, 1, -1, 7, -7, 300, -300, hi, lo, hi - 1, lo + 1, 12345]
    ys = [3, -2, 5, -3, 2, 300, 7, 2, 3, -5, 9, -12345]
    a, b = Tensor(xs, dtype="i64").to_dtype(dt), Tensor(ys, dtype="i64").to_dtype(dt)
    w = lambda v: rust_int_to_int(v, dt)  # noqa: E731
    assert values(a + b) == [w(x + y) for x, y in zip(xs, ys, strict=True)]
    assert values(a - b) == [w(x - y) for x, y in zip(xs, ys, strict=True)]
    assert values(a * b) == [w(x * y) for x, y in zip(xs, ys, strict=True)]
    trunc_div = [abs(x) // abs(y) * (1 if (x < 0) == (y < 0) else -1) for x, y in zip(xs, ys, strict=True)]
    assert values(a / b) == [w(q) for q in trunc_div]
    assert values(a.sqr()) == [w(x * x) for x in xs]
    assert values(a.affine(3.0, -2.0)) == [w(3 * x - 2) for x in xs]
    for got, f in [(a < b, lambda x, y: x < y), (a >= b, lambda x, y: x >= y), (a.eq(b), lambda x, y: x == y)]:
        assert got.dtype == DType.U8 and values(got) == [int(f(x, y)) for x, y in zip(xs, ys, strict=True)]
    for r in (a + b, a * b, a.sqr(), a.affine(3.0, -2.0)):
        assert r.dtype == DType.parse(dt)


def test_mixed_dtypes_refuse_naming_both():
    """Candle never promotes: a binary op between two dtypes raises, naming both."""
    from candlejax import errors

    dts = ["u8", "i16", "i32", "f16", "f8e4m3"]
    for x in dts:
        for y in dts:
            if x == y:
                continue
            a, b = Tensor.ones((2,), x), Tensor.ones((2,), y)
            for f in (operator.add, Tensor.mul, operator.lt, Tensor.maximum):
                with pytest.raises(errors.DTypeMismatchBinaryOp) as e:
                    f(a, b)
                assert x.upper() in str(e.value) and y.upper() in str(e.value), str(e.value)
