"""Candle's errors: for each failing op, the candlejax class for Candle's ``Error`` variant (a
``ValueError``, as candle-pyo3 raises) and a message containing Candle's Display text with Candle's
op string and fields. The expected texts come from candle-core/src/error.rs and the call sites in
candle-core/src/{tensor,tensor_cat,storage,conv}.rs, cpu_backend/mod.rs, candle-nn/src/{ops,encoding,
embedding}.rs (upstream HEAD), cross-checked with candle-pyo3 0.4.2's Debug form where it binds the op.
Also the ``Error`` helpers (``Error::msg``, ``wrap``, ``debug``, ``context``, ``with_path``, ``bail!``,
the ``Context`` trait)."""

from __future__ import annotations

import numpy as np
import pytest

from candlejax import Device, DType, Tensor, errors, nn
from candlejax.io.gguf import Content

F16 = DType.F16


def _a():
    return Tensor.new(np.arange(6, dtype=np.float32).reshape(2, 3))


def _z(*shape, dtype=DType.F32):
    return Tensor.zeros(shape, dtype)


def _ids(v):
    return Tensor.new(np.asarray(v, np.uint32))


# name, thunk, candlejax class of the Candle variant, Candle's Display text (a substring of the message)
CASES = [
    # binary ops without broadcast (tensor.rs binary_op!: same_shape_binary_op; storage.rs same_dtype(B::NAME))
    ("add_shape", lambda: _a().add(_z(3)), errors.ShapeMismatchBinaryOp,
     "shape mismatch in add, lhs: [2, 3], rhs: [3]"),
    ("sub_shape", lambda: _a().sub(_z(3)), errors.ShapeMismatchBinaryOp,
     "shape mismatch in sub, lhs: [2, 3], rhs: [3]"),
    ("maximum_shape", lambda: _a().maximum(_z(3)), errors.ShapeMismatchBinaryOp, "shape mismatch in maximum, lhs"),
    ("eq_shape", lambda: _a().eq(_z(3)), errors.ShapeMismatchBinaryOp, "shape mismatch in cmp, lhs: [2, 3], rhs: [3]"),
    ("add_dtype", lambda: _a().add(_z(2, 3, dtype=F16)), errors.DTypeMismatchBinaryOp,
     "dtype mismatch in add, lhs: F32, rhs: F16"),
    ("lt_dtype", lambda: _a().lt(_z(2, 3, dtype=F16)), errors.DTypeMismatchBinaryOp,
     "dtype mismatch in cmp, lhs: F32, rhs: F16"),
    # broadcast_* (broadcast_binary_op!: the shape error names broadcast_add, the dtype error the inner op)
    ("broadcast_add_shape", lambda: _a().broadcast_add(_z(2, 2)), errors.ShapeMismatchBinaryOp,
     "shape mismatch in broadcast_add, lhs: [2, 3], rhs: [2, 2]"),
    ("broadcast_add_dtype", lambda: _a().broadcast_add(_z(3, dtype=F16)), errors.DTypeMismatchBinaryOp,
     "dtype mismatch in add, lhs: F32, rhs: F16"),
    ("broadcast_maximum_dtype", lambda: _a().broadcast_maximum(_z(3, dtype=F16)), errors.DTypeMismatchBinaryOp,
     "dtype mismatch in maximum, lhs: F32, rhs: F16"),
    ("broadcast_lt_dtype", lambda: _a().broadcast_lt(_z(3, dtype=F16)), errors.DTypeMismatchBinaryOp,
     "dtype mismatch in cmp, lhs: F32, rhs: F16"),
    # candle-pyo3 0.4.2: `a + b` -> DTypeMismatchBinaryOp { lhs: F32, rhs: F64, op: "add" }
    ("operator_add_dtype", lambda: _a() + _z(3, dtype=F16), errors.DTypeMismatchBinaryOp,
     "dtype mismatch in add, lhs: F32, rhs: F16"),
    # matmul
    ("matmul_shape", lambda: _a().matmul(_a()), errors.ShapeMismatchBinaryOp,
     "shape mismatch in matmul, lhs: [2, 3], rhs: [2, 3]"),
    ("matmul_dtype", lambda: _a().matmul(_z(3, 2, dtype=F16)), errors.DTypeMismatchBinaryOp,
     "dtype mismatch in matmul, lhs: F32, rhs: F16"),
    ("broadcast_matmul_inner", lambda: _z(2, 3, 4).broadcast_matmul(_z(2, 3, 4)), errors.Msg,
     "different inner dimensions in broadcast matmul [2, 3, 4] [2, 3, 4]"),
    # reshape (shape.rs into_shape: ShapeMismatch)
    ("reshape", lambda: _a().reshape((4, 2)), errors.ShapeMismatch,
     "Shape mismatch, got buffer of size 6 which is compatible with shape [4, 2]"),
    # narrow
    ("narrow_len", lambda: _a().narrow(1, 1, 3), errors.NarrowInvalidArgs,
     "narrow invalid args start + len > dim_len: [2, 3], dim: 1, start: 1, len:3"),
    ("narrow_start", lambda: _a().narrow(1, 4, 0), errors.NarrowInvalidArgs,
     "narrow invalid args start > dim_len: [2, 3], dim: 1, start: 4, len:0"),
    ("narrow_dim", lambda: _a().narrow(3, 0, 1), errors.DimOutOfRange,
     "narrow: dimension index 3 out of range for shape [2, 3]"),
    # cat / stack (tensor_cat.rs)
    ("cat_empty", lambda: Tensor.cat([], 0), errors.OpRequiresAtLeastOneTensor, "cat expects at least one tensor"),
    ("cat_shape", lambda: Tensor.cat([_a(), _z(2, 4)], 0), errors.ShapeMismatchCat,
     "shape mismatch in cat for dim 1, shape for arg 1: [2, 3] shape for arg 2: [2, 4]"),
    ("cat_rank", lambda: Tensor.cat([_a(), _z(3)], 0), errors.UnexpectedNumberOfDims,
     "unexpected rank, expected: 2, got: 1 ([3])"),
    ("cat_dtype", lambda: Tensor.cat([_a(), _z(2, 3, dtype=F16)], 0), errors.DTypeMismatchBinaryOp,
     "dtype mismatch in cat, lhs: F32, rhs: F16"),
    ("stack_shape", lambda: Tensor.stack([_a(), _z(2, 4)], 0), errors.ShapeMismatchCat,
     "shape mismatch in cat for dim 2, shape for arg 1: [1, 2, 3] shape for arg 2: [1, 2, 4]"),
    # dims
    ("squeeze_dim", lambda: _a().squeeze(5), errors.DimOutOfRange, "squeeze: dimension index 5 out of range"),
    ("unsqueeze_dim", lambda: _a().unsqueeze(5), errors.DimOutOfRange,
     "unsqueeze: dimension index 5 out of range for shape [2, 3]"),
    ("transpose_dim", lambda: _a().transpose(0, 5), errors.DimOutOfRange,
     "transpose: dimension index 5 out of range for shape [2, 3]"),
    ("permute_dup", lambda: _a().permute((0, 0)), errors.DuplicateDimIndex,
     "permute: duplicate dim index [0, 0] for shape [2, 3]"),
    ("sum_dim", lambda: _a().sum_keepdim(5), errors.DimOutOfRange,
     "sum: dimension index 5 out of range for shape [2, 3]"),
    ("sum_dup", lambda: _a().sum_keepdim((0, 0)), errors.DuplicateDimIndex,
     "sum: duplicate dim index [0, 0] for shape [2, 3]"),
    ("max_empty", lambda: _z(2, 0).max_keepdim(1), errors.EmptyTensor, "empty tensor for reduce"),
    ("argmax_empty", lambda: _z(2, 0).argmax_keepdim(1), errors.EmptyTensor, "empty tensor for reduce"),
    # indexing (tensor.rs index_select/gather/scatter_checks/index_add; cpu_backend InvalidIndex)
    ("index_select_oob", lambda: _z(3).index_select(_ids([0, 7]), 0), errors.InvalidIndex,
     "index-select invalid index 7 with dim size 3"),
    ("index_select_rank", lambda: _z(3).index_select(_z(2, 3, dtype=DType.U32), 0), errors.ShapeMismatchBinaryOp,
     "shape mismatch in index-select, lhs: [3], rhs: [2, 3]"),
    ("gather_shape", lambda: _a().gather(_z(3, 3, dtype=DType.U32), 1), errors.ShapeMismatchBinaryOp,
     "shape mismatch in gather, lhs: [2, 3], rhs: [3, 3]"),
    ("gather_oob", lambda: _a().gather(_ids([[5], [0]]), 1), errors.InvalidIndex,
     "gather invalid index 5 with dim size 3"),
    ("scatter_add_ids_src", lambda: _a().scatter_add(_z(2, 2, dtype=DType.U32), _a(), 1), errors.ShapeMismatchBinaryOp,
     "shape mismatch in scatter (indexes, src), lhs: [2, 2], rhs: [2, 3]"),
    ("scatter_add_self_src", lambda: _a().scatter_add(_z(3, 3, dtype=DType.U32), _z(3, 3), 1),
     errors.ShapeMismatchBinaryOp, "shape mismatch in scatter (self, src), lhs: [2, 3], rhs: [3, 3]"),
    ("scatter_add_dtype", lambda: _a().scatter_add(_z(2, 3, dtype=DType.U32), _z(2, 3, dtype=F16), 1),
     errors.DTypeMismatchBinaryOp, "dtype mismatch in scatter, lhs: F32, rhs: F16"),
    ("index_add_self_src", lambda: _a().index_add(_ids([0, 1]), _z(2, 2), 0), errors.ShapeMismatchBinaryOp,
     "shape mismatch in index-add (self, source), lhs: [2, 3], rhs: [2, 2]"),
    ("embedding_rank", lambda: _z(3, 2, 1).embedding(_ids([0])), errors.ShapeMismatchBinaryOp,
     "shape mismatch in embedding, lhs: [3, 2, 1], rhs: [1]"),
    # Tensor::embedding is index_select(ids, 0): its out-of-range error is index-select's
    ("embedding_oob", lambda: _z(3, 2).embedding(_ids([0, 3])), errors.InvalidIndex,
     "index-select invalid index 3 with dim size 3"),
    # candle-nn Embedding::forward: flatten_all + index_select
    ("nn_embedding_oob", lambda: nn.Embedding(_a(), 3).forward(_ids([5])), errors.InvalidIndex,
     "index-select invalid index 5 with dim size 2"),
    # where_cond (tensor.rs same_shape_binary_op "where_cond"; storage.rs t.same_dtype(f, "where");
    # candle-pyo3 0.4.2: DTypeMismatchBinaryOp { lhs: F32, rhs: F64, op: "where" })
    ("where_shape", lambda: _z(2, 2, dtype=DType.U8).where_cond(_a(), _a()), errors.ShapeMismatchBinaryOp,
     "shape mismatch in where_cond, lhs: [2, 2], rhs: [2, 3]"),
    ("where_dtype", lambda: _z(2, 3, dtype=DType.U8).where_cond(_a(), _z(2, 3, dtype=F16)),
     errors.DTypeMismatchBinaryOp, "dtype mismatch in where, lhs: F32, rhs: F16"),
    # conv (conv.rs; storage.rs same_dtype(kernel, "conv1d" / "conv-transpose1d" / "conv2d" / "conv_transpose2d"))
    ("conv1d_channels", lambda: _z(2, 3, 4).conv1d(_z(2, 5, 3), 0, 1, 1, 1), errors.Conv1dInvalidArgs,
     "conv1d invalid args the number of in-channels on the input doesn't match the kernel size: inp: [2, 3, 4],"
     " k: [2, 5, 3], pad: 0, stride: 1"),
    ("conv2d_channels", lambda: _z(1, 2, 3, 4).conv2d(_z(2, 5, 3, 3), 0, 1, 1, 1), errors.Msg,
     "in_channel mismatch between input (2, groups 1) and kernel (5)"),
    ("conv1d_dtype", lambda: _z(1, 2, 5).conv1d(_z(3, 2, 3, dtype=F16), 0, 1, 1, 1), errors.DTypeMismatchBinaryOp,
     "dtype mismatch in conv1d, lhs: F32, rhs: F16"),
    ("conv_transpose1d_dtype", lambda: _z(1, 2, 5).conv_transpose1d(_z(2, 3, 3, dtype=F16), 0, 0, 1, 1, 1),
     errors.DTypeMismatchBinaryOp, "dtype mismatch in conv-transpose1d, lhs: F32, rhs: F16"),
    ("conv2d_dtype", lambda: _z(1, 2, 5, 5).conv2d(_z(3, 2, 3, 3, dtype=F16), 0, 1, 1, 1), errors.DTypeMismatchBinaryOp,
     "dtype mismatch in conv2d, lhs: F32, rhs: F16"),
    ("conv_transpose2d_dtype", lambda: _z(1, 2, 5, 5).conv_transpose2d(_z(2, 3, 3, 3, dtype=F16), 0, 0, 1, 1),
     errors.DTypeMismatchBinaryOp, "dtype mismatch in conv_transpose2d, lhs: F32, rhs: F16"),
    ("max_pool2d_big", lambda: _z(1, 2, 3, 4).max_pool2d(5), errors.Msg,
     "kernel-size (5, 5) is larger than the input size 3,4"),
    # host reads
    ("to_vec0", lambda: _a().to_vec0(), errors.UnexpectedNumberOfDims, "unexpected rank, expected: 0, got: 2 ([2, 3])"),
    ("to_vec1", lambda: _a().to_vec1(), errors.UnexpectedNumberOfDims, "unexpected rank, expected: 1, got: 2 ([2, 3])"),
    ("to_vec2", lambda: _z(3).to_vec2(), errors.UnexpectedNumberOfDims, "unexpected rank, expected: 2, got: 1 ([3])"),
    ("to_vec3", lambda: _a().to_vec3(), errors.UnexpectedNumberOfDims, "unexpected rank, expected: 3, got: 2 ([2, 3])"),
    ("to_scalar", lambda: _a().to_scalar(), errors.UnexpectedNumberOfDims, "unexpected rank, expected: 0, got: 2"),
    # broadcast_as, arange, slices, Var::set
    ("broadcast_as", lambda: _a().broadcast_as((4, 3)), errors.BroadcastIncompatibleShapes,
     "cannot broadcast [2, 3] to [4, 3]"),
    ("arange_step_zero", lambda: Tensor.arange_step(0, 5, 0), errors.Msg, "step cannot be zero"),
    ("slice_assign_size", lambda: _a().slice_assign([slice(0, 2), slice(0, 2)], _z(2, 3)), errors.Msg,
     "slice-assign: the range for dim 1 (0..2) does not match the size of src 3"),
    ("slice_set_dim", lambda: _a().slice_set(_z(1, 2), 0, 0), errors.Msg, "shape mismatch on dim 1, 3 <> 2"),
    ("slice_set_dtype", lambda: _a().slice_set(_z(1, 3, dtype=F16), 0, 0), errors.DTypeMismatchBinaryOp,
     "dtype mismatch in slice-set, lhs: F32, rhs: F16"),
    ("var_set_shape", lambda: nn.Var.from_tensor(_a()).set(_z(3)), errors.ShapeMismatchBinaryOp,
     "shape mismatch in set, lhs: [2, 3], rhs: [3]"),
    # candle-nn ops.rs / encoding.rs
    ("rms_norm_shape", lambda: nn.ops.rms_norm(_a(), Tensor.ones((2,)), 1e-5), errors.Msg,
     "shape mismatch in rms-norm [2, 3] [2]"),
    ("layer_norm_shape", lambda: nn.ops.layer_norm(_a(), Tensor.ones((2,)), _z(2), 1e-5), errors.Msg,
     "shape mismatch in layer-norm src: [2, 3] alpha: [2] beta: [2]"),
    # rotary_emb.rs: rope, rope_i and rope_thd bail with the same text
    ("rope_dims", lambda: nn.rotary_emb.rope(_z(1, 2, 3, 8), _z(3, 3), _z(3, 3)), errors.Msg,
     "inconsistent last dim size in rope [1, 2, 3, 8] [3, 3] [3, 3]"),
    ("rope_i_dims", lambda: nn.rotary_emb.rope_i(_z(1, 2, 3, 8), _z(2, 4), _z(2, 4)), errors.Msg,
     "inconsistent last dim size in rope [1, 2, 3, 8] [2, 4] [2, 4]"),
    ("rope_thd_dims", lambda: nn.rotary_emb.rope_thd(_z(1, 3, 2, 8), _z(2, 4), _z(2, 4)), errors.Msg,
     "inconsistent last dim size in rope [1, 3, 2, 8] [2, 4] [2, 4]"),
    # loss.rs: mse is (inp - target), bce-with-logit starts with target * inp.log(), huber checks first
    ("mse_shape", lambda: nn.loss.mse(_z(3, 3), _z(3)), errors.ShapeMismatchBinaryOp,
     "shape mismatch in sub, lhs: [3, 3], rhs: [3]"),
    ("mse_dtype", lambda: nn.loss.mse(_z(3), _z(3, dtype=F16)), errors.DTypeMismatchBinaryOp,
     "dtype mismatch in sub, lhs: F32, rhs: F16"),
    ("bce_shape", lambda: nn.loss.binary_cross_entropy_with_logit(_z(3), _z(2)), errors.ShapeMismatchBinaryOp,
     "shape mismatch in mul, lhs: [2], rhs: [3]"),
    ("huber_shape", lambda: nn.loss.huber(_z(3, 3), _z(3), 1.0), errors.Msg,
     "input and target must have the same shape, got inp: [3, 3], target: [3]"),
    ("nll_target_rank", lambda: nn.loss.nll(_z(2, 3), _ids([[0], [1]])), errors.Msg,
     "the target tensor should have a single dimension ([2, 1])"),
    ("nll_inp_rank", lambda: nn.loss.nll(_z(3, 2, 3), _ids([0, 1, 2])), errors.Msg,
     "the target tensor should have two dimensions ([3, 2, 3])"),
    ("nll_batch", lambda: nn.loss.nll(_z(3, 3), _ids([0, 1])), errors.Msg,
     "batch size mismatch between inp (3) and target (2)"),
    ("cross_entropy_rank", lambda: nn.loss.cross_entropy(_z(3), _ids([0, 1, 2])), errors.Msg,
     "cross_entropy expects an input tensor of rank 2"),
    ("one_hot_depth", lambda: nn.encoding.one_hot(_ids([5]), 3, 1.0, 0.0), errors.Msg,
     "one_hot: index value 5 exceeds depth 3"),
    ("one_hot_negative", lambda: nn.encoding.one_hot(Tensor.new(np.array([-2], np.int32)), 3, 1.0, 0.0), errors.Msg,
     "one_hot: invalid negative index value -2, expected a positive index value or -1"),
]  # fmt: skip


