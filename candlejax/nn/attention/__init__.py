"""``candle_nn::attention``: ``AttnMask``, ``flash_attn`` over ``(B, S, H, D)``, and attention over packed
variable-length sequences (``flash_attn_varlen_cpu``, ``flash_attn_varlen_unfused``).

Candle's CPU kernels become dense JAX attention (built on :func:`candlejax.nn.ops.sdpa`), so every
function here runs on any backend, eagerly or under ``jax.jit``; the names keep Candle's ``cpu``.

requires: candlejax.nn.attention._common, .cpu_flash, .varlen
provides: ``AttnMask``, ``flash_attn``, ``flash_attn_varlen_cpu``, ``flash_attn_varlen_unfused``,
submodules ``cpu_flash``, ``varlen``
"""

from candlejax.nn.attention import cpu_flash, varlen
from candlejax.nn.attention._common import AttnMask
from candlejax.nn.attention.cpu_flash import flash_attn
from candlejax.nn.attention.cpu_flash.varlen import flash_attn_varlen_cpu
from candlejax.nn.attention.varlen import flash_attn_varlen_unfused

__all__ = ["AttnMask", "cpu_flash", "flash_attn", "flash_attn_varlen_cpu", "flash_attn_varlen_unfused", "varlen"]
