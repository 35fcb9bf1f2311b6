"""A KV cache with one ring per batch row, for serving several independent sequences at once:
``ScatteredCacheBuilder``, ``ScatteredKvCache``, ``IndicesAndMask`` (Candle's ``candle_nn::kv_cache``).

requires: numpy (the host-side bookkeeping), candlejax.nn.kv_cache (``KeysValues``), candlejax.nn.module
provides: ``ScatteredCacheBuilder``, ``ScatteredKvCache``, ``IndicesAndMask``, ``ScatteredKeysValues``

Each batch row is its own stream with its own position. Every row's keys/values live in a ring of
``context`` slots; a step may advance only some rows (``batch_mask``), and a finished row restarts
with ``reset_batch_index(i)`` while the others go on.

Candle keeps all of this in mutable structs. Here the split follows where the work runs:

* ``ScatteredCacheBuilder`` is a plain mutable Python object. It holds each row's position on the
  host (numpy), and ``indices_and_mask(seq_len, batch_mask)`` advances them and returns an
  :class:`IndicesAndMask` (the ring slot of every new token and the additive attention mask), as
  Candle's ``&mut self`` methods do. Call it between steps, outside ``jit``.
* ``ScatteredKvCache`` is an immutable Module holding the ``(B, H, context, D)`` buffers:
  ``(k_all, v_all), cache = cache.append(k, v, iam)`` returns the buffers after the write and the
  new cache, so one jitted step (taking the cache and the ``IndicesAndMask`` as arguments) serves
  every decode step.

>>> import numpy as np
>>> from candlejax.nn import ScatteredCacheBuilder
>>> builder = ScatteredCacheBuilder.new(2, 4)  # 2 rows, a window of 4 positions
>>> cache = builder.make_cache(1, 3)
>>> k = np.ones((2, 1, 2, 3), np.float32)
>>> iam = builder.indices_and_mask(2, [True, False])  # only row 0 advances
>>> (k_all, v_all), cache = cache.append(k, k, iam)
>>> builder.positions(), k_all.shape, iam.mask().shape
([2, 0], (2, 1, 4, 3), (2, 1, 2, 4))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax._dispatch import op
from candlejax.device import Device
from candlejax.dtype import DType, check_width, to_dtype
from candlejax.nn._cache_base import KeysValues, _rebind, _zeros
from candlejax.nn.module import Module, as_array
from candlejax.tensor._core import int_arg, wrap

__all__ = ["IndicesAndMask", "ScatteredCacheBuilder", "ScatteredKeysValues", "ScatteredKvCache"]

#: what a ScatteredKvCache, or the pair its ``append`` returns, says when it is used as a tensor
_SCATTERED_HINT = (
    "a ScatteredKvCache's append returns ((k, v), new_cache): write `(k, v), cache = cache.append(k, v, iam)`"
)


class ScatteredKeysValues(KeysValues):
    """The ``(keys, values)`` pair :meth:`ScatteredKvCache.append` returns beside the new cache."""

    __slots__ = ()
    not_a_tensor_hint = _SCATTERED_HINT
    _holds = "the (keys, values) pair a ScatteredKvCache's append returns"


class IndicesAndMask(Module):
    """What :meth:`ScatteredCacheBuilder.indices_and_mask` returns for one step (a pytree, so a jitted
    step takes it as an argument).

    Attributes:
        indices: u32 ``(B, T)``: the ring slot each new token of each row is written to (a row that
            does not advance repeats its next slot; what is written there is masked out later).
        mask_: the additive attention mask in the builder's dtype (``0`` visible, ``-inf`` hidden):
            ``(B, 1, T, context)`` over the cache's slots when ``T < context``; ``(T, T)`` over the
            new tokens when ``T >= context`` (the chunk then attends within itself). Read it with
            :meth:`mask`.
    """

    def __init__(self, indices: Any, mask: Any):
        self.indices = indices
        self.mask_ = mask

    def mask(self) -> Any:
        """The additive attention mask (see the class docstring for its two shapes)."""
        return self.mask_


class ScatteredCacheBuilder:
    """Candle's ``ScatteredCacheBuilder::new(batch_size, context, dtype, device)``: the host-side
    positions of ``batch_size`` independent streams sharing caches of ``context`` slots per row.

    A mutable Python object, as in Candle: :meth:`indices_and_mask` advances the rows it is told
    to, :meth:`reset` / :meth:`reset_batch_index` restart them. It never runs inside ``jit``; pass
    the :class:`IndicesAndMask` it returns into the jitted step. Each cache of the model (one per
    layer) comes from :meth:`make_cache` and is updated functionally by
    :meth:`ScatteredKvCache.append`.

    A row at position ``p`` writes its next token into slot ``p % context``, so its slots hold its
    last ``context`` positions.
    """

    def __init__(self, batch_size: int, context: int, dtype: Any = DType.F32, device: Any = None):
        if int(batch_size) < 1 or int(context) < 1:
            raise errors.Msg(f"ScatteredCacheBuilder: batch_size {batch_size} and context {context} must be >= 1")
        self.context = int(context)
        self.dtype = check_width(to_dtype(dtype), "ScatteredCacheBuilder")
        if not self.dtype.is_float():
            raise errors.Msg(f"ScatteredCacheBuilder: dtype must be a float dtype (the caches' and the masks'),"
                             f" got {self.dtype}")  # fmt: skip
        self._device = Device.coerce(device)
        self._positions = np.zeros(int(batch_size), np.int64)  # each row's next absolute position

    @staticmethod
    def new(batch_size: int, context: int, dtype: Any = DType.F32, device: Any = None) -> ScatteredCacheBuilder:
        """Candle's ``ScatteredCacheBuilder::new(batch_size, context, dtype, device)``."""
        return ScatteredCacheBuilder(batch_size, context, dtype, device)

    def batch_size(self) -> int:
        """Candle's ``ScatteredCacheBuilder::batch_size``: the number of batch rows."""
        return len(self._positions)

    def device(self) -> Device:
        """Candle's ``ScatteredCacheBuilder::device``: the device of the masks and caches."""
        return self._device

    def positions(self) -> list[int]:
        """Each row's next absolute position (the number of tokens it has taken since its reset)."""
        return [int(p) for p in self._positions]

    def reset(self) -> None:
        """Restart every row at position 0 (the caches' old contents are masked out from then on)."""
        self._positions[:] = 0

    def reset_batch_index(self, batch_index: int) -> None:
        """Restart row ``batch_index`` at position 0; the other rows go on."""
        b = int(batch_index)
        if not 0 <= b < self.batch_size():
            raise errors.Msg(f"ScatteredCacheBuilder.reset_batch_index: {b} is out of range for batch size"
                             f" {self.batch_size()}")  # fmt: skip
        self._positions[b] = 0

    def make_cache(self, num_heads: int, head_dim: int) -> ScatteredKvCache:
        """Zeroed ``(batch_size, num_heads, context, head_dim)`` key and value buffers."""
        shape = (self.batch_size(), int(num_heads), self.context, int(head_dim))
        dev = self._device.jax_device
        return ScatteredKvCache(wrap(_zeros(shape, self.dtype.np, dev)), wrap(_zeros(shape, self.dtype.np, dev)),
                                self.context)  # fmt: skip

    def indices_and_mask(self, seq_len: int, batch_mask: Sequence[bool]) -> IndicesAndMask:
        """The slots and the attention mask for a step of ``seq_len`` tokens per row, advancing the
        rows where ``batch_mask`` is true (the others keep their position; their rows of the mask
        hide nothing and their output should be ignored).

        With ``seq_len < context`` new token ``i`` of an advancing row at position ``p`` sees every
        slot that holds a position ``<= p + i`` once this step is written: its own earlier tokens
        that the chunk has not overwritten (a single-token step sees its last ``context``
        positions). With ``seq_len >= context`` the mask is ``(T, T)`` over the chunk itself:
        token ``i`` sees tokens ``i - context < j <= i`` (Candle's mask also shows ``j = i - context``).
        """
        t, c, b = int_arg(seq_len, "ScatteredCacheBuilder.indices_and_mask", "seq_len"), self.context, self.batch_size()
        if t < 1:
            raise errors.Msg(f"ScatteredCacheBuilder.indices_and_mask: seq_len must be >= 1, got {seq_len}")
        active = np.asarray(batch_mask, dtype=bool)
        if active.shape != (b,):
            raise errors.Msg(
                f"ScatteredCacheBuilder.indices_and_mask: batch_mask needs one bool per row ({b}), got"
                f" shape {active.shape}"
            )
        start = self._positions.copy()
        step = np.arange(t)
        new_pos = start[:, None] + step  # (B, T)
        indices = np.where(active[:, None], new_pos % c, (start % c)[:, None])
        self._positions[active] += t
        dt, dev = self.dtype.np, self._device.jax_device
        if t >= c:
            q, k = step[:, None], step[None, :]
            mask = np.where((k <= q) & (k > q - c), 0.0, -np.inf).astype(np.float32)
        else:
            # the position each slot holds before the step: the latest p < start with p % c == slot
            held = start[:, None] - 1 - ((start[:, None] - 1 - np.arange(c)[None, :]) % c)
            slots = np.where(active[:, None], indices, 0)  # rows that do not advance rewrite slot 0 as it is
            np.put_along_axis(held, slots, np.where(active[:, None], new_pos, held[:, :1]), axis=1)
            visible = (held[:, None, :] >= 0) & (held[:, None, :] <= new_pos[:, :, None])  # (B, T, C)
            visible |= ~active[:, None, None]
            mask = np.where(visible, 0.0, -np.inf).astype(np.float32)[:, None]
        return IndicesAndMask(wrap(jax.device_put(indices.astype(np.uint32), dev)),
                              wrap(jax.device_put(mask.astype(dt), dev)))  # fmt: skip


