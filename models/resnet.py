"""ResNet 18/34/50/101/152 (~ candle-transformers' ``models::resnet``).

Paper: He et al., "Deep Residual Learning for Image Recognition", https://arxiv.org/abs/1512.03385
(v1.5: the stride of a bottleneck sits on its 3x3 conv). Weight names are torchvision's and timm's
(``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ``fc``); a Hugging Face
``ResNetForImageClassification`` checkpoint loads through :func:`hf_to_torchvision`::

    vb = VarBuilder.from_mmaped_safetensors(["resnet50.safetensors"], DType.F32, Device.Cpu)
    net = resnet50(1000, vb)                                      # Candle: resnet::resnet50(Some(1000), vb)
    net = resnet50(1000, vb.rename_f(hf_to_torchvision))          # transformers' names
    logits = net.forward(x)                                       # (B, 3, H, W) f32 -> (B, 1000)

``nclasses=None`` returns the pooled features ``(B, C)``. BatchNorm is folded into the convolutions
(``Conv2d.absorb_bn``) by default (a folded model saves, and loads again, convs with biases and no
norms); ``fold_bn=False`` keeps it, so ``forward_t(x, train=True)``
normalises with batch statistics and the model can be fine-tuned with ``backward_step`` (which
updates the running statistics, as Candle's). :func:`load` reads a safetensors file with either naming
and the depth read from the names. :func:`forward_jit` is the compiled inference forward, channels-last
inside, with the convolution kernels handed in the layouts its products read. Shell:
``python -m candlejax.models.resnet classify IMG --weights FILE`` (= ``candlejax classify``).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from candlejax import errors
from candlejax.dtype import DType
from candlejax.nn import (
    BatchNorm,
    Conv2d,
    Conv2dConfig,
    Linear,
    ModuleT,
    VarBuilder,
    batch_norm,
    conv2d,
    conv2d_no_bias,
    linear,
)
from candlejax.nn.conv import nhwc_kernel, with_nhwc_kernels
from candlejax.tensor import unwrap, wrap
from candlejax.tensor.conv import conv_out_len
from candlejax.xla import XLA_CONVOLUTION_OPTIONS, OptionsJit

__all__ = [
    "BasicBlock", "Bottleneck", "ConvBn", "DEPTHS", "ResNet", "forward_jit", "hf_to_torchvision", "load", "resnet18",
    "resnet34", "resnet50", "resnet101", "resnet152", "resnet18_no_final_layer", "resnet34_no_final_layer",
    "resnet50_no_final_layer", "resnet101_no_final_layer", "resnet152_no_final_layer",
]  # fmt: skip


class ConvBn(ModuleT):
    """``conv`` (no bias) then ``bn``; with ``bn=None`` the norm is already folded into ``conv``."""

    def __init__(self, conv: Conv2d, bn: BatchNorm | None = None):
        self.conv = conv
        self.bn = bn

    @staticmethod
    def load(c_in: int, c_out: int, k: int, stride: int, vb_conv: Any, vb_bn: Any, fold: bool) -> ConvBn:
        """A bias-free convolution and its batch norm; with ``fold``, a checkpoint whose batch norm is folded into
        the conv."""
        cfg = Conv2dConfig(padding=k // 2, stride=stride)
        if fold and vb_conv.contains_tensor("bias") and not vb_bn.contains_tensor("weight"):
            return ConvBn(conv2d(c_in, c_out, k, cfg, vb_conv))  # saved already folded (a folded model's file)
        conv = conv2d_no_bias(c_in, c_out, k, cfg, vb_conv)
        bn = batch_norm(c_out, 1e-5, vb_bn)
        return ConvBn(conv.absorb_bn(bn)) if fold else ConvBn(conv, bn)

    def forward_t(self, xs: Any, train: bool) -> Any:
        """``bn(conv(xs))``: ``(B, C_in, H, W)`` in, ``(B, C_out, H', W')`` out."""
        ys = self.conv.forward(xs)
        return ys if self.bn is None else self.bn.forward_t(ys, train)

    def forward_nhwc(self, xs: Any, *, relu: bool = False) -> Any:
        """Inference on channels-last ``(B, H, W, C)`` input (``Conv2d.forward_nhwc``); ``relu=True``
        applies ReLU after it (inside the convolution where BatchNorm is folded)."""
        if self.bn is None:
            return self.conv.forward_nhwc(xs, relu=relu)
        bn = self.bn  # BatchNorm over the last axis, with the running statistics
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        ys = self.conv.forward_nhwc(xs).broadcast_sub(bn.running_mean).broadcast_mul(scale).broadcast_add(bn.bias)
        return ys.relu() if relu else ys


def _downsample(c_in: int, c_out: int, stride: int, vb: Any, fold: bool) -> ConvBn | None:
    if stride == 1 and c_in == c_out:
        return None
    return ConvBn.load(c_in, c_out, 1, stride, vb.pp(0), vb.pp(1), fold)


class BasicBlock(ModuleT):
    """Two 3x3 convs and a shortcut (ResNet-18/34); output channels ``c_out``."""

    expansion = 1

    def __init__(self, conv1: ConvBn, conv2: ConvBn, downsample: ConvBn | None):
        self.conv1, self.conv2, self.downsample = conv1, conv2, downsample

    @staticmethod
    def load(c_in: int, c_out: int, stride: int, vb: Any, fold: bool) -> BasicBlock:
        """Two 3x3 ``ConvBn`` (``conv1``/``bn1``, ``conv2``/``bn2``) and a ``downsample`` when the shape changes."""
        return BasicBlock(
            ConvBn.load(c_in, c_out, 3, stride, vb.pp("conv1"), vb.pp("bn1"), fold),
            ConvBn.load(c_out, c_out, 3, 1, vb.pp("conv2"), vb.pp("bn2"), fold),
            _downsample(c_in, c_out, stride, vb.pp("downsample"), fold),
        )

    def forward_t(self, xs: Any, train: bool) -> Any:
        """``(B, C_in, H, W)`` in, ``(B, C_out, H / stride, W / stride)`` out."""
        ys = self.conv2.forward_t(self.conv1.forward_t(xs, train).relu(), train)
        sc = xs if self.downsample is None else self.downsample.forward_t(xs, train)
        return (ys + sc).relu()

    def forward_nhwc(self, xs: Any) -> Any:
        """As ``forward_t`` in eval mode, on channels-last ``(B, H, W, C)`` input."""
        ys = self.conv2.forward_nhwc(self.conv1.forward_nhwc(xs, relu=True))
        sc = xs if self.downsample is None else self.downsample.forward_nhwc(xs)
        return (ys + sc).relu()


class Bottleneck(ModuleT):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand to ``4 * c_out``, and a shortcut (ResNet-50+)."""

    expansion = 4

    def __init__(self, conv1: ConvBn, conv2: ConvBn, conv3: ConvBn, downsample: ConvBn | None):
        self.conv1, self.conv2, self.conv3, self.downsample = conv1, conv2, conv3, downsample

    @staticmethod
    def load(c_in: int, c_out: int, stride: int, vb: Any, fold: bool) -> Bottleneck:
        """The 1x1, 3x3 and 1x1 ``ConvBn`` (``conv1..3``/``bn1..3``) and a ``downsample`` when the shape changes."""
        e = c_out * 4
        return Bottleneck(
            ConvBn.load(c_in, c_out, 1, 1, vb.pp("conv1"), vb.pp("bn1"), fold),
            ConvBn.load(c_out, c_out, 3, stride, vb.pp("conv2"), vb.pp("bn2"), fold),
            ConvBn.load(c_out, e, 1, 1, vb.pp("conv3"), vb.pp("bn3"), fold),
            _downsample(c_in, e, stride, vb.pp("downsample"), fold),
        )

    def forward_t(self, xs: Any, train: bool) -> Any:
        """``(B, C_in, H, W)`` in, ``(B, 4 * C_out, H / stride, W / stride)`` out."""
        ys = self.conv1.forward_t(xs, train).relu()
        ys = self.conv3.forward_t(self.conv2.forward_t(ys, train).relu(), train)
        sc = xs if self.downsample is None else self.downsample.forward_t(xs, train)
        return (ys + sc).relu()

    def forward_nhwc(self, xs: Any) -> Any:
        """As ``forward_t`` in eval mode, on channels-last ``(B, H, W, C)`` input."""
        ys = self.conv3.forward_nhwc(self.conv2.forward_nhwc(self.conv1.forward_nhwc(xs, relu=True), relu=True))
        sc = xs if self.downsample is None else self.downsample.forward_nhwc(xs)
        return (ys + sc).relu()


