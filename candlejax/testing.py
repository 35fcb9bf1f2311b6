"""candle-pyo3's ``candle.testing``: ``assert_equal`` and ``assert_almost_equal`` for Tensors.

Both compare values on the host (numpy) and raise ``AssertionError`` naming what differs. As in
the binding, integer tensors are compared as int64 and the checks of device and dtype can be
turned off; ``check_layout`` / ``check_stride`` are accepted for the binding's signature (a
candlejax tensor has no strided layout of its own: XLA owns it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from candlejax.tensor import Tensor

__all__ = ["assert_almost_equal", "assert_equal"]


def _check_meta(actual: Any, expected: Any, check_device: bool, check_dtype: bool) -> None:
    if not isinstance(actual, Tensor) or not isinstance(expected, Tensor):
        raise AssertionError(f"expected two Tensors, got {type(actual).__name__} and {type(expected).__name__}")
    if actual.shape != expected.shape:
        raise AssertionError(f"shape mismatch: {list(actual.shape)} vs {list(expected.shape)}")
    if check_dtype and actual.dtype != expected.dtype:
        raise AssertionError(f"dtype mismatch: {actual.dtype} vs {expected.dtype}")
    if check_device and actual.device != expected.device:
        raise AssertionError(f"device mismatch: {actual.device} vs {expected.device}")


def _host(t: Tensor) -> np.ndarray:
    a = np.asarray(t.to_dtype("f32") if t.dtype.as_str() in ("bf16", "f16") else t)
    return a.astype(np.int64) if a.dtype.kind in "ui" else a


def assert_equal(actual: Tensor, expected: Tensor, check_device: bool = True, check_dtype: bool = True,
                 check_layout: bool = True, check_stride: bool = False) -> None:  # fmt: skip
    """``candle.testing.assert_equal``: same shape (and dtype, device) and equal values.
    PyTorch: ``torch.testing.assert_close(a, b, rtol=0, atol=0)``."""
    _check_meta(actual, expected, check_device, check_dtype)
    np.testing.assert_array_equal(_host(actual), _host(expected))


def assert_almost_equal(actual: Tensor, expected: Tensor, rtol: float = 1e-05, atol: float = 1e-08,
                        check_device: bool = True, check_dtype: bool = True, check_layout: bool = True,
                        check_stride: bool = False) -> None:  # fmt: skip
    """``candle.testing.assert_almost_equal``: ``|actual - expected| <= atol + rtol * |expected|``
    elementwise (numpy's ``allclose`` rule). PyTorch: ``torch.testing.assert_close``."""
    _check_meta(actual, expected, check_device, check_dtype)
    np.testing.assert_allclose(_host(actual), _host(expected), rtol=rtol, atol=atol)
