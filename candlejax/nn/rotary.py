"""``RotaryEmbedding``: rotary position tables plus ``rope`` application at a position offset.

requires: candlejax.nn.ops (rope, rope_i, rope_thd)
provides: ``RotaryEmbedding``, ``rotary_tables``, ``rope_inv_freq``

Two ways to hold the tables: precomputed cos/sin rows (float64 on the host, then the dtype;
Candle's ``RotaryEmbedding``) or, with ``precompute=False``, only the inverse frequencies, the
rows computed on the fly as transformers computes them (``pos * inv_freq`` in f32; bit-identical
to ``LlamaRotaryEmbedding``). Either is a pytree child (a jitted model takes it as an argument),
never trained and never saved. ``offset`` may be a Python int or a traced integer (a KV-cache
position under ``jit``), so one compiled step serves every position.

Scaling variants (``rope_scaling`` of a ``config.json``): ``default``, ``linear``, ``llama3``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from candlejax import errors
from candlejax._jax_private import read_to_host
from candlejax.dtype import DType, check_width, to_dtype
from candlejax.nn import ops
from candlejax.nn.module import Module
from candlejax.tensor._core import float_arg, int_arg, unwrap, wrap

__all__ = ["RotaryEmbedding", "rope_inv_freq", "rotary_tables"]


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _scaling_value(sc: Mapping[str, Any], kind: str, key: str, default: float | None = None) -> float:
    """A positive, finite number of a ``rope_scaling`` dict (transformers' ``_validate_*_rope_parameters``)."""
    v = sc.get(key, default)
    if v is None:
        raise errors.InvalidArgument(f"rope_scaling of type {kind!r} needs {key!r}, got {dict(sc)}")
    if not (_is_real(v) and math.isfinite(v) and v > 0):
        raise errors.InvalidArgument(f"rope_scaling {key} must be a positive number, got {v!r}")
    return float(v)


def rope_inv_freq(dim: int, base: float = 10000.0, rope_scaling: dict | None = None,
                  max_position_embeddings: int | None = None) -> np.ndarray:  # fmt: skip
    """Inverse frequencies ``(dim / 2,)`` f32, as transformers' ``ROPE_INIT_FUNCTIONS`` compute them.

    ``rope_scaling``: ``None`` / ``{"rope_type": "default"}``, ``"linear"`` (``factor``) or
    ``"llama3"`` (``factor``, ``low_freq_factor``, ``high_freq_factor``,
    ``original_max_position_embeddings``); other types raise.
    """
    if dim % 2:
        raise errors.Msg(f"rotary embedding dim must be even, got {dim}")
    if not (_is_real(base) and base > 0 and math.isfinite(base)):
        raise errors.Msg(f"rotary embedding base (rope_theta) must be a positive number, got {base!r}")
    exps = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv = (1.0 / (float(base) ** exps)).astype(np.float32)
    if rope_scaling is not None and not isinstance(rope_scaling, Mapping):
        raise errors.InvalidArgument(
            f"rope_scaling must be a dict with its rope_type and factor, got {rope_scaling!r}"
        )
    sc = rope_scaling or {}
    kind = sc.get("rope_type", sc.get("type", "default"))
    if kind in (None, "default"):
        return inv
    if kind == "linear":
        return (inv / np.float32(_scaling_value(sc, kind, "factor"))).astype(np.float32)
    if kind == "llama3":
        factor = _scaling_value(sc, kind, "factor")
        low, high = _scaling_value(sc, kind, "low_freq_factor", 1.0), _scaling_value(sc, kind, "high_freq_factor", 4.0)
        old = _scaling_value(sc, kind, "original_max_position_embeddings", max_position_embeddings or 8192)
        if not high > low:  # the smoothing divides by high - low
            raise errors.InvalidArgument(
                f"rope_scaling high_freq_factor ({high}) must be larger than low_freq_factor ({low})"
            )
        low_wavelen, high_wavelen = old / low, old / high
        wavelen = 2 * math.pi / inv
        out = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, out).astype(np.float32)
    raise errors.Msg(f"rope_scaling type {kind!r} is not supported (default, linear, llama3)")


