"""``candle_nn::sampling``: :func:`gumbel_softmax`, a categorical sample by the Gumbel-max trick.

requires: candlejax.tensor (rand_like, argmax)
provides: ``gumbel_softmax``
"""

from __future__ import annotations

from typing import Any

from candlejax.dtype import DType

__all__ = ["gumbel_softmax"]


def gumbel_softmax(logits: Any, temperature: float, dim: Any, *, key: Any = None) -> Any:
    """``candle_nn::sampling::gumbel_softmax(logits, temperature, dim)``: the index along ``dim``
    (U32) of ``logits - temperature * log(-log(u))``, ``u`` uniform on ``[1e-7, 0.999)``: a sample
    from ``softmax(logits / temperature)``; ``temperature <= 0`` gives the argmax. Computed in f32,
    as Candle does. ``key`` (a jax key or an int seed) makes it a pure function of the key (needed
    under ``jit``); without it the device's seeded generator draws. PyTorch:
    ``F.gumbel_softmax(logits, tau, hard=True).argmax(dim)``."""
    if temperature <= 0.0:
        return logits.argmax(dim)
    x = logits.to_dtype(DType.F32)
    minus_g = x.rand_like(1e-7, 0.999, key=key).log().neg().log()
    return (x - minus_g * float(temperature)).argmax(dim)
