"""``Embedding``: a lookup table ``(vocab, hidden)`` indexed by integer ids.

requires: candlejax.nn.module, candlejax.nn.init
provides: ``Embedding``, ``embedding``, ``check_token_ids``
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax._dispatch import is_eager, op
from candlejax._jax_private import read_to_host
from candlejax.device import single_device
from candlejax.dtype import DType, to_dtype
from candlejax.nn.init import Randn
from candlejax.nn.linear import _require_tensor, as_weight, check_param
from candlejax.nn.module import Module, as_array, layer_name
from candlejax.tensor._core import TensorBase, check_same_device, int_arg, unwrap, wrap

__all__ = ["Embedding", "check_token_ids", "embedding"]


def check_token_ids(ids: Any, vocab_size: int | None, what: str) -> None:
    """Raise unless ``ids`` (a Tensor, array or nested list) are integers in ``0 .. vocab_size - 1``.

    ``what`` names them in the error (``"llama token ids"``). A traced array is checked for its dtype
    only: under ``jit`` a lookup clamps ids it cannot check. ``vocab_size=None`` checks the dtype and
    that no id is negative. PyTorch: the ``IndexError`` of ``nn.Embedding``; Candle: the error of
    ``index_select``.
    """
    a = unwrap(ids)
    if not isinstance(a, jax.Array):
        try:
            a = np.asarray(a)
        except ValueError:  # a ragged nested list
            lengths = [len(r) for r in a if isinstance(r, (list, tuple))] if isinstance(a, (list, tuple)) else []
            raise errors.Msg(f"{what}: rows of different lengths {lengths}; pad them to one length") from None
    if a.size == 0:
        return
    if not jnp.issubdtype(a.dtype, jnp.integer):
        raise errors.UnexpectedDType(DType.U32, to_dtype(a.dtype), f"{what} must be integers")
    if isinstance(a, jax.core.Tracer):
        return
    host = read_to_host(a)  # on the host (an explicit read): no reduction compiled per shape
    lo, hi = int(host.min()), int(host.max())
    if lo < 0:
        raise errors.InvalidIndex(what, lo, int(vocab_size) if vocab_size is not None else 0)
    if vocab_size is not None and hi >= int(vocab_size):
        raise errors.InvalidIndex(what, hi, int(vocab_size))


@op
def _embed(ids: Any, table: Any) -> Any:
    return jnp.take(table, ids, axis=0, mode="clip")


class Embedding(Module):
    """``Embedding::new(embeddings (V, H), hidden_size)``; ids of any rank -> ``ids.shape + [H]``.

    PyTorch: ``nn.Embedding``. Out-of-range ids raise eagerly; under ``jit`` they are clamped.
    """

    def __init__(self, embeddings: Any, hidden_size: int | None = None):
        _require_tensor(embeddings, "Embedding", "nn.embedding(num_embeddings, hidden_size, vb)")
        self.weight = as_weight(embeddings, "Embedding", "embeddings")
        check_param("Embedding", self.weight, "embeddings (vocab, hidden)", self.weight, rank=2)
        hidden = self.weight.shape[1] if hidden_size is None else int_arg(hidden_size, "Embedding", "hidden_size")
        self.hidden = int(hidden)
        if self.hidden != self.weight.shape[1]:  # Candle's forward fails reshaping the rows to hidden_size
            raise errors.UnexpectedShape(
                f"{layer_name('Embedding', self.weight)}: hidden_size {self.hidden} does not match the embeddings",
                (self.weight.shape[0], self.hidden), self.weight.shape,
            )

    @staticmethod
    def new(embeddings: Any, hidden_size: int) -> Embedding:
        """Candle's ``Embedding::new(embeddings, hidden_size)``: a lookup table ``(vocab, hidden_size)``."""
        return Embedding(embeddings, hidden_size)

    def embeddings(self) -> Any:
        """Candle's ``Embedding::embeddings``: the ``(vocab, hidden_size)`` table."""
        return self.weight

    def hidden_size(self) -> int:
        """Candle's ``Embedding::hidden_size``: the width of each embedding row."""
        return self.hidden

    def extra_repr(self) -> str:
        """The vocabulary size and width, for ``repr``."""
        return f"vocab={self.weight.shape[0]}, hidden={self.hidden}"

    def forward(self, ids: Any) -> Any:
        """Look up integer ``ids`` of any shape: ``(...)`` in, ``(..., hidden_size)`` out."""
        a = as_array(ids)
        if not jnp.issubdtype(a.dtype, jnp.integer):
            raise errors.UnexpectedDType(
                DType.U32, to_dtype(a.dtype), f"{layer_name('Embedding', self.weight)}: ids must be integers"
            )
        table = self.weight._a
        if isinstance(ids, TensorBase) and not single_device():  # Candle's index_select: one device
            check_same_device("index-select", self.weight, ids)
        if is_eager() and a.size:
            host = read_to_host(a)  # one explicit read
            hi, lo = int(np.max(host)), int(np.min(host))
            if hi >= table.shape[0] or lo < 0:
                bad = hi if hi >= table.shape[0] else lo
                raise errors.InvalidIndex(  # Candle's forward is index_select(ids, 0)
                    "index-select", bad, table.shape[0], f"ids of {layer_name('Embedding', self.weight)}"
                )
        return wrap(_embed(a, table))


def embedding(in_size: int, out_size: int, vb: Any) -> Embedding:
    """``embedding(vocab, hidden, vb)``: param ``weight`` ``(vocab, hidden)`` ~ N(0, 1)."""
    w = vb.get_with_hints((in_size, out_size), "weight", Randn(0.0, 1.0))
    return Embedding(w, out_size)
