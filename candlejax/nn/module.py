"""Module, ModuleT, Var and Buffer: layers as pytrees whose parameters carry checkpoint names.

requires: jax, candlejax.tensor (Tensor, wrap), candlejax.errors
provides: ``Var`` (trainable, named), ``Buffer`` (named, not trained), ``Module``, ``ModuleT``,
``named_vars``, ``LayerInputShape`` and the helpers layers share.

Every ``Module`` subclass registers itself as a JAX pytree when the class is created: Tensors,
Vars, jax/numpy arrays, submodules and lists/tuples/dicts holding them are children; everything
else (ints, floats, strings, dtypes, configs, callables, ``None``) is static aux data. So a model
passes straight through ``jax.jit``, ``jax.grad``, ``jax.vmap`` and ``lax.scan``, and ``cj.grad``
returns gradients as a tree shaped like the model.

A ``Var`` (Candle's ``Var``) is a Tensor that knows its checkpoint name (``"first.weight"``, static
data) and a shared handle whose value an optimizer or ``VarMap.load`` sets in place (it flattens
to its current value, so JAX transforms see plain arrays); only Vars are trained. A ``Buffer`` is
a named Tensor that is saved with the model but
never differentiated (BatchNorm running statistics). Plain Tensors (rotary tables) are neither
trained nor saved. Ops on a Var or a Buffer return plain Tensors.
"""

from __future__ import annotations

import contextlib
import copy
import html
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, SupportsIndex

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import _reload, errors
from candlejax.device import Device
from candlejax.dtype import DType, check_width, to_dtype, x64_enabled
from candlejax.errors import fmt_shape
from candlejax.io.safetensors import MmapedSafetensors, save
from candlejax.shape import as_shape
from candlejax.tensor import Tensor
from candlejax.tensor._core import TensorBase, concrete_array, unwrap, wrap
from candlejax.tensor.creation import _is_candle_pyo3, _is_torch, as_jax_array

_reload.refuse(__name__)  # a re-run would redefine the classes of existing objects

__all__ = [
    "Buffer",
    "DonatedBuffer",
    "LayerInputShape",
    "Module",
    "ModuleT",
    "NamedTensor",
    "StaticValue",
    "Var",
    "in_place_updates_kept",
    "keeping_in_place_updates",
    "as_array",
    "named_buffers",
    "named_tensors",
    "named_vars",
]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
class CallableFloat(float):
    """A layer's float setting (``ln.eps``) that Rust Candle's accessor call ``ln.eps()`` also reads."""

    __slots__ = ()

    def __call__(self) -> float:
        return float(self)


class CallableBool(int):
    """A layer's bool setting (``ln.remove_mean``, ``prelu.is_scalar``) that Rust Candle's accessor
    call ``ln.remove_mean()`` also reads. ``bool`` cannot be subclassed: this is an int 0 / 1 that
    tests, compares and prints as the bool."""

    __slots__ = ()

    def __new__(cls, value: Any) -> CallableBool:
        return super().__new__(cls, bool(value))

    def __call__(self) -> bool:
        return bool(self)

    def __repr__(self) -> str:
        return repr(bool(self))

    __str__ = __repr__


class CallableConfig:
    """Config dataclasses held by layers (``conv.config``) that Rust Candle's ``conv.config()`` reads."""

    __slots__ = ()

    def __call__(self) -> Any:
        return self


def as_array(x: Any, dtype: Any = None, device: Any = None) -> Any:
    """The ``jax.Array`` (or tracer) behind ``x``: a Tensor, a jax/numpy array or a Python value."""
    if isinstance(x, TensorBase):
        a = x._a
    elif isinstance(x, jax.Array):
        a = x
    elif _is_torch(x) or _is_candle_pyo3(x):  # np.asarray refuses torch Parameters, bf16 and candle-pyo3
        return as_array(wrap(as_jax_array(x, None, "Var/Tensor creation")), dtype, device)
    else:
        if dtype is not None:
            dt = check_width(to_dtype(dtype))
            a = _numeric(x).astype(dt.np, copy=False)
        else:
            a = _host_value(x)
        a = jax.device_put(a, Device.coerce(device).jax_device) if device is not None else jnp.asarray(a)
        return a
    if dtype is not None:
        dt = check_width(to_dtype(dtype))
        if a.dtype != dt.np:
            a = a.astype(dt.np)
    if device is not None and not isinstance(a, jax.core.Tracer):
        a = jax.device_put(a, Device.coerce(device).jax_device)
    return a


def owned_copy(a: Any, src: Any) -> Any:
    """``a``, the array behind ``src``, as a buffer of its own when ``src`` (a Tensor or jax array the
    caller keeps) holds it: a Var set from it is later donated, which must not delete ``src``."""
    if a is unwrap(src) and isinstance(a, jax.Array) and not _tracer(a):
        return jnp.array(a, copy=True)
    return a


def _numeric(x: Any) -> np.ndarray:
    """``np.asarray(x)`` for numbers, arrays of numbers and (regular) nested lists of them; anything else
    (None, strings, ragged lists, complex values) raises ``ArgumentType``."""
    try:
        a = np.asarray(x)
    except (ValueError, TypeError):
        a = None
    if a is None or a.dtype.kind in "OUScMm" or a.dtype.fields is not None:  # ml_dtypes' bfloat16 is kind V
        raise errors.ArgumentType(
            f"expected a Tensor, an array or (nested lists of) real numbers, got {type(x).__name__}"
            + ("" if a is None or a.dtype.kind == "O" else f" of dtype {a.dtype}")
        )
    return a


