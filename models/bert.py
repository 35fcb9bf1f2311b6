"""BERT encoder (~ candle-transformers' ``models::bert``).

Paper: Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding", https://arxiv.org/abs/1810.04805. Mirrors Hugging Face
``transformers/models/bert/modeling_bert.py`` (``BertModel``: absolute position + token-type
embeddings, post-norm encoder layers, optional tanh pooler; ``BertForMaskedLM``: its ``cls.predictions``
head) with its weight names verbatim, and candle-transformers' ``src/models/bert.rs`` API::

    config = Config.from_json_file("all-MiniLM-L6-v2/config.json")
    vb = VarBuilder.from_mmaped_safetensors(["all-MiniLM-L6-v2/model.safetensors"], DType.F32, Device.Cpu)
    model = BertModel.load(vb, config)
    hidden = model.forward(input_ids, token_type_ids, attention_mask)        # (batch, seq, hidden)
    mlm = BertForMaskedLM.load(vb, config)     # a BertForMaskedLM checkpoint: bert.*, cls.predictions.*
    logits = mlm.forward(input_ids, token_type_ids, attention_mask)         # (batch, seq, vocab_size)

``model.forward`` runs eagerly (one cached executable per op) or under ``jax.jit``; the model is a
pytree, so :func:`forward_jit` compiles one program per input shape with the weights as arguments.
Sentence embeddings (tokenizer, pooling, bucketed shapes): :mod:`candlejax.pipelines`
(``SentenceEmbedder``, also reachable here as ``bert.SentenceEmbedder``); command line:
``candlejax embed`` / ``python -m candlejax.models.bert embed`` (:mod:`candlejax.cli`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax.distributed import bert_tp_rules as tp_rules  # Megatron-style split over "model"
from candlejax.dtype import DType, to_dtype
from candlejax.models.bert_config import Config, HiddenAct, PositionEmbeddingType
from candlejax.models.buckets import batch_bucket, eager_length_bucket, pad_rows_and_length
from candlejax.models.loading import check_architecture, host_array
from candlejax.nn import Embedding, LayerNorm, Linear, Module, VarBuilder, embedding, layer_norm, linear, ops
from candlejax.tensor import unwrap, wrap
from candlejax.xla import SizeJit, large_input_options, shape_buckets_enabled

__all__ = [
    "COMPILER_OPTIONS", "DTYPE", "LARGE_BATCH_TOKENS", "BertAttention", "BertEmbeddings", "BertEncoder",
    "BertForMaskedLM", "BertIntermediate", "BertLMPredictionHead", "BertLayer", "BertModel", "BertOnlyMLMHead",
    "BertOutput", "BertPooler", "BertPredictionHeadTransform", "BertSelfAttention", "BertSelfOutput", "Config",
    "HiddenAct", "PositionEmbeddingType", "forward_jit", "tp_rules",
]  # fmt: skip

#: the dtype Candle's BERT example loads weights in
DTYPE = DType.F32

#: ``model_type`` -> architectures :meth:`BertModel.load` reads (any ``Bert*`` head's encoder)
SUPPORTED = {"bert": ("BertModel",)}


# ------------------------------------------------------------------------------------------------
# layers, bottom-up
# ------------------------------------------------------------------------------------------------


class BertEmbeddings(Module):
    """word + absolute position + token-type embeddings, then LayerNorm: ``(B, S) -> (B, S, H)``."""

    def __init__(self, word: Embedding, position: Embedding, token_type: Embedding, norm: LayerNorm):
        self.word_embeddings = word
        self.position_embeddings = position
        self.token_type_embeddings = token_type
        self.LayerNorm = norm

    @staticmethod
    def load(vb: VarBuilder, cfg: Config) -> BertEmbeddings:
        """Candle's ``BertEmbeddings::load(vb, config)``: word, position and token-type tables and ``LayerNorm``."""
        return BertEmbeddings(
            embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("word_embeddings")),
            embedding(cfg.max_position_embeddings, cfg.hidden_size, vb.pp("position_embeddings")),
            embedding(cfg.type_vocab_size, cfg.hidden_size, vb.pp("token_type_embeddings")),
            layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm")),
        )

    def forward(self, input_ids: Any, token_type_ids: Any = None, position_ids: Any = None) -> Any:
        """``(B, S)`` ids in, ``(B, S, hidden)`` embeddings out."""
        ids = unwrap(input_ids)
        x = unwrap(self.word_embeddings(ids))
        if token_type_ids is None:
            x = x + unwrap(self.token_type_embeddings.embeddings())[0]
        else:
            x = x + unwrap(self.token_type_embeddings(token_type_ids))
        if position_ids is None:
            x = x + unwrap(self.position_embeddings.embeddings())[: ids.shape[1]]
        else:
            x = x + unwrap(self.position_embeddings(position_ids))
        return self.LayerNorm(x)


