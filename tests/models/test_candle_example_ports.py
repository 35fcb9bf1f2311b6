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


def test_yolo_v8_example_pose_model_and_report_pose():
    """``use candle::{DType, Device, IndexOp, Module, Tensor}``; ``YoloV8Pose::load(vb, multiples, 1, (17, 3))``,
    the image tensor built as the example does, and report_pose's keypoint loop and NMS."""
    from candlejax import Module, ModuleT
    from candlejax.models.object_detection import Bbox, KeyPoint, non_maximum_suppression
    from candlejax.models.yolo.model import Multiples, YoloV8Pose

    assert Module is __import__("candlejax.nn", fromlist=["Module"]).Module and ModuleT.__name__ == "ModuleT"
    vb = VarBuilder.from_varmap(VarMap(seed=0), DType.F32, device)
    model = YoloV8Pose.load(vb, Multiples.n(), 1, (17, 3))
    assert isinstance(model, Module)
    data = np.random.default_rng(0).integers(0, 255, 64 * 96 * 3).astype(np.uint8).tolist()
    image_t = Tensor.from_vec(data, (64, 96, 3), device).permute((2, 0, 1))
    image_t = image_t.unsqueeze(0).to_dtype(DType.F32) * (1.0 / 255.0)
    pred = model.forward(image_t).squeeze(0).to_device(Device.Cpu)
    (pred_size, npreds) = pred.dims2()
    assert pred_size == 17 * 3 + 4 + 1 and npreds == (8 * 12) + (4 * 6) + (2 * 3)
    bboxes = []
    raw = np.asarray(pred.jax)
    for index in range(npreds):
        p = pred.i((slice(None), index)).to_vec1()
        confidence = p[4]
        if confidence > 0.25:
            keypoints = [KeyPoint(x=p[3 * i + 5], y=p[3 * i + 6], mask=p[3 * i + 7]) for i in range(17)]
            bboxes.append(Bbox(xmin=p[0] - p[2] / 2.0, ymin=p[1] - p[3] / 2.0, xmax=p[0] + p[2] / 2.0,
                               ymax=p[1] + p[3] / 2.0, confidence=confidence, data=keypoints))  # fmt: skip
    bboxes = [bboxes]
    non_maximum_suppression(bboxes, 0.45)
    for b in bboxes[0]:
        (col,) = np.flatnonzero(raw[4] == b.confidence)[:1]
        assert [(kp.x, kp.y, kp.mask) for kp in b.data] == [tuple(raw[5 + 3 * i : 8 + 3 * i, col]) for i in range(17)]


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


