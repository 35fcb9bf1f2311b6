"""Functional caches: ``Cache``, ``RotatingCache`` (one tensor) and the KV caches ``KvCache``,
``DecodeKvCache``, ``RotatingKvCache``, ``ConcatKvCache``, ``StackedKvCache``.

requires: jax.lax (dynamic_update_slice), candlejax.nn.module
provides: ``Cache``, ``RotatingCache``, ``KvCache``, ``DecodeKvCache``, ``RotatingKvCache``, ``ConcatKvCache``,
``StackedKvCache``, ``KeysValues`` / ``DataAndCache`` (the tuples ``append`` returns); Candle's
per-sequence ``ScatteredKvCache`` (``kv_cache::ScatteredKvCache``) is defined in
``candlejax.nn.kv_cache_scattered`` and found here too

Candle's caches write in place and return views narrowed to the current length, so each decode
step has a new shape. Here a cache is a Module holding fixed-size buffers and its position as an
int32 array: ``(k_all, v_all), cache = cache.append(k, v)`` returns the whole buffers and the new
cache, and ``cache.attn_mask(q_len)`` says which slots each new query may attend to. Shapes never
change, so one compiled step serves every token. ``cache.k()`` / ``cache.v()`` give Candle's
narrowed views (eager only).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from candlejax import errors
from candlejax._dispatch import check_devices, is_eager, op
from candlejax._jax_private import read_to_host
from candlejax.device import Device, single_device
from candlejax.dtype import DType, to_dtype
from candlejax.nn._cache_base import (  # noqa: F401 (re-exported: candlejax.nn.kv_cache.KeysValues, ...)
    _APPEND_HINT,
    _CACHE_HINT,
    CacheStatement,
    DataAndCache,
    KeysValues,
    _AppendResult,
    _rebind,
    _zeros,
)
from candlejax.nn.kv_cache_scattered import IndicesAndMask, ScatteredCacheBuilder, ScatteredKvCache
from candlejax.nn.module import Module, as_array
from candlejax.nn.ops import stacked_layer_sdpa
from candlejax.shape import CallableInt, check_elem_count
from candlejax.tensor._core import int_arg, unwrap, wrap

__all__ = [
    "Cache", "ConcatKvCache", "DataAndCache", "DecodeKvCache", "IndicesAndMask", "KeysValues", "KvCache",
    "RotatingCache", "RotatingKvCache", "ScatteredCacheBuilder", "ScatteredKvCache", "StackedKvCache",
]  # fmt: skip


@op(static=("dim",))
def _slice_write(bufs: Any, xs: Any, pos: Any, *, dim: int) -> Any:
    """Write each ``xs[i]`` into ``bufs[i]`` at ``pos`` along ``dim``: ``(new_bufs, pos + len)``."""
    start = [jnp.zeros((), jnp.int32)] * bufs[0].ndim
    start[dim] = pos
    new = tuple(lax.dynamic_update_slice(b, x.astype(b.dtype), start) for b, x in zip(bufs, xs, strict=True))
    return new, pos + xs[0].shape[dim]


@op(static=("dim",))
def _ring_write(bufs: Any, xs: Any, off: Any, slot_pos: Any, *, dim: int) -> Any:
    """Write ``xs`` into the rings ``bufs`` (``window`` slots on ``dim``) at absolute position ``off``:
    ``(each ring followed by its new entries, new rings, off + len, new slot positions)``."""
    w, n = bufs[0].shape[dim], xs[0].shape[dim]
    alls = tuple(jnp.concatenate([b, x.astype(b.dtype)], axis=dim) for b, x in zip(bufs, xs, strict=True))
    new_pos = off + jnp.arange(n, dtype=jnp.int32)
    keep = min(n, w)  # only the last `window` new positions survive in the ring
    slots = new_pos[n - keep :] % w

    def put(buf: Any, x: Any) -> Any:
        b = jnp.moveaxis(buf, dim, 0).at[slots].set(jnp.moveaxis(x.astype(buf.dtype), dim, 0)[n - keep :])
        return jnp.moveaxis(b, 0, dim)

    rings = tuple(put(b, x) for b, x in zip(bufs, xs, strict=True))
    return alls, rings, off + n, slot_pos.at[slots].set(new_pos[n - keep :])


def _alloc(x: Any, dim: int, size: int) -> Any:
    """Zeros shaped as ``x`` with ``size`` on ``dim``, on x's device (Candle's
    ``Tensor::zeros(shape, src.dtype(), src.device())``)."""
    shape = list(x.shape)
    shape[dim] = size
    return jnp.zeros_like(x, shape=shape)


def _check_source(what: str, x: Any, dim: int, buf: Any, max_len: int | None = None) -> None:
    """Shapes and dtypes are static, so this runs eagerly and while tracing: a source that cannot be
    written along ``dim`` into ``buf`` (``None``: not allocated yet), or longer than ``max_len``,
    raises, naming both shapes. The data is never cast: another dtype raises, as Candle's ``slice_set``."""
    if not 0 <= dim < x.ndim:
        raise errors.Msg(f"{what}: dim {dim} is out of range for a source of shape {tuple(x.shape)}")
    if max_len is not None and x.shape[dim] > max_len:
        raise errors.Msg(f"{what}: a source of {x.shape[dim]} positions (shape {tuple(x.shape)}) is longer than"
                         f" max_seq_len {max_len} (create the cache with a larger max_seq_len)")  # fmt: skip
    if buf is not None and buf.dtype != x.dtype:
        raise errors.DTypeMismatchBinaryOp(to_dtype(buf.dtype), to_dtype(x.dtype), f"{what} (cache, source)")
    if buf is not None and (buf.ndim != x.ndim or any(a != b for i, (a, b) in enumerate(zip(buf.shape, x.shape))
                                                      if i != dim)):  # fmt: skip
        raise errors.Msg(
            f"{what}: a source of shape {tuple(x.shape)} does not fit the cache's buffer {tuple(buf.shape)}"
            f" (all dims but dim {dim} must match; reset() keeps the buffers, so make a new cache for"
            " other shapes)"
        )


