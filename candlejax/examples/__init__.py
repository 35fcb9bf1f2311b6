"""``candlejax.examples``: the helpers of Candle's ``candle_examples`` crate (``candle-examples/src``).

requires: candlejax.device, candlejax.vision, candlejax.errors (Pillow through candlejax.vision)
provides: ``device``, ``load_image``, ``load_image_and_resize``, ``save_image``, ``save_image_resize``,
``hub_load_safetensors``, ``hub_load_local_safetensors``; the modules ``audio``, ``bs1770``,
``chat_template``, ``coco_classes``, ``imagenet``, ``token_output_stream``, ``wav``

Code ported from Candle's examples reads as it did::

    from candlejax import examples as candle_examples
    dev = candle_examples.device(args.cpu)
    image, h, w = candle_examples.load_image(path, 1024)        # (3, h', w') u8, original h, w
    x = candle_examples.imagenet.load_image224(path)             # (3, 224, 224) f32, normalised
    files = candle_examples.hub_load_local_safetensors(folder, "model.safetensors.index.json")

Images are resized with Pillow; its filters are the ``image`` crate's (``Triangle`` = bilinear,
``CatmullRom`` = bicubic, both antialiased when shrinking). Pillow rounds and clips to 0..255 between
its two passes where the ``image`` crate keeps the first pass in f32, so results agree to 1 level
except where Catmull-Rom overshoots past black or white (high-contrast corners, noise): there a few
pixels differ by up to ~20 levels.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from candlejax import errors, vision
from candlejax.device import Device
from candlejax.examples import (
    audio,
    bs1770,
    chat_template,
    coco_classes,
    imagenet,
    token_output_stream,
    wav,
)
from candlejax.io._checks import shard_outside
from candlejax.optional import require
from candlejax.tensor import int_arg

__all__ = [
    "audio", "bs1770", "chat_template", "coco_classes", "device", "hub_load_local_safetensors",
    "hub_load_safetensors", "imagenet", "load_image", "load_image_and_resize", "save_image", "save_image_resize",
    "token_output_stream", "wav",
]  # fmt: skip


def device(cpu: bool) -> Device:
    """``candle_examples::device(cpu)``: ``Device.Cpu`` when ``cpu``, else the first GPU JAX sees,
    else ``Device.Cpu`` (Candle also prints a hint then; this stays quiet)."""
    return Device.Cpu if cpu else Device.cuda_if_available(0)


def _positive(v: Any, op: str, what: str) -> int:
    """``v`` as a positive int (Candle's ``usize`` sizes), else a candlejax error naming ``op`` and ``what``."""
    n = int_arg(v, op, what)
    if n <= 0:
        raise errors.InvalidArgument(f"{op}: {what} must be positive, got {n}")
    return n


def load_image(p: str | os.PathLike[str], resize_longest: int | None = None) -> tuple[Any, int, int]:
    """``candle_examples::load_image(p, resize_longest)``: ``((3, h, w) u8 Tensor, original_h, original_w)``.

    With ``resize_longest`` the longer side becomes ``resize_longest`` and the other is scaled in
    proportion, rounded down (Candle's integer arithmetic); the resize is Catmull-Rom (Pillow's
    bicubic). Raises :class:`candlejax.vision.ImageError` naming the file when it is missing or not
    an image.
    """
    n = None if resize_longest is None else _positive(resize_longest, "load_image", "resize_longest")
    img = vision.load_image(p)
    h0, w0 = int(img.shape[1]), int(img.shape[2])
    if n is None:
        return img, h0, w0
    h, w = ((n * h0) // w0, n) if h0 < w0 else (n, (n * w0) // h0)
    return vision.resize(img, (h, w), "bicubic"), h0, w0


def _resize_to_fill(img: Any, width: int, height: int, interpolation: str) -> Any:
    """The ``image`` crate's ``resize_to_fill``: scale (keeping the aspect ratio) until the image
    covers ``width x height``, then crop the centre."""
    h, w = int(img.shape[1]), int(img.shape[2])
    ratio = max(width / w, height / h)
    nw, nh = max(math.floor(w * ratio + 0.5), 1), max(math.floor(h * ratio + 0.5), 1)  # Rust's f64::round
    return vision.center_crop(vision.resize(img, (nh, nw), interpolation), (height, width))


def load_image_and_resize(p: str | os.PathLike[str], width: int, height: int) -> Any:
    """``candle_examples::load_image_and_resize``: the image scaled to cover ``width x height``
    (bilinear, Candle's ``Triangle``) and centre-cropped, as a ``(3, height, width)`` u8 Tensor.

    Candle builds its tensor as ``(width, height, 3)`` before the permute, which is the same only
    for square sizes (the ones its examples use); this returns the image the right way up.
    """
    width = _positive(width, "load_image_and_resize", "width")
    height = _positive(height, "load_image_and_resize", "height")
    return _resize_to_fill(vision.load_image(p), width, height, "bilinear")


def _save(img: Any, p: str | os.PathLike[str]) -> None:
    """``img.save(p)`` through ``atomic_file``: path errors are candlejax errors naming ``p`` and a
    failed save leaves an existing file; the extension picks the format, as Pillow's ``save(path)``."""
    from PIL import Image

    from candlejax.io import atomic_file

    path = errors.path_arg(p, "save_image")
    fmt = Image.registered_extensions().get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise vision.ImageError(f"save_image: cannot write {path!r} (no Pillow image format has its extension)")
    with atomic_file(path) as f:
        try:
            img.save(f, format=fmt)
        except (ValueError, OSError, KeyError) as e:
            raise vision.ImageError(f"save_image: cannot write {path!r} ({type(e).__name__}: {e})") from e


def _as_pil(img: Any, where: str) -> Any:
    Image = require("PIL.Image", where)

    a = vision.check_image(img, where)
    return Image.fromarray(np.ascontiguousarray(a.transpose(1, 2, 0)))


def save_image(img: Any, p: str | os.PathLike[str]) -> None:
    """``candle_examples::save_image``: write a ``(3, height, width)`` u8 image; the file name's
    extension picks the format (Pillow). Raises :class:`candlejax.vision.ImageError` for another
    shape or dtype, or a file that cannot be written."""
    _save(_as_pil(img, "save_image"), p)


def save_image_resize(img: Any, p: str | os.PathLike[str], h: int, w: int) -> None:
    """``candle_examples::save_image_resize``: scale the ``(3, height, width)`` u8 image to cover
    ``h x w`` (Catmull-Rom), crop the centre and write it."""
    h, w = _positive(h, "save_image_resize", "h"), _positive(w, "save_image_resize", "w")
    vision.check_image(img, "save_image_resize")
    _save(_as_pil(_resize_to_fill(img, w, h, "bicubic"), "save_image_resize"), p)


def hub_load_local_safetensors(path: str | os.PathLike[str], json_file: str) -> list[Path]:
    """``candle_examples::hub_load_local_safetensors``: the shard files that the sharded index
    ``path/json_file`` names in its ``weight_map``, each once (in order of first mention), as paths
    under ``path``.

    Unlike Candle this checks that every shard exists. Raises :class:`candlejax.errors.SafeTensor`
    naming the file for a missing or malformed index and a missing shard.
    """
    index = Path(path) / json_file
    if not index.is_file():
        raise errors.SafeTensor(f"hub_load_local_safetensors: no index file {os.fspath(index)!r}")
    try:
        content = json.loads(index.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise errors.SafeTensor(
            f"hub_load_local_safetensors: {os.fspath(index)!r} is not JSON ({type(e).__name__}: {e})"
        ) from None
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if weight_map is None:
        raise errors.SafeTensor(f"hub_load_local_safetensors: no weight map in {os.fspath(index)!r}")
    if not isinstance(weight_map, dict):
        raise errors.SafeTensor(f"hub_load_local_safetensors: weight map in {os.fspath(index)!r} is not a map")
    names = list(dict.fromkeys(v for v in weight_map.values() if isinstance(v, str)))
    outside = [shard_outside(n) for n in names if shard_outside(n)]
    if outside:
        raise errors.SafeTensor(f"hub_load_local_safetensors: {os.fspath(index)!r}: {outside[0]}")
    shards = [Path(path) / f for f in names]
    missing = [os.fspath(s) for s in shards if not s.is_file()]
    if missing:
        raise errors.SafeTensor(
            f"hub_load_local_safetensors: {os.fspath(index)!r} names shard files that do not exist: {missing}"
        )
    return shards


def hub_load_safetensors(repo: Any, json_file: str) -> list[Path]:
    """``candle_examples::hub_load_safetensors`` downloads from the Hugging Face Hub; candlejax never
    downloads at run time, so this raises and names the offline replacement."""
    raise errors.Msg(
        f"hub_load_safetensors({repo!r}, {json_file!r}): candlejax does not download from the Hugging Face"
        " Hub. Download the repository (e.g. `huggingface-cli download`), then call"
        " candlejax.examples.hub_load_local_safetensors(folder, json_file); candlejax.models.hub.snapshot_dir"
        " finds a repository's folder in the local hub cache."
    )
