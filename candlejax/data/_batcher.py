"""``Batcher``: Candle's ``candle_datasets::Batcher`` with seeded per-epoch shuffling and prefetch.

requires: numpy, jax, candlejax.tensor / device, candlejax.data._dataset
provides: ``Batcher``, ``IterBatcher``

Candle: ``Batcher::new2(iter).batch_size(64).return_last_incomplete_batch(false)``.
PyTorch: ``DataLoader(ds, batch_size=64, shuffle=True, drop_last=True, generator=g)``.
candlejax: ``Batcher((images, labels), batch_size=64, shuffle=True, seed=0)``, or Candle's builder
spelling ``Batcher.new2((images, labels)).batch_size(64).return_last_incomplete_batch(True)``.

``b.batch_size`` and ``b.return_last_incomplete_batch`` are values (an ``int``, a bool-like ``int``)
that can also be called as Candle's builder methods. A call validates its value as the constructor
does (a batch size that is not a positive int raises ``BatchSizeError``), changes ``b`` and returns
``b`` itself (Candle's builder consumes and returns ``self``; with no ownership in Python, the same
object comes back), so the calls chain in any order. Whether the dataset holds a full batch is
checked when iterating (``iter``, ``len``), once the options are final.

>>> import numpy as np
>>> x = np.zeros((5, 2), np.float32); y = np.arange(5, dtype=np.uint32)
>>> b = Batcher.new2((x, y)).batch_size(2).return_last_incomplete_batch(True)
>>> b.batch_size == 2, b.batch_size + 1, b.return_last_incomplete_batch
(True, 3, True)
>>> [yb.tolist() for _, yb in b]
[[0, 1], [2, 3], [4]]
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np

from candlejax import errors
from candlejax.data._dataset import (
    BatchSizeError,
    EmptyDatasetError,
    TensorDataset,
    _is_array,
    as_dataset,
    stack_examples,
)
from candlejax.device import Device
from candlejax.tensor._core import int_arg, unwrap, wrap

_DONE = object()


class _BatchSizeValue(int):
    """A Batcher's batch size: an ``int`` everywhere, and callable as Candle's builder method.

    ``b.batch_size + 1``, ``b.batch_size == 16``, ``int(b.batch_size)``, ``f"{b.batch_size}"`` act on
    the number; ``b.batch_size(64)`` sets it on ``b`` (validated) and returns ``b``. Arithmetic gives
    plain ints, and pickling / ``copy`` store a plain int.
    """

    _owner: Any

    def __new__(cls, value: int, owner: Any) -> _BatchSizeValue:
        self = super().__new__(cls, value)
        self._owner = owner
        return self

    def __call__(self, batch_size: int) -> Any:
        self._owner.batch_size = batch_size
        return self._owner

    def __reduce__(self) -> tuple[Any, ...]:
        return (int, (int(self),))


class _FlagValue(int):
    """A Batcher's ``return_last_incomplete_batch``: behaves as a bool, callable as Candle's builder method.

    ``bool`` cannot be subclassed, so this is an ``int`` of 0 / 1 that prints as ``False`` / ``True``:
    ``if b.return_last_incomplete_batch:``, ``not ...``, ``== True`` and formatting work as for a
    bool; only identity (``... is True``) and ``isinstance(..., bool)`` differ (use ``bool(...)``).
    ``b.return_last_incomplete_batch(True)`` sets it on ``b`` (validated) and returns ``b``.
    """

    _owner: Any

    def __new__(cls, value: bool, owner: Any) -> _FlagValue:
        self = super().__new__(cls, bool(value))
        self._owner = owner
        return self

    def __call__(self, flag: bool) -> Any:
        self._owner.return_last_incomplete_batch = flag
        return self._owner

    def __repr__(self) -> str:
        return repr(bool(self))

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(bool(self), spec)

    def __reduce__(self) -> tuple[Any, ...]:
        return (bool, (bool(self),))


def _check_batch_size(batch_size: Any) -> int:
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, (bool, np.bool_)) or batch_size <= 0:
        raise BatchSizeError(f"Batcher: batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


def _check_seed(seed: Any) -> int:
    """A shuffling seed: a non-negative int (numpy's ``default_rng([seed, epoch])`` takes no other)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, (bool, np.bool_)) or seed < 0:
        raise errors.InvalidArgument(f"Batcher: seed must be a non-negative int, got {seed!r}")
    return int(seed)


class _BuilderOptions:
    """``batch_size`` / ``return_last_incomplete_batch`` as values and as Candle's builder methods.

    Assigning or calling either goes through ``_configure(batch_size, return_last)``, which
    validates the values and stores them in ``_batch_size`` / ``_return_last_incomplete_batch``.
    Whether a full batch exists (``_check_fits``) is checked when iterating, so that builder calls
    may come in any order (``.batch_size(64).return_last_incomplete_batch(True)`` on 10 examples).
    """

    _batch_size: int
    _return_last_incomplete_batch: bool

    def _configure(self, batch_size: Any, return_last_incomplete_batch: Any) -> None:
        self._batch_size = _check_batch_size(batch_size)
        self._return_last_incomplete_batch = bool(return_last_incomplete_batch)

    def _check_fits(self, n: int) -> None:
        """Raise when ``n`` examples give no batch at all (drop-last with ``batch_size > n``)."""
        bs = self._batch_size
        if bs > n and not self._return_last_incomplete_batch:
            raise BatchSizeError(
                f"Batcher: batch_size {bs} is larger than the dataset ({n} examples), so no full batch"
                f" exists and every epoch would be empty; use a batch_size <= {n} or"
                " return_last_incomplete_batch=True (builder spelling: .return_last_incomplete_batch(True))"
            )

    @property
    def batch_size(self) -> _BatchSizeValue:
        """Examples per batch (an ``int``); ``b.batch_size(n)`` sets it and returns ``b`` (Candle's builder)."""
        return _BatchSizeValue(self._batch_size, self)

    @batch_size.setter
    def batch_size(self, batch_size: int) -> None:
        self._configure(batch_size, self._return_last_incomplete_batch)

    @property
    def return_last_incomplete_batch(self) -> _FlagValue:
        """Also yield the last, smaller batch (bool-like); ``b.return_last_incomplete_batch(True)``
        sets it and returns ``b`` (Candle's builder)."""
        return _FlagValue(self._return_last_incomplete_batch, self)

    @return_last_incomplete_batch.setter
    def return_last_incomplete_batch(self, flag: bool) -> None:
        self._configure(self._batch_size, flag)


class Batcher(_BuilderOptions):
    """Batches of a dataset, one epoch per ``iter()``; yields a tuple of Tensors (one per field).

    Args:
        dataset: a tuple/list of Tensors or arrays sharing their first dim, a single Tensor/array
            (then each batch is one Tensor), or any object following the ``Dataset`` protocol.
        batch_size: examples per batch (``None``: Candle's default 16). A value given here is
            checked against the dataset size at once; the default, and values set later through
            the builder calls, when iterating.
        shuffle: visit the examples in a new order each epoch. The order of epoch ``e`` is a pure
            function of ``(seed, e)``, so runs are reproducible and resumable.
        seed: the shuffling seed.
        return_last_incomplete_batch: also yield the last, smaller batch (Candle's option; PyTorch's
            ``drop_last=False``). Off by default, as in Candle, so every batch has the same shape
            and a jitted step compiles once.
        drop_last: PyTorch's ``DataLoader`` spelling, ``not return_last_incomplete_batch`` (``None``:
            unset; note PyTorch's default, ``False``, keeps the last batch where Candle's drops it).
        device: where batches go. Default: the dataset's device, as in Candle (Tensors / jax
            arrays on ``cuda:0`` give batches on ``cuda:0``; a list of examples or a ``Dataset``
            object, its first example's device); host data (numpy, Python) gives ``Device.Cpu``.
        prefetch: batches gathered and moved to the device ahead of time on a background thread
            (0: gather on the calling thread). Default (``None``): 2 for in-memory data (Tensors,
            arrays, a list of examples); 0 for a ``Dataset`` object, whose ``__getitem__`` /
            ``get_batch`` may draw random numbers (augmentation) or have other effects: read ahead,
            they would run in an order set by thread timing and before the checkpointed position.
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
        batch_size: int | None = None,
        *,
        shuffle: bool = False,
        seed: int = 0,
        return_last_incomplete_batch: bool = False,
        device: Device | str | None = None,
        prefetch: int | None = None,
        mesh: Any = None,
        data_axis: str = "data",
        drop_last: bool | None = None,
    ):
        if drop_last is not None:  # PyTorch's DataLoader spelling
            if drop_last and return_last_incomplete_batch:
                raise errors.InvalidArgument(
                    "Batcher: drop_last=True contradicts return_last_incomplete_batch=True; give one of them"
                )
            return_last_incomplete_batch = not drop_last
        src_device = _device_of(dataset)
        self.dataset, self._single = as_dataset(dataset)
        n = len(self.dataset)
        if n == 0:
            raise EmptyDatasetError("Batcher: the dataset is empty (0 examples)")
        if prefetch is None:  # a Dataset object is read only as its batches are taken (see the docstring)
            prefetch = 2 if isinstance(self.dataset, (TensorDataset, list)) else 0
        if not isinstance(prefetch, (int, np.integer)) or isinstance(prefetch, bool) or prefetch < 0:
            raise errors.InvalidArgument(f"Batcher: prefetch must be an int >= 0, got {prefetch!r}")
        self.mesh, self.data_axis = mesh, data_axis
        self._configure(16 if batch_size is None else batch_size, return_last_incomplete_batch)
        if batch_size is not None:
            self._check_fits(n)
        self.shuffle = bool(shuffle)
        self.seed = _check_seed(seed)
        if device is None and mesh is None and not isinstance(self.dataset, (TensorDataset, list)):
            src_device = _device_of(self.dataset[0])  # a Dataset object: its examples' device
        self.device = Device.coerce(device) if device is not None else src_device
        self.prefetch = int(prefetch)
        self.epoch = 0
        self.position = 0
        self._has_get_batch = hasattr(self.dataset, "get_batch")

    def _configure(self, batch_size: Any, return_last_incomplete_batch: Any) -> None:
        """Validate and store the batch options (constructor, assignments and builder calls)."""
        bs = _check_batch_size(batch_size)
        if self.mesh is not None:
            from candlejax.distributed import ShardingError, axis_size
            from candlejax.distributed._mesh import need_mesh

            need_mesh(self.mesh, "Batcher(mesh=)")
            k = axis_size(self.mesh, self.data_axis)
            if bs % k:
                raise ShardingError(
                    f"Batcher: batch_size {bs} does not split over mesh axis {self.data_axis!r} of size {k};"
                    f" use a multiple of {k} (e.g. {max(k, bs // k * k)})"
                )
        super()._configure(bs, return_last_incomplete_batch)

    # --- sizes and order -------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches per epoch."""
        self._check_fits(len(self.dataset))
        return self._num_batches()

    def _num_batches(self) -> int:
        full, rest = divmod(len(self.dataset), self._batch_size)
        return full + (1 if rest and self._return_last_incomplete_batch else 0)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The example indices of ``epoch`` (default: the current one), in visiting order."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        e = self.epoch if epoch is None else int_arg(epoch, "Batcher.order", "epoch")
        if e < 0:  # (numpy's default_rng raised a bare ValueError)
            raise errors.InvalidArgument(f"Batcher.order: epoch must be >= 0, got {e}")
        return np.random.default_rng([self.seed, e]).permutation(n)

    # --- checkpoint state -------------------------------------------------------------------
    def state(self) -> dict[str, int]:
        """``{"epoch", "position", "seed"}``: ``position`` batches of ``epoch`` have been handed out."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned; the next ``iter()`` continues from there."""

        def count(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0

        if not (isinstance(state, dict) and count(state.get("epoch")) and count(state.get("position"))):
            raise errors.InvalidArgument(
                "Batcher.set_state: expected what state() returns, {'epoch': int >= 0, 'position': int >= 0,"
                f" 'seed': int}}, got {state!r}"
            )
        seed = _check_seed(state["seed"]) if "seed" in state else self.seed
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), seed

    # --- iteration ---------------------------------------------------------------------------
    def _host_batch(self, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        if self._has_get_batch:
            out = self.dataset.get_batch(idx)
            if _is_array(out):  # one field: a batch Tensor, as when __getitem__ gives one array
                self._single = True
                return (unwrap(out),)
            return tuple(unwrap(a) for a in out)
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
        bs = self._batch_size
        for k in range(start, stop):
            yield self._to_device(self._host_batch(order[k * bs : (k + 1) * bs]))

    def __iter__(self) -> Iterator[Any]:
        n = len(self.dataset)
        self._check_fits(n)
        self._check_last_splits(n)
        return self._epoch()

    def _check_last_splits(self, n: int) -> None:
        """On a mesh, raise before the epoch's first batch when its last incomplete batch (kept with
        ``return_last_incomplete_batch``) would not split over the data axis."""
        rest = n % self._batch_size
        if self.mesh is None or not self._return_last_incomplete_batch or not rest:
            return
        from candlejax.distributed import ShardingError, axis_size

        k = axis_size(self.mesh, self.data_axis)
        if rest % k:
            raise ShardingError(
                f"Batcher: the last incomplete batch holds {rest} examples ({n} examples, batch_size"
                f" {self._batch_size}), which do not split over mesh axis {self.data_axis!r} of size {k}; drop it"
                " (return_last_incomplete_batch=False, the default) or use a dataset whose size leaves a multiple"
                f" of {k}"
            )

    def _epoch(self) -> Iterator[Any]:
        order = self.order()
        stop = self._num_batches()
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
            f"Batcher(len={self._num_batches()}, batch_size={self.batch_size}, shuffle={self.shuffle},"
            f" seed={self.seed}, return_last_incomplete_batch={self.return_last_incomplete_batch}, epoch={self.epoch},"
            f" position={self.position})"
        )

    # --- Candle's iterator-based constructors -------------------------------------------------
    @staticmethod
    def new1(examples: Any, batch_size: int = 16, **kw: Any) -> IterBatcher:
        """``Batcher::new1(iter)``: batch a stream of single Tensors (no shuffling, one pass).

        ``examples`` is an iterable of Tensors/arrays, or one Tensor/array whose rows are the
        examples. Chain Candle's builder calls:
        ``Batcher.new1(it).batch_size(64).return_last_incomplete_batch(True)``.
        """
        return IterBatcher(_columns(examples, 1), batch_size, fields=1, **kw)

    @staticmethod
    def new2(examples: Any, batch_size: int = 16, **kw: Any) -> IterBatcher:
        """``Batcher::new2(iter)``: batch a stream of ``(x, y)`` pairs (no shuffling, one pass).

        ``examples`` is an iterable of pairs, or a pair ``(xs, ys)`` of Tensors/arrays sharing their
        first dim (then the examples are their rows, ``(xs[i], ys[i])``).
        """
        return IterBatcher(_columns(examples, 2), batch_size, fields=2, **kw)

    @staticmethod
    def new_r1(examples: Any, batch_size: int = 16, **kw: Any) -> IterBatcher:
        """``Batcher::new_r1(iter)``: Candle's form for an iterator of ``Result<Tensor>``.

        Python iterators report failure by raising, and the exception reaches the loop, so this is
        :meth:`new1`.
        """
        return Batcher.new1(examples, batch_size, **kw)

    @staticmethod
    def new_r2(examples: Any, batch_size: int = 16, **kw: Any) -> IterBatcher:
        """``Batcher::new_r2(iter)``: Candle's form for an iterator of ``Result<(Tensor, Tensor)>``; = :meth:`new2`."""
        return Batcher.new2(examples, batch_size, **kw)


class _Columns:
    """In-memory examples given to ``new1`` / ``new2`` as whole arrays: the rows, in order."""

    def __init__(self, data: Any, single: bool):
        self.device = _device_of(data)
        self.dataset, _ = as_dataset(data)
        self.single = single

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self.dataset)):
            row = self.dataset[i]
            yield row[0] if self.single else row


