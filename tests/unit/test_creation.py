"""Tensor creation: constructor dtype inference, constant tensors, ranges, meshgrid, from_*.

References: numpy (float64) and candle-pyo3 (``import candle``) where it has the op.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from candlejax import D, Device, DType, Shape, Tensor, errors

candle = pytest.importorskip("candle")

CPU = Device.Cpu


# --- constructor ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, dtype, shape",
    [
        ([[1.0, 2.0], [3.0, 4.0]], DType.F32, (2, 2)),
        (3.5, DType.F32, ()),
        (3, DType.U32, ()),
        ([1, 2, 3], DType.U32, (3,)),
        ([3.0, 1], DType.F32, (2,)),
        ([True, 2], DType.U32, (2,)),
        ((1.0, 2.0), DType.F32, (2,)),
        ([[[1.0]], [[2.0]]], DType.F32, (2, 1, 1)),
    ],
)
def test_constructor_inference_matches_candle(data, dtype, shape):
    t = Tensor(data)
    assert t.dtype is dtype and t.shape == shape
    c = candle.Tensor(data)
    assert str(c.dtype).lower() == dtype.as_str()
    assert t.values() == c.values()
    assert Tensor.new(data, CPU).dtype is dtype


def test_constructor_negative_int_and_bool():
    assert Tensor(-3).dtype is DType.I32  # I64 in candle-pyo3; I32 without x64 mode
    assert Tensor([-1, 2]).to_vec1() == [-1, 2]
    assert Tensor(True).dtype is DType.U8  # candle-pyo3 gives U32
    assert Tensor([True, False]).to_vec1() == [1, 0]
    with pytest.raises(errors.UnsupportedDTypeForOp, match="x64"):
        Tensor([2**40])
    with pytest.raises(errors.UnsupportedDTypeForOp, match="x64"):
        Tensor([-(2**40)])


def test_constructor_explicit_dtype_and_empty():
    t = Tensor([1, 2, 3], dtype=DType.F32)
    assert t.dtype is DType.F32 and t.to_vec1() == [1.0, 2.0, 3.0]
    assert Tensor([1.0, -2.0], dtype="i32").to_vec1() == [1, -2]
    with pytest.raises(errors.InvalidArgument, match=r"the value 1\.7 is not an integer"):  # truncated to 1 before
        Tensor([1.7, -2.5], dtype="i32")
    e = Tensor([])
    assert e.shape == (0,) and e.dtype is DType.F32
    # float64 data converted by the caller-requested dtype never needs x64
    assert Tensor(np.arange(4.0), dtype=DType.F32).dtype is DType.F32


@pytest.mark.parametrize(
    "data, msg",
    [
        ([[1], [2, 3]], "two elements have different shapes [2] [1]"),
        ([[1, 2], [3]], "two elements have different shapes [1] [2]"),
        ([1, [2]], "two elements have different shapes [1] []"),
        ([[]], "empty array"),
    ],
)
def test_constructor_ragged_and_empty_errors(data, msg):
    with pytest.raises(errors.Msg) as e:
        Tensor(data)
    assert str(e.value) == msg
    if msg.startswith("two") and isinstance(data[0], list):
        with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
            candle.Tensor(data)


@pytest.mark.parametrize("bad", ["a", None, object(), [1, "x"]])
def test_constructor_bad_types(bad):
    with pytest.raises(TypeError, match="incorrect type"):
        Tensor(bad)


def test_bytes_are_u8_as_rusts_vec_u8():
    """``Tensor::from_vec(img.to_rgb8().into_raw(), (h, w, 3), &device)`` (a ``Vec<u8>``) ports as
    ``Tensor.from_vec(img.tobytes(), (h, w, 3), device)``: a U8 tensor of the bytes (it raised)."""
    from PIL import Image

    rgb = np.arange(24, dtype=np.uint8).reshape(2, 4, 3) * 10
    t = Tensor.from_vec(Image.fromarray(rgb).tobytes(), (2, 4, 3), Device.Cpu)
    assert t.dtype is DType.U8 and t.to_vec3() == rgb.tolist()
    assert Tensor.new(b"\x01\xff", Device.Cpu).to_vec1() == [1, 255] and Tensor(bytearray(b"ab")).dtype is DType.U8
    assert Tensor.from_slice(b"\x00\x02", (2, 1), Device.Cpu).to_vec2() == [[0], [2]]
    assert Tensor.new(b"\x05", Device.Cpu, DType.F32).to_vec1() == [5.0]
    with pytest.raises(errors.Error, match="Shape mismatch"):
        Tensor.from_vec(b"abc", (2, 2), Device.Cpu)


@pytest.mark.parametrize("np_dtype, dtype", [(np.float32, DType.F32), (np.float16, DType.F16), (np.uint8, DType.U8),
                                             (np.uint32, DType.U32), (np.int32, DType.I32), (np.int16, DType.I16)])
def test_constructor_numpy_keeps_dtype_and_copies(np_dtype, dtype):
    a = np.arange(6).reshape(2, 3).astype(np_dtype)
    t = Tensor(a)
    assert t.dtype is dtype and t.shape == (2, 3)
    a[0, 0] = 5
    assert t.to_vec2()[0][0] == 0  # the constructor copies


def test_constructor_numpy_64bit_raises_without_x64():
    with pytest.raises(errors.UnsupportedDTypeForOp, match="enable_x64"):
        Tensor(np.ones(3))
    with pytest.raises(errors.UnsupportedDTypeForOp, match="enable_x64"):
        Tensor(np.arange(3))
    with pytest.raises(errors.UnsupportedDTypeForOp):
        Tensor(np.ones(3, np.complex64))
    assert Tensor(np.array([True, False])).dtype is DType.U8


def test_constructor_jax_torch_tensor():
    j = jnp.arange(4, dtype=jnp.float32)
    t = Tensor(j)
    assert t.jax is j and Tensor.from_jax(j).jax is j
    assert Tensor(t).jax is j
    assert Tensor(t, dtype=DType.BF16).dtype is DType.BF16
    assert Tensor.from_jax(jnp.array([True])).dtype is DType.U8
    for tdt, dt in [(torch.float32, DType.F32), (torch.bfloat16, DType.BF16), (torch.int32, DType.I32),
                    (torch.uint8, DType.U8), (torch.bool, DType.U8)]:
        x = torch.arange(6).reshape(2, 3).to(tdt)
        t = Tensor(x)
        assert t.dtype is dt and t.shape == (2, 3)
        np.testing.assert_array_equal(np.asarray(t).astype(np.float32), x.float().numpy())
    x = torch.ones(3, requires_grad=True)
    assert Tensor.from_torch(x * 2).to_vec1() == [2.0, 2.0, 2.0]
    with pytest.raises(errors.UnsupportedDTypeForOp, match="x64"):
        Tensor(torch.arange(3))  # int64
    with pytest.raises(TypeError):
        Tensor.from_torch(np.ones(2))


def test_from_numpy_zero_copy_when_aligned():
    buf = np.empty(64 + 32, np.uint8)
    off = (-buf.ctypes.data) % 64
    a = buf[off : off + 32].view(np.float32)
    a[:] = np.arange(8)
    t = Tensor.from_numpy(a)
    assert t.dtype is DType.F32 and t.to_vec1() == list(range(8))
    with pytest.raises(errors.UnsupportedDTypeForOp):
        Tensor.from_numpy(np.ones(2))


# --- constant tensors -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [DType.F32, DType.U8, DType.U32, DType.BF16, DType.F16, DType.I32])
def test_zeros_ones_match_candle(dtype):
    z = Tensor.zeros((2, 3), dtype, CPU)
    o = Tensor.ones(Shape((2, 3)), dtype, CPU)
    assert z.dtype is dtype and o.dtype is dtype and z.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(z).astype(np.float64), np.zeros((2, 3)))
    np.testing.assert_array_equal(np.asarray(o).astype(np.float64), np.ones((2, 3)))
    if dtype.as_str() in ("f32", "u8", "u32", "bf16", "f16"):
        c = candle.ones((2, 3), dtype=dtype.as_str())
        assert o.values() == c.values()


def test_shapes_and_dtype_strings():
    assert Tensor.zeros(4).shape == (4,)
    assert Tensor.zeros(()).shape == ()
    assert Tensor.ones([2, 1], "u8").dtype is DType.U8
    with pytest.raises(errors.Msg, match="negative dimension"):
        Tensor.zeros((2, -1))
    with pytest.raises(errors.Msg, match="cannot parse"):
        Tensor.zeros((2,), "f31")
    with pytest.raises(errors.UnsupportedDTypeForOp, match="x64"):
        Tensor.zeros((2,), DType.F64)


def test_full_and_like():
    t = Tensor.full(2.5, (2, 2), CPU)
    assert t.dtype is DType.F32 and t.to_vec2() == [[2.5, 2.5], [2.5, 2.5]]
    assert Tensor.full(7, (3,), CPU).dtype is DType.U32
    assert Tensor.full(-7, (3,), CPU).to_vec1() == [-7, -7, -7]
    assert Tensor.full(3, (2,), CPU, dtype=DType.BF16).to_vec1() == [3.0, 3.0]
    x = Tensor.new([[1, 2], [3, 4]], CPU, dtype=DType.U8)
    for like, v in [(x.zeros_like(), 0), (x.ones_like(), 1), (x.full_like(9), 9), (x.empty_like(), 0)]:
        assert like.dtype is DType.U8 and like.shape == (2, 2) and like.to_vec2() == [[v, v], [v, v]]


def test_full_values_beyond_int32():
    """A Python int above 2**31 - 1 (a U32 value, 2**40 for F32) raised jax's OverflowError (the value
    reached the jitted op as int32); Candle's Tensor::full(4_000_000_000u32, ..) and PyTorch build it."""
    assert Tensor.full(4_000_000_000, (2,), CPU, dtype=DType.U32).to_vec1() == [4_000_000_000] * 2
    t = Tensor.full(3_000_000_000, (2,), CPU)
    assert t.dtype is DType.U32 and t.to_vec1() == [3_000_000_000] * 2
    assert Tensor.full(2**40, (1,), CPU, dtype=DType.F32).to_vec1() == [2.0**40]
    assert Tensor.zeros((2,), DType.U32, CPU).full_like(4_294_967_295).to_vec1() == [4_294_967_295] * 2
    assert Tensor.zeros((1,), DType.F32, CPU).full_like(2**31).to_vec1() == [2.0**31]


