"""candle-pyo3's top-level functions: ``ones``, ``zeros``, ``rand``, ``randn``, ``cat``, ``stack``, as
Candle's Python binding spells them (``candle.ones(2, 3)``); ``candlejax.tensor(data)`` is the
``candlejax.tensor`` package itself, callable (see there).

Each is :class:`candlejax.Tensor`'s own constructor under the binding's signature: shapes as
separate ints or one tuple, ``dtype`` a ``DType`` or a string (default f32), ``device`` a
``Device`` or a string (``"cpu"``, ``"cuda"``; default the CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType
from candlejax.shape import check_elem_count
from candlejax.tensor import Tensor

__all__ = ["cat", "ones", "rand", "randn", "stack", "zeros"]


def _shape(shape: tuple[Any, ...], fn: str) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], Sequence | tuple):
        shape = tuple(shape[0])
    msg = f"{fn}: the shape must be non-negative ints, as {fn}(2, 3) or {fn}((2, 3)); got {shape!r}"
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise errors.DimType(msg)
    if any(d < 0 for d in shape):
        raise errors.NegativeDim(msg)
    return check_elem_count(tuple(shape), fn)


def _dtype(dtype: Any) -> DType:
    if dtype is None:
        return DType.F32
    return DType.parse(dtype) if isinstance(dtype, str) else dtype


def ones(*shape: Any, dtype: Any = None, device: Any = None) -> Tensor:
    """candle-pyo3 ``candle.ones(*shape, dtype=None, device=None)``: ``Tensor.ones`` (f32 by default).
    PyTorch: ``torch.ones(2, 3)``."""
    return Tensor.ones(_shape(shape, "ones"), _dtype(dtype), Device.coerce(device))


def zeros(*shape: Any, dtype: Any = None, device: Any = None) -> Tensor:
    """candle-pyo3 ``candle.zeros(*shape, dtype=None, device=None)``: ``Tensor.zeros`` (f32 by default).
    PyTorch: ``torch.zeros(2, 3)``."""
    return Tensor.zeros(_shape(shape, "zeros"), _dtype(dtype), Device.coerce(device))


def rand(*shape: Any, device: Any = None) -> Tensor:
    """candle-pyo3 ``candle.rand(*shape, device=None)``: f32 uniform on [0, 1) from the device's
    seeded generator (``Tensor.rand(0.0, 1.0, shape, device)``). PyTorch: ``torch.rand``."""
    return Tensor.rand(0.0, 1.0, _shape(shape, "rand"), Device.coerce(device), dtype=DType.F32)


def randn(*shape: Any, device: Any = None) -> Tensor:
    """candle-pyo3 ``candle.randn(*shape, device=None)``: f32 standard normal from the device's
    seeded generator (``Tensor.randn(0.0, 1.0, shape, device)``). PyTorch: ``torch.randn``."""
    return Tensor.randn(0.0, 1.0, _shape(shape, "randn"), Device.coerce(device), dtype=DType.F32)


def cat(tensors: Sequence[Any], dim: Any) -> Tensor:
    """candle-pyo3 ``candle.cat(tensors, dim)``: ``Tensor.cat`` (negative dims count from the end).
    PyTorch: ``torch.cat``."""
    return Tensor.cat(tensors, dim)


def stack(tensors: Sequence[Any], dim: Any) -> Tensor:
    """candle-pyo3 ``candle.stack(tensors, dim)``: ``Tensor.stack``. PyTorch: ``torch.stack``."""
    return Tensor.stack(tensors, dim)
