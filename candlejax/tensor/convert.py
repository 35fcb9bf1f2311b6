"""Leaving or changing representation: to_dtype, to_device, to_vec*, numpy/torch/DLPack, repr.

requires: candlejax.tensor._core (TensorBase, wrap), candlejax._dispatch.op
provides: ConvertMixin, print options (``set_print_options``, ``set_print_options_default``,
``set_print_options_short``, ``set_print_options_full``, ``print_options``) as in
``candle::display``

Host conversions (``to_vec*``, ``values``, ``item``, ``numpy``, ``to_torch``) need concrete values:
inside ``jax.jit`` / ``grad`` / ``vmap`` they raise :class:`candlejax.errors.TracingError`, while
``repr`` shows the shape and dtype of a traced tensor without its values.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from candlejax import errors
from candlejax._dispatch import op
from candlejax._jax_private import read_to_host
from candlejax.device import Device
from candlejax.dtype import DType, check_width, f8_saturate, to_dtype
from candlejax.optional import require
from candlejax.tensor._core import TensorBase, _live, wrap

if TYPE_CHECKING:  # set at runtime (get_type_hints): Tensor by candlejax.tensor, QTensor by candlejax
    import torch

    from candlejax.quantized import QTensor
    from candlejax.tensor import Tensor

    _TorchTensor = torch.Tensor
else:
    _TorchTensor = Any  # torch is optional: to_torch's runtime hint is Any, type checkers see torch.Tensor

_Tracer = jax.core.Tracer
_CPU = Device.Cpu


# --- print options (candle::display) ------------------------------------------------------------
@dataclass(frozen=True)
class PrinterOptions:
    """``candle::display::PrinterOptions``: how ``str(t)`` / ``repr(t)`` render values."""

    precision: int = 4
    threshold: int = 1000
    edge_items: int = 3
    line_width: int = 80
    sci_mode: bool | None = None


_PO = [PrinterOptions()]


def print_options() -> PrinterOptions:
    """The current print options."""
    return _PO[0]


def set_print_options(
    precision: int | PrinterOptions | None = None,
    threshold: int | None = None,
    edge_items: int | None = None,
    line_width: int | None = None,
    sci_mode: bool | str | None = "keep",
) -> None:
    """``candle::display::set_print_options``: change some or all print options, or, given a
    ``PrinterOptions`` (Candle's ``set_print_options(PrinterOptions { .. })``), use it."""
    if isinstance(precision, PrinterOptions):
        _PO[0] = precision
        return
    po = _PO[0]
    kw: dict[str, Any] = {}
    for name, v in (("precision", precision), ("threshold", threshold), ("edge_items", edge_items),
                    ("line_width", line_width)):  # fmt: skip
        if v is not None:
            kw[name] = _print_count(v, name)
    if sci_mode != "keep":
        kw["sci_mode"] = sci_mode
    _PO[0] = replace(po, **kw)


def _print_count(v: Any, name: str) -> int:
    """A print option's value: Candle's ``usize``, so an int >= 0 (``ArgumentType`` / ``InvalidArgument``)."""
    if isinstance(v, bool) or not hasattr(type(v), "__index__"):
        raise errors.ArgumentType(f"set_print_options: {name} must be an int, got {v!r:.40} ({type(v).__name__})")
    if int(v) < 0:
        raise errors.InvalidArgument(f"set_print_options: {name} must be >= 0, got {int(v)}")
    return int(v)


def set_line_width(line_width: int) -> None:
    """``candle::display::set_line_width``."""
    set_print_options(line_width=line_width)


def set_precision(precision: int) -> None:
    """``candle::display::set_precision``: digits after the point."""
    set_print_options(precision=precision)


def set_edge_items(edge_items: int) -> None:
    """``candle::display::set_edge_items``: values shown at each end of a summarised dim."""
    set_print_options(edge_items=edge_items)


def set_threshold(threshold: int) -> None:
    """``candle::display::set_threshold``: summarise tensors with more elements than this."""
    set_print_options(threshold=threshold)


def set_sci_mode(sci_mode: bool | None) -> None:
    """``candle::display::set_sci_mode``: ``True`` / ``False`` forces scientific / fixed notation for
    floats, ``None`` picks per tensor."""
    set_print_options(sci_mode=sci_mode)


def set_print_options_default() -> None:
    """precision 4, threshold 1000, edge items 3, line width 80."""
    _PO[0] = PrinterOptions()


def set_print_options_short() -> None:
    """precision 2, edge items 2."""
    _PO[0] = PrinterOptions(precision=2, edge_items=2)


def set_print_options_full() -> None:
    """Never summarise."""
    _PO[0] = PrinterOptions(threshold=2**63 - 1)


# --- Candle's Display ---------------------------------------------------------------------------
def _nonfinite(v: float) -> str:
    return "NaN" if v != v else ("inf" if v > 0 else "-inf")


class _FloatFmt:
    """candle's FloatFormatter: int mode (``1.``), fixed (``1.5000``) or sci (``1.5000e-5``)."""

    __slots__ = ("int_mode", "precision", "sci_mode")

    def __init__(self, vals: np.ndarray, po: PrinterOptions):
        self.int_mode, self.sci_mode, self.precision = True, False, po.precision
        v = vals[np.isfinite(vals) & (vals != 0)]
        if v.size:
            m = np.abs(v)
            mx, mn = m.max(), m.min()
            t = vals.dtype.type
            self.int_mode = bool(np.all(np.ceil(v) == v))
            with np.errstate(over="ignore"):  # 1e8 is inf in f16, as in Candle's NumCast
                self.sci_mode = bool(mx / mn > t(1000.0) or mx > t(1e8) or mn < t(1e-4))
        if po.sci_mode is not None:
            self.sci_mode = po.sci_mode

    def __call__(self, v: float, w: int) -> str:
        if self.sci_mode:
            if math.isfinite(v):
                mant, _, ex = f"{v:.{self.precision}e}".partition("e")
                s = f"{mant}e{int(ex)}"
            else:
                s = _nonfinite(v)
            return s.rjust(w)
        if self.int_mode:
            if math.isfinite(v):
                return f"{v:.0f}".rjust(w - 1) + "."
            return _nonfinite(v).rjust(w)
        if math.isfinite(v):
            return f"{v:.{self.precision}f}".rjust(w)
        return _nonfinite(v).rjust(w)


def _int_fmt(v: int, w: int) -> str:
    return str(v).rjust(w)


_GATHER_ON_DEVICE_BYTES = 1 << 26


def _summarized(a: Any, edge: int) -> Any:
    """The values that a summarised display shows (candle's ``get_summarized_data``): every dim longer than
    ``2 * edge`` cut to its first and last ``edge`` entries, in one gather (numpy or on a JAX array's device)."""
    if a.ndim == 0 or all(n <= 2 * edge for n in a.shape):
        return a
    idx = [np.r_[0:edge, n - edge : n] if n > 2 * edge else np.arange(n) for n in a.shape]
    return a[np.ix_(*idx)]


def _fmt_tensor(
    arr: Any, dims: tuple[int, ...], indent: int, w: int, summarize: bool, po: PrinterOptions, fmt: Any, out: list[str]
) -> None:
    """candle's ``fmt_tensor``: nested brackets, ``...`` when summarised, wrapped 1-D rows. ``arr`` is the
    (summarised) values of a tensor of shape ``dims``: a cut dim holds its first and last ``edge`` entries."""
    edge = po.edge_items
    out.append("[")
    if arr.ndim == 0:
        out.append(fmt(arr.item(), w))
    elif arr.ndim == 1:
        if summarize and dims[0] > 2 * edge:
            for v in arr[:edge].tolist():
                out.append(fmt(v, w))
                out.append(", ")
            out.append("...")
            for v in arr[edge:].tolist():
                out.append(", ")
                out.append(fmt(v, w))
        else:
            per_line = max(1, po.line_width // (w + 2))
            nl = "\n" + " " * indent
            for i, v in enumerate(arr.tolist()):
                if i > 0:
                    out.append(("," + nl) if i % per_line == 0 else ", ")
                out.append(fmt(v, w))
    else:
        n = arr.shape[0]
        nl = ",\n" + " " * indent
        if summarize and dims[0] > 2 * edge:
            for i in range(edge):
                _fmt_tensor(arr[i], dims[1:], indent + 1, w, summarize, po, fmt, out)
                out.append(nl)
            out.append("...\n" + " " * indent)
            for i in range(edge, n):
                _fmt_tensor(arr[i], dims[1:], indent + 1, w, summarize, po, fmt, out)
                if i + 1 != n:
                    out.append(nl)
        else:
            for i in range(n):
                _fmt_tensor(arr[i], dims[1:], indent + 1, w, summarize, po, fmt, out)
                if i + 1 != n:
                    out.append(nl)
    out.append("]")


def _footer(shape: tuple[int, ...], dtype: DType, dev: str = "") -> str:
    return f"Tensor[{errors.fmt_shape(shape)}, {dtype.as_str()}{dev}]"


def format_tensor(t: TensorBase) -> str:
    """Candle's ``Display`` for a tensor: the values, then ``Tensor[[2, 2], f32]``."""
    a = t._a
    if a.dtype == jax.dtypes.float0:  # jax.vjp / grad(allow_int=True)'s cotangent of an integer input
        return f"Tensor[{errors.fmt_shape(a.shape)}, float0] (the zero cotangent of an integer input)"
    dtype = t.dtype
    if isinstance(a, _Tracer):
        return f"Traced<{_footer(a.shape, dtype)}>"
    if a.is_deleted():
        return f"<deleted>\n{_footer(a.shape, dtype)}"
    dev = t.device
    suffix = "" if dev.kind == "cpu" else f", {dev}"
    po = _PO[0]
    summarize = a.size > po.threshold
    # a CPU array reads zero-copy; a large accelerator array is cut on its device (one small gather
    # compiled per shape) rather than copied whole to the host
    src = a if summarize and dev.kind != "cpu" and a.nbytes > _GATHER_ON_DEVICE_BYTES else np.asarray(a)
    arr = np.asarray(_summarized(src, po.edge_items) if summarize else src)
    shown = arr.reshape(-1)
    if dtype.is_float():
        fmt: Any = _FloatFmt(shown, po)
        if arr.dtype.itemsize < 4:  # bf16 / f16 / f8 print through f32, as the half crate does
            arr = arr.astype(np.float32)
            shown = shown.astype(np.float32)
    else:
        fmt = _int_fmt
    w = 1
    for v in shown.tolist():
        w = max(w, len(fmt(v, 1)))
    out: list[str] = []
    _fmt_tensor(arr, a.shape, 1, w, summarize, po, fmt, out)
    out.append("\n")
    out.append(_footer(a.shape, dtype, suffix))
    return "".join(out)


# --- helpers ------------------------------------------------------------------------------------
def _concrete(t: TensorBase, op_name: str) -> Any:
    """``t``'s array, checked to have a buffer (not traced, not donated) without reading it to the host."""
    a = t._a
    if isinstance(a, _Tracer):
        raise errors.TracingError(
            f"{op_name}: cannot read the values of a traced Tensor (shape {errors.fmt_shape(a.shape)}) inside"
            " jax.jit/grad/vmap; return it from the traced function and convert outside, or use"
            " jax.debug.print"
        )
    return _live(a, op_name)


def _host(t: TensorBase, op_name: str) -> np.ndarray:
    return np.asarray(read_to_host(_concrete(t, op_name)))  # an explicit read: allowed by jax.transfer_guard


def _check_vec(t: TensorBase, rank: int, dtype: Any, op_name: str) -> np.ndarray:
    a = t._a
    if a.ndim != rank:
        raise errors.UnexpectedNumberOfDims(rank, a.ndim, a.shape, op_name)
    if dtype is not None:
        want = dtype if isinstance(dtype, DType) else to_dtype(dtype)
        got = t.dtype
        if want is not got:
            raise errors.UnexpectedDType(want, got, f"{op_name}: unexpected dtype")
    return _host(t, op_name)


@op(static=("dtype",), elementwise=True)
def _astype(a: Any, *, dtype: Any) -> Any:
    a = f8_saturate(a, dtype)  # Candle's float8 casts saturate at +-448 where XLA's give NaN
    return a.astype(dtype)


def _dev(device: Any) -> Device:
    if device is None or device is _CPU:
        return _CPU
    return device if isinstance(device, Device) else Device.coerce(device)


class ConvertMixin(TensorBase):
    """Tensor methods that change dtype or device or leave the tensor (Candle's ``to_dtype``, ``to_device``,
    ``to_vec*``)."""

    __slots__ = ()

    # --- dtype / device --------------------------------------------------------------------
    def to_dtype(self, dtype: Any) -> Tensor:
        """``t.to_dtype(DType::F16)`` (also ``"f16"``); same dtype returns ``self``.

        Float -> int truncates toward zero and saturates (NaN -> 0), as Rust's ``as``.
        PyTorch: ``t.to(torch.float16)``.
        """
        if isinstance(dtype, DType):
            d = dtype
        elif dtype is None:
            raise errors.ArgumentType("to_dtype: dtype must be a DType (DType.F32) or its name ('f32'), got None")
        else:
            d = to_dtype(dtype)
        a = self._a
        npd = d.np
        if a.dtype == npd:
            return self
        if d is DType.I64 or d is DType.F64:
            check_width(d, "to_dtype")
        return wrap(_astype(a, dtype=npd))

    def to_device(self, device: Any) -> Tensor:
        """``t.to_device(&device)``; the same device returns ``self``. PyTorch: ``t.to(device)``."""
        dev = _dev(device)
        a = self._a
        if isinstance(a, _Tracer):
            if len(jax.devices()) == 1:
                return self
            return wrap(jax.device_put(a, dev.jax_device))
        jd = dev.jax_device
        if a.devices() == {jd}:
            return self
        return wrap(jax.device_put(a, jd))

    def quantize(self, quantized_dtype: Any) -> QTensor:
        """candle-pyo3's ``t.quantize(quantized_dtype)``: a :class:`candlejax.quantized.QTensor` of this
        tensor in that format, a name as the binding takes them (``"q4_0"``, ``"q4k"``, ``"q8_0"``,
        ``"f16"``, ...; any case) or a ``GgmlDType``. Rust: ``QTensor::quantize(&t, dtype)``."""
        from candlejax.quantized import GgmlDType, QTensor

        fmt = quantized_dtype
        if isinstance(fmt, str):
            try:
                fmt = GgmlDType[fmt.strip().upper()]
            except KeyError:
                names = ", ".join(sorted({m.name.lower() for m in GgmlDType}))
                raise errors.Msg(f"quantize: unknown format {fmt!r}; one of {names}") from None
        return QTensor.quantize(self, fmt)

    def to(self, *args: Any, dtype: Any = None, device: Any = None, other: Any = None) -> Tensor:
        """candle-pyo3's ``t.to(...)``: any of a DType (or dtype string), a device, or a Tensor (its
        dtype and device), positionally or as ``dtype=``, ``device=``, ``other=``. As in the binding,
        giving one of them twice, or a tensor with a dtype or device, raises an ``InvalidArgument``;
        giving none, or an argument of another kind, a ``TypeError``."""
        given = {"dtype": dtype, "device": device, "tensor": other}

        def put(kind: str, value: Any) -> None:
            if given[kind] is not None:
                what = "tensors to take the dtype and device of (other=)" if kind == "tensor" else f"{kind}s"
                raise errors.InvalidArgument(f"to: cannot specify multiple {what}")
            given[kind] = value

        for x in args:
            if isinstance(x, TensorBase):
                put("tensor", x)
            elif isinstance(x, DType):
                put("dtype", x)
            elif isinstance(x, Device) or hasattr(x, "platform"):
                put("device", x)
            elif isinstance(x, str):
                try:
                    parsed: Any = DType.parse(x)
                except errors.Error:
                    try:
                        parsed = Device.coerce(x)
                    except errors.InvalidDevice:
                        raise errors.ArgumentType(
                            f"to: {x!r} is neither a dtype nor a device (e.g. DType.F16, \"f16\", \"cpu\", \"cuda\")"
                        ) from None
                put("dtype" if isinstance(parsed, DType) else "device", parsed)
            else:
                try:  # a numpy or torch dtype (PyTorch's t.to(torch.float16))
                    parsed = to_dtype(x)
                except errors.Error:
                    raise errors.ArgumentType(
                        f"to: cannot interpret argument {x!r} as a dtype, device or tensor"
                    ) from None
                put("dtype", parsed)
        dtype, device, other = given.values()
        if other is not None:
            if device is not None or dtype is not None:
                both = "a device" if device is not None else "a dtype"
                raise errors.InvalidArgument(
                    f"to: cannot specify both a tensor to take the dtype and device of (other=) and {both}"
                )
            dtype, device = other.dtype, other.device
        if dtype is None and device is None:
            raise errors.ArgumentType("to: no valid dtype or device specified")
        out: Any = self
        if dtype is not None:
            out = out.to_dtype(dtype)
        if device is not None:
            out = out.to_device(device)
        return out

    def detach(self) -> Tensor:
        """``t.detach()``: the same values, cut from the gradient (``jax.lax.stop_gradient``)."""
        return wrap(jax.lax.stop_gradient(self._a))

    def copy(self) -> Tensor:
        """``t.copy()``: a tensor with its own buffer (matters for buffer donation). PyTorch: ``clone``."""
        a = self._a
        if isinstance(a, _Tracer):
            return wrap(a)
        return wrap(a.copy())

    # --- host values -----------------------------------------------------------------------
    def to_vec0(self, dtype: Any = None) -> Any:
        """``t.to_vec0::<T>()``: the Python scalar of a rank-0 tensor (``dtype`` checks T)."""
        return _check_vec(self, 0, dtype, "to_vec0").item()

    def to_scalar(self, dtype: Any = None) -> Any:
        """``t.to_scalar::<T>()`` (same as :meth:`to_vec0`). PyTorch: ``t.item()``."""
        return _check_vec(self, 0, dtype, "to_scalar").item()

    def to_vec1(self, dtype: Any = None) -> list[Any]:
        """``t.to_vec1::<T>()``: a list of Python numbers; rank must be 1; ``dtype`` checks T."""
        return _check_vec(self, 1, dtype, "to_vec1").tolist()

    def to_vec2(self, dtype: Any = None) -> list[list[Any]]:
        """``t.to_vec2::<T>()``: nested lists; rank must be 2."""
        return _check_vec(self, 2, dtype, "to_vec2").tolist()

    def to_vec3(self, dtype: Any = None) -> list[list[list[Any]]]:
        """``t.to_vec3::<T>()``: nested lists; rank must be 3."""
        return _check_vec(self, 3, dtype, "to_vec3").tolist()

    def values(self) -> Any:
        """candle-pyo3's ``t.values()``: a Python scalar or nested lists (any rank)."""
        return _host(self, "values").tolist()

    def to_list(self) -> Any:
        """Nested Python lists (a scalar for rank 0). PyTorch: ``t.tolist()``."""
        return _host(self, "to_list").tolist()

    def tolist(self) -> Any:
        """PyTorch / numpy spelling of :meth:`to_list`."""
        return _host(self, "tolist").tolist()

    def item(self) -> Any:
        """The Python number of a one-element tensor of any rank. PyTorch: ``t.item()``."""
        arr = _host(self, "item")
        if arr.size != 1:
            raise errors.Msg(
                f"item: expected a tensor with one element, got shape {errors.fmt_shape(arr.shape)}"
                " (use to_vec1 / to_list for more)"
            )
        return arr.reshape(()).item()

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __index__(self) -> int:
        """``operator.index(t)`` (``range(t)``, ``lst[t]``) for a 0-d integer tensor, as numpy's and
        JAX's 0-d integer arrays; floats and other ranks raise TypeError (use ``int(t)`` there)."""
        a = self._a
        if a.ndim != 0 or not self.dtype.is_int():
            raise errors.ArgumentType(
                f"only a 0-d integer tensor can be used as an index, got {self.dtype.as_str()}"
                f"{errors.fmt_shape(a.shape)} (use int(t) for a one-element tensor)"
            )
        return int(self.item())

    def numpy(self) -> np.ndarray:
        """A numpy array of the values, zero-copy (read-only) for CPU tensors. bf16 stays bf16."""
        return _host(self, "numpy")

    def to_torch(self) -> _TorchTensor:
        """A ``torch.Tensor`` sharing memory through DLPack (candle-pyo3's ``to_torch``)."""
        torch = require("torch", "Tensor.to_torch")

        a = _concrete(self, "to_torch")  # the device buffer itself: DLPack shares it
        try:
            return torch.from_dlpack(a)
        except Exception:  # a dtype or device DLPack cannot carry: go through numpy
            return torch.from_numpy(np.array(a))

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        return _concrete(self, "__dlpack__").__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> Any:
        # a traced or donated tensor has no buffer to describe
        return _concrete(self, "__dlpack_device__").__dlpack_device__()

    # --- display ---------------------------------------------------------------------------
    def __repr__(self) -> str:
        """Candle's Display: ``[[1., 2.],\\n [3., 4.]]\\nTensor[[2, 2], f32]``."""
        return format_tensor(self)

    def __str__(self) -> str:
        return format_tensor(self)

    def __format__(self, spec: str) -> str:
        """``f"{t:.3f}"`` formats the value of a one-element tensor; an empty spec gives ``str(t)``. A spec
        on more elements raises a TypeError, as for numpy arrays and torch tensors."""
        if spec and not isinstance(self._a, _Tracer):
            if self._a.size == 1:
                return format(self.item(), spec)
            raise errors.ArgumentType(
                f"unsupported format string {spec!r} passed to Tensor.__format__: a spec formats the value of a"
                f" one-element tensor, this one has shape {errors.fmt_shape(self._a.shape)} (use f\"{{t}}\", or"
                " format the values of t.to_list())"
            )
        return format_tensor(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """IPython / Jupyter plain-text display."""
        p.text(format_tensor(self))

    # --- files (Candle's Tensor::save_safetensors / write_npy / read_npy ...) -----------------
    def save_safetensors(self, name: str, path: Any) -> None:
        """``t.save_safetensors("weight", "t.safetensors")``: one tensor in a safetensors file (atomic)."""
        from candlejax.io import safetensors

        safetensors.save_tensor(self, name, path)

    def write_bytes(self, f: Any) -> None:
        """Candle ``write_bytes(&mut w)``: the values in row-major order, little endian, written to
        the binary file object ``f`` (anything with ``write``)."""
        if not callable(getattr(f, "write", None)):
            hint = ""
            if isinstance(f, (str, os.PathLike)):
                hint = f' (a path: `with open({os.fspath(f)!r}, "wb") as f: t.write_bytes(f)`)'
            raise errors.ArgumentType(
                f"write_bytes: f must be a binary file object with write(), got {type(f).__name__}{hint}"
            )
        arr = np.ascontiguousarray(_host(self, "write_bytes"))
        if sys.byteorder != "little" and arr.dtype.itemsize > 1:
            arr = arr.byteswap()
        f.write(arr.tobytes())

    def write_npy(self, path: Any) -> None:
        """``t.write_npy("t.npy")`` (atomic); ``numpy.load`` reads it."""
        from candlejax.io import npy

        npy.write_npy(self, path)

    @staticmethod
    def write_npz(tensors: Any, path: Any) -> None:
        """``Tensor.write_npz([("a", a), ("b", b)], "ab.npz")`` (atomic)."""
        from candlejax.io import npy

        npy.write_npz(tensors, path)

    @staticmethod
    def read_npy(path: Any, dtype: Any = None, device: Any = None) -> Tensor:
        """``Tensor.read_npy("t.npy")``."""
        from candlejax.io import npy

        return npy.read_npy(path, dtype=dtype, device=device)

    @staticmethod
    def read_npz(path: Any, dtype: Any = None, device: Any = None) -> list[tuple[str, Tensor]]:
        """``Tensor.read_npz("ab.npz")`` -> ``[(name, Tensor), ...]``."""
        from candlejax.io import npy

        return npy.read_npz(path, dtype=dtype, device=device)

    @staticmethod
    def read_npz_by_name(path: Any, names: Any, dtype: Any = None, device: Any = None) -> list[Tensor]:
        """``Tensor.read_npz_by_name("ab.npz", ["a"])`` -> ``[Tensor, ...]``."""
        from candlejax.io import npy

        return npy.read_npz_by_name(path, names, dtype=dtype, device=device)
