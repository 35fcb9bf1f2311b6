"""Eager elementwise ops on a new CPU shape run through a shape bucket instead of compiling for the
exact shape; their results are bit-identical to the exact-shape executable (and to the jitted path)."""

from __future__ import annotations

import itertools
import logging
import math
import os
import subprocess
import sys
import textwrap
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from candlejax import DType, Tensor, _dispatch
from candlejax.tensor import convert, elementwise, indexing, reduce

_shapes = itertools.count(1000)


def _new_shape() -> tuple[int, int]:
    return (next(_shapes), 3)  # a shape no other test used


UNARY = ["exp", "log", "tanh", "sqrt", "gelu", "gelu_erf", "silu", "relu", "sigmoid", "cos", "sin", "abs", "neg",
         "recip", "sqr", "round", "floor", "ceil", "erf"]  # fmt: skip


@pytest.mark.parametrize("name", UNARY)
def test_unary_bucketed_matches_exact(name, rng):
    shape = _new_shape()
    a = np.abs(rng.standard_normal(shape)).astype(np.float32) + 0.1
    x = Tensor.new(a)
    got = np.asarray(getattr(x, name)())  # first call: bucketed
    ref = np.asarray(jax.jit(lambda t: getattr(t, name)())(x))  # the traced path, exact shape
    np.testing.assert_array_equal(got, ref)
    for _ in range(_dispatch.EXACT_AFTER):  # later calls switch to the exact executable
        np.testing.assert_array_equal(np.asarray(getattr(x, name)()), ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32, np.uint8])
def test_binary_scalar_and_compare_bucketed(dtype, rng):
    shape = _new_shape()
    a = (rng.standard_normal(shape) * 10).astype(dtype)
    b = (rng.standard_normal(shape) * 10 + 1).astype(dtype)
    x, y = Tensor.new(a), Tensor.new(b)
    cases = [lambda s, t: s + t, lambda s, t: s.mul(t), lambda s, t: s.maximum(t), lambda s, t: s.ge(t),
             lambda s, t: s - 3, lambda s, t: 2 * s, lambda s, t: s.clamp(0, 5), lambda s, t: s.to_dtype(DType.F32),
             lambda s, t: s.ge(t).where_cond(s, t)]  # fmt: skip
    for f in cases:
        got = np.asarray(f(x, y))
        ref = np.asarray(jax.jit(f)(x, y))
        assert got.dtype == ref.dtype and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)


def test_broadcasting_operator_bucketed(rng):
    shape = _new_shape()
    a = rng.standard_normal(shape).astype(np.float32)
    row = rng.standard_normal((1, 3)).astype(np.float32)
    got = np.asarray(Tensor.new(a) + Tensor.new(row))
    np.testing.assert_array_equal(got, a + row)


def test_bucket_sizes():
    assert _dispatch.bucket_size(1) == _dispatch.bucket_size(_dispatch.MIN_BUCKET) == _dispatch.MIN_BUCKET
    for n in [4097, 5000, 6000, 7000, 8191, 10**5, 10**6 + 1]:
        b = _dispatch.bucket_size(n)
        assert n <= b <= n * 1.25 + 1


