"""Candle's ``Optimizer`` trait on optax: ``init`` / ``step`` / ``backward_step``, functionally.

requires: jax, optax, candlejax.optim._params, candlejax.tensor
provides: ``Optimizer``, ``OptState``, ``SGD``, ``AdamW``, ``ParamsAdamW``, ``from_optax``, ``NanLoss``

Two ways to train, compiling the same XLA program (so their trajectories are bit-identical):

* Candle's: the optimizer is bound to shared ``Var`` handles and updates them in place::

    opt = AdamW(varmap.all_vars(), ParamsAdamW(lr=1e-3))
    loss = opt.backward_step(loss_fn, model, x, y)       # the model's Vars now hold the new values

* JAX's: the model and the optimizer state are values; a step returns new ones (pure under
  ``jax.jit`` / ``grad`` / ``vmap``)::

    state = opt.init(model)
    model, state, loss = opt.backward_step(loss_fn, model, state, x, y)

  The parameter buffers of the model passed in are donated to the step (``donate=True``): that model
  then raises ``DonatedVar`` on any use; with ``donate=False`` it stays usable.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.extend import core as jax_core

from candlejax import errors
from candlejax import random as _random
from candlejax._dispatch import is_eager
from candlejax.device import Device
from candlejax.dtype import to_dtype
from candlejax.optim._params import Split, grads_as_params, is_var, merge_leaves, split
from candlejax.tensor._core import TensorBase, float_arg, unwrap, wrap
from candlejax.xla import OptionsJit

#: Compiled steps kept per optimizer (one per loss function and donation mode), least recently used out.
MAX_COMPILED = 16
_MISSING: Any = object()

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

    def __repr__(self) -> str:
        """The fields, or ``<donated>`` once a functional step consumed the state (its buffers are deleted)."""
        leaves = jax.tree_util.tree_leaves(tuple(self))
        if any(isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer) and a.is_deleted() for a in leaves):
            return "OptState(<donated to an optimizer step: use the state that step returned>)"
        return f"OptState(step={self.step!r}, inner={self.inner!r})"


def _check_lr(lr: Any, who: str) -> Any:
    if callable(lr):
        return lr
    if isinstance(lr, (str, bytes, bool)):  # float("0.1") and float(True) would be taken
        raise errors.InvalidArgument(f"{who}: learning rate must be a float or an optax schedule, got {lr!r}")
    try:
        f = float(lr)
    except (TypeError, ValueError):
        hint = ""
        if isinstance(lr, (list, tuple)) and any(is_var(v) for v in lr):
            hint = f" (a list of Vars goes first: {who}(varmap.all_vars(), ...))"
        raise errors.InvalidArgument(
            f"{who}: learning rate must be a float or an optax schedule, got {type(lr).__name__}{hint}"
        ) from None
    if not math.isfinite(f) or f < 0:
        raise errors.InvalidArgument(f"{who}: learning rate must be finite and >= 0, got {lr}")
    return f


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


def _on_mesh(params: list[Any]) -> bool:
    """True when a parameter is laid out over several devices (a sharded model)."""
    return any(len(getattr(getattr(p, "sharding", None), "device_set", ())) > 1 for p in params)


def _aliased(params: list[Any], state: Any, others: Any) -> bool:
    """True when a buffer to donate appears twice (tied weights) or also among the other inputs."""
    state_leaves = jax.tree_util.tree_leaves(state)
    ids = {id(a) for a in params}
    ids.update(id(a) for a in state_leaves)
    if len(ids) != len(params) + len(state_leaves):
        return True
    return any(id(a) in ids for a in jax.tree_util.tree_leaves(others))


def _named_leaves(model: Any) -> list[Any]:
    """The model's leaves with Var/Buffer handles kept whole (aligned one-to-one with its array leaves)."""
    return jax.tree_util.tree_leaves(model, is_leaf=_is_named)


_NAMED: Any = None


def _is_named(x: Any) -> bool:
    global _NAMED
    if _NAMED is None:
        from candlejax.nn.module import NamedTensor

        _NAMED = NamedTensor
    return isinstance(x, _NAMED)


def _mark_donated(model: Any, sp: Split) -> None:
    """After a donating functional step: the model's trained Vars (and trained plain Tensors, in a model
    without Vars) now raise ``DonatedVar`` on any use, not JAX's "Array has been deleted"."""
    from candlejax.nn.module import DonatedBuffer

    hl = jax.tree_util.tree_leaves(model, is_leaf=lambda x: isinstance(x, TensorBase))
    if len(hl) != len(sp.slots):  # pragma: no cover - a pytree whose leaves differ by is_leaf
        return
    for h, s in zip(hl, sp.slots):
        if s >= 0 and isinstance(h, TensorBase):
            a = h._a
            if type(a) is not DonatedBuffer:
                h._a = DonatedBuffer(h.name, a.shape, a.dtype) if is_var(h) else DonatedBuffer(
                    sp.names[s], a.shape, a.dtype, "Tensor")


def _bind_vars(vars: Any, who: str) -> tuple[Any, ...]:
    """Validate Candle's ``vars`` argument (``varmap.all_vars()``): a non-empty list of float Vars."""
    __tracebackhide__ = True
    if hasattr(vars, "all_vars") and not isinstance(vars, (list, tuple)):
        vars = vars.all_vars()  # a VarMap given as such
    if isinstance(vars, dict):
        vars = list(vars.values())
    if not isinstance(vars, (list, tuple)):
        raise errors.OptimizerUsage(f"{who}: expected a list of Vars (varmap.all_vars()), got {type(vars).__name__}")
    if not vars:
        raise errors.OptimizerUsage(
            f"{who}: got an empty list of Vars; build the model from the VarMap first"
            " (model = Mlp(VarBuilder.from_varmap(varmap, ...))), then create the optimizer with varmap.all_vars()"
        )
    out, seen = [], set()
    for i, v in enumerate(vars):
        if _is_buffer(v):  # BatchNorm running statistics in varmap.all_vars(): never trained, as in Candle
            continue
        if not is_var(v):
            raise errors.OptimizerUsage(
                f"{who}: item {i} of the Vars is a {type(v).__name__}, not a Var; only Vars are shared handles that"
                " an optimizer can update in place (Var.from_tensor(t) makes one; VarBuilder.from_varmap returns them)"
            )
        if not jnp.issubdtype(v._a.dtype, jnp.floating):
            raise errors.UnsupportedDTypeForOp(
                v.dtype, f"{who} (Var {v.name!r})",
                "only float Vars can be trained; Candle silently drops a non-float Var from its optimizer,"
                " candlejax refuses it: leave it out of the list or convert it with .to_dtype(DType.F32)",
            )
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return tuple(out)


def _is_buffer(v: Any) -> bool:
    from candlejax.nn.module import Buffer

    return isinstance(v, Buffer)


def _devices_of(a: Any) -> Any:
    try:
        return frozenset(a.devices())
    except Exception:
        return None


