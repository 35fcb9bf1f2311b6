"""BERT encoder and sentence embeddings (~ candle-transformers' ``models::bert``).

Paper: Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding", https://arxiv.org/abs/1810.04805. Mirrors Hugging Face
``transformers/models/bert/modeling_bert.py`` (``BertModel``: absolute position + token-type
embeddings, post-norm encoder layers, optional tanh pooler) with its weight names verbatim, and
candle-transformers' ``src/models/bert.rs`` API::

    config = Config.from_json_file("all-MiniLM-L6-v2/config.json")
    vb = VarBuilder.from_mmaped_safetensors(["all-MiniLM-L6-v2/model.safetensors"], DType.F32, Device.Cpu)
    model = BertModel.load(vb, config)
    hidden = model.forward(input_ids, token_type_ids, attention_mask)        # (batch, seq, hidden)

``model.forward`` runs eagerly (one cached executable per op) or under ``jax.jit``; the model is a
pytree, so :func:`forward_jit` compiles one program per input shape with the weights as arguments.
:class:`SentenceEmbedder` adds tokenisation (HF ``tokenizers``), mean pooling over the attention
mask and L2 normalisation (sentence-transformers' ``all-*`` recipe), compiled per bucketed shape.

Shell: ``python -m candlejax.models.bert embed --model DIR "a sentence" ...`` (also ``candlejax embed``).
"""

from __future__ import annotations

import argparse
import enum
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from candlejax.models import _hub

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType, to_dtype
from candlejax.nn import Embedding, LayerNorm, Linear, Module, VarBuilder, embedding, layer_norm, linear
from candlejax.tensor import Tensor
from candlejax.tensor._core import TensorBase, wrap
from candlejax.tensor.elementwise import gelu_erf_jnp

__all__ = [
    "DTYPE",
    "BertAttention",
    "BertEmbeddings",
    "BertEncoder",
    "BertIntermediate",
    "BertLayer",
    "BertModel",
    "BertOutput",
    "BertPooler",
    "BertSelfAttention",
    "BertSelfOutput",
    "COMPILER_OPTIONS",
    "LARGE_BATCH_TOKENS",
    "Config",
    "HiddenAct",
    "PositionEmbeddingType",
    "SentenceEmbedder",
    "forward_jit",
    "main",
    "mean_pool",
    "resolve_model_dir",
    "tune_malloc",
]

#: the dtype Candle's BERT example loads weights in
DTYPE = DType.F32


def _arr(x: Any) -> Any:
    return x._a if isinstance(x, TensorBase) else jnp.asarray(x)


# ------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------
_gelu_erf = gelu_erf_jnp


def _gelu_tanh(x: Any) -> Any:
    return jax.nn.gelu(x, approximate=True)


class HiddenAct(enum.Enum):
    """``hidden_act`` of config.json (transformers' ``ACT2FN`` names).

    ``Gelu`` is the exact erf GELU (``"gelu"``, ``"gelu_python"``); ``GeluApproximate`` the tanh
    form (``"gelu_new"``, ``"gelu_pytorch_tanh"``, ``"gelu_fast"``, ``"gelu_accurate"``).
    """

    Gelu = "gelu"
    GeluApproximate = "gelu_new"
    Relu = "relu"
    Relu2 = "relu2"
    Relu6 = "relu6"
    Silu = "silu"
    Sigmoid = "sigmoid"
    Tanh = "tanh"
    QuickGelu = "quick_gelu"
    Mish = "mish"
    LeakyRelu = "leaky_relu"
    Linear = "linear"

    @staticmethod
    def parse(name: str | HiddenAct) -> HiddenAct:
        if isinstance(name, HiddenAct):
            return name
        key = str(name).strip().lower()
        if key in _ACT_ALIASES:
            return _ACT_ALIASES[key]
        raise errors.Msg(f"bert: unsupported hidden_act {name!r}, expected one of {sorted(_ACT_ALIASES)}")

    def apply(self, x: Any) -> Any:
        """The activation on a jax array (f16/bf16 stay in their dtype)."""
        return _ACT_FNS[self](x).astype(x.dtype)


