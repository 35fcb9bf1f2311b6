"""Candle's ``candle_transformers::quantized_nn``: layers over GGUF / quantised weights, by Candle's
names (``Linear``, ``Embedding``, ``RmsNorm``, ``linear``, ``linear_b``, ``linear_no_bias``,
``layer_norm``, ``layer_norm_no_bias``). They are :mod:`candlejax.nn.quantized`'s ``QLinear``,
``QEmbedding`` and ``QRmsNorm``.

>>> from candlejax.models.quantized_nn import Linear, linear_no_bias
"""

from candlejax.nn.quantized import (
    QEmbedding as Embedding,
)
from candlejax.nn.quantized import (
    QLinear as Linear,
)
from candlejax.nn.quantized import (
    QRmsNorm as RmsNorm,
)
from candlejax.nn.quantized import (
    layer_norm,
    layer_norm_no_bias,
    linear,
    linear_b,
    linear_no_bias,
)

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
