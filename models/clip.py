"""CLIP: contrastive image-text model (~ candle-transformers' ``models::clip``).

Paper: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
https://arxiv.org/abs/2103.00020. Mirrors Hugging Face ``transformers/models/clip/modeling_clip.py``
(``CLIPModel``: a causal pre-norm text transformer pooled at the EOS token, a pre-norm ViT pooled
at the class token, two bias-free projections and a learned ``logit_scale``) with its weight names
verbatim; Candle: ``candle-transformers/src/models/clip/{mod,text_model,vision_model}.rs``::

    config = ClipConfig.from_json_file("clip-vit-base-patch32/config.json")
    vb = VarBuilder.from_mmaped_safetensors(["clip-vit-base-patch32/model.safetensors"], DType.F32, Device.Cpu)
    model = ClipModel.load(vb, config)
    logits_per_text, logits_per_image = model.forward(pixel_values, input_ids)

Every ``forward`` runs eagerly or under ``jax.jit`` (the model is a pytree; :func:`forward_jit`
compiles one program per input shape with the weights as arguments). Zero-shot classification
(tokenise, preprocess, softmax over labels) is :func:`zero_shot`; ``python -m candlejax.models.clip
IMAGE --model DIR --labels "a,b,c"`` (= ``candlejax clip``) runs it from the shell.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors, vision
from candlejax.device import Device
from candlejax.dtype import DType
from candlejax.models.clip_config import ClipConfig, ClipTextConfig, ClipVisionConfig, EncoderConfig, tower_config
from candlejax.models.loading import checkpoint_dir, safetensors_files, tokenizer_from
from candlejax.nn import (
    Activation,
    Conv2d,
    Conv2dConfig,
    Embedding,
    LayerNorm,
    Linear,
    Module,
    VarBuilder,
    check_token_ids,
    conv2d_no_bias,
    embedding,
    layer_norm,
    linear,
    linear_no_bias,
    ops,
)
from candlejax.nn.conv import hwio_kernels, with_hwio_kernels
from candlejax.nn.init import Const
from candlejax.tensor import Tensor, int_arg, unwrap

__all__ = [
    "ClipAttention",
    "ClipConfig",
    "ClipEncoder",
    "ClipEncoderLayer",
    "ClipMlp",
    "ClipModel",
    "ClipTextConfig",
    "ClipTextEmbeddings",
    "ClipTextTransformer",
    "ClipVisionConfig",
    "ClipVisionEmbeddings",
    "ClipVisionTransformer",
    "EncoderConfig",
    "div_l2_norm",
    "forward_jit",
    "image_features_jit",
    "preprocess",
    "text_features_jit",
    "tokenize",
    "zero_shot",
]


# ------------------------------------------------------------------------------------------------
# layers, bottom-up
# ------------------------------------------------------------------------------------------------
class ClipAttention(Module):
    """Multi-head attention with ``q_proj``/``k_proj``/``v_proj``/``out_proj``: ``(B, S, C) -> (B, S, C)``."""

    def __init__(self, q_proj: Linear, k_proj: Linear, v_proj: Linear, out_proj: Linear, num_heads: int):
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q_proj, k_proj, v_proj, out_proj
        self.num_heads = int(num_heads)

    @staticmethod
    def load(vb: VarBuilder, hidden: int, num_heads: int) -> ClipAttention:
        """Candle's ``ClipAttention::new(vs, c)``: ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj``."""
        return ClipAttention(
            linear(hidden, hidden, vb.pp("q_proj")), linear(hidden, hidden, vb.pp("k_proj")),
            linear(hidden, hidden, vb.pp("v_proj")), linear(hidden, hidden, vb.pp("out_proj")), num_heads,
        )  # fmt: skip

    def _heads(self, x: Tensor, b: int, s: int) -> Tensor:
        return x.reshape((b, s, self.num_heads, -1)).transpose(1, 2)  # (B, H, S, D)

    def forward(self, xs: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """``(B, S, hidden)`` in, ``(B, S, hidden)`` out; ``causal`` masks future tokens."""
        b, s, c = xs.dims3()
        q = self._heads(self.q_proj(xs), b, s)
        k = self._heads(self.k_proj(xs), b, s)
        v = self._heads(self.v_proj(xs), b, s)
        y = ops.sdpa(q, k, v, mask, do_causal=causal)  # (B, H, S, D)
        return self.out_proj(y.transpose(1, 2).reshape((b, s, c)))


class ClipMlp(Module):
    """``fc2(act(fc1(x)))``."""

    def __init__(self, fc1: Linear, fc2: Linear, act: Activation):
        self.fc1, self.fc2, self.activation = fc1, fc2, act

    @staticmethod
    def load(vb: VarBuilder, cfg: ClipTextConfig | ClipVisionConfig) -> ClipMlp:
        """Candle's ``ClipMlp::new(vs, c)``: ``fc1``, ``fc2`` and the config's activation."""
        return ClipMlp(
            linear(cfg.hidden_size, cfg.intermediate_size, vb.pp("fc1")),
            linear(cfg.intermediate_size, cfg.hidden_size, vb.pp("fc2")),
            Activation.parse(cfg.hidden_act),
        )

    def forward(self, xs: Tensor) -> Tensor:
        """``(B, S, hidden)`` in, ``(B, S, hidden)`` out."""
        return self.fc2(self.activation(self.fc1(xs)))


class ClipEncoderLayer(Module):
    """Pre-norm block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, self_attn: ClipAttention, layer_norm1: LayerNorm, mlp: ClipMlp, layer_norm2: LayerNorm):
        self.self_attn, self.layer_norm1, self.mlp, self.layer_norm2 = self_attn, layer_norm1, mlp, layer_norm2

    @staticmethod
    def load(vb: VarBuilder, cfg: ClipTextConfig | ClipVisionConfig) -> ClipEncoderLayer:
        """Candle's ``ClipEncoderLayer::new(vs, c)``: ``self_attn``, ``layer_norm1/2`` and ``mlp``."""
        h, eps = cfg.hidden_size, cfg.layer_norm_eps
        return ClipEncoderLayer(
            ClipAttention.load(vb.pp("self_attn"), h, cfg.num_attention_heads),
            layer_norm(h, eps, vb.pp("layer_norm1")),
            ClipMlp.load(vb.pp("mlp"), cfg),
            layer_norm(h, eps, vb.pp("layer_norm2")),
        )  # fmt: skip

    def forward(self, xs: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """``(B, S, hidden)`` in, ``(B, S, hidden)`` out (pre-norm attention and MLP, with residuals)."""
        xs = xs + self.self_attn(self.layer_norm1(xs), mask, causal)
        return xs + self.mlp(self.layer_norm2(xs))


class ClipEncoder(Module):
    """``layers.{i}``: the stack of :class:`ClipEncoderLayer`."""

    def __init__(self, layers: list[ClipEncoderLayer]):
        self.layers = list(layers)

    @staticmethod
    def load(vb: VarBuilder, cfg: ClipTextConfig | ClipVisionConfig) -> ClipEncoder:
        """Candle's ``ClipEncoder::new(vs, c)``: ``layers.{i}`` for each hidden layer."""
        cfg = tower_config(cfg)
        return ClipEncoder([ClipEncoderLayer.load(vb.pp("layers").pp(i), cfg) for i in range(cfg.num_hidden_layers)])

    @staticmethod
    def new(vb: VarBuilder, c: EncoderConfig | ClipTextConfig | ClipVisionConfig) -> ClipEncoder:
        """Candle's ``ClipEncoder::new(vb, &EncoderConfig)``."""
        return ClipEncoder.load(vb, c)

    def forward(self, xs: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """``(B, S, hidden)`` in, ``(B, S, hidden)`` out, through every layer."""
        for layer in self.layers:
            xs = layer(xs, mask, causal)
        return xs

    def output_hidden_states(self, xs: Tensor, mask: Tensor | None = None, causal: bool = False) -> list[Tensor]:
        """Candle's ``ClipEncoder::output_hidden_states``: every layer's output, first to last
        (transformers' ``hidden_states[1:]``). ``mask`` as :meth:`forward` (a float mask is added
        to the scores, as Candle's ``causal_attention_mask``)."""
        out = []
        for layer in self.layers:
            xs = layer(xs, mask, causal)
            out.append(xs)
        return out


class ClipTextEmbeddings(Module):
    """``token_embedding(ids) + position_embedding(0..S)``: ``(B, S) -> (B, S, C)``."""

    def __init__(self, token_embedding: Embedding, position_embedding: Embedding):
        self.token_embedding, self.position_embedding = token_embedding, position_embedding

    @staticmethod
    def load(vb: VarBuilder, cfg: ClipTextConfig) -> ClipTextEmbeddings:
        """Candle's ``ClipTextEmbeddings::new(vs, c)``: token and position tables."""
        return ClipTextEmbeddings(
            embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("token_embedding")),
            embedding(cfg.max_position_embeddings, cfg.hidden_size, vb.pp("position_embedding")),
        )

    def forward(self, input_ids: Tensor) -> Tensor:
        """``(B, S)`` ids in, ``(B, S, hidden)`` out."""
        s = input_ids.dim(1)
        pos = self.position_embedding.embeddings().narrow(0, 0, s)
        return self.token_embedding(input_ids).broadcast_add(pos)


class ClipTextTransformer(Module):
    """``text_model``: embeddings, causal encoder, ``final_layer_norm``; pooled at the EOS token."""

    def __init__(self, embeddings: ClipTextEmbeddings, encoder: ClipEncoder, final_layer_norm: LayerNorm,
                 eos_token_id: int | None, max_position_embeddings: int):  # fmt: skip
        self.embeddings, self.encoder, self.final_layer_norm = embeddings, encoder, final_layer_norm
        self.eos_token_id = None if eos_token_id is None else int(eos_token_id)
        self.max_position_embeddings = int(max_position_embeddings)

    @staticmethod
    def load(vb: VarBuilder, cfg: ClipTextConfig) -> ClipTextTransformer:
        """Candle's ``ClipTextTransformer::new(vs, c)``: embeddings, encoder and ``final_layer_norm``."""
        return ClipTextTransformer(
            ClipTextEmbeddings.load(vb.pp("embeddings"), cfg), ClipEncoder.load(vb.pp("encoder"), cfg),
            layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("final_layer_norm")), cfg.eos_token_id,
            cfg.max_position_embeddings,
        )  # fmt: skip

    @staticmethod
    def new(vb: VarBuilder, c: ClipTextConfig) -> ClipTextTransformer:
        """Candle's ``ClipTextTransformer::new(vb, &config)``."""
        return ClipTextTransformer.load(vb, c)

    def forward_with_mask(self, input_ids: Tensor, mask_after: int) -> Tensor:
        """Candle's ``forward_with_mask(input_ids, mask_after)``: the last hidden state ``(B, S, C)``
        (after ``final_layer_norm``) with causal attention that also ignores the keys after
        position ``mask_after`` (a ``mask_after`` of ``S - 1`` or more masks nothing more)."""
        self._check(input_ids)
        mask_after = int_arg(mask_after, "clip text_model forward_with_mask", "mask_after")
        if mask_after < 0:  # Candle's usize
            raise errors.Msg(f"clip text_model forward_with_mask: mask_after must be >= 0, got {mask_after}")
        s = input_ids.dim(1)
        mask = None
        if mask_after < s - 1:
            keep = (np.arange(s) <= mask_after).astype(np.uint8).reshape(1, 1, 1, s)
            mask = Tensor.new(keep, input_ids.device)
        return self.final_layer_norm(self.encoder(self.embeddings(input_ids), mask, causal=True))

    def _check(self, input_ids: Tensor) -> None:
        if not isinstance(input_ids, Tensor):
            raise errors.Msg(f"clip text_model: input_ids must be a Tensor (e.g. Tensor.new(ids)), got"
                             f" {type(input_ids).__name__}")  # fmt: skip
        if input_ids.rank != 2:
            raise errors.Msg(f"clip text_model: input_ids must be (batch, seq), got shape {input_ids.dims()}")
        s = input_ids.dim(1)
        if s == 0 or s > self.max_position_embeddings:
            raise errors.Msg(
                f"clip text_model: sequence length {s} must be in 1..{self.max_position_embeddings}"
                " (max_position_embeddings)"
            )

    def padding_mask(self, input_ids: Tensor, attention_mask: Any) -> Tensor | None:
        """transformers' ``attention_mask`` ``(B, S)`` (1: keep, 0: padding) of any dtype, float, integer
        or bool, as the ``(B, 1, 1, S)`` u8 key mask the encoder takes (nonzero keeps). An additive float
        mask (0 / -inf) goes to :class:`ClipEncoder` itself."""
        if attention_mask is None:
            return None
        shape = tuple(attention_mask.dims()) if isinstance(attention_mask, Tensor) else np.shape(attention_mask)
        if tuple(shape) != tuple(input_ids.dims()):
            raise errors.UnexpectedShape(
                "clip text_model: attention_mask must be (batch, seq) as input_ids", input_ids.dims(), shape
            )
        if isinstance(attention_mask, jax.Array):  # a jax array (a tracer under jit too): on device, as a Tensor
            attention_mask = Tensor(attention_mask)
        if isinstance(attention_mask, Tensor):
            keep = attention_mask.ne(0)
        else:
            keep = Tensor.new((np.asarray(attention_mask) != 0).astype(np.uint8), input_ids.device)
        return keep.unsqueeze(1).unsqueeze(1)

    def forward_hidden(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The last hidden state ``(B, S, C)`` after ``final_layer_norm``; ``attention_mask`` as
        :meth:`padding_mask` (PyTorch: ``CLIPTextTransformer(input_ids, attention_mask)``)."""
        self._check(input_ids)
        mask = self.padding_mask(input_ids, attention_mask)
        return self.final_layer_norm(self.encoder(self.embeddings(input_ids), mask, causal=True))

    def pool(self, hidden: Tensor, input_ids: Tensor) -> Tensor:
        """The hidden state at the EOS token (the largest id when ``eos_token_id == 2``, as transformers)."""
        ids = input_ids
        if self.eos_token_id == 2 or self.eos_token_id is None:
            idx = ids.argmax_keepdim(1)
        else:
            idx = ids.eq(Tensor.full(self.eos_token_id, ids.dims(), ids.device, ids.dtype)).argmax_keepdim(1)
        b, _, c = hidden.dims3()
        idx = idx.reshape((b, 1, 1)).broadcast_as((b, 1, c)).contiguous()
        return hidden.gather(idx, 1).squeeze(1)  # (B, C)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Pooled output ``(B, C)``."""
        return self.pool(self.forward_hidden(input_ids, attention_mask), input_ids)


class ClipVisionEmbeddings(Module):
    """Class token + ``patch_embedding`` (a stride-``patch`` Conv2d, no bias) + ``position_embedding``."""

    def __init__(self, class_embedding: Any, patch_embedding: Conv2d, position_embedding: Embedding,
                 image_size: int, num_channels: int):  # fmt: skip
        self.class_embedding = class_embedding
        self.patch_embedding, self.position_embedding = patch_embedding, position_embedding
        self.image_size, self.num_channels = int(image_size), int(num_channels)

    @staticmethod
    def load(vb: VarBuilder, cfg: ClipVisionConfig) -> ClipVisionEmbeddings:
        """Candle's ``ClipVisionEmbeddings::new(vs, c)``: class embedding, patch convolution, positions."""
        n_pos = (cfg.image_size // cfg.patch_size) ** 2 + 1
        conv = conv2d_no_bias(cfg.num_channels, cfg.hidden_size, cfg.patch_size,
                              Conv2dConfig(stride=cfg.patch_size), vb.pp("patch_embedding"))  # fmt: skip
        return ClipVisionEmbeddings(
            vb.get((cfg.hidden_size,), "class_embedding"), conv,
            embedding(n_pos, cfg.hidden_size, vb.pp("position_embedding")), cfg.image_size, cfg.num_channels,
        )  # fmt: skip

    def forward(self, pixel_values: Tensor) -> Tensor:
        """``(B, C, image_size, image_size)`` pixels in, ``(B, 1 + patches, hidden)`` out."""
        _check_pixels("clip vision_model", pixel_values, self.num_channels, self.image_size)
        b = pixel_values.dim(0)
        patches = self.patch_embedding(pixel_values).flatten_from(2).transpose(1, 2)  # (B, N, C)
        c = patches.dim(2)
        cls = self.class_embedding.reshape((1, 1, c)).broadcast_as((b, 1, c)).to_dtype(patches.dtype)
        xs = Tensor.cat([cls, patches], 1)
        return xs.broadcast_add(self.position_embedding.embeddings().unsqueeze(0))


def _check_pixels(where: str, x: Any, channels: int, size: int) -> None:
    """Reject an image batch that is not a ``(B, channels, size, size)`` float Tensor."""
    if not isinstance(x, Tensor):
        raise errors.Msg(f"{where}: pixel_values must be a Tensor (e.g. Tensor.new(pixels)), got {type(x).__name__}")
    shape = tuple(x.dims()) if isinstance(x, Tensor) else tuple(getattr(x, "shape", ()))
    if len(shape) != 4 or shape[1] != channels or shape[2] != size or shape[3] != size:
        raise errors.UnexpectedShape(
            f"{where}: pixel_values must be (batch, {channels}, {size}, {size}) (resize the image first,"
            " e.g. with clip.preprocess)", (shape[0] if len(shape) == 4 else 1, channels, size, size), shape,
        )  # fmt: skip
    if isinstance(x, Tensor) and not x.dtype.is_float():
        raise errors.Msg(f"{where}: pixel_values must be a float tensor, got {x.dtype.as_str()}")


class ClipVisionTransformer(Module):
    """``vision_model``: embeddings, ``pre_layrnorm`` (transformers' spelling), encoder,
    ``post_layernorm`` on the class token."""

    def __init__(self, embeddings: ClipVisionEmbeddings, pre_layrnorm: LayerNorm, encoder: ClipEncoder,
                 post_layernorm: LayerNorm):  # fmt: skip
        self.embeddings, self.pre_layrnorm = embeddings, pre_layrnorm
        self.encoder, self.post_layernorm = encoder, post_layernorm

    @staticmethod
    def load(vb: VarBuilder, cfg: ClipVisionConfig) -> ClipVisionTransformer:
        """Candle's ``ClipVisionTransformer::new(vs, c)``: embeddings, ``pre_layrnorm``, encoder, ``post_layernorm``."""
        h, eps = cfg.hidden_size, cfg.layer_norm_eps
        return ClipVisionTransformer(
            ClipVisionEmbeddings.load(vb.pp("embeddings"), cfg), layer_norm(h, eps, vb.pp("pre_layrnorm")),
            ClipEncoder.load(vb.pp("encoder"), cfg), layer_norm(h, eps, vb.pp("post_layernorm")),
        )  # fmt: skip

    @staticmethod
    def new(vb: VarBuilder, c: ClipVisionConfig) -> ClipVisionTransformer:
        """Candle's ``ClipVisionTransformer::new(vb, &config)``."""
        return ClipVisionTransformer.load(vb, c)

    def output_hidden_states(self, pixel_values: Tensor) -> list[Tensor]:
        """Candle's ``ClipVisionTransformer::output_hidden_states``: every encoder layer's output
        ``(B, 1 + N, C)``, then the pooled output ``(B, C)`` (``post_layernorm`` of the class token)."""
        out = self.encoder.output_hidden_states(self.pre_layrnorm(self.embeddings(pixel_values)))
        out.append(self.post_layernorm(out[-1].i((slice(None), 0))))
        return out

    def forward_hidden(self, pixel_values: Tensor) -> Tensor:
        """The encoder's last hidden state ``(B, 1 + N, C)``."""
        return self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)))

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Pooled output ``(B, C)``: ``post_layernorm`` of the class token."""
        return self.post_layernorm(self.forward_hidden(pixel_values).i((slice(None), 0)))


class ClipModel(Module):
    """``CLIPModel``: ``text_model``, ``vision_model``, ``text_projection``, ``visual_projection``,
    ``logit_scale``. Candle: ``ClipModel::new(vb, &config)``; here ``ClipModel.load(vb, config)``."""

    def __init__(self, text_model: ClipTextTransformer, vision_model: ClipVisionTransformer,
                 visual_projection: Linear, text_projection: Linear, logit_scale: Any, path: str = ""):  # fmt: skip
        self.text_model, self.vision_model = text_model, vision_model
        self.visual_projection, self.text_projection = visual_projection, text_projection
        self.logit_scale = logit_scale
        self.path = path  # the checkpoint folder, where zero_shot finds tokenizer.json

    @staticmethod
    def load(vb: VarBuilder, config: ClipConfig) -> ClipModel:
        """Candle's ``ClipModel::new(vs, c)``: both towers, both projections and ``logit_scale``."""
        t, v, p = config.text_config, config.vision_config, config.projection_dim
        scale = vb.get_with_hints((), "logit_scale", Const(config.logit_scale_init_value))
        return ClipModel(
            ClipTextTransformer.load(vb.pp("text_model"), t), ClipVisionTransformer.load(vb.pp("vision_model"), v),
            linear_no_bias(v.hidden_size, p, vb.pp("visual_projection")),
            linear_no_bias(t.hidden_size, p, vb.pp("text_projection")), scale, checkpoint_dir(vb),
        )  # fmt: skip

    new = load

    @staticmethod
    def from_pretrained(model_dir: str | os.PathLike, dtype: Any = DType.F32, device: Any = None) -> ClipModel:
        """A checkpoint folder: ``config.json`` and ``*.safetensors``; its ``tokenizer.json`` is
        then :func:`zero_shot`'s default tokenizer."""
        d = os.fspath(model_dir)
        vb = VarBuilder.from_mmaped_safetensors(safetensors_files(d), dtype, Device.coerce(device))
        model = ClipModel.load(vb, ClipConfig.from_json_file(os.path.join(d, "config.json")))
        model.path = d
        return model

    @property
    def image_size(self) -> int:
        """The side of the square images the vision tower takes."""
        return self.vision_model.embeddings.image_size

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Projected text embeddings ``(B, projection_dim)`` (not normalised); ``attention_mask`` ``(B, S)``:
        1 keeps, 0 pads, in any dtype (transformers' ``get_text_features``)."""
        return self.text_projection(self.text_model(input_ids, attention_mask))

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        """Projected image embeddings ``(B, projection_dim)`` (not normalised)."""
        return self.visual_projection(self.vision_model(pixel_values))

    def forward(
        self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(logits_per_text (T, I), logits_per_image (I, T))``: cosine similarities times ``exp(logit_scale)``."""
        img = _l2_normalize(self.get_image_features(pixel_values))
        txt = _l2_normalize(self.get_text_features(input_ids, attention_mask))
        logits_per_text = txt.matmul(img.t()).broadcast_mul(self.logit_scale.exp())
        return logits_per_text, logits_per_text.t()


def div_l2_norm(v: Tensor) -> Tensor:
    """Candle's ``clip::div_l2_norm``: ``v`` divided by its L2 norm over the last dim."""
    return v.broadcast_div(v.sqr().sum_keepdim(-1).sqrt())


_l2_normalize = div_l2_norm


# ------------------------------------------------------------------------------------------------
# compiled entry points (weights are jit arguments)
# ------------------------------------------------------------------------------------------------
# Each program gets only the weights it reads (flattening and passing the other tower's ~200 arrays
# cost ~1.7 ms a call), and the patch convolution's kernel in the layout XLA's convolution reads
# (nn.conv.hwio_kernels: no transpose per call).
@jax.jit
def _forward(model: ClipModel, kernels: list, pixel_values: Tensor, input_ids: Tensor,
             attention_mask: Tensor | None) -> Any:  # fmt: skip
    return with_hwio_kernels(model, kernels).forward(pixel_values, input_ids, attention_mask)


@jax.jit
def _text(text_model: Any, text_projection: Linear, input_ids: Tensor, attention_mask: Tensor | None) -> Any:
    return text_projection(text_model(input_ids, attention_mask))  # ClipModel.get_text_features


@jax.jit
def _image(vision_model: Any, visual_projection: Linear, kernels: list, pixel_values: Tensor) -> Any:
    return visual_projection(with_hwio_kernels(vision_model, kernels)(pixel_values))  # get_image_features


def _check_ids(model: ClipModel, input_ids: Tensor) -> None:
    """Shape and, when concrete, the values of ``input_ids`` (the compiled lookup would clamp them)."""
    model.text_model._check(input_ids)
    vocab = model.text_model.embeddings.token_embedding.weight.shape[0]
    check_token_ids(input_ids, vocab, "clip text_model: token ids")


def forward_jit(model: ClipModel, pixel_values: Tensor, input_ids: Tensor,
                attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """:meth:`ClipModel.forward` compiled (one program per input shape)."""
    _check_pixels("clip vision_model", pixel_values, model.vision_model.embeddings.num_channels, model.image_size)
    _check_ids(model, input_ids)
    return _forward(model, hwio_kernels(model), pixel_values, input_ids, attention_mask)


def text_features_jit(model: ClipModel, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """:meth:`ClipModel.get_text_features` compiled."""
    _check_ids(model, input_ids)
    return _text(model.text_model, model.text_projection, input_ids, attention_mask)


def image_features_jit(model: ClipModel, pixel_values: Tensor) -> Tensor:
    """:meth:`ClipModel.get_image_features` compiled."""
    _check_pixels("clip vision_model", pixel_values, model.vision_model.embeddings.num_channels, model.image_size)
    return _image(model.vision_model, model.visual_projection, hwio_kernels(model.vision_model), pixel_values)


# ------------------------------------------------------------------------------------------------
# zero-shot classification: CLIPImageProcessor, CLIPTokenizer padding, softmax over the labels
# ------------------------------------------------------------------------------------------------
def preprocess(image: Any, size: int = 224, crop: int | None = None) -> Tensor:
    """transformers' ``CLIPImageProcessor``: shortest side to ``size`` (bicubic), center crop
    ``crop`` (default ``size``), OpenAI's mean/std -> ``(1, 3, crop, crop)`` f32. ``image``: a path,
    PIL image, ``(H, W, 3)`` uint8 array or ``(3, H, W)`` u8 Tensor; float pixels are taken as
    preprocessed and pass through, which must then be ``(3, crop, crop)`` or ``(B, 3, crop, crop)``."""
    pixels = vision.as_pixel_batch(image, size if crop is None else crop, "clip.preprocess")
    if pixels is not None:
        return pixels
    img = vision.as_image(image, "clip.preprocess")
    img = vision.center_crop(vision.resize_shortest(img, size, "bicubic"), size if crop is None else crop)
    return vision.normalize(img, vision.OPENAI_CLIP_MEAN, vision.OPENAI_CLIP_STD).unsqueeze(0)


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer or candlejax.tokenizer.Tokenizer
        return [list(getattr(e, "ids", e)) for e in tokenizer.encode_batch(list(texts))]
    if callable(tokenizer):  # a transformers tokenizer or any text -> ids function
        out = [tokenizer(t) for t in texts]
        return [list(o["input_ids"] if isinstance(o, dict) or hasattr(o, "keys") else o) for o in out]
    raise errors.Msg(
        f"clip: tokenizer must be a tokenizers.Tokenizer, a tokenizer.json path or a callable, got {tokenizer!r}"
    )


def tokenize(tokenizer: Any, texts: Sequence[str], max_len: int, bucket: bool = False) -> tuple[Tensor, Tensor]:
    """``(input_ids (N, S) u32, attention_mask (N, S) u8)``; each row padded with its last id (the
    EOS); rows longer than ``max_len`` keep their first ``max_len - 1`` ids and their last one.
    ``bucket``: ``N`` padded to a power of two with copies of the last row, ``S`` to a power of two
    of at least 8 (at most ``max_len``), so that label lists of new sizes reuse compiled programs
    (the pooled rows are unchanged: causal attention, padding keys masked, the EOS / largest id
    first found where it was)."""
    rows = _encode(tokenizer_from(tokenizer, None, "clip.tokenize"), texts)
    for i, r in enumerate(rows):
        if not r:
            raise errors.Msg(f"clip: label {i} ({texts[i]!r}) tokenises to no ids")
        if len(r) > max_len:
            rows[i] = [*r[: max_len - 1], r[-1]]
    s = max(len(r) for r in rows)
    n = len(rows)
    if bucket:
        s = max(s, min(max(8, 1 << (s - 1).bit_length()), max_len))
        n = 1 << (n - 1).bit_length()
    rows += [rows[-1]] * (n - len(rows))
    ids = np.array([r + [r[-1]] * (s - len(r)) for r in rows], np.uint32)
    mask = np.array([[1] * len(r) + [0] * (s - len(r)) for r in rows], np.uint8)
    return Tensor.from_numpy(ids), Tensor.from_numpy(mask)


@jax.jit
def _zero_shot(model: ClipModel, kernels: list, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor,
               n: Any) -> Any:  # fmt: skip
    """Softmax over the first ``n`` labels of ``logits_per_image`` (the padded label columns at -inf)."""
    _, logits = with_hwio_kernels(model, kernels).forward(pixel_values, input_ids, attention_mask)
    logits = unwrap(logits)
    return jax.nn.softmax(jnp.where(jnp.arange(logits.shape[-1]) < n, logits, -jnp.inf), axis=-1)


def zero_shot(model: ClipModel, image: Any, labels: Sequence[str], tokenizer: Any = None) -> Tensor:
    """Probabilities of each label for the image: ``(len(labels),)`` f32 (``(B, len(labels))`` for a
    batch of preprocessed images). Candle: the ``clip`` example. ``image``: see :func:`preprocess`;
    ``tokenizer``: a ``tokenizers.Tokenizer``, the path of ``tokenizer.json`` (or its folder) or a
    callable text -> ids; by default the ``tokenizer.json`` of the checkpoint folder the model was
    loaded from (:meth:`ClipModel.from_pretrained`, or ``load`` from its safetensors)."""
    if isinstance(labels, str):
        raise errors.Msg("clip.zero_shot: labels must be a list of strings, got one string (split it first)")
    labels = list(labels)
    if not labels:
        raise errors.Msg("clip.zero_shot: the label list is empty; give at least one label")
    tok = tokenizer_from(tokenizer, model.path, "clip.zero_shot")
    pixels = preprocess(image, model.image_size)
    ids, mask = tokenize(tok, labels, model.text_model.max_position_embeddings, bucket=True)
    pixels = pixels.to_dtype(model.logit_scale.dtype)
    _check_pixels("clip vision_model", pixels, model.vision_model.embeddings.num_channels, model.image_size)
    _check_ids(model, ids)
    probs = _zero_shot(model, hwio_kernels(model), pixels, ids, mask, len(labels))  # (B, padded N)
    probs = np.asarray(probs)[:, : len(labels)]  # (B, N), sliced on the host: no program per label count
    single = not isinstance(image, Tensor) or image.rank == 3 or image.dim(0) == 1
    return Tensor.new(probs[0] if single and probs.shape[0] == 1 else probs, pixels.device)


if __name__ == "__main__":
    from candlejax.cli.zero_shot import clip_main

    raise SystemExit(clip_main())
