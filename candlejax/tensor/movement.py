"""Shape and view ops: reshape, transpose, permute, narrow, cat, stack, broadcast_*, pad, repeat, ...

Every method checks shapes, dims and dtypes in Python (eagerly and under ``jax.jit`` alike, shapes
being static) and then runs one cached-jit primitive from this module (``_reshape``, ``_slice``,
``_transpose``, ...), so an eager ``narrow`` or ``reshape`` costs one cached executable call.

Candle's views (``narrow``, ``transpose``, ``broadcast_as``, ...) share storage; JAX arrays are
immutable values, so here every result is a new array and ``contiguous()`` is free.

requires: candlejax.tensor._core (TensorBase, checks), candlejax._dispatch.op, candlejax.shape
provides: MovementMixin, and the primitives ``_reshape``, ``_slice``, ``_split`` used by indexing
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, SupportsIndex

import jax.numpy as jnp
import numpy as np
from jax import lax

from candlejax import errors
from candlejax._dispatch import is_eager, op
from candlejax.errors import fmt_shape
from candlejax.shape import (
    CallableTuple,
    D,
    Layout,
    Shape,
    as_shape,
    check_elem_count,
    resolve_dim,
    resolve_dims,
    shape_with_hole,
)
from candlejax.tensor._core import TensorBase, check_same_device, int_arg, traced_int

if TYPE_CHECKING:  # Tensor joins the mixins: candlejax.tensor sets this name at runtime (get_type_hints)
    from candlejax.tensor import Tensor

# --------------------------------------------------------------------------------------------------
# cached-jit primitives (static arguments are hashable tuples / ints)
# --------------------------------------------------------------------------------------------------


@op(static=("shape",))
def _reshape(a: Any, shape: tuple[int, ...]) -> Any:
    return jnp.reshape(a, shape)


@op(static=("perm",))
def _transpose(a: Any, perm: tuple[int, ...]) -> Any:
    return jnp.transpose(a, perm)


@op(static=("starts", "limits", "strides", "shape"))
def _slice(a: Any, starts: tuple[int, ...], limits: tuple[int, ...], strides: Any, shape: Any) -> Any:
    """``lax.slice`` then, if ``shape`` is given, a reshape (drops / inserts size-1 dims)."""
    a = lax.slice(a, starts, limits, strides)
    return a if shape is None else jnp.reshape(a, shape)


@op(static=("axis", "bounds"))
def _split(a: Any, axis: int, bounds: tuple[tuple[int, int], ...]) -> tuple[Any, ...]:
    return tuple(lax.slice_in_dim(a, s, e, axis=axis) for s, e in bounds)


@op(static=("axis",))
def _cat(arrays: Sequence[Any], axis: int) -> Any:
    return jnp.concatenate(arrays, axis=axis)


@op(static=("axis",))
def _stack(arrays: Sequence[Any], axis: int) -> Any:
    return jnp.stack(arrays, axis=axis)


@op(static=("shape",))
def _broadcast(a: Any, shape: tuple[int, ...]) -> Any:
    return jnp.broadcast_to(a, shape)


@op(static=("pads", "mode"))
def _pad(a: Any, pads: tuple[tuple[int, int], ...], mode: str) -> Any:
    if mode == "constant":
        return lax.pad(a, jnp.zeros((), a.dtype), [(lo, hi, 0) for lo, hi in pads])
    return jnp.pad(a, pads, mode=mode)


@op(static=("reps",))
def _tile(a: Any, reps: tuple[int, ...]) -> Any:
    return jnp.tile(a, reps)


@op(static=("axis",))
def _roll_at(a: Any, shift: Any, axis: int) -> Any:
    """``jnp.roll`` by a shift given as data: one eager program per shape, not one per shift (under a
    trace a host shift is a constant, and the roll is two static slices)."""
    return jnp.roll(a, shift, axis=axis)


@op(static=("axes",))
def _flip(a: Any, axes: tuple[int, ...]) -> Any:
    return lax.rev(a, axes)


@op(static=("axis", "size", "step", "n"))
def _unfold(a: Any, axis: int, size: int, step: int, n: int) -> Any:
    idx = np.arange(n)[:, None] * step + np.arange(size)[None, :]
    out = jnp.take(a, jnp.asarray(idx, dtype=jnp.int32), axis=axis)  # (.., n, size, ..)
    return jnp.moveaxis(out, axis + 1, -1)


@op
def _identity_copy(a: Any) -> Any:
    return jnp.copy(a)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _shape_args(args: tuple[Any, ...], op_name: str) -> Any:
    """``f((2, 3))``, ``f([2, 3])``, ``f(Shape)`` or varargs ``f(2, 3)`` -> the shape spec."""
    if len(args) == 1:
        return args[0]
    if not args:
        raise errors.Msg(f"{op_name}: expected a shape")
    return args


def _narrow_check(shape: Sequence[int], dim: int, start: int, length: int) -> None:
    """Candle's ``narrow`` bounds checks (``NarrowInvalidArgs``)."""
    size = shape[dim]
    if length < 0:
        raise errors.NarrowInvalidArgs(shape, dim, start, length, "len < 0")
    if start > size:
        raise errors.NarrowInvalidArgs(shape, dim, start, length, "start > dim_len")
    if start + length > size:
        raise errors.NarrowInvalidArgs(shape, dim, start, length, "start + len > dim_len")


