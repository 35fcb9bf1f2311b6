"""Repeat penalty (Candle: ``candle_transformers::utils::apply_repeat_penalty``).

requires: jax, candlejax.tensor (``wrap``/``unwrap``)
provides: ``apply_repeat_penalty``, ``apply_repeat_penalty_mask``, ``check_penalty``, ``context_mask``,
``RecentTokens`` (a fixed-size window of the last tokens, for compiled decode steps).

Every token id that occurs in the context is penalised once, however often it occurs: a logit
``>= 0`` is divided by ``penalty``, a negative one multiplied by it. This is also what
``transformers``' ``RepetitionPenaltyLogitsProcessor`` does. Ids outside the vocabulary are ignored
(as Candle does).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax.tensor._core import TensorBase, unwrap, wrap


def context_mask(context: Any, vocab_size: int, valid: Any = None) -> jax.Array:
    """A bool ``(..., vocab_size)`` mask with True at every id in ``context`` (``(..., n)`` ints).

    Jit-able: ``context`` may be a fixed-size traced array; entries where ``valid`` is False and
    ids outside ``[0, vocab_size)`` are ignored, so padding can use any out-of-range id.
    """
    ctx = unwrap(context)
    if isinstance(ctx, np.ndarray | np.generic) and np.issubdtype(ctx.dtype, np.integer):
        # on the host: 64-bit ids would wrap to 32 bits (2**32 + 3 -> 3) on the way to the device
        ctx = np.where((ctx < 0) | (ctx >= vocab_size), -1, ctx).astype(np.int32)
    ctx = jnp.asarray(ctx)
    if not jnp.issubdtype(ctx.dtype, jnp.integer):
        raise errors.Msg(f"apply_repeat_penalty: context must hold integer token ids, got {ctx.dtype}")
    ctx = ctx.astype(jnp.int32) if ctx.dtype != jnp.uint32 else jnp.minimum(ctx, vocab_size).astype(jnp.int32)
    bad = (ctx < 0) | (ctx >= vocab_size)
    if valid is not None:
        bad = bad | ~jnp.asarray(unwrap(valid), dtype=bool)
    ctx = jnp.where(bad, vocab_size, ctx)  # out of bounds -> dropped by the scatter
    mask = jnp.zeros((*ctx.shape[:-1], vocab_size), dtype=bool)
    if ctx.ndim == 1:
        return mask.at[ctx].set(True, mode="drop")
    flat = mask.reshape(-1, vocab_size)
    rows = jnp.arange(flat.shape[0])[:, None]
    flat = flat.at[rows, ctx.reshape(flat.shape[0], -1)].set(True, mode="drop")
    return flat.reshape(mask.shape)


def check_penalty(penalty: Any, where: str) -> None:
    """Raise unless a concrete ``penalty`` is a positive number (0 turns the logits it divides into
    inf, a negative one flips their order; transformers refuses both). A traced one is not checked."""
    p = unwrap(penalty)
    if isinstance(p, jax.core.Tracer):
        return
    try:
        value = float(p)
    except (TypeError, ValueError):
        raise errors.Msg(f"{where}: the repeat penalty must be a number, got {penalty!r}") from None
    if not value > 0:
        raise errors.Msg(f"{where}: the repeat penalty must be > 0 (1.0: none), got {value}")


def _token_id(i: Any) -> int:
    try:
        return operator.index(i)
    except TypeError:
        raise errors.Msg(f"apply_repeat_penalty: context ids must be integers, got {i!r}") from None


def apply_repeat_penalty_mask(logits: Any, penalty: Any, mask: Any) -> Any:
    """Penalise the logits where ``mask`` (bool, or a token-count array: > 0 means seen) is set.

    Pure and jit-able; ``penalty`` may be traced. Works on ``(vocab,)`` or ``(..., vocab)``; returns
    float32 (a Tensor when ``logits`` is one).
    """
    x = unwrap(logits)
    m = jnp.asarray(unwrap(mask))
    if m.dtype != jnp.bool_:
        m = m > 0
    x = jnp.asarray(x).astype(jnp.float32)
    pen = jnp.asarray(penalty, dtype=jnp.float32)
    out = jnp.where(m, jnp.where(x >= 0, x / pen, x * pen), x)
    return wrap(out) if isinstance(logits, TensorBase) else out


def apply_repeat_penalty(logits: Any, penalty: float | jax.Array, context: Sequence[int] | Any) -> Any:
    """Candle's ``apply_repeat_penalty(&logits, penalty, context)``: each distinct id of ``context``
    once, positive logits ÷ ``penalty``, negative × ``penalty``; returns float32.

    ``logits`` is ``(vocab,)`` (or ``(..., vocab)`` with a matching ``(..., n)`` context); a Tensor
    in gives a Tensor out. ``context`` is a list of ints or an int array; with an array (traced or
    not) the function is jit-able.
    """
    x = unwrap(logits)
    if not getattr(x, "ndim", 0):
        raise errors.ArgumentType(
            f"apply_repeat_penalty: logits must be a Tensor of rank >= 1 (..., vocab), got {logits!r:.60}"
            f" ({type(logits).__name__})"
        )
    vocab = x.shape[-1]
    check_penalty(penalty, "apply_repeat_penalty")
    if not isinstance(context, list | tuple | range) and not hasattr(context, "shape"):
        raise errors.ArgumentType(
            f"apply_repeat_penalty: context must be a list of token ids or an int array, got {context!r:.60}"
            f" ({type(context).__name__})"
        )
    if isinstance(context, list | tuple | range):
        ids = np.fromiter((_token_id(i) for i in context), dtype=np.int64, count=len(context))
        ids = ids[(ids >= 0) & (ids < vocab)].astype(np.int32)
        context = ids
    mask = context_mask(context, vocab)
    return apply_repeat_penalty_mask(logits, penalty, mask)


class RecentTokens(NamedTuple):
    """The last ``n`` tokens as a ring buffer of fixed size, for a compiled decode step.

    ``ids`` ``(n,)`` int32 (``-1`` = empty) and ``count`` (tokens pushed so far, int32). Candle's
    examples penalise ``tokens[len - repeat_last_n..]``; this is the same window without a
    growing list.
    """

    ids: jax.Array
    count: jax.Array

    @staticmethod
    def create(n: int, tokens: Sequence[int] = ()) -> RecentTokens:
        """A window of size ``n`` holding the last ``n`` of ``tokens``."""
        if n < 1:
            raise errors.Msg(f"RecentTokens: the window needs n >= 1, got {n}")
        last = [int(t) for t in tokens][-n:] if tokens else []
        buf = np.full((n,), -1, dtype=np.int32)
        buf[: len(last)] = last
        return RecentTokens(jax.device_put(buf), jax.device_put(np.int32(len(last))))  # no eager programs

    def push(self, token: Any) -> RecentTokens:
        """Add one token (traced scalar ok), dropping the oldest when full."""
        n = self.ids.shape[0]
        ids = self.ids.at[self.count % n].set(jnp.asarray(token, dtype=jnp.int32).reshape(()))
        return RecentTokens(ids, self.count + 1)

    def mask(self, vocab_size: int) -> jax.Array:
        """The bool ``(vocab_size,)`` mask of the tokens in the window."""
        return context_mask(self.ids, vocab_size)
