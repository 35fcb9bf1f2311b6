"""BLIP's text decoder from a GGUF file (~ candle-transformers' ``models::quantized_blip_text``).

The float decoder's classes (:mod:`candlejax.models.blip_text`) with Candle's quantized layers:
every linear layer, the LM head ``cls.predictions.decoder`` included, is a
:class:`~candlejax.nn.quantized.QLinear` over the file's weight (GGML-quantised or F32/F16), its bias
dequantised; the layer norms and the word and position embeddings are dequantised to F32 at load, as
Candle's ``quantized_nn::{layer_norm, Embedding}`` do. Tensor names are transformers'
(``bert.encoder.layer.0.crossattention.self.key.weight``, ``cls.predictions.bias``, ...), as
Candle's ``tensor-tools quantize`` writes them from a ``model.safetensors``::

    vb = VarBuilder.from_gguf("blip-image-captioning-large-q4k.gguf", Device.Cpu)
    decoder = TextLMHeadModel.new(config.text_config, vb.pp("text_decoder"))  # Candle's stateful forward
    logits = decoder.forward(input_ids, image_embeds)   # (B, S, vocab); the next call continues the sequence
    decoder.reset_kv_cache()

``TextLMHeadModel.load(vb, cfg)`` gives the module itself, a subclass of
:class:`candlejax.models.blip_text.TextLMHeadModel`: its ``forward`` is uncached, and the compiled
:func:`~candlejax.models.blip_text.step` (what :func:`candlejax.models.blip.caption` runs) takes it.
"""

from __future__ import annotations

from candlejax.models import blip_text
from candlejax.models.blip_text import Config, LinearLoader, StatefulTextDecoder
from candlejax.models.loading import check_gguf_vb
from candlejax.models.quantized_var_builder import VarBuilder
from candlejax.nn import VarBuilder as FloatVarBuilder
from candlejax.nn.quantized import QLinear, dequantized
from candlejax.nn.quantized import linear as qlinear
from candlejax.tensor import Tensor

__all__ = ["Config", "TextLMHeadModel", "TextPooler", "VarBuilder", "float_builder"]


def _linear_loader(vb: VarBuilder) -> LinearLoader:
    """The float loaders' ``linear(in, out, float_vb, bias=None)`` over ``vb``'s file: Candle's
    ``quantized_nn::linear``, the ``weight`` at ``float_vb``'s prefix kept as stored, the ``bias``
    dequantised (or the given one, the LM head's)."""
    root = VarBuilder.from_content(vb.content, vb.device)

    def linear(in_dim: int, out_dim: int, at: FloatVarBuilder, bias: Tensor | None = None) -> QLinear:
        q = root.pp(at.prefix())
        if bias is None:
            return qlinear(in_dim, out_dim, q)
        return QLinear.from_qtensor(q.get((out_dim, in_dim), "weight"), bias)

    return linear


def float_builder(vb: VarBuilder) -> tuple[FloatVarBuilder, LinearLoader]:
    """The float loaders' arguments for a GGUF builder: a float ``VarBuilder`` at ``vb``'s prefix that
    dequantises every tensor it reads (:func:`candlejax.nn.quantized.dequantized`), and the ``linear``
    loader that builds ``QLinear`` layers."""
    return dequantized(vb), _linear_loader(vb)


class TextPooler(blip_text.TextPooler):
    """Candle's ``quantized_blip_text::TextPooler``: ``tanh(dense(x[:, 0]))`` with a quantised ``dense``."""

    @classmethod
    def new(cls, cfg: Config, vb: VarBuilder) -> TextPooler:
        """Candle's ``TextPooler::new(&cfg, vb)`` over a GGUF builder."""
        check_gguf_vb(vb, "quantized_blip_text.TextPooler.new", "TextPooler.new(cfg, vb)", "blip_text.TextPooler")
        return super().new(cfg, *float_builder(vb))


class TextLMHeadModel(blip_text.TextLMHeadModel):
    """Candle's ``quantized_blip_text::TextLMHeadModel``: ``bert`` and ``cls.predictions`` with
    quantised linear layers (see the module docstring)."""

    @classmethod
    def new(cls, cfg: Config, vb: VarBuilder) -> StatefulTextDecoder:
        """Candle's ``TextLMHeadModel::new(&cfg, vb)``: the decoder with Candle's stateful ``forward``."""
        check_gguf_vb(vb, "quantized_blip_text.TextLMHeadModel.new", "TextLMHeadModel.new(cfg, vb)",
                      "blip_text.TextLMHeadModel")  # fmt: skip
        return StatefulTextDecoder(cls.load(vb, cfg))

    @classmethod
    def load(cls, vb: VarBuilder, cfg: Config) -> TextLMHeadModel:
        """The decoder module from a GGUF builder (``vb`` at ``text_decoder``)."""
        check_gguf_vb(vb, "quantized_blip_text.TextLMHeadModel.load", "TextLMHeadModel.new(cfg, vb)",
                      "blip_text.TextLMHeadModel")  # fmt: skip
        fvb, linear = float_builder(vb)
        return super().load(fvb, cfg, linear)