def _device_mismatch(params: list[Any], batch: Any, what: str) -> errors.DeviceMismatch | None:
    """A DeviceMismatch naming the model's and a batch tensor's device, when they differ."""
    from candlejax.device import Device

    pdev = next((d for d in map(_devices_of, params) if d), None)
    if not pdev:
        return None
    for x in jax.tree_util.tree_leaves(batch):
        a = unwrap(x)
        d = _devices_of(a)
        if d and d != pdev:
            lhs = Device.from_jax(min(pdev, key=lambda z: z.id))
            rhs = Device.from_jax(min(d, key=lambda z: z.id))
            e = errors.DeviceMismatch(lhs, rhs, what)
            e.args = (f"{e.args[0]}; the model is on {lhs!r}, a batch tensor on {rhs!r}: move the batch with"
                      f" x.to_device(...) or build the Batcher on the model's device",)  # fmt: skip
            return e
    return None


def _device_of(batch: Any, params: list[Any]) -> Any:
    """The device whose generator a step's draws come from: the first batch Tensor's (as an eager
    ``Dropout`` on the activations would use), else the first parameter's."""
    for x in jax.tree_util.tree_leaves(batch, is_leaf=lambda t: isinstance(t, TensorBase)):
        if isinstance(x, TensorBase):
            return x.device
    for a in params:
        if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer):
            return Device.from_jax(next(iter(a.devices())))
    return Device.Cpu


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
        compiler_options: XLA compiler options for the compiled training step (``jax.jit``'s
            ``compiler_options``; refused ones fall back to none). Convolutional networks trained
            at large batches on the CPU may run faster with ``candlejax.xla.XLA_CONVOLUTION_OPTIONS``
            (the digits CNN at batch 256: 173 -> 178 steps/s in ``bench/train.py``; at batch 64 it
            is slower, 530 -> 490).
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
        vars: Sequence[Any] | None = None,
        compiler_options: dict[str, Any] | None = None,
    ):
        __tracebackhide__ = True
        if not isinstance(tx, optax.GradientTransformation) and not (hasattr(tx, "init") and hasattr(tx, "update")):
            raise errors.InvalidArgument(f"{name}: expected an optax GradientTransformation, got {type(tx).__name__}")
        self.tx = tx
        self.name = name
        self._lr: Any = None if learning_rate is None else _check_lr(learning_rate, name)
        self._lr_array: Any = None
        self.wrt = wrt
        self.check_finite = bool(check_finite)
        self.donate = bool(donate)
        self.compiler_options = dict(compiler_options) if compiler_options else None
        self._step_fn: Any = None
        self._compiled: OrderedDict[Any, Any] = OrderedDict()
        self._rng_used: dict[Any, list[bool]] = {}
        self._rng_cache: Any = None
        self._rng_src: Any = None
        self._warned_closure = False
        # Candle's bound form: the Vars this optimizer updates in place, and its state for them
        self._vars: tuple[Any, ...] | None = None if vars is None else _bind_vars(vars, name)
        self._bound_ids = None if self._vars is None else {id(v) for v in self._vars}
        self._trained: tuple[Any, ...] | None = None  # the Vars stepped (first step's order)
        self._tracing: tuple[Any, Any] = ((), ())  # the step's parameters and names, for _check_closure
        self._state: OptState | None = None
        self._state_shapes: dict[Any, Any] = {}  # parameter shapes -> the state's structure and leaf shapes

    def __getstate__(self) -> dict[str, Any]:
        """copy / deepcopy: the settings, Vars and state, not the compiled steps (their closures belong to
        this optimizer) nor the last traced step's parameters (buffers a donating step deleted)."""
        st = dict(self.__dict__)
        st.update(_step_fn=None, _compiled=OrderedDict(), _rng_used={}, _tracing=((), ()))
        return st

    def __setstate__(self, st: dict[str, Any]) -> None:
        self.__dict__.update(st)
        if self._vars is not None:  # the copied Vars are other objects
            self._bound_ids = {id(v) for v in self._vars}

    @property
    def vars(self) -> tuple[Any, ...]:
        """The Vars this optimizer updates in place (Candle's ``new(vars, ..)``); empty when unbound."""
        return () if self._vars is None else self._vars

    @property
    def state(self) -> OptState | None:
        """The state of a bound optimizer (``None`` before its first step, or when unbound)."""
        return self._state

    @property
    def stepped_vars(self) -> tuple[Any, ...] | None:
        """The Vars a bound optimizer's :attr:`state` covers, in its order (``None`` before its first step)."""
        return self._trained

    def bound_state_template(self, model: Any, names: list[str] | None = None) -> tuple[tuple[Any, ...], OptState]:
        """The Vars a bound optimizer's state would cover and a fresh state for them: the Vars ``names``
        (in that order), else those a step on ``model`` takes, in its order. For :func:`candlejax.checkpoint`."""
        if names is None:
            handles = self._bound_split(model)[1]
        else:
            by_name = {v.name: v for v in self.vars}
            missing = [n for n in names if n not in by_name]
            if missing:
                raise errors.OptimizerUsage(
                    f"{self.name}: the state is for the Vars {missing[:5]}, which this optimizer was not built with"
                )
            handles = tuple(by_name[n] for n in names)
        return handles, self._init_params([unwrap(h) for h in handles])

    def set_bound_state(self, vars: tuple[Any, ...] | None, state: OptState | None) -> None:
        """Replace a bound optimizer's state and the Vars it covers (a restored checkpoint's)."""
        if (vars is None) != (state is None):
            raise errors.OptimizerUsage(f"{self.name}: set_bound_state needs both the Vars and their state, or neither")
        self._trained = None if vars is None else tuple(vars)
        self._state = state

    # --- Candle's learning-rate API ---------------------------------------------------------
    def learning_rate(self, state: OptState | None = None) -> float:
        """The current learning rate (Candle's ``learning_rate()``). With a schedule: at the step of ``state``,
        by default a bound optimizer's own state (the first step's rate before any step)."""
        if self._lr is None:
            raise errors.OptimizerUsage(
                f"{self.name}: the learning rate lives inside the optax transform given to from_optax; pass"
                " learning_rate= to from_optax with an lr-free transform (e.g. optax.scale_by_adam()) to manage it here"
            )
        if callable(self._lr):
            if state is None and self._vars is not None:  # bound: its own state, as Candle's learning_rate()
                return float(self._lr(self._state.step if self._state is not None else jnp.zeros((), jnp.int32)))
            if state is None:
                raise errors.OptimizerUsage(
                    f"{self.name}: the learning rate follows a schedule and this optimizer has no state of its own"
                    " (it was built without Vars); pass the state: learning_rate(state)"
                )
            step = state.step
            if not isinstance(step, jax.core.Tracer) and getattr(step, "is_deleted", lambda: False)():
                raise errors.DonatedVar(self.name, "the state of optimizer")
            return float(self._lr(step))
        return self._lr

    def set_learning_rate(self, lr: float | Schedule) -> None:
        """Candle's ``set_learning_rate(lr)``: takes effect at the next step, with no recompilation."""
        if self._lr is None:
            self.learning_rate()  # raises the explanation
        old, self._lr = self._lr, _check_lr(lr, self.name)
        self._lr_array = None
        if callable(old) or callable(self._lr):  # a schedule is part of the program; a float is a jit argument
            self._compiled.clear()
            self._rng_used.clear()
            self._step_fn = None

    def _lr_arg(self) -> Any:
        """The float learning rate as a jit argument: float64 in x64 mode (so that float64 parameters
        step with the exact rate, as Candle's f64 ``lr``), else float32."""
        if self._lr is None or callable(self._lr):
            return None
        dt = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32  # jnp.result_type(float), cheaply
        if self._lr_array is None or self._lr_array.dtype != dt:
            with jax.ensure_compile_time_eval():  # a concrete array, also when first made under jit / scan:
                self._lr_array = jnp.asarray(self._lr, dt)  # a cached tracer would leak into later traces
        return self._lr_array

    # --- state ------------------------------------------------------------------------------------
    def _split(self, model: Any) -> Split:
        __tracebackhide__ = True
        return split(model, self.wrt, what=self.name)

    def _check_alive(self, sp: Split, state: OptState) -> None:
        __tracebackhide__ = True
        def deleted(a: Any) -> bool:  # a tracer has no buffer (is_deleted() would raise while tracing)
            return getattr(a, "is_deleted", None) is not None and not isinstance(a, jax.core.Tracer) and a.is_deleted()

        if any(deleted(a) for a in sp.leaves):
            dead = [n for a, n in zip(sp.params, sp.names) if deleted(a)]
            if dead:
                raise errors.DonatedVar(", ".join(dead[:3]) + (", ..." if len(dead) > 3 else ""), "the model's Var(s)")
            raise errors.DonatedVar("", "a buffer of the model")
        for a in jax.tree_util.tree_leaves(state):
            if deleted(a):
                raise errors.DonatedVar(self.name, "the state of optimizer")

    def init(self, model: Any) -> OptState:
        """A fresh optimizer state for ``model``'s trainable parameters (Candle's ``Optimizer::new``)."""
        return self._init_params(self._split(model).params)

    # --- the update, traced ------------------------------------------------------------------------
    def _update(self, params: list[Any], state: OptState, grads: list[Any], lr: Any) -> tuple[list[Any], OptState]:
        # optax mixes dtypes (``b1 ** count`` with an int32 count; a float32 rate times bfloat16
        # updates): JAX's standard promotion, whatever the user's jax_numpy_dtype_promotion
        with jax.numpy_dtype_promotion("standard"):
            updates, inner = self.tx.update(grads, state.inner, params)
            if self._lr is not None:
                lr_t = lr if lr is not None else jnp.asarray(self._lr(state.step))
                neg = -lr_t
                # the rate in the update's precision, at least float32 (float64 parameters: the exact rate)
                updates = jax.tree_util.tree_map(lambda u: neg.astype(jnp.promote_types(u.dtype, jnp.float32)) * u,
                                                 updates)  # fmt: skip
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
    def step(self, *args: Any) -> Any:
        """Apply gradients (from ``cj.grad`` / ``jax.grad``, model-shaped).

        * bound (Candle's ``opt.step(&grads)``): ``opt.step(grads)`` updates the Vars in place, matching
          gradients to Vars by the Var names they carry (what ``cj.grad(loss_fn)(model, ...)`` returns; a
          list of unnamed arrays is not matched by position, except the one gradient of a one-Var
          optimizer). As Candle, gradients of other Vars are ignored and the optimizer's Vars without a
          gradient keep their value and optimizer state; a gradient's shape and dtype must be its Var's;
        * functional: ``model, state = opt.step(model, state, grads)``; the model's parameter buffers
          and ``state`` are donated.
        """
        __tracebackhide__ = True
        if len(args) == 1:
            return self._bound_apply(args[0])
        if len(args) != 3 or not isinstance(args[1], OptState):
            raise errors.OptimizerUsage(
                f"{self.name}.step takes (grads) when built with Vars, or (model, state, grads) with the state from"
                " opt.init(model)"
            )
        model, state, grads = args
        sp = self._split(model)
        g = [unwrap(x) for x in grads_as_params(sp, grads)]
        self._check_alive(sp, state)
        self._check_state(sp.params, state)
        donate = self.donate and not _aliased(sp.params, state, (g, sp.rest))
        params, state2, ok = self._apply(sp.params, state, g, donate)
        if donate and not isinstance(sp.params[0], jax.core.Tracer):
            _mark_donated(model, sp)
        if not ok:
            self._raise_nan(sp, params, sp.rest, state2, None)
        return sp.merge(params), state2

    def _apply(
        self, params: list[Any], state: OptState, g: list[Any], donate: bool, unused: tuple[bool, ...] = ()
    ) -> tuple[Any, OptState, bool]:
        """The compiled update; ``ok`` is False when ``check_finite`` found a non-finite gradient.

        With ``unused`` (one flag per parameter), ``g`` holds the gradients of the used parameters only;
        the others keep their value and optimizer state, as Candle skips a Var without a gradient."""
        if self._step_fn is None:
            self._step_fn = {}
        fn = self._step_fn.get((donate, unused))
        if fn is None:
            if any(unused):
                def f(p, s, g, lr):
                    it = iter(g)
                    full = [jnp.zeros_like(x) if u else next(it) for x, u in zip(p, unused)]
                    new_p, new_s, ok = self._guarded(p, s, full, lr, None)
                    new_p = [x if u else y for x, y, u in zip(p, new_p, unused)]
                    return new_p, _keep_param_state(new_s, s, list(unused)), ok
            else:
                f = lambda p, s, g, lr: self._guarded(p, s, g, lr, None)  # noqa: E731
            fn = self._step_fn[(donate, unused)] = jax.jit(f, donate_argnums=(0, 1)) if donate else jax.jit(f)
        new_params, state2, ok = fn(params, state, g, self._lr_arg())
        return new_params, state2, not (self.check_finite and not bool(ok))

    def backward_step(self, loss_fn: Callable[..., Any], model: Any = _MISSING, *args: Any) -> Any:
        """One compiled ``value_and_grad`` + update. ``loss_fn(model, *batch)`` returns a scalar Tensor.

        * bound (Candle's ``opt.backward_step(&loss)``): ``loss = opt.backward_step(loss_fn, model, x, y)``
          updates the optimizer's Vars in place (the model, its VarMap and anyone holding the Vars see
          the new values) and returns the loss;
        * functional: ``model, state, loss = opt.backward_step(loss_fn, model, state, x, y)`` with
          ``state = opt.init(model)``; pure, also under ``jax.jit``. The parameter buffers of the model
          passed in and ``state`` are donated: that model raises ``DonatedVar`` on any use afterwards
          (``donate=False`` keeps it usable).

        Parameters the loss does not read, or reads only through ``detach()``, comparisons, ``argmax`` or a
        multiply by the scalar 0 (Candle's way to freeze a layer; its ``affine`` by 0 cuts the graph), keep
        their value and optimizer state (no weight decay, no momentum step), as Candle's optimizers skip the
        Vars without a gradient and PyTorch's skip those whose ``.grad`` is None; a parameter the loss reads is
        updated even where its gradient is zero. Buffers the loss function sets in place (BatchNorm's running
        statistics in ``forward_t(x, True)``) keep their new values: in the model's Buffers (bound) or in the
        returned model (functional). PyTorch: ``loss.backward(); opt.step(); opt.zero_grad()``. The program is
        compiled once per ``loss_fn`` (define it once, not as a new lambda per step: that warns and recompiles)
        and per input shape; both forms share it, so they compute bit-identical trajectories.
        """
        __tracebackhide__ = True
        if isinstance(loss_fn, TensorBase) or not callable(loss_fn):
            raise errors.OptimizerUsage(
                f"{self.name}.backward_step takes the loss *function*, not a computed loss"
                f" ({type(loss_fn).__name__}): candlejax differentiates a function of the model. Candle's"
                " opt.backward_step(&loss) is written: def loss_fn(model, x, y): return"
                " cj.nn.loss.cross_entropy(model.forward(x), y); loss = opt.backward_step(loss_fn, model, x, y)"
            )
        if model is _MISSING:
            raise errors.OptimizerUsage(
                f"{self.name}.backward_step(loss_fn, model, *batch): the model to differentiate is missing"
            )
        if args and isinstance(args[0], OptState):
            return self._functional_bstep(loss_fn, model, args[0], args[1:])
        if self._vars is None:
            raise errors.OptimizerUsage(
                f"{self.name} was built without Vars, so it has no state of its own: either pass the state"
                " (state = opt.init(model); model, state, loss = opt.backward_step(loss_fn, model, state, x, y)) or"
                f" bind it to the Vars as Candle does ({self.name}(varmap.all_vars(), ...); loss ="
                " opt.backward_step(loss_fn, model, x, y))"
            )
        return self._bound_bstep(loss_fn, model, args)

    def _compiled_step(self, loss_fn: Callable[..., Any], donate: bool) -> Any:
        __tracebackhide__ = True
        key = (loss_fn, donate)
        fn = self._compiled.get(key)
        if fn is not None:
            self._compiled.move_to_end(key)
            return fn
        code = getattr(loss_fn, "__code__", None)
        if code is not None and not self._warned_closure:
            if any(getattr(k[0], "__code__", None) is code and k[0] is not loss_fn for k in self._compiled):
                self._warned_closure = True
                warnings.warn(
                    f"{self.name}.backward_step got a new {getattr(loss_fn, '__name__', 'function')} object with the"
                    " same code as an earlier one (a lambda or closure created per step): each new function object"
                    " is traced and compiled again. Define the loss function once, outside the training loop;"
                    f" only the last {MAX_COMPILED} compiled steps are kept",
                    errors.RecompileWarning,
                    stacklevel=5,  # the user's backward_step call: backward_step -> *_bstep -> _run -> here
                )
        jit_kw: dict[str, Any] = {"static_argnums": (0, 1, 2), "donate_argnums": (3, 5) if donate else ()}
        # set while tracing: [0] when loss_fn draws randomness without key=; [1] per model structure, the
        # positions (among its non-trained arrays) of the Buffers loss_fn sets (BatchNorm's running statistics)
        used: list[Any] = [False, {}]
        self._rng_used[key] = used
        bstep = self._make_bstep(loss_fn, used)
        fn = OptionsJit(bstep, self.compiler_options, **jit_kw) if self.compiler_options else jax.jit(bstep, **jit_kw)
        self._compiled[key] = fn
        while len(self._compiled) > MAX_COMPILED:
            self._rng_used.pop(self._compiled.popitem(last=False)[0], None)
        return fn

    def _run(self, loss_fn: Any, sp: Split, params: list[Any], state: OptState, batch: Any) -> Any:
        """The compiled step on ``params`` (the trained leaves of ``sp``): ``(params, state, loss, ok, rest,
        donate)``, ``rest`` being ``sp.rest`` with the Buffers the loss function set (``forward_t(x, True)``
        of a BatchNorm) holding their new values."""
        __tracebackhide__ = True
        rest_arrays, statics = _split_rest(sp.rest)
        # under a trace (grad, vmap, jit) nothing is donated: JAX would donate the concrete primal
        # buffers it evaluates eagerly while linearising, which the backward pass still reads
        donate = self.donate and is_eager() and not _aliased(params, state, (rest_arrays, batch))
        fn = self._compiled_step(loss_fn, donate)
        rng, used = self._rng_arg(params, batch), self._rng_used[(loss_fn, donate)]
        self._tracing = (params, sp.names)  # read only while the step is traced (_check_closure)
        try:
            out = fn(sp.treedef, sp.slots, statics, params, rest_arrays, state, self._lr_arg(), batch, rng)
        except Exception as exc:
            if isinstance(rng, tuple):  # the draw reserved for the step goes back
                _random.release(*self._rng_src)
            if not isinstance(exc, jax.errors.JaxRuntimeError):  # not a failure while running (a lost peer)
                self._check_alive(sp, state)  # a donated (deleted) buffer: say which and what to do instead
            if isinstance(exc, ValueError) and "incompatible devices" in str(exc) and _on_mesh(params):
                from candlejax.distributed._shard import device_mismatch  # names the mesh's devices

                raise device_mismatch(f"{self.name}.backward_step", sp.names, params, batch) from None
            e = _device_mismatch(params, batch, f"{self.name}.backward_step")
            if e is not None:
                raise e from None
            raise
        if not used[0] and isinstance(rng, tuple):  # the step drew nothing: the reserved draw goes back
            _random.release(*self._rng_src)
        *out, stats = out
        rest = sp.rest
        if stats:
            at = [i for i, r in enumerate(rest) if _is_array(r)]
            rest = list(rest)
            for k, v in zip(used[1][(sp.treedef, sp.slots, statics)], stats):
                rest[at[k]] = v
        return (*out, rest, donate)

    def _rng_arg(self, params: list[Any], batch: Any) -> Any:
        """The randomness a loss function may draw without ``key=`` (``Dropout.forward_t(xs, true)``,
        ``Tensor.randn``), passed into the compiled step so that each step gets fresh values: inside a
        ``key_scope`` a key drawn from it; eagerly the device generator's ``(seed, counter)`` (advanced
        only when the step drew from it, so models without randomness leave the generator alone);
        under a trace without a scope ``None`` (a draw raises ``TracingError``, as elsewhere)."""
        if getattr(_random._scopes, "stack", None):
            return _random.next_key(None, "backward_step")
        if not is_eager():
            return None
        dev = _device_of(batch, params)
        # the draw is reserved now (other threads may draw from the generator during the step), and
        # given back after it unless the loss function drew from it
        seed, counter = _random.reserve(dev)
        cache = self._rng_cache
        if cache is None or cache[0] != (dev, seed, counter):
            data = jnp.asarray([seed >> 32, seed & 0xFFFFFFFF], jnp.uint32)
            cache = self._rng_cache = ((dev, seed, counter), (data, jnp.asarray(counter, jnp.uint32)))
        self._rng_src = cache[0]
        return cache[1]

    def _check_state(self, params: list[Any], state: OptState) -> None:
        """Refuse a functional ``state`` made by ``init`` for another model (other parameter shapes or count):
        inside the compiled step it failed with JAX's shape or pytree errors."""
        __tracebackhide__ = True
        key = tuple((tuple(p.shape), p.dtype) for p in params)
        want = self._state_shapes.get(key)
        if want is None:
            shaped = jax.eval_shape(self.tx.init, [jax.ShapeDtypeStruct(*k) for k in key])
            leaves, tdef = jax.tree_util.tree_flatten(shaped)
            want = self._state_shapes[key] = (tdef, tuple(tuple(a.shape) for a in leaves))
        g_leaves, g_def = jax.tree_util.tree_flatten(state.inner)
        if g_def != want[0] or tuple(tuple(getattr(b, "shape", ())) for b in g_leaves) != want[1]:
            raise errors.OptimizerUsage(
                f"{self.name}: the optimizer state does not match the model ({len(params)} parameters of shapes"
                f" {[tuple(p.shape) for p in params][:4]}{', ...' if len(params) > 4 else ''}): it was made by"
                " opt.init for another model; make one for this model with state = opt.init(model)"
            )

    def _functional_bstep(self, loss_fn: Any, model: Any, state: OptState, batch: Any) -> Any:
        __tracebackhide__ = True
        sp = self._split(model)
        self._check_state(sp.params, state)
        params, state2, loss, ok, rest, donate = self._run(loss_fn, sp, sp.params, state, batch)
        if self.check_finite and not bool(ok):
            self._raise_nan(sp, params, sp.rest, state2, loss)
        if donate and not isinstance(sp.params[0], jax.core.Tracer):
            _mark_donated(model, sp)
        return sp.merge(params, rest), state2, wrap(loss)

    # --- Candle's bound form -------------------------------------------------------------------
    def _bound_split(self, model: Any) -> tuple[Split, tuple[Any, ...]]:
        """The model split with the optimizer's Vars as the trained leaves, and those Var handles."""
        __tracebackhide__ = True
        sp = self._split(model)
        hl = _named_leaves(model)
        if len(hl) != len(sp.slots):  # pragma: no cover
            raise errors.OptimizerUsage(f"{self.name}: cannot flatten the model consistently")
        handles: list[Any] = [None] * len(sp.names)
        bound = self._bound_ids
        foreign = False
        for h, s in zip(hl, sp.slots):
            if s < 0:
                continue
            if handles[s] is None:
                handles[s] = h
                if id(h) not in bound:
                    foreign = True
            elif handles[s] is not h:  # two handles sharing one buffer: updates would reach only one
                raise errors.OptimizerUsage(
                    f"{self.name}: the model holds two different Var objects for {sp.names[s]!r} that share one"
                    " buffer; use one Var in both places (tied weights) so that updates reach both"
                )
        if not foreign:
            return sp, tuple(handles)
        # Vars of the model that this optimizer does not own are not trained (as in Candle)
        keep = [id(h) in bound for h in handles]
        if not any(keep):
            names = ", ".join(sp.names[:3])
            raise errors.OptimizerUsage(
                f"{self.name}: none of the model's Vars ({names}, ...) is one of the {len(self._vars or ())} Vars this"
                " optimizer was built with; build the model from the same VarMap (VarBuilder.from_varmap(varmap, ..))"
                " and pass varmap.all_vars(), or keep the model the Candle way (a functional step returns new Vars)."
                " A layer must hold the Var itself to be trained: Candle's Linear::new(w.as_tensor().clone(), ..)"
                " is Linear.new(w, b) here (as_tensor() is a snapshot of the value and Tensor.clone() a copy)"
                + (
                    "; cj.distributed.shard returns a copy with new Vars: build the optimizer from the sharded"
                    f" model's Vars ({self.name}(list(model.named_vars().values()), ...))"
                    if _on_mesh([unwrap(h) for h in handles if h is not None])
                    else ""
                )
            )
        renum, j = [], 0
        for k in keep:
            renum.append(j if k else -1)
            j += k
        slots = tuple(renum[s] if s >= 0 else -1 for s in sp.slots)
        names = tuple(n for n, k in zip(sp.names, keep) if k)
        return Split(sp.treedef, sp.leaves, slots, names), tuple(h for h, k in zip(handles, keep) if k)

    def _bound_state(self, handles: tuple[Any, ...], params: list[Any]) -> OptState:
        __tracebackhide__ = True
        if self._trained is None:
            self._trained = handles
            self._state = self._init_params(params)
        elif tuple(map(id, handles)) != tuple(map(id, self._trained)):  # pragma: no cover - _align_bound first
            raise errors.OptimizerUsage(f"{self.name}: the Vars of this step do not match the optimizer's state")
        assert self._state is not None
        return self._state

    def _align_bound(self, sp: Split, handles: tuple[Any, ...]) -> tuple[Split, tuple[Any, ...]]:
        """``sp`` renumbered so that its parameters are the Vars the state covers, in the state's order, plus
        this step's Vars the state does not cover yet (their moments start at zero, as Candle's from ``new``).
        The state's other Vars are parameters the loss does not read: they keep value and state. Candle's
        ``backward_step(&loss)`` takes no model, so one optimizer may step on any part of its Vars."""
        trained = self._trained
        if trained is None or tuple(map(id, handles)) == tuple(map(id, trained)):
            return sp, handles
        pos = {id(h): i for i, h in enumerate(trained)}
        new = tuple(h for h in handles if id(h) not in pos)
        for h in new:
            pos[id(h)] = len(pos)
        full = (*trained, *new)
        if new:
            self._grow_bound_state(full)
        order = [pos[id(h)] for h in handles]
        slots = tuple(order[s] if s >= 0 else -1 for s in sp.slots)
        return Split(sp.treedef, sp.leaves, slots, tuple(h.name for h in full)), full

    def _grow_bound_state(self, full: tuple[Any, ...]) -> None:
        """Extend a bound optimizer's state to the Vars ``full`` (the covered ones first): fresh per-parameter
        entries (zero moments) for the new Vars, the step count kept (Candle's ``step_t`` is global)."""
        assert self._trained is not None and self._state is not None
        n_old = len(self._trained)
        fresh = self._init_params([h._a for h in full[n_old:]])

        def per_param(x: Any) -> bool:
            return isinstance(x, list) and len(x) == n_old

        def grow(old: Any, add: Any) -> Any:
            return [*old, *add] if per_param(old) else old

        self._state = jax.tree_util.tree_map(grow, self._state, fresh, is_leaf=per_param)
        self._trained = full

    def _init_params(self, params: list[Any]) -> OptState:
        """A fresh state for ``params``, committed where they are (so that the first and later steps
        share one executable); on a mesh each moment takes its parameter's sharding and the step
        count is replicated (the functional and the bound form alike)."""
        state = OptState(jnp.zeros((), jnp.int32), self.tx.init(params))
        first = params[0]
        if isinstance(first, jax.Array) and not isinstance(first, jax.core.Tracer):
            if not isinstance(first.sharding, jax.sharding.SingleDeviceSharding):
                from candlejax.distributed._shard import place_opt_state

                state = place_opt_state(self.tx, state, params)
            else:
                state = jax.device_put(state, first.sharding)
        return state

    def _check_bound_call(self) -> None:
        __tracebackhide__ = True
        if not is_eager():
            raise errors.TracingError(
                f"{self.name}: the bound step updates its Vars in place, which cannot happen inside"
                " jax.jit/grad/vmap; use the functional form there: model, state, loss ="
                " opt.backward_step(loss_fn, model, state, x, y)"
            )

    def _bound_bstep(self, loss_fn: Any, model: Any, batch: Any) -> Any:
        __tracebackhide__ = True
        self._check_bound_call()
        sp, handles = self._align_bound(*self._bound_split(model))
        params = [h._a for h in handles]
        first = self._trained is None
        state = self._bound_state(handles, params)
        try:
            new_params, state2, loss, ok, rest, _ = self._run(loss_fn, sp, params, state, batch)
        except BaseException:
            if first:  # a first step that failed does not fix the set of Vars this optimizer trains
                self._trained = self._state = None
            raise
        if self.check_finite and not bool(ok):
            for h, p in zip(handles, new_params):  # ok=False: the values from before the step
                h._a = p
            self._state = state2
            raise NanLoss(int(state2.step) + 1, float(jnp.asarray(loss).reshape(-1)[0]), model, state2)
        for h, p in zip(handles, new_params):
            h._a = p
        if rest is not sp.rest:  # the Buffers the loss function set in place (BatchNorm's forward_t(x, True))
            rest_handles = [h for h, s in zip(_named_leaves(model), sp.slots) if s < 0]
            for h, old, new in zip(rest_handles, sp.rest, rest):
                if new is not old and _is_named(h):
                    h._a = new
        self._state = state2
        return wrap(loss)

    def _bound_apply(self, grads: Any) -> None:
        __tracebackhide__ = True
        self._check_bound_call()
        if self._vars is None:
            raise errors.OptimizerUsage(
                f"{self.name} was built without Vars: use model, state = opt.step(model, state, grads), or build it"
                f" with the Vars ({self.name}(varmap.all_vars(), ...))"
            )
        gv = _named_grads(grads)
        if not gv and isinstance(grads, (list, tuple)) and len(grads) == 1 == len(self._vars) and hasattr(
            grads[0], "shape"
        ):  # one unnamed gradient for a one-Var optimizer: nothing to confuse it with
            gv = {self._vars[0].name: grads[0]}
        if not gv:  # "the gradients of nothing match no Var" said nothing about what was passed
            if isinstance(grads, dict):
                got = f"a dict with keys {list(grads)[:3]} and no Var among its values"
            elif isinstance(grads, (list, tuple)):
                got = f"a {type(grads).__name__} of {len(grads)} unnamed arrays (not matched by position)"
            else:
                got = f"a {type(grads).__name__} holding no named Var"
            raise errors.OptimizerUsage(
                f"{self.name}.step(grads): found no named gradient in {got}: gradients are matched to this"
                " optimizer's Vars by the Var names they carry (Candle's GradStore is keyed by Var); pass what"
                " cj.grad(loss_fn)(model, ...) returns for a model built from the optimizer's Vars"
            )
        by_name = {v.name: v for v in self._vars}
        if not any(n in by_name for n in gv):
            raise errors.OptimizerUsage(
                f"{self.name}.step(grads): the gradients of {list(gv)[:3]} match none of this optimizer's Vars"
                f" ({', '.join(list(by_name)[:3])}{', ...' if len(by_name) > 3 else ''}) by name; pass what"
                " cj.grad(loss_fn)(model, ...) returns for a model built from the optimizer's Vars"
            )
        # Candle: `for var in vars { if let Some(grad) = grads.get(var) { .. } }`: gradients of other Vars are
        # ignored, and this optimizer's Vars without a gradient keep their value and optimizer state
        got = {id(by_name[n]): x for n, x in gv.items() if n in by_name}
        handles = self._trained
        if handles is None:  # the gradients' (the model's) order, as backward_step on that model would take
            first = {id(by_name[n]): by_name[n] for n in gv if n in by_name}
            handles = (*first.values(), *(h for h in self._vars if id(h) not in first))
        held = {id(h) for h in handles}
        stray = tuple(h for h in self._vars if id(h) in got and id(h) not in held)
        if stray:  # Vars the state does not cover yet (earlier steps were on a part of the model): zero moments
            self._grow_bound_state((*handles, *stray))
            handles = self._trained
        unused = tuple(id(h) not in got for h in handles)
        g = [unwrap(got[id(h)]) for h in handles if id(h) in got]
        for h, x in zip((h for h in handles if id(h) in got), g):
            if tuple(x.shape) != tuple(h.shape):
                raise errors.UnexpectedShape(f"{self.name}.step: gradient of {h.name} has the wrong shape", h.shape,
                                             x.shape)  # fmt: skip
            if x.dtype != h._a.dtype:  # Candle: "dtype mismatch in sub" (an f16 gradient into an f32 Var)
                raise errors.UnexpectedDType(
                    to_dtype(h._a.dtype), to_dtype(x.dtype),
                    f"{self.name}.step: gradient of {h.name} has another dtype than its Var (convert it with"
                    " .to_dtype(...), or compute the loss on the Var's dtype)",
                )
        params = [h._a for h in handles]
        state = self._bound_state(tuple(handles), params)
        donate = self.donate and not _aliased(params, state, g)
        new_params, state2, ok = self._apply(params, state, g, donate, unused if any(unused) else ())
        for h, p in zip(handles, new_params):  # when not ok: the values from before the step
            h._a = p
        self._state = state2
        if not ok:
            raise NanLoss(int(state2.step) + 1, None, None, state2)

    def _make_bstep(self, loss_fn: Callable[..., Any], used: list[Any]) -> Callable[..., Any]:
        from candlejax.nn.module import keeping_in_place_updates

        def bstep(treedef, slots, statics, params, rest_arrays, state, lr, batch, rng):
            rest = _join_rest(rest_arrays, statics)
            if isinstance(rng, tuple):  # the device generator's (seed, counter), as _random.next_key folds it
                data, counter = rng
                rng = jax.random.fold_in(jax.random.wrap_key_data(data, impl="threefry2x32"), counter)

            def call(model: Any) -> Any:
                with keeping_in_place_updates():  # the Buffers loss_fn sets come back as outputs (_set_buffers)
                    if rng is None:
                        return loss_fn(model, *batch)
                    with _random.key_scope(rng):
                        out = loss_fn(model, *batch)
                        if _random._scopes.stack[-1][1]:
                            used[0] = True
                    return out

            def f(p: list[Any]) -> Any:
                model = treedef.unflatten(merge_leaves(slots, p, rest))
                out = unwrap(call(model))
                if not hasattr(out, "shape") or not hasattr(out, "dtype"):  # a Python number, a (loss, aux) pair
                    raise errors.OptimizerUsage(
                        f"backward_step: loss_fn must return a scalar Tensor, got {type(out).__name__}"
                    )
                if getattr(out, "shape", None) not in ((), (1,)):
                    raise errors.OptimizerUsage(
                        f"backward_step: loss_fn must return a scalar, got shape {errors.fmt_shape(out.shape)}"
                    )
                if not jnp.issubdtype(out.dtype, jnp.floating):  # jax.grad's raw "requires real-valued outputs"
                    raise errors.OptimizerUsage(
                        f"backward_step: loss_fn must return a float scalar to differentiate, got dtype"
                        f" {to_dtype(out.dtype).name} (convert it with .to_dtype(DType.F32); an integer loss has no"
                        " gradient)"
                    )
                used[1][(treedef, slots, statics)], stats = _set_buffers(model, slots, rest)
                return out.reshape(()), stats

            closed = jax.make_jaxpr(f)(params)  # traced once: read for the Vars it uses, then differentiated
            self._check_closure(closed.consts)
            (loss, stats), grads = jax.value_and_grad(
                lambda p: (lambda o: (o[0], o[1:]))(jax_core.jaxpr_as_fun(closed)(*p)), has_aux=True
            )(params)
            new_params, new_state, ok = self._guarded(params, state, grads, lr, loss)
            unused = _unused_inputs(closed)
            if any(unused):  # Candle skips the Vars that get no gradient: value and optimizer state kept
                new_params = [p if u else q for p, q, u in zip(params, new_params, unused)]
                new_state = _keep_param_state(new_state, state, unused)
            return new_params, new_state, loss, ok, tuple(stats)

        return bstep

    def _check_closure(self, consts: list[Any]) -> None:
        """Refuse a loss function that reads a trained Var (the model's, or one of a bound optimizer's)
        from outside its model argument: traced as a constant, it would get no gradient and keep the
        value it had when the step was compiled (Candle differentiates every Var the loss reads)."""
        __tracebackhide__ = True
        params, names = self._tracing
        watch = {id(a): n for a, n in zip(params, names)}
        watch.update((id(v._a), v.name) for v in self.vars)
        hit = list(dict.fromkeys(watch[id(c)] for c in consts if id(c) in watch))
        if hit:
            raise errors.OptimizerUsage(
                f"{self.name}.backward_step: loss_fn reads the Var(s) {hit[:5]} from outside the model it is given"
                " (a closure or a global): it would be compiled into the step as a constant, get no gradient and"
                " ignore later updates; read every trained Var through the model argument, loss_fn(model, *batch)"
                " (pass a tuple or dict of Vars, or the Module holding them, as the model)"
            )

    def __repr__(self) -> str:
        lr = "schedule" if callable(self._lr) else self._lr
        return f"{type(self).__name__}(lr={lr})"


