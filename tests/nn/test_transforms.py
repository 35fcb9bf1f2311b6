"""cj.jit / cj.grad / cj.value_and_grad over Modules: weights are arguments, only Vars are trained."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from candlejax import Tensor
from candlejax.errors import LostUpdateWarning
from candlejax.nn import BatchNormConfig, Buffer, Module, Var, VarBuilder, VarMap, batch_norm, linear
from candlejax.tensor._core import wrap
from candlejax.transforms import apply_updates, combine, grad, jit, partition, trainable, value_and_grad


class Net(Module):
    def __init__(self, vb):
        self.fc = linear(3, 2, vb.pp("fc"))
        self.offset = Buffer(jnp.ones(2), "offset")
        self.act = "relu"

    def forward(self, x):
        return wrap(jax.nn.relu(self.fc(x)._a) + self.offset._a)


@pytest.fixture(scope="module")
def net():
    return Net(VarBuilder.from_varmap(VarMap(seed=3)))


def test_changed_weights_reuse_the_compiled_function(net):
    traces = []

    @jit
    def f(m, x):
        traces.append(1)
        return m(x)

    x = jnp.ones((4, 3))
    y1 = f(net, x)
    net2 = net.replace(fc=net.fc.replace(weight=net.fc.weight.set(net.fc.weight._a * 2 + 1)))
    y2 = f(net2, x)
    assert len(traces) == 1 and f._cache_size() == 1
    assert not np.allclose(np.asarray(y1._a), np.asarray(y2._a))
    np.testing.assert_allclose(np.asarray(y2._a), np.asarray(net2(x)._a), atol=1e-6)


def test_jit_static_leaves_and_methods(net):
    traces = []

    @jit
    def f(x, cfg):
        traces.append(1)
        return x * cfg["scale"] if cfg["mode"] == "mul" else x

    x = jnp.ones(2)
    assert float(f(x, {"scale": 3.0, "mode": "mul"})[0]) == 3.0
    f(x + 1, {"scale": 3.0, "mode": "mul"})
    assert len(traces) == 1
    f(x, {"scale": 4.0, "mode": "mul"})  # a Python float is static: new trace
    assert len(traces) == 2

    class WithMethod(Module):
        def __init__(self):
            self.w = Var(jnp.ones(2), "w")

        @jit
        def forward(self, x):
            return wrap(self.w._a * x)

    m = WithMethod()
    assert float(m(jnp.ones(2) * 2)._a[0]) == 2.0
    m2 = m.replace(w=m.w.set(jnp.ones(2) * 5))
    assert float(m2(jnp.ones(2) * 2)._a[0]) == 10.0  # self is traced: no stale weights


def test_grad_only_vars_and_aux(net):
    x = jnp.ones((4, 3))

    def loss(m, x):
        out = m(x)
        return jnp.sum(out._a ** 2), out.shape

    (val, aux), g = value_and_grad(loss, has_aux=True)(net, x)
    assert aux == (4, 2) and val.shape == ()
    assert isinstance(g.fc.weight, Var) and g.fc.weight.name == "fc.weight"
    assert g.offset is None  # Buffers get no gradient (None, not a Tensor wrapping None)
    g2, _ = grad(loss, has_aux=True)(net, x)
    np.testing.assert_array_equal(np.asarray(g2.fc.bias._a), np.asarray(g.fc.bias._a))
    # under jit too
    gj = jit(grad(lambda m, x: jnp.sum(m(x)._a ** 2)))(net, x)
    np.testing.assert_allclose(np.asarray(gj.fc.weight._a), np.asarray(g.fc.weight._a), atol=1e-5)


def test_partition_combine_apply_updates(net):
    vars_, rest = partition(net)
    assert jax.tree_util.tree_structure(combine(vars_, rest)) == jax.tree_util.tree_structure(net)
    t = trainable(net)
    assert len(jax.tree_util.tree_leaves(t)) == 2
    upd = jax.tree_util.tree_map(jnp.ones_like, t)
    new = apply_updates(net, upd)
    np.testing.assert_allclose(np.asarray(new.fc.bias._a), np.asarray(net.fc.bias._a) + 1)
    np.testing.assert_allclose(np.asarray(new.offset._a), 1.0)


def test_optax_on_trainable(net):
    optax = pytest.importorskip("optax")
    tx = optax.adamw(1e-2)
    state = tx.init(trainable(net))
    x = jnp.ones((4, 3))

    @jit
    def step(m, s, x):
        loss, g = value_and_grad(lambda m, x: jnp.sum(m(x)._a ** 2))(m, x)
        upd, s = tx.update(g, s, trainable(m))
        return apply_updates(m, upd), s, loss

    m = net
    losses = []
    for _ in range(5):
        m, state, loss = step(m, state, x)
        losses.append(float(loss._a))
    assert losses[-1] < losses[0]
    assert m.fc.weight.name == "fc.weight"


def test_errors():
    class IntVar(Module):
        def __init__(self):
            self.w = Var(jnp.ones(2, jnp.int32), "counts")

    with pytest.raises(Exception, match="Var 'counts' is not floating point"):
        grad(lambda m: jnp.sum(m.w._a))(IntVar())
    with pytest.raises(Exception, match="must return a scalar loss"):
        grad(lambda m: m.fc(jnp.ones((2, 3)))._a)(Net(VarBuilder.zeros()))
    # one element of any rank is a scalar loss, as torch's backward() takes it
    x = Tensor(np.array([[1.0, 2.0]], np.float32))
    g = grad(lambda t: t.matmul(t.t()))(x)  # (1, 1)
    np.testing.assert_array_equal(g.to_vec2(), [[2.0, 4.0]])


def test_grad_of_plain_tensors_and_clear_error_without_float_leaves():
    import numpy as np

    import candlejax as cj
    from candlejax import Tensor

    t = Tensor.new([1.0, -2.0, 3.0])
    np.testing.assert_allclose(np.asarray(cj.grad(lambda x: x.sqr().sum_all())(t)), [2.0, -4.0, 6.0])
    ga, gb = cj.grad(lambda xs: (xs[0] * xs[1]).sum_all())((t, t * 2.0))
    np.testing.assert_allclose(np.asarray(ga), np.asarray(t * 2.0))
    np.testing.assert_allclose(np.asarray(gb), np.asarray(t))
    with pytest.raises(cj.Error, match="no Var and no floating-point Tensor"):
        cj.grad(lambda x: x.sum_all())(Tensor.new(np.array([1, 2], dtype=np.uint32)))


def test_jax_grad_of_a_function_returning_a_tensor_names_the_fix(net):
    """``jax.grad`` needs an array result: a Tensor loss raises a candlejax error naming ``.jax`` and
    ``cj.grad`` (JAX's own: "Triggering __jax_array__() during abstractification ..."); the array works."""
    from candlejax import errors

    x = jnp.ones((4, 3))
    with pytest.raises(errors.TracingError, match=r"loss\.jax.*candlejax\.grad"):
        jax.grad(lambda m: m(x).sum_all())(net)
    with pytest.raises(errors.TracingError, match=r"jax\.typeof"):
        jax.typeof(Tensor(jnp.ones(3)))
    g = jax.grad(lambda m: m(x).sum_all().jax)(net)
    want = grad(lambda m: m(x).sum_all())(net)
    np.testing.assert_allclose(np.asarray(g.fc.weight.jax), np.asarray(want.fc.weight.jax))


def test_jit_of_a_bound_method_or_module_reads_the_current_weights():
    """``cj.jit(model.forward)`` and ``cj.jit(model)`` pass the module as an argument: an in-place update
    of its Vars (a bound optimizer step, ``varmap.load``, ``Var.set``) is seen without retracing
    (the weights were baked in as constants, and the function silently kept the old ones)."""
    m = Net(VarBuilder.from_varmap(VarMap(seed=3)))
    x = jnp.ones((4, 3))
    for f in (jit(m.forward), jit(m)):
        before = np.asarray(f(x)._a)
        m.fc.weight.set(m.fc.weight * 2)
        np.testing.assert_allclose(np.asarray(f(x)._a), np.asarray(m(x)._a), rtol=1e-6)
        assert not np.allclose(np.asarray(f(x)._a), before)
        assert f._cache_size() == 1


# ------------------------------------------------------------------------------------------------
# in-place updates inside cj.jit reach the caller's handles, as eagerly
# ------------------------------------------------------------------------------------------------
class _BnNet(Module):
    def __init__(self, vb):
        self.fc = linear(3, 4, vb.pp("fc"))
        self.bn = batch_norm(4, BatchNormConfig(), vb.pp("bn"))

    def forward_t(self, x, train):
        return self.bn.forward_t(self.fc(x).unsqueeze(2), train)


def _bn_loss(m, x):
    return m.forward_t(x, True).sqr().sum_all()


_BN_X = Tensor(np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32) + 1.0)


