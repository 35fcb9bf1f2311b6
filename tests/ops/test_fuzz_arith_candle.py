"""Differential fuzz of the arithmetic ops against candle-pyo3 (the ``candle`` 0.4.2 wheel) and
numpy float64: unary ops, binary / broadcast ops, scalar operators, comparisons, where_cond,
reductions, matmul and every to_dtype pair, over small random shapes (size-0 and size-1 dims
included) and every dtype each op accepts. Value, dtype and shape must agree; integer results
exactly (wrapping), float results at the dtype's tolerance. Fixed seeds; the documented
differences (docs/differences/elementwise-reduce.md) are left out of the comparison."""

from __future__ import annotations

import math
import operator

import ml_dtypes
import numpy as np
import pytest

from candlejax import DType, Tensor

candle = pytest.importorskip("candle")

NAMES = ["u8", "u32", "i64", "f16", "bf16", "f32", "f64"]
INTS = ["u8", "u32", "i64"]
FLOATS = ["f16", "bf16", "f32", "f64"]
CD = {n: getattr(candle, n) for n in NAMES}
NP = {"u8": np.uint8, "u32": np.uint32, "i64": np.int64, "f16": np.float16, "bf16": ml_dtypes.bfloat16,
      "f32": np.float32, "f64": np.float64}  # fmt: skip
# (rtol, atol) between two implementations of the same op in that dtype
TOL = {"f16": (2e-3, 1e-3), "bf16": (1.6e-2, 1e-2), "f32": (2e-6, 1e-7), "f64": (1e-13, 1e-15)}
SHAPES = [(0,), (1,), (2, 3), (3, 0, 2)]


pytestmark = pytest.mark.usefixtures("x64")  # i64 / f64 tensors need JAX's 64-bit mode (tests/conftest.py)


def pair(vals: list, shape: tuple, dt: str) -> tuple:
    """The same tensor in candle-pyo3 and candlejax: ints go through i64, floats through f64."""
    if not vals:
        return candle.zeros(shape, dtype=CD[dt]), Tensor.zeros(shape, dt)
    if dt in INTS:
        c = candle.Tensor([int(v) for v in vals]).to_dtype(candle.i64)
        j = Tensor([int(v) for v in vals], dtype="i64")
    else:
        c = candle.Tensor([float(v) for v in vals]).to_dtype(candle.f64)
        j = Tensor(np.array(vals, dtype=np.float32).astype(np.float64), dtype="f64")
    c, j = c.to_dtype(CD[dt]), j.to_dtype(dt)
    if shape == ():
        return c.squeeze(0), j.squeeze(0)
    return c.reshape(shape), j.reshape(shape)


def c_np(t) -> np.ndarray:
    """A candle-pyo3 tensor as float64 (floats) or int64 (ints) numpy."""
    dt = str(t.dtype).lower()
    t = t.to_dtype(candle.f64) if dt in FLOATS else t.to_dtype(candle.i64)
    return np.array(t.flatten_all().values(), dtype=np.float64 if dt in FLOATS else np.int64).reshape(tuple(t.shape))


def j_np(t: Tensor) -> np.ndarray:
    dt = t.dtype.as_str() if hasattr(t.dtype, "as_str") else str(t.dtype)
    return np.asarray(t.to_dtype("f64" if dt in FLOATS else "i64").numpy())


def check(c, j: Tensor, scale: float = 1.0) -> None:
    """Same dtype, shape and values (NaN == NaN; ints exact)."""
    assert isinstance(j, Tensor), type(j)
    dt = str(c.dtype).lower()
    assert str(j.dtype) == dt, (j.dtype, dt)
    assert tuple(j.shape) == tuple(c.shape), (j.shape, c.shape)
    a, b = c_np(c), j_np(j)
    if dt in INTS:
        np.testing.assert_array_equal(b, a)
    else:
        rtol, atol = TOL[dt]
        np.testing.assert_allclose(b, a, rtol=rtol * scale, atol=atol * scale, equal_nan=True)


