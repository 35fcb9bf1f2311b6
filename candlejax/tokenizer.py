"""Tokenizers for the models: a Hugging Face ``tokenizers.Tokenizer`` built from GGUF metadata or
read from a ``tokenizer.json``, with its special tokens and chat template.

requires: tokenizers, jinja2 (for chat templates), numpy
provides: ``Tokenizer``, ``ChatTemplate``, ``tokenizer_from_gguf_metadata``, ``load_tokenizer``,
``gguf_tokenizer_metadata``, ``bytes_to_unicode``, ``Encoding``, ``PaddingParams``, ``PaddingStrategy``,
``PaddingDirection``, ``TruncationParams``

Candle's examples load ``tokenizer.json`` with the ``tokenizers`` crate, and for GGUF models fetch
the separate tokenizer file; a GGUF file however carries its tokenizer in its metadata (llama.cpp's
``tokenizer.ggml.*`` keys). :func:`tokenizer_from_gguf_metadata` rebuilds it as llama.cpp reads it:

* ``tokenizer.ggml.model == "gpt2"``: byte-level BPE with the file's merges; the pre-tokenizer
  split follows ``tokenizer.ggml.pre`` (GPT-2's regex; digits split one by one first for
  ``smollm``/``starcoder``/...; llama-3, qwen2, qwen3.5, tekken and gpt-4o regexes, by llama.cpp's
  names for them; another name warns).
* ``"llama"``: SentencePiece BPE with byte fallback (``<0x..>`` tokens); merges from the file, or
  derived from the scores when it has none.
* tokens typed CONTROL (3) or UNKNOWN (2) become special added tokens, USER_DEFINED (4) plain
  added tokens.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jax
import numpy as np

from candlejax import errors
from candlejax.optional import require
from candlejax.tensor._core import TensorBase, int_arg

# llama.cpp token types (tokenizer.ggml.token_type)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SEED_CODER_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: pre types that llama.cpp reads as its llama-3 tokenizer: llama-3's regex, whole words looked up
#: before merging, BOS added unless ``tokenizer.ggml.add_bos_token`` says otherwise
_LLAMA3_PRE = ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"]
#: tokenizer.ggml.pre -> the regex split run before the byte-level step (llama.cpp's names, llama-vocab.cpp)
PRE_TOKENIZER_SPLITS: dict[str, str] = {
    **dict.fromkeys([*_LLAMA3_PRE, "dbrx", "smaug-bpe", "glm4", "chatglm-bpe"], _LLAMA3_SPLIT),
    **dict.fromkeys(
        ["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan", "solar-open", "grok-2"],
        _QWEN2_SPLIT,
    ),
    "qwen35": _QWEN35_SPLIT,
    "seed-coder": _SEED_CODER_SPLIT,
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], _GPT4O_SPLIT),
}
#: pre types for which llama.cpp isolates every number character before GPT-2's regex
#: ("minerva" is kept for metadata written with that spelling; llama.cpp's is "minerva-7b")
DIGIT_SPLIT_PRE = frozenset(
    ["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "minerva", "mellum2"]
)
#: pre types split with GPT-2's own regex (llama.cpp's LLAMA_VOCAB_PRE_TYPE_GPT2 and its aliases);
#: a missing pre (or "default") gets it too, as in transformers
GPT2_SPLIT_PRE = frozenset(
    ["default", "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
     "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais", "exaone4", "trillion",
     "granite-docling"]
)  # fmt: skip
#: pre types for which llama.cpp looks a whole word up in the vocabulary before merging
IGNORE_MERGES_PRE = frozenset([*_LLAMA3_PRE, "tekken"])
#: pre types for which llama.cpp adds BOS when the file has no ``tokenizer.ggml.add_bos_token``
DEFAULT_BOS_PRE = frozenset([*_LLAMA3_PRE, "tekken", "chameleon"])


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


# --- metadata access --------------------------------------------------------------------------------
def _py(v: Any) -> Any:
    """numpy scalars/arrays and bytes from a GGUF reader -> plain Python values."""
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, list | tuple):
        return [_py(x) for x in v]
    return v


def gguf_tokenizer_metadata(source: Any) -> dict[str, Any]:
    """The ``tokenizer.*`` (and ``general.architecture``) metadata of a GGUF file as plain values.

    ``source`` is a path (read with :mod:`candlejax.io.gguf`), a ``candlejax.io.gguf.Content``, a
    ``gguf.GGUFReader`` (the ``gguf`` package), or a mapping of key -> value (plain values, numpy
    arrays, ``candlejax.io.gguf.Value`` or ``gguf`` field objects).
    """
    _prepare_tokenizer_building()
    if isinstance(source, str | os.PathLike):
        from candlejax.io import gguf as cj_gguf

        source = cj_gguf.Content.read(os.fspath(source)).metadata
    if hasattr(source, "metadata") and not hasattr(source, "fields"):  # a candlejax.io.gguf.Content
        source = source.metadata
    fields = getattr(source, "fields", None)
    items: Iterable[tuple[str, Any]]
    items = fields.items() if fields is not None else dict(source).items()
    out: dict[str, Any] = {}
    for k, v in items:
        if not (k.startswith("tokenizer.") or k == "general.architecture"):
            continue
        if hasattr(v, "contents") and callable(v.contents):
            v = v.contents()
        elif hasattr(v, "value") and not isinstance(v, np.ndarray | np.generic):
            v = v.value
        out[k] = _py(v)
    return out


# --- building a tokenizers.Tokenizer from GGUF metadata ------------------------------------------
def _added_tokens(tokens: Sequence[str], types: Sequence[int], vocab: Mapping[str, int], byte_level: bool) -> tuple:
    from tokenizers import AddedToken

    alphabet = set(bytes_to_unicode().values()) if byte_level else None
    special, plain = [], []
    for tok, ty in zip(tokens, types):
        # UNKNOWN (<unk>) too: llama.cpp matches it whole, as CONTROL; transformers makes it the unk special token
        if ty in (TOKEN_CONTROL, TOKEN_UNKNOWN) and (alphabet is None or set(tok) <= alphabet):
            special.append(AddedToken(tok, special=True, normalized=False))
        elif ty == TOKEN_USER_DEFINED and tok in vocab:
            plain.append(AddedToken(tok, special=False, normalized=False))
    return special, plain


def _merges(meta: Mapping[str, Any], vocab: Mapping[str, int], tokens: Sequence[str],
            source: str = "<metadata>") -> list[tuple[str, str]]:  # fmt: skip
    merges = meta.get("tokenizer.ggml.merges")
    if merges:
        out = []
        for i, m in enumerate(merges):
            # checked here: the tokenizers library raises a bare Exception (or panics) on a bad merge
            a, sep, b = m.partition(" ") if isinstance(m, str) else ("", "", "")
            missing = [t for t in (a, b, a + b) if t not in vocab] if sep and a and b else None
            if missing is None or missing:
                why = (
                    "is not two tokens separated by a space"
                    if missing is None
                    else f"names {missing[0]!r}, which is not in tokenizer.ggml.tokens"
                )
                raise errors.Gguf(f"gguf {source}: tokenizer.ggml.merges[{i}] = {m!r} {why}")
            out.append((a, b))
        return out
    scores = meta.get("tokenizer.ggml.scores")
    if scores is None:
        return []
    # SentencePiece BPE: every split of a piece into two pieces of the vocabulary is a merge, ranked
    # by the score of the merged piece (higher first), as sentencepiece and llama.cpp rank them.
    score = {t: float(s) for t, s in zip(tokens, scores)}
    found: list[tuple[str, str, float]] = []
    for piece, s in score.items():
        local = []
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab:
                local.append((left, right, s))
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        found.extend(local)
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in found]


def _post_processor(bos: str | None, eos: str | None, bos_id: int | None, eos_id: int | None, byte_level: bool) -> Any:
    from tokenizers import processors

    single, pair, special = "$A:0", "$A:0 $B:1", []
    if bos is not None and bos_id is not None:
        single, pair = f"{bos}:0 {single}", f"{bos}:0 $A:0 {bos}:1 $B:1"
        special.append((bos, bos_id))
    if eos is not None and eos_id is not None:
        single = f"{single} {eos}:0"
        pair = pair.replace("$A:0", f"$A:0 {eos}:0").replace("$B:1", f"$B:1 {eos}:1")
        if (eos, eos_id) not in special:
            special.append((eos, eos_id))
    tp = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
    if byte_level:
        return processors.Sequence([processors.ByteLevel(trim_offsets=False), tp])
    return tp


def _default_add_bos(kind: Any, pre: Any) -> bool:
    """Whether llama.cpp adds BOS when the file has no ``tokenizer.ggml.add_bos_token``: for
    SentencePiece (``"llama"``) vocabularies and the llama-3 / tekken / chameleon byte-level ones."""
    return kind == "llama" or (kind == "gpt2" and pre in DEFAULT_BOS_PRE)


def _prepare_tokenizer_building() -> None:
    """Import the ``tokenizers`` modules and make the cached byte-level table the GGUF builder uses,
    before the metadata's tens of thousands of token strings are decoded. Allocated among those
    short-lived strings, these long-lived objects kept parts of Python's heap from being returned
    once the strings were freed (SmolLM2's tokenizer: ~13 -> ~9 MiB resident)."""
    require("tokenizers", "the tokenizer of a GGUF file")
    from tokenizers import decoders, models, pre_tokenizers, processors  # noqa: F401

    bytes_to_unicode()


def tokenizer_from_gguf_metadata(meta: Mapping[str, Any], source: str | None = None) -> Any:
    """A ``tokenizers.Tokenizer`` from GGUF tokenizer metadata (key -> value).

    Supports ``tokenizer.ggml.model`` ``"gpt2"`` (byte-level BPE) and ``"llama"`` (SentencePiece
    BPE with byte fallback). BOS/EOS are added by the post-processor when
    ``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` say so (defaults, as llama.cpp: BOS for
    ``"llama"`` and for the llama-3 / tekken ``tokenizer.ggml.pre`` types, none for other ``"gpt2"``
    ones). A ``pre`` type whose split candlejax lacks warns and uses GPT-2's regex. Corrupt metadata
    (a merge of unknown tokens, values of the wrong type) raises :class:`candlejax.errors.Gguf`
    naming ``source`` (the file).
    """
    where = source or "<metadata>"
    _prepare_tokenizer_building()
    try:
        return _build_tokenizer(meta, where)
    except errors.Error:
        raise
    except Exception as e:  # the tokenizers library's bare Exception, TypeErrors from odd values
        raise errors.Gguf(f"gguf {where}: cannot build the tokenizer from its tokenizer.ggml.* metadata: {e}") from e


def _build_tokenizer(meta: Mapping[str, Any], source: str) -> Any:
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    meta = {k: _py(v) for k, v in meta.items()}
    kind = meta.get("tokenizer.ggml.model")
    tokens: list[str] = meta.get("tokenizer.ggml.tokens") or []
    if not tokens:
        raise errors.Msg("tokenizer: the GGUF metadata has no tokenizer.ggml.tokens")
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens)
    pre = meta.get("tokenizer.ggml.pre")
    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    eos_id = meta.get("tokenizer.ggml.eos_token_id")
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")

    if kind == "gpt2":
        spelling = bytes_to_unicode()
        alphabet = set(spelling.values())
        vocab: dict[str, int] = {}
        for i, tok in enumerate(tokens):
            if not set(tok) <= alphabet:
                tok = "".join(spelling[b] for b in tok.encode("utf-8"))
            vocab.setdefault(tok, i)
        merges = _merges(meta, vocab, tokens, source)
        model = models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False, ignore_merges=pre in IGNORE_MERGES_PRE)
        tk = HFTokenizer(model)
        split = PRE_TOKENIZER_SPLITS.get(pre) if pre else None
        if split is not None:
            tk.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(split), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        elif pre in DIGIT_SPLIT_PRE:
            tk.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Digits(individual_digits=True),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                ]
            )
        else:
            if pre is not None and pre not in GPT2_SPLIT_PRE:
                errors.warn_at_caller(
                    f"gguf {source}: tokenizer.ggml.pre = {pre!r} names a split candlejax does not reproduce;"
                    " using GPT-2's regex, so token ids may differ from llama.cpp's for this model"
                )
            tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tk.decoder = decoders.ByteLevel()
        byte_level = True
    elif kind == "llama":
        vocab = {}
        for i, tok in enumerate(tokens):
            vocab.setdefault(tok, i)
        merges = _merges(meta, vocab, tokens, source)
        unk = tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else None
        model = models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
        tk = HFTokenizer(model)
        prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
        tk.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="\u2581", prepend_scheme="first" if prefix else "never", split=False
        )
        strip = [decoders.Strip(" ", 1, 0)] if prefix else []
        tk.decoder = decoders.Sequence(
            [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), *strip]
        )
        byte_level = False
    else:
        raise errors.Msg(
            f"tokenizer: cannot build a tokenizer for tokenizer.ggml.model={kind!r}; supported: 'gpt2', 'llama'"
        )

    special, plain = _added_tokens(tokens, types, vocab, byte_level)
    if special:
        tk.add_special_tokens(special)
    if plain:
        tk.add_tokens(plain)
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", _default_add_bos(kind, pre)))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    bos = tokens[bos_id] if add_bos and bos_id is not None and 0 <= bos_id < len(tokens) else None
    eos = tokens[eos_id] if add_eos and eos_id is not None and 0 <= eos_id < len(tokens) else None
    tk.post_processor = _post_processor(bos, eos, bos_id if bos else None, eos_id if eos else None, byte_level)
    return tk


