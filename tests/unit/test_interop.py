"""Moving data between candlejax and torch / numpy / candle-pyo3, checked against what torch and
candle-pyo3 give for the same data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from candlejax import DType, Tensor, errors


def test_tensor_of_a_torch_tensor_is_a_copy_as_torch_tensor():
    """``Tensor(x)`` / ``Tensor.new(x)`` copy, as ``torch.tensor(x)``: writing into ``x`` afterwards
    leaves the Tensor as it was (JAX arrays are immutable; a shared buffer would change under it)."""
    for make in (Tensor, Tensor.new):
        x = torch.zeros(3)
        ref = x.detach().clone()  # what torch.tensor(x) gives
        t = make(x)
        x[0] = 5.0
        assert t.to_vec1() == ref.tolist() == [0.0, 0.0, 0.0]
    x = torch.zeros(2, 3).t()  # non-contiguous (one copy from .contiguous())
    t = Tensor(x)
    x[0, 0] = 5.0
    assert t.to_vec2() == [[0.0, 0.0]] * 3


def test_torch_negative_and_conjugate_views_keep_their_values():
    """A torch tensor with the negative bit set (a lazy ``neg``) reads as its values, as
    ``x.resolve_neg().numpy()`` does; DLPack alone exports the buffer without the sign."""
    x = torch.arange(1.0, 4.0)._neg_view()
    assert x.is_neg()
    want = x.resolve_neg().tolist()
    assert want == [-1.0, -2.0, -3.0]
    assert Tensor(x).to_vec1() == want
    assert Tensor.from_torch(x).to_vec1() == want
    assert Tensor(x.conj()).to_vec1() == want


def test_torch_tensors_without_data_raise_candlejax_errors():
    """A meta tensor has no values (torch: ``Cannot copy out of meta tensor``), a sparse one no strided
    buffer: both raise a candlejax error naming the tensor kind, not torch's NotImplementedError."""
    with pytest.raises(errors.Error, match="meta"):
        Tensor(torch.ones(3, device="meta"))
    with pytest.raises(errors.Error, match="meta"):
        Tensor.from_torch(torch.ones(3, device="meta"))
    with pytest.raises(errors.Error, match="to_dense"):
        Tensor(torch.eye(2).to_sparse())


def test_operators_with_a_torch_tensor_raise_a_candlejax_error():
    """``t + torch_tensor`` (either side) raises a candlejax error naming the torch tensor, as
    ``t + np_array`` does, not Python's ``unsupported operand type(s) for +: 'Tensor' and 'Tensor'``
    (torch itself refuses ``torch_tensor + jax_array`` with a TypeError)."""
    t = Tensor([1.0, 2.0, 3.0])
    x = torch.ones(3)
    for f in (lambda: t + x, lambda: x + t, lambda: t * x, lambda: x - t, lambda: t < x):
        with pytest.raises(errors.Error, match=r"torch\.Tensor of shape \[3\].*Tensor\(\.\.\.\)"):
            f()


def test_jax_tree_functions_that_give_numpy_leaves_give_working_tensors():
    """``jax.device_get(t)`` and ``jax.tree.map(np.asarray, tree)`` hand numpy leaves back to the Tensor
    node: the result is a Tensor with the values, dtype and shape ``jax.device_get`` gives for the jax
    array (its repr, device and ops work), not a Tensor around an ndarray."""
    import jax
    import jax.numpy as jnp

    for dt in ("f32", "bf16", "u8", "i32"):
        t = Tensor([[1.0, 2.0, 3.0]]).to_dtype(dt)
        ref = jax.device_get(jnp.asarray(t))
        for got in (jax.device_get(t), jax.tree.map(np.asarray, {"w": t})["w"]):
            assert isinstance(got, Tensor) and isinstance(got.jax, jax.Array)
            assert got.dtype == ref.dtype and got.shape == ref.shape
            assert np.asarray(got, np.float64).tolist() == ref.astype(np.float64).tolist()
            assert got.device == t.device and repr(got) == repr(t)
            assert (got + got).to_vec2() == (t + t).to_vec2()
    shape = jax.eval_shape(lambda x: x * 2, Tensor([1.0, 2.0]))  # non-array leaves stay as they are
    assert isinstance(shape.jax, jax.ShapeDtypeStruct)


