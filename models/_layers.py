"""``Linear`` for the CLIP and BLIP models: :class:`candlejax.nn.Linear` with the product contracting
the weight's input dim in place.

``nn.Linear`` computes ``x @ w.T + b``; XLA:CPU fuses that transpose and the bias add into a
naive loop when ``x`` has one row (a decode step), which made the BLIP decoder step ~15x slower
(768 -> 30524 LM head: 450 ms vs 27 ms). ``lax.dot_general`` over the stored ``(out, in)`` weight
keeps the library GEMM/GEMV. Same weights, names and results (``nn.Linear``'s checks kept).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import lax

from candlejax import errors
from candlejax.nn import Linear as _NnLinear
from candlejax.nn import linear_b as _nn_linear_b
from candlejax.tensor import Tensor

__all__ = ["Linear", "linear", "linear_no_bias"]


class Linear(_NnLinear):
    """``y = x Wᵀ + b`` (PyTorch ``nn.Linear``); weight ``(out, in)``, input ``(..., in)``."""

    def forward(self, xs: Any) -> Any:
        x = xs.jax if isinstance(xs, Tensor) else jnp.asarray(xs)
        w = self.weight.jax
        if x.ndim < 2 or x.shape[-1] != w.shape[1]:
            raise errors.UnexpectedShape(
                f"Linear {self.weight.shape}: input must be (..., {w.shape[1]})", (1, w.shape[1]), x.shape
            )
        if x.dtype != w.dtype:
            raise errors.DTypeMismatchBinaryOp(Tensor.from_jax(x).dtype, self.weight.dtype, "matmul")
        y = lax.dot_general(x, w, (((x.ndim - 1,), (1,)), ((), ())))
        return Tensor.from_jax(y if self.bias is None else y + self.bias.jax)


def _cast(lin: _NnLinear) -> Linear:
    return Linear(lin.weight, lin.bias)


def linear(in_dim: int, out_dim: int, vb: Any) -> Linear:
    """``linear(in, out, vb.pp("fc"))``: params ``fc.weight`` ``(out, in)`` and ``fc.bias`` ``(out,)``."""
    return _cast(_nn_linear_b(in_dim, out_dim, True, vb))


def linear_no_bias(in_dim: int, out_dim: int, vb: Any) -> Linear:
    """``linear_no_bias(in, out, vb.pp("proj"))``: param ``proj.weight`` only."""
    return _cast(_nn_linear_b(in_dim, out_dim, False, vb))
