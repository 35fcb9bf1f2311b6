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
import math
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np

from candlejax import _jax_private, errors
from candlejax._config import env_off
from candlejax.device import Device, single_device

_RuntimeError = jax.errors.JaxRuntimeError

F = TypeVar("F", bound=Callable[..., Any])

#: True when no JAX trace is active (plain eager Python). ~0.2 µs (JAX's own check; through public
#: JAX when candlejax._jax_private cannot use it).
is_eager: Callable[[], bool] = _jax_private.is_eager

Tracer = jax.core.Tracer


def op(fn: F | None = None, *, static: tuple[str, ...] = (), elementwise: bool = False,
       rowwise: str | None = None, rowwise_float: bool = True) -> Any:
    """Decorate a pure function of jax arrays so that eager calls hit a cached ``jax.jit``.

    ``static`` names keyword arguments that are compile-time constants (axes, shapes, flags);
    they must be passed by keyword and be hashable (tuples, not lists). ``elementwise`` marks a
    function whose output element ``i`` depends only on input element ``i`` (array arguments of one
    shape, or broadcastable, plus scalars): eager calls on a CPU shape seen for the first time then
    run through a shape bucket (see :func:`bucketed`) instead of compiling for that exact shape.
    ``rowwise`` names the static keyword holding the axis (or axes) of a one-array function that
    works independently on each slice along those axes (a reduction over them, or a softmax /
    cumulative sum along them): when the axes are the trailing ones, a new shape runs with its
    leading dimensions padded to powers of two (bit-identical rows, sliced back). ``rowwise_float=False``
    keeps float inputs off the row buckets, for a reduction whose float result depends on XLA's order
    within a row, which changes with the row count (a max over +0.0 and -0.0 returns the first met).
    """

    def wrap(f: F) -> F:
        if elementwise:
            f = _any_rank(f)
        jitted = jax.jit(f, static_argnames=static) if static else jax.jit(f)
        fast = bucketed(jitted, rowwise, rowwise_float) if elementwise or rowwise else jitted

        @functools.wraps(f)
        def call(*args: Any, **kwargs: Any) -> Any:
            if is_eager():
                if not single_device():
                    check_devices(f.__name__.lstrip("_"), args, kwargs.values())
                try:
                    return fast(*args, **kwargs)
                except ValueError as e:
                    if "incompatible devices" in str(e):
                        raise device_mismatch(f.__name__.lstrip("_"), args) from None
                    if "deleted or donated" in str(e):  # a compiled op run on a donated buffer
                        raise errors.DeletedBuffer(f.__name__.lstrip("_")) from None
                    raise
                except MemoryError as e:  # a host (numpy) array of the trace, e.g. resize indices
                    raise errors.out_of_memory(f.__name__.lstrip("_"), e) from e
                except RuntimeError as e:
                    if "has been deleted" in str(e):
                        raise errors.DeletedBuffer(f.__name__.lstrip("_")) from None
                    oom = errors.out_of_memory(f.__name__.lstrip("_"), e)
                    if oom is e:
                        raise
                    raise oom from e
            return f(*args, **kwargs)

        call.raw = f  # type: ignore[attr-defined]
        call.jitted = fast  # type: ignore[attr-defined]
        call.exact = jitted  # type: ignore[attr-defined]
        return call  # type: ignore[return-value]

    return wrap(fn) if fn is not None else wrap


def _any_rank(f: F) -> F:
    """``f`` traced with JAX's ``jax_numpy_rank_promotion`` at ``allow``: an elementwise op broadcasts
    operands of different ranks by definition (Candle's ``broadcast_add``), whatever the user's setting,
    and its shape bucket (which flattens the operands) gives the same result as its exact executable."""

    @functools.wraps(f)
    def g(*args: Any, **kwargs: Any) -> Any:
        with jax.numpy_rank_promotion("allow"):
            return f(*args, **kwargs)

    return g  # type: ignore[return-value]


