"""``one_hot`` (``candle_nn::encoding::one_hot``).

requires: jax.numpy
provides: ``one_hot``
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax._dispatch import is_eager, op
from candlejax.dtype import DType, check_width, to_dtype
from candlejax.nn.module import as_array
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


def one_hot(indices: Any, depth: int, on_value: Any = 1.0, off_value: Any = 0.0, dtype: Any = None) -> Any:
    """``indices.shape + [depth]`` with ``on_value`` at each index and ``off_value`` elsewhere.

    ``dtype`` defaults to the values' own dtype for typed scalars (``np.float32(0.5)``, a rank-0
    Tensor), else F32 for Python floats and U32 for Python ints (Candle infers it from the Rust
    type of ``on_value``). An index of -1 gives a row of ``off_value``; an index >= depth raises
    (checked eagerly; under ``jit`` it gives a row of ``off_value``).
    """
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
    if is_eager() and idx.size:
        a = np.asarray(idx).astype(np.int64)
        bad = a[(a >= depth) | (a < -1)]
        if bad.size:
            v = int(bad[0])
            if v >= depth:
                raise errors.Msg(f"one_hot: index value {v} exceeds depth {depth}")
            raise errors.Msg(f"one_hot: invalid negative index value {v}, expected -1 or >= 0")
    return wrap(_one_hot(idx, depth=int(depth), on=on_value, off=off_value, dtype=dt.np))
