"""GGML block types (``candle::quantized::GgmlDType``) and the numpy reference codecs.

Each quantised type stores a row of ``block_size()`` values in one block of ``type_size()``
bytes (little-endian, the layouts of ggml's ``block_q4_0`` ... ``block_q6_K``). This module holds

* :class:`GgmlDType` with ``block_size()`` / ``type_size()`` and the GGUF type ids;
* :func:`dequantize_np`: raw block bytes -> float32, vectorised over blocks. It is the reference
  the JAX kernels (:mod:`candlejax.quantized.jax_dequant`) are tested against, written from the
  per-element formulas of ggml's ``dequantize_row_*`` loops;
* :func:`quantize_np`: float32 -> raw block bytes for every type (ggml's reference rounding for
  the 32-element types and Q3K / Q6K, whose scales come from ggml's ``make_q3_quants`` /
  ``make_qx_quants`` searches; a direct min/max fit for Q2K, Q4K, Q5K and Q8K's scale, see
  docs/differences/quantized.md).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

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
        key = s.strip().upper()
        if key in GgmlDType.__members__:
            return GgmlDType.__members__[key]
        raise errors.Msg(f"unknown ggml dtype {s!r}, expected one of {', '.join(_CANONICAL)}")

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


def dequantize_np(raw: np.ndarray | bytes, dtype: GgmlDType, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Raw GGML block bytes -> float32 values (flat, or reshaped to ``shape``). Candle's ``to_float``."""
    b = _blocks(np.frombuffer(raw, np.uint8) if isinstance(raw, bytes | bytearray | memoryview) else raw, dtype)
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
    """The value of largest magnitude in each row (first one on ties, as ggml), keepdims."""
    idx = np.abs(x).argmax(axis=-1)[..., None]
    return np.take_along_axis(x, idx, axis=-1)


def _pack_nibbles32(q: np.ndarray) -> np.ndarray:
    return (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)


def _pack_qh32(q5: np.ndarray) -> np.ndarray:
    bits = ((q5 >> 4) & 1).astype(np.uint32)
    qh = (bits << np.arange(32, dtype=np.uint32)).sum(axis=-1, dtype=np.uint32)
    return qh.astype("<u4").reshape(-1, 1).view(np.uint8)


def _q_q4_0(x: np.ndarray) -> np.ndarray:
    d = _signed_absmax(x) / np.float32(-8)
    q = np.minimum(15, np.trunc(x * _inv(d) + np.float32(8.5))).astype(np.uint8)
    return np.concatenate([_to_f16_bytes(d), _pack_nibbles32(q)], axis=1)


def _q_q4_1(x: np.ndarray) -> np.ndarray:
    mn, mx = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
    d = (mx - mn) / np.float32(15)
    q = np.minimum(15, np.trunc((x - mn) * _inv(d) + np.float32(0.5))).astype(np.uint8)
    return np.concatenate([_to_f16_bytes(d), _to_f16_bytes(mn), _pack_nibbles32(q)], axis=1)


def _q_q5_0(x: np.ndarray) -> np.ndarray:
    d = _signed_absmax(x) / np.float32(-16)
    q = np.minimum(31, np.trunc(x * _inv(d) + np.float32(16.5))).astype(np.uint8)
    return np.concatenate([_to_f16_bytes(d), _pack_qh32(q), _pack_nibbles32(q & 0x0F)], axis=1)


def _q_q5_1(x: np.ndarray) -> np.ndarray:
    mn, mx = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
    d = (mx - mn) / np.float32(31)
    q = np.minimum(31, np.trunc((x - mn) * _inv(d) + np.float32(0.5))).astype(np.uint8)
    return np.concatenate([_to_f16_bytes(d), _to_f16_bytes(mn), _pack_qh32(q), _pack_nibbles32(q & 0x0F)], axis=1)


def _q_q8_0(x: np.ndarray) -> np.ndarray:
    d = np.abs(x).max(-1, keepdims=True) / np.float32(127)
    q = _roundf(x * _inv(d)).astype(np.int8)
    return np.concatenate([_to_f16_bytes(d), q.view(np.uint8)], axis=1)


