"""models.blip / models.blip_text against transformers' BlipForConditionalGeneration (random small
config, same weights through safetensors): image embeddings and logits, greedy captions token for
token, the KV-cached step, sampling, BlipImageProcessor preprocessing, bad input and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from candlejax import Device, DType, Tensor, errors
from candlejax import safetensors as cj_safetensors
from candlejax.generation import ArgMax, LogitsProcessor, decode_fns
from candlejax.models import blip, blip_text
from candlejax.nn import VarBuilder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

VOCAB, BOS, SEP, PAD = 50, 45, 46, 0
TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=40, bos_token_id=BOS, sep_token_id=SEP, pad_token_id=PAD)  # fmt: skip
VISION = dict(hidden_size=48, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8)  # fmt: skip


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": PAD, **{f"w{i}": i for i in range(1, VOCAB) if i not in (BOS, SEP)}, "[DEC]": BOS, "[SEP]": SEP}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["[PAD]", "[DEC]", "[SEP]"])
    return tok


def random_hf_blip(text: dict, vision: dict):
    """transformers' BLIP with seeded random weights, larger than its tiny init so that the captions
    depend on the image (eager attention)."""
    torch.manual_seed(0)
    cfg = transformers.BlipConfig(text_config=text, vision_config=vision)
    cfg._attn_implementation = "eager"
    hf = transformers.BlipForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "LayerNorm" in n or "layer_norm" in n or "layernorm" in n:
                p.add_(0.1 * torch.randn_like(p))
            elif p.ndim >= 2 or "embedding" in n:
                p.normal_(0.0, 0.2)
    return hf


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    hf = random_hf_blip(TEXT, VISION)
    d = tmp_path_factory.mktemp("blip")
    hf.save_pretrained(d, safe_serialization=True)
    _tiny_tokenizer().save(str(d / "tokenizer.json"))
    config = blip.Config.from_json_file(d / "config.json")
    vb = VarBuilder.from_mmaped_safetensors([str(d / "model.safetensors")], DType.F32, Device.Cpu)
    return hf, blip.BlipForConditionalGeneration.load(vb, config), d


def _pixels(rng, b=1):
    return rng.standard_normal((b, 3, 32, 32)).astype(np.float32)


def test_config_keys(pair):
    _, model, _ = pair
    c = model.config
    assert c.text_config.encoder_hidden_size == 48 and c.text_config.sep_token_id == SEP
    assert c.vision_config.patch_size == 8 and c.text_config.vocab_size == VOCAB
    with pytest.raises(errors.Error, match="not a multiple"):
        blip.Config.from_dict({"vision_config": {"image_size": 30, "patch_size": 8}})


def test_logits_match_transformers(pair, rng):
    hf, model, _ = pair
    px = _pixels(rng, 2)
    ids = rng.integers(1, VOCAB, size=(2, 7))
    ids[:, 0] = BOS
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(px), input_ids=torch.from_numpy(ids))
    emb = model.vision_model(Tensor.from_numpy(px))
    np.testing.assert_allclose(emb.numpy(), ref.image_embeds.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(blip.vision_forward_jit(model, Tensor.from_numpy(px)).numpy(), ref.image_embeds.numpy(),
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    logits = model.forward(Tensor.from_numpy(px), Tensor.from_numpy(ids.astype(np.uint32)))
    np.testing.assert_allclose(logits.numpy(), ref.logits.numpy(), atol=1e-4, rtol=1e-4)


def test_stateful_decoder_under_jit_keeps_no_tracer(pair, rng):
    """``jax.jit`` over a closure calling the stateful ``text_decoder.forward(ids, image_embeds)``:
    transformers' logits, and the decoder keeps nothing from the trace (the next eager call raised
    JAX's UnexpectedTracerError, a tracer kept as its KV cache): it starts a new sequence."""
    import jax

    hf, _, d = pair
    config = blip.Config.from_json_file(d / "config.json")
    vb = VarBuilder.from_mmaped_safetensors([str(d / "model.safetensors")], DType.F32, Device.Cpu)
    dec = blip_text.TextLMHeadModel.new(config.text_config, vb.pp("text_decoder"))
    px = _pixels(rng)
    ids = rng.integers(1, VOCAB, size=(1, 5))
    ids[:, 0] = BOS
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(px), input_ids=torch.from_numpy(ids))
    emb = Tensor.from_numpy(ref.image_embeds.numpy())
    t = Tensor.from_numpy(ids.astype(np.uint32))
    got = jax.jit(lambda i: dec.forward(i, emb))(t)
    np.testing.assert_allclose(got.numpy(), ref.logits.numpy(), atol=1e-4, rtol=1e-4)
    first = dec.forward(t.narrow(1, 0, 3), emb).numpy()  # a new sequence: positions 0..2
    rest = dec.forward(t.narrow(1, 3, 2), emb).numpy()
    np.testing.assert_allclose(np.concatenate([first, rest], 1), ref.logits.numpy(), atol=1e-4, rtol=1e-4)


