"""safetensors reading and writing: Candle's ``candle::safetensors`` module, on the ``safetensors`` package.

requires: safetensors (``safe_open``, ``deserialize``, ``serialize_file``), numpy, ml_dtypes, jax,
candlejax.dtype / device / errors / tensor
provides: ``save``, ``save_tensor`` (``Tensor.save_safetensors``), ``load``, ``load_buffer``,
``MmapedSafetensors`` (one file, ``multi([...])``, or a sharded ``model.safetensors.index.json``),
``MmapedFile`` (``deserialize()`` -> ``SafeTensors``),
``SliceSafetensors`` / ``BufferedSafetensors`` (in-memory), ``TensorView``, ``atomic_file``.

The safetensors package validates the header (offsets, sizes, dtypes, coverage), maps the file and
reads one tensor at a time, and writes files. What is done here (see docs/io.md):

- errors: the package's ``SafetensorError`` names neither the file nor, mostly, the tensor; when it
  refuses a file, the header is examined here to raise ``candlejax.errors.SafeTensor`` naming the
  file, the tensor and the numbers. Nothing is allocated from a size the file merely claims.
- duplicate names in the header, which the package accepts (keeping the last), are refused.
- F8 tensors are decoded here with ml_dtypes (the package's numpy path looks for ``numpy.float8_*``);
  U16 loads as U32 and BOOL as U8 as in Candle; I64/F64 need x64 mode or ``dtype=``.
- saves are atomic and durable: the package writes inside a private temporary folder next to the
  target; the file is then fsync'd, given the umask's permissions and moved onto the target (a
  failed save keeps the old file).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import mmap
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np
import safetensors

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType, from_array_dtype, to_dtype, x64_enabled
from candlejax.io._atomic import atomic_file, atomic_name
from candlejax.io._checks import bytes_path_hint, cast, shard_outside
from candlejax.quantized.blocked import aligned_empty
from candlejax.quantized.blocked import place as place_aligned
from candlejax.shape import Dims
from candlejax.tensor._core import TensorBase, wrap

PathLike = str | os.PathLike
MAX_HEADER_SIZE = 100_000_000  # as the safetensors crate

#: file dtype -> (numpy dtype of the stored bytes, bits per element, candlejax DType it loads as or None)
_ST: dict[str, tuple[np.dtype | None, int, DType | None]] = {
    "BOOL": (np.dtype(np.uint8), 8, DType.U8),
    "U8": (np.dtype(np.uint8), 8, DType.U8),
    "I8": (np.dtype(np.int8), 8, None),
    "U16": (np.dtype("<u2"), 16, DType.U32),
    "I16": (np.dtype("<i2"), 16, DType.I16),
    "U32": (np.dtype("<u4"), 32, DType.U32),
    "I32": (np.dtype("<i4"), 32, DType.I32),
    "U64": (np.dtype("<u8"), 64, None),
    "I64": (np.dtype("<i8"), 64, DType.I64),
    "F16": (np.dtype("<f2"), 16, DType.F16),
    "BF16": (np.dtype(ml_dtypes.bfloat16), 16, DType.BF16),
    "F32": (np.dtype("<f4"), 32, DType.F32),
    "F64": (np.dtype("<f8"), 64, DType.F64),
    "F8_E4M3": (np.dtype(ml_dtypes.float8_e4m3fn), 8, DType.F8E4M3),
    "F8_E5M2": (np.dtype(ml_dtypes.float8_e5m2), 8, None),
    "F8_E8M0": (np.dtype(ml_dtypes.float8_e8m0fnu), 8, None),
    "F8_E4M3FNUZ": (np.dtype(ml_dtypes.float8_e4m3fnuz), 8, None),
    "F8_E5M2FNUZ": (np.dtype(ml_dtypes.float8_e5m2fnuz), 8, None),
    "C64": (np.dtype("<c8"), 64, None),
    "F4": (None, 4, None),
    "F6_E2M3": (None, 6, None),
    "F6_E3M2": (None, 6, None),
}


# --- errors ----------------------------------------------------------------------------------------
class SafeTensorDtypeError(errors.UnsupportedSafeTensorDtype, errors.SafeTensor):
    """A tensor whose file dtype candlejax cannot hold (also an ``errors.SafeTensor``)."""


class SafeTensorX64Error(errors.UnsupportedDTypeForOp, errors.SafeTensor):
    """An I64/F64 tensor loaded while JAX's x64 mode is off (also an ``errors.SafeTensor``)."""


