"""Test functions of candle-nn/tests and candle-transformers/tests not ported elsewhere, line by
line, with the Rust files' expected values (rand's StdRng draws become numpy's: those tests only
compare two implementations)."""

import numpy as np

import candlejax.nn as candle_nn
from candlejax import Device, DType, Tensor
from candlejax.models import object_detection as od
from candlejax.nn import ops
from candlejax.nn.encoding import one_hot

CPU = Device.Cpu
F32 = np.float32


def _round(v, digits):
    return np.round(np.asarray(v, F32), digits)


def _src(*shape):
    rng = np.random.default_rng(299792458)
    return Tensor.new(rng.random(int(np.prod(shape)), dtype=F32), CPU).reshape(shape)


# ------------------------------------------------------------------------------------------------
# candle-nn/tests/ops.rs
# ------------------------------------------------------------------------------------------------
def test_ops_rms_norml():
    (b_size, seq_len, head_dim) = (24, 70, 64)
    tensor = _src(b_size, seq_len, head_dim)
    alpha = Tensor.ones(head_dim, DType.F32, CPU)
    t = ops.rms_norm(tensor, alpha, 1e-5)
    t2 = ops.rms_norm_slow(tensor, alpha, 1e-5)
    np.testing.assert_array_equal(_round(t.to_vec3(), 2), _round(t2.to_vec3(), 2))
    diff = (t - t2).abs().flatten_all().max(0).reshape(()).to_vec0()
    assert diff < 1e-5


def test_ops_rms_norm_large_magnitude():
    (rows, hidden) = (4, 6912)
    i = np.arange(rows * hidden)
    sign = np.where(i % 2 == 0, 1.0, -1.0).astype(F32)
    data = sign * (np.abs(np.sin(i.astype(F32) * F32(0.17))) * F32(7e9))
    tensor = Tensor.from_vec(data.astype(F32), (rows, hidden), CPU)
    alpha = Tensor.ones(hidden, DType.F32, CPU)
    fused_v = np.asarray(ops.rms_norm(tensor, alpha, 1e-5).flatten_all().to_vec1(), F32)
    slow_v = np.asarray(ops.rms_norm_slow(tensor, alpha, 1e-5).flatten_all().to_vec1(), F32)
    assert np.isfinite(fused_v).all(), "rms_norm produced a non-finite value for large-magnitude input"
    assert np.isfinite(slow_v).all(), "rms_norm_slow produced a non-finite value for large-magnitude input"
    diff = np.abs(fused_v - slow_v).max()
    assert diff < 5e-3, f"rms_norm and rms_norm_slow disagree: max |d| = {diff}"
    x = data.astype(np.float64).reshape(rows, hidden)  # and both are the float64 reference
    want = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(fused_v.reshape(rows, hidden), want, rtol=1e-5, atol=1e-5)


def test_ops_layer_norml():
    (b_size, seq_len, head_dim) = (24, 70, 64)
    tensor = _src(b_size, seq_len, head_dim)
    alpha = Tensor.ones(head_dim, DType.F32, CPU)
    beta = Tensor.zeros(head_dim, DType.F32, CPU)
    t = ops.layer_norm(tensor, alpha, beta, 1e-5)
    t2 = ops.layer_norm_slow(tensor, alpha, beta, 1e-5)
    diff = (t - t2).abs().flatten_all().max(0).reshape(()).to_vec0()
    assert diff < 1e-5


# ------------------------------------------------------------------------------------------------
# candle-nn/tests/one_hot.rs
# ------------------------------------------------------------------------------------------------
def test_i64_one_hot():
    indices = Tensor.new([[0, 2], [1, -1]], CPU)  # Candle: i64 (I32 here without x64)
    depth = 4
    oh = one_hot(indices, depth, np.float32(1.0), np.float32(0.0))  # Candle: one_hot::<f32>
    assert oh.shape == (2, 2, depth) and oh.dtype == DType.F32
    assert oh.to_vec3() == [[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]], [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]


