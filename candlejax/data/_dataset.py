"""The Dataset protocol and ``TensorDataset``: examples kept on the host as numpy arrays.

requires: numpy, candlejax.dtype / errors
provides: ``Dataset`` (protocol), ``TensorDataset``, ``as_dataset``, ``EmptyDatasetError``,
``BatchSizeError``, ``DatasetFileError``

Candle's ``Batcher`` wraps an iterator of tensors; here a dataset is anything with ``__len__`` and
``__getitem__(i)`` (as ``torch.utils.data.Dataset``), optionally ``get_batch(indices)`` for a fast
vectorised gather. Data stays on the host until the Batcher moves one batch to the device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from candlejax import errors
from candlejax.dtype import DType, check_width, from_array_dtype
from candlejax.tensor._core import unwrap


class EmptyDatasetError(errors.Error):
    """A dataset with no examples was given to a ``Batcher`` (or a ``TensorDataset``)."""


class BatchSizeError(errors.Error):
    """A batch size that is not positive, or larger than the dataset so that no batch comes out."""


class DatasetFileError(errors.Error):
    """A dataset file (CIFAR-10, TinyStories) that is missing, or whose size does not fit its format."""


@runtime_checkable
class Dataset(Protocol):
    """Anything with a length and integer indexing; ``ds[i]`` is one example (an array or a tuple).

    A dataset may also define ``get_batch(indices: np.ndarray) -> tuple[np.ndarray, ...]`` to gather
    a whole batch at once (``TensorDataset`` does); otherwise the Batcher stacks examples
    (Candle's ``Tensor::stack(.., 0)``).
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


def _host_array(x: Any, what: str) -> np.ndarray:
    """A numpy view of a Tensor / jax array / numpy array / nested list, 64-bit dtypes checked."""
    a = np.asarray(unwrap(x))
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if a.dtype.kind in "iu" and a.dtype.itemsize == 8 and not _x64():
        raise errors.UnsupportedDTypeForOp(
            str(a.dtype), what,
            "64-bit dtypes need x64 mode; convert on the host first, e.g. labels.astype(np.uint32), or call"
            " candlejax.enable_x64()",
        )
    if a.dtype == np.float64 and not _x64():
        raise errors.UnsupportedDTypeForOp(
            "f64", what, "convert on the host first, e.g. images.astype(np.float32), or call candlejax.enable_x64()"
        )
    check_width(from_array_dtype(a.dtype, what), what)
    return a


def _x64() -> bool:
    from candlejax.dtype import x64_enabled

    return x64_enabled()


class TensorDataset:
    """Examples are the rows of one or more arrays sharing their first dim (``torch``'s ``TensorDataset``).

    ``TensorDataset(images, labels)``: ``ds[i] == (images[i], labels[i])``; accepts Tensors, jax or
    numpy arrays. The data is copied once to the host; batches are gathered there.
    """

    def __init__(self, *arrays: Any):
        if not arrays:
            raise EmptyDatasetError("TensorDataset needs at least one array")
        hosts = [_host_array(a, f"TensorDataset field {i}") for i, a in enumerate(arrays)]
        for i, a in enumerate(hosts):
            if a.ndim == 0:
                raise errors.InvalidShape(
                    f"TensorDataset field {i} is a scalar; every field needs a first (example) dim"
                )
        n = hosts[0].shape[0]
        for i, a in enumerate(hosts[1:], 1):
            if a.shape[0] != n:
                raise errors.InvalidShape(
                    "TensorDataset fields must share their first dim, got "
                    + ", ".join(f"field {j}: {errors.fmt_shape(h.shape)}" for j, h in enumerate(hosts))
                    + f" (field {i} differs)"
                )
        self.arrays: tuple[np.ndarray, ...] = tuple(hosts)

    def __len__(self) -> int:
        return self.arrays[0].shape[0]

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        return tuple(a[index] for a in self.arrays)

    def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, ...]:
        """The rows ``indices`` of every field (a contiguous slice when the indices are a range)."""
        if len(indices) and indices[-1] - indices[0] == len(indices) - 1 and np.all(np.diff(indices) == 1):
            s = slice(int(indices[0]), int(indices[-1]) + 1)
            return tuple(a[s] for a in self.arrays)
        return tuple(np.take(a, indices, axis=0) for a in self.arrays)

    @property
    def dtypes(self) -> tuple[DType, ...]:
        return tuple(from_array_dtype(a.dtype) for a in self.arrays)

    def __repr__(self) -> str:
        fields = ", ".join(f"{errors.fmt_shape(a.shape)} {from_array_dtype(a.dtype)}" for a in self.arrays)
        return f"TensorDataset(len={len(self)}, fields=({fields}))"


