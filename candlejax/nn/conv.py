"""Convolutions: ``Conv1d``, ``Conv2d``, ``ConvTranspose1d``, ``ConvTranspose2d`` and their configs.

requires: candlejax.tensor (conv ops), candlejax.nn.module, candlejax.nn.init
provides: ``Conv1dConfig``, ``Conv2dConfig``, ``ConvTranspose1dConfig``, ``ConvTranspose2dConfig``,
``Conv1d``, ``Conv2d``, ``ConvTranspose1d``, ``ConvTranspose2d``, ``conv1d``, ``conv1d_no_bias``,
``conv2d``, ``conv2d_no_bias``, ``conv_transpose1d``, ``conv_transpose1d_no_bias``,
``conv_transpose2d``, ``conv_transpose2d_no_bias``, ``hwio_kernels``, ``with_hwio_kernels``,
``nhwc_kernel``, ``nhwc_kernel_layout``, ``with_nhwc_kernels``, ``IM2COL_MAX_POSITIONS``

Layouts follow Candle and PyTorch: input ``(B, C, L)`` / ``(B, C, H, W)``; conv weight
``(c_out, c_in/groups, k...)``; transposed-conv weight ``(c_in, c_out/groups, k...)``.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from candlejax import errors
from candlejax._dispatch import op
from candlejax._precision import f32_precision
from candlejax.dtype import to_dtype
from candlejax.nn.init import DEFAULT_KAIMING_NORMAL, Uniform
from candlejax.nn.linear import _as_param, _native_rows_linear, _use_native, _xla_linear, as_weight, check_param
from candlejax.nn.module import CallableConfig, LayerInputShape, Module, Var, as_array, layer_name
from candlejax.quantized import native
from candlejax.tensor import unwrap, wrap
from candlejax.tensor._core import int_arg
from candlejax.tensor.conv import conv2d_with_primal, conv_out_len, is_patch_conv, to_usize2

__all__ = [
    "IM2COL_MAX_POSITIONS",
    "Conv1d",
    "Conv1dConfig",
    "Conv2d",
    "Conv2dConfig",
    "ConvTranspose1d",
    "ConvTranspose1dConfig",
    "ConvTranspose2d",
    "ConvTranspose2dConfig",
    "conv1d",
    "conv1d_no_bias",
    "conv2d",
    "conv2d_no_bias",
    "conv_transpose1d",
    "conv_transpose1d_no_bias",
    "conv_transpose2d",
    "conv_transpose2d_no_bias",
    "hwio_kernels",
    "nhwc_kernel",
    "nhwc_kernel_layout",
    "with_hwio_kernels",
    "with_nhwc_kernels",
]


@dataclass(frozen=True)
class Conv1dConfig(CallableConfig):
    """Candle's fields; ``cudnn_fwd_algo`` (a cuDNN algorithm hint) is accepted and ignored: XLA
    chooses the convolution algorithm."""

    padding: int = 0
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    cudnn_fwd_algo: Any = None

    @staticmethod
    def default() -> Conv1dConfig:
        """Rust's ``Conv1dConfig::default()``: the field defaults."""
        return Conv1dConfig()


@dataclass(frozen=True)
class Conv2dConfig(CallableConfig):
    """Candle's fields; ``cudnn_fwd_algo`` (a cuDNN algorithm hint) is accepted and ignored: XLA
    chooses the convolution algorithm."""

    padding: int = 0
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    cudnn_fwd_algo: Any = None

    @staticmethod
    def default() -> Conv2dConfig:
        """Rust's ``Conv2dConfig::default()``: the field defaults."""
        return Conv2dConfig()


@dataclass(frozen=True)
class ConvTranspose1dConfig(CallableConfig):
    padding: int = 0
    output_padding: int = 0
    stride: int = 1
    dilation: int = 1
    groups: int = 1

    @staticmethod
    def default() -> ConvTranspose1dConfig:
        """Rust's ``ConvTranspose1dConfig::default()``: the field defaults."""
        return ConvTranspose1dConfig()


@dataclass(frozen=True)
class ConvTranspose2dConfig(CallableConfig):
    padding: int = 0
    output_padding: int = 0
    stride: int = 1
    dilation: int = 1
    groups: int = 1

    @staticmethod
    def default() -> ConvTranspose2dConfig:
        """Rust's ``ConvTranspose2dConfig::default()``: the field defaults."""
        return ConvTranspose2dConfig()


@op(static=("nd", "padding", "stride", "dilation", "groups"))
def _conv(x: Any, w: Any, b: Any, *, nd: int, padding: int | tuple[int, ...], stride: int | tuple[int, ...],
          dilation: int | tuple[int, ...], groups: int) -> Any:
    if nd == 2 and groups == 1:
        geometry = (to_usize2(padding, "padding", "conv2d", 0), to_usize2(stride, "stride", "conv2d", 1),
                    to_usize2(dilation, "dilation", "conv2d", 1))  # fmt: skip
        if _native_nchw_applies(x, w, *geometry):
            pad, st, dil = geometry
            native_grad = w.size <= NATIVE_KERNEL_GRAD_MAX_VALUES and native.conv_kernel_grad_available()
            grad = _native_kernel_grad_nchw if native_grad else None
            y = conv2d_with_primal(x, w, _native_conv_nchw, padding=pad, stride=st, dilation=dil, kernel_grad=grad)
            return y if b is None else y + b.reshape(1, -1, 1, 1)
    t = wrap(x)  # the Tensor op (one kernel for both APIs, with its fast depthwise path)
    conv = t.conv2d if nd == 2 else t.conv1d
    y = unwrap(conv(wrap(w), padding, stride, dilation, groups))
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * nd)
    return y


