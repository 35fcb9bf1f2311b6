"""The generation loop: prefill the prompt in one call, then one compiled decode step per token.

requires: jax, candlejax.generation.sampling / penalty
provides: ``generate``, ``compile_generation``, ``Generation``, ``DecodeFns``, ``StepFn``

A model exposes a pure step ``step_fn(params, cache, tokens, pos) -> (logits, cache)``: ``tokens``
is ``(B, S)`` (u32 by default), ``pos`` a traced int32 scalar (the position of ``tokens[:, 0]``),
``logits`` ``(B, vocab)`` for the last position (``(B, S, vocab)`` is accepted; its last position is
used) and ``cache`` any pytree (a pre-allocated KV cache). :func:`generate` compiles, around that
step, one function that also applies the repeat penalty and samples, so only the new token id
leaves the device. The prompt is one call (compiled once per prompt length); every later token
reuses one compiled decode step, because ``pos``, the sampling counter and the penalty window
are traced arguments. Candle's equivalent is the hand-written loop in its examples
(``model.forward(&input, index_pos)`` + ``logits_processor.sample``).
"""

from __future__ import annotations

import collections
import functools
import inspect
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax._jax_private import read_to_host
from candlejax.generation.penalty import (
    RecentTokens,
    apply_repeat_penalty,
    apply_repeat_penalty_mask,
    check_penalty,
)
from candlejax.generation.sampling import (
    LOGITS_PROBLEMS,
    ArgMax,
    LogitsProcessor,
    Sampling,
    logits_status,
    normalize_sampling,
    sample_values,
    sampling_args,
    sampling_key,
    seed_key,
)
from candlejax.nn.embedding import check_token_ids
from candlejax.tensor import unwrap, wrap
from candlejax.tensor._core import int_arg
from candlejax.xla import OptionsJit, SerializedProgram, compile_compact

StepFn = Callable[[Any, Any, Any, Any], tuple[Any, Any]]


def _last_logits(logits: Any, op: str) -> jax.Array:
    x = unwrap(logits)
    if x.ndim == 3:
        x = x[:, -1, :]
    if x.ndim != 2:
        raise errors.Msg(f"{op}: the step must return logits of shape (batch, vocab), got {tuple(x.shape)}")
    return x


class DecodeFns:
    """The two compiled functions :func:`generate` runs for one ``step_fn`` and sampling setup.

    ``fused(params, cache, tokens, pos, base_key, draw, recent, penalty, values) -> (token (B, 1),
    cache, recent, pos + S, draw + 1)`` steps the model, penalises, samples and pushes the token into
    the penalty window; ``values`` are the sampling's ``[1 / temperature, p]`` (f32, traced: see
    :func:`candlejax.generation.sampling.sampling_args`; ``sampling`` is reduced to its structure, so
    one compiled step serves every temperature and top-p); ``logits(params, cache, tokens, pos) ->
    (logits (B, vocab), cache, pos + S)`` is the plain step for a host-side processor.
    ``trace_count`` counts how often ``step_fn`` was traced (one per distinct input shape).
    ``compiler_options``: XLA options they compile with (``jax.jit``'s; none: XLA's defaults).
    """

    def __init__(
        self,
        step_fn: StepFn,
        sampling: Sampling,
        use_penalty: bool,
        tokens_as_tensor: bool = False,
        donate: bool = True,
        compiler_options: dict[str, Any] | None = None,
        weak: bool = False,
    ) -> None:
        # weak: reach step_fn through a weak reference (the cache of compiled steps per step-function
        # object must not keep its key alive), dereferenced when a step is traced
        self._step_ref: Callable[[], Any] = _weak_step(step_fn) if weak else (lambda: step_fn)
        self.sampling = sampling = sampling_args(normalize_sampling(sampling))[0]
        self.use_penalty = use_penalty
        self.tokens_as_tensor = tokens_as_tensor
        self.trace_count = 0
        self.accepts_last = accepts_last(step_fn)

        def call_step(params: Any, cache: Any, tokens: jax.Array, pos: jax.Array,
                      length: Any = None) -> tuple[jax.Array, Any]:  # fmt: skip
            self.trace_count += 1
            toks = wrap(tokens) if tokens_as_tensor else tokens
            step_fn = self.step_fn
            if step_fn is None:
                raise errors.Msg(
                    "generate: the step function these compiled steps were made for has been garbage-collected;"
                    " call generate with a live step function"
                )
            if length is None:
                logits, cache = step_fn(params, cache, toks, pos)
            else:  # a padded prompt: the logits of position length - 1
                logits, cache = step_fn(params, cache, toks, pos, last=length - 1)
            return _last_logits(logits, "generate"), cache

        def fused_core(params, cache, tokens, pos, length, base_key, draw, recent, penalty, values):  # type: ignore[no-untyped-def]
            logits, cache = call_step(params, cache, tokens, pos, length)
            if use_penalty:
                logits = apply_repeat_penalty_mask(logits, penalty, recent.mask(logits.shape[-1])[None, :])
            tok = sample_values(logits, sampling_key(base_key, draw), sampling, values)
            # logits nothing can be drawn from (NaN, overflowed): -code in place of the token, raised on the host
            status = logits_status(logits, sampling, inv_temperature=values[0])
            tok = jnp.where(status > 0, -status, tok)
            if use_penalty:
                recent = recent.push(tok[0])
            n = tokens.shape[1] if length is None else length
            return tok[:, None].astype(tokens.dtype), cache, recent, pos + n, draw + 1

        def fused(params, cache, tokens, pos, base_key, draw, recent, penalty, values):  # type: ignore[no-untyped-def]
            return fused_core(params, cache, tokens, pos, None, base_key, draw, recent, penalty, values)

        def plain_core(params, cache, tokens, pos, length):  # type: ignore[no-untyped-def]
            logits, cache = call_step(params, cache, tokens, pos, length)
            return logits, cache, pos + (tokens.shape[1] if length is None else length)

        def plain(params, cache, tokens, pos):  # type: ignore[no-untyped-def]
            return plain_core(params, cache, tokens, pos, None)

        options = dict(compiler_options or {})

        def jit(fn: Any, donate_argnums: tuple[int, ...]) -> Any:
            return OptionsJit(fn, options, donate_argnums=donate_argnums) if options else jax.jit(
                fn, donate_argnums=donate_argnums
            )

        def program(fn: Any, donate_argnums: tuple[int, ...]) -> StepProgram:
            return StepProgram(jit(fn, donate_argnums), lambda: jit(_fresh(fn), donate_argnums))

        donate_fused = (1, 6) if donate else ()
        donate_plain = (1,) if donate else ()
        self.fused = program(fused, donate_fused)
        self.logits = program(plain, donate_plain)
        #: the same, for a prompt padded to a bucketed length: an extra traced ``length`` (the number
        #: of real tokens) after ``pos``; only built for a ``step_fn`` that takes ``last=``
        self.fused_padded = program(fused_core, (1, 7) if donate else ())
        self.logits_padded = program(plain_core, donate_plain)

    @property
    def step_fn(self) -> Any:
        """The step function these steps trace; ``None`` once a weakly held one was collected."""
        return self._step_ref()


