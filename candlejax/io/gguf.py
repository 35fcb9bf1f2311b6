"""GGUF files (Candle's ``candle::quantized::gguf_file``): a bounds-checked, mmapped reader and an
atomic writer.

Sketch (needs a GGUF file)::

    from candlejax.io import gguf
    ct = gguf.Content.read("model.gguf")
    ct.metadata["llama.block_count"].to_u32()             # 30
    q = ct.tensor("blk.0.attn_q.weight", Device.Cpu)      # a QTensor, shape (out, in)

Layout (little-endian): magic ``GGUF``, version (1, 2, 3), tensor count, metadata count, the
metadata key/values, the tensor infos (name, dims innermost-first, ggml type, offset), then the
tensor data at the next multiple of ``general.alignment`` (default 32). Version 1 uses 32-bit
counts, lengths and dims; versions 2 and 3 use 64-bit ones. Shapes are reported in Candle's
row-major order (GGUF's dims reversed), e.g. a weight is ``(out, in)``.

Every read is checked against the file size before anything is allocated: a truncated file, a bad
magic, an absurd count or length, tensor data past the end, or an unknown ggml type raises
:class:`candlejax.errors.Gguf` naming the file and the key or tensor.
"""

from __future__ import annotations

import contextlib
import enum
import io
import itertools
import mmap
import os
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from candlejax import errors
from candlejax.io._checks import bytes_path_hint, shape_fits
from candlejax.quantized.ggml_types import GgmlDType
from candlejax.quantized.qtensor import QTensor
from candlejax.shape import Dims

DEFAULT_ALIGNMENT = 32
MAGIC = b"GGUF"
_MAX_DIMS = 8  # ggml uses 4; anything above 8 is a corrupt header
_MAX_NESTING = 64


class VersionedMagic(enum.Enum):
    """``VersionedMagic::{GgufV1, GgufV2, GgufV3}``."""

    GgufV1 = 1
    GgufV2 = 2
    GgufV3 = 3

    @property
    def version(self) -> int:
        """The GGUF version number (1, 2 or 3)."""
        return self.value


class ValueType(enum.Enum):
    """A GGUF metadata value type; values are the on-disk ids."""

    U8 = 0
    I8 = 1
    U16 = 2
    I16 = 3
    U32 = 4
    I32 = 5
    F32 = 6
    Bool = 7
    String = 8
    Array = 9
    U64 = 10
    I64 = 11
    F64 = 12

    def to_u32(self) -> int:
        """The GGUF type code written in the file (Candle's ``ValueType::to_u32``)."""
        return self.value

    def __call__(self) -> ValueType:
        """The type itself, so that Candle's ``value.value_type()`` (a method there) reads the
        ``Value.value_type`` attribute too."""
        return self


_SCALAR_FMT: dict[ValueType, str] = {
    ValueType.U8: "B",
    ValueType.I8: "b",
    ValueType.U16: "H",
    ValueType.I16: "h",
    ValueType.U32: "I",
    ValueType.I32: "i",
    ValueType.F32: "f",
    ValueType.U64: "Q",
    ValueType.I64: "q",
    ValueType.F64: "d",
}
_NP_OF: dict[ValueType, str] = {
    ValueType.U8: "<u1",
    ValueType.I8: "<i1",
    ValueType.U16: "<u2",
    ValueType.I16: "<i2",
    ValueType.U32: "<u4",
    ValueType.I32: "<i4",
    ValueType.F32: "<f4",
    ValueType.U64: "<u8",
    ValueType.I64: "<i8",
    ValueType.F64: "<f8",
}
#: the smallest magnitude that rounds to infinity in f32 (halfway past the largest f32)
_F32_OVERFLOW = 2.0**128 * (1 - 2.0**-25)
_INT_RANGE = {
    ValueType.U8: (0, 2**8 - 1),
    ValueType.I8: (-(2**7), 2**7 - 1),
    ValueType.U16: (0, 2**16 - 1),
    ValueType.I16: (-(2**15), 2**15 - 1),
    ValueType.U32: (0, 2**32 - 1),
    ValueType.I32: (-(2**31), 2**31 - 1),
    ValueType.U64: (0, 2**64 - 1),
    ValueType.I64: (-(2**63), 2**63 - 1),
}


