"""Candle's ``candle_transformers::quantized_nn``: layers over GGML-quantised weights.

requires: candlejax.quantized (QMatMul, QTensor, BlockedWeight), candlejax.nn.ops (rms_norm)
provides: ``QLinear``, ``QEmbedding``, ``QRmsNorm``, ``linear``, ``linear_no_bias``, ``linear_b``,
``embedding``, ``rms_norm``, ``scan_layers``, ``dequantized`` (the float loaders' view of a GGUF
``VarBuilder``)

A weight is whatever :class:`~candlejax.quantized.QMatMul` holds: a ``PackedWeight`` (Q4_0/Q4_1/Q8_0 in
the file's layout, multiplied by the native CPU kernel when it is built), a ``BlockedWeight``
(Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, expanded inside the fused product), a ``QTensor`` (other block types,
kept packed) or a plain array (F32/F16, or a weight dequantised at load). Each layer is a Module
whose weight is a pytree child: a jit argument, sliced per layer by :func:`scan_layers` when
layers are stacked (packed weights are read in place instead of sliced).
The constructors read a quantised ``VarBuilder`` (``candlejax.quantized.VarBuilder.from_gguf``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from candlejax import errors
from candlejax.dtype import DType
from candlejax.nn import ops
from candlejax.nn.module import Module
from candlejax.nn.norm import LayerNorm
from candlejax.nn.var_builder import SimpleBackend
from candlejax.nn.var_builder import VarBuilder as FloatVarBuilder
from candlejax.quantized.blocked import BlockedWeight
from candlejax.quantized.packed import attach_stacked, hold_stacked
from candlejax.quantized.qtensor import QMatMul, QTensor, blocked_matmul_direct
from candlejax.tensor._core import unwrap, wrap

__all__ = ["QEmbedding", "QLinear", "QRmsNorm", "dequantized", "embedding", "layer_norm", "layer_norm_no_bias",
           "linear", "linear_b", "linear_no_bias", "rms_norm", "scan_layers"]  # fmt: skip


def scan_layers(body: Any, carry: Any, layers: Any) -> Any:
    """``carry = body(carry, layer, i)`` for each layer of ``layers`` (a Module whose leaves are
    stacked over a leading layer axis), as one ``lax.scan``; returns the final carry.

    Stacked :class:`~candlejax.quantized.PackedWeight` leaves are not sliced (a slice would copy the
    layer's weight on every step): the kernel reads layer ``i`` of the whole stack in place.
    Candle's equivalent is the loop ``for layer in &self.layers``."""
    n = jax.tree_util.tree_leaves(layers)[0].shape[0]
    rest, held = hold_stacked(layers)

    def step(c: Any, xs: Any) -> Any:
        layer, i = xs
        return body(c, attach_stacked(layer, held), i), None

    return lax.scan(step, carry, (rest, jnp.arange(n, dtype=jnp.int32)))[0]


class QLinear(Module):
    """``y = x @ Wᵀ (+ b)`` over a quantised ``(out, in)`` weight (Candle's ``quantized_nn::Linear``).

    ``direct=True`` multiplies a blocked weight in the untransposed form
    (:func:`candlejax.quantized.qtensor.blocked_matmul_direct`): after attention over a KV cache,
    XLA:CPU runs the transposed form ~10x slower than in isolation (the output projection).
    """

    def __init__(self, weight: Any, bias: Any = None, direct: bool = False):
        self.weight = weight
        self.bias = None if bias is None else unwrap(bias)
        self.direct = bool(direct)

    @staticmethod
    def from_qmatmul(m: QMatMul, bias: Any = None) -> QLinear:
        """A ``QLinear`` from a ``QMatMul`` and an optional bias (Candle's ``quantized_nn::Linear::from_weights``)."""
        return QLinear(m.weight if m.is_quantized() else unwrap(m.weight), bias)

    @staticmethod
    def from_qtensor(q: QTensor, bias: Any = None) -> QLinear:
        """A ``QLinear`` from a ``QTensor`` and an optional bias (Candle's ``quantized_nn::Linear::from_arc``)."""
        return QLinear.from_qmatmul(QMatMul.from_qtensor(q), bias)

    @staticmethod
    def from_arc(weight: QTensor, bias: Any = None) -> QLinear:
        """Candle's ``Linear::from_arc(weight, bias)``: :meth:`from_qtensor`."""
        return QLinear.from_qtensor(weight, bias)

    @staticmethod
    def from_weights(weight: QMatMul, bias: Any = None) -> QLinear:
        """Candle's ``Linear::from_weights(qmatmul, bias)``: :meth:`from_qmatmul`."""
        return QLinear.from_qmatmul(weight, bias)

    def qmatmul(self) -> QMatMul:
        """The weight as a ``QMatMul``."""
        return QMatMul(self.weight)

    @property
    def shape(self) -> tuple[int, int]:
        """The weight's ``(out, in)``."""
        return tuple(self.weight.shape)  # type: ignore[return-value]

    def forward(self, xs: Any) -> Any:
        """``xs @ weightᵀ + bias`` with the quantized weight: ``(..., in)`` in, ``(..., out)`` out."""
        x = unwrap(xs)
        if self.direct and isinstance(self.weight, BlockedWeight):
            y = blocked_matmul_direct(self.weight, x)
        else:
            y = unwrap(QMatMul(self.weight).forward(x))
        if self.bias is not None:
            y = y + self.bias.astype(y.dtype)
        return wrap(y)

    def embedding(self, ids: Any) -> Any:
        """Rows ``ids`` of the weight, dequantised: ``ids.shape + (in,)``."""
        return QMatMul(self.weight).embedding(ids)


class QEmbedding(Module):
    """Token embeddings from a quantised ``(vocab, hidden)`` table (Candle's ``quantized_nn::Embedding``):
    only the looked-up rows are expanded. :meth:`as_linear` reuses the table as a tied LM head.
    Ids must be integers; eagerly, one outside ``[0, vocab)`` raises (Candle's ``index_select``),
    whatever the table's block type; under jit it is clamped."""

    def __init__(self, table: QLinear | Any):
        self.table = table if isinstance(table, QLinear) else QLinear(table)

    @staticmethod
    def new(d1: int, d2: int, vb: Any) -> QEmbedding:
        """Candle's ``Embedding::new(d1, d2, vb)``: the ``(d1, d2)`` table ``weight`` (:func:`embedding`)."""
        return embedding(d1, d2, vb)

    @property
    def weight(self) -> Any:  # a dtype / device probe: the rows come out in f32
        """A scalar probe with the output's dtype (f32) and device; the rows are in ``table``."""
        return jnp.zeros((), jnp.float32)

    @property
    def vocab_size(self) -> int:
        """The number of rows in the table."""
        return int(self.table.shape[0])

    def embeddings(self) -> Any:
        """Candle's ``embeddings()``: the whole table, dequantised to f32 ``(vocab, hidden)``."""
        return self.forward(wrap(jnp.arange(self.vocab_size, dtype=jnp.int32)))

    def as_linear(self) -> QLinear:
        """The table as a ``QLinear`` (tied output projection)."""
        return self.table

    def forward(self, ids: Any) -> Any:
        """Look up integer ``ids``, dequantized: ``(...)`` in, ``(..., hidden)`` f32 out."""
        return wrap(unwrap(self.table.embedding(ids)).astype(jnp.float32))


class QRmsNorm(Module):
    """RMS norm whose weight was stored quantised, dequantised once at load (Candle's ``quantized_nn::RmsNorm``)."""

    def __init__(self, weight: Any, eps: float):
        w = weight.dequantize() if isinstance(weight, QTensor) else weight
        self.weight = unwrap(w)
        self.eps = float(eps)

    @staticmethod
    def new(size: int, eps: float, vb: Any) -> QRmsNorm:
        """Candle's ``RmsNorm::new(size, eps, vb)`` (:func:`rms_norm`)."""
        return rms_norm(size, eps, vb)

    @staticmethod
    def from_qtensor(weight: QTensor, eps: float) -> QRmsNorm:
        """Candle's ``RmsNorm::from_qtensor(weight, eps)``."""
        return QRmsNorm(weight, eps)

    def forward(self, xs: Any) -> Any:
        """RMS-normalize over the last dim: ``(..., size)`` in, same shape out."""
        return ops.rms_norm(xs, self.weight, self.eps)


def _dense(q: QTensor) -> Any:
    return np.asarray(unwrap(q.dequantize()))


def linear_b(in_dim: int, out_dim: int, bias: bool, vb: Any) -> QLinear:
    """``weight`` ``(out, in)`` quantised, ``bias`` ``(out,)`` dequantised (Candle's ``linear_b``)."""
    w = vb.get((out_dim, in_dim), "weight")
    b = _dense(vb.get((out_dim,), "bias")) if bias else None
    return QLinear.from_qtensor(w, b)


def linear(in_dim: int, out_dim: int, vb: Any) -> QLinear:
    """Candle's ``quantized_nn::linear``: a ``QLinear`` with ``weight`` and ``bias`` from ``vb``."""
    return linear_b(in_dim, out_dim, True, vb)


def linear_no_bias(in_dim: int, out_dim: int, vb: Any) -> QLinear:
    """Candle's ``quantized_nn::linear_no_bias``: a ``QLinear`` with only ``weight`` from ``vb``."""
    return linear_b(in_dim, out_dim, False, vb)


def embedding(in_size: int, out_size: int, vb: Any) -> QEmbedding:
    """Candle's ``quantized_nn::Embedding::new``: a quantized table ``weight`` ``(in_size, out_size)`` from ``vb``."""
    return QEmbedding(QLinear.from_qtensor(vb.get((in_size, out_size), "weight")))


def layer_norm(size: int, eps: float, vb: Any) -> LayerNorm:
    """Candle's ``quantized_nn::layer_norm(size, eps, vb)``: ``weight`` and ``bias`` (stored
    quantised or not) dequantised into an ``nn.LayerNorm``."""
    w, b = vb.get(size, "weight"), vb.get(size, "bias")
    for name, t in (("weight", w), ("bias", b)):
        if tuple(t.shape) != (int(size),):
            raise errors.UnexpectedShape(f"layer_norm {vb.path(name)}", (size,), t.shape)
    return LayerNorm(_dense(w), _dense(b), eps)


def layer_norm_no_bias(size: int, eps: float, vb: Any) -> LayerNorm:
    """Candle's ``quantized_nn::layer_norm_no_bias(size, eps, vb)``: ``weight`` only, dequantised."""
    w = vb.get(size, "weight")
    if tuple(w.shape) != (int(size),):
        raise errors.UnexpectedShape(f"layer_norm {vb.path('weight')}", (size,), w.shape)
    return LayerNorm(_dense(w), None, eps)


def rms_norm(size: int, eps: float, vb: Any) -> QRmsNorm:
    """Candle's ``quantized_nn::RmsNorm::new``: an ``RmsNorm`` whose ``weight`` ``(size,)`` is read from ``vb``,
    dequantized."""
    w = vb.get(size, "weight")
    if tuple(w.shape) != (int(size),):
        raise errors.UnexpectedShape(f"rms_norm {vb.path('weight')}", (size,), w.shape)
    return QRmsNorm(_dense(w), eps)


class _DequantizingBackend(SimpleBackend):
    """A GGUF file's tensors for a float ``VarBuilder``, each dequantised to F32 as it is read."""

    def __init__(self, root: Any):
        self.root = root  # the quantized VarBuilder at the file's root

    def describe(self) -> str:
        return f"the GGUF file {self.root.content.path or '(in memory)'}"

    def names(self) -> list[str]:
        return list(self.root.content.tensor_infos)

    def contains_tensor(self, path: str) -> bool:
        return self.root.contains_key(path)

    def _shape(self, path: str) -> tuple[int, ...]:
        return tuple(self.root.content.tensor_infos[path].shape)

    def _load(self, path: str) -> Any:
        return self.root.get_no_shape(path).dequantize(self.root.device)


def dequantized(vb: Any) -> FloatVarBuilder:
    """A float :class:`candlejax.nn.VarBuilder` over a GGUF ``VarBuilder``'s file, at its prefix: every
    tensor read through it is dequantised to F32 (Candle's ``vb.get(..)?.dequantize(vb.device())``),
    with the float builder's shape checks and nearest-name errors. A model whose linear layers are
    quantised loads its other weights (norms, embeddings, convolutions) through it, and builds each
    linear layer from ``vb.pp(float_vb.prefix())``-style paths of the quantised builder."""
    root = type(vb).from_content(vb.content, vb.device)
    return FloatVarBuilder.from_backend(_DequantizingBackend(root), DType.F32, vb.device).set_prefix(vb.prefix())
