"""candle-pyo3's own Python tests (candle-pyo3/tests/native/test_tensor.py, test_utils.py and
tests/bindings/test_testing.py), ported as written with ``import candlejax as candle``.

Changes: 64-bit dtypes (``candle.f64``, ``candle.i64``) need JAX's x64 mode, so the tests that use
them take the ``x64`` fixture; files go to ``tmp_path``. test_shape.py is ported in
test_candle_python_api.py. tests/bindings/test_linear.py and test_module.py exercise the binding's
PyTorch-style ``candle.nn`` (``Linear(10, 10)``, ``Module.buffers()``), which candlejax does not
reproduce (docs/differences.md: ``nn.Linear`` takes tensors, as Rust Candle's ``Linear::new``).
"""

import pytest

import candlejax as candle
from candlejax import QTensor, Tensor  # noqa: F401  (as the upstream imports)
from candlejax.testing import assert_almost_equal, assert_equal
from candlejax.utils import cuda_is_available, load_gguf, load_safetensors, save_gguf, save_safetensors


def test_tensor_can_be_constructed():
    t = Tensor(42.0)
    assert t.values() == 42.0


def test_tensor_can_be_constructed_from_list():
    t = Tensor([3.0, 1, 4, 1, 5, 9, 2, 6])
    assert t.values() == [3.0, 1, 4, 1, 5, 9, 2, 6]


def test_tensor_can_be_constructed_from_list_of_lists():
    t = Tensor([[3.0, 1, 4, 1], [5, 9, 2, 6]])
    assert t.values() == [[3.0, 1, 4, 1], [5, 9, 2, 6]]


def test_tensor_can_be_quantized():
    t = candle.randn((16, 256))
    for format in [
        "q4_0",
        "q4_1",
        "q5_0",
        "q5_1",
        "q8_0",
        "q2k",
        "q3k",
        "q4k",
        "q5k",
        "q8k",
    ]:
        for formatted_format in [format.upper(), format.lower()]:
            quant_t = t.quantize(formatted_format)
            assert quant_t.ggml_dtype.lower() == format.lower()
            assert quant_t.shape == t.shape


def test_tensor_can_be_indexed():
    t = Tensor([[3.0, 1, 4, 1], [5, 9, 2, 6]])
    assert t[0].values() == [3.0, 1.0, 4.0, 1.0]
    assert t[1].values() == [5.0, 9.0, 2.0, 6.0]
    assert t[-1].values() == [5.0, 9.0, 2.0, 6.0]
    assert t[-2].values() == [3.0, 1.0, 4.0, 1.0]


def test_tensor_can_be_sliced():
    t = Tensor([3.0, 1, 4, 10, 5, 9, 2, 6])

    assert t[0:4].values() == [3.0, 1.0, 4.0, 10.0]
    assert t[4:8].values() == [5.0, 9.0, 2.0, 6.0]
    assert t[-4:].values() == [5.0, 9.0, 2.0, 6.0]
    assert t[:-4].values() == [3.0, 1.0, 4.0, 10.0]
    assert t[-4:-2].values() == [5.0, 9.0]
    assert t[...].values() == t.values()


def test_tensor_can_be_sliced_2d():
    t = Tensor([[3.0, 1, 4, 1], [5, 9, 2, 6]])
    assert t[:, 0].values() == [3.0, 5]
    assert t[:, 1].values() == [1.0, 9.0]
    assert t[0, 0].values() == 3.0
    assert t[:, -1].values() == [1.0, 6.0]
    assert t[:, -4].values() == [3.0, 5]
    assert t[..., 0].values() == [3.0, 5]


def test_tensor_can_be_scliced_3d():
    t = Tensor([[[1, 2, 3, 4], [5, 6, 7, 8]], [[9, 10, 11, 12], [13, 14, 15, 16]]])
    assert t[:, :, 0].values() == [[1, 5], [9, 13]]
    assert t[:, :, 0:2].values() == [[[1, 2], [5, 6]], [[9, 10], [13, 14]]]
    assert t[:, 0, 0].values() == [1, 9]
    assert t[..., 0].values() == [[1, 5], [9, 13]]
    assert t[..., 0:2].values() == [[[1, 2], [5, 6]], [[9, 10], [13, 14]]]


