"""``candlejax llama2-c`` (Candle's llama2-c example, inference): a tiny random llama2.c ``.bin``
(llama2.c's legacy export layout), the same tensors as an F32 GGUF (Candle's tensor-tools names) and
as safetensors, and a WordLevel ``tokenizer.json`` that adds ``<s>`` are built here. The printed
continuation must equal Candle's loop written below directly on ``llama2_c.Llama.forward`` (the
prompt at ``index_pos`` 0, then one token per step on the KV cache, the repeat penalty, then
``LogitsProcessor.sample``), greedy and seeded-sampled, printed as the prompt and continuation decoded
together; ``--sample-len`` and the model's ``seq_len``
stop it; the config of a GGUF file comes from the embedding width as in Candle (read off the shapes
for other widths); bad files exit 1 with one ``error:`` line."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from sentencepiece_fixture import write_sentencepiece_tokenizer

from candlejax import Device, Tensor, cli, errors, safetensors
from candlejax.cli.llama2_c import config_from_shapes
from candlejax.generation import LogitsProcessor
from candlejax.io import gguf
from candlejax.models.llama2_c import Cache, Config, Llama
from candlejax.models.llama2_c_weights import TransformerWeights, tensor_layout
from candlejax.models.utils import apply_repeat_penalty

CFG = dict(dim=32, hidden_dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, seq_len=32)
PROMPT = "w17 w42 w5 w33"  # <s> w17 w42 w5 w33: ids 1, 17, 42, 5, 33
SPECIALS = ["<unk>", "<s>", "</s>"]


def _weights(cfg: Config) -> dict[str, np.ndarray]:
    """llama2.c's tensors by its names, random, with llama2.c's rotary tables (``precompute_freqs_cis``)."""
    rng = np.random.default_rng(0)
    out = {}
    for name, shape in tensor_layout(cfg):
        if name.startswith("rms"):
            a = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name == "token_embedding_table":  # small: the shared LM head does not just repeat the last token
            a = 0.3 * rng.standard_normal(shape)
        else:
            a = rng.standard_normal(shape) / np.sqrt(shape[-1])
        out[name] = a.astype(np.float32)
    hs = cfg.head_size()
    freqs = 1.0 / 10000.0 ** (np.arange(0, hs, 2, dtype=np.float32) / hs)
    angles = np.outer(np.arange(cfg.seq_len, dtype=np.float32), freqs)
    out["freq_cis_real"], out["freq_cis_imag"] = np.cos(angles), np.sin(angles)
    return out


def _var_builder_names(cfg: Config, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tensors under the names of Candle's ``TransformerWeights::var_builder`` (what its
    tensor-tools writes to GGUF)."""
    out = {"rot.freq_cis_real": w["freq_cis_real"], "rot.freq_cis_imag": w["freq_cis_imag"],
           "model.embed_tokens.weight": w["token_embedding_table"], "lm_head.weight": w["token_embedding_table"],
           "model.norm.weight": w["rms_final_weight"]}  # fmt: skip
    per_layer = {"self_attn.q_proj": "wq", "self_attn.k_proj": "wk", "self_attn.v_proj": "wv",
                 "self_attn.o_proj": "wo", "mlp.gate_proj": "w1", "mlp.down_proj": "w2", "mlp.up_proj": "w3",
                 "input_layernorm": "rms_att_weight", "post_attention_layernorm": "rms_ffn_weight"}  # fmt: skip
    for i in range(cfg.n_layers):
        for name, src in per_layer.items():
            out[f"model.layers.{i}.{name}.weight"] = np.ascontiguousarray(w[src][i])
    return out