class ResNet(ModuleT):
    """Stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), four stages of blocks, global average pool, ``fc``."""

    def __init__(self, stem: ConvBn, layers: list[list[Any]], fc: Linear | None):
        self.stem, self.layers, self.fc = stem, layers, fc

    @staticmethod
    def load(
        block: type, depths: Sequence[int], nclasses: int | None, vb: Any, *,
        widths: Sequence[int] = (64, 128, 256, 512), stem_width: int = 64, fold_bn: bool = True,
    ) -> ResNet:  # fmt: skip
        """``block``: :class:`BasicBlock` or :class:`Bottleneck`; ``depths``: blocks per stage."""
        if block not in (BasicBlock, Bottleneck) or len(depths) != len(widths):
            raise errors.Msg(f"ResNet.load: block must be BasicBlock or Bottleneck and len(depths) == len(widths) "
                             f"(got {block}, {tuple(depths)}, {tuple(widths)})")  # fmt: skip
        if not (nclasses is None or isinstance(nclasses, int)) or not isinstance(vb, VarBuilder):
            raise errors.InvalidArgument(
                f"resnet: expected (nclasses, vb), got ({type(nclasses).__name__}, {type(vb).__name__}): Candle's"
                " resnet18(num_classes, vb) keeps that order here; resnet18_no_final_layer(vb) (or resnet18(None,"
                " vb)) gives the pooled features"
            )
        stem = ConvBn.load(3, stem_width, 7, 2, vb.pp("conv1"), vb.pp("bn1"), fold_bn)
        layers, c_in = [], stem_width
        for i, (n, w) in enumerate(zip(depths, widths, strict=True)):
            vl = vb.pp(f"layer{i + 1}")
            stage = []
            for j in range(n):
                stage.append(block.load(c_in, w, (1 if i == 0 else 2) if j == 0 else 1, vl.pp(j), fold_bn))
                c_in = w * block.expansion
            layers.append(stage)
        fc = None if nclasses is None else linear(c_in, nclasses, vb.pp("fc"))
        return ResNet(stem, layers, fc)

    def forward_t(self, xs: Any, train: bool) -> Any:
        """``(B, 3, H, W)`` f32 -> logits ``(B, nclasses)`` (or pooled features ``(B, C)``)."""
        _check_not_empty(xs, "ResNet.forward", "(batch, 3, height, width)")
        ys = self.stem.forward_t(xs, train).relu()
        ys = ys.pad_with_same(-1, 1, 1).pad_with_same(-2, 1, 1).max_pool2d_with_stride(3, 2)
        for stage in self.layers:
            for blk in stage:
                ys = blk.forward_t(ys, train)
        ys = ys.mean((-2, -1))
        return ys if self.fc is None else self.fc.forward(ys)

    def forward_nhwc(self, xs: Any) -> Any:
        """Inference on a channels-last image batch ``(B, H, W, 3)``; same logits as ``forward`` on
        its NCHW transpose. What :func:`forward_jit` runs (faster on XLA:CPU: no layout changes
        between the convolutions, products with the weights' own ``(c_out, c_in)`` rows)."""
        _check_not_empty(xs, "ResNet.forward_nhwc", "(batch, height, width, 3)")
        ys = self.stem.forward_nhwc(xs, relu=True)
        ys = wrap(_max_pool_3x3_s2_nhwc(unwrap(ys)))
        for stage in self.layers:
            for blk in stage:
                ys = blk.forward_nhwc(ys)
        ys = ys.mean((1, 2))
        return ys if self.fc is None else self.fc.forward(ys)


