"""SAM's ViT image encoder (~ candle-transformers' ``segment_anything/image_encoder.rs``).

Paper: Kirillov et al., "Segment Anything", https://arxiv.org/abs/2304.02643. Mirrors
``segment_anything/modeling/image_encoder.py`` (weight names verbatim): a 16x16 patch embedding,
absolute position embeddings, ViT blocks with windowed (14x14, zero-padded) or global attention
and decomposed relative position biases (MViTv2), and a conv neck to ``out_chans``.
ViT-B: ``ImageEncoderViT.new(1024, 16, 3, 768, 12, 12, 256, True, True, True, 14, [2, 5, 8, 11], vb)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from candlejax import errors
from candlejax.nn import (
    Activation,
    Conv2dConfig,
    LayerNorm,
    Module,
    VarBuilder,
    conv2d,
    conv2d_no_bias,
    layer_norm,
    ops,
)
from candlejax.tensor import Tensor

from .common import LayerNorm2d, MlpBlock, linear

__all__ = ["Attention", "Block", "ImageEncoderViT", "PatchEmbed"]


class PatchEmbed(Module):
    """``(B, C, H, W) -> (B, H/p, W/p, embed_dim)`` by a stride-p convolution."""

    def __init__(self, in_chans: int, embed_dim: int, k_size: int, stride: int, padding: int, vb: VarBuilder):
        self.proj = conv2d(in_chans, embed_dim, k_size, Conv2dConfig(stride=stride, padding=padding), vb.pp("proj"))

    def forward(self, xs: Tensor) -> Tensor:
        """``(B, C, H, W)`` in, ``(B, H / p, W / p, embed_dim)`` out."""
        return self.proj(xs).permute((0, 2, 3, 1))


def _rel_index(q_size: int, k_size: int) -> np.ndarray:
    """Indexes into a ``(2 * max(q, k) - 1, C)`` relative-position table (SAM's ``get_rel_pos``)."""
    q = np.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k = np.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    return ((q - k) + (k_size - 1) * max(q_size / k_size, 1.0)).astype(np.int64).astype(np.uint32)


class Attention(Module):
    """Multi-head attention over ``(B, H, W, C)`` tokens with decomposed relative position biases."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, use_rel_pos: bool, input_size: tuple[int, int],
                 vb: VarBuilder):  # fmt: skip
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = linear(vb.pp("qkv"), dim, dim * 3, qkv_bias)
        self.proj = linear(vb.pp("proj"), dim, dim, True)
        self.use_rel_pos, self.input_size = use_rel_pos, tuple(input_size)
        if use_rel_pos:
            h, w = input_size
            self.rel_pos_h = vb.get((2 * h - 1, self.head_dim), "rel_pos_h")
            self.rel_pos_w = vb.get((2 * w - 1, self.head_dim), "rel_pos_w")
            self.idx_h = Tensor(_rel_index(h, h).reshape(-1), device=vb.device())
            self.idx_w = Tensor(_rel_index(w, w).reshape(-1), device=vb.device())

    def _rel_bias(self, q: Tensor, bh: int, h: int, w: int) -> Tensor:
        """``rel_h[b, qh, qw, kh] + rel_w[b, qh, qw, kw]`` as a ``(B*heads, 1, h*w, h*w)`` score bias."""
        if (h, w) != self.input_size:
            raise errors.Msg(
                f"sam attention: relative position tables are for {list(self.input_size)} tokens, got {[h, w]}"
                " (SAM pads every image to 1024x1024; use the encoder's img_size)"
            )
        c = self.head_dim
        r_h = self.rel_pos_h.index_select(self.idx_h, 0).reshape((h, h, c))  # (qh, kh, c)
        r_w = self.rel_pos_w.index_select(self.idx_w, 0).reshape((w, w, c))  # (qw, kw, c)
        r_q = q.reshape((bh, h, w, c))
        # einsum("bhwc,hkc->bhwk") and einsum("bhwc,wkc->bhwk") as batched matmuls
        rel_h = r_q.permute((1, 0, 2, 3)).reshape((h, bh * w, c)).matmul(r_h.transpose(1, 2))
        rel_h = rel_h.reshape((h, bh, w, h)).permute((1, 0, 2, 3))
        rel_w = r_q.permute((2, 0, 1, 3)).reshape((w, bh * h, c)).matmul(r_w.transpose(1, 2))
        rel_w = rel_w.reshape((w, bh, h, w)).permute((1, 2, 0, 3))
        bias = rel_h.unsqueeze(4) + rel_w.unsqueeze(3)  # (bh, h, w, kh, kw)
        return bias.reshape((bh, 1, h * w, h * w))

    def forward(self, xs: Tensor) -> Tensor:
        """``(B, H, W, dim)`` in, ``(B, H, W, dim)`` out (with the relative position bias when enabled)."""
        b, h, w, _ = xs.dims4()
        nh, c = self.num_heads, self.head_dim
        qkv = self.qkv(xs).reshape((b, h * w, 3, nh, c)).permute((2, 0, 3, 1, 4)).reshape((3, b * nh, 1, h * w, c))
        q, k, v = qkv.get(0), qkv.get(1), qkv.get(2)  # (B*heads, 1, h*w, c)
        bias = self._rel_bias(q, b * nh, h, w) if self.use_rel_pos else None
        ys = ops.sdpa(q, k, v, mask=bias, scale=c**-0.5)
        ys = ys.reshape((b, nh, h, w, c)).permute((0, 2, 3, 1, 4)).reshape((b, h, w, nh * c))
        return self.proj(ys)


def window_partition(xs: Tensor, window_size: int) -> tuple[Tensor, tuple[int, int]]:
    """``(B, H, W, C)`` -> ``(B * windows, ws, ws, C)`` after zero-padding H, W to whole windows."""
    b, h, w, c = xs.dims4()
    pad_h, pad_w = (window_size - h % window_size) % window_size, (window_size - w % window_size) % window_size
    if pad_h:
        xs = xs.pad_with_zeros(1, 0, pad_h)
    if pad_w:
        xs = xs.pad_with_zeros(2, 0, pad_w)
    hp, wp = h + pad_h, w + pad_w
    xs = xs.reshape((b, hp // window_size, window_size, wp // window_size, window_size, c)).transpose(2, 3)
    return xs.reshape((-1, window_size, window_size, c)), (hp, wp)


def window_unpartition(windows: Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_partition` (drops the padding)."""
    hp, wp = pad_hw
    h, w = hw
    b = windows.dims()[0] // (hp * wp // window_size // window_size)
    xs = windows.reshape((b, hp // window_size, wp // window_size, window_size, window_size, -1)).transpose(2, 3)
    xs = xs.reshape((b, hp, wp, -1))
    if hp > h or wp > w:
        xs = xs.narrow(1, 0, h).narrow(2, 0, w)
    return xs


class Block(Module):
    """Pre-norm ViT block; ``window_size`` 0 means global attention."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, use_rel_pos: bool, window_size: int,
                 input_size: tuple[int, int], vb: VarBuilder, mlp_dim: int | None = None):  # fmt: skip
        self.norm1: LayerNorm = layer_norm(dim, 1e-6, vb.pp("norm1"))
        self.norm2: LayerNorm = layer_norm(dim, 1e-6, vb.pp("norm2"))
        attn_size = input_size if window_size == 0 else (window_size, window_size)
        self.attn = Attention(dim, num_heads, qkv_bias, use_rel_pos, attn_size, vb.pp("attn"))
        self.mlp = MlpBlock(dim, dim * 4 if mlp_dim is None else mlp_dim, Activation("Gelu"), vb.pp("mlp"))
        self.window_size = window_size

    def forward(self, xs: Tensor) -> Tensor:
        """``(B, H, W, dim)`` in, ``(B, H, W, dim)`` out (windowed attention when ``window_size > 0``, then the MLP)."""
        shortcut = xs
        xs = self.norm1(xs)
        if self.window_size > 0:
            h, w = xs.dims()[1:3]
            xs, pad_hw = window_partition(xs, self.window_size)
            xs = window_unpartition(self.attn(xs), self.window_size, pad_hw, (h, w))
        else:
            xs = self.attn(xs)
        xs = shortcut + xs
        return xs + self.mlp(self.norm2(xs))


class ImageEncoderViT(Module):
    """Candle's ``ImageEncoderViT::new(img_size, patch_size, in_chans, embed_dim, depth, num_heads,
    out_chans, qkv_bias, use_rel_pos, use_abs_pos, window_size, global_attn_indexes, vb)``; ``mlp_dim``
    (default ``4 * embed_dim``, as SAM) is the MLP width of pruned encoders (transformers'
    ``SamVisionConfig.mlp_dim``, e.g. SlimSAM)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, depth: int, num_heads: int,
                 out_chans: int, qkv_bias: bool, use_rel_pos: bool, use_abs_pos: bool, window_size: int,
                 global_attn_indexes: Sequence[int], vb: VarBuilder, mlp_dim: int | None = None):  # fmt: skip
        self.img_size, self.in_chans = int(img_size), int(in_chans)
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, patch_size, 0, vb.pp("patch_embed"))
        n = img_size // patch_size
        self.pos_embed = vb.get((1, n, n, embed_dim), "pos_embed") if use_abs_pos else None
        vb_b = vb.pp("blocks")
        self.blocks = [
            Block(embed_dim, num_heads, qkv_bias, use_rel_pos, 0 if i in global_attn_indexes else window_size, (n, n),
                  vb_b.pp(i), mlp_dim)
            for i in range(depth)
        ]  # fmt: skip
        self.neck_conv1 = conv2d_no_bias(embed_dim, out_chans, 1, Conv2dConfig(), vb.pp("neck.0"))
        self.neck_ln1 = LayerNorm2d.new(out_chans, 1e-6, vb.pp("neck.1"))
        self.neck_conv2 = conv2d_no_bias(out_chans, out_chans, 3, Conv2dConfig(padding=1), vb.pp("neck.2"))
        self.neck_ln2 = LayerNorm2d.new(out_chans, 1e-6, vb.pp("neck.3"))

    @staticmethod
    def new(*args: Any) -> ImageEncoderViT:
        """Candle's ``ImageEncoderViT::new(...)``: the constructor, positional arguments in Candle's order."""
        return ImageEncoderViT(*args)

    def forward(self, xs: Any) -> Tensor:
        """``(B, in_chans, img_size, img_size)`` in, ``(B, out_chans, img_size / patch, img_size / patch)`` out."""
        xs = self.patch_embed(xs)
        if self.pos_embed is not None:
            xs = xs.broadcast_add(self.pos_embed)
        for block in self.blocks:
            xs = block(xs)
        xs = xs.permute((0, 3, 1, 2))
        return self.neck_ln2(self.neck_conv2(self.neck_ln1(self.neck_conv1(xs))))