def assert_bool(t: Tensor, expected: bool):
    assert t.shape == ()
    assert str(t.dtype) == str(candle.u8)
    assert bool(t.values()) == expected


def test_tensor_supports_equality_operations_with_scalars():
    t = Tensor(42.0)

    assert_bool(t == 42.0, True)
    assert_bool(t == 43.0, False)

    assert_bool(t != 42.0, False)
    assert_bool(t != 43.0, True)

    assert_bool(t > 41.0, True)
    assert_bool(t > 42.0, False)

    assert_bool(t >= 41.0, True)
    assert_bool(t >= 42.0, True)

    assert_bool(t < 43.0, True)
    assert_bool(t < 42.0, False)

    assert_bool(t <= 43.0, True)
    assert_bool(t <= 42.0, True)


def test_tensor_supports_equality_operations_with_tensors():
    t = Tensor(42.0)
    same = Tensor(42.0)
    other = Tensor(43.0)

    assert_bool(t == same, True)
    assert_bool(t == other, False)

    assert_bool(t != same, False)
    assert_bool(t != other, True)

    assert_bool(t > same, False)
    assert_bool(t > other, False)

    assert_bool(t >= same, True)
    assert_bool(t >= other, False)

    assert_bool(t < same, False)
    assert_bool(t < other, True)

    assert_bool(t <= same, True)
    assert_bool(t <= other, True)


def test_tensor_equality_operations_can_broadcast():
    # Create a decoder attention mask as a test case
    # e.g.
    # [[1,0,0]
    #  [1,1,0]
    #  [1,1,1]]
    mask_cond = candle.Tensor([0, 1, 2])
    mask = mask_cond < (mask_cond + 1).reshape((3, 1))
    assert mask.shape == (3, 3)
    assert_equal(mask, Tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]]).to_dtype(candle.u8))


def test_tensor_can_be_hashed():
    t = Tensor(42.0)
    other = Tensor(42.0)
    # Hash should represent a unique tensor
    assert hash(t) != hash(other)
    assert hash(t) == hash(t)


def test_tensor_can_be_expanded_with_none():
    t = candle.rand((12, 12))

    b = t[None]
    assert b.shape == (1, 12, 12)
    c = t[:, None, None, :]
    assert c.shape == (12, 1, 1, 12)
    d = t[None, :, None, :]
    assert d.shape == (1, 12, 1, 12)
    e = t[None, None, :, :]
    assert e.shape == (1, 1, 12, 12)
    f = t[:, :, None]
    assert f.shape == (12, 12, 1)


def test_tensor_can_be_index_via_tensor():
    t = candle.Tensor([[1, 2, 1, 2], [3, 4, 3, 4], [5, 6, 5, 6]])
    indexed = t[candle.Tensor([0, 2])]
    assert indexed.shape == (2, 4)
    assert indexed.values() == [[1, 2, 1, 2], [5, 6, 5, 6]]

    indexed = t[:, candle.Tensor([0, 2])]
    assert indexed.shape == (3, 2)
    assert indexed.values() == [[1, 1], [3, 3], [5, 5]]


def test_tensor_can_be_index_via_list():
    t = candle.Tensor([[1, 2, 1, 2], [3, 4, 3, 4], [5, 6, 5, 6]])
    indexed = t[[0, 2]]
    assert indexed.shape == (2, 4)
    assert indexed.values() == [[1, 2, 1, 2], [5, 6, 5, 6]]

    indexed = t[:, [0, 2]]
    assert indexed.shape == (3, 2)
    assert indexed.values() == [[1, 1], [3, 3], [5, 5]]


