"""Shared pieces of ``candlejax.nn.attention``: ``AttnMask``, ALiBi slopes, argument checks and the one
dense attention kernel (on top of :func:`candlejax.nn.ops.sdpa`) that every entry point lowers to.

requires: candlejax.nn.ops (sdpa), candlejax._dispatch.op
provides: ``AttnMask``, ``alibi_slopes``, ``attend_bshd``, checks used by the cpu_flash / varlen modules
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax._dispatch import op
from candlejax._jax_private import read_to_host
from candlejax.errors import fmt_shape
from candlejax.nn import ops
from candlejax.nn.module import as_array
from candlejax.tensor._core import wrap

__all__ = ["AttnMask", "alibi_slopes", "attend_bshd"]


class AttnMask:
    """``candle_nn::attention::AttnMask``: ``AttnMask.None_`` (Rust's ``AttnMask::None``),
    ``AttnMask.Causal(kv_offset)`` or ``AttnMask.Mask(tensor)``.

    ``Causal(kv_offset)``: query ``i`` sees key ``j`` iff ``j <= i + kv_offset`` (``kv_offset`` is the
    number of cached keys before the first query, ``s_kv - s_q`` with a KV cache).
    """

    __slots__ = ("_kv_offset", "kind", "tensor")

    None_: AttnMask  # set below: the one no-mask value

    def __init__(self, kind: str, kv_offset: int = 0, tensor: Any = None):
        if kind not in ("None", "Causal", "Mask"):
            raise errors.Msg(f"AttnMask: unknown variant {kind!r} (None, Causal, Mask)")
        self.kind = kind
        self._kv_offset = int(kv_offset)
        self.tensor = tensor

    # --- Candle's constructors ----------------------------------------------------------------
    @staticmethod
    def Causal(kv_offset: int = 0) -> AttnMask:  # noqa: N802 (Rust's variant name)
        """``AttnMask::Causal { kv_offset }``."""
        k = int(kv_offset)
        if k < 0:
            raise errors.Msg(f"AttnMask::Causal: kv_offset must be >= 0 (a usize), got {kv_offset}")
        return AttnMask("Causal", k)

    @staticmethod
    def Mask(tensor: Any) -> AttnMask:  # noqa: N802 (Rust's variant name)
        """``AttnMask::Mask(tensor)``: an additive ``(S_q, S_kv)`` mask (``-inf`` hides a key)."""
        if tensor is None:
            raise errors.Msg("AttnMask::Mask needs a tensor (use AttnMask.None_ for no mask)")
        return AttnMask("Mask", 0, tensor)

    @staticmethod
    def causal() -> AttnMask:
        """``AttnMask::causal()``: ``Causal { kv_offset: 0 }``."""
        return AttnMask.Causal(0)

    @staticmethod
    def causal_with_offset(kv_offset: int) -> AttnMask:
        """``AttnMask::causal_with_offset(kv_offset)``."""
        return AttnMask.Causal(kv_offset)

    @staticmethod
    def default() -> AttnMask:
        """``AttnMask::default()``: ``AttnMask::None``."""
        return AttnMask.None_

    def is_causal(self) -> bool:
        return self.kind == "Causal"

    def kv_offset(self) -> int:
        """The causal offset; 0 for the other variants."""
        return self._kv_offset if self.kind == "Causal" else 0

    def is_none(self) -> bool:
        return self.kind == "None"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AttnMask):
            return NotImplemented
        if self.kind == "Mask" or other.kind == "Mask":
            return self is other
        return (self.kind, self._kv_offset) == (other.kind, other._kv_offset)

    def __hash__(self) -> int:
        return hash((self.kind, self._kv_offset, id(self.tensor) if self.kind == "Mask" else 0))

    def __repr__(self) -> str:
        if self.kind == "None":
            return "AttnMask.None_"
        if self.kind == "Causal":
            return f"AttnMask.Causal(kv_offset={self._kv_offset})"
        shape = getattr(as_array(self.tensor), "shape", ())
        return f"AttnMask.Mask({fmt_shape(shape)})"


AttnMask.None_ = AttnMask("None")


def _mask_flatten(m: AttnMask) -> tuple[tuple[Any, ...], tuple[str, int]]:
    return ((m.tensor,) if m.kind == "Mask" else ()), (m.kind, m._kv_offset)


def _mask_unflatten(aux: tuple[str, int], children: Any) -> AttnMask:
    kind, kv_offset = aux
    if kind == "None":
        return AttnMask.None_
    return AttnMask(kind, kv_offset, children[0] if kind == "Mask" else None)


# a pytree (the Mask tensor is its one leaf), so an AttnMask can be passed into jax.jit / vmap
jax.tree_util.register_pytree_node(AttnMask, _mask_flatten, _mask_unflatten)


def alibi_slopes(max_bias: float, n_heads: int) -> np.ndarray:
    """Per-head ALiBi slopes ``2^(-max_bias * (h + 1) / n2)``, ``n2`` the power of two at or above
    ``n_heads`` (the formula of Candle's CPU flash-attention kernels), as f32."""
    n2 = 1 << max(0, math.ceil(math.log2(n_heads))) if n_heads > 0 else 1
    h = np.arange(1, n_heads + 1, dtype=np.float32)
    return np.power(np.float32(2.0), -np.float32(max_bias) * h / np.float32(n2)).astype(np.float32)


def softcap_value(softcap: float | None) -> float:
    """Candle's ``Option<f32>`` softcap (``None`` or 0: off) as :func:`ops.sdpa`'s ``softcapping``
    argument, where 1.0 means off: a cap of exactly 1.0 becomes the next double above 1.0, which is
    1.0 again once the scores (f32) are divided by it, so ``tanh(s)`` is computed as asked."""
    if softcap is None or float(softcap) == 0.0:
        return 1.0
    c = float(softcap)
    return math.nextafter(1.0, 2.0) if c == 1.0 else c


def check_qkv(name: str, q: Any, k: Any, v: Any, rank: int, what: str) -> None:
    """Rank, float dtype, equal dtypes, equal head dims and whole groups of query heads."""
    for n, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim != rank:
            raise errors.Msg(f"{name}: {n} must be {what}, got {fmt_shape(t.shape)}")
        if not jnp.issubdtype(t.dtype, jnp.floating):
            raise errors.Msg(f"{name}: {n} must be a float tensor, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise errors.Msg(f"{name}: q/k/v must have the same dtype (got q={q.dtype}, k={k.dtype}, v={v.dtype})")
    if not (q.shape[-1] == k.shape[-1] == v.shape[-1]):
        raise errors.Msg(f"{name}: head dim mismatch: q {fmt_shape(q.shape)}, k {fmt_shape(k.shape)}, "
                         f"v {fmt_shape(v.shape)}")  # fmt: skip
    hq, hk, hv = q.shape[-2], k.shape[-2], v.shape[-2]
    if hk == 0 or hv == 0 or hq % hk or hq % hv:
        raise errors.Msg(f"{name}: invalid GQA: Hq={hq} must be a multiple of Hk={hk} and Hv={hv}")
    if k.shape[:-2] != v.shape[:-2]:
        raise errors.Msg(f"{name}: k {fmt_shape(k.shape)} and v {fmt_shape(v.shape)} differ in length")


def _repeat_heads(x: Any, hq: int) -> Any:
    """(..., S, H, D) -> (..., S, hq, D), each head repeated in place (GQA order: head h uses h // g)."""
    h = x.shape[-2]
    if h == hq:
        return x
    g = hq // h
    y = jnp.broadcast_to(x[..., :, None, :], (*x.shape[:-1], g, x.shape[-1]))
    return y.reshape(*x.shape[:-2], hq, x.shape[-1])


def attend_bshd(q: Any, k: Any, v: Any, bias: Any, offset: Any, *, scale: float, softcap: float | None,
                causal: bool) -> Any:  # fmt: skip
    """``softmax(q k^T * scale [softcapped] + bias) v`` over ``(B, S, H, D)`` arrays, in f32, returned in
    q's dtype and layout. ``bias`` (broadcastable to ``(B, H, S, Skv)``, may hold ``-inf``) or None;
    ``causal`` keeps key ``j`` for query ``i`` iff ``j <= i + offset``. A query row with no visible key
    gives zeros (as Candle's CPU kernels), not NaN."""
    return _attend(q, k, v, bias, offset, scale=float(scale), softcap=softcap_value(softcap), causal=bool(causal))


@op(static=("scale", "softcap", "causal"))
def _attend(q: Any, k: Any, v: Any, bias: Any, offset: Any, *, scale: float, softcap: float, causal: bool) -> Any:
    hq = q.shape[2]
    if k.shape[2] != v.shape[2]:  # sdpa takes one kv head count: repeat both to the query heads
        k, v = _repeat_heads(k, hq), _repeat_heads(v, hq)
    dead = None
    mask = None
    if bias is not None:
        bias = bias.astype(jnp.float32)
        bias = bias.reshape((1,) * (4 - bias.ndim) + tuple(bias.shape))
        dead = jnp.all(bias == -jnp.inf, axis=-1, keepdims=True)  # rows with no visible key
        mask = jnp.where(dead, jnp.float32(0.0), bias)
    off = None if offset is None else wrap(jnp.asarray(offset, jnp.int32))
    out = ops.sdpa(wrap(q), wrap(k), wrap(v), None if mask is None else wrap(mask), causal, scale, softcap,
                   layout="bshd", offset=off)._a  # fmt: skip
    if dead is not None:
        rows = jnp.swapaxes(dead[..., 0], 1, 2)[..., None]  # (B or 1, S, H or 1, 1)
        out = jnp.where(rows, jnp.zeros((), out.dtype), out)
    return out


def concrete_lengths(name: str, t: Any, arg: str) -> np.ndarray | None:
    """A 1-D integer lengths tensor as host int64 values, or None when it is traced."""
    a = as_array(t)
    if a.ndim != 1:
        raise errors.Msg(f"{name}: {arg} must be 1-D (batch,), got {fmt_shape(a.shape)}")
    if not jnp.issubdtype(a.dtype, jnp.integer):
        raise errors.Msg(f"{name}: {arg} must hold u32 sequence lengths, got dtype {a.dtype}")
    if isinstance(a, jax.core.Tracer):
        return None
    vals = np.asarray(read_to_host(a)).astype(np.int64)
    if (vals < 0).any():
        raise errors.Msg(f"{name}: {arg} holds a negative length: {vals.tolist()}")
    return vals


def check_window(name: str, window_left: Any, window_right: Any,
                 names: tuple[str, str] = ("window_size_left", "window_size_right")) -> tuple[int | None, int | None]:
    """Candle's ``Option<usize>`` window sizes (errors name the arguments ``names``); a right window
    needs a left one."""
    out = []
    for n, w in zip(names, (window_left, window_right), strict=True):
        if w is None:
            out.append(None)
            continue
        if isinstance(w, (bool, np.bool_)) or not isinstance(w, (int, np.integer)) or int(w) < 0:
            raise errors.InvalidArgument(f"{name}: {n} must be None or an int >= 0, got {w!r}")
        out.append(int(w))
    if out[0] is None and out[1] is not None:
        raise errors.Msg(f"{name}: window_right specified without window_left")
    return out[0], out[1]


def keep_mask(i_k: Any, j: Any, lk: Any, causal: bool, wl: int | None, wr: int | None) -> Any:
    """Which keys each query keeps, for query positions ``i_k`` (already shifted by ``lk - lq``) against
    key positions ``j``: inside the sequence, causal, and inside the sliding window (a left window
    alone is also causal)."""
    keep = j < lk
    if causal:
        keep = keep & (j <= i_k)
    if wl is not None and wr is not None:
        keep = keep & (i_k - j <= wl) & (j - i_k <= wr)
    elif wl is not None:
        keep = keep & (j <= i_k) & (i_k - j <= wl)
    return keep


def alibi_bias(slopes: Any, i_k: Any, j: Any, causal: bool) -> Any:
    """``-slope * distance``: ``max(i_k - j, 0)`` when causal, ``|j - i_k|`` otherwise (Candle's varlen rule).

    ``slopes`` (H,), ``i_k`` / ``j`` broadcastable position grids (..., S, Skv) -> (..., H, S, Skv)."""
    d = jnp.maximum(i_k - j, 0) if causal else jnp.abs(j - i_k)
    dt = jnp.promote_types(slopes.dtype, jnp.float32)  # f64 slopes (f64 attention) stay f64
    return -slopes.astype(dt)[:, None, None] * d.astype(dt)[..., None, :, :]
