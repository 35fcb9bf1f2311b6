"""``candle_nn::cpu_flash_attention``: Candle's deprecated entry point, kept for code written against it.

requires: candlejax.nn.attention
provides: ``run_flash_attn_cpu``
"""

from __future__ import annotations

import warnings
from typing import Any

from candlejax.nn.attention import AttnMask, flash_attn

__all__ = ["run_flash_attn_cpu"]


def run_flash_attn_cpu(q: Any, k: Any, v: Any, mask: Any, softmax_scale: float, max_bias: float | None,
                       softcap: float | None) -> Any:  # fmt: skip
    """Deprecated ``cpu_flash_attention::run_flash_attn_cpu``: ``attention.flash_attn`` with
    ``AttnMask.Mask(mask)`` (or ``AttnMask.None_``). Warns ``DeprecationWarning``."""
    warnings.warn("candlejax.nn.cpu_flash_attention.run_flash_attn_cpu is deprecated: use"
                  " candlejax.nn.attention.flash_attn with AttnMask", DeprecationWarning, stacklevel=2)  # fmt: skip
    attn_mask = AttnMask.None_ if mask is None else AttnMask.Mask(mask)
    return flash_attn(q, k, v, softmax_scale, attn_mask, max_bias, softcap)