def _check_kv(what: str, k: Any, v: Any, dim: int) -> None:
    """Values must pair with the keys: same dtype, rank and dims, the last (head) dim excepted, which
    may differ (MLA-style attention). A shorter ``v`` left zero value rows visible to attention."""
    if k.dtype != v.dtype:
        raise errors.DTypeMismatchBinaryOp(to_dtype(k.dtype), to_dtype(v.dtype), f"{what} (k, v)")
    if k.ndim != v.ndim or k.shape[:-1] != v.shape[:-1] or k.shape[dim] != v.shape[dim]:
        raise errors.Msg(
            f"{what}: values of shape {tuple(v.shape)} do not pair with keys of shape {tuple(k.shape)} (the same"
            f" length on dim {dim} and the same dims are needed; only the last, the head dim, may differ)"
        )


def _check_max_len(what: str, max_seq_len: Any) -> None:
    if isinstance(max_seq_len, (bool, np.bool_)) or not isinstance(max_seq_len, (int, np.integer)) \
            or int(max_seq_len) < 1:  # fmt: skip
        raise errors.Msg(f"{what}: max_seq_len must be >= 1 (an integer), got {max_seq_len!r}")


def _written(pos: Any, what: str) -> int:
    """The concrete number of written positions, for the narrowed views (eager only)."""
    if not is_eager():
        raise errors.Msg(
            f"{what} is narrowed to the written length, which is only known eagerly: inside jit use the"
            " whole buffers (all_data() / the data append returns) with attn_mask(q_len)"
        )
    return int(pos._a)


def _narrow(buf: Any, dim: int, n: int) -> Any:
    return wrap(lax.slice_in_dim(buf._a, 0, n, axis=dim))


def _len_arg(n: Any, what: str, arg: str = "q_len", limit: int | None = None) -> int:
    """``n`` as a count of positions (Candle's ``usize``): an int ``>= 0`` (and ``<= limit``), else
    ``NotAnInteger`` / ``InvalidArgument`` naming ``arg``."""
    n = int_arg(n, what, arg)
    if n < 0:
        raise errors.InvalidArgument(f"{what}: {arg} must be >= 0, got {n}")
    if limit is not None and n > limit:
        raise errors.InvalidArgument(f"{what}: {arg} {n} is larger than the cache (max_seq_len {limit})")
    return n


def _causal_mask(pos: Any, q_len: int, size: int, what: str) -> Any:
    """Bool ``(q_len, size)``: the last ``q_len`` of ``pos`` written positions see slots ``<= their own``."""
    q_len = _len_arg(q_len, what, limit=size)
    q = jnp.arange(q_len, dtype=jnp.int32)[:, None] + (pos - q_len)
    return wrap(jnp.arange(size, dtype=jnp.int32)[None, :] <= q)


class Cache(Module):
    """Candle's ``Cache::new(dim, max_seq_len)``: one tensor concatenated along ``dim`` into a buffer
    of ``max_seq_len`` positions (Candle's ``KvCache`` is two of them).

    ``data, cache = cache.append(x)`` writes ``x`` at the current position and returns the whole
    buffer (``max_seq_len`` on ``dim``; unwritten slots are zero) and the new cache; Candle's
    ``append`` returns nothing and updates the cache in place, so ``x = cache.append(x)`` binds the
    pair, which raises at its first use as a tensor. Shapes never change, so one jitted step serves
    every token; ``attn_mask(q_len)`` masks the unwritten slots. Candle grows the buffer when it is
    full; here appending past ``max_seq_len`` raises eagerly (under ``jit`` the write is clamped).

    >>> import numpy as np
    >>> from candlejax.nn import Cache
    >>> cache = Cache.new(1, 4)
    >>> data, cache = cache.append(np.ones((2, 3), np.float32))
    >>> data.shape, cache.current_seq_len(), cache.current_data().shape
    ((2, 4), 3, (2, 3))
    """

    not_a_tensor_hint = _CACHE_HINT

    def __init__(self, dim: int, max_seq_len: int, data: Any = None, pos: Any = None):
        _check_max_len("Cache", max_seq_len)
        self.dim = CallableInt(int_arg(dim, type(self).__name__, "dim"))
        self.max_seq_len = CallableInt(max_seq_len)
        self.buf = data
        self.pos = wrap(jnp.zeros((), jnp.int32)) if pos is None else pos

    @staticmethod
    def new(dim: int, max_seq_len: int) -> Cache:
        """Candle's ``Cache::new(dim, max_seq_len)``: an empty cache; the buffer is allocated on the first append."""
        return Cache(dim, max_seq_len)

    @staticmethod
    def preallocated(dim: int, max_seq_len: int, like: Any) -> Cache:
        """A zeroed buffer shaped like ``like`` with ``max_seq_len`` on ``dim``."""
        x = as_array(like)
        _check_source("Cache.preallocated", x, int(dim), None)
        return Cache(dim, max_seq_len, wrap(_alloc(x, int(dim), int(max_seq_len))))

    @_rebind("data, cache = cache.append(x)")
    def append(self, src: Any) -> DataAndCache:
        """Write ``src`` at the current position: ``(data, new_cache)`` with ``data`` the whole buffer.

        Raises eagerly when the new positions do not fit in ``max_seq_len``.
        """
        x = as_array(src)
        buf = None if self.buf is None else self.buf._a
        _check_source("Cache.append", x, self.dim, buf, self.max_seq_len)
        n = x.shape[self.dim]
        if is_eager() and int(self.pos._a) + n > self.max_seq_len:
            raise errors.Msg(
                f"Cache.append: appending {n} positions at {int(self.pos._a)} exceeds max_seq_len"
                f" {self.max_seq_len} (create the cache with a larger max_seq_len)"
            )
        buf = _alloc(x, self.dim, self.max_seq_len) if buf is None else buf
        (buf,), pos = _slice_write((buf,), (x,), self.pos._a, dim=self.dim)
        return DataAndCache((wrap(buf), Cache(self.dim, self.max_seq_len, wrap(buf), wrap(pos))))

    def current_seq_len(self) -> Any:
        """An int eagerly, an int32 scalar Tensor under ``jit``."""
        return int(self.pos._a) if is_eager() else self.pos

    def all_data(self) -> Any:
        """The whole buffer (``max_seq_len`` on ``dim``), or ``None`` before the first append."""
        return self.buf

    def current_data(self) -> Any:
        """The written part of the buffer, or ``None`` when nothing is written; eager only."""
        if self.buf is None:
            return None
        n = _written(self.pos, "Cache.current_data()")
        return None if n == 0 else _narrow(self.buf, self.dim, n)

    def attn_mask(self, q_len: int) -> Any:
        """Bool ``(q_len, max_seq_len)``: query i (the last ``q_len`` appended) sees slots ``<= pos - q_len + i``."""
        return _causal_mask(self.pos._a, q_len, self.max_seq_len, f"{type(self).__name__}.attn_mask")

    @_rebind("cache = cache.reset()")
    def reset(self) -> Cache:
        """A cache at position 0. The buffer is kept (Candle drops it), so ``all_data()`` still returns
        it and a jitted step keeps its shapes; its old contents are masked out and overwritten."""
        return Cache(self.dim, self.max_seq_len, self.buf)


