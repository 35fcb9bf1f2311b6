"""Quantised bytes against candle-pyo3 (``Tensor.quantize``), read back from a GGUF it writes.

Candle's ``from_float`` for the 32-value block types and for Q2K / Q4K / Q5K (candle-core/src/quantized/
k_quants.rs, utils.rs ``make_qkx1_quants``) is the same at upstream HEAD as in the 0.4.2 wheel, so the
wheel's bytes are the reference.
"""

from __future__ import annotations

import numpy as np
import pytest

candle = pytest.importorskip("candle")

from candlejax import Tensor  # noqa: E402
from candlejax.quantized import GgmlDType, QTensor  # noqa: E402

LEGACY = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1"]


def candle_bytes(x: np.ndarray, fmt: str, tmp_path) -> np.ndarray:
    """The block bytes candle-pyo3 writes for ``Tensor(x).quantize(fmt)``: its one tensor ends the file,
    padded to the 32-byte alignment (gguf-py cannot read Q8_1's 36-byte blocks)."""
    path = tmp_path / f"{fmt}.gguf"
    candle.utils.save_gguf(str(path), {"w": candle.Tensor(x).quantize(fmt)}, {})
    n = GgmlDType.parse(fmt).bytes_for(x.size)
    raw = np.frombuffer(path.read_bytes(), np.uint8)
    start = raw.size - -(-n // 32) * 32
    assert not raw[start + n :].any()
    return raw[start : start + n]


def ours(x: np.ndarray, fmt: str) -> np.ndarray:
    return np.asarray(QTensor.quantize(Tensor(x), GgmlDType.parse(fmt)).data()).reshape(-1)


@pytest.mark.parametrize("fmt", LEGACY)
def test_quantize_bytes_match_candle(fmt, tmp_path):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((8, 64)) * 3).astype(np.float32)
    x[1, :32] = 0.0
    x[2, 32:] = -1.5
    x[3, 5] = 1e4
    np.testing.assert_array_equal(ours(x, fmt), candle_bytes(x, fmt, tmp_path))


@pytest.mark.parametrize("fmt", LEGACY)
def test_quantize_nan_and_inf_bytes_match_candle(fmt, tmp_path):
    # Candle's block max skips a NaN (`amax < x.abs()`, `f32::max`) and a NaN quant casts to 0
    rng = np.random.default_rng(8)
    x = rng.standard_normal((6, 64)).astype(np.float32)
    x[0, 3] = np.nan
    x[1, 40] = np.inf
    x[2, 0] = -np.inf
    x[3, :32] = np.nan
    x[4, 7] = np.nan
    x[4, 9] = np.inf
    np.testing.assert_array_equal(ours(x, fmt), candle_bytes(x, fmt, tmp_path))


@pytest.mark.parametrize("fmt", ["q2k", "q4k", "q5k"])
def test_k_quant_subnormal_values_match_candle(fmt, tmp_path):
    # values ~1e-40: make_qkx1_quants' iscale nmax / (max - min) overflows to inf, and inf * 0 is a NaN
    # that Rust's `nearest_int(v)` casts to 0 (Candle's from_float is the same at HEAD for these types)
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((4, 256)) * 1e-40).astype(np.float32)
    x[1] = rng.standard_normal(256).astype(np.float32)  # an ordinary row beside them
    np.testing.assert_array_equal(ours(x, fmt), candle_bytes(x, fmt, tmp_path))


@pytest.mark.parametrize("fmt", ["q2k", "q4k", "q5k"])
def test_k_quant_nan_and_inf_bytes_match_candle(fmt, tmp_path):
    # make_qkx1_quants fits a sub-block holding a NaN or an inf to (NaN, NaN); the block's max scale
    # (`f32::max` fold) skips it and its sub-scale rounds to 0, so that sub-block decodes to zeros
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 256)).astype(np.float32)
    x[0, 5] = np.nan
    x[1, 40] = np.inf
    x[2, 200] = -np.inf
    np.testing.assert_array_equal(ours(x, fmt), candle_bytes(x, fmt, tmp_path))


@pytest.mark.parametrize("fmt", ["q2k", "q3k", "q4k", "q5k"])
def test_k_quant_zero_blocks_bytes_match_candle(fmt, tmp_path):
    # BlockQ3K::from_float: a sub-block whose d * sc is 0 keeps level 0 (hmask bit clear), and an
    # all-zero block keeps all its scale bytes 0; BlockQ2K::from_float stores d / dmin f16(0.0) (not -0)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 256)).astype(np.float32)
    x[0] = 0.0
    x[1, :128] = 0.0
    x[2] *= np.float32(6e-8)  # d = f16(max / -32) underflows to 0
    np.testing.assert_array_equal(ours(x, fmt), candle_bytes(x, fmt, tmp_path))


@pytest.mark.parametrize("fmt", ["q4_1", "q5_1"])
def test_quantize_sparse_rows_keep_candles_zero_min(fmt, tmp_path):
    # blocks whose min is a zero, of both signs (0.0 * -x): the stored f16 min is Candle's 0.0 or -0.0
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((64, 256)) * (rng.random((64, 256)) < 0.1)).astype(np.float32)
    np.testing.assert_array_equal(ours(x, fmt), candle_bytes(x, fmt, tmp_path))


@pytest.mark.parametrize("fmt", ["q2k", "q4k", "q5k"])
def test_k_quant_positive_rows_keep_candles_zero_dmin(fmt, tmp_path):
    # positive data: every sub-block's min fits to -0.0, and Candle's fold(0.0, f32::max) keeps -0.0
    rng = np.random.default_rng(13)
    x = rng.uniform(0, 1, (64, 256)).astype(np.float32)
    x[0] = 0.0
    np.testing.assert_array_equal(ours(x, fmt), candle_bytes(x, fmt, tmp_path))


@pytest.mark.parametrize("fmt", [*LEGACY, "q2k", "q3k", "q4k", "q5k", "q6k"])
def test_nan_and_inf_quantize_and_dequantize_without_warnings(fmt, tmp_path):
    # Candle's from_float / to_float meet NaN and inf silently; numpy's `inf * 0` and f16 overflow
    # warnings (errors under -W error) must not leak out of QTensor.quantize / dequantize
    import warnings

    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    x[0, 3], x[1, 40], x[2, 0] = np.nan, np.inf, np.float32(1e6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = QTensor.quantize(Tensor(x), GgmlDType.parse(fmt))
        got = np.asarray(q.dequantize())
    if fmt in LEGACY:  # the same bytes as Candle's (its Q8_1 has no dequantize)
        np.testing.assert_array_equal(np.asarray(q.data()).reshape(-1), candle_bytes(x, fmt, tmp_path))
    else:
        want = np.array(candle.Tensor(x).quantize(fmt).dequantize().values(), np.float32)
        assert np.array_equal(np.isnan(got), np.isnan(want))
