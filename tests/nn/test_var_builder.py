"""VarBuilder backends and errors; VarMap determinism, save/load; init variants."""

from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

import candlejax.nn as nn
from candlejax import Device, DType, errors
from candlejax.nn import Var, VarBuilder, VarMap
from candlejax.nn.init import (
    DEFAULT_KAIMING_NORMAL,
    DEFAULT_KAIMING_UNIFORM,
    Const,
    FanInOut,
    Init,
    Kaiming,
    NonLinearity,
    NormalOrUniform,
    Randn,
    Uniform,
)
from candlejax.nn.module import save_safetensors_dict


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("st")
    rng = np.random.default_rng(0)
    a = {"model.embed.weight": rng.standard_normal((5, 4)).astype(np.float32),
         "model.layers.0.attn.q.weight": rng.standard_normal((4, 4)).astype(np.float32)}  # fmt: skip
    b = {"model.layers.1.attn.q.weight": rng.standard_normal((4, 4)).astype(np.float32),
         "model.norm.weight": np.ones(4, np.float32)}  # fmt: skip
    save_safetensors_dict(a, d / "model-00001-of-00002.safetensors")
    save_safetensors_dict(b, d / "model-00002-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {**{k: "model-00001-of-00002.safetensors" for k in a},
                                            **{k: "model-00002-of-00002.safetensors" for k in b}}}  # fmt: skip
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    np.savez(d / "w.npz", **a)
    return d, {**a, **b}


def test_prefixes():
    vb = VarBuilder.zeros(DType.F32, Device.Cpu)
    assert vb.pp("model").pp("layers").pp(3).prefix() == "model.layers.3"
    assert vb.push_prefix("a").set_prefix("x.y").prefix() == "x.y"
    assert vb.pp("a").root().prefix() == ""
    v = vb.pp("model").get((2, 3), "weight")
    assert isinstance(v, Var) and v.name == "model.weight" and float(jnp.abs(v._a).sum()) == 0
    assert vb.dtype() == DType.F32 and vb.device() == Device.Cpu
    assert vb.to_dtype(DType.BF16).get(2, "w").dtype == DType.BF16
    assert vb.contains_tensor("anything")


def test_sharded_index_and_many_files(files):
    d, ref = files
    vb = VarBuilder.from_mmaped_safetensors([d / "model.safetensors.index.json"], DType.F32, Device.Cpu)
    w = vb.pp("model").pp("layers").pp(1).pp("attn").pp("q").get((4, 4), "weight")
    assert w.name == "model.layers.1.attn.q.weight"
    np.testing.assert_array_equal(np.asarray(w._a), ref["model.layers.1.attn.q.weight"])
    vb2 = VarBuilder.from_mmaped_safetensors(sorted(d.glob("*.safetensors")), DType.BF16, Device.Cpu)
    e = vb2.pp("model.embed").get((5, 4), "weight")
    assert e.dtype == DType.BF16
    assert vb2.contains_tensor("model.norm.weight") and not vb2.contains_tensor("model.nope")
    assert vb2.get_unchecked("model.norm.weight").shape == (4,)


def test_missing_tensor_names_path_file_and_nearest(files):
    d, _ = files
    vb = VarBuilder.from_mmaped_safetensors([d / "model.safetensors.index.json"])
    with pytest.raises(errors.CannotFindTensor) as ei:
        vb.pp("model.layers.1.attn").pp("k").get((4, 4), "weight")
    msg = str(ei.value)
    assert "cannot find tensor model.layers.1.attn.k.weight" in msg
    assert "model-00001-of-00002.safetensors" in msg
    assert "nearest names: model.layers.1.attn.q.weight" in msg


def test_wrong_shape_names_path_and_file(files):
    d, _ = files
    vb = VarBuilder.from_mmaped_safetensors([d / "model.safetensors.index.json"])
    with pytest.raises(errors.UnexpectedShape) as ei:
        vb.pp("model.embed").get((4, 5), "weight")
    msg = str(ei.value)
    assert msg.startswith("shape mismatch for model.embed.weight, expected: [4, 5], got: [5, 4]")
    assert "model-00001-of-00002.safetensors" in msg


