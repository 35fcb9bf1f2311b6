"""LLaMA (and Mistral, Qwen2): decoder-only transformer with RMSNorm, SwiGLU, rotary positions and
grouped-query attention.

Paper: "LLaMA: Open and Efficient Foundation Language Models", https://arxiv.org/abs/2302.13971
(Llama 2: https://arxiv.org/abs/2307.09288, Llama 3: https://arxiv.org/abs/2407.21783).
Mirrors Hugging Face ``transformers/models/llama/modeling_llama.py`` (``LlamaForCausalLM``), and
``MistralForCausalLM`` (sliding-window attention) and ``Qwen2ForCausalLM`` (q/k/v biases, per-layer
sliding windows): the weight names are the checkpoint's (``model.layers.0.self_attn.q_proj.weight``),
read from ``config.json`` + safetensors. Candle: ``candle-transformers/src/models/llama.rs``.

Two ways to run it:

* stateful, as in Candle: ``logits = model.forward(tokens, index_pos)`` with ``tokens`` (batch,
  seq) u32; returns (batch, vocab) logits of the last position and keeps its KV cache between
  calls (``index_pos=0`` starts over);
* pure, for ``jax.jit`` and :mod:`candlejax.generation`: ``logits, cache = step(params, cache,
  tokens, pos)`` where ``params`` is the model (a pytree of weights), ``cache`` a preallocated
  :class:`Cache` (``model.new_cache(batch, max_seq_len)``) and ``pos`` an int32 scalar, which may be
  traced: one compiled decode step serves every position.

>>> config = Config.from_json_file("SmolLM2-135M/config.json")
>>> vb = VarBuilder.from_mmaped_safetensors(["SmolLM2-135M/model.safetensors"], DType.F32, Device.Cpu)
>>> model = Llama.load(vb, config)
>>> step_jit = jax.jit(step, donate_argnums=1)
>>> logits, cache = step_jit(model, model.new_cache(1, 256), prompt_ids, jnp.int32(0))

Text generation with a tokenizer: :class:`candlejax.pipelines.TextGeneration`; command line:
``candlejax generate`` (:mod:`candlejax.cli`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from candlejax import errors
from candlejax.device import Device
from candlejax.distributed import llama_tp_rules as tp_rules  # Megatron-style split over "model"
from candlejax.dtype import DType, to_dtype
from candlejax.generation import check_prompt_not_text, generate, prefill_bucket, prefill_chunks
from candlejax.models.llama_config import (
    DEFAULT_MAX_SEQ_LEN,
    Config,
    Llama3RopeConfig,
    Llama3RopeType,
    LlamaConfig,
    LlamaEosToks,
)
from candlejax.models.llama_forward_cache import ForwardCache, forward_state
from candlejax.models.loading import check_architecture, generation_eos_token_ids, host_array
from candlejax.nn import (
    HostState,
    Linear,
    Module,
    RmsNorm,
    RotaryEmbedding,
    StackedKvCache,
    check_continuation,
    check_token_ids,
    embedding,
    linear_b,
    ops,
    rms_norm,
)
from candlejax.nn.quantized import scan_layers
from candlejax.nn.rotary import rope_inv_freq as _rope_inv_freq
from candlejax.nn.state import traced
from candlejax.nn.var_builder import VarBuilder
from candlejax.tensor import int_arg, unwrap, wrap
from candlejax.xla import GENERATION_OPTIONS

__all__ = [
    "DEFAULT_MAX_SEQ_LEN", "SUPPORTED", "Attached", "Block", "Cache", "CausalSelfAttention", "Config", "ForwardCache",
    "Llama", "Llama3RopeConfig", "Llama3RopeType", "LlamaConfig", "LlamaEosToks", "Mlp", "RmsNorm",
    "forward_all", "rope_inv_freq", "rotary_for", "step", "tp_rules",
]  # fmt: skip

#: model_type -> architectures this file implements
SUPPORTED = {
    "llama": ("LlamaForCausalLM",),
    "mistral": ("MistralForCausalLM",),
    "qwen2": ("Qwen2ForCausalLM",),
}

class Cache(StackedKvCache):
    """Every layer's keys and values, ``(layers, B, Hkv, max_seq_len, head_dim)``: the
    :class:`~candlejax.nn.StackedKvCache` that :func:`step` takes (``model.new_cache(batch,
    max_seq_len)``).

    ``Cache.new(use_kv_cache, dtype, config, device)``, Candle's ``llama::Cache::new``, gives the
    :class:`ForwardCache` that ``model.forward(tokens, index_pos, cache)`` updates in place.
    """

    def __init__(self, k: Any, v: Any = None, *candle_args: Any):
        if isinstance(k, bool) or v is None or candle_args:
            raise errors.ArgumentType("llama.Cache(k, v) holds two buffers; Candle's Cache::new(use_kv_cache, dtype,"
                                      " config, device) is llama.Cache.new(True, dtype, config, device)")  # fmt: skip
        super().__init__(k, v)

    @classmethod
    def new(cls, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Candle's ``Cache::new(use_kv_cache, dtype, config, device)`` (a ``ForwardCache``), or the stacked cache's
        ``new``."""
        if (args and isinstance(args[0], bool)) or "use_kv_cache" in kwargs:
            return ForwardCache(*args, **kwargs)
        return super().new(*args, **kwargs)


