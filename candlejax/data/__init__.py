"""``candlejax.data``: Candle's ``candle-datasets`` (Batcher, MNIST, vision datasets) on the host.

>>> import numpy as np
>>> import candlejax as cj
>>> x = np.arange(10, dtype=np.float32).reshape(5, 2); y = np.arange(5, dtype=np.uint32)
>>> [tuple(t.shape for t in b) for b in cj.data.Batcher((x, y), batch_size=2)]
[((2, 2), (2,)), ((2, 2), (2,))]

| Candle | PyTorch | candlejax |
|---|---|---|
| ``Batcher::new2(it).batch_size(64)`` | ``DataLoader(ds, 64, shuffle=True)`` | ``Batcher((x, y), 64, shuffle=True)`` |
| ``mnist::load_dir(dir)`` | ``torchvision.datasets.MNIST`` | ``load_mnist(dir)`` |
| ``vision::Dataset`` | | ``VisionDataset`` |
"""

from candlejax.data._batcher import Batcher, IterBatcher
from candlejax.data._dataset import BatchSizeError, Dataset, EmptyDatasetError, TensorDataset
from candlejax.data.vision import IdxError, VisionDataset, load_digits, load_mnist, read_idx, write_idx

__all__ = [
    "BatchSizeError",
    "Batcher",
    "Dataset",
    "EmptyDatasetError",
    "IdxError",
    "IterBatcher",
    "TensorDataset",
    "VisionDataset",
    "load_digits",
    "load_mnist",
    "read_idx",
    "write_idx",
]