class BertSelfAttention(Module):
    """Multi-head self-attention: ``query``/``key``/``value`` Linears, then ``ops.sdpa``.

    The heads are split off the projections in ``(B, H, S, D)`` order so that both attention
    products are batched matmuls over ``B·H`` with contiguous operands.
    """

    def __init__(self, query: Linear, key: Linear, value: Linear, num_heads: int):
        self.query = query
        self.key = key
        self.value = value
        self.num_heads = int(num_heads)

    @staticmethod
    def load(vb: VarBuilder, cfg: Config) -> BertSelfAttention:
        """Candle's ``BertSelfAttention::load(vb, config)``: the ``query``, ``key`` and ``value`` layers."""
        h = cfg.hidden_size
        return BertSelfAttention(
            linear(h, h, vb.pp("query")), linear(h, h, vb.pp("key")), linear(h, h, vb.pp("value")),
            cfg.num_attention_heads,
        )  # fmt: skip

    def forward(self, hidden_states: Any, mask: Any = None) -> Any:
        """``(B, S, H)``, mask ``(B, 1, 1, S)`` (bool keep or additive float) or None -> ``(B, S, H)``."""
        x = unwrap(hidden_states)
        b, s, c = x.shape

        def heads(lin: Linear) -> Any:  # (B, S, C) -> (B, nH, S, D)
            return unwrap(lin(x)).reshape(b, s, self.num_heads, -1).transpose(0, 2, 1, 3)

        ctx = unwrap(ops.sdpa(heads(self.query), heads(self.key), heads(self.value), mask))
        return ctx.transpose(0, 2, 1, 3).reshape(b, s, c)


class BertSelfOutput(Module):
    """``LayerNorm(dense(x) + residual)``."""

    def __init__(self, dense: Linear, norm: LayerNorm):
        self.dense = dense
        self.LayerNorm = norm

    @staticmethod
    def load(vb: VarBuilder, cfg: Config) -> BertSelfOutput:
        """Candle's ``BertSelfOutput::load(vb, config)``: the ``dense`` layer and ``LayerNorm``."""
        return BertSelfOutput(
            linear(cfg.hidden_size, cfg.hidden_size, vb.pp("dense")),
            layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm")),
        )

    def forward(self, hidden_states: Any, input_tensor: Any) -> Any:
        """``LayerNorm(dense(hidden_states) + input_tensor)``: ``(B, S, hidden)`` in and out."""
        return self.LayerNorm(unwrap(self.dense(hidden_states)) + unwrap(input_tensor))


class BertAttention(Module):
    """``attention.self`` + ``attention.output`` (the HF attribute ``self`` is ``self_attention`` here)."""

    def __init__(self, self_attention: BertSelfAttention, output: BertSelfOutput):
        self.self_attention = self_attention
        self.output = output

    @staticmethod
    def load(vb: VarBuilder, cfg: Config) -> BertAttention:
        """Candle's ``BertAttention::load(vb, config)``: the ``self`` and ``output`` weights under ``vb``."""
        return BertAttention(BertSelfAttention.load(vb.pp("self"), cfg), BertSelfOutput.load(vb.pp("output"), cfg))

    def forward(self, hidden_states: Any, mask: Any = None) -> Any:
        """``(B, S, hidden)`` in, ``(B, S, hidden)`` out (self-attention, then dense + residual + LayerNorm)."""
        return self.output(self.self_attention(hidden_states, mask), hidden_states)


