"""Candle's gradient tests, ported function by function: candle-core/tests/grad_tests.rs (huggingface/candle).

The expected numbers are Candle's. Candle records ops on its Vars and ``y.backward()`` walks them into
a ``GradStore`` read with ``grads.get(&x)``. candlejax takes gradients with ``jax.grad`` instead (a
documented difference, docs/differences.md "Gradients come from jax.grad"): the computation is written
as a function of the Vars and ``cj.grad`` of it returns one gradient per Var. Candle's ``backward``
seeds a non-scalar output with ones, so the gradient of ``y`` is that of ``y.sum_all()``
(:func:`backward` below). ``y.backward()`` itself raises, naming ``cj.value_and_grad``.
"""

from __future__ import annotations

import numpy as np
import pytest

import candlejax as cj
from candlejax import Device, DType, Shape, Tensor, Var, errors
from candlejax.testing import to_vec1_round, to_vec2_round, to_vec3_round

F32 = np.float32
CPU = Device.Cpu


def f32(values):
    """Rust's f32 literals (``[0.3, 1.03]``) as the Python floats ``to_vec1()`` returns for an f32 tensor."""
    return np.asarray(values, F32).tolist()


def backward(fn, *vars_):
    """``fn(*vars_).backward()`` followed by ``grads.get(&v)`` for each Var: the gradients of
    ``fn(*vars_).sum_all()`` (Candle seeds ``backward`` with ``ones_like``), as a tuple."""
    return cj.grad(lambda vs: fn(*vs).sum_all())(vars_)


def test_backward_on_a_tensor_raises_naming_value_and_grad():
    # Candle: let grads = y.backward()?; candlejax documents cj.value_and_grad / cj.grad instead.
    x = Var.new([3.0, 1.0, 4.0], CPU)
    y = x * x
    with pytest.raises(errors.TorchName, match=r"cj\.value_and_grad\(loss_fn\)"):
        y.backward()


def test_grad_of_a_non_loss_raises_a_candlejax_error():
    """What ``cj.grad`` cannot differentiate is named, instead of JAX's ``TypeError``s ("grad requires
    real-valued outputs", "Gradient only defined for scalar-output functions") or a tensor indexing
    error when ``has_aux`` gets a bare loss."""
    x = Var.new([3.0, 1.0, 4.0], CPU)
    with pytest.raises(errors.UnsupportedDTypeForOp, match=r"unsupported dtype U32 for op grad .*an integer loss"):
        cj.grad(lambda x: x.to_dtype(DType.U32).sum_all())(x)
    with pytest.raises(errors.InvalidArgument, match=r"returned tuple .*has_aux=True"):
        cj.grad(lambda x: (x.sum_all(), 1))(x)
    with pytest.raises(errors.InvalidArgument, match=r"returned NoneType"):
        cj.grad(lambda x: None)(x)
    with pytest.raises(errors.InvalidArgument, match=r"has_aux=True.*\(loss, aux\) pair, got Tensor"):
        cj.grad(lambda x: x.sum_all(), has_aux=True)(x)
    g, aux = cj.grad(lambda x: (x.sqr().sum_all(), "aux"), has_aux=True)(x)
    assert g.to_vec1() == [6.0, 2.0, 8.0] and aux == "aux"


def test_simple_grad():
    x = Var.new([3.0, 1.0, 4.0], CPU)

    def f(x):
        return ((x * x) + x * 5.0) + 4.0

    y = f(x)
    (grad_x,) = backward(f, x)
    assert x.to_vec1() == [3.0, 1.0, 4.0]
    # y = x^2 + 5.x + 4
    assert y.to_vec1() == [28.0, 10.0, 40.0]
    # dy/dx = 2.x + 5
    assert grad_x.to_vec1() == [11.0, 7.0, 13.0]


def test_sum_grad():
    x = Var.new([3.0, 1.0, 4.0], CPU)

    def f(x):
        return x.sqr().sum_keepdim(0) * 2.0

    y = f(x)
    (grad_x,) = backward(f, x)
    assert y.to_vec1() == [52.0]
    # y = 2.x^2 so dy/dx = 4.x
    assert grad_x.to_vec1() == [12.0, 4.0, 16.0]

    # Same test as before but squeezing on the last dimension.
    def g(x):
        return (x.sqr().sum_keepdim(0) * 2.0).squeeze(0)

    y = g(x)
    (grad_x,) = backward(g, x)
    assert y.to_scalar() == 52.0
    # y = 2.x^2 so dy/dx = 4.x
    assert grad_x.to_vec1() == [12.0, 4.0, 16.0]


