"""llama.Llama against transformers' LlamaForCausalLM with the same random weights (f32)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from candlejax import Device, DType, Tensor, errors  # noqa: E402
from candlejax.generation import Sampling, generate  # noqa: E402
from candlejax.models import llama  # noqa: E402
from candlejax.nn import VarBuilder  # noqa: E402

BASE = dict(
    vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
)  # fmt: skip
CASES = {
    "gqa": dict(tie_word_embeddings=False),
    "tied_llama3": dict(
        tie_word_embeddings=True, num_key_value_heads=1, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32},
    ),
    "mha_sharded": dict(num_key_value_heads=4, head_dim=32, attention_bias=True),
}


def _save(tmp_path_factory, name: str, shard: bool):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**{**BASE, **CASES[name]})
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms
        for n, p in hf.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in n else 0.1 * torch.randn_like(p))
    d = tmp_path_factory.mktemp(name)
    hf.save_pretrained(d, safe_serialization=True, max_shard_size="40KB" if shard else "1GB")
    return hf, d


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Each case's (name, hf model, our model, folder), built once per module on first use."""
    cache: dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in cache:
            hf, d = _save(tmp_path_factory, name, shard=name == "mha_sharded")
            cache[name] = (name, hf, llama.Llama.from_pretrained(d, dtype=DType.F32), d)
        return cache[name]

    return get


@pytest.fixture
def pair(request, pairs):
    return pairs(request.param)


