"""Quantized LLaMA from GGUF files (llama.cpp's format): weights stay GGML-quantised in memory and
are expanded inside the compiled step.

Paper: "LLaMA: Open and Efficient Foundation Language Models", https://arxiv.org/abs/2302.13971.
Architecture as Hugging Face ``transformers/models/llama/modeling_llama.py``; tensor names and
metadata keys as llama.cpp's ``llama`` architecture (``blk.N.attn_q.weight``,
``llama.attention.head_count``, ...). Candle: ``candle-transformers/src/models/quantized_llama.rs``.

>>> model = ModelWeights.from_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", Device.Cpu)
>>> ids = model.tokenizer.encode("The capital of France is")
>>> logits = model.forward(Tensor.new([ids], Device.Cpu).to_dtype(DType.U32), 0)   # (1, vocab)

``ModelWeights`` is a :class:`candlejax.models.llama.Llama` whose linear layers are
:class:`QLinear` (the same blocks, norms and pure :func:`step`), so
``candlejax.generation.generate(step, model, model.new_cache(1, 512), ids, 128, ...)`` drives it.

Two GGUF details matter:

* llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` so that rotary embeddings
  rotate interleaved pairs ``(x[2i], x[2i+1])`` instead of the two halves transformers rotates.
  The model therefore applies ``rope_i`` (interleaved) to GGUF weights; q·k is unchanged because
  q and k carry the same permutation, and v / the output projection are not permuted.
* Q4_0, Q4_1 and Q8_0 weights are re-laid out at load time, without changing a bit of the
  quantised values, into separate arrays (packed nibbles / int8 values and per-block f16 scales)
  so that XLA fuses the expansion into the matrix-vector product of a decode step. Other GGML
  types run through :class:`candlejax.quantized.QMatMul`.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from candlejax.models.llama import (
    Block,
    Cache,
    CausalSelfAttention,
    Config,
    Llama,
    Mlp,
    RmsNorm,
    forward_all,
    rope_inv_freq,
    step,
)

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType
from candlejax.nn import Module
from candlejax.quantized import GgmlDType, QMatMul, QTensor
from candlejax.tensor._core import TensorBase, unwrap, wrap

__all__ = ["Cache", "ModelWeights", "QEmbedding", "QLinear", "config_from_gguf", "forward_all", "step"]

_FAST = (GgmlDType.Q4_0, GgmlDType.Q4_1, GgmlDType.Q8_0)


# ------------------------------------------------------------------------------------------------
# quantised weights laid out for XLA
# ------------------------------------------------------------------------------------------------
def _split_blocks(raw: np.ndarray, dtype: GgmlDType, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Raw GGML rows -> ``qs`` (packed values), ``d`` (scales, f16) and, for Q4_1, ``m`` (mins, f16).

    Q4_0/Q4_1: ``qs`` ``(out, blocks, 16)`` u8, byte j holding value j (low nibble) and j + 16 (high
    nibble) of its block, exactly as in the file; Q8_0: ``qs`` ``(out, blocks, 32)`` i8.
    """
    out_f, in_f = shape
    nb = in_f // 32
    b = raw.reshape(out_f, nb, dtype.type_size())
    d = np.ascontiguousarray(b[..., 0:2]).view(np.float16)[..., 0]
    if dtype is GgmlDType.Q4_0:
        return {"qs": np.ascontiguousarray(b[..., 2:18]), "d": d}
    if dtype is GgmlDType.Q4_1:
        m = np.ascontiguousarray(b[..., 2:4]).view(np.float16)[..., 0]
        return {"qs": np.ascontiguousarray(b[..., 4:20]), "d": d, "m": m}
    if dtype is GgmlDType.Q8_0:
        return {"qs": np.ascontiguousarray(b[..., 2:34]).view(np.int8), "d": d}
    raise errors.Msg(f"no split layout for {dtype.name}")


def _lo_hi(qs: Any, d: Any) -> tuple[Any, Any]:
    """Q4 nibbles times their block scale: ``(out, blocks * 16)`` f32 each (low and high halves)."""
    o = qs.shape[0]
    ds = d.astype(jnp.float32)[..., None]
    lo = (qs & 15).astype(jnp.float32) * ds
    hi = (qs >> 4).astype(jnp.float32) * ds
    return lo.reshape(o, -1), hi.reshape(o, -1)