class BertIntermediate(Module):
    """``act(dense(x))``: ``(B, S, H) -> (B, S, intermediate_size)``."""

    def __init__(self, dense: Linear, act: HiddenAct):
        self.dense = dense
        self.act = act

    @staticmethod
    def load(vb: VarBuilder, cfg: Config) -> BertIntermediate:
        """Candle's ``BertIntermediate::load(vb, config)``: the ``dense`` up-projection."""
        return BertIntermediate(linear(cfg.hidden_size, cfg.intermediate_size, vb.pp("dense")), cfg.act)

    def forward(self, hidden_states: Any) -> Any:
        """``(B, S, hidden)`` in, ``(B, S, intermediate)`` out."""
        return self.act.apply(self.dense(hidden_states))


class BertOutput(BertSelfOutput):
    """``LayerNorm(dense(x) + residual)`` from ``intermediate_size`` back to ``hidden_size``."""

    @staticmethod
    def load(vb: VarBuilder, cfg: Config) -> BertOutput:
        """Candle's ``BertOutput::load(vb, config)``: the ``dense`` down-projection and ``LayerNorm``."""
        return BertOutput(
            linear(cfg.intermediate_size, cfg.hidden_size, vb.pp("dense")),
            layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm")),
        )


class BertLayer(Module):
    """One post-norm encoder block: attention, then the feed-forward, each with a residual."""

    def __init__(self, attention: BertAttention, intermediate: BertIntermediate, output: BertOutput):
        self.attention = attention
        self.intermediate = intermediate
        self.output = output

    @staticmethod
    def load(vb: VarBuilder, cfg: Config) -> BertLayer:
        """Candle's ``BertLayer::load(vb, config)``: ``attention``, ``intermediate`` and ``output``."""
        return BertLayer(
            BertAttention.load(vb.pp("attention"), cfg),
            BertIntermediate.load(vb.pp("intermediate"), cfg),
            BertOutput.load(vb.pp("output"), cfg),
        )

    def forward(self, hidden_states: Any, mask: Any = None) -> Any:
        """``(B, S, hidden)`` in, ``(B, S, hidden)`` out."""
        att = self.attention(hidden_states, mask)
        return self.output(self.intermediate(att), att)


class BertEncoder(Module):
    """``encoder.layer.{i}`` for i < num_hidden_layers."""

    def __init__(self, layers: list[BertLayer]):
        self.layers = list(layers)

    @staticmethod
    def load(vb: VarBuilder, cfg: Config) -> BertEncoder:
        """Candle's ``BertEncoder::load(vb, config)``: ``layer.{i}`` for each hidden layer."""
        return BertEncoder([BertLayer.load(vb.pp("layer").pp(i), cfg) for i in range(cfg.num_hidden_layers)])

    def forward(self, hidden_states: Any, mask: Any = None) -> Any:
        """``(B, S, hidden)`` in, ``(B, S, hidden)`` out, through every layer."""
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask)
        return hidden_states


class BertPooler(Module):
    """``tanh(dense(hidden[:, 0]))``: the [CLS] summary ``(B, H)``."""

    def __init__(self, dense: Linear):
        self.dense = dense

    @staticmethod
    def load(vb: VarBuilder, cfg: Config) -> BertPooler:
        """The pooler's ``dense`` layer under ``vb`` (transformers' ``BertPooler``)."""
        return BertPooler(linear(cfg.hidden_size, cfg.hidden_size, vb.pp("dense")))

    def forward(self, hidden_states: Any) -> Any:
        """``(B, S, hidden)`` in, ``(B, hidden)`` out: ``tanh(dense(first token))``."""
        return ops.activation(self.dense(unwrap(hidden_states)[:, 0]), "tanh")


