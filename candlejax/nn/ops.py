"""``candle_nn::ops``: softmax, norms, rope, attention, activations, dropout. All differentiable.

requires: candlejax._dispatch.op, candlejax.nn.module (as_array), jax.numpy / lax
provides: ``softmax``, ``softmax_last_dim``, ``log_softmax``, ``sigmoid``, ``hard_sigmoid``, ``silu``,
``swiglu``, ``mish``, ``leaky_relu``, ``elu``, ``selu``, ``gelu``, ``gelu_erf``, ``relu``, ``relu2``,
``relu6``, ``hard_swish``, ``dropout``, ``rms_norm`` / ``rms_norm_slow``, ``layer_norm`` /
``layer_norm_slow``, ``rope`` / ``rope_i`` / ``rope_thd`` (+ ``*_slow``), ``sdpa`` / ``sdpa_slow``, ``repeat_kv``,
``causal_mask``, ``padding_mask``,
``pixel_shuffle``, ``pixel_unshuffle``, ``replication_pad2d``, ``depthwise_conv2d``, ``Identity``.

Each function takes and returns Tensors; the math lives in ``@op`` functions on raw arrays, so an
eager call is one cached jitted executable and a call under ``jit`` is plain ``jax.numpy``. Unlike
Candle, the "fused" ops (``softmax_last_dim``, ``rms_norm``, ``layer_norm``, ``rope*``, ``sdpa``) have
gradients; each has a step-by-step ``*_slow`` reference used in parity tests. Half-precision inputs
are normalised in f32 and returned in their own dtype.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from candlejax import errors
from candlejax import random as _random
from candlejax._dispatch import op
from candlejax._jax_private import read_to_host
from candlejax._precision import f32_precision
from candlejax.device import Device
from candlejax.dtype import to_dtype
from candlejax.errors import fmt_shape
from candlejax.nn.module import Module, ModuleT, as_array, train_arg
from candlejax.quantized import native
from candlejax.shape import check_elem_count, resolve_dim
from candlejax.tensor._core import TensorBase, float_arg, int_arg, wrap
from candlejax.tensor.conv import depthwise_conv2d_nhwc_op, to_usize2
from candlejax.tensor.elementwise import gelu_erf_jnp, in_f32
from candlejax.tensor.reduce import log_softmax_op, softmax_op

__all__ = [
    "Dropout",
    "Identity",
    "dropout",
    "elu",
    "gelu",
    "gelu_erf",
    "hard_sigmoid",
    "hard_swish",
    "layer_norm",
    "layer_norm_slow",
    "leaky_relu",
    "log_softmax",
    "mish",
    "pixel_shuffle",
    "pixel_unshuffle",
    "relu",
    "relu2",
    "relu6",
    "replication_pad2d",
    "rms_norm",
    "rms_norm_slow",
    "rope",
    "rope_i",
    "rope_i_slow",
    "rope_slow",
    "rope_thd_slow",
    "rope_thd",
    "causal_mask",
    "depthwise_conv2d",
    "padding_mask",
    "repeat_kv",
    "sdpa",
    "sdpa_slow",
    "stacked_layer_sdpa",
    "selu",
    "sigmoid",
    "silu",
    "softmax",
    "softmax_last_dim",
    "swiglu",
]


def _check_float(op_name: str, a: Any) -> None:
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise errors.UnsupportedDTypeForOp(to_dtype(a.dtype), op_name, "convert with .to_dtype(DType.F32) first")


def _upcast(a: Any) -> Any:
    return a.astype(jnp.float32) if a.dtype in (jnp.bfloat16, jnp.float16) else a


# ------------------------------------------------------------------------------------------------
# softmax family
# ------------------------------------------------------------------------------------------------
def softmax(xs: Any, dim: Any) -> Any:
    """Softmax over ``dim`` (max-subtracted). PyTorch: ``torch.softmax(x, dim)``."""
    a = as_array(xs)
    _check_float("softmax", a)
    return wrap(softmax_op(a, axis=resolve_dim(dim, a.shape, "softmax")))


def softmax_last_dim(xs: Any) -> Any:
    """Softmax over the last dim. Candle's fused kernel has no backward; this one does."""
    a = as_array(xs)
    _check_float("softmax-last-dim", a)
    if a.ndim == 0:  # Candle's dims().last() fails on a scalar too
        raise errors.Msg("softmax-last-dim: the input has no last dim (a rank-0 tensor); reshape it to (1,) first")
    return wrap(softmax_op(a, axis=-1))


def log_softmax(xs: Any, dim: Any) -> Any:
    """``log(softmax(x, dim))`` computed stably. PyTorch: ``torch.log_softmax``."""
    a = as_array(xs)
    _check_float("log_softmax", a)
    return wrap(log_softmax_op(a, axis=resolve_dim(dim, a.shape, "log_softmax")))


# ------------------------------------------------------------------------------------------------
# activations (function forms; Activation modules are generated from these)
# ------------------------------------------------------------------------------------------------
def _hard_sigmoid(x: Any) -> Any:
    return jnp.clip((x + 3.0) / 6.0, 0.0, 1.0)


def _swiglu(x: Any) -> Any:
    a, b = jnp.split(x, 2, axis=-1)
    return jax.nn.silu(a) * b


def _mish(x: Any) -> Any:
    return x * jnp.tanh(jax.nn.softplus(x))


_UNARY = {
    "sigmoid": jax.nn.sigmoid,
    "hard_sigmoid": _hard_sigmoid,
    "silu": jax.nn.silu,
    "swiglu": _swiglu,
    "mish": _mish,
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_erf": gelu_erf_jnp,
    "relu": jax.nn.relu,
    "relu2": lambda x: jnp.square(jax.nn.relu(x)),
    "relu6": lambda x: jnp.clip(x, 0.0, 6.0),
    "hard_swish": lambda x: x * _hard_sigmoid(x),
    "swish": lambda x: x * jax.nn.sigmoid(x),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "tanh": jnp.tanh,
}


@op(static=("kind", "p0", "p1"))
def _activation(a: Any, *, kind: str, p0: float = 0.0, p1: float = 0.0) -> Any:
    if kind in ("elu", "selu"):
        # expm1 of the negative part only: the branch not taken must not overflow to inf, whose
        # zero cotangent would make the gradient NaN for large inputs
        neg = jnp.where(a > 0, jnp.zeros((), a.dtype), a)
        out = jnp.where(a > 0, a, p0 * jnp.expm1(neg))
        return (out if kind == "elu" else p1 * out).astype(a.dtype)
    if kind == "leaky_relu":
        return jnp.where(a >= 0, a, (a * p0).astype(a.dtype))
    return in_f32(_UNARY[kind])(a).astype(a.dtype)


def activation(xs: Any, kind: str, p0: float = 0.0, p1: float = 0.0) -> Any:
    """Apply the named activation (see ``Activation``)."""
    if kind not in _UNARY and kind not in ("elu", "selu", "leaky_relu"):
        raise errors.InvalidArgument(
            f"activation: unknown kind {kind!r} ({', '.join(sorted([*_UNARY, 'elu', 'selu', 'leaky_relu']))})"
        )
    a = as_array(xs)
    _check_float(kind, a)
    if kind == "swiglu" and (a.ndim == 0 or a.shape[-1] % 2):
        raise errors.Msg(f"swiglu: the last dim must be even, got shape {fmt_shape(a.shape)}")
    return wrap(_activation(a, kind=kind, p0=float_arg(p0, kind, "parameter"), p1=float_arg(p1, kind, "parameter")))


def sigmoid(xs: Any) -> Any:
    """``1 / (1 + exp(-x))``, differentiable."""
    return activation(xs, "sigmoid")


