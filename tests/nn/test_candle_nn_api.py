"""candle-nn names and call forms that Candle code ports with: builder statements, config fields,
accessor calls, module paths and the layers' Candle-specific input forms."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import candlejax.nn as nn
from candlejax import Tensor, errors


def _t(a):
    return Tensor(np.asarray(a, np.float32))


def test_sequential_add_as_a_statement_raises_instead_of_adding_nothing():
    s = nn.seq()
    with pytest.raises(errors.InPlaceStatement, match=r"s = s\.add\(\.\.\.\)"):
        s.add(lambda x: x * 2)
    with pytest.raises(errors.InPlaceStatement, match=r"s = s\.add_fn\(\.\.\.\)"):
        s.add_fn(lambda x: x + 1)
    assert s.len() == 0  # unchanged, and said so
    s = s.add(lambda x: x * 2)  # rebinding and chaining work
    s = s.add_fn(lambda x: x + 1).add(nn.Activation.Relu)
    assert s.len() == 3
    np.testing.assert_array_equal(np.asarray(s(_t([1.0, -3.0]))._a), [3.0, 0.0])


@pytest.mark.parametrize("cfg", [nn.Conv1dConfig, nn.Conv2dConfig])
def test_conv_configs_have_candles_cudnn_fwd_algo_field(cfg):
    assert "cudnn_fwd_algo" in {f.name for f in dataclasses.fields(cfg)}
    c = cfg(padding=1, stride=1, dilation=1, groups=1, cudnn_fwd_algo=None)
    assert c == cfg(padding=1) and c.cudnn_fwd_algo is None


def test_conv_cudnn_fwd_algo_is_ignored():
    rng = np.random.default_rng(0)
    w, x = rng.standard_normal((4, 2, 3, 3)), rng.standard_normal((1, 2, 6, 6))
    plain = nn.Conv2d(_t(w), None, nn.Conv2dConfig(padding=1))
    hinted = nn.Conv2d(_t(w), None, nn.Conv2dConfig(padding=1, cudnn_fwd_algo="implicit_gemm"))
    np.testing.assert_array_equal(np.asarray(plain(_t(x))._a), np.asarray(hinted(_t(x))._a))
    assert "cudnn_fwd_algo" not in repr(plain)


def test_prelu_takes_a_1d_input_elementwise_as_candle():
    # Candle's PReLU::forward: `xs.shape() == weight.shape()` uses the weights elementwise
    p = nn.PReLU(_t([0.1, 0.2, 0.3]), False)
    np.testing.assert_allclose(np.asarray(p(_t([-1.0, 2.0, -4.0]))._a), [-0.1, 2.0, -1.2], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(p(_t([[-1.0, 2.0, -4.0]]))._a), [[-0.1, 2.0, -1.2]], rtol=1e-6)
    with pytest.raises(nn.LayerInputShape):
        p(_t([-1.0, 2.0]))


def test_accessor_calls_of_bool_settings():
    p = nn.PReLU(_t([0.25]), True)
    assert p.is_scalar() is True and p.is_scalar and repr(p.is_scalar) == "True"
    assert nn.PReLU(_t([0.25, 0.5]), False).is_scalar() is False
    ln = nn.LayerNorm(_t([1.0, 1.0]), _t([0.0, 0.0]), 1e-5)
    assert ln.remove_mean() is True and ln.eps() == 1e-5
    rms = nn.RmsNorm(_t([1.0, 1.0]), 1e-6)
    assert rms.remove_mean() is False and not rms.remove_mean and rms.into_inner().remove_mean() is False


@pytest.mark.parametrize("momentum", [-0.1, 1.5, float("nan")])
def test_batch_norm_momentum_outside_0_1_raises_as_candle(momentum):
    rm, rv, w, b = _t([0.0, 0.0]), _t([1.0, 1.0]), _t([1.0, 1.0]), _t([0.0, 0.0])
    with pytest.raises(errors.InvalidArgument, match="batch-norm momentum must be between 0 and 1, is"):
        nn.BatchNorm.new_with_momentum(2, rm, rv, w, b, 1e-5, momentum)
    with pytest.raises(errors.InvalidArgument, match="batch-norm momentum must be between 0 and 1"):
        nn.BatchNorm.new_no_bias_with_momentum(2, rm, rv, 1e-5, momentum)
    for ok in (0.0, 1.0):
        assert nn.BatchNorm.new_with_momentum(2, rm, rv, w, b, 1e-5, ok).momentum() == ok


def test_kv_cache_k_cache_and_v_cache_are_caches_as_candle():
    cache = nn.KvCache.new(2, 8)
    k = np.arange(12, dtype=np.float32).reshape(1, 2, 3, 2)
    _, cache = cache.append(_t(k), _t(k + 100))
    kc, vc = cache.k_cache(), cache.v_cache()
    assert isinstance(kc, nn.Cache) and isinstance(vc, nn.Cache)
    assert kc.current_seq_len() == 3 and kc.dim() == 2 and kc.max_seq_len() == 8
    assert kc.all_data().shape == (1, 2, 8, 2)
    np.testing.assert_array_equal(np.asarray(kc.current_data()._a), k)
    np.testing.assert_array_equal(np.asarray(vc.current_data()._a), k + 100)


def test_rotating_kv_cache_k_cache_and_v_cache_are_rotating_caches():
    cache = nn.RotatingKvCache.new(0, 3)
    _, cache = cache.append(_t(np.arange(5.0)), _t(np.arange(5.0) + 10))
    kc, vc = cache.k_cache(), cache.v_cache()
    assert isinstance(kc, nn.RotatingCache) and kc.offset() == cache.offset() == 5
    assert kc.current_seq_len() == 5 and kc.max_seq_len() == 3
    assert kc.current_data().tolist() == cache.k().tolist() == [3.0, 4.0, 2.0]
    assert vc.current_data().tolist() == [13.0, 14.0, 12.0]


def test_concat_kv_cache_into_inner():
    cache = nn.ConcatKvCache.new(0)
    assert cache.into_inner() is None
    _, cache = cache.append(_t([1.0]), _t([2.0]))
    _, cache = cache.append(_t([3.0]), _t([4.0]))
    k, v = cache.into_inner()
    assert k.tolist() == [1.0, 3.0] and v.tolist() == [2.0, 4.0]


def test_candle_module_paths():
    from candlejax.nn.kv_cache import IndicesAndMask, ScatteredCacheBuilder, ScatteredKvCache
    from candlejax.nn.ops import Dropout, Identity

    assert Dropout is nn.Dropout and ScatteredKvCache is nn.ScatteredKvCache
    assert IndicesAndMask is nn.IndicesAndMask and ScatteredCacheBuilder is nn.ScatteredCacheBuilder
    x = _t([1.0, 2.0])
    assert Identity.new()(x) is x
    with pytest.raises(AttributeError):
        nn.ops.NoSuchOp  # noqa: B018
    with pytest.raises(AttributeError):
        nn.kv_cache.NoSuchCache  # noqa: B018


def test_default_of_activation_and_identity():
    """``Activation::default()`` is ``Gelu`` (``#[default]`` in candle-nn/src/activation.rs) and
    ``Identity`` implements ``Default`` (candle-nn/src/ops.rs); ``Gelu`` is the erf GELU."""
    import torch

    assert nn.Activation.default() == nn.Activation.Gelu
    x = np.linspace(-4, 4, 9).astype(np.float32)
    got = np.asarray(nn.Activation.default().forward(_t(x))._a)
    np.testing.assert_allclose(got, torch.nn.functional.gelu(torch.tensor(x)).numpy(), atol=1e-6)
    ident = nn.ops.Identity.default()
    assert isinstance(ident, nn.Identity)
    np.testing.assert_array_equal(np.asarray(ident.forward(_t(x))._a), x)


def test_rnn_step_and_seq_init_name_a_wrong_state():
    """Candle's ``step(&input, &state)`` / ``seq_init`` take an ``LSTMState`` / ``GRUState`` (rnn.rs);
    anything else (``None``, a bare tensor, the other RNN's state) raises naming the state type."""
    from candlejax import Device, DType

    vb = nn.VarBuilder.zeros(DType.F32, Device.Cpu)
    lstm, gru = nn.lstm(3, 4, nn.LSTMConfig(), vb.pp("l")), nn.gru(3, 4, nn.GRUConfig(), vb.pp("g"))
    x, xs, h = _t(np.ones((2, 3))), _t(np.ones((2, 5, 3))), _t(np.zeros((2, 4)))
    for bad in (None, h, gru.zero_state(2)):
        with pytest.raises(errors.InvalidArgument, match="LSTMState"):
            lstm.step(x, bad)
        with pytest.raises(errors.InvalidArgument, match="LSTMState"):
            lstm.seq_init(xs, bad)
    for bad in (None, h, lstm.zero_state(2)):
        with pytest.raises(errors.InvalidArgument, match="GRUState"):
            gru.step(x, bad)
        with pytest.raises(errors.InvalidArgument, match="GRUState"):
            gru.seq_init(xs, bad)
    assert gru.step(x, gru.zero_state(2)).h.shape == (2, 4)