@op(static=("nd", "padding", "output_padding", "stride", "dilation", "groups"))
def _conv_transpose(
    x: Any, w: Any, b: Any, *, nd: int, padding: int, output_padding: int, stride: int, dilation: int, groups: int
) -> Any:
    # the Tensor op (one kernel for both APIs: it also has the fast stride == kernel path)
    t, k = wrap(x), wrap(w)
    conv = t.conv_transpose2d if nd == 2 else t.conv_transpose1d
    y = unwrap(conv(k, padding, output_padding, stride, dilation, groups))
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * nd)
    return y


class _ConvBase(Module):
    _nd = 1
    _transpose = False
    _kind = "Conv1d"

    def __init__(self, weight: Any, bias: Any, config: Any):
        self.weight = as_weight(weight, type(self).__name__)
        self.bias = _as_param(bias)
        self.config = _default_cfg(type(self), config)
        if self.weight.ndim != self._nd + 2:
            raise errors.UnexpectedNumberOfDims(self._nd + 2, self.weight.ndim, self.weight.shape, self._kind)
        w = self.weight.shape
        c_out = w[1] * int(getattr(self.config, "groups", 1)) if self._transpose else w[0]
        check_param(self._kind, self.weight, "bias (c_out,)", self.bias, (c_out,))

    @classmethod
    def new(cls, weight: Any, bias: Any, config: Any) -> Any:
        return cls(weight, bias, config)

    def extra_repr(self) -> str:
        c = self.config
        fields = {k: v for k, v in vars(c).items() if not (k == "cudnn_fwd_algo" and v is None)}
        return f"kernel={tuple(self.weight.shape[2:])}, " + ", ".join(f"{k}={v}" for k, v in fields.items())

    def _in_channels(self) -> int:
        w = self.weight
        return w.shape[0] if self._transpose else w.shape[1] * self.config.groups

    def _candle_input_error(self, shape: tuple[int, ...]) -> str:
        """The error Candle's ``conv1d`` / ``conv2d`` / ``conv_transpose*`` raises for this input."""
        w, n = tuple(self.weight.shape), self._nd + 2
        if len(shape) != n:
            return f"unexpected rank, expected: {n}, got: {len(shape)} ({errors.fmt_shape(shape)})"
        if self._transpose:
            return f"in_channel mismatch between input ({shape[1]}) and kernel ({w[0]})"
        c = self.config
        if self._nd == 1:
            return (
                "conv1d invalid args the number of in-channels on the input doesn't match the kernel size:"
                f" inp: {errors.fmt_shape(shape)}, k: {errors.fmt_shape(w)}, pad: {c.padding}, stride: {c.stride}"
            )
        return f"in_channel mismatch between input ({shape[1]}, groups {c.groups}) and kernel ({w[1]})"

    def _checked_input(self, xs: Any) -> Any:
        """``xs`` as an array, after checking its rank, channel count and dtype against the layer."""
        x = as_array(xs)
        w = self.weight._a
        cin = self._in_channels()
        if x.ndim != self._nd + 2 or x.shape[1] != cin:
            spatial = "L" if self._nd == 1 else "H, W"
            raise LayerInputShape(layer_name(self._kind, self.weight), f"[batch, {cin}, {spatial}]", x.shape,
                                  candle=self._candle_input_error(x.shape))  # fmt: skip
        if x.dtype != w.dtype:
            raise errors.DTypeMismatchBinaryOp(to_dtype(x.dtype), to_dtype(w.dtype), self._kind.lower())
        return x

    def forward(self, xs: Any) -> Any:
        x = self._checked_input(xs)
        w = self.weight._a
        b = None if self.bias is None else self.bias._a
        c = self.config
        if self._transpose:
            out = _conv_transpose(
                x, w, b, nd=self._nd, padding=c.padding, output_padding=c.output_padding, stride=c.stride,
                dilation=c.dilation, groups=c.groups,
            )  # fmt: skip
        else:
            out = _conv(x, w, b, nd=self._nd, padding=c.padding, stride=c.stride, dilation=c.dilation, groups=c.groups)
        return wrap(out)


class Conv1d(_ConvBase):
    """1-D convolution (``nn.Conv1d``): input ``(B, c_in, L)``, weight ``(c_out, c_in/groups, k)``."""

    _nd, _transpose, _kind = 1, False, "Conv1d"

    def __init__(self, weight: Any, bias: Any = None, config: Conv1dConfig | None = Conv1dConfig()):
        super().__init__(weight, bias, config)