_ACT_ALIASES = {
    "gelu": HiddenAct.Gelu, "gelu_python": HiddenAct.Gelu, "gelu_erf": HiddenAct.Gelu,
    "gelu_new": HiddenAct.GeluApproximate, "gelu_pytorch_tanh": HiddenAct.GeluApproximate,
    "gelu_fast": HiddenAct.GeluApproximate, "gelu_accurate": HiddenAct.GeluApproximate,
    "geluapproximate": HiddenAct.GeluApproximate, "gelu_approximate": HiddenAct.GeluApproximate,
    "relu": HiddenAct.Relu, "relu2": HiddenAct.Relu2, "relu6": HiddenAct.Relu6, "silu": HiddenAct.Silu,
    "swish": HiddenAct.Silu, "sigmoid": HiddenAct.Sigmoid, "tanh": HiddenAct.Tanh,
    "quick_gelu": HiddenAct.QuickGelu, "mish": HiddenAct.Mish, "leaky_relu": HiddenAct.LeakyRelu,
    "linear": HiddenAct.Linear,
}  # fmt: skip

_ACT_FNS = {
    HiddenAct.Gelu: _gelu_erf,
    HiddenAct.GeluApproximate: _gelu_tanh,
    HiddenAct.Relu: jax.nn.relu,
    HiddenAct.Relu2: lambda x: jnp.square(jax.nn.relu(x)),
    HiddenAct.Relu6: jax.nn.relu6,
    HiddenAct.Silu: jax.nn.silu,
    HiddenAct.Sigmoid: jax.nn.sigmoid,
    HiddenAct.Tanh: jnp.tanh,
    HiddenAct.QuickGelu: lambda x: x * jax.nn.sigmoid(1.702 * x),
    HiddenAct.Mish: lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    HiddenAct.LeakyRelu: lambda x: jax.nn.leaky_relu(x, 0.01),
    HiddenAct.Linear: lambda x: x,
}


class PositionEmbeddingType(enum.Enum):
    """Only ``absolute`` is implemented (as in Candle); relative_key variants raise at load."""

    Absolute = "absolute"
    RelativeKey = "relative_key"
    RelativeKeyQuery = "relative_key_query"


@dataclass
class Config:
    """A BERT ``config.json``: its keys are the fields; missing keys take BERT-base's defaults.

    Unknown keys (``architectures``, ``transformers_version``, ...) are kept in ``extra``.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    use_cache: bool = True
    classifier_dropout: float | None = None
    model_type: str | None = "bert"
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Config:
        known = {f.name for f in fields(Config)} - {"extra"}
        cfg = Config(**{k: v for k, v in d.items() if k in known})
        cfg.extra = {k: v for k, v in d.items() if k not in known}
        cfg.validate()
        return cfg

    @staticmethod
    def from_json_file(path: str | os.PathLike) -> Config:
        with open(path) as f:
            return Config.from_dict(json.load(f))

    from_hf_config = from_dict

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**self.extra, **d}

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise errors.Msg(
                f"bert: hidden_size {self.hidden_size} is not a multiple of num_attention_heads"
                f" {self.num_attention_heads}"
            )
        HiddenAct.parse(self.hidden_act)
        if PositionEmbeddingType(self.position_embedding_type) is not PositionEmbeddingType.Absolute:
            raise errors.Msg(
                f"bert: position_embedding_type {self.position_embedding_type!r} is not supported (only 'absolute')"
            )

    @property
    def act(self) -> HiddenAct:
        return HiddenAct.parse(self.hidden_act)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# ------------------------------------------------------------------------------------------------
# layers, bottom-up
# ------------------------------------------------------------------------------------------------
def _ln(norm: LayerNorm, x: Any) -> Any:
    """LayerNorm on a raw array (statistics in f32 for half precision)."""
    xf = x.astype(jnp.float32) if x.dtype in (jnp.bfloat16, jnp.float16) else x
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    xc = xf - mean
    var = jnp.mean(xc * xc, axis=-1, keepdims=True)
    y = xc * jax.lax.rsqrt(var + norm.eps)
    y = y * norm.weight._a.astype(y.dtype) + norm.bias._a.astype(y.dtype)
    return y.astype(x.dtype)


def _dense(lin: Linear, x: Any) -> Any:
    """``x @ wᵀ + b`` on raw arrays, contracting the weight's input dim in place (no transpose)."""
    y = jax.lax.dot_general(x, lin.weight._a, (((x.ndim - 1,), (1,)), ((), ())))
    return y + lin.bias._a


