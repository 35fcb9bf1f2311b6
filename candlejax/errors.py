"""The candlejax error hierarchy, mirroring Candle's ``candle_core::Error`` enum.

Every error is a :class:`candlejax.Error` (itself a ``ValueError``, as in Candle's Python binding)
and its message follows Candle's wording, e.g. ``shape mismatch in add, lhs: [2, 3], rhs: [3]``.
Errors are raised by the facade before XLA sees an op, eagerly and under ``jax.jit`` alike.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NoReturn


def fmt_shape(shape: Sequence[int]) -> str:
    """Candle's Debug format for a shape: ``[2, 3]``."""
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def _dt(dtype: Any) -> str:
    """Candle's Debug format for a dtype: ``F32``."""
    name = getattr(dtype, "name", None)
    if name is not None and hasattr(dtype, "as_str"):
        return name
    return str(dtype).upper()


class Error(ValueError):
    """Base class of every candlejax error (``candle::Error``).

    Candle's helpers: ``Error.msg(x)``, ``Error.wrap(x)``, ``Error.debug(x)`` build an error (raise it),
    ``err.context(c)`` and ``err.with_path(p)`` wrap one; :func:`bail` raises a :class:`Msg`, and
    :func:`context` / :func:`with_context` are the ``Context`` trait for a value that may be ``None``
    or an exception.
    """

    # Candle's variants, set on the class below their definitions (``_CANDLE_VARIANTS``); declared here
    # so type checkers see ``raise Error.Msg(...)`` / ``except Error.DimOutOfRange``
    UnexpectedDType: ClassVar[type[UnexpectedDType]]
    DTypeMismatchBinaryOp: ClassVar[type[DTypeMismatchBinaryOp]]
    UnsupportedDTypeForOp: ClassVar[type[UnsupportedDTypeForOp]]
    DimOutOfRange: ClassVar[type[DimOutOfRange]]
    DuplicateDimIndex: ClassVar[type[DuplicateDimIndex]]
    UnexpectedNumberOfDims: ClassVar[type[UnexpectedNumberOfDims]]
    UnexpectedShape: ClassVar[type[UnexpectedShape]]
    ShapeMismatch: ClassVar[type[ShapeMismatch]]
    ShapeMismatchBinaryOp: ClassVar[type[ShapeMismatchBinaryOp]]
    ShapeMismatchCat: ClassVar[type[ShapeMismatchCat]]
    ShapeMismatchSplit: ClassVar[type[ShapeMismatchSplit]]
    OnlySingleDimension: ClassVar[type[OnlySingleDimension]]
    EmptyTensor: ClassVar[type[EmptyTensor]]
    DeviceMismatchBinaryOp: ClassVar[type[DeviceMismatchBinaryOp]]
    NarrowInvalidArgs: ClassVar[type[NarrowInvalidArgs]]
    Conv1dInvalidArgs: ClassVar[type[Conv1dInvalidArgs]]
    InvalidIndex: ClassVar[type[InvalidIndex]]
    BroadcastIncompatibleShapes: ClassVar[type[BroadcastIncompatibleShapes]]
    CannotSetVar: ClassVar[type[CannotSetVar]]
    RequiresContiguous: ClassVar[type[RequiresContiguous]]
    OpRequiresAtLeastOneTensor: ClassVar[type[OpRequiresAtLeastOneTensor]]
    OpRequiresAtLeastTwoTensors: ClassVar[type[OpRequiresAtLeastTwoTensors]]
    BackwardNotSupported: ClassVar[type[BackwardNotSupported]]
    NotCompiledWithCudaSupport: ClassVar[type[NotCompiledWithCudaSupport]]
    NotCompiledWithMetalSupport: ClassVar[type[NotCompiledWithMetalSupport]]
    CannotFindTensor: ClassVar[type[CannotFindTensor]]
    Npy: ClassVar[type[Npy]]
    SafeTensor: ClassVar[type[SafeTensor]]
    UnsupportedSafeTensorDtype: ClassVar[type[UnsupportedSafeTensorDtype]]
    Wrapped: ClassVar[type[Wrapped]]
    Context: ClassVar[type[Context]]
    WrappedContext: ClassVar[type[WrappedContext]]
    WithPath: ClassVar[type[WithPath]]
    UnwrapNone: ClassVar[type[UnwrapNone]]
    Msg: ClassVar[type[Msg]]

    @classmethod
    def msg(cls, err: Any) -> Msg:
        """Candle ``Error::msg(err)``: a :class:`Msg` with ``str(err)``."""
        return Msg(str(err))

    @classmethod
    def wrap(cls, err: Any) -> Wrapped:
        """Candle ``Error::wrap(err)``: a :class:`Wrapped` showing ``str(err)``."""
        return Wrapped(err)

    @classmethod
    def debug(cls, err: Any) -> Msg:
        """Candle ``Error::debug(err)``: a :class:`Msg` with the Debug form (``repr``) of ``err``."""
        return Msg(repr(err))

    def bt(self) -> Error:
        """Candle ``Error::bt()``: Python exceptions carry their traceback already; returns ``self``."""
        return self

    def context(self, context: Any) -> Context:
        """Candle ``Error::context(c)``: this error with ``c`` on the line before it."""
        return Context(self, context)

    def with_path(self, path: Any) -> WithPath:
        """Candle ``Error::with_path(p)``: ``path: "p" {self}``."""
        return WithPath(self, path)


