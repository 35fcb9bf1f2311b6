"""Reading PyTorch checkpoints (``torch.save`` zip files) without executing pickled code.

requires: numpy, ml_dtypes (bf16), zipfile, pickle (the unpickler, with every global resolved here)
provides: ``load``, ``load_pickle``, ``module_state_dict``, ``tensor_infos``, ``PthTensors``, ``PickledObject``

Candle's ``candle::pickle`` (``read_all``, ``PthTensors``) / PyTorch's ``torch.load(weights_only=True)``.
The pickle is read by an unpickler whose ``find_class`` resolves only a fixed set of names to
functions defined here: tensor rebuild functions, storage types and plain containers. Any other
global raises :class:`candlejax.errors.PthUnsafeGlobal` naming it and the file, before anything is
called; nothing from the pickle is ever imported. Tensors are built afterwards from the storage
records, with offsets, sizes and strides checked against the storage first.

``load_pickle`` also reads checkpoints that pickle whole modules (Ultralytics): classes under the
allowed module prefixes become inert :class:`PickledObject` records (their constructors and
``__setstate__`` are never called), and :func:`module_state_dict` walks them as ``state_dict()``.
"""

from __future__ import annotations

import collections
import copy
import functools
import os
import pickle
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType
from candlejax.io._checks import ZIP_ERRORS, zip_method_refusal, zip_possible_size
from candlejax.tensor._core import wrap
from candlejax.tensor.creation import as_jax_array

__all__ = [
    "DEFAULT_ALLOWED_OBJECTS",
    "PickledObject",
    "PickledRef",
    "PthTensors",
    "TensorInfo",
    "load",
    "load_pickle",
    "read_all",
    "read_all_with_key",
    "read_pth_tensor_info",
    "module_state_dict",
    "tensor_infos",
]

# storage type name -> numpy dtype
_STORAGES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": DType.BF16.np,
    "DoubleStorage": np.dtype(np.float64),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}

#: torch storage classes and dtypes that candlejax does not read (named as unsupported, not as unsafe globals)
_UNSUPPORTED_STORAGES = {
    "ComplexHalfStorage": "complex32", "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
    "QInt8Storage": "qint8", "QUInt8Storage": "quint8", "QInt32Storage": "qint32", "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
}
_UNSUPPORTED_DTYPES = (
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2",
    "uint16", "uint32", "uint64", "complex32", "complex64", "complex128", "bits1x8", "bits2x4", "bits4x2", "bits8",
    "bits16",
)
_READ_DTYPES = "float32, float16, bfloat16, float64, int64, int32, int16, int8, uint8 and bool"

#: a view (zero strides: ``expand``) is copied when read; refused when the copy exceeds both of these
_VIEW_MAX_RATIO, _VIEW_MIN_LIMIT = 4, 64 << 20

DEFAULT_ALLOWED_OBJECTS: tuple[str, ...] = ("ultralytics.", "torch.nn.modules.", "torch.nn.parameter.")


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: np.dtype | None  # None: a known torch storage of a dtype candlejax does not read


@dataclass(frozen=True)
class _TorchDType:
    """A torch dtype global candlejax does not read (``torch.uint16``), passed to ``_rebuild_tensor_v3``."""

    name: str