def _hf_logits(hf, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()


def test_config_defaults_and_rope_parameters(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4, "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}}))  # fmt: skip
    c = llama.Config.from_json_file(p)
    assert c.num_key_value_heads == 4 and c.head_dim == 16 and c.rope_theta == 5e5
    assert c.rope_scaling["rope_type"] == "llama3" and c.vocab_size == 32000 and not c.tie_word_embeddings
    # transformers' ACT2FN maps "swish" to the same function as "silu"; others raise
    assert llama.Config.from_dict({"hidden_act": "swish"}).hidden_act == "silu"
    with pytest.raises(errors.Error, match="hidden_act 'gelu'"):
        llama.Config.from_dict({"hidden_act": "gelu"})


@pytest.mark.parametrize("pair", list(CASES), indirect=True)
def test_logits_match_transformers(pair):
    name, hf, model, _ = pair
    ids = np.random.default_rng(1).integers(0, BASE["vocab_size"], (2, 11))
    ours = np.asarray(llama.forward_all(model, jnp.asarray(ids, jnp.uint32)).jax)
    ref = _hf_logits(hf, ids)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)
    if name == "mha_sharded":
        assert model.layers[0].self_attn.q_proj.bias is not None


@pytest.mark.parametrize("pair", ["gqa"], indirect=True)
def test_forward_all_under_jit_and_grad(pair):
    """forward_all builds its cache inside a trace too (a training loss over a llama)."""
    _name, _hf, model, _ = pair
    ids = jnp.asarray(np.random.default_rng(3).integers(0, BASE["vocab_size"], (2, 7)), jnp.uint32)
    eager = np.asarray(llama.forward_all(model, ids).jax)
    np.testing.assert_allclose(np.asarray(jax.jit(llama.forward_all)(model, ids).jax), eager, atol=1e-5, rtol=1e-5)
    grads = jax.grad(lambda p: llama.forward_all(p, ids).jax.astype(jnp.float32).mean())(model)
    g = np.asarray(grads.embed_tokens.weight.jax)
    assert np.isfinite(g).all() and np.abs(g).max() > 0
    # more positions than the rotary tables hold (Candle's cos.narrow(0, index_pos, seq_len) fails): the
    # length is a shape, checked under jit too (ran on clamped tables there)
    long = jnp.zeros((1, model.max_position_embeddings + 1), jnp.uint32)
    for fn in (llama.forward_all, jax.jit(llama.forward_all)):
        with pytest.raises(errors.Msg, match="exceed max_position_embeddings"):
            fn(model, long)


@pytest.mark.parametrize("pair", ["gqa", "tied_llama3"], indirect=True)
def test_incremental_decode_matches_full_forward(pair):
    name, _hf, model, _ = pair
    ids = np.random.default_rng(2).integers(0, BASE["vocab_size"], (1, 9))
    full = np.asarray(llama.forward_all(model, jnp.asarray(ids, jnp.uint32)).jax)[0]
    traces = []

    def counted(params, cache, tokens, pos):
        traces.append(tokens.shape)
        return llama.step(params, cache, tokens, pos)

    step = jax.jit(counted, donate_argnums=1)
    cache = model.new_cache(1, 16)
    logits, cache = step(model, cache, jnp.asarray(ids[:, :5], jnp.uint32), jnp.int32(0))
    np.testing.assert_allclose(np.asarray(logits)[0], full[4], atol=1e-4, rtol=1e-4)
    for p in range(5, 9):
        logits, cache = step(model, cache, jnp.asarray(ids[:, p : p + 1], jnp.uint32), jnp.int32(p))
        np.testing.assert_allclose(np.asarray(logits)[0], full[p], atol=1e-4, rtol=1e-4)
    assert traces == [(1, 5), (1, 1)]  # the prompt, then one compiled decode step for every position
    if name != "gqa":
        return
    # the stateful Candle-style forward keeps its cache between calls
    out = model.forward(ids[:, :5], 0)
    np.testing.assert_allclose(np.asarray(out.jax)[0], full[4], atol=1e-4, rtol=1e-4)
    for p in range(5, 9):
        out = model.forward(ids[:, p : p + 1], p)
    np.testing.assert_allclose(np.asarray(out.jax)[0], full[8], atol=1e-4, rtol=1e-4)
    again = model.forward(ids[:, :3], 0)  # index_pos 0 starts a new sequence
    np.testing.assert_allclose(np.asarray(again.jax)[0], full[2], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pair", ["gqa"], indirect=True)
def test_candles_example_loop_with_its_cache(pair):
    """Candle's llama example: ``let mut cache = Cache::new(use_kv_cache, dtype, &config, &device)``,
    then ``llama.forward(&input, context_index, &mut cache)``: the whole prompt first, then one token
    at its position with the KV cache, or the whole context at 0 without it. Greedy tokens and logits
    equal transformers'."""
    _name, hf, model, folder = pair
    config = llama.LlamaConfig.from_json_file(folder / "config.json").into_config(False)
    assert config == model.config
    prompt = [int(i) for i in np.random.default_rng(4).integers(0, BASE["vocab_size"], 6)]
    runs = {}
    for use_kv_cache in (True, False):
        cache = llama.Cache.new(use_kv_cache, DType.F32, config, Device.Cpu)
        tokens, index_pos = list(prompt), 0
        for index in range(5):
            context_size = 1 if use_kv_cache and index > 0 else len(tokens)
            context_index = index_pos if use_kv_cache and index > 0 else 0
            ctxt = tokens[len(tokens) - context_size :]
            logits = model.forward(np.array([ctxt], np.uint32), context_index, cache)
            want = _hf_logits(hf, np.array([tokens]))[0, -1]
            np.testing.assert_allclose(np.asarray(logits.jax)[0], want, atol=1e-4, rtol=1e-4)
            index_pos += len(ctxt)
            tokens.append(int(np.argmax(np.asarray(logits.jax)[0])))
        runs[use_kv_cache] = tokens
        assert (cache.cache is not None) == use_kv_cache  # only the KV-cache run keeps anything
    assert runs[True] == runs[False]
    assert model.forward(np.array([prompt], np.uint32), 0) is not None  # the model's own cache is separate
    with pytest.raises(llama.errors.Error, match="whole sequence at index_pos 0"):
        model.forward(np.array([[1]], np.uint32), 3, llama.Cache.new(False, DType.F32, model.config, Device.Cpu))
    with pytest.raises(llama.errors.Error, match=r"model.step\(cache, tokens, pos\)"):
        model.forward(np.array([[1]], np.uint32), 0, model.new_cache(1, 8))
    with pytest.raises(llama.errors.Error, match="use_kv_cache must be a bool"):
        llama.ForwardCache(1, DType.F32, model.config)


@pytest.mark.parametrize("pair", ["gqa"], indirect=True)
def test_stateful_forward_under_jit_keeps_no_tracer(pair):
    """``jax.jit`` over a closure calling ``model.forward(ids, 0)`` (or ``forward_input_embed``, or
    with Candle's ``Cache``) gives transformers' logits and keeps nothing from the trace: the next
    eager call raised JAX's UnexpectedTracerError (a tracer kept as the KV cache); now a continuation
    names the empty cache and a new sequence runs."""
    _name, hf, model, _ = pair
    ids = np.random.default_rng(5).integers(0, BASE["vocab_size"], (2, 6))
    ref = _hf_logits(hf, ids)
    caches = {"model": None, "candle": llama.Cache.new(True, DType.F32, model.config, Device.Cpu)}
    for name, cache in caches.items():
        fwds = (lambda x, c=cache: model.forward(x, 0, c),
                lambda x, c=cache: model.forward_input_embed(model.embed(x), 0, c))  # fmt: skip
        for fwd in fwds:
            got = jax.jit(fwd)(Tensor.new(ids[:, :5].astype(np.uint32)))
            np.testing.assert_allclose(np.asarray(got.jax), ref[:, 4], atol=1e-4, rtol=1e-4, err_msg=name)
            with pytest.raises(errors.Msg, match="holds 0 positions, x starts at index_pos 5"):
                model.forward(ids[:, 5:].astype(np.uint32), 5, cache)
        model.forward(ids[:, :5].astype(np.uint32), 0, cache)
        got = model.forward(ids[:, 5:].astype(np.uint32), 5, cache)
        np.testing.assert_allclose(np.asarray(got.jax), ref[:, 5], atol=1e-4, rtol=1e-4, err_msg=name)


@pytest.mark.parametrize("pair", ["gqa"], indirect=True)
def test_stateful_forward_runs_prompts_in_chunks(pair, jax_compiles):
    """Candle's loop: ``forward(prompt, 0)`` for prompts of 17-45 tokens compiles one 32-token
    program; the logits equal the full forward's last row and decoding continues correctly."""
    _name, _hf, model, _ = pair
    rng = np.random.default_rng(9)
    for i, n in enumerate((17, 23, 45, 30)):
        ids = rng.integers(0, BASE["vocab_size"], (1, n + 1))
        full = np.asarray(llama.forward_all(model, jnp.asarray(ids, jnp.uint32)).jax)[0]
        jax_compiles.clear()
        out = model.forward(ids[:, :n], 0)
        np.testing.assert_allclose(np.asarray(out.jax)[0], full[n - 1], atol=1e-4, rtol=1e-4)
        if i > 0:
            assert not [c for c in jax_compiles if "step" in c], jax_compiles
        nxt = model.forward(ids[:, n:], n)  # the next token overwrites the padding's slot
        np.testing.assert_allclose(np.asarray(nxt.jax)[0], full[n], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pair", ["gqa"], indirect=True)
def test_greedy_generation_matches_transformers(pair):
    _name, hf, model, _ = pair
    prompt = [5, 17, 3, 42]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(prompt):].tolist()  # fmt: skip
    ours = list(generate(llama.step, model, model.new_cache(1, 32), prompt, 8, Sampling.ArgMax()))
    assert ours == ref
    # the model's bound step with the model as params (as the package's sketch wrote it) is the same step
    assert list(generate(model.step, model, model.new_cache(1, 32), prompt, 8, Sampling.ArgMax())) == ref


@pytest.mark.parametrize("pair", ["gqa"], indirect=True)
def test_generation_compiles_only_its_step_programs(pair, jax_compiles):
    """Every XLA:CPU executable keeps ~3 MiB of the process: a generation (cache, prompt, key,
    penalty window, scalars) compiles its prefill and decode programs and nothing else."""
    _name, _hf, model, _ = pair

    def step_once(params, cache, tokens, pos, last=None):  # a fresh function: nothing cached from other tests
        return llama.step(params, cache, tokens, pos, last)

    jax.clear_caches()  # the eager helpers a generation might compile may be cached by earlier tests
    jax_compiles.clear()
    g = generate(step_once, model, model.new_cache(1, 48), [5, 17, 3, 42, 9], 4, Sampling.ArgMax(),
                 repeat_penalty=1.1)  # fmt: skip
    assert len(list(g)) == 4
    names = [c.split(" with ")[0] for c in jax_compiles]
    assert len(names) == 2 and all(n.startswith("Compiling jit(fused") for n in names), names


@pytest.mark.parametrize("pair", ["gqa"], indirect=True)
def test_chunked_prefill_matches_transformers_and_compiles_once(pair):
    """Prompts of any length run as 32-token prefill chunks (padded, causally masked); greedy tokens
    equal transformers', also when a second chat turn continues the cache after a padded prefill."""
    _name, hf, model, _ = pair
    rng = np.random.default_rng(5)
    shapes = []

    def counted(params, cache, tokens, pos, last=None):
        shapes.append(tuple(tokens.shape))
        return llama.step(params, cache, tokens, pos, last)

    def ref(ids, n):
        x = torch.tensor([ids])
        with torch.no_grad():  # an explicit mask: a prompt may hold id 0, the pad id
            out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                              eos_token_id=None, pad_token_id=0)  # fmt: skip
        return out[0, len(ids):].tolist()

    for n in (17, 20, 23, 45):  # 45: two chunks of 32
        prompt = rng.integers(0, BASE["vocab_size"], n).tolist()
        g = generate(counted, model, model.new_cache(1, 64), prompt, 6, Sampling.ArgMax())
        assert list(g) == ref(prompt, 6)
        assert g.prefill_length == (32 if n < 32 else 64) and g.pos == n + 5
    assert shapes == [(1, 32), (1, 1)]  # one padded prefill and one decode step for all the prompts
    # a second turn continues the cache whose slots after the first prompt held padding
    p1 = rng.integers(0, BASE["vocab_size"], 18).tolist()
    g1 = generate(counted, model, model.new_cache(1, 96), p1, 4, Sampling.ArgMax())
    out1 = list(g1)
    p2 = rng.integers(0, BASE["vocab_size"], 9).tolist()
    g2 = generate(counted, model, g1.cache, g1.continuation(p2), 5, Sampling.ArgMax(), start_pos=g1.pos)
    assert g2.prefill_length == 32
    assert list(g2) == ref([*p1, *out1, *p2], 5)
    # the padding must fit the cache: an exact-length prefill otherwise; off on request
    assert generate(llama.step, model, model.new_cache(1, 30), p1, 2).prefill_length == 18
    assert generate(llama.step, model, model.new_cache(1, 64), p1, 2, prefill_buckets=False).prefill_length == 18


@pytest.mark.parametrize("pair", ["tied_llama3"], indirect=True)
def test_bf16_load_runs(pair):
    _name, hf, _, d = pair
    m16 = llama.Llama.from_pretrained(d, dtype=DType.BF16)
    assert m16.dtype == DType.BF16
    ids = np.arange(7)[None] % BASE["vocab_size"]
    got = np.asarray(llama.forward_all(m16, jnp.asarray(ids, jnp.uint32)).jax)
    ref = _hf_logits(hf, ids)
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


@pytest.mark.parametrize("pair", ["gqa"], indirect=True)
def test_varbuilder_load_names(pair):
    _name, _, _model, d = pair
    vb = VarBuilder.from_mmaped_safetensors([str(d / "model.safetensors")], DType.F32, Device.Cpu)
    m = llama.Llama.load(vb, llama.Config.from_json_file(d / "config.json"))
    names = m.named_vars()
    assert "model.layers.1.self_attn.k_proj.weight" in names and "lm_head.weight" in names
    assert names["model.layers.1.self_attn.k_proj.weight"].shape == (2 * 16, 64)


# ------------------------------------------------------------------------------------------------
# Mistral (sliding window) and Qwen2 (q/k/v biases, per-layer sliding windows) through llama.Llama
# ------------------------------------------------------------------------------------------------
FAMILIES = {
    "mistral": lambda: transformers.MistralForCausalLM(transformers.MistralConfig(
        **BASE, sliding_window=4, head_dim=16, attn_implementation="eager")),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **BASE, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, use_sliding_window=True,
        sliding_window=5, max_window_layers=1, tie_word_embeddings=True, attn_implementation="eager")),
}  # fmt: skip


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    cache: dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in cache:
            torch.manual_seed(1)
            hf = FAMILIES[name]().eval()
            with torch.no_grad():
                for n, p in hf.named_parameters():
                    if n.endswith("bias"):
                        p.copy_(0.5 * torch.randn_like(p))
            d = tmp_path_factory.mktemp(name)
            hf.save_pretrained(d, safe_serialization=True)
            cache[name] = (hf, llama.Llama.from_pretrained(d, dtype=DType.F32), d)
        return cache[name]

    return get


