"""Indexing: i(), [], index_select, gather, scatter, index_add, slice_assign, where_cond, embedding.

requires: candlejax.tensor._core (TensorBase, unwrap, checks), candlejax._dispatch.op
provides: IndexingMixin
"""

from __future__ import annotations

from candlejax.tensor._core import TensorBase


class IndexingMixin(TensorBase):
    __slots__ = ()