def _tokenizer(path) -> None:
    """A WordLevel tokenizer.json: ``<unk> <s> </s> w3 .. w63``, words split on whitespace, ``<s>`` first."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(SPECIALS)} | {f"w{i}": i for i in range(3, CFG["vocab_size"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIALS)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(path))


class Files:
    def __init__(self, root):
        self.cfg = Config(**CFG)
        w = _weights(self.cfg)
        head = struct.pack("<7i", *(CFG[k] for k in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads",
                                                     "vocab_size", "seq_len")))  # fmt: skip
        self.data = head + b"".join(w[n].astype("<f4").tobytes() for n, _ in tensor_layout(self.cfg))
        self.bin = str(root / "model.bin")
        with open(self.bin, "wb") as f:
            f.write(self.data)
        named = _var_builder_names(self.cfg, w)
        self.gguf = str(root / "model_f32.gguf")
        gguf.write(self.gguf, {"general.architecture": "llama2c"}, named)
        self.safetensors = str(root / "model.safetensors")
        safetensors.save({n: Tensor.from_numpy(a) for n, a in named.items()}, self.safetensors)
        self.tokenizer = str(root / "tokenizer.json")
        _tokenizer(self.tokenizer)
        with open(self.bin, "rb") as f:  # the reference: Candle's example, the .bin way
            cfg = Config.from_reader(f)
            self.vb = TransformerWeights.from_reader(f, cfg, Device.Cpu).var_builder(cfg, Device.Cpu)
        self.model = Llama.load(self.vb, cfg)
        from candlejax.tokenizer import load_tokenizer

        self.tok = load_tokenizer(self.tokenizer)

    def reference(self, sample_len=None, seed=299792458, temperature=None, top_p=None, repeat_penalty=1.1,
                  repeat_last_n=64) -> list[int]:  # fmt: skip
        """Candle's ``run_inference`` loop on ``Llama.forward``: the generated ids."""
        tokens = self.tok.encode(PROMPT).get_ids()
        assert tokens == [1, 17, 42, 5, 33]
        n_prompt, index_pos = len(tokens), 0
        cache = Cache.new(True, self.cfg, self.vb.pp("rot"))
        lp = LogitsProcessor(seed, temperature, top_p)
        for index in range(10**6):
            if len(tokens) >= self.cfg.seq_len or (sample_len is not None and index >= sample_len):
                break
            ctxt = tokens if index == 0 else tokens[-1:]
            logits = self.model.forward(Tensor.new(np.asarray([ctxt], np.uint32), Device.Cpu), index_pos, cache)
            logits = logits.i((0, logits.dims()[1] - 1))
            if repeat_penalty != 1.0:
                logits = apply_repeat_penalty(logits, repeat_penalty, tokens[max(0, len(tokens) - repeat_last_n) :])
            index_pos += len(ctxt)
            tokens.append(lp.sample(logits))
        return tokens[n_prompt:]

    def text(self, ids: list[int]) -> str:
        """What the command prints: the prompt and the continuation, decoded together."""
        return self.tok.decode([1, 17, 42, 5, 33, *ids], skip_special_tokens=True) + "\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return Files(tmp_path_factory.mktemp("llama2_c_cli"))


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    import jax

    # ``--cpu`` sets JAX's platforms and default device for the process: the tests after this one keep theirs
    saved = {name: getattr(jax.config, name) for name in ("jax_platforms", "jax_default_device")}
    try:
        rc = cli.main(["llama2-c", *argv])
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_greedy_equals_candles_loop_until_seq_len(files, capsys):
    ref = files.reference()
    assert len(ref) == CFG["seq_len"] - 5 and len(set(ref)) > 4  # the prompt's 5 positions, then until seq_len
    # the reference with the default repeat penalty 1.1 over the last 64 tokens; without it, plain argmax
    plain = files.reference(repeat_penalty=1.0)
    logits = files.model.forward(Tensor.new(np.asarray([[1, 17, 42, 5, 33]], np.uint32)), 0,
                                 Cache.new(True, files.cfg, files.vb.pp("rot")))  # fmt: skip
    assert plain[0] == int(np.argmax(np.asarray(logits.jax)[0, -1]))
    import jax

    default_device = jax.config.jax_default_device
    rc, out, err = _run(capsys, "--config", files.bin, "--tokenizer", files.tokenizer, "--prompt", PROMPT, "--cpu")
    assert rc == 0, err
    assert jax.config.jax_default_device == default_device  # (the command ran in this process)
    assert out == files.text(ref)
    assert "dim=32" in err and "seq_len=32" in err and "(the llama2.c header)" in err
    assert f"5 prompt tokens, {len(ref)} generated (seq_len)" in err and "tokens/s" in err
    rc, out, err = _run(capsys, "--config", files.bin, "--tokenizer", files.tokenizer, "--prompt", PROMPT,
                        "--repeat-penalty", "1", "--quiet")  # fmt: skip
    assert rc == 0 and out == files.text(plain) and err == ""
    # a strong penalty over a short window: Candle's tokens[len - repeat_last_n..]
    short = files.reference(sample_len=12, repeat_penalty=3.0, repeat_last_n=2)
    assert short != files.reference(sample_len=12, repeat_penalty=3.0, repeat_last_n=64)
    rc, out, err = _run(capsys, "--config", files.bin, "--tokenizer", files.tokenizer, "--prompt", PROMPT, "-n", "12",
                        "--repeat-penalty", "3", "--repeat-last-n", "2")  # fmt: skip
    assert rc == 0 and out == files.text(short)
    rc, out, err = _run(capsys, "--config", files.bin, "--tokenizer", files.tokenizer, "--prompt", PROMPT, "-n", "12",
                        "--repeat-penalty", "3", "--repeat-last-n", "0")  # fmt: skip
    assert rc == 0 and out == files.text(files.reference(sample_len=12, repeat_penalty=1.0))