def test_tensor_can_be_cast_via_to(x64):
    t = Tensor(42.0)
    assert str(t.dtype) == str(candle.f32)
    t_new_args = t.to(candle.f64)
    assert str(t_new_args.dtype) == str(candle.f64)
    t_new_kwargs = t.to(dtype=candle.f64)
    assert str(t_new_kwargs.dtype) == str(candle.f64)
    with pytest.raises(TypeError):
        t.to("not a dtype")
    with pytest.raises(TypeError):
        t.to(dtype="not a dtype")
    with pytest.raises(TypeError):
        t.to(candle.f64, "not a dtype")
    with pytest.raises(TypeError):
        t.to()
    with pytest.raises(ValueError):
        t.to(candle.f16, dtype=candle.f64)
    with pytest.raises(ValueError):
        t.to(candle.f16, candle.f16)

    other = Tensor(42.0).to(candle.f64)
    t_new_other_args = t.to(other)
    assert str(t_new_other_args.dtype) == str(candle.f64)
    t_new_other_kwargs = t.to(other=other)
    assert str(t_new_other_kwargs.dtype) == str(candle.f64)


@pytest.mark.skipif(not cuda_is_available(), reason="CUDA is not available")
def test_tensor_can_be_moved_via_to():
    t = Tensor(42.0)
    assert t.device == "cpu"
    t_new_args = t.to("cuda")
    assert t_new_args.device == "cuda"
    t_new_kwargs = t.to(device="cuda")
    assert t_new_kwargs.device == "cuda"
    with pytest.raises(TypeError):
        t.to("not a device")
    with pytest.raises(TypeError):
        t.to(device="not a device")
    with pytest.raises(TypeError):
        t.to("cuda", "not a device")
    with pytest.raises(TypeError):
        t.to()
    with pytest.raises(ValueError):
        t.to("cuda", device="cpu")
    with pytest.raises(ValueError):
        t.to("cuda", "cuda")

    other = Tensor(42.0).to("cuda")
    t_new_other_args = t.to(other)
    assert t_new_other_args.device == "cuda"
    t_new_other_kwargs = t.to(other=other)
    assert t_new_other_kwargs.device == "cuda"


@pytest.mark.skipif(not cuda_is_available(), reason="CUDA is not available")
def test_tensor_can_be_moved_and_cast_via_to():
    t = Tensor(42.0)
    assert t.device == "cpu"
    assert str(t.dtype) == str(candle.f32)
    t_new_args = t.to("cuda", candle.f64)
    assert t_new_args.device == "cuda"
    assert str(t_new_args.dtype) == str(candle.f64)
    t_new_kwargs = t.to(device="cuda", dtype=candle.f64)
    assert t_new_kwargs.device == "cuda"
    assert str(t_new_kwargs.dtype) == str(candle.f64)

    other = Tensor(42.0).to("cuda").to(candle.f64)
    t_new_other_args = t.to(other)
    assert t_new_other_args.device == "cuda"
    assert str(t_new_other_args.dtype) == str(candle.f64)
    t_new_other_kwargs = t.to(other=other)
    assert t_new_other_kwargs.device == "cuda"
    assert str(t_new_other_kwargs.dtype) == str(candle.f64)


def test_tensor_can_be_added():
    t = Tensor(42.0)
    result = t + t
    assert result.values() == 84.0
    result = t + 2.0
    assert result.values() == 44.0
    a = candle.rand((3, 1, 4))
    b = candle.rand((2, 1))
    c_native = a.broadcast_add(b)
    c = a + b
    assert c.shape == (3, 2, 4)
    assert c.values() == c_native.values()
    with pytest.raises(ValueError):
        d = candle.rand((3, 4, 5))
        e = candle.rand((4, 6))
        _ = d + e


def test_tensor_can_be_subtracted():
    t = Tensor(42.0)
    result = t - t
    assert result.values() == 0
    result = t - 2.0
    assert result.values() == 40.0
    a = candle.rand((3, 1, 4))
    b = candle.rand((2, 1))
    c_native = a.broadcast_sub(b)
    c = a - b
    assert c.shape == (3, 2, 4)
    assert c.values() == c_native.values()
    with pytest.raises(ValueError):
        d = candle.rand((3, 4, 5))
        e = candle.rand((4, 6))
        _ = d - e


