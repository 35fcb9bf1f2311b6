"""``candle_nn::attention::cpu_flash::standard``: single-batch attention with an optional explicit mask.

requires: candlejax.nn.attention._common
provides: ``run_flash_attn_cpu``
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from candlejax import errors
from candlejax.errors import fmt_shape
from candlejax.nn.attention._common import alibi_slopes, attend_bshd, check_qkv
from candlejax.nn.module import as_array
from candlejax.tensor._core import wrap

__all__ = ["run_flash_attn_cpu"]


def run_flash_attn_cpu(q: Any, k: Any, v: Any, mask: Any, softmax_scale: float, max_bias: float | None,
                       softcap: float | None) -> Any:  # fmt: skip
    """``standard::run_flash_attn_cpu``: B=1 only; q ``(1, S, H, D)``, k/v ``(1, Skv, Hkv, D)`` -> f32
    ``(1, H, S, D)``.

    ``mask`` (None or S·Skv values, read as ``(S, Skv)`` for every head) is added to the scores after
    softcapping; with ``max_bias > 0`` it is first multiplied by head ``h``'s ALiBi slope (the mask then
    carries the positions, as in llama.cpp). Without a mask ``max_bias`` changes nothing. ``-inf``
    hides a key; a query that sees no key gives zeros."""
    qa, ka, va = as_array(q), as_array(k), as_array(v)
    check_qkv("run_flash_attn_cpu", qa, ka, va, 4, "(B, S, H, D)")
    b, s, h, _ = qa.shape
    if b != 1:
        raise errors.Msg(f"standard::run_flash_attn_cpu is B=1 only (got B={b}); batched inputs go through"
                         " attention.flash_attn")  # fmt: skip
    skv = ka.shape[1]
    bias = None
    if mask is not None:
        m = as_array(mask)
        if m.size != s * skv:
            raise errors.Msg(f"run_flash_attn_cpu: the mask must hold q_len * kv_len = {s} * {skv} values"
                             f" (read as ({s}, {skv})), got {fmt_shape(m.shape)}")  # fmt: skip
        bias = m.astype(jnp.float32).reshape(1, 1, s, skv)
        if max_bias is not None and float(max_bias) > 0.0:
            bias = jnp.asarray(alibi_slopes(float(max_bias), h))[None, :, None, None] * bias
    f32 = jnp.float32
    out = attend_bshd(qa.astype(f32), ka.astype(f32), va.astype(f32), bias, None, scale=softmax_scale,
                      softcap=softcap, causal=False)  # fmt: skip
    return wrap(jnp.swapaxes(out, 1, 2))