class Msg(Error):
    """A free-text error (Candle's ``bail!``/``Error::Msg``)."""


class UnexpectedDType(Error):
    """Candle ``Error::UnexpectedDType``: a tensor had another dtype than the op expects."""
    def __init__(self, expected: Any, got: Any, msg: str = "unexpected dtype"):
        self.expected, self.got = expected, got
        super().__init__(f"{msg}, expected: {_dt(expected)}, got: {_dt(got)}")


class DTypeMismatchBinaryOp(Error):
    """Candle ``Error::DTypeMismatchBinaryOp``: the two operands of a binary op have different dtypes."""
    def __init__(self, lhs: Any, rhs: Any, op: str):
        self.lhs, self.rhs, self.op = lhs, rhs, op
        super().__init__(
            f"dtype mismatch in {op}, lhs: {_dt(lhs)}, rhs: {_dt(rhs)}"
            " (binary ops never promote; convert one side with .to_dtype(...))"
        )


class UnsupportedDTypeForOp(Error):
    """Candle ``Error::UnsupportedDTypeForOp``: the op is not defined for this dtype."""
    def __init__(self, dtype: Any, op: str, hint: str = ""):
        self.dtype, self.op = dtype, op
        super().__init__(f"unsupported dtype {_dt(dtype)} for op {op}" + (f" ({hint})" if hint else ""))


class DimOutOfRange(Error, IndexError):
    """Candle ``Error::DimOutOfRange``: a dim index is not below the tensor's rank (also an ``IndexError``)."""
    def __init__(self, shape: Sequence[int], dim: int, op: str):
        self.shape, self.dim, self.op = tuple(shape), dim, op
        super().__init__(f"{op}: dimension index {dim} out of range for shape {fmt_shape(shape)}")


class DuplicateDimIndex(Error):
    """Candle ``Error::DuplicateDimIndex``: the same dim is named twice (``permute``, ``sum_keepdim``, ...)."""
    def __init__(self, shape: Sequence[int], dims: Sequence[int], op: str):
        self.shape, self.dims, self.op = tuple(shape), tuple(dims), op
        super().__init__(f"{op}: duplicate dim index {fmt_shape(dims)} for shape {fmt_shape(shape)}")


class UnexpectedNumberOfDims(Error):
    """Candle ``Error::UnexpectedNumberOfDims``: a tensor has another rank than the op expects."""
    def __init__(self, expected: int, got: int, shape: Sequence[int], op: str | None = None):
        self.expected, self.got, self.shape = expected, got, tuple(shape)
        prefix = f"{op}: " if op else ""
        super().__init__(f"{prefix}unexpected rank, expected: {expected}, got: {got} ({fmt_shape(shape)})")


class UnexpectedShape(Error):
    """Candle ``Error::UnexpectedShape``: a tensor or weight has another shape than expected."""
    def __init__(self, msg: str, expected: Sequence[int], got: Sequence[int]):
        self.expected, self.got = tuple(expected), tuple(got)
        super().__init__(f"{msg}, expected: {fmt_shape(expected)}, got: {fmt_shape(got)}")


class ShapeMismatch(Error):
    """Candle ``Error::ShapeMismatch``: a buffer's element count does not fit the requested shape."""
    def __init__(self, buffer_size: int, shape: Sequence[int], hint: str = ""):
        self.buffer_size, self.shape = buffer_size, tuple(shape)
        super().__init__(
            f"Shape mismatch, got buffer of size {buffer_size} which is compatible with shape {fmt_shape(shape)}"
            + (f" ({hint})" if hint else "")
        )


class ShapeMismatchBinaryOp(Error):
    """Candle ``Error::ShapeMismatchBinaryOp``: the operands of a non-broadcasting binary op differ in shape."""
    def __init__(self, lhs: Sequence[int], rhs: Sequence[int], op: str, hint: str = ""):
        self.lhs, self.rhs, self.op = tuple(lhs), tuple(rhs), op
        if not hint and op in _BROADCAST_HINT_OPS:
            hint = f"use broadcast_{op} to broadcast, or make the shapes equal"
        super().__init__(
            f"shape mismatch in {op}, lhs: {fmt_shape(lhs)}, rhs: {fmt_shape(rhs)}" + (f" ({hint})" if hint else "")
        )