def test_from_tensors_npz_rename(files):
    d, ref = files
    vb = VarBuilder.from_tensors({"a.w": jnp.ones((2, 2)), "b": np.zeros(3, np.float32)}, DType.F32, Device.Cpu)
    assert vb.pp("a").get((2, 2), "w").name == "a.w"
    with pytest.raises(errors.CannotFindTensor, match=r"nearest names: a\.w"):
        vb.pp("a").get((2, 2), "ww")
    vz = VarBuilder.from_npz(d / "w.npz")
    np.testing.assert_array_equal(np.asarray(vz.get((5, 4), "model.embed.weight")._a), ref["model.embed.weight"])
    # rename_f: the model asks for "embed.weight", the file holds "model.embed.weight"
    vr = VarBuilder.from_npz(d / "w.npz").rename_f(lambda p: "model." + p)
    w = vr.pp("embed").get((5, 4), "weight")
    assert w.name == "embed.weight"


def test_varmap_deterministic_independent_of_order():
    def build(order):
        vm = VarMap(seed=7)
        vb = VarBuilder.from_varmap(vm)
        for name in order:
            nn.linear(4, 3, vb.pp(name))
        return vm

    a, b = build(["x", "y"]), build(["y", "x"])
    for k in a.data():
        np.testing.assert_array_equal(np.asarray(a.data()[k]._a), np.asarray(b.data()[k]._a))
    c = build(["x", "y"])
    assert not np.array_equal(np.asarray(a.data()["x.weight"]._a), np.asarray(a.data()["y.weight"]._a))
    assert [v.name for v in c.all_vars()] == ["x.bias", "x.weight", "y.bias", "y.weight"]
    d = VarMap(seed=8)
    nn.linear(4, 3, VarBuilder.from_varmap(d).pp("x"))
    assert not np.array_equal(np.asarray(a.data()["x.weight"]._a), np.asarray(d.data()["x.weight"]._a))


def test_varmap_get_existing_set_save_load(tmp_path):
    vm = VarMap()
    vb = VarBuilder.from_varmap(vm)
    w = vb.get_with_hints((2, 3), "w", Const(2.0))
    assert vb.get((2, 3), "w")._a is w._a  # existing var returned as-is
    # Candle's text: the requested shape, then the existing Var's
    with pytest.raises(errors.Error, match=r"shape mismatch on w: \[3, 2\] <> \[2, 3\]"):
        vb.get((3, 2), "w")
    with pytest.raises(errors.Error, match="`get_unchecked` does not make sense for `VarMap`"):
        vb.get_unchecked("w")
    vm.set_one("w", np.ones((2, 3)))
    np.testing.assert_array_equal(np.asarray(vm.data()["w"]._a), 1.0)
    with pytest.raises(errors.Error, match="cannot find nope in VarMap"):
        vm.set_one("nope", np.ones(1))
    p = tmp_path / "vm.safetensors"
    vm.save(p)
    vm2 = VarMap()
    VarBuilder.from_varmap(vm2).get((2, 3), "w")
    vm2.load(p)
    np.testing.assert_array_equal(np.asarray(vm2.data()["w"]._a), 1.0)
    vm3 = VarMap()
    VarBuilder.from_varmap(vm3).get((2,), "other")
    with pytest.raises(errors.Error, match="error setting other using data from"):
        vm3.load(p)


def test_init_variants_statistics():
    vm = VarMap(seed=0)
    vb = VarBuilder.from_varmap(vm)
    k = vb.get_with_hints((256, 128), "k", DEFAULT_KAIMING_NORMAL)
    assert abs(float(np.std(np.asarray(k._a))) - math.sqrt(2 / 128)) < 0.01
    ku = vb.get_with_hints((256, 128), "ku", DEFAULT_KAIMING_UNIFORM)
    assert float(np.abs(np.asarray(ku._a)).max()) <= math.sqrt(3) * math.sqrt(2 / 128) + 1e-6
    u = vb.get_with_hints((1000,), "u", Uniform(-0.5, 0.5))
    u = np.asarray(u._a)
    assert -0.5 <= u.min() and u.max() < 0.5
    r = np.asarray(vb.get_with_hints((4000,), "r", Randn(3.0, 0.5))._a)
    assert abs(r.mean() - 3) < 0.05 and abs(r.std() - 0.5) < 0.05
    assert FanInOut.FanIn.for_shape((8, 4, 3, 3)) == 36 and FanInOut.FanOut.for_shape((8, 4, 3, 3)) == 72
    assert NonLinearity.Tanh.gain() == 5 / 3 and NonLinearity.ExplicitGain(2.5).gain() == 2.5
    kf = Kaiming(NormalOrUniform.Normal, FanInOut.FanOut, NonLinearity.Linear)
    assert kf.std((10, 40)) == 1 / math.sqrt(10)
    assert Init.default() == Const(0.0) and nn.ZERO == Init.Const(0.0) and nn.ONE.value == 1.0
    v = Randn(0.0, 1.0).var((3,), DType.F32, Device.Cpu, key=0, name="v")
    assert isinstance(v, Var) and v.name == "v"


