"""cj.checkpoint: a run stopped and resumed from a checkpoint ends bit-identical; atomic saves."""

from __future__ import annotations

import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import candlejax as cj
import candlejax.optim as optim
from candlejax import Device, checkpoint
from candlejax import random as cj_random
from candlejax.data import Batcher
from candlejax.tensor._core import wrap

TOTAL = 17  # 5 batches per epoch: the stop at step 7 is mid-epoch


def _var(a, name):
    try:
        from candlejax.nn.module import Var
    except ImportError:
        return wrap(jnp.asarray(a))
    return Var(np.asarray(a), name)


def _data():
    r = np.random.default_rng(0)
    x = r.standard_normal((40, 6)).astype(np.float32)
    y = (x[:, :3].sum(1) > 0).astype(np.uint32)
    return x, y


def _init_model():
    r = np.random.default_rng(1)
    return {
        "first": {"weight": _var(r.standard_normal((6, 16)).astype(np.float32) * 0.3, "first.weight"),
                  "bias": _var(np.zeros(16, np.float32), "first.bias")},
        "second": {"weight": _var(r.standard_normal((16, 2)).astype(np.float32) * 0.3, "second.weight")},
        "table": wrap(jnp.arange(3, dtype=jnp.int32)),
    }  # fmt: skip


def loss_fn(m, x, y, key, noise):
    h = jax.nn.relu((x.jax + noise.jax) @ m["first"]["weight"].jax + m["first"]["bias"].jax)
    h = h * jax.random.bernoulli(key, 0.8, h.shape) / 0.8  # dropout from the device generator's key
    logits = h @ m["second"]["weight"].jax
    logp = jax.nn.log_softmax(logits)
    return wrap(-jnp.mean(jnp.take_along_axis(logp, y.jax[:, None].astype(jnp.int32), 1)))


def _train(tmp_path, stop_at=None, resume=False):
    Device.Cpu.set_seed(1234)
    aug = np.random.default_rng(99)
    model = _init_model()
    opt = optim.AdamW(optim.ParamsAdamW(lr=1e-2))
    state = opt.init(model)
    batcher = Batcher(_data(), batch_size=8, shuffle=True, seed=3)
    step, losses = 0, []
    path = tmp_path / "ckpt.safetensors"
    if resume:
        Device.Cpu.set_seed(555)  # a different generator state: restore must bring back the saved one
        aug = np.random.default_rng(0)
        ck = checkpoint.restore(path, model, optimizer=opt, batcher=batcher, numpy_rngs={"aug": aug})
        model, state, step, losses = ck.model, ck.opt_state, ck.step, ck.extra["losses"]
        assert ck.epoch == batcher.epoch == 1 and batcher.position == 2
    while step < TOTAL:
        for xb, yb in batcher:
            key = cj_random.next_key(Device.Cpu, "dropout")
            noise = wrap(jnp.asarray(aug.standard_normal(xb.shape).astype(np.float32) * 0.01))
            model, state, loss = opt.backward_step(loss_fn, model, state, xb, yb, key, noise)
            losses.append(float(np.asarray(loss)))
            step += 1
            if step == 5:
                opt.set_learning_rate(5e-3)
            if step == stop_at:
                checkpoint.save(path, model, state, step=step, epoch=batcher.epoch, batcher=batcher, optimizer=opt,
                                numpy_rngs={"aug": aug}, extra={"losses": losses})  # fmt: skip
                return None
            if step == TOTAL:
                break
    return model, state, losses, opt.learning_rate()


def _leaves(tree):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


