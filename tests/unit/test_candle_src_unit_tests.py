"""The unit tests inside Candle's sources, ported line by line with Candle's expected values.

Sources (huggingface/candle, ``#[cfg(test)]`` modules): candle-core/src/{shape,safetensors,npy}.rs,
candle-transformers/src/utils.rs, candle-transformers/src/models/quantized_llama.rs (its causal-mask
tests), candle-transformers/src/models/whisper/audio.rs (the public ``log_mel_spectrogram_``) and
candle-nn/src/kv_cache.rs (``ConcatKvCache``; Candle's ``&mut`` appends are rebindings here).
"""

from __future__ import annotations

import math

import numpy as np

from candlejax import Device, DType, Shape, Tensor, safetensors
from candlejax.models.utils import build_additive_causal_mask, build_causal_mask
from candlejax.models.whisper import audio
from candlejax.nn.kv_cache import ConcatKvCache

CPU = Device.Cpu
NEG = float("-inf")


# --- candle-core/src/shape.rs -----------------------------------------------------------------
def test_shape_stride():
    assert Shape(()).stride_contiguous() == []
    assert Shape(42).stride_contiguous() == [1]
    assert Shape((42, 1337)).stride_contiguous() == [1337, 1]
    assert Shape((299, 792, 458)).stride_contiguous() == [458 * 792, 458, 1]


def test_shape_from_tuple():
    for dims in [(2,), (2, 3), (2, 3, 4), (2, 3, 4, 5), (2, 3, 4, 5, 6), (2, 3, 4, 5, 6, 7)]:
        assert Shape(dims).dims() == list(dims)


# --- candle-core/src/safetensors.rs: the saved bytes are Candle's --------------------------------
def test_save_single_tensor(tmp_path):
    t = Tensor.zeros((2, 2), DType.F32, CPU)
    t.save_safetensors("t", tmp_path / "t.safetensors")
    want = b'@\0\0\0\0\0\0\0{"t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}       ' + b"\0" * 16
    assert (tmp_path / "t.safetensors").read_bytes() == want


def test_save_load_multiple_tensors(tmp_path):
    t = Tensor.zeros((2, 2), DType.F32, CPU)
    u = Tensor.zeros((1, 2), DType.F32, CPU)
    path = tmp_path / "multi.safetensors"
    safetensors.save({"t": t, "u": u}, path)
    weights = safetensors.load(path, CPU)
    assert weights["t"].dims() == [2, 2]
    assert weights["u"].dims() == [1, 2]
    header = (
        b'{"t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},'
        b'"u":{"dtype":"F32","shape":[1,2],"data_offsets":[16,24]}}      '
    )
    assert path.read_bytes() == b"x\0\0\0\0\0\0\0" + header + b"\0" * 24


def test_load_u8(tmp_path):
    path = tmp_path / "test_u8.safetensors"
    path.write_bytes(b'8\0\0\0\0\0\0\0{"x":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}   \x01\x03')
    tensor = safetensors.load(path, CPU)["x"]
    assert tensor.dims() == [2]
    assert tensor.dtype == DType.U8
    assert tensor.to_vec1() == [1, 3]


# --- candle-core/src/npy.rs: Header::parse and Header::to_string, through the files ----------------
def _npy_file(path, header: str, data: bytes) -> None:
    """An npy v1.0 file holding ``header`` as written, padded as Candle's ``Tensor::write`` pads it."""
    header += " " * ((16 - (6 + 5 + len(header)) % 16) % 16) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + data)


def test_npy_header_parse(tmp_path, x64):
    # Header::parse("{'descr': '<f8', 'fortran_order': False, 'shape': (128,), }") == (F64, false, [128])
    path = tmp_path / "f8.npy"
    _npy_file(path, "{'descr': '<f8', 'fortran_order': False, 'shape': (128,), }", np.arange(128.0).tobytes())
    t = Tensor.read_npy(path)
    assert (t.dtype, t.dims()) == (DType.F64, [128])
    assert t.to_vec1() == list(np.arange(128.0))
    # "{'descr': '<f4', 'fortran_order': True, 'shape': (256,1,128), }" == (F32, true, [256, 1, 128]);
    # Candle's readers then refuse Fortran order, candlejax reads it (docs/differences/conv-io.md).
    path = tmp_path / "f4.npy"
    values = np.arange(256 * 128, dtype=np.float32).reshape(256, 1, 128)
    _npy_file(path, "{'descr': '<f4', 'fortran_order': True, 'shape': (256,1,128), }", values.tobytes(order="F"))
    t = Tensor.read_npy(path)
    assert (t.dtype, t.dims()) == (DType.F32, [256, 1, 128])
    np.testing.assert_array_equal(t.numpy(), values)
    # Header::to_string: "(256,1,128,)" and a rank-0 "()" (U32), as Candle writes them, read back.
    path = tmp_path / "written.npy"
    _npy_file(path, "{'descr': '<f4', 'fortran_order': False, 'shape': (256,1,128,), }", values.tobytes())
    assert Tensor.read_npy(path).dims() == [256, 1, 128]
    _npy_file(path, "{'descr': '<u4', 'fortran_order': False, 'shape': (), }", np.uint32(7).tobytes())
    t = Tensor.read_npy(path)
    assert (t.dtype, t.dims(), t.to_vec0()) == (DType.U32, [], 7)
    # and what candlejax writes, numpy parses to the same header
    Tensor.new(values).write_npy(path)
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        assert np.lib.format.read_array_header_1_0(f) == ((256, 1, 128), False, np.dtype("<f4"))


