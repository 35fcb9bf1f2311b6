"""Candle's layout, indexing and display tests, ported function by function: candle-core/tests/layout_tests.rs,
candle-core/tests/indexing_tests.rs and candle-core/tests/display_tests.rs (huggingface/candle).

The expected values are Candle's. ``IndexOp::i`` is ``t.i(...)``; Rust ranges are Python slices:
``1..3`` -> ``slice(1, 3)``, ``2..`` -> ``slice(2, None)``, ``..2`` -> ``slice(None, 2)``, ``..`` ->
``slice(None)``, and the inclusive ``1..=2`` -> ``slice(1, 3)`` (``range(1, 3)`` is accepted too).
``format!("{t}")`` is ``str(t)``: candlejax prints tensors as Candle's ``Display`` does.

Layout: candlejax tensors are XLA arrays with no views, strides or storage offsets (docs/differences.md
"Layout", docs/differences/movement-indexing.md "Views, layout and in-place ops"): ``contiguous()``
returns the tensor, ``is_contiguous()`` is always true and ``stride()`` is C-contiguous. Candle's
``strided_blocks`` test describes where each view's elements sit in the shared storage; its port
checks the documented layout and that the elements are the ones Candle's blocks point at.
"""

from __future__ import annotations

import pytest

from candlejax import D, Device, DType, Layout, Shape, Tensor, errors

CPU = Device.Cpu


# ------------------------------------------------------------------------------------------------
# layout_tests.rs
# ------------------------------------------------------------------------------------------------
def test_contiguous():
    tensor = Tensor.arange(0, 24, CPU).reshape((2, 3, 4))
    assert tensor.dtype == DType.U32
    assert tensor.to_vec3() == [
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]],
        [[12, 13, 14, 15], [16, 17, 18, 19], [20, 21, 22, 23]],
    ]
    assert tensor.t().contiguous().to_vec3() == [
        [[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]],
        [[12, 16, 20], [13, 17, 21], [14, 18, 22], [15, 19, 23]],
    ]
    assert tensor.transpose(0, 1).contiguous().to_vec3() == [
        [[0, 1, 2, 3], [12, 13, 14, 15]],
        [[4, 5, 6, 7], [16, 17, 18, 19]],
        [[8, 9, 10, 11], [20, 21, 22, 23]],
    ]
    assert tensor.transpose(0, 1).flatten_all().to_vec1() == [
        0, 1, 2, 3, 12, 13, 14, 15, 4, 5, 6, 7, 16, 17, 18, 19, 8, 9, 10, 11, 20, 21, 22, 23,
    ]  # fmt: skip
    assert tensor.i(slice(1, None)).transpose(0, 1).contiguous().to_vec3() == [
        [[12, 13, 14, 15]],
        [[16, 17, 18, 19]],
        [[20, 21, 22, 23]],
    ]
    assert tensor.transpose(0, 2).contiguous().to_vec3() == [
        [[0, 12], [4, 16], [8, 20]],
        [[1, 13], [5, 17], [9, 21]],
        [[2, 14], [6, 18], [10, 22]],
        [[3, 15], [7, 19], [11, 23]],
    ]


def _c_strides(dims):
    strides, acc = [], 1
    for d in reversed(dims):
        strides.insert(0, acc)
        acc *= d
    return tuple(strides)


def _assert_single_block(tensor):
    """Every candlejax tensor is one C-contiguous block of its own (Candle's ``SingleBlock`` at offset 0)."""
    assert tensor.is_contiguous()
    assert tuple(tensor.stride()) == _c_strides(tensor.dims())


