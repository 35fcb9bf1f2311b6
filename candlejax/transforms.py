"""``cj.jit``, ``cj.grad``, ``cj.value_and_grad``: JAX transforms that take Modules as arguments.

requires: jax, candlejax.dtype, candlejax.nn.module (Var)
provides: ``jit``, ``grad``, ``value_and_grad``, ``partition``, ``combine``, ``trainable``,
``apply_updates``

* ``jit(fn)``: like ``jax.jit``, but any argument may hold non-array leaves (ints, strings,
  callables inside lists or dicts); they are treated as static (part of the cache key) and arrays
  as traced arguments. Modules keep their static fields in their pytree structure, so weights are
  always arguments of the compiled program, never constants: updating the weights and calling
  again reuses the same executable. Decorating a method traces ``self``.
* ``grad(fn)`` / ``value_and_grad(fn)``: differentiate ``fn(model, *args)`` with respect to the
  trainable ``Var``s of the first argument only. Gradients come back as a tree shaped like the
  model: each Var holds its gradient (and keeps its name); every other leaf is ``None``.
  ``apply_updates(model, updates)`` adds such a tree to a model (optax-style updates).
"""

from __future__ import annotations

import dis
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from candlejax import errors
from candlejax.dtype import to_dtype
from candlejax.nn.module import Module, NamedTensor, StaticValue, Var, keeping_in_place_updates, named_vars
from candlejax.tensor._core import TensorBase, unwrap, wrap

__all__ = ["apply_updates", "combine", "grad", "jit", "partition", "trainable", "value_and_grad"]


# ------------------------------------------------------------------------------------------------
# jit
# ------------------------------------------------------------------------------------------------
class _Static(StaticValue):
    """A non-array leaf carried through ``jax.jit`` as pytree structure (hashed into the cache key)."""

    __slots__ = ()


jax.tree_util.register_pytree_node(_Static, lambda s: ((), s), lambda aux, _: aux)


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _box(tree: Any) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if all(_is_array(x) for x in leaves):
        return tree
    return treedef.unflatten([x if _is_array(x) else _Static(x) for x in leaves])


def _unbox(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: x.value if isinstance(x, _Static) else x, tree,
                                  is_leaf=lambda x: isinstance(x, _Static))  # fmt: skip


def _holds_concrete_var(v: Any) -> bool:
    vars_ = [v] if isinstance(v, Var) else named_vars(v).values()
    return any(isinstance(unwrap(x), jax.Array) and not isinstance(unwrap(x), jax.core.Tracer) for x in vars_)


def _warn_captured_vars(fn: Any) -> None:
    """Warn when ``fn`` reads a Module or Var from its closure or its module's globals: ``jax.jit`` compiles
    their weights in as constants, so an in-place update (a bound optimizer step, ``Var.set``) would leave
    the compiled function computing with the old values (a notebook's ``cj.jit(lambda x: model(x))``)."""
    read: dict[str, Any] = {}
    while isinstance(fn, functools.partial):  # cj.jit(functools.partial(forward, model)): bound arguments
        func = getattr(fn.func, "__name__", "the function")
        read.update((f"{func}'s argument {i}", a) for i, a in enumerate(fn.args))
        read.update((f"{func}'s argument {k}", a) for k, a in fn.keywords.items())
        fn = fn.func
    code = getattr(fn, "__code__", None)
    for name, cell in zip(getattr(code, "co_freevars", ()), getattr(fn, "__closure__", None) or ()):
        try:
            read[name] = cell.cell_contents
        except ValueError:  # an empty cell
            pass
    glob = getattr(fn, "__globals__", {})
    for ins in dis.get_instructions(code) if code is not None else ():
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and ins.argval in glob:
            read.setdefault(ins.argval, glob[ins.argval])
    names = [n for n, v in read.items() if isinstance(v, (Module, Var)) and _holds_concrete_var(v)]
    if names:
        errors.warn_at_caller(
            f"jit: {getattr(fn, '__qualname__', 'the function')} reads {names} from a closure, a global or a partial:"
            " their Vars are compiled in as constants, so later updates (an optimizer step, Var.set, VarMap.load)"
            " are not seen by the compiled function; pass the model as an argument instead:"
            " cj.jit(lambda model, x: model(x))(model, x)",
            errors.ConstantVarWarning,
        )


