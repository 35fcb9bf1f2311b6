"""One process of a data-parallel training run (used by test_multiprocess.py).

    python tests/distributed/mp_train.py --num-processes 2 --process-id 0 --port 12345 --steps 6
prints ``LOSSES [..]`` (per-step losses) on process 0. ``--die-at K``: process 1 exits abruptly
before step K, so the other must fail.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

p = argparse.ArgumentParser()
p.add_argument("--num-processes", type=int, default=1)
p.add_argument("--process-id", type=int, default=0)
p.add_argument("--port", type=int, default=0)
p.add_argument("--steps", type=int, default=6)
p.add_argument("--die-at", type=int, default=-1)
args = p.parse_args()

import candlejax as cj  # noqa: E402

if args.num_processes > 1:
    cj.distributed.initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id,
                              initialization_timeout=60, heartbeat_timeout_seconds=5)  # fmt: skip

import numpy as np  # noqa: E402

from candlejax import Device, DType  # noqa: E402
from candlejax.demo import Mlp, loss_fn  # noqa: E402
from candlejax.nn import VarBuilder, VarMap  # noqa: E402

mesh = cj.distributed.mesh({"data": -1})
rng = np.random.default_rng(0)
data = rng.standard_normal((96, 64)).astype(np.float32), rng.integers(0, 10, 96).astype(np.uint32)
model = cj.distributed.shard(Mlp(VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu)), mesh, "replicate")
opt = cj.optim.AdamW(cj.optim.ParamsAdamW(lr=1e-2))
state = opt.init(model)
batcher = cj.data.Batcher(data, batch_size=16, shuffle=True, seed=1, mesh=mesh)
losses: list[float] = []
while len(losses) < args.steps:
    for x, y in batcher:
        if len(losses) == args.die_at and args.process_id == 1:
            os._exit(3)  # a crash: no clean shutdown
        model, state, loss = opt.backward_step(loss_fn, model, state, x, y)
        losses.append(float(np.asarray(loss)))
        if len(losses) == args.steps:
            break
w = float(np.asarray(cj.distributed.to_host(model).named_vars()["second.weight"]).sum())
if args.process_id == 0:
    print("LOSSES " + json.dumps({"losses": losses, "devices": len(mesh.devices.flat), "wsum": w}), flush=True)
sys.stdout.flush()