@op(static=("axis", "length", "drop"))
def _narrow_at(a: Any, start: Any, axis: int, length: int, drop: bool) -> Any:
    """``lax.dynamic_slice_in_dim`` (start validated by the caller), the dim dropped if ``drop``."""
    a = lax.dynamic_slice_in_dim(a, start, length, axis=axis)
    return lax.squeeze(a, (axis,)) if drop else a


def _narrow_array(a: Any, dim: int, start: int, length: int, drop: bool = False) -> Any:
    if is_eager():
        # the start as an argument: one program per (shape, dim, length), not one per start (an eager
        # loop over rows, ``t.get(i)`` / ``t.narrow(0, i, 1)``, compiled ~25 ms for each new i)
        return _narrow_at(a, np.int32(start), axis=dim, length=length, drop=drop)
    shape = a.shape
    starts = [0] * len(shape)
    limits = list(shape)
    starts[dim] = start
    limits[dim] = start + length
    out_shape = None
    if drop:
        out_shape = tuple(shape[:dim]) + tuple(shape[dim + 1 :])
    return _slice(a, starts=tuple(starts), limits=tuple(limits), strides=None, shape=out_shape)


def _c_strides(shape: Sequence[int]) -> tuple[int, ...]:
    out = [1] * len(shape)
    acc = 1
    for i in range(len(shape) - 1, -1, -1):
        out[i] = acc
        acc *= shape[i]
    return tuple(out)


def _check_broadcast(src: tuple[int, ...], dst: tuple[int, ...], op_name: str) -> None:
    """Candle's ``Layout::broadcast_as`` rules: dst rank >= src rank, trailing dims equal or 1."""
    if len(dst) < len(src):
        raise errors.BroadcastIncompatibleShapes(src, dst, op_name)
    added = len(dst) - len(src)
    for s, t in zip(src, dst[added:]):
        if s != t and s != 1:
            raise errors.BroadcastIncompatibleShapes(src, dst, op_name)


def _tensors(tensors: Any, op_name: str) -> list[TensorBase]:
    if isinstance(tensors, TensorBase):
        raise errors.Msg(f"{op_name} expects a list of tensors, got a single Tensor (wrap it in a list)")
    try:
        ts = list(tensors)
    except TypeError:
        raise errors.ArgumentType(f"{op_name} expects a list of tensors, got {type(tensors).__name__}") from None
    for t in ts:
        if not isinstance(t, TensorBase):
            raise errors.Msg(f"{op_name} expects Tensors, got {type(t).__name__}")
    return ts


def _check_cat(ts: list[TensorBase], dim: int, op_name: str) -> None:
    """Candle's cat checks in Candle's order: rank, shapes off ``dim``, dtype, device."""
    a0 = ts[0]
    s0 = a0.shape
    for t in ts:
        resolve_dim(dim, t.shape, op_name)
    for n, t in enumerate(ts):
        s = t.shape
        if len(s) != len(s0):
            raise errors.UnexpectedNumberOfDims(len(s0), len(s), s, op_name)
        for i, (v1, v2) in enumerate(zip(s0, s)):
            if i != dim and v1 != v2:
                raise errors.ShapeMismatchCat(i, s0, n + 1, s)
    dt0 = a0._a.dtype
    for t in ts:
        if t._a.dtype != dt0:
            raise errors.DTypeMismatchBinaryOp(a0.dtype, t.dtype, op_name)
    check_same_device(op_name, *ts)