# --- values given with an integer dtype are never wrapped -------------------------------------------
@pytest.mark.parametrize(
    "make, shown",
    [
        (lambda: Tensor([300], dtype=DType.U8), "the value 300 does not fit the dtype U8 ([0, 255])"),
        (lambda: Tensor([-1], dtype=DType.U32), "the value -1 does not fit the dtype U32"),
        (lambda: Tensor(300, dtype=DType.U8), "the value 300 does not fit"),
        (lambda: Tensor([5e9], dtype=DType.U32), "the value 5000000000.0 does not fit the dtype U32"),
        (lambda: Tensor([1, 2.5], dtype=DType.I32), "the value 2.5 is not an integer"),
        (lambda: Tensor([300.5, -1.5, 1e10], dtype=DType.U8), "the value 300.5 is not an integer"),
        (lambda: Tensor([float("nan")], dtype=DType.U8), "the value nan is not an integer"),
        (lambda: Tensor(np.array([2**40, 1]), dtype=DType.I32), "the value 1099511627776 does not fit the dtype I32"),
        (lambda: Tensor(np.array([300.5, 1.0]), dtype=DType.U8), "the value 300.5 does not fit the dtype U8"),
        (lambda: Tensor(np.array([np.nan], np.float32), dtype=DType.U8), "the value nan does not fit"),
        (lambda: Tensor(torch.tensor([300], dtype=torch.int32), dtype=DType.U8), "the value 300 does not fit"),
        (lambda: Tensor.new([256, 1], CPU, dtype=DType.U8), "new: the value 256 does not fit"),
        (lambda: Tensor.from_vec([1, -1], (2,), CPU, dtype=DType.U8), "from_vec: the value -1 does not fit"),
        (lambda: Tensor.full(300, (3,), CPU, dtype=DType.U8), "full: the value 300 does not fit the dtype U8"),
        (lambda: Tensor.full(1e10, (3,), CPU, dtype=DType.U32), "full: the value 10000000000.0 does not fit"),
        (lambda: Tensor.full(2.5, (3,), CPU, dtype=DType.I32), "full: the value 2.5 is not an integer"),
        (lambda: Tensor(np.zeros(2, np.uint8)).full_like(300), "full_like: the value 300 does not fit the dtype U8"),
        (lambda: Tensor(np.zeros(2, np.uint8)).full_like(-1), "full_like: the value -1 does not fit"),
    ],
)
def test_values_that_the_integer_dtype_cannot_hold_raise(make, shown):
    """300 in U8 wrapped to 44; PyTorch raises ``value cannot be converted to type uint8 without
    overflow`` for Python data and full. to_dtype keeps its saturating conversion."""
    with pytest.raises(errors.InvalidArgument, match=re.escape(shown)):
        make()


