"""cj.npy: npy/npz reading and writing, cross-checked with numpy.save / numpy.load."""

from __future__ import annotations

import io
import os
import struct
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import candlejax as cj
from candlejax import errors, npy
from candlejax.dtype import DType


def T(a) -> cj.Tensor:  # noqa: N802
    return cj.Tensor._wrap(jnp.asarray(a))




DTYPES = [np.uint8, np.uint32, np.int16, np.int32, np.float16, np.float32]


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape", [(), (5,), (2, 3), (2, 0, 3), (2, 3, 4)])
def test_read_numpy_files(tmp_path, rng, dt, shape):
    a = (rng.standard_normal(shape) * 50).astype(dt)
    p = tmp_path / "a.npy"
    np.save(p, a)
    t = npy.read_npy(p)
    assert t.shape == shape and t.jax.dtype == a.dtype
    np.testing.assert_array_equal(np.asarray(t), a)


@pytest.mark.parametrize("dt", DTYPES)
def test_write_read_by_numpy(tmp_path, rng, dt):
    a = (rng.standard_normal((3, 4)) * 50).astype(dt)
    p = tmp_path / "w.npy"
    npy.write_npy(T(a), p)
    b = np.load(p)
    assert b.dtype == a.dtype
    np.testing.assert_array_equal(b, a)
    assert (os.path.getsize(p) - a.nbytes) % 64 == 0  # header aligned as numpy's
    np.testing.assert_array_equal(np.asarray(npy.read_npy(p)), a)


def test_fortran_order_and_bool(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "f.npy", np.asfortranarray(a))
    np.testing.assert_array_equal(np.asarray(npy.read_npy(tmp_path / "f.npy")), a)
    np.save(tmp_path / "b.npy", np.array([[True, False], [False, True]]))
    t = npy.read_npy(tmp_path / "b.npy")
    assert t.dtype == DType.U8 and np.asarray(t).tolist() == [[1, 0], [0, 1]]


def test_64bit(tmp_path, rng):
    np.save(tmp_path / "d.npy", rng.standard_normal(3))
    with pytest.raises(errors.UnsupportedDTypeForOp, match=r"F64.*d\.npy.*enable_x64.*F32"):
        npy.read_npy(tmp_path / "d.npy")
    with pytest.raises(errors.Npy):
        npy.read_npy(tmp_path / "d.npy")
    assert npy.read_npy(tmp_path / "d.npy", dtype=DType.F32).dtype == DType.F32


def test_64bit_x64(tmp_path, rng, x64):
    a, b = rng.standard_normal((2, 2)), np.arange(-3, 3)
    npy.write_npz([("a", T(a)), ("b", T(b))], tmp_path / "x.npz")
    z = np.load(tmp_path / "x.npz")
    np.testing.assert_array_equal(z["a"], a)
    assert z["b"].dtype == np.int64
    back = dict(npy.read_npz(tmp_path / "x.npz"))
    assert back["a"].dtype == DType.F64 and back["b"].dtype == DType.I64


def test_npz_roundtrip(tmp_path, rng):
    arrays = {"w": rng.standard_normal((2, 3)).astype(np.float32), "ids": np.arange(4, dtype=np.uint32),
              "m": np.array([True, False])}
    for save in (np.savez, np.savez_compressed):
        save(tmp_path / "n.npz", **arrays)
        got = npy.read_npz(tmp_path / "n.npz")
        assert [n for n, _ in got] == list(arrays)
        for (_, t), a in zip(got, arrays.values()):
            np.testing.assert_array_equal(np.asarray(t), a.astype(np.uint8) if a.dtype == bool else a)
        w, _ids = npy.read_npz_by_name(tmp_path / "n.npz", ["w", "ids"])
        np.testing.assert_array_equal(np.asarray(w), arrays["w"])
        with pytest.raises(errors.Npy, match=r"no array for zz in .*n\.npz"):
            npy.read_npz_by_name(tmp_path / "n.npz", ["zz"])
    out = tmp_path / "ours.npz"
    npy.write_npz([("w", T(arrays["w"])), ("ids", T(arrays["ids"]))], out)
    z = np.load(out)
    assert list(z.keys()) == ["w", "ids"]
    np.testing.assert_array_equal(z["ids"], arrays["ids"])
    npy.write_npz({"only": T(arrays["w"])}, out)
    assert list(np.load(out).keys()) == ["only"]