def _handles(tree: Any) -> list[Any]:
    """The leaves of ``tree`` in flatten order, a Var / Buffer handle standing for its array."""
    return jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, NamedTensor))


def _write_back(handles: list[Any], updates: dict[int, Any]) -> None:
    """Set the caller's Vars / Buffers that the compiled function set in place (``Var.set``,
    BatchNorm's ``forward_t(x, True)`` running statistics), as the same code does eagerly."""
    for i, new in updates.items():
        h = handles[i]
        if isinstance(new, jax.core.Tracer) and not isinstance(h._a, jax.core.Tracer):
            new = jax.lax.stop_gradient(new)  # cj.grad(cj.jit(f)): the statistics carry no gradient
            if isinstance(new, jax.core.Tracer):
                raise errors.Msg(
                    f"jit: {type(h).__name__} {h.name!r} was set inside the compiled function to a value that depends"
                    " on an enclosing transform's tracer; set it outside, or return the new value"
                )
        h.set(new, own=True)  # a fresh output of the compiled program


class _Jitted:
    def __init__(self, fn: Callable[..., Any], bound: tuple[Any, ...] = (), **jit_kwargs: Any):
        self.fn = fn
        functools.update_wrapper(self, fn)
        self._bound = bound  # the Module of a bound method (or a Module called): passed as the first argument

        self._traced = False

        def inner(*args: Any, **kwargs: Any) -> Any:
            self._traced = True  # runs only while tracing: __call__ then looks for weights baked in
            args, kwargs = _unbox((args, kwargs))
            handles = _handles((args, kwargs))
            before = [h._a if isinstance(h, NamedTensor) else None for h in handles]
            with keeping_in_place_updates():
                out = _box(fn(*args, **kwargs))
            # Vars / Buffers of the arguments set in place inside: their new values are extra outputs
            # (keyed by leaf position), so __call__ sets the caller's handles as an eager call would
            updates = {
                i: h._a
                for i, (h, old) in enumerate(zip(handles, before))
                if isinstance(h, NamedTensor) and h._a is not old and isinstance(h._a, jax.Array)
            }
            return out, updates

        self._jitted = jax.jit(inner, **jit_kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        full = ((*self._bound, *args), kwargs)
        bargs, bkwargs = _box(full)
        out, updates = self._jitted(*bargs, **bkwargs)
        if updates:
            _write_back(_handles(full), updates)
        out = _unbox(out)
        if self._traced:
            self._traced = False
            _warn_captured_vars(self.fn)
        return out

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        return functools.partial(self, instance)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        """``jax.jit(...).lower``: the program returns ``(outputs, updates)``, ``updates`` the values of the
        arguments' Vars / Buffers it set in place, by leaf position (calling the ``cj.jit`` function sets them)."""
        args, kwargs = _box(((*self._bound, *args), kwargs))
        return self._jitted.lower(*args, **kwargs)

    def _cache_size(self) -> int:
        return self._jitted._cache_size()


def jit(fn: Callable[..., Any] | None = None, *, donate_argnums: Any = (), **jit_kwargs: Any) -> Any:
    """Compile ``fn`` with XLA; Modules (and any pytree) may be passed as arguments.

    Vars and Buffers of the arguments set in place inside ``fn`` (``Var.set``, BatchNorm's running
    statistics in ``forward_t(x, True)``) are set on the caller's handles after the call, as an eager
    call sets them (``jax.jit`` itself would drop them).

    ``donate_argnums`` lets XLA reuse the buffers of those arguments for the outputs (pass the
    model and optimizer state of a training step). Python scalars are static: a changing float
    (a learning rate) recompiles, so pass such values as arrays.

    >>> import candlejax as cj, jax.numpy as jnp
    >>> f = jit(lambda x, n: x * n)
    >>> float(f(jnp.float32(2.0), 3))
    6.0
    """
    if fn is None:
        return lambda f: jit(f, donate_argnums=donate_argnums, **jit_kwargs)
    # a Module's bound method (jit(model.forward)) or a Module (jit(model)): the module is an argument,
    # so its current weights are read at every call (jax.jit would bake them in as constants, and an
    # in-place update of its Vars, a bound optimizer step, would leave the compiled function stale)
    module = fn if isinstance(fn, Module) else getattr(fn, "__self__", None)
    if isinstance(module, Module) and not isinstance(fn, _Jitted):
        func = type(fn).__call__ if fn is module else fn.__func__
        nums = (donate_argnums,) if isinstance(donate_argnums, int) else tuple(donate_argnums)
        return _Jitted(func, (module,), donate_argnums=tuple(i + 1 for i in nums), **jit_kwargs)
    return _Jitted(fn, donate_argnums=donate_argnums, **jit_kwargs)


# ------------------------------------------------------------------------------------------------
# partition / combine
# ------------------------------------------------------------------------------------------------
def _is_var(x: Any) -> bool:
    return isinstance(x, Var)


def _is_tensor(x: Any) -> bool:
    return isinstance(x, TensorBase)


def partition(tree: Any) -> tuple[Any, Any]:
    """Split ``tree`` into ``(vars, rest)``: two trees shaped like it, with ``None`` in the other's places.

    ``vars`` holds the trainable Vars; ``rest`` every other array (buffers, rotary tables, ...).
    """
    # whole Tensors are leaves, so a non-Var Tensor becomes None (not a Tensor wrapping None)
    leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=_is_tensor)
    diff = [x if isinstance(x, Var) else None for x in leaves]
    rest = [None if isinstance(x, Var) else x for x in leaves]
    return treedef.unflatten(diff), treedef.unflatten(rest)