class BertEmbeddings(Module):
    """word + absolute position + token-type embeddings, then LayerNorm: ``(B, S) -> (B, S, H)``."""

    def __init__(self, word: Embedding, position: Embedding, token_type: Embedding, norm: LayerNorm):
        self.word_embeddings = word
        self.position_embeddings = position
        self.token_type_embeddings = token_type
        self.LayerNorm = norm

    @staticmethod
    def load(vb: VarBuilder, cfg: Config) -> BertEmbeddings:
        return BertEmbeddings(
            embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("word_embeddings")),
            embedding(cfg.max_position_embeddings, cfg.hidden_size, vb.pp("position_embeddings")),
            embedding(cfg.type_vocab_size, cfg.hidden_size, vb.pp("token_type_embeddings")),
            layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm")),
        )

    def forward(self, input_ids: Any, token_type_ids: Any = None, position_ids: Any = None) -> Any:
        ids = _arr(input_ids)
        s = ids.shape[1]
        x = jnp.take(self.word_embeddings.weight._a, ids, axis=0, mode="clip")
        tt = self.token_type_embeddings.weight._a
        if token_type_ids is None:
            x = x + tt[0]
        else:
            x = x + jnp.take(tt, _arr(token_type_ids), axis=0, mode="clip")
        pos = self.position_embeddings.weight._a
        if position_ids is None:
            x = x + pos[:s]
        else:
            x = x + jnp.take(pos, _arr(position_ids), axis=0, mode="clip")
        return wrap(_ln(self.LayerNorm, x))


