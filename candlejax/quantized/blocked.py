"""A matmul-friendly layout for the 32-value block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).

Every value of these types is ``scale * q + offset`` with one f16 ``scale`` / ``offset`` per block of
32 and a small integer ``q``. :class:`BlockedWeight` stores ``q`` unpacked, one byte per value
(u8 for Q4_1 / Q5_1; i8 for Q8_0, and for Q4_0 / Q5_0 centred as ggml's ``(q - 8) * d`` with no
offset, since ``-8 d`` can overflow f16), next to the per-block scales and offsets in f16 (exact:
they are f16 in the file). Expanding it is then one multiply-add per value that XLA fuses into the
dot's operand, so a quantised matmul runs at dense speed while the weight takes 1.06-1.13 bytes per
value instead of 4 (the packed GGML bytes take 0.56-1.06, but unpacking nibbles inside the step
defeats that fusion and costs 6-14x the dense matmul on the CPU).

The values are bit-identical to :func:`candlejax.quantized.dequantize_np`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax.quantized.ggml_types import GgmlDType

_BLOCK = 32

#: dtype -> (bytes per block, byte offset of the quant data)
_LAYOUT = {
    GgmlDType.Q4_0: 18,
    GgmlDType.Q4_1: 20,
    GgmlDType.Q5_0: 22,
    GgmlDType.Q5_1: 24,
    GgmlDType.Q8_0: 34,
}

SUPPORTED = frozenset(_LAYOUT)


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(blocks[..., at : at + 2]).view("<f2")[..., 0]


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous host array whose data starts on a 64-byte boundary, which
    :func:`place` hands to the CPU runtime without copying."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    buf = np.empty(n + 64, np.uint8)
    at = (-buf.ctypes.data) % 64
    return buf[at : at + n].view(dt).reshape(shape)


def place(a: Any, device: Any = None) -> Any:
    """A host array as a device array. On the CPU a 64-byte-aligned contiguous array is shared with
    the runtime through DLPack (no copy: the array must not be written afterwards); otherwise
    ``jax.device_put`` copies it."""
    if not isinstance(a, np.ndarray):
        return a
    dev = device if device is not None else jax.devices("cpu")[0]
    if dev.platform == "cpu" and a.flags.c_contiguous and a.ctypes.data % 64 == 0 and a.size:
        try:
            out = jax.dlpack.from_dlpack(a)
            if out.devices() == {dev}:
                return out
        except Exception:  # an unsupported dtype or runtime: copy instead
            pass
    return jax.device_put(a, dev)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    out = aligned_empty((*qs.shape[:-1], 2 * qs.shape[-1]), np.uint8)
    h = qs.shape[-1]
    np.bitwise_and(qs, 0x0F, out=out[..., :h])
    np.right_shift(qs, 4, out=out[..., h:])
    return out


def _high_bits(qh: np.ndarray) -> np.ndarray:
    bits = (qh[..., :, None] >> np.arange(8, dtype=np.uint8)) & 1
    return bits.reshape(*qh.shape[:-1], 32).astype(np.uint8)


def unpack(
    raw: np.ndarray, dtype: GgmlDType, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Raw block bytes of a ``shape`` tensor -> ``(q, scale, offset)`` on the host.

    ``q``: ``shape`` (u8 for Q4_1 / Q5_1; i8 for Q8_0 and for Q4_0 / Q5_0, centred: ``q - 8`` / ``q - 16``);
    ``scale`` / ``offset``: ``shape[:-1] + (shape[-1] // 32,)`` f16 (``offset`` is ``None`` for Q4_0, Q5_0
    and Q8_0). Value = ``scale * q + offset`` per block.
    """
    size = _LAYOUT.get(dtype)
    if size is None:
        names = sorted(d.name for d in SUPPORTED)
        raise errors.UnsupportedDTypeForOp(dtype.name, "blocked layout", f"supported: {names}")
    *lead, n = shape
    if n % _BLOCK:
        raise errors.Msg(f"blocked layout: last dim {n} is not a multiple of {_BLOCK}")
    b = np.asarray(raw, np.uint8).reshape(*lead, n // _BLOCK, size)
    d = _f16(b, 0)
    if dtype is GgmlDType.Q8_0:
        q = aligned_empty((*b.shape[:-1], 32), np.int8)
        q[...] = b[..., 2:34].view(np.int8)
        return q.reshape(shape), d, None
    if dtype in (GgmlDType.Q4_0, GgmlDType.Q5_0):  # (q - 8) * d, (q - 16) * d
        q = _nibbles(b[..., 2:18] if dtype is GgmlDType.Q4_0 else b[..., 6:22])
        if dtype is GgmlDType.Q5_0:
            q |= _high_bits(b[..., 2:6]) << 4
        q -= np.uint8(8 if dtype is GgmlDType.Q4_0 else 16)  # wraps to the i8 bit pattern
        return q.view(np.int8).reshape(shape), d, None
    if dtype is GgmlDType.Q4_1:
        q, offset = _nibbles(b[..., 4:20]), _f16(b, 2)
    else:  # Q5_1
        q, offset = _nibbles(b[..., 8:24]), _f16(b, 2)
        q |= _high_bits(b[..., 4:8]) << 4
    return q.reshape(shape), d, offset


def expand(q: Any, scale: Any, offset: Any, out_dtype: Any = jnp.float32) -> Any:
    """``scale * q + offset`` per block of 32, jit-able; fuses into a consumer dot on XLA."""
    *lead, n = q.shape
    nb = n // _BLOCK
    w = q.astype(jnp.float32).reshape(*lead, nb, _BLOCK) * scale.astype(jnp.float32)[..., None]
    if offset is not None:
        w = w + offset.astype(jnp.float32)[..., None]
    return w.reshape(*lead, n).astype(out_dtype)


class BlockedWeight:
    """A quantised ``(out, in)`` weight as unpacked ``q`` + per-block ``scale`` / ``offset``. A pytree."""

    __slots__ = ("ggml_dtype", "offset", "q", "scale")

    def __init__(self, q: Any, scale: Any, offset: Any, ggml_dtype: GgmlDType):
        self.q, self.scale, self.offset, self.ggml_dtype = q, scale, offset, ggml_dtype

    @staticmethod
    def from_raw(raw: Any, dtype: GgmlDType, shape: tuple[int, ...], device: Any = None) -> BlockedWeight:
        """Unpack raw GGML blocks of ``dtype`` and ``shape`` into quants, scales and offsets on ``device``."""
        q, s, o = unpack(np.asarray(raw), dtype, tuple(shape))
        put = (lambda a: jax.device_put(a, device.jax_device)) if device is not None else jnp.asarray
        return BlockedWeight(put(q), put(s), None if o is None else put(o), dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        """The weight's shape (that of ``q``, one quant per element)."""
        return tuple(self.q.shape)

    def storage_size_in_bytes(self) -> int:
        """The bytes the unpacked quants, scales and offsets take."""
        return int(sum(a.size * a.dtype.itemsize for a in (self.q, self.scale, self.offset) if a is not None))

    def dequantize(self, out_dtype: Any = jnp.float32) -> Any:
        """The weight as a dense array of ``out_dtype``."""
        return expand(self.q, self.scale, self.offset, out_dtype)

    def rows(self, ids: Any, out_dtype: Any = jnp.float32) -> Any:
        """Dequantised rows ``ids`` (an embedding lookup): ``ids.shape + (in,)``."""
        o = None if self.offset is None else jnp.take(self.offset, ids, axis=0)
        return expand(jnp.take(self.q, ids, axis=0), jnp.take(self.scale, ids, axis=0), o, out_dtype)

    def __repr__(self) -> str:
        return f"BlockedWeight({self.ggml_dtype.name}, shape={list(self.shape)})"


jax.tree_util.register_pytree_node(
    BlockedWeight,
    lambda w: ((w.q, w.scale, w.offset), w.ggml_dtype),
    lambda dt, ch: BlockedWeight(ch[0], ch[1], ch[2], dt),
)
