"""candle-pyo3's Python surface (``import candle``): top-level factories, ``candle.functional``,
``candle.testing``, ``candle.utils``, ``t.nelement`` and ``t.quantize(fmt)``, checked against the
binding itself; Rust Candle's ``Dropout::forward(xs, train)``; PyTorch-style layer constructors."""

import candle
import candle.testing
import numpy as np
import pytest

import candlejax as cj
from candlejax import errors, nn


def _np(t) -> np.ndarray:
    if isinstance(t, cj.Tensor):
        return np.asarray(t, np.float64)
    return np.asarray(t.flatten_all().values(), np.float64).reshape(tuple(t.shape))  # values(): rank <= 3


@pytest.mark.parametrize("fn", ["ones", "zeros"])
def test_factories_take_the_bindings_shapes_and_defaults(fn):
    for args in [(2, 3), ((2, 3),), ((4,),)]:
        ours, theirs = getattr(cj, fn)(*args), getattr(candle, fn)(*args)
        assert ours.shape == tuple(theirs.shape)
        assert ours.dtype.as_str() == "f32"
        np.testing.assert_array_equal(np.asarray(ours), _np(theirs))
    assert cj.ones(2, dtype="u8").dtype == cj.DType.U8
    assert cj.zeros(2, device="cpu").device == cj.Device.Cpu


def test_random_factories_are_f32_in_range():
    u, n = cj.rand(64, 8), cj.randn(3, 5)
    assert u.dtype == cj.DType.F32 and n.dtype == cj.DType.F32 and n.shape == (3, 5)
    a = np.asarray(u)
    assert a.min() >= 0.0 and a.max() < 1.0


def test_tensor_cat_stack():
    assert cj.tensor([1, 2]).dtype.as_str() == candle.tensor([1, 2]).dtype.__str__().lower()
    a, b = np.ones((2, 3), np.float32), np.zeros((2, 1), np.float32)
    ours = cj.cat([cj.tensor(a), cj.tensor(b)], -1)
    theirs = candle.cat([candle.Tensor(a), candle.Tensor(b)], -1)
    np.testing.assert_array_equal(np.asarray(ours), _np(theirs))
    assert cj.stack([cj.tensor(a)] * 3, 0).shape == tuple(candle.stack([candle.Tensor(a)] * 3, 0).shape)


