"""Placing models and batches on a mesh: sharding rules -> ``NamedSharding`` per tensor."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from candlejax import errors
from candlejax.distributed._mesh import ShardingError, axis_size, need_mesh
from candlejax.quantized import BlockedWeight, PackedWeight, QTensor
from candlejax.tensor import Tensor, unwrap, wrap

AxisSpec = Sequence[str | tuple[str, ...] | None]


@dataclass(frozen=True)
class Rules:
    """Named sharding rules: ``{name regex: axes per dim}``, first match wins, unmatched replicated.

    Axes apply to a tensor's trailing dims (a stacked ``(layers, out, in)`` weight takes the rule
    written for ``(out, in)``). ``require_each``: every pattern must match a tensor (a user's
    dict); model-provided rules (optional biases, cache entries) only need to match something.
    """

    patterns: Mapping[str, AxisSpec]
    name: str = "rules"
    require_each: bool = True
    _compiled: tuple = field(default=(), compare=False, repr=False)

    def compiled(self) -> list[tuple[str, Any, tuple]]:
        out = []
        for pat, spec in self.patterns.items():
            try:
                rx = re.compile(pat)
            except re.error as e:
                raise ShardingError(f"sharding rule {pat!r} is not a valid regex: {e}") from None
            if isinstance(spec, (str, type(None))):
                spec = (spec,)
            out.append((pat, rx, tuple(spec)))
        return out


RuleSet = str | Rules | Mapping[str, AxisSpec] | Callable[[str, tuple[int, ...]], Any]


#: values per quantisation block of a BlockedWeight
BLOCK = 32


def _is_leaf(x: Any) -> bool:
    return isinstance(x, (Tensor, BlockedWeight, QTensor))


def _arrays(leaf: Any) -> list[Any]:
    """The arrays behind a leaf: one; a blocked weight's ``q``, ``scale`` (and ``offset``); a
    QTensor's block bytes. Each has the leaf's dims, the last counting values, blocks or bytes."""
    if isinstance(leaf, BlockedWeight):
        return [a for a in (leaf.q, leaf.scale, leaf.offset) if a is not None]
    if isinstance(leaf, QTensor):
        return [leaf.raw]
    return [unwrap(leaf)]


def _shape(leaf: Any) -> tuple[int, ...]:
    """A leaf's logical shape (a quantised weight's is that of its values, ``(..., out, in)``)."""
    return tuple(leaf.shape) if isinstance(leaf, (BlockedWeight, QTensor)) else tuple(np.shape(unwrap(leaf)))


def _block(leaf: Any) -> int | None:
    """Values per quantisation block along the last dim of a quantised leaf (``None``: not quantised)."""
    if isinstance(leaf, BlockedWeight):
        return BLOCK
    if isinstance(leaf, QTensor) and leaf.ggml_dtype.block_size() > 1:
        return int(leaf.ggml_dtype.block_size())
    return None


def named_leaves(tree: Any) -> list[tuple[str, Any]]:
    """``(name, leaf)`` for every tensor / array leaf: its checkpoint name, else its attribute path.
    A quantised weight (:class:`~candlejax.quantized.BlockedWeight`, :class:`~candlejax.quantized.QTensor`)
    is one leaf, named like the dense weight it stands for (``layers.self_attn.q_proj.weight``), so
    the same rules place both."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_leaf)[0]:
        name = getattr(leaf, "name", None)
        if not (isinstance(name, str) and name):
            name = jax.tree_util.keystr(path, simple=True, separator=".") or "<root>"
        out.append((name, leaf))
    return out


def _fmt_spec(spec: Sequence[Any]) -> str:
    return "(" + ", ".join(repr(s) for s in spec) + ("," if len(spec) == 1 else "") + ")"


