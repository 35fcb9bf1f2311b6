"""``one_hot`` (``candle_nn::encoding::one_hot``).

requires: jax.numpy
provides: ``one_hot``
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax._dispatch import is_eager, op
from candlejax.dtype import DType, check_width, to_dtype
from candlejax.nn.module import as_array
from candlejax.shape import check_elem_count
from candlejax.tensor._core import unwrap, wrap

__all__ = ["one_hot"]


@op(static=("depth", "on", "off", "dtype"))
def _one_hot(idx: Any, *, depth: int, on: Any, off: Any, dtype: Any) -> Any:
    hit = idx.astype(jnp.int32)[..., None] == jnp.arange(depth, dtype=jnp.int32)
    return jnp.where(hit, jnp.asarray(on, dtype), jnp.asarray(off, dtype))


def _value(v: Any, what: str) -> tuple[Any, DType | None]:
    """A Python number for the compiled op, and the dtype a typed value (numpy / jax scalar, a
    rank-0 Tensor) carries (``None`` for a Python number)."""
    if isinstance(v, bool | int | float):
        return v, None
    a = np.asarray(unwrap(v))
    if a.shape != ():
        raise errors.Msg(f"one_hot: {what} must be a scalar, got shape {tuple(a.shape)}")
    dt = to_dtype(a.dtype)
    return (float(a) if dt.is_float() else int(a)), dt


def _check_fits(what: str, v: Any, dt: DType) -> None:
    """A value the output dtype cannot hold raises (JAX raised a raw OverflowError, or wrapped)."""
    npdt = np.dtype(dt.np)
    if jnp.issubdtype(npdt, jnp.integer):
        info = jnp.iinfo(npdt)
        ok = math.isfinite(float(v)) and info.min <= int(v) <= info.max  # fractions truncate, as before
        rule = f"[{info.min}, {info.max}]"
    elif jnp.issubdtype(npdt, jnp.floating):
        ok = not math.isfinite(float(v)) or abs(float(v)) <= float(jnp.finfo(npdt).max)
        rule = f"at most {float(jnp.finfo(npdt).max):g} in magnitude"
    else:
        return
    if not ok:
        raise errors.Msg(f"one_hot: {what} {v!r} does not fit the output dtype {dt.name} ({rule})")


def one_hot(indices: Any, depth: int, on_value: Any = 1.0, off_value: Any = 0.0, dtype: Any = None) -> Any:
    """``indices.shape + [depth]`` with ``on_value`` at each index and ``off_value`` elsewhere.

    ``dtype`` defaults to the values' own dtype for typed scalars (``np.float32(0.5)``, a rank-0
    Tensor), else F32 for Python floats and U32 for Python ints (Candle infers it from the Rust
    type of ``on_value``). An index of -1 gives a row of ``off_value``; an index >= depth or below -1
    raises eagerly; under ``jit`` the ids are not known, and such an index gives a row of ``off_value``
    (all zeros by default). ``depth >= 1``; values must fit ``dtype`` (no wrapping).
    """
    if isinstance(depth, (bool, np.bool_)) or not isinstance(depth, (int, np.integer)) or int(depth) < 1:
        raise errors.Msg(f"one_hot: depth must be an integer >= 1, got {depth!r}")
    idx = as_array(indices)
    if not jnp.issubdtype(idx.dtype, jnp.integer):
        raise errors.UnexpectedDType(DType.U32, to_dtype(idx.dtype), "one_hot: indices must be integers")
    (on_value, on_dtype), (off_value, off_dtype) = _value(on_value, "on_value"), _value(off_value, "off_value")
    if dtype is None:  # the values' own type, as Candle's generic D
        typed = on_dtype or off_dtype
        if typed is not None:
            dtype = typed
        else:
            dtype = DType.F32 if isinstance(on_value, float) or isinstance(off_value, float) else DType.U32
    dt = check_width(to_dtype(dtype))
    for what, v in (("on_value", on_value), ("off_value", off_value)):
        _check_fits(what, v, dt)
    if is_eager() and idx.size:
        a = np.asarray(idx).astype(np.int64)
        bad = a[(a >= depth) | (a < -1)]
        if bad.size:
            v = int(bad[0])
            if v >= depth:
                raise errors.Msg(f"one_hot: index value {v} exceeds depth {depth}")
            raise errors.Msg(f"one_hot: invalid negative index value {v}, expected a positive index value or -1")
    check_elem_count((*idx.shape, int(depth)), "one_hot")
    return wrap(_one_hot(idx, depth=int(depth), on=on_value, off=off_value, dtype=dt.np))
