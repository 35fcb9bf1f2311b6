"""Candle's streaming tensors (``candle::streaming``): ``StreamTensor``, ``StreamingModule``,
``StreamingBinOp`` and ``Map``, as used by streaming audio models (mimi, moshi).

A ``StreamTensor`` holds a Tensor or nothing (a step that produced no frames yet). Every method
returns a new value, except ``reset``, which empties the stream tensor in place as Candle's
``&mut self`` does; ``StreamingBinOp`` keeps the frames one side received ahead of the other.

>>> from candlejax import Tensor
>>> a = StreamTensor.from_tensor(Tensor.new([[1.0, 2.0, 3.0]]))
>>> lhs, rhs = a.split(1, 2)
>>> lhs.shape(), rhs.shape()
((1, 2), (1, 1))
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

from candlejax import errors
from candlejax.shape import Dim, Dims
from candlejax.tensor import Tensor


class StreamTensor:
    """``candle::StreamTensor``: ``Option<Tensor>``; ``StreamTensor(None)`` / ``StreamTensor.empty()``
    is the empty stream, ``StreamTensor(t)`` / ``StreamTensor.from_tensor(t)`` holds ``t``."""

    __slots__ = ("_t",)

    def __init__(self, tensor: Tensor | None = None):
        if tensor is not None and not isinstance(tensor, Tensor):
            raise errors.InvalidArgument(f"StreamTensor: expected a Tensor or None, got {type(tensor).__name__}")
        self._t = tensor

    @staticmethod
    def empty() -> StreamTensor:
        """``StreamTensor::empty()``: no tensor."""
        return StreamTensor(None)

    @staticmethod
    def from_tensor(tensor: Tensor) -> StreamTensor:
        """``StreamTensor::from_tensor(t)``."""
        if tensor is None:
            raise errors.InvalidArgument("StreamTensor.from_tensor: expected a Tensor, got None")
        return StreamTensor(tensor)

    def shape(self) -> Dims | None:
        """``shape()``: the tensor's shape, ``None`` when empty."""
        return None if self._t is None else self._t.shape

    def as_option(self) -> Tensor | None:
        """``as_option()``: the tensor, or ``None`` when empty."""
        return self._t

    def cat2(self, rhs: StreamTensor, dim: Dim) -> StreamTensor:
        """``cat2(&rhs, dim)``: ``self`` then ``rhs`` along ``dim``; an empty side is skipped."""
        if self._t is None:
            return StreamTensor(rhs._t)
        if rhs._t is None:
            return StreamTensor(self._t)
        return StreamTensor(Tensor.cat([self._t, rhs._t], dim))

    def seq_len(self, dim: Dim) -> int:
        """``seq_len(dim)``: the size of ``dim``, 0 when empty."""
        return 0 if self._t is None else self._t.dim(dim)

    def reset(self) -> None:
        """``reset()``: empties this stream tensor (in place, as Candle's ``&mut self``)."""
        self._t = None

    def narrow(self, dim: Dim, offset: int, len: int) -> StreamTensor:
        """``narrow(dim, offset, len)``: at most ``len`` entries from ``offset``; empty when
        ``offset`` is at or past the end."""
        if self._t is None:
            return StreamTensor(None)
        seq_len = self._t.dim(dim)
        if seq_len <= offset:
            return StreamTensor(None)
        return StreamTensor(self._t.narrow(dim, offset, min(len, seq_len - offset)))

    def split(self, dim: Dim, lhs_len: int) -> tuple[StreamTensor, StreamTensor]:
        """``split(dim, lhs_len)``: the first ``lhs_len`` entries along ``dim`` and the rest
        (either side empty when it would have no entries)."""
        t = self._t
        if t is None:
            return StreamTensor(None), StreamTensor(None)
        seq_len = t.dim(dim)
        lhs_len = min(seq_len, lhs_len)
        if lhs_len == 0:
            return StreamTensor(None), StreamTensor(t)
        rhs_len = seq_len - lhs_len
        rhs = StreamTensor(None) if rhs_len == 0 else StreamTensor(t.narrow(dim, lhs_len, rhs_len))
        return StreamTensor(t.narrow(dim, 0, lhs_len)), rhs

    def apply(self, m: Any) -> StreamTensor:
        """``apply(&m)``: ``t.apply(m)`` on the tensor; empty stays empty."""
        return StreamTensor(None) if self._t is None else StreamTensor(self._t.apply(m))

    def __repr__(self) -> str:
        return "Empty" if self._t is None else errors.fmt_shape(self._t.shape)