def test_values_that_the_integer_dtype_holds_are_kept():
    assert Tensor([0, 255], dtype=DType.U8).to_vec1() == [0, 255]
    assert Tensor([1.0, 2.0], dtype=DType.U32).to_vec1() == [1, 2]
    assert Tensor([True, False], dtype=DType.U8).to_vec1() == [1, 0]
    assert Tensor([-(2**31), 2**31 - 1], dtype=DType.I32).to_vec1() == [-(2**31), 2**31 - 1]
    assert Tensor(np.array([1, 255]), dtype=DType.U8).to_vec1() == [1, 255]
    # a numpy float array converts as astype / to_dtype do: fractions truncate toward zero
    assert Tensor(np.array([1.5, 255.9, -0.5]), dtype=DType.U8).to_vec1() == [1, 255, 0]
    assert Tensor(np.array([1, 2], np.uint8), dtype=DType.I32).to_vec1() == [1, 2]
    assert Tensor.full(2.0, (2,), CPU, dtype=DType.U32).to_vec1() == [2, 2]
    assert Tensor.full(255, (2,), CPU, dtype=DType.U8).to_vec1() == [255, 255]
    assert Tensor([300.5, -1.5, 1e10]).to_dtype(DType.U8).to_vec1() == [255, 0, 255]  # to_dtype saturates


