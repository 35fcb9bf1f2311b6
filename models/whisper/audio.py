"""Whisper's log-mel spectrogram (~ candle-transformers' ``whisper/audio.rs``).

Same formula as OpenAI's ``whisper.audio.log_mel_spectrogram`` and transformers'
``WhisperFeatureExtractor``: 400-point periodic Hann window, hop 160, centred (reflect-padded)
STFT, power spectrum, Slaney mel filters (computed, as librosa and transformers do), the last frame
dropped, ``log10(max(mel, 1e-10))``, floored at ``max - 8``, then ``(x + 4) / 4``. Computed on the
CPU in float64 with numpy (as Candle does it on the CPU), returned as an f32 Tensor.

>>> mel = pcm_to_mel(model.config, pcm)       # Tensor (n_mels, max(len(pcm) // 160, 3000))
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from candlejax import errors
from candlejax.tensor import Tensor

__all__ = [
    "CHUNK_LENGTH", "HOP_LENGTH", "N_FFT", "N_FRAMES", "N_SAMPLES", "SAMPLE_RATE", "log_mel_spectrogram_",
    "log_mel_max", "log_mel_window", "mel_filters", "pad_or_trim", "pcm_to_mel",
]  # fmt: skip

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30 s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a window

def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, np.float64)
    mel = 3.0 * f / 200.0
    log = f >= 1000.0
    return np.where(log, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * (27.0 / np.log(6.4)), mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), 200.0 * m / 3.0)


def mel_filters(n_mels: int = 80, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Slaney-normalised triangular mel filters ``(n_mels, 1 + n_fft // 2)`` (librosa's ``filters.mel``),
    read-only: the last few tables are cached."""
    return _mel_table(n_mels, n_fft, sample_rate)


@functools.lru_cache(maxsize=8)
def _mel_table(n_mels: int, n_fft: int, sample_rate: int) -> np.ndarray:
    fft_freqs = np.linspace(0, sample_rate // 2, 1 + n_fft // 2)
    pts = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
    diff = np.diff(pts)
    slopes = pts[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up)) * (2.0 / (pts[2 : n_mels + 2] - pts[:n_mels]))[None, :]
    fb = np.ascontiguousarray(fb.T)
    fb.flags.writeable = False  # shared by every caller: scaling it in place would change them all
    return fb


def _power_frames(padded: np.ndarray, n_frames: int) -> np.ndarray:
    """``(n_frames, 1 + N_FFT // 2)`` power spectra of the frames of an already padded signal."""
    window = np.hanning(N_FFT + 1)[:-1]  # periodic Hann
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:n_frames]
    spec = np.fft.rfft(frames * window, axis=-1)
    return spec.real**2 + spec.imag**2


