"""Vars as shared handles (Candle's ``Var``): VarMap, Modules and bound optimizers see the same values.

Also: the functional and bound training paths give bit-identical trajectories, the model passed to a
functional step raises ``DonatedVar`` on any use, and every trap of the Candle idiom raises a
candlejax error naming the fix.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import candlejax as cj
from candlejax import Device, DType, Tensor, errors
from candlejax.nn import Module, Var, VarBuilder, VarMap, linear
from candlejax.optim import SGD, AdamW, ParamsAdamW


class Mlp(Module):
    def __init__(self, vb):
        self.ln1 = linear(16, 8, vb.pp("ln1"))
        self.ln2 = linear(8, 3, vb.pp("ln2"))

    def forward(self, xs):
        return self.ln2.forward(self.ln1.forward(xs).relu())


def loss_fn(model, x, y):
    return cj.nn.loss.cross_entropy(model.forward(x), y)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    xs = [Tensor.new(rng.standard_normal((32, 16)).astype(np.float32)) for _ in range(4)]
    ys = [Tensor.new(rng.integers(0, 3, 32).astype(np.uint32)) for _ in range(4)]
    return list(zip(xs, ys))


def build(seed=0):
    varmap = VarMap(seed=seed)
    vs = VarBuilder.from_varmap(varmap, DType.F32, Device.Cpu)
    return varmap, Mlp(vs)


def values(model):
    return {k: np.asarray(v.jax) for k, v in model.named_vars().items()}


# --- sharing ---------------------------------------------------------------------------------
def test_varmap_and_model_share_var_handles():
    varmap, model = build()
    assert model.ln1.weight is varmap.data()["ln1.weight"]
    assert {id(v) for v in varmap.all_vars()} == {id(v) for v in model.all_vars()}
    varmap.set_one("ln1.bias", np.full(8, 2.0, np.float32))
    assert np.asarray(model.ln1.bias.jax).tolist() == [2.0] * 8


def test_varmap_load_after_building_updates_the_model(tmp_path, data):
    src_map, src = build(seed=1)
    src_map.save(tmp_path / "start.safetensors")
    varmap, model = build(seed=0)
    x = data[0][0]
    before = np.asarray(model.forward(x).jax)
    varmap.load(tmp_path / "start.safetensors")  # Candle's order: build, then load
    after = np.asarray(model.forward(x).jax)
    np.testing.assert_array_equal(after, np.asarray(src.forward(x).jax))
    assert not np.array_equal(before, after)


def test_varmap_save_after_bound_training_writes_trained_weights(tmp_path, data):
    varmap, model = build()
    init = values(model)
    opt = AdamW(varmap.all_vars(), ParamsAdamW(lr=1e-2))
    for x, y in data:
        loss = opt.backward_step(loss_fn, model, x, y)
    assert isinstance(loss, Tensor) and loss.shape == ()
    varmap.save(tmp_path / "trained.safetensors")
    saved = cj.safetensors.load(str(tmp_path / "trained.safetensors"))
    for k, v in values(model).items():
        np.testing.assert_array_equal(np.asarray(saved[k].jax), v)
        assert not np.array_equal(v, init[k])  # trained, not the initial values


@pytest.mark.parametrize("which", ["sgd", "adamw"])
def test_functional_and_bound_trajectories_are_bit_identical(which, data):
    def make(vars=None):
        args = () if vars is None else (vars,)
        return SGD(*args, 0.05) if which == "sgd" else AdamW(*args, ParamsAdamW(lr=1e-2))

    _, fmodel = build()
    fopt = make()
    state = fopt.init(fmodel)
    varmap, bmodel = build()
    bopt = make(varmap.all_vars())
    traces = []

    def lf(m, x, y):
        traces.append(1)
        return loss_fn(m, x, y)

    for i in range(20):
        x, y = data[i % len(data)]
        fmodel, state, floss = fopt.backward_step(lf, fmodel, state, x, y)
        bloss = bopt.backward_step(lf, bmodel, x, y)
        assert float(floss.to_scalar()) == float(bloss.to_scalar())
    for k, v in values(fmodel).items():
        np.testing.assert_array_equal(values(bmodel)[k], v)
    # one trace per (optimizer, donation mode): no recompilation per step
    assert len(traces) == 2
    assert int(bopt.state.step) == 20


def test_bound_step_does_not_recompile(data):
    varmap, model = build()
    opt = SGD(varmap.all_vars(), 0.1)
    for x, y in data * 3:
        opt.backward_step(loss_fn, model, x, y)
    (fn,) = opt._compiled.values()
    assert fn._cache_size() == 1


def test_bound_optimizer_trains_only_its_vars(data):
    varmap, model = build()
    head = [varmap.data()["ln2.weight"], varmap.data()["ln2.bias"]]
    frozen = np.asarray(model.ln1.weight.jax).copy()
    opt = SGD(head, 0.1)  # Candle: SGD::new(vec![...head vars], lr) fine-tunes the head only
    x, y = data[0]
    w2 = np.asarray(model.ln2.weight.jax).copy()
    opt.backward_step(loss_fn, model, x, y)
    np.testing.assert_array_equal(np.asarray(model.ln1.weight.jax), frozen)
    assert not np.array_equal(np.asarray(model.ln2.weight.jax), w2)


def test_bound_step_apply_grads(data):
    varmap, model = build()
    opt = SGD(varmap.all_vars(), 0.5)
    x, y = data[0]
    grads = cj.grad(loss_fn)(model, x, y)
    w = np.asarray(model.ln1.weight.jax).copy()
    opt.step(grads)  # Candle's opt.step(&grads)
    np.testing.assert_allclose(
        np.asarray(model.ln1.weight.jax), w - 0.5 * np.asarray(grads.ln1.weight.jax), rtol=1e-6, atol=1e-7
    )


# --- the model passed to a functional step -----------------------------------------------------
def test_model_passed_to_a_donating_functional_step_raises_on_any_use(data):
    _, model = build()
    opt = SGD(0.1)
    state = opt.init(model)
    x, y = data[0]
    new_model, state, _ = opt.backward_step(loss_fn, model, state, x, y)
    with pytest.raises(errors.DonatedVar, match=r"ln.*donated to a functional optimizer step"):
        model.forward(x)  # eager use
    with pytest.raises(errors.DonatedVar):
        jax.jit(lambda m, x: m(x).jax)(model, x.jax)  # traced use
    with pytest.raises(errors.DonatedVar):
        model.save_safetensors("/nonexistent/never-written.safetensors")
    with pytest.raises(errors.DonatedVar):
        opt.backward_step(loss_fn, model, state, x, y)
    assert "donated" in repr(model)  # printing still works
    new_model.forward(x)  # the returned model is fine


def test_model_passed_to_a_non_donating_functional_step_stays_usable(data):
    _, model = build()
    opt = SGD(0.1, donate=False)
    state = opt.init(model)
    x, y = data[0]
    before = np.asarray(model.forward(x).jax)
    new_model, state, _ = opt.backward_step(loss_fn, model, state, x, y)
    np.testing.assert_array_equal(np.asarray(model.forward(x).jax), before)
    assert not np.array_equal(np.asarray(new_model.forward(x).jax), before)


def test_functional_step_is_pure_under_jit_grad_vmap(data):
    _, model = build()
    opt = SGD(0.1)
    x, y = data[0]

    @jax.jit
    def two_steps(model, x, y):
        state = opt.init(model)
        model, state, _ = opt.backward_step(loss_fn, model, state, x, y)
        model, state, loss = opt.backward_step(loss_fn, model, state, x, y)
        return model, loss.jax

    m2, loss = two_steps(model, x, y)
    model.forward(x)  # not donated, not mutated: jit inputs are not consumed
    assert np.isfinite(float(loss))
    assert not np.array_equal(np.asarray(m2.ln1.weight.jax), np.asarray(model.ln1.weight.jax))

    # under vmap: an ensemble of two models trained in one program
    ens = jax.tree_util.tree_map(lambda a: jnp.stack([a, a * 0.5]), model)

    def one(m):
        s = opt.init(m)
        m, s, loss = opt.backward_step(loss_fn, m, s, x, y)
        return loss.jax

    losses = jax.vmap(one)(ens)
    assert losses.shape == (2,)
    # under grad: differentiate through one step (meta-learning style)
    g = jax.grad(lambda m: one(m))(model)
    assert np.isfinite(np.asarray(g.ln1.weight.jax)).all()


# --- Var creation and narrowing ----------------------------------------------------------------
def test_var_constructors_return_vars():
    made = [
        Var.randn(0.0, 1.0, (2, 3), Device.Cpu),
        Var.rand(0.0, 1.0, (2, 3), Device.Cpu),
        Var.from_vec([1.0, 2.0, 3.0, 4.0], (2, 2), Device.Cpu),
        Var.from_slice([1.0, 2.0], (2,), Device.Cpu),
        Var.zeros((2,), DType.F32, Device.Cpu),
        Var.ones((2,), DType.F32, Device.Cpu),
        Var.new([1.0, 2.0], Device.Cpu),
        Var.full(1.5, (2,), Device.Cpu),
        Var.arange(0.0, 3.0, Device.Cpu),
        Var.from_tensor(Tensor.new([1.0])),
        Var.ones((2,)).zeros_like(),
    ]
    for v in made:
        assert type(v) is Var, v
    # such a Var is trained by a bound optimizer
    w = Var.randn(0.0, 1.0, (3,), Device.Cpu)
    before = np.asarray(w.jax).copy()
    SGD([w], 0.1).backward_step(lambda m: (m * m).sum_all(), w)
    np.testing.assert_allclose(np.asarray(w.jax), before * 0.8, rtol=1e-6)


def test_as_array_never_narrows_silently():
    with pytest.raises(errors.UnsupportedDTypeForOp, match="enable_x64"):
        Var(np.array([2**40]))
    with pytest.raises(errors.UnsupportedDTypeForOp, match="astype"):
        Var(np.zeros(3))  # numpy float64
    with pytest.raises(errors.UnsupportedDTypeForOp, match="does not fit in 32 bits"):
        Var([2**40])
    assert Var([1.0, 2.0]).dtype == DType.F32  # Python floats: F32 (Candle's default)
    assert Var(np.array([2**20], np.int32)).jax.tolist() == [2**20]


# --- traps with a candlejax error naming the fix -------------------------------------------------
def test_jax_transformed_layer_as_attribute_raises():
    vb = VarBuilder.from_varmap(VarMap(), DType.F32, Device.Cpu)

    class Bad(Module):
        def __init__(self, vb, transform):
            self.layer = transform(linear(4, 4, vb.pp("l")))

    for transform in (jax.vmap, jax.jit, jax.grad, lambda m: jax.vmap(jax.jit(m))):
        with pytest.raises(errors.TransformedModuleAttribute, match=r"jax.vmap\(self.layer\)"):
            Bad(vb, transform)

    class AlsoBad(Module):
        def __init__(self, vb):
            self.layers = [jax.vmap(linear(4, 4, vb.pp("l")))]

    with pytest.raises(errors.TransformedModuleAttribute):
        AlsoBad(vb)

    class Fine(Module):  # plain functions and the layer itself are fine
        def __init__(self, vb):
            self.act = jax.nn.relu
            self.layer = linear(4, 4, vb.pp("l"))

        def forward(self, x):
            return jax.vmap(self.layer)(x)

    assert sorted(Fine(vb).named_vars()) == ["l.bias", "l.weight"]


def test_backward_step_with_a_loss_value_raises():
    varmap, model = build()
    opt = SGD(varmap.all_vars(), 0.1)
    x = Tensor.new(np.ones((2, 16), np.float32))
    loss = model.forward(x).sum_all()
    with pytest.raises(errors.OptimizerUsage, match=r"loss \*function\*.*def loss_fn"):
        opt.backward_step(loss)
    with pytest.raises(errors.OptimizerUsage, match="model to differentiate is missing"):
        opt.backward_step(loss_fn)
    with pytest.raises(errors.OptimizerUsage, match="built without Vars"):
        SGD(0.1).backward_step(loss_fn, model, x, Tensor.new(np.zeros(2, np.uint32)))


def test_candle_constructors_and_their_mistakes():
    varmap, _ = build()
    assert len(SGD(varmap.all_vars(), 0.1).vars) == 4
    assert len(SGD.new(varmap.all_vars(), 0.1).vars) == 4
    assert len(AdamW(varmap.all_vars(), ParamsAdamW(lr=1e-3)).vars) == 4
    assert len(AdamW.new(varmap.all_vars(), ParamsAdamW()).vars) == 4
    assert AdamW.new_lr(varmap.all_vars(), 0.01).params().lr == 0.01
    assert AdamW.new_lr(0.01).vars == ()
    with pytest.raises(errors.OptimizerUsage, match="empty list of Vars; build the model from the VarMap first"):
        SGD(VarMap().all_vars(), 0.1)
    with pytest.raises(errors.OptimizerUsage, match="not a Var"):
        SGD([Tensor.new([1.0])], 0.1)
    with pytest.raises(errors.InvalidArgument, match="learning rate is missing"):
        SGD(varmap.all_vars())


def test_bound_optimizer_refuses_a_model_with_other_vars(data):
    varmap, _ = build()
    _, other = build()
    opt = SGD(varmap.all_vars(), 0.1)
    x, y = data[0]
    with pytest.raises(errors.OptimizerUsage, match="none of the model's Vars"):
        opt.backward_step(loss_fn, other, x, y)


def test_bound_step_inside_jit_raises(data):
    varmap, model = build()
    opt = SGD(varmap.all_vars(), 0.1)
    x, y = data[0]
    with pytest.raises(errors.TracingError, match="functional form"):
        jax.jit(lambda x: opt.backward_step(loss_fn, model, wrap_t(x), y).jax)(x.jax)


def wrap_t(a):
    return Tensor.from_jax(a)


def test_fresh_lambda_per_step_warns_once_and_the_cache_is_bounded(data):
    from candlejax.optim import _optimizer

    varmap, model = build()
    opt = SGD(varmap.all_vars(), 0.1)
    x, y = data[0]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(_optimizer.MAX_COMPILED + 3):
            opt.backward_step(lambda m, x, y: loss_fn(m, x, y), model, x, y)
    recompile = [r for r in w if issubclass(r.category, errors.RecompileWarning)]
    assert len(recompile) == 1 and "outside the training loop" in str(recompile[0].message)
    assert recompile[0].filename == __file__  # points at the training loop's line, not candlejax's
    assert len(opt._compiled) == _optimizer.MAX_COMPILED
    adam = AdamW(ParamsAdamW())  # the functional form warns at the user's line too
    state = adam.init(model)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(2):
            model, state, _ = adam.backward_step(lambda m, x, y: loss_fn(m, x, y), model, state, x, y)
    recompile = [r for r in w if issubclass(r.category, errors.RecompileWarning)]
    assert len(recompile) == 1 and recompile[0].filename == __file__


def test_set_with_a_tracer_on_an_outside_var_raises():
    v = Var(np.ones(2, np.float32), "w")
    with pytest.raises(errors.TracingError, match="leak"):
        jax.jit(lambda a: v.set(a).jax)(jnp.zeros(2))
    assert np.asarray(v.jax).tolist() == [1.0, 1.0]


def test_printing_a_grad_tree_with_non_var_leaves():
    class WithTable(Module):
        def __init__(self, vb):
            self.l = linear(3, 2, vb.pp("l"))
            self.table = Tensor.new(np.ones(3, np.float32))

        def forward(self, x):
            return self.l(x * self.table)

    m = WithTable(VarBuilder.from_varmap(VarMap(), DType.F32, Device.Cpu))
    g = cj.grad(lambda m, x: m(x).sum_all())(m, Tensor.new(np.ones((2, 3), np.float32)))
    text = repr(g)
    assert "l.weight" in text and g.table is None
    assert str(g.table) == "None"


def test_conv_config_none_is_candles_default():
    from candlejax.nn import Conv2d, Conv2dConfig, conv1d, conv2d, conv_transpose2d

    vb = VarBuilder.from_varmap(VarMap(), DType.F32, Device.Cpu)
    c = conv2d(1, 32, 5, None, vb.pp("c1"))  # Candle: conv2d(1, 32, 5, Default::default(), vs)
    assert c.config == Conv2dConfig()
    assert c.forward(Tensor.zeros((2, 1, 28, 28), DType.F32)).shape == (2, 32, 24, 24)
    assert conv1d(2, 4, 3, None, vb.pp("c0")).config.groups == 1
    assert conv_transpose2d(2, 4, 3, None, vb.pp("t")).config.groups == 1
    assert Conv2d(c.weight, c.bias, None).config == Conv2dConfig()


def test_facade_frames_are_hidden_from_tracebacks():
    varmap, model = build()
    opt = SGD(varmap.all_vars(), 0.1)
    x = Tensor.new(np.ones((2, 16), np.float32))
    with pytest.raises(errors.OptimizerUsage) as info:
        opt.backward_step(model.forward(x).sum_all())
    shown = info.traceback.filter(info)  # what pytest (and IPython) print: __tracebackhide__ frames dropped
    assert all("candlejax/optim" not in str(e.path) for e in shown)
    assert any("candlejax/optim" in str(e.path) for e in info.traceback)  # the frames exist, only hidden
    with pytest.raises(errors.OptimizerUsage) as info:
        AdamW([], ParamsAdamW())
    assert all("candlejax/optim" not in str(e.path) for e in info.traceback.filter(info))


def test_varmap_shared_with_a_functionally_trained_model(tmp_path, data):
    varmap, model = build()
    opt = SGD(0.1)
    state = opt.init(model)
    x, y = data[0]
    model, state, _ = opt.backward_step(loss_fn, model, state, x, y)
    with pytest.raises(errors.DonatedVar, match=r"varmap\.all_vars"):
        varmap.save(tmp_path / "stale.safetensors")  # the map's Vars went into the step
    assert not (tmp_path / "stale.safetensors").exists()
    varmap.set(model.named_vars())  # copy the trained values back: the map is usable again
    varmap.save(tmp_path / "trained.safetensors")
    saved = cj.safetensors.load(str(tmp_path / "trained.safetensors"))
    for k, v in values(model).items():
        np.testing.assert_array_equal(np.asarray(saved[k].jax), v)


def test_typed_errors_are_msg_subclasses():
    for cls in (errors.InvalidArgument, errors.InvalidShape, errors.InvalidDevice, errors.OptimizerUsage,
                errors.VarMapError, errors.StateDictMismatch, errors.DonatedVar, errors.TransformedModuleAttribute):
        assert issubclass(cls, errors.Msg) and issubclass(cls, cj.Error)
    with pytest.raises(errors.InvalidShape, match="at most one hole"):
        Tensor.zeros((2, 6)).reshape(((), ()))
    with pytest.raises(errors.InvalidDevice):
        Device.coerce("tpu")
    with pytest.raises(errors.VarMapError, match="cannot find nope"):
        VarMap().set_one("nope", np.ones(1, np.float32))
    _, model = build()
    with pytest.raises(errors.StateDictMismatch, match="missing"):
        model.load_state_dict({})


def test_bound_step_check_finite_keeps_the_vars(data):
    varmap, model = build()
    opt = AdamW(varmap.all_vars(), ParamsAdamW(lr=1e-2), check_finite=True)
    x, y = data[0]
    opt.backward_step(loss_fn, model, x, y)
    before = values(model)
    with pytest.raises(cj.optim.NanLoss, match="step 2"):
        opt.backward_step(lambda m, x, y: loss_fn(m, x, y) * float("nan"), model, x, y)
    for k, v in values(model).items():
        np.testing.assert_array_equal(v, before[k])
    assert int(opt.state.step) == 1
    opt.backward_step(loss_fn, model, x, y)  # and training goes on
    assert int(opt.state.step) == 2


def test_jitted_forward_sees_bound_updates_without_retracing(data):
    varmap, model = build()
    opt = SGD(varmap.all_vars(), 0.5)
    traces = []

    @cj.jit
    def fwd(m, x):
        traces.append(1)
        return m(x)

    x, y = data[0]
    y1 = np.asarray(fwd(model, x).jax)
    opt.backward_step(loss_fn, model, x, y)
    y2 = np.asarray(fwd(model, x).jax)
    assert len(traces) == 1  # the weights are arguments, never baked-in constants
    assert not np.array_equal(y1, y2)
    np.testing.assert_allclose(y2, np.asarray(model.forward(x).jax), rtol=1e-5, atol=1e-6)


def test_var_from_tensor_copies_so_donation_keeps_the_source():
    t = Tensor.new([1.0, 2.0, 3.0])
    v = Var.from_tensor(t, "w")
    SGD([v], 0.1).backward_step(lambda m: (m * m).sum_all(), v)
    assert t.to_vec1() == [1.0, 2.0, 3.0]  # the source Tensor is untouched and alive
    np.testing.assert_allclose(np.asarray(v.jax), [0.8, 1.6, 2.4], rtol=1e-6)


def test_as_tensor_snapshot_after_a_bound_step_raises_a_named_error(data):
    varmap, model = build()
    opt = SGD(varmap.all_vars(), 0.1)
    snap = model.ln1.weight.as_tensor()
    kept = snap.copy()
    x, y = data[0]
    opt.backward_step(loss_fn, model, x, y)
    with pytest.raises(errors.DeletedBuffer, match="use the Var itself"):
        cj.nn.Linear(snap, None).forward(x)
    assert cj.nn.Linear(kept, None).forward(x).shape == (32, 8)


class ConvBnNet(cj.nn.ModuleT):
    def __init__(self, vb):
        self.conv = cj.nn.conv2d(3, 4, 3, None, vb.pp("c"))
        self.bn = cj.nn.batch_norm(4, cj.nn.BatchNormConfig(), vb.pp("bn"))
        self.fc = linear(4, 2, vb.pp("fc"))

    def forward_t(self, xs, train):
        return self.fc.forward(self.bn.forward_t(self.conv.forward(xs), train).relu().mean((2, 3)))


def bn_loss_fn(model, x, y):
    return cj.nn.loss.cross_entropy(model.forward_t(x, True), y)


@pytest.mark.parametrize("form", ["functional", "bound"])
def test_backward_step_updates_batch_norm_running_stats_as_candle(form):
    """Candle's ``forward_t(xs, true)`` inside ``opt.backward_step`` moves BatchNorm's running
    statistics; the compiled step returns them (bound: into the VarMap's Buffers), as eagerly."""
    rng = np.random.default_rng(0)
    batches = [(Tensor.new(rng.standard_normal((4, 3, 6, 6)).astype(np.float32) + 2),
                Tensor.new(np.array([0, 1, 1, 0], np.uint32))) for _ in range(2)]  # fmt: skip
    varmap = VarMap(seed=0)
    eager = ConvBnNet(VarBuilder.from_varmap(varmap, DType.F32, Device.Cpu))
    opt = SGD(0.1, donate=False)
    state = opt.init(eager)
    want = []
    for x, y in batches:  # eagerly, the loss's forward_t(x, True) moves the statistics in place
        _, g = cj.value_and_grad(bn_loss_fn)(eager, x, y)
        want.append((np.asarray(eager.bn.running_mean.jax).copy(), np.asarray(eager.bn.running_var.jax).copy()))
        eager, state = opt.step(eager, state, g)
    opt = SGD(0.1)
    varmap = VarMap(seed=0)
    model = ConvBnNet(VarBuilder.from_varmap(varmap, DType.F32, Device.Cpu))
    if form == "bound":
        opt = SGD(varmap.all_vars(), 0.1)
    state = opt.init(model) if form == "functional" else None
    for (x, y), (rm, rv) in zip(batches, want):
        if form == "functional":
            model, state, _ = opt.backward_step(bn_loss_fn, model, state, x, y)
        else:
            opt.backward_step(bn_loss_fn, model, x, y)
        np.testing.assert_allclose(np.asarray(model.bn.running_mean.jax), rm, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(model.bn.running_var.jax), rv, rtol=1e-5, atol=1e-6)
    assert np.abs(rm).max() > 0.1  # the statistics really moved
    if form == "bound":
        assert varmap.data()["bn.running_mean"] is model.bn.running_mean
