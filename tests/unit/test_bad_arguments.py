"""Bad arguments to the public Tensor / nn API raise candlejax errors naming the op, never a raw numpy /
JAX exception, and are never silently read as something else."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import candlejax as cj
from candlejax import Device, DType, Tensor, nn
from candlejax import generation as gen
from candlejax.errors import Error
from candlejax.nn import init, ops
from candlejax.optim import SGD, ParamsAdamW

_X = np.arange(6, dtype=np.float32).reshape(2, 3)
_T = Tensor.new(_X)
_NP2 = np.ones((2, 3), np.float32)  # a 2-d array where one dim / one int belongs
_JAX2 = jnp.ones((2, 3))


# (name, call, raw exception it used to raise): each must now raise a candlejax Error
BAD = [
    # a multi-element array as a dim (numpy / jax raised "only integer scalar arrays ...")
    ("sum_keepdim np", lambda: _T.sum_keepdim(_NP2), TypeError),
    ("softmax jax", lambda: _T.softmax(_JAX2), TypeError),
    ("narrow np", lambda: _T.narrow(_NP2, 0, 1), TypeError),
    ("transpose jax", lambda: _T.transpose(_JAX2, 0), TypeError),
    ("cat dim np", lambda: Tensor.cat([_T, _T], _NP2), TypeError),
    # ... or as a shape dim
    ("zeros np", lambda: Tensor.zeros(_NP2), TypeError),
    ("ones jax", lambda: Tensor.ones(_JAX2), TypeError),
    ("broadcast_as np", lambda: _T.broadcast_as(_NP2), TypeError),
    ("from_vec np", lambda: Tensor.from_vec([1.0, 2.0], _NP2), TypeError),
    ("reshape float 0-d", lambda: _T.reshape(np.float32(3.0), 2), TypeError),
    # an element count whose byte size overflows int64 (XLA aborted the process)
    ("ones 2**61 f32", lambda: Tensor.ones((2**61,)), None),
    ("cj.ones 2**62", lambda: cj.ones(2**62), None),
    ("zeros 2**31 x 2**31", lambda: Tensor.zeros((2**31, 2**31)), None),
    # a Tensor where a DType belongs (numpy raised "Could not convert ... to a NumPy dtype")
    ("to_dtype tensor", lambda: _T.to_dtype(_T), ValueError),
    ("ones dtype jax array", lambda: cj.ones(2, dtype=_JAX2), None),
    ("to_dtype np array", lambda: _T.to_dtype(_NP2), None),
    ("randn_f64 dtype tensor", lambda: Tensor.randn_f64(0.0, 1.0, (2, 3), _T), ValueError),
    # Tensor::full's value is a scalar
    ("full value rank-1", lambda: Tensor.full(Tensor.new([1.0, 2.0]), (2, 3)), ValueError),
    ("full value rank-2 np", lambda: Tensor.full(_NP2, (2, 3)), None),
    ("full_like None", lambda: _T.full_like(None), TypeError),
    ("full_like str", lambda: _T.full_like("0"), TypeError),
    ("full_like list", lambda: _T.full_like([1.0, 2.0]), TypeError),
    # array bounds of a random draw must broadcast to its shape
    ("rand lo shape", lambda: Tensor.rand(Tensor.zeros((2,)), 1.0, (2, 3)), TypeError),
    ("randn std shape", lambda: Tensor.randn(0.0, Tensor.ones((2, 3, 4)), (2, 3)), ValueError),
    ("rand_like up shape", lambda: _T.rand_like(0.0, Tensor.ones((0, 3))), TypeError),
    # non-iterables where a sequence belongs
    ("from_iter None", lambda: Tensor.from_iter(None), TypeError),
    ("from_iter int", lambda: Tensor.from_iter(3), TypeError),
    ("from_iter 2-d rows", lambda: Tensor.from_iter(Tensor.ones((2, 3))), None),
    ("from_iter np 2-d", lambda: Tensor.from_iter(np.ones((2, 3))), None),
    ("meshgrid None", lambda: Tensor.meshgrid(None, True), TypeError),
    # devices
    ("to_device jax array", lambda: _T.to_device(_JAX2), AttributeError),
    ("device cuda:x", lambda: Device.coerce("cuda:x"), ValueError),
    # nn: sizes and counts go through int_arg, real settings through float_arg
    ("nn.conv1d in_channels None", lambda: nn.conv1d(None, 4, 2, nn.Conv1dConfig(), _vb()), TypeError),
    ("nn.conv2d kernel_size str", lambda: nn.conv2d(3, 4, "2", nn.Conv2dConfig(), _vb()), TypeError),
    ("nn.conv2d groups str", lambda: nn.conv2d(3, 3, 2, nn.Conv2dConfig(groups="1"), _vb()), TypeError),
    ("nn.group_norm num_groups None", lambda: nn.group_norm(None, 4, 1e-5, _vb()), TypeError),
    ("GroupNorm num_channels str", lambda: nn.GroupNorm(Tensor.ones((4,)), Tensor.zeros((4,)), "4", 2), TypeError),
    ("KvCache dim None", lambda: nn.KvCache(None, 8), TypeError),
    ("ConcatKvCache dim nan", lambda: nn.ConcatKvCache(float("nan")), ValueError),
    ("RotatingKvCache dim list", lambda: nn.RotatingKvCache([2], 8), TypeError),
    ("RotatingKvCache window 2**46", lambda: nn.RotatingKvCache(2, 2**46), RuntimeError),
    ("RotaryEmbedding dim None", lambda: nn.RotaryEmbedding(None, 16), TypeError),
    ("RotaryEmbedding max_pos str", lambda: nn.RotaryEmbedding(8, "16"), TypeError),
    ("RotaryEmbedding base None", lambda: nn.RotaryEmbedding(8, 16, None), TypeError),
    ("RotaryEmbedding max_pos 2**46", lambda: nn.RotaryEmbedding(8, 2**46), MemoryError),
    ("Embedding hidden_size nan", lambda: nn.Embedding(Tensor.ones((5, 3)), float("nan")), ValueError),
    ("VarMap seed None", lambda: nn.VarMap(None), TypeError),
    ("layer_norm eps np", lambda: nn.layer_norm(4, _NP2, _vb()), TypeError),
    ("BatchNormConfig momentum str", lambda: nn.batch_norm(3, nn.BatchNormConfig(momentum="0.1"), _vb()), TypeError),
    ("BatchNormConfig eps None", lambda: nn.batch_norm(3, nn.BatchNormConfig(eps=None), _vb()), TypeError),
    ("Activation list", lambda: nn.Activation(["Gelu"]), TypeError),
    ("ops.replication_pad2d 2**40", lambda: ops.replication_pad2d(Tensor.ones((1, 1, 2, 2)), 2**40), None),
    ("ops.replication_pad2d 2**22", lambda: ops.replication_pad2d(Tensor.ones((1, 4, 4, 4)), 2**22), RuntimeError),
    ("ops.repeat_kv 2**40", lambda: ops.repeat_kv(Tensor.ones((1, 2, 4, 8)), 2**40), RuntimeError),
    ("ops.causal_mask 2**40", lambda: ops.causal_mask(2**40, 4), OverflowError),
    ("ops.swiglu scalar", lambda: ops.swiglu(1.5), IndexError),
    ("ops.Dropout np", lambda: ops.Dropout(_NP2), TypeError),
    ("init.Const str", lambda: _vb().get_with_hints((2, 2), "w", init.Const("1")), None),
    ("ParamsAdamW lr str", lambda: ParamsAdamW(lr="0.1"), None),
    ("SGD lr str", lambda: SGD([cj.Var(Tensor.ones((2,)))], "0.1"), None),
    # generation
    ("LogitsProcessor temperature np", lambda: gen.LogitsProcessor(1, _NP2, None), TypeError),
    ("sampling_from_args top_p jax", lambda: gen.sampling_from_args(0.7, None, _JAX2), TypeError),
    ("apply_repeat_penalty logits None", lambda: gen.apply_repeat_penalty(None, 1.1, [1]), AttributeError),
    ("apply_repeat_penalty context None", lambda: gen.apply_repeat_penalty(Tensor.ones((4,)), 1.1, None), ValueError),
    ("prefill_bucket chunk 0", lambda: gen.prefill_bucket(5, 0), ZeroDivisionError),
    # candle-pyo3's candle.utils path arguments: a non-path is an ArgumentType (a TypeError), as load_safetensors
    ("utils.load_gguf path None", lambda: cj.utils.load_gguf(None), TypeError),
    ("utils.save_gguf path None", lambda: cj.utils.save_gguf(None, {}, {}), TypeError),
    ("utils.load_ggml path None", lambda: cj.utils.load_ggml(None), TypeError),
    # D::Minus(n) takes a usize: a str raised a raw TypeError, a float was kept (D.Minus(1.5).to_index(3) == 1.5)
    ("D.Minus str", lambda: cj.D.Minus("a"), TypeError),
    ("D.Minus float", lambda: cj.D.Minus(1.5), None),
    # candle::display's setters take a usize: a str raised a raw ValueError, a float or negative was kept
    ("display.set_precision str", lambda: cj.display.set_precision("a"), ValueError),
    ("display.set_precision float", lambda: cj.display.set_precision(2.7), None),
    ("display.set_edge_items negative", lambda: cj.display.set_edge_items(-1), None),
    ("display.set_print_options threshold str", lambda: cj.display.set_print_options(threshold="x"), ValueError),
    # GgmlDType.parse of a non-string
    ("GgmlDType.parse int", lambda: cj.quantized.GgmlDType.parse(1), AttributeError),
]


def _vb() -> nn.VarBuilder:
    return nn.VarBuilder.from_varmap(nn.VarMap(), DType.F32, Device.Cpu)


@pytest.mark.parametrize("name,call,raw", BAD, ids=[b[0] for b in BAD])
def test_bad_argument_raises_candlejax_error(name: str, call, raw) -> None:
    with pytest.raises(Error):
        call()


def test_numpy_integer_arrays_are_sequences_of_dims() -> None:
    # candle-pyo3 reads a 1-d numpy integer array as a list of dims / a shape
    np.testing.assert_allclose(_T.sum_keepdim(np.array([0, 1])).numpy(), _X.sum(axis=(0, 1), keepdims=True))
    assert Tensor.zeros(np.array([2, 3])).shape == (2, 3)
    assert _T.reshape(np.array([3, 2])).shape == (3, 2)
    assert _T.sum_keepdim(np.int64(1)).shape == (2, 1)


def test_good_fill_and_bounds_still_work() -> None:
    assert Tensor.full(Tensor.new(np.float32(2.5)), (2, 2)).to_vec2() == [[2.5, 2.5], [2.5, 2.5]]
    assert _T.full_like(np.float32(1.0)).to_vec2() == [[1.0] * 3] * 2
    r = Tensor.rand(Tensor.zeros((3,)), Tensor.ones((2, 1)), (2, 3))
    assert r.shape == (2, 3)
    assert Tensor.to_dtype(_T, DType.F16).dtype == DType.F16
    assert Device.coerce("cpu") == Device.Cpu


def test_masks_are_u8_tensors() -> None:
    # Candle's masks are U8: a Tensor holding a jax bool array had no dtype and no repr
    m = ops.causal_mask(2, 3)
    assert m.dtype == DType.U8 and m.to_vec2() == [[1, 1, 0], [1, 1, 1]]
    p = ops.padding_mask(np.array([[1, 0]]))
    assert p.dtype == DType.U8 and p.shape == (1, 1, 1, 2) and "u8" in repr(p)


def test_rotary_base_must_be_positive() -> None:
    # base <= 0 gave NaN tables silently (base ** (-2i/dim))
    with pytest.raises(Error, match="base"):
        nn.RotaryEmbedding(8, 16, 0.0)


def test_write_bytes_refuses_what_is_not_a_file_object(tmp_path) -> None:
    t = cj.Tensor([1.0, 2.0])
    with pytest.raises(cj.errors.ArgumentType, match="binary file object") as e:
        t.write_bytes(str(tmp_path / "t.bin"))
    assert 'open(' in str(e.value) and isinstance(e.value, TypeError)
    with pytest.raises(cj.errors.ArgumentType, match="got int"):
        t.write_bytes(3)
    with open(tmp_path / "t.bin", "wb") as f:
        t.write_bytes(f)
    assert (tmp_path / "t.bin").read_bytes() == np.array([1.0, 2.0], "<f4").tobytes()
