"""Candle's ``candle_datasets::nlp::tinystories`` by its module path: importing this module gives
:mod:`candlejax.data.tinystories` itself (the module replaces itself in ``sys.modules``), so
``tinystories.Dataset.new(dir)`` and ``DatasetRandomIter.new(...)`` read as in Rust."""

import sys

from candlejax.data import tinystories

sys.modules[__name__] = tinystories