def _check_not_empty(xs: Any, where: str, layout: str) -> None:
    """An image batch with no image, or images of no pixel, named (the stem raised conv2d's error)."""
    shape = tuple(xs.shape)
    if len(shape) == 4 and 0 in shape:
        raise errors.Msg(
            f"{where}: the image batch {errors.fmt_shape(shape)} {layout} is empty (each dim must be >= 1)"
        )


def _max_pool_3x3_s2_nhwc(x: Any) -> Any:
    # = the edge-padded pool of ``forward_t``: a window that reaches a replicated border value
    # also holds the value it replicates
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))


def _forward_channels_last(net: ResNet, kernels: list[Any], xs: Any) -> Any:
    return with_nhwc_kernels(net, kernels).forward_nhwc(xs.permute((0, 2, 3, 1)))


def _out_hw(conv: Conv2d, hw: tuple[int, int]) -> tuple[int, int]:
    k, s, p = conv.weight.shape[2], conv.config.stride, conv.config.padding
    return conv_out_len(hw[0], k, p, s, 1), conv_out_len(hw[1], k, p, s, 1)


def _nhwc_kernels(net: ResNet, hw: tuple[int, int]) -> list[Any]:
    """Each convolution's kernel in the layout its channels-last path reads for an ``hw`` image
    (``nn.conv.nhwc_kernel``), in pytree order, for ``with_nhwc_kernels``."""
    kernels: dict[int, Any] = {}

    def conv(cb: ConvBn, hw: tuple[int, int]) -> tuple[int, int]:
        kernels[id(cb.conv)] = nhwc_kernel(cb.conv, hw)
        return _out_hw(cb.conv, hw)

    hw = conv(net.stem, hw)
    hw = (conv_out_len(hw[0], 3, 1, 2, 1), conv_out_len(hw[1], 3, 1, 2, 1))  # the 3x3/2 max-pool, padding 1
    for stage in net.layers:
        for blk in stage:
            if blk.downsample is not None:
                conv(blk.downsample, hw)
            for cb in (blk.conv1, blk.conv2, blk.conv3) if isinstance(blk, Bottleneck) else (blk.conv1, blk.conv2):
                hw = conv(cb, hw)
    convs = jax.tree_util.tree_leaves(net, is_leaf=lambda m: isinstance(m, Conv2d))
    return [kernels[id(m)] for m in convs if isinstance(m, Conv2d)]


