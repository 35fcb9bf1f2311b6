"""Training checkpoints: model + optimizer state + epoch/step + data position + RNG, in one file.

requires: numpy, jax, candlejax.io.safetensors, candlejax.random, candlejax.optim (OptState)
provides: ``save``, ``restore``, ``Checkpoint``, ``CheckpointError``

One safetensors file holds the model's tensors (``model/<checkpoint name>``), the optimizer state's
leaves (``optim/<i>``) and, in its JSON metadata, the step, the epoch, the Batcher's position, the
candlejax device generators, numpy Generators and any ``extra`` values. Python ``bool`` / ``int`` /
``float`` leaves are kept in the metadata (``scalars``), exactly and with their type; 64-bit numpy
leaves are read back as numpy without JAX's x64 mode. It is written to a temporary
file and renamed over the old one, so an interrupted save (Ctrl-C, a crash, a full disk) leaves the
previous checkpoint intact. A run stopped and resumed from a checkpoint ends bit-identical to an
uninterrupted one.

    cj.checkpoint.save("ckpt.safetensors", model, state, step=step, epoch=epoch, batcher=batcher)
    ck = cj.checkpoint.restore("ckpt.safetensors", model, optimizer=opt, batcher=batcher)
    model, state = ck.model, ck.opt_state

PyTorch: ``torch.save({"model": m.state_dict(), "optim": opt.state_dict(), ...})``. Candle has
``VarMap::save`` (weights only).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from candlejax import errors
from candlejax import random as cj_random
from candlejax.io import safetensors as st
from candlejax.tensor._core import TensorBase, unwrap

FORMAT = "candlejax.checkpoint/1"
_META_KEY = "candlejax.checkpoint"


class CheckpointError(errors.Error):
    """A checkpoint that does not fit the model / optimizer it is restored into, or is not one."""


@dataclass
class Checkpoint:
    """What :func:`restore` returns."""

    model: Any
    opt_state: Any
    step: int
    epoch: int
    extra: dict[str, Any] = field(default_factory=dict)
    learning_rate: float | None = None


def _is_named(x: Any) -> bool:
    return isinstance(x, TensorBase)


def _named_leaves(model: Any) -> list[tuple[str, Any, Any]]:
    """``(name, path, leaf)`` for every tensor / array leaf: its checkpoint name, else its tree path."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(model, is_leaf=_is_named)[0]:
        name = getattr(leaf, "name", None)
        if not (isinstance(name, str) and name):
            name = jax.tree_util.keystr(path, simple=True, separator=".") or "<root>"
        out.append((name, path, leaf))
    return out


def _host(x: Any, what: str) -> np.ndarray:
    a = unwrap(x)
    if isinstance(a, jax.core.Tracer):
        raise errors.TracingError(
            f"checkpoint save: {what} is traced (inside jax.jit/grad/vmap), its values are unknown there; return"
            " the model and state from the traced function and save them outside"
        )
    if getattr(a, "is_deleted", None) is not None and a.is_deleted():
        raise CheckpointError(
            f"checkpoint save: {what} was donated to an optimizer step and no longer exists; save the model"
            " and state returned by the step"
        )
    if _is_key(a):
        a = jax.random.key_data(a)
    return np.asarray(a)


def _is_key(x: Any) -> bool:
    """Whether ``x`` is a typed PRNG key array (``jax.random.key``), saved as its ``key_data``."""
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


_SCALARS = (bool, int, float)


def _is_scalar(x: Any) -> bool:
    return type(x) in _SCALARS


def _put(key: str, leaf: Any, what: str, tensors: dict[str, Any], scalars: dict[str, Any]) -> None:
    if _is_scalar(leaf):
        scalars[key] = leaf
    else:
        tensors[key] = _host(leaf, what)


def _rng_states() -> dict[str, list[int]]:
    return {f"{k[0]}:{k[1]}": [int(v[0]), int(v[2])] for k, v in cj_random._state.items()}