def test_iterating_a_0d_tensor_raises_type_error_as_torch_and_numpy():
    """``for x in t`` walks dim 0 (``t[0]``, ``t[1]``, ...), as torch and numpy; on a 0-d tensor it raises
    a TypeError as ``iter(torch.tensor(3.0))`` / ``iter(np.array(3.0))`` do (candle-pyo3 panics)."""
    for ref in (torch.tensor(3.0), np.array(3.0)):
        with pytest.raises(TypeError, match="iteration over a 0-d"):
            iter(ref)
    with pytest.raises(errors.ArgumentType, match="iteration over a 0-d tensor"):
        iter(Tensor(3.0))
    rows = list(Tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert [r.to_vec1() for r in rows] == torch.tensor([[1.0, 2.0], [3.0, 4.0]]).tolist()
    a, b = Tensor([5, 6])
    assert (a.to_scalar(), b.to_scalar()) == (5, 6) and list(Tensor.zeros((0, 2))) == []


def test_from_jax_takes_numpy_arrays_as_jax_functions_do_and_names_other_types():
    """``Tensor.from_jax(np_array)`` is the Tensor of ``jnp.asarray(np_array)`` (JAX functions take numpy
    arrays), not a Tensor around an ndarray; a torch tensor raises ``ArgumentType`` naming ``from_torch``."""
    import jax
    import jax.numpy as jnp

    # numpy's default int64 / float64 too: jnp.asarray's dtype (i32 / f32 without x64 mode)
    for a in (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], np.uint8), np.float32(2.5),
              np.array([[1, 5, 7]]), np.array([0.5, 1.5]), np.int64(3)):  # fmt: skip
        ref = jnp.asarray(a)
        t = Tensor.from_jax(a)
        assert isinstance(t.jax, jax.Array) and t.dtype == ref.dtype and t.shape == ref.shape
        assert np.asarray(t).tolist() == np.asarray(ref).tolist() and repr(t) == repr(Tensor.from_jax(ref))
    assert Tensor.from_jax(np.array([True, False])).to_vec1() == [1, 0]
    with pytest.raises(errors.ArgumentType, match="from_torch"):
        Tensor.from_jax(torch.ones(3))


def test_lists_of_bf16_tensors_and_arrays_read_as_f16_ones_do():
    """``Tensor([a, b])`` of bf16 Tensors / jax arrays gives the values numpy reads
    (``np.array([a, b])``), with the float inference f16 elements get (F32), instead of
    ``incorrect type <class 'ml_dtypes.bfloat16'>``."""
    import jax.numpy as jnp

    b = Tensor([1.5, 2.5]).to_dtype("bf16")
    h = Tensor([1.5, 2.5]).to_dtype("f16")
    want = np.array([np.asarray(b), np.asarray(b)]).astype(np.float64).tolist()
    assert Tensor([h, h]).dtype == DType.F32
    for data in ([b, b], [jnp.asarray(b), jnp.asarray(b)], [np.asarray(b), np.asarray(b)]):
        t = Tensor(data)
        assert t.dtype == DType.F32 and t.to_vec2() == want
    assert Tensor([b, b], dtype="bf16").dtype == DType.BF16


def test_64_bit_torch_tensors_with_a_narrower_dtype_convert_as_numpy_arrays_do():
    """``Tensor(torch.tensor([1, 2]), dtype=DType.U32)``: torch's default int64 (and float64) tensors with a
    ``dtype=`` convert as the same numpy arrays do (numpy's ``astype``), without x64 mode; out of range
    still raises."""
    cases = [
        (torch.tensor([1, 2, 300]), "u32"),
        (torch.tensor([1, 2, -3]), "i32"),
        (torch.tensor([1, 2, 3]), "f32"),
        (torch.tensor([1.5, -2.5, 1e-3], dtype=torch.float64), "f32"),
        (torch.tensor([1.5, -2.5], dtype=torch.float64), "i32"),
        (torch.tensor([[1.0, 2.0]], dtype=torch.float64).t(), "bf16"),
    ]
    for x, dt in cases:
        want = Tensor(x.numpy(), dtype=dt)
        ref = x.numpy().astype(DType.parse(dt).np)
        got = Tensor(x, dtype=dt)
        assert got.dtype == want.dtype == ref.dtype and got.shape == ref.shape
        assert np.asarray(got, np.float64).tolist() == ref.astype(np.float64).tolist()
    with pytest.raises(errors.InvalidArgument, match="300"):
        Tensor(torch.tensor([300]), dtype="u8")