def _where(src: str, name: str | None = None) -> str:
    return f"{src}" + (f", tensor {name!r}" if name is not None else "")


def _corrupt(src: str, msg: str, name: str | None = None) -> errors.SafeTensor:
    return errors.SafeTensor(f"invalid safetensors file {_where(src, name)}: {msg}")


# --- header ------------------------------------------------------------------------------------------
class _Entry:
    __slots__ = ("begin", "end", "name", "shape", "st_dtype")

    def __init__(self, name: str, st_dtype: str, shape: tuple[int, ...], begin: int, end: int):
        self.name, self.st_dtype, self.shape, self.begin, self.end = name, st_dtype, shape, begin, end


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r} in the header")
        out[k] = v
    return out


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63


def _read_header(read: Any, size: int, src: str) -> tuple[Any, int]:
    """The JSON header (``read(begin, end) -> bytes``) and the data's absolute offset.

    The length is checked against the file before the header is read, and duplicate names (which the
    safetensors package accepts, keeping the last) are refused here.
    """
    if size < 8:
        raise _corrupt(src, f"the file has {size} bytes, fewer than the 8-byte header length (truncated file?)")
    (n,) = struct.unpack("<Q", bytes(read(0, 8)))
    if n > MAX_HEADER_SIZE:
        raise _corrupt(src, f"header length {n} is larger than the limit {MAX_HEADER_SIZE} (not a safetensors file?)")
    if n > size - 8:
        raise _corrupt(src, f"header length {n} is larger than the file ({size} bytes; truncated file?)")
    if n < 2:
        raise _corrupt(src, f"header length {n} is too small for a JSON header")
    try:
        return json.loads(bytes(read(8, 8 + n)).decode("utf-8"), object_pairs_hook=_no_duplicates), 8 + n
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _corrupt(src, f"the header is not valid JSON ({e})") from None


def _explain(header: Any, data_len: int, src: str, why: Exception) -> errors.SafeTensor:
    """The error for a header the safetensors package refused (its ``SafetensorError`` names neither the
    file nor, mostly, the tensor or the numbers): which entry is wrong and how."""
    if not isinstance(header, dict):
        return _corrupt(src, f"the header must be a JSON object, got {type(header).__name__}")
    header = dict(header)
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        return _corrupt(src, "__metadata__ must map strings to strings")
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict):
            return _corrupt(src, "the entry must be an object with dtype, shape and data_offsets", name)
        dt, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dt, str):
            return _corrupt(src, f"dtype must be a string, got {dt!r}", name)
        if dt not in _ST:
            return SafeTensorDtypeError(dt, f"{_where(src, name)}; candlejax cannot decode it")
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            return _corrupt(src, f"shape must be a list of non-negative integers, got {shape!r}", name)
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_uint(o) for o in offs) and offs[0] <= offs[1]):
            return _corrupt(src, f"data_offsets must be [begin, end] with 0 <= begin <= end, got {offs!r}", name)
        if offs[1] > data_len:
            return _corrupt(
                src, f"data_offsets {offs} point past the end of the data ({data_len} bytes; truncated file?)", name
            )
        need = math.prod(shape) * _ST[dt][1] / 8
        if need != offs[1] - offs[0]:
            return _corrupt(
                src, f"data_offsets {offs} hold {offs[1] - offs[0]} bytes but shape {errors.fmt_shape(shape)} of"
                f" {dt} needs {int(need) if need == int(need) else need}", name,
            )
        spans.append((offs[0], offs[1], name))
    pos, prev = 0, None
    for begin, end, name in sorted(spans):
        if begin != pos:
            what = f"overlap tensor {prev!r} ending at {pos}" if begin < pos else f"leave a hole after byte {pos}"
            return _corrupt(src, f"data_offsets [{begin}, {end}] {what}", name)
        pos, prev = end, name
    if pos != data_len:
        return _corrupt(src, f"the tensors cover {pos} bytes of data but the file holds {data_len}")
    return _corrupt(src, f"rejected by the safetensors package: {why}")