def _host_value(x: Any) -> np.ndarray:
    """Host data as numpy without silent narrowing.

    numpy arrays keep their dtype: f64/i64 need x64 mode (``candlejax.enable_x64()``) or raise.
    Python floats become F32 (Candle's default); Python ints I32 when they fit, else they raise.
    """
    is_np = isinstance(x, (np.ndarray, np.generic))
    a = _numeric(x)
    if a.dtype == np.bool_:
        return a.astype(np.uint8)
    if x64_enabled() or a.dtype.itemsize < 8 or a.dtype.kind not in "iuf":
        return a
    if is_np:
        kind = "f64" if a.dtype.kind == "f" else a.dtype.name
        fix = "np.float32" if a.dtype.kind == "f" else "np.int32 / np.uint32"
        raise errors.UnsupportedDTypeForOp(
            kind, "Var/Tensor creation",
            f"JAX would narrow it to 32 bits silently; convert first with .astype({fix}) or call"
            " candlejax.enable_x64() at startup",
        )
    if a.dtype.kind == "f":
        return a.astype(np.float32)
    if a.size and (a.min() < np.iinfo(np.int32).min or a.max() > np.iinfo(np.int32).max):
        raise errors.UnsupportedDTypeForOp(
            "i64", "Var/Tensor creation",
            "a Python int does not fit in 32 bits and JAX would narrow it silently; call candlejax.enable_x64()"
            " at startup",
        )
    return a.astype(np.int32)


class LayerInputShape(errors.UnexpectedShape):
    """A layer got an input of the wrong shape; the message names the layer path. ``candle`` is the
    text of the error Candle's forward raises for that input, put first when given."""

    def __init__(self, layer: str, expected: str, got: Any, hint: str = "", *, candle: str = ""):
        self.layer, self.expected, self.got = layer, expected, tuple(got)
        detail = f"{layer}: unexpected input shape, expected: {expected}, got: {fmt_shape(got)}"
        if candle:
            errors.Error.__init__(self, f"{candle} ({detail}" + (f"; {hint})" if hint else ")"))
        else:
            errors.Error.__init__(self, detail + (f" ({hint})" if hint else ""))


def layer_name(default: str, *tensors: Any) -> str:
    """A layer's path for error messages: the prefix of its first named parameter."""
    for t in tensors:
        name = getattr(t, "name", "")
        if name:
            return f"{default} '{name.rpartition('.')[0] or name}'"
    return default


# ------------------------------------------------------------------------------------------------
# Var and Buffer
# ------------------------------------------------------------------------------------------------
class DonatedBuffer:
    """What a Var (or a plain Tensor trained as a parameter: ``what="Tensor"``) holds once its buffer
    went to a functional optimizer step: any use raises; ``is_deleted()`` is True, as for the array."""

    __slots__ = ("dtype", "name", "shape", "what")

    def __init__(self, name: str, shape: Any, dtype: Any, what: str = "Var"):
        self.name, self.shape, self.dtype, self.what = name, tuple(shape), dtype, what

    def _raise(self) -> Any:
        __tracebackhide__ = True
        raise errors.DonatedVar(self.name, self.what)

    def is_deleted(self) -> bool:
        """Always True, as ``jax.Array.is_deleted`` of a donated buffer."""
        return True

    def __getattr__(self, k: str) -> Any:  # any probe by numpy / JAX (aval, dtype, __jax_array__, ...)
        if k in _PY_PROBES:
            raise AttributeError(k)
        self._raise()

    def __repr__(self) -> str:
        return f"<donated {self.name!r}>"


_PY_PROBES = frozenset(("__deepcopy__", "__copy__", "__getstate__", "__setstate__", "__length_hint__"))


def _tracer(a: Any) -> bool:
    return isinstance(a, jax.core.Tracer)


