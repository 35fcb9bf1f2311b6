"""``VarMap``: the named Vars a model was built from, initialised deterministically from a seed.

requires: candlejax.nn.init, candlejax.nn.module (Var, save_safetensors_dict)
provides: ``VarMap``

As Candle's ``VarMap``, it holds shared ``Var`` handles: ``VarBuilder.from_varmap`` gives the
Modules the very Var objects the map holds, so ``varmap.load(path)`` after building a model changes
what the model computes, an optimizer bound to ``varmap.all_vars()`` trains the map and the model
together, and ``varmap.save(path)`` writes the current (trained) values. With functional training
(``model, state, loss = opt.backward_step(loss_fn, model, state, x, y)``) the returned model holds
new Vars: copy them back with ``varmap.set(model.named_vars())`` or save the model itself.

Initialisation is deterministic per ``(seed, name)``: each Var draws from a generator seeded with
the seed and a hash of its full name, so a Var gets the same values whatever order layers are
created in, in every process and on every platform.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import check_width, to_dtype
from candlejax.errors import fmt_shape
from candlejax.io.safetensors import MmapedSafetensors
from candlejax.nn.init import Const, check_init
from candlejax.nn.module import Buffer, DonatedBuffer, Var, as_array, owned_copy, save_safetensors_dict
from candlejax.shape import as_shape
from candlejax.tensor import Tensor
from candlejax.tensor._core import int_arg

__all__ = ["VarMap"]


def name_rng(seed: int, name: str) -> np.random.Generator:
    """The init generator for ``name``: numpy's PCG64 seeded with ``(seed, crc32(name))`` (``seed`` a u64).

    Sampled on the host, so building a model compiles nothing; identical on every platform.
    """
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def _same_shape(existing: Var | Buffer, shape: Any, path: str) -> Var | Buffer:
    """``existing``, when it has the requested shape (Candle's ``shape mismatch`` error otherwise)."""
    if tuple(existing.shape) != shape:
        # Candle's text: the requested shape, then the existing Var's
        raise errors.VarMapError(f"shape mismatch on {path}: {fmt_shape(shape)} <> {fmt_shape(existing.shape)}")
    return existing


class VarMap:
    """Name -> Var store backing ``VarBuilder.from_varmap`` (Candle's ``VarMap``).

    >>> vm = VarMap(seed=0)
    >>> v = vm.get((2, 3), "lin.weight", Const(1.0), "f32", None)
    >>> v.name, v.shape
    ('lin.weight', (2, 3))
    """

    def __init__(self, seed: int = 0):
        self.seed = int_arg(seed, "VarMap", "seed")
        if not 0 <= self.seed < 2**64:  # a u64, as Device.set_seed's (taken modulo 2**63, 2**63 drew seed 0's values)
            raise errors.Msg(f"VarMap: seed must be in [0, 2**64), got {self.seed}")
        self._data: dict[str, Var | Buffer] = {}

    @staticmethod
    def new(seed: int = 0) -> VarMap:
        """Candle's ``VarMap::new()``: an empty map; ``seed`` drives the init draws."""
        return VarMap(seed)

    def clone(self) -> VarMap:
        """Candle's ``varmap.clone()`` (an ``Arc`` clone): a handle on the same Vars, so a Var created,
        set or loaded through either is seen by both."""
        c = VarMap(self.seed)
        c._data = self._data
        return c

    # --- creation ------------------------------------------------------------------------------
    def get(self, shape: Any, path: str, init: Any, dtype: Any, device: Any) -> Var | Buffer:
        """Create-or-return the Var ``path``; an existing Var must have the same shape."""
        shape = as_shape(shape)
        existing = self._data.get(path)
        if existing is not None:
            return _same_shape(existing, shape, path)
        dt = check_width(to_dtype(dtype))
        check_init(init, "VarMap.get")
        init = Const(0.0) if init is None else init
        try:
            a = init.sample(shape, dt, Device.coerce(device), name_rng(self.seed, path))
        except (MemoryError, RuntimeError) as e:  # a host draw (numpy) or a device one too large
            oom = errors.out_of_memory(f"VarMap.get({path!r}, {fmt_shape(shape)}, {dt.name})", e)
            if oom is e:
                raise
            raise oom from e
        v = Var._make(a, path)
        # another thread may have created it meanwhile (Candle holds the map's Mutex throughout): keep one
        kept = self._data.setdefault(path, v)
        return v if kept is v else _same_shape(kept, shape, path)

    # --- access --------------------------------------------------------------------------------
    def all_vars(self) -> list[Var | Buffer]:
        """Every Var (and Buffer: BatchNorm's running statistics), sorted by name (Candle returns HashMap order;
        here it is deterministic)."""
        return [self._data[k] for k in sorted(self._data)]

    def data(self) -> dict[str, Var | Buffer]:
        """The live name -> Var (or Buffer) dict (Candle's ``data()``; no mutex needed)."""
        return self._data

    def names(self) -> list[str]:
        """The variable names, sorted."""
        return sorted(self._data)

    def __contains__(self, name: str) -> bool:
        return name in self._data

    def __len__(self) -> int:
        return len(self._data)

    # --- updates -------------------------------------------------------------------------------
    def set_one(self, name: str, value: Any) -> None:
        """Set the value of an existing Var in place (same shape, moved to its device): every Module
        built from this map sees it. A Tensor or jax array must have the Var's dtype (Candle's
        ``Var::set`` refuses another); numbers and numpy arrays are converted to it, and integer values
        the dtype cannot hold raise. As Candle's ``Var::set``, the Var takes a copy: training it never
        deletes the caller's ``value``."""
        __tracebackhide__ = True
        self._set_one(name, value, copy=True)

    def _set_one(self, name: str, value: Any, copy: bool) -> None:
        __tracebackhide__ = True
        cur = self._data.get(name)
        if cur is None:
            raise errors.VarMapError(f"cannot find {name} in VarMap")
        old = cur._a
        donated = type(old) is DonatedBuffer
        try:
            if isinstance(value, (str, bytes, dict)) or value is None:
                raise TypeError
            if hasattr(value, "dtype") and not isinstance(value, np.ndarray | np.generic):
                a = as_array(value)  # a Tensor or jax array: its dtype is checked below
                a = owned_copy(a, value) if copy else a
            else:  # numbers / numpy: converted to the Var's dtype, refusing integers that do not fit
                a = as_array(Tensor(value, dtype=to_dtype(old.dtype)))
        except errors.Error:
            raise
        except (TypeError, ValueError):  # numpy's "could not convert string to float"
            raise errors.VarMapError(f"set_one({name!r}): the value must be a Tensor, an array or numbers, got"
                                     f" {type(value).__name__} {value!r:.60}") from None  # fmt: skip
        shape = old.shape if donated else tuple(old.shape)
        if tuple(a.shape) != tuple(shape):
            raise errors.ShapeMismatchBinaryOp(shape, a.shape, "set")
        dtype = old.dtype
        if a.dtype != dtype:
            raise errors.DTypeMismatchBinaryOp(to_dtype(dtype), to_dtype(a.dtype), f"set_one({name!r})")
        if not donated and not isinstance(a, jax.core.Tracer) and hasattr(old, "sharding"):
            if a.sharding != old.sharding:
                a = jax.device_put(a, old.sharding)
        cur._set_value(a)

    def set(self, items: Iterable[tuple[str, Any]] | dict[str, Any]) -> None:
        """``set_one`` for each ``(name, value)``, e.g. ``vm.set(model.named_vars())``."""
        if isinstance(items, dict):
            items = items.items()
        if not hasattr(items, "__iter__"):
            raise errors.InvalidArgument(f"VarMap.set takes (name, value) pairs or a dict, got {type(items).__name__}")
        for i, item in enumerate(items):
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise errors.InvalidArgument(f"VarMap.set takes (name, value) pairs; item {i} is {item!r:.60}")
            self.set_one(*item)

    # --- files ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write every Var's current value to a safetensors file (atomically)."""
        save_safetensors_dict(dict(self._data), path)

    def load(self, path: str | os.PathLike) -> None:
        """Set every Var already in the map from the file (Candle's ``load``); a Var missing from
        the file is an error. A tensor of another dtype is cast to the Var's, except integer values
        that the Var's integer dtype cannot hold exactly (out of range, or a float with a fraction):
        those are refused, never wrapped. The names and shapes are checked from the file's header
        before any Var is set, so a file that does not fit leaves every Var as it was (Candle sets
        the Vars one by one, in its HashMap's order, until one fails)."""
        __tracebackhide__ = True
        p = errors.path_arg(path, "VarMap.load")
        errors.check_file(p, "VarMap.load")
        with MmapedSafetensors(p) as st:
            names = sorted(self._data)
            for name in names:
                if name not in st:
                    raise errors.VarMapError(f"error setting {name} using data from {p}: cannot find tensor {name}")
                want, got = tuple(self._data[name]._a.shape), tuple(st.get(name).shape)
                if got != want:
                    e = errors.ShapeMismatchBinaryOp(want, got, "set")
                    raise errors.VarMapError(f"error setting {name} using data from {p}: {e}")
            for name in names:
                self._load_one(st, name, p)

    def _load_one(self, st: MmapedSafetensors, name: str, p: str) -> None:
        want = to_dtype(self._data[name]._a.dtype)
        view = st.get(name)
        try:
            try:
                same = view.dtype is want
            except errors.SafeTensor:  # a file dtype with no candlejax dtype (I8, U64): converted below
                same = False
            if same or not np.issubdtype(want.np, np.integer):
                self._set_one(name, st.load(name, dtype=want), copy=False)  # fresh: no copy
                return
            host = view.numpy()  # another dtype into an integer Var: check the values first
            bad = _not_holdable(host, want.np)
            if bad is not None:
                raise errors.VarMapError(
                    f"error setting {name} using data from {p}: the file holds {view.st_dtype}"
                    f" {list(view.shape)} with the value {bad}, which the Var's {want.name} cannot hold"
                    " (VarMap.load casts to the Var's dtype but never wraps or truncates integers)"
                )
            self.set_one(name, host.astype(want.np))
        except errors.VarMapError:
            raise
        except errors.Error as e:
            raise errors.VarMapError(f"error setting {name} using data from {p}: {e}") from None

    def __repr__(self) -> str:
        return f"VarMap(seed={self.seed}, {len(self._data)} vars)"


def _not_holdable(a: np.ndarray, target: np.dtype) -> Any:
    """The first value of ``a`` that the integer dtype ``target`` cannot hold exactly, or ``None``."""
    info = np.iinfo(target)
    if np.issubdtype(a.dtype, np.integer):
        bad = (a < info.min) | (a > info.max)
    else:
        a = a.astype(np.float64)
        bad = ~np.isfinite(a) | (a != np.trunc(a)) | (a < info.min) | (a > info.max)
    idx = np.flatnonzero(bad)
    return a.reshape(-1)[idx[0]].item() if idx.size else None