class _UnsupportedDType(Exception):
    """Raised while unpickling a tensor of an unsupported torch dtype; ``unpickle`` adds the file."""


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the pickle describes it (Candle's ``pickle::TensorInfo``); not yet read."""

    storage: str  # record key, e.g. "12"
    dtype: np.dtype
    storage_numel: int
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int


class PickledObject:
    """An inert record of a pickled instance of an allowed class: ``qualname`` (``module.Name``),
    the constructor ``args`` and the pickled ``state`` (usually the instance ``__dict__``)."""

    qualname: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        obj = object.__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls the class: record only
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __reduce__(self) -> Any:
        raise TypeError("PickledObject records are not picklable")

    def __repr__(self) -> str:
        return f"PickledObject({self.qualname})"


class PickledRef:
    """An inert ``getattr(AllowedClass, "name")`` from the pickle (e.g. a method reference)."""

    def __init__(self, qualname: str):
        self.qualname = qualname

    def __repr__(self) -> str:
        return f"PickledRef({self.qualname})"


# ------------------------------------------------------------------------------------------------
# the functions the pickle may call (REDUCE), all defined here
# ------------------------------------------------------------------------------------------------
def _ints(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in x)


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> TensorInfo:
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2 expects a storage, got {type(storage).__name__}")
    size, stride = tuple(size) if isinstance(size, (tuple, list)) else size, tuple(stride) if isinstance(
        stride, (tuple, list)) else stride  # fmt: skip
    if not (isinstance(offset, int) and _ints(size) and _ints(stride) and len(size) == len(stride)):
        raise pickle.UnpicklingError(f"malformed tensor: offset {offset!r}, size {size!r}, stride {stride!r}")
    return TensorInfo(storage.key, storage.dtype, storage.numel, offset, size, stride)


def _rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, _grad: Any = None, _hooks: Any = None,
                       dtype: Any = None, *_: Any) -> TensorInfo:
    """torch writes v3 only for dtypes without a typed storage (uint16/32/64, float8...), none of which is read."""
    name = f"torch.{dtype.name}" if isinstance(dtype, _TorchDType) else repr(dtype)
    raise _UnsupportedDType(f"a tensor of dtype {name}")


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    return collections.OrderedDict(*args)


class _Size(tuple):
    """``torch.Size`` -> a plain tuple."""

    def __new__(cls, *args: Any) -> tuple:  # type: ignore[misc]
        return tuple(*args)


_SAFE: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _Size,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "str"): str,
    ("builtins", "bool"): bool,
}
_SAFE.update({("torch", name): _StorageType(name, dt) for name, dt in _STORAGES.items()})
_SAFE.update({("torch", name): _StorageType(name, None) for name in _UNSUPPORTED_STORAGES})
_SAFE.update({("torch", name): _TorchDType(name) for name in _UNSUPPORTED_DTYPES})
_SAFE[("torch.storage", "UntypedStorage")] = _StorageType("UntypedStorage", np.dtype(np.uint8))
_SAFE[("torch._utils", "_rebuild_tensor_v3")] = _rebuild_tensor_v3
_OBJECTS_ONLY: dict[tuple[str, str], Any] = {("builtins", "set"): set, ("builtins", "frozenset"): frozenset}


def _load_build(self: _Unpickler) -> None:
    """BUILD only on records and on OrderedDicts (a state dict's ``_metadata``); never a setattr, and never
    an attribute that would hide an OrderedDict method (``items``) from the readers."""
    state = self.stack.pop()
    inst = self.stack[-1]
    if isinstance(inst, PickledObject):
        inst.state = state
    elif type(inst) is collections.OrderedDict and isinstance(state, dict):
        inst.__dict__.update({k: v for k, v in state.items() if isinstance(k, str) and not k.startswith("__")
                              and not hasattr(collections.OrderedDict, k)})  # fmt: skip
    else:
        raise pickle.UnpicklingError(f"BUILD (set state) on a {type(inst).__name__} is not allowed")


