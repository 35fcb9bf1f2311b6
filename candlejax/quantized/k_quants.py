"""Candle's ``candle_core::quantized::k_quants``: the per-block ``GgmlType`` API.

Each block type (``BlockQ4_0`` ... ``BlockQ8K``) is a class whose instances hold one block's bytes in
``raw`` (a uint8 array in ggml's layout, ``TYPE_SIZE`` bytes), with Candle's associated items:
``DTYPE``, ``BLCK_SIZE``, ``VecDotType``, ``zeros()``, ``from_float(xs, ys)``, ``to_float(xs, ys)``,
``vec_dot(n, xs, ys)`` and ``vec_dot_unopt(n, xs, ys)``. ``f32``, ``f16`` and ``bf16`` are the float
types (elements are numpy scalars). :func:`matmul` is ``k_quants::matmul``.

Rust's ``&mut [T]`` arguments are written in place: a list of blocks (each block's bytes are
overwritten), a list of floats, or a writeable numpy array. Left out, the result is returned instead
(``BlockQ4_0.from_float(xs)`` -> list of blocks, ``to_float(blocks)`` -> float32 array,
``matmul(mkn, lhs, rhs_t)`` -> float32 array); a target that cannot be written (tuple of floats,
read-only array) raises ``errors.Msg`` naming that form.

>>> from candlejax.quantized import k_quants
>>> blocks = [k_quants.BlockQ4_0.zeros() for _ in range(2)]
>>> k_quants.BlockQ4_0.from_float([float(i) for i in range(64)], blocks)
>>> blocks[1]
BlockQ4_0(e0c7...)
>>> dst = [0.0]
>>> k_quants.matmul((1, 64, 1), [1.0] * 64, blocks, dst)  # sum(range(64)) = 2016
>>> round(dst[0], 2)
2007.88

Dot products follow Candle's arithmetic: the other operand is quantised to ``VecDotType`` (Q8_0,
Q8_1 or Q8K), the integer dot products are taken per block (or per sub-block scale) and combined with
the block scales in f32 in Candle's order (``vec_dot_unopt``); ``vec_dot`` is the same computation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import ml_dtypes
import numpy as np

from candlejax import errors
from candlejax.quantized.ggml_types import (
    IMATRIX_TYPES,
    QK_K,
    GgmlDType,
    _f16,
    _f32,
    _k4_scale_min,
    _nibble32,
    _qh_bits32,
    dequantize_np,
    quantize_imatrix_np,
    quantize_np,
)

K_SCALE_SIZE = 12
QK4_0 = QK4_1 = QK5_0 = QK5_1 = QK8_0 = QK8_1 = 32

_F32 = np.float32
_O256 = np.arange(QK_K)


def _quantize(x: np.ndarray, dtype: GgmlDType) -> np.ndarray:
    """float32 values -> (n_blocks, type_size) bytes as Candle's ``from_float``."""
    return quantize_np(x, dtype).reshape(-1, dtype.type_size())


# ----------------------------------------------------------------------------------------------
# block decoders: (nb, type_size) bytes -> quants in element order and the block's scales
# ----------------------------------------------------------------------------------------------
def _dec_q4_0(b):
    return {"q": _nibble32(b[:, 2:18]).astype(np.int32) - 8, "d": _f16(b, 0)[:, 0]}


def _dec_q4_1(b):
    return {"q": _nibble32(b[:, 4:20]).astype(np.int32), "d": _f16(b, 0)[:, 0], "m": _f16(b, 2)[:, 0]}


def _dec_q5_0(b):
    q = (_nibble32(b[:, 6:22]) | (_qh_bits32(b, 2) << 4)).astype(np.int32) - 16
    return {"q": q, "d": _f16(b, 0)[:, 0]}


def _dec_q5_1(b):
    q = (_nibble32(b[:, 8:24]) | (_qh_bits32(b, 4) << 4)).astype(np.int32)
    return {"q": q, "d": _f16(b, 0)[:, 0], "m": _f16(b, 2)[:, 0]}


def _dec_q8_0(b):
    return {"q": b[:, 2:34].view(np.int8).astype(np.int32), "d": _f16(b, 0)[:, 0]}


def _dec_q8_1(b):
    return {"q": b[:, 4:36].view(np.int8).astype(np.int32), "d": _f16(b, 0)[:, 0], "s": _f16(b, 2)[:, 0]}


