"""Candle's candle-core/tests/tensor_tests.rs, first part (``zeros`` through ``index_select``),
ported test by test and assertion by assertion with Candle's expected values, on ``Device.Cpu``
(the ``*_cpu`` instances of Candle's ``test_device!`` macro).

Rust's typed literals (``0u8``, ``5i64``) are ``dtype=`` here; ``to_vecN::<T>()`` is
``to_vecN(DType.T)`` where T is not f32, so the dtype is checked as Rust checks it. f32 literals
that are not exact (``6.2``) are compared as f32 values, as Rust's ``assert_eq!`` on ``Vec<f32>`` does.
I64 / F64 tensors need JAX's x64 mode (the ``x64`` fixture), a documented difference.
"""

from __future__ import annotations

import numpy as np
import pytest

import candlejax as cj
from candlejax import Device, DType, Tensor, errors
from candlejax.testing import to_vec1_round, to_vec2_round

DEVICE = Device.Cpu


def f32(values):
    """Literals as the f32 values Rust's ``[f32]`` literals are."""
    return np.asarray(values, np.float32).tolist()


def test_zeros():
    tensor = Tensor.zeros((5, 2), DType.F32, DEVICE)
    (dim1, dim2) = tensor.dims2()
    assert dim1 == 5
    assert dim2 == 2


def test_ones(x64):
    assert Tensor.ones((2, 3), DType.U8, DEVICE).to_vec2(DType.U8) == [[1, 1, 1], [1, 1, 1]]
    assert Tensor.ones((2, 3), DType.U32, DEVICE).to_vec2(DType.U32) == [[1, 1, 1], [1, 1, 1]]
    assert Tensor.ones((2, 3), DType.I64, DEVICE).to_vec2(DType.I64) == [[1, 1, 1], [1, 1, 1]]
    assert Tensor.ones((2, 3), DType.F32, DEVICE).to_vec2(DType.F32) == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    assert Tensor.ones((2, 3), DType.F64, DEVICE).to_vec2(DType.F64) == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    assert Tensor.ones((2, 3), DType.F16, DEVICE).to_vec2(DType.F16) == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    assert Tensor.ones((2, 3), DType.BF16, DEVICE).to_vec2(DType.BF16) == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    assert Tensor.ones((2, 3), DType.F8E4M3, DEVICE).to_vec2(DType.F8E4M3) == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]


def test_full():
    tensor = Tensor.zeros((3, 4), DType.U32, DEVICE)
    # const_set writes in place in Candle; here the name raises, pointing to the functional full_like
    # (documented in docs/differences/movement-indexing.md), and writes into views are slice_assign.
    with pytest.raises(errors.CandleInPlaceName, match="full_like"):
        tensor.const_set(42)
    tensor = tensor.full_like(42)
    assert tensor.to_vec2(DType.U32) == [[42, 42, 42, 42], [42, 42, 42, 42], [42, 42, 42, 42]]
    # tensor.i((.., 2))?.const_set(1337u32.into())?
    tensor = tensor.slice_assign([slice(None), range(2, 3)], tensor.i((slice(None), slice(2, 3))).full_like(1337))
    assert tensor.to_vec2(DType.U32) == [[42, 42, 1337, 42], [42, 42, 1337, 42], [42, 42, 1337, 42]]
    # tensor.i((2, ..))?.const_set(1u32.into())?
    tensor = tensor.slice_assign([range(2, 3), slice(None)], tensor.i((slice(2, 3), slice(None))).full_like(1))
    assert tensor.to_vec2(DType.U32) == [[42, 42, 1337, 42], [42, 42, 1337, 42], [1, 1, 1, 1]]


def test_const_set():
    assert Tensor.full(42, (2, 3), DEVICE, dtype=DType.U32).to_vec2(DType.U32) == [[42, 42, 42], [42, 42, 42]]
    assert Tensor.full(42, (2, 3), DEVICE).to_vec2(DType.U32) == [[42, 42, 42], [42, 42, 42]]  # 42: U32


def test_arange(x64):
    assert Tensor.arange(0, 5, DEVICE, dtype=DType.U8).to_vec1(DType.U8) == [0, 1, 2, 3, 4]
    assert Tensor.arange_step(0, 5, 2, DEVICE, dtype=DType.U8).to_vec1(DType.U8) == [0, 2, 4]
    assert Tensor.arange_step(0, 5, 3, DEVICE, dtype=DType.U8).to_vec1(DType.U8) == [0, 3]
    assert Tensor.arange_step(5, 0, -1, DEVICE, dtype=DType.I64).to_vec1(DType.I64) == [5, 4, 3, 2, 1]


def test_arange_f8e4m3():
    # the F8E4M3 part of Candle's `arange` (run on every device but Metal)
    assert Tensor.arange_step(0.0, 5.0, 2.0, DEVICE, dtype=DType.F8E4M3).to_vec1(DType.F8E4M3) == [0.0, 2.0, 4.0]


def test_add_mul():
    tensor = Tensor.new([3.0, 1.0, 4.0], DEVICE)
    dim1 = tensor.dims1()
    assert dim1 == 3
    content = tensor.to_vec1()
    assert content == [3.0, 1.0, 4.0]
    tensor = Tensor.add(tensor, tensor)
    content = tensor.to_vec1()
    assert content == [6.0, 2.0, 8.0]
    tensor = Tensor.mul(tensor, tensor)
    content = tensor.to_vec1()
    assert content == [36.0, 4.0, 64.0]