class Value:
    """A GGUF metadata value (Candle's ``gguf_file::Value``): a type tag and a Python value.

    ``to_u32()``, ``to_f32()``, ``to_string()``, ``to_vec()`` ... return the value when the tag
    matches and raise otherwise (``to_u64`` also accepts u8/u16/u32/bool, as in Candle).
    ``.value`` is the plain Python value (arrays: a list of plain values); a Value compares equal
    to another Value with the same tag and value, or to a plain Python value.
    Build one with ``Value.u32(7)``, ``Value.string("x")``, ``Value.array([...])`` or
    ``Value.from_python(v)``.
    """

    __slots__ = ("_data", "elem_type", "value_type")

    def __init__(self, value_type: ValueType, value: Any, elem_type: ValueType | None = None):
        self.value_type = value_type
        # scalar; for Array: list[Value], a list of str, a 1-D numpy array of a numeric elem_type, or
        # (read from a file) _PackedStrings
        self._data = value
        self.elem_type = elem_type

    @property
    def _v(self) -> Any:
        d = self._data
        return d.decode() if isinstance(d, _PackedStrings) else d

    # --- constructors -------------------------------------------------------------------------
    @staticmethod
    def u8(v: int) -> Value:
        """Candle's ``Value::U8(v)``."""
        return Value(ValueType.U8, int(v))

    @staticmethod
    def i8(v: int) -> Value:
        """Candle's ``Value::I8(v)``."""
        return Value(ValueType.I8, int(v))

    @staticmethod
    def u16(v: int) -> Value:
        """Candle's ``Value::U16(v)``."""
        return Value(ValueType.U16, int(v))

    @staticmethod
    def i16(v: int) -> Value:
        """Candle's ``Value::I16(v)``."""
        return Value(ValueType.I16, int(v))

    @staticmethod
    def u32(v: int) -> Value:
        """Candle's ``Value::U32(v)``."""
        return Value(ValueType.U32, int(v))

    @staticmethod
    def i32(v: int) -> Value:
        """Candle's ``Value::I32(v)``."""
        return Value(ValueType.I32, int(v))

    @staticmethod
    def u64(v: int) -> Value:
        """Candle's ``Value::U64(v)``."""
        return Value(ValueType.U64, int(v))

    @staticmethod
    def i64(v: int) -> Value:
        """Candle's ``Value::I64(v)``."""
        return Value(ValueType.I64, int(v))

    @staticmethod
    def f32(v: float) -> Value:
        """Candle's ``Value::F32(v)`` (``v`` rounded to f32)."""
        return Value(ValueType.F32, float(np.float32(v)))

    @staticmethod
    def f64(v: float) -> Value:
        """Candle's ``Value::F64(v)``."""
        return Value(ValueType.F64, float(v))

    @staticmethod
    def bool(v: bool) -> Value:
        """Candle's ``Value::Bool(v)``."""
        return Value(ValueType.Bool, bool(v))

    @staticmethod
    def string(v: str) -> Value:
        """Candle's ``Value::String(v)``."""
        return Value(ValueType.String, str(v))

    @staticmethod
    def array(items: Iterable[Any], elem_type: ValueType | None = None) -> Value:
        """An array of Values (plain items are converted with :meth:`from_python`, or to ``elem_type``)."""
        if isinstance(items, np.ndarray):
            return Value._from_numpy(items, elem_type)
        vals = [
            v if isinstance(v, Value) else (Value._typed(elem_type, v) if elem_type else Value.from_python(v))
            for v in items
        ]
        types = {v.value_type for v in vals}
        if len(types) > 1:
            raise errors.Gguf(f"multiple value-types in the same array {sorted(t.name for t in types)}")
        et = next(iter(types)) if types else (elem_type or ValueType.U32)
        return Value(ValueType.Array, vals, et)

    @staticmethod
    def _typed(t: ValueType, v: Any) -> Value:
        if t is ValueType.Array:
            return Value.array(v)
        if t is ValueType.String:
            return Value.string(v)
        if t is ValueType.Bool:
            return Value.bool(v)
        if t in (ValueType.F32, ValueType.F64):
            return Value(t, float(np.float32(v)) if t is ValueType.F32 else float(v))
        return Value(t, int(v))

    @staticmethod
    def _from_numpy(a: np.ndarray, elem_type: ValueType | None = None) -> Value:
        if a.ndim != 1:
            raise errors.Gguf(f"GGUF arrays are 1-D, got an array of shape {a.shape}")
        if a.dtype == np.bool_:
            return Value.array([bool(x) for x in a], ValueType.Bool)
        if elem_type is None:
            by_np = {np.dtype(v).newbyteorder("="): k for k, v in _NP_OF.items()}
            elem_type = by_np.get(a.dtype.newbyteorder("="))
            if elem_type is None:
                raise errors.Gguf(f"cannot store a numpy array of dtype {a.dtype} in GGUF metadata")
        if elem_type not in _NP_OF:
            return Value.array(a.tolist(), elem_type)
        return Value(ValueType.Array, np.ascontiguousarray(a, dtype=_NP_OF[elem_type]), elem_type)

    @staticmethod
    def from_python(v: Any) -> Value:
        """bool -> Bool, int -> U32 / I32 / U64 / I64 (the narrowest that holds it, unsigned first),
        float -> F32, str -> String, list/tuple -> Array, numpy scalars and 1-D arrays keep their type.

        A finite float beyond F32's range raises (gguf-py's writer raises too) instead of becoming
        ``inf``: store it with ``Value.f64(v)`` or as ``numpy.float64(v)``."""
        if isinstance(v, Value):
            return v
        if isinstance(v, bool | np.bool_):
            return Value.bool(bool(v))
        if isinstance(v, np.generic):
            arr = np.asarray(v).reshape(1)
            return Value._from_numpy(arr).to_vec()[0]
        if isinstance(v, int):
            for t in (ValueType.U32, ValueType.I32, ValueType.U64, ValueType.I64):
                lo, hi = _INT_RANGE[t]
                if lo <= v <= hi:
                    return Value(t, v)
            raise errors.Gguf(f"integer {v} does not fit in a GGUF integer type")
        if isinstance(v, float):
            if np.isfinite(v) and abs(v) >= _F32_OVERFLOW:
                raise errors.Gguf(
                    f"float {v!r} does not fit in F32 (the type of a Python float in GGUF metadata);"
                    f" store it as Value.f64({v!r})"
                )
            return Value.f32(v)
        if isinstance(v, str):
            return Value.string(v)
        if isinstance(v, np.ndarray):
            return Value._from_numpy(v)
        if isinstance(v, list | tuple):
            return Value.array(v)
        raise errors.Gguf(f"cannot store a {type(v).__name__} in GGUF metadata")

    # --- Candle's accessors ---------------------------------------------------------------------
    def _expect(self, t: ValueType, what: str) -> Any:
        if self.value_type is not t:
            raise errors.Msg(f"not a {what} {self!r}")
        return self._v

    def to_u8(self) -> int:
        """Candle's ``Value::to_u8``: the value if it is a ``U8``, else an error naming the type."""
        return self._expect(ValueType.U8, "u8")

    def to_i8(self) -> int:
        """Candle's ``Value::to_i8``: the value if it is an ``I8``, else an error naming the type."""
        return self._expect(ValueType.I8, "i8")

    def to_u16(self) -> int:
        """Candle's ``Value::to_u16``: the value if it is a ``U16``, else an error naming the type."""
        return self._expect(ValueType.U16, "u16")

    def to_i16(self) -> int:
        """Candle's ``Value::to_i16``: the value if it is an ``I16``, else an error naming the type."""
        return self._expect(ValueType.I16, "i16")

    def to_u32(self) -> int:
        """Candle's ``Value::to_u32``: the value if it is a ``U32``, else an error naming the type."""
        return self._expect(ValueType.U32, "u32")

    def to_i32(self) -> int:
        """Candle's ``Value::to_i32``: the value if it is an ``I32``, else an error naming the type."""
        return self._expect(ValueType.I32, "i32")

    def to_u64(self) -> int:
        """The value as u64; u8, u16, u32 and bool are upcast (Candle's rule)."""
        if self.value_type in (ValueType.U64, ValueType.U8, ValueType.U16, ValueType.U32, ValueType.Bool):
            return int(self._v)
        raise errors.Msg(f"not a u64 or upcastable to u64 {self!r}")

    def to_i64(self) -> int:
        """Candle's ``Value::to_i64``: the value if it is an ``I64``, else an error naming the type."""
        return self._expect(ValueType.I64, "i64")

    def to_f32(self) -> float:
        """Candle's ``Value::to_f32``: the value if it is an ``F32``, else an error naming the type."""
        return self._expect(ValueType.F32, "f32")

    def to_f64(self) -> float:
        """Candle's ``Value::to_f64``: the value if it is an ``F64``, else an error naming the type."""
        return self._expect(ValueType.F64, "f64")

    def to_bool(self) -> bool:
        """Candle's ``Value::to_bool``: the value if it is a ``Bool``, else an error naming the type."""
        return self._expect(ValueType.Bool, "bool")

    def to_string(self) -> str:
        """Candle's ``Value::to_string``: the value if it is a ``String``, else an error naming the type."""
        return self._expect(ValueType.String, "string")

    def to_vec(self) -> list[Value]:
        """The elements of an Array, as Values."""
        v = self._expect(ValueType.Array, "vec")
        if isinstance(v, np.ndarray):
            t = self.elem_type
            return [Value(t, x) for x in v.tolist()]  # type: ignore[arg-type]
        if v and isinstance(v[0], str):
            return [Value(ValueType.String, x) for x in v]
        return v

    def to_numpy(self) -> np.ndarray:
        """A numeric Array as a 1-D numpy array (zero-copy when read from a file)."""
        v = self._expect(ValueType.Array, "vec")
        if isinstance(v, np.ndarray):
            return v
        return np.asarray(self.value)

    def __len__(self) -> int:
        if self.value_type is not ValueType.Array:
            raise errors.Msg(f"not a vec {self!r}")
        return len(self._data)

    @property
    def value(self) -> Any:
        """The plain Python value: int, float, bool, str, or a list of plain values."""
        if self.value_type is ValueType.Array:
            if isinstance(self._data, _PackedStrings):
                return self._data.decode()
            v = self._v
            if isinstance(v, np.ndarray):
                return v.tolist()
            return list(v) if v and isinstance(v[0], str) else [x.value for x in v]
        return self._v

    # --- dunder --------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if isinstance(other, Value):
            return self.value_type is other.value_type and self.value == other.value
        return self.value == other

    def __hash__(self) -> int:
        return hash((self.value_type, repr(self.value)))

    def __int__(self) -> int:
        return int(self._v)

    def __float__(self) -> float:
        return float(self._v)

    def __repr__(self) -> str:
        if self.value_type is ValueType.Array:
            n = len(self._data)
            head = ", ".join(repr(x) for x in self.to_vec()[:4]) if n <= 4 else f"{n} x {self.elem_type.name}"
            return f"Value.Array([{head}])"
        return f"Value.{self.value_type.name}({self._v!r})"


