"""Functional KV caches: ``KvCache``, ``DecodeKvCache``, ``RotatingKvCache``, ``ConcatKvCache``,
``StackedKvCache``.

requires: jax.lax (dynamic_update_slice), candlejax.nn.module
provides: ``KvCache``, ``DecodeKvCache``, ``RotatingKvCache``, ``ConcatKvCache``, ``StackedKvCache``

Candle's caches write in place and return views narrowed to the current length, so each decode
step has a new shape. Here a cache is a Module holding fixed-size buffers and its position as an
int32 array: ``(k_all, v_all), cache = cache.append(k, v)`` returns the whole buffers and the new
cache, and ``cache.attn_mask(q_len)`` says which slots each new query may attend to. Shapes never
change, so one compiled step serves every token. ``cache.k()`` / ``cache.v()`` give Candle's
narrowed views (eager only).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from candlejax import errors
from candlejax._dispatch import is_eager, op
from candlejax.device import Device
from candlejax.dtype import DType, to_dtype
from candlejax.nn.module import Module, as_array
from candlejax.tensor._core import unwrap, wrap

__all__ = ["ConcatKvCache", "DecodeKvCache", "KeysValues", "KvCache", "RotatingKvCache", "StackedKvCache"]


#: what a KV cache, or the pair its ``append`` returns, says when it is used as a tensor
#: (``candlejax.tensor._core.not_a_tensor``)
_APPEND_HINT = "a KV cache's append returns ((k, v), new_cache): write `(k, v), cache = cache.append(k, v)`"


class KeysValues(tuple):
    """The ``(keys, values)`` pair a cache's ``append`` returns beside the new cache: a plain tuple.

    Candle's ``let (k, v) = cache.append(&k, &v)?`` ported as ``k, v = cache.append(k, v)`` would bind
    this pair to ``k`` and the new cache to ``v``; used as a tensor, the pair raises at once, naming
    the candlejax spelling ``(k, v), cache = cache.append(k, v)``.
    """

    __slots__ = ()
    not_a_tensor_hint = _APPEND_HINT

    def __getattr__(self, name: str) -> Any:
        raise self._misused(f"it has no .{name}")

    @staticmethod
    def _misused(what: str) -> errors.Msg:
        return errors.Msg(f"this is the (keys, values) pair a KV cache's append returns, not a tensor ({what}):"
                          f" {_APPEND_HINT}")

    def _arith(self, *_: Any) -> Any:
        raise self._misused("arithmetic on it")

    def __add__(self, other: Any) -> Any:  # tuples still concatenate
        return tuple.__add__(self, other) if isinstance(other, tuple) else self._arith()

    def __radd__(self, other: Any) -> Any:
        return other + tuple(self) if isinstance(other, tuple) else self._arith()

    __mul__ = __rmul__ = __sub__ = __rsub__ = __truediv__ = __rtruediv__ = _arith
    __matmul__ = __rmatmul__ = __pow__ = __neg__ = _arith


jax.tree_util.register_pytree_node(KeysValues, lambda kv: (tuple(kv), None), lambda _, children: KeysValues(children))


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

    not_a_tensor_hint = _APPEND_HINT

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
        k = as_array(k_like)
        v = k if v_like is None else as_array(v_like)
        return KvCache(dim, max_seq_len, wrap(_alloc(k, dim, max_seq_len)), wrap(_alloc(v, dim, max_seq_len)))

    def append(self, k: Any, v: Any) -> tuple[tuple[Any, Any], KvCache]:
        """Write ``k``/``v`` at the current position: ``((k_all, v_all), new_cache)``.

        ``k_all``/``v_all`` are the full buffers (``max_seq_len`` on ``dim``; unwritten slots are zero):
        mask them with ``new_cache.attn_mask(q_len)``. Overflow raises eagerly; under ``jit`` the
        write is clamped, so size ``max_seq_len`` for the whole generation.
        """
        ka, va = as_array(k), as_array(v)
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
        return KeysValues((wrap(kb), wrap(vb))), new

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


def _lead(b: int, h: int) -> tuple[int, ...]:
    # XLA drops size-1 batch dimensions from a product's operands: buffers without them are read as
    # they are (with them, the product reads a reshaped view and XLA copies the buffer)
    return tuple(n for n in (b, h) if n != 1)


@op()
def _decode_write(kb: Any, vb: Any, ka: Any, va: Any, pos: Any) -> Any:
    b, h, t, d = ka.shape
    lead = _lead(b, h)
    zero = jnp.zeros((), jnp.int32)
    kt = jnp.swapaxes(ka, 2, 3).reshape(*lead, d, t).astype(kb.dtype)
    kb = lax.dynamic_update_slice(kb, kt, (zero,) * len(lead) + (zero, pos))
    vb = lax.dynamic_update_slice(vb, va.reshape(*lead, t, va.shape[3]).astype(vb.dtype),
                                  (zero,) * len(lead) + (pos, zero))  # fmt: skip
    return kb, vb, pos + t


class DecodeKvCache(Module):
    """A pre-allocated self-attention cache for ``(B, H, S, D)`` attention whose buffers are laid
    out as the attention products read them: keys ``(B, H, D, max_seq_len)``, values ``(B, H,
    max_seq_len, D)``, without ``B`` or ``H`` where they are 1. Same contract as :class:`KvCache`
    on ``dim=2``: ``(k_all, v_all), cache = cache.append(k, v)`` with ``k``/``v`` ``(B, H, T, D)``
    returns ``(B, H, max_seq_len, D)`` views for :func:`candlejax.nn.ops.sdpa` and the new cache;
    mask with ``cache.attn_mask(T)``.

    Use it in a jitted decode step that donates the cache. XLA:CPU then writes the new position in
    place and the score and value products read the buffers as they are. With :class:`KvCache`'s
    ``(B, H, S, D)`` buffers it copies each buffer several times per step (the in-place write is
    duplicated into the product's operand) and transposes the keys (Whisper tiny's one-token step:
    9.2 → 7.9 ms). Candle: ``KvCache`` (which writes in place by construction).
    """

    not_a_tensor_hint = _APPEND_HINT

    def __init__(self, batch: int, heads: int, k: Any, v: Any, pos: Any = None):
        self.batch, self.heads = int(batch), int(heads)
        self.k_buf = k
        self.v_buf = v
        self.pos = wrap(jnp.zeros((), jnp.int32)) if pos is None else pos

    @staticmethod
    def preallocated(max_seq_len: int, k_like: Any, v_like: Any | None = None) -> DecodeKvCache:
        """Zeroed buffers for keys/values shaped like ``k_like`` / ``v_like`` ``(B, H, T, D)``
        (``T`` is ignored) with ``max_seq_len`` positions."""
        k = as_array(k_like)
        v = k if v_like is None else as_array(v_like)
        if k.ndim != 4 or v.ndim != 4 or k.shape[:2] != v.shape[:2]:
            raise errors.Msg(
                f"DecodeKvCache: keys/values must be (batch, heads, seq, head_dim), got {k.shape} and {v.shape}"
            )
        if int(max_seq_len) < 1:
            raise errors.Msg(f"DecodeKvCache: max_seq_len must be >= 1, got {max_seq_len}")
        b, h = k.shape[:2]
        n, lead = int(max_seq_len), _lead(b, h)
        return DecodeKvCache(b, h, wrap(jnp.zeros((*lead, k.shape[3], n), k.dtype)),
                             wrap(jnp.zeros((*lead, n, v.shape[3]), v.dtype)))  # fmt: skip

    @property
    def max_seq_len(self) -> int:
        return int(self.k_buf.shape[-1])

    def append(self, k: Any, v: Any) -> tuple[tuple[Any, Any], DecodeKvCache]:
        """Write ``k``/``v`` ``(B, H, T, D)`` at the current position: ``((k_all, v_all), new_cache)``,
        both ``(B, H, max_seq_len, D)`` (unwritten slots are zero). Overflow raises eagerly; under
        ``jit`` the write is clamped, so size ``max_seq_len`` for the whole generation."""
        ka, va = as_array(k), as_array(v)
        kb, vb = self.k_buf._a, self.v_buf._a
        b, h, (d, n), dv = self.batch, self.heads, kb.shape[-2:], vb.shape[-1]
        if ka.ndim != 4 or va.ndim != 4 or ka.shape[:2] != (b, h) or ka.shape[3] != d \
                or va.shape[:3] != ka.shape[:3] or va.shape[3] != dv:  # fmt: skip
            raise errors.Msg(
                f"DecodeKvCache.append: k {ka.shape} / v {va.shape} do not fit the cache's batch {b}, {h} heads, "
                f"key dim {d}, value dim {dv} (shapes are (batch, heads, seq, dim))"
            )
        t = ka.shape[2]
        if is_eager():
            p = int(self.pos._a)
            if p + t > n:
                raise errors.Msg(
                    f"DecodeKvCache: appending {t} positions at {p} exceeds max_seq_len {n}"
                    " (create the cache with a larger max_seq_len)"
                )
        kb, vb, pos = _decode_write(kb, vb, ka, va, self.pos._a)
        k_all = jnp.swapaxes(kb.reshape(b, h, d, n), 2, 3)
        v_all = vb.reshape(b, h, n, dv)
        return KeysValues((wrap(k_all), wrap(v_all))), DecodeKvCache(b, h, wrap(kb), wrap(vb), wrap(pos))

    def attn_mask(self, q_len: int) -> Any:
        """Bool ``(q_len, max_seq_len)``: query i (the last ``q_len`` appended) sees slots ``<= pos - q_len + i``."""
        q = jnp.arange(q_len, dtype=jnp.int32)[:, None] + (self.pos._a - q_len)
        return wrap(jnp.arange(self.max_seq_len, dtype=jnp.int32)[None, :] <= q)

    def current_seq_len(self) -> Any:
        """An int eagerly, an int32 scalar Tensor under ``jit``."""
        return int(self.pos._a) if is_eager() else self.pos

    def at_position(self, pos: Any) -> DecodeKvCache:
        """The same buffers at position ``pos`` (later slots are masked out and overwritten)."""
        p = pos if hasattr(pos, "_a") else wrap(jnp.asarray(pos, jnp.int32))
        return DecodeKvCache(self.batch, self.heads, self.k_buf, self.v_buf, p)

    def reset(self) -> DecodeKvCache:
        """A cache at position 0 (buffers kept; their old contents are masked out)."""
        return self.at_position(wrap(jnp.zeros((), jnp.int32)))

    def k(self) -> Any:
        """The written keys ``(B, H, pos, D)``; eager only."""
        n, d = int(self.pos._a), self.k_buf.shape[-2]
        k = jnp.swapaxes(self.k_buf._a.reshape(self.batch, self.heads, d, -1)[..., :n], 2, 3)
        return wrap(k)

    def v(self) -> Any:
        """The written values ``(B, H, pos, D)``; eager only."""
        n, d = int(self.pos._a), self.v_buf.shape[-1]
        return wrap(self.v_buf._a.reshape(self.batch, self.heads, -1, d)[:, :, :n])


class RotatingKvCache(Module):
    """A sliding-window ring buffer of ``max_seq_len`` (the window) positions (Candle's ``RotatingKvCache``).

    ``(k_all, v_all), cache = cache.append(k, v)`` returns the previous window followed by the new
    keys (``window + T`` along ``dim``), so every new query sees exactly its last ``window`` keys,
    even when a chunk wraps around; ``cache.attn_mask(T)`` is the matching ``(T, window + T)`` mask.
    """

    not_a_tensor_hint = _APPEND_HINT

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
        ka, va = as_array(k), as_array(v)
        w = self.max_seq_len
        kb = _alloc(ka, self.dim, w) if self.k_buf is None else self.k_buf._a
        vb = _alloc(va, self.dim, w) if self.v_buf is None else self.v_buf._a
        k_all, v_all, kk, vv, off, sp = _ring_write(kb, vb, ka, va, self.offset_._a, self.slot_pos._a, dim=self.dim)
        new = RotatingKvCache(self.dim, w, wrap(kk), wrap(vv), wrap(off), wrap(sp), self.slot_pos)
        return KeysValues((wrap(k_all), wrap(v_all))), new

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




class ConcatKvCache(Module):
    """Candle's ``ConcatKvCache::new(dim)``: keys/values concatenated along ``dim``, no size limit.

    ``(k_all, v_all), cache = cache.append(k, v)``; every step has a new shape (a recompile under
    ``jit``), so use it eagerly or prefer :class:`KvCache` / :class:`StackedKvCache` in jitted loops.
    """

    not_a_tensor_hint = _APPEND_HINT

    def __init__(self, dim: int, k: Any = None, v: Any = None):
        self.dim = int(dim)
        self.k_buf = k
        self.v_buf = v

    @staticmethod
    def new(dim: int) -> ConcatKvCache:
        return ConcatKvCache(dim)

    def append(self, k: Any, v: Any) -> tuple[tuple[Any, Any], ConcatKvCache]:
        ka, va = as_array(k), as_array(v)
        if self.k_buf is not None:
            ka = jnp.concatenate([self.k_buf._a, ka.astype(self.k_buf._a.dtype)], axis=self.dim)
            va = jnp.concatenate([self.v_buf._a, va.astype(self.v_buf._a.dtype)], axis=self.dim)
        return KeysValues((wrap(ka), wrap(va))), ConcatKvCache(self.dim, wrap(ka), wrap(va))

    def current_seq_len(self) -> int:
        return 0 if self.k_buf is None else int(self.k_buf.shape[self.dim])

    def is_empty(self) -> bool:
        """Whether nothing has been appended (Candle's ``ConcatKvCache::is_empty``)."""
        return self.k_buf is None

    def k(self) -> Any:
        return self.k_buf

    def v(self) -> Any:
        return self.v_buf

    def reset(self) -> ConcatKvCache:
        return ConcatKvCache(self.dim)


def _zeros(shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
    """Zeros on ``device``. Eagerly on a CPU device a zeroed host buffer is placed there: no
    broadcast program is compiled for the cache's shape (each XLA:CPU executable keeps ~3 MiB)."""
    if is_eager() and getattr(device, "platform", None) == "cpu":
        return jax.device_put(np.zeros(shape, dtype), device)
    return jax.device_put(jnp.zeros(shape, dtype), device)


class StackedKvCache(Module):
    """Every layer's keys and values in two preallocated buffers ``k``/``v`` of shape ``(layers, B,
    Hkv, max_seq_len, head_dim)`` (raw arrays: the pytree leaves a jitted step donates).

    ``k_all, v_all, cache = cache.update(layer, k, v, pos)`` writes ``k``/``v`` (``(B, T, Hkv, D)``,
    or ``(B, Hkv, T, D)`` with ``layout="bhsd"``) at slots ``pos .. pos + T`` of ``layer`` (in place
    when donated) and returns that layer's whole ``(B, Hkv, max_seq_len, D)`` buffers, for
    ``ops.sdpa(q, k_all, v_all, do_causal=True, offset=pos, kv_layout="bhsd")``, which also hides the
    slots not written yet (so a cache is reused from position 0 without clearing it). ``layer`` and
    ``pos`` may be traced int32 scalars. Writes past ``max_seq_len`` are clamped by XLA: check the
    sizes before (``fits``), or :meth:`grow` the cache.
    """

    not_a_tensor_hint = _APPEND_HINT

    def __init__(self, k: Any, v: Any):
        self.k = k
        self.v = v

    @staticmethod
    def new(num_layers: int, batch: int, num_kv_heads: int, max_seq_len: int, head_dim: int,
            dtype: Any = DType.F32, device: Any = None) -> StackedKvCache:  # fmt: skip
        if int(max_seq_len) < 1 or int(batch) < 1:
            raise errors.Msg(f"StackedKvCache: batch {batch} and max_seq_len {max_seq_len} must be >= 1")
        dt = to_dtype(dtype).np
        shape = (int(num_layers), int(batch), int(num_kv_heads), int(max_seq_len), int(head_dim))
        dev = Device.coerce(device).jax_device
        return StackedKvCache(_zeros(shape, dt, dev), _zeros(shape, dt, dev))

    @property
    def max_seq_len(self) -> int:
        return int(self.k.shape[3])

    @property
    def batch(self) -> int:
        return int(self.k.shape[1])

    @property
    def num_layers(self) -> int:
        return int(self.k.shape[0])

    def fits(self, pos: int, seq_len: int) -> bool:
        """Whether ``seq_len`` positions written at ``pos`` fit in the buffers."""
        return 0 <= int(pos) and int(pos) + int(seq_len) <= self.max_seq_len

    def update(self, layer: Any, k: Any, v: Any, pos: Any, layout: str = "bshd") -> tuple[Any, Any, StackedKvCache]:
        ka, va = as_array(k), as_array(v)
        if layout == "bshd":
            ka, va = ka.transpose(0, 2, 1, 3), va.transpose(0, 2, 1, 3)
        elif layout != "bhsd":
            raise errors.Msg(f"StackedKvCache.update: layout must be 'bshd' or 'bhsd', got {layout!r}")
        zero = jnp.zeros((), jnp.int32)
        at = (jnp.asarray(unwrap(layer), jnp.int32), zero, zero, jnp.asarray(unwrap(pos), jnp.int32), zero)
        ck = lax.dynamic_update_slice(self.k, ka.astype(self.k.dtype)[None], at)
        cv = lax.dynamic_update_slice(self.v, va.astype(self.v.dtype)[None], at)
        k_all = lax.dynamic_index_in_dim(ck, at[0], 0, keepdims=False)
        v_all = lax.dynamic_index_in_dim(cv, at[0], 0, keepdims=False)
        return k_all, v_all, StackedKvCache(ck, cv)

    def grow(self, max_seq_len: int, keep: int | None = None) -> StackedKvCache:
        """A cache of ``max_seq_len`` slots holding this one's first ``keep`` (default: all) slots."""
        n = min(self.max_seq_len, int(max_seq_len)) if keep is None else int(keep)
        shape = (*self.k.shape[:3], int(max_seq_len), self.k.shape[4])
        k = jnp.zeros(shape, self.k.dtype).at[:, :, :, :n].set(self.k[:, :, :, :n])
        v = jnp.zeros(shape, self.v.dtype).at[:, :, :, :n].set(self.v[:, :, :, :n])
        return StackedKvCache(k, v)