def _entries(header: dict[str, Any]) -> dict[str, _Entry]:
    """The entries of a header the package accepted, in data order."""
    out = [
        _Entry(k, v["dtype"], tuple(v["shape"]), *v["data_offsets"]) for k, v in header.items() if k != "__metadata__"
    ]
    return {e.name: e for e in sorted(out, key=lambda e: (e.begin, e.end))}


# --- decoding --------------------------------------------------------------------------------------
def _resolve_dtype(dtype: Any) -> DType | None:
    return None if dtype is None else to_dtype(dtype)


def _convert(src: _Source, e: _Entry, dtype: DType | None, check_x64: bool = True) -> np.ndarray:
    """A fresh numpy array (owning its memory) holding tensor ``e``, converted to ``dtype``."""
    np_dt, _, native = _ST.get(e.st_dtype, (None, 0, None))
    target = dtype or native
    if np_dt is None or target is None:
        hint = (
            "pass dtype=... (e.g. DType.F32) to convert it while loading" if np_dt is not None
            else "candlejax cannot decode it"
        )
        raise SafeTensorDtypeError(e.st_dtype, f"{_where(src.src, e.name)}; {hint}")
    if check_x64 and target in (DType.I64, DType.F64) and not x64_enabled():
        raise SafeTensorX64Error(
            target, f"safetensors load of {_where(src.src, e.name)}",
            "64-bit dtypes need JAX's x64 mode: call candlejax.enable_x64() first, or pass"
            f" dtype=DType.{'F32' if target is DType.F64 else 'I32'} to convert while loading",
        )
    try:
        arr = src.array(e, np_dt)
        if e.st_dtype == "BOOL":
            arr = arr.view(np.uint8) != 0
        return cast(arr, target.np)  # float -> int saturates, as Tensor.to_dtype
    except (ValueError, OverflowError, MemoryError) as ex:
        raise _corrupt(src.src, f"cannot build an array of shape {errors.fmt_shape(e.shape)}: {ex}", e.name) from None


def _to_device(arr: np.ndarray, device: Any) -> Any:
    """A fresh host array as a Tensor: shared with the CPU runtime when aligned, else copied, waiting
    for the copy so that reading the next tensor does not pile up host buffers in flight."""
    out = place_aligned(arr, Device.coerce(device).jax_device)
    if not (arr.flags.c_contiguous and arr.ctypes.data % 64 == 0):
        out.block_until_ready()
    return wrap(out)