class _Compiles(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("Compiling "):
            self.names.append(msg)


def test_new_shapes_do_not_compile_until_repeated():
    h = _Compiles()
    log = logging.getLogger("jax")
    log.addHandler(h)
    try:
        with jax.log_compiles(True):
            a = Tensor.new(np.ones((5,), np.float32))
            np.asarray(a + a)  # the bucket's executable exists
            h.names.clear()
            for n in range(2000, 2010):
                b = Tensor.new(np.ones((n,), np.float32))
                np.testing.assert_array_equal(np.asarray(b + b), 2.0)
            assert h.names == []  # ten new shapes, no compile
            for _ in range(_dispatch.EXACT_AFTER + 3):
                np.testing.assert_array_equal(np.asarray(b + b), 2.0)
            assert len(h.names) == 1, h.names
    finally:
        log.removeHandler(h)


def test_repeated_shape_takes_the_cached_fast_path():
    k = elementwise._KERNELS["mul"][0]
    a = Tensor.new(np.ones((3, 77), np.float32))._a
    for _ in range(_dispatch.EXACT_AFTER + 2):
        k.jitted(a, a)
    if hasattr(k.jitted, "_cache_size"):  # JAX's C++ jit object: the shape has its own cache entry
        assert k.jitted._cache_size() >= 1


_ROWWISE = [  # trailing axes: bucketed; the others: the exact executable
    ("max_keepdim(2)", lambda t: t.max_keepdim(2)),
    ("max(-1)", lambda t: t.max(-1)),
    ("min(-1)", lambda t: t.min(-1)),
    ("min(1)", lambda t: t.min(1)),
    ("argmax(2)", lambda t: t.argmax(2)),
    ("argmin_keepdim(-1)", lambda t: t.argmin_keepdim(-1)),
    ("argmax(0)", lambda t: t.argmax(0)),
    ("cumsum(2)", lambda t: t.cumsum(2)),
    ("cumsum(1)", lambda t: t.cumsum(1)),
]


_ROWWISE_CASES = [(n, f, dt) for n, f in _ROWWISE for dt in (np.float32, np.int32)]


@pytest.mark.parametrize("name,f,dtype", _ROWWISE_CASES, ids=[f"{n}-{d.__name__}" for n, _, d in _ROWWISE_CASES])
def test_rowwise_bucketed_matches_exact(name, f, dtype, rng):
    """Reductions and transforms along axes on a new shape run on a row bucket: bit-identical to the
    exact-shape executable, for 3-D inputs, negative axes, keepdims and several axes."""
    h, w = _new_shape()
    a = (rng.standard_normal((h % 7 + 2, h, w % 5 + 3)) * 10).astype(dtype)
    x = Tensor.new(a)
    got = np.asarray(f(x))
    ref = np.asarray(jax.jit(f)(x))
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


def test_rowwise_new_row_counts_do_not_compile(jax_compiles):
    x = Tensor.new(np.ones((17, 17), np.float32))  # the 32-row bucket
    np.asarray(x.argmax_keepdim(1))
    np.asarray(x.cumsum(1))
    np.asarray(x.to_dtype(DType.U32).max_keepdim(1))  # float max / min: per shape (signed zeros)
    jax_compiles.clear()
    for rows in range(20, 30):
        a = np.arange(rows * 17, dtype=np.float32).reshape(rows, 17) % 11
        t = Tensor.new(a)
        np.testing.assert_array_equal(np.asarray(t.argmax_keepdim(1)), a.argmax(1)[:, None])
        np.testing.assert_array_equal(np.asarray(t.cumsum(1)), np.cumsum(a, 1))
        u = Tensor.new(a.astype(np.uint32))
        np.testing.assert_array_equal(np.asarray(u.max_keepdim(1)), a.max(1, keepdims=True))
    assert jax_compiles == [], jax_compiles[:3]  # ten new row counts in that bucket, no compile


def test_sums_are_not_row_bucketed():
    """XLA:CPU's sum over rows changes its order with the row count, so sums (and mean, var, softmax)
    compile per shape: their first-call results equal the exact program's bit for bit."""
    a = np.random.default_rng(1).standard_normal((37, 64)).astype(np.float32)
    for f in (lambda t: t.sum_keepdim(-1), lambda t: t.softmax(-1), lambda t: t.mean_keepdim(-1)):
        x = Tensor.new(a)
        np.testing.assert_array_equal(np.asarray(f(x)), np.asarray(jax.jit(f)(x)))


_DEVICE_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from candlejax import Device, Tensor
    from candlejax.tensor import elementwise, reduce

    d0, d1 = jax.devices()
    add, rmax = elementwise._KERNELS["add"][0], reduce._max
    def check(k, args, kw, n):  # n calls on a shape no earlier call used: bucketed, then exact
        ref = k.exact(*args, **kw)
        for i in range(n):
            got = k.jitted(*args, **kw)
            assert got.sharding == ref.sharding and got.committed == ref.committed, (i, got.sharding, ref.sharding,
                                                                                      got.committed, ref.committed)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    for j, (k, kw) in enumerate([(add, {}), (rmax, {"axis": 1, "keepdims": False})]):
        a = jax.numpy.ones((1001 + j, 3), np.float32)  # uncommitted on cpu:0: the result too
        args = (a, a)[: 2 - j]
        check(k, args, kw, 4)
        with jax.default_device(d1):  # uncommitted: runs on the default device, as the exact executable
            b = jax.numpy.ones((1011 + j, 3), np.float32)
            check(k, (b, b)[: 2 - j], kw, 4)
        c = jax.device_put(np.ones((1021 + j, 3), np.float32), d1)  # committed to cpu:1: stays there
        check(k, (c, c)[: 2 - j], kw, 4)
    t = Tensor.new(np.ones((1031, 3), np.float32)).to_device(Device("cpu", 1))
    for i in range(4):
        assert t.exp().device == Device("cpu", 1) and (t + t).max(-1).device == Device("cpu", 1)
    print("OK")
    """
)


def test_bucketed_results_keep_device_and_commitment():
    """A bucketed call places its result as the exact executable would: an uncommitted input gives an
    uncommitted result on JAX's default device, a committed one a result committed to its device."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", _DEVICE_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-4000:]


@pytest.mark.parametrize("mode", ["raise", "warn"])
def test_broadcasting_ignores_jax_rank_promotion(mode, rng):
    """Candle's ``broadcast_add`` (and the operators) broadcast by definition: with JAX's
    ``jax_numpy_rank_promotion`` set to ``raise`` / ``warn`` every call (bucketed, then exact, then traced)
    gives numpy's result, without a warning."""
    a = rng.standard_normal(_new_shape()).astype(np.float32)
    row = rng.standard_normal(3).astype(np.float32)
    x, y = Tensor.new(a), Tensor.new(row)
    with jax.numpy_rank_promotion(mode), warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(_dispatch.EXACT_AFTER + 1):
            np.testing.assert_array_equal(np.asarray(x.broadcast_add(y)), a + row)
            np.testing.assert_array_equal(np.asarray(x * y), a * row)
            np.testing.assert_array_equal(np.asarray(y.broadcast_lt(x)), (row < a).astype(np.uint8))
        np.testing.assert_array_equal(np.asarray(jax.jit(lambda s, t: s - t)(x, y)), a - row)


def test_float_max_min_of_signed_zeros_match_exact():
    """A float max / min over a row holding +0.0 and -0.0 returns the zero XLA:CPU's order meets first,
    and that order changes with the row count: the first calls on a new shape give the exact
    program's bits (float max / min are not row-bucketed; integer ones and argmax / argmin are)."""
    rng = np.random.default_rng(1)
    for dt in (np.float32, np.float16):
        for shape in [(31, 130), (3, 1000)]:
            a = rng.choice(np.array([0.0, -0.0], dt), shape)
            for f in (lambda t: t.max(-1), lambda t: t.min_keepdim(-1), lambda t: t.argmax(-1)):
                x = Tensor.new(a)
                got = np.asarray(f(x))
                ref = np.asarray(jax.jit(f)(x))
                assert got.dtype == ref.dtype
                np.testing.assert_array_equal(got.view(np.uint8), ref.view(np.uint8))


def _bits(a: np.ndarray) -> np.ndarray:
    """The array's bytes, one unsigned int per element; NaNs as one canonical NaN (XLA:CPU's scalar and
    vector loops give NaNs of different signs and payloads: see docs/performance.md)."""
    a = np.array(a)
    if a.dtype.kind in "fV":
        a[np.isnan(a.astype(np.float64))] = np.nan
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def _fuzz_values(rng: np.random.Generator, shape: tuple[int, ...], dt: Any) -> Any:
    """Random values of ``dt`` with NaN (a payload too), ±inf, ±0, subnormals and the extremes."""
    n = math.prod(shape)
    dt = np.dtype(dt)
    if dt.kind in "ui":
        ii = np.iinfo(dt)
        a = rng.integers(ii.min, int(ii.max) + 1, n, dtype=dt)
        sp = np.array([ii.min, ii.max, 0, 1], dt)
    else:
        fi = jnp.finfo(dt)
        a = (rng.standard_normal(n) * 4).astype(dt)
        sp = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, fi.max, fi.min, float(fi.tiny) / 4, -1.5, 2.5],
                      np.float64).astype(dt)  # fmt: skip
    k = min(n, len(sp))
    a[rng.choice(n, k, replace=False)] = sp[:k]
    if dt.kind == "f" and n > 1:
        a.view(np.uint16 if dt.itemsize == 2 else np.uint32)[np.isnan(a).argmax()] |= 1  # a NaN payload
    return jnp.asarray(a.reshape(shape))