@pytest.mark.parametrize("name,thunk,kind,text", CASES, ids=[c[0] for c in CASES])
def test_error_kind_and_wording(name, thunk, kind, text):
    with pytest.raises(kind) as info:
        thunk()
    assert isinstance(info.value, errors.Error) and isinstance(info.value, ValueError)
    assert text in str(info.value), str(info.value)


def test_candle_pyo3_names_the_inner_op_for_a_dtype_mismatch_in_a_broadcast_operator():
    candle = pytest.importorskip("candle")
    a = candle.Tensor([1.0, 2.0])
    with pytest.raises(ValueError, match='op: "add"'):
        a + a.to_dtype(candle.f64)
    m = candle.Tensor([1, 0]).to_dtype(candle.u8)
    with pytest.raises(ValueError, match='op: "where"'):
        m.where_cond(a, a.to_dtype(candle.f64))


# --- the Error helpers (error.rs: Error::msg/wrap/debug/context/with_path/bt, bail!, Context trait) -----
def test_error_msg_wrap_debug():
    e = errors.Error.msg("something failed")
    assert isinstance(e, errors.Msg) and str(e) == "something failed"
    w = errors.Error.wrap(OSError("disk"))
    assert isinstance(w, errors.Wrapped) and str(w) == "disk"
    d = errors.Error.debug([1, "a"])
    assert isinstance(d, errors.Msg) and str(d) == "[1, 'a']"
    assert e.bt() is e