def trainable(tree: Any) -> Any:
    """The trainable Vars of ``tree``, in a tree shaped like it (``None`` elsewhere): what an optax
    optimizer should ``init`` and ``update``."""
    return partition(tree)[0]


def _is_none_or_var(x: Any) -> bool:
    return x is None or isinstance(x, Var)


def combine(vars_tree: Any, rest: Any) -> Any:
    """Inverse of :func:`partition`."""
    return jax.tree_util.tree_map(lambda a, b: b if a is None else a, vars_tree, rest, is_leaf=_is_none_or_var)


def apply_updates(tree: Any, updates: Any) -> Any:
    """``tree + updates`` where ``updates`` is shaped like :func:`trainable` (``None`` = no update).

    Updates keep each parameter's dtype (optax's ``apply_updates`` semantics)."""

    def add(u: Any, p: Any) -> Any:
        if u is None:
            return p
        return (p + u).astype(p.dtype)

    return jax.tree_util.tree_map(add, updates, tree, is_leaf=lambda x: x is None)


# ------------------------------------------------------------------------------------------------
# grad
# ------------------------------------------------------------------------------------------------
def _check_diff(diff: Any) -> None:
    for v in jax.tree_util.tree_leaves(diff, is_leaf=_is_var):
        if isinstance(v, Var) and not jax.numpy.issubdtype(v._a.dtype, jax.numpy.inexact):
            raise errors.UnsupportedDTypeForOp(
                v.dtype, "grad",
                f"Var {v.name!r} is not floating point; integer parameters cannot be differentiated"
                " (hold them as a plain Tensor or Buffer instead of a Var)",
            )  # fmt: skip


def _scalar(out: Any, what: str) -> Any:
    if isinstance(out, (tuple, list, dict)) or out is None:
        raise errors.InvalidArgument(
            f"{what}: the function must return a scalar loss, but returned {type(out).__name__}"
            + (" (to return (loss, aux), pass has_aux=True)" if isinstance(out, (tuple, list)) else "")
        )
    a = unwrap(out)
    dt = getattr(a, "dtype", None)
    if dt is not None and not jax.numpy.issubdtype(dt, jax.numpy.inexact):
        raise errors.UnsupportedDTypeForOp(
            to_dtype(dt), "grad", "the loss must be floating point to differentiate: an integer loss has no gradient"
            " (compute it in float, or convert it with .to_dtype(DType.F32))",
        )  # fmt: skip
    shape = tuple(getattr(a, "shape", ()))
    if any(d != 1 for d in shape):  # one element, of any rank, as torch's backward() takes
        raise errors.InvalidShape(
            f"{what}: the function must return a scalar loss (one element), got shape {errors.fmt_shape(shape)};"
            " reduce it first, e.g. .sum_all() or .mean_all()"
        )
    return a.reshape(()) if shape else a


