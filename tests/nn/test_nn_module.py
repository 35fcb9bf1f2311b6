"""Module pytrees, named Vars, repr, save/load and the issue's user-facing example."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import candlejax.nn as nn
from candlejax import Device, DType, Tensor
from candlejax.nn import Buffer, Linear, Module, Var, VarBuilder, VarMap, linear, ops
from candlejax.nn import loss as nn_loss
from candlejax.tensor._core import wrap
from candlejax.transforms import apply_updates, jit, value_and_grad


class Model(Module):
    def __init__(self, vb):
        self.first = linear(784, 100, vb.pp("first"))
        self.second = linear(100, 10, vb.pp("second"))

    def forward(self, image):
        return self.second.forward(ops.relu(self.first.forward(image)))


class Mixed(Module):
    def __init__(self, vb):
        self.layers = [linear(3, 3, vb.pp("layers").pp(i)) for i in range(2)]
        self.table = wrap(jnp.arange(3.0))  # plain Tensor: not trained, not saved
        self.stats = Buffer(jnp.ones(3), "stats")  # named, saved, not trained
        self.act = nn.Activation.Silu
        self.n = 3
        self.name = "mixed"
        self.fn = jnp.tanh
        self.cfg = {"eps": 1e-5}

    def forward(self, x):
        for layer in self.layers:
            x = self.act(layer(x))
        return wrap(x._a * self.table._a * self.stats._a)


@pytest.fixture(scope="module")
def model():
    return Model(VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu))


@pytest.fixture(scope="module")
def mixed():
    return Mixed(VarBuilder.from_varmap(VarMap(seed=1)))


def test_named_vars_use_checkpoint_names(model):
    assert list(model.named_vars()) == ["first.weight", "first.bias", "second.weight", "second.bias"]
    assert model.first.weight.shape == (100, 784)
    assert model.num_params() == 784 * 100 + 100 + 100 * 10 + 10


def test_pytree_static_and_dynamic_fields(mixed):
    leaves, treedef = jax.tree_util.tree_flatten(mixed)
    assert len(leaves) == 4 + 2  # 4 linear params + table + stats; ints/strings/callables/activation are static
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert type(back) is Mixed and back.n == 3 and back.name == "mixed" and back.fn is jnp.tanh
    assert back.layers[1].weight.name == "layers.1.weight"
    assert isinstance(back.stats, Buffer) and back.stats.name == "stats"
    assert set(mixed.named_vars()) == {"layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"}
    assert set(mixed.named_tensors()) == set(mixed.named_vars()) | {"stats"}
    # same structure after a tree_map (the optimizer's update path)
    m2 = jax.tree_util.tree_map(lambda a: a * 2, mixed)
    assert jax.tree_util.tree_structure(m2) == treedef


def test_ops_on_var_return_plain_tensors(model):
    w = model.first.weight
    assert isinstance(w, Var) and isinstance(w, Tensor)
    t = w.as_tensor()
    assert type(t) is Tensor
    out = model.first(jnp.ones((2, 784)))
    assert type(out) is Tensor
    # Var::set is in place (Var is a shared handle, as in Candle); as_tensor() is a snapshot
    v = Var(np.ones((2, 3), np.float32), "first.weight")
    snap = v.as_tensor()
    assert v.set(jnp.zeros((2, 3))) is v and float(jnp.abs(v._a).sum()) == 0
    assert float(snap.sum_all().to_scalar()) == 6.0
    with pytest.raises(Exception, match="shape mismatch in set"):
        w.set(jnp.zeros(3))


def test_jit_grad_vmap_over_a_model(mixed):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)), jnp.float32)
    y = jax.jit(lambda m, x: m(x)._a)(mixed, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(mixed(x)._a), atol=1e-6)
    # vmap over the batch with the model broadcast
    yv = jax.vmap(lambda xi: mixed(xi[None])._a[0])(x)
    np.testing.assert_allclose(np.asarray(yv), np.asarray(y), atol=1e-6)
    # vmap over an ensemble of models (stacked params)
    ens = jax.tree_util.tree_map(lambda a: jnp.stack([a, a * 0.5]), mixed)
    ye = jax.vmap(lambda m: m(x)._a)(ens)
    assert ye.shape == (2, 4, 3)
    # gradients: only Vars, as a tree shaped like the model
    _, g = jit(value_and_grad(lambda m: jnp.sum(m(x)._a ** 2)))(mixed)
    assert type(g) is Mixed
    assert g.table is None and g.stats is None  # no gradient for plain Tensors / Buffers
    assert g.layers[0].weight.name == "layers.0.weight" and g.layers[0].weight.shape == (3, 3)
    def by_weight(w):
        layer0 = mixed.layers[0].replace(weight=Var(w, "w"))
        return jnp.sum(mixed.replace(layers=[layer0, mixed.layers[1]])(x)._a ** 2)

    ref = jax.jit(jax.grad(by_weight))(mixed.layers[0].weight._a)
    np.testing.assert_allclose(np.asarray(g.layers[0].weight._a), np.asarray(ref), atol=1e-5)


def test_lax_scan_over_modules():
    vb = VarBuilder.from_varmap(VarMap(seed=0))
    layers = [linear(4, 4, vb.pp(i)) for i in range(3)]
    # Var names are static metadata, so stack through the leaves (the stack keeps layer 0's names)
    treedef = jax.tree_util.tree_structure(layers[0])
    leaves = [jax.tree_util.tree_leaves(layer) for layer in layers]
    stacked = treedef.unflatten([jnp.stack(a) for a in zip(*leaves)])

    def body(x, layer):
        return layer(x), None

    out, _ = jax.lax.scan(body, wrap(jnp.ones((2, 4))), stacked)
    ref = wrap(jnp.ones((2, 4)))
    for layer in layers:
        ref = layer(ref)
    np.testing.assert_allclose(np.asarray(out._a), np.asarray(ref._a), atol=1e-5)


def test_repr_and_html(mixed, model):
    r = repr(model)
    assert "first: Linear(in=784, out=100, bias=True" in r
    assert "Var f32[100, 784] 'first.weight'" in r
    r2 = repr(mixed)
    assert "layers.1: Linear" in r2 and "Buffer f32[3] 'stats'" in r2 and "n=3" in r2
    h = model._repr_html_()
    assert "79,510 trainable parameters" in h and "<details" in h
    assert "'first.weight'" in repr(model.first.weight)


def test_html_of_label_and_gradient_trees_does_not_raise(model):
    # a notebook shows optax's param_labels tree (tree_map(lambda _: "adam", model)) through _repr_html_
    for tree in (jax.tree_util.tree_map(lambda _: "adam", model), jax.tree_util.tree_map(lambda _: None, model)):
        h = tree._repr_html_()
        assert "<b>Model</b>" in h and "first" in h and "Linear" in h
        assert "first: Linear(" in repr(tree)
    grads = jax.grad(lambda m: m(wrap(jnp.ones((1, 784)))).sum()._a)(model)
    assert "79,510 trainable parameters" in grads._repr_html_()


def test_save_and_load_safetensors(tmp_path, mixed):
    p = tmp_path / "m.safetensors"
    mixed.save_safetensors(p)
    vb = VarBuilder.from_mmaped_safetensors([p], DType.F32, Device.Cpu)
    again = Mixed(vb)
    for k, v in mixed.named_vars().items():
        np.testing.assert_array_equal(np.asarray(again.named_vars()[k]._a), np.asarray(v._a))
    zero = jax.tree_util.tree_map(jnp.zeros_like, mixed)
    loaded = zero.load_safetensors(p)
    np.testing.assert_array_equal(np.asarray(loaded.stats._a), 1.0)
    np.testing.assert_array_equal(np.asarray(loaded.layers[1].bias._a), np.asarray(mixed.layers[1].bias._a))


def test_load_from_another_architecture_lists_names(tmp_path, mixed, model):
    p = tmp_path / "m.safetensors"
    mixed.save_safetensors(p)
    with pytest.raises(Exception, match=r"missing: \['first.bias'.*unexpected: \['layers.0.bias'"):
        model.load_safetensors(p)
    with pytest.raises(Exception, match=r"cannot find tensor first.weight .*nearest names"):
        Model(VarBuilder.from_mmaped_safetensors(p))


def test_load_safetensors_reads_only_the_modules_tensors_in_its_dtypes(tmp_path):
    """An unused I64 tensor (HF's ``position_ids``) with strict=False, and an F64 weight for an F32 model,
    load without x64 mode: only the module's tensors are read, converted to its dtypes."""
    import safetensors.numpy as stnp

    lin = linear(2, 3, VarBuilder.from_varmap(VarMap()).pp("l"))
    p = tmp_path / "hf.safetensors"
    w = np.arange(6, dtype=np.float64).reshape(3, 2) / 4
    stnp.save_file({"l.weight": w, "l.bias": np.ones(3, np.float32), "position_ids": np.arange(4)}, str(p))
    got = lin.load_safetensors(p, strict=False)
    assert got.weight.dtype == DType.F32 and got.weight.to_vec2() == w.tolist()
    with pytest.raises(Exception, match=r"unexpected: \['position_ids'\]"):
        lin.load_safetensors(p)


def test_save_safetensors_dict_keeps_numpy_64_bit_values(tmp_path):
    """numpy f64 / i64 arrays are written as F64 / I64, not narrowed by jnp.asarray (1e300 -> inf, 2**40 -> 0)."""
    import safetensors.numpy as stnp

    from candlejax.nn.module import save_safetensors_dict

    p = tmp_path / "np.safetensors"
    save_safetensors_dict({"w": np.array([0.1, 1e300]), "i": np.array([2**40, 3]), "l": [1.0, 2.0]}, p)
    back = stnp.load_file(str(p))
    assert back["w"].dtype == np.float64 and back["w"].tolist() == [0.1, 1e300]
    assert back["i"].dtype == np.int64 and back["i"].tolist() == [2**40, 3]
    assert back["l"].tolist() == [1.0, 2.0]


def test_static_field_marker_and_array_in_static_raises():
    class M(Module):
        _static_fields = ("scale",)

        def __init__(self, scale):
            self.scale = scale

    m = M((1, 2))
    assert jax.tree_util.tree_leaves(m) == []
    with pytest.raises(Exception, match="declared static but holds an array"):
        jax.tree_util.tree_leaves(M(jnp.ones(2)))


def test_module_t_and_forward_t():
    seqm = nn.seq().add(nn.linear(3, 3, VarBuilder.zeros())).add(nn.Activation.Relu)
    x = jnp.ones((1, 3))
    assert seqm.forward_t(x, True).shape == (1, 3)
    d = nn.Dropout(0.3)
    assert d(wrap(x)).shape == (1, 3)


def test_issue_example_trains_and_reloads(tmp_path):
    """The user-facing example of the nn issue (with a plain SGD step instead of cj.optim)."""
    varmap = VarMap()
    vb = VarBuilder.from_varmap(varmap, DType.F32, Device.Cpu)
    model = Model(vb)
    w_direct = Linear(Var(np.ones((2, 3), np.float32), "w"), Var(np.zeros(2, np.float32), "b"))
    assert Linear.new(w_direct.weight, w_direct.bias)(jnp.ones((1, 3))).shape == (1, 2)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((64, 784)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 64), jnp.uint32)

    def loss_fn(m, x, y):
        return nn_loss.cross_entropy(m.forward(x), y)

    @jit
    def step(m, x, y):
        loss, g = value_and_grad(loss_fn)(m, x, y)
        return apply_updates(m, jax.tree_util.tree_map(lambda g: -0.05 * g, g)), loss

    first = None
    for _ in range(10):
        model, loss = step(model, x, y)
        first = first if first is not None else float(loss._a)
    assert float(loss._a) < first
    assert model(x).shape == (64, 10)
    path = tmp_path / "model.safetensors"
    model.save_safetensors(path)
    vb = VarBuilder.from_mmaped_safetensors([str(path)], DType.F32, Device.Cpu)
    model2 = Model(vb)
    np.testing.assert_allclose(np.asarray(model2(x)._a), np.asarray(model(x)._a), atol=1e-6)
    # VarMap.set copies trained values back (Candle's in-place update, made explicit)
    varmap.set(model.named_vars())
    np.testing.assert_array_equal(np.asarray(varmap.data()["first.bias"]._a), np.asarray(model.first.bias._a))