def _weak_step(step_fn: Any) -> Callable[[], Any]:
    """A weak reference to ``step_fn`` (``weakref.WeakMethod`` for a bound method, a new object on
    every attribute access): calling it gives the function, or ``None`` once it was collected."""
    return weakref.WeakMethod(step_fn) if isinstance(step_fn, types.MethodType) else weakref.ref(step_fn)


def _fresh(fn: Any) -> Any:
    """A new function object that calls ``fn``: JAX's tracing, lowering and compilation caches are
    keyed (weakly) on the function, so what is traced through it is freed with it."""

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        return fn(*args)

    return call


def _jit_only(args: Any) -> bool:
    """Whether a call must go through ``jax.jit`` itself: inside a trace, or with ``jax.disable_jit``
    or NaN / Inf checking on (which compiled-ahead programs do not take part in)."""
    cfg = jax.config
    if cfg.jax_disable_jit or cfg.jax_debug_nans or cfg.jax_debug_infs:
        return True
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(args))


class StepProgram:
    """A generation step that runs the programs compiled for it, compiling one when none takes the
    arguments.

    A compiled program checks its arguments' structure, shapes, dtypes and placement before it
    runs (nothing is donated when they differ), so a mismatch just tries the next one. Programs come
    from :meth:`Generation.compile` (compiled ahead) or, given ``fresh`` (a factory of the same
    ``jax.jit`` over a new function object), from the first call with new shapes: the step is
    lowered and compiled through ``fresh()`` and kept here in its compact form
    (:func:`candlejax.xla.compile_compact`), so JAX's caches do not hold a second copy of the
    program, its lowering and its trace (~10 MiB for SmolLM2's two programs) once the call returns.
    Calls inside a trace or under ``jax.disable_jit`` / ``jax_debug_nans`` / ``jax_debug_infs``, and a
    ``StepProgram`` without ``fresh``, go through ``jitted`` (``jax.jit``'s own caches).
    """

    #: programs kept per step (prompt lengths, cache sizes); the least recently used is dropped
    MAX_PROGRAMS = 16

    def __init__(self, jitted: Any, fresh: Callable[[], Any] | None = None) -> None:
        self.jitted = jitted
        self.fresh = fresh
        self.compiled: list[Any] = []
        self._compiling = threading.Lock()

    def lower(self, *args: Any) -> Any:
        """``jax.jit(step).lower(*args)``: the step lowered for these arguments (through ``fresh()``
        when given, so nothing of it stays in JAX's caches once the result is dropped)."""
        return (self.fresh() if self.fresh is not None else self.jitted).lower(*args)

    def add(self, program: Any) -> None:
        """Keep a compiled ``program`` first, dropping the oldest beyond ``MAX_PROGRAMS``."""
        self.compiled = [program, *self.compiled][: self.MAX_PROGRAMS]

    def _run_compiled(self, args: tuple[Any, ...]) -> tuple[bool, Any]:
        programs = self.compiled  # replaced, never changed in place: safe to call from several threads
        for i, program in enumerate(programs):
            try:
                out = program(*args)
            except (TypeError, ValueError):  # other shapes, dtypes or placement: checked before running
                continue
            # the last program that ran is tried first next time; a SerializedProgram, loaded now,
            # is replaced by the program itself (no load check on every step)
            loaded = program.load() if isinstance(program, SerializedProgram) else program
            if i or loaded is not program:
                self.compiled = [loaded, *(p for p in programs if p is not program)]
            return True, out
        return False, None

    def __call__(self, *args: Any) -> Any:
        ran, out = self._run_compiled(args)
        if ran:
            return out
        try:
            if self.fresh is None or _jit_only(args):
                return self.jitted(*args)
            with self._compiling:  # one compile per new shape, however many threads call
                ran, out = self._run_compiled(args)
                if ran:
                    return out
                # loaded at its first run below, once the lowering (and with it the program JAX
                # compiled, which its caches hold while the lowering lives) is gone
                program = compile_compact(self.lower(*args), load_on_first_use=True)
                self.add(program)
            return program(*args)
        except (ValueError, RuntimeError) as e:
            if "deleted or donated" in str(e) or "has been deleted" in str(e):
                raise errors.DeletedBuffer("generate", _DONATED) from None
            raise


