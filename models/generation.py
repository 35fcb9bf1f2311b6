"""Candle's ``candle_transformers::generation``: ``LogitsProcessor`` and ``Sampling``, which are
:mod:`candlejax.generation`'s (the same seed draws Candle's tokens).

>>> from candlejax.models.generation import LogitsProcessor, Sampling
>>> LogitsProcessor.from_sampling(42, Sampling.TopK(k=1, temperature=1.0)).sample([0.1, 0.2, 0.3, 0.4])
3
"""

from candlejax.generation import LogitsProcessor, Sampling

__all__ = ["LogitsProcessor", "Sampling"]