class BertSelfAttention(Module):
    """Multi-head self-attention: ``query``/``key``/``value`` Linears, softmax(QKᵀ/√d + mask) V.

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
        h = cfg.hidden_size
        return BertSelfAttention(
            linear(h, h, vb.pp("query")), linear(h, h, vb.pp("key")), linear(h, h, vb.pp("value")),
            cfg.num_attention_heads,
        )  # fmt: skip

    def forward(self, hidden_states: Any, mask_bias: Any = None) -> Any:
        """``(B, S, H)``, additive mask ``(B, 1, 1, S)`` or None -> ``(B, S, H)``."""
        x = _arr(hidden_states)
        bias = None if mask_bias is None else _arr(mask_bias)
        return wrap(_self_attention(self, x, bias))


def _heads(lin: Linear, x: Any, n_heads: int) -> Any:
    """Project ``(B, S, C)`` to ``(B, nH, S, D)``."""
    b, s, _ = x.shape
    y = _dense(lin, x)
    return y.reshape(b, s, n_heads, -1).transpose(0, 2, 1, 3)


def _self_attention(att: BertSelfAttention, x: Any, bias: Any) -> Any:
    b, s, c = x.shape
    n = att.num_heads
    d = c // n
    q = _heads(att.query, x, n)
    k = _heads(att.key, x, n)
    v = _heads(att.value, x, n)
    scores = jnp.matmul(q * jnp.asarray(1.0 / math.sqrt(d), q.dtype), k.transpose(0, 1, 3, 2))  # (B, nH, S, S)
    scores = scores.astype(jnp.float32)
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    # softmax with the division deferred past the PV product: (B, nH, S, D) divides instead of (.., S, S)
    e = jnp.exp(scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True)))
    ctx = jnp.matmul(e.astype(v.dtype), v, preferred_element_type=jnp.float32)  # (B, nH, S, D)
    ctx = (ctx / jnp.sum(e, axis=-1, keepdims=True)).astype(x.dtype)
    return ctx.transpose(0, 2, 1, 3).reshape(b, s, c)


class BertSelfOutput(Module):
    """``LayerNorm(dense(x) + residual)``."""

    def __init__(self, dense: Linear, norm: LayerNorm):
        self.dense = dense
        self.LayerNorm = norm

    @staticmethod
    def load(vb: VarBuilder, cfg: Config) -> BertSelfOutput:
        return BertSelfOutput(
            linear(cfg.hidden_size, cfg.hidden_size, vb.pp("dense")),
            layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm")),
        )

    def forward(self, hidden_states: Any, input_tensor: Any) -> Any:
        return wrap(_ln(self.LayerNorm, _dense(self.dense, _arr(hidden_states)) + _arr(input_tensor)))


class BertAttention(Module):
    """``attention.self`` + ``attention.output`` (the HF attribute ``self`` is ``self_attention`` here)."""

    def __init__(self, self_attention: BertSelfAttention, output: BertSelfOutput):
        self.self_attention = self_attention
        self.output = output

    @staticmethod
    def load(vb: VarBuilder, cfg: Config) -> BertAttention:
        return BertAttention(BertSelfAttention.load(vb.pp("self"), cfg), BertSelfOutput.load(vb.pp("output"), cfg))

    def forward(self, hidden_states: Any, mask_bias: Any = None) -> Any:
        ctx = self.self_attention.forward(hidden_states, mask_bias)
        return self.output.forward(ctx, hidden_states)


class BertIntermediate(Module):
    """``act(dense(x))``: ``(B, S, H) -> (B, S, intermediate_size)``."""

    def __init__(self, dense: Linear, act: HiddenAct):
        self.dense = dense
        self.act = act

    @staticmethod
    def load(vb: VarBuilder, cfg: Config) -> BertIntermediate:
        return BertIntermediate(linear(cfg.hidden_size, cfg.intermediate_size, vb.pp("dense")), cfg.act)

    def forward(self, hidden_states: Any) -> Any:
        return wrap(self.act.apply(_dense(self.dense, _arr(hidden_states))))


class BertOutput(BertSelfOutput):
    """``LayerNorm(dense(x) + residual)`` from ``intermediate_size`` back to ``hidden_size``."""

    @staticmethod
    def load(vb: VarBuilder, cfg: Config) -> BertOutput:
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
        return BertLayer(
            BertAttention.load(vb.pp("attention"), cfg),
            BertIntermediate.load(vb.pp("intermediate"), cfg),
            BertOutput.load(vb.pp("output"), cfg),
        )

    def forward(self, hidden_states: Any, mask_bias: Any = None) -> Any:
        att = self.attention.forward(hidden_states, mask_bias)
        return self.output.forward(self.intermediate.forward(att), att)


class BertEncoder(Module):
    """``encoder.layer.{i}`` for i < num_hidden_layers."""

    def __init__(self, layers: list[BertLayer]):
        self.layers = list(layers)

    @staticmethod
    def load(vb: VarBuilder, cfg: Config) -> BertEncoder:
        return BertEncoder([BertLayer.load(vb.pp("layer").pp(i), cfg) for i in range(cfg.num_hidden_layers)])

    def forward(self, hidden_states: Any, mask_bias: Any = None) -> Any:
        for layer in self.layers:
            hidden_states = layer.forward(hidden_states, mask_bias)
        return hidden_states


class BertPooler(Module):
    """``tanh(dense(hidden[:, 0]))``: the [CLS] summary ``(B, H)``."""

    def __init__(self, dense: Linear):
        self.dense = dense

    @staticmethod
    def load(vb: VarBuilder, cfg: Config) -> BertPooler:
        return BertPooler(linear(cfg.hidden_size, cfg.hidden_size, vb.pp("dense")))

    def forward(self, hidden_states: Any) -> Any:
        return wrap(jnp.tanh(_dense(self.dense, _arr(hidden_states)[:, 0])))


def _mask_bias(attention_mask: Any, dtype: Any) -> Any:
    """0/1 mask ``(B, S)`` -> additive ``(B, 1, 1, S)``: 0 where kept, the dtype's min where masked."""
    m = _arr(attention_mask)
    if m.ndim != 2:
        raise errors.UnexpectedNumberOfDims(2, m.ndim, m.shape, "bert attention_mask")
    keep = m.astype(jnp.bool_) if m.dtype != jnp.bool_ else m
    return jnp.where(keep, 0.0, jnp.finfo(dtype).min).astype(dtype)[:, None, None, :]


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
    def load(vb: VarBuilder, config: Config, add_pooling_layer: bool | None = None) -> BertModel:
        """Build from a VarBuilder; ``add_pooling_layer=None`` loads the pooler when the weights have it."""
        probe = "embeddings.word_embeddings.weight"
        if not vb.contains_tensor(probe):
            for prefix in dict.fromkeys([config.model_type or "bert", "bert"]):
                if vb.contains_tensor(f"{prefix}.{probe}"):
                    vb = vb.pp(prefix)
                    break
        if add_pooling_layer is None:
            add_pooling_layer = vb.contains_tensor("pooler.dense.weight")
        return BertModel(
            BertEmbeddings.load(vb.pp("embeddings"), config),
            BertEncoder.load(vb.pp("encoder"), config),
            BertPooler.load(vb.pp("pooler"), config) if add_pooling_layer else None,
            config,
        )

    def _check(self, ids: Any, token_type_ids: Any, attention_mask: Any) -> None:
        if ids.ndim != 2:
            raise errors.UnexpectedNumberOfDims(2, ids.ndim, ids.shape, "bert input_ids (batch, seq)")
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise errors.UnexpectedDType(DType.U32, to_dtype(ids.dtype), "bert input_ids must be integers")
        if not isinstance(ids, jax.core.Tracer) and ids.size:  # eagerly, name bad ids (jit clamps them)
            lo, hi = int(jnp.min(ids)), int(jnp.max(ids))
            if lo < 0 or hi >= self.config.vocab_size:
                raise errors.InvalidIndex("bert input_ids", hi if hi >= self.config.vocab_size else lo,
                                          self.config.vocab_size)  # fmt: skip
        if ids.shape[1] > self.config.max_position_embeddings:
            raise errors.Msg(
                f"bert: sequence length {ids.shape[1]} exceeds max_position_embeddings"
                f" {self.config.max_position_embeddings}"
            )
        for name, t in (("token_type_ids", token_type_ids), ("attention_mask", attention_mask)):
            if t is not None and tuple(_arr(t).shape) != tuple(ids.shape):
                raise errors.UnexpectedShape(f"bert {name} must match input_ids", ids.shape, _arr(t).shape)

    def forward(self, input_ids: Any, token_type_ids: Any = None, attention_mask: Any = None) -> Any:
        """``(B, S)`` ids (and token types, 0/1 mask) -> last hidden states ``(B, S, hidden_size)``."""
        ids = _arr(input_ids)
        self._check(ids, token_type_ids, attention_mask)
        x = self.embeddings.forward(ids, token_type_ids)
        bias = None if attention_mask is None else _mask_bias(attention_mask, x.dtype.jnp)
        return self.encoder.forward(x, bias)

    def pooled_output(self, hidden_states: Any) -> Any:
        """The pooler on ``forward``'s output: ``(B, hidden_size)`` (HF's ``pooler_output``)."""
        if self.pooler is None:
            raise errors.Msg("bert: this model was loaded without a pooler (no pooler.dense.weight)")
        return self.pooler.forward(hidden_states)