class TensorView:
    """One tensor of a safetensors file, not yet loaded (``safetensors::tensor::TensorView``).

    ``name``, ``shape``, ``st_dtype`` (the file's dtype string, e.g. ``"U16"``), ``dtype`` (the
    candlejax DType it loads as), ``data_offsets``, ``nbytes``, ``data()`` (the raw bytes, zero-copy)
    and ``load(device, dtype=None)``.
    """

    __slots__ = ("_e", "_owner")

    def __init__(self, owner: _Source, entry: _Entry):
        self._owner, self._e = owner, entry

    @property
    def name(self) -> str:
        """The tensor's name in the file."""
        return self._e.name

    @property
    def shape(self) -> Dims:
        """The dims as a tuple; also callable as Candle's ``view.shape()``."""
        return Dims(self._e.shape)

    @property
    def st_dtype(self) -> str:
        """The file's dtype string (``"F32"``, ``"BF16"``, ...)."""
        return self._e.st_dtype

    @property
    def dtype(self) -> DType:
        """The candlejax DType the tensor loads as; raises for a dtype candlejax cannot load."""
        native = _ST.get(self._e.st_dtype, (None, 0, None))[2]
        if native is None:
            raise SafeTensorDtypeError(self._e.st_dtype, _where(self._owner.src, self._e.name))
        return native

    @property
    def data_offsets(self) -> tuple[int, int]:
        """``(begin, end)`` byte offsets of the data, relative to the end of the header."""
        return (self._e.begin, self._e.end)

    @property
    def nbytes(self) -> int:
        """The number of bytes of the tensor's data."""
        return self._e.end - self._e.begin

    def elem_count(self) -> int:
        """The number of elements (the product of the shape)."""
        n = 1
        for d in self._e.shape:
            n *= d
        return n

    def data(self) -> memoryview:
        """The tensor's raw little-endian bytes (a zero-copy view of the mapped file or the buffer)."""
        return self._owner.raw(self._e)

    def load(self, device: Any = None, dtype: Any = None) -> Any:
        """The Tensor on ``device`` (default CPU); ``dtype`` converts while loading (extension)."""
        return self._owner.load_entry(self._e, device, _resolve_dtype(dtype))

    def numpy(self, dtype: Any = None) -> np.ndarray:
        """A host copy as a numpy array (64-bit dtypes allowed without x64 mode), converted to
        ``dtype`` if given; U16 becomes uint32 and BOOL uint8, as ``load``."""
        return _convert(self._owner, self._e, _resolve_dtype(dtype), check_x64=False)

    def slice(self, index: Any) -> SliceIterator:
        """The safetensors crate's ``view.slice(index)`` (``IndexOp``): the raw bytes of a sub-tensor.

        ``index`` is an int (``Select``), a ``slice`` or ``range`` with step 1 (``start..stop``, ``..``) or a
        tuple of those, one per leading dim; the returned :class:`SliceIterator` yields the bytes in row-major
        order (``b"".join(view.slice(slice(start, stop)))``), with ``newshape()`` and
        ``remaining_byte_len()``. Raises ``SafeTensor`` for more indexers than dims, an index out of
        range or a step.
        """
        where = _where(self._owner.src, self._e.name)
        shape = self._e.shape
        indexers = index if isinstance(index, tuple) else (index,)
        if len(indexers) > len(shape):
            raise errors.SafeTensor(
                f"invalid slice of {where}: {len(indexers)} slicing indexes for a tensor with {len(shape)} dims"
                f" {list(shape)} (more slicing indexes than dimensions in tensor)"
            )
        bits = _ST.get(self._e.st_dtype, (None, 0, None))[1]
        if bits % 8:
            raise errors.SafeTensor(f"invalid slice of {where}: {self._e.st_dtype} elements are not whole bytes")
        keys: list[Any] = []
        newshape: list[int] = []
        for dim_index, (ix, size) in enumerate(zip(indexers, shape, strict=False)):
            if isinstance(ix, range) and ix.step == 1:  # range(start, stop), as Tensor.i takes it
                ix = slice(ix.start, ix.stop)
            if isinstance(ix, slice) and ix.step in (None, 1):
                start = 0 if ix.start is None else ix.start
                stop = size if ix.stop is None else ix.stop
                ok = isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop <= size
                asked = f"{start}..{stop}"
                keys.append(slice(start, stop))
                newshape.append(stop - start if ok else 0)
            elif isinstance(ix, int) and not isinstance(ix, bool):
                ok, asked = 0 <= ix < size, str(ix)
                keys.append(ix)
            else:
                raise errors.SafeTensor(
                    f"invalid slice of {where}: index {ix!r} for dim #{dim_index}: use an int or a"
                    " slice(start, stop) with step 1 (Rust's start..stop)"
                )
            if not ok:
                raise errors.SafeTensor(
                    f"invalid slice of {where}: index {asked} out of bounds for tensor dimension #{dim_index}"
                    f" of size {size}"
                )
        newshape.extend(shape[len(indexers) :])
        nbytes = bits // 8
        data = np.frombuffer(self.data(), np.uint8).reshape(*shape, nbytes)[tuple(keys)]
        return SliceIterator(np.ascontiguousarray(data).tobytes(), Dims(newshape))

    def __repr__(self) -> str:
        return f"TensorView(name={self.name!r}, dtype={self.st_dtype}, shape={list(self.shape)})"


class SliceIterator:
    """The safetensors crate's ``SliceIterator`` (``TensorView.slice``): iterating yields the selected
    bytes; ``newshape()`` is the sub-tensor's shape and ``remaining_byte_len()`` the bytes not yet read.
    """

    __slots__ = ("_chunks", "_newshape")

    def __init__(self, data: bytes, newshape: Dims):
        self._chunks, self._newshape = [data] if data else [], newshape

    def newshape(self) -> Dims:
        """The safetensors crate's ``SliceIterator::newshape``: the shape of the selected sub-tensor."""
        return self._newshape

    def remaining_byte_len(self) -> int:
        """The safetensors crate's ``SliceIterator::remaining_byte_len``: bytes not yet yielded."""
        return sum(len(c) for c in self._chunks)

    def __iter__(self) -> SliceIterator:
        return self

    def __next__(self) -> bytes:
        if not self._chunks:
            raise StopIteration
        return self._chunks.pop(0)


