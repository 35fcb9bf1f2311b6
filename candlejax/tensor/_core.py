"""The Tensor primitives: wrapping one ``jax.Array``, its pytree registration, and the checks
every topic module shares.

requires: jax, candlejax.dtype / device / shape / errors
provides: ``wrap``, ``TensorBase`` (``_a``, ``_wrap``, ``dtype``, ``shape``, ``device``, ``rank``, ``dims``,
``dim``, ``dims0..5``, ``elem_count``, ``jax``), ``unwrap``, ``check_same_shape``,
``check_same_dtype``, ``check_same_device``, ``check_float``, ``check_int``, ``int_arg`` / ``traced_int``
(positions, lengths and counts).
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from candlejax import _reload, errors
from candlejax.device import Device, single_device
from candlejax.dtype import NUMPY_TO_DTYPE, DType, from_array_dtype
from candlejax.shape import Dims, Rank, Shape, resolve_dim

_reload.refuse(__name__)  # a re-run would redefine the classes of existing objects

if TYPE_CHECKING:  # Tensor is built on TensorBase: candlejax.tensor sets this name at runtime (get_type_hints)
    from candlejax.tensor import Tensor

_new = object.__new__

# ``t.shape`` / ``t.rank`` stay what a tuple / an int is to JAX's tree functions and jitted arguments
jax.tree_util.register_pytree_node(Dims, lambda d: (tuple(d), None), lambda _, dims: Dims(dims))
jax.tree_util.register_pytree_node(Rank, lambda r: ((int(r),), None), lambda _, n: n[0])
_Tensor: Any = None  # set by candlejax.tensor once Tensor exists


class TensorBase:
    """Holds one ``jax.Array`` (or a tracer under jit) in ``_a``. Immutable."""

    __slots__ = ("__weakref__", "_a")  # weakref.ref(t), as for torch tensors and numpy arrays

    _a: Any

    @staticmethod
    def _wrap(a: Any) -> Tensor:
        """A new ``Tensor`` around ``a`` (always ``Tensor``, also when called on a subclass)."""
        t = _new(_Tensor)
        t._a = a
        return t

    # --- properties (as Candle's Python binding, numpy and PyTorch) ----------------------------
    @property
    def dtype(self) -> DType:
        """The element type, e.g. ``DType.F32``."""
        try:
            return NUMPY_TO_DTYPE[self._a.dtype]
        except KeyError:
            return from_array_dtype(self._a.dtype)

    @property
    def shape(self) -> Dims:
        """The dims as a tuple, e.g. ``(2, 3)``; Rust Candle's ``t.shape()`` gives the ``Shape``."""
        return Dims(self._a.shape)

    @property
    def rank(self) -> Rank:
        """The number of dims; also callable as Rust Candle's ``t.rank()``."""
        return Rank(self._a.ndim)

    @property
    def ndim(self) -> int:
        return self._a.ndim

    @property
    def device(self) -> Device:
        """The Device the data lives on (``Device.Cpu`` under tracing)."""
        a = self._a
        if isinstance(a, jax.core.Tracer):
            return Device.Cpu if single_device() else _tracer_device(a)
        devs = a.devices()
        if len(devs) != 1:
            return Device.from_jax(min(devs, key=lambda d: d.id))
        return Device.from_jax(next(iter(devs)))

    @property
    def jax(self) -> jax.Array:
        """The underlying ``jax.Array`` (zero-copy)."""
        return self._a

    # --- Candle's shape methods ----------------------------------------------------------------
    def dims(self) -> Dims:
        """The dims as a tuple that also equals the list of the same ints, as Candle's ``&[usize]``
        compares with ``&[2, 3]`` / ``vec![2, 3]`` (``t.dims() == [2, 3]``)."""
        return Dims(self._a.shape)

    def dim(self, d: Any = None) -> int:
        """The size of dim ``d`` (int, negative int or ``D``); PyTorch's ``dim()`` (no argument) is the rank."""
        s = self._a.shape
        if d is None:
            return len(s)
        return s[resolve_dim(d, s, "dim")]

    def elem_count(self) -> int:
        n = 1
        for d in self._a.shape:
            n *= d
        return n

    @property
    def nelement(self) -> int:
        """The number of elements (candle-pyo3's ``t.nelement``; Candle: ``elem_count()``)."""
        return self.elem_count()

    def layout_shape(self) -> Shape:
        return Shape(self._a.shape)

    def _dimsn(self, n: int) -> tuple[int, ...]:
        s = self._a.shape
        if len(s) != n:
            raise errors.UnexpectedNumberOfDims(n, len(s), s, f"dims{n}")
        return s

    def dims0(self) -> tuple[()]:
        self._dimsn(0)
        return ()

    def dims1(self) -> int:
        return self._dimsn(1)[0]

    def dims2(self) -> tuple[int, int]:
        return self._dimsn(2)  # type: ignore[return-value]

    def dims3(self) -> tuple[int, int, int]:
        return self._dimsn(3)  # type: ignore[return-value]

    def dims4(self) -> tuple[int, int, int, int]:
        return self._dimsn(4)  # type: ignore[return-value]

    def dims5(self) -> tuple[int, int, int, int, int]:
        return self._dimsn(5)  # type: ignore[return-value]

    # --- interop -------------------------------------------------------------------------------
    def __jax_array__(self) -> jax.Array:
        return self._a

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if isinstance(self._a, jax.core.Tracer):
            raise errors.TracingError(
                "cannot convert a traced Tensor to numpy inside jax.jit/grad/vmap; return it from the"
                " traced function and convert outside"
            )
        out = np.asarray(_live(self._a, "__array__"))  # a read-only view of the buffer on the CPU
        if dtype is not None and np.dtype(dtype) != out.dtype:
            if copy is False:  # numpy 2's contract, as jax.Array's __array__ keeps it
                raise errors.Msg(
                    f"__array__: copy=False, but converting a {self.dtype.as_str()} Tensor to {np.dtype(dtype)}"
                    " needs a copy; use np.asarray(t, dtype) or t.to_dtype(..) first"
                )
            return out.astype(dtype)
        # np.array(t) asks for a copy (copy=True): a fresh writable array, as np.array(jax_array) gives
        return out.copy() if copy else out

    def __reduce__(self) -> Any:
        """pickle: the values, dtype and device (as ``pickle.dumps(torch_tensor)``); a traced Tensor raises.
        Unpickling a Tensor of a device that is not present raises ``InvalidDevice``, as torch does."""
        a = concrete_array(self._a, "pickle")
        dev = self.device
        if dev == Device.Cpu or len(a.devices()) != 1:
            return (wrap, (a,))
        return (_unpickle_on, (np.asarray(a), dev))

    def __copy__(self) -> Tensor:
        return wrap(self._a)

    def __deepcopy__(self, memo: dict) -> Tensor:
        """``copy.deepcopy(t)``: a Tensor with its own buffer (``torch.Tensor.__deepcopy__``); traced ones too."""
        return wrap(copy.deepcopy(_live(self._a, "deepcopy"), memo))

    def __len__(self) -> int:
        if not self._a.shape:
            raise TypeError("len() of a rank-0 tensor")
        return self._a.shape[0]

    def __iter__(self) -> Iterator[Tensor]:
        """``for row in t``: ``t[0]``, ``t[1]``, ... along dim 0, as torch and numpy; a rank-0 tensor raises
        ``ArgumentType`` (a TypeError, torch's ``iteration over a 0-d tensor``)."""
        if not self._a.shape:
            raise errors.ArgumentType("iteration over a 0-d tensor (use t.to_scalar() for its value)")
        return (self[i] for i in range(self._a.shape[0]))  # type: ignore[index]

    def __hash__(self) -> int:
        return id(self)

    def __contains__(self, element: Any) -> bool:
        """``x in t``: whether any element equals the number ``x`` (or any broadcast row equals the Tensor
        ``x``), as ``torch.Tensor.__contains__`` and numpy; other types raise ``ArgumentType``."""
        if isinstance(element, TensorBase):
            v = element._a
        elif isinstance(element, (int, float, np.number, np.bool_)):
            v = element
        else:
            raise errors.ArgumentType(
                f"`in`: a Tensor contains numbers or Tensors, got {type(element).__name__} {element!r}"
            )
        try:
            hit = jax.numpy.any(self._a == v)
        except (TypeError, ValueError):  # shapes that do not broadcast
            raise errors.BroadcastIncompatibleShapes(self._a.shape, v.shape, "in") from None
        return bool(wrap(hit))

    def __bool__(self) -> bool:
        if self.elem_count() != 1:
            raise errors.Msg(
                f"the truth value of a tensor with shape {errors.fmt_shape(self.shape)} is ambiguous;"
                " use .sum_all(), .max_all() or .to_scalar()"
            )
        a = self._a
        if isinstance(a, jax.core.Tracer):  # values known under jax.grad alone, unknown under jit / vmap
            try:
                return bool(a.reshape(()))
            except jax.errors.ConcretizationTypeError:
                raise errors.TracingError(
                    "the truth value of a traced Tensor is unknown inside jax.jit/vmap (a Python `if`, `while`,"
                    " `and`/`or` or `assert` on tensor values): select with mask.where_cond(on_true, on_false) or"
                    " jax.lax.cond, or decide outside the traced function"
                ) from None
        return bool(np.asarray(a).reshape(()))