def _q4_matmul(x: Any, qs: Any, d: Any, m: Any | None, q4_0: bool) -> Any:
    """``x (M, in) @ Wᵀ`` for a Q4_0/Q4_1 weight, in f32.

    Value j of a block sits in the low nibble of byte j and value j + 16 in the high one, so x is
    split the same way and the product is ``x_lo @ (d·lo)ᵀ + x_hi @ (d·hi)ᵀ + Σ_block(x) @ mᵀ``
    (Q4_0: ``m = -8 d``). For one row (a decode step) the products are written as matrix-vector
    products, which XLA fuses with the nibble expansion: the f32 weights never reach memory.
    """
    mm, in_f = x.shape
    nb = in_f // 32
    xb = x.reshape(mm, nb, 2, 16)
    lo, hi = _lo_hi(qs, d)
    mins = -8.0 * d.astype(jnp.float32) if q4_0 else m.astype(jnp.float32)
    xs = xb.sum((2, 3))
    if mm == 1:
        return (_mv(lo, xb[0, :, 0].reshape(-1)) + _mv(hi, xb[0, :, 1].reshape(-1)) + _mv(mins, xs[0]))[None]
    dn = (((1,), (1,)), ((), ()))
    y = lax_dot(xb[:, :, 0].reshape(mm, -1), lo, dn) + lax_dot(xb[:, :, 1].reshape(mm, -1), hi, dn)
    return y + lax_dot(xs, mins, dn)