@dataclass(frozen=True)
class TensorInfo:
    """``gguf_file::TensorInfo``: the ggml type, Candle-order shape and the offset into the data section."""

    ggml_dtype: GgmlDType
    shape: tuple[int, ...]
    offset: int

    def __post_init__(self) -> None:
        if not isinstance(self.shape, Dims):  # a tuple that answers Candle's Shape methods too
            object.__setattr__(self, "shape", Dims(self.shape))

    def elem_count(self) -> int:
        """The number of elements of the tensor (``shape.elem_count()``)."""
        return self.shape.elem_count()

    def size_in_bytes(self) -> int:
        """The bytes the tensor's blocks take in the file, for its ``ggml_dtype``."""
        return self.ggml_dtype.bytes_for(self.elem_count())

    def read(self, reader: Any, tensor_data_offset: int, device: Any = None) -> QTensor:
        """``TensorInfo::read(reader, tensor_data_offset, device)``: this tensor's blocks from
        ``reader`` (a binary file object, or a path) at ``tensor_data_offset + offset``."""
        n, block = self.elem_count(), self.ggml_dtype.block_size()
        if n % block:
            raise errors.Gguf(f"the number of elements {n} is not divisible by the block size {block}")
        size, start = self.size_in_bytes(), int(tensor_data_offset) + self.offset
        if isinstance(reader, (str, os.PathLike)):
            errors.check_file(reader, "TensorInfo.read")
            with open(reader, "rb") as f:
                return self.read(f, tensor_data_offset, device)
        remaining = max(reader.seek(0, io.SEEK_END) - start, 0)
        if size > remaining:
            raise errors.Gguf(f"tensor needs {size} bytes at offset {start}, only {remaining} remaining in file")
        reader.seek(start)
        raw = np.frombuffer(reader.read(size), np.uint8)
        return QTensor.from_data(raw, self.ggml_dtype, self.shape or (1,), device)


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------
class _Cursor:
    """Bounds-checked little-endian reads over a buffer."""

    __slots__ = ("buf", "path", "pos", "size", "v1")

    def __init__(self, buf: Any, path: str):
        self.buf, self.path, self.pos, self.size, self.v1 = buf, path, 0, len(buf), False

    def err(self, msg: str) -> errors.Gguf:
        return errors.Gguf(f"gguf {self.path}: {msg}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.err(
                f"truncated or corrupt file: {what} needs {n} bytes at offset {self.pos},"
                f" but the file has {self.size - self.pos} bytes left"
            )

    def scalar(self, fmt: str, what: str) -> Any:
        n = struct.calcsize("<" + fmt)
        self.need(n, what)
        v = struct.unpack_from("<" + fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def count(self, what: str) -> int:
        return self.scalar("I" if self.v1 else "Q", what)

    def string(self, what: str) -> str:
        n = self.count(f"the length of {what}")
        if n > self.size - self.pos:
            raise self.err(
                f"truncated or corrupt file: {what} (a string of {n} bytes): string length {n} exceeds the"
                f" {self.size - self.pos} bytes left at offset {self.pos}"
            )
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        # GGUF strings should not be NUL-terminated but some are; some are not valid UTF-8 (Candle: lossy)
        return raw.rstrip(b"\x00").decode("utf-8", errors="replace")

    def value_type(self, what: str) -> ValueType:
        t = self.scalar("I", f"the value type of {what}")
        try:
            return ValueType(t)
        except ValueError:
            raise self.err(f"unrecognized value-type {t:#x} for {what}") from None

    def value(self, t: ValueType, what: str, depth: int = 0) -> Value:
        if t in _SCALAR_FMT:
            return Value(t, self.scalar(_SCALAR_FMT[t], what))
        if t is ValueType.Bool:
            b = self.scalar("B", what)
            if b not in (0, 1):
                raise self.err(f"unexpected bool value {b} for {what}")
            return Value(t, bool(b))
        if t is ValueType.String:
            return Value(t, self.string(what))
        # Array
        if depth >= _MAX_NESTING:
            where = _nest_root(what)
            raise self.err(f"arrays nested more than {_MAX_NESTING} deep in {where} (the nesting depth limit)")
        et = self.value_type(f"the elements of {what}")
        n = self.count(f"the length of {what}")
        min_elem = {
            ValueType.String: 4 if self.v1 else 8,
            ValueType.Array: 8 if self.v1 else 12,
            ValueType.Bool: 1,
        }.get(et) or struct.calcsize(_SCALAR_FMT[et])
        if n * min_elem > self.size - self.pos:
            raise self.err(
                f"array {what} claims {n} elements of type {et.name} ({n * min_elem}+ bytes)"
                f": the array length exceeds the {self.size - self.pos} bytes left in the file"
            )
        if et in _NP_OF:
            a = np.frombuffer(self.buf, dtype=_NP_OF[et], count=n, offset=self.pos).copy()
            self.pos += a.nbytes
            return Value(ValueType.Array, a, et)
        if et is ValueType.Bool:
            # a copy, not a view: the traceback of the error below would keep the file mapped
            a = np.frombuffer(self.buf, dtype=np.uint8, count=n, offset=self.pos).copy()
            if n and int(a.max()) > 1:
                raise self.err(f"unexpected bool value {int(a.max())} in {what}")
            self.pos += n
            return Value(ValueType.Array, [Value(et, bool(x)) for x in a.tolist()], et)
        if et is ValueType.String:
            return Value(ValueType.Array, self.packed_strings(n, what), et)
        items = [self.value(et, f"{what}[{i}]", depth + 1) for i in range(n)]
        return Value(ValueType.Array, items, et)

    def packed_strings(self, n: int, what: str) -> _PackedStrings:
        """``n`` length-prefixed strings, bounds-checked and kept as their bytes (decoded on use)."""
        start, buf, pos, size = self.pos, self.buf, self.pos, self.size
        w = 4 if self.v1 else 8
        unpack = struct.Struct("<I" if self.v1 else "<Q").unpack_from
        for i in range(n):
            if pos + w > size:
                self.pos = pos
                self.need(w, f"the length of {what}[{i}]")
            (ln,) = unpack(buf, pos)
            pos += w
            if pos + ln > size:
                self.pos = pos
                self.need(ln, f"{what}[{i}] (a string of {ln} bytes)")
            pos += ln
        self.pos = pos
        return _PackedStrings(bytes(buf[start:pos]), n, self.v1)


class _PackedStrings:
    """A GGUF string array kept as the file's bytes (length-prefixed strings) and decoded each time
    it is read: a vocabulary of 49,152 tokens and its merges hold ~1.5 MB this way against ~8.5 MB
    as Python strings, which a loader that never reads them (the tokenizer already built) keeps
    alive while the weights load."""

    __slots__ = ("n", "raw", "v1")

    def __init__(self, raw: bytes, n: int, v1: bool):
        self.raw, self.n, self.v1 = raw, n, v1

    def __len__(self) -> int:
        return self.n

    def decode(self) -> list[str]:
        """The strings (UTF-8, invalid bytes replaced, trailing NULs dropped); ``raw`` was
        bounds-checked when the file was read (``_Cursor.packed_strings``)."""
        raw, pos = self.raw, 0
        unpack = struct.Struct("<I" if self.v1 else "<Q").unpack_from
        w = 4 if self.v1 else 8
        out: list[str] = []
        append = out.append
        for _ in range(self.n):  # a tight loop: vocabularies hold 10^5 strings
            (ln,) = unpack(raw, pos)
            pos += w
            s = str(raw[pos : pos + ln], "utf-8", "replace")
            pos += ln
            if s and s[-1] == "\x00":
                s = s.rstrip("\x00")
            append(s)
        return out


_MISSING: Any = object()
_INDEX_SUFFIX = re.compile(r"(\[\d+\])+$")


def _nest_root(what: str) -> str:
    """``metadata 'k'[0][0]...[0]`` -> ``metadata 'k'``: the entry a too-deep array belongs to."""
    return _INDEX_SUFFIX.sub("", what)


def _check_range(path: str, key: str, x: float, lo: float | None, hi: float | None) -> None:
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise errors.Gguf(f"gguf {path}: metadata {key!r} = {x} is outside the accepted range {rng}")


def _alignment(metadata: dict[str, Value], cur: _Cursor) -> int:
    v = metadata.get("general.alignment")
    if v is None:
        return DEFAULT_ALIGNMENT
    if v.value_type not in (ValueType.U8, ValueType.U16, ValueType.U32, ValueType.U64, ValueType.I8,
                            ValueType.I16, ValueType.I32, ValueType.I64):
        raise cur.err(f"general.alignment must be an integer, got {v!r}")
    a = int(v.value)
    if a <= 0 or a & (a - 1):
        raise cur.err(f"general.alignment must be a positive power of two, got {a}")
    return a


class Content:
    """A parsed GGUF file (``gguf_file::Content``): header, metadata and tensor infos.

    The file stays mmapped (read-only) until :meth:`close` (or the end of a ``with`` block);
    :meth:`tensor` copies one tensor's blocks onto a device as a :class:`QTensor`.
    """

    magic: VersionedMagic
    metadata: dict[str, Value]
    tensor_infos: dict[str, TensorInfo]
    tensor_data_offset: int
    alignment: int
    path: str

    def __init__(self) -> None:  # use Content.read
        self._buf: Any = None
        self._owned: list[Any] = []

    # --- reading -------------------------------------------------------------------------------
    @classmethod
    def read(cls, source: Any) -> Content:
        """Parse a GGUF file: a path, a binary file object, or bytes. ``Content::read``."""
        self = cls()
        buf, path, owned = _open(source)
        self._buf, self.path, self._owned = buf, path, owned
        try:
            self._parse()
        except BaseException:
            self.close()
            raise
        return self

    from_reader = read

    def _parse(self) -> None:
        cur = _Cursor(self._buf, self.path)
        cur.need(4, "the magic")
        magic = bytes(self._buf[0:4])
        if magic != MAGIC:
            value = int.from_bytes(magic, "little")  # Candle: "unknown magic 0x{value:08x}" (a LE u32)
            raise cur.err(f"not a GGUF file: unknown magic 0x{value:08x} ({magic!r}, expected {MAGIC!r})")
        cur.pos = 4
        version = cur.scalar("I", "the version")
        if version not in (1, 2, 3):
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            if swapped in (1, 2, 3):
                raise cur.err(f"big-endian GGUF (version {swapped}) is not supported")
            raise cur.err(
                f"unsupported magic/version Gguf/{version} (unsupported GGUF version {version}; supported: 1, 2, 3)"
            )
        self.magic = VersionedMagic(version)
        cur.v1 = version == 1
        n_tensors = cur.count("the tensor count")
        n_kv = cur.count("the metadata count")
        min_kv, min_ti = (4 + 4 + 1, 4 + 4 + 4 + 8) if cur.v1 else (8 + 4 + 1, 8 + 4 + 4 + 8)
        if n_kv * min_kv > cur.size - cur.pos:
            raise cur.err(f"header claims {n_kv} metadata entries (metadata_kv_count), more than the file can hold")
        if n_tensors * min_ti > cur.size - cur.pos:
            raise cur.err(f"header claims {n_tensors} tensors (tensor_count), more than the file can hold")

        metadata: dict[str, Value] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            if key in metadata:
                raise cur.err(f"duplicate metadata key {key!r} (entry #{i}); the file is corrupt")
            t = cur.value_type(f"metadata {key!r}")
            metadata[key] = cur.value(t, f"metadata {key!r}")
        self.metadata = metadata

        infos: dict[str, TensorInfo] = {}
        for i in range(n_tensors):
            name = cur.string(f"tensor name #{i}")
            what = f"tensor {name!r}"
            n_dims = cur.scalar("I", f"the rank of {what}")
            if n_dims > _MAX_DIMS:
                raise cur.err(f"{what} has {n_dims} dims (at most {_MAX_DIMS} dimensions supported)")
            dims = [cur.count(f"the dims of {what}") for _ in range(n_dims)]
            code = cur.scalar("I", f"the ggml type of {what}")
            try:
                dtype = GgmlDType.from_u32(code)
            except errors.Gguf as e:
                raise cur.err(f"{e} ({what})") from None
            offset = cur.scalar("Q", f"the offset of {what}")
            if name in infos:
                raise cur.err(f"duplicate {what}")
            shape = tuple(reversed(dims))
            if not shape_fits(shape, dtype.type_size() / dtype.block_size()):
                raise cur.err(f"{what} has shape {errors.fmt_shape(shape)}, too big for any array")
            if shape and shape[-1] % dtype.block_size():
                raise cur.err(
                    f"{what}: the number of elements in a row ({shape[-1]}) is not divisible by the"
                    f" {dtype.name} block size {dtype.block_size()}"
                )
            infos[name] = TensorInfo(dtype, shape, offset)
        self.tensor_infos = infos

        self.alignment = _alignment(metadata, cur)
        a = self.alignment
        self.tensor_data_offset = (cur.pos + a - 1) // a * a
        spans = []
        for name, info in infos.items():
            if info.offset % a:
                raise cur.err(f"tensor {name!r} has offset {info.offset}, not a multiple of general.alignment {a}")
            start = self.tensor_data_offset + info.offset
            end = start + info.size_in_bytes()
            if end > cur.size:
                raise cur.err(
                    f"tensor {name!r} data [{start}, {end}) extends past the end of the file"
                    f" ({cur.size} bytes): the file is truncated or corrupt"
                )
            if end > start:
                spans.append((info.offset, info.offset + end - start, name))
        spans.sort()
        for (b0, e0, n0), (b1, e1, n1) in itertools.pairwise(spans):
            if b1 < e0:
                raise cur.err(f"tensor {n1!r} data [{b1}, {e1}) overlaps tensor {n0!r} [{b0}, {e0}) (relative offsets)")

    # --- Candle's API ----------------------------------------------------------------------
    @property
    def version(self) -> int:
        """The file's GGUF version (1, 2 or 3), from ``magic``."""
        return self.magic.value

    def tensor(self, *args: Any, device: Any = None) -> QTensor:
        """``content.tensor(name, device)`` (Candle's ``tensor(reader, name, device)`` also accepted).

        Raises ``cannot find tensor info for {name}``.
        """
        if args and (not isinstance(args[0], str) or len(args) > 2):
            args = args[1:]  # Candle passes the reader (here maybe its path) first; the file is already mapped
        if not args:
            raise TypeError("tensor() needs a tensor name")
        name = args[0]
        if len(args) > 1:
            device = args[1]
        info = self.tensor_infos.get(name)
        if info is None:
            raise errors.CannotFindTensor(name, f"cannot find tensor info for {name} in {self.path}")
        raw = self.tensor_bytes(name)
        return QTensor.from_data(raw, info.ggml_dtype, info.shape or (1,), device)

    def tensor_bytes(self, name: str) -> np.ndarray:
        """A host copy of one tensor's raw block bytes (flat uint8). The file's pages it read are then
        dropped from the mapping, so that reading every tensor does not keep the whole file resident."""
        out = self.tensor_view(name).copy()
        if isinstance(self._buf, mmap.mmap) and out.size and hasattr(mmap, "MADV_DONTNEED"):
            # the whole map: a fault maps the page cache's large folios, reaching into neighbours
            with contextlib.suppress(OSError, ValueError):
                self._buf.madvise(mmap.MADV_DONTNEED)
        return out

    def tensor_view(self, name: str) -> np.ndarray:
        """A read-only view of one tensor's raw block bytes in the mapped file (flat uint8), valid
        until :meth:`close`: for loaders that copy what they keep (no transient copy of the tensor)."""
        info = self.tensor_infos.get(name)
        if info is None:
            raise errors.CannotFindTensor(name, f"cannot find tensor info for {name} in {self.path}")
        if self._buf is None:
            raise errors.Gguf(f"gguf {self.path}: the file has been closed")
        start = self.tensor_data_offset + info.offset
        view = np.frombuffer(self._buf, np.uint8, count=info.size_in_bytes(), offset=start)
        view.flags.writeable = False
        return view

    def get(self, key: str, default: Any = None) -> Any:
        """The plain Python value of metadata ``key`` (``default`` when absent)."""
        v = self.metadata.get(key)
        return default if v is None else v.value

    # --- validated metadata (for model loaders: check everything before allocating) ---------------
    def _need(self, key: str, default: Any) -> Value | None:
        v = self.metadata.get(key)
        if v is None and default is _MISSING:
            arch = self.metadata.get("general.architecture")
            hint = f" (general.architecture is {arch.value!r})" if arch is not None else ""
            raise errors.Gguf(f"gguf {self.path}: missing metadata key {key!r}{hint}")
        return v

    def get_int(self, key: str, default: Any = _MISSING, *, min: int | None = None, max: int | None = None) -> Any:
        """Integer metadata ``key``, checked: a missing key (without ``default``), a non-integer value
        or one outside ``[min, max]`` raises :class:`candlejax.errors.Gguf` naming the file and key."""
        v = self._need(key, default)
        if v is None:
            return default
        if v.value_type not in _INT_RANGE:
            raise errors.Gguf(f"gguf {self.path}: metadata {key!r} must be an integer, got {v!r}")
        x = int(v.value)
        _check_range(self.path, key, x, min, max)
        return x

    def get_float(
        self, key: str, default: Any = _MISSING, *, min: float | None = None, max: float | None = None,
        positive: bool = False,
    ) -> Any:
        """Float metadata ``key`` (integers accepted), checked: missing, non-numeric, NaN/inf, not
        ``> 0`` when ``positive``, or outside ``[min, max]`` raises :class:`candlejax.errors.Gguf`."""
        v = self._need(key, default)
        if v is None:
            return default
        if v.value_type not in _INT_RANGE and v.value_type not in (ValueType.F32, ValueType.F64):
            raise errors.Gguf(f"gguf {self.path}: metadata {key!r} must be a number, got {v!r}")
        x = float(v.value)
        if not np.isfinite(x):
            raise errors.Gguf(f"gguf {self.path}: metadata {key!r} must be finite, got {x}")
        if positive and not x > 0:
            raise errors.Gguf(f"gguf {self.path}: metadata {key!r} must be > 0, got {x}")
        _check_range(self.path, key, x, min, max)
        return x

    def get_str(self, key: str, default: Any = _MISSING, *, choices: Iterable[str] | None = None) -> Any:
        """String metadata ``key``, checked: missing, not a string, or not one of ``choices`` raises."""
        v = self._need(key, default)
        if v is None:
            return default
        if v.value_type is not ValueType.String:
            raise errors.Gguf(f"gguf {self.path}: metadata {key!r} must be a string, got {v!r}")
        x = v.value
        if choices is not None:
            allowed = sorted(choices)
            if x not in allowed:
                raise errors.Gguf(f"gguf {self.path}: metadata {key!r} is {x!r}; supported: {', '.join(allowed)}")
        return x

    def get_array(self, key: str, default: Any = _MISSING, *, max_len: int | None = None) -> Any:
        """Array metadata ``key`` as a :class:`Value`, checked: missing, not an array, or longer than
        ``max_len`` raises :class:`candlejax.errors.Gguf`."""
        v = self._need(key, default)
        if v is None:
            return default
        if v.value_type is not ValueType.Array:
            raise errors.Gguf(f"gguf {self.path}: metadata {key!r} must be an array, got {v!r}")
        if max_len is not None and len(v) > max_len:
            raise errors.Gguf(f"gguf {self.path}: metadata {key!r} has {len(v)} elements, more than {max_len}")
        return v

    def expect_shape(self, name: str, shape: Iterable[int]) -> TensorInfo:
        """The info of tensor ``name`` after checking its (Candle-order) shape; a missing tensor or
        another shape raises :class:`candlejax.errors.Gguf` naming the file, tensor and both shapes."""
        info = self.tensor_infos.get(name)
        want = tuple(int(d) for d in shape)
        if info is None:
            raise errors.Gguf(f"gguf {self.path}: missing tensor {name!r} (expected shape {errors.fmt_shape(want)})")
        if info.shape != want:
            raise errors.Gguf(
                f"gguf {self.path}: tensor {name!r} has shape {errors.fmt_shape(info.shape)}, the metadata"
                f" implies {errors.fmt_shape(want)}"
            )
        return info

    def close(self) -> None:
        """Unmap the file. Tensors already read stay valid (they are copies)."""
        self._buf = None
        for o in reversed(self._owned):
            try:
                o.close()
            except BufferError:  # a caller still holds a view; the map closes when it is dropped
                pass
        self._owned = []

    def __enter__(self) -> Content:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"gguf.Content({self.path!r}, {self.magic.name}, {len(self.metadata)} metadata,"
            f" {len(self.tensor_infos)} tensors)"
        )


