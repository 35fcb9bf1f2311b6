"""Audio input: sound files through ``soundfile`` (libsndfile), resampling through ``soxr``.

requires: numpy, soundfile, soxr, candlejax.errors
provides: ``read_audio``, ``resample``, ``AudioStream``, ``PcmSource``
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from candlejax import errors
from candlejax.optional import require

__all__ = ["AudioStream", "PcmSource", "read_audio", "resample"]


def _check_finite(pcm: np.ndarray, where: str, offset: int, rate: int) -> None:
    if pcm.size and not np.isfinite(pcm).all():
        i = int(np.flatnonzero(~np.isfinite(pcm.reshape(pcm.shape[0], -1)).any(axis=1))[0])
        raise errors.Audio(
            f"audio: {where}: non-finite sample (NaN or inf) at sample {offset + i}"
            f" (t = {(offset + i) / rate:.3f} s)"
        )


def _check_rate(v: Any, what: str, where: str) -> None:
    """A finite positive number (not a bool or a string): soxr loops forever on a NaN / inf rate."""
    if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating) or not 0 < v < math.inf:
        raise errors.Audio(f"audio: {where}: {what} must be a positive number, got {v!r}")


def _check_span(start: Any, n: Any, where: str) -> tuple[int, int]:
    """``read(start, n)``'s arguments as ints: integers, ``n >= 0`` (``start`` may be negative)."""
    for v in (start, n):
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise errors.Audio(f"audio: {where}: read(start, n) takes integer sample counts, got ({start!r}, {n!r})")
    if n < 0:
        raise errors.Audio(f"audio: {where}: read(start, n) needs n >= 0, got n = {n}")
    return int(start), int(n)


def _mono(block: np.ndarray) -> np.ndarray:
    """Average the channels: ``(n, ch)`` -> ``(n,)`` float32. For stereo this is ``ffmpeg -ac 1``'s
    ``(L + R) / 2``; ffmpeg weights 5.1 by its layout (centre first, no LFE), Candle's ``pcm_decode``
    keeps channel 0."""
    return (block.mean(axis=1) if block.ndim == 2 else block).astype(np.float32, copy=False)