def test_resume_is_bit_identical(tmp_path):
    model_a, state_a, losses_a, lr_a = _train(tmp_path)
    assert _train(tmp_path, stop_at=7) is None
    model_b, state_b, losses_b, lr_b = _train(tmp_path, resume=True)
    assert losses_a == losses_b and lr_a == lr_b == 5e-3
    for a, b in zip(_leaves(model_a), _leaves(model_b), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(state_a), _leaves(state_b), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(state_b.step) == TOTAL


def _bound_run(tmp_path, steps, save_at=None, resume=False):
    """Candle's form: a VarMap-built MLP trained by an AdamW bound to ``varmap.all_vars()``."""
    from candlejax import nn

    vm = nn.VarMap(seed=4)
    vb = nn.VarBuilder.from_varmap(vm, cj.DType.F32, Device.Cpu)
    model = nn.seq().add(nn.linear(6, 8, vb.pp("l1"))).add_fn(lambda t: t.relu()).add(nn.linear(8, 2, vb.pp("l2")))
    opt = optim.AdamW(vm.all_vars(), optim.ParamsAdamW(lr=optim.linear_schedule(0.05, 0.01, 10)))
    x, y = _data()
    x, y = cj.Tensor(x), cj.Tensor(y)

    def bound_loss(m, x, y):
        return cj.nn.loss.cross_entropy(m.forward(x), y)

    path, losses = tmp_path / "bound.safetensors", []
    if resume:
        checkpoint.restore(path, model, optimizer=opt)  # in place: the VarMap, the model and opt
        assert int(opt.state.step) == save_at
    for step in range(save_at if resume else 0, steps):
        losses.append(float(np.asarray(opt.backward_step(bound_loss, model, x, y))))
        if step + 1 == save_at and not resume:
            checkpoint.save(path, model, step=save_at, optimizer=opt)  # the bound state is the optimizer's
            return losses
    return losses, {n: np.asarray(v) for n, v in vm.data().items()}, _leaves(opt.state)


def test_bound_optimizer_resumes_in_place(tmp_path):
    """A run with Candle's bound optimizer (state inside the optimizer, Vars shared with the VarMap) resumes
    bit-identical: restore sets the template's Vars in place and the optimizer's moments and step count."""
    losses_a, vars_a, state_a = _bound_run(tmp_path, 8)
    first = _bound_run(tmp_path, 8, save_at=3)
    losses_b, vars_b, state_b = _bound_run(tmp_path, 8, save_at=3, resume=True)
    assert first + losses_b == losses_a
    for n in vars_a:
        np.testing.assert_array_equal(vars_a[n], vars_b[n])
    for a, b in zip(state_a, state_b, strict=True):
        np.testing.assert_array_equal(a, b)


def test_restore_keeps_names_kinds_and_metadata(tmp_path):
    model = _init_model()
    opt = optim.SGD(0.1)
    state = opt.init(model)
    p = tmp_path / "c.safetensors"
    checkpoint.save(p, model, state, step=3, epoch=1, extra={"note": "hi"})
    meta = checkpoint.read_metadata(p)
    assert meta["step"] == 3 and meta["extra"] == {"note": "hi"}
    ck = checkpoint.restore(p, _init_model(), state)
    assert type(ck.model["first"]["weight"]) is type(model["first"]["weight"])
    assert getattr(ck.model["first"]["weight"], "name", "first.weight") == "first.weight"
    assert ck.step == 3 and ck.epoch == 1 and int(ck.opt_state.step) == 0
    with cj.io.safetensors.MmapedSafetensors(p) as f:
        assert "model/first.weight" in f.names() and "model/table" in f.names()


def test_checkpoint_from_another_architecture_lists_names(tmp_path):
    p = tmp_path / "c.safetensors"
    checkpoint.save(p, _init_model())
    other = {
        "first": {"weight": _var(np.zeros((6, 16), np.float32), "first.weight")},
        "third": _var(np.zeros(2, np.float32), "third.weight"),
        "table": wrap(jnp.arange(3, dtype=jnp.int32)),
    }
    with pytest.raises(checkpoint.CheckpointError, match=r"missing: \['third.weight'\].*unexpected: \['first.bias'"):
        checkpoint.restore(p, other)
    wrong = _init_model()
    wrong["second"]["weight"] = _var(np.zeros((16, 3), np.float32), "second.weight")
    with pytest.raises(checkpoint.CheckpointError, match=r"second.weight has shape \[16, 2\], the model expects"):
        checkpoint.restore(p, wrong)
    with pytest.raises(checkpoint.CheckpointError, match="no optimizer state"):
        checkpoint.restore(p, _init_model(), optimizer=optim.SGD(0.1))
    cj.io.safetensors.save({"a": wrap(jnp.ones(2))}, tmp_path / "plain.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match="not a candlejax checkpoint"):
        checkpoint.restore(tmp_path / "plain.safetensors", _init_model())


def test_interrupted_save_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    p = tmp_path / "c.safetensors"
    checkpoint.save(p, _init_model(), step=1)
    before = p.read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cj.io.safetensors, "_host_bytes", boom)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(p, _init_model(), step=2)
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.safetensors"]  # no temporary file left behind
    assert checkpoint.read_metadata(p)["step"] == 1


def test_python_and_numpy_scalar_leaves_read_back_without_x64(tmp_path):
    """A Python float leaf was written as F64 and a numpy int64 one as I64: restore always failed without x64."""
    p = tmp_path / "s.safetensors"
    model = {**_init_model(), "scale": 0.1 + 0.2, "n": 7, "flag": True, "count": np.int64(2**40),
             "ids": np.arange(3, dtype=np.int64)}  # fmt: skip
    checkpoint.save(p, model, step=2)
    ck = checkpoint.restore(p, {**_init_model(), "scale": 0.0, "n": 0, "flag": False, "count": np.int64(0),
                                "ids": np.zeros(3, np.int64)})  # fmt: skip
    assert ck.model["scale"] == 0.1 + 0.2 and type(ck.model["scale"]) is float
    assert ck.model["n"] == 7 and ck.model["flag"] is True
    assert ck.model["count"] == 2**40 and ck.model["count"].dtype == np.int64
    assert ck.model["ids"].dtype == np.int64 and ck.model["ids"].tolist() == [0, 1, 2]
    with pytest.raises(checkpoint.CheckpointError, match=r"s\.safetensors: n is the int 7, the template holds the b"):
        checkpoint.restore(p, {**model, "n": False})


def test_prng_key_leaf_of_the_model_round_trips(tmp_path):
    """A typed PRNG key among the model's leaves was saved as its key data but restore compared that
    data's shape with the key's (``x has shape [2], the model expects []``); optimizer-state keys were
    already rewrapped."""
    p = tmp_path / "k.safetensors"
    key = jax.random.split(jax.random.key(3), 4)
    checkpoint.save(p, {**_init_model(), "key": key}, step=1)
    ck = checkpoint.restore(p, {**_init_model(), "key": jax.random.split(jax.random.key(0), 4)})
    assert jax.dtypes.issubdtype(ck.model["key"].dtype, jax.dtypes.prng_key)
    assert jax.random.key_impl(ck.model["key"]) == jax.random.key_impl(key)
    np.testing.assert_array_equal(jax.random.key_data(ck.model["key"]), jax.random.key_data(key))
    with pytest.raises(checkpoint.CheckpointError, match=r"key has shape \[4, 2\], the model expects \[3, 2\]"):
        checkpoint.restore(p, {**_init_model(), "key": jax.random.split(jax.random.key(0), 3)})


def _with_metadata(p, change) -> None:
    raw = p.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    h = json.loads(raw[8 : 8 + n])
    h["__metadata__"]["candlejax.checkpoint"] = change(json.loads(h["__metadata__"]["candlejax.checkpoint"]))
    b = json.dumps(h).encode()
    b += b" " * (-len(b) % 8)
    p.write_bytes(struct.pack("<Q", len(b)) + b + raw[8 + n :])


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda m: "{not json", "metadata is not valid JSON"),
        (lambda m: json.dumps([1, 2]), "metadata is a list, not an object"),
        (lambda m: json.dumps({"format": checkpoint.FORMAT}), "metadata 'step' must be an integer, got None"),
        (lambda m: json.dumps({**m, "random": {"cpu:x": [1, 2]}}), "metadata 'random' must be an object"),
        (lambda m: json.dumps({**m, "random": {"cpu:0": [1]}}), "metadata 'random' must be an object"),
        (lambda m: json.dumps({**m, "opt_leaves": "3"}), "'opt_leaves' must be a non-negative integer or null"),
        (lambda m: json.dumps({**m, "opt_leaves": m["opt_leaves"] + 1}), "the optimizer state has"),
    ],
)
def test_corrupt_metadata_is_a_checkpoint_error(tmp_path, change, match):
    p = tmp_path / "c.safetensors"
    model = _init_model()
    opt = optim.SGD(0.1)
    state = opt.init(model)
    checkpoint.save(p, model, state)
    _with_metadata(p, change)
    with pytest.raises(checkpoint.CheckpointError, match=match):
        checkpoint.restore(p, _init_model(), state)


