"""Creating tensors: new, zeros, ones, full, arange, eye, rand, randn, *_like, from_vec, ...

requires: candlejax.tensor._core (TensorBase, wrap), candlejax._dispatch.op, candlejax.random
provides: CreationMixin, ``as_jax_array`` (host data -> jax array with Candle's dtype inference),
``infer_dtype`` (the DType a Python scalar gets), ``int_dtype_of_range`` (the DType of Python ints in a range)

Argument order follows Candle (``Tensor::zeros(shape, dtype, &dev)`` reads
``Tensor.zeros(shape, dtype, device)``); ``dtype``/``device`` default to F32 / ``Device.Cpu`` where
Candle requires them, for convenience. Python data gets candle-pyo3's dtype inference: float -> F32,
non-negative int -> U32, negative int -> I64 (I32 when x64 is off), bool -> U8 (see
docs/differences/creation-convert.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, SupportsIndex

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax import random as _random
from candlejax._dispatch import is_eager, op
from candlejax.device import Device, single_device
from candlejax.dtype import NUMPY_TO_DTYPE, DType, check_width, f8_saturate, from_array_dtype, to_dtype, x64_enabled
from candlejax.shape import PLAIN_SHAPE_TYPES, as_shape, check_elem_count, shape_with_hole
from candlejax.tensor._core import TensorBase, int_arg, unwrap, wrap

if TYPE_CHECKING:  # Tensor joins the mixins: candlejax.tensor sets this name at runtime (get_type_hints)
    from candlejax.tensor import Tensor

_Tracer = jax.core.Tracer
_CPU = Device.Cpu
_U32_MAX = 2**32 - 1
_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1

# --- device placement ---------------------------------------------------------------------------
_default_dev: list[Device] = []


def _default_device() -> Device:
    if not _default_dev:
        _default_dev.append(Device.from_jax(jax.devices()[0]))
    return _default_dev[0]


def _place(a: Any, device: Device | None) -> Any:
    """Put ``a`` on ``device`` unless it is already JAX's default device (the fast path)."""
    if device is None or isinstance(a, _Tracer):
        return a
    if device is _CPU and _default_device() is _CPU and (single_device() or not hasattr(a, "devices")):
        return a  # host data, or an array on the only device
    if not isinstance(device, Device):
        device = Device.coerce(device)
    if device == _default_device() and not hasattr(a, "devices"):
        return a
    if hasattr(a, "devices") and a.devices() == {device.jax_device}:
        return a
    return jax.device_put(a, device.jax_device)


def _dev(device: Any) -> Device:
    if device is None or device is _CPU:
        return _CPU
    return device if isinstance(device, Device) else Device.coerce(device)


def _dt(dtype: Any, op_name: str, shape: Any = None) -> DType:
    if type(dtype) is int and type(shape) is int:
        raise errors.Msg(
            f"Tensor.{op_name}: the shape is a tuple: write Tensor.{op_name}(({shape}, {dtype})) or"
            f" Tensor.{op_name}(({shape}, {dtype}), DType.F32), not PyTorch's torch.{op_name}({shape}, {dtype})"
        )
    d = dtype if isinstance(dtype, DType) else to_dtype(dtype)
    if d is DType.I64 or d is DType.F64:
        check_width(d, op_name)
    return d


def _buffer_mismatch(data: Any, a: Any, dims: tuple[int, ...], op: str) -> errors.ShapeMismatch:
    """Candle's size error; for a buffer that already has dims (a Tensor or an n-d array, where
    Candle takes a flat Vec), also say that ``len()`` of it counts its first dim only."""
    hint = ""
    if a.ndim > 1:
        kind = "Tensor" if isinstance(data, TensorBase) else "array"
        lead = math.prod(dims[:-1])
        fix = f"`t.reshape({(*dims[:-1], -1)})`" if dims and lead and a.size % lead == 0 else "`t.reshape(shape)`"
        hint = (
            f"{op} got a {kind} of shape {tuple(a.shape)}, whose len() is its first dim ({a.shape[0]}), not its"
            f" {a.size} elements: reshape it instead, e.g. {fix}"
        )
    return errors.ShapeMismatch(a.size, dims, hint)


def _shape(shape: Any) -> tuple[int, ...]:
    if type(shape) in PLAIN_SHAPE_TYPES and all(type(d) is int and d >= 0 for d in shape):
        return check_elem_count(shape)
    return as_shape(shape)


# --- dtype inference for Python data ------------------------------------------------------------
def int_dtype_of_range(lo: int, hi: int, where: str) -> DType:
    """U32 for non-negative ints below 2**32, else I64 (x64 on) or I32 (x64 off, when it fits)."""
    if lo >= 0 and hi <= _U32_MAX:
        return DType.U32
    if x64_enabled():
        if lo < -(2**63) or hi > 2**63 - 1:
            raise errors.Msg(f"{where}: integer {hi if hi > 2**63 - 1 else lo} does not fit in i64")
        return DType.I64
    if _I32_MIN <= lo and hi <= _I32_MAX:
        return DType.I32
    return check_width(DType.I64, where)  # raises the x64 error


def infer_dtype(value: Any, where: str = "tensor") -> DType:
    """The DType candlejax gives a Python scalar: bool -> U8, int -> U32/I32/I64, float -> F32."""
    if isinstance(value, (bool, np.bool_)):
        return DType.U8
    if isinstance(value, int):
        return int_dtype_of_range(value, value, where)
    if isinstance(value, float):
        return DType.F32
    if isinstance(value, (np.generic, np.ndarray, jax.Array, _Tracer)):
        return _np_dtype(np.dtype(value.dtype), where)
    if isinstance(value, TensorBase):
        return value.dtype
    raise errors.ArgumentType(f"incorrect type {type(value)} for tensor")


def _plain_ndarray(a: Any, where: str) -> Any:
    """``a`` with its values in the machine's byte order (``">f4"`` data read from a file is f32); a
    masked array raises (its mask would be dropped; ``jnp.asarray`` refuses it too)."""
    if isinstance(a, np.ma.MaskedArray):
        raise errors.ArgumentType(
            f"{where}: numpy masked arrays are not supported (the mask would be dropped): use a.filled(value)"
        )
    if a.dtype.isnative:
        return a
    return a.astype(a.dtype.newbyteorder("="))


