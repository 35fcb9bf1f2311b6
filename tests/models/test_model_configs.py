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


_TINY = {"vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
         "num_attention_heads": 4, "max_position_embeddings": 64}  # fmt: skip


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"num_attention_heads": 3}, "hidden_size 16 is not a multiple of num_attention_heads 3"),
        ({"rms_norm_eps": "1e-5"}, r"rms_norm_eps must be a finite number >= 0, got '1e-5'"),
        ({"rms_norm_eps": None}, "rms_norm_eps must be a finite number >= 0, got None"),
        ({"rms_norm_eps": float("nan")}, "rms_norm_eps must be a finite number >= 0, got nan"),
        ({"rms_norm_eps": -1e-5}, "rms_norm_eps must be a finite number >= 0"),
        ({"rope_theta": "1e4"}, "rope_theta must be a finite number > 0"),
        ({"rope_theta": 0.0}, "rope_theta must be a finite number > 0, got 0.0"),
        ({"eos_token_id": "</s>"}, "eos_token_id must be an integer, a list of integers or null, got '</s>'"),
        ({"eos_token_id": [2, "a"]}, "eos_token_id must be an integer, a list"),
        ({"bos_token_id": "a"}, "bos_token_id must be an integer or null"),
        ({"sliding_window": "4096"}, "sliding_window must be an integer or null"),
        ({"layer_types": []}, "layer_types must be a list of 1 'full_attention' / 'sliding_attention'"),
        ({"layer_types": ["sliding"]}, "layer_types must be a list of 1"),
    ],
)
def test_llama_config_values(overrides, match):
    """These loaded and then failed with a raw ValueError / IndexError when the model was built or run,
    or gave NaN logits (a NaN or negative eps)."""
    with pytest.raises(errors.InvalidArgument, match=f"llama Config: {match}"):
        llama_config.Config.from_dict({**_TINY, **overrides})


@pytest.mark.parametrize(
    "rope_scaling, err, match",
    [
        ("linear", errors.InvalidArgument, "rope_scaling must be a dict"),
        ({"rope_type": "linear"}, errors.InvalidArgument, "rope_scaling of type 'linear' needs 'factor'"),
        ({"rope_type": "linear", "factor": 0.0}, errors.InvalidArgument, "rope_scaling factor must be a positive"),
        ({"rope_type": "linear", "factor": "2"}, errors.InvalidArgument, "rope_scaling factor must be a positive"),
        ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}, errors.InvalidArgument, r"high_freq_factor \(4.0\) must be larger"),
    ],
)
def test_rope_scaling_values(rope_scaling, err, match):
    from candlejax.nn.rotary import rope_inv_freq

    with pytest.raises(err, match=match):
        rope_inv_freq(8, 10000.0, rope_scaling)


@pytest.mark.parametrize("load", [llama_config.Config.from_json_file, bert_config.Config.from_json_file,
                                  clip_config.ClipConfig.from_json_file, whisper.Config.from_json_file])  # fmt: skip
def test_config_files_that_cannot_be_read(tmp_path, load):
    with pytest.raises(errors.NoSuchFile, match="reading the config: no such file"):
        load(tmp_path / "missing.json")
    with pytest.raises(errors.IsADirectory):
        load(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(errors.InvalidArgument, match=r"bad\.json is not valid JSON"):
        load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(errors.ArgumentType, match=r"a config must be a dict .* got list from"):
        load(tmp_path / "list.json")


def test_config_dicts_of_the_wrong_type_and_bert_position_embedding_type():
    for from_dict in (llama_config.Config.from_dict, bert_config.Config.from_dict, clip_config.ClipConfig.from_dict,
                      whisper.Config.from_dict):  # fmt: skip
        with pytest.raises(errors.ArgumentType, match="a config must be a dict"):
            from_dict(None)
    with pytest.raises(errors.InvalidArgument, match="bert: unknown position_embedding_type 'foo'"):
        bert_config.Config.from_dict({"position_embedding_type": "foo"})
    assert llama_config.Config.from_dict({**_TINY, "eos_token_id": [1, 2], "layer_types": ["full_attention"]})


def test_configs_clone_as_rusts_clone():
    """Candle's examples write ``Model::load(vb, config.clone())``: every model config has ``clone()``,
    an equal, separate copy."""
    from candlejax.models import blip, blip_text, llama2_c

    configs = [llama_config.Config.from_dict({"hidden_size": 64, "num_attention_heads": 4}),
               llama_config.LlamaConfig.from_dict({"hidden_size": 64, "num_attention_heads": 4}),
               bert_config.Config(), clip_config.ClipConfig.vit_base_patch32(), clip_config.ClipTextConfig(),
               clip_config.ClipVisionConfig(), whisper.Config(), blip.Config.image_captioning_large(),
               blip.VisionConfig(), blip_text.Config(), llama2_c.Config.tiny_15m()]  # fmt: skip
    for cfg in configs:
        copy = cfg.clone()
        assert copy == cfg and copy is not cfg and type(copy) is type(cfg)


@pytest.mark.parametrize("keys, want", [
    ({"dtype": "bfloat16"}, "bfloat16"),
    ({"torch_dtype": "float16"}, "float16"),
    ({"torch_dtype": "float32", "dtype": "bfloat16"}, "bfloat16"),
])  # fmt: skip
def test_llama_config_dtype_key_wins_over_torch_dtype_as_in_transformers(keys, want):
    """transformers 5 reads ``dtype`` and falls back to the older ``torch_dtype``
    (``PretrainedConfig.__init__``: ``self.dtype if self.dtype is not None else torch_dtype``);
    ``Llama.from_pretrained`` loads in that dtype by default. A config holding both took ``torch_dtype``."""
    transformers = pytest.importorskip("transformers")
    base = {"vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "model_type": "llama"}  # fmt: skip
    ref = transformers.LlamaConfig.from_dict({**base, **keys}).dtype
    assert str(ref).removeprefix("torch.") == want
    assert llama_config.Config.from_dict({**base, **keys}).torch_dtype == want
