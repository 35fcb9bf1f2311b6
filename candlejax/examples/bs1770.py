"""``candle_examples::bs1770``: loudness measurement after ITU-R BS.1770-4 (K-weighting, 100 ms
windows, gated integrated loudness), Candle's copy of Ruud van Asseldonk's ``bs1770`` crate.

requires: numpy, scipy.signal (a dependency of jax), candlejax.errors
provides: ``Power``, ``Windows100ms``, ``ChannelLoudnessMeter``, ``reduce_stereo``,
``reduce_stereo_in_place``, ``gated_mean``, ``k_weighting``

Integrated loudness of a stereo signal (samples in [-1, 1])::

    left, right = ChannelLoudnessMeter(48_000), ChannelLoudnessMeter(48_000)
    left.push(pcm[:, 0]); right.push(pcm[:, 1])
    power = reduce_stereo(left.as_100ms_windows(), right.as_100ms_windows())
    lufs = (gated_mean(power) or Power(0.0)).loudness_lkfs()

Candle filters and sums in f32 with compensated sums; this filters and sums in f64 (scipy's
``sosfilt``), so results agree to about 1e-4 LU.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np

from candlejax import errors

__all__ = [
    "ChannelLoudnessMeter", "Power", "Windows100ms", "gated_mean", "k_weighting", "reduce_stereo",
    "reduce_stereo_in_place",
]  # fmt: skip


class Power(NamedTuple):
    """The mean square of K-weighted samples over a window (Candle's ``Power(f32)``; ``p[0]`` or
    ``p.value`` is Candle's ``p.0``). Full scale is [-1, 1].

    >>> round(Power.from_lkfs(-23.0).loudness_lkfs(), 9)
    -23.0
    """

    value: float

    @staticmethod
    def from_lkfs(lkfs: float) -> Power:
        """The power of a loudness in LKFS (LUFS): the inverse of :meth:`loudness_lkfs`."""
        return Power(10.0 ** ((lkfs + 0.691) * 0.1))

    def loudness_lkfs(self) -> float:
        """``-0.691 + 10 log10(power)`` (BS.1770-4, equation 2); ``-inf`` for zero power."""
        return -0.691 + 10.0 * math.log10(self.value) if self.value > 0 else -math.inf


class Windows100ms:
    """Powers of consecutive, non-overlapping 100 ms windows (``inner``: a list of :class:`Power`)."""

    def __init__(self, inner: Iterable[Power] = ()) -> None:
        self.inner: list[Power] = [Power(float(p[0])) for p in inner]

    @staticmethod
    def new() -> Windows100ms:
        """An empty list of 100 ms window powers."""
        return Windows100ms()

    def as_ref(self) -> Windows100ms:
        """Candle borrows here; Python passes the same object."""
        return self

    def as_mut(self) -> Windows100ms:
        """candle-examples' ``Windows100ms::as_mut``: the windows themselves (lists are mutable)."""
        return self

    def len(self) -> int:
        """The number of windows."""
        return len(self.inner)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Power]:
        return iter(self.inner)

    def __repr__(self) -> str:
        return f"Windows100ms({len(self.inner)} windows)"

    def _array(self) -> np.ndarray:
        return np.fromiter((p.value for p in self.inner), np.float64, len(self.inner))


def k_weighting(sample_rate_hz: float) -> np.ndarray:
    """The BS.1770-4 pre-filter at ``sample_rate_hz`` as two biquads (scipy ``sos`` rows
    ``[b0, b1, b2, 1, a1, a2]``): the high shelf (head effects), then the high pass (RLB).

    Derived for any rate with pyloudnorm's parameters, as Candle does; at 48 kHz they are the
    coefficients printed in the standard (Tables 1 and 2).
    """
    rate = float(sample_rate_hz)
    gain_db, q, fc = 3.999843853973347, 0.7071752369554196, 1681.974450955533
    k = math.tan(math.pi * fc / rate)
    vh = 10.0 ** (gain_db / 20.0)
    vb = vh**0.4996667741545416
    a0 = 1.0 + k / q + k * k
    shelf = [(vh + vb * k / q + k * k) / a0, 2.0 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0,
             1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0]  # fmt: skip
    q, fc = 0.5003270373238773, 38.13547087602444
    k = math.tan(math.pi * fc / rate)
    a0 = 1.0 + k / q + k * k
    high_pass = [1.0, -2.0, 1.0, 1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0]
    return np.array([shelf, high_pass], np.float64)


