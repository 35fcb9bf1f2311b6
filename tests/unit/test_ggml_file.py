"""candlejax.quantized.ggml_file: Candle's reader of llama.cpp's legacy GGML/GGMF/GGJT files
(candle-core/src/quantized/ggml_file.rs); quantized data checked against gguf-py's dequantize."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from ggml_fixture import ggjt_bytes

import candlejax as cj
from candlejax import errors
from candlejax.quantized import GgmlDType, ggml_file


def _q8_0(x: np.ndarray) -> bytes:
    from gguf import GGMLQuantizationType, quants

    return quants.quantize(x, GGMLQuantizationType.Q8_0).tobytes()


def test_read_ggjt(tmp_path):
    from gguf import GGMLQuantizationType, quants

    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 32)).astype(np.float32)
    b = rng.standard_normal((4, 64)).astype(np.float32)
    qb = _q8_0(b)
    p = tmp_path / "m.bin"
    p.write_bytes(ggjt_bytes([("a", 0, (2, 32), a.tobytes()), ("b", 8, (4, 64), qb)]))
    c = ggml_file.Content.read(str(p), cj.Device.Cpu)
    assert c.magic is ggml_file.VersionedMagic.GgjtV3 and c.magic.align32()
    assert c.hparams == ggml_file.HParams(2, 32, 256, 4, 1, 8, 1)
    assert c.vocab.token_score_pairs == [(b"a", 0.5), (b"bc", -1.0)]
    assert sorted(c.tensors) == ["a", "b"]
    np.testing.assert_array_equal(np.asarray(c.tensors["a"].dequantize(cj.Device.Cpu).to_vec2()), a)
    tb = c.remove("b")
    assert tb.dtype() == GgmlDType.Q8_0 and tuple(tb.shape) == (4, 64)
    ref = quants.dequantize(np.frombuffer(qb, np.uint8).reshape(4, -1), GGMLQuantizationType.Q8_0)
    np.testing.assert_allclose(np.asarray(tb.dequantize(cj.Device.Cpu).to_vec2()), ref, rtol=0, atol=1e-6)
    with pytest.raises(errors.Error, match="cannot find tensor with name 'b'"):
        c.remove("b")
    with open(p, "rb") as f:  # a file object, as Rust's reader
        assert sorted(ggml_file.Content.read(f).tensors) == ["a", "b"]


@pytest.mark.parametrize("data, match", [
    (b"", "needs 4 bytes"),
    (struct.pack("<I", 0x12345678), "unknown magic 12345678"),
    (struct.pack("<II", 0x67676A74, 9), "unsupported magic/version Ggjt/9"),
    (struct.pack("<II", 0x67676A74, 3) + struct.pack("<7I", 2**31, 1, 1, 1, 1, 1, 1), "n_vocab 2147483648 cannot fit"),
    (ggjt_bytes([("a", 99, (32,), b"")]), "unknown dtype for tensor 99"),
    (ggjt_bytes([("a", 0, (2**31, 2**31, 2**31), b"")]), "too big for any array|needs"),
    (ggjt_bytes([("a", 0, (1 << 20,), b"\0" * 16)]), "the data of tensor 'a' needs 4194304 bytes"),
    (ggjt_bytes([("a", 8, (31,), b"\0" * 34)]), "not divisible by the block size 32"),
    (ggjt_bytes([("a", 0, (4,), b"\0" * 16), ("a", 0, (4,), b"\0" * 16)]), "duplicate tensor 'a'"),
    (struct.pack("<II", 0x67676A74, 3) + struct.pack("<7I", 0, 0, 0, 0, 0, 0, 0) + struct.pack("<III", 99, 1, 0),
     "99 dims"),
])
def test_corrupt_ggml_files_raise_candlejax_errors(tmp_path, data, match):
    p = tmp_path / "bad.bin"
    p.write_bytes(data)
    with pytest.raises(errors.Error, match=match) as ei:
        ggml_file.Content.read(p)
    assert "bad.bin" in str(ei.value) or match.startswith("unknown dtype")


def test_qtensor_from_ggml_reads_raw_blocks_as_candle() -> None:
    # candle-core/src/quantized/ggml_file.rs: pub fn qtensor_from_ggml(ggml_dtype, raw_data, dims, device);
    # only the first elems / block_size * type_size bytes are read; values checked against gguf-py
    from gguf import GGMLQuantizationType, quants

    x = np.linspace(-2.0, 2.0, 64, dtype=np.float32).reshape(2, 32)
    raw = _q8_0(x)
    q = ggml_file.qtensor_from_ggml(GgmlDType.Q8_0, raw + b"\xff" * 7, [2, 32], cj.Device.Cpu)
    ref = quants.dequantize(np.frombuffer(raw, np.uint8).reshape(2, 34), GGMLQuantizationType.Q8_0)
    assert q.shape == (2, 32) and q.dtype() == GgmlDType.Q8_0
    np.testing.assert_array_equal(np.asarray(q.dequantize(cj.Device.Cpu).to_vec2(), np.float32), ref)
    f = ggml_file.qtensor_from_ggml(GgmlDType.F32, np.float32([1.5, -2.0]).tobytes(), (2,), cj.Device.Cpu)
    assert f.dequantize(cj.Device.Cpu).to_vec1() == [1.5, -2.0]
    with pytest.raises(errors.Error, match="the number of elements 31 is not divisible by the block size 32"):
        ggml_file.qtensor_from_ggml(GgmlDType.Q8_0, raw, (31,), cj.Device.Cpu)
    with pytest.raises(errors.Error, match="quantized type Q8_1 is not supported yet"):
        ggml_file.qtensor_from_ggml(GgmlDType.Q8_1, b"\0" * 36, (32,), cj.Device.Cpu)
    with pytest.raises(errors.Error, match="34 bytes"):
        ggml_file.qtensor_from_ggml(GgmlDType.Q8_0, raw[:30], (32,), cj.Device.Cpu)


def test_qtensor_from_raw_bytes_takes_a_type_name_and_refuses_other_types() -> None:
    # candle-pyo3's t.quantize("q4_0") takes names; a non-type is a candlejax error, not an AttributeError
    from candlejax.quantized import QTensor

    q = ggml_file.qtensor_from_ggml("q8_0", _q8_0(np.ones((1, 32), np.float32)), (32,), cj.Device.Cpu)
    assert q.dtype() == GgmlDType.Q8_0
    np.testing.assert_allclose(q.dequantize(cj.Device.Cpu).to_vec1(), np.ones(32), atol=1e-3)
    assert QTensor.from_data(b"\0" * 18, "Q4_0", (32,)).dtype() == GgmlDType.Q4_0
    with pytest.raises(errors.Error, match=r"qtensor_from_ggml: .*GgmlDType.*int"):
        ggml_file.qtensor_from_ggml(8, b"\0" * 34, (32,), cj.Device.Cpu)
    with pytest.raises(errors.Error, match=r"QTensor\.from_data: .*GgmlDType.*NoneType"):
        QTensor.from_data(b"\0" * 18, None, (32,))
    with pytest.raises(errors.Error, match="unknown ggml dtype 'q9'"):
        QTensor.from_data(b"\0" * 18, "q9", (32,))
