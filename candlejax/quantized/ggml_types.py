"""GGML block types (``candle::quantized::GgmlDType``) and the numpy reference codecs.

Each quantised type stores a row of ``block_size()`` values in one block of ``type_size()``
bytes (little-endian, the layouts of ggml's ``block_q4_0`` ... ``block_q6_K``). This module holds

* :class:`GgmlDType` with ``block_size()`` / ``type_size()`` and the GGUF type ids;
* :func:`dequantize_np`: raw block bytes -> float32, vectorised over blocks. It is the reference
  the JAX kernels (:mod:`candlejax.quantized.jax_dequant`) are tested against, written from the
  per-element formulas of ggml's ``dequantize_row_*`` loops;
* :func:`quantize_np`: float32 -> raw block bytes for every type (ggml's reference rounding for
  the 32-element types and Q8K; Candle's fits for the K-quants: ``make_qkx1_quants`` for Q2K / Q4K /
  Q5K, ``make_q3_quants`` for Q3K, ggml's current ``make_qx_quants`` for Q6K, see
  docs/differences/quantized.md);
* :func:`quantize_imatrix_np`: the same with importance weights (ggml's ``quantize_row_*_impl``
  fits, Candle's ``from_float_imatrix``) for Q2K ... Q6K.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import numpy as np

from candlejax import errors

QK_K = 256


class GgmlDType(enum.Enum):
    """A GGML tensor type. Values are the GGUF type ids (``GGML_TYPE_*``).

    Candle's names (``Q4K``) and ggml's (``Q4_K``) are both accepted: ``GgmlDType.Q4_K is GgmlDType.Q4K``.
    """

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2K = 10
    Q3K = 11
    Q4K = 12
    Q5K = 13
    Q6K = 14
    Q8K = 15
    BF16 = 30
    # ggml's spellings, aliases of the members above
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15

    # --- candle-pyo3 gives the type as its name: read it as a string ----------------------------
    def lower(self) -> str:
        """The name in lower case (``"q4_0"``), as ``str.lower`` on candle-pyo3's ``ggml_dtype``."""
        return self.name.lower()

    def upper(self) -> str:
        """The name in upper case (``"Q4_0"``)."""
        return self.name.upper()

    def __eq__(self, other: object) -> bool:
        """Identity, and equal to candle-pyo3's string for the type (``q.ggml_dtype == "Q4_0"``,
        ``"Q4K"``: Candle's ``{:?}`` name, case-sensitive as a str comparison is)."""
        if isinstance(other, str):
            return other == self.name
        return self is other

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = enum.Enum.__hash__  # hash(name): the binding's string finds the same dict entry

    # --- Candle's GgmlDType API -------------------------------------------------------------
    def block_size(self) -> int:
        """Elements per block: 1 for F32/F16/BF16, 32 for Q4_0..Q8_1, 256 for the k-quants."""
        return _SIZES[self][0]

    def type_size(self) -> int:
        """Bytes per block."""
        return _SIZES[self][1]

    def to_u32(self) -> int:
        """The GGUF type id."""
        return self.value

    @staticmethod
    def from_u32(v: int, where: str = "") -> GgmlDType:
        """The type with GGUF id ``v``; raises ``unknown dtype for tensor {v}`` like Candle."""
        try:
            return GgmlDType(int(v))
        except ValueError:
            name = _GGML_NAMES.get(int(v))
            extra = f" ({name}, not supported by candlejax)" if name else ""
            raise errors.Gguf(f"unknown dtype for tensor {v}{extra}" + (f" {where}" if where else "")) from None

    @staticmethod
    def parse(s: str) -> GgmlDType:
        """``"q4_0"``, ``"q4k"``, ``"Q4_K"``, ``"f16"`` -> the type."""
        if not isinstance(s, str):
            raise errors.ArgumentType(f"GgmlDType.parse: expected a ggml dtype name, got {type(s).__name__}")
        key = s.strip().upper()
        if key in GgmlDType.__members__:
            return GgmlDType.__members__[key]
        raise errors.Msg(f"unknown ggml dtype {s!r}, expected one of {', '.join(_CANONICAL)}")

    @staticmethod
    def coerce(dtype: GgmlDType | str, op: str) -> GgmlDType:
        """``dtype`` as a ``GgmlDType``: a member, or its name as :meth:`parse` reads it (``"q4_0"``);
        anything else raises naming ``op``."""
        if isinstance(dtype, str):
            return GgmlDType.parse(dtype)
        if not isinstance(dtype, GgmlDType):
            raise errors.Msg(f"{op}: dtype must be a GgmlDType or its name, got {type(dtype).__name__}")
        return dtype

    def is_float(self) -> bool:
        """True for the unquantised F32 / F16 / BF16."""
        return self in (GgmlDType.F32, GgmlDType.F16, GgmlDType.BF16)

    def bytes_for(self, n_elems: int) -> int:
        """Bytes taken by ``n_elems`` values (a multiple of ``block_size()``)."""
        return n_elems // self.block_size() * self.type_size()

    def __repr__(self) -> str:
        return f"GgmlDType.{self.name}"

    def __str__(self) -> str:
        return self.name


_SIZES: dict[GgmlDType, tuple[int, int]] = {
    GgmlDType.F32: (1, 4),
    GgmlDType.F16: (1, 2),
    GgmlDType.BF16: (1, 2),
    GgmlDType.Q4_0: (32, 18),
    GgmlDType.Q4_1: (32, 20),
    GgmlDType.Q5_0: (32, 22),
    GgmlDType.Q5_1: (32, 24),
    GgmlDType.Q8_0: (32, 34),
    GgmlDType.Q8_1: (32, 36),  # ggml's current block_q8_1: f16 d, f16 s, 32 x i8
    GgmlDType.Q2K: (QK_K, 84),
    GgmlDType.Q3K: (QK_K, 110),
    GgmlDType.Q4K: (QK_K, 144),
    GgmlDType.Q5K: (QK_K, 176),
    GgmlDType.Q6K: (QK_K, 210),
    GgmlDType.Q8K: (QK_K, 292),
}

_CANONICAL = [m.name for m in GgmlDType]

