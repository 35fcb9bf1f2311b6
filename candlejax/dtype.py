"""Candle's ``DType``: u8, u32, i16, i32, i64, bf16, f16, f32, f64 and f8e4m3.

``DType.F32`` is Candle's ``DType::F32``; ``DType.parse("f32")`` is ``"f32".parse::<DType>()``.
64-bit dtypes need JAX's x64 mode (``candlejax.enable_x64()``); without it candlejax raises instead
of letting JAX silently truncate i64/f64 to 32 bits.
"""

from __future__ import annotations

import enum
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import _reload, errors

_reload.refuse(__name__)  # a re-run would redefine the classes of existing objects

__all__ = [
    "BF16", "F16", "F32", "F64", "F8E4M3", "I16", "I32", "I64", "NUMPY_TO_DTYPE", "U8", "U32", "DType",
    "check_width", "enable_x64", "from_array_dtype", "to_dtype", "x64_enabled",
]  # fmt: skip

_NP = {
    "u8": np.dtype(np.uint8),
    "u32": np.dtype(np.uint32),
    "i16": np.dtype(np.int16),
    "i32": np.dtype(np.int32),
    "i64": np.dtype(np.int64),
    "bf16": np.dtype(jnp.bfloat16),
    "f16": np.dtype(np.float16),
    "f32": np.dtype(np.float32),
    "f64": np.dtype(np.float64),
    "f8e4m3": np.dtype(jnp.float8_e4m3fn),
}


class DType(enum.Enum):
    """A tensor element type. Members: U8 U32 I16 I32 I64 BF16 F16 F32 F64 F8E4M3."""

    U8 = "u8"
    U32 = "u32"
    I16 = "i16"
    I32 = "i32"
    I64 = "i64"
    BF16 = "bf16"
    F16 = "f16"
    F32 = "f32"
    F64 = "f64"
    F8E4M3 = "f8e4m3"

    # --- Candle's DType API -------------------------------------------------------------------
    def as_str(self) -> str:
        """``dtype.as_str()`` -> ``"f32"``."""
        return self.value

    @staticmethod
    def parse(s: str) -> DType:
        """``"f32".parse::<DType>()``; raises ``cannot parse 'x' as a dtype`` (an ``ArgumentType``, also a
        ``TypeError`` as candle-pyo3's ``invalid dtype 'x'``)."""
        if not isinstance(s, str):
            what = f"{s!r} ({type(s).__name__})"
            raise errors.ArgumentType(f"cannot parse {what} as a dtype: expected a name such as 'f32'")
        d = DType._value2member_map_.get(s.lower().strip())
        if d is None:
            raise errors.ArgumentType(f"cannot parse '{s}' as a dtype")
        return d  # type: ignore[return-value]

    @classmethod
    def _missing_(cls, value: object) -> DType:
        """``DType("F32")`` for a name other than the exact value: as :meth:`parse`, whose ``ArgumentType``
        a bad name raises (enum's own error would be a bare ``ValueError``)."""
        return DType.parse(value)  # type: ignore[arg-type]

    @staticmethod
    def from_str(s: str) -> DType:
        """Rust's ``DType::from_str("f32")`` (the ``FromStr`` trait): as :meth:`parse`."""
        return DType.parse(s)

    def size_in_bytes(self) -> int:
        """Candle's ``DType::size_in_bytes``: the bytes of one element."""
        return _NP[self.value].itemsize

    def is_int(self) -> bool:
        """Candle's ``DType::is_int``: whether the dtype is an integer type."""
        return self in _INT

    def is_float(self) -> bool:
        """Candle's ``DType::is_float``: whether the dtype is a floating-point type."""
        return self in _FLOAT

    def __eq__(self, other: object) -> bool:
        """Identity, and equal to its Candle name or numpy name: ``x.dtype == "f32"``,
        ``x.dtype == "float32"``, and to the numpy / jax.numpy dtype it holds: ``x.dtype == jnp.float32``,
        ``x.dtype == np.dtype("float32")``, ``x.dtype == jnp.asarray(x).dtype``."""
        if other.__class__ is DType:  # the common case first: DType against DType
            return self is other
        if isinstance(other, str):
            o = other.lower().strip()
            return o == self.value or o == _NP[self.value].name
        if isinstance(other, np.dtype):
            return other == _NP[self.value]
        if isinstance(other, type) and (issubclass(other, np.generic) or isinstance(getattr(other, "dtype", None),
                                                                                     np.dtype)):
            return np.dtype(other) == _NP[self.value]  # np.float32, jnp.float32 (a scalar type holding .dtype)
        return self is other

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = enum.Enum.__hash__

    # --- interop ---------------------------------------------------------------------------
    @property
    def np(self) -> np.dtype:
        """The numpy dtype (``ml_dtypes`` for bf16 / f8)."""
        return _NP[self.value]

    @property
    def jnp(self) -> np.dtype:
        """The dtype to hand to jax.numpy."""
        return _NP[self.value]

    def __call__(self) -> DType:
        """Rust Candle's accessor call ``t.dtype()``: the dtype itself (``t.dtype`` is the property)."""
        return self

    def __repr__(self) -> str:
        return f"DType.{self.name}"

    def __str__(self) -> str:
        return self.value