# --- candle-transformers/src/utils.rs -----------------------------------------------------------
def test_additive_causal_mask_is_batch_independent_and_broadcasts():
    mask = build_additive_causal_mask(3, 0, None, CPU, DType.F32)
    assert mask.dims() == [1, 1, 3, 3]
    masked = Tensor.zeros((2, 1, 3, 3), DType.F32, CPU).broadcast_add(mask).squeeze(1).to_vec3()
    assert masked[0] == masked[1]
    assert masked[0][0] == [0.0, NEG, NEG]
    assert masked[0][1] == [0.0, 0.0, NEG]
    assert masked[0][2] == [0.0, 0.0, 0.0]


def test_additive_causal_mask_handles_kv_cache_offset():
    mask = build_additive_causal_mask(2, 2, None, CPU, DType.F32).squeeze(0).squeeze(0).to_vec2()
    assert mask[0] == [0.0, 0.0, 0.0, NEG]
    assert mask[1] == [0.0, 0.0, 0.0, 0.0]


def test_additive_causal_mask_respects_sliding_window():
    mask = build_additive_causal_mask(4, 0, 1, CPU, DType.F32).squeeze(0).squeeze(0).to_vec2()
    assert mask[0] == [0.0, NEG, NEG, NEG]
    assert mask[1] == [0.0, 0.0, NEG, NEG]
    assert mask[2] == [NEG, 0.0, 0.0, NEG]
    assert mask[3] == [NEG, NEG, 0.0, 0.0]