@pytest.mark.parametrize("code", [">f4", ">i4", ">u4", ">f2", ">i2"])
def test_big_endian_numpy_arrays_keep_their_values(code):
    """``Tensor(np.arange(3, dtype=">f4"))`` is the f32 values 0, 1, 2, as candle-pyo3 gives
    (its ``Tensor(a)`` reads the values) and as ``a.astype("=f4")`` holds them."""
    a = np.arange(6, dtype=code).reshape(2, 3)
    native = a.astype(a.dtype.newbyteorder("="))
    t = Tensor(a)
    assert t.dtype == native.dtype and t.to_vec2() == native.tolist()
    assert Tensor(a.T).to_vec2() == native.T.tolist()
    assert Tensor(a[0, 1]).to_scalar() == native[0, 1].item()
    assert Tensor.from_numpy(a).to_vec2() == native.tolist()
    assert Tensor(a, dtype=DType.F32).to_vec2() == native.astype(np.float32).tolist()


candle = pytest.importorskip("candle")


@pytest.mark.parametrize("dt", ["f32", "u8", "u32", "f16", "bf16"])
def test_tensor_of_a_candle_pyo3_tensor_keeps_dtype_shape_values(dt):
    """``Tensor(candle.Tensor(...))`` takes candle-pyo3's dtype, shape and values, for any rank."""
    base = np.arange(24, dtype=np.float64).reshape(2, 3, 4) / 2
    if dt in ("u8", "u32"):
        base = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    for shape in [(2, 3, 4), (1, 2, 3, 4), (24,), (0, 3)]:
        vals = base.reshape(-1)[: int(np.prod(shape))].reshape(shape)
        c = candle.Tensor(vals.reshape(-1).tolist() or [0.0]).to_dtype(dt)
        c = c.reshape(shape) if vals.size else candle.zeros(shape, dtype=dt)
        t = Tensor(c)
        assert t.dtype.as_str() == dt and t.shape == tuple(c.shape)
        want = c.flatten_all().to_dtype("f32").values() if vals.size else []
        assert np.asarray(t, np.float64).reshape(-1).tolist() == want
    c0 = candle.Tensor(2.5).to_dtype(dt) if dt not in ("u8", "u32") else candle.Tensor(7).to_dtype(dt)
    t0 = Tensor(c0)
    assert t0.shape == () and t0.dtype.as_str() == dt and t0.to_scalar() == c0.values()


def test_host_conversions_of_a_donated_buffer_raise_deleted_buffer():
    """A Tensor whose buffer was donated (deleted, as after an optimizer step took it) raises candlejax's
    DeletedBuffer naming the conversion, as pickle and deepcopy do, not jax's RuntimeError / TypeError."""
    import jax

    t, one = Tensor([1.0, 2.0]), Tensor([3.0])
    t.jax.delete()
    one.jax.delete()
    convs = {
        "numpy": lambda: t.numpy(),
        "__array__": lambda: np.asarray(t),
        "to_torch": lambda: t.to_torch(),
        "__dlpack": lambda: torch.from_dlpack(t),
        "__dlpack_device__": lambda: t.__dlpack_device__(),
        "tolist": lambda: t.tolist(),
        "to_vec1": lambda: t.to_vec1(),
        "item": lambda: float(one),
    }
    for name, f in convs.items():
        with pytest.raises(errors.DeletedBuffer, match=name):
            f()

    def traced(x):
        with pytest.raises(errors.TracingError, match="__dlpack_device__"):
            x.__dlpack_device__()
        return x

    jax.jit(traced)(Tensor([1.0]))


def test_dlpack_export_checks_the_buffer_without_reading_it_to_the_host(monkeypatch):
    """``torch.from_dlpack(t)`` / ``t.to_torch()`` hand the device buffer over (zero-copy): checking it
    for a donated or traced buffer must not copy its values to a numpy array (on a GPU a full
    device-to-host transfer, twice per ``from_dlpack``)."""
    import candlejax.tensor.convert as convert

    def no_host_copy(a, *args, **kwargs):
        raise AssertionError("the DLPack export read the values to the host")

    t = Tensor([1.0, 2.0])
    monkeypatch.setattr(convert.np, "asarray", no_host_copy)
    assert t.__dlpack_device__() == t.jax.__dlpack_device__()
    monkeypatch.undo()
    monkeypatch.setattr(convert.np, "asarray", no_host_copy)
    out = torch.from_dlpack(t)
    monkeypatch.undo()
    assert out.tolist() == [1.0, 2.0]
    monkeypatch.setattr(convert.np, "asarray", no_host_copy)
    out = t.to_torch()
    monkeypatch.undo()
    assert out.tolist() == [1.0, 2.0]


