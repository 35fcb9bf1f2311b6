"""Shape buckets of the models' eager forwards: inputs padded on the host to a few shapes, so that a new
sentence length or batch size reuses executables compiled for its bucket instead of compiling its own."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from candlejax.tensor import unwrap


def eager_length_bucket(s: int, limit: int) -> int:
    """The padded length of an eager ``s``-token forward: 16, 32, 64, ... (at most ``limit``)."""
    return max(s, min(max(16, 1 << (s - 1).bit_length()), limit))


def batch_bucket(b: int) -> int:
    """The padded batch of an eager forward: the next power of two."""
    return 1 << (b - 1).bit_length()


def pad_rows_and_length(a: Any, rows: int, length: int, device: Any) -> Any:
    """``(B, S)`` ids / mask (or a ``(B, S, S)`` mask) zero-padded on the host to ``rows`` rows (copies of
    the last row: rows never see each other) and ``length`` on every sequence axis (masked keys), placed
    on ``device``."""
    a = np.asarray(unwrap(a))
    b, s = a.shape[:2]
    out = np.zeros((rows, *[length] * (a.ndim - 1)), a.dtype)
    out[(slice(0, b), *[slice(0, s)] * (a.ndim - 1))] = a
    out[b:] = out[b - 1]
    return jax.device_put(out, device)
