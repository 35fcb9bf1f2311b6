"""Whisper: random small configs against transformers, the mel spectrogram, audio input errors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from candlejax import Device, Tensor, errors  # noqa: E402
from candlejax import audio as cj_audio  # noqa: E402
from candlejax.models import whisper  # noqa: E402
from candlejax.models.whisper import audio as wa  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    cfg = WhisperConfig(
        vocab_size=120, num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=48, max_source_positions=30,
        max_target_positions=24, decoder_start_token_id=1, pad_token_id=0, eos_token_id=2, bos_token_id=2,
    )  # fmt: skip
    hf = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for n, p in hf.named_parameters():
            if "layer_norm" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    d = tmp_path_factory.mktemp("whisper_tiny")
    hf.save_pretrained(d)
    return hf, whisper.Whisper.from_pretrained(d, Device.Cpu)


def test_encoder_decoder_match_transformers(tiny):
    hf, m = tiny
    mel = torch.randn(2, 16, 60)
    toks = torch.tensor([[1, 5, 7, 9, 11, 3], [1, 8, 8, 100, 4, 2]])
    with torch.no_grad():
        enc = hf.model.encoder(mel).last_hidden_state.numpy()
        ref = hf(input_features=mel, decoder_input_ids=toks).logits.numpy()
    audio = m.encoder.forward(Tensor.from_numpy(mel.numpy()))
    assert audio.shape == (2, 30, 32)
    np.testing.assert_allclose(np.asarray(audio), enc, atol=1e-4, rtol=0)
    logits = m.decoder.final_linear(m.decoder.forward(toks.numpy().astype(np.uint32), audio))
    assert logits.shape == (2, 6, 120)
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(m.forward(Tensor.from_numpy(mel.numpy()), toks.numpy())), ref, atol=1e-4)


def test_pure_step_takes_token_tensors_and_scans_under_jit(tiny):
    """``whisper.step`` / ``step_jit`` / ``prefill_jit`` with the token ids as a ``Tensor`` (what
    candlejax code holds) give transformers' logits, and ``step`` runs inside ``jax.lax.scan`` under
    ``jax.jit``; a Tensor of ids raised UnsupportedDTypeForOp 'I32 (supported: ..., i32, ...)'."""
    import jax
    import jax.numpy as jnp

    hf, m = tiny
    mel = torch.randn(2, 16, 60, generator=torch.Generator().manual_seed(3))
    toks = torch.tensor([[1, 5, 7, 9], [1, 8, 8, 100]])
    with torch.no_grad():
        ref = hf(input_features=mel, decoder_input_ids=toks).logits.numpy()
    dec, audio = m.decoder, m.encoder.forward(Tensor.from_numpy(mel.numpy()))
    ids = Tensor.from_numpy(toks.numpy().astype(np.int32))
    logits, _ = whisper.step(dec, whisper.new_state(dec, audio), ids)
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4)
    logits, _ = whisper.step(dec, whisper.new_state(dec, audio), toks.numpy())  # numpy's int64 ids
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4)
    logits, _ = whisper.step_jit(dec, whisper.new_state(dec, audio), ids)
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4)
    h, _ = whisper.prefill_jit(dec, whisper.new_state(dec, audio), ids)
    np.testing.assert_allclose(np.asarray(dec.final_linear(h)), ref, atol=1e-4)

    @jax.jit
    def scanned(dec, audio, ids):
        _, state = whisper.step(dec, whisper.new_state(dec, audio), ids.narrow(1, 0, 1))

        def body(state, col):
            logits, state = whisper.step(dec, state, Tensor(col[:, None]))
            return state, logits.squeeze(1)

        return jax.lax.scan(body, state, jnp.asarray(ids.narrow(1, 1, 3)).T)[1]

    np.testing.assert_allclose(np.asarray(scanned(dec, audio, ids)).transpose(1, 0, 2), ref[:, 1:], atol=1e-4)


def test_stateful_decoder_under_jit_over_audio_keeps_no_tracer(tiny):
    """``jax.jit`` over a closure calling ``decoder.forward(ids, audio)`` with the audio features traced
    (the ids on the host): transformers' hidden states, and the decoder keeps nothing from the trace
    (the next eager call raised JAX's UnexpectedTracerError): ``flush_kv_cache=False`` starts anew."""
    import jax

    hf, m = tiny
    mel = torch.randn(1, 16, 60, generator=torch.Generator().manual_seed(4))
    toks = np.array([[1, 5, 7, 9]])
    with torch.no_grad():
        ref = hf.model(input_features=mel, decoder_input_ids=torch.from_numpy(toks)).last_hidden_state.numpy()
    dec, audio = m.decoder, m.encoder.forward(Tensor.from_numpy(mel.numpy()))
    got = jax.jit(lambda a: dec.forward(toks[:, :2], a))(audio)
    np.testing.assert_allclose(np.asarray(got), ref[:, :2], atol=1e-4)
    np.testing.assert_allclose(np.asarray(dec.forward(toks[:, :2], audio, False)), ref[:, :2], atol=1e-4)
    np.testing.assert_allclose(np.asarray(dec.forward(toks, audio, False)), ref, atol=1e-4)


@pytest.mark.parametrize("layout", ["sharded", "weights-file"])
def test_sharded_folder_and_weights_file_load_as_transformers(tiny, tmp_path, layout):
    """A folder saved with ``save_pretrained(max_shard_size=...)`` (``model.safetensors.index.json`` and
    its shards) and the path of the ``model.safetensors`` itself load as transformers' folder: the
    first raised 'neither model.safetensors nor a CTranslate2 model.bin found', the second was read as
    a CTranslate2 ``model.bin``."""
    hf, _ = tiny
    if layout == "sharded":
        hf.save_pretrained(tmp_path, max_shard_size="20KB")
        assert (tmp_path / "model.safetensors.index.json").is_file()
        path = tmp_path
    else:
        hf.save_pretrained(tmp_path)
        path = tmp_path / "model.safetensors"
    mel = torch.randn(1, 16, 60)
    toks = torch.tensor([[1, 5, 7, 9, 11, 3]])
    with torch.no_grad():
        ref = hf(input_features=mel, decoder_input_ids=toks).logits.numpy()
    m = whisper.Whisper.from_pretrained(path, Device.Cpu)
    np.testing.assert_allclose(np.asarray(m.forward(Tensor.from_numpy(mel.numpy()), toks.numpy())), ref, atol=1e-4)
    assert m.path == str(tmp_path)


def test_untied_output_projection_is_proj_out(tmp_path):
    """A checkpoint with ``tie_word_embeddings: false`` projects with its own ``proj_out.weight`` (as
    transformers does), in the float model, the compiled decoding step and the GGUF model; the tied
    table gave logits off by ~18 here."""
    from safetensors.numpy import load_file
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from candlejax.io import gguf
    from candlejax.models.whisper import quantized_model

    torch.manual_seed(5)
    cfg = WhisperConfig(
        vocab_size=120, num_mel_bins=16, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=48, max_source_positions=30,
        max_target_positions=24, decoder_start_token_id=1, pad_token_id=0, eos_token_id=2, bos_token_id=2,
        tie_word_embeddings=False,
    )  # fmt: skip
    hf = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        hf.proj_out.weight.normal_()
    hf.save_pretrained(tmp_path)
    m = whisper.Whisper.from_pretrained(tmp_path, Device.Cpu)
    mel = torch.randn(1, 16, 60)
    toks = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        ref = hf(input_features=mel, decoder_input_ids=toks).logits.numpy()
    np.testing.assert_allclose(np.asarray(m.forward(Tensor.from_numpy(mel.numpy()), toks.numpy())), ref, atol=1e-4)
    assert not m.config.tie_word_embeddings
    state = whisper.new_state(m.decoder, m.encoder.forward(Tensor.from_numpy(mel.numpy())))
    lg, _ = whisper.step_jit(m.decoder, state, toks.numpy().astype(np.int32))
    np.testing.assert_allclose(np.asarray(lg), ref, atol=1e-4, rtol=0)
    gguf.write(str(tmp_path / "f32.gguf"), {}, load_file(str(tmp_path / "model.safetensors")))
    q = quantized_model.Whisper.load(quantized_model.VarBuilder.from_gguf(str(tmp_path / "f32.gguf")), m.config)
    np.testing.assert_allclose(np.asarray(q.forward(Tensor.from_numpy(mel.numpy()), toks.numpy())), ref, atol=1e-4)


def test_suppressed_tokens_missing_from_config_json_come_from_generation_config(tmp_path):
    """large-v3's ``config.json`` has no ``suppress_tokens`` (its non-speech tokens are in
    ``generation_config.json``, which transformers' ``generate`` reads): they are read from there
    (they were dropped, so ``transcribe`` could emit the tokens OpenAI and transformers suppress)."""
    import json

    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(
        vocab_size=120, num_mel_bins=16, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_source_positions=30,
        max_target_positions=24, decoder_start_token_id=1, pad_token_id=0, eos_token_id=2, bos_token_id=2,
        suppress_tokens=[5, 9, 11], begin_suppress_tokens=[7, 2],
    )  # fmt: skip
    WhisperForConditionalGeneration(cfg).save_pretrained(tmp_path)
    c = json.loads((tmp_path / "config.json").read_text())
    del c["suppress_tokens"]
    (tmp_path / "config.json").write_text(json.dumps(c))
    m = whisper.Whisper.from_pretrained(tmp_path, Device.Cpu)
    assert m.config.suppress_tokens == (5, 9, 11) and m.config.begin_suppress_tokens == (7, 2)
    # config.json's own values are kept
    c["suppress_tokens"] = [3]
    (tmp_path / "config.json").write_text(json.dumps(c))
    assert whisper.Config.from_json_file(tmp_path / "config.json").suppress_tokens == (3,)


def test_cached_decoding_equals_uncached(tiny):
    _, m = tiny
    rng = np.random.default_rng(1)
    audio = m.encoder.forward(Tensor.from_numpy(rng.standard_normal((1, 16, 60)).astype(np.float32)))
    toks = rng.integers(3, 120, (1, 9))
    full = np.asarray(m.decoder.forward(toks, audio, True))
    parts = [np.asarray(m.decoder.forward(toks[:, :4], audio, True))]
    parts += [np.asarray(m.decoder.forward(toks[:, i : i + 1], audio, False)) for i in range(4, 9)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=1e-5, rtol=0)
    # the pure compiled step, prompt padded to a bucket then rewound, gives the same logits
    state = whisper.new_state(m.decoder, audio)
    padded = np.concatenate([toks[:, :4], np.zeros((1, 4), np.int64)], axis=1)
    _, state = whisper.step_jit(m.decoder, state, np.asarray(padded, np.int32))
    state = state.with_position(4)
    for i in range(4, 9):
        lg, state = whisper.step_jit(m.decoder, state, np.asarray(toks[:, i : i + 1], np.int32))
        ref = np.asarray(m.decoder.final_linear(Tensor.from_numpy(full[:, i : i + 1])))
        np.testing.assert_allclose(np.asarray(lg), ref, atol=1e-4, rtol=0)
    # the prompt in chunks of 3 through the compiled prefill (one program), then one step
    state = whisper.new_state(m.decoder, audio)
    hs = []
    for c in range(0, 9, 3):
        h, state = whisper.prefill_jit(m.decoder, state, np.asarray(toks[:, c : c + 3], np.int32))
        assert h.shape == (1, 3, full.shape[-1])
        hs.append(np.asarray(h))
    np.testing.assert_allclose(np.concatenate(hs, axis=1), full, atol=1e-5, rtol=0)
    assert int(state.position()) == 9


def test_decoder_refuses_bad_token_ids_and_positions_past_the_cache(tiny):
    """Ids outside the vocabulary (120), float ids and positions past max_target_positions (24) raise a
    candlejax error naming the decoder, before the compiled step (which would clamp them)."""
    _, m = tiny
    dec = m.decoder
    rng = np.random.default_rng(2)
    mel = Tensor.from_numpy(rng.standard_normal((1, 16, 60)).astype(np.float32))
    audio = m.encoder.forward(mel)
    for bad, err in (([[1, 120]], errors.InvalidIndex), ([[1, -1]], errors.InvalidIndex),
                     ([[1.0, 2.7]], errors.UnexpectedDType)):  # fmt: skip
        with pytest.raises(err, match="whisper decoder"):
            dec.forward(np.array(bad), audio, True)
    with pytest.raises(errors.InvalidIndex, match=r"whisper decoder: token ids invalid index 500 with dim size 120"):
        m.forward(mel, np.array([[1, 500]]))
    with pytest.raises(errors.Msg, match=r"decoder.forward: 25 token\(s\) at position 0 exceed max_target_positions"):
        dec.forward(np.ones((1, 25), np.int64), audio, True)
    dec.forward(np.ones((1, 20), np.int64), audio, True)
    for _ in range(4):
        dec.forward(np.array([[3]]), audio, False)
    with pytest.raises(errors.Msg, match=r"1 token\(s\) at position 24 exceed max_target_positions 24"):
        dec.forward(np.array([[3]]), audio, False)
    # the pure and compiled steps: ids, the state's position, with_position's argument
    state = whisper.new_state(dec, audio)
    with pytest.raises(errors.InvalidIndex, match="whisper step_jit: token ids invalid index 500"):
        whisper.step_jit(dec, state, np.array([[500]], np.int32))
    with pytest.raises(errors.InvalidIndex, match="whisper step: token ids"):
        whisper.step(dec, state, np.array([[-1]], np.int32))
    with pytest.raises(errors.Msg, match=r"whisper prefill_jit: 25 token\(s\)"):
        whisper.prefill_jit(dec, state, np.ones((1, 25), np.int32))
    for _ in range(24):
        _, state = whisper.step_jit(dec, state, np.array([[3]], np.int32))
    assert int(state.position()) == 24
    with pytest.raises(errors.Msg, match=r"whisper step_jit: 1 token\(s\) at position 24 exceed max_target_positions"):
        whisper.step_jit(dec, state, np.array([[3]], np.int32))
    with pytest.raises(errors.Msg, match=r"whisper step: 2 token\(s\) at position 23"):
        whisper.step(dec, state.with_position(23), np.array([[3, 3]], np.int32))
    for pos in (-2, 30, 2.5):
        with pytest.raises(errors.InvalidArgument, match=rf"with_position: position {pos} must be an integer in 0..24"):
            state.with_position(pos)
    assert int(state.with_position(24).position()) == 24


def test_decoder_names_tokens_of_another_batch_than_the_audio(tiny):
    """Tokens ``(B, T)`` for audio features of another batch: Candle's cross-attention matmul fails
    (shape mismatch); here the error came from the KV cache (``DecodeKvCache.append``), naming neither."""
    _, m = tiny
    dec = m.decoder
    audio = m.encoder.forward(Tensor.from_numpy(np.zeros((2, 16, 60), np.float32)))
    want = r"whisper .*: tokens have batch 1, the audio features batch 2"
    with pytest.raises(errors.Error, match="whisper decoder.forward" + want[len("whisper .*") :]):
        dec.forward(np.array([[1, 5]]), audio, True)
    state = whisper.new_state(dec, audio)
    for f in (whisper.step, whisper.step_jit, whisper.prefill_jit):
        with pytest.raises(errors.Error, match=want):
            f(dec, state, np.array([[1, 5]], np.int32))


def test_mel_matches_feature_extractor_and_streaming_windows():
    from transformers import WhisperFeatureExtractor

    rng = np.random.default_rng(0)
    t = np.arange(16000 * 3) / 16000
    pcm = 0.3 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 1.3 * t) + 0.01 * rng.standard_normal(t.size)
    pcm = pcm.astype(np.float32)
    ref = WhisperFeatureExtractor()(pcm, sampling_rate=16000, return_tensors="np").input_features[0]
    mel = wa.pcm_to_mel(80, wa.pad_or_trim(pcm))
    assert mel.shape == (80, 3000)
    np.testing.assert_allclose(np.asarray(mel), ref, atol=1e-4, rtol=0)
    # a window of a stream sees the same frames as the whole-file spectrogram (above the max-8 floor)
    src = cj_audio.PcmSource(pcm)
    np.testing.assert_array_equal(wa.log_mel_window(src, 0), np.asarray(mel))
    full = np.asarray(wa.pcm_to_mel(80, np.concatenate([pcm, np.zeros(wa.N_SAMPLES, np.float32)])))
    win = wa.log_mel_window(cj_audio.PcmSource(pcm), 160 * 50, n_frames=200)
    np.testing.assert_allclose(win, full[:, 50:250], atol=1e-5)
    # OpenAI floors every window at the whole file's max - 8: a quiet window after a loud one
    silence = np.zeros(16000 * 28, np.float32)
    loud_quiet = np.concatenate([pcm * 3, silence, pcm * 1e-4, silence[: 16000 * 9]])
    full = np.asarray(wa.pcm_to_mel(80, np.concatenate([loud_quiet, np.zeros(wa.N_SAMPLES, np.float32)])))
    src = cj_audio.PcmSource(loud_quiet)
    top = wa.log_mel_max(src)
    assert top == pytest.approx(full.max() * 4 - 4, abs=1e-5)
    second = wa.log_mel_window(src, wa.N_SAMPLES, floor=top - 8)
    np.testing.assert_allclose(second, full[:, 3000:6000], atol=1e-5)
    assert wa.log_mel_window(src, wa.N_SAMPLES).min() < full[:, 3000:6000].min() - 0.1  # its own, lower floor
    with pytest.raises(errors.Audio, match="NaN"):
        wa.pcm_to_mel(80, np.array([0.0, np.nan], np.float32))
    with pytest.raises(errors.Audio, match="0 samples"):
        wa.pcm_to_mel(80, np.zeros(0, np.float32))
    # filters for another mel count or FFT size: named, not numpy's reshape / matmul error
    with pytest.raises(errors.Audio, match=r"filters of shape \[128, 201\] .* 80 mels need \(80, 201\)"):
        wa.pcm_to_mel(80, pcm, wa.mel_filters(128))
    with pytest.raises(errors.Audio, match=r"filters of shape \[80, 200\]"):
        wa.pcm_to_mel(80, pcm, np.zeros((80, 200)))
    np.testing.assert_array_equal(np.asarray(wa.pcm_to_mel(80, pcm, wa.mel_filters(80).reshape(-1))),
                                  np.asarray(wa.pcm_to_mel(80, pcm)))  # Candle's flat filters
    # a clip shorter than 30 s is padded to one window: the feature extractor's features as they are
    short = wa.pcm_to_mel(80, pcm)
    assert short.shape == (80, 3000)
    np.testing.assert_array_equal(np.asarray(short), np.asarray(mel))
    assert wa.pcm_to_mel(80, np.zeros(wa.N_SAMPLES + 1600, np.float32)).shape == (80, 3010)  # longer: len // 160