@pytest.mark.parametrize("family", list(FAMILIES))
def test_mistral_and_qwen2_match_transformers(families, family):
    hf, model, _ = families(family)
    if family == "qwen2":
        assert model.layers[0].self_attn.q_proj.bias is not None and model.layers[0].self_attn.o_proj.bias is None
        assert [b.self_attn.window for b in model.layers] == [None, 5]
    else:
        assert [b.self_attn.window for b in model.layers] == [4, 4]
    ids = np.random.default_rng(5).integers(0, BASE["vocab_size"], (2, 12))
    ours = np.asarray(llama.forward_all(model, jnp.asarray(ids, jnp.uint32)).jax)
    np.testing.assert_allclose(ours, _hf_logits(hf, ids), atol=1e-4, rtol=1e-4)
    prompt = [5, 17, 3, 42, 7, 9]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(prompt):].tolist()  # fmt: skip
    assert list(model.generate(prompt, 10, Sampling.ArgMax(), eos_token_id=[])) == ref


def test_unread_tensors_and_foreign_model_type_raise(families, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    from candlejax import errors

    _, _, d = families("qwen2")
    cfg = json.loads((d / "config.json").read_text())
    # the qwen2 checkpoint read as a plain llama config: its q/k/v biases would be dropped
    as_llama = {**cfg, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    vb = VarBuilder.from_mmaped_safetensors([str(d / "model.safetensors")], DType.F32, Device.Cpu)
    with pytest.raises(errors.Error, match=r"never read: .*q_proj\.bias"):
        llama.Llama.load(vb, llama.Config.from_dict({**as_llama, "qkv_bias": False}))
    with pytest.warns(UserWarning, match="never read"):
        llama.Llama.load(VarBuilder.from_mmaped_safetensors([str(d / "model.safetensors")], DType.F32, Device.Cpu),
                         llama.Config.from_dict({**as_llama, "qkv_bias": False}), strict=False)  # fmt: skip
    for bad in ({"model_type": "gemma"}, {"architectures": ["GemmaForCausalLM"]}):
        with pytest.raises(errors.Error, match="not implemented; supported: llama"):
            llama.Llama.load(vb, llama.Config.from_dict({**cfg, **bad}))
    extra = tmp_path / "extra"
    shutil.copytree(d, extra)
    t = load_file(str(extra / "model.safetensors"))
    t["model.layers.0.self_attn.q_norm.weight"] = np.ones(16, np.float32)
    save_file(t, str(extra / "model.safetensors"))
    with pytest.raises(errors.Error, match="q_norm"):
        llama.Llama.from_pretrained(extra)


def test_positions_and_cache_limits(pairs):
    from candlejax import errors

    _name, _hf, model, _ = pairs("gqa")
    ids = np.array([[5, 6, 7]], np.uint32)
    with pytest.raises(errors.Error, match="index_pos must be >= 0"):
        model.forward(ids, -5)
    with pytest.raises(errors.Error, match="exceed max_position_embeddings 128"):
        model.forward(ids, 126)
    with pytest.raises(errors.Error, match="exceed max_position_embeddings"):
        llama.forward_all(model, np.zeros((1, 129), np.uint32))
    with pytest.raises(errors.Error, match=r"vocab|index"):
        model.forward(np.array([[BASE["vocab_size"]]]), 0)
    # a cache too small for the generation stops instead of wrapping around
    prompt = list(range(1, 22))
    full = list(model.generate(prompt, 40, Sampling.ArgMax(), eos_token_id=[]))
    gen = generate(llama.step, model, model.new_cache(1, 32), prompt, 40, Sampling.ArgMax())
    got = list(gen)
    assert gen.finish_reason == "cache_full" and got == full[: len(got)] and len(got) == 32 - len(prompt) + 1
    gen = model.generate(prompt, 40, Sampling.ArgMax(), eos_token_id=[], max_seq_len=24)
    assert len(list(gen)) == 4 and gen.finish_reason == "cache_full"
    with pytest.raises(errors.Error, match="does not fit the cache"):
        generate(llama.step, model, model.new_cache(1, 16), prompt, 4, Sampling.ArgMax())
    with pytest.raises(errors.Error, match="exceed max_position_embeddings"):
        model.generate(list(range(130)), 4)
    with pytest.raises(errors.InvalidArgument, match=r"prompt is text.*tokenizer\.encode"):  # not its characters
        model.generate("hello", 4)
    # a cache larger than the model's positions: generation stops at max_position_embeddings (128)
    gen = generate(llama.step, model, model.new_cache(1, 300), prompt, 200, Sampling.ArgMax())
    assert len(list(gen)) == 128 - len(prompt) + 1 and gen.finish_reason == "cache_full"
    with pytest.raises(errors.Error, match="does not fit the model's max_position_embeddings of 128"):
        generate(llama.step, model, model.new_cache(1, 300), [1 + i % 90 for i in range(129)], 4, Sampling.ArgMax())


def test_bad_prompt_ids_and_sequence_jumps_raise(pairs):
    """Ids past the vocabulary, negative or fractional ids, a stateful ``forward`` that skips
    positions or changes the batch mid-sequence: each raises (they used to be clamped, truncated or
    to attend to stale cache slots)."""
    from candlejax import errors

    _name, _hf, model, _ = pairs("gqa")
    vocab = BASE["vocab_size"]
    for bad, kind in (([1, vocab], errors.InvalidIndex), ([1, -1], errors.InvalidIndex),
                      ([1.9, 2.5], errors.UnexpectedDType)):  # fmt: skip
        with pytest.raises(kind):
            list(generate(llama.step, model, model.new_cache(1, 32), bad, 3, Sampling.ArgMax()))
        with pytest.raises(kind):
            list(model.generate(bad, 3))
    with pytest.raises(errors.UnexpectedDType):
        model.forward(np.array([[1.7, 2.2]]), 0)
    with pytest.raises(errors.DTypeMismatchBinaryOp, match="new_cache"):  # refused when written, before
        model.new_cache(1, 16, DType.BF16)
    for index_pos in (3.9, True):  # Candle's usize: not truncated (3.9 ran at position 3)
        with pytest.raises(errors.NotAnInteger, match="index_pos"):
            model.forward(np.array([[9]]), index_pos)
    model.reset()
    model.forward(np.array([[5, 6, 7]]), 0)
    with pytest.raises(errors.Error, match="holds 3 positions, x starts at index_pos 40"):
        model.forward(np.array([[9]]), 40)
    with pytest.raises(errors.Error, match="holds batch 1, x has batch 2"):
        model.forward(np.array([[9], [9]]), 3)
    with pytest.raises(errors.ArgumentType, match=r"llama\.Cache\.new\(True, dtype, config, device\)"):
        llama.Cache(True, DType.F32, model.config, Device.Cpu)  # Candle's Cache::new arguments to the class
    cache = llama.Cache.new(True, DType.F32, model.config, Device.Cpu)
    with pytest.raises(errors.Error, match="holds 0 positions"):
        model.forward(np.array([[9]]), 2, cache)
    # continuing at the held position, rewinding into it and starting over stay allowed
    model.forward(np.array([[9]]), 3)
    model.forward(np.array([[8]]), 2)
    model.forward(np.array([[9], [9]]), 0)


def test_token_ids_of_the_wrong_rank_raise_in_step_and_forward_all(pairs):
    """``step`` and ``forward_all`` take ids ``(B, T)`` (or one ``(T,)`` sequence), as ``forward`` does
    (Candle's ``x.dims2()``): other ranks raised Python's unpacking / tuple-index errors, a list an
    AttributeError."""
    _name, _hf, model, _ = pairs("gqa")
    for bad in (np.array([[[5, 6, 7]]], np.uint32), np.array(5, np.uint32)):
        with pytest.raises(errors.UnexpectedNumberOfDims, match=r"llama step: token ids \(batch, seq\)"):
            llama.step(model, model.new_cache(1, 16), bad, 0)
        with pytest.raises(errors.UnexpectedNumberOfDims, match=r"token ids \(batch, seq\)"):
            llama.forward_all(model, bad)
    ids = [[5, 6, 7]]
    np.testing.assert_allclose(np.asarray(llama.forward_all(model, ids).numpy()),
                               _hf_logits(_hf, np.array(ids)), atol=1e-4, rtol=1e-4)  # fmt: skip
    # prompts of different lengths (no padding mask here) are named: numpy's inhomogeneous-shape ValueError
    for run in (lambda t: llama.forward_all(model, t), lambda t: model.forward(t, 0), model.embed):
        with pytest.raises(errors.Error, match=r"llama token ids: rows of different lengths \[3, 2\]"):
            run([[5, 6, 7], [5, 6]])


def test_candles_config_presets_and_rope_types(tmp_path):
    """``Config::config_7b_v1/v2`` as in Candle's llama.rs; ``Llama3RopeConfig`` / ``Llama3RopeType`` read
    from a config.json and given directly, with the inverse frequencies of Candle's formula."""
    v1, v2 = llama.Config.config_7b_v1(False), llama.Config.config_7b_v2(True)
    for c in (v1, v2):
        assert (c.hidden_size, c.intermediate_size, c.vocab_size, c.num_hidden_layers) == (4096, 11008, 32000, 32)
        assert (c.num_attention_heads, c.num_key_value_heads, c.rope_theta) == (32, 32, 10000.0)
        assert c.max_position_embeddings == llama.DEFAULT_MAX_SEQ_LEN == 4096 and not c.tie_word_embeddings
        assert c.bos_token_id is None and c.eos_token_id is None and c.rope_scaling is None
    assert (v1.rms_norm_eps, v2.rms_norm_eps) == (1e-6, 1e-5)

    sc = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}  # fmt: skip
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 2, "rope_theta": 5e5, "rope_scaling": sc}))
    c = llama.LlamaConfig.from_json_file(p).into_config(False)
    r = c.rope_scaling
    assert isinstance(r, llama.Llama3RopeConfig) and r == sc and json.loads(json.dumps(r)) == sc
    assert r.rope_type is llama.Llama3RopeType.Llama3 and r.rope_type == "llama3"
    assert (r.factor, r.low_freq_factor, r.high_freq_factor, r.original_max_position_embeddings) == (8.0, 1.0, 4.0, 64)
    given = llama.Config(hidden_size=64, num_attention_heads=2, rope_theta=5e5, rope_scaling=llama.Llama3RopeConfig(
        8.0, 1.0, 4.0, 64, llama.Llama3RopeType.Llama3))  # fmt: skip
    assert given == c and hash(given) == hash(c)

    def candle_inv_freq(cfg, scaling):  # llama.rs: calculate_default_inv_freq, then the llama3 smoothing
        hd = cfg.hidden_size // cfg.num_attention_heads
        out = []
        for i in range(0, hd, 2):
            f = 1.0 / cfg.rope_theta ** (i / hd)
            if scaling is not None and scaling.rope_type is llama.Llama3RopeType.Llama3:
                lo = scaling.original_max_position_embeddings / scaling.low_freq_factor
                hi = scaling.original_max_position_embeddings / scaling.high_freq_factor
                w = 2 * np.pi / f
                if w > lo:
                    f = f / scaling.factor
                elif w >= hi:
                    s = (scaling.original_max_position_embeddings / w - scaling.low_freq_factor) / (
                        scaling.high_freq_factor - scaling.low_freq_factor)
                    f = (1 - s) * f / scaling.factor + s * f
            out.append(f)
        return np.array(out)

    np.testing.assert_allclose(llama.rope_inv_freq(c), candle_inv_freq(c, r), rtol=1e-6)
    default = llama.Config(hidden_size=64, num_attention_heads=2, rope_scaling=llama.Llama3RopeConfig(
        8.0, 1.0, 4.0, 64))  # Llama3RopeType.Default (Candle's default): no scaling  # fmt: skip
    assert default.rope_scaling.rope_type is llama.Llama3RopeType.Default
    np.testing.assert_allclose(llama.rope_inv_freq(default), candle_inv_freq(default, None), rtol=1e-6)
    linear = llama.Config(hidden_size=64, num_attention_heads=2, rope_scaling={"rope_type": "linear", "factor": 2.0})
    assert type(linear.rope_scaling) is dict  # Candle has no type for it; kept as read
    with pytest.raises(llama.errors.Error, match="lacks"):
        llama.Llama3RopeConfig.from_dict({"rope_type": "llama3", "factor": 8.0})


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_theta": 1000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}},
        {"rope_theta": 1000.0, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}},
        {"rope_scaling": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}},
        {"rope_theta": 7.0, "rope_scaling": {"type": "linear", "factor": 2.0},
         "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}},
        {"rope_theta": 1000.0, "rope_parameters": {"rope_type": "default"}},
    ],
)
def test_rope_theta_is_read_where_transformers_reads_it(tmp_path, rope):
    """transformers 5 takes rope_theta from rope_parameters (or a given rope_scaling, which replaces
    rope_parameters) before the top-level key; the top-level rope_theta won here."""
    cfg = {"model_type": "llama", **BASE, **rope}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    hf_cfg = transformers.AutoConfig.from_pretrained(tmp_path)
    ref = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(hf_cfg).inv_freq.numpy()
    np.testing.assert_allclose(llama.rope_inv_freq(llama.Config.from_json_file(tmp_path / "config.json")), ref,
                               rtol=1e-6)  # fmt: skip