#: Primitives Candle's backward does not walk through (``detach``, and the unary ops it leaves out of
#: the graph): an input read only through them gets no gradient.
_NO_GRAD_PRIMITIVES = frozenset({"stop_gradient", "floor", "ceil", "round", "sign"})


def _is_zero_literal(v: Any) -> bool:
    """A scalar constant 0 in the traced loss (what ``x * 0.`` and ``x.affine(0., b)`` multiply by)."""
    return isinstance(v, jax_core.Literal) and jnp.ndim(v.val) == 0 and bool(v.val == 0)


def _is_float_var(v: Any) -> bool:
    return isinstance(v, jax_core.Var) and jnp.issubdtype(v.aval.dtype, jnp.inexact)


def _live_inputs(jaxpr: Any, live_out: list[bool]) -> list[bool]:
    """For each input of ``jaxpr``, whether a gradient reaches it from the ``live_out`` outputs: through
    float values only (a comparison, an ``argmax`` or an integer cast cuts the path, as Candle's
    backward stops at integer tensors) and never through ``stop_gradient``. Sub-jaxprs of ``jit`` are
    followed; other higher-order primitives and effectful equations count all their inputs."""
    live = {v for v, u in zip(jaxpr.outvars, live_out) if u and isinstance(v, jax_core.Var)}
    for eqn in reversed(jaxpr.eqns):
        outs = [v in live and _is_float_var(v) for v in eqn.outvars]
        if eqn.effects:
            live.update(v for v in eqn.invars if isinstance(v, jax_core.Var))
        elif not any(outs) or eqn.primitive.name in _NO_GRAD_PRIMITIVES:
            continue
        elif eqn.primitive.name == "mul" and any(_is_zero_literal(v) for v in eqn.invars):
            continue  # Candle's `x * 0.` / `affine(0., b)`: its backward does not walk through an affine by 0
        elif eqn.primitive.name in ("jit", "pjit") and isinstance(eqn.params.get("jaxpr"), jax_core.ClosedJaxpr):
            inner = _live_inputs(eqn.params["jaxpr"].jaxpr, outs)
            live.update(v for v, u in zip(eqn.invars, inner) if u and isinstance(v, jax_core.Var))
        else:
            live.update(v for v in eqn.invars if isinstance(v, jax_core.Var))
    return [v in live for v in jaxpr.invars]


