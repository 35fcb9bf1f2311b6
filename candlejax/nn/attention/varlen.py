"""``candle_nn::attention::varlen``: unfused attention over packed variable-length sequences (a
per-sequence matmul + softmax reference for :func:`cpu_flash.varlen.flash_attn_varlen_cpu`).

requires: candlejax.nn.attention._common
provides: ``flash_attn_varlen_unfused``
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax._dispatch import op
from candlejax._precision import f32_precision
from candlejax.nn.attention._common import _repeat_heads, alibi_bias, check_qkv, check_window, concrete_lengths
from candlejax.nn.module import as_array
from candlejax.tensor._core import wrap

__all__ = ["flash_attn_varlen_unfused"]

_NAME = "flash_attn_varlen_unfused"


def flash_attn_varlen_unfused(q: Any, k: Any, v: Any, alibi_slopes: Any, seqlens_q: Any, seqlens_k: Any,
                              max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float, causal: bool,
                              window_size_left: int | None, window_size_right: int | None) -> Any:  # fmt: skip
    """``varlen::flash_attn_varlen_unfused``: the arguments and masking rules of
    :func:`~candlejax.nn.attention.cpu_flash.varlen.flash_attn_varlen_cpu`, computed sequence by
    sequence (scores, additive masks, softmax, values) as Candle's.

    As in Candle, a sequence with ``lq == 0`` or ``lk == 0`` gives no output rows and a query that sees
    no key gives NaN. The lengths must be concrete (they set the loop): under ``jax.jit`` pass them as
    constants, or use ``flash_attn_varlen_cpu``, which also takes traced lengths.
    """
    qa, ka, va = as_array(q), as_array(k), as_array(v)
    check_qkv(_NAME, qa, ka, va, 3, "(total, heads, head_dim)")
    wl, wr = check_window(_NAME, window_size_left, window_size_right)
    _, hq, d = qa.shape
    slopes = None
    if alibi_slopes is not None:
        slopes = as_array(alibi_slopes)
        if slopes.ndim != 1 or slopes.shape[0] != hq:
            n = slopes.shape[0] if slopes.ndim == 1 else slopes.shape
            raise errors.Msg(f"alibi_slopes has len {n}, expected num_heads={hq}")
        slopes = slopes.astype(jnp.promote_types(qa.dtype, jnp.float32))
    lq = concrete_lengths(_NAME, seqlens_q, "seqlens_q")
    lk = concrete_lengths(_NAME, seqlens_k, "seqlens_k")
    if lq is None or lk is None:
        raise errors.Msg(f"{_NAME}: seqlens_q / seqlens_k are traced; the unfused loop needs concrete lengths."
                         " Under jax.jit pass them as constants (closed over, not arguments), or call"
                         " attention.flash_attn_varlen_cpu, which takes traced lengths bounded by"
                         " max_seqlen_q / max_seqlen_k")  # fmt: skip
    if lk.shape[0] < lq.shape[0]:
        raise errors.Msg(f"{_NAME}: seqlens_k has {lk.shape[0]} entries, seqlens_q {lq.shape[0]}")
    cu_q = np.concatenate([[0], np.cumsum(lq)])
    cu_k = np.concatenate([[0], np.cumsum(lk[: lq.shape[0]])])
    pieces = []
    for i, (a, b) in enumerate(zip(lq.tolist(), lk[: lq.shape[0]].tolist(), strict=True)):
        if a == 0 or b == 0:
            continue
        if causal and b < a:
            raise errors.Msg(f"causal attention requires seq_len_k >= seq_len_q (got k={b}, q={a}) for batch"
                             f" index {i}")  # fmt: skip
        if cu_q[i] + a > qa.shape[0] or cu_k[i] + b > ka.shape[0]:
            raise errors.Msg(f"{_NAME}: sequence {i} (q rows {cu_q[i]}..{cu_q[i] + a}, k rows {cu_k[i]}.."
                             f"{cu_k[i] + b}) runs past q's {qa.shape[0]} / k's {ka.shape[0]} rows")  # fmt: skip
        pieces.append((int(cu_q[i]), a, int(cu_k[i]), b))
    if not pieces:
        return wrap(jnp.zeros((0, hq, d), qa.dtype))
    return wrap(_unfused(qa, ka, va, slopes, pieces=tuple(pieces), scale=float(softmax_scale), causal=bool(causal),
                         wl=wl, wr=wr))  # fmt: skip


@op(static=("pieces", "scale", "causal", "wl", "wr"))
def _unfused(q: Any, k: Any, v: Any, slopes: Any, *, pieces: tuple[tuple[int, int, int, int], ...], scale: float,
             causal: bool, wl: int | None, wr: int | None) -> Any:  # fmt: skip
    hq = q.shape[1]
    k, v = _repeat_heads(k, hq), _repeat_heads(v, hq)
    prec = f32_precision() if q.dtype == jnp.float32 else None
    acc = jnp.promote_types(q.dtype, jnp.float32)  # f16 / bf16 in f32, f64 in f64 (Candle: the input's dtype)
    outs = []
    for sq, lq, sk, lk in pieces:
        qs = q[sq : sq + lq]
        ks = k[sk : sk + lk]
        vs = v[sk : sk + lk]
        scores = jnp.einsum("qhd,khd->hqk", qs, ks, precision=prec, preferred_element_type=acc) * scale
        i_k = jnp.arange(lq)[:, None] + (lk - lq)
        j = jnp.arange(lk)[None, :]
        if causal:
            scores = jnp.where(j > i_k, -jnp.inf, scores)
        if wl is not None and wr is not None:
            outside = (jnp.maximum(i_k - j, 0) > wl) | (jnp.maximum(j - i_k, 0) > wr)
            scores = jnp.where(outside, -jnp.inf, scores)
        elif wl is not None:
            scores = jnp.where((j > i_k) | (i_k - j > wl), -jnp.inf, scores)
        if slopes is not None:
            scores = scores + alibi_bias(slopes, i_k, j, causal)
        probs = jax.nn.softmax(scores, axis=-1)
        ctx = jnp.einsum("hqk,khd->qhd", probs, vs.astype(acc), precision=f32_precision())
        outs.append(ctx.astype(q.dtype))
    return jnp.concatenate(outs, axis=0)
