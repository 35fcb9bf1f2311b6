"""Conversions: to_dtype, to_device, host values (to_vec*, values, item), numpy/torch/DLPack, repr.

The Display format is compared character for character with candle-pyo3.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from candlejax import Device, DType, Tensor, errors
from candlejax.tensor import convert

candle = pytest.importorskip("candle")

CPU = Device.Cpu
_CANDLE_DT = {"float32": "f32", "uint8": "u8", "uint32": "u32", "float16": "f16", "bfloat16": "bf16"}


def _candle(a: np.ndarray):
    if a.size == 0:
        return candle.zeros(a.shape, dtype=_CANDLE_DT[str(a.dtype)])
    t = candle.Tensor(a.item()) if a.ndim == 0 else candle.Tensor(a.astype(np.float64).reshape(-1).tolist())
    if a.ndim:
        t = t.reshape(a.shape)
    return t.to_dtype(_CANDLE_DT[str(a.dtype)])


def _cases() -> list[np.ndarray]:
    r = np.random.default_rng(0)
    f32 = np.float32
    return [
        np.array([[1.0, 2.0], [3.0, 4.0]], f32),
        np.float32(3.5),
        np.float32(-2.0),
        np.array([1.5, -2.25, 3e-5], f32),
        np.array([1e10, 2.0], f32),
        np.array([np.nan, np.inf, -np.inf, 1.0], f32),
        np.array([np.nan, 0.5], f32),
        r.standard_normal((40, 40)).astype(f32),
        r.standard_normal(4000).astype(f32),
        r.standard_normal((3, 4, 5)).astype(f32),
        r.standard_normal((2, 3, 4, 5)).astype(f32),
        (r.standard_normal((12, 12, 12)) * 100).astype(f32),
        r.standard_normal((7, 200)).astype(f32),
        np.array([123456.0, 1.0], f32),
        np.array([-0.0, 1.5], f32),
        np.zeros(2, f32),
        np.arange(30, dtype=f32) * 0.37,
        np.arange(100, dtype=np.uint32),
        np.zeros((0,), f32),
        np.zeros((2, 0), f32),
        np.array([[1, 255], [3, 4]], np.uint8),
        r.integers(0, 10**6, (50, 30)).astype(np.uint32),
        np.array([0.5, 1.25, -3.0], np.float16),
        np.array([[1.0, 2.5], [3.0, 4.0]], f32).astype(jnp.bfloat16),
    ]


@pytest.mark.parametrize("i", range(len(_cases())))
def test_display_matches_candle(i):
    a = _cases()[i]
    t = Tensor(a)
    assert repr(t) == repr(_candle(a))
    assert str(t) == repr(t)


def test_display_simple_and_options():
    t = Tensor.new([[1.0, 2.0], [3.0, 4.0]], CPU)
    assert str(t) == "[[1., 2.],\n [3., 4.]]\nTensor[[2, 2], f32]"
    assert repr(Tensor(3.5)) == "[3.5000]\nTensor[[], f32]"
    assert repr(Tensor([-1, 2, 3])) == "[-1,  2,  3]\nTensor[[3], i32]"
    try:
        convert.set_print_options(precision=2)
        assert repr(Tensor([0.125, 0.5])) == "[0.12, 0.50]\nTensor[[2], f32]"
        convert.set_print_options_full()
        assert "..." not in repr(Tensor.zeros(2000))
        convert.set_print_options_short()
        assert repr(Tensor.arange(0, 2000, CPU)).startswith("[   0,    1, ..., 1998, 1999]")
    finally:
        convert.set_print_options_default()
    assert convert.print_options().precision == 4
    assert f"{Tensor(2.5):.1f}" == "2.5"


def test_repr_under_jit_and_pretty():
    seen = []

    @jax.jit
    def f(x):
        seen.append(repr(x))
        return x

    f(Tensor.zeros((2, 2)))
    assert seen == ["Traced<Tensor[[2, 2], f32]>"]

    class P:
        def __init__(self):
            self.out = ""

        def text(self, s):
            self.out += s

    p = P()
    Tensor([1.0])._repr_pretty_(p, False)
    assert p.out == "[1.]\nTensor[[1], f32]"


# --- to_dtype ---------------------------------------------------------------------------------------
def test_to_dtype_matches_candle_truncation_and_saturation():
    vals = [-1.5, 2.7, 300.0, 1e10, float("nan")]
    t = Tensor(vals)
    c = candle.Tensor(vals)
    for dt in ("u8", "u32"):
        assert t.to_dtype(dt).to_vec1() == c.to_dtype(dt).values()
    assert t.to_dtype(DType.I32).to_vec1() == [-1, 2, 300, 2**31 - 1, 0]
    assert Tensor([1, 2, 3]).to_dtype("f32").to_vec1() == [1.0, 2.0, 3.0]
    x = Tensor([1.0, 2.0])
    assert x.to_dtype(DType.F32) is x
    assert x.to_dtype("bf16").dtype is DType.BF16
    with pytest.raises(errors.UnsupportedDTypeForOp, match="x64"):
        x.to_dtype(DType.F64)
    with pytest.raises(errors.Msg, match="cannot parse"):
        x.to_dtype("float33")
    # None is not a dtype (numpy reads it as float64); candle-pyo3 raises a TypeError:
    # "'NoneType' object cannot be converted to 'DType'"
    with pytest.raises(errors.ArgumentType, match=r"to_dtype: dtype must be a DType .* got None"):
        x.to_dtype(None)
    with pytest.raises(TypeError):
        x.to_dtype(None)
    # int -> int wraps like Rust `as`
    assert Tensor([-1]).to_dtype("u32").to_vec1() == [2**32 - 1]
    assert Tensor([300]).to_dtype("u8").to_vec1() == [44]


def test_to_dtype_under_jit_and_grad():
    f = jax.jit(lambda t: t.to_dtype(DType.BF16))
    assert f(Tensor([1.0, 2.0])).dtype is DType.BF16
    g = jax.grad(lambda a: Tensor(a).to_dtype("f16").jax.astype(jnp.float32).sum())(jnp.ones(3))
    np.testing.assert_array_equal(np.asarray(g), np.ones(3))


def test_to_device_detach_copy_to():
    x = Tensor([1.0, 2.0])
    assert x.to_device(CPU) is x
    assert x.to_device(Device.cuda_if_available(0)) is x  # CPU-only machine
    assert x.to_device("cpu") is x
    d = x.detach()
    assert d.to_vec1() == [1.0, 2.0]
    g = jax.grad(lambda a: (Tensor(a).detach().jax * a).sum())(jnp.ones(2))
    np.testing.assert_array_equal(np.asarray(g), np.ones(2))  # the detached factor has no gradient
    c = x.copy()
    assert c.to_vec1() == x.to_vec1() and c.jax is not x.jax
    assert x.to("bf16").dtype is DType.BF16
    assert x.to(DType.U8, CPU).dtype is DType.U8
    assert x.to(Tensor([1], dtype="u32")).dtype is DType.U32
    assert x.to(dtype="f16", device="cpu").dtype is DType.F16
    with pytest.raises(TypeError):
        x.to(3.5)


# --- host values ------------------------------------------------------------------------------------
def test_to_vec_values_match_candle():
    data = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]]
    t, c = Tensor(data), candle.Tensor(data)
    assert t.to_vec2() == c.values() == t.values() == t.to_list() == t.tolist()
    assert Tensor(data[0]).to_vec1() == c.values()[0]
    assert Tensor([[[1, 2]], [[3, 4]]]).to_vec3() == [[[1, 2]], [[3, 4]]]
    assert Tensor(3.0).to_vec0() == 3.0 == Tensor(3.0).to_scalar()
    assert Tensor([0.1]).to_vec1() == candle.Tensor([0.1]).values()  # exact f32 value
    v = Tensor([1.5], dtype="bf16").to_vec1()
    assert v == [1.5] and type(v[0]) is float
    assert type(Tensor([3]).to_vec1()[0]) is int
    assert Tensor(np.zeros((1, 1, 1, 2), np.float32)).values() == [[[[0.0, 0.0]]]]  # any rank


def test_to_vec_errors():
    t = Tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    with pytest.raises(errors.UnexpectedNumberOfDims, match=r"unexpected rank, expected: 1, got: 2 \(\[2, 3\]\)"):
        t.to_vec1()
    with pytest.raises(errors.UnexpectedNumberOfDims):
        t.to_vec3()
    with pytest.raises(errors.UnexpectedNumberOfDims):
        t.to_scalar()
    with pytest.raises(errors.UnexpectedDType, match="expected: U32, got: F32"):
        t.to_vec2(dtype=DType.U32)
    assert t.to_vec2(dtype="f32") == t.to_vec2()
    with pytest.raises(errors.Msg, match="one element"):
        t.item()
    assert Tensor([[7]]).item() == 7
    assert float(Tensor([2.5])) == 2.5 and int(Tensor(3)) == 3


def test_host_conversion_under_trace_raises():
    for name in ("to_vec1", "values", "item", "numpy", "to_list", "to_torch"):

        def f(x, name=name):
            return getattr(x, name)()

        with pytest.raises(errors.TracingError, match="traced"):
            jax.jit(f)(Tensor([1.0]))


def test_truth_value_under_trace():
    """``if t > 0:`` under jit / vmap raises naming where_cond (JAX's TracerArrayConversionError before);
    under jax.grad alone the value is known, as for jax arrays."""

    def f(x):
        return x * 2 if x > 0 else x

    for transform in (jax.jit, jax.vmap):
        with pytest.raises(errors.TracingError, match="where_cond"):
            transform(f)(Tensor([1.0]))
    assert jax.grad(lambda x: f(Tensor(x)).sum_all().jax)(jnp.float32(3.0)) == 2.0
    assert bool(Tensor(1.0) > 0) and not Tensor([0])


# --- numpy / torch / dlpack -------------------------------------------------------------------------
def test_numpy_torch_dlpack_roundtrip():
    t = Tensor.new([[1.0, 2.0], [3.0, 4.0]], CPU)
    n = t.numpy()
    assert n.dtype == np.float32 and n.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert np.asarray(t).shape == (2, 2)
    for dt in ("f32", "bf16", "u8", "u32", "i32", "f16"):
        x = t.to_dtype(dt)
        tt = x.to_torch()
        assert isinstance(tt, torch.Tensor) and tuple(tt.shape) == (2, 2)
        back = Tensor.from_torch(tt)
        assert back.dtype is x.dtype and back.to_vec2() == x.to_vec2()
    tt = torch.from_dlpack(t)
    assert tt.tolist() == t.to_vec2()
    assert t.__dlpack_device__() == tt.__dlpack_device__()
    assert Tensor(jnp.from_dlpack(t)).to_vec2() == t.to_vec2()


def test_np_array_copies_as_for_a_jax_array():
    """``np.array(t)`` (numpy's ``copy=True``) is a fresh writable array, as ``np.array(jax_array)``;
    writing into it (or into ``torch.from_numpy`` of it) leaves the Tensor as it was."""
    t = Tensor.new([1.0, 2.0, 3.0], CPU)
    ref = np.array(jnp.asarray([1.0, 2.0, 3.0]))
    for a in (np.array(t), np.array(t, copy=True), np.array(t, dtype=np.float32)):
        assert a.flags.writeable == ref.flags.writeable and not np.shares_memory(a, np.asarray(t))
        a[0] = 100.0
        torch.from_numpy(a).add_(1.0)
    assert t.to_vec1() == [1.0, 2.0, 3.0]
    assert np.asarray(t).dtype == np.float32 and np.array(t, dtype=np.float64).dtype == np.float64


def test_dtype_compares_equal_to_numpy_and_jax_dtypes():
    """``x.dtype == jnp.float32`` is what a JAX user writes (``jnp.asarray(x).dtype == jnp.float32``
    is True): a DType equals the numpy / jax.numpy dtype it holds, and no other."""
    for dt in ("f32", "bf16", "f16", "u8", "u32", "i32"):
        t = Tensor.new([[1.0, 2.0]], CPU).to_dtype(dt)
        a = jnp.asarray(t)
        assert t.dtype == a.dtype and t.dtype == np.dtype(a.dtype) and t.dtype == jnp.dtype(a.dtype).type
        assert not (t.dtype != a.dtype)
    f32 = Tensor.new([1.0], CPU).dtype
    assert f32 == jnp.float32 and f32 == np.float32 and f32 == np.dtype("float32")
    assert f32 != jnp.bfloat16 and f32 != np.float64 and f32 != np.dtype("int32") and not f32.__eq__(float)
    assert DType.BF16 == jnp.bfloat16 and DType.U8 != np.bool_ and DType.F32 != Tensor.new([1.0], CPU)


def test_tensor_file_methods_round_trip(tmp_path):
    import numpy as np
    import safetensors.numpy as stn

    from candlejax import Tensor

    t = Tensor.new(np.arange(6, dtype=np.float32).reshape(2, 3))
    t.save_safetensors("w", tmp_path / "t.safetensors")
    np.testing.assert_array_equal(stn.load_file(str(tmp_path / "t.safetensors"))["w"], np.asarray(t))
    t.write_npy(tmp_path / "t.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), np.asarray(t))
    np.testing.assert_array_equal(np.asarray(Tensor.read_npy(tmp_path / "t.npy")), np.asarray(t))
    Tensor.write_npz([("a", t), ("b", t * 2.0)], tmp_path / "ab.npz")
    names = [n for n, _ in Tensor.read_npz(tmp_path / "ab.npz")]
    assert names == ["a", "b"]
    (b,) = Tensor.read_npz_by_name(tmp_path / "ab.npz", ["b"])
    np.testing.assert_array_equal(np.asarray(b), np.asarray(t) * 2)


def test_display_summarised_reads_only_the_shown_values():
    # a summarised bf16 tensor prints as candle-pyo3 does, without converting every value to f32
    import tracemalloc

    r = np.random.default_rng(1)
    small = r.standard_normal((3, 40, 50)).astype(np.float32).astype(jnp.bfloat16)
    assert repr(Tensor(small)) == repr(_candle(small))
    edge = np.array([[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14]], np.float32)
    convert.set_print_options(threshold=5)
    try:  # a dim of exactly 2 * edge_items is shown whole, a longer one is cut
        assert repr(Tensor(edge)) == (
            "[[ 1.,  2.,  3., ...,  5.,  6.,  7.],\n [ 8.,  9., 10., ..., 12., 13., 14.]]\nTensor[[2, 7], f32]"
        )
    finally:
        convert.set_print_options_default()
    big = Tensor.zeros((4, 1000, 1000), "bf16")  # 8 MB; its f32 copy would be 16 MB
    tracemalloc.start()
    try:
        s = repr(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert s.endswith("Tensor[[4, 1000, 1000], bf16]") and "..." in s
    assert peak < 1_000_000
    x = np.arange(8 * 3 * 9).reshape(8, 3, 9)  # an accelerator's large array is cut on its device
    np.testing.assert_array_equal(np.asarray(convert._summarized(jnp.asarray(x), 3)), convert._summarized(x, 3))
