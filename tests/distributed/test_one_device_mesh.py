"""A mesh of the one device a plain test process has: the same code path as many devices."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import candlejax as cj
from candlejax import Device, DType
from candlejax.demo import Mlp, loss_fn
from candlejax.nn import VarBuilder, VarMap


@pytest.mark.parametrize("rules", ["replicate", "fsdp"])
def test_one_device_mesh_trains_like_no_mesh(rules):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((32, 64)).astype(np.float32), rng.integers(0, 10, 32).astype(np.uint32)
    mesh = cj.distributed.mesh({"data": 1}, jax.devices()[:1])
    runs = []
    for m in (None, mesh):
        model = Mlp(VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu))
        if m is not None:
            model = cj.distributed.shard(model, m, rules)
        opt = cj.optim.AdamW(cj.optim.ParamsAdamW(lr=1e-2))
        state = opt.init(model)
        losses = []
        for x, y in cj.data.Batcher(data, batch_size=8, mesh=m):
            model, state, loss = opt.backward_step(loss_fn, model, state, x, y)
            losses.append(float(np.asarray(loss)))
        runs.append(losses)
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-6)