def _fuzz_cases(dt: Any) -> list[tuple[str, Any, int, dict[str, Any]]]:
    """(name, kernel, number of array operands, static kwargs) of the bucketed kernels taking ``dt``."""
    integer = np.dtype(dt).kind in "ui"
    cases = [(f"{n}.tt", k[0], 2, {}) for n, k in elementwise._KERNELS.items() if not (integer and n == "pow")]
    cases += [("where", indexing._where, 3, {}), ("clamp", elementwise._clamp, 1, {}),
              ("affine", elementwise._affine, 1, {}), ("astype", convert._astype, 1, {"dtype": np.dtype(np.float32)}),
              ("argmax", reduce._argmax, 1, {"axis": -1, "keepdims": False}),
              ("cumsum", reduce._cumsum, 1, {"axis": -1})]  # fmt: skip
    if integer:
        cases += [("max", reduce._max, 1, {"axis": (-1,), "keepdims": True}),
                  ("sub.ts", elementwise._KERNELS["sub"][1], 1, {})]  # fmt: skip
    else:
        cases += [("div.st", elementwise._KERNELS["div"][2], 1, {}), ("elu", elementwise._elu, 1, {}),
                  ("powf", elementwise._powf, 1, {}), ("round_to", elementwise._round_to, 1, {})]  # fmt: skip
    return cases