def _check_spec(name: str, shape: tuple[int, ...], spec: tuple, mesh: Mesh, rule: str) -> P:
    if len(spec) > len(shape):
        raise ShardingError(
            f"sharding rule {rule!r} gives {len(spec)} axes {_fmt_spec(spec)} for {name} of shape {list(shape)}"
            f" (rank {len(shape)}); give at most one axis per dim"
        )
    full = (None,) * (len(shape) - len(spec)) + tuple(tuple(a) if isinstance(a, list) else a for a in spec)
    used: dict[str, int] = {}
    for i, ax in enumerate(spec):
        names = () if ax is None else (ax,) if isinstance(ax, str) else ax if isinstance(ax, (tuple, list)) else None
        if names is None or not all(isinstance(a, str) for a in names):
            raise ShardingError(
                f"sharding rule {rule!r} for {name}: entry {i} ({ax!r}) of {_fmt_spec(spec)} is not a mesh axis;"
                " each entry is None (not split), an axis name or a tuple of axis names"
            )
        for a in names:
            if a not in mesh.shape:
                raise ShardingError(
                    f"mesh has no axis {a!r} (its axes are {dict(mesh.shape)}), which sharding rule {rule!r} names for"
                    f" {name}; use a mesh with a {a!r} axis, or other rules (e.g. 'replicate' or 'fsdp')"
                )
            used[a] = used.get(a, 0) + 1
            if used[a] > 1:
                raise ShardingError(
                    f"sharding rule {rule!r} uses mesh axis {a!r} for 2 dims of {name} ({_fmt_spec(spec)}); a mesh"
                    " axis splits at most one dim of a tensor"
                )
    for dim, (size, ax) in enumerate(zip(shape, full)):
        n = axis_size(mesh, ax)
        if size % n:
            raise ShardingError(
                f"cannot shard {name} (shape {list(shape)}) dim {dim} of size {size} over mesh axis {ax!r} of size"
                f" {n}: {n} does not divide {size}; use a mesh whose {ax!r} axis divides {size}, or a rule that"
                f" leaves dim {dim} unsplit (None) for {name}"
            )
    return P(*full)


def _fsdp_spec(shape: tuple[int, ...], n: int, axis: str) -> P:
    """Split the largest dim that ``n`` divides (the first of equals); replicate when none does."""
    best = None
    for d, s in enumerate(shape):
        if s % n == 0 and s >= n and (best is None or s > shape[best]):
            best = d
    if best is None:
        return P()
    return P(*(axis if d == best else None for d in range(len(shape))))


class Resolver:
    """Gives each ``(name, shape)`` its ``PartitionSpec`` under ``rules``, one tensor at a time (what
    :func:`resolve` does for a whole tree and a loader on a mesh does as it reads), recording which
    patterns matched; :meth:`check_used` then raises on patterns that matched nothing."""

    def __init__(self, mesh: Mesh, rules: RuleSet):
        need_mesh(mesh)
        known = isinstance(rules, (str, Rules, Mapping)) or callable(rules)
        if not known or (isinstance(rules, str) and rules not in ("replicate", "fsdp")):
            raise ShardingError(
                f"unknown sharding rules {rules!r}; use 'replicate', 'fsdp', a dict {{name regex: axes per dim}} or"
                " a model's rules (e.g. cj.distributed.rules.llama_tp_rules)"
            )
        self.mesh, self.rules = mesh, rules
        self.fn = callable(rules) and not isinstance(rules, (Rules, Mapping, str))
        self.r = None
        if not (isinstance(rules, str) or self.fn):
            self.r = rules if isinstance(rules, Rules) else Rules(dict(rules))  # type: ignore[arg-type]
        self.comp = self.r.compiled() if self.r is not None else []
        self.used: set[str] = set()

    def spec(self, name: str, shape: tuple[int, ...]) -> P:
        rules, mesh = self.rules, self.mesh
        if isinstance(rules, str):
            if rules == "replicate":
                return P()
            axis = "data" if "data" in mesh.shape else mesh.axis_names[0]  # "fsdp"
            return _fsdp_spec(shape, mesh.shape[axis], axis)
        if self.fn:
            spec = rules(name, shape)  # type: ignore[operator]
            spec = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
            return _check_spec(name, shape, spec, mesh, getattr(rules, "__name__", "rule"))
        for pat, rx, spec in self.comp:
            if rx.search(name):
                self.used.add(pat)
                return _check_spec(name, shape, spec, mesh, pat)
        return P()

    def check_used(self, names: Sequence[str], what: str) -> None:
        """Raise when a pattern matched none of ``names`` (``require_each``) or none matched at all."""
        comp = self.comp
        unused = [p for p, _, _ in comp if p not in self.used]
        if comp and (len(unused) == len(comp) or (self.r is not None and self.r.require_each and unused)):
            sample = ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")
            raise ShardingError(
                f"sharding rule{'s' if len(unused) > 1 else ''} {unused} match{'' if len(unused) > 1 else 'es'} no"
                f" parameter of {what} (its names look like: {sample}); fix the pattern(s) (they are"
                " regexes searched in the checkpoint names) or drop them"
            )


