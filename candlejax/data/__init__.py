"""``candlejax.data``: Candle's ``candle-datasets`` (Batcher, MNIST, CIFAR-10, TinyStories) on the host.

>>> import numpy as np
>>> import candlejax as cj
>>> x = np.arange(10, dtype=np.float32).reshape(5, 2); y = np.arange(5, dtype=np.uint32)
>>> [tuple(t.shape for t in b) for b in cj.data.Batcher((x, y), batch_size=2)]
[((2, 2), (2,)), ((2, 2), (2,))]
>>> b = cj.data.Batcher.new2((x, y)).batch_size(4).return_last_incomplete_batch(True)  # Candle's builder
>>> [tuple(t.shape for t in batch) for batch in b]
[((4, 2), (4,)), ((1, 2), (1,))]

| Candle | PyTorch | candlejax |
|---|---|---|
| ``Batcher::new2(it).batch_size(64)`` | ``DataLoader(ds, 64, shuffle=True)`` | ``Batcher((x, y), 64, shuffle=True)`` |
| ``Batcher::new2(it).batch_size(64)`` (builder) | ``DataLoader(ds, 64)`` | ``Batcher.new2(it).batch_size(64)`` |
| ``.return_last_incomplete_batch(true)`` | ``drop_last=False`` | ``.return_last_incomplete_batch(True)`` |
| ``Batcher::new1(it)`` / ``new_r1`` / ``new_r2`` | | ``Batcher.new1(it)`` / ``Batcher.new_r1`` / ``Batcher.new_r2`` |
| ``mnist::load_dir(dir)`` | ``torchvision.datasets.MNIST`` | ``load_mnist(dir)`` |
| ``cifar::load_dir(dir)`` | ``torchvision.datasets.CIFAR10`` | ``load_cifar(dir)`` (the binary version; no download) |
| ``vision::Dataset`` | | ``VisionDataset`` |
| ``nlp::tinystories::Dataset::new(dir)`` | | ``TinyStoriesDataset.new(dir)`` (= ``data.tinystories.Dataset``) |
| ``DatasetRandomIter::new(&ds, valid, seq_len, dev)`` | | ``DatasetRandomIter.new(ds, valid, seq_len, dev, seed=s)`` |
"""

from candlejax.data import batcher, hub, nlp  # Candle's module paths: candle_datasets::{batcher, hub, nlp}
from candlejax.data._batcher import Batcher, IterBatcher
from candlejax.data._dataset import BatchSizeError, Dataset, DatasetFileError, EmptyDatasetError, TensorDataset
from candlejax.data.tinystories import DatasetRandomIter, TinyStoriesDataset
from candlejax.data.vision import IdxError, VisionDataset, load_cifar, load_digits, load_mnist, read_idx, write_idx

__all__ = [
    "BatchSizeError",
    "Batcher",
    "Dataset",
    "DatasetFileError",
    "DatasetRandomIter",
    "EmptyDatasetError",
    "IdxError",
    "IterBatcher",
    "TensorDataset",
    "TinyStoriesDataset",
    "VisionDataset",
    "batcher",
    "hub",
    "load_cifar",
    "load_digits",
    "load_mnist",
    "nlp",
    "read_idx",
    "write_idx",
]
