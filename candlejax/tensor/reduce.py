"""Reductions: sum, mean, max, min, argmax, argmin, var, log_sum_exp, *_all, cumsum, sort.

Each reduction is one cached ``jax.jit`` keyed on its (static) axes. Results keep the input dtype
(as Candle: a u8 sum wraps); ``argmax``/``argmin``/sort indices are ``U32``. bf16/f16 inputs are
accumulated in f32 and returned in their own dtype.

requires: candlejax.tensor._core (TensorBase, wrap), candlejax._dispatch.op, candlejax.shape
provides: ReduceMixin, ``softmax_op`` / ``log_softmax_op`` (the kernels behind ``candlejax.nn.ops.softmax``
/ ``log_softmax`` and the PyTorch-style ``x.softmax(dim)``), ``sqrt_zero_grad``
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax._dispatch import is_eager, op
from candlejax.dtype import DType
from candlejax.shape import resolve_dim, resolve_dims
from candlejax.tensor._core import TensorBase, wrap

if TYPE_CHECKING:  # Tensor joins the mixins: candlejax.tensor sets this name at runtime (get_type_hints)
    from candlejax.tensor import Tensor

_FLOAT = frozenset(d.np for d in DType if d.is_float())
_HALF = frozenset({np.dtype(jnp.bfloat16), np.dtype(np.float16)})
_U32 = np.dtype(np.uint32)
_F32_HINT = "convert with .to_dtype(DType.F32) first"


def _up(a: Any) -> Any:
    """bf16/f16 -> f32 for accumulation (a no-op for other dtypes)."""
    return a.astype(jnp.float32) if a.dtype in _HALF else a


# --- kernels (one cached jit each; axes and flags are static) -----------------------------------
@op(static=("axis", "keepdims"))
def _sum(a: Any, *, axis: tuple[int, ...], keepdims: bool) -> Any:
    # an explicit dtype= turns off jnp.sum's f32 accumulation of bf16/f16: upcast by hand
    return jnp.sum(_up(a), axis=axis, keepdims=keepdims).astype(a.dtype)


@op(static=("axis", "keepdims"))
def _mean(a: Any, *, axis: tuple[int, ...], keepdims: bool) -> Any:
    return jnp.mean(_up(a), axis=axis, keepdims=keepdims).astype(a.dtype)


@op(static=("axis", "keepdims"), rowwise="axis", rowwise_float=False)  # ±0.0 ties: XLA's order
def _max(a: Any, *, axis: int, keepdims: bool) -> Any:
    return jnp.max(a, axis=axis, keepdims=keepdims)


@op(static=("axis", "keepdims"), rowwise="axis", rowwise_float=False)  # ±0.0 ties: XLA's order
def _min(a: Any, *, axis: int, keepdims: bool) -> Any:
    return jnp.min(a, axis=axis, keepdims=keepdims)


@op(static=("axis", "keepdims"), rowwise="axis")
def _argmax(a: Any, *, axis: int, keepdims: bool) -> Any:
    return jnp.argmax(a, axis=axis, keepdims=keepdims).astype(_U32)


@op(static=("axis", "keepdims"), rowwise="axis")
def _argmin(a: Any, *, axis: int, keepdims: bool) -> Any:
    return jnp.argmin(a, axis=axis, keepdims=keepdims).astype(_U32)


@op(static=("axis", "keepdims"))
def _var(a: Any, *, axis: int, keepdims: bool) -> Any:
    x = _up(a)
    mean = jnp.mean(x, axis=axis, keepdims=True)
    d = x - mean
    n = x.shape[axis]
    # an empty dim: NaN as torch and numpy (ddof=1), not 0 / -1 = -0.0 (Candle's usize n - 1 underflows)
    return (jnp.sum(d * d, axis=axis, keepdims=keepdims) / (n - 1 if n else jnp.nan)).astype(a.dtype)


def sqrt_zero_grad(x: Any) -> Any:
    """``sqrt(x)`` whose gradient at ``x == 0`` is 0 rather than ``inf · 0 = NaN`` (PyTorch's
    ``linalg.norm`` and ``std`` backward at a zero norm / a constant row)."""
    zero = x == 0
    return jnp.where(zero, jnp.zeros((), x.dtype), jnp.sqrt(jnp.where(zero, jnp.ones((), x.dtype), x)))


@op(static=("axis", "keepdims"))
def _std(a: Any, *, axis: int, keepdims: bool) -> Any:
    x = _up(a)
    d = x - jnp.mean(x, axis=axis, keepdims=True)
    n = x.shape[axis]
    return sqrt_zero_grad(jnp.sum(d * d, axis=axis, keepdims=keepdims) / (n - 1 if n else jnp.nan)).astype(a.dtype)


@op(static=("axis",))
def _log_sum_exp(a: Any, *, axis: tuple[int, ...]) -> Any:
    return jax.nn.logsumexp(_up(a), axis=axis).astype(a.dtype)


@op(static=("axis",))
def softmax_op(a: Any, *, axis: int) -> Any:
    """Softmax of a float array over ``axis`` (max-subtracted; bf16/f16 computed in f32). An empty
    ``axis`` gives the empty array back, as PyTorch."""
    if a.shape[axis] == 0:
        return a
    x = _up(a)
    m = jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    e = jnp.exp(x - m)
    return (e / jnp.sum(e, axis=axis, keepdims=True)).astype(a.dtype)


@op(static=("axis",))
def log_softmax_op(a: Any, *, axis: int) -> Any:
    """``log(softmax(a, axis))`` of a float array, computed stably (an empty ``axis``: the empty array)."""
    if a.shape[axis] == 0:
        return a
    x = _up(a)
    m = jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    s = x - m
    return (s - jnp.log(jnp.sum(jnp.exp(s), axis=axis, keepdims=True))).astype(a.dtype)


@op(static=("axis",), rowwise="axis")
def _cumsum(a: Any, *, axis: int) -> Any:
    return jnp.cumsum(_up(a), axis=axis).astype(a.dtype)


@op(static=("descending",))
def _argsort(a: Any, *, descending: bool) -> Any:
    return jnp.argsort(a, axis=-1, stable=True, descending=descending).astype(_U32)


@op(static=("descending",))
def _sort(a: Any, *, descending: bool) -> Any:
    idx = jnp.argsort(a, axis=-1, stable=True, descending=descending)
    return jnp.take_along_axis(a, idx, axis=-1), idx.astype(_U32)


def _single_dim(dim: Any, shape: tuple[int, ...], op_name: str) -> int:
    """Candle's ``Dim``: one dim only; a sequence of several raises ``OnlySingleDimension``."""
    if type(dim) is int and 0 <= dim < len(shape):
        return dim
    if isinstance(dim, (list, tuple)):
        if len(dim) != 1:
            raise errors.OnlySingleDimension(op_name)
        dim = dim[0]
    return resolve_dim(dim, shape, op_name)


