"""Candle's sampling random stream: Rust ``rand``'s ``StdRng`` (ChaCha with 12 rounds) seeded by
``seed_from_u64``, and the ``f32`` uniform that ``WeightedIndex`` draws from it.

requires: numpy, jax.numpy, candlejax.errors
provides: ``stdrng_key``, ``chacha_block``, ``stream_u32``, ``unit_f32``, ``STREAM_KEY_WORDS``, and on the
host ``StdRng`` (``seed_from_u64``, ``next_u32``) and ``weighted_index`` (rand's ``WeightedIndex<f32>`` draw).

Candle's ``LogitsProcessor`` draws each token with one ``next_u32`` of a ``StdRng`` (rand 0.9), so
draw ``n`` of a seed is word ``n`` of the ChaCha12 key stream: block ``n // 16`` (the block counter),
word ``n % 16``. Being a pure function of ``(seed, n)``, it runs inside a compiled decode step as
well as on the host, and the same seed gives Candle's tokens (for the same probabilities).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from candlejax import errors

#: a stream key: the 8 ChaCha key words of a seed, then the draw index as (low, high) u32 words
STREAM_KEY_WORDS = 10
#: ChaCha's constant words ("expand 32-byte k")
_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)
#: StdRng is ChaCha12: 6 double rounds
STDRNG_DOUBLE_ROUNDS = 6


def stdrng_key(seed: int) -> np.ndarray:
    """The 8 key words of ``StdRng::seed_from_u64(seed)``: rand_core's PCG32 output expanded to the
    32-byte seed, read as little-endian u32 words (host-made, no program compiled)."""
    state = int(seed) & 0xFFFFFFFFFFFFFFFF
    mul, inc, mask = 6364136223846793005, 11634580027462260723, 0xFFFFFFFFFFFFFFFF
    words = []
    for _ in range(8):
        state = (state * mul + inc) & mask
        xorshifted = (((state >> 18) ^ state) >> 27) & 0xFFFFFFFF
        rot = state >> 59
        words.append(((xorshifted >> rot) | (xorshifted << ((32 - rot) & 31))) & 0xFFFFFFFF)
    return np.array(words, np.uint32)


def _rotl(x: Any, n: int, xp: Any) -> Any:
    return (x << xp.uint32(n)) | (x >> xp.uint32(32 - n))


def chacha_block(key: Any, counter_lo: Any, counter_hi: Any, double_rounds: int = STDRNG_DOUBLE_ROUNDS) -> list[Any]:
    """The 16 output words of one ChaCha block (rand_chacha's layout: key in words 4-11, the 64-bit
    block counter in words 12-13, a zero nonce in 14-15). ``key`` is a sequence of 8 u32 words, each
    a scalar or an array (numpy or jax: every word has the shape of ``counter_lo``)."""
    xp = np if isinstance(counter_lo, np.ndarray | np.integer) else jnp
    zero = xp.zeros_like(counter_lo)
    init = [zero + xp.uint32(c) for c in _SIGMA] + [zero + k for k in key] + [counter_lo, counter_hi, zero, zero]
    x = list(init)

    def quarter(a: int, b: int, c: int, d: int) -> None:
        x[a] = x[a] + x[b]
        x[d] = _rotl(x[d] ^ x[a], 16, xp)
        x[c] = x[c] + x[d]
        x[b] = _rotl(x[b] ^ x[c], 12, xp)
        x[a] = x[a] + x[b]
        x[d] = _rotl(x[d] ^ x[a], 8, xp)
        x[c] = x[c] + x[d]
        x[b] = _rotl(x[b] ^ x[c], 7, xp)

    with np.errstate(over="ignore"):
        for _ in range(double_rounds):
            quarter(0, 4, 8, 12)
            quarter(1, 5, 9, 13)
            quarter(2, 6, 10, 14)
            quarter(3, 7, 11, 15)
            quarter(0, 5, 10, 15)
            quarter(1, 6, 11, 12)
            quarter(2, 7, 8, 13)
            quarter(3, 4, 9, 14)
        return [a + b for a, b in zip(x, init)]


def stream_u32(key: Any, index: Any) -> Any:
    """Word ``index`` (u32, any shape; below 2**36) of the ChaCha12 stream of ``key`` (8 words):
    the ``index``-th ``next_u32`` of Candle's ``StdRng``. jax.numpy, jit-able."""
    index = jnp.asarray(index, jnp.uint32)
    block = index >> jnp.uint32(4)
    words = jnp.stack(chacha_block([key[i] for i in range(8)], block, jnp.zeros_like(block)), axis=-1)
    return jnp.take_along_axis(words, (index & jnp.uint32(15))[..., None].astype(jnp.int32), axis=-1)[..., 0]


def unit_f32(word: Any) -> Any:
    """rand's ``UniformFloat<f32>`` value in ``[0, 1)`` from one u32: the top 23 bits as the mantissa
    of a float in ``[1, 2)``, minus 1."""
    bits = (jnp.asarray(word, jnp.uint32) >> jnp.uint32(9)) | jnp.uint32(0x3F800000)
    return jnp.asarray(bits).view(jnp.float32) - jnp.float32(1.0)


class StdRng:
    """Rust rand's ``StdRng::seed_from_u64(seed)`` on the host: ``next_u32`` returns the words of the
    ChaCha12 stream in order (the stream :func:`stream_u32` computes, word ``n`` for the ``n``-th call).
    ``index`` is the number of words drawn so far."""

    def __init__(self, seed: int) -> None:
        seed = int(seed)
        if not 0 <= seed < 2**64:
            raise errors.Msg(f"StdRng::seed_from_u64: seed must be in [0, 2**64), got {seed}")
        self.key = stdrng_key(seed)
        self.index = 0
        self._block: tuple[int, list[int]] | None = None

    @classmethod
    def seed_from_u64(cls, seed: int) -> StdRng:
        """rand: ``StdRng::seed_from_u64(seed)``."""
        return cls(seed)

    def next_u32(self) -> int:
        """rand: ``RngCore::next_u32``, the next word of the stream."""
        block = self.index >> 4
        if self._block is None or self._block[0] != block:
            words = chacha_block(self.key, np.uint32(block & 0xFFFFFFFF), np.uint32(block >> 32))
            self._block = (block, [int(w) for w in words])
        word = self._block[1][self.index & 15]
        self.index += 1
        return word


def weighted_index(weights: Any, word: int) -> int:
    """rand's ``WeightedIndex::<f32>::new(weights)`` sampled with the u32 ``word`` (its ``next_u32``),
    on the host: the running sums of ``weights`` in index order (f32), the point ``u * total`` with
    ``u`` the ``UniformFloat<f32>`` of ``word``, and the number of running sums (the total excluded)
    at or below it (``partition_point(|w| *w <= chosen)``). Raises, as rand does, for weights that
    are negative, NaN or infinite, or all zero."""
    w = np.asarray(weights, np.float32).reshape(-1)
    if w.size == 0 or not np.isfinite(w).all() or (w < 0).any():
        raise errors.Msg("WeightedIndex: the weights must be finite and >= 0 (got an empty, negative, NaN or inf one)")
    cumulative = np.add.accumulate(w, dtype=np.float32)
    total = cumulative[-1]
    if not total > 0:
        raise errors.Msg("WeightedIndex: the weights are all zero")
    u = np.array((int(word) >> 9) | 0x3F800000, np.uint32).view(np.float32) - np.float32(1.0)
    chosen = np.float32(u * total)
    return int(np.count_nonzero(cumulative[:-1] <= chosen))