def test_expand_grad():
    # Computing the gradient sums over a middle dim of a 5D tensor (Candle issue #3847).
    data = [float(v) for v in range(24)]
    x = Var.from_vec(data, (1, 1, 4, 6), CPU)

    def loss_fn(x):
        e = x.as_tensor().unsqueeze(2).expand((1, 1, 3, 4, 6))
        return e.sqr().sum_all() * 0.5

    (grad_x,) = backward(loss_fn, x)
    # loss = 0.5 * sum over the 3 broadcast copies of x^2, so dloss/dx = 3.x
    assert grad_x.flatten_all().to_vec1() == [3.0 * v for v in range(24)]


def test_matmul_grad():
    data = [float(i) for i in range(12)]
    x = Var.from_slice(data, (2, 2, 3), CPU)
    data = [float(i) for i in range(12)]
    y = Var.from_slice(data, (2, 3, 2), CPU)
    grad_x, grad_y = backward(lambda x, y: x.matmul(y), x, y)
    assert grad_x.shape() == Shape((2, 2, 3))
    assert grad_y.shape() == Shape((2, 3, 2))
    assert grad_x.to_vec3() == [
        [[1.0, 5.0, 9.0], [1.0, 5.0, 9.0]],
        [[13.0, 17.0, 21.0], [13.0, 17.0, 21.0]],
    ]
    assert grad_y.to_vec3() == [
        [[3.0, 3.0], [5.0, 5.0], [7.0, 7.0]],
        [[15.0, 15.0], [17.0, 17.0], [19.0, 19.0]],
    ]


def assert_zero_grad(grad, shape):
    assert grad.dims() == shape
    assert grad.flatten_all().to_vec1() == [0.0] * grad.elem_count()


def assert_zero_matmul_grads(lhs_shape, rhs_shape, output_shape):
    lhs = Var.zeros(lhs_shape, DType.F32, CPU)
    rhs = Var.zeros(rhs_shape, DType.F32, CPU)
    output = lhs.matmul(rhs)
    assert output.dims() == output_shape
    assert output.flatten_all().to_vec1() == [0.0] * output.elem_count()
    grad_lhs, grad_rhs = backward(lambda lhs, rhs: lhs.matmul(rhs).sum_all(), lhs, rhs)
    assert_zero_grad(grad_lhs, lhs_shape)
    assert_zero_grad(grad_rhs, rhs_shape)


@pytest.mark.parametrize(
    ("lhs_shape", "rhs_shape", "output_shape"),
    [
        ([2, 0], [0, 3], [2, 3]),
        ([0, 2], [2, 3], [0, 3]),
        ([2, 3], [3, 0], [2, 0]),
        ([0, 2, 3], [0, 3, 4], [0, 2, 4]),
        ([2, 3, 0], [2, 0, 4], [2, 3, 4]),
    ],
)
def test_zero_matmul_grad(lhs_shape, rhs_shape, output_shape):
    assert_zero_matmul_grads(lhs_shape, rhs_shape, output_shape)


def test_grad_descent():
    # The simplest gradient descent, using scalar variable.
    x = Var.new(0.0, CPU)
    learning_rate = 0.1
    for _step in range(100):
        xt = x.as_tensor()
        (x_grad,) = backward(lambda xt: (xt - 4.2) * (xt - 4.2), x)
        x.set(xt - x_grad * learning_rate)
    assert x.to_scalar() == F32(4.199999)


