"""Candle's ``candle_transformers::quantized_var_builder``: ``VarBuilder`` over the tensors of a GGUF
file (``VarBuilder.from_gguf(path, device)``, ``pp``, ``get``, ``get_no_shape``), which is
:class:`candlejax.quantized.VarBuilder`.

>>> from candlejax.models.quantized_var_builder import VarBuilder
"""

from candlejax.quantized.var_builder import VarBuilder

__all__ = ["VarBuilder"]