# --- argument checks ----------------------------------------------------------------------------------
def _text(text: Any, op: str, what: str = "text") -> str:
    if not isinstance(text, str):
        raise errors.ArgumentType(f"tokenizer.{op}: {what} must be a str, got {type(text).__name__}")
    return text


def _flag(v: Any, op: str, what: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise errors.ArgumentType(f"tokenizer.{op}: {what} must be a bool, got {v!r:.40} ({type(v).__name__})")
    return bool(v)


def _token_id(i: Any, op: str) -> int:
    i = int_arg(i, f"tokenizer.{op}", "token id")
    if not 0 <= i < 2**32:
        raise errors.InvalidArgument(f"tokenizer.{op}: token id {i} is out of range (ids are u32)")
    return i


def token_ids(ids: Any, op: str) -> list[int]:
    """Token ids as a list of ints: a list, a numpy / jax array or a Tensor of integers (one row);
    floats, strings, negative or too large ids, several rows raise, naming ``op``."""
    v = getattr(ids, "_a", ids)
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        v = np.asarray(v)
        if v.dtype.kind not in "iu":
            raise errors.ArgumentType(f"tokenizer.{op}: token ids must be integers, got an array of {v.dtype}")
        if v.ndim > 1 and v.size and v.size != v.shape[-1]:
            raise errors.InvalidArgument(
                f"tokenizer.{op}: takes one sequence of ids, got an array of shape {v.shape}"
                f" ({v.size // v.shape[-1]} rows); decode each row, or use decode_batch"
            )
        v = v.reshape(-1).tolist()
    elif isinstance(v, (str, bytes)) or not isinstance(v, Iterable):
        raise errors.ArgumentType(f"tokenizer.{op}: expected a list of token ids, got {type(ids).__name__}")
    return [_token_id(i, op) for i in v]


# --- chat templates --------------------------------------------------------------------------------
@functools.cache
def _render_error_type(jinja_error: type) -> type:
    """A candlejax error that is also the jinja2 error a template raised (``TemplateError`` from its
    ``raise_exception``, ``UndefinedError``, ``SecurityError``: what transformers raises)."""

    def as_text(self: Any) -> str:
        return str(self.args[0])

    doc = "A chat template that failed to render; also jinja2's " + jinja_error.__name__
    return type(f"ChatTemplate{jinja_error.__name__}", (errors.Msg, jinja_error), {"__str__": as_text, "__doc__": doc})


#: the most characters a chat template may render, and the most characters or items one of its operations
#: (``'x' * n``, ``s.ljust(n)``, ``s|center(n)``, a format width, ``batch(n)``) may build: larger is refused
#: before it is built (real prompts are a few MB; transformers' sandbox has no such limit and tries)
CHAT_TEMPLATE_MAX_SIZE = 1 << 28
#: the most bits of an integer ``a ** b`` a chat template may compute
CHAT_TEMPLATE_MAX_POW_BITS = 1 << 20
#: a chat template still rendering after this many seconds (nested loops) is stopped
CHAT_TEMPLATE_TIME_LIMIT_S = 30.0

#: the widths and precisions of ``%`` and ``str.format`` specs, and a ``str.format`` width taken from an argument
_FORMAT_SIZES = re.compile(r"%[#0 +\-]*(\d+)?(?:\.(\d+))?|\{[^{}]*?:[^{}]*?(\d+)(?:\.(\d+))?")
_NESTED_SPEC = re.compile(r"%[#0 +\-]*(?:\d*\.)?\*|\{[^{}]*:[^{}]*\{")


#: the str methods and the filters whose int arguments are sizes of what they build
_SIZED_STR_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs", "replace"})
_SIZED_FILTERS = ("center", "indent", "batch", "slice", "format", "replace", "tojson")


def _too_big(n: Any) -> bool:
    return isinstance(n, int) and abs(n) > CHAT_TEMPLATE_MAX_SIZE


def _check_template_sizes(what: str, fmt: Any, args: Iterable[Any]) -> None:
    """Refuse an operation of a chat template that would build more than ``CHAT_TEMPLATE_MAX_SIZE``
    characters: an int argument above it (a width, a repeat count), or a format width above it."""
    jinja2 = require("jinja2", "a chat template")
    args = list(args)
    big = [a for a in args if _too_big(a)]
    if isinstance(fmt, str):
        widths = (int(w) for m in _FORMAT_SIZES.finditer(fmt) for w in m.groups() if w)
        big += [w for w in widths if w > CHAT_TEMPLATE_MAX_SIZE]
        if not _NESTED_SPEC.search(fmt):  # plain formatting: a big number argument is only printed
            big = [b for b in big if b not in args]
    if big:
        raise jinja2.sandbox.SecurityError(
            f"{what} with size {big[0]} would build more than CHAT_TEMPLATE_MAX_SIZE ({CHAT_TEMPLATE_MAX_SIZE})"
            " characters or items"
        )


def _check_binop(operator: str, left: Any, right: Any) -> None:
    jinja2 = require("jinja2", "a chat template")
    seqs = (str, bytes, list, tuple)
    if operator == "*":
        seq, n = (left, right) if isinstance(left, seqs) else (right, left)
        if isinstance(seq, seqs) and isinstance(n, int) and len(seq) * n > CHAT_TEMPLATE_MAX_SIZE:
            _check_template_sizes(f"{type(seq).__name__} * int", None, [len(seq) * n])
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            if abs(left).bit_length() * right > CHAT_TEMPLATE_MAX_POW_BITS:
                raise jinja2.sandbox.SecurityError(
                    f"{left} ** {right} has more than CHAT_TEMPLATE_MAX_POW_BITS ({CHAT_TEMPLATE_MAX_POW_BITS}) bits"
                )
    elif operator == "%" and isinstance(left, str):
        _check_template_sizes("str % args", left, right if isinstance(right, tuple) else [right])


def _size_checked_filter(name: str, f: Any) -> Any:
    @functools.wraps(f)  # keeps jinja's pass_context / pass_environment marks
    def checked(*args: Any, **kwargs: Any) -> Any:
        start = 1 + (getattr(f, "jinja_pass_arg", None) is not None)  # the value, after the context
        rest = [*args[start:], *kwargs.values()]
        value = args[start - 1] if len(args) >= start else None
        if name == "replace" and len(rest) >= 2 and isinstance(value, str) and isinstance(rest[0], str):
            count = value.count(rest[0]) if rest[0] else len(value) + 1
            rest = [len(value) + count * max(len(str(rest[1])) - len(rest[0]), 0)]
        _check_template_sizes(f"the {name} filter", value if name == "format" else None, rest)
        return f(*args, **kwargs)

    return checked


class _RenderTimeout(BaseException):
    """Raised inside a chat template's render by its watchdog (a ``BaseException``, as ``KeyboardInterrupt``,
    so that no ``except Exception`` in jinja swallows it)."""


def _render_in_time(template: Any, **variables: Any) -> str:
    """``template.render(**variables)``, stopped past ``CHAT_TEMPLATE_TIME_LIMIT_S`` seconds (a watchdog thread
    raises in the rendering thread, as Ctrl-C would: loops of the template stop, one long builtin call runs
    to its end) or ``CHAT_TEMPLATE_MAX_SIZE`` characters of text."""
    import ctypes
    import threading

    jinja2 = require("jinja2", "a chat template")
    limit, tid, lock, state = CHAT_TEMPLATE_TIME_LIMIT_S, threading.get_ident(), threading.Lock(), {"running": True}

    def stop() -> None:
        with lock:
            if state["running"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), ctypes.py_object(_RenderTimeout))

    timer = threading.Timer(limit, stop)
    timer.daemon = True
    parts, n = [], 0
    try:
        try:
            timer.start()
            for part in template.generate(**variables):
                n += len(part)
                if n > CHAT_TEMPLATE_MAX_SIZE:
                    raise jinja2.exceptions.TemplateRuntimeError(
                        f"the template renders more than CHAT_TEMPLATE_MAX_SIZE ({CHAT_TEMPLATE_MAX_SIZE}) characters"
                    )
                parts.append(part)
        finally:
            timer.cancel()
            with lock:
                state["running"] = False
            if state.get("fired"):  # not delivered yet: cleared, so that it cannot land after the render
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), None)
    except _RenderTimeout:
        raise jinja2.exceptions.TemplateRuntimeError(
            f"the template took longer than {limit} s (CHAT_TEMPLATE_TIME_LIMIT_S) to render"
        ) from None
    return "".join(parts)