def _np_dtype(dt: np.dtype, where: str) -> DType:
    d = NUMPY_TO_DTYPE.get(dt)
    if d is None:
        if dt == np.bool_:
            return DType.U8
        d = from_array_dtype(dt, where)
    if d is DType.I64 or d is DType.F64:
        check_width(d, where)
    return d


# --- values given with an explicit integer dtype: never wrapped, never truncated from Python data ---
_INT_RANGE = {d.np: (int(np.iinfo(d.np).min), int(np.iinfo(d.np).max)) for d in DType if d.is_int()}


def _does_not_fit(where: str, value: Any, dt: Any) -> errors.InvalidArgument:
    lo, hi = _INT_RANGE[np.dtype(dt)]
    return errors.InvalidArgument(
        f"{where}: the value {value!r} does not fit the dtype {to_dtype(dt).name} ([{lo}, {hi}]); values are"
        " never wrapped: use a dtype that holds them, or clamp them first"
    )


def _not_integral(where: str, value: Any, dt: Any) -> errors.InvalidArgument:
    return errors.InvalidArgument(
        f"{where}: the value {value!r} is not an integer, as the dtype {to_dtype(dt).name} needs; Python values are"
        " not truncated: round them first, or build a float tensor and .to_dtype(...) it (which truncates)"
    )


def _check_int_scalar(value: Any, dt: Any, where: str) -> None:
    """A Python / numpy scalar for a tensor of the integer numpy dtype ``dt``: integral and in range."""
    lo, hi = _INT_RANGE[dt]
    if type(value) is int:  # the fast path
        if not lo <= value <= hi:
            raise _does_not_fit(where, value, dt)
        return
    if isinstance(value, (bool, np.bool_)):
        return
    v = value.item() if isinstance(value, np.generic) else value
    if isinstance(v, float):
        if not v.is_integer():
            raise _not_integral(where, value, dt)
        v = int(v)
    if isinstance(v, int) and not lo <= v <= hi:
        raise _does_not_fit(where, value, dt)


def _check_int_values(arr: np.ndarray, dt: Any, where: str, python: bool) -> None:
    """Raise when the host values ``arr`` do not fit the integer numpy dtype ``dt``: out of range or NaN
    always, fractional when they come from Python data (``python``); a numpy float array truncates
    toward zero, as ``astype`` and ``to_dtype`` do. One min/max pass; none when ``arr``'s dtype fits."""
    if arr.size == 0 or arr.dtype == np.bool_ or np.can_cast(arr.dtype, dt, "safe"):
        return
    lo, hi = _INT_RANGE[dt]
    if arr.dtype.kind in "iu":
        mn, mx = int(arr.min()), int(arr.max())
        if mn < lo or mx > hi:
            raise _does_not_fit(where, mn if mn < lo else mx, dt)
        return
    if python:
        frac = arr != np.trunc(arr)  # also true for NaN; inf is caught by the range below
        if frac.any():
            raise _not_integral(where, arr.flat[np.flatnonzero(frac)[0]].item(), dt)
    mn, mx = float(arr.min()), float(arr.max())
    if math.isnan(mn) or math.isnan(mx):
        raise _does_not_fit(where, float("nan"), dt)
    if not (math.isfinite(mn) and math.trunc(mn) >= lo):
        raise _does_not_fit(where, mn, dt)
    if not (math.isfinite(mx) and math.trunc(mx) <= hi):
        raise _does_not_fit(where, mx, dt)


def _nested_shape(x: Any) -> tuple[int, ...]:
    if isinstance(x, (list, tuple)):
        if not x:
            return (0,)
        return (len(x), *_nested_shape(x[0]))
    if isinstance(x, (np.ndarray, TensorBase)) or hasattr(x, "__jax_array__"):
        return tuple(np.shape(x))
    return ()


def _ragged_error(data: Any) -> errors.Error:
    """Candle's error for ragged nested lists: the first pair of siblings whose shapes differ."""

    def walk(x: Any) -> errors.Error | None:
        if not isinstance(x, (list, tuple)) or not x:
            return None
        first = _nested_shape(x[0])
        for e in x[1:]:
            s = _nested_shape(e)
            if s != first:
                return errors.Msg(
                    f"two elements have different shapes {errors.fmt_shape(s)} {errors.fmt_shape(first)}"
                )
        for e in x:
            err = walk(e)
            if err is not None:
                return err
        return None

    return walk(data) or errors.Msg("cannot build a tensor from this nested data")


def _from_python(data: Any, dtype: DType | None, where: str) -> np.ndarray:
    """A numpy array (already in the target dtype) from Python scalars / nested lists."""
    try:
        arr = np.array(data)
    except (ValueError, TypeError, OverflowError):
        if isinstance(data, (list, tuple)):
            raise _ragged_error(data) from None
        raise errors.ArgumentType(f"incorrect type {type(data)} for tensor") from None
    if arr.dtype.kind == "V" and arr.dtype in NUMPY_TO_DTYPE:  # bf16 / f8 arrays or Tensors in a list (ml_dtypes)
        arr = arr.astype(np.float32)
    kind = arr.dtype.kind
    if kind == "O" or kind in "USV":
        if isinstance(data, (list, tuple)):
            err = _ragged_error(data)
            if "different shapes" in str(err):
                raise err
        bad = arr.flat[0] if arr.size else data
        for v in arr.flat:
            if not isinstance(v, (bool, int, float, np.generic)):
                bad = v
                break
        if isinstance(bad, int):  # ints beyond int64/uint64
            raise errors.Msg(f"{where}: integer {bad} does not fit in a 64-bit tensor")
        raise errors.ArgumentType(f"incorrect type {type(bad)} for tensor")
    if arr.ndim > 1 and 0 in arr.shape[1:] and isinstance(data, (list, tuple)):
        raise errors.Msg("empty array")
    if dtype is not None:
        if dtype.np in _INT_RANGE:
            _check_int_values(arr, dtype.np, where, True)
        return f8_saturate(arr, dtype.np).astype(dtype.np, copy=False)
    if kind == "f":
        return arr.astype(np.float32, copy=False)
    if kind == "b":
        return arr.astype(np.uint8)
    if kind in "iu":
        if arr.size == 0:
            return arr.astype(np.float32)
        d = int_dtype_of_range(int(arr.min()), int(arr.max()), where)
        return arr.astype(d.np, copy=False)
    if kind == "c":
        raise errors.UnsupportedDTypeForOp(str(arr.dtype), where, "complex numbers are not supported")
    raise errors.ArgumentType(f"incorrect type {type(data)} for tensor")


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