def hard_sigmoid(xs: Any) -> Any:
    """``clamp((x + 3) / 6, 0, 1)`` (Candle's definition)."""
    return activation(xs, "hard_sigmoid")


def silu(xs: Any) -> Any:
    """``x * sigmoid(x)``."""
    return activation(xs, "silu")


def swiglu(xs: Any) -> Any:
    """Split the last dim in two halves ``a, b``: ``silu(a) * b``."""
    return activation(xs, "swiglu")


def mish(xs: Any) -> Any:
    """``x * tanh(softplus(x))``."""
    return activation(xs, "mish")


def gelu(xs: Any) -> Any:
    """GELU, tanh approximation (Candle's ``Tensor::gelu``; PyTorch ``approximate='tanh'``)."""
    return activation(xs, "gelu")


def gelu_erf(xs: Any) -> Any:
    """Exact (erf) GELU (PyTorch's default ``F.gelu``)."""
    return activation(xs, "gelu_erf")


def relu(xs: Any) -> Any:
    """``max(x, 0)`` (Candle's ``Tensor::relu``, PyTorch's ``F.relu``)."""
    return activation(xs, "relu")


def relu2(xs: Any) -> Any:
    """``relu(x)²``."""
    return activation(xs, "relu2")


def relu6(xs: Any) -> Any:
    """``min(max(x, 0), 6)`` (Candle's ``Activation::Relu6``, PyTorch's ``F.relu6``)."""
    return activation(xs, "relu6")


def hard_swish(xs: Any) -> Any:
    """``x * hard_sigmoid(x)``."""
    return activation(xs, "hard_swish")


def leaky_relu(xs: Any, negative_slope: float) -> Any:
    """Candle's ``candle_nn::ops::leaky_relu``: ``x`` if positive, else ``negative_slope * x``."""
    return activation(xs, "leaky_relu", negative_slope)


def elu(xs: Any, alpha: float) -> Any:
    """``x`` if positive, else ``alpha * (exp(x) - 1)`` (Candle's ``Tensor::elu``, PyTorch's ``F.elu``)."""
    return activation(xs, "elu", alpha)


def selu(xs: Any, alpha: float = 1.6732632423543772, gamma: float = 1.0507009873554805) -> Any:
    """``gamma * elu(x, alpha)`` (Candle's ``candle_nn::ops::selu``, PyTorch's ``F.selu``)."""
    return activation(xs, "selu", alpha, gamma)


# ------------------------------------------------------------------------------------------------
# dropout
# ------------------------------------------------------------------------------------------------
@op(static=("p",))
def _dropout(a: Any, key: Any, *, p: float) -> Any:
    keep = jax.random.bernoulli(key, 1.0 - p, a.shape)
    return jnp.where(keep, a / jnp.asarray(1.0 - p, a.dtype), jnp.zeros((), a.dtype))


def dropout(xs: Any, p: float, *, key: Any = None) -> Any:
    """Zero each element with probability ``p`` and scale the rest by ``1/(1-p)``.

    ``key`` is a jax key (or an int seed); without one, the device's seeded generator is used,
    which works eagerly only (under ``jit`` pass ``key=``).
    """
    if not 0.0 <= float_arg(p, "dropout", "probability") < 1.0:
        raise errors.Msg(f"dropout probability has to be in [0, 1), got {p}")
    a = as_array(xs)
    _check_float("dropout", a)
    if p == 0.0:
        return wrap(a)
    if key is None:
        dev = xs.device if isinstance(xs, TensorBase) else Device.Cpu
        key = _random.next_key(dev, "dropout")
    return wrap(_dropout(a, _random.as_key(key), p=float(p)))


class Dropout(ModuleT):
    """``Dropout::new(p)``; ``forward_t(xs, train, key=None)`` (PyTorch ``nn.Dropout``).

    In training mode it needs randomness: pass ``key=`` (a jax key or an int seed), which is
    required under ``jit``; eagerly the device's seeded generator is used when no key is given.
    In evaluation mode it returns its input.
    """

    def __init__(self, p: float):
        if isinstance(p, (str, bytes)) or not hasattr(p, "__float__"):
            raise errors.ArgumentType(f"dropout probability must be a float in [0, 1), got {p!r}")
        # as Candle's Dropout::new, any p: training mode raises for one outside [0, 1) (ops::dropout)
        try:
            self.p = float(p)
        except (TypeError, ValueError):  # a multi-element array
            raise errors.ArgumentType(f"dropout probability must be a float in [0, 1), got {p!r}") from None

    @staticmethod
    def new(p: float) -> Dropout:
        """Candle's ``Dropout::new(drop_p)``."""
        return Dropout(p)

    def forward(self, xs: Any, train: bool = False, key: Any = None) -> Any:
        """Candle's ``Dropout::forward(xs, train)`` (= :meth:`forward_t`); ``dropout(xs)`` evaluates."""
        return self.forward_t(xs, train, key)

    def forward_t(self, xs: Any, train: bool, key: Any = None) -> Any:
        """Candle's ``ModuleT for Dropout``: zero elements with probability ``p`` (scaling the rest) when ``train``,
        else ``xs``."""
        if not train_arg(train, "Dropout"):
            return xs if isinstance(xs, TensorBase) else wrap(xs)
        return dropout(xs, self.p, key=key)


# ------------------------------------------------------------------------------------------------
# normalisation
# ------------------------------------------------------------------------------------------------
@op(static=("eps", "remove_mean"))
def _norm_fast(a: Any, w: Any, b: Any, *, eps: float, remove_mean: bool) -> Any:
    x = _upcast(a)
    if remove_mean:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * lax.rsqrt(var + eps)
    else:
        y = x * lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
    y = y * _upcast(w)
    if b is not None:
        y = y + _upcast(b)
    return y.astype(a.dtype)


def _check_param_dtype(op_name: str, a: Any, what: str, p: Any) -> None:
    """No promotion: a weight or table has the input's dtype, or is F32 for f16/bf16 input (the op
    computes in f32 and returns the input's dtype; models keep f32 norm weights and rotary tables).
    Candle: ``unsupported dtype for rmsnorm`` / ``rope``."""
    if p.dtype != a.dtype and not (p.dtype == jnp.float32 and a.dtype in (jnp.bfloat16, jnp.float16)):
        raise errors.DTypeMismatchBinaryOp(to_dtype(a.dtype), to_dtype(p.dtype), f"{op_name} (input, {what})")


def _check_norm(op_name: str, a: Any, w: Any, b: Any = None) -> None:
    _check_float(op_name, a)
    _check_param_dtype(op_name, a, "alpha", w)
    if b is not None:
        _check_param_dtype(op_name, a, "beta", b)
    h = a.shape[-1] if a.ndim else None
    if w.ndim != 1 or w.shape[0] != h or (b is not None and tuple(b.shape) != tuple(w.shape)):
        # Candle: "shape mismatch in rms-norm [..] [..]",
        # "shape mismatch in layer-norm src: [..] alpha: [..] beta: [..]"
        labels = ("src: ", "alpha: ", "beta: ") if op_name == "layer-norm" else ("", "", "")
        shapes = [a.shape, w.shape] + ([b.shape] if b is not None else [])
        shown = " ".join(f"{k}{fmt_shape(v)}" for k, v in zip(labels, shapes))
        raise errors.Msg(f"shape mismatch in {op_name} {shown}")


def _norm_eps(eps: Any, op_name: str) -> float:
    """A finite ``eps >= 0`` (a negative one makes ``rsqrt`` of a small variance NaN)."""
    e = float_arg(eps, op_name, "eps")
    if e < 0:
        raise errors.InvalidArgument(f"{op_name}: eps must be >= 0, got {e}")
    return e


