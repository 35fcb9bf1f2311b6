"""Paths and the environment: writers' OS errors, environment variables, compilation cache."""

from __future__ import annotations

import os

import numpy as np
import pytest

import candlejax as cj
from candlejax import errors
from candlejax.io import npy, safetensors


def _t() -> cj.Tensor:
    return cj.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))


def _unwritable_dir() -> str:
    """A folder no one may create files in, even root (sysfs refuses with EPERM); skip if none."""
    d = "/sys"
    probe = os.path.join(d, "candlejax-probe")
    try:
        with open(probe, "wb"):
            pass
    except OSError:
        return d
    os.unlink(probe)
    pytest.skip("no folder refuses writes here")


WRITERS = [
    ("safetensors.save", lambda p: safetensors.save({"x": _t()}, p)),
    ("write_npy", lambda p: npy.write_npy(_t(), p)),
    ("write_npz", lambda p: npy.write_npz([("x", _t())], p)),
]


@pytest.mark.parametrize("name,write", WRITERS, ids=[w[0] for w in WRITERS])
def test_save_into_unwritable_folder_is_a_candlejax_error(name, write):
    # numpy.save / torch.save raise PermissionError naming the file; candlejax keeps that type and is
    # also a candlejax error (as NoSuchFile / IsADirectory are)
    d = _unwritable_dir()
    p = os.path.join(d, "w.safetensors")
    with pytest.raises(PermissionError) as ei:
        write(p)
    assert isinstance(ei.value, errors.Error) and isinstance(ei.value, errors.FileAccess)
    assert p in str(ei.value) and ei.value.filename == p


@pytest.mark.parametrize("name,write", WRITERS, ids=[w[0] for w in WRITERS])
def test_save_to_overlong_name_is_a_candlejax_error(tmp_path, name, write):
    p = tmp_path / ("a" * 300)
    with pytest.raises(OSError) as ei:
        write(p)
    assert isinstance(ei.value, errors.FileAccess)
    assert ei.value.errno == 36 or "too long" in str(ei.value)
    assert os.listdir(tmp_path) == []  # no temporary file left behind


def _read_audio(p):
    pytest.importorskip("soundfile")
    from candlejax.audio import read_audio

    return read_audio(p)


def _load_image(p):
    pytest.importorskip("PIL")
    from candlejax.vision import load_image

    return load_image(p)


READERS = [("read_audio", _read_audio, errors.Audio), ("load_image", _load_image, None)]


@pytest.mark.parametrize("name,read,family", READERS, ids=[r[0] for r in READERS])
def test_reader_missing_file_and_folder_follow_the_os_error_convention(tmp_path, name, read, family):
    # as safetensors / gguf / ct2 / pth: a missing path is a NoSuchFile (FileNotFoundError, as PIL's
    # Image.open and soundfile's open raise) and a folder an IsADirectory, both naming the path
    from candlejax.vision import ImageError

    family = family or ImageError
    missing = tmp_path / "nope.wav"
    with pytest.raises(FileNotFoundError) as ei:
        read(missing)
    assert isinstance(ei.value, errors.NoSuchFile) and isinstance(ei.value, family)
    assert str(missing) in str(ei.value)
    with pytest.raises(IsADirectoryError) as ei:
        read(tmp_path)
    assert isinstance(ei.value, errors.IsADirectory) and isinstance(ei.value, family)
    assert str(tmp_path) in str(ei.value)


@pytest.mark.parametrize("bad", [3, None])
def test_checkpoint_restore_rejects_a_non_path(bad):
    with pytest.raises(errors.ArgumentType, match="restore"):
        cj.checkpoint.restore(bad, {})


def _gguf_file(tmp_path):
    from candlejax import quantized as q
    from candlejax.io import gguf

    a = np.arange(64, dtype=np.float32).reshape(2, 32)
    p = tmp_path / "m.gguf"
    gguf.write(p, [], [("f", q.QTensor.quantize(cj.Tensor(a), q.GgmlDType.F32))])
    return p, a


def _open_files(path) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:
            pass
    return n


