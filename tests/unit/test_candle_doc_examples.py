"""The examples in Candle's API documentation, ported line by line.

Sources (huggingface/candle): the ``///`` examples of candle-core/src/{tensor,indexer,tensor_cat}.rs
and candle-nn/src/{encoding,ops,var_builder,kv_cache,layer_norm,linear}.rs. Rust ranges are Python slices in ``.i``;
Rust's f64 literals make f32 tensors here unless JAX's x64 mode is on (docs/differences.md).
"""

from __future__ import annotations

import numpy as np
import pytest

import candlejax as cj
import candlejax.nn as candle_nn
from candlejax import D, Device, DType, Shape, Tensor, errors
from candlejax.nn.encoding import one_hot
from candlejax.nn.kv_cache import ConcatKvCache

CPU = Device.Cpu


def test_matmul_of_aranges():
    a = Tensor.arange(np.float32(0), np.float32(6), CPU).reshape((2, 3))
    b = Tensor.arange(np.float32(0), np.float32(12), CPU).reshape((3, 4))
    c = a.matmul(b)
    assert c.dims() == [2, 4]
    assert c.to_vec2() == (np.arange(6.0).reshape(2, 3) @ np.arange(12.0).reshape(3, 4)).tolist()


def test_ones_zeros_and_likes():
    a = Tensor.ones((2, 3), DType.F32, CPU)
    b = Tensor.from_slice([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], (2, 3), CPU)
    assert a.to_vec2() == b.to_vec2()
    a = Tensor.zeros((2, 3), DType.F32, CPU)
    b = a.ones_like()
    assert b.to_vec2() == (a + 1).to_vec2()
    b = Tensor.from_slice([0.0, 0.0, 0.0, 0.0, 0.0, 0.0], (2, 3), CPU)
    assert a.to_vec2() == b.to_vec2()
    b = a.zeros_like()
    assert (b.dtype, b.device, b.dims()) == (DType.F32, CPU, [2, 3])
    e = Tensor.empty((2, 3), DType.F32, CPU)
    assert e.empty_like().dims() == [2, 3]


def test_from_iter_arange_from_vec_from_slice():
    a = Tensor.from_iter(iter([1.0, 2.0, 3.0, 4.0]), CPU)
    assert a.to_vec1() == [1.0, 2.0, 3.0, 4.0]
    assert Tensor.arange(2.0, 5.0, CPU).to_vec1() == [2.0, 3.0, 4.0]
    assert Tensor.arange_step(2.0, 4.0, 0.5, CPU).to_vec1() == [2.0, 2.5, 3.0, 3.5]
    a = Tensor.from_vec([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (2, 3), CPU)
    assert a.to_vec2() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    a = Tensor.from_slice(values[1:7], (2, 3), CPU)
    assert a.to_vec2() == [[2.0, 3.0, 4.0], [5.0, 6.0, 7.0]]


def test_meshgrid():
    x = Tensor.new([1.0, 2.0, 3.0], CPU)
    y = Tensor.new([4.0, 5.0, 6.0], CPU)
    grids_xy = Tensor.meshgrid([x, y], True)
    assert len(grids_xy) == 2
    assert grids_xy[0].dims() == [3, 3]
    assert grids_xy[0].to_vec2() == [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]
    assert grids_xy[1].to_vec2() == [[4.0, 4.0, 4.0], [5.0, 5.0, 5.0], [6.0, 6.0, 6.0]]
    grids_ij = Tensor.meshgrid([x, y], False)
    assert grids_ij[0].to_vec2() == [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]]
    assert grids_ij[1].to_vec2() == [[4.0, 5.0, 6.0], [4.0, 5.0, 6.0], [4.0, 5.0, 6.0]]


def test_affine_roll_flip():
    a = Tensor.new([[0.0, 1.0], [2.0, 3.0]], CPU).affine(4.0, -2.0)
    assert a.to_vec2() == [[-2.0, 2.0], [6.0, 10.0]]
    t = Tensor.new([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], CPU)
    assert t.roll(1, 0).to_vec2() == [[4.0, 5.0], [0.0, 1.0], [2.0, 3.0]]
    assert t.roll(-1, 0).to_vec2() == [[2.0, 3.0], [4.0, 5.0], [0.0, 1.0]]
    t = Tensor.arange(0.0, 6.0, CPU).reshape((2, 3))
    assert t.to_vec2() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert t.flip([0]).to_vec2() == [[3.0, 4.0, 5.0], [0.0, 1.0, 2.0]]