def _open(source: Any) -> tuple[Any, str, list[Any]]:
    """A read-only buffer over the file, its display name, and the objects to close."""
    if isinstance(source, bytes | bytearray | memoryview):
        buf = memoryview(source).cast("B")
        if bytes(buf[:4]) != MAGIC and (hint := bytes_path_hint(buf, "gguf read")):
            raise errors.Gguf(hint)
        return buf, "<bytes>", []
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if os.path.isdir(path):  # as every reader (errors.check_file), and still an errors.Gguf
            raise errors.GgufIsADirectory("gguf read", path, message=f"gguf {path}: cannot open: it is a folder")
        if not os.path.exists(path):
            raise errors.GgufNoSuchFile("gguf read", path, message=f"gguf {path}: cannot open: no such file")
        try:
            f = open(path, "rb")
        except OSError as e:
            cls = errors.GgufNoPermission if isinstance(e, PermissionError) else None
            msg = f"gguf {path}: cannot open: {e.strerror or e}"
            raise (cls("gguf read", path, message=msg) if cls else errors.Gguf(msg)) from None
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            f.close()
            raise errors.Gguf(f"gguf {path}: the file is empty")
        with f:  # the map holds its own descriptor: no file object is left to close (or leak)
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return m, path, [m]
    if isinstance(source, io.BytesIO):
        return memoryview(source.getvalue()), "<BytesIO>", []
    if hasattr(source, "read"):
        name = str(getattr(source, "name", "<file>"))
        try:
            fd = source.fileno()
            size = os.fstat(fd).st_size
            if size:
                m = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
                return m, name, [m]
        except (OSError, io.UnsupportedOperation, AttributeError, ValueError):
            pass
        if hasattr(source, "seek"):
            source.seek(0)
        return memoryview(source.read()), name, []
    raise errors.Gguf(f"cannot read a GGUF file from a {type(source).__name__}")