# ------------------------------------------------------------------------------------------------
# rotary tables
# ------------------------------------------------------------------------------------------------
def rope_inv_freq(config: Config) -> np.ndarray:
    """The rotary inverse frequencies ``(head_dim / 2,)`` in float32, as transformers computes them
    (``default``, ``linear`` and ``llama3`` ``rope_type``)."""
    return _rope_inv_freq(int(config.head_dim), float(config.rope_theta), config.rope_scaling,  # type: ignore[arg-type]
                          config.max_position_embeddings)  # fmt: skip


def rotary_for(cfg: Config, inv_freq: Any = None) -> RotaryEmbedding:
    """transformers' rotary tables (positions times ``inv_freq`` in f32), on ``(B, T, H, D)``."""
    return RotaryEmbedding(int(cfg.head_dim), cfg.max_position_embeddings, cfg.rope_theta,  # type: ignore[arg-type]
                           interleaved=cfg.rope_interleaved, layout="bthd", rope_scaling=cfg.rope_scaling,
                           inv_freq=rope_inv_freq(cfg) if inv_freq is None else inv_freq, precompute=False)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# layers, bottom-up
# ------------------------------------------------------------------------------------------------
def _linear(in_dim: int, out_dim: int, bias: bool, vb: VarBuilder) -> Linear:
    """Candle's ``linear_no_bias`` / ``linear_b``: a fresh VarMap initialises the weight Kaiming-normal."""
    return linear_b(in_dim, out_dim, bias, vb)