def test_linear_init_matches_candle_recipe():
    lin = nn.linear(400, 50, VarBuilder.from_varmap(VarMap(seed=1)))
    assert abs(float(np.std(np.asarray(lin.weight._a))) - math.sqrt(2 / 400)) < 0.005
    assert float(np.abs(np.asarray(lin.bias._a)).max()) <= 1 / math.sqrt(400)


def test_non_tensor_values_are_named_as_such():
    # "hello" said "shape mismatch for w, expected: [1], got: []"; set_one("w", "x") a numpy ValueError
    with pytest.raises(errors.Msg, match=r"w in the tensor dict is not a tensor: a str \('hello'\)"):
        VarBuilder.from_tensors({"w": "hello"}).get((1,), "w")
    assert VarBuilder.from_tensors({"w": [1.0]}).get((1,), "w").shape == (1,)
    vm = VarMap()
    VarBuilder.from_varmap(vm, DType.F32, Device.Cpu).get((1,), "w")
    with pytest.raises(errors.VarMapError, match=r"set_one\('w'\): the value must be a Tensor, an array or numbers"):
        vm.set_one("w", "x")


def test_from_npz_reads_through_candlejax_npz_reader(tmp_path):
    """Truncated, big-endian and object members are npy/npz errors naming the file and the array."""
    import io
    import zipfile

    def npz(path, a, cut=0):
        b = io.BytesIO()
        np.save(b, a, allow_pickle=True)
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("a.npy", b.getvalue()[: len(b.getvalue()) - cut])
        return path

    p = npz(tmp_path / "t.npz", np.arange(3, dtype="<f4"), cut=4)
    with pytest.raises(errors.Npy, match=r"truncated.*t\.npz, array 'a'"):
        VarBuilder.from_npz(p).get((3,), "a")
    p = npz(tmp_path / "b.npz", np.arange(3, dtype=">f4"))
    with pytest.raises(errors.Npy, match=r"big-endian.*b\.npz, array 'a'"):
        VarBuilder.from_npz(p).get((3,), "a")
    p = npz(tmp_path / "o.npz", np.array([None, 1], dtype=object))
    with pytest.raises(errors.Npy, match=r"unrecognized descr.*o\.npz, array 'a'"):
        VarBuilder.from_npz(p).get((2,), "a")
    p = npz(tmp_path / "i.npz", np.array([-1, 5], np.int8))
    w = VarBuilder.from_npz(p, dtype=DType.F32).get((2,), "a")
    assert w.dtype == DType.F32 and np.asarray(w).tolist() == [-1, 5]
    with pytest.raises(errors.UnexpectedShape, match=r"i\.npz"):
        VarBuilder.from_npz(p).get((3,), "a")


def test_varmap_load_never_wraps_integers(tmp_path):
    """I32 [300, -1] was cast into a U8 Var as [44, 255]. Casting to the Var's dtype is the documented
    rule (docs/differences/nn.md); integer values the Var cannot hold are refused, floats still cast."""
    from candlejax.io import safetensors as st

    p = tmp_path / "f.safetensors"
    for data, dt, match in (
        (np.array([300, -1], np.int32), "u8", r"the file holds I32 \[2\] with the value 300, which the Var's U8"),
        (np.array([1.5, 2.0], np.float32), "i32", r"the file holds F32 \[2\] with the value 1\.5, which the Var's"),
        (np.array([np.nan, 2.0], np.float32), "u32", r"the file holds F32 \[2\] with the value nan"),
    ):
        vm = VarMap(0)
        vm.get((2,), "w", None, dt, None)
        st.save({"w": data}, p)
        with pytest.raises(errors.VarMapError, match=r"error setting w using data from .*f\.safetensors: " + match):
            vm.load(p)
        assert np.asarray(vm.data()["w"]._a).tolist() == [0, 0]
    for data, dt, want in (
        (np.array([255, 0], np.int32), "u8", [255, 0]),
        (np.array([3.0, -2.0], np.float32), "i32", [3, -2]),
        (np.array([1.0009765625, 2.0], np.float32), "bf16", [1.0, 2.0]),  # floats cast (rounded), as documented
    ):
        vm = VarMap(0)
        vm.get((2,), "w", None, dt, None)
        st.save({"w": data}, p)
        vm.load(p)
        assert np.asarray(vm.data()["w"]._a).astype(np.float64).tolist() == want


