"""Pre-allocated, functional KV caches: ``KvCache`` and ``RotatingKvCache``.

requires: jax.lax (dynamic_update_slice), candlejax.nn.module
provides: ``KvCache``, ``RotatingKvCache``

Candle's caches write in place and return views narrowed to the current length, so each decode
step has a new shape. Here a cache is a Module holding fixed-size buffers and its position as an
int32 array: ``(k_all, v_all), cache = cache.append(k, v)`` returns the whole buffers and the new
cache, and ``cache.attn_mask(q_len)`` says which slots each new query may attend to. Shapes never
change, so one compiled step serves every token. ``cache.k()`` / ``cache.v()`` give Candle's
narrowed views (eager only).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import lax

from candlejax import errors
from candlejax._dispatch import is_eager, op
from candlejax.nn.module import Module
from candlejax.tensor._core import TensorBase, wrap

__all__ = ["KvCache", "RotatingKvCache"]


def _arr(x: Any) -> Any:
    return x._a if isinstance(x, TensorBase) else jnp.asarray(x)


@op(static=("dim",))
def _kv_write(kb: Any, vb: Any, ka: Any, va: Any, pos: Any, *, dim: int) -> Any:
    start = [jnp.zeros((), jnp.int32)] * ka.ndim
    start[dim] = pos
    kb = lax.dynamic_update_slice(kb, ka.astype(kb.dtype), start)
    vb = lax.dynamic_update_slice(vb, va.astype(vb.dtype), start)
    return kb, vb, pos + ka.shape[dim]


@op(static=("dim",))
def _ring_write(kb: Any, vb: Any, ka: Any, va: Any, off: Any, slot_pos: Any, *, dim: int) -> Any:
    w, n = kb.shape[dim], ka.shape[dim]
    k_all = jnp.concatenate([kb, ka.astype(kb.dtype)], axis=dim)
    v_all = jnp.concatenate([vb, va.astype(vb.dtype)], axis=dim)
    new_pos = off + jnp.arange(n, dtype=jnp.int32)
    keep = min(n, w)  # only the last `window` new positions survive in the ring
    slots = new_pos[n - keep :] % w

    def put(buf: Any, x: Any) -> Any:
        b = jnp.moveaxis(buf, dim, 0).at[slots].set(jnp.moveaxis(x.astype(buf.dtype), dim, 0)[n - keep :])
        return jnp.moveaxis(b, 0, dim)

    return k_all, v_all, put(kb, ka), put(vb, va), off + n, slot_pos.at[slots].set(new_pos[n - keep :])


def _alloc(x: Any, dim: int, size: int) -> Any:
    shape = list(x.shape)
    shape[dim] = size
    return jnp.zeros(shape, x.dtype)


class KvCache(Module):
    """``KvCache::new(dim, max_seq_len)``: keys/values concatenated along ``dim`` up to ``max_seq_len``.

    Buffers are allocated at the first ``append`` (or up front with ``KvCache.preallocated``).
    """

    def __init__(self, dim: int, max_seq_len: int, k: Any = None, v: Any = None, pos: Any = None):
        self.dim = int(dim)
        self.max_seq_len = int(max_seq_len)
        self.k_buf = k
        self.v_buf = v
        self.pos = wrap(jnp.zeros((), jnp.int32)) if pos is None else pos

    @staticmethod
    def new(dim: int, max_seq_len: int) -> KvCache:
        return KvCache(dim, max_seq_len)

    @staticmethod
    def preallocated(dim: int, max_seq_len: int, k_like: Any, v_like: Any | None = None) -> KvCache:
        """Allocate buffers shaped like ``k_like`` / ``v_like`` with ``max_seq_len`` on ``dim``."""
        k = _arr(k_like)
        v = k if v_like is None else _arr(v_like)
        return KvCache(dim, max_seq_len, wrap(_alloc(k, dim, max_seq_len)), wrap(_alloc(v, dim, max_seq_len)))

    def append(self, k: Any, v: Any) -> tuple[tuple[Any, Any], KvCache]:
        """Write ``k``/``v`` at the current position: ``((k_all, v_all), new_cache)``.

        ``k_all``/``v_all`` are the full buffers (``max_seq_len`` on ``dim``; unwritten slots are zero):
        mask them with ``new_cache.attn_mask(q_len)``. Overflow raises eagerly; under ``jit`` the
        write is clamped, so size ``max_seq_len`` for the whole generation.
        """
        ka, va = _arr(k), _arr(v)
        kb = _alloc(ka, self.dim, self.max_seq_len) if self.k_buf is None else self.k_buf._a
        vb = _alloc(va, self.dim, self.max_seq_len) if self.v_buf is None else self.v_buf._a
        n = ka.shape[self.dim]
        pos = self.pos._a
        if is_eager():
            p = int(pos)
            if p + n > self.max_seq_len:
                raise errors.Msg(
                    f"KvCache: appending {n} positions at {p} exceeds max_seq_len {self.max_seq_len}"
                    " (create the cache with a larger max_seq_len)"
                )
        kb, vb, pos = _kv_write(kb, vb, ka, va, pos, dim=self.dim)
        new = KvCache(self.dim, self.max_seq_len, wrap(kb), wrap(vb), wrap(pos))
        return (wrap(kb), wrap(vb)), new

    def attn_mask(self, q_len: int) -> Any:
        """Bool ``(q_len, max_seq_len)``: query i (the last ``q_len`` appended) sees slots ``<= pos - q_len + i``."""
        pos = self.pos._a
        q = jnp.arange(q_len, dtype=jnp.int32)[:, None] + (pos - q_len)
        return wrap(jnp.arange(self.max_seq_len, dtype=jnp.int32)[None, :] <= q)

    def current_seq_len(self) -> Any:
        """An int eagerly, an int32 scalar Tensor under ``jit``."""
        return int(self.pos._a) if is_eager() else self.pos

    def _narrow(self, buf: Any) -> Any:
        if buf is None:
            return None
        n = int(self.pos._a)
        return wrap(lax.slice_in_dim(buf._a, 0, n, axis=self.dim))

    def k(self) -> Any:
        """The written keys (Candle's narrowed view); eager only."""
        return self._narrow(self.k_buf)

    def v(self) -> Any:
        return self._narrow(self.v_buf)

    def k_cache(self) -> Any:
        return self.k_buf

    def v_cache(self) -> Any:
        return self.v_buf

    def reset(self) -> KvCache:
        """A cache at position 0 (buffers kept; their old contents are masked out)."""
        return KvCache(self.dim, self.max_seq_len, self.k_buf, self.v_buf, wrap(jnp.zeros((), jnp.int32)))


class RotatingKvCache(Module):
    """A sliding-window ring buffer of ``max_seq_len`` (the window) positions (Candle's ``RotatingKvCache``).

    ``(k_all, v_all), cache = cache.append(k, v)`` returns the previous window followed by the new
    keys (``window + T`` along ``dim``), so every new query sees exactly its last ``window`` keys,
    even when a chunk wraps around; ``cache.attn_mask(T)`` is the matching ``(T, window + T)`` mask.
    """

    def __init__(self, dim: int, max_seq_len: int, k: Any = None, v: Any = None, offset: Any = None,
                 slot_pos: Any = None, prev_slot_pos: Any = None):  # fmt: skip
        self.dim = int(dim)
        self.max_seq_len = int(max_seq_len)
        self.k_buf = k
        self.v_buf = v
        empty = wrap(jnp.full((max_seq_len,), -1, jnp.int32))
        self.offset_ = wrap(jnp.zeros((), jnp.int32)) if offset is None else offset
        self.slot_pos = empty if slot_pos is None else slot_pos  # absolute position held by each slot, -1 = empty
        self.prev_slot_pos = empty if prev_slot_pos is None else prev_slot_pos  # the same before the last append

    @staticmethod
    def new(dim: int, max_seq_len: int) -> RotatingKvCache:
        return RotatingKvCache(dim, max_seq_len)

    def offset(self) -> Any:
        """The absolute position of the next token."""
        return int(self.offset_._a) if is_eager() else self.offset_

    current_seq_len = offset

    def append(self, k: Any, v: Any) -> tuple[tuple[Any, Any], RotatingKvCache]:
        ka, va = _arr(k), _arr(v)
        w = self.max_seq_len
        kb = _alloc(ka, self.dim, w) if self.k_buf is None else self.k_buf._a
        vb = _alloc(va, self.dim, w) if self.v_buf is None else self.v_buf._a
        k_all, v_all, kk, vv, off, sp = _ring_write(kb, vb, ka, va, self.offset_._a, self.slot_pos._a, dim=self.dim)
        new = RotatingKvCache(self.dim, w, wrap(kk), wrap(vv), wrap(off), wrap(sp), self.slot_pos)
        return (wrap(k_all), wrap(v_all)), new

    def attn_mask(self, q_len: int) -> Any:
        """Bool ``(q_len, window + q_len)`` for the ``k_all`` of the last ``append``: key visible iff it
        was written, is not in the future, and lies within the last ``window`` positions."""
        qpos = self.offset_._a - q_len + jnp.arange(q_len, dtype=jnp.int32)
        kp = jnp.concatenate([self.prev_slot_pos._a, qpos])[None, :]
        qp = qpos[:, None]
        return wrap((kp >= 0) & (kp <= qp) & (kp > qp - self.max_seq_len))

    def positions(self, seq_len: int) -> Any:
        """Absolute positions of the next ``seq_len`` tokens."""
        return wrap(self.offset_._a + jnp.arange(seq_len, dtype=jnp.int32))

    def reset(self) -> RotatingKvCache:
        return RotatingKvCache(self.dim, self.max_seq_len, self.k_buf, self.v_buf)


