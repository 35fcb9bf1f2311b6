"""The parameter and state API of Modules: named Vars, state dicts and safetensors round trips,
checked against the values written (numpy) and against torch's modules."""

from __future__ import annotations

import numpy as np
import pytest

from candlejax import DType, Tensor, errors, optim
from candlejax.nn import Linear, Var, VarBuilder, VarMap, linear


def _unnamed_linear(w: list, b: list) -> Linear:
    """A Linear built from Vars without names: ``named_vars`` names them by attribute path."""
    return Linear(Var.new(np.array(w, np.float32)), Var.new(np.array(b, np.float32)))


def test_load_state_dict_sets_vars_named_by_their_path():
    lin = _unnamed_linear([[1.0, 2.0]], [0.5])
    assert sorted(lin.named_vars()) == ["bias", "weight"]
    got = lin.load_state_dict({"weight": np.array([[3.0, 4.0]], np.float32), "bias": np.array([9.0], np.float32)})
    np.testing.assert_array_equal(np.asarray(got.weight), [[3.0, 4.0]])
    np.testing.assert_array_equal(np.asarray(got.bias), [9.0])
    np.testing.assert_array_equal(np.asarray(lin.weight), [[1.0, 2.0]])  # the original is unchanged


def test_load_safetensors_round_trips_vars_named_by_their_path(tmp_path):
    src = _unnamed_linear([[1.0, 2.0]], [0.5])
    p = tmp_path / "lin.safetensors"
    src.save_safetensors(p)
    got = _unnamed_linear([[0.0, 0.0]], [0.0]).load_safetensors(p)
    np.testing.assert_array_equal(np.asarray(got.weight), [[1.0, 2.0]])
    np.testing.assert_array_equal(np.asarray(got.bias), [0.5])


def test_torch_parameters_and_bf16_tensors_load_as_values():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tl = torch.nn.Linear(3, 2)  # named_parameters(): Parameters that require grad
    params = dict(tl.named_parameters())
    want_w, want_b = tl.weight.detach().numpy(), tl.bias.detach().numpy()

    vm = VarMap()
    lin = linear(3, 2, VarBuilder.from_varmap(vm, DType.F32, None))
    vm.set(params)
    np.testing.assert_array_equal(np.asarray(lin.weight), want_w)
    got = lin.load_state_dict({k: v * 2 for k, v in params.items()})
    np.testing.assert_array_equal(np.asarray(got.bias), want_b * 2)
    np.testing.assert_array_equal(np.asarray(Var(params["weight"], "w")), want_w)
    lin.weight.set(params["weight"] + 1)
    np.testing.assert_array_equal(np.asarray(lin.weight), want_w + 1)

    from_params = linear(3, 2, VarBuilder.from_tensors(params, DType.F32, None))
    np.testing.assert_array_equal(np.asarray(from_params.weight), want_w)

    half = {k: v.detach().to(torch.bfloat16) for k, v in params.items()}
    want_half = half["weight"].float().numpy()
    bf = linear(3, 2, VarBuilder.from_tensors(half, DType.BF16, None))
    np.testing.assert_array_equal(np.asarray(bf.weight.to_dtype(DType.F32)), want_half)
    f32 = linear(3, 2, VarBuilder.from_tensors(half, DType.F32, None))
    np.testing.assert_array_equal(np.asarray(f32.weight), want_half)
    np.testing.assert_array_equal(np.asarray(lin.load_state_dict(half).weight), want_half)


def _mse(model, x, y):
    return ((model(x) - y) ** 2).mean_all()


def _batch():
    return Tensor(np.ones((4, 3), np.float32)), Tensor(np.zeros((4, 2), np.float32))


