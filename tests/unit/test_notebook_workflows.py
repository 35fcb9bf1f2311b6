"""Notebook workflows: cells re-run (classes redefined, models rebuilt on the same VarMap) and modules
reloaded (``importlib.reload``, IPython's ``%autoreload``)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import candlejax as cj
from candlejax import nn

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _net_class(scale: float) -> type:
    class Net(nn.Module):  # the same cell, run again: a new class of the same name
        def __init__(self, vb: nn.VarBuilder) -> None:
            self.l = nn.linear(2, 1, vb.pp("l"))

        def forward(self, x: cj.Tensor) -> cj.Tensor:
            return self.l(x) * scale

    return Net


def test_redefined_module_class_shares_the_varmap_vars_and_trains_them():
    vm = nn.VarMap()
    vb = nn.VarBuilder.from_varmap(vm, cj.DType.F32, cj.Device.Cpu)
    old = _net_class(1.0)(vb)
    new = _net_class(2.0)(vb)  # Candle's VarMap::get returns the Var already there (candle-nn/src/var_map.rs)
    assert new.l.weight is old.l.weight and len(vm.all_vars()) == 2
    x = cj.Tensor([[1.0, 2.0]])
    w, b = np.asarray(old.l.weight, np.float64), np.asarray(old.l.bias, np.float64)
    ref = np.array([[1.0, 2.0]]) @ w.T + b
    np.testing.assert_allclose(np.asarray(cj.jit(lambda m, x: m(x))(old, x)), ref, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(cj.jit(lambda m, x: m(x))(new, x)), 2 * ref, rtol=1e-6)
    opt = nn.SGD(vm.all_vars(), 0.1)  # an optimizer of the first run trains the rebuilt model's Vars
    opt.backward_step(lambda m, x: m(x).sum_all(), new, x)
    np.testing.assert_allclose(np.asarray(new.l.weight), w - 0.1 * 2 * np.array([[1.0, 2.0]]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(old(x)), np.asarray(new(x)) / 2, rtol=1e-6)


@pytest.mark.parametrize("module", ["candlejax.tensor", "candlejax.tensor._core", "candlejax.nn.module",
                                    "candlejax.dtype", "candlejax.quantized.qtensor"])
def test_reloading_a_core_module_raises_and_leaves_objects_working(module):
    out = _run(f"""
        import importlib, candlejax as cj
        from candlejax import errors, nn
        vm = nn.VarMap()
        lin = nn.linear(2, 1, nn.VarBuilder.from_varmap(vm, cj.DType.F32, cj.Device.Cpu).pp("l"))
        x = cj.Tensor([[1.0, 2.0]])
        y0 = lin(x).to_vec2()
        from candlejax import quantized as q
        ones = lambda shape: cj.Tensor.ones(shape, cj.DType.F32, cj.Device.Cpu)
        qw = q.QTensor.quantize(ones((4, 32)), q.GgmlDType.Q8_0)
        q0 = q.QMatMul.from_qtensor(qw).forward(ones((1, 32))).to_vec2()
        try:
            importlib.reload(importlib.import_module("{module}"))
        except errors.ModuleReload as e:
            assert "{module}" in str(e) and "Restart the kernel" in str(e), e
        else:
            raise AssertionError("no error")
        assert isinstance(x + x, cj.Tensor) and isinstance(x + x, cj.tensor.Tensor)
        assert lin(x).to_vec2() == y0 and sorted(lin.named_vars()) == ["l.bias", "l.weight"]
        new = nn.linear(2, 1, nn.VarBuilder.from_varmap(vm, cj.DType.F32, cj.Device.Cpu).pp("l"))
        assert new.weight is lin.weight and cj.jit(lambda m, x: m(x))(new, x).to_vec2() == y0
        nn.SGD(vm.all_vars(), 0.1).backward_step(lambda m, x: m(x).sum_all(), lin, x)
        assert q.QMatMul.from_qtensor(qw).forward(ones((1, 32))).to_vec2() == q0
        print("ok")
    """)
    assert out.strip() == "ok"


def test_ipython_autoreload_of_a_core_module_raises_and_restores_it():
    pytest.importorskip("IPython")
    out = _run("""
        import candlejax as cj, candlejax.nn.module as m
        from candlejax import errors, nn
        from IPython.extensions.autoreload import superreload
        var = nn.Var([1.0, 2.0], "w")
        try:
            superreload(m)
        except errors.ModuleReload:
            pass
        else:
            raise AssertionError("no error")
        assert m.Var is nn.Var and isinstance(var, m.Var) and m.named_vars({"a": var}) == {"w": var}
        print("ok")
    """)
    assert out.strip() == "ok"


def test_displaying_a_donated_optimizer_state_names_the_donation():
    # a cell that shows `state` re-run after a functional step consumed it: no JAX "Array has been deleted"
    formatters = pytest.importorskip("IPython.core.formatters")
    lin = nn.linear(3, 2, nn.VarBuilder.from_varmap(nn.VarMap(), cj.DType.F32, cj.Device.Cpu).pp("l"))
    opt = cj.optim.AdamW(cj.optim.ParamsAdamW())
    state = opt.init(lin)
    assert "step=" in repr(state)
    _, new_state, _ = opt.backward_step(lambda m, x: m(x).sum_all(), lin, state, cj.Tensor(np.ones((2, 3), np.float32)))
    assert "donated" in repr(state) and "donated" not in repr(new_state)
    shown, _ = formatters.format_display_data(state)
    assert "donated" in shown["text/plain"]


_model = None  # a notebook global: `model = ...` in one cell, `fwd = cj.jit(lambda x: model(x))` in another


def test_jit_of_a_function_reading_a_global_or_closed_over_model_warns_it_is_baked_in():
    global _model
    vm = nn.VarMap()
    _model = nn.linear(2, 1, nn.VarBuilder.from_varmap(vm, cj.DType.F32, cj.Device.Cpu).pp("l"))
    x = cj.Tensor([[1.0, 2.0]])
    model = _model
    fwd_global = cj.jit(lambda x: _model(x))
    fwd_closure = cj.jit(lambda x: model(x))
    with pytest.warns(cj.errors.ConstantVarWarning, match="_model"):
        before = fwd_global(x).to_vec2()
    with pytest.warns(cj.errors.ConstantVarWarning, match="'model'.*argument"):
        fwd_closure(x)
    with pytest.warns(cj.errors.ConstantVarWarning, match="argument 0"):
        cj.jit(functools.partial(lambda m, x: m(x), model))(x)
    nn.SGD(vm.all_vars(), 0.1).backward_step(lambda m, x: m(x).sum_all(), _model, x)
    assert fwd_global(x).to_vec2() == before != _model(x).to_vec2()  # what the warning is about
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fwd = cj.jit(lambda m, x: m(x))  # the model as an argument: its current weights, no warning
        assert fwd(_model, x).to_vec2() == _model(x).to_vec2()
        assert cj.jit(_model.forward)(x).to_vec2() == _model(x).to_vec2()

        @cj.jit
        def step(_model, x):  # a parameter of the same name as the global: read from the argument
            return _model(x)

        assert step(_model, x).to_vec2() == _model(x).to_vec2()


def test_demo_training_closes_its_progress_bar_when_a_step_fails(tmp_path, monkeypatch):
    # an open tqdm bar left behind by a failed cell garbles every later output of the notebook
    tqdm_std = pytest.importorskip("tqdm.std")
    import types

    from candlejax import demo
    from candlejax.data import VisionDataset

    rng = np.random.default_rng(0)
    images = cj.Tensor(rng.random((20, 64), dtype=np.float32))
    labels = cj.Tensor(rng.integers(0, 10, 20).astype(np.uint32))
    ds = VisionDataset(images, labels, images, labels, 10)

    def broken(*args, **kwargs):
        raise RuntimeError("the evaluation failed")

    monkeypatch.setattr(demo, "accuracy", broken)
    args = types.SimpleNamespace(batch_size=10, no_progress=False, resume=False, devices=1)
    with pytest.raises(RuntimeError, match="evaluation failed") as failure:
        demo.train("mlp", ds, tmp_path, 1, 1e-3, 0, args)
    # IPython keeps the traceback (sys.last_traceback), and with it the frame holding the bar
    assert failure.tb is not None and not [b for b in tqdm_std.tqdm._instances if not b.disable]
