"""Candle's ``candle_datasets::nlp::tinystories`` by its module path: importing this module gives
:mod:`candlejax.data.tinystories` itself (the module replaces itself in ``sys.modules``), so
``tinystories.Dataset.new(dir)`` and ``DatasetRandomIter.new(...)`` read as in Rust."""

import sys
from typing import TYPE_CHECKING

from candlejax.data import tinystories

if TYPE_CHECKING:  # what type checkers see: the names of the module this one becomes
    from candlejax.data.tinystories import Dataset as Dataset
    from candlejax.data.tinystories import DatasetRandomIter as DatasetRandomIter
    from candlejax.data.tinystories import TinyStoriesDataset as TinyStoriesDataset

sys.modules[__name__] = tinystories