def test_strided_blocks():
    # Candle: SingleBlock { start_offset: 0, len: 24 }
    tensor = Tensor.arange(0, 24, CPU).reshape((2, 3, 4))
    _assert_single_block(tensor)
    assert tensor.elem_count() == 24
    assert tensor.flatten_all().to_vec1() == list(range(24))

    # Candle: SingleBlock { start_offset: 2, len: 24 } (a view two elements into the storage)
    tensor = Tensor.arange(0, 26, CPU).i(slice(2, None)).reshape((2, 3, 4))
    _assert_single_block(tensor)
    assert tensor.flatten_all().to_vec1() == list(range(2, 2 + 24))

    # Candle: SingleBlock { start_offset: 12, len: 12 }
    tensor = Tensor.arange(0, 24, CPU).reshape((2, 3, 4))
    tensor = tensor.i(1)
    _assert_single_block(tensor)
    assert tensor.flatten_all().to_vec1() == list(range(12, 12 + 12))

    # Candle: SingleBlock { start_offset: 0, len: 8 } once made contiguous
    tensor = Tensor.arange(0, 24, CPU).reshape((2, 3, 4))
    tensor = tensor.i((slice(None), 1)).contiguous()
    _assert_single_block(tensor)
    assert tensor.elem_count() == 8
    assert tensor.to_vec2() == [[4, 5, 6, 7], [16, 17, 18, 19]]

    # Candle: UniformBlocks { start_offset: 4, block_len: 4, count: 2, src_stride: 12 }
    tensor = Tensor.arange(0, 24, CPU).reshape((2, 3, 4))
    tensor = tensor.i((slice(None), 1))
    _assert_single_block(tensor)
    start_offset, block_len, count, src_stride = 4, 4, 2, 12
    expected = [start_offset + b * src_stride + j for b in range(count) for j in range(block_len)]
    assert tensor.flatten_all().to_vec1() == expected

    # Candle: MultipleBlocks { block_len: 1, block_start_index: [0, 4, 8, 1, ...] }
    tensor = Tensor.arange(0, 24, CPU).reshape((2, 3, 4))
    block_start_index = [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11, 12, 16, 20, 13, 17, 21, 14, 18, 22, 15, 19, 23]
    _assert_single_block(tensor.t())
    assert tensor.t().flatten_all().to_vec1() == block_start_index

    # Candle: MultipleBlocks { block_len: 4, block_start_index: [0, 12, 4, 16, 8, 20] }
    tensor = Tensor.arange(0, 24, CPU).reshape((2, 3, 4))
    _assert_single_block(tensor.transpose(0, 1))
    expected = [s + j for s in [0, 12, 4, 16, 8, 20] for j in range(4)]
    assert tensor.transpose(0, 1).flatten_all().to_vec1() == expected


def test_layout_and_storage_accessors():
    # Tensor::layout() / Layout (shape, stride, start_offset): always C-contiguous at offset 0 here
    tensor = Tensor.arange(0, 24, CPU).reshape((2, 3, 4))
    layout = tensor.layout()
    assert layout == Layout.contiguous((2, 3, 4)) == Layout.new(Shape((2, 3, 4)), [12, 4, 1], 0)
    assert layout.shape().dims3() == (2, 3, 4) and layout.dims() == [2, 3, 4] and layout.dim(D.Minus1) == 4
    assert layout.stride() == [12, 4, 1] and layout.start_offset() == 0
    assert layout.is_contiguous() and not layout.is_fortran_contiguous()
    assert layout.contiguous_offsets() == (0, 24)
    assert Layout.contiguous_with_offset((2, 3), 4).contiguous_offsets() == (4, 10)
    fortran = Layout.new(Shape((2, 3)), [1, 2], 0)
    assert fortran.is_fortran_contiguous() and fortran.contiguous_offsets() is None
    # Tensor::normalize_axis, with Candle's messages
    assert (tensor.normalize_axis(-1), tensor.normalize_axis(1)) == (2, 1)
    with pytest.raises(errors.Error, match="axis 3 is too large, tensor rank 3"):
        tensor.normalize_axis(3)
    with pytest.raises(errors.Error, match="axis -4 is too small, tensor rank 3"):
        tensor.normalize_axis(-4)
    # Dim::to_index(&shape, op) / to_index_plus_one
    assert D.Minus1.to_index(tensor.shape(), "sum") == 2 and D.Minus(3).to_index(tensor.dims(), "sum") == 0
    assert D.Minus1.to_index_plus_one(tensor.shape(), "unsqueeze") == 3
    with pytest.raises(errors.DimOutOfRange, match="narrow: dimension index -4 out of range for shape"):
        D.Minus(4).to_index(tensor.shape(), "narrow")
    # storage / op-graph internals fail at once, naming what to use
    for name in ["id", "track_op", "storage_and_layout", "strided_index", "strided_blocks", "sorted_nodes"]:
        with pytest.raises(errors.CandleInternalName, match=f"has no .{name}"):
            getattr(tensor, name)()
    with pytest.raises(errors.CandleInternalName, match=r"Tensor\.new"):
        Tensor.from_storage(None, (2,), None, False)
    assert getattr(tensor, "id", None) is None  # still an AttributeError
    # Candle's `let grads = loss.backward()?`: names Candle's call and the candlejax spelling
    with pytest.raises(errors.TorchName, match=r"loss\.backward\(\) -> GradStore.*cj\.grad\(loss_fn\)"):
        tensor.sum_all().backward()