def test_npz_tensors(tmp_path):
    np.savez(tmp_path / "l.npz", a=np.ones((2, 5), np.float32), b=np.arange(3, dtype=np.int16))
    nt = npy.NpzTensors(tmp_path / "l.npz")
    assert sorted(nt.names()) == ["a", "b"] and "a" in nt
    shape, dt = nt.get_shape_and_dtype("a")
    assert shape.dims() == (2, 5) and dt == DType.F32
    assert nt.get("missing") is None
    np.testing.assert_array_equal(np.asarray(nt.get("b")), [0, 1, 2])
    with pytest.raises(errors.CannotFindTensor, match="cannot find tensor c"):
        nt.get_shape_and_dtype("c")


def test_npz_tensors_get_shape_and_dtype_refuses_dtypes_without_a_dtype(tmp_path):
    # candle-core/src/npy.rs Header::parse: i1 and u8 (uint64) are `unrecognized descr`; b1 is U8, the
    # dtype used to come back as None
    np.savez(tmp_path / "x.npz", i8=np.array([-1, 2], np.int8), u64=np.arange(3, dtype=np.uint64).reshape(1, 3),
             b=np.array([True, False]), u16=np.arange(2, dtype=np.uint16))  # fmt: skip
    nt = npy.NpzTensors(tmp_path / "x.npz")
    for name, descr in (("i8", "i1"), ("u64", "u8")):
        with pytest.raises(errors.Npy, match=rf"unrecognized descr \|?<?{descr}.*array '{name}'"):
            nt.get_shape_and_dtype(name)
    assert nt.get_shape_and_dtype("b") == ((2,), DType.U8)
    assert nt.get_shape_and_dtype("u16") == ((2,), DType.U32)  # documented: u2 reads as U32
    assert nt.get("i8", dtype=DType.I32).to_vec1() == [-1, 2]  # still readable with dtype=
    w = cj.nn.VarBuilder.from_npz(tmp_path / "x.npz", dtype=DType.F32).get((1, 3), "u64")
    assert np.asarray(w).tolist() == [[0, 1, 2]]


def test_write_errors_and_atomic(tmp_path):
    p = tmp_path / "keep.npy"
    npy.write_npy(T(np.ones(2, np.float32)), p)
    before = p.read_bytes()
    with pytest.raises(errors.Npy, match="bf16 is not supported"):
        npy.write_npy(T(jnp.ones(2, jnp.bfloat16)), p)
    with pytest.raises(errors.Npy, match="f8e4m3 is not supported"):
        npy.write_npz([("a", T(np.ones(1, np.float32))), ("b", T(jnp.ones(2, jnp.float8_e4m3fn)))], p)

    @jax.jit
    def f(x):
        npy.write_npz([("a", T(np.ones(1, np.float32))), ("b", x)], p)
        return x

    with pytest.raises(errors.TracingError):
        f(T(np.ones(3, np.float32)))
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["keep.npy"]


def write_raw(path, header: bytes, data: bytes = b"", version: int = 1, hlen: int | None = None) -> str:
    n = len(header) if hlen is None else hlen
    lenb = n.to_bytes(2 if version == 1 else 4, "little")
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY" + bytes([version, 0]) + lenb + header + data)
    return str(path)


