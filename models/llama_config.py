"""The LLaMA-family ``config.json`` (``Config``, Candle's ``LlamaConfig`` and ``LlamaEosToks``):
the fields :mod:`candlejax.models.llama` builds its model from.

requires: candlejax.errors, candlejax.models.loading
provides: ``Config``, ``LlamaConfig``, ``LlamaEosToks``, ``Llama3RopeConfig``, ``Llama3RopeType``,
``DEFAULT_MAX_SEQ_LEN``
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
import os
from typing import Any

from candlejax import errors
from candlejax.models.loading import candle_config, check_sizes, config_dict, read_config_json

__all__ = ["DEFAULT_MAX_SEQ_LEN", "Config", "Llama3RopeConfig", "Llama3RopeType", "LlamaConfig", "LlamaEosToks"]

#: ``max_position_embeddings`` of Candle's ``config_7b_v1`` / ``config_7b_v2`` presets
DEFAULT_MAX_SEQ_LEN = 4096


class Llama3RopeType(enum.StrEnum):
    """Candle's ``llama::Llama3RopeType``: the ``rope_type`` of a :class:`Llama3RopeConfig`
    (equal to its ``config.json`` string: ``Llama3RopeType.Llama3 == "llama3"``)."""

    Llama3 = "llama3"
    Default = "default"


_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


class Llama3RopeConfig(dict):
    """Candle's ``llama::Llama3RopeConfig``: the ``rope_scaling`` of a Llama 3.x ``config.json``.

    A ``dict`` of the ``config.json`` keys (so :func:`candlejax.nn.rotary.rope_inv_freq` and
    ``json.dumps`` read it as before) with Candle's fields as attributes: ``factor``,
    ``low_freq_factor``, ``high_freq_factor``, ``original_max_position_embeddings`` and
    ``rope_type`` (a :class:`Llama3RopeType`; ``Default`` means no scaling, as in Candle).
    """

    def __init__(self, factor: float = 0.0, low_freq_factor: float = 0.0, high_freq_factor: float = 0.0,
                 original_max_position_embeddings: int = 0, rope_type: Any = Llama3RopeType.Default,
                 **extra: Any) -> None:  # fmt: skip
        kind = Llama3RopeType(str(getattr(rope_type, "value", rope_type)))
        super().__init__(extra)
        self.update(factor=factor, low_freq_factor=low_freq_factor, high_freq_factor=high_freq_factor,
                    original_max_position_embeddings=original_max_position_embeddings,
                    rope_type=kind.value)  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Llama3RopeConfig:
        """From a ``rope_scaling`` dict (``type`` is read as ``rope_type``, as transformers does);
        the four scaling keys are required, as in Candle's deserialisation."""
        d = dict(d)
        if "rope_type" not in d and "type" in d:
            d["rope_type"] = d.pop("type")
        missing = [k for k in _LLAMA3_KEYS if k not in d]
        if missing:
            raise errors.Msg(f"llama Llama3RopeConfig: rope_scaling lacks {missing}")
        kind = d.get("rope_type", "default")
        if str(getattr(kind, "value", kind)) not in ("llama3", "default"):
            raise errors.Msg(f"llama Llama3RopeConfig: rope_type {kind!r} is not llama3 or default")
        return cls(**d)

    factor = property(lambda self: self["factor"], doc="The ``factor`` field of Candle's ``Llama3RopeConfig``.")
    low_freq_factor = property(
        lambda self: self["low_freq_factor"], doc="The ``low_freq_factor`` field of Candle's ``Llama3RopeConfig``."
    )
    high_freq_factor = property(
        lambda self: self["high_freq_factor"], doc="The ``high_freq_factor`` field of Candle's ``Llama3RopeConfig``."
    )
    original_max_position_embeddings = property(
        lambda self: self["original_max_position_embeddings"],
        doc="The ``original_max_position_embeddings`` field of Candle's ``Llama3RopeConfig``.",
    )

    @property
    def rope_type(self) -> Llama3RopeType:
        """The ``rope_type`` entry as a ``Llama3RopeType``."""
        return Llama3RopeType(self["rope_type"])

    def __repr__(self) -> str:
        return f"Llama3RopeConfig({dict.__repr__(self)})"

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(repr(self))