def _q_q8_1(x: np.ndarray) -> np.ndarray:
    d = np.abs(x).max(-1, keepdims=True) / np.float32(127)
    q = _roundf(x * _inv(d)).astype(np.int8)
    s = d * q.astype(np.int32).sum(-1, keepdims=True).astype(np.float32)
    return np.concatenate([_to_f16_bytes(d), _to_f16_bytes(s), q.view(np.uint8)], axis=1)


def _q_q8_k(x: np.ndarray) -> np.ndarray:
    mx = _signed_absmax(x)
    iscale = np.where(mx == 0, np.float32(0), np.float32(-127) / np.where(mx == 0, 1, mx)).astype(np.float32)
    q = np.minimum(127, _roundf(iscale * x)).astype(np.int8)
    d = _inv(iscale)
    bsums = q.astype(np.int16).reshape(-1, 16, 16).sum(-1, dtype=np.int16)
    return np.concatenate(
        [d.astype("<f4").view(np.uint8), q.view(np.uint8), bsums.astype("<i2").view(np.uint8)], axis=1
    )


def _fit_scale_min(x: np.ndarray, nmax: int, smax: int, mmax: int) -> tuple[np.ndarray, ...]:
    """Fit ``x ~ d*sc*q - dmin*m`` per sub-block (rows of x: (n, n_sub, sub_len)).

    q in [0, nmax], sc in [0, smax], m in [0, mmax] (the k-quants' two-level scales). Returns
    (d, dmin, sc, m, q) with d/dmin rounded to f16 first so that q is fit to the stored scales.
    """
    mn = np.minimum(x.min(-1), 0)  # (n, n_sub), <= 0
    mx = x.max(-1)
    scale = (mx - mn) / np.float32(nmax)
    neg_min = -mn
    d = (scale.max(-1, keepdims=True) / np.float32(smax)).astype(np.float16).astype(np.float32)
    dmin = (neg_min.max(-1, keepdims=True) / np.float32(mmax)).astype(np.float16).astype(np.float32)
    sc = np.clip(_roundf(scale * _inv(d)), 0, smax).astype(np.int32)
    m = np.clip(_roundf(neg_min * _inv(dmin)), 0, mmax).astype(np.int32)
    eff_d = (d * sc)[..., None]
    eff_m = (dmin * m)[..., None]
    q = np.clip(_roundf((x + eff_m) * _inv(eff_d)), 0, nmax).astype(np.int32)
    return d, dmin, sc, m, q


_ROWS_PER_CHUNK = 8192  # rows fit in turn: the search passes over each chunk while it is in cache


def _round_inplace(a: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """:func:`_roundf` in place (``tmp`` is scratch of the same shape)."""
    np.copysign(np.float32(0.5), a, out=tmp)
    a += tmp
    return np.trunc(a, out=a)


_RowFit = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def _by_row_chunks(fn: _RowFit, x: np.ndarray, w: np.ndarray | None, nmax: int) -> np.ndarray:
    """``fn(xt, wt, nmax)`` over chunks of the rows of ``x`` (..., n), each given transposed as (n, rows)."""
    lead, n = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, n)
    w2 = None if w is None else w.reshape(-1, n)
    out = np.empty(x2.shape[0], np.float32)
    for s in range(0, x2.shape[0], _ROWS_PER_CHUNK):
        xt = np.ascontiguousarray(x2[s : s + _ROWS_PER_CHUNK].T, dtype=np.float32)
        wt = xt * xt if w2 is None else np.ascontiguousarray(w2[s : s + _ROWS_PER_CHUNK].T, dtype=np.float32)
        out[s : s + _ROWS_PER_CHUNK] = fn(xt, wt, nmax)
    return out.reshape(lead)


def _signed_absmax_t(xt: np.ndarray) -> np.ndarray:
    """:func:`_signed_absmax` of transposed rows (n, rows) -> (rows,)."""
    return np.take_along_axis(xt, np.abs(xt).argmax(axis=0)[None], axis=0)[0]