class _Unpickler(pickle._Unpickler):  # the pure-Python unpickler, with BUILD restricted
    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _load_build

    def __init__(self, file: Any, src: str, allow_objects: tuple[str, ...]):
        super().__init__(file)
        self.src = src
        self.allow = allow_objects
        self.classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":
            module = "builtins"
        key = (module, name)
        if key in _SAFE:
            return _SAFE[key]
        if self.allow:
            if key in _OBJECTS_ONLY:
                return _OBJECTS_ONLY[key]
            if key == ("builtins", "getattr"):
                return self._getattr
            qual = f"{module}.{name}"
            if any(qual.startswith(p) for p in self.allow):
                if qual not in self.classes:
                    self.classes[qual] = type(name, (PickledObject,), {"qualname": qual, "__module__": __name__})
                return self.classes[qual]
        raise errors.PthUnsafeGlobal(self.src, f"{module}.{name}", objects=bool(self.allow))

    @staticmethod
    def _getattr(obj: Any, name: Any) -> PickledRef:
        if not (isinstance(obj, type) and issubclass(obj, PickledObject) and isinstance(name, str)):
            raise pickle.UnpicklingError(f"getattr is only allowed on recorded classes, got {obj!r}")
        return PickledRef(f"{obj.qualname}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        ok = (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[2], str)
              and isinstance(pid[4], int) and not isinstance(pid[4], bool) and pid[4] >= 0)  # fmt: skip
        if not ok:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        st = pid[1]
        if not isinstance(st, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {st!r} for storage {pid[2]}")
        if st.dtype is None:
            raise _UnsupportedDType(f"storage {pid[2]} of dtype torch.{_UNSUPPORTED_STORAGES[st.name]} ({st.name})")
        return _Storage(pid[2], st.dtype, pid[4])


# ------------------------------------------------------------------------------------------------
# the zip archive
# ------------------------------------------------------------------------------------------------
#: bytes per read of a storage record: ``ZipExtFile.readinto`` reads the whole request into a temporary
#: ``bytes`` first, which doubled the host memory of the largest tensor
_CHUNK = 16 << 20


def _read_chunked(f: Any, out: memoryview) -> int:
    """Fill ``out`` from the zip member ``f`` a chunk at a time; the number of bytes read."""
    n = 0
    while n < len(out):
        chunk = f.read(min(_CHUNK, len(out) - n))
        if not chunk:
            break
        out[n : n + len(chunk)] = chunk
        n += len(chunk)
    return n


class _Archive:
    def __init__(self, path: str | os.PathLike):
        self.src = errors.path_arg(path, "torch checkpoint read")
        errors.check_file(self.src, "torch checkpoint read")
        try:
            self.zf = zipfile.ZipFile(self.src)
        except ZIP_ERRORS as e:
            raise errors.Pth(
                f"{self.src}: not a torch.save zip file ({type(e).__name__}: {e}); the legacy pre-1.6 format is"
                " not supported"
            ) from None
        try:
            self._read_header()
        except BaseException:
            self.zf.close()  # the traceback keeps this frame (and so the archive) alive
            raise

    def __enter__(self) -> _Archive:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.zf.close()

    def _read_header(self) -> None:
        self.size = os.fstat(self.zf.fp.fileno()).st_size if self.zf.fp is not None else 0
        names = self.zf.namelist()
        pkls = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise errors.Pth(f"{self.src}: expected one <archive>/data.pkl record, found {len(pkls)}")
        self.prefix = pkls[0][: -len("data.pkl")]
        self.big_endian = False
        if self.prefix + "byteorder" in names:
            order = self._read_record(self.prefix + "byteorder", 16).decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise errors.Pth(f"{self.src}: unknown byteorder {order!r}")
            self.big_endian = order == "big"
        self.storages: dict[str, np.ndarray] = {}

    def _open(self, info: zipfile.ZipInfo) -> Any:
        """``zf.open(info)``; a record whose CRC-32 is 0 is read without the check, as ``torch.load`` reads
        it: ``torch.serialization.set_crc32_options(False)`` writes 0 for every record."""
        if info.CRC == 0 and info.file_size:
            info = copy.copy(info)
            del info.CRC  # zipfile checks the CRC only when the ZipInfo has one
        return self.zf.open(info)

    def _read_record(self, rec: str, limit: int | None = None) -> bytes:
        """The bytes of the small record ``rec`` (at most ``limit``), refusing sizes the archive cannot hold."""
        info = self.zf.getinfo(rec)
        why = zip_method_refusal(info)
        if why is not None:
            raise errors.Pth(f"{self.src}: {why} (torch.load refuses it too)")
        if info.file_size > zip_possible_size(info, self.size):
            raise errors.Pth(
                f"{self.src}: record {rec} claims {info.file_size} bytes, more than its {info.compress_size} stored"
                f" bytes in a {self.size}-byte archive can hold (corrupt file?)"
            )
        n = info.file_size if limit is None else min(info.file_size, limit)
        try:
            with self._open(info) as f:
                data = f.read(n)
        except ZIP_ERRORS as e:
            why = f"{type(e).__name__}: {e}" if str(e) else "the archive ends inside the record (truncated file?)"
            raise errors.Pth(f"{self.src}: cannot read {rec}: {why}") from None
        if len(data) != n:
            raise errors.Pth(f"{self.src}: record {rec} ended after {len(data)} of {n} bytes")
        return data

    def unpickle(self, allow_objects: tuple[str, ...]) -> Any:
        data = self._read_record(self.prefix + "data.pkl")
        import io

        try:
            return _Unpickler(io.BytesIO(data), self.src, allow_objects).load()
        except errors.Error:
            raise
        except _UnsupportedDType as e:
            raise errors.Pth(
                f"{self.src}: {e} is not supported (candlejax reads {_READ_DTYPES} tensors); convert it in torch"
                " first, e.g. t.to(torch.float32)"
            ) from None
        except Exception as e:  # malformed pickle streams raise many kinds of errors
            msg = f"malformed pickle in {self.prefix}data.pkl: {type(e).__name__}: {e}"
            raise errors.Pth(f"{self.src}: {msg}") from None

    def storage(self, t: TensorInfo, name: str) -> np.ndarray:
        got = self.storages.get(t.storage)
        if got is not None:
            if got.dtype != t.dtype or got.size != t.storage_numel:
                raise errors.Pth(f"{self.src}: tensor {name!r}: storage {t.storage} is used with two dtypes or sizes")
            return got
        rec = f"{self.prefix}data/{t.storage}"
        try:
            info = self.zf.getinfo(rec)
        except KeyError:
            raise errors.Pth(f"{self.src}: tensor {name!r}: storage record {rec} is missing") from None
        why = zip_method_refusal(info)
        if why is not None:
            raise errors.Pth(f"{self.src}: tensor {name!r}: {why} (torch.load refuses it too)")
        nbytes = t.storage_numel * t.dtype.itemsize
        if info.file_size < nbytes:
            raise errors.Pth(
                f"{self.src}: tensor {name!r}: storage record {rec} holds {info.file_size} bytes, fewer than the "
                f"{nbytes} of {t.storage_numel} {t.dtype} elements (storage too short)"
            )
        possible = zip_possible_size(info, self.size)
        if nbytes > possible:
            raise errors.Pth(
                f"{self.src}: tensor {name!r}: storage record {rec} claims {info.file_size} bytes and the storage"
                f" {nbytes}, but it can hold at most {possible} ({info.compress_size} stored bytes"
                f"{' deflated' if info.compress_type == zipfile.ZIP_DEFLATED else ''} in a {self.size}-byte archive)"
            )
        buf = bytearray(nbytes)
        try:
            with self._open(info) as f:
                n = _read_chunked(f, memoryview(buf))
        except ZIP_ERRORS as e:
            why = f"{type(e).__name__}: {e}" if str(e) else "the archive ends inside the record (truncated file?)"
            raise errors.Pth(f"{self.src}: tensor {name!r}: cannot read storage record {rec}: {why}") from None
        if n != nbytes:
            raise errors.Pth(f"{self.src}: tensor {name!r}: storage record {rec} ended after {n} of {nbytes} bytes")
        arr = np.frombuffer(buf, dtype=t.dtype.newbyteorder(">") if self.big_endian else t.dtype)
        if self.big_endian:
            arr = arr.astype(t.dtype)
        self.storages[t.storage] = arr
        return arr

    def tensor(self, t: TensorInfo, name: str) -> np.ndarray:
        if t.offset < 0 or any(d < 0 for d in t.shape) or any(s < 0 for s in t.stride):
            raise errors.Pth(f"{self.src}: tensor {name!r}: negative offset, size or stride "
                             f"(offset {t.offset}, size {list(t.shape)}, stride {list(t.stride)})")  # fmt: skip
        numel = int(np.prod(t.shape, dtype=object)) if t.shape else 1
        last = t.offset + sum((d - 1) * s for d, s in zip(t.shape, t.stride)) if numel else t.offset - 1
        if last >= t.storage_numel or t.offset > t.storage_numel:
            raise errors.Pth(
                f"{self.src}: tensor {name!r}: view (offset {t.offset}, size {list(t.shape)}, stride {list(t.stride)}) "
                f"reaches element {last}, outside its storage {t.storage} of {t.storage_numel} elements"
            )
        nbytes, storage_bytes = numel * t.dtype.itemsize, t.storage_numel * t.dtype.itemsize
        if nbytes > max(_VIEW_MAX_RATIO * storage_bytes, _VIEW_MIN_LIMIT):
            raise errors.Pth(
                f"{self.src}: tensor {name!r}: view (offset {t.offset}, size {list(t.shape)}, stride {list(t.stride)})"
                f" of storage {t.storage} ({storage_bytes} bytes) would be copied into {nbytes} bytes, more than"
                f" {_VIEW_MAX_RATIO}x its storage and {_VIEW_MIN_LIMIT >> 20} MiB; candlejax copies views (torch.load"
                " returns an expanded view): save t.contiguous() or t.clone() instead"
            )
        base = self.storage(t, name)
        if numel == 0:
            return np.empty(t.shape, dtype=t.dtype)
        contiguous = list(t.stride) == [int(np.prod(t.shape[i + 1 :], dtype=object)) for i in range(len(t.shape))]
        if contiguous or all(d == 1 for d in t.shape):
            return base[t.offset : t.offset + numel].reshape(t.shape)
        view = np.lib.stride_tricks.as_strided(
            base[t.offset :], shape=t.shape, strides=[s * t.dtype.itemsize for s in t.stride], writeable=False
        )
        return np.array(view)


def _materialise(ar: _Archive, obj: Any, name: str, seen: dict[int, Any]) -> Any:
    """Replace every TensorInfo in a container tree by its array (errors name the tensor path)."""
    if isinstance(obj, TensorInfo):
        return ar.tensor(obj, name or "<root>")
    if id(obj) in seen:
        return seen[id(obj)]
    if isinstance(obj, dict):
        seen[id(obj)] = obj
        for k in list(obj):
            obj[k] = _materialise(ar, obj[k], f"{name}.{k}" if name else str(k), seen)
        if isinstance(getattr(obj, "__dict__", None), dict):
            _materialise(ar, obj.__dict__, name, seen)
        return obj
    if isinstance(obj, list):
        seen[id(obj)] = obj
        obj[:] = [_materialise(ar, v, f"{name}.{i}" if name else str(i), seen) for i, v in enumerate(obj)]
        return obj
    if isinstance(obj, tuple) and any(isinstance(v, (TensorInfo, dict, list, tuple, PickledObject)) for v in obj):
        out = tuple(_materialise(ar, v, f"{name}.{i}" if name else str(i), seen) for i, v in enumerate(obj))
        seen[id(obj)] = out
        return out
    if isinstance(obj, PickledObject):
        seen[id(obj)] = obj
        obj.args = _materialise(ar, obj.args, name, seen)
        obj.state = _materialise(ar, obj.state, name, seen)
        return obj
    return obj


#: the most entries flattening a pickle's containers may visit: a pickle can share one container under two
#: keys at every level (the memo), so that a small file names 2**40 tensors ("billion laughs")
_MAX_FLAT_VISITS = 1 << 22


def _visit(budget: list[int], src: str) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise errors.Pth(
            f"{src}: its containers are shared so often that flattening them visits more than {_MAX_FLAT_VISITS}"
            " entries (a crafted file?)"
        )


def _flatten(obj: Any, prefix: str, out: dict[str, np.ndarray], src: str, budget: list[int] | None = None) -> None:
    items: Iterable[tuple[Any, Any]]
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return
    budget = [_MAX_FLAT_VISITS] if budget is None else budget
    for k, v in items:
        _visit(budget, src)
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, np.ndarray):
            if name in out:
                raise errors.Pth(f"{src}: two tensors flatten to the name {name!r}")
            out[name] = v
        else:
            _flatten(v, name, out, src, budget)