_BROADCAST_HINT_OPS = {"add", "sub", "mul", "div", "maximum", "minimum", "pow", "eq", "ne", "lt", "le", "gt", "ge"}


class ShapeMismatchCat(Error):
    """Candle ``Error::ShapeMismatchCat``: ``cat`` inputs differ outside the concatenation dim."""
    def __init__(self, dim: int, first_shape: Sequence[int], n: int, nth_shape: Sequence[int]):
        super().__init__(
            f"shape mismatch in cat for dim {dim}, shape for arg 1: {fmt_shape(first_shape)}"
            f" shape for arg {n}: {fmt_shape(nth_shape)}"
        )


class ShapeMismatchSplit(Error):
    """Candle ``Error::ShapeMismatchSplit``: a dim cannot be divided equally into the requested parts."""
    def __init__(self, shape: Sequence[int], dim: int, n_parts: int):
        super().__init__(f"Cannot divide tensor of shape {fmt_shape(shape)} equally along dim {dim} into {n_parts}")


class OnlySingleDimension(Error):
    """Candle ``Error::OnlySingleDimension``: the op takes one dim, not several."""
    def __init__(self, op: str):
        super().__init__(f"{op} can only be performed on a single dimension")


class EmptyTensor(Error):
    """Candle ``Error::EmptyTensor``: the op needs at least one element (e.g. ``max`` of an empty dim)."""
    def __init__(self, op: str):
        super().__init__(f"empty tensor for {op}")


def _loc(device: Any) -> str:
    """Candle's Debug form of a device's location (``Cpu``, ``Cuda { gpu_id: 0 }``); a second host CPU
    device keeps its ordinal (``Cpu(1)``), which Candle's single ``Cpu`` location cannot show."""
    if getattr(device, "kind", "cpu") != "cpu" and hasattr(device, "location"):
        return repr(device.location())
    return repr(device)


class DeviceMismatchBinaryOp(Error):
    """Candle ``Error::DeviceMismatchBinaryOp``: the operands of a binary op live on different devices."""
    def __init__(self, lhs: Any, rhs: Any, op: str):
        self.lhs, self.rhs, self.op = lhs, rhs, op
        super().__init__(
            f"device mismatch in {op}, lhs: {_loc(lhs)}, rhs: {_loc(rhs)} (move one side with .to_device(...))"
        )


class NarrowInvalidArgs(Error, IndexError):
    """Candle ``Error::NarrowInvalidArgs``: ``narrow``'s ``start``/``len`` leave the dim (also an ``IndexError``)."""
    def __init__(self, shape: Sequence[int], dim: int, start: int, len: int, msg: str):
        self.shape, self.dim, self.start, self.len = tuple(shape), dim, start, len
        super().__init__(
            f"narrow invalid args {msg}: {fmt_shape(shape)}, dim: {dim}, start: {start}, len:{len}"
        )


class Conv1dInvalidArgs(Error):
    """Candle ``Error::Conv1dInvalidArgs``: a convolution's input, kernel, padding or stride do not fit."""
    def __init__(self, msg: str, inp: Sequence[int], k: Sequence[int], padding: Any, stride: Any, op: str = "conv1d"):
        super().__init__(
            f"{op} invalid args {msg}: inp: {fmt_shape(inp)}, k: {fmt_shape(k)}, pad: {padding}, stride: {stride}"
        )


class InvalidIndex(Error, IndexError):
    """Candle ``Error::InvalidIndex``: an index is out of range for the dim size (also an ``IndexError``)."""
    def __init__(self, op: str, index: int, size: int, hint: str = ""):
        self.op, self.index, self.size = op, index, size
        super().__init__(f"{op} invalid index {index} with dim size {size}" + (f" ({hint})" if hint else ""))


class BroadcastIncompatibleShapes(Error):
    """Candle ``Error::BroadcastIncompatibleShapes``: a shape cannot be broadcast to the target shape."""
    def __init__(self, src_shape: Sequence[int], dst_shape: Sequence[int], op: str | None = None):
        self.src_shape, self.dst_shape = tuple(src_shape), tuple(dst_shape)
        prefix = f"{op}: " if op else ""
        super().__init__(f"{prefix}cannot broadcast {fmt_shape(src_shape)} to {fmt_shape(dst_shape)}")


class CannotSetVar(Error):
    """Candle ``Error::CannotSetVar``: a value cannot be assigned to a variable."""
    def __init__(self, msg: str):
        super().__init__(f"cannot set variable {msg}")