# --- candle-transformers/src/models/quantized_llama.rs: causal masks ------------------------------
def test_causal_mask_shapes_and_values():
    assert build_causal_mask(4, 0, CPU).dims() == [4, 4]
    assert build_causal_mask(4, 65, CPU).dims() == [4, 69]
    assert build_causal_mask(3, 0, CPU).flatten_all().to_vec1() == [0, 1, 1, 0, 0, 1, 0, 0, 0]
    assert build_causal_mask(3, 2, CPU).flatten_all().to_vec1() == [0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    mask = build_causal_mask(1, 10, CPU)
    assert mask.dims() == [1, 11]
    assert all(v == 0 for v in mask.flatten_all().to_vec1())
    batch, heads, seq_len, index_pos = 1, 8, 4, 10
    att_shape = (batch, heads, seq_len, index_pos + seq_len)
    assert build_causal_mask(seq_len, index_pos, CPU).broadcast_as(att_shape).dims() == list(att_shape)


# --- candle-transformers/src/models/whisper/audio.rs ------------------------------------------
def test_log_mel_spectrogram_lengths():
    samples, filters = np.zeros(1000, np.float32), np.zeros(1000, np.float32)
    assert len(audio.log_mel_spectrogram_(samples, filters, 100, 10, 10, False)) == 30_000
    samples, filters = np.zeros(100, np.float32), np.zeros(100, np.float32)
    assert len(audio.log_mel_spectrogram_(samples, filters, 20, 2, 2, False)) == 6_000



def _candle_dft(inp):
    """audio.rs's private ``dft`` line by line: ``[re0, im0, re1, im1, ...]``."""
    n, out = len(inp), []
    for k in range(n):
        re = im = 0.0
        for j, v in enumerate(inp):
            angle = 2.0 * math.pi * k * j / n
            re += v * math.cos(angle)
            im -= v * math.sin(angle)
        out += [re, im]
    return out


def _candle_log_mel(samples, filters, fft_size, fft_step, n_mel, speed_up):
    """audio.rs's ``log_mel_spectrogram_`` / ``log_mel_spectrogram_w`` line by line (one thread)."""
    hann = [0.5 * (1.0 - math.cos(2.0 * math.pi * i / fft_size)) for i in range(fft_size)]
    pad = 1500
    n_len = len(samples) // fft_step
    n_len = (n_len // pad + 1) * pad if n_len % pad else n_len
    n_len += pad
    s = list(samples) + [0.0] * (n_len * fft_step - len(samples))
    n_fft = 1 + fft_size // 4 if speed_up else 1 + fft_size // 2
    mel = [0.0] * (n_len * n_mel)
    for i in range(min(len(s) // fft_step + 1, n_len)):
        offset = i * fft_step
        fft_in = [0.0] * fft_size
        for j in range(min(fft_size, len(s) - offset)):
            fft_in[j] = hann[j] * s[offset + j]
        fft_out = _candle_dft(fft_in)  # Candle's fft equals its dft up to rounding
        for j in range(fft_size):
            fft_out[j] = fft_out[2 * j] * fft_out[2 * j] + fft_out[2 * j + 1] * fft_out[2 * j + 1]
        for j in range(1, fft_size // 2):
            fft_out[j] += fft_out[fft_size - j]
        if speed_up:
            for j in range(n_fft):
                fft_out[j] = 0.5 * (fft_out[2 * j] + fft_out[2 * j + 1])
        for j in range(n_mel):
            total = sum(fft_out[k] * filters[j * n_fft + k] for k in range(n_fft))
            mel[j * n_len + i] = math.log10(max(total, 1e-10))
    mmax = max(mel) - 8.0
    return [max(m, mmax) / 4.0 + 1.0 for m in mel]


def test_dft():
    expected = [1.0, 0.0, 6.123233995736766e-17, -1.0, -1.0, -1.2246467991473532e-16, -1.8369701987210297e-16, 1.0]
    assert _candle_dft([0.0, 1.0, 0.0, 0.0]) == expected


def test_log_mel_spectrogram_matches_candles_loop():
    rng = np.random.default_rng(0)
    for fft_size, fft_step, n_mel, speed_up in [(8, 4, 3, False), (8, 4, 2, True), (7, 2, 2, False)]:
        samples = rng.standard_normal(37)
        n_fft = 1 + fft_size // 4 if speed_up else 1 + fft_size // 2
        filters = rng.random(n_mel * n_fft)
        got = audio.log_mel_spectrogram_(samples, filters, fft_size, fft_step, n_mel, speed_up)
        want = _candle_log_mel(samples.tolist(), filters.tolist(), fft_size, fft_step, n_mel, speed_up)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)

# --- candle-nn/src/kv_cache.rs: ConcatKvCache ---------------------------------------------------
def test_concat_cache_basic_reset_and_multiple_appends():
    cache = ConcatKvCache.new(2)
    assert cache.is_empty() and cache.current_seq_len() == 0
    k1 = Tensor.zeros((1, 8, 3, 64), DType.F32, CPU)
    (k, v), cache = cache.append(k1, k1)
    assert k.dims() == [1, 8, 3, 64] and v.dims() == [1, 8, 3, 64]
    assert cache.current_seq_len() == 3 and not cache.is_empty()
    k2 = Tensor.zeros((1, 8, 2, 64), DType.F32, CPU)
    (k, v), cache = cache.append(k2, k2)
    assert k.dims() == [1, 8, 5, 64] and v.dims() == [1, 8, 5, 64]
    assert cache.current_seq_len() == 5
    cache = cache.reset()
    assert cache.is_empty() and cache.current_seq_len() == 0
    assert cache.k() is None and cache.v() is None
    prefill = Tensor.zeros((1, 8, 10, 64), DType.F32, CPU)
    _, cache = cache.append(prefill, prefill)
    for i in range(1, 6):
        token = Tensor.zeros((1, 8, 1, 64), DType.F32, CPU)
        (k, v), cache = cache.append(token, token)
        assert k.dims()[2] == 10 + i and v.dims()[2] == 10 + i
    assert cache.current_seq_len() == 15


def test_concat_cache_different_dim():
    cache = ConcatKvCache.new(1)
    k1 = Tensor.zeros((1, 3, 8, 64), DType.F32, CPU)
    (k, _v), cache = cache.append(k1, k1)
    assert k.dims() == [1, 3, 8, 64]
    k2 = Tensor.zeros((1, 2, 8, 64), DType.F32, CPU)
    (k, _v), cache = cache.append(k2, k2)
    assert k.dims() == [1, 5, 8, 64]
    assert cache.current_seq_len() == 5