def test_functional_matches_the_binding():
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)
    t, c = cj.tensor(x), candle.Tensor(x[0].tolist()).reshape((1, 3, 6, 6))  # the binding: <= 3 nesting levels
    F, G = cj.functional, candle.functional
    for name in ("gelu", "relu", "silu", "tanh"):
        np.testing.assert_allclose(np.asarray(getattr(F, name)(t)), _np(getattr(G, name)(c)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(F.softmax(t, -1)), _np(G.softmax(c, -1)), rtol=1e-5, atol=1e-7)
    for name in ("max_pool2d", "avg_pool2d"):
        for kw in ({}, {"stride": 2}):  # the binding's stride defaults to 1
            ours, theirs = getattr(F, name)(t, 2, **kw), getattr(G, name)(c, 2, **kw)
            assert ours.shape == tuple(theirs.shape)
            np.testing.assert_allclose(np.asarray(ours), _np(theirs), rtol=1e-6)


def test_testing_asserts():
    cj.testing.assert_equal(cj.ones(2, 2), cj.ones(2, 2))
    cj.testing.assert_almost_equal(cj.ones(3), cj.ones(3) + 1e-7)
    with pytest.raises(AssertionError):
        cj.testing.assert_equal(cj.ones(2), cj.zeros(2))
    with pytest.raises(AssertionError, match="dtype mismatch"):
        cj.testing.assert_equal(cj.ones(2), cj.ones(2, dtype="f64") if cj.x64_enabled() else cj.ones(2, dtype="bf16"))
    cj.testing.assert_equal(cj.ones(2), cj.ones(2, dtype="bf16"), check_dtype=False)
    with pytest.raises(AssertionError, match="shape mismatch"):
        cj.testing.assert_almost_equal(cj.ones(2), cj.ones(3))
    # a NaN equals nothing, as in candle.testing (numpy's helpers alone would let two NaNs pass)
    nan = cj.Tensor([1.0, float("nan")])
    with pytest.raises(AssertionError, match=r"1 NaN value\(s\), first at index \[1\]"):
        cj.testing.assert_equal(nan, nan)
    with pytest.raises(AssertionError):
        cj.testing.assert_almost_equal(nan, nan)
    with pytest.raises(AssertionError, match="NaN"):
        cj.testing.assert_tensor_eq(nan, nan)
    from candle import testing as candle_testing

    for f in (candle_testing.assert_equal, candle_testing.assert_almost_equal):  # the binding agrees
        with pytest.raises(AssertionError):
            f(candle.Tensor([1.0, float("nan")]), candle.Tensor([1.0, float("nan")]))
    inf = cj.Tensor([float("inf"), 1.0])
    cj.testing.assert_equal(inf, inf)
    cj.testing.assert_almost_equal(inf, inf)


def test_utils_facts_and_files(tmp_path):
    u = cj.utils
    assert u.cuda_is_available() is False and u.metal_is_available() is False
    assert u.get_num_threads() >= 1 and isinstance(u.with_avx(), bool)
    x = cj.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    u.save_safetensors(tmp_path / "a.safetensors", {"x": x})
    back = candle.utils.load_safetensors(str(tmp_path / "a.safetensors"))["x"]
    np.testing.assert_array_equal(_np(back), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(u.load_safetensors(tmp_path / "a.safetensors")["x"]), np.asarray(x))

    w = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    u.save_gguf(tmp_path / "q.gguf", {"w": cj.tensor(w).quantize("q8_0")}, {"general.name": "t", "n": 3})
    tensors, meta = candle.utils.load_gguf(str(tmp_path / "q.gguf"))
    assert meta["general.name"] == "t" and tensors["w"].ggml_dtype.lower() == "q8_0"
    ours, our_meta = u.load_gguf(tmp_path / "q.gguf")
    assert our_meta["n"] == 3 and ours["w"].shape == (4, 64)
    np.testing.assert_array_equal(np.asarray(ours["w"].dequantize()), _np(tensors["w"].dequantize()))
    with pytest.raises(FileNotFoundError):  # candle-pyo3: std::fs::File::open(path)?
        u.load_ggml(tmp_path / "old.bin")


@pytest.mark.parametrize("fmt", ["q4_0", "Q4_1", "q5_0", "q8_0", "f16", "f32"])
def test_quantize_by_name_equals_the_binding(fmt):
    a = np.random.default_rng(2).standard_normal((3, 256)).astype(np.float32)
    ours = cj.tensor(a).quantize(fmt)
    theirs = candle.Tensor(a).quantize(fmt)
    np.testing.assert_array_equal(np.asarray(ours.dequantize()), _np(theirs.dequantize()))


def test_quantize_unknown_name_and_nelement():
    with pytest.raises(errors.Msg, match="unknown format 'iq2'"):
        cj.ones(2, 32).quantize("iq2")
    t = cj.ones(2, 3, 4)
    assert t.nelement == candle.ones((2, 3, 4)).nelement == 24


def test_dropout_forward_takes_candles_train_flag():
    d, x = nn.Dropout(0.5), cj.ones(4, 16)
    np.testing.assert_array_equal(np.asarray(d.forward(x, False)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(d.forward(x)), np.asarray(x))
    y = np.asarray(d.forward(x, True, key=0))
    assert set(np.unique(y)) <= {0.0, 2.0} and (y == 0).any()


@pytest.mark.parametrize("build, spelling", [(lambda: nn.Linear(4, 3), "nn.linear(in_dim, out_dim, vb)"),
                                             (lambda: nn.LayerNorm(4), "nn.layer_norm"),
                                             (lambda: nn.Embedding(10, 4), "nn.embedding")])
def test_pytorch_style_layer_constructors_name_the_builder(build, spelling):
    with pytest.raises(errors.Msg, match=spelling.replace("(", r"\(").replace(")", r"\)")):
        build()


def test_more_candle_constructors_and_aliases(tmp_path):
    t = cj.Tensor.rand_f64(0.0, 1.0, (3, 4), cj.DType.F32, cj.Device.Cpu)
    assert t.dtype == cj.DType.F32 and t.shape == (3, 4)
    v = nn.Var.randn_f64(0.0, 1.0, (2,), cj.DType.F32, cj.Device.Cpu)
    assert isinstance(v, nn.Var)
    assert cj.optim.ParamsAdamW.default() == cj.optim.ParamsAdamW()
    model = nn.Linear(nn.Var.zeros((1, 2), cj.DType.F32, cj.Device.Cpu))
    x = cj.ones(4, 2)
    for opt in (cj.optim.SGD.from_slice([model.weight], 0.1),
                cj.optim.AdamW.from_slice([model.weight], cj.optim.ParamsAdamW(lr=0.1))):
        opt.backward_step(lambda m, xs: (m.forward(xs) - 1.0).sqr().sum_all(), model, x)
    assert np.all(np.asarray(model.weight) > 0)  # both moved the bound Var towards the target
    assert cj.optim.SGD.empty(0.1) is not None and cj.optim.AdamW.empty() is not None
    x = cj.ones(2, 3)
    assert x.apply(None) is x  # Candle's Option<&M>: None is the identity
    cj.safetensors.save({"a": x}, tmp_path / "a.safetensors")
    with cj.safetensors.MmapedSafetensors.new(tmp_path / "a.safetensors") as st:
        assert st.load("a", cj.Device.Cpu).shape == (2, 3)


def test_dtype_names_at_the_top_level():
    for name in ("u8", "u32", "i64", "bf16", "f16", "f32", "f64"):
        assert getattr(cj, name) is cj.DType.parse(name)
        assert str(getattr(candle, name)).lower() == name
    assert cj.ones(2, dtype=cj.bf16).dtype == cj.DType.BF16


def test_quantized_layer_norm_and_concat_cache_is_empty(tmp_path):
    from candlejax.quantized import VarBuilder as QVarBuilder

    rng = np.random.default_rng(3)
    w, b = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    cj.utils.save_gguf(tmp_path / "ln.gguf", {"ln.weight": cj.tensor(w), "ln.bias": cj.tensor(b)}, {})
    ln = nn.quantized.layer_norm(8, 1e-5, QVarBuilder.from_gguf(tmp_path / "ln.gguf").pp("ln"))
    x = rng.standard_normal((2, 8)).astype(np.float32)
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(np.asarray(ln.forward(cj.tensor(x))), want, atol=1e-5)
    with pytest.raises(errors.Error, match=r"ln\.weight"):
        nn.quantized.layer_norm(4, 1e-5, QVarBuilder.from_gguf(tmp_path / "ln.gguf").pp("ln"))
    cache = nn.ConcatKvCache.new(2)
    assert cache.is_empty()
    _, cache = cache.append(cj.ones(1, 1, 2, 4), cj.ones(1, 1, 2, 4))
    assert not cache.is_empty()


def test_rust_accessor_calls_and_the_bindings_properties_agree():
    """Rust Candle calls ``t.shape()``, ``t.rank()``, ``t.dtype()``, ``t.device()``; candle-pyo3 reads
    them as properties. Both spellings give the same answers here."""
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    ours, theirs = cj.tensor(x), candle.tensor(x)
    assert ours.shape == tuple(theirs.shape) == (2, 3, 4)
    assert ours.rank == theirs.rank == 3
    assert ours.shape().dims3() == (2, 3, 4) and ours.shape().elem_count() == 24
    assert ours.shape() == (2, 3, 4) and ours.shape().rank() == 3
    assert ours.shape == [2, 3, 4] and ours.dims() == [2, 3, 4] and ours.shape != [2, 3]  # as torch.Size
    assert ours.shape.elem_count() == 24 and ours.shape.dims3() == (2, 3, 4) and ours.shape.rank() == 3
    assert ours.rank() == 3 and ours.rank + 1 == 4
    assert ours.dtype() is ours.dtype is cj.DType.F32
    assert ours.device() == ours.device == cj.Device.Cpu
    q = cj.tensor(np.ones((4, 32), np.float32)).quantize("q4_0")
    assert q.shape() == (4, 32) and q.rank() == 2 and q.dtype() is q.ggml_dtype
    # the property stays a plain tuple / int to everything else
    assert np.zeros(ours.shape).shape == (2, 3, 4) and cj.zeros(ours.shape).shape == (2, 3, 4)
    assert ours.reshape(ours.shape[::-1]).shape == (4, 3, 2)
    import jax

    assert jax.tree.leaves((ours.shape, ours.rank)) == [2, 3, 4, 3]
    assert int(jax.jit(lambda s, r: s[0] * s[1] + r)(ours.shape, ours.rank)) == 9
    assert jax.jit(lambda t: t.reshape(t.shape[::-1]))(ours).shape == (4, 3, 2)


def test_modules_keep_callable_values_in_their_repr():
    class Holder(nn.Module):
        def __init__(self, t):
            self.dtype, self.dims, self.device = t.dtype, t.shape, t.device

    assert repr(Holder(cj.ones((2, 3)))) == "Holder(dtype=DType.F32, dims=(2, 3), device=Cpu)"


def test_from_vec_of_a_shaped_buffer_names_the_reshape():
    """Candle's whisper example sizes ``from_vec`` with ``mel.len()``, the element count of a flat
    Vec; ``len()`` of a Tensor is its first dim, so the port raises naming the reshape."""
    mel = cj.zeros((80, 30))
    with pytest.raises(errors.ShapeMismatch, match=r"len\(\) is its first dim \(80\).*t.reshape\(\(1, 80, -1\)\)"):
        cj.Tensor.from_vec(mel, (1, 80, len(mel) // 80), cj.Device.Cpu)
    with pytest.raises(errors.ShapeMismatch, match=r"array of shape \(2, 3\)"):
        cj.Tensor.from_slice(np.zeros((2, 3), np.float32), (2, 2), cj.Device.Cpu)
    with pytest.raises(errors.ShapeMismatch) as e:  # a flat buffer keeps Candle's wording alone
        cj.Tensor.from_vec([1.0, 2.0, 3.0], (2, 2), cj.Device.Cpu)
    assert str(e.value) == "Shape mismatch, got buffer of size 3 which is compatible with shape [2, 2]"
    assert cj.Tensor.from_vec(mel.flatten_all(), (1, 80, -1), cj.Device.Cpu).shape == (1, 80, 30)


def test_candle_nn_paths_and_config_defaults():
    """``candle_nn::{AdamW, ParamsAdamW, SGD, Optimizer}``, ``candle_nn::rotary_emb::rope*`` and
    Rust's ``Default`` on the layer configs."""
    assert nn.AdamW is cj.optim.AdamW and nn.SGD is cj.optim.SGD and nn.ParamsAdamW is cj.optim.ParamsAdamW
    vm = nn.VarMap()
    vb = nn.VarBuilder.from_varmap(vm, cj.DType.F32, cj.Device.Cpu)
    layer = nn.linear(3, 2, vb.pp("fc"))
    opt = nn.AdamW.new(vm.all_vars(), nn.ParamsAdamW.default())
    assert isinstance(opt, nn.Optimizer) and layer.weight.shape == (2, 3)
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 8)).astype(np.float32)
    cos = np.cos(np.arange(12, dtype=np.float32).reshape(3, 4))
    sin = np.sin(np.arange(12, dtype=np.float32).reshape(3, 4))
    for name in ("rope", "rope_i", "rope_thd"):
        np.testing.assert_array_equal(np.asarray(getattr(nn.rotary_emb, name)(x, cos, sin)),
                                      np.asarray(getattr(nn.ops, name)(x, cos, sin)))  # fmt: skip
    for cfg in (nn.Conv1dConfig, nn.Conv2dConfig, nn.ConvTranspose1dConfig, nn.ConvTranspose2dConfig,
                nn.LayerNormConfig, nn.BatchNormConfig, nn.LSTMConfig, nn.GRUConfig):  # fmt: skip
        assert cfg.default() == cfg()
    conv = nn.conv2d(2, 4, 3, nn.Conv2dConfig.default(), vb.pp("conv"))
    assert conv.forward(cj.zeros((1, 2, 5, 5))).shape == (1, 4, 3, 3)
    bn = nn.batch_norm(4, nn.BatchNormConfig.default(), vb.pp("bn"))
    assert bn.forward_t(cj.zeros((2, 4, 3, 3)), False).shape == (2, 4, 3, 3)


def test_qtensor_matmul_t_equals_the_binding():
    w = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    x = np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32)
    ours = cj.tensor(w).quantize("q8_0").matmul_t(cj.tensor(x))
    theirs = candle.tensor(w).quantize("q8_0").matmul_t(candle.tensor(x))
    assert ours.shape == tuple(theirs.shape) == (3, 4)
    # the binding quantises x to Q8 for its integer dot product; ours keeps x in f32
    np.testing.assert_allclose(np.asarray(ours), _np(theirs), rtol=0.02, atol=0.1)
    np.testing.assert_allclose(np.asarray(ours), x @ np.asarray(cj.tensor(w).quantize("q8_0").dequantize()).T,
                               rtol=1e-5, atol=1e-4)  # fmt: skip


def test_safetensors_bytes_var_builder_and_top_level_var(tmp_path):
    """``VarBuilder::from_slice_safetensors(&data, dtype, &dev)`` / ``from_buffered_safetensors`` and
    ``candle::Var`` at the top level."""
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    cj.safetensors.save({"fc.weight": cj.tensor(w)}, tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    for build in (nn.VarBuilder.from_slice_safetensors, nn.VarBuilder.from_buffered_safetensors):
        vb = build(data, cj.DType.F16, cj.Device.Cpu)
        got = vb.pp("fc").get((2, 3), "weight")
        assert got.dtype == cj.DType.F16 and np.asarray(got, np.float32).tolist() == w.tolist()
        with pytest.raises(errors.Error, match=r"cannot find tensor fc\.bias"):
            vb.pp("fc").get(2, "bias")
    assert cj.Var is nn.Var and cj.Var.from_tensor(cj.tensor(w)).as_tensor().shape == (2, 3)


@pytest.mark.parametrize("dtype", ["u8", "u32", "i32", "f16", "bf16", "f32"])
def test_from_raw_buffer_reads_little_endian_values(dtype):
    dt = cj.DType.parse(dtype)
    want = (np.arange(12) % 7 - (0 if dt.as_str().startswith("u") else 3)).astype(dt.np).reshape(3, 4)
    got = cj.Tensor.from_raw_buffer(want.astype(np.dtype(dt.np).newbyteorder("<")).tobytes(), dt, (3, 4), cj.Device.Cpu)
    assert got.dtype == dt and got.shape == (3, 4)
    np.testing.assert_array_equal(np.asarray(got).astype(np.float64), want.astype(np.float64))
    with pytest.raises(errors.Error, match=r"do not hold .*needs 12 x"):
        cj.Tensor.from_raw_buffer(want.tobytes()[:-1], dt, (3, 4), cj.Device.Cpu)


def test_test_utils_round_as_candle_and_compare_with_literals():
    """``candle::test_utils::to_vecN_round``: f32 rounding, halves away from zero; the values equal
    the decimal literals of a ported ``assert_eq!``."""
    x = np.array([0.59999996, -1.25, 2.5, 0.49999997, -0.5, 1e-5, 123.45678], np.float32)
    t = cj.tensor(x)
    assert cj.testing.to_vec1_round(t, 4) == [0.6, -1.25, 2.5, 0.5, -0.5, 0.0, 123.4568]
    assert cj.testing.to_vec1_round(t, 0) == [1.0, -1.0, 3.0, 0.0, -1.0, 0.0, 123.0]
    assert cj.testing.to_vec2_round(t.reshape((1, 7)), 1) == [[0.6, -1.3, 2.5, 0.5, -0.5, 0.0, 123.5]]
    assert cj.testing.to_vec3_round(t.reshape((1, 1, 7)), 2)[0][0][1] == -1.25
    assert cj.testing.to_vec0_round(cj.tensor(np.float32(3.14159)), 2) == 3.14
    b = np.float32(10) ** 3  # Candle's formula, in f32
    want = [float(str(np.float32(np.sign(v) * np.floor(np.abs(v * b) + np.float32(0.5)) / b))) for v in x[:3]]
    assert cj.testing.to_vec1_round(cj.tensor(x[:3]), 3) == want
    cj.testing.assert_tensor_eq(t, cj.tensor(x.copy()))
    with pytest.raises(AssertionError):
        cj.testing.assert_tensor_eq(t, t + 1.0)
    with pytest.raises(AssertionError, match="rank-2"):
        cj.testing.to_vec2_round(t, 2)


def test_quantized_nn_constructors(tmp_path):
    """candle-transformers' ``quantized_nn``: ``Linear::from_arc / from_weights``, ``Embedding::new``,
    ``RmsNorm::new / from_qtensor``, ``layer_norm_no_bias``; ``Func::new`` / ``FuncT::new``."""
    from candlejax.quantized import QMatMul, QTensor
    from candlejax.quantized import VarBuilder as QVarBuilder

    rng = np.random.default_rng(4)
    w = rng.standard_normal((4, 32)).astype(np.float32)
    g = (1.0 + 0.1 * rng.standard_normal(32)).astype(np.float32)
    cj.utils.save_gguf(tmp_path / "m.gguf", {"emb.weight": cj.tensor(w).quantize("q8_0"), "n.weight": cj.tensor(g)}, {})
    vb = QVarBuilder.from_gguf(tmp_path / "m.gguf")
    q = cj.tensor(w).quantize("q8_0")
    x = rng.standard_normal((2, 32)).astype(np.float32)
    want = np.asarray(q.matmul_t(cj.tensor(x)))
    np.testing.assert_array_equal(np.asarray(nn.quantized.QLinear.from_arc(q).forward(cj.tensor(x))), want)
    lin = nn.quantized.QLinear.from_weights(QMatMul.from_qtensor(q), cj.tensor(np.ones(4, np.float32)))
    np.testing.assert_allclose(np.asarray(lin.forward(cj.tensor(x))), want + 1.0, rtol=1e-6, atol=1e-6)
    emb = nn.quantized.QEmbedding.new(4, 32, vb.pp("emb"))
    np.testing.assert_array_equal(np.asarray(emb.forward(cj.tensor([2, 0]))), np.asarray(q.dequantize())[[2, 0]])
    rms = np.asarray(x) / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * g
    for norm in (nn.quantized.QRmsNorm.new(32, 1e-6, vb.pp("n")),
                 nn.quantized.QRmsNorm.from_qtensor(QTensor.quantize(cj.tensor(g), "f32"), 1e-6)):  # fmt: skip
        np.testing.assert_allclose(np.asarray(norm.forward(cj.tensor(x))), rms, rtol=1e-5, atol=1e-5)
    ln = nn.quantized.layer_norm_no_bias(32, 1e-5, vb.pp("n"))
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(ln.forward(cj.tensor(x))), (x - mu) / np.sqrt(var + 1e-5) * g, atol=1e-5)
    assert nn.Func.new(lambda t: t * 2.0).forward(cj.ones(2)).to_vec1() == [2.0, 2.0]
    assert nn.FuncT.new(lambda t, train: t * (2.0 if train else 1.0)).forward_t(cj.ones(1), True).to_vec1() == [2.0]


def test_pyo3_shape_errors_are_the_bindings_exception_types():
    # candle-pyo3/tests/native/test_shape.py, run against candlejax and the binding
    for lib in (cj, candle):
        a = lib.rand((10, 20))
        assert tuple(a.shape) == (10, 20)
        assert tuple(lib.rand(10, 20).shape) == (10, 20)
        c = lib.rand(10, 20)
        assert tuple(c.reshape((1, -1)).shape) == (1, 200)
        assert tuple(c.reshape(-1, 1).shape) == (200, 1)
        cases = [
            (OverflowError, lambda lib=lib: lib.rand((10, 20, -1))),
            (OverflowError, lambda lib=lib: lib.rand(-1, 20)),
            (TypeError, lambda lib=lib: lib.rand("foo", True)),
            (TypeError, lambda c=c: c.reshape(1, "foo")),
            (ValueError, lambda c=c: c.reshape(1, -2)),
            (ValueError, lambda c=c: c.reshape((-2, 1))),
            (ValueError, lambda c=c: c.reshape((0, 1))),
            (ValueError, lambda c=c: c.reshape((1, -1, -1))),
        ]
        for kind, call in cases:
            with pytest.raises(kind):
                call()
    with pytest.raises(errors.Error, match="negative dimension"):
        cj.rand(10, 20).reshape(1, -2)


def test_pyo3_quantized_tensor_names_its_type_as_the_binding_does():
    t = cj.randn((16, 256))
    for fmt in ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2k", "q3k", "q4k", "q5k", "q8k"]:
        for spelled in (fmt.upper(), fmt.lower()):
            q = t.quantize(spelled)
            assert q.ggml_dtype.lower() == fmt
            assert q.ggml_dtype.name == candle.randn((16, 256)).quantize(spelled).ggml_dtype
            assert q.shape == t.shape


def test_pyo3_ggml_dtype_equals_the_bindings_string():
    # candle-pyo3's QTensor.ggml_dtype is a str ("Q4_0", "Q4K"): ported comparisons and dict lookups hold
    t = cj.randn((2, 256))
    for fmt in ["q4_0", "q8_0", "q4k", "q6k", "f16", "f32"]:
        theirs = candle.randn((2, 256)).quantize(fmt).ggml_dtype
        ours = t.quantize(fmt).ggml_dtype
        assert ours == theirs and theirs == ours and not ours != theirs
        assert {theirs: 1}.get(ours) == 1 and ours in {theirs}
        assert ours != theirs.lower() and ours != "Q5_0"
    assert cj.quantized.GgmlDType.Q4K == cj.quantized.GgmlDType.Q4_K  # both spellings, one member


def test_pyo3_keyword_argument_names():
    # the binding's parameter names, so keyword calls port: t.gather(index=..., dim=...), ...
    x = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    calls = [
        lambda m, t: t.index_select(rhs=m.Tensor([2, 0]), dim=1),
        lambda m, t: t.gather(index=m.Tensor([[2], [0]]), dim=1),
        lambda m, t: t.powf(p=2.0),
        lambda m, t: t.flatten_from(dim=0),
        lambda m, t: t.flatten_to(dim=1),
        lambda m, t: t.get(index=1),
        lambda m, t: t.narrow(dim=1, start=1, len=2),
        lambda m, t: t.transpose(dim1=0, dim2=1),
        lambda m, t: t.sum_keepdim(dims=1),
        lambda m, t: t.matmul(rhs=t.t()),
        lambda m, t: m.Tensor([[1.0] * 32]).quantize(quantized_dtype="q8_0").dequantize(),
    ]
    for call in calls:
        ours, theirs = call(cj, cj.Tensor(x)), call(candle, candle.Tensor(x))
        np.testing.assert_array_equal(np.asarray(ours), _np(theirs))


def test_pyo3_to_rejects_conflicting_and_missing_arguments_as_the_binding():
    # candle-pyo3/src/lib.rs PyTensor::to: a second dtype / device / tensor is a ValueError, as is a
    # tensor with a dtype or device; no target is a TypeError; an argument of another type a TypeError
    cases = [
        (ValueError, lambda m, t: t.to(m.f16, dtype=m.bf16)),
        (ValueError, lambda m, t: t.to(m.f16, m.f16)),
        (ValueError, lambda m, t: t.to("cpu", device="cpu")),
        (ValueError, lambda m, t: t.to(m.Tensor([1.0]), other=m.Tensor([1.0]))),
        (ValueError, lambda m, t: t.to(m.Tensor([1.0]), dtype=m.f16)),
        (ValueError, lambda m, t: t.to(m.Tensor([1.0]), "cpu")),
        (TypeError, lambda m, t: t.to()),
        (TypeError, lambda m, t: t.to("not a dtype")),
        (TypeError, lambda m, t: t.to(m.f16, "not a device")),
        (TypeError, lambda m, t: t.to(2)),
    ]
    for kind, call in cases:
        for m in (candle, cj):
            with pytest.raises(kind):
                call(m, m.Tensor([1.0, 2.0]))
    with pytest.raises(errors.Error, match="multiple dtypes"):
        cj.Tensor([1.0]).to(cj.f16, dtype=cj.bf16)
    for call in (lambda m, t: t.to(m.f16), lambda m, t: t.to(dtype=m.bf16), lambda m, t: t.to("cpu", m.f16),
                 lambda m, t: t.to(other=m.Tensor([1.0]).to_dtype(m.f16)), lambda m, t: t.to(device="cpu")):
        ours, theirs = call(cj, cj.Tensor([1.0, 2.0])), call(candle, candle.Tensor([1.0, 2.0]))
        assert ours.dtype.as_str() == str(theirs.dtype).lower()
        assert ours.values() == theirs.values()


@pytest.mark.parametrize("name", ["gelu", "relu", "silu", "tanh", "softmax", "max_pool2d", "avg_pool2d"])
def test_functional_names_a_non_tensor_argument(name):
    # the binding: TypeError "argument 'tensor': 'NoneType' object cannot be converted to 'Tensor'"
    extra = {"softmax": (0,), "max_pool2d": (1,), "avg_pool2d": (1,)}.get(name, ())
    with pytest.raises(TypeError):
        getattr(candle.functional, name)(None, *extra)
    with pytest.raises(errors.Error, match="NoneType"):
        getattr(cj.functional, name)(None, *extra)
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) / 8 - 1  # arrays are taken, as by softmax
    want = getattr(cj.functional, name)(cj.tensor(x), *extra)
    np.testing.assert_array_equal(np.asarray(getattr(cj.functional, name)(x, *extra)), np.asarray(want))
    theirs = getattr(candle.functional, name)(candle.Tensor(x.reshape(-1).tolist()).reshape((1, 1, 4, 4)), *extra)
    np.testing.assert_allclose(np.asarray(want), _np(theirs), rtol=1e-5, atol=1e-6)