class RequiresContiguous(Error):
    """Candle ``Error::RequiresContiguous``: the op needs a contiguous tensor."""
    def __init__(self, op: str):
        super().__init__(f"{op} only supports contiguous tensors")


class OpRequiresAtLeastOneTensor(Error):
    """Candle ``Error::OpRequiresAtLeastOneTensor``: ``cat``/``stack`` and friends called with no tensor."""
    def __init__(self, op: str):
        super().__init__(f"{op} expects at least one tensor")


class OpRequiresAtLeastTwoTensors(Error):
    """Candle ``Error::OpRequiresAtLeastTwoTensors``: the op needs two or more tensors."""
    def __init__(self, op: str):
        super().__init__(f"{op} expects at least two tensors")


class BackwardNotSupported(Error):
    """Candle ``Error::BackwardNotSupported``: the op has no gradient."""
    def __init__(self, op: str):
        super().__init__(f"backward is not supported for {op}")


class NotCompiledWithCudaSupport(Error):
    """Candle ``Error::NotCompiledWithCudaSupport``: a CUDA device was asked for but JAX sees none."""
    def __init__(self, detail: str = ""):
        super().__init__(
            "the candle crate has not been built with cuda support"
            + (f" ({detail})" if detail else " (no CUDA device is visible to JAX; install jax[cuda12] on a GPU host)")
        )


class NotCompiledWithMetalSupport(Error):
    """Candle ``Error::NotCompiledWithMetalSupport``: always raised for Metal (candlejax runs on XLA)."""
    def __init__(self) -> None:
        super().__init__("the candle crate has not been built with metal support (candlejax runs on XLA: CPU, CUDA)")


class CannotFindTensor(Error, KeyError):
    """Candle ``Error::CannotFindTensor``: a weight name is missing from a file or VarBuilder (also a ``KeyError``)."""
    def __init__(self, path: str, detail: str = ""):
        self.path = path
        super().__init__(f"cannot find tensor {path}" + (f" ({detail})" if detail else ""))

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class UnsupportedSafeTensorDtype(Error):
    """Candle ``Error::UnsupportedSafeTensorDtype``: a safetensors dtype with no candlejax DType."""
    def __init__(self, dtype: str, where: str = ""):
        super().__init__(f"unsupported safetensor dtype {dtype}" + (f" ({where})" if where else ""))


class SafeTensor(Error):
    """A malformed or unreadable safetensors file."""


class FileAccess(Error, OSError):
    """A path that cannot be read as a file: also an ``OSError``, so ``except OSError`` still works."""

    def __init__(self, op: str, path: Any, what: str, hint: str = "", *, message: str = ""):
        self.op, self.filename = op, os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
        self.errno = {"no such file": errno.ENOENT, "is a directory": errno.EISDIR,
                      "permission denied": errno.EACCES}.get(what)  # fmt: skip
        self.strerror = what
        super().__init__(message or f"{op}: {what}: {self.filename!r}" + (f" ({hint})" if hint else ""))

    def __str__(self) -> str:  # OSError would otherwise format "[Errno 2] ..."
        return str(self.args[0])


class NoSuchFile(FileAccess, FileNotFoundError):
    """A path that does not exist (also a ``FileNotFoundError``)."""

    def __init__(self, op: str, path: Any, hint: str = "", *, message: str = ""):
        super().__init__(op, path, "no such file", hint, message=message)


class IsADirectory(FileAccess, IsADirectoryError):
    """A directory where a file was expected (also an ``IsADirectoryError``)."""

    def __init__(self, op: str, path: Any, hint: str = "", *, message: str = ""):
        super().__init__(op, path, "is a directory", hint, message=message)


class NoPermission(FileAccess, PermissionError):
    """A path the process may not read or write (also a ``PermissionError``)."""

    def __init__(self, op: str, path: Any, hint: str = "", *, message: str = ""):
        super().__init__(op, path, "permission denied", hint, message=message)


def os_error(e: OSError, op: str, path: Any, message: str = "") -> FileAccess:
    """``e`` as a candlejax :class:`FileAccess` naming ``op`` and ``path``, keeping its ``OSError``
    subclass (``NoSuchFile``, ``IsADirectory``, ``NoPermission``) and its ``errno``."""
    cls = {errno.ENOENT: NoSuchFile, errno.EISDIR: IsADirectory, errno.EACCES: NoPermission,
           errno.EPERM: NoPermission}.get(e.errno)  # fmt: skip
    what = e.strerror or str(e)
    out = cls(op, path, message=message) if cls else FileAccess(op, path, what, message=message)
    out.errno, out.strerror = e.errno, what
    return out