def _qx_rows(xt: np.ndarray, wt: np.ndarray, nmax: int) -> np.ndarray:
    mx = _signed_absmax_t(xt)
    safe_mx = np.where(mx == 0, np.float32(1), mx)
    wx = wt * xt
    q, tmp = np.empty_like(xt), np.empty_like(xt)
    scale = np.zeros(xt.shape[1], np.float32)
    best = np.zeros(xt.shape[1], np.float32)
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
    return np.where(mx == 0, np.float32(0), scale)


def _make_qx_quants(x: np.ndarray, nmax: int, w: np.ndarray | None = None) -> np.ndarray:
    """ggml's ``make_qx_quants`` (rmse_type 1), vectorised over the leading dims of ``x`` (..., n).

    The scale of each row for signed q in [-nmax, nmax - 1]: the least-squares scale of the rounding
    at ``-nmax / max`` and at the 18 nearby ``-(nmax + 0.1 * k) / max`` (k = -9..9), keeping the one
    with the least weighted error. Weights ``w`` default to ``x * x``. Rows of zeros give 0.
    """
    return _by_row_chunks(_qx_rows, x, w, nmax)


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


def _fit_signed(x: np.ndarray, nmax: int, smax: int, q3: bool = False) -> tuple[np.ndarray, ...]:
    """ggml's two-level signed fit (``quantize_row_q6_K_ref`` / ``quantize_row_q3_K_ref``): sub-block
    scales from :func:`_make_qx_quants` (or :func:`_make_q3_quants` when ``q3``), quantised to
    ``[-smax, smax - 1]`` against one f16 super-scale, then q in ``[-nmax, nmax - 1]`` rounded at the
    stored scales. Returns (d, sc, q)."""
    scales = _make_q3_quants(x, nmax) if q3 else _make_qx_quants(x, nmax)  # (n, n_sub)
    big = _signed_absmax(scales)  # (n, 1)
    iscale = np.float32(-smax) * _inv(big)
    d = _inv(iscale).astype(np.float16).astype(np.float32)
    sc = np.clip(_roundf(iscale * scales), -smax, smax - 1).astype(np.int32)
    q = np.clip(_roundf(x * _inv(d * sc)[..., None]), -nmax, nmax - 1).astype(np.int32)
    return d, sc, q


def _q_q2_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    d, dmin, sc, m, q = _fit_scale_min(x.reshape(n, 16, 16), 3, 15, 15)
    q = q.reshape(n, 2, 4, 32)  # (h, j, l)
    qs = (q << (2 * np.arange(4))[None, None, :, None]).sum(2).reshape(n, 64).astype(np.uint8)
    scales = (sc | (m << 4)).astype(np.uint8)
    return np.concatenate([scales, qs, _to_f16_bytes(d), _to_f16_bytes(dmin)], axis=1)


def _q_q3_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    d, sc, q = _fit_signed(x.reshape(n, 16, 16), 4, 32, q3=True)
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


def _q_q4_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    d, dmin, sc, m, q = _fit_scale_min(x.reshape(n, 8, 32), 15, 63, 63)
    q = q.reshape(n, 4, 2, 32)  # (chunk, low/high, l)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, 128).astype(np.uint8)
    return np.concatenate([_to_f16_bytes(d), _to_f16_bytes(dmin), _pack_k4_scales(sc, m), qs], axis=1)


def _q_q5_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    d, dmin, sc, m, q = _fit_scale_min(x.reshape(n, 8, 32), 31, 63, 63)
    qh = (((q >> 4) & 1) << np.arange(8)[None, :, None]).sum(1).astype(np.uint8)  # (n, 32)
    ql = (q & 0x0F).reshape(n, 4, 2, 32)
    qs = (ql[:, :, 0] | (ql[:, :, 1] << 4)).reshape(n, 128).astype(np.uint8)
    return np.concatenate([_to_f16_bytes(d), _to_f16_bytes(dmin), _pack_k4_scales(sc, m), qh, qs], axis=1)


def _q_q6_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    d, sc, q = _fit_signed(x.reshape(n, 16, 16), 32, 128)
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
    out = _QUANT[dtype](x.reshape(-1, bs))
    return np.ascontiguousarray(out, dtype=np.uint8).reshape(-1)


__all__ = ["QK_K", "GgmlDType", "dequantize_np", "quantize_np"]
