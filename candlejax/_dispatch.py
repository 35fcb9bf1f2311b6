"""How an op reaches XLA.

Eagerly, every op runs through a ``jax.jit`` built once per op and cached by JAX's C++ fast path
(static arguments such as axes and shapes are part of its key): one cached executable call per op
instead of a chain of un-jitted primitives. Under a trace (``jax.jit``, ``grad``, ``vmap``, ``scan``)
the plain function is called instead, so a jitted candlejax function lowers to exactly the HLO of
the hand-written ``jax.numpy`` code, with no nested calls. An eager out-of-memory failure
(XLA's ``RESOURCE_EXHAUSTED``) surfaces as :class:`candlejax.errors.OutOfMemory`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import jax
from jax._src import core as _jcore

from candlejax import errors

_RuntimeError = jax.errors.JaxRuntimeError

F = TypeVar("F", bound=Callable[..., Any])

#: True when no JAX trace is active (plain eager Python). ~0.2 µs.
is_eager: Callable[[], bool] = _jcore.trace_state_clean

Tracer = jax.core.Tracer


def op(fn: F | None = None, *, static: tuple[str, ...] = ()) -> Any:
    """Decorate a pure function of jax arrays so that eager calls hit a cached ``jax.jit``.

    ``static`` names keyword arguments that are compile-time constants (axes, shapes, flags);
    they must be passed by keyword and be hashable (tuples, not lists).
    """

    def wrap(f: F) -> F:
        jitted = jax.jit(f, static_argnames=static) if static else jax.jit(f)

        @functools.wraps(f)
        def call(*args: Any, **kwargs: Any) -> Any:
            if is_eager():
                try:
                    return jitted(*args, **kwargs)
                except _RuntimeError as e:
                    raise errors.out_of_memory(f.__name__.lstrip("_"), e) from e
            return f(*args, **kwargs)

        call.raw = f  # type: ignore[attr-defined]
        call.jitted = jitted  # type: ignore[attr-defined]
        return call  # type: ignore[return-value]

    return wrap(fn) if fn is not None else wrap