def test_error_context_and_with_path():
    inner = errors.ShapeMismatchBinaryOp((2, 3), (3,), "add")
    c = inner.context("while adding")
    assert isinstance(c, errors.Context) and c.inner is inner
    assert str(c) == f"while adding\n{inner}"  # "{context}\n{inner}"
    p = errors.Error.msg("bad header").with_path("model.safetensors")
    assert isinstance(p, errors.WithPath) and p.path == "model.safetensors"
    assert str(p) == 'path: "model.safetensors" bad header'  # "path: {path:?} {inner}"


def test_bail():
    with pytest.raises(errors.Msg, match=r"^step cannot be zero$"):
        errors.bail("step cannot be zero")
    with pytest.raises(errors.Msg, match=r"^index 7 is too large for 3$"):
        errors.bail("index {} is too large for {}", 7, 3)
    with pytest.raises(errors.Msg, match=r"^a \{literal\} brace$"):
        errors.bail("a {literal} brace")


def test_context_trait_for_option_and_result():
    assert errors.context(5, "missing") == 5
    with pytest.raises(errors.Msg, match=r"^no tokenizer$"):  # Option::context -> Error::msg(context)
        errors.context(None, "no tokenizer")
    with pytest.raises(errors.Context, match=r"^no tokenizer\nunwrap none$") as info:  # Option::with_context
        errors.with_context(None, lambda: "no tokenizer")
    assert isinstance(info.value.inner, errors.UnwrapNone) and str(info.value.inner) == "unwrap none"
    # Result::context -> WrappedContext "{wrapped:?}\n{context:?}"
    with pytest.raises(errors.WrappedContext) as info:
        errors.context(KeyError("x"), "reading the config")
    assert str(info.value) == "KeyError('x')\n\"reading the config\""
    assert isinstance(info.value.wrapped, KeyError)
    assert errors.with_context(3, lambda: pytest.fail("evaluated lazily")) == 3