def test_values_given_to_set_and_load_state_dict_are_copied():
    """Candle's ``Var::set`` copies the source into the Var's storage (torch's ``load_state_dict``
    copies too): training the Var afterwards (a donating step) must leave the source intact."""
    x, y = _batch()
    src = Tensor(np.full((2, 3), 0.5, np.float32))
    vm = VarMap()
    m = linear(3, 2, VarBuilder.from_varmap(vm, DType.F32, None))
    vm.set_one("weight", src)
    opt = optim.AdamW(vm.all_vars(), optim.ParamsAdamW(lr=0.1))
    opt.backward_step(_mse, m, x, y)
    np.testing.assert_array_equal(np.asarray(src), np.full((2, 3), 0.5, np.float32))

    src2 = Tensor(np.full((2, 3), 0.25, np.float32))
    m.weight.set(src2)
    opt.backward_step(_mse, m, x, y)
    np.testing.assert_array_equal(np.asarray(src2), np.full((2, 3), 0.25, np.float32))

    # a target network loaded from the online one's state dict, then the online one trained
    online = linear(3, 2, VarBuilder.from_varmap(VarMap(seed=1), DType.F32, None))
    want = {k: np.asarray(v).copy() for k, v in online.state_dict().items()}
    target = linear(3, 2, VarBuilder.from_varmap(VarMap(seed=2), DType.F32, None)).load_state_dict(online.state_dict())
    fopt = optim.AdamW(optim.ParamsAdamW(lr=0.1))
    online, _, _ = fopt.backward_step(_mse, online, fopt.init(online), x, y)
    for k, v in target.state_dict().items():
        np.testing.assert_array_equal(np.asarray(v), want[k])


def test_var_in_place_ops_update_the_handle():
    v = Var(np.array([1.0, 2.0], np.float32), "v")
    v += 1.0
    v *= 2.0
    np.testing.assert_array_equal(np.asarray(v), [4.0, 6.0])


def test_candle_pyo3_tensors_load_as_values():
    candle = pytest.importorskip("candle")
    w = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    tensors = {"weight": candle.Tensor(w), "bias": candle.Tensor([0.5, -0.5])}
    np.testing.assert_array_equal(np.asarray(linear(3, 2, VarBuilder.from_tensors(tensors, DType.F32, None)).weight), w)
    vm = VarMap()
    lin = linear(3, 2, VarBuilder.from_varmap(vm, DType.F32, None))
    vm.set(tensors)
    np.testing.assert_array_equal(np.asarray(lin.bias), [0.5, -0.5])
    np.testing.assert_array_equal(np.asarray(lin.load_state_dict(tensors).weight), w)
    np.testing.assert_array_equal(np.asarray(Var(tensors["bias"], "b")), [0.5, -0.5])


def test_varmap_clone_shares_the_vars():
    """Candle's ``VarMap`` is ``Clone`` over an ``Arc<Mutex<HashMap>>``: a clone sees the same Vars."""
    vm = VarMap()
    other = vm.clone()
    lin = linear(3, 2, VarBuilder.from_varmap(other, DType.F32, None).pp("l"))
    assert vm.names() == ["l.bias", "l.weight"]
    assert vm.data()["l.weight"] is lin.weight
    vm.set_one("l.bias", np.array([1.0, 2.0], np.float32))
    np.testing.assert_array_equal(np.asarray(lin.bias), [1.0, 2.0])


def test_load_state_dict_takes_a_mapping():
    lin = _unnamed_linear([[1.0, 2.0]], [0.5])
    with pytest.raises(errors.InvalidArgument, match="load_state_dict takes a dict"):
        lin.load_state_dict([np.zeros((1, 2), np.float32), np.zeros(1, np.float32)])


def test_a_converted_value_is_not_copied_again(monkeypatch):
    """``load_state_dict`` copies a source only while the Var would still share its buffer: a value
    cast to the Var's dtype is already a buffer of its own (no second full copy)."""
    import candlejax.nn.module as nn_module

    copies = []
    real = nn_module.owned_copy

    def counting(a, src):
        out = real(a, src)
        copies.append(out is not a)
        return out

    monkeypatch.setattr(nn_module, "owned_copy", counting)
    lin = linear(3, 2, VarBuilder.from_varmap(VarMap(), DType.BF16, None))
    state = {"weight": Tensor(np.ones((2, 3), np.float32)), "bias": Tensor(np.ones(2, np.float32))}
    got = lin.load_state_dict(state)
    assert got.weight.dtype == DType.BF16 and not any(copies), copies
    same = {k: v.to_dtype(DType.BF16) for k, v in state.items()}
    got = lin.load_state_dict(same)
    assert got.weight.jax is not same["weight"].jax and any(copies)  # the Var's own buffer