def _named_grads(grads: Any) -> dict[str, Any]:
    """Checkpoint name -> gradient for every Var leaf of ``grads``. A Var used in several places of the
    model (tied weights) has one gradient leaf per use in what ``cj.grad`` returns, all carrying its
    name: they are summed, as Candle's backward sums the gradient of a Var over its uses (and as
    :func:`grads_as_params` does for the functional step)."""
    from candlejax.nn.module import _is_named, _path_str

    out: dict[str, Any] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(grads, is_leaf=_is_named)[0]:
        if is_var(leaf):
            name = leaf.name or _path_str(path)
            out[name] = leaf if name not in out else wrap(unwrap(out[name]) + unwrap(leaf))
    return out


def _unused_inputs(closed: Any) -> list[bool]:
    """For each input of the traced loss ``closed`` (a ``ClosedJaxpr``), whether the loss has no
    gradient path to it (it is not read, or read only through ``detach()``, comparisons, ``argmax``...):
    such a Var has no gradient in Candle, where a zero gradient of a Var the loss reads is still one."""
    n = len(closed.jaxpr.outvars)
    return [not u for u in _live_inputs(closed.jaxpr, [True] + [False] * (n - 1))]  # the loss comes first


def _set_buffers(model: Any, slots: tuple[int, ...], rest: list[Any]) -> tuple[tuple[int, ...], list[Any]]:
    """After the loss function ran on ``model`` (built from ``slots`` and the non-trained leaves
    ``rest``): the Buffers it set in place (Candle's ``Var::set`` of BatchNorm's running statistics in
    ``forward_t(x, true)``), as their positions among the array leaves of ``rest`` and their new values."""
    handles = _named_leaves(model)
    if len(handles) != len(slots):  # pragma: no cover - a pytree whose leaves differ by is_leaf
        return (), []
    at, values, k = [], [], -1
    for h, old in zip((h for h, s in zip(handles, slots) if s < 0), rest):
        if not _is_array(old):
            continue
        k += 1
        if _is_named(h) and not is_var(h) and h._a is not old:
            at.append(k)
            values.append(h._a)
    return tuple(at), values


