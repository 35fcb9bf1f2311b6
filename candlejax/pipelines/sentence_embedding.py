"""Sentence embeddings on a BERT encoder: sentence-transformers' ``all-*`` recipe.

requires: candlejax.models.bert, tokenizers
provides: ``SentenceEmbedder``, ``mean_pool``, ``pool``, ``POOLING_MODES``, ``resolve_model_dir``

:class:`SentenceEmbedder` adds tokenisation (HF ``tokenizers``), mean pooling over the attention
mask and L2 normalisation to :class:`candlejax.models.bert.BertModel`, compiled per bucketed shape.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType
from candlejax.models import bert, hub
from candlejax.models.loading import host_array
from candlejax.nn import VarBuilder, check_token_ids, pack_linears
from candlejax.optional import require
from candlejax.tensor import Tensor, unwrap, wrap
from candlejax.xla import SizeJit

__all__ = ["POOLING_MODES", "SentenceEmbedder", "mean_pool", "pool", "resolve_model_dir"]


def mean_pool(hidden: Any, attention_mask: Any, normalize: bool = True) -> Any:
    """Mean of ``hidden (B, S, H)`` over the positions where ``attention_mask (B, S)`` is 1, then L2.

    sentence-transformers' ``Pooling(mean)`` + ``Normalize``: the token count is clamped at 1e-9 and
    the norm at 1e-12, so padding-only rows give zeros.
    """
    h = unwrap(hidden)
    m = jnp.asarray(unwrap(attention_mask)).astype(h.dtype)[..., None]
    s = jnp.sum(h * m, axis=1, dtype=jnp.float32)
    pooled = s / jnp.maximum(jnp.sum(m, axis=1, dtype=jnp.float32), 1e-9)
    if normalize:
        pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return wrap(pooled)


#: sentence-transformers' ``Pooling`` modes :class:`SentenceEmbedder` runs
POOLING_MODES = ("mean", "cls", "max")

#: the legacy ``1_Pooling/config.json`` keys (sentence-transformers < 6) -> ``pooling_mode``
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}  # fmt: skip


def pool(hidden: Any, attention_mask: Any, pooling: str = "mean", normalize: bool = True) -> Any:
    """sentence-transformers' ``Pooling(pooling)`` (+ ``Normalize``) of ``hidden (B, S, H)``: ``(B, H)`` f32.

    ``"mean"``: :func:`mean_pool`; ``"cls"``: the first kept token (``[CLS]`` with right padding);
    ``"max"``: the element-wise maximum over the kept tokens."""
    if pooling == "mean":
        return mean_pool(hidden, attention_mask, normalize)
    h = unwrap(hidden)
    keep = jnp.asarray(unwrap(attention_mask)) != 0
    if pooling == "cls":
        first = jnp.argmax(keep, axis=1)
        pooled = jnp.take_along_axis(h, first[:, None, None], axis=1)[:, 0].astype(jnp.float32)
    elif pooling == "max":
        pooled = jnp.max(jnp.where(keep[..., None], h, -jnp.inf), axis=1).astype(jnp.float32)
    else:
        raise errors.InvalidArgument(f"sentence embedding pooling must be one of {POOLING_MODES}, got {pooling!r}")
    if normalize:
        pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return wrap(pooled)


def _embed_step(model: bert.BertModel, ids: Any, type_ids: Any, mask: Any, normalize: bool, pooling: str) -> Any:
    return unwrap(pool(model.forward(ids, type_ids, mask), mask, pooling, normalize))


_embed_step_jit = SizeJit(
    _embed_step, bert.COMPILER_OPTIONS, bert.LARGE_BATCH_TOKENS, static_argnames=("normalize", "pooling")
)


def _read_json(path: str) -> Any:
    """The JSON value of ``path``; malformed JSON is an :class:`errors.InvalidArgument` naming the file."""
    errors.check_file(path, "sentence embedding: reading the model's JSON files")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, huge ints; nesting
        raise errors.InvalidArgument(f"sentence embedding: {path} is not valid JSON ({e})") from None


def _pooling_mode(pool_cfg: str) -> str:
    """The ``pooling_mode`` of a ``Pooling`` module's ``config.json`` (current or legacy keys); raises
    unless it is one of :data:`POOLING_MODES`."""
    pc = _read_json(pool_cfg)
    mode = pc.get("pooling_mode")
    if mode is None:  # sentence-transformers < 6: one bool per mode, mean when none is set
        mode = [m for k, m in _LEGACY_POOLING_KEYS.items() if pc.get(k)] or ["mean"]
    modes = [mode] if isinstance(mode, str) else list(mode)
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise errors.Msg(
            f"{pool_cfg}: pooling mode {mode!r} is not implemented; SentenceEmbedder pools one of {POOLING_MODES}"
        )
    return modes[0]


def _sentence_transformers_modules(d: str) -> tuple[str, bool]:
    """``(pooling, normalize)`` of a sentence-transformers folder's ``modules.json`` (Candle's example
    without one: mean pooling, normalised). Raises on modules the embedder does not run (``Dense``,
    ``LayerNorm``, ...), which would otherwise be skipped silently."""
    modules = os.path.join(d, "modules.json")
    if not os.path.isfile(modules):
        pool_cfg = os.path.join(d, "1_Pooling", "config.json")
        return (_pooling_mode(pool_cfg) if os.path.isfile(pool_cfg) else "mean"), True
    pooling, normalize = "mean", False
    for m in _read_json(modules):
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Pooling":
            pool_cfg = os.path.join(d, m.get("path") or "1_Pooling", "config.json")
            pooling = _pooling_mode(pool_cfg) if os.path.isfile(pool_cfg) else "mean"
        elif kind == "Normalize":
            normalize = True
        elif kind != "Transformer" or m.get("path"):
            raise errors.Msg(
                f"{modules}: module {m.get('name', m.get('idx'))!r} ({m.get('type')}, path {m.get('path')!r}) is not"
                " implemented; SentenceEmbedder runs a BERT Transformer at the folder's root, Pooling and Normalize"
            )
    return pooling, normalize


def _max_seq_length(d: str, limit: int) -> int | None:
    """sentence-transformers' ``max_seq_length``: ``sentence_bert_config.json``'s, else (as version 6
    saves it) the tokenizer's ``model_max_length`` capped at ``max_position_embeddings``."""
    st_cfg = os.path.join(d, "sentence_bert_config.json")
    if os.path.isfile(st_cfg) and _read_json(st_cfg).get("max_seq_length") is not None:
        return int(_read_json(st_cfg)["max_seq_length"])
    tok_cfg = os.path.join(d, "tokenizer_config.json")
    if os.path.isfile(tok_cfg):
        n = _read_json(tok_cfg).get("model_max_length")
        if isinstance(n, (int, float)) and not isinstance(n, bool) and n >= 1:
            return int(min(n, limit))
    return None


