"""cj.safetensors: round trips, cross-checks with the safetensors package and candle-pyo3, atomic
saves, sharded loading and corrupt files."""

from __future__ import annotations

import json
import os
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy as stnp
from safetensors import safe_open

import candlejax as cj
from candlejax import errors
from candlejax import safetensors as cst
from candlejax.dtype import DType


def T(a) -> cj.Tensor:  # noqa: N802
    return cj.Tensor._wrap(jnp.asarray(a))




def craft(path, header, data: bytes = b"", hlen: int | None = None) -> str:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw) if hlen is None else hlen) + raw + data)
    return str(path)


NATIVE = [np.uint8, np.uint32, np.int16, np.int32, ml_dtypes.bfloat16, np.float16, np.float32, ml_dtypes.float8_e4m3fn]


def sample(rng, dt, shape=(3, 5)):
    if np.dtype(dt).kind in "ui":
        return rng.integers(0, 100, shape).astype(dt)
    return (rng.standard_normal(shape) * 10).astype(np.float32).astype(dt)


# --- round trips ------------------------------------------------------------------------------------
def test_roundtrip_all_dtypes(tmp_path, rng):
    arrays = {f"t{i}": sample(rng, dt, (2, i + 1)) for i, dt in enumerate(NATIVE)}
    arrays["scalar"] = np.float32(3.5).reshape(())
    arrays["empty"] = np.zeros((0, 4), np.float32)
    p = tmp_path / "m.safetensors"
    cst.save({k: T(v) for k, v in arrays.items()}, p)
    back = cst.load(p, cj.Device.Cpu)
    assert set(back) == set(arrays)
    for k, v in arrays.items():
        assert back[k].shape == v.shape
        assert back[k].jax.dtype == v.dtype
        np.testing.assert_array_equal(np.asarray(back[k]).reshape(-1).view(np.uint8), v.reshape(-1).view(np.uint8))
        assert back[k].device == cj.Device.Cpu


def test_roundtrip_64bit(tmp_path, rng, x64):
    a, b = rng.integers(-(2**40), 2**40, (4,)), rng.standard_normal((2, 2))
    p = tmp_path / "w.safetensors"
    cst.save({"a": T(a), "b": T(b)}, p)
    back = cst.load(p)
    assert back["a"].dtype == DType.I64 and back["b"].dtype == DType.F64
    np.testing.assert_array_equal(np.asarray(back["a"]), a)
    np.testing.assert_array_equal(np.asarray(back["b"]), b)


def test_bytes_identical_to_safetensors_package(tmp_path, rng):
    arrays = {"b": rng.standard_normal((3, 3)).astype(np.float32), "a": np.arange(5, dtype=np.uint8),
              "c": rng.standard_normal((7,)).astype(np.float16), "d": np.arange(3, dtype=np.int32)}
    ours = tmp_path / "ours.safetensors"
    cst.save({k: T(v) for k, v in arrays.items()}, ours)
    assert ours.read_bytes() == stnp.save(arrays)
    cst.save({k: T(v) for k, v in arrays.items()}, ours, metadata={"format": "pt"})
    with safe_open(str(ours), "np") as f:
        assert f.metadata() == {"format": "pt"}
        for k, v in arrays.items():
            np.testing.assert_array_equal(f.get_tensor(k), v)


def test_reads_files_of_safetensors_package(tmp_path, rng):
    arrays = {
        "u8": np.arange(6, dtype=np.uint8).reshape(2, 3), "i16": np.arange(-3, 3, dtype=np.int16),
        "u16": np.array([0, 1, 65535], np.uint16), "u32": np.array([4_000_000_000], np.uint32),
        "i32": np.arange(4, dtype=np.int32), "f16": rng.standard_normal(5).astype(np.float16),
        "f32": rng.standard_normal((2, 2, 2)).astype(np.float32), "bool": np.array([True, False, True]),
    }
    p = tmp_path / "pkg.safetensors"
    stnp.save_file(arrays, str(p))
    back = cst.load(p)
    assert back["u16"].dtype == DType.U32  # as Candle
    assert back["bool"].dtype == DType.U8
    for k, v in arrays.items():
        np.testing.assert_array_equal(np.asarray(back[k]), v.astype(np.uint8) if v.dtype == bool else v)
    assert cst.load_buffer(p.read_bytes()).keys() == back.keys()


