"""transformers' ``SamModel`` checkpoints (hub: ``facebook/sam-vit-base`` / ``-large`` / ``-huge``,
SlimSAM): tensor names and ``config.json``.

requires: candlejax.errors; provides: ``is_transformers_layout``, ``sam_to_transformers``,
``SamArch``, ``arch_from_config``

The model (:mod:`~candlejax.models.segment_anything.sam`) asks for the original SAM names
(``image_encoder.blocks.0.norm1.weight``, ``mask_decoder.iou_prediction_head.layers.2.bias``).
transformers' ``SamModel`` stores the same tensors, with the same shapes, as
``vision_encoder.layers.0.layer_norm1.weight`` / ``mask_decoder.iou_prediction_head.proj_out.bias``
and the prompt encoder's Fourier matrix as ``shared_image_embedding.positional_embedding``
(the renaming of transformers' SAM conversion script, in reverse). Such a file is read through
``vb.rename_f(sam_to_transformers)``: nothing is copied, and the model's Vars keep SAM's names.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from candlejax import errors

__all__ = ["TRANSFORMERS_FIRST", "TRANSFORMERS_TIED", "SamArch", "arch_from_config", "is_transformers_layout",
           "sam_to_transformers"]  # fmt: skip

#: a tensor every transformers ``SamModel`` checkpoint holds (the original's ``image_encoder.patch_embed.proj.weight``)
TRANSFORMERS_FIRST = "vision_encoder.patch_embed.projection.weight"
#: the prompt encoder's copy of ``shared_image_embedding.positional_embedding`` (tied; older files store both)
TRANSFORMERS_TIED = "prompt_encoder.shared_embedding.positional_embedding"
_GAUSSIAN = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_NECK = {"0": "conv1", "1": "layer_norm1", "2": "conv2", "3": "layer_norm2"}
_MASK_EMBED = {"0": "conv1", "1": "layer_norm1", "3": "conv2", "4": "layer_norm2", "6": "conv3"}
_UPSCALING = {"0": "upscale_conv1", "1": "upscale_layer_norm", "3": "upscale_conv2"}
_MLP = re.compile(r"^(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.(\d+)\.(.*)$")


def is_transformers_layout(names: Iterable[str]) -> bool:
    """Whether checkpoint tensor ``names`` are transformers' ``SamModel``'s (``vision_encoder.*``)."""
    return TRANSFORMERS_FIRST in set(names)


def sam_to_transformers(name: str, iou_head_depth: int = 3, gaussian: str = "shared_image_embedding") -> str:
    """The transformers ``SamModel`` name of the original SAM tensor ``name``.

    SAM's ``MLP`` numbers its Linear layers ``layers.0 .. layers.{n-1}``; transformers'
    ``SamFeedForward`` calls them ``proj_in``, ``layers.0 .. layers.{n-3}``, ``proj_out``, so the IoU
    head's name depends on its depth (``iou_head_depth``; the hypernetwork MLPs have 3 layers).
    ``gaussian``: the module holding the Fourier matrix (``"prompt_encoder.shared_embedding"`` for a
    file that stores only the prompt encoder's tied copy)."""
    if name == _GAUSSIAN:
        return f"{gaussian}.positional_embedding"
    head, _, rest = name.partition(".")
    if head == "image_encoder":
        rest = rest.replace("patch_embed.proj.", "patch_embed.projection.", 1)
        rest = re.sub(r"^blocks\.(\d+)\.norm([12])\.", r"blocks.\1.layer_norm\2.", rest)
        rest = re.sub(r"^blocks\.", "layers.", rest)
        rest = re.sub(r"^neck\.(\d)\.", lambda m: f"neck.{_NECK.get(m[1], m[1])}.", rest)
        return "vision_encoder." + rest
    if head == "prompt_encoder":
        rest = re.sub(r"^point_embeddings\.", "point_embed.", rest)
        rest = re.sub(r"^mask_downscaling\.(\d)\.", lambda m: f"mask_embed.{_MASK_EMBED.get(m[1], m[1])}.", rest)
        return "prompt_encoder." + rest
    if head == "mask_decoder":
        rest = re.sub(r"^output_upscaling\.(\d)\.", lambda m: f"{_UPSCALING.get(m[1], m[1])}.", rest)
        rest = re.sub(r"^transformer\.((?:layers\.\d+\.)?)norm", r"transformer.\1layer_norm", rest)
        m = _MLP.match(rest)
        if m:
            depth, k = (iou_head_depth if m[1] == "iou_prediction_head" else 3), int(m[2])
            layer = "proj_in" if k == 0 else "proj_out" if k == depth - 1 else f"layers.{k - 1}"
            rest = f"{m[1]}.{layer}.{m[3]}"
        return "mask_decoder." + rest
    return name


@dataclass(frozen=True)
class SamArch:
    """What candlejax's SAM takes from a transformers ``SamConfig``."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    mlp_dim: int | None = None
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    mask_input_channels: int = 16
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    #: the two-way transformer blocks' LayerNorm eps (transformers applies ``mask_decoder_config.layer_norm_eps``)
    decoder_layer_norm_eps: float = 1e-6


# transformers' SamVisionConfig / SamPromptEncoderConfig / SamMaskDecoderConfig defaults
_VISION = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "global_attn_indexes": [2, 5, 8, 11],
           "window_size": 14, "mlp_dim": None, "mlp_ratio": 4.0, "qkv_bias": True, "use_abs_pos": True,
           "use_rel_pos": True}  # fmt: skip
# keys whose value candlejax's SAM fixes (SAM's 1024x1024 input, 16x16 patches, 256-channel prompt space)
_FIXED = {
    "vision_config": {"image_size": 1024, "patch_size": 16, "num_channels": 3, "output_channels": 256,
                      "hidden_act": "gelu", "layer_norm_eps": 1e-6, "num_pos_feats": 128},
    "prompt_encoder_config": {"hidden_size": 256, "image_size": 1024, "patch_size": 16, "num_point_embeddings": 4,
                              "hidden_act": "gelu", "layer_norm_eps": 1e-6},
    "mask_decoder_config": {"hidden_size": 256, "hidden_act": "relu", "mlp_dim": 2048, "num_hidden_layers": 2,
                            "num_attention_heads": 8, "attention_downsample_rate": 2},
}  # fmt: skip


def _same(v: Any, want: Any) -> bool:
    if isinstance(want, str):
        return v == want
    if isinstance(v, (list, tuple)) and isinstance(want, int):  # image/patch sizes given as [h, w]
        return len(v) == 2 and all(_same(x, want) for x in v)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return False
    return abs(float(v) - float(want)) <= 1e-12 if isinstance(want, float) else v == want


def _int(section: Mapping[str, Any], key: str, where: str, default: Any, lo: int = 1) -> int:
    v = section.get(key, default)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise errors.Msg(f"{where}.{key} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _flag(section: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    v = section.get(key, default)
    if not isinstance(v, bool):
        raise errors.Msg(f"{where}.{key} must be true or false, got {v!r}")
    return v


def _eps(section: Mapping[str, Any], key: str, where: str, default: float) -> float:
    v = section.get(key, default)
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 < v < 1:
        raise errors.Msg(f"{where}.{key} must be a number in (0, 1), got {v!r}")
    return float(v)


def arch_from_config(config: Mapping[str, Any], label: str) -> SamArch:
    """The architecture of a transformers ``SamConfig`` (the object of its ``config.json``); a key
    whose value candlejax's SAM cannot represent raises a candlejax error naming it (``label``:
    the file, for the message)."""
    sections = {}
    for name in ("vision_config", "prompt_encoder_config", "mask_decoder_config"):
        sec = config.get(name) or {}
        if not isinstance(sec, Mapping):
            raise errors.Msg(f"{label}: {name} must be an object, got {type(sec).__name__}")
        sections[name] = sec
        for key, want in _FIXED[name].items():
            if key in sec and sec[key] is not None and not _same(sec[key], want):
                raise errors.Msg(
                    f"{label}: {name}.{key} = {sec[key]!r} is not supported: candlejax's SAM implements"
                    f" {key} = {want!r} only (SAM's 1024x1024 input, 16x16 patches, 256-channel prompt embeddings)"
                )
    v, p, d = sections["vision_config"], sections["prompt_encoder_config"], sections["mask_decoder_config"]
    vw, pw, dw = (f"{label}: {n}" for n in sections)
    hidden = _int(v, "hidden_size", vw, _VISION["hidden_size"])
    depth = _int(v, "num_hidden_layers", vw, _VISION["num_hidden_layers"])
    heads = _int(v, "num_attention_heads", vw, _VISION["num_attention_heads"])
    if hidden % heads:
        raise errors.Msg(f"{vw}.hidden_size ({hidden}) must be a multiple of num_attention_heads ({heads})")
    glob = v.get("global_attn_indexes", _VISION["global_attn_indexes"])
    if not isinstance(glob, (list, tuple)) or not all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) and 0 <= i < depth for i in glob):  # fmt: skip
        raise errors.Msg(f"{vw}.global_attn_indexes must list layers in 0..{depth - 1}, got {glob!r}")
    mlp_dim = v.get("mlp_dim")
    if mlp_dim is None:
        ratio = v.get("mlp_ratio", _VISION["mlp_ratio"])
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or ratio <= 0:
            raise errors.Msg(f"{vw}.mlp_ratio must be a number > 0, got {ratio!r}")
        mlp_dim = int(hidden * ratio)  # transformers' SamVisionConfig
    mlp_dim = _int({"mlp_dim": mlp_dim}, "mlp_dim", vw, None)
    iou_depth = _int(d, "iou_head_depth", dw, 3, lo=2)
    mask_chans = _int(p, "mask_input_channels", pw, 16, lo=4)
    if mask_chans % 4:
        raise errors.Msg(f"{pw}.mask_input_channels must be a multiple of 4, got {mask_chans}")
    return SamArch(
        hidden, depth, heads, tuple(int(i) for i in glob), _int(v, "window_size", vw, 14, lo=0), mlp_dim,
        _flag(v, "qkv_bias", vw, True), _flag(v, "use_abs_pos", vw, True), _flag(v, "use_rel_pos", vw, True),
        mask_chans, _int(d, "num_multimask_outputs", dw, 3), iou_depth,
        _int(d, "iou_head_hidden_dim", dw, 256), _eps(d, "layer_norm_eps", dw, 1e-6),
    )  # fmt: skip
