"""Leaving or changing representation: to_dtype, to_device, to_vec*, numpy/torch/DLPack, repr.

requires: candlejax.tensor._core (TensorBase, unwrap, checks), candlejax._dispatch.op
provides: ConvertMixin
"""

from __future__ import annotations

from candlejax.tensor._core import TensorBase


class ConvertMixin(TensorBase):
    __slots__ = ()
