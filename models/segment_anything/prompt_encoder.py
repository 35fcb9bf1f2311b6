"""SAM's prompt encoder (~ candle-transformers' ``segment_anything/prompt_encoder.rs``).

Mirrors ``segment_anything/modeling/prompt_encoder.py``: points and box corners are encoded with
random Fourier features (``pe_layer.positional_encoding_gaussian_matrix``) plus a learned
embedding per kind (negative / positive point, top-left / bottom-right corner, padding); a mask
prompt is downscaled 4x by convolutions, else ``no_mask_embed`` fills the dense embedding.
"""

from __future__ import annotations

import math

from candlejax.nn import Activation, Conv2dConfig, Module, VarBuilder, conv2d, embedding
from candlejax.tensor import Tensor

from .common import LayerNorm2d

__all__ = ["PositionEmbeddingRandom", "PromptEncoder"]


class PositionEmbeddingRandom(Module):
    """Random spatial-frequency positional encoding: ``[sin, cos](2π (2c - 1) @ G)``."""

    def __init__(self, num_pos_feats: int, vb: VarBuilder):
        self.positional_encoding_gaussian_matrix = vb.get((2, num_pos_feats), "positional_encoding_gaussian_matrix")

    def pe_encoding(self, coords: Tensor) -> Tensor:
        """``coords`` in [0, 1], shape ``(..., 2)`` -> ``(..., 2 * num_pos_feats)``."""
        g = self.positional_encoding_gaussian_matrix
        shape = coords.dims()
        c = (coords * 2.0 - 1.0).reshape((-1, 2)).matmul(g) * (2.0 * math.pi)
        c = c.reshape((*shape[:-1], g.dims()[1]))
        return Tensor.cat([c.sin(), c.cos()], -1)

    def forward(self, h: int, w: int) -> Tensor:
        """The encoding of an ``h x w`` grid of cell centres, ``(C, h, w)``."""
        dev = self.positional_encoding_gaussian_matrix.device
        x = (Tensor.arange(0, w, dev).to_dtype("f32") + 0.5) / float(w)
        y = (Tensor.arange(0, h, dev).to_dtype("f32") + 0.5) / float(h)
        x = x.reshape((1, w, 1)).broadcast_as((h, w, 1))
        y = y.reshape((h, 1, 1)).broadcast_as((h, w, 1))
        return self.pe_encoding(Tensor.cat([x, y], 2)).permute((2, 0, 1))

    def forward_with_coords(self, coords: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Pixel coordinates ``(B, N, 2)`` (x, y) in an image of ``image_size`` (h, w)."""
        scale = Tensor.new([1.0 / image_size[1], 1.0 / image_size[0]], coords.device)
        return self.pe_encoding(coords.broadcast_mul(scale))


class PromptEncoder(Module):
    """Candle's ``PromptEncoder::new(embed_dim, image_embedding_size, input_image_size, mask_in_chans, vb)``."""

    def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int], input_image_size: tuple[int, int],
                 mask_in_chans: int, vb: VarBuilder):  # fmt: skip
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2, vb.pp("pe_layer"))
        # Candle's candle_nn::embedding tables (N(0, 1) in a fresh VarMap), kept as their weights
        self.point_embeddings = [embedding(1, embed_dim, vb.pp("point_embeddings").pp(i)).weight for i in range(4)]
        self.not_a_point_embed = embedding(1, embed_dim, vb.pp("not_a_point_embed")).weight
        self.no_mask_embed = embedding(1, embed_dim, vb.pp("no_mask_embed")).weight
        vb_m = vb.pp("mask_downscaling")
        cfg = Conv2dConfig(stride=2)
        self.mask_downscaling_conv1 = conv2d(1, mask_in_chans // 4, 2, cfg, vb_m.pp(0))
        self.mask_downscaling_ln1 = LayerNorm2d.new(mask_in_chans // 4, 1e-6, vb_m.pp(1))
        self.mask_downscaling_conv2 = conv2d(mask_in_chans // 4, mask_in_chans, 2, cfg, vb_m.pp(3))
        self.mask_downscaling_ln2 = LayerNorm2d.new(mask_in_chans, 1e-6, vb_m.pp(4))
        self.mask_downscaling_conv3 = conv2d(mask_in_chans, embed_dim, 1, Conv2dConfig(), vb_m.pp(6))
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)

    @classmethod
    def new(cls, embed_dim: int, image_embedding_size: tuple[int, int], input_image_size: tuple[int, int],
            mask_in_chans: int, vb: VarBuilder) -> PromptEncoder:  # fmt: skip
        """Candle's ``PromptEncoder::new(embed_dim, image_embedding_size, input_image_size, mask_in_chans, vb)``."""
        return cls(embed_dim, image_embedding_size, input_image_size, mask_in_chans, vb)

    def get_dense_pe(self) -> Tensor:
        """The encoding of the image-embedding grid, ``(1, embed_dim, 64, 64)``."""
        return self.pe_layer.forward(*self.image_embedding_size).unsqueeze(0)

    def embed_masks(self, masks: Tensor) -> Tensor:
        """Candle's ``PromptEncoder::embed_masks``: ``(B, 1, 4H, 4W)`` masks in, ``(B, embed_dim, H, W)`` out."""
        gelu = Activation("Gelu")
        xs = gelu(self.mask_downscaling_ln1(self.mask_downscaling_conv1(masks)))
        xs = gelu(self.mask_downscaling_ln2(self.mask_downscaling_conv2(xs)))
        return self.mask_downscaling_conv3(xs)

    def embed_points(self, points: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """Points ``(B, N, 2)`` in input-image pixels, labels ``(B, N)``: 1 foreground, 0 background,
        -1 padding. ``pad`` appends a padding point (when no box follows)."""
        points = points + 0.5  # centre of the pixel
        if pad:
            points = Tensor.cat([points, points.zeros_like().narrow(1, 0, 1)], 1)
            labels = Tensor.cat([labels, labels.ones_like().narrow(1, 0, 1) * -1.0], 1)
        pe = self.pe_layer.forward_with_coords(points, self.input_image_size)
        lab = labels.unsqueeze(2)
        is_pad, is_neg, is_pos = ((lab == v).to_dtype(pe.dtype) for v in (-1.0, 0.0, 1.0))
        pe = pe * (1.0 - is_pad) + is_pad * self.not_a_point_embed
        pe = pe + is_neg * self.point_embeddings[0] + is_pos * self.point_embeddings[1]
        return pe

    def embed_boxes(self, boxes: Tensor) -> Tensor:
        """Boxes ``(B, 4)`` as x0, y0, x1, y1 in input-image pixels -> two corner tokens ``(B, 2, C)``."""
        coords = (boxes + 0.5).reshape((-1, 2, 2))
        pe = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        corner = Tensor.cat([self.point_embeddings[2], self.point_embeddings[3]], 0).unsqueeze(0)
        return pe.broadcast_add(corner)

    def forward(self, points: tuple[Tensor, Tensor] | None, boxes: Tensor | None,
                masks: Tensor | None) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Sparse ``(B, N, C)`` and dense ``(B, C, 64, 64)`` embeddings of the prompts."""
        parts = []
        if points is not None:
            parts.append(self.embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            parts.append(self.embed_boxes(boxes))
        bs = points[0].dims()[0] if points is not None else boxes.dims()[0] if boxes is not None else (
            masks.dims()[0] if masks is not None else 1)  # fmt: skip
        emb = self.no_mask_embed
        sparse = Tensor.cat(parts, 1) if parts else Tensor.zeros((bs, 0, self.embed_dim), emb.dtype, emb.device)
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.reshape((1, -1, 1, 1)).broadcast_as((bs, self.embed_dim, h, w))
        return sparse, dense