# ggml type ids candlejax does not decode, for clearer errors.
_GGML_NAMES = {
    4: "Q4_2 (removed)", 5: "Q4_3 (removed)", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
    20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64",
    28: "F64", 29: "IQ1_M", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _f16(b: np.ndarray, at: int) -> np.ndarray:
    """The little-endian f16 at byte ``at`` of every block, as float32 (n_blocks, 1)."""
    return np.ascontiguousarray(b[:, at : at + 2]).view("<f2").astype(np.float32)


def _f32(b: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(b[:, at : at + 4]).view("<f4").astype(np.float32)


def _blocks(raw: np.ndarray, dtype: GgmlDType) -> np.ndarray:
    raw = np.ascontiguousarray(np.asarray(raw)).view(np.uint8).reshape(-1)
    ts = dtype.type_size()
    if raw.size % ts:
        raise errors.Msg(f"{raw.size} bytes is not a whole number of {dtype.name} blocks of {ts} bytes")
    return raw.reshape(-1, ts)


_O32 = np.arange(32)
_O256 = np.arange(QK_K)


def _nibble32(qs: np.ndarray) -> np.ndarray:
    """ggml's 32-element nibble order: element j < 16 is the low nibble of qs[j], j >= 16 the high of qs[j-16]."""
    return (qs[:, _O32 % 16] >> (4 * (_O32 // 16))) & 0x0F


def _qh_bits32(b: np.ndarray, at: int) -> np.ndarray:
    """Bit j of the little-endian u32 at ``at``, for j in 0..32 -> (n_blocks, 32) in {0, 1}."""
    return (b[:, at + _O32 // 8] >> (_O32 % 8)) & 1


def _k4_scale_min(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``get_scale_min_k4`` for j in 0..8 over the 12 packed scale bytes -> (n, 8) each."""
    sc = np.empty((s.shape[0], 8), np.int32)
    mn = np.empty((s.shape[0], 8), np.int32)
    s = s.astype(np.int32)
    for j in range(8):
        if j < 4:
            sc[:, j] = s[:, j] & 63
            mn[:, j] = s[:, j + 4] & 63
        else:
            sc[:, j] = (s[:, j + 4] & 0x0F) | ((s[:, j - 4] >> 6) << 4)
            mn[:, j] = (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)
    return sc, mn


# ----------------------------------------------------------------------------------------------
# dequantisation (reference)
# ----------------------------------------------------------------------------------------------
def _deq_q4_0(b: np.ndarray) -> np.ndarray:
    return _f16(b, 0) * (_nibble32(b[:, 2:18]).astype(np.int32) - 8).astype(np.float32)


def _deq_q4_1(b: np.ndarray) -> np.ndarray:
    return _f16(b, 0) * _nibble32(b[:, 4:20]).astype(np.float32) + _f16(b, 2)


def _deq_q5_0(b: np.ndarray) -> np.ndarray:
    q = _nibble32(b[:, 6:22]) | (_qh_bits32(b, 2) << 4)
    return _f16(b, 0) * (q.astype(np.int32) - 16).astype(np.float32)


def _deq_q5_1(b: np.ndarray) -> np.ndarray:
    q = _nibble32(b[:, 8:24]) | (_qh_bits32(b, 4) << 4)
    return _f16(b, 0) * q.astype(np.float32) + _f16(b, 2)


def _deq_q8_0(b: np.ndarray) -> np.ndarray:
    return b[:, 2:34].view(np.int8).astype(np.float32) * _f16(b, 0)


def _deq_q8_1(b: np.ndarray) -> np.ndarray:
    return b[:, 4:36].view(np.int8).astype(np.float32) * _f16(b, 0)


def _deq_q8_k(b: np.ndarray) -> np.ndarray:
    return b[:, 4:260].view(np.int8).astype(np.float32) * _f32(b, 0)


def _deq_q2_k(b: np.ndarray) -> np.ndarray:
    # y[h*128 + j*32 + l] = d*(sc&15) * ((qs[h*32+l] >> 2j) & 3) - dmin*(sc>>4),  sc = scales[o // 16]
    o = _O256
    h, j, l = o // 128, (o % 128) // 32, o % 32
    q = (b[:, 16 + h * 32 + l] >> (2 * j)) & 3
    sc = b[:, o // 16]
    dl = _f16(b, 80) * (sc & 0x0F).astype(np.float32)
    ml = _f16(b, 82) * (sc >> 4).astype(np.float32)
    return dl * q.astype(np.float32) - ml


def _deq_q3_k(b: np.ndarray) -> np.ndarray:
    # hmask[32] qs[64] scales[12] d: y = d*(scale-32) * (((qs >> 2j) & 3) - (hmask bit (4h+j) ? 0 : 4))
    o = _O256
    h, j, l = o // 128, (o % 128) // 32, o % 32
    ql = (b[:, 32 + h * 32 + l] >> (2 * j)) & 3
    hb = (b[:, l] >> (4 * h + j)) & 1
    q = ql.astype(np.int32) - 4 * (1 - hb.astype(np.int32))
    s = np.arange(16)
    lo = (b[:, 96 + s % 8] >> (4 * (s // 8))) & 0x0F
    hi = (b[:, 104 + s % 4] >> (2 * (s // 4))) & 0x03
    scale = (lo | (hi << 4)).astype(np.int32) - 32
    dl = _f16(b, 108) * scale[:, o // 16].astype(np.float32)
    return dl * q.astype(np.float32)


def _deq_q4_k(b: np.ndarray) -> np.ndarray:
    # d dmin scales[12] qs[128]; sub-block sb = o // 32 (chunk c = o // 64: low nibble then high nibble)
    o = _O256
    c, l = o // 64, o % 32
    q = (b[:, 16 + c * 32 + l] >> (4 * ((o % 64) // 32))) & 0x0F
    sc, mn = _k4_scale_min(b[:, 4:16])
    d = _f16(b, 0) * sc[:, o // 32].astype(np.float32)
    m = _f16(b, 2) * mn[:, o // 32].astype(np.float32)
    return d * q.astype(np.float32) - m


def _deq_q5_k(b: np.ndarray) -> np.ndarray:
    # d dmin scales[12] qh[32] qs[128]; the 5th bit of element o is bit (o // 32) of qh[o % 32]
    o = _O256
    c, l = o // 64, o % 32
    ql = (b[:, 48 + c * 32 + l] >> (4 * ((o % 64) // 32))) & 0x0F
    qh = (b[:, 16 + l] >> (o // 32)) & 1
    q = ql | (qh << 4)
    sc, mn = _k4_scale_min(b[:, 4:16])
    d = _f16(b, 0) * sc[:, o // 32].astype(np.float32)
    m = _f16(b, 2) * mn[:, o // 32].astype(np.float32)
    return d * q.astype(np.float32) - m


def _deq_q6_k(b: np.ndarray) -> np.ndarray:
    # ql[128] qh[64] scales[16] (i8) d; element o = n*128 + k*32 + l (quarter k)
    o = _O256
    n, k, l = o // 128, (o % 128) // 32, o % 32
    ql = (b[:, n * 64 + (k % 2) * 32 + l] >> (4 * (k // 2))) & 0x0F
    qh = (b[:, 128 + n * 32 + l] >> (2 * k)) & 0x03
    q = (ql | (qh << 4)).astype(np.int32) - 32
    sc = b[:, 192:208].view(np.int8).astype(np.float32)
    return _f16(b, 208) * sc[:, o // 16] * q.astype(np.float32)


def _deq_f32(b: np.ndarray) -> np.ndarray:
    return b.reshape(-1).view("<f4").astype(np.float32)


def _deq_f16(b: np.ndarray) -> np.ndarray:
    return b.reshape(-1).view("<f2").astype(np.float32)


def _deq_bf16(b: np.ndarray) -> np.ndarray:
    return (b.reshape(-1).view("<u2").astype(np.uint32) << 16).view(np.float32)


_DEQ = {
    GgmlDType.F32: _deq_f32,
    GgmlDType.F16: _deq_f16,
    GgmlDType.BF16: _deq_bf16,
    GgmlDType.Q4_0: _deq_q4_0,
    GgmlDType.Q4_1: _deq_q4_1,
    GgmlDType.Q5_0: _deq_q5_0,
    GgmlDType.Q5_1: _deq_q5_1,
    GgmlDType.Q8_0: _deq_q8_0,
    GgmlDType.Q8_1: _deq_q8_1,
    GgmlDType.Q2K: _deq_q2_k,
    GgmlDType.Q3K: _deq_q3_k,
    GgmlDType.Q4K: _deq_q4_k,
    GgmlDType.Q5K: _deq_q5_k,
    GgmlDType.Q6K: _deq_q6_k,
    GgmlDType.Q8K: _deq_q8_k,
}


def _quiet() -> np.errstate:
    """numpy's floating-point warnings off (a fresh context per call: nested and thread-safe): Candle's
    kernels meet NaN, inf and f16 overflow silently (``inf * 0`` is NaN, ``f16::from_f32`` saturates
    to inf), and the results here are the same values."""
    return np.errstate(invalid="ignore", divide="ignore", over="ignore")


def dequantize_np(raw: np.ndarray | bytes, dtype: GgmlDType, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Raw GGML block bytes -> float32 values (flat, or reshaped to ``shape``). Candle's ``to_float``."""
    b = _blocks(np.frombuffer(raw, np.uint8) if isinstance(raw, bytes | bytearray | memoryview) else raw, dtype)
    with _quiet():  # an inf scale times a zero quant is NaN, silently as in Candle
        out = _DEQ[dtype](b).reshape(-1)
    return out if shape is None else out.reshape(shape)


# ----------------------------------------------------------------------------------------------
# quantisation
# ----------------------------------------------------------------------------------------------
def _to_f16_bytes(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.astype("<f2")).reshape(-1, 1).view(np.uint8).reshape(x.shape[0], 2)


def _roundf(x: np.ndarray) -> np.ndarray:
    """C's ``roundf``: halves away from zero."""
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


def _inv(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _signed_absmax(x: np.ndarray) -> np.ndarray:
    """The value of largest magnitude in each row (first one on ties, as ggml), keepdims.

    As Candle's ``if amax < x.abs()`` loop from ``max = 0``: a NaN never wins, a row of zeros or NaNs gives +0.
    """
    a = np.abs(x)
    a = np.where(np.isnan(a), np.float32(0), a)
    idx = a.argmax(axis=-1)[..., None]
    m = np.take_along_axis(x, idx, axis=-1)
    return np.where(np.take_along_axis(a, idx, axis=-1) == 0, np.float32(0), m).astype(np.float32)


def _absmax(x: np.ndarray) -> np.ndarray:
    """``amax = amax.max(x.abs())`` from 0 per row (Rust's ``f32::max`` skips a NaN), keepdims."""
    return np.fmax.reduce(np.abs(x), axis=-1, keepdims=True, initial=np.float32(0))


def _min_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candle's ``f32::min`` / ``f32::max`` fold from +inf / -inf per row (a NaN is skipped), keepdims.

    numpy's reductions pick the same zero (0.0 or -0.0) as Candle's vectorised fold; only rows holding
    a NaN take the NaN-skipping ``fmin`` / ``fmax``."""
    mn, mx = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
    nan = np.isnan(mn)
    if nan.any():
        mn = np.where(nan, np.fmin.reduce(x, axis=-1, keepdims=True, initial=np.float32(np.inf)), mn)
        mx = np.where(nan, np.fmax.reduce(x, axis=-1, keepdims=True, initial=np.float32(-np.inf)), mx)
    return mn, mx


def _as_int(v: np.ndarray, lo: int, hi: int, dtype: type) -> np.ndarray:
    """Rust's saturating float cast (``v as u8`` / ``v as i8``): NaN -> 0, clamped to [lo, hi], truncated."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(v), np.float32(0), np.clip(np.trunc(v), lo, hi)).astype(dtype)


def _pack_nibbles32(q: np.ndarray) -> np.ndarray:
    return (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)


def _pack_qh32(q5: np.ndarray) -> np.ndarray:
    bits = ((q5 >> 4) & 1).astype(np.uint32)
    qh = (bits << np.arange(32, dtype=np.uint32)).sum(axis=-1, dtype=np.uint32)
    return qh.astype("<u4").reshape(-1, 1).view(np.uint8)


def _q_q4_0(x: np.ndarray) -> np.ndarray:
    d = _signed_absmax(x) / np.float32(-8)
    q = np.minimum(15, _as_int(x * _inv(d) + np.float32(8.5), 0, 255, np.uint8))
    return np.concatenate([_to_f16_bytes(d), _pack_nibbles32(q)], axis=1)


def _q_q4_1(x: np.ndarray) -> np.ndarray:
    mn, mx = _min_max(x)
    d = (mx - mn) / np.float32(15)
    q = np.minimum(15, _as_int((x - mn) * _inv(d) + np.float32(0.5), 0, 255, np.uint8))
    return np.concatenate([_to_f16_bytes(d), _to_f16_bytes(mn), _pack_nibbles32(q)], axis=1)


def _q_q5_0(x: np.ndarray) -> np.ndarray:
    d = _signed_absmax(x) / np.float32(-16)
    q = np.minimum(31, _as_int(x * _inv(d) + np.float32(16.5), -128, 127, np.int8)).astype(np.uint8)
    return np.concatenate([_to_f16_bytes(d), _pack_qh32(q), _pack_nibbles32(q & 0x0F)], axis=1)


def _q_q5_1(x: np.ndarray) -> np.ndarray:
    mn, mx = _min_max(x)
    d = (mx - mn) / np.float32(31)
    q = _as_int((x - mn) * _inv(d) + np.float32(0.5), 0, 255, np.uint8)
    return np.concatenate([_to_f16_bytes(d), _to_f16_bytes(mn), _pack_qh32(q), _pack_nibbles32(q & 0x0F)], axis=1)


def _q_q8_0(x: np.ndarray) -> np.ndarray:
    d = _absmax(x) / np.float32(127)
    q = _as_int(_roundf(x * _inv(d)), -128, 127, np.int8)
    return np.concatenate([_to_f16_bytes(d), q.view(np.uint8)], axis=1)


def _q_q8_1(x: np.ndarray) -> np.ndarray:
    """Candle's ``quantize_row_q8_1``: ``s = f16(sum of the quants) * f16(d)``, an f16 product.

    ggml rounds ``d * sum`` once instead; Candle's ``QTensor::quantize`` is the reference here.
    """
    d = _absmax(x) / np.float32(127)
    q = _as_int(_roundf(x * _inv(d)), -128, 127, np.int8)
    qsum = q.astype(np.int32).sum(-1, keepdims=True).astype(np.float16).astype(np.float32)
    s = qsum * d.astype(np.float16).astype(np.float32)
    return np.concatenate([_to_f16_bytes(d), _to_f16_bytes(s), q.view(np.uint8)], axis=1)


def _q_q8_k(x: np.ndarray) -> np.ndarray:
    """Candle's ``BlockQ8K::from_float``: ``iscale = -127 / max``, ``d = 1 / iscale`` (``-inf`` for an inf max)."""
    mx = _signed_absmax(x)
    zero = mx == 0
    iscale = np.where(zero, np.float32(0), np.float32(-127) / np.where(zero, 1, mx)).astype(np.float32)
    with np.errstate(invalid="ignore"):
        q = _as_int(_roundf(iscale * x), -128, 127, np.int8)
    with np.errstate(divide="ignore"):
        d = np.where(zero, np.float32(0), np.float32(1) / np.where(zero, 1, iscale)).astype(np.float32)
    bsums = q.astype(np.int16).reshape(-1, 16, 16).sum(-1, dtype=np.int16)
    return np.concatenate(
        [d.astype("<f4").view(np.uint8), q.view(np.uint8), bsums.astype("<i2").view(np.uint8)], axis=1
    )


_ROWS_PER_CHUNK = 8192  # rows fit in turn: the search passes over each chunk while it is in cache


def _round_inplace(a: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """:func:`_roundf` in place (``tmp`` is scratch of the same shape)."""
    np.copysign(np.float32(0.5), a, out=tmp)
    a += tmp
    return np.trunc(a, out=a)


_Weigh = Callable[[np.ndarray], np.ndarray]


def _by_row_chunks(
    fn: Callable[..., Any], x: np.ndarray, w: np.ndarray | None, *args: Any, weigh: _Weigh | None = np.square
) -> Any:
    """``fn(xt, wt, *args)`` over chunks of the rows of ``x`` (..., n), each given transposed as (n, rows).

    ``wt`` is the same chunk of ``w`` or, when ``w`` is None, ``weigh(xt)`` (None when ``weigh`` is).
    ``fn`` returns one (rows,) array or a tuple of them; so does this, shaped ``x.shape[:-1]``.
    """
    lead, n = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, n)
    w2 = None if w is None else w.reshape(-1, n)
    outs: list[np.ndarray] = []
    for s in range(0, x2.shape[0], _ROWS_PER_CHUNK):
        xt = np.ascontiguousarray(x2[s : s + _ROWS_PER_CHUNK].T, dtype=np.float32)
        if w2 is not None:
            wt = np.ascontiguousarray(w2[s : s + _ROWS_PER_CHUNK].T, dtype=np.float32)
        else:
            wt = None if weigh is None else weigh(xt)
        res = fn(xt, wt, *args)
        res = res if isinstance(res, tuple) else (res,)
        if not outs:
            outs = [np.empty(x2.shape[0], np.float32) for _ in res]
        for o, r in zip(outs, res, strict=True):
            o[s : s + _ROWS_PER_CHUNK] = r
    if not outs:  # no rows
        return np.zeros(lead, np.float32)
    shaped = tuple(o.reshape(lead) for o in outs)
    return shaped[0] if len(shaped) == 1 else shaped


def _signed_absmax_t(xt: np.ndarray) -> np.ndarray:
    """:func:`_signed_absmax` of transposed rows (n, rows) -> (rows,)."""
    return np.take_along_axis(xt, np.abs(xt).argmax(axis=0)[None], axis=0)[0]


def _qx_rows(xt: np.ndarray, wt: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    mx = _signed_absmax_t(xt)
    safe_mx = np.where(mx == 0, np.float32(1), mx)
    wx = wt * xt
    q, tmp = np.empty_like(xt), np.empty_like(xt)
    best = np.zeros(xt.shape[1], np.float32)
    # rows whose weights are all zero keep the plain rounding at -nmax / max
    best_iscale = (np.float32(-nmax) / safe_mx).astype(np.float32)
    scale = _inv(best_iscale)
    for k, step in enumerate([0, *range(-9, 0), *range(1, 10)]):
        iscale = (-(np.float32(nmax) + np.float32(0.1) * np.float32(step)) / safe_mx).astype(np.float32)
        np.multiply(xt, iscale, out=q)
        np.clip(_round_inplace(q, tmp), -nmax, nmax - 1, out=q)
        sumlx = np.multiply(wx, q, out=tmp).sum(0, dtype=np.float32)
        q *= q
        suml2 = np.multiply(wt, q, out=tmp).sum(0, dtype=np.float32)
        cand = sumlx / np.where(suml2 > 0, suml2, np.float32(1))
        take = (suml2 > 0) if k == 0 else (suml2 > 0) & (sumlx * sumlx > best * suml2)
        scale = np.where(take, cand, scale)
        best = np.where(take, cand * sumlx, best)
        best_iscale = np.where(take, iscale, best_iscale)
    return np.where(mx == 0, np.float32(0), scale), best_iscale


def _make_qx_quants(x: np.ndarray, nmax: int, w: np.ndarray | None = None) -> np.ndarray:
    """ggml's ``make_qx_quants`` (rmse_type 1), vectorised over the leading dims of ``x`` (..., n).

    The scale of each row for signed q in [-nmax, nmax - 1]: the least-squares scale of the rounding
    at ``-nmax / max`` and at the 18 nearby ``-(nmax + 0.1 * k) / max`` (k = -9..9), keeping the one
    with the least weighted error. Weights ``w`` default to ``x * x``. Rows of zeros give 0.
    """
    return _by_row_chunks(_qx_rows, x, w, nmax)[0]


def _make_qx_levels(x: np.ndarray, nmax: int, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_make_qx_quants` over rows of ``x`` (n_rows, n), also giving the chosen levels in
    ``[-nmax, nmax - 1]`` (n_rows, n): the rounding at the winning inverse scale."""
    scale, iscale = _by_row_chunks(_qx_rows, x, w, nmax)
    levels = np.clip(_roundf(x * iscale[:, None]), -nmax, nmax - 1).astype(np.int32)
    return scale, levels


def _q3_rows(xt: np.ndarray, wt: np.ndarray, nmax: int) -> np.ndarray:
    mx = _signed_absmax_t(xt)
    iscale = (np.float32(-nmax) / np.where(mx == 0, np.float32(1), mx)).astype(np.float32)
    q = np.clip(_roundf(xt * iscale), -nmax, nmax - 1).astype(np.float32)
    wx = wt * xt
    sumlx = (wx * q).sum(0, dtype=np.float32)
    suml2 = (wt * q * q).sum(0, dtype=np.float32)
    for _ in range(5):  # a pass that changes nothing leaves the next one nothing to change
        for i in range(xt.shape[0]):
            xi, wi, wxi, qi = xt[i], wt[i], wx[i], q[i]
            slx = sumlx - wxi * qi
            sl2 = suml2 - wi * qi * qi
            pos = slx > 0
            new_q = np.clip(_roundf(xi * sl2 / np.where(pos, slx, np.float32(1))), -nmax, nmax - 1)
            slx += wxi * new_q
            sl2 += wi * new_q * new_q
            take = pos & (new_q != qi) & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            q[i] = np.where(take, new_q, qi)
            sumlx = np.where(take, slx, sumlx)
            suml2 = np.where(take, sl2, suml2)
    scale = sumlx / np.where(suml2 > 0, suml2, np.float32(1))
    return np.where(mx == 0, np.float32(0), scale)


def _make_q3_quants(x: np.ndarray, nmax: int) -> np.ndarray:
    """ggml's ``make_q3_quants`` (do_rmse), vectorised over the leading dims of ``x`` (..., n).

    Rounds at ``-nmax / max``, then makes up to five passes over the values, moving each one to the
    level that lowers the x²-weighted error of the least-squares scale; returns that scale per row.
    """
    return _by_row_chunks(_q3_rows, x, None, nmax)


def _qkx1_rows(xt: np.ndarray, _wt: None, nmax: int, ntry: int) -> tuple[np.ndarray, np.ndarray]:
    n = xt.shape[0]
    mn = np.minimum(xt.min(0), np.float32(0))
    flat = xt.max(0) <= mn  # one value, <= 0: reproduced by the min alone
    iscale = (np.float32(nmax) / np.where(flat, np.float32(1), xt.max(0) - mn)).astype(np.float32)
    scale = np.zeros_like(mn)
    prev = np.zeros_like(xt)
    q, xm, tmp = np.empty_like(xt), np.empty_like(xt), np.empty_like(xt)
    active = ~flat
    for _ in range(ntry):
        np.subtract(xt, mn, out=xm)
        np.multiply(xm, iscale, out=q)
        np.fmax(_round_inplace(q, tmp), 0, out=q)  # Rust's `nearest_int(v).clamp(0, nmax)`: NaN -> 0
        np.minimum(q, nmax, out=q)
        changed = (q != prev).any(0)
        sumlx = np.multiply(xm, q, out=tmp).sum(0, dtype=np.float32)
        suml2 = np.multiply(q, q, out=tmp).sum(0, dtype=np.float32)
        new_scale = sumlx / np.where(suml2 > 0, suml2, np.float32(1))
        np.multiply(q, new_scale, out=tmp)
        np.subtract(xt, tmp, out=tmp)
        new_min = np.minimum(tmp.sum(0, dtype=np.float32) / np.float32(n), np.float32(0))
        scale = np.where(active, new_scale, scale)
        mn = np.where(active, new_min, mn)
        iscale = np.where(active, _inv(new_scale), iscale)
        prev, q = q, prev
        active &= changed
        if not active.any():
            break
    return np.where(flat, np.float32(0), scale), np.where(flat, -mn + np.float32(0), -mn)  # Candle's (0.0, 0.0)


def _make_qkx1_quants(x: np.ndarray, nmax: int, ntry: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The scale-and-min fit of Candle's ``from_float`` for Q2K / Q4K / Q5K (ggml's earlier
    ``make_qkx1_quants``), vectorised over the leading dims of ``x`` (..., n).

    ``x ~ scale * q - min`` with q in [0, nmax] and min >= 0: starting from the min/max range, up to
    ``ntry`` passes alternate rounding q and refitting the scale (least squares through the current
    min) and the min (the mean residual, kept <= 0 as an offset), stopping once q stops changing.
    Returns (scale, min). A row of one value v <= 0 gives (0, -v); one of a positive value is fit as
    the range [0, v] (Candle returns (0, 0) for any single-valued row, zeroing it).
    """
    return _by_row_chunks(_qkx1_rows, x, None, nmax, ntry, weigh=None)


def _qkx_rows(
    xt: np.ndarray, wt: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[np.ndarray, np.ndarray]:
    lo = np.minimum(xt.min(0), np.float32(0))
    hi = xt.max(0)
    flat = hi <= lo
    rng = np.where(flat, np.float32(1), hi - lo)
    sum_w = wt.sum(0, dtype=np.float32)
    sum_x = (wt * xt).sum(0, dtype=np.float32)
    q, tmp, tmp2 = np.empty_like(xt), np.empty_like(xt), np.empty_like(xt)

    def err(s: np.ndarray, m: np.ndarray) -> np.ndarray:
        d = np.multiply(q, s, out=tmp)
        d += m
        d -= xt
        if use_mad:
            np.abs(d, out=d)
        else:
            d *= d
        d *= wt
        return d.sum(0, dtype=np.float32)

    iscale = (np.float32(nmax) / rng).astype(np.float32)
    np.multiply(xt - lo, iscale, out=q)
    np.clip(_round_inplace(q, tmp), 0, nmax, out=q)
    scale = _inv(iscale)
    mn = lo
    best = err(scale, mn)
    for k in range(nstep + 1):
        iscale = ((np.float32(rmin) + np.float32(rdelta) * np.float32(k) + np.float32(nmax)) / rng).astype(np.float32)
        np.subtract(xt, lo, out=q)
        q *= iscale
        np.clip(_round_inplace(q, tmp), 0, nmax, out=q)
        sum_l = np.multiply(wt, q, out=tmp).sum(0, dtype=np.float32)
        sum_xl = np.multiply(tmp, xt, out=tmp2).sum(0, dtype=np.float32)
        sum_l2 = np.multiply(tmp, q, out=tmp).sum(0, dtype=np.float32)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = det > 0
        safe = np.where(ok, det, np.float32(1))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / safe
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / safe
        pos = this_min > 0
        this_scale = np.where(pos, sum_xl / np.where(sum_l2 > 0, sum_l2, np.float32(1)), this_scale)
        this_min = np.where(pos, np.float32(0), this_min)
        cur = err(this_scale, this_min)
        take = ok & (cur < best)
        best = np.where(take, cur, best)
        scale = np.where(take, this_scale, scale)
        mn = np.where(take, this_min, mn)
    return np.where(flat, np.float32(0), scale), -np.where(flat, lo, mn)


def _make_qkx_quants(
    x: np.ndarray, w: np.ndarray | _Weigh, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``make_qkx2_quants`` / ``make_qkx3_quants``, vectorised over the leading dims of ``x`` (..., n).

    Fits ``x ~ scale * q - min`` (q in [0, nmax], min >= 0) under weights ``w`` (an array shaped like
    ``x``, or a function of each transposed chunk): the rounding at ``nmax / (max - min)``, then for
    each of the ``nstep + 1`` inverse scales ``(nmax + rmin + k * rdelta) / (max - min)`` the weighted
    least-squares scale and min of that rounding (the min clamped to an offset <= 0); the pair with the
    least weighted squared (``use_mad``: absolute) error wins. Returns (scale, min).
    """
    if callable(w):
        return _by_row_chunks(_qkx_rows, x, None, nmax, rmin, rdelta, nstep, use_mad, weigh=w)
    return _by_row_chunks(_qkx_rows, x, w, nmax, rmin, rdelta, nstep, use_mad)


def _make_qp_quants(x: np.ndarray, w: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``make_qp_quants``: one scale per row of the non-negative ``x`` (rows, n) with levels
    in [0, nmax], under weights ``w``. The best of the roundings at ``(nmax + 0.1 * k) / max``
    (k = -4..4), then up to five passes moving single levels while that lowers the weighted error of
    the least-squares scale. Returns (scale (rows,), levels (rows, n) int32)."""
    xt = np.ascontiguousarray(x.T, dtype=np.float32)
    wt = np.ascontiguousarray(w.T, dtype=np.float32)
    mx = np.maximum(xt.max(0), np.float32(0))
    zero = mx == 0
    safe_mx = np.where(zero, np.float32(1), mx)

    def levels(iscale: np.ndarray) -> np.ndarray:
        return np.clip(_roundf(xt * iscale), 0, nmax)

    iscale = (np.float32(nmax) / safe_mx).astype(np.float32)
    best = (wt * (xt - _inv(iscale) * levels(iscale)) ** 2).sum(0, dtype=np.float32)
    for k in (-4, -3, -2, -1, 1, 2, 3, 4):
        cand = ((np.float32(0.1) * np.float32(k) + np.float32(nmax)) / safe_mx).astype(np.float32)
        mse = (wt * (xt - _inv(cand) * levels(cand)) ** 2).sum(0, dtype=np.float32)
        take = mse < best
        best = np.where(take, mse, best)
        iscale = np.where(take, cand, iscale)
    q = levels(iscale)
    wx = wt * xt
    sumlx = (wx * q).sum(0, dtype=np.float32)
    suml2 = (wt * q * q).sum(0, dtype=np.float32)
    for _ in range(5):
        changed = False
        for i in range(xt.shape[0]):
            xi, wi, wxi, qi = xt[i], wt[i], wx[i], q[i]
            slx = sumlx - wxi * qi
            sl2 = suml2 - wi * qi * qi
            ok = (slx > 0) & (sl2 > 0)
            new_q = np.clip(_roundf(xi * sl2 / np.where(ok, slx, np.float32(1))), 0, nmax)
            slx += wxi * new_q
            sl2 += wi * new_q * new_q
            take = ok & (new_q != qi) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            if take.any():
                changed = True
                q[i] = np.where(take, new_q, qi)
                sumlx = np.where(take, slx, sumlx)
                suml2 = np.where(take, sl2, suml2)
        if not changed:
            break
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, np.float32(1)), safe_mx / np.float32(nmax))
    return np.where(zero, np.float32(0), scale), np.where(zero[:, None], 0, q.T).astype(np.int32)


def _imatrix_weights(x: np.ndarray, qw: np.ndarray, sigma_mul: float) -> np.ndarray:
    """ggml's importance weights ``qw * sqrt(sigma2 + x * x)``, ``sigma2 = sigma_mul * mean(x * x)``
    over each super-block; ``x`` is (n_blocks, QK_K), ``qw`` the matching imatrix entries."""
    sigma2 = np.float32(sigma_mul) * (x * x).sum(-1, keepdims=True, dtype=np.float32) / np.float32(QK_K)
    return (qw * np.sqrt(sigma2 + x * x)).astype(np.float32)


def _fold_max0(v: np.ndarray) -> np.ndarray:
    """Candle's ``v.iter().fold(0.0, |max, &val| val.max(max))`` over the last axis, keepdims: ``f32::max``
    skips a NaN (the fit of a NaN / inf sub-block), and of equal values (0.0, -0.0) the later one wins."""
    w = np.where(np.isnan(v), np.float32(-np.inf), v)[..., ::-1]
    m = np.take_along_axis(w, w.argmax(-1)[..., None], axis=-1)
    return np.where(m >= 0, m, np.float32(0))


def _fit_scale_min(
    x: np.ndarray, nmax: int, smax: int, qw: np.ndarray | None = None, sigma_mul: float = 2.0
) -> tuple[np.ndarray, ...]:
    """The two-level unsigned fit of Q2K / Q4K / Q5K: ``x ~ d*sc*q - dmin*m`` per sub-block (x is
    (n, n_sub, sub_len)), q in [0, nmax], sc and m in [0, smax].

    Without importance weights (Candle's ``from_float``): :func:`_make_qkx1_quants` per sub-block,
    then sc / m rounded against ``max / smax`` of the block's scales / mins. With them (``qw``, the
    imatrix entries of each value: ``from_float_imatrix``): :func:`_make_qkx_quants` (ggml's
    ``make_qkx3_quants`` grid, -0.9 + 0.05 k for k = 0..36) under :func:`_imatrix_weights`, and the
    sub-block scales and mins quantised by :func:`_make_qp_quants` weighted by each sub-block's total
    weight. q is then rounded against the stored f16 d / dmin. Returns (d, dmin, sc, m, q).
    """
    n = x.shape[0]
    if qw is None:
        scales, mins = _make_qkx1_quants(x, nmax)  # (n, n_sub)
        max_scale, max_min = _fold_max0(scales), _fold_max0(mins)
        with np.errstate(divide="ignore"):
            inv_scale = np.where(max_scale > 0, np.float32(smax) / max_scale, np.float32(0)).astype(np.float32)
            inv_min = np.where(max_min > 0, np.float32(smax) / max_min, np.float32(0)).astype(np.float32)
        sc = _as_int(_roundf(inv_scale * scales), 0, smax, np.int32)
        m = _as_int(_roundf(inv_min * mins), 0, smax, np.int32)
        d = (max_scale / np.float32(smax)).astype(np.float16).astype(np.float32)
        dmin = (max_min / np.float32(smax)).astype(np.float16).astype(np.float32)
    else:
        w = _imatrix_weights(x.reshape(n, -1), qw.reshape(n, -1), sigma_mul).reshape(x.shape)
        scales, mins = _make_qkx_quants(x, w, nmax, -0.9, 0.05, 36)
        sw = w.sum(-1, dtype=np.float32)
        d, sc = _make_qp_quants(scales, sw, smax)
        dmin, m = _make_qp_quants(mins, sw, smax)
        d = d[:, None].astype(np.float16).astype(np.float32)
        dmin = dmin[:, None].astype(np.float16).astype(np.float32)
    eff_d = (d * sc.astype(np.float32))[..., None]
    eff_m = (dmin * m.astype(np.float32))[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(eff_d == 0, np.float32(0), (x + eff_m) / eff_d)
    q = _as_int(_roundf(q), 0, nmax, np.int32)
    return d, dmin, sc, m, q


def _fit_signed(
    x: np.ndarray, nmax: int, smax: int, q3: bool = False, w: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """ggml's two-level signed fit (``quantize_row_q6_K_ref`` / ``quantize_row_q3_K_ref``): sub-block
    scales from :func:`_make_qx_quants` (or :func:`_make_q3_quants` when ``q3``), quantised to
    ``[-smax, smax - 1]`` against one f16 super-scale, then q in ``[-nmax, nmax - 1]`` rounded at the
    stored scales. ``w`` replaces the ``x * x`` weights of the scale search (Q6K's imatrix path).
    Returns (d, sc, q)."""
    scales = _make_q3_quants(x, nmax) if q3 else _make_qx_quants(x, nmax, w)  # (n, n_sub)
    big = _signed_absmax(scales)  # (n, 1)
    iscale = np.float32(-smax) * _inv(big)
    d = _inv(iscale).astype(np.float16).astype(np.float32)
    sc = np.clip(_roundf(iscale * scales), -smax, smax - 1).astype(np.int32)
    q = np.clip(_roundf(x * _inv(d * sc)[..., None]), -nmax, nmax - 1).astype(np.int32)
    return d, sc, q


def _fit_q3_imatrix(x: np.ndarray, qw: np.ndarray) -> tuple[np.ndarray, ...]:
    """Q3K's importance-weighted fit (``from_float_imatrix``; x and qw are (n, 16, 16)): sub-block
    scales from :func:`_make_qx_quants` under :func:`_imatrix_weights`, then the same search over the
    16 scales (levels in [-32, 31], weighted by each sub-block's total weight) for the super-scale.
    Returns (d, sc, q) as :func:`_fit_signed`."""
    n = x.shape[0]
    w = _imatrix_weights(x.reshape(n, -1), qw.reshape(n, -1), 2.0).reshape(x.shape)
    scales = _make_qx_quants(x, 4, w)  # (n, 16)
    d, sc = _make_qx_levels(scales, 32, w.sum(-1, dtype=np.float32))
    d = d[:, None].astype(np.float16).astype(np.float32)
    eff = (d * sc.astype(np.float32))[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(eff == 0, np.float32(0), x / eff)
    return d, sc, np.clip(_roundf(q), -4, 3).astype(np.int32)


def _q_q2_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    n = x.shape[0]
    d, dmin, sc, m, q = _fit_scale_min(x.reshape(n, 16, 16), 3, 15, qw, 1.0)
    if qw is None:  # BlockQ2K::from_float stores f16(0.0), never -0, unless max_scale / max_min > 0
        d, dmin = np.where(d > 0, d, np.float32(0)), np.where(dmin > 0, dmin, np.float32(0))
    q = q.reshape(n, 2, 4, 32)  # (h, j, l)
    qs = (q << (2 * np.arange(4))[None, None, :, None]).sum(2).reshape(n, 64).astype(np.uint8)
    scales = (sc | (m << 4)).astype(np.uint8)
    return np.concatenate([scales, qs, _to_f16_bytes(d), _to_f16_bytes(dmin)], axis=1)


def _q_q3_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    n = x.shape[0]
    if qw is None:
        d, sc, q = _fit_signed(x.reshape(n, 16, 16), 4, 32, q3=True)
        # Candle's BlockQ3K::from_float: a sub-block whose d * sc is 0 keeps level 0 (q = -4), an
        # all-zero block (max scale 0) keeps its scale bytes 0 (sc = -32)
        q = np.where((d * sc == 0)[..., None], -4, q)
        sc = np.where((sc == 0).all(-1, keepdims=True), -32, sc)
    else:
        d, sc, q = _fit_q3_imatrix(x.reshape(n, 16, 16), qw.reshape(n, 16, 16))
    L = (q + 4).reshape(n, 2, 4, 32)  # (h, j, l), in 0..7
    qs = ((L & 3) << (2 * np.arange(4))[None, None, :, None]).sum(2).reshape(n, 64)
    hbit = (L >> 2) & 1
    hmask = (hbit << (4 * np.arange(2)[:, None] + np.arange(4)[None, :])[None, :, :, None]).sum((1, 2))
    v = sc + 32  # 6-bit
    s = np.arange(16)
    packed = np.zeros((n, 12), np.int32)
    for i in range(16):
        packed[:, i % 8] |= (v[:, i] & 0x0F) << (4 * (i // 8))
        packed[:, 8 + i % 4] |= ((v[:, i] >> 4) & 3) << (2 * (i // 4))
    del s
    return np.concatenate(
        [hmask.astype(np.uint8), qs.astype(np.uint8), packed.astype(np.uint8), _to_f16_bytes(d)], axis=1
    )


def _pack_k4_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Inverse of ``get_scale_min_k4``: 8 six-bit scales and mins -> 12 bytes."""
    s = np.zeros((sc.shape[0], 12), np.int32)
    for j in range(8):
        if j < 4:
            s[:, j] |= sc[:, j] & 63
            s[:, j + 4] |= m[:, j] & 63
        else:
            s[:, j + 4] |= (sc[:, j] & 0x0F) | ((m[:, j] & 0x0F) << 4)
            s[:, j - 4] |= (sc[:, j] >> 4) << 6
            s[:, j] |= (m[:, j] >> 4) << 6
    return s.astype(np.uint8)


def _q_q4_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    n = x.shape[0]
    d, dmin, sc, m, q = _fit_scale_min(x.reshape(n, 8, 32), 15, 63, qw)
    q = q.reshape(n, 4, 2, 32)  # (chunk, low/high, l)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, 128).astype(np.uint8)
    return np.concatenate([_to_f16_bytes(d), _to_f16_bytes(dmin), _pack_k4_scales(sc, m), qs], axis=1)


def _q_q5_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    n = x.shape[0]
    d, dmin, sc, m, q = _fit_scale_min(x.reshape(n, 8, 32), 31, 63, qw)
    qh = (((q >> 4) & 1) << np.arange(8)[None, :, None]).sum(1).astype(np.uint8)  # (n, 32)
    ql = (q & 0x0F).reshape(n, 4, 2, 32)
    qs = (ql[:, :, 0] | (ql[:, :, 1] << 4)).reshape(n, 128).astype(np.uint8)
    return np.concatenate([_to_f16_bytes(d), _to_f16_bytes(dmin), _pack_k4_scales(sc, m), qh, qs], axis=1)


def _q_q6_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    n = x.shape[0]
    d, sc, q = _fit_signed(x.reshape(n, 16, 16), 32, 128, w=None if qw is None else qw.reshape(n, 16, 16))
    L = (q + 32).reshape(n, 2, 4, 32)  # (half, quarter, l), in 0..63
    lo, hi = L & 0x0F, L >> 4
    ql = np.concatenate([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=-1)  # (n, 2, 64)
    qh = (hi << (2 * np.arange(4))[None, None, :, None]).sum(2)  # (n, 2, 32)
    return np.concatenate(
        [
            ql.reshape(n, 128).astype(np.uint8),
            qh.reshape(n, 64).astype(np.uint8),
            sc.astype(np.int8).view(np.uint8),
            _to_f16_bytes(d),
        ],
        axis=1,
    )


def _q_f32(x: np.ndarray) -> np.ndarray:
    return x.astype("<f4").reshape(-1).view(np.uint8)


def _q_f16(x: np.ndarray) -> np.ndarray:
    return x.astype("<f2").reshape(-1).view(np.uint8)


def _q_bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even, NaNs kept quiet (ggml's ``ggml_compute_fp32_to_bf16``)."""
    u = x.reshape(-1).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    r = np.where(nan, (u >> 16) | 64, r)
    return r.astype("<u2").view(np.uint8)


_QUANT = {
    GgmlDType.F32: _q_f32,
    GgmlDType.F16: _q_f16,
    GgmlDType.BF16: _q_bf16,
    GgmlDType.Q4_0: _q_q4_0,
    GgmlDType.Q4_1: _q_q4_1,
    GgmlDType.Q5_0: _q_q5_0,
    GgmlDType.Q5_1: _q_q5_1,
    GgmlDType.Q8_0: _q_q8_0,
    GgmlDType.Q8_1: _q_q8_1,
    GgmlDType.Q2K: _q_q2_k,
    GgmlDType.Q3K: _q_q3_k,
    GgmlDType.Q4K: _q_q4_k,
    GgmlDType.Q5K: _q_q5_k,
    GgmlDType.Q6K: _q_q6_k,
    GgmlDType.Q8K: _q_q8_k,
}


def quantize_np(x: np.ndarray, dtype: GgmlDType) -> np.ndarray:
    """float values (size a multiple of ``block_size()``) -> raw block bytes, flat uint8."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32)).reshape(-1)
    bs = dtype.block_size()
    if x.size % bs:
        raise errors.Msg(f"tensor size ({x.size}) is not divisible by block size {bs}")
    if x.size == 0:
        return np.zeros(0, np.uint8)
    with _quiet():  # NaN / inf values follow Candle's casts without numpy's RuntimeWarnings
        out = _QUANT[dtype](x.reshape(-1, bs))
    return np.ascontiguousarray(out, dtype=np.uint8).reshape(-1)


#: the types with an importance-weighted quantiser (Candle's ``from_float_imatrix``)
IMATRIX_TYPES = (GgmlDType.Q2K, GgmlDType.Q3K, GgmlDType.Q4K, GgmlDType.Q5K, GgmlDType.Q6K)


def quantize_imatrix_np(x: np.ndarray, imatrix: np.ndarray, dtype: GgmlDType) -> np.ndarray:
    """float values (..., n_per_row) -> raw block bytes, the fit weighted by ``imatrix`` (n_per_row,).

    ggml's ``quantize_row_*_impl`` with importance weights, as Candle's ``from_float_imatrix``: each
    value's imatrix entry (its column's) weighs its error, combined with the value's magnitude within
    its block (Q2K / Q3K / Q4K / Q5K), or alone (Q6K).
    """
    if dtype not in IMATRIX_TYPES:
        raise errors.Msg(f"`from_float_imatrix` is unimplemented for {dtype.name}")
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    n_per_row = x.shape[-1] if x.ndim else 1
    qw = np.ascontiguousarray(np.asarray(imatrix, dtype=np.float32)).reshape(-1)
    if qw.size != n_per_row:
        raise errors.Msg(f"imatrix weights must have the same length {qw.size} as the last dim of src {n_per_row}")
    if n_per_row % QK_K:
        raise errors.Msg(f"tensor size ({x.size}) is not divisible by block size {QK_K}")
    if x.size == 0:
        return np.zeros(0, np.uint8)
    rows = x.reshape(-1, QK_K)
    w = np.broadcast_to(qw.reshape(-1, QK_K), (x.size // n_per_row, n_per_row // QK_K, QK_K)).reshape(-1, QK_K)
    with _quiet():
        out = _QUANT[dtype](rows, w)
    return np.ascontiguousarray(out, dtype=np.uint8).reshape(-1)


__all__ = ["IMATRIX_TYPES", "QK_K", "GgmlDType", "dequantize_np", "quantize_imatrix_np", "quantize_np"]
