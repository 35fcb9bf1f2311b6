"""candlejax.examples, Candle's ``candle_examples`` crate: each helper against an independent
reference (Pillow, numpy/scipy, the stdlib ``wave`` writer, soundfile, transformers' chat-template
renderer, the ITU-R BS.1770-4 filter tables and test signals), Candle's shapes and dtypes, and bad
input raising candlejax errors that name the file."""

from __future__ import annotations

import io
import json
import math
import re
import warnings
import wave

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

import candlejax as cj
from candlejax import Device, DType, errors, vision
from candlejax import examples as candle_examples
from candlejax.examples import bs1770
from candlejax.examples.chat_template import (
    ChatTemplate,
    ChatTemplateError,
    ChatTemplateOptions,
    Conversation,
    Message,
)


# --- images ------------------------------------------------------------------------------------------
def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def png(tmp_path):
    a = _rgb(37, 53)
    p = tmp_path / "img.png"
    Image.fromarray(a).save(p)
    return p, a


def _fill_reference(a: np.ndarray, width: int, height: int, resample: int) -> np.ndarray:
    """The image crate's ``resize_to_fill``: scale to cover, round half away from zero, crop centre."""
    h, w = a.shape[:2]
    r = max(width / w, height / h)
    nw, nh = max(math.floor(w * r + 0.5), 1), max(math.floor(h * r + 0.5), 1)
    big = np.asarray(Image.fromarray(a).resize((nw, nh), resample))
    top, left = (nh - height) // 2, (nw - width) // 2
    return big[top : top + height, left : left + width]


def test_public_surface_matches_candle_examples():
    for name in ("device", "load_image", "load_image_and_resize", "save_image", "save_image_resize",
                 "hub_load_safetensors", "hub_load_local_safetensors", "audio", "bs1770", "chat_template",
                 "coco_classes", "imagenet", "token_output_stream", "wav"):  # fmt: skip
        assert hasattr(candle_examples, name), name
    assert candle_examples.token_output_stream.TokenOutputStream is cj.generation.TokenOutputStream


def test_device():
    assert candle_examples.device(True) is Device.Cpu
    best = candle_examples.device(False)
    assert best == Device.cuda_if_available(0)