# XLA's own convolutions: YNNPACK runs those with at most 64 output channels on one thread
_forward_compiled = OptionsJit(_forward_channels_last, XLA_CONVOLUTION_OPTIONS)


def forward_jit(net: ResNet, xs: Any) -> Any:
    """``net.forward(xs)`` (inference) compiled, one program per input shape; ``xs`` ``(B, 3, H, W)``.

    Inside, the program runs channels-last (:meth:`ResNet.forward_nhwc`) with each convolution's
    kernel handed in the layout its path reads (``nn.conv.nhwc_kernel``, made once per weight
    array): 1x1 convolutions are products with the weight's rows, 3x3 convolutions with at most 64
    output rows products over stacked taps (the native few-row f32 product), larger ones the native
    f32 convolution on AVX-512 CPUs, else XLA's convolution. The program uses XLA's own
    convolutions where it has any (``candlejax.xla.XLA_CONVOLUTION_OPTIONS``: YNNPACK runs those
    with at most 64 output channels on one thread). ResNet-50 at batch 1 on a 2-core Xeon: 78.6 ms
    (``jax.jit(net.forward)``) -> 36.3-37.2 ms (torch.compile 41.8-43.8). Same outputs as
    ``net.forward`` up to summation order (~1e-5)."""
    if not isinstance(net, ResNet) or not hasattr(xs, "shape"):
        raise errors.ArgumentType(
            f"resnet.forward_jit(net, xs) takes the ResNet first and the (batch, 3, height, width) images second,"
            f" got ({type(net).__name__}, {type(xs).__name__})"
        )
    _check_not_empty(xs, "resnet.forward_jit", "(batch, 3, height, width)")
    shape, c_in = tuple(xs.shape), net.stem.conv.weight.shape[1]
    if len(shape) != 4 or shape[1] != c_in:  # (the channels-last program would name the transposed shape)
        raise errors.UnexpectedShape(f"resnet.forward_jit: xs must be (batch, {c_in}, height, width)",
                                     (shape[0] if len(shape) == 4 else 1, c_in, *shape[-2:]), shape)  # fmt: skip
    return _forward_compiled(net, _nhwc_kernels(net, tuple(xs.shape[2:])), xs)


