"""LLaMA: decoder-only transformer with RMSNorm, SwiGLU, rotary positions and grouped-query attention.

Paper: "LLaMA: Open and Efficient Foundation Language Models", https://arxiv.org/abs/2302.13971
(Llama 2: https://arxiv.org/abs/2307.09288, Llama 3: https://arxiv.org/abs/2407.21783).
Mirrors Hugging Face ``transformers/models/llama/modeling_llama.py`` (``LlamaForCausalLM``): the
weight names are the checkpoint's (``model.layers.0.self_attn.q_proj.weight``, ...), read from
``config.json`` + safetensors (one file or a sharded ``model.safetensors.index.json``). Candle:
``candle-transformers/src/models/llama.rs``.

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

Command line: ``python -m candlejax.models.llama generate --gguf FILE --prompt "..." -n 128``
(``--model DIR`` for a safetensors folder or hub id; ``--chat`` applies the chat template).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType, to_dtype
from candlejax.nn import Embedding, Linear, Module, ops
from candlejax.nn.var_builder import VarBuilder
from candlejax.tensor._core import TensorBase, unwrap, wrap

__all__ = [
    "Block",
    "Cache",
    "CausalSelfAttention",
    "Config",
    "Llama",
    "Mlp",
    "RmsNorm",
    "forward_all",
    "main",
    "rope_inv_freq",
    "step",
]


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Config:
    """``config.json`` of a ``LlamaForCausalLM`` checkpoint; missing keys take transformers' defaults.

    ``rope_scaling`` (transformers 4) and ``rope_parameters`` (transformers 5) are both read;
    ``rope_type`` ``"default"``, ``"linear"`` and ``"llama3"`` are supported.
    ``rope_interleaved`` is not a config.json key: GGUF files store q/k rows permuted for the
    interleaved-pairs rotary layout (see :mod:`candlejax.models.quantized_llama`).
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    torch_dtype: str | None = None
    rope_interleaved: bool = False

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise errors.Msg(
                f"llama Config: num_attention_heads {self.num_attention_heads} is not a multiple of"
                f" num_key_value_heads {self.num_key_value_heads}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """From a ``config.json`` dict; unknown keys are ignored."""
        d = dict(d)
        rp = d.pop("rope_parameters", None)
        if isinstance(rp, dict) and rp:
            rp = dict(rp)
            if "rope_theta" in rp and "rope_theta" not in d:
                d["rope_theta"] = rp["rope_theta"]
            kind = rp.get("rope_type", rp.get("type", "default"))
            if kind != "default" and not d.get("rope_scaling"):
                d["rope_scaling"] = rp
        if d.get("torch_dtype") is None and isinstance(d.get("dtype"), str):
            d["torch_dtype"] = d["dtype"]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> Config:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    from_hf_config = from_dict

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else [int(e)] if isinstance(e, int) else [int(x) for x in e]


def rope_inv_freq(config: Config) -> np.ndarray:
    """The rotary inverse frequencies ``(head_dim / 2,)`` in float32, as transformers computes them
    (``default``, ``linear`` and ``llama3`` ``rope_type``)."""
    dim = int(config.head_dim)  # type: ignore[arg-type]
    base = float(config.rope_theta)
    inv = (1.0 / (base ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)))).astype(
        np.float32
    )
    sc = config.rope_scaling or {}
    kind = sc.get("rope_type", sc.get("type", "default"))
    if kind in (None, "default"):
        return inv
    if kind == "linear":
        return (inv / np.float32(sc["factor"])).astype(np.float32)
    if kind == "llama3":
        factor = float(sc["factor"])
        low, high = float(sc.get("low_freq_factor", 1.0)), float(sc.get("high_freq_factor", 4.0))
        old = float(sc.get("original_max_position_embeddings", config.max_position_embeddings))
        low_wavelen, high_wavelen = old / low, old / high
        wavelen = 2 * math.pi / inv
        out = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, out).astype(np.float32)
    raise errors.Msg(f"llama: rope_scaling type {kind!r} is not supported (default, linear, llama3)")


# ------------------------------------------------------------------------------------------------
# layers, bottom-up
# ------------------------------------------------------------------------------------------------
def _arr(x: Any) -> Any:
    return x._a if isinstance(x, TensorBase) else x


def _apply(layer: Any, x: Any) -> Any:
    """A linear-like layer on a raw array: ``x (..., in) -> (..., out)``."""
    return _arr(layer(wrap(x)))


class RmsNorm(Module):
    """``LlamaRMSNorm``: ``x / sqrt(mean(x²) + eps) * weight``, computed in f32."""

    def __init__(self, weight: Any, eps: float):
        self.weight = weight
        self.eps = float(eps)

    @staticmethod
    def load(size: int, eps: float, vb: Any) -> RmsNorm:
        return RmsNorm(vb.get(size, "weight"), eps)

    def forward(self, xs: Any) -> Any:
        return ops.rms_norm(xs, self.weight, self.eps)


class CausalSelfAttention(Module):
    """``LlamaAttention``: q/k/v projections, rotary positions, grouped-query attention over the
    preallocated cache, output projection. With ``k_proj``/``v_proj`` ``None``, ``q_proj`` holds
    the q, k and v rows stacked (one product; the quantized GGUF model does this)."""

    def __init__(self, q_proj: Any, k_proj: Any, v_proj: Any, o_proj: Any, num_heads: int, num_kv_heads: int,
                 head_dim: int, interleaved: bool = False):  # fmt: skip
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = q_proj, k_proj, v_proj, o_proj
        self.num_heads = int(num_heads)
        self.num_kv_heads = int(num_kv_heads)
        self.head_dim = int(head_dim)
        self.interleaved = bool(interleaved)

    @staticmethod
    def load(vb: Any, cfg: Config) -> CausalSelfAttention:
        h, d = cfg.hidden_size, cfg.head_dim
        nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        lin = _linear_loader(cfg.attention_bias)
        return CausalSelfAttention(
            lin(h, nq * d, vb.pp("q_proj")),
            lin(h, nkv * d, vb.pp("k_proj")),
            lin(h, nkv * d, vb.pp("v_proj")),
            lin(nq * d, h, vb.pp("o_proj")),
            nq, nkv, d, cfg.rope_interleaved,
        )  # fmt: skip

    def forward(self, x: Any, cos: Any, sin: Any, cache: Cache, layer: int, pos: Any, mask: Any) -> tuple:
        """x ``(B, T, hidden)``; cos/sin ``(T, head_dim/2)``; ``cache`` the stacked caches, of which
        this layer writes slot ``layer`` at ``pos``; mask bool ``(T, S)``.
        Returns ``(out (B, T, hidden), cache)``."""
        b, t, _ = x.shape
        nh, nkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        if self.k_proj is None:  # q_proj holds the q, k and v rows stacked: one product
            qkv = _apply(self.q_proj, x)
            q, k, v = qkv[..., : nh * d], qkv[..., nh * d : (nh + nkv) * d], qkv[..., (nh + nkv) * d :]
        else:
            q, k, v = _apply(self.q_proj, x), _apply(self.k_proj, x), _apply(self.v_proj, x)
        # (B, T, heads, D) throughout: no transposes of q or of the cache
        q = _rope_bthd(q.reshape(b, t, nh, d), cos, sin, self.interleaved)
        k = _rope_bthd(k.reshape(b, t, nkv, d), cos, sin, self.interleaved)
        v = v.reshape(b, t, nkv, d)
        zero = jnp.zeros((), jnp.int32)
        at = (jnp.asarray(layer, jnp.int32), zero, zero, pos, zero)
        # in place when the cache is donated (one fusion per tensor writes T rows of one layer)
        ck = lax.dynamic_update_slice(cache.k, k.transpose(0, 2, 1, 3).astype(cache.k.dtype)[None], at)
        cv = lax.dynamic_update_slice(cache.v, v.transpose(0, 2, 1, 3).astype(cache.v.dtype)[None], at)
        k_all = lax.dynamic_index_in_dim(ck, layer, 0, keepdims=False).astype(jnp.float32)  # (B, Hkv, S, D)
        v_all = lax.dynamic_index_in_dim(cv, layer, 0, keepdims=False).astype(jnp.float32)
        y = _attention(q, k_all, v_all, mask)  # (B, T, Hq * D), f32
        return _apply_after_attention(self.o_proj, y.astype(x.dtype)), Cache(ck, cv)


def _apply_after_attention(layer: Any, x: Any) -> Any:
    """The output projection. A blocked quantised weight multiplies in the direct form
    (:func:`candlejax.quantized.qtensor.blocked_matmul_direct`): after attention, XLA:CPU runs the
    transposed form used elsewhere ~10x slower than in isolation."""
    from candlejax.quantized.blocked import BlockedWeight
    from candlejax.quantized.qtensor import blocked_matmul_direct

    w = getattr(layer, "weight", None)
    if isinstance(w, BlockedWeight):
        return blocked_matmul_direct(w, x)
    return _apply(layer, x)


def _rope_bthd(x: Any, cos: Any, sin: Any, interleaved: bool) -> Any:
    """Rotary positions on ``x`` ``(B, T, H, D)`` with cos/sin ``(T, D/2)`` (cast to x's dtype, as
    transformers does): interleaved pairs ``(x[2i], x[2i+1])`` (GGUF) or the two halves."""
    b, t, h, d = x.shape
    c, s = cos.astype(x.dtype)[None, :, None, :], sin.astype(x.dtype)[None, :, None, :]
    if interleaved:
        x2 = x.reshape(b, t, h, d // 2, 2)
        x0, x1 = x2[..., 0], x2[..., 1]
        return jnp.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1).reshape(b, t, h, d)
    x0, x1 = x[..., : d // 2], x[..., d // 2 :]
    return jnp.concatenate([x0 * c - x1 * s, x1 * c + x0 * s], axis=-1)


def _attention(q: Any, k: Any, v: Any, mask: Any) -> Any:
    """Grouped-query attention in f32: q ``(B, T, Hq, D)``, k/v ``(B, Hkv, S, D)`` (the cache
    layout, read without a transpose), mask bool ``(T, S)`` -> ``(B, T, Hq * D)``. Normalises
    after the value product (one division per output instead of per score)."""
    b, t, hq, d = q.shape
    hkv = k.shape[1]
    qg = q.astype(jnp.float32).reshape(b, t, hkv, hq // hkv, d) * (1.0 / math.sqrt(d))
    s = jnp.einsum("btkgd,bksd->bkgts", qg, k)
    s = jnp.where(mask[None, None, None], s, jnp.finfo(jnp.float32).min)
    e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
    y = jnp.einsum("bkgts,bksd->bkgtd", e, v) / jnp.sum(e, axis=-1, keepdims=True)
    return y.transpose(0, 3, 1, 2, 4).reshape(b, t, hq * d)


class Mlp(Module):
    """``LlamaMLP``: ``down(silu(gate(x)) * up(x))`` (SwiGLU). With ``up_proj`` ``None``,
    ``gate_proj`` holds the gate and up rows stacked (one product)."""

    def __init__(self, gate_proj: Any, up_proj: Any, down_proj: Any):
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj

    @staticmethod
    def load(vb: Any, cfg: Config) -> Mlp:
        h, i = cfg.hidden_size, cfg.intermediate_size
        lin = _linear_loader(cfg.mlp_bias)
        return Mlp(lin(h, i, vb.pp("gate_proj")), lin(h, i, vb.pp("up_proj")), lin(i, h, vb.pp("down_proj")))

    def forward(self, x: Any) -> Any:
        if self.up_proj is None:  # gate_proj holds the gate and up rows stacked: one product
            gu = _apply(self.gate_proj, x)
            g, u = gu[..., : gu.shape[-1] // 2], gu[..., gu.shape[-1] // 2 :]
        else:
            g, u = _apply(self.gate_proj, x), _apply(self.up_proj, x)
        return _apply(self.down_proj, jax.nn.silu(g) * u)


class Block(Module):
    """``LlamaDecoderLayer``: pre-norm attention and MLP, each with a residual connection."""

    def __init__(self, input_layernorm: Any, self_attn: Any, post_attention_layernorm: Any, mlp: Any):
        self.input_layernorm = input_layernorm
        self.self_attn = self_attn
        self.post_attention_layernorm = post_attention_layernorm
        self.mlp = mlp

    @staticmethod
    def load(vb: Any, cfg: Config) -> Block:
        return Block(
            RmsNorm.load(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm")),
            CausalSelfAttention.load(vb.pp("self_attn"), cfg),
            RmsNorm.load(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("post_attention_layernorm")),
            Mlp.load(vb.pp("mlp"), cfg),
        )

    def forward(self, x: Any, cos: Any, sin: Any, cache: Cache, layer: int, pos: Any, mask: Any) -> tuple:
        h, cache = self.self_attn(_arr(self.input_layernorm(x)), cos, sin, cache, layer, pos, mask)
        x = x + h
        x = x + _arr(self.mlp(_arr(self.post_attention_layernorm(x))))
        return x, cache


def _linear_loader(bias: bool) -> Any:
    def load(in_dim: int, out_dim: int, vb: Any) -> Linear:
        w = vb.get((out_dim, in_dim), "weight")
        return Linear(w, vb.get((out_dim,), "bias") if bias else None)

    return load


class Cache(Module):
    """A preallocated KV cache for every layer: ``k``/``v`` of shape ``(layers, B, Hkv, max_seq_len,
    head_dim)``. Its shape never changes, so one compiled step serves every position; slots at or
    beyond the current position are masked out, so a cache is reused from position 0 without
    clearing it."""

    def __init__(self, k: Any, v: Any):
        self.k = k
        self.v = v

    @staticmethod
    def new(cfg: Config, batch: int, max_seq_len: int, dtype: Any = DType.F32, device: Any = None) -> Cache:
        dt = to_dtype(dtype).np
        shape = (cfg.num_hidden_layers, int(batch), cfg.num_key_value_heads, int(max_seq_len), cfg.head_dim)
        dev = Device.coerce(device).jax_device
        k = jax.device_put(jnp.zeros(shape, dt), dev)
        v = jax.device_put(jnp.zeros(shape, dt), dev)
        return Cache(k, v)

    @property
    def max_seq_len(self) -> int:
        return int(self.k.shape[3])

    @property
    def batch(self) -> int:
        return int(self.k.shape[1])


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------
class _State:
    """The KV cache behind the stateful ``forward`` (kept outside the weights' pytree)."""

    __slots__ = ("cache",)

    def __init__(self) -> None:
        self.cache: Cache | None = None


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Llama(Module):
    """``LlamaForCausalLM``: token embeddings, decoder blocks, final norm, LM head (tied to the
    embeddings when ``tie_word_embeddings``; then ``lm_head`` is ``None``).

    A pytree of its weights: pass it to ``jax.jit`` as an argument (see :func:`step`).
    """

    def __init__(self, embed_tokens: Any, layers: list[Block] | Block, norm: RmsNorm, lm_head: Any, inv_freq: Any,
                 config: Config):  # fmt: skip
        self.embed_tokens = embed_tokens
        self.layers = layers if isinstance(layers, Block) else list(layers)
        self.norm = norm
        self.lm_head = lm_head
        self.inv_freq = inv_freq  # (head_dim/2,) f32, not trained
        c = config
        # static settings the step needs (plain ints so the pytree's static data hashes cheaply)
        self.num_layers = int(c.num_hidden_layers)
        self.num_kv_heads = int(c.num_key_value_heads)  # type: ignore[arg-type]
        self.head_dim = int(c.head_dim)  # type: ignore[arg-type]
        self.vocab_size = int(c.vocab_size)
        self.hidden_size = int(c.hidden_size)
        self.max_position_embeddings = int(c.max_position_embeddings)
        self.config_json = json.dumps(dataclasses.asdict(c), sort_keys=True, default=str)

    # --- construction ----------------------------------------------------------------------------
    @staticmethod
    def load(vb: VarBuilder, config: Config) -> Llama:
        """Build from a VarBuilder holding HF ``LlamaForCausalLM`` weights (``model.*``, ``lm_head``)."""
        cfg = config
        m = vb.pp("model")
        embed = Embedding(m.pp("embed_tokens").get((cfg.vocab_size, cfg.hidden_size), "weight"), cfg.hidden_size)
        layers = [Block.load(m.pp("layers").pp(i), cfg) for i in range(cfg.num_hidden_layers)]
        norm = RmsNorm.load(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))
        if cfg.tie_word_embeddings:
            lm_head = None
        else:
            lm_head = Linear(vb.pp("lm_head").get((cfg.vocab_size, cfg.hidden_size), "weight"))
        inv_freq = jax.device_put(jnp.asarray(rope_inv_freq(cfg)), vb.device().jax_device)
        return Llama(embed, layers, norm, lm_head, inv_freq, cfg)

    @staticmethod
    def from_pretrained(path: str | os.PathLike, dtype: Any = None, device: Any = None,
                        revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Llama:  # fmt: skip
        """Load a local model folder, or a hub id (``"org/name"``) from the local Hugging Face cache
        (``models--org--name/snapshots/REV``; nothing is downloaded). ``dtype`` defaults to the
        checkpoint's ``torch_dtype`` (f32 if absent)."""
        from candlejax.models import _hub

        files = _hub.resolve(path, revision=revision, cache_dir=cache_dir)
        config = Config.from_json_file(files.config)
        dt = to_dtype(dtype) if dtype is not None else _dtype_of(config.torch_dtype)
        vb = VarBuilder.from_mmaped_safetensors(files.weights, dt, Device.coerce(device))
        model = Llama.load(vb, config)
        _tokenizers[model] = files.tokenizer
        return model

    @property
    def config(self) -> Config:
        return Config.from_dict(json.loads(self.config_json))

    @property
    def dtype(self) -> DType:
        return to_dtype(_arr(self.embed_tokens.weight).dtype)

    def new_cache(self, batch: int = 1, max_seq_len: int = 512, dtype: Any = None) -> Cache:
        """A zeroed :class:`Cache` for ``batch`` sequences of up to ``max_seq_len`` positions
        (default dtype: the model's)."""
        from candlejax import distributed  # a model on a mesh gets its cache there (heads split on "model")

        dev = _device_of(_arr(self.embed_tokens.weight))
        cache = Cache.new(self.config, batch, max_seq_len, dtype if dtype is not None else self.dtype, dev)
        return distributed.place_like(cache, self.embed_tokens, distributed.llama_tp_rules)

    # --- running ---------------------------------------------------------------------------------
    def forward(self, tokens: Any, index_pos: int) -> Any:
        """Candle's ``forward(&x, index_pos)``: logits ``(batch, vocab)`` of the last position.

        ``tokens`` ``(batch, seq)`` integer ids at positions ``index_pos ..``; the KV cache is kept
        between calls (``index_pos=0`` starts a new sequence). It grows (doubling, one recompile)
        when a sequence outgrows it. Runs the same compiled :func:`step` as :func:`generate`.
        """
        t = np.asarray(unwrap(tokens)) if not isinstance(unwrap(tokens), jax.Array) else unwrap(tokens)
        if t.ndim == 1:
            t = t[None, :]
        if t.ndim != 2:
            raise errors.UnexpectedNumberOfDims(2, t.ndim, tuple(t.shape), "llama forward: tokens (batch, seq)")
        b, s = int(t.shape[0]), int(t.shape[1])
        index_pos = int(index_pos)
        need = index_pos + s
        if need > self.max_position_embeddings and not self.config.rope_scaling:
            warnings.warn(
                f"llama: position {need} is beyond max_position_embeddings {self.max_position_embeddings}",
                stacklevel=2,
            )
        st = _STATES.get(self)
        if st is None:
            st = _STATES[self] = _State()
        c = st.cache
        if c is None or c.batch != b or c.max_seq_len < need:
            size = max(256, 1 << (need - 1).bit_length())
            if c is not None and c.batch == b and index_pos > 0:
                new = self.new_cache(b, size, c.k.dtype)
                n = min(c.max_seq_len, size)
                c = Cache(new.k.at[:, :, :, :n].set(c.k[:, :, :, :n]), new.v.at[:, :, :, :n].set(c.v[:, :, :, :n]))
            else:
                c = self.new_cache(b, size)
        st.cache = None  # donated below
        logits, st.cache = _jit_step(self, c, jnp.asarray(t, jnp.uint32), jnp.int32(index_pos))
        return wrap(logits)

    __call__ = forward

    def reset(self) -> None:
        """Drop the KV cache kept by :meth:`forward`."""
        _STATES.pop(self, None)

    def generate(self, prompt_tokens: Sequence[int], max_new_tokens: int, processor: Any = None,
                 eos_token_id: Any = None, max_seq_len: int | None = None, **kwargs: Any) -> Any:  # fmt: skip
        """Run :func:`candlejax.generation.generate` with :func:`step` on a fresh cache sized for
        the prompt and ``max_new_tokens``; yields token ids as they come."""
        from candlejax.generation import generate

        n = len(prompt_tokens) + int(max_new_tokens)
        size = max_seq_len or _round_up(n, 128)
        cache = self.new_cache(1, size)
        if eos_token_id is None:
            eos_token_id = self.config.eos_token_ids or None
        return generate(step, self, cache, list(prompt_tokens), max_new_tokens, processor, eos_token_id, **kwargs)


_tokenizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _device_of(a: Any) -> Device:
    devs = getattr(a, "devices", None)
    if devs is None:
        return Device.Cpu
    return Device.from_jax(min(devs(), key=lambda d: d.id))


def _dtype_of(name: str | None) -> DType:
    return {"bfloat16": DType.BF16, "float16": DType.F16, "float32": DType.F32}.get(str(name), DType.F32)


# ------------------------------------------------------------------------------------------------
# the pure step
# ------------------------------------------------------------------------------------------------
def _rope_tables(inv_freq: Any, pos: Any, t: int) -> tuple[Any, Any]:
    """cos, sin ``(t, head_dim/2)`` for positions ``pos .. pos + t`` (f32, as transformers)."""
    positions = (pos + jnp.arange(t, dtype=jnp.int32)).astype(jnp.float32)
    freqs = positions[:, None] * inv_freq[None, :]
    return jnp.cos(freqs), jnp.sin(freqs)


def _embed(params: Llama, ids: Any) -> Any:
    e = params.embed_tokens
    return _arr(e(wrap(ids)))


def _lm_head(params: Llama, x: Any) -> Any:
    """x ``(B, T, hidden)`` -> logits ``(B, T, vocab)``."""
    if params.lm_head is not None:
        return _apply(params.lm_head, x)
    e = params.embed_tokens
    head = getattr(e, "as_linear", None)
    if head is not None:  # a quantized embedding table with its own matmul
        return _arr(head()(wrap(x)))
    w = _arr(e.weight)
    return jnp.einsum("bth,vh->btv", x, w.astype(x.dtype), preferred_element_type=jnp.float32).astype(x.dtype)


def _hidden(params: Llama, cache: Cache, tokens: Any, pos: Any) -> tuple[Any, Cache]:
    ids = _arr(tokens)
    if ids.ndim == 1:
        ids = ids[None, :]
    ids = ids.astype(jnp.int32)
    _b, t = ids.shape
    pos = jnp.asarray(_arr(pos), jnp.int32).reshape(())
    x = _embed(params, ids)
    cos, sin = _rope_tables(params.inv_freq, pos, t)
    s = cache.k.shape[3]
    # query i (at position pos + i) sees cache slots 0 .. pos + i
    mask = jnp.arange(s, dtype=jnp.int32)[None, :] <= (pos + jnp.arange(t, dtype=jnp.int32))[:, None]
    if isinstance(params.layers, Block):  # one Block whose weights are stacked over the layers
        def body(carry: tuple, xs: tuple) -> tuple:
            h, c = carry
            block, i = xs
            h, c = block(h, cos, sin, c, i, pos, mask)
            return (h, c), None

        n = jax.tree_util.tree_leaves(params.layers)[0].shape[0]
        (x, cache), _ = lax.scan(body, (x, cache), (params.layers, jnp.arange(n, dtype=jnp.int32)))
    else:
        for i, layer in enumerate(params.layers):
            x, cache = layer(x, cos, sin, cache, i, pos, mask)
    return _arr(params.norm(x)), cache


def step(params: Llama, cache: Cache, tokens: Any, pos: Any) -> tuple[Any, Cache]:
    """The pure model step: ``(params, cache, tokens (B, T), pos) -> (logits (B, vocab), cache)``.

    Writes the keys/values of ``tokens`` (at positions ``pos .. pos + T``) into ``cache`` and
    returns the logits of the last position. ``pos`` may be a traced int32 scalar, so
    ``jax.jit(step, donate_argnums=1)`` compiles once per ``T`` (the prompt, then 1 for every
    decode token). This is the ``step_fn`` :func:`candlejax.generation.generate` drives.
    """
    x, cache = _hidden(params, cache, tokens, pos)
    logits = _lm_head(params, x[:, -1:, :])[:, 0, :]
    return logits.astype(jnp.float32), cache


def forward_all(params: Llama, tokens: Any) -> Any:
    """Logits for every position of ``tokens`` ``(B, T)`` -> ``(B, T, vocab)`` (no cache kept)."""
    ids = _arr(tokens)
    ids = ids[None, :] if ids.ndim == 1 else ids
    cache = Cache.new(params.config, ids.shape[0], ids.shape[1], params.dtype, _device_of(_arr(params.inv_freq)))
    x, _ = _hidden(params, cache, ids, 0)
    return wrap(_lm_head(params, x).astype(jnp.float32))


Llama.step = staticmethod(step)  # type: ignore[attr-defined]
_jit_step = jax.jit(step, donate_argnums=(1,))
warnings.filterwarnings("ignore", message=".*donated buffers were not usable.*")


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m candlejax.models.llama", description="LLaMA text generation")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text, streaming tokens as they come")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", help="a LLaMA-family GGUF file (quantized weights, tokenizer inside)")
    src.add_argument("--model", help="a folder with config.json + safetensors, or a hub id in the local HF cache")
    g.add_argument("--tokenizer", help="tokenizer.json (default: the model's)")
    g.add_argument("--prompt", default="Once upon a time")
    g.add_argument("-n", "--sample-len", type=int, default=128, dest="n", help="new tokens to generate")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: greedy)")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=299792458)
    g.add_argument("--repeat-penalty", type=float, default=1.1)
    g.add_argument("--repeat-last-n", type=int, default=64)
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    g.add_argument("--system", default=None, help="system message for --chat")
    g.add_argument("--dtype", default=None, help="f32, bf16 or f16 (--model only)")
    g.add_argument("--max-seq-len", type=int, default=None)
    g.add_argument("--tensor-parallel", type=int, default=1, help="split the model over N devices (--model only)")
    g.add_argument("--quiet", action="store_true", help="no timing summary on stderr")
    return p


