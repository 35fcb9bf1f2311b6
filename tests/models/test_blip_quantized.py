"""models.quantized_blip / quantized_blip_text: a tiny random BLIP checkpoint written as GGUF, (a) all
F32 against the float model over the same weights, (b) Q8_0 for the 2-D tensors whose rows are whole
blocks (as Candle's ``tensor-tools quantize`` writes them) against the float model over the
dequantised weights: image embeddings, decoder logits through Candle's example loop (the prompt,
then one token per call on the KV cache, ``reset_kv_cache`` between captions), greedy captions
(also the compiled ``blip.caption_ids``), and the errors of a bad file or bad arguments. The float
model is checked against transformers in test_blip.py."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from test_blip import random_hf_blip

from candlejax import Device, DType, Tensor, errors
from candlejax.io import gguf
from candlejax.models import blip, blip_text, quantized_blip, quantized_blip_text
from candlejax.nn import VarBuilder
from candlejax.nn.quantized import QLinear
from candlejax.quantized import QTensor
from candlejax.quantized.ggml_types import GgmlDType

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, BOS, SEP = 50, 45, 46
TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=40, bos_token_id=BOS, sep_token_id=SEP, pad_token_id=0)  # fmt: skip
# in-features of 32, 64 and 96 make whole Q8_0 blocks; the text output.dense (in 37) stays F32
VISION = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8)  # fmt: skip
HEAD = "text_decoder.cls.predictions.decoder.weight"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """The checkpoint's tensors by name (transformers' random model, with the LM head's
    ``decoder.weight`` stored beside the tied word embeddings, as the Salesforce checkpoints hold it),
    its config and a folder for the GGUF files."""
    from safetensors.numpy import load_file

    hf = random_hf_blip(TEXT, VISION)
    d = tmp_path_factory.mktemp("blip_q")
    hf.save_pretrained(d, safe_serialization=True)
    sd = load_file(str(d / "model.safetensors"))
    sd[HEAD] = sd["text_decoder.bert.embeddings.word_embeddings.weight"].copy()
    return sd, blip.Config.from_json_file(d / "config.json"), d


def _tensor_tools(sd, dtype):
    """Candle's ``tensor-tools quantize`` from safetensors: 2-D tensors whose rows are whole blocks in
    ``dtype``, everything else F32."""
    bs = dtype.block_size()
    return {k: QTensor.quantize(Tensor.from_numpy(v), dtype) if v.ndim == 2 and v.shape[1] % bs == 0 else v
            for k, v in sd.items()}  # fmt: skip


def _write(d, name, tensors):
    path = str(d / name)
    gguf.write(path, {}, tensors)
    return path


def _quantized(path, config):
    vb = quantized_blip.VarBuilder.from_gguf(path, Device.Cpu)
    return quantized_blip.BlipForConditionalGeneration.new(config, vb)


def _pixels(seed):
    return np.random.default_rng(seed).standard_normal((1, 3, 32, 32)).astype(np.float32)


def _candle_loop(model, px, prompt, n=8):
    """Candle's blip example: image embeddings, then ``text_decoder().forward`` with the whole prompt
    first and one token per call after; greedy. Returns the embeddings, each step's last logits and
    the new tokens."""
    image_embeds = Tensor.from_numpy(px[0]).unsqueeze(0).apply(model.vision_model())
    token_ids, steps = list(prompt), []
    for index in range(n):
        context_size = 1 if index > 0 else len(token_ids)
        start_pos = max(len(token_ids) - context_size, 0)
        input_ids = Tensor.new(np.asarray(token_ids[start_pos:], np.uint32), Device.Cpu).unsqueeze(0)
        logits = model.text_decoder().forward(input_ids, image_embeds)
        assert logits.dims() == (1, context_size, VOCAB)
        logits = logits.squeeze(0)
        steps.append(logits.get(logits.dim(0) - 1).numpy())
        token = int(np.argmax(steps[-1]))
        if token == SEP:
            break
        token_ids.append(token)
    model.reset_kv_cache()
    return image_embeds.numpy(), steps, token_ids[len(prompt) :]


def _assert_same_model(qmodel, fmodel):
    """Equal image embeddings and logits step for step (two captions, the second after
    ``reset_kv_cache`` and with a longer prompt), identical greedy tokens, also compiled."""
    for seed, prompt in ((1, [BOS]), (2, [BOS, 7, 12])):
        px = _pixels(seed)
        q_emb, q_steps, q_ids = _candle_loop(qmodel, px, prompt)
        f_emb, f_steps, f_ids = _candle_loop(fmodel, px, prompt)
        np.testing.assert_allclose(q_emb, f_emb, atol=1e-5, rtol=1e-5)
        assert len(q_steps) == len(f_steps)
        for q, f in zip(q_steps, f_steps, strict=True):
            np.testing.assert_allclose(q, f, atol=1e-5, rtol=1e-5)
        assert q_ids == f_ids
    caption = blip.caption_ids(qmodel, Tensor.from_numpy(px), max_new_tokens=8)
    assert caption == blip.caption_ids(fmodel, Tensor.from_numpy(px), max_new_tokens=8)
    assert caption == _candle_loop(qmodel, px, [BOS])[2]
    # a prompt (the processor's [CLS] prompt [SEP]) and a batch of two images
    assert blip.caption_ids(qmodel, Tensor.from_numpy(px), 8, input_ids=[[1, 7, 12, SEP]]) == [7, 12, *q_ids]
    both = np.concatenate([_pixels(1), px])
    assert blip.caption_ids(qmodel, Tensor.from_numpy(both), 8) == [_candle_loop(qmodel, _pixels(1), [BOS])[2],
                                                                     caption]  # fmt: skip
    return q_ids


def test_f32_gguf_matches_float_model(ckpt):
    sd, config, d = ckpt
    qmodel = _quantized(_write(d, "f32.gguf", sd), config)
    assert isinstance(qmodel, blip.BlipForConditionalGeneration)
    assert isinstance(qmodel.vision_model(), quantized_blip.VisionModel)
    assert isinstance(qmodel.text_decoder, quantized_blip_text.TextLMHeadModel)
    layer = qmodel.text_decoder.layers[0]
    linears = [qmodel.vision_model.layers[0].self_attn.qkv, qmodel.vision_model.layers[1].fc2,
               layer.crossattention.self_attention.key, layer.output, qmodel.text_decoder.decoder]  # fmt: skip
    assert all(isinstance(m, QLinear) for m in linears)
    fmodel = blip.BlipForConditionalGeneration.load(
        VarBuilder.from_tensors({k: Tensor.from_numpy(v) for k, v in sd.items()}, DType.F32, Device.Cpu), config
    )
    ids = _assert_same_model(qmodel, fmodel)
    assert len(ids) > 0


def test_q8_0_gguf_matches_dequantized_float_model(ckpt):
    sd, config, d = ckpt
    path = _write(d, "q8_0.gguf", _tensor_tools(sd, GgmlDType.Q8_0))
    qvb = quantized_blip.VarBuilder.from_gguf(path, Device.Cpu)
    kinds = {k: qvb.get_no_shape(k).dtype() for k in qvb.content.tensor_infos}
    assert kinds[HEAD] == kinds["vision_model.encoder.layers.0.self_attn.qkv.weight"] == GgmlDType.Q8_0
    assert kinds["text_decoder.bert.encoder.layer.0.output.dense.weight"] == GgmlDType.F32  # 37 in-features
    qmodel = quantized_blip.BlipForConditionalGeneration.new(config, qvb)
    assert qmodel.vision_model.layers[0].self_attn.qkv.qmatmul().is_quantized()
    assert qmodel.text_decoder.decoder.qmatmul().is_quantized()
    assert not qmodel.text_decoder.layers[0].output.qmatmul().is_quantized()
    deq = {k: qvb.get_no_shape(k).dequantize() for k in qvb.content.tensor_infos}
    fmodel = blip.BlipForConditionalGeneration.load(VarBuilder.from_tensors(deq, DType.F32, Device.Cpu), config)
    _assert_same_model(qmodel, fmodel)
    # Candle's quantized_blip_text::TextLMHeadModel::new(&cfg, vb) on its own: the same logits
    dec = quantized_blip_text.TextLMHeadModel.new(config.text_config, qvb.pp("text_decoder"))
    emb = qmodel.vision_model(Tensor.from_numpy(_pixels(3)))
    ids = Tensor.from_numpy(np.asarray([[BOS, 4, 9]], np.uint32))
    np.testing.assert_allclose(dec.forward(ids, emb).numpy(), fmodel.text_decoder.forward(ids, emb).numpy(),
                               atol=1e-5, rtol=1e-5)  # fmt: skip


def test_missing_tensors_and_wrong_arguments_raise(ckpt):
    sd, config, d = ckpt
    for name in ("text_decoder.bert.encoder.layer.1.crossattention.self.key.weight",  # a quantized linear
                 "vision_model.post_layernorm.weight", "vision_model.embeddings.class_embedding"):  # fmt: skip
        path = _write(d, "missing.gguf", {k: v for k, v in sd.items() if k != name})
        with pytest.raises(errors.CannotFindTensor, match=name.replace(".", r"\.")):
            _quantized(path, config)
    vb = quantized_blip.VarBuilder.from_gguf(_write(d, "f32.gguf", sd), Device.Cpu)
    with pytest.raises(errors.Error, match=r"BlipForConditionalGeneration.new\(config, vb\)"):
        quantized_blip.BlipForConditionalGeneration.new(vb, config)
    float_vb = VarBuilder.from_tensors({}, DType.F32, Device.Cpu)
    with pytest.raises(errors.Error, match=r"GGUF VarBuilder.*blip.BlipForConditionalGeneration.load"):
        quantized_blip.BlipForConditionalGeneration.new(config, float_vb)
    with pytest.raises(errors.Error, match=r"TextLMHeadModel.new\(cfg, vb\)"):
        quantized_blip_text.TextLMHeadModel.new(vb, config.text_config)
    two = d / "two_ggufs"
    two.mkdir(exist_ok=True)
    for name in ("a.gguf", "b.gguf"):
        _write(two, name, sd)
    with pytest.raises(errors.Error, match=r"expected one \.gguf file, found 2"):
        quantized_blip.BlipForConditionalGeneration.from_pretrained(two)


def test_tied_head_and_pooler(ckpt, rng):
    """Without ``decoder.weight`` (transformers' ``save_pretrained`` keeps one copy of the tied
    table) the head is the word embeddings, as in the float model; ``TextPooler::new(&cfg, vb)``."""
    sd, config, d = ckpt
    tied = {k: v for k, v in sd.items() if k != HEAD}
    qmodel = _quantized(_write(d, "tied.gguf", _tensor_tools(tied, GgmlDType.Q8_0)), config)
    emb = qmodel.vision_model(Tensor.from_numpy(_pixels(4)))
    ids = Tensor.from_numpy(np.asarray([[BOS, 3]], np.uint32))
    dec = qmodel.text_decoder
    np.testing.assert_array_equal(dec.decoder.weight.numpy(), dec.embeddings.word_embeddings.embeddings().numpy())
    assert dec.forward(ids, emb).dims() == (1, 2, VOCAB)

    w = {"dense.weight": rng.standard_normal((32, 32)).astype(np.float32),
         "dense.bias": rng.standard_normal(32).astype(np.float32)}  # fmt: skip
    qvb = quantized_blip_text.VarBuilder.from_gguf(_write(d, "pooler.gguf", _tensor_tools(w, GgmlDType.Q8_0)))
    pooler = quantized_blip_text.TextPooler.new(config.text_config, qvb)
    assert isinstance(pooler, quantized_blip_text.TextPooler) and isinstance(pooler.dense, QLinear)
    deq = {k: qvb.get_no_shape(k).dequantize() for k in w}
    ref = blip_text.TextPooler.new(config.text_config, VarBuilder.from_tensors(deq, DType.F32, Device.Cpu))
    x = Tensor.from_numpy(rng.standard_normal((2, 5, 32)).astype(np.float32))
    np.testing.assert_allclose(pooler.forward(x).numpy(), ref.forward(x).numpy(), atol=1e-5, rtol=1e-5)


def test_from_pretrained_and_the_caption_pipeline_take_a_gguf_folder(ckpt, tmp_path):
    """A GGUF file with ``config.json`` and ``tokenizer.json`` beside it (Candle's ``--quantized`` BLIP):
    ``from_pretrained`` of the file or the folder, and ``ImageCaptioner`` / ``candlejax caption`` on
    the folder, give the float model's caption; the float loader names the quantized one."""
    import shutil

    from test_blip import _tiny_tokenizer

    from candlejax.pipelines import ImageCaptioner

    sd, config, d = ckpt
    _write(tmp_path, "model-f32.gguf", sd)
    shutil.copy(d / "config.json", tmp_path / "config.json")
    _tiny_tokenizer().save(str(tmp_path / "tokenizer.json"))
    fmodel = blip.BlipForConditionalGeneration.load(
        VarBuilder.from_tensors({k: Tensor.from_numpy(v) for k, v in sd.items()}, DType.F32, Device.Cpu), config
    )
    image = (np.random.default_rng(5).random((40, 48, 3)) * 255).astype(np.uint8)
    want = blip.caption(fmodel, image, str(tmp_path / "tokenizer.json"), max_new_tokens=8)
    for path in (tmp_path, tmp_path / "model-f32.gguf"):
        q = quantized_blip.BlipForConditionalGeneration.from_pretrained(path)
        assert isinstance(q, quantized_blip.BlipForConditionalGeneration) and q.path == str(tmp_path)
        assert blip.caption(q, image, max_new_tokens=8) == want
    assert ImageCaptioner.from_pretrained(tmp_path, max_new_tokens=8)(image) == want
    with pytest.raises(errors.Msg, match=r"quantized_blip\.BlipForConditionalGeneration\.from_pretrained"):
        blip.BlipForConditionalGeneration.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(errors.Msg, match=r"no config\.json"):
        quantized_blip.BlipForConditionalGeneration.from_pretrained(tmp_path)
