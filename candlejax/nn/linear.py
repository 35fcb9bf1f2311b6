"""``Linear``: ``y = x @ wᵀ + b`` (Candle's ``candle_nn::Linear``, PyTorch's ``nn.Linear``).

requires: candlejax.nn.module, candlejax.nn.init, candlejax.nn.var_builder
provides: ``Linear``, ``linear``, ``linear_no_bias``, ``linear_b``
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from candlejax import errors
from candlejax._dispatch import op
from candlejax._precision import f32_precision
from candlejax.dtype import to_dtype
from candlejax.nn.init import DEFAULT_KAIMING_NORMAL, Uniform
from candlejax.nn.module import LayerInputShape, Module, as_array, layer_name
from candlejax.quantized import native
from candlejax.tensor._core import TensorBase, wrap

__all__ = ["Linear", "linear", "linear_b", "linear_no_bias"]


#: f32 inputs of at most this many rows (all dims but the last) use the native few-row product on
#: the CPU (:func:`candlejax.quantized.native.f32_matmul`) when it is built
NATIVE_MAX_ROWS = 48
#: ... and weights of at least this many values (smaller products gain nothing)
NATIVE_MIN_WEIGHT = 1 << 14
#: f32 inputs of at least this many rows use the native blocked product (register tiles over packed
#: weight panels), which runs large products ~5-15% faster than XLA:CPU's library product here;
#: between the two bounds XLA's product is as fast
NATIVE_BLOCKED_MIN_ROWS = 512


@op
def _linear(x: Any, w: Any, b: Any) -> Any:
    # x (..., in) . w (out, in) contracted directly: XLA:CPU fuses `matmul(x, w.T) + b` into a slow
    # loop for small batches (a one-token decode step ran ~20x slower than this form).
    # f32: exact unless cj.set_gemm_reduced_precision_f32(True) (then TF32 on GPUs)
    prec = f32_precision() if x.dtype == jnp.float32 else None
    y = _native_rows_linear(x, w) if _use_native(x, w, prec) else _xla_linear(x, w, prec)
    return y if b is None else y + b


def _use_native(x: Any, w: Any, prec: Any, max_rows: int | None = None) -> bool:
    """Whether an f32 product runs in the native library: at most ``max_rows`` (default
    :data:`NATIVE_MAX_ROWS`) or at least :data:`NATIVE_BLOCKED_MIN_ROWS` rows, exact f32, on a
    one-device CPU process with the library built for AVX-512 (its portable loop is slower than
    XLA; a custom call has no sharding rule, so programs over several devices keep XLA's product)."""
    rows = math.prod(x.shape[:-1])
    return (x.dtype == w.dtype == jnp.float32 and prec == lax.Precision.HIGHEST and w.size >= NATIVE_MIN_WEIGHT
            and (rows <= (NATIVE_MAX_ROWS if max_rows is None else max_rows) or rows >= NATIVE_BLOCKED_MIN_ROWS)
            and jax.device_count() == 1
            and native.f32_available() and native.isa() == "avx512")  # fmt: skip


@jax.custom_jvp
def _native_rows_linear(x: Any, w: Any) -> Any:
    """``x (..., in) @ w.T`` through the native few-row product (XLA:CPU's library product runs a
    16 x 384 @ 384 x 1536 at ~90 GFLOP/s on two cores: 270 -> 90 µs). Derivatives, forward and
    reverse: XLA's products (the tangent map below, which JAX transposes for gradients)."""
    y = native.f32_matmul(x.reshape(-1, x.shape[-1]), w)
    return y.reshape(*x.shape[:-1], w.shape[0])


def _xla_linear(x: Any, w: Any, prec: Any = lax.Precision.HIGHEST) -> Any:
    """``x (..., in) . w (out, in)``, contracted directly (no transpose of ``w``)."""
    return lax.dot_general(x, w, (((x.ndim - 1,), (1,)), ((), ())), precision=prec, preferred_element_type=x.dtype)


def _native_rows_linear_jvp(primals: tuple[Any, Any], tangents: tuple[Any, Any]) -> tuple[Any, Any]:
    (x, w), (tx, tw) = primals, tangents
    y = _native_rows_linear(x, w)
    parts = []
    if type(tx) is not SymbolicZero:
        parts.append(_xla_linear(tx, w))
    if type(tw) is not SymbolicZero:
        parts.append(_xla_linear(x, tw))
    return y, (jnp.zeros_like(y) if not parts else parts[0] if len(parts) == 1 else parts[0] + parts[1])


_native_rows_linear.defjvp(_native_rows_linear_jvp, symbolic_zeros=True)


def _as_param(t: Any) -> Any:
    """Keep Vars/Tensors as they are; wrap raw arrays."""
    if t is None or isinstance(t, TensorBase):
        return t
    return wrap(as_array(t))


class Linear(Module):
    """A fully connected layer: weight ``(out, in)``, optional bias ``(out,)``.

    ``Linear(weight, bias)`` (or ``Linear.new``) builds one from tensors; ``linear(in, out, vb)``
    fetches ``weight`` and ``bias`` through a VarBuilder. Input ``(..., in)`` with rank 2 to 4,
    as in Candle (rank 1 and rank >= 5 raise).
    """

    def __init__(self, weight: Any, bias: Any = None):
        self.weight = _as_param(weight)
        self.bias = _as_param(bias)

    @staticmethod
    def new(weight: Any, bias: Any = None) -> Linear:
        return Linear(weight, bias)

    def in_dim(self) -> int:
        return self.weight.shape[1]

    def out_dim(self) -> int:
        return self.weight.shape[0]

    def extra_repr(self) -> str:
        w = self.weight
        return f"in={w.shape[1]}, out={w.shape[0]}, bias={self.bias is not None}"

    def forward(self, xs: Any) -> Any:
        x = as_array(xs)
        w = self.weight._a
        b = None if self.bias is None else self.bias._a
        if x.ndim < 2 or x.ndim > 4 or x.shape[-1] != w.shape[1]:
            raise LayerInputShape(
                layer_name("Linear", self.weight),
                f"[batch, {w.shape[1]}] (rank 2 to 4, last dim {w.shape[1]})",
                x.shape,
            )
        if x.dtype != w.dtype:
            raise errors.DTypeMismatchBinaryOp(to_dtype(x.dtype), to_dtype(w.dtype), "matmul")
        return wrap(_linear(x, w, b))


def linear_b(in_dim: int, out_dim: int, bias: bool, vb: Any) -> Linear:
    """``weight`` Kaiming-normal (fan-in, ReLU gain), ``bias`` U(±1/√in), as Candle and PyTorch."""
    w = vb.get_with_hints((out_dim, in_dim), "weight", DEFAULT_KAIMING_NORMAL)
    if not bias:
        return Linear(w, None)
    bound = 1.0 / math.sqrt(in_dim)
    b = vb.get_with_hints((out_dim,), "bias", Uniform(-bound, bound))
    return Linear(w, b)


def linear(in_dim: int, out_dim: int, vb: Any) -> Linear:
    """``linear(in, out, vb.pp("fc1"))``: params ``fc1.weight`` ``(out, in)`` and ``fc1.bias``."""
    return linear_b(in_dim, out_dim, True, vb)


def linear_no_bias(in_dim: int, out_dim: int, vb: Any) -> Linear:
    return linear_b(in_dim, out_dim, False, vb)