class NamedTensor(Tensor):
    """A Tensor with a checkpoint name (static pytree data).

    The object is a *handle*, as Candle's ``Var``: its value (``_a``) can be replaced in place, so a
    VarMap, the Modules built from it and a bound optimizer that share the handle see the same value.
    As a pytree it flattens to its current value, so JAX transforms see plain arrays.
    """

    __slots__ = ("name",)
    name: str

    def __new__(cls, data: Any, name: str = "", *, dtype: Any = None, device: Any = None) -> Any:
        return cls._make(as_array(data, dtype, device), name)

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # construction happens in __new__
        pass

    @classmethod
    def _make(cls, a: Any, name: str = "") -> Any:
        v = object.__new__(cls)
        v._a = a
        v.name = name
        return v

    def __reduce__(self) -> Any:
        """pickle: a handle of the same class, name and value (``nn.Parameter`` pickles as a Parameter)."""
        return (type(self)._make, (concrete_array(self._a, "pickle"), self.name))

    def __copy__(self) -> Any:
        """``copy.copy(v)``: a new handle on the same buffer."""
        return type(self)._make(self._a, self.name)

    def __deepcopy__(self, memo: dict) -> Any:
        """``copy.deepcopy(v)``: a new handle with its own buffer (as ``nn.Parameter``'s deepcopy), so
        ``set`` on one leaves the other alone; Modules and VarMaps copied together keep sharing it."""
        return type(self)._make(copy.deepcopy(self._a, memo), self.name)

    def as_tensor(self) -> Tensor:
        """The current value as a plain Tensor (shares the buffer: a snapshot that a later donating
        optimizer step deletes; the Var itself follows the updates)."""
        return wrap(self._a)

    def into_inner(self) -> Tensor:
        """Candle's ``Var::into_inner``: the value as a plain Tensor."""
        return wrap(self._a)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Candle's accessor methods on layers (``lin.weight()``, ``lin.bias()``, ``bn.running_mean()``)
        are attributes here; called with no arguments the Var returns itself, so ``lin.weight()`` ports.

        >>> Var.zeros((2,), name="w")().name
        'w'
        """
        __tracebackhide__ = True
        if args or kwargs:
            raise errors.Msg(
                f"{type(self).__name__} {self.name!r} is a tensor, not a function: `v()` (Candle's `lin.weight()`)"
                " returns it; to apply a layer call the layer (`lin.forward(x)` or `x.apply(lin)`)"
            )
        return self

    def clone(self) -> Any:
        """Candle's ``Var::clone()``: the same shared handle (an ``Arc`` clone), so ``SGD::new(vec![x.clone()],
        lr)`` trains ``x``. (``Tensor.clone()`` is PyTorch's copy; ``v.copy()`` copies the value here too.)

        >>> v = Var.zeros((2,), name="w")
        >>> v.clone() is v
        True
        """
        return self

    def as_detached_tensor(self) -> Tensor:
        """``Var::as_detached_tensor``: the value with gradients stopped."""
        return wrap(jax.lax.stop_gradient(self._a))

    def set(self, src: Any, *, own: bool = False) -> Any:
        """``Var::set``: replace the value in place (same shape and dtype); returns the Var itself.

        Every Module, VarMap and bound optimizer holding this Var sees the new value. As Candle's,
        which copies ``src`` into the Var's storage, the Var takes a copy of a Tensor or array the
        caller holds, so a donating optimizer step never deletes ``src`` (``own=True``: ``src`` is a
        fresh value nobody else holds, kept as it is).
        """
        __tracebackhide__ = True
        a = as_array(src)
        cur = self._a
        if type(cur) is DonatedBuffer:
            cur = None
        if cur is not None and tuple(a.shape) != tuple(cur.shape):
            raise errors.ShapeMismatchBinaryOp(cur.shape, a.shape, "set")
        if cur is not None and a.dtype != cur.dtype:
            raise errors.DTypeMismatchBinaryOp(self.dtype, to_dtype(a.dtype), "set")
        self._set_value(a if own else owned_copy(a, src))
        return self

    # ``v -= lr * g`` updates the handle, as PyTorch's in-place ops on a Parameter (a plain Tensor rebinds)
    def __iadd__(self, rhs: Any) -> Any:
        """``v += x``: ``v.set(v + x)``; the VarMap, Modules and optimizer holding ``v`` see the change."""
        return self.set(self + rhs, own=True)

    def __isub__(self, rhs: Any) -> Any:
        return self.set(self - rhs, own=True)

    def __imul__(self, rhs: Any) -> Any:
        return self.set(self * rhs, own=True)

    def __itruediv__(self, rhs: Any) -> Any:
        return self.set(self / rhs, own=True)

    def __ipow__(self, rhs: Any) -> Any:
        return self.set(self**rhs, own=True)

    def __ifloordiv__(self, rhs: Any) -> Any:
        return self.set(self // rhs, own=True)

    def __imod__(self, rhs: Any) -> Any:
        return self.set(self % rhs, own=True)

    def _set_value(self, a: Any) -> None:
        """Point the handle at ``a`` (no checks but the tracer-leak one)."""
        if _tracer(a) and not _tracer(self._a):
            raise errors.TracingError(
                f"cannot set Var {self.name!r}, which lives outside jax.jit/grad/vmap, to a traced value: the"
                " tracer would leak; return the new value from the traced function (functional training:"
                " model, state, loss = opt.backward_step(loss_fn, model, state, x, y))"
            )
        self._a = a

    def rename(self, name: str) -> Any:
        """A new handle on the same value under another name."""
        return type(self)._make(self._a, name)

    def __repr__(self) -> str:
        a = self._a
        if type(a) is DonatedBuffer:
            return f"{type(self).__name__}({self.name!r}, donated)"
        dt = "?" if a is None else to_dtype(a.dtype).as_str() if not isinstance(a, jax.core.Tracer) else str(a.dtype)
        shape = "?" if a is None else fmt_shape(a.shape)
        body = ""
        base_repr = Tensor.__repr__
        if base_repr is not object.__repr__ and a is not None and not isinstance(a, jax.core.Tracer):
            try:
                body = "\n" + base_repr(self)
            except Exception:
                body = ""
        return f"{type(self).__name__}({self.name!r}, {dt}{shape}){body}"


class Var(NamedTensor):
    """A trainable parameter: a Tensor that carries its checkpoint name (Candle's ``Var``).

    ``Var(data, name="first.weight")``; ``Var.zeros(shape, dtype, device)``, ``Var.randn(mean, std,
    shape, device)`` and the other Tensor constructors return Vars. A Var is a shared handle:
    ``v.set(t)`` replaces its value in place, and a VarMap, the Modules built from it and an optimizer
    bound to it see the change. Ops on a Var return plain Tensors.

    >>> v = Var.zeros((2,), name="w")
    >>> v.set(Tensor.new([1.0, 2.0])) is v, v.to_vec1()
    (True, [1.0, 2.0])
    """

    __slots__ = ()

    if TYPE_CHECKING:  # set below the class by ``_var_creator``: the Tensor constructors, returning Vars
        @staticmethod
        def from_vec(data: Any, shape: Any, device: Any = Device.Cpu, dtype: Any = None) -> Var: ...

        @staticmethod
        def from_slice(data: Any, shape: Any, device: Any = Device.Cpu, dtype: Any = None) -> Var: ...

        @staticmethod
        def from_iter(iterable: Iterable[Any], device: Any = Device.Cpu, dtype: Any = None) -> Var: ...

        @staticmethod
        def from_numpy(array: np.ndarray, device: Any = None) -> Var: ...

        @staticmethod
        def from_jax(array: Any) -> Var: ...

        @staticmethod
        def full(value: Any, shape: Any, device: Any = Device.Cpu, dtype: Any = None) -> Var: ...

        @staticmethod
        def arange(start: Any, end: Any, device: Any = Device.Cpu, dtype: Any = None) -> Var: ...

        @staticmethod
        def arange_step(start: Any, end: Any, step: Any, device: Any = Device.Cpu, dtype: Any = None) -> Var: ...

        @staticmethod
        def eye(n: SupportsIndex, dtype: Any = DType.F32, device: Any = Device.Cpu) -> Var: ...

        @staticmethod
        def rand(
            lo: Any, up: Any, shape: Any, device: Any = Device.Cpu, *, key: Any = None, dtype: Any = None
        ) -> Var: ...

        @staticmethod
        def randn(
            mean: Any, std: Any, shape: Any, device: Any = Device.Cpu, *, key: Any = None, dtype: Any = None
        ) -> Var: ...

        @staticmethod
        def rand_f64(
            lo: float, up: float, shape: Any, dtype: Any, device: Any = Device.Cpu, *, key: Any = None
        ) -> Var: ...

        @staticmethod
        def randn_f64(
            mean: float, std: float, shape: Any, dtype: Any, device: Any = Device.Cpu, *, key: Any = None
        ) -> Var: ...

        @staticmethod
        def empty(shape: Any, dtype: Any = DType.F32, device: Any = Device.Cpu) -> Var: ...

    def is_variable(self) -> bool:
        """Candle's ``is_variable()``: ``True`` for a Var."""
        return True

    @staticmethod
    def from_tensor(t: Any, name: str = "") -> Var:
        """``Var::from_tensor``: a Var holding a copy of ``t``'s value (as Candle's ``make_var``), so
        that an optimizer donating the Var's buffer never deletes ``t``'s. As in Candle, a Var made
        from a tensor that is not a Var is a new leaf: no gradient flows back through it."""
        a = as_array(t)
        if not _tracer(a):
            a = jnp.array(a, copy=True)
        elif not isinstance(t, Var):  # Candle's make_var: BackpropOp::none()
            a = jax.lax.stop_gradient(a)
        return Var._make(a, name or getattr(t, "name", ""))

    @staticmethod
    def new(data: Any, device: Any = None, name: str = "") -> Var:
        """Candle's ``Var::new(data, device)``: a Var holding ``data``."""
        return Var._make(as_array(data, None, device), name)

    @staticmethod
    def zeros(shape: Any, dtype: Any = DType.F32, device: Any = None, name: str = "") -> Var:
        """Candle's ``Var::zeros(shape, dtype, device)``."""
        dt = check_width(to_dtype(dtype))
        return Var._make(as_array(np.zeros(as_shape(shape), dt.np), None, device), name)

    @staticmethod
    def ones(shape: Any, dtype: Any = DType.F32, device: Any = None, name: str = "") -> Var:
        """Candle's ``Var::ones(shape, dtype, device)``."""
        dt = check_width(to_dtype(dtype))
        return Var._make(as_array(np.ones(as_shape(shape), dt.np), None, device), name)

    def zeros_like(self) -> Var:
        """A new Var of zeros with this one's shape, dtype and device (Candle's ``Tensor::zeros_like``)."""
        return Var._make(Tensor.zeros_like(self)._a)

    def ones_like(self) -> Var:
        """A new Var of ones with this one's shape, dtype and device (Candle's ``Tensor::ones_like``)."""
        return Var._make(Tensor.ones_like(self)._a)

    def full_like(self, value: Any) -> Var:
        """A new Var filled with ``value``, with this one's shape, dtype and device (PyTorch's ``full_like``)."""
        return Var._make(Tensor.full_like(self, value)._a)

    def rand_like(self, lo: Any, up: Any, *, key: Any = None) -> Var:
        """A new Var drawn uniformly from ``[lo, up)``, shaped like this one (Candle's ``Tensor::rand_like``)."""
        return Var._make(Tensor.rand_like(self, lo, up, key=key)._a)

    def randn_like(self, mean: Any, std: Any, *, key: Any = None) -> Var:
        """A new Var drawn from ``N(mean, std²)``, shaped like this one (Candle's ``Tensor::randn_like``)."""
        return Var._make(Tensor.randn_like(self, mean, std, key=key)._a)


def _var_creator(name: str) -> Any:
    base = getattr(Tensor, name)

    def create(*args: Any, **kwargs: Any) -> Var:
        return Var._make(base(*args, **kwargs)._a)

    create.__name__ = create.__qualname__ = name
    create.__doc__ = f"``Var::{name}``: as ``Tensor.{name}``, returning a trainable Var."
    return staticmethod(create)


# Candle's Var has the Tensor constructors, returning Vars (Var::randn, Var::from_vec, ...).
for _n in ("new", "from_vec", "from_slice", "from_iter", "from_numpy", "from_jax", "full", "arange", "arange_step",
           "eye", "rand", "randn", "rand_f64", "randn_f64", "empty"):  # fmt: skip
    if _n != "new" and hasattr(Tensor, _n):
        setattr(Var, _n, _var_creator(_n))


class Buffer(NamedTensor):
    """A named, non-trainable Tensor saved with the model (BatchNorm running statistics).

    PyTorch's registered buffer; Candle keeps these as Vars that the optimizer happens to skip.
    """

    __slots__ = ()


def _named_flatten(v: NamedTensor) -> tuple[tuple[Any], str]:
    a = v._a
    if type(a) is DonatedBuffer:
        a._raise()
    return (a,), v.name


for _cls in (Var, Buffer):
    jax.tree_util.register_pytree_node(_cls, _named_flatten, lambda name, ch, _c=_cls: _c._make(ch[0], name))


# ------------------------------------------------------------------------------------------------
# Module pytree machinery
# ------------------------------------------------------------------------------------------------
_SCALARS = (int, float, complex, str, bytes, bool, DType, Device, type)
# values that are callable without being functions: a dtype, a device, a tensor's shape or rank
# answer Rust Candle's accessor calls such as ``t.dtype()``
_CALLABLE_VALUES = (DType, Device, tuple, int)


def _is_array_like(x: Any) -> bool:
    """An array, or what JAX puts in an array's place in a tree (``jax.ShapeDtypeStruct``, the
    ``ArgInfo`` of ``jit(f).lower(...)``, a tracer): anything whose type has ``shape`` and
    ``dtype``, NumPy scalars excepted (those stay static, as Python numbers do)."""
    if isinstance(x, (jax.Array, np.ndarray, TensorBase)):
        return True
    t = type(x)
    return hasattr(t, "shape") and hasattr(t, "dtype") and not isinstance(x, np.generic)


def _is_dynamic(v: Any) -> bool:
    """Whether a Module attribute is a pytree child (arrays and what holds them) or static data.

    The answer depends on the kind of each leaf, never on the leaf being a concrete array, so a
    tree whose arrays JAX replaced by shape placeholders (``lower``, ``eval_shape``) flattens to
    the same structure."""
    if v is None or isinstance(v, (Module, TensorBase, jax.Array, np.ndarray)):
        return True  # None too: a tree with some leaves replaced by None keeps the same structure
    if isinstance(v, _SCALARS):
        return False
    if _is_array_like(v):
        return True
    if isinstance(v, (list, tuple)):
        return any(_is_dynamic(x) for x in v)
    if isinstance(v, dict):
        return any(_is_dynamic(x) for x in v.values())
    t = type(v)
    if t in _LEAF_TYPES:
        return False
    # Anything else (a registered pytree such as QMatMul, even when callable; a plain function) is a
    # child exactly when it holds arrays.
    leaves = jax.tree_util.tree_leaves(v)
    if len(leaves) == 1 and leaves[0] is v:
        if len(_LEAF_TYPES) < 1024:
            _LEAF_TYPES.add(t)  # not a pytree node (a config dataclass, a function): static, decided once per type
        return False
    return any(_is_array_like(x) for x in leaves)


# Types that are not pytree nodes (every instance is a single leaf and not an array): static fields.
_LEAF_TYPES: set[type] = set()


_CHILD_TYPES = (TensorBase, jax.Array)


class StaticValue:
    """A hashable wrapper for a static field value (falls back to identity for unhashable ones)."""

    __slots__ = ("_h", "value")

    def __init__(self, value: Any):
        self.value = value
        try:
            self._h = hash((type(value), value))
        except TypeError:
            try:
                self._h = hash((type(value), repr(value)))
            except Exception:
                self._h = hash(type(value))

    def __hash__(self) -> int:
        return self._h

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StaticValue) or self._h != other._h:
            return False
        a, b = self.value, other.value
        if a is b:
            return True
        if type(a) is not type(b):
            return False
        try:
            return bool(a == b)
        except Exception:
            return False

    def __repr__(self) -> str:
        return f"static({self.value!r})"


#: static values whose kind can change in place (an empty list that later gets a Module): a
#: Module holding one as a static field is classified again on every flatten
_MUTABLE_STATICS = (list, dict, set, bytearray)


def _flatten(m: Module) -> tuple[list[Any], Any]:
    """``(children, (keys, mask, statics))``. The classification of the attributes is kept on the
    Module (``_tree``: the dynamic keys and the aux data) until an attribute is set or deleted, so
    a jitted call does not classify every attribute of every layer again, and the same aux objects
    make jit's tree comparison an identity check."""
    d = m.__dict__
    try:
        cached = m._tree
    except AttributeError:
        cached = None
    if cached is not None:
        n, dynamic = cached.entry
        if n == len(d):
            return [d[k] for k in dynamic], cached
    return _classify(m, d)


def _classify(m: Module, d: dict[str, Any]) -> tuple[list[Any], Any]:
    forced = type(m)._static_fields
    children = []
    mask = []
    statics = []
    for k, v in d.items():
        if (v is None or isinstance(v, _CHILD_TYPES) or _is_dynamic(v)) and k not in forced:
            children.append(v)
            mask.append(True)
        else:
            if k in forced and isinstance(v, (TensorBase, jax.Array)):
                raise errors.InvalidArgument(
                    f"{type(m).__name__}.{k} is declared static but holds an array; arrays must be"
                    " pytree children (remove it from _static_fields)"
                )
            statics.append(StaticValue(v))
            mask.append(False)
    keys = tuple(d)
    aux = _Aux((keys, tuple(mask), tuple(statics)))
    if not any(isinstance(sv.value, _MUTABLE_STATICS) for sv in statics):
        aux.entry = (len(keys), tuple(k for k, is_dyn in zip(keys, mask) if is_dyn))
        _set_tree(m, aux)
    return children, aux


class _Aux(tuple):
    """A Module's pytree aux data ``(keys, mask, statics)`` (compares as the plain tuple), carrying
    ``entry``: ``(number of attributes, dynamic keys)`` when the classification may be cached."""

    entry: tuple[int, tuple[str, ...]] | None = None


def _flatten_with_keys(m: Module) -> tuple[list[Any], Any]:
    children, aux = _flatten(m)
    keys, mask, _ = aux
    dyn_keys = [k for k, is_dyn in zip(keys, mask) if is_dyn]
    return [(jax.tree_util.GetAttrKey(k), c) for k, c in zip(dyn_keys, children)], aux


def _make_unflatten(cls: type) -> Callable[[Any, Any], Any]:
    new = object.__new__
    set_tree = _set_tree

    def unflatten(aux: Any, children: Any) -> Any:
        keys, mask, statics = aux
        obj = new(cls)
        d = obj.__dict__
        ci = iter(children)
        si = iter(statics)
        for k, is_dyn in zip(keys, mask):
            d[k] = next(ci) if is_dyn else next(si).value
        if getattr(aux, "entry", None) is not None:  # the same structure whatever the children are
            set_tree(obj, aux)
        return obj

    return unflatten


def _register(cls: type) -> None:
    jax.tree_util.register_pytree_with_keys(cls, _flatten_with_keys, _make_unflatten(cls), _flatten)


def _is_var(x: Any) -> bool:
    return isinstance(x, Var)


def _is_named(x: Any) -> bool:
    return isinstance(x, NamedTensor)


def _path_str(path: Any) -> str:
    parts = []
    for p in path:
        if isinstance(p, jax.tree_util.GetAttrKey):
            parts.append(p.name)
        elif isinstance(p, jax.tree_util.SequenceKey):
            parts.append(str(p.idx))
        elif isinstance(p, jax.tree_util.DictKey):
            parts.append(str(p.key))
        else:
            parts.append(str(getattr(p, "key", getattr(p, "idx", p))))
    return ".".join(parts)


def _collect(tree: Any, pred: Callable[[Any], bool]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_named)[0]
    for path, leaf in leaves:
        if pred(leaf):
            name = leaf.name or _path_str(path)
            out.setdefault(name, leaf)
    return out


def named_vars(tree: Any) -> dict[str, Var]:
    """Checkpoint name -> Var for every trainable parameter in ``tree`` (a Module or any pytree).

    Unnamed Vars are named by their attribute path (``"layers.0.weight"``); a Var shared by two
    layers (tied weights) appears once.
    """
    return _collect(tree, _is_var)


def named_buffers(tree: Any) -> dict[str, Buffer]:
    """Checkpoint name -> Buffer (non-trainable named tensors such as running statistics)."""
    return _collect(tree, lambda x: isinstance(x, Buffer))


def named_tensors(tree: Any) -> dict[str, Any]:
    """Every named tensor (Vars and Buffers): what ``save_safetensors`` writes."""
    return _collect(tree, _is_named)


# ------------------------------------------------------------------------------------------------
# safetensors writing (atomic)
# ------------------------------------------------------------------------------------------------
def save_safetensors_dict(tensors: dict[str, Any], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write ``name -> Tensor/array`` to a safetensors file atomically (``candlejax.io.safetensors.save``)."""
    for v in tensors.values():
        if isinstance(v, TensorBase) and type(v._a) is DonatedBuffer:
            v._a._raise()
    def host(v: Any) -> Any:  # numpy arrays keep their dtype (jnp.asarray made f64 f32, int64 int32, w/o x64)
        if isinstance(v, TensorBase):
            return wrap(v._a)
        return v if isinstance(v, (np.ndarray, np.generic, jax.Array)) else wrap(jnp.asarray(v))

    out = {k: host(v) for k, v in tensors.items()}
    save(out, path, {str(k): str(v) for k, v in metadata.items()} if metadata else None)


def _check_state_names(module: Any, mine: dict[str, Any], names: Any, strict: bool, source: str) -> None:
    """``strict``: raise unless the names of a state (dict or file) are exactly the module's tensors."""
    missing = sorted(set(mine) - set(names))
    unexpected = sorted(set(names) - set(mine))
    if strict and (missing or unexpected):
        raise errors.StateDictMismatch(
            f"cannot load {source} into {type(module).__name__}: missing: {missing[:20]}"
            f"{' ...' if len(missing) > 20 else ''}, unexpected: {unexpected[:20]}"
            f"{' ...' if len(unexpected) > 20 else ''}"
        )


# ------------------------------------------------------------------------------------------------
# Module
# ------------------------------------------------------------------------------------------------
class Module:
    """Base class of every layer and model (Candle's ``Module`` trait), and a JAX pytree.

    Subclasses set attributes in ``__init__`` and implement ``forward(xs)``; ``m(xs)`` calls it.
    Arrays, Tensors, Vars and submodules (also inside lists, tuples and dicts) are pytree
    children; other values are static. Name attributes in ``_static_fields`` to force them static.

    >>> from candlejax.nn import Linear, Var
    >>> lin = Linear(Var([[1.0, 2.0]], "w.weight"), None)
    >>> sorted(lin.named_vars())
    ['w.weight']
    """

    __slots__ = ("__dict__", "__weakref__", "_tree")  # _tree: the cached pytree classification

    _static_fields: frozenset[str] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._static_fields = frozenset().union(*(getattr(b, "_static_fields", ()) for b in cls.__mro__))
        _register(cls)

    # --- forward ---------------------------------------------------------------------------------
    def forward(self, xs: Any) -> Any:
        """Candle's ``Module::forward``: subclasses compute their output from ``xs``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward(xs)")

    def forward_t(self, xs: Any, train: bool) -> Any:
        """Candle's blanket ``ModuleT`` impl for every Module: ignores ``train``."""
        return self.forward(xs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and isinstance(args[0], Module) and _is_label_tree(self):
            return self
        return self.forward(*args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        __tracebackhide__ = True
        if callable(value) and not isinstance(value, _NOT_FUNCTIONS):
            _check_not_transformed(self, name, value)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                if callable(v) and not isinstance(v, _NOT_FUNCTIONS):
                    _check_not_transformed(self, f"{name}[{i}]", v)
        object.__setattr__(self, name, value)
        object.__setattr__(self, "_tree", None)

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        object.__setattr__(self, "_tree", None)

    def __getstate__(self) -> dict[str, Any]:  # pickle and copy: the attributes, not the cache
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # --- parameters ------------------------------------------------------------------------------
    def named_vars(self) -> dict[str, Var]:
        """Checkpoint name -> Var, e.g. ``{"first.weight": Var, "first.bias": Var, ...}``."""
        return named_vars(self)

    def named_buffers(self) -> dict[str, Buffer]:
        """Every Buffer (non-trained state) in the module by dotted name (PyTorch's ``named_buffers``)."""
        return named_buffers(self)

    def named_tensors(self) -> dict[str, Any]:
        """Vars and Buffers by checkpoint name."""
        return named_tensors(self)

    def all_vars(self) -> list[Var]:
        """Every Var in the module (the values of ``named_vars``), as Candle's ``VarMap::all_vars``."""
        return list(named_vars(self).values())

    def num_params(self) -> int:
        """The number of trainable scalars."""
        return sum(int(np.prod(v.shape)) for v in named_vars(self).values())

    def state_dict(self) -> dict[str, Tensor]:
        """Checkpoint name -> plain Tensor, for every Var and Buffer."""
        return {k: wrap(v._a) for k, v in named_tensors(self).items()}

    def save_safetensors(self, path: str | os.PathLike, metadata: dict | None = None) -> None:
        """Write every Var and Buffer under its checkpoint name (written atomically)."""
        save_safetensors_dict(named_tensors(self), path, metadata)

    def load_safetensors(self, path: str | os.PathLike, strict: bool = True) -> Any:
        """A copy of this module with every Var/Buffer replaced by the file's tensor of the same name.

        Raises listing the missing and unexpected names when ``strict`` and the file comes from a
        different architecture; shapes must match.
        """
        src = errors.path_arg(path, "load_safetensors")
        mine = named_tensors(self)
        with MmapedSafetensors(src) as st:
            names = st.names()
            _check_state_names(self, mine, names, strict, src)
            # only this module's tensors are read, converted to its dtypes on the host (an unused I64
            # position_ids needs no x64 mode; an F64 file loads into an F32 model as load_state_dict casts)
            state = {n: st.load(n, dtype=to_dtype(mine[n]._a.dtype)) for n in names if n in mine}
        return self._load_state(state, False, src, copy=False)  # fresh arrays: no copy needed

    def load_state_dict(self, state: dict[str, Any], strict: bool = True, source: str = "state dict") -> Any:
        """A copy of this module whose named tensors take their values from ``state``.

        As PyTorch's, the values are copied: training the returned module (a donating step) leaves
        the tensors of ``state`` (e.g. another model's ``state_dict()``) intact."""
        return self._load_state(state, strict, source, copy=True)

    def _load_state(self, state: dict[str, Any], strict: bool, source: str, copy: bool) -> Any:
        if not (hasattr(state, "keys") and hasattr(state, "__getitem__")):
            raise errors.InvalidArgument(f"load_state_dict takes a dict {{name: tensor}} (e.g. another model's"
                                         f" state_dict()), got a {type(state).__name__}")  # fmt: skip
        mine = named_tensors(self)
        _check_state_names(self, mine, state, strict, source)

        def repl(path: Any, x: Any) -> Any:
            if not isinstance(x, NamedTensor):
                return x
            name = x.name or _path_str(path)  # the name named_tensors gives it (an unnamed Var: its path)
            if name not in state:
                return x
            a = as_array(state[name])
            if tuple(a.shape) != tuple(x.shape):
                raise errors.UnexpectedShape(f"shape mismatch for {name} in {source}", x.shape, a.shape)
            if a.dtype != x._a.dtype:
                a = a.astype(x._a.dtype)  # a buffer of its own
            elif copy:
                a = owned_copy(a, state[name])
            devs = getattr(x._a, "devices", None)
            if devs is not None and not isinstance(x._a, jax.core.Tracer):  # (traced: the program places it)
                a = jax.device_put(a, next(iter(devs())))
            return type(x)._make(a, x.name)

        return jax.tree_util.tree_map_with_path(repl, self, is_leaf=_is_named)

    # --- functional updates ----------------------------------------------------------------------
    def replace(self, **changes: Any) -> Any:
        """A shallow copy with some attributes replaced (how stateful layers return new state)."""
        new = copy.copy(self)
        for k, v in changes.items():
            if k not in new.__dict__:
                raise AttributeError(f"{type(self).__name__} has no attribute {k!r}")
            new.__dict__[k] = v
        object.__setattr__(new, "_tree", None)  # the new values are classified afresh
        return new

    def to_dtype(self, dtype: Any) -> Any:
        """A copy with every floating-point Var/Buffer/Tensor cast to ``dtype``."""
        dt = check_width(to_dtype(dtype))

        def cast(x: Any) -> Any:
            if isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.floating):
                return jnp.asarray(x).astype(dt.np)
            return x

        return jax.tree_util.tree_map(cast, self)

    # --- display ---------------------------------------------------------------------------------
    def _fields(self) -> Iterator[tuple[str, Any]]:
        for k, v in self.__dict__.items():
            if not k.startswith("_"):
                yield k, v

    def extra_repr(self) -> str:
        """Static settings shown next to the layer name (override in layers)."""
        items = []
        for k, v in self._fields():
            if v is not None and not _is_dynamic(v) and (isinstance(v, _CALLABLE_VALUES) or not callable(v)):
                items.append(f"{k}={v!r}")
        return ", ".join(items)

    def __repr__(self) -> str:
        return "\n".join(self._repr_lines(0))

    def _repr_lines(self, indent: int) -> list[str]:
        pad = "  " * (indent + 1)
        head = type(self).__name__
        try:
            extra = self.extra_repr()
        except Exception:  # e.g. a gradient tree whose non-Var leaves are None
            extra = ""
        sub: list[str] = []
        for k, v in self._fields():
            sub.extend(_field_lines(k, v, indent + 1, pad))
        if not sub:
            return [f"{head}({extra})"]
        return [f"{head}({extra}", *sub, "  " * indent + ")"]

    def _repr_html_(self) -> str:
        """Jupyter display: the module tree, foldable, with parameter counts."""
        n = _html_count(self)
        count = f" — {n} trainable parameters" if n else ""
        return (
            f"<div style='font-family:monospace'><b>{html.escape(type(self).__name__)}</b>"
            f"{count}{_html_body(self._fields())}</div>"
        )


def _is_label_tree(m: Module) -> bool:
    """Whether ``m`` is a Module-shaped tree of labels or flags (``tree_map(lambda _: "adam", model)``)
    rather than a layer: it has leaves and none is an array. optax calls such a tree when it is
    callable (``multi_transform``'s ``param_labels(params)``); called with a Module, it answers with itself."""
    leaves = jax.tree_util.tree_leaves(m)
    return bool(leaves) and not any(_is_array_like(x) for x in leaves)


def _wrapped_module(fn: Any, depth: int = 0) -> Any:
    """The Module hidden inside a JAX transform / partial / bound method, or None."""
    if depth > 8 or fn is None:
        return None
    if isinstance(fn, Module):
        return fn
    for attr in ("__wrapped__", "func", "__self__", "fun"):
        try:
            inner = getattr(fn, attr, None) if not isinstance(fn, type) else None
        except Exception:  # an object whose attribute lookup misbehaves is not a transform
            inner = None
        if inner is not None and inner is not fn:
            m = _wrapped_module(inner, depth + 1)
            if m is not None:
                return m
    return None


def _check_not_transformed(owner: Any, name: str, value: Any) -> None:
    __tracebackhide__ = True
    inner = _wrapped_module(value)
    if inner is None or inner is owner:
        return
    layer = type(inner).__name__
    raise errors.TransformedModuleAttribute(
        f"{type(owner).__name__}.{name}: a JAX-transformed {layer} (e.g. jax.vmap({layer.lower()}(...))) is a"
        f" plain function to the pytree, so its Vars would be hidden from named_vars(), the optimizer and"
        f" save_safetensors; store the layer itself (self.{name.split('[')[0]} = the {layer}) and apply the"
        f" transform when calling it, e.g. jax.vmap(self.{name.split('[')[0]})(xs) in forward"
    )


def _tensor_desc(v: Any) -> str:
    a = unwrap(v)
    if a is None:
        return "None"
    if not _is_array_like(a) and type(a) is not DonatedBuffer:  # a label or mask tree's leaf
        name = getattr(v, "name", "")
        return repr(a) + (f" {name!r}" if name else "")
    if type(a) is DonatedBuffer:
        return f"{type(v).__name__} donated {a.name!r}"
    try:
        dt = to_dtype(a.dtype).as_str()
    except Exception:
        dt = str(a.dtype)
    kind = type(v).__name__ if isinstance(v, TensorBase) else "array"
    name = getattr(v, "name", "")
    return f"{kind} {dt}{fmt_shape(a.shape)}" + (f" {name!r}" if name else "")


def _field_lines(k: str, v: Any, indent: int, pad: str) -> list[str]:
    if isinstance(v, Module):
        lines = v._repr_lines(indent)
        return [f"{pad}{k}: {lines[0]}", *lines[1:]]
    if isinstance(v, (TensorBase, jax.Array, np.ndarray)):
        return [f"{pad}{k}: {_tensor_desc(v)}"]
    if isinstance(v, (list, tuple)) and _is_dynamic(v):
        out = []
        for i, x in enumerate(v):
            out.extend(_field_lines(f"{k}.{i}", x, indent, pad))
        return out
    if isinstance(v, dict) and _is_dynamic(v):
        out = []
        for i, x in v.items():
            out.extend(_field_lines(f"{k}.{i}", x, indent, pad))
        return out
    return []


def _html_count(m: Module) -> str:
    """``m.num_params()`` as ``79,510``, or ``""`` for a tree whose leaves are not arrays (labels, ``None``)."""
    n = 0
    for v in named_vars(m).values():
        shape = getattr(v._a, "shape", None)
        if shape is None:
            return ""
        n += int(np.prod(shape))
    return f"{n:,}"


def _html_body(fields: Any) -> str:
    rows = []
    for k, v in fields:
        if isinstance(v, Module):
            n = _html_count(v)
            try:
                extra = v.extra_repr()
            except Exception:  # as _repr_lines: a tree whose leaves are labels or None
                extra = ""
            params = f" <i>{n} params</i>" if n else ""
            rows.append(
                f"<details style='margin-left:1em'><summary>{html.escape(k)}: <b>{html.escape(type(v).__name__)}</b>"
                f"({html.escape(extra)}){params}</summary>{_html_body(v._fields())}</details>"
            )
        elif isinstance(v, (TensorBase, jax.Array, np.ndarray)):
            rows.append(f"<div style='margin-left:1em'>{html.escape(k)}: {html.escape(_tensor_desc(v))}</div>")
        elif isinstance(v, (list, tuple, dict)) and _is_dynamic(v):
            items = v.items() if isinstance(v, dict) else enumerate(v)
            rows.append(_html_body((f"{k}.{i}", x) for i, x in items))
    return "".join(rows)


_set_tree = Module.__dict__["_tree"].__set__  # the slot's setter: Module.__setattr__ would reset it
_register(Module)


# never a transformed layer
_NOT_FUNCTIONS = (Module, TensorBase, type, *_CALLABLE_VALUES)


def train_arg(train: Any, layer: str) -> bool:
    """``forward_t``'s ``train`` as a Python bool; a flag traced by ``jax.jit`` raises naming the fix
    (the layer picks its branch in Python, as Candle's ``train: bool``)."""
    a = train._a if isinstance(train, TensorBase) else train
    if isinstance(a, jax.core.Tracer):
        raise errors.TracingError(
            f"{layer}.forward_t: train is traced (an argument of a jax.jit function); it must be a Python bool"
            " known when tracing: mark it static (jax.jit(f, static_argnames='train')), or use candlejax.jit,"
            " which keeps Python bools static"
        )
    if isinstance(a, (bool, np.bool_)):
        return bool(a)
    if isinstance(a, (int, np.integer)) and a in (0, 1):
        return bool(a)
    if isinstance(a, (jax.Array, np.ndarray)) and a.shape == () and (a.dtype == bool or a.dtype.kind in "iu"):
        if int(a) in (0, 1):
            return bool(a)
    raise errors.ArgumentType(f"{layer}.forward_t: train must be a bool, got {train!r} ({type(train).__name__})")


class ModuleT(Module):
    """A layer whose behaviour depends on training mode (Candle's ``ModuleT``): BatchNorm, Dropout.

    Implement ``forward_t(xs, train)``; ``train`` is a Python bool (static under ``jit``, so each
    mode compiles once). ``m(xs)`` and ``m.forward(xs)`` run in evaluation mode;
    ``m(xs, train=True)`` in training mode.
    """

    def forward_t(self, xs: Any, train: bool) -> Any:
        """Candle's ``ModuleT::forward_t``: subclasses compute their output, in training mode when ``train``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward_t(xs, train)")

    def forward(self, xs: Any) -> Any:
        """``forward_t(xs, False)`` (Candle's blanket ``ModuleT`` for a ``Module``, used the other way round)."""
        return self.forward_t(xs, False)

    def __call__(self, xs: Any, train: bool = False, **kwargs: Any) -> Any:
        if not kwargs and train is False and isinstance(xs, Module) and _is_label_tree(self):
            return self
        return self.forward_t(xs, train, **kwargs)


_reload.loaded(__name__)


# ------------------------------------------------------------------------------------------------
# in-place updates under a trace
# ------------------------------------------------------------------------------------------------
_IN_PLACE = threading.local()


@contextlib.contextmanager
def keeping_in_place_updates() -> Iterator[None]:
    """While tracing inside this block, the caller writes back the Vars / Buffers of its traced arguments that
    are set in place (``cj.jit``, an optimizer's compiled step): layers need not warn that the update is lost."""
    depth = getattr(_IN_PLACE, "depth", 0)
    _IN_PLACE.depth = depth + 1
    try:
        yield
    finally:
        _IN_PLACE.depth = depth


def in_place_updates_kept() -> bool:
    """Whether a traced in-place update made now is kept by an enclosing ``cj.jit`` / optimizer step."""
    return getattr(_IN_PLACE, "depth", 0) > 0