#: XLA options for compiling batches of at least ``LARGE_BATCH_TOKENS`` tokens. jax 0.10's XLA:CPU
#: hands dots, with the LayerNorm and GELU work around them, to YNNPACK fusions: best for a few
#: hundred tokens (1x16: ~2x faster than without), but at MiniLM 32x128 XLA's own Eigen GEMMs plus
#: its loop fusions are ~30% faster (one core). The GPU compiler ignores these flags; an XLA that
#: does not know one falls back to its defaults.
COMPILER_OPTIONS: dict[str, Any] = {"xla_cpu_experimental_ynn_fusion_type": ""}
LARGE_BATCH_TOKENS = 2048


class _Jit:
    """``jax.jit(fn)`` for small inputs, ``jax.jit(fn, compiler_options=COMPILER_OPTIONS)`` for
    ``fn(model, ids, ...)`` calls whose ``ids`` hold at least ``LARGE_BATCH_TOKENS`` tokens."""

    def __init__(self, fn: Any, **kw: Any):
        self.__wrapped__ = fn
        self._plain = jax.jit(fn, **kw)
        self._large = jax.jit(fn, compiler_options=COMPILER_OPTIONS, **kw) if COMPILER_OPTIONS else None

    def _pick(self, args: tuple) -> Any:
        if self._large is None or len(args) < 2 or math.prod(getattr(args[1], "shape", ())) < LARGE_BATCH_TOKENS:
            return self._plain
        return self._large

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        f = self._pick(args)
        if f is self._large:
            try:
                return f(*args, **kwargs)
            except Exception as e:  # an unknown option name or value in another jax version
                if "option" not in str(e).lower() and "enum" not in str(e).lower():
                    raise
                self._large = None
                f = self._plain
        return f(*args, **kwargs)

    def _cache_size(self) -> int:
        return self._plain._cache_size() + (self._large._cache_size() if self._large is not None else 0)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        return self._pick(args).lower(*args, **kwargs)