def test_gguf_content_read_from_a_path_holds_no_file_object(tmp_path):
    # the map stays until close() (documented); the file object it was made from is not kept, so a
    # Content dropped without close() leaves no unclosed file (no ResourceWarning) and no extra fd
    import gc
    import warnings

    from candlejax.io import gguf

    p, a = _gguf_file(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        c = gguf.Content.read(p)
        assert _open_files(p) <= 1  # the map's own descriptor
        t = c.tensor("f", cj.Device.Cpu)
        del c
        gc.collect()
    assert _open_files(p) == 0
    np.testing.assert_array_equal(np.asarray(t.dequantize(cj.Device.Cpu).to_vec2()), a)


def test_gguf_content_tensor_takes_candles_reader_name_device_with_a_path_reader(tmp_path):
    # Candle: content.tensor(&mut reader, name, device); the reader may be given as the path itself
    from candlejax.io import gguf

    p, a = _gguf_file(tmp_path)
    with gguf.Content.read(p) as c:
        for reader in (str(p), p):
            t = c.tensor(reader, "f", cj.Device.Cpu)
            np.testing.assert_array_equal(np.asarray(t.dequantize(cj.Device.Cpu).to_vec2()), a)


HUB_ENVS = [
    {"XDG_CACHE_HOME": "/xdg/cache"},
    {"HF_HOME": "~/my hf"},
    {"HF_HOME": "$CJ_TEST_ROOT/hf"},
    {"HUGGINGFACE_HUB_CACHE": "/legacy/hub"},
    {"HF_HUB_CACHE": "~/hub", "HUGGINGFACE_HUB_CACHE": "/legacy/hub", "HF_HOME": "/h"},
    {"HF_HOME": "/h", "XDG_CACHE_HOME": "/xdg"},
]


@pytest.mark.parametrize("env", HUB_ENVS, ids=[",".join(e) for e in HUB_ENVS])
def test_hub_cache_dir_follows_huggingface_hub(env):
    # huggingface_hub.constants.HF_HUB_CACHE: HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else
    # HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub; ~ and $VARs expanded
    import subprocess
    import sys

    pytest.importorskip("huggingface_hub")
    full = {k: v for k, v in os.environ.items()
            if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")}  # fmt: skip
    full.update(env, CJ_TEST_ROOT="/root dir")
    code = (
        "import huggingface_hub.constants as c; from candlejax.models import hub;"
        " print(c.HF_HUB_CACHE); print(hub.hub_cache_dir())"
    )
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True)
    want, got = out.stdout.splitlines()
    assert got == want


@pytest.mark.parametrize("var", ["CANDLEJAX_NUM_PROCESSES", "CANDLEJAX_PROCESS_ID"])
@pytest.mark.parametrize("value", ["two", "1.5", "-1"])
def test_distributed_env_garbage_is_a_candlejax_error_naming_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(errors.Error, match=var):
        cj.distributed.initialize()


@pytest.mark.parametrize("off", ["0", "false", "False", "off", "NO", " 0 "])
def test_candlejax_switches_read_the_same_off_words(off):
    # every CANDLEJAX_* on/off variable reads 0 / false / no / off (any case) as off, as
    # CANDLEJAX_ASYNC_DISPATCH and CANDLEJAX_COMPILATION_CACHE already do; an empty value is unset
    import subprocess
    import sys

    env = dict(os.environ, CANDLEJAX_SHAPE_BUCKETS=off, CANDLEJAX_JAX_PRIVATE=off, CANDLEJAX_NATIVE=off)
    code = (
        "from candlejax import _dispatch, _jax_private; from candlejax.quantized import native;"
        " from candlejax.models import bert;"
        " print(_dispatch.BUCKETS_ON, bert.EAGER_LENGTH_BUCKETS, _jax_private.AVAILABLE, native._library() is None)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False", "True"]


@pytest.mark.parametrize("value,packed", [("1", True), ("yes", True), ("", False), ("off", False), ("false", False)])
def test_qmatmul_packed_switch(monkeypatch, value, packed):
    from candlejax import quantized as q

    monkeypatch.setenv("CANDLEJAX_QMATMUL_PACKED", value)
    w = q.QTensor.quantize(cj.Tensor(np.ones((4, 32), np.float32)), q.GgmlDType.Q8_0)
    assert isinstance(q.QMatMul.from_qtensor(w)._w, q.QTensor) == packed


def test_unwritable_compilation_cache_dir_is_turned_off_with_one_warning():
    # an existing folder that refuses files (sysfs, even for root): the cache is not turned on (JAX
    # would warn on every compile), one warning names the folder, and compiling still works
    import subprocess
    import sys

    d = os.path.join(_unwritable_dir(), "kernel")
    if not os.path.isdir(d):
        pytest.skip("no /sys/kernel")
    env = dict(os.environ, CANDLEJAX_COMPILATION_CACHE=d)
    code = (
        "import warnings, jax, jax.numpy as jnp, candlejax.xla as x\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    print(x.enable_compilation_cache())\n"
        "    print(float(jax.jit(lambda a: a * 2 + 1)(jnp.ones(())) ))\n"
        "print(len(w)); print(w[0].message if w else '')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[:3] == ["None", "3.0", "1"], out.stdout + out.stderr
    assert d in lines[3] and "compilation cache" in lines[3]


def test_lazy_readers_keep_reading_their_file_after_chdir(tmp_path, monkeypatch):
    # NpzTensors / PthTensors read each tensor on get(); a relative path names the file in the folder
    # current when they were opened (as MmapedSafetensors, which maps it at once)
    torch = pytest.importorskip("torch")
    from candlejax import nn
    from candlejax.io import pth

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    np.savez(here / "a.npz", x=a)
    torch.save({"x": torch.from_numpy(a)}, here / "a.pth")
    monkeypatch.chdir(here)
    readers = [
        (npy.NpzTensors("a.npz"), lambda o: o.get("x")),
        (pth.PthTensors("a.pth"), lambda o: o.get("x")),
        (nn.VarBuilder.from_npz("a.npz", cj.DType.F32, cj.Device.Cpu), lambda o: o.get((2, 3), "x")),
        (nn.VarBuilder.from_pth("a.pth", cj.DType.F32, cj.Device.Cpu), lambda o: o.get((2, 3), "x")),
    ]
    monkeypatch.chdir(elsewhere)
    for obj, get in readers:
        np.testing.assert_array_equal(np.asarray(get(obj).to_vec2()), a)


def test_chat_template_from_tokenizer_config_path_errors(tmp_path):
    # Candle's ChatTemplateError::Io wraps std::io::Error; here the IoError is also the OSError
    # subclass every candlejax reader raises (NoSuchFile / IsADirectory), naming the path
    from candlejax.examples.chat_template import ChatTemplate, IoError

    missing = tmp_path / "tokenizer_config.json"
    with pytest.raises(FileNotFoundError) as ei:
        ChatTemplate.from_tokenizer_config(missing)
    assert isinstance(ei.value, IoError) and isinstance(ei.value, errors.NoSuchFile) and str(missing) in str(ei.value)
    with pytest.raises(IsADirectoryError) as ei:
        ChatTemplate.from_tokenizer_config(tmp_path)
    assert isinstance(ei.value, IoError) and isinstance(ei.value, errors.IsADirectory)
    with pytest.raises(errors.ArgumentType):
        ChatTemplate.from_tokenizer_config(3)


#: the scripts' switch from root (which writes and reads through any file mode) to nobody
_DROP_ROOT = """if os.getuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
    if not os.access(os.path.dirname(cj.__file__), os.R_OK | os.X_OK):  # lazy imports of candlejax modules
        print("SKIP: the unprivileged user cannot read the candlejax package")
        sys.exit(0)
"""

_READ_ONLY_SCRIPT = """
import os, sys
import numpy as np, candlejax as cj
from candlejax import errors
from candlejax.io import npy, safetensors
d = sys.argv[1]
safetensors.save({"w": cj.Tensor(np.ones(2, np.float32))}, os.path.join(d, "warm.safetensors"))
npy.write_npy(cj.Tensor(np.ones(2, np.float32)), os.path.join(d, "warm.npy"))
DROP_ROOT
for name, write in [("a.safetensors", lambda p: safetensors.save({"x": cj.Tensor(np.zeros(3, np.float32))}, p)),
                    ("a.npy", lambda p: npy.write_npy(cj.Tensor(np.zeros(3, np.float32)), p))]:
    p = os.path.join(d, name)
    with open(p, "wb") as f:
        f.write(b"keep me")
    os.chmod(p, 0o444)
    try:
        write(p)
        print("overwritten", name)
    except PermissionError as e:
        print("refused", name, isinstance(e, errors.Error), p in str(e))
    print("intact", open(p, "rb").read() == b"keep me")
print(sorted(n for n in os.listdir(d) if not n.startswith("warm")))
"""


def test_save_over_a_read_only_file_is_refused_and_leaves_it(tmp_path):
    # Candle's File::create, numpy.save and torch.save open the file for writing: a file without write
    # permission is refused (PermissionError) and left as it was; the atomic rename must not bypass that
    if os.getuid() != 0 and os.access("/", os.W_OK):
        pytest.skip("cannot run the check without write permission here")
    lines, text = _run_unprivileged(_READ_ONLY_SCRIPT.replace("DROP_ROOT\n", _DROP_ROOT), "cj-ro-")
    assert lines == [
        "refused a.safetensors True True", "intact True", "refused a.npy True True", "intact True",
        "['a.npy', 'a.safetensors']",
    ], text


def _run_unprivileged(script: str, prefix: str) -> tuple[list[str], str]:
    """Run ``script`` on a fresh world-writable folder (the script drops root to ``nobody`` itself): its
    output lines and its whole output; skips the test when the script says it cannot run."""
    import shutil
    import subprocess
    import sys
    import tempfile

    d = tempfile.mkdtemp(prefix=prefix)
    try:
        os.chmod(d, 0o777)
        out = subprocess.run([sys.executable, "-c", script, d], capture_output=True, text=True, check=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    if out.stdout.startswith("SKIP"):
        pytest.skip(out.stdout.strip())
    return out.stdout.splitlines(), out.stdout + out.stderr


def test_write_idx_follows_the_writers_conventions(tmp_path):
    # as every candlejax writer: a folder or a missing folder raise candlejax errors naming the path,
    # and a failed write leaves the previous file
    p = tmp_path / "labels-idx1-ubyte"
    cj.data.write_idx(p, np.arange(3, dtype=np.uint8))
    before = p.read_bytes()
    with pytest.raises(IsADirectoryError) as ei:
        cj.data.write_idx(tmp_path, np.arange(3, dtype=np.uint8))
    assert isinstance(ei.value, errors.Error)
    with pytest.raises(FileNotFoundError) as ei:
        cj.data.write_idx(tmp_path / "no" / "x", np.arange(3, dtype=np.uint8))
    assert isinstance(ei.value, errors.Error) and "no" in str(ei.value)
    with pytest.raises(errors.Error):
        cj.data.write_idx(p, np.arange(3, dtype=np.uint64))
    assert p.read_bytes() == before and os.listdir(tmp_path) == [p.name]
    cj.data.write_idx(p, np.arange(4, dtype=np.uint8), compress=True)
    from candlejax.data.vision import read_idx

    np.testing.assert_array_equal(read_idx(p), np.arange(4))


def test_write_pcm_as_wav_to_a_path_keeps_the_old_file_on_bad_samples(tmp_path):
    # the samples are checked before the file is touched; path errors are candlejax errors
    from candlejax.examples.wav import write_pcm_as_wav

    p = tmp_path / "a.wav"
    write_pcm_as_wav(p, np.zeros(8, np.float32), 16000)
    before = p.read_bytes()
    with pytest.raises(errors.Audio):
        write_pcm_as_wav(p, np.full(8, 40000, np.int32), 16000)
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["a.wav"]
    with pytest.raises(FileNotFoundError) as ei:
        write_pcm_as_wav(tmp_path / "no" / "a.wav", np.zeros(8, np.float32), 16000)
    assert isinstance(ei.value, errors.Error)
    with pytest.raises(IsADirectoryError) as ei:
        write_pcm_as_wav(tmp_path, np.zeros(8, np.float32), 16000)
    assert isinstance(ei.value, errors.Error)


def test_save_image_path_errors_and_old_file_kept(tmp_path):
    pytest.importorskip("PIL")
    from candlejax.examples import save_image
    from candlejax.vision import ImageError, load_image

    img = cj.Tensor(np.full((3, 4, 5), 7, np.uint8))
    p = tmp_path / "a.png"
    save_image(img, p)
    np.testing.assert_array_equal(np.asarray(load_image(p).jax), np.full((3, 4, 5), 7))
    before = p.read_bytes()
    with pytest.raises(ImageError):
        save_image(img, tmp_path / "a.unknownext")
    with pytest.raises(FileNotFoundError) as ei:
        save_image(img, tmp_path / "no" / "a.png")
    assert isinstance(ei.value, errors.Error)
    with pytest.raises(errors.ArgumentType):
        save_image(img, 3)
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["a.png"]


@pytest.mark.parametrize(
    "value,wins", [("3", True), ("1", True), ("+2", True), ("0", False), ("abc", False), ("", False), ("-2", False)]
)
def test_get_num_threads_reads_rayon_num_threads(value, wins):
    # candle::utils::get_num_threads (candle-core/src/utils.rs, and candle-pyo3's): a positive integer
    # RAYON_NUM_THREADS, else the default (0 and garbage ignored)
    import subprocess
    import sys

    code = "import candlejax as cj; print(cj.utils.get_num_threads())"
    base = {k: v for k, v in os.environ.items() if k != "RAYON_NUM_THREADS"}
    default = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True, check=True)
    got = subprocess.run([sys.executable, "-c", code], env=dict(base, RAYON_NUM_THREADS=value),
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert int(got.stdout) == (int(value) if wins else int(default.stdout))
    try:
        import candle  # noqa: F401  (candle-pyo3, the reference)
    except ImportError:
        return
    ref_code = "import candle; print(candle.utils.get_num_threads())"
    ref = subprocess.run([sys.executable, "-c", ref_code], env=dict(base, RAYON_NUM_THREADS=value),
                         capture_output=True, text=True, check=True)  # fmt: skip
    if wins:
        assert int(ref.stdout) == int(got.stdout)


_UNREADABLE_SCRIPT = """
import os, sys
import numpy as np, candlejax as cj
from candlejax import errors
from candlejax.io import npy, pth, safetensors
d = sys.argv[1]
a = np.ones((2, 3), np.float32)
files = {"st": os.path.join(d, "a.safetensors"), "npy": os.path.join(d, "a.npy"), "npz": os.path.join(d, "a.npz")}
safetensors.save({"x": cj.Tensor(a)}, files["st"])
np.save(files["npy"], a)
np.savez(files["npz"], x=a)
import tokenizers
from candlejax.tokenizer import Tokenizer
from candlejax import quantized as q
from candlejax.io import gguf
files["gguf"] = os.path.join(d, "a.gguf")
gguf.write(files["gguf"], [], [("f", q.QTensor.quantize(cj.Tensor(np.ones((2, 32), np.float32)), q.GgmlDType.F32))])
import soundfile
from candlejax.audio import read_audio
files["wav"] = os.path.join(d, "a.wav")
soundfile.write(files["wav"], np.full(100, 0.1, np.float32), 16000)
files["tok"] = os.path.join(d, "tokenizer.json")
tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0}, unk_token="a")).save(files["tok"])
for p in files.values():
    os.chmod(p, 0)
DROP_ROOT
readers = [("st", safetensors.load), ("st", safetensors.MmapedSafetensors), ("npy", npy.read_npy),
           ("npz", npy.read_npz), ("npz", npy.NpzTensors), ("st", lambda p: cj.nn.VarMap().load(p)),
           ("st", lambda p: cj.nn.VarBuilder.from_mmaped_safetensors([p], cj.DType.F32, cj.Device.Cpu)),
           ("tok", Tokenizer.from_file), ("gguf", gguf.Content.read), ("wav", read_audio)]
for key, read in readers:
    try:
        read(files[key])
        print("read")
    except PermissionError as e:
        print(isinstance(e, errors.Error), files[key] in str(e))
    except Exception as e:
        print(type(e).__name__, e)
"""


def test_reading_a_file_without_read_permission_is_a_candlejax_permission_error(tmp_path):
    # open() raises PermissionError; candlejax readers raise errors.NoPermission (also a PermissionError)
    # naming the file, not a raw PermissionError or a "not a valid file" message
    if os.getuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    lines, text = _run_unprivileged(_UNREADABLE_SCRIPT.replace("DROP_ROOT\n", _DROP_ROOT), "cj-unreadable-")
    assert lines == ["True True"] * 10, text


def test_relative_compilation_cache_dir_is_fixed_at_enable_time(tmp_path):
    # JAX keeps the folder name it is given: a relative one would move with every later os.chdir
    import subprocess
    import sys

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    code = (
        "import os, jax, jax.numpy as jnp, candlejax.xla as x\n"
        "os.chdir('a'); print(x.enable_compilation_cache('cache')); os.chdir('../b')\n"
        "jax.jit(lambda v: v * 3 + 2)(jnp.ones(5)).block_until_ready()\n"
        "print(jax.config.jax_compilation_cache_dir)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CANDLEJAX_COMPILATION_CACHE"}
    run = [sys.executable, "-c", code]
    out = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    want = str(tmp_path / "a" / "cache")
    assert out.stdout.splitlines() == [want, want], out.stdout + out.stderr
    assert os.listdir(want) and not (tmp_path / "b" / "cache").exists()
