"""BLIP image captioning (~ candle-transformers' ``models::blip``).

Paper: Li et al., "BLIP: Bootstrapping Language-Image Pre-training for Unified Vision-Language
Understanding and Generation", https://arxiv.org/abs/2201.12086. Mirrors Hugging Face
``transformers/models/blip/modeling_blip.py`` (``BlipForConditionalGeneration``: a pre-norm ViT
with a fused ``qkv`` projection, then the text decoder of :mod:`candlejax.models.blip_text`
cross-attending to every image token) with its weight names verbatim; Candle:
``candle-transformers/src/models/blip.rs``::

    config = Config.from_json_file("blip-image-captioning-large/config.json")
    vb = VarBuilder.from_mmaped_safetensors(["blip-image-captioning-large/model.safetensors"], DType.F32, Device.Cpu)
    model = BlipForConditionalGeneration.load(vb, config)
    image_embeds = model.vision_model.forward(pixel_values)           # (B, 1 + patches, hidden)
    logits = model.text_decoder.forward(input_ids, image_embeds)      # (B, S, vocab)
    text = caption(model, "photo.jpg", tokenizer, max_new_tokens=30)  # greedy; temperature= samples

:func:`caption` runs the vision model compiled once and then one compiled decoder step per token
against a pre-allocated KV cache; ``BlipForConditionalGeneration.from_pretrained(DIR)`` loads a
checkpoint folder and makes its ``tokenizer.json`` the default. Shell: ``python -m
candlejax.models.blip caption IMAGE --model DIR`` (= ``candlejax caption``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors, vision
from candlejax.device import Device
from candlejax.dtype import DType
from candlejax.generation import LogitsProcessor, generate, prefill_bucket
from candlejax.models import blip_text
from candlejax.models.loading import (
    candle_config,
    check_vb_first,
    checkpoint_dir,
    config_dict,
    is_gguf,
    read_config_json,
    safetensors_files,
    tokenizer_from,
)
from candlejax.nn import (
    Activation,
    Conv2d,
    Conv2dConfig,
    LayerNorm,
    Linear,
    Module,
    VarBuilder,
    conv2d,
    layer_norm,
    linear,
    ops,
)
from candlejax.tensor import Tensor

__all__ = [
    "BlipForConditionalGeneration",
    "Config",
    "EncoderLayer",
    "VisionAttention",
    "VisionConfig",
    "VisionEmbeddings",
    "VisionModel",
    "caption",
    "caption_ids",
    "preprocess",
    "prompt_input_ids",
    "vision_forward_jit",
]


@dataclasses.dataclass
class VisionConfig:
    """``vision_config`` of a BLIP config.json (transformers' ``BlipVisionConfig`` defaults)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 384
    patch_size: int = 16
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int = 512  # Candle's field; the captioning model does not use it

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise errors.Msg(
                f"blip vision_config: hidden_size {self.hidden_size} is not a multiple of num_attention_heads"
                f" {self.num_attention_heads}"
            )
        if self.image_size % self.patch_size:
            raise errors.Msg(f"blip: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        Activation.parse(self.hidden_act)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VisionConfig:
        """The config of a ``vision_config`` dict; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names and v is not None})


candle_config(VisionConfig, "blip")  # VisionConfig(**config_json) names from_dict


@dataclasses.dataclass
class Config:
    """A ``BlipForConditionalGeneration`` config.json: ``text_config`` and ``vision_config``.

    Candle: ``blip::Config`` (``Config::image_captioning_large()``). As in transformers, the text
    decoder's ``encoder_hidden_size`` is the vision ``hidden_size``, and the top-level
    ``tie_word_embeddings`` ties the LM head to the word embeddings whatever ``text_config`` says.
    """

    text_config: blip_text.Config = dataclasses.field(default_factory=blip_text.Config)
    vision_config: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    # Candle's fields for the image-text matching heads, which captioning does not use
    projection_dim: int = 512
    image_text_hidden_size: int = 256
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.text_config, dict):
            self.text_config = blip_text.Config.from_dict(self.text_config)
        if isinstance(self.vision_config, dict):
            self.vision_config = VisionConfig.from_dict(self.vision_config)
        self.text_config.encoder_hidden_size = self.vision_config.hidden_size
        if self.tie_word_embeddings:  # transformers ties the decoder if either flag is set
            self.text_config.tie_word_embeddings = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """The config of a ``config.json`` dict (its ``text_config`` and ``vision_config``)."""
        config_dict(d, "blip Config")
        extra = {k: d[k] for k in ("projection_dim", "image_text_hidden_size", "tie_word_embeddings")
                 if d.get(k) is not None}  # fmt: skip
        return cls(dict(d.get("text_config") or {}), dict(d.get("vision_config") or {}), **extra)  # type: ignore[arg-type]

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> Config:
        """The config of a ``config.json`` file."""
        return cls.from_dict(read_config_json(path, "blip Config"))

    from_hf_config = from_dict

    @classmethod
    def image_captioning_large(cls) -> Config:
        """``Salesforce/blip-image-captioning-large`` (Candle's ``Config::image_captioning_large``)."""
        return cls(
            blip_text.Config(num_attention_heads=12),
            VisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
        )

    @classmethod
    def image_captioning_base(cls) -> Config:
        """``Salesforce/blip-image-captioning-base``."""
        return cls(blip_text.Config(num_attention_heads=12), VisionConfig())


candle_config(Config, "blip")  # Config(**config_json) names from_dict


# ------------------------------------------------------------------------------------------------
# vision model, bottom-up
# ------------------------------------------------------------------------------------------------
def _check_pixels(pixel_values: Any, s: int) -> None:
    """Reject pixel values that are not a float ``(B, 3, s, s)`` Tensor, naming the shape."""
    if not isinstance(pixel_values, Tensor):
        raise errors.Msg(f"blip vision_model: pixel_values must be a Tensor (e.g. Tensor.new(pixels)), got"
                         f" {type(pixel_values).__name__}")  # fmt: skip
    shape = tuple(pixel_values.dims()) if isinstance(pixel_values, Tensor) else tuple(pixel_values.shape)
    if len(shape) != 4 or shape[1:] != (3, s, s):
        raise errors.UnexpectedShape(
            f"blip vision_model: pixel_values must be (batch, 3, {s}, {s}) (resize the image first)",
            (shape[0] if len(shape) == 4 else 1, 3, s, s), shape,
        )  # fmt: skip
    if isinstance(pixel_values, Tensor) and not pixel_values.dtype.is_float():
        raise errors.Msg(f"blip vision_model: pixel_values must be a float tensor, got {pixel_values.dtype.as_str()}")


class VisionEmbeddings(Module):
    """Class token + ``patch_embedding`` (stride-``patch`` Conv2d) + learned ``position_embedding``."""

    def __init__(self, class_embedding: Any, patch_embedding: Conv2d, position_embedding: Any, image_size: int):
        self.class_embedding, self.patch_embedding = class_embedding, patch_embedding
        self.position_embedding = position_embedding
        self.image_size = int(image_size)

    @staticmethod
    def load(vb: VarBuilder, cfg: VisionConfig) -> VisionEmbeddings:
        """Candle's ``VisionEmbeddings::new(cfg, vb)``: class embedding, patch convolution, position embedding."""
        h, n_pos = cfg.hidden_size, (cfg.image_size // cfg.patch_size) ** 2 + 1
        conv = conv2d(3, h, cfg.patch_size, Conv2dConfig(stride=cfg.patch_size), vb.pp("patch_embedding"))
        return VisionEmbeddings(
            vb.get((1, 1, h), "class_embedding"), conv, vb.get((1, n_pos, h), "position_embedding"), cfg.image_size
        )

    def forward(self, pixel_values: Tensor) -> Tensor:
        """``(B, 3, image_size, image_size)`` pixels in, ``(B, 1 + patches, hidden)`` out."""
        _check_pixels(pixel_values, self.image_size)
        b = pixel_values.dim(0)
        patches = self.patch_embedding(pixel_values).flatten_from(2).transpose(1, 2)  # (B, N, C)
        c = patches.dim(2)
        cls = self.class_embedding.broadcast_as((b, 1, c)).to_dtype(patches.dtype)
        return Tensor.cat([cls, patches], 1).broadcast_add(self.position_embedding)


class VisionAttention(Module):
    """Fused ``qkv`` projection, softmax attention, ``projection``: ``(B, S, C) -> (B, S, C)``."""

    def __init__(self, qkv: Linear, projection: Linear, num_heads: int):
        self.qkv, self.projection, self.num_heads = qkv, projection, int(num_heads)

    @staticmethod
    def load(vb: VarBuilder, cfg: VisionConfig, linear: blip_text.LinearLoader = linear) -> VisionAttention:
        """Candle's ``Attention::new(cfg, vb)``: the fused ``qkv`` and ``projection`` layers."""
        h = cfg.hidden_size
        qkv, proj = linear(h, 3 * h, vb.pp("qkv")), linear(h, h, vb.pp("projection"))
        return VisionAttention(qkv, proj, cfg.num_attention_heads)

    def forward(self, xs: Tensor) -> Tensor:
        """``(B, N, hidden)`` in, ``(B, N, hidden)`` out."""
        b, s, c = xs.dims3()
        qkv = self.qkv(xs).reshape((b, s, 3, self.num_heads, c // self.num_heads)).permute((2, 0, 3, 1, 4))
        y = ops.sdpa(qkv.get(0), qkv.get(1), qkv.get(2))  # (B, H, S, D)
        return self.projection(y.transpose(1, 2).reshape((b, s, c)))


class EncoderLayer(Module):
    """Pre-norm block: ``x + self_attn(layer_norm1(x))``, ``x + mlp(layer_norm2(x))``."""

    def __init__(self, self_attn: VisionAttention, layer_norm1: LayerNorm, fc1: Linear, fc2: Linear,
                 layer_norm2: LayerNorm, act: Activation):  # fmt: skip
        self.self_attn, self.layer_norm1, self.layer_norm2 = self_attn, layer_norm1, layer_norm2
        self.fc1, self.fc2, self.act = fc1, fc2, act

    @staticmethod
    def load(vb: VarBuilder, cfg: VisionConfig, linear: blip_text.LinearLoader = linear) -> EncoderLayer:
        """Candle's ``EncoderLayer::new(cfg, vb)``: ``self_attn``, ``layer_norm1/2`` and ``mlp.fc1/fc2``."""
        h, eps, mlp = cfg.hidden_size, cfg.layer_norm_eps, vb.pp("mlp")
        return EncoderLayer(
            VisionAttention.load(vb.pp("self_attn"), cfg, linear), layer_norm(h, eps, vb.pp("layer_norm1")),
            linear(h, cfg.intermediate_size, mlp.pp("fc1")), linear(cfg.intermediate_size, h, mlp.pp("fc2")),
            layer_norm(h, eps, vb.pp("layer_norm2")), Activation.parse(cfg.hidden_act),
        )  # fmt: skip

    def forward(self, xs: Tensor) -> Tensor:
        """``(B, N, hidden)`` in, ``(B, N, hidden)`` out (pre-norm attention and MLP, with residuals)."""
        xs = xs + self.self_attn(self.layer_norm1(xs))
        return xs + self.fc2(self.act(self.fc1(self.layer_norm2(xs))))


class VisionModel(Module):
    """``vision_model``: embeddings, ``encoder.layers``, ``post_layernorm`` -> image embeddings ``(B, 1 + N, C)``."""

    def __init__(self, embeddings: VisionEmbeddings, layers: list[EncoderLayer], post_layernorm: LayerNorm):
        self.embeddings, self.layers, self.post_layernorm = embeddings, list(layers), post_layernorm

    @classmethod
    def load(cls, vb: VarBuilder, cfg: VisionConfig, linear: blip_text.LinearLoader = linear) -> VisionModel:
        """``linear``: how the linear layers are built (:func:`candlejax.nn.linear`; the quantized
        model passes its own); the other weights are read with ``vb.get``."""
        enc = vb.pp("encoder").pp("layers")
        return cls(
            VisionEmbeddings.load(vb.pp("embeddings"), cfg),
            [EncoderLayer.load(enc.pp(i), cfg, linear) for i in range(cfg.num_hidden_layers)],
            layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("post_layernorm")),
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``vision_model(pixel_values)`` is :meth:`forward`; with no arguments, Candle's accessor
        ``model.vision_model()`` (``image.apply(model.vision_model())``): the module itself."""
        if not args and not kwargs:
            return self
        return self.forward(*args, **kwargs)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """``(B, 3, image_size, image_size)`` pixels in, ``(B, 1 + patches, hidden)`` out."""
        xs = self.embeddings(pixel_values)
        for layer in self.layers:
            xs = layer(xs)
        return self.post_layernorm(xs)


_NEW, _LOAD = "BlipForConditionalGeneration.new(config, vb)", "BlipForConditionalGeneration.load(vb, config)"


class BlipForConditionalGeneration(Module):
    """``vision_model`` + ``text_decoder`` (:class:`~candlejax.models.blip_text.TextLMHeadModel`).

    Candle: ``BlipForConditionalGeneration::new(&config, vb)``; here ``.load(vb, config)`` (``.new(config,
    vb)`` works too). Candle's accessors work as written: ``model.vision_model()`` is the vision model,
    ``model.text_decoder()`` the decoder with Candle's stateful ``forward`` (each call continues the
    sequence in its KV cache, :class:`~candlejax.models.blip_text.StatefulTextDecoder`) and
    ``model.reset_kv_cache()`` starts a new sequence. The attribute ``model.text_decoder.forward(ids,
    image_embeds)`` is the uncached forward over every position.
    """

    def __init__(self, vision_model: VisionModel, text_decoder: blip_text.TextLMHeadModel, config: Config,
                 path: str = ""):  # fmt: skip
        self.vision_model, self.text_decoder, self.config = vision_model, text_decoder, config
        self.path = path  # the checkpoint folder, where caption finds tokenizer.json

    @staticmethod
    def new(config: Config, vb: VarBuilder) -> BlipForConditionalGeneration:
        """Candle's ``BlipForConditionalGeneration::new(&config, vb)`` (= ``.load(vb, config)``)."""
        check_vb_first(vb, "BlipForConditionalGeneration.new", _NEW, _LOAD)
        return BlipForConditionalGeneration.load(vb, config)

    @staticmethod
    def load(vb: VarBuilder, config: Config) -> BlipForConditionalGeneration:
        """Candle's ``BlipForConditionalGeneration::new(cfg, vb)``: ``vision_model`` and ``text_decoder`` under
        ``vb``."""
        check_vb_first(vb, "BlipForConditionalGeneration.load", _NEW, _LOAD)
        return BlipForConditionalGeneration(
            VisionModel.load(vb.pp("vision_model"), config.vision_config),
            blip_text.TextLMHeadModel.load(vb.pp("text_decoder"), config.text_config),
            config,
            checkpoint_dir(vb),
        )

    @staticmethod
    def from_pretrained(model_dir: str | os.PathLike, dtype: Any = DType.F32,
                        device: Any = None) -> BlipForConditionalGeneration:  # fmt: skip
        """A checkpoint folder: ``config.json`` and ``*.safetensors``; its ``tokenizer.json`` is
        then :func:`caption`'s default tokenizer."""
        d = os.fspath(model_dir)
        if is_gguf(d):
            raise errors.Msg(f"blip: {d} holds GGUF weights: load them with candlejax.models.quantized_blip."
                             "BlipForConditionalGeneration.from_pretrained(path)")  # fmt: skip
        vb = VarBuilder.from_mmaped_safetensors(safetensors_files(d), dtype, Device.coerce(device))
        model = BlipForConditionalGeneration.load(vb, Config.from_json_file(os.path.join(d, "config.json")))
        model.path = d
        return model

    @property
    def image_size(self) -> int:
        """The side of the square images the vision model takes."""
        return self.vision_model.embeddings.image_size

    def reset_kv_cache(self) -> None:
        """Candle's ``reset_kv_cache()``: ``model.text_decoder().forward`` starts a new sequence."""
        self.text_decoder.reset_kv_cache()

    def forward(self, pixel_values: Tensor, input_ids: Tensor) -> Tensor:
        """Decoder logits ``(B, S, vocab)`` for ``input_ids`` given the image (transformers' ``.logits``)."""
        return self.text_decoder(input_ids, self.vision_model(pixel_values))


@jax.jit
def _vision(model: VisionModel, pixel_values: Tensor) -> Tensor:
    return model.forward(pixel_values)


def vision_forward_jit(model: BlipForConditionalGeneration, pixel_values: Tensor) -> Tensor:
    """The image embeddings ``(B, 1 + N, C)``, compiled once per input shape (weights are arguments)."""
    _check_pixels(pixel_values, model.image_size)
    return _vision(model.vision_model, pixel_values)


# ------------------------------------------------------------------------------------------------
# captioning: BlipImageProcessor, the vision model once, then one compiled decoder step per token
# ------------------------------------------------------------------------------------------------
_BUCKET = 32  # cache lengths are rounded up to a multiple of this, so nearby max_new_tokens share a program


def preprocess(image: Any, size: int = 384) -> Tensor:
    """transformers' ``BlipImageProcessor``: resize to ``size`` x ``size`` (bicubic), OpenAI's CLIP
    mean/std -> ``(1, 3, size, size)`` f32. ``image``: a path, PIL image, ``(H, W, 3)`` uint8 array
    or ``(3, H, W)`` u8 Tensor; float pixels are taken as preprocessed and pass through, which must
    then be ``(3, size, size)`` or ``(B, 3, size, size)``."""
    pixels = vision.as_pixel_batch(image, size, "blip.preprocess")
    if pixels is not None:
        return pixels
    img = vision.resize(vision.as_image(image, "blip.preprocess"), size, "bicubic")
    return vision.normalize(img, vision.OPENAI_CLIP_MEAN, vision.OPENAI_CLIP_STD).unsqueeze(0)


def _prompt_ids(cfg: blip_text.Config, input_ids: Any, batch: int) -> np.ndarray:
    """transformers' ``BlipForConditionalGeneration.generate``: ``input_ids[:, 0] = bos_token_id`` and
    ``input_ids[:, :-1]`` fed (the processor's ``[CLS] prompt [SEP]``: BOS, then the prompt);
    ``None``: ``[bos]`` for each image."""
    if input_ids is None:
        return np.full((batch, 1), cfg.bos_token_id, np.int64)
    try:
        ids = np.asarray(input_ids.numpy() if isinstance(input_ids, Tensor) else input_ids)
    except ValueError:  # ragged rows
        raise errors.Msg(
            "blip.caption: input_ids rows hold prompts of different lengths; padded prompts (an attention_mask) are"
            " not supported, caption prompts of different lengths separately"
        ) from None
    ids = ids[None] if ids.ndim == 1 else ids
    if ids.ndim != 2 or ids.shape[1] < 2 or not np.issubdtype(ids.dtype, np.integer):
        raise errors.Msg(
            "blip.caption: input_ids must be the processor's integer ids [CLS] prompt [SEP], (seq,) or (batch, seq)"
            f" with seq >= 2, got shape {list(ids.shape)} ({ids.dtype})"
        )
    if ids.shape[0] not in (1, batch):
        raise errors.Msg(f"blip.caption: input_ids hold {ids.shape[0]} rows for a batch of {batch} images")
    ids = ids[:, :-1].astype(np.int64)
    ids[:, 0] = cfg.bos_token_id
    if ids.min() < 0 or ids.max() >= cfg.vocab_size:
        raise errors.Msg(f"blip.caption: input_ids must be in 0..{cfg.vocab_size - 1}, got {ids.min()}..{ids.max()}")
    if cfg.pad_token_id is not None and (ids[:, 1:] == cfg.pad_token_id).any():
        raise errors.Msg(
            f"blip.caption: input_ids hold the pad id {cfg.pad_token_id}: padded prompts (an attention_mask) are not"
            " supported; caption prompts of different lengths separately"
        )
    return np.broadcast_to(ids, (batch, ids.shape[1])) if batch > 1 else ids


@jax.jit
def _greedy_step(decoder: blip_text.TextLMHeadModel, cache: blip_text.TextCache, tokens: Any,
                 pos: Any, last: Any = None) -> tuple[Any, blip_text.TextCache]:  # fmt: skip
    logits, cache = blip_text.step(decoder, cache, tokens, pos, last)
    return jnp.argmax(logits.jax, -1), cache


def _greedy_batch(decoder: blip_text.TextLMHeadModel, cache: blip_text.TextCache, prompt: np.ndarray,
                  max_new_tokens: int, sep: int, pad: int) -> list[list[int]]:  # fmt: skip
    """transformers' batched greedy search: a row that has met ``[SEP]`` is fed ``pad`` until every
    row has (or ``max_new_tokens``); each row: the prompt after BOS, then its tokens before ``[SEP]``."""
    s = prompt.shape[1]
    padded = prefill_bucket(s)
    if 1 < s and padded <= cache.max_seq_len:  # one compiled prefill per bucket, not per prompt length
        ids = np.zeros((len(prompt), padded), np.uint32)
        ids[:, :s] = prompt
        nxt, cache = _greedy_step(decoder, cache, ids, np.int32(0), np.int32(s - 1))
    else:
        nxt, cache = _greedy_step(decoder, cache, prompt.astype(np.uint32), np.int32(0))
    rows, done, pos = [[int(t) for t in r[1:]] for r in prompt], np.zeros(len(prompt), bool), prompt.shape[1]
    for i in range(max_new_tokens):
        toks = np.asarray(nxt)
        for r, t in enumerate(toks):
            if done[r]:
                continue
            if t == sep:
                done[r] = True
            else:
                rows[r].append(int(t))
        if done.all() or i == max_new_tokens - 1:
            break
        feed = np.where(done, pad, toks)[:, None].astype(np.uint32)
        nxt, cache = _greedy_step(decoder, cache, feed, np.int32(pos))
        pos += 1
    return rows


def caption_ids(
    model: BlipForConditionalGeneration, image: Any, max_new_tokens: int = 30, temperature: float | None = None,
    top_p: float | None = None, seed: int = 299792458, processor: LogitsProcessor | None = None,
    input_ids: Any = None,
) -> list[int] | list[list[int]]:  # fmt: skip
    """The caption's token ids (without the leading BOS and the final ``[SEP]``).

    Candle: the ``blip`` example (vision model once, then ``text_decoder.forward`` per token with
    its KV cache, stop at ``[SEP]``); here :func:`candlejax.generation.generate` runs one compiled
    prefill and one compiled decode step per token against a pre-allocated cache that also holds
    the image's cross-attention keys/values. ``temperature`` ``None`` (or 0) decodes greedily
    (transformers' ``generate(do_sample=False)``); otherwise samples with
    ``LogitsProcessor(seed, temperature, top_p)``, or with ``processor``.

    ``input_ids``: a text prompt, transformers' ``model.generate(pixel_values, input_ids=...)``: the
    processor's ids (``[CLS] prompt [SEP]``, a list, ``(seq,)`` or ``(batch, seq)``; see
    :func:`prompt_input_ids`) whose first id is replaced by BOS and whose last is dropped; the ids
    returned then begin with the prompt's, as transformers' output does. ``image``: one image, a
    list of images or a ``(B, 3, S, S)`` pixel batch: several images are decoded together (greedy
    only), one list of ids per image, the same as captioning each alone.
    """
    if max_new_tokens < 1:
        raise errors.Msg(f"blip.caption: max_new_tokens must be >= 1, got {max_new_tokens}")
    cfg = model.config.text_config
    several = isinstance(image, list | tuple)
    if several and not image:
        raise errors.Msg("blip.caption: an empty list of images")
    pixels = (Tensor.cat([preprocess(im, model.image_size) for im in image], 0) if several
              else preprocess(image, model.image_size))  # fmt: skip
    dtype = model.vision_model.embeddings.class_embedding.dtype
    image_embeds = vision_forward_jit(model, pixels.to_dtype(dtype))
    b = image_embeds.dim(0)
    prompt = _prompt_ids(cfg, input_ids, b)
    s, limit = prompt.shape[1], cfg.max_position_embeddings
    if s + max_new_tokens > limit:
        raise errors.Msg(
            f"blip.caption: max_new_tokens {max_new_tokens} exceeds max_position_embeddings - {s} ({limit - s})"
            + (f" (a prompt of {s - 1} tokens after BOS)" if s > 1 else "")
        )
    n = min(limit, -(-(s + max_new_tokens) // _BUCKET) * _BUCKET)
    cache = model.text_decoder.new_cache(image_embeds, n)
    if several or b > 1:
        if processor is not None or temperature:
            raise errors.Msg(f"blip.caption: a batch of {b} images is decoded greedily (temperature=None, no"
                             " processor); caption the images one at a time to sample")  # fmt: skip
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else cfg.sep_token_id  # as transformers' fallback
        return _greedy_batch(model.text_decoder, cache, prompt, max_new_tokens, cfg.sep_token_id, pad)
    lp = processor if processor is not None else LogitsProcessor(seed, temperature, top_p)
    # a prompt padded to a 32-token bucket (one prefill program for every length); [BOS] alone runs
    # as a decode step (the one program unconditional captions compile)
    gen = generate(blip_text.step, model.text_decoder, cache, prompt[0].tolist(), max_new_tokens, lp,
                   eos_token_id=cfg.sep_token_id, prefill_buckets=None if s > 1 else False)  # fmt: skip
    return prompt[0, 1:].tolist() + list(gen)


def prompt_input_ids(model: BlipForConditionalGeneration, tokenizer: Any, prompt: str) -> list[int]:
    """The ids ``BlipProcessor(image, prompt)`` gives for :func:`caption_ids`'s ``input_ids``:
    ``[BOS] prompt [SEP]`` (the first is replaced by BOS and the last dropped anyway), the prompt
    encoded without special tokens by ``tokenizer`` (``tokenizers.Tokenizer`` or transformers')."""
    if not isinstance(prompt, str):
        raise errors.Msg(f"blip.caption: prompt must be a str, got {type(prompt).__name__}")
    if not hasattr(tokenizer, "encode"):
        raise errors.Msg(f"blip.caption: a prompt needs a tokenizer with encode(text), got {tokenizer!r}")
    enc = tokenizer.encode(prompt, add_special_tokens=False)
    cfg = model.config.text_config
    return [cfg.bos_token_id, *(int(i) for i in getattr(enc, "ids", enc)), cfg.sep_token_id]


def caption(
    model: BlipForConditionalGeneration, image: Any, tokenizer: Any = None, max_new_tokens: int = 30,
    temperature: float | None = None, top_p: float | None = None, seed: int = 299792458,
    processor: LogitsProcessor | None = None, prompt: str | None = None,
) -> str | list[str]:  # fmt: skip
    """A caption for ``image`` (see :func:`preprocess`). ``tokenizer``: a ``tokenizers.Tokenizer``,
    the path of ``tokenizer.json`` (or its folder) or an object with ``decode(ids,
    skip_special_tokens=True)``; by default the ``tokenizer.json`` of the checkpoint folder the model
    was loaded from (``from_pretrained``, or ``load`` from its safetensors). ``prompt``: conditional
    captioning (transformers' ``processor(image, prompt)``), the caption begins with it. A list of
    images (or a pixel batch) gives a list of captions. See :func:`caption_ids` for the rest."""
    tok = tokenizer_from(tokenizer, model.path, "blip.caption")
    if not hasattr(tok, "decode"):
        raise errors.Msg(f"blip.caption: the tokenizer needs a decode(ids, skip_special_tokens=True), got {tok!r}")
    input_ids = None if prompt is None else prompt_input_ids(model, tok, prompt)
    ids = caption_ids(model, image, max_new_tokens, temperature, top_p, seed, processor, input_ids)
    if ids and isinstance(ids[0], list):
        return [tok.decode(row, skip_special_tokens=True).strip() for row in ids]
    return tok.decode(ids, skip_special_tokens=True).strip()


if __name__ == "__main__":
    from candlejax.cli.caption import blip_main

    raise SystemExit(blip_main())
