"""``Dropout``: a ``ModuleT`` that zeroes activations with probability ``p`` in training.

requires: candlejax.nn.ops.dropout, candlejax.nn.module
provides: ``Dropout``
"""

from __future__ import annotations

from typing import Any

from candlejax import errors
from candlejax.nn import ops
from candlejax.nn.module import ModuleT
from candlejax.tensor._core import TensorBase, wrap

__all__ = ["Dropout"]


class Dropout(ModuleT):
    """``Dropout::new(p)``; ``forward_t(xs, train, key=None)`` (PyTorch ``nn.Dropout``).

    In training mode it needs randomness: pass ``key=`` (a jax key or an int seed), which is
    required under ``jit``; eagerly the device's seeded generator is used when no key is given.
    In evaluation mode it returns its input.
    """

    def __init__(self, p: float):
        if isinstance(p, (str, bytes)) or not hasattr(p, "__float__"):
            raise errors.ArgumentType(f"dropout probability must be a float in [0, 1), got {p!r}")
        if not 0.0 <= p < 1.0:
            raise errors.Msg(f"dropout probability has to be in [0, 1), got {p}")
        self.p = float(p)

    @staticmethod
    def new(p: float) -> Dropout:
        return Dropout(p)

    def forward(self, xs: Any, train: bool = False, key: Any = None) -> Any:
        """Candle's ``Dropout::forward(xs, train)`` (= :meth:`forward_t`); ``dropout(xs)`` evaluates."""
        return self.forward_t(xs, train, key)

    def forward_t(self, xs: Any, train: bool, key: Any = None) -> Any:
        if not train:
            return xs if isinstance(xs, TensorBase) else wrap(xs)
        return ops.dropout(xs, self.p, key=key)