@pytest.mark.parametrize("pair", ["tied_llama3"], indirect=True)
def test_embed_and_forward_input_embed_match_transformers(pair):
    """``embed(x)`` is the embedding table's rows; ``forward_input_embed`` equals transformers'
    ``inputs_embeds`` forward and shares its cache with ``forward`` (embeddings, then ids)."""
    _name, hf, model, _ = pair
    ids = np.random.default_rng(7).integers(0, BASE["vocab_size"], (2, 7))
    emb = model.embed(ids.astype(np.uint32))
    with torch.no_grad():
        ref_emb = hf.model.embed_tokens(torch.tensor(ids)).numpy()
    np.testing.assert_array_equal(np.asarray(emb.jax), ref_emb)
    e = ref_emb.copy()
    e[:, 2] *= 0.5  # spliced-in features: not the embedding of any id
    cache = llama.Cache.new(True, DType.F32, model.config, Device.Cpu)
    got = model.forward_input_embed(e[:, :5], 0, cache)
    with torch.no_grad():
        ref = hf(inputs_embeds=torch.tensor(e)).logits.numpy()
    np.testing.assert_allclose(np.asarray(got.jax), ref[:, 4], atol=1e-4, rtol=1e-4)
    got = model.forward_input_embed(e[:, 5:6], 5, cache)
    np.testing.assert_allclose(np.asarray(got.jax), ref[:, 5], atol=1e-4, rtol=1e-4)
    nxt = model.forward(ids[:, 6:7].astype(np.uint32), 6, cache)  # ids continue the embeddings' sequence
    np.testing.assert_allclose(np.asarray(nxt.jax), ref[:, 6], atol=1e-4, rtol=1e-4)
    with pytest.raises(llama.errors.Error, match="input_embed must be"):
        model.forward_input_embed(e[0], 0)
    with pytest.raises(llama.errors.Error, match="max_position_embeddings"):
        model.forward_input_embed(e, BASE["max_position_embeddings"] - 2)


