"""Sentence embeddings on a BERT encoder: sentence-transformers' ``all-*`` recipe.

requires: candlejax.models.bert, tokenizers
provides: ``SentenceEmbedder``, ``mean_pool``, ``resolve_model_dir``

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
from candlejax.nn import VarBuilder, check_token_ids, pack_linears
from candlejax.tensor import Tensor, unwrap, wrap
from candlejax.xla import SizeJit

__all__ = ["SentenceEmbedder", "mean_pool", "resolve_model_dir"]


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


def _embed_step(model: bert.BertModel, ids: Any, type_ids: Any, mask: Any, normalize: bool) -> Any:
    return unwrap(mean_pool(model.forward(ids, type_ids, mask), mask, normalize))


_embed_step_jit = SizeJit(_embed_step, bert.COMPILER_OPTIONS, bert.LARGE_BATCH_TOKENS, static_argnames=("normalize",))


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
    """Sentences -> L2-normalised mean-pooled BERT embeddings ``(N, hidden_size)``.

    ``SentenceEmbedder.from_dir(dir)`` reads ``config.json``, ``model.safetensors`` (or a sharded
    index), ``tokenizer.json`` and, when present, sentence-transformers' ``sentence_bert_config.json``
    (``max_seq_length``) and ``1_Pooling/config.json``. ``embed(sentences)`` tokenises the batch,
    pads it to a bucketed shape (sequence lengths 16, 32, 64, ...; batch 1, 2, 4, ... up to
    ``batch_size``) so a handful of compiled programs serve every input, and runs one jitted
    forward + pooling per chunk with the weights as arguments.
    """

    SEQ_BUCKETS = (16, 32, 64, 128, 256, 384, 512)

    def __init__(
        self, model: bert.BertModel, tokenizer: Any, max_length: int | None = 512, normalize: bool = True,
        batch_size: int = 32,
    ):  # fmt: skip
        self.model = model
        self.tokenizer = tokenizer
        limit = model.config.max_position_embeddings
        self.max_length = limit if max_length is None else min(_positive(max_length, "max_length"), limit)
        self.normalize = bool(normalize)
        self.batch_size = _positive(batch_size, "batch_size")
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)

    @staticmethod
    def from_dir(
        path: str | os.PathLike, dtype: Any = DType.F32, device: Any = None, max_length: int | None = None,
        batch_size: int = 32, pack: bool | None = None,
    ) -> SentenceEmbedder:  # fmt: skip
        """Load a sentence-transformers / HF BERT folder (or a hub cache entry) from disk.

        ``pack``: keep the f32 Linear weights in the native product's panel layout
        (:func:`candlejax.nn.pack_linears`, same results up to summation order; a single sentence
        embeds ~20% faster). ``None`` packs where that product runs (an AVX-512 CPU, one device)."""
        from tokenizers import Tokenizer

        files = hub.resolve(path)
        d = files.root
        config = bert.Config.from_json_file(os.path.join(d, "config.json"))
        vb = VarBuilder.from_mmaped_safetensors(files.weights, dtype, device or Device.Cpu)
        model = bert.BertModel.load(vb, config, add_pooling_layer=False)
        if pack or pack is None:
            model = pack_linears(model, force=bool(pack))
        tokenizer = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        normalize = True
        st_cfg = os.path.join(d, "sentence_bert_config.json")
        if max_length is None and os.path.isfile(st_cfg):
            with open(st_cfg) as f:
                max_length = json.load(f).get("max_seq_length")
        modules = os.path.join(d, "modules.json")
        if os.path.isfile(modules):
            with open(modules) as f:
                normalize = any(m.get("type", "").endswith("Normalize") for m in json.load(f))
        pool_cfg = os.path.join(d, "1_Pooling", "config.json")
        if os.path.isfile(pool_cfg):
            with open(pool_cfg) as f:
                pc = json.load(f)
            others = ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
            if not pc.get("pooling_mode_mean_tokens", True) or any(pc.get(k) for k in others):
                raise errors.Msg(f"{pool_cfg}: only mean pooling is implemented")
        return SentenceEmbedder(model, tokenizer, max_length or config.max_position_embeddings, normalize, batch_size)

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
        ids, type_ids, mask = (np.asarray(unwrap(t)) for t in (ids, type_ids, mask))
        what = "SentenceEmbedder.embed_tokens"
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
            res = _embed_step_jit(self.model, *chunk, self.normalize)
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