class KvCache(Module):
    """``KvCache::new(dim, max_seq_len)``: keys/values concatenated along ``dim`` up to ``max_seq_len``.

    Buffers are allocated at the first ``append`` (or up front with ``KvCache.preallocated``).
    """

    not_a_tensor_hint = _APPEND_HINT

    def __init__(self, dim: int, max_seq_len: int, k: Any = None, v: Any = None, pos: Any = None):
        _check_max_len("KvCache", max_seq_len)
        self.dim = CallableInt(int_arg(dim, type(self).__name__, "dim"))
        self.max_seq_len = CallableInt(max_seq_len)
        self.k_buf = k
        self.v_buf = v
        self.pos = wrap(jnp.zeros((), jnp.int32)) if pos is None else pos

    @staticmethod
    def new(dim: int, max_seq_len: int) -> KvCache:
        """Candle's ``KvCache::new(dim, max_seq_len)``: an empty cache; buffers are allocated on the first append."""
        return KvCache(dim, max_seq_len)

    @staticmethod
    def preallocated(dim: int, max_seq_len: int, k_like: Any, v_like: Any | None = None) -> KvCache:
        """Allocate buffers shaped like ``k_like`` / ``v_like`` with ``max_seq_len`` on ``dim``."""
        k = as_array(k_like)
        v = k if v_like is None else as_array(v_like)
        _check_max_len("KvCache.preallocated", max_seq_len)
        _check_source("KvCache.preallocated", k, int(dim), None)
        _check_kv("KvCache.preallocated", k, v, int(dim))
        return KvCache(dim, max_seq_len, wrap(_alloc(k, dim, max_seq_len)), wrap(_alloc(v, dim, max_seq_len)))

    @_rebind("(k, v), cache = cache.append(k, v)")
    def append(self, k: Any, v: Any) -> tuple[tuple[Any, Any], KvCache]:
        """Write ``k``/``v`` at the current position: ``((k_all, v_all), new_cache)``.

        ``k_all``/``v_all`` are the full buffers (``max_seq_len`` on ``dim``; unwritten slots are zero):
        mask them with ``new_cache.attn_mask(q_len)``. ``v`` pairs with ``k`` (same dtype and dims;
        the head dim may differ) and both have the buffers' dtype (never cast). Overflow raises
        eagerly; under ``jit`` only a single append longer than ``max_seq_len`` raises (it is static),
        a write past the end is clamped, so size ``max_seq_len`` for the whole generation.
        """
        ka, va = as_array(k), as_array(v)
        _check_source("KvCache.append (keys)", ka, self.dim, None if self.k_buf is None else self.k_buf._a,
                      self.max_seq_len)  # fmt: skip
        _check_kv("KvCache.append", ka, va, self.dim)
        _check_source("KvCache.append (values)", va, self.dim, None if self.v_buf is None else self.v_buf._a)
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
        (kb, vb), pos = _slice_write((kb, vb), (ka, va), pos, dim=self.dim)
        new = KvCache(self.dim, self.max_seq_len, wrap(kb), wrap(vb), wrap(pos))
        return KeysValues((wrap(kb), wrap(vb))), new

    def attn_mask(self, q_len: int) -> Any:
        """Bool ``(q_len, max_seq_len)``: query i (the last ``q_len`` appended) sees slots ``<= pos - q_len + i``."""
        return _causal_mask(self.pos._a, q_len, self.max_seq_len, f"{type(self).__name__}.attn_mask")

    def current_seq_len(self) -> Any:
        """An int eagerly, an int32 scalar Tensor under ``jit``."""
        return int(self.pos._a) if is_eager() else self.pos

    def _narrow(self, buf: Any) -> Any:
        return None if buf is None else _narrow(buf, self.dim, _written(self.pos, "KvCache.k() / .v()"))

    def k(self) -> Any:
        """The written keys (Candle's narrowed view); eager only."""
        return self._narrow(self.k_buf)

    def v(self) -> Any:
        """Candle's ``KvCache::v``: the written part of the values buffer, or ``None``; eager only."""
        return self._narrow(self.v_buf)

    def k_cache(self) -> Cache:
        """The keys as a :class:`Cache` (Candle's ``k_cache()``: ``all_data()``, ``current_data()``,
        ``current_seq_len()``, ``dim()``, ``max_seq_len()``); the buffer itself is ``k_buf``."""
        return Cache(self.dim, self.max_seq_len, self.k_buf, self.pos)

    def v_cache(self) -> Cache:
        """The values as a :class:`Cache` (Candle's ``v_cache()``)."""
        return Cache(self.dim, self.max_seq_len, self.v_buf, self.pos)

    @_rebind("cache = cache.reset()")
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
    mask with ``cache.attn_mask(T)``. ``sdpa(q, cache.transposed_keys(), v_all, mask,
    keys_transposed=True)`` reads the key buffer as stored (the native attention's route).

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
        _check_max_len("DecodeKvCache", max_seq_len)
        if k.dtype != v.dtype:
            raise errors.DTypeMismatchBinaryOp(to_dtype(k.dtype), to_dtype(v.dtype),
                                               "DecodeKvCache.preallocated (k, v)")  # fmt: skip
        b, h = k.shape[:2]
        n, lead = int(max_seq_len), _lead(b, h)
        return DecodeKvCache(b, h, wrap(jnp.zeros_like(k, shape=(*lead, k.shape[3], n))),
                             wrap(jnp.zeros_like(v, shape=(*lead, n, v.shape[3]))))  # fmt: skip

    @property
    def max_seq_len(self) -> int:
        """The number of positions the buffers hold."""
        return int(self.k_buf.shape[-1])

    @_rebind("(k, v), cache = cache.append(k, v)")
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
        _check_kv("DecodeKvCache.append", ka, va, 2)
        if ka.dtype != kb.dtype:
            raise errors.DTypeMismatchBinaryOp(to_dtype(kb.dtype), to_dtype(ka.dtype),
                                               "DecodeKvCache.append (cache, source)")  # fmt: skip
        t = ka.shape[2]
        if t > n:
            raise errors.Msg(f"DecodeKvCache.append: {t} positions are more than max_seq_len {n}")
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

    def transposed_keys(self) -> Any:
        """Every key slot as stored, ``(B, H, D, max_seq_len)``, for ``sdpa(q, cache.transposed_keys(),
        v_all, cache.attn_mask(T), keys_transposed=True)``: the attention reads the buffer in place,
        where the ``(B, H, max_seq_len, D)`` keys that ``append`` returns are a transposed view
        that some attention kernels copy."""
        b, h, (d, n) = self.batch, self.heads, self.k_buf.shape[-2:]
        return wrap(self.k_buf._a.reshape(b, h, d, n))

    def attn_mask(self, q_len: int) -> Any:
        """Bool ``(q_len, max_seq_len)``: query i (the last ``q_len`` appended) sees slots ``<= pos - q_len + i``."""
        return _causal_mask(self.pos._a, q_len, self.max_seq_len, "DecodeKvCache.attn_mask")

    def current_seq_len(self) -> Any:
        """An int eagerly, an int32 scalar Tensor under ``jit``."""
        return int(self.pos._a) if is_eager() else self.pos

    def at_position(self, pos: Any) -> DecodeKvCache:
        """The same buffers at position ``pos`` (later slots are masked out and overwritten); a
        concrete position must lie in ``0..max_seq_len``."""
        p = pos if hasattr(pos, "_a") else wrap(jnp.asarray(pos, jnp.int32))
        if is_eager() and not isinstance(p._a, jax.core.Tracer) and not 0 <= int(p._a) <= self.max_seq_len:
            raise errors.Msg(f"DecodeKvCache.at_position: position {int(p._a)} is outside 0..{self.max_seq_len}"
                             " (the written positions of this cache)")  # fmt: skip
        return DecodeKvCache(self.batch, self.heads, self.k_buf, self.v_buf, p)

    @_rebind("cache = cache.reset()")
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


class _Ring(Module):
    """The sliding-window bookkeeping that :class:`RotatingCache` and :class:`RotatingKvCache` share:
    ``max_seq_len`` ring slots (the window), the absolute position each slot holds now and before the
    last append (``-1``: empty), and the number of positions written (``offset_``)."""

    def _init_ring(self, dim: int, max_seq_len: int, offset: Any, slot_pos: Any, prev_slot_pos: Any) -> None:
        if isinstance(max_seq_len, (bool, np.bool_)) or not isinstance(max_seq_len, (int, np.integer)) \
                or int(max_seq_len) < 1:  # fmt: skip
            raise errors.Msg(f"{type(self).__name__}: max_seq_len (the window) must be >= 1 (an integer), got"
                             f" {max_seq_len!r}")  # fmt: skip
        self.dim = CallableInt(int_arg(dim, type(self).__name__, "dim"))
        self.max_seq_len = CallableInt(max_seq_len)
        try:
            empty = wrap(jnp.full((self.max_seq_len,), -1, jnp.int32))
        except RuntimeError as e:  # XLA's RESOURCE_EXHAUSTED for an impossible window
            raise errors.out_of_memory(type(self).__name__, e) from e
        self.offset_ = wrap(jnp.zeros((), jnp.int32)) if offset is None else offset
        self.slot_pos = empty if slot_pos is None else slot_pos  # absolute position held by each slot, -1 = empty
        self.prev_slot_pos = empty if prev_slot_pos is None else prev_slot_pos  # the same before the last append

    def offset(self) -> Any:
        """The absolute position of the next token (Candle's ``offset()`` is that modulo the window)."""
        return int(self.offset_._a) if is_eager() else self.offset_

    def current_seq_len(self) -> Any:
        """The number of positions appended since the start (or ``reset``), window or not."""
        return self.offset()

    def attn_mask(self, q_len: int, device: Any = None) -> Any:
        """Bool ``(q_len, window + q_len)`` for the data of the last ``append``: key visible iff it
        was written, is not in the future, and lies within the last ``window`` positions.

        Candle's ``attn_mask(seq_len, &device)`` returns a u8 mask with 1 = *masked* over the ring:
        given a device (Candle's call) this raises, since code written for that mask would hide
        exactly the keys it should see."""
        __tracebackhide__ = True
        if device is not None:
            raise errors.Msg(
                f"{type(self).__name__}.attn_mask(q_len) takes no device and returns a bool mask with True ="
                " *visible* over the data append returned (the previous window followed by the new keys);"
                " Candle's attn_mask(seq_len, &device) is a u8 mask with 1 = masked over the ring. Port"
                " `scores.masked_fill(mask, -inf)` as `mask.where_cond(scores, neg_inf)` with"
                " `mask = cache.attn_mask(q_len)`"
            )
        q_len = _len_arg(q_len, f"{type(self).__name__}.attn_mask")
        qpos = self.offset_._a - q_len + jnp.arange(q_len, dtype=jnp.int32)
        kp = jnp.concatenate([self.prev_slot_pos._a, qpos])[None, :]
        qp = qpos[:, None]
        return wrap((kp >= 0) & (kp <= qp) & (kp > qp - self.max_seq_len))

    def positions(self, seq_len: int) -> Any:
        """Absolute positions of the next ``seq_len`` tokens."""
        seq_len = _len_arg(seq_len, f"{type(self).__name__}.positions", "seq_len")
        return wrap(self.offset_._a + jnp.arange(seq_len, dtype=jnp.int32))

    def _write(self, what: str, bufs: tuple[Any, ...], xs: tuple[Any, ...]) -> tuple[Any, ...]:
        """``(alls, rings, offset, slot_pos)`` after writing ``xs`` (allocating the rings on first use)."""
        for b, x in zip(bufs, xs, strict=True):
            _check_source(what, x, self.dim, None if b is None else b._a)
        rings = tuple(_alloc(x, self.dim, self.max_seq_len) if b is None else b._a for b, x in zip(bufs, xs))
        return _ring_write(rings, xs, self.offset_._a, self.slot_pos._a, dim=self.dim)

    def _current(self, buf: Any, what: str) -> Any:
        """The ring's written slots in slot order (all of them once it has wrapped), or ``None``."""
        if buf is None:
            return None
        n = min(_written(self.offset_, what), self.max_seq_len)
        return None if n == 0 else _narrow(buf, self.dim, n)


class RotatingCache(_Ring):
    """Candle's ``RotatingCache::new(dim, max_seq_len)``: one tensor in a ring of ``max_seq_len``
    positions (the window) along ``dim``.

    ``data, cache = cache.append(x)`` returns the ring as it was before this append followed by ``x``
    (``window + T`` along ``dim``), so every new position sees exactly its last ``window``
    positions, even when ``x`` wraps around the ring; ``cache.attn_mask(T)`` is the matching
    ``(T, window + T)`` bool mask. Candle returns the ring after the write (narrowed until it is
    full) and a u8 mask; its ``offset()`` is the write index in the ring, here it is the absolute
    position (see :class:`RotatingKvCache`, built on the same ring).

    >>> import numpy as np
    >>> from candlejax.nn import RotatingCache
    >>> cache = RotatingCache.new(0, 3)
    >>> data, cache = cache.append(np.arange(5, dtype=np.float32))
    >>> data.shape, cache.offset(), cache.current_data().tolist()
    ((8,), 5, [3.0, 4.0, 2.0])
    """

    not_a_tensor_hint = _CACHE_HINT

    def __init__(self, dim: int, max_seq_len: int, data: Any = None, offset: Any = None, slot_pos: Any = None,
                 prev_slot_pos: Any = None):  # fmt: skip
        self._init_ring(dim, max_seq_len, offset, slot_pos, prev_slot_pos)
        self.buf = data

    @staticmethod
    def new(dim: int, max_seq_len: int) -> RotatingCache:
        """Candle's ``RotatingCache::new(dim, max_seq_len)``: an empty ring of ``max_seq_len`` slots on ``dim``."""
        return RotatingCache(dim, max_seq_len)

    @_rebind("data, cache = cache.append(x)")
    def append(self, src: Any) -> DataAndCache:
        """Write ``src`` into the ring: ``(data, new_cache)``, ``data`` the previous ring then ``src``."""
        x = as_array(src)
        (data,), (ring,), off, sp = self._write("RotatingCache.append", (self.buf,), (x,))
        new = RotatingCache(self.dim, self.max_seq_len, wrap(ring), wrap(off), wrap(sp), self.slot_pos)
        return DataAndCache((wrap(data), new))

    def all_data(self) -> Any:
        """The ring (``max_seq_len`` slots on ``dim``), or ``None`` before the first append."""
        return self.buf

    def current_data(self) -> Any:
        """The written slots in ring order (all of them once it has wrapped), or ``None``; eager only."""
        return self._current(self.buf, "RotatingCache.current_data()")

    @_rebind("cache = cache.reset()")
    def reset(self) -> RotatingCache:
        """An empty cache at position 0 (the ring buffer is kept; its old contents are masked out)."""
        return RotatingCache(self.dim, self.max_seq_len, self.buf)


class RotatingKvCache(_Ring):
    """A sliding-window ring buffer of ``max_seq_len`` (the window) positions (Candle's ``RotatingKvCache``).

    ``(k_all, v_all), cache = cache.append(k, v)`` returns the previous window followed by the new
    keys (``window + T`` along ``dim``), so every new query sees exactly its last ``window`` keys,
    even when a chunk wraps around; ``cache.attn_mask(T)`` is the matching ``(T, window + T)`` mask.
    Keys and values share one ring (:class:`RotatingCache` holds one tensor).
    """

    not_a_tensor_hint = _APPEND_HINT

    def __init__(self, dim: int, max_seq_len: int, k: Any = None, v: Any = None, offset: Any = None,
                 slot_pos: Any = None, prev_slot_pos: Any = None):  # fmt: skip
        self._init_ring(dim, max_seq_len, offset, slot_pos, prev_slot_pos)
        self.k_buf = k
        self.v_buf = v

    @staticmethod
    def new(dim: int, max_seq_len: int) -> RotatingKvCache:
        """Candle's ``RotatingKvCache::new(dim, max_seq_len)``: empty key/value rings of ``max_seq_len`` slots."""
        return RotatingKvCache(dim, max_seq_len)

    @_rebind("(k, v), cache = cache.append(k, v)")
    def append(self, k: Any, v: Any) -> tuple[tuple[Any, Any], RotatingKvCache]:
        """Candle's ``RotatingKvCache::append``: write ``k``/``v`` into the rings: ``((k_all, v_all), new_cache)``."""
        ka, va = as_array(k), as_array(v)
        _check_source("RotatingKvCache.append", ka, self.dim, None)
        _check_kv("RotatingKvCache.append", ka, va, self.dim)
        (k_all, v_all), (kk, vv), off, sp = self._write("RotatingKvCache.append", (self.k_buf, self.v_buf), (ka, va))
        new = RotatingKvCache(self.dim, self.max_seq_len, wrap(kk), wrap(vv), wrap(off), wrap(sp), self.slot_pos)
        return KeysValues((wrap(k_all), wrap(v_all))), new

    def k_cache(self) -> RotatingCache:
        """The keys' ring as a :class:`RotatingCache` (Candle's ``k_cache()``)."""
        return RotatingCache(self.dim, self.max_seq_len, self.k_buf, self.offset_, self.slot_pos, self.prev_slot_pos)

    def v_cache(self) -> RotatingCache:
        """The values' ring as a :class:`RotatingCache` (Candle's ``v_cache()``)."""
        return RotatingCache(self.dim, self.max_seq_len, self.v_buf, self.offset_, self.slot_pos, self.prev_slot_pos)

    def k(self) -> Any:
        """The written key slots in ring order (Candle's ``k()``), or ``None``; eager only."""
        return self._current(self.k_buf, "RotatingKvCache.k()")

    def v(self) -> Any:
        """The written value slots in ring order, or ``None``; eager only."""
        return self._current(self.v_buf, "RotatingKvCache.v()")

    @_rebind("cache = cache.reset()")
    def reset(self) -> RotatingKvCache:
        """Candle's ``RotatingKvCache::reset``: a cache at position 0 (the buffers are kept)."""
        return RotatingKvCache(self.dim, self.max_seq_len, self.k_buf, self.v_buf)


class ConcatKvCache(Module):
    """Candle's ``ConcatKvCache::new(dim)``: keys/values concatenated along ``dim``, no size limit.

    ``(k_all, v_all), cache = cache.append(k, v)``; every step has a new shape (a recompile under
    ``jit``), so use it eagerly or prefer :class:`KvCache` / :class:`StackedKvCache` in jitted loops.
    """

    not_a_tensor_hint = _APPEND_HINT

    def __init__(self, dim: int, k: Any = None, v: Any = None):
        self.dim = CallableInt(int_arg(dim, type(self).__name__, "dim"))
        self.k_buf = k
        self.v_buf = v

    @staticmethod
    def new(dim: int) -> ConcatKvCache:
        """Candle's ``ConcatKvCache::new(dim)``: an empty cache that concatenates along ``dim``."""
        return ConcatKvCache(dim)

    @_rebind("(k, v), cache = cache.append(k, v)")
    def append(self, k: Any, v: Any) -> tuple[tuple[Any, Any], ConcatKvCache]:
        """Candle's ``ConcatKvCache::append``: concatenate ``k``/``v`` to the cached ones: ``((k_all, v_all),
        new_cache)``."""
        ka, va = as_array(k), as_array(v)
        kb, vb = (None, None) if self.k_buf is None else (self.k_buf._a, self.v_buf._a)
        _check_source("ConcatKvCache.append (keys)", ka, self.dim, kb)
        _check_kv("ConcatKvCache.append", ka, va, self.dim)
        _check_source("ConcatKvCache.append (values)", va, self.dim, vb)
        if kb is not None:
            if not single_device() and is_eager():  # Candle's Tensor::cat: one device
                check_devices("cat", (kb, ka, vb, va))
            ka = jnp.concatenate([kb, ka], axis=self.dim)
            va = jnp.concatenate([vb, va], axis=self.dim)
        return KeysValues((wrap(ka), wrap(va))), ConcatKvCache(self.dim, wrap(ka), wrap(va))

    def current_seq_len(self) -> int:
        """Candle's ``ConcatKvCache::current_seq_len``: the cached length along ``dim`` (0 when empty)."""
        return 0 if self.k_buf is None else int(self.k_buf.shape[self.dim])

    def is_empty(self) -> bool:
        """Whether nothing has been appended (Candle's ``ConcatKvCache::is_empty``)."""
        return self.k_buf is None

    def k(self) -> Any:
        """Candle's ``ConcatKvCache::k``: the cached keys, or ``None`` when empty."""
        return self.k_buf

    def v(self) -> Any:
        """Candle's ``ConcatKvCache::v``: the cached values, or ``None`` when empty."""
        return self.v_buf

    def into_inner(self) -> tuple[Any, Any] | None:
        """Candle's ``into_inner()``: ``(k, v)``, or ``None`` when nothing has been appended."""
        return None if self.k_buf is None else (self.k_buf, self.v_buf)

    @_rebind("cache = cache.reset()")
    def reset(self) -> ConcatKvCache:
        """Candle's ``ConcatKvCache::reset``: an empty cache on the same ``dim``."""
        return ConcatKvCache(self.dim)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _grown_buffers(k: Any, v: Any, slots: int, keep: int) -> tuple[Any, Any]:
    """:meth:`StackedKvCache.grow`'s buffers: ``slots`` slots, the first ``keep`` of ``k`` / ``v``."""

    def one(a: Any) -> Any:
        out = jnp.zeros((*a.shape[:3], slots, a.shape[4]), a.dtype)
        return lax.dynamic_update_slice_in_dim(out, a[:, :, :, :keep], 0, axis=3)

    return one(k), one(v)


class StackedKvCache(Module):
    """Every layer's keys and values in two preallocated buffers ``k``/``v`` of shape ``(layers, B,
    Hkv, max_seq_len, head_dim)`` (raw arrays: the pytree leaves a jitted step donates).

    ``k_all, v_all, cache = cache.update(layer, k, v, pos)`` writes ``k``/``v`` (``(B, T, Hkv, D)``,
    or ``(B, Hkv, T, D)`` with ``layout="bhsd"``) at slots ``pos .. pos + T`` of ``layer`` (in place
    when donated) and returns that layer's whole ``(B, Hkv, max_seq_len, D)`` buffers, for
    ``ops.sdpa(q, k_all, v_all, do_causal=True, offset=pos, kv_layout="bhsd")``, which also hides the
    slots not written yet (so a cache is reused from position 0 without clearing it). ``layer`` and
    ``pos`` may be traced int32 scalars. A concrete ``layer`` / ``pos`` whose write does not fit raises;
    traced, a write past ``max_seq_len`` is clamped by XLA: check the sizes before (``fits``), or
    :meth:`grow` the cache. ``k``/``v`` must have the buffers' dtype (never cast).
    """

    not_a_tensor_hint = _APPEND_HINT

    def __init__(self, k: Any, v: Any):
        self.k = k
        self.v = v

    @classmethod
    def new(cls, num_layers: int, batch: int, num_kv_heads: int, max_seq_len: int, head_dim: int,
            dtype: Any = DType.F32, device: Any = None) -> StackedKvCache:  # fmt: skip
        """Zeroed buffers ``(num_layers, batch, num_kv_heads, max_seq_len, head_dim)`` in ``dtype`` on ``device``."""
        batch = int_arg(batch, "StackedKvCache", "batch")
        max_seq_len = int_arg(max_seq_len, "StackedKvCache", "max_seq_len")
        if max_seq_len < 1 or batch < 1:
            raise errors.Msg(f"StackedKvCache: batch {batch} and max_seq_len {max_seq_len} must be >= 1")
        dt = to_dtype(dtype).np
        shape = check_elem_count((int(num_layers), batch, int(num_kv_heads), max_seq_len, int(head_dim)),
                                 "StackedKvCache")
        dev = Device.coerce(device).jax_device
        return cls(_zeros(shape, dt, dev), _zeros(shape, dt, dev))

    @property
    def max_seq_len(self) -> int:
        """The number of positions each layer's buffers hold."""
        return int(self.k.shape[3])

    @property
    def batch(self) -> int:
        """The batch size of the buffers."""
        return int(self.k.shape[1])

    @property
    def num_layers(self) -> int:
        """The number of layers the buffers hold."""
        return int(self.k.shape[0])

    def fits(self, pos: int, seq_len: int) -> bool:
        """Whether ``seq_len`` positions written at ``pos`` fit in the buffers."""
        return 0 <= int(pos) and int(pos) + int(seq_len) <= self.max_seq_len

    def update(self, layer: Any, k: Any, v: Any, pos: Any, layout: str = "bshd") -> tuple[Any, Any, StackedKvCache]:
        """Write ``k``/``v`` at ``pos`` of ``layer``: ``(k_all, v_all, new_cache)``, ``k_all`` ``(B, Hkv, max_seq_len,
        D)``."""
        ck, cv = self._write(layer, k, v, pos, layout, "StackedKvCache.update")
        k_all = lax.dynamic_index_in_dim(ck, jnp.asarray(unwrap(layer), jnp.int32), 0, keepdims=False)
        v_all = lax.dynamic_index_in_dim(cv, jnp.asarray(unwrap(layer), jnp.int32), 0, keepdims=False)
        return k_all, v_all, type(self)(ck, cv)  # a subclass (a model's Cache) stays itself

    def attend(self, layer: Any, q: Any, k: Any, v: Any, pos: Any, *, window: int | None = None,
               scale: float | None = None, layout: str = "bshd") -> tuple[Any, StackedKvCache]:  # fmt: skip
        """Write ``k``/``v`` at ``pos`` of ``layer`` (as :meth:`update`) and attend to them: ``(y, new_cache)``,
        ``y`` the causal attention of ``q`` (``(B, T, Hq, D)``, or ``(B, Hq, T, D)`` with ``layout="bhsd"``,
        as ``k``/``v``; ``Hq`` a multiple of ``Hkv``) over the layer's slots up to each query's position,
        in ``q``'s layout. The same as ``k_all, v_all, cache = cache.update(layer, k, v, pos, layout)``
        then ``ops.sdpa(q, k_all, v_all, do_causal=True, offset=pos, window=window, scale=scale,
        layout=layout, kv_layout="bhsd")``, except that a decoding step (``T == 1``) in f32 on an AVX2 or
        AVX-512 CPU reads the layer's slots in place in native code
        (:func:`candlejax.nn.ops.stacked_layer_sdpa`). PyTorch: ``k_cache[layer, :, :, pos:pos + T] = k``
        (and ``v``), then ``F.scaled_dot_product_attention`` over the layer's slots with a causal mask."""
        ck, cv = self._write(layer, k, v, pos, layout, "StackedKvCache.attend")
        y = stacked_layer_sdpa(q, ck, cv, unwrap(layer), unwrap(pos), window, scale, layout)
        return y, type(self)(ck, cv)

    def _write(self, layer: Any, k: Any, v: Any, pos: Any, layout: str, what: str) -> tuple[Any, Any]:
        """The buffers with keys/values ``k``/``v`` (``(B, T, Hkv, D)``, or ``(B, Hkv, T, D)`` with
        ``layout="bhsd"``) written at ``pos`` of ``layer``; ``what`` names the caller in errors."""
        ka, va = as_array(k), as_array(v)
        if ka.ndim != 4 or va.ndim != 4:
            raise errors.Msg(f"{what}: k {tuple(ka.shape)} and v {tuple(va.shape)} must be rank 4"
                             f" ({'(B, T, Hkv, D)' if layout == 'bshd' else '(B, Hkv, T, D)'})")  # fmt: skip
        if layout == "bshd":
            ka, va = ka.transpose(0, 2, 1, 3), va.transpose(0, 2, 1, 3)
        elif layout != "bhsd":
            raise errors.Msg(f"{what}: layout must be 'bshd' or 'bhsd', got {layout!r}")
        self._check_update(ka, va, layer, pos, what)
        zero = jnp.zeros((), jnp.int32)
        at = (jnp.asarray(unwrap(layer), jnp.int32), zero, zero, jnp.asarray(unwrap(pos), jnp.int32), zero)
        ck = lax.dynamic_update_slice(self.k, ka.astype(self.k.dtype)[None], at)
        cv = lax.dynamic_update_slice(self.v, va.astype(self.v.dtype)[None], at)
        return ck, cv

    def _check_update(self, ka: Any, va: Any, layer: Any, pos: Any, caller: str = "StackedKvCache.update") -> None:
        """Static checks of ``(B, Hkv, T, D)`` keys/values against the buffers, then, when ``layer`` /
        ``pos`` are concrete (not traced), that the write fits: XLA would clamp it silently."""
        b, h, n, d = self.k.shape[1:]
        for name, x, buf in (("k", ka, self.k), ("v", va, self.v)):
            if (x.shape[0], x.shape[1], x.shape[3]) != (b, h, d) or x.shape[2] != ka.shape[2]:
                raise errors.Msg(
                    f"{caller}: {name} of shape (B, Hkv, T, D) {tuple(x.shape)} does not fit the"
                    f" cache's batch {b}, {h} kv heads, head_dim {d} (and T of k {ka.shape[2]})"
                )
            if x.dtype != buf.dtype:
                raise errors.DTypeMismatchBinaryOp(to_dtype(buf.dtype), to_dtype(x.dtype),
                                                   f"{caller} ({name} cache, {name})")  # fmt: skip
        t = ka.shape[2]
        if t > n:
            raise errors.Msg(f"{caller}: {t} positions are more than the {n} slots (max_seq_len)")
        for what, val, hi in (("layer", layer, self.k.shape[0] - 1), ("pos", pos, n - t)):
            val = unwrap(val)
            if isinstance(val, jax.core.Tracer):
                continue
            if isinstance(val, (bool, np.bool_, float, np.floating)) or np.ndim(val) != 0:
                raise errors.Msg(f"{caller}: {what} must be an integer scalar, got {val!r}")
            p = int(read_to_host(val))  # one explicit scalar read, as KvCache's eager overflow check
            if not 0 <= p <= hi:
                raise errors.Msg(
                    f"{caller}: layer {p} is out of range for {self.k.shape[0]} layers" if what == "layer"
                    else f"{caller}: writing {t} positions at pos {p} (slots {p}..{p + t - 1}) does"
                    f" not fit the {n} slots 0..{n - 1} (check with fits(pos, T), or grow() the cache)"
                )  # fmt: skip

    def grow(self, max_seq_len: int, keep: int | None = None) -> StackedKvCache:
        """A cache of ``max_seq_len`` slots holding this one's first ``keep`` (default: all that
        fit) slots, zero after them; one program, and the buffers keep this cache's placement (on
        a mesh, their heads stay split)."""
        slots = int_arg(max_seq_len, "StackedKvCache.grow", "max_seq_len")
        fit = min(self.max_seq_len, slots)
        n = fit if keep is None else int_arg(keep, "StackedKvCache.grow", "keep")
        if not 0 <= n <= fit:
            raise errors.Msg(f"StackedKvCache.grow: keep={n} slots, but {fit} fit (the cache holds"
                             f" {self.max_seq_len}, the new one {slots})")  # fmt: skip
        return type(self)(*_grown_buffers(self.k, self.v, slots, n))

    @staticmethod
    def slots_for(positions: int, limit: int, smallest: int = 256) -> int:
        """The slots of a cache sized for ``positions``: the next power of two, at least
        ``smallest``, at most ``limit``. A cache that grows by these sizes compiles its steps
        for a few sizes only (each size is a program)."""
        return min(max(int(smallest), 1 << max(int(positions) - 1, 0).bit_length()), int(limit))
