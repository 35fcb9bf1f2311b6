"""TinyViT-5M, MobileSAM's image encoder (~ candle-transformers' ``segment_anything/tiny_vit.rs``).

Paper: Wu et al., "TinyViT: Fast Pretraining Distillation for Small Vision Transformers",
https://arxiv.org/abs/2207.10666; MobileSAM: Zhang et al., https://arxiv.org/abs/2306.14289.
Mirrors MobileSAM's ``mobile_sam/modeling/tiny_vit_sam.py`` with its weight names
(``image_encoder.layers.1.blocks.0.attn.qkv.weight``): a conv stem, MBConv stage, three windowed
attention stages with learned relative biases and depthwise local convs, and SAM's neck. Input
``(B, 3, 1024, 1024)`` normalised; output ``(B, 256, 64, 64)``.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from candlejax import errors
from candlejax.nn import (
    Activation,
    BatchNorm,
    Conv2dConfig,
    LayerNorm,
    Module,
    VarBuilder,
    batch_norm,
    conv2d_no_bias,
    layer_norm,
    ops,
)
from candlejax.tensor import Tensor

from .common import LayerNorm2d, linear

__all__ = ["IMG_SIZE", "TinyViT", "tiny_vit_5m"]

IMG_SIZE = 1024
IN_CHANNELS = 3
MBCONV_EXPAND_RATIO = 4
MLP_RATIO = 4
_GELU = Activation("Gelu")  # exact erf GELU, torch.nn.GELU()


class Conv2dBN(Module):
    """Convolution without bias then BatchNorm (eval statistics), MobileSAM's ``Conv2d_BN``."""

    def __init__(self, c_in: int, c_out: int, ks: int, cfg: Conv2dConfig, vb: VarBuilder):
        self.c = conv2d_no_bias(c_in, c_out, ks, cfg, vb.pp("c"))
        self.bn: BatchNorm = batch_norm(c_out, 1e-5, vb.pp("bn"))

    def forward(self, xs: Tensor) -> Tensor:
        return self.bn(self.c(xs))

    def _bn_last(self, xs: Tensor) -> Tensor:
        """The BatchNorm over the last (channel) axis."""
        bn = self.bn
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        return xs.broadcast_sub(bn.running_mean).broadcast_mul(scale).broadcast_add(bn.bias)

    def forward_nhwc(self, xs: Tensor) -> Tensor:
        """Same layer on a channels-last ``(B, H, W, C)`` input (1x1 or depthwise convolution): no
        transposes for the token-major ``(B, H*W, C)`` stages."""
        cfg, w = self.c.config, self.c.weight
        if cfg.groups == 1:  # 1x1, stride 1: a product over the channels
            o, i, kh, kw = w.dims4()
            if (kh, kw) != (1, 1) or cfg.stride != 1 or cfg.padding != 0:
                raise errors.Msg(f"Conv2dBN.forward_nhwc: only 1x1 stride-1 or depthwise kernels, got {list(w.dims())}"
                                 f" with {cfg}")  # fmt: skip
            ys = xs.broadcast_matmul(w.reshape((o, i)).t())
        else:
            ys = ops.depthwise_conv2d(xs, w, cfg.padding, cfg.stride, cfg.dilation, layout="nhwc")
        return self._bn_last(ys)