def path_arg(path: Any, op: str, what: str = "path") -> str:
    """``os.fspath(path)``, or ``ArgumentType`` (an ``InvalidArgument``, also a ``TypeError``) naming
    ``op`` when ``path`` is not a str or ``os.PathLike`` (``os.fspath`` / ``Path`` raise a bare ``TypeError``)."""
    if not isinstance(path, str | os.PathLike):
        raise ArgumentType(f"{op}: {what} must be a str or os.PathLike, got {path!r:.60} ({type(path).__name__})")
    return os.fspath(path)


def check_file(path: Any, op: str, dir_hint: str = "") -> None:
    """Raise ``NoSuchFile`` / ``IsADirectory`` / ``NoPermission`` naming ``op`` unless ``path`` is an
    existing file this process may read (``ArgumentType`` when it is not a path at all)."""
    path = path_arg(path, op)
    if os.path.isdir(path):
        raise IsADirectory(op, path, dir_hint)
    if not os.path.exists(path):
        raise NoSuchFile(op, path)
    if not os.access(path, os.R_OK):
        raise NoPermission(op, path)


class Npy(Error):
    """A malformed npy/npz file or an unsupported npy dtype."""

    def __init__(self, msg: str):
        super().__init__(f"npy/npz error {msg}")


class Gguf(Error):
    """A malformed or unsupported GGUF file."""


class GgufNoSuchFile(NoSuchFile, Gguf):
    """A GGUF path that does not exist: a ``NoSuchFile`` (``FileNotFoundError``) and an ``errors.Gguf``."""


class GgufIsADirectory(IsADirectory, Gguf):
    """A folder given as a GGUF file: an ``IsADirectory`` (``IsADirectoryError``) and an ``errors.Gguf``."""


class GgufNoPermission(NoPermission, Gguf):
    """A GGUF file this process may not read: a ``NoPermission`` (``PermissionError``) and an ``errors.Gguf``."""


class Ct2(Error):
    """A malformed or unsupported CTranslate2 model file."""


class Ct2NoSuchFile(NoSuchFile, Ct2):
    """A CTranslate2 ``model.bin`` that does not exist: a ``NoSuchFile`` (``FileNotFoundError``) and an
    ``errors.Ct2``."""


class Audio(Error):
    """Unreadable or invalid audio (empty file, not a sound file, no samples, NaN/inf samples)."""


class AudioNoSuchFile(NoSuchFile, Audio):
    """An audio path that does not exist: a ``NoSuchFile`` (``FileNotFoundError``) and an ``errors.Audio``."""


class AudioIsADirectory(IsADirectory, Audio):
    """A folder given as an audio file: an ``IsADirectory`` (``IsADirectoryError``) and an ``errors.Audio``."""


class AudioNoPermission(NoPermission, Audio):
    """An audio file this process may not read: a ``NoPermission`` (``PermissionError``) and an ``errors.Audio``."""


class ImageError(Error):
    """An image that cannot be read or has the wrong layout (channels, dtype, size)."""


class ImageNoSuchFile(NoSuchFile, ImageError):
    """An image path that does not exist: a ``NoSuchFile`` (``FileNotFoundError``) and an ``ImageError``."""


class ImageIsADirectory(IsADirectory, ImageError):
    """A folder given as an image file: an ``IsADirectory`` (``IsADirectoryError``) and an ``ImageError``."""


class Pth(Error):
    """A malformed or unreadable PyTorch checkpoint (``torch.save`` zip file)."""


class PthUnsafeGlobal(Pth):
    """A PyTorch checkpoint's pickle names a global that a weights-only read does not allow."""

    def __init__(self, path: str, global_name: str, objects: bool = False):
        self.path, self.global_name = path, global_name
        hint = (
            "allow its module with load_pickle(path, allow_objects=(...)) to read it as an inert record"
            if objects
            else "only tensors, storages and plain containers are read; "
            "candlejax.io.pth.load_pickle reads whole-module checkpoints as inert records"
        )
        super().__init__(
            f"{path}: the pickle refers to {global_name}, which is not allowed ({hint}); nothing was executed"
        )


class TorchName(Error, AttributeError):
    """A PyTorch method name Candle spells differently; the message names the Candle spelling."""

    def __init__(self, name: str, hint: str):
        self.name = name
        super().__init__(f"Tensor has no PyTorch-style .{name}: {hint}")


class InPlaceStatement(Error):
    """A Candle in-place call (``slice_set``, ``scatter_set``, ...) written as a statement: candlejax
    returns the new tensor instead of mutating, so the statement would change nothing."""

    def __init__(self, call: str, rebind: str):
        self.call = call
        super().__init__(
            f"{call} returns the new tensor and leaves this one unchanged (candlejax tensors are immutable;"
            f" Candle writes in place): rebind the result, {rebind}"
        )