class CausalSelfAttention(Module):
    """``LlamaAttention``: q/k/v projections, rotary positions, grouped-query attention over the
    preallocated cache (``StackedKvCache.attend`` in the ``(B, T, H, D)`` layout, reading the cache in its own),
    output projection. With ``k_proj``/``v_proj`` ``None``, ``q_proj`` holds the q, k and v rows
    stacked (one product; the quantized GGUF model does this). ``window``: sliding-window size."""

    def __init__(self, q_proj: Any, k_proj: Any, v_proj: Any, o_proj: Any, num_heads: int, num_kv_heads: int,
                 head_dim: int, window: int | None = None):  # fmt: skip
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = q_proj, k_proj, v_proj, o_proj
        self.num_heads = int(num_heads)
        self.num_kv_heads = int(num_kv_heads)
        self.head_dim = int(head_dim)
        self.window = None if window is None else int(window)

    @staticmethod
    def load(vb: VarBuilder, cfg: Config, layer: int = 0) -> CausalSelfAttention:
        """Candle's ``CausalSelfAttention::load(vb, cfg)``: ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj``."""
        h, d = cfg.hidden_size, int(cfg.head_dim)  # type: ignore[arg-type]
        nq, nkv = cfg.num_attention_heads, int(cfg.num_key_value_heads)  # type: ignore[arg-type]
        qb = bool(cfg.qkv_bias)
        return CausalSelfAttention(
            _linear(h, nq * d, qb, vb.pp("q_proj")), _linear(h, nkv * d, qb, vb.pp("k_proj")),
            _linear(h, nkv * d, qb, vb.pp("v_proj")), _linear(nq * d, h, cfg.attention_bias, vb.pp("o_proj")),
            nq, nkv, d, cfg.window(layer),
        )  # fmt: skip

    def forward(self, x: Any, rotary: RotaryEmbedding, cos: Any, sin: Any, cache: Cache, layer: Any,
                pos: Any) -> tuple[Any, Cache]:  # fmt: skip
        """x ``(B, T, hidden)``; cos/sin ``(T, head_dim/2)`` from ``rotary.tables``; ``cache`` the
        stacked caches, of which this layer writes slot ``layer`` at ``pos``.
        Returns ``(out (B, T, hidden), cache)``."""
        b, t, _ = x.shape
        nh, nkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        if self.k_proj is None:  # q_proj holds the q, k and v rows stacked: one product
            qkv = unwrap(self.q_proj(x))
            q, k, v = qkv[..., : nh * d], qkv[..., nh * d : (nh + nkv) * d], qkv[..., (nh + nkv) * d :]
        else:
            q, k, v = unwrap(self.q_proj(x)), unwrap(self.k_proj(x)), unwrap(self.v_proj(x))
        q = rotary.apply_tables(q.reshape(b, t, nh, d), cos, sin)
        k = rotary.apply_tables(k.reshape(b, t, nkv, d), cos, sin)
        # written in place when donated; a decoding step reads the layer's slots in place
        y, cache = cache.attend(layer, q, k, v.reshape(b, t, nkv, d), pos, window=self.window)
        return unwrap(self.o_proj(unwrap(y).reshape(b, t, nh * d))), cache


class Mlp(Module):
    """``LlamaMLP``: ``down(silu(gate(x)) * up(x))`` (SwiGLU). With ``up_proj`` ``None``,
    ``gate_proj`` holds the gate and up rows stacked (one product)."""

    def __init__(self, gate_proj: Any, up_proj: Any, down_proj: Any):
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj

    @staticmethod
    def load(vb: VarBuilder, cfg: Config) -> Mlp:
        """Candle's ``Mlp::load(vb, cfg)``: ``gate_proj``, ``up_proj`` and ``down_proj``."""
        h, i, b = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        return Mlp(_linear(h, i, b, vb.pp("gate_proj")), _linear(h, i, b, vb.pp("up_proj")),
                   _linear(i, h, b, vb.pp("down_proj")))  # fmt: skip

    def forward(self, x: Any) -> Any:
        """``down_proj(silu(gate_proj(x)) * up_proj(x))``: ``(B, T, hidden)`` in and out."""
        if self.up_proj is None:  # gate_proj holds the gate and up rows stacked: one product
            return unwrap(self.down_proj(ops.swiglu(self.gate_proj(x))))
        return unwrap(self.down_proj(unwrap(ops.silu(self.gate_proj(x))) * unwrap(self.up_proj(x))))


class Block(Module):
    """``LlamaDecoderLayer``: pre-norm attention and MLP, each with a residual connection."""

    def __init__(self, input_layernorm: Any, self_attn: Any, post_attention_layernorm: Any, mlp: Any):
        self.input_layernorm = input_layernorm
        self.self_attn = self_attn
        self.post_attention_layernorm = post_attention_layernorm
        self.mlp = mlp

    @staticmethod
    def load(vb: VarBuilder, cfg: Config, layer: int = 0) -> Block:
        """Candle's ``Block::load(vb, cfg)``: ``input_layernorm``, ``self_attn``, ``post_attention_layernorm`` and
        ``mlp``."""
        return Block(
            rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm")),
            CausalSelfAttention.load(vb.pp("self_attn"), cfg, layer),
            rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("post_attention_layernorm")),
            Mlp.load(vb.pp("mlp"), cfg),
        )

    def forward(self, x: Any, rotary: RotaryEmbedding, cos: Any, sin: Any, cache: Cache, layer: Any,
                pos: Any) -> tuple[Any, Cache]:  # fmt: skip
        """``(B, T, hidden)`` in, ``((B, T, hidden), cache)`` out; writes this layer's keys and values at ``pos``."""
        h, cache = self.self_attn(unwrap(self.input_layernorm(x)), rotary, cos, sin, cache, layer, pos)
        x = x + h
        x = x + self.mlp(unwrap(self.post_attention_layernorm(x)))
        return x, cache


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------
#: the host-side state holder (kept under its earlier name)
Attached = HostState


