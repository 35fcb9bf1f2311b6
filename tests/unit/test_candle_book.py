"""The Candle book (huggingface/candle, candle-book/src/), ported line by line.

One test per book section, each naming its file: guide/hello_world.md (and the same code in
guide/mnist/modeling.md), guide/cheatsheet.md (README.md's cheatsheet: the Candle column and the
PyTorch spellings candlejax offers), guide/mnist/training.md's ``make_linear``, error_manage.md,
inference/hub.md with lib.rs's ``book_hub_1/2/3`` (hub downloads replaced by files written in
tmp_path), training/training.md + training/mnist.md (lib.rs's ``book_training_3``, parquet rows
replaced by in-memory PNG rows). simplified.rs and guide/mnist's training loop and saving / loading
are ported in test_candle_ports.py. Expected values come from numpy (float64), torch or the book.
"""

from __future__ import annotations

import io
import mmap

import numpy as np
import pytest
import safetensors.numpy as st_numpy
import torch

import candlejax as cj
import candlejax.data as candle_datasets
import candlejax.nn as candle_nn
from candlejax import Device, DType, Tensor, errors
from candlejax.nn import Linear, Module, VarBuilder, VarMap

F64 = np.float64


def _np(t: Tensor) -> np.ndarray:
    return np.asarray(t.to_dtype(DType.F32).numpy(), F64)


# ------------------------------------------------------------------------------------------------
# guide/hello_world.md (= guide/mnist/modeling.md)
# ------------------------------------------------------------------------------------------------
class MatmulModel:
    """hello_world.md's first ``Model { first: Tensor, second: Tensor }``."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def forward(self, image):
        x = image.matmul(self.first)
        x = x.relu()
        return x.matmul(self.second)


def test_hello_world_hand_written_matmul_model():
    device = Device.Cpu
    device.set_seed(0)
    first = Tensor.randn(np.float32(0), 1.0, (784, 100), device)  # Tensor::randn(0f32, 1.0, ..)
    second = Tensor.randn(np.float32(0), 1.0, (100, 10), device)
    model = MatmulModel(first, second)
    dummy_image = Tensor.randn(np.float32(0), 1.0, (1, 784), device)
    digit = model.forward(dummy_image)
    line = f"Digit {digit!r} digit"  # println!("Digit {digit:?} digit")
    assert digit.dims() == (1, 10) and digit.dtype == DType.F32
    assert line.endswith("Tensor[[1, 10], f32] digit")
    want = np.maximum(_np(dummy_image) @ _np(first), 0.0) @ _np(second)
    np.testing.assert_allclose(_np(digit), want, rtol=1e-4, atol=1e-3)


class HandLinear:
    """hello_world.md's ``struct Linear { weight, bias }`` with ``x.matmul(w)?.broadcast_add(b)``."""

    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias

    def forward(self, x):
        x = x.matmul(self.weight)
        return x.broadcast_add(self.bias)


