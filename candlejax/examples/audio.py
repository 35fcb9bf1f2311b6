"""``candle_examples::audio``: decode sound files, resample, and normalise loudness.

requires: numpy, soundfile, candlejax.audio (soxr), candlejax.examples.bs1770, candlejax.tensor
provides: ``pcm_decode``, ``resample``, ``normalize_loudness``

Candle decodes with symphonia and resamples with rubato; here libsndfile (``soundfile``: WAV, FLAC,
OGG/Vorbis, MP3 ...) decodes and soxr resamples (:func:`candlejax.audio.resample`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from candlejax import errors
from candlejax.audio import resample as _soxr_resample
from candlejax.examples import bs1770
from candlejax.tensor import Tensor

__all__ = ["normalize_loudness", "pcm_decode", "resample"]


def pcm_decode(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """``(samples, sample_rate)``: the first channel of the file as float32 in [-1, 1] at the file's
    own rate (integer samples are divided by 2^(bits-1), as symphonia converts them).

    Raises :class:`candlejax.errors.Audio` naming the file when it is missing or not a sound file.
    """
    import soundfile as sf

    p = os.fspath(path)
    if not os.path.isfile(p):
        raise errors.Audio(f"pcm_decode: no such file {p!r}")
    try:
        data, rate = sf.read(p, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise errors.Audio(f"pcm_decode: {p!r} is not a readable sound file ({e})") from None
    return np.ascontiguousarray(data[:, 0]), int(rate)


def resample(pcm_in: Any, sr_in: int, sr_out: int) -> np.ndarray:
    """Mono float32 samples from ``sr_in`` to ``sr_out`` Hz: ``round(n * sr_out / sr_in)`` samples,
    no delay (soxr, high quality). Candle's rubato FFT resampler pads its last chunk and delays the
    signal, so its output is a little longer and shifted."""
    return _soxr_resample(np.asarray(pcm_in), sr_in, sr_out)


def normalize_loudness(wav: Tensor, sample_rate: int, loudness_compressor: bool) -> Tensor:
    """Scale a mono ``(n,)`` float waveform to -14 LUFS (BS.1770 gated loudness), then ``tanh`` it
    if ``loudness_compressor`` (audiocraft's ``normalize_loudness``). A near-silent waveform (RMS
    below 2e-3), an empty one, or one with no block above the gates is returned unchanged."""
    if wav.rank != 1:
        raise errors.UnexpectedNumberOfDims(1, wav.rank, wav.shape, "normalize_loudness")
    x = np.asarray(wav, np.float32)
    if x.size == 0:
        return wav
    energy = float(np.sqrt(np.mean(np.square(x), dtype=np.float32)))
    if energy < 2e-3:
        return wav
    meter = bs1770.ChannelLoudnessMeter(sample_rate)
    meter.push(x)
    power = bs1770.gated_mean(meter.as_100ms_windows())
    if power is None:
        return wav
    gain = 10.0 ** ((-14.0 - power.loudness_lkfs()) / 20.0)
    out = wav * gain
    return out.tanh() if loudness_compressor else out
