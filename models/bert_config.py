"""The BERT ``config.json`` (``Config``) and its enums (``HiddenAct``, ``PositionEmbeddingType``),
as candle-transformers' ``models::bert`` names them.

requires: candlejax.errors, candlejax.nn.ops, candlejax.models.loading
provides: ``Config``, ``HiddenAct``, ``PositionEmbeddingType``
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field, fields
from typing import Any

from candlejax import errors
from candlejax.models.loading import candle_config, check_sizes, config_dict, read_config_json
from candlejax.nn import ops

__all__ = ["Config", "HiddenAct", "PositionEmbeddingType"]


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
        """The ``HiddenAct`` named by a ``config.json`` ``hidden_act`` string (``gelu``, ``gelu_new``, ...); raises
        for an
        unknown name."""
        if isinstance(name, HiddenAct):
            return name
        key = str(name).strip().lower()
        if key in _ACT_ALIASES:
            return _ACT_ALIASES[key]
        raise errors.Msg(f"bert: unsupported hidden_act {name!r}, expected one of {sorted(_ACT_ALIASES)}")

    def apply(self, x: Any) -> Any:
        """The activation (``candlejax.nn.ops``) on a Tensor or array; f16/bf16 stay in their dtype."""
        if self is HiddenAct.Linear:
            return x
        if self is HiddenAct.LeakyRelu:
            return ops.leaky_relu(x, 0.01)
        return ops.activation(x, _OPS_KIND[self])


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

_OPS_KIND = {
    HiddenAct.Gelu: "gelu_erf", HiddenAct.GeluApproximate: "gelu", HiddenAct.Relu: "relu", HiddenAct.Relu2: "relu2",
    HiddenAct.Relu6: "relu6", HiddenAct.Silu: "silu", HiddenAct.Sigmoid: "sigmoid", HiddenAct.Tanh: "tanh",
    HiddenAct.QuickGelu: "quick_gelu", HiddenAct.Mish: "mish",
}  # fmt: skip


class PositionEmbeddingType(enum.Enum):
    """Only ``absolute`` is implemented (as in Candle); relative_key variants raise at load."""

    Absolute = "absolute"
    RelativeKey = "relative_key"
    RelativeKeyQuery = "relative_key_query"


@dataclass
class Config:
    """A BERT ``config.json``: its keys are the fields; missing keys take BERT-base's defaults.

    Unknown keys (``architectures``, ``transformers_version``, ...) are kept in ``extra``.
    ``is_decoder`` (transformers' ``BertLMHeadModel``): attention is causal, as in transformers.
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
    tie_word_embeddings: bool = True
    is_decoder: bool = False
    model_type: str | None = "bert"
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Config:
        """The config of a ``config.json`` dict; unknown keys are kept in ``extra``."""
        config_dict(d, "bert Config")
        known = {f.name for f in fields(Config)} - {"extra"}
        cfg = Config(**{k: v for k, v in d.items() if k in known})
        cfg.extra = {k: v for k, v in d.items() if k not in known}
        cfg.validate()
        return cfg

    @staticmethod
    def from_json_file(path: str | os.PathLike) -> Config:
        """The config of a ``config.json`` file."""
        return Config.from_dict(read_config_json(path, "bert Config"))

    from_hf_config = from_dict

    def to_dict(self) -> dict[str, Any]:
        """The config as a ``config.json`` dict (``extra`` keys included)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**self.extra, **d}

    def validate(self) -> None:
        """Raise ``errors.Msg`` for sizes that cannot build a model (e.g. heads not dividing ``hidden_size``)."""
        check_sizes(self, ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                           "max_position_embeddings", "type_vocab_size"), "bert Config")  # fmt: skip
        if self.hidden_size % self.num_attention_heads:
            raise errors.Msg(
                f"bert: hidden_size {self.hidden_size} is not a multiple of num_attention_heads"
                f" {self.num_attention_heads}"
            )
        HiddenAct.parse(self.hidden_act)
        try:
            pet = PositionEmbeddingType(self.position_embedding_type)
        except (ValueError, TypeError):
            raise errors.InvalidArgument(
                f"bert: unknown position_embedding_type {self.position_embedding_type!r}"
                f" ({', '.join(p.value for p in PositionEmbeddingType)})"
            ) from None
        if pet is not PositionEmbeddingType.Absolute:
            raise errors.Msg(
                f"bert: position_embedding_type {self.position_embedding_type!r} is not supported (only 'absolute')"
            )

    @property
    def act(self) -> HiddenAct:
        """``hidden_act`` parsed as a ``HiddenAct``."""
        return HiddenAct.parse(self.hidden_act)

    @property
    def head_dim(self) -> int:
        """``hidden_size // num_attention_heads``."""
        return self.hidden_size // self.num_attention_heads


candle_config(Config, "bert")  # Config(**json.loads(s)) names from_dict