_DONATED = (
    "an argument's buffer no longer exists, most likely a cache handed to an earlier generation: with"
    " donate_cache=True (the default) generate takes over the cache passed in; continue from the earlier"
    " generation's g.cache (start_pos=g.pos), make a new cache, or pass donate_cache=False to keep it"
)


_CACHE: collections.OrderedDict[Any, DecodeFns] = collections.OrderedDict()
_CACHE_SIZE = 16
_CACHE_LOCK = threading.Lock()
#: the DecodeFns of step functions that hold other objects and cannot be weakly referenced (a
#: callable instance with ``__slots__``): kept only while a Generation uses them, so the cache never
#: keeps a dropped model's weights alive
_HELD: weakref.WeakValueDictionary[Any, DecodeFns] = weakref.WeakValueDictionary()
#: the same, per step-function object that can be weakly referenced (a bound method: per instance,
#: then per function): an entry lives exactly as long as the caller's function or instance, so a chat
#: that passes one closure on every turn compiles once, and its DecodeFns reach the function weakly
_BY_STEP: weakref.WeakKeyDictionary[Any, dict[Any, DecodeFns]] = weakref.WeakKeyDictionary()


def _step_owner(step_fn: Any) -> tuple[Any, Any] | None:
    """``(owner, function)``: the object a capturing ``step_fn``'s compiled steps are kept for
    (``__self__`` of a bound method, else ``step_fn``) and the bound method's ``__func__`` (else
    ``None``); ``None`` when the owner cannot be weakly referenced."""
    if isinstance(step_fn, types.MethodType):
        owner, func = step_fn.__self__, step_fn.__func__
    else:
        owner, func = step_fn, None
    try:
        weakref.ref(owner)
        if func is not None:
            weakref.ref(func)
    except TypeError:
        return None
    return owner, func


def _same_step(fns: DecodeFns, step_fn: Any) -> bool:
    """Whether ``fns`` trace this very ``step_fn`` (not an equal one: a bound method, equal ``__self__``)."""
    live = fns.step_fn
    if isinstance(step_fn, types.MethodType):
        return (isinstance(live, types.MethodType) and live.__self__ is step_fn.__self__
                and live.__func__ is step_fn.__func__)  # fmt: skip
    return live is step_fn


def _captures(step_fn: Any) -> bool:
    """Whether ``step_fn`` holds objects besides its code (closure cells, bound ``self``, a
    ``functools.partial``'s arguments, a callable instance): caching it strongly would pin them."""
    inner = getattr(step_fn, "__wrapped__", None)  # jax.jit(step), functools.wraps: what they wrap
    if inner is not None and not isinstance(step_fn, functools.partial):
        return _captures(inner)
    if isinstance(step_fn, types.FunctionType):
        defaults = (*(step_fn.__defaults__ or ()), *(step_fn.__kwdefaults__ or {}).values())
        return bool(step_fn.__closure__) or not all(_plain_value(d) for d in defaults)
    return not isinstance(step_fn, types.BuiltinFunctionType)


def _plain_value(x: Any) -> bool:
    """A default that holds no object worth freeing (``last=None``, flags, numbers, names)."""
    if isinstance(x, tuple):
        return all(_plain_value(v) for v in x)
    return x is None or isinstance(x, (bool, int, float, complex, str, bytes))


def decode_fns(
    step_fn: StepFn,
    sampling: Sampling,
    use_penalty: bool,
    tokens_as_tensor: bool = False,
    donate: bool = True,
    compiler_options: dict[str, Any] | None = None,
) -> DecodeFns:
    """The (cached) :class:`DecodeFns` for this step function and setup, so repeated
    :func:`generate` calls (a chat) reuse the compiled steps."""
    options = dict(compiler_options or {})
    sampling = sampling_args(normalize_sampling(sampling))[0]  # temperature and top-p are traced
    key = (step_fn, sampling, use_penalty, tokens_as_tensor, donate, tuple(sorted(options.items())))
    setup = (sampling, use_penalty, tokens_as_tensor, donate, tuple(sorted(options.items())))
    owner = _step_owner(step_fn) if _captures(step_fn) else None
    with _CACHE_LOCK:  # generate called from several threads: a lookup and its reordering or eviction as one
        if owner is not None:
            try:
                per_step = _BY_STEP.setdefault(owner[0], {})
                fns = per_step.get((owner[1], setup))
            except TypeError:  # an unhashable owner or option value: no reuse across calls
                return DecodeFns(step_fn, sampling, use_penalty, tokens_as_tensor, donate, options)
            if fns is not None and _same_step(fns, step_fn):
                return fns
            fns = DecodeFns(step_fn, sampling, use_penalty, tokens_as_tensor, donate, options, weak=True)
            per_step[(owner[1], setup)] = fns
            return fns
        try:
            fns = _HELD.get(key) if _captures(step_fn) else _CACHE.get(key)
        except TypeError:  # an unhashable step function or option value: no reuse across calls
            return DecodeFns(step_fn, sampling, use_penalty, tokens_as_tensor, donate, options)
        if fns is None and _captures(step_fn):
            fns = _HELD[key] = DecodeFns(step_fn, sampling, use_penalty, tokens_as_tensor, donate, options)
        elif fns is None:
            fns = DecodeFns(step_fn, sampling, use_penalty, tokens_as_tensor, donate, options)
            _CACHE[key] = fns
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        elif key in _CACHE:
            _CACHE.move_to_end(key)
        return fns


