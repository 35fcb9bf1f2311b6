"""Model configs refuse sizes below 1 when they are made or loaded, naming the config and the field
(a config with max_position_embeddings=0 loaded and every later forward failed)."""

from __future__ import annotations

import json

import pytest

from candlejax import errors
from candlejax.models import bert_config, clip_config, llama_config, whisper


@pytest.mark.parametrize("field", ["max_position_embeddings", "num_attention_heads", "num_key_value_heads",
                                   "vocab_size", "hidden_size", "num_hidden_layers", "head_dim"])  # fmt: skip
def test_llama_config_sizes(tmp_path, field):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4, field: 0}))
    with pytest.raises(errors.InvalidArgument, match=rf"llama Config: {field} must be an integer >= 1, got 0"):
        llama_config.Config.from_json_file(p)
    with pytest.raises(errors.InvalidArgument, match=rf"{field} must be an integer >= 1, got -3"):
        llama_config.Config(**{field: -3})
    with pytest.raises(errors.InvalidArgument, match=r"llama Config: hidden_size must be an integer >= 1, got 64.0"):
        llama_config.Config.from_dict({"hidden_size": 64.0})
    cfg = llama_config.Config.from_dict({"hidden_size": 64, "num_attention_heads": 4})  # None fields take defaults
    assert (cfg.num_key_value_heads, cfg.head_dim) == (4, 16)


def test_bert_clip_whisper_config_sizes():
    with pytest.raises(errors.InvalidArgument, match="bert Config: max_position_embeddings must be an integer >= 1"):
        bert_config.Config.from_dict({"max_position_embeddings": 0})
    with pytest.raises(errors.InvalidArgument, match="bert Config: num_attention_heads must be an integer >= 1"):
        bert_config.Config.from_dict({"num_attention_heads": 0})  # was a ZeroDivisionError
    with pytest.raises(errors.InvalidArgument, match="clip text_config: max_position_embeddings must be"):
        clip_config.ClipConfig.from_dict({"text_config": {"max_position_embeddings": 0}})
    with pytest.raises(errors.InvalidArgument, match="clip vision_config: patch_size must be an integer >= 1, got 0"):
        clip_config.ClipConfig.from_dict({"vision_config": {"patch_size": 0}})
    with pytest.raises(errors.InvalidArgument, match="clip vision_config: num_attention_heads must be"):
        clip_config.ClipConfig.from_dict({"vision_config": {"num_attention_heads": 0}})
    with pytest.raises(errors.InvalidArgument, match="clip ClipConfig: projection_dim must be"):
        clip_config.ClipConfig.from_dict({"projection_dim": 0})
    with pytest.raises(errors.InvalidArgument, match="whisper Config: max_target_positions must be an integer >= 1"):
        whisper.Config.from_dict({"max_target_positions": 0})
    with pytest.raises(errors.InvalidArgument, match="whisper Config: decoder_attention_heads must be"):
        whisper.Config.from_dict({"decoder_attention_heads": 0})
    assert whisper.Config.from_dict({}).max_target_positions == 448
    assert clip_config.ClipConfig.from_dict({}).vision_config.patch_size == 32
