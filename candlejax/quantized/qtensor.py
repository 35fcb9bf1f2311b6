"""``QTensor`` and ``QMatMul``: GGML-quantised weights kept packed in device memory.

A :class:`QTensor` holds the raw block bytes as one device ``jax.Array`` of uint8 with shape
``(*shape[:-1], shape[-1] // block_size * type_size)`` (whole blocks per row), plus its
:class:`GgmlDType` and logical shape as static data. It is a pytree, so it passes through
``jax.jit`` as an argument and dequantisation happens inside the compiled step.

:class:`QMatMul` is Candle's ``QMatMul``: ``forward(xs) = xs @ Wᵀ`` for a weight ``W`` of shape
``(out, in)``; quantised weights are expanded inside the step, F32/F16/BF16 weights are stored as
plain arrays.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import _reload, errors
from candlejax._config import env_on
from candlejax._dispatch import device_mismatch, is_eager, op
from candlejax.device import Device, single_device
from candlejax.dtype import DType, to_dtype
from candlejax.quantized import native
from candlejax.quantized.blocked import SUPPORTED as BLOCKED_TYPES
from candlejax.quantized.blocked import BlockedWeight
from candlejax.quantized.ggml_types import GgmlDType, quantize_imatrix_np, quantize_np
from candlejax.quantized.jax_dequant import dequantize_rows
from candlejax.quantized.packed import SUPPORTED as PACKED_TYPES
from candlejax.quantized.packed import PackedWeight
from candlejax.shape import Dims, Rank
from candlejax.tensor._core import TensorBase, unwrap, wrap

_reload.refuse(__name__)  # a re-run would redefine the classes of existing objects

_FLOAT_JNP = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def _check_shape(shape: tuple[int, ...], block_size: int) -> None:
    """Candle's ``check_shape``: no scalars, last dim a multiple of the block size."""
    if not shape:
        raise errors.Msg(f"scalar tensor cannot be quantized {errors.fmt_shape(shape)}")
    if shape[-1] % block_size:
        raise errors.Msg(
            f"quantized tensor must have their last dim divisible by block size {errors.fmt_shape(shape)} {block_size}"
        )