def rvals(rng: np.random.Generator, n: int, dt: str, lo: float = -4, hi: float = 4) -> list:
    if dt == "u8":
        return rng.integers(0, 256, n).tolist()
    if dt == "u32":
        return rng.choice([0, 1, 2, 3, 7, 100, 65536, 2**31, 2**32 - 1], n).tolist()
    if dt == "i64":
        return rng.choice([0, 1, -1, 2, -3, 7, -100, 2**40, -(2**40), 2**63 - 1, -(2**63)], n).tolist()
    v = rng.uniform(lo, hi, n)
    if rng.random() < 0.3:  # exact binary fractions: ties for round, equal elements for arg-reductions
        v = np.round(v * 4) / 4
    return v.astype(np.float32).tolist()


def with_specials(rng: np.random.Generator, v: list) -> list:
    v = list(v)
    for _ in range(max(1, len(v) // 3) if v else 0):
        v[rng.integers(len(v))] = [0.0, -0.0, math.nan, math.inf, -math.inf][rng.integers(5)]
    return v


# --- to_dtype -----------------------------------------------------------------------------------
FLOAT_VALS = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1.5, 2.5, -2.5, 255.0, 255.75, 256.0, 300.5, -300.5, 65504.0,
              70000.0, 4294967296.0, 5e9, -5e9, 1e20, -1e20, math.nan, math.inf, -math.inf, 0.1, 9.2e18, -9.3e18,
              16777216.0, 2049.0, 65519.0, 65520.0, 2.0**63, -(2.0**63)]  # fmt: skip
INT_VALS = [0, 1, 2, 127, 128, 255, 256, 300, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 5, -1, -2,
            -255, -256, -300, -(2**31), -(2**63), 2**63 - 1, 16777217, 2**53 + 1, 2049, 65519, 65520,
            123456789012, 2**24 + 2**16 + 1]  # fmt: skip


@pytest.mark.parametrize("src", NAMES)
def test_to_dtype_every_pair(src):
    """Rust ``as`` semantics for every pair: float -> int truncates and saturates (NaN -> 0),
    int -> int wraps, int -> float rounds to nearest (through f32 for the half types, as
    Candle's cpu backend)."""
    vals = INT_VALS if src in INTS else FLOAT_VALS
    c, j = pair(vals, (len(vals),), src)
    check(c, j)
    for dst in NAMES:
        check(c.to_dtype(CD[dst]), j.to_dtype(dst), scale=0)


# --- unary --------------------------------------------------------------------------------------
UNARY = ["abs", "cos", "sin", "exp", "log", "sqr", "sqrt", "recip"]


@pytest.mark.parametrize("dt", FLOATS)
def test_unary_vs_candle(dt):
    rng = np.random.default_rng(100 + FLOATS.index(dt))
    for shape in SHAPES:
        n = math.prod(shape)
        for name in UNARY:
            lo = 0.05 if name in ("log", "sqrt", "recip") else -4
            c, j = pair(rvals(rng, n, dt, lo, 4), shape, dt)
            check(getattr(c, name)(), getattr(j, name)())
        c, j = pair(rvals(rng, n, dt, 0.05, 4), shape, dt)
        for e in (2.0, 0.5, -1.3, 3.0):
            check(c.powf(e), j.powf(e))
    specials = [0.0, -0.0, math.nan, math.inf, -math.inf, 1.0, -1.0, 0.5, -0.5, 2.5, -2.5, 1e30, -1e30, 65504.0]
    c, j = pair(specials, (len(specials),), dt)
    for name in UNARY:
        check(getattr(c, name)(), getattr(j, name)())
    for e in (2.0, 0.5, -1.0, 3.0, 0.0, -0.5):
        check(c.powf(e), j.powf(e))
    # candle.functional: gelu is the erf GELU; relu of NaN differs (documented), so no NaN here
    c, j = pair([v for v in specials if not math.isnan(v)] + rvals(rng, 8, dt), (21,), dt)
    check(candle.functional.relu(c), j.relu())
    check(candle.functional.tanh(c), j.tanh())
    check(candle.functional.silu(c), j.silu(), scale=2)
    if dt != "f64":  # candle-pyo3's f64 erf is only good to ~1e-8
        check(candle.functional.gelu(c), j.gelu_erf(), scale=2)


@pytest.mark.parametrize("dt", INTS)
def test_integer_unary_vs_rust(dt):
    """abs / sqr / relu / sign / ceil / floor / round on integers, as Rust's wrapping integer ops."""
    vals = {"u8": [0, 1, 2, 7, 100, 200, 255], "u32": [0, 1, 7, 65536, 2**31, 2**32 - 1],
            "i64": [0, 1, -1, -7, 2**40, -(2**40), 2**63 - 1, -(2**63)]}[dt]  # fmt: skip
    t = Tensor(vals, dtype="i64").to_dtype(dt)
    bits = np.dtype(NP[dt]).itemsize * 8

    def wrap(x: int) -> int:
        x %= 2**bits
        return x - 2**bits if dt == "i64" and x >= 2**63 else x

    want = {
        "abs": [wrap(abs(v)) for v in vals],
        "sqr": [wrap(v * v) for v in vals],
        "relu": [max(v, 0) for v in vals],
        "sign": [(v > 0) - (v < 0) for v in vals],
        "ceil": vals, "floor": vals, "round": vals,
    }  # fmt: skip
    for name, w in want.items():
        got = getattr(t, name)()
        assert got.dtype == DType.parse(dt), (name, got.dtype)
        assert got.to_dtype("i64").values() == w, name


# --- binary / broadcast / comparisons -----------------------------------------------------------
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
       "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
       ">=": operator.ge}  # fmt: skip