def rms_norm(xs: Any, alpha: Any, eps: float) -> Any:
    """``x / sqrt(mean(x², -1) + eps) * alpha`` over the last dim; alpha ``(H,)``. Differentiable."""
    a, w = as_array(xs), as_array(alpha)
    _check_norm("rms-norm", a, w)
    return wrap(_norm_fast(a, w, None, eps=_norm_eps(eps, "rms-norm"), remove_mean=False))


def rms_norm_slow(xs: Any, alpha: Any, eps: float) -> Any:
    """Step-by-step reference for :func:`rms_norm`."""
    a, w = as_array(xs), as_array(alpha)
    _check_norm("rms-norm", a, w)
    x = _upcast(a)
    norm = jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    return wrap(((x / norm) * _upcast(w)).astype(a.dtype))


def layer_norm(xs: Any, alpha: Any, beta: Any, eps: float) -> Any:
    """Layer norm over the last dim: ``(x - mean) / sqrt(var + eps) * alpha + beta``. Differentiable."""
    a, w = as_array(xs), as_array(alpha)
    b = None if beta is None else as_array(beta)
    _check_norm("layer-norm", a, w, b)
    return wrap(_norm_fast(a, w, b, eps=_norm_eps(eps, "layer-norm"), remove_mean=True))


def layer_norm_slow(xs: Any, alpha: Any, beta: Any, eps: float) -> Any:
    """Step-by-step reference for :func:`layer_norm`."""
    a, w = as_array(xs), as_array(alpha)
    b = None if beta is None else as_array(beta)
    _check_norm("layer-norm", a, w, b)
    x = _upcast(a)
    h = x.shape[-1]
    mean = jnp.sum(x, axis=-1, keepdims=True) / h
    xc = x - mean
    var = jnp.sum(xc * xc, axis=-1, keepdims=True) / h
    y = xc / jnp.sqrt(var + eps) * _upcast(w)
    if b is not None:
        y = y + _upcast(b)
    return wrap(y.astype(a.dtype))


# ------------------------------------------------------------------------------------------------
# rotary embeddings
# ------------------------------------------------------------------------------------------------
def _rope_tables(cos: Any, sin: Any, t: int, b: int, layout: str) -> tuple[Any, Any]:
    """cos/sin (T', D/2) or (B, T', D/2) -> broadcastable to xs, first T rows."""
    if cos.ndim == 2:
        cos, sin = cos[:t], sin[:t]
        if layout == "bhtd":
            return cos[None, None], sin[None, None]
        return cos[None, :, None], sin[None, :, None]
    cos, sin = cos[:, :t], sin[:, :t]
    if layout == "bhtd":
        return cos[:, None], sin[:, None]
    return cos[:, :, None], sin[:, :, None]


def _rope_dtype(x: Any, cos: Any) -> Any:
    """The dtype a rotation is computed in: f32 for f16/bf16 input with f32 tables (rounded once to
    the input's dtype at the end), else the input's dtype (Candle's kernels)."""
    return cos.dtype if cos.dtype == jnp.float32 and x.dtype in (jnp.bfloat16, jnp.float16) else x.dtype


@op(static=("layout", "interleaved"))
def _rope(x: Any, cos: Any, sin: Any, *, layout: str, interleaved: bool) -> Any:
    t = x.shape[2] if layout == "bhtd" else x.shape[1]
    dt, out = _rope_dtype(x, cos), x.dtype
    c, s = _rope_tables(cos.astype(dt), sin.astype(dt), t, x.shape[0], layout)
    x = x.astype(dt)
    if interleaved:
        xr = x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)  # not -1: a size-0 x has no inferable dim
        x0, x1 = xr[..., 0], xr[..., 1]
        return jnp.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1).reshape(x.shape).astype(out)
    cf = jnp.concatenate([c, c], axis=-1)
    sf = jnp.concatenate([s, s], axis=-1)
    h = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., h:], x[..., :h]], axis=-1)
    return (x * cf + rot * sf).astype(out)


def _check_rope(op_name: str, x: Any, cos: Any, sin: Any, layout: str) -> None:
    _check_float(op_name, x)
    if cos.dtype != sin.dtype:
        raise errors.DTypeMismatchBinaryOp(to_dtype(cos.dtype), to_dtype(sin.dtype), f"{op_name} (cos, sin)")
    _check_param_dtype(op_name, x, "cos/sin", cos)
    if x.ndim != 4:
        raise errors.UnexpectedNumberOfDims(4, x.ndim, x.shape, op_name)
    b, t, d = x.shape[0], (x.shape[2] if layout == "bhtd" else x.shape[1]), x.shape[3]
    bad = cos.shape != sin.shape or d % 2 or cos.shape[-1] * 2 != d or cos.ndim not in (2, 3)
    bad = bad or cos.shape[-2] < t or (cos.ndim == 3 and cos.shape[0] != b)
    if bad:
        raise errors.Msg(  # Candle's rope, rope_i and rope_thd all say "in rope"
            f"inconsistent last dim size in rope {fmt_shape(x.shape)} {fmt_shape(cos.shape)}"
            f" {fmt_shape(sin.shape)}"
            f" (expected cos/sin of shape [T>={t}, {d // 2}] or [{b}, T>={t}, {d // 2}])"
        )


def _rope_call(name: str, xs: Any, cos: Any, sin: Any, layout: str, interleaved: bool) -> Any:
    x, c, s = as_array(xs), as_array(cos), as_array(sin)
    _check_rope(name, x, c, s, layout)
    return wrap(_rope(x, c, s, layout=layout, interleaved=interleaved))


def rope(xs: Any, cos: Any, sin: Any) -> Any:
    """Rotary embedding, "rotate_half" layout; xs ``(B, H, T, D)``, cos/sin ``(T, D/2)`` or ``(B, T, D/2)``."""
    return _rope_call("rope", xs, cos, sin, "bhtd", False)


def rope_i(xs: Any, cos: Any, sin: Any) -> Any:
    """Rotary embedding on interleaved pairs ``(x[2i], x[2i+1])``; xs ``(B, H, T, D)``."""
    return _rope_call("rope-i", xs, cos, sin, "bhtd", True)


def rope_thd(xs: Any, cos: Any, sin: Any) -> Any:
    """Rotary embedding ("rotate_half" layout) for xs ``(B, T, H, D)``."""
    return _rope_call("rope-thd", xs, cos, sin, "bthd", False)


def _rotate_half_slow(op: str, xs: Any, cos: Any, sin: Any, layout: str) -> Any:
    x, c, s = as_array(xs), as_array(cos), as_array(sin)
    _check_rope(op, x, c, s, layout)
    t = x.shape[2] if layout == "bhtd" else x.shape[1]
    dt, out = _rope_dtype(x, c), x.dtype
    c, s = _rope_tables(c.astype(dt), s.astype(dt), t, x.shape[0], layout)
    x = x.astype(dt)
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return wrap(jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(out))


def rope_slow(xs: Any, cos: Any, sin: Any) -> Any:
    """Step-by-step reference for :func:`rope`."""
    return _rotate_half_slow("rope", xs, cos, sin, "bhtd")


def rope_i_slow(xs: Any, cos: Any, sin: Any) -> Any:
    """Step-by-step reference for :func:`rope_i`."""
    x, c, s = as_array(xs), as_array(cos), as_array(sin)
    _check_rope("rope-i", x, c, s, "bhtd")
    dt, out_dt = _rope_dtype(x, c), x.dtype
    c, s = _rope_tables(c.astype(dt), s.astype(dt), x.shape[2], x.shape[0], "bhtd")
    x = x.astype(dt)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = jnp.zeros_like(x).at[..., 0::2].set(x0 * c - x1 * s).at[..., 1::2].set(x0 * s + x1 * c)
    return wrap(out.astype(out_dt))