def test_cached_steps_match_full_forward(pair, rng):
    _, model, _ = pair
    px = Tensor.from_numpy(_pixels(rng))
    ids = rng.integers(1, VOCAB, size=(1, 6)).astype(np.uint32)
    emb = model.vision_model(px)
    full = model.text_decoder(Tensor.from_numpy(ids), emb).numpy()[0]  # (S, V)
    cache = model.text_decoder.new_cache(emb, 8)
    logits, cache = blip_text.step(model.text_decoder, cache, ids[:, :3], 0)  # a prefill of 3
    np.testing.assert_allclose(logits.numpy()[0], full[2], atol=1e-4, rtol=1e-4)
    for t in range(3, 6):
        logits, cache = blip_text.step(model.text_decoder, cache, ids[:, t : t + 1], t)
        np.testing.assert_allclose(logits.numpy()[0], full[t], atol=1e-4, rtol=1e-4)


def _hf_caption(hf, px, n):
    with torch.no_grad():
        out = hf.generate(pixel_values=torch.from_numpy(px), max_new_tokens=n, do_sample=False, num_beams=1)
    ids = out[0].tolist()
    assert ids[0] == BOS
    ids = ids[1:]
    return ids[: ids.index(SEP)] if SEP in ids else ids


def test_greedy_captions_token_identical(pair, rng):
    hf, model, _ = pair
    fns = decode_fns(blip_text.step, ArgMax(), False)  # (the module's step: cached across calls and tests)
    traced, lengths = fns.trace_count, []
    for _ in range(3):
        px = _pixels(rng)
        ref = _hf_caption(hf, px, 12)
        assert _caption_ids(model, px, 12) == ref
        lengths.append(len(ref))
    assert max(lengths) > 0
    # at most one compiled program served the prompt and every decode step of all three captions
    assert fns.trace_count <= traced + 1 and fns.trace_count >= 1


def _caption_ids(model, px, n, **kw):
    return blip.caption_ids(model, Tensor.from_numpy(px), max_new_tokens=n, **kw)


def test_caption_text_and_sampling(pair, rng):
    _, model, _ = pair
    px = _pixels(rng)
    tok = _tiny_tokenizer()
    ids = _caption_ids(model, px, 10)
    text = blip.caption(model, Tensor.from_numpy(px), tok, max_new_tokens=10)
    assert text == tok.decode(ids, skip_special_tokens=True).strip()
    # sampled: the same draws as Candle's loop (full forward each step + LogitsProcessor.sample)
    sampled = _caption_ids(model, px, 6, temperature=1.5, seed=7)
    lp = LogitsProcessor(7, 1.5)
    emb = model.vision_model(Tensor.from_numpy(px))
    seq, ref = [BOS], []
    for _ in range(6):
        logits = model.text_decoder(Tensor.from_numpy(np.asarray([seq], np.uint32)), emb)
        t = lp.sample(logits.numpy()[0, -1])
        if t == SEP:
            break
        ref.append(t)
        seq.append(t)
    assert sampled == ref
    assert _caption_ids(model, px, 6, temperature=1.5, seed=7) == sampled  # reproducible


