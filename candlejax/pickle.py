"""Candle's ``candle::pickle``: PyTorch checkpoints read without executing pickled code, by Candle's
names (``read_all``, ``read_all_with_key``, ``read_pth_tensor_info``, ``PthTensors``); it is
:mod:`candlejax.io.pth` itself.

``from candlejax import pickle`` then ``pickle.read_all(path)`` as in Rust's ``candle::pickle::read_all``.
Importing this module gives :mod:`candlejax.io.pth` (the module replaces itself in ``sys.modules``), so
``candlejax.pickle`` is that one module object however it is reached. Python's own :mod:`pickle` is
untouched (``import pickle`` is absolute).
"""

import sys
from typing import TYPE_CHECKING

from candlejax.io import pth

if TYPE_CHECKING:  # what type checkers see: the names of the module this one becomes
    from candlejax.io.pth import *  # noqa: F403

sys.modules[__name__] = pth