# ------------------------------------------------------------------------------------------------
# whisper/main.rs (Decoder::decode, apply_timestamp_rules) and multilingual.rs (detect_language)
# ------------------------------------------------------------------------------------------------
class _WhisperExampleDecoder:
    """Candle's example ``Decoder`` (greedy, ``t == 0``), line for line on ``m::model::Whisper``."""

    def __init__(self, model, tokenizer, device, language_token, timestamps, max_initial_timestamp_index):
        from candlejax.models import whisper as m

        self.no_timestamps_token = tokenizer.token_to_id(m.NO_TIMESTAMPS_TOKEN)
        suppress = set(model.config.suppress_tokens) | ({self.no_timestamps_token} if timestamps else set())
        suppress_tokens = [float("-inf") if i in suppress else 0.0 for i in range(model.config.vocab_size)]
        self.suppress_tokens = Tensor.new(suppress_tokens, device)
        self.model, self.tokenizer, self.language_token, self.timestamps = model, tokenizer, language_token, timestamps
        self.max_initial_timestamp_index = max_initial_timestamp_index
        self.sot_token = tokenizer.token_to_id(m.SOT_TOKEN)
        self.transcribe_token = tokenizer.token_to_id(m.TRANSCRIBE_TOKEN)
        self.eot_token = tokenizer.token_to_id(m.EOT_TOKEN)
        self.no_speech_token = next(tokenizer.token_to_id(t) for t in m.NO_SPEECH_TOKENS if tokenizer.token_to_id(t))

    def decode(self, mel):
        from candlejax.nn.ops import softmax

        audio_features = self.model.encoder.forward(mel, True)
        sample_len = self.model.config.max_target_positions // 2
        sum_logprob, no_speech_prob = 0.0, float("nan")
        tokens = [self.sot_token]
        if self.language_token is not None:
            tokens.append(self.language_token)
        tokens.append(self.transcribe_token)
        if not self.timestamps:
            tokens.append(self.no_timestamps_token)
        for i in range(sample_len):
            tokens_t = Tensor.new(tokens, mel.device())
            tokens_t = tokens_t.unsqueeze(0)
            ys = self.model.decoder.forward(tokens_t, audio_features, i == 0)
            if i == 0:
                logits = self.model.decoder.final_linear(ys.i(slice(None, 1))).i(0).i(0)
                no_speech_prob = softmax(logits, 0).i(self.no_speech_token).to_scalar()
            (_, seq_len, _) = ys.dims3()
            logits = self.model.decoder.final_linear(ys.i((slice(None, 1), slice(seq_len - 1, None)))).i(0).i(0)
            if self.timestamps:
                logits = self.apply_timestamp_rules(logits, tokens)
            logits = logits.broadcast_add(self.suppress_tokens)
            logits_v = logits.to_vec1()
            next_token = max(enumerate(logits_v), key=lambda iu: iu[1])[0]
            tokens.append(next_token)
            prob = softmax(logits, D.Minus1).i(next_token).to_scalar()
            if next_token == self.eot_token or len(tokens) > self.model.config.max_target_positions:
                break
            sum_logprob += np.log(prob)
        return tokens, sum_logprob / len(tokens), no_speech_prob

    def apply_timestamp_rules(self, input_logits, tokens):
        from candlejax.nn.ops import log_softmax

        device = input_logits.device().clone()
        timestamp_begin = self.no_timestamps_token + 1
        vocab_size = self.model.config.vocab_size
        sample_begin = 3 if self.language_token is not None else 2
        sampled_tokens = tokens[sample_begin:] if len(tokens) > sample_begin else []
        masks = []
        if sampled_tokens:
            last_was_timestamp = sampled_tokens[-1] >= timestamp_begin
            penultimate_was_timestamp = len(sampled_tokens) >= 2 and sampled_tokens[-2] >= timestamp_begin
            if last_was_timestamp:
                cut = (lambda i: i >= timestamp_begin) if penultimate_was_timestamp else (lambda i: i < self.eot_token)
                masks.append(Tensor.new([float("-inf") if cut(i) else 0.0 for i in range(vocab_size)], device))
            timestamp_tokens = [t for t in sampled_tokens if t >= timestamp_begin]
            if timestamp_tokens:
                paired = last_was_timestamp and not penultimate_was_timestamp
                timestamp_last = timestamp_tokens[-1] if paired else timestamp_tokens[-1] + 1
                masks.append(Tensor.new([float("-inf") if timestamp_begin <= i < timestamp_last else 0.0
                                         for i in range(vocab_size)], device))  # fmt: skip
        if len(tokens) == sample_begin:
            masks.append(Tensor.new([float("-inf") if i < timestamp_begin else 0.0 for i in range(vocab_size)], device))
            if self.max_initial_timestamp_index is not None:
                last_allowed = timestamp_begin + self.max_initial_timestamp_index
                if last_allowed < vocab_size:
                    masks.append(Tensor.new([float("-inf") if i > last_allowed else 0.0 for i in range(vocab_size)],
                                            device))  # fmt: skip
        logits = input_logits.clone()
        for mask in masks:
            logits = logits.broadcast_add(mask)
        log_probs = log_softmax(logits, 0)
        timestamp_log_probs = log_probs.narrow(0, timestamp_begin, vocab_size - timestamp_begin)
        text_log_probs = log_probs.narrow(0, 0, timestamp_begin)
        max_val = timestamp_log_probs.max(0)
        shifted = timestamp_log_probs.broadcast_sub(max_val)
        timestamp_logprob = max_val.broadcast_add(shifted.exp().sum(0).log()).to_scalar()
        max_text_token_logprob = text_log_probs.max(0).to_scalar()
        if timestamp_logprob > max_text_token_logprob:
            mask_tensor = Tensor.new([float("-inf") if i < timestamp_begin else 0.0 for i in range(vocab_size)], device)
            logits = logits.broadcast_add(mask_tensor)
        return logits