def test_missing_optimizer_leaf_is_named(tmp_path):
    p = tmp_path / "c.safetensors"
    model = _init_model()
    state = optim.SGD(0.1).init(model)
    checkpoint.save(p, model, state)
    with cj.io.safetensors.MmapedSafetensors(p) as f:
        kept = {n: f.get(n).numpy() for n in f.names() if n != "optim/0"}
        md = f.metadata()
    cj.io.safetensors.save(kept, p, md)
    with pytest.raises(checkpoint.CheckpointError, match=r"optimizer state leaf 0 \(optim/0\) is missing"):
        checkpoint.restore(p, _init_model(), state)


def test_save_inside_jit_raises_a_named_error(tmp_path):
    """Saving reads the values on the host: under jax.jit it raises TracingError (was JAX's
    ConcretizationTypeError from is_deleted() on a tracer)."""
    model = _init_model()
    with pytest.raises(cj.errors.TracingError, match=r"first\.(weight|bias)' is traced.*save them outside"):
        jax.jit(lambda m: checkpoint.save(str(tmp_path / "c.safetensors"), m, None))(model)


def test_streaming_batcher_has_no_position_to_save(tmp_path):
    """Candle's streaming Batcher (Batcher.new2(it)) is a one-pass iterator with no position; save and
    restore name that instead of an AttributeError from inside the checkpoint code."""
    x, y = _data()
    stream = Batcher.new2(iter([(x[i], y[i]) for i in range(8)])).batch_size(4)
    p = tmp_path / "c.safetensors"
    with pytest.raises(checkpoint.CheckpointError, match=r"batcher=.*IterBatcher.*no position"):
        checkpoint.save(p, _init_model(), batcher=stream)
    checkpoint.save(p, _init_model(), batcher=Batcher((x, y), 4))
    with pytest.raises(checkpoint.CheckpointError, match=r"batcher=.*IterBatcher.*no position"):
        checkpoint.restore(p, _init_model(), batcher=stream)