def test_varmap_set_one_refuses_another_dtype_and_values_that_do_not_fit():
    """A Tensor of another dtype raises, as Candle's ``Var::set`` (an f32 Tensor was truncated into a U32
    Var); numbers convert only when the Var's dtype holds them (0.9 became 0, NaN 2147483648)."""
    from candlejax import Tensor

    vm = VarMap()
    VarBuilder.from_varmap(vm, DType.U32, Device.Cpu).get((3,), "w")
    with pytest.raises(errors.DTypeMismatchBinaryOp, match=r"set_one\('w'\), lhs: U32, rhs: F32"):
        vm.set_one("w", Tensor(np.array([1.0, 2.0, 3.0], np.float32)))
    for bad in ([0.9, -1.7, 2.99], [1.0, float("nan"), 2.0], [1, -1, 2]):
        with pytest.raises(errors.InvalidArgument):
            vm.set_one("w", bad)
    vm.set_one("w", [1, 2, 3])
    assert vm.data()["w"].to_vec1() == [1, 2, 3]
    vm.set([("w", Tensor(np.array([4, 5, 6], np.uint32)))])
    assert vm.data()["w"].to_vec1() == [4, 5, 6]


def test_chained_renames_apply_newest_first_as_candle():
    # Candle's Rename backend renames, then asks the builder it wraps (which applies the older renames)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    vb = VarBuilder.from_tensors({"b": a, "c": a * 10})
    chained = vb.rename_f(lambda s: s.replace("a", "b")).rename_f(lambda s: s.replace("b", "c"))
    w = chained.get((2, 3), "a")
    np.testing.assert_array_equal(np.asarray(w._a), a)  # f1(f2("a")) == "b"
    assert w.name == "a"
    assert chained.contains_tensor("a")


@pytest.mark.parametrize(
    ("dtype", "init", "op"),
    [(DType.U32, Randn(0.0, 1.0), "rand_normal"), (DType.U8, Uniform(-1.0, 1.0), "rand_uniform"),
     (DType.I32, DEFAULT_KAIMING_NORMAL, "rand_normal"), (DType.U8, DEFAULT_KAIMING_UNIFORM, "rand_uniform")],
)  # fmt: skip
def test_random_init_into_integer_dtype_raises_as_candle(dtype, init, op):
    # Candle's rand_normal / rand_uniform raise for integer dtypes; a cast of the samples gave all zeros
    with pytest.raises(errors.UnsupportedDTypeForOp, match=rf"unsupported dtype {dtype.name} for op {op}"):
        VarBuilder.from_varmap(VarMap(), dtype).get_with_hints((4, 4), "r", init)


def test_const_init_into_integer_dtype_must_be_an_integer_in_range():
    vb = VarBuilder.from_varmap(VarMap(), DType.U32)
    assert vb.get_with_hints((3,), "r", Const(3.0)).to_vec1() == [3, 3, 3]
    for v in (0.5, -1.0, math.nan):
        with pytest.raises(errors.InvalidArgument, match=r"Init\.Const\(.*\) into a U32 Var: the value must be an int"):
            vb.get_with_hints((3,), f"c{v}", Const(v))


def test_kaiming_with_a_zero_fan_gives_the_empty_tensor():
    vb = VarBuilder.from_varmap(VarMap())
    assert vb.get_with_hints((3, 0), "a", DEFAULT_KAIMING_NORMAL).shape == (3, 0)
    assert vb.get_with_hints((0, 3), "b", Kaiming(NormalOrUniform.Uniform, FanInOut.FanOut)).shape == (0, 3)
    assert Kaiming().std((3, 0)) == math.inf  # Candle: gain / (0 as f64).sqrt()


@pytest.mark.parametrize(("init", "hint"), [("randn", r"pass Init\.Randn\(mean, stdev\)"),
                                            (0.5, r"for a constant, pass Init\.Const\(0\.5\)"), ([1], "")])  # fmt: skip
