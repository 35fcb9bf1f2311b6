"""Convolutions, pooling and resizing (NCL / NCHW as Candle).

requires: candlejax.tensor._core (TensorBase, unwrap, checks), candlejax._dispatch.op
provides: ConvMixin
"""

from __future__ import annotations

from candlejax.tensor._core import TensorBase


class ConvMixin(TensorBase):
    __slots__ = ()
