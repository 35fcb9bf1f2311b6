"""Hub cache layout resolution on a local folder (nothing is downloaded)."""

from __future__ import annotations

import json

import pytest

from candlejax import errors
from candlejax.models import _hub


def _snapshot(root, repo: str, commit: str, files: dict[str, str]):
    base = root / _hub.repo_folder_name(repo)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    blobs = base / "blobs"
    blobs.mkdir(exist_ok=True)
    for name, text in files.items():
        blob = blobs / f"{abs(hash((commit, name)))}"
        blob.write_text(text)
        (snap / name).symlink_to(blob)  # the hub's snapshot entries are links into blobs/
    return base, snap


def test_repo_folder_name():
    assert _hub.repo_folder_name("HuggingFaceTB/SmolLM2-135M") == "models--HuggingFaceTB--SmolLM2-135M"


def test_resolve_single_file_via_refs_main(tmp_path):
    c1, c2 = "a" * 40, "b" * 40
    base, _ = _snapshot(tmp_path, "org/tiny", c1, {"config.json": "{}", "model.safetensors": "x"})
    _, snap2 = _snapshot(tmp_path, "org/tiny", c2, {"config.json": "{}", "model.safetensors": "y",
                                                    "tokenizer.json": "{}"})  # fmt: skip
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(c2 + "\n")
    f = _hub.resolve("org/tiny", cache_dir=tmp_path)
    assert f.root == str(snap2) and f.weights == [str(snap2 / "model.safetensors")]
    assert f.config == str(snap2 / "config.json") and f.tokenizer == str(snap2 / "tokenizer.json")
    old = _hub.resolve("org/tiny", revision=c1, cache_dir=tmp_path)  # a commit hash
    assert old.root.endswith(c1) and old.tokenizer is None


def test_resolve_sharded_index_and_env(tmp_path, monkeypatch):
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    files = {"config.json": "{}", "model.safetensors.index.json": json.dumps(index),
             "model-00001-of-00002.safetensors": "1", "model-00002-of-00002.safetensors": "2"}  # fmt: skip
    _, snap = _snapshot(tmp_path, "org/big", "c" * 40, files)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    f = _hub.resolve("org/big")  # the only snapshot, no refs/
    assert f.weights == [str(snap / "model.safetensors.index.json")]


def test_resolve_plain_folder_and_errors(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(errors.Error, match=r"no config\.json"):
        _hub.resolve(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(errors.Error, match=r"no model\.safetensors"):
        _hub.resolve(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_text("x")
    assert _hub.resolve(str(tmp_path / "m")).weights[0].endswith("model.safetensors")
    with pytest.raises(errors.Error, match="not in the local Hugging Face cache"):
        _hub.resolve("org/absent", cache_dir=tmp_path)
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors"}}
    (tmp_path / "m" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(errors.Error, match="shards missing"):
        _hub.resolve(tmp_path / "m")


def test_llama_from_hub_cache(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from candlejax.models import llama

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    hf = transformers.LlamaForCausalLM(cfg)
    snap = tmp_path / "models--org--mini" / "snapshots" / ("d" * 40)
    hf.save_pretrained(snap, safe_serialization=True)
    model = llama.Llama.from_pretrained("org/mini", cache_dir=tmp_path)
    assert model.config.num_key_value_heads == 1 and model.layers[0].mlp.up_proj.weight.shape == (32, 16)


@pytest.mark.parametrize("text", ['{"weight_map": ', "[1]", '{"weight_map": {"a": 3}}', '{"weight_map": []}', "{}",
                                  '{"weight_map": {}}'])  # fmt: skip
def test_malformed_shard_index_is_a_candlejax_error_naming_it(tmp_path, text):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors.index.json").write_text(text)
    with pytest.raises(errors.Error, match=r"invalid safetensors index .*model\.safetensors\.index\.json"):
        _hub.resolve(tmp_path)


def test_checkpoint_folder_with_an_index_names_a_missing_shard(tmp_path):
    """``loading.safetensors_files`` (BLIP, CLIP ``from_pretrained``) reads the shard index: a shard
    missing from the folder is named, instead of a later 'cannot find tensor' for its weights."""
    import numpy as np
    import safetensors.numpy as stnp

    from candlejax.models.loading import safetensors_files
    from candlejax.nn import VarBuilder

    stnp.save_file({"a": np.ones(2, np.float32)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(errors.Error, match=r"shards missing from .*'model-00002-of-00002\.safetensors'"):
        safetensors_files(tmp_path)
    with pytest.raises(errors.Error, match=r"names shard 'model-00002-of-00002\.safetensors', which does not exist"):
        VarBuilder.from_mmaped_safetensors([str(tmp_path / "model.safetensors.index.json")])


def test_checkpoint_folder_with_model_safetensors_reads_only_it(tmp_path):
    """A folder holding ``model.safetensors`` and other ``*.safetensors`` (a ``model.fp16.safetensors``
    variant, an adapter) loads ``model.safetensors``, as transformers' ``from_pretrained`` and Candle's
    examples (``repo.get("model.safetensors")``) do; every ``*.safetensors`` was read, and the shared
    names raised 'shards must not overlap'."""
    import numpy as np
    import safetensors.numpy as stnp

    from candlejax.models.loading import safetensors_files
    from candlejax.nn import VarBuilder

    stnp.save_file({"a": np.ones(2, np.float32)}, str(tmp_path / "model.safetensors"))
    stnp.save_file({"a": np.zeros(2, np.float16)}, str(tmp_path / "model.fp16.safetensors"))
    files = safetensors_files(tmp_path)
    assert files == [str(tmp_path / "model.safetensors")]
    np.testing.assert_array_equal(np.asarray(VarBuilder.from_mmaped_safetensors(files).get(2, "a")), [1.0, 1.0])
    (tmp_path / "config.json").write_text("{}")
    assert _hub.resolve(tmp_path).weights == files


def test_folder_with_only_pytorch_model_bin_names_it(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(errors.Error, match=r"no model\.safetensors .*pytorch_model\.bin.*VarBuilder\.from_pth"):
        _hub.resolve(tmp_path)


def test_weights_file_given_for_the_folder_is_named(tmp_path):
    """The path of ``model.safetensors`` where a loader takes the folder (Llama, CLIP, BLIP) was reported
    as 'neither a model folder nor a hub id' / 'no such checkpoint folder'."""
    from candlejax.models.loading import safetensors_files

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    for load in (_hub.resolve, safetensors_files):
        with pytest.raises(errors.Error, match=r"model\.safetensors.*pass the (model )?folder holding it"):
            load(tmp_path / "model.safetensors")