def test_save_gguf_names_tensors_or_metadata_that_are_not_a_dict(tmp_path):
    # candle-pyo3's save_gguf: ValueError "expected a dict" for either argument
    q = {"w": cj.ones((1, 32)).quantize("q8_0")}
    for tensors, metadata in [(q, [1]), ([3], {}), (q, 5), (q, [("a", 1, 2)])]:
        with pytest.raises(errors.Gguf, match="pairs"):
            cj.utils.save_gguf(tmp_path / "x.gguf", tensors, metadata)
    with pytest.raises(ValueError, match="expected a dict"):
        candle.utils.save_gguf(str(tmp_path / "y.gguf"), {}, [1])
    assert not (tmp_path / "x.gguf").exists()


def test_testing_check_layout_false_compares_broadcast_values():
    # candle-pyo3's candle.testing: check_layout=False skips the shape check and compares
    # actual - expected, which broadcasts
    for m, t in ((candle, candle.testing), (cj, cj.testing)):
        t.assert_equal(m.Tensor([[1.0, 1.0]]), m.Tensor([1.0, 1.0]), check_layout=False)
        t.assert_almost_equal(m.Tensor([[1.0, 1.0]]), m.Tensor([1.0, 1.0 + 1e-7]), check_layout=False)
        with pytest.raises(AssertionError):
            t.assert_equal(m.Tensor([[1.0, 2.0]]), m.Tensor([1.0, 1.0]), check_layout=False)
        with pytest.raises(AssertionError):
            t.assert_equal(m.Tensor([[1.0, 1.0]]), m.Tensor([1.0, 1.0]))
    with pytest.raises(AssertionError, match="broadcast"):
        cj.testing.assert_equal(cj.Tensor([[1.0, 2.0]]), cj.Tensor([1.0, 1.0, 1.0]), check_layout=False)


