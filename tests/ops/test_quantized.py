"""GGML block types, dequantisation (numpy reference, JAX, gguf.quants), quantisation, QTensor, QMatMul."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # noqa: E402
from gguf import quants as gq  # noqa: E402

from candlejax import DType, Tensor, errors  # noqa: E402
from candlejax.quantized import (  # noqa: E402
    GgmlDType,
    QMatMul,
    QTensor,
    dequantize_np,
    dequantize_rows,
    quantize_np,
)
from candlejax.quantized.ggml_types import IMATRIX_TYPES, quantize_imatrix_np  # noqa: E402

ALL = list(GgmlDType)
QUANT = [d for d in ALL if not d.is_float()]
GGUF_DEQ = [d for d in ALL if d not in (GgmlDType.Q8_1, GgmlDType.Q8K)]  # gguf.quants has no Q8_1/Q8_K decoder
GGUF_Q = [GgmlDType.F32, GgmlDType.F16, GgmlDType.BF16, GgmlDType.Q4_0, GgmlDType.Q4_1, GgmlDType.Q5_0,
          GgmlDType.Q5_1, GgmlDType.Q8_0]


def random_blocks(rng: np.random.Generator, dt: GgmlDType, n_blocks: int) -> np.ndarray:
    """Random block bytes whose f16/f32 scale fields are finite (random bytes elsewhere)."""
    raw = rng.integers(0, 256, size=(n_blocks, dt.type_size()), dtype=np.uint8)
    if dt.is_float():
        vals = rng.standard_normal(n_blocks).astype({GgmlDType.F32: "<f4", GgmlDType.F16: "<f2"}.get(dt, "<f4"))
        if dt is GgmlDType.BF16:
            return (vals.view(np.uint32) >> 16).astype("<u2").view(np.uint8).reshape(n_blocks, 2)
        return vals.view(np.uint8).reshape(n_blocks, -1)
    f16_at = {
        GgmlDType.Q4_0: [0], GgmlDType.Q4_1: [0, 2], GgmlDType.Q5_0: [0], GgmlDType.Q5_1: [0, 2],
        GgmlDType.Q8_0: [0], GgmlDType.Q8_1: [0, 2], GgmlDType.Q2K: [80, 82], GgmlDType.Q3K: [108],
        GgmlDType.Q4K: [0, 2], GgmlDType.Q5K: [0, 2], GgmlDType.Q6K: [208],
    }.get(dt, [])
    for at in f16_at:
        raw[:, at : at + 2] = (rng.standard_normal(n_blocks) * 0.1).astype("<f2").view(np.uint8).reshape(n_blocks, 2)
    if dt is GgmlDType.Q8K:
        raw[:, 0:4] = (rng.standard_normal(n_blocks) * 0.1).astype("<f4").view(np.uint8).reshape(n_blocks, 4)
    return raw


# --- the block types ---------------------------------------------------------------------------
def test_block_and_type_sizes_match_ggml():
    for dt in ALL:
        if dt is GgmlDType.Q8_1:  # gguf-py still lists the old f32 layout (40); ggml and Candle use 36
            assert (dt.block_size(), dt.type_size()) == (32, 36)
            continue
        assert (dt.block_size(), dt.type_size()) == GGML_QUANT_SIZES[GGMLQuantizationType(dt.value)], dt
    assert GgmlDType.Q4_K is GgmlDType.Q4K and GgmlDType.parse("q4_k") is GgmlDType.Q4K
    assert GgmlDType.parse("Q8_0") is GgmlDType.Q8_0
    with pytest.raises(errors.Gguf, match="unknown dtype for tensor 20"):
        GgmlDType.from_u32(20)


# --- dequantisation ----------------------------------------------------------------------------
@pytest.mark.parametrize("dt", ALL, ids=lambda d: d.name)
def test_dequantize_numpy_jax_and_gguf_agree(dt, rng):
    nb = 24 if dt.block_size() > 1 else 96
    raw = random_blocks(rng, dt, nb)
    ref = dequantize_np(raw, dt)
    assert ref.dtype == np.float32 and ref.shape == (nb * dt.block_size(),)
    if dt in GGUF_DEQ:
        theirs = gq.dequantize(raw.reshape(1, -1), GGMLQuantizationType(dt.value)).reshape(-1)
        np.testing.assert_array_equal(ref, theirs)
    # JAX, compiled, with a leading dim (2 rows of nb/2 blocks)
    rows = jnp.asarray(raw.reshape(2, -1))
    jitted = np.asarray(jax.jit(lambda r: dequantize_rows(r, dt))(rows))
    assert jitted.shape == (2, nb * dt.block_size() // 2)
    np.testing.assert_allclose(jitted.reshape(-1), ref, rtol=1e-6, atol=0)


def test_dequantize_rows_rejects_bad_input():
    with pytest.raises(errors.Error, match="not a whole number of blocks"):
        dequantize_rows(jnp.zeros((17,), jnp.uint8), GgmlDType.Q4_0)
    with pytest.raises(errors.Error, match="expected: U8"):
        dequantize_rows(jnp.zeros((18,), jnp.int32), GgmlDType.Q4_0)


# --- quantisation ------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", GGUF_Q, ids=lambda d: d.name)
def test_quantize_is_bit_identical_to_gguf(dt, rng):
    x = (rng.standard_normal((6, 256)) * 3).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block
    ours = quantize_np(x, dt)
    theirs = np.ascontiguousarray(gq.quantize(x, GGMLQuantizationType(dt.value))).reshape(-1).view(np.uint8)
    np.testing.assert_array_equal(ours, theirs)


# rms error bound of quantize->dequantize for N(0, 1) data, per type
RMSE = {
    GgmlDType.F32: 0.0, GgmlDType.F16: 3e-4, GgmlDType.BF16: 3e-3, GgmlDType.Q4_0: 0.1, GgmlDType.Q4_1: 0.09,
    GgmlDType.Q5_0: 0.05, GgmlDType.Q5_1: 0.045, GgmlDType.Q8_0: 0.007, GgmlDType.Q8_1: 0.007,
    GgmlDType.Q2K: 0.3, GgmlDType.Q3K: 0.2, GgmlDType.Q4K: 0.08, GgmlDType.Q5K: 0.04, GgmlDType.Q6K: 0.025,
    GgmlDType.Q8K: 0.008,
}


@pytest.mark.parametrize("dt", ALL, ids=lambda d: d.name)
def test_quantize_round_trip(dt, rng):
    x = rng.standard_normal((4, 512)).astype(np.float32)
    x[1, :256] = 0.0
    raw = quantize_np(x, dt)
    assert raw.size == dt.bytes_for(x.size)
    y = dequantize_np(raw, dt, x.shape)
    assert np.sqrt(np.mean((y - x) ** 2)) <= RMSE[dt]
    np.testing.assert_array_equal(y[1, :256], 0.0)  # zero blocks stay exactly zero
    if dt in GGUF_DEQ:  # our blocks decode the same with gguf-py
        theirs = gq.dequantize(raw.reshape(x.shape[0], -1), GGMLQuantizationType(dt.value))
        np.testing.assert_array_equal(theirs, y)


@pytest.mark.parametrize("dt", IMATRIX_TYPES, ids=lambda d: d.name)
def test_quantize_imatrix_round_trip(dt, rng):
    x = rng.standard_normal((4, 512)).astype(np.float32)
    x[1, :256] = 0.0
    x[2, :256] = -0.7  # a constant block, negative
    x[3, 256:] = 1.3  # and a positive one
    imatrix = rng.random(512).astype(np.float32)
    imatrix[:128] = 0.0  # columns of no importance: the fit still covers them
    raw = quantize_imatrix_np(x, imatrix, dt)
    assert raw.size == dt.bytes_for(x.size)
    y = dequantize_np(raw, dt, x.shape)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y[1, :256], 0.0)
    np.testing.assert_allclose(y[2, :256], -0.7, atol=1e-3)
    np.testing.assert_allclose(y[3, 256:], 1.3, atol=1e-3)
    assert np.sqrt(np.mean((y[0] - x[0]) ** 2)) <= 1.1 * RMSE[dt]
    # the same blocks as QTensor.quantize_imatrix, which takes the imatrix as a list too
    q = QTensor.quantize_imatrix(Tensor.from_numpy(x), imatrix.tolist(), dt)
    np.testing.assert_array_equal(np.asarray(q.data()), raw)


def test_quantize_q8_0_recovers_values_exactly_representable():
    x = (np.arange(-127, 129).clip(-127, 127).astype(np.float32) * 0.5).reshape(8, 32)
    x[:, 0] = 63.5  # each block's absmax makes d = 0.5
    y = dequantize_np(quantize_np(x, GgmlDType.Q8_0), GgmlDType.Q8_0, x.shape)
    np.testing.assert_array_equal(y, x)


# --- QTensor -----------------------------------------------------------------------------------
def test_qtensor_basics(rng):
    w = rng.standard_normal((8, 64)).astype(np.float32)
    t = Tensor.from_numpy(w)
    q = QTensor.quantize(t, GgmlDType.Q8_0)
    assert q.dtype() is GgmlDType.Q8_0 and q.ggml_dtype is GgmlDType.Q8_0 and q.ggml_dtype.lower() == "q8_0"
    assert q.shape == (8, 64) and q.rank == 2 and q.elem_count() == 512
    assert q.storage_size_in_bytes() == 8 * 2 * 34
    assert q.raw.dtype == jnp.uint8 and q.raw.shape == (8, 68)
    assert q.data().shape == (8 * 68,)
    assert repr(q) == "QTensor[[8, 64]; Q8_0]"
    d = q.dequantize()
    assert d.dtype is DType.F32 and d.shape == (8, 64)
    np.testing.assert_array_equal(np.asarray(d), dequantize_np(q.data(), GgmlDType.Q8_0, (8, 64)))
    f16 = q.dequantize_f16()
    assert f16.dtype is DType.F16
    np.testing.assert_array_equal(np.asarray(f16), np.asarray(d).astype(np.float16))
    assert q.device == t.device
    r = q.reshape((2, 4, 64))
    assert r.shape == (2, 4, 64)
    np.testing.assert_array_equal(np.asarray(r.dequantize()).reshape(8, 64), np.asarray(d))
    with pytest.raises(errors.Error, match="element count differs"):
        q.reshape((8, 32))
    # from_data round trip
    q2 = QTensor.from_data(q.data(), GgmlDType.Q8_0, (8, 64))
    np.testing.assert_array_equal(np.asarray(q2.dequantize()), np.asarray(d))
    with pytest.raises(errors.Error, match="needs 544 bytes"):
        QTensor.from_data(q.data()[:-1], GgmlDType.Q8_0, (8, 64))


def test_qtensor_quantize_shape_errors():
    with pytest.raises(errors.Error) as e:
        QTensor.quantize(Tensor.from_numpy(np.zeros((2, 100), np.float32)), GgmlDType.Q4K)
    assert str(e.value) == "quantized tensor must have their last dim divisible by block size [2, 100] 256"
    with pytest.raises(errors.Error, match="scalar tensor cannot be quantized"):
        QTensor.quantize(np.float32(1.0), GgmlDType.Q4_0)
    with pytest.raises(errors.TracingError, match="outside"):
        jax.jit(lambda a: QTensor.quantize(a, GgmlDType.Q4_0).raw)(jnp.ones((1, 32)))
    import candlejax.quantized as cq
    from candlejax.io import gguf as gguf_mod

    assert cq.gguf_file is gguf_mod


def test_qtensor_quantize_bf16_input(rng):
    w = rng.standard_normal((4, 32)).astype(np.float32)
    t = Tensor.from_numpy(w).to_dtype(DType.BF16)
    q = QTensor.quantize(t, GgmlDType.Q8_0)
    np.testing.assert_allclose(np.asarray(q.dequantize()), np.asarray(t).astype(np.float32), atol=0.03)


def test_qtensor_is_a_pytree_and_dequantizes_under_jit(rng):
    q = QTensor.quantize(rng.standard_normal((16, 64)).astype(np.float32), GgmlDType.Q4_1)
    leaves, treedef = jax.tree_util.tree_flatten(q)
    assert len(leaves) == 1 and leaves[0].dtype == jnp.uint8
    q2 = jax.tree_util.tree_unflatten(treedef, leaves)
    assert q2.shape == q.shape and q2.dtype() is q.dtype()
    f = jax.jit(lambda q: q.dequantize().jax * 2)
    np.testing.assert_array_equal(np.asarray(f(q)), np.asarray(q.dequantize()) * 2)
    # the argument the compiled step receives is the packed uint8 data
    jaxpr = jax.make_jaxpr(lambda q: q.dequantize().jax)(q)
    assert jaxpr.in_avals[0].dtype == jnp.uint8 and jaxpr.in_avals[0].shape == (16, 40)


def test_qtensor_embedding(rng):
    table = rng.standard_normal((10, 64)).astype(np.float32)
    q = QTensor.quantize(table, GgmlDType.Q4_0)
    ids = np.array([[1, 9, 0], [3, 3, 2]], np.uint32)
    e = q.embedding(Tensor.from_numpy(ids))
    assert e.shape == (2, 3, 64) and e.dtype is DType.F32
    np.testing.assert_array_equal(np.asarray(e), np.asarray(q.dequantize())[ids])
    jit_e = jax.jit(lambda q, i: q.embedding(i).jax)(q, jnp.asarray(ids))
    np.testing.assert_array_equal(np.asarray(jit_e), np.asarray(e))
    with pytest.raises(errors.Error, match="embedding id 10 is out of range for 10 rows"):
        q.embedding(np.array([10]))
    with pytest.raises(errors.Error, match="unexpected rank"):
        q.reshape((2, 5, 64)).embedding(np.array([0]))


@pytest.mark.parametrize("dt", ["Q4_0", "Q5_0", "Q8_0", "Q4K", "F16", "F32"])
def test_embedding_ids_out_of_range_raise_for_every_weight_layout(dt, rng):
    # Candle's quantized_nn::Embedding dequantises the table and index_selects: a bad id is an error.
    # The packed / blocked layouts clamped it to the last (or first) row, dense ones gave NaN rows.
    from candlejax.nn.quantized import QEmbedding, QLinear

    q = QTensor.quantize(rng.standard_normal((10, 256)).astype(np.float32), GgmlDType[dt])
    m = QMatMul.from_qtensor(q)
    emb = QEmbedding(QLinear.from_qtensor(q))
    ref = np.asarray(q.dequantize())
    np.testing.assert_array_equal(np.asarray(emb.forward(np.array([9, 0, 3]))), ref[[9, 0, 3]])
    for bad in (10, -1):
        with pytest.raises(errors.Error, match=f"embedding id {bad} is out of range for 10 rows"):
            m.embedding(np.array([2, bad]))
        with pytest.raises(errors.Error, match=f"embedding id {bad} is out of range for 10 rows"):
            emb.forward(Tensor.from_numpy(np.array([bad], np.int32)))
    with pytest.raises(errors.UnexpectedDType, match="integer"):
        emb.forward(np.array([1.0], np.float32))
    # under jit ids are clamped, the same for every layout
    got = jax.jit(lambda e, i: e.forward(i).jax)(emb, jnp.asarray([12, -3], jnp.int32))
    np.testing.assert_array_equal(np.asarray(got), ref[[9, 0]])


# --- QMatMul -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", [GgmlDType.Q4_0, GgmlDType.Q4_1, GgmlDType.Q8_0, GgmlDType.Q4K, GgmlDType.Q6K],
                         ids=lambda d: d.name)
def test_qmatmul_matches_dequantize_then_matmul(dt, rng):
    w = rng.standard_normal((48, 256)).astype(np.float32)
    q = QTensor.quantize(w, dt)
    m = QMatMul.from_qtensor(q)
    assert m.is_quantized()
    x = rng.standard_normal((2, 3, 256)).astype(np.float32)
    y = m.forward(Tensor.from_numpy(x))
    assert y.shape == (2, 3, 48) and y.dtype is DType.F32
    wd = np.asarray(q.dequantize()).astype(np.float64)
    ref = x.astype(np.float64) @ wd.T
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4)
    # also close to the unquantised product (quantisation error only)
    assert np.abs(np.asarray(y) - x @ w.T).mean() < 0.1 * np.abs(x @ w.T).mean() + 0.05
    # jitted, with the QMatMul as an argument
    yj = jax.jit(lambda m, x: m(x).jax)(m, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(yj), np.asarray(y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dt", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4K"])
def test_qmatmul_empty_weights(dt):
    # 0 rows or 0 in-features: the block layouts raised Python's ZeroDivisionError from a reshape;
    # the product is numpy's: x (2, 0) @ W (3, 0)ᵀ = zeros (2, 3), and (2, 0) for W (0, in)
    dtype = GgmlDType[dt]
    for (o, i) in ((0, dtype.block_size()), (3, 0), (0, 0)):
        m = QMatMul.from_qtensor(QTensor.quantize(np.ones((o, i), np.float32), dtype))
        x = np.ones((2, i), np.float32)
        ref = x.astype(np.float64) @ np.ones((o, i)).T
        np.testing.assert_array_equal(np.asarray(m.forward(x)), ref)
        np.testing.assert_array_equal(np.asarray(jax.jit(lambda m, x: m.forward(x).jax)(m, x)), ref)


def test_qmatmul_float_weights_are_plain_arrays(rng):
    w = rng.standard_normal((8, 32)).astype(np.float32)
    x = rng.standard_normal((5, 32)).astype(np.float32)
    for dt, store in ((GgmlDType.F32, jnp.float32), (GgmlDType.F16, jnp.float16), (GgmlDType.BF16, jnp.bfloat16)):
        m = QMatMul.from_qtensor(QTensor.quantize(w, dt))
        assert not m.is_quantized() and m.weight.jax.dtype == store
        wq = np.asarray(m.weight.jax).astype(np.float32)
        np.testing.assert_allclose(np.asarray(m.forward(x)), x @ wq.T, rtol=1e-5, atol=1e-5)
    m = QMatMul.from_tensor(Tensor.from_numpy(w))
    np.testing.assert_allclose(np.asarray(m.forward(x)), x @ w.T, rtol=1e-5, atol=1e-5)


def test_qmatmul_keeps_input_dtype_and_checks_shapes(rng):
    q = QTensor.quantize(rng.standard_normal((16, 64)).astype(np.float32), GgmlDType.Q8_0)
    m = QMatMul.from_qtensor(q)
    xb = Tensor.from_numpy(rng.standard_normal((2, 64)).astype(np.float32)).to_dtype(DType.BF16)
    yb = m.forward(xb)
    assert yb.dtype is DType.BF16
    ref = np.asarray(xb).astype(np.float32) @ np.asarray(q.dequantize()).T
    np.testing.assert_allclose(np.asarray(yb).astype(np.float32), ref, rtol=0.05, atol=0.1)
    y16 = m.forward_via_f16(Tensor.from_numpy(np.ones((1, 64), np.float32)))
    assert y16.dtype is DType.F32
    with pytest.raises(errors.ShapeMismatchBinaryOp, match="qmatmul"):
        m.forward(np.ones((2, 32), np.float32))
    with pytest.raises(errors.UnsupportedDTypeForOp):
        m.forward(np.ones((2, 64), np.int32))
    with pytest.raises(errors.Error, match="unexpected rank"):
        QMatMul.from_qtensor(q.reshape((2, 8, 64)))


def test_qmatmul_dequantize_all_env(monkeypatch, rng):
    q = QTensor.quantize(rng.standard_normal((4, 32)).astype(np.float32), GgmlDType.Q4_0)
    monkeypatch.setenv("CANDLE_DEQUANTIZE_ALL", "1")
    m = QMatMul.from_qtensor(q)
    assert not m.is_quantized() and m.weight.dtype is DType.F32
    monkeypatch.setenv("CANDLE_DEQUANTIZE_ALL", "0")
    monkeypatch.setenv("CANDLE_DEQUANTIZE_ALL_F16", "1")
    assert QMatMul.from_qtensor(q).weight.dtype is DType.F16


def test_qmatmul_is_a_pytree_with_packed_weights(rng, monkeypatch):
    monkeypatch.setenv("CANDLEJAX_QMATMUL_PACKED", "1")
    q = QTensor.quantize(rng.standard_normal((32, 64)).astype(np.float32), GgmlDType.Q4_0)
    m = QMatMul.from_qtensor(q)
    leaves = jax.tree_util.tree_leaves(m)
    assert len(leaves) == 1 and leaves[0].dtype == jnp.uint8 and leaves[0].nbytes == 32 * 2 * 18
    ids = m.embedding(np.array([0, 31]))
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(q.dequantize())[[0, 31]])


@pytest.mark.parametrize("dt", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_qmatmul_blocked_layout_is_exact_and_a_pytree(rng, dt, monkeypatch):
    from candlejax.quantized import native
    from candlejax.quantized.blocked import BlockedWeight

    monkeypatch.setattr(native, "available", lambda: False)  # Q4_0/Q4_1 are blocked only without the kernel

    dtype = GgmlDType[dt]
    w = (rng.standard_normal((48, 96)) * 3).astype(np.float32)
    q = QTensor.quantize(w, dtype)
    m = QMatMul.from_qtensor(q)
    assert isinstance(m.weight, BlockedWeight) and m.is_quantized()
    ref_w = dequantize_np(np.asarray(q.raw), dtype, q.shape)
    np.testing.assert_array_equal(np.asarray(m.weight.dequantize()), ref_w)  # bit-identical values
    q_leaf = jax.tree_util.tree_leaves(m)[0]
    assert q_leaf.dtype == (jnp.uint8 if dt in ("Q4_1", "Q5_1") else jnp.int8) and q_leaf.shape == (48, 96)
    assert m.weight.storage_size_in_bytes() <= 1.13 * w.size
    x = rng.standard_normal((2, 3, 96)).astype(np.float32)
    ref = x.astype(np.float64) @ ref_w.astype(np.float64).T
    np.testing.assert_allclose(np.asarray(m.forward(x)), ref, rtol=1e-5, atol=1e-4)
    y = jax.jit(lambda mm, xx: mm.forward(xx).jax)(m, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(m.embedding(np.array([0, 47, 5]))), ref_w[[0, 47, 5]])


@pytest.mark.parametrize("dt", ["Q4_0", "Q5_0"])
def test_blocked_layout_keeps_large_scales_finite(rng, dt, monkeypatch):
    # |values| up to ~4e5: the f16 block scale d = max / -8 (or -16) is finite, but -8 d and -16 d are
    # beyond f16; Candle (and gguf-py) decode (q - 8) * d, finite
    from candlejax.quantized import native
    from candlejax.quantized.blocked import BlockedWeight

    monkeypatch.setattr(native, "available", lambda: False)
    dtype = GgmlDType[dt]
    w = (rng.standard_normal((8, 64)) * 1e5).astype(np.float32)
    q = QTensor.quantize(w, dtype)
    ref_w = gq.dequantize(np.asarray(q.raw), GGMLQuantizationType(dtype.value)).reshape(q.shape)
    assert np.isfinite(ref_w).all()
    m = QMatMul.from_qtensor(q)
    assert isinstance(m.weight, BlockedWeight)
    np.testing.assert_array_equal(np.asarray(m.weight.dequantize()), ref_w)
    np.testing.assert_array_equal(np.asarray(m.embedding(np.array([3, 0]))), ref_w[[3, 0]])
    x = rng.standard_normal((3, 64)).astype(np.float32)
    ref = x.astype(np.float64) @ ref_w.astype(np.float64).T
    np.testing.assert_allclose(np.asarray(m.forward(x)), ref, rtol=1e-5)


def test_qmatmul_large_weight_chunked_path(monkeypatch, rng):
    import candlejax.quantized.qtensor as qt

    monkeypatch.setattr(qt, "CHUNK_THRESHOLD", 1024)  # take the row-chunked path on a small weight
    monkeypatch.setattr(qt, "_CHUNK_ELEMS", 4 * 64)
    assert qt._chunk_rows(48, 64) == (4 if jax.default_backend() == "cpu" else 0)
    w = rng.standard_normal((48, 64)).astype(np.float32)
    q = QTensor.quantize(w, GgmlDType.Q4_1)
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    y = qt._qmatmul.raw(q.raw, jnp.asarray(x), dtype=q.dtype(), shape=q.shape)
    ref = x.astype(np.float64) @ np.asarray(q.dequantize()).astype(np.float64).T
    assert y.shape == (2, 3, 48)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4)