def test_tensor_2d():
    data = [[3.0, 1.0, 4.0, 1.0, 5.0], [2.0, 1.0, 7.0, 8.0, 2.0]]
    tensor = Tensor.new(data, DEVICE)
    dims = tensor.dims2()
    assert dims == (2, 5)
    content = tensor.to_vec2()
    assert content == data


def test_clamp():
    data = [[3.0, 1.0, 4.0, 1.0, 5.0], [2.0, 1.0, 7.0, 8.0, 2.0]]
    tensor = Tensor.new(data, DEVICE)
    tensor = tensor.clamp(1.5, 6.2)
    assert tensor.to_vec2(DType.F32) == f32([[3.0, 1.5, 4.0, 1.5, 5.0], [2.0, 1.5, 6.2, 6.2, 2.0]])


def test_asort():
    data = [[3.0, 1.0, 4.0, 1.1, 5.0], [2.1, 1.0, 7.0, 8.0, 2.0]]
    tensor = Tensor.new(data, DEVICE)
    indexes = tensor.arg_sort_last_dim(True)
    assert indexes.to_vec2(DType.U32) == [[1, 3, 0, 2, 4], [1, 4, 0, 2, 3]]
    indexes = tensor.arg_sort_last_dim(False)
    assert indexes.to_vec2(DType.U32) == [[4, 2, 0, 3, 1], [3, 2, 0, 4, 1]]
    (sorted_, indexes) = tensor.sort_last_dim(True)
    assert indexes.to_vec2(DType.U32) == [[1, 3, 0, 2, 4], [1, 4, 0, 2, 3]]
    assert sorted_.to_vec2(DType.F32) == f32([[1.0, 1.1, 3.0, 4.0, 5.0], [1.0, 2.0, 2.1, 7.0, 8.0]])
    (sorted_, indexes) = tensor.sort_last_dim(False)
    assert indexes.to_vec2(DType.U32) == [[4, 2, 0, 3, 1], [3, 2, 0, 4, 1]]
    assert sorted_.to_vec2(DType.F32) == f32([[5.0, 4.0, 3.0, 1.1, 1.0], [8.0, 7.0, 2.1, 2.0, 1.0]])

    offset_view = Tensor.new([[1.0, 2.0, 3.0], [30.0, 10.0, 20.0]], DEVICE).narrow(0, 1, 1)
    (sorted_, indexes) = offset_view.sort_last_dim(True)
    assert indexes.to_vec2(DType.U32) == [[1, 2, 0]]
    assert sorted_.to_vec2(DType.F32) == [[10.0, 20.0, 30.0]]

    (sorted_, indexes) = offset_view.sort_last_dim(False)
    assert indexes.to_vec2(DType.U32) == [[0, 2, 1]]
    assert sorted_.to_vec2(DType.F32) == [[30.0, 20.0, 10.0]]


def test_asort_big():
    """Sorting a tensor of more than 1024 elements."""
    size = 2000
    data = [float(size - x) for x in range(size)]
    tensor = Tensor.new(data, DEVICE)

    indexes = tensor.arg_sort_last_dim(True)
    expected_indexes = list(reversed(range(size)))
    assert indexes.to_vec1(DType.U32) == expected_indexes

    indexes = tensor.arg_sort_last_dim(False)
    expected_indexes = list(range(size))
    assert indexes.to_vec1(DType.U32) == expected_indexes