def test_an_unknown_dtype_name_is_a_type_error_as_in_the_binding():
    # candle-pyo3's PyDType::from_pyobject: TypeError "invalid dtype 'foo'"
    calls = [
        lambda m: m.Tensor([1.0]).to_dtype("foo"),
        lambda m: m.ones((2,), dtype="foo"),
        lambda m: m.zeros((2,), dtype="foo"),
        lambda m: m.Tensor([1.0]).to_dtype(3),
    ]
    for call in calls:
        for m in (candle, cj):
            with pytest.raises(TypeError):
                call(m)
        with pytest.raises(errors.Error):
            call(cj)
    with pytest.raises(TypeError, match="foo"):
        cj.Tensor([1.0]).to(dtype="foo")
    assert cj.DType.parse(" BF16 ") == cj.DType.BF16


def test_a_device_finds_the_bindings_device_strings_in_dicts_and_sets():
    # candle-pyo3's t.device is the str "cpu" / "cuda": ported code keys dicts and sets by it
    for m in (candle, cj):
        d = m.Tensor([1.0]).device
        assert d == "cpu" and {"cpu": 1, "cuda": 2}[d] == 1 and d in {"cpu"}
        assert {d: 1}.get("cpu") == 1
    assert hash(cj.Device.Cpu) == hash("cpu") and cj.Device.Cpu != "cuda"


