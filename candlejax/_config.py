"""Process-wide JAX settings candlejax applies at import, before any array exists.

* CPU async dispatch off: eager CPU ops then run on the calling thread instead of being handed to
  a worker thread, which halves small-op latency and removes its 8-60 µs process-to-process
  spread (see docs/performance.md). ``CANDLEJAX_ASYNC_DISPATCH=1`` keeps JAX's default (on);
  ``JAX_CPU_ENABLE_ASYNC_DISPATCH=0/1`` sets it explicitly (JAX itself does not read that
  variable for this flag, so candlejax applies it).
"""

from __future__ import annotations

import os

import jax

_OFF = ("0", "false", "no", "off")


def env_off(name: str) -> bool:
    """Whether ``$name`` turns a default-on switch off: ``0``, ``false``, ``no`` or ``off`` (any case,
    spaces ignored). Unset, empty or anything else: on."""
    return os.environ.get(name, "").strip().lower() in _OFF


def env_on(name: str) -> bool:
    """Whether ``$name`` turns a default-off switch on: set, not empty and not an :func:`env_off` word."""
    return os.environ.get(name, "").strip().lower() not in ("", *_OFF)


def apply() -> None:
    explicit = os.environ.get("JAX_CPU_ENABLE_ASYNC_DISPATCH")
    if explicit is not None:
        value = env_on("JAX_CPU_ENABLE_ASYNC_DISPATCH")
    elif env_on("CANDLEJAX_ASYNC_DISPATCH"):
        return
    else:
        value = False
    try:
        jax.config.update("jax_cpu_enable_async_dispatch", value)
    except Exception:
        pass
