"""Matrix-product precision for f32: exact by default, Candle's reduced-precision switch.

Candle: ``candle::cuda::set_gemm_reduced_precision_f32(true)`` (cuBLAS TF32 for f32 GEMMs).
candlejax: ``cj.set_gemm_reduced_precision_f32(True)``.

Off (the default), every candlejax f32 product (``matmul``, ``Linear``, ...) runs at
``lax.Precision.HIGHEST``: true f32 on every backend. On, it runs at ``lax.Precision.DEFAULT``,
which XLA executes with TF32 tensor cores on NVIDIA GPUs that have them (Ampere and later; about
10 mantissa bits, relative error ~1e-3) and leaves exact on the CPU. bf16/f16 products are not
affected. The switch is process-wide; changing it clears JAX's compilation caches so that already
jitted functions pick it up at their next call (they recompile once).
"""

from __future__ import annotations

import jax
from jax import lax

_REDUCED = [False]


def f32_precision() -> lax.Precision:
    """The ``precision=`` candlejax passes to f32 products (read when a function is traced)."""
    return lax.Precision.DEFAULT if _REDUCED[0] else lax.Precision.HIGHEST


def set_gemm_reduced_precision_f32(enabled: bool) -> None:
    """Allow reduced-precision (TF32) f32 matrix products (Candle's switch of the same name)."""
    enabled = bool(enabled)
    if enabled != _REDUCED[0]:
        _REDUCED[0] = enabled
        jax.clear_caches()


def gemm_reduced_precision_f32() -> bool:
    """Whether :func:`set_gemm_reduced_precision_f32` is on (Candle's getter of the same name)."""
    return _REDUCED[0]