def test_init_that_is_not_an_init_is_named(init, hint):
    for vb in (VarBuilder.from_varmap(VarMap()), VarBuilder.zeros()):
        with pytest.raises(errors.InvalidArgument, match=r"get_with_hints: init must be an Init .*, got .*" + hint):
            vb.get_with_hints((2,), "w", init)


def test_from_tensors_takes_name_tensor_pairs_or_names_the_rule():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    vb = VarBuilder.from_tensors([("w", a), ("b", np.ones(3, np.float32))])
    np.testing.assert_array_equal(np.asarray(vb.get((2, 3), "w")._a), a)
    for bad, what in [([("w", a), ("w", a)], "appears twice"), ([a], "item 0"), (3, "got a int"), ("w", "got a str")]:
        with pytest.raises(errors.InvalidArgument, match=r"from_tensors takes a dict \{name: tensor\} .*" + what):
            VarBuilder.from_tensors(bad)


@pytest.mark.parametrize("ctor", [VarBuilder.from_mmaped_safetensors, VarBuilder.from_npz, VarBuilder.from_pth])
def test_missing_file_or_directory_is_a_candlejax_error_and_an_oserror(ctor, tmp_path):
    name = ctor.__name__
    with pytest.raises(errors.NoSuchFile, match=rf"{name}: no such file: '.*nope'") as ei:
        ctor(tmp_path / "nope")
    assert isinstance(ei.value, FileNotFoundError) and isinstance(ei.value, errors.Error)
    with pytest.raises(errors.IsADirectory, match=rf"{name}: is a directory") as ei:
        ctor(tmp_path)
    assert isinstance(ei.value, IsADirectoryError)
    if ctor is VarBuilder.from_mmaped_safetensors:
        with pytest.raises(FileNotFoundError):
            ctor([tmp_path / "a.safetensors"])


def test_zeros_get_unchecked_names_the_candlejax_spelling():
    with pytest.raises(errors.Msg, match=r"does not make sense for `VarBuilder\.zeros\(\)`, use `get\(shape, name\)`"):
        VarBuilder.zeros().get_unchecked("w")


def test_varmap_get_and_load_name_bad_inits_and_paths(tmp_path):
    vm = VarMap()
    with pytest.raises(errors.InvalidArgument, match=r"Init.Randn\(mean, stdev\)"):
        vm.get((2,), "w", "randn", DType.F32, Device.Cpu)
    with pytest.raises(errors.NoSuchFile, match=r"VarMap\.load"):
        vm.load(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError):  # still the built-in error for existing handlers
        vm.load(tmp_path / "missing.safetensors")
    with pytest.raises(errors.IsADirectory):
        vm.load(tmp_path)


def test_files_names_the_checkpoint_files(tmp_path):
    f = tmp_path / "model.safetensors"
    from candlejax import safetensors

    safetensors.save({"w": np.zeros(2, np.float32)}, f)
    assert VarBuilder.from_mmaped_safetensors([f], DType.F32, Device.Cpu).pp("x").files() == [str(f)]
    assert VarBuilder.from_varmap(VarMap(), DType.F32, Device.Cpu).files() == []


def test_from_backend_takes_candles_simple_backends(tmp_path):
    """Candle implements ``SimpleBackend`` for ``HashMap<String, Tensor>``, ``VarMap``,
    ``MmapedSafetensors``, ``NpzTensors`` and ``PthTensors`` (candle-nn/src/var_builder.rs), so
    ``VarBuilder::from_backend(Box::new(x), dtype, dev)`` and ``new_with_args`` take each of them."""
    import torch

    from candlejax.io.npy import NpzTensors
    from candlejax.io.pth import PthTensors
    from candlejax.io.safetensors import MmapedSafetensors

    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_safetensors_dict({"a.w": w}, tmp_path / "m.safetensors")
    np.savez(tmp_path / "m.npz", **{"a.w": w})
    torch.save({"a.w": torch.tensor(w)}, tmp_path / "m.pth")
    vm = VarMap()
    backends = {
        "dict": {"a.w": w},
        "mmaped": MmapedSafetensors(str(tmp_path / "m.safetensors")),
        "npz": NpzTensors(tmp_path / "m.npz"),
        "pth": PthTensors(tmp_path / "m.pth"),
    }
    for label, backend in backends.items():
        for make in (VarBuilder.from_backend, VarBuilder.new_with_args):
            vb = make(backend, DType.F32, Device.Cpu)
            assert vb.pp("a").contains_tensor("w") and not vb.contains_tensor("b"), label
            got = vb.pp("a").get((2, 3), "w")
            np.testing.assert_array_equal(np.asarray(got), w, err_msg=label)
            assert got.dtype == DType.F32 and got.name == "a.w", label
            with pytest.raises(errors.UnexpectedShape):
                vb.pp("a").get((3, 2), "w")
            with pytest.raises(errors.CannotFindTensor):
                vb.get((2, 3), "b")
    vb = VarBuilder.from_backend(vm, DType.F32, Device.Cpu)
    lin = nn.linear(3, 2, vb.pp("fc"))
    assert sorted(vm.data()) == ["fc.bias", "fc.weight"] and lin.weight is vm.data()["fc.weight"]