# --------------------------------------------------------------------------------------------------
# the mixin
# --------------------------------------------------------------------------------------------------


class MovementMixin(TensorBase):
    """Tensor shape and view methods (Candle's ``reshape``, ``transpose``, ``narrow``, ``Tensor::cat``,
    ``broadcast_as``, ...)."""

    __slots__ = ()

    # --- reshape family -----------------------------------------------------------------------
    def reshape(self, *shape: Any) -> Tensor:
        """Candle ``reshape(s)``: a shape with at most one hole (``()`` or ``-1``).

        ``t.reshape((2, ()))``, ``t.reshape((2, -1))`` and ``t.reshape(2, -1)`` all work.
        PyTorch: ``Tensor.reshape``. Element count mismatch raises ``ShapeMismatch``.
        """
        a = self._a
        spec = _shape_args(shape, "reshape")
        n = 1
        for d in a.shape:
            n *= d
        target = shape_with_hole(spec, n, "reshape")
        if target == a.shape:
            return self
        return self._wrap(_reshape(a, shape=target))

    def squeeze(self, dim: Any = None) -> Tensor:
        """Candle ``squeeze(d)``: removes dim ``d`` if its size is 1, else a no-op (PyTorch too).
        PyTorch's ``squeeze()`` (no dim) removes every size-1 dim."""
        s = self._a.shape
        if dim is None:
            keep = tuple(d for d in s if d != 1)
            return self if keep == s else self._wrap(_reshape(self._a, shape=keep))
        d = resolve_dim(dim, s, "squeeze")
        if s[d] != 1:
            return self
        return self._wrap(_reshape(self._a, shape=s[:d] + s[d + 1 :]))

    def unsqueeze(self, dim: Any) -> Tensor:
        """Candle ``unsqueeze(d)``: inserts a size-1 dim at ``d`` in ``0..=rank``; ``-1``/``D.Minus1`` appends."""
        s = self._a.shape
        d = resolve_dim(dim, s, "unsqueeze", extra=1)
        return self._wrap(_reshape(self._a, shape=(*s[:d], 1, *s[d:])))

    def _flatten(self, start: Any, end: Any) -> Any:
        s = self._a.shape
        if not s:
            return self._wrap(_reshape(self._a, shape=(1,)))
        st = 0 if start is None else resolve_dim(start, s, "flatten")
        en = len(s) - 1 if end is None else resolve_dim(end, s, "flatten")
        if st >= en:
            return self
        n = 1
        for d in s[st : en + 1]:
            n *= d
        return self._wrap(_reshape(self._a, shape=(*s[:st], n, *s[en + 1 :])))

    def flatten(self, start_dim: Any = 0, end_dim: Any = -1) -> Tensor:
        """Candle ``flatten(start, end)``: merges dims ``start..=end`` (inclusive). Rank 0 -> ``[1]``.

        As in Candle, ``start >= end`` returns the tensor unchanged. PyTorch: ``Tensor.flatten``.
        """
        return self._flatten(start_dim, end_dim)

    def flatten_to(self, dim: Any) -> Tensor:
        """Candle ``flatten_to(end)`` (candle-pyo3 ``flatten_to(dim)``): merges dims ``0..=dim``."""
        return self._flatten(None, dim)

    def flatten_from(self, dim: Any) -> Tensor:
        """Candle ``flatten_from(start)`` (candle-pyo3 ``flatten_from(dim)``): merges dims ``dim..rank``."""
        return self._flatten(dim, None)

    def flatten_all(self) -> Tensor:
        """Candle ``flatten_all()``: a 1-D tensor (rank 0 -> shape ``[1]``)."""
        return self._flatten(None, None)

    # --- transposition ------------------------------------------------------------------------
    def transpose(self, dim1: Any, dim2: Any) -> Tensor:
        """Candle ``transpose(d1, d2)``: swaps two dims (same dim -> unchanged). PyTorch: ``transpose``."""
        s = self._a.shape
        d1 = resolve_dim(dim1, s, "transpose")
        d2 = resolve_dim(dim2, s, "transpose")
        if d1 == d2:
            return self
        perm = list(range(len(s)))
        perm[d1], perm[d2] = d2, d1
        return self._wrap(_transpose(self._a, perm=tuple(perm)))

    def t(self) -> Tensor:
        """Candle ``t()``: swaps the last two dims; rank < 2 raises ``UnexpectedNumberOfDims``."""
        s = self._a.shape
        if len(s) < 2:
            raise errors.UnexpectedNumberOfDims(2, len(s), s, "t")
        return self.transpose(len(s) - 2, len(s) - 1)

    def permute(self, *dims: Any) -> Tensor:
        """Candle ``permute(dims)``: ``dims`` must be a permutation of ``0..rank``.

        ``t.permute((2, 0, 1))`` or ``t.permute(2, 0, 1)``; negative dims and ``D`` accepted.
        PyTorch: ``Tensor.permute``.
        """
        s = self._a.shape
        spec = dims[0] if len(dims) == 1 and not isinstance(dims[0], (int, D)) else dims
        perm = resolve_dims(tuple(spec), s, "permute")
        if len(perm) != len(s) or sorted(perm) != list(range(len(s))):
            raise errors.Msg(f"dimension mismatch in permute, tensor {fmt_shape(s)}, dims: {fmt_shape(perm)}")
        if perm == tuple(range(len(s))):
            return self
        return self._wrap(_transpose(self._a, perm=perm))

    # --- narrowing and splitting --------------------------------------------------------------
    def narrow(self, dim: Any, start: SupportsIndex, len: SupportsIndex) -> Tensor:
        """Candle ``narrow(dim, start, len)``: elements ``start..start+len`` of ``dim`` (dim kept).

        A negative ``start`` counts from the end (as candle-pyo3). Errors: ``NarrowInvalidArgs``
        (``start > dim_len``, ``start + len > dim_len``). PyTorch: ``Tensor.narrow``.
        Under jit ``start`` may be traced (a scalar array or Tensor; ``len`` stays static); it is
        then clamped to ``0..=dim_len-len`` as ``lax.dynamic_slice`` does.
        """
        s = self._a.shape
        d = resolve_dim(dim, s, "narrow")
        length = len if type(len) is int else int_arg(len, "narrow", "len")
        if type(start) is not int:
            dyn = traced_int(start, "narrow", "start")
            if dyn is not None:
                _narrow_check(s, d, 0, length)
                return self._wrap(_narrow_at(self._a, dyn, axis=d, length=length, drop=False))
            start = int_arg(start, "narrow", "start")
        if start < 0:
            if start + s[d] < 0:
                raise errors.NarrowInvalidArgs(s, d, start, length, "start < -dim_len")
            start += s[d]
        _narrow_check(s, d, start, length)
        if start == 0 and length == s[d]:
            return self
        return self._wrap(_narrow_array(self._a, d, start, length))

    def chunk(self, chunks: SupportsIndex, dim: Any) -> list[Tensor]:
        """Candle ``chunk(n, dim)``: ``n`` pieces; the first ``len % n`` get one extra element.

        len 10, n 4 -> sizes ``[3, 3, 2, 2]`` (PyTorch gives ``[3, 3, 3, 1]``); if ``len < n``,
        ``len`` chunks of size 1.
        """
        s = self._a.shape
        d = resolve_dim(dim, s, "chunk")
        chunks = int_arg(chunks, "chunk", "chunks")
        if chunks <= 0:
            raise errors.Msg(f"chunk: the number of chunks must be positive, got {chunks}")
        size = s[d]
        if size < chunks:
            sizes = [1] * size
        else:
            base, extra = divmod(size, chunks)
            sizes = [base + 1 if i < extra else base for i in range(chunks)]
        return self._split_sizes(d, sizes)

    def split(self, split_size_or_sections: Any, dim: Any = 0) -> list[Tensor]:
        """PyTorch ``Tensor.split``: pieces of ``split_size`` (the last may be smaller), or of the
        given section sizes (which must sum to the dim size). Candle's ``Tensor`` has no ``split``.
        """
        s = self._a.shape
        d = resolve_dim(dim, s, "split")
        size = s[d]
        sections = split_size_or_sections
        if not isinstance(sections, (list, tuple, range)) and not getattr(sections, "ndim", 0):
            step = int_arg(sections, "split", "split_size")
            if step <= 0:
                raise errors.Msg(f"split: split_size must be positive, got {step}")
            sizes = [min(step, size - i) for i in range(0, size, step)] or [0]
        else:
            sizes = [int_arg(x, "split", "section size") for x in sections]
            if any(x < 0 for x in sizes) or sum(sizes) != size:
                raise errors.Msg(
                    f"split: sections {sizes} must be non-negative and sum to the size {size} of dim {d}"
                    f" of shape {fmt_shape(s)}"
                )
        return self._split_sizes(d, sizes)

    def _split_sizes(self, d: int, sizes: list[int]) -> list[Any]:
        if not sizes:
            return []
        if len(sizes) == 1 and sizes[0] == self._a.shape[d]:
            return [self]
        bounds = []
        acc = 0
        for n in sizes:
            bounds.append((acc, acc + n))
            acc += n
        return [self._wrap(x) for x in _split(self._a, axis=d, bounds=tuple(bounds))]

    def get(self, index: SupportsIndex) -> Tensor:
        """Candle ``get(i)`` (candle-pyo3 ``get(index)``): index dim 0 and drop it (rank 0 ->
        unchanged). A negative index counts from the end (as candle-pyo3). PyTorch: ``t[i]``."""
        if not self._a.shape:
            return self
        return self._get_on_dim(0, index, "get")

    def get_on_dim(self, dim: Any, index: SupportsIndex) -> Tensor:
        """Candle ``get_on_dim(d, i)``: ``narrow(d, i, 1)`` then ``squeeze(d)``. PyTorch: ``select``."""
        return self._get_on_dim(dim, index, "get_on_dim")

    def _get_on_dim(self, dim: Any, index: SupportsIndex, op_name: str) -> Any:
        s = self._a.shape
        d = resolve_dim(dim, s, op_name)
        i = int_arg(index, op_name, "index")
        if i < 0:
            if i + s[d] < 0:
                raise errors.InvalidIndex(op_name, i, s[d])
            i += s[d]
        _narrow_check(s, d, i, 1)
        return self._wrap(_narrow_array(self._a, d, i, 1, drop=True))

    # --- joining ------------------------------------------------------------------------------
    @staticmethod
    def cat(tensors: Sequence[Any], dim: Any) -> Tensor:
        """Candle ``Tensor::cat(&[a, b], dim)``: same rank, dtype and device; sizes equal off ``dim``.

        Errors: ``OpRequiresAtLeastOneTensor``, ``UnexpectedNumberOfDims``, ``ShapeMismatchCat``,
        ``DTypeMismatchBinaryOp``. PyTorch: ``torch.cat``.
        """
        ts = _tensors(tensors, "cat")
        if not ts:
            raise errors.OpRequiresAtLeastOneTensor("cat")
        d = resolve_dim(dim, ts[0].shape, "cat")  # checked for one tensor too (candle-pyo3, PyTorch)
        if len(ts) == 1:
            return ts[0]
        _check_cat(ts, d, "cat")
        return ts[0]._wrap(_cat([t._a for t in ts], axis=d))

    @staticmethod
    def stack(tensors: Sequence[Any], dim: Any) -> Tensor:
        """Candle ``Tensor::stack(&[a, b], dim)``: all same shape; ``dim`` may equal the rank
        (``-1`` / ``D.Minus1`` append). PyTorch: ``torch.stack``."""
        ts = _tensors(tensors, "stack")
        if not ts:
            raise errors.OpRequiresAtLeastOneTensor("stack")
        s0 = ts[0].shape
        d = resolve_dim(dim, s0, "stack", extra=1)
        ts_shapes = []
        for t in ts:
            s = t.shape
            if len(s) != len(s0):
                raise errors.UnexpectedNumberOfDims(len(s0) + 1, len(s) + 1, (*s[:d], 1, *s[d:]), "stack")
            ts_shapes.append((*s[:d], 1, *s[d:]))
        u0 = ts_shapes[0]
        for n, u in enumerate(ts_shapes):
            for i, (v1, v2) in enumerate(zip(u0, u)):
                if i != d and v1 != v2:
                    raise errors.ShapeMismatchCat(i, u0, n + 1, u)
        dt0 = ts[0]._a.dtype
        for t in ts:
            if t._a.dtype != dt0:
                raise errors.DTypeMismatchBinaryOp(ts[0].dtype, t.dtype, "stack")
        check_same_device("stack", *ts)
        return ts[0]._wrap(_stack([t._a for t in ts], axis=d))

    # --- broadcasting -------------------------------------------------------------------------
    def broadcast_as(self, *shape: Any) -> Tensor:
        """Candle ``broadcast_as(shape)``: numpy rules, target rank >= rank. Errors:
        ``BroadcastIncompatibleShapes``. PyTorch: ``Tensor.expand`` / ``broadcast_to``."""
        dst = as_shape(_shape_args(shape, "broadcast_as"))
        src = self._a.shape
        _check_broadcast(src, dst, "broadcast_as")
        if dst == src:
            return self
        return self._wrap(_broadcast(self._a, shape=dst))

    def expand(self, *shape: Any) -> Tensor:
        """Candle ``expand`` (alias of ``broadcast_as``); as in PyTorch, ``-1`` keeps a dim's size."""
        spec = _shape_args(shape, "expand")
        if isinstance(spec, Shape):
            spec = spec.dims()
        if isinstance(spec, int) or hasattr(spec, "__index__"):
            spec = (spec,)
        spec = tuple(int_arg(x, "expand", "size") for x in spec)
        src = self._a.shape
        if -1 in spec:
            off = len(spec) - len(src)
            spec = tuple(src[i - off] if (x == -1 and i >= off) else x for i, x in enumerate(spec))
            if -1 in spec:
                raise errors.Msg(f"expand: -1 is not allowed for the new leading dims in {list(spec)}")
        dst = as_shape(spec)
        _check_broadcast(src, dst, "expand")
        if dst == src:
            return self
        return self._wrap(_broadcast(self._a, shape=dst))

    def broadcast_left(self, *left_shape: Any) -> Tensor:
        """Candle ``broadcast_left(left)``: prepends dims, ``(3,)`` with left ``(2,)`` -> ``(2, 3)``."""
        left = as_shape(_shape_args(left_shape, "broadcast_left"))
        if not left:
            return self
        return self._wrap(_broadcast(self._a, shape=check_elem_count(left + self._a.shape, "broadcast_left")))

    # --- layout -------------------------------------------------------------------------------
    def contiguous(self) -> Tensor:
        """Candle ``contiguous()``: returns ``self``. JAX arrays have no strides to fix; XLA picks
        the layout, so every tensor behaves as C-contiguous."""
        return self

    def force_contiguous(self) -> Tensor:
        """Candle ``force_contiguous()``: a copy of the data (a new array), always C-contiguous."""
        return self._wrap(_identity_copy(self._a))

    def is_contiguous(self) -> bool:
        """Always ``True`` (see ``contiguous``)."""
        return True

    def is_fortran_contiguous(self) -> bool:
        """``True`` when the (C-contiguous) data is also column-major: at most one dim > 1."""
        return sum(1 for d in self._a.shape if d > 1) <= 1

    @property
    def stride(self) -> CallableTuple:
        """The C-contiguous strides in elements, e.g. ``(3, 1)`` for ``[2, 3]``: candle-pyo3's ``t.stride``
        getter, also callable as Rust Candle's ``t.stride()``."""
        return CallableTuple(_c_strides(self._a.shape))

    def layout(self) -> Layout:
        """Candle ``layout()``: always ``Layout.contiguous(shape)`` (C strides, start offset 0), as
        ``stride()`` and ``is_contiguous()`` report; XLA arrays have no views."""
        return Layout.contiguous(self._a.shape)

    def normalize_axis(self, axis: int) -> int:
        """Candle ``normalize_axis(axis)``: a negative axis counted from the end, as a positive one;
        ``axis 5 is too large, tensor rank 2`` / ``axis -3 is too small, tensor rank 2`` otherwise."""
        axis = int_arg(axis, "normalize_axis", "axis")
        rank = self._a.ndim
        if axis >= rank:
            raise errors.Msg(f"axis {axis} is too large, tensor rank {rank}")
        if axis >= 0:
            return axis
        if rank + axis < 0:
            raise errors.Msg(f"axis {axis} is too small, tensor rank {rank}")
        return rank + axis

    # --- padding, tiling, rolling -------------------------------------------------------------
    def pad_with_zeros(self, dim: Any, left: int, right: int) -> Tensor:
        """Candle ``pad_with_zeros(d, left, right)``. PyTorch: ``F.pad(x, ..., value=0)``."""
        s = self._a.shape
        d = resolve_dim(dim, s, "pad_with_zeros")
        left, right = int_arg(left, "pad_with_zeros", "left"), int_arg(right, "pad_with_zeros", "right")
        if left < 0 or right < 0:
            raise errors.Msg(f"pad_with_zeros: left and right must be non-negative, got {left}, {right}")
        if left == 0 and right == 0:
            return self
        check_elem_count((*s[:d], s[d] + left + right, *s[d + 1:]), "pad_with_zeros")
        pads = tuple((left, right) if i == d else (0, 0) for i in range(len(s)))
        return self._wrap(_pad(self._a, pads=pads, mode="constant"))

    def pad_with_same(self, dim: Any, left: int, right: int) -> Tensor:
        """Candle ``pad_with_same(d, left, right)``: repeats the edge values.
        PyTorch: ``F.pad(x, ..., mode="replicate")``."""
        s = self._a.shape
        d = resolve_dim(dim, s, "pad_with_same")
        left, right = int_arg(left, "pad_with_same", "left"), int_arg(right, "pad_with_same", "right")
        if left < 0 or right < 0:
            raise errors.Msg(f"pad_with_same: left and right must be non-negative, got {left}, {right}")
        if left == 0 and right == 0:
            return self
        if self.elem_count() == 0:
            raise errors.Msg("cannot use pad_with_same on an empty tensor")
        check_elem_count((*s[:d], s[d] + left + right, *s[d + 1:]), "pad_with_same")
        pads = tuple((left, right) if i == d else (0, 0) for i in range(len(s)))
        return self._wrap(_pad(self._a, pads=pads, mode="edge"))

    def repeat(self, *shape: Any) -> Tensor:
        """Candle ``repeat(shape)`` (PyTorch ``Tensor.repeat``, numpy ``tile``): repeat counts per dim.

        With more counts than dims the rank is extended on the left; with fewer (Candle only,
        PyTorch raises) the counts apply to the leading dims. A count of 0 gives an empty dim.
        """
        reps = as_shape(_shape_args(shape, "repeat"))
        s = self._a.shape
        if len(reps) < len(s):
            reps = reps + (1,) * (len(s) - len(reps))
        if all(r == 1 for r in reps) and len(reps) == len(s):
            return self
        s = (1,) * (len(reps) - len(s)) + tuple(s)
        check_elem_count(tuple(r * d for r, d in zip(reps, s)), "repeat")
        return self._wrap(_tile(self._a, reps=reps))

    def roll(self, shift: SupportsIndex, dim: Any) -> Tensor:
        """Candle ``roll(shift, d)``: circular shift along ``d``. PyTorch: ``torch.roll``."""
        s = self._a.shape
        d = resolve_dim(dim, s, "roll")
        shift = int_arg(shift, "roll", "shift")
        if s[d] == 0:
            return self
        shift %= s[d]
        if shift == 0:
            return self
        return self._wrap(_roll_at(self._a, np.int32(shift), axis=d))

    def flip(self, dims: Any) -> Tensor:
        """Candle ``flip(&[dims])``: reverses the order along each dim. PyTorch: ``torch.flip``."""
        s = self._a.shape
        axes = resolve_dims(dims, s, "flip")
        if not axes:
            return self
        return self._wrap(_flip(self._a, axes=tuple(sorted(axes))))

    def unfold(self, dim: Any, size: int, step: int) -> Tensor:
        """Candle / PyTorch ``unfold(d, size, step)``: every window of ``size`` along ``d``, ``step``
        apart, as a new trailing dim; dim ``d`` becomes ``(len - size) // step + 1``."""
        s = self._a.shape
        d = resolve_dim(dim, s, "unfold")
        size, step = int_arg(size, "unfold", "size"), int_arg(step, "unfold", "step")
        if step <= 0:
            raise errors.Msg(f"unfold: step must be positive, got {step}")
        if size < 0 or size > s[d]:
            raise errors.Msg(f"unfold: maximum size for tensor at dimension {d} is {s[d]} but size is {size}")
        n = (s[d] - size) // step + 1
        return self._wrap(_unfold(self._a, axis=d, size=size, step=step, n=n))