# ------------------------------------------------------------------------------------------------
# indexing_tests.rs
# ------------------------------------------------------------------------------------------------
def test_integer_index():
    dev = CPU

    tensor = Tensor.arange(0, 2 * 3, dev).reshape((2, 3))
    result = tensor.i(1)
    assert result.dims() == [3]
    assert result.to_vec1() == [3, 4, 5]

    result = tensor.i((slice(None), 2))
    assert result.dims() == [2]
    assert result.to_vec1() == [2, 5]


def test_range_index():
    dev = CPU
    # RangeFull
    tensor = Tensor.arange(0, 2 * 3, dev).reshape((2, 3))
    result = tensor.i(slice(None))
    assert result.dims() == [2, 3]
    assert result.to_vec2() == [[0, 1, 2], [3, 4, 5]]

    # Range
    tensor = Tensor.arange(0, 4 * 3, dev).reshape((4, 3))
    result = tensor.i(slice(1, 3))
    assert result.dims() == [2, 3]
    assert result.to_vec2() == [[3, 4, 5], [6, 7, 8]]

    # RangeFrom
    result = tensor.i(slice(2, None))
    assert result.dims() == [2, 3]
    assert result.to_vec2() == [[6, 7, 8], [9, 10, 11]]

    # RangeTo
    result = tensor.i(slice(None, 2))
    assert result.dims() == [2, 3]
    assert result.to_vec2() == [[0, 1, 2], [3, 4, 5]]

    # RangeInclusive (1..=2)
    result = tensor.i(slice(1, 2 + 1))
    assert result.dims() == [2, 3]
    assert result.to_vec2() == [[3, 4, 5], [6, 7, 8]]
    assert tensor.i(range(1, 2 + 1)).to_vec2() == [[3, 4, 5], [6, 7, 8]]

    # RangeTo
    result = tensor.i(slice(None, 1))
    assert result.dims() == [1, 3]
    assert result.to_vec2() == [[0, 1, 2]]

    # RangeToInclusive (..=1)
    result = tensor.i(slice(None, 1 + 1))
    assert result.dims() == [2, 3]
    assert result.to_vec2() == [[0, 1, 2], [3, 4, 5]]

    # Empty range
    result = tensor.i(slice(1, 1))
    assert result.dims() == [0, 3]
    empty = []
    assert result.to_vec2() == empty

    # Similar to PyTorch, allow empty ranges when the computed length is negative.
    result = tensor.i(slice(1, 0))
    assert result.dims() == [0, 3]
    assert result.to_vec2() == empty


def test_index_3d():
    tensor = Tensor.from_iter(range(24), CPU).reshape((2, 3, 4))
    assert tensor.dtype == DType.U32
    assert tensor.i((0, 0, 0)).to_scalar() == 0
    assert tensor.i((1, 0, 0)).to_scalar() == 12
    assert tensor.i((0, 1, 0)).to_scalar() == 4
    assert tensor.i((0, 1, 3)).to_scalar() == 7
    assert tensor.i((slice(0, 2), 0, 0)).to_vec1() == [0, 12]
    assert tensor.i((slice(0, 2), slice(None), 0)).to_vec2() == [[0, 4, 8], [12, 16, 20]]
    assert tensor.i((slice(None, 2), slice(None), 3)).to_vec2() == [[3, 7, 11], [15, 19, 23]]
    assert tensor.i((1, slice(None), 3)).to_vec1() == [15, 19, 23]


def test_slice_assign():
    dev = CPU

    tensor = Tensor.arange(0, 4 * 5, dev).reshape((4, 5))
    src = Tensor.arange(0, 2 * 3, dev).reshape((3, 2))
    out = tensor.slice_assign([slice(1, 4), slice(3, 5)], src)
    assert out.to_vec2() == [
        [0, 1, 2, 3, 4],
        [5, 6, 7, 0, 1],
        [10, 11, 12, 2, 3],
        [15, 16, 17, 4, 5],
    ]
    out = tensor.slice_assign([slice(0, 3), slice(0, 2)], src)
    assert out.to_vec2() == [
        [0, 1, 2, 3, 4],
        [2, 3, 7, 8, 9],
        [4, 5, 12, 13, 14],
        [15, 16, 17, 18, 19],
    ]


