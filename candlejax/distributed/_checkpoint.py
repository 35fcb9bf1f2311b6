"""Checkpoints of sharded models: one gathered file, re-sharded on load."""

from __future__ import annotations

import os
from typing import Any

import jax
from jax.sharding import NamedSharding

from candlejax import checkpoint as _ckpt
from candlejax import errors
from candlejax.distributed._shard import _arrays, _is_leaf, _map_leaf, _place, named_leaves, to_host
from candlejax.nn.module import NamedTensor


def save(path: str | os.PathLike[str], model: Any, opt_state: Any = None, **kwargs: Any) -> None:
    """:func:`candlejax.checkpoint.save` for a model (and optimizer state) laid out on a mesh.

    Scheme: *gathered file*. Every process takes part in gathering each tensor whole (an
    all-gather across processes when shards live on other hosts); process 0 alone writes one
    ordinary candlejax checkpoint (safetensors, checkpoint names, written atomically), the same
    file an unsharded run writes; the others wait for it. So a checkpoint moves freely between
    1 device, a mesh of any shape and several processes. Memory: each process holds the whole
    model on the host while saving.
    """
    host_model = to_host(model)
    host_state = None if opt_state is None else to_host(opt_state)
    if jax.process_index() == 0:
        _ckpt.save(path, host_model, host_state, **kwargs)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"candlejax checkpoint save {os.fspath(path)}")


def restore(path: str | os.PathLike[str], model: Any, opt_state: Any = None, **kwargs: Any) -> _ckpt.Checkpoint:
    """:func:`candlejax.checkpoint.restore` into a sharded template: every tensor of the file is
    placed with the sharding of the template's tensor of the same name (also the optimizer
    state, given as ``opt_state`` or built with ``optimizer=``). Every process reads the same file
    (a shared filesystem) and keeps only its own shards on its devices. With an optimizer bound to
    the template's Vars (Candle's form), those Vars are set in place and the optimizer's own state
    is restored, laid out like them, so ``opt.backward_step(loss_fn, model, x, y)`` continues."""
    optimizer = kwargs.get("optimizer")
    bound = optimizer is not None and bool(getattr(optimizer, "vars", ())) and opt_state is None
    handles: tuple[Any, ...] = ()
    if bound:
        kwargs = {k: v for k, v in kwargs.items() if k != "optimizer"}
        meta = _ckpt.read_metadata(path)
        if meta.get("opt_leaves") is not None:
            try:
                handles, opt_state = optimizer.bound_state_template(model, meta.get("opt_vars"))
            except errors.OptimizerUsage as e:
                raise _ckpt.CheckpointError(f"checkpoint {os.fspath(path)}: {e}") from None
    elif opt_state is None and optimizer is not None:
        opt_state = optimizer.init(model)
    ck = _ckpt.restore(path, to_host(model), None if opt_state is None else to_host(opt_state), **kwargs)
    ck.model = _like(ck.model, model)
    if opt_state is not None:
        ck.opt_state = _like(ck.opt_state, opt_state)
    if bound:
        ck.model = _into(model, ck.model)
        optimizer.set_bound_state(handles or None, ck.opt_state if handles else None)
        _ckpt.restore_learning_rate(optimizer, ck.learning_rate)
    return ck


def _into(template: Any, loaded: Any) -> Any:
    """``template`` with its Vars and Buffers set in place to ``loaded``'s values (the handles a
    VarMap and a bound optimizer share) and its other leaves replaced by ``loaded``'s."""
    src = {id(d): s for (_, d), (_, s) in zip(named_leaves(template), named_leaves(loaded))}
    for (_, d), (_, s) in zip(named_leaves(template), named_leaves(loaded)):
        if isinstance(d, NamedTensor):
            d.set(s, own=True)  # fresh from the file: no copy
    return jax.tree_util.tree_map(lambda x: x if isinstance(x, NamedTensor) else src.get(id(x), x), template,
                                  is_leaf=_is_leaf)  # fmt: skip


def _like(loaded: Any, template: Any) -> Any:
    """``loaded``'s values with ``template``'s shardings, leaf by leaf."""
    src = [leaf for _, leaf in named_leaves(loaded)]
    dst = [leaf for _, leaf in named_leaves(template)]
    placed = {}
    for s, d in zip(src, dst):
        placed[id(s)] = _map_leaf(s, _placer([getattr(a, "sharding", None) for a in _arrays(d)]))
    return jax.tree_util.tree_map(lambda x: placed.get(id(x), x), loaded, is_leaf=_is_leaf)


def _placer(shardings: list[Any]) -> Any:
    """A function placing the arrays of one leaf, in order, with ``shardings`` (``None``: as they are)."""
    it = iter(shardings)

    def put(a: Any) -> Any:
        sh = next(it)
        return _place(a, sh) if isinstance(sh, NamedSharding) or (sh is not None and jax.process_count() == 1) else a

    return put