def _bn_stats_after(transform):
    varmap = VarMap(seed=1)
    m = _BnNet(VarBuilder.from_varmap(varmap))
    f = transform(_bn_loss)
    f(m, _BN_X)
    f(m, _BN_X)  # twice: the second call reuses the program and updates from the first call's values
    return np.asarray(m.bn.running_mean.jax), np.asarray(m.bn.running_var.jax), varmap


@pytest.mark.parametrize("name", ["jit", "jit(value_and_grad)", "value_and_grad(jit)", "jit(grad)"])
def test_batchnorm_running_stats_update_through_cj_jit_as_eagerly(name):
    transform = {
        "jit": jit,
        "jit(value_and_grad)": lambda f: jit(value_and_grad(f)),
        "value_and_grad(jit)": lambda f: value_and_grad(jit(f)),
        "jit(grad)": lambda f: jit(grad(f)),
    }[name]
    mean_ref, var_ref, _ = _bn_stats_after(value_and_grad)  # eager: Candle's forward_t updates in place
    mean, var, varmap = _bn_stats_after(transform)
    assert np.abs(mean_ref).max() > 0.05 and np.abs(var_ref - 1).max() > 0.05  # the statistics moved
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, var_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(varmap.data()["bn.running_mean"].jax), mean)  # the map's handle


