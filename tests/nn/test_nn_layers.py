"""Every layer against torch.nn with the same weights and inputs: forward values and gradients
(of the parameters, by checkpoint name, and of the input)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import candlejax.nn as nn
from candlejax import Device, DType, errors
from candlejax.nn import Var, VarBuilder, named_vars
from candlejax.transforms import jit, value_and_grad

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _vb(tmod, prefix="l"):
    sd = {f"{prefix}.{k}": v.detach().numpy().copy() for k, v in tmod.state_dict().items()}
    return VarBuilder.from_tensors(sd, DType.F32, Device.Cpu).pp(prefix)


def check(layer, tmod, x, fwd=None, tfwd=None, atol=1e-5, rtol=1e-4, input_grad=True, prefix="l"):
    """Compare forward and gradients of sum(out * r) w.r.t. every parameter and the input."""
    fwd = fwd or (lambda m, xv: m(xv))
    tfwd = tfwd or (lambda m, tx: m(tx))
    tmod.zero_grad()
    tx = torch.tensor(x, requires_grad=input_grad and np.issubdtype(x.dtype, np.floating))
    tout = tfwd(tmod, tx)
    r = np.random.default_rng(1).standard_normal(tuple(tout.shape)).astype(np.float32)
    (tout * torch.tensor(r)).sum().backward()

    xin = Var(x, "input") if tx.requires_grad else jnp.asarray(x)

    def f(tree):
        m, xv = tree
        out = fwd(m, xv)
        return jnp.sum(out._a * r), out

    (_, out), grads = jit(value_and_grad(f, has_aux=True))((layer, xin))
    np.testing.assert_allclose(np.asarray(out._a), tout.detach().numpy(), atol=atol, rtol=rtol)
    g = named_vars(grads)
    for name, p in tmod.named_parameters():
        np.testing.assert_allclose(
            np.asarray(g[f"{prefix}.{name}"]._a), p.grad.numpy(), atol=atol * 10, rtol=rtol * 10, err_msg=name
        )
    if tx.requires_grad:
        np.testing.assert_allclose(np.asarray(g["input"]._a), tx.grad.numpy(), atol=atol * 10, rtol=rtol * 10)
    return out


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 5), (2, 2, 3, 5)])
def test_linear(shape):
    t = torch.nn.Linear(5, 4)
    check(nn.linear(5, 4, _vb(t)), t, _x(*shape))


def test_linear_no_bias_and_constructors():
    t = torch.nn.Linear(5, 4, bias=False)
    lin = nn.linear_no_bias(5, 4, _vb(t))
    assert lin.bias is None
    check(lin, t, _x(3, 5))
    w = Var(t.weight.detach().numpy(), "w")
    assert nn.Linear.new(w, None).weight is w
    assert nn.linear_b(5, 4, False, _vb(t)).bias is None


def test_linear_rejects_rank_1_and_5():
    lin = nn.Linear(Var(np.zeros((4, 5), np.float32), "enc.fc.weight"))
    with pytest.raises(nn.LayerInputShape, match=r"Linear 'enc.fc'.*expected: \[batch, 5\]"):
        lin(jnp.zeros((5,)))
    with pytest.raises(nn.LayerInputShape):
        lin(jnp.zeros((1, 1, 1, 1, 5)))


def test_embedding():
    t = torch.nn.Embedding(10, 6)
    ids = np.array([[1, 2, 9], [0, 0, 3]], np.int64)
    emb = nn.embedding(10, 6, _vb(t))
    assert emb.hidden_size() == 6
    out = check(emb, t, ids.astype(np.uint32), tfwd=lambda m, tx: m(tx.long()), input_grad=False)
    assert out.shape == (2, 3, 6)
    with pytest.raises(Exception, match="invalid index 10"):
        emb(jnp.array([10], jnp.uint32))


def test_check_token_ids():
    from candlejax import Tensor, errors

    nn.check_token_ids([[1, 2], [0, 9]], 10, "ids")
    nn.check_token_ids(Tensor(np.array([3], np.uint32)), 10, "ids")
    nn.check_token_ids([], 10, "ids")
    with pytest.raises(errors.InvalidIndex, match="ids invalid index 10 with dim size 10"):
        nn.check_token_ids(np.array([1, 10]), 10, "ids")
    with pytest.raises(errors.InvalidIndex, match="invalid index -1"):
        nn.check_token_ids([0, -1], None, "ids")
    with pytest.raises(errors.UnexpectedDType, match="ids must be integers"):
        nn.check_token_ids([1.9, 2.5], 10, "ids")
    with pytest.raises(errors.Error, match=r"ids: rows of different lengths \[3, 2\]"):  # numpy's ValueError
        nn.check_token_ids([[1, 2, 3], [1, 2]], 10, "ids")
    # traced: the dtype is checked, the values cannot be
    jax.jit(lambda a: nn.check_token_ids(a, 2, "ids") or a)(jnp.array([5], jnp.int32))
    with pytest.raises(errors.UnexpectedDType):
        jax.jit(lambda a: nn.check_token_ids(a, 2, "ids") or a)(jnp.array([1.0]))


@pytest.mark.parametrize(
    "cfg",
    [dict(), dict(padding=1, stride=2), dict(dilation=2, padding=2), dict(groups=2, padding=1)],
    ids=["plain", "pad-stride", "dilation", "groups"],
)
def test_conv1d(cfg):
    t = torch.nn.Conv1d(4, 6, 3, **cfg)
    check(nn.conv1d(4, 6, 3, nn.Conv1dConfig(**cfg), _vb(t)), t, _x(2, 4, 9))


@pytest.mark.parametrize("cfg", [dict(), dict(padding=1, stride=2, groups=2)], ids=["plain", "pad-stride-groups"])
def test_conv2d(cfg):
    t = torch.nn.Conv2d(4, 6, 3, **cfg)
    check(nn.conv2d(4, 6, 3, nn.Conv2dConfig(**cfg), _vb(t)), t, _x(2, 4, 7, 6))


class _Convs(nn.Module):
    def __init__(self, vb):
        self.convs = [
            nn.conv2d(3, 8, 3, nn.Conv2dConfig(padding=1, stride=2), vb.pp("a")),  # 3x3, strided
            nn.conv2d(8, 8, 1, nn.Conv2dConfig(), vb.pp("b")),  # 1x1: its own path
            nn.conv2d(8, 8, 3, nn.Conv2dConfig(padding=1, groups=8), vb.pp("c")),  # depthwise: its own path
            nn.conv2d_no_bias(8, 6, 5, nn.Conv2dConfig(padding=4, dilation=2), vb.pp("d")),  # dilated, no bias
            nn.conv2d(6, 6, 3, nn.Conv2dConfig(padding=(1, 2), stride=(1, 2)), vb.pp("f")),  # (h, w) pairs
        ]
        self.head = {"last": nn.conv2d(6, 4, 3, nn.Conv2dConfig(groups=2), vb.pp("e"))}  # grouped: its own path

    def forward(self, x):
        for c in self.convs:
            x = c(x).relu()
        return self.head["last"](x)


def test_hwio_kernels_give_the_same_outputs_and_follow_new_weights():
    import jax

    from candlejax.nn.conv import hwio_kernels, with_hwio_kernels

    varmap = nn.VarMap()
    net = _Convs(VarBuilder.from_varmap(varmap, DType.F32, Device.Cpu))
    x = _x(2, 3, 9, 10)
    ks = hwio_kernels(net)
    assert [k is None for k in ks] == [False, True, True, False, False, True]
    assert ks[0].shape == (3, 3, 3, 8) and ks[3].shape == (5, 5, 8, 6)
    assert hwio_kernels(net)[0] is ks[0]  # one copy per weight array
    fwd = jax.jit(lambda m, k, x: with_hwio_kernels(m, k).forward(x).jax)
    np.testing.assert_array_equal(np.asarray(fwd(net, ks, x)), np.asarray(net.forward(jnp.asarray(x)).jax))
    # new weights (as a loaded checkpoint or a training step gives) get new kernels
    net2 = net.load_state_dict({k: np.asarray(v.jax) * 2 for k, v in net.named_tensors().items()})
    ks2 = hwio_kernels(net2)
    assert ks2[0] is not ks[0]
    # load_state_dict on a model traced by jax.jit (was JAX's ConcretizationTypeError from devices())
    sd = {k: v.jax * 2 for k, v in net.named_tensors().items()}
    swapped = jax.jit(lambda m, d, x: m.load_state_dict(d).forward(x).jax)(net, sd, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(swapped), np.asarray(net2.forward(jnp.asarray(x)).jax), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(fwd(net2, ks2, x)), np.asarray(net2.forward(jnp.asarray(x)).jax),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    # inside a transformation the kernels are transposed in the program (nothing cached)
    inner = jax.jit(lambda m, x: with_hwio_kernels(m, hwio_kernels(m)).forward(x).jax)
    np.testing.assert_array_equal(np.asarray(inner(net, x)), np.asarray(fwd(net, ks, x)))
    with pytest.raises(Exception, match="fewer kernels than Conv2d layers"):
        with_hwio_kernels(net, ks[:2])
    with pytest.raises(Exception, match="more kernels than Conv2d layers"):
        with_hwio_kernels(net, [*ks, None])
    with pytest.raises(Exception, match=r"kernel \(5, 5, 8, 6\) does not fit Conv2d 'a' \(8, 3, 3, 3\)"):
        with_hwio_kernels(net, [ks[3], *ks[1:]])  # a kernel in the wrong place


def test_conv2d_no_bias_and_bad_input():
    t = torch.nn.Conv2d(3, 2, 3, bias=False)
    conv = nn.conv2d_no_bias(3, 2, 3, nn.Conv2dConfig(), _vb(t, "backbone.conv1"))
    check(conv, t, _x(1, 3, 5, 5), prefix="backbone.conv1")
    with pytest.raises(nn.LayerInputShape, match=r"Conv2d 'backbone.conv1'.*\[batch, 3, H, W\].*\[1, 4, 5, 5\]"):
        conv(jnp.zeros((1, 4, 5, 5)))


@pytest.mark.parametrize(
    "cfg",
    [dict(), dict(stride=2, padding=1, output_padding=1), dict(dilation=2, groups=2), dict(stride=3, padding=2)],
    ids=["plain", "stride-outpad", "dilation-groups", "stride3"],
)
def test_conv_transpose1d(cfg):
    t = torch.nn.ConvTranspose1d(4, 6, 3, **cfg)
    check(nn.conv_transpose1d(4, 6, 3, nn.ConvTranspose1dConfig(**cfg), _vb(t)), t, _x(2, 4, 7))


@pytest.mark.parametrize("cfg", [dict(), dict(stride=2, padding=1, output_padding=1, dilation=2)], ids=["plain", "all"])
def test_conv_transpose2d(cfg):
    t = torch.nn.ConvTranspose2d(3, 5, 3, **cfg)
    check(nn.conv_transpose2d(3, 5, 3, nn.ConvTranspose2dConfig(**cfg), _vb(t)), t, _x(2, 3, 5, 4))


def _randomize(t):
    with torch.no_grad():
        for p in t.parameters():
            p.copy_(torch.randn_like(p))
    return t


def test_layer_norm():
    t = _randomize(torch.nn.LayerNorm(8, eps=1e-5))
    check(nn.layer_norm(8, nn.LayerNormConfig(), _vb(t)), t, _x(2, 3, 8))
    check(nn.layer_norm(8, 1e-5, _vb(t)), t, _x(4, 8))


def test_rms_norm():
    t = _randomize(torch.nn.RMSNorm(8, eps=1e-6))
    check(nn.rms_norm(8, 1e-6, _vb(t)), t, _x(2, 3, 8))


def test_layer_norm_half_precision_keeps_dtype():
    ln = nn.LayerNorm(Var(np.ones(8, np.float32)).as_tensor(), None, 1e-5)
    ln = ln.to_dtype(DType.BF16)
    out = ln(jnp.asarray(_x(2, 8), jnp.bfloat16))
    assert out.dtype == DType.BF16


def test_group_norm():
    t = _randomize(torch.nn.GroupNorm(2, 6))
    check(nn.group_norm(2, 6, 1e-5, _vb(t)), t, _x(3, 6, 4, 2))
    with pytest.raises(Exception, match=r"num_groups \(4\) must divide num_channels \(6\)"):
        nn.group_norm(4, 6, 1e-5, VarBuilder.zeros())
    with pytest.raises(Exception, match="at least 3"):
        nn.group_norm(2, 6, 1e-5, _vb(t))(jnp.zeros((2, 6)))


def test_batch_norm_train_eval_and_running_stats():
    t = _randomize(torch.nn.BatchNorm2d(3, momentum=0.1))
    bn = nn.batch_norm(3, nn.BatchNormConfig(), _vb(t))
    assert set(bn.named_vars()) == {"l.weight", "l.bias"}
    assert set(bn.named_buffers()) == {"l.running_mean", "l.running_var"}
    x = _x(4, 3, 5, 5)
    # training mode: batch statistics (forward + gradients), running stats updated functionally
    t.train()
    check(bn, t, x, fwd=lambda m, xv: m(xv, train=True))
    t2 = _randomize(torch.nn.BatchNorm2d(3))
    bn2 = nn.batch_norm(3, nn.BatchNormConfig(), _vb(t2))
    t2.train()
    t2(torch.tensor(x))
    _y, bn2_new = bn2.forward_train(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(bn2_new.running_mean._a), t2.running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(bn2_new.running_var._a), t2.running_var.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn2.running_var._a), 1.0)  # the old layer is unchanged
    # eval mode with the updated statistics
    t2.eval()
    tout = t2(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(np.asarray(bn2_new(jnp.asarray(x))._a), tout, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn2_new.forward_t(jnp.asarray(x), False)._a), tout, atol=1e-5)


def test_batch_norm_1d_eval_grads():
    t = _randomize(torch.nn.BatchNorm1d(4)).eval()
    with torch.no_grad():
        t.running_mean.copy_(torch.randn(4))
        t.running_var.copy_(torch.rand(4) + 0.5)
    check(nn.batch_norm(4, 1e-5, _vb(t)), t, _x(5, 4))


def test_batch_norm_without_mean_removal_subtracts_the_running_mean_in_eval_as_candle():
    # Candle's forward_eval subtracts the running mean whatever remove_mean says; training with
    # remove_mean=False neither subtracts nor updates it, and absorb_bn folds it in
    rm, rv = np.array([0.5, -1.0, 2.0], np.float32), np.array([1.5, 0.5, 2.0], np.float32)
    w, b = np.array([1.0, 2.0, -1.0], np.float32), np.array([0.1, 0.0, -0.2], np.float32)
    bn = nn.BatchNorm(3, jnp.asarray(rm), jnp.asarray(rv), jnp.asarray(w), jnp.asarray(b), 1e-5, 0.1, remove_mean=False)
    x = _x(2, 3, 4, 4)
    shape = (1, 3, 1, 1)
    want = (x - rm.reshape(shape)) / np.sqrt(rv.reshape(shape) + 1e-5) * w.reshape(shape) + b.reshape(shape)
    np.testing.assert_allclose(np.asarray(bn(jnp.asarray(x))._a), want, rtol=1e-5, atol=1e-5)
    conv = nn.Conv2d(jnp.asarray(_x(3, 3, 1, 1)), None, nn.Conv2dConfig())
    folded = conv.absorb_bn(bn)
    np.testing.assert_allclose(
        np.asarray(folded(jnp.asarray(x))._a), np.asarray(bn(conv(jnp.asarray(x)))._a), rtol=1e-4, atol=1e-5
    )
    _y, trained = bn.forward_train(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(trained.running_mean._a), rm)


def test_prelu_scalar_with_several_values_raises_at_construction():
    with pytest.raises(errors.UnexpectedShape, match="is_scalar=True takes one value"):
        nn.PReLU(jnp.asarray([0.1, 0.2, 0.3], jnp.float32), True)


def test_prelu():
    t = torch.nn.PReLU(3)
    with torch.no_grad():
        t.weight.copy_(torch.tensor([0.1, 0.25, -0.5]))
    check(nn.prelu(3, _vb(t)), t, _x(2, 3, 4))
    ts = torch.nn.PReLU()
    check(nn.prelu(None, _vb(ts)), ts, _x(2, 3))


def test_lstm():
    t = torch.nn.LSTM(5, 7, batch_first=True)
    lstm = nn.lstm(5, 7, nn.LSTMConfig(), _vb(t))
    assert set(lstm.named_vars()) == {f"l.{n}" for n, _ in t.named_parameters()}
    check(lstm, t, _x(2, 6, 5), tfwd=lambda m, tx: m(tx)[0])
    states = lstm.seq(jnp.asarray(_x(2, 6, 5)))
    assert len(states) == 6
    seq_out = lstm.states_to_tensor(states)
    np.testing.assert_allclose(np.asarray(seq_out._a), np.asarray(lstm(jnp.asarray(_x(2, 6, 5)))._a), atol=1e-6)
    # step-by-step equals the scan
    st = lstm.zero_state(2)
    x = _x(2, 6, 5)
    for i in range(6):
        st = lstm.step(jnp.asarray(x[:, i]), st)
    np.testing.assert_allclose(np.asarray(st.h._a), np.asarray(states[-1].h._a), atol=1e-6)
    np.testing.assert_allclose(np.asarray(st.c._a), np.asarray(states[-1].c._a), atol=1e-6)


def test_lstm_names_layer_idx_direction():
    vb = VarBuilder.zeros()
    cfg = nn.LSTMConfig(layer_idx=1, direction=nn.Direction.Backward)
    m = nn.lstm(3, 4, cfg, vb)
    assert "weight_ih_l1_reverse" in m.named_vars()
    m = nn.lstm(3, 4, nn.LSTMConfig.default_no_bias(), vb)
    assert set(m.named_vars()) == {"weight_ih_l0", "weight_hh_l0"}


def test_gru():
    t = torch.nn.GRU(5, 7, batch_first=True)
    g = nn.gru(5, 7, nn.GRUConfig(), _vb(t))
    check(g, t, _x(2, 6, 5), tfwd=lambda m, tx: m(tx)[0])
    states = g.seq(jnp.asarray(_x(2, 6, 5)))
    assert g.states_to_tensor(states).shape == (2, 6 * 7)  # Candle's cat on dim 1


def test_rnn_states_and_inputs_are_checked_not_broadcast_or_promoted():
    """A state of another batch or shape, or an input of another dtype than the weights, raises
    (Candle's products neither broadcast nor promote); it used to broadcast or return f32."""
    from candlejax import errors

    vb = VarBuilder.zeros()
    g, lstm = nn.gru(3, 4, nn.GRUConfig(), vb.pp("g")), nn.lstm(3, 4, nn.LSTMConfig(), vb.pp("l"))
    x1, x2 = jnp.ones((1, 3)), jnp.ones((2, 3))
    with pytest.raises(errors.Error, match=r"GRU 'g' state.*expected: \[batch 1, 4\], got: \[2, 4\]"):
        g.step(x1, nn.GRUState(jnp.zeros((2, 4))))
    with pytest.raises(errors.Error, match=r"state.*got: \[4\]"):
        lstm.step(x2, nn.LSTMState(jnp.zeros((4,)), jnp.zeros((4,))))
    with pytest.raises(errors.Error, match=r"state.*expected: \[batch 2, 4\], got: \[3, 4\]"):
        lstm.seq_init(jnp.ones((2, 5, 3)), lstm.zero_state(3))
    with pytest.raises(errors.DTypeMismatchBinaryOp, match="lhs: I32, rhs: F32"):
        lstm(jnp.ones((1, 2, 3), jnp.int32))
    with pytest.raises(errors.DTypeMismatchBinaryOp, match="lhs: BF16, rhs: F32"):
        g(jnp.ones((1, 2, 3), jnp.bfloat16))
    with pytest.raises(errors.DTypeMismatchBinaryOp, match="GRU state"):
        g.step(x2, nn.GRUState(jnp.zeros((2, 4), jnp.bfloat16)))
    assert lstm.step(x2, lstm.zero_state(2)).h.shape == (2, 4) and g(jnp.ones((2, 5, 3))).shape == (2, 5, 4)


def test_rnn_config_none_is_the_default_and_a_wrong_config_is_named():
    """``None`` is Candle's ``Default::default()`` config, as for the conv factories; any other value
    raised a bare AttributeError."""
    from candlejax import errors

    t = torch.nn.LSTM(5, 7, batch_first=True)
    lstm = nn.lstm(5, 7, None, _vb(t))
    assert lstm.config() == nn.LSTMConfig.default()
    check(lstm, t, _x(2, 6, 5), tfwd=lambda m, tx: m(tx)[0])
    tg = torch.nn.GRU(5, 7, batch_first=True)
    g = nn.gru(5, 7, None, _vb(tg))
    assert g.config() == nn.GRUConfig.default()
    check(g, tg, _x(2, 6, 5), tfwd=lambda m, tx: m(tx)[0])
    vb = VarBuilder.zeros()
    with pytest.raises(errors.ArgumentType, match=r"lstm: config must be an LSTMConfig \(or None for the default\)"):
        nn.lstm(3, 4, {"layer_idx": 0}, vb)
    with pytest.raises(errors.ArgumentType, match=r"gru: config must be a GRUConfig .*, got LSTMConfig"):
        nn.gru(3, 4, nn.LSTMConfig(), vb)


def test_rnn_scan_of_an_empty_sequence_keeps_the_initial_state():
    """Candle's ``seq`` of a ``(B, 0, in)`` input is the empty list; ``scan`` returns no outputs and the
    initial state (it raised numpy's IndexError)."""
    vb = VarBuilder.from_varmap(nn.VarMap(), DType.F32, Device.Cpu)
    x = jnp.zeros((2, 0, 3))
    lstm, g = nn.lstm(3, 4, nn.LSTMConfig(), vb.pp("l")), nn.gru(3, 4, nn.GRUConfig(), vb.pp("g"))
    assert lstm.seq(x) == [] and g.seq(x) == []
    st = nn.LSTMState(jnp.ones((2, 4)), jnp.full((2, 4), 2.0))
    out, fin = lstm.scan(x, st)
    assert out.shape == (2, 0, 4)
    np.testing.assert_array_equal(np.asarray(fin.h._a), 1.0)
    np.testing.assert_array_equal(np.asarray(fin.c._a), 2.0)
    out, fin = g.scan(x, nn.GRUState(jnp.ones((2, 4))))
    assert out.shape == (2, 0, 4) and lstm(x).shape == (2, 0, 4) and g(x).shape == (2, 0, 4)
    np.testing.assert_array_equal(np.asarray(fin.h._a), 1.0)


def test_activation_and_batch_norm_parameters_that_are_not_numbers_are_named():
    from candlejax import errors

    with pytest.raises(errors.ArgumentType, match=r"Activation\.Elu: the parameter must be a number, got 'a'"):
        nn.Activation.Elu("a")
    with pytest.raises(errors.ArgumentType, match=r"Activation\.Elu: the parameter must be a number, got 'x'"):
        nn.Activation.parse({"elu": "x"})
    assert nn.Activation.parse({"elu": 2}) == nn.Activation.Elu(2.0)
    with pytest.raises(errors.ArgumentType, match=r"batch_norm: config must be a BatchNormConfig or an eps"):
        nn.batch_norm(3, "a", VarBuilder.zeros())


ACTS = [
    ("gelu", lambda x: F.gelu(x)),
    ("gelu_new", lambda x: F.gelu(x, approximate="tanh")),
    ("gelu_pytorch_tanh", lambda x: F.gelu(x, approximate="tanh")),
    ("relu", F.relu),
    ("relu2", lambda x: F.relu(x) ** 2),
    ("relu6", F.relu6),
    ("silu", F.silu),
    ("sigmoid", torch.sigmoid),
    ("hardsigmoid", lambda x: torch.clamp((x + 3) / 6, 0, 1)),
    ("swiglu", lambda x: F.silu(x.chunk(2, -1)[0]) * x.chunk(2, -1)[1]),
    ("swish", lambda x: x * torch.sigmoid(x)),
    ("mish", F.mish),
    ("hardswish", F.hardswish),
    ("quick_gelu", lambda x: x * torch.sigmoid(1.702 * x)),
    ({"elu": 0.7}, lambda x: F.elu(x, 0.7)),
    ({"leakyrelu": 0.05}, lambda x: F.leaky_relu(x, 0.05)),
]


@pytest.mark.parametrize("name,tf", ACTS, ids=[str(a[0]) for a in ACTS])
def test_activation(name, tf):
    act = nn.Activation.parse(name)

    class TMod(torch.nn.Module):
        def forward(self, x):
            return tf(x)

    check(act, TMod(), _x(3, 8) * 3)


def test_activation_variants_and_parse():
    assert nn.Activation.parse("gelu") == nn.Activation.Gelu
    assert nn.Activation.parse("gelu_new") == nn.Activation.NewGelu
    assert nn.Activation.parse("Relu6") == nn.Activation.Relu6
    assert nn.Activation.Elu(1.0) == nn.Activation.parse("elu")
    assert repr(nn.Activation.LeakyRelu(0.1)) == "Activation.LeakyRelu(0.1)"
    with pytest.raises(Exception, match="unknown activation"):
        nn.Activation.parse("nope")


def test_dropout():
    d = nn.Dropout(0.5)
    x = jnp.ones((200, 100))
    np.testing.assert_array_equal(np.asarray(d(x)._a), 1.0)  # eval: identity
    y = np.asarray(d.forward_t(x, True, key=0)._a)
    assert set(np.unique(y)) <= {0.0, 2.0}
    assert abs((y == 0).mean() - 0.5) < 0.02
    y2 = np.asarray(d.forward_t(x, True, key=0)._a)
    np.testing.assert_array_equal(y, y2)  # same key, same mask
    # Candle's Dropout::new takes any p; ops::dropout checks it in training mode only (candle-nn/src/ops.rs)
    for p in (1.0, 1.5, -0.1):
        d = nn.Dropout(p)
        np.testing.assert_array_equal(np.asarray(d.forward_t(x, False)._a), 1.0)
        with pytest.raises(Exception, match=rf"dropout probability has to be in \[0, 1\), got {p}"):
            d.forward_t(x, True, key=0)


def test_sequential_and_func():
    t = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    sd = {k: v.detach().numpy() for k, v in t.state_dict().items()}
    vb = VarBuilder.from_tensors(sd)
    model = nn.seq().add(nn.linear(4, 8, vb.pp(0))).add_fn(nn.ops.relu).add(nn.linear(8, 3, vb.pp(2)))
    assert len(model) == 3 and model.len() == 3 and not model.is_empty()
    out = model(jnp.asarray(_x(5, 4)))
    np.testing.assert_allclose(np.asarray(out._a), t(torch.tensor(_x(5, 4))).detach().numpy(), atol=1e-5)
    assert len(model.forward_all(jnp.asarray(_x(5, 4)))) == 3
    assert sorted(model.named_vars()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    f = nn.func(lambda x: x)
    assert f(out) is out


def test_batch_norm_forward_t_train_updates_running_stats_in_place_as_candle():
    t = _randomize(torch.nn.BatchNorm2d(3, momentum=0.1))
    bn = nn.batch_norm(3, nn.BatchNormConfig(), _vb(t))
    t.train()
    for seed in (1, 2):  # Candle's forward_t(xs, true): the statistics move with every training call
        x = _x(4, 3, 5, 5) + seed
        bn.forward_t(jnp.asarray(x), True)
        t(torch.tensor(x))
    np.testing.assert_allclose(np.asarray(bn.running_mean._a), t.running_mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.running_var._a), t.running_var.numpy(), atol=1e-4)
    # a layer passed into a trace is updated there and can be returned
    with pytest.warns(errors.LostUpdateWarning, match="caller's layer keeps"):  # bn itself is not updated
        new = jax.jit(lambda m, xv: (m.forward_t(xv, True), m)[1])(bn, jnp.asarray(_x(4, 3, 5, 5)))
    assert not np.allclose(np.asarray(new.running_mean._a), np.asarray(bn.running_mean._a))
    # closed over by a traced function, the layer keeps its statistics (no leaked tracer)
    before = np.asarray(bn.running_mean._a).copy()
    with pytest.warns(errors.LostUpdateWarning):
        jax.jit(lambda xv: bn.forward_t(xv, True))(jnp.asarray(_x(4, 3, 5, 5)))
    np.testing.assert_array_equal(np.asarray(bn.running_mean._a), before)


def _f(*shape, dt=np.float32):
    return np.ones(shape, dt)


@pytest.mark.parametrize("make,err,msg", [
    (lambda: nn.Linear(_f(3, 4), _f(5)), "UnexpectedShape", r"Linear: wrong shape for bias .*expected: \[3\], got"),
    (lambda: nn.Linear(_f(4), None), "UnexpectedNumberOfDims", r"Linear weight \(out, in\): unexpected rank"),
    (lambda: nn.Conv2d(_f(2, 1, 1, 1), _f(3), None), "UnexpectedShape", r"Conv2d: wrong shape for bias .*\[2\]"),
    (lambda: nn.ConvTranspose2d(_f(2, 3, 1, 1), _f(2), None), "UnexpectedShape", r"ConvTranspose2d: .*expected: \[3\]"),
    (lambda: nn.GroupNorm(_f(3), _f(4), 4, 2, 1e-5), "UnexpectedShape",
     r"GroupNorm: wrong shape for weight \(num_channels is 4\), expected: \[4\], got: \[3\]"),
    (lambda: nn.LayerNorm(_f(3), _f(4), 1e-5), "UnexpectedShape", r"LayerNorm: wrong shape for bias"),
    (lambda: nn.RmsNorm(_f(3, 3), 1e-5), "UnexpectedNumberOfDims", r"RmsNorm weight \(size,\): unexpected rank"),
    (lambda: nn.PReLU(_f(2, 2), False), "UnexpectedNumberOfDims", r"PReLU weight \(channels,\)"),
    (lambda: nn.Linear(_f(3, 4), _f(3, dt=jnp.bfloat16)), "DTypeMismatchBinaryOp", r"Linear \(weight, bias\)"),
    (lambda: nn.Conv1d(_f(2, 1, 1), _f(2, dt=jnp.float16), None), "DTypeMismatchBinaryOp", r"Conv1d \(weight, bias"),
    (lambda: nn.LayerNorm(_f(3), _f(3, dt=jnp.bfloat16), 1e-5), "DTypeMismatchBinaryOp", r"LayerNorm \(weight, bias\)"),
])  # fmt: skip
def test_layer_constructors_check_weight_and_bias(make, err, msg):
    # forward raised raw JAX errors (broadcasting, IndexError, reshape) or mixed dtypes silently
    from candlejax import errors

    with pytest.raises(getattr(errors, err), match=msg):
        make()
    nn.ConvTranspose2d(_f(2, 3, 1, 1), _f(6), nn.ConvTranspose2dConfig(groups=2))  # c_out = 3 * groups


@pytest.mark.parametrize("make,x", [
    (lambda: nn.LayerNorm(_f(3, dt=jnp.bfloat16), None, 1e-5), _f(2, 3)),
    (lambda: nn.RmsNorm(_f(3, dt=jnp.float16), 1e-5), _f(2, 3)),
    (lambda: nn.RmsNorm(_f(3, dt=jnp.float16), 1e-5), _f(2, 3, dt=jnp.bfloat16)),
    (lambda: nn.GroupNorm(_f(4, dt=jnp.bfloat16), _f(4, dt=jnp.bfloat16), 4, 2, 1e-5), _f(1, 4, 2)),
    (lambda: nn.PReLU(_f(2, dt=jnp.bfloat16), False), _f(1, 2, 3)),
    (lambda: nn.PReLU(_f(2), False), _f(1, 2, 3, dt=jnp.bfloat16)),
])  # fmt: skip
def test_layers_refuse_mixed_dtypes(make, x):
    # Candle: "unsupported dtype for rmsnorm", DTypeMismatchBinaryOp from broadcast_mul; these ran silently
    from candlejax import errors

    with pytest.raises(errors.DTypeMismatchBinaryOp):
        make()(x)


def test_norms_take_f32_weights_for_half_input_and_keep_its_dtype():
    # the documented exception (f32 norm weights in a bf16 model): computed in f32, output in x's dtype
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(jnp.bfloat16)
    for m in (nn.RmsNorm(_f(3), 1e-5), nn.LayerNorm(_f(3), _f(3), 1e-5)):
        assert m(x).dtype == DType.BF16
    assert nn.GroupNorm(_f(4), _f(4), 4, 2, 1e-5)(_f(1, 4, 2, dt=jnp.float16)).dtype == DType.F16


@pytest.mark.parametrize("build,msg", [
    (lambda vb: nn.conv2d(3, 4, 0, None, vb), r"Conv2d: kernel_size \(0\) and in_channels \(3\) must be >= 1"),
    (lambda vb: nn.conv1d(0, 4, 3, None, vb), r"Conv1d: kernel_size \(3\) and in_channels \(0\) must be >= 1"),
    (lambda vb: nn.conv_transpose2d(3, 0, 2, None, vb), r"ConvTranspose2d: .*out_channels \(0\) must be >= 1"),
    (lambda vb: nn.lstm(4, 0, nn.LSTMConfig.default(), vb), r"LSTM: hidden_dim \(0\) and in_dim \(4\) must be >= 1"),
    (lambda vb: nn.gru(4, 0, nn.GRUConfig.default(), vb), r"GRU: hidden_dim \(0\)"),
])  # fmt: skip
def test_builders_refuse_zero_sizes(build, msg):
    # a zero fan made the Kaiming init raise ZeroDivisionError; torch: "hidden_size must be greater than zero"
    from candlejax import errors

    vb = VarBuilder.from_varmap(nn.VarMap(), DType.F32, Device.Cpu)
    with pytest.raises(errors.Msg, match=msg):
        build(vb)
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        torch.nn.LSTM(4, 0)
    assert nn.linear(4, 0, vb.pp("lin")).weight.shape == (0, 4)  # still works, as torch's Linear(4, 0)


@pytest.mark.parametrize("train", ["False", "yes", None, 2, 0.5, [True]])
def test_forward_t_train_that_is_not_a_bool_is_named(train):
    """Candle's ``train`` is a ``bool``: ``"False"`` (truthy) silently trained and updated BatchNorm's
    running statistics."""
    from candlejax import errors

    bn = nn.batch_norm(3, nn.BatchNormConfig(), VarBuilder.from_varmap(nn.VarMap(), DType.F32, Device.Cpu))
    x = jnp.asarray(_x(4, 3))
    for layer in (bn, nn.Dropout(0.5)):
        with pytest.raises(errors.ArgumentType, match=r"forward_t: train must be a bool, got"):
            layer.forward_t(x, train)
    np.testing.assert_array_equal(np.asarray(bn.running_mean._a), 0.0)
    for ok in (True, False, 1, 0, np.bool_(True), jnp.asarray(False)):
        assert bn.forward_t(x, ok).shape == (4, 3)


def test_parameterised_activation_built_from_its_name_takes_the_default_parameter():
    """``Activation("Elu")`` computed an ELU with alpha 0 (and ``"LeakyRelu"`` a ReLU), where
    ``Activation.parse("elu")`` and PyTorch's ``nn.ELU()`` / ``nn.LeakyReLU()`` use 1.0 / 0.01."""
    x = _x(3, 8) * 3
    for name, tf in (("Elu", lambda t: F.elu(t)), ("LeakyRelu", lambda t: F.leaky_relu(t))):
        act = nn.Activation(name)
        assert act == nn.Activation.parse(name.lower())
        np.testing.assert_allclose(np.asarray(act(jnp.asarray(x))._a), tf(torch.tensor(x)).numpy(), atol=1e-6)


def test_rnn_states_to_tensor_of_bad_states_raises_candle_errors():
    """Candle's ``Tensor::stack`` / ``cat`` errors (they were numpy's ValueError / a bare TypeError)."""
    from candlejax import errors

    vb = VarBuilder.from_varmap(nn.VarMap(), DType.F32, Device.Cpu)
    lstm, g = nn.lstm(3, 4, nn.LSTMConfig(), vb.pp("l")), nn.gru(3, 4, nn.GRUConfig(), vb.pp("g"))
    with pytest.raises(errors.OpRequiresAtLeastOneTensor, match="stack expects at least one tensor"):
        lstm.states_to_tensor([])
    with pytest.raises(errors.OpRequiresAtLeastOneTensor, match="cat expects at least one tensor"):
        g.states_to_tensor([])
    with pytest.raises(errors.ShapeMismatchCat, match="shape mismatch in cat"):
        lstm.states_to_tensor([lstm.zero_state(2), lstm.zero_state(3)])
    with pytest.raises(errors.InvalidArgument, match=r"LSTM\.states_to_tensor: the states must be a list of LSTMState"):
        lstm.states_to_tensor(lstm.zero_state(2))
    with pytest.raises(errors.InvalidArgument, match=r"GRU\.states_to_tensor: the state must be a GRUState .*got int"):
        g.states_to_tensor([1, 2])
    x = jnp.asarray(_x(2, 5, 3))
    assert lstm.states_to_tensor(lstm.seq(x)).shape == (2, 5, 4) and g.states_to_tensor(g.seq(x)).shape == (2, 20)
    st = nn.LSTMState(jnp.ones((2, 4)), jnp.ones((2, 4)))  # states of plain arrays, as before
    assert lstm.states_to_tensor([st, st]).shape == (2, 2, 4)


def test_batch_norm_takes_weight_and_bias_together():
    """Candle's ``weight_and_bias`` is one ``Option<(weight, bias)>``: a bias without a weight was
    silently dropped, a weight without a bias raised a bare AttributeError."""
    from candlejax import errors

    z, o = jnp.zeros((3,)), jnp.ones((3,))
    for w, b in ((o, None), (None, o)):
        with pytest.raises(errors.InvalidArgument, match=r"BatchNorm: weight and bias go together"):
            nn.BatchNorm(3, z, o, w, b)


@pytest.mark.parametrize(
    ("make", "msg"),
    [(lambda o: nn.GroupNorm(o, None, 4, 2, 1e-5), r"nn\.GroupNorm: bias must be a Tensor, got None"),
     (lambda o: nn.GroupNorm(None, o, 4, 2, 1e-5), r"nn\.GroupNorm: weight must be a Tensor, got None"),
     (lambda o: nn.Conv1d(None), r"nn\.Conv1d: weight must be a Tensor, got None"),
     (lambda o: nn.ConvTranspose2d(None), r"nn\.ConvTranspose2d: weight must be a Tensor, got None"),
     (lambda o: nn.Embedding(None, 3), r"nn\.Embedding: embeddings must be a Tensor, got None"),
     (lambda o: nn.PReLU(None), r"nn\.PReLU: weight must be a Tensor, got None"),
     (lambda o: nn.LayerNorm(None), r"nn\.LayerNorm: weight must be a Tensor, got None"),
     (lambda o: nn.RmsNorm(None), r"nn\.RmsNorm: weight must be a Tensor, got None"),
     (lambda o: nn.LSTM(None, None, None, None), r"nn\.LSTM: w_ih must be a Tensor, got None"),
     (lambda o: nn.GRU(jnp.ones((12, 3)), None, None, None), r"nn\.GRU: w_hh must be a Tensor, got None")],
)  # fmt: skip
def test_layers_built_from_tensors_name_a_missing_one(make, msg):
    """Candle's constructors take these tensors (not ``Option``s): ``None`` raised a bare AttributeError
    (or, for PReLU, at the first forward)."""
    from candlejax import errors

    with pytest.raises(errors.ArgumentType, match=msg):
        make(jnp.ones((4,)))