@pytest.mark.parametrize("pair", ["gqa"], indirect=True)
def test_stateful_forward_of_traced_ids_under_jit(pair):
    """``jax.jit(lambda m, x: m.forward(x, 0))`` with a multi-token prompt runs it as one program
    (the eager path splits prompts into host-made chunks, which traced ids cannot feed)."""
    _name, _hf, model, _ = pair
    ids = jnp.asarray(np.random.default_rng(4).integers(0, BASE["vocab_size"], (2, 7)), jnp.uint32)
    full = np.asarray(llama.forward_all(model, ids).jax)[:, -1]
    got = jax.jit(lambda m, x: m.forward(x, 0))(model, ids)
    np.testing.assert_allclose(np.asarray(got.jax), full, atol=1e-4, rtol=1e-4)


def test_llama_config_num_key_value_heads_method_and_tied_default():
    """Candle's ``LlamaConfig::num_key_value_heads()`` (the key, else ``num_attention_heads``) and
    ``into_config``'s ``tie_word_embeddings.unwrap_or(false)`` (candle-transformers' llama.rs); the
    field still reads as the int."""
    import dataclasses

    base = {"hidden_size": 64, "num_attention_heads": 4, "tie_word_embeddings": None}
    c = llama.LlamaConfig.from_dict(base)
    assert c.num_key_value_heads() == 4 and c.into_config(False).tie_word_embeddings is False
    c = llama.LlamaConfig.from_dict({**base, "num_key_value_heads": 2})
    assert c.num_key_value_heads() == 2 and c.num_key_value_heads == 2
    assert c.into_config(False).num_key_value_heads == 2 and repr(c.num_key_value_heads) == "2"
    assert json.loads(json.dumps(dataclasses.asdict(c)))["num_key_value_heads"] == 2
    assert c == llama.Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize("pair", ["gqa"], indirect=True)