def read(source: Any) -> Content:
    """``Content.read(source)``."""
    return Content.read(source)


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------
def _items(x: Any) -> list[tuple[str, Any]]:
    """The ``(name, value)`` pairs of a dict or of an iterable of pairs (Rust's ``&[(&str, _)]``)."""
    if x is None:
        return []
    if isinstance(x, Mapping):
        return list(x.items())
    try:
        return [(str(k), v) for k, v in x]
    except (TypeError, ValueError):
        raise errors.Gguf(
            f"expected a dict or an iterable of (name, value) pairs, got {type(x).__name__}: {x!r:.80}"
        ) from None


def _check_name(x: Any, what: str) -> str:
    """A tensor name or metadata key: a str that UTF-8 can encode (a lone surrogate cannot)."""
    if not isinstance(x, str):
        raise errors.Gguf(f"{what} must be a str, got {x!r} ({type(x).__name__})")
    try:
        x.encode("utf-8")
    except UnicodeEncodeError as e:
        raise errors.Gguf(f"{what} {x!r} is not valid UTF-8 text: {e.reason} at index {e.start}") from None
    return x


def _as_qtensor(name: str, t: Any) -> QTensor:
    if isinstance(t, QTensor):
        return t
    try:
        a = np.asarray(t)
    except RuntimeError as e:  # a deleted jax.Array
        raise errors.Gguf(f"tensor {name!r} cannot be read: {e}") from None
    by = {np.dtype(np.float32): GgmlDType.F32, np.dtype(np.float16): GgmlDType.F16}
    try:
        import ml_dtypes

        by[np.dtype(ml_dtypes.bfloat16)] = GgmlDType.BF16
    except ImportError:  # pragma: no cover - ml_dtypes ships with jax
        pass
    dt = by.get(a.dtype)
    if dt is None:
        raise errors.Gguf(f"tensor {name!r}: cannot store dtype {a.dtype} in GGUF; quantize it to a QTensor first")
    if a.ndim == 0:
        a = a.reshape(1)
    raw = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).reshape(-1).view(np.uint8)
    return QTensor(raw, dt, a.shape)


