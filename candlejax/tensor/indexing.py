"""Indexing: i(), [], index_select, gather, scatter, index_add, slice_assign, where_cond, embedding.

``t.i(...)`` is Candle's ``IndexOp::i``; ``t[...]`` is candle-pyo3's ``__getitem__`` with numpy's
rules for ints, slices (steps included), ``...`` and ``None``. Both plan the indexing in Python
(shapes are static) and run a single cached-jit primitive (reverse, strided slice, takes, reshape),
so an eager ``t[:, 1:3]`` costs one cached executable call.

Index tensors must have an integer dtype. Index *values* are checked eagerly (``InvalidIndex``);
under ``jax.jit`` they are data and cannot be checked: gathers (``index_select``, ``gather``,
``embedding``, tensor indexers in ``i()``/``[]``) then clamp an out-of-range index to ``[0, size-1]``
and scatters (``scatter``, ``scatter_add``, ``index_add``) drop out-of-range updates.

Candle's in-place ``slice_set`` / ``scatter_set`` become functional here: they return the new tensor.

requires: candlejax.tensor._core (TensorBase, checks), candlejax._dispatch.op, movement primitives
provides: IndexingMixin
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, SupportsIndex

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from candlejax import errors
from candlejax._discarded import caller_discards_result
from candlejax._dispatch import is_eager, op
from candlejax.dtype import to_dtype
from candlejax.errors import fmt_shape
from candlejax.shape import resolve_dim
from candlejax.tensor._core import TensorBase, check_int, check_same_device, int_arg, not_a_tensor, traced_int

if TYPE_CHECKING:  # Tensor joins the mixins: candlejax.tensor sets this name at runtime (get_type_hints)
    from candlejax.tensor import Tensor

Tracer = jax.core.Tracer

# --------------------------------------------------------------------------------------------------
# cached-jit primitives
# --------------------------------------------------------------------------------------------------


def _clamp_ids(ids: Any, size: int) -> Any:
    """Clamp index values to ``[0, size - 1]`` (what an unchecked gather does under jit)."""
    if jnp.issubdtype(ids.dtype, jnp.signedinteger):
        ids = jnp.maximum(ids, 0)
    hi = max(size - 1, 0)
    if hi >= jnp.iinfo(ids.dtype).max:  # u8 ids into more than 255 rows: every value is in range
        return ids
    return jnp.minimum(ids, jnp.asarray(hi, ids.dtype))


def _fill_value(dtype: Any, value: Any) -> Any:
    """A Python fill value for a tensor of ``dtype``, checked with PyTorch's rule: for an integer dtype a
    finite value in range (a fraction is truncated toward zero; an unsigned dtype also takes its signed
    twin's negatives, -1 -> 255), for a float dtype a value within its range (or inf / NaN); raises
    rather than wrap or overflow. (Arithmetic scalars follow a stricter rule: ``_scalar_arg``.)"""
    v = float(value) if not isinstance(value, (bool, int, np.integer)) else int(value)
    dt = np.dtype(dtype)
    if jnp.issubdtype(dt, jnp.integer):
        info = jnp.iinfo(dt)
        # PyTorch's range: an unsigned dtype also takes the negatives of its signed twin (-1 -> 255)
        lo = -(info.max + 1) // 2 if info.min == 0 else info.min
        if not (isinstance(v, int) or math.isfinite(v)) or not lo <= int(v) <= info.max:
            raise errors.Msg(f"masked_fill: the value {value!r} does not fit the tensor's dtype "
                             f"{to_dtype(dt).name} ([{lo}, {info.max}])")  # fmt: skip
    elif jnp.issubdtype(dt, jnp.floating) and math.isfinite(v) and abs(v) > float(jnp.finfo(dt).max):
        raise errors.Msg(f"masked_fill: the value {value!r} overflows the tensor's dtype {to_dtype(dt).name}"
                         f" (largest {float(jnp.finfo(dt).max):g})")  # fmt: skip
    # a numpy scalar of the dtype: a Python int above 2**31 - 1 would reach the jitted op as int32
    with np.errstate(all="ignore"):
        return np.asarray(value).astype(dt)[()]


def _no_index(ids: Any) -> Any:
    """Where ``ids`` holds its dtype's largest value, Candle's "no index": gathers give 0 there,
    scatters and ``index_add`` skip it (``u32::MAX`` for u32 ids)."""
    return ids == jnp.asarray(jnp.iinfo(ids.dtype).max, ids.dtype)


def _zero_where_no_index(out: Any, ids: Any, axis: int | None = None) -> Any:
    """``out`` with 0 at the positions gathered by a "no index" id; ``axis`` is where a 1-D ``ids``
    selected along (``None``: ``ids`` has ``out``'s shape, or is ``out``'s leading dims)."""
    mask = _no_index(ids)
    if axis is not None:
        mask = jnp.reshape(mask, (1,) * axis + mask.shape + (1,) * (out.ndim - axis - 1))
    elif mask.ndim < out.ndim:
        mask = jnp.reshape(mask, mask.shape + (1,) * (out.ndim - mask.ndim))
    return jnp.where(mask, jnp.zeros((), out.dtype), out)


def _drop_ids(ids: Any, size: int) -> Any:
    """Map negative and "no index" values past the end so that ``mode="drop"`` scatters ignore them."""
    skip = _no_index(ids)
    if jnp.issubdtype(ids.dtype, jnp.signedinteger):
        skip = skip | (ids < 0)
    if size > jnp.iinfo(ids.dtype).max:  # u8 ids into more than 255 slots: 255 is still "no index"
        ids = ids.astype(jnp.int32)
    return jnp.where(skip, jnp.asarray(size, ids.dtype), ids)


@op(static=("rev", "starts", "limits", "strides", "takes", "shape"))
def _index(
    a: Any,
    ids: tuple[Any, ...],
    rev: tuple[int, ...],
    starts: Any,
    limits: Any,
    strides: Any,
    takes: tuple[tuple[int, int], ...],
    shape: tuple[int, ...],
) -> Any:
    """reverse ``rev`` dims -> strided slice -> one take per (axis, size) in ``takes`` -> reshape."""
    if rev:
        a = lax.rev(a, rev)
    if starts is not None:
        a = lax.slice(a, starts, limits, strides)
    return _take_all(a, ids, takes, shape)


def _take_all(a: Any, ids: tuple[Any, ...], takes: tuple[tuple[int, int], ...], shape: tuple[int, ...]) -> Any:
    """The tensor indexers of an index (one take per (axis, size)), then the result's shape."""
    for (axis, size), i in zip(takes, ids):
        i = jnp.reshape(i, (-1,))
        a = _zero_where_no_index(jnp.take(a, _clamp_ids(i, size), axis=axis, mode="clip"), i, axis)
    return a if a.shape == shape else jnp.reshape(a, shape)


def _index_at(
    a: Any,
    ids: tuple[Any, ...],
    starts: Any,
    rev: tuple[int, ...],
    sizes: Any,
    strides: Any,
    takes: tuple[tuple[int, int], ...],
    shape: tuple[int, ...],
) -> Any:
    """:func:`_index` with the slice's starts as an argument (an int32 vector, validated by the caller):
    one program per pattern of indexers in eager loops, not one per index value."""
    if rev:
        a = lax.rev(a, rev)
    if sizes is not None:
        a = lax.dynamic_slice(a, tuple(starts[i] for i in range(a.ndim)), sizes)
        if strides is not None:
            a = lax.slice(a, (0,) * a.ndim, sizes, strides)
    return _take_all(a, ids, takes, shape)


#: eager programs of :func:`_index_at`, per (shape, pattern)
_AT_FNS: dict[Any, Any] = {}


def _eager_plan(shape: tuple[int, ...], static: dict) -> Any:
    """The eager function ``(a, ids) -> result`` of a plan: :func:`_index_at` with the plan's starts
    bound as data, compiled once per pattern."""
    starts = static["starts"]
    sizes = None if starts is None else tuple(b - a for a, b in zip(starts, static["limits"]))
    pattern = dict(rev=static["rev"], sizes=sizes, strides=static["strides"], takes=static["takes"],
                   shape=static["shape"])  # fmt: skip
    key = (shape, tuple(pattern.items()))
    fn = _AT_FNS.get(key)
    if fn is None:
        if len(_AT_FNS) > 4096:
            _AT_FNS.clear()
        fn = _AT_FNS[key] = jax.jit(functools.partial(_index_at, **pattern))
    if starts is None:
        return functools.partial(fn, starts=None)
    return functools.partial(fn, starts=np.asarray(starts, np.int32))


@op(static=("axis",))
def _take(a: Any, ids: Any, axis: int) -> Any:
    return _zero_where_no_index(jnp.take(a, _clamp_ids(ids, a.shape[axis]), axis=axis, mode="clip"), ids, axis)


@op
def _embedding(w: Any, ids: Any) -> Any:
    return _zero_where_no_index(jnp.take(w, _clamp_ids(ids, w.shape[0]), axis=0, mode="clip"), ids)


@op(static=("axis", "shape"))
def _gather(a: Any, ids: Any, axis: int, shape: tuple[int, ...]) -> Any:
    if a.shape != shape:
        a = lax.slice(a, (0,) * a.ndim, shape)
    return _zero_where_no_index(jnp.take_along_axis(a, _clamp_ids(ids, a.shape[axis]), axis=axis, mode="clip"), ids)


@op(static=("axis", "add"))
def _scatter(a: Any, ids: Any, src: Any, axis: int, add: bool) -> Any:
    idx = tuple(
        _drop_ids(ids, a.shape[axis]) if i == axis else lax.broadcasted_iota(jnp.int32, ids.shape, i)
        for i in range(a.ndim)
    )
    ref = a.at[idx]
    return ref.add(src, mode="drop") if add else ref.set(src, mode="drop")


@op(static=("axis",))
def _index_add(a: Any, ids: Any, src: Any, axis: int) -> Any:
    idx = (slice(None),) * axis + (_drop_ids(ids, a.shape[axis]),)
    return a.at[idx].add(src, mode="drop")


@op(static=("starts",))
def _update_slice(a: Any, src: Any, starts: tuple[int, ...]) -> Any:
    return lax.dynamic_update_slice(a, src, starts)


@op(static=("axis",))
def _dyn_update_slice(a: Any, src: Any, start: Any, axis: int) -> Any:
    return lax.dynamic_update_slice_in_dim(a, src, start, axis)


@op(elementwise=True)
def _where(pred: Any, on_true: Any, on_false: Any) -> Any:
    return jnp.where(pred != 0, on_true, on_false)


@op
def _masked_fill(a: Any, mask: Any, value: Any) -> Any:
    return jnp.where(mask != 0, jnp.asarray(value).astype(a.dtype), a)


# --------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------


def _check_values(ids: Any, size: int, op_name: str) -> None:
    """Eagerly (concrete ids) raise ``InvalidIndex`` for the first index outside ``0..size``; the
    dtype's largest value is Candle's "no index" and passes (gathers give 0, scatters skip it)."""
    if isinstance(ids, Tracer):
        return
    v = np.asarray(ids)
    if v.size == 0:
        return
    if v.max() < size and (v.dtype.kind == "u" or v.min() >= 0):
        return
    flat = v.reshape(-1)
    bad_at = np.flatnonzero(((flat < 0) | (flat >= size)) & (flat != np.iinfo(v.dtype).max))
    if bad_at.size:
        raise errors.InvalidIndex(op_name, int(flat[bad_at[0]]), size)


def _check_candle_order(op_name: str, ids: Any, dim: Any, candle: str, torch: str) -> None:
    """PyTorch's order (the dim first, an int where Candle takes the ids) raises, naming Candle's."""
    if isinstance(ids, (int, np.integer)) and isinstance(dim, (TensorBase, list, np.ndarray)):
        raise errors.Msg(f"{op_name}: Candle's order is {candle}; PyTorch's {torch} puts the dim first")


def _as_ids(ids: Any, op_name: str, of: TensorBase) -> Any:
    """The jax array of an index Tensor (integer dtype required) on the device of ``of``, the indexed
    tensor (Candle's ``same_device(indexes, op)``)."""
    if not isinstance(ids, TensorBase):
        raise errors.Msg(f"{op_name}: expected a Tensor of indexes, got {type(ids).__name__}")
    check_int(op_name, ids, "index")
    check_same_device(op_name, of, ids)
    return ids._a


def _as_tensor(x: Any, op_name: str, what: str = "src") -> Any:
    if not isinstance(x, TensorBase):
        raise not_a_tensor(op_name, what, x)
    return x


def _same_off_axis(a: Sequence[int], b: Sequence[int], axis: int) -> bool:
    return len(a) == len(b) and all(x == y for i, (x, y) in enumerate(zip(a, b)) if i != axis)


def _check_dtype(op_name: str, a: TensorBase, b: TensorBase) -> None:
    if a._a.dtype != b._a.dtype:
        raise errors.DTypeMismatchBinaryOp(a.dtype, b.dtype, op_name)


# --------------------------------------------------------------------------------------------------
# the indexing planner shared by i() and []
# --------------------------------------------------------------------------------------------------

_SLICE_LIKE = (slice, range)


def _is_int(x: Any) -> bool:
    if isinstance(x, (bool, np.bool_)):
        return False
    if isinstance(x, int):
        return True
    return isinstance(x, np.integer)


def _list_ids(x: Any, size: int, op_name: str) -> np.ndarray:
    """Index values from a Python list / tuple / numpy array; negatives count from the end."""
    try:
        v = np.asarray(x)
    except (ValueError, TypeError):  # a ragged nested list
        raise errors.Msg(f"{op_name}: an index list must be a flat list of integers, got {x!r}") from None
    if v.dtype == np.bool_:
        raise errors.Msg(
            f"{op_name}: boolean masks are not supported (data-dependent shape); use where_cond / masked_fill"
        )
    if v.size == 0:
        v = v.astype(np.int32)
    if not np.issubdtype(v.dtype, np.integer):
        raise errors.UnexpectedDType("u32", str(v.dtype), f"{op_name}: index list must hold integers")
    if v.ndim != 1:
        raise errors.Msg("multi-dimensional tensor indexing is not supported")
    bad = (v < -size) | (v >= size)
    if bad.any():
        raise errors.InvalidIndex(op_name, int(v[np.flatnonzero(bad)[0]]), size)
    return np.where(v < 0, v + size, v).astype(np.int32)


def _plan_index(shape: tuple[int, ...], idx: tuple[Any, ...], strict: bool, op_name: str) -> tuple[Any, dict]:
    """Turn indexers into (ids, static kwargs of ``_index``).

    ``strict`` (``i()``): Candle's ``narrow`` bounds errors, no ``...`` / ``None`` / negative steps,
    several tensor indexers are applied one after the other (orthogonally). Otherwise (``[]``):
    numpy/PyTorch slice clamping, steps, ``...``, ``None``, at most one tensor indexer.
    """
    n = len(shape)
    consumed = 0
    n_ellipsis = 0
    n_tensor = 0
    for x in idx:
        if x is None:
            if strict:
                raise errors.Msg(f"{op_name}: None (new axis) is not an indexer of i(); use t[None] or unsqueeze")
        elif x is Ellipsis:
            if strict:
                raise errors.Msg(f"{op_name}: ... is not an indexer of i(); use t[...]")
            n_ellipsis += 1
        else:
            consumed += 1
            if not (_is_int(x) or isinstance(x, _SLICE_LIKE)):
                n_tensor += 1
    if n_ellipsis > 1:
        raise errors.Msg(f"{op_name}: an index can only have a single ellipsis (...)")
    if consumed > n:
        raise errors.Msg(
            f"{op_name}: provided too many indices: {consumed} for a tensor of rank {n} (shape {fmt_shape(shape)})"
        )
    if n_tensor > 1 and not strict:
        raise errors.Msg(
            f"{op_name}: more than one tensor/list indexer is ambiguous (Candle's i() selects on each dim"
            " separately, numpy/PyTorch pair the indexes up); use t.i((...)) or index_select per dim,"
            " or gather"
        )

    starts = [0] * n
    limits = list(shape)
    strides = [1] * n
    rev: list[int] = []
    takes: list[tuple[int, int]] = []
    ids: list[Any] = []
    out: list[int] = []
    d = 0
    for x in idx:
        if x is None:
            out.append(1)
            continue
        if x is Ellipsis:
            for _ in range(n - consumed):
                out.append(shape[d])
                d += 1
            continue
        size = shape[d]
        if _is_int(x):
            v = int(x)
            w = v + size if v < 0 else v
            if not 0 <= w < size:
                if strict and v >= 0:
                    cur = tuple(out) + shape[d:]
                    msg = "start > dim_len" if v > size else "start + len > dim_len"
                    raise errors.NarrowInvalidArgs(cur, len(out), v, 1, msg)
                raise errors.InvalidIndex(op_name, v, size)
            starts[d], limits[d] = w, w + 1
        elif isinstance(x, _SLICE_LIKE):
            if strict:
                start, stop, step = x.start, x.stop, x.step
                step = 1 if step is None else int_arg(step, op_name, "slice step")
                if step <= 0:
                    raise errors.Msg(f"{op_name}: slice step must be positive in i(), got {step}; use t[::-1] or flip")
                start = 0 if start is None else int_arg(start, op_name, "slice start")
                stop = size if stop is None else int_arg(stop, op_name, "slice stop")
                if start < 0:
                    if start + size < 0:
                        raise errors.InvalidIndex(op_name, start, size)
                    start += size
                if stop < 0:
                    if stop + size < 0:
                        raise errors.InvalidIndex(op_name, stop, size)
                    stop += size
                length = max(stop - start, 0)
                cur = tuple(out) + shape[d:]
                if start > size:
                    raise errors.NarrowInvalidArgs(cur, len(out), start, length, "start > dim_len")
                if start + length > size:
                    raise errors.NarrowInvalidArgs(cur, len(out), start, length, "start + len > dim_len")
                count = -(-length // step)
            else:
                if isinstance(x, range):
                    x = slice(x.start, x.stop, x.step)
                try:
                    start, stop, step = x.indices(size)
                except (ValueError, TypeError) as e:  # a float bound is a TypeError, as Python's own slicing
                    kind = errors.ArgumentType if isinstance(e, TypeError) else errors.Msg
                    raise kind(f"{op_name}: invalid slice {x!r}: {e}") from None
                count = len(range(start, stop, step))
                if step < 0:
                    if count:
                        rev.append(d)
                        start = size - 1 - start
                    else:
                        start = 0
                    step = -step
            if count == 0:
                start = min(start, size)
                starts[d], limits[d] = start, start
            else:
                starts[d], limits[d], strides[d] = start, start + (count - 1) * step + 1, step
            out.append(count)
        else:
            if isinstance(x, TensorBase):
                check_int(op_name, x, "index")
                arr = x._a
            elif isinstance(x, (jax.Array, Tracer)):
                if not jnp.issubdtype(arr_dtype := x.dtype, jnp.integer):
                    raise errors.UnexpectedDType("u32", str(arr_dtype), f"{op_name}: index must have an integer dtype")
                arr = x
            elif isinstance(x, (list, tuple, np.ndarray)):
                arr = _list_ids(x, size, op_name)
            else:
                raise errors.ArgumentType(f"{op_name}: unsupported indexer {x!r} of type {type(x).__name__}")
            if arr.ndim > 1:
                raise errors.Msg("multi-dimensional tensor indexing is not supported")
            if not isinstance(arr, np.ndarray):
                _check_values(arr, size, op_name)
            if arr.size and size == 0:
                raise errors.InvalidIndex(op_name, 0, 0)
            takes.append((d, size))
            ids.append(arr)
            if arr.ndim == 1:
                out.append(arr.shape[0])
        d += 1
    out.extend(shape[d:])

    if any(starts) or any(lim != s for lim, s in zip(limits, shape)) or any(st != 1 for st in strides):
        sl = (tuple(starts), tuple(limits), tuple(strides) if any(st != 1 for st in strides) else None)
    else:
        sl = (None, None, None)
    static = dict(rev=tuple(rev), starts=sl[0], limits=sl[1], strides=sl[2], takes=tuple(takes), shape=tuple(out))
    return tuple(ids), static


_PLANS: dict[Any, dict] = {}


def _plan_key(shape: tuple[int, ...], idx: tuple[Any, ...], strict: bool) -> tuple[Any, list[Any]]:
    """A hashable plan key for indexers made of ints, slices, ``None``, ``...`` and Tensors (the
    Tensors' arrays are returned too), or ``(None, [])`` when some indexer can't be keyed."""
    key: list[Any] = [shape, strict]
    tids: list[Any] = []
    for x in idx:
        t = type(x)
        if t is int or x is None or x is Ellipsis:
            key.append(x)
        elif t is slice:
            # only exact ints key a slice: 1.0 and True hash like 1 (and must still be refused), and a
            # concrete jax scalar bound is unhashable
            bounds = (x.start, x.stop, x.step)
            if not all(b is None or type(b) is int for b in bounds):
                return None, []
            key.append(bounds)
        elif isinstance(x, TensorBase):
            a = x._a
            key.append(("T", a.shape, a.dtype))
            tids.append(a)
        else:
            return None, []
    return tuple(key), tids


# --------------------------------------------------------------------------------------------------
# the mixin
# --------------------------------------------------------------------------------------------------


class IndexingMixin(TensorBase):
    """Tensor indexing methods (Candle's ``IndexOp::i``, ``index_select``, ``gather``, ``scatter_add``, ...)."""

    __slots__ = ()

    # --- i() and [] ---------------------------------------------------------------------------
    def _do_index(self, idx: Any, strict: bool, op_name: str) -> Any:
        if not isinstance(idx, tuple):
            idx = (idx,)
        a = self._a
        key, tids = _plan_key(a.shape, idx, strict)
        plan = _PLANS.get(key) if key is not None else None
        if plan is None:
            ids, static = _plan_index(a.shape, idx, strict, op_name)
            # one function per plan (no static-argument hashing on the eager hot path), compiled once
            # per pattern of indexers: the slice starts are data
            plan = (static, _eager_plan(a.shape, static))
            if key is not None:
                if len(_PLANS) > 4096:
                    _PLANS.clear()
                _PLANS[key] = plan
        else:
            ids = tuple(tids)
            for (_, size), arr in zip(plan[0]["takes"], ids):
                _check_values(arr, size, op_name)
        static = plan[0]
        if not ids and not static["rev"] and static["starts"] is None and static["shape"] == a.shape:
            return self
        if is_eager():
            return self._wrap(plan[1](a, ids))
        return self._wrap(_index.raw(a, ids, **static))

    def i(self, *index: Any) -> Tensor:
        """Candle ``t.i(...)``: one indexer or a tuple, applied to the leading dims, left to right.

        * int (negative counts from the end): selects and drops the dim;
        * ``slice`` / ``range`` (positive step): narrows, keeping the dim; out of range raises
          Candle's ``narrow`` error (no clamping);
        * a 1-D integer Tensor, list or array: ``index_select`` on that dim (dims kept);
          a rank-0 integer Tensor selects and drops the dim (usable with a traced index under jit).

        ``t.i((slice(None), 0))`` is Rust's ``t.i((.., 0))``; ``t.i(slice(None), 0)`` also works.
        """
        idx = index[0] if len(index) == 1 else index
        return self._do_index(idx, True, "i")

    def __getitem__(self, index: Any) -> Tensor:
        """``t[...]`` with numpy/PyTorch rules: ints (negative ok), slices (clamped, any step),
        ``...``, ``None`` (new axis), one 1-D integer Tensor/list (``index_select``); a rank-0
        integer Tensor selects (also traced under jit). Out of range ints raise ``InvalidIndex``
        (an ``IndexError``, so ``for row in t`` works). A boolean mask (``t[t > 0]``) raises: its
        result has a data-dependent shape; ``mask.where_cond(t, other)`` keeps the shape."""
        if (isinstance(index, TensorBase) and index._a.dtype == np.uint8) or getattr(index, "dtype", None) == np.bool_:
            raise errors.Msg(
                "index: boolean masks are not supported: t[mask] has a data-dependent shape, which XLA cannot"
                " compile; keep the shape with mask.where_cond(t, other) or t.masked_fill(mask, value), or select"
                " on the host: np.asarray(t)[np.asarray(mask) != 0] (u8 ids: index_select(ids, 0))"
            )
        return self._do_index(index, False, "index")

    # --- selection ----------------------------------------------------------------------------
    def index_select(self, rhs: Any, dim: Any) -> Tensor:
        """Candle ``index_select(ids, dim)``: ``ids`` 1-D integer; dim ``dim`` becomes ``len(ids)``.
        PyTorch: ``torch.index_select``. The parameter is named ``rhs`` as in candle-pyo3."""
        ids = rhs
        s = self._a.shape
        _check_candle_order("index_select", ids, dim, "index_select(ids, dim)", "index_select(dim, ids)")
        d = resolve_dim(dim, s, "index-select")
        arr = _as_ids(ids, "index-select", self)
        if arr.ndim != 1:
            raise errors.ShapeMismatchBinaryOp(s, arr.shape, "index-select", "the index tensor must be 1-D")
        _check_values(arr, s[d], "index-select")
        if arr.shape[0] and s[d] == 0:
            raise errors.InvalidIndex("index-select", 0, 0)
        return self._wrap(_take(self._a, arr, axis=d))

    def embedding(self, ids: Any) -> Tensor:
        """Candle ``embedding(ids)``: rows of ``self`` (``(V, H)``) at ``ids`` -> ``ids.shape + (H,)``.

        Candle accepts only 1-D ids; here any rank works (PyTorch ``F.embedding``)."""
        s = self._a.shape
        arr = _as_ids(ids, "embedding", self)
        if len(s) != 2:
            raise errors.ShapeMismatchBinaryOp(s, arr.shape, "embedding", "the embedding table must be (V, H)")
        _check_values(arr, s[0], "index-select")  # Candle's embedding is index_select(ids, 0)
        if arr.size and s[0] == 0:
            raise errors.InvalidIndex("index-select", 0, 0)
        return self._wrap(_embedding(self._a, arr))

    def gather(self, index: Any, dim: Any) -> Tensor:
        """Candle ``gather(ids, dim)`` (PyTorch ``torch.gather``): ``out[..i..] = self[..ids[..i..]..]``
        along ``dim``; ``ids`` has self's rank and sizes ``<=`` self's off ``dim``; output has ids' shape.
        The parameter is named ``index`` as in candle-pyo3."""
        ids = index
        s = self._a.shape
        _check_candle_order("gather", ids, dim, "gather(ids, dim)", "gather(dim, ids)")
        d = resolve_dim(dim, s, "gather")
        arr = _as_ids(ids, "gather", self)
        si = arr.shape
        if len(si) != len(s) or any(i != d and b > a for i, (a, b) in enumerate(zip(s, si))):
            raise errors.ShapeMismatchBinaryOp(s, si, "gather")
        _check_values(arr, s[d], "gather")
        if arr.size and s[d] == 0:
            raise errors.InvalidIndex("gather", 0, 0)
        sub = tuple(s[i] if i == d else si[i] for i in range(len(s)))
        return self._wrap(_gather(self._a, arr, axis=d, shape=sub))

    # --- scatter family (functional) ----------------------------------------------------------
    def _scatter_common(self, ids: Any, src: Any, dim: Any, op_name: str, add: bool) -> Any:
        s = self._a.shape
        f = op_name.replace("-", "_")
        _check_candle_order(f, ids, dim, f"{f}(ids, src, dim)", f"{f}(dim, ids, src)")
        d = resolve_dim(dim, s, op_name)
        arr = _as_ids(ids, op_name, self)
        src = _as_tensor(src, op_name)
        ss = src.shape
        # Candle's scatter_checks and CPU Scatter kernel name the op "scatter" for the whole family
        if not _same_off_axis(s, ss, d):
            raise errors.ShapeMismatchBinaryOp(s, ss, "scatter (self, src)")
        if arr.shape != ss:
            raise errors.ShapeMismatchBinaryOp(arr.shape, ss, "scatter (indexes, src)")
        _check_dtype("scatter", self, src)
        check_same_device(op_name, self, src)
        _check_values(arr, s[d], op_name)
        return self._wrap(_scatter(self._a, arr, src._a, axis=d, add=add))

    def scatter(self, ids: Any, src: Any, dim: Any) -> Tensor:
        """Candle ``scatter(ids, src, dim)``: a copy of self with ``src`` written at ``ids`` along ``dim``
        (``ids.shape == src.shape``; src equals self off ``dim``). PyTorch: ``Tensor.scatter``.
        With duplicate ids one of the written values wins (unspecified which, as in Candle/PyTorch)."""
        return self._scatter_common(ids, src, dim, "scatter", False)

    def scatter_set(self, ids: Any, src: Any, dim: Any) -> Tensor:
        """Candle's in-place ``scatter_set``, functional here: returns the new tensor (= ``scatter``).
        Written as a bare statement (Candle's form, which would change nothing here) it raises
        :class:`candlejax.errors.InPlaceStatement`: ``t = t.scatter_set(ids, src, dim)``."""
        out = self._scatter_common(ids, src, dim, "scatter-set", False)
        if caller_discards_result():  # checked after the arguments: their errors come first
            raise errors.InPlaceStatement("scatter_set", "t = t.scatter_set(ids, src, dim)")
        return out

    def scatter_add(self, ids: Any, src: Any, dim: Any) -> Tensor:
        """Candle ``scatter_add(ids, src, dim)``: like ``scatter`` but adds (duplicates accumulate).
        PyTorch: ``Tensor.scatter_add``."""
        return self._scatter_common(ids, src, dim, "scatter-add", True)

    def scatter_add_set(self, ids: Any, src: Any, dim: Any) -> Tensor:
        """Candle's in-place ``scatter_add_set``, functional here (= ``scatter_add``); as a bare
        statement it raises :class:`candlejax.errors.InPlaceStatement`."""
        out = self._scatter_common(ids, src, dim, "scatter-add-set", True)
        if caller_discards_result():
            raise errors.InPlaceStatement("scatter_add_set", "t = t.scatter_add_set(ids, src, dim)")
        return out

    def index_add(self, ids: Any, src: Any, dim: Any) -> Tensor:
        """Candle ``index_add(ids, src, dim)``: adds slice ``k`` of ``src`` (along ``dim``) into slice
        ``ids[k]`` of self; ``ids`` 1-D with ``len == src.dim(dim)``. PyTorch: ``Tensor.index_add``."""
        s = self._a.shape
        _check_candle_order("index_add", ids, dim, "index_add(ids, src, dim)", "index_add(dim, ids, src)")
        d = resolve_dim(dim, s, "index-add")
        arr = _as_ids(ids, "index-add", self)
        src = _as_tensor(src, "index-add")
        ss = src.shape
        if not _same_off_axis(s, ss, d):
            raise errors.ShapeMismatchBinaryOp(s, ss, "index-add (self, source)")
        if arr.ndim != 1:
            raise errors.UnexpectedNumberOfDims(1, arr.ndim, arr.shape, "index-add")
        if ss[d] != arr.shape[0]:
            raise errors.ShapeMismatchBinaryOp(arr.shape, ss, "index-add (ids, source)")
        _check_dtype("index-add", self, src)
        check_same_device("index-add", self, src)
        _check_values(arr, s[d], "index-add")
        return self._wrap(_index_add(self._a, arr, src._a, axis=d))

    # --- slices (functional) ------------------------------------------------------------------
    def slice_scatter(self, src: Any, dim: Any, start: SupportsIndex) -> Tensor:
        """Candle ``slice_scatter(src, dim, start)``: a copy of self with ``src`` written at
        ``start`` along ``dim`` (src equals self off ``dim``). PyTorch: ``torch.slice_scatter``.
        ``start`` may be traced under jit (clamped so that ``src`` fits)."""
        s = self._a.shape
        d = resolve_dim(dim, s, "slice-scatter")
        src = _as_tensor(src, "slice-scatter")
        _check_dtype("slice-scatter", self, src)
        check_same_device("slice-scatter", self, src)
        ss = src.shape
        if len(ss) != len(s):
            raise errors.UnexpectedNumberOfDims(len(s), len(ss), ss, "slice-scatter")
        dyn = traced_int(start, "slice-scatter", "start")
        start = 0 if dyn is not None else int_arg(start, "slice-scatter", "start")
        ok = start >= 0 and all((b + start <= a) if i == d else a == b for i, (a, b) in enumerate(zip(s, ss)))
        if not ok:
            raise errors.ShapeMismatchBinaryOp(s, ss, "slice-scatter (self, src)", f"start {start} on dim {d}")
        return self._write_slice(src, d, start, dyn)

    def _write_slice(self, src: Any, d: int, start: int, dyn: Any) -> Any:
        """``src`` written into self at ``start`` (or the traced ``dyn``) along dim ``d``; checked."""
        if dyn is not None:
            return self._wrap(_dyn_update_slice(self._a, src._a, dyn, axis=d))
        if is_eager():  # the offset as data: one program per shape, not one per offset (KV-cache writes)
            return self._wrap(_dyn_update_slice(self._a, src._a, np.int32(start), axis=d))
        starts = tuple(start if i == d else 0 for i in range(self._a.ndim))
        return self._wrap(_update_slice(self._a, src._a, starts=starts))

    def slice_scatter0(self, src: Any, start: SupportsIndex) -> Tensor:
        """Candle ``slice_scatter0(src, start)`` = ``slice_scatter(src, 0, start)``."""
        return self.slice_scatter(src, 0, start)

    def slice_set(self, src: Any, dim: Any, offset: SupportsIndex) -> Tensor:
        """Candle ``slice_set(src, dim, offset)`` made functional: returns self with ``src`` written at
        ``offset`` along ``dim`` (Candle writes in place and returns nothing; rebind the result:
        ``cache = cache.slice_set(k, 2, pos)``). Differentiable, unlike Candle's. Under jit ``offset``
        may be traced (a KV-cache position); it is then clamped so that ``src`` fits. Written as a
        bare statement (Candle's form, which would change nothing here) it raises
        :class:`candlejax.errors.InPlaceStatement`."""
        s = self._a.shape
        d = resolve_dim(dim, s, "slice-set")
        src = _as_tensor(src, "slice-set")
        _check_dtype("slice-set", self, src)
        check_same_device("slice-set", self, src)
        ss = src.shape
        if len(ss) != len(s):
            raise errors.UnexpectedNumberOfDims(len(s), len(ss), s, "slice-set")
        dyn = traced_int(offset, "slice-set", "offset")
        offset = 0 if dyn is not None else int_arg(offset, "slice-set", "offset")
        if offset < 0:
            raise errors.Msg(f"slice-set: offset must be non-negative, got {offset}")
        for i, (v1, v2) in enumerate(zip(s, ss)):
            if i == d and v2 + offset > v1:
                raise errors.Msg(f"shape mismatch on target dim, dst: {v1}, src: {v2} + {offset}")
            if i != d and v1 != v2:
                raise errors.Msg(f"shape mismatch on dim {i}, {v1} <> {v2}")
        out = self._write_slice(src, d, offset, dyn)
        if caller_discards_result():  # checked after the arguments: their errors come first
            raise errors.InPlaceStatement("slice_set", "t = t.slice_set(src, dim, offset)")
        return out

    def slice_assign(self, ranges: Sequence[Any], src: Any) -> Tensor:
        """Candle ``slice_assign(&[ranges], src)``: a copy of self with the region given by one range
        per dim replaced by ``src``. Ranges: ``slice(a, b)`` / ``range(a, b)`` (step 1), ``slice(None)``
        for a whole dim. PyTorch: ``t2 = t.clone(); t2[a:b, c:d] = src``."""
        s = self._a.shape
        src = _as_tensor(src, "slice-assign")
        ss = src.shape
        ranges = list(ranges)
        if len(s) != len(ss):
            raise errors.Msg(f"slice-assign requires input with the same rank {len(s)} <> {len(ss)}")
        if len(s) != len(ranges):
            raise errors.Msg(
                f"slice-assign requires input with the same rank as there are ranges {len(s)} <> {len(ranges)}"
            )
        _check_dtype("slice-assign", self, src)
        check_same_device("slice-assign", self, src)
        starts = []
        for i, r in enumerate(ranges):
            if r is None or r is Ellipsis:
                r = slice(None)
            if not isinstance(r, _SLICE_LIKE):
                raise errors.Msg(f"slice-assign: range for dim {i} must be a slice or range, got {r!r}")
            if r.step not in (None, 1):
                raise errors.Msg(f"slice-assign: the range for dim {i} must have step 1, got {r.step}")
            lo = 0 if r.start is None else int_arg(r.start, "slice-assign", f"range start for dim {i}")
            hi = s[i] if r.stop is None else int_arg(r.stop, "slice-assign", f"range stop for dim {i}")
            if lo < 0 or hi < 0:
                raise errors.Msg(f"slice-assign: negative bound in the range for dim {i}, {lo} {hi}")
            if hi <= lo:
                raise errors.Msg(f"slice-assign: empty range for dim {i}, {lo} {hi}")
            if s[i] < hi:
                raise errors.Msg(f"slice-assign: upper bound is out of range for dim {i}, {hi} {s[i]}")
            if hi - lo != ss[i]:
                raise errors.Msg(
                    f"slice-assign: the range for dim {i} ({lo}..{hi}) does not match the size of src {ss[i]}"
                )
            starts.append(lo)
        return self._wrap(_update_slice(self._a, src._a, starts=tuple(starts)))

    # --- selection by predicate ---------------------------------------------------------------
    def where_cond(self, on_true: Any, on_false: Any) -> Tensor:
        """Candle ``where_cond(on_true, on_false)``: ``self`` is the predicate (integer dtype, non-zero
        = true); all three the same shape (no broadcasting); on_true/on_false the same dtype.
        PyTorch: ``torch.where(cond, on_true, on_false)``."""
        on_true = _as_tensor(on_true, "where_cond", "on_true")
        on_false = _as_tensor(on_false, "where_cond", "on_false")
        s = self._a.shape
        if on_true.shape != s:
            raise errors.ShapeMismatchBinaryOp(s, on_true.shape, "where_cond")
        if on_false.shape != s:
            raise errors.ShapeMismatchBinaryOp(s, on_false.shape, "where_cond")
        _check_dtype("where", on_true, on_false)  # Candle's storage check names the op "where"
        if not self.dtype.is_int():
            raise errors.UnsupportedDTypeForOp(
                self.dtype, "where_cond", "the predicate must be an integer tensor, e.g. the U8 result of a comparison"
            )
        check_same_device("where_cond", self, on_true, on_false)
        return self._wrap(_where(self._a, on_true._a, on_false._a))

    def masked_fill(self, mask: Any, value: Any) -> Tensor:
        """PyTorch ``Tensor.masked_fill(mask, value)``: ``value`` where ``mask`` is non-zero.

        ``mask`` is an integer tensor (U8 from a comparison) broadcastable to self; ``value`` a
        Python scalar or rank-0 tensor, cast to self's dtype. Candle has no Tensor method for it
        (candle-transformers models build it from ``where_cond``)."""
        mask = _as_tensor(mask, "masked_fill", "mask")
        if not mask.dtype.is_int():
            raise errors.UnexpectedDType("u8", mask.dtype, "masked_fill: the mask must have an integer dtype")
        ms, s = mask.shape, self._a.shape
        if len(ms) > len(s) or any(m not in (1, x) for m, x in zip(ms[::-1], s[::-1])):
            raise errors.BroadcastIncompatibleShapes(ms, s, "masked_fill")
        if isinstance(value, TensorBase):
            if value.rank != 0:
                raise errors.Msg(f"masked_fill: value must be a scalar or a rank-0 tensor, got shape {value.shape}")
            value = value._a
        elif isinstance(value, (bool, int, float, np.number)) and not isinstance(value, np.complexfloating):
            value = _fill_value(self._a.dtype, value)
        elif not (isinstance(value, (jax.Array, jax.core.Tracer, np.ndarray)) and value.ndim == 0):
            raise errors.ArgumentType(
                f"masked_fill: value must be a real number or a rank-0 tensor, got {value!r} ({type(value).__name__})"
            )
        return self._wrap(_masked_fill(self._a, mask._a, value))