def _np_state(g: Any, name: str) -> dict[str, Any]:
    """The JSON form of a numpy generator's state (``Generator`` or legacy ``RandomState``): its bit
    generator's ``state`` dict, numpy arrays (MT19937, Philox, SFC64) as ``{"ndarray": list, "dtype"}``."""
    if isinstance(g, np.random.Generator):
        state = g.bit_generator.state
    elif isinstance(g, np.random.RandomState):
        state = g.get_state(legacy=False)
    else:
        raise CheckpointError(
            f"checkpoint: numpy_rngs[{name!r}] must be a numpy.random.Generator or RandomState, got {type(g).__name__}"
        )

    def enc(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: enc(x) for k, x in v.items()}
        if isinstance(v, np.ndarray):
            return {"ndarray": v.tolist(), "dtype": v.dtype.str}
        return v.item() if isinstance(v, np.generic) else v

    return enc(state)


def _set_np_state(g: Any, name: str, saved: Any, path: str) -> Any:
    """Check ``saved`` (from :func:`_np_state`) fits ``g``'s bit generator; returns a setter."""
    if not isinstance(g, np.random.Generator | np.random.RandomState):
        _np_state(g, name)  # raises naming the type
    mine = type(g.bit_generator).__name__ if isinstance(g, np.random.Generator) else "MT19937"  # RandomState's

    def dec(v: Any) -> Any:
        if isinstance(v, dict):
            if set(v) == {"ndarray", "dtype"}:
                return np.asarray(v["ndarray"], dtype=np.dtype(v["dtype"]))
            return {k: dec(x) for k, x in v.items()}
        return v

    kind = saved.get("bit_generator") if isinstance(saved, dict) else None
    if kind != mine:
        raise CheckpointError(f"checkpoint {path}: numpy generator {name!r} is a {kind}, the one given is a {mine}")
    state = dec(saved)
    if isinstance(g, np.random.Generator):
        return lambda: setattr(g.bit_generator, "state", state)
    return lambda: g.set_state(state)


def _check_batcher(batcher: Any, op: str) -> None:
    """Raise unless ``batcher`` has a position to save / restore (``state`` / ``set_state``)."""
    if batcher is not None and not (hasattr(batcher, "state") and hasattr(batcher, "set_state")):
        raise CheckpointError(
            f"checkpoint {op}: batcher= takes a cj.data.Batcher (its epoch and position are saved); a"
            f" {type(batcher).__name__} has no position (Batcher.new1/new2 stream their iterator once, as"
            " Candle's); build Batcher((xs, ys), batch_size) to resume mid-epoch"
        )