def _log10_mel(power: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """``log10(max(mel, 1e-10))``, ``(frames, n_mels)`` float64, before the ``max - 8`` floor."""
    return np.log10(np.maximum(power @ filters.T, 1e-10))


def _log_mel(power: np.ndarray, filters: np.ndarray, floor: float | None = None) -> np.ndarray:
    log = _log10_mel(power, filters)
    if floor is None:
        floor = log.max() - 8.0 if log.size else 0.0
    log = np.maximum(log, floor)
    return ((log + 4.0) / 4.0).T.astype(np.float32)


def _check_pcm(samples: Any, what: str) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1:
        raise errors.Audio(f"{what}: expected mono samples (n,), got shape {list(x.shape)}")
    if x.size == 0:
        raise errors.Audio(f"{what}: 0 samples")
    if not np.issubdtype(x.dtype, np.floating):
        raise errors.Audio(f"{what}: expected float samples in [-1, 1], got dtype {x.dtype}")
    if not np.isfinite(x).all():
        i = int(np.flatnonzero(~np.isfinite(x))[0])
        raise errors.Audio(f"{what}: non-finite sample (NaN or inf) at sample {i} (t = {i / SAMPLE_RATE:.3f} s)")
    return x.astype(np.float64)


def pcm_to_mel(cfg: Any, samples: Any, filters: Any = None) -> Tensor:
    """``audio::pcm_to_mel(cfg, samples, filters)``: 16 kHz mono samples -> f32 Tensor ``(n_mels, frames)``.

    ``cfg`` is the model's :class:`~candlejax.models.whisper.Config` (its ``num_mel_bins``) or an int;
    ``filters`` defaults to :func:`mel_filters`. A clip shorter than 30 s is padded with zero samples
    to one window, as transformers' ``WhisperFeatureExtractor`` pads it (its features exactly, 3000
    frames; Candle's ``pcm_to_mel`` also gives 3000 frames below 15 s), so that
    ``model.encoder.forward(mel.unsqueeze(0))`` gives ``(1, 1500, d_model)``. Longer audio gives
    ``len // 160`` frames: take 3000-frame windows of it (:func:`pad_or_trim` on the samples, or
    ``mel.narrow(1, seek, 3000)``).
    """
    n_mels = int(cfg if isinstance(cfg, int) else cfg.num_mel_bins)
    x = _check_pcm(samples, "pcm_to_mel")
    if x.shape[0] < N_SAMPLES:  # one 30 s window of zero-padded audio, as WhisperFeatureExtractor
        x = np.pad(x, (0, N_SAMPLES - x.shape[0]))
    if filters is None:
        fb = mel_filters(n_mels)
    else:
        fb = np.asarray(filters, np.float64)
        if fb.size != n_mels * (1 + N_FFT // 2):
            raise errors.Audio(
                f"pcm_to_mel: filters of shape {list(fb.shape)} ({fb.size} values); {n_mels} mels need"
                f" ({n_mels}, {1 + N_FFT // 2}), e.g. mel_filters({n_mels})"
            )
        fb = fb.reshape(n_mels, 1 + N_FFT // 2)
    padded = np.pad(x, N_FFT // 2, mode="reflect")
    return Tensor.from_numpy(_log_mel(_power_frames(padded, x.shape[0] // HOP_LENGTH), fb))


def log_mel_spectrogram_(samples: Any, filters: Any, fft_size: int, fft_step: int, n_mel: int,
                         speed_up: bool = False) -> np.ndarray:  # fmt: skip
    """Candle's ``audio::log_mel_spectrogram_`` (whisper.cpp's spectrogram), which its ``pcm_to_mel``
    calls with ``(N_FFT, HOP_LENGTH, num_mel_bins, false)``: a flat array of ``n_mel * n_len``
    values, mel-major, in the samples' float dtype.

    Unlike :func:`pcm_to_mel` (transformers' features) the frames are not centred: frame ``i``
    starts at sample ``i * fft_step``; the samples are zero-padded to ``n_len`` frames, ``len //
    fft_step`` rounded up to a multiple of 1500 plus 1500 more; the power of bins ``1 .. fft_size/2
    - 1`` is doubled (their mirror bins added); ``filters`` is read as ``(n_mel, n_fft)`` row-major,
    ``n_fft = 1 + fft_size / 2`` (``speed_up``: ``1 + fft_size / 4`` over averaged pairs of bins).
    Then ``log10(max(mel, 1e-10))``, floored at the maximum minus 8, and ``x / 4 + 1``.
    """
    x = np.asarray(samples)
    if not np.issubdtype(x.dtype, np.floating):  # Candle's `&[T: Float]`: f32 / f64 samples in [-1, 1]
        raise errors.Audio(f"log_mel_spectrogram_: expected float samples in [-1, 1], got dtype {x.dtype}"
                           " (integer PCM: divide by 32768 for int16)")  # fmt: skip
    out_dtype = x.dtype
    x = x.astype(np.float64).reshape(-1)
    fft_size, fft_step, n_mel = int(fft_size), int(fft_step), int(n_mel)
    if fft_size < 1 or fft_step < 1 or n_mel < 1:
        raise errors.Audio(
            f"log_mel_spectrogram_: fft_size {fft_size}, fft_step {fft_step}, n_mel {n_mel} must be >= 1"
        )
    n_fft = 1 + fft_size // 4 if speed_up else 1 + fft_size // 2
    fb = np.asarray(filters, np.float64).reshape(-1)
    if fb.size < n_mel * n_fft:
        raise errors.Audio(f"log_mel_spectrogram_: {fb.size} filter values, {n_mel} x {n_fft} needed")
    fb = fb[: n_mel * n_fft].reshape(n_mel, n_fft)
    pad = 100 * CHUNK_LENGTH // 2  # 1500 frames
    n_len = x.shape[0] // fft_step
    n_len = (n_len + pad - 1) // pad * pad + pad
    x = np.pad(x, (0, n_len * fft_step - x.shape[0] + fft_size))  # zeros past the end of every frame
    hann = 0.5 * (1.0 - np.cos(2.0 * np.pi * np.arange(fft_size) / fft_size))
    frames = np.lib.stride_tricks.sliding_window_view(x, fft_size)[::fft_step][:n_len]
    spec = np.fft.fft(frames * hann, axis=-1)
    power = spec.real**2 + spec.imag**2  # (n_len, fft_size)
    half = fft_size // 2
    if half > 1:
        power[:, 1:half] += power[:, fft_size - 1 : fft_size - half : -1]
    if speed_up:
        power = 0.5 * (power[:, 0 : 2 * n_fft : 2] + power[:, 1 : 2 * n_fft : 2])
    mel = np.log10(np.maximum(fb @ power[:, :n_fft].T, 1e-10))  # (n_mel, n_len)
    mel = np.maximum(mel, mel.max() - 8.0) / 4.0 + 1.0
    return mel.reshape(-1).astype(out_dtype)


def pad_or_trim(samples: Any, length: int = N_SAMPLES, *, axis: int = -1) -> np.ndarray:
    """Zero-pad or cut ``axis`` (the last by default) to ``length`` (OpenAI's ``pad_or_trim``): samples
    ``(n,)``, channels ``(c, n)`` or a mel ``(n_mels, frames)`` with ``length=N_FRAMES``. f32 out.

    The samples must be floats (integer PCM such as int16 is refused: divide by 32768 first, as
    :func:`pcm_to_mel` also requires).
    """
    x = np.asarray(samples)
    if not np.issubdtype(x.dtype, np.floating):
        raise errors.Audio(f"pad_or_trim: expected float samples in [-1, 1], got dtype {x.dtype}"
                           " (integer PCM: divide by 32768 for int16)")  # fmt: skip
    if x.ndim == 0:
        raise errors.Audio("pad_or_trim: expected an array of samples, got a scalar")
    if int(length) < 0:
        raise errors.Audio(f"pad_or_trim: length must be >= 0, got {length}")
    if not -x.ndim <= axis < x.ndim:
        raise errors.Audio(f"pad_or_trim: axis {axis} is out of range for shape {list(x.shape)}")
    x, length = x.astype(np.float32, copy=False), int(length)
    n = x.shape[axis]
    if n >= length:
        return np.take(x, np.arange(length), axis=axis)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - n)
    return np.pad(x, pad)


def _padded_window(source: Any, start: int, n_frames: int) -> np.ndarray:
    half = N_FFT // 2
    n = (n_frames - 1) * HOP_LENGTH + N_FFT
    if start < half:  # the frames before sample `half` see the reflected start of the file
        x = source.read(0, n - half + start).astype(np.float64)
        return np.concatenate([x[1 : half - start + 1][::-1], x])
    return source.read(start - half, n).astype(np.float64)


def log_mel_window(source: Any, start: int, n_mels: int = 80, n_frames: int = N_FRAMES, *,
                   floor: float | None = None) -> np.ndarray:  # fmt: skip
    """Mel frames ``[start // 160, ... + n_frames)`` of a stream (``source.read(start, n)``), f32 numpy.

    Each frame sees the same samples as in a spectrogram of the whole file (real left context,
    reflection at the file's start, zeros past its end). ``floor``: the ``log10`` floor, the whole
    file's :func:`log_mel_max` minus 8 for OpenAI's features; ``None`` floors at the window's own
    maximum minus 8.
    """
    power = _power_frames(_padded_window(source, start, n_frames), n_frames)
    return _log_mel(power, mel_filters(n_mels), floor)


def log_mel_max(source: Any, n_mels: int = 80) -> float:
    """The largest ``log10`` mel value of a whole stream, read forward in 30 s windows (memory: one
    window): OpenAI's ``log_spec.max()``, whose ``max - 8`` floors every window of the file."""
    best, start = -10.0, 0  # log10(1e-10): the value of silence
    while start < max(source.n_samples, 1):
        power = _power_frames(_padded_window(source, start, N_FRAMES), N_FRAMES)
        best = max(best, float(_log10_mel(power, mel_filters(n_mels)).max()))
        start += N_SAMPLES
    return best
