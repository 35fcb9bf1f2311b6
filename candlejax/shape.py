"""Shapes, dims and ``D``: Candle's ``Shape``, ``D::Minus1`` and dim-resolution helpers.

Candle dims are ``usize`` or ``D::Minus1/Minus2/Minus(n)``; candlejax also accepts plain negative
ints (``-1`` == ``D.Minus1``). ``resolve_dim`` turns any of them into a positive axis or raises
``DimOutOfRange`` naming the op and the shape.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from candlejax import errors

__all__ = [
    "MAX_ELEM_COUNT", "PLAIN_SHAPE_TYPES", "CallableInt", "CallableTuple", "D", "Dim", "Dims", "Layout", "Rank",
    "Shape", "as_shape", "broadcast_shapes", "check_elem_count", "resolve_dim", "resolve_dims", "shape_with_hole",
]  # fmt: skip


class D:
    """Candle's ``D`` enum: ``D.Minus1``, ``D.Minus2``, ``D.Minus(n)``."""

    __slots__ = ("n",)
    Minus1: ClassVar[D]  # set below the class: Candle's D::Minus1, the last dim
    Minus2: ClassVar[D]

    def __init__(self, n: int):
        if isinstance(n, bool) or not hasattr(type(n), "__index__"):
            raise errors.ArgumentType(f"D.Minus expects a positive int offset, got {n!r:.40} ({type(n).__name__})")
        n = operator.index(n)
        if n <= 0:
            raise errors.InvalidArgument(f"D.Minus expects a positive offset, got {n}")
        self.n = n

    @staticmethod
    def Minus(n: int) -> D:  # noqa: N802 - Candle's name
        """Candle's ``D::Minus(n)``: the ``n``-th dim from the end."""
        return D(n)

    def to_index(self, shape: Any, op: str = "dim") -> int:
        """Candle's ``Dim::to_index(&shape, op)``: the positive index on ``shape`` (a ``Shape``, a
        tuple of dims, or a Tensor's rank as an int), or ``{op}: dimension index -3 out of range for
        shape [2, 3]``."""
        if isinstance(shape, int):
            return shape - self.n
        return resolve_dim(self, as_shape(shape), op)

    def to_index_plus_one(self, shape: Any, op: str = "dim") -> int:
        """Candle's ``Dim::to_index_plus_one(&shape, op)``: as ``to_index`` on ``rank + 1`` dims
        (``unsqueeze`` / ``stack``, where ``D.Minus1`` is the new last position)."""
        return resolve_dim(self, as_shape(shape), op, extra=1)

    def __index__(self) -> int:
        return -self.n

    def __int__(self) -> int:
        return -self.n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, D) and other.n == self.n

    def __hash__(self) -> int:
        return hash(("D", self.n))

    def __repr__(self) -> str:
        return f"D.Minus{self.n}" if self.n <= 2 else f"D.Minus({self.n})"


D.Minus1 = D(1)
D.Minus2 = D(2)

Dim = int | D


def _one_index(x: Any) -> bool:
    """Whether ``x`` stands for a single index (an int, a numpy integer, a 0-d array or Tensor) rather
    than a numpy array of them, which candle-pyo3 reads as a sequence (numpy arrays of any rank have
    ``__index__``; other arrays' ``__index__`` names what is wrong with them)."""
    return hasattr(x, "__index__") and not (isinstance(x, np.ndarray) and x.ndim)


def resolve_dim(dim: Any, shape: Sequence[int], op: str, *, extra: int = 0) -> int:
    """A positive axis for ``dim`` (int, negative int or ``D``) on ``shape``.

    ``extra=1`` allows ``dim == rank`` (for ``unsqueeze`` / ``stack``), where ``D.Minus1`` /
    ``-1`` mean "append at the end" as in Candle.
    """
    rank = len(shape)
    if isinstance(dim, D):
        d = rank + extra - dim.n
    else:
        try:
            d = int(dim.__index__())
        except (AttributeError, TypeError):
            raise errors.InvalidArgument(f"{op}: dim must be an int or D, got {dim!r}") from None
        if d < 0:
            d += rank + extra
    if not 0 <= d < rank + extra:
        raise errors.DimOutOfRange(shape, int(dim) if not isinstance(dim, D) else -dim.n, op)
    return d


