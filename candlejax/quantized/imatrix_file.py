"""Candle's ``candle::quantized::imatrix_file``: llama.cpp's importance-matrix ``.dat`` files, the
weights :meth:`QTensor.quantize_imatrix` takes.

The file (llama.cpp's legacy ``imatrix`` format, little endian): an ``i32`` entry count, then per
entry an ``i32`` name length, the UTF-8 name, ``i32`` ``ncall``, ``i32`` ``nval`` and ``nval``
``f32`` sums of squared activations. Trailing bytes (llama.cpp appends the last call count and the
dataset name) are ignored, as in Candle.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from candlejax import errors


def load_imatrix(fname: str | os.PathLike) -> dict[str, np.ndarray]:
    """``imatrix_file::load_imatrix(fname)``: tensor name -> f32 weights (each sum divided by its
    ``ncall`` when that is not 0), ready for ``QTensor.quantize_imatrix(t, imatrix[name], dtype)``."""
    path = errors.path_arg(fname, "load_imatrix", "fname")
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except OSError as e:
        raise errors.Msg(f"Failed to open {path}: {e}") from None
    pos = 0

    def i32(what: str) -> int:
        nonlocal pos
        if pos + 4 > len(buf):
            raise errors.Msg(f"Failed to read {what}: the file {path} ends at byte {len(buf)}")
        (v,) = struct.unpack_from("<i", buf, pos)
        pos += 4
        return v

    n_entries = i32("number of entries")
    if n_entries < 1:
        raise errors.Msg(f"No data in file {path}")
    out: dict[str, np.ndarray] = {}
    for i in range(1, n_entries + 1):
        length = i32(f"name length for entry {i}")
        if length < 0 or pos + length > len(buf):
            raise errors.Msg(f"Failed to read name for entry {i}: {length} bytes past the end of {path}")
        try:
            name = buf[pos : pos + length].decode("utf-8")
        except UnicodeDecodeError as e:
            raise errors.Msg(f"Invalid UTF-8 name for entry {i}: {e} ({path})") from None
        pos += length
        ncall = i32(f"ncall for entry {i}")
        nval = i32(f"nval for entry {i}")
        if nval < 1:
            raise errors.Msg(f"Invalid nval for entry {i}: {nval} ({path})")
        if pos + 4 * nval > len(buf):
            raise errors.Msg(f"Failed to read {nval} values for entry {i}: the file {path} ends at byte {len(buf)}")
        data = np.frombuffer(buf, "<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        out[name] = data if ncall == 0 else data / np.float32(ncall)
    return out


__all__ = ["load_imatrix"]