_TORCH_NAMES = {
    "uint8": DType.U8, "uint32": DType.U32, "int16": DType.I16, "int32": DType.I32, "int64": DType.I64,
    "bfloat16": DType.BF16, "float16": DType.F16, "float32": DType.F32, "float64": DType.F64,
    "float8_e4m3fn": DType.F8E4M3, "bool": DType.U8,
}


def _from_torch(t: Any, dtype: DType | None, where: str, copy: bool = False) -> Any:
    """A jax array from a torch tensor: DLPack (zero-copy on CPU unless ``copy``), numpy as the fallback."""
    import torch

    name = str(t.dtype).removeprefix("torch.")
    d = _TORCH_NAMES.get(name)
    if d is None:
        raise errors.UnsupportedDTypeForOp(name, where, "supported: " + ", ".join(x.value for x in DType))
    if t.is_meta:
        raise errors.InvalidArgument(
            f"{where}: a torch tensor on the meta device has no values (shape {list(t.shape)}); create it"
            " on a real device (or torch.empty(..., device='cpu')) first"
        )
    if t.layout != torch.strided:
        raise errors.InvalidArgument(
            f"{where}: a torch tensor with layout {t.layout} has no dense buffer; convert it with t.to_dense() first"
        )
    if dtype is not None and d in (DType.I64, DType.F64) and not x64_enabled():
        # torch.tensor([1, 2]) is int64: with a narrower dtype= it converts as the numpy array would
        return as_jax_array(t.detach().resolve_neg().resolve_conj().cpu().numpy(), dtype, where)
    check_width(d, where)
    src = t
    # a lazy negation (``_neg_view``, ``conj`` of ...) is a flag DLPack does not carry: apply it
    t = t.detach().resolve_neg().resolve_conj()
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if copy and t.numel() and t.untyped_storage().data_ptr() == src.untyped_storage().data_ptr():
        t = t.clone()  # torch.tensor(x) copies: later writes into ``x`` must not reach the jax array
    try:
        a = jax.dlpack.from_dlpack(t)
    except Exception:
        if d is DType.BF16:
            a = jnp.asarray(t.float().numpy()).astype(jnp.bfloat16)
        else:
            a = jnp.asarray(t.numpy())
    if dtype is not None and dtype is not d:
        if dtype.np in _INT_RANGE and t.numel():
            _check_int_values((t.double() if t.is_floating_point() else t).numpy(), dtype.np, where, False)
        a = a.astype(dtype.np)
    return a


def _is_candle_pyo3(x: Any) -> bool:
    """A ``candle.Tensor`` of Candle's Python binding (candle-pyo3), which has no ``__array__``."""
    tp = type(x)
    return tp.__name__ == "Tensor" and tp.__module__ in ("builtins", "candle") and hasattr(x, "flatten_all")


def _from_candle_pyo3(t: Any) -> np.ndarray:
    """The values of a candle-pyo3 tensor as a numpy array of its dtype and shape (any rank)."""
    d = to_dtype(str(t.dtype).lower())
    return np.array(t.flatten_all().values(), dtype=d.np).reshape(tuple(t.shape))


def _from_host(arr: Any, copy: bool = True) -> Any:
    """Host data as a ``jax.Array``: eagerly ``device_put`` (a copy; ``jnp.asarray`` compiles one XLA
    executable per new shape, 20-40 ms on CPU); under a trace, a constant as ``jnp.asarray`` makes."""
    if is_eager():
        # a fresh buffer: device_put may alias host memory that the caller later changes
        return jax.device_put(np.array(arr, copy=True if copy else None, order="C"))
    return jnp.asarray(arr)


def as_jax_array(data: Any, dtype: Any = None, where: str = "tensor", *, copy: bool = True) -> Any:
    """A ``jax.Array`` (or tracer) from any supported data, with Candle's dtype inference.

    Copies host data (numpy arrays and Python lists); jax arrays and Tensors are used as they are
    (and cast when ``dtype`` differs). ``copy=False`` is for a numpy array the caller hands over (a
    file reader's fresh buffer): the result may alias it instead of holding a second host copy.
    """
    dt = None if dtype is None else _dt(dtype, where)
    if isinstance(data, TensorBase):
        a = data._a
    elif isinstance(data, (jax.Array, _Tracer)):
        a = data
    elif isinstance(data, np.ndarray) or isinstance(data, np.generic):
        data = _plain_ndarray(data, where)
        if dt is None:
            _np_dtype(data.dtype, where)
            if data.dtype == np.bool_:
                data = data.astype(np.uint8)
            return _from_host(data, copy)
        data = np.asarray(data)
        if data.dtype != dt.np and dt.np in _INT_RANGE:
            _check_int_values(data, dt.np, where, False)
        return _from_host(f8_saturate(data, dt.np).astype(dt.np, copy=False), copy)
    elif _is_torch(data):
        return _from_torch(data, dt, where, copy=True)
    elif isinstance(data, (bytes, bytearray)):  # Rust's Vec<u8> (``img.into_raw()``: PIL's ``img.tobytes()``)
        return as_jax_array(np.frombuffer(data, np.uint8).copy(), dtype, where)
    elif isinstance(data, memoryview):  # bytes-like ones as bytes; typed ones by their values, as candle-pyo3
        return as_jax_array(data.tobytes() if data.format in ("B", "c") else data.tolist(), dtype, where)
    elif isinstance(data, (list, tuple, range, int, float, bool)):  # range: a sequence, as candle-pyo3 reads it
        return _from_host(_from_python(data, dt, where))
    elif hasattr(data, "__jax_array__"):
        a = data.__jax_array__()
    elif _is_candle_pyo3(data):
        return as_jax_array(_from_candle_pyo3(data), dtype, where)
    elif hasattr(data, "__array__"):
        return as_jax_array(np.asarray(data), dtype, where)
    elif hasattr(data, "__dlpack__"):  # np.asarray would make an object array of it
        return as_jax_array(np.from_dlpack(data), dtype, where)
    elif isinstance(data, Sequence) and not isinstance(data, str):  # array.array, deque: as candle-pyo3 reads them
        return as_jax_array(list(data), dtype, where)
    else:
        raise errors.ArgumentType(f"incorrect type {type(data)} for tensor")
    adt = a.dtype
    if adt == np.bool_:
        a = a.astype(np.uint8)
    elif adt not in NUMPY_TO_DTYPE:
        from_array_dtype(adt, where)
    if dt is not None and a.dtype != dt.np:
        a = f8_saturate(a, dt.np).astype(dt.np)
    return a