def resolve_dims(dims: Any, shape: Sequence[int], op: str) -> tuple[int, ...]:
    """Resolve one dim or a sequence of dims; duplicates raise ``DuplicateDimIndex``."""
    if isinstance(dims, (int, D)) or _one_index(dims):
        return (resolve_dim(dims, shape, op),)
    if not isinstance(dims, (tuple, list)):
        try:
            dims = tuple(dims)
        except TypeError:
            msg = f"{op}: dims must be an int, a D or a sequence of them, got {dims!r}"
            raise errors.InvalidArgument(msg) from None
    out = tuple(resolve_dim(d, shape, op) for d in dims)
    if len(set(out)) != len(out):
        raise errors.DuplicateDimIndex(shape, out, op)
    return out


def _dim_int(d: Any, shape: Any) -> int:
    """One dim of a shape: an int (or an integer-valued index type), never a float or a bool."""
    if isinstance(d, bool) or not _one_index(d):
        raise errors.DimType(f"shape {tuple(shape)!r}: dims must be integers, got {d!r} ({type(d).__name__})")
    try:
        return operator.index(d)
    except TypeError:  # a float 0-d array
        raise errors.DimType(f"shape {tuple(shape)!r}: dims must be integers, got {d!r} ({type(d).__name__})") from None


def _items(shape: Any, op: str) -> tuple[Any, ...]:
    """The dims of a Shape, a single index-like dim or an iterable, as a tuple (not yet checked);
    ``InvalidShape`` naming ``op`` for anything else."""
    if isinstance(shape, Shape):
        return shape.dims()
    if _one_index(shape):
        return (shape,)
    try:
        return tuple(shape)
    except TypeError:
        raise errors.InvalidShape(f"{op + ': ' if op else ''}cannot use {shape!r} as a shape") from None


def as_shape(shape: Any) -> tuple[int, ...]:
    """A tuple of ints from a Shape, an int, a tuple/list, or ``()`` (scalar)."""
    if isinstance(shape, Shape):
        return shape.dims()
    if type(shape) is int and 0 <= shape <= MAX_ELEM_COUNT:
        return (shape,)
    items = _items(shape, "")
    out = tuple(_dim_int(d, items) for d in items)
    if any(d < 0 for d in out):
        raise errors.NegativeDim(f"negative dimension in shape {list(out)}")
    return check_elem_count(out)


#: the most elements a tensor can have: XLA multiplies a shape's dims, and its byte size (up to 8 bytes
#: an element), as signed 64-bit integers, and aborts the process when the product overflows
MAX_ELEM_COUNT = (2**63 - 1) // 8
_MAX_EXTENT = 2**63 - 1


def check_elem_count(dims: Sequence[int], op: str | None = None) -> Any:
    """``dims`` itself, or ``InvalidShape`` when its element count (zero dims left out) is above
    :data:`MAX_ELEM_COUNT`: its byte size would overflow a signed 64-bit integer, which no tensor can have."""
    n, empty = 1, False
    for d in dims:
        if d:
            n *= d
        else:
            empty = True
    if n > (_MAX_EXTENT if empty else MAX_ELEM_COUNT):  # an empty tensor has no bytes: only the dims count
        limit = "2^63 - 1 without the zero dims" if empty else "2^60 - 1"
        raise errors.InvalidShape(
            (f"{op}: " if op else "")
            + f"the shape {errors.fmt_shape(dims)} has {n} elements, more than a tensor can hold (at most {limit})"
        )
    return dims


def _is_hole(d: Any) -> bool:
    """``()`` or ``-1`` (a Python or numpy integer) in a reshape spec."""
    if isinstance(d, tuple):
        return d == ()
    return not isinstance(d, bool) and _one_index(d) and _index_or_none(d) == -1


def _index_or_none(d: Any) -> int | None:
    try:
        return operator.index(d)
    except TypeError:  # a float 0-d array: left to _dim_int, which names it
        return None


