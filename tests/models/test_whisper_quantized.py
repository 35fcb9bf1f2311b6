"""Whisper from GGUF (``whisper.quantized_model``, Candle's ``quantized_model.rs``) against the float
model on the same weights: a tiny random checkpoint with transformers' names, written to GGUF files as
Candle's ``tensor-tools quantize`` does (2-D tensors whose rows are whole Q8_0 blocks quantised, the
rest F32). The float model is checked against transformers in ``test_whisper.py``."""

from __future__ import annotations

import numpy as np
import pytest

from candlejax import Device, DType, Tensor, errors
from candlejax.io import gguf
from candlejax.models import whisper
from candlejax.models.whisper import quantized_model
from candlejax.nn import VarBuilder
from candlejax.quantized import GgmlDType, QTensor

CFG = whisper.Config(
    vocab_size=64, num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
    decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=1500,
    max_target_positions=32, suppress_tokens=(), begin_suppress_tokens=(50,), eos_token_id=50,
    decoder_start_token_id=51,
)  # fmt: skip
SPECIAL = ["<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
           "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]  # fmt: skip
ENC_POS = "model.encoder.embed_positions.weight"


def _checkpoint() -> dict[str, np.ndarray]:
    """transformers' ``WhisperForConditionalGeneration`` names; the encoder positions are the sinusoids
    (as transformers initialises and checkpoints hold them)."""
    rng = np.random.default_rng(0)
    d, m = CFG.d_model, CFG.num_mel_bins

    def w(*shape: int, scale: float | None = None) -> np.ndarray:
        s = 1.0 / np.sqrt(np.prod(shape[1:])) if scale is None else scale
        return (s * rng.standard_normal(shape)).astype(np.float32)

    def norm(p: str) -> dict[str, np.ndarray]:
        return {f"{p}.weight": 1 + w(d, scale=0.1), f"{p}.bias": w(d, scale=0.1)}

    def attn(p: str) -> dict[str, np.ndarray]:
        t = {f"{p}.{n}_proj.weight": w(d, d) for n in ("q", "k", "v", "out")}
        return t | {f"{p}.{n}_proj.bias": w(d, scale=0.1) for n in ("q", "v", "out")}

    def layer(p: str, ffn: int, cross: bool) -> dict[str, np.ndarray]:
        t = attn(f"{p}.self_attn") | norm(f"{p}.self_attn_layer_norm") | norm(f"{p}.final_layer_norm")
        t |= {f"{p}.fc1.weight": w(ffn, d), f"{p}.fc1.bias": w(ffn, scale=0.1), f"{p}.fc2.weight": w(d, ffn),
              f"{p}.fc2.bias": w(d, scale=0.1)}  # fmt: skip
        return t | (attn(f"{p}.encoder_attn") | norm(f"{p}.encoder_attn_layer_norm") if cross else {})

    t = {"model.encoder.conv1.weight": w(d, m, 3), "model.encoder.conv1.bias": w(d, scale=0.1),
         "model.encoder.conv2.weight": w(d, d, 3), "model.encoder.conv2.bias": w(d, scale=0.1),
         ENC_POS: np.asarray(quantized_model.sinusoids(CFG.max_source_positions, d)),
         "model.decoder.embed_tokens.weight": w(CFG.vocab_size, d, scale=0.5),
         "model.decoder.embed_positions.weight": w(CFG.max_target_positions, d, scale=0.1)}  # fmt: skip
    t |= norm("model.encoder.layer_norm") | norm("model.decoder.layer_norm")
    for i in range(CFG.encoder_layers):
        t |= layer(f"model.encoder.layers.{i}", CFG.encoder_ffn_dim, False)
    for i in range(CFG.decoder_layers):
        t |= layer(f"model.decoder.layers.{i}", CFG.decoder_ffn_dim, True)
    return t


def _candle_quantize(sd: dict[str, np.ndarray], dtype: GgmlDType) -> dict[str, QTensor | np.ndarray]:
    """``tensor-tools quantize`` of a safetensors file: rank 2 with whole blocks per row, else F32."""
    bs = dtype.block_size()
    return {k: QTensor.quantize(v, dtype) if v.ndim == 2 and v.shape[1] % bs == 0 else v for k, v in sd.items()}


def _float(sd: dict[str, np.ndarray]) -> whisper.Whisper:
    return whisper.Whisper.load(VarBuilder.from_tensors(sd, DType.F32, Device.Cpu), CFG)


def _quantized(path) -> quantized_model.Whisper:
    return quantized_model.Whisper.load(quantized_model.VarBuilder.from_gguf(str(path), Device.Cpu), CFG)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(float model, F32 GGUF model, Q8_0 GGUF model, float model of the dequantised Q8_0 weights,
    folder of the files, the checkpoint)."""
    d = tmp_path_factory.mktemp("whisper_gguf")
    sd = _checkpoint()
    gguf.write(str(d / "f32.gguf"), {}, sd)
    q8 = _candle_quantize(sd, GgmlDType.Q8_0)
    gguf.write(str(d / "q8.gguf"), {}, q8)
    deq = {k: (np.asarray(v.dequantize()) if isinstance(v, QTensor) else v) for k, v in q8.items()}
    deq[ENC_POS] = sd[ENC_POS]  # the quantized model uses the exact sinusoids, not the file's table
    assert sum(isinstance(v, QTensor) for v in q8.values()) == 6 * 2 + 10 * 2 + 3  # linears, embedding tables
    return _float(sd), _quantized(d / "f32.gguf"), _quantized(d / "q8.gguf"), _float(deq), d, sd


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    mel = Tensor.from_numpy(rng.standard_normal((2, 16, 60)).astype(np.float32))
    toks = np.array([[51, 5, 7, 9, 11, 3], [51, 8, 8, 40, 4, 2]], np.uint32)
    return mel, toks


def _run(m: whisper.Whisper, mel: Tensor, toks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    audio = m.encoder.forward(mel, True)
    ys = m.decoder.forward(toks, audio, True)
    return np.asarray(audio), np.asarray(ys), np.asarray(m.decoder.final_linear(ys))


def test_sinusoids_are_whispers_table():
    """transformers' / OpenAI's ``sinusoids`` in float64: F32 rounding only (arguments up to ~1500 rad)."""
    length, ch = 1500, 32
    inc = np.log(10000.0) / (ch // 2 - 1)
    t = np.arange(length)[:, None] * np.exp(-inc * np.arange(ch // 2))[None, :]
    got = np.asarray(quantized_model.sinusoids(length, ch))
    assert got.shape == (length, ch) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.concatenate([np.sin(t), np.cos(t)], 1), atol=2e-4, rtol=0)


def test_f32_gguf_equals_the_float_model(models):
    import candlejax.quantized

    assert whisper.quantized_model is quantized_model and quantized_model.VarBuilder is candlejax.quantized.VarBuilder
    flt, qf32, _, _, _, _ = models
    assert isinstance(qf32, whisper.Whisper) and qf32.config == CFG
    assert type(qf32.encoder) is whisper.AudioEncoder and type(qf32.decoder) is whisper.TextDecoder
    assert type(qf32.decoder.blocks[0].attn.query).__name__ == "QLinear"
    mel, toks = _inputs()
    for got, want in zip(_run(qf32, mel, toks), _run(flt, mel, toks)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_q8_0_gguf_equals_the_dequantized_float_model_and_is_close_to_the_original(models):
    """Against the float model of the dequantised weights: the same arithmetic, 1e-5.

    Against the original weights: Q8_0 rounds each weight to a step of ``max|block| / 127``, a
    uniform error of RMS ``step / sqrt(12)``; for Gaussian blocks of 32 (``max ~ 2.1 sigma``) that is
    ~0.5% of the weights' RMS (checked below). The errors of the ~20 quantised products on the
    longest path (encoder 2 x 4, decoder 2 x 6, embedding, output projection) add roughly in
    quadrature: ``sqrt(20) * 0.5% ~ 2.4%``, hence 3% of the outputs' norm (measured: 0.8% encoder,
    1.3% decoder, 1.4% logits). A wrong or misplaced tensor gives ~100%."""
    flt, _, q8, deq, _, sd = models
    assert type(q8.decoder.blocks[1].cross_attn.out.weight).__name__ in ("PackedWeight", "BlockedWeight")
    w = sd["model.decoder.layers.1.fc1.weight"]
    w_err = np.linalg.norm(np.asarray(QTensor.quantize(w, GgmlDType.Q8_0).dequantize()) - w) / np.linalg.norm(w)
    assert 0.004 < w_err < 0.006, w_err
    mel, toks = _inputs()
    q, ref, orig = _run(q8, mel, toks), _run(deq, mel, toks), _run(flt, mel, toks)
    for got, want, o in zip(q, ref, orig):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        rel = np.linalg.norm(got - o) / np.linalg.norm(o)
        assert 1e-3 < rel < 3e-2, rel


def test_kv_cache_semantics_match_the_float_model(models):
    """``flush_kv_cache=False`` continues the sequence (new tokens, or Candle's whole-sequence form);
    ``reset_kv_cache`` starts a new one."""
    _, _, q8, deq, _, _ = models
    rng = np.random.default_rng(1)
    mel = Tensor.from_numpy(rng.standard_normal((1, 16, 60)).astype(np.float32))
    toks = rng.integers(0, 50, (1, 9))
    for m in (q8, deq):
        m.reset_kv_cache()
    outs = []
    for m in (q8, deq):
        audio = m.encoder.forward(mel, True)
        m.encoder.reset_kv_cache()  # Candle's quantized AudioEncoder::reset_kv_cache; the encoder is stateless
        np.testing.assert_array_equal(np.asarray(m.encoder.forward(mel, False)), np.asarray(audio))
        full = np.asarray(m.decoder.forward(toks, audio, True))
        parts = [np.asarray(m.decoder.forward(toks[:, :4], audio, True))]
        parts += [np.asarray(m.decoder.forward(toks[:, i : i + 1], audio, False)) for i in range(4, 7)]
        whole = np.asarray(m.decoder.forward(toks, audio, False))  # Candle's form: the whole sequence again
        np.testing.assert_allclose(np.concatenate(parts, 1), full[:, :7], atol=1e-5, rtol=0)
        np.testing.assert_allclose(whole, full, atol=1e-5, rtol=0)
        m.reset_kv_cache()
        again = np.asarray(m.decoder.forward(toks[:, :3], audio, False))
        np.testing.assert_allclose(again, full[:, :3], atol=1e-5, rtol=0)
        outs.append((full, np.concatenate(parts, 1)))
    for got, want in zip(outs[0], outs[1]):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def _tokenizer(path) -> whisper.WhisperTokenizer:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    vocab = {f"w{i} ": i for i in range(50)} | {t: 50 + i for i, t in enumerate(SPECIAL)}
    vocab |= {f"<|{i * 0.02:.2f}|>": 58 + i for i in range(CFG.vocab_size - 58)}
    Tokenizer(WordLevel(vocab, unk_token="<|endoftext|>")).save(str(path))
    return whisper.WhisperTokenizer(path)


@pytest.mark.parametrize("stored", ["f32", "f16"])
def test_greedy_transcribe_matches_the_float_model(models, stored):
    """The compiled decoding (``transcribe``: encoder, ``new_state``, prefill, ``step_jit``) on the GGUF
    model gives the float model's tokens; F16 storage against the float model of the F16-rounded weights."""
    flt, qf32, _, _, d, sd = models
    tok = _tokenizer(d / "tokenizer.json")
    if stored == "f16":
        sd16 = {k: v.astype(np.float16) for k, v in sd.items()}
        gguf.write(str(d / "f16.gguf"), {}, sd16)
        qm = _quantized(d / "f16.gguf")
        assert qm.decoder.blocks[0].mlp_linear1.weight.dtype == np.float16
        flt = _float({k: v.astype(np.float32) for k, v in sd16.items()} | {ENC_POS: sd[ENC_POS]})
    else:
        qm = qf32
    pcm = 0.1 * np.random.default_rng(2).standard_normal(16000).astype(np.float32)
    kw = dict(timestamps=False, temperature=0.0, tokenizer=tok, compression_ratio_threshold=None,
              logprob_threshold=None, no_speech_threshold=None)  # fmt: skip
    want = list(whisper.transcribe(flt, pcm, **kw))
    got = list(whisper.transcribe(qm, pcm, **kw))
    assert len(want) == 1 and len(want[0].tokens) >= 3
    assert [s.tokens for s in got] == [s.tokens for s in want]
    np.testing.assert_allclose(got[0].avg_logprob, want[0].avg_logprob, rtol=0, atol=1e-4)


def test_from_pretrained_reads_the_gguf_config_and_tokenizer_beside_it(models, tmp_path):
    import json
    import shutil

    _, qf32, _, _, d, _ = models
    shutil.copy(d / "f32.gguf", tmp_path / "model-tiny-q80.gguf")
    (tmp_path / "config.json").write_text(json.dumps(CFG.to_dict()))
    m = quantized_model.Whisper.from_pretrained(tmp_path, Device.Cpu)
    assert m.config == CFG and m.path == str(tmp_path)
    mel, toks = _inputs(3)
    np.testing.assert_array_equal(_run(m, mel, toks)[2], _run(qf32, mel, toks)[2])
    with pytest.raises(errors.Msg, match="no config"):
        quantized_model.Whisper.from_pretrained(d / "f32.gguf", Device.Cpu, config=tmp_path / "nope.json")


def test_file_errors_name_the_tensor(models, tmp_path):
    _, _, _, _, _, sd = models
    missing = "model.decoder.layers.1.fc2.weight"
    gguf.write(str(tmp_path / "missing.gguf"), {}, {k: v for k, v in sd.items() if k != missing})
    with pytest.raises(errors.CannotFindTensor, match=missing.replace(".", r"\.")):
        _quantized(tmp_path / "missing.gguf")
    for name in ("model.encoder.layers.0.self_attn.k_proj.weight", "model.encoder.conv2.bias",
                 "model.decoder.embed_tokens.weight"):  # fmt: skip
        bad = dict(sd)
        bad[name] = np.zeros((sd[name].shape[0] + 1, *sd[name].shape[1:]), np.float32)
        gguf.write(str(tmp_path / "bad.gguf"), {}, bad)
        with pytest.raises(errors.UnexpectedShape, match=name.replace(".", r"\.")):
            _quantized(tmp_path / "bad.gguf")
    # Candle reads no encoder position table (it computes the sinusoids): a file without one loads
    gguf.write(str(tmp_path / "nopos.gguf"), {}, {k: v for k, v in sd.items() if k != ENC_POS})
    _quantized(tmp_path / "nopos.gguf")
    vb = quantized_model.VarBuilder.from_gguf(str(tmp_path / "nopos.gguf"), Device.Cpu)
    with pytest.raises(errors.InvalidArgument, match=r"Whisper.load\(vb, config\)"):
        quantized_model.Whisper.load(CFG, vb)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument, match="safetensors"):
        quantized_model.Whisper.load(VarBuilder.from_tensors(sd), CFG)  # type: ignore[arg-type]


