"""Candle's own beginner and training code, and candle-nn's tests, ported line by line.

Sources (huggingface/candle): candle-book/src/simplified.rs and guide/mnist/*.md,
candle-examples/examples/mnist-training/main.rs, candle-nn/examples/basic_optimizer.rs and
candle-nn/tests/{optim,ops,layer_norm,kv_cache,one_hot,batch_norm,group_norm,loss}.rs. The expected
numbers are Candle's. Where the literal Candle call cannot work on JAX (``opt.backward_step(&loss)``,
in-place cache and batch-norm updates) the test checks that it fails at once with a candlejax error
naming the candlejax spelling, and that this spelling gives Candle's result.
"""

from __future__ import annotations

import numpy as np
import pytest

import candlejax as cj
import candlejax.data as candle_datasets
import candlejax.nn as candle_nn
from candlejax import D, Device, DType, Tensor, Var, errors
from candlejax import random as cj_random
from candlejax.nn import (
    SGD,
    AdamW,
    BatchNorm,
    BatchNormConfig,
    GroupNorm,
    LayerNorm,
    Linear,
    Module,
    ModuleT,
    ParamsAdamW,
    VarBuilder,
    VarMap,
    batch_norm,
    loss,
    ops,
)

F32 = np.float32
CPU = Device.Cpu


# candle::test_utils::to_vecN_round: round(t * 10^d) / 10^d in f32, compared with f32 literals
def _round(values, digits):
    b = F32(10.0**digits)
    return np.round(np.asarray(values, F32) * b) / b


# ------------------------------------------------------------------------------------------------
# candle-book: simplified.rs (the election MLP), guide/mnist/training.md
# ------------------------------------------------------------------------------------------------
VOTE_DIM, RESULTS, LAYER1_OUT_SIZE, LAYER2_OUT_SIZE = 2, 1, 4, 2


class MultiLevelPerceptron(Module):
    def __init__(self, ln1, ln2, ln3):
        self.ln1, self.ln2, self.ln3 = ln1, ln2, ln3

    @staticmethod
    def new(vs):
        ln1 = candle_nn.linear(VOTE_DIM, LAYER1_OUT_SIZE, vs.pp("ln1"))
        ln2 = candle_nn.linear(LAYER1_OUT_SIZE, LAYER2_OUT_SIZE, vs.pp("ln2"))
        ln3 = candle_nn.linear(LAYER2_OUT_SIZE, RESULTS + 1, vs.pp("ln3"))
        return MultiLevelPerceptron(ln1, ln2, ln3)

    def forward(self, xs):
        xs = self.ln1.forward(xs)
        xs = xs.relu()
        xs = self.ln2.forward(xs)
        xs = xs.relu()
        return self.ln3.forward(xs)