def test_log_mel_window_reflects_at_the_start_for_any_early_frame():
    # a window starting at frame 1 (sample 160 < N_FFT // 2) saw zeros where the whole-file
    # spectrogram (transformers' reflect padding) has the reflected samples
    from transformers import WhisperFeatureExtractor

    x = (np.random.default_rng(0).standard_normal(16000) * 0.3).astype(np.float32)
    ref = WhisperFeatureExtractor()(x, sampling_rate=16000, return_tensors="np").input_features[0]
    full = np.asarray(wa.pcm_to_mel(80, x))
    for start in (0, 160, 320):
        win = wa.log_mel_window(cj_audio.PcmSource(x), start, n_frames=50, floor=float(full.min() * 4 - 4))
        np.testing.assert_allclose(win, ref[:, start // 160 : start // 160 + 50], atol=1e-4, rtol=0)


def test_pad_or_trim_follows_openai():
    # OpenAI's pad_or_trim: along the last axis (channels or a mel keep their leading dims)
    x = np.arange(1, 11, dtype=np.float64).reshape(2, 5)
    np.testing.assert_array_equal(wa.pad_or_trim(x, 7), np.pad(x, ((0, 0), (0, 2))).astype(np.float32))
    np.testing.assert_array_equal(wa.pad_or_trim(x, 3), x[:, :3])
    np.testing.assert_array_equal(wa.pad_or_trim(x, 3, axis=0), np.pad(x, ((0, 1), (0, 0))))
    y = wa.pad_or_trim(np.ones(5, np.float32))
    assert y.shape == (wa.N_SAMPLES,) and y.dtype == np.float32 and y.sum() == 5
    assert wa.pad_or_trim(np.ones(wa.N_SAMPLES + 1, np.float32)).shape == (wa.N_SAMPLES,)
    # integer PCM would give features of +-32768 samples: refused, as pcm_to_mel refuses it
    with pytest.raises(errors.Audio, match=r"pad_or_trim: expected float samples .* int16"):
        wa.pad_or_trim(np.zeros(100, np.int16))
    with pytest.raises(errors.Audio, match="axis 2 is out of range"):
        wa.pad_or_trim(x, 3, axis=2)


def test_audio_files_and_errors(tmp_path):
    import soundfile as sf

    rate = 22050
    x = (0.5 * np.sin(2 * np.pi * 300 * np.arange(rate) / rate)).astype(np.float32)
    sf.write(tmp_path / "stereo.wav", np.stack([x, x * 0.5], axis=1), rate, subtype="PCM_16")
    pcm = cj_audio.read_audio(tmp_path / "stereo.wav")
    assert pcm.dtype == np.float32 and abs(pcm.shape[0] - 16000) <= 1
    assert abs(float(np.abs(pcm).max()) - 0.375) < 0.01  # channels averaged
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(errors.Audio, match="empty file"):
        cj_audio.read_audio(tmp_path / "empty.wav")
    (tmp_path / "text.wav").write_text("this is not audio\n" * 10)
    with pytest.raises(errors.Audio, match="not a readable sound file"):
        cj_audio.read_audio(tmp_path / "text.wav")
    sf.write(tmp_path / "zero.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(errors.Audio, match="0 samples"):
        cj_audio.read_audio(tmp_path / "zero.wav")
    bad = x.copy()
    bad[rate // 2] = np.nan
    sf.write(tmp_path / "nan.wav", bad, rate, subtype="FLOAT")
    with pytest.raises(errors.Audio, match=r"nan.wav: non-finite sample .* at sample 11025"):
        cj_audio.read_audio(tmp_path / "nan.wav")
    with pytest.raises(errors.Audio, match="non-finite"), cj_audio.AudioStream(tmp_path / "nan.wav") as s:
        s.read(0, 16000)


def test_resample_refuses_integer_pcm_and_bad_rates():
    # Candle's resample takes f32 samples in [-1, 1]: int16 PCM would come out 32768x too loud
    # (log-mel features shifted by ~2.25), and a NaN / inf rate used to hang soxr
    x = (0.5 * np.sin(np.arange(4410) / 10.0)).astype(np.float32)
    with pytest.raises(errors.Audio, match=r"resample: expected float samples .* int16"):
        cj_audio.resample((x * 32767).astype(np.int16), 44100, 16000)
    from candlejax.examples import audio as ex_audio

    with pytest.raises(errors.Audio, match=r"resample: expected float samples .* int16"):
        ex_audio.resample((x * 32767).astype(np.int16), 44100, 16000)
    for bad in (float("nan"), float("inf"), True, "44100", 0, -1):
        with pytest.raises(errors.Audio, match="rate"):
            cj_audio.resample(x, bad, 16000)
    with pytest.raises(errors.Audio, match="non-finite"):
        cj_audio.resample(np.array([0.0, np.nan, 0.1], np.float32), 44100, 16000)
    assert cj_audio.resample(x, 44100.0, 16000).shape == (1600,)


def test_pcm_source_refuses_integer_stereo():
    # averaging the channels of int16 PCM made floats 32768x too loud that passed the float check
    x = (np.sin(np.arange(1000) / 5.0) * 20000).astype(np.int16)
    with pytest.raises(errors.Audio, match=r"expected float samples .* int16"):
        cj_audio.PcmSource(np.stack([x, x]))
    with pytest.raises(errors.Audio, match=r"expected float samples .* int16"):
        cj_audio.PcmSource(x)
    f = x.astype(np.float32) / 32768
    np.testing.assert_array_equal(cj_audio.PcmSource(np.stack([f, f * 0.5])).pcm, (f + f * 0.5) / 2)


def test_read_audio_bad_sample_rate_is_named(tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "a.wav", np.zeros(800, np.float32), 8000)
    for bad in ("16000", float("nan"), None, 0):
        with pytest.raises(errors.Audio, match="sample_rate"):
            cj_audio.read_audio(tmp_path / "a.wav", bad)


def test_stream_length_from_the_header_is_the_resampled_length(tmp_path):
    # soxr gives floor(n * out / in + 0.5) samples; the header estimate used ceil (one too many)
    import soundfile as sf

    for rate, n in ((11025, 3), (44100, 100), (22050, 12345), (48000, 1000), (8000, 77)):
        sf.write(tmp_path / "a.wav", np.full(n, 0.1, np.float32), rate, subtype="FLOAT")
        with cj_audio.AudioStream(tmp_path / "a.wav") as s:
            assert s.n_samples == cj_audio.read_audio(tmp_path / "a.wav").shape[0], (rate, n)


def test_stream_read_bad_span_is_named(tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "a.wav", np.zeros(800, np.float32), 8000)
    with cj_audio.AudioStream(tmp_path / "a.wav") as s:
        for src in (s, cj_audio.PcmSource(np.zeros(100, np.float32))):
            for start, n in ((0, -1), (0.5, 10), (0, 2.0), (True, 3)):
                with pytest.raises(errors.Audio, match=r"read\(start, n\)"):
                    src.read(start, n)
        assert s.read(0, 3).shape == (3,) and s.read(np.int64(1), np.int32(0)).shape == (0,)


def test_stream_reads_forward_in_bounded_blocks(tmp_path):
    import soundfile as sf

    rate = 8000
    n = rate * 95
    x = (0.1 * np.sin(2 * np.pi * 200 * np.arange(n) / rate)).astype(np.float32)
    sf.write(tmp_path / "long.wav", x, rate, subtype="PCM_16")
    ref = cj_audio.read_audio(tmp_path / "long.wav")
    with cj_audio.AudioStream(tmp_path / "long.wav", block_seconds=5) as s:
        assert abs(s.n_samples - ref.shape[0]) <= 2
        for start in (0, 100_000, 700_000, 1_500_000):
            w = s.read(start, wa.N_SAMPLES)
            np.testing.assert_allclose(w[: max(0, ref.shape[0] - start)], ref[start : start + wa.N_SAMPLES], atol=2e-3)
            assert s.buffered_samples() <= wa.N_SAMPLES + 16000 * 5 + 1000
        assert not w[ref.shape[0] - 1_500_000 + 10 :].any()  # zeros past the end
        with pytest.raises(errors.Audio, match="forward-only"):
            s.read(0, 10)


def _multilingual_tokenizer(path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    vocab = {f"w{i}": i for i in range(50257)}
    special = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|fr|>"]
    vocab.update({t: 50257 + i for i, t in enumerate(special)})
    rest = ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
    vocab.update({t: 50358 + i for i, t in enumerate(rest)})
    vocab.update({f"<|{i * 0.02:.2f}|>": 50364 + i for i in range(1501)})
    Tokenizer(WordLevel(vocab, unk_token="<|endoftext|>")).save(str(path))


def _multilingual_model(path, seed: int, decoder_layers: int, max_target_positions: int):
    """A random multilingual Whisper (transformers' weights, saved to ``path``) with its tokenizer."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    cfg = WhisperConfig(
        vocab_size=51865, num_mel_bins=16, d_model=16, encoder_layers=1, decoder_layers=decoder_layers,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=1500, max_target_positions=max_target_positions, decoder_start_token_id=50258,
        eos_token_id=50257, pad_token_id=50257, bos_token_id=50257, suppress_tokens=[],
        begin_suppress_tokens=[220, 50257],
    )  # fmt: skip
    WhisperForConditionalGeneration(cfg).save_pretrained(path)
    _multilingual_tokenizer(path / "tokenizer.json")
    return whisper.Whisper.from_pretrained(path, Device.Cpu)


def test_multilingual_language_detection_and_prompt(tmp_path):
    m = _multilingual_model(tmp_path, seed=3, decoder_layers=1, max_target_positions=40)
    assert m.config.is_multilingual
    dec = whisper.Decoder(m)
    assert dec.tok.sot == 50258 and dec.tok.language_tokens[:3] == [50259, 50260, 50261]
    assert dec.tok.timestamp_begin == 50364 and dec.tok.no_speech == 50362
    mel = np.random.default_rng(0).standard_normal((16, 3000)).astype(np.float32)
    audio = dec.encode(mel)
    logits, _ = whisper.step_jit(m.decoder, whisper.new_state(m.decoder, audio), np.array([[50258]], np.int32))
    logits = np.asarray(logits)[0, -1]
    langs = dec.tok.language_tokens
    expect = dec.tok.language_code(langs[int(np.argmax(logits[langs]))])
    assert dec.detect_language(audio) == expect
    assert dec.sot_sequence("de") == [50258, 50260, 50359]
    with pytest.raises(errors.Msg, match="unknown language"):
        whisper.Decoder(m, language="xx")
    res = dec.decode(audio, 0.0, prompt=[5, 6], language="fr")
    assert res.language == "fr" and len(res.tokens) <= 20
    for ids in (np.array([5, 6]), Tensor.from_numpy(np.array([5, 6], np.uint32))):  # (ValueError: truth value)
        assert dec.decode(audio, 0.0, prompt=ids, language="fr").tokens == res.tokens
    segs = list(whisper.transcribe(m, np.zeros(16000, np.float32), temperature=0.0, no_speech_threshold=None))
    assert all(isinstance(s, whisper.Segment) for s in segs)


def test_decode_language_defaults_to_the_decoders_then_the_detected_one(tmp_path):
    """``Decoder(model, language="fr").decode(audio)`` decodes French (it decoded with ``<|en|>``);
    without a language anywhere a multilingual model's window is decoded in the detected one (OpenAI)."""
    m = _multilingual_model(tmp_path, seed=3, decoder_layers=1, max_target_positions=40)
    fr = whisper.Decoder(m, language="fr")
    audio = fr.encode(np.random.default_rng(0).standard_normal((16, 3000)).astype(np.float32))
    want = fr.decode(audio, 0.0, language="fr")
    got = fr.decode(audio)
    assert got.language == "fr" and got.tokens == want.tokens
    assert fr.decode_with_fallback(audio, (0.0,)).language == "fr"
    auto = whisper.Decoder(m)
    detected = auto.detect_language(audio)
    assert auto.decode(audio).tokens == auto.decode(audio, 0.0, language=detected).tokens
    assert auto.decode_with_fallback(audio, (0.0,)).language == detected


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
def test_half_precision_model_decodes(tmp_path, dtype):
    """``Whisper.from_pretrained(path, device, dtype)`` in F16 / BF16: the f32 mel goes in at the
    weights' dtype (the convolution refused the f32 mel) and the window decodes as the f32 model does."""
    from candlejax import DType

    m = _multilingual_model(tmp_path, seed=3, decoder_layers=1, max_target_positions=40)
    half = whisper.Whisper.from_pretrained(tmp_path, Device.Cpu, DType.parse(dtype))
    mel = np.random.default_rng(0).standard_normal((16, 3000)).astype(np.float32)
    ref, dec = whisper.Decoder(m), whisper.Decoder(half)
    audio = dec.encode(mel)
    assert audio.dtype.as_str() == dtype
    want = np.asarray(ref.encode(mel))
    assert np.abs(np.asarray(audio.to_dtype(DType.F32)) - want).max() < 0.05 * np.abs(want).max()
    got, exp = dec.decode(audio, 0.0, language="de"), ref.decode(ref.encode(mel), 0.0, language="de")
    assert got.tokens[:3] == exp.tokens[:3]


def test_prompt_chunks_that_overrun_the_cache_end_where_it_ends(tmp_path, monkeypatch):
    """A prompt padded past ``max_target_positions`` (here 33 tokens in chunks of 32 on a 60-slot
    cache) goes through a last chunk moved back to end at the cache's end: the same tokens and
    log-probabilities as the prompt in one chunk."""
    from candlejax.models.whisper import decoding

    m = _multilingual_model(tmp_path, seed=4, decoder_layers=2, max_target_positions=60)
    dec = whisper.Decoder(m)
    audio = dec.encode(np.random.default_rng(1).standard_normal((16, 3000)).astype(np.float32))
    prompt = list(range(100, 140))  # 29 kept (n_ctx // 2 - 1) + <|startofprev|> + 3 start tokens = 33
    chunked = dec.decode(audio, 0.0, prompt=prompt, language="fr")
    monkeypatch.setattr(decoding, "_PROMPT_CHUNK", 64)  # one chunk of 60 (the whole cache)
    whole = dec.decode(audio, 0.0, prompt=prompt, language="fr")
    assert chunked.tokens == whole.tokens and len(whole.tokens) > 0
    np.testing.assert_allclose(chunked.avg_logprob, whole.avg_logprob, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(chunked.no_speech_prob, whole.no_speech_prob, rtol=1e-5, atol=1e-6)


def test_candle_spellings(tiny):
    """Candle's whisper calls as its example writes them: m::SAMPLE_RATE & co., Whisper::load(&vb, config),
    encoder.forward(&mel, flush), decoder.forward(&tokens, &audio, i == 0), final_linear, reset_kv_cache."""
    from candlejax.nn import VarBuilder

    _, m = tiny
    assert (whisper.SAMPLE_RATE, whisper.N_FFT, whisper.HOP_LENGTH, whisper.CHUNK_LENGTH) == (16000, 400, 160, 30)
    assert (whisper.N_SAMPLES, whisper.N_FRAMES, whisper.DTYPE.as_str()) == (480000, 3000, "f32")
    assert whisper.TEMPERATURES == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0) and whisper.SOT_TOKEN == "<|startoftranscript|>"
    assert (whisper.NO_SPEECH_THRESHOLD, whisper.LOGPROB_THRESHOLD, whisper.COMPRESSION_RATIO_THRESHOLD) == (
        0.6, -1.0, 2.4)  # fmt: skip
    assert whisper.model.Whisper is whisper.Whisper
    vb = VarBuilder.from_mmaped_safetensors([f"{m.path}/model.safetensors"], whisper.DTYPE, Device.Cpu)
    with pytest.raises(errors.Error, match=r"Whisper.load\(vb, config\)"):
        whisper.Whisper.load(m.config, vb)
    model = whisper.Whisper.load(vb, m.config)
    rng = np.random.default_rng(3)
    mel = Tensor.from_numpy(rng.standard_normal((1, 16, 60)).astype(np.float32))
    audio_features = model.encoder.forward(mel, True)
    np.testing.assert_array_equal(np.asarray(audio_features), np.asarray(m.encoder.forward(mel)))
    toks = [1, 5, 7, 9]

    tokens = list(toks)
    for i in range(4):  # the example's loop: the whole token list at every step, flush on the first
        tokens_t = Tensor.new(np.asarray(tokens, np.uint32), Device.Cpu).unsqueeze(0)
        ys = model.decoder.forward(tokens_t, audio_features, i == 0)
        ref = np.asarray(m.decoder.forward(np.asarray([tokens]), audio_features, True))
        np.testing.assert_allclose(np.asarray(ys), ref, atol=1e-5, rtol=0)  # Candle recomputes them all
        seq_len = ys.dims()[1]
        logits = model.decoder.final_linear(ys.i((slice(None, 1), slice(seq_len - 1, None)))).i(0).i(0)
        tokens.append(int(np.argmax(np.asarray(logits))) if i % 2 else 7 + i)
    # a continuation after reset_kv_cache starts a new sequence, as flush_kv_cache=True does
    model.decoder.forward(np.asarray([toks]), audio_features, True)
    model.reset_kv_cache()
    ys = model.decoder.forward(np.asarray([toks]), audio_features, False)
    np.testing.assert_allclose(np.asarray(ys), np.asarray(m.decoder.forward(np.asarray([toks]), audio_features)),
                               atol=1e-6)  # fmt: skip


def _candle_log_mel(samples, filters, fft_size, fft_step, n_mel, speed_up):
    """Candle's ``log_mel_spectrogram_`` written frame by frame from its source (naive DFT)."""
    hann = [0.5 * (1 - np.cos(2 * np.pi * i / fft_size)) for i in range(fft_size)]
    n_len = len(samples) // fft_step
    if n_len % 1500:
        n_len = (n_len // 1500 + 1) * 1500
    n_len += 1500
    x = np.concatenate([samples, np.zeros(n_len * fft_step - len(samples))])
    n_fft = 1 + fft_size // 4 if speed_up else 1 + fft_size // 2
    dft = np.exp(-2j * np.pi * np.outer(np.arange(fft_size), np.arange(fft_size)) / fft_size)
    mel = np.zeros((n_mel, n_len))
    for i in range(n_len):
        frame = np.zeros(fft_size)
        seg = x[i * fft_step : i * fft_step + fft_size]
        frame[: len(seg)] = np.asarray(hann[: len(seg)]) * seg
        out = dft @ frame
        p = list(out.real**2 + out.imag**2)
        for j in range(1, fft_size // 2):
            p[j] += p[fft_size - j]
        if speed_up:
            for j in range(n_fft):
                p[j] = 0.5 * (p[2 * j] + p[2 * j + 1])
        for j in range(n_mel):
            s = sum(p[k] * filters[j * n_fft + k] for k in range(n_fft))
            mel[j, i] = np.log10(max(s, 1e-10))
    mmax = mel.max() - 8
    return (np.maximum(mel, mmax) / 4 + 1).reshape(-1)


def test_log_mel_spectrogram_underscore_refuses_integer_pcm():
    # Candle's samples are `&[T: Float]` (f32 / f64): int16 PCM read unscaled shifted every value
    pcm = (np.sin(np.arange(4000) / 7.0) * 20000).astype(np.int16)
    with pytest.raises(errors.Audio, match=r"log_mel_spectrogram_: expected float samples .* int16"):
        wa.log_mel_spectrogram_(pcm, wa.mel_filters(80), 400, 160, 80)


@pytest.mark.parametrize("speed_up", [False, True])
def test_log_mel_spectrogram_underscore_follows_candle(speed_up):
    """``audio::log_mel_spectrogram_``: Candle's output lengths (its unit tests) and values."""
    assert wa.log_mel_spectrogram_(np.zeros(1000), np.zeros(1000), 100, 10, 10, False).shape == (30_000,)
    assert wa.log_mel_spectrogram_(np.zeros(100), np.zeros(100), 20, 2, 2, False).shape == (6_000,)
    rng = np.random.default_rng(3)
    samples, filters = rng.standard_normal(200), rng.random(64)
    got = wa.log_mel_spectrogram_(samples, filters, 16, 64, 3, speed_up)
    want = _candle_log_mel(samples, filters, 16, 64, 3, speed_up)
    assert got.dtype == np.float64 and got.shape == want.shape == (3 * 3000,)  # 3 frames: 1500, then 1500 more
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    f32 = wa.log_mel_spectrogram_(samples.astype(np.float32), filters, 16, 64, 3, speed_up)
    assert f32.dtype == np.float32


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), (0.0, float("nan")), -0.5, ()])
def test_transcribe_refuses_temperatures_that_are_not_finite_and_non_negative(tiny, temperature):
    _, m = tiny  # NaN passed the `t < 0` check and decoded anyway
    with pytest.raises(errors.Msg, match="whisper: temperatures must be finite numbers >= 0"):
        next(whisper.transcribe(m, np.zeros(1600, np.float32), temperature=temperature))


def test_transcribe_names_its_argument_order(tiny, tmp_path):
    _, m = tiny  # transcribe("a.wav", model) was a raw AttributeError ('str' object has no attribute 'config')
    pcm = np.zeros(1600, np.float32)
    for args in (("a.wav", m), (tmp_path / "a.wav", m), (pcm, m), (None, "a.wav")):
        with pytest.raises(errors.ArgumentType, match=r"transcribe\(model, path_or_pcm\)"):
            next(whisper.transcribe(*args))


def test_transcribe_takes_the_sample_rate_of_an_array(tmp_path):
    # an array at 44.1 kHz is resampled to 16 kHz (as transformers' pipeline takes
    # {"raw": pcm, "sampling_rate": sr}); reference: the same chirp sampled at 16 kHz directly
    m = _multilingual_model(tmp_path, seed=3, decoder_layers=1, max_target_positions=40)

    def chirp(rate):
        t = np.arange(int(rate * 1.5)) / rate
        return (0.4 * np.sin(2 * np.pi * (200 + 900 * t) * t)).astype(np.float32)

    mels = []

    class Stop(Exception):
        pass

    def encode(self, mel):
        mels.append(np.asarray(mel))
        raise Stop

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(whisper.Decoder, "encode", encode)
        for pcm, kw in ((chirp(44100), dict(sample_rate=44100)), (chirp(16000), {}),
                        (np.stack([chirp(22050)] * 2), dict(sample_rate=22050))):  # fmt: skip
            with pytest.raises(Stop):
                next(whisper.transcribe(m, pcm, temperature=0.0, language="en", **kw))
    ref = np.asarray(wa.pcm_to_mel(16, chirp(16000)))
    np.testing.assert_array_equal(mels[1], ref)
    for got in (mels[0], mels[2]):
        np.testing.assert_allclose(got[:, 2:145], ref[:, 2:145], atol=2e-3)  # (away from the clip's edges)
    with pytest.raises(errors.Audio, match="sample_rate"):
        next(whisper.transcribe(m, chirp(16000), sample_rate=float("nan")))
    import soundfile as sf

    sf.write(tmp_path / "c.wav", chirp(16000), 16000)
    with pytest.raises(errors.Audio, match=r"sample_rate=44100 is the rate of an array"):
        next(whisper.transcribe(m, tmp_path / "c.wav", sample_rate=44100))


def _openai_greedy(hf, enc, dec, initial, sample_begin, max_initial_timestamp_index=50):
    """OpenAI's ``DecodingTask._main_loop`` at temperature 0, written from ``whisper/decoding.py``
    (SuppressBlank, SuppressTokens, ApplyTimestampRules; stops at EOT or past ``n_ctx`` tokens), on
    transformers' uncached logits: (tokens, avg_logprob, no_speech_prob)."""
    tok, n_ctx = dec.tok, dec.n_ctx
    tb, eot = tok.timestamp_begin, tok.eot
    tokens, sum_lp, no_speech = list(initial), 0.0, float("nan")
    for i in range(n_ctx // 2):
        with torch.no_grad():
            logits = hf(encoder_outputs=(enc,), decoder_input_ids=torch.tensor([tokens])).logits[0].double()
        if i == 0:
            no_speech = float(torch.softmax(logits[initial.index(tok.sot)], -1)[tok.no_speech])
        x = logits[-1].clone()
        if len(tokens) == sample_begin:
            x[[220, eot]] = -np.inf
        x[torch.as_tensor(dec.suppress)] = -np.inf
        x[tok.no_timestamps] = -np.inf
        seq = tokens[sample_begin:]
        last = len(seq) >= 1 and seq[-1] >= tb
        penult = len(seq) < 2 or seq[-2] >= tb
        if last:
            if penult:
                x[tb:] = -np.inf
            else:
                x[:eot] = -np.inf
        stamps = [t for t in seq if t >= tb]
        if stamps:
            x[tb : stamps[-1] if last and not penult else stamps[-1] + 1] = -np.inf
        if len(tokens) == sample_begin:
            x[:tb] = -np.inf
            if max_initial_timestamp_index is not None:
                x[tb + max_initial_timestamp_index + 1 :] = -np.inf
        lp = torch.log_softmax(x, -1)
        if torch.logsumexp(lp[tb:], -1) > lp[:tb].max():
            x[:tb] = -np.inf
        nxt = int(torch.argmax(x))
        sum_lp += float(torch.log_softmax(x, -1)[nxt])
        tokens.append(nxt)
        if nxt == eot or len(tokens) > n_ctx:
            break
    out = tokens[sample_begin:]
    out = out[: out.index(eot)] if eot in out else out
    return out, sum_lp / (len(out) + 1), no_speech


@pytest.mark.parametrize("n_prompt", [0, 40])
def test_decode_follows_openai_loop_up_to_the_context_limit(tmp_path, n_prompt):
    """Greedy tokens (timestamp rules included), average log-probability and no-speech probability
    as OpenAI's loop computes them on transformers' logits; with a long prompt the window samples
    until the sequence holds ``max_target_positions + 1`` tokens, as OpenAI's and Candle's loops do
    (the last one sampled from the logits at the last cache position)."""
    from transformers import WhisperForConditionalGeneration

    m = _multilingual_model(tmp_path, seed=3, decoder_layers=1, max_target_positions=40)
    hf = WhisperForConditionalGeneration.from_pretrained(tmp_path).eval()
    dec = whisper.Decoder(m)
    mel = np.random.default_rng(0).standard_normal((16, 3000)).astype(np.float32)
    audio = dec.encode(mel)
    with torch.no_grad():
        enc = hf.model.encoder(torch.from_numpy(mel[None])).last_hidden_state
    prompt = list(range(100, 100 + n_prompt))
    initial = ([dec.tok.sot_prev, *prompt[-19:]] if prompt else []) + dec.sot_sequence("fr")
    want, want_lp, want_ns = _openai_greedy(hf, enc, dec, initial, len(initial))
    res = dec.decode(audio, 0.0, prompt=prompt, language="fr")
    assert res.tokens == want
    assert len(initial) + len(want) == (41 if n_prompt else len(initial) + 20)
    np.testing.assert_allclose(res.avg_logprob, want_lp, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.no_speech_prob, want_ns, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -1.0, "0.2"])
def test_decode_refuses_temperatures_that_are_not_finite_and_non_negative(tmp_path, temperature):
    """(They decoded suppressed token 0 on every step: x / NaN, and -inf / -1 = +inf at suppressed ids.)"""
    m = _multilingual_model(tmp_path, seed=3, decoder_layers=1, max_target_positions=40)
    dec = whisper.Decoder(m)
    audio = dec.encode(np.zeros((16, 3000), np.float32))
    with pytest.raises(errors.Msg, match=r"Decoder\.decode: temperature must be a finite number >= 0"):
        dec.decode(audio, temperature, language="fr")
    with pytest.raises(errors.Msg, match=r"Decoder\.decode: temperature"):
        dec.decode_with_fallback(audio, (0.0, temperature), language="fr", logprob_threshold=0.0)


def test_decode_max_initial_timestamp_and_unknown_languages(tmp_path):
    """``max_initial_timestamp=None`` lifts the limit on the first timestamp (OpenAI's and Candle's
    ``None``; it raised TypeError), a smaller one keeps it below, both as OpenAI's loop; a language
    without a token raises errors.Msg in decode as in the constructor (it raised TypeError)."""
    from transformers import WhisperForConditionalGeneration

    m = _multilingual_model(tmp_path, seed=3, decoder_layers=1, max_target_positions=40)
    hf = WhisperForConditionalGeneration.from_pretrained(tmp_path).eval()
    mel = np.random.default_rng(0).standard_normal((16, 3000)).astype(np.float32)
    with torch.no_grad():
        enc = hf.model.encoder(torch.from_numpy(mel[None])).last_hidden_state
    first = []
    for seconds, index in ((None, None), (0.04, 2)):
        dec = whisper.Decoder(m, max_initial_timestamp=seconds)
        initial = dec.sot_sequence("fr")
        want = _openai_greedy(hf, enc, dec, initial, len(initial), index)[0]
        assert dec.decode(dec.encode(mel), 0.0, language="fr").tokens == want
        first.append(want[0] - dec.tok.timestamp_begin)
    assert first[0] > 2 >= first[1]  # the limit decides the first token here
    made = []  # transcribe passes it on (OpenAI's transcribe(..., max_initial_timestamp=...))
    init = whisper.Decoder.__init__
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(whisper.Decoder, "__init__", lambda self, *a, **kw: made.append(kw) or init(self, *a, **kw))
        pcm = np.zeros(160, np.float32)
        list(whisper.transcribe(m, pcm, temperature=0.0, language="fr", max_initial_timestamp=None))
        list(whisper.transcribe(m, pcm, temperature=0.0, language="fr"))
    assert [kw["max_initial_timestamp"] for kw in made] == [None, 1.0]
    with pytest.raises(errors.Msg, match=r"unknown language 'xx' \(no <\|xx\|> language token\)"):
        dec.decode(dec.encode(mel), 0.0, language="xx")


def test_stateful_decoder_forward_with_traced_ids_names_the_pure_step():
    """``decoder.forward`` reads the ids on the host (its state lives there): traced ids raise naming
    ``whisper.step`` (a raw TracerArrayConversionError for jax arrays before); host ids work under jit."""
    import jax
    import jax.numpy as jnp

    from candlejax import DType
    from candlejax.models.whisper import model as wm
    from candlejax.nn import VarBuilder, VarMap

    cfg = wm.Config(vocab_size=40, num_mel_bins=8, d_model=16, encoder_layers=1, decoder_layers=1,
                    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                    max_source_positions=10, max_target_positions=12)  # fmt: skip
    m = whisper.Whisper.load(VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu), cfg)
    mel = Tensor(np.random.default_rng(0).standard_normal((1, 8, 20)).astype(np.float32))
    toks = np.array([[1, 5, 7]], np.uint32)
    eager = np.asarray(m.forward(mel, toks))
    np.testing.assert_allclose(np.asarray(jax.jit(lambda m, x: m.forward(x, toks))(m, mel)), eager, atol=1e-5)
    for ids in (jnp.asarray(toks), Tensor(toks)):
        with pytest.raises(errors.TracingError, match=r"whisper\.step"):
            jax.jit(lambda m, x, t: m.forward(x, t))(m, mel, ids)
    audio = m.encoder.forward(mel)
    logits, _ = jax.jit(whisper.step)(m.decoder, whisper.new_state(m.decoder, audio), jnp.asarray(toks, jnp.int32))
    np.testing.assert_allclose(np.asarray(logits), eager, atol=1e-5)


def test_config_with_candles_fields_only_has_mlps_of_4_d_model():
    """Candle's ``whisper::Config`` has no ``*_ffn_dim``: its blocks' MLPs are ``4 * d_model``
    (``n_mlp = n_state * 4`` in candle-transformers/src/models/whisper/model.rs). A config with only
    Candle's fields loads transformers' weights of that width and gives its logits."""
    from safetensors.numpy import load_file
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from candlejax import DType
    from candlejax.nn import VarBuilder

    torch.manual_seed(1)
    keys = dict(num_mel_bins=8, max_source_positions=10, d_model=16, encoder_attention_heads=2, encoder_layers=1,
                vocab_size=40, max_target_positions=12, decoder_attention_heads=2, decoder_layers=1)  # fmt: skip
    hf = WhisperForConditionalGeneration(
        WhisperConfig(**keys, encoder_ffn_dim=64, decoder_ffn_dim=64, decoder_start_token_id=1, pad_token_id=0)
    ).eval()
    for cfg in (whisper.Config.from_dict({**keys, "suppress_tokens": []}), whisper.Config(**keys)):
        assert (cfg.encoder_ffn_dim, cfg.decoder_ffn_dim) == (64, 64)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        tensors = load_file(f"{d}/model.safetensors")
    m = whisper.Whisper.load(VarBuilder.from_tensors(tensors, DType.F32, Device.Cpu), cfg)
    mel = torch.randn(1, 8, 20)
    toks = torch.tensor([[1, 5, 7]])
    with torch.no_grad():
        ref = hf(input_features=mel, decoder_input_ids=toks).logits.numpy()
    got = m.forward(Tensor.from_numpy(mel.numpy()), toks.numpy())
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-4, rtol=0)


def test_transcribe_samples_with_the_given_seed(tmp_path):
    """Candle's whisper example samples the temperature fallback with ``--seed`` (default 299792458)."""
    m = _multilingual_model(tmp_path, seed=3, decoder_layers=1, max_target_positions=40)
    pcm = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1

    def tokens(**kw):
        segs = whisper.transcribe(m, pcm, temperature=1.0, language="en", no_speech_threshold=None,
                                  compression_ratio_threshold=None, logprob_threshold=None, **kw)  # fmt: skip
        return [s.tokens for s in segs]

    assert tokens(seed=299792458) == tokens()
    assert len({str(tokens(seed=s)) for s in range(4)}) > 1


def test_transcribe_fallback_skip_and_prompt_rules_follow_openai(tmp_path, monkeypatch):
    """OpenAI's ``transcribe.py`` rules on scripted window results: a window falls back through the
    temperatures while too repetitive (compression ratio > 2.4) or too unlikely (avg log-prob < -1),
    stops at silence (no-speech prob > 0.6 with a low log-prob) and is then skipped whole; a window
    with a high no-speech prob but a good log-prob is kept; the prompt is the text since the last
    window decoded above temperature 0.5."""
    m = _multilingual_model(tmp_path, seed=3, decoder_layers=1, max_target_positions=40)
    tb = 50364
    R = whisper.DecodingResult
    text = [tb, 400, 401, tb + 50]  # one timestamp pair: no consecutive timestamps, a 1 s segment
    script = [  # per window: the results of successive temperatures
        [R(text, "a", -0.3, 0.1, 0.0, 3.0), R(text, "a", -0.3, 0.1, 0.2, 1.0)],  # repetitive, then fine
        [R(text, "b", -1.5, 0.9, 0.0, 1.0)],  # silence: no fallback, skipped
        [R(text, "c", -0.5, 0.9, 0.0, 1.0)],  # no-speech prob high but a good log-prob: kept
        [R(text, "d", -2.0, 0.1, t, 1.0) for t in (0.0, 0.2, 0.4)] + [R(text, "d", -0.5, 0.1, 0.6, 1.0)],
        [R(text, "e", -0.5, 0.1, 0.0, 1.0)],
    ]
    calls = []

    def decode(self, audio, temperature=0.0, prompt=(), language=None):
        window = len({c[0] for c in calls}) - (1 if calls and temperature > 0 else 0)
        calls.append((window, temperature, list(prompt)))
        i = sum(c[0] == window for c in calls) - 1
        return script[window][i]

    monkeypatch.setattr(whisper.Decoder, "decode", decode)
    monkeypatch.setattr(whisper.Decoder, "encode", lambda self, mel: None)
    pcm = np.zeros(16000 * 150, np.float32)
    segs = list(whisper.transcribe(m, pcm, language="en"))
    assert [(w, t) for w, t, _ in calls] == [(0, 0.0), (0, 0.2), (1, 0.0), (2, 0.0), (3, 0.0), (3, 0.2), (3, 0.4),
                                            (3, 0.6), (4, 0.0)]  # fmt: skip
    assert [(s.seek, s.start, s.end, s.temperature) for s in segs] == [
        (0, 0.0, 1.0, 0.2), (6000, 60.0, 61.0, 0.0), (9000, 90.0, 91.0, 0.6), (12000, 120.0, 121.0, 0.0)
    ]  # fmt: skip
    prompts = {w: p for w, _, p in calls}
    assert prompts[0] == [] and prompts[1] == text and prompts[2] == text and prompts[3] == text * 2
    assert prompts[4] == []  # reset after the window decoded at 0.6
    # the initial prompt's tokens come first; without condition_on_previous_text they prompt the first window only
    calls.clear()
    script[:] = [[R(text, "a", -0.3, 0.1, 0.0, 1.0)] for _ in range(3)]
    tok = whisper.Decoder(m).tok
    first = tok.encode(" Hello there.")
    list(whisper.transcribe(m, pcm[: 16000 * 90], language="en", initial_prompt=" Hello there.  "))
    assert [p for _, _, p in calls] == [first, first + text, first + text * 2]
    calls.clear()
    list(whisper.transcribe(m, pcm[: 16000 * 90], language="en", initial_prompt="Hello there.",
                            condition_on_previous_text=False))  # fmt: skip
    assert [p for _, _, p in calls] == [first, [], []]
    monkeypatch.undo()
    dec = whisper.Decoder(m)
    audio = dec.encode(np.zeros((16, 3000), np.float32))
    with pytest.raises(errors.Msg, match="no temperatures"):  # (AssertionError)
        dec.decode_with_fallback(audio, (), language="en")
    assert dec.decode_with_fallback(audio, 0.4, language="en").temperature == 0.4  # one number (TypeError)
    assert dec.decode_with_fallback(audio, np.float32(0.5), language="en").temperature == 0.5  # numpy scalar


def _candle_example_draws(filtered: list, temperatures: list, seed: int) -> list[int]:
    """Candle's whisper example (candle-examples/examples/whisper/main.rs) at ``t > 0``, written from
    its loop: ``prs = softmax(&(&logits / t)?, 0)?`` (candle-pyo3's ops), ``WeightedIndex::new(&prs)``
    and ``distr.sample(&mut self.rng)`` with the one ``StdRng::seed_from_u64(seed)`` the Decoder holds
    across windows and temperatures (one ``next_u32`` per draw)."""
    candle = pytest.importorskip("candle")
    from candlejax.generation.candle_rng import chacha_block, stdrng_key

    key = stdrng_key(seed)
    words = [int(w) for b in range(8) for w in chacha_block(key, np.uint32(b), np.uint32(0))]
    out = []
    for n, (logits, t) in enumerate(zip(filtered, temperatures, strict=True)):
        prs = np.asarray(candle.functional.softmax(candle.Tensor(logits.tolist()) / t, 0).values(), np.float32)
        cumulative = []  # rand's WeightedIndex<f32>: running sums in index order, the last is the total
        total = np.float32(0.0)
        for w in prs:
            total = np.float32(total + w)
            cumulative.append(total)
        u = np.array((words[n] >> 9) | 0x3F800000, np.uint32).view(np.float32) - np.float32(1.0)
        chosen = np.float32(u * total)
        out.append(sum(1 for c in cumulative[:-1] if c <= chosen))  # partition_point(|w| *w <= chosen)
    return out


def test_sampled_decoding_draws_as_candles_example_across_fallbacks(tmp_path):
    """At a temperature above 0 the Decoder draws each token as Candle's example does: its softmax of
    the filtered logits divided by t, rand's WeightedIndex, one StdRng stream from ``seed`` that goes
    on across windows and temperature fallbacks (it drew numpy's Gumbel noise: other tokens)."""
    m = _multilingual_model(tmp_path, seed=3, decoder_layers=1, max_target_positions=40)
    audio = whisper.Decoder(m).encode(np.random.default_rng(0).standard_normal((16, 3000)).astype(np.float32))
    for seed in (1, 42, 299792458):
        dec = whisper.Decoder(m, seed=seed)
        calls = []  # per decode: its temperature and the filtered logits of each step
        decode, filt = dec.decode, dec._filter

        def spy_decode(audio, t, *args, decode=decode, calls=calls, **kw):
            calls.append((t, []))
            return decode(audio, t, *args, **kw)

        def spy_filter(logits, tokens, sample_begin, filt=filt, calls=calls):
            x, lse = filt(logits, tokens, sample_begin)
            calls[-1][1].append(x.copy())
            return x, lse

        dec.decode, dec._filter = spy_decode, spy_filter
        results = [dec.decode(audio, 0.5, language="fr"), dec.decode(audio, 1.0, language="fr")]
        # a fallback (forced: an average log-probability is below 0) draws on from the same stream
        results.append(dec.decode_with_fallback(audio, (0.5, 1.0), language="fr", logprob_threshold=0.0,
                                                no_speech_threshold=None))  # fmt: skip
        assert [t for t, _ in calls] == [0.5, 1.0, 0.5, 1.0] and results[2].temperature == 1.0
        draws = _candle_example_draws([x for _, xs in calls for x in xs], [t for t, xs in calls for _ in xs], seed)
        per_call, start = [], 0
        for _, xs in calls:
            per_call.append(draws[start : start + len(xs)])
            start += len(xs)
        for res, want in zip(results, [per_call[0], per_call[1], per_call[3]], strict=True):
            assert res.tokens == want[: len(res.tokens)], seed
            assert want[len(res.tokens) :] in ([], [dec.tok.eot]), seed
