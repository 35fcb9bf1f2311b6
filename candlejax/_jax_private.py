"""Every use of JAX's private modules (``jax._src``), in one place, behind :data:`AVAILABLE`.

candlejax needs JAX internals for two speed-ups: the trace-state check behind
``candlejax._dispatch.is_eager`` (~0.2 µs; the public fallback reads an opaque trace state and
compares it with the eager one) and rebuilding a ``jax.jit`` object's C++ fast path with another
cache-miss handler, which hosts the eager shape buckets (without it a small Python gate does the same;
see docs/performance.md); an explicit device-to-host read of one array without ``jax.device_get``'s
pytree walk (:func:`read_to_host`, ~2 µs instead of ~18 per read, in the per-token paths); and for
one error message: naming the fix when a Tensor reaches JAX where it needs an array value
(:func:`name_non_array`); and emptying JAX's caches of traced and lowered computations while its
jitted functions keep their compiled programs (:func:`drop_tracing_caches`). The imports run inside
``try``: with a JAX whose internals moved, :data:`AVAILABLE` is False and every function here
answers through public JAX (or ``None``), so results stay the same. ``CANDLEJAX_JAX_PRIVATE=0`` forces that path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from candlejax._config import env_off

try:
    from jax._src import core as _core
    from jax._src import pjit as _pjit
    from jax._src import tree_util as _tu
    from jax._src import util as _util
    from jax._src.config import explicit_device_get_scope as _explicit_device_get_scope
    from jax._src.interpreters import pxla as _pxla
    from jax._src.lib import _jax

    AVAILABLE: bool = not env_off("CANDLEJAX_JAX_PRIVATE")
except Exception:  # another JAX version: public API only
    AVAILABLE = False


def _eager_public() -> Callable[[], bool] | None:
    """``is_eager`` on public API: the current (opaque) trace state equals the eager one."""
    try:
        from jax.extend.core import get_opaque_trace_state

        with jax.core.eval_context():
            eager = get_opaque_trace_state()
    except Exception:  # a JAX without these
        return None

    def is_eager() -> bool:
        return get_opaque_trace_state() == eager

    return is_eager


def _no_trace_check() -> bool:
    raise ImportError(
        "candlejax: this JAX has neither jax.extend.core.get_opaque_trace_state nor"
        " jax._src.core.trace_state_clean; use the JAX version in requirements"
    )


#: ``is_eager`` through public JAX only (what :data:`is_eager` is when :data:`AVAILABLE` is False).
is_eager_public: Callable[[], bool] = _eager_public() or _no_trace_check
#: True when no JAX trace is active (plain eager Python).
is_eager: Callable[[], bool] = _core.trace_state_clean if AVAILABLE else is_eager_public

_CPP_CACHE: list[Any] = []


def rebuild_jit(jitted: Any, hook: Callable[[tuple[Any, ...], dict[str, Any]], tuple[Any, bool]]) -> Any:
    """A copy of JAX's C++ jit object for ``jitted`` (a ``jax.jit``), with its own cache, whose
    cache misses first ask ``hook(args, kwargs)`` -> ``(out, clear)``.

    An ``out`` that is not ``None`` is returned without fast-path data, so JAX's C++ cache sends later
    calls with those shapes back to the hook. Otherwise JAX's own miss handler runs (after clearing
    this copy's C++ cache when ``clear``), and the next call with these shapes takes the fast path.
    ``None`` when :data:`AVAILABLE` is False or this JAX version's internals differ.
    """
    if not AVAILABLE:
        return None
    try:
        info, fun, miss = jitted._jit_info, jitted._fun, jitted._cache_miss
        key = _pxla.JitGlobalCppCacheKeys(
            donate_argnums=info.donate_argnums, donate_argnames=info.donate_argnames,
            device=info.device, backend=info.backend,
            in_shardings_treedef=info.in_shardings_treedef, in_shardings_leaves=info.in_shardings_leaves,
            out_shardings_treedef=info.out_shardings_treedef, out_shardings_leaves=info.out_shardings_leaves,
            in_layouts_treedef=info.in_layouts_treedef, in_layouts_leaves=info.in_layouts_leaves,
            out_layouts_treedef=info.out_layouts_treedef, out_layouts_leaves=info.out_layouts_leaves,
            compiler_options_kvs=info.compiler_options_kvs,
        )  # fmt: skip
        if not _CPP_CACHE:
            _CPP_CACHE.append(_jax.PjitFunctionCache(capacity=4096))
        holder: list[Any] = []

        def cache_miss(*args: Any, **kwargs: Any) -> Any:
            out, clear = hook(args, kwargs)
            if out is not None:
                return out, None, False
            if clear:
                holder[0]._clear_cache()
            return miss(*args, **kwargs)

        f = _jax.pjit(
            _pjit.fun_name(fun), fun, cache_miss, info.static_argnums, info.static_argnames, key,
            _tu.dispatch_registry, _pxla.cc_shard_arg, _CPP_CACHE[0],  # ours: JAX's global one is shared
        )  # fmt: skip
    except Exception:  # another JAX version
        return None
    if not (hasattr(f, "_clear_cache") and hasattr(f, "_cache_size")):
        return None
    holder.append(f)
    return f


def name_non_array(cls: type, make_error: Callable[[Any], Exception]) -> None:
    """Raise ``make_error(x)`` where JAX asks for the abstract value of an instance ``x`` of ``cls``
    (``jax.typeof``; the result of a function given to ``jax.grad``), instead of JAX's ValueError
    ("Triggering __jax_array__() during abstractification is no longer supported"): a pytree that
    wraps an array is not itself an array value. A no-op where :data:`AVAILABLE` is False."""
    if not AVAILABLE:
        return
    try:
        mappings = _core.pytype_aval_mappings
    except AttributeError:  # another JAX version
        return

    def raise_named(x: Any) -> Any:
        raise make_error(x)

    mappings[cls] = raise_named


def read_to_host(x: Any) -> Any:
    """``jax.device_get(x)`` for one array, explicit for ``jax.transfer_guard`` as that is, without the
    pytree walk (``np.asarray`` inside JAX's explicit-read scope). Tracers and non-arrays come back as given."""
    if not AVAILABLE or isinstance(x, _core.Tracer) or not isinstance(x, jax.Array):
        return jax.device_get(x)
    with _explicit_device_get_scope():
        return np.asarray(x)


def drop_tracing_caches() -> bool:
    """Empty JAX's caches of traced, lowered and compiled computations that ``jax.clear_caches()``
    empties besides the jitted functions' own C++ caches: every jitted function that has run keeps
    its compiled program and runs it without tracing again, while a new trace traces the
    ``jax.numpy`` functions it calls afresh. After a large program is compiled these caches hold
    ~3 MiB of its tracing (SmolLM2's generation programs). Returns False, having done nothing, where
    :data:`AVAILABLE` is False or this JAX version's internals differ."""
    if not AVAILABLE:
        return False
    try:
        _util.clear_all_caches()
    except Exception:  # another JAX version
        return False
    return True