class Llama(Module):
    """``LlamaForCausalLM``: token embeddings, decoder blocks, final norm, LM head (tied to the
    embeddings when ``tie_word_embeddings``; then ``lm_head`` is ``None``).

    A pytree of its weights: pass it to ``jax.jit`` as an argument (see :func:`step`).
    """

    _static_fields = frozenset({"config", "generation_eos_token_ids"})

    def __init__(self, embed_tokens: Any, layers: list[Block] | Block, norm: Any, lm_head: Any,
                 rotary: RotaryEmbedding, config: Config, tokenizer_path: str | None = None):  # fmt: skip
        self.embed_tokens = embed_tokens
        self.layers = layers if isinstance(layers, Block) else list(layers)
        self.norm = norm
        self.lm_head = lm_head
        self.rotary = rotary
        self.config = config
        self.tokenizer_path = tokenizer_path
        #: ``generation_config.json``'s ``eos_token_id`` (read by :meth:`from_pretrained`), which
        #: :meth:`generate` stops at, as transformers' ``generate``; ``None``: ``config.json``'s
        self.generation_eos_token_ids: tuple[int, ...] | None = None
        self._forward_state = Attached()

    @property
    def generation_compiler_options(self) -> dict[str, Any]:
        """XLA options for this model's generation programs (read by
        :func:`candlejax.generation.generate`): with stacked layers (one scanned layer),
        :data:`candlejax.xla.GENERATION_OPTIONS` (XLA:CPU's loop emitters: SmolLM2's programs
        compile faster and with ~35 MiB less heap); with unrolled layers XLA's defaults, which
        compile those ~2x faster."""
        return dict(GENERATION_OPTIONS) if isinstance(self.layers, Block) else {}

    # --- construction ----------------------------------------------------------------------------
    @staticmethod
    def load(vb: VarBuilder, config: Config, strict: bool = True, mesh: Any = None, rules: Any = None) -> Llama:
        """Build from a VarBuilder holding HF ``*ForCausalLM`` weights (``model.*``, ``lm_head``).

        Raises (``strict=False``: warns) on a ``model_type`` / ``architectures`` this file does not
        implement and on checkpoint tensors it never read. ``mesh`` (a ``jax.sharding.Mesh``): each
        weight goes onto it as it is read, laid out by ``rules`` (default
        :data:`candlejax.distributed.llama_tp_rules`: tensor-parallel over ``"model"``)."""
        cfg = config
        check_architecture(cfg, "llama.Llama.load", SUPPORTED, strict)
        if mesh is not None:
            from candlejax import distributed

            rules = distributed.llama_tp_rules if rules is None else rules
            if rules is distributed.llama_tp_rules:
                distributed.rules.check_heads(mesh, cfg.num_attention_heads, int(cfg.num_key_value_heads))  # type: ignore[arg-type]
            return distributed.load_on_mesh(lambda v: Llama.load(v, cfg, strict), vb, mesh, rules)
        m = vb.pp("model")
        embed = embedding(cfg.vocab_size, cfg.hidden_size, m.pp("embed_tokens"))  # N(0, 1) in a fresh VarMap
        layers = [Block.load(m.pp("layers").pp(i), cfg, i) for i in range(cfg.num_hidden_layers)]
        norm = rms_norm(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))
        tied = cfg.tie_word_embeddings
        lm_head = None if tied else linear_b(cfg.hidden_size, cfg.vocab_size, False, vb.pp("lm_head"))
        rotary = rotary_for(cfg, jax.device_put(rope_inv_freq(cfg), vb.device().jax_device))
        model = Llama(embed, layers, norm, lm_head, rotary, cfg)
        vb.check_all_used(strict, "llama.Llama.load", ignore=("*.rotary_emb.inv_freq", "lm_head.weight"))
        return model

    @staticmethod
    def from_pretrained(path: str | os.PathLike, dtype: Any = None, device: Any = None,
                        revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                        strict: bool = True, mesh: Any = None, rules: Any = None) -> Llama:  # fmt: skip
        """Load a local model folder, or a hub id (``"org/name"``) from the local Hugging Face cache
        (``models--org--name/snapshots/REV``; nothing is downloaded). ``dtype`` defaults to the
        config's ``dtype`` (transformers 5's key; else ``torch_dtype``; f32 if absent).
        ``mesh``/``rules``: as :meth:`load` (each weight goes from the file straight onto its
        shards; ``device`` is then unused)."""
        from candlejax.models import hub

        files = hub.resolve(path, revision=revision, cache_dir=cache_dir)
        config = Config.from_json_file(files.config)
        dt = to_dtype(dtype) if dtype is not None else _dtype_of(config.torch_dtype)
        vb = VarBuilder.from_mmaped_safetensors(files.weights, dt, Device.coerce(device))
        model = Llama.load(vb, config, strict, mesh, rules)
        model.tokenizer_path = files.tokenizer
        model.generation_eos_token_ids = generation_eos_token_ids(files.root, "llama")
        return model

    @property
    def dtype(self) -> DType:
        """The dtype of the weights (that of ``embed_tokens``)."""
        return to_dtype(unwrap(self.embed_tokens.weight).dtype)

    @property
    def max_position_embeddings(self) -> int:
        """The config's ``max_position_embeddings``."""
        return int(self.config.max_position_embeddings)

    def new_cache(self, batch: int = 1, max_seq_len: int = 512, dtype: Any = None) -> Cache:
        """A zeroed :class:`Cache` for ``batch`` sequences of up to ``max_seq_len`` positions, in the
        model's dtype (``dtype``, if given, must be it: the cache holds the keys and values the model
        computes and is never cast, as Candle's KV caches)."""
        if dtype is not None and to_dtype(dtype) != self.dtype:
            raise errors.DTypeMismatchBinaryOp(self.dtype, to_dtype(dtype), "llama new_cache (model, cache)")
        c = self.config
        dev = _device_of(unwrap(self.rotary.inv_freq))
        cache = Cache.new(c.num_hidden_layers, batch, int(c.num_key_value_heads), max_seq_len, int(c.head_dim),  # type: ignore[arg-type]
                          dtype if dtype is not None else self.dtype, dev)  # fmt: skip
        from candlejax import distributed  # a model on a mesh gets its cache there (heads split on "model")

        return distributed.place_like(cache, self.embed_tokens, distributed.llama_tp_rules)

    def check_positions(self, index_pos: int, seq_len: int) -> None:
        """Raise unless positions ``index_pos .. index_pos + seq_len - 1`` are within ``0 ..
        max_position_embeddings - 1`` (the rotary tables and the checkpoint's training range);
        ``index_pos`` must be an integer (Candle's ``usize``: a float is not truncated)."""
        index_pos = int_arg(index_pos, "llama", "index_pos")
        if int(index_pos) < 0:
            raise errors.Msg(f"llama: index_pos must be >= 0, got {index_pos}")
        if int(index_pos) + int(seq_len) > self.max_position_embeddings:
            raise errors.Msg(
                f"llama: positions {index_pos}..{int(index_pos) + int(seq_len) - 1} exceed max_position_embeddings"
                f" {self.max_position_embeddings}"
            )

    # --- running ---------------------------------------------------------------------------------
    def step(self, cache: Cache, tokens: Any, pos: Any, last: Any = None) -> tuple[Any, Cache]:
        """:func:`step` as a method."""
        return step(self, cache, tokens, pos, last)

    def forward(self, tokens: Any, index_pos: int, cache: ForwardCache | None = None) -> Any:
        """Candle's ``forward(&x, index_pos, &mut cache)``: logits ``(batch, vocab)`` of the last position.

        ``tokens`` ``(batch, seq)`` integer ids at positions ``index_pos ..``; the KV cache is kept
        between calls (``index_pos=0`` starts a new sequence): in ``cache``, a :class:`ForwardCache`
        (``Cache.new(use_kv_cache, dtype, config, device)``) updated in place as Candle's ``&mut
        Cache``, or without it in the model object. It grows (doubling, one recompile) when a
        sequence outgrows it, up to ``max_position_embeddings``; positions beyond raise.
        """
        t = _token_ids(self, tokens, "llama forward")
        b, s = int(t.shape[0]), int(t.shape[1])
        self.check_positions(index_pos, s)
        index_pos = int(index_pos)
        st = forward_state(self, cache, index_pos)
        check_continuation("llama forward", st.positions if st.cache is not None else 0,
                           None if st.cache is None else st.cache.batch, b, index_pos)  # fmt: skip
        # several tokens run in 32-token chunks, the last padded (one compiled program for every
        # prompt length; the padding is causally masked and later tokens overwrite its cache slots)
        padded = prefill_bucket(s) if s > 1 else s
        if index_pos + padded > self.max_position_embeddings or isinstance(t, jax.core.Tracer):
            padded = s  # (traced ids, under jit / vmap: one program as given, no host-side chunks)
        c = self._sized_cache(st, b, index_pos, index_pos + padded)
        st.cache = None  # donated below
        st.positions = 0
        if padded == s:
            logits, c = _jit_step(self, c, jnp.asarray(t, jnp.uint32), jnp.int32(index_pos))
            if not traced(c):  # under jax.jit / vmap / grad nothing is kept (the next call starts over)
                st.cache, st.positions = c, index_pos + s
            return wrap(logits)
        pos = index_pos
        for chunk, n in prefill_chunks(np.asarray(t, np.uint32), padded):
            logits, c = _jit_step(self, c, chunk, jnp.int32(pos), jnp.int32(n - 1))
            pos += chunk.shape[1]
        if not traced(c):
            st.cache, st.positions = c, index_pos + s
        return wrap(logits)

    __call__ = forward

    def _sized_cache(self, st: Any, b: int, index_pos: int, need: int) -> Cache:
        """The held cache, grown (or a new one) to hold ``need`` positions for ``b`` sequences."""
        c = st.cache
        if c is None or c.batch != b or c.max_seq_len < need:
            size = Cache.slots_for(need, self.max_position_embeddings)
            if c is not None and c.batch == b and index_pos > 0:
                c = c.grow(size)
            else:
                c = self.new_cache(b, size)
        return c

    def embed(self, x: Any) -> Any:
        """Candle's ``Llama::embed(&x)``: the token embeddings ``(batch, seq, hidden)`` of ids ``x``."""
        t = unwrap(host_array(x, "llama token ids"))
        t = t if isinstance(t, jax.Array) else np.asarray(t)
        check_token_ids(t, self.config.vocab_size, "llama token ids")
        return wrap(unwrap(self.embed_tokens(jnp.asarray(t, jnp.int32))))

    def forward_input_embed(self, input_embed: Any, index_pos: int, cache: ForwardCache | None = None) -> Any:
        """Candle's ``Llama::forward_input_embed(&input_embed, index_pos, &mut cache)``: :meth:`forward`
        from embeddings ``(batch, seq, hidden)`` instead of ids (e.g. :meth:`embed`'s, with image
        features spliced in); logits ``(batch, vocab)`` of the last position. The cache is the one
        :meth:`forward` uses, so both can continue the same sequence. The embeddings are cast to the
        model's dtype."""
        x = unwrap(input_embed)
        x = x if isinstance(x, jax.Array) else np.asarray(x)
        if x.ndim != 3 or x.shape[2] != self.config.hidden_size:
            raise errors.UnexpectedShape(f"llama forward_input_embed: input_embed must be (batch, seq,"
                                         f" {self.config.hidden_size})", (1, 1, self.config.hidden_size),
                                         tuple(x.shape))  # fmt: skip
        b, s = int(x.shape[0]), int(x.shape[1])
        if s == 0:
            raise errors.Msg("llama forward_input_embed: input_embed is empty (batch, 0, hidden)")
        self.check_positions(index_pos, s)
        index_pos = int(index_pos)
        st = forward_state(self, cache, index_pos)
        check_continuation("llama forward", st.positions if st.cache is not None else 0,
                           None if st.cache is None else st.cache.batch, b, index_pos)  # fmt: skip
        c = self._sized_cache(st, b, index_pos, index_pos + s)
        st.cache, st.positions = None, 0  # donated below
        logits, c = _jit_step_embeds(self, c, jnp.asarray(x, self.dtype.jnp), jnp.int32(index_pos))
        if not traced(c):  # under jax.jit / vmap / grad nothing is kept (the next call starts over)
            st.cache, st.positions = c, index_pos + s
        return wrap(logits)

    def reset(self) -> None:
        """Drop the KV cache kept by :meth:`forward`."""
        self._forward_state = Attached()

    def generate(self, prompt_tokens: Sequence[int] | Any, max_new_tokens: int, processor: Any = None,
                 eos_token_id: Any = None, max_seq_len: int | None = None, **kwargs: Any) -> Any:  # fmt: skip
        """Run :func:`candlejax.generation.generate` with :func:`step` on a fresh cache sized for
        the prompt (ids as ``generate`` takes them: a list, an ``(S,)`` or ``(1, S)`` array or
        Tensor) and ``max_new_tokens`` (``max_seq_len`` caps it; at most
        ``max_position_embeddings``); yields token ids as they come. A full cache ends the
        generation with ``finish_reason == "cache_full"``; a prompt longer than it raises.
        ``eos_token_id`` defaults to ``generation_config.json``'s where the model folder has one
        (transformers' ``generate``), else ``config.json``'s."""
        p = unwrap(prompt_tokens)
        check_prompt_not_text(p, "llama generate")
        if not hasattr(p, "shape") and isinstance(p, Iterable):
            p = list(p)
        try:
            s = int(np.shape(p)[-1]) if np.ndim(p) else 0  # (S,) or (1, S): generate checks the shape
        except ValueError:  # a ragged nested list: generate names it
            s = 0
        n = s + int_arg(max_new_tokens, "llama generate", "max_new_tokens")
        size = min(-(-n // 128) * 128 if max_seq_len is None else max_seq_len, self.max_position_embeddings)
        if kwargs.get("start_pos", 0) != 0:
            raise errors.InvalidArgument(
                f"llama generate: start_pos={kwargs['start_pos']!r}, but Llama.generate starts a sequence on a new"
                " cache (nothing before start_pos); continue one with generate(llama.step, model, cache, ids, n,"
                " start_pos=...)"
            )
        self.check_positions(0, s)
        cache = self.new_cache(1, size)
        if eos_token_id is None:
            eos = self.generation_eos_token_ids
            eos_token_id = (list(eos) if eos is not None else self.config.eos_token_ids) or None
        return generate(step, self, cache, p, max_new_tokens, processor, eos_token_id, **kwargs)



def _device_of(a: Any) -> Device | None:
    if isinstance(a, jax.core.Tracer):  # inside jit / grad: the program places what it makes
        return None
    devs = getattr(a, "devices", None)
    if devs is None:
        return Device.Cpu
    return Device.from_jax(min(devs(), key=lambda d: d.id))


def _dtype_of(name: str | None) -> DType:
    return {"bfloat16": DType.BF16, "float16": DType.F16, "float32": DType.F32}.get(str(name), DType.F32)


# ------------------------------------------------------------------------------------------------
# the pure step
# ------------------------------------------------------------------------------------------------
def _lm_head(params: Llama, x: Any) -> Any:
    """x ``(B, T, hidden)`` -> logits ``(B, T, vocab)``."""
    if params.lm_head is not None:
        return unwrap(params.lm_head(x))
    e = params.embed_tokens
    head = getattr(e, "as_linear", None)
    if head is not None:  # a quantized embedding table with its own matmul
        return unwrap(head()(x))
    w = unwrap(e.embeddings())
    return jnp.einsum("bth,vh->btv", x, w.astype(x.dtype), preferred_element_type=jnp.float32).astype(x.dtype)


def _token_ids(params: Llama, tokens: Any, where: str) -> Any:
    """``tokens`` as a ``(B, T)`` array, checked (shapes under jit too; traced values: the dtype only)."""
    ids = unwrap(host_array(tokens, "llama token ids"))
    ids = ids if isinstance(ids, (jax.Array, np.ndarray)) else np.asarray(ids)
    check_token_ids(ids, params.config.vocab_size, f"{where}: token ids")
    ids = ids[None, :] if ids.ndim == 1 else ids
    if ids.ndim != 2:
        raise errors.UnexpectedNumberOfDims(2, ids.ndim, tuple(ids.shape), f"{where}: token ids (batch, seq)")
    if 0 in ids.shape:
        raise errors.Msg(f"{where}: token ids {errors.fmt_shape(ids.shape)} are empty (batch and seq must be >= 1)")
    return ids


def _hidden(params: Llama, cache: Cache, tokens: Any, pos: Any) -> tuple[Any, Cache]:
    ids = _token_ids(params, tokens, "llama step")
    return _hidden_embeds(params, cache, unwrap(params.embed_tokens(ids.astype(jnp.int32))), pos)


def _hidden_embeds(params: Llama, cache: Cache, x: Any, pos: Any) -> tuple[Any, Cache]:
    """The decoder stack and final norm over embeddings ``x`` ``(B, T, hidden)`` at ``pos ..``."""
    t = x.shape[1]
    pos = jnp.asarray(unwrap(pos), jnp.int32).reshape(())
    rotary = params.rotary
    cos, sin = rotary.tables(t, pos)  # shared by every layer
    if isinstance(params.layers, Block):  # one Block whose weights are stacked over the layers
        def body(carry: tuple, block: Block, i: Any) -> tuple:
            h, c = carry
            return block(h, rotary, cos, sin, c, i, pos)

        x, cache = scan_layers(body, (x, cache), params.layers)
    else:
        for i, layer in enumerate(params.layers):
            x, cache = layer(x, rotary, cos, sin, cache, i, pos)
    return unwrap(params.norm(x)), cache


def step(params: Llama, cache: Cache, tokens: Any, pos: Any, last: Any = None) -> tuple[Any, Cache]:
    """The pure model step: ``(params, cache, tokens (B, T), pos) -> (logits (B, vocab), cache)``.

    Writes the keys/values of ``tokens`` (at positions ``pos .. pos + T``) into ``cache`` and
    returns the logits of the last position, or of position ``last`` (a traced index into ``tokens``)
    when given: a prompt padded at its end to a bucketed length gives the logits of its last real
    token, and the padding's cache slots (causally masked) are overwritten by the tokens that follow.
    ``pos`` may be a traced int32 scalar, so ``jax.jit(step, donate_argnums=1)`` compiles once per
    ``T`` (the prompt, then 1 for every decode token). This is the ``step_fn``
    :func:`candlejax.generation.generate` drives.
    """
    x, cache = _hidden(params, cache, tokens, pos)
    x = x[:, -1:, :] if last is None else lax.dynamic_slice_in_dim(x, jnp.asarray(last, jnp.int32), 1, axis=1)
    logits = _lm_head(params, x)[:, 0, :]
    return logits.astype(jnp.float32), cache


def forward_all(params: Llama, tokens: Any) -> Any:
    """Logits for every position of ``tokens`` ``(B, T)`` -> ``(B, T, vocab)`` (no cache kept)."""
    ids = _token_ids(params, tokens, "llama forward_all")
    params.check_positions(0, ids.shape[1])  # a shape: checked under jit too
    cache = params.new_cache(ids.shape[0], ids.shape[1])
    x, _ = _hidden(params, cache, ids, 0)
    return wrap(_lm_head(params, x).astype(jnp.float32))


def _step_embeds(params: Llama, cache: Cache, x: Any, pos: Any) -> tuple[Any, Cache]:
    """:func:`step` from embeddings ``(B, T, hidden)``: logits ``(B, vocab)`` of the last position."""
    x, cache = _hidden_embeds(params, cache, x, pos)
    return _lm_head(params, x[:, -1:, :])[:, 0, :].astype(jnp.float32), cache


_jit_step = jax.jit(step, donate_argnums=(1,))
_jit_step_embeds = jax.jit(_step_embeds, donate_argnums=(1,))


if __name__ == "__main__":
    import sys

    from candlejax.cli import main

    raise SystemExit(main(sys.argv[1:], prog="python -m candlejax.models.llama"))