def test_narrow_compares_shape_dims_with_a_list():
    a = Tensor.new([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]], CPU)
    b = a.narrow(0, 1, 2)
    assert b.shape().dims() == [2, 3]
    assert b.to_vec2() == [[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]
    c = a.narrow(1, 1, 1)
    assert c.shape().dims() == [3, 1]
    assert c.to_vec2() == [[1.0], [4.0], [7.0]]
    assert c.shape() == Shape((3, 1))
    assert c.shape().dims() != [1, 3]


def test_sum_and_mean_keepdim():
    a = Tensor.new([[0.0, 1.0], [2.0, 3.0]], CPU)
    assert a.sum_keepdim(0).to_vec2() == [[2.0, 4.0]]
    assert a.sum_keepdim(1).to_vec2() == [[1.0], [5.0]]
    assert a.sum_keepdim((0, 1)).to_vec2() == [[6.0]]
    assert a.mean_keepdim(0).to_vec2() == [[1.0, 2.0]]
    assert a.mean_keepdim(1).to_vec2() == [[0.5], [2.5]]
    assert a.mean_keepdim((0, 1)).to_vec2() == [[1.5]]


def test_upsample_bilinear2d_shapes():
    t = Tensor.arange(np.float32(0), np.float32(16), CPU).reshape((1, 1, 4, 4))
    assert t.upsample_bilinear2d(8, 8, False).dims() == [1, 1, 8, 8]
    assert t.upsample_bilinear2d_with_scale(2.0, 2.0, False).dims() == [1, 1, 8, 8]


def test_dot_norm_mv_embedding():
    assert Tensor.new([1.0, 2.0, 3.0], CPU).dot(Tensor.new([4.0, 5.0, 6.0], CPU)).to_scalar() == 32.0
    assert Tensor.new([[3.0, 4.0], [0.0, 0.0]], CPU).norm().to_scalar() == 5.0
    mat = Tensor.new([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], CPU)
    assert mat.mv(Tensor.new([1.0, 1.0, 1.0], CPU)).to_vec1() == [6.0, 15.0]
    values = Tensor.new([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], CPU)
    ids = Tensor.new(np.array([2, 1, 2], np.uint32), CPU)
    assert values.embedding(ids).to_vec2() == [[4.0, 5.0], [2.0, 3.0], [4.0, 5.0]]


def test_reductions_get_and_transpose():
    tensor = Tensor.new([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], CPU)
    assert tensor.max_all().to_scalar() == 5.0
    assert tensor.min_all().to_scalar() == 0.0
    assert tensor.sum_all().to_scalar() == 15.0
    assert tensor.flatten_all().to_vec1() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert tensor.get(0).to_vec1() == [0.0, 1.0]
    assert tensor.get(1).to_vec1() == [2.0, 3.0]
    assert tensor.get_on_dim(1, 0).to_vec1() == [0.0, 2.0, 4.0]
    assert tensor.get_on_dim(1, 1).to_vec1() == [1.0, 3.0, 5.0]
    assert tensor.get_on_dim(0, 1).to_vec1() == [2.0, 3.0]
    assert tensor.t().to_vec2() == [[0.0, 2.0, 4.0], [1.0, 3.0, 5.0]]


def test_permute_to_dtype_reshape_squeeze_unsqueeze():
    tensor = Tensor.arange(np.uint32(0), np.uint32(120), CPU).reshape((2, 3, 4, 5))
    assert tensor.dtype == DType.U32
    assert tensor.dims() == [2, 3, 4, 5]
    assert tensor.permute((2, 3, 1, 0)).dims() == [4, 5, 3, 2]
    tensor = Tensor.new(3.14159265358979, CPU).to_dtype(DType.F32)
    assert tensor.to_scalar() == np.float32(3.1415927)
    a = Tensor.zeros((2, 3), DType.F32, CPU)
    assert a.reshape((1, 6)).shape().dims() == [1, 6]
    assert a.reshape((3, 2)).shape().dims() == [3, 2]
    assert a.reshape((2, (), 1)).shape().dims() == [2, 3, 1]
    a = Tensor.zeros((2, 3, 1), DType.F32, CPU)
    assert a.squeeze(2).shape().dims() == [2, 3]
    assert a.squeeze(D.Minus1).shape().dims() == [2, 3]
    a = Tensor.zeros((2, 3), DType.F32, CPU)
    assert a.unsqueeze(0).shape().dims() == [1, 2, 3]
    assert a.unsqueeze(D.Minus1).shape().dims() == [2, 3, 1]


def test_stack_and_cat():
    a = Tensor.zeros((2, 3), DType.F32, CPU)
    b = Tensor.zeros((2, 3), DType.F32, CPU)
    assert Tensor.stack([a, b], 0).shape().dims() == [2, 2, 3]
    assert Tensor.stack([a, b], 2).shape().dims() == [2, 3, 2]
    assert Tensor.cat([a, b], 0).shape().dims() == [4, 3]
    assert Tensor.cat([a, b], 1).shape().dims() == [2, 6]


def test_index_op_with_ranges():
    a = Tensor.zeros((2, 3), DType.F32, CPU)
    assert a.i(slice(0, 1)).shape().dims() == [1, 3]
    assert a.i(0).shape().dims() == [3]
    assert a.i((slice(None), slice(None, 2))).shape().dims() == [2, 2]
    assert a.i((slice(None), slice(None, 3))).shape().dims() == [2, 3]  # Rust ..=2
    a = Tensor.new([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], CPU)
    assert a.i(0).to_vec1() == [0.0, 1.0]
    assert a.i(slice(None, 2)).to_vec2() == [[0.0, 1.0], [2.0, 3.0]]
    assert a.i(slice(1, None)).to_vec2() == [[2.0, 3.0], [4.0, 5.0]]
    assert a.i((0,)).shape().dims() == [2]
    assert a.i((slice(None, 2),)).to_vec2() == [[0.0, 1.0], [2.0, 3.0]]
    assert a.i((slice(1, None),)).to_vec2() == [[2.0, 3.0], [4.0, 5.0]]
    a = Tensor.new([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]], CPU)
    assert a.i((1, 0)).to_vec0() == 3.0
    c = a.i((slice(None, 2), 1))
    assert c.shape().dims() == [2]
    assert c.to_vec1() == [1.0, 4.0]
    d = a.i((slice(2, None), slice(None)))
    assert d.shape().dims() == [1, 3]
    assert d.to_vec2() == [[6.0, 7.0, 8.0]]


