"""Zero-size tensors (a dimension of length 0): creation, printing, ops, reductions, layers, files.

References: candle-pyo3 (``import candle``) for Candle's semantics, numpy / torch CPU for values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import candlejax as cj
from candlejax import Device, DType, Tensor, errors, nn

candle = pytest.importorskip("candle")

CPU = Device.Cpu


# --- creation and printing ------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0,), (2, 0), (0, 3), (2, 0, 3)])
def test_creation_and_str_match_candle(shape):
    for make, cmake in ((cj.zeros, candle.zeros), (cj.ones, candle.ones)):
        t, c = make(shape), cmake(shape)
        assert t.shape == c.shape == shape
        assert str(t) == str(c)
        assert t.numpy().tolist() == c.values()
    assert Tensor.rand(0.0, 1.0, shape, CPU).shape == shape
    assert Tensor.randn(0.0, 1.0, shape, CPU).shape == shape


def test_empty_ranges_and_lists():
    assert Tensor.arange(3, 3, CPU).shape == (0,)
    assert Tensor.arange_step(0.0, 1.0, -0.5, CPU).shape == (0,)
    t = Tensor.new([], CPU)
    assert t.shape == (0,) and t.to_vec1() == []
    assert cj.zeros((2, 0)).to_vec2() == [[], []]
    assert cj.zeros((2, 0, 3)).to_vec3() == [[], []]


# --- reductions -----------------------------------------------------------------------------------
def test_sum_mean_over_empty_dim_match_candle():
    t, c = cj.zeros((2, 0, 3)), candle.zeros((2, 0, 3))
    assert t.sum_keepdim(1).numpy().tolist() == c.sum_keepdim(1).values()
    assert t.sum_all().to_scalar() == c.sum_all().values() == 0.0
    assert np.isnan(t.mean_all().to_scalar()) and np.isnan(c.mean_all().values())


@pytest.mark.parametrize("op", ["max_keepdim", "min_keepdim", "argmax_keepdim", "argmin_keepdim"])
def test_max_min_over_empty_dim_raise_as_candle(op):
    with pytest.raises(ValueError, match="EmptyTensor"):
        getattr(candle.zeros((2, 0, 3)), op)(1)
    with pytest.raises(errors.EmptyTensor, match="empty tensor for reduce"):
        getattr(cj.zeros((2, 0, 3)), op)(1)


@pytest.mark.filterwarnings("ignore:.*degrees of freedom:UserWarning")
def test_var_std_over_empty_dim_are_nan_as_torch():
    t, tt = cj.zeros((2, 0)), torch.zeros(2, 0)
    for got, want in (
        (t.var_keepdim(1), tt.var(1, keepdim=True)),
        (t.var(1), tt.var(1)),
        (t.std(1), tt.std(1)),
        (cj.zeros((0,)).var(), torch.zeros(0).var()),
        (cj.zeros((0,)).std(), torch.zeros(0).std()),
    ):
        assert got.shape == tuple(want.shape)
        np.testing.assert_array_equal(got.numpy(), want.numpy())  # NaN == NaN here
    # non-empty dims are unchanged
    x = np.array([[1.0, 2.0, 4.0], [0.5, 0.5, 3.0]], np.float32)
    np.testing.assert_allclose(Tensor.new(x, CPU).var(1).numpy(), x.astype(np.float64).var(1, ddof=1), rtol=1e-6)
    np.testing.assert_allclose(Tensor.new(x, CPU).std(1).numpy(), x.astype(np.float64).std(1, ddof=1), rtol=1e-6)


# --- elementwise, matmul, movement ----------------------------------------------------------------
def test_matmul_with_empty_contraction_is_zeros_as_candle():
    got = cj.zeros((2, 0)).matmul(cj.ones((0, 3)))
    assert got.numpy().tolist() == candle.zeros((2, 0)).matmul(candle.ones((0, 3))).values()
    assert cj.zeros((0, 2)).matmul(cj.ones((2, 3))).shape == (0, 3)


def test_movement_on_empty_match_candle():
    a, e = cj.ones((2, 3)), cj.zeros((2, 0))
    ca, ce = candle.ones((2, 3)), candle.zeros((2, 0))
    assert Tensor.cat([a, e, a], 1).shape == candle.cat([ca, ce, ca], 1).shape
    assert Tensor.stack([cj.zeros((0, 3))] * 2, 2).shape == candle.stack([candle.zeros((0, 3))] * 2, 2).shape
    assert cj.ones((3, 4)).narrow(1, 2, 0).shape == candle.ones((3, 4)).narrow(1, 2, 0).shape
    ids = Tensor.new(np.zeros((0,), np.uint32), CPU)
    cids = candle.tensor([]).to_dtype(candle.u32)
    assert cj.ones((3, 4)).index_select(ids, 0).shape == candle.ones((3, 4)).index_select(cids, 0).shape
    assert cj.zeros((2, 0, 3)).flatten_all().shape == (0,)
    assert cj.zeros((1, 0)).squeeze(0).shape == (0,)
    assert cj.zeros((2, 0, 3)).transpose(0, 2).shape == (3, 0, 2)


# --- nn ops and layers ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 2, 0, 8), (0, 2, 3, 8)])
@pytest.mark.parametrize("name", ["rope", "rope_i"])
def test_rope_on_empty_input_is_empty(name, shape):
    t = shape[2]
    cos, sin = cj.ones((t, 4)), cj.zeros((t, 4))
    x = cj.zeros(shape)
    out = getattr(nn.ops, name)(x, cos, sin)
    assert out.shape == shape
    assert getattr(nn.ops, f"{name}_slow")(x, cos, sin).shape == shape


def test_rope_i_unchanged_on_non_empty_input():
    rng = np.random.default_rng(0)
    x = Tensor.new(rng.standard_normal((1, 2, 3, 8)).astype(np.float32), CPU)
    cos = Tensor.new(rng.standard_normal((3, 4)).astype(np.float32), CPU)
    sin = Tensor.new(rng.standard_normal((3, 4)).astype(np.float32), CPU)
    np.testing.assert_allclose(nn.ops.rope_i(x, cos, sin).numpy(), nn.ops.rope_i_slow(x, cos, sin).numpy(), rtol=1e-5)


@pytest.mark.parametrize("shape", [(0, 4, 5), (0, 4, 2, 3), (1, 4, 0)])
def test_group_norm_on_empty_input_matches_torch(shape):
    w = np.linspace(0.5, 2.0, 4).astype(np.float32)
    b = np.linspace(-1.0, 1.0, 4).astype(np.float32)
    gn = nn.GroupNorm(Tensor.new(w, CPU), Tensor.new(b, CPU), 4, 2, 1e-5)
    ref = torch.nn.GroupNorm(2, 4)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(w))
        ref.bias.copy_(torch.from_numpy(b))
        want = ref(torch.zeros(shape))
    got = gn.forward(cj.zeros(shape))
    assert got.shape == tuple(want.shape)


def test_group_norm_unchanged_on_non_empty_input():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 3)).astype(np.float32)
    gn = nn.GroupNorm(cj.ones((4,)), cj.zeros((4,)), 4, 2, 1e-5)
    want = torch.nn.functional.group_norm(torch.from_numpy(x), 2, eps=1e-5).numpy()
    np.testing.assert_allclose(gn.forward(Tensor.new(x, CPU)).numpy(), want, rtol=1e-4, atol=1e-5)


def test_layers_with_batch_zero():
    assert nn.Linear(cj.ones((4, 3)), cj.ones((4,))).forward(cj.zeros((0, 3))).shape == (0, 4)
    ids = Tensor.new(np.zeros((2, 0), np.uint32), CPU)
    assert nn.Embedding(cj.ones((5, 3)), 3).forward(ids).shape == (2, 0, 3)
    assert nn.LayerNorm(cj.ones((3,)), cj.zeros((3,)), 1e-5).forward(cj.zeros((0, 3))).shape == (0, 3)
    assert nn.RmsNorm(cj.ones((3,)), 1e-5).forward(cj.zeros((0, 3))).shape == (0, 3)
    assert cj.zeros((0, 2, 5, 5)).conv2d(cj.ones((3, 2, 3, 3))).shape == (0, 3, 3, 3)
    for name in ("softmax", "log_softmax"):
        assert getattr(nn.ops, name)(cj.zeros((2, 0)), 1).shape == (2, 0)


# --- models with an empty prompt ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llama():
    from candlejax.models import llama

    cfg = llama.Config(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)  # fmt: skip
    return llama.Llama.load(nn.VarBuilder.from_varmap(nn.VarMap(), DType.F32, CPU), cfg)


@pytest.mark.parametrize("ids", [np.zeros((1, 0), np.int32), np.zeros((0, 2), np.int32)])
def test_llama_step_names_empty_token_ids(tiny_llama, ids):
    from candlejax.models import llama

    with pytest.raises(errors.Error, match=r"llama step: token ids \[\d, \d\] are empty"):
        llama.step(tiny_llama, tiny_llama.new_cache(1, 8), ids, 0)
    with pytest.raises(errors.Error, match="empty"):
        llama.forward_all(tiny_llama, ids)


def test_llama_generate_names_the_empty_prompt(tiny_llama):
    with pytest.raises(errors.Error, match="the prompt is empty"):
        list(tiny_llama.generate([], 2))
    assert len(list(tiny_llama.generate([1, 2], 2))) == 2


def test_llama2_c_forward_names_empty_input():
    from candlejax.models.llama2_c import Cache, Config, Llama

    cfg = Config(dim=16, hidden_dim=24, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=32, seq_len=8)
    vb = nn.VarBuilder.from_varmap(nn.VarMap(), DType.F32, CPU)
    cache, model = Cache.new(True, cfg, vb.pp("rot")), Llama.load(vb, cfg)
    with pytest.raises(errors.Error, match=r"llama2_c forward: x \[1, 0\] is empty"):
        model.forward(Tensor.new(np.zeros((1, 0), np.uint32), CPU), 0, cache)
    assert model.forward(Tensor.new(np.ones((1, 2), np.uint32), CPU), 0, cache).shape == (1, 2, 32)