def test_tensor_from_a_range_as_the_binding():
    # candle-pyo3 extracts any Python sequence: Tensor(range(3)) is U32 [0, 1, 2]
    makes = (lambda m: m.Tensor(range(3)), lambda m: m.tensor(range(1, 4)), lambda m: m.Tensor([range(2), range(2)]))
    for make in makes:
        ours, theirs = make(cj), make(candle)
        assert ours.dtype.as_str() == str(theirs.dtype).lower() == "u32"
        assert ours.values() == theirs.values()


def test_module_traits_at_the_crate_root():
    # candle-core/src/lib.rs: `candle::Module` (blanket impls for closures and for Option<&M>, None being
    # the identity) and `candle::ModuleT` (blanket impl for every Module, ignoring `train`)
    assert cj.Module is nn.Module and cj.ModuleT is nn.ModuleT

    class Double(cj.Module):
        def forward(self, xs):
            return xs * 2.0

    x = cj.Tensor.new([1.0, -2.0])
    assert x.apply(Double()).to_vec1() == [2.0, -4.0]
    for train in (True, False):
        assert x.apply_t(Double(), train).to_vec1() == [2.0, -4.0]
        assert x.apply_t(lambda t: t.relu(), train).to_vec1() == [1.0, 0.0]  # a closure is a ModuleT
        assert x.apply_t(None, train) is x  # so is None (Option<&M>)
    # a function (xs, train) keeps working
    assert x.apply_t(lambda t, train: t * (3.0 if train else 1.0), True).to_vec1() == [3.0, -6.0]
    assert x.apply_t(lambda t, *, scale=2.0: t * scale, False).to_vec1() == [2.0, -4.0]