def byte_shape(shape: tuple[int, ...], dtype: GgmlDType) -> tuple[int, ...]:
    """The shape of the raw data of a ``dtype`` tensor of ``shape``: whole blocks per row."""
    return (*shape[:-1], shape[-1] // dtype.block_size() * dtype.type_size())


@op(static=("dtype", "shape", "out"))
def _dequantize(data: Any, *, dtype: GgmlDType, shape: tuple[int, ...], out: str) -> Any:
    return dequantize_rows(data, dtype).reshape(shape).astype(out)


@op(static=("dtype", "hidden"))
def _embedding(data: Any, ids: Any, *, dtype: GgmlDType, hidden: int) -> Any:
    rows = jnp.take(data, ids.astype(jnp.int32), axis=0, mode="clip")
    return dequantize_rows(rows, dtype).reshape(*ids.shape, hidden)


class QTensor:
    """A GGML-quantised tensor (``candle::quantized::QTensor``).

    Build one with :meth:`quantize`, :meth:`from_data`, or ``gguf.Content.tensor(name)``.
    """

    __slots__ = ("_data", "_dtype", "_shape")

    _data: Any
    _dtype: GgmlDType
    _shape: tuple[int, ...]

    def __init__(self, data: Any, dtype: GgmlDType, shape: Any):
        """Wrap raw block bytes (uint8, flat or byte-shaped; numpy or jax) of a ``dtype`` tensor of ``shape``."""
        shape = tuple(int(d) for d in shape)
        _check_shape(shape, dtype.block_size())
        bshape = byte_shape(shape, dtype)
        if isinstance(data, bytes | bytearray | memoryview):
            data = np.frombuffer(data, np.uint8)
        if data.dtype != np.uint8:
            raise errors.UnexpectedDType("u8", str(data.dtype), "QTensor raw data must be bytes")
        n = int(np.prod(bshape))
        if int(np.prod(data.shape)) != n:
            raise errors.Msg(
                f"QTensor {dtype.name} {errors.fmt_shape(shape)} needs {n} bytes of block data,"
                f" got {int(np.prod(data.shape))}"
            )
        if not isinstance(data, jax.Array | jax.core.Tracer):
            data = jnp.asarray(np.ascontiguousarray(data))
        self._data = data.reshape(bshape)
        self._dtype = dtype
        self._shape = shape

    @classmethod
    def _new(cls, data: Any, dtype: GgmlDType, shape: tuple[int, ...]) -> QTensor:
        q = object.__new__(cls)
        q._data, q._dtype, q._shape = data, dtype, shape
        return q

    # --- constructors ------------------------------------------------------------------------
    @staticmethod
    def from_data(data: Any, dtype: GgmlDType | str, shape: Any, device: Any = None) -> QTensor:
        """Raw GGML bytes -> a QTensor on ``device`` (Candle's ``qtensor_from_ggml``).

        ``data`` is ``bytes`` / ``bytearray`` / ``memoryview`` (Candle's ``Cow<[u8]>``) or a uint8 array.
        """
        dtype = GgmlDType.coerce(dtype, "QTensor.from_data")
        if isinstance(data, bytes | bytearray | memoryview):
            data = np.frombuffer(data, np.uint8)
        elif not isinstance(data, jax.Array):
            data = np.asarray(data, np.uint8)
        q = QTensor(data, dtype, shape)
        return q.to_device(device) if device is not None else q

    @staticmethod
    def quantize(t: Any, dtype: GgmlDType | str) -> QTensor:
        """``QTensor::quantize(&t, dtype)``: quantise a Tensor (or array) on the host, keep its device."""
        dev = t.device if isinstance(t, TensorBase) and is_eager() else None
        return QTensor._quantize(t, dtype, dev)

    @staticmethod
    def quantize_onto(t: Any, dtype: GgmlDType | str, device: Any) -> QTensor:
        """``QTensor::quantize_onto``: quantise and place the blocks on ``device``."""
        return QTensor._quantize(t, dtype, Device.coerce(device))

    @staticmethod
    def quantize_imatrix(t: Any, imatrix_weights: Any, dtype: GgmlDType | str) -> QTensor:
        """``QTensor::quantize_imatrix``: quantise with importance weights, one per column of ``t``.

        ``imatrix_weights`` (a sequence, array or Tensor of ``t``'s last-dim length, e.g. the mean
        squared activations a llama.cpp imatrix holds) weighs each column's error in the fit. Only the
        K-quants Q2K ... Q6K have this fit, as in Candle.
        """
        dev = t.device if isinstance(t, TensorBase) and is_eager() else None
        return QTensor._quantize(t, dtype, dev, imatrix_weights)

    @staticmethod
    def quantize_imatrix_onto(t: Any, imatrix_weights: Any, dtype: GgmlDType | str, device: Any) -> QTensor:
        """``QTensor::quantize_imatrix_onto``: :meth:`quantize_imatrix`, the blocks placed on ``device``."""
        return QTensor._quantize(t, dtype, Device.coerce(device), imatrix_weights)

    @staticmethod
    def _quantize(t: Any, dtype: GgmlDType | str, device: Device | None, imatrix: Any = None) -> QTensor:
        dtype = GgmlDType.coerce(dtype, "QTensor.quantize")  # "q4_0", "Q4_K", ... as t.quantize(fmt) takes them
        a = unwrap(t)
        if isinstance(a, jax.core.Tracer) or (imatrix is not None and isinstance(unwrap(imatrix), jax.core.Tracer)):
            raise errors.TracingError(
                "QTensor.quantize runs on the host and cannot be used inside jax.jit/grad/vmap; quantize the"
                " weights once, outside, and pass the QTensor in as an argument"
            )
        x = np.asarray(a)
        shape = tuple(x.shape)
        if imatrix is not None:
            w = np.asarray(unwrap(imatrix), dtype=np.float32).reshape(-1)
            if shape and w.size != shape[-1]:
                raise errors.Msg(
                    f"imatrix weights must have the same length {w.size} as the last dim of src {shape[-1]}"
                )
        _check_shape(shape, dtype.block_size())
        if imatrix is None:
            raw = quantize_np(x.astype(np.float32, copy=False), dtype)
        else:
            raw = quantize_imatrix_np(x.astype(np.float32, copy=False), w, dtype)
        q = QTensor(raw, dtype, shape)
        return q.to_device(device) if device is not None else q

    # --- Candle's accessors --------------------------------------------------------------------
    def dtype(self) -> GgmlDType:
        """The GGML block type, e.g. ``GgmlDType.Q4_0``."""
        return self._dtype

    @property
    def ggml_dtype(self) -> GgmlDType:
        """The GGML block type (candle-pyo3's property name; the binding gives its name, which
        ``qt.ggml_dtype.name`` is and ``.lower()`` / ``.upper()`` read as on a string)."""
        return self._dtype

    @property
    def shape(self) -> Dims:
        """The logical (dequantised) shape, row-major, e.g. ``(out, in)`` for a weight; Rust Candle's
        ``qt.shape()`` gives the ``Shape``."""
        return Dims(self._shape)

    def dims(self) -> tuple[int, ...]:
        """The shape as a tuple of ints (Candle's ``qtensor.shape().dims()``)."""
        return self._shape

    @property
    def rank(self) -> Rank:
        """Candle's ``QTensor::rank``: the number of dims."""
        return Rank(len(self._shape))

    def elem_count(self) -> int:
        """The number of elements of the logical tensor."""
        return int(np.prod(self._shape, dtype=np.int64))

    @property
    def device(self) -> Device:
        """The Device holding the block bytes (``Device.Cpu`` under tracing)."""
        a = self._data
        if isinstance(a, jax.core.Tracer) or not hasattr(a, "devices"):
            return Device.Cpu
        return Device.from_jax(min(a.devices(), key=lambda d: d.id))

    @property
    def raw(self) -> Any:
        """The block bytes as a ``jax.Array`` of uint8, shape ``(*shape[:-1], row_bytes)`` (zero-copy)."""
        return self._data

    def data(self) -> np.ndarray:
        """The block bytes on the host, flat uint8 (Candle's ``data()``)."""
        return np.asarray(self._data).reshape(-1)

    def storage_size_in_bytes(self) -> int:
        """Candle's ``QTensor::storage_size_in_bytes``: the bytes of the quantized blocks."""
        return self._dtype.bytes_for(self.elem_count())

    def to_device(self, device: Any) -> QTensor:
        """This tensor's blocks on ``device`` (a traced tensor stays as it is)."""
        dev = Device.coerce(device)
        if isinstance(self._data, jax.core.Tracer):
            return self
        return QTensor._new(jax.device_put(self._data, dev.jax_device), self._dtype, self._shape)

    def reshape(self, shape: Any) -> QTensor:
        """Change the logical shape, keeping the blocks (last dim must stay block-aligned)."""
        shape = tuple(int(d) for d in shape)
        if int(np.prod(shape)) != self.elem_count():
            raise errors.Msg(
                f"cannot reshape quantized tensor {errors.fmt_shape(self._shape)} to {errors.fmt_shape(shape)}:"
                " element count differs"
            )
        _check_shape(shape, self._dtype.block_size())
        return QTensor._new(self._data.reshape(byte_shape(shape, self._dtype)), self._dtype, shape)

    # --- dequantisation ----------------------------------------------------------------------
    def _dequant(self, out: str, device: Any) -> Any:
        a = _dequantize(self._data, dtype=self._dtype, shape=self._shape, out=out)
        t = wrap(a)
        if device is not None and not isinstance(a, jax.core.Tracer):
            dev = Device.coerce(device)
            if dev != self.device:
                t = wrap(jax.device_put(a, dev.jax_device))
        return t

    def dequantize(self, device: Any = None) -> Any:
        """The values as an F32 ``Tensor`` on ``device`` (default: the QTensor's). Works under jit."""
        return self._dequant("float32", device)

    def matmul_t(self, lhs: Any) -> Any:
        """``lhs @ selfᵀ`` for a ``(out, in)`` weight: ``(..., in) -> (..., out)`` (candle-pyo3's
        ``QTensor.matmul_t``; :class:`QMatMul` is the layer)."""
        return QMatMul.from_qtensor(self).forward(lhs)

    def dequantize_f16(self, device: Any = None) -> Any:
        """The values as an F16 ``Tensor`` (dequantised in f32, then rounded)."""
        return self._dequant("float16", device)

    def embedding(self, ids: Any) -> Any:
        """Rows ``ids`` of a ``(rows, hidden)`` table, dequantised: shape ``(*ids.shape, hidden)``, F32.

        Only the selected rows are expanded. Eagerly, an out-of-range id raises like Candle; under
        jit the index is clamped (JAX's gather semantics).
        """
        if self.rank != 2:
            raise errors.UnexpectedNumberOfDims(2, self.rank, self._shape, "embedding")
        rows, hidden = self._shape
        a = _embedding_ids(ids, rows)
        return wrap(_embedding(self._data, a, dtype=self._dtype, hidden=hidden))

    def __repr__(self) -> str:
        return f"QTensor[{errors.fmt_shape(self._shape)}; {self._dtype.name}]"


def _embedding_ids(ids: Any, rows: int) -> Any:
    """``ids`` as an integer array, checked eagerly against a table of ``rows`` rows (Candle's
    ``index_select`` error); under jit they are left as they are (the gathers clamp)."""
    a = unwrap(ids)
    if not isinstance(a, jax.Array | jax.core.Tracer):
        a = jnp.asarray(np.asarray(a))
    if not jnp.issubdtype(a.dtype, jnp.integer):
        got = "bool" if a.dtype == jnp.bool_ else to_dtype(a.dtype)
        raise errors.UnexpectedDType(DType.U32, got, "embedding: ids must have an integer dtype")
    if not isinstance(a, jax.core.Tracer) and a.size:
        lo, hi = int(jnp.min(a)), int(jnp.max(a))
        if lo < 0 or hi >= rows:
            bad = hi if hi >= rows else lo
            raise errors.Msg(f"embedding id {bad} is out of range for {rows} rows")
    return a


def _qt_flatten(q: QTensor) -> tuple[tuple[Any], tuple[GgmlDType, tuple[int, ...]]]:
    return (q._data,), (q._dtype, q._shape)


def _qt_unflatten(aux: tuple[GgmlDType, tuple[int, ...]], children: Any) -> QTensor:
    return QTensor._new(children[0], aux[0], aux[1])


jax.tree_util.register_pytree_node(QTensor, _qt_flatten, _qt_unflatten)


# ----------------------------------------------------------------------------------------------
# QMatMul
# ----------------------------------------------------------------------------------------------
def _compute_dtype(x: Any, op_name: str) -> Any:
    if x.dtype not in _FLOAT_JNP:
        raise errors.UnsupportedDTypeForOp(to_dtype(x.dtype), op_name, "expects f32, f16 or bf16 inputs")
    return x.dtype


def _matmul_t(x: Any, w: Any) -> Any:
    """``x @ wᵀ`` in x's dtype, accumulating in f32."""
    cdt = x.dtype
    y = jax.lax.dot_general(
        x, w.astype(cdt), (((x.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.float32
    )
    return y.astype(cdt)


#: Weights with more elements than this are dequantised in row chunks on the CPU backend.
CHUNK_THRESHOLD = 1 << 23
_CHUNK_ELEMS = 1 << 18


def _chunk_rows(out_f: int, in_f: int) -> int:
    """The largest divisor of ``out_f`` whose rows hold at most ~_CHUNK_ELEMS values (0: no chunking)."""
    if out_f * in_f <= CHUNK_THRESHOLD or jax.default_backend() != "cpu":
        return 0
    target = max(1, _CHUNK_ELEMS // in_f)
    for r in range(min(target, out_f), 0, -1):
        if out_f % r == 0:
            return r if r > 1 else 0
    return 0


@op(static=("dtype", "shape"))
def _qmatmul(data: Any, x: Any, *, dtype: GgmlDType, shape: tuple[int, int]) -> Any:
    out_f, in_f = shape
    rows = _chunk_rows(out_f, in_f)
    if not rows:
        return _matmul_t(x, dequantize_rows(data, dtype).reshape(shape))
    # Large weight on the CPU: expand `rows` rows at a time so the f32 copy of the weight is never
    # materialised whole (a fresh 100+ MB buffer per call costs more than the arithmetic).
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_f)
    chunks = data.reshape(out_f // rows, rows, data.shape[-1])
    ys = jax.lax.map(lambda c: _matmul_t(x2, dequantize_rows(c, dtype)), chunks)  # (n, M, rows)
    return jnp.moveaxis(ys, 0, 1).reshape(*lead, out_f)


@op
def _dense_matmul(w: Any, x: Any) -> Any:
    return _matmul_t(x, w)


@op
def _blocked_matmul(w: BlockedWeight, x: Any) -> Any:
    """``x @ Wᵀ`` with the block expansion fused into the product on XLA:CPU.

    Two details decide whether XLA:CPU fuses the expansion into a matrix-vector product (reading
    one byte per weight) or writes the expanded f32 weight to memory first (4 bytes written and
    read again per weight, ~50x slower for a 49152 x 576 LM head): the weight must enter the dot
    through an explicit transpose (``x @ (expand(W))ᵀ``, contracting dims (1, 0)), and the dot's
    result must not be fused into its consumer (an add, a SwiGLU product), which the optimization
    barrier prevents.
    """
    lead, in_f = x.shape[:-1], x.shape[-1]
    cdt = x.dtype
    wt = w.dequantize(jnp.float32).astype(cdt).T
    y = jax.lax.dot_general(x.reshape(-1, in_f), wt, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    y = jax.lax.optimization_barrier(y.astype(cdt))
    return y.reshape(*lead, y.shape[-1])


def blocked_matmul_direct(w: BlockedWeight, x: Any) -> Any:
    """``x @ Wᵀ`` contracting the expanded weight's rows directly (dot_general dims ``(1, 1)``, no
    explicit transpose), its result behind an optimization barrier.

    In isolation this form is slower than :func:`_blocked_matmul`'s (0.22 vs 0.14 ms for 1536 x
    576), but when the input comes from attention over a KV cache inside ``lax.scan``, XLA:CPU runs
    the transposed form ~10x slower than in isolation (the LLaMA output projection: ~0.6 ms per
    layer), while this one keeps its speed: ~30 vs ~19 ms per SmolLM2 decode step."""
    return _blocked_matmul_direct(w, x)


@op
def _blocked_matmul_direct(w: BlockedWeight, x: Any) -> Any:
    lead, in_f = x.shape[:-1], x.shape[-1]
    cdt = x.dtype
    wd = w.dequantize(jnp.float32).astype(cdt)
    y = jax.lax.dot_general(x.reshape(-1, in_f), wd, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    y = jax.lax.optimization_barrier(y.astype(cdt))
    return y.reshape(*lead, y.shape[-1])


@op
def _packed_matmul(w: PackedWeight, x: Any) -> Any:
    """``x @ Wᵀ`` for a block weight in its file layout (the native kernel; f32 in and out)."""
    return w.matmul(x)


@op
def _blocked_rows(w: BlockedWeight | PackedWeight, ids: Any) -> Any:
    return w.rows(jnp.clip(ids, 0, w.shape[0] - 1))


def _env_flag(name: str) -> bool:
    """Candle's reading of ``CANDLE_DEQUANTIZE_ALL[_F16]`` (quantized/mod.rs): set, not empty, not ``0``."""
    v = os.environ.get(name, "")
    return v not in ("", "0")


class QMatMul:
    """Candle's ``QMatMul``: ``forward(xs) = xs @ Wᵀ`` with ``W`` of shape ``(out, in)``.

    Q4_0/Q4_1/Q8_0 weights are held in their file layout as a
    :class:`~candlejax.quantized.packed.PackedWeight` and multiplied by the native CPU kernel when it
    is built (:func:`candlejax.quantized.native.available`); otherwise, and for Q5_0/Q5_1, as a
    :class:`~candlejax.quantized.blocked.BlockedWeight` (one byte per value plus f16 block scales;
    the expansion fuses into the dot, so the matmul runs at dense speed); other block types as a
    :class:`QTensor` (kept packed, expanded inside the step); F32/F16/BF16 weights as a plain array
    in the weight's own dtype. ``CANDLEJAX_QMATMUL_PACKED=1``
    keeps every block type packed. Set ``CANDLE_DEQUANTIZE_ALL=1`` (or
    ``CANDLE_DEQUANTIZE_ALL_F16=1``) to dequantise every weight to F32 (F16) at construction, as
    Candle does. A pytree: pass it into ``jax.jit`` as an argument.
    """

    __slots__ = ("_w",)

    _w: Any  # QTensor or jax array

    def __init__(self, w: Any):
        self._w = w

    @staticmethod
    def from_qtensor(q: QTensor) -> QMatMul:
        """Candle's ``QMatMul::from_qtensor`` (also ``from_arc``): a matmul with a rank-2 quantized weight."""
        if not isinstance(q, QTensor):
            raise errors.Msg(f"QMatMul.from_qtensor expects a QTensor, got {type(q).__name__}")
        if q.rank != 2:
            raise errors.UnexpectedNumberOfDims(2, q.rank, q.shape, "QMatMul")
        dt = q.dtype()
        if dt is GgmlDType.F32:
            return QMatMul(q.dequantize().jax)
        if dt in (GgmlDType.F16, GgmlDType.BF16):
            out = "float16" if dt is GgmlDType.F16 else "bfloat16"
            return QMatMul(_dequantize(q.raw, dtype=dt, shape=q.shape, out=out))
        if _env_flag("CANDLE_DEQUANTIZE_ALL"):
            return QMatMul(q.dequantize().jax)
        if _env_flag("CANDLE_DEQUANTIZE_ALL_F16"):
            return QMatMul(q.dequantize_f16().jax)
        if q.elem_count() == 0:  # nothing to lay out: the block layouts' reshapes need whole rows
            return QMatMul(q)
        if dt in PACKED_TYPES and native.available() and not env_on("CANDLEJAX_QMATMUL_PACKED"):
            return QMatMul(PackedWeight(jnp.asarray(q.raw).reshape(q.shape[0], -1), dt, q.shape))
        if dt in BLOCKED_TYPES and not env_on("CANDLEJAX_QMATMUL_PACKED"):
            # unpacked on the host: back on the device the blocks are on (Candle's QMatMul keeps its weight's)
            raw = q.raw
            on = q.device if not single_device() and isinstance(raw, jax.Array) and len(raw.devices()) == 1 else None
            return QMatMul(BlockedWeight.from_raw(raw, dt, q.shape, on))
        return QMatMul(q)

    from_arc = from_qtensor

    @staticmethod
    def from_tensor(w: Any) -> QMatMul:
        """A QMatMul over a plain ``(out, in)`` weight Tensor (Candle's ``QMatMul::Tensor``)."""
        a = unwrap(w)
        if a.ndim != 2:
            raise errors.UnexpectedNumberOfDims(2, a.ndim, a.shape, "QMatMul")
        return QMatMul(a)

    # --- queries ---------------------------------------------------------------------------
    def is_quantized(self) -> bool:
        """Whether the weight is kept quantized (Candle's ``QMatMul::QTensor`` variant), not dequantized."""
        return isinstance(self._w, QTensor | BlockedWeight | PackedWeight)

    @property
    def weight(self) -> Any:
        """The QTensor, BlockedWeight or PackedWeight, or the plain weight as a Tensor."""
        return self._w if isinstance(self._w, QTensor | BlockedWeight | PackedWeight) else wrap(self._w)

    @property
    def shape(self) -> tuple[int, int]:
        """The weight's ``(out, in)``."""
        return tuple(self._w.shape)  # type: ignore[return-value]

    # --- compute ---------------------------------------------------------------------------
    def forward(self, xs: Any) -> Any:
        """``xs @ Wᵀ``: ``(..., in) -> (..., out)`` in xs's dtype (f32 accumulation)."""
        x = unwrap(xs)
        _compute_dtype(x, "qmatmul")
        out_f, in_f = self.shape
        if x.ndim == 0 or x.shape[-1] != in_f:
            raise errors.ShapeMismatchBinaryOp(
                x.shape, (out_f, in_f), "qmatmul", f"the input's last dim must equal the weight's in-features {in_f}"
            )
        w = self._w
        if not single_device() and is_eager():  # Candle's QMatMul: the input on the weight's device
            leaves = [a for a in jax.tree_util.tree_leaves(w) if isinstance(a, jax.Array) and a.ndim]
            if leaves and len(x.devices()) == 1 == len(leaves[0].devices()) and leaves[0].devices() != x.devices():
                raise device_mismatch("qmatmul", (x, leaves[0]))
        if isinstance(w, BlockedWeight):
            return wrap(_blocked_matmul(w, x).astype(x.dtype))
        if isinstance(w, PackedWeight):
            return wrap(_packed_matmul(w, x).astype(x.dtype))
        if isinstance(w, QTensor):
            return wrap(_qmatmul(w.raw, x, dtype=w.dtype(), shape=w.shape))
        return wrap(_dense_matmul(w, x))

    __call__ = forward

    def forward_via_f16(self, xs: Any) -> Any:
        """Dequantise to F16 and matmul in F16; the result is in xs's dtype."""
        x = unwrap(xs)
        _compute_dtype(x, "qmatmul")
        w = unwrap(self.dequantize_f16())
        return wrap(_dense_matmul(w, x.astype(jnp.float16)).astype(x.dtype))

    def dequantize_f16(self) -> Any:
        """Candle's ``QMatMul::dequantize_f16``: the weight as a dense f16 Tensor."""
        w = self._w
        if isinstance(w, BlockedWeight | PackedWeight):
            return wrap(w.dequantize(jnp.float16))
        if isinstance(w, QTensor):
            return w.dequantize_f16()
        return wrap(w.astype(jnp.float16))

    def embedding(self, ids: Any) -> Any:
        """Rows ``ids`` of the ``(out, in)`` weight: ``(*ids.shape, in)``, f32 for a quantised weight.

        As :meth:`QTensor.embedding` for every weight layout: eagerly, an id outside ``[0, out)``
        raises ``embedding id 10 is out of range for 10 rows``; under jit it is clamped.
        """
        w = self._w
        if isinstance(w, QTensor):
            return w.embedding(ids)
        a = _embedding_ids(ids, self.shape[0]).astype(jnp.int32)
        if isinstance(w, BlockedWeight | PackedWeight):
            return wrap(_blocked_rows(w, a))
        return wrap(jnp.take(w, a, axis=0, mode="clip"))

    def __repr__(self) -> str:
        w = self._w
        if isinstance(w, QTensor | BlockedWeight | PackedWeight):
            return f"QMatMul({w!r})"
        return f"QMatMul(Tensor[{list(w.shape)}, {w.dtype}])"


jax.tree_util.register_pytree_node(
    QMatMul, lambda m: ((m._w,), None), lambda _aux, ch: QMatMul(ch[0])
)

__all__ = ["QMatMul", "QTensor", "byte_shape"]


_reload.loaded(__name__)
