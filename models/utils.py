"""Candle's ``candle_transformers::utils``: ``apply_repeat_penalty``, ``repeat_kv``,
``build_causal_mask`` and ``build_additive_causal_mask``.

``apply_repeat_penalty`` is :func:`candlejax.generation.apply_repeat_penalty` and ``repeat_kv`` is
:func:`candlejax.nn.ops.repeat_kv`; the masks are built here. Models in candlejax mask attention
inside :func:`candlejax.nn.ops.sdpa` (bool masks, ``do_causal``); these are for code ported from
Candle that builds its own.

>>> from candlejax.models.utils import build_causal_mask
>>> build_causal_mask(2, 1).to_vec2()
[[0, 0, 1], [0, 0, 0]]
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType, to_dtype
from candlejax.generation import apply_repeat_penalty
from candlejax.nn.ops import repeat_kv
from candlejax.tensor import wrap

__all__ = ["apply_repeat_penalty", "build_additive_causal_mask", "build_causal_mask", "repeat_kv"]


def _count(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 0:
        raise errors.Msg(f"{where}: {name} must be an int >= 0, got {value!r}")
    return int(value)


def _on(device: Any, a: np.ndarray) -> Any:
    return wrap(jax.device_put(a, Device.coerce(device).jax_device))


def build_causal_mask(seq_len: int, index_pos: int, device: Any = None) -> Any:
    """U8 ``(seq_len, index_pos + seq_len)``, 1 where query ``i`` must not see key ``j``
    (``j > index_pos + i``): every query sees the ``index_pos`` cached keys. Candle:
    ``utils::build_causal_mask(seq_len, index_pos, &device)``."""
    n = _count(seq_len, "seq_len", "build_causal_mask")
    off = _count(index_pos, "index_pos", "build_causal_mask")
    j = np.arange(off + n)[None, :]
    i = np.arange(n)[:, None]
    return _on(device, (j > off + i).astype(np.uint8))


def build_additive_causal_mask(tgt: int, offset: int, sw: int | None = None, device: Any = None,
                               dtype: Any = DType.F32) -> Any:  # fmt: skip
    """``(1, 1, tgt, tgt + offset)`` of 0 where query ``i`` may see key ``j`` (``j <= i + offset``,
    and with a sliding window ``sw``, ``j + sw >= i + offset``) and ``-inf`` elsewhere, in ``dtype``;
    add it to the attention scores. Candle: ``utils::build_additive_causal_mask(tgt, offset, sw,
    &device, dtype)``."""
    n = _count(tgt, "tgt", "build_additive_causal_mask")
    off = _count(offset, "offset", "build_additive_causal_mask")
    dt = to_dtype(dtype)
    if not dt.is_float():
        raise errors.Msg(f"build_additive_causal_mask: dtype must be a float type (it holds -inf), got {dt}")
    j = np.arange(n + off)[None, :]
    i = np.arange(n)[:, None]
    keep = j <= i + off
    if sw is not None:
        keep &= j + _count(sw, "sw", "build_additive_causal_mask") >= i + off
    mask = np.where(keep, np.float32(0), np.float32(-np.inf)).reshape(1, 1, n, n + off)
    return _on(device, mask).to_dtype(dt)
