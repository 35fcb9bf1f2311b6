"""Checks shared by the readers in ``candlejax.io``.

requires: numpy, zipfile, zlib
provides: ``MAX_NBYTES``, ``shape_fits(shape, itemsize)``, ``cast(array, dtype)``, ``ZIP_ERRORS``,
``zip_possible_size(info, archive_size)``, ``zip_method_refusal(info)``, ``shard_outside(name)``,
``bytes_path_hint(data, op)``
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from candlejax.shape import MAX_ELEM_COUNT

#: numpy's (and XLA's) limit on an array's size in bytes, counting zero dims as 1.
MAX_NBYTES = 2**63 - 1


def bytes_path_hint(data: Any, op: str) -> str | None:
    """For readers that take bytes as a file's contents: when ``data`` rather looks like a file's name
    (under 4096 bytes, no NUL, UTF-8, and that file exists), the message saying so; else ``None``.
    A file's contents passed as bytes are then not mistaken for a name (a file's header holds NULs,
    or the caller checks its magic first)."""
    if not isinstance(data, bytes | bytearray | memoryview) or not 0 < len(data) < 4096:
        return None
    try:
        raw = bytes(data)
        name = raw.decode("utf-8")
    except (TypeError, ValueError):  # a memoryview of another format; not UTF-8
        return None
    if b"\0" in raw or not os.path.exists(name):
        return None
    return (
        f"{op}: bytes are read as the file's contents, and these are the name of the file {name!r}:"
        " pass it as a str or a Path"
    )


def shape_fits(shape: Sequence[int], itemsize: float) -> bool:
    """Whether an array of ``shape`` could exist: the product of its dims, zeros counted as 1, times
    ``itemsize`` fits in ``MAX_NBYTES`` (numpy refuses (0, 2**62) of f4 with "array is too big") and
    is at most a Tensor's ``MAX_ELEM_COUNT`` elements (sub-byte quantized types have more elements
    than bytes)."""
    n = 1
    for d in shape:
        n *= max(int(d), 1)
    return n * itemsize <= MAX_NBYTES and n <= MAX_ELEM_COUNT


#: What :mod:`zipfile` raises on a corrupt archive: bad records, unknown versions or compression methods
#: (``NotImplementedError``), encrypted members (``RuntimeError``), undecodable names
#: (``UnicodeDecodeError``, a ``ValueError``), broken deflate streams (``zlib.error``), short reads.
#: Catch ``candlejax.errors.Error`` (also a ``ValueError``) before these.
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError, RuntimeError,
              ValueError, zlib.error, struct.error, OverflowError)

#: deflate expands at most about 1032x
MAX_DEFLATE_RATIO = 1032


def zip_possible_size(info: zipfile.ZipInfo, archive_size: int) -> int:
    """The most bytes the zip member ``info`` can really hold: its stored bytes lie in the archive
    (``archive_size`` bytes) and deflate expands at most :data:`MAX_DEFLATE_RATIO` times; the recorded
    ``file_size`` for other methods."""
    stored = max(min(info.compress_size, archive_size), 0)
    if info.compress_type == zipfile.ZIP_STORED:
        return stored
    return stored * MAX_DEFLATE_RATIO if info.compress_type == zipfile.ZIP_DEFLATED else info.file_size


def zip_method_refusal(info: zipfile.ZipInfo) -> str | None:
    """Why the zip member ``info`` is not read (``None`` when it is stored or deflated, as ``torch.save`` and
    ``np.savez`` / ``np.savez_compressed`` write it): other compression methods (bzip2, lzma) are refused, as
    ``torch.load`` refuses them, since their claimed size is not bounded by the archive's."""
    if info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return None
    names = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}
    method = names.get(info.compress_type, str(info.compress_type))
    return (f"the zip member {info.filename!r} uses compression method {method}; only stored and deflated"
            " members are read")


def shard_outside(name: str) -> str | None:
    """Why the shard file ``name`` of a sharded index leads outside the index's folder (an absolute path,
    a ``..`` part), else ``None``: a downloaded index names files beside it (or below)."""
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts:
        return f"shard {name!r} lies outside the index's folder (an absolute path or a '..' part)"
    return None


def cast(a: np.ndarray, target: Any) -> np.ndarray:
    """``a`` converted to the numpy dtype ``target`` on the host, as ``Tensor.to_dtype`` converts (Candle's
    ``to_dtype``, Rust's ``as``): float -> integer truncates toward zero, saturates at the dtype's bounds
    and maps NaN to 0, where numpy's ``astype`` wraps (300.0 -> u8 44, -1.0 -> 255) or gives INT_MIN.
    Other conversions are numpy's (int -> int wraps, as Rust's ``as``). ``a`` itself when the dtype
    already matches."""
    target = np.dtype(target)
    if a.dtype == target:
        return a
    if target.kind not in "iu" or a.dtype.kind in "biu":
        return a.astype(target)
    info = np.iinfo(target)
    f = a.astype(np.float64)
    hi, lo = f >= float(info.max), f <= float(info.min)  # float(max) rounds up for 64-bit dtypes
    f[hi | lo | np.isnan(f)] = 0.0
    out = np.trunc(f, out=f).astype(target)
    out[hi], out[lo] = info.max, info.min
    return out


__all__ = ["MAX_DEFLATE_RATIO", "MAX_NBYTES", "ZIP_ERRORS", "cast", "shape_fits", "shard_outside", "zip_method_refusal",
           "zip_possible_size"]
