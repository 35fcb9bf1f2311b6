"""Elementwise ops: unary, binary (strict and broadcast_*), scalar, comparisons, Python operators.

Every eager op is one cached ``jax.jit`` (``candlejax._dispatch.op``); under a trace the plain
jax.numpy function runs instead. Checks (shape, dtype, device, scalar representability) run in
Python before XLA sees the op, eagerly and under ``jax.jit`` alike.

Semantics (see docs/differences/elementwise-reduce.md):

* Named binary methods (``add``, ``mul``, ``maximum``, ``eq`` ...) need equal shapes, as in Candle;
  ``broadcast_*`` methods and the Python operators broadcast (numpy rules), as Candle's Python
  binding does. Dtypes never promote: mismatches raise ``DTypeMismatchBinaryOp``.
* A Python scalar keeps the tensor's dtype. On an integer tensor a scalar must be an integral value
  representable in that dtype (``t_u32 * 0.5`` raises instead of Candle's silent truncation).
* Integer division truncates toward zero (Rust semantics), not floor division.
* Comparisons return ``U8`` tensors (0/1).

requires: candlejax.tensor._core (TensorBase, wrap, check_same_device), candlejax._dispatch.op
provides: ElementwiseMixin
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from candlejax import errors
from candlejax._dispatch import is_eager, op
from candlejax.dtype import DType
from candlejax.shape import broadcast_shapes
from candlejax.tensor._core import TensorBase, aval, check_same_device, int_arg, multi_device, wrap

if TYPE_CHECKING:  # Tensor joins the mixins: candlejax.tensor sets this name at runtime (get_type_hints)
    from candlejax.tensor import Tensor

# --- dtype sets (numpy dtypes, as found on ``jax.Array.dtype``) ---------------------------------
_FLOAT = frozenset(d.np for d in DType if d.is_float())
_SIGNED = frozenset(np.dtype(t) for t in (np.int16, np.int32, np.int64))
_UNSIGNED = frozenset(np.dtype(t) for t in (np.uint8, np.uint32))
_INT = _SIGNED | _UNSIGNED
_ALL = _FLOAT | _INT
_HALF = frozenset({np.dtype(jnp.bfloat16), np.dtype(np.float16)})
_IINFO = {dt: (int(np.iinfo(dt).min), int(np.iinfo(dt).max)) for dt in _INT}
_U8 = np.dtype(np.uint8)

_F32_HINT = "convert with .to_dtype(DType.F32) first"
_PY_SCALAR = (int, float, bool)
_Tracer = jax.core.Tracer


def _raise_dtype(t: TensorBase, name: str, allowed: frozenset) -> None:
    hint = "negation is undefined for unsigned dtypes; " + _F32_HINT if allowed is _FLOAT_SIGNED else _F32_HINT
    raise errors.UnsupportedDTypeForOp(t.dtype, name, hint)


_FLOAT_SIGNED = _FLOAT | _SIGNED



def _cvt(s: Any, dt: Any) -> Any:
    """Cast a scalar (python, numpy or weak 0-d tracer) to the tensor dtype, inside the trace."""
    return lax.convert_element_type(s, dt)


# --- scalars ------------------------------------------------------------------------------------
def _scalar_arg(name: str, t: TensorBase, s: Any) -> Any:
    """The value to hand to the jitted op for a scalar operand ``s`` of tensor ``t``.

    Float tensors get a Python float (weakly typed: the tensor dtype wins). Integer tensors get a
    numpy scalar of their own dtype, after checking that ``s`` is integral and in range.
    """
    dt = t._a.dtype
    if isinstance(s, (str, bytes, complex, np.complexfloating)) or s is None:
        raise _not_a_number(name, s)
    if dt in _FLOAT:
        try:
            return float(s)
        except (TypeError, ValueError):
            raise _not_a_number(name, s) from None
        except OverflowError:
            raise errors.InvalidArgument(f"{name}: the scalar {s} is too large for a float") from None
    if isinstance(s, (float, np.floating)):
        if not float(s).is_integer():
            raise errors.Msg(
                f"{name}: the scalar {s!r} is not representable in the integer dtype {t.dtype.name} of the"
                f" tensor (Candle would truncate it); convert the tensor first with .to_dtype(DType.F32)"
            )
    try:
        s = int(s)
    except (TypeError, ValueError, OverflowError):
        raise _not_a_number(name, s) from None
    lo, hi = _IINFO[dt]
    if not lo <= s <= hi:
        raise errors.Msg(
            f"{name}: the scalar {s} is out of range [{lo}, {hi}] for the dtype {t.dtype.name} of the tensor;"
            " convert the tensor first with .to_dtype(...)"
        )
    return dt.type(s)


def _not_a_number(name: str, s: Any) -> errors.ArgumentType:
    return errors.ArgumentType(f"{name}: expected a real number, got {s!r} ({type(s).__name__})")


def _as_scalar(x: Any) -> Any:
    """``x`` as a scalar operand, or None when it is not one.

    Python / numpy scalars, 0-d numpy arrays, and weakly typed 0-d jax values (a Python number that
    became a tracer under ``jax.jit``) count as scalars.
    """
    if isinstance(x, _PY_SCALAR):
        return x
    if isinstance(x, np.generic) or (isinstance(x, np.ndarray) and x.ndim == 0):
        v = x.item()
        return v if isinstance(v, _PY_SCALAR) else None
    if isinstance(x, (jax.Array, _Tracer)) and x.ndim == 0 and _is_weak(x):
        return x
    return None


def _is_weak(x: Any) -> bool:
    w = getattr(x, "weak_type", None)
    if w is None:
        av = getattr(x, "aval", None)
        w = getattr(av, "weak_type", False)
    return bool(w)


def _traced_scalar_arg(name: str, t: TensorBase, s: Any) -> Any:
    """A weakly typed jax scalar: floats on float tensors, integers on any tensor."""
    if t._a.dtype not in _FLOAT and jnp.issubdtype(s.dtype, jnp.floating):
        raise errors.Msg(
            f"{name}: a float scalar cannot be applied to an integer tensor of dtype {t.dtype.name}"
            " (Candle would truncate it); convert the tensor first with .to_dtype(DType.F32)"
        )
    return s


def _scalar_value(name: str, t: TensorBase, s: Any) -> Any:
    if isinstance(s, (jax.Array, _Tracer)):
        return _traced_scalar_arg(name, t, s)
    return _scalar_arg(name, t, s)


def _as_tensor_operand(x: Any) -> TensorBase | None:
    """A non-scalar jax array operand as a Tensor (strict dtype rules apply), else None."""
    if isinstance(x, TensorBase):
        return x
    if isinstance(x, (jax.Array, _Tracer)):
        return wrap(x)
    return None


# --- the jitted kernels -------------------------------------------------------------------------
def _tdiv(a: Any, b: Any) -> Any:
    """Division: true division on floats, truncation toward zero on integers (Rust)."""
    if a.dtype in _FLOAT:
        return jnp.divide(a, b)
    a, b = jnp.broadcast_arrays(a, b)
    return lax.div(a, b)


def _pow(a: Any, b: Any) -> Any:
    return jnp.power(a, b)


def _floor_divide(a: Any, b: Any) -> Any:
    """Python's / PyTorch's ``//``: rounds toward minus infinity (``-7 // 2 == -4``)."""
    return jnp.floor_divide(a, b)


