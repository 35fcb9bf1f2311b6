"""Sampling the next token from logits: ``Sampling``, the jit-able ``sample_jax`` and Candle's
``LogitsProcessor``.

requires: jax, candlejax.errors, candlejax.tensor (``unwrap``/``wrap`` only), candlejax.generation.candle_rng,
candlejax.quantized.native (Candle's softmax and ``WeightedIndex`` in native code)
provides: ``Sampling`` (``ArgMax``, ``All``, ``TopK``, ``TopP``, ``TopKThenTopP``, ``GumbelSoftmax``),
``normalize_sampling``, ``sample_jax``, ``sampling_args`` + ``sample_values`` (a sampling as static structure + traced
values), ``sampling_key``, ``logits_status``, ``candle_softmax`` (on the host), ``LogitsProcessor``.

Candle: ``candle_transformers::generation``. One pure function, :func:`sample_jax`, does the math;
it runs inside a compiled decode step, and :class:`LogitsProcessor` (the eager, stateful form)
calls the same compiled function with the key for its n-th draw, so both give the same tokens for
the same seed. The draws are Candle's: rand's ``StdRng`` stream turned into a token as
``WeightedIndex<f32>`` does (:mod:`candlejax.generation.candle_rng`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax._jax_private import read_to_host
from candlejax.generation import candle_rng
from candlejax.nn.module import as_array
from candlejax.quantized import native
from candlejax.tensor._core import TensorBase, int_arg, unwrap

#: Candle treats a temperature below this as greedy decoding.
MIN_TEMPERATURE = 1e-7


# --- Sampling: Candle's enum, as frozen (hashable) dataclasses so it can be a static jit argument --
class Sampling:
    """How to pick the next token (Candle: ``enum Sampling``).

    The variants are ``Sampling.ArgMax()``, ``Sampling.All(temperature)``,
    ``Sampling.TopK(k, temperature)``, ``Sampling.TopP(p, temperature)``,
    ``Sampling.TopKThenTopP(k, p, temperature)`` and ``Sampling.GumbelSoftmax(temperature)``.
    Instances are immutable and hashable.
    """

    ArgMax: ClassVar[type[ArgMax]]
    All: ClassVar[type[All]]
    TopK: ClassVar[type[TopK]]
    TopP: ClassVar[type[TopP]]
    TopKThenTopP: ClassVar[type[TopKThenTopP]]
    GumbelSoftmax: ClassVar[type[GumbelSoftmax]]


@dataclasses.dataclass(frozen=True)
class ArgMax(Sampling):
    """Greedy decoding: the index of the largest logit (Candle: ``Sampling::ArgMax``)."""


@dataclasses.dataclass(frozen=True)
class All(Sampling):
    """Sample from ``softmax(logits / temperature)`` (Candle: ``Sampling::All { temperature }``)."""

    temperature: float


@dataclasses.dataclass(frozen=True)
class TopK(Sampling):
    """Sample among the ``k`` most likely tokens (Candle: ``Sampling::TopK { k, temperature }``)."""

    k: int
    temperature: float


@dataclasses.dataclass(frozen=True)
class TopP(Sampling):
    """Nucleus sampling: the smallest set of most likely tokens whose mass reaches ``p``
    (Candle: ``Sampling::TopP { p, temperature }``)."""

    p: float
    temperature: float


@dataclasses.dataclass(frozen=True)
class TopKThenTopP(Sampling):
    """Top-k, then top-p over those k (Candle: ``Sampling::TopKThenTopP { k, p, temperature }``).

    As in Candle, ``p`` is compared with the (not renormalised) probabilities of the k tokens, so
    ``p`` at or above their total mass keeps all k.
    """

    k: int
    p: float
    temperature: float


@dataclasses.dataclass(frozen=True)
class GumbelSoftmax(Sampling):
    """``argmax(logits / temperature + Gumbel noise)``, a draw from ``softmax(logits / temperature)``
    (Candle: ``Sampling::GumbelSoftmax { temperature }``)."""

    temperature: float


Sampling.ArgMax = ArgMax
Sampling.All = All
Sampling.TopK = TopK
Sampling.TopP = TopP
Sampling.TopKThenTopP = TopKThenTopP
Sampling.GumbelSoftmax = GumbelSoftmax


def _real(v: Any, what: str, where: str = "sampling") -> Any:
    """``v`` unchanged when it is a real number (or traced), else ``ArgumentType`` naming ``what``."""
    if isinstance(v, jax.core.Tracer):
        return v
    if isinstance(v, (bool, str, bytes, complex, np.complexfloating)) or not hasattr(v, "__float__") \
            or getattr(v, "ndim", 0):  # fmt: skip
        raise errors.ArgumentType(f"{where}: {what} must be a number, got {v!r} ({type(v).__name__})")
    return v


def _check_temperature(t: Any) -> None:
    if t is not None and not isinstance(t, jax.core.Tracer) and math.isnan(float(_real(t, "temperature"))):
        raise errors.Msg("sampling: temperature is NaN; pass a number (<= 0 or None for greedy decoding)")


def _check_logits(x: Any, where: str, nan: int | None = None) -> None:
    """Eager logits must be non-empty and NaN-free (sampling would silently return token 0); ``nan``:
    their number of NaNs when already read."""
    if x.shape[0] == 0:
        raise errors.Msg(f"{where}: the logits are empty (vocabulary of size 0)")
    if isinstance(x, jax.core.Tracer):
        return
    if nan is None:
        nan = int(read_to_host(jnp.isnan(x).sum())) if jnp.issubdtype(x.dtype, jnp.floating) else 0
    if nan:
        what = "all" if nan == x.shape[0] else f"{nan} of {x.shape[0]}"
        raise errors.Msg(f"{where}: {what} logits are NaN (the model produced NaN; check its inputs and weights)")


#: why :func:`logits_status` refuses a row of logits (code -> reason); 0 is a row that can be sampled
LOGITS_PROBLEMS = {
    1: "a logit is NaN (the model produced NaN; check its inputs and weights)",
    2: "a logit is +inf once divided by the temperature (the logits overflowed: their softmax is NaN,"
    " which Candle's WeightedIndex and torch.multinomial refuse)",
    3: "every logit is -inf, there is no token to sample",
}


def logits_status(logits: Any, sampling: Sampling, inv_temperature: Any = None) -> jax.Array:
    """Per row of ``logits`` ``(..., vocab)``, 0 if ``sampling`` (normalised) can draw from it, else
    the :data:`LOGITS_PROBLEMS` code: 1 a NaN logit; for the multinomial variants (``All``, ``TopK``,
    ``TopP``, ``TopKThenTopP``) 2 a logit +inf once divided by the temperature (its softmax is NaN)
    and 3 every logit -inf. Pure and jit-able (int32 of shape ``logits.shape[:-1]``);
    ``inv_temperature`` (f32, may be traced: :func:`sampling_args`) in place of the sampling's
    ``1 / temperature`` when given."""
    x = jnp.asarray(unwrap(logits)).astype(jnp.float32)
    s = normalize_sampling(sampling, x.shape[-1])
    code = jnp.where(jnp.isnan(x).any(axis=-1), 1, 0).astype(jnp.int32)
    if isinstance(s, ArgMax | GumbelSoftmax):
        return code
    z = x * (jnp.float32(1.0 / s.temperature) if inv_temperature is None else inv_temperature)  # type: ignore[attr-defined]
    code = jnp.where((code == 0) & (z == jnp.inf).any(axis=-1), 2, code)
    return jnp.where((code == 0) & (z == -jnp.inf).all(axis=-1), 3, code)


def _check_sampled_logits(x: Any, s: Sampling, where: str) -> None:
    """Raise for eager logits :func:`logits_status` refuses (NaN is checked by ``_check_logits``)."""
    if isinstance(s, ArgMax | GumbelSoftmax):
        return
    with np.errstate(over="ignore"):
        z = np.asarray(read_to_host(x), np.float32) * np.float32(1.0 / s.temperature)  # type: ignore[attr-defined]
    code = 2 if np.isposinf(z).any() else 3 if not (z > -np.inf).any() else 0
    if code:
        raise errors.Msg(f"{where}: {LOGITS_PROBLEMS[code]}")


def normalize_sampling(sampling: Sampling | type[Sampling] | None, vocab_size: int | None = None) -> Sampling:
    """Apply Candle's edge rules and return the variant that is actually sampled.

    * ``None`` or the class ``Sampling.ArgMax`` -> ``ArgMax()``;
    * a temperature ``None`` or below 1e-7 -> ``ArgMax()`` (Candle applies this rule only in
      ``LogitsProcessor::new``; applying it to every variant avoids dividing by zero);
    * ``TopP`` with ``p <= 0``, ``p >= 1`` or NaN -> ``All`` (plain multinomial);
    * ``TopK`` with ``k >= vocab_size`` -> ``All``; ``TopKThenTopP`` with ``k >= vocab_size`` -> ``TopP``;
      ``TopKThenTopP`` with ``p <= 0`` or NaN -> ``TopK`` (Candle's cut at ``p`` keeps every token
      when ``p`` is NaN).
    """
    if sampling is None:
        return ArgMax()
    if isinstance(sampling, type):
        if sampling is ArgMax:
            return ArgMax()
        raise errors.Msg(f"sampling: {sampling.__name__} needs arguments, e.g. Sampling.{sampling.__name__}(...)")
    if not isinstance(sampling, Sampling):
        raise errors.Msg(f"sampling: expected a Sampling variant, got {type(sampling).__name__}")
    if isinstance(sampling, ArgMax):
        return sampling
    t = sampling.temperature  # type: ignore[attr-defined]
    _check_temperature(t)
    if t is None or not t >= MIN_TEMPERATURE:
        return ArgMax()
    t = float(t)
    if isinstance(sampling, TopK | TopKThenTopP) and int_arg(sampling.k, "sampling", "top-k k") < 1:
        raise errors.Msg(f"sampling: top-k needs k >= 1, got k={sampling.k}")
    if isinstance(sampling, All):
        return All(t)
    if isinstance(sampling, GumbelSoftmax):
        return GumbelSoftmax(t)
    if isinstance(sampling, TopP):
        p = float(_real(sampling.p, "top-p p"))
        return TopP(p, t) if 0.0 < p < 1.0 else All(t)
    if isinstance(sampling, TopK):
        k = int(sampling.k)
        return All(t) if vocab_size is not None and k >= vocab_size else TopK(k, t)
    if isinstance(sampling, TopKThenTopP):
        k, p = int(sampling.k), float(_real(sampling.p, "top-p p"))
        if vocab_size is not None and k >= vocab_size:
            return normalize_sampling(TopP(p, t))
        return TopK(k, t) if p <= 0.0 or math.isnan(p) else TopKThenTopP(k, p, t)
    raise errors.Msg(f"sampling: unknown variant {sampling!r}")


def sampling_from_args(temperature: float | None, top_k: int | None = None, top_p: float | None = None) -> Sampling:
    """The variant Candle's examples build from ``--temperature --top-k --top-p``:
    temperature ``None`` or ``<= 0`` -> ArgMax; else All, TopK, TopP or TopKThenTopP by which of
    ``top_k`` / ``top_p`` are given."""
    _check_temperature(temperature)
    if temperature is None or temperature <= 0:
        return ArgMax()
    t = float(temperature)
    if top_k is not None:
        top_k = int_arg(top_k, "sampling_from_args", "top_k")
    if top_p is not None:
        top_p = _real(top_p, "top_p", "sampling_from_args")
    if top_k is None and top_p is None:
        return All(t)
    if top_p is None:
        return TopK(int(top_k), t)  # type: ignore[arg-type]
    if top_k is None:
        return TopP(float(top_p), t)
    return TopKThenTopP(int(top_k), float(top_p), t)


# --- the jit-able sampler -------------------------------------------------------------------------
def _nucleus_mask(probs: jax.Array, p: float) -> jax.Array:
    """Candle's top-p set over the whole vocabulary without sorting it.

    Candle keeps token i iff the mass of the tokens ranked above it is below ``p``, i.e. iff
    ``f(prob_i) < p`` with ``f(v) = sum(prob_j for prob_j > v)``. ``f`` falls as ``v`` grows, so the
    kept set is ``prob >= v*`` for the smallest ``v*`` with ``f(v*) < p``. Non-negative float32
    values order like their int32 bit patterns, so a bisection over the bits finds ``v*`` exactly
    in 31 masked sums (a full sort of a 50k vocabulary costs ~100x more on CPU). Equal
    probabilities at the cut are all kept (Candle's sort keeps the lower ids first). The values
    may be any non-negative weights (``sample_f``'s edits), not only probabilities <= 1.
    """
    probs = probs.astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(probs, jnp.int32)
    lo = jnp.zeros(probs.shape[:-1], jnp.int32)
    hi = jnp.max(bits, axis=-1)  # the largest weight: f(max) = 0 < p (a finite float's bits are < 2**31)

    def body(_: Any, lohi: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        lo, hi = lohi
        mid = lo + (hi - lo) // 2
        above = jnp.sum(jnp.where(bits > mid[..., None], probs, 0.0), axis=-1)
        ok = above < p
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    _, hi = jax.lax.fori_loop(0, 31, body, (lo, hi))
    return bits >= hi[..., None]


def _native_sampling() -> bool:
    """Whether Candle's softmax and ``WeightedIndex`` run in native code, summing in index order as
    Candle does (one-device CPU processes with the library built; elsewhere XLA's sums, which
    associate differently and can move a draw to a neighbouring token)."""
    return jax.device_count() == 1 and native.sampling_available()


def _softmax(x: jax.Array) -> jax.Array:
    """Candle's ``softmax_last_dim`` (bit for bit in native code), else ``jax.nn.softmax``."""
    return native.candle_softmax(x) if _native_sampling() else jax.nn.softmax(x, axis=-1)


def _weighted_draw(weights: jax.Array, u01: jax.Array) -> jax.Array:
    """Candle's ``WeightedIndex`` over the last axis: the number of running sums of ``weights`` (all but
    the total) at or below ``u01 * total``, so a token is drawn with probability proportional to its
    weight; a zero weight is never drawn. ``u01``: one uniform in ``[0, 1)`` per row."""
    if _native_sampling():
        idx = native.weighted_index(weights.astype(jnp.float32), u01.astype(jnp.float32))
        return jnp.maximum(idx, 0)  # all-zero weights cannot reach here: the top token always has mass
    cdf = jnp.cumsum(weights, axis=-1)
    chosen = u01 * cdf[..., -1]
    idx = jnp.sum(cdf[..., :-1] <= chosen[..., None], axis=-1)
    # float rounding can leave the draw at the top of the sums: take the last token with weight
    last = weights.shape[-1] - 1 - jnp.argmax(jnp.flip(weights > 0, axis=-1), axis=-1)
    return jnp.minimum(idx, last)


#: up to this many values, :func:`_running_sums_before` adds them one at a time (unrolled, as fast as
#: XLA's cumulative sum); past it, a loop would slow a top-k step by ~40%, so XLA's sum is used
EXACT_RUNNING_SUM_MAX = 64


def _running_sums_before(vals: jax.Array) -> jax.Array:
    """Per position of the last axis, the f32 sum of the values before it (Candle's ``sample_topp``:
    ``cumsum += prs[i]``). Up to :data:`EXACT_RUNNING_SUM_MAX` values they are added one at a time in
    index order, as Candle; ``cumsum - vals`` rounds differently and XLA's cumulative sum associates
    differently past ~16 values, either of which moves a cut at ``p`` equal to a running sum. Past it,
    XLA's cumulative sum (Candle's draw over so many top-k tokens differs anyway: its order)."""
    n = vals.shape[-1]
    if n > EXACT_RUNNING_SUM_MAX:
        sums = jnp.cumsum(vals, axis=-1)
        return jnp.concatenate([jnp.zeros_like(sums[..., :1]), sums[..., :-1]], axis=-1)
    # the barrier keeps XLA from fusing the per-value slices into their producer (after a top_k of a
    # 32k vocabulary the step ran ~100x slower)
    cols = jnp.moveaxis(jax.lax.optimization_barrier(vals), -1, 0)

    def add(acc: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
        return acc + v, acc

    _, before = jax.lax.scan(add, jnp.zeros_like(cols[0]), cols, unroll=n)
    return jnp.moveaxis(before, 0, -1)


def _sample_probs(probs: jax.Array, u01: jax.Array, s: Sampling, p: Any = None) -> jax.Array:
    """The token Candle's ``LogitsProcessor`` draws from ``probs`` (its ``prs``: the softmax of the
    tempered logits, or what ``sample_f``'s closure made of it) for the multinomial variants;
    ``p`` (may be traced) in place of ``s.p`` when given."""
    p = getattr(s, "p", None) if p is None else p
    if isinstance(s, All):
        return _weighted_draw(probs, u01)
    if isinstance(s, TopP):
        return _weighted_draw(jnp.where(_nucleus_mask(probs, p), probs, 0.0), u01)
    if isinstance(s, TopK | TopKThenTopP):
        vals, idx = jax.lax.top_k(probs, min(s.k, probs.shape[-1]))
        if isinstance(s, TopKThenTopP):
            # Candle cuts at p over the k probabilities as they are (not renormalised), once the
            # running sum of those before a token reaches p
            keep = (_running_sums_before(vals) < p).at[..., 0].set(True)
            vals = jnp.where(keep, vals, 0.0)
        j = _weighted_draw(vals, u01)
        return jnp.take_along_axis(idx, j[..., None], axis=-1)[..., 0]
    raise errors.Msg(f"sample: unsupported sampling {s!r}")


def _is_stream_key(key: Any) -> bool:
    return (
        hasattr(key, "dtype")
        and key.dtype == jnp.uint32
        and key.ndim >= 1
        and key.shape[-1] == candle_rng.STREAM_KEY_WORDS
    )


def _uniform(key: Any, rows: tuple[int, ...]) -> jax.Array:
    """One uniform in ``[0, 1)`` per row: Candle's ``StdRng`` draw for a stream key (row ``r`` of draw
    ``n`` takes word ``n * rows + r``), ``jax.random.uniform`` for a JAX key."""
    if _is_stream_key(key):
        n_rows = math.prod(rows)
        draw = key[8].astype(jnp.uint32)
        index = draw * jnp.uint32(n_rows) + jnp.arange(n_rows, dtype=jnp.uint32)
        return candle_rng.unit_f32(candle_rng.stream_u32(key[:8], index)).reshape(rows)
    return jax.random.uniform(_as_key(key), rows, dtype=jnp.float32)


def _gumbel_key(key: Any) -> jax.Array:
    """A JAX key for Gumbel noise (Candle draws it from the device's generator, not the processor's)."""
    if not _is_stream_key(key):
        return _as_key(key)
    k = jax.random.key(0)
    for i in (0, 1, 8, 9):
        k = jax.random.fold_in(k, key[i])
    return k


def sample_jax(logits: Any, key: Any, sampling: Sampling | None = None) -> jax.Array:
    """Draw the next token from ``logits`` (``(vocab,)`` or ``(..., vocab)``); pure and jit-able.

    ``sampling`` is a compile-time constant (pass it as a static argument or close over it);
    ``key`` is a stream key from :func:`sampling_key` (Candle's ``StdRng`` draw: the same tokens as
    Candle's ``LogitsProcessor`` for the same seed) or a JAX PRNG key (typed or raw). Returns int32
    token ids of shape ``logits.shape[:-1]``. The edge rules of :func:`normalize_sampling` apply. Rows
    of a batch get independent draws. A row that :func:`logits_status` refuses (NaN, a logit +inf
    once tempered, all -inf) gives an arbitrary id: :func:`candlejax.generation.generate` checks it.
    Candle: ``LogitsProcessor::sample`` without the state.
    """
    x = unwrap(logits)
    if x.ndim < 1:
        raise errors.UnexpectedNumberOfDims(1, 0, (), "sample")
    vocab = x.shape[-1]
    s = normalize_sampling(sampling, vocab)
    if isinstance(s, ArgMax):
        return jnp.argmax(x.astype(jnp.float32), axis=-1).astype(jnp.int32)
    return _draw(x, key, s, jnp.float32(1.0 / s.temperature), getattr(s, "p", None))  # type: ignore[attr-defined]


def _draw(x: jax.Array, key: Any, s: Sampling, inv_temperature: Any, p: Any) -> jax.Array:
    """:func:`sample_jax` for a normalised non-greedy ``s`` whose ``1 / temperature`` (f32) and ``p``
    are given (either may be traced: see :func:`sampling_args`)."""
    x = x.astype(jnp.float32)
    key = unwrap(key)
    if isinstance(key, int):
        key = seed_key(key)
    # Candle divides by the temperature as an affine op: a multiplication by 1 / t in f32
    x = x * inv_temperature
    if isinstance(s, GumbelSoftmax):
        # jax.random.categorical is argmax(logits + Gumbel noise): the Gumbel-max trick
        return jax.random.categorical(_gumbel_key(key), x, axis=-1).astype(jnp.int32)
    probs = _softmax(x)
    return _sample_probs(probs, _uniform(key, x.shape[:-1]), s, p).astype(jnp.int32)


def sampling_args(sampling: Sampling) -> tuple[Sampling, np.ndarray]:
    """A normalised ``sampling`` split for a compiled step: its structure (the variant and ``k``, with
    temperature 1 and a top-p of 0.5), a static argument, and its values ``[1 / temperature, p]``
    (f32, on the host), a traced one, so another temperature or top-p reuses the compiled program.
    A ``p`` outside ``(0, 1)`` (normalised away for every variant but ``TopKThenTopP``) stays static."""
    t = getattr(sampling, "temperature", None)
    p = getattr(sampling, "p", None)
    template = sampling
    if t is not None:
        template = dataclasses.replace(template, temperature=1.0)  # type: ignore[type-var]
    if p is not None and 0.0 < p < 1.0:
        template = dataclasses.replace(template, p=0.5)  # type: ignore[type-var]
    values = np.array([1.0 / t if t is not None else 1.0, p if p is not None else 0.5], np.float32)
    return template, values


def sample_values(logits: Any, key: Any, template: Sampling, values: Any) -> jax.Array:
    """:func:`sample_jax` with the structure and values :func:`sampling_args` split ``sampling`` into
    (``values`` may be traced); the same tokens as ``sample_jax(logits, key, sampling)``."""
    x = unwrap(logits)
    s = normalize_sampling(template, x.shape[-1])
    if isinstance(s, ArgMax):
        return jnp.argmax(x.astype(jnp.float32), axis=-1).astype(jnp.int32)
    return _draw(x, key, s, values[0], values[1])


def _as_key(key: Any) -> jax.Array:
    key = unwrap(key)
    if isinstance(key, int):
        return jax.random.key(key)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def seed_key(seed: int) -> jax.Array:
    """The base key of a u64 seed: the 8 key words of Candle's ``StdRng::seed_from_u64(seed)``
    (u32, made on the host, so no program is compiled for it)."""
    seed = int_arg(seed, "LogitsProcessor", "seed")
    if not 0 <= seed < 2**64:
        raise errors.Msg(f"seed must be in [0, 2**64), got {seed}")
    return jax.device_put(candle_rng.stdrng_key(seed))


def sampling_key(base_key: jax.Array, step: Any) -> jax.Array:
    """The key of the ``step``-th draw (``step`` may be traced): the stream key ``base_key`` followed
    by ``step`` (Candle's ``StdRng`` draws in order), or ``fold_in(base_key, step)`` for a JAX key."""
    if getattr(base_key, "shape", None) == (8,) and base_key.dtype == jnp.uint32:
        step = jnp.asarray(step).astype(jnp.uint32)
        return jnp.concatenate([jnp.asarray(base_key)[:8], jnp.stack([step, jnp.zeros_like(step)])])
    return jax.random.fold_in(base_key, step)


@functools.partial(jax.jit, static_argnames=("sampling",))
def _sample_step(logits: jax.Array, base_key: jax.Array, step: jax.Array, values: jax.Array,
                 sampling: Sampling) -> jax.Array:  # fmt: skip
    """``[token, logits_status code, number of NaN logits]`` (int32) of one row: one read for the
    token and its checks."""
    tok = sample_values(logits, sampling_key(base_key, step), sampling, values)
    code = logits_status(logits, sampling, values[0])
    return jnp.stack([tok, code, jnp.isnan(logits).sum().astype(jnp.int32)])


_softmax_jit = jax.jit(_softmax)


def candle_softmax(logits: Any) -> np.ndarray:
    """Candle's ``candle_nn::ops::softmax(&logits, D::Minus1)`` of f32 ``logits`` as a writable numpy
    array: the max subtracted, ``exp``, the sum, a division, all in f32 (bit for bit Candle's in native
    code: :func:`_native_sampling`). The probabilities ``WeightedIndex`` draws from in Candle's examples."""
    x = jnp.asarray(np.asarray(read_to_host(unwrap(logits)), np.float32))
    if x.ndim < 1 or x.shape[-1] == 0:
        raise errors.Msg(f"candle_softmax: logits must be (..., n) with n >= 1, got shape {tuple(x.shape)}")
    return np.array(read_to_host(_softmax_jit(x)))


@functools.partial(jax.jit, static_argnames=("sampling",))
def _sample_probs_step(probs: jax.Array, base_key: jax.Array, step: jax.Array, p: jax.Array,
                       sampling: Sampling) -> jax.Array:  # fmt: skip
    return _sample_probs(probs, _uniform(sampling_key(base_key, step), probs.shape[:-1]), sampling, p)


# --- LogitsProcessor: the eager, stateful sampler ---------------------------------------------------
class LogitsProcessor:
    """Candle's ``LogitsProcessor``: a sampling rule plus a seeded random stream.

    ``LogitsProcessor(seed, temperature=None, top_p=None)``: ``temperature`` ``None`` or below 1e-7
    gives ``ArgMax``; otherwise ``TopP(top_p, temperature)`` if ``top_p`` is given, else
    ``All(temperature)``. ``LogitsProcessor.from_sampling(seed, sampling)`` takes any variant.
    ``sample(logits)`` returns the next token id as an int; draw ``n`` is word ``n`` of Candle's
    ``StdRng::seed_from_u64(seed)`` stream (:mod:`candlejax.generation.candle_rng`), the same draw
    :func:`candlejax.generation.generate` makes inside its compiled step, so the same seed gives the
    same tokens in both, and Candle's.
    """

    def __init__(self, seed: int, temperature: float | None = None, top_p: float | None = None) -> None:
        _check_temperature(temperature)
        if temperature is None or not temperature >= MIN_TEMPERATURE:
            sampling: Sampling = ArgMax()
        elif top_p is None:
            sampling = All(float(temperature))
        else:
            sampling = TopP(float(_real(top_p, "top_p", "LogitsProcessor")), float(temperature))
        self._init(seed, sampling)

    def _init(self, seed: int, sampling: Sampling) -> None:
        self.seed = int_arg(seed, "LogitsProcessor", "seed")
        self.base_key = seed_key(self.seed)
        self.sampling = normalize_sampling(sampling)
        #: how many draws this processor has made (the index of the next key)
        self.step = 0

    @classmethod
    def new(cls, seed: int, temperature: float | None = None, top_p: float | None = None) -> LogitsProcessor:
        """Candle's ``LogitsProcessor::new(seed, temperature, top_p)`` (= the constructor)."""
        return cls(seed, temperature, top_p)

    @classmethod
    def from_sampling(cls, seed: int, sampling: Sampling | type[Sampling]) -> LogitsProcessor:
        """Candle: ``LogitsProcessor::from_sampling(seed, sampling)``."""
        self = cls.__new__(cls)
        self._init(seed, normalize_sampling(sampling))
        return self

    def __repr__(self) -> str:
        return f"LogitsProcessor(seed={self.seed}, sampling={self.sampling!r}, step={self.step})"

    def sample(self, logits: Any) -> int:
        """The next token for 1-D ``logits`` (a Tensor, jax or numpy array), as an int.

        Candle: ``LogitsProcessor::sample(&logits) -> u32``.
        """
        x = jnp.asarray(as_array(logits))
        if x.ndim != 1:
            raise errors.UnexpectedNumberOfDims(1, x.ndim, tuple(x.shape), "LogitsProcessor::sample")
        where = "LogitsProcessor::sample"
        if x.shape[0] == 0:
            _check_logits(x, where)
        template, values = sampling_args(normalize_sampling(self.sampling, x.shape[0]))
        # one read: the token, the logits' status and their NaN count, checked after it
        tok, code, nan = (int(v) for v in read_to_host(
            _sample_step(x, self.base_key, np.uint32(self.step), values, sampling=template)))  # fmt: skip
        _check_logits(x, where, nan)
        if code:
            raise errors.Msg(f"{where}: {LOGITS_PROBLEMS[code]}")
        if not isinstance(template, ArgMax):
            self.step += 1
        return tok

    def sample_f(self, logits: Any, f: Callable[[np.ndarray], np.ndarray | None]) -> int:
        """Sample after ``f`` edits the probabilities (Candle: ``sample_f``).

        ``f`` gets ``softmax(logits / temperature)`` as a writable float32 numpy array and may edit
        it in place or return a new one; ``ArgMax`` and ``GumbelSoftmax`` ignore ``f``, as in
        Candle. The draw is proportional to the edited probabilities (Candle's ``WeightedIndex``);
        ``TopP`` / ``TopKThenTopP`` compare ``p`` with the edited probabilities as they are (not
        renormalised), as Candle's ``sample_topp`` does.
        """
        x = np.asarray(read_to_host(unwrap(logits)), dtype=np.float32)
        if x.ndim != 1:
            raise errors.UnexpectedNumberOfDims(1, x.ndim, x.shape, "LogitsProcessor::sample_f")
        _check_logits(x, "LogitsProcessor::sample_f")
        s = normalize_sampling(self.sampling, x.shape[0])
        if isinstance(s, ArgMax):
            return int(np.argmax(x))
        if isinstance(s, GumbelSoftmax):  # Candle's sample_f does not call f for this variant
            return self.sample(logits)
        _check_sampled_logits(x, s, "LogitsProcessor::sample_f")
        z = x * np.float32(1.0 / s.temperature)  # type: ignore[attr-defined]
        probs = candle_softmax(z)  # writable, for f
        out = f(probs)
        probs = probs if out is None else np.asarray(out, dtype=np.float32)
        if probs.shape != x.shape:
            got, want = probs.shape, x.shape
            raise errors.Msg(f"LogitsProcessor::sample_f: f returned probabilities of shape {got} for logits {want}")
        if not (probs >= 0).all() or not probs.sum() > 0:
            # Candle's WeightedIndex refuses negative or NaN weights, and all zeros
            raise errors.Msg("LogitsProcessor::sample_f: the probabilities must be >= 0 (no NaN) and not all 0")
        template, values = sampling_args(s)
        tok = _sample_probs_step(jnp.asarray(probs), self.base_key, jnp.int32(self.step), values[1], sampling=template)
        self.step += 1
        return int(read_to_host(tok))

    def key_for_step(self, step: int | None = None) -> jax.Array:
        """The key of draw ``step`` (default: the next draw)."""
        return sampling_key(self.base_key, self.step if step is None else step)


def logits_to_array(logits: Any) -> jax.Array:
    """The jax array behind a Tensor / jax / numpy logits value."""
    if isinstance(logits, TensorBase):
        return logits._a
    return jnp.asarray(logits)