def multi_device() -> bool:
    """Whether cross-device checks are needed (more than one device visible); cached."""
    return not single_device()


def aval(a: Any) -> Any:
    """The abstract value (shape, dtype) of a jax array or tracer; the array itself otherwise."""
    try:
        return a.aval
    except AttributeError:
        return a


def concrete_array(a: Any, op: str) -> Any:
    """``a`` itself; a tracer raises TracingError, a donated buffer DeletedBuffer, naming ``op``."""
    if isinstance(a, jax.core.Tracer):
        raise errors.TracingError(
            f"{op}: cannot serialize a traced Tensor ({a.dtype}{list(a.shape)}) inside jax.jit/grad/vmap; return it"
            " from the traced function and pickle it outside"
        )
    return _live(a, op)


def _live(a: Any, op: str) -> Any:
    """``a`` itself, or DeletedBuffer naming ``op`` when its buffer was donated (deleted)."""
    if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer) and a.is_deleted():
        raise errors.DeletedBuffer(op)
    return a


def _tracer_device(a: Any) -> Device:
    return Device.Cpu


def _unpickle_on(a: Any, device: Device) -> Any:
    """A pickled Tensor back on its device (see ``TensorBase.__reduce__``)."""
    return wrap(jax.device_put(a, device.jax_device))