#: Eager ``BertModel.forward`` pads sequences to a length bucket (see :func:`eager_length_bucket`);
#: ``CANDLEJAX_SHAPE_BUCKETS=0`` turns this off with the eager ops' shape buckets
EAGER_LENGTH_BUCKETS = shape_buckets_enabled()


def _mask_bias(attention_mask: Any, dtype: Any) -> Any:
    """0/1 mask ``(B, S)`` -> additive ``(B, 1, 1, S)``, or ``(B, S, S)`` (row i: the keys query i sees)
    -> ``(B, 1, S, S)`` (Candle's ``get_extended_attention_mask``): 0 where kept, the dtype's min where masked."""
    m = unwrap(attention_mask)
    if m.ndim == 3:
        return jnp.where((m != 0)[:, None], 0.0, jnp.finfo(dtype).min).astype(dtype)
    if m.ndim != 2:
        raise errors.UnexpectedNumberOfDims(2, m.ndim, m.shape, "bert attention_mask")
    keep = unwrap(ops.padding_mask(m))
    return jnp.where(keep, 0.0, jnp.finfo(dtype).min).astype(dtype)


def _host_inputs(input_ids: Any, token_type_ids: Any, attention_mask: Any) -> tuple[Any, Any, Any]:
    """Nested lists as numpy arrays (rows of different lengths raise naming the argument)."""
    return (host_array(input_ids, "bert input_ids"), host_array(token_type_ids, "bert token_type_ids"),
            host_array(attention_mask, "bert attention_mask"))  # fmt: skip


def _every_query_sees_a_key(attention_mask: Any) -> bool:
    """Whether every row of a concrete ``(B, S)`` / ``(B, S, S)`` mask keeps a key. A row keeping none
    attends uniformly to its ``S`` keys (transformers'): padding keys must not join that average."""
    if attention_mask is None:
        return True
    return bool((np.asarray(unwrap(attention_mask)) != 0).any(axis=-1).all())


