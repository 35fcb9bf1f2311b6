"""GGML dequantisation in ``jax.numpy``: raw uint8 block bytes -> float32, jit-able.

The kernels take the bytes of whole rows, shape ``(..., n_blocks * type_size)``, and return
``(..., n_blocks * block_size)`` values, so a quantised weight can stay packed in device memory
and be expanded inside a compiled step (XLA fuses the bit unpacking into its consumer where it
can). Only reshapes, shifts, masks and broadcasts are used: no gathers.

Checked against :func:`candlejax.quantized.ggml_types.dequantize_np` and ``gguf.quants``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jax import lax

from candlejax import errors
from candlejax.quantized.ggml_types import QK_K, GgmlDType

Array = Any

_U8 = jnp.uint8
_I32 = jnp.int32
_F32 = jnp.float32


def _u16(b: Array, at: int) -> Array:
    return b[..., at].astype(jnp.uint16) | (b[..., at + 1].astype(jnp.uint16) << 8)


def _f16(b: Array, at: int) -> Array:
    """The little-endian f16 at byte ``at`` of each block, as float32 with a trailing unit axis."""
    return lax.bitcast_convert_type(_u16(b, at), jnp.float16).astype(_F32)[..., None]


def _f32(b: Array, at: int) -> Array:
    u = (
        b[..., at].astype(jnp.uint32)
        | (b[..., at + 1].astype(jnp.uint32) << 8)
        | (b[..., at + 2].astype(jnp.uint32) << 16)
        | (b[..., at + 3].astype(jnp.uint32) << 24)
    )
    return lax.bitcast_convert_type(u, _F32)[..., None]


def _i8(b: Array) -> Array:
    return lax.bitcast_convert_type(b, jnp.int8)


def _shifts(*vals: int) -> Array:
    return jnp.asarray(vals, _U8)


def _nibbles(qs: Array) -> Array:
    """(..., 16) packed bytes -> (..., 32) values: the 16 low nibbles, then the 16 high nibbles."""
    return jnp.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits32(qh: Array) -> Array:
    """(..., 4) bytes of a little-endian u32 -> (..., 32) bits, bit j at position j."""
    bits = (qh[..., :, None] >> jnp.arange(8, dtype=_U8)) & 1
    return bits.reshape(*qh.shape[:-1], 32)


def _q4_0(b: Array) -> Array:
    return _f16(b, 0) * (_nibbles(b[..., 2:18]).astype(_I32) - 8).astype(_F32)


def _q4_1(b: Array) -> Array:
    return _f16(b, 0) * _nibbles(b[..., 4:20]).astype(_F32) + _f16(b, 2)


def _q5_0(b: Array) -> Array:
    q = _nibbles(b[..., 6:22]) | (_bits32(b[..., 2:6]) << 4)
    return _f16(b, 0) * (q.astype(_I32) - 16).astype(_F32)


def _q5_1(b: Array) -> Array:
    q = _nibbles(b[..., 8:24]) | (_bits32(b[..., 4:8]) << 4)
    return _f16(b, 0) * q.astype(_F32) + _f16(b, 2)


def _q8_0(b: Array) -> Array:
    return _i8(b[..., 2:34]).astype(_F32) * _f16(b, 0)


def _q8_1(b: Array) -> Array:
    return _i8(b[..., 4:36]).astype(_F32) * _f16(b, 0)


def _q8_k(b: Array) -> Array:
    return _i8(b[..., 4:260]).astype(_F32) * _f32(b, 0)


def _sub(q: Array, n_sub: int) -> Array:
    """(..., 256) -> (..., n_sub, 256 // n_sub)."""
    return q.reshape(*q.shape[:-1], n_sub, QK_K // n_sub)


def _q2_k(b: Array) -> Array:
    lead = b.shape[:-1]
    sc = b[..., 0:16]
    qs = b[..., 16:80].reshape(*lead, 2, 1, 32)
    q = ((qs >> _shifts(0, 2, 4, 6)[:, None]) & 3).reshape(*lead, 16, 16)  # (h, j, l) -> 16 x 16
    dl = _f16(b, 80) * (sc & 0x0F).astype(_F32)
    ml = _f16(b, 82) * (sc >> 4).astype(_F32)
    return (dl[..., None] * q.astype(_F32) - ml[..., None]).reshape(*lead, QK_K)


def _q3_k(b: Array) -> Array:
    lead = b.shape[:-1]
    hmask = b[..., 0:32].reshape(*lead, 1, 1, 32)
    qs = b[..., 32:96].reshape(*lead, 2, 1, 32)
    ql = (qs >> _shifts(0, 2, 4, 6)[:, None]) & 3  # (..., 2, 4, 32)
    hshift = (4 * jnp.arange(2, dtype=_U8)[:, None] + jnp.arange(4, dtype=_U8))[:, :, None]
    hb = (hmask >> hshift) & 1  # (..., 2, 4, 32)
    q = ql.astype(_I32) + 4 * hb.astype(_I32) - 4
    s = b[..., 96:108]
    lo = jnp.concatenate([s[..., 0:8] & 0x0F, s[..., 0:8] >> 4], axis=-1)  # (..., 16)
    hi = ((s[..., None, 8:12] >> _shifts(0, 2, 4, 6)[:, None]) & 3).reshape(*lead, 16)
    scale = (lo | (hi << 4)).astype(_I32) - 32
    dl = _f16(b, 108) * scale.astype(_F32)
    return (dl[..., None] * q.reshape(*lead, 16, 16).astype(_F32)).reshape(*lead, QK_K)


def _k4_scale_min(s: Array) -> tuple[Array, Array]:
    """ggml's ``get_scale_min_k4`` for all 8 sub-blocks: 12 packed bytes -> (..., 8) scales, mins."""
    s0, s1, s2 = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = jnp.concatenate([s0 & 63, (s2 & 0x0F) | ((s0 >> 6) << 4)], axis=-1)
    mn = jnp.concatenate([s1 & 63, (s2 >> 4) | ((s1 >> 6) << 4)], axis=-1)
    return sc, mn


def _q4_k_like(b: Array, ql: Array, qh: Array | None) -> Array:
    lead = b.shape[:-1]
    qs = ql.reshape(*lead, 4, 1, 32)
    q = ((qs >> _shifts(0, 4)[:, None]) & 0x0F).reshape(*lead, 8, 32)
    if qh is not None:
        q = q | (((qh[..., None, :] >> jnp.arange(8, dtype=_U8)[:, None]) & 1) << 4)
    sc, mn = _k4_scale_min(b[..., 4:16])
    d = _f16(b, 0) * sc.astype(_F32)
    m = _f16(b, 2) * mn.astype(_F32)
    return (d[..., None] * q.astype(_F32) - m[..., None]).reshape(*lead, QK_K)


def _q4_k(b: Array) -> Array:
    return _q4_k_like(b, b[..., 16:144], None)


def _q5_k(b: Array) -> Array:
    return _q4_k_like(b, b[..., 48:176], b[..., 16:48])


def _q6_k(b: Array) -> Array:
    lead = b.shape[:-1]
    ql = b[..., 0:128].reshape(*lead, 2, 2, 32)  # (half, a/b, l)
    lo = jnp.stack([ql[..., 0, :] & 0x0F, ql[..., 1, :] & 0x0F, ql[..., 0, :] >> 4, ql[..., 1, :] >> 4], axis=-2)
    qh = b[..., 128:192].reshape(*lead, 2, 1, 32)
    hi = (qh >> _shifts(0, 2, 4, 6)[:, None]) & 3  # (..., 2, 4, 32)
    q = (lo | (hi << 4)).astype(_I32) - 32
    dl = _f16(b, 208) * _i8(b[..., 192:208]).astype(_F32)
    return (dl[..., None] * q.reshape(*lead, 16, 16).astype(_F32)).reshape(*lead, QK_K)


def _f32_block(b: Array) -> Array:
    return _f32(b, 0)


def _f16_block(b: Array) -> Array:
    return _f16(b, 0)


def _bf16_block(b: Array) -> Array:
    return lax.bitcast_convert_type(_u16(b, 0).astype(jnp.uint32) << 16, _F32)[..., None]


_KERNELS: dict[GgmlDType, Callable[[Array], Array]] = {
    GgmlDType.F32: _f32_block,
    GgmlDType.F16: _f16_block,
    GgmlDType.BF16: _bf16_block,
    GgmlDType.Q4_0: _q4_0,
    GgmlDType.Q4_1: _q4_1,
    GgmlDType.Q5_0: _q5_0,
    GgmlDType.Q5_1: _q5_1,
    GgmlDType.Q8_0: _q8_0,
    GgmlDType.Q8_1: _q8_1,
    GgmlDType.Q2K: _q2_k,
    GgmlDType.Q3K: _q3_k,
    GgmlDType.Q4K: _q4_k,
    GgmlDType.Q5K: _q5_k,
    GgmlDType.Q6K: _q6_k,
    GgmlDType.Q8K: _q8_k,
}


def dequantize_rows(data: Array, dtype: GgmlDType) -> Array:
    """Raw row bytes ``(..., n_blocks * type_size)`` (uint8) -> float32 ``(..., n_blocks * block_size)``.

    Pure ``jax.numpy``: works eagerly and under ``jax.jit`` / ``vmap``.
    """
    if data.dtype != jnp.uint8:
        raise errors.UnexpectedDType("u8", str(data.dtype), f"dequantize {dtype.name}: raw block data must be bytes")
    ts, bs = dtype.type_size(), dtype.block_size()
    if data.ndim == 0 or data.shape[-1] % ts:
        raise errors.Msg(f"dequantize {dtype.name}: row of {data.shape[-1:]} bytes is not a whole number of blocks")
    lead = data.shape[:-1]
    nb = data.shape[-1] // ts
    blocks = data.reshape(*lead, nb, ts)
    out = _KERNELS[dtype](blocks)
    return out.reshape(*lead, nb * bs)


__all__ = ["dequantize_rows"]
