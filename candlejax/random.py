"""Seeded random generators, one per device, and the explicit-key path for traced code.

Candle seeds a device (``device.set_seed(42)``); JAX needs keys. Eagerly, ``Tensor.rand`` /
``randn`` / ``rand_like`` draw from the device's generator, a ``(key, counter)`` pair advanced on
every draw, so the same seed gives the same numbers in every fresh process. Under ``jax.jit`` /
``grad`` / ``vmap`` pass ``key=`` explicitly: drawing from the stateful generator while tracing
raises :class:`candlejax.errors.TracingError` instead of baking one key into the program.
"""

from __future__ import annotations

from typing import Any

import jax

from candlejax import errors
from candlejax._dispatch import is_eager

DEFAULT_SEED = 299792458

_state: dict[Any, list[Any]] = {}  # device -> [seed, base key, counter]


def _dev_key(device: Any) -> Any:
    return (device.kind, device.ordinal) if device is not None else ("cpu", 0)


def set_seed(device: Any, seed: int) -> None:
    """Seed ``device``'s generator; ``Device.set_seed(seed)`` calls this."""
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise errors.Msg(f"set_seed: seed must be in [0, 2**64), got {seed}")
    _state[_dev_key(device)] = [seed, None, 0]


def get_seed(device: Any) -> int:
    return _state.setdefault(_dev_key(device), [DEFAULT_SEED, None, 0])[0]


def next_key(device: Any, op: str) -> jax.Array:
    """A fresh key from ``device``'s generator; raises while tracing."""
    if not is_eager():
        raise errors.TracingError(
            f"{op}: cannot draw from the device's random generator inside jax.jit/grad/vmap (the key"
            f" would be baked into the compiled program); pass key=jax.random.key(seed) or a key"
            f" argument of the traced function instead"
        )
    st = _state.setdefault(_dev_key(device), [DEFAULT_SEED, None, 0])
    if st[1] is None:
        st[1] = jax.random.key(st[0] % (2**63))
    k = jax.random.fold_in(st[1], st[2])
    st[2] += 1
    return k


def get_state(device: Any = None) -> tuple[int, int]:
    """``(seed, counter)`` of ``device``'s generator, for checkpoints."""
    st = _state.setdefault(_dev_key(device), [DEFAULT_SEED, None, 0])
    return st[0], st[2]


def set_state(device: Any, state: tuple[int, int]) -> None:
    """Restore what :func:`get_state` returned."""
    seed, counter = state
    _state[_dev_key(device)] = [int(seed), None, int(counter)]


def as_key(key: Any) -> jax.Array:
    """Accept a typed key, a raw uint32 key, or an int seed."""
    if isinstance(key, int):
        return jax.random.key(key)
    if hasattr(key, "_a"):
        key = key._a
    if hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)