class Conv2d(_ConvBase):
    """2-D convolution (``nn.Conv2d``): input ``(B, c_in, H, W)``, weight ``(c_out, c_in/groups, kh, kw)``."""

    _nd, _transpose, _kind = 2, False, "Conv2d"

    def __init__(self, weight: Any, bias: Any = None, config: Conv2dConfig | None = Conv2dConfig()):
        super().__init__(weight, bias, config)

    def forward_nhwc(self, xs: Any, kernel: Any = None, *, relu: bool = False) -> Any:
        """The same convolution on channels-last input: ``(B, H, W, c_in)`` -> ``(B, Ho, Wo, c_out)``
        (PyTorch: a module on ``torch.channels_last`` tensors). One group only. ``kernel``: the
        weight in the layout this input size reads (:func:`nhwc_kernel`), else the weight is
        transposed in the program. ``relu=True``: ``forward_nhwc(xs).relu()``, fused into the native
        convolution where it runs.

        For models that stay channels-last inside one compiled program (``resnet.forward_jit``):
        a 1x1 convolution is one product with the ``(c_out, c_in)`` weight; on XLA:CPU, maps of at
        most :data:`IM2COL_MAX_POSITIONS` output positions are one product over the stacked taps
        (im2col; a 3x3 over 7x7x512: 2.1 -> 1.4 ms), and products of at most
        :data:`NATIVE_CONV_MAX_ROWS` rows run in the native f32 product; more output rows run the
        native f32 convolution (OHWI kernel, taps read in place) in a one-device f32 process on an
        AVX-512 or AVX2 CPU, else XLA's convolution with an HWIO kernel."""
        x = as_array(xs)
        w = self.weight._a
        name = layer_name(self._kind, self.weight)
        if self.config.groups != 1:
            raise errors.Msg(f"{name}.forward_nhwc: grouped convolutions (groups={self.config.groups}) take NCHW "
                             "input: use forward")  # fmt: skip
        if x.ndim != 4 or x.shape[3] != w.shape[1]:
            raise LayerInputShape(name, f"[batch, H, W, {w.shape[1]}] (channels last)", x.shape)
        if x.dtype != w.dtype:
            raise errors.DTypeMismatchBinaryOp(to_dtype(x.dtype), to_dtype(w.dtype), self._kind.lower())
        pad, stride, dil = _conv_geometry(self.config)
        for n, k, p, st, d in zip(x.shape[1:3], w.shape[2:], pad, stride, dil, strict=True):
            if conv_out_len(n, k, p, st, d) <= 0:
                raise errors.Conv1dInvalidArgs(
                    f"the dilated kernel ({d * (k - 1) + 1}) is larger than the padded input ({n + 2 * p})", x.shape,
                    w.shape, pad, stride, op=f"{name}.forward_nhwc",
                )  # fmt: skip
        layout = nhwc_kernel_layout(self, x.shape[1:3])
        if kernel is not None:
            want = None if layout is None else tuple(w.shape[i] for i in _PERMS[layout])
            if tuple(kernel.shape) != want:
                raise errors.Msg(f"{name}.forward_nhwc: kernel {tuple(kernel.shape)} is not the {layout or 'no'} kernel"
                                 f" this input {tuple(x.shape)} reads (use nn.conv.nhwc_kernel(conv, "
                                 f"{tuple(x.shape[1:3])}))")  # fmt: skip
            kernel = as_array(kernel)
        elif layout is not None:
            kernel = jnp.transpose(w, _PERMS[layout])
        b = None if self.bias is None else self.bias._a
        return wrap(_conv2d_nhwc(x, w, kernel, b, pad=pad, stride=stride, dilation=dil, layout=layout, relu=relu))

    def absorb_bn(self, bn: Any) -> Conv2d:
        """Fold an inference ``BatchNorm`` that follows this conv into its weight and bias (Candle's name).

        ``w' = w * γ/√(var+ε)`` per output channel, ``b' = β + γ/√(var+ε) * (b − mean)``; the
        result equals ``bn(conv(x))`` with the running statistics. Vars keep the conv's names.
        """
        if bn.weight is None:
            raise errors.Msg("absorb_bn: batch norm does not have weight_and_bias (affine=False)")
        c_out = self.weight.shape[0]
        if bn.num_features != c_out:
            raise errors.Msg(f"absorb_bn: batch norm has {bn.num_features} features, the conv {c_out} output channels")
        w, rm, rv = self.weight._a, bn.running_mean._a, bn.running_var._a
        g, beta = bn.weight._a.astype(w.dtype), bn.bias._a.astype(w.dtype)
        std = g / jnp.sqrt(rv.astype(w.dtype) + bn.eps)
        b0 = jnp.zeros((c_out,), w.dtype) if self.bias is None else self.bias._a
        weight = w * std.reshape(c_out, 1, 1, 1)
        bias = beta + std * (b0 - rm.astype(w.dtype))
        wname = getattr(self.weight, "name", "")
        return Conv2d(Var._make(weight, wname), Var._make(bias, wname.rsplit(".", 1)[0] + ".bias" if wname else ""),
                      self.config)  # fmt: skip