def test_sample_len_and_seq_len_stop(files, capsys):
    ref = files.reference(sample_len=3)
    rc, out, err = _run(capsys, "--config", files.bin, "--tokenizer", files.tokenizer, "--prompt", PROMPT, "-n", "3")
    assert rc == 0 and out == files.text(ref) and len(ref) == 3
    assert "5 prompt tokens, 3 generated (length)" in err and "used up" not in err
    assert ref == files.reference()[:3]
    rc, out, err = _run(capsys, "--config", files.bin, "--tokenizer", files.tokenizer, "--prompt", PROMPT,
                        "--sample-len", "0")  # fmt: skip
    assert rc == 0 and out == PROMPT + "\n"
    rc, out, err = _run(capsys, "--config", files.bin, "--tokenizer", files.tokenizer, "--prompt", PROMPT,
                        "--sample-len", "100")  # fmt: skip
    assert rc == 0 and out == files.text(files.reference())
    assert "stopped after 27 tokens: the model's seq_len (32 positions) is used up" in err


def test_seeded_sampling_equals_candles_loop(files, capsys):
    kw = dict(sample_len=12, seed=42, temperature=1.5, top_p=0.95, repeat_penalty=1.3, repeat_last_n=4)
    ref = files.reference(**kw)
    argv = ["--config", files.bin, "--tokenizer", files.tokenizer, "--prompt", PROMPT, "--sample-len", "12",
            "--temperature", "1.5", "--top-p", "0.95", "--repeat-penalty", "1.3", "--repeat-last-n", "4"]  # fmt: skip
    rc, out, err = _run(capsys, *argv, "--seed", "42")
    assert rc == 0 and out == files.text(ref), err
    assert ref != files.reference(sample_len=12)  # really sampled, not greedy
    assert ref != files.reference(**(kw | {"seed": 43}))
    rc, out, _ = _run(capsys, *argv, "--seed", "43")
    assert out == files.text(files.reference(**(kw | {"seed": 43})))


@pytest.mark.parametrize("kind", ["gguf", "gguf --quantized", "safetensors"])
def test_gguf_and_safetensors_give_the_bins_tokens(files, capsys, kind, tmp_path):
    path = files.safetensors if kind == "safetensors" else files.gguf
    extra = []
    if kind == "gguf --quantized":  # --quantized reads a GGUF whatever its name
        path = str(tmp_path / "model.q")
        with open(files.gguf, "rb") as src, open(path, "wb") as dst:
            dst.write(src.read())
        extra = ["--quantized"]
    rc, out, err = _run(capsys, "--config", path, *extra, "--tokenizer", files.tokenizer, "--prompt", PROMPT,
                        "-n", "8")  # fmt: skip
    assert rc == 0, err
    assert out == files.text(files.reference(sample_len=8))
    assert "read off the tensor shapes" in err and "n_heads=4, n_kv_heads=2" in err