def _sampling(args: argparse.Namespace) -> Any:
    from candlejax.generation import Sampling

    t = args.temperature
    if t is None or t <= 0:
        return Sampling.ArgMax()
    if args.top_k is not None and args.top_p is not None:
        return Sampling.TopKThenTopP(args.top_k, args.top_p, t)
    if args.top_k is not None:
        return Sampling.TopK(args.top_k, t)
    if args.top_p is not None:
        return Sampling.TopP(args.top_p, t)
    return Sampling.All(t)


def _load_for_cli(args: argparse.Namespace) -> tuple[Any, Any, list[int]]:
    """(model, tokenizer, eos ids) for ``--gguf`` or ``--model``."""
    from candlejax.tokenizer import load_tokenizer

    if args.gguf:
        from candlejax.models import quantized_llama

        model = quantized_llama.ModelWeights.from_gguf(args.gguf, Device.Cpu)
        tok = load_tokenizer(args.tokenizer) if args.tokenizer else model.tokenizer
        return model, tok, tok.eos_token_ids
    model = Llama.from_pretrained(args.model, dtype=args.dtype)
    path = args.tokenizer or _tokenizers.get(model)
    if path is None:
        raise errors.Msg(f"no tokenizer.json found for {args.model}; pass --tokenizer")
    tok = load_tokenizer(path)
    eos = list(dict.fromkeys([*tok.eos_token_ids, *model.config.eos_token_ids]))
    if args.tensor_parallel > 1:
        from candlejax import distributed

        model = distributed.tensor_parallel(model, args.tensor_parallel, distributed.llama_tp_rules)
    return model, tok, eos


