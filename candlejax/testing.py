"""candle-pyo3's ``candle.testing``: ``assert_equal`` and ``assert_almost_equal`` for Tensors, and
Rust Candle's ``candle::test_utils`` (``assert_tensor_eq``, ``to_vec0_round`` .. ``to_vec3_round``).

Both compare values on the host (numpy) and raise ``AssertionError`` naming what differs. As in
the binding, integer tensors are compared as int64, a NaN equals nothing (not even a NaN: numpy's
``assert_array_equal`` would let two NaNs pass) and the checks of device and dtype can be turned
off; ``check_layout=False`` skips the shape check and compares the values broadcast together (the
binding's ``actual - expected``); ``check_stride`` is accepted for the binding's signature (a
candlejax tensor has no strided layout of its own: XLA owns it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from candlejax.tensor import Tensor

__all__ = [
    "assert_almost_equal", "assert_equal", "assert_tensor_eq", "to_vec0_round", "to_vec1_round", "to_vec2_round",
    "to_vec3_round",
]  # fmt: skip


def _check_meta(actual: Any, expected: Any, check_device: bool, check_dtype: bool, check_layout: bool) -> None:
    if not isinstance(actual, Tensor) or not isinstance(expected, Tensor):
        raise AssertionError(f"expected two Tensors, got {type(actual).__name__} and {type(expected).__name__}")
    if check_layout and actual.shape != expected.shape:
        raise AssertionError(f"shape mismatch: {list(actual.shape)} vs {list(expected.shape)}")
    if check_dtype and actual.dtype != expected.dtype:
        raise AssertionError(f"dtype mismatch: {actual.dtype} vs {expected.dtype}")
    if check_device and actual.device != expected.device:
        raise AssertionError(f"device mismatch: {actual.device} vs {expected.device}")


def _host(t: Tensor) -> np.ndarray:
    a = np.asarray(t.to_dtype("f32") if t.dtype.as_str() in ("bf16", "f16") else t)
    return a.astype(np.int64) if a.dtype.kind in "ui" else a


def _host_pair(actual: Tensor, expected: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Both values on the host, broadcast together as the binding's ``actual - expected`` does (the
    shapes are equal unless ``check_layout=False``)."""
    a, b = _host(actual), _host(expected)
    try:
        return tuple(np.broadcast_arrays(a, b))  # type: ignore[return-value]
    except ValueError:
        raise AssertionError(f"shapes {list(a.shape)} and {list(b.shape)} do not broadcast together") from None


def _assert_values_equal(a: np.ndarray, b: np.ndarray) -> None:
    nan = np.isnan(a) | np.isnan(b) if a.dtype.kind == "f" or b.dtype.kind == "f" else None
    if nan is not None and nan.any():
        at = tuple(int(i) for i in np.argwhere(nan)[0])
        raise AssertionError(f"{int(nan.sum())} NaN value(s), first at index {list(at)} (a NaN equals nothing)")
    np.testing.assert_array_equal(a, b)


def assert_equal(actual: Tensor, expected: Tensor, check_device: bool = True, check_dtype: bool = True,
                 check_layout: bool = True, check_stride: bool = False) -> None:  # fmt: skip
    """``candle.testing.assert_equal``: same shape (and dtype, device) and equal values (a NaN equals
    nothing). PyTorch: ``torch.testing.assert_close(a, b, rtol=0, atol=0)``."""
    _check_meta(actual, expected, check_device, check_dtype, check_layout)
    _assert_values_equal(*_host_pair(actual, expected))


def assert_almost_equal(actual: Tensor, expected: Tensor, rtol: float = 1e-05, atol: float = 1e-08,
                        check_device: bool = True, check_dtype: bool = True, check_layout: bool = True,
                        check_stride: bool = False) -> None:  # fmt: skip
    """``candle.testing.assert_almost_equal``: ``|actual - expected| <= atol + rtol * |expected|``
    elementwise (numpy's ``allclose`` rule; a NaN is close to nothing, equal infinities are close).
    PyTorch: ``torch.testing.assert_close``."""
    _check_meta(actual, expected, check_device, check_dtype, check_layout)
    np.testing.assert_allclose(*_host_pair(actual, expected), rtol=rtol, atol=atol, equal_nan=False)


def assert_tensor_eq(t1: Tensor, t2: Tensor) -> None:
    """Rust Candle's ``test_utils::assert_tensor_eq``: equal shapes and every value equal."""
    if tuple(t1.shape) != tuple(t2.shape):
        raise AssertionError(f"shape mismatch: {list(t1.shape)} vs {list(t2.shape)}")
    _assert_values_equal(_host(t1), _host(t2))


def _round_f32(t: Tensor, digits: int, rank: int, name: str) -> Any:
    """Candle's rounding in f32 (``round(x * 10^d) / 10^d``, halves away from zero), each value given
    as the shortest decimal that is that f32 (``0.6``, not ``0.6000000238418579``), so the results
    compare equal to the literals a ported ``assert_eq!`` holds."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(t).__name__}")
    if t.rank != rank:
        raise AssertionError(f"{name}: expected a rank-{rank} tensor, got shape {list(t.shape)}")
    b = np.float32(10) ** np.float32(int(digits))
    v = np.asarray(t.to_dtype("f32"), np.float32) * b
    whole = np.trunc(v)
    r = np.where(np.abs(v - whole) >= np.float32(0.5), whole + np.sign(v), whole).astype(np.float32) / b
    out = _SHORTEST(r)
    return float(out) if rank == 0 else out.tolist()


#: each f32 as the Python float of its shortest decimal form
_SHORTEST = np.vectorize(lambda x: float(str(np.float32(x))), otypes=[np.float64])


def to_vec0_round(t: Tensor, digits: int) -> float:
    """Rust Candle's ``test_utils::to_vec0_round(&t, digits)``."""
    return _round_f32(t, digits, 0, "to_vec0_round")


def to_vec1_round(t: Tensor, digits: int) -> list[float]:
    """Rust Candle's ``test_utils::to_vec1_round(&t, digits)``: ``t.to_vec1()`` rounded to ``digits``."""
    return _round_f32(t, digits, 1, "to_vec1_round")


def to_vec2_round(t: Tensor, digits: int) -> list[list[float]]:
    """Rust Candle's ``test_utils::to_vec2_round(&t, digits)``."""
    return _round_f32(t, digits, 2, "to_vec2_round")


def to_vec3_round(t: Tensor, digits: int) -> list[list[list[float]]]:
    """Rust Candle's ``test_utils::to_vec3_round(&t, digits)``."""
    return _round_f32(t, digits, 3, "to_vec3_round")
