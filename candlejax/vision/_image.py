"""Image loading and transforms: PIL / numpy in, ``(3, H, W)`` u8 or f32 Tensors out.

requires: numpy, PIL, jax.image, candlejax.tensor
provides: ``ImageError``, ``open_rgb``, ``load_image``, ``image_to_tensor``, ``resize_center_crop``,
``imagenet_normalize``, ``load_image224``, ``Letterbox``, ``letterbox``, ``scale_boxes``,
``scale_keypoints``
"""

from __future__ import annotations

import functools
import io
import math
import operator
import os
import sys
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax.device import Device
from candlejax.errors import ImageError, ImageIsADirectory, ImageNoSuchFile
from candlejax.optional import require
from candlejax.tensor import Tensor, unwrap, wrap

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _np(x: Any) -> np.ndarray:
    return np.asarray(unwrap(x))


def check_image(img: Any, where: str = "image") -> np.ndarray:
    """``img`` as a numpy ``(3, H, W)`` u8 array, or an :class:`ImageError` naming what is wrong."""
    a = _np(img)
    if a.ndim != 3 or a.shape[0] != 3:
        hint = " (an (H, W, 3) array: use image_to_tensor)" if a.ndim == 3 and a.shape[-1] in (1, 3, 4) else ""
        raise ImageError(f"{where}: expected a (3, H, W) RGB image, got shape {errors.fmt_shape(a.shape)}{hint}")
    if a.dtype != np.uint8:
        raise ImageError(f"{where}: expected dtype u8, got {a.dtype}")
    if a.shape[1] == 0 or a.shape[2] == 0:
        raise ImageError(f"{where}: the image is empty ({errors.fmt_shape(a.shape)})")
    return a