def _keep_param_state(new: Any, old: Any, unused: list[bool]) -> Any:
    """``new`` optimizer state with the per-parameter entries of the ``unused`` parameters taken from
    ``old`` (optax keeps them in lists parallel to the parameter list: Adam's ``mu``, ``nu``)."""
    n = len(unused)

    def per_param(x: Any) -> bool:
        return isinstance(x, list) and len(x) == n

    def pick(a: Any, b: Any) -> Any:
        if not per_param(a):
            return a
        return [y if u else x for x, y, u in zip(a, b, unused)]

    return jax.tree_util.tree_map(pick, new, old, is_leaf=per_param)


class SGD(Optimizer):
    """Candle's ``SGD``: ``θ ← θ − lr·g`` (no momentum, no weight decay; Config = lr).

    PyTorch: ``torch.optim.SGD(params, lr)``. For momentum or Nesterov use
    ``from_optax(optax.sgd(lr, momentum=0.9))``.
    """

    def __init__(self, *args: Any, clip_grad_norm: float | None = None, **kw: Any):
        __tracebackhide__ = True
        vars, lr = _vars_and(args, "SGD", "lr", kw.pop("lr", _MISSING))
        if lr is _MISSING:
            raise errors.InvalidArgument("SGD: the learning rate is missing: SGD(varmap.all_vars(), lr) or SGD(lr)")
        tx = optax.identity() if clip_grad_norm is None else optax.clip_by_global_norm(clip_grad_norm)
        super().__init__(tx, _check_lr(lr, "SGD"), name="SGD", vars=vars, **kw)

    @classmethod
    def new(cls, vars: Any, lr: float | Schedule, **kw: Any) -> SGD:
        """Candle's ``SGD::new(vars, lr)``."""
        return cls(vars, lr, **kw)

    @classmethod
    def empty(cls, lr: float | Schedule, **kw: Any) -> SGD:
        """Candle's ``Optimizer::empty(lr)``: an optimizer over no Vars (the functional step's form)."""
        return cls(lr, **kw)

    @classmethod
    def from_slice(cls, vars: Any, lr: float | Schedule, **kw: Any) -> SGD:
        """Candle's ``Optimizer::from_slice(&[&var], lr)``: bound to these Vars (= :meth:`new`)."""
        return cls(list(vars), lr, **kw)

    def push(self, var: Any) -> None:
        """Candle's ``SGD::push(&var)``: train ``var`` too (``SGD.empty(lr)`` then ``push`` binds the
        optimizer to the pushed Vars). A Var already trained is not added twice."""
        __tracebackhide__ = True
        new = [v for v in _bind_vars([var], "SGD.push") if all(v is not w for w in self.vars)]
        if not new:
            return
        if self._trained is not None and callable(self._lr):
            raise errors.OptimizerUsage(
                "SGD.push after a step: the learning-rate schedule's step count would restart; push every Var"
                " before the first step"
            )
        self._vars = (*self.vars, *new)
        self._bound_ids = {id(v) for v in self._vars}
        self._trained = self._state = None  # SGD's state is its step count alone: a fresh one for the new set

    def into_inner(self) -> list[Any]:
        """Candle's ``SGD::into_inner()``: the Vars this optimizer trains."""
        return list(self.vars)


