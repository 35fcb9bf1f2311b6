"""Many devices and many hosts on JAX's own engine: meshes, sharding rules, ``jax.distributed``.

    import candlejax as cj
    mesh = cj.distributed.mesh({"data": 4, "model": 2})          # over jax.devices()
    model = cj.distributed.shard(model, mesh, "fsdp")             # or "replicate", a dict, model rules
    for x, y in cj.data.Batcher((xs, ys), batch_size=256, mesh=mesh):  # batches split over "data"
        model, state, loss = opt.backward_step(loss_fn, model, state, x, y)

The same Module, ``backward_step``, ``jax.jit`` and generation code run unchanged: tensors carry a
``NamedSharding`` and XLA inserts the collectives (GSPMD). ``initialize()`` joins a run of several
processes (one per host or GPU; CPU processes use JAX's CPU collectives). Candle has no
equivalent beyond a hand-written NCCL example. See docs/distributed.md.
"""

from __future__ import annotations

from candlejax.distributed import rules
from candlejax.distributed._checkpoint import restore, save
from candlejax.distributed._load import load_on_mesh, on_mesh
from candlejax.distributed._mesh import (
    ShardingError,
    axis_size,
    initialize,
    mesh,
    process_count,
    process_index,
    request_host_devices,
    shutdown,
)
from candlejax.distributed._shard import (
    Rules,
    layout,
    model_mesh,
    named_leaves,
    place_like,
    replicate,
    shard,
    shard_batch,
    specs,
    tensor_parallel,
    to_host,
)
from candlejax.distributed.rules import bert_tp_rules, llama_tp_rules

__all__ = [
    "Rules", "ShardingError", "axis_size", "bert_tp_rules", "initialize", "layout", "llama_tp_rules", "load_on_mesh",
    "mesh", "model_mesh", "named_leaves", "on_mesh", "place_like", "process_count", "process_index", "replicate",
    "request_host_devices", "restore", "rules", "save", "shard", "shard_batch", "shutdown", "specs", "tensor_parallel",
    "to_host",
]  # fmt: skip
