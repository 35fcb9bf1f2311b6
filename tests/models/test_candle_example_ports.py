"""Candle's model examples (candle-examples/examples/{quantized,llama,bert,yolo-v8,blip,resnet,
segment-anything}/main.rs), their model-running lines ported as written, on tiny fixtures: each
gives what the candlejax spelling gives, or raises a candlejax error naming it."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from test_gguf_validation import _meta, _tensors

from candlejax import D, Device, DType, Tensor, errors
from candlejax.generation import LogitsProcessor, Sampling, TokenOutputStream, generate
from candlejax.io import gguf
from candlejax.nn import VarBuilder, VarMap
from candlejax.nn.ops import softmax

device = Device.Cpu


# ------------------------------------------------------------------------------------------------
# quantized/main.rs
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    p = tmp_path_factory.mktemp("ports") / "tiny.gguf"
    gguf.write(str(p), _meta(), _tensors())
    return p


def test_quantized_example_load_and_tokenizer(tiny_gguf):
    from candlejax.models import quantized_llama as model
    from candlejax.quantized import gguf_file

    with open(tiny_gguf, "rb") as file:
        content = gguf_file.Content.read(file)
        total_size_in_bytes = 0
        for tensor in content.tensor_infos.values():
            elem_count = tensor.shape.elem_count()
            total_size_in_bytes += elem_count * tensor.ggml_dtype.type_size() // tensor.ggml_dtype.block_size()
        assert total_size_in_bytes == sum(t.size_in_bytes() for t in content.tensor_infos.values()) == 4 * sum(
            a.size for a in _tensors().values())  # fmt: skip
        info = content.tensor_infos["blk.0.attn_q.weight"]
        assert info.shape == (16, 16) and info.shape.dims2() == (16, 16) and info.shape.rank() == 2
        m = model.ModelWeights.from_gguf(content, file, device)
        content.close()
    assert model.MAX_SEQ_LEN == 4096
    tos = TokenOutputStream(m.tokenizer)
    tokens = tos.tokenizer().encode("abc abd", True)
    assert tokens.get_ids() == tokens == m.tokenizer.encode("abc abd") == [5, 6, 4, 3]
    assert tokens.get_tokens() == ["abc", "Ġ", "ab", "d"] and tokens.ids == [5, 6, 4, 3]
    assert tos.tokenizer().get_vocab(True)["</s>"] == 8 == tos.tokenizer.token_to_id("</s>")
    assert tos.tokenizer() is m.tokenizer


def test_quantized_example_prompt_loop_matches_generate(tiny_gguf):
    from candlejax.models import llama, quantized_llama
    from candlejax.models.utils import apply_repeat_penalty

    m = quantized_llama.ModelWeights.from_gguf(tiny_gguf, device, layers="unrolled")
    prompt_tokens = m.tokenizer.encode("abc abd").get_ids()
    for sampling in (Sampling.All(0.8),):
        logits_processor = LogitsProcessor.from_sampling(299792458, sampling)
        logits = m.forward(Tensor.new(prompt_tokens, device).unsqueeze(0), 0).squeeze(0)
        next_token = logits_processor.sample(logits)
        all_tokens = [next_token]
        for index in range(3):
            input = Tensor.new([next_token], device).unsqueeze(0)
            logits = m.forward(input, len(prompt_tokens) + index).squeeze(0)
            logits = apply_repeat_penalty(logits, 1.0, all_tokens[max(len(all_tokens) - 64, 0):])
            next_token = logits_processor.sample(logits)
            all_tokens.append(next_token)
        want = generate(llama.step, m, m.new_cache(1, 64), prompt_tokens, 4,
                        LogitsProcessor.from_sampling(299792458, sampling))  # fmt: skip
        assert all_tokens == list(want), sampling


# ------------------------------------------------------------------------------------------------
# llama/main.rs
# ------------------------------------------------------------------------------------------------
def test_llama_example_eos_tokens_and_config():
    from candlejax.models import llama as model

    config = model.LlamaConfig.from_dict({"eos_token_id": [5, 7], "hidden_size": 64, "num_attention_heads": 4,
                                          "transformers_version": "4"}).into_config(False)  # fmt: skip
    assert config.eos_token_id == [5, 7] and isinstance(config.eos_token_id, model.LlamaEosToks.Multiple)

    def stops(eos_token_id, next_token):
        match eos_token_id:
            case model.LlamaEosToks.Single(eos_tok_id) if next_token == eos_tok_id:
                return True
            case model.LlamaEosToks.Multiple(eos_ids) if next_token in eos_ids:
                return True
            case _:
                return False

    assert stops(config.eos_token_id, 7) and not stops(config.eos_token_id, 2)
    single = model.Config(eos_token_id=2).eos_token_id
    assert single == 2 and isinstance(single, int) and stops(single, 2) and not stops(single, 5)
    assert stops(model.LlamaEosToks.Single(3), 3) and model.Config(eos_token_id=None).eos_token_id is None
    with pytest.raises(errors.Error, match=r"LlamaConfig.from_json_file\(path\)|Config.from_json_file\(path\)"):
        model.LlamaConfig(**{"hidden_size": 64, "num_attention_heads": 4, "transformers_version": "4"})


# ------------------------------------------------------------------------------------------------
# bert/main.rs (the real all-MiniLM-L6-v2 weights)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    from candlejax.models import bert, weights
    from candlejax.tokenizer import Tokenizer

    d = weights.path("all-MiniLM-L6-v2")
    config = bert.Config.from_dict(json.loads(open(d / "config.json").read()))
    vb = VarBuilder.from_mmaped_safetensors([d / "model.safetensors"], bert.DTYPE, device)
    return d, bert.BertModel.load(vb, config), Tokenizer.from_file(d / "tokenizer.json")


def test_bert_example_prompt_runs_unpadded(minilm):
    from candlejax.models import bert

    d, model, tokenizer = minilm
    assert tokenizer.get_padding().strategy == 128  # sentence-transformers' file pads every text to 128
    with pytest.raises(errors.Error, match=r"Config.from_dict\(json.loads\(s\)\)"):
        bert.Config(**json.loads(open(d / "config.json").read()))
    tok = tokenizer.with_padding(None).with_truncation(None)
    assert tok is tokenizer and tokenizer.get_padding() is None and tokenizer.get_padding_mut() is None
    tokens = tok.encode("Here is a test sentence", True).get_ids()
    assert tokens == [101, 2182, 2003, 1037, 3231, 6251, 102]
    token_ids = Tensor.new(tokens, model.device).unsqueeze(0)
    ys = model.forward(token_ids, token_ids.zeros_like(), None)
    want = model.forward(np.asarray([tokens]), None, None)
    np.testing.assert_array_equal(np.asarray(ys.jax), np.asarray(want.jax))


def test_bert_example_sentences_pool_like_the_sentence_embedder(minilm):
    from candlejax.models import bert
    from candlejax.tokenizer import PaddingParams, PaddingStrategy

    d, model, tokenizer = minilm
    tokenizer.with_padding(PaddingParams(strategy=PaddingStrategy.Fixed(16)))
    pp = tokenizer.get_padding_mut()
    pp.strategy = PaddingStrategy.BatchLongest  # Candle: if let Some(pp) = tokenizer.get_padding_mut() {...}
    assert tokenizer.get_padding().strategy == PaddingStrategy.BatchLongest
    sentences = ["The cat sits outside", "A man is playing guitar", "I love pasta", "Do you like pizza?"]
    tokens = tokenizer.encode_batch(sentences, True)
    token_ids = Tensor.stack([Tensor.new(t.get_ids(), model.device) for t in tokens], 0)
    attention_mask = Tensor.stack([Tensor.new(t.get_attention_mask(), model.device) for t in tokens], 0)
    assert token_ids.dims() == (4, 7)
    embeddings = model.forward(token_ids, token_ids.zeros_like(), attention_mask)
    attention_mask_for_pooling = attention_mask.to_dtype(bert.DTYPE).unsqueeze(2)
    sum_mask = attention_mask_for_pooling.sum(1)
    embeddings = embeddings.broadcast_mul(attention_mask_for_pooling).sum(1).broadcast_div(sum_mask)
    embeddings = embeddings.broadcast_div(embeddings.sqr().sum_keepdim(1).sqrt())  # normalize_l2
    want = bert.SentenceEmbedder.from_dir(d).embed(sentences)
    np.testing.assert_allclose(np.asarray(embeddings.jax), np.asarray(want), atol=2e-6)
    e_i, e_j = embeddings.get(0), embeddings.get(1)
    sum_ij, sum_i2 = (e_i * e_j).sum_all().to_scalar(), (e_i * e_i).sum_all().to_scalar()
    cos = sum_ij / (sum_i2 * (e_j * e_j).sum_all().to_scalar()) ** 0.5
    assert abs(cos - float(np.dot(np.asarray(want)[0], np.asarray(want)[1]))) < 1e-5


# ------------------------------------------------------------------------------------------------
# yolo-v8/main.rs report_detect, blip/main.rs, resnet/main.rs, segment-anything/main.rs
# ------------------------------------------------------------------------------------------------
def test_yolo_example_report_detect_post_processing():
    from candlejax.models.object_detection import Bbox, iou, non_maximum_suppression
    # model.forward(&image_t)?.squeeze(0)? of a 3-class model: (4 + 3, predictions), boxes as (cx, cy, w, h)
    rng = np.random.default_rng(0)
    raw = np.concatenate([rng.uniform(10, 50, (2, 40)), rng.uniform(4, 30, (2, 40)), rng.uniform(0, 1, (3, 40))])
    pred = Tensor.from_numpy(raw.astype(np.float32)).to_device(Device.Cpu)
    (pred_size, npreds) = pred.dims2()
    nclasses = pred_size - 4
    bboxes: list[list[Bbox]] = [[] for _ in range(nclasses)]
    for index in range(npreds):
        p = pred.i((slice(None), index)).to_vec1()
        confidence = max(p[4:])
        if confidence > 0.25:
            class_index = max(range(nclasses), key=lambda i: (p[4 + i], -i))
            bboxes[class_index].append(Bbox(p[0] - p[2] / 2.0, p[1] - p[3] / 2.0, p[0] + p[2] / 2.0,
                                            p[1] + p[3] / 2.0, confidence, []))  # fmt: skip
    n_before = sum(map(len, bboxes))
    non_maximum_suppression(bboxes, 0.45)
    assert 0 < sum(map(len, bboxes)) <= n_before
    for bs in bboxes:  # sorted by confidence, no kept pair above the threshold
        assert all(a.confidence >= b.confidence for a, b in itertools.pairwise(bs))
        assert all(iou(a, b) <= 0.45 for i, a in enumerate(bs) for b in bs[i + 1 :])
    with pytest.raises(errors.Error, match=r"t\[\.\.\.\]"):
        pred.i((..., 0))  # Rust's `..` is slice(None)


def test_blip_example_caption_loop():
    from candlejax.models import blip

    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}
    config = blip.Config.from_dict({"text_config": {**tiny, "vocab_size": 12, "bos_token_id": 4, "sep_token_id": 5},
                                    "vision_config": {**tiny, "image_size": 32, "patch_size": 8}})  # fmt: skip
    model = blip.BlipForConditionalGeneration.new(config, VarBuilder.from_varmap(VarMap(seed=1), DType.F32, device))
    image = Tensor.from_numpy(np.random.default_rng(1).standard_normal((3, 32, 32)).astype(np.float32))
    image_embeds = image.unsqueeze(0).apply(model.vision_model())
    logits_processor = LogitsProcessor.new(1337, None, None)
    token_ids = [4]
    for index in range(8):
        context_size = 1 if index > 0 else len(token_ids)
        start_pos = max(len(token_ids) - context_size, 0)
        input_ids = Tensor.new(token_ids[start_pos:], device).unsqueeze(0)
        logits = model.text_decoder().forward(input_ids, image_embeds).squeeze(0)
        token = logits_processor.sample(logits.get(logits.dim(0) - 1))
        if token == 5:
            break
        token_ids.append(token)
    assert token_ids[1:] == blip.caption_ids(model, image, max_new_tokens=8)


def test_resnet_example_lines():
    from candlejax.models import resnet

    net = resnet.resnet18(10, VarBuilder.from_varmap(VarMap(seed=0), DType.F32, device))
    img = Tensor.from_numpy(np.random.default_rng(0).standard_normal((3, 16, 16)).astype(np.float32))
    prs = softmax(net.forward(img.unsqueeze(0)), D.Minus1).i(0).to_vec1()
    assert len(prs) == 10 and abs(sum(prs) - 1.0) < 1e-5


def test_sam_example_load_image_form_names_candlejax_spelling(tmp_path):
    from PIL import Image

    from candlejax.models import segment_anything as sam

    p = tmp_path / "img.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(p)
    with pytest.raises(errors.Error, match=r"sam.load_image\(path, device, resize_longest=1024\)"):
        sam.load_image(p, sam.IMAGE_SIZE)  # Candle's example: let (image, h, w) = load_image(path, Some(1024))
    assert sam.load_image(p, device, resize_longest=sam.IMAGE_SIZE).dims() == (3, 768, 1024)


@pytest.mark.parametrize("family,cls", [("whisper", "Config"), ("blip", "Config"), ("blip", "VisionConfig"),
                                        ("blip_text", "Config"), ("clip", "ClipConfig"), ("clip", "ClipTextConfig"),
                                        ("clip", "ClipVisionConfig")])  # fmt: skip
def test_config_from_a_json_dict_with_unknown_keys_names_from_dict(family, cls):
    """``serde_json::from_str::<Config>`` ignores unknown keys; ``Config(**json)`` raises naming the reader."""
    import importlib

    config = getattr(importlib.import_module(f"candlejax.models.{family}"), cls)
    with pytest.raises(errors.Error, match=rf"unknown keys \['architectures'\].*{cls}\.from_dict\(json\.loads\(s\)\)"):
        config(architectures=["X"])
    assert config.from_dict({"architectures": ["X"]}) == config.from_dict({})
