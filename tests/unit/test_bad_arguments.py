"""Bad arguments to the public Tensor / nn API raise candlejax errors naming the op, never a raw numpy /
JAX exception, and are never silently read as something else."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from candlejax import Device, DType, Tensor
from candlejax.errors import Error

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
    # a Tensor where a DType belongs (numpy raised "Could not convert ... to a NumPy dtype")
    ("to_dtype tensor", lambda: _T.to_dtype(_T), ValueError),
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
    ("meshgrid None", lambda: Tensor.meshgrid(None, True), TypeError),
    # devices
    ("to_device jax array", lambda: _T.to_device(_JAX2), AttributeError),
    ("device cuda:x", lambda: Device.coerce("cuda:x"), ValueError),
]


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
