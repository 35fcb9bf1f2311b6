"""TinyStories: Candle's ``candle_datasets::nlp::tinystories``, llama2.c's pre-tokenised ``.bin`` files.

requires: numpy, jax, candlejax.tensor / device / errors, candlejax.data._dataset (``DatasetFileError``)
provides: ``TinyStoriesDataset`` (= Candle's ``tinystories::Dataset``, also importable here as
``Dataset``), ``DatasetRandomIter``

llama2.c's ``tinystories.py pretokenize`` writes each shard as a flat array of little-endian u16
token ids (``data00.bin``, ``data01.bin``, ...). As in Candle, the ``.bin`` files of a folder are
sorted by name; the first is the validation split and the others the training split. The files are
memory-mapped (``numpy.memmap``), so only the windows drawn are read.

>>> import os, tempfile, numpy as np
>>> d = tempfile.mkdtemp()
>>> for i in range(2):
...     np.arange(100 * i, 100 * i + 20, dtype="<u2").tofile(os.path.join(d, f"data{i:02d}.bin"))
>>> ds = TinyStoriesDataset.new(d)
>>> ds.valid_tokens(), ds.train_tokens()  # Candle counts files here, not tokens
(1, 1)
>>> x, y = next(DatasetRandomIter.new(ds, False, 4, seed=0))
>>> x.dtype, x.shape, x.tolist()[1:] == y.tolist()[:-1]
(DType.U32, (4,), True)
>>> import shutil; shutil.rmtree(d)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from candlejax import errors
from candlejax.data._dataset import DatasetFileError
from candlejax.device import Device
from candlejax.tensor._core import wrap

_TOKEN = np.dtype("<u2")  # llama2.c writes np.uint16 on little-endian machines


def _check_tokens(path: Path) -> int:
    """The byte size of the u16 token file ``path``; an odd byte count raises."""
    size = path.stat().st_size
    if size % _TOKEN.itemsize:
        raise DatasetFileError(
            f"TinyStories: {path} is {size} bytes, an odd count, so it is not a file of u16 token ids"
            " (llama2.c's pretokenize writes 2 bytes per token)"
        )
    return size


def _map_tokens(path: Path) -> np.ndarray:
    """The u16 tokens of ``path``, memory-mapped (read-only); an odd byte count raises."""
    if _check_tokens(path) == 0:  # mmap cannot map an empty file
        return np.zeros(0, _TOKEN)
    return np.memmap(path, dtype=_TOKEN, mode="r")


class TinyStoriesDataset:
    """Candle's ``tinystories::Dataset``: the memory-mapped token files of a folder, split valid / train.

    Args:
        dir: a folder with at least two ``.bin`` files of u16 token ids. In name order, the first
            is the validation split and the rest the training split (llama2.c's ``data00.bin`` is
            its validation shard).

    Attributes:
        valid_files / train_files: the ``Path`` of each file of the split.
        valid_arrays / train_arrays: their tokens, u16 ``numpy.memmap`` (a candlejax addition).

    Raises:
        DatasetFileError: ``dir`` is not a folder, holds fewer than two ``.bin`` files, or one has
            an odd byte count.
    """

    def __init__(self, dir: str | os.PathLike[str]):
        d = Path(errors.path_arg(dir, "TinyStories", "dir"))
        if not d.is_dir():
            raise DatasetFileError(f"TinyStories: {d} is not a directory")
        bins = sorted((p for p in d.iterdir() if p.suffix == ".bin" and p.is_file()), key=lambda p: p.name)
        if len(bins) < 2:
            found = ", ".join(p.name for p in bins) or "none"
            raise DatasetFileError(
                f"TinyStories: found {len(bins)} .bin files in {d} ({found}), need at least two: the first by"
                " name is the validation split, the others the training split (llama2.c's pretokenize writes"
                " data00.bin, data01.bin, ...)"
            )
        for p in bins:  # before mapping any: the error's traceback would keep the files mapped so far
            _check_tokens(p)
        self.valid_files: list[Path] = bins[:1]
        self.train_files: list[Path] = bins[1:]
        self.valid_arrays: list[np.ndarray] = [_map_tokens(p) for p in self.valid_files]
        self.train_arrays: list[np.ndarray] = [_map_tokens(p) for p in self.train_files]

    @staticmethod
    def new(dir: str | os.PathLike[str]) -> TinyStoriesDataset:
        """``Dataset::new(dir)``."""
        return TinyStoriesDataset(dir)

    def train_tokens(self) -> int:
        """The number of training files (Candle's ``train_tokens()`` counts the mapped files, not tokens)."""
        return len(self.train_arrays)

    def valid_tokens(self) -> int:
        """The number of validation files: always 1 (Candle's ``valid_tokens()``)."""
        return len(self.valid_arrays)

    def num_tokens(self, valid: bool = False) -> int:
        """Token ids in the validation (``valid=True``) or training split (a candlejax addition)."""
        return sum(len(a) for a in (self.valid_arrays if valid else self.train_arrays))

    def __repr__(self) -> str:
        return (
            f"TinyStoriesDataset(valid={[p.name for p in self.valid_files]}, train={len(self.train_files)} files,"
            f" {self.num_tokens()} train tokens, {self.num_tokens(True)} valid tokens)"
        )


#: Candle's name: ``from candlejax.data.tinystories import Dataset, DatasetRandomIter``.
Dataset = TinyStoriesDataset


class DatasetRandomIter:
    """Candle's ``DatasetRandomIter``: endless random ``(inputs, targets)`` windows of one split.

    Each file of the split is cut at token offsets ``0, seq_len, 2 * seq_len, ...`` (while
    ``offset < len - seq_len``); a window is the ``seq_len + 1`` tokens from an offset, ``inputs``
    its first ``seq_len`` and ``targets`` its last ``seq_len`` (the inputs shifted by one). The
    files are visited in random order, and within a file the windows in random order, each once;
    when every file is done, a new round starts. The iterator never ends: take what you need
    (``itertools.islice``, ``zip(range(n), it)``, or ``Batcher.new2(it)`` with a ``break``).

    Args:
        ds: a ``TinyStoriesDataset``.
        valid: draw from the validation split (else the training split).
        seq_len: tokens per window (> 0).
        device: where the Tensors go (default cpu).
        seed: a candlejax addition: an int makes the order reproducible; ``None`` (the default)
            draws fresh entropy, like Candle's unseeded thread RNG.

    Yields:
        ``(inputs, targets)``: U32 Tensors of shape ``(seq_len,)``.

    Raises:
        InvalidArgument: ``ds`` is not a ``TinyStoriesDataset``, ``seq_len`` is not a positive int or
            ``seed`` not a non-negative int.
        DatasetFileError: a file of the split has fewer than ``seq_len + 1`` tokens (no window).
    """

    def __init__(
        self,
        ds: TinyStoriesDataset,
        valid: bool,
        seq_len: int,
        device: Device | str | None = None,
        *,
        seed: int | None = None,
    ):
        if not isinstance(ds, TinyStoriesDataset):
            raise errors.InvalidArgument(
                f"DatasetRandomIter takes a TinyStoriesDataset, got a {type(ds).__name__}; build it from the folder"
                " first: TinyStoriesDataset.new(dir) (Candle's tinystories::Dataset::new(dir))"
            )
        if not isinstance(seq_len, (int, np.integer)) or isinstance(seq_len, bool) or seq_len <= 0:
            raise errors.InvalidArgument(f"DatasetRandomIter: seq_len must be a positive int, got {seq_len!r}")
        if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0):
            raise errors.InvalidArgument(f"DatasetRandomIter: seed must be a non-negative int or None, got {seed!r}")
        files = ds.valid_files if valid else ds.train_files
        arrays = ds.valid_arrays if valid else ds.train_arrays
        for p, a in zip(files, arrays):
            if len(a) <= seq_len:
                raise DatasetFileError(
                    f"DatasetRandomIter: {p} holds {len(a)} tokens, fewer than seq_len + 1 = {seq_len + 1},"
                    " so it has no window; use a smaller seq_len or leave the file out"
                )
        self.seq_len = int(seq_len)
        self.valid = bool(valid)
        self.device = Device.coerce(device)
        self._all = list(arrays)
        self._rng = np.random.default_rng(seed)
        self._files: list[np.ndarray] = []  # files left in this round, the next one last
        self._tokens: np.ndarray = self._all[0]
        self._starts = np.zeros(0, np.int64)  # window offsets left in the current file, the next one last
        self._next_file()

    @staticmethod
    def new(
        ds: TinyStoriesDataset,
        valid: bool,
        seq_len: int,
        device: Device | str | None = None,
        *,
        seed: int | None = None,
    ) -> DatasetRandomIter:
        """``DatasetRandomIter::new(&ds, valid, seq_len, device)``."""
        return DatasetRandomIter(ds, valid, seq_len, device, seed=seed)

    def _next_file(self) -> None:
        if not self._files:
            self._files = [self._all[i] for i in self._rng.permutation(len(self._all))]
        self._tokens = self._files.pop()
        self._starts = self._rng.permutation(np.arange(0, len(self._tokens) - self.seq_len, self.seq_len))

    def __iter__(self) -> DatasetRandomIter:
        return self

    def __next__(self) -> tuple[Any, Any]:
        if not len(self._starts):
            self._next_file()
        start, self._starts = int(self._starts[-1]), self._starts[:-1]
        window = np.asarray(self._tokens[start : start + self.seq_len + 1], dtype=np.uint32)
        dev = self.device.jax_device
        return wrap(jax.device_put(window[:-1], dev)), wrap(jax.device_put(window[1:], dev))

    def __repr__(self) -> str:
        split = "valid" if self.valid else "train"
        return f"DatasetRandomIter({split}, seq_len={self.seq_len}, device={self.device})"
