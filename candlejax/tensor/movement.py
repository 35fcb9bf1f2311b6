"""Shape and view ops: reshape, transpose, permute, narrow, cat, stack, broadcast_*, pad, repeat, ...

requires: candlejax.tensor._core (TensorBase, unwrap, checks), candlejax._dispatch.op
provides: MovementMixin
"""

from __future__ import annotations

from candlejax.tensor._core import TensorBase


class MovementMixin(TensorBase):
    __slots__ = ()