def rope_thd_slow(xs: Any, cos: Any, sin: Any) -> Any:
    """Step-by-step reference for :func:`rope_thd` (xs ``(B, T, H, D)``, "rotate_half" layout)."""
    return _rotate_half_slow("rope-thd", xs, cos, sin, "bthd")


# ------------------------------------------------------------------------------------------------
# attention
# ------------------------------------------------------------------------------------------------
def _offset_arg(offset: Any, op_name: str) -> Any:
    """A query position: an int or an integer array (traced under ``jit`` too); floats and bools raise."""
    if isinstance(offset, (int, np.integer)) and not isinstance(offset, (bool, np.bool_)):
        return jnp.asarray(int(offset), jnp.int32)  # a numpy int64 too (x64 off)
    a = as_array(offset)
    if isinstance(offset, (bool, np.bool_)) or not jnp.issubdtype(a.dtype, jnp.integer):
        raise errors.NotAnInteger(op_name, "offset", offset)
    return a


def _causal_keep(s: int, skv: int) -> Any:
    """(S, Skv) bool: query i sees key j iff j <= i + (Skv - S) (aligned at the end, as with a KV cache)."""
    return jnp.arange(skv)[None, :] <= jnp.arange(s)[:, None] + (skv - s)


def _position_keep(s: int, skv: int, offset: Any, causal: bool, window: int | None) -> Any:
    """(S, Skv) bool for query i at absolute position ``offset + i`` and key j at position j."""
    qpos = (jnp.asarray(offset, jnp.int32) + jnp.arange(s, dtype=jnp.int32))[:, None]
    kpos = jnp.arange(skv, dtype=jnp.int32)[None, :]
    keep = kpos <= qpos if causal else jnp.ones((s, skv), jnp.bool_)
    if window is not None:
        keep = keep & (kpos > qpos - window)
    return keep


def _apply_mask(scores: Any, mask: Any) -> Any:
    if mask is None:
        return scores
    if mask.dtype == jnp.bool_ or jnp.issubdtype(mask.dtype, jnp.integer):
        return jnp.where(mask.astype(jnp.bool_), scores, -jnp.inf)
    return scores + mask.astype(scores.dtype)


def _softmax_numerator(scores: Any) -> Any:
    """``exp(scores - row max)``; a row with no visible key (every score ``-inf``) is all zeros."""
    m = lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    return jnp.exp(scores - jnp.where(m == -jnp.inf, jnp.zeros((), m.dtype), m))


def _softmax_divide(y: Any, e: Any) -> Any:
    """``y / sum(e)``: a query that sees no key gives zeros, not NaN (PyTorch's
    ``scaled_dot_product_attention``, Candle's CPU attention kernels)."""
    den = jnp.sum(e, axis=-1, keepdims=True)
    return y / jnp.where(den == 0, jnp.ones((), den.dtype), den)


def _grouped_mask(mask: Any, b: int, hkv: int, g: int) -> Any:
    """A mask broadcastable to ``(B, Hq, S, Skv)`` -> broadcastable to ``(B, Hkv, G, S, Skv)``."""
    m = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
    if m.shape[1] == 1:
        return m[:, :, None]
    return m.reshape(m.shape[0], hkv, g, m.shape[2], m.shape[3])


_SDPA_EQ = {  # (q layout, kv layout) -> scores einsum, value einsum; grouped q (.., Hkv, G, ..)
    ("bhsd", "bhsd"): ("bkgsd,bktd->bkgst", "bkgst,bktd->bkgsd"),
    ("bhsd", "bshd"): ("bkgsd,btkd->bkgst", "bkgst,btkd->bkgsd"),
    ("bshd", "bhsd"): ("bskgd,bktd->bkgst", "bkgst,bktd->bkgsd"),
    ("bshd", "bshd"): ("bskgd,btkd->bkgst", "bkgst,btkd->bkgsd"),
}


@op(static=("causal", "scale", "softcap", "window", "layout", "kv_layout", "positions", "keys_t"))
def _sdpa(q: Any, k: Any, v: Any, mask: Any, offset: Any, *, causal: bool, scale: float, softcap: float,
          window: int | None, layout: str, kv_layout: str, positions: bool, keys_t: bool = False) -> Any:  # fmt: skip
    """Grouped-query attention without repeating k/v; the softmax division comes after the value
    product (one division per output element instead of one per score). ``keys_t``: k is
    ``(B, Hkv, D, Skv)`` (``kv_layout`` ``bhsd``)."""
    b = q.shape[0]
    s, hq, d = (q.shape[1], q.shape[2], q.shape[3]) if layout == "bshd" else (q.shape[2], q.shape[1], q.shape[3])
    hkv, skv = (k.shape[2], k.shape[1]) if kv_layout == "bshd" else (k.shape[1], k.shape[3] if keys_t else k.shape[2])
    g = hq // hkv
    prec = f32_precision() if q.dtype == jnp.float32 else None  # exact f32 unless the TF32 switch is on
    acc = jnp.promote_types(q.dtype, jnp.float32)  # scores and softmax: f32, f64 for f64 input
    if g == 1 and layout == kv_layout == "bhsd":  # plain multi-head: 4-D products (no 5-D relayouts)
        # k transposed explicitly: XLA:CPU fuses the transpose into k's producer and runs the product
        # on a (D, S) operand, measurably faster than contracting both operands' last dims
        kt = k if keys_t else jnp.swapaxes(k, -1, -2)
        scores = jnp.matmul(q * jnp.asarray(scale, q.dtype), kt.astype(q.dtype), precision=prec,
                            preferred_element_type=acc)  # fmt: skip
        if softcap != 1.0:
            scores = jnp.tanh(scores / softcap) * softcap
        if positions:
            off = (skv - s) if offset is None else offset
            scores = jnp.where(_position_keep(s, skv, off, causal, window), scores, -jnp.inf)
        scores = _apply_mask(scores, mask)
        e = _softmax_numerator(scores)
        y = jnp.einsum("bhst,bhtd->bhsd", e.astype(v.dtype), v, precision=prec, preferred_element_type=acc)
        return _softmax_divide(y, e).astype(q.dtype)
    if keys_t:
        k = jnp.swapaxes(k, 2, 3)
    eq_s, eq_v = _SDPA_EQ[(layout, kv_layout)]
    qg = q.reshape(b, s, hkv, g, d) if layout == "bshd" else q.reshape(b, hkv, g, s, d)
    qg = qg * jnp.asarray(scale, q.dtype)
    # (B, Hkv, G, S, Skv)
    scores = jnp.einsum(eq_s, qg, k.astype(q.dtype), precision=prec, preferred_element_type=acc)
    if softcap != 1.0:
        scores = jnp.tanh(scores / softcap) * softcap
    if positions:
        off = (skv - s) if offset is None else offset
        scores = jnp.where(_position_keep(s, skv, off, causal, window), scores, -jnp.inf)
    if mask is not None:
        scores = _apply_mask(scores, _grouped_mask(mask, b, hkv, g))
    e = _softmax_numerator(scores)
    y = jnp.einsum(eq_v, e.astype(v.dtype), v, precision=prec, preferred_element_type=acc)  # (B, Hkv, G, S, Dv)
    y = _softmax_divide(y, e).astype(q.dtype)
    dv = v.shape[-1]
    if layout == "bshd":
        return y.transpose(0, 3, 1, 2, 4).reshape(b, s, hq, dv)
    return y.reshape(b, hq, s, dv)


def _dims(t: Any, layout: str) -> tuple[int, int, int, int]:
    """(batch, heads, seq, head_dim) of a 4-D tensor in ``layout``."""
    return (t.shape[0], t.shape[2], t.shape[1], t.shape[3]) if layout == "bshd" else tuple(t.shape)


