"""``RotaryEmbedding``: precomputed cos/sin tables plus ``rope`` application at a position offset.

requires: candlejax.nn.ops (rope, rope_i, rope_thd)
provides: ``RotaryEmbedding``, ``rotary_tables``

The tables are plain Tensors: pytree children (so a jitted model takes them as arguments), never
trained and never saved. ``offset`` may be a Python int or a traced integer (a KV-cache position
under ``jit``): the rows are taken with ``lax.dynamic_slice``, so one compiled step serves every
position.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

from candlejax import errors
from candlejax.dtype import DType, check_width, to_dtype
from candlejax.nn import ops
from candlejax.nn.module import Module
from candlejax.tensor._core import TensorBase, wrap

__all__ = ["RotaryEmbedding", "rotary_tables"]


def rotary_tables(dim: int, max_position_embeddings: int, base: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of ``t * base^(-2i/dim)``: each ``(max_pos, dim/2)``, computed in float64 on the host."""
    if dim % 2:
        raise errors.Msg(f"rotary embedding dim must be even, got {dim}")
    inv_freq = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    freqs = np.outer(np.arange(max_position_embeddings, dtype=np.float64), inv_freq)
    return np.cos(freqs), np.sin(freqs)


class RotaryEmbedding(Module):
    """Rotary position embedding (RoPE), as in Llama/GPT-NeoX (``interleaved=False``) or GPT-J
    (``interleaved=True``).

    ``rot = RotaryEmbedding(head_dim, max_pos, base=10000.0, dtype=DType.F32)``;
    ``q, k = rot.apply(q, k, offset)`` with q/k ``(B, H, T, D)`` (or ``(B, T, H, D)`` with
    ``layout="bthd"``).
    """

    def __init__(
        self, dim: int, max_position_embeddings: int, base: float = 10000.0, dtype: Any = DType.F32,
        interleaved: bool = False, layout: str = "bhtd",
    ):  # fmt: skip
        if layout not in ("bhtd", "bthd"):
            raise errors.Msg(f"RotaryEmbedding: layout must be 'bhtd' or 'bthd', got {layout!r}")
        if interleaved and layout == "bthd":
            raise errors.Msg("RotaryEmbedding: interleaved rope is only available for the (B, H, T, D) layout")
        dt = check_width(to_dtype(dtype))
        cos, sin = rotary_tables(dim, max_position_embeddings, base)
        self.cos = wrap(jnp.asarray(cos.astype(dt.np)))
        self.sin = wrap(jnp.asarray(sin.astype(dt.np)))
        self.dim = int(dim)
        self.interleaved = bool(interleaved)
        self.layout = layout

    def tables(self, seq_len: int, offset: Any = 0) -> tuple[Any, Any]:
        """cos, sin rows ``offset .. offset + seq_len``: each ``(seq_len, dim/2)``."""
        if isinstance(offset, int):
            max_pos = self.cos.shape[0]
            if offset < 0 or offset + seq_len > max_pos:
                raise errors.Msg(
                    f"RotaryEmbedding: positions {offset}..{offset + seq_len} exceed max_position_embeddings {max_pos}"
                )
            return wrap(self.cos._a[offset : offset + seq_len]), wrap(self.sin._a[offset : offset + seq_len])
        off = offset._a if isinstance(offset, TensorBase) else offset
        off = jnp.asarray(off, jnp.int32).reshape(())
        half = self.cos.shape[1]
        c = lax.dynamic_slice(self.cos._a, (off, 0), (seq_len, half))
        s = lax.dynamic_slice(self.sin._a, (off, 0), (seq_len, half))
        return wrap(c), wrap(s)

    def apply_one(self, x: Any, offset: Any = 0) -> Any:
        xa = x._a if isinstance(x, TensorBase) else jnp.asarray(x)
        t = xa.shape[2] if self.layout == "bhtd" else xa.shape[1]
        cos, sin = self.tables(t, offset)
        if self.layout == "bthd":
            return ops.rope_thd(xa, cos, sin)
        return (ops.rope_i if self.interleaved else ops.rope)(xa, cos, sin)

    def apply(self, q: Any, k: Any, offset: Any = 0) -> tuple[Any, Any]:
        """Rotate q and k for positions ``offset ..``."""
        return self.apply_one(q, offset), self.apply_one(k, offset)

    def forward(self, qk: Any) -> Any:
        q, k, *rest = qk
        return self.apply(q, k, rest[0] if rest else 0)