# --- jitted builders ----------------------------------------------------------------------------
@op(static=("shape", "dtype"))
def _zeros(*, shape: tuple[int, ...], dtype: Any) -> Any:
    return jnp.zeros(shape, dtype)


@op(static=("shape", "dtype"))
def _ones(*, shape: tuple[int, ...], dtype: Any) -> Any:
    return jnp.ones(shape, dtype)


@op(static=("shape", "dtype"))
def _full(value: Any, *, shape: tuple[int, ...], dtype: Any) -> Any:
    return jnp.full(shape, value, dtype)


def _host_scalar(value: Any, dtype: Any) -> Any:
    """A Python / numpy scalar (already checked against ``dtype``) as a numpy scalar of ``dtype``; other
    values as they are. A Python int reaches a jitted function as an int32 argument, so one above
    2**31 - 1 (a U32 fill value, 2**40 for an F32 tensor) raised jax's OverflowError."""
    if isinstance(value, (bool, int, float, np.generic)):
        with np.errstate(all="ignore"):
            return f8_saturate(np.asarray(value), dtype).astype(dtype)[()]
    return value


@op(static=("n", "dtype"))
def _arange(start: Any, step: Any, *, n: int, dtype: Any) -> Any:
    # floats narrower than f32 (bf16, f16, f8) are computed in f32 and rounded once: in the
    # narrow dtype the step, the index and the product would each be rounded
    work = jnp.float32 if jnp.dtype(dtype).itemsize < 4 and jnp.issubdtype(dtype, jnp.floating) else dtype
    i = jax.lax.iota(work, n)
    return f8_saturate(start.astype(work) + i * step.astype(work), dtype).astype(dtype)


@op(static=("n", "dtype", "k", "upper"))
def _tri(*, n: int, dtype: Any, k: int, upper: bool) -> Any:
    r = jax.lax.broadcasted_iota(jnp.int32, (n, n), 0)
    c = jax.lax.broadcasted_iota(jnp.int32, (n, n), 1)
    if k == 0 and not upper:
        m = c <= r
    elif upper:
        m = c >= r
    else:
        m = c == r
    return m.astype(dtype)


def _sampling_dtype(dtype: Any) -> Any:
    """Narrow floats are drawn in f32 and rounded: jax draws a bf16 from 7 random mantissa bits
    (128 distinct values, normal samples never beyond 2.5 standard deviations)."""
    return dtype if jnp.dtype(dtype).itemsize >= 4 else jnp.float32


@op(static=("shape", "dtype"))
def _uniform(key: Any, ctr: Any, lo: Any, up: Any, *, shape: tuple[int, ...], dtype: Any) -> Any:
    if ctr is not None:
        key = jax.random.fold_in(key, ctr)
    work = _sampling_dtype(dtype)
    u = jax.random.uniform(key, shape, work, jnp.asarray(lo, work), jnp.asarray(up, work)).astype(dtype)
    # lo + u * (up - lo) can round up to ``up`` itself (bf16 rand(5, 6): 1.5% of the samples were 6.0)
    lo_d, up_d = jnp.asarray(lo, dtype), jnp.asarray(up, dtype)
    below = jnp.nextafter(up_d, jnp.asarray(-jnp.inf, dtype))
    return jnp.maximum(jnp.where(u >= up_d, below, u), lo_d)


@op(static=("shape", "dtype"))
def _normal(key: Any, ctr: Any, mean: Any, std: Any, *, shape: tuple[int, ...], dtype: Any) -> Any:
    if ctr is not None:
        key = jax.random.fold_in(key, ctr)
    work = _sampling_dtype(dtype)
    z = jax.random.normal(key, shape, work)
    return (z * jnp.asarray(std, work) + jnp.asarray(mean, work)).astype(dtype)


def _static_number(x: Any, what: str, op_name: str) -> Any:
    if isinstance(x, TensorBase):
        x = x._a
    if isinstance(x, _Tracer):
        raise errors.Msg(f"{op_name}: {what} must be a Python number (it fixes the output shape), got a traced value")
    if hasattr(x, "shape") and getattr(x, "shape", ()) == ():
        x = x.item()
    if not isinstance(x, (int, float)):
        raise errors.Msg(f"{op_name}: {what} must be a number, got {type(x).__name__}")
    return x


def _bound(x: Any) -> Any:
    """A Python / numpy integer bound of a random draw as a float: an int above 2**31 - 1 raised jax's
    OverflowError as an int32 argument, and a numpy int64 was truncated to int32 without x64 mode."""
    return float(x) if isinstance(x, (int, np.integer)) else x


def _rand_dtype(dtype: Any, op_name: str) -> DType:
    d = DType.F32 if dtype is None else _dt(dtype, op_name)
    if not d.is_float():
        raise errors.UnsupportedDTypeForOp(d, op_name, "random tensors are float-only; sample then .to_dtype(...)")
    return d


def _concrete(x: Any, op_name: str, what: str) -> float | None:
    """``x`` as a finite Python float when it is concrete, else None (traced bounds skip validation).
    A string, None, a complex or a non-finite value raises (rand's ``Uniform`` and ``Normal`` refuse
    non-finite parameters; a NaN would make every sample NaN)."""
    if isinstance(x, TensorBase):
        x = x._a
    if isinstance(x, _Tracer) or getattr(x, "ndim", 0):  # traced, or an array of bounds
        return None
    if isinstance(x, (str, bytes, complex, np.complexfloating)) or x is None:
        raise errors.ArgumentType(f"{op_name}: {what} must be a real number, got {x!r} ({type(x).__name__})")
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise errors.ArgumentType(
            f"{op_name}: {what} must be a real number, got {x!r} ({type(x).__name__})"
        ) from None
    if not math.isfinite(v):
        raise errors.InvalidArgument(f"{op_name}: {what} must be finite, got {v}")
    return v


