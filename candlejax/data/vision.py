"""Vision datasets: Candle's ``vision::Dataset``, the MNIST IDX and CIFAR-10 binary readers, offline digits.

requires: numpy, candlejax.tensor / dtype / device, candlejax.data._dataset (``DatasetFileError``)
provides: ``VisionDataset`` (= ``Dataset``), ``read_idx``, ``write_idx``, ``load_mnist`` (= Candle's
``mnist::load_dir``, also as ``mnist.load_dir``), ``load_cifar`` (= Candle's ``cifar::load_dir``, also as
``cifar.load_dir``), ``load_digits``

Candle: ``candle_datasets::vision::mnist::load_dir(dir)`` -> ``Dataset { train_images: F32 (N, 784)
in [0, 1], train_labels: U8 (N), test_images, test_labels, labels: 10 }``;
``cifar::load_dir(dir)`` -> the same with images F32 ``(N, 3, 32, 32)``.
Pixels are scaled as Candle's ``to_dtype(F32) / 255.`` computes them: ``x * f32(1/255)``.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from candlejax import errors
from candlejax.data._dataset import DatasetFileError
from candlejax.device import Device
from candlejax.dtype import DType, to_dtype
from candlejax.io import atomic_file
from candlejax.optional import require
from candlejax.tensor._core import unwrap, wrap

# IDX type codes (http://yann.lecun.com/exdb/mnist/): data is big-endian.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}


class IdxError(errors.Error):
    """A malformed IDX file."""


def _scale_pixels(a: np.ndarray) -> np.ndarray:
    """u8 pixels -> F32 in [0, 1], bit for bit as Candle's ``(t.to_dtype(F32)? / 255.)`` (an affine
    multiply by ``f32(1/255)``, which differs from a true division by one ulp for half the values)."""
    return a.astype(np.float32) * np.float32(1.0 / 255.0)


_CHUNK = 1 << 24  # bytes read at a time, so a header claiming more data than the file holds allocates nothing


def _open(path: Path) -> Any:
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _read_upto(f: Any, n: int, path: Path, offset: int, what: str) -> bytes:
    """Up to ``n`` bytes of ``f`` (at ``offset``), read in chunks; a corrupt gzip stream raises ``IdxError``."""
    parts: list[bytes] = []
    got = 0
    try:
        while got < n:
            chunk = f.read(min(_CHUNK, n - got))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
    except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise IdxError(
            f"{path}: the gzip stream is cut short or corrupt while reading the {what} ({e});"
            f" {offset + got} bytes decompressed, the IDX file needs {offset + n}"
        ) from e
    return b"".join(parts)


def _read_exact(f: Any, n: int, path: Path, offset: int, what: str) -> bytes:
    """Exactly ``n`` bytes of ``f`` (at ``offset``); fewer raise ``IdxError`` naming both counts."""
    data = _read_upto(f, n, path, offset, what)
    if len(data) < n:
        raise IdxError(f"{path}: truncated {what}: expected {n} bytes at offset {offset}, found {len(data)}")
    return data


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed) as a numpy array in native byte order.

    The header is ``0x00 0x00 <type> <ndim>`` followed by ``ndim`` big-endian u32 dims; the data
    must be exactly the size the dims give (trailing bytes, a short file or a cut-short gzip
    stream raise ``IdxError`` naming the file, the offset and the expected and found sizes).
    """
    path = Path(errors.path_arg(path, "read_idx"))
    errors.check_file(path, "read_idx", "pass one of its *-idx?-ubyte files, or load_mnist(dir) for the folder")
    with _open(path) as f:
        magic = _read_upto(f, 4, path, 0, "magic number")
        if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
            raise IdxError(f"{path}: not an IDX file (bad magic {magic[:4].hex() or 'empty'})")
        code, ndim = magic[2], magic[3]
        if code not in _IDX_TYPES:
            raise IdxError(f"{path}: unknown IDX type code 0x{code:02x} (known: 08 09 0b 0c 0d 0e)")
        head = 4 + 4 * ndim
        dims = struct.unpack(f">{ndim}I", _read_exact(f, 4 * ndim, path, 4, f"header ({ndim} dims)"))
        dt = np.dtype(_IDX_TYPES[code])
        want = math.prod(dims) * dt.itemsize
        if not isinstance(f, gzip.GzipFile):  # a plain file: compare sizes before reading anything
            got = path.stat().st_size - head
            if got != want:
                raise IdxError(
                    f"{path}: data is {got} bytes but dims {errors.fmt_shape(dims)} of {dt.name} need {want}"
                    f" (from offset {head})"
                )
        body = _read_exact(f, want, path, head, f"data (dims {errors.fmt_shape(dims)} of {dt.name})")
        if _read_upto(f, 1, path, head + want, "end of the data"):
            raise IdxError(
                f"{path}: data is more than {want} bytes but dims {errors.fmt_shape(dims)} of {dt.name} need {want}"
                f" (trailing bytes from offset {head + want})"
            )
    return np.frombuffer(body, dtype=dt).reshape(dims).astype(dt.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: Any, *, compress: bool = False) -> None:
    """Write ``array`` (u8, i8, i16, i32, f32 or f64) as an IDX file (gzip-compressed if asked)."""
    path = errors.path_arg(path, "write_idx")  # open(3) would write to file descriptor 3
    a = np.asarray(unwrap(array))
    code = _IDX_CODES.get(a.dtype.newbyteorder("="))
    if code is None:
        raise IdxError(f"write_idx: dtype {a.dtype} has no IDX type code (u8, i8, i16, i32, f32, f64)")
    body = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    body += np.ascontiguousarray(a, dtype=np.dtype(_IDX_TYPES[code])).tobytes()
    with atomic_file(path) as f:  # candlejax errors naming the path; a failed write leaves the old file
        f.write(gzip.compress(body) if compress else body)