def test_config_from_the_embedding_width_as_candle():
    cfg, how = config_from_shapes({"model.embed_tokens.weight": (32000, 288)}, "x")
    assert cfg == Config.tiny_15m() and how == "Candle's tiny_15m for embedding width 288"
    cfg, _ = config_from_shapes({"model.embed_tokens.weight": (512, 64)}, "x")  # the real stories260K vocabulary
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (64, 5, 8, 4, 512)
    with pytest.raises(errors.Msg, match=r"no config for embedding width 32 \(Candle knows 64 \(tiny_260k\)"):
        config_from_shapes({"model.embed_tokens.weight": (64, 32)}, "x")
    with pytest.raises(errors.Msg, match=r"not a llama2\.c model"):
        config_from_shapes({"token_embd.weight": (64, 32)}, "x")


def test_run_inference_gguf_branch_and_run_eval_as_written(files):
    """main.rs line for line: the GGUF branch (``qmodel::VarBuilder::from_gguf``, the rotary tables
    dequantized into ``VarBuilder::from_tensors``, ``QLlama::load(vb, config.clone())``) and
    ``run_eval``'s batches (``Batcher::new_r2``, ``cross_entropy`` of ``flatten_to(1)``)."""
    import candlejax.nn as candle_nn
    from candlejax import DType
    from candlejax.data import Batcher
    from candlejax.models import quantized_var_builder as qmodel
    from candlejax.models.quantized_llama2_c import QLlama

    device = Device.Cpu
    vb = qmodel.VarBuilder.from_gguf(files.gguf, device)
    (_vocab_size, dim) = vb.get_no_shape("model.embed_tokens.weight").shape().dims2()
    assert dim == 32
    config = files.cfg
    freq_cis_real = vb.get((config.seq_len, config.head_size() // 2), "rot.freq_cis_real").dequantize(device)
    freq_cis_imag = vb.get((config.seq_len, config.head_size() // 2), "rot.freq_cis_imag").dequantize(device)
    fake_vb = candle_nn.VarBuilder.from_tensors({"freq_cis_real": freq_cis_real, "freq_cis_imag": freq_cis_imag},
                                                DType.F32, device)  # fmt: skip
    cache = Cache.new(True, config, fake_vb)
    clone = config.clone()
    assert clone == config and clone is not config
    model = QLlama.load(vb, config.clone())
    tokens = [1, 17, 42, 5, 33]
    logits = model.forward(Tensor.new(tokens, device).unsqueeze(0), 0, cache)
    logits = logits.i((0, logits.dim(1) - 1))
    want = files.model.forward(Tensor.new(tokens, device).unsqueeze(0), 0, Cache.new(True, config, files.vb.pp("rot")))
    np.testing.assert_allclose(np.asarray(logits.jax), np.asarray(want.jax)[0, -1], atol=1e-5)

    cache = Cache.new(False, config, files.vb.pp("rot"))
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, 100).tolist()
    seq_len = files.model.config.seq_len

    def windows():
        for start_idx in range(0, len(tokens), seq_len):
            if start_idx + seq_len + 1 <= len(tokens):
                w = tokens[start_idx : start_idx + seq_len + 1]
                yield Tensor.new(w[:seq_len], device), Tensor.new(w[1:], device)

    losses = []
    for inp_tgt in Batcher.new_r2(windows()).batch_size(2):
        (inp, tgt) = inp_tgt
        logits = files.model.forward(inp, 0, cache)
        losses.append(candle_nn.loss.cross_entropy(logits.flatten_to(1), tgt.flatten_to(1)).to_vec0())
    lg = np.asarray(files.model.forward(inp, 0, cache).jax, np.float64).reshape(-1, config.vocab_size)
    lse = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1)
    t = np.asarray(tgt.jax).reshape(-1)
    assert len(losses) == 1 and abs(losses[0] - float(np.mean(lse - lg[np.arange(len(t)), t]))) < 1e-5


def _one_error_line(err: str) -> None:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "llama2-c: error: " in err, err


def test_bad_files_exit_1_with_one_error_line(files, capsys, tmp_path):
    rc, _, err = _run(capsys, "--config", files.bin, "--prompt", PROMPT)
    assert rc == 1 and "--tokenizer tokenizer.json is needed" in err
    _one_error_line(err)
    rc, _, err = _run(capsys, "--config", files.bin, "--tokenizer", str(tmp_path / "none.json"))
    assert rc == 1 and "--tokenizer: no such file" in err
    _one_error_line(err)
    bad_tok = tmp_path / "tokenizer.json"
    bad_tok.write_text("{not json")
    rc, _, err = _run(capsys, "--config", files.bin, "--tokenizer", str(bad_tok))
    assert rc == 1 and "is not a tokenizer.json" in err
    _one_error_line(err)
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(files.data[:1000])
    rc, _, err = _run(capsys, "--config", str(truncated), "--tokenizer", files.tokenizer, "--prompt", PROMPT)
    assert rc == 1 and "truncated: tensor" in err and "ends at byte 1000" in err
    _one_error_line(err)
    rc, _, err = _run(capsys, "--config", str(tmp_path / "missing.bin"), "--tokenizer", files.tokenizer)
    assert rc == 1 and "No such file" in err
    _one_error_line(err)
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(files.data)
    rc, _, err = _run(capsys, "--config", str(not_gguf), "--tokenizer", files.tokenizer)
    assert rc == 1
    _one_error_line(err)
    rc, _, err = _run(capsys, "--config", files.bin, "--tokenizer", files.tokenizer, "--top-p", "0.9")
    assert rc == 1 and "--top-p needs --temperature" in err
    # temperature 0 is greedy too (Candle's LogitsProcessor: ArgMax below 1e-7): the nucleus would do nothing
    rc, _, err = _run(capsys, "--config", files.bin, "--tokenizer", files.tokenizer, "--top-p", "0.9",
                      "--temperature", "0")  # fmt: skip
    assert rc == 1 and "--top-p needs --temperature > 0" in err
    with pytest.raises(SystemExit) as e:
        cli.main(["llama2-c", "--config", files.bin, "--sample-len", "-1"])
    assert e.value.code == 2 and "must be >= 0" in capsys.readouterr().err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "llama2-c" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["llama2-c", "--help"])
    out = capsys.readouterr().out
    for flag in ("--config", "--tokenizer", "--quantized", "--sample-len", "--temperature", "--top-p", "--seed",
                 "--repeat-penalty", "--repeat-last-n", "--cpu"):  # fmt: skip
        assert flag in out
    assert "(default: 1.1)" in out and "(default: 299792458)" in out


def test_printed_text_is_the_decoded_prompt_and_continuation(files, capsys, tmp_path):
    """With a SentencePiece decoder the first new token's space is kept: the prompt and the continuation
    print as ``decode(prompt + new)`` (Candle's stream decodes the new tokens alone: ``"w33w3"``)."""
    from candlejax.tokenizer import load_tokenizer

    path = tmp_path / "tokenizer.json"
    write_sentencepiece_tokenizer(path, CFG["vocab_size"])
    tok = load_tokenizer(str(path))
    prompt_ids = tok.encode(PROMPT).get_ids()
    assert prompt_ids == [1, 17, 42, 5, 33] and tok.decode(prompt_ids[1:]) == PROMPT
    ref = files.reference(sample_len=6)
    rc, out, err = _run(capsys, "--config", files.bin, "--tokenizer", str(path), "--prompt", PROMPT, "-n", "6")
    assert rc == 0, err
    assert out == tok.decode(prompt_ids + ref, skip_special_tokens=True) + "\n"
    assert out.startswith(PROMPT + " w")


def test_python_m_entry_points_hand_off_to_the_command_line(files):
    """``python -m candlejax.models.llama2_c`` runs ``candlejax llama2-c`` (it exited 0 doing nothing);
    ``python -m candlejax.models.quantized_llama`` runs ``candlejax`` (``generate``, ``chat``)."""
    import subprocess
    import sys

    argv = ["--config", files.bin, "--tokenizer", files.tokenizer, "--prompt", PROMPT, "-n", "3", "--quiet"]
    r = subprocess.run([sys.executable, "-m", "candlejax.models.llama2_c", *argv], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == files.text(files.reference(sample_len=3)), r.stderr
    r = subprocess.run([sys.executable, "-m", "candlejax.models.quantized_llama", "generate", "--gguf", "none.gguf"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 1 and "candlejax generate: error: --gguf: no such file" in r.stderr, r.stderr
