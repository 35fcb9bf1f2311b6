"""npy / npz reading and writing: Candle's ``candle::npy`` (``Tensor::read_npy`` and friends).

requires: numpy, zipfile, candlejax.dtype / device / errors / tensor, candlejax.io.safetensors.atomic_file
provides: ``read_npy``, ``read_npz``, ``read_npz_by_name``, ``write_npy``, ``write_npz``, ``NpzTensors``

The npy header is parsed here (magic, version 1/2/3, a Python-literal dict read with
``ast.literal_eval`` only after its length (<= 10000 bytes, as numpy) and item count are capped),
with bounds checks against the file size, so a malformed file raises
``candlejax.errors.Npy`` naming the file and the array. Supported descrs, as Candle: ``f2 f4 f8
i2 i4 i8 u1 u4`` and ``b1`` (bool, read as U8); little-endian only. Writes are atomic.
"""

from __future__ import annotations

import ast
import os
import struct
import zipfile
from collections.abc import Iterable, Mapping
from typing import IO, Any

import jax
import numpy as np

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType, to_dtype, x64_enabled
from candlejax.io._checks import ZIP_ERRORS, cast, shape_fits, zip_method_refusal, zip_possible_size
from candlejax.io.safetensors import atomic_file
from candlejax.shape import Shape
from candlejax.tensor._core import TensorBase, wrap

PathLike = str | os.PathLike
MAGIC = b"\x93NUMPY"
_SUFFIX = ".npy"
#: Header bytes and dims accepted before parsing (numpy: ``max_header_size=10000``, ``NPY_MAXDIMS=64``).
MAX_HEADER_SIZE = 10000
MAX_RANK = 64
_KEYS = {"descr", "fortran_order", "shape"}

#: descr without byte-order char -> (numpy dtype, candlejax DType it loads as, or None: needs dtype=)
_DESCR: dict[str, tuple[np.dtype, DType | None]] = {}
for _keys, _np, _dt in [
    (("e", "f2"), "<f2", DType.F16),
    (("f", "f4"), "<f4", DType.F32),
    (("d", "f8"), "<f8", DType.F64),
    (("h", "i2"), "<i2", DType.I16),
    (("i", "i4"), "<i4", DType.I32),
    (("q", "i8"), "<i8", DType.I64),
    (("B", "u1"), "u1", DType.U8),
    (("I", "u4"), "<u4", DType.U32),
    (("?", "b1"), "u1", DType.U8),
    (("H", "u2"), "<u2", DType.U32),
    (("b", "i1"), "i1", None),
    (("Q", "u8"), "<u8", None),
]:
    for _k in _keys:
        _DESCR[_k] = (np.dtype(_np), _dt)

_TO_DESCR = {
    DType.U8: "|u1", DType.U32: "<u4", DType.I16: "<i2", DType.I32: "<i4", DType.I64: "<i8",
    DType.F16: "<f2", DType.F32: "<f4", DType.F64: "<f8",
}


class NpyX64Error(errors.UnsupportedDTypeForOp, errors.Npy):
    """An i8/f8 array read while JAX's x64 mode is off (also an ``errors.Npy``)."""


def _where(path: str, name: str | None) -> str:
    return f"{path}" + (f", array {name!r}" if name is not None else "")


def _err(path: str, name: str | None, msg: str) -> errors.Npy:
    return errors.Npy(f"{msg} ({_where(path, name)})")


# --- reading ---------------------------------------------------------------------------------------
def _read_exact(f: IO[bytes], n: int, path: str, name: str | None, what: str) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise _err(path, name, f"truncated file: expected {n} bytes of {what}, got {len(b)}")
    return b