class BertModel(Module):
    """``BertModel``: embeddings, encoder and (when the checkpoint has one) the pooler.

    ``BertModel.load(vb, config)`` reads HF names (``embeddings.word_embeddings.weight``,
    ``encoder.layer.0.attention.self.query.weight``, ...), also under a ``bert.`` (model_type)
    prefix as in ``BertForMaskedLM`` checkpoints. ``forward(input_ids, token_type_ids=None,
    attention_mask=None)`` returns the last hidden states ``(B, S, hidden_size)``.
    """

    def __init__(self, embeddings: BertEmbeddings, encoder: BertEncoder, pooler: BertPooler | None, config: Config):
        self.embeddings = embeddings
        self.encoder = encoder
        self.pooler = pooler
        self.config = config

    _static_fields = frozenset({"config"})

    @staticmethod
    def load(vb: VarBuilder, config: Config, add_pooling_layer: bool | None = None, strict: bool = True) -> BertModel:
        """Build from a VarBuilder; ``add_pooling_layer=None`` loads the pooler when the weights have it.

        Raises (``strict=False``: warns) on a ``model_type`` other than ``bert`` (RoBERTa & co.
        differ in their position ids) or a non-BERT architecture, and on encoder tensors never
        read. A task head's tensors (``cls.*``, ``classifier.*``, ...) and a pooler left out with
        ``add_pooling_layer=False`` are skipped knowingly: this is the encoder."""
        from candlejax.models.loading import check_vb_first

        check_vb_first(vb, "bert.BertModel.load", "BertModel::load(vb, &config)", "BertModel.load(vb, config)")
        model, pre = BertModel._load_unchecked(vb, config, add_pooling_layer, strict, "bert.BertModel.load")
        vb.check_all_used(strict, "bert.BertModel.load", ignore=(
            f"{pre}pooler.*", f"{pre}embeddings.position_ids", "cls.*", "classifier.*", "qa_outputs.*",
        ))  # fmt: skip
        return model

    @staticmethod
    def _load_unchecked(vb: VarBuilder, config: Config, add_pooling_layer: bool | None, strict: bool,
                        context: str) -> tuple[BertModel, str]:  # fmt: skip
        """The model, and the prefix (``""`` or ``"bert."``) its tensors were found under; the caller
        checks for unread tensors."""
        check_architecture({"model_type": config.model_type, "architectures": config.extra.get("architectures")},
                           context, SUPPORTED, strict, any_architecture_prefix="Bert")  # fmt: skip
        probe = "embeddings.word_embeddings.weight"
        if not vb.contains_tensor(probe):
            for prefix in dict.fromkeys([config.model_type or "bert", "bert"]):
                if vb.contains_tensor(f"{prefix}.{probe}"):
                    vb = vb.pp(prefix)
                    break
        if add_pooling_layer is None:
            add_pooling_layer = vb.contains_tensor("pooler.dense.weight")
        model = BertModel(
            BertEmbeddings.load(vb.pp("embeddings"), config),
            BertEncoder.load(vb.pp("encoder"), config),
            BertPooler.load(vb.pp("pooler"), config) if add_pooling_layer else None,
            config,
        )
        return model, (vb.prefix() + "." if vb.prefix() else "")

    @property
    def device(self) -> Any:
        """Candle's ``model.device`` (``Tensor::new(&tokens, &model.device)``): where the weights are."""
        return self.embeddings.word_embeddings.weight.device

    def _check(self, ids: Any, token_type_ids: Any, attention_mask: Any) -> None:
        if ids.ndim != 2:
            raise errors.UnexpectedNumberOfDims(2, ids.ndim, ids.shape, "bert input_ids (batch, seq)")
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise errors.UnexpectedDType(DType.U32, to_dtype(ids.dtype), "bert input_ids must be integers")
        if 0 in ids.shape:  # (under jit too: the shape is static)
            raise errors.Msg(
                f"bert: input_ids {errors.fmt_shape(ids.shape)} is empty, batch and sequence length must be >= 1"
            )
        if not isinstance(ids, jax.core.Tracer) and ids.size:  # eagerly, name bad ids (jit clamps them)
            host = np.asarray(ids)  # (on the host: no reduction compiled per shape)
            lo, hi = int(host.min()), int(host.max())
            if lo < 0 or hi >= self.config.vocab_size:
                raise errors.InvalidIndex("bert input_ids", hi if hi >= self.config.vocab_size else lo,
                                          self.config.vocab_size)  # fmt: skip
        if ids.shape[1] > self.config.max_position_embeddings:
            raise errors.Msg(
                f"bert: sequence length {ids.shape[1]} exceeds max_position_embeddings"
                f" {self.config.max_position_embeddings}"
            )
        if token_type_ids is not None and tuple(unwrap(token_type_ids).shape) != tuple(ids.shape):
            raise errors.UnexpectedShape("bert token_type_ids must match input_ids", ids.shape,
                                         unwrap(token_type_ids).shape)  # fmt: skip
        if attention_mask is not None:  # (B, S), or (B, S, S) as Candle's get_extended_attention_mask
            shape, want = tuple(unwrap(attention_mask).shape), tuple(ids.shape)
            if shape not in (want, (*want, want[1])):
                raise errors.UnexpectedShape("bert attention_mask must match input_ids (batch, seq) or be (batch, seq,"
                                             " seq)", want, shape)  # fmt: skip

    def forward(self, input_ids: Any, token_type_ids: Any = None, attention_mask: Any = None) -> Any:
        """``(B, S)`` ids (and token types, 0/1 mask) -> last hidden states ``(B, S, hidden_size)``.

        Eagerly, the sequence is padded (masked) to a length bucket of 16, 32, 64, ... tokens and the batch
        to a power of two (copies of the last row), so a new length or batch size reuses its bucket's
        executables (``EAGER_LENGTH_BUCKETS = False`` turns this off); under ``jit`` it runs as given."""
        ids, token_type_ids, attention_mask = _host_inputs(input_ids, token_type_ids, attention_mask)
        ids = unwrap(ids)
        self._check(ids, token_type_ids, attention_mask)
        b, s = (int(n) for n in ids.shape)
        padded, rows = eager_length_bucket(s, self.config.max_position_embeddings), batch_bucket(b)
        if (EAGER_LENGTH_BUCKETS and (padded > s or rows > b) and self._eager(ids, token_type_ids, attention_mask)
                and _every_query_sees_a_key(attention_mask)):
            return self._forward_padded(ids, token_type_ids, attention_mask, padded, rows)
        return self._encode(ids, token_type_ids, attention_mask)

    def _encode(self, ids: Any, token_type_ids: Any, attention_mask: Any) -> Any:
        x = self.embeddings(ids, token_type_ids)
        dtype = unwrap(x).dtype
        bias = None if attention_mask is None else _mask_bias(attention_mask, dtype)
        if self.config.is_decoder:  # transformers' BertModel masks causally for a decoder config
            s = ids.shape[1]
            causal = jnp.where(jnp.tril(jnp.ones((s, s), bool)), 0.0, jnp.finfo(dtype).min).astype(dtype)
            bias = causal[None, None] if bias is None else jnp.minimum(bias, causal[None, None])
        return self.encoder(x, bias)

    def _eager(self, *inputs: Any) -> bool:
        arrays = [unwrap(self.embeddings.word_embeddings.weight), *(unwrap(t) for t in inputs if t is not None)]
        return not any(isinstance(a, jax.core.Tracer) for a in arrays)

    def _forward_padded(self, ids: Any, token_type_ids: Any, attention_mask: Any, padded: int, rows: int) -> Any:
        b, s = ids.shape
        device = next(iter(ids.devices())) if isinstance(ids, jax.Array) else None
        pad = functools.partial(pad_rows_and_length, rows=rows, length=padded, device=device)
        mask = np.ones((b, s), np.int32) if attention_mask is None else attention_mask
        out = self._encode(pad(ids), None if token_type_ids is None else pad(token_type_ids), pad(mask))
        return wrap(jax.device_put(np.asarray(unwrap(out))[:b, :s], device))

    def pooled_output(self, hidden_states: Any) -> Any:
        """The pooler on ``forward``'s output: ``(B, hidden_size)`` (HF's ``pooler_output``)."""
        if self.pooler is None:
            raise errors.Msg("bert: this model was loaded without a pooler (no pooler.dense.weight)")
        return self.pooler.forward(hidden_states)