def _columns(examples: Any, fields: int) -> Any:
    """``examples`` unchanged when it is a stream; a ``_Columns`` when it is 1 array (new1) or 2 (new2)."""
    if fields == 1 and _is_array(examples):
        return _Columns(examples, single=True)
    if fields == 2 and isinstance(examples, (tuple, list)) and len(examples) == 2 and all(map(_is_array, examples)):
        return _Columns(tuple(examples), single=False)
    return examples


class IterBatcher(_BuilderOptions):
    """Candle's streaming ``Batcher``: stacks ``batch_size`` consecutive examples of an iterator.

    Built by ``Batcher.new1/new2/new_r1/new_r2``; ``batch_size`` and ``return_last_incomplete_batch``
    are values and Candle's builder methods, as on :class:`Batcher`. Each ``iter()`` makes one pass
    over ``examples`` (a generator is used up after one pass; arrays given to ``new1``/``new2`` are
    read again). ``next(b)`` takes the next batch, as Candle's ``batcher.next()``: it continues one
    pass of its own, started by the first ``next`` (``StopIteration`` once it is done).
    """

    def __init__(
        self,
        examples: Iterable[Any],
        batch_size: int = 16,
        *,
        return_last_incomplete_batch: bool = False,
        device: Device | str | None = None,
        fields: int | None = None,
    ):
        self._configure(batch_size, return_last_incomplete_batch)
        self.examples = examples
        self.fields = fields  # 1: new1's single tensors, 2: new2's (x, y) pairs, None: as they come
        self.device = None if device is None else Device.coerce(device)  # None: the examples' device
        self._pass: Iterator[Any] | None = None  # the pass ``next(b)`` continues

    def __next__(self) -> Any:
        """Candle's ``Iterator::next``: the next batch of the pass ``next`` continues."""
        if self._pass is None:
            self._pass = iter(self)
        return next(self._pass)

    def __iter__(self) -> Iterator[Any]:
        if isinstance(self.examples, _Columns):
            self._check_fits(len(self.examples.dataset))
            return self._column_batches(self.examples)
        return self._stream_batches()

    def _stream_batches(self) -> Iterator[Any]:
        buf: list[Any] = []
        dev: Any = None
        n = 0

        def emit() -> Any:
            nonlocal dev
            if dev is None:
                dev = (self.device or _device_of(buf[0])).jax_device
            single = self.fields == 1 or not isinstance(buf[0], (tuple, list))
            ts = tuple(wrap(jax.device_put(a, dev)) for a in stack_examples(buf, n - len(buf), single))
            return ts[0] if single else ts

        for ex in self.examples:
            if self.fields == 2 and not (isinstance(ex, (tuple, list)) and len(ex) == 2):
                got = f"a {type(ex).__name__} of {len(ex)} items" if isinstance(ex, (tuple, list)) else (
                    f"a {type(ex).__name__}")  # fmt: skip
                raise errors.InvalidArgument(
                    f"Batcher.new2: example {n} is {got}; new2 batches (x, y) pairs, as Candle's"
                    " Batcher::new2 (new1 batches single tensors; for whole arrays pass (xs, ys))"
                )
            if self.fields == 1 and isinstance(ex, tuple) and any(map(_is_array, ex)):
                raise errors.InvalidArgument(
                    f"Batcher.new1: example {n} is a tuple of {len(ex)} items holding arrays; new1 batches single"
                    " tensors, as Candle's Batcher::new1 (new2 batches (x, y) pairs)"
                )
            n += 1
            buf.append(ex)
            if len(buf) == self._batch_size:
                yield emit()
                buf = []
        if buf and self._return_last_incomplete_batch:
            yield emit()

    def _column_batches(self, cols: _Columns) -> Iterator[Any]:
        """Whole arrays: slice the rows batch by batch instead of stacking examples one at a time."""
        dev = (self.device or cols.device).jax_device
        n, bs = len(cols.dataset), self._batch_size
        stop = n if self._return_last_incomplete_batch else n - n % bs
        for start in range(0, stop, bs):
            arrays = cols.dataset.get_batch(np.arange(start, min(start + bs, n)))
            ts = tuple(wrap(jax.device_put(a, dev)) for a in arrays)
            yield ts[0] if cols.single else ts


def _device_of(data: Any) -> Device:
    """The device of a dataset given as Tensors / jax arrays (its first field), of a list of examples
    (the first example's first field) or of one example; Cpu for host data."""
    first = data
    while isinstance(first, (tuple, list)) and first:
        first = first[0]
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
