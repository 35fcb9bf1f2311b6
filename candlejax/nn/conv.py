"""Convolutions: ``Conv1d``, ``Conv2d``, ``ConvTranspose1d``, ``ConvTranspose2d`` and their configs.

requires: candlejax.tensor (conv ops), candlejax.nn.module, candlejax.nn.init
provides: ``Conv1dConfig``, ``Conv2dConfig``, ``ConvTranspose1dConfig``, ``ConvTranspose2dConfig``,
``Conv1d``, ``Conv2d``, ``ConvTranspose1d``, ``ConvTranspose2d``, ``conv1d``, ``conv1d_no_bias``,
``conv2d``, ``conv2d_no_bias``, ``conv_transpose1d``, ``conv_transpose1d_no_bias``,
``conv_transpose2d``, ``conv_transpose2d_no_bias``, ``hwio_kernels``, ``with_hwio_kernels``

Layouts follow Candle and PyTorch: input ``(B, C, L)`` / ``(B, C, H, W)``; conv weight
``(c_out, c_in/groups, k...)``; transposed-conv weight ``(c_in, c_out/groups, k...)``.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from candlejax import errors
from candlejax._dispatch import op
from candlejax.dtype import to_dtype
from candlejax.nn.init import DEFAULT_KAIMING_NORMAL, Uniform
from candlejax.nn.linear import _as_param
from candlejax.nn.module import LayerInputShape, Module, Var, as_array, layer_name
from candlejax.tensor import unwrap, wrap
from candlejax.tensor.conv import is_patch_conv, to_usize2

__all__ = [
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
    "with_hwio_kernels",
]


@dataclass(frozen=True)
class Conv1dConfig:
    padding: int = 0
    stride: int = 1
    dilation: int = 1
    groups: int = 1


@dataclass(frozen=True)
class Conv2dConfig:
    padding: int = 0
    stride: int = 1
    dilation: int = 1
    groups: int = 1


@dataclass(frozen=True)
class ConvTranspose1dConfig:
    padding: int = 0
    output_padding: int = 0
    stride: int = 1
    dilation: int = 1
    groups: int = 1


@dataclass(frozen=True)
class ConvTranspose2dConfig:
    padding: int = 0
    output_padding: int = 0
    stride: int = 1
    dilation: int = 1
    groups: int = 1




@op(static=("nd", "padding", "stride", "dilation", "groups"))
def _conv(x: Any, w: Any, b: Any, *, nd: int, padding: int, stride: int, dilation: int, groups: int) -> Any:
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
        self.weight = _as_param(weight)
        self.bias = _as_param(bias)
        self.config = _default_cfg(type(self), config)
        if self.weight.ndim != self._nd + 2:
            raise errors.UnexpectedNumberOfDims(self._nd + 2, self.weight.ndim, self.weight.shape, self._kind)

    @classmethod
    def new(cls, weight: Any, bias: Any, config: Any) -> Any:
        return cls(weight, bias, config)

    def extra_repr(self) -> str:
        c = self.config
        return f"kernel={tuple(self.weight.shape[2:])}, " + ", ".join(f"{k}={v}" for k, v in vars(c).items())

    def _in_channels(self) -> int:
        w = self.weight
        return w.shape[0] if self._transpose else w.shape[1] * self.config.groups

    def _checked_input(self, xs: Any) -> Any:
        """``xs`` as an array, after checking its rank, channel count and dtype against the layer."""
        x = as_array(xs)
        w = self.weight._a
        cin = self._in_channels()
        if x.ndim != self._nd + 2 or x.shape[1] != cin:
            spatial = "L" if self._nd == 1 else "H, W"
            raise LayerInputShape(layer_name(self._kind, self.weight), f"[batch, {cin}, {spatial}]", x.shape)
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

    def __init__(self, weight: Any, bias: Any = None, config: Conv1dConfig = Conv1dConfig()):
        super().__init__(weight, bias, config)


class Conv2d(_ConvBase):
    """2-D convolution (``nn.Conv2d``): input ``(B, c_in, H, W)``, weight ``(c_out, c_in/groups, kh, kw)``."""

    _nd, _transpose, _kind = 2, False, "Conv2d"

    def __init__(self, weight: Any, bias: Any = None, config: Conv2dConfig = Conv2dConfig()):
        super().__init__(weight, bias, config)

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


class ConvTranspose1d(_ConvBase):
    """1-D transposed convolution (``nn.ConvTranspose1d``): weight ``(c_in, c_out/groups, k)``."""

    _nd, _transpose, _kind = 1, True, "ConvTranspose1d"

    def __init__(self, weight: Any, bias: Any = None, config: ConvTranspose1dConfig = ConvTranspose1dConfig()):
        super().__init__(weight, bias, config)


class ConvTranspose2d(_ConvBase):
    """2-D transposed convolution (``nn.ConvTranspose2d``): weight ``(c_in, c_out/groups, kh, kw)``."""

    _nd, _transpose, _kind = 2, True, "ConvTranspose2d"

    def __init__(self, weight: Any, bias: Any = None, config: ConvTranspose2dConfig = ConvTranspose2dConfig()):
        super().__init__(weight, bias, config)


def _check_groups(c_in: int, c_out: int, groups: int, op_name: str) -> None:
    if groups < 1 or c_in % groups or c_out % groups:
        raise errors.Msg(f"{op_name}: groups ({groups}) must divide in_channels ({c_in}) and out_channels ({c_out})")


def _default_cfg(cls: type, cfg: Any) -> Any:
    """``None`` is Candle's ``Default::default()`` config (stride 1, no padding, ...)."""
    if cfg is not None:
        return cfg
    cls = next(c for c in cls.__mro__ if c in (Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d))
    return {Conv1d: Conv1dConfig, Conv2d: Conv2dConfig, ConvTranspose1d: ConvTranspose1dConfig,
            ConvTranspose2d: ConvTranspose2dConfig}[cls]()  # fmt: skip