class _Source:
    """One safetensors file opened with the package's ``safe_open``, or bytes in memory decoded by its
    ``deserialize``; ``entries`` come from the header the package validated."""

    __slots__ = ("_mm", "_raw", "_st", "base", "closed", "entries", "metadata", "src")

    def __init__(
        self, src: str, header: dict[str, Any], base: int, st: Any = None, raw: Any = None, mm: Any = None
    ):
        self.src, self.base, self._st, self._raw, self._mm, self.closed = src, base, st, raw, mm, False
        self.metadata: dict[str, str] | None = header.get("__metadata__")
        self.entries = _entries(header)

    @staticmethod
    def open(path: PathLike) -> _Source:
        """The file is mapped once here (the raw bytes and F8 tensors are read from that map), and the
        package must have opened the same file: a save replacing ``path`` meanwhile is retried."""
        src = errors.path_arg(path, "safetensors load")
        errors.check_file(src, "safetensors load", "pass the .safetensors file inside it")
        for _ in range(3):
            with open(src, "rb") as f:

                def read(begin: int, end: int) -> bytes:
                    f.seek(begin)
                    return f.read(end - begin)

                st0 = os.fstat(f.fileno())
                header, base = _read_header(read, st0.st_size, src)
                try:
                    st = safetensors.safe_open(src, framework="numpy")
                except safetensors.SafetensorError as e:
                    raise _explain(header, st0.st_size - base, src, e) from None
                st1 = os.stat(src)
                if (st1.st_dev, st1.st_ino) == (st0.st_dev, st0.st_ino):
                    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                    return _Source(src, header, base, st=st, mm=mm)
            st.__exit__(None, None, None)
        raise errors.SafeTensor(f"{src} was replaced while being opened, three times in a row")

    @staticmethod
    def from_buffer(buffer: bytes | bytearray | memoryview, op: str) -> _Source:
        try:
            mv = memoryview(buffer).cast("B")
        except TypeError:
            raise errors.ArgumentType(
                f"{op}: the buffer must hold the file's bytes (bytes, bytearray, memoryview or mmap), got"
                f" {type(buffer).__name__}; to read a file by name use cj.safetensors.load(path, device)"
            ) from None
        if hint := bytes_path_hint(mv, op):  # a file's header length has NULs: never a file's name
            raise errors.ArgumentType(hint)
        header, base = _read_header(lambda a, b: mv[a:b], len(mv), "<buffer>")
        try:
            raw = {n: v["data"] for n, v in safetensors.deserialize(buffer if type(buffer) is bytes else bytes(mv))}
        except safetensors.SafetensorError as e:
            raise _explain(header, len(mv) - base, "<buffer>", e) from None
        return _Source("<buffer>", header, base, raw=raw)

    def check_open(self) -> None:
        if self.closed:
            raise errors.SafeTensor(f"{self.src} was closed")

    def raw(self, e: _Entry) -> memoryview:
        """The stored bytes of ``e``, without a copy."""
        self.check_open()
        if self._raw is not None:
            return memoryview(self._raw[e.name])
        return memoryview(self._mm)[self.base + e.begin : self.base + e.end]

    def array(self, e: _Entry, np_dt: np.dtype) -> np.ndarray:
        """A fresh host array of ``e`` in its stored dtype, copied once from the mapped file (or the
        buffer). The file's pages it touched are then dropped from this process's mapping, so that
        loading every tensor does not keep the whole file resident next to the loaded copies."""
        self.check_open()
        mv = self.raw(e)
        try:
            out = aligned_empty(e.shape, np_dt)  # shared with the CPU runtime by place() (no second copy)
            out[...] = np.frombuffer(mv, np_dt).reshape(e.shape)
            return out
        finally:
            mv.release()
            if self._mm is not None and e.end > e.begin and hasattr(mmap, "MADV_DONTNEED"):
                # the whole map: a fault maps the page cache's large folios, reaching into neighbours
                with contextlib.suppress(OSError, ValueError):
                    self._mm.madvise(mmap.MADV_DONTNEED)

    def load_entry(self, e: _Entry, device: Any, dtype: DType | None) -> Any:
        return _to_device(_convert(self, e, dtype), device)

    def close(self) -> None:
        self.closed = True
        if self._st is not None:
            self._st.__exit__(None, None, None)
        if self._mm is not None:
            with contextlib.suppress(BufferError):
                self._mm.close()