def _generate_cli(args: argparse.Namespace) -> int:
    from candlejax.generation import LogitsProcessor, TokenOutputStream

    t0 = time.perf_counter()
    model, tok, eos = _load_for_cli(args)
    load_s = time.perf_counter() - t0
    if args.chat:
        msgs = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}
        ]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    else:
        ids = tok.encode(args.prompt)
    if not ids:
        ids = [tok.bos_token_id if tok.bos_token_id is not None else 0]
    lp = LogitsProcessor.from_sampling(args.seed, _sampling(args))
    stream = TokenOutputStream(tok)
    if not args.chat:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
    gen = model.generate(ids, args.n, lp, eos_token_id=eos or None, max_seq_len=args.max_seq_len,
                         repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n)  # fmt: skip
    for t in gen:
        piece = stream.next_token(t)
        if piece is not None:
            sys.stdout.write(piece)
            sys.stdout.flush()
    rest = stream.decode_rest()
    if rest:
        sys.stdout.write(rest)
    sys.stdout.write("\n")
    sys.stdout.flush()
    if not args.quiet:
        st = gen.stats
        n = st["decode_steps"]
        rate = n / st["decode_s"] if st["decode_s"] > 0 else float("nan")
        print(
            f"{len(ids)} prompt tokens, {len(gen.tokens)} generated; load {load_s:.2f}s, first token"
            f" {st['prefill_s']:.2f}s (incl. compile), decode {rate:.1f} tokens/s",
            file=sys.stderr,
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m candlejax.models.llama generate ...`` (also the ``candlejax generate`` console script)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if getattr(args, "tensor_parallel", 1) > 1:
        from candlejax import distributed

        if args.gguf:
            raise SystemExit("--tensor-parallel works with --model (safetensors weights), not --gguf")
        distributed.request_host_devices(args.tensor_parallel)  # CPU-only machines: simulated devices
    if args.command == "generate":
        return _generate_cli(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