def _conv_factory(cls: type, nd: int, c_in: int, c_out: int, k: int, cfg: Any, vb: Any, bias: bool) -> Any:
    cfg = _default_cfg(cls, cfg)
    _check_groups(c_in, c_out, cfg.groups, cls.__name__)
    ws = vb.get_with_hints((c_out, c_in // cfg.groups) + (k,) * nd, "weight", DEFAULT_KAIMING_NORMAL)
    bs = None
    if bias:
        bound = 1.0 / math.sqrt(c_in)
        bs = vb.get_with_hints((c_out,), "bias", Uniform(-bound, bound))
    return cls(ws, bs, cfg)


def _convt_factory(cls: type, nd: int, c_in: int, c_out: int, k: int, cfg: Any, vb: Any, bias: bool) -> Any:
    cfg = _default_cfg(cls, cfg)
    _check_groups(c_in, c_out, cfg.groups, cls.__name__)
    bound = 1.0 / math.sqrt(c_out * k) if nd == 1 else 1.0 / math.sqrt(c_out) / k
    init = Uniform(-bound, bound)
    ws = vb.get_with_hints((c_in, c_out // cfg.groups) + (k,) * nd, "weight", init)
    bs = vb.get_with_hints((c_out,), "bias", init) if bias else None
    return cls(ws, bs, cfg)


def conv1d(in_channels: int, out_channels: int, kernel_size: int, cfg: Conv1dConfig, vb: Any) -> Conv1d:
    """``weight`` Kaiming-normal, ``bias`` U(±1/√in_channels) (Candle's init)."""
    return _conv_factory(Conv1d, 1, in_channels, out_channels, kernel_size, cfg, vb, True)


def conv1d_no_bias(in_channels: int, out_channels: int, kernel_size: int, cfg: Conv1dConfig, vb: Any) -> Conv1d:
    return _conv_factory(Conv1d, 1, in_channels, out_channels, kernel_size, cfg, vb, False)


def conv2d(in_channels: int, out_channels: int, kernel_size: int, cfg: Conv2dConfig, vb: Any) -> Conv2d:
    """Square kernel ``(c_out, c_in/groups, k, k)``; init as ``conv1d``."""
    return _conv_factory(Conv2d, 2, in_channels, out_channels, kernel_size, cfg, vb, True)


def conv2d_no_bias(in_channels: int, out_channels: int, kernel_size: int, cfg: Conv2dConfig, vb: Any) -> Conv2d:
    return _conv_factory(Conv2d, 2, in_channels, out_channels, kernel_size, cfg, vb, False)


def conv_transpose1d(
    in_channels: int, out_channels: int, kernel_size: int, cfg: ConvTranspose1dConfig, vb: Any
) -> ConvTranspose1d:
    """Weight ``(c_in, c_out/groups, k)`` and bias U(±1/√(c_out·k)) (Candle's init)."""
    return _convt_factory(ConvTranspose1d, 1, in_channels, out_channels, kernel_size, cfg, vb, True)


def conv_transpose1d_no_bias(
    in_channels: int, out_channels: int, kernel_size: int, cfg: ConvTranspose1dConfig, vb: Any
) -> ConvTranspose1d:
    return _convt_factory(ConvTranspose1d, 1, in_channels, out_channels, kernel_size, cfg, vb, False)


def conv_transpose2d(
    in_channels: int, out_channels: int, kernel_size: int, cfg: ConvTranspose2dConfig, vb: Any
) -> ConvTranspose2d:
    """Weight ``(c_in, c_out/groups, k, k)`` and bias U(±1/(√c_out·k)) (Candle's init)."""
    return _convt_factory(ConvTranspose2d, 2, in_channels, out_channels, kernel_size, cfg, vb, True)


def conv_transpose2d_no_bias(
    in_channels: int, out_channels: int, kernel_size: int, cfg: ConvTranspose2dConfig, vb: Any
) -> ConvTranspose2d:
    return _convt_factory(ConvTranspose2d, 2, in_channels, out_channels, kernel_size, cfg, vb, False)


# --- kernels in the convolution's own layout (inference) --------------------------------------------
_HWIO: dict[int, tuple[Any, Any]] = {}  # id(OIHW array) -> (weak ref to it, its HWIO copy)


def _hwio_eligible(m: Any) -> bool:
    # the convolutions that run XLA's own kernel (1x1, depthwise and patch ones take other paths)
    if not (isinstance(m, Conv2d) and m.config.groups == 1 and math.prod(m.weight.shape[2:]) > 1):
        return False
    cfg = m.config
    pad, st, dil = (to_usize2(v, n, "conv2d", d) for v, n, d in ((cfg.padding, "padding", 0), (cfg.stride, "stride", 1),
                                                                 (cfg.dilation, "dilation", 1)))  # fmt: skip
    return not is_patch_conv(tuple(m.weight.shape[2:]), pad, st, dil, cfg.groups)


def _conv2ds(module: Any) -> list[Any]:
    return [m for m in jax.tree_util.tree_leaves(module, is_leaf=lambda m: isinstance(m, Conv2d))
            if isinstance(m, Conv2d)]  # fmt: skip


def hwio_kernels(module: Any) -> list[Any]:
    """The kernels of ``module``'s ``Conv2d`` layers (pytree order) in ``(kh, kw, c_in, c_out)``
    layout, for :func:`with_hwio_kernels`; ``None`` for 1x1, grouped and depthwise convolutions.

    XLA:CPU's convolution reads HWIO kernels: handed the Candle/PyTorch ``(c_out, c_in, kh, kw)``
    weights, a compiled forward transposes every kernel on every call (27 of ResNet-50's 86 ms at
    batch 1). Each copy is made once per weight array and kept while that array lives, so new
    weights (a loaded checkpoint, a training step) get new copies. Inference only: the copies
    double the convolutions' weight memory. PyTorch: oneDNN's weight prepacking."""
    out = []
    for m in _conv2ds(module):
        if not _hwio_eligible(m):
            out.append(None)
            continue
        a = m.weight._a
        if isinstance(a, jax.core.Tracer):  # called inside a transformation: transposed in the program
            out.append(jnp.transpose(a, (2, 3, 1, 0)))
            continue
        hit = _HWIO.get(id(a))
        if hit is None or hit[0]() is not a:
            hit = (weakref.ref(a), jnp.transpose(a, (2, 3, 1, 0)).block_until_ready())
            _HWIO[id(a)] = hit
            weakref.finalize(a, _HWIO.pop, id(a), None)
        out.append(hit[1])
    return out


class _HwioConv2d(Module):
    """A ``Conv2d`` whose kernel is handed in HWIO layout (inside a compiled inference forward)."""

    def __init__(self, conv: Conv2d, kernel: Any):
        self.conv, self.kernel = conv, kernel

    def forward(self, xs: Any) -> Any:
        c = self.conv
        x = c._checked_input(xs)
        cfg = c.config
        p = to_usize2(cfg.padding, "padding", "conv2d", 0)  # ints as in Candle, or (h, w) pairs as conv2d takes
        y = lax.conv_general_dilated(
            x, self.kernel, window_strides=to_usize2(cfg.stride, "stride", "conv2d", 1), padding=[(v, v) for v in p],
            rhs_dilation=to_usize2(cfg.dilation, "dilation", "conv2d", 1), dimension_numbers=("NCHW", "HWIO", "NCHW"),
        )  # fmt: skip
        if c.bias is not None:
            y = y + c.bias._a.reshape(1, -1, 1, 1)
        return wrap(y)


def with_hwio_kernels(module: Any, kernels: list[Any]) -> Any:
    """``module`` with each ``Conv2d`` that has a kernel in ``kernels`` (from :func:`hwio_kernels`)
    reading it instead of its weight; same outputs. Call it inside the compiled function, with the
    kernels passed in as arguments::

        fwd = jax.jit(lambda net, ks, x: with_hwio_kernels(net, ks).forward(x))
        logits = fwd(net, hwio_kernels(net), x)
    """
    it = iter(kernels)

    def swap(m: Any) -> Any:
        if not isinstance(m, Conv2d):
            return m
        try:
            k = next(it)
        except StopIteration:
            raise errors.Msg("with_hwio_kernels: fewer kernels than Conv2d layers (use hwio_kernels(module))") from None
        if k is None:
            return m
        if tuple(k.shape) != tuple(m.weight.shape[i] for i in (2, 3, 1, 0)):
            raise errors.Msg(f"with_hwio_kernels: kernel {tuple(k.shape)} does not fit {layer_name('Conv2d', m.weight)}"
                             f" {tuple(m.weight.shape)}")  # fmt: skip
        return _HwioConv2d(m, unwrap(k))

    out = jax.tree_util.tree_map(swap, module, is_leaf=lambda m: isinstance(m, Conv2d))
    if next(it, _END) is not _END:
        raise errors.Msg("with_hwio_kernels: more kernels than Conv2d layers (use hwio_kernels(module))")
    return out


_END = object()