def test_one_hot_and_one_cold():
    indices = Tensor.new(np.array([[0, 2], [1, -1]], np.int32), CPU)  # Candle's i64 needs x64 mode
    depth = 4
    oh = one_hot(indices, depth, 1.0, 0.0)
    assert oh.shape() == Shape((2, 2, depth))
    assert oh.to_vec3() == [[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]], [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]
    indices = Tensor.new(np.array([[0, 2], [1, 3]], np.uint8), CPU)
    one_cold = one_hot(indices, depth, np.uint8(0), np.uint8(1))
    assert one_cold.shape() == Shape((2, 2, depth))
    assert one_cold.dtype == DType.U8
    assert one_cold.to_vec3() == [[[0, 1, 1, 1], [1, 1, 0, 1]], [[1, 0, 1, 1], [1, 1, 1, 0]]]


def test_concat_kv_cache_appends_along_the_sequence():
    cache = ConcatKvCache.new(2)
    k1 = Tensor.randn(0.0, 1.0, (1, 8, 10, 64), CPU)
    v1 = Tensor.randn(0.0, 1.0, (1, 8, 10, 64), CPU)
    (k, v), cache = cache.append(k1, v1)
    k_new = Tensor.randn(0.0, 1.0, (1, 8, 1, 64), CPU)
    v_new = Tensor.randn(0.0, 1.0, (1, 8, 1, 64), CPU)
    (k, v), cache = cache.append(k_new, v_new)
    assert k.dims() == [1, 8, 11, 64] and v.dims() == [1, 8, 11, 64]
    assert k.narrow(2, 10, 1).squeeze(0).to_vec3() == k_new.squeeze(0).to_vec3()
    assert k.narrow(2, 0, 10).squeeze(0).to_vec3() == k1.squeeze(0).to_vec3()


def test_concat_kv_cache_rust_destructuring_fails_at_first_use():
    cache = ConcatKvCache.new(2)
    k1 = Tensor.randn(0.0, 1.0, (1, 2, 3, 4), CPU)
    (k, _v) = cache.append(k1, k1)  # Rust's `let (k, v) = cache.append(&k1, &v1)?;`
    with pytest.raises(errors.Msg, match=r"\(k, v\), cache = cache\.append\(k, v\)"):
        k.dims()


def test_softmax_doc_example():
    a = Tensor.new([[0.0, 1.0, 0.0, 1.0], [-2.0, 2.0, 3.0, -3.0]], CPU)
    a = candle_nn.ops.softmax(a, 1)
    assert cj.testing.to_vec2_round(a, 4) == [[0.1345, 0.3655, 0.1345, 0.3655], [0.0049, 0.2671, 0.7262, 0.0018]]


def test_var_builder_rename_f():
    a = Tensor.arange(np.float32(0), np.float32(6), CPU).reshape((2, 3))
    tensors = {"foo": a}
    vb = candle_nn.VarBuilder.from_tensors(tensors, DType.F32, CPU)
    assert vb.contains_tensor("foo")
    assert vb.get((2, 3), "foo").dims() == [2, 3]
    assert not vb.contains_tensor("bar")
    vb = vb.rename_f(lambda f: "foo" if f == "bar" else f)
    assert vb.contains_tensor("bar")
    assert vb.contains_tensor("foo")
    assert vb.get((2, 3), "bar").to_vec2() == a.to_vec2()
    assert vb.get((2, 3), "foo").to_vec2() == a.to_vec2()
    assert not vb.contains_tensor("baz")


def test_layer_norm_doc_example():
    w = Tensor.new([1.0, 1.0, 1.0], CPU)
    b = Tensor.new([0.0, 0.0, 0.0], CPU)
    layer = candle_nn.LayerNorm.new(w, b, 1e-5)
    xs = Tensor.new([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [9.0, 8.0, 7.0]]], CPU)
    ys = layer.forward(xs)
    assert cj.testing.to_vec3_round(ys, 4) == [
        [[-1.2247, 0.0, 1.2247], [-1.2247, 0.0, 1.2247], [1.2247, 0.0, -1.2247]]
    ]


def test_linear_doc_example():
    w = Tensor.new([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], CPU)
    layer = candle_nn.Linear.new(w, None)  # Use no bias.
    xs = Tensor.new([[10.0, 100.0]], CPU)
    ys = layer.forward(xs)
    assert ys.to_vec2() == [[210.0, 430.0, 650.0]]
