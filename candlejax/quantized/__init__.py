"""Candle's ``candle::quantized``: GGML block types, ``QTensor``, ``QMatMul``, GGUF weights.

>>> from candlejax import Tensor
>>> from candlejax.quantized import GgmlDType, QTensor, QMatMul
>>> w, x = Tensor.randn(0.0, 1.0, (64, 64)), Tensor.randn(0.0, 1.0, (2, 64))
>>> q = QTensor.quantize(w, GgmlDType.Q4_0)        # w: (out, in) Tensor, in % 32 == 0
>>> QMatMul.from_qtensor(q).forward(x).shape       # x @ wᵀ, weights stay packed on the device
(2, 64)

GGUF files: :mod:`candlejax.io.gguf` (``gguf_file`` is an alias, as in Candle). Candle's per-block
``GgmlType`` API (``BlockQ4_0::from_float``, ``vec_dot``, ``matmul``): :mod:`candlejax.quantized.k_quants`;
llama.cpp imatrix files (``imatrix_file::load_imatrix``): :mod:`candlejax.quantized.imatrix_file`; legacy
GGML/GGJT model files (``ggml_file::Content::read``): :mod:`candlejax.quantized.ggml_file`.
The 32-value block types (``BLOCKED_TYPES``) can be held unpacked as a ``BlockedWeight``
(``unpack_blocked`` from the file's bytes; ``aligned_empty`` / ``place_aligned`` hand host arrays to
the CPU runtime without a copy), as the GGUF LLaMA loader does. Q4_0/Q4_1 weights are kept in their
file layout as a ``PackedWeight`` when the native kernel is built (:mod:`candlejax.quantized.native`).
"""

import importlib

from candlejax.quantized import imatrix_file, k_quants
from candlejax.quantized.blocked import SUPPORTED as BLOCKED_TYPES
from candlejax.quantized.blocked import BlockedWeight, aligned_empty
from candlejax.quantized.blocked import place as place_aligned
from candlejax.quantized.blocked import unpack as unpack_blocked
from candlejax.quantized.ggml_types import QK_K, GgmlDType, dequantize_np, quantize_np
from candlejax.quantized.jax_dequant import dequantize_rows
from candlejax.quantized.packed import SUPPORTED as PACKED_TYPES
from candlejax.quantized.packed import PackedWeight
from candlejax.quantized.qtensor import QMatMul, QTensor, byte_shape
from candlejax.quantized.var_builder import VarBuilder  # noqa: F401  (not in __all__: nn's VarBuilder keeps the name)


def __getattr__(name: str):  # gguf_file / ggml_file are imported lazily: candlejax.io imports this package
    if name == "gguf_file":
        from candlejax.io import gguf

        return gguf
    if name == "ggml_file":  # candle::quantized::ggml_file
        return importlib.import_module("candlejax.quantized.ggml_file")
    raise AttributeError(f"module 'candlejax.quantized' has no attribute {name!r}")


__all__ = [
    "BLOCKED_TYPES",
    "BlockedWeight",
    "QK_K",
    "GgmlDType",
    "PACKED_TYPES",
    "PackedWeight",
    "QMatMul",
    "QTensor",
    "aligned_empty",
    "byte_shape",
    "dequantize_np",
    "dequantize_rows",
    "imatrix_file",
    "k_quants",
    "place_aligned",
    "quantize_np",
    "unpack_blocked",
]