def shape_with_hole(spec: Any, elem_count: int, op: str = "reshape") -> tuple[int, ...]:
    """Candle's ``ShapeWithOneHole``: a shape where one entry may be ``()`` (or ``-1``)."""
    if type(spec) in PLAIN_SHAPE_TYPES and all(type(d) is int and d >= 0 for d in spec):  # fast path: a plain shape
        n = 1
        for d in spec:
            n *= d
        if n != elem_count:
            raise errors.ShapeMismatch(elem_count, spec)
        return spec if n else check_elem_count(spec, op)
    spec = _items(spec, op)
    holes = [i for i, d in enumerate(spec) if _is_hole(d)]
    if len(holes) > 1:
        raise errors.InvalidShape(f"{op}: at most one hole (`()` or -1) is allowed in {spec}")
    if not holes:
        dims = as_shape(spec)
        n = 1
        for d in dims:
            n *= d
        if n != elem_count:
            raise errors.ShapeMismatch(elem_count, dims)
        return dims
    spec = tuple(d if i == holes[0] else _dim_int(d, spec) for i, d in enumerate(spec))
    if any(i != holes[0] and d < 0 for i, d in enumerate(spec)):
        raise errors.NegativeDim(f"{op}: negative dimension in shape {list(spec)} (only one -1 hole is allowed)")
    known = 1
    for i, d in enumerate(spec):
        if i != holes[0]:
            known *= d
    if known == 0 or elem_count % known:
        shown = "(" + ", ".join("()" if i == holes[0] else str(d) for i, d in enumerate(spec)) + ")"
        raise errors.InvalidShape(f"cannot reshape tensor with {elem_count} elements to {shown}")
    out = tuple(elem_count // known if i == holes[0] else int(d) for i, d in enumerate(spec))
    return out if elem_count else check_elem_count(out, op)


class Dims(tuple):
    """A tensor's dims (``t.shape``, ``t.dims()``): a tuple, as in candle-pyo3 and numpy, that also
    equals the list of the same ints (as PyTorch's ``Size`` does, and as Rust compares ``t.dims()``
    with ``vec![2, 3]``), and that Rust Candle's call form ``t.shape()`` accepts, giving the
    :class:`Shape` (``t.shape().dims3()``)."""

    __slots__ = ()

    def __call__(self) -> Shape:
        return Shape(self)

    # Candle's ``Shape`` methods on the tuple itself, for fields Candle types as ``Shape`` (a GGUF
    # ``TensorInfo.shape``: ``info.shape.elem_count()``)
    def dims(self) -> Dims:
        """The dims themselves (Candle's ``Shape::dims``)."""
        return self

    def rank(self) -> int:
        """Candle's ``Shape::rank``: the number of dims."""
        return len(self)

    def elem_count(self) -> int:
        """Candle's ``Shape::elem_count``: the product of the dims."""
        return Shape(self).elem_count()

    def dims1(self) -> int:
        """Candle's ``Shape::dims1``: the single dim; raises unless the rank is 1."""
        return Shape(self).dims1()

    def dims2(self) -> tuple[int, int]:
        """Candle's ``Shape::dims2``: the two dims; raises unless the rank is 2."""
        return Shape(self).dims2()

    def dims3(self) -> tuple[int, int, int]:
        """Candle's ``Shape::dims3``: the three dims; raises unless the rank is 3."""
        return Shape(self).dims3()

    def dims4(self) -> tuple[int, int, int, int]:
        """Candle's ``Shape::dims4``: the four dims; raises unless the rank is 4."""
        return Shape(self).dims4()

    def to_vec(self) -> list[int]:
        """Rust's ``t.dims().to_vec()``: the dims as a new list."""
        return list(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, list):
            return list(self) == other
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = tuple.__hash__


class CallableInt(int):
    """A plain int that Rust Candle's accessor call also reads: ``t.rank`` and ``t.rank()`` (as in
    candle-pyo3 and Rust), a KV cache's ``cache.dim`` and ``cache.dim()``."""

    __slots__ = ()

    def __call__(self) -> int:
        return int(self)


#: a tensor's rank (``t.rank``, ``t.rank()``)
Rank = CallableInt


class CallableTuple(tuple):
    """A plain tuple that Rust Candle's accessor call also reads: ``t.stride`` (candle-pyo3's getter)
    and ``t.stride()`` (Rust)."""

    __slots__ = ()

    def __call__(self) -> CallableTuple:
        return self


#: tuple types taken as they are by the shape fast paths
PLAIN_SHAPE_TYPES = (tuple, Dims)


class Shape:
    """Candle's ``Shape``: ``Shape((2, 3)).dims()``, ``.rank()``, ``.elem_count()``, ``.dims2()``."""

    __slots__ = ("_dims",)

    def __init__(self, dims: Iterable[int] | int = ()):
        # Dims: equal to lists of the same ints, as Rust compares `shape.dims()` with `&[2, 3]`
        self._dims = Dims(as_shape(dims))

    @staticmethod
    def from_dims(dims: Iterable[int]) -> Shape:
        """Candle's ``Shape::from_dims``."""
        return Shape(dims)

    def dims(self) -> Dims:
        """Candle's ``Shape::dims``: the dims as a ``Dims`` tuple."""
        return self._dims

    def into_dims(self) -> list[int]:
        """Candle's ``Shape::into_dims``: the dims as a list."""
        return list(self._dims)

    def to_vec(self) -> list[int]:
        """The dims as a new list, as Rust's ``shape.dims().to_vec()`` (or the safetensors crate's
        ``view.shape().to_vec()``)."""
        return list(self._dims)

    def rank(self) -> int:
        """Candle's ``Shape::rank``: the number of dims."""
        return len(self._dims)

    def elem_count(self) -> int:
        """Candle's ``Shape::elem_count``: the product of the dims (1 for a scalar)."""
        n = 1
        for d in self._dims:
            n *= d
        return n

    def dim(self, d: Dim) -> int:
        """Candle's ``Shape::dim``: the size of dim ``d`` (an int, negative from the end, or ``D``)."""
        return self._dims[resolve_dim(d, self._dims, "dim")]

    def stride_contiguous(self) -> Dims:
        """Candle's ``stride_contiguous()``: the row-major (C) strides, in elements."""
        strides, acc = [], 1
        for d in reversed(self._dims):
            strides.append(acc)
            acc *= d
        return Dims(reversed(strides))

    def is_contiguous(self, stride: Sequence[int]) -> bool:
        """Candle's ``is_contiguous(stride)``: ``stride`` is row-major for this shape (size-1 dims
        may have any stride)."""
        return self._strides_match(reversed(self._dims), reversed(tuple(stride)), len(tuple(stride)))

    def is_fortran_contiguous(self, stride: Sequence[int]) -> bool:
        """Candle's ``is_fortran_contiguous(stride)``: ``stride`` is column-major for this shape."""
        return self._strides_match(iter(self._dims), iter(tuple(stride)), len(tuple(stride)))

    def _strides_match(self, dims: Iterable[int], strides: Iterable[int], n_strides: int) -> bool:
        if n_strides != len(self._dims):
            return False
        acc = 1
        for d, st in zip(dims, strides):
            if d > 1 and st != acc:
                return False
            acc *= d
        return True

    def extend(self, more: Iterable[int]) -> Shape:
        """Candle's ``Shape::extend``: this shape followed by ``more``."""
        return Shape((*self._dims, *more))

    def _dimsn(self, n: int) -> tuple[int, ...]:
        if len(self._dims) != n:
            raise errors.UnexpectedNumberOfDims(n, len(self._dims), self._dims)
        return self._dims

    def dims0(self) -> tuple[()]:
        """Candle's ``Shape::dims0``: ``()``; raises unless the rank is 0."""
        self._dimsn(0)
        return ()

    def dims1(self) -> int:
        """Candle's ``Shape::dims1``: the single dim; raises unless the rank is 1."""
        return self._dimsn(1)[0]

    def dims2(self) -> tuple[int, int]:
        """Candle's ``Shape::dims2``: the two dims; raises unless the rank is 2."""
        return self._dimsn(2)  # type: ignore[return-value]

    def dims3(self) -> tuple[int, int, int]:
        """Candle's ``Shape::dims3``: the three dims; raises unless the rank is 3."""
        return self._dimsn(3)  # type: ignore[return-value]

    def dims4(self) -> tuple[int, int, int, int]:
        """Candle's ``Shape::dims4``: the four dims; raises unless the rank is 4."""
        return self._dimsn(4)  # type: ignore[return-value]

    def dims5(self) -> tuple[int, int, int, int, int]:
        """Candle's ``Shape::dims5``: the five dims; raises unless the rank is 5."""
        return self._dimsn(5)  # type: ignore[return-value]

    def broadcast_shape_binary_op(self, rhs: Shape | Sequence[int], op: str) -> Shape:
        """Candle's ``Shape::broadcast_shape_binary_op``: the broadcast shape of ``self`` and ``rhs``."""
        return Shape(broadcast_shapes(self._dims, as_shape(rhs), op))

    def __iter__(self):
        return iter(self._dims)

    def __len__(self) -> int:
        return len(self._dims)

    def __getitem__(self, i):
        return self._dims[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Shape):
            return self._dims == other._dims
        if isinstance(other, (tuple, list)):
            return self._dims == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._dims)

    def __repr__(self) -> str:
        return errors.fmt_shape(self._dims)