def save(
    path: str | os.PathLike[str],
    model: Any,
    opt_state: Any = None,
    *,
    step: int = 0,
    epoch: int = 0,
    batcher: Any = None,
    optimizer: Any = None,
    numpy_rngs: dict[str, np.random.Generator | np.random.RandomState] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint to ``path`` atomically (temporary file + rename).

    Args:
        model: a Module or any pytree of Tensors / arrays.
        opt_state: the optimizer state (``opt.init(model)`` / the one ``backward_step`` returns).
        step, epoch: counters to resume from.
        batcher: a ``cj.data.Batcher``; its ``(epoch, position, seed)`` are saved.
        optimizer: saves its current learning rate (set again by :func:`restore`); an optimizer bound
            to Vars (``AdamW(varmap.all_vars(), ..)``) also saves its own state, so ``opt_state`` may
            be left out.
        numpy_rngs: named ``np.random.Generator`` (any bit generator) or ``RandomState`` objects whose
            state is saved.
        extra: JSON-serialisable values (loss history, config, ...).
    Also saved: the state of every candlejax device generator (``Device.set_seed`` / ``randn``).
    """
    _check_batcher(batcher, "save")
    tensors: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for name, _, leaf in _named_leaves(model):
        key = f"model/{name}"
        if key in tensors or key in scalars:
            continue  # a tied parameter appears once
        _put(key, leaf, f"model tensor {name!r}", tensors, scalars)
    trained = None
    bound = _bound(optimizer)
    if bound and (opt_state is None or opt_state is optimizer.state) and optimizer.state is not None:
        opt_state = optimizer.state  # Candle's form: the optimizer holds the state of its Vars
        trained = [h.name for h in optimizer.stepped_vars or ()]
    n_opt = 0
    if opt_state is not None:
        for i, leaf in enumerate(jax.tree_util.tree_leaves(opt_state)):
            _put(f"optim/{i}", leaf, f"optimizer state leaf {i}", tensors, scalars)
            n_opt += 1
    lr = None
    if optimizer is not None:
        try:
            lr = optimizer.learning_rate(opt_state)
        except errors.Error:
            lr = None
    meta = {
        "format": FORMAT,
        "step": int(step),
        "epoch": int(epoch),
        "opt_leaves": n_opt if opt_state is not None else None,
        "opt_vars": trained,
        "batcher": None if batcher is None else batcher.state(),
        "learning_rate": lr,
        "random": _rng_states(),
        "numpy": {k: _np_state(g, k) for k, g in (numpy_rngs or {}).items()},
        "extra": extra or {},
        "scalars": scalars,
    }
    try:
        blob = json.dumps(meta)
    except TypeError as e:
        raise CheckpointError(f"checkpoint save: extra values must be JSON-serialisable ({e})") from None
    st.save(tensors, path, {_META_KEY: blob})


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's JSON metadata (step, epoch, batcher, random, numpy, extra)."""
    with st.MmapedSafetensors(path) as f:
        md = f.metadata()
    if not md or _META_KEY not in md:
        raise CheckpointError(f"{os.fspath(path)} is a safetensors file but not a candlejax checkpoint")
    try:
        meta = json.loads(md[_META_KEY])
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{os.fspath(path)}: the checkpoint metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{os.fspath(path)}: the checkpoint metadata is a {type(meta).__name__}, not an object")
    return meta


def _check_metadata(meta: dict[str, Any], path: str) -> None:
    """Refuse metadata that ``restore`` cannot use, naming the entry (instead of KeyError / TypeError)."""

    def bad(key: str, want: str) -> CheckpointError:
        return CheckpointError(f"{path}: checkpoint metadata {key!r} must be {want}, got {meta.get(key)!r}")

    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r} (expected {FORMAT})")
    for key in ("step", "epoch"):
        if type(meta.get(key)) is not int:
            raise bad(key, "an integer")
    n = meta.get("opt_leaves")
    if n is not None and (type(n) is not int or n < 0):
        raise bad("opt_leaves", "a non-negative integer or null")
    for key in ("numpy", "extra", "scalars"):
        if not isinstance(meta.get(key, {}), dict):
            raise bad(key, "an object")
    if not all(type(v) in _SCALARS for v in meta.get("scalars", {}).values()):
        raise bad("scalars", "an object of numbers and booleans")
    rnd = meta.get("random", {})
    ok = isinstance(rnd, dict) and all(
        isinstance(k, str) and k.partition(":")[2].isdigit() and isinstance(v, list) and len(v) == 2
        and all(type(x) is int for x in v)
        for k, v in rnd.items()
    )
    if not ok:
        raise bad("random", 'an object {"kind:ordinal": [seed, counter]}')
    lr = meta.get("learning_rate")
    if lr is not None and type(lr) not in (int, float):
        raise bad("learning_rate", "a number or null")
    names = meta.get("opt_vars")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise bad("opt_vars", "a list of Var names or null")


