"""Matrix products: matmul, broadcast_matmul, dot, mv, norm.

f32/f64 products run at full precision (``lax.Precision.HIGHEST``: no TF32/bf16 passes on
accelerators, as Candle's default; ``cj.set_gemm_reduced_precision_f32(True)`` allows TF32);
bf16/f16 products accumulate in f32 and return their own dtype.

requires: candlejax.tensor._core (TensorBase, wrap, check_same_device), candlejax.tensor.reduce
(sqrt_zero_grad), candlejax._dispatch.op
provides: LinalgMixin
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax._dispatch import is_eager, op
from candlejax._precision import f32_precision
from candlejax.dtype import DType
from candlejax.shape import broadcast_shapes
from candlejax.tensor._core import TensorBase, aval, check_same_device, multi_device, not_a_tensor, wrap
from candlejax.tensor.reduce import sqrt_zero_grad

if TYPE_CHECKING:  # Tensor joins the mixins: candlejax.tensor sets this name at runtime (get_type_hints)
    from candlejax.tensor import Tensor

_FLOAT = frozenset(d.np for d in DType if d.is_float())
_HALF = frozenset({np.dtype(jnp.bfloat16), np.dtype(np.float16)})
_F32_HINT = "convert with .to_dtype(DType.F32) first"


def _mm(a: Any, b: Any) -> Any:
    if a.dtype in _HALF:
        return jnp.matmul(a, b, preferred_element_type=jnp.float32).astype(a.dtype)
    if a.dtype in _FLOAT:
        return jnp.matmul(a, b, precision=f32_precision())
    return jnp.matmul(a, b)


@op
def _matmul(a: Any, b: Any) -> Any:
    return _mm(a, b)


@op
def _mv(a: Any, b: Any) -> Any:
    return _mm(a, b[:, None])[:, 0]


@op
def _dot(a: Any, b: Any) -> Any:
    if a.dtype in _HALF:
        return jnp.dot(a, b, preferred_element_type=jnp.float32).astype(a.dtype)
    if a.dtype in _FLOAT:
        return jnp.dot(a, b, precision=f32_precision())
    return jnp.sum(a * b, dtype=a.dtype)


@op
def _norm(a: Any) -> Any:
    x = a.astype(jnp.float32) if a.dtype in _HALF else a
    return sqrt_zero_grad(jnp.sum(x * x)).astype(a.dtype)  # a zero vector's gradient: 0 (PyTorch), not NaN





def _call(k: Any, *args: Any) -> Any:
    return wrap(k.jitted(*args) if is_eager() else k.raw(*args))


def _check_pair(op_name: str, lhs: TensorBase, rhs: Any, float_only: bool) -> None:
    if not isinstance(rhs, TensorBase):
        raise not_a_tensor(op_name, "rhs", rhs)
    if lhs._a.dtype != rhs._a.dtype:
        raise errors.DTypeMismatchBinaryOp(lhs.dtype, rhs.dtype, op_name)
    if float_only and lhs._a.dtype not in _FLOAT:
        raise errors.UnsupportedDTypeForOp(lhs.dtype, op_name, _F32_HINT)
    check_same_device(op_name, lhs, rhs)


class LinalgMixin(TensorBase):
    """Candle's matrix products."""

    __slots__ = ()

    def matmul(self, rhs: Any) -> Tensor:
        """Batched matrix product ``(..., m, k) x (..., k, n) -> (..., m, n)`` (Candle ``matmul``).

        Both operands need rank >= 2, the same rank and the same batch dims (no broadcasting: use
        ``broadcast_matmul``; Candle only compares the batch products). Float dtypes only.
        PyTorch: ``torch.matmul`` without broadcasting or 1-D promotion.
        """
        if not isinstance(rhs, TensorBase):
            raise not_a_tensor("matmul", "rhs", rhs)
        a, b = self._a, rhs._a
        va, vb = aval(a), aval(b)
        sa, sb = va.shape, vb.shape
        r = len(sa)
        if r < 2 or len(sb) != r:
            hint = "use dot for two vectors and mv for matrix x vector" if min(r, len(sb)) < 2 else (
                "both operands need the same rank; use broadcast_matmul to broadcast"
            )
            raise errors.ShapeMismatchBinaryOp(sa, sb, "matmul", hint)
        if sa[-1] != sb[-2]:
            raise errors.ShapeMismatchBinaryOp(
                sa, sb, "matmul", f"inner dimensions differ: lhs has k={sa[-1]}, rhs has k={sb[-2]}"
            )
        if r > 2 and sa[:-2] != sb[:-2]:
            raise errors.ShapeMismatchBinaryOp(
                sa, sb, "matmul", "batch dims must be equal; use broadcast_matmul to broadcast them"
            )
        if va.dtype != vb.dtype or va.dtype not in _FLOAT:
            _check_pair("matmul", self, rhs, True)
        if multi_device():
            check_same_device("matmul", self, rhs)
        return wrap(_matmul.jitted(a, b) if is_eager() else _matmul.raw(a, b))

    def broadcast_matmul(self, rhs: Any) -> Tensor:
        """Matrix product with numpy broadcasting of the batch dims (Candle ``broadcast_matmul``,
        ``torch.matmul`` for rank >= 2). Float dtypes only."""
        if not isinstance(rhs, TensorBase):
            raise not_a_tensor("broadcast_matmul", "rhs", rhs)
        a, b = self._a, rhs._a
        sa, sb = a.shape, b.shape
        if len(sa) < 2 or len(sb) < 2:
            raise errors.Msg(
                f"only 2d matrixes are supported {errors.fmt_shape(sa)} {errors.fmt_shape(sb)}"
                " (broadcast_matmul needs rank >= 2 operands; use dot / mv for vectors)"
            )
        if sa[-1] != sb[-2]:
            raise errors.Msg(
                f"different inner dimensions in broadcast matmul {errors.fmt_shape(sa)} {errors.fmt_shape(sb)}"
            )
        if sa[:-2] != sb[:-2]:
            broadcast_shapes(sa[:-2], sb[:-2], "broadcast_matmul")
        _check_pair("broadcast_matmul", self, rhs, True)
        return _call(_matmul, a, b)

    def __matmul__(self, rhs: Any) -> Tensor:
        """``a @ b`` is ``broadcast_matmul`` (Python operators broadcast, as ``+ - * /`` do)."""
        if not isinstance(rhs, TensorBase):
            return NotImplemented
        return self.broadcast_matmul(rhs)

    def dot(self, rhs: Any) -> Tensor:
        """Inner product of two 1-D tensors of the same length -> rank 0 (Candle ``dot``, ``torch.dot``)."""
        if not isinstance(rhs, TensorBase):
            raise errors.Msg(f"dot: expected a Tensor as rhs, got {type(rhs).__name__}")
        a, b = self._a, rhs._a
        if a.ndim != 1 or b.ndim != 1 or a.shape != b.shape:
            raise errors.ShapeMismatchBinaryOp(a.shape, b.shape, "dot", "dot needs two 1-D tensors of the same length")
        _check_pair("dot", self, rhs, False)
        return _call(_dot, a, b)

    def mv(self, rhs: Any) -> Tensor:
        """Matrix-vector product ``(m, n) x (n,) -> (m,)`` (Candle ``mv``, ``torch.mv``); float only."""
        if not isinstance(rhs, TensorBase):
            raise errors.Msg(f"mv: expected a Tensor as rhs, got {type(rhs).__name__}")
        a, b = self._a, rhs._a
        if a.ndim != 2 or b.ndim != 1 or a.shape[1] != b.shape[0]:
            raise errors.ShapeMismatchBinaryOp(a.shape, b.shape, "mv", "mv needs a (m, n) matrix and a (n,) vector")
        _check_pair("mv", self, rhs, True)
        return _call(_mv, a, b)

    def norm(self) -> Tensor:
        """Frobenius norm ``sqrt(sum(x^2))`` over all elements -> rank 0 (Candle ``norm``,
        ``torch.linalg.norm`` of the flattened tensor); float only."""
        if self._a.dtype not in _FLOAT:
            hint = "norm not supported for integer dtypes; " + _F32_HINT
            raise errors.UnsupportedDTypeForOp(self.dtype, "norm", hint)
        return _call(_norm, self._a)