def test_unary_grad():
    x = Var.new([3.0, 1.0, 4.0, 0.15], CPU)

    y = x.log() + 1.0
    (grad_x,) = backward(lambda x: x.log() + 1.0, x)
    assert to_vec1_round(y, 4) == [2.0986, 1.0, 2.3863, -0.8971]
    assert to_vec1_round(grad_x, 4) == [0.3333, 1.0, 0.25, 6.6667]

    y = x.exp()
    (grad_x,) = backward(lambda x: x.exp(), x)
    assert to_vec1_round(y, 4) == [20.0855, 2.7183, 54.5982, 1.1618]
    assert to_vec1_round(grad_x, 4) == [20.0855, 2.7183, 54.5982, 1.1618]

    y = x.exp().sqr()
    (grad_x,) = backward(lambda x: x.exp().sqr(), x)
    assert to_vec1_round(y, 3) == [403.429, 7.389, 2980.958, 1.35]
    # exp(x)^2 = exp(2*x)
    assert to_vec1_round(grad_x, 2) == [806.86, 14.78, 5961.92, 2.7]

    y = x.sin()
    (grad_x,) = backward(lambda x: x.sin(), x)
    assert to_vec1_round(y, 4) == [0.1411, 0.8415, -0.7568, 0.1494]
    assert to_vec1_round(grad_x, 4) == [-0.99, 0.5403, -0.6536, 0.9888]

    y = x.cos()
    (grad_x,) = backward(lambda x: x.cos(), x)
    assert to_vec1_round(y, 4) == [-0.99, 0.5403, -0.6536, 0.9888]
    assert to_vec1_round(grad_x, 4) == [-0.1411, -0.8415, 0.7568, -0.1494]

    y = x.sqr()
    (grad_x,) = backward(lambda x: x.sqr(), x)
    assert y.to_vec1() == f32([9.0, 1.0, 16.0, 0.0225])
    assert grad_x.to_vec1() == f32([6.0, 2.0, 8.0, 0.3])

    y = x.sqr().sqrt()
    (grad_x,) = backward(lambda x: x.sqr().sqrt(), x)
    assert y.to_vec1() == f32([3.0, 1.0, 4.0, 0.15])
    assert to_vec1_round(grad_x, 4) == [1.0, 1.0, 1.0, 1.0]

    y = x.neg()
    (grad_x,) = backward(lambda x: x.neg(), x)
    assert y.to_vec1() == f32([-3.0, -1.0, -4.0, -0.15])
    assert grad_x.to_vec1() == [-1.0, -1.0, -1.0, -1.0]

    y = x.affine(0.2, 1.0)
    (grad_x,) = backward(lambda x: x.affine(0.2, 1.0), x)
    assert y.to_vec1() == f32([1.6, 1.2, 1.8, 1.03])
    assert grad_x.to_vec1() == f32([0.2, 0.2, 0.2, 0.2])

    y = Tensor.new(1.0, CPU).broadcast_div(x)
    (grad_x,) = backward(lambda x: Tensor.new(1.0, CPU).broadcast_div(x), x)
    assert to_vec1_round(y, 4) == [0.3333, 1.0, 0.25, 6.6667]
    assert grad_x.to_vec1() == f32([-0.11111111, -1.0, -0.0625, -44.444443])

    y = x.broadcast_div(Tensor.new(0.5, CPU))
    (grad_x,) = backward(lambda x: x.broadcast_div(Tensor.new(0.5, CPU)), x)
    assert y.to_vec1() == f32([6.0, 2.0, 8.0, 0.3])
    assert grad_x.to_vec1() == [2.0, 2.0, 2.0, 2.0]


def test_unary_grad_powf_and_activations():
    # The second half of Candle's unary_grad, from its fresh Var on.
    x = Var.new([3.0, 1.0, 4.0, 0.15], CPU)
    y = x.powf(2.5)
    (grad_x,) = backward(lambda x: x.powf(2.5), x)
    assert to_vec1_round(y, 2) == [15.59, 1.0, 32.0, 0.01]
    assert to_vec1_round(grad_x, 2) == [12.99, 2.5, 20.0, 0.15]

    y = x.tanh()
    (grad_x,) = backward(lambda x: x.tanh(), x)
    assert to_vec1_round(y, 2) == [1.0, 0.76, 1.0, 0.15]
    assert to_vec1_round(grad_x, 2) == [0.01, 0.42, 0.0, 0.98]

    # testing compared to pytorch nn.GELU(approximate = 'tanh')
    y = x.gelu()
    (grad_x,) = backward(lambda x: x.gelu(), x)
    assert to_vec1_round(y, 4) == [2.9964, 0.8412, 3.9999, 0.0839]
    assert to_vec1_round(grad_x, 4) == [1.0116, 1.0830, 1.0003, 0.6188]

    # Testing compared to pytorch torch.erf
    y = x.erf()
    (grad_x,) = backward(lambda x: x.erf(), x)
    assert to_vec1_round(y, 4) == [1.0, 0.8427, 1.0, 0.168]
    assert to_vec1_round(grad_x, 4) == [0.0001, 0.4151, 0.0, 1.1033]

    # Testing compared to pytorch nn.GELU(approximate = 'none')
    y = x.gelu_erf()
    (grad_x,) = backward(lambda x: x.gelu_erf(), x)
    assert to_vec1_round(y, 4) == [2.9960, 0.8413, 3.9999, 0.0839]
    assert to_vec1_round(grad_x, 4) == [1.0119, 1.0833, 1.0005, 0.6188]

    # testing compared to pytorch nn.Silu()
    y = x.silu()
    (grad_x,) = backward(lambda x: x.silu(), x)
    assert to_vec1_round(y, 4) == [2.8577, 0.7311, 3.9281, 0.0806]
    assert to_vec1_round(grad_x, 4) == [1.0881, 0.9277, 1.0527, 0.5747]