class Model:
    """hello_world.md's ``Model { first: Linear, second: Linear }`` (hand-written or candle_nn)."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def forward(self, image):
        x = self.first.forward(image)
        x = x.relu()
        return self.second.forward(x)


def test_hello_world_hand_written_linear_layer():
    device = Device.cuda_if_available(0)
    assert device.is_cpu() or device.is_cuda()
    weight = Tensor.randn(np.float32(0), 1.0, (784, 100), device)
    bias = Tensor.randn(np.float32(0), 1.0, (100,), device)
    first = HandLinear(weight, bias)
    weight = Tensor.randn(np.float32(0), 1.0, (100, 10), device)
    bias = Tensor.randn(np.float32(0), 1.0, (10,), device)
    second = HandLinear(weight, bias)
    model = Model(first, second)
    dummy_image = Tensor.randn(np.float32(0), 1.0, (1, 784), device)
    digit = model.forward(dummy_image)
    assert digit.dims() == (1, 10) and digit.dtype == DType.F32
    h = np.maximum(_np(dummy_image) @ _np(first.weight) + _np(first.bias), 0.0)
    np.testing.assert_allclose(_np(digit), h @ _np(second.weight) + _np(second.bias), rtol=1e-4, atol=1e-3)


def test_hello_world_candle_nn_linear():
    device = Device.Cpu
    # This has changed (784, 100) -> (100, 784) !
    weight = Tensor.randn(np.float32(0), 1.0, (100, 784), device)
    bias = Tensor.randn(np.float32(0), 1.0, (100,), device)
    first = Linear.new(weight, bias)  # Linear::new(weight, Some(bias))
    weight = Tensor.randn(np.float32(0), 1.0, (10, 100), device)
    bias = Tensor.randn(np.float32(0), 1.0, (10,), device)
    second = Linear.new(weight, bias)
    assert isinstance(first, Module)
    model = Model(first, second)
    dummy_image = Tensor.randn(np.float32(0), 1.0, (1, 784), device)
    digit = model.forward(dummy_image)
    assert digit.dims() == (1, 10)
    ref = torch.nn.functional.linear
    x = torch.from_numpy(_np(dummy_image))
    h = ref(x, torch.from_numpy(_np(first.weight)), torch.from_numpy(_np(first.bias))).relu()
    want = ref(h, torch.from_numpy(_np(second.weight)), torch.from_numpy(_np(second.bias))).numpy()
    np.testing.assert_allclose(_np(digit), want, rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# guide/cheatsheet.md (README.md's cheatsheet)
# ------------------------------------------------------------------------------------------------
def test_cheatsheet_candle_column(tmp_path):
    tensor = Tensor.new([[1.0, 2.0], [3.0, 4.0]], Device.Cpu)  # Tensor::new(&[[1f32, 2.], [3., 4.]], ..)
    assert tensor.dtype == DType.F32 and tensor.to_vec2() == [[1.0, 2.0], [3.0, 4.0]]
    zeros = Tensor.zeros((2, 2), DType.F32, Device.Cpu)
    assert zeros.to_vec2() == [[0.0, 0.0], [0.0, 0.0]]
    wide = Tensor.arange(0.0, 24.0, Device.Cpu).reshape((3, 8))
    # tensor.i((.., ..4)): Rust's `..` is slice(None), `..4` is slice(None, 4)
    np.testing.assert_array_equal(wide.i((slice(None), slice(None, 4))).numpy(), np.arange(24.0).reshape(3, 8)[:, :4])
    assert wide.reshape((2, 12)).dims() == (2, 12)
    a, b = tensor, Tensor.new([[5.0, 6.0], [7.0, 8.0]], Device.Cpu)
    want = torch.tensor([[1.0, 2.0], [3.0, 4.0]]) @ torch.tensor([[5.0, 6.0], [7.0, 8.0]])
    np.testing.assert_array_equal(a.matmul(b).numpy(), want.numpy())
    assert (a + b).to_vec2() == [[6.0, 8.0], [10.0, 12.0]]  # &a + &b
    if not cj.utils.cuda_is_available():
        with pytest.raises(errors.Error, match="cuda"):
            tensor.to_device(Device.new_cuda(0))
    assert tensor.to_dtype(DType.F16).dtype == DType.F16
    A = tensor
    cj.safetensors.save({"A": A}, tmp_path / "model.safetensors")  # HashMap::from([("A", A)])
    device = Device.Cpu
    loaded = cj.safetensors.load(tmp_path / "model.safetensors", device)
    assert list(loaded) == ["A"] and loaded["A"].to_vec2() == A.to_vec2()
    # what torch reads back from Candle's file
    import safetensors.torch as st_torch

    np.testing.assert_array_equal(st_torch.load_file(tmp_path / "model.safetensors")["A"].numpy(), A.numpy())


def test_cheatsheet_pytorch_column():
    t = torch.Tensor([[1, 2], [3, 4]])
    tensor = Tensor.new([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(cj.zeros((2, 2)).numpy(), torch.zeros((2, 2)).numpy())
    wide_t = torch.arange(24.0).reshape(3, 8)
    wide = Tensor.new(wide_t.numpy())
    np.testing.assert_array_equal(wide[:, :4].numpy(), wide_t[:, :4].numpy())  # tensor[:, :4]
    np.testing.assert_array_equal(tensor.view((2, 2)).numpy(), t.view((2, 2)).numpy())
    np.testing.assert_array_equal(tensor.matmul(tensor).numpy(), t.matmul(t).numpy())
    np.testing.assert_array_equal((tensor + tensor).numpy(), (t + t).numpy())
    assert tensor.to(device="cpu").device == Device.Cpu
    assert tensor.to(dtype=cj.f16).dtype == DType.F16 and t.to(dtype=torch.float16).dtype == torch.float16
    # the PyTorch expression itself: torch's dtypes name candlejax's
    for tdt, dt in ((torch.float16, DType.F16), (torch.bfloat16, DType.BF16), (torch.float32, DType.F32),
                    (torch.uint8, DType.U8), (torch.int32, DType.I32)):  # fmt: skip
        got = tensor.to(dtype=tdt)
        assert got.dtype == dt
        np.testing.assert_array_equal(_np(got), t.to(dtype=tdt).double().numpy())
    assert tensor.to(torch.float16).dtype == DType.F16 and tensor.to(torch.bfloat16, "cpu").dtype == DType.BF16
    with pytest.raises(errors.ArgumentType, match="complex64"):
        tensor.to(dtype=torch.complex64)
    with pytest.raises(errors.ArgumentType, match="complex64"):
        tensor.to(torch.complex64)


# ------------------------------------------------------------------------------------------------
# guide/mnist/training.md: make_linear with get_with_hints (Kaiming normal weight, uniform bias)
# ------------------------------------------------------------------------------------------------
def make_linear(vs, in_dim, out_dim):
    ws = vs.get_with_hints((out_dim, in_dim), "weight", candle_nn.init.DEFAULT_KAIMING_NORMAL)
    bound = 1.0 / float(in_dim) ** 0.5
    bs = vs.get_with_hints(out_dim, "bias", candle_nn.Init.Uniform(lo=-bound, up=bound))
    return Linear.new(ws, bs)


def test_mnist_guide_make_linear_and_model_new():
    IMAGE_DIM, HIDDEN_DIM, LABELS = 784, 100, 10  # the book's consts
    varmap = VarMap.new(seed=0)
    vs = VarBuilder.from_varmap(varmap, DType.F32, Device.Cpu)
    model = Model(make_linear(vs.pp("first"), IMAGE_DIM, HIDDEN_DIM), make_linear(vs.pp("second"), HIDDEN_DIM, LABELS))
    assert sorted(varmap.data()) == ["first.bias", "first.weight", "second.bias", "second.weight"]
    w, b = _np(varmap.data()["first.weight"].as_tensor()), _np(varmap.data()["first.bias"].as_tensor())
    assert w.shape == (100, 784) and abs(w.std() - (2.0 / 784) ** 0.5) < 0.003  # kaiming normal, fan_in, relu
    assert b.shape == (100,) and np.all(np.abs(b) <= 1 / 28) and b.std() > 0.01
    assert model.forward(Tensor.zeros((2, 784), DType.F32, Device.Cpu)).dims() == (2, 10)


# ------------------------------------------------------------------------------------------------
# error_manage.md
# ------------------------------------------------------------------------------------------------
def test_error_manage_matmul_shape_mismatch():
    device = Device.Cpu
    x = Tensor.zeros((1, 784), DType.F32, device)
    y = Tensor.zeros((1, 784), DType.F32, device)
    with pytest.raises(errors.ShapeMismatchBinaryOp) as info:
        x.matmul(y)
    # Error: ShapeMismatchBinaryOp { lhs: [1, 784], rhs: [1, 784], op: "matmul" }
    e = info.value
    assert (e.lhs, e.rhs, e.op) == ((1, 784), (1, 784), "matmul")
    assert str(e).startswith("shape mismatch in matmul, lhs: [1, 784], rhs: [1, 784]")
    assert isinstance(e, ValueError)  # what candle-pyo3 raises
    assert e.bt() is not None and "shape mismatch in matmul" in str(e.bt())
    assert str(e.context("in main")).startswith("in main\nshape mismatch in matmul")  # "{context}\n{inner}"
    assert str(e.with_path("model.safetensors")).startswith('path: "model.safetensors" shape mismatch in matmul')
    assert str(errors.Error.msg("bad input").context("loading")) == "loading\nbad input"


# ------------------------------------------------------------------------------------------------
# inference/hub.md and lib.rs's book_hub_1 / book_hub_2 / book_hub_3
# ------------------------------------------------------------------------------------------------
Q_W, Q_B = "bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.0.attention.self.query.bias"


def _bert_like(tmp_path, hidden=16):
    rng = np.random.default_rng(0)
    arrays = {
        Q_W: rng.standard_normal((hidden, hidden)).astype(np.float32),
        Q_B: rng.standard_normal(hidden).astype(np.float32),
        "bert.embeddings.word_embeddings.weight": rng.standard_normal((5, hidden)).astype(np.float32),
    }
    path = tmp_path / "model.safetensors"
    st_numpy.save_file(arrays, path)
    return path, arrays


def test_hub_load_and_use_in_a_linear(tmp_path):
    weights_filename, arrays = _bert_like(tmp_path)  # repo.get("model.safetensors")
    weights = cj.safetensors.load(weights_filename, Device.Cpu)
    assert len(weights) == len(arrays)  # book_hub_1: assert_eq!(weights.len(), 206)
    weight = weights.get(Q_W)
    bias = weights.get(Q_B)
    linear = Linear.new(weight.clone(), bias.clone())
    input_ids = Tensor.randn(np.float32(0), 1.0, (3, 16), Device.Cpu)
    output = linear.forward(input_ids)
    w, b = (torch.from_numpy(arrays[k].astype(F64)) for k in (Q_W, Q_B))
    want = torch.nn.functional.linear(torch.from_numpy(_np(input_ids)), w, b)
    np.testing.assert_allclose(_np(output), want.numpy(), rtol=1e-5, atol=1e-5)


def test_hub_memory_mapped_load_buffer(tmp_path):
    weights_filename, arrays = _bert_like(tmp_path)
    with open(weights_filename, "rb") as file:
        mm = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)  # unsafe { Mmap::map(&file) }
        weights = cj.safetensors.load_buffer(mm[:], Device.Cpu)  # &mmap[..]
        mm.close()
    assert len(weights) == len(arrays)  # book_hub_2
    np.testing.assert_array_equal(weights[Q_W].numpy(), arrays[Q_W])
    # the file name instead of its bytes, or nothing, raises naming the call that reads a path
    for bad in (str(weights_filename), weights_filename, None):
        with pytest.raises(errors.ArgumentType, match=r"load_buffer: .*safetensors\.load\(path, device\)"):
            cj.safetensors.load_buffer(bad, Device.Cpu)
    with pytest.raises(errors.ArgumentType, match=r"SafeTensors\.deserialize: .*got str"):
        cj.safetensors.SafeTensors.deserialize(str(weights_filename))


def test_hub_tensor_parallel_sharding_with_safetensors_directly(tmp_path):
    weights_filename, arrays = _bert_like(tmp_path)
    with open(weights_filename, "rb") as file:
        mm = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        # Use safetensors directly
        tensors = cj.safetensors.SafeTensors.deserialize(mm[:])
        mm.close()
    view = tensors.tensor(Q_W)
    rank, world_size, dim = 1, 4, 0
    dtype = view.dtype()
    tp_shape = view.shape().to_vec()  # view.shape().to_vec(): a fresh list
    assert tp_shape == [16, 16] and type(tp_shape) is list
    size = tp_shape[0]
    assert size % world_size == 0
    block_size = size // world_size
    start = rank * block_size
    stop = (rank + 1) * block_size
    iterator = view.slice(slice(start, stop))  # view.slice(start..stop)
    tp_shape[dim] = block_size
    raw = b"".join(iterator)  # iterator.into_iter().flatten().cloned().collect()
    tp_tensor = Tensor.from_raw_buffer(raw, dtype, tp_shape, Device.Cpu)
    assert view.shape() == (16, 16) and tp_tensor.dims() == (4, 16)  # [768, 768] -> [192, 768]
    dims = tp_tensor.dims().to_vec()  # Rust's `let mut dims = t.dims().to_vec();`
    dims[0] = 1
    assert dims == [1, 16] and tp_tensor.dims() == [4, 16] and tp_tensor.shape().dims().to_vec() == [4, 16]
    np.testing.assert_array_equal(tp_tensor.numpy(), arrays[Q_W][start:stop])


def test_hub_safetensors_slice_on_inner_dims_and_bad_ranges(tmp_path):
    weights_filename, arrays = _bert_like(tmp_path)
    view = cj.safetensors.SafeTensors(weights_filename).tensor(Q_W)
    # the safetensors crate's IndexOp: one indexer per leading dim, in row-major byte chunks
    it = view.slice((slice(None), slice(4, 8)))
    assert list(it.newshape()) == [16, 4] and it.remaining_byte_len() == 16 * 4 * 4
    got = np.frombuffer(b"".join(it), np.float32).reshape(16, 4)
    np.testing.assert_array_equal(got, arrays[Q_W][:, 4:8])
    got = np.frombuffer(b"".join(view.slice((3, slice(None, 2)))), np.float32)
    np.testing.assert_array_equal(got, arrays[Q_W][3, :2])
    got = np.frombuffer(b"".join(view.slice(range(4, 8))), np.float32).reshape(4, 16)  # start..stop as a range
    np.testing.assert_array_equal(got, arrays[Q_W][4:8])
    with pytest.raises(errors.Error, match="slice"):
        view.slice((slice(None), slice(None), slice(None)))  # TooManySlices
    with pytest.raises(errors.Error, match="slice"):
        view.slice(slice(0, 17))  # SliceOutOfRange
    with pytest.raises(errors.SafeTensor):
        cj.safetensors.SafeTensors.deserialize(b"not a safetensors buffer")


# ------------------------------------------------------------------------------------------------
# training/training.md + training/mnist.md (lib.rs's book_training_3)
# ------------------------------------------------------------------------------------------------
def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


def test_training_mnist_dataset_from_image_rows():
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    test_parquet = [{"image": {"bytes": _png(p)}, "label": i % 10} for i, p in enumerate(pixels)]  # parquet rows
    test_samples = len(test_parquet)
    test_buffer_images = bytearray()  # Vec<u8>
    test_buffer_labels = bytearray()
    for row in test_parquet:
        image = Image.open(io.BytesIO(row["image"]["bytes"]))  # image::load_from_memory(value.data())
        test_buffer_images.extend(image.convert("L").tobytes())  # image.to_luma8().as_raw()
        test_buffer_labels.append(row["label"])  # *label as u8
    test_images = Tensor.from_vec(test_buffer_images, (test_samples, 784), Device.Cpu).to_dtype(DType.F32) / 255.0
    test_labels = Tensor.from_vec(test_buffer_labels, (test_samples,), Device.Cpu)
    mnist = candle_datasets.vision.Dataset(
        train_images=test_images, train_labels=test_labels, test_images=test_images, test_labels=test_labels, labels=10
    )
    assert mnist.test_images.dims() == (5, 784) and mnist.test_labels.dims() == (5,)
    assert mnist.test_labels.dtype == DType.U8 and mnist.test_labels.to_vec1() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(_np(mnist.test_images), pixels.reshape(5, 784) / 255.0, rtol=1e-6)
