"""``candle_examples::wav``: write mono 16-bit PCM WAV files.

requires: numpy, candlejax.errors
provides: ``write_pcm_as_wav``

Candle's module only writes (``write_pcm_as_wav``); to read sound files use
:func:`candlejax.examples.audio.pcm_decode` or :func:`candlejax.audio.read_audio`.
"""

from __future__ import annotations

import os
import struct
from typing import Any, BinaryIO

import numpy as np

from candlejax import errors

__all__ = ["write_pcm_as_wav"]


def _to_i16(samples: Any) -> np.ndarray:
    """Candle's ``Sample::to_i16``: floats are clamped to [-1, 1], scaled by 32767 and truncated
    toward zero, in f64 for f64 samples and in f32 for the other float types (Candle's ``f32``
    impl: the f32 product rounds before the truncation); ``i16`` samples pass unchanged."""
    x = np.asarray(samples)
    if x.ndim != 1:
        raise errors.Audio(f"write_pcm_as_wav: expected mono samples (n,), got shape {errors.fmt_shape(x.shape)}")
    if np.issubdtype(x.dtype, np.floating) or x.dtype.name == "bfloat16":
        ft = np.float64 if x.dtype == np.float64 else np.float32
        x = np.nan_to_num(x.astype(ft), nan=0.0)  # Rust's `as i16` maps NaN to 0
        return (np.clip(x, ft(-1.0), ft(1.0)) * ft(32767.0)).astype(np.int16)
    if np.issubdtype(x.dtype, np.integer) or x.size == 0:
        if x.size and (x.min() < -32768 or x.max() > 32767):
            raise errors.Audio("write_pcm_as_wav: integer samples must fit in i16 (-32768..32767)")
        return x.astype(np.int16)
    raise errors.Audio(f"write_pcm_as_wav: expected float or i16 samples, got dtype {x.dtype}")


def write_pcm_as_wav(w: BinaryIO | str | os.PathLike[str], samples: Any, sample_rate: int) -> None:
    """Write ``samples`` (floats in [-1, 1] or i16, a 1-D array, list or Tensor) as a mono 16-bit
    PCM WAV file at ``sample_rate`` Hz: the canonical 44-byte header, then little-endian i16 data.
    ``w`` is a binary file object (Candle's ``Write``) or a path (written atomically: samples that
    cannot be written leave an existing file as it was)."""
    data = _to_i16(samples).astype("<i2").tobytes()
    if isinstance(w, str | os.PathLike):
        from candlejax.io import atomic_file

        with atomic_file(w) as f:
            write_pcm_as_wav(f, np.frombuffer(data, "<i2"), sample_rate)
        return
    rate = int(sample_rate)
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)  # PCM, mono, 2 bytes a frame
    w.write(header + fmt + b"data" + struct.pack("<I", len(data)) + data)
