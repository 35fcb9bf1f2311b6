"""Python object protocols on Tensor, Var, Module and VarMap (pickle, copy, ...), checked against what
PyTorch does for its tensors and ``nn.Parameter``s."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from candlejax import Device, DType, Tensor, Var, nn


def _vals(t) -> np.ndarray:
    return np.asarray(t, dtype=np.float64)


@pytest.mark.parametrize("how", ["pickle", "copy", "deepcopy"])
def test_var_round_trips_as_a_var(how) -> None:
    # torch: pickle / copy / deepcopy of an nn.Parameter give an nn.Parameter with the same values
    src = np.array([1.5, -2.0, 3.25], np.float32)
    p = torch.nn.Parameter(torch.tensor(src))
    v = Var(src, name="lin.weight")
    do = {"pickle": lambda o: pickle.loads(pickle.dumps(o)), "copy": copy.copy, "deepcopy": copy.deepcopy}[how]
    pc, vc = do(p), do(v)
    assert isinstance(pc, torch.nn.Parameter)
    assert type(vc) is Var and vc is not v
    assert vc.name == "lin.weight" and vc.dtype == DType.F32 and vc.shape == (3,) and vc.device == Device.Cpu
    np.testing.assert_array_equal(_vals(vc), pc.detach().numpy().astype(np.float64))


def test_deepcopied_var_is_a_separate_handle() -> None:
    # torch: a deepcopy of a Parameter owns its storage; setting the copy leaves the original alone
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    pc = copy.deepcopy(p)
    with torch.no_grad():
        pc.copy_(torch.tensor([5.0, 6.0]))
    v = Var(np.array([1.0, 2.0], np.float32), name="w")
    vc = copy.deepcopy(v)
    vc.set(Tensor(np.array([5.0, 6.0], np.float32)))
    np.testing.assert_array_equal(_vals(v), p.detach().numpy())
    np.testing.assert_array_equal(_vals(vc), pc.detach().numpy())


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_module_on_a_varmap_round_trips_with_its_varmap(how) -> None:
    vm = nn.VarMap()
    vb = nn.VarBuilder.from_varmap(vm, DType.F32, Device.Cpu)
    lin = nn.linear(3, 2, vb.pp("lin"))
    x = Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    w = np.asarray(lin.weight, np.float64)
    b = np.asarray(lin.bias, np.float64)
    want = np.arange(6, dtype=np.float64).reshape(2, 3) @ w.T + b
    do = {"pickle": lambda o: pickle.loads(pickle.dumps(o)), "deepcopy": copy.deepcopy}[how]
    vm2, lin2 = do((vm, lin))
    np.testing.assert_allclose(_vals(lin2.forward(x)), want, rtol=1e-6)
    assert sorted(vm2.data()) == ["lin.bias", "lin.weight"]
    # the copies still share their Vars, as the originals do; the originals are untouched
    assert vm2.data()["lin.weight"] is lin2.weight
    vm2.set_one("lin.weight", np.zeros((2, 3), np.float32))
    np.testing.assert_allclose(_vals(lin2.forward(x)), np.broadcast_to(b, (2, 2)), rtol=1e-6)
    np.testing.assert_allclose(_vals(lin.forward(x)), want, rtol=1e-6)


def test_tensor_pickle_and_copies_keep_values_dtype_shape_eagerly_and_traced() -> None:
    import jax

    from candlejax import errors

    src = np.array([[1.0, -2.5], [3.0, 0.125]], np.float32)
    t = Tensor(src).to_dtype(DType.BF16)
    want = torch.tensor(src).to(torch.bfloat16)
    for c in (pickle.loads(pickle.dumps(t)), copy.copy(t), copy.deepcopy(t)):
        assert type(c) is Tensor and c.dtype == DType.BF16 and c.shape == (2, 2) and c.device == Device.Cpu
        np.testing.assert_array_equal(_vals(c), pickle.loads(pickle.dumps(want)).float().numpy())
    seen = {}

    def f(x):
        seen["copy"] = copy.copy(x).shape, copy.deepcopy(x).shape
        with pytest.raises(errors.TracingError, match="pickle"):
            pickle.dumps(x)
        with pytest.raises(errors.TracingError, match="pickle"):
            pickle.dumps(Var(x, name="w"))
        return x

    jax.jit(f)(t)
    assert seen["copy"] == ((2, 2), (2, 2))


def test_format_spec_on_many_elements_raises_as_numpy_and_torch() -> None:
    # torch / numpy / candle-pyo3: a format spec on a multi-element tensor is a TypeError, not ignored
    src = np.array([1.5, -2.25], np.float32)
    for ref in (src, torch.tensor(src)):
        with pytest.raises(TypeError):
            format(ref, ".2f")
    with pytest.raises(TypeError, match="format"):
        format(Tensor(src), ".2f")
    with pytest.raises(TypeError, match="format"):
        f"{Tensor(src):>40}"
    # an empty spec prints the tensor; a one-element tensor formats its value (numpy's 0-d array)
    assert f"{Tensor(src)}" == str(Tensor(src))
    assert format(Tensor(np.array(2.5, np.float32)), ".2f") == format(np.array(2.5, np.float32), ".2f") == "2.50"


def test_array_copy_false_refuses_a_converting_copy() -> None:
    # numpy 2 (and jax.Array.__array__): copy=False raises ValueError when a copy is needed
    src = np.array([1.0, 2.0], np.float32)
    for ref in (src, torch.tensor(src).numpy()):
        with pytest.raises(ValueError):
            np.asarray(ref, dtype=np.float64, copy=False)
    t = Tensor(src)
    with pytest.raises(ValueError):
        np.asarray(t, dtype=np.float64, copy=False)
    with pytest.raises(ValueError):
        t.__array__(np.float64, copy=False)
    np.testing.assert_array_equal(np.asarray(t, copy=False), src)
    np.testing.assert_array_equal(np.asarray(t, dtype=np.float64), src.astype(np.float64))
    np.testing.assert_array_equal(np.asarray(t, dtype=np.float32, copy=False), src)
    c = np.array(t)
    c[0] = 7.0  # np.array copies: writable, the tensor unchanged
    assert t.to_vec1() == [1.0, 2.0]


def test_weakref_to_tensors_and_vars() -> None:
    import gc
    import weakref

    # torch tensors and numpy arrays take weak references (caches, finalizers)
    weakref.ref(torch.zeros(1))
    weakref.ref(np.zeros(1))
    t = Tensor(np.zeros(2, np.float32))
    v = Var(np.zeros(2, np.float32), name="w")
    rt, rv = weakref.ref(t), weakref.ref(v)
    assert rt() is t and rv() is v
    done = []
    weakref.finalize(t, done.append, "t")
    del t, v
    gc.collect()
    assert rt() is None and rv() is None and done == ["t"]


def test_augmented_assignment_on_a_var_updates_the_shared_handle() -> None:
    # torch: `p -= lr * g` (under no_grad) updates the Parameter the model holds
    w0 = np.array([[1.0, -2.0]], np.float32)
    g = np.array([[0.5, 0.25]], np.float32)
    lin_t = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin_t.weight.copy_(torch.tensor(w0))
        p = lin_t.weight
        p -= 0.1 * torch.tensor(g)
        p *= 2.0
        p += 1.0
        p /= 4.0
    want = lin_t.weight.detach().numpy().astype(np.float64)

    vm = nn.VarMap()
    lin = nn.linear_no_bias(2, 1, nn.VarBuilder.from_varmap(vm, DType.F32, Device.Cpu).pp("l"))
    vm.set_one("l.weight", w0)
    v = lin.weight
    v -= 0.1 * Tensor(g)
    v *= 2.0
    v += 1.0
    v /= 4.0
    assert v is lin.weight and type(v) is Var
    np.testing.assert_allclose(_vals(lin.weight), want, rtol=1e-6)
    np.testing.assert_allclose(_vals(vm.data()["l.weight"]), want, rtol=1e-6)
    # a plain Tensor is a value: `t += 1` rebinds the name, other names keep the old value (jax.Array)
    t = Tensor(w0)
    u = t
    t += 1.0
    np.testing.assert_array_equal(_vals(u), w0)
    np.testing.assert_array_equal(_vals(t), w0 + 1)
    # a result that does not fit the Var raises instead of rebinding the name to a Tensor
    from candlejax import errors

    with pytest.raises(errors.ShapeMismatchBinaryOp):
        v += Tensor(np.ones((3, 1, 2), np.float32))
    assert v is lin.weight
    # the other augmented operators too (torch: p **= 2, p //= 2, p %= 2 update the Parameter)
    with torch.no_grad():
        p **= 2
        p %= 0.75
        p //= 0.25
    v **= 2
    v %= 0.75
    v //= 0.25
    assert v is lin.weight
    np.testing.assert_allclose(_vals(lin.weight), lin_t.weight.detach().numpy(), rtol=1e-6)


def test_index_protocol_on_integer_scalars_as_numpy() -> None:
    import operator

    from candlejax import errors

    # numpy / jax: a 0-d integer array is an index (range, list indexing); floats and more dims are not
    assert operator.index(np.array(2, np.int32)) == operator.index(torch.tensor(2)) == 2
    i = Tensor(np.array(2, np.int32))
    assert operator.index(i) == 2 and type(operator.index(i)) is int
    assert ["a", "b", "c"][i] == "c" and list(range(i)) == [0, 1]
    assert operator.index(Tensor(np.array(200, np.uint8))) == 200
    assert np.arange(5)[i] == np.arange(5)[np.array(2)] == 2
    for bad in (Tensor(np.array(2.0, np.float32)), Tensor(np.array([1, 2], np.int32)), Tensor(np.array([2], np.int32))):
        with pytest.raises(TypeError):
            operator.index(np.asarray(bad))
        with pytest.raises(TypeError, match="index"):
            operator.index(bad)
    # numpy's own indexing with a Tensor is unchanged: a 1-D index tensor selects an array
    np.testing.assert_array_equal(np.arange(5)[Tensor(np.array([2], np.int32))], [2])
    np.testing.assert_array_equal(np.arange(5)[Tensor(np.array([3, 1], np.int32))], [3, 1])
    # shapes: a 0-d integer tensor is one dim, as an int is
    assert Tensor.zeros(i).shape == (2,)
    assert Tensor.zeros((i, 3)).shape == (2, 3)
    with pytest.raises(errors.Error):
        Tensor.zeros(Tensor(np.array([2, 3], np.int32)))


def test_contains_compares_every_element_as_torch_and_numpy() -> None:
    import jax

    from candlejax import errors

    m = np.array([[1.0, 3.0], [4.0, 5.0]], np.float32)
    u = np.array([1, 2], np.uint32)
    cases = [(m, 3.0), (m, 7.0), (m, np.float32(5)), (np.array([1, 2], np.int32), 2.5), (u, -1), (u, 2),
             (np.zeros((0, 2), np.float32), 0.0)]  # fmt: skip
    for arr, x in cases:
        want = x in torch.from_numpy(arr.astype(np.float64 if arr.dtype.kind == "f" else np.int64))
        assert (x in arr) == want
        assert (x in Tensor(arr)) is want, (arr, x)
    row = np.array([1.0, 3.0], np.float32)
    assert (torch.from_numpy(row) in torch.from_numpy(m)) is True
    assert (Tensor(row) in Tensor(m)) is True and (Tensor(row + 1) in Tensor(m)) is False
    with pytest.raises(errors.BroadcastIncompatibleShapes):
        Tensor(np.ones(3, np.float32)) in Tensor(m)  # noqa: B015
    with pytest.raises(RuntimeError, match="only supports Tensor or scalar"):
        "a" in torch.from_numpy(m)  # noqa: B015
    with pytest.raises(TypeError, match="in"):
        "a" in Tensor(m)  # noqa: B015
    with pytest.raises(errors.TracingError):
        jax.jit(lambda t: Tensor(np.float32(1.0)) if 3.0 in t else t)(Tensor(m))


def test_pickle_and_deepcopy_of_a_donated_buffer_name_the_donation() -> None:
    from candlejax import errors

    t = Tensor(np.ones(3, np.float32))
    t.jax.delete()  # as an optimizer step donating the buffer of a Var.as_tensor() snapshot does
    for f in (pickle.dumps, copy.deepcopy):
        with pytest.raises(errors.DeletedBuffer):
            f(t)


def test_comparing_with_a_list_or_tuple_is_not_a_silent_false() -> None:
    import candle

    from candlejax import errors

    src = [1.0, 2.0, 3.0]
    # candle-pyo3's __richcmp__ raises TypeError and numpy compares elementwise (all equal here), where the
    # identity fallback (PyTorch's answer) would say False
    with pytest.raises(TypeError, match="unsupported rhs"):
        candle.Tensor(src) == src  # noqa: B015
    assert bool((np.array(src) == src).all())
    t = Tensor(np.array(src, np.float32))
    for other in (src, tuple(src)):
        with pytest.raises(errors.ArgumentType, match="Tensor"):
            t == other  # noqa: B015
        with pytest.raises(errors.ArgumentType, match="Tensor"):
            t != other  # noqa: B015
        with pytest.raises(errors.ArgumentType, match="Tensor"):
            other == t  # noqa: B015
    # None and other objects keep Python's identity comparison, so `t in [None, t]` and dict keys work
    assert (t == None) is False and (t != None) is True  # noqa: E711
    assert t in [None, t] and {t: 1}[t] == 1
    assert t.to_list() == src
