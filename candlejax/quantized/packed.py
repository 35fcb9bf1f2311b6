"""``PackedWeight``: a GGML block weight kept in its file layout, multiplied by the native kernel.

A Q4_0 / Q4_1 / Q8_0 ``(out, in)`` weight as the file's block bytes ``(out, in / 32 * block size)``
u8 (0.56 / 0.63 / 1.06 bytes per value; the 4-bit ones half of
:class:`~candlejax.quantized.BlockedWeight`'s), multiplied by
:func:`candlejax.quantized.native.matmul`. A pytree. Stacked over layers, ``raw`` is
``(layers, out, ...)`` and :meth:`at` gives one layer's view without copying it (the kernel reads
the layer in place), so a ``lax.scan`` over layers passes the whole stack and the layer index
(:func:`hold_stacked` / :func:`attach_stacked`) instead of slicing ``raw`` into a copy per step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from candlejax import errors
from candlejax.quantized import native
from candlejax.quantized.blocked import aligned_empty
from candlejax.quantized.ggml_types import GgmlDType
from candlejax.quantized.jax_dequant import dequantize_rows

#: block types held as a PackedWeight when the native kernel is available
SUPPORTED = frozenset(native.KINDS)


class PackedWeight:
    """A Q4_0 / Q4_1 / Q8_0 ``(out, in)`` weight as raw GGML blocks (one layer, or a layer of a stack)."""

    __slots__ = ("ggml_dtype", "layer", "logical_shape", "raw")

    def __init__(self, raw: Any, ggml_dtype: GgmlDType, shape: tuple[int, int], layer: Any = None):
        self.raw, self.ggml_dtype, self.logical_shape, self.layer = raw, ggml_dtype, tuple(shape), layer

    @staticmethod
    def row_bytes(dtype: GgmlDType, shape: tuple[int, ...]) -> int:
        """Bytes per row of a 2-D ``shape`` weight of block type ``dtype`` (raises for one that cannot be packed)."""
        if dtype not in SUPPORTED:
            names = sorted(d.name for d in SUPPORTED)
            raise errors.UnsupportedDTypeForOp(dtype.name, "PackedWeight", f"supported: {names}")
        if len(shape) != 2 or shape[1] % dtype.block_size():
            raise errors.Msg(f"PackedWeight: {dtype.name} weight must be 2-D with in-features a multiple of 32,"
                             f" got {errors.fmt_shape(shape)}")  # fmt: skip
        return shape[1] // dtype.block_size() * dtype.type_size()

    @staticmethod
    def placeholder(dtype: GgmlDType, shape: tuple[int, ...], sharding: Any = None) -> PackedWeight:
        """A stand-in whose bytes are a ``jax.ShapeDtypeStruct`` (for compiling before loading)."""
        row = PackedWeight.row_bytes(dtype, shape)
        raw = jax.ShapeDtypeStruct((shape[0], row), np.uint8, sharding=sharding)
        return PackedWeight(raw, dtype, (shape[0], shape[1]))

    @staticmethod
    def from_raw(raw: Any, dtype: GgmlDType, shape: tuple[int, ...]) -> PackedWeight:
        """The file's bytes of a 2-D ``shape`` weight (host numpy, placed later)."""
        row = PackedWeight.row_bytes(dtype, shape)
        a = np.asarray(raw, np.uint8)
        if a.size != shape[0] * row:
            raise errors.Msg(f"PackedWeight: {a.size} bytes for a {dtype.name} {errors.fmt_shape(shape)} weight,"
                             f" expected {shape[0] * row}")  # fmt: skip
        owned = aligned_empty((shape[0], row), np.uint8)  # a copy: raw may be a view of a mapped file
        owned[...] = a.reshape(shape[0], row)
        return PackedWeight(owned, dtype, (shape[0], shape[1]))

    @property
    def shape(self) -> tuple[int, int]:
        """The logical ``(out, in)`` shape of one layer."""
        return self.logical_shape  # type: ignore[return-value]

    def storage_size_in_bytes(self) -> int:
        """The bytes of the raw GGML blocks."""
        return int(self.raw.size)

    def at(self, layer: Any) -> PackedWeight:
        """Layer ``layer`` (an int or traced int32) of a stacked weight, read in place by the kernel."""
        if self.raw is None or self.raw.ndim != 3:
            raise errors.Msg("PackedWeight.at: not a stacked (layers, out, bytes) weight")
        return PackedWeight(self.raw, self.ggml_dtype, self.logical_shape, layer)

    def to_blocked(self) -> Any:
        """The same values as a :class:`~candlejax.quantized.BlockedWeight` (unpacked on the host; a
        stacked weight stays stacked): the layout for meshes and other backends than the CPU."""
        from candlejax.quantized.blocked import BlockedWeight, unpack

        if self.raw is None or (self.raw.ndim == 3 and self.layer is not None):
            raise errors.Msg("PackedWeight.to_blocked: needs the whole weight (not a stand-in or a layer view)")
        shape = (*self.raw.shape[:-2], *self.logical_shape)
        q, scale, offset = unpack(np.asarray(self.raw), self.ggml_dtype, shape)
        return BlockedWeight(q, scale, offset, self.ggml_dtype)

    def _rows_raw(self) -> Any:
        if self.raw.ndim == 3:
            if self.layer is None:
                raise errors.Msg("PackedWeight: a stacked weight needs a layer (use .at(i))")
            return jax.lax.dynamic_index_in_dim(self.raw, jnp.asarray(self.layer, jnp.int32), 0, keepdims=False)
        return self.raw

    def dequantize(self, out_dtype: Any = jnp.float32) -> Any:
        """The ``(out, in)`` values (pure JAX; the reference for the native product)."""
        return dequantize_rows(self._rows_raw(), self.ggml_dtype).astype(out_dtype)

    def rows(self, ids: Any, out_dtype: Any = jnp.float32) -> Any:
        """Dequantised rows ``ids`` (an embedding lookup): ``ids.shape + (in,)``."""
        return dequantize_rows(jnp.take(self._rows_raw(), ids, axis=0), self.ggml_dtype).astype(out_dtype)

    def matmul(self, x: Any) -> Any:
        """``x @ Wᵀ``: ``(..., in) -> (..., out)`` in f32, by the native kernel when it is available."""
        lead, k = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, k).astype(jnp.float32)
        if native.available():
            y = _native_product(x2, self.raw, self.layer, self.ggml_dtype)
        else:
            y = jnp.dot(x2, self.dequantize(jnp.float32).T, preferred_element_type=jnp.float32)
        return y.reshape(*lead, self.logical_shape[0])

    def __repr__(self) -> str:
        shape = getattr(self.raw, "shape", None)  # JAX may put a placeholder in the array's place
        stack = "" if shape is None or len(shape) != 3 else f", layers={shape[0]}"
        return f"PackedWeight({self.ggml_dtype.name}, shape={list(self.logical_shape)}{stack})"


