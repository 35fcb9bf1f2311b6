"""``candle_nn::attention::cpu_flash``: Candle's CPU flash-attention kernels and their dispatcher.

Candle's kernels are hand-written CPU loops; here each lowers to one dense JAX attention
(:func:`candlejax.nn.ops.sdpa`), so they run on every backend and under ``jax.jit``.

requires: candlejax.nn.attention._common, .standard, .causal, .varlen
provides: ``flash_attn``, submodules ``standard``, ``causal``, ``varlen``
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax.nn.attention._common import AttnMask, alibi_bias, alibi_slopes, attend_bshd, check_qkv
from candlejax.nn.attention.cpu_flash import causal, standard, varlen
from candlejax.nn.module import as_array
from candlejax.tensor._core import wrap

__all__ = ["causal", "flash_attn", "standard", "varlen"]


def flash_attn(q: Any, k: Any, v: Any, softmax_scale: float, attn_mask: Any, max_bias: float | None,
               softcap: float | None) -> Any:  # fmt: skip
    """``candle_nn::attention::flash_attn``: q ``(B, S, H, D)``, k/v ``(B, Skv, Hkv, D)`` (``H % Hkv == 0``)
    -> ``(B, H, S, D)`` (note: not q's layout).

    B=1 (any float dtype, computed in f32, returned as f32): ``AttnMask.Causal(kv_offset)`` runs
    :func:`causal.run_causal_attn_cpu`, ``None_`` / ``Mask(t)`` run :func:`standard.run_flash_attn_cpu`
    (their docstrings give the ALiBi rule of each). B>1 (f32/f16, returned in that dtype; no softcap,
    no explicit mask) runs as packed equal-length sequences (:func:`varlen.flash_attn_varlen_cpu`):
    causal queries are aligned at the end of the keys (``kv_offset`` is not read) and ``max_bias > 0``
    adds ALiBi with the per-head slopes ``2^(-max_bias * (h + 1) / n2)``.
    """
    mask = AttnMask.None_ if attn_mask is None else attn_mask
    if not isinstance(mask, AttnMask):
        raise errors.Msg(f"flash_attn: attn_mask must be an AttnMask, got {type(attn_mask).__name__}")
    qa, ka, va = as_array(q), as_array(k), as_array(v)
    check_qkv("flash_attn", qa, ka, va, 4, "(B, S, H, D)")
    b = qa.shape[0]
    if b != ka.shape[0]:
        raise errors.Msg(f"flash_attn: q has batch {b}, k/v have {ka.shape[0]}")
    if b > 1:
        varlen_ok = qa.dtype in (jnp.float32, jnp.float16) and softcap is None
        if not varlen_ok or mask.kind == "Mask":
            kind = "Mask(tensor)" if mask.kind == "Mask" else mask.kind
            raise errors.Msg(
                "CPU flash attention with B>1 requires: f32/f16 dtype, no softcap, and Causal or None mask."
                f" Got B={b}, dtype={qa.dtype}, softcap={softcap}, mask={kind}"
            )
        return _batched(qa, ka, va, softmax_scale, mask.is_causal(), max_bias)
    if mask.kind == "Causal":
        return causal.run_causal_attn_cpu(qa, ka, va, softmax_scale, mask.kv_offset(), max_bias, softcap)
    return standard.run_flash_attn_cpu(qa, ka, va, mask.tensor if mask.kind == "Mask" else None, softmax_scale,
                                       max_bias, softcap)  # fmt: skip


def _batched(q: Any, k: Any, v: Any, scale: float, is_causal: bool, max_bias: float | None) -> Any:
    """B>1: every sequence has the same lengths, so the packed varlen computation is one batched attention."""
    _, s, h, _ = q.shape
    skv = k.shape[1]
    if is_causal and skv < s:
        raise errors.Msg(f"causal requires lk>=lq, got lk={skv} lq={s} at batch 0")
    offset = skv - s
    bias = None
    if max_bias is not None and float(max_bias) > 0.0:
        i_k = np.arange(s)[:, None] + offset
        j = np.arange(skv)[None, :]
        bias = alibi_bias(jnp.asarray(alibi_slopes(float(max_bias), h)), jnp.asarray(i_k), jnp.asarray(j), is_causal)
        bias = bias[None]
    out = attend_bshd(q, k, v, bias, offset if is_causal else None, scale=scale, softcap=None, causal=is_causal)
    return wrap(jnp.swapaxes(out, 1, 2))