# --- readers -----------------------------------------------------------------------------------------
class MmapedSafetensors:
    """Memory-mapped safetensors file(s), loading one tensor at a time (Candle's ``MmapedSafetensors``).

    ``MmapedSafetensors(path)``; ``MmapedSafetensors([p1, p2])`` or ``.multi(paths)`` for shards;
    ``MmapedSafetensors("model.safetensors.index.json")`` reads the Hugging Face shard index.
    ``load(name, device)``, ``get(name) -> TensorView``, ``tensors()``, ``names()``, ``name in st``.
    ``routing`` is ``None`` for one file, else ``{name: index into paths}`` as in Candle.
    """

    def __init__(self, path: PathLike | Iterable[PathLike]):
        self._sources: list[_Source] = []
        self.routing: dict[str, int] | None = None
        if isinstance(path, (str, os.PathLike)):
            p = os.fspath(path)
            if p.endswith(".json"):
                self._open_index(p)
            else:
                self._sources = [_Source.open(p)]
        elif isinstance(path, Iterable) and not isinstance(path, (bytes, bytearray)):  # a list, Path.glob(..)
            self._open_multi([errors.path_arg(p, "MmapedSafetensors.multi") for p in path])
        else:
            errors.path_arg(path, "MmapedSafetensors")

    @classmethod
    def new(cls, path: PathLike) -> MmapedSafetensors:
        """Candle's ``MmapedSafetensors::new(path)`` (= the constructor)."""
        return cls(path)

    @classmethod
    def multi(cls, paths: Iterable[PathLike]) -> MmapedSafetensors:
        """Candle's ``MmapedSafetensors::multi``: several files (e.g. shards); each name is routed to the
        file holding it. A name in two files raises ``SafeTensor`` (Candle: the last file wins); no
        files opens, and every ``get`` raises ``CannotFindTensor`` (as Candle)."""
        return cls(list(paths))

    def _open_multi(self, paths: list[str]) -> None:
        # no files: opens, and every name is then missing (Candle's ``multi(&[])``)
        routing: dict[str, int] = {}
        try:
            for i, p in enumerate(paths):
                s = _Source.open(p)
                self._sources.append(s)
                for name in s.entries:
                    if name in routing:
                        raise errors.SafeTensor(
                            f"tensor {name!r} is in both {paths[routing[name]]} and {p}; shards must not overlap"
                        )
                    routing[name] = i
        except BaseException:
            self.close()
            raise
        self.routing = routing

    def _open_index(self, index_path: str) -> None:
        try:
            with open(index_path, "rb") as f:
                index = json.loads(f.read().decode("utf-8"))
            weight_map = wm = index["weight_map"]
            if not (wm and isinstance(wm, dict) and all(isinstance(v, str) for v in wm.values())):
                raise TypeError("weight_map must map tensor names to file names")
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise errors.SafeTensor(f"invalid safetensors index {index_path}: {type(e).__name__}: {e}") from None
        base = os.path.dirname(index_path)
        shards = list(dict.fromkeys(weight_map.values()))
        for shard in shards:
            if shard_outside(shard):
                raise errors.SafeTensor(f"safetensors index {index_path}: {shard_outside(shard)}")
            if not os.path.exists(os.path.join(base, shard)):
                raise errors.SafeTensor(f"safetensors index {index_path} names shard {shard!r}, which does not exist")
        self._open_multi([os.path.join(base, s) for s in shards])
        assert self.routing is not None
        for name, shard in weight_map.items():
            i = shards.index(shard)
            if self.routing.get(name) != i:
                self.close()
                raise errors.SafeTensor(
                    f"safetensors index {index_path} routes tensor {name!r} to {shard}, which does not hold it"
                )

    # --- queries ------------------------------------------------------------------------------
    @property
    def paths(self) -> list[str]:
        """The files read, in order."""
        return [s.src for s in self._sources]

    def _source_of(self, name: str) -> _Source:
        if self.routing is None:
            s = self._sources[0]
            if name in s.entries:
                return s
        elif name in self.routing:
            return self._sources[self.routing[name]]
        if not self._sources:
            raise errors.CannotFindTensor(name, "no files were given")
        near = difflib.get_close_matches(name, self.names(), n=3)
        files = ", ".join(self.paths)
        raise errors.CannotFindTensor(name, f"not in {files}" + (f"; did you mean {', '.join(near)}?" if near else ""))

    def get(self, name: str) -> TensorView:
        """The TensorView of ``name`` (raises ``CannotFindTensor``)."""
        s = self._source_of(name)
        return TensorView(s, s.entries[name])

    def load(self, name: str, device: Any = None, dtype: Any = None) -> Any:
        """Tensor ``name`` on ``device``; ``dtype`` converts while loading (extension)."""
        s = self._source_of(name)
        return s.load_entry(s.entries[name], device, _resolve_dtype(dtype))

    def file_of(self, name: str) -> str:
        """The path of the file holding ``name``."""
        return self._source_of(name).src

    def tensors(self) -> list[tuple[str, TensorView]]:
        """Candle's ``MmapedSafetensors::tensors``: ``(name, TensorView)`` for every tensor of every file."""
        return [(n, TensorView(s, e)) for s in self._sources for n, e in s.entries.items()]

    def names(self) -> list[str]:
        """The tensor names of every file, in file order (also ``keys()``)."""
        return [n for s in self._sources for n in s.entries]

    keys = names

    def metadata(self) -> dict[str, str]:
        """The ``__metadata__`` of the file(s), merged."""
        out: dict[str, str] = {}
        for s in self._sources:
            out.update(s.metadata or {})
        return out

    def __contains__(self, name: object) -> bool:
        if self.routing is not None:
            return name in self.routing
        return name in self._sources[0].entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return sum(len(s.entries) for s in self._sources)

    def close(self) -> None:
        """Unmap the files (tensors already loaded stay valid)."""
        for s in self._sources:
            s.close()

    def __enter__(self) -> MmapedSafetensors:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MmapedSafetensors({self.paths}, {len(self)} tensors)"