def _product(x: Any, raw: Any, layer: Any, dtype: GgmlDType) -> Any:
    return native.matmul(x, raw, dtype, layer)


# x @ Wᵀ is linear in x: its derivative is tx @ Wᵀ with W dequantised (the weight itself has no
# derivative), forward and reverse (JAX transposes it to dy @ W), so jax.jvp, jacfwd and hessian work
_native_product = jax.custom_jvp(_product, nondiff_argnums=(3,))


def _dequantized_product(x: Any, raw: Any, layer: Any, dtype: GgmlDType) -> Any:
    """``x @ Wᵀ`` in XLA with ``W`` dequantised from ``raw`` (one layer of a stack where ``layer`` is given)."""
    in_features = raw.shape[-1] // dtype.type_size() * dtype.block_size()
    w = PackedWeight(raw, dtype, (raw.shape[-2], in_features), layer).dequantize(jnp.float32)
    return jnp.dot(x, w.T, preferred_element_type=jnp.float32)


def _jvp(dtype: GgmlDType, primals: tuple[Any, Any, Any], tangents: tuple[Any, Any, Any]) -> Any:
    (x, raw, layer), (tx, _, _) = primals, tangents
    y = _native_product(x, raw, layer, dtype)
    if type(tx) is SymbolicZero:
        return y, jnp.zeros_like(y)
    # rematerialised: a gradient keeps the raw blocks as its residual, not the dequantised f32 weight
    product = jax.checkpoint(_dequantized_product, static_argnums=(3,))
    return y, product(tx, raw, layer, dtype)


_native_product.defjvp(_jvp, symbolic_zeros=True)


def _flatten(w: PackedWeight) -> Any:
    return (w.raw, w.layer), (w.ggml_dtype, w.logical_shape)


jax.tree_util.register_pytree_node(
    PackedWeight, _flatten, lambda aux, ch: PackedWeight(ch[0], aux[0], aux[1], ch[1])
)


def _is_packed(v: Any) -> bool:
    return isinstance(v, PackedWeight)


def hold_stacked(tree: Any) -> tuple[Any, list[PackedWeight]]:
    """``tree`` with each stacked :class:`PackedWeight` replaced by a stand-in whose only leaf is the
    layer numbers ``arange(layers)``, and the list of the weights taken out (in tree order). A
    ``lax.scan`` over the stand-in tree slices that leaf to the step's layer number, and
    :func:`attach_stacked` turns each stand-in back into a view of its weight at that layer."""
    held: list[PackedWeight] = []

    def take(v: Any) -> Any:
        if isinstance(v, PackedWeight) and v.raw is not None and v.raw.ndim == 3:
            held.append(v)
            return PackedWeight(None, v.ggml_dtype, v.logical_shape, jnp.arange(v.raw.shape[0], dtype=jnp.int32))
        return v

    return jax.tree_util.tree_map(take, tree, is_leaf=_is_packed), held


def attach_stacked(tree: Any, held: list[PackedWeight]) -> Any:
    """Undo :func:`hold_stacked` inside the scan: stand-in ``j`` becomes ``held[j].at(its layer)``."""
    it = iter(held)

    def put(v: Any) -> Any:
        if isinstance(v, PackedWeight) and v.raw is None:
            return next(it).at(v.layer)
        return v

    return jax.tree_util.tree_map(put, tree, is_leaf=_is_packed)


__all__ = ["SUPPORTED", "PackedWeight", "attach_stacked", "hold_stacked"]
