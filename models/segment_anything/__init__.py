"""Segment Anything (SAM) and MobileSAM (~ candle-transformers' ``models::segment_anything``).

Usage::

    from candlejax.models import segment_anything as sam
    model = sam.Sam.new_tiny(VarBuilder.from_pth("mobile_sam.pt", DType.F32, Device.Cpu))
    img = sam.load_image("photo.jpg", Device.Cpu)                    # (3, h, w) u8, longest side 1024
    emb = model.embeddings(img)                                      # (1, 256, 64, 64)
    low, iou = model.forward_for_embeddings(emb, h, w, [(0.45, 0.3, True)], True)  # (1, 3, 256, 256), (1, 3)
    mask, iou = model.forward(img, [(0.45, 0.3, True)], False)       # logits at the image's size
    for m in sam.generate_masks(model, img, points_per_side=32): ...
    model = sam.Sam.from_pretrained("sam-vit-base")                  # transformers' SamModel folder

Shell: ``python -m candlejax.models.segment_anything IMAGE --point X,Y [--auto] --out mask.png``
(= ``candlejax segment``).
"""

from candlejax.nn import Linear

from .common import LayerNorm2d, MlpBlock, linear
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import IMAGE_SIZE, VARIANTS, Bbox, Sam, default_weights, generate_masks, load_image, load_model
from .tiny_vit import TinyViT, tiny_vit_5m
from .transformer import TwoWayTransformer
from .transformers_layout import SamArch, arch_from_config, is_transformers_layout, sam_to_transformers

__all__ = [
    "IMAGE_SIZE",
    "VARIANTS",
    "Bbox",
    "ImageEncoderViT",
    "LayerNorm2d",
    "Linear",
    "MaskDecoder",
    "MlpBlock",
    "PromptEncoder",
    "Sam",
    "SamArch",
    "TinyViT",
    "TwoWayTransformer",
    "arch_from_config",
    "default_weights",
    "generate_masks",
    "is_transformers_layout",
    "linear",
    "load_image",
    "load_model",
    "sam_to_transformers",
    "tiny_vit_5m",
]