class SliceSafetensors(MmapedSafetensors):
    """Safetensors held in memory (Candle's ``SliceSafetensors`` / ``BufferedSafetensors``)."""

    def __init__(self, buffer: bytes | bytearray | memoryview, op: str = "SliceSafetensors"):
        self.routing = None
        self._sources = [_Source.from_buffer(buffer, op)]


BufferedSafetensors = SliceSafetensors


class SafeTensors(MmapedSafetensors):
    """The safetensors crate's ``SafeTensors`` of a mapped file, as ``MmapedFile::deserialize`` gives it:
    ``tensor(name) -> TensorView``, ``tensors()``, ``names()``, ``len()``, ``is_empty()``."""

    @classmethod
    def deserialize(cls, buffer: bytes | bytearray | memoryview | mmap.mmap) -> SafeTensors:
        """The safetensors crate's ``SafeTensors::deserialize(&buffer)``: the tensors of a file's bytes
        (``&mmap[..]`` is an ``mmap.mmap`` or its bytes). Raises ``SafeTensor`` for a malformed buffer."""
        st = cls.__new__(cls)
        SliceSafetensors.__init__(st, buffer, "SafeTensors.deserialize")
        return st

    def tensor(self, name: str) -> TensorView:
        """The TensorView of ``name`` (``SafeTensors::tensor``; raises ``CannotFindTensor``)."""
        return self.get(name)

    def len(self) -> int:
        """``SafeTensors::len``: the number of tensors (``len(st)``)."""
        return self.__len__()

    def is_empty(self) -> bool:
        """The safetensors crate's ``SafeTensors::is_empty``: whether the file holds no tensor."""
        return self.__len__() == 0


class MmapedFile:
    """Candle's ``MmapedFile::new(path)``: a safetensors file whose tensors ``deserialize()`` gives,
    as a :class:`SafeTensors` (the header is checked there)."""

    def __init__(self, path: PathLike):
        self.path = errors.path_arg(path, "MmapedFile")
        errors.check_file(self.path, "MmapedFile")

    @classmethod
    def new(cls, path: PathLike) -> MmapedFile:
        """``MmapedFile::new(path)`` (= the constructor)."""
        return cls(path)

    def deserialize(self) -> SafeTensors:
        """``mmaped_file.deserialize()``: the file's tensors, one :class:`TensorView` at a time."""
        return SafeTensors(self.path)