def test_rank_3_one_hot():
    indices = Tensor.new([[[0, 1], [2, 3]], [[3, 1], [1, -1]]], CPU)
    oh = one_hot(indices, 4, 1.0, 0.0)
    expected_matrix = Tensor.new([
        [[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]],
        [[[0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]],
    ], CPU)  # fmt: skip
    assert oh.shape == expected_matrix.shape and oh.dims() == expected_matrix.dims()
    assert oh.get(1).to_vec3() == expected_matrix.get(1).to_vec3()


def test_u8_one_cold():
    indices = Tensor.new([[0, 2], [1, -1]], CPU)  # Candle: i64 (I32 here without x64)
    one_cold = one_hot(indices, 4, np.uint8(0), 1)  # Candle: on_value = 0u8, the type inferred from it
    assert one_cold.shape == (2, 2, 4) and one_cold.dtype == DType.U8
    assert one_cold.to_vec3() == [[[0, 1, 1, 1], [1, 1, 0, 1]], [[1, 0, 1, 1], [1, 1, 1, 1]]]


def test_iter():
    depth = 4
    indices = Tensor.new([[0, 2], [1, -1]], CPU)  # Candle: i64 (I32 here without x64)
    matrix = indices.to_vec2()
    (dim1, dim2) = indices.dims2()
    v = [0] * (depth * dim1 * dim2)
    for i in range(dim1):
        for j in range(dim2):
            v[i * depth * dim2 + j * depth] = matrix[i][j]
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            assert v[i * depth * dim2 + j * depth] == value


# ------------------------------------------------------------------------------------------------
# candle-nn/tests/kv_cache.rs: rotating_kv_cache, the ring contents (append's return value,
# offset(), positions() and attn_mask() differ by design: docs/differences/nn.md)
# ------------------------------------------------------------------------------------------------
def test_rotating_kv_cache_ring_contents():
    def in_position_order(cache):
        ring, start = cache.current_data().to_vec1(), cache.offset() % 6
        return ring[start:] + ring[:start]

    cache = candle_nn.kv_cache.RotatingCache.new(0, 6)
    for _ in [0, 1]:
        assert cache.offset() == 0 and cache.current_seq_len() == 0
        assert cache.current_data() is None
        _, cache = cache.append(Tensor.new([1.0, 2.0, 3.0], CPU))
        assert cache.current_data().to_vec1() == [1.0, 2.0, 3.0]
        _, cache = cache.append(Tensor.new([4.0], CPU))
        assert cache.current_data().to_vec1() == [1.0, 2.0, 3.0, 4.0]
        _, cache = cache.append(Tensor.new([0.0, 5.0, 6.0, 7.0], CPU))
        assert cache.current_data().to_vec1() == [6.0, 7.0, 3.0, 4.0, 0.0, 5.0]
        assert cache.current_seq_len() == 8 and cache.offset() % 6 == 2
        _, cache = cache.append(Tensor.new([8.0], CPU))
        assert cache.current_data().to_vec1() == [6.0, 7.0, 8.0, 4.0, 0.0, 5.0]
        assert cache.current_seq_len() == 9 and cache.offset() % 6 == 3
        _, cache = cache.append(Tensor.new([9.0, 10.0, 11.0], CPU))
        assert cache.current_data().to_vec1() == [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]
        assert cache.current_seq_len() == 12 and cache.offset() % 6 == 0
        _, cache = cache.append(Tensor.new([12.0], CPU))
        assert cache.current_data().to_vec1() == [12.0, 7.0, 8.0, 9.0, 10.0, 11.0]
        assert cache.current_seq_len() == 13 and cache.offset() % 6 == 1
        # Candle's attn_mask(2): [[0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]] over the ring, 1 = masked;
        # here over the previous window then the 2 new keys, True = visible
        assert cache.positions(3).to_vec1() == [13, 14, 15]
        data, cache = cache.append(Tensor.new([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], CPU))
        assert data.to_vec1()[-9:] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
        assert cache.current_seq_len() == 22
        # Candle re-bases the ring at offset 0 after a chunk >= the window ([3, 4, 5, 6, 7, 8]); here
        # each position keeps its slot (position % window): the same ring read from the oldest slot
        assert in_position_order(cache) == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
        _, cache = cache.append(Tensor.new([42.0], CPU))
        assert in_position_order(cache) == [4.0, 5.0, 6.0, 7.0, 8.0, 42.0]  # Candle: [42, 4, 5, 6, 7, 8], offset 1
        assert cache.current_seq_len() == 23
        cache = cache.reset()


# ------------------------------------------------------------------------------------------------
# candle-transformers/tests/nms_tests.rs
# ------------------------------------------------------------------------------------------------
def _bbox(xmin, ymin, xmax, ymax, confidence):
    return od.Bbox(xmin=xmin, ymin=ymin, xmax=xmax, ymax=ymax, confidence=confidence, data=())


def test_nms_basic():
    bboxes = [[_bbox(245.0, 305.0, 575.0, 490.0, 0.9), _bbox(235.0, 300.0, 485.0, 515.0, 0.8),
               _bbox(305.0, 270.0, 540.0, 500.0, 0.6)]]  # fmt: skip
    od.non_maximum_suppression(bboxes, 0.5)
    bboxes = bboxes[0]
    assert len(bboxes) == 1
    assert bboxes[0].confidence == 0.9


def test_softnms_basic_functionality():
    bboxes = [[_bbox(0.0, 0.0, 1.0, 1.0, 0.5), _bbox(0.1, 0.1, 1.1, 1.1, 0.9), _bbox(0.2, 0.2, 1.2, 1.2, 0.6)]]
    od.soft_non_maximum_suppression(bboxes, 0.5, 0.1, 0.5)
    assert bboxes[0][0].confidence == 0.9
    assert bboxes[0][1].confidence < 0.5
    assert bboxes[0][2].confidence < 0.6


def test_softnms_confidence_decay():
    bboxes = [[_bbox(0.0, 0.0, 1.0, 1.0, 0.9), _bbox(0.1, 0.1, 1.1, 1.1, 0.8)]]
    od.soft_non_maximum_suppression(bboxes, 0.5, 0.1, 0.5)
    assert bboxes[0][0].confidence == 0.9
    assert bboxes[0][1].confidence < 0.8


def test_softnms_confidence_threshold():
    bboxes = [[_bbox(0.0, 0.0, 1.0, 1.0, 0.9), _bbox(0.1, 0.1, 1.1, 1.1, 0.05)]]
    od.soft_non_maximum_suppression(bboxes, 0.5, 0.1, 0.5)
    assert len(bboxes[0]) == 2
    assert bboxes[0][0].confidence == 0.9
    assert bboxes[0][1].confidence == 0.00


def test_softnms_no_overlap():
    bboxes = [[_bbox(0.0, 0.0, 1.0, 1.0, 0.9), _bbox(2.0, 2.0, 3.0, 3.0, 0.8)]]
    od.soft_non_maximum_suppression(bboxes, 0.5, 0.1, 0.5)
    assert len(bboxes[0]) == 2
    assert bboxes[0][0].confidence == 0.9
    assert bboxes[0][1].confidence == 0.8


def test_softnms_no_bbox():
    bboxes = []
    od.soft_non_maximum_suppression(bboxes, 0.5, 0.1, 0.5)
    assert bboxes == []


def test_softnms_single_bbox():
    bboxes = [[_bbox(0.0, 0.0, 1.0, 1.0, 0.9)]]
    od.soft_non_maximum_suppression(bboxes, 0.5, 0.1, 0.5)
    assert len(bboxes[0]) == 1


def test_softnms_equal_confidence_overlap():
    bboxes = [[_bbox(0.0, 0.0, 1.0, 1.0, 0.5), _bbox(0.1, 0.1, 1.1, 1.1, 0.5)]]
    od.soft_non_maximum_suppression(bboxes, 0.5, 0.1, 0.5)
    assert len(bboxes[0]) == 2
    assert bboxes[0][0].confidence == 0.5
    assert bboxes[0][1].confidence < 0.5