def test_gguf_header_errors_carry_candles_text(tmp_path):
    # gguf_file.rs: Magic::try_from bails "unknown magic 0x{value:08x}" (the first 4 bytes read as a
    # little-endian u32); VersionedMagic::read "gguf: unsupported magic/version {magic:?}/{version}"
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGXX" + bytes(28))
    with pytest.raises(errors.Gguf, match="unknown magic 0x58584747"):
        Content.read(str(bad))
    v7 = tmp_path / "v7.gguf"
    v7.write_bytes(b"GGUF" + (7).to_bytes(4, "little") + bytes(24))
    with pytest.raises(errors.Gguf, match="unsupported magic/version Gguf/7"):
        Content.read(str(v7))


def test_device_mismatch_shows_candles_device_locations():
    # error.rs: "device mismatch in {op}, lhs: {lhs:?}, rhs: {rhs:?}" over DeviceLocation (Debug: Cuda { gpu_id: 0 })
    e = errors.DeviceMismatchBinaryOp(Device.Cpu, Device("cuda", 0), "add")
    assert "device mismatch in add, lhs: Cpu, rhs: Cuda { gpu_id: 0 }" in str(e)


def _vb():
    return nn.VarBuilder.from_varmap(nn.VarMap(), DType.F32, Device.Cpu)