_FUZZ_SHAPES = [(7,), (4097,), (2, 3, 700)]


@pytest.mark.parametrize("dt", [np.float16, np.uint8, np.float64])
def test_fuzz_bucketed_calls_match_exact(dt, x64):
    """Every kind of bucketed kernel, on new shapes around the bucket edges (broadcast operands, 0-d and
    size-1 dims, Python scalars): the 1st to 4th calls (bucketed, then exact) give the exact executable's
    dtype, shape, placement and bits, special values included."""
    rng = np.random.default_rng(7)
    scalars = {"clamp": (-1, 2), "affine": (3, -2), "sub.ts": (5,), "div.st": (0.0,), "elu": (0.5,),
               "powf": (1.5,), "round_to": (100.0,)}  # fmt: skip
    for name, k, n_arrays, kw in _fuzz_cases(dt):
        for shape in _FUZZ_SHAPES:
            shapes = [shape] * n_arrays
            # broadcasting: a trailing slice, or a 0-d operand (not for the divisions: XLA rewrites
            # x / broadcast(y) as x * broadcast(1 / y) in the exact program, the bucket divides)
            if n_arrays > 1 and name not in ("div.tt", "floor_divide.tt", "remainder.tt"):
                shapes[-1] = shape[1:] if rng.random() < 0.5 else ()
            args = [_fuzz_values(rng, s, np.uint8 if name == "where" and i == 0 else dt) for i, s in enumerate(shapes)]
            cast = int if np.dtype(dt).kind in "ui" else float
            args += [cast(v) for v in scalars.get(name, ())]
            if "axis" in kw and len(shape) < 2:
                continue
            ref = k.exact(*args, **kw)
            for call in range(_dispatch.EXACT_AFTER + 1):
                got = k.jitted(*args, **kw)
                assert (got.aval, got.sharding, got.committed) == (ref.aval, ref.sharding, ref.committed), (name, shape)
                np.testing.assert_array_equal(_bits(got), _bits(ref), err_msg=f"{name} {shape} call {call}")