_NO_SHAPE: Any = type("_NoShape", (), {"__repr__": lambda self: "<no shape>"})()
#: ``rand`` / ``randn``'s default device (Device.Cpu), told apart from a device the caller passes
_CPU_BY_DEFAULT: Any = type("_CpuByDefault", (), {"__repr__": lambda self: "Device.Cpu"})()


def _torch_rand_spelling(op_name: str, a: Any, b: Any, shape: Any, unit: str, device: Any) -> None:
    """Raise for PyTorch's ``torch.randn(2, 3)`` / ``torch.randn(2, 3, 4)`` / ``torch.randn((2, 3))`` written
    as ``Tensor.randn``: Candle's ``Tensor::randn(mean, std, shape, &dev)`` takes float bounds
    (``FloatDType``), so three ints would otherwise draw ``shape`` values of the wrong distribution.
    A call that passes a device (``Tensor.randn(0, 1, 5, Device.Cpu)``) is Candle's form and is taken."""
    given = [x for x in (a, b, shape) if x is not _NO_SHAPE]
    dims_only = all(type(x) is int for x in given) or (len(given) == 1 and isinstance(a, (tuple, list)))
    three_ints = type(shape) is int and type(a) is int and type(b) is int and device is _CPU_BY_DEFAULT
    if (shape is _NO_SHAPE or three_ints) and dims_only:
        dims = tuple(a) if len(given) == 1 and isinstance(a, (tuple, list)) else tuple(given)
        torch_args = repr(tuple(a)) if isinstance(a, (tuple, list)) else ", ".join(map(str, given))
        bounds = "lo, up" if op_name == "rand" else "mean, std"
        raise errors.Msg(
            f"Tensor.{op_name} takes Candle's ({bounds}, shape, device) with float {bounds}: for PyTorch's"
            f" torch.{op_name}({torch_args}) write Tensor.{op_name}({unit}, {dims!r}) or"
            f" cj.{op_name}({', '.join(map(str, dims))})"
            + (f"; for {bounds} {a}, {b} and shape ({shape},): Tensor.{op_name}({float(a)}, {float(b)}, {shape})"
               if shape is not _NO_SHAPE else "")
        )  # fmt: skip
    if shape is _NO_SHAPE:
        raise errors.ArgumentType(f"Tensor.{op_name}: missing the shape: Tensor.{op_name}({unit}, shape, device)")


def _bounds_shape(shape: Any, op_name: str, **bounds: Any) -> tuple[int, ...]:
    """The sample shape, after checking that array bounds (``lo``/``up``, ``mean``/``std``) broadcast to it."""
    dims = _shape(shape)
    for what, b in bounds.items():
        bs = tuple(getattr(b, "shape", ()))
        if bs and (len(bs) > len(dims) or any(x not in (1, y) for x, y in zip(bs[::-1], dims[::-1]))):
            raise errors.BroadcastIncompatibleShapes(bs, dims, f"{op_name} ({what})")
    return dims


def _fill_scalar(value: Any, op_name: str) -> Any:
    """A fill value (``Tensor::full``'s scalar): a real Python / numpy number or a rank-0 array / Tensor,
    unwrapped."""
    v = unwrap(value)
    if isinstance(v, (bool, int, float, np.number)) and not isinstance(v, np.complexfloating):
        return v
    if isinstance(v, (jax.Array, _Tracer, np.ndarray)) and v.ndim == 0:
        return v
    raise errors.ArgumentType(
        f"{op_name}: incorrect type {type(value)} for the fill value (a real number or a rank-0 tensor),"
        f" got {value!r:.60}"
    )


def _key_for(key: Any, device: Device, op_name: str) -> tuple[Any, Any]:
    """``(key, counter)``: the device generator's base key and draw counter (folded in inside the
    jitted sampler), or an explicit / scoped key and None."""
    if key is None:
        k, c = _random.next_key_parts(device, op_name)
        return k, (None if c is None else np.uint32(c & 0xFFFFFFFF))
    return _random.as_key(key), None


