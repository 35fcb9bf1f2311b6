"""BLIP's text decoder: a BERT with causal self-attention, cross-attention to the image and an LM head
(~ candle-transformers' ``models::blip_text``).

Mirrors Hugging Face ``transformers/models/blip/modeling_blip_text.py`` (``BlipTextLMHeadModel``)
with its weight names verbatim (``bert.embeddings.word_embeddings.weight``,
``bert.encoder.layer.0.crossattention.self.key.weight``, ``cls.predictions.transform.dense.weight``,
...). Two ways to run it:

* ``logits = decoder.forward(input_ids, image_embeds)``: every position, no cache (``(B, S, vocab)``);
* Candle's stateful form, ``model.text_decoder().forward(input_ids, image_embeds)`` (or
  ``decoder.forward_stateful``; ``TextLMHeadModel.new(cfg, vb)`` returns the same view): each call
  appends its tokens to the decoder's own KV cache, as Candle's ``&mut self`` forward does, until
  ``reset_kv_cache()``;
* pure, for ``jax.jit`` and :mod:`candlejax.generation`: ``logits, cache = step(decoder, cache,
  tokens, pos)`` with a :class:`TextCache` from ``decoder.new_cache(image_embeds, max_seq_len)``:
  the self-attention keys/values live in pre-allocated :class:`~candlejax.nn.DecodeKvCache` buffers and
  the cross-attention keys/values of the image are computed once, so one compiled step serves
  every token. Candle: ``TextLMHeadModel::forward(&mut self, input_ids, image_embeds)`` with its
  internal cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax.models.loading import candle_config
from candlejax.nn import (
    Activation,
    DecodeKvCache,
    Embedding,
    HostState,
    LayerNorm,
    Linear,
    Module,
    VarBuilder,
    check_token_ids,
    embedding,
    layer_norm,
    linear,
    ops,
)
from candlejax.nn.state import traced
from candlejax.tensor import Tensor

__all__ = [
    "Config",
    "LinearLoader",
    "TextAttention",
    "StatefulTextDecoder",
    "TextCache",
    "TextEmbeddings",
    "TextLMHeadModel",
    "TextLayer",
    "TextPooler",
    "TextSelfAttention",
    "load_linear",
    "step",
]


@dataclasses.dataclass
class Config:
    """``text_config`` of a BLIP config.json (transformers' ``BlipTextConfig`` defaults).

    ``encoder_hidden_size`` is the vision model's ``hidden_size`` (``BlipConfig`` sets it so).
    """

    vocab_size: int = 30524
    hidden_size: int = 768
    encoder_hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 512
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    bos_token_id: int = 30522
    eos_token_id: int = 2
    pad_token_id: int = 0
    sep_token_id: int = 102
    tie_word_embeddings: bool = True
    projection_dim: int = 768  # Candle's field; the captioning model does not use it
    is_decoder: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise errors.Msg(
                f"blip text_config: hidden_size {self.hidden_size} is not a multiple of num_attention_heads"
                f" {self.num_attention_heads}"
            )
        if not self.is_decoder:
            raise errors.Msg(
                "blip text_config: is_decoder=False (a text encoder without cross-attention) is not supported;"
                " the BLIP text model here is the captioning decoder"
            )
        Activation.parse(self.hidden_act)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """The config of a ``text_config`` dict; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names and v is not None})


candle_config(Config, "blip_text")  # Config(**config_json) names from_dict


def load_linear(in_dim: int, out_dim: int, vb: VarBuilder, bias: Tensor | None = None) -> Module:
    """How the ``load`` methods build a linear layer: ``vb``'s ``weight`` ``(out, in)`` and ``bias``
    (:func:`candlejax.nn.linear`), or ``vb``'s ``weight`` and the given ``bias`` (the LM head's, stored
    beside ``decoder``). :mod:`candlejax.models.quantized_blip_text` passes one that builds
    ``QLinear`` layers from a GGUF file."""
    return linear(in_dim, out_dim, vb) if bias is None else Linear(vb.get((out_dim, in_dim), "weight"), bias)


#: the signature of :func:`load_linear`: ``linear(in_dim, out_dim, vb, bias=None)``
LinearLoader = Callable[..., Module]


def _heads(x: Tensor, n: int) -> Tensor:
    """``(B, S, H*D) -> (B, H, S, D)``."""
    b, s, _ = x.dims3()
    return x.reshape((b, s, n, -1)).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """``(B, H, S, D) -> (B, S, H*D)``."""
    b, h, s, d = x.dims4()
    return x.transpose(1, 2).reshape((b, s, h * d))