def test_load_ggml_equals_the_binding(tmp_path):
    # candle-pyo3/src/lib.rs load_ggml: ({name: QTensor}, the seven hparams by name, the vocab's tokens
    # decoded with String::from_utf8_lossy)
    from tests.unit.test_ggml_file import _q8_0, ggjt_bytes

    w = np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)
    tensors = [("w", 8, (2, 32), _q8_0(w)), ("b", 0, (3,), np.float32([1, 2, 3]).tobytes()),
               ("h", 1, (2,), np.float16([1, -2]).tobytes())]  # fmt: skip
    vocab = ((b"a", 0.5), (b"\xff\xfeb", -1.0), (b"\xe2\x96\x81x", 2.0), (b"\xe2\x96", 0), (b"\xed\xa0\x80", 0))
    path = tmp_path / "m.bin"
    path.write_bytes(ggjt_bytes(tensors, vocab=vocab, hparams=(5, 32, 256, 4, 1, 8, 7)))
    want_t, want_h, want_v = candle.utils.load_ggml(str(path))
    got_t, got_h, got_v = cj.utils.load_ggml(path)
    assert type(got_t) is dict and type(got_h) is dict and type(got_v) is list
    assert got_h == want_h and list(got_h) == list(want_h) and got_h["ftype"] == 7
    assert got_v == want_v == ["a", "\ufffd\ufffdb", "\u2581x", "\ufffd", "\ufffd" * 3]
    assert sorted(got_t) == sorted(want_t)
    for name, q in got_t.items():
        assert isinstance(q, cj.QTensor)
        assert tuple(q.shape) == tuple(want_t[name].shape)
        assert q.ggml_dtype.upper() == str(want_t[name].ggml_dtype).upper()
        np.testing.assert_array_equal(np.asarray(q.dequantize()), _np(want_t[name].dequantize()))
    assert cj.utils.load_ggml(str(path), device="cpu")[0]["b"].device.is_cpu()


