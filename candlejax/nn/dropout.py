"""``Dropout``: a ``ModuleT`` that zeroes activations with probability ``p`` in training. Defined in
:mod:`candlejax.nn.ops`, as Candle's ``candle_nn::ops::Dropout``; this module keeps the name's
older path.

requires: candlejax.nn.ops
provides: ``Dropout``
"""

from __future__ import annotations

from candlejax.nn.ops import Dropout

__all__ = ["Dropout"]
