"""Candle's ``candle_transformers::quantized_nn``: layers over GGUF / quantised weights, by Candle's
names (``Linear``, ``Embedding``, ``RmsNorm``, ``linear``, ``linear_b``, ``linear_no_bias``,
``layer_norm``, ``layer_norm_no_bias``). They are :mod:`candlejax.nn.quantized`'s ``QLinear``,
``QEmbedding`` and ``QRmsNorm``.

>>> from candlejax.models.quantized_nn import Linear, linear_no_bias
"""

from candlejax.nn.quantized import (
    QEmbedding,
    QLinear,
    QRmsNorm,
    layer_norm,
    layer_norm_no_bias,
    linear,
    linear_b,
    linear_no_bias,
)

Embedding = QEmbedding
Linear = QLinear
RmsNorm = QRmsNorm

__all__ = [
    "Embedding",
    "Linear",
    "RmsNorm",
    "layer_norm",
    "layer_norm_no_bias",
    "linear",
    "linear_b",
    "linear_no_bias",
]