@op()
def _scatter_write(kb: Any, vb: Any, ka: Any, va: Any, idx: Any) -> Any:
    t, c = ka.shape[2], kb.shape[2]
    if t > c:  # only the last `context` tokens survive in the ring (their slots are all distinct)
        ka, va, idx = ka[:, :, t - c :], va[:, :, t - c :], idx[:, t - c :]
    rows = jnp.arange(kb.shape[0])[:, None]
    idx = idx.astype(jnp.int32)
    # advanced indices split by a slice: the indexed view is (B, T, H, D)
    kb = kb.at[rows, :, idx].set(jnp.swapaxes(ka, 1, 2).astype(kb.dtype))
    vb = vb.at[rows, :, idx].set(jnp.swapaxes(va, 1, 2).astype(vb.dtype))
    return kb, vb


class ScatteredKvCache(Module):
    """Candle's ``ScatteredKvCache``: keys and values ``(B, H, context, D)``, one ring per batch row,
    written at the slots an :class:`IndicesAndMask` names. Make it with
    :meth:`ScatteredCacheBuilder.make_cache`.

    ``(k_all, v_all), cache = cache.append(k, v, iam)`` (Candle: ``let (k, v) = cache.append(&k, &v,
    &iam)?``, in place) writes ``k``/``v`` ``(B, H, T, D)`` and returns the whole buffers with the new
    cache; attend with ``iam.mask()`` added to the scores. A chunk of ``T >= context`` tokens
    returns ``k``/``v`` themselves (the chunk attends within itself, with the ``(T, T)`` mask);
    its last ``context`` tokens are still written, so the next steps see them (Candle writes
    nothing in that case, leaving the rows' slots stale).
    """

    not_a_tensor_hint = _SCATTERED_HINT

    def __init__(self, k: Any, v: Any, context: int):
        self.k_buf = k
        self.v_buf = v
        self.context = int(context)

    @_rebind("(k, v), cache = cache.append(k, v, iam)")
    def append(self, k: Any, v: Any, iam: IndicesAndMask) -> tuple[ScatteredKeysValues, ScatteredKvCache]:
        """Candle's ``ScatteredKvCache::append``: write ``k``/``v`` ``(B, H, T, D)`` at ``iam``'s slots: ``((k_all,
        v_all), new_cache)``."""
        ka, va = as_array(k), as_array(v)
        kb, vb = self.k_buf._a, self.v_buf._a
        (b, h, c, d), dv = kb.shape, vb.shape[3]
        if ka.ndim != 4 or va.ndim != 4 or ka.shape[:2] != (b, h) or ka.shape[3] != d \
                or va.shape[:3] != ka.shape[:3] or va.shape[3] != dv:  # fmt: skip
            raise errors.Msg(
                f"ScatteredKvCache.append: k {tuple(ka.shape)} / v {tuple(va.shape)} do not fit the cache's"
                f" batch {b}, {h} heads, key dim {d}, value dim {dv} (shapes are (batch, heads, seq, dim))"
            )
        for name, x, buf in (("k", ka, kb), ("v", va, vb)):
            if x.dtype != buf.dtype:  # never cast, as Candle's scatter_set
                raise errors.DTypeMismatchBinaryOp(to_dtype(buf.dtype), to_dtype(x.dtype),
                                                   f"ScatteredKvCache.append ({name} cache, {name})")  # fmt: skip
        if not isinstance(iam, IndicesAndMask):
            raise errors.Msg(
                f"ScatteredKvCache.append: iam must be the IndicesAndMask of this step, got {type(iam).__name__}"
                f" ({_SCATTERED_HINT})"
            )
        t = ka.shape[2]
        idx = as_array(iam.indices)
        mask_shape = tuple(iam.mask_.shape)
        want = (t, t) if t >= c else (b, 1, t, c)
        if tuple(idx.shape) != (b, t) or mask_shape != want:
            raise errors.Msg(
                f"ScatteredKvCache.append: the IndicesAndMask (indices {tuple(idx.shape)}, mask {mask_shape}) was"
                f" not made for {t} new tokens of {b} rows in a context of {c} (expected indices {(b, t)},"
                f" mask {want}): call builder.indices_and_mask({t}, batch_mask) for this step, with the"
                " builder that made this cache"
            )
        kb, vb = _scatter_write(kb, vb, ka, va, idx)
        new = ScatteredKvCache(wrap(kb), wrap(vb), c)
        if t >= c:
            return ScatteredKeysValues((wrap(ka), wrap(va))), new
        return ScatteredKeysValues((wrap(kb), wrap(vb))), new

    def k(self) -> Any:
        """The whole key buffer ``(B, H, context, D)``."""
        return self.k_buf

    def v(self) -> Any:
        """The whole value buffer ``(B, H, context, D)``."""
        return self.v_buf
