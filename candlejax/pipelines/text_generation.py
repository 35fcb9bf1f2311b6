"""Text generation: a causal LM, its tokenizer and an explicit KV cache, text in, text out.

requires: candlejax.models.llama / quantized_llama, candlejax.generation, candlejax.tokenizer
provides: ``TextGeneration``, ``sampling_from``

    tg = TextGeneration.from_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    for piece in tg.stream(tg.encode("Once upon a time"), 32):
        print(piece, end="")
    tg.generation.finish_reason            # "eos", "length" or "cache_full"

A chat keeps its history in the cache: :meth:`TextGeneration.chat_turn` continues the cache of the
previous turn (``start_pos``), prefilling only the new messages. The cache holds what a call needs
(its positions rounded up to a power of two, at least 256 slots) and grows, by doubling, up to
``max_seq_len`` as a conversation does (Candle's KV caches grow by concatenation).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from candlejax import errors
from candlejax.generation import LogitsProcessor, Sampling, TokenOutputStream, compile_generation, generate
from candlejax.tensor import unwrap

__all__ = ["MIN_CACHE_SLOTS", "TextGeneration", "processor_from", "sampling_from"]

#: the smallest KV cache :class:`TextGeneration` makes (slots; fewer if ``max_seq_len`` is smaller)
MIN_CACHE_SLOTS = 256


def sampling_from(temperature: float | None, top_k: int | None = None, top_p: float | None = None) -> Any:
    """Candle's examples' sampling choice: greedy without a temperature, else top-k / top-p / both / all."""
    if temperature is None or temperature <= 0:
        if top_k is not None or top_p is not None:
            raise errors.Msg("top_k / top_p need a temperature > 0 (without one, decoding is greedy)")
        return Sampling.ArgMax()
    if top_k is not None and top_p is not None:
        return Sampling.TopKThenTopP(top_k, top_p, temperature)
    if top_k is not None:
        return Sampling.TopK(top_k, temperature)
    if top_p is not None:
        return Sampling.TopP(top_p, temperature)
    return Sampling.All(temperature)


class TextGeneration:
    """``model`` (a :class:`~candlejax.models.llama.Llama` or GGUF ``ModelWeights``), ``tokenizer``
    (:class:`candlejax.tokenizer.Tokenizer`), ``eos_token_ids``; ``cache`` and ``pos`` are the KV
    cache and its length after the last call (``None`` / 0 before the first). ``max_seq_len``
    (default: the model's ``max_position_embeddings``) caps the positions a conversation holds; the
    cache itself is sized for each call (:meth:`cache_slots`) and grows up to that cap."""

    def __init__(self, model: Any, tokenizer: Any, eos_token_ids: Sequence[int] | None = None,
                 max_seq_len: int | None = None):  # fmt: skip
        self.model = model
        self.tokenizer = tokenizer
        eos = list(eos_token_ids) if eos_token_ids is not None else list(getattr(tokenizer, "eos_token_ids", []))
        gen_eos = getattr(model, "generation_eos_token_ids", None) or ()  # generation_config.json's
        self.eos_token_ids = list(dict.fromkeys([*eos, *model.config.eos_token_ids, *gen_eos]))
        if max_seq_len is not None and (isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int)
                                        or max_seq_len <= 0):  # 0 meant "the default" (falsy)  # fmt: skip
            raise errors.InvalidArgument(
                f"TextGeneration: max_seq_len must be a positive int (None: the model's"
                f" {model.max_position_embeddings} positions), got {max_seq_len!r}"
            )
        limit = model.max_position_embeddings
        self.max_seq_len = limit if max_seq_len is None else min(int(max_seq_len), limit)
        self.cache: Any = None
        self.pos = 0
        self.generation: Any = None
        self.history: list[int] = []
        #: prompt ids of the last call that are not in the cache (stopped in its prefill, or
        #: ``max_new_tokens=0``): a ``continue_cache`` call feeds them first
        self.unfed: list[int] = []
        self.messages: list[dict[str, str]] = []  # the conversation so far (chat_turn)
        self._chat_held: tuple[Any, str] | None = None  # (generation, the text chat_turn put in the cache)
        #: pad prompts to bucketed lengths (one compiled prefill per bucket); ``False``: exact lengths
        self.prefill_buckets: bool | None = None

    def __repr__(self) -> str:
        return (f"TextGeneration(model={type(self.model).__name__}, max_seq_len={self.max_seq_len},"
                f" eos_token_ids={self.eos_token_ids}, pos={self.pos})")  # fmt: skip

    @staticmethod
    def from_gguf(path: str | os.PathLike, device: Any = None, tokenizer: str | None = None, mesh: Any = None,
                  abstract: bool = False, precompile: bool = True, **kw: Any) -> TextGeneration:  # fmt: skip
        """A GGUF model (``quantized_llama.ModelWeights.from_gguf``) and its tokenizer (the file's, or
        ``tokenizer``: a ``tokenizer.json``); ``kw`` go to :class:`TextGeneration`.

        ``precompile`` (the default, on one device): before reading the weights, compile on the
        file's shapes the two programs of a greedy call (``processor`` ``None`` or
        ``Sampling.ArgMax()``, no repeat penalty) on a new cache of up to ``MIN_CACHE_SLOTS``
        positions, as ``candlejax generate`` does. Every such call whose prompt is not a whole
        number of 32-token chunks runs them. The compiler's transient memory is then spent and
        handed back before the weights take theirs (SmolLM2-135M: the peak resident memory of a
        128-token generation ~10 MiB lower), and the first call compiles nothing; loading takes the
        compile time instead. Other calls compile their own programs when first met.
        ``precompile=False``: nothing is compiled before a call needs it.
        ``abstract=True``: the model's weights are ``jax.ShapeDtypeStruct`` placeholders
        (``ModelWeights.from_gguf(..., abstract=True)``): :meth:`compile`, then set ``model`` to the
        loaded one, keeps the compiler's transient memory out of the process's peak."""
        from candlejax.models import quantized_llama
        from candlejax.tokenizer import load_tokenizer

        if not isinstance(path, (str, os.PathLike)):
            raise errors.InvalidArgument(
                f"TextGeneration.from_gguf: path must be a str or os.PathLike naming a .gguf file, got {path!r}"
            )
        errors.check_file(path, "TextGeneration.from_gguf", "pass the .gguf file inside it")
        compile_first = bool(precompile) and not abstract and mesh is None  # mesh: tensor-parallel, loaded as is
        model = quantized_llama.ModelWeights.from_gguf(path, device, mesh=mesh, abstract=abstract or compile_first)
        tg = TextGeneration(model, load_tokenizer(tokenizer) if tokenizer else model.tokenizer, **kw)
        if compile_first:
            _compile_greedy(tg)
            try:
                built = model.tokenizer  # the file's, built once
            except errors.Msg:  # the file holds none the loader builds (a tokenizer= was given)
                built = None
            with warnings.catch_warnings():  # the shapes' load has already warned about this file
                warnings.simplefilter("ignore")
                tg.model = quantized_llama.ModelWeights.from_gguf(path, device, tokenizer=built)
        return tg

    @staticmethod
    def from_pretrained(path: str | os.PathLike, dtype: Any = None, device: Any = None, tokenizer: str | None = None,
                        mesh: Any = None, **kw: Any) -> TextGeneration:  # fmt: skip
        """A Llama-family model folder (``config.json``, safetensors) and its ``tokenizer.json``
        (or ``tokenizer``); ``kw`` go to :class:`TextGeneration`.
        """
        from candlejax.models import llama
        from candlejax.tokenizer import load_tokenizer

        path = errors.path_arg(path, "TextGeneration.from_pretrained")
        if os.sep in path or path.startswith("."):
            if not os.path.isdir(path):
                raise errors.Msg(f"no such folder: {os.fspath(path)!r}")
        model = llama.Llama.from_pretrained(path, dtype=dtype, device=device, mesh=mesh)  # mesh: onto shards
        tok_path = tokenizer or model.tokenizer_path
        if tok_path is None:
            raise errors.Msg(f"no tokenizer.json found for {os.fspath(path)}; pass a tokenizer")
        return TextGeneration(model, load_tokenizer(tok_path), **kw)

    def encode(self, prompt: str, chat: bool = False, system: str | None = None) -> list[int]:
        """Prompt ids (wrapped in the chat template with ``chat``); never empty."""
        if not isinstance(prompt, str):  # the tokenizers library's TypeError named none of this
            raise errors.InvalidArgument(
                f"TextGeneration.encode takes a str prompt, got {prompt!r:.60} ({type(prompt).__name__})"
            )
        _check_system(system, "encode")
        tok = self.tokenizer
        if chat:
            msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        else:
            ids = tok.encode(prompt)
        if not ids:
            ids = [tok.bos_token_id if tok.bos_token_id is not None else 0]
        return list(ids)

    def reset(self) -> None:
        """Forget the conversation: the next call starts a new cache."""
        self.cache, self.pos, self.history, self.generation, self.unfed = None, 0, [], None, []
        self.messages = []
        self._chat_held = None

    def cache_slots(self, positions: int) -> int:
        """The slots of a cache that holds ``positions``: the next power of two, at least
        ``MIN_CACHE_SLOTS``, at most ``max_seq_len``. Each size compiles its own programs, so sizes
        double rather than follow every call."""
        from candlejax.nn import StackedKvCache

        return StackedKvCache.slots_for(positions, self.max_seq_len, MIN_CACHE_SLOTS)

    def _cache_for(self, cache: Any, positions: int) -> Any:
        """``cache`` (``None``: a new one), grown with its slots kept to hold ``positions`` (up to
        ``max_seq_len``)."""
        slots = self.cache_slots(positions)
        if cache is None:
            return self.model.new_cache(1, slots)
        if cache.max_seq_len >= slots:
            return cache
        return cache.grow(slots)  # its slots kept, placed as it is (a mesh: heads split)

    def compile(self, ids: Sequence[int], max_new_tokens: int, processor: Any = None, *, repeat_penalty: float = 1.0,
                repeat_last_n: int = 64) -> list[Any]:  # fmt: skip
        """Compile, without running, the programs :meth:`stream` runs for a new conversation with
        these arguments (:func:`candlejax.generation.compile_generation`); works on a model loaded
        with ``abstract=True``, so the programs can be compiled before the weights are loaded."""
        from candlejax.models import llama

        if len(ids) > self.max_seq_len:
            raise errors.Msg(f"the prompt ({len(ids)} tokens) does not fit the cache of {self.max_seq_len} positions")
        cache = self.model.new_cache(1, self.cache_slots(len(ids) + int(max_new_tokens)))
        return compile_generation(llama.step, self.model, cache, ids, max_new_tokens, processor,
                                  self.eos_token_ids or None, repeat_penalty=repeat_penalty,
                                  repeat_last_n=repeat_last_n, prefill_buckets=self.prefill_buckets)  # fmt: skip

    def stream(self, ids: Sequence[int], max_new_tokens: int, processor: Any = None, *, repeat_penalty: float = 1.0,
               repeat_last_n: int = 64, continue_cache: bool = False,
               after_prompt: bool = False) -> Iterator[str]:  # fmt: skip
        """Generate after ``ids`` (token ids, or a str prompt, encoded with :meth:`encode`), yielding decoded text
        pieces; ``max_new_tokens`` >= 0. With ``continue_cache``, ``ids`` follow the previous call's tokens in the
        same cache (a chat). A prompt that does not fit the cache raises; a full cache ends with
        ``generation.finish_reason == "cache_full"``. (Candle's ``TextGeneration::run(prompt, sample_len)``.)
        ``after_prompt``: the pieces continue the prompt's text (to print after it), as
        ``decode(ids + new)[len(decode(ids)):]``: the first keeps the leading space that a SentencePiece
        decoder strips from a text's first token (:class:`TokenOutputStream`'s ``context``)."""
        ids = _check_stream_args(self, ids, max_new_tokens)
        max_new_tokens = int(max_new_tokens)  # a numpy integer: a Python int for the compiled loop
        return self._stream(ids, max_new_tokens, processor, repeat_penalty=repeat_penalty,
                            repeat_last_n=repeat_last_n, continue_cache=continue_cache,
                            after_prompt=after_prompt)  # fmt: skip

    def _stream(self, ids: list[int], max_new_tokens: int, processor: Any, *, repeat_penalty: float,
                repeat_last_n: int, continue_cache: bool, after_prompt: bool = False) -> Iterator[str]:  # fmt: skip
        # the call's own cache, position and history (a new conversation: a fresh cache, so threads
        # sharing the pipeline for separate prompts never feed each other's cache)
        unfed = self.unfed
        if not continue_cache or self.cache is None:
            self.cache, self.pos, self.history = None, 0, []
            cache, pos, history, unfed = None, 0, [], []
        else:
            cache, pos, history = self.cache, self.pos, self.history
        ids = [*unfed, *(self.generation.continuation() if continue_cache and self.generation else ()), *ids]
        if pos + len(ids) > self.max_seq_len:
            raise errors.Msg(
                f"the prompt ({len(ids)} tokens after {pos} in the cache) does not fit the cache of"
                f" {self.max_seq_len} positions; shorten it, reset() the conversation or raise max_seq_len"
            )
        self.model.check_positions(pos, len(ids))
        cache = self._cache_for(cache, pos + len(ids) + max_new_tokens)
        from candlejax.models import llama

        gen = generate(llama.step, self.model, cache, ids, max_new_tokens, processor, self.eos_token_ids or None,
                       start_pos=pos, context_tokens=history, repeat_penalty=repeat_penalty,
                       repeat_last_n=repeat_last_n, prefill_buckets=self.prefill_buckets)  # fmt: skip
        self.cache = None  # donated to the generation
        self.generation = gen
        out = TokenOutputStream(self.tokenizer, context=ids if after_prompt else ())
        try:
            for t in gen:
                piece = out.next_token(t)
                if piece is not None:
                    yield piece
            rest = out.decode_rest()
            if rest:
                yield rest
        finally:
            self.cache, self.pos = gen.cache, gen.pos
            seq = [*history, *ids, *gen.tokens]
            if gen.finish_reason == "eos":  # the EOS ended the reply (not yielded): the cache may hold it
                seq.append(gen.last_token)
            self.history = seq[: gen.pos]  # exactly the tokens the cache holds
            self.unfed = [*history, *ids][gen.pos :]  # stopped in the prefill, or max_new_tokens=0

    def chat_turn(self, message: str, max_new_tokens: int, processor: Any = None, system: str | None = None,
                  **kw: Any) -> Iterator[str]:  # fmt: skip
        """One chat turn: the user ``message`` (after ``system`` on the first turn), prefilled after
        the conversation already in the cache. The chat template renders the whole conversation
        (``messages``, the replies as generated); only the text after what the cache holds is new."""
        if not isinstance(message, str):  # the template's jinja error named none of this
            raise errors.InvalidArgument(
                f"TextGeneration.chat_turn takes a str message, got {message!r:.60} ({type(message).__name__})"
            )
        _check_system(system, "chat_turn")
        first = self.generation is None or self.cache is None
        if first:
            self.messages = [{"role": "system", "content": system}] if system else []
        msgs = [*self.messages, {"role": "user", "content": message}]
        tok = self.tokenizer
        full = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        text = full
        if not first:  # drop what the cache already holds (earlier turns, the last reply and its EOS)
            prev = self.generation
            if self._chat_held is not None and self._chat_held[0] is prev:
                # the rendered conversation + the reply as the template renders it: decoding the
                # cache's ids instead does not give the template's text back where a decoder adds or
                # drops spaces (SentencePiece: "[/INST] the world" vs "[/INST]the world"), and the
                # reply would then be fed to the cache a second time
                held = self._chat_held[1]
            else:  # the last call was a plain stream(): what the cache holds, decoded
                held = tok.decode([*self.history, *prev.continuation()], skip_special_tokens=False)
            text = full[_common_prefix_len(full, held) :]
        ids = _ids_of_tail(tok, full, len(full) - len(text))
        before = self.generation
        try:
            yield from self.stream(ids, max_new_tokens, processor, continue_cache=not first, **kw)
        finally:  # also when the caller stops early: the cache holds the reply so far
            gen = self.generation
            if gen is not None and gen is not before:
                reply = tok.decode(gen.tokens)
                end = tok.decode([gen.last_token], skip_special_tokens=False) if gen.finish_reason == "eos" else ""
                self.messages = [*msgs, {"role": "assistant", "content": reply}]
                self._chat_held = (gen, full + reply + end)


def _check_stream_args(tg: TextGeneration, ids: Any, max_new_tokens: Any) -> list[int]:
    """``stream``'s arguments checked when it is called (a generator body runs only at the first ``next``)."""
    if (isinstance(max_new_tokens, bool | np.bool_) or not isinstance(max_new_tokens, int | np.integer)
            or max_new_tokens < 0):  # a numpy integer counts (transformers' generate takes one)  # fmt: skip
        raise errors.InvalidArgument(
            f"TextGeneration.stream: max_new_tokens must be an int >= 0, got {max_new_tokens!r}"
        )
    if isinstance(ids, str):
        return tg.encode(ids)
    what = "TextGeneration.stream takes token ids (tg.encode(prompt)) or a str prompt, got"
    if not hasattr(ids, "shape") and (not hasattr(ids, "__iter__") or isinstance(ids, (bytes, dict))):
        # None, one int, ...: list() raised a bare TypeError
        raise errors.InvalidArgument(f"{what} {ids!r:.40} ({type(ids).__name__})")
    ids = list(unwrap(ids).reshape(-1).tolist()) if hasattr(ids, "shape") else list(ids)
    bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, (int, np.integer))]
    if bad:
        raise errors.InvalidArgument(f"{what} {bad[0]!r:.40} ({type(bad[0]).__name__}) among the ids")
    return [int(t) for t in ids]