def test_callable_pytree_fields_are_children_not_static():
    import jax
    import numpy as np

    from candlejax.nn import Module
    from candlejax.quantized import GgmlDType, QMatMul, QTensor

    class Head(Module):
        def __init__(self, proj, act):
            self.proj = proj  # a callable pytree holding arrays: must be a child
            self.act = act  # a plain function: static

        def forward(self, x):
            return self.act(self.proj(x))

    w = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)
    m = Head(QMatMul.from_qtensor(QTensor.quantize(w, GgmlDType.Q8_0)), lambda t: t.relu())
    leaves = jax.tree_util.tree_leaves(m)
    # the weight's arrays are children (block bytes, or values + scales), not static data
    assert leaves and sum(leaf.nbytes for leaf in leaves) >= 8 * 34
    out = jax.jit(lambda mm, x: mm.forward(x).jax)(m, np.ones((1, 32), np.float32))
    assert out.shape == (1, 8)


def test_structure_kept_when_jax_replaces_the_arrays():
    """``jit(f).lower(...).compile()(...)`` compares the call's tree with the lowered one, whose
    leaves are ``ArgInfo`` placeholders; ``eval_shape`` gives ``ShapeDtypeStruct`` leaves. A pytree
    field holding arrays (a quantized weight) must stay a child whatever its leaves are."""
    from candlejax.quantized import GgmlDType, QMatMul, QTensor

    class Head(Module):
        def __init__(self, proj, lin, scale):
            self.proj = proj  # a registered pytree (QMatMul) holding arrays
            self.lin = lin
            self.scale = scale  # a NumPy scalar: static

        def forward(self, x):
            return self.lin(self.proj(x)) * float(self.scale)

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 32)).astype(np.float32)
    lin = Linear(Tensor(rng.standard_normal((4, 8)).astype(np.float32)), None)
    m = Head(QMatMul.from_qtensor(QTensor.quantize(w, GgmlDType.Q8_0)), lin, np.float32(2.0))
    x = Tensor(np.ones((1, 32), np.float32))
    want = np.asarray(m.forward(x).jax)
    assert jax.tree_util.tree_structure(jax.eval_shape(lambda: m)) == jax.tree_util.tree_structure(m)
    compiled = jax.jit(lambda mm, xx: mm.forward(xx).jax).lower(m, x).compile()
    np.testing.assert_allclose(np.asarray(compiled(m, x)), want, rtol=1e-6)
    assert len(jax.tree_util.tree_leaves(m)) == len(jax.tree_util.tree_leaves(jax.eval_shape(lambda: m)))