def test_command_line_takes_a_gguf_model(models, tmp_path, capsys):
    """``python -m candlejax.models.whisper transcribe FILE --model DIR`` with a GGUF file in DIR (Candle's
    ``--quantized``) prints what ``transcribe`` gives; the float loader names the quantized one."""
    import json
    import shutil

    import soundfile

    from candlejax.models.whisper.__main__ import main

    _, qf32, _, _, d, _ = models
    shutil.copy(d / "f32.gguf", tmp_path / "model-q.gguf")
    (tmp_path / "config.json").write_text(json.dumps(CFG.to_dict()))
    tok = _tokenizer(tmp_path / "tokenizer.json")
    pcm = 0.1 * np.random.default_rng(4).standard_normal(16000).astype(np.float32)
    soundfile.write(tmp_path / "noise.wav", pcm, 16000)
    segments = whisper.transcribe(qf32, str(tmp_path / "noise.wav"), timestamps=False, temperature=0.0, tokenizer=tok)
    want = "".join(s.text.strip() for s in segments)
    assert want
    for model in (tmp_path, tmp_path / "model-q.gguf"):
        assert main(["transcribe", str(tmp_path / "noise.wav"), "--temperature", "0", "--model", str(model)]) == 0
        assert capsys.readouterr().out.replace("\n", "") == want
    with pytest.raises(errors.Msg, match=r"quantized_model\.Whisper\.from_pretrained"):
        whisper.Whisper.from_pretrained(tmp_path, Device.Cpu)