@functools.cache
def _jinja_env() -> Any:
    jinja2 = require("jinja2", "a chat template")
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class SizeLimitedSandbox(ImmutableSandboxedEnvironment):
        """transformers' sandbox, with the sizes its operations build bounded (``CHAT_TEMPLATE_MAX_SIZE``)."""

        intercepted_binops = frozenset({"*", "**", "%"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _check_binop(operator, left, right)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            owner, name = getattr(__obj, "__self__", None), getattr(__obj, "__name__", "")
            if isinstance(owner, (str, bytes)) and name in _SIZED_STR_METHODS:
                sizes = [*args, *kwargs.values()]
                if name == "replace" and len(args) >= 2 and isinstance(args[0], type(owner)):
                    count = owner.count(args[0]) if args[0] else len(owner) + 1
                    sizes = [len(owner) + count * max(len(args[1]) - len(args[0]), 0)]
                _check_template_sizes(f"{type(owner).__name__}.{name}", None, sizes)
            return super().call(__context, __obj, *args, **kwargs)

        def wrap_str_format(self, value: Any) -> Any:  # str.format / format_map, wrapped when looked up
            wrapped = super().wrap_str_format(value)
            if wrapped is None:
                return None

            def checked(*args: Any, **kwargs: Any) -> str:
                values = [*args, *kwargs.values()]
                if value.__name__ == "format_map" and args and isinstance(args[0], Mapping):
                    values = list(args[0].values())
                _check_template_sizes(f"str.{value.__name__}", value.__self__, values)
                return wrapped(*args, **kwargs)

            return checked

    class GenerationTag(Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers marks assistant text with it)."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = SizeLimitedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.filters.update({name: _size_checked_filter(name, env.filters[name]) for name in _SIZED_FILTERS})
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _message_dict(m: Any) -> Any:
    """A dataclass message (``Message.user("Hi")``) as a dict of its fields, as transformers renders it."""
    if dataclasses.is_dataclass(m) and not isinstance(m, type):
        return {f.name: getattr(m, f.name) for f in dataclasses.fields(m)}
    return m


class ChatTemplate:
    """A Jinja chat template, rendered as ``transformers``' ``apply_chat_template`` renders it
    (sandboxed environment, ``trim_blocks``/``lstrip_blocks``, ``raise_exception``, ``tojson``,
    ``strftime_now``; the special tokens are template variables)."""

    def __init__(self, source: str, special_tokens: Mapping[str, str | None] | None = None) -> None:
        jinja2 = require("jinja2", "a chat template")

        if not isinstance(source, str):
            raise errors.ArgumentType(f"chat template: the template must be a str, got {type(source).__name__}")
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        try:
            self._template = _jinja_env().from_string(source)
        except jinja2.exceptions.TemplateSyntaxError as e:  # transformers raises jinja's error: this is both
            raise _render_error_type(type(e))(f"chat template: {type(e).__name__}: {e}") from e

    def render(
        self,
        messages: Sequence[Mapping[str, Any] | Any],
        add_generation_prompt: bool = True,
        tools: Any = None,
        documents: Any = None,
        continue_final_message: bool = False,
        **kwargs: Any,
    ) -> str:
        """The prompt text for ``messages`` (``[{"role": ..., "content": ...}, ...]``, or dataclass
        messages such as ``Message.user("Hi")``). Keys whose
        value is ``None`` (``content`` of an OpenAI-style tool call) are left out, as transformers
        does: templates test them with ``is defined``. ``continue_final_message``: the text ends
        with the last message's content, left open for the model to continue (transformers' rule:
        the template's end-of-turn after it is cut off)."""
        require("jinja2", "a chat template")

        if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Iterable):
            raise errors.ArgumentType(
                f"chat template: messages must be a list of {{'role': ..., 'content': ...}} dicts, got"
                f" {type(messages).__name__}"
            )
        messages = [_message_dict(m) for m in messages]
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping):
                raise errors.ArgumentType(
                    f"chat template: message {i} must be a {{'role': ..., 'content': ...}} dict, got {type(m).__name__}"
                )
        variables = {k: v for k, v in self.special_tokens.items() if v is not None}
        variables.update(kwargs)
        msgs = [{k: v for k, v in dict(m).items() if v is not None} for m in messages]
        if continue_final_message:
            if add_generation_prompt:
                raise errors.InvalidArgument(
                    "chat template: continue_final_message and add_generation_prompt are not compatible"
                )
            final = msgs[-1].get("content") if msgs else None
            if not isinstance(final, str):
                raise errors.InvalidArgument(
                    "chat template: continue_final_message needs a last message whose content is a string"
                )
            msgs[-1]["content"] = final + _CONTINUE_TAG
        try:
            text = _render_in_time(
                self._template, messages=msgs, add_generation_prompt=add_generation_prompt, tools=tools,
                documents=documents, **variables,
            )
        except errors.Error:
            raise
        # raise_exception(...), a message without a "role", or Python's own errors (IndexError, MemoryError)
        except Exception as e:
            raise _render_error_type(type(e))(f"chat template: {type(e).__name__}: {e}") from e
        if continue_final_message:
            tag = _CONTINUE_TAG.strip()
            if final.strip() not in text or tag not in text:
                raise errors.InvalidArgument(
                    "chat template: continue_final_message: the template does not write the final message's content"
                )
            at = text.rindex(tag)
            # a template that trims the content also trimmed the tag's space: trim the content's end too
            text = text[:at] if text[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()
        return text


_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "  # transformers' marker


# --- the bundle a model uses --------------------------------------------------------------------------
class PaddingStrategy:
    """``tokenizers::PaddingStrategy``: ``PaddingStrategy.BatchLongest`` or ``PaddingStrategy.Fixed(n)``."""

    class Fixed(int):
        def __repr__(self) -> str:
            return f"PaddingStrategy.Fixed({int(self)})"

    BatchLongest = "BatchLongest"


class PaddingDirection(enum.Enum):
    """``tokenizers::PaddingDirection``."""

    Left = "left"
    Right = "right"


_PADDING_FIELDS = ("strategy", "direction", "pad_to_multiple_of", "pad_id", "pad_type_id", "pad_token")


class PaddingParams:
    """``tokenizers::PaddingParams`` (Rust's defaults: ``BatchLongest``, right, id 0, ``"[PAD]"``).

    From :meth:`Tokenizer.get_padding_mut` it is the tokenizer's own: setting a field
    (``pp.strategy = PaddingStrategy.BatchLongest``) changes the tokenizer's padding, as the Rust
    ``&mut`` does."""

    def __init__(self, strategy: Any = PaddingStrategy.BatchLongest, direction: Any = PaddingDirection.Right,
                 pad_to_multiple_of: int | None = None, pad_id: int = 0, pad_type_id: int = 0,
                 pad_token: str = "[PAD]") -> None:  # fmt: skip
        object.__setattr__(self, "_owner", None)
        self.strategy, self.direction, self.pad_to_multiple_of = strategy, direction, pad_to_multiple_of
        self.pad_id, self.pad_type_id, self.pad_token = pad_id, pad_type_id, pad_token

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _PADDING_FIELDS:
            raise errors.Msg(f"PaddingParams has no field {name!r} (fields: {', '.join(_PADDING_FIELDS)})")
        object.__setattr__(self, name, value)
        owner = self._owner
        if owner is not None and all(hasattr(self, f) for f in _PADDING_FIELDS):
            owner.with_padding(self)

    def _hf_kwargs(self) -> dict[str, Any]:
        st = self.strategy
        if isinstance(st, PaddingStrategy.Fixed) or (isinstance(st, int) and not isinstance(st, bool)):
            length: int | None = int(st)
        elif st == PaddingStrategy.BatchLongest:
            length = None
        else:
            raise errors.Msg(f"PaddingParams.strategy must be PaddingStrategy.BatchLongest or"
                             f" PaddingStrategy.Fixed(n), got {st!r}")  # fmt: skip
        d = self.direction
        direction = d.value if isinstance(d, PaddingDirection) else str(d).lower()
        return {"direction": direction, "pad_id": int(self.pad_id), "pad_type_id": int(self.pad_type_id),
                "pad_token": self.pad_token, "length": length,
                "pad_to_multiple_of": self.pad_to_multiple_of}  # fmt: skip

    @classmethod
    def _from_hf(cls, d: Mapping[str, Any]) -> PaddingParams:
        length = d.get("length")
        return cls(PaddingStrategy.BatchLongest if length is None else PaddingStrategy.Fixed(length),
                   PaddingDirection(d.get("direction", "right")), d.get("pad_to_multiple_of"), d.get("pad_id", 0),
                   d.get("pad_type_id", 0), d.get("pad_token", "[PAD]"))  # fmt: skip

    def __repr__(self) -> str:
        return "PaddingParams(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in _PADDING_FIELDS) + ")"