def restore(
    path: str | os.PathLike[str],
    model: Any,
    opt_state: Any = None,
    *,
    optimizer: Any = None,
    batcher: Any = None,
    numpy_rngs: dict[str, np.random.Generator | np.random.RandomState] | None = None,
    restore_random: bool = True,
) -> Checkpoint:
    """Load a checkpoint into the structure of ``model`` (and of ``opt_state``).

    ``model`` is a template: a model of the same architecture (e.g. freshly built with a
    VarBuilder); its tensors are replaced by the saved ones, checked by name, shape and dtype.
    The optimizer state's template is ``opt_state``, or ``optimizer.init(model)`` when only
    ``optimizer`` is given (whose learning rate is also restored). ``batcher``, ``numpy_rngs`` and
    the candlejax device generators (``restore_random``) are set back in place.

    With an optimizer bound to Vars (Candle's form), the template's Vars and Buffers are set in place
    (as ``varmap.load``: the VarMap, the model and the optimizer share them) and the optimizer's own
    state is restored, so ``opt.backward_step(loss_fn, model, x, y)`` continues the saved run.
    """
    _check_batcher(batcher, "restore")
    path = errors.path_arg(path, "checkpoint restore")
    meta = read_metadata(path)
    _check_metadata(meta, path)
    with st.MmapedSafetensors(path) as f:  # host copies: 64-bit numpy leaves need no x64 mode
        saved: dict[str, Any] = {n: f.get(n).numpy() for n in f.names()}
    saved.update(meta.get("scalars", {}))
    model_keys = {k[len("model/") :]: v for k, v in saved.items() if k.startswith("model/")}

    named = _named_leaves(model)
    mine = {n for n, _, _ in named}
    missing, unexpected = sorted(mine - set(model_keys)), sorted(set(model_keys) - mine)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model ({type(model).__name__}): missing: {missing[:20]}"
            f"{' ...' if len(missing) > 20 else ''}, unexpected: {unexpected[:20]}"
            f"{' ...' if len(unexpected) > 20 else ''}"
        )
    repl: dict[int, Any] = {}
    for name, _, leaf in named:
        a = model_keys[name]
        want = unwrap(leaf)
        if _is_scalar(want):
            repl[id(leaf)] = _scalar(a, want, f"checkpoint {path}: {name}")
            continue
        if _is_key(want):  # saved as its key data (``_host``)
            want = jax.random.key_data(want)
        if _is_scalar(a) or tuple(a.shape) != tuple(np.shape(want)):
            raise CheckpointError(
                f"checkpoint {path}: {name} has shape {errors.fmt_shape(np.shape(a))}, the model expects"
                f" {errors.fmt_shape(np.shape(want))}"
            )
        if a.dtype != want.dtype:
            raise CheckpointError(f"checkpoint {path}: {name} is {a.dtype}, the model expects {want.dtype}")
        repl[id(leaf)] = _like(leaf, a)
        if _is_key(unwrap(leaf)):
            repl[id(leaf)] = jax.random.wrap_key_data(repl[id(leaf)], impl=jax.random.key_impl(unwrap(leaf)))
    new_model = jax.tree_util.tree_map(lambda x: repl.get(id(x), x), model, is_leaf=_is_named)

    bound = _bound(optimizer)
    handles: tuple[Any, ...] = ()
    if bound and opt_state is None and meta.get("opt_leaves") is not None:
        try:
            handles, opt_state = optimizer.bound_state_template(model, meta.get("opt_vars"))
        except errors.OptimizerUsage as e:
            raise CheckpointError(f"checkpoint {path}: {e}") from None
    new_state = None
    if opt_state is None and optimizer is not None and not bound:
        opt_state = optimizer.init(new_model)
    if opt_state is not None:
        leaves, treedef = jax.tree_util.tree_flatten(opt_state)
        n = meta.get("opt_leaves")
        if n is None:
            raise CheckpointError(f"checkpoint {path} holds no optimizer state")
        if n != len(leaves):
            raise CheckpointError(
                f"checkpoint {path}: the optimizer state has {n} leaves, this optimizer's has {len(leaves)}"
                " (a different optimizer or model?)"
            )
        new_leaves = []
        for i, want in enumerate(leaves):
            if f"optim/{i}" not in saved:
                raise CheckpointError(f"checkpoint {path}: optimizer state leaf {i} (optim/{i}) is missing")
            a = saved[f"optim/{i}"]
            if _is_scalar(want):
                a = _scalar(a, want, f"checkpoint {path}: optimizer state leaf {i}")
            elif _is_key(want):
                a = jax.random.wrap_key_data(a, impl=jax.random.key_impl(want))
            elif _is_scalar(a) or tuple(a.shape) != tuple(np.shape(want)):
                raise CheckpointError(
                    f"checkpoint {path}: optimizer state leaf {i} has shape {errors.fmt_shape(np.shape(a))},"
                    f" expected {errors.fmt_shape(np.shape(want))}"
                )
            else:
                a = _like(want, a)
            new_leaves.append(a)
        new_state = treedef.unflatten(new_leaves)

    # what may still raise comes before the Vars are set in place: a failed restore leaves them as they were
    set_numpy = []
    for k, g in (numpy_rngs or {}).items():
        if k not in meta.get("numpy", {}):
            raise CheckpointError(f"checkpoint {path} holds no numpy generator named {k!r}")
        set_numpy.append(_set_np_state(g, k, meta["numpy"][k], path))
    if batcher is not None:
        if meta.get("batcher") is None:
            raise CheckpointError(f"checkpoint {path} holds no Batcher position")
        try:
            batcher.set_state(meta["batcher"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path}: invalid Batcher position {meta['batcher']!r} ({e!r})") from None
    for set_state in set_numpy:
        set_state()

    if bound:  # Candle's form: the Vars shared with the VarMap and the optimizer are set in place
        from candlejax.nn.module import NamedTensor

        for _, _, leaf in named:
            if isinstance(leaf, NamedTensor):
                leaf.set(repl[id(leaf)], own=True)  # fresh from the file: no copy
        new_model = jax.tree_util.tree_map(
            lambda x: x if isinstance(x, NamedTensor) else repl.get(id(x), x), model, is_leaf=_is_named
        )
        optimizer.set_bound_state(handles if new_state is not None else None, new_state)

    lr = meta.get("learning_rate")
    if optimizer is not None:
        restore_learning_rate(optimizer, lr)
    if restore_random:
        cj_random._state.clear()
        for k, (seed, counter) in meta.get("random", {}).items():
            kind, _, ordinal = k.partition(":")
            cj_random._state[(kind, int(ordinal))] = [int(seed), None, int(counter)]
    return Checkpoint(new_model, new_state, int(meta["step"]), int(meta["epoch"]), meta.get("extra", {}), lr)


def restore_learning_rate(optimizer: Any, lr: float | None) -> None:
    """Set ``optimizer``'s learning rate to a checkpoint's ``lr`` (kept when ``None`` or a schedule)."""
    if lr is not None and not callable(getattr(optimizer, "_lr", None)):
        optimizer.set_learning_rate(lr)


def _bound(optimizer: Any) -> bool:
    """Whether ``optimizer`` is bound to Vars (Candle's ``AdamW::new(varmap.all_vars(), ..)``)."""
    return optimizer is not None and bool(getattr(optimizer, "vars", ()))


def _scalar(a: Any, want: Any, what: str) -> Any:
    """A Python bool / int / float leaf: from the metadata, or a 0-d tensor of an older checkpoint."""
    if not _is_scalar(a):
        if np.shape(a) != ():
            raise CheckpointError(f"{what} has shape {errors.fmt_shape(np.shape(a))}, the template holds {want!r}")
        a = a.item()
    if type(a) is not type(want) and not (type(want) is float and type(a) is int):
        raise CheckpointError(f"{what} is the {type(a).__name__} {a!r}, the template holds the {type(want).__name__}")
    return type(want)(a)


def _device_put(a: np.ndarray, like: Any) -> Any:
    devs = getattr(like, "devices", None)
    if devs is not None:
        try:
            return jax.device_put(a, next(iter(devs())))
        except RuntimeError:  # a donated template buffer still knows its device, but be safe
            pass
    return jax.device_put(a)


def _like(template: Any, a: np.ndarray) -> Any:
    """``a`` (a host array) in the template leaf's container (Var / Buffer / Tensor keep their kind and
    name; a jax.Array template gives a jax.Array, a numpy one stays numpy)."""
    if isinstance(template, TensorBase):
        leaves, treedef = jax.tree_util.tree_flatten(template)
        return treedef.unflatten([_device_put(a, leaves[0] if leaves else None)])
    if isinstance(template, np.generic):
        return a[()]
    if isinstance(template, np.ndarray):
        return a
    return _device_put(a, template)


__all__ = ["FORMAT", "Checkpoint", "CheckpointError", "read_metadata", "restore", "save"]