def _read_header(f: IO[bytes], size: int, path: str, name: str | None) -> tuple[str, bool, tuple[int, ...], int]:
    """Parse the npy header from ``f`` (``size`` bytes in all); returns descr, fortran_order, shape and
    the header's length in bytes."""
    if _read_exact(f, 6, path, name, "magic string") != MAGIC:
        raise _err(path, name, "magic string mismatch (not a npy file)")
    major, _minor = _read_exact(f, 2, path, name, "version")
    if major not in (1, 2, 3):
        raise _err(path, name, f"unsupported version {major}")
    ll = 2 if major == 1 else 4
    (hlen,) = struct.unpack("<H" if ll == 2 else "<I", _read_exact(f, ll, path, name, "header length"))
    if 8 + ll + hlen > size:
        raise _err(path, name, f"header length {hlen} is larger than the file ({size} bytes; truncated file?)")
    if hlen > MAX_HEADER_SIZE:
        raise _err(
            path, name, f"header of {hlen} bytes exceeds the {MAX_HEADER_SIZE}-byte limit (numpy's default"
            " max_header_size); the file is corrupt or crafted",
        )
    raw = _read_exact(f, hlen, path, name, "header")
    if raw.count(b",") > 2 * MAX_RANK + 8 or raw.count(b"(") + raw.count(b"[") + raw.count(b"{") > 8:
        raise _err(path, name, f"header {raw[:120]!r}... has too many items or brackets (rank cap: {MAX_RANK})")
    try:
        text = raw.decode("utf-8" if major == 3 else "latin1")
        header = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError):
        raise _err(path, name, f"unable to parse header {raw[:200]!r}") from None
    if not isinstance(header, dict):
        raise _err(path, name, f"unable to parse header {raw[:200]!r}")
    if set(header) != _KEYS:
        missing, extra = sorted(_KEYS - set(header)), sorted(map(repr, set(header) - _KEYS))
        raise _err(
            path, name, "the header must hold exactly 'descr', 'fortran_order' and 'shape'"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unexpected: {', '.join(extra)}" if extra else ""),
        )
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if not isinstance(descr, str) or not descr:
        raise _err(path, name, f"unrecognized descr {descr!r}")
    if not isinstance(fortran, bool):
        raise _err(path, name, f"unknown fortran_order {fortran!r}")
    if isinstance(shape, tuple) and len(shape) > MAX_RANK:
        raise _err(path, name, f"rank {len(shape)} exceeds the limit of {MAX_RANK} dims")
    if not (isinstance(shape, tuple) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise _err(path, name, f"invalid shape {shape!r}")
    return descr, fortran, shape, 8 + ll + hlen


def _read_array(
    f: IO[bytes], size: int, path: str, name: str | None, dtype: DType | None, device: Any, header_only: bool = False,
    exact: bool = False,
) -> Any:
    """The array of ``f`` (``size`` bytes); ``exact``: the data must end the file (an npz member, whose
    CRC zipfile checks only when the member is read to its end)."""
    descr, fortran, shape, hbytes = _read_header(f, size, path, name)
    if descr[0] == ">":
        raise _err(path, name, f"big-endian descr {descr} is not supported; use a little-endian array")
    key = descr.lstrip("<=|")
    if key not in _DESCR:
        raise _err(path, name, f"unrecognized descr {descr}")
    np_dt, native = _DESCR[key]
    if not shape_fits(shape, np_dt.itemsize):
        raise _err(path, name, f"shape {errors.fmt_shape(shape)} of {descr} is too big for any array")
    target = dtype or native
    if header_only:
        return shape, native, descr
    if target is None:
        raise _err(path, name, f"descr {descr} has no candlejax dtype; pass dtype=... (e.g. DType.I32) to convert it")
    if target in (DType.I64, DType.F64) and not x64_enabled():
        raise NpyX64Error(
            target, f"npy read of {_where(path, name)}",
            "64-bit dtypes need JAX's x64 mode: call candlejax.enable_x64() first, or pass"
            f" dtype=DType.{'F32' if target is DType.F64 else 'I32'} to convert while reading",
        )
    numel = 1
    for d in shape:
        numel *= d
    nbytes = numel * np_dt.itemsize
    if hbytes + nbytes > size or (exact and hbytes + nbytes != size):
        raise _err(
            path, name, f"{'truncated' if hbytes + nbytes > size else 'trailing'} data: shape"
            f" {errors.fmt_shape(shape)} of {descr} needs {nbytes} bytes, the file holds {max(size - hbytes, 0)}",
        )
    buf = _read_exact(f, nbytes, path, name, "data")
    arr = np.frombuffer(buf, dtype=np_dt, count=numel)
    if key in ("?", "b1"):
        arr = arr != 0
    arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    arr = np.asarray(cast(arr, target.np), order="C")  # float -> int saturates, as Tensor.to_dtype
    return wrap(jax.device_put(arr, Device.coerce(device).jax_device))


def _resolve(dtype: Any) -> DType | None:
    return None if dtype is None else to_dtype(dtype)


def read_npy(path: PathLike, dtype: Any = None, device: Any = None) -> Any:
    """The array of a ``.npy`` file (Candle's ``Tensor::read_npy``).

    ``dtype`` converts while reading and ``device`` places the result (extensions; default: the
    file's dtype on the CPU).
    """
    p = errors.path_arg(path, "read_npy")
    errors.check_file(p, "read_npy")
    with open(p, "rb") as f:
        return _read_array(f, os.fstat(f.fileno()).st_size, p, None, _resolve(dtype), device)


def _open_zip(path: str) -> zipfile.ZipFile:
    errors.check_file(path, "read_npz")
    try:
        return zipfile.ZipFile(path)
    except ZIP_ERRORS as e:
        raise errors.Npy(f"{path} is not a valid npz (zip) file: {type(e).__name__}: {e}") from None


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str, name: str, dtype: DType | None, device: Any,
            header_only: bool = False) -> Any:
    archive_size = os.fstat(zf.fp.fileno()).st_size if zf.fp is not None else 0
    why = zip_method_refusal(info)
    if why is not None:
        raise _err(path, name, why)
    if info.file_size > zip_possible_size(info, archive_size):  # refused before zipfile allocates it
        why = (
            f"the archive ends before the member's recorded {info.compress_size} bytes ({archive_size}-byte file;"
            " truncated file?)" if info.compress_size > archive_size else
            f"its {info.compress_size} stored bytes cannot hold the {info.file_size} bytes it claims (corrupt file?)"
        )
        raise _err(path, name, f"cannot read the zip member {info.filename!r}: {why}")
    try:
        with zf.open(info) as f:
            return _read_array(f, info.file_size, path, name, dtype, device, header_only, exact=True)
    except EOFError as e:
        why = str(e) or f"the archive ends before the member's recorded {info.compress_size} bytes (truncated file?)"
        raise _err(path, name, f"cannot read the zip member {info.filename!r}: {why}") from None
    except errors.Error:
        raise
    except ZIP_ERRORS as e:
        # RuntimeError: zipfile's "File ... is encrypted, password required for extraction"
        raise _err(path, name, f"cannot read the zip member {info.filename!r}: {type(e).__name__}: {e}") from None