def check_blocks(name: str, shape: tuple[int, ...], block: int, spec: P, mesh: Mesh, kind: str = "") -> None:
    """Raise unless ``spec`` splits a tensor of ``shape``, quantised in blocks of ``block`` values
    along its last dim, on block boundaries: its block data and scales take the same spec, so a split
    of the input features must give every device whole blocks with their scales."""
    full = (None,) * (len(shape) - len(tuple(spec))) + tuple(spec)
    ax = full[-1] if full else None
    if ax is None:
        return
    n, width = axis_size(mesh, ax), shape[-1]
    blocks = width // block
    if blocks % n:
        fits = [d for d in range(1, blocks + 1) if blocks % d == 0]
        raise ShardingError(
            f"cannot split {name} ({kind + ', ' if kind else ''}shape {list(shape)}) along dim {len(shape) - 1} (its"
            f" {width} input features) over mesh axis {ax!r} of size {n}: the values are quantised in blocks of"
            f" {block} with one scale per block, and {blocks} block(s) per row do not split into {n} equal shards"
            f" of whole blocks; use a mesh whose {ax!r} axis divides {blocks} (one of {fits}), or a rule that"
            f" leaves dim {len(shape) - 1} unsplit (None) for {name}"
        )


def _spec_of(res: Resolver, name: str, shape: tuple[int, ...], block: int | None, kind: str = "") -> P:
    if block is None:
        return res.spec(name, shape)
    if isinstance(res.rules, str) and res.rules == "fsdp":  # a dim of whole blocks
        return res.spec(name, (*shape[:-1], shape[-1] // block))
    spec = res.spec(name, shape)
    check_blocks(name, shape, block, spec, res.mesh, kind)
    return spec


def leaf_spec(res: Resolver, name: str, leaf: Any) -> P:
    """The ``PartitionSpec`` of one leaf; a quantised weight's applies to each array behind it
    (:func:`_arrays`) and must split it on block boundaries."""
    kind = leaf.ggml_dtype.name if isinstance(leaf, (BlockedWeight, QTensor)) else ""
    return _spec_of(res, name, _shape(leaf), _block(leaf), kind)


def layout(name: str, shape: tuple[int, ...], mesh: Mesh, rules: RuleSet, block: int | None = None,
           kind: str = "") -> P:  # fmt: skip
    """The ``PartitionSpec`` that :func:`shard` gives a tensor ``name`` of ``shape`` under ``rules``
    (``block``: quantised in blocks of that many values along the last dim, which a split must keep
    whole; ``kind``: the block type, for messages); raises :class:`ShardingError` as :func:`shard`
    would. Lets a loader check a file's tensors against a mesh before reading any."""
    return _spec_of(Resolver(mesh, rules), name, tuple(shape), block, kind)


def resolve(tree: Any, mesh: Mesh, rules: RuleSet) -> list[tuple[str, Any, P]]:
    """``(name, leaf, PartitionSpec)`` for every leaf of ``tree`` under ``rules``."""
    leaves = named_leaves(tree)
    res = Resolver(mesh, rules)
    out = [(n, x, leaf_spec(res, n, x)) for n, x in leaves]
    res.check_used([n for n, _ in leaves], type(tree).__name__)
    return out


def _place(a: Any, sharding: NamedSharding) -> Any:
    """``a`` (a jax or numpy array) laid out as ``sharding``, also across processes."""
    if isinstance(a, jax.Array) and a.is_deleted():  # a model a training step consumed
        raise errors.DeletedBuffer("shard")
    if isinstance(a, jax.Array) and a.sharding == sharding:
        return a
    if jax.process_count() == 1:
        return jax.device_put(a, sharding)
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        return jax.jit(lambda x: x, out_shardings=sharding)(a)
    host = np.asarray(a)  # every process holds the same values (same seed / same file)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def _map_leaf(leaf: Any, f: Callable[[Any], Any]) -> Any:
    """``leaf`` with ``f`` applied to each array behind it (a Tensor keeps its name / Var handle kind)."""
    if isinstance(leaf, BlockedWeight):
        q, scale = f(leaf.q), f(leaf.scale)  # in the order of _arrays
        return BlockedWeight(q, scale, None if leaf.offset is None else f(leaf.offset), leaf.ggml_dtype)
    if isinstance(leaf, QTensor):
        return QTensor.from_data(f(leaf.raw), leaf.ggml_dtype, leaf.shape)
    if type(leaf) is Tensor:  # (unflattening a plain Tensor would move a host array back to the device)
        return wrap(f(unwrap(leaf)))
    if isinstance(leaf, Tensor):
        _, treedef = jax.tree_util.tree_flatten(leaf)
        return treedef.unflatten([f(unwrap(leaf))])
    return f(leaf)


def _unpacked(tree: Any) -> Any:
    """File-layout weights (:class:`~candlejax.quantized.PackedWeight`, read by the single-device
    native kernel) as blocked weights, which the rules split on block boundaries."""
    def conv(v: Any) -> Any:
        return v.to_blocked() if isinstance(v, PackedWeight) else v

    return jax.tree_util.tree_map(conv, tree, is_leaf=lambda v: isinstance(v, PackedWeight))


def shard(tree: Any, mesh: Mesh, rules: RuleSet = "replicate") -> Any:
    """A copy of ``tree`` (a Module, a Cache, any pytree of Tensors) laid out on ``mesh``.

    ``rules``:
      * ``"replicate"``: every tensor whole on every device (data parallelism);
      * ``"fsdp"``: each tensor split over the ``"data"`` axis along its largest dim that the axis
        size divides (tensors with no such dim are replicated);
      * ``{name regex: axes per dim}``, e.g. ``{r"q_proj\\.weight$": ("model", None)}``: the first
        matching pattern places a tensor, unmatched tensors are replicated, every pattern must
        match one (names are checkpoint names, else attribute paths such as ``k`` of a Cache);
      * a model's ready rules (:data:`candlejax.distributed.rules.llama_tp_rules`, ...);
      * a function ``(name, shape) -> axes per dim``.
    The same Module, ``backward_step`` and ``jax.jit`` code then runs on the mesh; XLA inserts the
    collectives. JAX: ``jax.device_put(x, NamedSharding(mesh, PartitionSpec(...)))`` per tensor.
    """
    tree = _unpacked(tree)
    placed = {}
    for _n, leaf, spec in resolve(tree, mesh, rules):
        sharding = NamedSharding(mesh, spec)
        placed[id(leaf)] = _map_leaf(leaf, lambda a, s=sharding: _place(a, s))
    return jax.tree_util.tree_map(lambda x: placed.get(id(x), x), tree, is_leaf=_is_leaf)


def specs(tree: Any) -> dict[str, Any]:
    """Name -> ``PartitionSpec`` of every leaf (``None`` for arrays not on a mesh)."""
    out = {}
    for n, leaf in named_leaves(tree):
        s = getattr(_arrays(leaf)[0], "sharding", None)
        out[n] = s.spec if isinstance(s, NamedSharding) else None
    return out


def _batch_arrays(x: Any, who: str) -> tuple[list[Any], Callable[[list[Any]], Any]]:
    if isinstance(x, Mapping) or x is None:
        raise ShardingError(f"{who}: a batch is a Tensor / array or a tuple of them, got {type(x).__name__}")
    if isinstance(x, (tuple, list)):
        return [unwrap(v) for v in x], lambda vs: type(x)(wrap(v) for v in vs)
    return [unwrap(x)], lambda vs: wrap(vs[0])


def shard_batch(batch: Any, mesh: Mesh, axis: str | tuple[str, ...] = "data") -> Any:
    """A batch (a Tensor / array or a tuple of them) split along dim 0 over ``axis`` of ``mesh``.

    Every process passes the same global batch (same data, same seed); each places only the rows
    of its own devices. The batch size must be a multiple of the axis size.
    JAX: ``jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))``.
    """
    need_mesh(mesh, "shard_batch")
    arrays, rebuild = _batch_arrays(batch, "shard_batch")
    n = axis_size(mesh, axis)
    out = []
    for i, a in enumerate(arrays):
        shape = tuple(np.shape(a))
        if not shape:
            raise ShardingError(f"shard_batch: field {i} is a scalar; batches have the examples along dim 0")
        if shape[0] % n:
            lo, hi = shape[0] // n * n, (shape[0] // n + 1) * n
            lo, hi = (lo, hi) if lo else (hi, 2 * hi)
            raise ShardingError(
                f"batch of {shape[0]} examples (field {i}, shape {list(shape)}) does not split over mesh axis"
                f" {axis!r} of size {n}; use a batch size that is a multiple of {n} (e.g. {lo} or {hi}),"
                " or drop the last incomplete batch (Batcher's default)"
            )
        spec = P(axis, *([None] * (len(shape) - 1)))
        out.append(_place(a if isinstance(a, jax.Array) else np.asarray(a), NamedSharding(mesh, spec)))
    return rebuild(out)


def replicate(x: Any, mesh: Mesh) -> Any:
    """``x`` (a Tensor / array or a tuple of them) whole on every device of ``mesh`` (model inputs
    such as token ids for a tensor-parallel model)."""
    need_mesh(mesh, "replicate")
    arrays, rebuild = _batch_arrays(x, "replicate")
    return rebuild([_place(a if isinstance(a, jax.Array) else np.asarray(a), NamedSharding(mesh, P())) for a in arrays])


def to_host(tree: Any) -> Any:
    """``tree`` with every array gathered into host numpy arrays (all processes take part)."""

    def gather(a: Any) -> Any:
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    leaves = named_leaves(tree)
    placed = {id(leaf): _map_leaf(leaf, gather) for _, leaf in leaves}
    return jax.tree_util.tree_map(lambda x: placed.get(id(x), x), tree, is_leaf=_is_leaf)


def place_opt_state(tx: Any, state: Any, params: list[Any]) -> Any:
    """An optimizer state laid out like ``params``: param-shaped leaves (Adam moments) take their
    parameter's sharding, the rest (step counts) is replicated on the same mesh."""
    import optax

    first = params[0].sharding
    rep = NamedSharding(first.mesh, P()) if isinstance(first, NamedSharding) else first

    def like(v: Any, p: Any) -> Any:
        return _place(v, p.sharding) if hasattr(v, "shape") and tuple(v.shape) == tuple(p.shape) else _place(v, rep)

    def other(v: Any) -> Any:
        return jax.tree_util.tree_map(lambda a: _place(a, rep), v)

    inner = optax.tree_utils.tree_map_params(tx, like, state.inner, params, transform_non_params=other)
    return type(state)(_place(state.step, rep), inner)


def place_like(tree: Any, ref: Any, rules: RuleSet = "replicate") -> Any:
    """``tree`` (a KV cache, an input) on the mesh ``ref`` (a model or a tensor) is laid out on,
    under ``rules`` (used when that mesh has a ``"model"`` axis; else replicated); unchanged when
    ``ref`` is on one device. Lets a model build its caches where its weights are. A tensor that
    ``rules`` cannot split over that mesh (a cache of 2 key/value heads on a 4-way ``"model"``
    axis, which a replicated or FSDP model may sit on) is replicated: the model computes the same
    values, each device holding that tensor whole. Inside a trace (``ref`` traced) ``tree`` is left
    to the program's own placement."""
    sh = None
    for _, leaf in named_leaves(ref):
        a = _arrays(leaf)[0]
        if isinstance(a, jax.core.Tracer):
            return tree
        sh = getattr(a, "sharding", None)
        if sh is not None:
            break
    if not isinstance(sh, NamedSharding) or len(sh.device_set) == 1:
        return tree
    if "model" not in sh.mesh.shape:
        return shard(tree, sh.mesh, "replicate")
    res = Resolver(sh.mesh, rules)

    def fit(name: str, shape: tuple[int, ...]) -> P:
        try:
            return res.spec(name, shape)
        except ShardingError:
            return P()

    return shard(tree, sh.mesh, fit)


def model_mesh(n: int) -> Any:
    """A ``{"model": n}`` mesh of the first ``n`` devices (tensor parallelism)."""
    from candlejax.distributed._mesh import mesh

    devs = jax.devices()
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ShardingError(f"tensor parallel over {n!r} devices: give a positive number of devices")
    if n > len(devs):
        raise ShardingError(
            f"tensor parallel over {n} devices, but {len(devs)} are visible; on a CPU-only machine start Python"
            f" with XLA_FLAGS=--xla_force_host_platform_device_count={n}"
        )
    return mesh({"model": n}, devs[:n])


def tensor_parallel(model: Any, n: int, rules: RuleSet) -> Any:
    """``model`` split over a ``{"model": n}`` mesh of the first ``n`` devices."""
    return shard(model, model_mesh(n), rules)


def device_mismatch(op: str, names: Sequence[str], params: Sequence[Any], batch: Any) -> ShardingError:
    """The error for a step whose parameters and batch live on different devices (JAX's
    "incompatible devices"), naming both sides and the fix."""

    def ids(a: Any) -> list[int]:
        s = getattr(unwrap(a), "sharding", None)
        return sorted(d.id for d in s.device_set) if s is not None else []

    p_ids = next((ids(a) for a in params if ids(a)), [])
    where = "a mesh" if len(p_ids) > 1 else "one device"
    p_name = names[0] if names else "the parameters"
    for i, b in enumerate(jax.tree_util.tree_leaves(batch, is_leaf=_is_leaf)):
        b_ids = ids(b)
        if b_ids and b_ids != p_ids and getattr(unwrap(b), "committed", True):
            return ShardingError(
                f"{op}: the model's parameters ({p_name}, ...) are on devices {p_ids} ({where}) but batch input {i}"
                f" (shape {list(np.shape(unwrap(b)))}) is on devices {b_ids}; place batches where the model is:"
                " cj.data.Batcher(..., mesh=mesh) or cj.distributed.shard_batch(batch, mesh) for a mesh,"
                " .to_device(...) for one device"
            )
    return ShardingError(f"{op}: the model's parameters ({p_name}, ...) and its inputs are on different devices")