def test_tensor_can_be_multiplied():
    t = Tensor(42.0)
    result = t * t
    assert result.values() == 1764.0
    result = t * 2.0
    assert result.values() == 84.0
    a = candle.rand((3, 1, 4))
    b = candle.rand((2, 1))
    c_native = a.broadcast_mul(b)
    c = a * b
    assert c.shape == (3, 2, 4)
    assert c.values() == c_native.values()
    with pytest.raises(ValueError):
        d = candle.rand((3, 4, 5))
        e = candle.rand((4, 6))
        _ = d * e


def test_tensor_can_be_divided():
    t = Tensor(42.0)
    result = t / t
    assert result.values() == 1.0
    result = t / 2.0
    assert result.values() == 21.0
    a = candle.rand((3, 1, 4))
    b = candle.rand((2, 1))
    c_native = a.broadcast_div(b)
    c = a / b
    assert c.shape == (3, 2, 4)
    assert c.values() == c_native.values()
    with pytest.raises(ValueError):
        d = candle.rand((3, 4, 5))
        e = candle.rand((4, 6))
        _ = d / e


# --- candle-pyo3/tests/native/test_utils.py
def test_can_roundtrip_safetensors(tmp_path):
    tensors = {
        "a": candle.randn((16, 256)),
        "b": candle.randn((16, 16)),
    }

    file = str(tmp_path / "test.safetensors")
    save_safetensors(file, tensors)
    loaded_tensors = load_safetensors(file)
    assert set(tensors.keys()) == set(loaded_tensors.keys())
    for key in tensors.keys():
        assert tensors[key].values() == loaded_tensors[key].values(), "Values are not equal"
        assert tensors[key].shape == loaded_tensors[key].shape, "Shapes are not equal"
        assert str(tensors[key].dtype) == str(loaded_tensors[key].dtype), "Dtypes are not equal"


def test_can_roundtrip_gguf(tmp_path):
    metadata = {
        "a": 1,
        "b": "foo",
        "c": [1, 2, 3],
        "d": [[1, 2], [3, 4]],
    }

    tensors = {
        "a": candle.randn((16, 256)).quantize("q4_0"),
        "b": candle.randn((16, 16)).quantize("f32"),
    }

    file = str(tmp_path / "test.gguf")
    save_gguf(file, tensors, metadata)
    loaded_tensors, loaded_metadata = load_gguf(file)

    assert set(metadata.keys()) == set(loaded_metadata.keys())
    for key in metadata.keys():
        assert metadata[key] == loaded_metadata[key]

    assert set(tensors.keys()) == set(loaded_tensors.keys())
    for key in tensors.keys():
        assert tensors[key].dequantize().values() == loaded_tensors[key].dequantize().values(), "Values are not equal"
        assert tensors[key].shape == loaded_tensors[key].shape, "Shapes are not equal"
        assert str(tensors[key].ggml_dtype) == str(loaded_tensors[key].ggml_dtype), "Dtypes are not equal"


# --- candle-pyo3/tests/bindings/test_testing.py
@pytest.mark.parametrize("dtype", [candle.f32, candle.f64, candle.f16, candle.u32, candle.u8, candle.i64])
def test_assert_equal_asserts_correctly(dtype: candle.DType, x64):
    a = Tensor([1, 2, 3]).to(dtype)
    b = Tensor([1, 2, 3]).to(dtype)
    assert_equal(a, b)

    with pytest.raises(AssertionError):
        assert_equal(a, b + 1)


@pytest.mark.parametrize("dtype", [candle.f32, candle.f64, candle.f16, candle.u32, candle.u8, candle.i64])
def test_assert_almost_equal_asserts_correctly(dtype: candle.DType, x64):
    a = Tensor([1, 2, 3]).to(dtype)
    b = Tensor([1, 2, 3]).to(dtype)
    assert_almost_equal(a, b)

    with pytest.raises(AssertionError):
        assert_almost_equal(a, b + 1)

    assert_almost_equal(a, b + 1, atol=20)
    assert_almost_equal(a, b + 1, rtol=20)

    with pytest.raises(AssertionError):
        assert_almost_equal(a, b + 1, atol=0.9)

    with pytest.raises(AssertionError):
        assert_almost_equal(a, b + 1, rtol=0.1)
