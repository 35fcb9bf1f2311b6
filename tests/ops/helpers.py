"""Shared helpers for the elementwise / reduce / linalg op tests: tensors from numpy, float64
references, per-dtype tolerances, eager + jit runners and candle-pyo3 conversion."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from candlejax import Tensor, errors

BF16 = np.dtype(jnp.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
U8 = np.dtype(np.uint8)
U32 = np.dtype(np.uint32)
I32 = np.dtype(np.int32)
FLOATS = [F32, BF16, F16]
INTS = [U8, U32, I32]

# (rtol, atol) of a result computed in that dtype vs a float64 reference of the same inputs
TOL = {F32: (2e-5, 2e-6), BF16: (3e-2, 3e-2), F16: (4e-3, 4e-3)}


def T(x: Any) -> Tensor:  # noqa: N802 - short, as in Candle examples
    """A Tensor around ``jnp.asarray(x)`` (the creation API is not needed)."""
    return Tensor._wrap(jnp.asarray(x))


def f64(x: Any) -> np.ndarray:
    """A Tensor / array as float64 numpy (bf16 goes through f32)."""
    a = np.asarray(x.jax if isinstance(x, Tensor) else x)
    return a.astype(np.float32).astype(np.float64) if a.dtype == BF16 else a.astype(np.float64)


def rand(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any, lo: float = -3, hi: float = 3) -> np.ndarray:
    """Random values of ``dtype``: uniform floats in [lo, hi), or small integers (non-negative for unsigned)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f" or dtype == BF16:
        return rng.uniform(lo, hi, shape).astype(dtype)
    if dtype.kind == "u":
        return rng.integers(0, 10, shape).astype(dtype)
    return rng.integers(-9, 10, shape).astype(dtype)


def eager_and_jit(f: Callable[..., Any], *args: Any) -> list[Any]:
    """``f(*args)`` eagerly and under ``jax.jit`` (the results, Tensors or tuples of Tensors)."""
    return [f(*args), jax.jit(f)(*args)]


def eager_and_jit_many(fs: list[Callable[..., Any]], *args: Any) -> list[list[Any]]:
    """Each ``f(*args)`` eagerly, then all of them under ONE ``jax.jit`` (one compile for many cases).

    Returns ``[eager_results, jit_results]``.
    """
    eager = [f(*args) for f in fs]
    jitted = jax.jit(lambda *a: [f(*a) for f in fs])(*args)
    return [eager, list(jitted)]


def assert_close(got: Tensor, want: np.ndarray, dtype: Any, scale: float = 1.0) -> None:
    """Compare a Tensor with a float64 reference at the tolerance of ``dtype`` (exact for ints)."""
    assert isinstance(got, Tensor), type(got)
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        np.testing.assert_array_equal(np.asarray(got.jax), want)
        return
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(f64(got), want, rtol=rtol, atol=atol * scale)


def raises(exc: type[BaseException], f: Callable[..., Any], *args: Any, match: str | None = None) -> None:
    """``f(*args)`` raises ``exc`` eagerly and under ``jax.jit``."""
    with pytest.raises(exc, match=match):
        f(*args)
    with pytest.raises(exc, match=match):
        jax.jit(f)(*args)


def to_candle(x: np.ndarray) -> Any:
    """A candle-pyo3 tensor with the same values and dtype as ``x``."""
    import candle

    x = np.asarray(x)
    shape = x.shape
    flat = np.ascontiguousarray(x.reshape(-1))  # candle-pyo3 only takes nesting <= 3
    if x.dtype == BF16:
        t = candle.Tensor(flat.astype(np.float32)).to_dtype(candle.bf16)
    elif x.dtype == F16:
        t = candle.Tensor(flat.astype(np.float32)).to_dtype(candle.f16)
    elif x.dtype == U8:
        t = candle.Tensor(flat.astype(np.uint32)).to_dtype(candle.u8)
    else:
        t = candle.Tensor(flat)
    return t.reshape(shape) if shape else t.squeeze(0)


def from_candle(t: Any) -> np.ndarray:
    """A candle-pyo3 tensor as float64 numpy."""
    import candle

    if t.dtype in (candle.bf16, candle.f16):
        t = t.to_dtype(candle.f32)
    if t.dtype == candle.u8:
        t = t.to_dtype(candle.u32)
    return np.asarray(t.to_torch().numpy(), dtype=np.float64)


__all__ = [
    "BF16", "F16", "F32", "FLOATS", "I32", "INTS", "TOL", "U8", "U32", "T", "assert_close", "eager_and_jit",
    "eager_and_jit_many", "errors", "f64", "from_candle", "rand", "raises", "to_candle",
]  # fmt: skip


def each_native_isa() -> Iterator[str]:
    """Run the loop body once per native-kernel path this CPU has (portable, AVX2, AVX-512),
    capped with ``native.set_isa``; detection is restored afterwards."""
    from candlejax.quantized import native

    if not native.available():
        return
    have = native.ISA_NAMES.index(native.isa())
    try:
        for isa in native.ISA_NAMES[: have + 1]:
            native.set_isa(isa)
            yield isa
    finally:
        native.set_isa(None)