@dataclass
class ParamsAdamW:
    """Candle's ``ParamsAdamW`` with its defaults (PyTorch's AdamW defaults, except ``weight_decay``)."""

    @classmethod
    def default(cls) -> ParamsAdamW:
        """Candle's ``ParamsAdamW::default()``."""
        return cls()

    lr: float | Schedule = 1e-3  # a number, or an optax schedule of the step
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        if not callable(self.lr):
            _check_lr(self.lr, "ParamsAdamW")
        for k in ("beta1", "beta2", "eps", "weight_decay"):
            float_arg(getattr(self, k), "ParamsAdamW", k)
        for k in ("beta1", "beta2"):
            v = getattr(self, k)
            if not 0.0 <= v < 1.0:
                raise errors.InvalidArgument(f"ParamsAdamW: {k} must be in [0, 1), got {v}")
        if self.eps < 0 or self.weight_decay < 0:
            raise errors.InvalidArgument(
                f"ParamsAdamW: eps and weight_decay must be >= 0, got {self.eps}, {self.weight_decay}"
            )


class AdamW(Optimizer):
    """Candle's ``AdamW``: bias-corrected moments, decoupled weight decay.

    With step ``t`` (from 1), ``m ← β1·m + (1−β1)·g``, ``v ← β2·v + (1−β2)·g²``,
    ``m̂ = m/(1−β1ᵗ)``, ``v̂ = v/(1−β2ᵗ)``, ``θ ← θ(1 − lr·wd) − lr·m̂/(√v̂ + eps)``.
    Built as ``optax.chain(scale_by_adam, add_decayed_weights)`` scaled by ``-lr``, which is
    ``optax.adamw`` step for step; PyTorch: ``torch.optim.AdamW(params, lr, betas, eps, wd)``.
    """

    def __init__(self, *args: Any, clip_grad_norm: float | None = None, **kw: Any):
        __tracebackhide__ = True
        vars, params = _vars_and(args, "AdamW", "params", kw.pop("params", None))
        p = ParamsAdamW() if params is None or params is _MISSING else params
        if not isinstance(p, ParamsAdamW):
            raise errors.InvalidArgument(
                f"AdamW: expected ParamsAdamW, got {type(p).__name__} (use AdamW.new_lr(vars, lr) for a float)"
            )
        self._params = p
        parts = [] if clip_grad_norm is None else [optax.clip_by_global_norm(clip_grad_norm)]
        parts += [optax.scale_by_adam(b1=p.beta1, b2=p.beta2, eps=p.eps), optax.add_decayed_weights(p.weight_decay)]
        super().__init__(optax.chain(*parts), p.lr, name="AdamW", vars=vars, **kw)

    @classmethod
    def new(cls, vars: Any, params: ParamsAdamW | None = None, **kw: Any) -> AdamW:
        """Candle's ``AdamW::new(vars, params)``."""
        return cls(vars, params, **kw)

    @classmethod
    def empty(cls, params: ParamsAdamW | None = None, **kw: Any) -> AdamW:
        """Candle's ``Optimizer::empty(params)``: an optimizer over no Vars (the functional step's form)."""
        return cls(params, **kw)

    @classmethod
    def from_slice(cls, vars: Any, params: ParamsAdamW | None = None, **kw: Any) -> AdamW:
        """Candle's ``Optimizer::from_slice(&[&var], params)``: bound to these Vars (= :meth:`new`)."""
        return cls(list(vars), params, **kw)

    @classmethod
    def new_lr(cls, *args: Any, **kw: Any) -> AdamW:
        """Candle's ``AdamW::new_lr(vars, lr)``: the defaults with this learning rate (``new_lr(lr)``: unbound)."""
        vars, lr = _vars_and(args, "AdamW.new_lr", "lr", _MISSING)
        if lr is _MISSING:
            raise errors.InvalidArgument("AdamW.new_lr(vars, lr): the learning rate is missing")
        return cls(ParamsAdamW(lr=lr), **kw) if vars is None else cls(vars, ParamsAdamW(lr=lr), **kw)

    def params(self) -> ParamsAdamW:
        """Candle's ``params()`` (``lr`` follows :meth:`set_learning_rate`)."""
        return ParamsAdamW(
            self._lr, self._params.beta1, self._params.beta2, self._params.eps, self._params.weight_decay
        )

    def __repr__(self) -> str:
        p = self.params()
        lr = "schedule" if callable(p.lr) else p.lr
        return f"AdamW(lr={lr}, beta1={p.beta1}, beta2={p.beta2}, eps={p.eps}, weight_decay={p.weight_decay})"


