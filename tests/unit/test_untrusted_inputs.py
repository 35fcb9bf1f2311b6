"""Hostile checkpoints, tokenizers and configs: refused with candlejax errors, nothing run or allocated."""

from __future__ import annotations

import json
import struct
import zipfile

import numpy as np
import pytest

from candlejax import errors
from candlejax.io import npy, pth
from candlejax.tokenizer import ChatTemplate

# a float32 tensor of 4 elements on storage "0", as torch.save pickles it
_TENSOR = (b"ctorch._utils\n_rebuild_tensor_v2\n((S'storage'\nctorch\nFloatStorage\nS'0'\nS'cpu'\nK\x04tQK\x00K\x04"
           b"\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR")  # fmt: skip


def _pth(path, pkl: bytes, records: dict[str, bytes] | None = None, method: int = zipfile.ZIP_STORED) -> str:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + pkl + b".")
        for k, v in (records if records is not None else {"0": b"\0" * 16}).items():
            z.writestr(f"archive/data/{k}", v, compress_type=method)
    return str(path)


def _claim(path, member: str, size: int) -> None:
    """Rewrite the uncompressed size ``member`` claims in its local and central headers."""
    data = bytearray(open(path, "rb").read())
    for sig, size_at, name_len_at, name_at in ((b"PK\x03\x04", 22, 26, 30), (b"PK\x01\x02", 24, 28, 46)):
        i = data.find(sig)
        while i >= 0:
            n = struct.unpack_from("<H", data, i + name_len_at)[0]
            if data[i + name_at : i + name_at + n] == member.encode():
                struct.pack_into("<I", data, i + size_at, size)
            i = data.find(sig, i + 4)
    open(path, "wb").write(data)


@pytest.mark.parametrize("reader", [pth.load, pth.tensor_infos])
def test_pth_ordered_dict_state_cannot_shadow_its_methods(tmp_path, reader) -> None:
    # BUILD on an OrderedDict (a state dict's _metadata) set {"items": 1}: an instance attribute that hid
    # OrderedDict.items, so reading the checkpoint failed with a raw "'int' object is not callable"
    pkl = b"ccollections\nOrderedDict\n)R}S'items'\nK\x01sbS'w'\n" + _TENSOR + b"s"
    got = reader(_pth(tmp_path / "m.pth", pkl))
    assert list(got) == ["w"]