def test_cached_classification_follows_attribute_changes():
    """A Module keeps its pytree classification between flattens; setting, deleting or replacing
    an attribute, or filling a static list in place, must still be seen."""
    import copy
    import pickle

    class Holder(Module):
        def __init__(self):
            self.w = Tensor(np.ones((2, 2), np.float32))
            self.extra = []  # static while empty
            self.scale = 2

    m = Holder()
    leaves = jax.tree_util.tree_leaves
    assert len(leaves(m)) == 1 and len(leaves(m)) == 1  # the second flatten reads the cache
    m.b = Tensor(np.zeros(2, np.float32))
    assert len(leaves(m)) == 2
    del m.b
    assert len(leaves(m)) == 1
    m.extra.append(Linear(Tensor(np.ones((3, 2), np.float32)), None))  # in place: no __setattr__
    assert len(leaves(m)) == 2
    r = m.replace(w=None)
    assert len(leaves(r)) == 1 and len(leaves(m)) == 2
    m.scale = Tensor(np.ones(1, np.float32))  # a static field becomes a child
    assert len(leaves(m)) == 3
    c = copy.copy(m)
    c.scale = 3
    assert len(leaves(c)) == 2 and len(leaves(m)) == 3
    lin = Linear(Tensor(np.ones((3, 2), np.float32)), None)
    leaves(lin)
    p = pickle.loads(pickle.dumps(lin))
    assert jax.tree_util.tree_structure(p) == jax.tree_util.tree_structure(lin)
    p.bias = Tensor(np.zeros(3, np.float32))
    assert len(leaves(p)) == 2 and len(leaves(lin)) == 1
    # a tree rebuilt with other leaves keeps the structure (and so does a second flatten of it)
    filled = jax.tree_util.tree_map(lambda a: "x", m)
    assert jax.tree_util.tree_structure(filled) == jax.tree_util.tree_structure(m)


def test_array_helpers_pass_arrays_and_tracers_through(rng):
    """``as_array`` (with coercion) and ``unwrap`` (without) are the Tensor -> array helpers; a jax
    array or a tracer comes back as it is, so layers take raw arrays under jit / vmap / grad."""
    from candlejax.nn.module import as_array
    from candlejax.tensor import unwrap

    a = rng.standard_normal((2, 4)).astype(np.float32)
    x = jnp.asarray(a)
    assert as_array(x) is x and unwrap(x) is x and unwrap(Tensor.new(a)).shape == (2, 4)
    assert as_array(Tensor.new(a), DType.F16).dtype == jnp.float16 and unwrap(3) == 3
    norm = nn.LayerNorm.new(Tensor.ones((4,), DType.F32), Tensor.zeros((4,), DType.F32), 1e-5)

    def f(r):
        assert as_array(r) is r and unwrap(r) is r
        (k, _), _ = nn.KvCache.preallocated(0, 4, r).append(r, r)
        return unwrap(norm.forward(r)), unwrap(k)[:2]

    y, k = jax.jit(f)(x)
    ref = (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(k), a)
    assert jax.vmap(lambda r: unwrap(ops.softmax(r, -1)))(x).shape == (2, 4)