# --- ranges -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [(0, 5, 1), (2, 9, 3), (5, 0, -1), (5, -3, -2), (0, 0, 1), (3, 1, 1), (0.0, 1.0, 0.25), (1.0, -1.0, -0.3),
     (0.5, 3.0, 1)],
)
def test_arange_step_matches_numpy(args):
    start, end, step = args
    t = Tensor.arange_step(start, end, step, CPU)
    ref = np.arange(start, end, step, dtype=np.float64)
    np.testing.assert_allclose(np.asarray(t, np.float64), ref, rtol=1e-6, atol=1e-6)
    if all(isinstance(a, int) for a in args):
        assert t.dtype is (DType.U32 if min(start, end) >= 0 else DType.I32)
    else:
        assert t.dtype is DType.F32


def test_arange_candle_and_errors():
    assert Tensor.arange(0, 6, CPU).to_vec1() == list(range(6))
    assert Tensor.arange(0.0, 3.0, CPU).to_vec1() == [0.0, 1.0, 2.0]
    assert Tensor.arange(0, 4, CPU, dtype=DType.F32).dtype is DType.F32
    with pytest.raises(errors.Msg, match=r"^step cannot be zero$"):
        Tensor.arange_step(0, 5, 0, CPU)
    with pytest.raises(errors.Msg, match="Python number"):
        jax.jit(lambda n: Tensor.arange(0, n, CPU))(3)
    for bad, name in (((0, float("inf")), "end"), ((0, float("nan")), "end"), ((float("-inf"), 0), "start")):
        with pytest.raises(errors.InvalidArgument, match=f"arange: {name} must be a finite number, got"):
            Tensor.arange(*bad, CPU)
    with pytest.raises(errors.InvalidArgument, match="arange: step must be a finite number, got nan"):
        Tensor.arange_step(0, 1, float("nan"), CPU)