def test_var_set_inside_cj_jit_sets_the_callers_var_and_a_plain_call_changes_nothing(net):
    v = Var(jnp.zeros(3), "v")

    @jit
    def bump(v, x):
        v.set(v + x)
        return x * 2

    out = bump(v, Tensor(np.ones(3, np.float32)))
    np.testing.assert_array_equal(np.asarray(out.jax), 2.0)
    np.testing.assert_array_equal(np.asarray(v.jax), 1.0)
    bump(v, Tensor(np.ones(3, np.float32)))
    np.testing.assert_array_equal(np.asarray(v.jax), 2.0)
    assert bump._cache_size() == 1
    before = {k: np.asarray(x.jax).copy() for k, x in net.named_vars().items()}
    jit(lambda m, x: m(x))(net, Tensor(np.ones((2, 3), np.float32)))
    assert all(np.array_equal(np.asarray(x.jax), before[k]) for k, x in net.named_vars().items())


def test_batchnorm_under_a_transform_that_drops_its_statistics_warns():
    m = _BnNet(VarBuilder.from_varmap(VarMap(seed=1)))
    with pytest.warns(LostUpdateWarning, match=r"forward_t\(x, True\).*cj.jit"):
        jax.jit(lambda m, x: _bn_loss(m, x).jax)(m, _BN_X)
    np.testing.assert_array_equal(np.asarray(m.bn.running_mean.jax), 0.0)  # what the warning says
    with pytest.warns(LostUpdateWarning):  # a layer closed over: its statistics cannot take traced values
        jax.jit(lambda x: _bn_loss(m, wrap(x)).jax)(_BN_X.jax)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LostUpdateWarning)
        jit(_bn_loss)(m, _BN_X)  # kept: no warning
        value_and_grad(_bn_loss)(m, _BN_X)
        jax.jit(lambda bn, x: bn.forward_train(wrap(x))[1])(m.bn, jnp.ones((2, 4, 1)))  # functional form