def _rope_scaling(sc: Any) -> Any:
    """A ``rope_scaling`` of type ``llama3`` (or ``default`` with the llama3 keys) as a
    :class:`Llama3RopeConfig`; any other value unchanged."""
    if isinstance(sc, Llama3RopeConfig) or not isinstance(sc, dict):
        return sc
    kind = sc.get("rope_type", sc.get("type", "default"))
    kind = str(getattr(kind, "value", kind))
    if kind == "llama3" or (kind == "default" and all(k in sc for k in _LLAMA3_KEYS)):
        return Llama3RopeConfig.from_dict(sc)
    return sc


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_values(cfg: Any) -> None:
    """The non-size fields of a llama ``Config``: a wrong type or value raises here, naming the key,
    rather than as a raw error (or NaN logits) when the model is built or run."""

    def bad(name: str, what: str) -> errors.InvalidArgument:
        return errors.InvalidArgument(f"llama Config: {name} must be {what}, got {getattr(cfg, name)!r}")

    for name, positive in (("rms_norm_eps", False), ("rope_theta", True)):
        v = getattr(cfg, name)
        if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)) or v < 0 or (
            positive and v == 0
        ):
            raise bad(name, "a finite number > 0" if positive else "a finite number >= 0")
    for name in ("bos_token_id", "pad_token_id", "sliding_window", "max_window_layers"):
        if getattr(cfg, name) is not None and not _is_int(getattr(cfg, name)):
            raise bad(name, "an integer or null")
    e = cfg.eos_token_id
    if not (e is None or _is_int(e) or (isinstance(e, (list, tuple)) and all(_is_int(x) for x in e))):
        raise bad("eos_token_id", "an integer, a list of integers or null")
    lt = cfg.layer_types
    if lt is not None and (
        not isinstance(lt, (list, tuple)) or len(lt) != cfg.num_hidden_layers
        or any(t not in ("full_attention", "sliding_attention") for t in lt)
    ):  # fmt: skip
        raise bad("layer_types", f"a list of {cfg.num_hidden_layers} 'full_attention' / 'sliding_attention'")


#: the sizes a config must give as integers >= 1 (``None``: taken from another field)
_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "head_dim", "max_position_embeddings")  # fmt: skip


@dataclasses.dataclass
class Config:
    """``config.json`` of a ``LlamaForCausalLM`` / ``MistralForCausalLM`` / ``Qwen2ForCausalLM``
    checkpoint; missing keys take transformers' defaults.

    ``rope_scaling`` (transformers 4) and ``rope_parameters`` (transformers 5) are both read;
    ``rope_type`` ``"default"``, ``"linear"`` and ``"llama3"`` are supported. A ``llama3`` one
    (a dict or Candle's :class:`Llama3RopeConfig`) is held as a :class:`Llama3RopeConfig`.
    ``rope_interleaved`` is not a config.json key: GGUF files store q/k rows permuted for the
    interleaved-pairs rotary layout (see :mod:`candlejax.models.quantized_llama`).
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    torch_dtype: str | None = None
    rope_interleaved: bool = False
    model_type: str | None = None
    architectures: list[str] | None = None
    sliding_window: int | None = None
    use_sliding_window: bool | None = None
    max_window_layers: int | None = None
    layer_types: list[str] | None = None
    qkv_bias: bool | None = None

    def __post_init__(self) -> None:
        check_sizes(self, _SIZES, "llama Config")
        _check_values(self)
        self.eos_token_id = _eos_toks(self.eos_token_id)  # LlamaEosToks.Single / Multiple, as Candle
        self.rope_scaling = _rope_scaling(self.rope_scaling)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.num_key_value_heads = _KvHeads(self.num_key_value_heads)  # also Candle's num_key_value_heads()
        if self.tie_word_embeddings is None:  # Candle's into_config: tie_word_embeddings.unwrap_or(false)
            self.tie_word_embeddings = False
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise errors.InvalidArgument(
                    f"llama Config: hidden_size {self.hidden_size} is not a multiple of num_attention_heads"
                    f" {self.num_attention_heads} (give head_dim explicitly if the model has one)"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.qkv_bias is None:
            self.qkv_bias = self.attention_bias or self.model_type == "qwen2"
        if self.num_attention_heads % self.num_key_value_heads:
            raise errors.Msg(
                f"llama Config: num_attention_heads {self.num_attention_heads} is not a multiple of"
                f" num_key_value_heads {self.num_key_value_heads}"
            )
        if self.hidden_act == "swish":  # transformers' ACT2FN: the same function as silu
            self.hidden_act = "silu"
        if self.hidden_act != "silu":
            raise errors.Msg(f"llama Config: hidden_act {self.hidden_act!r} is not implemented (silu)")

    def __hash__(self) -> int:  # computed once: a jitted step hashes its static fields on every call
        h = self.__dict__.get("_hash")
        if h is None:
            h = self.__dict__["_hash"] = hash(repr(self))
        return h

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """From a ``config.json`` dict; unknown keys are ignored."""
        d = dict(config_dict(d, "llama Config"))
        # as transformers 5: a given rope_scaling replaces rope_parameters, and the dict's rope_theta
        # wins over the top-level key
        rp = d.pop("rope_parameters", None)
        if isinstance(d.get("rope_scaling"), dict) and d["rope_scaling"]:
            rp = d["rope_scaling"]
        if isinstance(rp, dict) and rp:
            rp = dict(rp)
            if "rope_theta" in rp:
                d["rope_theta"] = rp["rope_theta"]
            kind = rp.get("rope_type", rp.get("type", "default"))
            if kind != "default" and not d.get("rope_scaling"):
                d["rope_scaling"] = rp
        if isinstance(d.get("dtype"), str):  # transformers 5's key; it wins over the older torch_dtype
            d["torch_dtype"] = d["dtype"]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> Config:
        """The config of a ``config.json`` file."""
        return cls.from_dict(read_config_json(path, "llama Config"))

    from_hf_config = from_dict

    @classmethod
    def config_7b_v1(cls, use_flash_attn: bool = False) -> Config:
        """Candle's ``Config::config_7b_v1(use_flash_attn)``: LLaMA-1 7B (rms_norm_eps 1e-6,
        ``max_position_embeddings`` :data:`DEFAULT_MAX_SEQ_LEN`, no bos/eos ids).
        ``use_flash_attn`` is accepted and unused (see :meth:`into_config`)."""
        return cls._preset_7b(1e-6)

    @classmethod
    def config_7b_v2(cls, use_flash_attn: bool = False) -> Config:
        """Candle's ``Config::config_7b_v2(use_flash_attn)``: Llama-2 7B (as v1, rms_norm_eps 1e-5)."""
        return cls._preset_7b(1e-5)

    @classmethod
    def _preset_7b(cls, eps: float) -> Config:
        return cls(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=eps, rope_theta=10000.0,
                   max_position_embeddings=DEFAULT_MAX_SEQ_LEN, bos_token_id=None, eos_token_id=None,
                   tie_word_embeddings=False, model_type="llama")  # fmt: skip

    def into_config(self, use_flash_attn: bool = False) -> Config:
        """Candle's ``LlamaConfig::into_config(use_flash_attn)``: this config (one type here).
        ``use_flash_attn`` picks Candle's CUDA kernel; XLA chooses the attention kernel itself."""
        return self

    @property
    def eos_token_ids(self) -> list[int]:
        """``eos_token_id`` as a list (empty, one id, or several)."""
        e = self.eos_token_id
        return [] if e is None else [int(e)] if isinstance(e, int) else [int(x) for x in e]

    def window(self, layer: int) -> int | None:
        """The sliding attention window of ``layer`` (``None``: full causal attention), as
        transformers: Mistral's ``sliding_window`` on every layer; Qwen2's on the layers that
        ``layer_types`` (or ``use_sliding_window`` + ``max_window_layers``) mark."""
        if self.sliding_window is None:
            return None
        if self.layer_types is not None:
            return int(self.sliding_window) if self.layer_types[layer] == "sliding_attention" else None
        if self.model_type == "qwen2":
            on = self.use_sliding_window and layer >= int(self.max_window_layers or 0)
            return int(self.sliding_window) if on else None
        return int(self.sliding_window) if self.model_type == "mistral" else None