def _name_of(info: zipfile.ZipInfo) -> str:
    n = info.filename
    return n[: -len(_SUFFIX)] if n.endswith(_SUFFIX) else n


def _members(zf: zipfile.ZipFile, path: str) -> dict[str, zipfile.ZipInfo]:
    """The archive's arrays by name, in archive order: directory entries skipped, duplicates refused."""
    out: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        if info.is_dir():
            continue
        name = _name_of(info)
        if name in out:
            raise _err(path, name, f"the archive holds two members named {out[name].filename!r} and {info.filename!r}")
        out[name] = info
    return out


def read_npz(path: PathLike, dtype: Any = None, device: Any = None) -> list[tuple[str, Any]]:
    """All ``(name, Tensor)`` pairs of a ``.npz`` file in archive order (Candle's ``Tensor::read_npz``);
    directory entries are skipped."""
    p = errors.path_arg(path, "read_npz")
    dt = _resolve(dtype)
    with _open_zip(p) as zf:
        return [(n, _member(zf, i, p, n, dt, device)) for n, i in _members(zf, p).items()]


def read_npz_by_name(path: PathLike, names: Iterable[str], dtype: Any = None, device: Any = None) -> list[Any]:
    """The named arrays of a ``.npz`` file, in the order asked (Candle's ``Tensor::read_npz_by_name``)."""
    p = errors.path_arg(path, "read_npz_by_name")
    dt = _resolve(dtype)
    out = []
    with _open_zip(p) as zf:
        index = _members(zf, p)
        for name in names:
            info = index.get(name)
            if info is None or info.filename != name + _SUFFIX:
                raise errors.Npy(f"no array for {name} in {p!r}")
            out.append(_member(zf, info, p, name, dt, device))
    return out


