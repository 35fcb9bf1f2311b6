"""Elementwise ops: unary, binary (strict and broadcast_*), scalar, comparisons, Python operators.

requires: candlejax.tensor._core (TensorBase, unwrap, checks), candlejax._dispatch.op
provides: ElementwiseMixin
"""

from __future__ import annotations

from candlejax.tensor._core import TensorBase


class ElementwiseMixin(TensorBase):
    __slots__ = ()
