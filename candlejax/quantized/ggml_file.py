"""Candle's ``candle::quantized::ggml_file``: llama.cpp's legacy GGML / GGMF / GGJT model files.

``Content.read(reader, device)`` reads the magic, the seven ``HParams``, the vocabulary (token bytes
and score) and then tensors to the end of the file (``n_dims``, name length, ggml type, dims in
reverse order, name, data; GGJT aligns each tensor's data to 32 bytes). Every count and size is
checked against the bytes left in the file before anything is allocated.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from candlejax import errors
from candlejax.io._checks import shape_fits
from candlejax.quantized.ggml_types import GgmlDType
from candlejax.quantized.qtensor import QTensor
from candlejax.shape import as_shape

_MAGICS = {0x67676A74: "ggjt", 0x67676C61: "ggla", 0x67676D66: "ggmf", 0x67676D6C: "ggml", 0x6767736E: "ggsn"}
_MAX_DIMS = 8  # ggml uses at most 4
#: The types Candle's ``qtensor_from_ggml`` builds (others: ``quantized type Q8_1 is not supported yet``)
_FROM_GGML = frozenset(GgmlDType[n] for n in ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                                              "Q2K", "Q3K", "Q4K", "Q5K", "Q6K"))  # fmt: skip


class VersionedMagic(enum.Enum):
    """``ggml_file::VersionedMagic``."""

    GgmlUnversioned = "ggml"
    GgmfV1 = "ggmf1"
    GgjtV1 = "ggjt1"
    GgjtV2 = "ggjt2"
    GgjtV3 = "ggjt3"

    def align32(self) -> bool:
        """GGJT files align each tensor's data to 32 bytes."""
        return self in (VersionedMagic.GgjtV1, VersionedMagic.GgjtV2, VersionedMagic.GgjtV3)


@dataclass
class HParams:
    """``ggml_file::HParams``."""

    n_vocab: int
    n_embd: int
    n_mult: int
    n_head: int
    n_layer: int
    n_rot: int
    ftype: int


@dataclass
class Vocab:
    """``ggml_file::Vocab``: ``token_score_pairs`` of (token bytes, score)."""

    token_score_pairs: list[tuple[bytes, float]] = field(default_factory=list)


class _Reader:
    def __init__(self, buf: bytes, src: str):
        self.buf, self.src, self.pos = buf, src, 0

    def need(self, n: int, what: str) -> None:
        if n > len(self.buf) - self.pos:
            raise errors.Msg(
                f"ggml {self.src}: truncated or corrupt file: {what} needs {n} bytes at offset {self.pos},"
                f" the file has {len(self.buf) - self.pos} left"
            )

    def u32s(self, n: int, what: str) -> tuple[int, ...]:
        self.need(4 * n, what)
        out = struct.unpack_from(f"<{n}I", self.buf, self.pos)
        self.pos += 4 * n
        return out

    def f32(self, what: str) -> float:
        self.need(4, what)
        (v,) = struct.unpack_from("<f", self.buf, self.pos)
        self.pos += 4
        return float(v)

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out


def _magic(r: _Reader) -> VersionedMagic:
    (m,) = r.u32s(1, "the magic")
    kind = _MAGICS.get(m)
    if kind is None:
        raise errors.Msg(f"ggml {r.src}: unknown magic {m:08x}")
    if kind == "ggml":
        return VersionedMagic.GgmlUnversioned
    (version,) = r.u32s(1, "the version")
    try:
        return VersionedMagic(f"{kind}{version}")
    except ValueError:
        raise errors.Msg(f"ggml {r.src}: unsupported magic/version {kind.capitalize()}/{version}") from None