class _Out:
    def __init__(self, f: BinaryIO, v1: bool):
        self.f, self.v1, self.n = f, v1, 0

    def raw(self, b: bytes | memoryview) -> None:
        self.f.write(b)
        self.n += len(b)

    def fmt(self, fmt: str, v: Any) -> None:
        self.raw(struct.pack("<" + fmt, v))

    def count(self, n: int) -> None:
        if self.v1 and n >= 2**32:
            raise errors.Gguf(f"GGUF v1 cannot store the count/length {n}")
        self.fmt("I" if self.v1 else "Q", n)

    def string(self, s: str) -> None:
        b = s.encode("utf-8")
        self.count(len(b))
        self.raw(b)

    def value(self, v: Value, where: str) -> None:
        t = v.value_type
        if t in _SCALAR_FMT:
            x = v._v
            if t in _INT_RANGE:
                lo, hi = _INT_RANGE[t]
                if not lo <= int(x) <= hi:
                    raise errors.Gguf(f"metadata {where}: {x} does not fit in {t.name}")
            self.fmt(_SCALAR_FMT[t], x)
        elif t is ValueType.Bool:
            self.fmt("B", 1 if v._v else 0)
        elif t is ValueType.String:
            self.string(v._v)
        else:
            et = v.elem_type or ValueType.U32
            self.fmt("I", et.value)
            items = v._v
            self.count(len(items))
            if isinstance(items, np.ndarray):
                self.raw(np.ascontiguousarray(items, dtype=_NP_OF[et]).tobytes())
            elif items and isinstance(items[0], str):
                for x in items:
                    self.string(x)
            else:
                for i, x in enumerate(items):
                    if x.value_type is not et:
                        raise errors.Gguf(
                            f"multiple value-types in the same array {where}: {et.name}, {x.value_type.name}"
                        )
                    self.value(x, f"{where}[{i}]")


