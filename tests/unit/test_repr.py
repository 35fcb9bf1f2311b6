"""repr of the pipelines: one short line naming the model class and the settings, never the weights."""

from __future__ import annotations

import types

from candlejax import Device, DType
from candlejax.nn import VarBuilder
from candlejax.pipelines import ObjectDetector, TextGeneration, ZeroShotClassifier


def _short(r: str, *parts: str) -> None:
    assert "object at 0x" not in r and "\n" not in r and len(r) < 300, r
    for p in parts:
        assert p in r, (p, r)


def test_object_detector_and_zero_shot_repr():
    _short(repr(ObjectDetector(None, conf=0.5, iou=0.4, imgsz=320)), "ObjectDetector(", "conf=0.5", "iou=0.4")
    zero_shot = ZeroShotClassifier(types.SimpleNamespace(path=None), tokenizer=object(), cache_size=8)
    _short(repr(zero_shot), "ZeroShotClassifier(", "cache_size=8")


def test_text_generation_repr():
    from candlejax.models import llama

    cfg = llama.Config(hidden_size=32, intermediate_size=64, vocab_size=100, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    model = llama.Llama.load(VarBuilder.zeros(DType.F32, Device.Cpu), cfg)
    _short(repr(TextGeneration(model, None, eos_token_ids=[7], max_seq_len=48)), "TextGeneration(model=Llama",
           "max_seq_len=48", "pos=0")  # fmt: skip


def test_sentence_embedder_repr():
    from tokenizers import Tokenizer, models

    from candlejax.pipelines import SentenceEmbedder

    model = types.SimpleNamespace(config=types.SimpleNamespace(max_position_embeddings=512))
    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    _short(repr(SentenceEmbedder(model, tok, max_length=128)), "SentenceEmbedder(", "pooling='mean'", "max_length=128")
