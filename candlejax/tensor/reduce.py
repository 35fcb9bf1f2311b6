"""Reductions: sum, mean, max, min, argmax, argmin, var, log_sum_exp, *_all, cumsum, sort.

requires: candlejax.tensor._core (TensorBase, unwrap, checks), candlejax._dispatch.op
provides: ReduceMixin
"""

from __future__ import annotations

from candlejax.tensor._core import TensorBase


class ReduceMixin(TensorBase):
    __slots__ = ()