def _hw(size: Any, where: str) -> tuple[int, int]:
    """``size`` (an int for a square, or ``(h, w)``) as two positive ints, or an :class:`ImageError`."""
    try:
        h, w = (size, size) if isinstance(size, int | np.integer) else tuple(size)
        h, w = operator.index(h), operator.index(w)
    except (TypeError, ValueError):
        raise ImageError(f"{where}: size must be an int or an (h, w) pair of ints, got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ImageError(f"{where}: size must be positive, got {size}")
    return h, w


def image_to_tensor(img: Any, device: Device | str | None = None) -> Any:
    """A PIL image or an ``(H, W, 3)`` / ``(H, W)`` u8 array -> ``(3, H, W)`` u8 Tensor (RGB).

    A PIL image is converted as :func:`load_image` converts a file (16-bit grey scaled to 8 bits,
    see :func:`_to_rgb8`), so ``Image.open(f)`` and ``load_image(f)`` give the same pixels.
    """
    pil = sys.modules.get("PIL.Image")  # a PIL image means Pillow is imported; arrays need no Pillow
    if pil is not None and isinstance(img, pil.Image):
        if img.width == 0 or img.height == 0:
            raise ImageError(f"image_to_tensor: the image is empty ({img.width}x{img.height})")
        try:
            img = np.asarray(_to_rgb8(img))  # as load_image: Image.open(f) gives the pixels load_image(f) gives
        except ValueError as e:  # a mode Pillow has no RGB conversion for ("La", ...)
            raise ImageError(f"image_to_tensor: cannot convert a PIL image of mode {img.mode!r} to RGB ({e})") from None
    a = _np(img)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ImageError(f"image_to_tensor: expected (H, W, 3) RGB pixels, got shape {errors.fmt_shape(a.shape)}")
    if a.dtype != np.uint8:
        raise ImageError(f"image_to_tensor: expected u8 pixels, got {a.dtype}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"image_to_tensor: the image is empty ({errors.fmt_shape(a.shape)})")
    chw = np.ascontiguousarray(a.transpose(2, 0, 1))
    return wrap(jax.device_put(chw, Device.coerce(device).jax_device))


def _to_rgb8(im: Any) -> Any:
    """A decoded PIL image as 8-bit RGB, as the ``image`` crate's ``to_rgb8``.

    Pillow's ``convert("RGB")`` clips 16-bit grey (modes ``I;16*``, and ``I``, which Pillow uses
    for 16-bit PGM) at 255, turning most of the image white; these are scaled instead, a sample
    ``v`` becoming ``round(v * 255 / 65535) = (v + 128) // 257`` (values outside ``[0, 65535]``
    clipped first). Every other mode goes through ``convert("RGB")``.
    """
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode == "I":
        v = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        return Image.fromarray(((v + 128) // 257).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")


def open_rgb(path: str | os.PathLike[str], where: str = "load_image") -> Any:
    """Decode an image file as an 8-bit RGB ``PIL.Image`` (16-bit grey scaled, see :func:`_to_rgb8`);
    an :class:`ImageError` naming ``where`` and the file when it is missing or unreadable."""
    require("PIL", f"{where} (decoding image files)")
    from PIL import Image, UnidentifiedImageError

    p = errors.path_arg(path, where)
    if os.path.isdir(p):
        raise ImageIsADirectory(where, p, message=f"{where}: {p!r} is a directory, not an image file")
    if not os.path.isfile(p):
        raise ImageNoSuchFile(where, p, message=f"{where}: no such file {p!r}")
    try:
        # decoded from memory: a corrupt chunk length (PNG) then reads at most the file's bytes, where a
        # file object's read(n) first allocated n (4 GiB for a 0xff000015-byte IDAT)
        with open(p, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _to_rgb8(im)
    except UnidentifiedImageError:
        raise ImageError(f"{where}: {p!r} is not a readable image (no image format Pillow knows)") from None
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{where}: {p!r} is not a readable image ({type(e).__name__}: {e})") from e


def load_image(path: str | os.PathLike[str], device: Device | str | None = None) -> Any:
    """Read an image file as a ``(3, H, W)`` u8 RGB Tensor (Candle's ``candle_examples::load_image``).

    Grey, palette and RGBA files become RGB (alpha dropped); 16-bit grey samples are scaled to 8
    bits (``(v + 128) // 257``, as Candle's ``to_rgb8``), where Pillow's own conversion clips them.
    """
    return image_to_tensor(open_rgb(path, "load_image"), device)


@functools.lru_cache(maxsize=64)
def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, ...]:
    """The two input taps (indices i0, i1, weights w0, w1) of each output of a linear resize along one
    axis: half-pixel centres, edges clamped (cv2 INTER_LINEAR, ``jax.image.resize`` "linear")."""
    f32 = np.float32
    f = np.clip((np.arange(n_out, dtype=f32) + f32(0.5)) * (f32(1) / f32(n_out / n_in)) - f32(0.5), 0, n_in - 1)
    i0 = np.minimum(np.floor(f).astype(np.int32), n_in - 1)
    w1 = (f - i0).astype(np.float32)
    return i0, np.minimum(i0 + 1, n_in - 1), (1 - w1).astype(np.float32), w1


@jax.jit
def _resize_u8_taps(a: Any, rows: tuple[Any, ...], cols: tuple[Any, ...]) -> Any:
    (i0, i1, w0, w1), (j0, j1, v0, v1) = rows, cols
    x = a.astype(jnp.float32)
    x = x[:, i0, :] * w0[:, None] + x[:, i1, :] * w1[:, None]
    x = x[:, :, j0] * v0 + x[:, :, j1] * v1
    return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


def _side_bucket(n: int) -> int:
    """``n`` rounded up to 64 or to the next of 2^k x {1, 1.25, 1.5, 1.75} (at most 25% more)."""
    if n <= 64:
        return 64
    q = (1 << (n.bit_length() - 1)) >> 2
    return -(-n // q) * q


def _padded_taps(n_in: int, n_out: int) -> tuple[np.ndarray, ...]:
    """:func:`_linear_taps` padded to :func:`_side_bucket` outputs (index 0, weight 0)."""
    return tuple(np.pad(t, (0, _side_bucket(n_out) - n_out)) for t in _linear_taps(n_in, n_out))


def _resize_u8(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of a ``(C, H, W)`` u8 array (half-pixel centres, no antialias: cv2 INTER_LINEAR).

    Two taps per output and axis (``jax.image.resize(..., "linear", antialias=False)`` without its
    dense weight matrices: 15x faster at 512² -> 640², equal up to f32 rounding). The image and the
    output are padded to bucketed sides (:func:`_side_bucket`), so that photos of new sizes reuse a
    compiled program; the padding is never read, and is sliced off on the host.
    """
    if (h, w) == a.shape[1:]:
        return a
    hi, wi = a.shape[1:]
    a = np.pad(a, ((0, 0), (0, _side_bucket(hi) - hi), (0, _side_bucket(wi) - wi)))
    return np.asarray(_resize_u8_taps(a, _padded_taps(hi, h), _padded_taps(wi, w)))[:, :h, :w]


def resize_center_crop(img: Any, size: int) -> Any:
    """Resize the shorter side to ``size`` (bilinear, antialiased) and crop the centre ``size x size``.

    Candle: ``image.resize_to_fill(size, size, Triangle)``: the longer side becomes ``long * size /
    short`` rounded half away from zero (Rust's ``f64::round``; torchvision's ``Resize(size)``
    truncates instead, so the two differ by a pixel when the fraction is ``>= 0.5``).
    ``(3, H, W)`` u8 -> ``(3, size, size)`` u8 on the same device.
    """
    Image = require("PIL.Image", "resize_center_crop")

    a = check_image(img, "resize_center_crop")
    if not isinstance(size, int | np.integer):
        raise ImageError(f"resize_center_crop: size must be an int, got {size!r}")
    size = _hw(size, "resize_center_crop")[0]
    h, w = a.shape[1:]
    r = size / min(h, w)
    nh, nw = max(size, math.floor(h * r + 0.5)), max(size, math.floor(w * r + 0.5))  # f64::round, not round-half-even
    im = Image.fromarray(a.transpose(1, 2, 0)).resize((nw, nh), Image.Resampling.BILINEAR)
    top, left = (nh - size) // 2, (nw - size) // 2
    crop = np.asarray(im)[top : top + size, left : left + size]
    dev = img.device if isinstance(img, Tensor) else None
    return image_to_tensor(crop, dev)


def imagenet_normalize(img: Any) -> Any:
    """u8 ``(..., 3, H, W)`` -> f32 ``(x / 255 - mean) / std`` with ImageNet's mean and std."""
    x = jnp.asarray(unwrap(img))
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ImageError(f"imagenet_normalize: expected (..., 3, H, W), got shape {errors.fmt_shape(x.shape)}")
    if x.dtype == jnp.uint8:
        x = x.astype(jnp.float32) / 255.0
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32).reshape(3, 1, 1)
    std = jnp.asarray(IMAGENET_STD, jnp.float32).reshape(3, 1, 1)
    return wrap((x.astype(jnp.float32) - mean) / std)


def load_image224(path: str | os.PathLike[str], device: Device | str | None = None) -> Any:
    """Candle's ``imagenet::load_image224``: ``(3, 224, 224)`` f32, ImageNet-normalised."""
    return imagenet_normalize(resize_center_crop(load_image(path, device), 224))


@dataclass(frozen=True)
class Letterbox:
    """How an image was letterboxed: original ``(h, w)``, new ``(h, w)``, scale ``gain``, ``pad`` (left, top)."""

    orig_shape: tuple[int, int]
    shape: tuple[int, int]
    gain: float
    pad: tuple[int, int]


def letterbox(img: Any, imgsz: int | tuple[int, int] = 640, *, stride: int = 32, auto: bool = True,
              fill: int = 114) -> tuple[Any, Letterbox]:  # fmt: skip
    """Ultralytics' ``LetterBox``: scale to fit ``imgsz`` keeping the aspect ratio, pad with grey ``fill``.

    With ``auto`` (the predictor's default for PyTorch models) the padding is the least that makes
    both sides multiples of ``stride``. Returns ``((3, h, w) u8 Tensor, Letterbox)``.
    """
    a = check_image(img, "letterbox")
    nh_, nw_ = _hw(imgsz, "letterbox")
    if not isinstance(stride, int | np.integer) or stride <= 0:
        raise ImageError(f"letterbox: stride must be a positive int, got {stride!r}")
    h, w = a.shape[1:]
    r = min(nh_ / h, nw_ / w)
    uw, uh = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = nw_ - uw, nh_ - uh
    if auto:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    resized = _resize_u8(a, uh, uw)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    out = np.pad(resized, ((0, 0), (top, bottom), (left, right)), constant_values=fill)
    dev = img.device if isinstance(img, Tensor) else None
    return image_to_tensor(out.transpose(1, 2, 0), dev), Letterbox((h, w), out.shape[1:], r, (left, top))


def _gain_pad(lb: Letterbox) -> tuple[float, float, int, int]:
    """Per-axis resize ratios and the (left, top) pad of ``lb``, from the gain the image was resized
    with (the padded shape's ratio, which Ultralytics recomputes, is smaller where a side's rounding
    lost part of a pixel and no padding followed: 101 x 2000 at 640 gives 32/101, not 0.32)."""
    h0, w0 = lb.orig_shape
    nh, nw = max(round(h0 * lb.gain), 1), max(round(w0 * lb.gain), 1)  # the resized size, as LetterBox rounds it
    return nw / w0, nh / h0, lb.pad[0], lb.pad[1]


def scale_boxes(boxes: Any, lb: Letterbox) -> np.ndarray:
    """Ultralytics' ``scale_boxes``: xyxy boxes in the letterboxed image -> original pixels (clipped).

    Each axis is divided by its own resize ratio (``round(w * gain) / w``), where Ultralytics divides
    both by ``gain``: the letterboxed content's edges map exactly onto the original's (see
    docs/differences/models-yolo.md)."""
    b = np.array(_np(boxes), np.float32, copy=True)
    if b.ndim == 0 or b.shape[-1] != 4:
        raise errors.UnexpectedShape("scale_boxes: boxes must be (..., 4) xyxy", (-1, 4), b.shape)
    gx, gy, px, py = _gain_pad(lb)
    b[..., [0, 2]] = (b[..., [0, 2]] - px) / gx
    b[..., [1, 3]] = (b[..., [1, 3]] - py) / gy
    h0, w0 = lb.orig_shape
    b[..., [0, 2]] = b[..., [0, 2]].clip(0, w0)
    b[..., [1, 3]] = b[..., [1, 3]].clip(0, h0)
    return b


def scale_keypoints(kpts: Any, lb: Letterbox) -> np.ndarray:
    """Ultralytics' ``scale_coords`` on ``(..., K, 2|3)`` keypoints (x, y[, conf]) -> original pixels.

    The same mapping as :func:`scale_boxes` (the letterbox's rounded pad, a ratio per axis), where
    Ultralytics removes the unrounded pad and divides by ``gain``."""
    k = np.array(_np(kpts), np.float32, copy=True)
    if k.ndim < 2 or k.shape[-1] not in (2, 3):
        raise errors.UnexpectedShape("scale_keypoints: keypoints must be (..., K, 2|3)", (-1, 3), k.shape)
    gx, gy, px, py = _gain_pad(lb)
    k[..., 0] = ((k[..., 0] - px) / gx).clip(0, lb.orig_shape[1])
    k[..., 1] = ((k[..., 1] - py) / gy).clip(0, lb.orig_shape[0])
    return k