@pytest.mark.parametrize(
    "header,data,hlen,match",
    [
        (b"{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", b"\0" * 8, None, "big-endian descr >f4"),
        (b"{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }", b"\0" * 16, None, "unrecognized descr <c8"),
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", b"\0" * 7, None, r"truncated data.*needs 8"),
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000000,)}", b"\0" * 8, None, "truncated"),
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", b"", 5000, "header length 5000 is larger"),
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", b"", None, "invalid shape"),
        (b"{'shape': (2,), 'fortran_order': False}", b"", None, "must hold exactly.*missing: descr"),
        (b"{'descr': '<f4'}", b"", None, "missing: fortran_order, shape"),
        (b"{'descr': '<f4', 'fortran_ordeR': True, 'shape': (2, 3)}", b"\0" * 24, None,
         "missing: fortran_order; unexpected: 'fortran_ordeR'"),
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': (0, 9223372036854775808)}", b"", None,
         r"shape \[0, 9223372036854775808\] of <f4 is too big"),
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4611686018427387904, 4611686018427387904)}", b"",
         None, "too big for any array"),
        (b"__import__('os')", b"", None, "unable to parse header"),
        (b"{'descr': '<f4', 'fortran_order': 'x', 'shape': (1,)}", b"\0" * 4, None, "unknown fortran_order"),
    ],
)
def test_corrupt_npy(tmp_path, header, data, hlen, match):
    p = write_raw(tmp_path / "bad.npy", header, data, hlen=hlen)
    with pytest.raises(errors.Npy, match=match) as ei:
        npy.read_npy(p)
    assert "bad.npy" in str(ei.value)


def test_corrupt_containers(tmp_path):
    (tmp_path / "m.npy").write_bytes(b"NOTNUMPYxxxxxxxx")
    with pytest.raises(errors.Npy, match="magic string mismatch"):
        npy.read_npy(tmp_path / "m.npy")
    (tmp_path / "s.npy").write_bytes(b"\x93NU")
    with pytest.raises(errors.Npy, match="truncated file"):
        npy.read_npy(tmp_path / "s.npy")
    write_raw(tmp_path / "v.npy", b"{}", version=7)
    with pytest.raises(errors.Npy, match="unsupported version 7"):
        npy.read_npy(tmp_path / "v.npy")
    (tmp_path / "z.npz").write_bytes(b"not a zip")
    with pytest.raises(errors.Npy, match="not a valid npz"):
        npy.read_npz(tmp_path / "z.npz")
    with zipfile.ZipFile(tmp_path / "y.npz", "w") as zf:
        zf.writestr("a.npy", b"\x93NUMPY\x01\x00")
    with pytest.raises(errors.Npy, match=r"truncated file.*y\.npz, array 'a'"):
        npy.read_npz(tmp_path / "y.npz")


def test_extra_descrs(tmp_path):
    np.save(tmp_path / "u2.npy", np.array([1, 65535], np.uint16))
    t = npy.read_npy(tmp_path / "u2.npy")
    assert t.dtype == DType.U32 and np.asarray(t).tolist() == [1, 65535]
    np.save(tmp_path / "i1.npy", np.array([-1, 5], np.int8))
    with pytest.raises(errors.Npy, match="pass dtype="):
        npy.read_npy(tmp_path / "i1.npy")
    assert np.asarray(npy.read_npy(tmp_path / "i1.npy", dtype="i32")).tolist() == [-1, 5]