def rotary_tables(dim: int, max_position_embeddings: int, base: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of ``t * base^(-2i/dim)``: each ``(max_pos, dim/2)``, computed in float64 on the host."""
    if dim % 2:
        raise errors.Msg(f"rotary embedding dim must be even, got {dim}")
    inv_freq = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    freqs = np.outer(np.arange(max_position_embeddings, dtype=np.float64), inv_freq)
    return np.cos(freqs), np.sin(freqs)


class RotaryEmbedding(Module):
    """Rotary position embedding (RoPE), as in Llama/GPT-NeoX (``interleaved=False``, Candle's
    ``rope`` / ``rope_thd``) or GPT-J and GGUF files (``interleaved=True``, Candle's ``rope_i``).

    ``rot = RotaryEmbedding(head_dim, max_pos, base=10000.0, dtype=DType.F32)``;
    ``q, k = rot.apply(q, k, offset)`` with q/k ``(B, H, T, D)`` (or ``(B, T, H, D)`` with
    ``layout="bthd"``). ``rope_scaling`` takes a config.json's dict; ``inv_freq`` overrides the
    frequencies (e.g. a GGUF's ``rope_freqs``); ``precompute=False`` keeps only them (see above).
    Positions ``< 0`` or ``>= max_position_embeddings`` raise (eagerly; a traced offset is clamped).
    ``offset`` must be an integer (an int or an integer scalar): floats and bools raise.
    """

    def __init__(
        self, dim: int, max_position_embeddings: int, base: float = 10000.0, dtype: Any = DType.F32,
        interleaved: bool = False, layout: str = "bhtd", rope_scaling: dict | None = None,
        inv_freq: Any = None, precompute: bool = True,
    ):  # fmt: skip
        if layout not in ("bhtd", "bthd"):
            raise errors.Msg(f"RotaryEmbedding: layout must be 'bhtd' or 'bthd', got {layout!r}")
        dt = check_width(to_dtype(dtype))
        dim = int_arg(dim, "RotaryEmbedding", "dim")
        max_position_embeddings = int_arg(max_position_embeddings, "RotaryEmbedding", "max_position_embeddings")
        base = float_arg(base, "RotaryEmbedding", "base")
        if dim < 0 or max_position_embeddings < 0 or base <= 0:  # base <= 0: NaN frequencies
            raise errors.InvalidArgument(
                f"RotaryEmbedding: dim ({dim}) and max_position_embeddings ({max_position_embeddings}) must be >= 0"
                f" and base ({base}) > 0"
            )
        self.dim = dim
        self.max_position_embeddings = max_position_embeddings
        self.interleaved = bool(interleaved)
        self.layout = layout
        if inv_freq is None and precompute and not rope_scaling:
            try:
                cos, sin = rotary_tables(dim, max_position_embeddings, base)
            except MemoryError as e:
                raise errors.out_of_memory("RotaryEmbedding", e) from e
        else:
            inv = rope_inv_freq(dim, base, rope_scaling, max_position_embeddings) if inv_freq is None else inv_freq
            given = unwrap(inv)
            inv = np.asarray(given, np.float32)
            if inv.shape != (self.dim // 2,):
                raise errors.UnexpectedShape("RotaryEmbedding inv_freq", (self.dim // 2,), inv.shape)
            if not precompute:  # a device array passed in stays where it is
                keep = isinstance(given, jax.Array) and given.dtype == jnp.float32
                self.inv_freq = wrap(given if keep else jnp.asarray(inv))
                self.cos = self.sin = None
                return
            freqs = np.outer(np.arange(max_position_embeddings, dtype=np.float32), inv)
            cos, sin = np.cos(freqs), np.sin(freqs)
        self.inv_freq = None
        self.cos = wrap(jnp.asarray(cos.astype(dt.np)))
        self.sin = wrap(jnp.asarray(sin.astype(dt.np)))

    def _check(self, seq_len: int, offset: Any) -> None:
        a = unwrap(offset)
        dt = getattr(a, "dtype", None)
        if isinstance(a, (bool, np.bool_)) or not (isinstance(a, (int, np.integer)) or (
                dt is not None and jnp.issubdtype(dt, jnp.integer) and np.size(a) == 1)):  # fmt: skip
            what = f"{a!r}" if dt is None else f"an array of dtype {dt} and shape {tuple(np.shape(a))}"
            raise errors.DimType(f"RotaryEmbedding: offset must be an integer position (an int or an integer"
                                 f" scalar), got {what}")  # fmt: skip
        if not (isinstance(offset, (int, np.integer)) or (hasattr(offset, "shape") and not _traced(offset))):
            if seq_len > self.max_position_embeddings:  # a shape: checked with a traced offset too
                raise errors.Msg(f"RotaryEmbedding: {seq_len} positions exceed max_position_embeddings"
                                 f" {self.max_position_embeddings}")  # fmt: skip
            return
        off = int(read_to_host(unwrap(offset)))  # an explicit read
        if off < 0:
            raise errors.Msg(f"RotaryEmbedding: negative position {off}")
        if off + seq_len > self.max_position_embeddings:
            raise errors.Msg(
                f"RotaryEmbedding: positions {off}..{off + seq_len - 1} exceed max_position_embeddings"
                f" {self.max_position_embeddings}"
            )

    def tables(self, seq_len: int, offset: Any = 0) -> tuple[Any, Any]:
        """cos, sin rows ``offset .. offset + seq_len``: each ``(seq_len, dim/2)``."""
        self._check(seq_len, offset)
        if self.inv_freq is not None:  # transformers' way: positions times inv_freq, in f32
            off = jnp.asarray(unwrap(offset), jnp.int32).reshape(())
            pos = (off + jnp.arange(seq_len, dtype=jnp.int32)).astype(jnp.float32)
            freqs = pos[:, None] * unwrap(self.inv_freq)[None, :]
            return wrap(jnp.cos(freqs)), wrap(jnp.sin(freqs))
        if isinstance(offset, int):
            return wrap(self.cos._a[offset : offset + seq_len]), wrap(self.sin._a[offset : offset + seq_len])
        off = jnp.asarray(unwrap(offset), jnp.int32).reshape(())
        half = self.cos.shape[1]
        c = lax.dynamic_slice(self.cos._a, (off, 0), (seq_len, half))
        s = lax.dynamic_slice(self.sin._a, (off, 0), (seq_len, half))
        return wrap(c), wrap(s)

    def apply_one(self, x: Any, offset: Any = 0) -> Any:
        """Rotate one tensor (queries or keys) at positions ``offset ..``: same shape out."""
        xa = unwrap(x) if hasattr(unwrap(x), "shape") else jnp.asarray(x)
        t = xa.shape[2] if self.layout == "bhtd" else xa.shape[1]
        cos, sin = self.tables(t, offset)
        return self.apply_tables(xa, cos, sin)

    def apply_tables(self, x: Any, cos: Any, sin: Any) -> Any:
        """Rotate ``x`` with rows from :meth:`tables` (compute them once for q and k)."""
        if self.layout == "bthd":
            if self.interleaved:
                return ops._rope_call("rope-i-thd", x, cos, sin, "bthd", True)
            return ops.rope_thd(x, cos, sin)
        return (ops.rope_i if self.interleaved else ops.rope)(x, cos, sin)

    def apply(self, q: Any, k: Any, offset: Any = 0) -> tuple[Any, Any]:
        """Rotate q and k for positions ``offset ..``."""
        qa = unwrap(q)
        t = qa.shape[2] if self.layout == "bhtd" else qa.shape[1]
        cos, sin = self.tables(t, offset)
        return self.apply_tables(qa, cos, sin), self.apply_tables(unwrap(k), cos, sin)

    def forward(self, qk: Any) -> Any:
        """``(q, k[, offset])`` in, the rotated ``(q, k)`` out (see ``apply``)."""
        q, k, *rest = qk
        return self.apply(q, k, rest[0] if rest else 0)


def _traced(x: Any) -> bool:
    return isinstance(unwrap(x), jax.core.Tracer)
