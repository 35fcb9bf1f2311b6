"""``candle_nn::varlen_attention``: the backward-compatible name of :mod:`candlejax.nn.attention.varlen`.

requires: candlejax.nn.attention.varlen
provides: ``flash_attn_varlen_unfused``
"""

from candlejax.nn.attention.varlen import flash_attn_varlen_unfused

__all__ = ["flash_attn_varlen_unfused"]