class ItemAssignment(Error, TypeError):
    """``t[...] = v`` (PyTorch's in-place item assignment): tensors are immutable; the message names
    the functional spellings."""

    def __init__(self) -> None:
        super().__init__(
            "Tensor does not support item assignment (candlejax tensors are immutable XLA arrays): write"
            " t = t.slice_assign(ranges, src) (Candle), t = mask.where_cond(v, t) or t = t.masked_fill(mask, v)"
        )


class CandleInPlaceName(Error, AttributeError):
    """A Candle in-place Tensor method (``zero_set``, ``const_set``, ``inplace_op1``, ...); the message
    names the candlejax spelling."""

    def __init__(self, name: str, hint: str):
        self.name = name
        super().__init__(f"Tensor has no in-place .{name} (candlejax tensors are immutable): {hint}")


class CustomOpName(Error, AttributeError):
    """Candle's custom-op calls (``apply_op1``, ``apply_op2_no_bwd``, ...): a ``CustomOp1/2/3`` is a CPU
    or GPU kernel over storages; in candlejax the op is a JAX function, which the message names."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(
            f"Tensor has no .{name} (Candle's CustomOp): write the op as a JAX function of the arrays and wrap"
            " the result, Tensor.from_jax(f(t.jax)); give it a backward with jax.custom_vjp (jax.lax.stop_gradient"
            " for the _no_bwd forms)"
        )


class CandleInternalName(Error, AttributeError):
    """Candle's storage, op-graph and id accessors (``id``, ``track_op``, ``from_storage``,
    ``storage_and_layout``, ``strided_index``, ``strided_blocks``, ``sorted_nodes``): an XLA array has
    no storage, strides or op graph; the message names what to use instead."""

    def __init__(self, name: str, hint: str):
        self.name = name
        super().__init__(f"Tensor has no .{name} (Candle's storage / op-graph internals): {hint}")


class NoBackward(TorchName, CandleInternalName):
    """``t.backward()``: Candle's ``loss.backward() -> GradStore`` and PyTorch's ``loss.backward()`` need an op
    graph that eager tensors do not record; the message names ``cj.grad`` / ``cj.value_and_grad`` and
    ``opt.backward_step``."""

    def __init__(self, hint: str):
        self.name = "backward"
        Error.__init__(self, f"Tensor has no .backward (Candle's loss.backward() -> GradStore, PyTorch's"
                             f" loss.backward()): {hint}")  # fmt: skip


class OutOfMemory(Error, MemoryError):
    """The device could not allocate an op's result (XLA's ``RESOURCE_EXHAUSTED``)."""

    def __init__(self, op: str, detail: str):
        self.op = op
        super().__init__(
            f"out of memory in {op}: {detail} (use smaller shapes or batches, a lower-precision dtype,"
            " or free tensors you no longer need)"
        )


def out_of_memory(op: str, e: BaseException) -> BaseException:
    """``OutOfMemory`` for a JAX ``RESOURCE_EXHAUSTED`` runtime error or a host (numpy) ``MemoryError``;
    ``e`` itself otherwise."""
    if isinstance(e, Error):
        return e
    if isinstance(e, MemoryError):
        return OutOfMemory(op, str(e) or "the host could not allocate the array")
    msg = str(e)
    if "RESOURCE_EXHAUSTED" in msg or "Out of memory" in msg:
        return OutOfMemory(op, msg.split("\n", 1)[0].replace("RESOURCE_EXHAUSTED: ", ""))
    return e


def _debug_str(s: Any) -> str:
    """Rust's Debug form of a string or path: double-quoted, with ``\\`` and ``"`` escaped."""
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Wrapped(Error):
    """Candle ``Error::Wrapped``: any value shown by its ``str`` (``Error.wrap(x)``)."""

    def __init__(self, wrapped: Any):
        self.wrapped = self.inner = wrapped
        super().__init__(str(wrapped))
        if isinstance(wrapped, BaseException):
            self.__cause__ = wrapped


class Context(Error):
    """Candle ``Error::Context``: ``{context}\\n{inner}`` (``err.context(c)``)."""

    def __init__(self, inner: BaseException, context: Any):
        self.inner, self.context_value = inner, context
        super().__init__(f"{context}\n{inner}")
        self.__cause__ = inner


class WrappedContext(Error):
    """Candle ``Error::WrappedContext``: a foreign error with context, ``{wrapped:?}\\n{context:?}``
    (the ``Context`` trait on a ``Result``)."""

    def __init__(self, wrapped: BaseException, context: Any):
        self.wrapped, self.context_value = wrapped, str(context)
        shown = str(wrapped) if isinstance(wrapped, Error) else repr(wrapped)  # Candle's Debug is its Display
        super().__init__(f"{shown}\n{_debug_str(context)}")


