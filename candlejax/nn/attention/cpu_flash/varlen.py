"""``candle_nn::attention::cpu_flash::varlen``: attention over packed variable-length sequences.

requires: candlejax.nn.attention._common
provides: ``flash_attn_varlen_cpu``
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from candlejax import errors
from candlejax._dispatch import op
from candlejax.nn.attention._common import (
    alibi_bias,
    attend_bshd,
    check_qkv,
    check_window,
    concrete_lengths,
    keep_mask,
)
from candlejax.nn.module import as_array
from candlejax.tensor._core import wrap

__all__ = ["flash_attn_varlen_cpu"]

_NAME = "flash_attn_varlen_cpu"


def flash_attn_varlen_cpu(q: Any, k: Any, v: Any, alibi_slopes: Any, seqlens_q: Any, seqlens_k: Any,
                          max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float, causal: bool,
                          window_left: int | None = None, window_right: int | None = None, *,
                          window_size_left: int | None = None,
                          window_size_right: int | None = None) -> Any:  # fmt: skip
    """``flash_attn_varlen_cpu``: q ``(total_q, Hq, D)``, k/v ``(total_k, Hkv, D)`` packed back to back;
    ``seqlens_q`` / ``seqlens_k`` ``(B,)`` hold each sequence's length (not cumulative). Returns
    ``(total_q, Hq, D)`` in q's dtype (f32 or f16).

    In sequence ``b`` query ``i`` stands at key position ``i_k = i + lk - lq`` (aligned at the end).
    ``causal`` keeps keys ``j <= i_k`` (and needs ``lk >= lq``); ``window_left`` / ``window_right``
    (Candle's names here; ``window_size_left`` / ``window_size_right``, the names of
    ``flash_attn_varlen_unfused``, are also accepted as keywords) keep
    ``i_k - left <= j <= i_k + right`` (a left window alone also keeps ``j <= i_k``). ``alibi_slopes``
    ``(Hq,)`` adds ``-slope * max(i_k - j, 0)`` when causal, ``-slope * |j - i_k|`` otherwise.
    A query that sees no key gives zeros.

    ``max_seqlen_q`` / ``max_seqlen_k`` are not read when the lengths are concrete (eager, or constants
    under ``jax.jit``). With traced lengths they bound them (as flash-attn's CUDA kernel requires); an
    output that cannot be right (a length above its bound, lengths that do not add up to the totals, or
    ``lk < lq`` when causal) is all NaN, since no error can be raised inside a trace.
    """
    qa, ka, va = as_array(q), as_array(k), as_array(v)
    check_qkv(_NAME, qa, ka, va, 3, "(total, heads, head_dim)")
    if qa.dtype not in (jnp.float32, jnp.float16):
        raise errors.Msg(f"{_NAME} supports f32 or f16 only, got {qa.dtype}")
    for cj_name, alias, a, b in (("window_left", "window_size_left", window_left, window_size_left),
                                 ("window_right", "window_size_right", window_right, window_size_right)):
        if a is not None and b is not None:
            raise errors.InvalidArgument(f"{_NAME}: pass {cj_name} or {alias}, not both")
    wl, wr = check_window(_NAME, window_size_left if window_left is None else window_left,
                          window_size_right if window_right is None else window_right,
                          ("window_left", "window_right"))  # fmt: skip
    total_q, hq, d = qa.shape
    total_k = ka.shape[0]
    slopes = None
    if alibi_slopes is not None:
        slopes = as_array(alibi_slopes)
        if slopes.ndim != 1 or slopes.shape[0] != hq:
            raise errors.Msg(f"alibi_slopes len {slopes.shape[0] if slopes.ndim == 1 else slopes.shape} != Hq {hq}")
        slopes = slopes.astype(jnp.float32)
    lq_host = concrete_lengths(_NAME, seqlens_q, "seqlens_q")
    lk_host = concrete_lengths(_NAME, seqlens_k, "seqlens_k")
    lq, lk = as_array(seqlens_q), as_array(seqlens_k)
    if lq.shape[0] != lk.shape[0]:
        raise errors.Msg("seqlens_q and seqlens_k batch mismatch")
    traced = lq_host is None or lk_host is None
    if not traced:
        if causal:
            for i, (a, b) in enumerate(zip(lq_host, lk_host, strict=True)):
                if b < a:
                    raise errors.Msg(f"causal requires lk>=lq, got lk={b} lq={a} at batch {i}")
        if int(lq_host.sum()) != total_q or int(lk_host.sum()) != total_k:
            sq, sk = int(lq_host.sum()), int(lk_host.sum())
            raise errors.Msg(f"total_q/total_k mismatch with seqlens (q: {total_q} rows, lengths add up to {sq};"
                             f" k: {total_k} rows, lengths add up to {sk})")  # fmt: skip
        max_q = max(1, int(lq_host.max(initial=0)))
        max_k = max(1, int(lk_host.max(initial=0)))
    else:
        for n, m in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
            if int(m) != m or int(m) < 0:
                raise errors.Msg(f"{_NAME}: {n} must be an int >= 0, got {m!r}")
        max_q, max_k = max(1, int(max_seqlen_q)), max(1, int(max_seqlen_k))
    if lq.shape[0] == 0 or total_q == 0 or total_k == 0:  # nothing to attend to: zeros (or no rows)
        return wrap(jnp.zeros((total_q, hq, d), qa.dtype))
    out = _varlen(qa, ka, va, slopes, lq.astype(jnp.int32), lk.astype(jnp.int32), max_q=max_q, max_k=max_k,
                  scale=float(softmax_scale), causal=bool(causal), wl=wl, wr=wr, check=traced)  # fmt: skip
    return wrap(out)


@op(static=("max_q", "max_k", "scale", "causal", "wl", "wr", "check"))
def _varlen(q: Any, k: Any, v: Any, slopes: Any, lq: Any, lk: Any, *, max_q: int, max_k: int, scale: float,
            causal: bool, wl: int | None, wr: int | None, check: bool) -> Any:  # fmt: skip
    """Gather the packed rows into ``(B, max_q, H, D)`` / ``(B, max_k, Hkv, D)``, attend with a
    per-sequence bias, and gather the result back into the packed rows."""
    total_q, total_k = q.shape[0], k.shape[0]
    zero = jnp.zeros((1,), jnp.int32)
    cu_q = jnp.concatenate([zero, jnp.cumsum(lq)])
    cu_k = jnp.concatenate([zero, jnp.cumsum(lk)])
    t = jnp.arange(max_q, dtype=jnp.int32)
    jj = jnp.arange(max_k, dtype=jnp.int32)
    q_pad = q[jnp.clip(cu_q[:-1, None] + t[None], 0, total_q - 1)]
    k_idx = jnp.clip(cu_k[:-1, None] + jj[None], 0, total_k - 1)
    k_pad, v_pad = k[k_idx], v[k_idx]
    i_k = t[None, :, None] + (lk - lq)[:, None, None]  # (B, max_q, 1): each query's key position
    j = jj[None, None, :]
    keep = keep_mask(i_k, j, lk[:, None, None], causal, wl, wr)  # (B, max_q, max_k)
    bias = jnp.where(keep, jnp.float32(0.0), -jnp.inf)[:, None]
    if slopes is not None:
        bias = bias + alibi_bias(slopes, i_k, j, causal)  # (B, H, max_q, max_k)
    out_pad = attend_bshd(q_pad, k_pad, v_pad, bias, None, scale=scale, softcap=None, causal=False)
    rows = jnp.arange(total_q, dtype=jnp.int32)
    b_of = jnp.clip(jnp.searchsorted(cu_q[1:], rows, side="right"), 0, lq.shape[0] - 1)
    t_of = jnp.clip(rows - cu_q[b_of], 0, max_q - 1)
    out = out_pad[b_of, t_of]
    if check:
        bad = (jnp.any(lq > max_q) | jnp.any(lk > max_k) | (jnp.sum(lq) != total_q) | (jnp.sum(lk) != total_k)
               | (causal & jnp.any(lk < lq)))  # fmt: skip
        out = jnp.where(bad, jnp.asarray(jnp.nan, out.dtype), out)
    return out