def _check_sdpa(q: Any, k: Any, v: Any, mask: Any, layout: str = "bhsd", kv_layout: str = "bhsd") -> None:
    for lay in (layout, kv_layout):
        if lay not in ("bhsd", "bshd"):
            raise errors.Msg(f"sdpa: layout must be 'bhsd' (batch, heads, seq, dim) or 'bshd', got {lay!r}")
    for n, t, lay in (("q", q, layout), ("k", k, kv_layout), ("v", v, kv_layout)):
        _check_float("sdpa", t)
        if t.ndim != 4:
            want = "(batch, heads, seq, head_dim)" if lay == "bhsd" else "(batch, seq, heads, head_dim)"
            raise errors.Msg(f"sdpa: {n} must be {want}, got {fmt_shape(t.shape)}")
    for n, t in (("k", k), ("v", v)):  # no promotion: PyTorch and Candle's matmul refuse mixed dtypes
        if t.dtype != q.dtype:
            raise errors.DTypeMismatchBinaryOp(to_dtype(q.dtype), to_dtype(t.dtype), f"sdpa (q, {n})")
    if mask is not None and jnp.issubdtype(mask.dtype, jnp.floating):  # PyTorch: a float mask has q's dtype;
        _check_param_dtype("sdpa", q, "additive float mask", mask)  # F32 too for half q (scores are f32)
    qd, kd, vd = _dims(q, layout), _dims(k, kv_layout), _dims(v, kv_layout)
    rules = [("batch sizes differ", not qd[0] == kd[0] == vd[0]), ("k and v lengths differ", kd[2] != vd[2]),
             ("k and v head counts differ", kd[1] != vd[1]), ("q and k head dims differ", qd[3] != kd[3]),
             ("q heads must be a multiple of kv heads", kd[1] == vd[1] and kd[1] and qd[1] % kd[1] != 0),
             ("no kv heads", kd[1] == 0), ("head dims must be >= 1", qd[3] == 0),
             ("k and v have no positions (a softmax over none)", kd[2] == 0)]  # fmt: skip
    broken = [r for r, bad in rules if bad]
    if broken:
        raise errors.Msg(
            f"sdpa: incompatible shapes q {fmt_shape(q.shape)} ({layout}), k {fmt_shape(k.shape)}, v"
            f" {fmt_shape(v.shape)} ({kv_layout}) ({'; '.join(broken)})"
        )
    if mask is not None:
        full = (qd[0], qd[1], qd[2], kd[2])
        try:
            if mask.ndim > 4 or jnp.broadcast_shapes(mask.shape, full) != full:
                raise ValueError
        except ValueError:
            what = "sdpa mask (batch, heads, q_len, kv_len)"
            raise errors.BroadcastIncompatibleShapes(mask.shape, full, what) from None


def _native_attention_bias(q: Any, k: Any, v: Any, mask: Any, layout: str, kv_layout: str,
                           keys_t: bool = False) -> Any:  # fmt: skip
    """The ``(B or 1, Skv)`` additive bias for the native attention, an empty ``(0,)`` array for no mask, or
    None where it does not apply: f32 with exact products, one-device CPU process on AVX-512 or AVX2, as many
    key heads as query heads, one layout, and no mask or a float mask over keys only (padding). With
    transposed keys (a decoding cache's buffer) a bool or integer key mask (the cache's
    ``attn_mask(1)``) applies too, as the XLA form applies it: masked scores become ``-inf`` (a batch
    entry that sees no key gives zeros). Plain keys keep XLA's form under a bool mask: a cache's
    ``append`` returns its keys as a transposed view, which XLA's products read in place and the native
    attention would copy."""
    if not (q.dtype == k.dtype == v.dtype == jnp.float32 and layout == kv_layout
            and f32_precision() == lax.Precision.HIGHEST and jax.device_count() == 1
            and native.attention_available()):  # fmt: skip
        return None
    b, hq, _, _ = _dims(q, layout)
    _, hkv, skv, _ = _dims(k, kv_layout)
    if hq != hkv or skv < 1:
        return None
    if mask is None:
        return jnp.zeros((0,), jnp.float32)
    if mask.ndim > 4:
        return None
    m = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
    if m.shape[1:3] != (1, 1) or m.shape[0] not in (1, b) or m.shape[3] != skv:
        return None
    m = m.reshape(m.shape[0], skv)
    if m.dtype == jnp.bool_ or jnp.issubdtype(m.dtype, jnp.integer):
        if not keys_t:
            return None
        return jnp.where(m.astype(jnp.bool_), 0.0, -jnp.inf).astype(jnp.float32)
    return m.astype(jnp.float32)


@partial(jax.custom_jvp, nondiff_argnums=(5, 6, 7))
def _native_sdpa(q: Any, k: Any, v: Any, bias: Any, layer: Any, scale: float, layout: str, keys_t: bool) -> Any:
    """:func:`sdpa` without positions, softcapping or grouped heads, in native code
    (:func:`candlejax.quantized.native.f32_attention`: BERT-base's 12 heads over 128 tokens 0.55 ->
    0.21 ms, BLIP's over 577 10.3 -> 4.7); ``layer`` (an int32 scalar, or None): k and v are stacked
    ``(L, B, H, Skv, D)`` buffers of which that layer is read in place. Derivatives: the XLA form's
    (tangent map below)."""
    y = native.f32_attention(q, k, v, bias if bias.shape[0] else None, scale, layout, keys_transposed=keys_t,
                             layer=layer)  # fmt: skip
    return _zero_dead_rows(bias, y) if bias.shape[0] else y


@jax.jit
def _zero_dead_rows(bias: Any, y: Any) -> Any:
    """``y`` with zeros for a batch entry whose ``(B, Skv)`` bias hides every key (one fused pass: run
    eagerly as two ops it cost BERT-base's attention ~0.15 of its 0.8 ms)."""
    dead = jnp.all(bias == -jnp.inf, axis=-1).reshape(-1, 1, 1, 1)
    return jnp.where(dead, jnp.zeros((), y.dtype), y)


def _xla_sdpa(q: Any, k: Any, v: Any, bias: Any, scale: float, layout: str, keys_t: bool) -> Any:
    mask = bias.reshape(bias.shape[0], 1, 1, -1) if bias.shape[0] else None
    return _sdpa(q, k, v, mask, None, causal=False, scale=scale, softcap=1.0, window=None, layout=layout,
                 kv_layout=layout, positions=False, keys_t=keys_t)  # fmt: skip


@_native_sdpa.defjvp
def _native_sdpa_jvp(scale: float, layout: str, keys_t: bool, primals: tuple[Any, ...],
                     tangents: tuple[Any, ...]) -> Any:  # fmt: skip
    y = _native_sdpa(*primals, scale, layout, keys_t)
    layer = primals[4]

    def xla(q: Any, k: Any, v: Any, b: Any) -> Any:
        if layer is not None:  # the layer's slices of the stacked buffers
            k, v = (lax.dynamic_index_in_dim(t, layer, 0, keepdims=False) for t in (k, v))
        return _xla_sdpa(q, k, v, b, scale, layout, keys_t)

    _, ty = jax.jvp(xla, primals[:4], tangents[:4])
    return y, ty


