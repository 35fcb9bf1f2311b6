"""Normalisation layers: ``LayerNorm``, ``RmsNorm``, ``GroupNorm``, ``BatchNorm``.

requires: candlejax.nn.ops (layer_norm, rms_norm), candlejax.nn.module, candlejax.nn.init
provides: ``LayerNormConfig``, ``LayerNorm``, ``layer_norm``, ``layer_norm_no_bias``, ``RmsNorm``,
``rms_norm``, ``GroupNorm``, ``group_norm``, ``BatchNormConfig``, ``BatchNorm``, ``batch_norm``

All are differentiable (Candle's fused layer/rms norm are not). BatchNorm's running statistics
are ``Buffer``s (saved, never trained) and are updated functionally:
``y, bn = bn.forward_train(x)`` returns the output and the layer with its new statistics.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from candlejax import errors
from candlejax._discarded import caller_discards_result
from candlejax._dispatch import op
from candlejax.dtype import to_dtype
from candlejax.nn import ops
from candlejax.nn._cache_base import _AppendResult
from candlejax.nn.init import ONE, ZERO
from candlejax.nn.linear import _as_param, _require_tensor, as_weight, check_param
from candlejax.nn.module import (
    Buffer,
    CallableBool,
    CallableConfig,
    CallableFloat,
    LayerInputShape,
    Module,
    ModuleT,
    as_array,
    in_place_updates_kept,
    layer_name,
    train_arg,
)
from candlejax.tensor._core import float_arg, int_arg, wrap

__all__ = [
    "BatchNorm",
    "BatchNormConfig",
    "GroupNorm",
    "LayerNorm",
    "LayerNormConfig",
    "RmsNorm",
    "batch_norm",
    "group_norm",
    "layer_norm",
    "layer_norm_no_bias",
    "rms_norm",
]


@dataclass(frozen=True)
class LayerNormConfig(CallableConfig):
    """``eps`` 1e-5, ``remove_mean`` (False gives RMS norm), ``affine`` (learned weight and bias)."""

    eps: float = 1e-5
    remove_mean: bool = True
    affine: bool = True

    @staticmethod
    def from_eps(eps: float) -> LayerNormConfig:
        """A config with ``eps`` and the other fields at their defaults (Candle's ``From<f64> for LayerNormConfig``)."""
        return LayerNormConfig(eps=eps)

    @staticmethod
    def default() -> LayerNormConfig:
        """Rust's ``LayerNormConfig::default()``: the field defaults."""
        return LayerNormConfig()


def _eps(eps: Any, layer: str) -> CallableFloat:
    """A norm layer's ``eps``: a finite number >= 0 (a negative or NaN one makes the output NaN)."""
    if isinstance(eps, (bool, str, bytes)) or not isinstance(eps, numbers.Real):
        raise errors.ArgumentType(f"{layer}: eps must be a number, got {eps!r} ({type(eps).__name__})")
    if not (math.isfinite(eps) and eps >= 0):
        raise errors.InvalidArgument(f"{layer}: eps must be a finite number >= 0, got {eps}")
    return CallableFloat(eps)


class LayerNorm(Module):
    """Normalise over the last dim (``nn.LayerNorm(normalized_shape=H)``); f16/bf16 computed in f32."""

    def __init__(self, weight: Any, bias: Any = None, eps: float = 1e-5, remove_mean: bool = True):
        _require_tensor(weight, "LayerNorm", "nn.layer_norm(size, LayerNormConfig(eps=...), vb)")
        self.weight = as_weight(weight, "LayerNorm" if remove_mean else "RmsNorm")
        self.bias = _as_param(bias)
        self.eps = _eps(eps, "LayerNorm" if remove_mean else "RmsNorm")
        self.remove_mean = CallableBool(remove_mean)
        kind = "LayerNorm" if remove_mean else "RmsNorm"
        check_param(kind, self.weight, "weight (size,)", self.weight, rank=1)
        check_param(kind, self.weight, "bias", self.bias, tuple(self.weight.shape))

    @staticmethod
    def new(weight: Any, bias: Any, eps: float) -> LayerNorm:
        """Candle's ``LayerNorm::new(weight, bias, eps)``."""
        return LayerNorm(weight, bias, eps)

    @staticmethod
    def new_no_bias(weight: Any, eps: float) -> LayerNorm:
        """Candle's ``LayerNorm::new_no_bias(weight, eps)``."""
        return LayerNorm(weight, None, eps)

    @staticmethod
    def rms_norm(weight: Any, eps: float) -> LayerNorm:
        """Candle's ``LayerNorm::rms_norm(weight, eps)``: no mean removal and no bias."""
        return LayerNorm(weight, None, eps, remove_mean=False)

    def extra_repr(self) -> str:
        """The normalized size and ``eps``, for ``repr``."""
        return f"size={self.weight.shape[0]}, eps={self.eps}" + ("" if self.remove_mean else ", rms")

    def _check(self, x: Any) -> None:
        h = self.weight.shape[0]
        if x.ndim < 1 or x.shape[-1] != h:
            xs, w = errors.fmt_shape(x.shape), errors.fmt_shape(self.weight.shape)
            if isinstance(self, RmsNorm):  # Candle's RmsNorm runs ops::rms_norm
                candle = f"shape mismatch in rms-norm {xs} {w}"
            elif self.remove_mean and self.bias is not None:  # LayerNorm's fused ops::layer_norm
                candle = f"shape mismatch in layer-norm src: {xs} alpha: {w} beta: {errors.fmt_shape(self.bias.shape)}"
            else:  # the step-by-step path fails multiplying by the weight
                candle = f"shape mismatch in broadcast_mul, lhs: {xs}, rhs: {w}"
            raise LayerInputShape(layer_name(type(self).__name__, self.weight), f"[..., {h}]", x.shape, candle=candle)

    def forward(self, xs: Any) -> Any:
        """Normalize over the last dim: ``(..., size)`` in, same shape out."""
        x = as_array(xs)
        self._check(x)
        if self.remove_mean:
            return ops.layer_norm(x, self.weight, self.bias, self.eps)
        out = ops.rms_norm(x, self.weight, self.eps)
        if self.bias is not None:
            out = wrap(out._a + self.bias._a.astype(x.dtype))
        return out


def layer_norm(size: int, config: LayerNormConfig | float, vb: Any) -> LayerNorm:
    """Params ``weight`` (ones) and, when ``affine``, ``bias`` (zeros); a float config is the eps."""
    if not isinstance(config, LayerNormConfig):
        if isinstance(config, (str, bytes)) or not hasattr(config, "__float__"):
            raise errors.ArgumentType(
                f"layer_norm: config must be a LayerNormConfig or an eps (a float), got {config!r}"
            )
        config = LayerNormConfig(eps=float_arg(config, "layer_norm", "eps"))
    w = vb.get_with_hints((size,), "weight", ONE)
    b = vb.get_with_hints((size,), "bias", ZERO) if config.affine else None
    return LayerNorm(w, b, config.eps, config.remove_mean)


def layer_norm_no_bias(size: int, eps: float, vb: Any) -> LayerNorm:
    """Candle's ``candle_nn::layer_norm_no_bias``: a ``LayerNorm`` with only a ``weight`` read from ``vb``."""
    return LayerNorm(vb.get_with_hints((size,), "weight", ONE), None, eps)


class RmsNorm(LayerNorm):
    """``x / sqrt(mean(x²) + eps) * weight`` over the last dim (``nn.RMSNorm``); differentiable."""

    def __init__(self, weight: Any, eps: float = 1e-6):
        super().__init__(weight, None, eps, remove_mean=False)

    @staticmethod
    def new(weight: Any, eps: float) -> RmsNorm:  # type: ignore[override]
        """Candle's ``RmsNorm::new(weight, eps)``."""
        return RmsNorm(weight, eps)

    def into_inner(self) -> LayerNorm:
        """Candle's ``RmsNorm::into_inner``: the underlying ``LayerNorm`` (no mean removal)."""
        return LayerNorm(self.weight, None, self.eps, remove_mean=False)

    def forward_diff(self, xs: Any) -> Any:
        """Candle's differentiable path; every path is differentiable here."""
        return self.forward(xs)


def rms_norm(size: int, eps: float, vb: Any) -> RmsNorm:
    """Param ``weight`` (ones)."""
    return RmsNorm(vb.get_with_hints((size,), "weight", ONE), eps)


# ------------------------------------------------------------------------------------------------
@op(static=("groups", "eps"))
def _group_norm(x: Any, w: Any, b: Any, *, groups: int, eps: float) -> Any:
    xf = x.astype(jnp.float32) if x.dtype in (jnp.bfloat16, jnp.float16) else x
    bsz, c = x.shape[:2]
    g = xf.reshape(bsz, groups, (c // groups) * math.prod(x.shape[2:]))  # not -1: batch 0 has no inferable dim
    mean = jnp.mean(g, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=-1, keepdims=True)
    y = ((g - mean) * lax.rsqrt(var + eps)).reshape(x.shape)
    bshape = (1, c) + (1,) * (x.ndim - 2)
    return (y * w.reshape(bshape) + b.reshape(bshape)).astype(x.dtype)


class GroupNorm(Module):
    """``nn.GroupNorm(num_groups, num_channels)``: input ``(B, C, ...)`` with rank >= 3."""

    def __init__(self, weight: Any, bias: Any, num_channels: int, num_groups: int, eps: float = 1e-5):
        num_channels = int_arg(num_channels, "GroupNorm", "num_channels")
        num_groups = int_arg(num_groups, "GroupNorm", "num_groups")
        if num_groups <= 0 or num_channels % num_groups:
            raise errors.InvalidArgument(
                f"GroupNorm: num_groups ({num_groups}) must divide num_channels ({num_channels})"
            )
        self.weight = as_weight(weight, "GroupNorm")
        self.bias = as_weight(bias, "GroupNorm", "bias")
        self.num_channels = int(num_channels)
        self.num_groups = int(num_groups)
        rule = f"num_channels is {self.num_channels}"
        check_param("GroupNorm", self.weight, "weight", self.weight, (self.num_channels,), rule=rule)
        check_param("GroupNorm", self.weight, "bias", self.bias, (self.num_channels,), rule=rule)
        self.eps = _eps(eps, "GroupNorm")

    @staticmethod
    def new(weight: Any, bias: Any, num_channels: int, num_groups: int, eps: float) -> GroupNorm:
        """Candle's ``GroupNorm::new(weight, bias, num_channels, num_groups, eps)``."""
        return GroupNorm(weight, bias, num_channels, num_groups, eps)

    def extra_repr(self) -> str:
        """The groups, channels and ``eps``, for ``repr``."""
        return f"groups={self.num_groups}, channels={self.num_channels}, eps={self.eps}"

    def forward(self, xs: Any) -> Any:
        """Normalize each group of channels: ``(B, C, ...)`` in, same shape out."""
        x = as_array(xs)
        if x.ndim < 3:
            raise errors.Msg(f"input rank for GroupNorm should be at least 3, got {errors.fmt_shape(x.shape)}")
        if x.shape[1] != self.num_channels:
            raise LayerInputShape(
                layer_name("GroupNorm", self.weight), f"[batch, {self.num_channels}, ...]", x.shape,
                candle=f"unexpected num-channels in GroupNorm ({x.shape[1]} <> {self.num_channels}",  # sic, Candle's
            )
        ops._check_float("group-norm", x)
        ops._check_param_dtype(layer_name("GroupNorm", self.weight), x, "weight", self.weight._a)
        return wrap(_group_norm(x, self.weight._a, self.bias._a, groups=self.num_groups, eps=self.eps))


def group_norm(num_groups: int, num_channels: int, eps: float, vb: Any) -> GroupNorm:
    """Params ``weight`` (ones) and ``bias`` (zeros)."""
    num_channels = int_arg(num_channels, "group_norm", "num_channels")
    num_groups = int_arg(num_groups, "group_norm", "num_groups")
    if num_groups <= 0 or num_channels % num_groups:
        raise errors.InvalidArgument(f"GroupNorm: num_groups ({num_groups}) must divide num_channels ({num_channels})")
    w = vb.get_with_hints((num_channels,), "weight", ONE)
    b = vb.get_with_hints((num_channels,), "bias", ZERO)
    return GroupNorm(w, b, num_channels, num_groups, eps)


# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchNormConfig(CallableConfig):
    """``eps`` 1e-5, ``remove_mean`` True, ``affine`` True, ``momentum`` 0.1 (Candle's defaults)."""

    eps: float = 1e-5
    remove_mean: bool = True
    affine: bool = True
    momentum: float = 0.1

    @staticmethod
    def default() -> BatchNormConfig:
        """Rust's ``BatchNormConfig::default()``: the field defaults."""
        return BatchNormConfig()


def _as_buffer(t: Any) -> Buffer:
    return t if isinstance(t, Buffer) else Buffer(t, getattr(t, "name", ""))


def _bshape(x: Any) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


@op(static=("eps", "remove_mean", "momentum"))
def _bn_train(x: Any, rm: Any, rv: Any, w: Any, b: Any, *, eps: float, remove_mean: bool, momentum: float) -> Any:
    xf = x.astype(jnp.float32) if x.dtype in (jnp.bfloat16, jnp.float16) else x
    axes = (0, *tuple(range(2, x.ndim)))
    n = x.size // x.shape[1]
    if remove_mean:
        mean = jnp.mean(xf, axis=axes)
        xc = xf - mean.reshape(_bshape(x))
        new_rm = rm * (1.0 - momentum) + lax.stop_gradient(mean).astype(rm.dtype) * momentum
    else:
        xc, new_rm = xf, rm
    var = jnp.mean(jnp.square(xc), axis=axes)
    unbiased = lax.stop_gradient(var) * (n / max(n - 1, 1))
    new_rv = rv * (1.0 - momentum) + unbiased.astype(rv.dtype) * momentum
    y = xc * lax.rsqrt(var + eps).reshape(_bshape(x))
    if w is not None:
        y = y * w.reshape(_bshape(x)) + b.reshape(_bshape(x))
    return y.astype(x.dtype), new_rm, new_rv


@op(static=("eps",))
def _bn_eval(x: Any, rm: Any, rv: Any, w: Any, b: Any, *, eps: float) -> Any:
    """Candle's ``forward_eval``: the running mean is subtracted whatever ``remove_mean`` says (with
    ``remove_mean=False`` training leaves it as loaded, zeros by default), as ``absorb_bn`` folds it."""
    xf = x.astype(jnp.float32) if x.dtype in (jnp.bfloat16, jnp.float16) else x
    xc = xf - rm.reshape(_bshape(x))
    y = xc * lax.rsqrt(rv.reshape(_bshape(x)) + eps)
    if w is not None:
        y = y * w.reshape(_bshape(x)) + b.reshape(_bshape(x))
    return y.astype(x.dtype)


_TRAIN_HINT = (
    "BatchNorm.forward_train returns (output, layer with updated running statistics): write"
    " `y, bn = bn.forward_train(x)`; Candle's `bn.forward_train(&x)?` (running statistics updated in place,"
    " the output returned) is `y = bn.forward_t(x, True)` here"
)


class OutputAndLayer(_AppendResult):
    """The ``(output, new_layer)`` pair :meth:`BatchNorm.forward_train` returns: a plain tuple to unpack.
    Candle's ``forward_train`` returns the output and updates the layer in place, so its port
    ``y = bn.forward_train(x)`` binds this pair, which raises at its first use as a tensor, naming
    ``bn.forward_t(x, True)``."""

    __slots__ = ()
    not_a_tensor_hint = _TRAIN_HINT
    _holds = "the (output, new_layer) pair BatchNorm.forward_train returns"


class BatchNormStatement(errors.InPlaceStatement):
    """``bn.forward_train(x)`` written as a statement (Candle's in-place update of the running
    statistics), which here would change nothing."""

    def __init__(self) -> None:
        self.call = "BatchNorm.forward_train"
        errors.Error.__init__(self, f"the running statistics were not updated: {_TRAIN_HINT}")


class BatchNorm(ModuleT):
    """Batch normalisation over dim 1 (``nn.BatchNorm1d/2d``); a ``ModuleT``.

    ``bn(x)`` / ``bn.forward_t(x, False)`` use the running statistics. ``bn.forward_t(x, True)``
    normalises with the batch statistics and, as Candle's, updates the running statistics in place
    (eagerly, or on a layer passed into a jit/grad trace; a layer a traced function closes over
    keeps them); ``y, bn = bn.forward_train(x)`` returns the layer with its running statistics
    updated and leaves this one as it is (functional, for jitted training steps). Running variance
    is updated with the unbiased batch variance, as in PyTorch. With ``remove_mean=False`` training
    neither subtracts nor updates the mean, and evaluation still subtracts the running mean, as Candle's.
    """

    def __init__(
        self, num_features: int, running_mean: Any, running_var: Any, weight: Any = None, bias: Any = None,
        eps: float = 1e-5, momentum: float = 0.1, remove_mean: bool = True,
    ):  # fmt: skip
        if isinstance(eps, numbers.Real) and eps < 0:
            raise errors.InvalidArgument(f"batch-norm eps cannot be negative {eps}")
        _eps(eps, "batch-norm")
        if isinstance(momentum, (bool, str, bytes)) or not isinstance(momentum, numbers.Real):
            raise errors.ArgumentType(f"batch-norm: momentum must be a number, got {momentum!r}")
        if not 0.0 <= momentum <= 1.0:  # Candle's check_validity (NaN too)
            raise errors.InvalidArgument(f"batch-norm momentum must be between 0 and 1, is {momentum}")
        if (weight is None) != (bias is None):  # Candle's weight_and_bias: Option<(Tensor, Tensor)>
            raise errors.InvalidArgument(
                "BatchNorm: weight and bias go together (Candle's weight_and_bias): pass both, or neither"
                f" (new_no_bias), got weight {'None' if weight is None else 'given'} and bias"
                f" {'None' if bias is None else 'given'}"
            )
        self.running_mean = _as_buffer(running_mean)
        self.running_var = _as_buffer(running_var)
        self.weight = _as_param(weight)
        self.bias = _as_param(bias)
        self.num_features = int(num_features)
        self.eps = CallableFloat(eps)
        self.momentum = CallableFloat(momentum)
        self.remove_mean = bool(remove_mean)
        for n, t in (("running_mean", self.running_mean), ("running_var", self.running_var), ("weight", self.weight),
                     ("bias", self.bias)):  # fmt: skip
            if t is not None and tuple(t.shape) != (self.num_features,):
                raise errors.UnexpectedShape(f"batch-norm {n} has unexpected shape", (self.num_features,), t.shape)

    @staticmethod
    def new(num_features: int, running_mean: Any, running_var: Any, weight: Any, bias: Any, eps: float) -> BatchNorm:
        """Candle's ``BatchNorm::new(num_features, running_mean, running_var, weight, bias, eps)``."""
        return BatchNorm(num_features, running_mean, running_var, weight, bias, eps)

    @staticmethod
    def new_no_bias(num_features: int, running_mean: Any, running_var: Any, eps: float) -> BatchNorm:
        """Candle's ``BatchNorm::new_no_bias(num_features, running_mean, running_var, eps)``."""
        return BatchNorm(num_features, running_mean, running_var, None, None, eps)

    @staticmethod
    def new_with_momentum(num_features: int, running_mean: Any, running_var: Any, weight: Any, bias: Any,
                          eps: float, momentum: float) -> BatchNorm:  # fmt: skip
        """Candle's ``BatchNorm::new_with_momentum``: ``new`` with the running-stats ``momentum``."""
        return BatchNorm(num_features, running_mean, running_var, weight, bias, eps, momentum)

    @staticmethod
    def new_no_bias_with_momentum(num_features: int, running_mean: Any, running_var: Any, eps: float,
                                  momentum: float) -> BatchNorm:  # fmt: skip
        """Candle's ``BatchNorm::new_no_bias_with_momentum``: no affine part, with ``momentum``."""
        return BatchNorm(num_features, running_mean, running_var, None, None, eps, momentum)

    def weight_and_bias(self) -> tuple[Any, Any] | None:
        """Candle's ``weight_and_bias()``: ``(weight, bias)``, or ``None`` for a layer without them."""
        return None if self.weight is None or self.bias is None else (self.weight, self.bias)

    def extra_repr(self) -> str:
        """The feature count, ``eps`` and ``momentum``, for ``repr``."""
        return f"features={self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def _check(self, x: Any, train: bool = False) -> None:
        if x.ndim < 2 or x.shape[1] != self.num_features:
            shape = errors.fmt_shape(x.shape)
            candle = (  # Candle's forward_train checks; forward_eval fails in a reshape or broadcast instead
                ""
                if not train
                else f"batch-norm input tensor must have at least two dimensions ({shape})"
                if x.ndim < 2
                else f"batch-norm input doesn't have the expected number of features ({shape} <> {self.num_features})"
            )
            raise LayerInputShape(
                layer_name("BatchNorm", self.weight, self.running_mean), f"[batch, {self.num_features}, ...]", x.shape,
                candle=candle,
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):  # Candle: a dtype mismatch with the f32 statistics
            raise errors.UnsupportedDTypeForOp(
                to_dtype(x.dtype), layer_name("BatchNorm", self.weight, self.running_mean),
                "convert the input with .to_dtype(DType.F32) first",
            )

    def _wb(self) -> tuple[Any, Any]:
        return (None, None) if self.weight is None else (self.weight._a, self.bias._a)

    def forward_train(self, xs: Any) -> tuple[Any, BatchNorm]:
        """Normalise with batch statistics; return ``(output, layer with updated running stats)``.

        Candle's ``forward_train`` updates the running statistics in place and returns the output: that
        is ``bn.forward_t(x, True)`` here. Its port ``y = bn.forward_train(x)`` binds the pair, which
        raises at its first use as a tensor, and as a bare statement ``bn.forward_train(x)`` raises
        :class:`BatchNormStatement`; both name these spellings.
        """
        __tracebackhide__ = True
        out = self._forward_train(xs)
        if caller_discards_result():
            raise BatchNormStatement()
        return out

    def _forward_train(self, xs: Any) -> OutputAndLayer:
        x = as_array(xs)
        self._check(x, train=True)
        w, b = self._wb()
        y, rm, rv = _bn_train(
            x, self.running_mean._a, self.running_var._a, w, b, eps=self.eps, remove_mean=self.remove_mean,
            momentum=self.momentum,
        )  # fmt: skip
        new = self.replace(
            running_mean=Buffer._make(rm, self.running_mean.name), running_var=Buffer._make(rv, self.running_var.name)
        )
        return OutputAndLayer((wrap(y), new))

    def forward_t(self, xs: Any, train: bool) -> Any:
        """Candle's ``ModuleT for BatchNorm``: batch statistics (updating the running ones) when ``train``, else the
        running ones.
        ``(B, C, ...)`` in, same shape out.
        """
        if train_arg(train, "BatchNorm"):
            y, new = self._forward_train(xs)
            # Candle's forward_t(xs, true) updates the running statistics in place (Var::set); so does
            # this wherever the new values can be kept: eagerly, or inside a jit/grad trace that was
            # given this layer. Closed over by a traced function, the layer keeps its statistics
            # (the traced values would leak): forward_train returns them there.
            for old_stat, new_stat in ((self.running_mean, new.running_mean), (self.running_var, new.running_var)):
                if not isinstance(new_stat._a, jax.core.Tracer) or isinstance(old_stat._a, jax.core.Tracer):
                    old_stat.set(new_stat, own=True)  # fresh values: no copy
            if isinstance(new.running_mean._a, jax.core.Tracer) and not in_place_updates_kept():
                errors.warn_at_caller(
                    f"{layer_name('BatchNorm', self.weight, self.running_mean)}.forward_t(x, True) under a JAX"
                    " transform that does not write in-place updates back (jax.jit, jax.vmap, or a layer a traced"
                    " function closes over): the caller's layer keeps its running statistics; pass the model to"
                    " cj.jit / cj.value_and_grad (or opt.backward_step), or return the updated layer from the traced"
                    " function (`y, bn = bn.forward_train(x)`)",
                    errors.LostUpdateWarning,
                )
            return y
        x = as_array(xs)
        self._check(x)
        w, b = self._wb()
        return wrap(_bn_eval(x, self.running_mean._a, self.running_var._a, w, b, eps=self.eps))


def _stat_buffer(vb: Any, v: Any) -> Buffer:
    """A running statistic as a ``Buffer``. Built from a VarMap, the map holds that same Buffer in
    place of the Var it created, so the layer's in-place updates (``forward_t(x, True)``) reach the
    map, ``varmap.save`` writes them and ``varmap.load`` sets them, as in Candle, where they are Vars
    the optimizer never changes (an optimizer given ``varmap.all_vars()`` skips Buffers)."""
    if isinstance(v, Buffer):
        return v
    buf = Buffer._make(v._a, v.name)
    varmap = getattr(getattr(vb, "_backend", None), "varmap", None)
    data = varmap.data() if varmap is not None else None
    if data is not None and data.get(v.name) is v:
        data[v.name] = buf
    return buf


def batch_norm(num_features: int, config: BatchNormConfig | float, vb: Any) -> BatchNorm:
    """Params ``running_mean`` (zeros), ``running_var`` (ones), ``weight`` (ones), ``bias`` (zeros).

    The running statistics are ``Buffer``s: saved under ``prefix.running_mean`` / ``running_var`` but
    never trained.
    """
    if not isinstance(config, BatchNormConfig):
        if isinstance(config, (str, bytes)) or not hasattr(config, "__float__"):
            raise errors.ArgumentType(
                f"batch_norm: config must be a BatchNormConfig or an eps (a float), got {config!r}"
            )
        config = BatchNormConfig(eps=float_arg(config, "batch_norm", "eps"))
    _eps(config.eps, "batch-norm")
    if config.eps < 0:
        raise errors.InvalidArgument(f"batch-norm eps cannot be negative {config.eps}")
    rm = _stat_buffer(vb, vb.get_with_hints((num_features,), "running_mean", ZERO))
    rv = _stat_buffer(vb, vb.get_with_hints((num_features,), "running_var", ONE))
    w = b = None
    if config.affine:
        w = vb.get_with_hints((num_features,), "weight", ONE)
        b = vb.get_with_hints((num_features,), "bias", ZERO)
    return BatchNorm(num_features, rm, rv, w, b, config.eps, config.momentum, config.remove_mean)
