"""Candle's ``candle_datasets::hub``: ``from_hub(api, dataset_id)`` lists a dataset's parquet files on
the Hugging Face hub. candlejax reads local files only (nothing downloads at run time), so it raises,
naming the local readers.

>>> from candlejax.data import hub
>>> hub.from_hub(None, "ylecun/mnist")
Traceback (most recent call last):
...
candlejax.errors.Msg: candle_datasets::hub::from_hub(api, "ylecun/mnist") lists files on the Hugging Face hub; ...
"""

from typing import Any

from candlejax import errors

__all__ = ["from_hub"]


def from_hub(api: Any, dataset_id: str) -> list[str]:
    """Raise: a hub listing needs the network. Read local copies instead."""
    raise errors.Msg(
        f'candle_datasets::hub::from_hub(api, "{dataset_id}") lists files on the Hugging Face hub; candlejax reads'
        " local files only: cj.data.load_mnist(dir) / load_cifar(dir) (IDX / CIFAR binary files),"
        " cj.data.TinyStoriesDataset.new(dir), or cj.data.load_digits() for a dataset shipped offline"
    )