class TruncationParams:
    """``tokenizers::TruncationParams`` (``max_length`` 512, ``stride`` 0, longest-first, right)."""

    def __init__(self, max_length: int = 512, stride: int = 0, strategy: str = "longest_first",
                 direction: str = "right") -> None:  # fmt: skip
        self.max_length, self.stride, self.strategy, self.direction = max_length, stride, strategy, direction

    def __repr__(self) -> str:
        return (f"TruncationParams(max_length={self.max_length}, stride={self.stride}, strategy={self.strategy!r},"
                f" direction={self.direction!r})")  # fmt: skip


class Encoding(list):
    """The ids of one encoded text: a plain ``list[int]`` that also answers the accessors of
    ``tokenizers::Encoding`` as Candle's examples call them (``get_ids()``, ``get_tokens()``,
    ``get_type_ids()``, ``get_attention_mask()``, ``len()``) and the Python binding's attributes
    (``ids``, ``tokens``, ``type_ids``, ``attention_mask``, ``offsets``). ``encoding`` is the
    ``tokenizers.Encoding`` itself."""

    __slots__ = ("encoding",)

    def __init__(self, encoding: Any) -> None:
        super().__init__(encoding.ids)
        self.encoding = encoding

    def get_ids(self) -> list[int]:
        return list(self)

    def get_tokens(self) -> list[str]:
        return list(self.encoding.tokens)

    def get_type_ids(self) -> list[int]:
        return list(self.encoding.type_ids)

    def get_attention_mask(self) -> list[int]:
        return list(self.encoding.attention_mask)

    def get_offsets(self) -> list[tuple[int, int]]:
        return list(self.encoding.offsets)

    @property
    def ids(self) -> list[int]:
        return list(self)

    @property
    def tokens(self) -> list[str]:
        return self.get_tokens()

    @property
    def type_ids(self) -> list[int]:
        return self.get_type_ids()

    @property
    def attention_mask(self) -> list[int]:
        return self.get_attention_mask()

    @property
    def offsets(self) -> list[tuple[int, int]]:
        return self.get_offsets()


