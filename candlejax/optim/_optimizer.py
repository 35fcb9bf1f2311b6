"""Candle's ``Optimizer`` trait on optax: ``init`` / ``step`` / ``backward_step``, functionally.

requires: jax, optax, candlejax.optim._params, candlejax.tensor
provides: ``Optimizer``, ``OptState``, ``SGD``, ``AdamW``, ``ParamsAdamW``, ``from_optax``, ``NanLoss``

Candle mutates its Vars in place (``opt.backward_step(&loss)``); candlejax returns the new model and
optimizer state instead, so that the whole step is one compiled XLA program:

    state = opt.init(model)
    model, state, loss = opt.backward_step(loss_fn, model, state, x, y)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from candlejax import errors
from candlejax.optim._params import Split, grads_as_params, merge_leaves, split
from candlejax.tensor._core import TensorBase, wrap

Schedule = Callable[[Any], Any]


class NanLoss(errors.Error):
    """A step produced a non-finite loss or gradient (raised when ``check_finite=True``).

    The parameters were *not* updated: ``model`` and ``state`` hold the values from before the
    failing step (the inputs' buffers were donated, so these are the ones to keep using).
    """

    def __init__(self, step: int, loss: float | None, model: Any = None, state: Any = None):
        self.step, self.loss, self.model, self.state = step, loss, model, state
        what = f"loss is {loss}" if loss is not None and not math.isfinite(loss) else "a gradient is not finite"
        super().__init__(
            f"non-finite value at optimizer step {step}: {what}; the update was skipped (check the learning rate,"
            " the inputs of this batch, or clip gradients with clip_grad_norm=...)"
        )


class OptState(NamedTuple):
    """Optimizer state, a pytree: ``step`` (i32 count of steps taken) and the optax state."""

    step: jax.Array
    inner: Any


def _check_lr(lr: Any, who: str) -> Any:
    if callable(lr):
        return lr
    try:
        f = float(lr)
    except (TypeError, ValueError):
        raise errors.Msg(f"{who}: learning rate must be a float or an optax schedule, got {lr!r}") from None
    if not math.isfinite(f) or f < 0:
        raise errors.Msg(f"{who}: learning rate must be finite and >= 0, got {lr}")
    return f


def _array(x: Any) -> Any:
    return x._a if isinstance(x, TensorBase) else x


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, jax.core.Tracer)) or (hasattr(x, "__array__") and hasattr(x, "dtype"))


class _Static:
    """Non-array leaves ride along as compile-time constants (hashed by value when possible)."""

    __slots__ = ("v",)

    def __init__(self, v: Any):
        self.v = v

    def __hash__(self) -> int:
        try:
            return hash((type(self.v), self.v))
        except TypeError:
            return id(self.v)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Static) or type(other.v) is not type(self.v):
            return False
        try:
            return bool(self.v == other.v)
        except Exception:
            return self.v is other.v


def _split_rest(rest: list[Any]) -> tuple[list[Any], tuple[Any, ...]]:
    """``rest`` leaves as (arrays traced by jit, static leaves with None where an array goes)."""
    arrays, statics = [], []
    for r in rest:
        if _is_array(r):
            arrays.append(r)
            statics.append(None)
        else:
            statics.append(_Static(r))
    return arrays, tuple(statics)


def _join_rest(arrays: list[Any], statics: tuple[Any, ...]) -> list[Any]:
    it = iter(arrays)
    return [next(it) if s is None else s.v for s in statics]


def _aliased(params: list[Any], state: Any, others: Any) -> bool:
    """True when a buffer to donate appears twice (tied weights) or also among the other inputs."""
    state_leaves = jax.tree_util.tree_leaves(state)
    ids = {id(a) for a in params}
    ids.update(id(a) for a in state_leaves)
    if len(ids) != len(params) + len(state_leaves):
        return True
    return any(id(a) in ids for a in jax.tree_util.tree_leaves(others))


def _all_finite(tree: Any) -> Any:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class Optimizer:
    """An optax transform with Candle's Optimizer interface, stepping a model functionally.

    Args:
        tx: the optax transform. With ``learning_rate`` given it is the update *direction*
            (candlejax multiplies by ``-lr``); without, it is a complete optax optimizer whose
            updates are added as they are (``optax.apply_updates``).
        learning_rate: a float (changeable with :meth:`set_learning_rate` without recompiling) or
            an optax schedule ``step -> lr``.
        wrt: train only the parameters whose checkpoint name matches this regex (or for which
            this callable returns True); the others stay fixed.
        check_finite: after each step, check the loss and gradients; on NaN/inf skip the update
            and raise :class:`NanLoss` naming the step (one host sync per step, so opt-in).
        donate: let XLA reuse the parameter and state buffers for the new values (the default;
            the model and state passed in are consumed, so keep only the returned ones).
    """

    def __init__(
        self,
        tx: optax.GradientTransformation,
        learning_rate: float | Schedule | None = None,
        *,
        wrt: Any = None,
        check_finite: bool = False,
        donate: bool = True,
        name: str = "optimizer",
    ):
        if not isinstance(tx, optax.GradientTransformation) and not (hasattr(tx, "init") and hasattr(tx, "update")):
            raise errors.Msg(f"{name}: expected an optax GradientTransformation, got {type(tx).__name__}")
        self.tx = tx
        self.name = name
        self._lr: Any = None if learning_rate is None else _check_lr(learning_rate, name)
        self._lr_array: Any = None
        self.wrt = wrt
        self.check_finite = bool(check_finite)
        self.donate = bool(donate)
        self._step_fn: Any = None
        self._compiled: dict[Any, Any] = {}

    # --- Candle's learning-rate API ---------------------------------------------------------
    def learning_rate(self, state: OptState | None = None) -> float:
        """The current learning rate (Candle's ``learning_rate()``); a schedule needs ``state``."""
        if self._lr is None:
            raise errors.Msg(
                f"{self.name}: the learning rate lives inside the optax transform given to from_optax; pass"
                " learning_rate= to from_optax with an lr-free transform (e.g. optax.scale_by_adam()) to manage it here"
            )
        if callable(self._lr):
            if state is None:
                raise errors.Msg(
                    f"{self.name}: the learning rate follows a schedule; pass the state: learning_rate(state)"
                )
            return float(self._lr(state.step))
        return self._lr

    def set_learning_rate(self, lr: float | Schedule) -> None:
        """Candle's ``set_learning_rate(lr)``: takes effect at the next step, with no recompilation."""
        if self._lr is None:
            self.learning_rate()  # raises the explanation
        old, self._lr = self._lr, _check_lr(lr, self.name)
        self._lr_array = None
        if callable(old) or callable(self._lr):  # a schedule is part of the program; a float is a jit argument
            self._compiled.clear()
            self._step_fn = None

    def _lr_arg(self) -> Any:
        if self._lr is None or callable(self._lr):
            return None
        if self._lr_array is None:
            self._lr_array = jnp.asarray(self._lr, jnp.float32)
        return self._lr_array

    # --- state ------------------------------------------------------------------------------------
    def _split(self, model: Any) -> Split:
        return split(model, self.wrt, what=self.name)

    def _check_alive(self, sp: Split, state: OptState) -> None:
        if any(getattr(a, "is_deleted", None) is not None and a.is_deleted() for a in sp.leaves):
            dead = [n for a, n in zip(sp.params, sp.names) if a.is_deleted()]
            raise errors.Msg(
                f"{self.name}: the model's buffers"
                + (f" ({', '.join(dead[:3])}{', ...' if len(dead) > 3 else ''})" if dead else "")
                + " were donated to an earlier optimizer step and no longer exist; keep using the model returned"
                " by step/backward_step (model, state, loss = ...), or build the optimizer with donate=False"
            )
        for a in jax.tree_util.tree_leaves(state):
            if getattr(a, "is_deleted", None) is not None and a.is_deleted():
                raise errors.Msg(
                    f"{self.name}: this optimizer state was donated to an earlier step; use the state it returned"
                )

    def init(self, model: Any) -> OptState:
        """A fresh optimizer state for ``model``'s trainable parameters (Candle's ``Optimizer::new``)."""
        sp = self._split(model)
        state = OptState(jnp.zeros((), jnp.int32), self.tx.init(sp.params))
        first = sp.params[0]
        if isinstance(first, jax.Array) and not isinstance(first, jax.core.Tracer):
            # committed like the parameters, so that the first and later steps share one executable
            if not isinstance(first.sharding, jax.sharding.SingleDeviceSharding):  # on a mesh: moments laid out
                # like their parameter
                from candlejax.distributed._shard import place_opt_state

                state = place_opt_state(self.tx, state, sp.params)
            else:
                state = jax.device_put(state, first.sharding)
        return state

    # --- the update, traced ------------------------------------------------------------------------
    def _update(self, params: list[Any], state: OptState, grads: list[Any], lr: Any) -> tuple[list[Any], OptState]:
        updates, inner = self.tx.update(grads, state.inner, params)
        if self._lr is not None:
            lr_t = lr if lr is not None else jnp.asarray(self._lr(state.step), jnp.float32)
            neg = -lr_t
            updates = jax.tree_util.tree_map(lambda u: neg * u, updates)
        new_params = optax.apply_updates(params, updates)
        return list(new_params), OptState(state.step + 1, inner)

    def _guarded(self, params, state, grads, lr, loss):
        new_params, new_state = self._update(params, state, grads, lr)
        if not self.check_finite:
            return new_params, new_state, None  # no extra output buffer
        ok = _all_finite(grads) if loss is None else jnp.logical_and(jnp.all(jnp.isfinite(loss)), _all_finite(grads))
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        new_params = jax.tree_util.tree_map(keep, new_params, params)
        new_state = jax.tree_util.tree_map(keep, new_state, state)
        return new_params, new_state, ok

    def _raise_nan(self, sp: Split, params: list[Any], rest: list[Any], state: OptState, loss: Any) -> None:
        lv = None if loss is None else float(jnp.asarray(loss).reshape(-1)[0])
        raise NanLoss(int(state.step) + 1, lv, sp.merge(params, rest), state)

    # --- public steps --------------------------------------------------------------------------
    def step(self, model: Any, state: OptState, grads: Any) -> tuple[Any, OptState]:
        """Apply ``grads`` (from ``cj.grad`` / ``jax.grad``, model-shaped) and return ``(model, state)``.

        Candle: ``opt.step(&grads)``. The model's parameter buffers and ``state`` are donated.
        """
        sp = self._split(model)
        g = [_array(x) for x in grads_as_params(sp, grads)]
        self._check_alive(sp, state)
        donate = self.donate and not _aliased(sp.params, state, (g, sp.rest))
        if self._step_fn is None:
            f = lambda p, s, g, lr: self._guarded(p, s, g, lr, None)  # noqa: E731
            self._step_fn = {True: jax.jit(f, donate_argnums=(0, 1)), False: jax.jit(f)}
        params, state2, ok = self._step_fn[donate](sp.params, state, g, self._lr_arg())
        if self.check_finite and not bool(ok):
            self._raise_nan(sp, params, sp.rest, state2, None)
        return sp.merge(params), state2

    def backward_step(
        self, loss_fn: Callable[..., Any], model: Any, state: OptState, *batch: Any
    ) -> tuple[Any, OptState, Any]:
        """One compiled ``value_and_grad`` + update: returns ``(model, state, loss)``.

        Candle: ``opt.backward_step(&loss)``; PyTorch: ``loss.backward(); opt.step(); opt.zero_grad()``.
        ``loss_fn(model, *batch)`` returns a scalar Tensor. The program is compiled once per
        ``loss_fn`` (define it once, not as a new lambda per step) and per input shape; the
        model's parameter buffers and ``state`` are donated, so use the returned ones.
        """
        sp = self._split(model)
        params, rest = sp.params, sp.rest
        rest_arrays, statics = _split_rest(rest)
        donate = self.donate and not _aliased(params, state, (rest_arrays, batch))
        fn = self._compiled.get((loss_fn, donate))
        if fn is None:
            fn = jax.jit(self._make_bstep(loss_fn), static_argnums=(0, 1, 2), donate_argnums=(3, 5) if donate else ())
            self._compiled[(loss_fn, donate)] = fn
        try:
            params, state2, loss, ok = fn(
                sp.treedef, sp.slots, statics, params, rest_arrays, state, self._lr_arg(), batch
            )
        except Exception as e:
            if isinstance(e, ValueError) and "incompatible devices" in str(e):
                from candlejax.distributed._shard import device_mismatch

                raise device_mismatch(f"{self.name}.backward_step", sp.names, params, batch) from e
            if not isinstance(e, jax.errors.JaxRuntimeError):  # not a failure while running (a lost peer)
                self._check_alive(sp, state)  # a donated (deleted) buffer: say which and what to do instead
            raise
        if self.check_finite and not bool(ok):
            self._raise_nan(sp, params, rest, state2, loss)
        return sp.merge(params, rest), state2, wrap(loss)

    def _make_bstep(self, loss_fn: Callable[..., Any]) -> Callable[..., Any]:
        def bstep(treedef, slots, statics, params, rest_arrays, state, lr, batch):
            rest = _join_rest(rest_arrays, statics)

            def f(p: list[Any]) -> Any:
                out = _array(loss_fn(treedef.unflatten(merge_leaves(slots, p, rest)), *batch))
                if getattr(out, "shape", None) not in ((), (1,)):
                    raise errors.Msg(
                        f"backward_step: loss_fn must return a scalar, got shape {errors.fmt_shape(out.shape)}"
                    )
                return out.reshape(())

            loss, grads = jax.value_and_grad(f)(params)
            new_params, new_state, ok = self._guarded(params, state, grads, lr, loss)
            return new_params, new_state, loss, ok

        return bstep

    def __repr__(self) -> str:
        lr = "schedule" if callable(self._lr) else self._lr
        return f"{type(self).__name__}(lr={lr})"


class SGD(Optimizer):
    """Candle's ``SGD``: ``θ ← θ − lr·g`` (no momentum, no weight decay; Config = lr).

    PyTorch: ``torch.optim.SGD(params, lr)``. For momentum or Nesterov use
    ``from_optax(optax.sgd(lr, momentum=0.9))``.
    """

    def __init__(self, lr: float | Schedule, *, clip_grad_norm: float | None = None, **kw: Any):
        tx = optax.identity() if clip_grad_norm is None else optax.clip_by_global_norm(clip_grad_norm)
        super().__init__(tx, _check_lr(lr, "SGD"), name="SGD", **kw)


@dataclass
class ParamsAdamW:
    """Candle's ``ParamsAdamW`` with its defaults (PyTorch's AdamW defaults, except ``weight_decay``)."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        if not callable(self.lr):
            _check_lr(self.lr, "ParamsAdamW")
        for k in ("beta1", "beta2"):
            v = getattr(self, k)
            if not 0.0 <= v < 1.0:
                raise errors.Msg(f"ParamsAdamW: {k} must be in [0, 1), got {v}")
        if self.eps < 0 or self.weight_decay < 0:
            raise errors.Msg(f"ParamsAdamW: eps and weight_decay must be >= 0, got {self.eps}, {self.weight_decay}")


class AdamW(Optimizer):
    """Candle's ``AdamW``: bias-corrected moments, decoupled weight decay.

    With step ``t`` (from 1), ``m ← β1·m + (1−β1)·g``, ``v ← β2·v + (1−β2)·g²``,
    ``m̂ = m/(1−β1ᵗ)``, ``v̂ = v/(1−β2ᵗ)``, ``θ ← θ(1 − lr·wd) − lr·m̂/(√v̂ + eps)``.
    Built as ``optax.chain(scale_by_adam, add_decayed_weights)`` scaled by ``-lr``, which is
    ``optax.adamw`` step for step; PyTorch: ``torch.optim.AdamW(params, lr, betas, eps, wd)``.
    """

    def __init__(self, params: ParamsAdamW | None = None, *, clip_grad_norm: float | None = None, **kw: Any):
        p = ParamsAdamW() if params is None else params
        if not isinstance(p, ParamsAdamW):
            raise errors.Msg(f"AdamW: expected ParamsAdamW, got {type(p).__name__} (use AdamW.new_lr(lr) for a float)")
        self._params = p
        parts = [] if clip_grad_norm is None else [optax.clip_by_global_norm(clip_grad_norm)]
        parts += [optax.scale_by_adam(b1=p.beta1, b2=p.beta2, eps=p.eps), optax.add_decayed_weights(p.weight_decay)]
        super().__init__(optax.chain(*parts), p.lr, name="AdamW", **kw)

    @classmethod
    def new_lr(cls, lr: float, **kw: Any) -> AdamW:
        """Candle's ``AdamW::new_lr(vars, lr)``: the defaults with this learning rate."""
        return cls(ParamsAdamW(lr=lr), **kw)

    def params(self) -> ParamsAdamW:
        """Candle's ``params()`` (``lr`` follows :meth:`set_learning_rate`)."""
        return ParamsAdamW(
            self._lr, self._params.beta1, self._params.beta2, self._params.eps, self._params.weight_decay
        )

    def __repr__(self) -> str:
        p = self.params()
        lr = "schedule" if callable(p.lr) else p.lr
        return f"AdamW(lr={lr}, beta1={p.beta1}, beta2={p.beta2}, eps={p.eps}, weight_decay={p.weight_decay})"


def from_optax(
    tx: optax.GradientTransformation, *, learning_rate: float | Schedule | None = None, **kw: Any
) -> Optimizer:
    """Any optax transform as a candlejax optimizer.

    ``from_optax(optax.adam(1e-3))`` applies the transform's updates as they are;
    ``from_optax(optax.scale_by_adam(), learning_rate=1e-3)`` treats ``tx`` as a direction and
    scales it by ``-lr``, so that :meth:`Optimizer.set_learning_rate` works.
    """
    return Optimizer(tx, learning_rate, name="from_optax", **kw)