class ChannelLoudnessMeter:
    """K-weights one channel and measures the power of each complete 100 ms window.

    :meth:`push` may be called repeatedly: the filter state and an unfinished window carry over, so
    pushing in pieces equals pushing everything at once.
    """

    def __init__(self, sample_rate_hz: int) -> None:
        if int(sample_rate_hz) < 10:
            raise errors.Audio(f"ChannelLoudnessMeter: sample rate must be at least 10 Hz, got {sample_rate_hz}")
        self.samples_per_100ms = int(sample_rate_hz) // 10
        self._sos = k_weighting(int(sample_rate_hz))
        self._zi = np.zeros((2, 2), np.float64)
        self._square_sum = 0.0  # of the unfinished window
        self._count = 0
        self.windows = Windows100ms()

    @staticmethod
    def new(sample_rate_hz: int) -> ChannelLoudnessMeter:
        """candle-examples' ``ChannelLoudnessMeter::new(sample_rate_hz)``."""
        return ChannelLoudnessMeter(sample_rate_hz)

    def push(self, samples: Iterable[float] | Any) -> None:
        """Feed samples in [-1, 1] (an array, a Tensor, a list or any iterable of floats)."""
        from scipy.signal import sosfilt

        if isinstance(samples, Iterator):
            x = np.fromiter(samples, np.float64)
        else:
            x = np.asarray(samples, np.float64)
        if x.ndim != 1:
            raise errors.Audio(f"ChannelLoudnessMeter.push: expected one channel (n,), got shape {list(x.shape)}")
        if x.size == 0:
            return
        z, self._zi = sosfilt(self._sos, x, zi=self._zi)
        sq = z * z
        n, need = self.samples_per_100ms, self.samples_per_100ms - self._count
        if sq.size < need:
            self._square_sum += float(sq.sum())
            self._count += sq.size
            return
        rest = sq[need:]
        full = rest.size // n
        sums = [self._square_sum + float(sq[:need].sum()), *rest[: full * n].reshape(full, n).sum(axis=1)]
        self.windows.inner.extend(Power(float(s) / n) for s in sums)
        tail = rest[full * n :]
        self._square_sum, self._count = float(tail.sum()), tail.size

    def as_100ms_windows(self) -> Windows100ms:
        """The complete 100 ms windows so far."""
        return self.windows

    def into_100ms_windows(self) -> Windows100ms:
        """candle-examples' ``ChannelLoudnessMeter::into_100ms_windows``: the power of each 100 ms window."""
        return self.windows


def _check_same_length(left: Windows100ms, right: Windows100ms) -> None:
    if len(left) != len(right):
        raise errors.Audio(f"reduce_stereo: channels must have the same length, got {len(left)} and {len(right)}")


def reduce_stereo(left: Windows100ms, right: Windows100ms) -> Windows100ms:
    """The power of a stereo pair: the unweighted sum of the two channels' powers per window
    (BS.1770 weights left and right by 1). A mono signal played on two speakers is passed twice."""
    _check_same_length(left, right)
    return Windows100ms(Power(lp.value + rp.value) for lp, rp in zip(left.inner, right.inner))


def reduce_stereo_in_place(left: Windows100ms, right: Windows100ms) -> None:
    """:func:`reduce_stereo` stored in ``left``."""
    _check_same_length(left, right)
    left.inner[:] = [Power(lp.value + rp.value) for lp, rp in zip(left.inner, right.inner)]


def gated_mean(windows_100ms: Windows100ms) -> Power | None:
    """The gated integrated loudness of BS.1770-4 as a power: the mean over 400 ms blocks (four
    100 ms windows, 75 % overlap) louder than -70 LKFS, then over those of the kept blocks louder
    than their mean's loudness minus 10 LU. ``None`` when no block passes (silence, or shorter than
    400 ms)."""
    p = windows_100ms._array()
    if p.size < 4:
        return None
    blocks = 0.25 * (p[:-3] + p[1:-2] + p[2:-1] + p[3:])
    blocks = blocks[blocks > Power.from_lkfs(-70.0).value]
    if blocks.size == 0:
        return None
    relative = Power.from_lkfs(Power(float(blocks.mean())).loudness_lkfs() - 10.0).value
    blocks = blocks[blocks > relative]
    if blocks.size == 0:
        return None
    return Power(float(blocks.mean()))
