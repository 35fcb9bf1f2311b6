"""Candle's candle-core/tests/{gguf_tests,serialization_tests,pth_tests,custom_op_tests}.rs, ported test by
test with Candle's expected values.

Candle's data files (tests/test.npy, test.npz, test.pt, test_with_key.pt, fortran_tensor_3d.pth) are
rebuilt in ``tmp_path`` by the scripts Candle made them with (tests/npy.py, tests/pth.py). Documented
differences (docs/differences.md) that change what is asserted: int64 npy data needs JAX's x64 mode
(the ``x64`` fixture; without it reading raises ``NpyX64Error``), a GGUF tensor extent past the end of
the file is rejected by ``Content.read`` itself, and Candle's in-place ``inplace_op1`` is functional.
Candle's ``CustomOp1`` (a CPU kernel over ``CpuStorage``) has no candlejax counterpart: an op is a JAX
function applied with ``Tensor.from_jax(f(t.jax))``, and ``jax.custom_vjp`` gives it a backward.
"""

from __future__ import annotations

import collections
import io
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import candlejax as cj
from candlejax import Device, DType, Tensor, Var, errors, quantized
from candlejax.io import pth
from candlejax.io.npy import NpyX64Error
from candlejax.testing import to_vec1_round

CPU = Device.Cpu


# ------------------------------------------------------------------------------------------------
# gguf_tests.rs: regression tests for the allocation caps added in huggingface/candle#3533
# ------------------------------------------------------------------------------------------------
Content = quantized.gguf_file.Content

GGUF_MAGIC = b"GGUF"
GGUF_V3 = 3


def header(tensor_count, metadata_kv_count):
    buf = GGUF_MAGIC
    buf += struct.pack("<I", GGUF_V3)
    buf += struct.pack("<Q", tensor_count)
    buf += struct.pack("<Q", metadata_kv_count)
    return buf


def length_prefixed(s):
    return struct.pack("<Q", len(s)) + s


def pad(buf, n):
    """Pad past the upfront ``count * min_per_entry`` sufficient-bytes check so the inner per-field
    cap is what fires."""
    return buf + b"\0" * n


def assert_rejects(buf, msg_contains):
    cursor = io.BytesIO(buf)
    with pytest.raises(cj.Error) as err:
        Content.read(cursor)
    msg = str(err.value)
    assert msg_contains in msg, f"unexpected error: {msg}"


def oversized_metadata_kv_count():
    return header(0, 1 << 31)


def oversized_tensor_count():
    return header(1 << 31, 0)


def oversized_string_length():
    buf = header(1, 0)
    buf += struct.pack("<Q", 1 << 31)
    return pad(buf, 64)


def oversized_array_length():
    buf = header(0, 1)
    buf += length_prefixed(b"k")
    buf += struct.pack("<I", 9)  # value_type = Array
    buf += struct.pack("<I", 0)  # inner type = U8
    buf += struct.pack("<Q", 1 << 31)  # element count
    return pad(buf, 64)


def oversized_n_dimensions():
    buf = header(1, 0)
    buf += length_prefixed(b"t")
    buf += struct.pack("<I", 0xFFFFFFFF)
    return pad(buf, 64)


def deeply_nested_arrays():
    # 256 nested arrays of arrays, well above GGUF_MAX_VALUE_DEPTH (64).
    # Each layer is type=Array(9) + inner_type(u32) + len=1(u64) = 16 bytes
    # except the innermost which terminates with a U8 (type=0) + len=0(u64).
    buf = header(0, 1)
    buf += length_prefixed(b"k")
    buf += struct.pack("<I", 9)  # outer value_type = Array
    for _ in range(256):
        buf += struct.pack("<I", 9)  # inner type = Array
        buf += struct.pack("<Q", 1)  # len = 1
    buf += struct.pack("<I", 0)  # terminal inner type = U8
    buf += struct.pack("<Q", 0)  # terminal len = 0
    return buf


def string_length_above_remaining_file_bytes():
    buf = header(1, 0)
    buf += struct.pack("<Q", 1 << 20)  # 1 MB, below cap, above file size
    return pad(buf, 64)


def test_empty_header_loads():
    cursor = io.BytesIO(header(0, 0))
    content = Content.read(cursor)
    assert not content.metadata
    assert not content.tensor_infos


def test_rejects_oversized_metadata_kv_count():
    assert_rejects(oversized_metadata_kv_count(), "metadata_kv_count")


def test_rejects_oversized_tensor_count():
    assert_rejects(oversized_tensor_count(), "tensor_count")


def test_rejects_oversized_string_length():
    assert_rejects(oversized_string_length(), "string length")


def test_rejects_oversized_array_length():
    assert_rejects(oversized_array_length(), "array length")