class _DLPackOnly:
    """An array of another library that offers only the DLPack protocol (no ``__array__``)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, **kwargs):
        return self.a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


def test_tensor_of_a_dlpack_only_array_reads_it_through_dlpack():
    """``Tensor(x)`` of an object with ``__dlpack__`` and no ``__array__`` holds what ``np.from_dlpack(x)``
    gives (not an object array), as a copy."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    for arr in (a, a.astype(np.uint8), a.T.copy()):
        ref = np.from_dlpack(_DLPackOnly(arr))
        t = Tensor(_DLPackOnly(arr))
        assert t.dtype == ref.dtype and t.to_vec2() == ref.tolist()
    src = a.copy()
    t = Tensor(_DLPackOnly(src))
    src[0, 0] = 100.0
    assert t.to_vec2()[0][0] == 0.0


def test_masked_numpy_arrays_raise_instead_of_dropping_the_mask():
    """A ``np.ma`` masked array has no single reading: torch drops the mask (``[1., 2.]``), candle-pyo3
    gives NaN for masked floats, JAX refuses it (``use arr.filled()``). candlejax refuses it too,
    naming ``filled``, rather than silently keep the masked values."""
    import jax.numpy as jnp

    m = np.ma.array([1.0, 2.0], mask=[False, True], dtype=np.float32)
    assert torch.tensor(m).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="filled"):
        jnp.asarray(m)
    for f in (Tensor, Tensor.new, Tensor.from_numpy, lambda a: Tensor(a, dtype="f16")):
        with pytest.raises(errors.ArgumentType, match="filled"):
            f(m)
    assert Tensor(m.filled(0.0)).to_vec1() == [1.0, 0.0]


def test_operators_with_a_candle_pyo3_tensor_on_the_right_raise_a_candlejax_error():
    """``t + candle_tensor`` names the candle-pyo3 tensor and ``Tensor(...)``, instead of candle-pyo3's
    ``unsupported rhs for add`` (its ``__radd__`` got the candlejax Tensor)."""
    t = Tensor([1.0, 2.0])
    c = candle.Tensor([1.0, 2.0])
    for f in (lambda: t + c, lambda: t * c, lambda: t - c, lambda: t == c, lambda: t < c):
        with pytest.raises(errors.Error, match=r"candle-pyo3.*shape \[2\].*Tensor\(\.\.\.\)"):
            f()
    assert (t + Tensor(c)).to_vec1() == [2.0, 4.0]


def test_python_sequences_other_than_lists_read_as_candle_pyo3_reads_them():
    """candle-pyo3's ``Tensor(data)`` takes any Python sequence: ``array.array``, ``collections.deque``, a
    ``memoryview``; candlejax gives the same dtype, shape and values (bytes-like memoryviews are U8, as
    ``bytes``)."""
    import array
    import collections

    cases = [
        array.array("f", [1.5, 2.0]),
        array.array("d", [0.25, -3.0]),
        array.array("i", [1, 2, 3]),
        collections.deque([1.0, 2.0]),
        collections.deque([[1, 2], [3, 4]]),
        memoryview(np.arange(4, dtype=np.float32)),
    ]
    for data in cases:
        ref = candle.Tensor(data)
        t = Tensor(data)
        assert t.dtype.as_str() == str(ref.dtype).lower() and t.shape == tuple(ref.shape)
        assert t.values() == ref.values()
    mv = memoryview(np.arange(6, dtype=np.float32).reshape(2, 3))  # candle-pyo3 refuses 2-D ones
    assert Tensor(mv).dtype == DType.F32 and Tensor(mv).to_vec2() == np.asarray(mv).tolist()
    t = Tensor(memoryview(b"\x01\xff"))
    assert t.dtype == DType.U8 and t.to_vec1() == Tensor(b"\x01\xff").to_vec1() == [1, 255]
    with pytest.raises(errors.ArgumentType, match="str"):
        Tensor("ab")