def _lowercase_first(tokenizer: Any) -> None:
    """sentence-transformers' ``do_lower_case``: a ``Lowercase`` normalizer before the tokenizer's own."""
    from tokenizers import normalizers

    current = tokenizer.normalizer
    if isinstance(current, normalizers.Lowercase):
        return
    if isinstance(current, normalizers.Sequence):
        inner = list(current)
        if any(isinstance(n, normalizers.Lowercase) for n in inner):
            return
    else:
        inner = [] if current is None else [current]
    tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(), *inner])


def resolve_model_dir(path: str | os.PathLike) -> str:
    """A model folder, a Hugging Face hub cache entry (``models--org--name``, at ``refs/main`` or
    its only snapshot) or a cached hub id ``"org/name"`` -> the folder holding ``config.json``."""
    return str(hub.resolve_root(path))


def _positive(v: Any, what: str) -> int:
    """``v`` as a positive int, else ``InvalidArgument`` naming ``SentenceEmbedder``'s argument."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise errors.InvalidArgument(f"SentenceEmbedder: {what} must be a positive int, got {v!r}")
    return int(v)


def _bucket(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    return n


class SentenceEmbedder:
    """Sentences -> L2-normalised pooled BERT embeddings ``(N, hidden_size)`` (mean, CLS or max pooling).

    ``SentenceEmbedder.from_dir(dir)`` reads ``config.json``, ``model.safetensors`` (or a sharded
    index), ``tokenizer.json`` and, when present, sentence-transformers' ``modules.json`` (which
    modules run: ``Transformer``, ``Pooling``, ``Normalize``; any other raises),
    ``sentence_bert_config.json`` (``max_seq_length``, ``do_lower_case``), the tokenizer's
    ``model_max_length`` and the ``Pooling`` module's ``config.json``. ``embed(sentences)`` tokenises the batch,
    pads it to a bucketed shape (sequence lengths 16, 32, 64, ...; batch 1, 2, 4, ... up to
    ``batch_size``) so a handful of compiled programs serve every input, and runs one jitted
    forward + pooling per chunk with the weights as arguments.
    """

    SEQ_BUCKETS = (16, 32, 64, 128, 256, 384, 512)

    def __init__(
        self, model: bert.BertModel, tokenizer: Any, max_length: int | None = 512, normalize: bool = True,
        batch_size: int = 32, pooling: str = "mean",
    ):  # fmt: skip
        self.model = model
        self.tokenizer = tokenizer
        limit = model.config.max_position_embeddings
        self.max_length = limit if max_length is None else min(_positive(max_length, "max_length"), limit)
        self.normalize = bool(normalize)
        self.batch_size = _positive(batch_size, "batch_size")
        if pooling not in POOLING_MODES:
            raise errors.InvalidArgument(f"SentenceEmbedder: pooling must be one of {POOLING_MODES}, got {pooling!r}")
        self.pooling = pooling
        hf = getattr(tokenizer, "hf", tokenizer)  # candlejax.tokenizer.Tokenizer wraps a tokenizers.Tokenizer
        if not hasattr(hf, "enable_truncation") or not hasattr(tokenizer, "encode_batch"):
            raise errors.InvalidArgument(
                "SentenceEmbedder: tokenizer must be a tokenizers.Tokenizer or a candlejax.tokenizer.Tokenizer, got"
                f" {type(tokenizer).__name__}"
            )
        hf.no_padding()
        hf.enable_truncation(self.max_length)

    def __repr__(self) -> str:
        return (f"SentenceEmbedder(model={type(self.model).__name__}, pooling={self.pooling!r},"
                f" normalize={self.normalize}, max_length={self.max_length},"
                f" batch_size={self.batch_size})")  # fmt: skip

    @staticmethod
    def from_dir(
        path: str | os.PathLike, dtype: Any = DType.F32, device: Any = None, max_length: int | None = None,
        batch_size: int = 32, pack: bool | None = None,
    ) -> SentenceEmbedder:  # fmt: skip
        """Load a sentence-transformers / HF BERT folder (or a hub cache entry) from disk.

        ``pack``: keep the f32 Linear weights in the native product's panel layout
        (:func:`candlejax.nn.pack_linears`, same results up to summation order; a single sentence
        embeds ~20% faster). ``None`` packs where that product runs (an AVX-512 CPU, one device)."""
        Tokenizer = require("tokenizers", "SentenceEmbedder.load").Tokenizer

        files = hub.resolve(path)
        d = files.root
        config = bert.Config.from_json_file(os.path.join(d, "config.json"))
        vb = VarBuilder.from_mmaped_safetensors(files.weights, dtype, device or Device.Cpu)
        model = bert.BertModel.load(vb, config, add_pooling_layer=False)
        if pack or pack is None:
            model = pack_linears(model, force=bool(pack))
        tok_file = os.path.join(d, "tokenizer.json")
        errors.check_file(tok_file, "SentenceEmbedder.from_dir: reading the tokenizer",
                          "the folder needs the tokenizer.json its model was saved with")  # fmt: skip
        tokenizer = Tokenizer.from_file(tok_file)
        pooling, normalize = _sentence_transformers_modules(d)
        if max_length is None:
            max_length = _max_seq_length(d, config.max_position_embeddings)
        st_cfg = os.path.join(d, "sentence_bert_config.json")
        if os.path.isfile(st_cfg) and _read_json(st_cfg).get("do_lower_case"):
            _lowercase_first(tokenizer)
        return SentenceEmbedder(
            model, tokenizer, max_length or config.max_position_embeddings, normalize, batch_size, pooling
        )

    def tokenize(self, sentences: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, type_ids, mask)`` int32 ``(N, S)`` padded to the bucketed longest length."""
        encs = self.tokenizer.encode_batch(list(sentences))
        longest = max((len(e.ids) for e in encs), default=1)
        s = min(_bucket(longest, self.SEQ_BUCKETS), self.max_length) if longest <= self.max_length else longest
        s = max(s, longest)
        ids = np.zeros((len(encs), s), np.int32)
        if self.model.config.pad_token_id:
            ids[:] = self.model.config.pad_token_id
        types = np.zeros((len(encs), s), np.int32)
        mask = np.zeros((len(encs), s), np.int32)
        for i, e in enumerate(encs):
            n = len(e.ids)
            ids[i, :n] = e.ids
            types[i, :n] = e.type_ids
            mask[i, :n] = 1
        return ids, types, mask

    def embed_tokens(self, ids: Any, type_ids: Any, mask: Any) -> np.ndarray:
        """Pooled embeddings for already tokenised ``(N, S)`` arrays, in chunks of ``batch_size`` rows.
        The ids, token types and mask are checked as ``BertModel.forward`` checks them (ids in the vocabulary,
        one shape)."""
        what = "SentenceEmbedder.embed_tokens"
        ids, type_ids, mask = (np.asarray(unwrap(host_array(t, f"{what} {name}")))
                               for t, name in ((ids, "ids"), (type_ids, "token_type_ids"), (mask, "mask")))  # fmt: skip
        if ids.ndim != 2:
            raise errors.UnexpectedNumberOfDims(2, ids.ndim, ids.shape, f"{what}: ids (batch, seq)")
        for name, t in (("token_type_ids", type_ids), ("mask", mask)):
            if t.shape != ids.shape:
                raise errors.UnexpectedShape(f"{what}: {name} must match the ids", ids.shape, t.shape)
        cfg = self.model.config
        check_token_ids(ids, cfg.vocab_size, f"{what} ids")  # the lookup clamps ids it cannot check
        check_token_ids(type_ids, cfg.type_vocab_size, f"{what} token_type_ids")
        n = ids.shape[0]
        out = []
        bbuckets = [1 << i for i in range(max(1, self.batch_size).bit_length()) if (1 << i) < self.batch_size]
        bbuckets.append(self.batch_size)
        for start in range(0, n, self.batch_size):
            sl = slice(start, min(n, start + self.batch_size))
            rows = sl.stop - sl.start
            b = _bucket(rows, bbuckets)
            chunk = [t[sl] for t in (ids, type_ids, mask)]
            if b != rows:
                chunk = [np.concatenate([t, np.zeros((b - rows, t.shape[1]), t.dtype)]) for t in chunk]
            res = _embed_step_jit(self.model, *chunk, self.normalize, self.pooling)
            out.append(np.asarray(res)[:rows])
        if not out:
            return np.zeros((0, self.model.config.hidden_size), np.float32)
        return np.concatenate(out)

    def embed(self, sentences: Sequence[str] | str) -> Tensor:
        """A batch of strings -> ``(N, hidden_size)`` f32 Tensor (L2-normalised unless the folder says not)."""
        if isinstance(sentences, str):
            sentences = [sentences]
        elif hasattr(sentences, "__iter__") and not isinstance(sentences, (bytes, bytearray, dict)):
            sentences = list(sentences)
        else:
            sentences = [sentences]
        bad = [x for x in sentences if not isinstance(x, str)]
        if bad:  # the tokenizers library's TypeError named none of this
            raise errors.InvalidArgument(
                "SentenceEmbedder.embed takes a str or a sequence of str (embed(['a sentence', ...])), got"
                f" {bad[0]!r:.60} ({type(bad[0]).__name__})"
            )
        return Tensor.from_numpy(self.embed_tokens(*self.tokenize(sentences)))

    __call__ = embed
