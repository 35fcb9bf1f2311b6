"""``VarBuilder``: build a model by name, Candle's way, from files, dicts, zeros or a ``VarMap``.

requires: candlejax.nn.module (Var), candlejax.nn.var_map, candlejax.nn.init,
candlejax.io.safetensors (MmapedSafetensors)
provides: ``VarBuilder``, ``SimpleBackend`` and its implementations, ``ShardedSafeTensors`` and its ``Shard`` hints

``vb.pp("encoder").get((768, 768), "weight")`` returns a ``Var`` named ``"encoder.weight"``. The
backend decides what a ``get`` means: a ``VarMap`` creates the Var from the init hint; files and
dicts check the shape and convert to the builder's dtype and device. A missing tensor raises
``CannotFindTensor`` naming the full path, the file(s) and the nearest existing names; a wrong
shape raises ``shape mismatch for {path}, expected: [..], got: [..]`` naming the file.

Every builder derived from one constructor (``pp``, ``to_dtype``, ...) shares one record of the
backend names it read: ``vb.unused_names()`` lists the checkpoint tensors no ``get`` touched and
``vb.check_all_used(strict)`` raises (or warns) on them, so a loader notices weights it ignored.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType, check_width, to_dtype
from candlejax.errors import fmt_shape
from candlejax.io import npy, pth
from candlejax.io._checks import cast
from candlejax.io.safetensors import MmapedSafetensors, SliceSafetensors
from candlejax.nn.init import Const, check_init
from candlejax.nn.module import Var, as_array
from candlejax.nn.var_map import VarMap
from candlejax.shape import as_shape
from candlejax.tensor._core import unwrap
from candlejax.tensor.creation import _is_candle_pyo3, _is_torch, as_jax_array

__all__ = [
    "DictBackend",
    "NpzBackend",
    "PthBackend",
    "SafetensorsBackend",
    "Shard",
    "ShardedSafeTensors",
    "SimpleBackend",
    "VarBuilder",
    "VarMapBackend",
    "ZerosBackend",
]


def _open_safetensors(paths: Sequence[str]) -> MmapedSafetensors:
    """One file, several shards, or a ``*.index.json`` as one name space (``candlejax.io``)."""
    paths = [errors.path_arg(p, "from_mmaped_safetensors") for p in paths]
    for p in paths:  # candlejax errors that are also FileNotFoundError / IsADirectoryError
        errors.check_file(p, "from_mmaped_safetensors", "pass its *.safetensors files or model.safetensors.index.json")
    return MmapedSafetensors(paths[0] if len(paths) == 1 else paths)


# ------------------------------------------------------------------------------------------------
# backends
# ------------------------------------------------------------------------------------------------
def _to_device(a: Any, dtype: DType, device: Device, owned: bool = False) -> jax.Array:
    """``a`` as a buffer of the builder's dtype on ``device``; ``owned``: ``a`` was read for this call
    (a file backend's), so it becomes the Var's buffer without another copy."""
    dt = check_width(dtype)
    if isinstance(a, np.ndarray):
        a = cast(a, dt.np)  # float -> int saturates, as Tensor.to_dtype (jax's astype below does too)
        return jax.device_put(a, device.jax_device)
    a = as_array(a)
    fresh = a.dtype != dt.np
    if fresh:
        a = a.astype(dt.np)
    if not isinstance(a, jax.core.Tracer):
        # a Var of its own, as Candle's Var::from_tensor copies: sharing the caller's buffer, a donating
        # training step would delete the tensors of the dict given to from_tensors
        a = jax.device_put(a, device.jax_device, may_alias=None if fresh or owned else False)
    return a


class SimpleBackend:
    """Candle's ``SimpleBackend``: where ``VarBuilder.get`` finds its tensors.

    Subclass and implement ``_load(path) -> array``, ``_shape(path)``, ``names()``, ``contains_tensor``
    (and ``describe()`` for error messages), or override ``get`` entirely as ``VarMapBackend`` does.
    """

    def describe(self) -> str:
        """A short description of the source, for error messages."""
        return type(self).__name__

    def names(self) -> list[str]:
        """The names of the tensors the backend holds."""
        return []

    def contains_tensor(self, path: str) -> bool:
        """Candle's ``SimpleBackend::contains_tensor``: whether ``path`` can be read."""
        raise NotImplementedError

    def _load(self, path: str) -> Any:
        raise NotImplementedError

    def _shape(self, path: str) -> tuple[int, ...]:
        return tuple(self._load(path).shape)

    def _where(self, path: str) -> str:
        return self.describe()

    def _missing(self, path: str) -> errors.CannotFindTensor:
        names = self.names()
        near = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
        if not near:
            tail = path.rpartition(".")[2]
            near = [n for n in names if n.endswith("." + tail) or n == tail][:5]
        detail = f"not in {self.describe()}"
        if near:
            detail += "; nearest names: " + ", ".join(near)
        elif names:
            detail += f"; it holds {len(names)} tensors, e.g. " + ", ".join(sorted(names)[:5])
        return errors.CannotFindTensor(path, detail)

    def check(self, path: str, shape: tuple[int, ...] | None = None) -> None:
        """Raise ``CannotFindTensor`` (with the nearest names) unless ``path`` is stored, and
        ``UnexpectedShape`` naming the file when its shape is not ``shape`` (when given)."""
        if not self.contains_tensor(path):
            raise self._missing(path)
        if shape is None:
            return
        got = self._shape(path)
        if tuple(got) != tuple(shape):
            e = errors.UnexpectedShape(f"shape mismatch for {path}", shape, got)
            e.args = (f"{e.args[0]} (in {self._where(path)})",)
            raise e

    def get(self, shape: tuple[int, ...], path: str, init: Any, dtype: DType, device: Device) -> Any:
        """Candle's ``SimpleBackend::get``: load ``path``, checking its ``shape``, in ``dtype`` on ``device``."""
        self.check(path, shape)
        return _to_device(self._load(path), dtype, device)

    def get_unchecked(self, path: str, dtype: DType, device: Device) -> Any:
        """Candle's ``SimpleBackend::get_unchecked``: load ``path`` whatever its shape."""
        self.check(path)
        return _to_device(self._load(path), dtype, device)


class VarMapBackend(SimpleBackend):
    """Creates trainable Vars in a ``VarMap`` from the init hints."""

    def __init__(self, varmap: VarMap):
        self.varmap = varmap

    def describe(self) -> str:
        """The VarMap, for error messages."""
        return repr(self.varmap)

    def names(self) -> list[str]:
        """The names of the VarMap's variables."""
        return self.varmap.names()

    def contains_tensor(self, path: str) -> bool:
        """Whether the VarMap holds ``path``."""
        return path in self.varmap

    def get(self, shape: tuple[int, ...], path: str, init: Any, dtype: DType, device: Device) -> Any:
        """Candle's ``Backend for VarMap``: the variable ``path``, created with ``init`` when missing."""
        return self.varmap.get(shape, path, init, dtype, device)._a

    def get_unchecked(self, path: str, dtype: DType, device: Device) -> Any:
        """Always raises, as Candle: a VarMap needs the shape to create a variable."""
        raise errors.Msg("`get_unchecked` does not make sense for `VarMap`, use `get`.")


class ZerosBackend(SimpleBackend):
    """Every ``get`` returns zeros; ``contains_tensor`` is always true."""

    def describe(self) -> str:
        """``"zeros"``, for error messages."""
        return "zeros"

    def contains_tensor(self, path: str) -> bool:
        """Always True: every name reads as zeros."""
        return True

    def get(self, shape: tuple[int, ...], path: str, init: Any, dtype: DType, device: Device) -> Any:
        """Zeros of ``shape`` in ``dtype`` on ``device``."""
        return Const(0.0).sample(shape, dtype, device)

    def get_unchecked(self, path: str, dtype: DType, device: Device) -> Any:
        """Always raises, as Candle: zeros need a shape."""
        raise errors.Msg("`get_unchecked` does not make sense for `VarBuilder.zeros()`, use `get(shape, name)`.")


class DictBackend(SimpleBackend):
    """Tensors (or arrays) by name."""

    def __init__(self, tensors: dict[str, Any], source: str = "the tensor dict"):
        self.tensors = tensors
        self.source = source

    def describe(self) -> str:
        """Where the tensors come from, for error messages."""
        return self.source

    def names(self) -> list[str]:
        """The names of the stored tensors."""
        return list(self.tensors)

    def contains_tensor(self, path: str) -> bool:
        """Candle's ``SimpleBackend::contains_tensor``: whether ``path`` is stored."""
        return path in self.tensors

    def _load(self, path: str) -> Any:
        t = self.tensors[path]
        a = unwrap(t)
        if isinstance(a, (np.ndarray, jax.Array)):
            return a
        if _is_torch(a):  # a Parameter (requires grad) or a bf16 tensor: np.asarray refuses both
            a = a.detach()  # 64-bit ones as numpy, converted to the builder's dtype without x64 mode
            return a.cpu().numpy() if a.dtype.itemsize == 8 else as_jax_array(a, None, f"{path} in {self.source}")
        if _is_candle_pyo3(a):  # candle-pyo3's Tensor
            return as_jax_array(a, None, f"{path} in {self.source}")
        n = np.asarray(a) if not isinstance(a, (str, bytes, dict)) and a is not None else np.asarray(None)
        if n.dtype.kind not in "biuf":  # "hello" read as a rank-0 string said "shape mismatch ... got: []"
            raise errors.Msg(f"{path} in {self.source} is not a tensor: a {type(t).__name__} ({t!r:.60});"
                             " the dict holds Tensors or arrays")  # fmt: skip
        return n

    def _shape(self, path: str) -> tuple[int, ...]:
        return tuple(np.shape(self._load(path)))


class SafetensorsBackend(SimpleBackend):
    """Memory-mapped safetensors files (one, many, or a sharded ``model.safetensors.index.json``)."""

    def __init__(self, paths: str | os.PathLike | Iterable[str | os.PathLike] | MmapedSafetensors):
        if isinstance(paths, MmapedSafetensors):  # already open (e.g. bytes in memory, SliceSafetensors)
            self.st, self.paths = paths, list(paths.paths)
            return
        if not isinstance(paths, Iterable) or isinstance(paths, (str, bytes, bytearray, os.PathLike)):
            paths = [paths]
        self.paths = [errors.path_arg(p, "from_mmaped_safetensors") for p in paths]
        self.st = _open_safetensors(self.paths)

    def describe(self) -> str:
        """The safetensors file names, for error messages."""
        return ", ".join(os.path.basename(p) for p in self.st.paths) or "no safetensors files (none were given)"

    def names(self) -> list[str]:
        """The names of the tensors in the files."""
        return self.st.names()

    def contains_tensor(self, path: str) -> bool:
        """Candle's ``SimpleBackend::contains_tensor``: whether a file holds ``path``."""
        return path in self.st

    def _load(self, path: str) -> Any:
        return self.st.get(path).numpy()

    def _shape(self, path: str) -> tuple[int, ...]:
        return tuple(self.st.get(path).shape)

    def get(self, shape: tuple[int, ...], path: str, init: Any, dtype: DType, device: Device) -> Any:
        """Candle's ``SimpleBackend::get``: load ``path``, checking its ``shape``, in ``dtype`` on ``device``."""
        self.check(path, shape)
        return self.st.load(path, device, check_width(dtype))._a

    def get_unchecked(self, path: str, dtype: DType, device: Device) -> Any:
        """Candle's ``SimpleBackend::get_unchecked``: load ``path`` whatever its shape."""
        self.check(path)
        return self.st.load(path, device, check_width(dtype))._a

    def _where(self, path: str) -> str:
        return self.st.file_of(path)


@dataclass(frozen=True)
class Shard:
    """Candle's ``var_builder::Shard``: the hint of a :class:`ShardedSafeTensors` builder, the part
    ``rank`` of ``world_size`` equal blocks along ``dim`` (0 or 1); the default reads it whole."""

    dim: int = 0
    rank: int = 0
    world_size: int = 1

    @staticmethod
    def default() -> Shard:
        """Candle's ``Shard::default()``: ``dim 0, rank 0, world_size 1`` (no sharding)."""
        return Shard()


class ShardedSafeTensors(SafetensorsBackend):
    """Candle's ``ShardedSafeTensors``: safetensors files read in tensor-parallel blocks.
    ``ShardedSafeTensors.var_builder(paths, dtype, device)`` makes the builder (Candle's
    ``ShardedVarBuilder``); ``vb.get_with_hints(shape, name, Shard(dim, rank, world_size))`` reads block
    ``rank``: ``Shard(0, 1, 2)`` of a ``(1024, 1024)`` tensor is ``t[512:]``. As in Candle, ``shape`` is
    checked only when ``world_size`` is 1 (as with ``get(shape, name)``)."""

    @staticmethod
    def var_builder(paths: str | os.PathLike | Iterable[str | os.PathLike], dtype: Any = DType.F32,
                    device: Any = None) -> VarBuilder:  # fmt: skip
        """Candle's ``ShardedSafeTensors::var_builder(paths, dtype, &dev)``."""
        return VarBuilder(ShardedSafeTensors(paths), dtype, device)

    def get(self, shape: tuple[int, ...], path: str, init: Any, dtype: DType, device: Device) -> Any:
        h = init if isinstance(init, Shard) else Shard()
        if h.world_size == 1:
            return super().get(shape, path, init, dtype, device)
        self.check(path)
        full = self._shape(path)
        if h.dim not in (0, 1) or h.dim >= len(full):
            raise errors.Msg(f"Get sharded on dimensions != 0 or 1 ({path} {fmt_shape(full)}, dim {h.dim})")
        if h.world_size < 1 or full[h.dim] % h.world_size:
            raise errors.ShapeMismatchSplit(full, h.dim, h.world_size)
        block = full[h.dim] // h.world_size
        if not 0 <= h.rank < h.world_size:
            raise errors.Msg(f"Cannot slice tensor {path} ({fmt_shape(full)}) along dim {h.dim} with"
                             f" rank {h.rank} of world_size {h.world_size}")  # fmt: skip
        part = self.st.get(path).numpy()[(slice(None),) * h.dim + (slice(h.rank * block, (h.rank + 1) * block),)]
        return _to_device(np.ascontiguousarray(part), dtype, device)

    def get_unchecked(self, path: str, dtype: DType, device: Device) -> Any:
        raise errors.Msg("`get_unchecked` does not make sense for `ShardedSafeTensors`, use `get`.")


class _FileBackend(SimpleBackend):
    """A file read one tensor at a time: ``_load(path, dtype)`` reads it, converted while reading."""

    def _load(self, path: str, dtype: DType | None = None) -> Any:
        raise NotImplementedError

    def get(self, shape: tuple[int, ...], path: str, init: Any, dtype: DType, device: Device) -> Any:
        self.check(path, shape)
        return _to_device(self._load(path, check_width(dtype)), dtype, device, owned=True)

    def get_unchecked(self, path: str, dtype: DType, device: Device) -> Any:
        self.check(path)
        return _to_device(self._load(path, check_width(dtype)), dtype, device, owned=True)


class NpzBackend(_FileBackend):
    """Arrays from a ``.npz`` archive, read lazily by ``candlejax.io.npy.NpzTensors`` (its checks and
    errors), converted to the builder's dtype while reading."""

    def __init__(self, path: str | os.PathLike | npy.NpzTensors):
        if isinstance(path, npy.NpzTensors):  # already open (``VarBuilder.from_backend(npz, ..)``)
            self.path, self.npz = path.path, path
            return
        self.path = errors.path_arg(path, "from_npz")
        errors.check_file(self.path, "from_npz")
        self.npz = npy.NpzTensors(self.path)

    def describe(self) -> str:
        """The npz file's path, for error messages."""
        return self.path

    def names(self) -> list[str]:
        """The names of the arrays in the npz file."""
        return self.npz.names()

    def contains_tensor(self, path: str) -> bool:
        """Candle's ``SimpleBackend::contains_tensor``: whether the npz file holds ``path``."""
        return path in self.npz

    def _shape(self, path: str) -> tuple[int, ...]:
        return tuple(self.npz.get_shape(path))

    def _load(self, path: str, dtype: DType | None = None) -> Any:
        return self.npz.get(path, dtype=dtype)._a


class PthBackend(_FileBackend):
    """Tensors of a ``torch.save``'d file read one by one through ``candlejax.io.pth.PthTensors``."""

    def __init__(self, tensors: pth.PthTensors):
        self.pth = tensors

    def describe(self) -> str:
        return self.pth.path

    def names(self) -> list[str]:
        return list(self.pth.tensor_infos())

    def contains_tensor(self, path: str) -> bool:
        return path in self.pth

    def _shape(self, path: str) -> tuple[int, ...]:
        return tuple(self.pth.tensor_infos()[path].shape)

    def _load(self, path: str, dtype: DType | None = None) -> Any:
        return self.pth.get(path, dtype=dtype)._a


def _pth_backend(path: str | os.PathLike, key: str | None, op: str) -> PthBackend:
    """A ``torch.save``'d file read one tensor per ``get`` (Candle's ``PthTensors::new(path, key)``)."""
    errors.check_file(path, op)
    tensors = pth.PthTensors(path, key)
    if not tensors.tensor_infos():
        pth.load(path, key)  # raises naming what the file holds when it is not a state dict
    return PthBackend(tensors)


def _as_backend(backend: Any) -> SimpleBackend:
    """``from_backend``'s argument as a backend: a ``SimpleBackend`` (or an object with its ``get``,
    ``get_unchecked`` and ``contains_tensor``) as it is, and the types Candle implements
    ``SimpleBackend`` for: a dict of tensors, a ``VarMap``, ``MmapedSafetensors``, ``NpzTensors``,
    ``PthTensors``."""
    if isinstance(backend, SimpleBackend):
        return backend
    if isinstance(backend, VarMap):
        return VarMapBackend(backend)
    if isinstance(backend, MmapedSafetensors):
        return SafetensorsBackend(backend)
    if isinstance(backend, npy.NpzTensors):
        return NpzBackend(backend)
    if isinstance(backend, pth.PthTensors):
        return PthBackend(backend)
    if isinstance(backend, dict) or (hasattr(backend, "keys") and hasattr(backend, "__getitem__")):
        return DictBackend(_tensor_dict(backend))
    if all(callable(getattr(backend, m, None)) for m in ("get", "get_unchecked", "contains_tensor")):
        return backend
    raise errors.InvalidArgument(
        f"VarBuilder.from_backend takes a SimpleBackend, a dict of tensors, a VarMap, MmapedSafetensors,"
        f" NpzTensors or PthTensors, got a {type(backend).__name__} ({backend!r:.60})")


def _tensor_dict(tensors: Any) -> dict[str, Any]:
    """``from_tensors``' argument as a dict: a mapping as it is, or ``(name, tensor)`` pairs."""
    if isinstance(tensors, dict):
        return tensors
    if hasattr(tensors, "keys") and hasattr(tensors, "__getitem__"):
        return {k: tensors[k] for k in tensors.keys()}
    rule = "from_tensors takes a dict {name: tensor} or (name, tensor) pairs"
    if isinstance(tensors, (str, bytes)) or not hasattr(tensors, "__iter__"):
        raise errors.InvalidArgument(f"{rule}, got a {type(tensors).__name__}")
    out: dict[str, Any] = {}
    for i, item in enumerate(tensors):
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise errors.InvalidArgument(f"{rule}; item {i} is {type(item).__name__} {item!r:.60}")
        if item[0] in out:
            raise errors.InvalidArgument(f"{rule}; the name {item[0]!r} appears twice")
        out[item[0]] = item[1]
    return out


# ------------------------------------------------------------------------------------------------
# VarBuilder
# ------------------------------------------------------------------------------------------------
class VarBuilder:
    """Candle's ``VarBuilder``: a path prefix, a backend, a target dtype and device. Cheap to copy.

    >>> vb = VarBuilder.zeros("f32", None)
    >>> w = vb.pp("layers").pp(3).get((2, 4), "weight")
    >>> w.name, w.shape
    ('layers.3.weight', (2, 4))
    """

    __slots__ = ("_backend", "_device", "_dtype", "_path", "_reads", "_rename")

    def __init__(
        self,
        backend: SimpleBackend,
        dtype: Any = DType.F32,
        device: Any = None,
        path: tuple[str, ...] = (),
        rename: Callable[[str], str] | None = None,
        reads: set[str] | None = None,
    ):
        self._backend = backend
        self._dtype = check_width(to_dtype(dtype))
        self._device = Device.coerce(device)
        self._path = tuple(path)
        self._rename = rename
        self._reads: set[str] = set() if reads is None else reads

    def _with(self, **kw: Any) -> VarBuilder:
        args = {"backend": self._backend, "dtype": self._dtype, "device": self._device, "path": self._path,
                "rename": self._rename, "reads": self._reads}  # fmt: skip
        args.update(kw)
        return VarBuilder(**args)

    def clone(self) -> VarBuilder:
        """Candle's ``vs.clone()``: a builder with the same prefix, backend, dtype, device and read
        record (a VarMap behind it is shared, as Candle's ``Arc``).

        >>> vb = VarBuilder.zeros("f32", None).pp("ln1")
        >>> vb.clone().prefix()
        'ln1'
        """
        return self._with()

    def wrap_backend(self, wrap: Callable[[SimpleBackend], SimpleBackend]) -> VarBuilder:
        """This VarBuilder (same prefix, dtype, device, renames and shared read record) reading through
        ``wrap(backend)``, a backend put in front of the current one: ``cj.distributed.on_mesh`` wraps it
        in one that places every tensor on a mesh as it is read. Candle: a ``SimpleBackend`` that
        delegates to another, passed to ``VarBuilder::from_backend``.

        >>> vb = VarBuilder.zeros("f32", None).pp("enc")
        >>> vb.wrap_backend(lambda b: b).get((2,), "bias").name
        'enc.bias'
        """
        return self._with(backend=wrap(self._backend))

    # --- constructors --------------------------------------------------------------------------
    @staticmethod
    def from_varmap(varmap: VarMap, dtype: Any = DType.F32, device: Any = None) -> VarBuilder:
        """Trainable Vars created in ``varmap`` on first ``get``, initialised from the hints."""
        return VarBuilder(VarMapBackend(varmap), dtype, device)

    @staticmethod
    def from_tensors(tensors: Any, dtype: Any = DType.F32, device: Any = None) -> VarBuilder:
        """Tensors (or arrays) by name: a dict, or ``(name, tensor)`` pairs (Candle's
        ``VarBuilder::from_tensors(HashMap<String, Tensor>, dtype, &dev)``)."""
        return VarBuilder(DictBackend(_tensor_dict(tensors)), dtype, device)

    @staticmethod
    def zeros(dtype: Any = DType.F32, device: Any = None) -> VarBuilder:
        """Candle's ``VarBuilder::zeros(dtype, device)``: every weight is zeros of the requested shape."""
        return VarBuilder(ZerosBackend(), dtype, device)

    @staticmethod
    def from_mmaped_safetensors(
        paths: str | os.PathLike | Iterable[str | os.PathLike], dtype: Any = DType.F32, device: Any = None
    ) -> VarBuilder:
        """One or many safetensors files, or a sharded ``*.index.json`` (a name in two files raises)."""
        return VarBuilder(SafetensorsBackend(paths), dtype, device)

    @staticmethod
    def from_slice_safetensors(data: bytes | bytearray | memoryview, dtype: Any = DType.F32,
                               device: Any = None) -> VarBuilder:  # fmt: skip
        """Safetensors bytes held in memory (Candle's ``from_slice_safetensors(&data, dtype, &dev)``;
        ``from_buffered_safetensors`` is the same here)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise errors.InvalidArgument(f"VarBuilder.from_slice_safetensors / from_buffered_safetensors take the"
                                         f" file's bytes, got a {type(data).__name__}")  # fmt: skip
        st = SliceSafetensors(data, "VarBuilder.from_slice_safetensors")
        return VarBuilder(SafetensorsBackend(st), dtype, device)

    from_buffered_safetensors = from_slice_safetensors

    @staticmethod
    def from_npz(path: str | os.PathLike, dtype: Any = DType.F32, device: Any = None) -> VarBuilder:
        """Candle's ``VarBuilder::from_npz(path, dtype, device)``: weights read from an npz file."""
        return VarBuilder(NpzBackend(path), dtype, device)

    @staticmethod
    def from_pth(path: str | os.PathLike, dtype: Any = DType.F32, device: Any = None) -> VarBuilder:
        """A ``torch.save``'d state dict, read without executing pickled code (``candlejax.io.pth``), one
        tensor per ``get`` through ``PthTensors`` (as Candle's ``from_pth``)."""
        return VarBuilder(_pth_backend(path, None, "from_pth"), dtype, device)

    @staticmethod
    def from_pth_with_state(
        path: str | os.PathLike, dtype: Any = DType.F32, key: str = "state_dict", device: Any = None
    ) -> VarBuilder:
        """The state dict stored under ``key`` (e.g. ``"state_dict"``) of a ``torch.save``'d dict."""
        return VarBuilder(_pth_backend(path, key, "from_pth_with_state"), dtype, device)

    @staticmethod
    def from_backend(backend: Any, dtype: Any = DType.F32, device: Any = None) -> VarBuilder:
        """Candle's ``VarBuilder::from_backend(Box::new(backend), dtype, dev)`` (and ``new_with_args``):
        a ``SimpleBackend``, or one of the types Candle implements it for (a dict of tensors, a
        ``VarMap``, ``MmapedSafetensors``, ``NpzTensors``, ``PthTensors``)."""
        return VarBuilder(_as_backend(backend), dtype, device)

    new_with_args = from_backend

    # --- prefixes ------------------------------------------------------------------------------
    def pp(self, s: Any) -> VarBuilder:
        """A builder for the sub-path ``prefix.s`` (``vb.pp(3)`` -> ``layers.3``)."""
        return self._with(path=(*self._path, str(s)))

    push_prefix = pp

    def prefix(self) -> str:
        """Candle's ``VarBuilder::prefix``: the current path, dot-separated."""
        return ".".join(self._path)

    def root(self) -> VarBuilder:
        """Candle's ``VarBuilder::root``: this builder with an empty prefix."""
        return self._with(path=())

    def set_prefix(self, s: Any) -> VarBuilder:
        """Candle's ``VarBuilder::set_prefix`` (``impl ToString``): the prefix replaced by ``str(s)``."""
        return self._with(path=tuple(p for p in str(s).split(".") if p))

    def path(self, name: str) -> str:
        """The full path of ``name`` under this prefix."""
        if not isinstance(name, str):
            raise errors.ArgumentType(f"VarBuilder: a tensor name is a str (Candle's &str), got {type(name).__name__}"
                                      f" {name!r:.60}; use vb.pp({name!r:.20}) for a numbered sub-path")  # fmt: skip
        return ".".join((*self._path, name)) if self._path else name

    def files(self) -> list[str]:
        """The checkpoint files this builder reads (the safetensors files or shards; ``[]`` for a
        VarMap, tensors in memory and other backends): loaders find ``tokenizer.json`` beside them."""
        backend = getattr(self._backend, "inner", self._backend)  # through a mesh-placing wrapper
        paths = backend.paths if isinstance(backend, SafetensorsBackend) else []
        return [p for p in paths if os.path.isfile(p)]

    # --- settings ------------------------------------------------------------------------------
    def dtype(self) -> DType:
        """Candle's ``VarBuilder::dtype``: the dtype weights are loaded in."""
        return self._dtype

    def device(self) -> Device:
        """Candle's ``VarBuilder::device``: the device weights are loaded on."""
        return self._device

    def to_dtype(self, dtype: Any) -> VarBuilder:
        """Candle's ``VarBuilder::to_dtype`` / ``set_dtype``: this builder loading in ``dtype``."""
        return self._with(dtype=dtype)

    set_dtype = to_dtype

    def set_device(self, device: Any) -> VarBuilder:
        """Candle's ``VarBuilder::set_device``: this builder loading on ``device``."""
        return self._with(device=device)

    def rename_f(self, f: Callable[[str], str]) -> VarBuilder:
        """Look names up as ``f(path)`` in the backend (the Var keeps the model's path as its name).

        Candle's ``vb.rename_f(f)``: chained renames apply the newest first, ``vb.rename_f(f1).rename_f(f2)``
        looks up ``f1(f2(path))``, as each ``Rename`` backend renames before asking the builder it wraps.
        """
        if not callable(f):
            raise errors.InvalidArgument(f"VarBuilder.rename_f takes a function of the name, got a {type(f).__name__}")
        prev = self._rename
        return self._with(rename=f if prev is None else (lambda p: prev(f(p))))

    def rename(self, renamer: Any) -> VarBuilder:
        """Candle's ``vb.rename(renamer)``: a ``Renamer``, an object whose ``rename(name)`` gives the name
        to look up (a plain function works too, as in :meth:`rename_f`)."""
        f = getattr(renamer, "rename", renamer)
        if not callable(f):
            raise errors.InvalidArgument(f"VarBuilder.rename takes a Renamer (an object with a rename(name)"
                                         f" method) or a function, got a {type(renamer).__name__}")  # fmt: skip
        return self.rename_f(f)

    def _lookup(self, name: str) -> tuple[str, str]:
        path = self.path(name)
        return path, (self._rename(path) if self._rename else path)

    # --- getting tensors -----------------------------------------------------------------------
    def contains_tensor(self, name: str) -> bool:
        """Candle's ``VarBuilder::contains_tensor``: whether ``name`` under the prefix exists."""
        return self._backend.contains_tensor(self._lookup(name)[1])

    def get(self, shape: Any, name: str) -> Var:
        """``get_with_hints(shape, name, Init::Const(0))``."""
        return self.get_with_hints_dtype(shape, name, Const(0.0), self._dtype)

    def get_with_hints(self, shape: Any, name: str, init: Any) -> Var:
        """Candle's ``VarBuilder::get_with_hints``: ``name`` of ``shape``, created with ``init`` by a VarMap backend."""
        return self.get_with_hints_dtype(shape, name, init, self._dtype)

    def get_with_hints_dtype(self, shape: Any, name: str, init: Any, dtype: Any) -> Var:
        """The Var ``prefix.name``: checked against ``shape``, in ``dtype`` on the builder's device."""
        if not (isinstance(init, Shard) and isinstance(self._backend, ShardedSafeTensors)):
            check_init(init, "VarBuilder.get_with_hints")
        path, key = self._lookup(name)
        if isinstance(self._backend, VarMapBackend):  # the VarMap's own handle: shared, as in Candle
            self._reads.add(key)
            return self._backend.varmap.get(as_shape(shape), key, init, check_width(to_dtype(dtype)), self._device)
        a = self._backend.get(as_shape(shape), key, init, check_width(to_dtype(dtype)), self._device)
        self._reads.add(key)
        return Var._make(as_array(a), path)  # a user's backend may return a Tensor, as Candle's does

    def get_unchecked(self, name: str) -> Var:
        """Candle's ``VarBuilder::get_unchecked``: ``name`` whatever its shape, in the builder's dtype."""
        return self.get_unchecked_dtype(name, self._dtype)

    def get_unchecked_dtype(self, name: str, dtype: Any) -> Var:
        """Candle's ``VarBuilder::get_unchecked_dtype``: ``name`` whatever its shape, in ``dtype``."""
        path, key = self._lookup(name)
        a = self._backend.get_unchecked(key, check_width(to_dtype(dtype)), self._device)
        self._reads.add(key)
        return Var._make(as_array(a), path)

    # --- read tracking -------------------------------------------------------------------------
    def read_names(self) -> set[str]:
        """The backend names every builder sharing this one's record has read so far."""
        return set(self._reads)

    def mark_used(self, *names: str) -> None:
        """Count backend names as read (tensors a loader knowingly skips, e.g. a tied head)."""
        self._reads.update(names)

    def unused_names(self, ignore: Sequence[str] = ()) -> list[str]:
        """Backend tensors never read, minus those matching a glob in ``ignore`` (sorted)."""
        def skipped(n: str) -> bool:
            return n in self._reads or any(fnmatch.fnmatchcase(n, p) for p in ignore)

        return sorted(n for n in self._backend.names() if not skipped(n))

    def check_all_used(self, strict: bool = True, context: str = "model", ignore: Sequence[str] = ()) -> list[str]:
        """Raise a candlejax error (``strict=False``: warn) when checkpoint tensors were never
        read; returns their names. Loaders call this last so no weight is silently ignored."""
        unused = self.unused_names(ignore)
        if unused:
            shown = ", ".join(unused[:8]) + (f", ... ({len(unused)} in all)" if len(unused) > 8 else "")
            msg = (
                f"{context}: {len(unused)} checkpoint tensor(s) in {self._backend.describe()} were never read: {shown}"
                " (the loader does not implement them; pass strict=False to load anyway)"
            )
            if strict:
                raise errors.Msg(msg)
            errors.warn_at_caller(msg)
        return unused

    def __repr__(self) -> str:
        return (
            f"VarBuilder(prefix={self.prefix()!r}, dtype={self._dtype!r}, device={self._device!r},"
            f" backend={self._backend.describe()})"
        )