BROADCAST = {"broadcast_add": "+", "broadcast_sub": "-", "broadcast_mul": "*", "broadcast_div": "/"}
PAIRS = [((2, 3), (2, 3)), ((2, 1), (1, 3)), ((0, 3), (1, 3)), ((), (2,))]


def _operands(rng, sa, sb, dt, divisor):
    va, vb = rvals(rng, math.prod(sa), dt), rvals(rng, math.prod(sb), dt)
    if dt in FLOATS and rng.random() < 0.5:
        va, vb = with_specials(rng, va), with_specials(rng, vb)
    if divisor and dt in INTS:  # Rust panics on division by zero and on MIN / -1
        vb = [v if v not in (0, -1) else 3 for v in vb]
    return pair(va, sa, dt), pair(vb, sb, dt)


@pytest.mark.parametrize("dt", NAMES)
def test_binary_ops_vs_candle(dt):
    """The Python operators (which broadcast) and broadcast_* methods: wrapping integer arithmetic,
    truncating integer division, IEEE floats with NaN / inf / -0.0, U8 comparisons."""
    rng = np.random.default_rng(200 + NAMES.index(dt))
    for sa, sb in [*PAIRS, ((2, 1, 3), (4, 1))]:
        for name, f in OPS.items():
            (c1, j1), (c2, j2) = _operands(rng, sa, sb, dt, name == "/")
            check(f(c1, c2), f(j1, j2))
        if sa and sb:
            for name, sym in BROADCAST.items():
                (c1, j1), (c2, j2) = _operands(rng, sa, sb, dt, sym == "/")
                check(getattr(c1, name)(c2), getattr(j1, name)(j2))


