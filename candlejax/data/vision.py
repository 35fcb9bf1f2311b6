"""Vision datasets: Candle's ``vision::Dataset``, the MNIST IDX reader and the offline 8x8 digits.

requires: numpy, candlejax.tensor / dtype / device
provides: ``VisionDataset``, ``read_idx``, ``write_idx``, ``load_mnist`` (= Candle's
``mnist::load_dir``), ``load_digits``

Candle: ``candle_datasets::vision::mnist::load_dir(dir)`` -> ``Dataset { train_images: F32 (N, 784)
in [0, 1], train_labels: U8 (N), test_images, test_labels, labels: 10 }``.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType
from candlejax.tensor._core import unwrap, wrap

# IDX type codes (http://yann.lecun.com/exdb/mnist/): data is big-endian.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}


class IdxError(errors.Error):
    """A malformed IDX file."""


def _open(path: Path) -> Any:
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed) as a numpy array in native byte order.

    The header is ``0x00 0x00 <type> <ndim>`` followed by ``ndim`` big-endian u32 dims.
    """
    path = Path(path)
    with _open(path) as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IdxError(f"{path}: not an IDX file (bad magic {raw[:4].hex() or 'empty'})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_TYPES:
        raise IdxError(f"{path}: unknown IDX type code 0x{code:02x} (known: 08 09 0b 0c 0d 0e)")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise IdxError(f"{path}: truncated header ({len(raw)} bytes, need {head} for {ndim} dims)")
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    dt = np.dtype(_IDX_TYPES[code])
    want = int(np.prod(dims, dtype=np.int64)) * dt.itemsize
    got = len(raw) - head
    if got != want:
        raise IdxError(f"{path}: data is {got} bytes but dims {errors.fmt_shape(dims)} of {dt.name} need {want}")
    return np.frombuffer(raw, dtype=dt, offset=head).reshape(dims).astype(dt.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: Any, *, compress: bool = False) -> None:
    """Write ``array`` (u8, i8, i16, i32, f32 or f64) as an IDX file (gzip-compressed if asked)."""
    a = np.asarray(unwrap(array))
    code = _IDX_CODES.get(a.dtype.newbyteorder("="))
    if code is None:
        raise IdxError(f"write_idx: dtype {a.dtype} has no IDX type code (u8, i8, i16, i32, f32, f64)")
    body = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    body += np.ascontiguousarray(a, dtype=np.dtype(_IDX_TYPES[code])).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(body)


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

    Images are F32 ``(N, 784)`` scaled to [0, 1], labels U8 ``(N,)``, as in Candle.
    """
    d, dev = Path(dir), Device.coerce(device)

    def images(stem: str) -> Any:
        a = read_idx(_find(d, stem))
        if a.ndim != 3:
            raise IdxError(f"{stem}: expected a rank-3 image array, got dims {errors.fmt_shape(a.shape)}")
        return _tensor((a.reshape(a.shape[0], -1).astype(np.float32) / 255.0), dev)

    def labels(stem: str) -> Any:
        a = read_idx(_find(d, stem))
        if a.ndim != 1:
            raise IdxError(f"{stem}: expected a rank-1 label array, got dims {errors.fmt_shape(a.shape)}")
        return _tensor(a.astype(np.uint8), dev)

    return VisionDataset(
        train_images=images("train-images-idx3-ubyte"),
        train_labels=labels("train-labels-idx1-ubyte"),
        test_images=images("t10k-images-idx3-ubyte"),
        test_labels=labels("t10k-labels-idx1-ubyte"),
        labels=10,
    )


def load_digits(
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    flatten: bool = True,
    label_dtype: DType = DType.U32,
    device: Device | str | None = None,
) -> VisionDataset:
    """The 1,797 real 8x8 handwritten digits that scikit-learn ships (UCI "optdigits" test set).

    Offline: the data is read from scikit-learn's bundled file. The split is stratified per class
    and a pure function of ``seed`` (default: 1,438 train / 359 test). Images are F32 in [0, 1],
    ``(N, 64)`` or ``(N, 1, 8, 8)`` with ``flatten=False``; labels are ``label_dtype`` (U32 by
    default, the class-id dtype ``cross_entropy`` takes; Candle's MNIST loader gives U8).
    """
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError as e:  # pragma: no cover - sklearn is a dev dependency
        raise errors.Msg("load_digits needs scikit-learn (pip install scikit-learn), which ships the data") from e
    if not 0.0 < test_fraction < 1.0:
        raise errors.InvalidArgument(f"load_digits: test_fraction must be in (0, 1), got {test_fraction}")
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
    ldt = label_dtype.np
    return VisionDataset(
        train_images=_tensor(x[train], dev),
        train_labels=_tensor(y[train].astype(ldt), dev),
        test_images=_tensor(x[test], dev),
        test_labels=_tensor(y[test].astype(ldt), dev),
        labels=10,
    )