class NpzTensors:
    """Lazy access to a ``.npz`` file (Candle's ``npy::NpzTensors``): ``names()``,
    ``get_shape_and_dtype(name)``, ``get(name) -> Tensor | None``."""

    def __init__(self, path: PathLike):
        # absolute: get() reopens the file, which a later os.chdir must not change
        self.path = os.path.abspath(errors.path_arg(path, "NpzTensors"))
        with _open_zip(self.path) as zf:
            self._index = {n: i.filename for n, i in _members(zf, self.path).items()}

    @classmethod
    def new(cls, path: PathLike) -> NpzTensors:
        """Candle's ``NpzTensors::new(path)`` (= the constructor)."""
        return cls(path)

    def names(self) -> list[str]:
        """The array names in the npz file, in file order."""
        return list(self._index)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def _read(self, name: str, header_only: bool, dtype: Any = None, device: Any = None) -> Any:
        with _open_zip(self.path) as zf:
            try:
                info = zf.getinfo(self._index[name])
            except KeyError:
                raise errors.Npy(f"{self.path!r} changed since it was opened: {name} is gone") from None
            return _member(zf, info, self.path, name, _resolve(dtype), device, header_only)

    def _header(self, name: str) -> tuple[tuple[int, ...], DType | None, str]:
        """Shape, DType (None: readable only with ``dtype=``) and descr of ``name``, data unread."""
        if name not in self._index:
            raise errors.CannotFindTensor(name, f"not in {self.path}")
        return self._read(name, True)

    def get_shape(self, name: str) -> Shape:
        """The shape of ``name`` without reading its data, whatever its dtype (``get(name, dtype=)``
        reads the members that ``get_shape_and_dtype`` refuses)."""
        return Shape(self._header(name)[0])

    def get_shape_and_dtype(self, name: str) -> tuple[Shape, DType]:
        """Candle's ``get_shape_and_dtype``: the shape and dtype of ``name`` without reading its data
        (``cannot find tensor {name}``; ``unrecognized descr`` for a dtype with no DType, such as
        int8 or uint64)."""
        shape, dt, descr = self._header(name)
        if dt is None:
            raise _err(self.path, name, f"unrecognized descr {descr}: no candlejax dtype (get(name, dtype=...)"
                       " converts it while reading)")  # fmt: skip
        return Shape(shape), dt

    def get(self, name: str, dtype: Any = None, device: Any = None) -> Any:
        """The Tensor ``name``, or ``None`` when the archive has no such array."""
        if name not in self._index:
            return None
        return self._read(name, False, dtype, device)


# --- writing ---------------------------------------------------------------------------------------
def _npy_bytes(t: Any, what: str) -> tuple[bytes, memoryview]:
    """The npy header (v1.0 when it fits, 64-byte aligned as numpy) and the data of ``t``."""
    if isinstance(t, TensorBase):
        dt = t.dtype
    else:
        raise errors.Msg(f"{what}: expected a Tensor, got {type(t).__name__}")
    if dt not in _TO_DESCR:
        raise errors.Npy(f"{dt.as_str()} is not supported ({what}; convert with .to_dtype(DType.F32) first)")
    shape = tuple(int(d) for d in t.shape)
    shp = "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
    text = f"{{'descr': '{_TO_DESCR[dt]}', 'fortran_order': False, 'shape': {shp}, }}"
    for version, ll in ((1, 2), (2, 4)):
        pad = -(len(MAGIC) + 2 + ll + len(text) + 1) % 64
        header = (text + " " * pad + "\n").encode("latin1")
        if version == 2 or len(header) < 2**16:
            break
    head = MAGIC + bytes([version, 0]) + struct.pack("<H" if ll == 2 else "<I", len(header)) + header
    try:
        arr = np.ascontiguousarray(np.asarray(t)).reshape(-1).view(np.uint8)
    except RuntimeError as e:  # a deleted jax.Array
        raise errors.Npy(f"{what}: the tensor cannot be read: {e}") from None
    return head, arr.data


def write_npy(t: Any, path: PathLike) -> None:
    """``t.write_npy(path)``: a ``.npy`` file numpy reads back with ``np.load`` (atomic)."""
    p = errors.path_arg(path, "write_npy")
    head, data = _npy_bytes(t, f"write_npy to {p}")
    with atomic_file(p) as f:
        f.write(head)
        f.write(data)


def write_npz(tensors: Iterable[tuple[str, Any]] | Mapping[str, Any], path: PathLike) -> None:
    """``Tensor::write_npz(&[(name, &t)], path)``: an uncompressed ``.npz`` (atomic).

    Accepts a list of ``(name, Tensor)`` pairs (Candle) or a dict.
    """
    p = errors.path_arg(path, "write_npz")
    items = list(tensors.items()) if isinstance(tensors, Mapping) else list(tensors)
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise errors.Npy(f"duplicate array names in write_npz to {p}")
    with atomic_file(p) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, t in items:
            if not isinstance(name, str):
                raise errors.Npy(f"array names must be strings, got {name!r} (write_npz to {p})")
            head, data = _npy_bytes(t, f"write_npz of {name!r} to {p}")
            with zf.open(name + _SUFFIX, "w", force_zip64=len(head) + data.nbytes >= 2**31 - 1) as w:
                w.write(head)
                w.write(data)


__all__ = ["NpyX64Error", "NpzTensors", "read_npy", "read_npz", "read_npz_by_name", "write_npy", "write_npz"]
