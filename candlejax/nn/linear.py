"""``Linear``: ``y = x @ wᵀ + b`` (Candle's ``candle_nn::Linear``, PyTorch's ``nn.Linear``).

requires: candlejax.nn.module, candlejax.nn.init, candlejax.nn.var_builder
provides: ``Linear``, ``PackedLinear``, ``pack_linears``, ``unpack_linears``, ``linear``, ``linear_no_bias``,
``linear_b``
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from candlejax import errors
from candlejax._dispatch import op
from candlejax._precision import f32_precision
from candlejax.dtype import to_dtype
from candlejax.nn.init import DEFAULT_KAIMING_NORMAL, Uniform
from candlejax.nn.module import LayerInputShape, Module, Var, as_array, layer_name
from candlejax.quantized import native
from candlejax.tensor._core import TensorBase, wrap

__all__ = ["Linear", "PackedLinear", "linear", "linear_b", "linear_no_bias", "pack_linears", "unpack_linears"]


#: f32 inputs of at most this many rows (all dims but the last) use the native few-row product on
#: the CPU (:func:`candlejax.quantized.native.f32_matmul`) when it is built
NATIVE_MAX_ROWS = 48
#: ... and weights of at least this many values (smaller products gain nothing)
NATIVE_MIN_WEIGHT = 1 << 14
#: f32 inputs of at least this many rows use the native blocked product (register tiles over packed
#: weight panels), which runs large products ~5-15% faster than XLA:CPU's library product here;
#: between the two bounds XLA's product is as fast
NATIVE_BLOCKED_MIN_ROWS = 512


@op
def _linear(x: Any, w: Any, b: Any) -> Any:
    # x (..., in) . w (out, in) contracted directly: XLA:CPU fuses `matmul(x, w.T) + b` into a slow
    # loop for small batches (a one-token decode step ran ~20x slower than this form).
    # f32: exact unless cj.set_gemm_reduced_precision_f32(True) (then TF32 on GPUs)
    prec = f32_precision() if x.dtype == jnp.float32 else None
    y = _native_rows_linear(x, w) if _use_native(x, w, prec) else _xla_linear(x, w, prec)
    return y if b is None else y + b


def _use_native(x: Any, w: Any, prec: Any, max_rows: int | None = None) -> bool:
    """Whether an f32 product runs in the native library: at most ``max_rows`` (default
    :data:`NATIVE_MAX_ROWS`) or at least :data:`NATIVE_BLOCKED_MIN_ROWS` rows, exact f32, on a
    one-device CPU process with the library built for AVX-512 (its portable loop is slower than
    XLA; a custom call has no sharding rule, so programs over several devices keep XLA's product)."""
    rows = math.prod(x.shape[:-1])
    return (x.dtype == w.dtype == jnp.float32 and prec == lax.Precision.HIGHEST and w.size >= NATIVE_MIN_WEIGHT
            and (rows <= (NATIVE_MAX_ROWS if max_rows is None else max_rows) or rows >= NATIVE_BLOCKED_MIN_ROWS)
            and jax.device_count() == 1
            and native.f32_available() and native.isa() == "avx512")  # fmt: skip


@jax.custom_jvp
def _native_rows_linear(x: Any, w: Any) -> Any:
    """``x (..., in) @ w.T`` through the native few-row product (XLA:CPU's library product runs a
    16 x 384 @ 384 x 1536 at ~90 GFLOP/s on two cores: 270 -> 90 µs). Derivatives, forward and
    reverse: XLA's products (the tangent map below, which JAX transposes for gradients)."""
    y = native.f32_matmul(x.reshape(-1, x.shape[-1]), w)
    return y.reshape(*x.shape[:-1], w.shape[0])


def _xla_linear(x: Any, w: Any, prec: Any = lax.Precision.HIGHEST) -> Any:
    """``x (..., in) . w (out, in)``, contracted directly (no transpose of ``w``)."""
    return lax.dot_general(x, w, (((x.ndim - 1,), (1,)), ((), ())), precision=prec, preferred_element_type=x.dtype)


def _product_tangent(y: Any, x: Any, w: Any, tx: Any, tw: Any) -> Any:
    """The tangent of ``y = x . w (out, in)`` as XLA's products (a symbolic-zero tangent adds nothing):
    the derivative of the native products, which JAX transposes for gradients."""
    parts = []
    if type(tx) is not SymbolicZero:
        parts.append(_xla_linear(tx, w))
    if type(tw) is not SymbolicZero:
        parts.append(_xla_linear(x, tw))
    return jnp.zeros_like(y) if not parts else parts[0] if len(parts) == 1 else parts[0] + parts[1]


def _native_rows_linear_jvp(primals: tuple[Any, Any], tangents: tuple[Any, Any]) -> tuple[Any, Any]:
    (x, w), (tx, tw) = primals, tangents
    y = _native_rows_linear(x, w)
    return y, _product_tangent(y, x, w, tx, tw)


_native_rows_linear.defjvp(_native_rows_linear_jvp, symbolic_zeros=True)


def _as_param(t: Any) -> Any:
    """Keep Vars/Tensors as they are; wrap raw arrays."""
    if t is None or isinstance(t, TensorBase):
        return t
    return wrap(as_array(t))


def as_weight(t: Any, layer: str, what: str = "weight") -> Any:
    """:func:`_as_param` of a tensor the layer cannot do without (Candle's constructors take a
    ``Tensor``, not an ``Option``): ``None`` raises naming it."""
    if t is None:
        raise errors.ArgumentType(f"nn.{layer}: {what} must be a Tensor, got None")
    return _as_param(t)


def check_param(kind: str, weight: Any, what: str, t: Any, shape: tuple[int, ...] | None = None,
                rank: int | None = None, rule: str = "") -> None:
    """A layer's tensor ``what`` of the wrong shape, rank or (beside the weight) dtype raises at
    construction, naming the layer, the tensor and both shapes; forward would give a raw JAX error.
    Shapes and dtypes are static: this costs nothing per call."""
    if t is None:
        return
    name = layer_name(kind, weight)
    if rank is not None and t.ndim != rank:
        raise errors.UnexpectedNumberOfDims(rank, t.ndim, t.shape, f"{name} {what}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        rule = rule or f"the weight is {errors.fmt_shape(weight.shape)}"
        raise errors.UnexpectedShape(f"{name}: wrong shape for {what} ({rule})", shape, t.shape)
    if t is not weight and t.dtype != weight.dtype:
        raise errors.DTypeMismatchBinaryOp(to_dtype(weight.dtype), to_dtype(t.dtype), f"{name} (weight, {what})")


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    try:
        return np.broadcast_shapes(tuple(shape), target) == target
    except ValueError:
        return False


def _require_tensor(value: Any, layer: str, spelling: str) -> None:
    """A layer built from tensors (Candle's ``Linear::new(weight, bias)``) given a number instead: the
    PyTorch-style ``nn.Linear(in, out)`` call. Raise, naming the builder that makes a new layer."""
    if isinstance(value, int | float):  # bools too
        raise errors.Msg(
            f"nn.{layer} takes its tensors, as Candle's {layer}::new does (got the number {value!r}); to make a"
            f" new layer use {spelling}"
        )


class Linear(Module):
    """A fully connected layer: weight ``(out, in)``, optional bias ``(out,)``.

    ``Linear(weight, bias)`` (or ``Linear.new``) builds one from tensors; ``linear(in, out, vb)``
    fetches ``weight`` and ``bias`` through a VarBuilder. Input ``(..., in)`` with rank 2 to 4,
    as in Candle (rank 1 and rank >= 5 raise).
    """

    def __init__(self, weight: Any, bias: Any = None):
        if weight is None:
            raise errors.ArgumentType("nn.Linear: weight must be a Tensor (out, in), got None")
        _require_tensor(weight, "Linear", "nn.linear(in_dim, out_dim, vb) (or nn.linear_no_bias)")
        _require_tensor(bias, "Linear", "nn.linear(in_dim, out_dim, vb) (or nn.linear_no_bias)")
        self.weight = _as_param(weight)
        self.bias = _as_param(bias)
        check_param("Linear", self.weight, "weight (out, in)", self.weight, rank=2)
        if self.bias is not None and _broadcasts_to(self.bias.shape, (1, self.weight.shape[0])):
            check_param("Linear", self.weight, "bias", self.bias)  # the dtype (Candle's broadcast_add takes
        else:  # any bias that broadcasts to the output: (out,), (1,), a scalar)
            check_param("Linear", self.weight, "bias", self.bias, (self.weight.shape[0],))

    @staticmethod
    def new(weight: Any, bias: Any = None) -> Linear:
        """Candle's ``Linear::new(weight, bias)``: weight ``(out, in)``, optional bias ``(out,)``."""
        return Linear(weight, bias)

    def in_dim(self) -> int:
        """The input width (``weight.shape[1]``)."""
        return self.weight.shape[1]

    def out_dim(self) -> int:
        """The output width (``weight.shape[0]``)."""
        return self.weight.shape[0]

    def extra_repr(self) -> str:
        """The widths and whether there is a bias, for ``repr``."""
        w = self.weight
        return f"in={w.shape[1]}, out={w.shape[0]}, bias={self.bias is not None}"

    def forward(self, xs: Any) -> Any:
        """``xs @ weightᵀ + bias``: ``(..., in)`` in, ``(..., out)`` out."""
        w = self.weight._a
        x = _checked_input(xs, "Linear", self.weight, w.shape[1], w.dtype)
        b = None if self.bias is None else self.bias._a
        return wrap(_linear(x, w, b))


def _checked_input(xs: Any, kind: str, var: Any, in_dim: int, dtype: Any) -> Any:
    """``xs`` as an array of rank 2 to 4 with last dim ``in_dim`` and the weight's dtype, or the
    layer's error naming it (``kind`` and the weight ``var``'s checkpoint name)."""
    x = as_array(xs)
    if x.ndim < 2 or x.ndim > 4 or x.shape[-1] != in_dim:
        # Candle's forward: ranks 3 and 4 are flattened to 2-D, then x.matmul(w.t()) fails
        lhs = (math.prod(x.shape[:-1]), x.shape[-1]) if x.ndim in (3, 4) else x.shape
        w = tuple(var.shape)
        candle = f"shape mismatch in matmul, lhs: {errors.fmt_shape(lhs)}, rhs: {errors.fmt_shape(w[::-1])}"
        candle = candle if len(w) == 2 else ""  # a PackedLinear's panels are not Candle's weight
        hint = (
            "one example without a batch dimension, as jax.vmap(layer)(xs) passes: write"
            " jax.vmap(lambda x: layer(x[None])[0])(xs), or call the layer on the whole batch"
        ) if x.ndim == 1 else ""
        raise LayerInputShape(layer_name(kind, var), f"[batch, {in_dim}] (rank 2 to 4, last dim {in_dim})", x.shape,
                              hint, candle=candle)  # fmt: skip
    if x.dtype != dtype:
        raise errors.DTypeMismatchBinaryOp(to_dtype(x.dtype), to_dtype(dtype), "matmul")
    return x


def _use_packed(x: Any, prec: Any) -> bool:
    """Whether a packed f32 product runs in the native library: f32 input, exact f32, one device, and
    the library's register tiles (AVX-512)."""
    return (x.dtype == jnp.float32 and prec == lax.Precision.HIGHEST and jax.device_count() == 1
            and native.packed_available())  # fmt: skip


@op(static=("n",))
def _packed_linear(x: Any, panels: Any, b: Any, *, n: int) -> Any:
    prec = f32_precision() if x.dtype == jnp.float32 else None
    if _use_packed(x, prec):
        y = _native_packed_linear(x, panels, n)
    else:
        y = _xla_linear(x, native.unpack_f32_panels(panels, n), prec)
    return y if b is None else y + b


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def _native_packed_linear(x: Any, panels: Any, n: int) -> Any:
    """``x (..., in) @ W.T`` for ``W`` packed into panels, through the native product; derivatives
    are XLA's products with the unpacked weight."""
    y = native.f32_matmul_packed(x.reshape(-1, x.shape[-1]), panels, n)
    return y.reshape(*x.shape[:-1], n)


def _native_packed_linear_jvp(n: int, primals: tuple[Any, Any], tangents: tuple[Any, Any]) -> tuple[Any, Any]:
    (x, panels), (tx, tp) = primals, tangents
    y = _native_packed_linear(x, panels, n)
    tw = tp if type(tp) is SymbolicZero else native.unpack_f32_panels(tp, n)
    return y, _product_tangent(y, x, native.unpack_f32_panels(panels, n), tx, tw)


_native_packed_linear.defjvp(_native_packed_linear_jvp, symbolic_zeros=True)


class PackedLinear(Module):
    """A :class:`Linear` for inference on the CPU whose f32 weight is kept in the native product's
    panel layout (``(ceil(out / 32), in, 32)``, :func:`candlejax.quantized.native.pack_f32_panels`),
    packed once instead of at every call (products of 16 rows 10-40% faster, of 128 rows ~5%).

    Same results as the Linear it came from up to summation order. ``weight`` gives the ``(out, in)``
    weight back (computed from the panels); the panels keep their own checkpoint name,
    ``<layer>.panels``, in their own layout: save the model after :func:`unpack_linears` for a
    checkpoint in the usual names and layout. ``PackedLinear.from_linear(lin)`` packs one layer,
    :func:`pack_linears` a whole model. PyTorch packs weights this way when it freezes a model for
    inference (``torch.compile`` with ``freezing``, IPEX's ``ipex.optimize``); Candle has none.
    """

    def __init__(self, panels: Any, out_dim: int, bias: Any = None):
        self.panels = _as_param(panels)
        self.bias = _as_param(bias)
        self.out_features = int(out_dim)
        if not native.panels_hold(self.panels.shape, self.out_features):
            raise errors.Msg(f"PackedLinear: panels {tuple(self.panels.shape)} do not hold {out_dim} weight rows "
                             f"(expected ({-(-self.out_features // native.PANEL_ROWS)}, in, {native.PANEL_ROWS}))")

    @staticmethod
    def from_linear(lin: Linear) -> PackedLinear:
        """``lin`` with its f32 weight packed (raises for another dtype). A named weight Var
        (``"fc.weight"``) becomes the panels Var ``"fc.panels"``."""
        w = lin.weight._a
        if w.dtype != jnp.float32:
            raise errors.Msg(f"PackedLinear.from_linear: the weight must be f32, got {to_dtype(w.dtype)}")
        panels = native.pack_f32_panels(w)
        if isinstance(lin.weight, Var):
            panels = Var._make(panels, _renamed(lin.weight.name, "weight", "panels"))
        return PackedLinear(panels, w.shape[0], lin.bias)

    @property
    def weight(self) -> Any:
        """The ``(out, in)`` weight, unpacked from the panels."""
        return wrap(native.unpack_f32_panels(self.panels._a, self.out_features))

    def to_linear(self) -> Linear:
        """The plain :class:`Linear` with the same weight and bias (a panels Var ``"fc.panels"`` gives
        back the weight Var ``"fc.weight"``)."""
        w = self.weight
        if isinstance(self.panels, Var):
            w = Var._make(w._a, _renamed(self.panels.name, "panels", "weight"))
        return Linear(w, self.bias)

    def in_dim(self) -> int:
        """The input width."""
        return self.panels.shape[1]

    def out_dim(self) -> int:
        """The output width."""
        return self.out_features

    def extra_repr(self) -> str:
        """The widths and whether there is a bias, for ``repr``."""
        return f"in={self.in_dim()}, out={self.out_features}, bias={self.bias is not None}, packed"

    def forward(self, xs: Any) -> Any:
        """``xs @ weightᵀ + bias`` from the packed panels: ``(..., in)`` in, ``(..., out)`` out."""
        panels = self.panels._a
        x = _checked_input(xs, "PackedLinear", self.panels, panels.shape[1], panels.dtype)
        return wrap(_packed_linear(x, panels, None if self.bias is None else self.bias._a, n=self.out_features))


def _renamed(name: str, old: str, new: str) -> str:
    """A checkpoint name with its last part ``old`` replaced by ``new`` (``""`` stays unnamed)."""
    if not name:
        return name
    head, _, last = name.rpartition(".")
    return f"{head}.{new}" if head and last == old else (new if last == old else f"{name}.{new}")


def unpack_linears(module: Any) -> Any:
    """A copy of ``module`` with every :class:`PackedLinear` back as a plain :class:`Linear` (the
    checkpoint layout and names: save this one)."""
    return jax.tree_util.tree_map(lambda m: m.to_linear() if isinstance(m, PackedLinear) else m, module,
                                  is_leaf=lambda m: isinstance(m, PackedLinear))  # fmt: skip


def pack_linears(module: Any, *, force: bool = False) -> Any:
    """A copy of ``module`` (any pytree of Modules) with every f32 :class:`Linear` replaced by a
    :class:`PackedLinear`, for inference on this CPU; the other layers keep their arrays (no copy).

    Packing pays where the native packed product runs (an AVX-512 CPU, one device); elsewhere the
    module comes back unchanged unless ``force=True`` (a packed layer then unpacks its weight at each
    call). Close to ``torch.jit.freeze`` / IPEX's ``ipex.optimize`` weight prepacking."""
    if not (force or (jax.device_count() == 1 and native.packed_available())):
        return module

    def pack(m: Any) -> Any:
        w = m.weight._a if isinstance(m, Linear) else None
        if w is not None and w.dtype == jnp.float32 and w.size >= NATIVE_MIN_WEIGHT:
            return PackedLinear.from_linear(m)
        return m

    return jax.tree_util.tree_map(pack, module, is_leaf=lambda m: isinstance(m, Linear))


def linear_b(in_dim: int, out_dim: int, bias: bool, vb: Any) -> Linear:
    """``weight`` Kaiming-normal (fan-in, ReLU gain), ``bias`` U(±1/√in), as Candle and PyTorch."""
    w = vb.get_with_hints((out_dim, in_dim), "weight", DEFAULT_KAIMING_NORMAL)
    if not bias:
        return Linear(w, None)
    if in_dim == 0:  # the weight is empty; the bias init divides by sqrt(in_dim) (Candle: a rand error)
        raise errors.InvalidArgument(f"linear: in_dim must be >= 1 for a layer with a bias, got {in_dim}")
    bound = 1.0 / math.sqrt(in_dim)
    b = vb.get_with_hints((out_dim,), "bias", Uniform(-bound, bound))
    return Linear(w, b)


def linear(in_dim: int, out_dim: int, vb: Any) -> Linear:
    """``linear(in, out, vb.pp("fc1"))``: params ``fc1.weight`` ``(out, in)`` and ``fc1.bias``."""
    return linear_b(in_dim, out_dim, True, vb)


def linear_no_bias(in_dim: int, out_dim: int, vb: Any) -> Linear:
    """Candle's ``candle_nn::linear_no_bias``: a ``Linear`` without bias, its ``weight`` ``(out, in)`` read from
    ``vb``."""
    return linear_b(in_dim, out_dim, False, vb)