def test_generate_stops_at_generation_config_eos_as_transformers(pair, tmp_path):
    """``generation_config.json``'s ``eos_token_id`` (a list, as Llama-3-Instruct's ``[<|end_of_text|>,
    <|eot_id|>]`` beside a single id in ``config.json``) is what transformers' ``generate`` stops at."""
    import shutil

    _name, _hf, _model, d = pair
    shutil.copytree(d, tmp_path, dirs_exist_ok=True)
    prompt = [5, 17, 3, 42]
    free = list(generate(llama.step, _model, _model.new_cache(1, 64), prompt, 12, Sampling.ArgMax()))
    stop = free[4]
    unused = next(t for t in range(BASE["vocab_size"]) if t not in free)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "eos_token_id": unused}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [unused, stop]}))
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    x = torch.tensor([prompt])
    with torch.no_grad():
        ref = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False,
                          pad_token_id=0)[0, len(prompt):].tolist()  # fmt: skip
    assert ref == free[: free.index(stop) + 1]  # transformers yields the EOS
    model = llama.Llama.from_pretrained(tmp_path, dtype=DType.F32)
    g = model.generate(prompt, 12, Sampling.ArgMax())
    assert list(g) == ref[:-1] and g.finish_reason == "eos"
    assert model.generation_eos_token_ids == (unused, stop)
    from candlejax.pipelines.text_generation import TextGeneration

    assert TextGeneration(model, None, eos_token_ids=[]).eos_token_ids == [unused, stop]
    # without generation_config.json: config.json's eos
    (tmp_path / "generation_config.json").unlink()
    model = llama.Llama.from_pretrained(tmp_path, dtype=DType.F32)
    assert model.generation_eos_token_ids is None and len(list(model.generate(prompt, 12))) == 12