def test_a_users_simple_backend_may_return_tensors():
    """Candle's ``SimpleBackend::get`` returns a ``Tensor``: a backend written that way (a subclass, or
    any object with ``get`` / ``get_unchecked`` / ``contains_tensor``) builds working layers."""
    from candlejax import Tensor
    from candlejax.nn.var_builder import SimpleBackend

    class Ones:
        def get(self, s, name, h, dtype, dev):
            return Tensor.ones(s, dtype, dev)

        def get_unchecked(self, name, dtype, dev):
            return Tensor.ones((2,), dtype, dev)

        def contains_tensor(self, name):
            return True

    class OnesBackend(Ones, SimpleBackend):
        pass

    for backend in (Ones(), OnesBackend()):
        vb = VarBuilder.from_backend(backend, DType.F32, Device.Cpu)
        lin = nn.linear(3, 2, vb.pp("l"))
        assert lin.weight.name == "l.weight" and lin.weight.dtype == DType.F32
        assert lin.forward(Tensor(np.ones((1, 3), np.float32))).to_vec2() == [[4.0, 4.0]]
        assert vb.get_unchecked("x").to_vec1() == [1.0, 1.0]


def test_a_tensor_name_that_is_not_a_str_raises():
    for vb in (VarBuilder.zeros(DType.F32, Device.Cpu), VarBuilder.zeros(DType.F32, Device.Cpu).pp("a")):
        with pytest.raises(errors.ArgumentType, match="tensor name is a str"):
            vb.get((1,), 3)
        with pytest.raises(errors.ArgumentType, match="tensor name is a str"):
            vb.contains_tensor(None)


def test_from_backend_rejects_a_non_backend():
    with pytest.raises(errors.InvalidArgument, match="from_backend"):
        VarBuilder.from_backend(42, DType.F32, Device.Cpu)


def test_rename_takes_a_renamer_object():
    """Candle's ``vb.rename(renamer)`` takes a ``Renamer`` (a ``rename(&self, name) -> Cow<str>``
    method, candle-nn/src/var_builder.rs); ``rename_f`` takes a closure. The doc test there:
    after renaming ``bar`` to ``foo`` both names are found."""

    class BarToFoo:
        def rename(self, name: str) -> str:
            return "foo" if name == "bar" else name

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    vb = VarBuilder.from_tensors({"foo": a}, DType.F32, Device.Cpu)
    assert not vb.contains_tensor("bar")
    for renamed in (vb.rename(BarToFoo()), vb.rename_f(BarToFoo().rename)):
        assert renamed.contains_tensor("bar") and renamed.contains_tensor("foo")
        assert not renamed.contains_tensor("baz")
        np.testing.assert_array_equal(np.asarray(renamed.get((2, 3), "bar")), a)
    with pytest.raises(errors.InvalidArgument, match="rename"):
        vb.rename(42)


def test_bad_arguments_raise_candlejax_errors():
    """Arguments Candle's types would refuse at compile time raise a candlejax error naming the call."""
    vb = VarBuilder.zeros(DType.F32, Device.Cpu)
    with pytest.raises(errors.InvalidArgument, match="rename_f"):
        vb.rename_f("w")
    with pytest.raises(errors.InvalidArgument, match="from_slice_safetensors"):
        VarBuilder.from_slice_safetensors("not bytes", DType.F32, Device.Cpu)
    vm = VarMap()
    VarBuilder.from_varmap(vm, DType.F32, Device.Cpu).get((2,), "w")
    with pytest.raises(errors.InvalidArgument, match=r"VarMap\.set"):
        vm.set([("w",)])
    with pytest.raises(errors.InvalidArgument, match=r"VarMap\.set"):
        vm.set(5)


