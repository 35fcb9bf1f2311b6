"""The LLaMA-family ``config.json`` (``Config``, Candle's ``LlamaConfig`` and ``LlamaEosToks``):
the fields :mod:`candlejax.models.llama` builds its model from.

requires: candlejax.errors, candlejax.models.loading
provides: ``Config``, ``LlamaConfig``, ``LlamaEosToks``
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from candlejax import errors
from candlejax.models.loading import refuse_unknown_config_keys

__all__ = ["Config", "LlamaConfig", "LlamaEosToks"]


@dataclasses.dataclass
class Config:
    """``config.json`` of a ``LlamaForCausalLM`` / ``MistralForCausalLM`` / ``Qwen2ForCausalLM``
    checkpoint; missing keys take transformers' defaults.

    ``rope_scaling`` (transformers 4) and ``rope_parameters`` (transformers 5) are both read;
    ``rope_type`` ``"default"``, ``"linear"`` and ``"llama3"`` are supported.
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
        self.eos_token_id = _eos_toks(self.eos_token_id)  # LlamaEosToks.Single / Multiple, as Candle
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.qkv_bias is None:
            self.qkv_bias = self.attention_bias or self.model_type == "qwen2"
        if self.num_attention_heads % self.num_key_value_heads:
            raise errors.Msg(
                f"llama Config: num_attention_heads {self.num_attention_heads} is not a multiple of"
                f" num_key_value_heads {self.num_key_value_heads}"
            )
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
        d = dict(d)
        rp = d.pop("rope_parameters", None)
        if isinstance(rp, dict) and rp:
            rp = dict(rp)
            if "rope_theta" in rp and "rope_theta" not in d:
                d["rope_theta"] = rp["rope_theta"]
            kind = rp.get("rope_type", rp.get("type", "default"))
            if kind != "default" and not d.get("rope_scaling"):
                d["rope_scaling"] = rp
        if d.get("torch_dtype") is None and isinstance(d.get("dtype"), str):
            d["torch_dtype"] = d["dtype"]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> Config:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    from_hf_config = from_dict

    def into_config(self, use_flash_attn: bool = False) -> Config:
        """Candle's ``LlamaConfig::into_config(use_flash_attn)``: this config (one type here).
        ``use_flash_attn`` picks Candle's CUDA kernel; XLA chooses the attention kernel itself."""
        return self

    @property
    def eos_token_ids(self) -> list[int]:
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


refuse_unknown_config_keys(Config, "llama")  # LlamaConfig(**json.load(f)) names from_json_file


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