_INT = frozenset({DType.U8, DType.U32, DType.I16, DType.I32, DType.I64})
_FLOAT = frozenset({DType.BF16, DType.F16, DType.F32, DType.F64, DType.F8E4M3})
#: numpy dtype -> DType, for every dtype candlejax holds
NUMPY_TO_DTYPE = {v: DType(k) for k, v in _NP.items()}
_WIDE = frozenset({DType.I64, DType.F64})

U8, U32, I16, I32, I64 = DType.U8, DType.U32, DType.I16, DType.I32, DType.I64
BF16, F16, F32, F64, F8E4M3 = DType.BF16, DType.F16, DType.F32, DType.F64, DType.F8E4M3


_F8_MAX = 448  # the largest finite float8 e4m3fn value


def f8_saturate(a: Any, dtype: Any) -> Any:
    """``a`` (a numpy or jax array) ready for ``a.astype(dtype)``: for an F8E4M3 target, clipped to +-448.

    Candle's ``F8E4M3::from_f32`` / ``from_f64`` (the ``float8`` crate, ``SatFinite``) saturate beyond the
    largest finite value, +-inf included; numpy's (ml_dtypes) and XLA's casts give NaN there. NaN stays NaN.
    """
    if dtype != _NP["f8e4m3"] or a.dtype.itemsize <= 1:  # u8 / bool / f8 hold nothing beyond 448
        return a
    xp = np if isinstance(a, (np.ndarray, np.generic)) else jnp
    lo = 0 if np.issubdtype(a.dtype, np.unsignedinteger) else -_F8_MAX
    return xp.clip(a, lo, _F8_MAX)


def x64_enabled() -> bool:
    """Whether JAX runs with 64-bit types (``jax_enable_x64``), needed for F64 and I64."""
    return bool(jax.config.read("jax_enable_x64"))


def enable_x64(enabled: bool = True) -> None:
    """Turn JAX's 64-bit mode on so that i64 / f64 tensors keep their width.

    Off by default: 64-bit mode makes every eager op slower, and most models run in f32/bf16.
    """
    jax.config.update("jax_enable_x64", enabled)


def check_width(dtype: DType, where: str = "") -> DType:
    """Raise instead of letting JAX truncate a 64-bit dtype when x64 mode is off."""
    if dtype in _WIDE and not x64_enabled():
        raise errors.UnsupportedDTypeForOp(
            dtype,
            where or "tensor creation",
            "64-bit dtypes need JAX's x64 mode: call candlejax.enable_x64() (or set JAX_ENABLE_X64=1)"
            " before creating tensors, or use a 32-bit dtype",
        )
    return dtype


def to_dtype(x: Any) -> DType:
    """Accept a DType, a string (``"f32"``), a numpy / jax dtype, or a candle-pyo3 style name."""
    if isinstance(x, DType):
        return x
    if isinstance(x, str):
        return DType.parse(x)
    if isinstance(x, (np.ndarray, jax.Array)):  # np.dtype(array) would take the array's dtype
        raise errors.ArgumentType(f"cannot convert an array ({type(x).__name__}) to a candlejax DType: pass a DType")
    if x is None:  # np.dtype(None) is float64
        raise errors.ArgumentType(
            "cannot convert None to a candlejax DType: pass a DType (DType.F32) or its name ('f32')"
        )
    try:
        return NUMPY_TO_DTYPE[np.dtype(x)]
    except (KeyError, TypeError, ValueError):  # ValueError: an object whose .dtype is not a numpy dtype (a Tensor)
        pass
    if x is bool or (isinstance(x, np.dtype) and x == np.bool_):
        return DType.U8
    if type(x).__name__ == "dtype" and type(x).__module__ == "torch":  # PyTorch's t.to(dtype=torch.float16)
        torch_name = str(x).removeprefix("torch.")
        if torch_name in _TORCH_DTYPES:
            return _TORCH_DTYPES[torch_name]
    raise errors.ArgumentType(f"cannot convert {x!r} to a candlejax DType")


#: torch dtypes (by name, so torch is never imported here) -> the candlejax DType of the same values
_TORCH_DTYPES: dict[str, DType] = {
    "uint8": DType.U8,
    "int16": DType.I16,
    "int32": DType.I32,
    "uint32": DType.U32,
    "int64": DType.I64,
    "float16": DType.F16,
    "bfloat16": DType.BF16,
    "float32": DType.F32,
    "float64": DType.F64,
    "float8_e4m3fn": DType.F8E4M3,
}


def from_array_dtype(dt: Any, where: str = "tensor") -> DType:
    """The DType of a numpy / jax array dtype, with a clear error for unsupported ones."""
    try:
        return NUMPY_TO_DTYPE[dt]
    except KeyError:
        pass
    try:
        return NUMPY_TO_DTYPE[np.dtype(dt)]
    except (KeyError, TypeError):
        raise errors.UnsupportedDTypeForOp(
            str(dt), where, "supported: " + ", ".join(d.value for d in DType)
        ) from None


_reload.loaded(__name__)
