"""Checks shared by the readers in ``candlejax.io``.

requires: nothing
provides: ``MAX_NBYTES``, ``shape_fits(shape, itemsize)``
"""

from __future__ import annotations

from collections.abc import Sequence

#: numpy's (and XLA's) limit on an array's size in bytes, counting zero dims as 1.
MAX_NBYTES = 2**63 - 1


def shape_fits(shape: Sequence[int], itemsize: float) -> bool:
    """Whether an array of ``shape`` could exist: the product of its dims, zeros counted as 1, times
    ``itemsize`` fits in ``MAX_NBYTES`` (numpy refuses (0, 2**62) of f4 with "array is too big")."""
    n = 1
    for d in shape:
        n *= max(int(d), 1)
    return n * itemsize <= MAX_NBYTES


__all__ = ["MAX_NBYTES", "shape_fits"]
