"""candle-pyo3's ``candle.functional``: ``softmax``, ``gelu`` (erf), ``relu``, ``silu``, ``tanh``,
``max_pool2d`` and ``avg_pool2d``.

As in the binding, ``gelu`` is the exact (erf) GELU (Rust's ``Tensor::gelu`` is the tanh
approximation: ``t.gelu()``), and the pools' ``stride`` defaults to 1, not to the kernel size.
"""

from __future__ import annotations

from typing import Any

from candlejax.nn import ops
from candlejax.nn.module import as_array
from candlejax.tensor import Tensor
from candlejax.tensor._core import TensorBase, wrap

__all__ = ["avg_pool2d", "gelu", "max_pool2d", "relu", "silu", "softmax", "tanh"]


def _tensor(x: Any) -> Tensor:
    """The Tensor argument; an array or nested lists become one, as ``softmax`` takes them, and any
    other value raises ``ArgumentType`` (a ``TypeError``, as the binding's) naming its type."""
    return x if isinstance(x, TensorBase) else wrap(as_array(x))


def softmax(tensor: Tensor, dim: Any) -> Tensor:
    """``candle.functional.softmax(t, dim)`` (negative dims count from the end); Candle:
    ``candle_nn::ops::softmax``. PyTorch: ``torch.softmax(t, dim)``."""
    return ops.softmax(tensor, dim)


def gelu(tensor: Tensor) -> Tensor:
    """``candle.functional.gelu``: the exact GELU, ``t.gelu_erf()``. PyTorch: ``F.gelu(t)``."""
    return _tensor(tensor).gelu_erf()


def relu(tensor: Tensor) -> Tensor:
    """``candle.functional.relu``: ``t.relu()``. PyTorch: ``F.relu``."""
    return _tensor(tensor).relu()


def silu(tensor: Tensor) -> Tensor:
    """``candle.functional.silu``: ``t.silu()``. PyTorch: ``F.silu``."""
    return _tensor(tensor).silu()


def tanh(tensor: Tensor) -> Tensor:
    """``candle.functional.tanh``: ``t.tanh()``. PyTorch: ``torch.tanh``."""
    return _tensor(tensor).tanh()


def max_pool2d(tensor: Tensor, ksize: Any, *, stride: Any = 1) -> Tensor:
    """``candle.functional.max_pool2d(t, ksize, stride=1)`` on ``(B, C, H, W)``: the stride defaults
    to 1 as in the binding (``t.max_pool2d(k)`` strides by the kernel). PyTorch: ``F.max_pool2d(t, k, stride)``."""
    return _tensor(tensor).max_pool2d_with_stride(ksize, stride)


def avg_pool2d(tensor: Tensor, ksize: Any, *, stride: Any = 1) -> Tensor:
    """``candle.functional.avg_pool2d(t, ksize, stride=1)`` on ``(B, C, H, W)``; stride as in
    :func:`max_pool2d`. PyTorch: ``F.avg_pool2d(t, k, stride)``."""
    return _tensor(tensor).avg_pool2d_with_stride(ksize, stride)
