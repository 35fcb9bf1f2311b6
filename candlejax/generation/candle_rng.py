"""Candle's sampling random stream: Rust ``rand``'s ``StdRng`` (ChaCha with 12 rounds) seeded by
``seed_from_u64``, and the ``f32`` uniform that ``WeightedIndex`` draws from it.

requires: numpy, jax.numpy
provides: ``stdrng_key``, ``chacha_block``, ``stream_u32``, ``unit_f32``, ``STREAM_KEY_WORDS``.

Candle's ``LogitsProcessor`` draws each token with one ``next_u32`` of a ``StdRng`` (rand 0.9), so
draw ``n`` of a seed is word ``n`` of the ChaCha12 key stream: block ``n // 16`` (the block counter),
word ``n % 16``. Being a pure function of ``(seed, n)``, it runs inside a compiled decode step as
well as on the host, and the same seed gives Candle's tokens (for the same probabilities).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

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