def test_whisper_example_decoder_and_detect_language(tmp_path):
    """The example's greedy ``decode`` (timestamp rules, ``max_initial_timestamp_index`` 50) gives
    OpenAI's greedy tokens and no-speech probability on transformers' logits (the test_whisper
    reference loop); ``detect_language`` picks transformers' most likely language token."""
    torch = pytest.importorskip("torch")
    import test_whisper as tw
    from transformers import WhisperForConditionalGeneration

    from candlejax.models import whisper as m
    from candlejax.models.whisper import Config, audio
    from candlejax.nn.ops import softmax
    from candlejax.tokenizer import Tokenizer

    tw._multilingual_model(tmp_path, seed=3, decoder_layers=1, max_target_positions=16)
    config = Config.from_dict(json.loads(open(tmp_path / "config.json").read()))
    tokenizer = Tokenizer.from_file(tmp_path / "tokenizer.json")
    pcm_data = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    mel = audio.pcm_to_mel(config, pcm_data, audio.mel_filters(config.num_mel_bins)).unsqueeze(0)
    vb = VarBuilder.from_mmaped_safetensors([tmp_path / "model.safetensors"], m.DTYPE, device)
    model = m.model.Whisper.load(vb, config)

    # multilingual.rs detect_language (three of its languages)
    (_bsize, _, seq_len) = mel.dims3()
    mel_l = mel.narrow(2, 0, min(seq_len, model.config.max_source_positions))
    language_token_ids = [tokenizer.token_to_id(f"<|{t}|>") for t in ("en", "de", "fr")]
    audio_features = model.encoder.forward(mel_l, True)
    tokens = Tensor.new([[tokenizer.token_to_id(m.SOT_TOKEN)]], mel_l.device())
    ys = model.decoder.forward(tokens, audio_features, True)
    logits = model.decoder.final_linear(ys.i(slice(None, 1))).i(0).i(0)
    logits = logits.index_select(Tensor.new(language_token_ids, mel_l.device()), 0)
    probs = softmax(logits, D.Minus1).to_vec1()
    hf = WhisperForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        e = hf.model.encoder  # its layers on 1500 frames (its forward wants 3000, Candle's any number)
        x = torch.nn.functional.gelu(e.conv1(torch.from_numpy(np.array(mel_l.jax))))
        x = torch.nn.functional.gelu(e.conv2(x)).permute(0, 2, 1) + e.embed_positions.weight[:750]
        for layer in e.layers:
            x = layer(x, None)
        enc_l = e.layer_norm(x)
        enc = hf.model.encoder(torch.from_numpy(np.array(mel.jax))).last_hidden_state
        ref = hf(encoder_outputs=(enc_l,), decoder_input_ids=torch.tensor([[50258]])).logits[0, 0, language_token_ids]
    np.testing.assert_allclose(probs, torch.softmax(ref.double(), -1).numpy(), atol=1e-5)
    language_token = language_token_ids[int(np.argmax(probs))]

    dc = _WhisperExampleDecoder(model, tokenizer, device, language_token, True, 50)
    tokens, avg_logprob, no_speech_prob = dc.decode(mel)
    want, want_lp, want_ns = _candle_whisper_greedy_on_torch(hf, enc, [50258, language_token, 50359], 50)
    assert tokens == want and len(want) > 5
    np.testing.assert_allclose([avg_logprob, no_speech_prob], [want_lp, want_ns], rtol=1e-4, atol=1e-6)


