"""Candle's ``candle_datasets::batcher``: ``Batcher`` (``new1`` / ``new2`` / ``new_r1`` / ``new_r2``,
``batch_size``, ``return_last_incomplete_batch``) by its module path; it is :class:`candlejax.data.Batcher`.

>>> from candlejax.data.batcher import Batcher
>>> import candlejax
>>> Batcher is candlejax.data.Batcher
True
"""

from candlejax.data._batcher import Batcher, IterBatcher

__all__ = ["Batcher", "IterBatcher"]
