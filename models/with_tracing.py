"""Candle's ``candle_transformers::models::with_tracing``: the layers candle-transformers' models
build on, with the constructors of that module (which differ from ``candle_nn``'s in places).

Candle wraps each ``candle_nn`` layer with a tracing span; here they are the ``candlejax.nn``
layers themselves (subclasses whose constructors take Candle's ``with_tracing`` arguments), so
they compile, differentiate and flatten as those do. Profiling is JAX's (``jax.profiler``).

>>> from candlejax import DType, Device, Tensor
>>> from candlejax.models import with_tracing
>>> from candlejax.nn import VarBuilder, VarMap
>>> vb = VarBuilder.from_varmap(VarMap(), DType.F32, Device.Cpu)
>>> emb = with_tracing.Embedding.new(10, 4, vb.pp("emb"))        # Embedding::new(d1, d2, vb)
>>> norm = with_tracing.RmsNorm.new(4, 1e-6, vb.pp("norm"))      # RmsNorm::new(size, eps, vb)
>>> lin = with_tracing.linear(4, 3, vb.pp("fc"))                 # with_tracing::linear(4, 3, vb)
>>> lin.forward(norm.forward(emb.forward(Tensor.new([[1, 2]], dtype=DType.U32)))).dims()
(1, 2, 3)
"""

from __future__ import annotations

from typing import Any

import jax

from candlejax import nn
from candlejax.nn.conv import Conv2d, Conv2dConfig
from candlejax.nn.embedding import Embedding as _NnEmbedding
from candlejax.nn.linear import Linear as _NnLinear
from candlejax.nn.norm import LayerNorm as _NnLayerNorm
from candlejax.nn.norm import LayerNormConfig
from candlejax.nn.norm import RmsNorm as _NnRmsNorm
from candlejax.quantized.qtensor import QMatMul as _QMatMul
from candlejax.quantized.qtensor import QTensor
from candlejax.tensor import Tensor

__all__ = [
    "Conv2d",
    "Embedding",
    "LayerNorm",
    "Linear",
    "QMatMul",
    "RmsNorm",
    "conv2d",
    "layer_norm",
    "linear",
    "linear_b",
    "linear_no_bias",
]


class Embedding(_NnEmbedding):
    """``with_tracing::Embedding``: ``new(d1, d2, vb)`` reads ``weight`` ``(d1, d2)``;
    ``from_weights(table)`` takes the table as it is (PyTorch: ``nn.Embedding``)."""

    @staticmethod
    def new(d1: int, d2: int, vb: Any) -> Embedding:  # type: ignore[override]
        """Candle's ``with_tracing::Embedding::new(d1, d2, vb)``: a ``(d1, d2)`` table from ``vb``."""
        return Embedding(nn.embedding(d1, d2, vb).embeddings())

    @staticmethod
    def from_weights(weights: Any) -> Embedding:
        """Candle's ``with_tracing::Embedding::from_weights(weights)``."""
        return Embedding(weights)


class Linear(_NnLinear):
    """``with_tracing::Linear``: ``from_weights(weight (out, in), bias)`` (PyTorch: ``nn.Linear``)."""

    @staticmethod
    def from_weights(weights: Any, bias: Any = None) -> Linear:
        """Candle's ``with_tracing::Linear::from_weights(weights, bias)``."""
        return Linear(weights, bias)


def linear_b(d1: int, d2: int, b: bool, vb: Any) -> Linear:
    """``with_tracing::linear_b(in, out, bias, vb)``."""
    inner = nn.linear_b(d1, d2, b, vb)
    return Linear(inner.weight, inner.bias)


def linear(d1: int, d2: int, vb: Any) -> Linear:
    """``with_tracing::linear(in, out, vb)``: ``weight`` and ``bias``."""
    return linear_b(d1, d2, True, vb)


def linear_no_bias(d1: int, d2: int, vb: Any) -> Linear:
    """``with_tracing::linear_no_bias(in, out, vb)``: ``weight`` only."""
    return linear_b(d1, d2, False, vb)


def conv2d(in_channels: int, out_channels: int, kernel_size: int, cfg: Conv2dConfig, vb: Any) -> Conv2d:
    """``with_tracing::conv2d``: ``candle_nn::conv2d`` (weight and bias)."""
    return nn.conv2d(in_channels, out_channels, kernel_size, cfg, vb)


class QMatMul(_QMatMul):
    """``with_tracing::QMatMul``: ``new(out_dim, in_dim, vb)`` reads ``weight`` of shape ``(in_dim,
    out_dim)`` from a quantized VarBuilder (``quantized_var_builder::VarBuilder``), as Candle does:
    its callers pass ``(in_features, out_features)`` for an ``(out, in)`` weight
    (``quantized_nn::linear``); ``from_weights(qtensor)``."""

    __slots__ = ()

    @staticmethod
    def new(out_dim: int, in_dim: int, vb: Any) -> QMatMul:
        """Candle's ``with_tracing::QMatMul::new(out_dim, in_dim, vb)``: the quantized ``weight`` from ``vb``."""
        return QMatMul.from_weights(vb.get((in_dim, out_dim), "weight"))

    @staticmethod
    def from_weights(ws: QTensor) -> QMatMul:
        """Candle's ``with_tracing::QMatMul::from_weights(ws)``."""
        w = _QMatMul.from_qtensor(ws).weight  # the layout QMatMul keeps (packed / blocked / dense)
        return QMatMul(w.jax if isinstance(w, Tensor) else w)


jax.tree_util.register_pytree_node(QMatMul, lambda m: ((m._w,), None), lambda _aux, ch: QMatMul(ch[0]))


class LayerNorm(_NnLayerNorm):
    """``with_tracing::LayerNorm``: ``new(weight, bias, eps)`` (PyTorch: ``nn.LayerNorm``)."""

    @staticmethod
    def new(weight: Any, bias: Any, eps: float) -> LayerNorm:
        """Candle's ``with_tracing::LayerNorm::new(weight, bias, eps)``."""
        return LayerNorm(weight, bias, eps)


def layer_norm(size: int, c: LayerNormConfig | float, vb: Any) -> LayerNorm:
    """``with_tracing::layer_norm(size, config_or_eps, vb)``."""
    inner = nn.layer_norm(size, c, vb)
    return LayerNorm(inner.weight, inner.bias, inner.eps, inner.remove_mean)


class RmsNorm(_NnRmsNorm):
    """``with_tracing::RmsNorm``: ``new(size, eps, vb)`` reads ``weight`` ``(size,)``;
    ``forward_diff`` is the differentiable path (every path is, here)."""

    @staticmethod
    def new(size: int, eps: float, vb: Any) -> RmsNorm:  # type: ignore[override]
        """Candle's ``with_tracing::RmsNorm::new(size, eps, vb)``."""
        return RmsNorm(nn.rms_norm(size, eps, vb).weight, eps)