def _ids_of_tail(tok: Any, full: str, start: int) -> list[int]:
    """The ids of ``full[start:]`` as tokenizing all of ``full`` gives them (transformers tokenizes the
    whole conversation): tokenized alone, the tail is the start of a text, where a SentencePiece
    tokenizer adds a ``▁`` that it does not add after a special token. The tail alone where no token
    boundary falls at ``start`` (offsets trimmed of spaces, as by a byte-level post-processor, included)."""
    if start == 0:
        return list(tok.encode(full, add_special_tokens=False))
    enc = tok.encode(full, add_special_tokens=False)
    offsets = enc.get_offsets()
    k = next((i for i, (a, _) in enumerate(offsets) if a >= start), len(offsets))
    at_boundary = (k == len(offsets) or offsets[k][0] == start) and (k == 0 or offsets[k - 1][1] == start)
    if at_boundary and all(b <= start for _, b in offsets[:k]):
        return list(enc[k:])
    return list(tok.encode(full[start:], add_special_tokens=False))


def _check_system(system: Any, op: str) -> None:
    if system is not None and not isinstance(system, str):
        raise errors.InvalidArgument(
            f"TextGeneration.{op}: system must be a str or None, got {system!r:.60} ({type(system).__name__})"
        )


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def processor_from(seed: int, temperature: float | None, top_k: int | None = None,
                   top_p: float | None = None) -> LogitsProcessor:  # fmt: skip
    """A seeded :class:`LogitsProcessor` for :func:`sampling_from`'s choice."""
    return LogitsProcessor.from_sampling(seed, sampling_from(temperature, top_k, top_p))


def _compile_greedy(tg: TextGeneration) -> None:
    """Compile and load the programs of a greedy call on a new cache of ``cache_slots(3)`` slots
    (the prompt in padded 32-token chunks) for ``tg``'s abstract model, the compiler's garbage
    handed back first (:func:`candlejax.xla.load_programs` with ``drop_tracing``)."""
    from candlejax.xla import load_programs

    # a one-token prompt: one padded chunk; 2 new tokens: the decode step too
    load_programs(tg.compile([0], 2), drop_tracing=True)