def as_dataset(data: Any) -> tuple[Any, bool]:
    """``(dataset, single)``: a tuple of arrays or a single array becomes a TensorDataset; a list of
    tuples or lists holding arrays, or of arrays of one shape, is a list of examples (PyTorch's
    ``DataLoader(list(zip(xs, ys)))`` / ``DataLoader(list(xs))``); a list of arrays of different
    shapes (which cannot be examples) is read as columns, as a tuple.

    ``single`` is True when batches should be yielded as one Tensor rather than a tuple.
    """
    if isinstance(data, list) and data:
        if all(isinstance(e, (tuple, list)) and any(map(_is_array, e)) for e in data):
            return data, False  # a list of (x, y, ...) examples, as PyTorch's DataLoader(list(zip(xs, ys)))
        arrays = all(_is_array(e) or isinstance(e, np.generic) for e in data)
        if arrays and len({np.shape(unwrap(e)) for e in data}) == 1:
            return data, True  # a list of example arrays (or numpy scalars), as PyTorch's DataLoader(list(xs))
    if isinstance(data, (tuple, list)) and data and not isinstance(data[0], (int, float)):
        return TensorDataset(*data), False
    if hasattr(data, "_a") or isinstance(data, np.ndarray) or hasattr(data, "__jax_array__") or _is_jax(data):
        return TensorDataset(data), True
    if isinstance(data, Dataset):
        return data, False
    hint = ""
    if isinstance(data, Iterator):
        hint = "; for an iterator, Candle's streaming form is Batcher.new1(it) (tensors) or Batcher.new2(it) (pairs)"
    raise errors.InvalidArgument(
        f"cannot batch a {type(data).__name__}: pass a tuple of Tensors/arrays sharing their first dim, or an"
        f" object with __len__ and __getitem__ (the Dataset protocol){hint}"
    )


def _is_array(x: Any) -> bool:
    """A Tensor, numpy or jax array (or anything with ``__jax_array__``)."""
    return hasattr(x, "_a") or isinstance(x, np.ndarray) or hasattr(x, "__jax_array__") or _is_jax(x)


def _is_jax(x: Any) -> bool:
    import jax

    return isinstance(x, jax.Array)


def stack_examples(examples: Sequence[Any], offset: int = 0, single: bool = False) -> tuple[np.ndarray, ...]:
    """Stack per-example values (arrays or tuples of arrays) into batch arrays, field by field (Candle's
    ``Tensor::stack(.., 0)``); ``single``: each example is one array, even a nested list. Examples of different
    shapes raise ``UnexpectedShape`` naming the example (``offset + j``) and both shapes; of different dtypes,
    ``DTypeMismatchBinaryOp`` (Candle's stack never promotes)."""
    first = examples[0]
    if not single and isinstance(first, (tuple, list)):
        return tuple(_stack(_field_arrays([e[j] for e in examples]), offset, j) for j in range(len(first)))
    return (_stack(_field_arrays(list(examples)), offset, None),)


def _field_arrays(values: list[Any]) -> list[np.ndarray]:
    """Host arrays of one field; a field of Python ints / floats (a torchvision-style ``(image, label)``)
    gets the dtype ``Tensor(values)`` would have (U32, or I32 / I64 with negatives; F32), not numpy's
    int64 / float64."""
    kinds = {type(v) for v in values}
    if kinds and kinds <= {int, float}:
        from candlejax.tensor.creation import int_dtype_of_range

        dt = DType.F32 if float in kinds else int_dtype_of_range(min(values), max(values), "dataset example")
        return [np.asarray(v, dtype=dt.np) for v in values]
    return [_host_array(v, "dataset example") for v in values]


def _stack(arrays: list[np.ndarray], offset: int, field: int | None) -> np.ndarray:
    shape, dtype = arrays[0].shape, arrays[0].dtype
    for j, a in enumerate(arrays):
        where = "" if field is None else f", field {field},"
        if a.shape != shape:
            raise errors.UnexpectedShape(
                f"Batcher: example {offset + j}{where} cannot be stacked with example {offset} of its batch (the"
                " examples of a batch must share one shape; pad or crop them first)", shape, a.shape,
            )  # fmt: skip
        if a.dtype != dtype:  # Candle's Tensor::stack never promotes
            raise errors.DTypeMismatchBinaryOp(
                from_array_dtype(dtype), from_array_dtype(a.dtype),
                f"Batcher stack (example {offset + j}{where.rstrip(',')} vs example {offset} of its batch)",
            )  # fmt: skip
    return np.stack(arrays)