def test_save_gguf_refuses_none_as_the_binding_and_writes_nothing(tmp_path):
    # candle-pyo3's save_gguf: tensors.cast_bound::<PyDict>() else ValueError "expected a dict" (for
    # metadata too); candlejax raises ArgumentType (a ValueError and a TypeError) naming the argument
    with pytest.raises(ValueError, match="expected a dict"):
        candle.utils.save_gguf(str(tmp_path / "c.gguf"), None, None)
    q = {"w": cj.ones((1, 32)).quantize("q8_0")}
    for tensors, metadata, which in [(None, None, "tensors"), (None, {}, "tensors"), (q, None, "metadata")]:
        with pytest.raises(errors.ArgumentType, match=f"save_gguf: {which}.*None"):
            cj.utils.save_gguf(tmp_path / "x.gguf", tensors, metadata)
        with pytest.raises(TypeError):
            cj.utils.save_gguf(tmp_path / "x.gguf", tensors, metadata)
    assert list(tmp_path.iterdir()) == []


def test_dtype_constructor_raises_the_parse_error_for_a_bad_name():
    # candle-pyo3's DType has no constructor (TypeError); candlejax's DType("f32") is the enum lookup and a
    # bad name raises what DType.parse raises (ArgumentType: a ValueError and a TypeError)
    import pickle

    with pytest.raises(TypeError):
        candle.DType("f32")
    assert cj.DType("f32") is cj.DType.F32 and cj.DType("BF16") is cj.DType.BF16
    for bad in ("x", "float32", 3, None):
        with pytest.raises(errors.ArgumentType, match="as a dtype"):
            cj.DType(bad)
        with pytest.raises(ValueError):
            cj.DType(bad)
    with pytest.raises(errors.ArgumentType, match="cannot parse 'x' as a dtype"):
        cj.DType.parse("x")
    assert pickle.loads(pickle.dumps(cj.DType.F16)) is cj.DType.F16
    assert cj.DType["F32"] is cj.DType.F32 and len(list(cj.DType)) == 10