def resnet18(nclasses: int | None, vb: Any, *, fold_bn: bool = True) -> ResNet:
    """Candle: ``resnet18(nclasses, vb)``; torchvision: ``resnet18()``."""
    return ResNet.load(BasicBlock, (2, 2, 2, 2), nclasses, vb, fold_bn=fold_bn)


def resnet34(nclasses: int | None, vb: Any, *, fold_bn: bool = True) -> ResNet:
    """Candle's ``resnet34(num_classes, vb)``; ``nclasses=None`` is ``resnet34_no_final_layer``."""
    return ResNet.load(BasicBlock, (3, 4, 6, 3), nclasses, vb, fold_bn=fold_bn)


def resnet50(nclasses: int | None, vb: Any, *, fold_bn: bool = True) -> ResNet:
    """Candle: ``resnet50(nclasses, vb)``; torchvision: ``resnet50()`` (v1.5)."""
    return ResNet.load(Bottleneck, (3, 4, 6, 3), nclasses, vb, fold_bn=fold_bn)


def resnet101(nclasses: int | None, vb: Any, *, fold_bn: bool = True) -> ResNet:
    """Candle's ``resnet101(num_classes, vb)``; ``nclasses=None`` is ``resnet101_no_final_layer``."""
    return ResNet.load(Bottleneck, (3, 4, 23, 3), nclasses, vb, fold_bn=fold_bn)


def resnet152(nclasses: int | None, vb: Any, *, fold_bn: bool = True) -> ResNet:
    """Candle's ``resnet152(num_classes, vb)``; ``nclasses=None`` is ``resnet152_no_final_layer``."""
    return ResNet.load(Bottleneck, (3, 8, 36, 3), nclasses, vb, fold_bn=fold_bn)


def _no_final_layer(depth: int) -> Any:
    make = {18: resnet18, 34: resnet34, 50: resnet50, 101: resnet101, 152: resnet152}[depth]

    def build(vb: Any, *, fold_bn: bool = True) -> ResNet:
        return make(None, vb, fold_bn=fold_bn)

    build.__name__ = build.__qualname__ = f"resnet{depth}_no_final_layer"
    build.__doc__ = (f"Candle's ``resnet{depth}_no_final_layer(vb)``: no ``fc``, ``forward`` gives the pooled"
                     f" features ``(B, C)`` (= ``resnet{depth}(None, vb)``).")  # fmt: skip
    return build


resnet18_no_final_layer = _no_final_layer(18)
resnet34_no_final_layer = _no_final_layer(34)
resnet50_no_final_layer = _no_final_layer(50)
resnet101_no_final_layer = _no_final_layer(101)
resnet152_no_final_layer = _no_final_layer(152)

_LAYER = re.compile(r"layer(\d+)\.(\d+)\.(conv|bn)(\d)\.(.+)")
_DOWN = re.compile(r"layer(\d+)\.(\d+)\.downsample\.([01])\.(.+)")


def hf_to_torchvision(name: str, prefix: str = "resnet.") -> str:
    """The Hugging Face name of the torchvision-named tensor ``name``; use as ``vb.rename_f(hf_to_torchvision)``.

    ``layer2.0.conv1.weight`` -> ``resnet.encoder.stages.1.layers.0.layer.0.convolution.weight``,
    ``fc.weight`` -> ``classifier.1.weight``. ``prefix=""`` reads a ``ResNetModel`` checkpoint
    (``functools.partial(hf_to_torchvision, prefix="")``).
    """
    kind = {"conv": "convolution", "bn": "normalization"}
    if m := _LAYER.fullmatch(name):
        st, blk, typ, k, rest = m.groups()
        return f"{prefix}encoder.stages.{int(st) - 1}.layers.{blk}.layer.{int(k) - 1}.{kind[typ]}.{rest}"
    if m := _DOWN.fullmatch(name):
        st, blk, i, rest = m.groups()
        part = "convolution" if i == "0" else "normalization"
        return f"{prefix}encoder.stages.{int(st) - 1}.layers.{blk}.shortcut.{part}.{rest}"
    head, _, rest = name.partition(".")
    if head in ("conv1", "bn1"):
        return f"{prefix}embedder.embedder.{kind[head[:-1]]}.{rest}"
    if head == "fc":
        return f"classifier.1.{rest}"
    return name


