"""models.llama2_c / llama2_c_weights / quantized_llama2_c: a tiny random llama2.c ``.bin`` file
(llama2.c's legacy export layout, with a shared and an unshared classifier) loaded Candle's way
(``Config.from_reader``, ``TransformerWeights.from_reader``, ``var_builder``, ``Cache.new(..,
vb.pp("rot"))``, ``Llama.load``) against transformers' ``LlamaForCausalLM`` (torch CPU, f32) over the
same weights, the q/k rows permuted from llama2.c's interleaved rotary pairs to transformers' halves:
full-sequence logits, token-by-token logits on the KV cache, greedy continuations, recomputation
without a KV cache; truncated / corrupt files; the quantized model over GGUF files (F32, and Q8_0 as
Candle's tensor-tools writes them from the var_builder's names)."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from candlejax import Device, DType, Tensor, errors  # noqa: E402
from candlejax.io import gguf  # noqa: E402
from candlejax.models import llama2_c, llama2_c_weights, quantized_llama2_c  # noqa: E402
from candlejax.models.llama2_c import Cache, Config, Llama  # noqa: E402
from candlejax.models.llama2_c_weights import TransformerWeights  # noqa: E402
from candlejax.nn import VarBuilder  # noqa: E402
from candlejax.quantized import QTensor  # noqa: E402
from candlejax.quantized.ggml_types import GgmlDType  # noqa: E402

CFG = dict(dim=32, hidden_dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, seq_len=32)
ATOL = 1e-4
PROMPT = [[1, 17, 42, 5, 33], [60, 2, 9, 9, 48]]  # a batch of two prompts
NEW = 8


def _freqs(head_size: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """llama2.c's ``precompute_freqs_cis`` (model.py), as its export writes them."""
    freqs = 1.0 / (10000.0 ** (torch.arange(0, head_size, 2)[: head_size // 2].float() / head_size))
    f = torch.outer(torch.arange(seq_len), freqs).float()
    return torch.cos(f).numpy(), torch.sin(f).numpy()


def _random_weights(cfg: Config, seed: int) -> dict[str, np.ndarray]:
    """llama2.c's tensors by its names, random (non-trivial norms), with the true rotary tables."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in llama2_c_weights.tensor_layout(cfg):
        if name.startswith("rms"):
            a = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name == "token_embedding_table":
            a = rng.standard_normal(shape)
        else:  # (.., out, in) linear weights
            a = rng.standard_normal(shape) / np.sqrt(shape[-1])
        out[name] = a.astype(np.float32)
    out["freq_cis_real"], out["freq_cis_imag"] = _freqs(cfg.head_size(), cfg.seq_len)
    return out


def _bin_bytes(cfg: Config, w: dict[str, np.ndarray]) -> bytes:
    """llama2.c's legacy export: the header (negative vocab_size: unshared classifier), then the tensors."""
    vocab = cfg.vocab_size if cfg.shared_classifier else -cfg.vocab_size
    head = struct.pack("<7i", cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, vocab, cfg.seq_len)
    return head + b"".join(w[n].astype("<f4").tobytes() for n, _ in llama2_c_weights.tensor_layout(cfg))


def _halves(w: np.ndarray, heads: int) -> np.ndarray:
    """q/k rows from llama2.c's interleaved rotary pairs (2i, 2i+1) to transformers' halves (i, i + d/2)."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def _hf(cfg: Config, w: dict[str, np.ndarray]):
    hcfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.hidden_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=cfg.seq_len, rms_norm_eps=cfg.norm_eps, rope_theta=10000.0, tie_word_embeddings=False,
    )  # fmt: skip
    hf = transformers.LlamaForCausalLM(hcfg).eval()
    sd = {"model.embed_tokens.weight": w["token_embedding_table"], "model.norm.weight": w["rms_final_weight"],
          "lm_head.weight": w.get("wcls", w["token_embedding_table"])}  # fmt: skip
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        sd |= {
            p + "self_attn.q_proj.weight": _halves(w["wq"][i], cfg.n_heads),
            p + "self_attn.k_proj.weight": _halves(w["wk"][i], cfg.n_kv_heads),
            p + "self_attn.v_proj.weight": w["wv"][i], p + "self_attn.o_proj.weight": w["wo"][i],
            p + "mlp.gate_proj.weight": w["w1"][i], p + "mlp.up_proj.weight": w["w3"][i],
            p + "mlp.down_proj.weight": w["w2"][i], p + "input_layernorm.weight": w["rms_att_weight"][i],
            p + "post_attention_layernorm.weight": w["rms_ffn_weight"][i],
        }  # fmt: skip
    hf.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=True)
    return hf


class Case:
    def __init__(self, kind: str, tmp_path_factory):
        torch.set_num_threads(2)
        self.kind = kind
        cfg = Config(**CFG, shared_classifier=kind == "shared")
        self.w = _random_weights(cfg, seed=0 if kind == "shared" else 1)
        self.data = _bin_bytes(cfg, self.w)
        self.path = tmp_path_factory.mktemp(f"llama2_c_{kind}") / "model.bin"
        self.path.write_bytes(self.data)
        with open(self.path, "rb") as f:  # Candle's example: the header, then the weights
            self.config = Config.from_reader(f)
            self.weights = TransformerWeights.from_reader(f, self.config, Device.Cpu)
        self.vb = self.weights.var_builder(self.config, Device.Cpu)
        self.model = Llama.load(self.vb, self.config)
        self.hf = _hf(self.config, self.w)
        self.full = self.forward_full(self.model, self.vb)

    def forward_full(self, model, vb) -> np.ndarray:
        cache = Cache.new(True, self.config, vb.pp("rot"))
        return np.asarray(model.forward(Tensor.new(np.asarray(PROMPT, np.uint32)), 0, cache).jax)

    def hf_logits(self, ids) -> np.ndarray:
        with torch.no_grad():
            return self.hf(torch.tensor(ids)).logits.numpy()


@pytest.fixture(scope="module", params=["shared", "unshared"])
def case(request, tmp_path_factory):
    threads = torch.get_num_threads()
    try:
        yield Case(request.param, tmp_path_factory)  # (sets torch's thread count)
    finally:
        torch.set_num_threads(threads)


def _greedy(model, cache, prompt: list[int], n: int) -> tuple[list[int], list[np.ndarray]]:
    """Candle's example loop: the prompt at index_pos 0, then one token per call on the KV cache."""
    tokens, steps, index_pos = list(prompt), [], 0
    for i in range(n):
        ctxt = tokens if i == 0 else tokens[-1:]
        logits = np.asarray(model.forward(Tensor.new(np.asarray([ctxt], np.uint32)), index_pos, cache).jax)
        index_pos += len(ctxt)
        steps.append(logits[0, -1])
        tokens.append(int(np.argmax(logits[0, -1])))
    return tokens[len(prompt) :], steps


def test_prompts_of_new_lengths_reuse_one_prefill_program(case, jax_compiles):
    """Candle's loop ``forward(prompt, 0, cache)`` with prompts of 3, 5, 9 and 17 tokens runs one
    padded prefill program (causally masked), not one per length; logits and tokens are transformers'."""
    rng = np.random.default_rng(4)
    for i, n in enumerate((3, 9, 5, 17)):
        prompt = rng.integers(0, 64, n).tolist()
        cache = Cache.new(True, case.config, case.vb.pp("rot"))
        jax_compiles.clear()
        got = np.asarray(case.model.forward(Tensor.new(np.asarray([prompt], np.uint32)), 0, cache).jax)
        if i > 0:
            assert not [c for c in jax_compiles if "step" in c], jax_compiles
        ref = case.hf_logits([prompt])
        assert got.shape == ref.shape == (1, n, 64)
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
        nxt = int(np.argmax(got[0, -1]))
        step = np.asarray(case.model.forward(Tensor.new(np.asarray([[nxt]], np.uint32)), n, cache).jax)
        np.testing.assert_allclose(step[0, -1], case.hf_logits([[*prompt, nxt]])[0, -1], atol=ATOL, rtol=0)


def test_header_and_weights(case):
    cfg = case.config
    assert (cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size, cfg.seq_len) == (
        32, 64, 2, 4, 2, 64, 32)  # fmt: skip
    assert cfg.shared_classifier == (case.kind == "shared") and cfg.norm_eps == 1e-5 and cfg.head_size() == 8
    assert case.weights.wk.shape == (2, 16, 32)  # n_kv_heads * head_size rows
    head = np.asarray(case.vb.get((64, 32), "lm_head.weight").jax)
    np.testing.assert_array_equal(head, case.w.get("wcls", case.w["token_embedding_table"]))
    np.testing.assert_array_equal(np.asarray(case.vb.pp("rot").get((32, 4), "freq_cis_imag").jax),
                                  case.w["freq_cis_imag"])  # fmt: skip


def test_full_sequence_matches_transformers(case):
    ref = case.hf_logits(PROMPT)
    assert case.full.shape == ref.shape == (2, 5, 64) and case.full.dtype == np.float32
    np.testing.assert_allclose(case.full, ref, atol=ATOL, rtol=0)


def test_kv_cache_token_by_token_and_greedy_match_transformers(case):
    cache = Cache.new(True, case.config, case.vb.pp("rot"))
    toks, steps = _greedy(case.model, cache, PROMPT[0], NEW)
    assert cache.kvs is not None and cache.kvs.max_seq_len == case.config.seq_len
    with torch.no_grad():
        out = case.hf.generate(torch.tensor([PROMPT[0]]), attention_mask=torch.ones(1, 5, dtype=torch.long),
                               max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0)  # fmt: skip
    assert toks == out[0, 5:].tolist()
    ref = case.hf_logits([PROMPT[0] + toks])[0]  # position p's logits predict token p + 1
    for i, got in enumerate(steps):
        np.testing.assert_allclose(got, ref[4 + i], atol=ATOL, rtol=0, err_msg=f"step {i}")
    # a batch, several tokens per call, on the same cache restarted at index_pos 0
    ids = np.asarray(PROMPT, np.uint32)
    a = np.asarray(case.model.forward(Tensor.new(ids[:, :2]), 0, cache).jax)
    b = np.asarray(case.model.forward(Tensor.new(ids[:, 2:]), 2, cache).jax)
    np.testing.assert_allclose(np.concatenate([a, b], axis=1), case.full, atol=ATOL, rtol=0)


def test_forward_under_jit_keeps_no_tracer_in_the_cache(case):
    """``jax.jit(lambda ids: model.forward(ids, 0, cache))``: transformers' logits, and the cache (a
    host object, Candle's ``&mut Cache``) keeps nothing from the trace: the next eager call at
    ``index_pos`` 0 runs (it raised JAX's UnexpectedTracerError, a tracer kept in ``cache.kvs``) and a
    continuation names the empty cache."""
    import jax

    cache = Cache.new(True, case.config, case.vb.pp("rot"))
    ids = np.asarray(PROMPT, np.uint32)
    got = jax.jit(lambda x: case.model.forward(x, 0, cache))(Tensor.new(ids))
    np.testing.assert_allclose(np.asarray(got), case.hf_logits(PROMPT), atol=ATOL, rtol=0)
    with pytest.raises(errors.Msg, match="holds 0 positions, x starts at index_pos 5"):
        case.model.forward(Tensor.new(ids[:, :1]), 5, cache)
    a = np.asarray(case.model.forward(Tensor.new(ids[:, :2]), 0, cache).jax)
    b = np.asarray(case.model.forward(Tensor.new(ids[:, 2:]), 2, cache).jax)
    np.testing.assert_allclose(np.concatenate([a, b], axis=1), case.hf_logits(PROMPT), atol=ATOL, rtol=0)


def test_step_past_the_rotary_tables_is_named(case):
    """``llama2_c.step`` with more tokens than the rotary tables' ``seq_len`` rows (Candle:
    ``cache.cos.i(index_pos..index_pos + seq_len)`` fails), eagerly and under jit: a candlejax error,
    not XLA's 'slice_sizes must be less than or equal to operand shape' TypeError."""
    import jax

    from candlejax.models import llama2_c
    from candlejax.nn import StackedKvCache

    cfg, cache = case.config, Cache.new(False, case.config, case.vb.pp("rot"))
    ids = Tensor.new(np.zeros((1, cfg.seq_len + 1), np.uint32))

    def run(model, ids):
        kv = StackedKvCache.new(cfg.n_layers, 1, cfg.n_kv_heads, 2 * cfg.seq_len, cfg.head_size(), DType.F32,
                                Device.Cpu)  # fmt: skip
        return llama2_c.step(model, cache.cos, cache.sin, kv, ids, 0, 0)[0]

    for fn in (run, jax.jit(run)):
        with pytest.raises(errors.Msg, match=r"llama2_c step: 33 token\(s\) exceed the rotary tables' 32 rows"):
            fn(case.model, ids)


def test_without_kv_cache_recomputes(case):
    cache = Cache.new(False, case.config, case.vb.pp("rot"))
    ids = np.asarray(PROMPT, np.uint32)
    got = np.asarray(case.model.forward(Tensor.new(ids), 0, cache).jax)
    np.testing.assert_allclose(got, case.full, atol=1e-5, rtol=0)
    assert cache.kvs is None  # nothing kept: a prefix alone gives the prefix's logits
    pre = np.asarray(case.model.forward(Tensor.new(ids[:, :3]), 0, cache).jax)
    np.testing.assert_allclose(pre, case.full[:, :3], atol=1e-5, rtol=0)
    # Candle's example without a cache: the whole context at index_pos 0 each step
    ctx = list(PROMPT[1])
    for _ in range(3):
        logits = np.asarray(case.model.forward(Tensor.new(np.asarray([ctx], np.uint32)), 0, cache).jax)
        ctx.append(int(np.argmax(logits[0, -1])))
    toks, _ = _greedy(case.model, Cache.new(True, case.config, case.vb.pp("rot")), PROMPT[1], 3)
    assert ctx[5:] == toks


def test_tables_computed_when_absent_and_errors(case):
    cache = Cache.new(True, case.config, VarBuilder.from_tensors({}, DType.F32, Device.Cpu))
    np.testing.assert_allclose(np.asarray(cache.cos.jax), case.w["freq_cis_real"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(cache.sin.jax), case.w["freq_cis_imag"], atol=1e-5)
    assert np.asarray(cache.mask(3, 2).jax).tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]]
    ids = Tensor.new(np.zeros((1, 4), np.uint32))
    with pytest.raises(errors.Msg, match="outside the rotary tables"):
        case.model.forward(ids, 30, cache)
    with pytest.raises(errors.Msg, match="holds 0 positions, x starts at index_pos 2"):
        case.model.forward(ids, 2, cache)  # nothing cached before position 2
    with pytest.raises(errors.InvalidIndex):
        case.model.forward(Tensor.new(np.asarray([[64]], np.uint32)), 0, cache)
    assert np.asarray(case.model.embed(ids).jax).shape == (1, 4, 32)


class _Stream:
    """A reader that can neither seek nor tell (a pipe)."""

    def __init__(self, data: bytes):
        self._b = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._b.read(n)


IN_WK = 28 + 4 * (64 * 32 + 2 * 32 + 2 * 32 * 32) + 100  # 100 bytes into wk (after the table, norms and wq)


@pytest.mark.parametrize("reader", [io.BytesIO, _Stream])
@pytest.mark.parametrize(("cut", "what"), [(10, "header"), (IN_WK, "tensor wk"), (-4, "tensor (wcls|freq_cis_imag)")])
def test_truncated_bin_raises_naming_the_tensor(case, cut, what, reader):
    data = case.data[:cut]
    with pytest.raises(errors.Msg, match=what) as e:
        r = reader(data)
        TransformerWeights.from_reader(r, Config.from_reader(r), Device.Cpu)
    assert f"ends at byte {len(data)}" in str(e.value)


def test_corrupt_header_raises(case):
    bad = struct.pack("<7i", 32, 64, 2, 5, 2, 64, 32) + case.data[28:]  # 5 heads do not divide dim 32
    with pytest.raises(errors.Msg, match=r"header .* is invalid"):
        Config.from_reader(io.BytesIO(bad))
    huge = struct.pack("<7i", 1 << 20, 1 << 20, 1000, 8, 8, 32000, 1024) + case.data[28:]
    r = io.BytesIO(huge)  # sized before anything is allocated
    with pytest.raises(errors.Msg, match="truncated: tensor token_embedding_table"):
        TransformerWeights.from_reader(r, Config.from_reader(r), Device.Cpu)


def _gguf(case, tmp_path_factory, dtype) -> str:
    """Candle's tensor-tools over the var_builder's tensors: 2-D tensors of whole blocks in ``dtype``."""
    bs = dtype.block_size()
    tensors = {}
    for name in case.vb._backend.names():
        a = np.asarray(case.vb.get_unchecked(name).jax)
        whole = a.ndim == 2 and a.shape[1] % bs == 0 and not name.startswith("rot.")
        tensors[name] = QTensor.quantize(Tensor.from_numpy(a), dtype) if whole else a
    path = str(tmp_path_factory.mktemp("l2c_gguf") / f"{case.kind}_{dtype.name}.gguf")
    gguf.write(path, {"general.architecture": "llama2c"}, tensors)
    return path


def _quantized(path, config):
    qvb = quantized_llama2_c.VarBuilder.from_gguf(path, Device.Cpu)
    return quantized_llama2_c.QLlama.load(qvb, config), qvb


def _same_model(a, a_vb, b, b_vb, config, atol) -> None:
    ids = np.asarray(PROMPT, np.uint32)
    for use_kv in (True, False):
        ca, cb = Cache.new(use_kv, config, a_vb.pp("rot")), Cache.new(use_kv, config, b_vb.pp("rot"))
        np.testing.assert_allclose(np.asarray(ca.cos.jax), np.asarray(cb.cos.jax), atol=0)
        ga = np.asarray(a.forward(Tensor.new(ids), 0, ca).jax)
        gb = np.asarray(b.forward(Tensor.new(ids), 0, cb).jax)
        np.testing.assert_allclose(ga, gb, atol=atol, rtol=0)
    ta, sa = _greedy(a, Cache.new(True, config, a_vb.pp("rot")), PROMPT[0], 4)
    tb, sb = _greedy(b, Cache.new(True, config, b_vb.pp("rot")), PROMPT[0], 4)
    assert ta == tb
    np.testing.assert_allclose(np.stack(sa), np.stack(sb), atol=atol, rtol=0)


def test_quantized_f32_gguf_equals_float_model(case, tmp_path_factory):
    q, qvb = _quantized(_gguf(case, tmp_path_factory, GgmlDType.F32), case.config)
    assert isinstance(q, llama2_c.Llama)
    _same_model(q, qvb, case.model, case.vb, case.config, atol=1e-5)


def test_quantized_q8_0_gguf_equals_dequantized_float_model(case, tmp_path_factory):
    q, qvb = _quantized(_gguf(case, tmp_path_factory, GgmlDType.Q8_0), case.config)
    infos = qvb.content.tensor_infos
    kinds = {n: qvb.get_no_shape(n).dtype() for n in infos}
    assert kinds["model.layers.1.mlp.down_proj.weight"] == kinds["lm_head.weight"] == GgmlDType.Q8_0
    assert kinds["rot.freq_cis_real"] == kinds["model.norm.weight"] == GgmlDType.F32
    assert q.blocks[0].self_attn.q_proj.qmatmul().is_quantized()
    deq = {n: qvb.get_no_shape(n).dequantize() for n in infos}
    fvb = VarBuilder.from_tensors(deq, DType.F32, Device.Cpu)
    fmodel = Llama.load(fvb, case.config)
    _same_model(q, qvb, fmodel, fvb, case.config, atol=ATOL)
    assert not np.allclose(case.forward_full(fmodel, fvb), case.full, atol=1e-6)  # really quantized


def test_trains_from_a_varmap_as_candles_example():
    """training.rs: ``Cache.new(False, cfg, vb.pp("rot"))`` and ``Llama.load`` over a VarMap (Candle's
    initializers; the rotary tables computed, not trained), AdamW on the cross-entropy of every position."""
    import candlejax as cj
    from candlejax.nn import VarMap

    cfg = Config(**CFG)
    varmap = VarMap()
    vb = VarBuilder.from_varmap(varmap, DType.F32, Device.Cpu)
    cache = Cache.new(False, cfg, vb.pp("rot"))
    model = Llama.load(vb, cfg)
    assert len(varmap.all_vars()) == 3 + 9 * cfg.n_layers and "rot.freq_cis_real" not in varmap.data()
    opt = cj.optim.AdamW(varmap.all_vars(), cj.optim.ParamsAdamW(lr=1e-2))
    seq = np.random.default_rng(0).integers(0, cfg.vocab_size, (4, 17)).astype(np.uint32)
    inp, tgt = Tensor.new(seq[:, :-1]), Tensor.new(seq[:, 1:])

    def loss_fn(m, x, y):
        return cj.nn.loss.cross_entropy(m.forward(x, 0, cache).flatten_to(1), y.flatten_to(1))

    losses = [float(opt.backward_step(loss_fn, model, inp, tgt).to_scalar()) for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0]