class WithPath(Error):
    """Candle ``Error::WithPath``: ``path: "p" {inner}`` (``err.with_path(p)``)."""

    def __init__(self, inner: BaseException, path: Any):
        self.inner, self.path = inner, os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
        super().__init__(f"path: {_debug_str(self.path)} {inner}")
        self.__cause__ = inner


class UnwrapNone(Error):
    """Candle ``Error::UnwrapNone``: ``unwrap none``."""

    def __init__(self) -> None:
        super().__init__("unwrap none")


def bail(fmt: Any, *args: Any, **kwargs: Any) -> NoReturn:
    """Candle's ``bail!(fmt, args..)``: raise a :class:`Msg`; ``{}`` placeholders are filled with
    ``str.format`` when arguments are given (a plain message is kept as written)."""
    raise Msg(str(fmt).format(*args, **kwargs) if args or kwargs else str(fmt))


def context(value: Any, context: Any) -> Any:
    """Candle's ``Context::context`` for an ``Option`` / ``Result``: ``value`` itself, unless it is
    ``None`` (raises ``Msg(context)``) or an exception (raises :class:`WrappedContext`, chained)."""
    if value is None:
        raise Msg(str(context))
    if isinstance(value, BaseException):
        raise WrappedContext(value, context) from value
    return value


def with_context(value: Any, f: Callable[[], Any]) -> Any:
    """Candle's ``Context::with_context``: :func:`context` with the context computed by ``f()`` only on
    failure; ``None`` raises :class:`Context` around :class:`UnwrapNone`."""
    if value is None:
        raise Context(UnwrapNone(), f())
    if isinstance(value, BaseException):
        raise WrappedContext(value, f()) from value
    return value


class TracingError(Error):
    """An eager-only operation (host read, stateful RNG) was used inside ``jax.jit``/``grad``/``vmap``."""


# --- typed errors for the most common free-text cases (subclasses of Msg: ``except Msg`` still works)
class InvalidArgument(Msg):
    """A value that a function cannot take (a negative learning rate, an unknown option, ...)."""


class DonatedVar(Msg):
    """A Var, model or optimizer state whose buffers were donated to an earlier optimizer step."""

    def __init__(self, name: str, what: str = "Var"):
        self.name = name
        super().__init__(
            f"{what}{f' {name!r}' if name else ''} was donated to a functional optimizer step and no longer holds"
            " a value: keep using"
            " what the step returned (model, state, loss = opt.backward_step(loss_fn, model, state, x, y)),"
            " build the optimizer with donate=False to keep the old model usable, or train in place with an"
            " optimizer bound to the Vars (opt = AdamW(varmap.all_vars(), ParamsAdamW(lr=...));"
            " loss = opt.backward_step(loss_fn, model, x, y))"
        )


class InvalidShape(Msg):
    """A shape specification that cannot be used (negative dims, two holes, an impossible reshape)."""


class NegativeDim(InvalidShape, OverflowError):
    """A negative dim in a shape: a ``ValueError`` and, as candle-pyo3's conversion to ``usize`` raises,
    an ``OverflowError``."""


class DimType(Msg, TypeError):
    """A shape dim that is not an integer (``reshape(1, "foo")``): also a ``TypeError``, as in
    candle-pyo3 and PyTorch."""


class NotAnInteger(InvalidArgument, TypeError):
    """A position, length or count that is not an integer (``narrow(0, 0.9, 1)``, ``roll("1", 0)``,
    ``eye(True)``): also a ``TypeError``, as candle-pyo3's ``'float' object cannot be interpreted as an
    integer``. Floats are never truncated and bools are not counts."""

    def __init__(self, op: str, what: str, value: Any, hint: str = "", shown: str = ""):
        self.op, self.what, self.value = op, what, value
        super().__init__(
            f"{op}: {what} must be an int, got {shown or f'{value!r} ({type(value).__name__})'}"
            + (f"; {hint}" if hint else "; an int, a numpy integer or a 0-d integer array (floats are not truncated)")
        )


class ArgumentType(InvalidArgument, TypeError):
    """A value of a type an argument cannot take (``Tensor(None)``, ``t.affine("2", 0)``,
    ``Tensor.from_jax("x")``): also a ``TypeError``, as candle-pyo3's ``incorrect type`` errors."""


class InvalidDevice(Msg):
    """A device name or ordinal that does not exist here."""


class DeletedBuffer(Msg, RuntimeError):
    """A Tensor whose buffer was donated to an optimizer step or a jitted function (a ``Var.as_tensor()``);
    also a ``RuntimeError``, as JAX's own error for a deleted array."""

    def __init__(self, op: str = "", detail: str | None = None):
        super().__init__(
            (f"{op}: " if op else "") + (detail or "a Tensor's buffer was donated to an optimizer step (or to a jitted"
            " function's donate_argnums) and no longer exists (Var.as_tensor() and arrays taken from a Var share"
            " its buffer): use the Var itself, which follows the updates, or the model the step returned, or keep"
            " a copy taken before the step (t.copy())")
        )