# candle-nn layers: the error the layer's forward raises in Candle leads the message (the layer and the
# expected input follow in parentheses); candlejax's class is LayerInputShape (an UnexpectedShape)
LAYER_CASES = [
    # linear.rs: 2-D x.matmul(w.t()); 3-D/4-D contiguous inputs are flattened to 2-D first
    ("linear_2d", lambda: nn.linear(3, 4, _vb().pp("fc")).forward(_z(2, 5)),
     "shape mismatch in matmul, lhs: [2, 5], rhs: [3, 4]"),
    ("linear_3d", lambda: nn.linear(3, 4, _vb().pp("fc")).forward(_z(2, 6, 5)),
     "shape mismatch in matmul, lhs: [12, 5], rhs: [3, 4]"),
    ("linear_1d", lambda: nn.linear(3, 4, _vb().pp("fc")).forward(_z(3)),
     "shape mismatch in matmul, lhs: [3], rhs: [3, 4]"),
    # conv.rs: Conv1dInvalidArgs / in_channel mismatch / dims3-dims4 rank errors
    ("conv1d_channels", lambda: nn.conv1d(3, 4, 3, nn.Conv1dConfig(padding=1), _vb().pp("c")).forward(_z(1, 2, 5)),
     "conv1d invalid args the number of in-channels on the input doesn't match the kernel size: inp: [1, 2, 5],"
     " k: [4, 3, 3], pad: 1, stride: 1"),
    ("conv2d_channels", lambda: nn.conv2d(3, 4, 3, nn.Conv2dConfig(), _vb().pp("c")).forward(_z(1, 2, 5, 5)),
     "in_channel mismatch between input (2, groups 1) and kernel (3)"),
    ("conv2d_rank", lambda: nn.conv2d(3, 4, 3, nn.Conv2dConfig(), _vb().pp("c")).forward(_z(3, 5, 5)),
     "unexpected rank, expected: 4, got: 3 ([3, 5, 5])"),
    ("conv_transpose2d_channels",
     lambda: nn.conv_transpose2d(3, 4, 3, nn.ConvTranspose2dConfig(), _vb().pp("c")).forward(_z(1, 2, 5, 5)),
     "in_channel mismatch between input (2) and kernel (3)"),
    # ops.rs: RmsNorm -> rms_norm, LayerNorm (bias, remove_mean) -> layer_norm
    ("rms_norm_layer", lambda: nn.rms_norm(4, 1e-5, _vb().pp("n")).forward(_z(2, 3)),
     "shape mismatch in rms-norm [2, 3] [4]"),
    ("layer_norm_layer", lambda: nn.layer_norm(4, 1e-5, _vb().pp("n")).forward(_z(2, 3)),
     "shape mismatch in layer-norm src: [2, 3] alpha: [4] beta: [4]"),
    # group_norm.rs / batch_norm.rs forward_train
    ("group_norm_channels", lambda: nn.group_norm(2, 4, 1e-5, _vb().pp("g")).forward(_z(2, 3, 5)),
     "unexpected num-channels in GroupNorm (3 <> 4"),
    ("batch_norm_features",
     lambda: nn.batch_norm(4, nn.BatchNormConfig(), _vb().pp("b")).forward_train(_z(2, 3, 5)),
     "batch-norm input doesn't have the expected number of features ([2, 3, 5] <> 4)"),
    ("batch_norm_rank", lambda: nn.batch_norm(4, nn.BatchNormConfig(), _vb().pp("b")).forward_train(_z(4)),
     "batch-norm input tensor must have at least two dimensions ([4])"),
]  # fmt: skip


@pytest.mark.parametrize("name,thunk,text", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_layer_input_errors_lead_with_candles_text(name, thunk, text):
    with pytest.raises(errors.UnexpectedShape) as info:
        thunk()
    assert str(info.value).startswith(text), str(info.value)