def _vars_and(args: tuple[Any, ...], who: str, what: str, kw_value: Any) -> tuple[Any, Any]:
    """Candle's ``(vars, config)`` or candlejax's ``(config)`` positional forms."""
    if len(args) > 2:
        raise errors.InvalidArgument(f"{who}: expected ({what}) or (vars, {what}), got {len(args)} arguments")
    if len(args) == 2:
        if kw_value is not _MISSING and kw_value is not None:
            raise errors.InvalidArgument(f"{who}: {what} given twice")
        return args[0], args[1]
    if len(args) == 1:
        a = args[0]
        is_vars = (isinstance(a, (list, tuple)) and (not a or is_var(a[0]))) or hasattr(a, "all_vars")
        if is_vars:
            return a, kw_value
        return None, a
    return None, kw_value


def from_optax(
    tx: optax.GradientTransformation, *, learning_rate: float | Schedule | None = None, **kw: Any
) -> Optimizer:
    """Any optax transform as a candlejax optimizer.

    ``from_optax(optax.adam(1e-3))`` applies the transform's updates as they are;
    ``from_optax(optax.scale_by_adam(), learning_rate=1e-3)`` treats ``tx`` as a direction and
    scales it by ``-lr``, so that :meth:`Optimizer.set_learning_rate` works.
    """
    return Optimizer(tx, learning_rate, name="from_optax", **kw)