def accepts_last(step_fn: Any) -> bool:
    """Whether ``step_fn`` takes a ``last=`` keyword (the prompt index whose logits it returns), which
    lets :func:`generate` pad a prompt to a bucketed length."""
    try:
        params = inspect.signature(step_fn).parameters
    except (TypeError, ValueError):
        return False
    return "last" in params


#: Prompts run in chunks of ``PREFILL_CHUNK`` tokens, the last one padded at its end, so every
#: prompt and chat turn shares one compiled prefill program instead of compiling one per length.
PREFILL_CHUNK = 32


def _host_token(tok: Any) -> int:
    """The sampled id of a ``(1, 1)`` device array: a 4-byte copy (waits for its step), no extra XLA op."""
    return int(read_to_host(tok).reshape(-1)[0])


def prefill_bucket(n: int, chunk: int = PREFILL_CHUNK) -> int:
    """The padded prefill length for an ``n``-token prompt: ``n`` rounded up to whole chunks."""
    n, chunk = int_arg(n, "prefill_bucket", "n"), int_arg(chunk, "prefill_bucket", "chunk")
    if chunk < 1:
        raise errors.InvalidArgument(f"prefill_bucket: chunk must be >= 1, got {chunk}")
    return max(1, -(-n // chunk)) * chunk


def prefill_chunks(ids: np.ndarray, padded: int, chunk: int = PREFILL_CHUNK) -> list[tuple[Any, int]]:
    """``ids`` ``(B, S)`` followed by zeros up to ``padded`` tokens, as device arrays of at most
    ``chunk`` tokens, each with its number of real tokens. The padding is causally masked and its
    cache slots are overwritten by the tokens that follow."""
    out = np.zeros((ids.shape[0], padded), ids.dtype)
    out[:, : ids.shape[1]] = ids
    size = min(padded, chunk)
    n = ids.shape[1]
    return [(jax.device_put(out[:, i : i + size]), min(size, n - i))  # device_put: no staging executable
            for i in range(0, padded, size)]  # fmt: skip


def _scalar(value: Any, dtype: Any) -> jax.Array:
    """A device scalar made on the host (``jnp.int32(v)`` would compile a conversion program,
    and every XLA:CPU executable keeps ~3 MiB)."""
    return jax.device_put(np.asarray(value, dtype))


def model_limit(params: Any, name: str) -> int | None:
    """``params.<name>`` or ``params.config.<name>`` (``vocab_size``, ``max_position_embeddings``) when
    the model states it, else ``None``."""
    for owner in (params, getattr(params, "config", None)):
        value = getattr(owner, name, None)
        if isinstance(value, int | np.integer) and not isinstance(value, bool):
            return int(value)
    return None


def check_prompt_not_text(prompt_tokens: Any, where: str = "generate") -> None:
    """Raise for a prompt given as text (``str`` / ``bytes``, or a list of them): generate takes ids."""
    p = prompt_tokens
    if isinstance(p, list | tuple) and p:
        p = p[0]
    if isinstance(p, str | bytes) or (isinstance(p, np.ndarray) and p.dtype.kind in "USO"):
        raise errors.InvalidArgument(
            f"{where}: the prompt is text ({prompt_tokens!r:.60}), but it takes token ids: encode it first"
            " (ids = tokenizer.encode(text).get_ids()), or use candlejax.pipelines.TextGeneration, which takes text"
        )


def _prompt_array(prompt_tokens: Any, dtype: Any, vocab_size: int | None) -> jax.Array:
    p = unwrap(prompt_tokens)
    check_prompt_not_text(p)
    try:
        arr = np.asarray(p) if not isinstance(p, jax.Array) else p
    except (ValueError, TypeError):  # a ragged nested list
        raise errors.Msg(f"generate: prompt_tokens must be a list of ids, got {prompt_tokens!r}") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] != 1:
        raise errors.Msg(
            f"generate: prompt_tokens must be a list of ids, shape (S,) or (1, S), got shape {tuple(arr.shape)}"
            " (generate drives one sequence; batch the step yourself for more)"
        )
    if arr.shape[1] == 0:
        raise errors.Msg("generate: the prompt is empty; give at least one token (e.g. the BOS id)")
    check_token_ids(arr, vocab_size, "generate: prompt token ids")
    if isinstance(arr, jax.Array):
        return arr if arr.dtype == dtype else jnp.asarray(arr, dtype=dtype)
    return jax.device_put(np.asarray(arr, dtype=dtype))  # a transfer, not a compiled conversion


def _eos_ids(eos_token_id: Any) -> frozenset[int]:
    """The ids that end generation: ``None``, an int, or integers (a list, or a numpy / jax array
    of any shape: a 0-d one is one id)."""
    if eos_token_id is None:
        return frozenset()
    value = unwrap(eos_token_id)
    if isinstance(value, np.ndarray | jax.Array | np.generic):
        value = np.asarray(value)
        if value.dtype == np.bool_ or not np.issubdtype(value.dtype, np.integer):
            raise errors.Msg(f"generate: eos_token_id must hold integer token ids, got an array of {value.dtype}")
        return frozenset(int(e) for e in value.reshape(-1))
    items = [value] if isinstance(value, int) else value
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise errors.Msg(f"generate: eos_token_id must be an int or a list of ints, got {eos_token_id!r}")
    ids = []
    for e in items:
        if isinstance(e, bool) or not isinstance(e, int | np.integer):
            raise errors.Msg(f"generate: eos_token_id must be an int or a list of ints, got {e!r} in {eos_token_id!r}")
        ids.append(int(e))
    return frozenset(ids)


class Generation:
    """An iterator over the new token ids of one :func:`generate` call.

    After (or during) iteration: ``tokens`` (the ids yielded so far), ``finish_reason``
    (``"eos"``, ``"length"``, ``"cache_full"`` when the cache, or the model's
    ``max_position_embeddings``, has no slot left for the next token,
    or ``None`` while running), ``cache`` (the model cache after the last
    step), ``pos`` (how many positions the cache now holds), ``last_token`` (the last sampled id:
    the EOS or the last generated id), ``pending_token`` (``last_token`` if the cache has not
    consumed it yet, else ``None``: a pipelined run may already have fed it) and ``stats``
    (prefill seconds, decode seconds, decode steps). To continue (a chat), call :func:`generate`
    again with ``cache=g.cache``, ``start_pos=g.pos`` and a prompt that starts with
    ``g.pending_token`` when it is not ``None`` (:meth:`continuation` builds it).
    """

    def __init__(
        self,
        step_fn: StepFn,
        params: Any,
        cache: Any,
        prompt_tokens: Any,
        max_new_tokens: int,
        processor: LogitsProcessor | Sampling | Callable[[Any], int] | None = None,
        eos_token_id: int | Iterable[int] | None = None,
        *,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        start_pos: int = 0,
        context_tokens: Sequence[int] | None = None,
        token_dtype: Any = jnp.uint32,
        tokens_as_tensor: bool = False,
        donate_cache: bool = True,
        pipeline: bool | None = None,
        yield_eos: bool = False,
        prefill_buckets: bool | None = None,
        compiler_options: dict[str, Any] | None = None,
    ) -> None:
        if inspect.ismethod(step_fn) and step_fn.__self__ is params:  # model.step with the model as params:
            step_fn = step_fn.__func__  # its function is the pure step(params, cache, tokens, pos)
        #: the step function, held here: generate's cache of compiled steps holds a capturing one weakly
        self.step_fn = step_fn
        self.params = params
        self.cache = cache
        self.max_new_tokens = int_arg(max_new_tokens, "generate", "max_new_tokens")
        if self.max_new_tokens < 0:
            raise errors.InvalidArgument(f"generate: max_new_tokens must be >= 0, got {self.max_new_tokens}")
        self.eos: frozenset[int] = _eos_ids(eos_token_id)
        check_penalty(repeat_penalty, "generate")
        self.repeat_penalty = float(repeat_penalty)
        self.repeat_last_n = int_arg(repeat_last_n, "generate", "repeat_last_n")
        if self.repeat_last_n < 0:  # Candle's usize; 0 is no penalty
            raise errors.InvalidArgument(f"generate: repeat_last_n must be >= 0, got {self.repeat_last_n}")
        if not jnp.issubdtype(token_dtype, jnp.integer):
            raise errors.InvalidArgument(f"generate: token_dtype must be an integer dtype, got {token_dtype!r}")
        self.prompt = _prompt_array(prompt_tokens, token_dtype, model_limit(params, "vocab_size"))
        self.pos = int_arg(start_pos, "generate", "start_pos")
        # a cache with a fixed number of slots (``max_seq_len``) never wraps around: a prompt that
        # does not fit raises, and generation stops with finish_reason "cache_full" when it is full;
        # a model's position limit (``max_position_embeddings``) caps a larger cache
        cap = getattr(cache, "max_seq_len", None)
        self.capacity = int(cap) if isinstance(cap, int | np.integer) else None
        max_pos = model_limit(params, "max_position_embeddings")
        if max_pos is not None:
            self.capacity = max_pos if self.capacity is None else min(self.capacity, max_pos)
        if self.pos < 0:
            raise errors.Msg(f"generate: start_pos must be >= 0, got {self.pos}")
        batch = getattr(cache, "batch", None)
        if isinstance(batch, int | np.integer) and not isinstance(batch, bool) and batch != 1:
            raise errors.Msg(f"generate: the cache holds batch {batch}; generate drives one sequence, make the cache"
                             " with batch 1 (model.new_cache(1, max_seq_len))")  # fmt: skip
        if self.capacity is not None and self.pos + self.prompt.shape[1] > self.capacity:
            where = ("the cache" if max_pos is None or (cap is not None and int(cap) <= max_pos)
                     else "the model's max_position_embeddings")  # fmt: skip
            raise errors.Msg(
                f"generate: the prompt ({self.prompt.shape[1]} tokens at position {self.pos}) does not fit"
                f" {where} of {self.capacity} positions"
                + ("; make a larger cache" if where == "the cache" else "")
            )
        self.yield_eos = yield_eos
        self.pipeline = (jax.default_backend() != "cpu") if pipeline is None else bool(pipeline)
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self.last_token: int | None = None
        self.pending_token: int | None = None
        self.stats = {"prefill_s": 0.0, "decode_s": 0.0, "decode_steps": 0}
        use_penalty = self.repeat_penalty != 1.0 and self.repeat_last_n > 0
        # the context the penalty sees: earlier turns (if given) + this prompt
        prompt_list = [int(t) for t in np.asarray(self.prompt)[0]]
        context = [] if context_tokens is None else list(unwrap(context_tokens).reshape(-1).tolist()
                                                          if hasattr(context_tokens, "shape") else context_tokens)
        self._context = [*(int_arg(t, "generate", "context_tokens id") for t in context), *prompt_list]

        self.processor = processor
        if processor is None or isinstance(processor, Sampling | type):
            self._fused = True
            self.sampling = normalize_sampling(processor)  # type: ignore[arg-type]
            self._base_key = seed_key(0)
            self._draw0 = 0
        elif isinstance(processor, LogitsProcessor):
            self._fused = True
            self.sampling = processor.sampling
            self._base_key = processor.base_key
            self._draw0 = processor.step
        elif callable(processor):
            self._fused = False
            self.sampling = ArgMax()
            self._base_key = seed_key(0)
            self._draw0 = 0
        else:
            raise errors.Msg(
                f"generate: processor must be a LogitsProcessor, a Sampling or a callable, got {processor!r}"
            )
        if isinstance(self.sampling, ArgMax):
            self._draws_count = False
        else:
            self._draws_count = True
        if compiler_options is None:  # the model's own choice, if it makes one
            compiler_options = getattr(params, "generation_compiler_options", None)
        self.fns = decode_fns(step_fn, self.sampling, use_penalty and self._fused, tokens_as_tensor, donate_cache,
                              compiler_options)  # fmt: skip
        # pad the prompt to a bucketed length (one compiled prefill per bucket, not per length) when
        # the step can return the logits of an inner position and the padded tail fits the cache
        n = int(self.prompt.shape[1])
        padded = prefill_bucket(n)
        bucket = self.fns.accepts_last and self.capacity is not None and self.pos + padded <= self.capacity
        if prefill_buckets is not None:
            if prefill_buckets and not self.fns.accepts_last:
                raise errors.Msg("generate: prefill_buckets=True needs a step_fn that takes last= (see llama.step)")
            bucket = bucket and bool(prefill_buckets)
        self.prefill_length = padded if bucket else n
        self._use_penalty = use_penalty
        self._it = self._run()

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        return next(self._it)

    def close(self) -> None:
        """Stop the generation (as a generator's ``close``)."""
        self._it.close()

    def continuation(self, new_tokens: Sequence[int] = ()) -> list[int]:
        """The tokens to feed next: the pending token (if any) followed by ``new_tokens``."""
        head = [] if self.pending_token is None else [self.pending_token]
        return [*head, *(int(t) for t in new_tokens)]

    def compile(self, compact: bool = True) -> list[Any]:
        """Compile, without running them, the programs that iterating this generation runs (its
        prefill and decode step) and return them (``jax.stages.Compiled``); a later generation
        with the same step function, sampling and shapes runs them (:class:`StepProgram`), even
        after ``jax.clear_caches()``. ``params`` and ``cache`` may hold ``jax.ShapeDtypeStruct``
        leaves that carry the placement the real arrays will have
        (``ModelWeights.from_gguf(path, abstract=True)``), so the programs can be compiled before
        the weights are loaded and the compiler's transient memory is spent before the weights
        take theirs. ``compact`` keeps each program compiled here in its serialized form until it
        first runs, then loads it (:func:`candlejax.xla.compile_compact`,
        :class:`candlejax.xla.SerializedProgram`), which holds less memory on XLA:CPU.
        JAX: ``jit(f).lower(...).compile()``."""
        if self.max_new_tokens <= 0:
            return []
        fns = self.fns
        params, cache = self.params, self.cache
        pos = _scalar(self.pos, np.int32)
        padded = self.prefill_length > self.prompt.shape[1]
        chunks = self._prefill_chunks() if padded else []
        programs: list[Any] = []

        def add(fn: StepProgram, *args: Any) -> Any:
            lowered = fn.lower(*args)
            program = compile_compact(lowered, load_on_first_use=True) if compact else lowered.compile()
            out = _specs(program.out_info)
            fn.add(program)
            programs.append(program)
            return out

        if self._fused:
            recent = RecentTokens.create(max(self.repeat_last_n, 1), self._context)
            penalty = _scalar(self.repeat_penalty, np.float32)
            draw = _scalar(self._draw0, np.int32)
            key = self._base_key
            values = _scalar(sampling_args(self.sampling)[1], np.float32)
            if padded:  # every chunk has the same shapes and host-made arguments: one program
                first, n = chunks[0]
                out = add(fns.fused_padded, params, cache, first, pos, _scalar(n, np.int32), key, draw, recent, penalty,
                          values)  # fmt: skip
            else:
                out = add(fns.fused, params, cache, self.prompt, pos, key, draw, recent, penalty, values)
            if self.max_new_tokens > 1:
                tok, cache, recent, pos, draw = out
                add(fns.fused, params, cache, tok, pos, key, draw, recent, penalty, values)
        else:
            if padded:
                first, n = chunks[0]
                out = add(fns.logits_padded, params, cache, first, pos, _scalar(n, np.int32))
            else:
                out = add(fns.logits, params, cache, self.prompt, pos)
            if self.max_new_tokens > 1:
                _, cache, pos = out
                add(fns.logits, params, cache, np.zeros((1, 1), self.prompt.dtype), pos)
        return programs

    # --- the loops -------------------------------------------------------------------------------
    def _prefill_chunks(self) -> list[tuple[Any, int]]:
        return prefill_chunks(np.asarray(self.prompt), self.prefill_length)

    def _finish_draws(self, produced: int) -> None:
        """Advance the processor's stream by the tokens sampled and handed out (a speculative
        pipelined draw after EOS does not count)."""
        if isinstance(self.processor, LogitsProcessor) and self._draws_count:
            self.processor.step = self._draw0 + produced

    def _run(self) -> Iterator[int]:
        if self.max_new_tokens <= 0:
            self.finish_reason = "length"
            return
        if self._fused:
            yield from self._run_fused()
        else:
            yield from self._run_host()

    def _run_fused(self) -> Iterator[int]:
        fns = self.fns
        n_recent = max(self.repeat_last_n, 1)
        recent = RecentTokens.create(n_recent, self._context)
        penalty = _scalar(self.repeat_penalty, np.float32)
        pos = _scalar(self.pos, np.int32)
        draw = _scalar(self._draw0, np.int32)
        params, key = self.params, self._base_key
        values = _scalar(sampling_args(self.sampling)[1], np.float32)

        def step(tok: jax.Array) -> tuple:
            out = fns.fused(params, self.cache, tok, pos, key, draw, recent, penalty, values)
            self.cache = out[1]
            self.pos += tok.shape[1]
            return out

        t0 = time.perf_counter()
        if self.prefill_length > self.prompt.shape[1]:
            chunks = self._prefill_chunks()
            for i, (chunk, n) in enumerate(chunks):  # before the last chunk: the sampled token is dropped
                # every chunk gets host-made arguments (a fresh window, since it is donated, and its
                # position): arrays a program returned are committed to their device, and mixing the
                # two kinds would compile a second prefill program
                window = recent if i == len(chunks) - 1 else RecentTokens.create(n_recent, self._context)
                at = _scalar(self.pos, np.int32)
                out = fns.fused_padded(params, self.cache, chunk, at, _scalar(n, np.int32), key, draw, window, penalty,
                                       values)  # fmt: skip
                self.cache = out[1]
                self.pos += n
            tok, _, recent, pos, draw = out
        else:
            tok, _, recent, pos, draw = step(self.prompt)
        produced = 0
        t1 = 0.0
        while True:
            produced += 1
            more = produced < self.max_new_tokens
            full = more and self.capacity is not None and self.pos >= self.capacity
            more = more and not full
            nxt = None
            if self.pipeline and more:
                # dispatch the next step before this token reaches the host (speculative: if this
                # token is EOS, the cache has consumed it and pending_token is None)
                nxt = step(tok)
                self.stats["decode_steps"] += 1
            try:
                t = _host_token(tok)
                if t < 0 or t >= 2**31:  # the step's logits_status code, negated (wrapped around for u32 tokens)
                    code = -t if t < 0 else 2**32 - t
                    why = LOGITS_PROBLEMS.get(code, f"sampling failed (code {code})")
                    raise errors.Msg(f"generate: cannot sample new token {produced}: {why}")
            except BaseException:  # (a Ctrl-C while waiting, no valid token) the step dispatched above took this
                if nxt is not None:  # token, which never reached the caller: the cache holds the tokens handed out
                    self.pos -= tok.shape[1]
                raise
            if produced == 1:
                self.stats["prefill_s"] = time.perf_counter() - t0
                t1 = time.perf_counter()
            else:
                self.stats["decode_s"] = time.perf_counter() - t1
            self.last_token = t
            self.pending_token = t if nxt is None else None
            self._finish_draws(produced)
            if t in self.eos:
                self.finish_reason = "eos"
                if self.yield_eos:
                    self.tokens.append(t)
                    yield t
                return
            self.tokens.append(t)
            yield t
            if not more:
                self.finish_reason = "cache_full" if full else "length"
                return
            if nxt is None:
                nxt = step(tok)
                self.stats["decode_steps"] += 1
            tok, _, recent, pos, draw = nxt

    def _run_host(self) -> Iterator[int]:
        fns = self.fns
        proc: Callable[[Any], int] = self.processor  # type: ignore[assignment]
        context = list(self._context)
        pos = _scalar(self.pos, np.int32)
        tokens = self.prompt
        t0 = time.perf_counter()
        for i in range(self.max_new_tokens):
            if i == 0 and self.prefill_length > tokens.shape[1]:
                for chunk, n in self._prefill_chunks():  # host-made positions, as in _run_fused
                    length = _scalar(n, np.int32)
                    at = _scalar(self.pos, np.int32)
                    logits, self.cache, pos = fns.logits_padded(self.params, self.cache, chunk, at, length)
                    self.pos += n
            else:
                logits, self.cache, pos = fns.logits(self.params, self.cache, tokens, pos)
                self.pos += tokens.shape[1]
            row = logits[0]
            if self._use_penalty:
                row = apply_repeat_penalty(row, self.repeat_penalty, context[-self.repeat_last_n :])
            t = int(proc(wrap(row)))
            if i == 0:
                self.stats["prefill_s"] = time.perf_counter() - t0
                t1 = time.perf_counter()
            else:
                self.stats["decode_steps"] += 1
                self.stats["decode_s"] = time.perf_counter() - t1
            self.last_token = self.pending_token = t
            if t in self.eos:
                self.finish_reason = "eos"
                if self.yield_eos:
                    self.tokens.append(t)
                    yield t
                return
            context.append(t)
            self.tokens.append(t)
            yield t
            if i + 1 < self.max_new_tokens and self.capacity is not None and self.pos >= self.capacity:
                self.finish_reason = "cache_full"
                return
            tokens = jnp.asarray([[t]], dtype=self.prompt.dtype)
        self.finish_reason = "length"


#: transformers ``generate`` keywords ``generate`` has no option for, and what to use instead
_TRANSFORMERS_OPTIONS = {
    "attention_mask": "generate drives one sequence without padding: pass only the prompt's ids",
    "max_length": "pass max_new_tokens (the number of new tokens; max_length counts the prompt too)",
    "min_length": "generate has no minimum length; stop early yourself or leave eos_token_id out",
    "min_new_tokens": "generate has no minimum length; stop early yourself or leave eos_token_id out",
    "repetition_penalty": "pass repeat_penalty= (and repeat_last_n=, the window of recent ids it covers)",
    "pad_token_id": "generate drives one sequence and pads nothing",
    "generation_config": "pass the options as generate's own keywords",
    "num_beams": "generate samples one sequence (no beam search)",
    "num_return_sequences": "generate drives one sequence: call it once per sequence",
}
for _name in ("do_sample", "temperature", "top_k", "top_p", "seed"):
    _TRANSFORMERS_OPTIONS[_name] = ("pass processor=LogitsProcessor.from_sampling(seed, Sampling.TopKThenTopP(k, p,"
                                    " temperature)) (or another Sampling; None is greedy)")


def _check_options(kwargs: dict[str, Any]) -> None:
    """Raise ``ArgumentType`` for a keyword :class:`Generation` does not take, naming what to use."""
    known = inspect.signature(Generation.__init__).parameters
    for name in kwargs:
        if name not in known:
            hint = _TRANSFORMERS_OPTIONS.get(name) or "its options are " + ", ".join(
                k for k, v in known.items() if v.kind is inspect.Parameter.KEYWORD_ONLY
            )
            raise errors.ArgumentType(f"generate: no option {name}=; {hint}")


def _specs(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` placeholders (shape, dtype, sharding) for a compiled program's outputs."""
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


def compile_generation(
    step_fn: StepFn,
    params: Any,
    cache: Any,
    prompt_tokens: Any,
    max_new_tokens: int,
    processor: LogitsProcessor | Sampling | Callable[[Any], int] | None = None,
    eos_token_id: int | Iterable[int] | None = None,
    *,
    compact: bool = True,
    **kwargs: Any,
) -> list[Any]:
    """Compile the programs ``generate`` with the same arguments runs, without running them
    (:meth:`Generation.compile`, ``compact`` as there); ``params`` / ``cache`` may be
    ``jax.ShapeDtypeStruct`` trees.

    Compiling before loading keeps the compiler's transient memory out of the peak; once the
    programs are compiled JAX's tracing caches can go, and the programs (kept serialized until they
    first run) are best loaded then (:func:`candlejax.xla.load_programs`)::

        shapes = ModelWeights.from_gguf(path, abstract=True)      # no weight loaded
        programs = compile_generation(llama.step, shapes, shapes.new_cache(1, 256), ids, 128)
        load_programs(programs, clear_caches=True)                # optional: JAX's caches go, programs stay
        model = ModelWeights.from_gguf(path, tokenizer=shapes.tokenizer)
        for tok in generate(llama.step, model, model.new_cache(1, 256), ids, 128): ...   # compiles nothing
    """
    _check_options(kwargs)
    return Generation(step_fn, params, cache, prompt_tokens, max_new_tokens, processor, eos_token_id,
                      **kwargs).compile(compact)  # fmt: skip


def generate(
    step_fn: StepFn,
    params: Any,
    cache: Any,
    prompt_tokens: Any,
    max_new_tokens: int,
    processor: LogitsProcessor | Sampling | Callable[[Any], int] | None = None,
    eos_token_id: int | Iterable[int] | None = None,
    **kwargs: Any,
) -> Generation:
    """Generate up to ``max_new_tokens`` ids after ``prompt_tokens``, yielding each as it comes.

    ``step_fn(params, cache, tokens (B, S), pos) -> (logits (B, vocab), cache)`` is the model's
    pure step (``llama.step``; ``model.step`` with ``params=model`` is the same); ``params`` and ``cache``
    are pytrees passed to it as jit arguments (never baked into the program). The prompt (list of ids,
    ``(S,)`` or ``(1, S)``) is prefilled in one call at
    ``start_pos`` (default 0); then one compiled decode step per token. ``processor`` is a
    :class:`LogitsProcessor` (sampled on the device, same tokens as its ``sample`` for the same
    seed; its draw counter advances), a :class:`Sampling` (seed 0), ``None`` (greedy) or any
    callable ``logits (vocab,) Tensor -> int`` (run on the host, Candle's loop). Generation stops
    after an id in ``eos_token_id`` (not yielded unless ``yield_eos=True``) or after
    ``max_new_tokens``.

    Keyword options: ``repeat_penalty`` (1.0 = off) over the last ``repeat_last_n`` ids of
    ``context_tokens`` + prompt + output (Candle's examples' ``--repeat-penalty`` /
    ``--repeat-last-n``); ``start_pos``; ``token_dtype`` (``jnp.uint32``); ``tokens_as_tensor``
    (pass tokens to ``step_fn`` as a candlejax Tensor); ``donate_cache`` (reuse the cache buffers
    in place; the ``cache`` passed in must not be used afterwards); ``pipeline`` (dispatch step
    n+1 before token n reaches the host; default on for accelerators); ``yield_eos``;
    ``compiler_options`` (XLA options for the generation's programs, as ``jax.jit``'s; default: the
    ``generation_compiler_options`` of ``params`` where it has them, e.g. LLaMA models with stacked
    layers use :data:`candlejax.xla.GENERATION_OPTIONS`; ``{}``: XLA's defaults).

    Returns a :class:`Generation` iterator; its ``cache``/``pos``/``last_token`` continue a chat.
    """
    _check_options(kwargs)
    return Generation(step_fn, params, cache, prompt_tokens, max_new_tokens, processor, eos_token_id, **kwargs)
