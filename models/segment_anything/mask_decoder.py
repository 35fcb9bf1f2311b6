"""SAM's mask decoder (~ candle-transformers' ``segment_anything/mask_decoder.rs``).

Mirrors ``segment_anything/modeling/mask_decoder.py``: an IoU token and 4 mask tokens join the
prompt tokens in the two-way transformer; the image tokens are upscaled 4x by transposed
convolutions and dotted with per-token hypernetwork MLP outputs into low-resolution mask logits
``(B, masks, 256, 256)``; an MLP on the IoU token predicts each mask's quality.
"""

from __future__ import annotations

from candlejax.nn import Activation, ConvTranspose2dConfig, Module, VarBuilder, conv_transpose2d, embedding
from candlejax.tensor import Tensor

from .common import LayerNorm2d, linear
from .transformer import TwoWayTransformer

__all__ = ["MaskDecoder", "MlpMaskDecoder"]


class MlpMaskDecoder(Module):
    """``num_layers`` Linear layers with ReLU between them (SAM's ``MLP``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, sigmoid_output: bool,
                 vb: VarBuilder):  # fmt: skip
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        vb_l = vb.pp("layers")
        self.layers = [linear(vb_l.pp(i), dims[i], dims[i + 1], True) for i in range(num_layers)]
        self.sigmoid_output = sigmoid_output

    def forward(self, xs: Tensor) -> Tensor:
        """The MLP with ReLU between layers (and a sigmoid after the last when ``sigmoid_output``)."""
        for i, layer in enumerate(self.layers):
            xs = layer(xs)
            if i + 1 < len(self.layers):
                xs = xs.relu()
        return xs.sigmoid() if self.sigmoid_output else xs


class MaskDecoder(Module):
    """Candle's ``MaskDecoder::new(transformer_dim, num_multimask_outputs, iou_head_depth,
    iou_head_hidden_dim, vb)`` (a 2-layer, 8-head, 2048-MLP two-way transformer, as SAM);
    ``layer_norm_eps``: that transformer's blocks' LayerNorm eps (:class:`TwoWayTransformer`)."""

    def __init__(self, transformer_dim: int, num_multimask_outputs: int, iou_head_depth: int,
                 iou_head_hidden_dim: int, vb: VarBuilder, layer_norm_eps: float = 1e-5):  # fmt: skip
        d = transformer_dim
        self.num_mask_tokens = num_multimask_outputs + 1
        # Candle's candle_nn::embedding tables (N(0, 1) in a fresh VarMap), kept as their weights
        self.iou_token = embedding(1, d, vb.pp("iou_token")).weight
        self.mask_tokens = embedding(self.num_mask_tokens, d, vb.pp("mask_tokens")).weight
        cfg = ConvTranspose2dConfig(stride=2)
        vb_u = vb.pp("output_upscaling")
        self.output_upscaling_conv1 = conv_transpose2d(d, d // 4, 2, cfg, vb_u.pp(0))
        self.output_upscaling_ln = LayerNorm2d.new(d // 4, 1e-6, vb_u.pp(1))
        self.output_upscaling_conv2 = conv_transpose2d(d // 4, d // 8, 2, cfg, vb_u.pp(3))
        vb_h = vb.pp("output_hypernetworks_mlps")
        self.output_hypernetworks_mlps = [
            MlpMaskDecoder(d, d, d // 8, 3, False, vb_h.pp(i)) for i in range(self.num_mask_tokens)
        ]
        self.iou_prediction_head = MlpMaskDecoder(d, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth, False,
                                                  vb.pp("iou_prediction_head"))  # fmt: skip
        self.transformer = TwoWayTransformer(2, d, 8, 2048, vb.pp("transformer"), layer_norm_eps)

    @classmethod
    def new(cls, transformer_dim: int, num_multimask_outputs: int, iou_head_depth: int, iou_head_hidden_dim: int,
            vb: VarBuilder) -> MaskDecoder:  # fmt: skip
        """Candle's ``MaskDecoder::new(transformer_dim, num_multimask_outputs, iou_head_depth,
        iou_head_hidden_dim, vb)``."""
        return cls(transformer_dim, num_multimask_outputs, iou_head_depth, iou_head_hidden_dim, vb)

    def forward(self, image_embeddings: Tensor, image_pe: Tensor, sparse_prompt_embeddings: Tensor,  # type: ignore[override]
                dense_prompt_embeddings: Tensor, multimask_output: bool) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Mask logits ``(B, 3 or 1, 256, 256)`` and IoU predictions ``(B, 3 or 1)``."""
        masks, iou_pred = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings,
                                             dense_prompt_embeddings)  # fmt: skip
        start, n = (1, self.num_mask_tokens - 1) if multimask_output else (0, 1)
        return masks.narrow(1, start, n), iou_pred.narrow(1, start, n)

    def predict_masks(self, image_embeddings: Tensor, image_pe: Tensor, sparse_prompt_embeddings: Tensor,
                      dense_prompt_embeddings: Tensor) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Candle's ``MaskDecoder::predict_masks``: every mask token's ``(masks (B, N, 4H, 4W), iou (B, N))``."""
        b = sparse_prompt_embeddings.dims()[0]
        output_tokens = Tensor.cat([self.iou_token, self.mask_tokens], 0)
        output_tokens = output_tokens.unsqueeze(0).broadcast_as((b, *output_tokens.dims()))
        tokens = Tensor.cat([output_tokens, sparse_prompt_embeddings], 1)
        _, c, h, w = image_embeddings.dims4()
        src = image_embeddings.broadcast_as((b, c, h, w)).broadcast_add(dense_prompt_embeddings)
        pos_src = image_pe.broadcast_as((b, c, h, w))
        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs.i((slice(None), 0))
        mask_tokens_out = hs.narrow(1, 1, self.num_mask_tokens)
        src = src.transpose(1, 2).reshape((b, c, h, w))
        gelu = Activation("Gelu")
        up = gelu(self.output_upscaling_ln(self.output_upscaling_conv1(src)))
        up = gelu(self.output_upscaling_conv2(up))
        hyper_in = Tensor.stack(
            [mlp(mask_tokens_out.i((slice(None), i))) for i, mlp in enumerate(self.output_hypernetworks_mlps)], 1
        )
        _, cu, hu, wu = up.dims4()
        masks = hyper_in.matmul(up.reshape((b, cu, hu * wu))).reshape((b, -1, hu, wu))
        return masks, self.iou_prediction_head(iou_token_out)