@pytest.mark.parametrize("bits", [np.random.PCG64, np.random.MT19937, np.random.Philox, np.random.SFC64])
def test_every_numpy_bit_generator_resumes(tmp_path, bits):
    """MT19937 / Philox / SFC64 states hold numpy arrays: save failed ("extra values must be
    JSON-serialisable"); a legacy RandomState raised AttributeError."""
    p = tmp_path / "c.safetensors"
    g, legacy = np.random.Generator(bits(5)), np.random.RandomState(5)
    g.random(3), legacy.rand(3)
    checkpoint.save(p, _init_model(), numpy_rngs={"g": g, "legacy": legacy})
    want, want_legacy = g.random(4), legacy.rand(4)
    g2, legacy2 = np.random.Generator(bits(0)), np.random.RandomState(0)
    checkpoint.restore(p, _init_model(), numpy_rngs={"g": g2, "legacy": legacy2})
    np.testing.assert_array_equal(g2.random(4), want)
    np.testing.assert_array_equal(legacy2.rand(4), want_legacy)
    wrong = np.random.Generator(np.random.PCG64DXSM(0))
    with pytest.raises(checkpoint.CheckpointError, match=rf"numpy generator 'g' is a {bits.__name__}.*PCG64DXSM"):
        checkpoint.restore(p, _init_model(), numpy_rngs={"g": wrong})
    with pytest.raises(checkpoint.CheckpointError, match=r"numpy_rngs\['g'\] must be a numpy.random.Generator"):
        checkpoint.save(p, _init_model(), numpy_rngs={"g": 3})