#: channels-last convolutions (``Conv2d.forward_nhwc``) with at most this many output positions
#: per image run as one product over the stacked taps on XLA:CPU (a 3x3 over 7x7x512: 2.1 -> 1.4
#: ms); larger maps keep XLA's convolution (ResNet-50 whole, 14x14 maps too: batch 1 the same,
#: batch 32 1,298 -> 1,338 ms; 28x28x128 alone: 1.10 -> 1.52 ms)
IM2COL_MAX_POSITIONS = 64
#: ... and their products of at most this many rows (batch x positions) run in the native f32
#: product where ``nn.Linear`` would take it (ResNet-50's 7x7 stage at batch 1: 49 rows)
NATIVE_CONV_MAX_ROWS = 64
#: ``Conv2d.forward``'s native route takes its kernel gradient from the native library for kernels of
#: at most this many values (``O * C * kh * kw``: up to 64 -> 64 channels 3x3), where XLA's
#: convolutions over batch chunks (and their transposed copies) took 1.1-2.1x longer; wider layers
#: (128 -> 256 and up) were level or slower natively and keep XLA's
NATIVE_KERNEL_GRAD_MAX_VALUES = 64 * 64 * 9


def _native_conv_applies(dtype: Any) -> bool:
    """Whether an f32 channels-last convolution runs in the native library: exact f32 products (not
    ``set_gemm_reduced_precision_f32``), one-device CPU process, AVX-512 or AVX2 (a custom call has no
    sharding rule, so programs over several devices keep XLA's)."""
    return (dtype == jnp.float32 and f32_precision() == lax.Precision.HIGHEST and jax.device_count() == 1
            and native.conv_available())  # fmt: skip


def _native_nchw_applies(x: Any, w: Any, padding: tuple[int, int], stride: tuple[int, int],
                         dilation: tuple[int, int]) -> bool:  # fmt: skip
    """Whether ``Conv2d.forward`` (NCHW, one group) computes its value in the native convolution:
    f32 where :func:`_native_conv_applies`, a kernel of several taps (1x1 and patch convolutions
    keep the Tensor op's products) that fits, and more than :data:`NATIVE_CONV_MAX_ROWS` output
    positions over the batch."""
    kh, kw = w.shape[2:]
    if w.dtype != x.dtype or kh * kw == 1:
        return False
    if is_patch_conv((kh, kw), padding, stride, dilation, 1):
        return False
    ho, wo = (conv_out_len(n, k, p, s, d) for n, k, p, s, d in zip(x.shape[2:], (kh, kw), padding, stride, dilation))
    return ho > 0 and wo > 0 and x.shape[0] * ho * wo > NATIVE_CONV_MAX_ROWS and _native_conv_applies(x.dtype)


def _native_conv_nchw(x: Any, w: Any, padding: tuple[int, int], stride: tuple[int, int],
                      dilation: tuple[int, int]) -> Any:  # fmt: skip
    """``conv(x, w)`` of an NCHW ``x`` and OIHW ``w`` through the native channels-last convolution
    (transposed in and out: the digits CNN's 16 -> 32 3x3 over 8x8 at batch 256, 1.52 -> 1.09 ms)."""
    o, i, kh, kw = w.shape
    kernel = w.transpose(0, 2, 3, 1).reshape(o, kh * kw * i)
    y = native.f32_conv_nhwc(x.transpose(0, 2, 3, 1), kernel, (kh, kw), stride, dilation, padding,
                             jnp.zeros((0,), x.dtype), False)  # fmt: skip
    return y.transpose(0, 3, 1, 2)


def _native_kernel_grad_nchw(x: Any, dy: Any, kernel_hw: tuple[int, int], padding: tuple[int, int],
                             stride: tuple[int, int], dilation: tuple[int, int]) -> Any:  # fmt: skip
    """The OIHW kernel gradient of an NCHW convolution for the output gradient ``dy``, from the
    native channels-last kernel gradient (:func:`candlejax.quantized.native.f32_conv_kernel_grad_nhwc`;
    transposed in, XLA folds the transposes into their producers): the digits CNN's 16 -> 32 3x3
    over 8x8 at batch 256, ~0.75 ms on two cores, where XLA's convolutions over batch chunks took
    ~1.6 ms plus ~0.5-1 ms of transposes."""
    kh, kw = kernel_hw
    g = native.f32_conv_kernel_grad_nhwc(x.transpose(0, 2, 3, 1), dy.transpose(0, 2, 3, 1), kernel_hw, stride,
                                         dilation, padding)  # fmt: skip
    return g.reshape(g.shape[0], kh, kw, x.shape[1]).transpose(0, 3, 1, 2)


@partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5, 6, 7))
def _native_conv(x: Any, kernel: Any, bias: Any, kernel_hw: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int], padding: tuple[int, int], relu: bool) -> Any:  # fmt: skip
    """``relu?(conv(x, kernel) + bias)`` of an NHWC ``x`` with an ``(O, kh * kw * C)`` OHWI kernel in native
    code (:func:`candlejax.quantized.native.f32_conv_nhwc`: 56x56x64 3x3 1.43 -> 1.09 ms, 14x14x256
    1.10 -> 0.79 against XLA's convolution); ``bias`` ``(O,)`` or ``(0,)``. Derivatives: XLA's
    convolution (the tangent map below)."""
    return native.f32_conv_nhwc(x, kernel, kernel_hw, stride, dilation, padding, bias, relu)


