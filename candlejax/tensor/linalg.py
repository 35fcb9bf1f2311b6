"""Matrix products: matmul, broadcast_matmul, dot, mv, norm.

requires: candlejax.tensor._core (TensorBase, unwrap, checks), candlejax._dispatch.op
provides: LinalgMixin
"""

from __future__ import annotations

from candlejax.tensor._core import TensorBase


class LinalgMixin(TensorBase):
    __slots__ = ()