@pytest.mark.parametrize("dt", [DType.F16, DType.BF16], ids=str)
def test_arange_half_rounds_each_element_once(dt):
    # start + i * step evaluated in f32 and rounded once; in the half dtype the step, the index and
    # the product were each rounded (f16 arange_step(0, 1, 0.1)[3] was 0.2998, the nearest f16 to 0.3 is 0.30005)
    nd = dt.np
    ranges = ((0.0, 1.0, 0.1), (-5.0, 5.0, 0.37), (100.0, 200.0, 0.3), (0.001, 0.002, 1e-5), (1000, 1300, 1))
    for start, end, step in ranges:
        t = Tensor.arange_step(start, end, step, CPU, dtype=dt)
        assert t.dtype is dt
        want = (start + np.arange(t.shape[0]) * step).astype(nd).astype(np.float64)
        assert t.shape[0] == len(np.arange(start, end, step))
        np.testing.assert_array_equal(np.asarray(t.to_dtype(DType.F32), np.float64), want, err_msg=str((start, step)))


def test_arange_integer_dtype_never_wraps():
    assert Tensor.arange(0, 256, CPU, dtype=DType.U8).to_vec1()[-1] == 255
    assert Tensor.arange_step(10, 0, -3, CPU, dtype=DType.U32).to_vec1() == [10, 7, 4, 1]
    with pytest.raises(errors.InvalidArgument, match=r"arange: the value 299 does not fit the dtype U8 \(\[0, 255\]\)"):
        Tensor.arange(0, 300, CPU, dtype=DType.U8)  # PyTorch wraps to 0..255, 0..43
    with pytest.raises(errors.InvalidArgument, match="arange: the value -3 does not fit the dtype U32"):
        Tensor.arange_step(-3, 3, 2, CPU, dtype=DType.U32)  # was numpy's OverflowError
    assert Tensor.arange(0, 0, CPU, dtype=DType.U8).shape == (0,)


def test_arange_float_bounds_with_integer_dtype():
    """Float start / step with an integer dtype: integral values are exact and range-checked as int
    ones (250.0..260.0 as U8 wrapped to 0..3, -2.0.. as U32 gave 0, 1, 2, 3, and a start above 2**24
    was rounded through f32); a fractional start or step raises (0.5 steps gave all zeros)."""
    assert Tensor.arange(-2.0, 2.0, CPU, dtype=DType.I32).to_vec1() == [-2, -1, 0, 1]
    assert Tensor.arange(16777217.0, 16777220.0, CPU, dtype=DType.I32).to_vec1() == [16777217, 16777218, 16777219]
    assert Tensor.arange_step(5.0, 0, -2.0, CPU, dtype=DType.U32).to_vec1() == [5, 3, 1]
    assert Tensor.arange_step(0, 2.5, 1, CPU, dtype=DType.I32).to_vec1() == [0, 1, 2]
    with pytest.raises(errors.InvalidArgument, match="arange: the value 259 does not fit the dtype U8"):
        Tensor.arange_step(250.0, 260.0, 1.0, CPU, dtype=DType.U8)
    with pytest.raises(errors.InvalidArgument, match="arange: the value -2 does not fit the dtype U32"):
        Tensor.arange(-2.0, 2.0, CPU, dtype=DType.U32)
    with pytest.raises(errors.InvalidArgument, match=r"arange: the value 0\.5 is not an integer"):
        Tensor.arange_step(0.0, 3.0, 0.5, CPU, dtype=DType.I32)


def test_eye_tril_triu():
    np.testing.assert_array_equal(np.asarray(Tensor.eye(4, DType.F32, CPU)), np.eye(4))
    np.testing.assert_array_equal(np.asarray(Tensor.tril2(4, DType.U8, CPU)), np.tril(np.ones((4, 4))))
    np.testing.assert_array_equal(np.asarray(Tensor.triu2(4, DType.F32, CPU)), np.triu(np.ones((4, 4))))
    assert Tensor.eye(3, DType.U32, CPU).dtype is DType.U32
    with pytest.raises(errors.Msg):
        Tensor.eye(-1, DType.F32, CPU)
    # a bool or a float is not a size (True gave the 1 x 1 identity)
    for f in (Tensor.eye, Tensor.tril2, Tensor.triu2):
        for n, shown in ((True, "True (bool)"), (2.5, "2.5 (float)")):
            with pytest.raises(errors.NotAnInteger, match=re.escape(f"{f.__name__}: n must be an int, got {shown}")):
                f(n, DType.F32, CPU)
    assert Tensor.eye(np.int64(2), DType.F32, CPU).shape == (2, 2)


