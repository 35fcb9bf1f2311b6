"""``candle_nn::attention::cpu_flash::causal``: single-batch causal attention, and decode over an
interleaved KV buffer.

requires: candlejax.nn.attention._common
provides: ``run_causal_attn_cpu``, ``causal_decode_f32_interleaved``
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax.device import Device
from candlejax.nn.attention._common import alibi_bias, alibi_slopes, attend_bshd, check_qkv
from candlejax.nn.module import as_array
from candlejax.tensor._core import TensorBase, wrap

__all__ = ["causal_decode_f32_interleaved", "run_causal_attn_cpu"]


def run_causal_attn_cpu(q: Any, k: Any, v: Any, softmax_scale: float, kv_offset: int, max_bias: float | None,
                        softcap: float | None) -> Any:  # fmt: skip
    """``causal::run_causal_attn_cpu``: B=1 only; q ``(1, S, H, D)``, k/v ``(1, Skv, Hkv, D)`` -> f32
    ``(1, H, S, D)``.

    Query ``i`` sees key ``j`` iff ``j <= i + kv_offset``; a single query (decode) sees every key
    (``kv_offset`` is then not read). With ``max_bias > 0`` the ALiBi bias ``slope_h * (j - (i + kv_offset))``
    is added after softcapping."""
    qa, ka, va = as_array(q), as_array(k), as_array(v)
    check_qkv("run_causal_attn_cpu", qa, ka, va, 4, "(B, S, H, D)")
    b, s, h, _ = qa.shape
    if b != 1:
        raise errors.Msg(f"causal::run_causal_attn_cpu is B=1 only (got B={b}); batched inputs go through"
                         " attention.flash_attn")  # fmt: skip
    if int(kv_offset) != kv_offset or int(kv_offset) < 0:
        raise errors.Msg(f"run_causal_attn_cpu: kv_offset must be an int >= 0, got {kv_offset!r}")
    skv = ka.shape[1]
    offset = skv - 1 if s == 1 else int(kv_offset)
    bias = None
    if max_bias is not None and float(max_bias) > 0.0:
        i_k = np.arange(s)[:, None] + offset
        j = np.arange(skv)[None, :]
        bias = alibi_bias(jnp.asarray(alibi_slopes(float(max_bias), h)), jnp.asarray(i_k), jnp.asarray(j), True)[None]
    f32 = jnp.float32
    out = attend_bshd(qa.astype(f32), ka.astype(f32), va.astype(f32), bias, offset, scale=softmax_scale,
                      softcap=softcap, causal=True)  # fmt: skip
    return wrap(jnp.swapaxes(out, 1, 2))


def _flat_f32(x: Any, n: int, what: str) -> Any:
    a = as_array(x, device=None if isinstance(x, TensorBase) else Device.Cpu).reshape(-1)
    if a.size < n:
        raise errors.Msg(f"causal_decode_f32_interleaved: {what} holds {a.size} values, needs {n}")
    return a[:n].astype(jnp.float32)


def causal_decode_f32_interleaved(q_data: Any, kv_data: Any, h_q: int, h_kv: int, d: int, kv_len: int,
                                  scale: float) -> Any:  # fmt: skip
    """``causal::causal_decode_f32_interleaved``: one query token over a KV buffer laid out
    ``(kv_len, h_kv, 2·d)`` (each head's key then its value), no ALiBi or softcap.

    ``q_data``: ``h_q·d`` values (a list, numpy array or Tensor; only the first ``h_q·d`` are read),
    ``kv_data``: at least ``kv_len·h_kv·2·d`` values (a longer, preallocated cache is fine). Returns
    f32 ``(h_q, 1, d)``."""
    h_q, h_kv, d, kv_len = int(h_q), int(h_kv), int(d), int(kv_len)
    if h_kv < 1 or h_q % h_kv:
        raise errors.Msg(f"causal_decode_f32_interleaved: h_q={h_q} must be a multiple of h_kv={h_kv}")
    if kv_len < 1 or d < 1:
        raise errors.Msg(f"causal_decode_f32_interleaved: kv_len ({kv_len}) and d ({d}) must be >= 1")
    qa = _flat_f32(q_data, h_q * d, "q_data").reshape(1, 1, h_q, d)
    kv = _flat_f32(kv_data, kv_len * h_kv * 2 * d, "kv_data").reshape(1, kv_len, h_kv, 2 * d)
    out = attend_bshd(qa, kv[..., :d], kv[..., d:], None, None, scale=scale, softcap=None, causal=False)
    return wrap(out.reshape(h_q, 1, d))
