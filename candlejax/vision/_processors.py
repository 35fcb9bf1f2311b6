"""The steps of transformers' image processors (``CLIPImageProcessor``, ``BlipImageProcessor``):
any image in, resize with Pillow (as transformers does), center crop, normalise.

requires: numpy, PIL, jax.numpy, candlejax.tensor, candlejax.vision._image
provides: ``OPENAI_CLIP_MEAN``, ``OPENAI_CLIP_STD``, ``as_image``, ``as_pixel_batch``, ``resize``,
``resize_shortest``, ``center_crop``, ``normalize``

Images are ``(3, H, W)`` u8 Tensors (as :func:`load_image` returns them); :func:`as_image` also
takes a path, a ``PIL.Image`` or an ``(H, W, 3)`` uint8 array.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax.optional import require
from candlejax.tensor import Tensor, unwrap, wrap
from candlejax.vision._image import ImageError, _hw, check_image, image_to_tensor, load_image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = ("nearest", "bilinear", "bicubic", "lanczos")


def as_image(img: Any, where: str = "image") -> Any:
    """``img`` as a ``(3, H, W)`` u8 Tensor: a path (read with :func:`load_image`), a ``PIL.Image``,
    an ``(H, W, 3)`` / ``(H, W)`` uint8 array, or a ``(3, H, W)`` u8 Tensor (checked)."""
    if isinstance(img, str | os.PathLike):
        return load_image(img)
    pil = sys.modules.get("PIL.Image")  # a PIL image means Pillow is imported; arrays need no Pillow
    if pil is not None and isinstance(img, pil.Image):
        return image_to_tensor(img)
    if isinstance(img, Tensor):
        check_image(img, where)
        return img
    try:
        a = np.asarray(img)
    except ValueError:  # a ragged list (images of different sizes)
        raise ImageError(
            f"{where}: an image is a path, a PIL image, an (H, W, 3) uint8 array or a (3, H, W) u8 Tensor;"
            f" got a {type(img).__name__} of items of different shapes (pass one image at a time)"
        ) from None
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3) or a.dtype != np.uint8 or 0 in a.shape:
        raise ImageError(
            f"{where}: an image is a path, a PIL image, an (H, W, 3) uint8 array or a (3, H, W) u8 Tensor;"
            f" got an array of shape {errors.fmt_shape(a.shape)} and dtype {a.dtype}"
        )
    return image_to_tensor(a)


def as_pixel_batch(x: Any, size: int | None = None, where: str = "preprocess") -> Any:
    """Already preprocessed float pixels ``(3, S, S)`` / ``(B, 3, S, S)`` as a 4-D Tensor (float64
    arrays as f32); ``None`` when ``x`` is not a float Tensor or array (an image to preprocess).
    With ``size``, float pixels of another shape than ``(B, 3, size, size)`` raise, naming ``where``."""
    t = _pixel_batch(x)
    if t is not None and size is not None and (t.rank != 4 or tuple(t.dims()[1:]) != (3, size, size)):
        raise errors.UnexpectedShape(
            f"{where}: float pixels are taken as preprocessed, (3, {size}, {size}) or (batch, 3, {size}, {size});"
            " pass an (H, W, 3) uint8 array, a PIL image or a path to resize and normalise an image",
            (3, size, size), x.dims() if isinstance(x, Tensor) else np.shape(x),
        )  # fmt: skip
    return t


def _pixel_batch(x: Any) -> Any:
    if isinstance(x, Tensor):
        if not x.dtype.is_float():
            return None
        t = x
    elif hasattr(x, "dtype") and hasattr(x, "ndim") and np.issubdtype(np.dtype(x.dtype), np.floating):
        a = np.asarray(x)
        t = Tensor.from_numpy(a.astype(np.float32) if a.dtype == np.float64 else a)
    else:
        return None
    return t.unsqueeze(0) if t.rank == 3 else t


def _pil_resize(a: np.ndarray, h: int, w: int, interpolation: str, where: str) -> np.ndarray:
    Image = require("PIL.Image", f"{where} (resizing)")

    if interpolation not in _RESAMPLE:
        raise ImageError(f"{where}: unknown interpolation {interpolation!r} (known: {', '.join(_RESAMPLE)})")
    resample = getattr(Image.Resampling, interpolation.upper())
    return np.asarray(Image.fromarray(a.transpose(1, 2, 0)).resize((w, h), resample=resample)).transpose(2, 0, 1)


def _like(a: np.ndarray, img: Any) -> Any:
    dev = img.device if isinstance(img, Tensor) else None
    return image_to_tensor(np.ascontiguousarray(a.transpose(1, 2, 0)), dev)


def resize(img: Any, size: int | Sequence[int], interpolation: str = "bilinear") -> Any:
    """Resize to ``size`` (an int for a square, or ``(h, w)``) with Pillow (antialiased when
    shrinking, as transformers' processors and ``PIL.Image.resize``). ``(3, H, W)`` u8 ->
    ``(3, h, w)`` u8. torchvision: ``transforms.functional.resize(img, [h, w])``."""
    a = check_image(img, "resize")
    h, w = _hw(size, "resize")
    return _like(_pil_resize(a, h, w, interpolation, "resize"), img)


def resize_shortest(img: Any, size: int, interpolation: str = "bicubic") -> Any:
    """Resize so that the shorter side is ``size``, the longer ``int(size * long / short)``
    (transformers' ``shortest_edge`` resize; torchvision: ``Resize(size)``)."""
    a = check_image(img, "resize_shortest")
    if not isinstance(size, int | np.integer):
        raise ImageError(f"resize_shortest: size must be an int (the shorter side), got {size!r}")
    _hw(size, "resize_shortest")
    h, w = a.shape[1:]
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = int(size), int(size * long / short)
    nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
    return _like(_pil_resize(a, nh, nw, interpolation, "resize_shortest"), img)


def center_crop(img: Any, size: int | Sequence[int]) -> Any:
    """The centre ``size`` (int or ``(h, w)``) of the image; a smaller image is first padded with
    zeros around it, as transformers' ``center_crop``. ``(3, H, W)`` u8 -> ``(3, h, w)`` u8."""
    a = check_image(img, "center_crop")
    ch, cw = _hw(size, "center_crop")
    h, w = a.shape[1:]
    if h < ch or w < cw:
        ph, pw = max(ch, h), max(cw, w)
        pad = np.zeros((3, ph, pw), np.uint8)
        top, left = -(-(ph - h) // 2), -(-(pw - w) // 2)
        pad[:, top : top + h, left : left + w] = a
        a, h, w = pad, ph, pw
    top, left = (h - ch) // 2, (w - cw) // 2
    return _like(a[:, top : top + ch, left : left + cw], img)


def normalize(img: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """``(x / 255 - mean) / std`` per channel: u8 ``(..., 3, H, W)`` -> f32 (a float image is taken
    as already in [0, 1]). torchvision: ``Normalize(mean, std)`` after ``ToTensor()``."""
    x = unwrap(img) if isinstance(img, Tensor) else jnp.asarray(img)
    if x.ndim < 3 or x.shape[-3] != len(mean) or len(mean) != len(std):
        raise ImageError(
            f"normalize: expected (..., {len(mean)}, H, W) for {len(mean)} means and {len(std)} stds,"
            f" got shape {errors.fmt_shape(x.shape)}"
        )
    x = x.astype(jnp.float32) * jnp.float32(1 / 255) if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    m = jnp.asarray(mean, jnp.float32).reshape(-1, 1, 1)
    s = jnp.asarray(std, jnp.float32).reshape(-1, 1, 1)
    return wrap((x - m) / s)
