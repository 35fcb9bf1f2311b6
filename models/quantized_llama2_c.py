"""The llama2.c model over quantized (GGUF) weights. Candle:
``candle-transformers/src/models/quantized_llama2_c.rs``.

The same blocks, rotary and :class:`~candlejax.models.llama2_c.Cache` as
:mod:`candlejax.models.llama2_c`, with the layers of :mod:`candlejax.models.quantized_nn`
(``linear_no_bias``, ``Embedding``, ``RmsNorm``): weights stay quantized and are expanded inside the
compiled step. Tensor names are those of ``TransformerWeights.var_builder`` (what Candle's
tensor-tools writes from it): ``model.embed_tokens.weight``, ``model.layers.N.self_attn.q_proj.weight``,
..., ``lm_head.weight``, ``rot.freq_cis_real`` / ``rot.freq_cis_imag``.

>>> vb = VarBuilder.from_gguf("stories15M_q80.gguf", Device.Cpu)
>>> config = Config.tiny_15m()
>>> cache = Cache.new(True, config, vb.pp("rot"))    # the tables, dequantized
>>> model = QLlama.load(vb, config)
>>> logits = model.forward(Tensor.new([[1, 403, 411]], Device.Cpu), 0, cache)   # (1, 3, vocab)
"""

from __future__ import annotations

from candlejax.dtype import DType
from candlejax.models.llama2_c import Cache, Config, Llama, _check_config, _layer
from candlejax.models.quantized_nn import Embedding, RmsNorm, linear_no_bias
from candlejax.models.quantized_var_builder import VarBuilder

__all__ = ["Cache", "Config", "QLlama", "VarBuilder"]


class QLlama(Llama):
    """Candle's ``quantized_llama2_c::QLlama``: :class:`candlejax.models.llama2_c.Llama` whose
    embedding, linear layers and norms come from a quantized :class:`VarBuilder`."""

    @classmethod
    def load(cls, vb: VarBuilder, cfg: Config) -> QLlama:  # type: ignore[override]
        """Candle's ``QLlama::load(vb, cfg)`` (``vb``: :meth:`VarBuilder.from_gguf`)."""
        _check_config(cfg)
        wte = Embedding.new(cfg.vocab_size, cfg.dim, vb.pp("model.embed_tokens"))
        lm_head = linear_no_bias(cfg.dim, cfg.vocab_size, vb.pp("lm_head"))
        ln_f = RmsNorm.new(cfg.dim, cfg.norm_eps, vb.pp("model.norm"))
        blocks = [_layer(cfg, vb.pp(f"model.layers.{i}"), linear_no_bias, RmsNorm.new) for i in range(cfg.n_layers)]
        return cls(wte, blocks, ln_f, lm_head, cfg)

    @property
    def dtype(self) -> DType:  # the activations (and the KV cache) are f32
        """The activations' dtype (and the KV cache's): always F32."""
        return DType.F32
