"""Which leaves of a model an optimizer trains, and how to put new values back.

requires: jax, candlejax.tensor, candlejax.nn (optional: Var)
provides: ``Split`` (``split(model, wrt)``), ``is_var``

A model is any pytree: a ``cj.nn.Module``, a dict or tuple of Tensors, a plain jax pytree. When the
tree holds ``cj.nn.Var`` parameters, exactly the float Vars are trained (Candle trains the Vars of
its ``VarMap``); a non-float Var raises instead of being dropped silently as Candle does. A tree
without Vars (plain Tensors / arrays) trains every float leaf. ``wrt`` narrows the set further.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from candlejax import errors
from candlejax.dtype import to_dtype
from candlejax.tensor._core import TensorBase, unwrap


def _var_class() -> Any:
    global _VAR
    if _VAR is None:
        try:
            from candlejax.nn.module import Var
        except ImportError:
            return None
        _VAR = Var
    return _VAR


_VAR: Any = None


def is_var(x: Any) -> bool:
    """True for a ``cj.nn.Var`` (a trainable parameter)."""
    v = _var_class()
    return v is not None and isinstance(x, v)


def _is_top(x: Any) -> bool:
    return isinstance(x, TensorBase) or is_var(x)


def _name_of(path: Any, leaf: Any) -> str:
    name = getattr(leaf, "name", None)
    if isinstance(name, str) and name:
        return name
    s = jax.tree_util.keystr(path, simple=True, separator=".") if path else ""
    return s or "<root>"


def _is_float(a: Any) -> bool:
    dt = getattr(a, "dtype", None)
    if dt is None:
        return isinstance(a, float)
    return bool(jnp.issubdtype(dt, jnp.floating))


class Split(NamedTuple):
    """A flattened model: every array leaf, which of them are trained, and their names.

    A parameter used in two places (tied weights: the same array object twice) is one trained
    parameter: its gradient is the sum over its uses and both places get the updated value.
    """

    treedef: Any  # the full tree structure (down to jax arrays)
    leaves: list[Any]  # every leaf, in treedef order
    slots: tuple[int, ...]  # per leaf: the index of its trained parameter, or -1 when not trained
    names: tuple[str, ...]  # checkpoint names of the trained parameters

    @property
    def mask(self) -> tuple[bool, ...]:
        return tuple(s >= 0 for s in self.slots)

    @property
    def params(self) -> list[Any]:
        out: list[Any] = [None] * len(self.names)
        for a, s in zip(self.leaves, self.slots):
            if s >= 0 and out[s] is None:
                out[s] = a
        return out

    @property
    def rest(self) -> list[Any]:
        return [a for a, s in zip(self.leaves, self.slots) if s < 0]

    def merge(self, params: list[Any], rest: list[Any] | None = None) -> Any:
        """The model with the trained leaves replaced by ``params``."""
        return self.treedef.unflatten(merge_leaves(self.slots, params, self.rest if rest is None else rest))


def merge_leaves(slots: tuple[int, ...], params: list[Any], rest: list[Any]) -> list[Any]:
    r = iter(rest)
    return [params[s] if s >= 0 else next(r) for s in slots]


def _wrt_pred(wrt: Any) -> Callable[[str], bool] | None:
    if wrt is None:
        return None
    if isinstance(wrt, str):
        pat = re.compile(wrt)
        return lambda name: pat.search(name) is not None
    if isinstance(wrt, re.Pattern):
        return lambda name: wrt.search(name) is not None
    if callable(wrt):
        return wrt
    raise errors.InvalidArgument(
        f"wrt must be None, a regex string or a callable(name) -> bool, got {type(wrt).__name__}"
    )


_CACHE: dict[Any, tuple[tuple[int, ...], tuple[str, ...]]] = {}


def split(model: Any, wrt: Any = None, *, what: str = "optimizer") -> Split:
    """Flatten ``model`` and mark the leaves to train (see the module docstring).

    The marking is cached per (tree structure, leaf dtypes, wrt); a cached marking is reused only
    when the tied leaves (the same array object in several places) are the same as before.
    """
    leaves, treedef = jax.tree_util.tree_flatten(model)
    key: Any = (treedef, tuple([getattr(a, "dtype", type(a)) for a in leaves]), wrt, what)
    try:
        hit = _CACHE.get(key)
    except TypeError:  # an unhashable wrt or static field: no caching
        key = hit = None
    if hit is not None and _same_ties(leaves, hit[0]):
        return Split(treedef, leaves, hit[0], hit[1])
    sp = _split(model, wrt, what)
    if key is not None:
        if len(_CACHE) > 256:
            _CACHE.clear()
        _CACHE[key] = (sp.slots, sp.names)
    return sp


def _same_ties(leaves: list[Any], slots: tuple[int, ...]) -> bool:
    first: dict[int, int] = {}
    for a, s in zip(leaves, slots):
        if s < 0:
            continue
        i = id(a)
        if first.setdefault(s, i) != i:
            return False
    return len(set(first.values())) == len(first)


def _split(model: Any, wrt: Any, what: str) -> Split:
    tops = jax.tree_util.tree_flatten_with_path(model, is_leaf=_is_top)[0]
    has_vars = any(is_var(t) for _, t in tops)
    pred = _wrt_pred(wrt)
    slots: list[int] = []
    names: list[str] = []
    seen: dict[int, int] = {}
    for path, top in tops:
        sub = jax.tree_util.tree_leaves(top)
        name = _name_of(path, top)
        if has_vars:
            train = is_var(top)
            if train and not all(_is_float(a) for a in sub):
                dt = getattr(sub[0], "dtype", type(sub[0]).__name__) if sub else "?"
                raise errors.UnsupportedDTypeForOp(
                    dt,
                    f"{what} (Var {name!r})",
                    "only float Vars can be trained; Candle silently drops a non-float Var from its optimizer,"
                    " candlejax refuses it: make it a plain Tensor (a buffer) or convert it with"
                    " .to_dtype(DType.F32)",
                )
        else:
            train = all(_is_float(a) for a in sub) and bool(sub)
        if train and pred is not None and not pred(name):
            train = False
        for i, a in enumerate(sub):
            if not train:
                slots.append(-1)
            elif id(a) in seen:  # tied: the same array used again
                slots.append(seen[id(a)])
            else:
                seen[id(a)] = len(names)
                slots.append(len(names))
                names.append(name if len(sub) == 1 else f"{name}[{i}]")
    leaves, treedef = jax.tree_util.tree_flatten(model)
    if len(leaves) != len(slots):  # pragma: no cover - a pytree whose leaves differ by is_leaf
        raise errors.Msg(f"{what}: cannot flatten the model consistently ({len(leaves)} vs {len(slots)} leaves)")
    if not names:
        raise errors.OptimizerUsage(
            f"{what}: the model has no trainable parameters"
            + (" matching wrt" if pred is not None else " (no float Var / float Tensor leaves)")
        )
    return Split(treedef, leaves, tuple(slots), tuple(names))


def grads_as_params(sp: Split, grads: Any) -> list[Any]:
    """Pick the gradients of the trained parameters out of ``grads``.

    ``grads`` may be model-shaped (what ``jax.grad`` returns, or ``cj.grad`` with ``None`` at the
    untrained leaves) or a list with one array per trained parameter. Gradients of a tied
    parameter's uses are summed.
    """
    n, used = len(sp.names), [s for s in sp.slots if s >= 0]
    if isinstance(grads, (list, tuple)) and len(grads) == n and all(hasattr(g, "shape") for g in grads):
        out = [unwrap(g) for g in grads]
    else:
        leaves, treedef = jax.tree_util.tree_flatten(grads)
        if treedef == sp.treedef:
            per_use = [g for g, s in zip(leaves, sp.slots) if s >= 0]
        elif len(leaves) in (len(used), n):
            per_use = leaves
        else:
            raise errors.OptimizerUsage(
                f"optimizer step: the gradients do not match the model: {len(leaves)} gradient leaves for"
                f" {n} trainable parameters; pass what cj.grad(loss_fn)(model, ...) returns"
            )
        if len(per_use) == n and len(used) != n and per_use is leaves:
            out = list(per_use)
        else:
            out = [None] * n
            for g, s in zip(per_use, used):
                out[s] = g if out[s] is None else out[s] + g
    for g, p, name in zip(out, sp.params, sp.names):
        if getattr(g, "shape", None) != p.shape:
            raise errors.UnexpectedShape(f"optimizer step: gradient of {name} has the wrong shape", p.shape, g.shape)
        if g.dtype != p.dtype:  # Candle: "dtype mismatch in sub" (an f16 gradient into an f32 Var)
            raise errors.UnexpectedDType(
                to_dtype(p.dtype), to_dtype(g.dtype),
                f"optimizer step: gradient of {name} has another dtype than its parameter"
                " (convert it with .to_dtype(...))",
            )
    return out