def _metadata_value(key: str, v: Any) -> Value:
    try:
        return Value.from_python(v)
    except errors.Gguf as e:
        raise errors.Gguf(f"metadata {key!r}: {e}") from None


def write(
    dest: Any,
    metadata: Mapping[str, Any] | Iterable[tuple[str, Any]] | None,
    tensors: Mapping[str, Any] | Iterable[tuple[str, Any]] | None,
    *,
    version: int = 3,
) -> None:
    """Write a GGUF file (``gguf_file::write``), atomically when ``dest`` is a path.

    ``metadata``: ``{key: Value}`` (plain Python values are converted with ``Value.from_python``).
    ``tensors``: ``{name: QTensor}``; F32 / F16 / BF16 arrays or Tensors are stored as such (a 0-d
    array as shape (1,): ggml has no 0-d tensors).
    Tensor data is aligned to ``general.alignment`` (default 32), a power of two given as any
    integer type and stored as the U32 that ggml and gguf-py require. ``version`` 1, 2 or 3.
    """
    if version not in (1, 2, 3):
        raise errors.Gguf(f"cannot write GGUF version {version} (supported: 1, 2, 3)")
    meta = [(_check_name(k, "a metadata key"), _metadata_value(k, v)) for k, v in _items(metadata)]
    keys = [k for k, _ in meta]
    if len(set(keys)) != len(keys):
        raise errors.Gguf("duplicate metadata keys")
    tens = [(n, _as_qtensor(n, t)) for n, t in ((_check_name(n, "a tensor name"), t) for n, t in _items(tensors))]
    names = [n for n, _ in tens]
    if len(set(names)) != len(names):
        raise errors.Gguf("duplicate tensor names")
    align_v = dict(meta).get("general.alignment")
    if align_v is not None and align_v.value_type not in _INT_RANGE:
        raise errors.Gguf(f"general.alignment must be an integer (ggml reads a U32), got {align_v!r}")
    align = DEFAULT_ALIGNMENT if align_v is None else int(align_v.value)
    if align <= 0 or align & (align - 1):
        raise errors.Gguf(f"general.alignment must be a positive power of two, got {align}")
    if align_v is not None and align_v.value_type is not ValueType.U32:
        # ggml and gguf-py accept only a U32 here, Candle only 8- to 32-bit integers (other types:
        # the default 32, so the tensors would be read at the wrong offsets)
        if align > _INT_RANGE[ValueType.U32][1]:
            raise errors.Gguf(f"general.alignment {align} does not fit in U32 (the type ggml reads)")
        meta = [(k, Value.u32(align) if k == "general.alignment" else v) for k, v in meta]

    offsets, off = [], 0
    for _, q in tens:
        offsets.append(off)
        off += (q.storage_size_in_bytes() + align - 1) // align * align

    def emit(f: BinaryIO) -> None:
        o = _Out(f, version == 1)
        o.raw(MAGIC)
        o.fmt("I", version)
        o.count(len(tens))
        o.count(len(meta))
        for k, v in meta:
            o.string(k)
            o.fmt("I", v.value_type.value)
            o.value(v, repr(k))
        for (name, q), offset in zip(tens, offsets):
            o.string(name)
            o.fmt("I", q.rank)
            for d in reversed(q.shape):
                o.count(d)
            o.fmt("I", q.dtype().value)
            o.fmt("Q", offset)
        o.raw(b"\x00" * (-o.n % align))
        for _, q in tens:
            data = q.data()
            o.raw(memoryview(np.ascontiguousarray(data)))
            o.raw(b"\x00" * (-len(data) % align))

    if not isinstance(dest, str | os.PathLike) and not hasattr(dest, "write"):
        errors.path_arg(dest, "gguf write", "dest (a path or a binary file object)")
    if isinstance(dest, str | os.PathLike):
        from candlejax.io.safetensors import atomic_file

        with atomic_file(dest) as f:
            emit(f)
    else:
        emit(dest)


__all__ = [
    "DEFAULT_ALIGNMENT",
    "Content",
    "TensorInfo",
    "Value",
    "ValueType",
    "VersionedMagic",
    "read",
    "write",
]