def _q8_matmul(x: Any, qs: Any, d: Any) -> Any:
    o, nb, _ = qs.shape
    rows = _chunk_rows(o, nb * 32)
    if rows:  # a large table (the tied LM head): expand `rows` rows at a time, never all of it
        qc = qs.reshape(o // rows, rows, nb, 32)
        dc = d.reshape(o // rows, rows, nb)
        ys = jax.lax.map(lambda c: _q8_matmul(x, c[0], c[1]), (qc, dc))  # (chunks, M, rows)
        return jnp.moveaxis(ys, 0, 1).reshape(x.shape[0], o)
    w = (qs.astype(jnp.float32) * d.astype(jnp.float32)[..., None]).reshape(o, -1)
    return lax_dot(x, w, (((1,), (1,)), ((), ())))


def _chunk_rows(out_f: int, in_f: int, max_elems: int = 1 << 21) -> int:
    """Rows per chunk (a divisor of ``out_f``) so a chunk holds at most ``max_elems`` values; 0 = no chunking."""
    if out_f * in_f <= 2 * max_elems:
        return 0
    target = max(1, max_elems // in_f)
    for r in range(min(target, out_f), 0, -1):
        if out_f % r == 0:
            return r if r > 1 else 0
    return 0


def _mv(w: Any, v: Any) -> Any:
    """``w (O, K) @ v (K,)`` -> ``(O,)``: a rank-1 operand lets XLA fuse w's producer into the loop."""
    return jax.lax.dot_general(w, v, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def lax_dot(a: Any, b: Any, dn: Any) -> Any:
    return jax.lax.dot_general(a, b, dn, preferred_element_type=jnp.float32)


class QLinear(Module):
    """A bias-free linear layer over a GGML-quantised weight ``(out, in)``: ``y = x @ Wᵀ``.

    Q4_0/Q4_1/Q8_0 weights are held as ``qs``/``d``/``m`` arrays (see :func:`_split_blocks`) and
    expanded inside the compiled step; F32/F16/BF16 and the other block types use
    :class:`candlejax.quantized.QMatMul`. Output dtype = input dtype (f32 accumulation).
    """

    def __init__(self, kind: str, shape: tuple[int, int], qs: Any = None, d: Any = None, m: Any = None,
                 qmatmul: Any = None):  # fmt: skip
        self.kind = kind
        self.shape = (int(shape[0]), int(shape[1]))
        self.qs, self.d, self.m = qs, d, m
        self.qmatmul = qmatmul

    @staticmethod
    def from_qtensor(q: QTensor, device: Any = None) -> QLinear:
        dt = q.dtype()
        if q.rank != 2:
            raise errors.UnexpectedNumberOfDims(2, q.rank, q.shape, "QLinear")
        if dt in _FAST:
            dev = Device.coerce(device).jax_device
            parts = _split_blocks(np.asarray(q.raw), dt, q.shape)
            arrs = {k: jax.device_put(v, dev) for k, v in parts.items()}
            return QLinear(dt.name, q.shape, arrs["qs"], arrs["d"], arrs.get("m"))
        return QLinear(dt.name, q.shape, qmatmul=QMatMul.from_qtensor(q))

    def forward(self, xs: Any) -> Any:
        x = xs._a if isinstance(xs, TensorBase) else jnp.asarray(xs)
        out_f, in_f = self.shape
        if x.shape[-1] != in_f:
            raise errors.ShapeMismatchBinaryOp(x.shape, self.shape, "qlinear")
        if self.qmatmul is not None:
            return self.qmatmul.forward(wrap(x))
        lead = x.shape[:-1]
        x2 = x.reshape(-1, in_f).astype(jnp.float32)
        if self.kind == "dense":  # an expanded weight (ModelWeights.from_gguf(..., dequantize=...))
            y = lax_dot(x2.astype(self.qs.dtype), self.qs, (((1,), (1,)), ((), ())))
        elif self.kind == "Q8_0":
            y = _q8_matmul(x2, self.qs, self.d)
        else:
            y = _q4_matmul(x2, self.qs, self.d, self.m, self.kind == "Q4_0")
        return wrap(y.reshape(*lead, out_f).astype(x.dtype))

    def dequantize(self) -> Any:
        """The weight as an f32 Tensor ``(out, in)``."""
        if self.qmatmul is not None:
            w = self.qmatmul.weight
            return w.dequantize() if isinstance(w, QTensor) else w
        o, i = self.shape
        if self.kind == "dense":
            return wrap(jnp.asarray(self.qs, jnp.float32))
        d = self.d.astype(jnp.float32)[..., None]
        if self.kind == "Q8_0":
            return wrap((self.qs.astype(jnp.float32) * d).reshape(o, i))
        q = jnp.concatenate([self.qs & 15, self.qs >> 4], -1).astype(jnp.float32)
        mins = -8.0 * d if self.kind == "Q4_0" else self.m.astype(jnp.float32)[..., None]
        return wrap((q * d + mins).reshape(o, i))


class QEmbedding(Module):
    """Token embeddings from a quantised ``(vocab, hidden)`` table: only the looked-up rows are
    expanded. :meth:`as_linear` reuses the table as the tied LM head."""

    def __init__(self, table: QLinear):
        self.table = table

    @property
    def weight(self) -> Any:  # the dtype probe of Llama.dtype / new_cache
        return jnp.zeros((), jnp.float32)

    def as_linear(self) -> QLinear:
        return self.table

    def forward(self, ids: Any) -> Any:
        i = unwrap(ids).astype(jnp.int32)
        t = self.table
        v, h = t.shape
        if t.qmatmul is not None:
            return wrap(t.qmatmul.embedding(i).jax.astype(jnp.float32))
        i = jnp.clip(i, 0, v - 1)
        qs = jnp.take(t.qs, i, axis=0)
        d = jnp.take(t.d, i, axis=0).astype(jnp.float32)[..., None]
        if t.kind == "Q8_0":
            w = qs.astype(jnp.float32) * d
        else:
            q = jnp.concatenate([qs & 15, qs >> 4], -1).astype(jnp.float32)
            mins = -8.0 * d if t.kind == "Q4_0" else jnp.take(t.m, i, axis=0).astype(jnp.float32)[..., None]
            w = q * d + mins
        return wrap(w.reshape(*i.shape, h))


class _DenseEmbedding(Module):
    def __init__(self, weight: Any):
        self.weight = weight

    def forward(self, ids: Any) -> Any:
        return wrap(jnp.take(self.weight, unwrap(ids).astype(jnp.int32), axis=0, mode="clip"))


# ------------------------------------------------------------------------------------------------
# GGUF -> model
# ------------------------------------------------------------------------------------------------
def _meta(content: Any, key: str, default: Any = None) -> Any:
    v = content.metadata.get(key)
    return default if v is None else v.value


def config_from_gguf(content: Any) -> Config:
    """A :class:`Config` from GGUF metadata (``{arch}.block_count``, ``{arch}.embedding_length``, ...)."""
    arch = _meta(content, "general.architecture", "llama")

    def g(key: str, default: Any = None) -> Any:
        return _meta(content, f"{arch}.{key}", default)

    n_head = int(g("attention.head_count"))
    hidden = int(g("embedding_length"))
    vocab = g("vocab_size")
    if vocab is None:
        toks = content.metadata.get("tokenizer.ggml.tokens")
        vocab = len(toks.value) if toks is not None else content.tensor_infos["token_embd.weight"].shape[0]
    head_dim = g("attention.key_length") or g("rope.dimension_count") or hidden // n_head
    scaling = None
    kind = g("rope.scaling.type")
    if kind == "linear" and g("rope.scaling.factor"):
        scaling = {"rope_type": "linear", "factor": float(g("rope.scaling.factor"))}
    return Config(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(g("feed_forward_length")),
        num_hidden_layers=int(g("block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=int(g("attention.head_count_kv", n_head)),
        head_dim=int(head_dim),
        max_position_embeddings=int(g("context_length", 4096)),
        rms_norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(g("rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        tie_word_embeddings="output.weight" not in content.tensor_infos,
        bos_token_id=_meta(content, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_meta(content, "tokenizer.ggml.eos_token_id"),
        pad_token_id=_meta(content, "tokenizer.ggml.padding_token_id"),
        torch_dtype="float32",
        rope_interleaved=True,
    )


class ModelWeights(Llama):
    """Candle's ``quantized_llama::ModelWeights``: a LLaMA-family GGUF model.

    ``ModelWeights.from_gguf(path, device)``; ``forward(tokens, index_pos)`` -> ``(batch, vocab)``
    logits of the last position, keeping its KV cache between calls; ``tokenizer`` (built from
    the GGUF metadata, with its chat template). A pytree of weights like :class:`Llama`: the pure
    form is :func:`step`.
    """

    @staticmethod
    def from_gguf(path: str | os.PathLike, device: Any = None, dequantize: str | None = None) -> ModelWeights:
        """Load a GGUF file (``general.architecture`` ``llama`` or a LLaMA-shaped family).

        ``dequantize`` (default: from ``CANDLE_DEQUANTIZE_ALL=1`` / ``CANDLE_DEQUANTIZE_ALL_F16=1``,
        as in Candle): ``"f32"`` or ``"f16"`` expands every linear weight once at load time. That
        trades memory (4 or 2 bytes per weight instead of ~0.6) for decode speed on the CPU, where
        XLA's dense matrix-vector products are several times faster than its fused
        expand-and-multiply loops. The embedding table stays quantised.
        """
        from candlejax.io.gguf import Content

        content = Content.read(os.fspath(path))
        try:
            return ModelWeights.from_content(content, device, dequantize)
        finally:
            content.close()

    @staticmethod
    def from_content(content: Any, device: Any = None, dequantize: str | None = None) -> ModelWeights:
        """Build from an open ``candlejax.io.gguf.Content`` (the tensors are copied out of it)."""
        from candlejax.tokenizer import Tokenizer

        if dequantize is None:
            env = os.environ.get
            dequantize = (
                "f32" if env("CANDLE_DEQUANTIZE_ALL", "") not in ("", "0")
                else "f16" if env("CANDLE_DEQUANTIZE_ALL_F16", "") not in ("", "0") else None
            )  # fmt: skip
        if dequantize not in (None, "f32", "f16"):
            raise errors.Msg(f"dequantize must be None, 'f32' or 'f16', got {dequantize!r}")

        dev = Device.coerce(device)
        cfg = config_from_gguf(content)
        infos = content.tensor_infos

        def info(name: str) -> Any:
            if name not in infos:
                raise errors.CannotFindTensor(name, f"cannot find tensor info for {name} in {content.path}")
            return infos[name]

        def lin(name: str) -> QLinear:  # host (numpy) leaves; placed on the device below
            i = info(name)
            raw = content.tensor_bytes(name)
            if dequantize is not None and name != "token_embd.weight":
                w = np.asarray(QTensor.from_data(raw, i.ggml_dtype, i.shape).dequantize().jax)
                return QLinear("dense", i.shape, qs=w.astype(np.float16 if dequantize == "f16" else np.float32))
            if i.ggml_dtype in _FAST and len(i.shape) == 2:
                parts = _split_blocks(raw, i.ggml_dtype, i.shape)
                return QLinear(i.ggml_dtype.name, i.shape, parts["qs"], parts["d"], parts.get("m"))
            return QLinear.from_qtensor(QTensor.from_data(raw, i.ggml_dtype, i.shape, dev), dev)

        def vec(name: str) -> np.ndarray:
            i = info(name)
            return np.asarray(QTensor.from_data(content.tensor_bytes(name), i.ggml_dtype, i.shape).dequantize().jax)

        emb = lin("token_embd.weight")
        embed: Module = QEmbedding(emb) if emb.qmatmul is None else _DenseEmbedding(emb.dequantize().jax)
        def block(i: int) -> Block:
            p = f"blk.{i}"
            attn = CausalSelfAttention(
                lin(f"{p}.attn_q.weight"), lin(f"{p}.attn_k.weight"), lin(f"{p}.attn_v.weight"),
                lin(f"{p}.attn_output.weight"), cfg.num_attention_heads, cfg.num_key_value_heads,
                cfg.head_dim, interleaved=True,
            )  # fmt: skip
            mlp = Mlp(lin(f"{p}.ffn_gate.weight"), lin(f"{p}.ffn_up.weight"), lin(f"{p}.ffn_down.weight"))
            return Block(
                RmsNorm(vec(f"{p}.attn_norm.weight"), cfg.rms_norm_eps),
                attn,
                RmsNorm(vec(f"{p}.ffn_norm.weight"), cfg.rms_norm_eps),
                mlp,
            )

        if dequantize:  # dense weights are read in place by unrolled layers (a scan would slice them out)
            layers: Any = [_to_device(block(i), dev) for i in range(cfg.num_hidden_layers)]
        else:
            layers = _stacked_layers(block, cfg.num_hidden_layers, dev)
        norm = _to_device(RmsNorm(vec("output_norm.weight"), cfg.rms_norm_eps), dev)
        embed = _to_device(embed, dev)
        if cfg.tie_word_embeddings:
            if isinstance(embed, QEmbedding):
                lm_head = None
            else:
                lm_head = QLinear("F32", (cfg.vocab_size, cfg.hidden_size), qmatmul=QMatMul.from_tensor(embed.weight))
        else:
            lm_head = _to_device(lin("output.weight"), dev)
        inv = rope_inv_freq(cfg)
        if "rope_freqs.weight" in infos:  # llama 3.1 GGUF: per-frequency divisors
            inv = (inv / vec("rope_freqs.weight").astype(np.float32)).astype(np.float32)
        inv_freq = jax.device_put(inv, dev.jax_device)
        model = ModelWeights(embed, layers, norm, lm_head, inv_freq, cfg)
        try:
            _TOKENIZERS[model] = Tokenizer.from_gguf_metadata(content.metadata)
        except errors.Error:
            pass
        return model

    @property
    def tokenizer(self) -> Any:
        """The :class:`candlejax.tokenizer.Tokenizer` stored in the GGUF file (with its chat template)."""
        tok = _TOKENIZERS.get(self)
        if tok is None:
            raise errors.Msg("this model has no tokenizer (the GGUF file has no tokenizer.ggml.* metadata)")
        return tok

    @property
    def dtype(self) -> DType:
        return DType.F32


def _to_device(tree: Any, dev: Device) -> Any:
    return jax.tree_util.tree_map(
        lambda a: jax.device_put(a, dev.jax_device) if isinstance(a, np.ndarray) else a, tree
    )


def _stacked_layers(block: Any, n: int, dev: Device) -> Block | list[Block]:
    """The ``n`` layers as one Block whose leaves are stacked over the layers (run with
    ``lax.scan``: one layer is compiled, and one layer's weights are expanded at a time), filled
    layer by layer so the host holds one copy; a list of Blocks when the layers differ in
    structure or block types (mixed-quantisation files)."""
    first = block(0)
    struct = jax.tree_util.tree_structure(first)
    leaves = jax.tree_util.tree_leaves(first)
    if not all(isinstance(x, np.ndarray) for x in leaves):
        return [_to_device(first, dev)] + [_to_device(block(i), dev) for i in range(1, n)]
    stacked = [np.empty((n, *x.shape), x.dtype) for x in leaves]
    for j, x in enumerate(leaves):
        stacked[j][0] = x
    del first, leaves
    for i in range(1, n):
        b = block(i)
        ls = jax.tree_util.tree_leaves(b)
        if jax.tree_util.tree_structure(b) != struct or any(
            x.shape != s.shape[1:] or x.dtype != s.dtype for x, s in zip(ls, stacked)
        ):
            done = [jax.tree_util.tree_unflatten(struct, [s[k] for s in stacked]) for k in range(i)]
            return [_to_device(b, dev) for b in done] + [_to_device(b, dev)] + [
                _to_device(block(k), dev) for k in range(i + 1, n)
            ]
        for j, x in enumerate(ls):
            stacked[j][i] = x
    out = []
    for j in range(len(stacked)):
        out.append(jax.device_put(stacked[j], dev.jax_device))
        stacked[j] = None  # type: ignore[call-overload]
    return jax.tree_util.tree_unflatten(struct, out)


_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