def _forward(model: BertModel, input_ids: Any, token_type_ids: Any = None, attention_mask: Any = None) -> Any:
    return model.forward(input_ids, token_type_ids, attention_mask)


forward_jit = _Jit(_forward)
forward_jit.__doc__ = """``forward_jit(model, input_ids, token_type_ids=None, attention_mask=None)``: ``model.forward``
compiled once per input shape, with the weights as arguments (not constants)."""


# ------------------------------------------------------------------------------------------------
# sentence embeddings
# ------------------------------------------------------------------------------------------------
def mean_pool(hidden: Any, attention_mask: Any, normalize: bool = True) -> Any:
    """Mean of ``hidden (B, S, H)`` over the positions where ``attention_mask (B, S)`` is 1, then L2.

    sentence-transformers' ``Pooling(mean)`` + ``Normalize``: the token count is clamped at 1e-9 and
    the norm at 1e-12, so padding-only rows give zeros.
    """
    h = _arr(hidden)
    m = _arr(attention_mask).astype(h.dtype)[..., None]
    s = jnp.sum(h * m, axis=1, dtype=jnp.float32)
    pooled = s / jnp.maximum(jnp.sum(m, axis=1, dtype=jnp.float32), 1e-9)
    if normalize:
        pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return wrap(pooled)


def _embed_step(model: BertModel, ids: Any, type_ids: Any, mask: Any, normalize: bool) -> Any:
    return mean_pool(model.forward(ids, type_ids, mask), mask, normalize)._a


_embed_step_jit = _Jit(_embed_step, static_argnames=("normalize",))


def resolve_model_dir(path: str | os.PathLike) -> str:
    """A model folder, a Hugging Face hub cache entry (``models--org--name``, at ``refs/main`` or
    its only snapshot) or a cached hub id ``"org/name"`` -> the folder holding ``config.json``."""
    return str(_hub.resolve_root(path))


