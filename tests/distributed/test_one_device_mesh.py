"""A mesh of the one device a plain test process has: the same code path as many devices."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import candlejax as cj
from candlejax import Device, DType, Tensor
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


def test_sharding_a_model_a_step_consumed_names_the_donation():
    """A model whose buffers a functional step donated: shard raises DeletedBuffer (JAX's raw
    RuntimeError 'Array has been deleted' before)."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 64)).astype(np.float32), rng.integers(0, 10, 8).astype(np.uint32)
    mesh = cj.distributed.mesh({"data": 1}, jax.devices()[:1])
    model = Mlp(VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu))
    placed = cj.distributed.shard(model, mesh, "replicate")  # already in place: the same buffers
    opt = cj.optim.AdamW(cj.optim.ParamsAdamW(lr=1e-2))
    _, _, _ = opt.backward_step(loss_fn, placed, opt.init(placed), x, y)
    with pytest.raises((cj.errors.DeletedBuffer, cj.errors.DonatedVar)):
        cj.distributed.shard(model, mesh, "fsdp")


def test_models_carry_their_ready_tensor_parallel_rules():
    """``cj.distributed.shard(model, mesh, llama.tp_rules)``: a model module names its own rules."""
    from candlejax.models import bert, llama

    assert llama.tp_rules is cj.distributed.llama_tp_rules
    assert bert.tp_rules is cj.distributed.bert_tp_rules
    cfg = llama.Config(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)  # fmt: skip
    model = llama.Llama.load(VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu), cfg)
    mesh = cj.distributed.mesh({"data": 1, "model": 1}, jax.devices()[:1])
    sharded = cj.distributed.shard(model, mesh, llama.tp_rules)
    q = cj.distributed.specs(sharded)["model.layers.0.self_attn.q_proj.weight"]
    assert q == jax.sharding.PartitionSpec("model", None)


def test_bad_mesh_and_rule_inputs_raise_sharding_errors():
    """Inputs JAX would reject with its own TypeError / AttributeError / DuplicateSpecError raise
    ShardingError naming what was wrong."""
    from candlejax.distributed import ShardingError

    d = jax.devices()
    with pytest.raises(ShardingError, match=r"devices\[0\] is 0 \(int\), not a device"):
        cj.distributed.mesh({"data": 1}, devices=[0])
    with pytest.raises(ShardingError, match=r"axes .*\(4,\).* a mapping"):
        cj.distributed.mesh((4,))  # type: ignore[arg-type]
    # a candlejax Device and a numpy array of devices (as jax.sharding.Mesh takes) are devices
    assert cj.distributed.mesh({"data": 1}, devices=[Device.Cpu]).devices.size == 1
    assert cj.distributed.mesh({"data": 1}, devices=np.array(d[:1]).reshape(1, 1)).devices.size == 1
    mesh = cj.distributed.mesh({"data": 1, "model": 1}, d[:1])
    model = Mlp(VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu))
    with pytest.raises(ShardingError, match=r"first\\\\\.weight.*entry 0 .*not a mesh axis"):
        cj.distributed.shard(model, mesh, {r"first\.weight": (0, None)})
    with pytest.raises(ShardingError, match=r"mesh axis 'model' for 2 dims of first\.weight"):
        cj.distributed.shard(model, mesh, {r"first\.weight": ("model", "model")})
    with pytest.raises(ShardingError, match=r"mesh axis 'data' for 2 dims of first\.weight"):
        cj.distributed.shard(model, mesh, lambda name, shape: ("data", ("model", "data")) if len(shape) == 2 else None)
    no_axis = r"mesh has no axis 'tensor' \(its axes are \{'data': 1, 'model': 1\}\), which sharding rule '.*' names"
    with pytest.raises(ShardingError, match=no_axis + r" for first\.weight"):
        cj.distributed.shard(model, mesh, {r"first\.weight": ("tensor", None)})
    for bad in (None, 3):
        with pytest.raises(ShardingError, match=f"unknown sharding rules {bad!r}"):
            cj.distributed.shard(model, mesh, bad)  # type: ignore[arg-type]
    x = Tensor.new(np.zeros((4, 2), np.float32))
    with pytest.raises(ShardingError, match=r"shard_batch: expected a jax.sharding.Mesh.*got NoneType"):
        cj.distributed.shard_batch(x, None)  # type: ignore[arg-type]
    with pytest.raises(ShardingError, match=r"replicate: expected a jax.sharding.Mesh.*got str"):
        cj.distributed.replicate(x, "data")  # type: ignore[arg-type]
    with pytest.raises(ShardingError, match=r"Batcher\(mesh=\): expected a jax.sharding.Mesh.*got str"):
        cj.data.Batcher((np.zeros((8, 2), np.float32),), batch_size=4, mesh="data")
    for n in (0, -1, 1.0):
        with pytest.raises(ShardingError, match=f"tensor parallel over {n!r} devices: give a positive number"):
            cj.distributed.tensor_parallel(model, n, "replicate")  # type: ignore[arg-type]
    with pytest.raises(ShardingError, match=r"shard_batch: a batch is a Tensor / array or a tuple of them, got dict"):
        cj.distributed.shard_batch({"x": x}, mesh)


@pytest.mark.parametrize("sharded", [False, True])
def test_bound_restore_sets_the_vars_without_copying_the_files_arrays(tmp_path, monkeypatch, sharded):
    """A bound restore sets each Var to the array fresh from the file (``Var.set(own=True)``): no
    second copy of every parameter (``owned_copy``), as ``checkpoint.restore`` and the mesh's restore."""
    import candlejax.nn.module as nn_module

    mesh = cj.distributed.mesh({"data": 1}, jax.devices()[:1])

    def fresh(seed):
        m = Mlp(VarBuilder.from_varmap(VarMap(seed=seed), DType.F32, Device.Cpu))
        m = cj.distributed.shard(m, mesh, "fsdp") if sharded else m
        return m, cj.optim.AdamW(list(m.named_vars().values()), cj.optim.ParamsAdamW(lr=1e-2))

    model, opt = fresh(0)
    path = tmp_path / "ck.safetensors"
    (cj.distributed.save if sharded else cj.checkpoint.save)(path, model, optimizer=opt, step=1)
    tmpl, opt2 = fresh(5)

    def no_copy(a, src):
        raise AssertionError("restore copied a parameter it had just read")

    monkeypatch.setattr(nn_module, "owned_copy", no_copy)
    (cj.distributed.restore if sharded else cj.checkpoint.restore)(path, tmpl, optimizer=opt2)
    np.testing.assert_array_equal(np.asarray(tmpl.first.weight), np.asarray(model.first.weight))


def test_to_host_gives_host_arrays_for_plain_tensors_and_vars():
    """``to_host`` promises host numpy arrays: a plain Tensor leaf keeps its numpy array (a pytree
    unflatten of a Tensor would move it back to the device), a Var keeps its kind and name."""
    from candlejax.nn import Var

    tree = {"t": Tensor([1.0, 2.0]), "v": Var.new([3.0, 4.0], name="v")}
    host = cj.distributed.to_host(tree)
    assert isinstance(host["t"], Tensor) and isinstance(host["t"].jax, np.ndarray)
    assert isinstance(host["v"], Var) and isinstance(host["v"].jax, np.ndarray) and host["v"].name == "v"
    np.testing.assert_array_equal(host["t"].jax, [1.0, 2.0])
    np.testing.assert_array_equal(host["v"].jax, [3.0, 4.0])
