"""``candlejax.Tensor``: Candle's Tensor on one ``jax.Array``, split by topic.

Each topic module holds a mixin (creation, movement, indexing, elementwise, reduce, linalg, conv,
convert); ``Tensor`` joins them and registers itself as a pytree so that Tensors (and Modules
holding them) pass straight through ``jax.jit``, ``grad``, ``vmap`` and ``lax.scan``.
"""

from __future__ import annotations

import jax

from candlejax.tensor import _core
from candlejax.tensor.conv import ConvMixin
from candlejax.tensor.convert import ConvertMixin
from candlejax.tensor.creation import CreationMixin
from candlejax.tensor.elementwise import ElementwiseMixin
from candlejax.tensor.indexing import IndexingMixin
from candlejax.tensor.linalg import LinalgMixin
from candlejax.tensor.movement import MovementMixin
from candlejax.tensor.reduce import ReduceMixin
from candlejax.tensor.torch_compat import TorchCompatMixin


class Tensor(
    CreationMixin,
    ConvertMixin,
    MovementMixin,
    IndexingMixin,
    ElementwiseMixin,
    ReduceMixin,
    LinalgMixin,
    ConvMixin,
    TorchCompatMixin,
):
    """An n-dimensional array, Candle's ``Tensor``, backed by a ``jax.Array``.

    ``Tensor(data)`` / ``Tensor.new(data, device)`` build one from Python scalars, nested lists,
    numpy or jax arrays; ``t.jax`` / ``np.asarray(t)`` give the values back.
    """

    __slots__ = ()


_core._Tensor = Tensor


def _flatten(t: Tensor):
    return (t._a,), None


def _unflatten(_aux, children):
    return Tensor._wrap(children[0])


jax.tree_util.register_pytree_node(Tensor, _flatten, _unflatten)

__all__ = ["Tensor"]
