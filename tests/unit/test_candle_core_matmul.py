"""Candle's candle-core/tests/matmul_tests.rs, ported test by test with Candle's expected values.

Each Rust ``fn name(device)`` run through ``test_device!`` is ported for ``Device.Cpu`` (the CUDA and
Metal variants are device-only). Where candlejax documents a deliberate difference
(docs/differences.md: ``contiguous()`` returns the tensor itself and ``stride()`` reports C-contiguous
strides, since XLA owns the memory layout) the test checks the documented behaviour instead.
"""

from __future__ import annotations

import pytest

import candlejax as cj
from candlejax import Device, DType, Tensor, errors

CPU = Device.Cpu


def test_matmul_cpu():
    device = CPU
    data = [1.0, 2.0, 3.0, 4.0]
    a = Tensor.from_slice(data, (2, 2), device)
    data = [1.0, 2.0, 3.0, 4.0]
    b = Tensor.from_slice(data, (2, 2), device)

    c = a.matmul(b)
    assert c.to_vec2() == [[7.0, 10.0], [15.0, 22.0]]

    data = [1.0, 2.0]
    a = Tensor.from_slice(data, (2, 1), device)
    data = [3.0, 4.0]
    b = Tensor.from_slice(data, (1, 2), device)
    c = a.matmul(b)
    assert c.to_vec2() == [[3.0, 4.0], [6.0, 8.0]]

    data = [float(i) for i in range(6)]
    a = Tensor.from_slice(data, (2, 3), device)
    data = [float(i + 2) for i in range(6)]
    b = Tensor.from_slice(data, (3, 2), device)
    c = a.matmul(b)
    assert c.to_vec2() == [[16.0, 19.0], [52.0, 64.0]]

    data = [float(i) for i in range(12)]
    a = Tensor.from_slice(data, (2, 2, 3), device)
    data = [float(i + 2) for i in range(12)]
    b = Tensor.from_slice(data, (2, 3, 2), device)
    expected = [[[16.0, 19.0], [52.0, 64.0]], [[214.0, 235.0], [304.0, 334.0]]]

    c = a.matmul(b)
    assert c.to_vec3() == expected

    # Also perform the matmul on contiguous transposed versions.
    a_tt = a.t().contiguous().t()
    # Candle: !a_tt.is_contiguous() and stride [6, 1, 2]. candlejax (documented): tensors are always
    # C-contiguous XLA arrays, so is_contiguous() is True and stride() is the C-contiguous one.
    assert a_tt.is_contiguous()
    assert a.dims() == a_tt.dims()
    assert a_tt.stride() == (6, 3, 1)

    b_tt = b.t().contiguous().t()
    # Candle: !b_tt.is_contiguous() and stride [6, 1, 3] (see above).
    assert b_tt.is_contiguous()
    assert b.dims() == b_tt.dims()
    assert b_tt.stride() == (6, 2, 1)

    assert a_tt.matmul(b).to_vec3() == expected
    assert a.matmul(b_tt).to_vec3() == expected
    assert a_tt.matmul(b_tt).to_vec3() == expected


def test_matmul_bf16_cpu():
    device = CPU
    # Candle returns early here: the CPU device does not report bf16 support.
    assert not device.supports_bf16()
    # The body runs on candlejax's CPU all the same (bf16 matmuls are XLA ops on every backend).
    data = [1.0, 2.0, 3.0, 4.0]
    a = Tensor.from_slice(data, (2, 2), device).to_dtype(DType.BF16)
    data = [1.0, 2.0, 3.0, 4.0]
    b = Tensor.from_slice(data, (2, 2), device).to_dtype(DType.BF16)

    c = a.matmul(b).to_dtype(DType.F32)
    assert c.to_vec2() == [[7.0, 10.0], [15.0, 22.0]]


def test_broadcast_matmul_cpu():
    device = CPU
    lhs = Tensor.randn(0.0, 1.0, (3, 1, 4, 5), device)
    rhs = Tensor.randn(0.0, 1.0, (6, 5, 2), device)
    out = lhs.broadcast_matmul(rhs)
    assert out.dims() == (3, 6, 4, 2)
    # Indices as rank-0 u32 tensors: one compiled gather serves every index (an int index is static).
    for idx1 in map(Tensor.new, range(3)):
        for idx2 in map(Tensor.new, range(6)):
            out_ = out.i((idx1, idx2))
            lhs_ = lhs.i((idx1, 0))
            rhs_ = rhs.i(idx2)
            out2 = lhs_.matmul(rhs_)
            sum_diff2 = (out_ - out2).sqr().sum_all()
            # With cuda, we see errors of up to ~1e-12.
            assert sum_diff2.to_vec0() < 1e-6


def test_zero_matmul_cpu():
    device = CPU
    lhs = Tensor.zeros((2, 0), DType.F32, device)
    rhs = Tensor.zeros((0, 3), DType.F32, device)
    output = lhs.matmul(rhs)
    assert output.dims() == (2, 3)
    assert output.to_vec2() == [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]

    lhs = Tensor.zeros((2, 3, 4), DType.F32, device).transpose(1, 2).narrow(1, 0, 0)
    rhs = Tensor.zeros((2, 4, 3), DType.F32, device).transpose(1, 2).narrow(2, 0, 0)
    # Candle: both are non-contiguous views; candlejax (documented): always contiguous.
    assert lhs.is_contiguous()
    assert rhs.is_contiguous()
    assert lhs.dims() == (2, 0, 3)
    assert rhs.dims() == (2, 3, 0)
    assert lhs.matmul(rhs).dims() == (2, 0, 0)


