"""Resources over a long session: files readers open are closed after errors (while the exception,
and so its traceback, is still held, as a notebook's ``sys.last_exc`` holds it), and caches stay
bounded."""

import gc
import os
import struct
import zipfile

import numpy as np
import pytest
import torch

from candlejax import errors
from candlejax.io import pth


def _open_fds(path: str) -> int:
    """File descriptors of this process open on ``path``."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == path
        except OSError:
            pass
    return n


def _failed(fn, *args) -> Exception:
    with pytest.raises(errors.Error) as info:
        fn(*args)
    return info.value


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.parametrize("reader", [pth.load, pth.tensor_infos, pth.load_pickle, pth.PthTensors,
                                    lambda p: pth.load(p, "no_such_key")])  # fmt: skip
def test_pth_error_closes_the_archive(tmp_path, reader):
    bad = str(tmp_path / "nopkl.pth")
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("a/b.txt", "x")
    good = str(tmp_path / "good.pth")
    torch.save({"w": torch.ones(3)}, good)
    path = good if reader.__name__ == "<lambda>" else bad
    held = [_failed(reader, path) for _ in range(3)]  # a notebook keeps the last exception alive
    gc.collect()
    assert _open_fds(path) == 0, held


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.parametrize("kw", [dict(sample_rate=0), dict(sample_rate=-16000), dict(sample_rate="x"),
                                dict(block_seconds=float("nan")), dict(block_seconds=0)])  # fmt: skip
def test_audio_stream_bad_argument_is_named_and_closes_the_file(tmp_path, kw):
    sf = pytest.importorskip("soundfile")
    from candlejax.audio import AudioStream

    path = str(tmp_path / "a.wav")
    sf.write(path, np.zeros(800, np.float32), 8000)
    held = [_failed(lambda: AudioStream(path, **kw)) for _ in range(3)]
    assert all(isinstance(e, errors.Audio) for e in held), held
    gc.collect()
    assert _open_fds(path) == 0, held


def _maps(path: str) -> int:
    """Memory maps of this process on ``path``."""
    with open("/proc/self/maps") as f:
        return sum(line.rstrip().endswith(path) for line in f)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.parametrize("data", [struct.pack("<I", 99) + b"x" * 20, struct.pack("<I", 6) + b"\xff" * 20],
                         ids=["version", "truncated"])  # fmt: skip
def test_ct2_error_unmaps_the_file(tmp_path, data):
    from candlejax.io import ct2

    path = str(tmp_path / "model.bin")
    with open(path, "wb") as f:
        f.write(data)
    held = [_failed(ct2.Ct2Model.read, path) for _ in range(3)]
    gc.collect()
    assert (_open_fds(path), _maps(path)) == (0, 0), held


def test_whisper_mel_filters_cache_is_bounded_and_not_shared_mutable():
    """``mel_filters`` keeps its tables in a cache: it must stay bounded over many settings, and a
    caller scaling the returned table in place must not change the next transcription's filters."""
    from transformers.audio_utils import mel_filter_bank

    from candlejax.models.whisper import audio

    ref = mel_filter_bank(201, 80, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney").T
    fb = audio.mel_filters(80)
    try:
        fb *= 2  # a read-only table refuses; a private copy would be fine too
    except ValueError:
        pass
    np.testing.assert_allclose(audio.mel_filters(80), ref, rtol=1e-6, atol=1e-9)
    for rate in range(8000, 8000 + 200):
        audio.mel_filters(40, 400, rate)
    assert audio._mel_table.cache_info().currsize <= 8


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_gguf_error_inside_a_bool_array_unmaps_the_file(tmp_path):
    from candlejax.io import gguf

    path = str(tmp_path / "b.gguf")
    gguf.write(path, {"flags": gguf.Value.from_python([True, False, True])}, {})
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[data.rindex(b"\x01\x00\x01") + 1] = 7  # gguf-py and Candle read a bool as one byte, 0 or 1
    with open(path, "wb") as f:
        f.write(data)
    held = [_failed(gguf.Content.read, path) for _ in range(3)]
    assert "unexpected bool value 7" in str(held[0])
    gc.collect()
    assert (_open_fds(path), _maps(path)) == (0, 0), held


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_tinystories_bad_file_leaves_no_other_file_mapped(tmp_path):
    from candlejax.data.tinystories import TinyStoriesDataset

    np.arange(8, dtype=np.uint16).tofile(tmp_path / "data00.bin")
    np.arange(8, dtype=np.uint16).tofile(tmp_path / "data01.bin")
    (tmp_path / "data02.bin").write_bytes(b"odd")
    held = [_failed(TinyStoriesDataset, tmp_path) for _ in range(3)]
    assert "odd count" in str(held[0])
    gc.collect()
    for name in ("data00.bin", "data01.bin"):
        path = str(tmp_path / name)
        assert (_open_fds(path), _maps(path)) == (0, 0), (name, held)