def _float_only(t: TensorBase, op_name: str, hint: str = _F32_HINT) -> None:
    if t._a.dtype not in _FLOAT:
        raise errors.UnsupportedDTypeForOp(t.dtype, op_name, hint)


def _run(k: Any, a: Any, **kw: Any) -> Any:
    return k.jitted(a, **kw) if is_eager() else k.raw(a, **kw)


_MEAN_INT_HINT = "the mean of an integer tensor is not an integer (Candle returns 0); convert with .to_dtype(DType.F32)"


def _torch_dims(dims: Any, dim: Any, op_name: str) -> Any:
    """The dims of a reduction given Candle-style (positional) or PyTorch-style (``dim=``)."""
    if dim is not None:
        if dims is not None:
            raise errors.Msg(f"{op_name}: pass the dims once (positionally or as dim=), not both")
        if isinstance(dim, (list, tuple)) and not dim:
            return None  # PyTorch: dim=() reduces every dim (Candle's sum(()) reduces none)
        return dim
    return dims


def _asc(asc: Any, op_name: str) -> bool:
    """A sort's ``asc`` flag: a bool (Candle's ``asc: bool``), never None or a number read as truth."""
    if asc is True or asc is False:
        return asc
    if isinstance(asc, np.bool_):
        return bool(asc)
    raise errors.InvalidArgument(
        f"{op_name}: asc must be a bool (True sorts ascending, False descending), got {asc!r} ({type(asc).__name__})"
    )


def _keep_all(t: TensorBase, out: Any, keepdim: bool) -> Any:
    return out.reshape((1,) * t.rank) if keepdim else out


