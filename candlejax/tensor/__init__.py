"""``candlejax.Tensor``: Candle's Tensor on one ``jax.Array``, split by topic.

Each topic module holds a mixin (creation, movement, indexing, elementwise, reduce, linalg, conv,
convert); ``Tensor`` joins them and registers itself as a pytree so that Tensors (and Modules
holding them) pass straight through ``jax.jit``, ``grad``, ``vmap`` and ``lax.scan``.
"""

from __future__ import annotations

import inspect
import sys
import types
from typing import Any

import jax
import numpy as np

from candlejax import _jax_private, _reload, errors
from candlejax.dtype import NUMPY_TO_DTYPE
from candlejax.tensor import _core
from candlejax.tensor.conv import ConvMixin
from candlejax.tensor.convert import ConvertMixin
from candlejax.tensor.creation import CreationMixin, _from_host
from candlejax.tensor.elementwise import ElementwiseMixin
from candlejax.tensor.indexing import IndexingMixin
from candlejax.tensor.linalg import LinalgMixin
from candlejax.tensor.movement import MovementMixin
from candlejax.tensor.reduce import ReduceMixin
from candlejax.tensor.torch_compat import TorchCompatMixin

_reload.refuse(__name__)  # a re-run would redefine the classes of existing objects


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

    def apply(self, m: Any) -> Any:
        """``xs.apply(&m)``: ``m.forward(xs)`` for a Module, ``m(xs)`` for a function (Candle's closures).

        >>> Tensor.new([-1.0, 2.0]).apply(lambda t: t.relu()).to_vec1()
        [0.0, 2.0]
        """
        if m is None:  # Candle's `Module for Option<&M>`: None is the identity
            return self
        fwd = getattr(m, "forward", None)
        if fwd is not None:
            return fwd(self)
        if callable(m):
            return m(self)
        raise TypeError(f"apply: expected a Module or a function, got {type(m).__name__}")

    def apply_t(self, m: Any, train: bool) -> Any:
        """``xs.apply_t(&m, train)``: ``m.forward_t(xs, train)`` (Candle's ``ModuleT``).

        As in Candle every Module is a ModuleT that ignores ``train``: ``m.forward(xs)``, a function
        of ``xs`` alone, and ``None`` (the identity) work too; a function of two positional
        arguments is called as ``m(xs, train)``.
        """
        if m is None:
            return self
        fwd = getattr(m, "forward_t", None)
        if fwd is not None:
            return fwd(self, train)
        fwd = getattr(m, "forward", None)
        if fwd is not None:
            return fwd(self)
        if callable(m):
            return m(self, train) if _positional_arity(m) >= 2 else m(self)
        raise TypeError(f"apply_t: expected a ModuleT, a Module or a function, got {type(m).__name__}")


def _positional_arity(f: Any) -> int:
    """How many positional arguments ``f`` takes (2 for ``*args``, and when it cannot be told)."""
    try:
        params = inspect.signature(f).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


_core._Tensor = Tensor

# The topic modules annotate their methods ``-> Tensor`` but cannot import Tensor (it is made of their
# mixins): they import it under TYPE_CHECKING for type checkers, and here, once it exists, the name is
# set in their namespaces so that ``typing.get_type_hints`` resolves it at runtime.
for _mixin in Tensor.__mro__[1:]:
    if _mixin.__module__.startswith(__name__ + "."):
        sys.modules[_mixin.__module__].Tensor = Tensor  # type: ignore[attr-defined]
del _mixin


def _flatten(t: Tensor):
    return (t._a,), None


def _unflatten(_aux, children):
    a = children[0]
    if isinstance(a, np.ndarray) and a.dtype in NUMPY_TO_DTYPE:  # jax.device_get(t), tree.map(np.asarray, ...)
        a = _from_host(a)  # a Tensor holds a jax array; other leaves (ShapeDtypeStruct, None, float0) stay
    return Tensor._wrap(a)


jax.tree_util.register_pytree_node(Tensor, _flatten, _unflatten)


def _not_an_array_value(t: Any) -> Exception:
    return errors.TracingError(
        f"a candlejax Tensor ({t.dtype}{list(t.shape)}) was given to JAX where it needs an array value (returned"
        " by a function passed to jax.grad / jax.value_and_grad, or passed to jax.typeof): use the array `t.jax`"
        " (`return loss.jax`), or candlejax.grad / candlejax.value_and_grad, which take a function returning a"
        " Tensor"
    )


_jax_private.name_non_array(_core.TensorBase, _not_an_array_value)

unwrap = _core.unwrap  # the one Tensor -> jax array helper (other values pass through)
wrap = _core.wrap  # a Tensor around a jax array or tracer (no copy)
int_arg = _core.int_arg  # a position, length or count as an int (floats and bools raise NotAnInteger)
float_arg = _core.float_arg  # a real-valued setting as a finite float (strings and None raise ArgumentType)


class _CallableModule(types.ModuleType):
    """This package, callable as candle-pyo3's ``candle.tensor(data)`` is: ``candlejax.tensor([1, 2])``
    is ``Tensor([1, 2])``, while ``candlejax.tensor.Tensor`` and its submodules stay reachable."""

    def __call__(self, data: Any) -> Tensor:
        return Tensor(data)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["Tensor", "float_arg", "int_arg", "unwrap", "wrap"]


_reload.loaded(__name__)