# ------------------------------------------------------------------------------------------------
# masked-language-model head (transformers' BertForMaskedLM)
# ------------------------------------------------------------------------------------------------
class BertPredictionHeadTransform(Module):
    """``LayerNorm(act(dense(x)))`` with ``config.hidden_act``: ``(B, S, H) -> (B, S, H)``."""

    def __init__(self, dense: Linear, act: HiddenAct, norm: LayerNorm):
        self.dense = dense
        self.act = act
        self.LayerNorm = norm

    @staticmethod
    def load(vb: VarBuilder, cfg: Config) -> BertPredictionHeadTransform:
        """The ``dense`` layer and ``LayerNorm`` under ``vb`` (transformers' ``BertPredictionHeadTransform``)."""
        return BertPredictionHeadTransform(
            linear(cfg.hidden_size, cfg.hidden_size, vb.pp("dense")), cfg.act,
            layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm")),
        )  # fmt: skip

    def forward(self, hidden_states: Any) -> Any:
        """``(B, S, hidden)`` in, ``(B, S, hidden)`` out."""
        return self.LayerNorm(self.act.apply(self.dense(hidden_states)))


class BertLMPredictionHead(Module):
    """``cls.predictions``: the transform, then ``decoder`` to vocabulary logits ``(B, S, vocab_size)``.

    The decoder's weight is ``cls.predictions.decoder.weight`` when the checkpoint stores one (and,
    as in transformers, the very word-embedding Var when ``tie_word_embeddings`` and the stored copy
    equals it); otherwise, with ``tie_word_embeddings``, the ``word_embeddings`` passed to
    :meth:`load`. Its bias is ``cls.predictions.bias`` (transformers' ``decoder.bias`` is tied to
    it), or ``cls.predictions.decoder.bias`` when the checkpoint stores that (it wins, as in
    transformers)."""

    def __init__(self, transform: BertPredictionHeadTransform, decoder: Linear):
        self.transform = transform
        self.decoder = decoder

    @staticmethod
    def load(vb: VarBuilder, cfg: Config, word_embeddings: Any = None) -> BertLMPredictionHead:
        """``vb`` at ``cls.predictions``; ``word_embeddings``: the encoder's ``Embedding`` (or its
        weight), used as the decoder weight when the checkpoint leaves it out."""
        h, voc = cfg.hidden_size, cfg.vocab_size
        transform = BertPredictionHeadTransform.load(vb.pp("transform"), cfg)
        dec = vb.pp("decoder")
        tied = word_embeddings.embeddings() if isinstance(word_embeddings, Embedding) else word_embeddings
        tie = bool(cfg.tie_word_embeddings) and tied is not None
        if tie and tuple(tied.shape) != (voc, h):
            raise errors.UnexpectedShape("bert: tied decoder weight (vocab_size, hidden_size)", (voc, h), tied.shape)
        if dec.contains_tensor("weight") or not tie:  # untied, or nothing to tie to: it must be stored
            w = dec.get((voc, h), "weight")
            if tie and np.array_equal(np.asarray(unwrap(w)), np.asarray(unwrap(tied))):
                w = tied  # a stored copy of the embeddings: one Var, as transformers ties them
        else:
            w = tied
        if dec.contains_tensor("bias"):
            b = dec.get((voc,), "bias")
            if vb.contains_tensor("bias"):
                vb.mark_used(vb.path("bias"))
        else:
            b = vb.get((voc,), "bias")
        return BertLMPredictionHead(transform, Linear(w, b))

    @property
    def bias(self) -> Any:
        """transformers' ``cls.predictions.bias`` (the decoder's bias)."""
        return self.decoder.bias

    def forward(self, hidden_states: Any) -> Any:
        """``(B, S, hidden)`` in, ``(B, S, vocab)`` logits out."""
        return self.decoder(self.transform(hidden_states))