def check_devices(op_name: str, *groups: Any) -> None:
    """Candle's ``same_device`` for the float arrays of an eager op (in ``groups``, iterables of
    arguments, each an array or a tuple / list of them): single-device ones on two devices raise
    ``DeviceMismatchBinaryOp`` (JAX would move an uncommitted ``Device.Cpu`` array onto the other
    device without a word). Sharded arrays are left to JAX."""
    first = None
    for group in groups:
        for item in group:
            for a in item if isinstance(item, (tuple, list)) else (item,):
                # integer / bool arrays and rank-0 ones are left out: a cache's positions, slot tables
                # and masks are bookkeeping made on the default device
                if isinstance(a, jax.Array) and a.ndim and not isinstance(a, Tracer) \
                        and jax.numpy.issubdtype(a.dtype, jax.numpy.inexact):  # fmt: skip
                    devs = a.devices()
                    if len(devs) != 1:
                        continue
                    if first is None:
                        first = devs
                    elif devs != first:
                        raise device_mismatch(op_name, [list(g) for g in groups])


def device_mismatch(op_name: str, arrays: Any) -> Exception:
    """Candle's ``DeviceMismatchBinaryOp`` for an op whose inputs live on two devices (naming both)."""
    seen = []
    for a in jax.tree_util.tree_leaves(arrays):
        try:
            devs = a.devices()
        except Exception:
            continue
        d = Device.from_jax(min(devs, key=lambda z: z.id))
        if d not in seen:
            seen.append(d)
    if len(seen) < 2:
        return errors.Msg(f"{op_name}: inputs on incompatible devices (move them with .to_device(...))")
    return errors.DeviceMismatchBinaryOp(seen[0], seen[1], op_name)


# --- shape buckets for eager elementwise ops ------------------------------------------------------
#: Eager elementwise ops on a new CPU shape run at a bucketed 1-D length (padded on the host, sliced
#: back) instead of compiling an XLA executable for the exact shape (~20-30 ms on XLA:CPU each).
#: After ``EXACT_AFTER`` calls with the same shapes the exact executable is compiled and used, so
#: repeated shapes keep the direct cached-jit speed. ``CANDLEJAX_SHAPE_BUCKETS=0`` turns this off.
BUCKETS_ON = not env_off("CANDLEJAX_SHAPE_BUCKETS")
EXACT_AFTER = 3
MIN_BUCKET = 1 << 12
MAX_BUCKETED = 1 << 22  # larger arrays: compute dominates; compile the exact shape
_SEEN_CAP = 1 << 16
_CPU_PLATFORM = "cpu"