def _remainder(a: Any, b: Any) -> Any:
    """Python's / PyTorch's ``%``: the sign of the divisor (``-7 % 3 == 2``)."""
    return jnp.remainder(a, b)


def _u8(f: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def g(a: Any, b: Any) -> Any:
        return f(a, b).astype(_U8)

    return g


_BIN_FNS: dict[str, Callable[[Any, Any], Any]] = {
    "add": jnp.add,
    "sub": jnp.subtract,
    "mul": jnp.multiply,
    "div": _tdiv,
    "maximum": jnp.maximum,
    "minimum": jnp.minimum,
    "pow": _pow,
    "floor_divide": _floor_divide,
    "remainder": _remainder,
    "eq": _u8(jnp.equal),
    "ne": _u8(jnp.not_equal),
    "lt": _u8(jnp.less),
    "le": _u8(jnp.less_equal),
    "gt": _u8(jnp.greater),
    "ge": _u8(jnp.greater_equal),
}
_CMP = ("eq", "ne", "lt", "le", "gt", "ge")


# arithmetic with a scalar on an f16 / bf16 tensor runs in f32 and rounds once (PyTorch's "opmath"):
# the scalar rounded to the tensor's dtype first can overflow (f16 / 1e5 would divide by inf and give
# 0) or lose its digits (bf16 * 0.1)
# (PyTorch's ``%`` rounds the scalar to the half dtype first: remainder is left out to match it)
_HALF_OPMATH = frozenset({"add", "sub", "mul", "div", "pow", "floor_divide"})


def _make_kernels(name: str, f: Callable[[Any, Any], Any]) -> tuple[Any, Any, Any]:
    """(tensor-tensor, tensor-scalar, scalar-tensor) cached-jit kernels for one binary function."""
    tt = op(f, elementwise=True)
    opmath = name in _HALF_OPMATH

    def ts(a: Any, s: Any) -> Any:
        if opmath and a.dtype in _HALF:
            return f(a.astype(jnp.float32), _cvt(s, jnp.float32)).astype(a.dtype)
        return f(a, _cvt(s, a.dtype))

    def st(a: Any, s: Any) -> Any:
        if opmath and a.dtype in _HALF:
            return f(_cvt(s, jnp.float32), a.astype(jnp.float32)).astype(a.dtype)
        return f(_cvt(s, a.dtype), a)

    return tt, op(ts, elementwise=True), op(st, elementwise=True)


_KERNELS = {name: _make_kernels(name, f) for name, f in _BIN_FNS.items()}
_FLOAT_ONLY_BIN = frozenset({"pow"})


def _bin_tt(name: str, opname: str, lhs: TensorBase, rhs: TensorBase, broadcast: bool) -> Any:
    """Tensor-tensor binary op with Candle's checks; ``opname`` is used in error messages."""
    a, b = lhs._a, rhs._a
    if a.shape != b.shape:
        if not broadcast:
            raise errors.ShapeMismatchBinaryOp(a.shape, b.shape, opname, _CMP_HINT.get(opname, ""))
        broadcast_shapes(a.shape, b.shape, opname)
    if a.dtype != b.dtype:
        raise errors.DTypeMismatchBinaryOp(lhs.dtype, rhs.dtype, _dtype_opname(name, opname))
    if name in _FLOAT_ONLY_BIN and a.dtype not in _FLOAT:
        raise errors.UnsupportedDTypeForOp(lhs.dtype, opname, _F32_HINT)
    check_same_device(opname, lhs, rhs)
    f = _KERNELS[name][0]
    return wrap(f.jitted(a, b) if is_eager() else f.raw(a, b))


def _dtype_opname(name: str, opname: str) -> str:
    """The op a dtype mismatch names: Candle's ``broadcast_add`` broadcasts, then calls ``add``, whose
    dtype check names ``add`` (``cmp`` for the comparisons); the shape check names ``broadcast_add``."""
    if not opname.startswith("broadcast_") or name not in _BIN_FNS:
        return opname
    return "cmp" if name in _CMP else name


_CMP_HINT = {"cmp": "use broadcast_eq / broadcast_lt / ... (or the Python operators) to broadcast"}


def _bin_ts(name: str, opname: str, lhs: TensorBase, s: Any, reverse: bool = False) -> Any:
    """Tensor-scalar binary op; the scalar keeps the tensor dtype."""
    if name in _FLOAT_ONLY_BIN and lhs._a.dtype not in _FLOAT:
        raise errors.UnsupportedDTypeForOp(lhs.dtype, opname, _F32_HINT)
    v = _scalar_value(opname, lhs, s)
    f = _KERNELS[name][2 if reverse else 1]
    a = lhs._a
    return wrap(f.jitted(a, v) if is_eager() else f.raw(a, v))


def _binary(name: str, opname: str, lhs: TensorBase, rhs: Any, broadcast: bool) -> Any:
    """A binary op with rhs a Tensor (same shape, or numpy broadcasting), a scalar or an array."""
    if isinstance(rhs, TensorBase):
        return _bin_tt(name, opname, lhs, rhs, broadcast)
    s = _as_scalar(rhs)
    if s is not None:
        return _bin_ts(name, opname, lhs, s)
    t = _as_tensor_operand(rhs)
    if t is not None:
        return _bin_tt(name, opname, lhs, t, broadcast)
    raise errors.Msg(f"{opname}: expected a Tensor or a scalar as rhs, got {type(rhs).__name__}")


def _strict(name: str, lhs: TensorBase, rhs: Any, opname: str | None = None) -> Any:
    """Candle's non-broadcasting binary op: rhs a same-shape Tensor, or a scalar."""
    return _binary(name, opname or name, lhs, rhs, False)


def _bcast(name: str, lhs: TensorBase, rhs: Any) -> Any:
    """``broadcast_<name>``: rhs a Tensor (numpy broadcasting) or a scalar."""
    return _binary(name, "broadcast_" + name, lhs, rhs, True)


def _operator(name: str, lhs: TensorBase, rhs: Any, reverse: bool = False) -> Any:
    """Python operator: broadcasting, Tensor or scalar on either side; NotImplemented otherwise."""
    opname = "broadcast_" + name
    if isinstance(rhs, TensorBase):
        return _bin_tt(name, opname, lhs, rhs, True)
    s = _as_scalar(rhs)
    if s is not None:
        return _bin_ts(name, name, lhs, s, reverse)
    t = _as_tensor_operand(rhs)
    if t is not None:
        return _bin_tt(name, opname, t, lhs, True) if reverse else _bin_tt(name, opname, lhs, t, True)
    # a numpy array, a torch / candle-pyo3 (or other array library) tensor
    tp, mod = type(rhs), type(rhs).__module__.split(".")[0]
    if mod != "candlejax" and (
        isinstance(rhs, np.ndarray) or hasattr(rhs, "__dlpack__") or (hasattr(rhs, "shape") and hasattr(rhs, "dtype"))
    ):
        if isinstance(rhs, np.ndarray):
            what = "numpy array"
        else:
            what = "candle-pyo3 candle.Tensor" if mod == "builtins" else f"{mod}.{tp.__name__}"
        shape = errors.fmt_shape(tuple(getattr(rhs, "shape", ())))
        raise errors.Msg(
            f"{opname}: cannot combine a Tensor with a {what} of shape {shape};"
            " wrap it first with Tensor(...) (dtypes are never promoted)"
        )
    if name in ("eq", "ne") and isinstance(rhs, (list, tuple)):  # Python's fallback would answer a plain bool
        raise errors.ArgumentType(
            f"{opname}: cannot compare a Tensor with a {type(rhs).__name__} (candle-pyo3: unsupported rhs for"
            " __richcmp__); wrap it first with Tensor(...), or compare t.to_list() with it"
        )
    return NotImplemented


# --- unary ops ----------------------------------------------------------------------------------
def _int_identity(f: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def g(a: Any) -> Any:
        return a if a.dtype in _INT else f(a)

    return g


def _round(a: Any) -> Any:
    # Rust's f32::round: half away from zero (numpy/jnp.round rounds half to even).
    return lax.round(a, lax.RoundingMethod.AWAY_FROM_ZERO)


def _relu(a: Any) -> Any:
    # jax.nn.relu: gradient 0 at x == 0 (as PyTorch; jnp.maximum would split it to 0.5) and a
    # plain max in the compiled program, where a select chain costs extra copies in conv nets.
    if jnp.issubdtype(a.dtype, jnp.floating):
        return jax.nn.relu(a)
    return jnp.maximum(a, jnp.zeros((), a.dtype))


def in_f32(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn`` evaluated in f32 for bf16/f16 input and rounded once to the input's dtype (PyTorch's
    opmath); other dtypes as they are. A composite activation evaluated in half precision loses
    most of its digits where ``1 + erf`` or ``1 + tanh`` cancels (bf16 ``gelu_erf(-3.5)`` was -0.0)."""

    def g(a: Any) -> Any:
        return fn(a.astype(jnp.float32)).astype(a.dtype) if a.dtype in _HALF else fn(a)

    g.__name__ = getattr(fn, "__name__", "in_f32")
    g.__doc__ = fn.__doc__
    return g


@in_f32
def _gelu_tanh(a: Any) -> Any:
    return jax.nn.gelu(a, approximate=True)


@in_f32
def gelu_erf_jnp(a: Any) -> Any:
    """Exact GELU, ``x/2 (1 + erf(x/√2))`` (PyTorch's formula); bf16/f16 computed in f32.
    ``jax.nn.gelu(approximate=False)`` goes through erfc, which XLA:CPU evaluates with both
    branches of a select: ~3x slower."""
    return a * 0.5 * (1.0 + jax.lax.erf(a * np.asarray(1 / math.sqrt(2), a.dtype)))


_gelu_erf = gelu_erf_jnp
_silu = in_f32(jax.nn.silu)
_sigmoid = in_f32(jax.nn.sigmoid)


def _sign(a: Any) -> Any:
    # Candle's (v > 0) - (v < 0): NaN gives 0, as in Candle and PyTorch (jnp.sign gives NaN)
    if a.dtype in _FLOAT:
        return (a > 0).astype(a.dtype) - (a < 0).astype(a.dtype)
    return jnp.sign(a)


def _recip(a: Any) -> Any:
    return jnp.reciprocal(a)


def _sqr(a: Any) -> Any:
    return a * a


def _unary(name: str, fn: Callable[[Any], Any], allowed: frozenset, doc: str) -> Callable[[TensorBase], Tensor]:
    k = op(fn, elementwise=True)
    jitted, raw = k.jitted, k.raw

    def method(self: TensorBase) -> Tensor:
        a = self._a
        if a.dtype not in allowed:
            _raise_dtype(self, name, allowed)
        return wrap(jitted(a) if is_eager() else raw(a))

    method.__name__ = method.__qualname__ = name
    method.__doc__ = doc
    return method


def _fast_tt(name: str, opname: str, broadcast: bool) -> Callable[[TensorBase, TensorBase], Tensor]:
    """The tensor-tensor path of one binary op, with its kernels and checks bound once."""
    k = _KERNELS[name][0]
    jitted, raw = k.jitted, k.raw
    float_only = name in _FLOAT_ONLY_BIN
    hint = _CMP_HINT.get(opname, "")
    dtype_opname = _dtype_opname(name, opname)

    def tt(lhs: TensorBase, rhs: TensorBase) -> Tensor:
        a, b = lhs._a, rhs._a
        va, vb = aval(a), aval(b)  # one attribute read each, cheaper than .shape + .dtype
        if va.shape != vb.shape:
            if not broadcast:
                raise errors.ShapeMismatchBinaryOp(va.shape, vb.shape, opname, hint)
            broadcast_shapes(va.shape, vb.shape, opname)
        if va.dtype != vb.dtype:
            raise errors.DTypeMismatchBinaryOp(lhs.dtype, rhs.dtype, dtype_opname)
        if float_only and va.dtype not in _FLOAT:
            raise errors.UnsupportedDTypeForOp(lhs.dtype, opname, _F32_HINT)
        if multi_device():
            check_same_device(opname, lhs, rhs)
        return wrap(jitted(a, b) if is_eager() else raw(a, b))

    return tt




def _binary_method(name: str, doc: str, opname: str | None = None) -> Callable[[TensorBase, Any], Tensor]:
    tt = _fast_tt(name, opname or name, False)

    def method(self: TensorBase, rhs: Any) -> Tensor:
        if isinstance(rhs, TensorBase):
            return tt(self, rhs)
        return _strict(name, self, rhs, opname)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = doc
    return method


def _bcast_method(name: str) -> Callable[[TensorBase, Any], Tensor]:
    tt = _fast_tt(name, "broadcast_" + name, True)

    def method(self: TensorBase, rhs: Any) -> Tensor:
        if isinstance(rhs, TensorBase):
            return tt(self, rhs)
        return _bcast(name, self, rhs)

    method.__name__ = method.__qualname__ = "broadcast_" + name
    method.__doc__ = (
        f"Candle's ``broadcast_{name}``: ``{name}`` with numpy broadcasting of both sides"
        f"{' (result U8)' if name in _CMP else ''}."
    )
    return method


def _cmp_method(name: str) -> Callable[[TensorBase, Any], Tensor]:
    return _binary_method(
        name,
        f"Candle's ``{name}``: elementwise comparison with a same-shape Tensor or a scalar, U8 result"
        f" (PyTorch ``torch.{name}``, which returns bool).",
        "cmp",
    )


def _op_method(name: str, reverse: bool = False) -> Callable[[TensorBase, Any], Tensor]:
    """A Python operator: broadcasting, Tensor or scalar on either side. Annotated ``-> Tensor`` as
    typeshed annotates operators, though an operand it cannot take gives ``NotImplemented`` (Python
    then asks the other operand)."""
    tt = _fast_tt(name, "broadcast_" + name, True)
    jitted_ts = _KERNELS[name][2 if reverse else 1].jitted
    float_dt = _FLOAT

    def method(self: TensorBase, other: Any) -> Tensor:
        if isinstance(other, TensorBase):
            return tt(other, self) if reverse else tt(self, other)
        a = self._a
        if type(other) is float and a.dtype in float_dt and is_eager() and name not in _FLOAT_ONLY_BIN:
            return wrap(jitted_ts(a, other))  # fast path: python float on a float tensor
        return _operator(name, self, other, reverse)

    method.__name__ = method.__qualname__ = f"__{'r' if reverse else ''}{_DUNDER[name]}__"
    return method


_DUNDER = {
    "add": "add", "sub": "sub", "mul": "mul", "div": "truediv", "pow": "pow",
    "floor_divide": "floordiv", "remainder": "mod",
    "eq": "eq", "ne": "ne", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge",
}  # fmt: skip


# --- parameterised unary kernels ----------------------------------------------------------------
@op(elementwise=True)
def _affine(a: Any, mul: Any, add: Any) -> Any:
    return a * _cvt(mul, a.dtype) + _cvt(add, a.dtype)


@op(elementwise=True)
def _elu(a: Any, alpha: Any) -> Any:
    alpha = _cvt(alpha, a.dtype)
    # a where, not a minimum: the derivative at 0 is alpha (Candle, PyTorch), not a tie's alpha / 2
    return jnp.where(a > 0, a, alpha * jnp.expm1(jnp.where(a > 0, jnp.zeros((), a.dtype), a)))


@op(elementwise=True)
def _powf(a: Any, e: Any) -> Any:
    return jnp.power(a, _cvt(e, a.dtype))


@op(elementwise=True)
def _round_to(a: Any, mult: Any) -> Any:
    dt = a.dtype
    x = a.astype(jnp.float32) if dt in _HALF else a
    m = _cvt(mult, x.dtype)
    return (_round(x * m) * (1 / m)).astype(dt)


@op(elementwise=True)
def _clamp(a: Any, lo: Any, hi: Any) -> Any:
    return jnp.minimum(jnp.maximum(a, _cvt(lo, a.dtype)), _cvt(hi, a.dtype))


def _call(k: Any, *args: Any) -> Any:
    return wrap(k.jitted(*args) if is_eager() else k.raw(*args))


class CmpOp(enum.Enum):
    """Candle's ``candle::op::CmpOp`` (``Eq``, ``Ne``, ``Le``, ``Ge``, ``Lt``, ``Gt``), for
    ``t.cmp(rhs, CmpOp.Lt)``; the strings ``"lt"`` / ``"<"`` are accepted too."""

    Eq = "eq"
    Ne = "ne"
    Le = "le"
    Ge = "ge"
    Lt = "lt"
    Gt = "gt"


_CMP_OPS = {
    "eq": "eq", "ne": "ne", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge",
    "==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge",
}  # fmt: skip


class ElementwiseMixin(TensorBase):
    """Candle's elementwise Tensor API (unary, binary, broadcast, scalar, comparisons, operators)."""

    __slots__ = ()

    # ---- unary (Candle ``Tensor::<name>``; PyTorch equivalents in the docstrings) -------------
    neg = _unary("neg", jnp.negative, _FLOAT_SIGNED, "``-x`` (Candle ``neg``, torch ``neg``); float and signed ints.")
    recip = _unary("recip", _recip, _FLOAT, "``1 / x`` (Candle ``recip``, torch ``reciprocal``); float only.")
    exp = _unary("exp", jnp.exp, _FLOAT, "``e^x`` (Candle ``exp``, torch ``exp``); float only.")
    log = _unary("log", jnp.log, _FLOAT, "Natural log (Candle ``log``, torch ``log``); float only.")
    sin = _unary("sin", jnp.sin, _FLOAT, "Sine (Candle ``sin``, torch ``sin``); float only.")
    cos = _unary("cos", jnp.cos, _FLOAT, "Cosine (Candle ``cos``, torch ``cos``); float only.")
    tanh = _unary("tanh", jnp.tanh, _FLOAT, "Hyperbolic tangent (Candle ``tanh``, torch ``tanh``); float only.")
    abs = _unary("abs", jnp.abs, _ALL, "``|x|`` (Candle ``abs``, torch ``abs``); every dtype.")
    sqr = _unary("sqr", _sqr, _ALL, "``x * x`` (Candle ``sqr``, torch ``square``); integers wrap like Rust.")
    sqrt = _unary("sqrt", jnp.sqrt, _FLOAT, "Square root (Candle ``sqrt``, torch ``sqrt``); float only.")
    gelu = _unary(
        "gelu", _gelu_tanh, _FLOAT,
        "GELU, **tanh approximation** (Candle ``gelu``, torch ``gelu(approximate='tanh')``); float only.",
    )  # fmt: skip
    gelu_erf = _unary(
        "gelu_erf", _gelu_erf, _FLOAT, "Exact (erf) GELU (Candle ``gelu_erf``, torch ``gelu``); float only."
    )
    erf = _unary("erf", jax.scipy.special.erf, _FLOAT, "Error function (Candle ``erf``, torch ``erf``); float only.")
    relu = _unary("relu", _relu, _ALL, "``max(x, 0)`` (Candle ``relu``, torch ``relu``); every dtype.")
    silu = _unary("silu", _silu, _FLOAT, "``x * sigmoid(x)`` (Candle ``silu``, torch ``silu``); float only.")
    sigmoid = _unary(
        "sigmoid", _sigmoid, _FLOAT,
        "``1 / (1 + e^-x)`` (Candle ``candle_nn::ops::sigmoid``, torch ``sigmoid``); float only.",
    )  # fmt: skip
    ceil = _unary("ceil", _int_identity(jnp.ceil), _ALL, "Round up (Candle ``ceil``); identity on integers.")
    floor = _unary("floor", _int_identity(jnp.floor), _ALL, "Round down (Candle ``floor``); identity on integers.")
    round = _unary(
        "round", _int_identity(_round), _ALL,
        "Round half away from zero, like Rust ``f32::round`` (Candle ``round``; torch rounds half to even);"
        " identity on integers.",
    )  # fmt: skip
    sign = _unary(
        "sign", _sign, _ALL,
        "-1, 0 or 1 (Candle ``sign``, torch ``sign``); 0 for NaN and -0.0; unsigned ints give 0 or 1.",
    )  # fmt: skip

    def __neg__(self) -> Tensor:
        return self.neg()

    def __pos__(self) -> Tensor:
        return self

    def __abs__(self) -> Tensor:
        return self.abs()

    # ---- parameterised unary -----------------------------------------------------------------
    def affine(self, mul: float, add: float) -> Tensor:
        """``x * mul + add`` with ``mul``/``add`` in the tensor dtype (Candle ``affine``).

        On integer tensors ``mul`` and ``add`` must be integral (Candle would truncate them).
        """
        m = _scalar_value("affine", self, mul)
        b = _scalar_value("affine", self, add)
        return _call(_affine, self._a, m, b)

    def elu(self, alpha: float) -> Tensor:
        """ELU: ``x`` if ``x > 0`` else ``alpha * (e^x - 1)`` (Candle ``elu``, torch ``F.elu``); float only."""
        if self._a.dtype not in _FLOAT:
            raise errors.UnsupportedDTypeForOp(self.dtype, "elu", _F32_HINT)
        return _call(_elu, self._a, _scalar_value("elu", self, alpha))

    def powf(self, p: float) -> Tensor:
        """``x ** p`` for a float exponent (Candle ``powf(e)``, candle-pyo3 ``powf(p)``, torch
        ``pow(x, p)``); float only."""
        if self._a.dtype not in _FLOAT:
            raise errors.UnsupportedDTypeForOp(self.dtype, "powf", _F32_HINT)
        return _call(_powf, self._a, _scalar_value("powf", self, p))

    def round_to(self, decimals: int) -> Tensor:
        """Round to ``decimals`` decimal places, half away from zero (Candle ``round_to``,
        torch ``round(decimals=)``); negative ``decimals`` round left of the point. Float only.
        """
        if self._a.dtype not in _FLOAT:
            raise errors.UnsupportedDTypeForOp(self.dtype, "round_to", _F32_HINT)
        decimals = int_arg(decimals, "round_to", "decimals")
        if not -308 <= decimals <= 308:  # 10^decimals must be a finite, non-zero f64, or every value is NaN
            raise errors.InvalidArgument(f"round_to: decimals must be in [-308, 308], got {decimals}")
        return _call(_round_to, self._a, 10.0**decimals)

    def clamp(self, min: Any = None, max: Any = None) -> Tensor:
        """Clamp to ``[min, max]`` (Candle ``clamp``, torch ``clamp``).

        ``min``/``max`` are scalars or Tensors of the same shape and dtype (no broadcasting); as in
        PyTorch, one of them may be left out (``clamp(min=0)`` is ``maximum(0)``).
        """
        if min is None and max is None:
            raise errors.Msg("clamp: pass min, max or both")
        if min is None or max is None:
            dt = self._a.dtype
            info = jnp.finfo(dt) if jnp.issubdtype(dt, jnp.floating) else jnp.iinfo(dt)
            inf = float("inf") if jnp.issubdtype(dt, jnp.floating) else None
            min = (-inf if inf else int(info.min)) if min is None else min
            max = (inf if inf else int(info.max)) if max is None else max
        lo = self._clamp_bound(min)
        hi = self._clamp_bound(max)
        return _call(_clamp, self._a, lo, hi)

    def _clamp_bound(self, x: Any) -> Any:
        if isinstance(x, TensorBase) or (_as_scalar(x) is None and _as_tensor_operand(x) is not None):
            t = x if isinstance(x, TensorBase) else wrap(x)
            if t._a.shape != self._a.shape:
                raise errors.ShapeMismatchBinaryOp(
                    self._a.shape, t._a.shape, "clamp", "clamp bounds must be scalars or have the tensor's shape"
                )
            if t._a.dtype != self._a.dtype:
                raise errors.DTypeMismatchBinaryOp(self.dtype, t.dtype, "clamp")
            check_same_device("clamp", self, t)
            return t._a
        s = _as_scalar(x)
        if s is None:
            raise errors.Msg(f"clamp: expected a Tensor or a scalar bound, got {type(x).__name__}")
        return _scalar_value("clamp", self, s)

    # ---- strict binary (same shape; scalar rhs allowed) ---------------------------------------
    add = _binary_method("add", "Elementwise ``self + rhs``, same shape and dtype (Candle ``add``); or a scalar.")
    sub = _binary_method("sub", "Elementwise ``self - rhs``, same shape and dtype (Candle ``sub``); or a scalar.")
    mul = _binary_method("mul", "Elementwise ``self * rhs``, same shape and dtype (Candle ``mul``); or a scalar.")
    div = _binary_method(
        "div",
        "Elementwise ``self / rhs``, same shape and dtype (Candle ``div``); or a scalar. Integer division"
        " truncates toward zero (Rust), unlike torch/numpy floor division.",
    )
    maximum = _binary_method(
        "maximum", "Elementwise max with a same-shape Tensor or a scalar (Candle ``maximum``, torch ``maximum``)."
    )
    minimum = _binary_method(
        "minimum", "Elementwise min with a same-shape Tensor or a scalar (Candle ``minimum``, torch ``minimum``)."
    )
    pow = _binary_method(
        "pow",
        "Elementwise ``self ** rhs``, same shape (Candle ``pow``, torch ``pow``); float only. Unlike Candle's"
        " ``exp(rhs * ln(self))`` a negative base with an integral exponent is exact, not NaN.",
    )

    # ---- broadcasting binary ------------------------------------------------------------------
    broadcast_add = _bcast_method("add")
    broadcast_sub = _bcast_method("sub")
    broadcast_mul = _bcast_method("mul")
    broadcast_div = _bcast_method("div")
    broadcast_maximum = _bcast_method("maximum")
    broadcast_minimum = _bcast_method("minimum")
    broadcast_pow = _bcast_method("pow")

    # ---- comparisons (U8 result) --------------------------------------------------------------
    eq = _cmp_method("eq")
    ne = _cmp_method("ne")
    lt = _cmp_method("lt")
    le = _cmp_method("le")
    gt = _cmp_method("gt")
    ge = _cmp_method("ge")
    broadcast_eq = _bcast_method("eq")
    broadcast_ne = _bcast_method("ne")
    broadcast_lt = _bcast_method("lt")
    broadcast_le = _bcast_method("le")
    broadcast_gt = _bcast_method("gt")
    broadcast_ge = _bcast_method("ge")

    def cmp(self, rhs: Any, op: Any) -> Tensor:
        """Candle ``cmp(rhs, CmpOp)``: ``op`` is ``"eq" "ne" "lt" "le" "gt" "ge"`` (or ``== != < <= > >=``,
        or an enum whose name is one of those); same-shape Tensor or scalar rhs; U8 result.
        """
        key = op if isinstance(op, str) else getattr(op, "name", getattr(op, "value", op))
        name = _CMP_OPS.get(str(key).lower())
        if name is None:
            raise errors.Msg(f"cmp: unknown comparison {op!r}, expected one of eq, ne, lt, le, gt, ge")
        return _strict(name, self, rhs, "cmp")

    # ---- Python operators (broadcasting, as Candle's Python binding) --------------------------
    __add__ = _op_method("add")
    __radd__ = _op_method("add", True)
    __sub__ = _op_method("sub")
    __rsub__ = _op_method("sub", True)
    __mul__ = _op_method("mul")
    __rmul__ = _op_method("mul", True)
    __truediv__ = _op_method("div")
    __rtruediv__ = _op_method("div", True)
    __rpow__ = _op_method("pow", True)
    # PyTorch's / Python's ``//`` and ``%`` (Candle has neither): floor division, the remainder with the
    # divisor's sign; the dtype is kept (an integer tensor takes integer scalars only)
    __floordiv__ = _op_method("floor_divide")
    __rfloordiv__ = _op_method("floor_divide", True)
    __mod__ = _op_method("remainder")
    __rmod__ = _op_method("remainder", True)
    if TYPE_CHECKING:  # as assignments, type checkers would keep object's ``-> bool``: t == 1.0 is a Tensor

        def __eq__(self, other: Any) -> Tensor: ...  # type: ignore[override]

        def __ne__(self, other: Any) -> Tensor: ...  # type: ignore[override]

    else:
        __eq__ = _op_method("eq")
        __ne__ = _op_method("ne")
    __lt__ = _op_method("lt")
    __le__ = _op_method("le")
    __gt__ = _op_method("gt")
    __ge__ = _op_method("ge")

    # u8 masks stand in for PyTorch's bool, where ~ & | ^ are logical: ~ on u8 would be bitwise
    # (~1 == 254), so the mask operators raise, naming Candle's spelling
    def __invert__(self) -> Tensor:
        raise errors.Msg("~: there is no bool dtype (masks are u8, where ~1 would be 254); negate a mask with m.eq(0)")

    def __and__(self, rhs: Any) -> Tensor:
        raise errors.Msg("&: there is no bool dtype (masks are u8); for two 0/1 masks write a.minimum(b) or a * b")

    def __or__(self, rhs: Any) -> Tensor:
        raise errors.Msg("|: there is no bool dtype (masks are u8); for two 0/1 masks write a.maximum(b)")

    def __xor__(self, rhs: Any) -> Tensor:
        raise errors.Msg("^: there is no bool dtype (masks are u8); for two 0/1 masks write a.ne(b)")

    __rand__, __ror__, __rxor__ = __and__, __or__, __xor__

    def __pow__(self, rhs: Any) -> Tensor:
        """``t ** e``: ``powf(e)`` for a scalar exponent, ``broadcast_pow`` for a Tensor."""
        if not isinstance(rhs, (TensorBase, jax.Array, _Tracer)) and _as_scalar(rhs) is not None:
            return self.powf(rhs)
        return _operator("pow", self, rhs)

    # numpy defers to the operators above (``np.float32(2) * t`` stays a Tensor, ``np_array + t``
    # raises a clear error) instead of silently turning the Tensor into an ndarray.
    __array_ufunc__ = None

    # Defining __eq__ would otherwise make the class unhashable; Tensors hash by identity.
    __hash__ = TensorBase.__hash__