class Layout:
    """Candle's ``Layout`` (``t.layout()``): a shape, strides in elements and a start offset.

    candlejax tensors are XLA arrays without views, so a Tensor's layout is always
    ``Layout.contiguous(shape)`` (C strides, offset 0); ``Layout.new(shape, stride, start_offset)``
    describes any other, as in Candle.
    """

    __slots__ = ("_shape", "_start_offset", "_stride")

    def __init__(self, shape: Any, stride: Sequence[int], start_offset: int = 0):
        self._shape = shape if isinstance(shape, Shape) else Shape(shape)
        self._stride = Dims(int(s) for s in stride)
        self._start_offset = int(start_offset)
        if len(self._stride) != self._shape.rank():
            raise errors.Msg(f"layout: {len(self._stride)} strides for shape {self._shape!r}")

    @staticmethod
    def new(shape: Any, stride: Sequence[int], start_offset: int) -> Layout:
        """``Layout::new(shape, stride, start_offset)``."""
        return Layout(shape, stride, start_offset)

    @staticmethod
    def contiguous_with_offset(shape: Any, start_offset: int) -> Layout:
        """``Layout::contiguous_with_offset(shape, start_offset)``: C strides."""
        sh = shape if isinstance(shape, Shape) else Shape(shape)
        return Layout(sh, sh.stride_contiguous(), start_offset)

    @staticmethod
    def contiguous(shape: Any) -> Layout:
        """``Layout::contiguous(shape)``: C strides, offset 0."""
        return Layout.contiguous_with_offset(shape, 0)

    def shape(self) -> Shape:
        """Candle's ``Layout::shape``."""
        return self._shape

    def dims(self) -> Dims:
        """Candle's ``Layout::dims``."""
        return self._shape.dims()

    def dim(self, d: Dim) -> int:
        """Candle's ``Layout::dim``: the size of dim ``d``."""
        return self._shape.dim(d)

    def stride(self) -> Dims:
        """Candle's ``Layout::stride``: the strides, in elements."""
        return self._stride

    def start_offset(self) -> int:
        """Candle's ``Layout::start_offset``: the offset of the first element, in elements."""
        return self._start_offset

    def is_contiguous(self) -> bool:
        """Candle's ``Layout::is_contiguous``: whether the strides are row-major for the shape."""
        return self._shape.is_contiguous(self._stride)

    def is_fortran_contiguous(self) -> bool:
        """Candle's ``Layout::is_fortran_contiguous``: whether the strides are column-major."""
        return self._shape.is_fortran_contiguous(self._stride)

    def contiguous_offsets(self) -> tuple[int, int] | None:
        """``(start, start + elem_count)`` when C-contiguous, else ``None`` (Rust's ``Option``)."""
        if not self.is_contiguous():
            return None
        return (self._start_offset, self._start_offset + self._shape.elem_count())

    def is_scalar(self) -> bool:
        """``Layout::is_scalar``: rank 0 or every dim 1."""
        return all(d == 1 for d in self._shape)

    def is_scalar_broadcast(self) -> bool:
        """``Layout::is_scalar_broadcast``: every stride 0 (one value broadcast everywhere)."""
        return all(s == 0 for s in self._stride)

    def is_scalar_like(self) -> bool:
        """``Layout::is_scalar_like``: ``is_scalar() or is_scalar_broadcast()``."""
        return self.is_scalar() or self.is_scalar_broadcast()

    def narrow(self, dim: Dim, start: int, len: int) -> Layout:
        """``Layout::narrow(dim, start, len)``: the same strides, the offset moved by ``start`` rows."""
        dims = self._shape.dims()
        d = resolve_dim(dim, dims, "narrow")
        start, len = int(start), int(len)
        if start < 0 or len < 0 or start + len > dims[d]:
            raise errors.NarrowInvalidArgs(dims, d, start, len, "start + len > dim_len")
        new_dims = list(dims)
        new_dims[d] = len
        return Layout(Shape(new_dims), self._stride, self._start_offset + self._stride[d] * start)

    def transpose(self, dim1: Dim, dim2: Dim) -> Layout:
        """``Layout::transpose(dim1, dim2)``: dims and strides swapped."""
        dims = list(self._shape.dims())
        d1, d2 = resolve_dim(dim1, dims, "transpose"), resolve_dim(dim2, dims, "transpose")
        stride = list(self._stride)
        dims[d1], dims[d2] = dims[d2], dims[d1]
        stride[d1], stride[d2] = stride[d2], stride[d1]
        return Layout(Shape(dims), stride, self._start_offset)

    def permute(self, idxs: Sequence[Dim]) -> Layout:
        """``Layout::permute(idxs)``: ``idxs`` must be a permutation of ``0..rank``."""
        dims = self._shape.dims()
        try:
            perm = resolve_dims(tuple(idxs), dims, "permute")
        except errors.Error:
            perm = None
        if perm is None or len(perm) != len(dims):
            raise errors.Msg(f"dimension mismatch in permute, tensor {errors.fmt_shape(dims)}, dims: {list(idxs)}")
        return Layout(Shape(dims[i] for i in perm), [self._stride[i] for i in perm], self._start_offset)

    def broadcast_as(self, shape: Any) -> Layout:
        """``Layout::broadcast_as(shape)``: stride 0 on the added and the expanded size-1 dims."""
        dst = shape if isinstance(shape, Shape) else Shape(as_shape(shape))
        src = self._shape.dims()
        added = dst.rank() - len(src)
        if added < 0:
            raise errors.BroadcastIncompatibleShapes(src, dst.dims())
        stride = [0] * added
        for dst_dim, src_dim, src_stride in zip(dst.dims()[added:], src, self._stride):
            if dst_dim == src_dim:
                stride.append(src_stride)
            elif src_dim != 1:
                raise errors.BroadcastIncompatibleShapes(src, dst.dims())
            else:
                stride.append(0)
        return Layout(dst, stride, self._start_offset)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Layout):
            return NotImplemented
        return (self._shape, self._stride, self._start_offset) == (other._shape, other._stride, other._start_offset)

    def __hash__(self) -> int:
        return hash((self._shape, self._stride, self._start_offset))

    def __repr__(self) -> str:
        return f"Layout {{ shape: {self._shape!r}, stride: {list(self._stride)}, start_offset: {self._start_offset} }}"


def broadcast_shapes(lhs: Sequence[int], rhs: Sequence[int], op: str) -> tuple[int, ...]:
    """Numpy broadcasting of two shapes, raising ``ShapeMismatchBinaryOp`` naming ``op``."""
    n = max(len(lhs), len(rhs))
    a = (1,) * (n - len(lhs)) + tuple(lhs)
    b = (1,) * (n - len(rhs)) + tuple(rhs)
    out = []
    for x, y in zip(a, b):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise errors.ShapeMismatchBinaryOp(lhs, rhs, op, "the shapes cannot be broadcast together")
    return tuple(out)
