"""``Batcher``: Candle's ``candle_datasets::Batcher`` with seeded per-epoch shuffling and prefetch.

requires: numpy, jax, candlejax.tensor / device, candlejax.data._dataset
provides: ``Batcher``, ``IterBatcher``

Candle: ``Batcher::new2(iter).batch_size(64).return_last_incomplete_batch(false)``.
PyTorch: ``DataLoader(ds, batch_size=64, shuffle=True, drop_last=True, generator=g)``.
candlejax: ``Batcher((images, labels), batch_size=64, shuffle=True, seed=0)``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np

from candlejax import errors
from candlejax.data._dataset import BatchSizeError, EmptyDatasetError, as_dataset, stack_examples
from candlejax.device import Device
from candlejax.tensor._core import unwrap, wrap

_DONE = object()


class Batcher:
    """Batches of a dataset, one epoch per ``iter()``; yields a tuple of Tensors (one per field).

    Args:
        dataset: a tuple/list of Tensors or arrays sharing their first dim, a single Tensor/array
            (then each batch is one Tensor), or any object following the ``Dataset`` protocol.
        batch_size: examples per batch (Candle's default 16).
        shuffle: visit the examples in a new order each epoch. The order of epoch ``e`` is a pure
            function of ``(seed, e)``, so runs are reproducible and resumable.
        seed: the shuffling seed.
        return_last_incomplete_batch: also yield the last, smaller batch (Candle's option; PyTorch's
            ``drop_last=False``). Off by default, as in Candle, so every batch has the same shape
            and a jitted step compiles once.
        device: where batches go. Default: the dataset's device, as in Candle (Tensors / jax
            arrays on ``cuda:0`` give batches on ``cuda:0``); host data (numpy, Python) gives
            ``Device.Cpu``.
        prefetch: batches gathered and moved to the device ahead of time on a background thread
            (0: gather on the calling thread).
        mesh: a ``cj.distributed.mesh``: batches are placed split along dim 0 over its
            ``data_axis`` (``"data"``), each device receiving only its rows (replaces ``device``);
            ``batch_size`` must be a multiple of that axis size.

    Iterating continues from the current position: breaking out of a loop and iterating again
    resumes the same epoch; a finished epoch advances ``epoch``. ``state()`` / ``set_state()``
    save and restore ``(epoch, position)`` for checkpoints.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 16,
        *,
        shuffle: bool = False,
        seed: int = 0,
        return_last_incomplete_batch: bool = False,
        device: Device | str | None = None,
        prefetch: int = 2,
        mesh: Any = None,
        data_axis: str = "data",
    ):
        src_device = _device_of(dataset)
        self.dataset, self._single = as_dataset(dataset)
        n = len(self.dataset)
        if n == 0:
            raise EmptyDatasetError("Batcher: the dataset is empty (0 examples)")
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size <= 0:
            raise BatchSizeError(f"Batcher: batch_size must be a positive int, got {batch_size!r}")
        if batch_size > n and not return_last_incomplete_batch:
            raise BatchSizeError(
                f"Batcher: batch_size {batch_size} is larger than the dataset ({n} examples), so no full batch"
                " exists and every epoch would be empty; use a batch_size <= "
                f"{n} or return_last_incomplete_batch=True"
            )
        if prefetch < 0:
            raise errors.InvalidArgument(f"Batcher: prefetch must be >= 0, got {prefetch}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.return_last_incomplete_batch = bool(return_last_incomplete_batch)
        self.device = Device.coerce(device) if device is not None else src_device
        self.prefetch = int(prefetch)
        self.epoch = 0
        self.position = 0
        self._has_get_batch = hasattr(self.dataset, "get_batch")
        self.mesh, self.data_axis = mesh, data_axis
        if mesh is not None:
            from candlejax.distributed import ShardingError, axis_size

            k = axis_size(mesh, data_axis)
            if self.batch_size % k:
                raise ShardingError(
                    f"Batcher: batch_size {self.batch_size} does not split over mesh axis {data_axis!r} of size {k};"
                    f" use a multiple of {k} (e.g. {max(k, self.batch_size // k * k)})"
                )

    # --- sizes and order -------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.dataset)
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest and self.return_last_incomplete_batch else 0)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The example indices of ``epoch`` (default: the current one), in visiting order."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        e = self.epoch if epoch is None else int(epoch)
        return np.random.default_rng([self.seed, e]).permutation(n)

    # --- checkpoint state -------------------------------------------------------------------
    def state(self) -> dict[str, int]:
        """``{"epoch", "position", "seed"}``: ``position`` batches of ``epoch`` have been handed out."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned; the next ``iter()`` continues from there."""
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        if "seed" in state:
            self.seed = int(state["seed"])

    # --- iteration ---------------------------------------------------------------------------
    def _host_batch(self, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        if self._has_get_batch:
            return tuple(self.dataset.get_batch(idx))
        examples = [self.dataset[int(i)] for i in idx]
        if not isinstance(examples[0], (tuple, list)):
            self._single = True
        return stack_examples(examples)

    def _to_device(self, arrays: tuple[np.ndarray, ...]) -> Any:
        if self.mesh is not None:
            from candlejax.distributed import shard_batch

            ts = shard_batch(arrays, self.mesh, self.data_axis)
            return ts[0] if self._single else ts
        dev = self.device.jax_device
        ts = tuple(wrap(jax.device_put(a, dev)) for a in arrays)
        return ts[0] if self._single else ts

    def _batches(self, order: np.ndarray, start: int, stop: int) -> Iterator[Any]:
        bs = self.batch_size
        for k in range(start, stop):
            yield self._to_device(self._host_batch(order[k * bs : (k + 1) * bs]))

    def __iter__(self) -> Iterator[Any]:
        order = self.order()
        stop = len(self)
        start = min(self.position, stop)
        source = self._batches(order, start, stop)
        if self.prefetch:
            source = _prefetched(source, self.prefetch)
        k = start
        try:
            for batch in source:
                k += 1
                self.position = k
                yield batch
        finally:
            if hasattr(source, "close"):
                source.close()
        self.epoch += 1
        self.position = 0

    def __repr__(self) -> str:
        return (
            f"Batcher(len={len(self)}, batch_size={self.batch_size}, shuffle={self.shuffle}, seed={self.seed},"
            f" return_last_incomplete_batch={self.return_last_incomplete_batch}, epoch={self.epoch},"
            f" position={self.position})"
        )

    # --- Candle's iterator-based constructors -------------------------------------------------
    @staticmethod
    def new1(examples: Iterable[Any], batch_size: int = 16, **kw: Any) -> IterBatcher:
        """``Batcher::new1(iter)``: batch a stream of single Tensors (no shuffling, one pass)."""
        return IterBatcher(examples, batch_size, **kw)

    @staticmethod
    def new2(examples: Iterable[Any], batch_size: int = 16, **kw: Any) -> IterBatcher:
        """``Batcher::new2(iter)``: batch a stream of ``(x, y)`` pairs (no shuffling, one pass)."""
        return IterBatcher(examples, batch_size, **kw)


class IterBatcher:
    """Candle's streaming ``Batcher``: stacks ``batch_size`` consecutive examples of an iterator."""

    def __init__(
        self,
        examples: Iterable[Any],
        batch_size: int = 16,
        *,
        return_last_incomplete_batch: bool = False,
        device: Device | str | None = None,
    ):
        if batch_size <= 0:
            raise BatchSizeError(f"Batcher: batch_size must be a positive int, got {batch_size!r}")
        self.examples = examples
        self.batch_size = int(batch_size)
        self.return_last_incomplete_batch = return_last_incomplete_batch
        self.device = None if device is None else Device.coerce(device)  # None: the examples' device

    def __iter__(self) -> Iterator[Any]:
        buf: list[Any] = []
        dev: Any = None

        def emit() -> Any:
            nonlocal dev
            if dev is None:
                dev = (self.device or _device_of(buf[0])).jax_device
            single = not isinstance(buf[0], (tuple, list))
            ts = tuple(wrap(jax.device_put(a, dev)) for a in stack_examples(buf))
            return ts[0] if single else ts

        for ex in self.examples:
            buf.append(ex)
            if len(buf) == self.batch_size:
                yield emit()
                buf = []
        if buf and self.return_last_incomplete_batch:
            yield emit()


def _device_of(data: Any) -> Device:
    """The device of a dataset given as Tensors / jax arrays (its first field); Cpu for host data."""
    first = data[0] if isinstance(data, (tuple, list)) and data else data
    a = unwrap(first)
    if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer):
        devs = a.devices()
        if len(devs) == 1:
            return Device.from_jax(next(iter(devs)))
    return Device.Cpu


def _prefetched(source: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run ``source`` on a daemon thread, ``depth`` items ahead; exceptions re-raise here."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((_DONE, None))
        except BaseException as e:
            q.put((_DONE, e))

    t = threading.Thread(target=produce, name="candlejax-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item, exc = q.get()
            if item is _DONE:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)