def resample(pcm: Any, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample mono float32 ``pcm`` from ``orig_sr`` to ``target_sr`` Hz (soxr, high quality)."""
    x = np.asarray(pcm)
    if not np.issubdtype(x.dtype, np.floating):  # int16 PCM would come out 32768x too loud
        raise errors.Audio(f"audio: resample: expected float samples in [-1, 1], got dtype {x.dtype}"
                           " (integer PCM: divide by 32768 for int16)")  # fmt: skip
    x = x.astype(np.float32, copy=False)
    if x.ndim != 1:
        raise errors.Audio(f"audio: resample expects mono samples (n,), got shape {list(x.shape)}")
    _check_rate(orig_sr, "orig_sr (the input rate)", "resample")
    _check_rate(target_sr, "target_sr (the output rate)", "resample")
    _check_finite(x, "resample", 0, orig_sr)
    if orig_sr == target_sr or x.size == 0:
        return x
    soxr = require("soxr", "resampling audio")
    return soxr.resample(x, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def _open(path: str) -> Any:
    sf = require("soundfile", "reading audio files")

    if os.path.isdir(path):
        raise errors.AudioIsADirectory("audio", path, message=f"audio: {path}: is a directory, not a sound file")
    if not os.path.exists(path):
        raise errors.AudioNoSuchFile("audio", path, message=f"audio: {path}: no such file")
    if not os.access(path, os.R_OK):
        raise errors.AudioNoPermission("audio", path, message=f"audio: {path}: permission denied")
    if os.path.getsize(path) == 0:
        raise errors.Audio(f"audio: {path}: empty file (0 bytes), not a sound file")
    try:
        f = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise errors.Audio(f"audio: {path}: not a readable sound file (WAV, FLAC, OGG...): {e}") from None
    if f.frames == 0:
        f.close()
        raise errors.Audio(f"audio: {path}: the file holds 0 samples")
    if f.samplerate <= 0 or f.channels <= 0:
        f.close()
        raise errors.Audio(f"audio: {path}: bad header (rate {f.samplerate}, channels {f.channels})")
    return f


def read_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """The whole file as mono float32 at ``sample_rate`` Hz (channels averaged, soxr resampling).

    Raises :class:`candlejax.errors.Audio` for a missing, empty or unreadable file, 0 samples, or
    NaN/inf samples. For long files use :class:`AudioStream`, which reads block by block.
    """
    path = errors.path_arg(path, "read_audio")
    _check_rate(sample_rate, "sample_rate", "read_audio")
    f = _open(path)
    with f:
        data = f.read(dtype="float32", always_2d=True)
        rate = f.samplerate
    _check_finite(data, path, 0, rate)
    return resample(_mono(data), rate, sample_rate)


class PcmSource:
    """In-memory mono float32 samples with :class:`AudioStream`'s interface."""

    def __init__(self, pcm: Any, sample_rate: int = 16000, name: str = "pcm"):
        x = np.asarray(pcm)
        if not np.issubdtype(x.dtype, np.floating):  # (before the channel mean, which makes floats)
            raise errors.Audio(f"audio: {name}: expected float samples in [-1, 1], got dtype {x.dtype}")
        if x.ndim == 2 and x.shape[0] in (1, 2) and x.shape[1] > 2:
            x = x.mean(axis=0)
        if x.ndim != 1:
            raise errors.Audio(f"audio: {name}: expected mono samples (n,), got shape {list(x.shape)}")
        if x.size == 0:
            raise errors.Audio(f"audio: {name}: 0 samples")
        _check_finite(x, name, 0, sample_rate)
        self.pcm, self.sample_rate, self.name = x.astype(np.float32, copy=False), sample_rate, name
        self.n_samples = x.shape[0]

    def read(self, start: int, n: int) -> np.ndarray:
        """Samples ``[start, start + n)``, zero-padded past the end."""
        start, n = _check_span(start, n, self.name)
        out = np.zeros(n, np.float32)
        if start < self.n_samples:
            chunk = self.pcm[max(start, 0) : start + n]
            out[max(-start, 0) : max(-start, 0) + chunk.shape[0]] = chunk[: n - max(-start, 0)]
        return out

    def close(self) -> None:
        pass


class AudioStream:
    """A sound file read forward in blocks as mono float32 at ``sample_rate`` Hz (soxr streaming).

    ``read(start, n)`` returns samples ``[start, start + n)`` (zero-padded past the end) and forgets
    everything before ``start``: memory stays at about one window plus one block, whatever the
    file's length. ``n_samples`` is the length after resampling (from the header).
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int = 16000, block_seconds: float = 10.0):
        self.path = errors.path_arg(path, "AudioStream")
        self.name = self.path
        for what, v in (("sample_rate", sample_rate), ("block_seconds", block_seconds)):
            _check_rate(v, what, "AudioStream")
        self._f = _open(self.path)
        try:
            self.file_rate, self.sample_rate = int(self._f.samplerate), int(sample_rate)
            # soxr's output length, floor(n * out / in + 1/2), in exact integers
            self.n_samples = (2 * self._f.frames * self.sample_rate + self.file_rate) // (2 * self.file_rate)
            self._block = max(1, int(block_seconds * self.file_rate))
            self._buf = np.zeros(0, np.float32)
            self._buf_start = 0  # absolute index (at sample_rate) of _buf[0]
            self._read_in = 0  # input frames consumed
            self._eof = False
            self._rs = None
            if self.file_rate != self.sample_rate:
                soxr = require("soxr", "resampling audio")
                self._rs = soxr.ResampleStream(self.file_rate, self.sample_rate, 1, dtype="float32", quality="HQ")
        except BaseException:
            self._f.close()  # the traceback keeps this frame (and so the file) alive
            raise

    def _pull(self) -> None:
        data = self._f.read(self._block, dtype="float32", always_2d=True)
        _check_finite(data, self.path, self._read_in, self.file_rate)
        self._read_in += data.shape[0]
        last = data.shape[0] < self._block
        x = _mono(data)
        if self._rs is not None:
            x = self._rs.resample_chunk(x, last=last).astype(np.float32, copy=False)
        self._buf = np.concatenate([self._buf, x])
        self._eof = last

    def read(self, start: int, n: int) -> np.ndarray:
        start, n = _check_span(start, n, self.path)
        if start < self._buf_start:
            raise errors.Audio(f"audio: {self.path}: stream is forward-only (sample {start} already dropped)")
        while not self._eof and self._buf_start + self._buf.shape[0] < start + n:
            self._pull()
        lo = start - self._buf_start
        out = np.zeros(n, np.float32)
        chunk = self._buf[lo : lo + n]
        out[: chunk.shape[0]] = chunk
        self._buf = self._buf[lo:].copy()
        self._buf_start = start
        if self._eof:  # the exact length once the whole file has been read
            self.n_samples = self._buf_start + self._buf.shape[0]
        return out

    def buffered_samples(self) -> int:
        """Samples held in memory now."""
        return int(self._buf.shape[0])

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
