"""models.clip against transformers' CLIPModel (random small configs, same weights through
safetensors), CLIPImageProcessor, zero-shot probabilities, bad input and the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from candlejax import Device, DType, Tensor, errors
from candlejax import safetensors as cj_safetensors
from candlejax.models import clip
from candlejax.nn import Activation, VarBuilder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ["a", "photo", "of", "cat", "dog", "car", "the", "big", "small", "red"]
VOCAB = 40
BOS, EOS = VOCAB - 2, VOCAB - 1


def _config(eos_token_id: int, act: str = "quick_gelu") -> dict:
    return dict(
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, hidden_act=act,
                         bos_token_id=BOS, eos_token_id=eos_token_id, pad_token_id=EOS),
        vision_config=dict(hidden_size=48, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, hidden_act=act),
        projection_dim=24, logit_scale_init_value=2.0,
    )  # fmt: skip


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate(WORDS)}, "<bos>": BOS, "<eos>": EOS}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", BOS), ("<eos>", EOS)]
    )
    return tok


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(name -> (hf model, candlejax model, folder)) for eos pooling by id and by argmax (eos_token_id=2)."""
    out = {}
    for i, (name, eos, act) in enumerate([("eos", EOS, "quick_gelu"), ("argmax", 2, "gelu")]):
        torch.manual_seed(i)
        cfg = transformers.CLIPConfig(**_config(eos, act))
        cfg._attn_implementation = "eager"
        m = transformers.CLIPModel(cfg).eval()
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "layer_norm" in n or "layrnorm" in n or "layernorm" in n:
                    p.add_(0.1 * torch.randn_like(p))
        d = tmp_path_factory.mktemp(f"clip_{name}")
        m.save_pretrained(d, safe_serialization=True)
        _tiny_tokenizer().save(str(d / "tokenizer.json"))
        config = clip.ClipConfig.from_json_file(d / "config.json")
        vb = VarBuilder.from_mmaped_safetensors([str(d / "model.safetensors")], DType.F32, Device.Cpu)
        out[name] = (m, clip.ClipModel.load(vb, config), d)
    return out


def _ids(rng, b=3, s=9):
    ids = rng.integers(1, VOCAB - 2, size=(b, s))
    ids[:, 0] = BOS
    lengths = [s, 5, 3][:b]
    for i, n in enumerate(lengths):
        ids[i, n - 1] = EOS
        ids[i, n:] = EOS
    return ids