def test_rejects_oversized_n_dimensions():
    assert_rejects(oversized_n_dimensions(), "dimensions")


def test_rejects_deeply_nested_arrays():
    assert_rejects(deeply_nested_arrays(), "nesting depth")


def test_rejects_string_length_above_remaining_file_bytes():
    assert_rejects(string_length_above_remaining_file_bytes(), "string length")


@pytest.mark.parametrize(
    ("make", "candlejax_says"),
    [
        (oversized_metadata_kv_count, "header claims 2147483648 metadata entries"),
        (oversized_tensor_count, "header claims 2147483648 tensors"),
        (oversized_string_length, "a string of 2147483648 bytes"),
        (oversized_array_length, "claims 2147483648 elements"),
        (oversized_n_dimensions, "has 4294967295 dims"),
        (deeply_nested_arrays, "nested more than 64 deep"),
        (string_length_above_remaining_file_bytes, "a string of 1048576 bytes"),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_gguf_caps_reject_with_gguf_errors(make, candlejax_says):
    # The same files, each rejected before any allocation with an errors.Gguf in candlejax's wording.
    with pytest.raises(errors.Gguf, match=candlejax_says):
        Content.read(io.BytesIO(make()))


def test_deep_nesting_message_names_the_entry_once():
    with pytest.raises(errors.Gguf) as err:
        Content.read(io.BytesIO(deeply_nested_arrays()))
    msg = str(err.value)
    assert "metadata 'k'" in msg and "[0]" not in msg and len(msg) < 200, msg


def test_empty_v1_header_loads():
    buf = GGUF_MAGIC
    buf += struct.pack("<I", 1)  # version 1: u32 length prefixes
    buf += struct.pack("<I", 0)  # tensor_count
    buf += struct.pack("<I", 0)  # metadata_kv_count
    cursor = io.BytesIO(buf)
    content = Content.read(cursor)
    assert not content.tensor_infos


def test_rejects_tensor_size_exceeding_file():
    # Create a gguf tensor that claims shape [1_073_741_824] F32 (4 GiB), but has no actual tensor data.
    buf = header(1, 0)
    buf += length_prefixed(b"t")
    buf += struct.pack("<I", 1)  # n dims
    buf += struct.pack("<Q", 1_073_741_824)  # 1 GiB elements
    buf += struct.pack("<I", 0)  # F32
    buf += struct.pack("<Q", 0)  # no offset
    cursor = io.BytesIO(buf)
    # Candle: Content::read succeeds and content.tensor(&mut cursor, "t", &Device::Cpu) fails with
    # "... remaining ...". candlejax (documented): every tensor extent is checked against the file size
    # when the header is read, so Content.read itself raises.
    with pytest.raises(errors.Gguf, match=r"tensor 't' data .* extends past the end of the file"):
        Content.read(cursor)


# ------------------------------------------------------------------------------------------------
# serialization_tests.rs (tests/test.npy and tests/test.npz made as Candle's tests/npy.py makes them)
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def npy_files(tmp_path):
    x = np.arange(10)
    np.save(tmp_path / "test.npy", x)
    values = {"x": x, "x_plus_one": x + 1}
    np.savez(tmp_path / "test.npz", **values)
    return tmp_path


def test_npy(npy_files, x64):
    npy = Tensor.read_npy(npy_files / "test.npy")
    assert npy.to_dtype(DType.U8).to_vec1() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_npz(npy_files, x64):
    npz = Tensor.read_npz(npy_files / "test.npz")
    assert len(npz) == 2
    assert npz[0][0] == "x"
    assert npz[1][0] == "x_plus_one"
    assert npz[1][1].to_dtype(DType.U8).to_vec1() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


def test_npy_int64_without_x64_mode(npy_files):
    # Documented: numpy's default int64 needs JAX's x64 mode; without it the read raises NpyX64Error
    # naming both fixes, and dtype= converts while reading.
    assert not cj.x64_enabled()
    with pytest.raises(NpyX64Error, match=r"enable_x64\(\).*dtype=DType\.I32"):
        Tensor.read_npy(npy_files / "test.npy")
    with pytest.raises(NpyX64Error):
        Tensor.read_npz(npy_files / "test.npz")
    npy = Tensor.read_npy(npy_files / "test.npy", dtype=DType.I32)
    assert npy.to_dtype(DType.U8).to_vec1() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    npz = Tensor.read_npz(npy_files / "test.npz", dtype=DType.I32)
    assert [name for name, _ in npz] == ["x", "x_plus_one"]
    assert npz[1][1].to_dtype(DType.U8).to_vec1() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


def test_safetensors(tmp_path):
    tmp_file = tmp_path / "candle-st"
    t = Tensor.arange(0.0, 24.0, Device.Cpu)
    t.save_safetensors("t", tmp_file)
    # Load from file.
    st = cj.safetensors.load(tmp_file, Device.Cpu)
    t2 = st["t"]
    diff = (t - t2).abs().sum_all().to_vec0()
    assert diff == 0.0
    # Load from bytes.
    data = tmp_file.read_bytes()
    st = cj.safetensors.SliceSafetensors(data)
    t2 = st.get("t").load(Device.Cpu)
    diff = (t - t2).abs().sum_all().to_vec0()
    assert diff == 0.0


# ------------------------------------------------------------------------------------------------
# pth_tests.rs (the .pt / .pth files made as Candle's tests/pth.py makes them)
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def pth_files(tmp_path):
    torch = pytest.importorskip("torch")
    a = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    o = collections.OrderedDict()
    o["test"] = a
    torch.save(o, tmp_path / "test.pt")
    torch.save({"model_state_dict": o}, tmp_path / "test_with_key.pt")
    array_fortran = np.asfortranarray(np.arange(1, 2 * 3 * 4 + 1).reshape(2, 3, 4))
    tensor_fortran = torch.from_numpy(array_fortran)
    assert tensor_fortran.stride() == (1, 2, 6)
    torch.save({"tensor_fortran": tensor_fortran}, tmp_path / "fortran_tensor_3d.pth")
    return tmp_path


def test_pth(pth_files, x64):
    # Regression test for pth files not loading on Windows.
    tensors = pth.PthTensors(pth_files / "test.pt", None)
    assert tensors.get("test") is not None


def test_pth_with_key(pth_files, x64):
    tensors = pth.PthTensors(pth_files / "test_with_key.pt", "model_state_dict")
    assert tensors.get("test") is not None


def test_pth_fortran_contiguous(pth_files, x64):
    tensors = pth.PthTensors(pth_files / "fortran_tensor_3d.pth", None)
    tensor = tensors.get("tensor_fortran")

    assert tensor.dims3() == (2, 3, 4)

    assert tensor.to_vec3() == [
        [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]],
        [[13, 14, 15, 16], [17, 18, 19, 20], [21, 22, 23, 24]],
    ]


def test_pth_tensors_infos_missing_names_and_dtype(pth_files):
    tensors = pth.PthTensors(pth_files / "test_with_key.pt", "model_state_dict")
    infos = tensors.tensor_infos()
    assert list(infos) == ["test"]
    assert infos["test"].shape == (2, 4) and infos["test"].dtype == np.int64
    assert tensors.get("nope") is None
    # int64 data without x64 mode: the Tensor.new error, or dtype= converts while reading
    with pytest.raises(errors.UnsupportedDTypeForOp, match="x64"):
        tensors.get("test")
    t = tensors.get("test", dtype=DType.I32)
    assert t.dtype == DType.I32 and t.to_vec2() == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_pth_through_read_all(pth_files, x64):
    # The same files through candlejax.io.pth's read_all / read_all_with_key / load (Candle's
    # pickle::read_all and read_all_with_key), which give numpy arrays.
    tensors = dict(pth.read_all(pth_files / "test.pt"))
    assert tensors["test"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    tensors = dict(pth.read_all_with_key(pth_files / "test_with_key.pt", "model_state_dict"))
    assert tensors["test"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]

    tensor = Tensor.new(pth.load(pth_files / "fortran_tensor_3d.pth")["tensor_fortran"])
    assert tensor.dims3() == (2, 3, 4)
    assert tensor.dtype == DType.I64
    assert tensor.to_vec3() == [
        [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]],
        [[13, 14, 15, 16], [17, 18, 19, 20], [21, 22, 23, 24]],
    ]


def test_candle_module_paths_pickle_and_test_utils(pth_files, x64):
    # Rust's candle::pickle::read_all and candle::test_utils::to_vec1_round by their module paths.
    from candlejax import pickle as candle_pickle
    from candlejax import test_utils

    assert candle_pickle is pth
    tensors = dict(candle_pickle.read_all(pth_files / "test.pt"))
    assert tensors["test"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert test_utils.to_vec1_round(Tensor.new([0.123456, 1.98765]), 3) == [0.123, 1.988]


# ------------------------------------------------------------------------------------------------
# custom_op_tests.rs (ug_op needs a CUDA or Metal device and is not ported)
# ------------------------------------------------------------------------------------------------
def fwd(v, alpha):
    return jnp.where(jnp.signbit(v), (jnp.exp(v) - 1.0) * alpha, v)


def bwd(v, alpha):
    return jnp.where(jnp.signbit(v), jnp.exp(v) * alpha, jnp.ones_like(v))


class Elu:
    """Candle's ``CustomOp1`` ``Elu``, as a Python user would port it: a name and a CPU kernel."""

    def __init__(self, alpha):
        self.alpha = alpha

    def name(self):
        return "elu"

    def cpu_fwd(self, s, layout):
        return np.asarray(fwd(jnp.asarray(s), self.alpha)), layout.shape


ELU_VALUES = [-0.9933, -0.9817, -0.9502, -0.8647, -0.6321, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_custom_op1_no_backward():
    cpu = Device.Cpu
    t = Tensor.arange(0, 12, cpu).to_dtype(DType.F32)
    t = t - 5.0
    # Candle: t.apply_op1_no_bwd(&Elu { alpha: 1. }). candlejax: the op is a JAX function of t.jax.
    elu_t = Tensor.from_jax(jax.lax.stop_gradient(fwd(t.jax, 1.0)))
    assert to_vec1_round(elu_t, 4) == ELU_VALUES


def test_apply_op1_raises_a_candlejax_error_naming_the_replacement():
    t = Tensor.arange(0, 12, CPU).to_dtype(DType.F32)
    names = [f"apply_op{n}{sfx}" for n in (1, 2, 3) for sfx in ("", "_no_bwd", "_arc")]  # custom_op.rs
    for name in names:
        with pytest.raises(cj.Error, match=r"from_jax|custom_vjp"):
            getattr(t, name)(Elu(1.0))
    # raised by the attribute lookup itself, as an AttributeError too (hasattr stays False)
    with pytest.raises(errors.CustomOpName, match=r"Tensor\.from_jax\(f\(t\.jax\)\).*jax\.custom_vjp"):
        _ = t.apply_op1
    assert isinstance(errors.CustomOpName("apply_op1"), AttributeError)
    assert not hasattr(t, "apply_op2_no_bwd")


@jax.custom_vjp
def elu_with_backward(x, alpha):
    return fwd(x, alpha)


def _elu_fwd(x, alpha):
    return fwd(x, alpha), (x, alpha)


def _elu_bwd(res, grad_res):
    arg, alpha = res
    return grad_res * bwd(arg, alpha), None


elu_with_backward.defvjp(_elu_fwd, _elu_bwd)


def test_custom_op1_with_backward():
    cpu = Device.Cpu
    t = Var.new([-2.0, 0.0, 2.0], cpu)
    # Candle: t.apply_op1(EluWithBackward::new(2.)); candlejax: a jax.custom_vjp function.
    elu_t = Tensor.from_jax(elu_with_backward(t.jax, 2.0))
    assert to_vec1_round(elu_t, 4) == [-1.7293, 0.0, 2.0]

    # Candle: elu_t.backward() (seeded with ones); candlejax (documented): gradients come from jax.
    with pytest.raises(errors.TorchName, match="value_and_grad"):
        elu_t.backward()
    grad_x = cj.grad(lambda v: Tensor.from_jax(elu_with_backward(v.jax, 2.0)).sum_all())(t)
    assert to_vec1_round(grad_x, 4) == [0.2707, 1.0, 1.0]


def test_inplace_op1():
    cpu = Device.Cpu
    t = Tensor.arange(0, 12, cpu).to_dtype(DType.F32)
    t = t - 5.0
    # Candle: t.inplace_op1(&Elu { alpha: 1. }) mutates t. candlejax (documented): tensors are immutable;
    # the call raises CandleInPlaceName naming the rebinding.
    with pytest.raises(errors.CandleInPlaceName, match=r"t = f\(t\)"):
        t.inplace_op1(Elu(1.0))
    t = Tensor.from_jax(fwd(t.jax, 1.0))
    assert to_vec1_round(t, 4) == ELU_VALUES


def test_gguf_file_imports_as_in_candle():
    # Rust: use candle_core::quantized::gguf_file::Content;
    from candlejax.quantized.gguf_file import Content as GgufContent

    assert GgufContent is Content


def test_safetensors_view_shape_and_npz_tensors_new(tmp_path):
    # Candle: st.get("t")?.shape() (a &[usize]), npy::NpzTensors::new(path)
    t = Tensor.arange(0.0, 6.0, CPU).reshape((2, 3))
    t.save_safetensors("t", tmp_path / "t.safetensors")
    view = cj.safetensors.MmapedSafetensors.new(tmp_path / "t.safetensors").get("t")
    assert view.shape() == [2, 3] and view.shape().dims2() == (2, 3) and view.shape == (2, 3)
    assert view.dtype() == DType.F32
    Tensor.write_npz([("t", t)], tmp_path / "t.npz")
    npz = cj.npy.NpzTensors.new(tmp_path / "t.npz")
    assert npz.names() == ["t"] and npz.get("t").to_vec2() == t.to_vec2() and npz.get("x") is None