class StreamingModule(Protocol):
    """``candle::StreamingModule``: ``step(xs) -> StreamTensor`` (may buffer) and ``reset_state()``."""

    def step(self, xs: StreamTensor) -> StreamTensor:
        """Candle's ``StreamingModule::step``: process the next chunk ``xs``; may return ``Empty`` while buffering."""

    def reset_state(self) -> None:
        """Candle's ``StreamingModule::reset_state``: forget any buffered input."""


class BinOp(enum.Enum):
    """``candle::streaming::BinOp``."""

    Add = "add"
    Mul = "mul"
    Sub = "sub"
    Div = "div"


class StreamingBinOp:
    """``candle::streaming::StreamingBinOp::new(op, dim)``: applies ``op`` to the frames both sides
    have received along ``dim``, keeping the surplus of the longer side for the next ``step``."""

    def __init__(self, op: BinOp, dim: Dim):
        if not isinstance(op, BinOp):
            raise errors.InvalidArgument(f"StreamingBinOp: op must be a BinOp, got {op!r}")
        self.op, self.dim = op, dim
        self.prev_lhs, self.prev_rhs = StreamTensor(None), StreamTensor(None)

    @staticmethod
    def new(op: BinOp, dim: Dim) -> StreamingBinOp:
        """``StreamingBinOp::new(op, dim)``."""
        return StreamingBinOp(op, dim)

    def reset_state(self) -> None:
        """``reset_state()``: drops the buffered frames."""
        self.prev_lhs.reset()
        self.prev_rhs.reset()

    def forward(self, lhs: Tensor, rhs: Tensor) -> Tensor:
        """``forward(lhs, rhs)``: ``Tensor::add/mul/sub/div`` (same shapes, no broadcasting)."""
        return getattr(lhs, self.op.value)(rhs)

    def step(self, lhs: StreamTensor, rhs: StreamTensor) -> StreamTensor:
        """``step(&lhs, &rhs)``: the op over the frames both sides now have."""
        lhs = self.prev_lhs.cat2(lhs, self.dim)
        rhs = self.prev_rhs.cat2(rhs, self.dim)
        common_len = min(lhs.seq_len(self.dim), rhs.seq_len(self.dim))
        lhs, prev_lhs = lhs.split(self.dim, common_len)
        rhs, prev_rhs = rhs.split(self.dim, common_len)
        if lhs._t is not None and rhs._t is not None:
            ys = StreamTensor(self.forward(lhs._t, rhs._t))
        elif lhs._t is None and rhs._t is None:
            ys = StreamTensor(None)
        else:  # pragma: no cover - split with the common length leaves both or neither
            raise errors.Msg(f"INTERNAL ERROR inconsistent lhs and rhs {lhs!r} {rhs!r}")
        self.prev_lhs, self.prev_rhs = prev_lhs, prev_rhs
        return ys


class Map:
    """``candle::streaming::Map(m)``: a Module as a ``StreamingModule`` without buffering."""

    def __init__(self, m: Any):
        self.m = m

    def reset_state(self) -> None:
        """Nothing to reset."""

    def step(self, xs: StreamTensor) -> StreamTensor:
        """``xs.apply(m)``."""
        return xs.apply(self.m)


__all__ = ["BinOp", "Map", "StreamTensor", "StreamingBinOp", "StreamingModule"]