def test_unary_grad_elu():
    # The elu part of Candle's unary_grad. Testing compared to pytorch elu (F.elu(x, alpha=2.0))
    elu_x = Var.new([-1.0, 0.0, -2.0, 3.0], CPU)
    y = elu_x.elu(2.0)
    (grad_x,) = backward(lambda x: x.elu(2.0), elu_x)
    assert to_vec1_round(y, 4) == [-1.2642, 0.0000, -1.7293, 3.0000]
    assert to_vec1_round(grad_x, 4) == [0.7358, 2.0000, 0.2707, 1.0000]


def _matmul_loss(y, z):
    """Candle's ``y.unsqueeze(1)?.transpose(0, 1)?.matmul(&z.unsqueeze(1)?)``: the dot product of y and z."""
    return y.unsqueeze(1).transpose(0, 1).matmul(z.unsqueeze(1))


Z36 = [float(v) for v in range(1, 37)]
Z32 = [float(v) for v in range(1, 33)]


def test_unary_grad_interpolate1d():
    # In Candle's unary_grad, run on the CPU only.
    x = Var.new([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]], CPU)
    z = Tensor.new(Z36, CPU)
    (grad_x,) = backward(lambda x: _matmul_loss(x.interpolate1d(12).reshape(36), z), x)
    assert to_vec3_round(grad_x, 4) == [[[10.0, 26.0, 42.0], [58.0, 74.0, 90.0], [106.0, 122.0, 138.0]]]


def test_unary_grad_interpolate2d():
    # manually checked: see comments
    x = Var.new([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]], CPU)
    z = Tensor.new(Z36, CPU)
    # gradient should be
    # row 1: 1+2+7+8 = 18, 3+4+9+10 = 26, 5+6+11+12 = 34
    # row 2: 13+14+19+20 = 66, 15+16+21+22 = 74, 17+18+23+24 = 82
    # row 3: 25+26+31+32 = 114, 27+28+33+34 = 122, 29+30+35+36 = 130
    (grad_x,) = backward(lambda x: _matmul_loss(x.interpolate2d(6, 6).reshape(36), z), x)
    assert to_vec2_round(grad_x.flatten(0, 2), 4) == [[18.0, 26.0, 34.0], [66.0, 74.0, 82.0], [114.0, 122.0, 130.0]]

    # manually checked: see comments
    x = Var.new([[[[1.0, 2.0], [4.0, 5.0]]]], CPU)
    z = Tensor.new(Z36, CPU)
    # gradient should be
    # row 1: 1+2+3+7+8+9+13+14+15 = 72, 4+5+6+10+11+12+16+17+18 = 99
    # row 2: 19+20+21+25+26+27+31+32+33 = 234, 22+23+24+28+29+30+34+35+36 = 243
    (grad_x,) = backward(lambda x: _matmul_loss(x.interpolate2d(6, 6).reshape(36), z), x)
    assert to_vec2_round(grad_x.flatten(0, 2), 4) == [[72.0, 99.0], [234.0, 261.0]]

    # manually checked: see comments
    x = Var.new([[[[1.0, 2.0], [4.0, 5.0]], [[6.0, 7.0], [8.0, 9.0]]]], CPU)
    z = Tensor.new(Z32, CPU)
    # gradient should be
    # m1r1: 1+2+5+6=14, 3+4+7+8=22; m1r2: 9+10+13+14=46, 11+12+15+16=54
    # m2r1: 17+18+21+22=78, 19+20+23+24=86; m2r2: 25+26+29+30=110, 27+28+31+32=118
    (grad_x,) = backward(lambda x: _matmul_loss(x.interpolate2d(4, 4).reshape(32), z), x)
    assert to_vec3_round(grad_x.flatten(0, 1), 4) == [[[14.0, 22.0], [46.0, 54.0]], [[78.0, 86.0], [110.0, 118.0]]]

    # manually checked: see comments
    x = Var.new([[[[1.0, 2.0], [4.0, 5.0]]], [[[6.0, 7.0], [8.0, 9.0]]]], CPU)
    z = Tensor.new(Z32, CPU)
    (grad_x,) = backward(lambda x: _matmul_loss(x.interpolate2d(4, 4).reshape(32), z), x)
    assert to_vec3_round(grad_x.flatten(0, 1), 4) == [[[14.0, 22.0], [46.0, 54.0]], [[78.0, 86.0], [110.0, 118.0]]]