def _npy(a) -> bytes:
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def test_npz_directories_duplicates_and_short_members(tmp_path):
    """Directory entries are skipped (as np.load); two members of one name are refused by every reader."""
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as z:
        z.writestr("a.npy", _npy(np.ones(2, np.float32)))
        z.writestr("sub/", b"")
    assert [n for n, _ in npy.read_npz(tmp_path / "d.npz")] == ["a"]
    assert npy.NpzTensors(tmp_path / "d.npz").names() == ["a"]
    with zipfile.ZipFile(tmp_path / "d.npz", "a") as z:  # np.load returns such a member as bytes: refused here
        z.writestr("readme.txt", b"hello, world")
    with pytest.raises(errors.Npy, match=r"not a npy file\) \(.*d\.npz, array 'readme\.txt'\)"):
        npy.read_npz(tmp_path / "d.npz")
    with zipfile.ZipFile(tmp_path / "dup.npz", "w") as z, pytest.warns(UserWarning, match="Duplicate name"):
        z.writestr("a.npy", _npy(np.ones(2, np.float32)))
        z.writestr("a.npy", _npy(np.zeros(3, np.float32)))
    for read in (npy.read_npz, lambda p: npy.read_npz_by_name(p, ["a"]), npy.NpzTensors):
        with pytest.raises(errors.Npy, match=r"two members named 'a\.npy' and 'a\.npy' \(.*dup\.npz, array 'a'\)"):
            read(tmp_path / "dup.npz")
    with zipfile.ZipFile(tmp_path / "t.npz", "w") as z:  # bytes after the data: not an np.savez member
        z.writestr("a.npy", _npy(np.ones(2, np.float32)) + b"\0" * 4)
    with pytest.raises(errors.Npy, match=r"trailing data: shape \[2\] of <f4 needs 8 bytes, the file holds 12"):
        npy.read_npz(tmp_path / "t.npz")
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as z:  # 1002 floats whose last 1000 are missing
        z.writestr("a.npy", _npy(np.ones(1002, np.float32))[:-4000])
    data = bytearray((tmp_path / "short.npz").read_bytes())
    for sig, offs in ((b"PK\x03\x04", (18, 22)), (b"PK\x01\x02", (20, 24))):  # the sizes claim them
        j = data.find(sig)
        for off in offs:
            struct.pack_into("<I", data, j + off, struct.unpack_from("<I", data, j + off)[0] + 4000)
    (tmp_path / "short.npz").write_bytes(bytes(data))
    with pytest.raises(errors.Npy, match=r"zip member 'a\.npy': the archive ends before the member's recorded"):
        npy.read_npz(tmp_path / "short.npz")


def test_npz_encrypted_member(tmp_path):
    with zipfile.ZipFile(tmp_path / "e.npz", "w") as z:
        z.writestr("a.npy", _npy(np.arange(3, dtype=np.float32)))
    raw = bytearray((tmp_path / "e.npz").read_bytes())
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        raw[raw.find(sig) + off] |= 1  # the 'encrypted' flag
    (tmp_path / "e.npz").write_bytes(bytes(raw))
    with pytest.raises(errors.Npy, match=r"zip member 'a\.npy': RuntimeError: .*encrypted.*e\.npz, array 'a'"):
        npy.read_npz(tmp_path / "e.npz")
    with pytest.raises(errors.Npy, match="encrypted"):
        npy.NpzTensors(tmp_path / "e.npz").get("a")


def test_write_errors_name_the_target(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cannot write .*nope/x\.npy"):
        npy.write_npy(T(np.ones(2, np.float32)), tmp_path / "nope" / "x.npy")
    x = jnp.ones(2)
    x.delete()
    with pytest.raises(errors.Npy, match=r"write_npz of 'a' .*cannot be read: .*(deleted|donated)"):
        npy.write_npz({"a": T(x)}, tmp_path / "x.npz")
    assert os.listdir(tmp_path) == []


def test_float_to_int_on_read_saturates_as_to_dtype(tmp_path):
    """``read_npy(p, dtype=U8)`` of floats converts as ``to_dtype`` does (saturating, NaN -> 0), not
    as numpy's cast (300.0 -> 44, -1.0 -> 255)."""
    a = np.array([-1.0, 300.0, np.nan, 2.7, -3e9, 3e9], np.float32)
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "a.npz", a=a)
    for dt in (DType.U8, DType.U32, DType.I32):
        want = cj.Tensor(a).to_dtype(dt).to_vec1()
        assert npy.read_npy(tmp_path / "a.npy", dtype=dt).to_vec1() == want, dt
        assert npy.read_npz(tmp_path / "a.npz", dtype=dt)[0][1].to_vec1() == want, dt
    assert npy.read_npy(tmp_path / "a.npy", dtype=DType.U8).to_vec1() == [0, 255, 0, 2, 0, 255]