def test_preprocess_matches_blip_image_processor(rng):
    from PIL import Image

    img = rng.integers(0, 256, size=(45, 61, 3), dtype=np.uint8)
    proc = transformers.BlipImageProcessor(size={"height": 32, "width": 32})
    ref = proc(images=Image.fromarray(img), return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(blip.preprocess(img, 32).numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(blip.preprocess(Image.fromarray(img), 32).numpy(), ref, atol=1e-5)
    # float pixels pass through as preprocessed, as in clip.preprocess: they must then be (B, 3, 32, 32);
    # an (H, W, 3) float image came back as a (1, H, W, 3) "batch"
    np.testing.assert_array_equal(blip.preprocess(ref[0], 32).numpy(), ref)
    for bad in (np.full((45, 61, 3), 0.5, np.float32), ref[:, :, :16]):
        with pytest.raises(errors.UnexpectedShape, match=r"blip.preprocess: float pixels are taken as preprocessed"):
            blip.preprocess(bad, 32)


def test_caption_from_image_matches_transformers(pair, rng):
    hf, model, _ = pair
    from PIL import Image

    img = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    proc = transformers.BlipImageProcessor(size={"height": 32, "width": 32})
    px = proc(images=Image.fromarray(img), return_tensors="np")["pixel_values"].astype(np.float32)
    assert blip.caption_ids(model, img, max_new_tokens=8) == _hf_caption(hf, px, 8)


def test_bad_input(pair, rng):
    _, model, _ = pair
    tok = _tiny_tokenizer()
    with pytest.raises(errors.Error, match=r"blip.preprocess: float pixels .* \(batch, 3, 32, 32\)"):
        blip.caption(model, Tensor.zeros((1, 3, 40, 40), DType.F32, Device.Cpu), tok)
    with pytest.raises(errors.Error, match=r"pixel_values must be \(batch, 3, 32, 32\)"):
        model.vision_model(Tensor.zeros((1, 1, 32, 32), DType.F32, Device.Cpu))
    with pytest.raises(errors.Error, match=r"\(H, W, 3\) uint8"):
        blip.caption(model, np.zeros((20, 20, 2), np.uint8), tok)
    with pytest.raises(errors.Error, match="max_new_tokens"):
        blip.caption(model, Tensor.from_numpy(_pixels(rng)), tok, max_new_tokens=100)
    with pytest.raises(errors.Error, match="greedily"):
        blip.caption(model, Tensor.from_numpy(_pixels(rng, 2)), tok, temperature=1.0)
    with pytest.raises(errors.Error, match="empty list of images"):
        blip.caption(model, [], tok)
    px = Tensor.from_numpy(_pixels(rng))
    with pytest.raises(errors.Error, match=r"input_ids must be the processor's integer ids"):
        blip.caption_ids(model, px, input_ids=[[BOS]])
    with pytest.raises(errors.Error, match=r"input_ids must be in 0\.\.49"):
        blip.caption_ids(model, px, input_ids=[[1, 99, SEP]])
    with pytest.raises(errors.Error, match="padded prompts"):  # transformers masks them out
        padded = [[1, 3, 4, 5, SEP], [1, 3, SEP, PAD, PAD]]
        blip.caption_ids(model, Tensor.from_numpy(_pixels(rng, 2)), input_ids=padded)
    with pytest.raises(errors.Error, match="prompts of different lengths"):  # ragged rows: numpy's ValueError
        blip.caption_ids(model, Tensor.from_numpy(_pixels(rng, 2)), input_ids=[[1, 3, 4, SEP], [1, 3, SEP]])
    with pytest.raises(errors.Error, match="input_ids hold 2 rows for a batch of 1"):
        blip.caption_ids(model, px, input_ids=[[1, 3, SEP], [1, 4, SEP]])
    with pytest.raises(errors.Error, match=r"max_new_tokens 37 exceeds max_position_embeddings - 4 \(36\)"):
        blip.caption_ids(model, px, 37, input_ids=[[1, 3, 4, 5, SEP]])
    with pytest.raises(errors.Error, match="prompt must be a str"):
        blip.caption(model, px, tok, prompt=[3, 4])
    with pytest.raises(errors.Error, match="exceed max_position_embeddings"):
        emb = model.vision_model(Tensor.from_numpy(_pixels(rng)))
        model.text_decoder(Tensor.zeros((1, 41), DType.U32, Device.Cpu), emb)


def test_arrays_instead_of_tensors_are_named(pair, rng):
    """Candle's BLIP takes ``&Tensor``: a numpy array raised ``AttributeError: 'numpy.ndarray' object
    has no attribute 'dim'`` from inside the model."""
    _, model, _ = pair
    px = _pixels(rng)
    ids = np.array([[BOS, 3, 4]], np.uint32)
    for call in (lambda: model.forward(px, Tensor.from_numpy(ids)), lambda: model.vision_model(px),
                 lambda: blip.vision_forward_jit(model, px)):  # fmt: skip
        with pytest.raises(errors.Error, match=r"blip vision_model: pixel_values must be a Tensor .*got ndarray"):
            call()
    emb = model.vision_model(Tensor.from_numpy(px))
    for call in (lambda: model.forward(Tensor.from_numpy(px), ids), lambda: model.text_decoder.forward(ids, emb)):
        with pytest.raises(errors.Error, match=r"blip text_decoder: input_ids must be a Tensor .*got ndarray"):
            call()


def test_decoder_refuses_bad_ids_positions_and_image_embeds(pair, rng):
    """The stateful decoder refuses ids outside the vocabulary (50) as the uncached one does (the
    compiled step clamped id 50 to 49); ``step``'s ``pos`` must be the cache's position; image_embeds
    of another batch, rank or width are named at the decoder's entry."""
    _, model, _ = pair
    td = model.text_decoder
    emb = model.vision_model(Tensor.from_numpy(_pixels(rng)))
    ids = Tensor.from_numpy(np.array([[BOS, 50]], np.uint32))
    with pytest.raises(errors.InvalidIndex, match="blip text_decoder: token ids invalid index 50 with dim size 50"):
        td().forward(ids, emb)
    with pytest.raises(errors.InvalidIndex, match="invalid index 50"):
        td.forward(ids, emb)
    sd = td()
    sd.reset_kv_cache()
    with pytest.raises(errors.UnexpectedDType, match="blip text_decoder: token ids must be integers"):
        sd.forward(Tensor.from_numpy(np.array([[45.0, 3.0]], np.float32)), emb)
    sd.forward(Tensor.from_numpy(np.array([[BOS, 3]], np.uint32)), emb)  # nothing was cached by the refusals
    sd.reset_kv_cache()
    cache = td.new_cache(emb, 8)
    _, cache = blip_text.step(td, cache, np.array([[BOS, 3, 4, 5]], np.uint32), 0)
    with pytest.raises(errors.Msg, match=r"pos 9 differs from the cache's position 4"):
        blip_text.step(td, cache, np.array([[7]], np.uint32), 9)
    with pytest.raises(errors.InvalidIndex, match="blip text_decoder: token ids invalid index 60"):
        blip_text.step(td, cache, np.array([[60]], np.uint32), 4)
    blip_text.step(td, cache, np.array([[7]], np.uint32), jnp.int32(4))
    one = Tensor.from_numpy(np.array([[BOS, 3]], np.uint32))
    two = Tensor.zeros((2, emb.dim(1), 48), DType.F32, Device.Cpu)
    for bad, what in ((two, r"\(1, patches, encoder_hidden_size 48\).*got \[2, 17, 48\] for input_ids of batch 1"),
                      (emb.squeeze(0), r"got \[17, 48\]"), (emb.narrow(2, 0, 47), r"got \[1, 17, 47\]")):  # fmt: skip
        with pytest.raises(errors.Msg, match="blip text_decoder: image_embeds must be .*" + what):
            td.forward(one, bad)
        with pytest.raises(errors.Msg, match="image_embeds must be"):
            sd.forward(one, bad)
    with pytest.raises(errors.Msg, match=r"image_embeds must be \(batch, patches, encoder_hidden_size 48\)"):
        td.new_cache(emb.squeeze(0), 8)


def _hf_generate(hf, px, n, input_ids=None):
    """transformers' greedy ``generate`` (with the processor's ``input_ids`` when given): per row,
    the ids after BOS up to ``[SEP]``."""
    kw = {} if input_ids is None else {"input_ids": torch.tensor(input_ids)}
    with torch.no_grad():
        out = hf.generate(pixel_values=torch.from_numpy(px), max_new_tokens=n, do_sample=False, num_beams=1, **kw)
    rows = []
    for r in out.tolist():
        assert r[0] == BOS
        rows.append(r[1 : r.index(SEP)] if SEP in r else r[1:])
    return rows


PROMPTS = ([3], [7, 9], [12, 4, 30], [20, 21, 22, 23])


def test_prompted_captions_token_identical(pair, rng):
    """transformers: ``generate(pixel_values, input_ids=processor(image, prompt).input_ids)``: [CLS]
    becomes BOS, [SEP] is dropped, the output begins with the prompt."""
    hf, model, _ = pair
    px = _pixels(rng)
    tok = _tiny_tokenizer()
    for p in PROMPTS:
        ref = _hf_generate(hf, px, 10, [[1, *p, SEP]])[0]
        assert ref[: len(p)] == p and len(ref) == len(p) + 10
        assert _caption_ids(model, px, 10, input_ids=[[1, *p, SEP]]) == ref
        assert _caption_ids(model, px, 10, input_ids=np.asarray([2, *p, SEP])) == ref
        text = " ".join(f"w{i}" for i in p)
        expected = tok.decode(ref, skip_special_tokens=True).strip()
        assert blip.caption(model, Tensor.from_numpy(px), tok, max_new_tokens=10, prompt=text) == expected
    assert blip.caption(model, Tensor.from_numpy(px), tok, max_new_tokens=6, prompt="") == blip.caption(
        model, Tensor.from_numpy(px), tok, max_new_tokens=6)
    # sampled after the prompt: Candle's loop (full forward each step + LogitsProcessor.sample)
    sampled = _caption_ids(model, px, 6, temperature=1.5, seed=7, input_ids=[[1, 7, 9, SEP]])
    lp, emb = LogitsProcessor(7, 1.5), model.vision_model(Tensor.from_numpy(px))
    seq = [BOS, 7, 9]
    for _ in range(6):
        t = lp.sample(model.text_decoder(Tensor.from_numpy(np.asarray([seq], np.uint32)), emb).numpy()[0, -1])
        if t == SEP:
            break
        seq.append(t)
    assert sampled == seq[1:]
    from candlejax.pipelines import ImageCaptioner

    cap = ImageCaptioner(model, tok, max_new_tokens=10, prompt="w12 w4 w30")
    assert cap.ids(Tensor.from_numpy(px)) == _hf_generate(hf, px, 10, [[1, 12, 4, 30, SEP]])[0]


@pytest.fixture(scope="module")
def sep_pair(tmp_path_factory):
    """The random model with [SEP] made likelier, so that captions end at different steps."""
    hf = random_hf_blip(TEXT, VISION)
    with torch.no_grad():
        hf.text_decoder.cls.predictions.bias[SEP] += 1.5
    d = tmp_path_factory.mktemp("blip_sep")
    hf.save_pretrained(d, safe_serialization=True)
    _tiny_tokenizer().save(str(d / "tokenizer.json"))
    return hf, blip.BlipForConditionalGeneration.from_pretrained(d), d


def test_batch_captions_token_identical(sep_pair):
    """transformers' batched greedy generate: rows end at [SEP] at different steps (then padded);
    each row is the image's caption alone."""
    hf, model, _ = sep_pair
    draws = np.random.default_rng(0).standard_normal((4, 1, 3, 32, 32)).astype(np.float32)
    px = np.concatenate([draws[0], draws[2], draws[3]])
    ref = _hf_generate(hf, px, 12)
    assert len({len(r) for r in ref}) == 3 and max(len(r) for r in ref) == 12, ref
    assert ref == [_hf_generate(hf, px[i : i + 1], 12)[0] for i in range(3)]
    assert _caption_ids(model, px, 12) == ref
    assert blip.caption_ids(model, [Tensor.from_numpy(px[i]) for i in range(3)], 12) == ref
    assert [_caption_ids(model, px[i : i + 1], 12) for i in range(3)] == ref
    assert blip.caption_ids(model, [Tensor.from_numpy(px[1])], 12) == ref[1:2]  # a list: one list per image
    tok = _tiny_tokenizer()
    texts = blip.caption(model, Tensor.from_numpy(px), tok, max_new_tokens=12)
    assert texts == [tok.decode(r, skip_special_tokens=True).strip() for r in ref]
    # one prompt for every image, or one per image
    p = [1, 7, 9, SEP]
    assert _caption_ids(model, px, 12, input_ids=[p]) == _hf_generate(hf, px, 12, [p] * 3)
    rows = [[1, 7, 9, SEP], [1, 3, 5, SEP], [1, 12, 4, SEP]]
    assert _caption_ids(model, px, 12, input_ids=rows) == _hf_generate(hf, px, 12, rows)


def test_caption_takes_the_tokenizer_of_the_checkpoint_folder(pair, rng):
    _, model, d = pair
    px = Tensor.from_numpy(_pixels(rng))
    expected = blip.caption(model, px, _tiny_tokenizer(), max_new_tokens=6)
    # loaded with .load(vb, config) from the folder's safetensors: its tokenizer.json is the default
    assert model.path == str(d)
    assert blip.caption(model, px, max_new_tokens=6) == expected
    # weights from memory: no folder, so a tokenizer must be given
    tensors = {k: np.asarray(v) for k, v in cj_safetensors.load(d / "model.safetensors", Device.Cpu).items()}
    mem = blip.BlipForConditionalGeneration.load(VarBuilder.from_tensors(tensors), model.config)
    with pytest.raises(errors.Error, match=r"blip.caption: pass tokenizer= .*from_pretrained"):
        blip.caption(mem, px, max_new_tokens=6)
    m2 = blip.BlipForConditionalGeneration.from_pretrained(d)
    assert m2.path == str(d)
    assert blip.caption(m2, px, max_new_tokens=6) == expected
    assert blip.caption(m2, px, str(d / "tokenizer.json"), max_new_tokens=6) == expected
    from candlejax.pipelines import ImageCaptioner

    cap = ImageCaptioner.from_pretrained(d, max_new_tokens=6)
    assert cap(px) == expected and cap.ids(px) == blip.caption_ids(model, px, max_new_tokens=6)
    sampled = ImageCaptioner(model, _tiny_tokenizer(), max_new_tokens=6, temperature=1.5, seed=7)
    assert sampled.ids(px) == blip.caption_ids(model, px, max_new_tokens=6, temperature=1.5, seed=7)
    for kw, what in (({"max_new_tokens": "5"}, "max_new_tokens"), ({"max_new_tokens": 2.5}, "max_new_tokens"),
                     ({"seed": None}, "seed")):  # fmt: skip
        with pytest.raises(errors.NotAnInteger, match=f"ImageCaptioner.*{what}"):  # "5" failed at a bare '<'
            ImageCaptioner(model, _tiny_tokenizer(), **kw)


def test_cli(pair, tmp_path, rng, capsys):
    _, model, d = pair
    from PIL import Image

    img = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(img).save(path)
    expected = blip.caption_ids(model, str(path), max_new_tokens=8)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH")] if p)}
    r = subprocess.run(
        [sys.executable, "-m", "candlejax.models.blip", "caption", str(path), "--model", str(d),
         "--max-new-tokens", "8", "--ids"], capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "ids: " + " ".join(map(str, expected))
    assert lines[-2] == _tiny_tokenizer().decode(expected, skip_special_tokens=True).strip()
    from candlejax import cli

    assert cli.main(["caption", str(path), "--model", str(d), "--max-new-tokens", "8", "--ids"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-2:] == lines[-2:]
    # Candle's blip example spells it --image FILE
    assert cli.main(["caption", "--image", str(path), "--model", str(d), "--max-new-tokens", "8", "--ids"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-2:] == lines[-2:]
    # --prompt; several images: one caption (and ids line) each, as captioned alone
    prompted = blip.caption_ids(model, str(path), max_new_tokens=8, input_ids=[[1, 7, 9, SEP]])
    assert cli.main(["caption", str(path), str(path), "--model", str(d), "--max-new-tokens", "8", "--ids",
                     "--prompt", "w7 w9"]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip().splitlines()[-4:] == 2 * [
        _tiny_tokenizer().decode(prompted, skip_special_tokens=True).strip(), "ids: " + " ".join(map(str, prompted))]
    assert cli.main(["caption", str(path), "--model", str(tmp_path / "nowhere")]) == 1
    assert "no such checkpoint folder" in capsys.readouterr().err


def test_candle_example_loop_matches_caption_ids(pair, rng):
    """Candle's blip example line for line: new(&config, vb), image.apply(model.vision_model()), then
    text_decoder().forward with the whole prompt first and one token per call after (its KV cache)."""
    _, loaded, d = pair
    config = blip.Config.from_json_file(d / "config.json")
    vb = VarBuilder.from_mmaped_safetensors([str(d / "model.safetensors")], DType.F32, Device.Cpu)
    model = blip.BlipForConditionalGeneration.new(config, vb)
    px = _pixels(rng)
    image = Tensor.from_numpy(px[0])
    image_embeds = image.unsqueeze(0).apply(model.vision_model())
    np.testing.assert_array_equal(image_embeds.numpy(), loaded.vision_model(Tensor.from_numpy(px)).numpy())
    lp = LogitsProcessor(1337, None, None)
    for _ in range(2):  # a second caption after reset_kv_cache gives the same tokens
        token_ids = [BOS]
        for index in range(6):
            context_size = 1 if index > 0 else len(token_ids)
            start_pos = max(len(token_ids) - context_size, 0)
            input_ids = Tensor.new(np.asarray(token_ids[start_pos:], np.uint32), Device.Cpu).unsqueeze(0)
            logits = model.text_decoder().forward(input_ids, image_embeds)
            assert logits.dims() == (1, context_size, VOCAB)
            logits = logits.squeeze(0)
            token = lp.sample(logits.get(logits.dim(0) - 1))
            if token == SEP:
                break
            token_ids.append(token)
        assert token_ids[1:] == blip.caption_ids(loaded, Tensor.from_numpy(px), max_new_tokens=6)
        model.reset_kv_cache()
    # the stateful logits equal the uncached forward's, position by position
    ids = Tensor.from_numpy(np.asarray([token_ids[:4]], np.uint32))
    full = model.text_decoder.forward(ids, image_embeds).numpy()
    dec = blip_text.TextLMHeadModel.new(config.text_config, vb.pp("text_decoder"))
    first = dec.forward(ids.narrow(1, 0, 2), image_embeds).numpy()
    rest = [dec.forward(ids.narrow(1, t, 1), image_embeds).numpy() for t in (2, 3)]
    np.testing.assert_allclose(np.concatenate([first, *rest], 1), full, atol=1e-5, rtol=1e-5)
    dec.reset_kv_cache()
    np.testing.assert_allclose(dec.forward(ids, image_embeds).numpy(), full, atol=1e-5, rtol=1e-5)
    # Candle's decoder object passed to jax.jit (a pytree, as the module), ids as a traced jax array: the
    # traced copy keeps its own cache (were JAX's "not a valid JAX type" and TracerArrayConversionError)
    import jax

    got = jax.jit(lambda d, i, e: d.forward(i, e))(dec, ids.jax, image_embeds)
    np.testing.assert_allclose(got.numpy(), full, atol=1e-5, rtol=1e-5)
    assert isinstance(jax.tree.map(lambda a: a, dec), blip_text.StatefulTextDecoder)


def test_candle_spellings_that_raise(pair, rng):
    _, model, d = pair
    config = blip.Config.from_json_file(d / "config.json")
    vb = VarBuilder.from_mmaped_safetensors([str(d / "model.safetensors")], DType.F32, Device.Cpu)
    with pytest.raises(errors.Error, match=r"BlipForConditionalGeneration.load\(vb, config\)"):
        blip.BlipForConditionalGeneration.load(config, vb)
    with pytest.raises(errors.Error, match=r"BlipForConditionalGeneration.new\(config, vb\)"):
        blip.BlipForConditionalGeneration.new(vb, config)
    with pytest.raises(errors.Error, match=r"TextLMHeadModel.load\(vb, cfg\)"):
        blip_text.TextLMHeadModel.new(vb, config.text_config)
    dec = model.text_decoder()
    emb = model.vision_model()(Tensor.from_numpy(_pixels(rng)))
    dec.forward(Tensor.zeros((1, 39), DType.U32, Device.Cpu), emb)
    with pytest.raises(errors.Error, match="exceed max_position_embeddings"):  # the cache is full
        dec.forward(Tensor.zeros((1, 2), DType.U32, Device.Cpu), emb)
    with pytest.raises(errors.Error, match="reset_kv_cache"):
        dec.forward(Tensor.zeros((2, 1), DType.U32, Device.Cpu), Tensor.cat([emb, emb], 0))
    model.reset_kv_cache()
    assert dec.forward(Tensor.zeros((2, 1), DType.U32, Device.Cpu), Tensor.cat([emb, emb], 0)).dims() == (2, 1, VOCAB)
    model.reset_kv_cache()


def test_text_pooler_matches_transformers(rng):
    """``TextPooler::new(&cfg, vb)``: the first token's hidden state through ``dense`` and ``tanh``
    (transformers' ``BlipTextPooler``)."""
    from transformers.models.blip.modeling_blip_text import BlipTextPooler

    cfg = blip_text.Config(hidden_size=16, num_attention_heads=2)
    torch.manual_seed(0)
    ref = BlipTextPooler(transformers.BlipTextConfig(hidden_size=16)).eval()
    w = {f"dense.{k}": Tensor.from_numpy(v.detach().numpy()) for k, v in ref.dense.state_dict().items()}
    pooler = blip_text.TextPooler.new(cfg, VarBuilder.from_tensors(w, DType.F32, Device.Cpu))
    x = rng.standard_normal((3, 5, 16)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(pooler.forward(Tensor.from_numpy(x)).numpy(), want, atol=1e-6, rtol=1e-5)
    with pytest.raises(errors.Error, match="TextPooler"):
        pooler.forward(Tensor.from_numpy(x[0]))


def test_top_level_tie_word_embeddings_ties_the_decoder(tmp_path, rng):
    """transformers ties the LM head to the word embeddings when the top-level ``tie_word_embeddings``
    is set, whatever ``text_config`` says (and saves no ``decoder.weight``): such a checkpoint failed
    to load (cannot find tensor text_decoder.cls.predictions.decoder.weight)."""
    hf = random_hf_blip({**TEXT, "tie_word_embeddings": False}, VISION)
    assert hf.config.tie_word_embeddings
    hf.save_pretrained(tmp_path, safe_serialization=True)
    model = blip.BlipForConditionalGeneration.from_pretrained(tmp_path)
    px, ids = _pixels(rng, 2), rng.integers(1, VOCAB, size=(2, 7))
    ids[:, 0] = BOS
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(px), input_ids=torch.from_numpy(ids)).logits.numpy()
    logits = model.forward(Tensor.from_numpy(px), Tensor.from_numpy(ids.astype(np.uint32)))
    np.testing.assert_allclose(logits.numpy(), ref, atol=1e-4, rtol=1e-4)
    untied = blip.Config.from_dict({"tie_word_embeddings": False, "text_config": {"tie_word_embeddings": False}})
    assert not untied.tie_word_embeddings and not untied.text_config.tie_word_embeddings


def test_prompts_of_new_lengths_reuse_one_prefill_program(pair, rng, jax_compiles):
    """Conditional captions with prompts of 1 to 4 tokens (one image, greedy and sampled, and a batch)
    run one padded prefill program per 32-token bucket, not one per prompt length; the captions are
    transformers' token for token."""
    hf, model, _ = pair
    px, px2 = _pixels(rng), _pixels(rng, 2)
    for i, p in enumerate(PROMPTS):
        jax_compiles.clear()
        got = _caption_ids(model, px, 4, input_ids=[[1, *p, SEP]])
        sampled = _caption_ids(model, px, 3, temperature=0.7, input_ids=[[1, *p, SEP]])
        batch = _caption_ids(model, px2, 3, input_ids=[[1, *p, SEP]])
        if i > 0:
            assert jax_compiles == [], [c[:60] for c in jax_compiles]
        assert got == _hf_generate(hf, px, 4, [[1, *p, SEP]])[0]
        assert sampled[: len(p)] == p and len(sampled) <= len(p) + 3
        assert batch == _hf_generate(hf, px2, 3, [[1, *p, SEP]] * 2)
