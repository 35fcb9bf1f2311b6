"""``quantized_llama.ModelWeights.from_gguf`` validates GGUF metadata against the tensor shapes
before allocating anything: every corrupt file raises a candlejax error naming the file and the
key or tensor (never a raw TypeError / JAX error, NaN logits, a hang or a giant allocation).

The files are tiny F32 GGUFs written with ``candlejax.io.gguf.write``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from candlejax import Device, errors
from candlejax.io import gguf
from candlejax.models import llama, quantized_llama
from candlejax.tokenizer import Tokenizer

HIDDEN, HEADS, KV, FF, LAYERS = 16, 4, 2, 24, 2
HEAD_DIM = HIDDEN // HEADS
#: a byte-level BPE vocabulary with two merges (a b -> ab, ab c -> abc)
TOKENS = ["a", "b", "c", "d", "ab", "abc", "Ġ", "<s>", "</s>", *[f"t{i}" for i in range(7)]]
VOCAB = len(TOKENS)


def _meta(**override):
    """Metadata of a tiny llama; ``override`` keys use ``__`` for ``.``, ``None`` drops the key."""
    base = {
        "general.architecture": "llama",
        "llama.block_count": LAYERS,
        "llama.embedding_length": HIDDEN,
        "llama.feed_forward_length": FF,
        "llama.attention.head_count": HEADS,
        "llama.attention.head_count_kv": KV,
        "llama.rope.dimension_count": HEAD_DIM,
        "llama.rope.freq_base": 10000.0,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.context_length": 64,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": TOKENS,
        "tokenizer.ggml.merges": ["a b", "ab c"],
        "tokenizer.ggml.bos_token_id": 7,
        "tokenizer.ggml.eos_token_id": 8,
    }
    for k, v in override.items():
        k = k.replace("__", ".")
        if v is None:
            base.pop(k, None)
        else:
            base[k] = v
    return base


def _tensors(layers=LAYERS, hidden=HIDDEN, heads=HEADS, kv=KV, ff=FF, vocab=VOCAB):
    rng = np.random.default_rng(0)
    hd = hidden // heads

    def w(*shape):
        return (0.2 * rng.standard_normal(shape)).astype(np.float32)

    t = {"token_embd.weight": w(vocab, hidden), "output_norm.weight": np.ones(hidden, np.float32)}
    for i in range(layers):
        b = f"blk.{i}."
        t.update(
            {
                b + "attn_norm.weight": np.ones(hidden, np.float32),
                b + "ffn_norm.weight": np.ones(hidden, np.float32),
                b + "attn_q.weight": w(heads * hd, hidden),
                b + "attn_k.weight": w(kv * hd, hidden),
                b + "attn_v.weight": w(kv * hd, hidden),
                b + "attn_output.weight": w(hidden, heads * hd),
                b + "ffn_gate.weight": w(ff, hidden),
                b + "ffn_up.weight": w(ff, hidden),
                b + "ffn_down.weight": w(hidden, ff),
            }
        )
    return t


def _write(tmp_path, meta=None, tensors=None, name="m.gguf"):
    p = tmp_path / name
    gguf.write(str(p), _meta() if meta is None else meta, _tensors() if tensors is None else tensors)
    return p


@pytest.fixture
def no_tensor_reads(monkeypatch):
    """Fail if the loader copies any tensor out of the file (validation comes first)."""

    def boom(self, name):
        raise AssertionError(f"tensor {name} was read before the metadata was validated")

    monkeypatch.setattr(gguf.Content, "tensor_bytes", boom)


def _refused(path, *needles, err=errors.Gguf):
    with pytest.raises(err) as e:
        quantized_llama.ModelWeights.from_gguf(path, Device.Cpu)
    msg = str(e.value)
    assert str(path) in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


# ------------------------------------------------------------------------------------------------
def test_valid_tiny_file_loads_and_runs(tmp_path):
    m = quantized_llama.ModelWeights.from_gguf(_write(tmp_path), Device.Cpu)
    c = m.config
    assert (
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.vocab_size,
        c.max_position_embeddings,
    ) == (LAYERS, HIDDEN, HEADS, KV, HEAD_DIM, VOCAB, 64)
    assert m.tokenizer.encode("abc", add_special_tokens=False) == [TOKENS.index("abc")]
    logits = np.asarray(m.forward(np.array([[0, 4, 5]], np.uint32), 0).jax)
    assert logits.shape == (1, VOCAB) and np.isfinite(logits).all()


def test_candles_argument_order_loads_the_same_model(tmp_path):
    """Candle: ``let ct = gguf_file::Content::read(&mut file)?; ModelWeights::from_gguf(ct, &mut file, &dev)``."""
    path = _write(tmp_path)
    ids = np.array([[0, 4, 5]], np.uint32)
    want = np.asarray(quantized_llama.ModelWeights.from_gguf(path, Device.Cpu).forward(ids, 0).jax)
    with open(path, "rb") as f:
        content = gguf.Content.read(f)
        m = quantized_llama.ModelWeights.from_gguf(content, f, Device.Cpu)
        content.close()
    np.testing.assert_array_equal(np.asarray(m.forward(ids, 0).jax), want)
    with gguf.Content.read(path) as content:
        m = quantized_llama.ModelWeights.from_gguf(content, device=Device.Cpu)
    np.testing.assert_array_equal(np.asarray(m.forward(ids, 0).jax), want)
    with open(path, "rb") as f, pytest.raises(errors.Error, match=r"from_gguf\(gguf.Content.read\(f\), f, device\)"):
        quantized_llama.ModelWeights.from_gguf(f, Device.Cpu)


@pytest.mark.parametrize(
    "key", ["llama.block_count", "llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count"]
)
def test_missing_key(tmp_path, no_tensor_reads, key):
    meta = _meta()
    del meta[key]
    _refused(_write(tmp_path, meta), f"missing metadata key {key!r}", "general.architecture is 'llama'")


def test_key_of_the_wrong_type(tmp_path, no_tensor_reads):
    _refused(_write(tmp_path, _meta(llama__block_count="2")), "'llama.block_count' must be an integer")


@pytest.mark.parametrize(
    "value, needle",
    [
        (2**31, "outside the accepted range"),
        (HEAD_DIM // 2, "differs from the head size 4"),
        (2 * HEAD_DIM, "differs from the head size 4"),
    ],
)
def test_rope_dimension_count_absurd_or_not_the_head_size(tmp_path, no_tensor_reads, value, needle):
    _refused(
        _write(tmp_path, _meta(llama__rope__dimension_count=gguf.Value.u32(value))),
        "'llama.rope.dimension_count'",
        needle,
    )


@pytest.mark.parametrize(
    "value, needle",
    [
        (10**9, "outside the accepted range"),
        (0, "outside the accepted range"),
        (3, "= 3, but the file holds tensors of 2 block(s) (blk.0 .. blk.1)"),
        (1, "= 1, but the file holds tensors of 2 block(s)"),
    ],
)
def test_block_count_absurd_or_not_the_blocks_present(tmp_path, no_tensor_reads, value, needle):
    _refused(_write(tmp_path, _meta(llama__block_count=value)), "'llama.block_count'", needle)


def test_head_count_not_dividing_the_embedding_length(tmp_path, no_tensor_reads):
    _refused(
        _write(tmp_path, _meta(llama__attention__head_count=3, llama__attention__head_count_kv=1)),
        "'llama.attention.head_count' = 3 does not divide 'llama.embedding_length' = 16",
    )


@pytest.mark.parametrize(
    "value, needle",
    [
        (3, "'llama.attention.head_count_kv' = 3 does not divide 'llama.attention.head_count' = 4"),
        (8, "'llama.attention.head_count_kv' = 8 is outside the accepted range"),
        (0, "'llama.attention.head_count_kv' = 0 is outside"),
    ],
)
def test_head_count_kv_not_dividing_head_count(tmp_path, no_tensor_reads, value, needle):
    _refused(_write(tmp_path, _meta(llama__attention__head_count_kv=value)), needle)


@pytest.mark.parametrize(
    "name, shape",
    [
        ("blk.1.attn_k.weight", (HIDDEN, HIDDEN)),
        ("token_embd.weight", (VOCAB, 32)),
        ("blk.0.ffn_down.weight", (FF, HIDDEN)),
        ("output_norm.weight", (8,)),
    ],
)
def test_wrong_shaped_tensor(tmp_path, no_tensor_reads, name, shape):
    t = _tensors()
    t[name] = np.zeros(shape, np.float32)
    _refused(
        _write(tmp_path, tensors=t), f"tensor {name!r} has shape [{', '.join(map(str, shape))}]", "the metadata implies"
    )


def test_missing_tensor(tmp_path, no_tensor_reads):
    t = _tensors()
    del t["blk.1.ffn_up.weight"]
    _refused(_write(tmp_path, tensors=t), "missing tensor 'blk.1.ffn_up.weight' (expected shape [24, 16])")


def test_vocab_size_not_the_embedding_rows(tmp_path, no_tensor_reads):
    _refused(_write(tmp_path, _meta(llama__vocab_size=VOCAB + 5)), "tensor 'token_embd.weight'", "[21, 16]")


def test_more_tokens_than_embedding_rows(tmp_path, no_tensor_reads):
    _refused(
        _write(tmp_path, _meta(tokenizer__ggml__tokens=[*TOKENS, "zz"])),
        "'tokenizer.ggml.tokens' has 17 elements, more than 16",
    )


@pytest.mark.parametrize(
    "value, needle",
    [(0.0, "must be > 0"), (-10000.0, "must be > 0"), (math.nan, "must be finite"), (math.inf, "must be finite")],
)
def test_rope_freq_base_not_positive_or_not_finite(tmp_path, no_tensor_reads, value, needle):
    _refused(_write(tmp_path, _meta(llama__rope__freq_base=gguf.Value.f32(value))), "'llama.rope.freq_base'", needle)


@pytest.mark.parametrize("value", [gguf.Value.u64(2**40), gguf.Value.u32(0)])
def test_context_length_absurd(tmp_path, no_tensor_reads, value):
    _refused(
        _write(tmp_path, _meta(llama__context_length=value)), "'llama.context_length'", "outside the accepted range"
    )


def test_rms_epsilon_and_rope_scaling_checked(tmp_path, no_tensor_reads):
    _refused(
        _write(tmp_path, _meta(llama__attention__layer_norm_rms_epsilon=-1e-5)),
        "'llama.attention.layer_norm_rms_epsilon' must be > 0",
    )
    _refused(
        _write(tmp_path, _meta(llama__rope__scaling__type="yarn")),
        "'llama.rope.scaling.type' is 'yarn'",
        "supported: linear, none",
    )


def _logits(path):
    m = quantized_llama.ModelWeights.from_gguf(path, Device.Cpu)
    ids = np.array([[0, 4, 5, 1, 2, 3, 9, 10, 11, 12, 13, 14]], np.uint32)
    return m.config.rope_scaling, np.asarray(llama.forward_all(m, ids).jax)


def test_rope_scaling_factor_without_a_type_is_linear(tmp_path):
    """llama.cpp reads the type with default "linear" and the factor from ``rope.scaling.factor`` or
    the older ``rope.scale_linear``: a factor alone scales the positions as ``type = linear`` does."""
    lin, ref = _logits(_write(tmp_path, _meta(llama__rope__scaling__type="linear", llama__rope__scaling__factor=4.0)))
    assert lin == {"rope_type": "linear", "factor": 4.0}
    for i, key in enumerate(("llama__rope__scaling__factor", "llama__rope__scale_linear")):
        cfg, got = _logits(_write(tmp_path, _meta(**{key: 4.0}), name=f"f{i}.gguf"))
        assert cfg == lin
        np.testing.assert_array_equal(got, ref)
    none, unscaled = _logits(_write(tmp_path, _meta(llama__rope__scaling__type="none",
                                                    llama__rope__scaling__factor=4.0), name="n.gguf"))  # fmt: skip
    assert none is None and np.abs(unscaled - ref).max() > 1e-3


def test_mixture_of_experts_and_non_causal_files_refused(tmp_path, no_tensor_reads):
    _refused(_write(tmp_path, _meta(llama__expert_count=8)), "'llama.expert_count' = 8", "mixture-of-experts")
    _refused(_write(tmp_path, _meta(llama__attention__causal=False), name="c.gguf"),
             "'llama.attention.causal' is False", "causal attention only")  # fmt: skip


# --- the tokenizer stored in the file -------------------------------------------------------------
@pytest.mark.parametrize(
    "merges, needle",
    [
        (["a b", "a zz"], "tokenizer.ggml.merges[1] = 'a zz' names 'zz'"),
        (["c d"], "tokenizer.ggml.merges[0] = 'c d' names 'cd'"),
        (["ab"], "tokenizer.ggml.merges[0] = 'ab' is not two tokens"),
    ],
)
def test_bad_tokenizer_merge_names_the_file(tmp_path, merges, needle):
    """The tokenizers library raised a bare Exception (or panicked, for a merge whose result is not
    in the vocabulary); the model load now stops with a candlejax error."""
    p = _write(tmp_path, _meta(tokenizer__ggml__merges=merges))
    _refused(p, needle)
    with pytest.raises(errors.Gguf, match=r"tokenizer\.ggml\.merges") as e:
        Tokenizer.from_gguf(p)
    assert str(p) in str(e.value)


def test_tokenizer_metadata_of_the_wrong_type_names_the_file(tmp_path):
    _refused(_write(tmp_path, _meta(tokenizer__ggml__merges=[1, 2])), "tokenizer.ggml.merges[0] = 1")
    _refused(_write(tmp_path, _meta(tokenizer__ggml__model=7)), "'tokenizer.ggml.model' must be a string")


def test_unsupported_tokenizer_model_loads_without_tokenizer(tmp_path):
    p = _write(tmp_path, _meta(tokenizer__ggml__model="bert"))
    with pytest.warns(UserWarning, match=r"tokenizer\.ggml\.model 'bert' is not supported"):
        m = quantized_llama.ModelWeights.from_gguf(p, Device.Cpu)
    with pytest.raises(errors.Error, match=r"has no tokenizer .*'bert' is not supported"):
        m.tokenizer  # noqa: B018
    m = quantized_llama.ModelWeights.from_gguf(
        _write(tmp_path, _meta(tokenizer__ggml__tokens=None, tokenizer__ggml__merges=None), name="n.gguf")
    )
    with pytest.raises(errors.Error, match=r"no tokenizer\.ggml"):
        m.tokenizer  # noqa: B018