def test_unary_op():
    data = [[-3.0, 1.0, 4.0, -0.1, 0.5], [2.7, -1.8, -0.28, 1.8, 2.8]]
    tensor = Tensor.new(data, DEVICE)
    assert to_vec2_round(tensor.gelu(), 4) == [
        [-0.0036, 0.8412, 3.9999, -0.046, 0.3457],
        [2.6911, -0.0647, -0.1091, 1.7353, 2.7933],
    ]
    t_f16 = tensor.to_dtype(DType.F16).gelu().to_dtype(DType.F32)
    max_diff = (tensor.gelu() - t_f16).flatten_all().max(0)
    assert max_diff.to_vec0(DType.F32) < 5e-3
    assert to_vec2_round(tensor.gelu_erf(), 4) == [
        [-0.004, 0.8413, 3.9999, -0.046, 0.3457],
        [2.6906, -0.0647, -0.1091, 1.7353, 2.7928],
    ]
    assert to_vec2_round(tensor.erf(), 4) == [
        [-1.0, 0.8427, 1.0, -0.1125, 0.5205],
        [0.9999, -0.9891, -0.3079, 0.9891, 0.9999],
    ]
    assert to_vec2_round(tensor.silu(), 4) == [
        [-0.1423, 0.7311, 3.9281, -0.0475, 0.3112],
        [2.53, -0.2553, -0.1205, 1.5447, 2.6395],
    ]
    assert to_vec2_round(tensor.ceil(), 4) == [[-3.0, 1.0, 4.0, -0.0, 1.0], [3.0, -1.0, -0.0, 2.0, 3.0]]
    assert to_vec2_round(tensor.floor(), 4) == [[-3.0, 1.0, 4.0, -1.0, 0.0], [2.0, -2.0, -1.0, 1.0, 2.0]]
    assert to_vec2_round(tensor.round(), 4) == [[-3.0, 1.0, 4.0, -0.0, 1.0], [3.0, -2.0, -0.0, 2.0, 3.0]]
    tensor = Tensor.new([2997.9246, 314.15926], DEVICE)
    assert to_vec1_round(tensor.round_to(2), 4) == [2997.92, 314.16]
    assert to_vec1_round(tensor.round_to(-2), 4) == [3000.0, 300.0]
    tensor = Tensor.new([-1.01, -0.9, -0.1, 0.0, -0.0, 0.1, 0.9, 1.0, 1.1], DEVICE)
    assert tensor.sign().to_vec1(DType.F32) == [-1.0, -1.0, -1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    tensor = Tensor.new([-1.0, 0.0, -2.0, 3.0], DEVICE)
    y = tensor.elu(2.0)
    assert to_vec1_round(y, 4) == [-1.2642, 0.0000, -1.7293, 3.0000]
    y = tensor.reshape((2, 2)).t().elu(2.0).flatten_all()
    assert to_vec1_round(y, 4) == [-1.2642, -1.7293, 0.0000, 3.0000]


def test_binary_op():
    data = [[3.0, 1.0, 4.0, 1.0, 5.0], [2.0, 1.0, 7.0, 8.0, 2.0]]
    tensor1 = Tensor.new(data, DEVICE)
    data2 = [[5.0, 5.0, 5.0, 5.0, 5.0], [2.0, 1.0, 7.0, 8.0, 2.0]]
    tensor2 = Tensor.new(data2, DEVICE)
    tensor = tensor1 + (tensor1 * tensor1) / (tensor1 + tensor2)
    dims = tensor.dims2()
    assert dims == (2, 5)
    content = tensor.to_vec2()
    assert content[0] == f32([4.125, 1.1666666, 5.7777777, 1.1666666, 7.5])
    assert content[1] == [3.0, 1.5, 10.5, 12.0, 3.0]
    tensor = tensor - tensor
    content = tensor.to_vec2()
    assert content[0] == [0.0, 0.0, 0.0, 0.0, 0.0]

    min_ = tensor1.minimum(tensor2 * 0.5)
    max_ = tensor1.maximum(tensor2 * 0.5)
    assert min_.to_vec2(DType.F32) == [[2.5, 1.0, 2.5, 1.0, 2.5], [1.0, 0.5, 3.5, 4.0, 1.0]]
    assert max_.to_vec2(DType.F32) == [[3.0, 2.5, 4.0, 2.5, 5.0], [2.0, 1.0, 7.0, 8.0, 2.0]]

    (b, s, h, pad) = (3, 4, 5, 2)
    base = Tensor.arange(1.0, float(b * (s + pad) * h + 1), DEVICE).reshape((b, s + pad, h))
    ub = base.narrow(1, 0, s)  # uniform blocks: strides [h * (s + pad), h, 1]
    cont = ub.contiguous()
    scale = Tensor.arange(1.0, float(b * s * h + 1), DEVICE).reshape((b, s, h))
    assert (ub + scale).to_vec3(DType.F32) == (cont + scale).to_vec3(DType.F32)
    assert (ub * scale).to_vec3(DType.F32) == (cont * scale).to_vec3(DType.F32)
    # contiguous lhs, uniform blocks rhs.
    assert (scale + ub).to_vec3(DType.F32) == (scale + cont).to_vec3(DType.F32)
    # values that could fail: element [0][0][0] is 1 + 1, the last one 80 + 60
    assert (ub + scale).to_vec3(DType.F32)[0][0][0] == 2.0
    assert (ub + scale).to_vec3(DType.F32)[2][3][4] == 80.0 + 60.0


def test_ternary_op():
    data = [[0, 1, 0, 1, 0], [1, 1, 1, 0, 0]]
    ids = Tensor.new(data, DEVICE, dtype=DType.U8)
    data = [[0.0, 1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0, 9.0]]
    a = Tensor.new(data, DEVICE)
    data = [[10.0, 11.0, 12.0, 13.0, 14.0], [15.0, 16.0, 17.0, 18.0, 19.0]]
    b = Tensor.new(data, DEVICE)
    tensor = ids.where_cond(a, b)
    dims = tensor.dims()
    assert dims == [2, 5]
    result = tensor.flatten_all().to_vec1()
    assert result == [10.0, 1.0, 12.0, 3.0, 14.0, 5.0, 6.0, 7.0, 18.0, 19.0]

    fill = Tensor.new(7.0, DEVICE).broadcast_as((2, 5))  # strides [0, 0]
    assert ids.where_cond(fill, b).to_vec2(DType.F32) == [[10.0, 7.0, 12.0, 7.0, 14.0], [7.0, 7.0, 7.0, 18.0, 19.0]]

    mask = Tensor.new([[0, 1, 1, 0, 1]], DEVICE, dtype=DType.U8).broadcast_as((2, 5))  # strides [0, 1]
    assert mask.where_cond(a, b).to_vec2(DType.F32) == mask.contiguous().where_cond(a, b).to_vec2(DType.F32)

    a_t = Tensor.arange(0.0, 10.0, DEVICE).reshape((5, 2)).t()
    ids_t = Tensor.new([[0, 1], [1, 1], [0, 0], [1, 0], [1, 1]], DEVICE, dtype=DType.U8).t()
    assert ids_t.where_cond(a_t, b).to_vec2(DType.F32) == ids_t.contiguous().where_cond(a_t.contiguous(), b).to_vec2(
        DType.F32
    )

    narrowed = Tensor.arange(0.0, 14.0, DEVICE).reshape((2, 7)).narrow(1, 1, 5)  # strides [7, 1], offset 1
    assert ids.where_cond(fill, narrowed).to_vec2(DType.F32) == ids.where_cond(
        fill.contiguous(), narrowed.contiguous()
    ).to_vec2(DType.F32)

    fill2 = Tensor.new(9.0, DEVICE).broadcast_as((2, 5))
    assert ids.where_cond(a, fill).to_vec2(DType.F32) == ids.where_cond(a, fill.contiguous()).to_vec2(DType.F32)
    assert ids.where_cond(fill, fill2).to_vec2(DType.F32) == ids.where_cond(
        fill.contiguous(), fill2.contiguous()
    ).to_vec2(DType.F32)

    row_mask = Tensor.new([[1], [0]], DEVICE, dtype=DType.U8).broadcast_as((2, 5))  # strides [1, 0]
    row_ref = row_mask.contiguous()
    assert row_mask.where_cond(a, b).to_vec2(DType.F32) == row_ref.where_cond(a, b).to_vec2(DType.F32)
    assert row_mask.where_cond(a, fill).to_vec2(DType.F32) == row_ref.where_cond(a, fill.contiguous()).to_vec2(
        DType.F32
    )
    assert row_mask.where_cond(fill, b).to_vec2(DType.F32) == row_ref.where_cond(fill.contiguous(), b).to_vec2(
        DType.F32
    )
    assert row_mask.where_cond(fill, fill2).to_vec2(DType.F32) == row_ref.where_cond(
        fill.contiguous(), fill2.contiguous()
    ).to_vec2(DType.F32)
    # the values behind the comparisons above
    assert row_mask.where_cond(a, fill).to_vec2(DType.F32) == [[0.0, 1.0, 2.0, 3.0, 4.0], [7.0] * 5]
    assert ids_t.where_cond(a_t, b).to_vec2(DType.F32) == [[10.0, 2.0, 12.0, 6.0, 8.0], [1.0, 3.0, 17.0, 18.0, 9.0]]


def test_transpose():
    data = [[3.0, 1.0, 4.0, 1.0, 5.0], [2.0, 1.0, 7.0, 8.0, 2.0]]
    tensor = Tensor.new(data, DEVICE).t()
    dims = tensor.dims2()
    assert dims == (5, 2)
    assert tensor.to_vec2(DType.F32) == [[3.0, 2.0], [1.0, 1.0], [4.0, 7.0], [1.0, 8.0], [5.0, 2.0]]
    assert tensor.t().to_vec2(DType.F32) == data
    assert tensor.contiguous().t().to_vec2(DType.F32) == data
    assert ((tensor + 1.0).t() - 1.0).to_vec2(DType.F32) == data


def test_var():
    # Values taken from https://pytorch.org/docs/stable/generated/torch.var.html
    data = [
        [0.2035, 1.2959, 1.8101, -0.4644],
        [1.5027, -0.3270, 0.5905, 0.6538],
        [-1.5745, 1.3330, -0.5596, -0.6548],
        [0.1264, -0.5080, 1.6420, 0.1992],
    ]
    tensor = Tensor.new(data, DEVICE)
    assert to_vec2_round(tensor.var_keepdim(1), 4) == [[1.0631], [0.559], [1.4893], [0.8258]]


def test_sum():
    data = [[[3, 1, 4], [1, 5, 9]], [[2, 1, 7], [8, 2, 8]]]
    tensor = Tensor.new(data, DEVICE)
    assert tensor.sum_keepdim(2).to_vec3(DType.U32) == [[[8], [15]], [[10], [18]]]
    assert tensor.sum_keepdim(0).to_vec3(DType.U32) == [[[5, 2, 11], [9, 7, 17]]]
    assert tensor.sum_keepdim((0, 2, 1)).to_vec3(DType.U32) == [[[51]]]
    assert tensor.t().sum_keepdim(1).t().to_vec3(DType.U32) == [[[8], [15]], [[10], [18]]]
    assert tensor.sum_keepdim((2, 1)).to_vec3(DType.U32) == [[[8 + 15]], [[10 + 18]]]
    data = list(range(4000))
    tensor = Tensor.new(data, DEVICE)
    assert tensor.sum_keepdim(0).to_vec1(DType.U32) == [7998000]
    tensor = tensor.reshape((2000, 2))
    assert tensor.sum_keepdim((0, 1)).to_vec2(DType.U32) == [[7998000]]
    assert tensor.sum_keepdim(0).sum_keepdim(1).to_vec2(DType.U32) == [[7998000]]
    assert tensor.sum_keepdim(1).sum_keepdim(0).to_vec2(DType.U32) == [[7998000]]
    assert tensor.sum_keepdim(0).to_vec2(DType.U32) == [[3998000, 4000000]]

    # Make the tensor non contiguous.
    tensor = tensor.t().contiguous().t()
    assert tensor.sum_keepdim((0, 1)).to_vec2(DType.U32) == [[7998000]]
    assert tensor.sum_keepdim(0).sum_keepdim(1).to_vec2(DType.U32) == [[7998000]]
    assert tensor.sum_keepdim(1).sum_keepdim(0).to_vec2(DType.U32) == [[7998000]]
    assert tensor.sum_keepdim(0).to_vec2(DType.U32) == [[3998000, 4000000]]

    t1 = tensor.reshape((200, 5, 4))
    t2 = t1.transpose(0, 2).contiguous().transpose(0, 2)
    for tensor in [t1, t2]:
        assert tensor.sum_keepdim((0, 1, 2)).to_vec3(DType.U32) == [[[7998000]]]
        assert tensor.sum_keepdim(0).sum_keepdim(2).sum_keepdim(1).to_vec3(DType.U32) == [[[7998000]]]
        assert tensor.sum_keepdim(0).sum_keepdim((1, 2)).to_vec3(DType.U32) == [[[7998000]]]
        assert tensor.sum_keepdim(1).sum_keepdim((0, 2)).to_vec3(DType.U32) == [[[7998000]]]
        assert tensor.sum_keepdim(0).to_vec3(DType.U32) == [
            [
                [398000, 398200, 398400, 398600],
                [398800, 399000, 399200, 399400],
                [399600, 399800, 400000, 400200],
                [400400, 400600, 400800, 401000],
                [401200, 401400, 401600, 401800],
            ]
        ]


def test_min():
    data = [[[3, 1, 4], [1, 5, 9]], [[2, 1, 7], [8, 2, 8]]]
    tensor = Tensor.new(data, DEVICE)
    assert tensor.min_keepdim(2).to_vec3(DType.U32) == [[[1], [1]], [[1], [2]]]
    assert tensor.min_keepdim(0).to_vec3(DType.U32) == [[[2, 1, 4], [1, 2, 8]]]
    data = list(range(200, 4000))
    tensor = Tensor.new(data, DEVICE)
    assert tensor.min_keepdim(0).to_vec1(DType.U32) == [200]
    tensor = tensor.reshape((1900, 2))
    assert tensor.min_keepdim(0).min_keepdim(1).to_vec2(DType.U32) == [[200]]
    assert tensor.min_keepdim(1).min_keepdim(0).to_vec2(DType.U32) == [[200]]
    assert tensor.min_keepdim(0).to_vec2(DType.U32) == [[200, 201]]

    # Make the tensor non contiguous.
    tensor = tensor.t().contiguous().t()
    assert tensor.min_keepdim(0).min_keepdim(1).to_vec2(DType.U32) == [[200]]
    assert tensor.min_keepdim(1).min_keepdim(0).to_vec2(DType.U32) == [[200]]
    assert tensor.min_keepdim(0).to_vec2(DType.U32) == [[200, 201]]

    t1 = tensor.reshape((190, 5, 4))
    t2 = t1.transpose(0, 2).contiguous().transpose(0, 2)
    for tensor in [t1, t2]:
        assert tensor.min_keepdim(0).min_keepdim(2).min_keepdim(1).to_vec3(DType.U32) == [[[200]]]
        assert tensor.min_keepdim(0).to_vec3(DType.U32) == [
            [
                [200, 201, 202, 203],
                [204, 205, 206, 207],
                [208, 209, 210, 211],
                [212, 213, 214, 215],
                [216, 217, 218, 219],
            ]
        ]


def test_max():
    data = [[[3, 1, 4], [1, 5, 9]], [[2, 1, 7], [8, 2, 8]]]
    tensor = Tensor.new(data, DEVICE)
    assert tensor.max_keepdim(2).to_vec3(DType.U32) == [[[4], [9]], [[7], [8]]]
    assert tensor.max_keepdim(0).to_vec3(DType.U32) == [[[3, 1, 7], [8, 5, 9]]]
    data = list(range(200, 4000))
    tensor = Tensor.new(data, DEVICE)
    assert tensor.max_keepdim(0).to_vec1(DType.U32) == [3999]
    tensor = tensor.reshape((1900, 2))
    assert tensor.max_keepdim(0).max_keepdim(1).to_vec2(DType.U32) == [[3999]]
    assert tensor.max_keepdim(1).max_keepdim(0).to_vec2(DType.U32) == [[3999]]
    assert tensor.max_keepdim(0).to_vec2(DType.U32) == [[3998, 3999]]

    # Make the tensor non contiguous.
    tensor = tensor.t().contiguous().t()
    assert tensor.max_keepdim(0).max_keepdim(1).to_vec2(DType.U32) == [[3999]]
    assert tensor.max_keepdim(1).max_keepdim(0).to_vec2(DType.U32) == [[3999]]
    assert tensor.max_keepdim(0).to_vec2(DType.U32) == [[3998, 3999]]

    t1 = tensor.reshape((190, 5, 4))
    t2 = t1.transpose(0, 2).contiguous().transpose(0, 2)
    for tensor in [t1, t2]:
        assert tensor.max_keepdim(0).max_keepdim(2).max_keepdim(1).to_vec3(DType.U32) == [[[3999]]]
        assert tensor.max_keepdim(0).to_vec3(DType.U32) == [
            [
                [3980, 3981, 3982, 3983],
                [3984, 3985, 3986, 3987],
                [3988, 3989, 3990, 3991],
                [3992, 3993, 3994, 3995],
                [3996, 3997, 3998, 3999],
            ]
        ]


def test_argmin():
    data = [[[3, 1, 4], [1, 5, 9]], [[2, 1, 7], [8, 2, 8]]]
    tensor = Tensor.new(data, DEVICE)
    assert tensor.argmin_keepdim(2).to_vec3(DType.U32) == [[[1], [0]], [[1], [1]]]
    assert tensor.argmin_keepdim(0).to_vec3(DType.U32) == [[[1, 0, 0], [0, 1, 1]]]
    data = list(range(200, 4000))
    tensor = Tensor.new(data, DEVICE)
    assert tensor.argmin_keepdim(0).to_vec1(DType.U32) == [0]
    tensor = tensor.reshape((1900, 2))
    assert tensor.argmin_keepdim(0).argmin_keepdim(1).to_vec2(DType.U32) == [[0]]
    assert tensor.argmin_keepdim(1).argmin_keepdim(0).to_vec2(DType.U32) == [[0]]
    assert tensor.argmin_keepdim(0).to_vec2(DType.U32) == [[0, 0]]

    # Make the tensor non contiguous.
    tensor = tensor.t().contiguous().t()
    assert tensor.argmin_keepdim(0).argmin_keepdim(1).to_vec2(DType.U32) == [[0]]
    assert tensor.argmin_keepdim(1).argmin_keepdim(0).to_vec2(DType.U32) == [[0]]
    assert tensor.argmin_keepdim(0).to_vec2(DType.U32) == [[0, 0]]

    t1 = tensor.reshape((190, 5, 4))
    t2 = t1.transpose(0, 2).contiguous().transpose(0, 2)
    for tensor in [t1, t2]:
        assert tensor.argmin_keepdim(0).argmin_keepdim(2).argmin_keepdim(1).to_vec3(DType.U32) == [[[0]]]
        assert tensor.argmin_keepdim(0).to_vec3(DType.U32) == [
            [
                [0, 0, 0, 0],
                [0, 0, 0, 0],
                [0, 0, 0, 0],
                [0, 0, 0, 0],
                [0, 0, 0, 0],
            ]
        ]


def test_argmax():
    data = [[[3, 1, 4], [1, 5, 9]], [[2, 1, 7], [8, 2, 8]]]
    tensor = Tensor.new(data, DEVICE)
    assert tensor.argmax_keepdim(2).to_vec3(DType.U32) == [[[2], [2]], [[2], [0]]]
    assert tensor.argmax_keepdim(0).to_vec3(DType.U32) == [[[0, 0, 1], [1, 0, 0]]]
    data = list(range(200, 4000))
    tensor = Tensor.new(data, DEVICE)
    assert tensor.argmax_keepdim(0).to_vec1(DType.U32) == [3799]
    tensor = tensor.reshape((1900, 2))
    assert tensor.argmax_keepdim(0).argmax_keepdim(1).to_vec2(DType.U32) == [[0]]
    assert tensor.argmax_keepdim(1).argmax_keepdim(0).to_vec2(DType.U32) == [[0]]
    assert tensor.argmax_keepdim(0).to_vec2(DType.U32) == [[1899, 1899]]

    # Make the tensor non contiguous.
    tensor = tensor.t().contiguous().t()
    assert tensor.argmax_keepdim(0).argmax_keepdim(1).to_vec2(DType.U32) == [[0]]
    assert tensor.argmax_keepdim(1).argmax_keepdim(0).to_vec2(DType.U32) == [[0]]
    assert tensor.argmax_keepdim(0).to_vec2(DType.U32) == [[1899, 1899]]

    t1 = tensor.reshape((190, 5, 4))
    t2 = t1.transpose(0, 2).contiguous().transpose(0, 2)
    for tensor in [t1, t2]:
        assert tensor.argmax_keepdim(0).argmax_keepdim(2).argmax_keepdim(1).to_vec3(DType.U32) == [[[0]]]
        assert tensor.argmax_keepdim(0).to_vec3(DType.U32) == [
            [
                [189, 189, 189, 189],
                [189, 189, 189, 189],
                [189, 189, 189, 189],
                [189, 189, 189, 189],
                [189, 189, 189, 189],
            ]
        ]


def test_narrow():
    data = [[[3.0, 1.0, 4.0], [1.0, 5.0, 9.0]], [[2.0, 1.0, 7.0], [8.0, 2.0, 8.0]]]
    tensor = Tensor.new(data, DEVICE)
    assert tensor.narrow(2, 1, 2).to_vec3(DType.F32) == [[[1.0, 4.0], [5.0, 9.0]], [[1.0, 7.0], [2.0, 8.0]]]
    assert tensor.narrow(1, 1, 1).to_vec3(DType.F32) == [[[1.0, 5.0, 9.0]], [[8.0, 2.0, 8.0]]]
    assert tensor.narrow(0, 0, 1).to_vec3(DType.F32) == [[[3.0, 1.0, 4.0], [1.0, 5.0, 9.0]]]
    assert tensor.narrow(0, 1, 1).to_vec3(DType.F32) == [[[2.0, 1.0, 7.0], [8.0, 2.0, 8.0]]]
    # The following has been checked against PyTorch via:
    #   import torch
    #   t = torch.tensor([[[3., 1., 4.], [1., 5., 9.]], [[2., 1., 7.], [8., 2., 8.]]])
    #   t.transpose(-1, -2).narrow(1, 1, 2)
    assert tensor.t().narrow(1, 1, 2).to_vec3(DType.F32) == [[[1.0, 5.0], [4.0, 9.0]], [[1.0, 2.0], [7.0, 8.0]]]


def test_broadcast():
    data = [3.0, 1.0, 4.0]
    tensor = Tensor.new(data, DEVICE)
    assert tensor.broadcast_left((3, 1)).to_vec3(DType.F32) == [
        [[3.0, 1.0, 4.0]],
        [[3.0, 1.0, 4.0]],
        [[3.0, 1.0, 4.0]],
    ]


def test_slice_set():
    (b, h, max_t, d) = (2, 4, 7, 3)
    cache = Tensor.zeros((b, h, max_t, d), DType.F32, DEVICE)
    tensor = Tensor.randn(0.0, 1.0, (b, h, 4, d), DEVICE)
    # Candle's slice_set writes in place; as a bare statement it raises here, naming the rebinding
    # (docs/differences/movement-indexing.md), and the rebinding form gives Candle's values.
    with pytest.raises(errors.InPlaceStatement, match=r"t = t\.slice_set\(src, dim, offset\)"):
        cache.slice_set(tensor, 2, 0)
    cache = cache.slice_set(tensor, 2, 0)
    cache_t = cache.narrow(2, 0, 4)
    diff = (cache_t - tensor).abs().sum_all().to_vec0(DType.F32)
    assert diff == 0.0
    cache = cache.slice_set(tensor, 2, 1)
    cache_t = cache.narrow(2, 1, 4)
    diff = (cache_t - tensor).abs().sum_all().to_vec0(DType.F32)
    assert diff == 0.0
    ones = Tensor.ones((b, h, 1, d), DType.F32, DEVICE)
    cache = cache.slice_set(ones, 2, 6)
    diff = cache.narrow(2, 5, 1).abs().sum_all().to_vec0(DType.F32)
    assert diff == 0.0
    diff = (cache.narrow(2, 6, 1) - 1.0).abs().sum_all().to_vec0(DType.F32)
    assert diff == 0.0
    # Candle refuses a source that shares the destination's storage ("This used to create a deadlock
    # rather than returning an actual error"); tensors here share no storage, so the documented
    # behaviour is that this works and returns the source's values.
    out = cache.slice_set(cache, 0, 0)
    assert np.array_equal(np.asarray(out), np.asarray(cache))


def test_cat(x64):
    # 1D
    t1 = Tensor.new([3.0, 1.0, 4.0], DEVICE)
    t2 = Tensor.new([1.0, 5.0, 9.0, 2.0], DEVICE)
    t3 = Tensor.new([6.0, 5.0, 3.0, 5.0, 8.0, 9.0], DEVICE)
    assert Tensor.cat([t1], 0).to_vec1(DType.F32) == [3.0, 1.0, 4.0]
    assert Tensor.cat([t1, t2], 0).to_vec1(DType.F32) == [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    assert Tensor.cat([t1, t2, t3], 0).to_vec1(DType.F32) == [
        3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0, 8.0, 9.0,
    ]  # fmt: skip

    # 2D
    data = [[3.0, 1.0, 4.0, 1.0, 5.0], [2.0, 7.0, 1.0, 8.0, 2.0]]
    t1 = Tensor.new(data, DEVICE)
    data2 = [[5.0, 5.0, 5.0, 5.0, 5.0], [2.0, 7.0, 1.0, 8.0, 2.0]]
    t2 = Tensor.new(data2, DEVICE)
    assert Tensor.cat([t1, t2], 0).to_vec2(DType.F32) == [
        [3.0, 1.0, 4.0, 1.0, 5.0],
        [2.0, 7.0, 1.0, 8.0, 2.0],
        [5.0, 5.0, 5.0, 5.0, 5.0],
        [2.0, 7.0, 1.0, 8.0, 2.0],
    ]
    # PyTorch equivalent:
    #     import torch
    #     t1 = torch.tensor([[3, 1, 4, 1, 5], [2, 7, 1, 8, 2]])
    #     t2 = torch.tensor([[5]*5, [2, 7, 1, 8, 2]])
    #     torch.cat([t1.t(), t2.t()], dim=1).t()
    assert Tensor.cat([t1.t(), t2.t()], 1).t().to_vec2(DType.F32) == [
        [3.0, 1.0, 4.0, 1.0, 5.0],
        [2.0, 7.0, 1.0, 8.0, 2.0],
        [5.0, 5.0, 5.0, 5.0, 5.0],
        [2.0, 7.0, 1.0, 8.0, 2.0],
    ]
    assert Tensor.cat([t1, t2], 1).to_vec2(DType.F32) == [
        [3.0, 1.0, 4.0, 1.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
        [2.0, 7.0, 1.0, 8.0, 2.0, 2.0, 7.0, 1.0, 8.0, 2.0],
    ]

    # 3D
    t1 = Tensor.arange(0, 48, DEVICE, dtype=DType.I64).reshape((2, 6, 4))
    t2 = Tensor.arange(100, 124, DEVICE, dtype=DType.I64).reshape((2, 3, 4))
    t3 = Tensor.arange(10000, 10032, DEVICE, dtype=DType.I64).reshape((2, 4, 4))

    t_cat = Tensor.cat([t1, t2, t3], 1)

    t1 = t1.t().contiguous().t()
    t2 = t2.t().contiguous().t()
    t3 = t3.t().contiguous().t()
    t_cat2 = Tensor.cat([t1, t2, t3], 1)

    diff = t_cat.eq(t_cat2).to_dtype(DType.F32).sum_all()
    assert diff.to_vec0(DType.F32) == 104.0
    assert t_cat.i((0, 0, 0)).to_vec0(DType.I64) == 0
    assert t_cat.i((0, 4, 0)).to_vec0(DType.I64) == 16
    assert t_cat.i((0, 5, 0)).to_vec0(DType.I64) == 20
    assert t_cat.i((1, 5, 0)).to_vec0(DType.I64) == 44
    assert t_cat.i((0, 6, 0)).to_vec0(DType.I64) == 100
    assert t_cat.i((1, 6, 0)).to_vec0(DType.I64) == 112
    assert t_cat.i((0, 6, 1)).to_vec0(DType.I64) == 101
    assert t_cat.i((0, 7, 1)).to_vec0(DType.I64) == 105
    assert t_cat.i((0, 12, 1)).to_vec0(DType.I64) == 10013
    assert t_cat.i((1, 12, 3)).to_vec0(DType.I64) == 10031

    # compare contiguous to uniform blocks
    (b, s, h, pad) = (3, 4, 5, 2)
    base = Tensor.arange(0.0, float(b * (s + pad) * h), DEVICE).reshape((b, s + pad, h))
    tp1 = base.narrow(1, 0, s)
    tp2 = base.narrow(1, pad, s)
    cat_padded = Tensor.cat([tp1, tp2], 1)
    cat_cont = Tensor.cat([tp1.contiguous(), tp2.contiguous()], 1)
    assert cat_padded.to_vec3(DType.F32) == cat_cont.to_vec3(DType.F32), (
        "cat along dim=1 with padded outer stride should match contiguous result"
    )
    assert cat_padded.dims() == [3, 8, 5] and cat_padded.to_vec3(DType.F32)[0][4][0] == 10.0


def test_embeddings(x64):
    ids = Tensor.new([0, 2, 1], DEVICE, dtype=DType.U32)
    t = Tensor.new([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], DEVICE)
    hs = t.embedding(ids)
    assert hs.to_vec2(DType.F32) == [[0.0, 1.0], [4.0, 5.0], [2.0, 3.0]]
    hs = t.index_select(ids, 0)
    assert hs.to_vec2(DType.F32) == [[0.0, 1.0], [4.0, 5.0], [2.0, 3.0]]
    hs = t.index_select(ids.to_dtype(DType.I64), 0)
    assert hs.to_vec2(DType.F32) == [[0.0, 1.0], [4.0, 5.0], [2.0, 3.0]]


U32_MAX = 2**32 - 1


def test_embeddings_max_index_gives_zero_rows():
    # the end of Candle's `embeddings`: u32::MAX ids select zero rows
    t = Tensor.new([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], DEVICE)
    ids = Tensor.new([U32_MAX, 2, U32_MAX], DEVICE, dtype=DType.U32)
    hs = t.index_select(ids, 0)
    assert hs.to_vec2(DType.F32) == [[0.0, 0.0], [4.0, 5.0], [0.0, 0.0]]


def test_index_select_fail():
    # Check that an error is properly reported on out of bounds.
    ids = Tensor.new([4, 2, 1], Device.Cpu, dtype=DType.U32)
    t = Tensor.new([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], Device.Cpu)
    with pytest.raises(cj.Error) as info:
        t.index_select(ids, 0)
    assert isinstance(info.value, errors.InvalidIndex)  # Candle's Error::InvalidIndex and its wording
    assert "index-select invalid index 4 with dim size 3" in str(info.value)


# index_select_fail_gpu is commented out in Candle (CUDA only).


def test_cmp():
    t1 = Tensor.new([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], DEVICE)
    t2 = Tensor.new([[1.0, 0.0], [3.0, 3.0], [4.0, 7.0]], DEVICE)
    assert t1.eq(t2).to_vec2(DType.U8) == [[0, 0], [0, 1], [1, 0]]
    assert t1.ne(t2).to_vec2(DType.U8) == [[1, 1], [1, 0], [0, 1]]
    assert t1.le(t2).to_vec2(DType.U8) == [[1, 0], [1, 1], [1, 1]]
    assert t1.lt(t2).to_vec2(DType.U8) == [[1, 0], [1, 0], [0, 1]]
    assert t1.gt(t2).to_vec2(DType.U8) == [[0, 1], [0, 0], [0, 0]]
    assert t1.ge(t2).to_vec2(DType.U8) == [[0, 1], [0, 1], [1, 0]]


def test_index_select(x64):
    ids = Tensor.new([0, 2, 1], DEVICE, dtype=DType.U32)
    t = Tensor.arange(0.0, 12.0, DEVICE).reshape((4, 3))
    assert t.to_vec2(DType.F32) == [
        [0.0, 1.0, 2.0],
        [3.0, 4.0, 5.0],
        [6.0, 7.0, 8.0],
        [9.0, 10.0, 11.0],
    ]
    for dtype in [DType.U8, DType.U32, DType.I64]:
        # Rust's `let` in the loop body shadows `ids` and `t` for that iteration only
        ids_d = ids.to_dtype(dtype)
        hs = t.index_select(ids_d, 1)
        assert hs.to_vec2(DType.F32) == [
            [0.0, 2.0, 1.0],
            [3.0, 5.0, 4.0],
            [6.0, 8.0, 7.0],
            [9.0, 11.0, 10.0],
        ]
        hs = t.index_select(ids_d, 0)
        assert hs.to_vec2(DType.F32) == [[0.0, 1.0, 2.0], [6.0, 7.0, 8.0], [3.0, 4.0, 5.0]]
        # Prior to https://github.com/huggingface/candle/pull/1022
        # There would be a bug where the last values in the result tensor would be set to 0.
        ids6 = Tensor.new([0, 2, 1, 0, 2, 1], DEVICE, dtype=DType.U32)
        hs = t.index_select(ids6, 0)
        assert hs.to_vec2(DType.F32) == [
            [0.0, 1.0, 2.0],
            [6.0, 7.0, 8.0],
            [3.0, 4.0, 5.0],
            [0.0, 1.0, 2.0],
            [6.0, 7.0, 8.0],
            [3.0, 4.0, 5.0],
        ]

        # Test when selecting dim > 0 with ids size different from elem count of
        # target dim in source/input.
        ids3 = Tensor.new([1, 0, 1], DEVICE, dtype=DType.U32)
        t22 = Tensor.arange(1.0, 5.0, DEVICE).reshape((2, 2))
        assert t22.to_vec2(DType.F32) == [[1.0, 2.0], [3.0, 4.0]]
        hs = t22.index_select(ids3, 1)
        assert hs.to_vec2(DType.F32) == [[2.0, 1.0, 2.0], [4.0, 3.0, 4.0]]