class BertOnlyMLMHead(Module):
    """``cls``: holds ``predictions`` (:class:`BertLMPredictionHead`)."""

    def __init__(self, predictions: BertLMPredictionHead):
        self.predictions = predictions

    @staticmethod
    def load(vb: VarBuilder, cfg: Config, word_embeddings: Any = None) -> BertOnlyMLMHead:
        """The ``predictions`` head under ``vb``; ``word_embeddings`` ties the decoder to the input table."""
        return BertOnlyMLMHead(BertLMPredictionHead.load(vb.pp("predictions"), cfg, word_embeddings))

    def forward(self, sequence_output: Any) -> Any:
        """``(B, S, hidden)`` in, ``(B, S, vocab)`` logits out."""
        return self.predictions(sequence_output)


class BertForMaskedLM(Module):
    """transformers' ``BertForMaskedLM``: the encoder ``bert`` (no pooler) and the ``cls`` head.

    ``BertForMaskedLM.load(vb, config)`` reads ``bert.*`` (or unprefixed encoder names) and
    ``cls.predictions.*``; ``forward(input_ids, token_type_ids=None, attention_mask=None)`` returns
    the logits ``(B, S, vocab_size)``. :func:`forward_jit` compiles it as it does ``BertModel``.
    """

    def __init__(self, bert: BertModel, cls: BertOnlyMLMHead, config: Config):
        self.bert = bert
        self.cls = cls
        self.config = config

    _static_fields = frozenset({"config"})

    @staticmethod
    def load(vb: VarBuilder, config: Config, strict: bool = True) -> BertForMaskedLM:
        """Build from a VarBuilder holding a ``BertForMaskedLM`` (or ``BertForPreTraining``) checkpoint.

        The decoder weight is tied to the word embeddings when the checkpoint omits it (see
        :class:`BertLMPredictionHead`). Skipped knowingly, as transformers' ``BertForMaskedLM``
        does: a pooler (``bert.pooler.*``) and ``BertForPreTraining``'s next-sentence head
        (``cls.seq_relationship.*``). Any other tensor never read raises (``strict=False``: warns)."""
        from candlejax.models.loading import check_vb_first

        ctx = "bert.BertForMaskedLM.load"
        check_vb_first(vb, ctx, "BertForMaskedLM::load(vb, &config)", "BertForMaskedLM.load(vb, config)")
        bert, pre = BertModel._load_unchecked(vb, config, False, strict, ctx)
        cls = BertOnlyMLMHead.load(vb.pp("cls"), config, bert.embeddings.word_embeddings)
        vb.check_all_used(strict, ctx, ignore=(
            f"{pre}pooler.*", f"{pre}embeddings.position_ids", vb.pp("cls").path("seq_relationship.*"),
        ))  # fmt: skip
        return BertForMaskedLM(bert, cls, config)

    @property
    def device(self) -> Any:
        """Where the weights are (as :attr:`BertModel.device`)."""
        return self.bert.device

    def forward(self, input_ids: Any, token_type_ids: Any = None, attention_mask: Any = None) -> Any:
        """``(B, S)`` ids (and token types, 0/1 mask) -> logits ``(B, S, vocab_size)``."""
        return self.cls(self.bert.forward(input_ids, token_type_ids, attention_mask))