def _is_float_tensor(x: Any) -> bool:
    return isinstance(x, TensorBase) and jax.numpy.issubdtype(x._a.dtype, jax.numpy.inexact)


def _partition_for_grad(tree: Any) -> tuple[Any, Any, Callable[[Any, Any], Any]]:
    """Vars when ``tree`` holds any; otherwise every floating-point Tensor (``cj.grad(f)(tensor)``).

    Returns ``(diff, rest, combine_fn)``."""
    diff, rest = partition(tree)
    if any(isinstance(v, Var) for v in jax.tree_util.tree_leaves(diff, is_leaf=_is_var)):
        return diff, rest, combine
    leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=lambda x: isinstance(x, TensorBase))
    if not any(_is_float_tensor(x) for x in leaves):
        raise errors.InvalidArgument(
            "grad: the first argument holds no Var and no floating-point Tensor to differentiate"
            f" (got {type(tree).__name__}); build parameters through a VarBuilder or pass a float Tensor"
        )
    diff = [x if _is_float_tensor(x) else None for x in leaves]
    rest = [None if _is_float_tensor(x) else x for x in leaves]
    return treedef.unflatten(diff), treedef.unflatten(rest), _combine_tensors


def _combine_tensors(diff: Any, rest: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda a, b: b if a is None else a, diff, rest, is_leaf=lambda x: x is None or isinstance(x, TensorBase)
    )


def value_and_grad(fn: Callable[..., Any], *, has_aux: bool = False) -> Callable[..., Any]:
    """``fn(model, *args) -> loss`` becomes ``(model, *args) -> (loss, grads)``.

    ``grads`` is shaped like ``model``: each trainable Var holds its gradient, every other leaf
    is ``None`` (no gradient flows to Buffers, plain Tensors or static data). When the first
    argument holds no Var at all (a plain Tensor, or a tuple/dict of them), every floating-point
    Tensor in it is differentiated instead, as ``jax.grad`` would. With ``has_aux``,
    ``fn`` returns ``(loss, aux)`` and the result is ``((loss, aux), grads)``. Works eagerly and
    inside ``cj.jit``.
    """

    @functools.wraps(fn)
    def wrapper(model: Any, *args: Any, **kwargs: Any) -> Any:
        diff, rest, join = _partition_for_grad(model)
        _check_diff(diff)

        def inner(d: Any) -> Any:
            out = fn(join(d, rest), *args, **kwargs)
            if has_aux:
                if not isinstance(out, (tuple, list)) or len(out) != 2:
                    raise errors.InvalidArgument(
                        "value_and_grad: with has_aux=True the function must return a (loss, aux) pair, got"
                        f" {type(out).__name__}"
                    )
                loss, aux = out
                return _scalar(loss, "value_and_grad"), aux
            return _scalar(out, "value_and_grad")

        val, g = jax.value_and_grad(inner, has_aux=has_aux)(diff)
        if has_aux:
            return (wrap(val[0]), val[1]), g
        return wrap(val), g

    return wrapper


def grad(fn: Callable[..., Any], *, has_aux: bool = False) -> Callable[..., Any]:
    """``fn(model, *args) -> loss`` becomes ``(model, *args) -> grads`` (see :func:`value_and_grad`)."""
    vg = value_and_grad(fn, has_aux=has_aux)

    @functools.wraps(fn)
    def wrapper(model: Any, *args: Any, **kwargs: Any) -> Any:
        val, g = vg(model, *args, **kwargs)
        return (g, val[1]) if has_aux else g

    return wrapper