def _xla_conv_ohwi(x: Any, kernel: Any, kernel_hw: tuple[int, int], stride: tuple[int, int],
                   dilation: tuple[int, int], padding: tuple[int, int]) -> Any:  # fmt: skip
    k4 = kernel.reshape(kernel.shape[0], *kernel_hw, x.shape[3])
    return lax.conv_general_dilated(x, k4, stride, [(p, p) for p in padding], rhs_dilation=dilation,
                                    dimension_numbers=("NHWC", "OHWI", "NHWC"),
                                    precision=lax.Precision.HIGHEST)  # fmt: skip


@_native_conv.defjvp
def _native_conv_jvp(kernel_hw: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
                     padding: tuple[int, int], relu: bool, primals: tuple[Any, Any, Any],
                     tangents: tuple[Any, Any, Any]) -> tuple[Any, Any]:  # fmt: skip
    (x, kernel, bias), (tx, tk, tb) = primals, tangents
    y = _native_conv(x, kernel, bias, kernel_hw, stride, dilation, padding, relu)
    geometry = (kernel_hw, stride, dilation, padding)
    ty = _xla_conv_ohwi(tx, kernel, *geometry) + _xla_conv_ohwi(x, tk, *geometry)
    if bias.shape[0]:
        ty = ty + tb
    return y, (jnp.where(y > 0, ty, 0) if relu else ty)


def _rows_product(x: Any, w: Any, prec: Any) -> Any:
    """``x (..., K) . w (N, K)``: the native few-row product where it applies, else XLA's."""
    if _use_native(x, w, prec, max_rows=NATIVE_CONV_MAX_ROWS):
        return _native_rows_linear(x, w)
    return _xla_linear(x, w, prec)


def _conv_geometry(cfg: Any) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """A 2D config's (padding, stride, dilation) as (h, w) pairs."""
    return (to_usize2(cfg.padding, "padding", "conv2d", 0), to_usize2(cfg.stride, "stride", "conv2d", 1),
            to_usize2(cfg.dilation, "dilation", "conv2d", 1))  # fmt: skip


@op(static=("pad", "stride", "dilation", "layout", "relu"))
def _conv2d_nhwc(x: Any, w: Any, kernel: Any, b: Any, *, pad: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int], layout: str | None, relu: bool = False) -> Any:  # fmt: skip
    o, i, kh, kw = w.shape
    prec = f32_precision() if x.dtype == jnp.float32 else None
    if layout is None:  # 1x1, no padding
        y = _rows_product(x[:, :: stride[0], :: stride[1], :], w.reshape(o, i), prec)
    elif layout == "OHWI":
        ho, wo = (conv_out_len(n, k, p, s, d) for n, k, p, s, d in zip(x.shape[1:3], (kh, kw), pad, stride, dilation))
        # few output rows: stacked taps and the few-row product below; more: the native convolution
        # (padding, bias and ReLU inside it)
        rows = x.shape[0] * ho * wo
        if rows > NATIVE_CONV_MAX_ROWS and _native_conv_applies(x.dtype):
            bias = jnp.zeros((0,), x.dtype) if b is None else b
            return _native_conv(x, kernel.reshape(o, kh * kw * i), bias, (kh, kw), stride, dilation, pad, relu)
        xp = jnp.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
        taps = [lax.slice(xp, (0, r * dilation[0], c * dilation[1], 0),
                          (x.shape[0], r * dilation[0] + stride[0] * (ho - 1) + 1,
                           c * dilation[1] + stride[1] * (wo - 1) + 1, i), (1, stride[0], stride[1], 1))
                for r in range(kh) for c in range(kw)]  # fmt: skip
        cols = jnp.concatenate(taps, axis=3)  # (B, ho, wo, kh*kw*c_in): each position's taps, as a kernel row
        y = _rows_product(cols, kernel.reshape(o, kh * kw * i), prec)
    else:
        y = lax.conv_general_dilated(x, kernel, stride, [(p, p) for p in pad], rhs_dilation=dilation,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=prec)  # fmt: skip
    y = y if b is None else y + b
    return jax.nn.relu(y) if relu else y


class ConvTranspose1d(_ConvBase):
    """1-D transposed convolution (``nn.ConvTranspose1d``): weight ``(c_in, c_out/groups, k)``."""

    _nd, _transpose, _kind = 1, True, "ConvTranspose1d"

    def __init__(self, weight: Any, bias: Any = None, config: ConvTranspose1dConfig | None = ConvTranspose1dConfig()):
        super().__init__(weight, bias, config)


class ConvTranspose2d(_ConvBase):
    """2-D transposed convolution (``nn.ConvTranspose2d``): weight ``(c_in, c_out/groups, kh, kw)``."""

    _nd, _transpose, _kind = 2, True, "ConvTranspose2d"

    def __init__(self, weight: Any, bias: Any = None, config: ConvTranspose2dConfig | None = ConvTranspose2dConfig()):
        super().__init__(weight, bias, config)