# transformers' apply_chat_template options for tokenizing, which this has no form for
_UNSUPPORTED_CHAT_KWARGS = (
    "return_tensors", "padding", "truncation", "max_length", "return_assistant_tokens_mask", "tokenizer_kwargs",
    "sanitize_control_tokens",
)  # fmt: skip


class Tokenizer:
    """A ``tokenizers.Tokenizer`` (``.hf``) with its special token ids and chat template.

    ``encode(text) -> list[int]``, ``decode(ids)``, ``apply_chat_template(messages)``; ``bos_token_id``,
    ``eos_token_id`` (the model's end of text; ``eos_token_ids`` also holds the chat template's
    end-of-turn token when it differs). Build with :meth:`from_gguf`,
    :meth:`from_gguf_metadata` or :func:`load_tokenizer`.
    """

    def __init__(
        self,
        hf: Any,
        bos_token: str | None = None,
        eos_token: str | None = None,
        unk_token: str | None = None,
        pad_token: str | None = None,
        chat_template: str | None = None,
        add_bos_token: bool = False,
    ) -> None:
        self.hf = hf
        self.bos_token, self.eos_token, self.unk_token, self.pad_token = bos_token, eos_token, unk_token, pad_token
        self.add_bos_token = add_bos_token
        self.chat_template_source = chat_template
        self._chat: ChatTemplate | None = None

    def _id(self, tok: str | None) -> int | None:
        return None if tok is None else self.hf.token_to_id(tok)

    @property
    def bos_token_id(self) -> int | None:
        """The id of ``bos_token``, or ``None`` (transformers' ``tokenizer.bos_token_id``)."""
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        """The id of ``eos_token``, or ``None`` (transformers' ``tokenizer.eos_token_id``)."""
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        """The id of ``pad_token``, or ``None`` (transformers' ``tokenizer.pad_token_id``)."""
        return self._id(self.pad_token)

    @property
    def unk_token_id(self) -> int | None:
        """The id of ``unk_token``, or ``None`` (transformers' ``tokenizer.unk_token_id``)."""
        return self._id(self.unk_token)

    @property
    def eos_token_ids(self) -> list[int]:
        """Ids that end generation: EOS, plus ``<|im_end|>``/``<|eot_id|>``/``<end_of_turn>``/
        ``<|end|>`` when the vocabulary has them and the chat template uses them."""
        ids = [] if self.eos_token_id is None else [self.eos_token_id]
        src = self.chat_template_source or ""
        for t in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>"):
            i = self._id(t)
            if i is not None and t in src and i not in ids:
                ids.append(i)
        return ids

    @property
    def special_tokens_map(self) -> dict[str, str | None]:
        """The special tokens by role (``bos_token``, ``eos_token``, ...), as transformers' ``special_tokens_map``."""
        return {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "unk_token": self.unk_token,
            "pad_token": self.pad_token,
        }

    @property
    def vocab_size(self) -> int:
        """The vocabulary size, added tokens included."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        """The tokenizers crate's ``Tokenizer::token_to_id``: the id of ``token``, or ``None``."""
        return self.hf.token_to_id(_text(token, "token_to_id", "token"))

    def id_to_token(self, i: int) -> str | None:
        """The tokenizers crate's ``Tokenizer::id_to_token``: the token of id ``i``, or ``None``."""
        return self.hf.id_to_token(_token_id(i, "id_to_token"))

    def encode(self, text: str, add_special_tokens: bool = True) -> Encoding:
        """Token ids of ``text`` (BOS/EOS added as the tokenizer's post-processor says): a
        ``list[int]`` with Candle's ``get_ids()`` / ``get_tokens()`` (:class:`Encoding`)."""
        add_special_tokens = _flag(add_special_tokens, "encode", "add_special_tokens")
        return Encoding(self.hf.encode(_text(text, "encode"), add_special_tokens=add_special_tokens))

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[Encoding]:
        """The tokenizers crate's ``Tokenizer::encode_batch``: one ``Encoding`` per text."""
        if not isinstance(texts, str | Iterable):
            raise errors.ArgumentType(f"tokenizer.encode_batch: expected a list of str, got {type(texts).__name__}")
        texts = [_text(t, "encode_batch") for t in ([texts] if isinstance(texts, str) else texts)]
        add_special_tokens = _flag(add_special_tokens, "encode_batch", "add_special_tokens")
        return [Encoding(e) for e in self.hf.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def with_padding(self, padding: PaddingParams | None) -> Tokenizer:
        """Candle / ``tokenizers``' ``with_padding(None)`` (no padding) or ``with_padding(Some(params))``;
        returns the tokenizer, as Rust's ``&mut Self``. A ``tokenizer.json`` may pad every text to a
        fixed length (sentence-transformers' files do): Candle's BERT example turns it off so
        that a single sentence runs unpadded and unmasked."""
        if padding is None:
            self.hf.no_padding()
        elif isinstance(padding, PaddingParams):
            self.hf.enable_padding(**padding._hf_kwargs())
        else:
            raise errors.Msg(f"tokenizer.with_padding takes None or a candlejax.tokenizer.PaddingParams,"
                             f" got {type(padding).__name__}")  # fmt: skip
        return self

    def with_truncation(self, truncation: TruncationParams | None) -> Tokenizer:
        """``with_truncation(None)`` (no truncation) or ``with_truncation(Some(params))``; returns the tokenizer."""
        if truncation is None:
            self.hf.no_truncation()
        elif isinstance(truncation, TruncationParams):
            for what in ("max_length", "stride"):
                if int_arg(getattr(truncation, what), "tokenizer.with_truncation", what) < 0:
                    raise errors.InvalidArgument(
                        f"tokenizer.with_truncation: {what} must be >= 0, got {getattr(truncation, what)}"
                    )
            self.hf.enable_truncation(truncation.max_length, stride=truncation.stride,
                                      strategy=truncation.strategy, direction=truncation.direction)  # fmt: skip
        else:
            raise errors.Msg(f"tokenizer.with_truncation takes None or a candlejax.tokenizer.TruncationParams,"
                             f" got {type(truncation).__name__}")  # fmt: skip
        return self

    def get_padding(self) -> PaddingParams | None:
        """The padding in use (a copy), or ``None``."""
        d = self.hf.padding
        return None if d is None else PaddingParams._from_hf(d)

    def get_padding_mut(self) -> PaddingParams | None:
        """The padding in use, or ``None``; setting its fields changes the tokenizer's padding."""
        pp = self.get_padding()
        if pp is not None:
            object.__setattr__(pp, "_owner", self)
        return pp

    def get_truncation(self) -> TruncationParams | None:
        """The tokenizers crate's ``Tokenizer::get_truncation``: the truncation settings, or ``None``."""
        d = self.hf.truncation
        return None if d is None else TruncationParams(d["max_length"], d["stride"], d["strategy"], d["direction"])

    def get_vocab(self, with_added_tokens: bool = True) -> dict[str, int]:
        """Token string -> id (``tokenizers``' ``get_vocab``, Candle's ``get_vocab(true)``)."""
        return self.hf.get_vocab(with_added_tokens=with_added_tokens)

    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        """The tokenizers crate's ``Tokenizer::get_vocab_size``: with or without the added tokens."""
        return self.hf.get_vocab_size(with_added_tokens=with_added_tokens)

    def decode(
        self, ids: Sequence[int] | np.ndarray | jax.Array | TensorBase, skip_special_tokens: bool = True
    ) -> str:
        """The text of ``ids`` (``tokenizers``' ``decode``; ids past the vocabulary are skipped, as there)."""
        skip = _flag(skip_special_tokens, "decode", "skip_special_tokens")
        return self.hf.decode(token_ids(ids, "decode"), skip_special_tokens=skip)

    def decode_batch(self, sentences: Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        """The text of each id list (``tokenizers``' ``decode_batch``, Candle: ``decode_batch(&ids, true)``)."""
        skip = _flag(skip_special_tokens, "decode_batch", "skip_special_tokens")
        if isinstance(sentences, (str, bytes)) or not isinstance(sentences, Iterable):
            raise errors.ArgumentType(
                f"tokenizer.decode_batch: expected a list of token id lists, got {type(sentences).__name__}"
            )
        return self.hf.decode_batch([token_ids(s, "decode_batch") for s in sentences], skip_special_tokens=skip)

    @property
    def chat_template(self) -> ChatTemplate:
        """The tokenizer's chat template as a ``ChatTemplate``; raises when the tokenizer has none."""
        if self.chat_template_source is None:
            raise errors.Msg("tokenizer: this tokenizer has no chat template")
        if self._chat is None:
            self._chat = ChatTemplate(self.chat_template_source, self.special_tokens_map)
        return self._chat

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any] | Any],
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        return_dict: bool = False,
        **kwargs: Any,
    ) -> str | list[int] | dict[str, Any] | list[Any]:
        """Render ``messages`` with the chat template: ids (``tokenize=True``, the default; the template
        writes any BOS itself, so no special tokens are added) or the text (``tokenize=False``).
        ``add_generation_prompt=True`` ends with the assistant's header, ready to generate after;
        ``return_dict=True`` gives ``{"input_ids", "attention_mask"}`` (transformers 5's default form);
        ``continue_final_message=True`` leaves the last message open (see :meth:`ChatTemplate.render`);
        ``chat_template=`` renders with that template source instead of the tokenizer's.
        transformers: ``tokenizer.apply_chat_template`` (its defaults, ids as a list); an empty
        conversation raises, as there; a list of conversations gives a list of results."""
        if isinstance(messages, Sequence) and not isinstance(messages, str) and len(messages) == 0:
            raise errors.InvalidArgument("tokenizer.apply_chat_template: empty conversation; give at least one message")
        if isinstance(messages, Sequence) and not isinstance(messages, str) and isinstance(messages[0], list | tuple):
            out = [self.apply_chat_template(c, add_generation_prompt, tokenize, False, **kwargs) for c in messages]
            if return_dict and tokenize:
                return {"input_ids": out, "attention_mask": [[1] * len(ids) for ids in out]}
            return out
        for k in _UNSUPPORTED_CHAT_KWARGS:
            if kwargs.pop(k, None) not in (None, False, {}, "do_not_pad"):
                raise errors.ArgumentType(
                    f"tokenizer.apply_chat_template: {k}= is not supported: the ids come back as a list"
                    " (wrap them in a Tensor, pad or cut them after)"
                )
        source = kwargs.pop("chat_template", None)
        template = self.chat_template if source is None else ChatTemplate(source, self.special_tokens_map)
        text = template.render(messages, add_generation_prompt=add_generation_prompt, **kwargs)
        if not tokenize:
            return text
        ids = self.encode(text, add_special_tokens=False)
        return {"input_ids": ids, "attention_mask": [1] * len(ids)} if return_dict else ids

    # --- constructors ------------------------------------------------------------------------------
    @classmethod
    def from_gguf_metadata(cls, meta: Mapping[str, Any], source: str | None = None) -> Tokenizer:
        """From GGUF metadata (key -> value, or a ``candlejax.io.gguf.Content``); see
        :func:`tokenizer_from_gguf_metadata` (``source``: the file named in errors)."""
        p = getattr(meta, "path", None)  # a Content names its file
        source = source or (os.fspath(p) if isinstance(p, str | os.PathLike) else None)
        meta = gguf_tokenizer_metadata(meta)  # (prepares the tokenizers library first)
        hf = tokenizer_from_gguf_metadata(meta, source)
        tokens = meta["tokenizer.ggml.tokens"]
        kind = meta.get("tokenizer.ggml.model")

        def tok(key: str) -> str | None:
            i = meta.get(f"tokenizer.ggml.{key}")
            return tokens[i] if i is not None and 0 <= int(i) < len(tokens) else None

        return cls(
            hf,
            bos_token=tok("bos_token_id"),
            eos_token=tok("eos_token_id"),
            unk_token=tok("unknown_token_id"),
            pad_token=tok("padding_token_id"),
            chat_template=meta.get("tokenizer.chat_template"),
            add_bos_token=bool(
                meta.get("tokenizer.ggml.add_bos_token", _default_add_bos(kind, meta.get("tokenizer.ggml.pre")))
            ),
        )

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> Tokenizer:
        """The tokenizer stored in a GGUF file's metadata; a missing file raises ``NoSuchFile`` (a
        ``FileNotFoundError``), as :func:`load_tokenizer` does."""
        p = errors.path_arg(path, "Tokenizer.from_gguf")
        errors.check_file(p, "Tokenizer.from_gguf")
        return cls.from_gguf_metadata(gguf_tokenizer_metadata(p), p)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Tokenizer:
        """See :func:`load_tokenizer`."""
        return load_tokenizer(path)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, eos={self.eos_token!r},"
            f" chat_template={'yes' if self.chat_template_source else 'no'})"
        )


