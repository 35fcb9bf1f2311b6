"""Gradients op by op against ``torch.autograd`` in float64.

Candle's ``loss.backward()`` (candle-core/src/backprop.rs) is ``cj.grad`` here (docs/differences.md,
"Gradients come from jax.grad"). Each case differentiates ``(op(*xs) * w).sum_all()`` for a fixed
random cotangent ``w`` (so a transposed or permuted gradient cannot pass) and compares with torch's
gradient of the same expression on float64 inputs. The gradient runs under ``cj.jit`` (one compile
per case instead of one per op: the same JAX transformation as an eager ``cj.grad``). Where Candle
and torch disagree (ties of ``max``/``min``, ``relu`` at 0, ``ceil``) the documented behaviour is
checked instead (docs/differences/elementwise-reduce.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import candlejax as cj
from candlejax import DType, Tensor, Var, errors
from candlejax.nn import loss as cl
from candlejax.nn import ops as cn

RTOL, ATOL = 2e-4, 2e-5


def _rand(shape, seed, lo=-2.0, hi=2.0):
    return np.random.default_rng(seed).uniform(lo, hi, shape)


def _check(cj_fn, torch_fn, *arrays, seed=0, atol=ATOL):
    """Compare forward values and gradients of ``(fn(*xs) * w).sum()`` for every input array."""
    txs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    tout = torch_fn(*txs)
    w = np.random.default_rng(1000 + seed).uniform(-1.0, 1.0, tuple(tout.shape))
    (tout * torch.tensor(w)).sum().backward()
    vs = tuple(Var.new(np.asarray(a, np.float32)) for a in arrays)
    wt = Tensor(np.asarray(w, np.float32))

    def loss(xs):
        out = cj_fn(*xs)
        return (out * wt).sum_all(), out

    grads, out = cj.jit(cj.grad(loss, has_aux=True))(vs)
    assert tuple(out.dims()) == tuple(tout.shape)
    np.testing.assert_allclose(np.asarray(out), tout.detach().numpy(), rtol=RTOL, atol=atol)
    for g, tx in zip(grads, txs, strict=True):
        expected = tx.grad.numpy() if tx.grad is not None else np.zeros(tx.shape)
        assert g.dtype == DType.F32
        np.testing.assert_allclose(np.asarray(g), expected, rtol=RTOL, atol=atol)


X = _rand((2, 3, 4), 0)
POS = _rand((2, 3, 4), 1, 0.2, 3.0)
AWAY_FROM_ZERO = np.where(np.abs(X) < 0.1, 0.5, X)

UNARY = [
    ("exp", lambda x: x.exp(), torch.exp, X),
    ("log", lambda x: x.log(), torch.log, POS),
    ("sin", lambda x: x.sin(), torch.sin, X),
    ("cos", lambda x: x.cos(), torch.cos, X),
    ("tanh", lambda x: x.tanh(), torch.tanh, X),
    ("sqrt", lambda x: x.sqrt(), torch.sqrt, POS),
    ("sqr", lambda x: x.sqr(), torch.square, X),
    ("recip", lambda x: x.recip(), torch.reciprocal, POS),
    ("abs", lambda x: x.abs(), torch.abs, AWAY_FROM_ZERO),
    ("neg", lambda x: x.neg(), torch.neg, X),
    ("gelu", lambda x: x.gelu(), lambda x: F.gelu(x, approximate="tanh"), X),
    ("gelu_erf", lambda x: x.gelu_erf(), F.gelu, X),
    ("erf", lambda x: x.erf(), torch.erf, X),
    ("relu", lambda x: x.relu(), torch.relu, AWAY_FROM_ZERO),
    ("silu", lambda x: x.silu(), F.silu, X),
    ("sigmoid", lambda x: cn.sigmoid(x), torch.sigmoid, X),
    ("elu", lambda x: x.elu(0.7), lambda x: F.elu(x, 0.7), AWAY_FROM_ZERO),
    ("powf", lambda x: x.powf(2.5), lambda x: x**2.5, POS),
    ("powf_neg", lambda x: x.powf(-1.5), lambda x: x**-1.5, POS),
    ("ceil", lambda x: x.ceil(), torch.ceil, X),
    ("floor", lambda x: x.floor(), torch.floor, X),
    ("round", lambda x: x.round(), torch.round, X),
    ("affine", lambda x: x.affine(1.5, -0.25), lambda x: x * 1.5 - 0.25, X),
    ("clamp", lambda x: x.clamp(-0.75, 1.25), lambda x: x.clamp(-0.75, 1.25), AWAY_FROM_ZERO),
    ("scalar_add_left", lambda x: 2.0 + x, lambda x: 2.0 + x, X),
    ("scalar_sub_left", lambda x: 2.0 - x, lambda x: 2.0 - x, X),
    ("scalar_mul_left", lambda x: 3.0 * x, lambda x: 3.0 * x, X),
    ("scalar_div_left", lambda x: 3.0 / x, lambda x: 3.0 / x, POS),
    ("scalar_sub_right", lambda x: x - 2.0, lambda x: x - 2.0, X),
    ("scalar_div_right", lambda x: x / 4.0, lambda x: x / 4.0, X),
    ("scalar_pow", lambda x: x**3, lambda x: x**3, X),
    ("log_sum_exp", lambda x: x.log_sum_exp(1), lambda x: torch.logsumexp(x, 1), X),
    ("cumsum", lambda x: x.cumsum(2), lambda x: torch.cumsum(x, 2), X),
]


@pytest.mark.parametrize(("cj_fn", "torch_fn", "x"), [u[1:] for u in UNARY], ids=[u[0] for u in UNARY])
def test_unary(cj_fn, torch_fn, x):
    _check(cj_fn, torch_fn, x)


A = _rand((2, 1, 4), 2)
B = _rand((3, 1), 3, 0.5, 2.0)
BINARY = [
    ("broadcast_add", lambda a, b: a.broadcast_add(b), torch.add),
    ("broadcast_sub", lambda a, b: a.broadcast_sub(b), torch.sub),
    ("broadcast_mul", lambda a, b: a.broadcast_mul(b), torch.mul),
    ("broadcast_div", lambda a, b: a.broadcast_div(b), torch.div),
    ("broadcast_maximum", lambda a, b: a.broadcast_maximum(b), torch.maximum),
    ("broadcast_minimum", lambda a, b: a.broadcast_minimum(b), torch.minimum),
    ("op_add", lambda a, b: a + b, torch.add),
    ("op_sub", lambda a, b: b - a, lambda a, b: b - a),
    ("op_mul", lambda a, b: a * b, torch.mul),
    ("op_div", lambda a, b: a / b, torch.div),
    ("broadcast_pow", lambda a, b: b.broadcast_pow(a), lambda a, b: b**a),
]


@pytest.mark.parametrize(("cj_fn", "torch_fn"), [b[1:] for b in BINARY], ids=[b[0] for b in BINARY])
def test_binary_broadcast(cj_fn, torch_fn):
    _check(cj_fn, torch_fn, A, B)


def test_same_shape_binary_and_pow():
    x, y = X, POS
    _check(lambda a, b: a.add(b), torch.add, x, y)
    _check(lambda a, b: a.sub(b), torch.sub, x, y)
    _check(lambda a, b: a.mul(b), torch.mul, x, y)
    _check(lambda a, b: a.div(b), torch.div, x, y)
    _check(lambda a, b: a.maximum(b), torch.maximum, x, y)
    _check(lambda a, b: a.minimum(b), torch.minimum, x, y)
    _check(lambda a, b: b.pow(a), lambda a, b: b**a, x, y)


R = _rand((2, 3, 4), 4)  # distinct values: no ties
REDUCE = [
    ("sum_dims", lambda x: x.sum((0, 2)), lambda x: x.sum((0, 2))),
    ("sum_keepdim", lambda x: x.sum_keepdim((0, 2)), lambda x: x.sum((0, 2), keepdim=True)),
    ("sum_all", lambda x: x.sum_all(), lambda x: x.sum()),
    ("mean_dims", lambda x: x.mean((1, 2)), lambda x: x.mean((1, 2))),
    ("mean_keepdim", lambda x: x.mean_keepdim(1), lambda x: x.mean(1, keepdim=True)),
    ("mean_all", lambda x: x.mean_all(), lambda x: x.mean()),
    ("max", lambda x: x.max(1), lambda x: x.amax(1)),
    ("max_keepdim", lambda x: x.max_keepdim(2), lambda x: x.amax(2, keepdim=True)),
    ("min", lambda x: x.min(0), lambda x: x.amin(0)),
    ("min_keepdim", lambda x: x.min_keepdim(-1), lambda x: x.amin(-1, keepdim=True)),
    ("max_all", lambda x: x.max_all(), lambda x: x.amax()),
    ("min_all", lambda x: x.min_all(), lambda x: x.amin()),
    ("var_keepdim", lambda x: x.var_keepdim(2), lambda x: x.var(2, keepdim=True)),
]


@pytest.mark.parametrize(("cj_fn", "torch_fn"), [r[1:] for r in REDUCE], ids=[r[0] for r in REDUCE])
def test_reductions(cj_fn, torch_fn):
    _check(cj_fn, torch_fn, R)


def test_max_min_ties_split_the_gradient():
    # Candle (backprop.rs, ReduceOp::Max/Min: `node.eq(&max)` mask) sends the whole gradient to every
    # tied element; candlejax splits it evenly (documented: docs/differences/elementwise-reduce.md).
    x = Var.new([[1.0, 3.0, 3.0], [2.0, 0.0, 0.0]])
    (g,) = cj.grad(lambda xs: xs[0].max(1).sum_all() + xs[0].min(1).sum_all())((x,))
    assert g.to_vec2() == [[1.0, 0.5, 0.5], [1.0, 0.5, 0.5]]


M1, M2 = _rand((2, 3, 4, 5), 5), _rand((2, 3, 5, 2), 6)


def test_matmul_batch_dims():
    _check(lambda a, b: a.matmul(b), torch.matmul, M1, M2)


def test_broadcast_matmul():
    _check(lambda a, b: a.broadcast_matmul(b), torch.matmul, _rand((2, 1, 4, 5), 7), _rand((3, 5, 2), 8))
    _check(lambda a, b: a.broadcast_matmul(b), torch.matmul, _rand((3, 4, 5), 9), _rand((5, 2), 10))


Y = _rand((2, 3, 4), 11)
MOVE = [
    ("t", lambda x: x.t(), lambda x: x.transpose(-2, -1)),
    ("transpose", lambda x: x.transpose(0, 2), lambda x: x.transpose(0, 2)),
    ("permute", lambda x: x.permute((2, 0, 1)), lambda x: x.permute(2, 0, 1)),
    ("narrow", lambda x: x.narrow(2, 1, 2), lambda x: x.narrow(2, 1, 2)),
    ("chunk", lambda x: x.chunk(2, 2)[1] * 3.0 + x.chunk(2, 2)[0],
     lambda x: x.chunk(2, 2)[1] * 3.0 + x.chunk(2, 2)[0]),
    ("chunk_uneven", lambda x: x.chunk(2, 1)[1], lambda x: x.chunk(2, 1)[1]),
    ("squeeze", lambda x: x.narrow(1, 0, 1).squeeze(1), lambda x: x.narrow(1, 0, 1).squeeze(1)),
    ("unsqueeze", lambda x: x.unsqueeze(1), lambda x: x.unsqueeze(1)),
    ("flatten", lambda x: x.flatten(1, 2), lambda x: x.flatten(1, 2)),
    ("flatten_all", lambda x: x.flatten_all(), lambda x: x.flatten()),
    ("reshape", lambda x: x.reshape((4, 6)), lambda x: x.reshape(4, 6)),
    ("broadcast_as", lambda x: x.unsqueeze(0).broadcast_as((3, 2, 3, 4)), lambda x: x.unsqueeze(0).expand(3, 2, 3, 4)),
    ("broadcast_left", lambda x: x.broadcast_left(2), lambda x: x.expand(2, 2, 3, 4)),
    ("repeat", lambda x: x.repeat((1, 2, 1)), lambda x: x.repeat(1, 2, 1)),
    ("pad_with_zeros", lambda x: x.pad_with_zeros(2, 1, 2), lambda x: F.pad(x, (1, 2))),
    ("pad_with_same", lambda x: x.pad_with_same(1, 2, 1),
     lambda x: F.pad(x.transpose(1, 2), (2, 1), mode="replicate").transpose(1, 2)),
    ("flip", lambda x: x.flip([0, 2]), lambda x: x.flip([0, 2])),
    ("roll", lambda x: x.roll(1, 2), lambda x: x.roll(1, 2)),
    ("i_slice", lambda x: x.i((slice(None), slice(1, 3))), lambda x: x[:, 1:3]),
]


@pytest.mark.parametrize(("cj_fn", "torch_fn"), [m[1:] for m in MOVE], ids=[m[0] for m in MOVE])
def test_movement(cj_fn, torch_fn):
    _check(cj_fn, torch_fn, Y)


def test_cat_and_stack():
    a, b = _rand((2, 3), 12), _rand((2, 5), 13)
    _check(lambda x, y: Tensor.cat([x, y, x], 1), lambda x, y: torch.cat([x, y, x], 1), a, b)
    c = _rand((2, 3), 14)
    _check(lambda x, y: Tensor.stack([x, y], 1), lambda x, y: torch.stack([x, y], 1), a, c)
    _check(lambda x, y: Tensor.stack([x, y, x], 0), lambda x, y: torch.stack([x, y, x], 0), a, c)


IDS = np.array([2, 0, 2, 1], np.uint32)


def test_index_select():
    _check(lambda x: x.index_select(Tensor(IDS), 1), lambda x: x.index_select(1, torch.tensor(IDS.astype(np.int64))),
           _rand((2, 3, 2), 15))
    _check(lambda x: x.embedding(Tensor(IDS)), lambda x: F.embedding(torch.tensor(IDS.astype(np.int64)), x),
           _rand((3, 4), 16))


def test_gather():
    ids = np.array([[0, 2, 2], [1, 1, 0]], np.uint32)
    _check(lambda x: x.gather(Tensor(ids), 1), lambda x: x.gather(1, torch.tensor(ids.astype(np.int64))),
           _rand((2, 4), 17))


def test_scatter_add_and_index_add():
    ids = np.array([[0, 2, 2], [1, 1, 0]], np.uint32)
    ti = torch.tensor(ids.astype(np.int64))
    _check(lambda x, s: x.scatter_add(Tensor(ids), s, 1), lambda x, s: x.scatter_add(1, ti, s),
           _rand((2, 4), 18), _rand((2, 3), 19))
    ids1 = np.array([2, 0, 2], np.uint32)
    ti1 = torch.tensor(ids1.astype(np.int64))
    _check(lambda x, s: x.index_add(Tensor(ids1), s, 0), lambda x, s: x.index_add(0, ti1, s),
           _rand((4, 2), 20), _rand((3, 2), 21))
    _check(lambda x, s: x.index_add(Tensor(ids1), s, 1), lambda x, s: x.index_add(1, ti1, s),
           _rand((2, 4), 22), _rand((2, 3), 23))


def test_where_cond():
    mask = np.array([[1, 0, 1], [0, 0, 1]], np.uint8)
    tm = torch.tensor(mask.astype(bool))
    _check(lambda a, b: Tensor(mask).where_cond(a, b), lambda a, b: torch.where(tm, a, b),
           _rand((2, 3), 24), _rand((2, 3), 25))


def test_slice_assign():
    def tfn(x, s):
        y = x.clone()
        y[1:3, 0:2] = s
        return y

    _check(lambda x, s: x.slice_assign([slice(1, 3), slice(0, 2)], s), tfn, _rand((4, 3), 26), _rand((2, 2), 27))
    _check(lambda x, s: x.slice_scatter(s, 1, 1), lambda x, s: torch.slice_scatter(x, s, 1, 1, 3),
           _rand((2, 4), 28), _rand((2, 2), 29))


CONV1D = [(0, 1, 1, 1), (1, 2, 1, 1), (2, 1, 2, 1), (1, 2, 2, 2)]


@pytest.mark.parametrize(("padding", "stride", "dilation", "groups"), CONV1D)
def test_conv1d(padding, stride, dilation, groups):
    x, k = _rand((2, 4, 9), 30), _rand((6, 4 // groups, 3), 31)
    _check(lambda a, b: a.conv1d(b, padding, stride, dilation, groups),
           lambda a, b: F.conv1d(a, b, None, stride, padding, dilation, groups), x, k)


CONV2D = [(0, 1, 1, 1), (1, 2, 1, 1), ((2, 1), (1, 2), (2, 1), 1), (1, 1, 2, 2), (1, 2, 1, 4)]


@pytest.mark.parametrize(("padding", "stride", "dilation", "groups"), CONV2D)
def test_conv2d(padding, stride, dilation, groups):
    x, k = _rand((2, 4, 7, 8), 32), _rand((4, 4 // groups, 3, 3), 33)
    _check(lambda a, b: a.conv2d(b, padding, stride, dilation, groups),
           lambda a, b: F.conv2d(a, b, None, stride, padding, dilation, groups), x, k, atol=1e-4)


def test_conv2d_patch_and_pointwise():
    # Paths with their own kernels: a patch conv (kernel == stride, no padding) and a 1x1 conv.
    x = _rand((2, 3, 8, 8), 34)
    _check(lambda a, b: a.conv2d(b, 0, 4), lambda a, b: F.conv2d(a, b, None, 4), x, _rand((5, 3, 4, 4), 35), atol=1e-4)
    _check(lambda a, b: a.conv2d(b, 0, 2), lambda a, b: F.conv2d(a, b, None, 2), x, _rand((5, 3, 1, 1), 36))
    _check(lambda a, b: a.conv2d(b, 1, 1, 1, 3), lambda a, b: F.conv2d(a, b, None, 1, 1, 1, 3), x,
           _rand((3, 1, 3, 3), 37))


def test_conv_special_paths():
    # patch conv whose last rows/columns do not fill a patch; strided 1D pointwise; depthwise (one
    # filter per channel) 1D and 2D with stride/padding/dilation; grouped with a channel multiplier
    _check(lambda a, b: a.conv2d(b, 0, 4), lambda a, b: F.conv2d(a, b, None, 4),
           _rand((2, 3, 9, 10), 53), _rand((5, 3, 4, 4), 54), atol=1e-4)
    _check(lambda a, b: a.conv1d(b, 0, 3), lambda a, b: F.conv1d(a, b, None, 3), _rand((2, 3, 10), 55),
           _rand((4, 3, 1), 56))
    _check(lambda a, b: a.conv1d(b, 2, 2, 2, 3), lambda a, b: F.conv1d(a, b, None, 2, 2, 2, 3),
           _rand((2, 3, 11), 57), _rand((3, 1, 3), 58))
    _check(lambda a, b: a.conv2d(b, (2, 1), (2, 1), (2, 1), 4),
           lambda a, b: F.conv2d(a, b, None, (2, 1), (2, 1), (2, 1), 4),
           _rand((2, 4, 9, 7), 59), _rand((4, 1, 3, 2), 60))
    _check(lambda a, b: a.conv2d(b, 1, 1, 1, 3), lambda a, b: F.conv2d(a, b, None, 1, 1, 1, 3),
           _rand((2, 3, 6, 6), 61), _rand((6, 1, 3, 3), 62))


@pytest.mark.parametrize(("batch", "size"), [(96, 10), (8, 17)])
def test_conv2d_batch_chunked_kernel_gradient(batch, size):
    # large enough (>= WEIGHT_GRAD_MIN_MACS) for the kernel gradient to be summed over batch chunks
    x, k = _rand((batch, 32, size, size), 63), _rand((32, 32, 3, 3), 64)
    _check(lambda a, b: a.conv2d(b, 1), lambda a, b: F.conv2d(a, b, None, 1, 1), x, k, atol=2e-3)


# (2, 0, 1, 1, 2): padding wider than the kernel (the cropped path); stride == kernel: the patch path
CONVT = [(2, 0, 1, 1, 2), (0, 0, 3, 1, 2), (0, 0, 1, 1, 1), (1, 1, 2, 1, 1), (1, 0, 2, 2, 1), (0, 1, 3, 1, 2)]


@pytest.mark.parametrize(("padding", "out_padding", "stride", "dilation", "groups"), CONVT)
def test_conv_transpose1d(padding, out_padding, stride, dilation, groups):
    x, k = _rand((2, 4, 5), 38), _rand((4, 6 // groups, 3), 39)
    _check(lambda a, b: a.conv_transpose1d(b, padding, out_padding, stride, dilation, groups),
           lambda a, b: F.conv_transpose1d(a, b, None, stride, padding, out_padding, groups, dilation), x, k)


@pytest.mark.parametrize(("padding", "out_padding", "stride", "dilation", "groups"), CONVT)
def test_conv_transpose2d(padding, out_padding, stride, dilation, groups):
    x, k = _rand((2, 4, 4, 5), 40), _rand((4, 6 // groups, 3, 3), 41)
    _check(lambda a, b: a.conv_transpose2d(b, padding, out_padding, stride, dilation, groups),
           lambda a, b: F.conv_transpose2d(a, b, None, stride, padding, out_padding, groups, dilation), x, k,
           atol=1e-4)


P = _rand((2, 3, 6, 8), 42)
POOL = [
    ("avg_pool2d", lambda x: x.avg_pool2d(2), lambda x: F.avg_pool2d(x, 2)),
    ("avg_pool2d_rect", lambda x: x.avg_pool2d((3, 2)), lambda x: F.avg_pool2d(x, (3, 2))),
    ("avg_pool2d_stride", lambda x: x.avg_pool2d_with_stride(3, 2), lambda x: F.avg_pool2d(x, 3, 2)),
    ("max_pool2d", lambda x: x.max_pool2d(2), lambda x: F.max_pool2d(x, 2)),
    ("max_pool2d_stride", lambda x: x.max_pool2d_with_stride(3, 2), lambda x: F.max_pool2d(x, 3, 2)),
    ("max_pool2d_rect", lambda x: x.max_pool2d_with_stride((2, 3), (1, 2)), lambda x: F.max_pool2d(x, (2, 3), (1, 2))),
    ("upsample_nearest2d", lambda x: x.upsample_nearest2d(12, 16), lambda x: F.interpolate(x, (12, 16))),
    ("upsample_nearest2d_3x", lambda x: x.upsample_nearest2d(18, 8), lambda x: F.interpolate(x, (18, 8))),
]


@pytest.mark.parametrize(("cj_fn", "torch_fn"), [p[1:] for p in POOL], ids=[p[0] for p in POOL])
def test_pool_and_upsample(cj_fn, torch_fn):
    _check(cj_fn, torch_fn, P)


S = _rand((2, 3, 5), 43)
NN_OPS = [
    ("softmax", lambda x: cn.softmax(x, 1), lambda x: torch.softmax(x, 1)),
    ("softmax_last_dim", lambda x: cn.softmax_last_dim(x), lambda x: torch.softmax(x, -1)),
    ("log_softmax", lambda x: cn.log_softmax(x, -1), lambda x: torch.log_softmax(x, -1)),
    ("log_softmax_dim0", lambda x: cn.log_softmax(x, 0), lambda x: torch.log_softmax(x, 0)),
    ("silu", lambda x: cn.silu(x), F.silu),
    ("leaky_relu", lambda x: cn.leaky_relu(x, 0.1), lambda x: F.leaky_relu(x, 0.1)),
    ("mish", lambda x: cn.mish(x), F.mish),
    ("hard_sigmoid", lambda x: cn.hard_sigmoid(x * 2.0), lambda x: F.hardsigmoid(x * 2.0)),
    ("hard_swish", lambda x: cn.hard_swish(x * 2.0), lambda x: F.hardswish(x * 2.0)),
    ("relu6", lambda x: cn.relu6(x * 4.0), lambda x: F.relu6(x * 4.0)),
    ("relu2", lambda x: cn.relu2(x), lambda x: torch.relu(x) ** 2),
    ("selu", lambda x: cn.selu(x), F.selu),
    ("elu", lambda x: cn.elu(x, 1.3), lambda x: F.elu(x, 1.3)),
    ("gelu", lambda x: cn.gelu(x), lambda x: F.gelu(x, approximate="tanh")),
    ("gelu_erf", lambda x: cn.gelu_erf(x), F.gelu),
    ("swiglu", lambda x: cn.swiglu(x.pad_with_zeros(2, 0, 1)), lambda x: (lambda a, b: F.silu(a) * b)(
        *F.pad(x, (0, 1)).chunk(2, -1))),
]


@pytest.mark.parametrize(("cj_fn", "torch_fn"), [n[1:] for n in NN_OPS], ids=[n[0] for n in NN_OPS])
def test_nn_ops(cj_fn, torch_fn):
    _check(cj_fn, torch_fn, S)


def test_rms_norm_and_layer_norm():
    alpha, beta = _rand((5,), 44, 0.5, 1.5), _rand((5,), 45)
    eps = 1e-5

    def t_rms(x, a):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * a

    _check(lambda x, a: cn.rms_norm(x, a, eps), t_rms, S, alpha)
    _check(lambda x, a: cn.rms_norm_slow(x, a, eps), t_rms, S, alpha)
    _check(lambda x, a, b: cn.layer_norm(x, a, b, eps), lambda x, a, b: F.layer_norm(x, (5,), a, b, eps),
           S, alpha, beta)
    _check(lambda x, a, b: cn.layer_norm_slow(x, a, b, eps), lambda x, a, b: F.layer_norm(x, (5,), a, b, eps),
           S, alpha, beta)


def test_losses():
    logits = _rand((4, 5), 46)
    tgt = np.array([1, 0, 4, 2], np.uint32)
    tt = torch.tensor(tgt.astype(np.int64))
    _check(lambda x: cl.cross_entropy(x, Tensor(tgt)), lambda x: F.cross_entropy(x, tt), logits)
    _check(lambda x: cl.nll(cn.log_softmax(x, 1), Tensor(tgt)), lambda x: F.nll_loss(torch.log_softmax(x, 1), tt),
           logits)
    target = _rand((4, 5), 47)
    _check(lambda x, t: cl.mse(x, t), F.mse_loss, logits, target)
    prob = _rand((4, 5), 48, 0.0, 1.0)
    _check(lambda x, t: cl.binary_cross_entropy_with_logit(x, t), F.binary_cross_entropy_with_logits, logits, prob)
    _check(lambda x, t: cl.huber(x, t, 0.7), lambda x, t: F.huber_loss(x, t, delta=0.7), logits, target * 2)


@pytest.mark.parametrize("dtype", [DType.BF16, DType.F16])
def test_to_dtype_rounds_the_gradient_to_the_intermediate_dtype(dtype):
    # backprop.rs, ToDType: `grad.to_dtype(node.dtype())`: the cotangent passes through the half dtype.
    w = _rand((2, 3), 51)
    wt = Tensor(np.asarray(w, np.float32))
    x = Var.new(np.asarray(_rand((2, 3), 52), np.float32))
    (g,) = cj.grad(lambda xs: (xs[0].to_dtype(dtype).to_dtype(DType.F32) * wt).sum_all())((x,))
    half = torch.bfloat16 if dtype == DType.BF16 else torch.float16
    expected = torch.tensor(w, dtype=torch.float32).to(half).to(torch.float32).numpy()
    assert g.dtype == DType.F32
    np.testing.assert_array_equal(np.asarray(g), expected)


def test_to_dtype_f64_round_trip(x64):
    _check(lambda x: x.to_dtype(DType.F64).exp().to_dtype(DType.F32), torch.exp, X)


def test_tensor_used_twice_accumulates():
    x = _rand((3, 4), 49)
    _check(lambda a: a * a.exp() + a.t().matmul(a).sum_keepdim(0),
           lambda a: a * a.exp() + (a.T @ a).sum(0, keepdim=True), x)
    w = _rand((4, 2), 50)
    _check(lambda a, b: a.matmul(b).tanh().matmul(b.t()) + a, lambda a, b: torch.tanh(a @ b) @ b.T + a, x, w)


def test_detach_stops_the_gradient():
    x = Var.new([[1.0, 2.0], [3.0, -1.0]])
    (g,) = cj.grad(lambda xs: (xs[0] * xs[0].detach()).sum_all() + xs[0].detach().exp().sum_all())((x,))
    assert g.to_vec2() == [[1.0, 2.0], [3.0, -1.0]]
    # a Var read only through detach gets a zero gradient (docs/differences/nn.md)
    (g0,) = cj.grad(lambda xs: xs[0].detach().sqr().sum_all())((x,))
    assert g0.to_vec2() == [[0.0, 0.0], [0.0, 0.0]]


def test_non_differentiable_ops_on_the_path_give_zero_gradients():
    # backprop.rs: Cmp, argmax/argmin, floor/round/sign contribute no gradient.
    x = Var.new([[1.0, 3.0, 2.0], [0.5, -1.0, 4.0]])

    def f(xs):
        a = xs[0]
        idx = a.argmax(1)
        mask = a.ge(1.5).to_dtype(DType.F32)
        return (a * mask).sum_all() + idx.to_dtype(DType.F32).sum_all() + a.sign().sum_all()

    (g,) = cj.grad(f)((x,))
    assert g.to_vec2() == [[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]


def test_relu_at_zero_and_ceil_match_the_documented_gradients():
    # docs/differences/elementwise-reduce.md: relu'(0) = 0 (Candle 1); ceil has a zero gradient (Candle raises).
    x = Var.new([0.0, -1.0, 2.0])
    (g,) = cj.grad(lambda xs: xs[0].relu().sum_all() + xs[0].ceil().sum_all())((x,))
    assert g.to_vec1() == [0.0, 0.0, 1.0]


def test_integer_var_raises_a_candlejax_error():
    x = Var.new(np.array([1, 2, 3], np.uint32))
    with pytest.raises(errors.Error):
        cj.grad(lambda xs: xs[0].to_dtype(DType.F32).sum_all())((x,))


@pytest.mark.parametrize("rows", [3, 600])
def test_linear_gradients_on_the_native_product_sizes(rows):
    # 128x160 weights: the native few-row (<= 48 rows) and blocked (>= 512 rows) products on AVX-512
    x, w, b = _rand((rows, 160), 65), _rand((128, 160), 66, -0.1, 0.1), _rand((128,), 67)
    _check(lambda a, ww, bb: cj.nn.Linear(ww, bb).forward(a), lambda a, ww, bb: F.linear(a, ww, bb), x, w, b,
           atol=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "hkv"),
    [({}, 2), ({"do_causal": True}, 2), ({}, 1), ({"mask": "bool"}, 2), ({"mask": "float"}, 2), ({"scale": 0.3}, 2)],
)
def test_sdpa(kwargs, hkv):
    q, k, v = _rand((2, 2, 5, 8), 68), _rand((2, hkv, 6, 8), 69), _rand((2, hkv, 6, 8), 70)
    kw, tkw = dict(kwargs), dict(kwargs)
    if "do_causal" in kwargs:
        tkw = {"is_causal": True}
    mask = kwargs.get("mask")
    if mask == "bool":
        m = np.random.default_rng(71).uniform(size=(2, 1, 5, 6)) > 0.3
        m[..., 0] = True
        kw["mask"], tkw["attn_mask"] = Tensor(m.astype(np.uint8)), torch.tensor(m)
        del tkw["mask"]
    elif mask == "float":
        m = np.where(np.random.default_rng(72).uniform(size=(2, 1, 1, 6)) > 0.3, 0.0, -1e9)
        kw["mask"], tkw["attn_mask"] = Tensor(m.astype(np.float32)), torch.tensor(m)
        del tkw["mask"]
    if "do_causal" in kwargs:  # torch's is_causal aligns at the start: same when S <= Skv only at the end
        q = _rand((2, 2, 6, 8), 68)

    def tfn(a, b, c):
        if hkv != a.shape[1]:
            b, c = b.repeat_interleave(a.shape[1] // hkv, 1), c.repeat_interleave(a.shape[1] // hkv, 1)
        return F.scaled_dot_product_attention(a, b, c, **tkw)

    _check(lambda a, b, c: cn.sdpa(a, b, c, **kw), tfn, q, k, v)


MORE = [
    ("sort_last_dim", lambda x: x.sort_last_dim(True)[0], lambda x: x.sort(-1)[0]),
    ("sort_last_dim_desc", lambda x: x.sort_last_dim(False)[0], lambda x: x.sort(-1, descending=True)[0]),
    ("unfold", lambda x: x.unfold(2, 2, 1), lambda x: x.unfold(2, 2, 1)),
    ("std", lambda x: x.std(2), lambda x: x.std(2)),
    ("var", lambda x: x.var(1, True), lambda x: x.var(1, keepdim=True)),
    ("norm", lambda x: x.norm(), lambda x: torch.linalg.vector_norm(x)),
    ("interpolate1d_non_integer", lambda x: x.interpolate1d(7), lambda x: F.interpolate(x, 7)),
    ("upsample_nearest1d_down", lambda x: x.upsample_nearest1d(3), lambda x: F.interpolate(x, 3)),
    ("upsample_bilinear2d", lambda x: x.unsqueeze(0).upsample_bilinear2d(5, 7, False),
     lambda x: F.interpolate(x.unsqueeze(0), (5, 7), mode="bilinear", align_corners=False)),
    ("upsample_bilinear2d_align", lambda x: x.unsqueeze(0).upsample_bilinear2d(5, 7, True),
     lambda x: F.interpolate(x.unsqueeze(0), (5, 7), mode="bilinear", align_corners=True)),
    ("interpolate2d_non_integer", lambda x: x.unsqueeze(0).interpolate2d(5, 7),
     lambda x: F.interpolate(x.unsqueeze(0), (5, 7))),
    ("i_step", lambda x: x.i((slice(None), slice(None), slice(0, 4, 2))), lambda x: x[:, :, 0:4:2]),
    ("masked_fill", lambda x: x.masked_fill(Tensor((np.arange(24).reshape(2, 3, 4) % 3 == 0).astype(np.uint8)), 0.5),
     lambda x: x.masked_fill(torch.tensor(np.arange(24).reshape(2, 3, 4) % 3 == 0), 0.5)),
]


@pytest.mark.parametrize(("cj_fn", "torch_fn"), [m[1:] for m in MORE], ids=[m[0] for m in MORE])
def test_more_ops(cj_fn, torch_fn):
    _check(cj_fn, torch_fn, Y)


def test_scatter_set():
    ids = np.array([[0, 2, 3], [1, 3, 0]], np.uint32)  # no duplicates along dim 1
    ti = torch.tensor(ids.astype(np.int64))
    _check(lambda x, s: x.scatter(Tensor(ids), s, 1), lambda x, s: x.scatter(1, ti, s), _rand((2, 4), 73),
           _rand((2, 3), 74))


def test_norm_layers():
    x = _rand((2, 4, 3, 5), 75)
    w, b = _rand((4,), 76, 0.5, 1.5), _rand((4,), 77)
    _check(lambda a, ww, bb: cj.nn.GroupNorm(ww, bb, 4, 2).forward(a),
           lambda a, ww, bb: F.group_norm(a, 2, ww, bb, 1e-5), x, w, b)
    rm, rv = Tensor(np.zeros(4, np.float32)), Tensor(np.ones(4, np.float32))
    _check(lambda a, ww, bb: cj.nn.BatchNorm(4, rm, rv, ww, bb).forward_t(a, True),
           lambda a, ww, bb: F.batch_norm(a, None, None, ww, bb, True, 0.1, 1e-5), x, w, b)
    h = _rand((2, 3, 5), 78)
    w5, b5 = _rand((5,), 79, 0.5, 1.5), _rand((5,), 80)
    _check(lambda a, ww, bb: cj.nn.LayerNorm(ww, bb).forward(a), lambda a, ww, bb: F.layer_norm(a, (5,), ww, bb),
           h, w5, b5)
    _check(lambda a, ww: cj.nn.RmsNorm(ww, 1e-6).forward(a),
           lambda a, ww: a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + 1e-6) * ww, h, w5)
    _check(lambda a, ww: cj.nn.PReLU(ww).forward(a.permute((0, 2, 1))),
           lambda a, ww: F.prelu(a.permute(0, 2, 1), ww), h, _rand((5,), 81, 0.1, 0.5))


def test_lstm_and_gru_sequences():
    x = _rand((2, 4, 3), 82)
    wih, whh = _rand((20, 3), 83, -0.5, 0.5), _rand((20, 5), 84, -0.5, 0.5)
    bih, bhh = _rand((20,), 85), _rand((20,), 86)

    def torch_rnn(cls):
        def run(a, w1, w2, b1, b2):
            m = cls(3, 5, batch_first=True).double()
            return torch.func.functional_call(m, {"weight_ih_l0": w1, "weight_hh_l0": w2, "bias_ih_l0": b1,
                                                   "bias_hh_l0": b2}, (a,))[0]  # fmt: skip

        return run

    def c_lstm(a, w1, w2, b1, b2):
        m = cj.nn.LSTM(w1, w2, b1, b2)
        return m.states_to_tensor(m.seq(a))

    _check(c_lstm, torch_rnn(torch.nn.LSTM), x, wih, whh, bih, bhh)
    gih, ghh, gbi, gbh = wih[:15], whh[:15], bih[:15], bhh[:15]

    def c_gru(a, w1, w2, b1, b2):
        m = cj.nn.GRU(w1, w2, b1, b2)
        return m.states_to_tensor(m.seq(a)).reshape((2, 4, 5))  # Candle's GRU concatenates the steps

    _check(c_gru, torch_rnn(torch.nn.GRU), x, gih, ghh, gbi, gbh)


def _t_rope(x, cos, sin, interleaved):
    # candle-nn/src/rotary_emb.rs: rope (halves) and rope_i (adjacent pairs) over (B, H, T, D)
    c, s = cos[None, None], sin[None, None]
    if interleaved:
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], -1).flatten(-2)
    h = x.shape[-1] // 2
    x0, x1 = x[..., :h], x[..., h:]
    return torch.cat([x0 * c - x1 * s, x1 * c + x0 * s], -1)


def test_rope_gradients():
    x, cos, sin = _rand((2, 3, 4, 6), 87), _rand((4, 3), 88), _rand((4, 3), 89)
    _check(lambda a, c, s: cn.rope(a, c, s), lambda a, c, s: _t_rope(a, c, s, False), x, cos, sin)
    _check(lambda a, c, s: cn.rope_i(a, c, s), lambda a, c, s: _t_rope(a, c, s, True), x, cos, sin)
    _check(lambda a, c, s: cn.rope_thd(a.transpose(1, 2), c, s),
           lambda a, c, s: _t_rope(a, c, s, False).transpose(1, 2), x, cos, sin)


def test_var_from_tensor_of_a_derived_tensor_is_a_new_leaf():
    # candle-core/src/variable.rs: Var::from_tensor(t) is t itself when t is a Var, else t.make_var(),
    # a copy built with BackpropOp::none() (tensor.rs): no gradient flows back through it.
    v = Var.new([1.0, 2.0])
    (g,) = cj.grad(lambda xs: Var.from_tensor(xs[0].sqr()).sum_all() + xs[0].sum_all())((v,))
    assert g.to_vec1() == [1.0, 1.0]
    (g,) = cj.grad(lambda xs: Var.from_tensor(xs[0]).sqr().sum_all())((v,))
    assert g.to_vec1() == [2.0, 4.0]
    g = jax.grad(lambda a: Var.from_tensor(Tensor(a) * 3.0).sum_all().jax)(jnp.array([1.0, 2.0]))
    assert np.asarray(g).tolist() == [0.0, 0.0]


def test_conv_and_embedding_layers():
    x1, w1, b1 = _rand((2, 4, 9), 90), _rand((6, 2, 3), 91), _rand((6,), 92)
    _check(lambda a, w, b: cj.nn.Conv1d(w, b, cj.nn.Conv1dConfig(1, 2, 1, 2)).forward(a),
           lambda a, w, b: F.conv1d(a, w, b, 2, 1, 1, 2), x1, w1, b1)
    wt, bt = _rand((4, 3, 3), 93), _rand((6,), 94)
    _check(lambda a, w, b: cj.nn.ConvTranspose1d(w, b, cj.nn.ConvTranspose1dConfig(1, 1, 2, 1, 2)).forward(a),
           lambda a, w, b: F.conv_transpose1d(a, w, b, 2, 1, 1, 2, 1), x1, wt, bt)
    x2, w2, b2 = _rand((2, 3, 7, 8), 95), _rand((4, 3, 3, 3), 96), _rand((4,), 97)
    _check(lambda a, w, b: cj.nn.Conv2d(w, b, cj.nn.Conv2dConfig(1, 2)).forward(a),
           lambda a, w, b: F.conv2d(a, w, b, 2, 1), x2, w2, b2, atol=1e-4)
    wt2, bt2 = _rand((3, 2, 2, 2), 98), _rand((2,), 99)
    _check(lambda a, w, b: cj.nn.ConvTranspose2d(w, b, cj.nn.ConvTranspose2dConfig(stride=2)).forward(a),
           lambda a, w, b: F.conv_transpose2d(a, w, b, 2), x2, wt2, bt2)
    ids = np.array([[1, 3, 1], [0, 2, 3]], np.uint32)
    _check(lambda e: cj.nn.Embedding(e, 5).forward(Tensor(ids)),
           lambda e: F.embedding(torch.tensor(ids.astype(np.int64)), e), _rand((4, 5), 100))
    _check(lambda a, w: cj.nn.Linear(w).forward(a), lambda a, w: F.linear(a, w), _rand((2, 3, 4), 101),
           _rand((5, 4), 102))


def test_kinks_follow_candle():
    # backprop.rs: Abs uses `arg.ge(0)` (1 at 0; torch gives 0); clamp is maximum(min).minimum(max)
    # (tensor.rs) whose ties split the gradient in halves (Maximum/Minimum: `mask_lhs / (mask_rhs + 1)`;
    # torch's clamp gives 1); elu at 0 is alpha (the `x <= 0` branch, as torch).
    x = Var.new([0.0, -1.0, 1.0, 2.0])
    (g,) = cj.grad(lambda xs: xs[0].abs().sum_all())((x,))
    assert g.to_vec1() == [1.0, -1.0, 1.0, 1.0]
    (g,) = cj.grad(lambda xs: xs[0].clamp(-1.0, 1.0).sum_all())((x,))
    assert g.to_vec1() == [1.0, 0.5, 0.5, 0.0]
    (g,) = cj.grad(lambda xs: xs[0].elu(0.5).sum_all())((x,))
    np.testing.assert_allclose(np.asarray(g), [0.5, 0.5 * np.exp(-1.0), 1.0, 1.0], rtol=1e-6)


def test_pooling_a_map_the_windows_do_not_tile():
    # the rows and columns past the last whole window get no gradient (torch). Candle's avg_pool2d
    # backward upsamples the gradient to the input size (backprop.rs), which misplaces it when the
    # size is not a multiple of the kernel.
    x = _rand((1, 2, 7, 9), 103)
    _check(lambda a: a.avg_pool2d(2), lambda a: F.avg_pool2d(a, 2), x)
    _check(lambda a: a.max_pool2d(2), lambda a: F.max_pool2d(a, 2), x)


F64_CASES = [
    ("conv2d", lambda a, b: a.conv2d(b, 1, 2), lambda a, b: F.conv2d(a, b, None, 2, 1), [(2, 3, 6, 7), (4, 3, 3, 3)]),
    ("conv2d_depthwise", lambda a, b: a.conv2d(b, 1, 1, 1, 3), lambda a, b: F.conv2d(a, b, None, 1, 1, 1, 3),
     [(2, 3, 6, 7), (3, 1, 3, 3)]),
    ("conv_transpose2d", lambda a, b: a.conv_transpose2d(b, 1, 0, 2), lambda a, b: F.conv_transpose2d(a, b, None, 2, 1),
     [(2, 3, 4, 5), (3, 2, 3, 3)]),
    ("conv1d", lambda a, b: a.conv1d(b, 1, 2), lambda a, b: F.conv1d(a, b, None, 2, 1), [(2, 3, 9), (4, 3, 3)]),
    ("matmul", lambda a, b: a.matmul(b), torch.matmul, [(2, 3, 4), (2, 4, 5)]),
    ("layer_norm", lambda a, w, b: cn.layer_norm(a, w, b, 1e-5), lambda a, w, b: F.layer_norm(a, (9,), w, b, 1e-5),
     [(2, 3, 9), (9,), (9,)]),
    ("softmax", lambda a: cn.softmax_last_dim(a), lambda a: torch.softmax(a, -1), [(2, 3, 9)]),
    ("sdpa", lambda q, k, v: cn.sdpa(q, k, v), F.scaled_dot_product_attention,
     [(1, 2, 4, 8), (1, 2, 5, 8), (1, 2, 5, 8)]),
    ("gelu_erf", lambda a: a.gelu_erf(), F.gelu, [(2, 9)]),
    ("max_pool2d", lambda a: a.max_pool2d_with_stride(3, 2), lambda a: F.max_pool2d(a, 3, 2), [(2, 3, 7, 8)]),
]


@pytest.mark.parametrize(("cj_fn", "torch_fn", "shapes"), [c[1:] for c in F64_CASES], ids=[c[0] for c in F64_CASES])
def test_f64_gradients_are_f64_accurate(x64, cj_fn, torch_fn, shapes):
    arrays = [_rand(s, 110 + i) for i, s in enumerate(shapes)]
    txs = [torch.tensor(a, requires_grad=True) for a in arrays]
    tout = torch_fn(*txs)
    w = _rand(tuple(tout.shape), 120, -1.0, 1.0)
    (tout * torch.tensor(w)).sum().backward()
    wt = Tensor(w)
    grads = cj.grad(lambda xs: (cj_fn(*xs) * wt).sum_all())(tuple(Var.new(a) for a in arrays))
    for g, tx in zip(grads, txs, strict=True):
        assert g.dtype == DType.F64
        np.testing.assert_allclose(np.asarray(g), tx.grad.numpy(), rtol=1e-11, atol=1e-13)


INDEXING = [
    ("getitem_int", lambda x: x[1], lambda x: x[1]),
    ("getitem_neg_step", lambda x: x[:, -1, ::2], lambda x: x[:, -1, ::2]),
    ("getitem_none_ellipsis", lambda x: x[..., None, 1:3], lambda x: x[..., None, 1:3]),
    ("getitem_list", lambda x: x[:, [2, 0, 2]], lambda x: x[:, [2, 0, 2]]),
    ("i_tuple", lambda x: x.i((0, slice(1, 3))), lambda x: x[0, 1:3]),
    ("i_tensor", lambda x: x.i((slice(None), Tensor(np.array([2, 2, 1], np.uint32)))),
     lambda x: x[:, [2, 2, 1]]),
]


@pytest.mark.parametrize(("cj_fn", "torch_fn"), [i[1:] for i in INDEXING], ids=[i[0] for i in INDEXING])
def test_indexing(cj_fn, torch_fn):
    _check(cj_fn, torch_fn, Y)


def test_pass_through_ops_keep_the_gradient():
    # backprop.rs: Copy, ToDevice and contiguous copies pass the gradient on unchanged
    _check(lambda x: x.copy().contiguous().to_device(cj.Device.Cpu).clone() * 2.0, lambda x: x.clone() * 2.0, Y)
