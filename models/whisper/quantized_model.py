"""Whisper from a GGUF file (~ candle-transformers' ``whisper/quantized_model.rs``).

The float model's classes (:mod:`.model`) with Candle's quantized layers: every linear layer is a
:class:`~candlejax.nn.quantized.QLinear` over the file's (GGML-quantised or F32/F16) weight; the
convolutions, layer norms, token embedding (also the tied output projection of ``final_linear``)
and the decoder's positional embedding are dequantised to F32 at load; the encoder's positional
embedding is the sinusoid table (the file's ``model.encoder.embed_positions.weight`` is not read).
Tensor names are transformers' (``model.encoder.conv1.weight``,
``model.decoder.layers.0.self_attn.q_proj.weight``, ...), as Candle's ``tensor-tools quantize``
writes them from a ``model.safetensors``. Candle's whisper example::

    let vb = candle_transformers::quantized_var_builder::VarBuilder::from_gguf(&weights_filename, &device)?;
    let model = m::quantized_model::Whisper::load(&vb, config)?;

is here::

    from candlejax.models.whisper import Config, quantized_model
    vb = quantized_model.VarBuilder.from_gguf("model-tiny-en-q80.gguf", Device.Cpu)
    model = quantized_model.Whisper.load(vb, Config.from_json_file("config.json"))
    audio = model.encoder.forward(mel, True)                    # (B, n_mels, 3000) -> (B, 1500, d_model)
    ys = model.decoder.forward(tokens, audio, True)             # (B, T) -> (B, T, d_model)
    logits = model.decoder.final_linear(ys)                     # (B, T, vocab)
    model.reset_kv_cache()

The model is a :class:`candlejax.models.whisper.Whisper`, so the compiled decoding runs on it too:
``whisper.transcribe(quantized_model.Whisper.from_pretrained("model.gguf"), "speech.wav")`` (with
``config.json`` and ``tokenizer.json`` beside the file).
"""

from __future__ import annotations

import os
from typing import Any

from candlejax import errors
from candlejax.device import Device
from candlejax.models.loading import check_gguf_vb, gguf_file
from candlejax.models.quantized_var_builder import VarBuilder
from candlejax.models.whisper import model
from candlejax.models.whisper.model import AudioEncoder, Config, TextDecoder, sinusoids
from candlejax.nn.quantized import QLinear, dequantized, linear_b

__all__ = ["AudioEncoder", "Config", "TextDecoder", "VarBuilder", "Whisper", "sinusoids"]


def _linear_loader(vb: VarBuilder) -> model.LinearLoader:
    """Candle's ``quantized_nn::linear`` / ``linear_no_bias`` for the float loaders: the weight at the
    float builder's prefix kept quantised, the bias dequantised."""
    root = VarBuilder.from_content(vb.content, vb.device)

    def linear(at: Any, n_in: int, n_out: int, bias: bool) -> QLinear:
        return linear_b(n_in, n_out, bias, root.pp(at.prefix()))

    return linear


class Whisper(model.Whisper):
    """Candle's ``whisper::quantized_model::Whisper``: ``encoder``, ``decoder`` and ``config``, with the
    float model's methods and KV-cache semantics (``decoder.forward(tokens, audio, flush_kv_cache)``)."""

    @staticmethod
    def load(vb: VarBuilder, config: Config) -> Whisper:  # type: ignore[override]
        """Candle's ``Whisper::load(&vb, config)``: ``vb`` from :meth:`VarBuilder.from_gguf`, names under
        ``model.encoder`` / ``model.decoder``. A missing or wrongly shaped tensor raises naming it."""
        check_gguf_vb(vb, "whisper.quantized_model.Whisper.load", "Whisper.load(vb, config) (Candle's"
                      " Whisper::load(&vb, config))", "candlejax.models.whisper.Whisper.load")  # fmt: skip
        if not isinstance(config, Config):
            raise errors.InvalidArgument("whisper.quantized_model.Whisper.load: config must be a whisper.Config,"
                                         f" got {type(config).__name__}")  # fmt: skip
        dv, linear = dequantized(vb), _linear_loader(vb)
        pos = sinusoids(config.max_source_positions, config.d_model, vb.device)
        return Whisper(AudioEncoder.load(dv.pp("model.encoder"), config, linear, pos),
                       TextDecoder.load(dv.pp("model.decoder"), config, linear, model._proj_out(dv, config, linear)),
                       config)  # fmt: skip

    @staticmethod
    def from_pretrained(  # type: ignore[override]
        path: str | os.PathLike, device: Any = None, *, config: Config | str | os.PathLike | None = None
    ) -> Whisper:
        """Load a GGUF file, or the one ``.gguf`` of a folder; ``config`` (a :class:`Config` or a JSON
        path) defaults to the ``config.json`` beside it. ``model.path`` is the folder, where
        :func:`~candlejax.models.whisper.transcribe` looks for ``tokenizer.json``."""
        path, folder = gguf_file(path, "whisper")
        if not isinstance(config, Config):
            cfg_path = os.fspath(config) if config is not None else os.path.join(folder, "config.json")
            if not os.path.isfile(cfg_path):
                raise errors.Msg(f"whisper: no config {cfg_path!r} for {path!r}; pass config=Config or its path")
            config = Config.from_json_file(cfg_path)
        m = Whisper.load(VarBuilder.from_gguf(path, Device.Cpu if device is None else device), config)
        m.path = folder
        return m