class TextEmbeddings(Module):
    """``LayerNorm(word_embeddings(ids) + position_embeddings(pos .. pos+S))``."""

    def __init__(self, word_embeddings: Embedding, position_embeddings: Embedding, norm: LayerNorm):
        self.word_embeddings, self.position_embeddings, self.LayerNorm = word_embeddings, position_embeddings, norm

    @staticmethod
    def load(vb: VarBuilder, cfg: Config) -> TextEmbeddings:
        """Candle's ``TextEmbeddings::new(cfg, vb)``: word and position tables and ``LayerNorm``."""
        return TextEmbeddings(
            embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("word_embeddings")),
            embedding(cfg.max_position_embeddings, cfg.hidden_size, vb.pp("position_embeddings")),
            layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm")),
        )

    def forward(self, input_ids: Tensor, pos: Tensor | int = 0) -> Tensor:
        """``(B, S)`` ids at positions ``pos ..`` in, ``(B, S, hidden)`` out."""
        s = input_ids.dim(1)
        offsets = Tensor.from_numpy(np.arange(s, dtype=np.int32))
        positions = offsets + pos if isinstance(pos, Tensor) else offsets + int(pos)
        return self.LayerNorm(self.word_embeddings(input_ids).broadcast_add(self.position_embeddings(positions)))