def tune_malloc(mmap_threshold: int = 1 << 30, trim_threshold: int = (1 << 31) - 1) -> bool:
    """Keep large freed blocks in glibc's heap, process-wide (``mallopt``); returns False off glibc.

    XLA:CPU allocates an executable's temporary and output buffers on every call; above glibc's
    mmap threshold (at most 32 MiB by default) each call maps fresh pages and faults them in, and a
    low trim threshold hands freed heap back to the kernel just as fast: about 30k page faults per
    MiniLM 32x128 forward, 5-15% of its time. Raising both (the ``MALLOC_MMAP_THRESHOLD_`` /
    ``MALLOC_TRIM_THRESHOLD_`` environment variables, set at run time) reuses the pages; the cost is
    that the process keeps its peak heap. Raising the mmap threshold alone makes things worse.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = mallopt(m_trim_threshold, int(trim_threshold)) == 1
    return bool(mallopt(m_mmap_threshold, int(mmap_threshold)) == 1 and ok)


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
        self, model: BertModel, tokenizer: Any, max_length: int = 512, normalize: bool = True, batch_size: int = 32
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = min(int(max_length), model.config.max_position_embeddings)
        self.normalize = bool(normalize)
        self.batch_size = int(batch_size)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)

    @staticmethod
    def from_dir(
        path: str | os.PathLike, dtype: Any = DType.F32, device: Any = None, max_length: int | None = None,
        batch_size: int = 32,
    ) -> SentenceEmbedder:  # fmt: skip
        """Load a sentence-transformers / HF BERT folder (or a hub cache entry) from disk."""
        from tokenizers import Tokenizer

        files = _hub.resolve(path)
        d = files.root
        config = Config.from_json_file(os.path.join(d, "config.json"))
        vb = VarBuilder.from_mmaped_safetensors(files.weights, dtype, device or Device.Cpu)
        model = BertModel.load(vb, config, add_pooling_layer=False)
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
        """Pooled embeddings for already tokenised ``(N, S)`` arrays, in chunks of ``batch_size`` rows."""
        ids, type_ids, mask = (np.asarray(_arr(t) if isinstance(t, TensorBase) else t) for t in (ids, type_ids, mask))
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
        return Tensor.from_numpy(self.embed_tokens(*self.tokenize(sentences)))

    __call__ = embed


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def _fmt_row(v: np.ndarray, n: int = 6) -> str:
    head = ", ".join(f"{x:+.4f}" for x in v[:n])
    return f"[{head}{', ...' if v.size > n else ''}]"


def main(argv: Sequence[str] | None = None) -> int:
    """``embed --model DIR [--json] [--dtype f32] sentence...``: print each sentence's embedding
    (and, for several sentences, their cosine similarities)."""
    parser = argparse.ArgumentParser(prog="python -m candlejax.models.bert", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("embed", help="sentence embeddings (mean pooling + L2 normalisation)")
    p.add_argument("--model", required=True, help="folder with config.json, model.safetensors, tokenizer.json")
    p.add_argument("--dtype", default="f32", help="weight/compute dtype: f32, bf16 or f16")
    p.add_argument("--max-length", type=int, default=None, help="truncate inputs to this many tokens")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print one JSON object per sentence with the full vector")
    p.add_argument("sentences", nargs="+")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))

    tune_malloc()
    emb = SentenceEmbedder.from_dir(
        args.model, DType.parse(args.dtype), Device.Cpu, max_length=args.max_length, batch_size=args.batch_size
    )
    vecs = emb.embed_tokens(*emb.tokenize(args.sentences))
    if args.json:
        for s, v in zip(args.sentences, vecs):
            print(json.dumps({"sentence": s, "embedding": [float(x) for x in v]}))
        return 0
    print(f"embeddings: ({len(args.sentences)}, {vecs.shape[1]}) f32")
    for i, (s, v) in enumerate(zip(args.sentences, vecs)):
        print(f"[{i}] {_fmt_row(v)}  {s}")
    if len(args.sentences) > 1:
        unit = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        sims = unit @ unit.T
        print("cosine similarities:")
        for i, row in enumerate(sims):
            print(f"[{i}] " + " ".join(f"{x:+.4f}" for x in row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