def stacked_layer_sdpa(q: Any, k_stack: Any, v_stack: Any, layer: Any, offset: Any, window: int | None = None,
                       scale: float | None = None, layout: str = "bshd") -> Any:  # fmt: skip
    """Causal attention of ``q`` (at positions ``offset ..``) over layer ``layer`` of a stacked cache's
    ``(L, B, Hkv, Skv, D)`` key and value buffers: :func:`sdpa` ``(q, k_stack[layer], v_stack[layer],
    do_causal=True, offset=offset, window=window, scale=scale, layout=layout, kv_layout="bhsd")``.

    One query position (a decoding step) in f32 on an AVX2 or AVX-512 CPU runs in native code, which
    reads the layer's slots where they lie (no copy of them) and takes grouped heads as rows of their
    key head. Prompt chunks (and other dtypes) take :func:`sdpa` over the first 512, 1024, ... slots
    that hold their positions, so a large cache costs what its filled slots cost. ``layer`` and
    ``offset`` may be traced int32 scalars
    (:meth:`candlejax.nn.StackedKvCache.attend` is the usual caller). PyTorch:
    ``F.scaled_dot_product_attention(q, k_stack[layer], v_stack[layer], attn_mask=causal_from_offset,
    enable_gqa=True)``."""
    qa, ks, vs = as_array(q), as_array(k_stack), as_array(v_stack)
    if ks.ndim != 5 or vs.ndim != 5 or ks.shape[0] != vs.shape[0]:
        raise errors.Msg(f"stacked_layer_sdpa: k_stack {fmt_shape(ks.shape)} and v_stack {fmt_shape(vs.shape)} must "
                         "be (layers, batch, kv_heads, max_seq_len, head_dim) with as many layers")  # fmt: skip
    if not _is_integer_scalar(layer):
        raise errors.NotAnInteger("stacked_layer_sdpa", "layer", layer)
    la = layer if isinstance(layer, int | np.integer) else as_array(layer)
    if isinstance(la, jax.core.Tracer):
        layer_i = la.astype(jnp.int32)
    else:  # a concrete layer: checked (XLA would clamp it), read once explicitly
        li = int(read_to_host(la))
        if not 0 <= li < ks.shape[0]:
            raise errors.Msg(f"stacked_layer_sdpa: layer {li} is out of range for {ks.shape[0]} layers")
        layer_i = np.int32(li)
    if qa.ndim != 4:
        raise errors.Msg(f"stacked_layer_sdpa: q must be 4-D ({layout}), got {fmt_shape(qa.shape)}")
    _check_sdpa(qa, jax.ShapeDtypeStruct(ks.shape[1:], ks.dtype), jax.ShapeDtypeStruct(vs.shape[1:], vs.dtype), None,
                layout, "bhsd")  # fmt: skip
    off = _offset_arg(offset, "stacked_layer_sdpa")
    w = None if window is None else int_arg(window, "stacked_layer_sdpa", "window")
    if w is not None and w < 1:
        raise errors.Msg(f"stacked_layer_sdpa: window must be >= 1, got {w}")
    b, hq, s, d = _dims(qa, layout)
    sc = 1.0 / math.sqrt(d) if scale is None else float_arg(scale, "stacked_layer_sdpa", "scale")
    if (s == 1 and qa.dtype == ks.dtype == vs.dtype == jnp.float32 and f32_precision() == lax.Precision.HIGHEST
            and jax.device_count() == 1 and native.attention_available()):  # fmt: skip
        hkv, skv, dv = ks.shape[2], ks.shape[3], vs.shape[4]
        bias = _decode_bias(skv, off, w)
        # one position: q (B, 1, Hq, D) and (B, Hq, 1, D) are the same rows; a key head's grouped query
        # heads are consecutive rows of it
        y = _native_sdpa(qa.reshape(b, hkv, hq // hkv, d), ks, vs, bias, layer_i, sc, "bhsd", False)
        return wrap(y.reshape((b, 1, hq, dv) if layout == "bshd" else (b, hq, 1, dv)))
    k_all = lax.dynamic_index_in_dim(ks, layer_i, 0, keepdims=False)
    v_all = lax.dynamic_index_in_dim(vs, layer_i, 0, keepdims=False)
    sizes = _slot_buckets(ks.shape[3], s)

    def first_slots(n: int) -> Any:  # the slots past offset + s are masked for every query: leave them out
        return as_array(sdpa(qa, k_all[:, :, :n], v_all[:, :, :n], do_causal=True, offset=off, window=w, scale=sc,
                             layout=layout, kv_layout="bhsd"))  # fmt: skip

    if len(sizes) == 1:
        return wrap(first_slots(sizes[0]))
    need = off + s
    if not isinstance(need, jax.core.Tracer):
        n_need = int(read_to_host(need))  # a concrete offset: read once, explicitly
        return wrap(first_slots(next((n for n in sizes if n >= n_need), sizes[-1])))
    which = jnp.minimum(jnp.searchsorted(jnp.asarray(sizes, jnp.int32), need.astype(jnp.int32)), len(sizes) - 1)
    return wrap(lax.switch(which, [partial(first_slots, n) for n in sizes]))


def _slot_buckets(skv: int, s: int, smallest: int = 512) -> list[int]:
    """The key counts a cache of ``skv`` slots is attended over, for ``s`` queries: the powers of two
    from ``smallest`` below ``skv`` (those that hold ``s``), then ``skv``. The prompt chunks of a
    generation into a large cache then cost what the slots filled so far cost, not the whole cache
    (one program: ``lax.switch`` picks the count at run time)."""
    sizes, n = [], smallest
    while n < skv:
        if n >= s:
            sizes.append(n)
        n *= 2
    return [*sizes, skv]


def _is_integer_scalar(x: Any) -> bool:
    """Whether ``x`` is an integer scalar: a Python or numpy int, or a 0-d integer array (traced too)."""
    if isinstance(x, bool | np.bool_):
        return False
    if isinstance(x, int | np.integer):
        return True
    a = as_array(x)
    return a.ndim == 0 and jnp.issubdtype(a.dtype, jnp.integer)


@partial(jax.jit, static_argnums=(0, 2))
def _decode_bias(skv: int, offset: Any, window: int | None) -> Any:
    """``(1, Skv)`` f32: 0 for the keys a query at position ``offset`` sees (``j <= offset`` and, with
    ``window``, ``offset - j < window``), ``-inf`` for the others."""
    j = jnp.arange(skv, dtype=jnp.int32)
    off = jnp.asarray(offset, jnp.int32)
    keep = j <= off if window is None else (j <= off) & (off - j < window)
    return jnp.where(keep, 0.0, -jnp.inf).astype(jnp.float32)[None]


def sdpa(
    q: Any, k: Any, v: Any, mask: Any = None, do_causal: bool = False, scale: float | None = None,
    softcapping: float = 1.0, *, layout: str = "bhsd", kv_layout: str | None = None, offset: Any = None,
    window: int | None = None, keys_transposed: bool = False,
) -> Any:  # fmt: skip
    """Scaled dot-product attention with grouped-query support, differentiable on every backend.

    q ``(B, Hq, S, D)``, k/v ``(B, Hkv, Skv, D)`` with ``Hq % Hkv == 0`` (k/v are never repeated).
    ``mask`` broadcasts to ``(B, Hq, S, Skv)``: a bool/u8 mask keeps the nonzero positions (PyTorch's
    convention), a float mask is added to the scores (padding: :func:`padding_mask`). ``do_causal``
    lets query i (at absolute position ``offset + i``) see key j iff ``j <= offset + i``; ``offset``
    defaults to ``Skv - S`` (aligned at the end) and may be a traced int32: with a preallocated KV
    cache (keys at absolute slots) ``offset=pos`` also hides the slots not written yet.
    ``window`` keeps only the keys with ``offset + i - j < window`` (sliding window, Mistral).
    ``scale`` defaults to ``1/√D``; ``softcapping`` != 1 applies ``tanh(s / cap) * cap`` to the scores.
    A query that sees no key (every key masked) gives zeros, as PyTorch's (not NaN).

    Layouts: ``layout="bshd"`` takes and returns q / the output as ``(B, S, H, D)`` (what the
    projections produce: no transposes), ``kv_layout`` (default: ``layout``) is the keys' and
    values' layout. ``keys_transposed=True`` takes k as ``(B, Hkv, D, Skv)`` (``kv_layout="bhsd"``),
    the layout in which a decoding cache keeps its keys for the score product (``q @ kᵀ`` reads it as
    it is): passing that buffer, rather than its transpose, spares a copy of every key per call.
    Scores and the softmax are f32 (f64 for f64 input); the output has q's dtype. Plain attention (no
    positions or softcapping, as many key heads as query heads, no mask or a float mask over the keys
    only; with transposed keys a bool key mask too) in f32 runs in native code on AVX-512 and AVX2 CPUs
    (:func:`candlejax.quantized.native.f32_attention`).
    PyTorch: ``F.scaled_dot_product_attention(q, k, v, attn_mask, is_causal=, scale=, enable_gqa=True)``
    (``k.transpose(-1, -2)`` for transposed keys).
    """
    kv_layout = layout if kv_layout is None else kv_layout
    qa, ka, va = as_array(q), as_array(k), as_array(v)
    ma = None if mask is None else as_array(mask)
    keys_t = _check_keys_transposed(ka, kv_layout, keys_transposed)
    _check_sdpa(qa, _keys_view(ka, keys_t), va, ma, layout, kv_layout)
    if window is not None and int_arg(window, "sdpa", "window") < 1:
        raise errors.Msg(f"sdpa: window must be >= 1, got {window}")
    sc = 1.0 / math.sqrt(qa.shape[-1]) if scale is None else float_arg(scale, "sdpa", "scale")
    if not float_arg(softcapping, "sdpa", "softcapping") > 0:  # tanh(s / 0) * 0 is NaN
        raise errors.InvalidArgument(f"sdpa: softcapping must be > 0 (1.0: off), got {softcapping}")
    off = None if offset is None else _offset_arg(offset, "sdpa")
    positions = bool(do_causal) or window is not None
    if not positions and offset is None and float(softcapping) == 1.0:
        bias = _native_attention_bias(qa, _keys_view(ka, keys_t), va, ma, layout, kv_layout, keys_t)
        if bias is not None:  # plain attention in native code (AVX-512 and AVX2 CPUs)
            return wrap(_native_sdpa(qa, ka, va, bias, None, sc, layout, keys_t))
    return wrap(_sdpa(qa, ka, va, ma, off, causal=bool(do_causal), scale=sc, softcap=float(softcapping),
                      window=None if window is None else int(window), layout=layout, kv_layout=kv_layout,
                      positions=positions, keys_t=keys_t))  # fmt: skip


def _check_keys_transposed(k: Any, kv_layout: str, keys_transposed: bool) -> bool:
    if not keys_transposed:
        return False
    if kv_layout != "bhsd" or k.ndim != 4:
        raise errors.Msg(f"sdpa: keys_transposed=True takes k as (batch, heads, head_dim, kv_len) with "
                         f"kv_layout='bhsd', got k {fmt_shape(k.shape)} with kv_layout={kv_layout!r}")  # fmt: skip
    return True


def _keys_view(k: Any, keys_t: bool) -> Any:
    """k's shape and dtype as ``(B, Hkv, Skv, D)`` (no data moved: for the shape checks)."""
    if not keys_t:
        return k
    return jax.ShapeDtypeStruct((k.shape[0], k.shape[1], k.shape[3], k.shape[2]), k.dtype)


def sdpa_slow(
    q: Any, k: Any, v: Any, mask: Any = None, do_causal: bool = False, scale: float | None = None,
    softcapping: float = 1.0, *, layout: str = "bhsd", kv_layout: str | None = None, offset: Any = None,
    window: int | None = None, keys_transposed: bool = False,
) -> Any:  # fmt: skip
    """Reference for :func:`sdpa`: transpose to ``(B, H, S, D)``, repeat kv heads, matmul, mask,
    softmax, matmul."""
    kv_layout = layout if kv_layout is None else kv_layout
    qa, ka, va = as_array(q), as_array(k), as_array(v)
    ma = None if mask is None else as_array(mask)
    if _check_keys_transposed(ka, kv_layout, keys_transposed):
        ka = jnp.swapaxes(ka, 2, 3)
    _check_sdpa(qa, ka, va, ma, layout, kv_layout)
    if layout == "bshd":
        qa = qa.transpose(0, 2, 1, 3)
    if kv_layout == "bshd":
        ka, va = ka.transpose(0, 2, 1, 3), va.transpose(0, 2, 1, 3)
    sc = 1.0 / math.sqrt(qa.shape[-1]) if scale is None else float(scale)
    kr, vr = _repeat_kv(ka, n_rep=qa.shape[1] // ka.shape[1]), _repeat_kv(va, n_rep=qa.shape[1] // ka.shape[1])
    scores = (_upcast(qa) @ jnp.swapaxes(_upcast(kr), -1, -2)) * sc
    if softcapping != 1.0:
        scores = jnp.tanh(scores / softcapping) * softcapping
    s, skv = qa.shape[2], ka.shape[2]
    if do_causal or window is not None:
        keep = causal_mask(s, skv, offset, window, causal=do_causal)
        scores = jnp.where(as_array(keep) != 0, scores, -jnp.inf)
    scores = _apply_mask(scores, ma)
    e = _softmax_numerator(scores)
    out = _softmax_divide(e @ _upcast(vr), e).astype(qa.dtype)
    return wrap(out.transpose(0, 2, 1, 3) if layout == "bshd" else out)


@op(static=("n_rep",))
def _repeat_kv(x: Any, *, n_rep: int) -> Any:
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return jnp.broadcast_to(x[:, :, None], (b, h, n_rep, s, d)).reshape(b, h * n_rep, s, d)


def repeat_kv(xs: Any, n_rep: int) -> Any:
    """``(B, Hkv, S, D) -> (B, Hkv * n_rep, S, D)``, each kv head repeated ``n_rep`` times in place
    (transformers' and candle-transformers' ``repeat_kv``). :func:`sdpa` does not need it."""
    a = as_array(xs)
    if a.ndim != 4:
        raise errors.UnexpectedNumberOfDims(4, a.ndim, a.shape, "repeat_kv (batch, kv_heads, seq, head_dim)")
    n_rep = int_arg(n_rep, "repeat_kv", "n_rep")
    if n_rep < 1:
        raise errors.Msg(f"repeat_kv: n_rep must be >= 1, got {n_rep}")
    check_elem_count((*a.shape[:1], a.shape[1] * n_rep, *a.shape[2:]), "repeat_kv")
    return wrap(_repeat_kv(a, n_rep=n_rep))


_I32_MAX = 2**31 - 1


def causal_mask(q_len: int, kv_len: int | None = None, offset: Any = None, window: int | None = None,
                *, causal: bool = True) -> Any:  # fmt: skip
    """U8 ``(q_len, kv_len)``: 1 where query i (at absolute position ``offset + i``, default
    ``kv_len - q_len``) may attend to key j: ``j <= offset + i`` and, with ``window``,
    ``offset + i - j < window``. ``offset`` may be traced (a KV-cache position under ``jit``)."""
    q_len = int_arg(q_len, "causal_mask", "q_len")
    kv_len = q_len if kv_len is None else int_arg(kv_len, "causal_mask", "kv_len")
    if q_len < 0 or kv_len < 0:
        raise errors.InvalidArgument(f"causal_mask: q_len and kv_len must be >= 0, got {q_len}, {kv_len}")
    if max(q_len, kv_len) > _I32_MAX:  # positions are int32
        raise errors.InvalidArgument(f"causal_mask: q_len and kv_len must be < 2^31, got {q_len}, {kv_len}")
    off = (kv_len - q_len) if offset is None else _offset_arg(offset, "causal_mask")
    window = None if window is None else int_arg(window, "causal_mask", "window")
    return wrap(_position_keep(q_len, kv_len, off, causal, window).astype(jnp.uint8))


def padding_mask(attention_mask: Any) -> Any:
    """A 0/1 ``(B, S)`` attention mask (1 = real token) -> U8 ``(B, 1, 1, S)`` for :func:`sdpa`."""
    if isinstance(attention_mask, (np.ndarray, list, tuple)):  # 0/1 host data of any integer width
        attention_mask = np.asarray(attention_mask) != 0
    m = as_array(attention_mask)
    if m.ndim != 2:
        raise errors.UnexpectedNumberOfDims(2, m.ndim, m.shape, "padding_mask: attention_mask (batch, seq)")
    return wrap((m != 0).astype(jnp.uint8)[:, None, None, :])


# ------------------------------------------------------------------------------------------------
# pixel shuffle, padding
# ------------------------------------------------------------------------------------------------
@op(static=("r",))
def _pixel_shuffle(a: Any, *, r: int) -> Any:
    b, c, h, w = a.shape
    x = a.reshape(b, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // (r * r), h * r, w * r)


@op(static=("r",))
def _pixel_unshuffle(a: Any, *, r: int) -> Any:
    b, c, h, w = a.shape
    x = a.reshape(b, c, h // r, r, w // r, r).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * r * r, h // r, w // r)


def _factor(op_name: str, what: str, r: Any) -> int:
    if isinstance(r, (bool, np.bool_)) or not isinstance(r, (int, np.integer)) or r < 1:
        raise errors.Msg(f"{op_name}: {what} must be an integer >= 1, got {r!r} (as torch's)")
    return int(r)


def pixel_shuffle(xs: Any, upscale_factor: int) -> Any:
    """``(B, C·r², H, W) -> (B, C, H·r, W·r)`` (PyTorch's ``pixel_shuffle``)."""
    a = as_array(xs)
    if a.ndim != 4:
        raise errors.UnexpectedNumberOfDims(4, a.ndim, a.shape, "pixel_shuffle")
    r = _factor("pixel_shuffle", "upscale_factor", upscale_factor)
    if a.shape[1] % (r * r):
        raise errors.Msg(f"pixel_shuffle: channels {a.shape[1]} not divisible by {r * r}")
    return wrap(_pixel_shuffle(a, r=r))


def pixel_unshuffle(xs: Any, downscale_factor: int) -> Any:
    """``(B, C, H·r, W·r) -> (B, C·r², H, W)``."""
    a = as_array(xs)
    if a.ndim != 4:
        raise errors.UnexpectedNumberOfDims(4, a.ndim, a.shape, "pixel_unshuffle")
    r = _factor("pixel_unshuffle", "downscale_factor", downscale_factor)
    if a.shape[2] % r or a.shape[3] % r:
        raise errors.Msg(f"pixel_unshuffle: spatial dims {fmt_shape(a.shape[2:])} not divisible by {r}")
    return wrap(_pixel_unshuffle(a, r=r))


def replication_pad2d(xs: Any, pad: int) -> Any:
    """Pad the last two dims by repeating the edge ``pad`` times (any pad, unlike Candle's {0, 1})."""
    a = as_array(xs)
    if a.ndim != 4:
        raise errors.UnexpectedNumberOfDims(4, a.ndim, a.shape, "replication_pad2d")
    if isinstance(pad, (bool, np.bool_)) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise errors.Msg(f"replication_pad2d: pad must be an integer >= 0, got {pad!r}")
    if pad > 0 and 0 in a.shape[2:]:  # nothing to replicate (torch raises too)
        raise errors.Msg(f"replication_pad2d: cannot replicate the edge of an empty plane {fmt_shape(a.shape)}")
    if pad == 0:
        return wrap(a)
    pad = int(pad)
    check_elem_count((*a.shape[:2], a.shape[2] + 2 * pad, a.shape[3] + 2 * pad), "replication_pad2d")
    return wrap(_replication_pad2d(a, pad=pad))


@op(static=("pad",))
def _replication_pad2d(a: Any, *, pad: int) -> Any:
    return jnp.pad(a, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="edge")


class Identity(Module):
    """``ops::Identity``: returns its input."""

    @staticmethod
    def new() -> Identity:
        """Candle's ``Identity::new()``."""
        return Identity()

    @staticmethod
    def default() -> Identity:
        """Candle's ``Identity::default()`` (= ``new()``)."""
        return Identity()

    def forward(self, xs: Any) -> Any:
        """``xs`` itself (PyTorch's ``nn.Identity``)."""
        return xs


def depthwise_conv2d(xs: Any, kernel: Any, padding: Any = 0, stride: Any = 1, dilation: Any = 1, *,
                     layout: str = "nchw") -> Any:  # fmt: skip
    """Depthwise 2D convolution (one ``KH x KW`` filter per channel, zero padding on both sides).

    ``kernel`` is PyTorch's / Candle's ``(C, 1, KH, KW)``; ``layout="nchw"`` takes ``(B, C, H, W)``
    and is ``xs.conv2d(kernel, padding, stride, dilation, groups=C)``; ``layout="nhwc"`` takes and
    returns channels-last ``(B, H, W, C)`` tensors, so token-major models ((B, H*W, C) reshaped)
    need no transposes around the convolution. ``padding``/``stride``/``dilation``: ints or
    ``(h, w)`` pairs. PyTorch: ``F.conv2d(x, w, padding=p, stride=s, dilation=d, groups=C)``
    (``x.permute(0, 3, 1, 2)`` for channels-last). Differentiable.
    """
    if layout not in ("nchw", "nhwc"):
        raise errors.Msg(f"depthwise_conv2d: layout must be 'nchw' or 'nhwc', got {layout!r}")
    if not isinstance(xs, TensorBase) or not isinstance(kernel, TensorBase):
        raise errors.Msg("depthwise_conv2d: expected Tensor input and kernel")
    p, s, d = (to_usize2(v, n, "depthwise_conv2d", m) for v, n, m in ((padding, "padding", 0), (stride, "stride", 1),
                                                                     (dilation, "dilation", 1)))
    xa, ka = as_array(xs), as_array(kernel)
    if xa.ndim != 4:
        raise errors.Msg(f"depthwise_conv2d: input must be 4-D ({layout.upper()}), got {fmt_shape(xa.shape)}")
    c = xa.shape[1] if layout == "nchw" else xa.shape[3]
    if ka.ndim != 4 or ka.shape[:2] != (c, 1):
        raise errors.Msg(f"depthwise_conv2d: kernel must be ({c}, 1, KH, KW) for a {layout.upper()} input of"
                         f" shape {fmt_shape(xa.shape)}, got {fmt_shape(ka.shape)}")  # fmt: skip
    if layout == "nchw":
        return xs.conv2d(kernel, p, s, d, c)
    _check_float("depthwise_conv2d", xa)
    if xa.dtype != ka.dtype:
        raise errors.DTypeMismatchBinaryOp(xs.dtype, kernel.dtype, "depthwise_conv2d")
    for n, k, pp, dd in zip(xa.shape[1:3], ka.shape[2:], p, d):
        if n + 2 * pp - dd * (k - 1) - 1 < 0:
            raise errors.Msg(
                f"depthwise_conv2d: the dilated kernel ({dd * (k - 1) + 1}) is larger than the padded input"
                f" ({n + 2 * pp}), input {fmt_shape(xa.shape)}, kernel {fmt_shape(ka.shape)}"
            )
    return wrap(depthwise_conv2d_nhwc_op(xa, ka, padding=p, stride=s, dilation=d))