def assert_matmul_error(device, lhs, rhs, expected):
    lhs = Tensor.zeros(lhs[0], lhs[1], device)
    rhs = Tensor.zeros(rhs[0], rhs[1], device)
    with pytest.raises(cj.Error) as err:
        lhs.matmul(rhs)
    assert str(err.value).startswith(expected), f"unexpected error: {err.value}"


def test_zero_matmul_validation_cpu():
    device = CPU
    F16, F32 = DType.F16, DType.F32

    shape_error = "shape mismatch in matmul"
    assert_matmul_error(device, ((0, 2), F32), ((3, 4), F16), shape_error)
    assert_matmul_error(device, ((2, 3), F32), ((4, 0), F32), shape_error)
    assert_matmul_error(device, ((0, 2, 3), F32), ((1, 3, 4), F32), shape_error)
    assert_matmul_error(device, ((0, 2), F32), ((2, 3), F16), "dtype mismatch in matmul")


def test_zero_matmul_validation_error_types():
    # The same failures as typed candlejax errors (Candle's ShapeMismatchBinaryOp / DTypeMismatchBinaryOp).
    with pytest.raises(errors.ShapeMismatchBinaryOp):
        Tensor.zeros((2, 3), DType.F32, CPU).matmul(Tensor.zeros((4, 0), DType.F32, CPU))
    with pytest.raises(errors.DTypeMismatchBinaryOp):
        Tensor.zeros((0, 2), DType.F32, CPU).matmul(Tensor.zeros((2, 3), DType.F16, CPU))


def test_zero_matmul_device_validation_cpu():
    device = CPU
    # Candle returns early on the CPU: a device mismatch needs a second (GPU) device.
    assert device.is_cpu()


# A rank-2 rhs is broadcast over the batch dims only, which `broadcast_matmul` folds into a
# single 2D matmul instead of copying the rhs. Check the folded path against the per-batch
# products it stands for, contiguous lhs (folded) and non-contiguous lhs (fallback) alike.
#: Candle's loop runs over these four lhs; each one is a case here.
RANK2_RHS_LHS = {
    "3x4x5": lambda device: Tensor.randn(0.0, 1.0, (3, 4, 5), device),
    "3x6x4x5": lambda device: Tensor.randn(0.0, 1.0, (3, 6, 4, 5), device),
    "1x1x5": lambda device: Tensor.randn(0.0, 1.0, (1, 1, 5), device),
    "3x5x4_transposed": lambda device: Tensor.randn(0.0, 1.0, (3, 5, 4), device).transpose(1, 2),
}


@pytest.mark.parametrize("lhs_case", list(RANK2_RHS_LHS))
def test_broadcast_matmul_rank2_rhs_cpu(lhs_case):
    device = CPU
    rhs = Tensor.randn(0.0, 1.0, (5, 2), device)
    for lhs in [RANK2_RHS_LHS[lhs_case](device)]:
        out = lhs.broadcast_matmul(rhs)
        dims = list(lhs.dims())
        n = len(dims)
        dims[n - 1] = 2
        assert out.dims() == tuple(dims)
        # Same product, computed the way the doc comment describes it.
        batch = 1
        for d in lhs.dims()[: n - 2]:
            batch *= d
        m, k = lhs.dims()[n - 2], lhs.dims()[n - 1]
        flat = lhs.reshape((batch, m, k))
        out = out.reshape((batch, m, 2))
        for b in map(Tensor.new, range(batch)):  # rank-0 u32 indices, as in test_broadcast_matmul_cpu
            diff = (out.i(b) - flat.i(b).matmul(rhs)).sqr().sum_all()
            assert diff.to_vec0() < 1e-6


def test_tensor_dot():
    lhs = Tensor.new([1.0, 2.0, 3.0], Device.Cpu)
    rhs = Tensor.new([4.0, 5.0, 6.0], Device.Cpu)
    expected = Tensor.new(32.0, Device.Cpu)
    dot_ret = lhs.dot(rhs)
    cj.testing.assert_tensor_eq(dot_ret, expected)


def test_tensor_mv():
    mat = Tensor.new([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], Device.Cpu)
    vec = Tensor.new([1.0, 1.0, 1.0], Device.Cpu)
    expected = Tensor.new([6.0, 15.0], Device.Cpu)
    mv_ret = mat.mv(vec)
    cj.testing.assert_tensor_eq(mv_ret, expected)


# https://github.com/huggingface/candle/issues/1948
def test_squeeze_mm_cpu():
    device = CPU
    seq_len = 8
    a = Tensor.zeros((1, seq_len, 16), DType.F32, device)
    x = a.i((slice(None), seq_len - 1, slice(None)))
    w = Tensor.zeros((32, 16), DType.F32, device).t()
    x = x.matmul(w)
    assert x.dims() == (1, 32)


# https://github.com/huggingface/candle/issues/1992
def test_mm_layout_cpu():
    device = CPU
    a = Tensor.arange(0.0, 16.0, device).reshape((1, 1, 4, 4))
    b = Tensor.arange(0.0, 8.0, device).reshape((1, 1, 4, 2))
    mm1 = a.matmul(b)
    # Forces the layout to be:
    # shape: [1, 1, 4, 2], stride: [8, 2, 2, 1], start_offset: 0
    # This is still a contiguous matrix but matmul checks are only the two last dimensions have
    # non 1 sizes but matmul check may be reluctant to handle it.
    b = b.transpose(1, 2).force_contiguous().transpose(1, 2)
    mm2 = a.matmul(b)
    diff = (mm1 - mm2).abs().sum_all().to_vec0()
    assert diff == 0.0