def load(path: PathLike, device: Any = None, dtype: Any = None) -> dict[str, Any]:
    """All tensors of a safetensors file, in file order (Candle's ``safetensors::load``).

    ``dtype`` converts every tensor while loading (extension, e.g. to read f64 without x64 mode).
    """
    with MmapedSafetensors(path) as st:
        return {n: st.load(n, device, dtype) for n in st.names()}


def load_buffer(data: bytes | bytearray | memoryview, device: Any = None, dtype: Any = None) -> dict[str, Any]:
    """All tensors of safetensors bytes (Candle's ``safetensors::load_buffer``)."""
    st = SliceSafetensors(data, "load_buffer")
    return {n: st.load(n, device, dtype) for n in st.names()}


# --- writing ---------------------------------------------------------------------------------------
def _plan(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None) -> list[tuple[str, Any, DType]]:
    """Check the arguments of ``save``: ``(name, tensor, dtype)`` for each tensor."""
    if not isinstance(tensors, Mapping):
        raise errors.Msg(f"safetensors save expects a dict of name -> Tensor, got {type(tensors).__name__}")
    if metadata is not None and not (
        isinstance(metadata, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise errors.Msg("safetensors save: metadata must map strings to strings")
    out = []
    for name, t in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise errors.Msg(f"safetensors save: invalid tensor name {name!r}")
        if isinstance(t, TensorBase):
            dt = t.dtype
        elif isinstance(t, (np.ndarray, jax.Array, np.generic)):
            dt = from_array_dtype(t.dtype, f"safetensors save of {name!r}")
        else:
            raise errors.Msg(f"safetensors save: {name!r} is a {type(t).__name__}, expected a Tensor")
        out.append((name, t, dt))
    return out


def _host_bytes(name: str, t: Any, nbytes: int) -> np.ndarray:
    """The tensor's bytes on the host, little-endian and contiguous (a view where possible)."""
    try:
        arr = np.asarray(t)
    except RuntimeError as e:  # a deleted jax.Array
        raise errors.Msg(f"safetensors save: tensor {name!r} cannot be read: {e}") from None
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    arr = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    if arr.nbytes != nbytes:
        raise errors.Msg(f"safetensors save: tensor {name!r} produced {arr.nbytes} bytes, expected {nbytes}")
    return arr


def save(tensors: Mapping[str, Any], path: PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``{name: Tensor}`` to a safetensors file (Candle's ``safetensors::save``), atomically.

    ``metadata`` (extension) becomes the ``__metadata__`` header entry, e.g. ``{"format": "pt"}``.
    The safetensors package writes the file (streaming each tensor from its host buffer; tensors on
    a CPU device are not copied).
    """
    errors.path_arg(path, "safetensors save")
    keep, specs = [], {}
    for name, t, dt in _plan(tensors, metadata):
        shape = [int(d) for d in t.shape]
        try:
            arr = _host_bytes(name, t, math.prod(shape) * np.dtype(dt.np).itemsize)
        except errors.Error as e:
            e.add_note(f"while saving tensor {name!r} to {os.fspath(path)} (the file was not changed)")
            raise
        keep.append(arr)  # the specs hold raw pointers into these
        specs[name] = safetensors.TensorSpec(
            dtype=np.dtype(dt.np).name, shape=shape, data_ptr=arr.ctypes.data, data_len=arr.nbytes
        )
    with atomic_name(path) as tmp:
        try:
            safetensors.serialize_file(specs, tmp, metadata=dict(metadata) if metadata else None)
        except (safetensors.SafetensorError, OSError) as e:
            raise errors.SafeTensor(f"cannot save {os.fspath(path)}: {e}") from None
    del keep


def save_tensor(t: Any, name: str, path: PathLike) -> None:
    """``t.save_safetensors(name, path)``: one tensor under ``name``."""
    save({name: t}, path)


__all__ = [
    "BufferedSafetensors",
    "MmapedFile",
    "MmapedSafetensors",
    "SafeTensorDtypeError",
    "SafeTensorX64Error",
    "SafeTensors",
    "SliceIterator",
    "SliceSafetensors",
    "TensorView",
    "atomic_file",
    "load",
    "load_buffer",
    "save",
    "save_tensor",
]