def _select(obj: Any, key: str | None, src: str) -> Any:
    if key is None:
        return obj
    if not isinstance(obj, dict) or key not in obj:
        have = list(obj)[:20] if isinstance(obj, dict) else type(obj).__name__
        raise errors.Pth(f"{src}: no key {key!r} at the top level (have {have})")
    return obj[key]


def _nesting_guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A pickle can nest containers (or make them cyclic) beyond Python's recursion limit."""

    @functools.wraps(fn)
    def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(path, *args, **kwargs)
        except RecursionError:
            src = errors.path_arg(path, fn.__name__)
            raise errors.Pth(f"{src}: containers nested too deeply (or cyclic)") from None

    return wrapper


@_nesting_guard
def load(path: str | os.PathLike, key: str | None = None) -> dict[str, np.ndarray]:
    """The tensors of a ``torch.save``'d state dict, nested dicts flattened with ``.``.

    ``torch.load(path, weights_only=True)`` / Candle's ``pickle::read_all_with_key(path, key)``.
    ``key`` selects a nested dict first (e.g. ``"state_dict"``). Non-tensor leaves are skipped.
    """
    with _Archive(path) as ar:
        obj = _select(ar.unpickle(()), key, ar.src)
        if not isinstance(obj, (dict, list, tuple)):
            what = "a single tensor (torch.save(t))" if isinstance(obj, TensorInfo) else f"a {type(obj).__name__}"
            raise errors.Pth(f"{ar.src}: holds {what}, not a state dict; save a dict such as {{'weight': t}}")
        obj = _materialise(ar, obj, "", {})
    out: dict[str, np.ndarray] = {}
    _flatten(obj, "", out, ar.src)
    return out