def _dec_q8_k(b):
    return {
        "q": b[:, 4:260].view(np.int8).astype(np.int32),
        "d": _f32(b, 0)[:, 0],
        "bsums": np.ascontiguousarray(b[:, 260:292]).view("<i2").astype(np.int32),
    }


def _dec_q2_k(b):
    o = _O256
    h, j, l = o // 128, (o % 128) // 32, o % 32
    q = ((b[:, 16 + h * 32 + l] >> (2 * j)) & 3).astype(np.int32)
    sc = b[:, :16].astype(np.int32)
    return {"q": q, "sc": sc & 0x0F, "mn": sc >> 4, "d": _f16(b, 80)[:, 0], "dmin": _f16(b, 82)[:, 0]}


def _dec_q3_k(b):
    o = _O256
    h, j, l = o // 128, (o % 128) // 32, o % 32
    ql = ((b[:, 32 + h * 32 + l] >> (2 * j)) & 3).astype(np.int32)
    hb = ((b[:, l] >> (4 * h + j)) & 1).astype(np.int32)
    s = np.arange(16)
    lo = (b[:, 96 + s % 8] >> (4 * (s // 8))) & 0x0F
    hi = (b[:, 104 + s % 4] >> (2 * (s // 4))) & 0x03
    return {"q": ql - 4 * (1 - hb), "sc": (lo | (hi << 4)).astype(np.int32) - 32, "d": _f16(b, 108)[:, 0]}


def _dec_q4_k(b):
    o = _O256
    q = ((b[:, 16 + (o // 64) * 32 + o % 32] >> (4 * ((o % 64) // 32))) & 0x0F).astype(np.int32)
    sc, mn = _k4_scale_min(b[:, 4:16])
    return {"q": q, "sc": sc, "mn": mn, "d": _f16(b, 0)[:, 0], "dmin": _f16(b, 2)[:, 0]}


def _dec_q5_k(b):
    o = _O256
    ql = (b[:, 48 + (o // 64) * 32 + o % 32] >> (4 * ((o % 64) // 32))) & 0x0F
    qh = (b[:, 16 + o % 32] >> (o // 32)) & 1
    sc, mn = _k4_scale_min(b[:, 4:16])
    return {"q": (ql | (qh << 4)).astype(np.int32), "sc": sc, "mn": mn, "d": _f16(b, 0)[:, 0], "dmin": _f16(b, 2)[:, 0]}


def _dec_q6_k(b):
    o = _O256
    n, k, l = o // 128, (o % 128) // 32, o % 32
    ql = (b[:, n * 64 + (k % 2) * 32 + l] >> (4 * (k // 2))) & 0x0F
    qh = (b[:, 128 + n * 32 + l] >> (2 * k)) & 0x03
    q = (ql | (qh << 4)).astype(np.int32) - 32
    return {"q": q, "sc": b[:, 192:208].view(np.int8).astype(np.int32), "d": _f16(b, 208)[:, 0]}


def _decode(fn: Callable[[np.ndarray], dict], b: np.ndarray) -> dict:
    """Runs a block decoder on (..., nb, type_size) bytes, keeping the leading axes."""
    lead = b.shape[:-1]
    out = fn(b.reshape(-1, b.shape[-1]))
    return {k: v.reshape(*lead, *v.shape[1:]) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# dot-product kernels: x (N, kb, ts) blocks of T, y (M, kb, ts) blocks of T::VecDotType -> (M, N) f32
# ----------------------------------------------------------------------------------------------
def _seq_sum(a: np.ndarray) -> np.ndarray:
    """Sum over the last axis one term after another in f32, as Rust's ``sumf += ...`` loop."""
    if a.shape[-1] == 0:
        return np.zeros(a.shape[:-1], _F32)
    return np.cumsum(a.astype(_F32), axis=-1, dtype=_F32)[..., -1]


def _xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Broadcasts per-block values of x (N, kb, ...) and y (M, kb, ...) to (M, N, kb, ...)."""
    return x[None], y[:, None]


def _idot(xq: np.ndarray, yq: np.ndarray) -> np.ndarray:
    """Integer dot product of each x block with each y block: (N, kb, B) x (M, kb, B) -> (M, N, kb)."""
    return np.einsum("nkb,mkb->mnk", xq.astype(np.int64), yq.astype(np.int64))


def _lanes(xq: np.ndarray, yq: np.ndarray) -> np.ndarray:
    """ggml's 8-lane integer accumulators: lane l sums the products of elements o with o % 8 == l."""
    n, kb = xq.shape[:2]
    m = yq.shape[0]
    return np.einsum(
        "nkgl,mkgl->mnkl", xq.reshape(n, kb, -1, 8).astype(np.int64), yq.reshape(m, kb, -1, 8).astype(np.int64)
    )


def _dot_d(x: dict, y: dict) -> np.ndarray:
    # sumf += sum_i as f32 * x.d * y.d  (Q4_0, Q5_0, Q8_0 with Q8_0; Q8_1 with Q8_1; Q8K with Q8K)
    xd, yd = _xy(x["d"], y["d"])
    return _seq_sum(_idot(x["q"], y["q"]).astype(_F32) * xd * yd)


def _dot_dm(x: dict, y: dict) -> np.ndarray:
    # sumf += sumi as f32 * x.d * y.d + x.m * y.s  (Q4_1, Q5_1 with Q8_1)
    xd, yd = _xy(x["d"], y["d"])
    xm, ys = _xy(x["m"], y["s"])
    return _seq_sum(_idot(x["q"], y["q"]).astype(_F32) * xd * yd + xm * ys)


def _dot_q2k(x: dict, y: dict) -> np.ndarray:
    q = x["q"] * np.repeat(x["sc"], 16, axis=-1)  # sub-block scale folded into the quants
    isum = _idot(q, y["q"])
    summs = _idot(x["mn"], y["bsums"])
    xd, yd = _xy(x["d"], y["d"])
    xdmin, _ = _xy(x["dmin"], y["d"])
    dall, dmin = yd * xd, yd * xdmin
    return _seq_sum(dall * isum.astype(_F32) - dmin * summs.astype(_F32))


def _lane_total(sums: np.ndarray) -> np.ndarray:
    """``sums.iter().sum()`` over the 8 lanes, each lane already summed over blocks."""
    return _seq_sum(sums)


def _dot_q3k(x: dict, y: dict) -> np.ndarray:
    aux32 = _lanes(x["q"] * np.repeat(x["sc"], 16, axis=-1), y["q"])  # (M, N, kb, 8)
    xd, yd = _xy(x["d"], y["d"])
    d = (xd * yd)[..., None]
    sums = _seq_sum(np.moveaxis(d * aux32.astype(_F32), -1, -2))  # per lane, over blocks
    return _lane_total(sums)


def _dot_q45k(x: dict, y: dict) -> np.ndarray:
    aux32 = _lanes(x["q"] * np.repeat(x["sc"], 32, axis=-1), y["q"])
    sumi = _idot(np.repeat(x["mn"], 2, axis=-1), y["bsums"])
    xd, yd = _xy(x["d"], y["d"])
    xdmin, _ = _xy(x["dmin"], y["d"])
    d, dmin = (xd * yd)[..., None], xdmin * yd
    sums = _seq_sum(np.moveaxis(d * aux32.astype(_F32), -1, -2))
    sumf = _seq_sum(-(dmin * sumi.astype(_F32)))
    return sumf + _lane_total(sums)


def _dot_q6k(x: dict, y: dict) -> np.ndarray:
    aux32 = _lanes(x["q"] * np.repeat(x["sc"], 16, axis=-1), y["q"]).astype(_F32)
    xd, yd = _xy(x["d"], y["d"])
    d = (xd * yd)[..., None]
    sums = _seq_sum(np.moveaxis(aux32 * d, -1, -2))
    return _lane_total(sums)


def _dot_float(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # Candle's generic vec_dot_f32 / f16 / bf16: f32 products summed in order
    return _seq_sum(x.astype(_F32)[None] * y.astype(_F32)[:, None])


# ----------------------------------------------------------------------------------------------
# the GgmlType classes
# ----------------------------------------------------------------------------------------------
def _where(cls: type, fn: str) -> str:
    return f"{cls.__name__}.{fn}"


class GgmlType:
    """Candle's ``GgmlType`` trait: the associated items shared by the block and float types."""

    __slots__ = ()

    DTYPE: ClassVar[GgmlDType]
    BLCK_SIZE: ClassVar[int]
    TYPE_SIZE: ClassVar[int]
    DIRECT_COPY: ClassVar[bool] = False
    VecDotType: ClassVar[type[GgmlType]]

    # --- packing: sequences of elements <-> (n, TYPE_SIZE) bytes ------------------------------
    @classmethod
    def _pack(cls, xs: Any, what: str) -> np.ndarray:
        raise NotImplementedError

    @classmethod
    def _write(cls, ys: Any, rows: np.ndarray, fn: str, functional: str) -> None:
        raise NotImplementedError

    @classmethod
    def _unpack(cls, rows: np.ndarray) -> list:
        raise NotImplementedError

    @classmethod
    def _count(cls, ys: Any) -> int:
        """Elements in a write target: blocks in a list, or ``TYPE_SIZE``-byte rows of a uint8 array."""
        if isinstance(ys, np.ndarray) and ys.dtype == np.uint8 and cls.BLCK_SIZE > 1:
            return ys.size // cls.TYPE_SIZE
        return _length(ys)

    @classmethod
    def _kernel_input(cls, rows: np.ndarray) -> Any:
        raise NotImplementedError

    # --- Candle's associated functions ------------------------------------------------------
    @classmethod
    def zeros(cls) -> Any:
        """``T::zeros()``: an all-zero element."""
        raise NotImplementedError

    @classmethod
    def from_float(cls, xs: Sequence[float] | np.ndarray, ys: Any = None) -> list | None:
        """``T::from_float(xs, ys)``: quantise ``xs`` into ``ys`` in place; without ``ys``, return the elements."""
        x = _floats(xs)
        bs = cls.BLCK_SIZE
        if x.size % bs:
            raise errors.Msg(f"{_where(cls, 'from_float')}: {x.size} is not divisible by {bs}")
        rows = _quantize(x, cls.DTYPE) if x.size else np.zeros((0, cls.TYPE_SIZE), np.uint8)
        if ys is None:
            return cls._unpack(rows)
        if cls._count(ys) * bs != x.size:
            raise errors.Msg(f"{_where(cls, 'from_float')}: size mismatch {x.size} {cls._count(ys)} {bs}")
        cls._write(ys, rows, "from_float", f"{cls.__name__}.from_float(xs)")
        return None

    @classmethod
    def from_float_imatrix(cls, xs: Any, ys: Any, imatrix_weights: Any, n_per_row: int) -> list | None:
        """``T::from_float_imatrix``: the importance-weighted fit (Q2K ... Q6K); ``ys=None`` returns the blocks."""
        if cls.DTYPE not in IMATRIX_TYPES:
            raise errors.Msg(f"`from_float_imatrix` is unimplemented for {cls.DTYPE.name}")
        x = _floats(xs)
        if n_per_row <= 0 or x.size % n_per_row:
            raise errors.Msg(f"{_where(cls, 'from_float_imatrix')}: {x.size} values are not rows of {n_per_row}")
        rows = quantize_imatrix_np(x.reshape(-1, n_per_row), imatrix_weights, cls.DTYPE).reshape(-1, cls.TYPE_SIZE)
        if ys is None:
            return cls._unpack(rows)
        if cls._count(ys) * cls.BLCK_SIZE != x.size:
            raise errors.Msg(f"{_where(cls, 'from_float_imatrix')}: size mismatch {x.size} {cls._count(ys)}")
        cls._write(ys, rows, "from_float_imatrix", f"{cls.__name__}.from_float_imatrix(xs, None, w, n_per_row)")
        return None

    @classmethod
    def to_float(cls, xs: Any, ys: Any = None) -> np.ndarray | None:
        """``T::to_float(xs, ys)``: dequantise into ``ys`` in place (its length picks the count); else return f32."""
        rows = cls._pack(xs, "to_float")
        if ys is not None:
            k = _length(ys)
            if k % cls.BLCK_SIZE or k // cls.BLCK_SIZE > rows.shape[0]:
                raise errors.Msg(f"{_where(cls, 'to_float')}: {k} values do not fit {rows.shape[0]} blocks")
            rows = rows[: k // cls.BLCK_SIZE]
        out = dequantize_np(rows, cls.DTYPE) if rows.size else np.zeros(0, _F32)
        if ys is None:
            return out
        _write_floats(ys, out, f"{cls.__name__}.to_float", f"{cls.__name__}.to_float(xs)")
        return None

    @classmethod
    def vec_dot(cls, n: int, xs: Any, ys: Any) -> float:
        """``T::vec_dot(n, xs, ys)``: the dot product of ``n`` values with ``ys`` of ``T::VecDotType``."""
        return cls.vec_dot_unopt(n, xs, ys)

    @classmethod
    def vec_dot_unopt(cls, n: int, xs: Any, ys: Any) -> float:
        """``T::vec_dot_unopt``: Candle's generic dot product (integer block sums, f32 scales)."""
        bs = cls.BLCK_SIZE
        if n % bs:
            raise errors.Msg(f"{_where(cls, 'vec_dot')}: {n} is not divisible by {bs}")
        nb = n // bs
        x, y = cls._pack(xs, "vec_dot"), cls.VecDotType._pack(ys, "vec_dot")
        if x.shape[0] < nb or y.shape[0] < nb:
            raise errors.Msg(
                f"{_where(cls, 'vec_dot')}: {n} values need {nb} blocks, got {x.shape[0]} and {y.shape[0]}"
            )
        out = cls._dot(x[None, :nb], y[None, :nb])
        return float(out[0, 0])

    @classmethod
    def _dot(cls, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(N, kb, ts) bytes of T and (M, kb, ts) bytes of VecDotType -> (M, N) f32 dot products."""
        return _KERNELS[cls.DTYPE](cls._kernel_input(x), cls.VecDotType._kernel_input(y))

    # --- byte interop ------------------------------------------------------------------------
    @classmethod
    def from_bytes(cls, raw: Any) -> list:
        """Elements from raw GGML bytes (e.g. ``QTensor.data()``), one per ``TYPE_SIZE`` bytes."""
        return cls._unpack(_rows(raw, cls))

    @classmethod
    def to_bytes(cls, xs: Any) -> np.ndarray:
        """The raw GGML bytes of a sequence of elements, flat uint8."""
        return cls._pack(xs, "to_bytes").reshape(-1)


#: the dot-product kernel of each type with its VecDotType
_KERNELS: dict[GgmlDType, Callable[[Any, Any], np.ndarray]] = {}


class _Block(GgmlType):
    """One quantised block: ``raw`` holds its ``TYPE_SIZE`` bytes in ggml's layout."""

    __slots__ = ("raw",)
    _decoder: ClassVar[Callable[[np.ndarray], dict]]

    def __init__(self, raw: Any = None):
        if raw is None:
            self.raw = np.zeros(self.TYPE_SIZE, np.uint8)
        else:
            r = np.frombuffer(bytes(raw), np.uint8) if isinstance(raw, bytes | bytearray) else np.asarray(raw)
            if r.dtype != np.uint8 or r.size != self.TYPE_SIZE:
                raise errors.Msg(f"{type(self).__name__} takes {self.TYPE_SIZE} bytes, got {r.size} of {r.dtype}")
            self.raw = r.reshape(-1).copy()

    @classmethod
    def zeros(cls) -> _Block:
        """``T::zeros()``: a block of zero bytes."""
        return cls()

    def clone(self) -> _Block:
        """Rust's ``Clone``."""
        return type(self)(self.raw)

    def __copy__(self) -> _Block:
        return self.clone()

    def __deepcopy__(self, memo: dict) -> _Block:
        return self.clone()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and bool(np.array_equal(self.raw, other.raw))

    __hash__ = None  # mutable, as a Rust value behind &mut

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.raw.tobytes().hex()})"

    @classmethod
    def _pack(cls, xs: Any, what: str) -> np.ndarray:
        if isinstance(xs, np.ndarray) and xs.dtype == np.uint8:
            return _rows(xs, cls)
        if isinstance(xs, _Block):
            xs = [xs]
        out = np.empty((len(xs), cls.TYPE_SIZE), np.uint8)
        for i, b in enumerate(xs):
            if type(b) is not cls:
                raise errors.Msg(f"{_where(cls, what)}: element {i} is a {type(b).__name__}, expected {cls.__name__}")
            out[i] = b.raw
        return out

    @classmethod
    def _unpack(cls, rows: np.ndarray) -> list:
        return [cls(r) for r in rows]

    @classmethod
    def _write(cls, ys: Any, rows: np.ndarray, fn: str, functional: str) -> None:
        if isinstance(ys, np.ndarray):
            if ys.dtype != np.uint8 or not ys.flags.writeable or ys.size != rows.size:
                got = "a read-only array" if not ys.flags.writeable else f"{ys.dtype} {ys.shape}"
                raise errors.Msg(
                    f"{_where(cls, fn)} writes into blocks or a writeable uint8 array of {rows.size} bytes,"
                    f" got {got}; call {functional} to get the blocks back"
                )
            ys.flat[:] = rows.reshape(-1)
            return
        blocks = list(ys)
        for i, b in enumerate(blocks):
            if type(b) is not cls:
                raise errors.Msg(
                    f"{_where(cls, fn)}: ys[{i}] is a {type(b).__name__}, not a {cls.__name__} to write into;"
                    f" call {functional} to get the blocks back"
                )
        for b, r in zip(blocks, rows, strict=True):
            b.raw[...] = r

    @classmethod
    def _kernel_input(cls, rows: np.ndarray) -> dict:
        return _decode(cls._decoder, rows)


class _Float(GgmlType):
    """Rust's ``f32`` / ``half::f16`` / ``half::bf16`` as a ``GgmlType``: elements are numpy scalars."""

    BLCK_SIZE: ClassVar[int] = 1
    DIRECT_COPY: ClassVar[bool] = True
    NP_DTYPE: ClassVar[np.dtype]

    def __new__(cls, value: float = 0.0):
        return cls.NP_DTYPE.type(value)

    @classmethod
    def zeros(cls) -> Any:
        """``T::zeros()``: a numpy zero of this float type."""
        return cls.NP_DTYPE.type(0)

    @classmethod
    def _pack(cls, xs: Any, what: str) -> np.ndarray:
        a = np.asarray(xs)
        if a.dtype != cls.NP_DTYPE:
            a = np.asarray(a, dtype=_F32).astype(cls.NP_DTYPE) if a.dtype != np.uint8 else a.view(cls.NP_DTYPE)
        return np.ascontiguousarray(a.reshape(-1)).view(np.uint8).reshape(-1, cls.TYPE_SIZE)

    @classmethod
    def _values(cls, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(rows).reshape(-1).view(cls.NP_DTYPE)

    @classmethod
    def _unpack(cls, rows: np.ndarray) -> list:
        return list(cls._values(rows))

    @classmethod
    def _write(cls, ys: Any, rows: np.ndarray, fn: str, functional: str) -> None:
        vals = cls._values(rows)
        if isinstance(ys, np.ndarray):
            if not ys.flags.writeable or ys.size != vals.size:
                raise errors.Msg(
                    f"{_where(cls, fn)} writes into a writeable array of {vals.size} values, got {ys.shape};"
                    f" call {functional} to get the values back"
                )
            ys.flat[:] = vals.astype(ys.dtype)
            return
        if not _is_mutable_seq(ys):
            raise errors.Msg(
                f"{_where(cls, fn)} cannot write into a {type(ys).__name__} in place; call {functional} to get the"
                " values back"
            )
        ys[:] = list(vals)

    @classmethod
    def _kernel_input(cls, rows: np.ndarray) -> np.ndarray:
        lead = rows.shape[:-2]
        return np.ascontiguousarray(rows).view(cls.NP_DTYPE).reshape(*lead, -1)


def _floats(xs: Any) -> np.ndarray:
    if hasattr(xs, "to_vec1") and not isinstance(xs, np.ndarray):
        xs = np.asarray(xs.flatten_all().to_vec1())
    return np.ascontiguousarray(np.asarray(xs, dtype=_F32)).reshape(-1)


def _length(ys: Any) -> int:
    return int(ys.size) if isinstance(ys, np.ndarray) else len(ys)


def _is_mutable_seq(ys: Any) -> bool:
    # a Tensor is immutable (its __setitem__ only raises)
    return hasattr(ys, "__setitem__") and not isinstance(ys, tuple | str | bytes) and not hasattr(ys, "to_vec1")


def _rows(raw: Any, cls: type[GgmlType]) -> np.ndarray:
    r = np.frombuffer(raw, np.uint8) if isinstance(raw, bytes | bytearray | memoryview) else np.asarray(raw)
    r = np.ascontiguousarray(r).view(np.uint8).reshape(-1)
    if r.size % cls.TYPE_SIZE:
        raise errors.Msg(f"{r.size} bytes is not a whole number of {cls.DTYPE.name} blocks of {cls.TYPE_SIZE} bytes")
    return r.reshape(-1, cls.TYPE_SIZE)


def _write_floats(ys: Any, vals: np.ndarray, fn: str, functional: str) -> None:
    """Writes f32 results into a list or writeable array, as Rust's ``&mut [f32]``."""
    if isinstance(ys, np.ndarray):
        if not ys.flags.writeable:
            raise errors.Msg(f"{fn} cannot write into a read-only array; call {functional} to get the values back")
        ys.flat[: vals.size] = vals
        return
    if not _is_mutable_seq(ys):
        raise errors.Msg(
            f"{fn} cannot write into a {type(ys).__name__} in place; call {functional} to get the values back"
        )
    ys[: vals.size] = vals.tolist()


def _block(name: str, dtype: GgmlDType, decoder: Callable, kernel: Callable, doc: str) -> type[_Block]:
    cls = type(
        name,
        (_Block,),
        {
            "__slots__": (),
            "__doc__": doc,
            "__module__": __name__,
            "DTYPE": dtype,
            "BLCK_SIZE": dtype.block_size(),
            "TYPE_SIZE": dtype.type_size(),
            "_decoder": staticmethod(decoder),
        },
    )
    _KERNELS[dtype] = kernel
    return cls


def _float(name: str, dtype: GgmlDType, np_dtype: Any, doc: str) -> type[_Float]:
    cls = type(
        name,
        (_Float,),
        {
            "__doc__": doc,
            "__module__": __name__,
            "DTYPE": dtype,
            "TYPE_SIZE": dtype.type_size(),
            "NP_DTYPE": np.dtype(np_dtype),
        },
    )
    cls.VecDotType = cls
    _KERNELS[dtype] = _dot_float
    return cls


BlockQ4_0 = _block("BlockQ4_0", GgmlDType.Q4_0, _dec_q4_0, _dot_d, "Candle's ``BlockQ4_0`` (32 values, 18 bytes).")
BlockQ4_1 = _block("BlockQ4_1", GgmlDType.Q4_1, _dec_q4_1, _dot_dm, "Candle's ``BlockQ4_1`` (32 values, 20 bytes).")
BlockQ5_0 = _block("BlockQ5_0", GgmlDType.Q5_0, _dec_q5_0, _dot_d, "Candle's ``BlockQ5_0`` (32 values, 22 bytes).")
BlockQ5_1 = _block("BlockQ5_1", GgmlDType.Q5_1, _dec_q5_1, _dot_dm, "Candle's ``BlockQ5_1`` (32 values, 24 bytes).")
BlockQ8_0 = _block("BlockQ8_0", GgmlDType.Q8_0, _dec_q8_0, _dot_d, "Candle's ``BlockQ8_0`` (32 values, 34 bytes).")
BlockQ8_1 = _block("BlockQ8_1", GgmlDType.Q8_1, _dec_q8_1, _dot_d, "Candle's ``BlockQ8_1`` (32 values, 36 bytes).")
BlockQ2K = _block("BlockQ2K", GgmlDType.Q2K, _dec_q2_k, _dot_q2k, "Candle's ``BlockQ2K`` (256 values, 84 bytes).")
BlockQ3K = _block("BlockQ3K", GgmlDType.Q3K, _dec_q3_k, _dot_q3k, "Candle's ``BlockQ3K`` (256 values, 110 bytes).")
BlockQ4K = _block("BlockQ4K", GgmlDType.Q4K, _dec_q4_k, _dot_q45k, "Candle's ``BlockQ4K`` (256 values, 144 bytes).")
BlockQ5K = _block("BlockQ5K", GgmlDType.Q5K, _dec_q5_k, _dot_q45k, "Candle's ``BlockQ5K`` (256 values, 176 bytes).")
BlockQ6K = _block("BlockQ6K", GgmlDType.Q6K, _dec_q6_k, _dot_q6k, "Candle's ``BlockQ6K`` (256 values, 210 bytes).")
BlockQ8K = _block("BlockQ8K", GgmlDType.Q8K, _dec_q8_k, _dot_d, "Candle's ``BlockQ8K`` (256 values, 292 bytes).")

for _t in (BlockQ4_0, BlockQ5_0, BlockQ8_0):
    _t.VecDotType = BlockQ8_0
for _t in (BlockQ4_1, BlockQ5_1, BlockQ8_1):
    _t.VecDotType = BlockQ8_1
for _t in (BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K):
    _t.VecDotType = BlockQ8K
del _t

f32 = _float("f32", GgmlDType.F32, np.float32, "Rust's ``f32`` as a ``GgmlType`` (elements: ``numpy.float32``).")
f16 = _float("f16", GgmlDType.F16, np.float16, "``half::f16`` as a ``GgmlType`` (elements: ``numpy.float16``).")
bf16 = _float("bf16", GgmlDType.BF16, ml_dtypes.bfloat16, "``half::bf16`` as a ``GgmlType`` (``ml_dtypes.bfloat16``).")

#: the GgmlType for each GgmlDType
TYPES: dict[GgmlDType, type[GgmlType]] = {
    t.DTYPE: t
    for t in (f32, f16, bf16, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1,
              BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K)
}  # fmt: skip


def _element_type(rhs_t: Any) -> type[GgmlType]:
    """The ``T`` of ``rhs_t: &[T]``: the blocks' class, or the float type of the values."""
    if isinstance(rhs_t, np.ndarray):
        for t in (f32, f16, bf16):
            if rhs_t.dtype == t.NP_DTYPE:
                return t
        raise errors.Msg(f"k_quants.matmul: rhs_t of dtype {rhs_t.dtype}: pass a list of blocks or f32/f16/bf16 values")
    first = rhs_t[0] if len(rhs_t) else 0.0
    if isinstance(first, _Block):
        return type(first)
    dt = getattr(first, "dtype", None)
    for t in (f16, bf16):
        if dt == t.NP_DTYPE:
            return t
    return f32


_CHUNK = 1 << 22  # elements of the (rows, cols, k) product held at once


def matmul(mkn: tuple[int, int, int], lhs: Any, rhs_t: Any, dst: Any = None) -> np.ndarray | None:
    """``k_quants::matmul((m, k, n), lhs, rhs_t, dst)``: ``dst[i, j] = T::vec_dot(k, rhs_t[j], q(lhs[i]))``.

    ``lhs`` is m x k f32 values (quantised row by row to ``T::VecDotType``), ``rhs_t`` the n x k
    weight as n rows of k / ``BLCK_SIZE`` elements of ``T``; ``dst`` (m x n) is written in place, or
    the (m, n) float32 result is returned when it is left out.
    """
    m, k, n = (int(v) for v in mkn)
    T = _element_type(rhs_t)
    lhs = _floats(lhs)
    if m * k != lhs.size:
        raise errors.Msg(f"unexpected lhs length {lhs.size} ({m}, {k}, {n})")
    bs = T.BLCK_SIZE
    if k % bs:
        raise errors.Msg(f"k_quants.matmul: k = {k} is not divisible by the {T.DTYPE.name} block size {bs}")
    kb = k // bs
    x = T._pack(rhs_t, "matmul")
    if x.shape[0] < n * kb:
        raise errors.Msg(f"k_quants.matmul: rhs_t holds {x.shape[0]} elements, ({m}, {k}, {n}) needs {n * kb}")
    if dst is not None and _length(dst) < m * n:
        raise errors.Msg(f"k_quants.matmul: dst holds {_length(dst)} values, ({m}, {k}, {n}) needs {m * n}")
    x = x[: n * kb].reshape(n, kb, -1)
    V = T.VecDotType
    y = (_quantize(lhs, V.DTYPE) if lhs.size else np.zeros((0, V.TYPE_SIZE), np.uint8)).reshape(m, kb, -1)
    xin = T._kernel_input(x)
    rows = max(1, _CHUNK // max(1, n * k))
    out = np.zeros((m, n), _F32)
    for r in range(0, m, rows):
        out[r : r + rows] = _KERNELS[T.DTYPE](xin, V._kernel_input(y[r : r + rows]))
    if dst is None:
        return out
    _write_floats(dst, out.reshape(-1), "k_quants.matmul", "k_quants.matmul(mkn, lhs, rhs_t)")
    return None


__all__ = [
    "K_SCALE_SIZE",
    "QK_K",
    "TYPES",
    "BlockQ2K",
    "BlockQ3K",
    "BlockQ4K",
    "BlockQ4_0",
    "BlockQ4_1",
    "BlockQ5K",
    "BlockQ5_0",
    "BlockQ5_1",
    "BlockQ6K",
    "BlockQ8K",
    "BlockQ8_0",
    "BlockQ8_1",
    "GgmlType",
    "bf16",
    "f16",
    "f32",
    "matmul",
]