def test_binary_grad():
    x = Var.new([3.0, 1.0, -4.0, -1.0], CPU)
    # leaky relu
    y = x.maximum(x * 0.1)
    (grad_x,) = backward(lambda x: x.maximum(x * 0.1), x)
    assert x.to_vec1() == [3.0, 1.0, -4.0, -1.0]
    assert y.to_vec1() == f32([3.0, 1.0, -0.4, -0.1])
    assert grad_x.to_vec1() == f32([1.0, 1.0, 0.1, 0.1])

    y = x.minimum(x * 0.1)
    (grad_x,) = backward(lambda x: x.minimum(x * 0.1), x)
    assert y.to_vec1() == f32([0.3, 0.1, -4.0, -1.0])
    assert grad_x.to_vec1() == f32([0.1, 0.1, 1.0, 1.0])

    # This one is easy to mess up, we want the gradient to be one as it is the identity function.
    y = x.minimum(x)
    (grad_x,) = backward(lambda x: x.minimum(x), x)
    assert y.to_vec1() == [3.0, 1.0, -4.0, -1.0]
    assert grad_x.to_vec1() == [1.0, 1.0, 1.0, 1.0]

    x_var = Var.new([3.0, 1.0, -4.0, -1.0, 5.0, 9.0], CPU)
    y_var = Var.new([2.0, 7.0, 1.0], CPU)

    def f(x, y):
        return x.reshape((2, 3)).slice_scatter0(y.reshape((1, 3)), 1).sqr()

    ss = f(x_var, y_var)
    grad_x, grad_y = backward(f, x_var, y_var)
    assert ss.to_vec2() == [[9.0, 1.0, 16.0], [4.0, 49.0, 1.0]]
    assert grad_x.to_vec1() == [6.0, 2.0, -8.0, 0.0, 0.0, 0.0]
    assert grad_y.to_vec1() == [4.0, 14.0, 2.0]


def test_flip_backprop(x64):
    device = CPU

    # Create a tensor (leaf node) that requires gradients
    x = Var.ones((2, 2), DType.F64, device)
    weights = Tensor.arange(1.0, 5.0, device, dtype=DType.F64).reshape((2, 2))

    y = x.matmul(weights)
    expected_y = Tensor.from_vec([4.0, 6.0, 4.0, 6.0], (2, 2), device, dtype=DType.F64)
    cj.testing.assert_tensor_eq(y, expected_y)

    z = y.flip([1])
    expected_z = Tensor.from_vec([6.0, 4.0, 6.0, 4.0], (2, 2), device, dtype=DType.F64)
    cj.testing.assert_tensor_eq(z, expected_z)

    (grad_x,) = backward(lambda x: x.matmul(weights).flip([1]).sum_all(), x)
    assert grad_x.dtype == DType.F64

    flipped_weights = weights.flip([1])
    dloss_dy = Tensor.ones((2, 2), DType.F64, device)
    # dloss/dx = dloss/dy @ dy/dx = ones @ weight.flip.T
    expected_grad = dloss_dy.matmul(flipped_weights.t())
    cj.testing.assert_tensor_eq(grad_x, expected_grad)


def test_vjp_with_an_integer_input_gives_a_printable_float0_cotangent():
    """``jax.vjp`` over an integer Tensor returns a float0 cotangent Tensor; it prints (it raised)."""
    import jax

    ti = Tensor(np.array([1, 2], np.int32))
    tf = Tensor(np.array([1.0, 2.0], np.float32))
    _, vjp = jax.vjp(lambda a, b: (a * b.to_dtype(DType.F32)).sum_all().jax, tf, ti)
    gf, gi = vjp(np.float32(1.0))
    assert gf.to_vec1() == [1.0, 2.0]
    assert repr(gi) == "Tensor[[2], float0] (the zero cotangent of an integer input)"