class ReduceMixin(TensorBase):
    """Candle's reductions, each with a ``_keepdim`` variant that keeps the reduced dims as size 1."""

    __slots__ = ()

    # ---- sum / mean (multi-dim) ---------------------------------------------------------------
    def _sum_impl(self, dims: Any, keepdim: bool) -> Any:
        a = self._a
        s = a.shape
        axis = (dims,) if type(dims) is int and 0 <= dims < len(s) else resolve_dims(dims, s, "sum")
        if is_eager():
            return wrap(_sum.jitted(a, axis=axis, keepdims=keepdim))
        return wrap(_sum.raw(a, axis=axis, keepdims=keepdim))

    def sum_keepdim(self, dims: Any) -> Tensor:
        """Sum over one dim or several, keeping them as size 1 (Candle ``sum_keepdim``,
        torch ``sum(dims, keepdim=True)``). Keeps the dtype: integer sums wrap."""
        return self._sum_impl(dims, True)

    def sum(self, dims: Any = None, keepdim: bool | None = None, *, dim: Any = None) -> Tensor:
        """Sum over one dim or several, removing them (Candle ``sum``, torch ``sum(dims)``).

        PyTorch spellings: ``sum()`` is ``sum_all()``; ``dim=`` and ``keepdim`` are accepted. With those
        spellings a U8 tensor (a comparison mask) counts in U32, as PyTorch's sum promotes to int64;
        Candle's ``sum(dims)`` / ``sum_all()`` keep U8 and wrap at 256."""
        d = _torch_dims(dims, dim, "sum")
        t = self
        if self._a.dtype == np.uint8 and (d is None or dim is not None or keepdim is not None):
            t = self.to_dtype(DType.U32)  # type: ignore[attr-defined]
        if d is None:
            return _keep_all(self, t.sum_all(), bool(keepdim))
        return t._sum_impl(d, bool(keepdim))

    def _mean_impl(self, dims: Any, keepdim: bool, name: str) -> Any:
        a = self._a
        axis = resolve_dims(dims, a.shape, name)
        _float_only(self, name, _MEAN_INT_HINT)
        return wrap(_run(_mean, a, axis=axis, keepdims=keepdim))

    def mean_keepdim(self, dims: Any) -> Tensor:
        """Mean over one dim or several, keeping them (Candle ``mean_keepdim``); float only."""
        return self._mean_impl(dims, True, "mean-keepdim")

    def mean(self, dims: Any = None, keepdim: bool = False, *, dim: Any = None) -> Tensor:
        """Mean over one dim or several, removing them (Candle ``mean``, torch ``mean(dims)``); float only.

        PyTorch spellings: ``mean()`` is ``mean_all()``; ``dim=`` and ``keepdim=True`` are accepted."""
        d = _torch_dims(dims, dim, "mean")
        if d is None:
            return _keep_all(self, self.mean_all(), keepdim)
        return self._mean_impl(d, bool(keepdim), "mean-keepdim" if keepdim else "mean")

    # ---- single-dim reductions ----------------------------------------------------------------
    def _reduce1(self, k: Any, dim: Any, keepdim: bool, name: str) -> Any:
        a = self._a
        try:
            s = a.aval.shape
        except AttributeError:
            s = a.shape
        axis = dim if type(dim) is int and 0 <= dim < len(s) else _single_dim(dim, s, name)
        if s[axis] == 0:
            raise errors.EmptyTensor("reduce")
        if is_eager():
            return wrap(k.jitted(a, axis=axis, keepdims=keepdim))
        return wrap(k.raw(a, axis=axis, keepdims=keepdim))

    def max_keepdim(self, dim: Any) -> Tensor:
        """Max over one dim, kept as size 1 (Candle ``max_keepdim``, torch ``amax(dim, keepdim=True)``)."""
        return self._reduce1(_max, dim, True, "max")

    def max(self, d: Any = None, keepdim: bool | None = None, *, dim: Any = None) -> Tensor:
        """Max over one dim, removed (Candle ``max(dim)``, torch ``amax(dim)``); ``max()`` is ``max_all()``.

        PyTorch's ``max(dim=d)`` / ``max(d, keepdim)`` return ``(values, indices)``: those spellings raise,
        naming ``max(d)`` / ``max_keepdim(d)`` and ``argmax(d)``, since indexing the values-only result
        (``x.max(-1, keepdim=True)[0]``) would go wrong silently. PyTorch's elementwise ``max(other)``
        raises, naming ``maximum``."""
        _refuse_torch_extremum("max", d, keepdim, dim)
        if d is None:
            return _keep_all(self, self.max_all(), bool(keepdim))
        return self._reduce1(_max, d, False, "max")

    def min_keepdim(self, dim: Any) -> Tensor:
        """Min over one dim, kept as size 1 (Candle ``min_keepdim``, torch ``amin(dim, keepdim=True)``)."""
        return self._reduce1(_min, dim, True, "min")

    def min(self, d: Any = None, keepdim: bool | None = None, *, dim: Any = None) -> Tensor:
        """Min over one dim, removed (Candle ``min(dim)``, torch ``amin(dim)``); ``min()`` is ``min_all()``.

        PyTorch's ``min(dim=d)`` / ``min(d, keepdim)`` return ``(values, indices)``: those spellings raise,
        naming ``min(d)`` / ``min_keepdim(d)`` and ``argmin(d)``, since indexing the values-only result
        (``x.min(-1, keepdim=True)[0]``) would go wrong silently. PyTorch's elementwise ``min(other)``
        raises, naming ``minimum``."""
        _refuse_torch_extremum("min", d, keepdim, dim)
        if d is None:
            return _keep_all(self, self.min_all(), bool(keepdim))
        return self._reduce1(_min, d, False, "min")

    def argmax_keepdim(self, dim: Any) -> Tensor:
        """Index (U32) of the first max over one dim, kept as size 1 (Candle ``argmax_keepdim``)."""
        return self._reduce1(_argmax, dim, True, "argmax")

    def argmax(self, dim: Any = None, keepdim: bool = False) -> Tensor:
        """Index (U32) of the first max over one dim (Candle ``argmax``, torch ``argmax(dim)`` -> i64).

        PyTorch spellings: ``argmax()`` is the index into the flattened tensor; ``keepdim=True`` accepted."""
        d = dim
        if d is None:
            return self._flat_arg(_argmax, keepdim, "argmax")
        return self._reduce1(_argmax, d, bool(keepdim), "argmax")

    def argmin_keepdim(self, dim: Any) -> Tensor:
        """Index (U32) of the first min over one dim, kept as size 1 (Candle ``argmin_keepdim``)."""
        return self._reduce1(_argmin, dim, True, "argmin")

    def argmin(self, dim: Any = None, keepdim: bool = False) -> Tensor:
        """Index (U32) of the first min over one dim (Candle ``argmin``, torch ``argmin(dim)`` -> i64).

        PyTorch spellings: ``argmin()`` is the index into the flattened tensor; ``keepdim=True`` accepted."""
        d = dim
        if d is None:
            return self._flat_arg(_argmin, keepdim, "argmin")
        return self._reduce1(_argmin, d, bool(keepdim), "argmin")

    def var_keepdim(self, dim: Any) -> Tensor:
        """Unbiased variance (divide by n - 1) over one dim, kept (Candle ``var_keepdim``,
        torch ``var(dim, keepdim=True)``); float only."""
        a = self._a
        axis = _single_dim(dim, a.shape, "var")
        _float_only(self, "var")
        return wrap(_run(_var, a, axis=axis, keepdims=True))

    def var(self, dim: Any = None, keepdim: bool = False) -> Tensor:
        """Unbiased variance over one dim, removed (Candle ``var``, torch ``var(dim)``); float only.

        PyTorch spellings: ``var()`` is the variance of all elements; ``keepdim=True`` accepted."""
        if dim is None:
            flat = self.flatten_all()
            return _keep_all(self, flat.var(0), keepdim)
        if keepdim:
            return self.var_keepdim(dim)
        a = self._a
        axis = _single_dim(dim, a.shape, "var")
        _float_only(self, "var")
        return wrap(_run(_var, a, axis=axis, keepdims=False))

    # ---- whole-tensor reductions (rank-0 results) ---------------------------------------------
    def sum_all(self) -> Tensor:
        """Sum of every element, rank 0 (Candle ``sum_all``, torch ``sum()``)."""
        a = self._a
        return wrap(_run(_sum, a, axis=tuple(range(a.ndim)), keepdims=False))

    def mean_all(self) -> Tensor:
        """Mean of every element, rank 0 (Candle ``mean_all``, torch ``mean()``); float only."""
        a = self._a
        _float_only(self, "mean_all", _MEAN_INT_HINT)
        return wrap(_run(_mean, a, axis=tuple(range(a.ndim)), keepdims=False))

    def max_all(self) -> Tensor:
        """Max of every element, rank 0 (Candle ``max_all``, torch ``max()``)."""
        return self._all_reduce(_max_all)

    def min_all(self) -> Tensor:
        """Min of every element, rank 0 (Candle ``min_all``, torch ``min()``)."""
        return self._all_reduce(_min_all)

    def std(self, dim: Any = None, keepdim: bool = False) -> Tensor:
        """``var(dim, keepdim).sqrt()`` (PyTorch ``std``, unbiased); Candle has no ``std``. As
        PyTorch's, the gradient of a zero std (a constant row) is 0, not NaN."""
        if dim is None:
            return _keep_all(self, self.flatten_all().std(0), keepdim)
        a = self._a
        axis = _single_dim(dim, a.shape, "std")
        _float_only(self, "std")
        return wrap(_run(_std, a, axis=axis, keepdims=bool(keepdim)))

    def _flat_arg(self, k: Any, keepdim: bool, name: str) -> Any:
        out = self.flatten_all()._reduce1(k, 0, False, name)
        return out.reshape((1,) * self.rank) if keepdim else out

    def _all_reduce(self, k: Any) -> Any:
        a = self._a
        if a.ndim == 0:
            return self
        if a.size == 0:
            raise errors.EmptyTensor("reduce")
        return wrap(k.jitted(a) if is_eager() else k.raw(a))

    # ---- composites ---------------------------------------------------------------------------
    def log_sum_exp(self, dims: Any) -> Tensor:
        """``log(sum(exp(x), dims))``, computed stably (Candle ``log_sum_exp``, torch ``logsumexp``);
        the reduced dims are removed; float only. All ``-inf`` gives ``-inf`` (Candle gives NaN)."""
        a = self._a
        s = a.shape
        axis = (dims,) if type(dims) is int and 0 <= dims < len(s) else resolve_dims(dims, s, "log-sum-exp")
        if a.dtype not in _FLOAT:
            _float_only(self, "log-sum-exp")
        if not axis:
            return self
        if is_eager():
            return wrap(_log_sum_exp.jitted(a, axis=axis))
        return wrap(_log_sum_exp.raw(a, axis=axis))

    def cumsum(self, dim: Any) -> Tensor:
        """Cumulative sum along ``dim`` (Candle ``cumsum``, torch ``cumsum``). Exact and O(n) (Candle uses
        an O(n^2) matmul and is float only; integers work here and keep their dtype, except U8 masks,
        which count in U32 as PyTorch's bool/u8 cumsum counts in int64)."""
        a = self._a
        axis = resolve_dim(dim, a.shape, "cumsum")
        if a.dtype == np.uint8:
            a = a.astype(_U32)
        return wrap(_run(_cumsum, a, axis=axis))

    def arg_sort_last_dim(self, asc: bool = True) -> Tensor:
        """U32 indices that sort the last dim (Candle ``arg_sort_last_dim``, torch ``argsort(-1)``).
        Stable: ties keep their original order (Candle's sort is documented as unstable)."""
        a = self._a
        if a.ndim == 0:
            raise errors.Msg("empty last-dim in arg-sort")
        return wrap(_run(_argsort, a, descending=not _asc(asc, "arg_sort_last_dim")))

    def sort_last_dim(self, asc: bool = True) -> tuple[Tensor, Tensor]:
        """``(sorted, indices)`` along the last dim (Candle ``sort_last_dim``, torch ``sort(-1)``);
        stable; the sorted values are differentiable (Candle's are not)."""
        a = self._a
        if a.ndim == 0:
            raise errors.Msg("empty last-dim in arg-sort")
        v, i = _run(_sort, a, descending=not _asc(asc, "sort_last_dim"))
        return wrap(v), wrap(i)


@op
def _max_all(a: Any) -> Any:
    return jnp.max(a)


@op
def _min_all(a: Any) -> Any:
    return jnp.min(a)


def _refuse_torch_extremum(op: str, d: Any, keepdim: Any, dim: Any) -> None:
    """PyTorch's ``max(other)`` (elementwise) and ``max(dim=d)`` / ``max(d, keepdim)`` (``(values,
    indices)``) spellings of ``op`` (``"max"`` / ``"min"``) raise, naming Candle's."""
    if isinstance(d, TensorBase) or isinstance(dim, TensorBase):
        full = "maximum" if op == "max" else "minimum"
        raise errors.Msg(f"{op}: {op}(other) is PyTorch's elementwise {full}: use x.{full}(other) (Candle's name)")
    if dim is not None or (d is not None and keepdim is not None):
        k = dim if d is None else d
        raise errors.Msg(
            f"{op}: PyTorch's {op}(dim, keepdim) returns (values, indices); here {op}(d) is Candle's, the values"
            f" only (torch a{op}): write x.{op}({k}) or x.{op}_keepdim({k}) for the values and x.arg{op}({k})"
            f" / x.arg{op}_keepdim({k}) for the indices"
        )
