"""SAM's two-way transformer (~ candle-transformers' ``segment_anything/transformer.rs``).

Mirrors ``segment_anything/modeling/transformer.py``: prompt tokens and image tokens attend to each
other (token self-attention, token->image, MLP, image->token), with attention layers that project
to ``embedding_dim / downsample_rate`` channels.
"""

from __future__ import annotations

from candlejax.nn import Activation, LayerNorm, Module, VarBuilder, layer_norm, ops
from candlejax.tensor import Tensor

from .common import MlpBlock, linear

__all__ = ["Attention", "TwoWayAttentionBlock", "TwoWayTransformer"]


class Attention(Module):
    """Multi-head attention with q/k/v projected to ``embedding_dim // downsample_rate``."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int, vb: VarBuilder):
        internal = embedding_dim // downsample_rate
        self.q_proj = linear(vb.pp("q_proj"), embedding_dim, internal, True)
        self.k_proj = linear(vb.pp("k_proj"), embedding_dim, internal, True)
        self.v_proj = linear(vb.pp("v_proj"), embedding_dim, internal, True)
        self.out_proj = linear(vb.pp("out_proj"), internal, embedding_dim, True)
        self.num_heads = num_heads

    def _heads(self, xs: Tensor) -> Tensor:
        b, n, c = xs.dims3()
        return xs.reshape((b, n, self.num_heads, c // self.num_heads)).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # type: ignore[override]
        """``(B, Nq, dim)`` queries, ``(B, Nk, dim)`` keys and values in, ``(B, Nq, dim)`` out."""
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        out = ops.sdpa(q, k, v)  # scale 1/sqrt(c_per_head)
        b, h, n, c = out.dims4()
        return self.out_proj(out.transpose(1, 2).reshape((b, n, h * c)))


class TwoWayAttentionBlock(Module):
    """Candle's ``TwoWayAttentionBlock``: token self-attention, token-to-image and image-to-token cross-attention."""
    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool,
                 vb: VarBuilder, layer_norm_eps: float = 1e-5):  # fmt: skip
        self.self_attn = Attention(embedding_dim, num_heads, 1, vb.pp("self_attn"))
        self.norm1: LayerNorm = layer_norm(embedding_dim, layer_norm_eps, vb.pp("norm1"))
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, 2, vb.pp("cross_attn_token_to_image"))
        self.norm2: LayerNorm = layer_norm(embedding_dim, layer_norm_eps, vb.pp("norm2"))
        self.mlp = MlpBlock(embedding_dim, mlp_dim, Activation("Relu"), vb.pp("mlp"))
        self.norm3: LayerNorm = layer_norm(embedding_dim, layer_norm_eps, vb.pp("norm3"))
        self.norm4: LayerNorm = layer_norm(embedding_dim, layer_norm_eps, vb.pp("norm4"))
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, 2, vb.pp("cross_attn_image_to_token"))
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor,  # type: ignore[override]
                key_pe: Tensor) -> tuple[Tensor, Tensor]:  # fmt: skip
        """``(queries (B, Nq, dim), keys (B, Nk, dim))`` in, the updated ``(queries, keys)`` out."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(Module):
    """Candle's ``TwoWayTransformer::new(depth, embedding_dim, num_heads, mlp_dim, vb)``; ``layer_norm_eps``
    (SAM: 1e-5) is the blocks' LayerNorm eps (transformers' ``SamMaskDecoderConfig.layer_norm_eps``,
    default 1e-6; the final LayerNorm keeps 1e-5 in both)."""

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int, vb: VarBuilder,
                 layer_norm_eps: float = 1e-5):  # fmt: skip
        vb_l = vb.pp("layers")
        self.layers = [
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, i == 0, vb_l.pp(i), layer_norm_eps)
            for i in range(depth)
        ]
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, 2, vb.pp("final_attn_token_to_image"))
        self.norm_final_attn: LayerNorm = layer_norm(embedding_dim, 1e-5, vb.pp("norm_final_attn"))

    @classmethod
    def new(cls, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int, vb: VarBuilder) -> TwoWayTransformer:
        """Candle's ``TwoWayTransformer::new(depth, embedding_dim, num_heads, mlp_dim, vb)``."""
        return cls(depth, embedding_dim, num_heads, mlp_dim, vb)

    def forward(self, image_embedding: Tensor, image_pe: Tensor,  # type: ignore[override]
                point_embedding: Tensor) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Image ``(B, C, h, w)`` and its encoding, prompt tokens ``(B, N, C)`` -> (tokens, image tokens)."""
        image_embedding = image_embedding.flatten_from(2).permute((0, 2, 1))
        image_pe = image_pe.flatten_from(2).permute((0, 2, 1))
        queries, keys = point_embedding, image_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, image_pe)
        q, k = queries + point_embedding, keys + image_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
