"""The configuration of CLIP (~ candle-transformers' ``models::clip`` configs): ``ClipConfig`` with its
``ClipTextConfig`` and ``ClipVisionConfig``, the keys of a ``CLIPModel`` config.json, and Candle's
``EncoderConfig``. Re-exported by :mod:`candlejax.models.clip`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from candlejax import errors
from candlejax.models.loading import candle_config, check_sizes, config_dict, read_config_json
from candlejax.nn import Activation

__all__ = ["ClipConfig", "ClipTextConfig", "ClipVisionConfig", "EncoderConfig", "tower_config"]


# ------------------------------------------------------------------------------------------------
# configuration: the keys of a CLIPModel config.json
# ------------------------------------------------------------------------------------------------
def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    """The config of a ``text_config`` / ``vision_config`` dict; unknown keys are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclasses.dataclass
class ClipTextConfig:
    """``text_config`` of a ``CLIPModel`` config.json (transformers' ``CLIPTextConfig`` defaults)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407

    from_dict = classmethod(_from_dict)

    @classmethod
    def vit_base_patch32(cls) -> ClipTextConfig:
        """The text tower of ``openai/clip-vit-base-patch32`` (Candle's ``ClipTextConfig::vit_base_patch32``)."""
        return cls()

    embed_dim = property(lambda self: self.hidden_size, doc="Candle's name for ``hidden_size``.")
    activation = property(lambda self: Activation.parse(self.hidden_act), doc="``hidden_act`` as an Activation.")
    pad_with = property(lambda self: None, doc="Candle's ``pad_with``: always ``None`` (pad with ``pad_token_id``).")


candle_config(ClipTextConfig, "clip")  # ClipTextConfig(**config_json) names from_dict


@dataclasses.dataclass
class ClipVisionConfig:
    """``vision_config`` of a ``CLIPModel`` config.json (transformers' ``CLIPVisionConfig`` defaults)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    from_dict = classmethod(_from_dict)

    @classmethod
    def vit_base_patch32(cls) -> ClipVisionConfig:
        """The vision tower of ``openai/clip-vit-base-patch32`` (Candle's ``ClipVisionConfig::vit_base_patch32``)."""
        return cls()

    @classmethod
    def clip_vit_large_patch14_336(cls) -> ClipVisionConfig:
        """The vision tower of ``openai/clip-vit-large-patch14-336`` (Candle's
        ``ClipVisionConfig::clip_vit_large_patch14_336``)."""
        return cls(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                   image_size=336, patch_size=14)  # fmt: skip

    embed_dim = property(lambda self: self.hidden_size, doc="Candle's name for ``hidden_size``.")
    activation = property(lambda self: Activation.parse(self.hidden_act), doc="``hidden_act`` as an Activation.")


candle_config(ClipVisionConfig, "clip")  # ClipVisionConfig(**config_json) names from_dict


@dataclasses.dataclass
class ClipConfig:
    """A ``CLIPModel`` config.json: ``text_config``, ``vision_config``, ``projection_dim``,
    ``logit_scale_init_value``. Candle: ``ClipConfig`` (``ClipConfig::vit_base_patch32()``)."""

    text_config: ClipTextConfig = dataclasses.field(default_factory=ClipTextConfig)
    vision_config: ClipVisionConfig = dataclasses.field(default_factory=ClipVisionConfig)
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592

    def __post_init__(self) -> None:
        if isinstance(self.text_config, dict):
            self.text_config = ClipTextConfig.from_dict(self.text_config)
        if isinstance(self.vision_config, dict):
            self.vision_config = ClipVisionConfig.from_dict(self.vision_config)
        check_sizes(self, ("projection_dim",), "clip ClipConfig")
        check_sizes(self.text_config, ("vocab_size", "max_position_embeddings"), "clip text_config")
        check_sizes(self.vision_config, ("num_channels", "image_size", "patch_size"), "clip vision_config")
        for name, c in (("text_config", self.text_config), ("vision_config", self.vision_config)):
            check_sizes(c, ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"),
                        f"clip {name}")  # fmt: skip
            if c.hidden_size % c.num_attention_heads:
                raise errors.Msg(
                    f"clip: {name}.hidden_size {c.hidden_size} is not a multiple of num_attention_heads"
                    f" {c.num_attention_heads}"
                )
            Activation.parse(c.hidden_act)
        if self.vision_config.image_size % self.vision_config.patch_size:
            raise errors.Msg(
                f"clip: image_size {self.vision_config.image_size} is not a multiple of patch_size"
                f" {self.vision_config.patch_size}"
            )

    @property
    def image_size(self) -> int:
        """Candle's ``ClipConfig::image_size`` (what its example resizes images to): the vision tower's."""
        return self.vision_config.image_size

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClipConfig:
        """From a config.json dict. Old checkpoints' ``text_config_dict`` / ``vision_config_dict``, when
        present, win over ``text_config`` / ``vision_config`` as in transformers' ``CLIPConfig``: the
        tower is built from that dict and the tower's defaults, whatever ``*_config`` says."""
        d = dict(config_dict(d, "clip Config"))
        text = d.get("text_config_dict")
        text = (d.get("text_config") or {}) if text is None else text
        vision = d.get("vision_config_dict")
        vision = (d.get("vision_config") or {}) if vision is None else vision
        proj = d.get("projection_dim", 512)
        scale = d.get("logit_scale_init_value", 2.6592)
        return cls(ClipTextConfig.from_dict(text), ClipVisionConfig.from_dict(vision), int(proj), float(scale))

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> ClipConfig:
        """The config of a ``config.json`` file."""
        return cls.from_dict(read_config_json(path, "clip Config"))

    from_hf_config = from_dict

    @classmethod
    def vit_base_patch32(cls) -> ClipConfig:
        """``openai/clip-vit-base-patch32`` (Candle's ``ClipConfig::vit_base_patch32``)."""
        return cls()


candle_config(ClipConfig, "clip")  # ClipConfig(**config_json) names from_dict


class EncoderConfig:
    """Candle's ``clip::EncoderConfig``: ``EncoderConfig.Text(ClipTextConfig)`` or
    ``EncoderConfig.Vision(ClipVisionConfig)``, the tower config a :class:`ClipEncoder` is built from
    (``match c: case EncoderConfig.Text(t): ...`` works). The activation is the config's
    ``hidden_act`` for both towers."""

    __match_args__ = ("config",)
    __slots__ = ("config",)
    _kind: type = object
    Text: type
    Vision: type

    def __init__(self, config: ClipTextConfig | ClipVisionConfig):
        if type(self) is EncoderConfig:  # EncoderConfig(c): the variant of c's type
            self.__class__ = EncoderConfig.Text if isinstance(config, ClipTextConfig) else EncoderConfig.Vision
        if not isinstance(config, self._kind):
            raise errors.Msg(
                f"clip {type(self).__qualname__} takes a {self._kind.__name__}, got {type(config).__name__}"
            )
        self.config = config

    def embed_dim(self) -> int:
        """Candle's ``EncoderConfig::embed_dim``: the tower's hidden size."""
        return int(self.config.hidden_size)

    def num_attention_heads(self) -> int:
        """Candle's ``EncoderConfig::num_attention_heads``."""
        return int(self.config.num_attention_heads)

    def intermediate_size(self) -> int:
        """Candle's ``EncoderConfig::intermediate_size``."""
        return int(self.config.intermediate_size)

    def num_hidden_layers(self) -> int:
        """Candle's ``EncoderConfig::num_hidden_layers``."""
        return int(self.config.num_hidden_layers)

    def activation(self) -> Activation:
        """Candle's ``EncoderConfig::activation``: the tower's ``hidden_act`` parsed."""
        return Activation.parse(self.config.hidden_act)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.config == self.config  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self.config)))

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}({self.config!r})"


class _Text(EncoderConfig):
    __slots__ = ()
    _kind = ClipTextConfig


class _Vision(EncoderConfig):
    __slots__ = ()
    _kind = ClipVisionConfig


_Text.__name__, _Text.__qualname__ = "Text", "EncoderConfig.Text"
_Vision.__name__, _Vision.__qualname__ = "Vision", "EncoderConfig.Vision"
EncoderConfig.Text, EncoderConfig.Vision = _Text, _Vision


def tower_config(c: Any) -> ClipTextConfig | ClipVisionConfig:
    """The tower config of an :class:`EncoderConfig` (or the config itself)."""
    return c.config if isinstance(c, EncoderConfig) else c