def _votes():
    dev = Device.cuda_if_available(0)
    train_votes_vec = [15, 10, 10, 15, 5, 12, 30, 20, 16, 12, 13, 25, 6, 14, 31, 21]
    n = len(train_votes_vec) // VOTE_DIM
    train_votes = Tensor.from_vec(train_votes_vec, (n, VOTE_DIM), dev).to_dtype(DType.F32)
    train_results = Tensor.from_vec([1, 0, 0, 1, 1, 0, 0, 1], len(train_votes_vec) // VOTE_DIM, dev)
    return dev, train_votes, train_results


def nll_loss_fn(model, xs, ys):
    logits = model.forward(xs)
    log_sm = ops.log_softmax(logits, D.Minus1)
    return loss.nll(log_sm, ys)


def test_book_simplified_literal_backward_step_of_a_loss_raises_naming_the_loss_function():
    dev, train_votes, train_results = _votes()
    varmap = VarMap.new()
    vs = VarBuilder.from_varmap(varmap, DType.F32, dev)
    model = MultiLevelPerceptron.new(vs.clone())  # Candle's vs.clone()
    sgd = candle_nn.SGD.new(varmap.all_vars(), 0.05)
    logits = model.forward(train_votes)
    loss_ = loss.nll(ops.log_softmax(logits, D.Minus1), train_results)
    with pytest.raises(errors.OptimizerUsage, match=r"opt\.backward_step\(loss_fn, model, x, y\)"):
        sgd.backward_step(loss_)


def test_book_simplified_trains_with_the_loss_function_and_evaluates_literally():
    dev, train_votes, train_results = _votes()
    test_votes = Tensor.from_vec([13, 9, 8, 14, 3, 10], (3, VOTE_DIM), dev).to_dtype(DType.F32)
    test_results = Tensor.from_vec([1, 0, 0], 3, dev)
    varmap = VarMap.new(seed=0)
    vs = VarBuilder.from_varmap(varmap, DType.F32, dev)
    model = MultiLevelPerceptron.new(vs.clone())
    sgd = candle_nn.SGD.new(varmap.all_vars(), 0.05)
    losses = []
    for _epoch in range(1, 11):
        losses.append(sgd.backward_step(nll_loss_fn, model, train_votes, train_results).to_scalar())
        test_logits = model.forward(test_votes)
        sum_ok = test_logits.argmax(D.Minus1).eq(test_results).to_dtype(DType.F32).sum_all().to_scalar()
        test_accuracy = sum_ok / test_results.dims1()
        assert 0.0 <= test_accuracy <= 1.0
    assert losses[-1] < losses[0]
    result = model.forward(Tensor.from_vec([13, 22], (1, VOTE_DIM), dev).to_dtype(DType.F32))
    assert result.argmax(D.Minus1).to_dtype(DType.F32).get(0).to_scalar() in (0.0, 1.0)


# ------------------------------------------------------------------------------------------------
# candle-examples/examples/mnist-training/main.rs
# ------------------------------------------------------------------------------------------------
IMAGE_DIM, LABELS = 784, 10


def linear_z(in_dim, out_dim, vs):
    ws = vs.get_with_hints((out_dim, in_dim), "weight", candle_nn.init.ZERO)
    bs = vs.get_with_hints(out_dim, "bias", candle_nn.init.ZERO)
    return Linear.new(ws, bs)


class LinearModel(Module):
    def __init__(self, linear):
        self.linear = linear

    @staticmethod
    def new(vs):
        return LinearModel(linear_z(IMAGE_DIM, LABELS, vs))

    def forward(self, xs):
        return self.linear.forward(xs)


class SmallConvNet(ModuleT):
    """main.rs's ConvNet cut to one 5x5 convolution (to keep the test's compile under a second):
    conv, max-pool, flatten, fc, relu, dropout, fc; ``forward(xs, train)`` as in main.rs."""

    def __init__(self, vs):
        self.conv1 = candle_nn.conv2d(1, 2, 5, candle_nn.Conv2dConfig.default(), vs.pp("c1"))
        self.fc1 = candle_nn.linear(72, 16, vs.pp("fc1"))
        self.fc2 = candle_nn.linear(16, LABELS, vs.pp("fc2"))
        self.dropout = candle_nn.Dropout.new(0.5)

    def forward(self, xs, train):
        (b_sz, _img_dim) = xs.dims2()
        xs = xs.reshape((b_sz, 1, 28, 28)).apply(self.conv1).max_pool2d(4).flatten_from(1).apply(self.fc1).relu()
        return self.dropout.forward_t(xs, train).apply(self.fc2)


def _mnist_dir(tmp_path, n_train=64, n_test=32):
    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = (rng.random((n, 28, 28)) * 40).astype(np.uint8)
        for i, label in enumerate(y):
            x[i, 2 * label : 2 * label + 3, :] = 255  # a learnable stripe per class
        return x, y

    (tx, ty), (vx, vy) = make(n_train), make(n_test)
    for stem, a in (("train-images-idx3-ubyte", tx), ("train-labels-idx1-ubyte", ty),
                    ("t10k-images-idx3-ubyte", vx), ("t10k-labels-idx1-ubyte", vy)):  # fmt: skip
        candle_datasets.write_idx(tmp_path / stem, a)
    return tmp_path


def test_mnist_training_linear_loop_ports_with_the_documented_step(tmp_path):
    m = candle_datasets.vision.mnist.load_dir(_mnist_dir(tmp_path))  # candle_datasets::vision::mnist::load_dir
    assert isinstance(m, candle_datasets.vision.Dataset) and m.train_images.dims() == [64, 784]
    dev = Device.cuda_if_available(0)
    train_images = m.train_images.to_device(dev)
    train_labels = m.train_labels.to_dtype(DType.U32).to_device(dev)
    varmap = VarMap.new()
    vs = VarBuilder.from_varmap(varmap, DType.F32, dev)
    model = LinearModel.new(vs.clone())
    sgd = candle_nn.SGD.new(varmap.all_vars(), 1.0)
    test_images = m.test_images.to_device(dev)
    test_labels = m.test_labels.to_dtype(DType.U32).to_device(dev)
    losses, accs = [], []
    for _epoch in range(1, 4):
        losses.append(sgd.backward_step(nll_loss_fn, model, train_images, train_labels).to_scalar())
        test_logits = model.forward(test_images)
        sum_ok = test_logits.argmax(D.Minus1).eq(test_labels).to_dtype(DType.F32).sum_all().to_scalar()
        accs.append(sum_ok / test_labels.dims1())
    assert losses[0] == pytest.approx(np.log(10.0), rel=1e-5)  # zero-initialised linear model: uniform logits
    assert losses[-1] < losses[0] and accs[-1] > 0.5
    save = tmp_path / "linear.safetensors"
    varmap.save(save)
    varmap2 = VarMap.new()
    model2 = LinearModel.new(VarBuilder.from_varmap(varmap2, DType.F32, dev))
    varmap2.load(save)  # Candle's `if let Some(load) = &args.load { varmap.load(load)? }` after building
    np.testing.assert_array_equal(np.asarray(model2.forward(test_images)), np.asarray(model.forward(test_images)))


def test_mnist_training_cnn_with_dropout_trains_in_the_bound_step(tmp_path):
    m = candle_datasets.vision.mnist.load_dir(_mnist_dir(tmp_path, 16, 8))
    dev = CPU
    dev.set_seed(7)
    train_images, train_labels = m.train_images, m.train_labels.to_dtype(DType.U32)
    varmap = VarMap.new()
    model = SmallConvNet(VarBuilder.from_varmap(varmap, DType.F32, dev).clone())
    opt = candle_nn.AdamW.new(varmap.all_vars(), candle_nn.ParamsAdamW(lr=0.01))

    def loss_fn(model, xs, ys):
        return loss.nll(ops.log_softmax(model.forward(xs, True), D.Minus1), ys)

    bsize, losses = 8, []
    seed, counter = cj_random.get_state(dev)
    for epoch in range(4):
        sum_loss = 0.0
        for batch_idx in range(train_images.dim(0) // bsize):
            xs = train_images.narrow(0, batch_idx * bsize, bsize)
            ys = train_labels.narrow(0, batch_idx * bsize, bsize)
            sum_loss += opt.backward_step(loss_fn, model, xs, ys).to_vec0()
        losses.append(sum_loss)
        del epoch
    assert losses[-1] < losses[0]
    assert cj_random.get_state(dev) == (seed, counter + 8)  # one fresh dropout key per step


def test_dropout_masks_differ_between_steps_and_models_without_randomness_leave_the_generator():
    CPU.set_seed(3)
    varmap = VarMap.new()
    lin = candle_nn.linear(8, 4, VarBuilder.from_varmap(varmap, DType.F32, CPU).pp("l"))
    x = Tensor.ones((2, 8), DType.F32, CPU)
    y = Tensor.new(np.array([0, 1], np.uint32))
    drop = candle_nn.Dropout.new(0.5)

    def with_dropout(m, x, y):
        return loss.cross_entropy(drop.forward_t(m.forward(x), True), y)

    opt = SGD.new(varmap.all_vars(), 0.0)  # lr 0: only the masks change the loss
    losses = {opt.backward_step(with_dropout, lin, x, y).to_scalar() for _ in range(4)}
    assert len(losses) > 1 and cj_random.get_state(CPU) == (3, 4)
    opt.backward_step(nll_loss_fn, lin, x, y)
    assert cj_random.get_state(CPU) == (3, 4)


def test_mnist_hub_load_raises_naming_load_dir():
    with pytest.raises(errors.Error, match=r"vision\.mnist\.load_dir\(dir\)"):
        candle_datasets.vision.mnist.load()
    assert candle_datasets.vision.cifar.load_dir is candle_datasets.load_cifar


# ------------------------------------------------------------------------------------------------
# candle-nn/tests/optim.rs and examples/basic_optimizer.rs
# ------------------------------------------------------------------------------------------------
def _gen_data():
    w_gen = Tensor.new([[3.0, 1.0]], CPU)
    b_gen = Tensor.new(-2.0, CPU)
    gen = Linear.new(w_gen, b_gen)
    sample_xs = Tensor.new([[2.0, 1.0], [7.0, 4.0], [-4.0, 12.0], [5.0, 8.0]], CPU)
    return sample_xs, gen.forward(sample_xs)


def mse_sum(lin, sample_xs, sample_ys):
    ys = lin.forward(sample_xs)
    return ys.sub(sample_ys).sqr().sum_all()


def test_optim_sgd_optim_var_clone_is_the_same_handle():
    x = Var.new(0.0, CPU)
    assert x.clone() is x
    sgd = SGD.new([x.clone()], 0.1)

    def loss_fn(xt):  # Candle: let loss = ((xt - 4.2)? * (xt - 4.2)?)?; sgd.backward_step(&loss)?
        return (xt - 4.2) * (xt - 4.2)

    for _step in range(100):
        sgd.backward_step(loss_fn, x)
    assert x.to_scalar() == F32(4.199999)


def test_optim_sgd_linear_regression():
    sample_xs, sample_ys = _gen_data()
    w = Var.new([[0.0, 0.0]], CPU)
    b = Var.new(0.0, CPU)
    sgd = SGD.new([w.clone(), b.clone()], 0.004)
    lin = Linear.new(w, b)  # Candle: Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()))
    for _step in range(1000):
        sgd.backward_step(mse_sum, lin, sample_xs, sample_ys)
    # Candle asserts [[2.9983196, 0.99790204]], -1.9796902 bit for bit; XLA sums in another order
    np.testing.assert_allclose(w.to_vec2(), [[2.9983196, 0.99790204]], atol=1e-6)
    assert b.to_scalar() == pytest.approx(-1.9796902, abs=1e-6)


def test_optim_layer_built_from_as_tensor_clone_raises_naming_the_var_spelling():
    sample_xs, sample_ys = _gen_data()
    w = Var.new([[0.0, 0.0]], CPU)
    b = Var.new(0.0, CPU)
    sgd = SGD.new([w.clone(), b.clone()], 0.004)
    lin = Linear.new(w.as_tensor().clone(), b.as_tensor().clone())
    with pytest.raises(errors.OptimizerUsage, match=r"Linear\.new\(w, b\)"):
        sgd.backward_step(mse_sum, lin, sample_xs, sample_ys)


def test_optim_adamw_linear_regression():
    sample_xs, sample_ys = _gen_data()
    w = Var.new([[0.0, 0.0]], CPU)
    b = Var.new(0.0, CPU)
    opt = AdamW.new([w.clone(), b.clone()], ParamsAdamW(lr=0.1))
    lin = Linear.new(w, b)
    for _step in range(100):
        opt.backward_step(mse_sum, lin, sample_xs, sample_ys)
    np.testing.assert_array_equal(_round(w.as_tensor().to_vec2(), 4), np.asarray([[2.7257, 0.7097]], F32))
    assert _round(b.as_tensor().to_vec0(), 4) == F32(0.7873)


def test_optim_adamw_linear_regression_varmap_and_layer_accessors():
    sample_xs, sample_ys = _gen_data()
    var_map = VarMap.new()
    w = var_map.get((1, 2), "w", candle_nn.init.Init.Const(0.0), DType.F32, CPU)
    b = var_map.get((), "b", candle_nn.init.Init.Const(0.0), DType.F32, CPU)
    opt = AdamW.new(var_map.all_vars(), ParamsAdamW(lr=0.1))
    lin = Linear.new(w, b)
    for _step in range(100):
        opt.backward_step(mse_sum, lin, sample_xs, sample_ys)
    np.testing.assert_array_equal(_round(lin.weight().to_vec2(), 4), np.asarray([[2.7257, 0.7097]], F32))
    assert _round(lin.bias().to_vec0(), 4) == F32(0.7873)
    var_map.set(iter([("w", Tensor.zeros((1, 2), DType.F32, CPU))]))
    var_map.set(iter([("b", Tensor.ones((), DType.F32, CPU))]))
    assert lin.weight().to_vec2() == [[0.0, 0.0]] and lin.bias().to_vec0() == 1.0
    with pytest.raises(errors.Error, match="not a function"):
        lin.weight(sample_xs)


def test_basic_optimizer_example():
    sample_xs, sample_ys = _gen_data()
    varmap = VarMap.new()
    vb = VarBuilder.from_varmap(varmap, DType.F32, CPU)
    model = candle_nn.linear(2, 1, vb.pp("linear"))
    opt = AdamW.new(varmap.all_vars(), ParamsAdamW(lr=0.1))
    first = None
    for _step in range(200):
        loss_ = opt.backward_step(mse_sum, model, sample_xs, sample_ys)
        first = loss_.to_vec0() if first is None else first
    assert loss_.to_vec0() < first / 10


# ------------------------------------------------------------------------------------------------
# candle-nn/tests/ops.rs
# ------------------------------------------------------------------------------------------------
DATA = [[[3.0, 1.0, 4.0], [1.0, 5.0, 9.0]], [[2.0, 1.0, 7.0], [8.0, 2.0, 8.0]]]


def test_ops_softmax():
    tensor = Tensor.new(DATA, CPU)
    t0 = ops.softmax(tensor.log(), 0)
    t1 = ops.softmax(tensor.log(), 1)
    t2 = ops.softmax(tensor.log(), 2)
    np.testing.assert_array_equal(_round(t0.to_vec3(), 4), np.asarray(
        [[[0.6, 0.5, 0.3636], [0.1111, 0.7143, 0.5294]], [[0.4, 0.5, 0.6364], [0.8889, 0.2857, 0.4706]]], F32))
    np.testing.assert_array_equal(_round(t1.to_vec3(), 4), np.asarray(
        [[[0.75, 0.1667, 0.3077], [0.25, 0.8333, 0.6923]], [[0.2, 0.3333, 0.4667], [0.8, 0.6667, 0.5333]]], F32))
    last = np.asarray([[[0.375, 0.125, 0.5], [0.0667, 0.3333, 0.6]], [[0.2, 0.1, 0.7], [0.4444, 0.1111, 0.4444]]], F32)
    np.testing.assert_array_equal(_round(t2.to_vec3(), 4), last)
    np.testing.assert_array_equal(_round(ops.softmax_last_dim(tensor.log()).to_vec3(), 4), last)
    assert ops.softmax(Tensor.new([1234.0, 0.0], CPU), 0).to_vec1() == [1.0, 0.0]  # softmax_numerical_stability


def test_ops_rms_norm_and_layer_norm():
    tensor = Tensor.new(DATA, CPU)
    alpha = Tensor.new([1.0, 2.0, 3.0], CPU)
    expected = np.asarray([[[1.019, 0.6794, 4.0762], [0.1674, 1.6744, 4.521]],
                           [[0.4714, 0.4714, 4.9497], [1.206, 0.603, 3.6181]]], F32)  # fmt: skip
    t = ops.rms_norm(tensor, alpha, 1e-5)
    t2 = ops.rms_norm_slow(tensor, alpha, 1e-5)
    np.testing.assert_array_equal(_round(t.to_vec3(), 4), expected)
    np.testing.assert_array_equal(_round(t2.to_vec3(), 4), expected)
    assert (t - t2).abs().sum_all().to_vec0() < 1e-5
    beta = Tensor.new([0.5, 0.0, -0.2], CPU)
    expected = np.asarray([[[0.7673, -2.6726, 3.0071], [-0.7247, 0.0, 3.4742]],
                           [[-0.008, -1.778, 3.991], [1.2071, -2.8284, 1.9213]]], F32)  # fmt: skip
    t = ops.layer_norm(tensor, alpha, beta, 1e-5)
    t2 = ops.layer_norm_slow(tensor, alpha, beta, 1e-5)
    np.testing.assert_array_equal(_round(t.to_vec3(), 4), expected)
    np.testing.assert_array_equal(_round(t2.to_vec3(), 4), expected)
    assert (t - t2).abs().sum_all().to_vec0() < 1e-5


@pytest.mark.parametrize("kind", ["rope", "rope_i", "rope_thd"])
def test_ops_rope_fast_vs_slow_and_per_batch_tables(kind):
    re = candle_nn.rotary_emb
    fast = {"rope": re.rope, "rope_i": re.rope_i, "rope_thd": re.rope_thd}[kind]
    slow = re.rope_i_slow if kind == "rope_i" else re.rope_slow
    thd = kind == "rope_thd"
    rng = np.random.default_rng(299792458)
    (b_size, num_head, seq_len, head_dim) = (2, 5, 10, 16)
    src = Tensor.from_vec(rng.random(b_size * num_head * seq_len * head_dim, dtype=F32),
                          (b_size, num_head, seq_len, head_dim), CPU)  # fmt: skip

    def table():
        return Tensor.from_vec(rng.random(seq_len * head_dim // 2, dtype=F32), (seq_len, head_dim // 2), CPU)

    cos, sin = table(), table()
    s = src.transpose(1, 2).contiguous() if thd else src
    rope1 = fast(s, cos, sin).transpose(1, 2) if thd else fast(s, cos, sin)
    assert (rope1 - slow(src, cos, sin)).abs().sum_all().to_vec0() < 1e-4
    cos2, sin2 = table(), table()
    r1 = fast(s.i(slice(0, 1)), cos, sin)
    r2 = fast(s.i(slice(1, 2)), cos2, sin2)
    both = fast(s, Tensor.stack([cos, cos2], 0), Tensor.stack([sin, sin2], 0))
    assert (both - Tensor.cat([r1, r2], 0)).abs().sum_all().to_vec0() == 0.0


def test_ops_sigmoid():
    tensor = Tensor.new(DATA, CPU)
    s2 = 1.0 / (1.0 + tensor.neg().exp())
    assert (ops.sigmoid(tensor) - s2).abs().sum_all().to_vec0() < 1e-6


# ------------------------------------------------------------------------------------------------
# candle-nn/tests/layer_norm.rs, group_norm.rs, batch_norm.rs
# ------------------------------------------------------------------------------------------------
def test_layer_norm():
    w = Tensor.new([3.0], CPU)
    b = Tensor.new([0.5], CPU)
    ln2 = LayerNorm.new(Tensor.cat([w, w], 0), Tensor.cat([b, b], 0), 1e-8)
    ln3 = LayerNorm.new(Tensor.cat([w, w, w], 0), Tensor.cat([b, b, b], 0), 1e-8)
    ln = LayerNorm.new(w, b, 1e-8)
    assert ln.eps == 1e-8 and ln.remove_mean  # Candle: ln.eps(), ln.remove_mean()
    assert ln.forward(Tensor.new([[[2.0]]], CPU)).flatten_all().to_vec1() == [0.5]
    assert ln2.forward(Tensor.new([[[4.0, 0.0]]], CPU)).to_vec3() == [[[3.5, -2.5]]]
    res = ln3.forward(Tensor.new([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [9.0, 8.0, 7.0]]], CPU))
    np.testing.assert_array_equal(_round(res.to_vec3(), 4), np.asarray(
        [[[-3.1742, 0.5, 4.1742], [-3.1742, 0.5, 4.1742], [4.1742, 0.5, -3.1742]]], F32))
    mean = res.sum_keepdim(2) / 3.0
    np.testing.assert_array_equal(_round(mean.to_vec3(), 4), np.asarray([[[0.5], [0.5], [0.5]]], F32))
    std = res.broadcast_sub(mean).sqr().sum_keepdim(2).sqrt() / 3.0
    np.testing.assert_array_equal(_round(std.to_vec3(), 4), np.asarray([[[1.7321], [1.7321], [1.7321]]], F32))
    rms = LayerNorm.rms_norm(Tensor.new([1.0], CPU), 1e-5)
    assert rms.eps == 1e-5 and not rms.remove_mean


GN_INPUT = [
    [[-0.3034, 0.2726, -0.9659], [-1.1845, -1.3236, 0.0172], [1.9507, 1.2554, -0.8625],
     [1.0682, 0.3604, 0.3985], [-0.4957, -0.4461, -0.9721], [1.5157, -0.1546, -0.5596]],
    [[-1.6698, -0.4040, -0.7927], [0.3736, -0.0975, -0.1351], [-0.9461, 0.5461, -0.6334],
     [-1.0919, -0.1158, 0.1213], [-0.9535, 0.1281, 0.4372], [-0.2845, 0.3488, 0.5641]],
]  # fmt: skip


def test_group_norm():
    w = Tensor.from_vec([1.0] * 6, 6, CPU)
    b = Tensor.from_vec([0.0] * 6, 6, CPU)
    gn2 = GroupNorm.new(w.clone(), b.clone(), 6, 2, 1e-5)
    gn3 = GroupNorm.new(w, b, 6, 3, 1e-5)
    inp = Tensor.new(GN_INPUT, CPU)
    np.testing.assert_array_equal(_round(gn2.forward(inp).to_vec3(), 4), np.asarray([
        [[-0.1653, 0.3748, -0.7866], [-0.9916, -1.1220, 0.1353], [1.9485, 1.2965, -0.6896],
         [1.2769, 0.3628, 0.4120], [-0.7427, -0.6786, -1.3578], [1.8547, -0.3022, -0.8252]],
        [[-1.9342, 0.0211, -0.5793], [1.2223, 0.4945, 0.4365], [-0.8163, 1.4887, -0.3333],
         [-1.7960, -0.0392, 0.3875], [-1.5469, 0.3998, 0.9561], [-0.3428, 0.7970, 1.1845]]], F32))  # fmt: skip
    np.testing.assert_array_equal(_round(gn3.forward(inp).to_vec3(), 4), np.asarray([
        [[0.4560, 1.4014, -0.6313], [-0.9901, -1.2184, 0.9822], [1.4254, 0.6360, -1.7682],
         [0.4235, -0.3800, -0.3367], [-0.3890, -0.3268, -0.9862], [2.1325, 0.0386, -0.4691]],
        [[-1.8797, 0.0777, -0.5234], [1.2802, 0.5517, 0.4935], [-1.0102, 1.5327, -0.4773],
         [-1.2587, 0.4047, 0.8088], [-1.9074, 0.1691, 0.7625], [-0.6230, 0.5928, 1.0061]]], F32))  # fmt: skip


BN_INPUT = [
    -0.7493, -1.0410, 1.6977, -0.6579, 1.7982, -0.0087, 0.2812, -0.1190, 0.2908, -0.5975,
    -0.0278, -0.2138, -1.3130, -1.6048, -2.2028, 0.9452, 0.4002, 0.0831, 1.0004, 0.1860,
    0.5004, 0.5539, 0.9991, -0.2540, -0.0703, -0.3752, -0.1096, -0.2374, 1.0258, -2.2208,
    -0.0257, 0.6073, -1.1627, -0.0964, -1.9718, 1.6577, 0.1931, -0.3692, -0.8011, 0.9059,
    0.4797, 0.6521, -0.0165, -0.6683, -0.4148, 2.0649, -0.8276, 1.7947, -0.2061, 0.5812,
    -1.3598, 1.6192, 1.0466, -0.4423, 0.4202, 0.1749, 0.6969, 0.2616, -0.0369, -1.4951,
    -0.0814, -0.1877, 0.0267, 0.6150, 0.2402, -1.1440, -2.0068, 0.6032, -2.6639, 0.8260,
    0.1085, -0.1693, 1.2805, 0.7654, -0.4930, 0.3770, 1.1309, 0.2303, 0.2949, -0.2634, -0.5225,
    0.4269, 0.6341, 1.5736, 0.9827, -1.2499, 0.3509, -1.6243, -0.8123, 0.7634, -0.3047, 0.0143,
    -0.4032, 0.0537, 0.7022, 0.8405, -1.2221, -1.6847, -0.0714, -0.1608, 0.5579, -1.5858,
    0.4617, -0.6480, 0.1332, 0.0419, -0.9784, 0.4173, 1.2313, -1.9046, -0.1656, 0.1259, 0.0763,
    1.4252, -0.9115, -0.1093, -0.3100, -0.6734, -1.4357, 0.9205,
]  # fmt: skip
BN_OUTPUT = [
    -0.6391, -0.9414, 1.8965, -0.5444, 2.0007, 0.1283, 0.4287, 0.014, 0.4387, -0.4818,
    0.1085, -0.0842, -1.6809, -2.0057, -2.6714, 0.8328, 0.2262, -0.1268, 0.8943, -0.0123,
    0.3377, 0.3973, 0.8928, -0.5021, 0.0861, -0.2324, 0.0451, -0.0884, 1.2311, -2.1603,
    0.1327, 0.7939, -1.055, 0.0589, -1.9002, 1.8912, 0.2918, -0.3253, -0.7993, 1.0741,
    0.6063, 0.7955, 0.0617, -0.6536, -0.3754, 2.3461, -0.8284, 2.0495, -0.201, 0.6476,
    -1.4446, 1.7665, 1.1493, -0.4556, 0.4741, 0.2097, 0.7723, 0.3031, -0.0186, -1.5905,
    0.053, -0.0572, 0.165, 0.7746, 0.3862, -1.0481, -1.9422, 0.7624, -2.6231, 0.9933,
    0.2498, -0.0381, 1.2061, 0.6327, -0.7681, 0.2004, 1.0396, 0.037, 0.109, -0.5125,
    -0.8009, 0.2559, 0.4865, 1.5324, 1.1861, -1.1461, 0.5261, -1.5372, -0.689, 0.957,
    -0.1587, 0.1745, -0.2616, 0.2156, 0.8931, 1.0375, -1.2614, -1.7691, 0.0015, -0.0966,
    0.6921, -1.6605, 0.5866, -0.6313, 0.226, 0.1258, -0.9939, 0.5378, 1.3484, -2.0319,
    -0.1574, 0.1568, 0.1034, 1.5574, -0.9614, -0.0967, -0.313, -0.7047, -1.5264, 1.0134,
]  # fmt: skip


def test_batch_norm_literal_forward_train_raises_naming_forward_t():
    bn = BatchNorm.new_no_bias(5, Tensor.zeros(5, DType.F32, CPU), Tensor.ones(5, DType.F32, CPU), 1e-8)
    inp = Tensor.new(BN_INPUT, CPU).reshape((2, 5, 3, 4))
    output = bn.forward_train(inp)  # Candle: the output (running statistics updated in place)
    with pytest.raises(errors.Error, match=r"bn\.forward_t\(x, True\)"):
        output.dims()
    with pytest.raises(errors.InPlaceStatement, match=r"bn\.forward_t\(x, True\)"):
        bn.forward_train(inp)
    assert bn.running_mean().to_vec1() == [0.0] * 5


def test_batch_norm_with_forward_t_train():
    running_mean = Tensor.zeros(5, DType.F32, CPU)
    running_var = Tensor.ones(5, DType.F32, CPU)
    bn = BatchNorm.new_no_bias(5, running_mean.clone(), running_var.clone(), 1e-8)
    inp = Tensor.new(BN_INPUT, CPU).reshape((2, 5, 3, 4))
    output = bn.forward_t(inp, True)
    assert output.dims() == [2, 5, 3, 4]
    output = output.flatten_all()
    np.testing.assert_array_equal(_round(output.to_vec1(), 4), np.asarray(BN_OUTPUT, F32))
    bn2 = BatchNorm.new(5, running_mean, running_var, Tensor.new([0.5], CPU).broadcast_as(5),
                        Tensor.new([-1.5], CPU).broadcast_as(5), 1e-8)  # fmt: skip
    output2 = bn2.forward_t(inp, True).flatten_all()
    sum_diff2 = ((output2 - (output * 0.5)) + 1.5).sqr().sum_keepdim(0)
    np.testing.assert_array_equal(_round(sum_diff2.to_vec1(), 4), np.asarray([0.0], F32))
    np.testing.assert_array_equal(_round(bn.running_mean().to_vec1(), 4),
                                  np.asarray([-0.0133, 0.0197, -0.0153, -0.0073, -0.0020], F32))  # fmt: skip
    np.testing.assert_array_equal(_round(bn.running_var().to_vec1(), 4),
                                  np.asarray([0.9972, 0.9842, 0.9956, 0.9866, 0.9898], F32))  # fmt: skip


def test_train_batch_norm_updates_reach_the_varmap(tmp_path):
    vm = VarMap.new()
    vb = VarBuilder.from_varmap(vm, DType.F32, CPU)
    bn = batch_norm(1, BatchNormConfig.default(), vb)
    original_mean = bn.running_mean().detach().copy()
    var_map_mean = vm.data()["running_mean"].clone()
    assert bn.running_mean().to_vec1() == var_map_mean.as_tensor().to_vec1()
    mean_plus_one = original_mean.add(original_mean.ones_like()).reshape((1, 1))
    bn.forward_t(mean_plus_one, True)
    assert bn.running_mean().to_vec1() != original_mean.to_vec1()
    assert bn.running_mean().to_vec1() == var_map_mean.as_tensor().to_vec1()
    vm.save(tmp_path / "bn.safetensors")
    assert cj.safetensors.load(tmp_path / "bn.safetensors")["running_mean"].to_vec1() == bn.running_mean().to_vec1()
    opt = AdamW.new(vm.all_vars(), ParamsAdamW(lr=0.1))  # running statistics are skipped, as in Candle
    assert {v.name for v in opt.vars} == {"weight", "bias"}


# ------------------------------------------------------------------------------------------------
# candle-nn/tests/kv_cache.rs, one_hot.rs, loss.rs
# ------------------------------------------------------------------------------------------------
def test_kv_cache_literal_statements_raise_naming_the_rebinding():
    cache = candle_nn.kv_cache.Cache.new(0, 16)
    with pytest.raises(errors.InPlaceStatement, match=r"data, cache = cache\.append\(x\)"):
        cache.append(Tensor.new([1.0, 2.0, 3.0], CPU))
    with pytest.raises(errors.InPlaceStatement, match=r"cache = cache\.reset\(\)"):
        cache.reset()
    kv = candle_nn.KvCache.new(0, 4)
    with pytest.raises(errors.InPlaceStatement, match=r"\(k, v\), cache = cache\.append\(k, v\)"):
        kv.append(Tensor.ones((1, 2)), Tensor.ones((1, 2)))
    rot = candle_nn.kv_cache.RotatingCache.new(0, 6)
    _, rot = rot.append(Tensor.new([1.0, 2.0, 3.0], CPU))
    with pytest.raises(errors.Error, match="True = \\*visible\\*"):
        rot.attn_mask(2, CPU)  # Candle's u8 mask is 1 = masked


def test_kv_cache():
    cache = candle_nn.kv_cache.Cache.new(0, 16)
    for _ in [0, 1]:
        assert cache.current_seq_len() == 0
        assert cache.current_data() is None
        _, cache = cache.append(Tensor.new([1.0, 2.0, 3.0], CPU))
        assert cache.current_data().to_vec1() == [1.0, 2.0, 3.0]
        _, cache = cache.append(Tensor.new([4.0], CPU))
        assert cache.current_data().to_vec1() == [1.0, 2.0, 3.0, 4.0]
        _, cache = cache.append(Tensor.new([0.0, 5.0, 6.0, 7.0], CPU))
        assert cache.current_data().to_vec1() == [1.0, 2.0, 3.0, 4.0, 0.0, 5.0, 6.0, 7.0]
        assert cache.current_seq_len() == 8
        cache = cache.reset()


def test_one_hot():
    from candlejax.nn.encoding import one_hot

    indices = Tensor.new([[0, 2], [1, -1]], CPU)
    oh = one_hot(indices, 4, 1.0, 0.0)
    assert oh.dims() == [2, 2, 4] and oh.dtype == DType.F32
    assert oh.to_vec3() == [[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]], [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]
    one_cold = one_hot(indices, 4, 0, 1)
    assert one_cold.to_vec3() == [[[0, 1, 1, 1], [1, 1, 0, 1]], [[1, 0, 1, 1], [1, 1, 1, 1]]]
    indices = Tensor.new([[[0, 1], [2, 3]], [[3, 1], [1, -1]]], CPU)
    oh = one_hot(indices, 4, 1.0, 0.0)
    assert oh.dims() == [2, 2, 2, 4]
    assert oh.get(1).to_vec3() == [[[0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0, 0.0], [0.0] * 4]]


def test_loss_nll_cross_entropy_bce_huber():
    inp = Tensor.new([[1.1050, 0.3013, -1.5394, -2.1528, -0.8634], [1.0730, -0.9419, -0.1670, -0.6582, 0.5061],
                      [0.8318, 1.1154, -0.3610, 0.5351, 1.0830]], CPU)  # fmt: skip
    target = Tensor.new([1, 0, 4], CPU)  # Candle: &[1u32, 0, 4]
    assert target.dtype == DType.U32
    assert _round(loss.nll(ops.log_softmax(inp, 1), target).to_vec0(), 4) == F32(1.1312)
    assert _round(loss.cross_entropy(inp, target).to_vec0(), 4) == F32(1.1312)
    x = Tensor.new([[2.3611, -0.8813, -0.5006, -0.2178], [0.0419, 0.0763, -1.0457, -1.6692],
                    [-1.0494, 0.8111, 1.5723, 1.2315], [1.3081, 0.6641, 1.1802, -0.2547],
                    [0.5292, 0.7636, 0.3692, -0.8318]], CPU)  # fmt: skip
    t = Tensor.new([[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0],
                    [0.0, 0.0, 1.0, 0.0]], CPU)  # fmt: skip
    assert _round(loss.binary_cross_entropy_with_logit(x, t).to_vec0(), 4) == F32(0.8224)
    assert _round(loss.huber(x, t, 1.0).to_vec0(), 4) == F32(0.4734)
    assert _round(loss.huber(x, t, 0.88).to_vec0(), 4) == F32(0.4483)


def test_dims_equal_lists_as_in_rust():
    t = Tensor.zeros((2, 3), DType.F32, CPU)
    assert t.dims() == [2, 3] and t.dims() == (2, 3) and [2, 3] == t.dims() and t.dims() != [3, 2]
    assert hash(t.dims()) == hash((2, 3))


# ------------------------------------------------------------------------------------------------
# candle-transformers/tests/generation_tests.rs: the same seed draws Candle's tokens
# ------------------------------------------------------------------------------------------------
def test_generation_sample_with_zero_temperature():
    from candlejax.generation import LogitsProcessor

    logits_process = LogitsProcessor.new(1337, None, None)
    logits = Tensor.new([0.1, 0.2, 0.3, 0.4], CPU)
    assert logits_process.sample(logits) == 3


def test_generation_sample_with_temperature_top_p_and_top_k():
    from candlejax.generation import LogitsProcessor, Sampling

    logits = Tensor.new([0.1, 0.2, 0.3, 0.4], CPU)
    assert LogitsProcessor.new(42, 0.9, None).sample(logits) == 0
    assert LogitsProcessor.new(42, 1.0, 0.5).sample(logits) == 2
    assert LogitsProcessor.from_sampling(42, Sampling.TopK(k=1, temperature=1.0)).sample(logits) == 3
    logits_process = LogitsProcessor.from_sampling(42, Sampling.TopK(k=2, temperature=1.0))
    assert logits_process.sample(logits) == 3
    assert logits_process.sample(logits) == 2


def test_generation_sample_gumbel_follows_the_softmax():
    from candlejax.generation import LogitsProcessor, Sampling

    logits_process = LogitsProcessor.from_sampling(42, Sampling.GumbelSoftmax(temperature=1.0))
    logits = Tensor.new([-1.0, 0.0, 0.2, 1.0], CPU)
    sm = candle_nn.ops.softmax(logits, 0).to_vec1()
    samples = 2000  # Candle draws 100,000; 2,000 keep the 0.05 tolerance at > 4 standard deviations
    counts = np.bincount([logits_process.sample(logits) for _ in range(samples)], minlength=4) / samples
    assert np.abs(counts - np.asarray(sm)).max() <= 0.05, (counts, sm)


def test_generation_stream_matches_a_host_replica_of_rands_weighted_index():
    # draw n of seed s is word n of StdRng::seed_from_u64(s); WeightedIndex<f32> turns it into a
    # point in [0, total) and counts the running sums at or below it
    from candlejax.generation import LogitsProcessor
    from candlejax.generation.candle_rng import StdRng, weighted_index

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(40, 7)).astype(F32)
    host = StdRng.seed_from_u64(7)
    lp = LogitsProcessor.new(7, 1.0, None)
    for n, row in enumerate(logits):
        e = np.exp(row - row.max())
        p = (e / e.sum()).astype(F32)
        assert lp.sample(Tensor.new(row, CPU)) == weighted_index(p, host.next_u32()), n


def test_layer_accessor_calls_as_in_rust():
    # Rust reads a layer's settings through methods: ln.eps(), bn.momentum(), conv.config()
    vm = VarMap()
    vb = VarBuilder.from_varmap(vm, DType.F32, CPU)
    ln = candle_nn.layer_norm(4, 1e-5, vb.pp("ln"))
    assert ln.eps() == ln.eps == 1e-5 and isinstance(ln.eps(), float)
    assert candle_nn.rms_norm(4, 1e-6, vb.pp("rms")).eps() == 1e-6
    bn = batch_norm(4, BatchNormConfig.default(), vb.pp("bn"))
    assert (bn.eps(), bn.momentum()) == (1e-5, 0.1)
    w, b = bn.weight_and_bias()
    assert w.dims() == [4] and b.dims() == [4]
    assert BatchNorm(4, Tensor.zeros((4,)), Tensor.ones((4,)), None, None, 1e-5).weight_and_bias() is None
    cfg = candle_nn.Conv2dConfig(padding=1, stride=2, dilation=1, groups=1)
    conv = candle_nn.conv2d(3, 4, 3, cfg, vb.pp("conv"))
    assert conv.config() == cfg and conv.config().stride == 2
    x = Tensor.ones((2, 4))
    assert ln.forward(x).dims() == [2, 4]  # the float settings still work as numbers inside the layer


def test_candle_transformers_module_paths(tmp_path):
    # `use candle_transformers::{generation, quantized_nn, quantized_var_builder}` ported as imports
    from candlejax.io import gguf
    from candlejax.models import generation, quantized_nn, quantized_var_builder
    from candlejax.quantized import QTensor

    assert generation.LogitsProcessor.new(1337, None, None).sample(Tensor.new([0.1, 0.2, 0.3, 0.4], CPU)) == 3
    table = np.random.default_rng(0).normal(size=(8, 32)).astype(F32)
    w = np.random.default_rng(1).normal(size=(4, 32)).astype(F32)
    path = tmp_path / "t.gguf"
    gguf.write(str(path), {}, {"tok.weight": QTensor.quantize(Tensor.new(table), "q8_0"),
                               "fc.weight": QTensor.quantize(Tensor.new(w), "q8_0")})  # fmt: skip
    vb = quantized_var_builder.VarBuilder.from_gguf(str(path), CPU)
    emb = quantized_nn.Embedding.new(8, 32, vb.pp("tok"))
    full = emb.embeddings()
    assert full.dims() == [8, 32]
    np.testing.assert_allclose(np.asarray(full), table, atol=0.03)  # q8_0 of N(0, 1) values
    lin = quantized_nn.linear_no_bias(32, 4, vb.pp("fc"))
    assert isinstance(lin, quantized_nn.Linear)
    x = Tensor.new(table[:2])
    np.testing.assert_allclose(np.asarray(lin.forward(x)), table[:2] @ w.T, atol=0.3)


def test_shape_contiguity_checks_as_candle():
    s = cj.Shape((2, 3, 4))
    assert s.stride_contiguous() == [12, 4, 1]
    assert s.is_contiguous([12, 4, 1]) and not s.is_contiguous([1, 2, 6]) and not s.is_contiguous([4, 1])
    assert s.is_fortran_contiguous([1, 2, 6]) and not s.is_fortran_contiguous([12, 4, 1])
    assert cj.Shape((2, 1, 4)).is_contiguous([4, 99, 1])  # a size-1 dim's stride is free
    t = Tensor.zeros((2, 3, 4), DType.F32, CPU)
    assert t.shape().is_contiguous(t.stride())


def test_kv_cache_accessor_calls_as_in_rust():
    from candlejax.nn import kv_cache

    for cache in (kv_cache.Cache.new(2, 16), kv_cache.KvCache.new(2, 16), kv_cache.RotatingKvCache.new(2, 8)):
        assert cache.dim() == cache.dim == 2
        assert cache.max_seq_len() == cache.max_seq_len in (8, 16)
    assert kv_cache.ConcatKvCache.new(2).dim() == 2


def test_blip_config_fields_as_candles():
    import json

    from transformers import BlipConfig

    from candlejax.models import blip, blip_text

    cfg = blip.Config.from_dict(json.loads(BlipConfig().to_json_string()))
    assert (cfg.projection_dim, cfg.image_text_hidden_size) == (512, 256)
    assert cfg.vision_config.projection_dim == 512
    assert cfg.text_config.projection_dim == 768 and cfg.text_config.is_decoder
    large = blip.Config.image_captioning_large()
    dims = (large.projection_dim, large.vision_config.projection_dim, large.text_config.projection_dim)
    assert dims == (512, 512, 768)
    with pytest.raises(errors.Error, match="is_decoder=False"):
        blip_text.Config(is_decoder=False)