@_nesting_guard
def tensor_infos(path: str | os.PathLike, key: str | None = None) -> dict[str, TensorInfo]:
    """Name -> dtype/shape/storage of each tensor, without reading any storage
    (Candle's ``read_pth_tensor_info``)."""
    out: dict[str, TensorInfo] = {}
    src = errors.path_arg(path, "torch checkpoint read")
    budget = [_MAX_FLAT_VISITS]

    def walk(obj: Any, prefix: str) -> None:
        items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
        for k, v in items:
            _visit(budget, src)
            name = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, TensorInfo):
                if name in out:
                    raise errors.Pth(f"{src}: two tensors flatten to the name {name!r}")
                out[name] = v
            else:
                walk(v, name)

    with _Archive(path) as ar:
        walk(_select(ar.unpickle(()), key, ar.src), "")
    return out


@_nesting_guard
def load_pickle(path: str | os.PathLike, allow_objects: Iterable[str] = DEFAULT_ALLOWED_OBJECTS) -> Any:
    """The whole pickled object of a ``torch.save`` zip file, with tensors as numpy arrays.

    Instances of classes whose ``module.Name`` starts with one of ``allow_objects`` become inert
    :class:`PickledObject` records; nothing from the pickle is imported or called. Other globals
    raise :class:`candlejax.errors.PthUnsafeGlobal`.
    """
    allow = tuple(allow_objects)
    if any(not isinstance(p, str) or not p for p in allow):
        raise errors.Msg(f"load_pickle: allow_objects must be non-empty module prefixes, got {allow!r}")
    with _Archive(path) as ar:
        return _materialise(ar, ar.unpickle(allow), "", {})


