"""Creating tensors: new, zeros, ones, full, arange, eye, rand, randn, *_like, from_vec, ...

requires: candlejax.tensor._core (TensorBase, unwrap, checks), candlejax._dispatch.op
provides: CreationMixin
"""

from __future__ import annotations

from candlejax.tensor._core import TensorBase


class CreationMixin(TensorBase):
    __slots__ = ()