class OptimizerUsage(Msg):
    """An optimizer called the wrong way (a loss value instead of a loss function, Vars it does not own, ...)."""


class VarMapError(Msg):
    """A VarMap lookup, set or load that cannot be done (unknown name, wrong shape, file without the tensor)."""


class StateDictMismatch(Msg):
    """A checkpoint whose tensor names do not match the module it is loaded into."""


class TransformedModuleAttribute(Msg):
    """A Module attribute holding a JAX-transformed layer (``jax.vmap(layer)``), whose Vars would be hidden."""


class DeviceMismatch(DeviceMismatchBinaryOp):
    """Arrays of one computation (a training step, a batch and a model) on different devices."""


class MissingDependency(Msg, ImportError):
    """A feature whose optional package is not installed (``tokenizers``, ``soundfile``, ...); also an
    ``ImportError``. The message names the package and the ``pip install`` line that provides it."""


class ModuleReload(Msg, ImportError):
    """``importlib.reload`` / IPython's ``%autoreload`` of a module defining candlejax's core classes
    (Tensor, Var, Module, DType, QTensor): refused, leaving the loaded module as it was; also an ``ImportError``."""


class ConstantVarWarning(UserWarning):
    """A compiled function reads a Module or Var from a closure or a global: its weights are compiled in
    as constants and later updates (an optimizer step, ``Var.set``) are not seen; pass it as an argument."""


class LostUpdateWarning(UserWarning):
    """An in-place update (BatchNorm's running statistics in ``forward_t(x, True)``) made under a JAX transform
    that does not keep it (``jax.jit``, ``jax.vmap``, a closure): the new value is dropped when the trace ends.
    ``cj.jit`` / ``cj.value_and_grad`` / ``opt.backward_step`` keep it; or return the layer from ``forward_train``."""


class RecompileWarning(UserWarning):
    """A function is compiled again and again (a new closure per call): define it once, outside the loop."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_at_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside candlejax (the user's line, however deep
    the call that warns), as Python 3.12's ``skip_file_prefixes``."""
    import sys
    import warnings

    internal = _internal_dirs()
    frame, level = sys._getframe(), 1
    while frame is not None and frame.f_code.co_filename.startswith(internal):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


@functools.cache
def _internal_dirs() -> tuple[str, ...]:
    """candlejax's folder and candlejax.models' (a checkout installs the top-level ``models/`` there)."""
    import importlib.util

    spec = importlib.util.find_spec("candlejax.models")
    models = [os.path.abspath(p) + os.sep for p in (spec.submodule_search_locations or [])] if spec else []
    return (_PACKAGE_DIR, *models)


#: Candle's ``Error`` variants defined here, also reachable as ``Error.<Variant>`` as Rust spells them
#: (``candle::Error::Msg(..)``, ``candle::Error::DimOutOfRange { .. }``): ``raise Error.Msg("...")``,
#: ``except Error.DimOutOfRange``.
_CANDLE_VARIANTS = (
    "UnexpectedDType", "DTypeMismatchBinaryOp", "UnsupportedDTypeForOp", "DimOutOfRange", "DuplicateDimIndex",
    "UnexpectedNumberOfDims", "UnexpectedShape", "ShapeMismatch", "ShapeMismatchBinaryOp", "ShapeMismatchCat",
    "ShapeMismatchSplit", "OnlySingleDimension", "EmptyTensor", "DeviceMismatchBinaryOp", "NarrowInvalidArgs",
    "Conv1dInvalidArgs", "InvalidIndex", "BroadcastIncompatibleShapes", "CannotSetVar",
    "RequiresContiguous", "OpRequiresAtLeastOneTensor", "OpRequiresAtLeastTwoTensors", "BackwardNotSupported",
    "NotCompiledWithCudaSupport", "NotCompiledWithMetalSupport", "CannotFindTensor", "Npy", "SafeTensor",
    "UnsupportedSafeTensorDtype", "Wrapped", "Context", "WrappedContext", "WithPath", "UnwrapNone", "Msg",
)  # fmt: skip
for _name in _CANDLE_VARIANTS:
    setattr(Error, _name, globals()[_name])
del _name

__all__ = [name for name, obj in list(globals().items()) if isinstance(obj, type) and issubclass(obj, Error)] + [
    "ConstantVarWarning",
    "RecompileWarning",
    "bail",
    "check_file",
    "context",
    "fmt_shape",
    "os_error",
    "out_of_memory",
    "path_arg",
    "warn_at_caller",
    "with_context",
]