def bucket_size(n: int) -> int:
    """The bucketed length for ``n`` elements: ``MIN_BUCKET``, or the next of 2^k x {1, 1.25, 1.5, 1.75}
    (at most 25% padding)."""
    if n <= MIN_BUCKET:
        return MIN_BUCKET
    k = 1 << (n.bit_length() - 1)
    q = k >> 2
    return -(-n // q) * q


def _default_device() -> Any:
    """The device JAX runs a computation on when none of its arrays is committed."""
    d = jax.config.jax_default_device
    if isinstance(d, str):
        return jax.devices(d)[0]
    return d if d is not None else jax.devices()[0]


def _placement(dev: Any, committed: bool) -> Any:
    """Where a bucketed call puts its arrays, as the exact executable would: committed inputs keep their
    device (a committed result); otherwise ``None`` (JAX's default device, an uncommitted result),
    or ``False`` when that device is not a CPU."""
    if committed:
        return dev
    return None if _default_device().platform == _CPU_PLATFORM else False


def _bucket_plan(args: tuple[Any, ...]) -> tuple[tuple[int, ...], Any] | None:
    """The common (broadcast) shape and the placement (see :func:`_placement`) when every array
    argument is a concrete single-device CPU jax array (scalars pass through); ``None`` when the op
    should not bucket."""
    shape: tuple[int, ...] | None = None
    dev = None
    committed = False
    for x in args:
        if isinstance(x, jax.Array):
            if isinstance(x, Tracer) or not x.is_fully_addressable or len(x.sharding.device_set) != 1:
                return None
            d = next(iter(x.sharding.device_set))
            if d.platform != _CPU_PLATFORM or (dev is not None and d != dev):
                return None
            dev = d
            committed = committed or x.committed
            if x.ndim == 0:
                continue
            try:
                shape = x.shape if shape is None else np.broadcast_shapes(shape, x.shape)
            except ValueError:
                return None
        elif isinstance(x, np.ndarray | np.generic) and np.ndim(x) > 0:
            return None
    if shape is None or dev is None:
        return None
    n = math.prod(shape)
    if n == 0 or n > MAX_BUCKETED:
        return None
    where = _placement(dev, committed)
    return None if where is False else (shape, where)


def _run_bucketed(jitted: Any, args: tuple[Any, ...], kwargs: dict[str, Any], shape: tuple[int, ...], dev: Any) -> Any:
    n = math.prod(shape)
    b = bucket_size(n)
    flat = []
    for x in args:
        if isinstance(x, jax.Array) and x.ndim:
            h = np.asarray(x)
            if h.shape != shape:
                h = np.broadcast_to(h, shape)
            buf = np.empty(b, h.dtype)
            buf[:n] = h.reshape(-1)
            buf[n:] = buf[0]  # a valid input value in the padding (its results are dropped)
            flat.append(jax.device_put(buf, dev))
        else:
            flat.append(x)
    out = jitted(*flat, **kwargs)
    if not isinstance(out, jax.Array) or out.shape != (b,):
        return None
    return jax.device_put(np.asarray(out)[:n].reshape(shape), dev)


#: Row-wise ops pad each leading dimension to a power of two, at least this size
MIN_ROW_BUCKET = 8


def row_bucket(n: int) -> int:
    """The bucketed size of a leading (not reduced) dimension: the next power of two, at least
    ``MIN_ROW_BUCKET``."""
    return max(MIN_ROW_BUCKET, 1 << (n - 1).bit_length())


def _rowwise_plan(args: tuple[Any, ...], kwargs: dict[str, Any], name: str,
                  floats: bool = True) -> tuple[Any, ...] | None:  # fmt: skip
    """(axes, padded shape, placement: see :func:`_placement`) for a row-wise op on one concrete
    single-device CPU array with at least one dimension besides the axes; ``None`` when it should not
    bucket (also for a float array unless ``floats``)."""
    if len(args) != 1 or kwargs.get(name) is None:
        return None
    x = args[0]
    if (not isinstance(x, jax.Array) or isinstance(x, Tracer) or x.ndim < 2 or not x.is_fully_addressable
            or len(x.sharding.device_set) != 1 or not (floats or np.issubdtype(x.dtype, np.integer))):  # fmt: skip
        return None
    dev = next(iter(x.sharding.device_set))
    if dev.platform != _CPU_PLATFORM:
        return None
    ax = kwargs[name]
    try:
        axes = tuple(sorted({int(a) % x.ndim for a in ((ax,) if isinstance(ax, int) else ax)}))
    except TypeError:
        return None
    if not axes or len(axes) == x.ndim or 0 in x.shape or axes != tuple(range(x.ndim - len(axes), x.ndim)):
        return None  # trailing axes only: each row is then computed exactly as in the exact-shape program
    padded = tuple(d if i in axes else row_bucket(d) for i, d in enumerate(x.shape))
    if math.prod(padded) > MAX_BUCKETED:
        return None
    where = _placement(dev, x.committed)
    return None if where is False else (axes, padded, where)


def _run_rowwise(jitted: Any, x: Any, kwargs: dict[str, Any], name: str, axes: tuple[int, ...],
                 padded: tuple[int, ...], dev: Any) -> Any:  # fmt: skip
    """Run on the input padded (at the end of every dimension other than the axes, with copies of
    valid values) in place, so each result element is computed as in the exact-shape executable,
    and slice the result back; ``None`` when its shape is not the expected one."""
    h = np.asarray(x)
    buf = np.pad(h, [(0, p - d) for p, d in zip(padded, h.shape)], mode="edge")
    out = jitted(jax.device_put(buf, dev), **kwargs)
    if not isinstance(out, jax.Array):
        return None
    o = np.asarray(out)
    if o.ndim == h.ndim:  # a transform along the axes, or a reduction with keepdims
        if any(o.shape[i] not in (padded[i], 1) for i in range(h.ndim)):
            return None
        target = tuple(h.shape[i] if o.shape[i] == padded[i] else 1 for i in range(h.ndim))
    elif o.ndim == h.ndim - len(axes):  # a reduction over the axes
        kept = [i for i in range(h.ndim) if i not in axes]
        if o.shape != tuple(padded[i] for i in kept):
            return None
        target = tuple(h.shape[i] for i in kept)
    else:
        return None
    return jax.device_put(np.ascontiguousarray(o[tuple(slice(0, t) for t in target)]), dev)


def bucketed(jitted: Any, rowwise: str | None = None, rowwise_float: bool = True) -> Callable[..., Any]:
    """``jitted`` (an elementwise ``jax.jit``, or a row-wise one: see :func:`op`) behind the shape
    buckets described above.

    Where JAX's C++ jit object can be rebuilt with another cache-miss handler
    (:func:`candlejax._jax_private.rebuild_jit`: this JAX version's internals), the buckets live in
    that handler, so a call whose shapes are compiled takes JAX's C++ fast path untouched. Otherwise
    a small Python gate keyed on the avals does the same (~0.2 µs per call).
    """
    counts: dict[Any, int] = {}
    promoted: set[Any] = set()

    def on_miss(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, bool]:
        """(the bucketed result, or ``None`` to run the exact executable; whether this call
        promotes the shapes to their exact executable after bucketed calls)."""
        if not BUCKETS_ON:
            return None, False
        key = (tuple(getattr(x, "aval", type(x)) for x in args), tuple(kwargs.items()))
        if key in promoted:
            return None, False
        c = counts.get(key, 0) + 1
        if c >= EXACT_AFTER:
            counts.pop(key, None)
            if len(promoted) > _SEEN_CAP:
                promoted.clear()
            promoted.add(key)
            return None, True
        if rowwise is not None:
            rplan = _rowwise_plan(args, kwargs, rowwise, rowwise_float)
            if rplan is None:
                return None, False
            if len(counts) > _SEEN_CAP:
                counts.clear()
            counts[key] = c
            return _run_rowwise(jitted, args[0], kwargs, rowwise, *rplan), False
        plan = _bucket_plan(args)
        if plan is None:
            return None, False
        if len(counts) > _SEEN_CAP:
            counts.clear()
        counts[key] = c
        return _run_bucketed(jitted, args, kwargs, *plan), False

    def hook(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, bool]:
        return on_miss(args, kwargs) if is_eager() else (None, False)

    fast = _jax_private.rebuild_jit(jitted, hook)
    if fast is not None:
        return fast
    seen: set[Any] = set()

    def call(a: Any, *rest: Any, **kwargs: Any) -> Any:
        # the key: avals (shape, dtype, weak type) of the arrays, one attribute read each
        if not rest:
            key: Any = a.aval
        elif len(rest) == 1:
            key = (a.aval, getattr(rest[0], "aval", None))
        else:
            key = (a.aval, *(getattr(x, "aval", None) for x in rest))
        if kwargs:
            key = (key, *kwargs.items())
        if key in seen:
            return jitted(a, *rest, **kwargs)
        out, _ = on_miss((a, *rest), kwargs)
        if out is not None:
            return out
        if len(seen) > _SEEN_CAP:
            seen.clear()
        seen.add(key)
        return jitted(a, *rest, **kwargs)

    return call