def test_load_image_returns_u8_chw_and_original_size(png):
    p, a = png
    t, h, w = candle_examples.load_image(p)
    assert (h, w) == (37, 53) and t.shape == (3, 37, 53) and t.dtype == DType.U8
    np.testing.assert_array_equal(np.asarray(t), a.transpose(2, 0, 1))
    # landscape: the width becomes 20, the height (20 * 37) // 53 = 13 (Candle's integer arithmetic)
    t, h, w = candle_examples.load_image(p, 20)
    assert (h, w) == (37, 53) and t.shape == (3, 13, 20) and t.dtype == DType.U8
    ref = np.asarray(Image.fromarray(a).resize((20, 13), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(np.asarray(t), ref.transpose(2, 0, 1))
    # portrait and square: the height becomes the given size
    q = p.with_name("tall.png")
    Image.fromarray(a.transpose(1, 0, 2).copy()).save(q)
    t, h, w = candle_examples.load_image(q, 20)
    assert (h, w) == (53, 37) and t.shape == (3, 20, (20 * 37) // 53)


def test_load_image_converts_gray_and_rgba_to_rgb(tmp_path):
    g = _rgb(8, 9)[:, :, 0]
    Image.fromarray(g).save(tmp_path / "g.png")
    t, _, _ = candle_examples.load_image(tmp_path / "g.png")
    np.testing.assert_array_equal(np.asarray(t), np.stack([g, g, g]))
    rgba = np.concatenate([_rgb(8, 9), np.full((8, 9, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    t, _, _ = candle_examples.load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(np.asarray(t), rgba[:, :, :3].transpose(2, 0, 1))


def test_load_image_and_resize(png):
    p, a = png
    t = candle_examples.load_image_and_resize(p, 16, 10)  # width, height
    assert t.shape == (3, 10, 16) and t.dtype == DType.U8
    ref = _fill_reference(a, 16, 10, Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(np.asarray(t), ref.transpose(2, 0, 1))


def test_imagenet(png):
    p, a = png
    x = candle_examples.imagenet.load_image224(p)
    assert x.shape == (3, 224, 224) and x.dtype == DType.F32
    np.testing.assert_array_equal(np.asarray(x), np.asarray(vision.load_image224(p)))
    mean, std = (0.5, 0.25, 0.125), (0.2, 0.3, 0.4)
    y = np.asarray(candle_examples.imagenet.load_image_with_std_mean(p, 24, mean, std))
    ref = _fill_reference(a, 24, 24, Image.Resampling.BILINEAR).transpose(2, 0, 1).astype(np.float32) / 255
    ref = (ref - np.float32(mean).reshape(3, 1, 1)) / np.float32(std).reshape(3, 1, 1)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)
    z = np.asarray(candle_examples.imagenet.load_image(p, 24))
    m, s = np.float32(candle_examples.imagenet.IMAGENET_MEAN), np.float32(candle_examples.imagenet.IMAGENET_STD)
    np.testing.assert_allclose(z, (ref * np.float32(std).reshape(3, 1, 1) + np.float32(mean).reshape(3, 1, 1)
                                   - m.reshape(3, 1, 1)) / s.reshape(3, 1, 1), rtol=1e-5, atol=1e-5)  # fmt: skip
    assert candle_examples.imagenet.load_image518(p).shape == (3, 518, 518)
    assert candle_examples.imagenet.IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert candle_examples.imagenet.IMAGENET_STD == (0.229, 0.224, 0.225)
    classes = candle_examples.imagenet.CLASSES
    assert len(classes) == candle_examples.imagenet.CLASS_COUNT == 1000
    assert classes[0] == "tench" and classes[1] == "goldfish" and classes[999] == "toilet tissue"


def test_coco_classes():
    names = candle_examples.coco_classes.NAMES
    assert len(names) == 80 and len(set(names)) == 80
    assert names[:5] == ("person", "bicycle", "car", "motorbike", "aeroplane")
    assert names[-1] == "toothbrush"


def test_save_image_round_trip(tmp_path):
    a = _rgb(11, 17, seed=3)
    t = cj.Tensor.new(a.transpose(2, 0, 1).copy())
    candle_examples.save_image(t, tmp_path / "out.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), a)
    candle_examples.save_image_resize(t, tmp_path / "small.png", 8, 10)  # h, w
    got = np.asarray(Image.open(tmp_path / "small.png"))
    assert got.shape == (8, 10, 3)
    np.testing.assert_array_equal(got, _fill_reference(a, 10, 8, Image.Resampling.BICUBIC))


def test_save_image_rejects_bad_input(tmp_path):
    a = _rgb(4, 5)
    with pytest.raises(vision.ImageError, match=r"save_image: expected a \(3, H, W\)"):
        candle_examples.save_image(cj.Tensor.new(a), tmp_path / "x.png")  # (h, w, 3)
    with pytest.raises(vision.ImageError, match="u8"):
        candle_examples.save_image(cj.Tensor.new(a.transpose(2, 0, 1).astype(np.float32)), tmp_path / "x.png")
    with pytest.raises(vision.ImageError, match=r"x\.notaformat"):
        candle_examples.save_image(cj.Tensor.new(a.transpose(2, 0, 1).copy()), tmp_path / "x.notaformat")
    with pytest.raises(vision.ImageError, match="save_image_resize"):
        candle_examples.save_image_resize(cj.Tensor.new(a), tmp_path / "x.png", 2, 2)


def test_image_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.jpg"
    for fn in (lambda p: candle_examples.load_image(p, 10), lambda p: candle_examples.load_image_and_resize(p, 4, 4),
               candle_examples.imagenet.load_image224):  # fmt: skip
        with pytest.raises(vision.ImageError, match=r"missing\.jpg"):
            fn(missing)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(errors.Error, match=r"notes\.png"):
        candle_examples.load_image(text)


def test_image_sizes_of_the_wrong_type(png, tmp_path):
    """int("x") raised a bare ValueError and int(2.5) resized to 2; Candle's arguments are usize."""
    p, a = png
    img = cj.Tensor.new(a.transpose(2, 0, 1).copy())
    calls = [
        (lambda v: candle_examples.load_image(p, v), "load_image: resize_longest"),
        (lambda v: candle_examples.load_image_and_resize(p, v, 4), "load_image_and_resize: width"),
        (lambda v: candle_examples.load_image_and_resize(p, 4, v), "load_image_and_resize: height"),
        (lambda v: candle_examples.save_image_resize(img, tmp_path / "o.png", v, 4), "save_image_resize: h"),
        (lambda v: candle_examples.imagenet.load_image(p, v), "imagenet.load_image: res"),
    ]
    for call, what in calls:
        for bad in ("x", 2.5) if what.endswith("resize_longest") else ("x", 2.5, None):  # None: no resize
            with pytest.raises(errors.NotAnInteger, match=re.escape(f"{what} must be an int, got {bad!r}")):
                call(bad)
    for call, what in calls[:4]:
        with pytest.raises(errors.InvalidArgument, match=re.escape(f"{what} must be positive, got 0")):
            call(0)
    assert candle_examples.load_image(p, np.int64(8))[0].shape[1:] == candle_examples.load_image(p, 8)[0].shape[1:]


# --- safetensors index ---------------------------------------------------------------------------------
def _sharded(tmp_path, shards=("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")):
    weight_map = {"a": shards[0], "b": shards[1], "c": shards[0]}
    for i, s in enumerate(shards):
        names = [k for k, v in weight_map.items() if v == s]
        cj.safetensors.save({n: cj.Tensor.new([float(i)]) for n in names}, tmp_path / s)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return list(shards)


def test_hub_load_local_safetensors(tmp_path):
    shards = _sharded(tmp_path)
    files = candle_examples.hub_load_local_safetensors(tmp_path, "model.safetensors.index.json")
    assert files == [tmp_path / s for s in shards]
    assert all(f.is_file() for f in files)
    st = cj.safetensors.MmapedSafetensors.multi(files)
    assert sorted(st.names()) == ["a", "b", "c"]
    st.close()


def test_hub_load_local_safetensors_errors(tmp_path):
    shards = _sharded(tmp_path)
    (tmp_path / shards[1]).unlink()
    with pytest.raises(errors.SafeTensor, match=r"model-00002-of-00002\.safetensors"):
        candle_examples.hub_load_local_safetensors(tmp_path, "model.safetensors.index.json")
    with pytest.raises(errors.SafeTensor, match=r"other\.json"):
        candle_examples.hub_load_local_safetensors(tmp_path, "other.json")
    bad = {"not_json.json": "{", "no_map.json": json.dumps({"metadata": {}}), "list.json": '{"weight_map": []}'}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(errors.SafeTensor, match=name.replace(".", r"\.")):
            candle_examples.hub_load_local_safetensors(tmp_path, name)


def test_hub_load_safetensors_points_to_the_local_version():
    with pytest.raises(errors.Error, match="hub_load_local_safetensors"):
        candle_examples.hub_load_safetensors("org/model", "model.safetensors.index.json")


# --- wav -----------------------------------------------------------------------------------------------
def test_write_pcm_as_wav_matches_the_stdlib_writer(tmp_path):
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.7, -3.0, 0.99999, -0.00001, np.nan], np.float32)
    ints = np.array([0, 16383, -16383, 32767, -32767, 32767, -32767, 32766, 0, 0], np.int16)  # clamp, * 32767, trunc
    ref = io.BytesIO()
    with wave.open(ref, "wb") as wf:
        wf.setnchannels(1), wf.setsampwidth(2), wf.setframerate(24_000)
        wf.writeframes(ints.astype("<i2").tobytes())
    got = io.BytesIO()
    candle_examples.wav.write_pcm_as_wav(got, x, 24_000)
    assert got.getvalue() == ref.getvalue()
    # f64, i16 and a path; soundfile reads it back
    candle_examples.wav.write_pcm_as_wav(tmp_path / "a.wav", x.astype(np.float64), 24_000)
    assert (tmp_path / "a.wav").read_bytes() == ref.getvalue()
    candle_examples.wav.write_pcm_as_wav(tmp_path / "b.wav", ints, 16_000)
    data, rate = sf.read(tmp_path / "b.wav", dtype="int16")
    assert rate == 16_000 and data.dtype == np.int16
    np.testing.assert_array_equal(data, ints)
    with pytest.raises(errors.Audio, match="mono"):
        candle_examples.wav.write_pcm_as_wav(io.BytesIO(), np.zeros((2, 3), np.float32), 16_000)
    with pytest.raises(errors.Audio, match="i16"):
        candle_examples.wav.write_pcm_as_wav(io.BytesIO(), [40_000], 16_000)


def test_write_pcm_as_wav_scales_f32_samples_in_f32():
    # Candle's `(self.clamp(-1.0, 1.0) * 32767.0) as i16` for f32: the f32 product rounds before the
    # truncation, so the i16 -> k / 32767 (f32) -> i16 round trip is exact (in f64, half of it is off by one)
    k = np.arange(-32767, 32768)
    x = (k / 32767).astype(np.float32)
    np.testing.assert_array_equal((x * np.float32(32767)).astype(np.int16), k)  # the f32 reference
    got = io.BytesIO()
    candle_examples.wav.write_pcm_as_wav(got, x, 16_000)
    np.testing.assert_array_equal(np.frombuffer(got.getvalue()[44:], "<i2"), k)
    r = np.random.default_rng(0).uniform(-1.2, 1.2, 100_000).astype(np.float32)
    ref = (np.clip(r, np.float32(-1), np.float32(1)) * np.float32(32767)).astype(np.int16)
    got = io.BytesIO()
    candle_examples.wav.write_pcm_as_wav(got, r, 16_000)
    np.testing.assert_array_equal(np.frombuffer(got.getvalue()[44:], "<i2"), ref)


# --- audio ---------------------------------------------------------------------------------------------
def test_pcm_decode_first_channel_native_rate(tmp_path):
    rng = np.random.default_rng(1)
    stereo = rng.integers(-32768, 32768, (500, 2), dtype=np.int16)
    sf.write(tmp_path / "s.wav", stereo, 22_050, subtype="PCM_16")
    pcm, rate = candle_examples.audio.pcm_decode(tmp_path / "s.wav")
    assert rate == 22_050 and pcm.dtype == np.float32 and pcm.shape == (500,)
    np.testing.assert_array_equal(pcm, stereo[:, 0].astype(np.float32) / 32768)
    f = rng.uniform(-1, 1, 300).astype(np.float32)
    sf.write(tmp_path / "f.flac", (f * 32767).astype(np.int16), 8_000)
    pcm, rate = candle_examples.audio.pcm_decode(tmp_path / "f.flac")
    assert rate == 8_000
    np.testing.assert_allclose(pcm, (f * 32767).astype(np.int16) / 32768, atol=0)


def test_pcm_decode_errors_name_the_file(tmp_path):
    with pytest.raises(errors.Audio, match=r"nothere\.wav"):
        candle_examples.audio.pcm_decode(tmp_path / "nothere.wav")
    (tmp_path / "text.wav").write_text("no sound here")
    with pytest.raises(errors.Audio, match=r"text\.wav"):
        candle_examples.audio.pcm_decode(tmp_path / "text.wav")


def test_resample_a_sine():
    t = np.arange(16_000) / 16_000
    x = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    y = candle_examples.audio.resample(x, 16_000, 8_000)
    assert y.dtype == np.float32 and y.shape == (8_000,)
    ref = np.sin(2 * np.pi * 440 * np.arange(8_000) / 8_000)
    np.testing.assert_allclose(y[200:-200], ref[200:-200], atol=2e-3)


def _loudness(x: np.ndarray, rate: int) -> float:
    m = bs1770.ChannelLoudnessMeter(rate)
    m.push(x)
    return bs1770.gated_mean(m.as_100ms_windows()).loudness_lkfs()


def test_normalize_loudness():
    rate = 24_000
    t = np.arange(3 * rate) / rate
    x = (0.05 * np.sin(2 * np.pi * 300 * t) + 0.02 * np.sin(2 * np.pi * 2500 * t)).astype(np.float32)
    wav = cj.Tensor.new(x)
    out = candle_examples.audio.normalize_loudness(wav, rate, False)
    assert out.shape == (3 * rate,) and out.dtype == DType.F32
    big = np.abs(x) > 1e-3
    gain = np.asarray(out)[big] / x[big]
    np.testing.assert_allclose(gain, gain[0], rtol=1e-5)  # one linear gain
    assert abs(_loudness(np.asarray(out), rate) - (-14.0)) < 1e-3
    comp = candle_examples.audio.normalize_loudness(wav, rate, True)
    np.testing.assert_allclose(np.asarray(comp), np.tanh(np.asarray(out)), rtol=1e-6, atol=1e-7)
    quiet = cj.Tensor.new((x * 1e-3).astype(np.float32))  # RMS below 2e-3: unchanged
    assert candle_examples.audio.normalize_loudness(quiet, rate, True) is quiet
    with pytest.raises(errors.UnexpectedNumberOfDims):
        candle_examples.audio.normalize_loudness(cj.Tensor.new(x.reshape(1, -1)), rate, False)


def test_normalize_loudness_of_empty_short_and_silent_waveforms_is_the_input():
    # Candle: the empty mean is NaN (not < 2e-3), no 100 ms window, `gated_mean` is None: unchanged
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x in (np.zeros(0, np.float32), np.full(1, 0.5, np.float32), np.zeros(48_000, np.float32)):
            wav = cj.Tensor.new(x)
            assert candle_examples.audio.normalize_loudness(wav, 48_000, True) is wav


# --- bs1770 --------------------------------------------------------------------------------------------
# ITU-R BS.1770-4, Annex 1, Tables 1 and 2: the K-weighting filter at 48 kHz.
_STAGE1_B = (1.53512485958697, -2.69169618940638, 1.19839281085285)
_STAGE1_A = (1.0, -1.69065929318241, 0.73248077421585)
_STAGE2_B = (1.0, -2.0, 1.0)
_STAGE2_A = (1.0, -1.99004745483398, 0.99007225036621)


def _reference_integrated_loudness(channels: list[np.ndarray]) -> float:
    """BS.1770-4 integrated loudness at 48 kHz, written from the standard: the tabled filters
    (direct form), mean squares over 400 ms blocks stepped by 100 ms, channel weights 1, the -70 LKFS
    absolute gate and the -10 LU relative gate."""
    from scipy.signal import lfilter

    block, step = 19_200, 4_800
    z = [lfilter(_STAGE2_B, _STAGE2_A, lfilter(_STAGE1_B, _STAGE1_A, np.asarray(c, np.float64))) for c in channels]
    n = (len(z[0]) - block) // step + 1
    powers = np.array([sum(np.mean(zi[j * step : j * step + block] ** 2) for zi in z) for j in range(n)])
    loud = -0.691 + 10 * np.log10(powers)
    kept = powers[loud > -70]
    rel = -0.691 + 10 * np.log10(kept.mean()) - 10
    kept = kept[-0.691 + 10 * np.log10(kept) > rel]
    return float(-0.691 + 10 * np.log10(kept.mean()))


def test_k_weighting_is_the_standard_filter_at_48k():
    sos = bs1770.k_weighting(48_000)
    np.testing.assert_allclose(sos[0], _STAGE1_B + _STAGE1_A, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sos[1], _STAGE2_B + _STAGE2_A, rtol=0, atol=1e-12)


@pytest.mark.parametrize("rate", [48_000, 44_100])
def test_standard_test_signals(rate):
    t = np.arange(5 * rate) / rate
    # BS.1770-4: a 0 dBFS 997 Hz sine in one front channel reads -3.01 LKFS
    assert abs(_loudness(np.sin(2 * np.pi * 997 * t), rate) - (-3.01)) < 0.01
    # EBU Tech 3341 case 1: 1 kHz at -23 dBFS in both stereo channels reads -23.0 LUFS (+- 0.1)
    x = 10 ** (-23 / 20) * np.sin(2 * np.pi * 1000 * t)
    left, right = bs1770.ChannelLoudnessMeter(rate), bs1770.ChannelLoudnessMeter(rate)
    left.push(x)
    right.push(x)
    stereo = bs1770.reduce_stereo(left.as_100ms_windows(), right.as_100ms_windows())
    assert abs(bs1770.gated_mean(stereo).loudness_lkfs() - (-23.0)) < 0.1


def test_gated_loudness_matches_the_reference():
    rate = 48_000
    rng = np.random.default_rng(0)
    t = np.arange(2 * rate) / rate
    parts = [  # loud, soft (under the relative gate), silence (under the absolute gate), loud noise
        0.3 * np.sin(2 * np.pi * 440 * t), 0.003 * np.sin(2 * np.pi * 440 * t), np.zeros(rate),
        0.2 * rng.standard_normal(2 * rate),
    ]  # fmt: skip
    left = np.concatenate(parts)
    right = np.concatenate([0.5 * p for p in parts])
    meters = [bs1770.ChannelLoudnessMeter(rate) for _ in range(2)]
    meters[0].push(left)
    meters[1].push(right)
    stereo = bs1770.reduce_stereo(meters[0].as_100ms_windows(), meters[1].as_100ms_windows())
    got = bs1770.gated_mean(stereo).loudness_lkfs()
    assert abs(got - _reference_integrated_loudness([left, right])) < 1e-6
    assert abs(_loudness(left, rate) - _reference_integrated_loudness([left])) < 1e-6
    # the relative gate drops the soft part's blocks (above -70 LKFS) as the absolute gate drops silence
    muted = np.concatenate([parts[0], np.zeros_like(parts[1]), *parts[2:]])
    assert abs(_loudness(left, rate) - _loudness(muted, rate)) < 1e-3


def test_meter_push_in_pieces_equals_push_at_once():
    rate = 16_000
    x = np.random.default_rng(2).uniform(-0.5, 0.5, 12_345)
    whole = bs1770.ChannelLoudnessMeter(rate)
    whole.push(x)
    pieces = bs1770.ChannelLoudnessMeter.new(rate)
    for a, b in [(0, 1), (1, 1500), (1500, 1600), (1600, 9000)]:
        pieces.push(x[a:b])
    pieces.push(iter(x[9000:].tolist()))  # any iterable of floats
    assert len(whole.as_100ms_windows()) == len(pieces.into_100ms_windows()) == 12_345 // 1_600
    np.testing.assert_allclose([p.value for p in whole.as_100ms_windows()],
                               [p.value for p in pieces.as_100ms_windows()], rtol=1e-12)  # fmt: skip
    short = bs1770.ChannelLoudnessMeter(rate)
    short.push(np.zeros(rate // 10 - 1))
    assert short.as_100ms_windows().len() == 0
    short.push([0.0])
    assert short.as_100ms_windows().len() == 1


def test_power_gates_and_stereo_reduction():
    assert abs(bs1770.Power.from_lkfs(-23.0).loudness_lkfs() - (-23.0)) < 1e-12
    assert bs1770.Power(1.0)[0] == 1.0 and bs1770.Power(1.0).loudness_lkfs() == -0.691
    silent = bs1770.ChannelLoudnessMeter(8_000)
    silent.push(np.zeros(8_000))
    assert bs1770.gated_mean(silent.as_100ms_windows()) is None
    three = bs1770.Windows100ms([bs1770.Power(0.1)] * 3)  # shorter than one 400 ms block
    assert bs1770.gated_mean(three) is None
    left = bs1770.Windows100ms([bs1770.Power(0.1), bs1770.Power(0.2)])
    right = bs1770.Windows100ms([bs1770.Power(0.3), bs1770.Power(0.4)])
    assert [p.value for p in bs1770.reduce_stereo(left, right)] == pytest.approx([0.4, 0.6])
    bs1770.reduce_stereo_in_place(left.as_mut(), right.as_ref())
    assert [p.value for p in left] == pytest.approx([0.4, 0.6])
    with pytest.raises(errors.Audio, match="same length"):
        bs1770.reduce_stereo(left, three)


# --- token output stream -------------------------------------------------------------------------------
class _CharTokenizer:
    """Each id is one byte; decoding joins the bytes (so a two-byte character spans two tokens)."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_token_output_stream_holds_back_partial_characters():
    stream = candle_examples.token_output_stream.TokenOutputStream.new(_CharTokenizer())
    pieces = [stream.next_token(t) for t in "hé!".encode()]
    assert pieces == ["h", None, "é", "!"]
    assert stream.decode_all() == "hé!" and stream.decode_rest() is None


# --- chat templates ------------------------------------------------------------------------------------
_S, _U, _A = Message.system, Message.user, Message.assistant
_CONV = [_S("sys"), _U(" a "), _A("b"), _U("c")]

# Candle's presets (candle-examples/src/chat_template.rs) rendered for _CONV with
# add_generation_prompt=True, enable_thinking=True by a plain jinja2 Environment (as minijinja's defaults).
_GOLDEN = {
    "chatml": "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
    "<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\n",
    "chatml_with_thinking": "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n"
    "b<|im_end|>\n<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\n<think>\n",
    "llama2": "<s>[INST] <<SYS>>\nsys\n<</SYS>>\n\n a  [/INST] b </s><s>[INST] c [/INST]",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nsys<|eot_id|><|start_header_id|>user"
    "<|end_header_id|>\n\na<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nb<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nc<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "<s>[INST]  a  [/INST] b</s>[INST] c [/INST]",
    "gemma": "<start_of_turn>user\n a <end_of_turn>\n<start_of_turn>model\nb<end_of_turn>\n<start_of_turn>user\n"
    "c<end_of_turn>\n<start_of_turn>model\n",
}


@pytest.mark.parametrize("name", sorted(_GOLDEN))
def test_chat_template_presets(name):
    template = getattr(ChatTemplate, name)()
    got = template.apply(_CONV, ChatTemplateOptions.for_generation().with_thinking())
    assert got == _GOLDEN[name]


def test_chat_template_candle_unit_tests():
    r = ChatTemplate.chatml().apply_for_generation([_S("You are helpful."), _U("Hello")])
    assert "<|im_start|>system\nYou are helpful.<|im_end|>" in r and r.endswith("<|im_start|>assistant\n")
    r = ChatTemplate.chatml_with_thinking().apply([_U("Think")], ChatTemplateOptions.for_generation().with_thinking())
    assert "<think>" in r
    assert "<think>" not in ChatTemplate.chatml_with_thinking().apply_for_generation([_U("Think")])
    r = ChatTemplate.llama3().apply_for_generation([_S("You are helpful."), _U("Hello")])
    assert r.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>") and "<|eot_id|>" in r
    assert ChatTemplate.chatml().apply([_U("x")], ChatTemplateOptions.for_training()).endswith("<|im_end|>\n")


# An HF-style template without whitespace control: only trim_blocks / lstrip_blocks (transformers'
# settings) render it without stray newlines and indents.
_HF_TEMPLATE = """{% for message in messages %}
    {% if message['role'] == 'system' %}
<|system|>
{{ message['content'] }}{{ eos_token }}
    {% elif message['role'] == 'user' %}
<|user|>
{{ message['content'] }}{{ eos_token }}
    {% else %}
<|assistant|>
{{ message['content'] }}{{ eos_token }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|assistant|>
{% endif %}
{{ greeting | default('') }}"""


def test_from_tokenizer_config_renders_as_transformers(tmp_path):
    from transformers.utils.chat_template_utils import render_jinja_template

    config = {"bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>", "chat_template": _HF_TEMPLATE}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    template = ChatTemplate.from_tokenizer_config(tmp_path / "tokenizer_config.json")
    assert (template.bos_token, template.eos_token) == ("<s>", "</s>")
    msgs = [{"role": m.role, "content": m.content} for m in _CONV]
    for gen in (False, True):
        (ref,), _ = render_jinja_template(
            conversations=[msgs], chat_template=_HF_TEMPLATE, add_generation_prompt=gen, bos_token="<s>",
            eos_token="</s>", greeting="hi",
        )  # fmt: skip
        opts = ChatTemplateOptions(add_generation_prompt=gen, extra_context={"greeting": "hi"})
        assert template.apply(_CONV, opts) == ref.lstrip()
        assert template.apply(msgs, opts) == ref.lstrip()  # plain dicts work too
    named = {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}
    assert ChatTemplate.from_tokenizer_config_str(json.dumps(named)).apply([]) == "D"
    first = {"chat_template": [{"name": "a", "template": "A"}, {"name": "b", "template": "B"}]}
    assert ChatTemplate.from_tokenizer_config_str(json.dumps(first)).apply([]) == "A"


def test_chat_template_extra_context_cannot_set_what_apply_sets():
    # a plain TypeError ("multiple values for keyword argument") before; now a ChatTemplateError naming the key
    for key in ("messages", "add_generation_prompt", "enable_thinking"):
        opts = ChatTemplateOptions(extra_context={key: True, "greeting": "hi"})
        with pytest.raises(ChatTemplateError.RenderError, match=key):
            ChatTemplate.chatml().apply([Message.user("hi")], opts)


def test_chat_template_errors(tmp_path):
    with pytest.raises(ChatTemplateError.IoError, match=r"nope\.json"):
        ChatTemplate.from_tokenizer_config(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ChatTemplateError.ParseError, match=r"bad\.json"):
        ChatTemplate.from_tokenizer_config(tmp_path / "bad.json")
    (tmp_path / "none.json").write_text('{"eos_token": "</s>"}')
    with pytest.raises(ChatTemplateError.NoTemplate, match=r"none\.json"):
        ChatTemplate.from_tokenizer_config(tmp_path / "none.json")
    with pytest.raises(ChatTemplateError.TemplateError):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(ChatTemplateError.RenderError, match="alternate"):
        ChatTemplate.llama2().apply_for_generation([_U("a"), _U("b")])
    assert issubclass(ChatTemplateError, errors.Error)


def test_conversation():
    conv = Conversation.new(ChatTemplate.chatml(), "You are helpful.")
    p1 = conv.user_turn("Hi")
    assert p1.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    conv.assistant_response("Hello!")
    p2 = conv.user_turn("How are you?")
    assert p2.startswith(p1) and "Hello!" in p2 and "How are you?" in p2
    assert [m.role for m in conv.messages()] == ["system", "user", "assistant", "user"]
    assert not conv.format_history().endswith("<|im_start|>assistant\n")
    conv.clear()
    assert conv.messages() == [_S("You are helpful.")]
    bare = Conversation.without_system(ChatTemplate.chatml_with_thinking()).with_options(
        ChatTemplateOptions.for_generation().with_thinking()
    )
    assert bare.user_turn("q") == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n"
    bare.add_message(_A("x"))
    bare.clear()
    assert bare.messages() == []