#: XLA options for compiling batches of at least ``LARGE_BATCH_TOKENS`` tokens (see :mod:`candlejax.xla`)
COMPILER_OPTIONS: dict[str, Any] = large_input_options()
LARGE_BATCH_TOKENS = 2048


def _forward(model: BertModel, input_ids: Any, token_type_ids: Any = None, attention_mask: Any = None) -> Any:
    return model.forward(input_ids, token_type_ids, attention_mask)


def _prepare(model: Any, input_ids: Any, token_type_ids: Any = None, attention_mask: Any = None) -> Any:
    if not isinstance(model, (BertModel, BertForMaskedLM)):
        raise errors.ArgumentType(
            "bert.forward_jit(model, input_ids, token_type_ids=None, attention_mask=None) takes the model first,"
            f" got {type(model).__name__}"
        )
    return (model, *_host_inputs(input_ids, token_type_ids, attention_mask)), {}  # lists before tracing


forward_jit = SizeJit(_forward, COMPILER_OPTIONS, LARGE_BATCH_TOKENS, prepare=_prepare)
forward_jit.__doc__ = """``forward_jit(model, input_ids, token_type_ids=None, attention_mask=None)``: ``model.forward``
compiled once per input shape, with the weights as arguments (not constants)."""

_SERVING = {  # the serving code's names, kept reachable from here
    "SentenceEmbedder": "candlejax.pipelines.sentence_embedding",
    "mean_pool": "candlejax.pipelines.sentence_embedding",
    "resolve_model_dir": "candlejax.pipelines.sentence_embedding",
    "tune_malloc": "candlejax.xla",
    "main": "candlejax.cli",
}


def __getattr__(name: str) -> Any:
    if name in _SERVING:
        import importlib

        return getattr(importlib.import_module(_SERVING[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    import sys

    from candlejax.cli import main

    raise SystemExit(main(sys.argv[1:], prog="python -m candlejax.models.bert"))