def test_sharded_safetensors_var_builder(tmp_path):
    """Candle's ``ShardedSafeTensors::var_builder(paths, dtype, dev)`` with ``Shard { dim, rank,
    world_size }`` hints (candle-nn/src/var_builder.rs): ``get_sharded("t", 0, 1, 2)`` is
    ``t.i(512..)`` of a ``(1024, ..)`` tensor; ``world_size == 1`` (the default hint) checks the shape
    and reads the whole tensor; the shape is not checked when sharding."""
    from candlejax.nn.var_builder import Shard, ShardedSafeTensors

    w = np.arange(48, dtype=np.float32).reshape(4, 12)
    save_safetensors_dict({"m.w": w}, tmp_path / "m.safetensors")
    vb = ShardedSafeTensors.var_builder([tmp_path / "m.safetensors"], DType.F16, Device.Cpu)
    assert Shard.default() == Shard(dim=0, rank=0, world_size=1)
    for dim, rank, world_size, want in [(0, 1, 2, w[2:]), (1, 2, 3, w[:, 8:]), (1, 0, 4, w[:, :3])]:
        got = vb.pp("m").get_with_hints((), "w", Shard(dim=dim, rank=rank, world_size=world_size))
        assert got.dtype == DType.F16 and got.name == "m.w"
        np.testing.assert_array_equal(np.asarray(got).astype(np.float32), want)
    np.testing.assert_array_equal(np.asarray(vb.pp("m").get((4, 12), "w")).astype(np.float32), w)
    with pytest.raises(errors.UnexpectedShape):
        vb.pp("m").get((12, 4), "w")
    with pytest.raises(errors.ShapeMismatchSplit):
        vb.get_with_hints((), "m.w", Shard(dim=1, rank=0, world_size=5))
    with pytest.raises(errors.Msg, match="dimensions != 0 or 1"):
        vb.get_with_hints((), "m.w", Shard(dim=2, rank=0, world_size=2))
    with pytest.raises(errors.CannotFindTensor):
        vb.get_with_hints((), "m.q", Shard(dim=0, rank=0, world_size=2))
    with pytest.raises(errors.Msg, match="get_unchecked"):
        vb.get_unchecked("m.w")
    assert vb.contains_tensor("m.w") and not vb.contains_tensor("m.q")
    with pytest.raises(errors.InvalidArgument):  # a Shard is no init for other backends
        VarBuilder.zeros(DType.F32, Device.Cpu).get_with_hints((2,), "w", Shard(0, 0, 2))


@pytest.mark.parametrize(
    ("init", "err", "msg"),
    [(Uniform(2.0, 1.0), errors.Msg, r"Init\.Uniform: lo must not exceed up, got lo=2\.0, up=1\.0"),
     (Uniform(-math.inf, 1.0), errors.InvalidArgument, r"Init\.Uniform: lo must be finite"),
     (Randn(0.0, -1.0), errors.Msg, r"Init\.Randn: stdev must be non-negative, got -1\.0"),
     (Randn("a", 1.0), errors.ArgumentType, r"Init\.Randn: mean must be a number, got 'a'"),
     (Kaiming("normal"), errors.ArgumentType, r"Init\.Kaiming: dist must be a NormalOrUniform"),
     (Kaiming(NormalOrUniform.Normal, "fan_in"), errors.ArgumentType, r"Init\.Kaiming: fan must be a FanInOut"),
     (Kaiming(NormalOrUniform.Normal, FanInOut.FanIn, 2.0), errors.ArgumentType,
      r"Init\.Kaiming: non_linearity must be a NonLinearity")],
)  # fmt: skip
def test_random_init_with_bad_parameters_raises_as_candle(init, err, msg):
    # Candle's rand_uniform / rand_normal use rand's Uniform::new / Normal::new, which fail for an empty
    # or non-finite range and a negative stdev (candle-core/src/cpu_backend/mod.rs); a Kaiming dist that
    # is not NormalOrUniform.Normal silently drew from the uniform one
    for vb in (VarBuilder.from_varmap(VarMap()),):
        with pytest.raises(err, match=msg):
            vb.get_with_hints((4, 4), "r", init)
    with pytest.raises(err, match=msg):
        init.var((4, 4), DType.F32, Device.Cpu, key=0)