def _candle_whisper_greedy_on_torch(hf, enc, tokens, max_initial_timestamp_index):
    """The example's greedy decode with its timestamp rules (which differ from OpenAI's: one sampled
    timestamp forces a second or the end) on transformers' float64 logits."""
    import torch

    tb, eot, n_ctx = 50364, 50257, 16
    sample_begin, sum_logprob, no_speech_prob = len(tokens), 0.0, float("nan")
    for i in range(n_ctx // 2):
        with torch.no_grad():
            all_logits = hf(encoder_outputs=(enc,), decoder_input_ids=torch.tensor([tokens])).logits[0].double()
        if i == 0:
            no_speech_prob = float(torch.softmax(all_logits[0], -1)[50362])
        x = all_logits[-1].clone()
        seq = tokens[sample_begin:]
        if seq:
            last, penult = seq[-1] >= tb, len(seq) >= 2 and seq[-2] >= tb
            if last:
                if penult:
                    x[tb:] = -np.inf
                else:
                    x[:eot] = -np.inf
            stamps = [t for t in seq if t >= tb]
            if stamps:
                x[tb : stamps[-1] + (0 if last and not penult else 1)] = -np.inf
        if len(tokens) == sample_begin:
            x[:tb] = -np.inf
            x[tb + max_initial_timestamp_index + 1 :] = -np.inf
        lp = torch.log_softmax(x, -1)
        if torch.logsumexp(lp[tb:], -1) > lp[:tb].max():
            x[:tb] = -np.inf
        x[50363] = -np.inf  # the suppressed <|notimestamps|>
        nxt = int(torch.argmax(x))
        tokens = [*tokens, nxt]
        if nxt == eot or len(tokens) > n_ctx:
            break
        sum_logprob += float(torch.log_softmax(x, -1)[nxt])
    return tokens, sum_logprob / len(tokens), no_speech_prob


def test_models_on_a_fresh_varmap_initialise_as_candles_constructors():
    """Training from scratch (llama2-c's training.rs: ``VarBuilder::from_varmap(&varmap, ..)`` then
    ``Model::load(vb, config)``): Candle's models build their layers with ``linear`` (Kaiming normal),
    ``embedding`` (N(0, 1)), ``layer_norm`` / ``rms_norm`` (ones, zeros) and ``conv1d``, so no trained
    matrix starts at zero; Whisper's encoder uses Candle's sinusoid table, its decoder positions start at 0
    (``vb.get``, as Candle)."""
    import candlejax as cj
    from candlejax.models import llama, whisper
    from candlejax.nn import VarBuilder, VarMap

    def fresh(build):
        vm = VarMap()
        model = build(VarBuilder.from_varmap(vm, cj.DType.F32, cj.Device.Cpu))
        return model, {k: np.asarray(v.as_tensor().numpy()) for k, v in vm.data().items()}

    cfg = llama.Config.from_dict({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
                                  "intermediate_size": 128, "vocab_size": 50, "tie_word_embeddings": False})
    _, w = fresh(lambda vb: llama.Llama.load(vb, cfg))
    assert abs(w["model.embed_tokens.weight"].std() - 1.0) < 0.1  # embedding: N(0, 1)
    q = w["model.layers.0.self_attn.q_proj.weight"]  # Kaiming normal, fan-in 64, ReLU gain: std sqrt(2/64)
    assert abs(q.std() - np.sqrt(2 / 64)) < 0.03 and abs(w["lm_head.weight"].std() - np.sqrt(2 / 64)) < 0.03
    np.testing.assert_array_equal(w["model.norm.weight"], np.ones(64, np.float32))

    wc = whisper.Config(vocab_size=60, num_mel_bins=8, d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=4, decoder_attention_heads=4, max_source_positions=20,
                        max_target_positions=16, encoder_ffn_dim=64, decoder_ffn_dim=64)  # fmt: skip
    model, w = fresh(lambda vb: whisper.Whisper.load(vb, wc))
    for k, v in w.items():
        if k.endswith("layer_norm.weight"):
            np.testing.assert_array_equal(v, np.ones_like(v), err_msg=k)
        elif k.endswith(".weight") and k != "model.decoder.embed_positions.weight":
            assert np.any(v), k
    assert not np.any(w["model.decoder.embed_positions.weight"])
    table = whisper.quantized_model.sinusoids(20, 32).numpy()
    np.testing.assert_array_equal(np.asarray(model.encoder.positional_embedding.numpy()), table)

    from candlejax.models import segment_anything as sam

    _, w = fresh(lambda vb: sam.Sam.new(64, 2, 2, [1], vb))  # candle_nn::embedding tables in the prompt encoder
    for k in ("mask_decoder.iou_token.weight", "mask_decoder.mask_tokens.weight",  # and the mask decoder
              "prompt_encoder.no_mask_embed.weight", "prompt_encoder.point_embeddings.3.weight"):  # fmt: skip
        assert abs(w[k].std() - 1.0) < 0.5 and np.any(w[k]), k