@pytest.mark.parametrize("name", ["eos", "argmax"])
def test_matches_transformers(models, rng, name):
    hf, model, _ = models[name]
    ids = _ids(rng)
    pixels = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(pixels))
        t_feat = hf.get_text_features(input_ids=torch.from_numpy(ids)).pooler_output.numpy()
        i_feat = hf.get_image_features(pixel_values=torch.from_numpy(pixels)).pooler_output.numpy()
    ids_t, px = Tensor.from_numpy(ids.astype(np.uint32)), Tensor.from_numpy(pixels)
    # eager
    np.testing.assert_allclose(model.get_text_features(ids_t).numpy(), t_feat, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(model.get_image_features(px).numpy(), i_feat, atol=1e-4, rtol=1e-4)
    lpt, lpi = model.forward(px, ids_t)
    np.testing.assert_allclose(lpt.numpy(), ref.logits_per_text.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(lpi.numpy(), ref.logits_per_image.numpy(), atol=1e-4, rtol=1e-4)
    # compiled
    _, lpi_j = clip.forward_jit(model, px, ids_t)
    np.testing.assert_allclose(lpi_j.numpy(), ref.logits_per_image.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(clip.text_features_jit(model, ids_t).numpy(), t_feat, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(clip.image_features_jit(model, px).numpy(), i_feat, atol=1e-4, rtol=1e-4)


def test_padding_mask_matches_transformers(models, rng):
    hf, model, _ = models["eos"]
    ids = _ids(rng)
    mask = (np.cumsum(ids == EOS, axis=1) <= 1).astype(np.int64)  # keep up to the first EOS
    with torch.no_grad():
        ref = hf.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    out = model.get_text_features(Tensor.from_numpy(ids.astype(np.uint32)), Tensor.from_numpy(mask.astype(np.uint8)))
    np.testing.assert_allclose(out.numpy(), ref.pooler_output.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32, np.uint8, np.uint32, bool])
def test_padding_mask_of_every_dtype_matches_transformers(models, rng, dtype):
    """A (B, S) padding mask means 1 = keep, 0 = pad in every dtype, as in transformers (a float mask
    was added to the scores: 0.48 off), eager and compiled; a mask of another shape is named."""
    hf, model, _ = models["eos"]
    ids = np.array([[BOS, 3, 4, 5, EOS, EOS], [BOS, 7, 8, EOS, EOS, EOS]])
    mask = np.array([[1, 0, 1, 1, 1, 0], [1, 1, 0, 1, 0, 0]])
    with torch.no_grad():
        ref = hf.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        ref = ref.pooler_output.numpy()
    ids_t = Tensor.from_numpy(ids.astype(np.uint32))
    mask_t = Tensor.from_numpy(mask.astype(dtype))
    np.testing.assert_allclose(model.get_text_features(ids_t, mask_t).numpy(), ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(clip.text_features_jit(model, ids_t, mask_t).numpy(), ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(model.get_text_features(ids_t, mask.astype(dtype)).numpy(), ref, atol=1e-4, rtol=1e-4)
    # a plain array mask passed into jax.jit (traced): as eagerly (was a TracerArrayConversionError)
    import jax

    jitted = jax.jit(lambda m, i, a: m.get_text_features(i, a))(model, ids_t, mask.astype(dtype))
    np.testing.assert_allclose(jitted.numpy(), ref, atol=1e-4, rtol=1e-4)
    pixels = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    px = Tensor.from_numpy(pixels)
    with torch.no_grad():
        lpi = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 pixel_values=torch.from_numpy(pixels)).logits_per_image.numpy()  # fmt: skip
    np.testing.assert_allclose(model.forward(px, ids_t, mask_t)[1].numpy(), lpi, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(clip.forward_jit(model, px, ids_t, mask_t)[1].numpy(), lpi, atol=1e-4, rtol=1e-4)
    with pytest.raises(errors.UnexpectedShape, match=r"attention_mask must be \(batch, seq\).*got: \[2, 5\]"):
        model.get_text_features(ids_t, Tensor.from_numpy(mask[:, :5].astype(dtype)))


def test_bad_ids_and_float_images_are_named(models, rng):
    """The compiled text entry checks the ids' values (id 40 of 40 was clamped); float HWC pixels given
    to preprocess are refused there, not reported by the model as an image to resize."""
    _, model, _ = models["eos"]
    ids = Tensor.from_numpy(np.array([[BOS, VOCAB, EOS]], np.uint32))
    with pytest.raises(errors.InvalidIndex, match="clip text_model: token ids invalid index 40 with dim size 40"):
        clip.text_features_jit(model, ids)
    with pytest.raises(errors.InvalidIndex, match="clip text_model: token ids invalid index 40"):
        clip.forward_jit(model, Tensor.zeros((1, 3, 32, 32), DType.F32, Device.Cpu), ids)
    hwc = rng.random((40, 40, 3)).astype(np.float32)
    with pytest.raises(
        errors.UnexpectedShape, match=r"clip.preprocess: float pix.*\(H, W, 3\) uint8.*got: \[40, 40, 3\]"
    ):
        clip.preprocess(hwc, 32)
    with pytest.raises(errors.UnexpectedShape, match=r"\(3, 32, 32\) or \(batch, 3, 32, 32\).*got: \[1, 3, 40, 40\]"):
        clip.preprocess(Tensor.zeros((1, 3, 40, 40), DType.F32, Device.Cpu), 32)
    assert clip.preprocess(np.zeros((3, 32, 32), np.float32), 32).dims() == [1, 3, 32, 32]


def _image(rng, h=45, w=60):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("hw", [(45, 60), (70, 33), (20, 20)])
def test_preprocess_matches_clip_image_processor(rng, hw):
    from PIL import Image

    from candlejax import vision

    img = _image(rng, *hw)
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    ref = proc(images=Image.fromarray(img), return_tensors="np")["pixel_values"]
    out = clip.preprocess(img, 32).numpy()
    assert out.shape == ref.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # a (3, H, W) u8 Tensor (vision.load_image's layout) is an image too; float pixels pass through
    np.testing.assert_allclose(clip.preprocess(vision.image_to_tensor(img), 32).numpy(), out, atol=0)
    np.testing.assert_array_equal(clip.preprocess(ref[0], 32).numpy(), ref)


def test_zero_shot_matches_transformers(models, rng):
    hf, model, d = models["eos"]
    from PIL import Image

    labels = ["a photo of a cat", "a photo of a big red dog", "car"]
    img = _image(rng)
    tok = _tiny_tokenizer()
    enc = [tok.encode(t).ids for t in labels]
    s = max(map(len, enc))
    ids = np.array([e + [EOS] * (s - len(e)) for e in enc])
    mask = np.array([[1] * len(e) + [0] * (s - len(e)) for e in enc])
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    px = proc(images=Image.fromarray(img), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), pixel_values=px)
    ref_probs = ref.logits_per_image.softmax(-1)[0].numpy()
    probs = clip.zero_shot(model, img, labels, tokenizer=tok)
    assert probs.dims() == (3,)
    np.testing.assert_allclose(probs.numpy(), ref_probs, atol=1e-5)
    # a tokenizer.json path and a PIL image give the same
    probs2 = clip.zero_shot(model, Image.fromarray(img), labels, tokenizer=str(d / "tokenizer.json"))
    np.testing.assert_allclose(probs2.numpy(), probs.numpy(), atol=1e-6)
    assert abs(float(probs.numpy().sum()) - 1.0) < 1e-5
    # the pipeline on a list of images, as transformers' zero-shot-image-classification pipeline:
    # one row of probabilities (one ranking) per image, in order; the grayscale image as its RGB copy
    from candlejax.pipelines import ZeroShotClassifier

    gray = Image.fromarray(_image(rng)).convert("L")
    images = [Image.fromarray(img), gray]
    pxs = proc(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        refs = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), pixel_values=pxs)
    ref_rows = refs.logits_per_image.softmax(-1).numpy()
    clf = ZeroShotClassifier(model, tok)
    rows = clf.probs(images, labels)
    assert rows.shape == (2, 3)
    np.testing.assert_allclose(rows, ref_rows, atol=1e-5)
    ranked = clf(tuple(images), labels)
    assert [[lab for lab, _ in r] for r in ranked] == [[labels[i] for i in np.argsort(-row)] for row in ref_rows]
    with pytest.raises(errors.InvalidArgument, match="ZeroShotClassifier: an empty list of images"):
        clf([], labels)


def test_arrays_instead_of_tensors_are_named(models, rng):
    """Candle's CLIP takes ``&Tensor``: a numpy array raised ``AttributeError: 'numpy.ndarray' object
    has no attribute 'rank'`` (or ``'dim'``) from inside the model."""
    _, model, _ = models["eos"]
    ids = _ids(rng, 1).astype(np.uint32)
    pixels = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    t_ids, t_px = Tensor.from_numpy(ids), Tensor.from_numpy(pixels)
    for call in (lambda: model.get_text_features(ids), lambda: model.forward(t_px, ids),
                 lambda: clip.text_features_jit(model, ids), lambda: clip.forward_jit(model, t_px, ids)):  # fmt: skip
        with pytest.raises(errors.Error, match=r"clip text_model: input_ids must be a Tensor .*got ndarray"):
            call()
    for call in (lambda: model.get_image_features(pixels), lambda: model.forward(pixels, t_ids),
                 lambda: clip.image_features_jit(model, pixels),
                 lambda: clip.forward_jit(model, pixels, t_ids)):  # fmt: skip
        with pytest.raises(errors.Error, match=r"clip vision_model: pixel_values must be a Tensor .*got ndarray"):
            call()


def test_bad_input(models, rng):
    _, model, _ = models["eos"]
    tok = _tiny_tokenizer()
    with pytest.raises(errors.Error, match="label list is empty"):
        clip.zero_shot(model, _image(rng), [], tokenizer=tok)
    with pytest.raises(errors.Error, match="list of strings"):
        clip.zero_shot(model, _image(rng), "cat,dog", tokenizer=tok)
    with pytest.raises(errors.Error, match=r"pixel_values must be \(batch, 3, 32, 32\)"):
        model.get_image_features(Tensor.zeros((1, 3, 40, 40), DType.F32, Device.Cpu))
    with pytest.raises(errors.Error, match=r"pixel_values must be \(batch, 3, 32, 32\)"):
        clip.image_features_jit(model, Tensor.zeros((1, 4, 32, 32), DType.F32, Device.Cpu))
    with pytest.raises(errors.Error, match=r"\(H, W, 3\) uint8"):
        clip.zero_shot(model, np.zeros((20, 20, 4), np.uint8), ["cat"], tokenizer=tok)
    with pytest.raises(errors.Error, match=r"no such file '/nonexistent/cat\.png'"):
        clip.zero_shot(model, "/nonexistent/cat.png", ["cat"], tokenizer=tok)
    with pytest.raises(errors.Error, match="sequence length 20"):
        model.get_text_features(Tensor.zeros((1, 20), DType.U32, Device.Cpu))


def _from_memory(d) -> clip.ClipModel:
    tensors = {k: np.asarray(v) for k, v in cj_safetensors.load(d / "model.safetensors", Device.Cpu).items()}
    return clip.ClipModel.load(VarBuilder.from_tensors(tensors), clip.ClipConfig.from_json_file(d / "config.json"))


def test_zero_shot_takes_the_tokenizer_of_the_checkpoint_folder(models, rng):
    _, model, d = models["eos"]
    labels = ["a photo of a cat", "a red car"]
    img = _image(rng)
    expected = clip.zero_shot(model, img, labels, tokenizer=_tiny_tokenizer()).numpy()
    # loaded with .load(vb, config) from the folder's safetensors: its tokenizer.json is the default
    assert model.path == str(d)
    np.testing.assert_allclose(clip.zero_shot(model, img, labels).numpy(), expected, atol=1e-6)
    # weights from memory: no folder, so a tokenizer must be given
    mem = _from_memory(d)
    assert mem.path == ""
    with pytest.raises(errors.Error, match=r"clip.zero_shot: pass tokenizer= .*from_pretrained"):
        clip.zero_shot(mem, img, labels)
    # loaded from the folder: its tokenizer.json is the default
    m2 = clip.ClipModel.from_pretrained(d)
    assert m2.path == str(d)
    np.testing.assert_allclose(clip.zero_shot(m2, img, labels).numpy(), expected, atol=1e-6)
    # a folder without tokenizer.json says so
    bare = d.parent / "clip_no_tokenizer"
    bare.mkdir(exist_ok=True)
    for f in ("config.json", "model.safetensors"):
        (bare / f).write_bytes((d / f).read_bytes())
    with pytest.raises(errors.Error, match=r"has no tokenizer\.json"):
        clip.zero_shot(clip.ClipModel.from_pretrained(bare), img, labels)
    with pytest.raises(errors.Error, match="no such checkpoint folder"):
        clip.ClipModel.from_pretrained(d / "missing")


def test_zero_shot_pipeline_caches_the_labels(models, rng):
    from candlejax.pipelines import ZeroShotClassifier

    _, model, d = models["eos"]
    labels = ["a photo of a cat", "a photo of a big red dog", "car"]
    clf = ZeroShotClassifier.from_pretrained(d)
    feats = clf.text_features(labels)
    for _ in range(2):
        img = _image(rng)
        want = clip.zero_shot(model, img, labels, tokenizer=_tiny_tokenizer()).numpy()
        np.testing.assert_allclose(clf.probs(img, labels), want, atol=1e-5)
        ranked = clf(img, labels)
        assert [lab for lab, _ in ranked] == [labels[i] for i in np.argsort(-want, kind="stable")]
    assert clf.text_features(labels) is feats  # encoded once
    with pytest.raises(errors.Error, match="label list is empty"):
        clf(_image(rng), [])
    assert ZeroShotClassifier(model).probs(img, labels).shape == (3,)  # the folder's tokenizer.json
    with pytest.raises(errors.Error, match="ZeroShotClassifier: pass tokenizer="):
        ZeroShotClassifier(_from_memory(d))
    keep_none = ZeroShotClassifier(model, cache_size=0)  # popped from the empty cache (StopIteration)
    np.testing.assert_allclose(keep_none.probs(img, labels), want, atol=1e-5)
    assert keep_none._text == {}


def test_a_pipelines_tokenizer_settings_stay_its_own(models, rng):
    """Each pipeline reads its own copy of the folder's tokenizer.json: truncating one pipeline's
    tokenizer (as a user may, on ``clf.tokenizer``) changes neither another pipeline's nor
    ``clip.zero_shot``'s, as two ``AutoTokenizer.from_pretrained`` calls give two objects."""
    from candlejax.pipelines import ZeroShotClassifier
    from candlejax.tokenizer import TruncationParams

    _, model, _ = models["eos"]
    labels = ["a photo of a cat", "a photo of a big red dog", "car"]
    img = _image(rng)
    want = clip.zero_shot(model, img, labels, tokenizer=_tiny_tokenizer()).numpy()
    a, b = ZeroShotClassifier(model), ZeroShotClassifier(model)
    assert a.tokenizer is not b.tokenizer
    a.tokenizer.with_truncation(TruncationParams(max_length=2))
    np.testing.assert_allclose(b.probs(img, labels), want, atol=1e-5)
    np.testing.assert_allclose(clip.zero_shot(model, img, labels).numpy(), want, atol=1e-5)


def test_config_from_json_keys(models):
    _, _, d = models["argmax"]
    raw = json.loads((d / "config.json").read_text())
    c = clip.ClipConfig.from_dict(raw)
    assert c.text_config.eos_token_id == 2 and c.vision_config.patch_size == 8 and c.projection_dim == 24
    assert c.text_config.hidden_act == "gelu"
    with pytest.raises(errors.Error, match="not a multiple"):
        clip.ClipConfig.from_dict({"text_config": {"hidden_size": 30, "num_attention_heads": 4}})


def test_config_dict_keys_win_as_in_transformers():
    """Old checkpoints (openai/clip-vit-large-patch14) carry ``text_config_dict`` / ``vision_config_dict``
    beside ``text_config`` / ``vision_config``: transformers builds each tower from the ``*_dict`` and
    the tower's defaults (``text_config``'s eos_token_id 2 and layer_norm_eps became 49407 and 1e-3;
    ``text_config`` had won: argmax pooling, eps 1e-5)."""
    import copy

    raw = {
        "projection_dim": 16,
        "text_config": dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=16, eos_token_id=2, hidden_act="gelu"),
        "text_config_dict": dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=16, layer_norm_eps=1e-3),
        "vision_config": dict(hidden_size=48, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, layer_norm_eps=1e-2),
        "vision_config_dict": dict(hidden_size=48, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                                   image_size=32, patch_size=8, hidden_act="gelu"),
    }  # fmt: skip
    ref = transformers.CLIPConfig.from_dict(copy.deepcopy(raw))  # it updates the dicts it is given
    c = clip.ClipConfig.from_dict(raw)
    for ours, theirs in ((c.text_config, ref.text_config), (c.vision_config, ref.vision_config)):
        for f in dataclasses.fields(ours):
            assert getattr(ours, f.name) == getattr(theirs, f.name), f.name
    assert (c.text_config.eos_token_id, c.text_config.layer_norm_eps, c.text_config.hidden_act) == (
        49407, 1e-3, "quick_gelu")  # fmt: skip
    assert (c.vision_config.layer_norm_eps, c.vision_config.hidden_act) == (1e-5, "gelu")


def test_cli(models, tmp_path, rng):
    _, model, d = models["eos"]
    from PIL import Image

    path = tmp_path / "img.png"
    img = _image(rng)
    Image.fromarray(img).save(path)
    labels = ["a photo of a cat", "a photo of a dog"]
    expected = clip.zero_shot(model, img, labels, tokenizer=_tiny_tokenizer()).numpy()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH")] if p)}
    r = subprocess.run(
        [sys.executable, "-m", "candlejax.models.clip", str(path), "--model", str(d), "--labels", ",".join(labels)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ":" in ln]
    got = {ln.rsplit(":", 1)[0].strip(): float(ln.rsplit(":", 1)[1]) for ln in lines}
    for lab, p in zip(labels, expected, strict=True):
        assert abs(got[lab] - p) < 1e-3
    bad = subprocess.run(
        [sys.executable, "-m", "candlejax.models.clip", str(path), "--model", str(d), "--labels", ""],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert bad.returncode != 0 and "label list is empty" in bad.stderr


def test_console_subcommand(models, tmp_path, rng, capsys):
    from PIL import Image

    from candlejax import cli

    _, model, d = models["eos"]
    path = tmp_path / "img.png"
    img = _image(rng)
    Image.fromarray(img).save(path)
    labels = ["a photo of a cat", "a car"]
    expected = clip.zero_shot(model, img, labels, tokenizer=_tiny_tokenizer()).numpy()
    assert cli.main(["clip", str(path), "--model", str(d), "--labels", ",".join(labels)]) == 0
    got = {ln.rsplit(":", 1)[0].strip(): float(ln.rsplit(":", 1)[1]) for ln in capsys.readouterr().out.splitlines()}
    assert got == pytest.approx(dict(zip(labels, map(float, expected))), abs=1e-5)
    assert cli.main(["clip", str(tmp_path / "missing.png"), "--model", str(d), "--labels", "a"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("candlejax clip: error:") and "no such file" in err and len(err.splitlines()) == 1


def test_candles_presets_and_encoder_config():
    """``ClipTextConfig::vit_base_patch32``, ``ClipVisionConfig::{vit_base_patch32,
    clip_vit_large_patch14_336}`` and ``EncoderConfig``'s accessors, as in Candle's clip sources."""
    t, v, large = (clip.ClipTextConfig.vit_base_patch32(), clip.ClipVisionConfig.vit_base_patch32(),
                   clip.ClipVisionConfig.clip_vit_large_patch14_336())  # fmt: skip
    assert (t.vocab_size, t.embed_dim, t.intermediate_size, t.max_position_embeddings) == (49408, 512, 2048, 77)
    assert (t.num_hidden_layers, t.num_attention_heads, t.activation) == (12, 8, Activation.QuickGelu)
    assert (v.embed_dim, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads) == (768, 3072, 12, 12)
    assert (v.num_channels, v.image_size, v.patch_size) == (3, 224, 32)
    assert (large.embed_dim, large.intermediate_size, large.num_hidden_layers, large.num_attention_heads) == (
        1024, 4096, 24, 16)  # fmt: skip
    assert (large.image_size, large.patch_size, large.activation) == (336, 14, Activation.QuickGelu)
    assert clip.ClipConfig.vit_base_patch32() == clip.ClipConfig(t, v)
    for e, c in ((clip.EncoderConfig.Text(t), t), (clip.EncoderConfig.Vision(large), large)):
        assert (e.embed_dim(), e.num_attention_heads(), e.intermediate_size(), e.num_hidden_layers()) == (
            c.hidden_size, c.num_attention_heads, c.intermediate_size, c.num_hidden_layers)  # fmt: skip
        assert e.activation() == Activation.QuickGelu
    assert clip.EncoderConfig(t) == clip.EncoderConfig.Text(t) and isinstance(clip.EncoderConfig(v), clip.EncoderConfig)
    match clip.EncoderConfig(v):
        case clip.EncoderConfig.Text(_):
            raise AssertionError("a vision config matched Text")
        case clip.EncoderConfig.Vision(c):
            assert c is v
    with pytest.raises(errors.Error, match="takes a ClipTextConfig"):
        clip.EncoderConfig.Text(v)


@pytest.fixture(scope="module")
def towers(models):
    """The "eos" checkpoint's towers built with Candle's constructors (``::new``)."""
    hf, _model, d = models["eos"]
    config = clip.ClipConfig.from_json_file(d / "config.json")
    vb = VarBuilder.from_mmaped_safetensors([str(d / "model.safetensors")], DType.F32, Device.Cpu)
    text = clip.ClipTextTransformer.new(vb.pp("text_model"), config.text_config)
    vision = clip.ClipVisionTransformer.new(vb.pp("vision_model"), config.vision_config)
    encoder = clip.ClipEncoder.new(vb.pp("text_model.encoder"), clip.EncoderConfig.Text(config.text_config))
    return hf, config, text, vision, encoder


def test_vision_output_hidden_states_match_transformers(towers, rng):
    """``ClipVisionTransformer::output_hidden_states``: each layer's output, then the pooled output."""
    import jax

    hf, config, _text, vision, _encoder = towers
    pixels = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        vis = hf.vision_model(pixel_values=torch.from_numpy(pixels), output_hidden_states=True)
    got = jax.jit(lambda m, x: m.output_hidden_states(x))(vision, Tensor.from_numpy(pixels))
    assert len(got) == config.vision_config.num_hidden_layers + 1
    for g, r in zip(got, [*vis.hidden_states[1:], vis.pooler_output], strict=True):
        np.testing.assert_allclose(g.numpy(), r.numpy(), atol=1e-4, rtol=1e-4)


def test_text_forward_with_mask_and_encoder_states_match_transformers(towers, rng):
    """``ClipTextTransformer::forward_with_mask`` (keys after ``mask_after`` ignored: transformers'
    ``attention_mask``), ``ClipEncoder::output_hidden_states`` and ``div_l2_norm``."""
    import jax

    hf, _config, text, _vision, encoder = towers
    ids = _ids(rng)
    b, s = ids.shape
    with torch.no_grad():
        txt = hf.text_model(input_ids=torch.from_numpy(ids), output_hidden_states=True)
        mask = torch.from_numpy((np.arange(s) <= 3)[None].repeat(b, 0).astype(np.int64))
        part = hf.text_model(input_ids=torch.from_numpy(ids), attention_mask=mask).last_hidden_state.numpy()

    @jax.jit
    def run(text, encoder, ids_t):
        return text.forward_with_mask(ids_t, 3), encoder.output_hidden_states(text.embeddings(ids_t), causal=True)

    masked, states = run(text, encoder, Tensor.from_numpy(ids.astype(np.uint32)))
    np.testing.assert_allclose(masked.numpy(), part, atol=1e-4, rtol=1e-4)
    for g, r in zip(states, txt.hidden_states[1:], strict=True):
        np.testing.assert_allclose(g.numpy(), r.numpy(), atol=1e-4, rtol=1e-4)
    final = text.final_layer_norm(states[-1]).numpy()  # = forward_with_mask(ids, usize::MAX): nothing more masked
    np.testing.assert_allclose(final, txt.last_hidden_state.numpy(), atol=1e-4, rtol=1e-4)
    # Candle's usize: a negative or fractional mask_after raises (-1 masked nothing more, 3.7 acted as 3)
    ids_t = Tensor.from_numpy(ids.astype(np.uint32))
    with pytest.raises(errors.Error, match=r"forward_with_mask: mask_after must be >= 0, got -1"):
        text.forward_with_mask(ids_t, -1)
    with pytest.raises(errors.NotAnInteger, match="mask_after"):
        text.forward_with_mask(ids_t, 3.7)
    v = rng.standard_normal((3, 5)).astype(np.float32)
    want = torch.nn.functional.normalize(torch.from_numpy(v), dim=-1).numpy()
    np.testing.assert_allclose(jax.jit(clip.div_l2_norm)(Tensor.from_numpy(v)).numpy(), want, rtol=1e-6)


def test_clip_config_image_size_and_pad_with():
    """Candle's ``ClipConfig { image_size, .. }`` (224 for ``vit_base_patch32``; the clip example
    reads ``config.image_size``) and ``ClipTextConfig { pad_with: None, .. }``
    (candle-transformers/src/models/clip/{mod,text_model}.rs)."""
    c = clip.ClipConfig.vit_base_patch32()
    assert c.image_size == 224
    assert c.text_config.pad_with is None
    big = clip.ClipConfig(vision_config=clip.ClipVisionConfig.clip_vit_large_patch14_336())
    assert big.image_size == 336


def test_clip_example_main_as_written(models):
    """candle-examples/examples/clip/main.rs: ``load_images(&vec_imgs, config.image_size)``
    (``Tensor::from_vec(rgb, (h, w, 3)).permute((2, 0, 1)).to_dtype(F32).affine(2/255, -1)``), the
    sequences padded with ``get_vocab(true)["<|endoftext|>"]``, ``ClipModel::new(vb, &config)``,
    ``softmax(&logits_per_image, 1)`` of ``model.forward(&images, &input_ids)``: transformers' numbers."""
    from candlejax.nn.ops import softmax
    from candlejax.tokenizer import Tokenizer

    hf, _, d = models["eos"]
    config = clip.ClipConfig.from_json_file(d / "config.json")
    assert config.image_size == 32 and clip.ClipConfig.vit_base_patch32().image_size == 224
    rng = np.random.default_rng(0)
    rgb = [rng.integers(0, 256, config.image_size * config.image_size * 3).astype(np.uint8) for _ in range(2)]
    images = []
    for img in rgb:
        (height, width) = (config.image_size, config.image_size)
        t = Tensor.from_vec(img.tolist(), (height, width, 3), Device.Cpu).permute((2, 0, 1))
        images.append(t.to_dtype(DType.F32).affine(2.0 / 255.0, -1.0))
    images = Tensor.stack(images, 0).to_device(Device.Cpu)
    vb = VarBuilder.from_mmaped_safetensors([str(d / "model.safetensors")], DType.F32, Device.Cpu)
    model = clip.ClipModel.new(vb, config)
    tokenizer = Tokenizer.from_file(d / "tokenizer.json")
    pad_id = tokenizer.get_vocab(True)["<eos>"]
    tokens = [tokenizer.encode(seq, True).get_ids() for seq in ["a photo of a cat", "the big red car", "a dog"]]
    max_len = max(len(v) for v in tokens)
    for token_vec in tokens:
        token_vec.extend([pad_id] * (max_len - len(token_vec)))
    input_ids = Tensor.new(tokens, Device.Cpu)
    (_logits_per_text, logits_per_image) = model.forward(images, input_ids)
    softmax_image_vec = softmax(logits_per_image, 1).flatten_all().to_vec1()
    pixels = np.stack([a.reshape(32, 32, 3).transpose(2, 0, 1) for a in rgb]).astype(np.float64) * (2 / 255) - 1
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(tokens), pixel_values=torch.from_numpy(pixels.astype(np.float32)))
    np.testing.assert_allclose(softmax_image_vec, torch.softmax(ref.logits_per_image, 1).flatten().numpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["eos", "argmax"])
def test_zero_shot_label_lists_of_new_sizes_reuse_the_compiled_programs(models, rng, name, jax_compiles):
    """Label lists of 3 or 4 labels of 3 to 8 tokens run the programs compiled for the first list
    (labels padded to a power-of-two count, ids to a power-of-two length with the EOS id, mask 0),
    for ``clip.zero_shot`` and ``ZeroShotClassifier``; the probabilities are transformers' CLIPModel's
    on the unpadded ids, for pooling at the EOS id and at the largest id (``eos_token_id == 2``)."""
    from candlejax.pipelines import ZeroShotClassifier

    hf, model, _ = models[name]
    tok = _tiny_tokenizer()
    clf = ZeroShotClassifier(model, tok)
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    img = _image(rng)
    px = proc(images=img, return_tensors="pt")["pixel_values"]
    label_sets = [["a photo of a cat", "dog", "car"], ["cat", "the big red dog", "small car", "a photo"],
                  ["red", "big", "photo of the small dog"], ["a cat", "a dog", "a car", "the"]]  # fmt: skip
    for i, labels in enumerate(label_sets):
        jax_compiles.clear()
        got = clip.zero_shot(model, img, labels, tokenizer=tok).numpy()
        rows = clf.probs([img, img], labels)
        if i > 0:
            assert jax_compiles == [], [c[:80] for c in jax_compiles]
        enc = [tok.encode(t).ids for t in labels]
        s = max(map(len, enc))
        ids = np.array([e + [e[-1]] * (s - len(e)) for e in enc])
        mask = np.array([[1] * len(e) + [0] * (s - len(e)) for e in enc])
        with torch.no_grad():
            ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), pixel_values=px)
        want = ref.logits_per_image.softmax(-1)[0].numpy()
        assert got.shape == (len(labels),) and rows.shape == (2, len(labels))
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(rows, [want, want], atol=1e-5)
        assert clf.text_features(labels).shape == (len(labels), 24)