@pytest.mark.parametrize("reader", [pth.load, pth.tensor_infos, pth.read_pth_tensor_info])
def test_pth_shared_containers_cannot_blow_up_the_flattened_names(tmp_path, reader) -> None:
    # D0 = {"w": tensor}, Dk = {"a": Dk-1, "b": Dk-1} (the memo shares them): 2**40 names to flatten, as
    # the "billion laughs"; this ran for hours
    import signal

    pkl = b"}S'w'\n" + _TENSOR + b"sq\x00"
    for k in range(1, 41):
        pkl += b"}S'a'\nh" + bytes([k - 1]) + b"sS'b'\nh" + bytes([k - 1]) + b"sq" + bytes([k])
    path = _pth(tmp_path / "laugh.pth", pkl)

    def hang(*_):
        raise RuntimeError("the read was not stopped")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(60)
    try:
        with pytest.raises(errors.Pth, match="shared"):
            reader(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_pth_shared_submodules_cannot_blow_up_module_state_dict(tmp_path) -> None:
    # M0 = a module record, Mk = a module whose _modules are {"a": Mk-1, "b": Mk-1}
    pkl = b"cultralytics.nn\nM\n)R}S'_parameters'\n}S'w'\n" + _TENSOR + b"ssbq\x00"
    for k in range(1, 41):
        pkl += (b"cultralytics.nn\nM\n)R}S'_modules'\n}S'a'\nh" + bytes([k - 1]) + b"sS'b'\nh" + bytes([k - 1])
                + b"ssbq" + bytes([k]))  # fmt: skip
    obj = pth.load_pickle(_pth(tmp_path / "m.pth", pkl))
    with pytest.raises(errors.Pth, match="shared"):
        pth.module_state_dict(obj)


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_pth_records_compressed_other_than_deflate_are_refused_before_allocating(tmp_path, method) -> None:
    # torch.load refuses them too ("unsupported method", miniz); their claimed size is not bounded by the
    # archive, so reading a 100-byte bzip2 record claiming 4 GiB allocated the 4 GiB first
    pkl = _TENSOR.replace(b"FloatStorage", b"ByteStorage")
    pkl = b"}S'w'\n" + pkl.replace(b"K\x04", b"\x8a\x05\x00\x00\x00\x80\x00") + b"s"  # 2**31 bytes
    path = _pth(tmp_path / "b.pth", pkl, {"0": b"\0" * 100}, method)
    _claim(path, "archive/data/0", 0xFFFFFFFF)
    with pytest.raises(errors.Pth, match="compression method"):
        pth.load(path)


def test_npz_members_compressed_other_than_deflate_are_refused(tmp_path) -> None:
    path = str(tmp_path / "a.npz")
    np.savez(path, a=np.zeros(3, np.float32))
    with zipfile.ZipFile(path) as z:
        data = z.read("a.npy")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.npy", data, compress_type=zipfile.ZIP_BZIP2)
    with pytest.raises(errors.Npy, match="compression method"):
        npy.read_npz(path)


# --- chat templates ---------------------------------------------------------------------------------
_CHAT = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("source", [
    "{{ 'x' * 2**40 }}",  # a 1 TiB string
    "{% set n = 2**20 %}{{ ('x' * n * n)|length }}",
    "{{ ([1] * 2**40)|length }}",
    "{% set n = 10 %}{{ n ** (n ** n) }}",  # a 10**10-digit integer: minutes of CPU
    "{{ 'x'.ljust(2**40)|length }}",
    "{{ 'x'|center(2**40)|length }}",
    "{{ ('%' ~ 2**40 ~ 's') % 'x' }}",
    "{{ ('%' ~ 2**40 ~ 's')|format('x') }}",
    "{{ ('{:>' ~ 2**40 ~ '}').format('x') }}",
    "{{ '{0:{1}}'.format('x', 2**40) }}",
    "{{ '{x:>{w}}'.format(x='a', w=2**40) }}",
    "{{ '{x:>{w}}'.format_map({'x': 'a', 'w': 2**40}) }}",
    "{{ messages|tojson(indent=2**40) }}",
    "{% set s = 'x' * 100000 %}{{ s.replace('', s)|length }}",  # 10**10 characters
    "{% set s = 'x' * 100000 %}{{ s|replace('x', s)|length }}",
    "{% for i in range(5000) %}{{ 'x' * 100000 }}{% endfor %}",  # 5 * 10**8 characters of output
])  # fmt: skip
def test_chat_template_that_would_exhaust_memory_is_a_candlejax_error(source) -> None:
    # transformers' sandbox (the same ImmutableSandboxedEnvironment) tries to build these: MemoryError, or
    # tens of GB allocated where the machine has them
    with pytest.raises(errors.Error, match="CHAT_TEMPLATE_MAX"):  # refused before it is built
        ChatTemplate(source).render(_CHAT)


@pytest.mark.parametrize("source", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% set c = a ~ b %}{% endfor %}{% endfor %}",
])  # fmt: skip
def test_chat_template_that_would_run_for_hours_is_stopped(monkeypatch, source) -> None:
    import signal

    from candlejax import tokenizer

    monkeypatch.setattr(tokenizer, "CHAT_TEMPLATE_TIME_LIMIT_S", 0.5)

    def hang(*_):
        raise TimeoutError("the template was not stopped")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(30)
    try:
        with pytest.raises(errors.Error, match=r"took longer than 0\.5"):
            ChatTemplate(source).render(_CHAT)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_chat_template_python_errors_are_candlejax_errors() -> None:
    with pytest.raises(errors.Error, match="IndexError"):
        ChatTemplate("{{ '{0}'.format_map({}) }}").render(_CHAT)
    with pytest.raises(errors.Error, match="OverflowError"):
        ChatTemplate("{% for i in range(10**12) %}{% endfor %}").render(_CHAT)


def test_chat_template_sized_like_real_prompts_still_renders() -> None:
    # long conversations, repeated separators and indentation stay well under the limits
    src = ("{{ '=' * 80 }}{% for m in messages %}{{ m.content|indent(4) }}{{ '%5d' % loop.index }}"
           "{{ '{:>8}'.format(m.role) }}{% endfor %}{{ 2 ** 10 }}")  # fmt: skip
    msgs = [{"role": "user", "content": "x" * 1000}] * 20000
    out = ChatTemplate(src).render(msgs)
    assert out.startswith("=" * 80) and out.endswith("1024") and len(out) > 20000 * 1000


