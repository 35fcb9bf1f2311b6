"""Candle's ``candle_datasets::nlp``: ``nlp.tinystories`` is :mod:`candlejax.data.tinystories`.

>>> from candlejax.data.nlp import tinystories
>>> tinystories.Dataset.__name__, tinystories.DatasetRandomIter.__name__
('TinyStoriesDataset', 'DatasetRandomIter')
"""

from candlejax.data.nlp import tinystories

__all__ = ["tinystories"]