def test_reads_torch_bf16_and_f8(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch as stt

    t = {"bf": torch.randn(3, 4).to(torch.bfloat16), "f8": torch.randn(8).to(torch.float8_e4m3fn)}
    p = tmp_path / "t.safetensors"
    stt.save_file(t, str(p))
    back = cst.load(p)
    assert back["bf"].dtype == DType.BF16 and back["f8"].dtype == DType.F8E4M3
    np.testing.assert_array_equal(np.asarray(back["bf"]).astype(np.float32), t["bf"].float().numpy())
    np.testing.assert_array_equal(np.asarray(back["f8"]).astype(np.float32), t["f8"].float().numpy())
    ours = tmp_path / "o.safetensors"
    cst.save(back, ours)
    again = stt.load_file(str(ours))
    assert torch.equal(again["bf"], t["bf"]) and again["f8"].view(torch.uint8).equal(t["f8"].view(torch.uint8))


def test_candle_pyo3_interop(tmp_path):
    candle = pytest.importorskip("candle")
    p1, p2 = str(tmp_path / "c.safetensors"), str(tmp_path / "cj.safetensors")
    candle.utils.save_safetensors(p1, {"w": candle.Tensor([[1.0, 2.0], [3.0, 4.0]]), "i": candle.Tensor([1, 2, 3])})
    back = cst.load(p1)
    np.testing.assert_array_equal(np.asarray(back["w"]), [[1, 2], [3, 4]])
    assert back["i"].dtype == DType.U32
    cst.save(back, p2)
    again = candle.utils.load_safetensors(p2)
    assert again["w"].values() == [[1.0, 2.0], [3.0, 4.0]] and again["i"].values() == [1, 2, 3]


def test_save_tensor_and_numpy_values(tmp_path):
    p = tmp_path / "one.safetensors"
    cst.save_tensor(T(np.arange(3, dtype=np.float32)), "x", p)
    assert list(stnp.load_file(str(p))) == ["x"]
    cst.save({"n": np.ones(2, np.float32), "j": jnp.zeros(3, jnp.int32)}, p)
    assert cst.load(p)["j"].dtype == DType.I32


# --- x64 and dtype conversion ----------------------------------------------------------------------------
def test_64bit_without_x64_names_file_and_tensor(tmp_path):
    p = tmp_path / "f64.safetensors"
    stnp.save_file({"w": np.ones(3), "ids": np.arange(3, dtype=np.int64)}, str(p))
    with pytest.raises(errors.UnsupportedDTypeForOp, match=r"I64.*f64\.safetensors, tensor 'ids'.*enable_x64.*I32"):
        cst.load(p)
    with pytest.raises(errors.UnsupportedDTypeForOp, match=r"F64.*f64\.safetensors, tensor 'w'.*enable_x64.*F32"):
        cst.MmapedSafetensors(p).load("w")
    with pytest.raises(errors.SafeTensor, match="enable_x64"):
        cst.MmapedSafetensors(p).load("ids")
    back = cst.load(p, dtype=DType.F32)
    assert back["w"].dtype == DType.F32 and back["ids"].dtype == DType.F32
    assert cst.MmapedSafetensors(p).load("ids", dtype="i32").dtype == DType.I32
    host = cst.MmapedSafetensors(p).get("ids").numpy()  # host copies keep 64 bits
    assert host.dtype == np.int64 and host.tolist() == [0, 1, 2]


def test_unsupported_dtypes(tmp_path):
    p = tmp_path / "i8.safetensors"
    stnp.save_file({"q": np.array([-1, 2], np.int8)}, str(p))
    st = cst.MmapedSafetensors(p)
    assert st.get("q").st_dtype == "I8"
    with pytest.raises(errors.UnsupportedSafeTensorDtype, match=r"unsupported safetensor dtype I8 \(.*i8\.safetensors"):
        st.load("q")
    with pytest.raises(errors.SafeTensor):
        st.get("q").dtype  # noqa: B018
    np.testing.assert_array_equal(np.asarray(st.load("q", dtype=DType.I32)), [-1, 2])
    q = craft(tmp_path / "q.safetensors", {"w": {"dtype": "Q4_K", "shape": [2], "data_offsets": [0, 3]}}, b"abc")
    with pytest.raises(errors.UnsupportedSafeTensorDtype, match="Q4_K"):
        cst.load(q)


# --- atomic save -------------------------------------------------------------------------------------------
def test_failed_save_keeps_previous_file(tmp_path):
    p = tmp_path / "ckpt.safetensors"
    cst.save({"w": T(np.ones(4, np.float32))}, p)
    before = p.read_bytes()
    good = T(np.zeros(1000, np.float32))

    @jax.jit
    def step(x):
        cst.save({"a_good": good, "b_traced": x}, p)  # the traced tensor fails after "a_good" was written
        return x

    with pytest.raises(errors.TracingError) as ei:
        step(T(np.ones(3, np.float32)))
    assert "b_traced" in "".join(getattr(ei.value, "__notes__", []))
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt.safetensors"]
    with pytest.raises(errors.Msg, match="expected a Tensor"):
        cst.save({"w": [1, 2]}, p)
    with pytest.raises(errors.Msg, match="metadata"):
        cst.save({"w": good}, p, metadata={"n": 1})
    assert p.read_bytes() == before


# --- MmapedSafetensors -----------------------------------------------------------------------------------------
def test_mmaped_single(tmp_path, rng):
    p = tmp_path / "m.safetensors"
    a = rng.standard_normal((2, 3)).astype(np.float32)
    stnp.save_file({"a": a, "b": np.arange(4, dtype=np.uint16)}, str(p), metadata={"k": "v"})
    with cst.MmapedSafetensors(p) as st:
        assert st.routing is None and sorted(st.names()) == ["a", "b"] and sorted(st.keys()) == ["a", "b"]
        assert "a" in st and "zz" not in st and len(st) == 2 and st.metadata() == {"k": "v"}
        v = st.get("b")
        assert (v.name, v.shape, v.st_dtype, v.dtype, v.nbytes) == ("b", (4,), "U16", DType.U32, 8)
        assert bytes(v.data()) == np.arange(4, dtype="<u2").tobytes()
        assert dict(st.tensors())["a"].shape == (2, 3)
        np.testing.assert_array_equal(np.asarray(st.load("a", cj.Device.Cpu)), a)
        np.testing.assert_array_equal(np.asarray(v.load()), np.arange(4))
        with pytest.raises(errors.CannotFindTensor, match=r"cannot find tensor aa .*did you mean a"):
            st.load("aa")
    loaded = cst.load(p)
    np.testing.assert_array_equal(np.asarray(loaded["a"]), a)  # still valid after the mapping is closed


def test_mmaped_multi_and_index(tmp_path, rng):
    s1, s2 = tmp_path / "model-00001-of-00002.safetensors", tmp_path / "model-00002-of-00002.safetensors"
    stnp.save_file({"x.weight": np.ones((2, 2), np.float32), "x.bias": np.zeros(2, np.float32)}, str(s1))
    stnp.save_file({"y.weight": np.full((3,), 2, np.float32)}, str(s2))
    st = cst.MmapedSafetensors.multi([s1, s2])
    assert st.routing == {"x.weight": 0, "x.bias": 0, "y.weight": 1}
    assert st.file_of("y.weight") == str(s2)
    assert np.asarray(st.load("y.weight")).tolist() == [2, 2, 2]
    assert cst.MmapedSafetensors([str(s1), str(s2)]).routing == st.routing
    index = tmp_path / "model.safetensors.index.json"
    wm = {"x.weight": s1.name, "x.bias": s1.name, "y.weight": s2.name}
    index.write_text(json.dumps({"metadata": {"total_size": 28}, "weight_map": wm}))
    st = cst.MmapedSafetensors(index)
    assert sorted(st.names()) == sorted(wm) and st.paths == [str(s1), str(s2)]
    np.testing.assert_array_equal(np.asarray(st.load("x.weight")), np.ones((2, 2)))
    index.write_text(json.dumps({"weight_map": {**wm, "x.bias": s2.name}}))
    with pytest.raises(errors.SafeTensor, match=r"routes tensor 'x.bias' to model-00002"):
        cst.MmapedSafetensors(index)
    index.write_text(json.dumps({"weight_map": {**wm, "z": "missing.safetensors"}}))
    with pytest.raises(errors.SafeTensor, match=r"missing\.safetensors"):
        cst.MmapedSafetensors(index)
    for text in ("{not json", '{"weight_map": {}}'):  # an empty map names the index, not "multi: no files"
        index.write_text(text)
        with pytest.raises(errors.SafeTensor, match="invalid safetensors index"):
            cst.MmapedSafetensors(index)
    with pytest.raises(errors.SafeTensor, match="in both"):
        cst.MmapedSafetensors.multi([s1, s1])


def test_mmaped_multi_takes_any_iterable_of_paths(tmp_path):
    """Paths from ``Path.glob`` (a generator) or a dict's keys open as the list of them, as they did
    before the argument checks; a non-path still raises ``ArgumentType``."""
    from candlejax.nn import VarBuilder

    s1, s2 = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    stnp.save_file({"a": np.ones((2,), np.float32)}, str(s1))
    stnp.save_file({"b": np.full((3,), 2, np.float32)}, str(s2))
    assert sorted(cst.MmapedSafetensors(tmp_path.glob("*.safetensors")).names()) == ["a", "b"]
    assert sorted(cst.MmapedSafetensors({str(s1): 0, str(s2): 1}.keys()).names()) == ["a", "b"]
    vb = VarBuilder.from_mmaped_safetensors(tmp_path.glob("*.safetensors"), DType.F32, cj.Device.Cpu)
    assert np.asarray(vb.get(3, "b")).tolist() == [2, 2, 2]
    with pytest.raises(errors.ArgumentType, match="MmapedSafetensors"):
        cst.MmapedSafetensors(3)


def test_mmaped_multi_of_no_files_finds_no_tensor(tmp_path):
    """Candle's ``MmapedSafetensors::multi(&[])`` opens (an empty routing map) and ``get`` then fails
    with ``cannot find tensor`` (candle-core/src/safetensors.rs); candlejax does the same, naming
    that no file was given."""
    st = cst.MmapedSafetensors.multi([])
    assert st.routing == {} and st.names() == [] and len(st) == 0 and "w" not in st
    with pytest.raises(errors.CannotFindTensor, match=r"cannot find tensor w \(no files were given\)"):
        st.get("w")
    with pytest.raises(errors.CannotFindTensor, match="cannot find tensor w"):
        st.load("w")
    assert st.tensors() == [] and st.metadata() == {}
    from candlejax.nn import VarBuilder  # Candle's from_mmaped_safetensors(&[]) is multi(&[])

    vb = VarBuilder.from_mmaped_safetensors([], DType.F32, cj.Device.Cpu)
    assert not vb.contains_tensor("w")
    with pytest.raises(errors.CannotFindTensor, match=r"cannot find tensor w .*none were given"):
        vb.get(3, "w")


def test_mmaped_file_deserialize(tmp_path, rng):
    """Candle's ``MmapedFile::new(p)?.deserialize()?``: the safetensors crate's ``SafeTensors``
    (``tensor(name)``, ``tensors()``, ``names()``, ``len()``, ``is_empty()``), views that ``load``."""
    p = tmp_path / "m.safetensors"
    a = rng.standard_normal((2, 3)).astype(np.float32)
    stnp.save_file({"a": a, "b": np.arange(4, dtype=np.int32)}, str(p))
    mf = cst.MmapedFile.new(p)
    st = mf.deserialize()
    assert sorted(st.names()) == ["a", "b"] and len(st) == 2 and not st.is_empty()
    assert st.len() == 2  # the crate's SafeTensors::len, as Rust code calls it
    v = st.tensor("a")
    assert (v.shape, v.dtype) == ((2, 3), DType.F32)
    np.testing.assert_array_equal(np.asarray(v.load(cj.Device.Cpu)), a)
    assert sorted(n for n, _ in st.tensors()) == ["a", "b"]
    with pytest.raises(errors.CannotFindTensor):
        st.tensor("c")
    with pytest.raises(errors.NoSuchFile):
        cst.MmapedFile(tmp_path / "missing.safetensors")


def test_slice_safetensors(rng):
    data = stnp.save({"a": np.arange(3, dtype=np.int32)})
    st = cst.SliceSafetensors(data)
    assert st.names() == ["a"] and np.asarray(st.load("a")).tolist() == [0, 1, 2]
    assert cst.BufferedSafetensors(bytearray(data)).get("a").shape == (3,)


def test_bytes_naming_a_file_say_to_pass_a_path(tmp_path):
    """``load_buffer`` / ``SliceSafetensors`` read bytes as the file's contents; a file's name given as
    bytes says to pass a str or Path (it was "header length 3275373874638582831 is larger than the limit")."""
    p = tmp_path / "m.safetensors"
    stnp.save_file({"a": np.ones(2, np.float32)}, str(p))
    for fn in (cst.load_buffer, cst.SliceSafetensors, cst.SafeTensors.deserialize):
        with pytest.raises(errors.ArgumentType, match=r"read as the file's contents.*m\.safetensors.*str or (a )?Path"):
            fn(os.fsencode(p))
    assert np.asarray(cst.load_buffer(p.read_bytes())["a"]).tolist() == [1.0, 1.0]


def test_misaligned_offsets_load(tmp_path):
    """Old writers did not align tensors; such files are valid and load (copied)."""
    h = np.array([1.5, 2.5, 3.5], np.float16).tobytes()
    f = np.array([7.0, 8.0], np.float32).tobytes()
    header = {"h": {"dtype": "F16", "shape": [3], "data_offsets": [0, 6]},
              "f": {"dtype": "F32", "shape": [2], "data_offsets": [6, 14]}}
    p = craft(tmp_path / "old.safetensors", header, h + f)
    back = cst.load(p)
    assert np.asarray(back["f"]).tolist() == [7.0, 8.0] and np.asarray(back["h"]).tolist() == [1.5, 2.5, 3.5]


# --- corrupt files ------------------------------------------------------------------------------------------
GOOD = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(
    "header,data,hlen,match",
    [
        (b"", b"", 0, "header length 0 is too small"),
        (json.dumps(GOOD).encode(), b"\0" * 8, 10**12, r"header length 1000000000000 is larger than the limit"),
        (json.dumps(GOOD).encode(), b"\0" * 8, 90, r"header length 90 is larger than the file"),
        (b"{bad json", b"", None, "not valid JSON"),
        (b"[1, 2]", b"", None, "must be a JSON object"),
        (b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "w": 1}', b"\0" * 4, None, "duplicate key"),
        (json.dumps(GOOD).encode(), b"\0" * 4, None, r"'w'.*point past the end of the data \(4 bytes"),
        (json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode(), b"\0" * 8, None,
         r"'w'.*hold 8 bytes but shape \[3\] of F32 needs 12"),
        (json.dumps({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                     "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}).encode(), b"\0" * 6, None,
         "'b'.*overlap tensor 'a'"),
        (json.dumps({"a": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}).encode(), b"\0" * 4, None,
         "'a'.*leave a hole"),
        (json.dumps(GOOD).encode(), b"\0" * 12, None, "cover 8 bytes of data but the file holds 12"),
        (json.dumps({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}).encode(), b"\0" * 8, None,
         "shape must be a list of non-negative"),
        (json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}).encode(), b"\0" * 8, None,
         "data_offsets must be"),
        (json.dumps({"w": [1]}).encode(), b"", None, "must be an object"),
        (json.dumps({"__metadata__": {"a": 1}}).encode(), b"", None, "__metadata__ must map strings"),
        (b"\xff\xfe{}", b"", None, "not valid JSON"),
    ],
)
def test_corrupt_files(tmp_path, header, data, hlen, match):
    p = craft(tmp_path / "bad.safetensors", header, data, hlen)
    for fn in (cst.load, cst.MmapedSafetensors, lambda p: cst.load_buffer(open(p, "rb").read())):
        with pytest.raises(errors.SafeTensor, match=match) as ei:
            fn(p)
        assert "bad.safetensors" in str(ei.value) or "<buffer>" in str(ei.value)


def test_truncated_files(tmp_path, rng):
    p = tmp_path / "t.safetensors"
    stnp.save_file({"big": rng.standard_normal(100).astype(np.float32)}, str(p))
    raw = p.read_bytes()
    for cut in (0, 5, 8, 20, len(raw) - 1):
        p.write_bytes(raw[:cut])
        with pytest.raises(errors.SafeTensor, match=r"t\.safetensors"):
            cst.load(p)


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar"))


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")
def test_mmap_reads_only_what_is_loaded(tmp_path):
    """A 2 GiB (sparse) tensor next to a small one: opening and loading the small one reads neither
    the big tensor nor the file through read()."""
    big = 2**29  # f32 elements = 2 GiB
    header = {"big": {"dtype": "F32", "shape": [big], "data_offsets": [0, 4 * big]},
              "small": {"dtype": "F32", "shape": [2], "data_offsets": [4 * big, 4 * big + 8]}}
    p = craft(tmp_path / "sparse.safetensors", header)
    with open(p, "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.truncate(f.tell() + 4 * big)
        f.seek(0, os.SEEK_END)
        f.write(np.array([1.0, 2.0], np.float32).tobytes())
    before = _rchar()
    with cst.MmapedSafetensors(p) as st:
        assert st.get("big").shape == (big,)
        assert np.asarray(st.load("small")).tolist() == [1.0, 2.0]
    assert _rchar() - before < 1 << 20


# --- what the safetensors package does not check or decode ----------------------------------------------
def test_duplicate_names_are_refused(tmp_path):
    """The safetensors package keeps the last of two entries with one name; such a file is ambiguous."""
    entry = b'{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    raw = b'{"w": ' + entry + b', "w": ' + entry.replace(b"F32", b"I32") + b"}"
    p = craft(tmp_path / "dup.safetensors", raw, b"\0" * 4)
    with safe_open(p, "np") as f:
        assert f.keys() == ["w"]  # accepted by the package
    for fn in (cst.load, cst.MmapedSafetensors, lambda p: cst.load_buffer(open(p, "rb").read())):
        with pytest.raises(errors.SafeTensor, match=r"(dup\.safetensors|<buffer>).*duplicate key 'w'"):
            fn(p)


def test_f8_variants_decode_like_torch(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch as stt

    x = torch.linspace(-3, 3, 16)
    t = {"e5m2": x.to(torch.float8_e5m2), "e8m0": x.abs().add(0.5).to(torch.float8_e8m0fnu),
         "e4m3": x.to(torch.float8_e4m3fn)}
    p = tmp_path / "f8.safetensors"
    stt.save_file(t, str(p))
    st = cst.MmapedSafetensors(p)
    with pytest.raises(errors.UnsupportedSafeTensorDtype, match=r"F8_E5M2 \(.*f8\.safetensors, tensor 'e5m2'.*dtype="):
        st.load("e5m2")
    for k, v in t.items():
        got = st.load(k, dtype=DType.F32) if k != "e4m3" else st.load(k)
        np.testing.assert_array_equal(np.asarray(got).astype(np.float32), v.float().numpy(), err_msg=k)
        assert bytes(st.get(k).data()) == v.view(torch.uint8).numpy().tobytes()
    st.close()
    with pytest.raises(errors.SafeTensor, match="closed"):
        st.load("e4m3")


def test_saved_file_mode_and_stale_temporary_folder(tmp_path):
    """Saves get the umask's permissions (the package alone writes 0600) and remove a temporary folder
    a killed save left behind."""
    p = tmp_path / "m.safetensors"
    stale = tmp_path / ".m.safetensors.abc123.tmp"
    stale.mkdir()
    (stale / ".tmpXYZ").write_bytes(b"partial")
    umask = os.umask(0o022)
    try:
        cst.save({"w": T(np.ones(3, np.float32))}, p)
    finally:
        os.umask(umask)
    assert os.stat(p).st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["m.safetensors"]
    np.testing.assert_array_equal(stnp.load_file(str(p))["w"], np.ones(3, np.float32))
    os.chmod(p, 0o600)  # overwriting keeps the replaced file's mode, as a save in place does
    cst.save({"w": T(np.zeros(3, np.float32))}, p)
    assert os.stat(p).st_mode & 0o777 == 0o600
    p2 = tmp_path / "a.npy"
    cj.npy.write_npy(T(np.ones(2, np.float32)), p2)
    os.chmod(p2, 0o640)
    cj.npy.write_npy(T(np.zeros(2, np.float32)), p2)
    assert os.stat(p2).st_mode & 0o777 == 0o640


def test_replaced_file_reads_the_file_that_was_opened(tmp_path):
    """F8 tensors and TensorView.data() read the map made at open, not the path (re-saved meanwhile)."""
    f8 = ml_dtypes.float8_e4m3fn
    p = tmp_path / "r.safetensors"
    cst.save({"q": np.full(8, 0.5, np.float32).astype(f8), "w": np.arange(4, dtype=np.float32)}, p)
    r = cst.MmapedSafetensors(p)
    cst.save({"p": np.full(8, 4.0, np.float32).astype(f8), "q": np.full(8, 0.5, np.float32).astype(f8),
              "w": np.arange(4, dtype=np.float32)}, p)
    assert np.asarray(r.load("q", dtype="f32")).tolist() == [0.5] * 8
    assert np.frombuffer(r.get("w").data(), np.float32).tolist() == [0, 1, 2, 3]
    r.close()


def test_save_errors_name_the_target(tmp_path):
    a = {"a": np.zeros(1, np.float32)}
    missing = tmp_path / "nope" / "x.safetensors"
    with pytest.raises(FileNotFoundError, match=r"cannot write .*nope/x\.safetensors: its folder .* does not exist"):
        cst.save(a, missing)
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(IsADirectoryError, match=r"d\.safetensors: it is a folder"):
        cst.save(a, tmp_path / "d.safetensors")
    x = jnp.ones(2)
    x.delete()
    with pytest.raises(errors.Error, match=r"tensor 'a' cannot be read: .*deleted"):
        cst.save({"a": x}, tmp_path / "x.safetensors")
    assert os.listdir(tmp_path) == ["d.safetensors"]


def test_float_to_int_on_load_saturates_as_to_dtype(tmp_path):
    """``dtype=`` converts as ``Tensor.to_dtype`` (Candle's ``load(..)?.to_dtype(..)``, Rust ``as``): float ->
    integer saturates and NaN gives 0; numpy's cast gave 300.0 -> u8 44, -1.0 -> 255, 3e9 -> i32 INT_MIN."""
    p = tmp_path / "f.safetensors"
    a = np.array([-1.0, 300.0, np.nan, 2.7, -3e9, 3e9], np.float32)
    stnp.save_file({"w": a, "b": a.astype(ml_dtypes.bfloat16)}, str(p))
    for dt in (DType.U8, DType.U32, DType.I16, DType.I32):
        want = T(a).to_dtype(dt).to_vec1()
        assert cst.load(p, dtype=dt)["w"].to_vec1() == want, dt
        assert cst.MmapedSafetensors(p).get("w").load(dtype=dt).to_vec1() == want, dt
        assert cst.MmapedSafetensors(p).get("w").numpy(dtype=dt).tolist() == want, dt
    assert cst.load(p, dtype=DType.U8)["w"].to_vec1() == [0, 255, 0, 2, 0, 255]
    assert cst.load(p, dtype=DType.U8)["b"].to_vec1() == [0, 255, 0, 2, 0, 255]