def _check_sizes(op_name: str, c_in: Any, c_out: Any, k: Any, transpose: bool) -> tuple[int, int, int]:
    """``(c_in, c_out, k)`` as ints (``NotAnInteger`` for a float, a bool or None). PyTorch refuses a
    non-positive kernel_size; the inits divide by the fan (``c_in`` for convolutions, ``c_out`` for
    transposed ones), which a zero size makes 0."""
    c_in, c_out = int_arg(c_in, op_name, "in_channels"), int_arg(c_out, op_name, "out_channels")
    k = int_arg(k, op_name, "kernel_size")
    fan = ("out_channels", c_out) if transpose else ("in_channels", c_in)
    if k < 1 or fan[1] < 1 or min(c_in, c_out) < 0:
        raise errors.Msg(f"{op_name}: kernel_size ({k}) and {fan[0]} ({fan[1]}) must be >= 1 (in_channels {c_in},"
                         f" out_channels {c_out})")  # fmt: skip
    return c_in, c_out, k


def _check_groups(c_in: int, c_out: int, groups: Any, op_name: str) -> None:
    groups = int_arg(groups, op_name, "groups")
    if groups < 1 or c_in % groups or c_out % groups:
        raise errors.Msg(f"{op_name}: groups ({groups}) must divide in_channels ({c_in}) and out_channels ({c_out})")


def _default_cfg(cls: type, cfg: Any) -> Any:
    """``None`` is Candle's ``Default::default()`` config (stride 1, no padding, ...)."""
    base = next(c for c in cls.__mro__ if c in (Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d))
    config_cls = {Conv1d: Conv1dConfig, Conv2d: Conv2dConfig, ConvTranspose1d: ConvTranspose1dConfig,
                  ConvTranspose2d: ConvTranspose2dConfig}[base]  # fmt: skip
    if cfg is None:
        return config_cls()
    if not isinstance(cfg, CallableConfig):
        raise errors.ArgumentType(
            f"{cls.__name__}: config must be a {config_cls.__name__} (or None for the default), got"
            f" {type(cfg).__name__}"
        )
    return cfg