class Content:
    """``ggml_file::Content``: ``magic``, ``hparams``, ``vocab``, ``tensors`` (name -> QTensor), ``device``."""

    def __init__(self, magic: VersionedMagic, hparams: HParams, vocab: Vocab, tensors: dict[str, QTensor],
                 device: Any = None):  # fmt: skip
        self.magic, self.hparams, self.vocab, self.tensors, self.device = magic, hparams, vocab, tensors, device

    @staticmethod
    def read(reader: Any, device: Any = None) -> Content:
        """``Content::read(reader, device)``: ``reader`` is a binary file object or a path."""
        if isinstance(reader, (str, os.PathLike)):
            src = os.fspath(reader)
            errors.check_file(src, "ggml_file::Content::read")
            with open(src, "rb") as f:
                buf = f.read()
        else:
            if not hasattr(reader, "read"):
                errors.path_arg(reader, "ggml_file::Content::read", "reader (a path or a binary file object)")
            src = getattr(reader, "name", "<reader>")
            reader.seek(0)
            buf = reader.read()
        r = _Reader(bytes(buf), str(src))
        magic = _magic(r)
        hparams = HParams(*r.u32s(7, "the hparams"))
        if hparams.n_vocab * 8 > len(r.buf) - r.pos:  # each token: a u32 length and an f32 score
            raise errors.Msg(f"ggml {r.src}: n_vocab {hparams.n_vocab} cannot fit in the file ({len(r.buf)} bytes)")
        pairs = []
        for i in range(hparams.n_vocab):
            (n,) = r.u32s(1, f"the length of token {i}")
            word = r.take(n, f"token {i}")
            pairs.append((word, r.f32(f"the score of token {i}")))
        tensors: dict[str, QTensor] = {}
        while r.pos != len(r.buf):
            name, t = _read_one_tensor(r, magic, device)
            if name in tensors:
                raise errors.Msg(f"ggml {r.src}: duplicate tensor '{name}'")
            tensors[name] = t
        return Content(magic, hparams, Vocab(pairs), tensors, device)

    def remove(self, name: str) -> QTensor:
        """``Content::remove(name)``: take the tensor out (``cannot find tensor with name '{name}'``)."""
        if name not in self.tensors:
            raise errors.Msg(f"cannot find tensor with name '{name}'")
        return self.tensors.pop(name)


def _read_one_tensor(r: _Reader, magic: VersionedMagic, device: Any) -> tuple[str, QTensor]:
    start = r.pos
    n_dims, name_len, type_id = r.u32s(3, f"the tensor header at offset {start}")
    if n_dims > _MAX_DIMS:
        raise errors.Msg(f"ggml {r.src}: tensor at offset {start} has {n_dims} dims (at most {_MAX_DIMS})")
    dtype = GgmlDType.from_u32(type_id, f"(ggml {r.src}, tensor at offset {start})")
    dims = tuple(reversed(r.u32s(n_dims, f"the dims of the tensor at offset {start}")))
    name = r.take(name_len, f"the name of the tensor at offset {start}").decode("utf-8", "replace")
    if magic.align32():
        r.pos += (32 - r.pos % 32) % 32
    n = 1
    for d in dims:
        n *= d
    if not shape_fits(dims, dtype.type_size() / dtype.block_size()):
        raise errors.Msg(f"ggml {r.src}: tensor '{name}' has shape {errors.fmt_shape(dims)}, too big for any array")
    if n % dtype.block_size():
        raise errors.Msg(
            f"ggml {r.src}: Error creating tensor {name}: the number of elements {n} is not divisible by the"
            f" block size {dtype.block_size()}"
        )
    raw = r.take(n // dtype.block_size() * dtype.type_size(), f"the data of tensor '{name}'")
    return name, QTensor.from_data(np.frombuffer(raw, np.uint8), dtype, dims or (1,), device)


def qtensor_from_ggml(ggml_dtype: GgmlDType | str, raw_data: Any, dims: Any, device: Any = None) -> QTensor:
    """Candle's ``ggml_file::qtensor_from_ggml``: a ``QTensor`` of shape ``dims`` from a GGML tensor's raw
    bytes (``bytes`` / ``bytearray`` / ``memoryview`` / uint8 array; only the bytes the blocks need are read)."""
    ggml_dtype = GgmlDType.coerce(ggml_dtype, "qtensor_from_ggml")
    dims = as_shape(dims)
    n = 1
    for d in dims:
        n *= d
    if n % ggml_dtype.block_size():
        raise errors.Msg(f"the number of elements {n} is not divisible by the block size {ggml_dtype.block_size()}")
    if ggml_dtype not in _FROM_GGML:
        raise errors.Msg(f"quantized type {ggml_dtype.name} is not supported yet")
    if isinstance(raw_data, bytes | bytearray | memoryview):
        raw_data = np.frombuffer(raw_data, np.uint8)
    size = n // ggml_dtype.block_size() * ggml_dtype.type_size()
    return QTensor.from_data(raw_data[:size], ggml_dtype, dims, device)


__all__ = ["Content", "HParams", "VersionedMagic", "Vocab", "qtensor_from_ggml"]