def _token_str(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, Mapping):
        return v.get("content")
    return None


def _json_object(file: Path) -> dict[str, Any]:
    """A tokenizer folder's JSON file as a dict, or a candlejax error naming the file."""
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        msg = f"load_tokenizer: cannot read {os.fspath(file)!r}: {e.strerror}"
        raise errors.os_error(e, "load_tokenizer", file, msg) from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, a >4300-digit int; nesting
        raise errors.Msg(f"load_tokenizer: {os.fspath(file)!r} is not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(cfg, dict):
        raise errors.Msg(f"load_tokenizer: {os.fspath(file)!r} is not a JSON object")
    return cfg


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a ``tokenizer.json`` (a file, or a folder holding one). From the same folder,
    ``tokenizer_config.json`` supplies the special tokens (those it lacks from
    ``special_tokens_map.json``) and the chat template (or ``chat_template.jinja``/``chat_template.json``)."""
    HFTokenizer = require("tokenizers", "load_tokenizer").Tokenizer

    if not isinstance(path, str | os.PathLike):
        raise errors.ArgumentType(f"load_tokenizer: expected a path, got {type(path).__name__}")
    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        msg = f"load_tokenizer: no tokenizer.json at {os.fspath(path)!r}"
        raise errors.NoSuchFile("load_tokenizer", file, message=msg)
    errors.check_file(file, "load_tokenizer")  # a file this process may not read: NoPermission
    try:
        hf = HFTokenizer.from_file(os.fspath(file))
    except Exception as e:  # the tokenizers library raises a bare Exception for a malformed file
        raise errors.Msg(
            f"load_tokenizer: {os.fspath(file)!r} is not a tokenizer.json that the tokenizers library reads: {e}"
        ) from None
    folder = file.parent
    cfg: dict[str, Any] = {}
    cfg_file = folder / "tokenizer_config.json"
    if cfg_file.is_file():
        cfg = _json_object(cfg_file)
    stm_file = folder / "special_tokens_map.json"
    if stm_file.is_file():  # older repos name the special tokens only there
        stm = _json_object(stm_file)
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            if _token_str(cfg.get(key)) is None and _token_str(stm.get(key)) is not None:
                cfg[key] = stm[key]
    template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: take "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default") or next(iter(named.values()), None)
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if template is None and (folder / "chat_template.json").is_file():
        template = _json_object(folder / "chat_template.json").get("chat_template")
    return Tokenizer(
        hf,
        bos_token=_token_str(cfg.get("bos_token")),
        eos_token=_token_str(cfg.get("eos_token")),
        unk_token=_token_str(cfg.get("unk_token")),
        pad_token=_token_str(cfg.get("pad_token")),
        chat_template=template,
        add_bos_token=bool(cfg.get("add_bos_token", False)),
    )


__all__ = [
    "ChatTemplate",
    "Encoding",
    "PaddingDirection",
    "PaddingParams",
    "PaddingStrategy",
    "Tokenizer",
    "TruncationParams",
    "bytes_to_unicode",
    "gguf_tokenizer_metadata",
    "load_tokenizer",
    "tokenizer_from_gguf_metadata",
]