class PatchEmbed(Module):
    """Two stride-2 3x3 Conv2dBN with GELU: ``(B, 3, H, W) -> (B, embed_dim, H/4, W/4)``."""

    def __init__(self, in_chans: int, embed_dim: int, vb: VarBuilder):
        cfg = Conv2dConfig(stride=2, padding=1)
        self.conv1 = Conv2dBN(in_chans, embed_dim // 2, 3, cfg, vb.pp("seq.0"))
        self.conv2 = Conv2dBN(embed_dim // 2, embed_dim, 3, cfg, vb.pp("seq.2"))

    def forward(self, xs: Tensor) -> Tensor:
        return self.conv2(_GELU(self.conv1(xs)))


class MBConv(Module):
    """Inverted residual: 1x1 expand, depthwise 3x3, 1x1 project, residual, GELU."""

    def __init__(self, c_in: int, c_out: int, expand_ratio: int, vb: VarBuilder):
        hidden = c_in * expand_ratio
        self.conv1 = Conv2dBN(c_in, hidden, 1, Conv2dConfig(), vb.pp("conv1"))
        self.conv2 = Conv2dBN(hidden, hidden, 3, Conv2dConfig(padding=1, groups=hidden), vb.pp("conv2"))
        self.conv3 = Conv2dBN(hidden, c_out, 1, Conv2dConfig(), vb.pp("conv3"))

    def forward(self, xs: Tensor) -> Tensor:
        ys = _GELU(self.conv2(_GELU(self.conv1(xs))))
        return _GELU(self.conv3(ys) + xs)

    def forward_nhwc(self, xs: Tensor) -> Tensor:
        """Same block on a channels-last ``(B, H, W, C)`` input."""
        ys = _GELU(self.conv2.forward_nhwc(_GELU(self.conv1.forward_nhwc(xs))))
        return _GELU(self.conv3.forward_nhwc(ys) + xs)


class PatchMerging(Module):
    """Downsampling between stages; ``(B, L, C)`` or ``(B, C, H, W)`` in, ``(B, L', C')`` out.
    The stride is 1 for MobileSAM's last stage (out dims 320, 448, 576), as in MobileSAM."""

    def __init__(self, input_resolution: tuple[int, int], dim: int, out: int, vb: VarBuilder):
        stride = 1 if out in (320, 448, 576) else 2
        self.input_resolution = input_resolution
        self.conv1 = Conv2dBN(dim, out, 1, Conv2dConfig(), vb.pp("conv1"))
        self.conv2 = Conv2dBN(out, out, 3, Conv2dConfig(stride=stride, padding=1, groups=out), vb.pp("conv2"))
        self.conv3 = Conv2dBN(out, out, 1, Conv2dConfig(), vb.pp("conv3"))

    def forward(self, xs: Tensor) -> Tensor:
        if xs.rank == 3:  # tokens: channels-last all the way
            h, w = self.input_resolution
            b = xs.dims()[0]
            xs = xs.reshape((b, h, w, -1))
            xs = self.conv3.forward_nhwc(_GELU(self.conv2.forward_nhwc(_GELU(self.conv1.forward_nhwc(xs)))))
            return xs.flatten(1, 2)
        xs = self.conv3(_GELU(self.conv2(_GELU(self.conv1(xs)))))
        return xs.flatten_from(2).transpose(1, 2)


class ConvLayer(Module):
    """Stage 0: MBConv blocks then PatchMerging."""

    def __init__(self, dim: int, out: int, input_resolution: tuple[int, int], depth: int, vb: VarBuilder):
        self.blocks = [MBConv(dim, dim, MBCONV_EXPAND_RATIO, vb.pp("blocks").pp(i)) for i in range(depth)]
        self.downsample = PatchMerging(input_resolution, dim, out, vb.pp("downsample"))

    def forward(self, xs: Tensor) -> Tensor:
        xs = xs.permute((0, 2, 3, 1))  # channels-last: XLA:CPU's convolutions produce NHWC
        for block in self.blocks:
            xs = block.forward_nhwc(xs)
        b, h, w, c = xs.dims4()
        return self.downsample(xs.reshape((b, h * w, c)))


class Mlp(Module):
    """``fc2(gelu(fc1(norm(x))))``."""

    def __init__(self, dim: int, hidden: int, vb: VarBuilder):
        self.norm: LayerNorm = layer_norm(dim, 1e-5, vb.pp("norm"))
        self.fc1 = linear(vb.pp("fc1"), dim, hidden, True)
        self.fc2 = linear(vb.pp("fc2"), hidden, dim, True)

    def forward(self, xs: Tensor) -> Tensor:
        return self.fc2(_GELU(self.fc1(self.norm(xs))))


def _bias_idxs(resolution: tuple[int, int]) -> tuple[np.ndarray, int]:
    """LeViT's attention-bias index: the offset class of every (query, key) pair in the window."""
    points = list(itertools.product(range(resolution[0]), range(resolution[1])))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    return np.asarray(idxs, dtype=np.uint32), len(offsets)


class Attention(Module):
    """Window attention with a learned bias per relative offset (``attention_biases``)."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: int, resolution: tuple[int, int],
                 vb: VarBuilder):  # fmt: skip
        self.num_heads, self.key_dim, self.d = num_heads, key_dim, attn_ratio * key_dim
        self.dh = self.d * num_heads
        self.scale = key_dim**-0.5
        self.norm: LayerNorm = layer_norm(dim, 1e-5, vb.pp("norm"))
        self.qkv = linear(vb.pp("qkv"), dim, self.dh + 2 * key_dim * num_heads, True)
        self.proj = linear(vb.pp("proj"), self.dh, dim, True)
        idxs, n_offsets = _bias_idxs(resolution)
        self.attention_biases = vb.get((num_heads, n_offsets), "attention_biases")
        self.attention_bias_idxs = Tensor(idxs, device=vb.device())
        self.n = resolution[0] * resolution[1]

    def forward(self, xs: Tensor) -> Tensor:
        b, n, _ = xs.dims3()
        qkv = self.qkv(self.norm(xs)).reshape((b, n, self.num_heads, -1))
        q = qkv.narrow(3, 0, self.key_dim).transpose(1, 2)
        k = qkv.narrow(3, self.key_dim, self.key_dim).transpose(1, 2)
        v = qkv.narrow(3, 2 * self.key_dim, self.d).transpose(1, 2)
        bias = self.attention_biases.index_select(self.attention_bias_idxs, 1)
        bias = bias.reshape((1, self.num_heads, self.n, self.n))
        ys = ops.sdpa(q, k, v, mask=bias, scale=self.scale)  # (B, heads, N, d)
        return self.proj(ys.transpose(1, 2).reshape((b, n, self.dh)))


class TinyViTBlock(Module):
    """Windowed attention (zero-padded to whole windows), depthwise 3x3 Conv2dBN, then the MLP."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int,
                 vb: VarBuilder):  # fmt: skip
        head_dim = dim // num_heads
        self.attn = Attention(dim, head_dim, num_heads, 1, (window_size, window_size), vb.pp("attn"))
        self.mlp = Mlp(dim, dim * MLP_RATIO, vb.pp("mlp"))
        self.local_conv = Conv2dBN(dim, dim, 3, Conv2dConfig(padding=1, groups=dim), vb.pp("local_conv"))
        self.input_resolution, self.window_size = input_resolution, window_size

    def forward(self, xs: Tensor) -> Tensor:
        h, w = self.input_resolution
        b, n, c = xs.dims3()
        ws = self.window_size
        if h == ws and w == ws:
            ys = self.attn(xs)
        else:
            ys = xs.reshape((b, h, w, c))
            pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
            if pad_b:
                ys = ys.pad_with_zeros(1, 0, pad_b)
            if pad_r:
                ys = ys.pad_with_zeros(2, 0, pad_r)
            ph, pw = h + pad_b, w + pad_r
            nh, nw = ph // ws, pw // ws
            ys = ys.reshape((b, nh, ws, nw, ws, c)).transpose(2, 3).reshape((b * nh * nw, ws * ws, c))
            ys = self.attn(ys)
            ys = ys.reshape((b, nh, nw, ws, ws, c)).transpose(2, 3).reshape((b, ph, pw, c))
            if pad_b or pad_r:
                ys = ys.narrow(1, 0, h).narrow(2, 0, w)
            ys = ys.reshape((b, n, c))
        xs = xs + ys
        xs = self.local_conv.forward_nhwc(xs.reshape((b, h, w, c))).reshape((b, n, c))
        return xs + self.mlp(xs)


class BasicLayer(Module):
    """Stages 1-3: TinyViT blocks then (except the last stage) PatchMerging."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 downsample: bool, out: int, vb: VarBuilder):  # fmt: skip
        vb_b = vb.pp("blocks")
        self.blocks = [TinyViTBlock(dim, input_resolution, num_heads, window_size, vb_b.pp(i)) for i in range(depth)]
        self.downsample = PatchMerging(input_resolution, dim, out, vb.pp("downsample")) if downsample else None

    def forward(self, xs: Tensor) -> Tensor:
        for block in self.blocks:
            xs = block(xs)
        return xs if self.downsample is None else self.downsample(xs)


class TinyViT(Module):
    """``TinyViT::new(embed_dims, depths, num_heads, window_sizes, num_classes, vb)``; the
    classification head (``norm_head``, ``head``) is not loaded, as in Candle."""

    def __init__(self, embed_dims: list[int], depths: list[int], num_heads: list[int], window_sizes: list[int],
                 num_classes: int, vb: VarBuilder):  # fmt: skip
        self.patch_embed = PatchEmbed(IN_CHANNELS, embed_dims[0], vb.pp("patch_embed"))
        res = IMG_SIZE // 4
        vb_l = vb.pp("layers")
        self.layer0 = ConvLayer(embed_dims[0], embed_dims[1], (res, res), depths[0], vb_l.pp(0))
        n = len(embed_dims)
        self.layers = []
        for i in range(1, n):
            r = res // (1 << min(i, 2))
            self.layers.append(BasicLayer(embed_dims[i], (r, r), depths[i], num_heads[i], window_sizes[i], i < n - 1,
                                          embed_dims[min(i + 1, n - 1)], vb_l.pp(i)))  # fmt: skip
        self.neck_conv1 = conv2d_no_bias(embed_dims[-1], 256, 1, Conv2dConfig(), vb.pp("neck.0"))
        self.neck_ln1 = LayerNorm2d.new(256, 1e-6, vb.pp("neck.1"))
        self.neck_conv2 = conv2d_no_bias(256, 256, 3, Conv2dConfig(padding=1), vb.pp("neck.2"))
        self.neck_ln2 = LayerNorm2d.new(256, 1e-6, vb.pp("neck.3"))

    @staticmethod
    def new(embed_dims: list[int], depths: list[int], num_heads: list[int], window_sizes: list[int],
            num_classes: int, vb: VarBuilder) -> TinyViT:  # fmt: skip
        """Candle's ``TinyViT::new(embed_dims, depths, num_heads, window_sizes, num_classes, vb)``."""
        return TinyViT(embed_dims, depths, num_heads, window_sizes, num_classes, vb)

    def forward(self, xs: Any) -> Tensor:
        """``(B, 3, 1024, 1024)`` in, ``(B, 256, 64, 64)`` image embeddings out."""
        xs = self.layer0(self.patch_embed(xs))
        for layer in self.layers:
            xs = layer(xs)
        b, _, c = xs.dims3()
        w = self.neck_conv1.weight
        xs = xs.reshape((b, 64, 64, c)).broadcast_matmul(w.reshape(w.dims()[:2]).t())  # 1x1, channels-last
        xs = self.neck_ln1.forward_nhwc(xs).permute((0, 3, 1, 2))
        return self.neck_ln2(self.neck_conv2(xs))


def tiny_vit_5m(vb: VarBuilder) -> TinyViT:
    """MobileSAM's encoder: dims 64/128/160/320, depths 2/2/6/2, heads 2/4/5/10, windows 7/7/14/7."""
    return TinyViT([64, 128, 160, 320], [2, 2, 6, 2], [2, 4, 5, 10], [7, 7, 14, 7], 1000, vb)
