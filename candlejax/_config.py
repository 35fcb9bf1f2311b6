"""Process-wide JAX settings candlejax applies at import, before any array exists.

* CPU async dispatch off: eager CPU ops then run on the calling thread instead of being handed to
  a worker thread, which halves small-op latency and removes its 8-60 µs process-to-process
  spread (see docs/performance.md). Keep JAX's default by setting
  ``JAX_CPU_ENABLE_ASYNC_DISPATCH`` or ``CANDLEJAX_ASYNC_DISPATCH=1`` yourself.
"""

from __future__ import annotations

import os

import jax


def apply() -> None:
    if "JAX_CPU_ENABLE_ASYNC_DISPATCH" in os.environ:
        return
    if os.environ.get("CANDLEJAX_ASYNC_DISPATCH", "0") not in ("", "0", "false", "False"):
        return
    try:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    except Exception:
        pass
