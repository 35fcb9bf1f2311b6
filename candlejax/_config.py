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

_FALSE = ("", "0", "false", "False", "FALSE", "no", "off")


def apply() -> None:
    explicit = os.environ.get("JAX_CPU_ENABLE_ASYNC_DISPATCH")
    if explicit is not None:
        value = explicit.strip() not in _FALSE
    elif os.environ.get("CANDLEJAX_ASYNC_DISPATCH", "0").strip() not in _FALSE:
        return
    else:
        value = False
    try:
        jax.config.update("jax_cpu_enable_async_dispatch", value)
    except Exception:
        pass
