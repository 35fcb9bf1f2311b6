"""Every file reader refuses corrupted and hostile files with a candlejax error naming the file: a
deterministic corruption fuzz (truncations, byte flips, random byte mutations) of small valid files
written by the reference writers (safetensors, gguf-py's GGUFWriter, numpy.save/savez, torch.save,
llama.cpp's imatrix layout), crafted zip records, and savers that fail midway keep the previous file."""

from __future__ import annotations

import json
import os
import random
import struct
import time
import tracemalloc
import zipfile
import zlib

import jax.numpy as jnp
import numpy as np
import pytest

import candlejax as cj
from candlejax import errors
from candlejax.io import gguf, npy, pth
from candlejax.io import safetensors as cst
from candlejax.quantized.imatrix_file import load_imatrix

#: the most a reader may allocate on a corrupted small file (a few KiB)
ALLOC_LIMIT = 32 << 20


# --- valid files from the reference writers ----------------------------------------------------------------
def _safetensors(p: str) -> None:
    from safetensors.numpy import save_file

    save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float16)}, p,
              metadata={"format": "pt"})


def _gguf(p: str) -> None:
    import gguf as gguf_py

    w = gguf_py.GGUFWriter(p, "llama")
    w.add_uint32("x.n", 3)
    w.add_string("x.s", "hi")
    w.add_array("x.arr", [1, 2, 3])
    w.add_tensor("a", np.arange(64, dtype=np.float32).reshape(2, 32))
    w.add_tensor("b", np.ones(32, np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _npy(p: str) -> None:
    np.save(p, np.arange(6, dtype=np.float32).reshape(2, 3))


def _npz(p: str) -> None:
    np.savez(p, a=np.arange(6, dtype=np.float32), b=np.ones((2, 2), np.float32))


def _npz_compressed(p: str) -> None:
    np.savez_compressed(p, a=np.arange(6, dtype=np.float32), b=np.ones((2, 2), np.float32))


def _pth(p: str) -> None:
    import torch

    torch.save({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}, p)


def _imatrix(p: str) -> None:
    """llama.cpp's legacy imatrix layout: count, then (name length, name, ncall, nval, nval f32)."""
    body = struct.pack("<ii", 1, 1) + b"w" + struct.pack("<ii", 2, 3) + np.ones(3, "<f4").tobytes()
    with open(p, "wb") as f:
        f.write(body)


def _ct2(p: str) -> None:
    """A CTranslate2 ``model.bin`` (version 6: spec, revision, variables, aliases), as ctranslate2 writes it."""

    def st(x: str) -> bytes:
        b = x.encode() + b"\0"
        return struct.pack("<H", len(b)) + b

    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.float16)
    out = struct.pack("<I", 6) + st("TransformerSpec") + struct.pack("<II", 1, 2)
    for name, arr, code in (("a", a, 0), ("b", b, 4)):
        out += st(name) + struct.pack("<B", arr.ndim) + struct.pack(f"<{arr.ndim}I", *arr.shape)
        out += struct.pack("<BI", code, arr.nbytes) + arr.tobytes()
    out += struct.pack("<I", 1) + st("c") + st("a")
    with open(p, "wb") as f:
        f.write(out)


def _ct2_read(p: str) -> None:
    from candlejax.io import ct2

    m = ct2.Ct2Model.read(p)
    for name in m.names():
        m.get(name)


def _wav(p: str) -> None:
    import soundfile as sf

    sf.write(p, (np.sin(np.arange(800) / 10) * 0.5).astype(np.float32), 16000, subtype="PCM_16", format="WAV")


def _image(fmt: str):
    def make(p: str) -> None:
        from PIL import Image

        Image.fromarray((np.arange(8 * 8 * 3) % 256).astype(np.uint8).reshape(8, 8, 3)).save(p, format=fmt)

    return make


def _tokenizer(p: str) -> None:
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(p)


def _audio_readers():
    from candlejax.audio import AudioStream, read_audio

    return [read_audio, lambda p: AudioStream(p).read(0, 400)]


def _load_image(p: str) -> None:
    from candlejax.vision import load_image

    load_image(p)


def _load_tokenizer(p: str) -> None:
    from candlejax.tokenizer import load_tokenizer

    load_tokenizer(p)


def _ggjt(p: str) -> None:
    """llama.cpp's legacy GGJT v3 layout (no reference writer is installed): magic, version, hparams, vocab,
    then per tensor n_dims, name length, type, reversed dims, name, 32-aligned data."""
    out = struct.pack("<II", 0x67676A74, 3) + struct.pack("<7I", 2, 32, 256, 4, 1, 8, 0)
    for word, score in ((b"a", 0.5), (b"bc", -1.0)):
        out += struct.pack("<I", len(word)) + word + struct.pack("<f", score)
    for name, shape in (("a", (2, 32)), ("b", (32,))):
        out += struct.pack("<III", len(shape), 1, 0) + struct.pack(f"<{len(shape)}I", *shape[::-1]) + name.encode()
        out += b"\0" * ((32 - len(out) % 32) % 32) + np.ones(shape, np.float32).tobytes()
    with open(p, "wb") as f:
        f.write(out)


def _ggml_read(p: str) -> None:
    from candlejax.quantized import ggml_file

    for t in ggml_file.Content.read(p, cj.Device.Cpu).tensors.values():
        t.dequantize(cj.Device.Cpu)


def _gguf_read(p: str) -> None:
    c = gguf.read(p)
    with open(p, "rb") as f:
        for name in c.tensor_infos:
            c.tensor(f, name).dequantize(cj.Device.Cpu)


FORMATS = {
    "safetensors": (".safetensors", _safetensors, [
        lambda p: cst.load(p),
        lambda p: cj.nn.VarBuilder.from_mmaped_safetensors([p], cj.DType.F32, cj.Device.Cpu).get((2, 3), "a"),
    ]),
    "gguf": (".gguf", _gguf, [
        _gguf_read,
        lambda p: cj.quantized.var_builder.VarBuilder.from_gguf(p, cj.Device.Cpu).get((2, 32), "a").dequantize(),
    ]),
    "ct2": (".bin", _ct2, [_ct2_read]),
    "ggml": (".ggml", _ggjt, [_ggml_read]),
    "npy": (".npy", _npy, [lambda p: npy.read_npy(p)]),
    "npz": (".npz", _npz, [
        lambda p: npy.read_npz(p),
        lambda p: cj.nn.VarBuilder.from_npz(p, cj.DType.F32, cj.Device.Cpu).get((6,), "a"),
    ]),
    "npz_compressed": (".npz", _npz_compressed, [lambda p: npy.read_npz(p), lambda p: npy.NpzTensors(p).get("a")]),
    "pth": (".pth", _pth, [
        lambda p: pth.read_all(p),
        lambda p: cj.nn.VarBuilder.from_pth(p, cj.DType.F32, cj.Device.Cpu).get((2, 3), "a"),
    ]),
    "imatrix": (".dat", _imatrix, [load_imatrix]),
    "wav": (".wav", _wav, _audio_readers()),
    "png": (".png", _image("PNG"), [_load_image]),
    "jpeg": (".jpg", _image("JPEG"), [_load_image]),
    "tokenizer": (".json", _tokenizer, [_load_tokenizer]),
}


def _mutations(src: bytes, seed: int) -> list[tuple[str, bytes]]:
    """Truncations at spread offsets, header bytes set to 0x00 / 0xff / flipped, random multi-byte edits."""
    cuts = {*range(0, min(len(src), 24)), *range(24, len(src), max(1, len(src) // 40))}
    out = [(f"trunc{n}", src[:n]) for n in sorted(cuts)]
    for off in range(0, min(len(src), 160), 3):
        for v in (0x00, 0xFF, src[off] ^ 0x80):
            b = bytearray(src)
            b[off] = v
            out.append((f"set{off}={v:#x}", bytes(b)))
    rng = random.Random(seed)
    for j in range(60):
        b = bytearray(src)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        out.append((f"rand{j}", bytes(b)))
    return out


def _check(fn, path: str, label: str) -> None:
    """``fn(path)`` either succeeds or raises a candlejax error naming the file; quickly, without allocating
    more than :data:`ALLOC_LIMIT`."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        fn(path)
    except errors.Error as e:
        assert os.path.basename(path) in str(e), f"{label}: the error does not name the file: {e}"
    except Exception as e:
        pytest.fail(f"{label}: raw {type(e).__name__}: {e}")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 10, f"{label}: took {time.perf_counter() - t0:.1f} s"
    assert peak < ALLOC_LIMIT, f"{label}: allocated {peak} bytes"


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_corruption_fuzz(tmp_path, fmt):
    ext, make, readers = FORMATS[fmt]
    base = str(tmp_path / f"valid{ext}")
    make(base)
    for fn in readers:
        fn(base)  # the valid file loads
    src = open(base, "rb").read()
    p = str(tmp_path / f"corrupt{ext}")
    for label, data in _mutations(src, seed=len(fmt)):
        with open(p, "wb") as f:
            f.write(data)
        for i, fn in enumerate(readers):
            _check(fn, p, f"{fmt}[{i}] {label}")


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_empty_file_and_directory(tmp_path, fmt):
    ext, _make, readers = FORMATS[fmt]
    empty = tmp_path / f"empty{ext}"
    empty.write_bytes(b"")
    folder = tmp_path / f"folder{ext}"
    folder.mkdir()
    for fn in readers:
        _check(fn, str(empty), f"{fmt} empty")
        with pytest.raises((errors.Error, IsADirectoryError)):
            fn(str(folder))


# --- crafted zip records (npz, torch.save) ---------------------------------------------------------------------
def _central(data: bytearray, filename: str) -> int:
    """The offset of ``filename``'s central-directory record."""
    i = data.index(b"PK\x01\x02")
    while i >= 0:
        n = struct.unpack_from("<H", data, i + 28)[0]
        if data[i + 46 : i + 46 + n].decode() == filename:
            return i
        i = data.find(b"PK\x01\x02", i + 4)
    raise AssertionError(filename)


def test_zip_version_too_new_is_a_candlejax_error(tmp_path):
    """zipfile raises NotImplementedError('zip file version 25.5') for a record needing a newer extractor."""
    for make, read, ext, rec in ((_npz, npy.read_npz, ".npz", "a.npy"), (_pth, pth.read_all, ".pth", None)):
        p = str(tmp_path / f"v{ext}")
        make(p)
        data = bytearray(open(p, "rb").read())
        rec = rec or next(n for n in zipfile.ZipFile(p).namelist() if n.endswith("data.pkl"))
        data[_central(data, rec) + 6] = 0xFF  # "version needed to extract"
        open(p, "wb").write(data)
        with pytest.raises(errors.Error, match=r"zip file version"):
            read(p)


def test_zip_member_claiming_more_than_the_archive_is_refused_before_reading(tmp_path):
    """An npz member whose npy header and zip sizes claim 1 GiB is refused without allocating it."""
    p = str(tmp_path / "big.npz")
    n = 1 << 28
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({n},), }}".ljust(117) + "\n"
    member = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 16
    with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.npy", member)
    data = bytearray(open(p, "rb").read())
    size = len(header) + 10 + 4 * n
    struct.pack_into("<II", data, 18, size, size)  # local header: compressed, uncompressed size
    struct.pack_into("<II", data, _central(data, "a.npy") + 20, size, size)
    open(p, "wb").write(data)
    tracemalloc.start()
    try:
        with pytest.raises(errors.Npy, match=r"recorded 1073741952 bytes.*big\.npz"):
            npy.read_npz(p)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < ALLOC_LIMIT


def test_pth_small_record_with_huge_stored_size_reads_without_allocating_it(tmp_path):
    """torch.save's byteorder record whose central-directory compressed size claims 4 GiB: the record
    is 6 bytes ("little"); zipfile's read() allocated up to 2 GiB for it."""
    import torch

    p = str(tmp_path / "m.pth")
    _pth(p)
    data = bytearray(open(p, "rb").read())
    rec = next(n for n in zipfile.ZipFile(p).namelist() if n.endswith("/byteorder"))
    struct.pack_into("<I", data, _central(data, rec) + 20, 0xFF000006)
    open(p, "wb").write(data)
    tracemalloc.start()
    try:
        got = dict(pth.read_all(p))
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < ALLOC_LIMIT
    np.testing.assert_array_equal(got["a"], torch.arange(6, dtype=torch.float32).reshape(2, 3).numpy())


def test_pth_undecodable_record_name_is_a_candlejax_error(tmp_path):
    """A local header whose UTF-8-flagged name is not UTF-8 (zipfile: UnicodeDecodeError)."""
    p = str(tmp_path / "m.pth")
    _pth(p)
    data = bytearray(open(p, "rb").read())
    data[30] = 0xFF  # the first byte of the first record's name in its local header
    open(p, "wb").write(data)
    with pytest.raises(errors.Pth, match=r"m\.pth"):
        pth.read_all(p)


def test_imatrix_errors_name_the_file(tmp_path):
    p = tmp_path / "imatrix.dat"
    p.write_bytes(struct.pack("<ii", 1, 1) + b"\xff" + struct.pack("<ii", 2, 3) + np.ones(3, "<f4").tobytes())
    with pytest.raises(errors.Error, match=r"Invalid UTF-8 name for entry 1: .* \(.*imatrix\.dat\)"):
        load_imatrix(p)
    p.write_bytes(struct.pack("<ii", 1, 1) + b"w" + struct.pack("<ii", 2, -3))
    with pytest.raises(errors.Error, match=r"Invalid nval for entry 1: -3 \(.*imatrix\.dat\)"):
        load_imatrix(p)


# --- savers are atomic ---------------------------------------------------------------------------------------
def _dead() -> cj.Tensor:
    x = jnp.ones(3, jnp.float32)
    t = cj.Tensor.new(np.ones(3, np.float32))
    x.delete()
    from candlejax.tensor.creation import as_jax_array

    as_jax_array(t).delete()
    return t


@pytest.mark.parametrize("saver", ["safetensors", "gguf", "npz", "npy"])
def test_save_failing_midway_keeps_the_previous_file(tmp_path, saver):
    good = cj.Tensor.new(np.arange(4096, dtype=np.float32))
    save = {
        "safetensors": lambda p, ts: cst.save(ts, p),
        "gguf": lambda p, ts: gguf.write(p, {}, ts),
        "npz": lambda p, ts: npy.write_npz(ts, p),
        "npy": lambda p, ts: npy.write_npy(ts["b"] if "b" in ts else ts["a"], p),
    }[saver]
    p = str(tmp_path / f"f.{saver}")
    save(p, {"a": good})
    before = open(p, "rb").read()
    with pytest.raises(errors.Error, match="cannot be read"):
        save(p, {"a": good, "b": _dead()})
    assert open(p, "rb").read() == before
    assert os.listdir(tmp_path) == [f"f.{saver}"]


# --- JSON side files: nesting past the recursion limit, integers past 4300 digits --------------------------------
HOSTILE_JSON = {
    "deep": b"[" * 100_000 + b"]" * 100_000,  # json: RecursionError
    "bigint": b'{"a": 1' + b"0" * 5000 + b"}",  # json: ValueError "Exceeds the limit (4300 digits)"
    "not_utf8": b'{"a": "\xff"}',
    "not_json": b"{nope",
}


def _json_readers(tmp_path):
    """(label, write the hostile bytes, read) for every reader of a model folder's JSON files."""
    from safetensors.numpy import save_file

    from candlejax import checkpoint
    from candlejax.io import ct2
    from candlejax.models.loading import generation_eos_token_ids, read_config_json
    from candlejax.tokenizer import load_tokenizer

    d = tmp_path / "model"
    d.mkdir()
    save_file({"a": np.ones(2, np.float32)}, str(d / "m-1.safetensors"))
    tok = tmp_path / "tok"
    tok.mkdir()
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(tok / "tokenizer.json"))
    ck = str(tmp_path / "ck.safetensors")
    from transformers import WhisperConfig

    from candlejax.models import whisper
    from candlejax.models.hub import weight_files

    wd = tmp_path / "whisper"
    wd.mkdir()
    cfg = WhisperConfig().to_dict()
    cfg.pop("suppress_tokens", None)
    cfg.pop("begin_suppress_tokens", None)
    (wd / "config.json").write_text(json.dumps(cfg))
    return [
        ("config.json", d / "config.json", lambda: read_config_json(d / "config.json", "Llama")),
        ("generation_config.json", d / "generation_config.json", lambda: generation_eos_token_ids(d, "Llama")),
        ("index.json", d / "model.safetensors.index.json",
         lambda: cst.MmapedSafetensors(d / "model.safetensors.index.json")),
        ("tokenizer_config.json", tok / "tokenizer_config.json", lambda: load_tokenizer(tok)),
        ("ct2 tokenizer.json", d / "tokenizer.json", lambda: ct2.tokenizer_vocab(str(d / "tokenizer.json"))),
        ("checkpoint metadata", None, lambda: checkpoint.read_metadata(ck)),
        ("hub index.json", d / "model.safetensors.index.json", lambda: weight_files(d)),
        ("whisper generation_config.json", wd / "generation_config.json",
         lambda: whisper.Config.from_json_file(wd / "config.json")),
    ], ck


@pytest.mark.parametrize("case", list(HOSTILE_JSON))
def test_hostile_json_side_files_raise_candlejax_errors(tmp_path, case):
    readers, ck = _json_readers(tmp_path)
    data = HOSTILE_JSON[case]
    for label, path, read in readers:
        if path is None:  # the checkpoint's JSON lives in the safetensors metadata
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                continue
            cst.save({"w": cj.Tensor.new(np.ones(1, np.float32))}, ck, metadata={"candlejax.checkpoint": text})
            name = os.path.basename(ck)
        else:
            path.write_bytes(data)
            name = path.name
        try:
            read()
        except errors.Error as e:
            assert name in str(e), f"{label}: {e}"
        except Exception as e:
            pytest.fail(f"{label} ({case}): raw {type(e).__name__}: {str(e)[:200]}")
        else:
            pytest.fail(f"{label} ({case}): no error")
        if path is not None:
            path.unlink()


def test_image_past_pillows_decompression_bomb_limit_is_an_image_error(tmp_path):
    """A 100000 x 100000 PNG header: Pillow raises DecompressionBombError (not an OSError)."""
    from candlejax.vision import load_image

    def chunk(t: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    p = tmp_path / "bomb.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                  + chunk(b"IEND", b""))
    with pytest.raises(errors.Error, match=r"bomb\.png.*DecompressionBombError"):
        load_image(p)


def test_varmap_and_checkpoint_saves_failing_midway_keep_the_previous_file(tmp_path):
    from candlejax import checkpoint
    from candlejax.tensor.creation import as_jax_array

    vm = cj.nn.VarMap()
    vb = cj.nn.VarBuilder.from_varmap(vm, cj.DType.F32, cj.Device.Cpu)
    vb.get_with_hints((4096,), "a", cj.nn.Init.Const(1.0))
    b = vb.get_with_hints((3,), "b", cj.nn.Init.Const(2.0))
    p = str(tmp_path / "vm.safetensors")
    vm.save(p)
    before = open(p, "rb").read()
    as_jax_array(b).delete()
    with pytest.raises(errors.Error, match="'b'"):
        vm.save(p)
    assert open(p, "rb").read() == before and os.listdir(tmp_path) == ["vm.safetensors"]

    ck = str(tmp_path / "ck")
    good = cj.Tensor.new(np.arange(4096, dtype=np.float32))
    checkpoint.save(ck, {"a": good})
    before = open(ck, "rb").read()
    with pytest.raises(errors.Error, match="'b'"):
        checkpoint.save(ck, {"a": good, "b": _dead()})
    assert open(ck, "rb").read() == before and sorted(os.listdir(tmp_path)) == ["ck", "vm.safetensors"]


def test_gguf_shape_past_a_tensors_element_limit_names_the_file(tmp_path):
    """A Q4_0 tensor of 1.5e18 elements fits in 2^63 bytes but not in a Tensor (at most 2^60 - 1
    elements): the reader refuses it naming the file and the tensor, before any shape is built."""
    gguf_py = pytest.importorskip("gguf")
    p = str(tmp_path / "huge.gguf")
    w = gguf_py.GGUFWriter(p, "llama")
    w.add_tensor("huge_tensor", np.zeros((2, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = bytearray(open(p, "rb").read())
    # the tensor info: name, n_dims (u32), dims (u64 each), type (u32), offset (u64)
    name = b"huge_tensor"
    at = data.index(len(name).to_bytes(8, "little") + name) + 8 + len(name)
    n_dims = int.from_bytes(data[at : at + 4], "little")
    assert n_dims == 2
    data[at + 4 : at + 12] = (32).to_bytes(8, "little")
    data[at + 12 : at + 20] = (47569271064100866).to_bytes(8, "little")
    data[at + 20 : at + 24] = (2).to_bytes(4, "little")  # Q4_0
    open(p, "wb").write(bytes(data))
    with pytest.raises(errors.Error, match=r"huge\.gguf.*too big"):
        gguf.read(p)
