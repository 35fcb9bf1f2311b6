"""Seeded random generators, one per device, and the explicit-key path for traced code.

Candle seeds a device (``device.set_seed(42)``); JAX needs keys. Eagerly, ``Tensor.rand`` /
``randn`` / ``rand_like`` draw from the device's generator, a ``(key, counter)`` pair advanced on
every draw, so the same seed gives the same numbers in every fresh process. Under ``jax.jit`` /
``grad`` / ``vmap`` pass ``key=`` explicitly: drawing from the stateful generator while tracing
raises :class:`candlejax.errors.TracingError` instead of baking one key into the program.

Code written Candle's way (no key arguments) can still run under ``jax.jit``: inside
``with candlejax.random.key_scope(key):`` every draw without ``key=`` takes a fresh key derived from
``key`` (``fold_in(key, i)`` for the i-th draw), so the traced function is a pure function of the
key it is given::

    @jax.jit
    def noisy(x, key):
        with random.key_scope(key):
            return x + Tensor.randn(0.0, 1.0, x.shape, x.device)

A device's generator is shared by all threads: a draw reads and advances its counter atomically,
so concurrent draws never repeat one (which thread gets which draw follows scheduling; a
:func:`key_scope`, which is per thread, gives a thread numbers of its own).

Keys are threefry2x32 keys built from the full 64-bit seed, so ``set_seed(2**40)`` and
``set_seed(0)`` differ whether or not x64 mode is on.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from candlejax import errors
from candlejax._jax_private import is_eager

__all__ = [
    "DEFAULT_SEED", "as_key", "get_seed", "get_state", "key", "key_scope", "next_key", "next_key_parts", "release",
    "reserve", "set_seed", "set_state", "split",
]  # fmt: skip

DEFAULT_SEED = 299792458

_state: dict[Any, list[Any]] = {}  # device -> [seed, base key, counter]
#: makes a draw's counter read-and-advance atomic across threads (Candle locks its CUDA generator:
#: cuda_backend/device.rs ``curand: Arc<Mutex<CudaRng>>``), so two threads never share a draw
_lock = threading.Lock()
_scopes = threading.local()  # .stack: list of [key, counter] pushed by key_scope


def key(seed: int) -> jax.Array:
    """A threefry2x32 key from a seed in ``[0, 2**64)`` (all 64 bits used, x64 mode or not)."""
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise errors.Msg(f"random key: seed must be in [0, 2**64), got {seed}")
    data = np.array([seed >> 32, seed & 0xFFFFFFFF], dtype=np.uint32)
    return jax.random.wrap_key_data(data, impl="threefry2x32")


_key_from_seed = key


def _dev_key(device: Any) -> Any:
    return (device.kind, device.ordinal) if device is not None else ("cpu", 0)


def set_seed(device: Any, seed: int) -> None:
    """Seed ``device``'s generator; ``Device.set_seed(seed)`` calls this."""
    if isinstance(seed, bool) or not hasattr(seed, "__index__"):  # a float or a string was truncated / raw
        raise errors.NotAnInteger("set_seed", "seed", seed)
    seed = seed.__index__()
    if not 0 <= seed < 2**64:
        raise errors.Msg(f"set_seed: seed must be in [0, 2**64), got {seed}")
    _state[_dev_key(device)] = [seed, None, 0]


def get_seed(device: Any) -> int:
    """The seed last set on ``device`` (Candle's ``Device::get_current_seed``)."""
    return _state.setdefault(_dev_key(device), [DEFAULT_SEED, None, 0])[0]


def next_key(device: Any, op: str) -> jax.Array:
    """A fresh key: from the innermost :func:`key_scope`, else from ``device``'s generator.

    Without a scope it raises :class:`TracingError` while tracing.
    """
    stack = getattr(_scopes, "stack", None)
    if stack:
        top = stack[-1]
        k = jax.random.fold_in(top[0], top[1])
        top[1] += 1
        return k
    if not is_eager():
        raise errors.TracingError(
            f"{op}: cannot draw from the device's random generator inside jax.jit/grad/vmap (the key"
            f" would be baked into the compiled program); pass key=jax.random.key(seed) or a key"
            f" argument of the traced function instead, or wrap the code in"
            f" `with candlejax.random.key_scope(key):`"
        )
    base, c = _take(device)
    return jax.random.fold_in(base, c)


def _take(device: Any) -> tuple[jax.Array, int]:
    """``device``'s base key and the next draw's counter, advancing it (atomically across threads)."""
    with _lock:
        st = _state.setdefault(_dev_key(device), [DEFAULT_SEED, None, 0])
        if st[1] is None:
            st[1] = _key_from_seed(st[0])
        c = st[2]
        st[2] += 1
        return st[1], c


def next_key_parts(device: Any, op: str) -> tuple[jax.Array, int | None]:
    """``(key, counter)`` for a draw: the caller folds ``counter`` into ``key`` inside its own jitted
    sampler (one dispatch instead of two). ``counter`` is None when ``key`` is already final
    (inside a :func:`key_scope`). Same numbers as ``fold_in(*next_key_parts(...))`` == :func:`next_key`.
    """
    stack = getattr(_scopes, "stack", None)
    if stack or not is_eager():
        return next_key(device, op), None
    return _take(device)


def reserve(device: Any) -> tuple[int, int]:
    """``(seed, counter)`` of ``device``'s next draw, advancing the generator past it (atomically), for
    a compiled step that folds the counter in itself; :func:`release` gives it back if unused."""
    with _lock:
        st = _state.setdefault(_dev_key(device), [DEFAULT_SEED, None, 0])
        c = st[2]
        st[2] += 1
        return st[0], c


def release(device: Any, seed: int, counter: int) -> None:
    """Give back the draw :func:`reserve` returned, when nothing was drawn (or seeded) since."""
    with _lock:
        st = _state.get(_dev_key(device))
        if st is not None and st[0] == seed and st[2] == counter + 1:
            st[2] = counter


def get_state(device: Any = None) -> tuple[int, int]:
    """``(seed, counter)`` of ``device``'s generator, for checkpoints."""
    st = _state.setdefault(_dev_key(device), [DEFAULT_SEED, None, 0])
    return st[0], st[2]


def set_state(device: Any, state: tuple[int, int]) -> None:
    """Restore what :func:`get_state` returned."""
    seed, counter = state
    _state[_dev_key(device)] = [int(seed), None, int(counter)]


def as_key(key: Any) -> jax.Array:
    """Accept a typed key, a raw uint32 key (``jax.random.PRNGKey``), or an int seed."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return _key_from_seed(int(key))
    if hasattr(key, "_a"):
        key = key._a
    if hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if not hasattr(key, "dtype") or key.dtype != np.uint32:
        raise errors.Msg(
            f"expected a random key (jax.random.key(seed), a uint32 PRNGKey or an int seed), got {type(key).__name__}"
        )
    return jax.random.wrap_key_data(key)


@contextlib.contextmanager
def key_scope(k: Any) -> Iterator[None]:
    """Within the block, draws without ``key=`` derive their keys from ``k`` (works under jit).

    The i-th draw in the block uses ``fold_in(k, i)``; scopes nest (the innermost wins) and are
    per thread.
    """
    stack = getattr(_scopes, "stack", None)
    if stack is None:
        stack = _scopes.stack = []
    stack.append([as_key(k), 0])
    try:
        yield
    finally:
        stack.pop()


def split(k: Any, num: int = 2) -> jax.Array:
    """``jax.random.split`` accepting anything :func:`as_key` does."""
    return jax.random.split(as_key(k), num)