def wrap(a: Any) -> Tensor:
    """A new ``Tensor`` around the jax array (or tracer) ``a``."""
    t = _new(_Tensor)
    t._a = a
    return t


def unwrap(x: Any) -> Any:
    """The jax array behind a Tensor (other values pass through)."""
    return x._a if isinstance(x, TensorBase) else x


def int_arg(x: Any, op: str, what: str) -> int:
    """``x`` as a Python int, for an op's position, length or count (``narrow``'s ``start``, ``chunk``'s
    ``chunks``): an int, a numpy integer or a concrete 0-d integer array / Tensor. Floats, bools, strings
    and None raise :class:`candlejax.errors.NotAnInteger` (candle-pyo3: ``'float' object cannot be
    interpreted as an integer``)."""
    if type(x) is int:  # the fast path
        return x
    v = x._a if isinstance(x, TensorBase) else x
    if isinstance(v, jax.core.Tracer):
        raise errors.NotAnInteger(
            op, what, x, "a Python int is needed here, not a value traced under jax.jit", _traced(v)
        )
    if not isinstance(v, (bool, np.bool_)) and _int_dtype_or_none(getattr(v, "dtype", None)):
        try:
            return operator.index(v)
        except TypeError:
            pass
    raise errors.NotAnInteger(op, what, x)