def module_state_dict(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """``module.state_dict()`` of a :class:`PickledObject` module record: its ``_parameters`` and
    ``_buffers`` (minus ``_non_persistent_buffers_set``), then its ``_modules``, recursively."""
    if not isinstance(obj, PickledObject):
        raise errors.Msg(f"module_state_dict: expected a PickledObject module record, got {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    budget = [_MAX_FLAT_VISITS]

    def walk(m: Any, pre: str) -> None:
        _visit(budget, "module_state_dict")
        st = m.state if isinstance(m, PickledObject) else None
        if not isinstance(st, dict):
            return
        skip = st.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            for k, v in (st.get(group) or {}).items():
                if v is None or (group == "_buffers" and k in skip):
                    continue
                out[pre + k] = v
        for k, sub in (st.get("_modules") or {}).items():
            if sub is not None:
                walk(sub, f"{pre}{k}.")

    walk(obj, prefix)
    return out


def read_all(path: str | os.PathLike) -> list[tuple[str, np.ndarray]]:
    """Candle's ``pickle::read_all(path)``: ``[(name, array)]`` (see :func:`load`)."""
    return list(load(path).items())


def read_all_with_key(path: str | os.PathLike, key: str | None = None) -> list[tuple[str, np.ndarray]]:
    """Candle's ``pickle::read_all_with_key(path, key)``: ``[(name, array)]`` of the dict under ``key``."""
    return list(load(path, key).items())


def read_pth_tensor_info(path: str | os.PathLike, verbose: bool = False,
                         key: str | None = None) -> dict[str, TensorInfo]:  # fmt: skip
    """Candle's ``pickle::read_pth_tensor_info(path, verbose, key)``: name -> info, no data read
    (:func:`tensor_infos`; Candle lists infos that carry their names; ``verbose`` is ignored)."""
    return tensor_infos(path, key)


class PthTensors:
    """Candle's ``pickle::PthTensors::new(path, key)``: the tensor infos are read at once, each tensor's
    storage only by :meth:`get`. Nested dicts are flattened with ``.`` as in :func:`load`."""

    def __init__(self, path: str | os.PathLike, key: str | None = None):
        # absolute: get() reopens the file, which a later os.chdir must not change
        self.path = os.path.abspath(errors.path_arg(path, "PthTensors"))
        self._infos = tensor_infos(self.path, key)

    def tensor_infos(self) -> dict[str, TensorInfo]:
        """Name -> :class:`TensorInfo` (Candle's ``PthTensors::tensor_infos``)."""
        return self._infos

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def get(self, name: str, dtype: Any = None, device: Any = None) -> Any:
        """The Tensor ``name`` (strided and Fortran-ordered views included), or ``None`` when the file has
        no such tensor (Candle's ``PthTensors::get``). ``dtype`` converts while reading; int64 / f64 data
        needs JAX's x64 mode otherwise."""
        info = self._infos.get(name)
        if info is None:
            return None
        with _Archive(self.path) as ar:
            arr = ar.tensor(info, name)
        # the storage was read for this call: the tensor may alias it when it spans all of it (a view of
        # part of a larger storage is copied, not to keep the whole storage alive)
        whole = arr.nbytes == info.storage_numel * info.dtype.itemsize
        a = as_jax_array(arr, dtype, f"PthTensors.get({name!r}) of {self.path}", copy=not whole)
        return wrap(jax.device_put(a, Device.coerce(device).jax_device))