# ------------------------------------------------------------------------------------------------
# display_tests.rs
# ------------------------------------------------------------------------------------------------
def test_display_scalar():
    t = Tensor.new(1234, CPU)
    s = str(t)
    assert s == "[1234]\nTensor[[], u32]"
    t = t.to_dtype(DType.F32).neg()
    s = str(t / 10.0)
    assert s == "[-123.4000]\nTensor[[], f32]"
    s = str(t / 1e8)
    assert s == "[-1.2340e-5]\nTensor[[], f32]"
    s = str(t * 1e8)
    assert s == "[-1.2340e11]\nTensor[[], f32]"


def test_display_scalar_times_zero():
    # The last assertion of Candle's display_scalar. Candle's `&t * 0.` is `t.affine(0., 0.)`, whose
    # `+ 0.` turns -0. into +0.; candlejax multiplies, keeping IEEE's -0. (docs/differences/elementwise-reduce.md)
    t = Tensor.new(1234, CPU).to_dtype(DType.F32).neg()
    assert str(t * 0.0) == "[-0.]\nTensor[[], f32]"
    assert (t * 0.0).to_scalar() == 0.0
    assert str(t.affine(0.0, 0.0)) == "[0.]\nTensor[[], f32]"


def test_display_vector(x64):
    t = Tensor.new([], CPU, dtype=DType.U32)  # Tensor::new::<&[u32; 0]>(&[], &Cpu)
    s = str(t)
    assert s == "[]\nTensor[[0], u32]"
    t = Tensor.new([0.1234567, 1.0, -1.2, 4.1, float("nan")], CPU, dtype=DType.F64)  # Rust's f64 literals
    s = str(t)
    assert s == "[ 0.1235,  1.0000, -1.2000,  4.1000,     NaN]\nTensor[[5], f64]"
    t = Tensor.ones(50, DType.F32, CPU) * 42.0
    s = f"\n{t}"
    expected = """
[42., 42., 42., 42., 42., 42., 42., 42., 42., 42., 42., 42., 42., 42., 42., 42.,
 42., 42., 42., 42., 42., 42., 42., 42., 42., 42., 42., 42., 42., 42., 42., 42.,
 42., 42., 42., 42., 42., 42., 42., 42., 42., 42., 42., 42., 42., 42., 42., 42.,
 42., 42.]
Tensor[[50], f32]"""
    assert s == expected
    t = Tensor.ones(11000, DType.F32, CPU) * 42.0
    s = str(t)
    assert s == "[42., 42., 42., ..., 42., 42., 42.]\nTensor[[11000], f32]"


def test_display_multi_dim():
    t = Tensor.ones((200, 100), DType.F32, CPU) * 42.0
    s = f"\n{t}"
    expected = """
[[42., 42., 42., ..., 42., 42., 42.],
 [42., 42., 42., ..., 42., 42., 42.],
 [42., 42., 42., ..., 42., 42., 42.],
 ...
 [42., 42., 42., ..., 42., 42., 42.],
 [42., 42., 42., ..., 42., 42., 42.],
 [42., 42., 42., ..., 42., 42., 42.]]
Tensor[[200, 100], f32]"""
    assert s == expected
    t = t.reshape([2, 1, 1, 100, 100])
    t = f"\n{t}"
    expected = """
[[[[[42., 42., 42., ..., 42., 42., 42.],
    [42., 42., 42., ..., 42., 42., 42.],
    [42., 42., 42., ..., 42., 42., 42.],
    ...
    [42., 42., 42., ..., 42., 42., 42.],
    [42., 42., 42., ..., 42., 42., 42.],
    [42., 42., 42., ..., 42., 42., 42.]]]],
 [[[[42., 42., 42., ..., 42., 42., 42.],
    [42., 42., 42., ..., 42., 42., 42.],
    [42., 42., 42., ..., 42., 42., 42.],
    ...
    [42., 42., 42., ..., 42., 42., 42.],
    [42., 42., 42., ..., 42., 42., 42.],
    [42., 42., 42., ..., 42., 42., 42.]]]]]
Tensor[[2, 1, 1, 100, 100], f32]"""
    assert t == expected


