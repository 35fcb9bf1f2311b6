"""What every candlejax cache shares: the tuples an ``append`` returns (``KeysValues``,
``DataAndCache``), the error a dropped result raises (``CacheStatement``, ``_rebind``) and zeroed
buffers placed without a compiled program (``_zeros``).

requires: candlejax._discarded, candlejax._dispatch, candlejax.errors
provides: ``KeysValues``, ``DataAndCache``, ``CacheStatement``, ``_AppendResult``, ``_rebind``, ``_zeros``;
used by ``candlejax.nn.kv_cache`` and ``candlejax.nn.kv_cache_scattered``
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax._discarded import caller_discards_result
from candlejax._dispatch import is_eager

__all__ = ["CacheStatement", "DataAndCache", "KeysValues"]


#: what a KV cache, or the pair its ``append`` returns, says when it is used as a tensor
#: (``candlejax.tensor._core.not_a_tensor``)
_APPEND_HINT = "a KV cache's append returns ((k, v), new_cache): write `(k, v), cache = cache.append(k, v)`"
#: the same for a single-tensor cache (``Cache``, ``RotatingCache``) and its ``(data, new_cache)`` pair
_CACHE_HINT = "a cache's append returns (data, new_cache): write `data, cache = cache.append(x)`"


class _AppendResult(tuple):
    """A tuple that a cache's ``append`` returns: unpacked it is a plain tuple, but used as a tensor
    (an attribute, arithmetic) it raises at once with the class's ``not_a_tensor_hint``, the
    spelling that unpacks it. Every subclass is registered as a pytree (jitted steps return it)."""

    __slots__ = ()
    not_a_tensor_hint = ""
    _holds = "the tuple a cache's append returns"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_node(cls, lambda t: (tuple(t), None), lambda _, children: cls(children))

    def __getattr__(self, name: str) -> Any:
        raise self._misused(f"it has no .{name}")

    def _misused(self, what: str) -> errors.Msg:
        return errors.Msg(f"this is {self._holds}, not a tensor ({what}): {self.not_a_tensor_hint}")

    def _arith(self, *_: Any) -> Any:
        raise self._misused("arithmetic on it")

    def __add__(self, other: Any) -> Any:  # tuples still concatenate
        return tuple.__add__(self, other) if isinstance(other, tuple) else self._arith()

    def __radd__(self, other: Any) -> Any:
        return other + tuple(self) if isinstance(other, tuple) else self._arith()

    __mul__ = __rmul__ = __sub__ = __rsub__ = __truediv__ = __rtruediv__ = _arith
    __matmul__ = __rmatmul__ = __pow__ = __neg__ = _arith


class KeysValues(_AppendResult):
    """The ``(keys, values)`` pair a cache's ``append`` returns beside the new cache: a plain tuple.

    Candle's ``let (k, v) = cache.append(&k, &v)?`` ported as ``k, v = cache.append(k, v)`` would bind
    this pair to ``k`` and the new cache to ``v``; used as a tensor, the pair raises at once, naming
    the candlejax spelling ``(k, v), cache = cache.append(k, v)``.
    """

    __slots__ = ()
    not_a_tensor_hint = _APPEND_HINT
    _holds = "the (keys, values) pair a KV cache's append returns"


class DataAndCache(_AppendResult):
    """The ``(data, new_cache)`` pair that :meth:`Cache.append` and :meth:`RotatingCache.append`
    return: a plain tuple to unpack, ``data, cache = cache.append(x)``. ``x = cache.append(x)``
    (Candle's ``cache.append(&x)?`` updates the cache in place) binds the pair, which raises at its
    first use as a tensor, naming that spelling.
    """

    __slots__ = ()
    not_a_tensor_hint = _CACHE_HINT
    _holds = "the (data, new_cache) pair a cache's append returns"


class CacheStatement(errors.InPlaceStatement):
    """A cache's ``append`` / ``reset`` written as a statement (Candle's ``cache.append(&x)?;``,
    ``cache.reset();``): candlejax caches are values, so the statement would change nothing."""

    def __init__(self, call: str, rebind: str):
        self.call = call
        errors.Error.__init__(
            self,
            f"{call} returns the new cache and leaves this one unchanged (candlejax caches are values; Candle's"
            f" updates the cache in place): rebind the result, {rebind}",
        )


def _rebind(spelling: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a cache method raise :class:`CacheStatement` naming ``spelling`` when its caller drops the
    result (a bare statement, which ported from Candle would silently change nothing)."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            out = f(self, *args, **kwargs)
            if caller_discards_result():  # checked after the call: argument errors come first
                raise CacheStatement(f"{type(self).__name__}.{f.__name__}", spelling)
            return out

        return method

    return deco


def _zeros(shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
    """Zeros on ``device``. Eagerly on a CPU device a zeroed host buffer is placed there: no
    broadcast program is compiled for the cache's shape (each XLA:CPU executable keeps ~3 MiB)."""
    if is_eager() and getattr(device, "platform", None) == "cpu":
        return jax.device_put(np.zeros(shape, dtype), device)
    return jax.device_put(jnp.zeros(shape, dtype), device)