@pytest.mark.parametrize("dt", NAMES)
def test_named_binary_vs_numpy(dt):
    """maximum / minimum / eq ... lt (equal shapes) and their broadcast_* forms vs numpy; NaN
    propagates through maximum / minimum (documented)."""
    rng = np.random.default_rng(300 + NAMES.index(dt))
    ufuncs = {"maximum": np.maximum, "minimum": np.minimum, "eq": np.equal, "ne": np.not_equal, "lt": np.less,
              "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal}  # fmt: skip
    for sa, sb in PAIRS:
        va, vb = rvals(rng, math.prod(sa), dt), rvals(rng, math.prod(sb), dt)
        if dt in FLOATS:
            va, vb = with_specials(rng, va), with_specials(rng, vb)
        (_, ja), (_, jb) = pair(va, sa, dt), pair(vb, sb, dt)
        a, b = np.asarray(ja.numpy()), np.asarray(jb.numpy())
        for name, uf in ufuncs.items():
            keep = name in ("maximum", "minimum")
            want = uf(a, b).astype(a.dtype if keep else np.uint8)
            for meth in ([name] if sa == sb else []) + ["broadcast_" + name]:
                got = getattr(ja, meth)(jb)
                assert got.dtype == (DType.parse(dt) if keep else DType.U8), (meth, got.dtype)
                np.testing.assert_array_equal(np.asarray(got.numpy()), want, err_msg=meth)


SCALARS = [2, 0.1, -1.5, 0, 65504.0, math.nan, math.inf, -0.0, 1 / 3]


@pytest.mark.parametrize("dt", FLOATS)
def test_float_scalar_ops_vs_candle(dt):
    """``t + s``, ``s * t``, ``t / s``, ``t < s`` ... on float tensors (1e5 on f16 left out: candlejax
    computes in f32 where Candle overflows the rounded scalar, documented)."""
    rng = np.random.default_rng(400 + FLOATS.index(dt))
    ops = dict(OPS, **{"r+": lambda a, s: s + a, "r*": lambda a, s: s * a})
    for shape in [(5,), ()]:
        v = rvals(rng, math.prod(shape), dt)
        if len(v) >= 5:
            v[:5] = [0.0, math.nan, math.inf, -0.0, 0.1]
        c, j = pair(v, shape, dt)
        for s in SCALARS:
            for f in ops.values():
                check(f(c, s), f(j, s), scale=1.01)


@pytest.mark.parametrize("dt", INTS)
def test_int_scalar_ops_vs_candle(dt):
    """Integer tensors with integral scalars Candle applies exactly (wrapping ``+``, ``*``, comparisons)."""
    vals = {"u8": [0, 1, 2, 3, 100, 200, 254, 255], "u32": [0, 1, 2, 3, 2**31, 2**32 - 1, 2**32 - 2, 7],
            "i64": [0, 1, -1, 2, -3, 2**63 - 1, -(2**63), 10]}[dt]  # fmt: skip
    c, j = pair(vals, (len(vals),), dt)
    ops = {k: OPS[k] for k in ("+", "*", "==", "!=", "<", "<=", ">", ">=")}
    ops.update({"r+": lambda a, s: s + a, "r*": lambda a, s: s * a})
    for s in [0, 1, 2, 3, 7, 200, 2.0]:
        for f in ops.values():
            check(f(c, s), f(j, s))


@pytest.mark.parametrize("mask_dt", ["u8", "u32", "i64"])
def test_where_cond_vs_candle(mask_dt):
    rng = np.random.default_rng(500 + INTS.index(mask_dt))
    for dt in NAMES:
        for shape in [(4,), (2, 3), (1, 1)]:
            n = math.prod(shape)
            m = rng.choice([0, 1, 2], n) if mask_dt != "i64" else rng.choice([0, -1, 2], n)
            (cm, jm), (ca, ja), (cb, jb) = (pair(m.tolist(), shape, mask_dt), pair(rvals(rng, n, dt), shape, dt),
                                            pair(rvals(rng, n, dt), shape, dt))  # fmt: skip
            check(cm.where_cond(ca, cb), jm.where_cond(ja, jb))


# --- reductions ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", NAMES)
def test_reductions_vs_candle(dt):
    """sum_keepdim / sum_all / mean_all / max_keepdim / min_keepdim / argmax_keepdim / argmin_keepdim
    and the non-keepdim forms (Candle's ``max(d)`` = ``max_keepdim(d).squeeze(d)``), ties included;
    without NaN (NaN propagation is documented, see test_nan_reductions_vs_numpy)."""
    rng = np.random.default_rng(600 + NAMES.index(dt))
    for shape in [(0, 3), [(2, 3), (1, 1, 1), (4, 1), (2, 3, 4)][NAMES.index(dt) % 4]]:
        for trial in range(2):
            n = math.prod(shape)
            v = rvals(rng, n, dt)
            if trial and n >= 2:
                v[1] = v[0]
            if trial and dt in FLOATS and n:
                v[-1] = [math.inf, -math.inf, -0.0][rng.integers(3)]
            c, j = pair(v, shape, dt)
            rtol = 4  # bf16 / f16 sums accumulate in f32 here, in the half dtype in Candle
            check(c.sum_all(), j.sum_all(), scale=rtol)
            if dt in FLOATS:  # integer mean is documented as an error (Candle returns 0)
                check(c.mean_all(), j.mean_all(), scale=rtol)
            for d in range(len(shape)):
                if d % 2:
                    check(c.sum_keepdim(d), j.sum_keepdim(d), scale=rtol)
                else:
                    check(c.sum_keepdim(d).squeeze(d), j.sum(d), scale=rtol)
                if n == 0:  # Candle: `empty tensor for reduce` for any empty tensor (documented)
                    continue
                for r in ("max", "min", "argmax", "argmin"):
                    want = getattr(c, r + "_keepdim")(d)
                    if (d + len(r)) % 2:
                        check(want, getattr(j, r + "_keepdim")(d), scale=0)
                    else:
                        check(want.squeeze(d), getattr(j, r)(d), scale=0)


@pytest.mark.parametrize("dt", ["f16", "bf16", "f32", "f64"])
def test_nan_reductions_vs_numpy(dt):
    """max / min / argmax / argmin over a dim with NaN: NaN propagates and its first index wins
    (numpy / PyTorch; documented difference from Candle, which skips a NaN unless it comes first)."""
    a = np.array([[1.0, np.nan, 3.0, np.nan], [np.nan, -1.0, 2.0, 0.5], [4.0, 5.0, -np.inf, np.inf]])
    t = Tensor(a, dtype="f64").to_dtype(dt)
    for name, f in [("max", np.max), ("min", np.min), ("argmax", np.argmax), ("argmin", np.argmin)]:
        for d in (0, 1):
            got = getattr(t, name)(d)
            np.testing.assert_array_equal(j_np(got), f(a, axis=d), err_msg=f"{name}({d})")
            assert got.dtype == (DType.U32 if name.startswith("arg") else DType.parse(dt))
    assert math.isnan(t.max_all().to_dtype("f64").item()) and math.isnan(t.min_all().to_dtype("f64").item())


# --- matmul -------------------------------------------------------------------------------------
MM = [((2, 3), (3, 4)), ((2, 0), (0, 3)), ((4, 2, 3), (4, 3, 5))]


@pytest.mark.parametrize("dt", ["f16", "f32", "f64"])  # candle-pyo3 0.4.2 has no bf16 matmul on CPU
def test_matmul_vs_candle(dt):
    """Batched matmul with contiguous and transposed (non-contiguous) operands; broadcast_matmul agrees."""
    rng = np.random.default_rng(700 + FLOATS.index(dt))
    for sa, sb in MM:
        for ta in (False, True):
            for tb in (False, True):
                a_shape, b_shape = list(sa), list(sb)
                if ta:
                    a_shape[-1], a_shape[-2] = a_shape[-2], a_shape[-1]
                if tb:
                    b_shape[-1], b_shape[-2] = b_shape[-2], b_shape[-1]
                ca, ja = pair(rvals(rng, math.prod(a_shape), dt, -2, 2), tuple(a_shape), dt)
                cb, jb = pair(rvals(rng, math.prod(b_shape), dt, -2, 2), tuple(b_shape), dt)
                if ta:
                    ca, ja = ca.transpose(len(sa) - 1, len(sa) - 2), ja.transpose(-1, -2)
                if tb:
                    cb, jb = cb.transpose(len(sb) - 1, len(sb) - 2), jb.transpose(-1, -2)
                want = ca.matmul(cb)
                check(want, ja.matmul(jb), scale=10)
                check(want, ja.broadcast_matmul(jb), scale=10)


@pytest.mark.parametrize("dt", FLOATS)
def test_broadcast_matmul_vs_numpy(dt):
    rng = np.random.default_rng(800 + FLOATS.index(dt))
    for sa, sb in [((2, 1, 3, 4), (5, 4, 2)), ((3, 4), (2, 4, 5)), ((2, 3, 4), (4, 5)), ((2, 1, 2, 3), (1, 4, 3, 2))]:
        ja = Tensor(rng.uniform(-2, 2, sa), dtype="f64").to_dtype(dt)
        jb = Tensor(rng.uniform(-2, 2, sb), dtype="f64").to_dtype(dt)
        want = j_np(ja) @ j_np(jb)
        rtol, atol = TOL[dt]
        for got in (ja.broadcast_matmul(jb), ja @ jb):
            assert got.dtype == DType.parse(dt) and tuple(got.shape) == want.shape
            np.testing.assert_allclose(j_np(got), want, rtol=rtol * 10, atol=atol * 10)