def test_display_print_option_setters():
    # candle::display::{set_print_options(PrinterOptions { .. }), set_precision, set_threshold, ...}
    from candlejax import display

    t = Tensor.new([1.0 / 3.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], CPU)
    try:
        display.set_precision(2)
        assert str(t.narrow(0, 0, 2)) == "[0.33, 2.00]\nTensor[[2], f32]"
        display.set_threshold(5)
        display.set_edge_items(1)
        assert str(t) == "[0.33, ..., 7.00]\nTensor[[7], f32]"
        display.set_sci_mode(True)
        assert str(t.narrow(0, 1, 1)) == "[2.00e0]\nTensor[[1], f32]"
        display.set_sci_mode(None)
        display.set_line_width(20)
        assert display.print_options().line_width == 20
        display.set_print_options(display.PrinterOptions(precision=1, threshold=1000, edge_items=3, line_width=80))
        assert str(t.narrow(0, 0, 2)) == "[0.3, 2.0]\nTensor[[2], f32]"
    finally:
        display.set_print_options_default()
    assert str(t.narrow(0, 0, 2)) == "[0.3333, 2.0000]\nTensor[[2], f32]"


def _np_layout(view, base):
    """(shape, element strides, element offset) of a numpy view of ``base``: the reference for Layout."""
    item = base.itemsize
    offset = (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // item
    return tuple(view.shape), [s // item for s in view.strides], offset


def test_layout_view_arithmetic_matches_numpy_views():
    # layout.rs: Layout::narrow / transpose / permute / broadcast_as / is_scalar*, checked against the
    # strides and offsets numpy gives the same views
    np = pytest.importorskip("numpy")
    base = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    lay = Layout.contiguous((2, 3, 4))

    def same(layout, view):
        # the stride of a size-1 dim is never used (numpy's broadcast_to zeroes it, Candle keeps it)
        shape, stride, offset = _np_layout(view, base)
        got = [s for s, d in zip(layout.stride(), layout.dims()) if d != 1]
        want = [s for s, d in zip(stride, shape) if d != 1]
        assert (tuple(layout.dims()), got, layout.start_offset()) == (shape, want, offset)

    same(lay.narrow(1, 1, 2), base[:, 1:3])
    same(lay.narrow(D.Minus1, 3, 1), base[..., 3:4])
    same(lay.transpose(0, 2), base.transpose(2, 1, 0))
    same(lay.narrow(2, 1, 2).transpose(1, 2), base[:, :, 1:3].transpose(0, 2, 1))
    same(lay.permute([2, 0, 1]), base.transpose(2, 0, 1))
    same(lay.narrow(0, 1, 1).permute((1, 2, 0)), base[1:2].transpose(1, 2, 0))
    row = base[1:2, 2]  # shape (1, 4), offset 20
    same(lay.narrow(0, 1, 1).narrow(1, 2, 1).broadcast_as((5, 1, 1, 4)), np.broadcast_to(base[1:2, 2:3], (5, 1, 1, 4)))
    assert lay.narrow(0, 1, 1).broadcast_as((5, 1, 3, 4)).stride() == [0, 12, 4, 1]  # Candle keeps size-1 strides
    same(Layout.new(Shape((1, 4)), [4, 1], 20).broadcast_as((3, 4)), np.broadcast_to(row, (3, 4)))
    with pytest.raises(errors.NarrowInvalidArgs, match="start \\+ len > dim_len"):
        lay.narrow(1, 2, 2)
    with pytest.raises(errors.DimOutOfRange):
        lay.transpose(0, 3)
    with pytest.raises(errors.Error, match="dimension mismatch in permute, tensor \\[2, 3, 4\\], dims: \\[0, 1\\]"):
        lay.permute([0, 1])
    with pytest.raises(errors.Error, match="dimension mismatch in permute"):
        lay.permute([0, 1, 1])
    with pytest.raises(errors.BroadcastIncompatibleShapes):
        lay.broadcast_as((3, 4))
    with pytest.raises(errors.BroadcastIncompatibleShapes):
        lay.broadcast_as((2, 2, 4))
    # is_scalar: rank 0 or all dims 1; is_scalar_broadcast: all strides 0
    assert Layout.contiguous(()).is_scalar() and Layout.contiguous((1, 1)).is_scalar()
    assert not lay.is_scalar() and not lay.is_scalar_like()
    bcast = Layout.contiguous(()).broadcast_as((2, 5))
    assert bcast.stride() == [0, 0] and bcast.is_scalar_broadcast() and bcast.is_scalar_like()
    assert not bcast.is_scalar()
    assert not Layout.contiguous((1, 5)).broadcast_as((2, 5)).is_scalar_broadcast()
