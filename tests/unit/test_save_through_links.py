"""Saves write through symbolic links, as Candle's ``File::create`` / ``std::fs::write``,
``numpy.save`` and ``torch.save`` do: the link stays a link and its target gets the new content."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy as stnp
import torch

import candlejax as cj
from candlejax import checkpoint, errors, npy
from candlejax import safetensors as cst
from candlejax.io import gguf


def T(a) -> cj.Tensor:  # noqa: N802
    return cj.Tensor._wrap(jnp.asarray(a))


A = np.arange(6, dtype=np.float32).reshape(2, 3)


def _varmap_save(p):
    vm = cj.nn.VarMap()
    vm.get((2, 3), "w", cj.nn.Init.Const(0.0), cj.DType.F32, cj.Device.Cpu)
    vm.set_one("w", T(A))
    vm.save(p)


WRITERS = {
    "npy": (lambda p: T(A).write_npy(p), lambda p: np.load(p)),
    "npz": (lambda p: cj.Tensor.write_npz([("a", T(A))], p), lambda p: np.load(p)["a"]),
    "safetensors": (lambda p: cst.save({"a": T(A)}, p), lambda p: stnp.load_file(p)["a"]),
    "tensor.save_safetensors": (lambda p: T(A).save_safetensors("a", p), lambda p: stnp.load_file(p)["a"]),
    "varmap": (_varmap_save, lambda p: stnp.load_file(p)["w"]),
    "gguf": (lambda p: gguf.write(p, {}, {"a": T(A)}), lambda p: np.asarray(gguf.read(p).tensor("a").dequantize())),
    "checkpoint": (lambda p: checkpoint.save(p, {"a": T(A)}), lambda p: stnp.load_file(p)["model/a"]),
}


def _read_gguf(p):
    with open(p, "rb") as f:
        c = cj.quantized.gguf_file.Content.read(f)
        return np.asarray(c.tensor(f, "a", cj.Device.Cpu).dequantize(cj.Device.Cpu))


WRITERS["gguf"] = (WRITERS["gguf"][0], _read_gguf)


@pytest.mark.parametrize("kind", list(WRITERS))
def test_save_writes_through_a_link(tmp_path, kind):
    write, read = WRITERS[kind]
    (tmp_path / "store").mkdir()
    target = tmp_path / "store" / "real.bin"
    target.write_bytes(b"old")
    link = tmp_path / "link.bin"
    link.symlink_to(os.path.join("store", "real.bin"))  # relative, into another folder
    write(link)
    assert link.is_symlink() and os.readlink(link) == os.path.join("store", "real.bin")
    np.testing.assert_array_equal(read(target), A)
    assert sorted(os.listdir(tmp_path)) == ["link.bin", "store"]
    assert os.listdir(tmp_path / "store") == ["real.bin"]  # no temporary file left behind


@pytest.mark.parametrize("kind", ["npy", "safetensors", "gguf"])
def test_save_through_a_dangling_link_creates_the_target(tmp_path, kind):
    write, read = WRITERS[kind]
    link = tmp_path / "link.bin"
    link.symlink_to("new.bin")
    write(link)
    assert link.is_symlink() and (tmp_path / "new.bin").is_file()
    np.testing.assert_array_equal(read(tmp_path / "new.bin"), A)


def test_save_through_a_chain_of_links_keeps_the_mode(tmp_path):
    target = tmp_path / "real.npy"
    np.save(target, np.zeros(1))
    os.chmod(target, 0o600)
    (tmp_path / "l1").symlink_to("real.npy")
    (tmp_path / "l2").symlink_to("l1")
    npy.write_npy(T(A), tmp_path / "l2")
    assert (tmp_path / "l1").is_symlink() and (tmp_path / "l2").is_symlink()
    np.testing.assert_array_equal(np.load(target), A)
    assert os.stat(target).st_mode & 0o777 == 0o600


def test_save_matches_numpy_and_torch_through_links(tmp_path):
    """The references: numpy.save and torch.save keep the link and write the target."""
    for name, save in (("np", lambda p: np.save(p, A)), ("pt", lambda p: torch.save(torch.tensor(A), p)),
                       ("cj", lambda p: T(A).write_npy(p))):
        (tmp_path / f"{name}.real.npy").write_bytes(b"old")
        (tmp_path / f"{name}.link.npy").symlink_to(f"{name}.real.npy")
        save(str(tmp_path / f"{name}.link.npy"))
        assert (tmp_path / f"{name}.link.npy").is_symlink()
        assert (tmp_path / f"{name}.real.npy").read_bytes() != b"old"


def test_bad_links_raise_candlejax_errors(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(errors.FileAccess, match="symbolic links") as ei:
        T(A).write_npy(tmp_path / "a")
    assert isinstance(ei.value, OSError)
    (tmp_path / "d").symlink_to(os.path.join("missing", "x.npy"))
    with pytest.raises(errors.NoSuchFile, match="does not exist"):
        T(A).write_npy(tmp_path / "d")
    (tmp_path / "folder").mkdir()
    (tmp_path / "f").symlink_to("folder")
    with pytest.raises(errors.IsADirectory):
        cst.save({"a": T(A)}, tmp_path / "f")
    assert (tmp_path / "a").is_symlink() and (tmp_path / "d").is_symlink() and (tmp_path / "f").is_symlink()