@pytest.mark.parametrize("pair", ["gqa"], indirect=True)
def test_generate_sizes_its_cache_for_a_batch_of_one_prompt(pair, tmp_path):
    """``Llama.generate`` takes the prompt as ``generate`` does (a list, or ``(S,)`` / ``(1, S)``
    arrays and Tensors): a ``(1, S)`` prompt gets a cache for its S tokens plus the new ones, not
    for one token (the generation then stopped early with ``"cache_full"``)."""
    import shutil

    from candlejax import Tensor

    _name, hf, _model, d = pair
    shutil.copytree(d, tmp_path, dirs_exist_ok=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 512}))
    model = llama.Llama.from_pretrained(tmp_path, dtype=DType.F32)
    prompt = np.random.default_rng(7).integers(0, BASE["vocab_size"], 100).tolist()
    x = torch.tensor([prompt])
    with torch.no_grad():
        ref = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=40, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()  # fmt: skip
    for given in (prompt, np.array([prompt]), jnp.asarray([prompt], jnp.uint32),
                  Tensor.new(np.array([prompt], np.uint32), Device.Cpu)):  # fmt: skip
        g = model.generate(given, 40, Sampling.ArgMax(), eos_token_id=[])
        assert list(g) == ref and g.finish_reason == "length", type(given)
    # a fresh cache holds nothing before start_pos: its empty slots were attended to silently
    with pytest.raises(errors.Error, match="start_pos"):
        model.generate(prompt, 4, start_pos=7)
    with pytest.raises(errors.Error, match="max_seq_len"):  # 0 was read as "no cap" (falsy)
        model.generate(prompt, 4, max_seq_len=0)