class CreationMixin(TensorBase):
    """Tensor constructors (Candle's ``Tensor::new``, ``zeros``, ``ones``, ``arange``, ``rand``, ``randn``,
    ``*_like``, ...)."""

    __slots__ = ()

    # --- constructors ----------------------------------------------------------------------
    def __init__(self, data: Any, device: Any = None, dtype: Any = None) -> None:
        """``Tensor(data, device=None, dtype=None)``; candle-pyo3's ``candle.Tensor(data)``.

        ``data``: a Python scalar, nested lists/tuples, a numpy / jax array, a torch tensor or a
        Tensor. ``device=None`` keeps a jax array's (or Tensor's) device and puts host data on
        ``Device.Cpu``. An integer ``dtype`` refuses host values it cannot hold (``[300]`` as U8, ``1.5``
        from Python data) rather than wrap them. PyTorch: ``torch.tensor(data, dtype=..., device=...)``.
        """
        a = as_jax_array(data, dtype)
        if device is None:
            device = None if isinstance(data, (TensorBase, jax.Array, _Tracer)) else _CPU
        else:
            device = _dev(device)
        self._a = _place(a, device)

    @classmethod
    def new(cls, data: Any, device: Any = _CPU, dtype: Any = None) -> Tensor:
        """``Tensor::new(array, &device)``: copy ``data`` onto ``device``.

        Python floats give F32, non-negative ints U32, negative ints I64 (I32 without x64),
        bools U8; numpy / jax / torch data keep their dtype. PyTorch: ``torch.tensor``.
        """
        return wrap(_place(as_jax_array(data, dtype, "new"), _dev(device)))

    @staticmethod
    def from_vec(data: Any, shape: Any, device: Any = _CPU, dtype: Any = None) -> Tensor:
        """``Tensor::from_vec(vec, shape, &device)``; ``shape`` may hold one hole (``()`` or -1).

        Raises ``Shape mismatch, got buffer of size 5 which is compatible with shape [2, 3]``.
        """
        a = as_jax_array(data, dtype, "from_vec")
        try:
            dims = shape_with_hole(shape, a.size, "from_vec")
        except errors.ShapeMismatch as e:
            raise _buffer_mismatch(data, a, e.shape, "from_vec") from None
        return wrap(_place(a.reshape(dims), _dev(device)))

    @staticmethod
    def from_raw_buffer(data: bytes | bytearray | memoryview, dtype: Any, shape: Any, device: Any = _CPU) -> Tensor:
        """``Tensor::from_raw_buffer(&bytes, dtype, &shape, &device)``: little-endian values of
        ``dtype`` (the bytes are copied); the byte count must be ``elem_count * size_in_bytes``."""
        dt = _dt(dtype, "from_raw_buffer")
        dims = _shape(shape)
        raw = memoryview(data).cast("B")
        need = math.prod(dims) * dt.size_in_bytes()
        if raw.nbytes != need:
            raise errors.Msg(
                f"from_raw_buffer: {raw.nbytes} bytes do not hold {dt.as_str()}{list(dims)}, which needs"
                f" {math.prod(dims)} x {dt.size_in_bytes()} = {need} bytes"
            )
        a = np.frombuffer(raw, dtype=np.dtype(dt.np).newbyteorder("<")).astype(dt.np).reshape(dims)
        return wrap(_place(jnp.asarray(a), _dev(device)))

    @staticmethod
    def from_slice(data: Any, shape: Any, device: Any = _CPU, dtype: Any = None) -> Tensor:
        """``Tensor::from_slice(&[T], shape, &device)`` (no hole allowed)."""
        a = as_jax_array(data, dtype, "from_slice")
        dims = _shape(shape)
        n = math.prod(dims)
        if n != a.size:
            raise _buffer_mismatch(data, a, dims, "from_slice")
        return wrap(_place(a.reshape(dims), _dev(device)))

    @staticmethod
    def from_iter(iterable: Iterable[Any], device: Any = _CPU, dtype: Any = None) -> Tensor:
        """``Tensor::from_iter(iter, &device)``: a 1-D tensor from any iterable of scalars."""
        try:
            data = list(iterable)
        except TypeError:
            raise errors.ArgumentType(
                f"from_iter: expected an iterable of scalars, got {iterable!r:.40} ({type(iterable).__name__})"
            ) from None
        if any(isinstance(x, (list, tuple)) for x in data):
            raise errors.Msg("from_iter: expected an iterable of scalars")
        a = as_jax_array(data, dtype, "from_iter")
        if a.ndim != 1:  # the rows of a 2-d array or Tensor
            shape = errors.fmt_shape(a.shape[1:])
            raise errors.Msg(f"from_iter: expected an iterable of scalars, got items of shape {shape}")
        return wrap(_place(a, _dev(device)))

    @staticmethod
    def from_numpy(array: np.ndarray, device: Any = None) -> Tensor:
        """A Tensor sharing ``array``'s memory where XLA allows it (aligned, C-contiguous, on CPU).

        Keeps the dtype (bool -> U8, which copies). As with ``torch.from_numpy``, writing to the
        numpy array afterwards may change the tensor: copy first (or use ``Tensor.new``).
        """
        if not isinstance(array, np.ndarray):
            array = np.asarray(array)
        array = _plain_ndarray(array, "from_numpy")
        _np_dtype(array.dtype, "from_numpy")
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        dev = _dev(device)
        target = dev.jax_device if (dev is not _CPU or _default_device() is not _CPU) else None
        a = jax.device_put(array, target) if target is not None else jax.device_put(array)
        return wrap(a)

    @staticmethod
    def from_jax(array: Any) -> Tensor:
        """A Tensor around a ``jax.Array`` (or tracer), zero-copy. Bool arrays become U8; a Tensor is
        returned as it is; a numpy array is copied to the device (``jnp.asarray``)."""
        if isinstance(array, TensorBase):
            return array
        if isinstance(array, (np.ndarray, np.generic)):  # as jax functions take them: a copy on the device
            want = jax.dtypes.canonicalize_dtype(array.dtype)  # jnp.asarray's: int64 ids are I32 without x64
            return wrap(as_jax_array(array, None if want == array.dtype else want, "from_jax"))
        if _is_torch(array):
            raise errors.ArgumentType(
                "from_jax expects a jax.Array, got a torch.Tensor: use Tensor.from_torch(x) (shares memory)"
                " or Tensor(x)"
            )
        if not (hasattr(array, "dtype") and hasattr(array, "shape")):
            raise errors.ArgumentType(f"from_jax expects a jax.Array, got {type(array).__name__}")
        adt = array.dtype
        if adt not in NUMPY_TO_DTYPE:
            if adt == np.bool_:
                array = array.astype(np.uint8)
            else:
                from_array_dtype(adt, "from_jax")
        return wrap(array)

    @staticmethod
    def from_torch(t: Any, device: Any = None) -> Tensor:
        """A Tensor from a ``torch.Tensor`` through DLPack (zero-copy for contiguous CPU tensors)."""
        if not _is_torch(t):
            raise errors.ArgumentType(f"from_torch expects a torch.Tensor, got {type(t).__name__}")
        return wrap(_place(_from_torch(t, None, "from_torch"), None if device is None else _dev(device)))

    # --- constant tensors ------------------------------------------------------------------
    @staticmethod
    def zeros(shape: Any, dtype: Any = DType.F32, device: Any = _CPU) -> Tensor:
        """``Tensor::zeros(shape, dtype, &device)``. PyTorch: ``torch.zeros``."""
        d = _dt(dtype, "zeros", shape)
        return wrap(_place(_zeros(shape=_shape(shape), dtype=d.np), _dev(device)))

    @staticmethod
    def ones(shape: Any, dtype: Any = DType.F32, device: Any = _CPU) -> Tensor:
        """``Tensor::ones(shape, dtype, &device)``. PyTorch: ``torch.ones``."""
        d = _dt(dtype, "ones", shape)
        return wrap(_place(_ones(shape=_shape(shape), dtype=d.np), _dev(device)))

    @staticmethod
    def empty(shape: Any, dtype: Any = DType.F32, device: Any = _CPU) -> Tensor:
        """``Tensor::empty`` (uninitialised in Candle): zeros here."""
        return CreationMixin.zeros(shape, dtype, device)

    @staticmethod
    def full(value: Any, shape: Any, device: Any = _CPU, dtype: Any = None) -> Tensor:
        """``Tensor::full(value, shape, &device)``; dtype from ``value`` (float -> F32) unless given; an integer
        dtype refuses a value it cannot hold (PyTorch: ``torch.full``, which raises likewise for 300 as uint8)."""
        v = _fill_scalar(value, "full")
        if dtype is None:
            d = infer_dtype(v, "full")
        else:
            d = _dt(dtype, "full")
            if d.np in _INT_RANGE and isinstance(v, (int, float, np.generic)):
                _check_int_scalar(v, d.np, "full")
        return wrap(_place(_full(_host_scalar(v, d.np), shape=_shape(shape), dtype=d.np), _dev(device)))

    def zeros_like(self) -> Tensor:
        """``t.zeros_like()``: zeros with this tensor's shape, dtype and device."""
        a = self._a
        return wrap(_place(_zeros(shape=a.shape, dtype=a.dtype), _like_dev(a)))

    def ones_like(self) -> Tensor:
        """``t.ones_like()``."""
        a = self._a
        return wrap(_place(_ones(shape=a.shape, dtype=a.dtype), _like_dev(a)))

    def empty_like(self) -> Tensor:
        """``t.empty_like()`` (zeros here: JAX has no uninitialised memory)."""
        return self.zeros_like()

    def full_like(self, value: Any) -> Tensor:
        """``torch.full_like(t, value)``: ``value`` cast to this tensor's dtype."""
        a = self._a
        v = _fill_scalar(value, "full_like")
        if a.dtype in _INT_RANGE and isinstance(v, (int, float, np.generic)):
            _check_int_scalar(v, a.dtype, "full_like")
        return wrap(_place(_full(_host_scalar(v, a.dtype), shape=a.shape, dtype=a.dtype), _like_dev(a)))

    # --- ranges and structured matrices ------------------------------------------------------
    @staticmethod
    def arange(start: Any, end: Any, device: Any = _CPU, dtype: Any = None) -> Tensor:
        """``Tensor::arange(start, end, &device)``: ``[start, end)`` with step 1.

        Ints give U32 (I32/I64 when negative), floats F32, unless ``dtype`` is given.
        """
        return CreationMixin.arange_step(start, end, 1, device, dtype=dtype)

    @staticmethod
    def arange_step(start: Any, end: Any, step: Any, device: Any = _CPU, dtype: Any = None) -> Tensor:
        """``Tensor::arange_step(start, end, step, &device)``; negative steps count down.

        Raises ``step cannot be zero``. Element ``i`` is ``start + i * step`` (no accumulated
        rounding; bf16/f16 computed in f32 and rounded once). With an integer ``dtype`` every value
        must fit it (never wrapped). PyTorch: ``torch.arange(start, end, step)``.
        """
        start = _static_number(start, "start", "arange")
        end = _static_number(end, "end", "arange")
        step = _static_number(step, "step", "arange")
        for name, v in (("start", start), ("end", end), ("step", step)):
            if isinstance(v, float) and not math.isfinite(v):
                raise errors.InvalidArgument(f"arange: {name} must be a finite number, got {v}")
        if step == 0:
            raise errors.Msg("step cannot be zero")
        all_int = isinstance(start, int) and isinstance(end, int) and isinstance(step, int)
        if dtype is not None:
            d = _dt(dtype, "arange")
        elif all_int:
            d = int_dtype_of_range(min(start, end), max(start, end), "arange")
        else:
            d = DType.F32
        if all_int:
            n = max(0, -((start - end) // step))  # ceil((end - start) / step)
        else:
            n = max(0, math.ceil((end - start) / step))
        check_elem_count((n,), "arange")
        if d.is_int() and not all_int:
            # float start / step with an integer dtype: the values must be integers (as Tensor([1.5],
            # dtype=I32) raises); integral ones take the exact integer path below, range check included
            for v in (start, step):
                if isinstance(v, float) and not v.is_integer():
                    raise _not_integral("arange", v, d.np)
            start, step = int(start), int(step)
        if d.is_int():
            cdt = d.np  # exact integer arithmetic, modular for an unsigned dtype and a negative step
            lo, hi = _INT_RANGE[cdt]
            for v in (start, start + (n - 1) * step) if n else ():
                if not lo <= v <= hi:
                    raise _does_not_fit("arange", v, cdt)
            bits = 8 * cdt.itemsize
            if cdt.kind == "u":
                step %= 2**bits
        elif x64_enabled():
            cdt = np.float64
        else:
            cdt = np.float32
        a = _arange(np.asarray(start, cdt), np.asarray(step, cdt), n=n, dtype=d.np)
        return wrap(_place(a, _dev(device)))

    @staticmethod
    def eye(n: SupportsIndex, dtype: Any = DType.F32, device: Any = _CPU) -> Tensor:
        """``Tensor::eye(n, dtype, &device)``: the ``n x n`` identity."""
        return _tri_like(n, dtype, device, "eye", k=1, upper=False)

    @staticmethod
    def tril2(n: SupportsIndex, dtype: Any = DType.F32, device: Any = _CPU) -> Tensor:
        """``Tensor::tril2(n, dtype, &device)``: ones on and below the diagonal."""
        return _tri_like(n, dtype, device, "tril2", k=0, upper=False)

    @staticmethod
    def triu2(n: SupportsIndex, dtype: Any = DType.F32, device: Any = _CPU) -> Tensor:
        """``Tensor::triu2(n, dtype, &device)``: ones on and above the diagonal."""
        return _tri_like(n, dtype, device, "triu2", k=0, upper=True)

    @staticmethod
    def meshgrid(tensors: Sequence[Any], xy_indexing: bool) -> list[Tensor]:
        """``Tensor::meshgrid(&[a, b, ..], xy_indexing)``: coordinate grids from 1-D tensors.

        ``xy_indexing=False`` gives shape ``(len(a), len(b), ...)`` (``indexing="ij"``);
        ``True`` swaps the first two output dims (``indexing="xy"``, as numpy / PyTorch).
        """
        try:
            ts = list(tensors)
        except TypeError:
            raise errors.ArgumentType(f"meshgrid expects a list of tensors, got {type(tensors).__name__}") from None
        if len(ts) < 2:
            raise errors.OpRequiresAtLeastTwoTensors("meshgrid")
        arrs = []
        for t in ts:
            a = as_jax_array(t, None, "meshgrid")
            if a.ndim != 1:
                raise errors.UnexpectedNumberOfDims(1, a.ndim, a.shape, "meshgrid")
            arrs.append(a)
        first = arrs[0]
        for a in arrs[1:]:
            if a.dtype != first.dtype:
                raise errors.DTypeMismatchBinaryOp(wrap(first).dtype, wrap(a).dtype, "meshgrid")
        return [wrap(g) for g in _meshgrid(*arrs, xy=bool(xy_indexing))]

    # --- random ------------------------------------------------------------------------------
    @staticmethod
    def rand(lo: Any, up: Any = _NO_SHAPE, shape: Any = _NO_SHAPE, device: Any = _CPU_BY_DEFAULT, *,
             key: Any = None, dtype: Any = None) -> Tensor:  # fmt: skip
        """``Tensor::rand(lo, up, shape, &device)``: uniform on ``[lo, up)``, F32 unless ``dtype``.

        Without ``key`` it draws from ``device``'s seeded generator (eager only: raises
        ``TracingError`` under jit); with ``key=`` it is a pure function of the key.
        PyTorch: ``torch.rand(shape) * (up - lo) + lo``; PyTorch's ``rand(2, 3)`` / ``rand(2, 3, 4)``
        spellings raise, naming Candle's.
        """
        _torch_rand_spelling("rand", lo, up, shape, "0.0, 1.0", device)
        device = _CPU if device is _CPU_BY_DEFAULT else device
        d = _rand_dtype(dtype, "rand")
        lo_c, up_c = _concrete(lo, "rand", "lo"), _concrete(up, "rand", "up")
        if lo_c is not None and up_c is not None and lo_c > up_c:
            raise errors.Msg(f"rand: lo must not exceed up, got lo={lo_c}, up={up_c}")
        dev = _dev(device)
        k, c = _key_for(key, dev, "rand")
        lo, up = _bound(unwrap(lo)), _bound(unwrap(up))
        dims = _bounds_shape(shape, "rand", lo=lo, up=up)
        return wrap(_place(_uniform(k, c, lo, up, shape=dims, dtype=d.np), dev))

    @staticmethod
    def randn(mean: Any, std: Any = _NO_SHAPE, shape: Any = _NO_SHAPE, device: Any = _CPU_BY_DEFAULT, *,
              key: Any = None, dtype: Any = None) -> Tensor:  # fmt: skip
        """``Tensor::randn(mean, std, shape, &device)``: normal samples, F32 unless ``dtype``.

        Keys as in :meth:`rand`. PyTorch: ``torch.randn(shape) * std + mean``; PyTorch's
        ``randn(2, 3)`` / ``randn(2, 3, 4)`` spellings raise, naming Candle's.
        """
        _torch_rand_spelling("randn", mean, std, shape, "0.0, 1.0", device)
        device = _CPU if device is _CPU_BY_DEFAULT else device
        d = _rand_dtype(dtype, "randn")
        _concrete(mean, "randn", "mean")
        std_c = _concrete(std, "randn", "std")
        if std_c is not None and not std_c >= 0:
            raise errors.Msg(f"randn: std must be non-negative, got {std_c}")
        dev = _dev(device)
        k, c = _key_for(key, dev, "randn")
        mean, std = _bound(unwrap(mean)), _bound(unwrap(std))
        dims = _bounds_shape(shape, "randn", mean=mean, std=std)
        return wrap(_place(_normal(k, c, mean, std, shape=dims, dtype=d.np), dev))

    @staticmethod
    def rand_f64(lo: float, up: float, shape: Any, dtype: Any, device: Any = _CPU, *, key: Any = None) -> Tensor:
        """Candle's ``Var::rand_f64(lo, up, shape, dtype, &device)`` as a Tensor (Candle's ``Tensor`` keeps
        ``rand_f64_impl`` crate-private): :meth:`rand` with the dtype given."""
        return CreationMixin.rand(lo, up, shape, device, key=key, dtype=dtype)

    @staticmethod
    def randn_f64(mean: float, std: float, shape: Any, dtype: Any, device: Any = _CPU, *, key: Any = None) -> Tensor:
        """Candle's ``Var::randn_f64(mean, std, shape, dtype, &device)`` as a Tensor (Candle's ``Tensor`` keeps
        ``randn_f64_impl`` crate-private): :meth:`randn` with the dtype given."""
        return CreationMixin.randn(mean, std, shape, device, key=key, dtype=dtype)

    def rand_like(self, lo: Any, up: Any, *, key: Any = None) -> Tensor:
        """``t.rand_like(lo, up)``: uniform samples with this tensor's shape, dtype and device."""
        if not self.dtype.is_float():
            raise errors.UnsupportedDTypeForOp(self.dtype, "rand_like", "random tensors are float-only")
        a = self._a
        return CreationMixin.rand(lo, up, a.shape, _tensor_dev(self), key=key, dtype=self.dtype)

    def randn_like(self, mean: Any, std: Any, *, key: Any = None) -> Tensor:
        """``t.randn_like(mean, std)``: normal samples with this tensor's shape, dtype and device."""
        if not self.dtype.is_float():
            raise errors.UnsupportedDTypeForOp(self.dtype, "randn_like", "random tensors are float-only")
        a = self._a
        return CreationMixin.randn(mean, std, a.shape, _tensor_dev(self), key=key, dtype=self.dtype)


# --- helpers used above -----------------------------------------------------------------------------
def _like_dev(a: Any) -> Device | None:
    """The device to place a *_like result on: None (JAX's default) on a one-device machine."""
    if isinstance(a, _Tracer) or len(jax.devices()) == 1:
        return None
    devs = a.devices()
    return Device.from_jax(next(iter(devs))) if len(devs) == 1 else None


def _tensor_dev(t: TensorBase) -> Device:
    if isinstance(t._a, _Tracer):
        return _CPU
    return t.device


def _tri_like(n: Any, dtype: Any, device: Any, op_name: str, *, k: int, upper: bool) -> Any:
    n = int_arg(n, op_name, "n")
    if n < 0:
        raise errors.Msg(f"{op_name}: n must be a non-negative int, got {n!r}")
    d = _dt(dtype, op_name)
    check_elem_count((n, n), op_name)
    return wrap(_place(_tri(n=n, dtype=d.np, k=k, upper=upper), _dev(device)))


@op(static=("xy",))
def _meshgrid(*arrs: Any, xy: bool) -> list[Any]:
    return jnp.meshgrid(*arrs, indexing="xy" if xy else "ij")

