"""Losses (``candle_nn::loss``): ``nll``, ``cross_entropy``, ``mse``, ``binary_cross_entropy_with_logit``, ``huber``.

requires: candlejax.nn.ops (log_softmax), candlejax._dispatch.op
provides: ``nll``, ``cross_entropy``, ``mse``, ``binary_cross_entropy_with_logit``, ``huber``

Every loss returns a scalar Tensor (the mean), as Candle's. Class targets are integer tensors
(u32 as in Candle; i32/i64/u8 also accepted). Eagerly, a target outside ``[0, classes)`` raises
(as torch and Candle do). Under ``jax.jit`` values are unknown while tracing, so every out-of-range
target (negative or ``>= classes``) gives a NaN loss; wrap the loss in :func:`check_finite` to stop
there instead. The target dtype's largest value (``u32::MAX`` for u32) is Candle's "no index", as
in candlejax's gathers: that row's term is 0 (it still counts in the mean), eagerly and under jit.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax._dispatch import device_mismatch, op
from candlejax.device import single_device
from candlejax.dtype import DType, to_dtype
from candlejax.errors import fmt_shape
from candlejax.nn.module import as_array
from candlejax.nn.ops import _check_float, _upcast
from candlejax.tensor._core import wrap
from candlejax.tensor.reduce import log_softmax_op

__all__ = ["binary_cross_entropy_with_logit", "check_finite", "cross_entropy", "huber", "mse", "nll"]


def _check_targets(op_name: str, inp: Any, target: Any) -> None:
    if not single_device() and not isinstance(inp, jax.core.Tracer) and not isinstance(target, jax.core.Tracer) \
            and inp.devices() != target.devices():  # fmt: skip
        raise device_mismatch(op_name, (inp, target))  # Candle's gather of the targets: one device
    if target.ndim != 1:
        raise errors.Msg(f"the target tensor should have a single dimension ({fmt_shape(target.shape)})")
    if inp.ndim != 2:  # Candle's nll says "target" here, about the input
        raise errors.Msg(f"the target tensor should have two dimensions ({fmt_shape(inp.shape)})"
                         f" ({op_name} expects an input tensor of rank 2)")  # fmt: skip
    if inp.shape[0] != target.shape[0]:
        raise errors.Msg(f"batch size mismatch between inp ({inp.shape[0]}) and target ({target.shape[0]})")
    if not jnp.issubdtype(target.dtype, jnp.integer):
        raise errors.UnexpectedDType(DType.U32, to_dtype(target.dtype), f"{op_name}: targets must be class ids")
    if isinstance(target, jax.core.Tracer) or target.size == 0:
        return
    t = np.asarray(target)
    bad = np.flatnonzero(((t < 0) | (t >= inp.shape[1])) & (t != np.iinfo(t.dtype).max))
    if bad.size:
        i = int(bad[0])
        raise errors.Msg(
            f"{op_name}: target {int(t[i])} at batch index {i} is out of bounds for {inp.shape[1]} classes"
            f" (valid: 0..{inp.shape[1] - 1})"
        )


def _raise_nonfinite(what: str, ok: Any) -> None:
    if not bool(ok):
        raise errors.Msg(f"check_finite: {what} contains NaN or inf")


def check_finite(x: Any, what: str = "loss") -> Any:
    """Return ``x`` after checking that it holds no NaN or inf.

    Eagerly it raises :class:`candlejax.errors.Msg` at once. Under ``jax.jit`` / ``grad`` it adds a
    host callback that raises when the compiled step runs (JAX re-raises it as a ``JaxRuntimeError``
    carrying this message when the result is read). PyTorch has no equivalent; it is the usual
    ``torch.isfinite(loss).all()`` guard.
    """
    a = as_array(x)
    ok = jnp.all(jnp.isfinite(a))
    if isinstance(a, jax.core.Tracer):
        jax.debug.callback(functools.partial(_raise_nonfinite, what), ok)
    else:
        _raise_nonfinite(what, ok)
    return x


@op
def _nll(lp: Any, t: Any) -> Any:
    c, tmax = lp.shape[1], int(jnp.iinfo(t.dtype).max)
    no_index = t == jnp.asarray(tmax, t.dtype)  # Candle's "no index": the term is 0, as in gather
    bad = t >= jnp.asarray(c, t.dtype) if c <= tmax else jnp.zeros(t.shape, bool)  # u8 ids, 300 classes
    if jnp.issubdtype(t.dtype, jnp.signedinteger):
        bad = bad | (t < 0)
    ids = jnp.clip(t, 0, min(c - 1, tmax)).astype(jnp.int32)  # clip before the cast: u32 2**31 stays large
    picked = jnp.take_along_axis(_upcast(lp), ids[:, None], axis=1)[:, 0]
    picked = jnp.where(no_index, 0.0, jnp.where(bad, jnp.nan, picked))  # traced bad targets: NaN loss
    return (-jnp.mean(picked)).astype(lp.dtype)


@op
def _ce(logits: Any, t: Any) -> Any:
    return _nll(log_softmax_op.raw(logits, axis=1), t)


def nll(inp: Any, target: Any) -> Any:
    """Mean of ``-inp[i, target[i]]``; ``inp`` ``(B, C)`` log-probabilities, ``target`` ``(B,)``
    (``F.nll_loss``; Candle's ``loss::nll``). Bad targets raise eagerly; under jit they give NaN
    (module docstring)."""
    x, t = as_array(inp), as_array(target)
    _check_float("nll", x)
    _check_targets("nll", x, t)
    return wrap(_nll(x, t))


def cross_entropy(inp: Any, target: Any) -> Any:
    """``nll(log_softmax(inp, 1), target)``: logits ``(B, C)``, class ids ``(B,)`` (``F.cross_entropy``).
    Bad targets raise eagerly; under jit they give NaN (module docstring)."""
    x, t = as_array(inp), as_array(target)
    _check_float("cross_entropy", x)
    if x.ndim != 2:
        raise errors.Msg(f"cross_entropy expects an input tensor of rank 2, got {fmt_shape(x.shape)}")
    _check_targets("cross_entropy", x, t)
    return wrap(_ce(x, t))


def _check_same(op_name: str, x: Any, t: Any) -> None:
    """Same shape and dtype, with the error Candle's loss raises: ``mse`` fails in ``inp - target``,
    ``binary_cross_entropy_with_logit`` in ``target * inp.log()``, ``huber`` checks the shapes first."""
    _check_float(op_name, x)
    inner = _CANDLE_BINARY_OP.get(op_name, op_name)
    lhs, rhs = (t, x) if inner == "mul" else (x, t)
    if x.shape != t.shape:
        if op_name == "huber":
            raise errors.Msg(
                "input and target must have the same shape,"
                f" got inp: {fmt_shape(x.shape)}, target: {fmt_shape(t.shape)}"
            )
        raise errors.ShapeMismatchBinaryOp(lhs.shape, rhs.shape, inner, f"in {op_name}")
    if x.dtype != t.dtype:
        raise errors.DTypeMismatchBinaryOp(to_dtype(lhs.dtype), to_dtype(rhs.dtype), inner)


_CANDLE_BINARY_OP = {"mse": "sub", "binary_cross_entropy_with_logit": "mul", "huber": "sub"}


@op
def _mse(x: Any, t: Any) -> Any:
    return jnp.mean(jnp.square(_upcast(x) - _upcast(t))).astype(x.dtype)


def mse(inp: Any, target: Any) -> Any:
    """Mean squared error; shapes must be equal (``F.mse_loss``)."""
    x, t = as_array(inp), as_array(target)
    _check_same("mse", x, t)
    return wrap(_mse(x, t))


@op
def _bce_logit(x: Any, t: Any) -> Any:
    xf, tf = _upcast(x), _upcast(t)
    # softplus(x) - x·t, written for x >= 0 as softplus(-x) + x·(1 - t) so that a large positive logit
    # with target 1 does not cancel (12: 5.72e-6 for 6.14e-6). Each branch is smooth, so the gradient
    # at x = 0 is sigmoid(0) - t (max(x, 0) + log1p(exp(-|x|)) has the same value, but JAX's
    # subgradients of max and abs at 0 made it -t)
    loss = jnp.where(xf >= 0, jax.nn.softplus(-xf) + xf * (1 - tf), jax.nn.softplus(xf) - xf * tf)
    return jnp.mean(loss).astype(x.dtype)


def binary_cross_entropy_with_logit(inp: Any, target: Any) -> Any:
    """Mean binary cross-entropy on logits (``F.binary_cross_entropy_with_logits``).

    Uses the stable ``softplus(x) - x·t`` form; Candle applies sigmoid first and overflows to
    inf/NaN for large logits.
    """
    x, t = as_array(inp), as_array(target)
    _check_same("binary_cross_entropy_with_logit", x, t)
    return wrap(_bce_logit(x, t))


@op(static=("delta",))
def _huber(x: Any, t: Any, *, delta: float) -> Any:
    d = jnp.abs(_upcast(x) - _upcast(t))
    loss = jnp.where(d < delta, 0.5 * d * d, delta * (d - 0.5 * delta))
    return jnp.mean(loss).astype(x.dtype)


def huber(inp: Any, target: Any, delta: float) -> Any:
    """Mean Huber loss (``F.huber_loss(reduction='mean', delta=delta)``); shapes must be equal, ``delta > 0``."""
    x, t = as_array(inp), as_array(target)
    _check_same("huber", x, t)
    if isinstance(delta, (bool, np.bool_)) or not isinstance(delta, (int, float, np.integer, np.floating)):
        raise errors.InvalidArgument(f"huber: delta must be a positive number, got {delta!r}")
    if not delta > 0:  # NaN too; PyTorch: "huber_loss does not support non-positive values for delta"
        raise errors.InvalidArgument(f"huber: delta must be positive, got {delta!r} (as torch's huber_loss)")
    return wrap(_huber(x, t, delta=float(delta)))


