"""Karpathy's llama2.c model (the TinyStories LLaMA-2 models): a LLaMA with interleaved rotary pairs.

Paper: "Llama 2: Open Foundation and Fine-Tuned Chat Models", https://arxiv.org/abs/2307.09288;
reference implementation https://github.com/karpathy/llama2.c (``model.py``, ``run.c``). Candle:
``candle-transformers/src/models/llama2_c.rs``; the weight names are those of
``llama2_c_weights::TransformerWeights::var_builder`` (``model.layers.0.self_attn.q_proj.weight``,
``rot.freq_cis_real``). The blocks are :mod:`candlejax.models.llama`'s (pre-norm attention and
SwiGLU over a preallocated :class:`~candlejax.nn.StackedKvCache`); the rotary is llama2.c's: pairs
``(x[2i], x[2i+1])`` rotated by the file's ``freq_cis_real`` / ``freq_cis_imag`` tables (Candle's
``rope_i``).

>>> with open("stories15M.bin", "rb") as f:
...     config = Config.from_reader(f)
...     weights = TransformerWeights.from_reader(f, config, Device.Cpu)   # llama2_c_weights
>>> vb = weights.var_builder(config, Device.Cpu)
>>> cache = Cache.new(True, config, vb.pp("rot"))
>>> model = Llama.load(vb, config)
>>> logits = model.forward(Tensor.new([[1, 403, 411]], Device.Cpu), 0, cache)   # (1, 3, vocab)
>>> logits = model.forward(Tensor.new([[2354]], Device.Cpu), 3, cache)          # next position

The quantized form (GGUF) is :class:`candlejax.models.quantized_llama2_c.QLlama`.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from typing import Any, BinaryIO

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType, to_dtype
from candlejax.generation import prefill_bucket
from candlejax.models.llama import Block, CausalSelfAttention, Mlp
from candlejax.models.utils import build_causal_mask
from candlejax.nn import (
    Module,
    RotaryEmbedding,
    StackedKvCache,
    check_continuation,
    check_token_ids,
    embedding,
    linear_no_bias,
    rms_norm,
)
from candlejax.nn.quantized import dequantized
from candlejax.nn.rotary import rotary_tables
from candlejax.nn.state import traced
from candlejax.nn.var_builder import VarBuilder
from candlejax.quantized import VarBuilder as QVarBuilder
from candlejax.tensor import int_arg, unwrap, wrap

__all__ = ["HEADER_BYTES", "Cache", "Config", "Llama", "read_config", "reader_name", "step"]


@dataclasses.dataclass
class Config:
    """Candle's ``llama2_c::Config``: the seven numbers of a llama2.c ``.bin`` header plus ``norm_eps``.

    ``shared_classifier`` (not in Candle's struct): whether the LM head is the embedding table,
    which llama2.c's header says with the sign of ``vocab_size`` (:meth:`from_reader`).
    """

    dim: int  # transformer dimension
    hidden_dim: int  # for the ffn layers
    n_layers: int
    n_heads: int  # query heads
    n_kv_heads: int  # key/value heads (fewer than n_heads: grouped-query attention)
    vocab_size: int
    seq_len: int  # max sequence length
    norm_eps: float = 1e-5
    shared_classifier: bool = True

    @staticmethod
    def tiny_260k() -> Config:
        """Candle's ``Config::tiny_260k``: the 260K-parameter llama2.c model."""
        return Config(dim=64, hidden_dim=768, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=32000, seq_len=512)

    @staticmethod
    def tiny_15m() -> Config:
        """Candle's ``Config::tiny_15m``: the 15M-parameter llama2.c model."""
        return Config(dim=288, hidden_dim=768, n_layers=6, n_heads=6, n_kv_heads=6, vocab_size=32000, seq_len=256)

    @staticmethod
    def tiny_42m() -> Config:
        """Candle's ``Config::tiny_42m``: the 42M-parameter llama2.c model."""
        return Config(dim=512, hidden_dim=768, n_layers=8, n_heads=8, n_kv_heads=8, vocab_size=32000, seq_len=1024)

    @staticmethod
    def tiny_110m() -> Config:
        """Candle's ``Config::tiny_110m``: the 110M-parameter llama2.c model."""
        return Config(dim=768, hidden_dim=768, n_layers=12, n_heads=12, n_kv_heads=12, vocab_size=32000,
                      seq_len=1024)  # fmt: skip

    @staticmethod
    def from_reader(r: BinaryIO) -> Config:
        """Candle's ``Config::from_reader(&mut r)``: the 28-byte header of a llama2.c ``.bin`` file
        (:func:`read_config`)."""
        return read_config(r)

    def head_size(self) -> int:
        """``dim // n_heads``."""
        return self.dim // self.n_heads

    def clone(self) -> Config:
        """Candle's ``config.clone()`` (``QLlama::load(vb, config.clone())``): an equal, separate Config."""
        return dataclasses.replace(self)


HEADER_BYTES = 28  # seven little-endian i32


def reader_name(r: Any) -> str:
    """How errors name a reader: its file name, when it has one."""
    return repr(getattr(r, "name", "the reader"))


def read_config(r: BinaryIO) -> Config:
    """Candle's ``Config::from_reader``: the header of a llama2.c ``.bin`` file (``norm_eps`` 1e-5).
    A negative ``vocab_size`` gives ``shared_classifier=False``."""
    if isinstance(r, (str, os.PathLike)):
        raise errors.Msg("llama2_c Config.from_reader takes an open binary file (open(path, 'rb')), got a path")
    head = r.read(HEADER_BYTES)
    if len(head) != HEADER_BYTES:
        raise errors.Msg(f"llama2.c header of {reader_name(r)}: expected {HEADER_BYTES} bytes (seven i32) at byte 0,"
                         f" the file ends at byte {len(head)}")  # fmt: skip
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack("<7i", head)
    cfg = Config(dim=dim, hidden_dim=hidden_dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                 vocab_size=abs(vocab), seq_len=seq_len, shared_classifier=vocab > 0)  # fmt: skip
    try:
        _check_config(cfg)
    except errors.Msg as e:
        raise errors.Msg(f"llama2.c header of {reader_name(r)} (bytes 0..{HEADER_BYTES}) is invalid: {e}") from None
    return cfg


class Cache:
    """Candle's ``llama2_c::Cache``: the rotary tables, the causal masks and the KV cache that
    ``model.forward(x, index_pos, cache)`` reads and updates in place (Candle's ``&mut Cache``).

    ``cos`` / ``sin``: ``(seq_len, head_size / 2)`` (Candle keeps a trailing 1). ``kvs``: every
    layer's keys and values in one preallocated :class:`~candlejax.nn.StackedKvCache` of ``seq_len``
    slots (``None`` until the first ``forward``; Candle: a list of per-layer tensors grown by
    concatenation), of which the first ``n_cached`` positions are held. ``index_pos`` 0 starts a new
    sequence over it; an ``index_pos`` below ``n_cached`` rewinds to there.
    """

    def __init__(self, use_kv_cache: bool, cos: Any, sin: Any, n_layers: int, device: Any = None):
        self.use_kv_cache = bool(use_kv_cache)
        self.cos, self.sin = cos, sin
        self.n_layers = int(n_layers)
        self.kvs: StackedKvCache | None = None
        self.n_cached = 0  # positions held in kvs
        self.masks: dict[tuple[int, int], Any] = {}
        self.device = Device.coerce(device)

    @staticmethod
    def new(use_kv_cache: bool, cfg: Config, vb: Any) -> Cache:
        """Candle's ``Cache::new(use_kv_cache, &cfg, vb)``: the tables ``freq_cis_real`` /
        ``freq_cis_imag`` ``(seq_len, head_size / 2)`` from ``vb`` (e.g. ``vb.pp("rot")``), or, where
        ``vb`` lacks them, ``cos`` / ``sin`` of ``pos * 10000^(-2i / head_size)``. ``vb`` may also be a
        quantized (GGUF) VarBuilder: its tables are dequantized."""
        if not isinstance(use_kv_cache, bool):
            raise errors.Msg(f"llama2_c Cache.new(use_kv_cache, cfg, vb): use_kv_cache must be a bool, got"
                             f" {type(use_kv_cache).__name__}")  # fmt: skip
        if not isinstance(cfg, Config):
            raise errors.Msg(f"llama2_c Cache.new(use_kv_cache, cfg, vb): cfg must be a llama2_c.Config, got"
                             f" {type(cfg).__name__}")  # fmt: skip
        _check_config(cfg)
        shape = (cfg.seq_len, cfg.head_size() // 2)
        cos, sin = (np.asarray(t, np.float32) for t in rotary_tables(cfg.head_size(), cfg.seq_len))
        if isinstance(vb, QVarBuilder):  # a GGUF file's tables, dequantised
            vb = dequantized(vb)
        dev = vb.device()
        tables = []
        for name, computed in (("freq_cis_real", cos), ("freq_cis_imag", sin)):
            t = unwrap(vb.get(shape, name)) if vb.contains_tensor(name) else computed
            tables.append(wrap(jax.device_put(jnp.asarray(t, jnp.float32), Device.coerce(dev).jax_device)))
        return Cache(use_kv_cache, tables[0], tables[1], cfg.n_layers, dev)

    def mask(self, seq_len: int, index_pos: int) -> Any:
        """Candle's ``cache.mask(seq_len, index_pos)``: U8 ``(seq_len, index_pos + seq_len)``, 1 where a
        query must not see a key (:func:`candlejax.models.utils.build_causal_mask`); kept per size.
        ``forward`` masks inside its attention and does not need it."""
        key = (int(seq_len), int(index_pos) + int(seq_len))
        if key not in self.masks:
            self.masks[key] = build_causal_mask(seq_len, index_pos, self.device)
        return self.masks[key]

    def reset(self) -> None:
        """Forget the cached keys and values."""
        self.kvs, self.n_cached = None, 0

    def __repr__(self) -> str:
        n = "empty" if self.kvs is None else f"batch {self.kvs.batch}, {self.kvs.max_seq_len} slots"
        return f"llama2_c.Cache(use_kv_cache={self.use_kv_cache}, {n})"


def _check_config(cfg: Config) -> None:
    for name in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"):
        if int(getattr(cfg, name)) <= 0:
            raise errors.Msg(f"llama2_c Config: {name} must be > 0, got {getattr(cfg, name)}")
    if cfg.dim % cfg.n_heads or cfg.n_heads % cfg.n_kv_heads or cfg.head_size() % 2:
        raise errors.Msg(f"llama2_c Config: dim {cfg.dim} must split into n_heads {cfg.n_heads} heads of an even"
                         f" size, and n_heads into n_kv_heads {cfg.n_kv_heads} groups")  # fmt: skip


def _layer(cfg: Config, vb: Any, linear: Any, norm: Any) -> Block:
    """One decoder block (:class:`candlejax.models.llama.Block`) from ``vb`` with the layer
    factories ``linear(in, out, vb)`` and ``norm(size, eps, vb)`` (float or quantized)."""
    hs, a, m = cfg.head_size(), vb.pp("self_attn"), vb.pp("mlp")
    attn = CausalSelfAttention(
        linear(cfg.dim, cfg.n_heads * hs, a.pp("q_proj")), linear(cfg.dim, cfg.n_kv_heads * hs, a.pp("k_proj")),
        linear(cfg.dim, cfg.n_kv_heads * hs, a.pp("v_proj")), linear(cfg.n_heads * hs, cfg.dim, a.pp("o_proj")),
        cfg.n_heads, cfg.n_kv_heads, hs,
    )  # fmt: skip
    mlp = Mlp(linear(cfg.dim, cfg.hidden_dim, m.pp("gate_proj")), linear(cfg.dim, cfg.hidden_dim, m.pp("up_proj")),
              linear(cfg.hidden_dim, cfg.dim, m.pp("down_proj")))  # fmt: skip
    return Block(norm(cfg.dim, cfg.norm_eps, vb.pp("input_layernorm")), attn,
                 norm(cfg.dim, cfg.norm_eps, vb.pp("post_attention_layernorm")), mlp)  # fmt: skip


class Llama(Module):
    """Candle's ``llama2_c::Llama``: token embeddings ``wte``, decoder ``blocks``, final norm ``ln_f``
    and the LM head ``lm_head``. A pytree of its weights (``jax.grad`` / the optimizers take it)."""

    _static_fields = frozenset({"config"})

    def __init__(self, wte: Any, blocks: list[Block], ln_f: Any, lm_head: Any, config: Config):
        self.wte = wte
        self.blocks = list(blocks)
        self.ln_f = ln_f
        self.lm_head = lm_head
        # only applies the cache's tables: llama2.c rotates interleaved pairs, laid out (B, T, H, D)
        self.rotary = RotaryEmbedding(config.head_size(), config.seq_len, interleaved=True, layout="bthd",
                                      precompute=False)  # fmt: skip
        self.config = config

    @classmethod
    def load(cls, vb: VarBuilder, cfg: Config) -> Llama:
        """Candle's ``Llama::load(vb, cfg)``: ``model.embed_tokens``, ``model.layers.N.*``, ``model.norm``
        and ``lm_head`` from ``vb`` (e.g. :meth:`TransformerWeights.var_builder`, or a VarMap to train)."""
        _check_config(cfg)
        wte = embedding(cfg.vocab_size, cfg.dim, vb.pp("model.embed_tokens"))
        lm_head = linear_no_bias(cfg.dim, cfg.vocab_size, vb.pp("lm_head"))
        ln_f = rms_norm(cfg.dim, cfg.norm_eps, vb.pp("model.norm"))
        blocks = [_layer(cfg, vb.pp(f"model.layers.{i}"), linear_no_bias, rms_norm) for i in range(cfg.n_layers)]
        return cls(wte, blocks, ln_f, lm_head, cfg)

    @property
    def dtype(self) -> DType:
        """The dtype of the weights (that of ``wte``)."""
        return to_dtype(unwrap(self.wte.weight).dtype)

    def embed(self, x: Any) -> Any:
        """The token embeddings ``(B, T, dim)`` of ids ``x`` ``(B, T)``."""
        return wrap(unwrap(self.wte(_ids(x, self.config.vocab_size))))

    def forward(self, x: Any, index_pos: int, cache: Cache) -> Any:
        """Candle's ``forward(&x, index_pos, &mut cache)``: logits ``(B, T, vocab)`` f32 of every position.

        ``x`` ``(B, T)`` token ids at positions ``index_pos .. index_pos + T`` (at most
        ``seq_len``). With ``cache.use_kv_cache`` the keys and values are kept in ``cache`` for the
        next call (continue at ``index_pos + T``; ``index_pos`` 0 starts over); without, only ``x``
        is attended to (pass the whole sequence at ``index_pos`` 0), as in Candle's training.
        """
        if not isinstance(cache, Cache):
            raise errors.Msg(f"llama2_c forward(x, index_pos, cache): cache must be a llama2_c.Cache"
                             f" (Cache.new(use_kv_cache, cfg, vb)), got {type(cache).__name__}")  # fmt: skip
        cfg = self.config
        ids = _ids(x, cfg.vocab_size)
        if ids.ndim != 2:
            raise errors.UnexpectedNumberOfDims(2, ids.ndim, tuple(ids.shape), "llama2_c forward: x (batch, seq)")
        b, t = int(ids.shape[0]), int(ids.shape[1])
        index_pos = int_arg(index_pos, "llama2_c forward", "index_pos")
        if b == 0 or t == 0:
            raise errors.Msg(f"llama2_c forward: x {errors.fmt_shape(ids.shape)} is empty (batch and seq must be >= 1)")
        if index_pos < 0 or index_pos + t > cfg.seq_len:
            raise errors.Msg(f"llama2_c forward: positions {index_pos}..{index_pos + t - 1} are outside the"
                             f" rotary tables' 0..{cfg.seq_len - 1} (seq_len)")  # fmt: skip
        if tuple(cache.cos.shape) != (cfg.seq_len, cfg.head_size() // 2) or cache.n_layers != cfg.n_layers:
            raise errors.Msg("llama2_c forward: the cache was made for another config")
        hs, pos = cfg.head_size(), jnp.int32(index_pos)
        if not cache.use_kv_cache:  # attend to x only: a cache just large enough, discarded
            kv = StackedKvCache.new(cfg.n_layers, b, cfg.n_kv_heads, t, hs, self.dtype, cache.device)
            logits, _ = _jit_step(self, cache.cos, cache.sin, kv, ids, jnp.int32(0), pos)
            return wrap(logits)
        kv = cache.kvs
        check_continuation("llama2_c forward", cache.n_cached, None if kv is None else kv.batch, b, index_pos)
        if kv is None or kv.batch != b:
            kv = StackedKvCache.new(cfg.n_layers, b, cfg.n_kv_heads, cfg.seq_len, hs, self.dtype, cache.device)
        # a prompt runs padded to a 32-token bucket (one compiled program for every prompt length; the
        # padding is causally masked and the tokens that follow overwrite its cache slots)
        padded = prefill_bucket(t) if t > 1 and not isinstance(ids, jax.core.Tracer) else t
        if padded > t and index_pos + padded <= cfg.seq_len:
            host = np.zeros((b, padded), np.int32)
            host[:, :t] = np.asarray(ids)
            ids = jax.device_put(host, ids.sharding)
        cache.kvs, cache.n_cached = None, 0  # donated below
        logits, kv = _jit_step(self, cache.cos, cache.sin, kv, ids, pos, pos)
        if not traced(kv):  # under jax.jit / vmap / grad the host cache keeps nothing (starts over)
            cache.kvs, cache.n_cached = kv, index_pos + t
        return wrap(logits).narrow(1, 0, t) if logits.shape[1] > t else wrap(logits)

    __call__ = forward


def _ids(x: Any, vocab: int) -> Any:
    """Token ids as an int32 array; non-integer or out-of-range ids raise (their values when not traced)."""
    a = unwrap(x)
    check_token_ids(a, vocab, "llama2_c token ids")
    return jnp.asarray(a).astype(jnp.int32)


def step(model: Llama, cos: Any, sin: Any, kv: StackedKvCache, ids: Any, pos: Any,
         rope_pos: Any) -> tuple[Any, StackedKvCache]:  # fmt: skip
    """The pure step: ``ids`` ``(B, T)`` rotated at positions ``rope_pos ..`` (rows of ``cos`` /
    ``sin``), their keys and values written into ``kv`` at slots ``pos ..``, attending causally to
    the slots before; returns ``(logits (B, T, vocab) f32, kv)``. ``pos`` / ``rope_pos`` may be traced."""
    t = ids.shape[1]
    if t > cos.shape[0]:  # Candle: cache.cos.i(index_pos..index_pos + seq_len) fails
        raise errors.Msg(f"llama2_c step: {t} token(s) exceed the rotary tables' {cos.shape[0]} rows (seq_len)")
    c = lax.dynamic_slice_in_dim(unwrap(cos), rope_pos, t, 0)
    s = lax.dynamic_slice_in_dim(unwrap(sin), rope_pos, t, 0)
    h = unwrap(model.wte(ids))
    for i, block in enumerate(model.blocks):
        h, kv = block(h, model.rotary, c, s, kv, i, pos)
    logits = unwrap(model.lm_head(unwrap(model.ln_f(h))))
    return logits.astype(jnp.float32), kv


_jit_step = jax.jit(step, donate_argnums=(3,))


if __name__ == "__main__":  # python -m candlejax.models.llama2_c --config stories15M.bin --tokenizer FILE ...
    import sys

    from candlejax.cli import main

    raise SystemExit(main(["llama2-c", *sys.argv[1:]], prog="python -m candlejax.models.llama2_c"))