#: depth -> (stage depths, bottleneck blocks)
DEPTHS = {"18": ((2, 2, 2, 2), False), "34": ((3, 4, 6, 3), False), "50": ((3, 4, 6, 3), True),
          "101": ((3, 4, 23, 3), True), "152": ((3, 8, 36, 3), True)}  # fmt: skip


def _depth(names: set[str], src: str, to_hf: Any = hf_to_torchvision) -> str:
    """The ResNet depth a checkpoint holds, from its tensor names (torchvision, or Hugging Face's
    as ``to_hf`` names them)."""
    tv = {n for n in names if n.startswith(("layer", "conv1", "bn1", "fc."))}
    if not tv:
        inv = {to_hf(f"layer{s}.{b}.{t}"): f"layer{s}.{b}.{t}" for s in range(1, 5)
               for b in range(40) for t in ("conv1.weight", "conv3.weight")}  # fmt: skip
        tv = {inv[k] for k in names if k in inv}
    depths = tuple(len({n.split(".")[1] for n in tv if n.startswith(f"layer{i}.")}) for i in range(1, 5))
    found = {v: k for k, v in DEPTHS.items()}.get((depths, any(".conv3." in n for n in tv)))
    if found is None:
        raise errors.Msg(f"resnet.load: {src} does not hold a ResNet-18/34/50/101/152 (stage depths {depths})")
    return found


def _check_hf_config(path: str) -> None:
    """Refuse a Hugging Face ``ResNetConfig`` beside the weights that this ResNet (torchvision's v1.5,
    as Candle's) does not compute: the stride in a bottleneck's first 1x1 convolution, a downsampling
    first stage, or an activation other than ReLU would load and run silently wrong."""
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError, RecursionError):
        return  # not a config this loader reads
    if not isinstance(cfg, dict) or cfg.get("model_type") != "resnet":
        return
    wrong = {k: cfg[k] for k, ok in (("downsample_in_bottleneck", False), ("downsample_in_first_stage", False),
                                     ("hidden_act", "relu")) if k in cfg and cfg[k] != ok}  # fmt: skip
    if wrong:
        raise errors.Msg(f"resnet.load: {path} asks for {wrong}, which this ResNet does not compute"
                         " (torchvision's layout: stride in the 3x3 convolution, first stage at stride 1, ReLU)")


def load(path: str | os.PathLike, nclasses: int | None = 1000, which: str | int | None = None, *,
         dtype: Any = DType.F32, device: Any = None, fold_bn: bool = True) -> ResNet:  # fmt: skip
    """A ResNet from a safetensors file with torchvision/timm or Hugging Face names
    (``ResNetForImageClassification``, or a base ``ResNetModel`` without the ``resnet.`` prefix), or
    from a Hugging Face folder holding one (``config.json`` + ``model.safetensors``); ``which``
    (18, 34, 50, 101 or 152) is read from the names when not given."""
    from candlejax.io.safetensors import MmapedSafetensors
    from candlejax.models.loading import safetensors_files

    p = os.fspath(path)
    if os.path.isdir(p):
        p = safetensors_files(p)[0]
    if not os.path.isfile(p):
        raise errors.Msg(f"resnet.load: no such file {p!r}")
    if which is not None and str(which) not in DEPTHS:
        raise errors.Msg(f"resnet.load: unknown depth which={which!r} (known: {', '.join(DEPTHS)})")
    _check_hf_config(os.path.join(os.path.dirname(p), "config.json"))
    names = set(MmapedSafetensors([p]).names())
    hf = None if "fc.weight" in names or "conv1.weight" in names else (
        functools.partial(hf_to_torchvision, prefix="") if "embedder.embedder.convolution.weight" in names
        else hf_to_torchvision)  # fmt: skip
    which = str(which) if which is not None else _depth(names, p, hf or hf_to_torchvision)
    vb = VarBuilder.from_mmaped_safetensors([p], dtype, device)
    if hf is not None:
        vb = vb.rename_f(hf)
    depths, bottleneck = DEPTHS[which]
    return ResNet.load(Bottleneck if bottleneck else BasicBlock, depths, nclasses, vb, fold_bn=fold_bn)


if __name__ == "__main__":
    from candlejax.cli.classify import resnet_main

    raise SystemExit(resnet_main())