@dataclass
class VisionDataset:
    """Candle's ``vision::Dataset``: train/test images and labels as Tensors, plus the class count."""

    train_images: Any
    train_labels: Any
    test_images: Any
    test_labels: Any
    labels: int

    @property
    def train(self) -> tuple[Any, Any]:
        """``(train_images, train_labels)``, ready for a ``Batcher``."""
        return self.train_images, self.train_labels

    @property
    def test(self) -> tuple[Any, Any]:
        """``(test_images, test_labels)``."""
        return self.test_images, self.test_labels

    def __repr__(self) -> str:
        def d(t: Any) -> str:
            return f"{errors.fmt_shape(t.shape)} {t.dtype}"

        return (
            f"VisionDataset(train_images={d(self.train_images)}, train_labels={d(self.train_labels)},"
            f" test_images={d(self.test_images)}, test_labels={d(self.test_labels)}, labels={self.labels})"
        )


def _tensor(a: np.ndarray, device: Device) -> Any:
    return wrap(jax.device_put(a, device.jax_device))


def _find(dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (dir / name).exists():
            return dir / name
    raise errors.Msg(f"load_mnist: cannot find {stem} (or {stem}.gz) in {dir}")


def load_mnist(dir: str | os.PathLike[str], device: Device | str | None = None) -> VisionDataset:
    """Candle's ``mnist::load_dir``: the four IDX files of MNIST (or Fashion-MNIST) in ``dir``.

    Images are F32 ``(N, 784)`` scaled to [0, 1], labels U8 ``(N,)``, as in Candle. As Candle's
    reader checks the magic numbers 2051 / 2049, the files must hold u8 data of rank 3 (images) and
    rank 1 (labels); another IDX type or rank raises ``IdxError`` naming the file and both magics.
    """
    d, dev = Path(errors.path_arg(dir, "load_mnist", "dir")), Device.coerce(device)

    def read(stem: str, ndim: int, magic: int, what: str) -> np.ndarray:
        path = _find(d, stem)
        expected = f"expected magic number {magic} (0x{magic:08x}: u8 data, {ndim} dims)"
        try:
            a = read_idx(path)
        except IdxError as e:  # as Candle's check_magic_number, a wrong magic is reported first
            with _open(path) as f:
                head = _read_upto(f, 4, path, 0, "magic number")
            found = int.from_bytes(head, "big")
            if len(head) == 4 and found != magic:
                raise IdxError(
                    f"load_mnist: {path} is not an MNIST {what} file: {expected}, found {found} (0x{found:08x})"
                ) from e
            raise
        if a.ndim != ndim or a.dtype != np.uint8:
            found = _IDX_CODES[a.dtype.newbyteorder("=")] << 8 | a.ndim
            raise IdxError(
                f"load_mnist: {path} is not an MNIST {what} file: {expected}, found {found} (0x{found:08x}:"
                f" {a.dtype.name} data, dims"
                f" {errors.fmt_shape(a.shape)})"
            )
        return a

    def images(stem: str) -> Any:
        a = read(stem, 3, 2051, "image")
        return _tensor(_scale_pixels(a.reshape(a.shape[0], a.shape[1] * a.shape[2])), dev)

    def labels(stem: str) -> Any:
        return _tensor(read(stem, 1, 2049, "label"), dev)

    return VisionDataset(
        train_images=images("train-images-idx3-ubyte"),
        train_labels=labels("train-labels-idx1-ubyte"),
        test_images=images("t10k-images-idx3-ubyte"),
        test_labels=labels("t10k-labels-idx1-ubyte"),
        labels=10,
    )


# CIFAR-10, binary version (https://www.cs.toronto.edu/~kriz/cifar.html): each record is one label
# byte then the 32x32 image as 1024 red, 1024 green, 1024 blue bytes, rows top to bottom (CHW).
_CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST = "test_batch.bin"
_CIFAR_SUBDIR = "cifar-10-batches-bin"  # the folder the archive unpacks to


def _check_cifar_file(path: Path, records: int | None) -> None:
    """Raise unless ``path`` exists and holds ``records`` whole records (any positive count if None)."""
    if not path.is_file():
        hint = ""
        if (path.parent / _CIFAR_SUBDIR / path.name).is_file():
            hint = f"; the files are in {path.parent / _CIFAR_SUBDIR}: pass that folder, as Candle's load_dir expects"
        raise DatasetFileError(f"load_cifar: cannot find {path.name} in {path.parent}{hint}")
    size = path.stat().st_size
    if records is not None:
        want = records * _CIFAR_RECORD
        if size != want:
            raise DatasetFileError(
                f"load_cifar: {path} is {size} bytes, expected {want} ({records} records of {_CIFAR_RECORD} bytes:"
                " 1 label byte + 3x32x32 pixel bytes); the file is truncated or not CIFAR-10's binary version"
            )
    elif size == 0 or size % _CIFAR_RECORD:
        raise DatasetFileError(
            f"load_cifar: {path} is {size} bytes, expected a positive multiple of {_CIFAR_RECORD}"
            f" (records of 1 label byte + 3x32x32 pixel bytes); {size % _CIFAR_RECORD} bytes are left over"
        )


def _read_cifar_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images u8 (N, 3, 32, 32), labels u8 (N,))`` of one CIFAR-10 binary file (size already checked)."""
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    return raw[:, 1:].reshape(-1, 3, 32, 32), raw[:, 0].copy()


def load_cifar(
    dir: str | os.PathLike[str], device: Device | str | None = None, *, records_per_file: int | None = 10_000
) -> VisionDataset:
    """Candle's ``cifar::load_dir``: CIFAR-10's binary version in ``dir``, read offline.

    Reads ``data_batch_1.bin`` .. ``data_batch_5.bin`` (train, in that order) and ``test_batch.bin``
    directly in ``dir`` (the ``cifar-10-batches-bin`` folder of the archive, as in Candle).

    Args:
        dir: the folder holding the six ``.bin`` files.
        device: where the Tensors go (default cpu).
        records_per_file: records each file must hold (CIFAR-10's 10,000; each file's size is
            checked against it before anything is read). ``None`` accepts any whole number of
            records, e.g. for a subset (a candlejax addition).

    Returns:
        a ``VisionDataset``: images F32 ``(N, 3, 32, 32)`` in [0, 1] (channels R, G, B; rows top to
        bottom), labels U8 ``(N,)`` in 0..9, ``labels=10``; 50,000 train and 10,000 test examples.

    Raises:
        DatasetFileError: a file is missing, or its size is not ``records_per_file`` records of
            3,073 bytes (the message names the file, the expected and the actual size).
    """
    d, dev = Path(errors.path_arg(dir, "load_cifar", "dir")), Device.coerce(device)
    rpf = records_per_file
    if rpf is not None and (not isinstance(rpf, (int, np.integer)) or isinstance(rpf, bool) or rpf <= 0):
        raise errors.InvalidArgument(
            f"load_cifar: records_per_file must be a positive int or None, got {records_per_file!r}"
        )
    paths = [d / name for name in (*_CIFAR_TRAIN, _CIFAR_TEST)]
    for p in paths:  # every file is checked before any is read
        _check_cifar_file(p, records_per_file)
    train = [_read_cifar_file(p) for p in paths[:-1]]
    test_images, test_labels = _read_cifar_file(paths[-1])
    return VisionDataset(
        train_images=_tensor(_scale_pixels(np.concatenate([t[0] for t in train])), dev),
        train_labels=_tensor(np.concatenate([t[1] for t in train]), dev),
        test_images=_tensor(_scale_pixels(test_images), dev),
        test_labels=_tensor(test_labels, dev),
        labels=10,
    )


def load_digits(
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    flatten: bool = True,
    label_dtype: DType | str = DType.U32,
    device: Device | str | None = None,
) -> VisionDataset:
    """The 1,797 real 8x8 handwritten digits that scikit-learn ships (UCI "optdigits" test set).

    Offline: the data is read from scikit-learn's bundled file. The split is stratified per class
    and a pure function of ``seed`` (default: 1,438 train / 359 test). Images are F32 in [0, 1],
    ``(N, 64)`` or ``(N, 1, 8, 8)`` with ``flatten=False``; labels are ``label_dtype`` (U32 by
    default, the class-id dtype ``cross_entropy`` takes; Candle's MNIST loader gives U8).
    """
    _sk_digits = require("sklearn.datasets", "load_digits").load_digits
    if not isinstance(test_fraction, (int, float, np.floating)) or not 0.0 < test_fraction < 1.0:
        raise errors.InvalidArgument(f"load_digits: test_fraction must be a float in (0, 1), got {test_fraction!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise errors.InvalidArgument(f"load_digits: seed must be a non-negative int, got {seed!r}")
    ldt = to_dtype(label_dtype).np
    raw = _sk_digits()
    x = (np.asarray(raw.data, np.float64) / 16.0).astype(np.float32)
    y = np.asarray(raw.target)
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        test_idx.append(idx[: round(len(idx) * test_fraction)])
    test = np.sort(np.concatenate(test_idx))
    mask = np.ones(len(y), bool)
    mask[test] = False
    train = np.flatnonzero(mask)
    if not flatten:
        x = x.reshape(-1, 1, 8, 8)
    dev = Device.coerce(device)
    return VisionDataset(
        train_images=_tensor(x[train], dev),
        train_labels=_tensor(y[train].astype(ldt), dev),
        test_images=_tensor(x[test], dev),
        test_labels=_tensor(y[test].astype(ldt), dev),
        labels=10,
    )


# Candle's module paths: candle_datasets::vision::{Dataset, mnist, cifar}
Dataset = VisionDataset


def _hub_load(what: str, local: str) -> Any:
    raise errors.Msg(
        f"candle_datasets::vision::{what}::load() downloads from the Hugging Face hub; candlejax reads local files"
        f" only: use cj.data.vision.{what}.load_dir(dir) (= cj.data.{local}(dir)), or cj.data.load_digits() for a"
        " dataset shipped offline"
    )


class mnist:  # noqa: N801 - Candle's module name
    """``candle_datasets::vision::mnist``: ``mnist.load_dir(dir)`` is :func:`load_mnist`; ``mnist.load()``
    (a hub download) raises, naming it.

    >>> mnist.load_dir is load_mnist
    True
    """

    load_dir = staticmethod(load_mnist)

    @staticmethod
    def load() -> VisionDataset:
        """Candle's ``candle_datasets::vision::mnist::load``: a hub download, which raises here; use ``load_dir``."""
        return _hub_load("mnist", "load_mnist")


class fashion_mnist:  # noqa: N801 - Candle's module name
    """``candle_datasets::vision::fashion_mnist``: Candle has only ``load()``, a hub download, which raises
    here; Fashion-MNIST's IDX files read with :func:`load_mnist` (``fashion_mnist.load_dir``), the
    same format as MNIST's.

    >>> fashion_mnist.load_dir is load_mnist
    True
    """

    load_dir = staticmethod(load_mnist)

    @staticmethod
    def load() -> VisionDataset:
        """Candle's ``candle_datasets::vision::fashion_mnist::load``: a hub download, which raises here; use
        ``load_dir``."""
        return _hub_load("fashion_mnist", "load_mnist")


class cifar:  # noqa: N801 - Candle's module name
    """``candle_datasets::vision::cifar``: ``cifar.load_dir(dir)`` is :func:`load_cifar`; ``cifar.load()``
    (a hub download) raises, naming it."""

    load_dir = staticmethod(load_cifar)

    @staticmethod
    def load() -> VisionDataset:
        """Candle's ``candle_datasets::vision::cifar::load``: a hub download, which raises here; use ``load_dir``."""
        return _hub_load("cifar", "load_cifar")