def float_arg(x: Any, op: str, what: str) -> float:
    """``x`` as a finite Python float, for an op's real-valued setting (an eps, a scale, a probability):
    an int, a float, a numpy number or a concrete 0-d array / Tensor. Strings, None, bools and complex
    values raise :class:`candlejax.errors.ArgumentType`; NaN and infinities ``InvalidArgument``."""
    if type(x) is float and math.isfinite(x):  # the fast path
        return x
    v = x._a if isinstance(x, TensorBase) else x
    if isinstance(v, (bool, np.bool_, str, bytes, complex, np.complexfloating)) or not hasattr(v, "__float__"):
        raise errors.ArgumentType(f"{op}: {what} must be a number, got {x!r} ({type(x).__name__})")
    if isinstance(v, jax.core.Tracer):
        raise errors.ArgumentType(f"{op}: {what} must be a Python number, not a value traced under jax.jit")
    try:
        f = float(v)
    except (TypeError, ValueError):  # a multi-element array
        raise errors.ArgumentType(f"{op}: {what} must be a number, got {x!r} ({type(x).__name__})") from None
    if not math.isfinite(f):
        raise errors.InvalidArgument(f"{op}: {what} must be finite, got {f}")
    return f


def _int_dtype_or_none(dt: Any) -> bool:
    if dt is None:
        return True
    try:
        return bool(np.issubdtype(dt, np.integer))
    except TypeError:  # a foreign dtype (torch): leave it to __index__
        return "bool" not in str(dt)


def traced_int(x: Any, op: str, what: str) -> Any:
    """The traced integer scalar behind ``x`` (a tracer or a Tensor holding one) for an offset that may be
    traced under jit, or None when ``x`` is not traced; a traced float, bool or non-scalar raises."""
    v = x._a if isinstance(x, TensorBase) else x
    if not isinstance(v, jax.core.Tracer):
        return None
    if v.ndim != 0 or not np.issubdtype(v.dtype, np.integer):
        raise errors.NotAnInteger(op, what, x, f"a traced {what} must be an integer scalar", _traced(v))
    return v


def _traced(v: Any) -> str:
    return f"a traced {v.dtype}{list(v.shape)} value"


def check_same_shape(op: str, a: TensorBase, b: TensorBase) -> None:
    if a._a.shape != b._a.shape:
        raise errors.ShapeMismatchBinaryOp(a._a.shape, b._a.shape, op)


def check_same_dtype(op: str, a: TensorBase, b: TensorBase) -> None:
    if a._a.dtype != b._a.dtype:
        raise errors.DTypeMismatchBinaryOp(a.dtype, b.dtype, op)


def check_same_device(op: str, *ts: TensorBase) -> None:
    """Raise ``DeviceMismatchBinaryOp`` when concrete tensors live on different devices.

    Free on a single-device machine; under tracing devices are the tracer's business.
    """
    if single_device() or len(ts) < 2:
        return
    first = None
    for t in ts:
        a = t._a
        if isinstance(a, jax.core.Tracer) or not hasattr(a, "devices"):
            continue
        if first is None:
            first = t
        elif a.devices() != first._a.devices():
            raise errors.DeviceMismatchBinaryOp(first.device, t.device, op)


def check_binary(op: str, a: TensorBase, b: Any) -> None:
    """Candle's strict binary-op checks: same shape, same dtype, same device."""
    if not isinstance(b, TensorBase):
        raise not_a_tensor(op, "rhs", b)
    check_same_shape(op, a, b)
    check_same_dtype(op, a, b)
    check_same_device(op, a, b)


def check_float(op: str, t: TensorBase) -> None:
    if not t.dtype.is_float():
        raise errors.UnsupportedDTypeForOp(t.dtype, op, "convert with .to_dtype(DType.F32) first")


def check_int(op: str, t: TensorBase, what: str = "index") -> None:
    if not t.dtype.is_int():
        raise errors.UnexpectedDType(
            DType.U32, t.dtype, f"{op}: {what} tensor must have an integer dtype (u8, u32, i16, i32, i64)"
        )


def not_a_tensor(op: str, what: str, x: Any) -> errors.Msg:
    """The error for a non-Tensor operand. A type that is often passed by mistake where a tensor
    belongs says what to write instead in its class attribute ``not_a_tensor_hint`` (a KV cache and
    the pair its ``append`` returns: Candle's ``let (k, v) = cache.append(..)`` ported as is)."""
    hint = getattr(type(x), "not_a_tensor_hint", None)
    return errors.Msg(f"{op}: expected a Tensor as {what}, got {type(x).__name__}" + (f" ({hint})" if hint else ""))


_reload.loaded(__name__)