class TextSelfAttention(Module):
    """``query``/``key``/``value`` projections; keys/values from the text (self) or the image (cross)."""

    def __init__(self, query: Linear, key: Linear, value: Linear, num_heads: int):
        self.query, self.key, self.value = query, key, value
        self.num_heads = int(num_heads)

    @staticmethod
    def load(vb: VarBuilder, cfg: Config, is_cross_attention: bool,
             linear: LinearLoader = load_linear) -> TextSelfAttention:  # fmt: skip
        """Candle's ``TextSelfAttention::new(cfg, is_cross_attention, vb)``: ``query``, ``key``, ``value``."""
        h = cfg.hidden_size
        kv_in = cfg.encoder_hidden_size if is_cross_attention else h
        return TextSelfAttention(
            linear(h, h, vb.pp("query")), linear(kv_in, h, vb.pp("key")), linear(kv_in, h, vb.pp("value")),
            cfg.num_attention_heads,
        )  # fmt: skip

    def kv(self, states: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values ``(B, H, T, D)`` of ``states`` ``(B, T, C)``."""
        return _heads(self.key(states), self.num_heads), _heads(self.value(states), self.num_heads)

    def attend(self, xs: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False,
               keys_transposed: bool = False) -> Tensor:  # fmt: skip
        """``softmax(q kᵀ / √d + mask) v`` for queries from ``xs`` ``(B, S, C)`` -> ``(B, S, C)``;
        ``keys_transposed``: k as the decoding cache stores the image keys, ``(B, H, D, N)``."""
        q = _heads(self.query(xs), self.num_heads)
        return _merge(ops.sdpa(q, k, v, mask, do_causal=causal, keys_transposed=keys_transposed))


class TextAttention(Module):
    """``self`` (:class:`TextSelfAttention`, named ``self_attention`` here) + ``output``:
    ``LayerNorm(dense(ctx) + xs)``."""

    def __init__(self, self_attention: TextSelfAttention, dense: Linear, norm: LayerNorm):
        self.self_attention, self.dense, self.LayerNorm = self_attention, dense, norm

    @staticmethod
    def load(vb: VarBuilder, cfg: Config, is_cross_attention: bool,
             linear: LinearLoader = load_linear) -> TextAttention:  # fmt: skip
        """Candle's ``TextAttention::new(cfg, is_cross_attention, vb)``: ``self`` and ``output`` weights."""
        out = vb.pp("output")
        return TextAttention(
            TextSelfAttention.load(vb.pp("self"), cfg, is_cross_attention, linear),
            linear(cfg.hidden_size, cfg.hidden_size, out.pp("dense")),
            layer_norm(cfg.hidden_size, cfg.layer_norm_eps, out.pp("LayerNorm")),
        )

    def forward(self, xs: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False,
                keys_transposed: bool = False) -> Tensor:  # fmt: skip
        """``(B, S, hidden)`` queries, keys and values in, ``(B, S, hidden)`` out (dense + residual + LayerNorm)."""
        ctx = self.self_attention.attend(xs, k, v, mask, causal, keys_transposed)
        return self.LayerNorm(self.dense(ctx) + xs)


class TextLayer(Module):
    """Causal self-attention, cross-attention to the image, feed-forward (each post-norm, residual)."""

    def __init__(self, attention: TextAttention, crossattention: TextAttention, intermediate: Linear,
                 output: Linear, output_norm: LayerNorm, act: Activation):  # fmt: skip
        self.attention, self.crossattention = attention, crossattention
        self.intermediate, self.output, self.output_norm, self.act = intermediate, output, output_norm, act

    @staticmethod
    def load(vb: VarBuilder, cfg: Config, linear: LinearLoader = load_linear) -> TextLayer:
        """Candle's ``TextLayer::new(cfg, vb)``: ``attention``, ``crossattention``, ``intermediate`` and ``output``."""
        h, i = cfg.hidden_size, cfg.intermediate_size
        return TextLayer(
            TextAttention.load(vb.pp("attention"), cfg, False, linear),
            TextAttention.load(vb.pp("crossattention"), cfg, True, linear),
            linear(h, i, vb.pp("intermediate").pp("dense")), linear(i, h, vb.pp("output").pp("dense")),
            layer_norm(h, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm")), Activation.parse(cfg.hidden_act),
        )  # fmt: skip

    def _feed_forward(self, xs: Tensor) -> Tensor:
        return self.output_norm(self.output(self.act(self.intermediate(xs))) + xs)

    def forward(self, xs: Tensor, image_embeds: Tensor) -> Tensor:
        """Every position at once (no cache): ``(B, S, C)``."""
        k, v = self.attention.self_attention.kv(xs)
        xs = self.attention(xs, k, v, causal=True)
        ck, cv = self.crossattention.self_attention.kv(image_embeds)
        return self._feed_forward(self.crossattention(xs, ck, cv))

    def forward_cached(self, xs: Tensor, kv: DecodeKvCache, ck_t: Tensor, cv: Tensor) -> tuple[Tensor, DecodeKvCache]:
        """New positions ``(B, S, C)`` against the cache (image keys ``ck_t`` stored ``(B, H, D, N)``);
        returns them and the updated cache."""
        k, v = self.attention.self_attention.kv(xs)
        (_, v_all), kv = kv.append(k, v)
        xs = self.attention(xs, kv.transposed_keys(), v_all, kv.attn_mask(xs.dim(1)), keys_transposed=True)
        return self._feed_forward(self.crossattention.forward(xs, ck_t, cv, keys_transposed=True)), kv


class TextPooler(Module):
    """Candle's ``blip_text::TextPooler``: ``tanh(dense(x[:, 0]))``, the first token's hidden state
    ``(B, S, C) -> (B, C)`` (transformers' ``BlipTextPooler``). Captioning does not use it."""

    def __init__(self, dense: Linear):
        self.dense = dense

    @classmethod
    def new(cls, cfg: Config, vb: VarBuilder, linear: LinearLoader = load_linear) -> TextPooler:
        """Candle's ``TextPooler::new(&cfg, vb)``: ``dense`` ``(hidden, hidden)`` with a bias."""
        return cls(linear(cfg.hidden_size, cfg.hidden_size, vb.pp("dense")))

    @classmethod
    def load(cls, vb: VarBuilder, cfg: Config) -> TextPooler:
        """Candle's ``TextPooler::new(cfg, vb)``."""
        return cls.new(cfg, vb)

    def forward(self, xs: Tensor) -> Tensor:
        """``(B, S, hidden)`` in, ``(B, hidden)`` out: ``tanh(dense(first token))``."""
        if xs.rank != 3:
            raise errors.Msg(f"blip TextPooler: expected hidden states (batch, seq, hidden), got {xs.dims()}")
        return self.dense(xs.narrow(1, 0, 1).squeeze(1)).tanh()


class TextCache(Module):
    """Per layer: a self-attention :class:`DecodeKvCache` and the image's cross-attention keys
    ``(B, H, D, N)`` (stored transposed, as the score product reads them) and values ``(B, H, N, D)``."""

    def __init__(self, kv: list[DecodeKvCache], cross_k: list[Tensor], cross_v: list[Tensor]):
        self.kv, self.cross_k, self.cross_v = list(kv), list(cross_k), list(cross_v)

    @property
    def max_seq_len(self) -> int:
        """The number of positions each layer's cache holds."""
        return self.kv[0].max_seq_len


class TextLMHeadModel(Module):
    """``bert`` (embeddings + ``encoder.layer.{i}``) and ``cls.predictions`` (transform + tied decoder)."""

    def __init__(self, embeddings: TextEmbeddings, layers: list[TextLayer], transform: Linear,
                 transform_norm: LayerNorm, act: Activation, decoder: Linear, config: Config):  # fmt: skip
        self.embeddings, self.layers = embeddings, list(layers)
        self.transform, self.transform_norm, self.act, self.decoder = transform, transform_norm, act, decoder
        self.config = config
        self._forward_state = HostState()  # the KV cache of Candle's stateful forward (forward_stateful)

    @classmethod
    def new(cls, cfg: Config, vb: VarBuilder) -> StatefulTextDecoder:
        """Candle's ``TextLMHeadModel::new(&cfg, vb)``: the decoder with Candle's stateful
        ``forward`` (a :class:`StatefulTextDecoder`; ``.load(vb, cfg)`` gives the uncached module)."""
        from candlejax.models.loading import check_vb_first

        check_vb_first(vb, "blip_text.TextLMHeadModel.new", "TextLMHeadModel.new(cfg, vb)",
                       "TextLMHeadModel.load(vb, cfg)")  # fmt: skip
        return StatefulTextDecoder(cls.load(vb, cfg))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``decoder(input_ids, image_embeds)`` is :meth:`forward`; with no arguments, Candle's accessor
        ``model.text_decoder()``: the :class:`StatefulTextDecoder` view of this decoder."""
        if not args and not kwargs:
            return StatefulTextDecoder(self)
        return self.forward(*args, **kwargs)

    @classmethod
    def load(cls, vb: VarBuilder, cfg: Config, linear: LinearLoader = load_linear) -> TextLMHeadModel:
        """``linear``: how the linear layers are built (:func:`load_linear`); the other weights are read
        with ``vb.get``."""
        bert, pred = vb.pp("bert"), vb.pp("cls").pp("predictions")
        emb = TextEmbeddings.load(bert.pp("embeddings"), cfg)
        enc = bert.pp("encoder").pp("layer")
        layers = [TextLayer.load(enc.pp(i), cfg, linear) for i in range(cfg.num_hidden_layers)]
        h, voc = cfg.hidden_size, cfg.vocab_size
        dec = pred.pp("decoder")
        b = dec.get((voc,), "bias") if dec.contains_tensor("bias") else pred.get((voc,), "bias")
        if dec.contains_tensor("weight") or not cfg.tie_word_embeddings:
            head = linear(h, voc, dec, b)
        else:  # tied to the word embeddings (transformers saves only one copy)
            head = Linear(emb.word_embeddings.embeddings(), b)
        return cls(
            emb, layers, linear(h, h, pred.pp("transform").pp("dense")),
            layer_norm(h, cfg.layer_norm_eps, pred.pp("transform").pp("LayerNorm")), Activation.parse(cfg.hidden_act),
            head, cfg,
        )  # fmt: skip

    def _check_ids(self, input_ids: Tensor, start: int = 0) -> None:
        if not isinstance(input_ids, Tensor):
            raise errors.Msg(f"blip text_decoder: input_ids must be a Tensor (e.g. Tensor.new(ids)), got"
                             f" {type(input_ids).__name__}")  # fmt: skip
        if input_ids.rank != 2 or input_ids.dim(1) == 0:
            raise errors.Msg(f"blip text_decoder: input_ids must be (batch, seq) with seq >= 1, got {input_ids.dims()}")
        if start + input_ids.dim(1) > self.config.max_position_embeddings:
            raise errors.Msg(
                f"blip text_decoder: {start + input_ids.dim(1)} positions exceed max_position_embeddings"
                f" {self.config.max_position_embeddings}"
            )

    def _check_image_embeds(self, image_embeds: Any, batch: int | None = None) -> None:
        """``image_embeds`` ``(B, N, encoder_hidden_size)``, ``B`` the ids' batch (when given)."""
        shape = tuple(getattr(image_embeds, "shape", np.shape(image_embeds)))
        c = self.config.encoder_hidden_size
        if len(shape) != 3 or shape[2] != c or shape[1] == 0 or (batch is not None and shape[0] != batch):
            b = "batch" if batch is None else batch
            raise errors.Msg(
                f"blip text_decoder: image_embeds must be ({b}, patches, encoder_hidden_size {c}), the vision"
                f" model's output, got {list(shape)}" + ("" if batch is None else f" for input_ids of batch {batch}")
            )

    def head(self, xs: Tensor) -> Tensor:
        """``cls.predictions``: ``(..., C) -> (..., vocab)`` logits."""
        return self.decoder(self.transform_norm(self.act(self.transform(xs))))

    def forward(self, input_ids: Tensor, image_embeds: Tensor) -> Tensor:
        """Logits ``(B, S, vocab)`` for every position (causal self-attention, no cache)."""
        self._check_ids(input_ids)
        self._check_image_embeds(image_embeds, input_ids.dim(0))
        xs = self.embeddings(input_ids)
        for layer in self.layers:
            xs = layer(xs, image_embeds)
        return self.head(xs)

    def new_cache(self, image_embeds: Tensor, max_seq_len: int | None = None) -> TextCache:
        """A :class:`TextCache` for ``image_embeds`` ``(B, N, C_vision)``: empty self-attention buffers of
        ``max_seq_len`` positions and the image's keys/values for every layer."""
        self._check_image_embeds(image_embeds)
        n = self.config.max_position_embeddings if max_seq_len is None else int(max_seq_len)
        if not 0 < n <= self.config.max_position_embeddings:
            raise errors.Msg(f"blip: max_seq_len {n} must be in 1..{self.config.max_position_embeddings}")
        b = image_embeds.dim(0)
        heads = self.config.num_attention_heads
        like = Tensor.zeros((b, heads, 1, self.config.hidden_size // heads), image_embeds.dtype, image_embeds.device)
        return TextCache([DecodeKvCache.preallocated(n, like) for _ in self.layers], *self._cross_kv(image_embeds))

    def _cross_kv(self, image_embeds: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        ck, cv = [], []
        for layer in self.layers:
            k, v = layer.crossattention.self_attention.kv(image_embeds)
            ck.append(k.transpose(2, 3))  # (B, H, D, N): the score product reads it as is, every step
            cv.append(v)
        return ck, cv

    def _hidden_cached(self, cache: TextCache, input_ids: Tensor, pos: Tensor | int) -> tuple[Tensor, TextCache]:
        xs = self.embeddings(input_ids, pos)
        kvs = []
        for layer, kv, ck, cv in zip(self.layers, cache.kv, cache.cross_k, cache.cross_v, strict=True):
            xs, kv = layer.forward_cached(xs, kv, ck, cv)
            kvs.append(kv)
        return xs, TextCache(kvs, cache.cross_k, cache.cross_v)

    def forward_cached(self, cache: TextCache, input_ids: Tensor, pos: Tensor | int,
                       last: Any = None) -> tuple[Tensor, TextCache]:  # fmt: skip
        """Logits ``(B, vocab)`` of the last new position and the updated cache (``pos``: position of
        ``input_ids[:, 0]``, an int or an int32 scalar that may be traced).

        ``last`` (an index into ``input_ids``, may be traced): the logits of that position instead, and
        the cache then holds ``pos + last + 1`` positions: a prompt padded at its end to a bucketed
        length (one compiled prefill for every prompt length) gives the logits of its last real token,
        and the padding's slots (causally masked) are overwritten by the tokens that follow.

        ``pos`` must be the number of tokens the cache holds, and the ids must be in the vocabulary: both
        raise when concrete; traced (under ``jit``, as in :func:`candlejax.generation.generate`) only the
        ids' dtype is checked and a lookup clamps what it cannot check."""
        check_token_ids(input_ids, self.config.vocab_size, "blip text_decoder: token ids")
        p, held = (pos.jax if isinstance(pos, Tensor) else pos), cache.kv[0].pos.jax
        if not isinstance(p, jax.core.Tracer) and not isinstance(held, jax.core.Tracer) and int(p) != int(held):
            raise errors.Msg(
                f"blip text_decoder: pos {int(p)} differs from the cache's position {int(held)} (the number of"
                " tokens it holds); pass the position of input_ids[:, 0]"
            )
        xs, cache = self._hidden_cached(cache, input_ids, pos)
        if last is None:
            return self.head(xs.narrow(1, xs.dim(1) - 1, 1).squeeze(1)), cache
        at = jnp.asarray(last.jax if isinstance(last, Tensor) else last, jnp.int32)
        x = Tensor.from_jax(jax.lax.dynamic_slice_in_dim(xs.jax, at, 1, axis=1))
        end = jnp.asarray(p, jnp.int32) + at + 1
        cache = TextCache([kv.at_position(end) for kv in cache.kv], cache.cross_k, cache.cross_v)
        return self.head(x.squeeze(1)), cache

    def forward_stateful(self, input_ids: Tensor, image_embeds: Tensor) -> Tensor:
        """Candle's ``TextLMHeadModel::forward(&mut self, input_ids, image_embeds)``: logits ``(B, S,
        vocab)`` of the new tokens, which continue the sequence of the previous calls (the decoder's
        own KV cache, up to ``max_position_embeddings`` positions) until :meth:`reset_kv_cache`.
        ``image_embeds`` is read on every call, as in Candle."""
        ids = input_ids if isinstance(input_ids, Tensor) else Tensor(
            input_ids if isinstance(input_ids, jax.Array) else np.asarray(input_ids))  # (a tracer under jit too)
        st = HostState.of(self)
        cache, pos = st.value if st.value is not None else (None, 0)
        self._check_ids(ids, pos)
        check_token_ids(ids, self.config.vocab_size, "blip text_decoder: token ids")
        self._check_image_embeds(image_embeds, ids.dim(0))
        if cache is None:
            cache = self.new_cache(image_embeds)
        elif cache.cross_k[0].dim(0) != ids.dim(0) or image_embeds.dim(0) != ids.dim(0):
            raise errors.Msg(
                f"blip text_decoder: batch {ids.dim(0)} (image_embeds {image_embeds.dim(0)}) differs from the"
                f" cached sequence's {cache.cross_k[0].dim(0)}; call reset_kv_cache() to start a new one"
            )
        else:  # the image's keys/values from this call's image_embeds
            cache = TextCache(cache.kv, *self._cross_kv(image_embeds))
        logits, cache = _jit_logits_cached(self, cache, ids, jnp.asarray(pos, jnp.int32))
        # under jax.jit / vmap / grad nothing is kept (the next call starts a new sequence)
        st.value = None if traced(cache) else (cache, pos + ids.dim(1))
        return logits

    def reset_kv_cache(self) -> None:
        """Candle's ``reset_kv_cache()``: the next :meth:`forward_stateful` starts a new sequence."""
        HostState.of(self).value = None


def _logits_cached(model: TextLMHeadModel, cache: TextCache, ids: Any, pos: Any) -> tuple[Tensor, TextCache]:
    xs, cache = model._hidden_cached(cache, ids, Tensor.from_jax(pos))
    return model.head(xs), cache


_jit_logits_cached = jax.jit(_logits_cached)


class StatefulTextDecoder:
    """Candle's ``&mut TextLMHeadModel``: what ``model.text_decoder()`` and ``TextLMHeadModel.new(cfg,
    vb)`` return. ``forward(input_ids, image_embeds)`` is :meth:`TextLMHeadModel.forward_stateful`
    (each call continues the sequence in the decoder's KV cache), ``reset_kv_cache()`` starts a new
    one; other attributes are the decoder's (``.module`` is the decoder itself)."""

    __slots__ = ("module",)

    def __init__(self, module: TextLMHeadModel):
        self.module = module

    def forward(self, input_ids: Tensor, image_embeds: Tensor) -> Tensor:
        """``(B, S)`` ids and the image embeddings in, ``(B, S, vocab)`` logits out; the cache advances."""
        return self.module.forward_stateful(input_ids, image_embeds)

    __call__ = forward

    def reset_kv_cache(self) -> None:
        """Candle's ``TextLMHeadModel::reset_kv_cache``: start again at position 0."""
        self.module.reset_kv_cache()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)

    def __repr__(self) -> str:
        return f"StatefulTextDecoder({self.module!r})"


# a pytree around its decoder, as the decoder is: jax.jit / jax.tree.map take it as they take a model
jax.tree_util.register_pytree_node(StatefulTextDecoder, lambda s: ((s.module,), None),
                                   lambda _, children: StatefulTextDecoder(children[0]))  # fmt: skip


def step(params: TextLMHeadModel, cache: TextCache, tokens: Any, pos: Any,
         last: Any = None) -> tuple[Tensor, TextCache]:  # fmt: skip
    """The pure decode step for :func:`candlejax.generation.generate`: ``(logits (B, vocab), cache)``;
    ``last``: the logits of that index of a prompt padded to a bucketed length (see
    :meth:`TextLMHeadModel.forward_cached`)."""
    ids = tokens if isinstance(tokens, Tensor) else Tensor.from_jax(jnp.asarray(tokens))
    p = pos if isinstance(pos, Tensor) else Tensor.from_jax(jnp.asarray(pos, jnp.int32))
    return params.forward_cached(cache, ids, p, last)