# --- the hub cache ----------------------------------------------------------------------------------
@pytest.fixture
def hub_cache(tmp_path):
    entry = tmp_path / "hub" / "models--org--m"
    (entry / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("a" * 40)
    (tmp_path / "secret").write_text("secret-content")
    (tmp_path / "outside").mkdir()
    return tmp_path


@pytest.mark.parametrize("revision", ["{root}/secret", "../../../secret", "main/../../../../secret"])
def test_hub_revision_cannot_read_outside_the_cache_entry(hub_cache, revision) -> None:
    from candlejax.models import hub

    with pytest.raises(errors.Error) as e:
        hub.snapshot_dir("org/m", revision.format(root=hub_cache), hub_cache / "hub")
    assert "secret-content" not in str(e.value)
    assert hub.snapshot_dir("org/m", None, hub_cache / "hub").name == "a" * 40


@pytest.mark.parametrize("commit", ["../../../outside", "/{root}/outside"])
def test_hub_ref_pointing_outside_the_snapshots_is_refused(hub_cache, commit) -> None:
    from candlejax.models import hub

    (hub_cache / "hub" / "models--org--m" / "refs" / "main").write_text(commit.format(root=hub_cache))
    with pytest.raises(errors.Error, match="refs/main"):
        hub.snapshot_dir("org/m", None, hub_cache / "hub")


# --- saves ------------------------------------------------------------------------------------------
def test_save_beside_a_fifo_or_link_named_like_a_temporary_file(tmp_path) -> None:
    # the cleanup of temporary files left by killed saves opened every ".{name}.*.tmp" entry, following
    # links and blocking forever on a FIFO; what is not a file or folder of its own is now left alone
    import os
    import signal

    from candlejax import safetensors as cst

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    d = tmp_path / "save"
    d.mkdir()
    os.mkfifo(d / ".w.safetensors.fifo.tmp")
    os.symlink(outside, d / ".w.safetensors.dir.tmp")
    os.symlink(outside / "keep.txt", d / ".w.safetensors.file.tmp")

    def hang(*_):
        raise RuntimeError("the save blocked")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(10)
    try:
        cst.save({"a": np.zeros(2, np.float32)}, d / "w.safetensors")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert (outside / "keep.txt").read_text() == "keep"
    assert os.path.islink(d / ".w.safetensors.dir.tmp") and os.path.islink(d / ".w.safetensors.file.tmp")
    assert (d / "w.safetensors").is_file()


# --- sharded checkpoints ----------------------------------------------------------------------------
def _sharded(tmp_path, shard: str):
    from safetensors.numpy import save_file

    (tmp_path / "outside").mkdir(exist_ok=True)
    save_file({"w": np.ones(2, np.float32)}, tmp_path / "outside" / "x.safetensors")
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": shard.format(root=tmp_path)}}))
    return model


@pytest.mark.parametrize("shard", ["../outside/x.safetensors", "{root}/outside/x.safetensors"])
def test_safetensors_index_cannot_name_shards_outside_its_folder(tmp_path, shard) -> None:
    # transformers joins the names to the folder too; a downloaded index must not read other files
    from candlejax import Device, DType
    from candlejax.examples import hub_load_local_safetensors
    from candlejax.io import safetensors as st
    from candlejax.models import hub
    from candlejax.nn import VarBuilder

    model = _sharded(tmp_path, shard)
    with pytest.raises(errors.Error, match="lies outside"):
        VarBuilder.from_mmaped_safetensors(hub.weight_files(model), DType.F32, Device.Cpu)
    with pytest.raises(errors.Error, match="lies outside"):
        st.MmapedSafetensors(str(model / "model.safetensors.index.json"))
    with pytest.raises(errors.Error, match="lies outside"):
        hub_load_local_safetensors(model, "model.safetensors.index.json")


def test_safetensors_index_in_a_subfolder_still_reads(tmp_path) -> None:
    from candlejax.io import safetensors as st

    model = _sharded(tmp_path, "sub/x.safetensors")
    (model / "sub").mkdir()
    (tmp_path / "outside" / "x.safetensors").rename(model / "sub" / "x.safetensors")
    assert st.MmapedSafetensors(str(model / "model.safetensors.index.json")).get("w").shape == (2,)


def test_hub_load_local_safetensors_json_bomb_is_a_candlejax_error(tmp_path) -> None:
    from candlejax.examples import hub_load_local_safetensors

    (tmp_path / "i.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(errors.SafeTensor, match="RecursionError"):
        hub_load_local_safetensors(tmp_path, "i.json")