candle_config(Config, "llama")  # LlamaConfig(**json.load(f)) names from_json_file


class _KvHeads(int):
    """``num_key_value_heads``: an ``int`` that Candle's accessor ``LlamaConfig::num_key_value_heads()``
    also reads (calling it gives the int)."""

    def __call__(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return int.__repr__(self)


class LlamaEosToks:
    """Candle's ``llama::LlamaEosToks``: ``config.eos_token_id`` is a ``LlamaEosToks.Single`` (an
    ``int``) or a ``LlamaEosToks.Multiple`` (a ``list`` of ints), so Candle's ``match`` ports as
    written (``case LlamaEosToks.Single(eos) if next_token == eos:``) and plain comparisons
    (``next_token == config.eos_token_id``, ``in``) keep working."""

    class Single(int):
        __match_args__ = ("value",)

        @property
        def value(self) -> int:
            return int(self)

        def __repr__(self) -> str:
            return f"LlamaEosToks.Single({int(self)})"

    class Multiple(list):
        __match_args__ = ("value",)

        def __init__(self, ids: Any = ()) -> None:
            super().__init__(int(i) for i in ids)

        @property
        def value(self) -> list[int]:
            return list(self)

        def __repr__(self) -> str:
            return f"LlamaEosToks.Multiple({list(self)})"

        def __hash__(self) -> int:  # type: ignore[override]
            return hash(tuple(self))


def _eos_toks(e: Any) -> Any:
    if e is None or isinstance(e, (LlamaEosToks.Single, LlamaEosToks.Multiple)):
        return e
    if isinstance(e, (list, tuple)):
        return LlamaEosToks.Multiple(e)
    return LlamaEosToks.Single(int(e))


LlamaConfig = Config  # Candle's serde form of config.json; ``into_config()`` gives the same Config
