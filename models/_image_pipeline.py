"""Image preprocessing for CLIP and BLIP (transformers' ``CLIPImageProcessor`` / ``BlipImageProcessor``).

CLIP: resize the shortest side to ``size`` (bicubic), center-crop ``crop`` x ``crop``, scale to
[0, 1], normalise with OpenAI's CLIP mean and std. BLIP: resize to ``size`` x ``size`` (bicubic),
then the same scaling and normalisation. Images are a path, a ``PIL.Image`` or a ``(H, W, 3)``
uint8 array; an already preprocessed float ``(3, S, S)`` / ``(B, 3, S, S)`` Tensor or array passes
through unchanged (the model checks its size). Pillow does the resizing, as in transformers.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from candlejax import errors
from candlejax.tensor import Tensor

__all__ = ["OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "load_image", "pixels_blip", "pixels_clip", "to_pixel_batch"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow is in the test requirements
        raise errors.Msg("image preprocessing needs Pillow: pip install pillow") from e
    return Image


def load_image(path: str | os.PathLike) -> Any:
    """Open an image file as an RGB ``PIL.Image``; a missing or unreadable file raises naming it."""
    image_mod = _pil()
    try:
        with image_mod.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise errors.Msg(f"cannot read image {os.fspath(path)!r}: {e}") from e


def _as_pil(image: Any) -> Any:
    image_mod = _pil()
    if isinstance(image, str | os.PathLike):
        return load_image(image)
    if isinstance(image, image_mod.Image):
        return image.convert("RGB")
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or min(a.shape[:2]) == 0:
        raise errors.Msg(
            f"image must be a path, a PIL image or an (H, W, 3) uint8 array, got an array of shape {a.shape}"
            f" and dtype {a.dtype}"
        )
    return image_mod.fromarray(a, "RGB")


def _normalize(im: Any) -> Tensor:
    a = np.asarray(im, dtype=np.float32) * np.float32(1 / 255)
    a = (a - np.asarray(OPENAI_CLIP_MEAN, np.float32)) / np.asarray(OPENAI_CLIP_STD, np.float32)
    return Tensor.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)[None]))  # (1, 3, H, W)


def _is_pixels(image: Any) -> bool:
    if isinstance(image, Tensor):
        return True
    return hasattr(image, "dtype") and hasattr(image, "ndim") and np.issubdtype(np.dtype(image.dtype), np.floating)


def to_pixel_batch(image: Any) -> Tensor:
    """A preprocessed float image ``(3, S, S)`` or batch ``(B, 3, S, S)`` as a 4-D Tensor."""
    t = image if isinstance(image, Tensor) else Tensor.from_numpy(np.asarray(image))
    return t.unsqueeze(0) if t.rank == 3 else t


def pixels_clip(image: Any, size: int = 224, crop: int | None = None) -> Tensor:
    """``CLIPImageProcessor``: shortest side to ``size``, center crop, normalise -> ``(1, 3, crop, crop)``."""
    if _is_pixels(image):
        return to_pixel_batch(image)
    crop = size if crop is None else crop
    im = _as_pil(image)
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    im = im.resize((new_w, new_h), resample=_pil().Resampling.BICUBIC)
    a = np.asarray(im)
    if new_h < crop or new_w < crop:  # transformers pads a too-small image with zeros
        ph, pw = max(crop, new_h), max(crop, new_w)
        pad = np.zeros((ph, pw, 3), np.uint8)
        top, left = -(-(ph - new_h) // 2), -(-(pw - new_w) // 2)
        pad[top : top + new_h, left : left + new_w] = a
        a, new_h, new_w = pad, ph, pw
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    return _normalize(a[top : top + crop, left : left + crop])


def pixels_blip(image: Any, size: int = 384) -> Tensor:
    """``BlipImageProcessor``: resize to ``size`` x ``size`` (bicubic), normalise -> ``(1, 3, size, size)``."""
    if _is_pixels(image):
        return to_pixel_batch(image)
    im = _as_pil(image).resize((size, size), resample=_pil().Resampling.BICUBIC)
    return _normalize(im)