def _conv_factory(cls: type, nd: int, c_in: int, c_out: int, k: int, cfg: Any, vb: Any, bias: bool) -> Any:
    cfg = _default_cfg(cls, cfg)
    c_in, c_out, k = _check_sizes(cls.__name__, c_in, c_out, k, False)
    _check_groups(c_in, c_out, cfg.groups, cls.__name__)
    ws = vb.get_with_hints((c_out, c_in // cfg.groups) + (k,) * nd, "weight", DEFAULT_KAIMING_NORMAL)
    bs = None
    if bias:
        bound = 1.0 / math.sqrt(c_in)
        bs = vb.get_with_hints((c_out,), "bias", Uniform(-bound, bound))
    return cls(ws, bs, cfg)


def _convt_factory(cls: type, nd: int, c_in: int, c_out: int, k: int, cfg: Any, vb: Any, bias: bool) -> Any:
    cfg = _default_cfg(cls, cfg)
    c_in, c_out, k = _check_sizes(cls.__name__, c_in, c_out, k, True)
    _check_groups(c_in, c_out, cfg.groups, cls.__name__)
    bound = 1.0 / math.sqrt(c_out * k) if nd == 1 else 1.0 / math.sqrt(c_out) / k
    init = Uniform(-bound, bound)
    ws = vb.get_with_hints((c_in, c_out // cfg.groups) + (k,) * nd, "weight", init)
    bs = vb.get_with_hints((c_out,), "bias", init) if bias else None
    return cls(ws, bs, cfg)


def conv1d(in_channels: int, out_channels: int, kernel_size: int, cfg: Conv1dConfig | None, vb: Any) -> Conv1d:
    """``weight`` Kaiming-normal, ``bias`` U(±1/√in_channels) (Candle's init)."""
    return _conv_factory(Conv1d, 1, in_channels, out_channels, kernel_size, cfg, vb, True)


def conv1d_no_bias(in_channels: int, out_channels: int, kernel_size: int, cfg: Conv1dConfig | None, vb: Any) -> Conv1d:
    """Candle's ``candle_nn::conv1d_no_bias``: a ``Conv1d`` without bias, its ``weight`` read from ``vb``."""
    return _conv_factory(Conv1d, 1, in_channels, out_channels, kernel_size, cfg, vb, False)


def conv2d(in_channels: int, out_channels: int, kernel_size: int, cfg: Conv2dConfig | None, vb: Any) -> Conv2d:
    """Square kernel ``(c_out, c_in/groups, k, k)``; init as ``conv1d``."""
    return _conv_factory(Conv2d, 2, in_channels, out_channels, kernel_size, cfg, vb, True)


def conv2d_no_bias(in_channels: int, out_channels: int, kernel_size: int, cfg: Conv2dConfig | None, vb: Any) -> Conv2d:
    """Candle's ``candle_nn::conv2d_no_bias``: a ``Conv2d`` without bias, its ``weight`` read from ``vb``."""
    return _conv_factory(Conv2d, 2, in_channels, out_channels, kernel_size, cfg, vb, False)


def conv_transpose1d(
    in_channels: int, out_channels: int, kernel_size: int, cfg: ConvTranspose1dConfig | None, vb: Any
) -> ConvTranspose1d:
    """Weight ``(c_in, c_out/groups, k)`` and bias U(±1/√(c_out·k)) (Candle's init)."""
    return _convt_factory(ConvTranspose1d, 1, in_channels, out_channels, kernel_size, cfg, vb, True)


def conv_transpose1d_no_bias(
    in_channels: int, out_channels: int, kernel_size: int, cfg: ConvTranspose1dConfig | None, vb: Any
) -> ConvTranspose1d:
    """Candle's ``candle_nn::conv_transpose1d_no_bias``: a ``ConvTranspose1d`` without bias, from ``vb``."""
    return _convt_factory(ConvTranspose1d, 1, in_channels, out_channels, kernel_size, cfg, vb, False)


def conv_transpose2d(
    in_channels: int, out_channels: int, kernel_size: int, cfg: ConvTranspose2dConfig | None, vb: Any
) -> ConvTranspose2d:
    """Weight ``(c_in, c_out/groups, k, k)`` and bias U(±1/(√c_out·k)) (Candle's init)."""
    return _convt_factory(ConvTranspose2d, 2, in_channels, out_channels, kernel_size, cfg, vb, True)


def conv_transpose2d_no_bias(
    in_channels: int, out_channels: int, kernel_size: int, cfg: ConvTranspose2dConfig | None, vb: Any
) -> ConvTranspose2d:
    """Candle's ``candle_nn::conv_transpose2d_no_bias``: a ``ConvTranspose2d`` without bias, from ``vb``."""
    return _convt_factory(ConvTranspose2d, 2, in_channels, out_channels, kernel_size, cfg, vb, False)


# --- kernels in the convolution's own layout (inference) --------------------------------------------
_HWIO_PERM, _OHWI_PERM = (2, 3, 1, 0), (0, 2, 3, 1)
_PERMS = {"HWIO": _HWIO_PERM, "OHWI": _OHWI_PERM}
_KERNELS: dict[tuple[int, tuple[int, ...]], tuple[Any, Any]] = {}  # (id(OIHW array), perm) -> (weak ref, copy)


def _hwio_eligible(m: Any) -> bool:
    # the convolutions that run XLA's own kernel (1x1, depthwise and patch ones take other paths)
    if not (isinstance(m, Conv2d) and m.config.groups == 1 and math.prod(m.weight.shape[2:]) > 1):
        return False
    pad, st, dil = _conv_geometry(m.config)
    return not is_patch_conv(tuple(m.weight.shape[2:]), pad, st, dil, m.config.groups)


def _conv2ds(module: Any) -> list[Any]:
    return [m for m in jax.tree_util.tree_leaves(module, is_leaf=lambda m: isinstance(m, Conv2d))
            if isinstance(m, Conv2d)]  # fmt: skip


def _kernel_copy(a: Any, perm: tuple[int, ...]) -> Any:
    """``a`` permuted by ``perm``, made once per array and kept while the array lives (new weights
    get new copies); inside a transformation, permuted in the program."""
    if isinstance(a, jax.core.Tracer):
        return jnp.transpose(a, perm)
    key = (id(a), perm)
    hit = _KERNELS.get(key)
    if hit is None or hit[0]() is not a:
        hit = (weakref.ref(a), jnp.transpose(a, perm).block_until_ready())
        _KERNELS[key] = hit
        weakref.finalize(a, _KERNELS.pop, key, None)
    return hit[1]


def hwio_kernels(module: Any) -> list[Any]:
    """The kernels of ``module``'s ``Conv2d`` layers (pytree order) in ``(kh, kw, c_in, c_out)``
    layout, for :func:`with_hwio_kernels`; ``None`` for 1x1, grouped and depthwise convolutions.

    XLA:CPU's convolution reads HWIO kernels: handed the Candle/PyTorch ``(c_out, c_in, kh, kw)``
    weights, a compiled forward transposes every kernel on every call (27 of ResNet-50's 86 ms at
    batch 1). Each copy is made once per weight array and kept while that array lives, so new
    weights (a loaded checkpoint, a training step) get new copies. Inference only: the copies
    double the convolutions' weight memory. PyTorch: oneDNN's weight prepacking."""
    return [_kernel_copy(m.weight._a, _HWIO_PERM) if _hwio_eligible(m) else None for m in _conv2ds(module)]


def nhwc_kernel_layout(conv: Conv2d, in_hw: tuple[int, int]) -> str | None:
    """The kernel layout :meth:`Conv2d.forward_nhwc` reads for ``(H, W)`` inputs: ``"OHWI"`` where
    it runs a product over stacked taps or the native convolution, ``"HWIO"`` where XLA's
    convolution, ``None`` for a 1x1 convolution without padding (a product with the weight as it is)."""
    w, cfg = conv.weight, conv.config
    pad, stride, dil = _conv_geometry(cfg)
    if w.shape[2] == w.shape[3] == 1 and not any(pad):
        return None
    ho, wo = (conv_out_len(n, k, p, s, d) for n, k, p, s, d in zip(in_hw, w.shape[2:], pad, stride, dil, strict=True))
    cpu = jax.default_backend() == "cpu"
    return "OHWI" if cpu and (ho * wo <= IM2COL_MAX_POSITIONS or _native_conv_applies(w._a.dtype)) else "HWIO"


def nhwc_kernel(conv: Conv2d, in_hw: tuple[int, int]) -> Any:
    """``conv``'s weight in the layout :meth:`Conv2d.forward_nhwc` reads for ``(H, W)`` inputs
    (:func:`nhwc_kernel_layout`), or ``None`` where it reads the weight itself. Made once per
    weight array and layout, kept while the array lives (as :func:`hwio_kernels`), so a compiled
    forward gets it as an argument instead of transposing the weight on every call."""
    layout = nhwc_kernel_layout(conv, in_hw)
    return None if layout is None else _kernel_copy(conv.weight._a, _PERMS[layout])


class _HwioConv2d(Module):
    """A ``Conv2d`` whose kernel is handed in HWIO layout (inside a compiled inference forward)."""

    def __init__(self, conv: Conv2d, kernel: Any):
        self.conv, self.kernel = conv, kernel

    def forward(self, xs: Any) -> Any:
        c = self.conv
        x = c._checked_input(xs)
        pad, stride, dil = _conv_geometry(c.config)  # ints as in Candle, or (h, w) pairs as conv2d takes
        y = lax.conv_general_dilated(x, self.kernel, window_strides=stride, padding=[(v, v) for v in pad],
                                     rhs_dilation=dil, dimension_numbers=("NCHW", "HWIO", "NCHW"))  # fmt: skip
        if c.bias is not None:
            y = y + c.bias._a.reshape(1, -1, 1, 1)
        return wrap(y)


class _NhwcConv2d(Module):
    """A ``Conv2d`` with its kernel handed in (:func:`nhwc_kernel`); it runs channels-last."""

    def __init__(self, conv: Conv2d, kernel: Any):
        self.conv, self.kernel = conv, kernel

    def forward(self, xs: Any) -> Any:
        raise errors.Msg(f"{layer_name('Conv2d', self.conv.weight)}: with_nhwc_kernels gives channels-last layers: "
                         "call forward_nhwc on (B, H, W, C) input")  # fmt: skip

    def forward_nhwc(self, xs: Any, *, relu: bool = False) -> Any:
        return self.conv.forward_nhwc(xs, self.kernel, relu=relu)


def _with_kernels(fn: str, module: Any, kernels: list[Any], perms: tuple[tuple[int, ...], ...], cls: type) -> Any:
    it = iter(kernels)
    src = fn.replace("with_", "")

    def swap(m: Any) -> Any:
        if not isinstance(m, Conv2d):
            return m
        try:
            k = next(it)
        except StopIteration:
            raise errors.Msg(f"{fn}: fewer kernels than Conv2d layers (use {src}(module))") from None
        if k is None:
            return m
        if all(tuple(k.shape) != tuple(m.weight.shape[i] for i in perm) for perm in perms):
            raise errors.Msg(f"{fn}: kernel {tuple(k.shape)} does not fit {layer_name('Conv2d', m.weight)}"
                             f" {tuple(m.weight.shape)}")  # fmt: skip
        return cls(m, unwrap(k))

    out = jax.tree_util.tree_map(swap, module, is_leaf=lambda m: isinstance(m, Conv2d))
    if next(it, _END) is not _END:
        raise errors.Msg(f"{fn}: more kernels than Conv2d layers (use {src}(module))")
    return out


def with_hwio_kernels(module: Any, kernels: list[Any]) -> Any:
    """``module`` with each ``Conv2d`` that has a kernel in ``kernels`` (from :func:`hwio_kernels`)
    reading it instead of its weight; same outputs. Call it inside the compiled function, with the
    kernels passed in as arguments::

        fwd = jax.jit(lambda net, ks, x: with_hwio_kernels(net, ks).forward(x))
        logits = fwd(net, hwio_kernels(net), x)
    """
    return _with_kernels("with_hwio_kernels", module, kernels, (_HWIO_PERM,), _HwioConv2d)


def with_nhwc_kernels(module: Any, kernels: list[Any]) -> Any:
    """``module`` with each ``Conv2d`` that has a kernel in ``kernels`` (one per ``Conv2d`` in
    pytree order, each from :func:`nhwc_kernel` or ``None``) reading it in ``forward_nhwc``. For
    channels-last models compiled as one program (``resnet.forward_jit``)::

        fwd = jax.jit(lambda net, ks, x: with_nhwc_kernels(net, ks).forward_nhwc(x))
    """
    return _with_kernels("with_nhwc_kernels", module, kernels, (_HWIO_PERM, _OHWI_PERM), _NhwcConv2d)


_END = object()