def test_meshgrid():
    x = Tensor.new([1.0, 2.0, 3.0], CPU)
    y = Tensor.new([4.0, 5.0], CPU)
    xy = Tensor.meshgrid([x, y], True)
    ij = Tensor.meshgrid([x, y], False)
    for got, want in zip(xy + ij, np.meshgrid([1.0, 2.0, 3.0], [4.0, 5.0]) + np.meshgrid(
            [1.0, 2.0, 3.0], [4.0, 5.0], indexing="ij")):
        np.testing.assert_array_equal(np.asarray(got), want)
    z = Tensor.new([7.0, 8.0, 9.0, 10.0], CPU)
    assert Tensor.meshgrid([x, y, z], True)[0].shape == (2, 3, 4)  # numpy "xy"
    with pytest.raises(errors.OpRequiresAtLeastTwoTensors, match="meshgrid expects at least two tensors"):
        Tensor.meshgrid([x], False)
    with pytest.raises(errors.UnexpectedNumberOfDims):
        Tensor.meshgrid([x, Tensor.zeros((2, 2))], False)
    with pytest.raises(errors.DTypeMismatchBinaryOp):
        Tensor.meshgrid([x, Tensor.new([1, 2], CPU)], False)


def test_from_vec_slice_iter():
    t = Tensor.from_vec([1, 2, 3, 4, 5, 6], (2, ()), CPU)
    assert t.shape == (2, 3) and t.dtype is DType.U32 and t.to_vec2() == [[1, 2, 3], [4, 5, 6]]
    assert Tensor.from_vec([1.0, 2.0, 3.0, 4.0], (-1, 2), CPU).shape == (2, 2)
    with pytest.raises(errors.ShapeMismatch, match=r"got buffer of size 5 which is compatible with shape \[2, 3\]"):
        Tensor.from_vec([1, 2, 3, 4, 5], (2, 3), CPU)
    with pytest.raises(errors.Msg, match=r"cannot reshape tensor with 7 elements to \(2, \(\)\)"):
        Tensor.from_vec(list(range(7)), (2, ()), CPU)
    assert Tensor.from_slice([1.0, 2.0], (2, 1), CPU).shape == (2, 1)
    with pytest.raises(errors.ShapeMismatch):
        Tensor.from_slice([1.0, 2.0], (3,), CPU)
    assert Tensor.from_iter(range(4), CPU).to_vec1() == [0, 1, 2, 3]
    assert Tensor.from_iter((x * 0.5 for x in range(3)), CPU).dtype is DType.F32
    with pytest.raises(errors.Msg):
        Tensor.from_iter([[1], [2]], CPU)


# --- under jit ----------------------------------------------------------------------------------
def test_creation_under_jit():
    @jax.jit
    def f(x):
        z = Tensor.zeros((2, 3), DType.F32, CPU)
        o = x.ones_like()
        a = Tensor.arange(0, 3, CPU, dtype=DType.F32)
        e = Tensor.eye(3, DType.F32, CPU)
        return Tensor(z.jax + o.jax + a.jax + e.jax[:2] + x.jax)

    out = f(Tensor.new([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]], CPU))
    ref = np.zeros((2, 3)) + 1 + np.arange(3) + np.eye(3)[:2] + np.array([[1.0] * 3, [2.0] * 3])
    np.testing.assert_allclose(np.asarray(out), ref)
    assert f(Tensor.zeros((2, 3))).dtype is DType.F32


def test_f32_and_bf16_stay():
    for dt in (DType.F32, DType.BF16):
        assert Tensor.zeros((2,), dt).dtype is dt
        assert Tensor.full(1.5, (2,), CPU, dtype=dt).dtype is dt
        assert Tensor.randn(0.0, 1.0, (2,), CPU, key=0, dtype=dt).dtype is dt
        assert Tensor.arange(0.0, 2.0, CPU, dtype=dt).dtype is dt


def test_devices_cuda_if_available_is_cpu_here():
    dev = Device.cuda_if_available(0)
    t = Tensor.zeros((2,), DType.F32, dev)
    assert t.device == dev
    assert Tensor.new([1.0], "cpu").device == CPU
    assert D.Minus1 is not None  # imported for completeness of the public surface
