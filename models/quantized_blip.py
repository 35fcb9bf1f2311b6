"""BLIP image captioning from a GGUF file (~ candle-transformers' ``models::quantized_blip``).

The float model's classes (:mod:`candlejax.models.blip`, the decoder of
:mod:`candlejax.models.quantized_blip_text`) with Candle's quantized layers: every linear layer
(the vision ``qkv``/``projection``/``fc1``/``fc2``, the decoder's) is a
:class:`~candlejax.nn.quantized.QLinear` over the file's weight, GGML-quantised or F32/F16, with its
bias dequantised; the layer norms, the patch-embedding convolution and the class and position
embeddings are dequantised to F32 at load, as Candle's file does. Tensor names are the
``model.safetensors`` checkpoint's (``vision_model.encoder.layers.0.self_attn.qkv.weight``, ...), as
Candle's ``tensor-tools quantize`` writes them. Candle's blip example::

    let vb = quantized_blip::VarBuilder::from_gguf(model_file, &device)?;
    let model = quantized_blip::BlipForConditionalGeneration::new(&config, vb)?;

is here::

    config = Config.from_json_file("blip-image-captioning-large/config.json")
    vb = VarBuilder.from_gguf("blip-image-captioning-large-q4k.gguf", Device.Cpu)
    model = BlipForConditionalGeneration.new(config, vb)
    image_embeds = image.unsqueeze(0).apply(model.vision_model())        # (1, 1 + patches, hidden)
    logits = model.text_decoder().forward(input_ids, image_embeds)      # its KV cache continues the sequence
    model.reset_kv_cache()
    text = blip.caption(model, "photo.jpg", "tokenizer.json")           # compiled greedy captioning

The model is a :class:`candlejax.models.blip.BlipForConditionalGeneration`, so :func:`blip.caption
<candlejax.models.blip.caption>` (one compiled vision pass, one compiled decoder step per token) runs
on it as on the float model.
"""

from __future__ import annotations

import os
from typing import Any

from candlejax import errors
from candlejax.device import Device
from candlejax.models import blip, quantized_blip_text
from candlejax.models.blip import Config, VisionConfig
from candlejax.models.loading import check_gguf_vb, gguf_file
from candlejax.models.quantized_blip_text import float_builder
from candlejax.models.quantized_var_builder import VarBuilder

__all__ = ["BlipForConditionalGeneration", "Config", "VarBuilder", "VisionConfig", "VisionModel"]


class VisionModel(blip.VisionModel):
    """Candle's ``quantized_blip::VisionModel``: the ViT of :class:`candlejax.models.blip.VisionModel`
    with quantised linear layers; ``forward(pixel_values)`` gives the image embeddings ``(B, 1 + N, C)``."""

    @classmethod
    def load(cls, vb: VarBuilder, cfg: VisionConfig) -> VisionModel:
        """The vision model from a GGUF builder (``vb`` at ``vision_model``)."""
        check_gguf_vb(vb, "quantized_blip.VisionModel.load", "VisionModel.load(vb, cfg)", "blip.VisionModel")
        fvb, linear = float_builder(vb)
        return super().load(fvb, cfg, linear)


_NEW = "BlipForConditionalGeneration.new(config, vb)"


class BlipForConditionalGeneration(blip.BlipForConditionalGeneration):
    """Candle's ``quantized_blip::BlipForConditionalGeneration``: ``vision_model``
    (:class:`VisionModel`) and ``text_decoder`` (:class:`~candlejax.models.quantized_blip_text.TextLMHeadModel`).

    Candle's accessors work as written (``model.vision_model()``, ``model.text_decoder().forward(ids,
    image_embeds)`` with its KV cache, ``model.reset_kv_cache()``), as on the float model.
    """

    @classmethod
    def new(cls, config: Config, vb: VarBuilder) -> BlipForConditionalGeneration:
        """Candle's ``BlipForConditionalGeneration::new(&config, vb)`` over a GGUF builder (= ``.load(vb, config)``)."""
        if isinstance(config, VarBuilder):
            raise errors.InvalidArgument(
                f"quantized_blip.BlipForConditionalGeneration.new: the config comes first, as in Candle: {_NEW}"
            )
        return cls.load(vb, config)

    @classmethod
    def load(cls, vb: VarBuilder, config: Config) -> BlipForConditionalGeneration:
        """Candle's ``quantized_blip::BlipForConditionalGeneration::new(cfg, vb)``, from a GGUF ``VarBuilder``."""
        check_gguf_vb(vb, "quantized_blip.BlipForConditionalGeneration.load", _NEW,
                      "blip.BlipForConditionalGeneration.load(vb, config)")  # fmt: skip
        return cls(
            VisionModel.load(vb.pp("vision_model"), config.vision_config),
            quantized_blip_text.TextLMHeadModel.load(vb.pp("text_decoder"), config.text_config),
            config,
        )

    @staticmethod
    def from_pretrained(model_dir: Any, dtype: Any = None, device: Any = None) -> BlipForConditionalGeneration:
        """A GGUF file, or the one ``.gguf`` of a folder, with ``config.json`` beside it (the layout of
        Candle's ``--quantized`` BLIP); ``model.path`` is the folder, where :func:`blip.caption` finds
        ``tokenizer.json``. ``dtype`` is accepted for the float loader's signature: activations are f32."""
        path, folder = gguf_file(model_dir, "quantized_blip")
        cfg = os.path.join(folder, "config.json")
        if not os.path.isfile(cfg):
            raise errors.Msg(f"quantized_blip: no config.json beside {path!r} (Candle's example reads the float"
                             " model's config.json)")  # fmt: skip
        vb = VarBuilder.from_gguf(path, Device.coerce(device))
        model = BlipForConditionalGeneration.new(Config.from_json_file(cfg), vb)
        model.path = folder
        return model
