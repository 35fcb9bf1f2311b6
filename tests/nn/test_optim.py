"""cj.optim: SGD and AdamW trajectories against torch.optim and optax; the jitted step's contract."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import candlejax as cj
import candlejax.optim as O  # noqa: N812
from candlejax.tensor._core import wrap

torch = pytest.importorskip("torch")

STEPS = 20


def _nn():
    from candlejax.nn import module

    return module


def _var(a, name):
    """A trainable leaf: a cj.nn.Var once nn exists, else a plain float Tensor."""
    try:
        from candlejax.nn.module import Var
    except ImportError:
        return wrap(jnp.asarray(a))
    return Var(np.asarray(a), name)


@pytest.fixture
def problem(rng):
    p0 = {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32)}
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in p0.items()} for _ in range(STEPS)]
    return p0, grads


def _run_cj(opt, p0, grads):
    model = {k: _var(v, k) for k, v in p0.items()}
    state = opt.init(model)
    for g in grads:
        model, state = opt.step(model, state, {k: wrap(jnp.asarray(v)) for k, v in g.items()})
    assert int(state.step) == len(grads)
    return {k: np.asarray(v.jax) for k, v in model.items()}


def _run_torch(make_opt, p0, grads):
    ps = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in p0.items()}
    opt = make_opt(list(ps.values()))
    for g in grads:
        for k, p in ps.items():
            p.grad = torch.tensor(g[k])
        opt.step()
    return {k: p.detach().numpy() for k, p in ps.items()}


def _run_optax(tx, p0, grads):
    params = {k: jnp.asarray(v) for k, v in p0.items()}
    st = tx.init(params)

    @jax.jit
    def upd(g, st, p):
        u, st = tx.update(g, st, p)
        return optax.apply_updates(p, u), st

    for g in grads:
        params, st = upd({k: jnp.asarray(v) for k, v in g.items()}, st, params)
    return {k: np.asarray(v) for k, v in params.items()}


def _candle_adamw_f64(p0, grads, lr, b1, b2, eps, wd):
    """Candle's AdamW (candle-nn/src/optim.rs) in float64."""
    out = {}
    for k, p in p0.items():
        th, m, v = p.astype(np.float64), 0.0, 0.0
        for t, g in enumerate(grads, 1):
            g = g[k].astype(np.float64)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            mh, vh = m / (1 - b1**t), v / (1 - b2**t)
            th = th * (1 - lr * wd) - lr * mh / (np.sqrt(vh) + eps)
        out[k] = th
    return out


def _close(a, b, **kw):
    for k in a:
        np.testing.assert_allclose(a[k], b[k], **kw)


# --- trajectories ---------------------------------------------------------------------------------
def test_sgd_matches_torch_and_optax(problem):
    p0, grads = problem
    ours = _run_cj(O.SGD(0.05), p0, grads)
    _close(ours, _run_torch(lambda ps: torch.optim.SGD(ps, lr=0.05), p0, grads), rtol=1e-6, atol=1e-6)
    _close(ours, _run_optax(optax.sgd(0.05), p0, grads), rtol=0, atol=0)


def test_adamw_defaults_are_candles():
    p = O.ParamsAdamW()
    assert (p.lr, p.beta1, p.beta2, p.eps, p.weight_decay) == (1e-3, 0.9, 0.999, 1e-8, 0.01)
    assert O.AdamW().learning_rate() == 1e-3
    assert O.AdamW.new_lr(0.1).params() == O.ParamsAdamW(lr=0.1)


@pytest.mark.parametrize("cfg", [{}, {"lr": 0.05, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.1}])
def test_adamw_matches_torch_optax_and_candles_formula(problem, cfg):
    p0, grads = problem
    p = O.ParamsAdamW(**cfg)
    ours = _run_cj(O.AdamW(p), p0, grads)
    ref = _run_torch(
        lambda ps: torch.optim.AdamW(ps, lr=p.lr, betas=(p.beta1, p.beta2), eps=p.eps, weight_decay=p.weight_decay),
        p0,
        grads,
    )
    _close(ours, ref, rtol=1e-5, atol=1e-6)
    _close(ours, _candle_adamw_f64(p0, grads, p.lr, p.beta1, p.beta2, p.eps, p.weight_decay), rtol=1e-5, atol=1e-6)
    # bit-identical to a jitted optax.adamw
    tx = optax.adamw(p.lr, b1=p.beta1, b2=p.beta2, eps=p.eps, weight_decay=p.weight_decay)
    _close(ours, _run_optax(tx, p0, grads), rtol=0, atol=0)


def test_float64_parameters_step_with_the_exact_learning_rate(problem, x64):
    """float64 Vars train as torch.optim / Candle's f64 ``lr`` do, to rounding (the rate is not rounded to
    float32 on its way into the compiled step)."""
    p0, grads = problem
    p0 = {k: v.astype(np.float64) for k, v in p0.items()}
    grads = [{k: v.astype(np.float64) for k, v in g.items()} for g in grads]
    ours = _run_cj(O.SGD(0.1), p0, grads)
    assert ours["w"].dtype == np.float64
    _close(ours, _run_torch(lambda ps: torch.optim.SGD(ps, lr=0.1), p0, grads), rtol=1e-13, atol=1e-13)
    p = O.ParamsAdamW(lr=0.1, weight_decay=0.1)
    ours = _run_cj(O.AdamW(p), p0, grads)
    _close(ours, _candle_adamw_f64(p0, grads, p.lr, p.beta1, p.beta2, p.eps, p.weight_decay), rtol=1e-12, atol=1e-12)
    sched = O.linear_schedule(0.1, 0.01, STEPS)
    ours = _run_cj(O.AdamW(O.ParamsAdamW(lr=sched)), p0, grads)
    _close(ours, _run_optax(optax.adamw(sched, weight_decay=0.01), p0, grads), rtol=1e-13, atol=1e-13)


def test_from_optax_and_schedules(problem):
    p0, grads = problem
    sched = O.warmup_cosine_decay_schedule(0.0, 0.05, 5, STEPS)
    ours = _run_cj(O.AdamW(O.ParamsAdamW(lr=sched)), p0, grads)
    _close(ours, _run_optax(optax.adamw(sched, weight_decay=0.01), p0, grads), rtol=0, atol=0)
    tx = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(0.03))
    _close(_run_cj(O.from_optax(tx), p0, grads), _run_optax(tx, p0, grads), rtol=0, atol=0)
    ours = _run_cj(O.from_optax(optax.scale_by_adam(), learning_rate=0.03), p0, grads)
    _close(ours, _run_optax(optax.adam(0.03), p0, grads), rtol=1e-6, atol=1e-7)


def test_clip_grad_norm_matches_torch(problem):
    p0, grads = problem
    ours = _run_cj(O.SGD(0.1, clip_grad_norm=0.5), p0, grads)
    ps = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in p0.items()}
    opt = torch.optim.SGD(list(ps.values()), lr=0.1)
    for g in grads:
        for k, p in ps.items():
            p.grad = torch.tensor(g[k])
        torch.nn.utils.clip_grad_norm_(list(ps.values()), 0.5)
        opt.step()
    _close(ours, {k: p.detach().numpy() for k, p in ps.items()}, rtol=1e-5, atol=1e-6)


# --- backward_step -----------------------------------------------------------------------------------
def _regression(rng, n=32):
    x = rng.standard_normal((n, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32) + 0.3).astype(np.float32)
    return x, y


def _mse(m, x, y):
    pred = x.jax @ m["w"].jax + m["b"].jax
    return wrap(jnp.mean((pred - y.jax) ** 2))


def test_backward_step_matches_torch_training_loop(rng):
    x, y = _regression(rng)
    w0, b0 = rng.standard_normal((3, 1)).astype(np.float32), np.zeros(1, np.float32)
    opt = O.AdamW(O.ParamsAdamW(lr=0.05))
    model = {"w": _var(w0, "w"), "b": _var(b0, "b")}
    state = opt.init(model)
    losses = []
    for _ in range(STEPS):
        model, state, loss = opt.backward_step(_mse, model, state, wrap(jnp.asarray(x)), wrap(jnp.asarray(y)))
        losses.append(float(np.asarray(loss)))
    tw, tb = torch.nn.Parameter(torch.tensor(w0)), torch.nn.Parameter(torch.tensor(b0))
    topt = torch.optim.AdamW([tw, tb], lr=0.05, weight_decay=0.01)
    tlosses = []
    for _ in range(STEPS):
        topt.zero_grad()
        loss = ((torch.tensor(x) @ tw + tb - torch.tensor(y)) ** 2).mean()
        loss.backward()
        topt.step()
        tlosses.append(loss.item())
    np.testing.assert_allclose(losses, tlosses, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(model["w"].jax), tw.detach().numpy(), rtol=1e-4, atol=1e-5)
    assert losses[-1] < losses[0] / 2


def test_backward_step_compiles_once_and_set_learning_rate_does_not_retrace(rng):
    x, y = (wrap(jnp.asarray(a)) for a in _regression(rng))
    traces = []

    def loss_fn(m, x, y):
        traces.append(1)
        return _mse(m, x, y)

    opt = O.SGD(0.0)
    model = {"w": _var(np.ones((3, 1), np.float32), "w"), "b": _var(np.zeros(1, np.float32), "b")}
    state = opt.init(model)
    model, state, _ = opt.backward_step(loss_fn, model, state, x, y)
    np.testing.assert_array_equal(np.asarray(model["w"].jax), np.ones((3, 1)))  # lr 0: no change
    opt.set_learning_rate(0.1)
    assert opt.learning_rate() == 0.1
    w_before = np.asarray(model["w"].jax).copy()
    for _ in range(3):
        model, state, _ = opt.backward_step(loss_fn, model, state, x, y)
    assert len(traces) == 1
    assert not np.array_equal(np.asarray(model["w"].jax), w_before)
    assert int(state.step) == 4


def test_backward_step_donates_the_old_buffers(rng):
    x, y = (wrap(jnp.asarray(a)) for a in _regression(rng))
    opt = O.SGD(0.1)
    model = {"w": _var(np.ones((3, 1), np.float32), "w"), "b": _var(np.zeros(1, np.float32), "b")}
    state = opt.init(model)
    old = model["w"].jax
    model, state, _ = opt.backward_step(_mse, model, state, x, y)
    assert old.is_deleted()
    assert not model["w"].jax.is_deleted()
    with pytest.raises(cj.errors.DonatedVar, match="donated to a functional optimizer step"):
        opt.backward_step(_mse, {"w": wrap(old), "b": model["b"]}, state, x, y)
    sched = O.SGD(O.linear_schedule(0.1, 0.0, 10))
    s0 = sched.init(model)
    model, _, _ = sched.backward_step(_mse, model, s0, x, y)
    with pytest.raises(cj.errors.DonatedVar, match="state of optimizer 'SGD' was donated"):
        sched.learning_rate(s0)  # not JAX's RuntimeError "Array has been deleted"


def test_donated_plain_tensor_parameters_raise_a_named_error(rng):
    """A model of plain Tensors (no Vars: every float Tensor is trained) gives its buffers to the
    step too; the Tensors the caller still holds then raise DonatedVar naming the fixes, not JAX's
    RuntimeError "Array has been deleted", and still print."""
    x, y = (wrap(jnp.asarray(a)) for a in _regression(rng))
    w = wrap(jnp.ones((3, 1), jnp.float32))
    model = {"w": w, "b": wrap(jnp.zeros(1, jnp.float32))}
    opt = O.SGD(0.1)
    new, _, _ = opt.backward_step(_mse, model, opt.init(model), x, y)
    for use in (lambda: w.to_vec2(), lambda: w + 1, lambda: opt.backward_step(_mse, model, opt.init(new), x, y)):
        with pytest.raises(cj.errors.DonatedVar, match=r"'[^']*w[^']*' was donated.*donate=False"):
            use()
    assert "<deleted>" in repr(w)
    keep = {"w": wrap(jnp.ones((3, 1), jnp.float32)), "b": wrap(jnp.zeros(1, jnp.float32))}
    O.SGD(0.1, donate=False).backward_step(_mse, keep, opt.init(keep), x, y)
    assert keep["w"].to_vec2() == [[1.0]] * 3  # donate=False: the caller's tensors stay usable


def test_functional_step_under_scan_then_jit_matches_eager(rng):
    """The learning rate is a jit argument cached on the optimizer: made while tracing (a first step under
    lax.scan), it must not be a tracer of that trace, which broke a later jitted step (XLA's 'Execution
    supplied 2 arguments but compiled program expected 4' on its third call)."""
    x, y = (wrap(jnp.asarray(a)) for a in _regression(rng))

    def fresh():
        return {"w": _var(np.ones((3, 1), np.float32), "w"), "b": _var(np.zeros(1, np.float32), "b")}

    eager = O.AdamW(O.ParamsAdamW(lr=0.05))
    m = fresh()
    s = eager.init(m)
    want = []
    for _ in range(4):
        m, s, loss = eager.backward_step(_mse, m, s, x, y)
        want.append(float(np.asarray(loss)))

    opt = O.AdamW(O.ParamsAdamW(lr=0.05))

    def body(carry, _):
        m, s, loss = opt.backward_step(_mse, *carry, x, y)
        return (m, s), loss.jax

    m0 = fresh()
    _, scanned = jax.lax.scan(body, (m0, opt.init(m0)), None, length=4)
    np.testing.assert_allclose(np.asarray(scanned), want, rtol=1e-6)
    step = jax.jit(lambda m, s: opt.backward_step(_mse, m, s, x, y))
    m = fresh()
    s = opt.init(m)
    got = []
    for _ in range(4):
        m, s, loss = step(m, s)
        got.append(float(np.asarray(loss)))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_only_vars_are_trained_and_wrt_filters():
    nn = _nn()
    model = {"w": nn.Var(np.ones(3, np.float32), "enc.w"), "v": nn.Var(np.ones(3, np.float32), "dec.w"),
             "table": wrap(jnp.ones(3))}  # fmt: skip

    def loss_fn(m):
        return wrap(jnp.sum(m["w"].jax * m["table"].jax) + jnp.sum(m["v"].jax * m["table"].jax))

    opt = O.SGD(0.5, donate=False)
    m2, _, _ = opt.backward_step(loss_fn, model, opt.init(model))
    assert np.asarray(m2["table"].jax).tolist() == [1.0, 1.0, 1.0]
    assert np.asarray(m2["w"].jax).tolist() == [0.5, 0.5, 0.5]
    assert isinstance(m2["w"], nn.Var) and m2["w"].name == "enc.w"
    opt = O.SGD(0.5, wrt=r"^dec\.")
    m3, _, _ = opt.backward_step(loss_fn, model, opt.init(model))
    assert np.asarray(m3["w"].jax).tolist() == [1.0, 1.0, 1.0]
    assert np.asarray(m3["v"].jax).tolist() == [0.5, 0.5, 0.5]


def test_non_float_var_is_a_clear_error():
    nn = _nn()
    model = {"w": nn.Var(np.ones(3, np.float32), "w"), "ids": nn.Var(np.arange(3, dtype=np.uint32), "emb.ids")}
    with pytest.raises(cj.Error, match=r"emb\.ids.*only float Vars can be trained"):
        O.AdamW().init(model)


def test_nan_loss_is_reported_with_its_step(rng):
    x, y = (wrap(jnp.asarray(a)) for a in _regression(rng))
    bad = wrap(jnp.full_like(x.jax, jnp.nan))
    opt = O.AdamW(check_finite=True)
    model = {"w": _var(np.ones((3, 1), np.float32), "w"), "b": _var(np.zeros(1, np.float32), "b")}
    state = opt.init(model)
    for _ in range(2):
        model, state, _ = opt.backward_step(_mse, model, state, x, y)
    before = np.asarray(model["w"].jax).copy()
    with pytest.raises(O.NanLoss, match="optimizer step 3: loss is nan") as ei:
        opt.backward_step(_mse, model, state, bad, y)
    assert ei.value.step == 3 and math.isnan(ei.value.loss)
    np.testing.assert_array_equal(np.asarray(ei.value.model["w"].jax), before)  # update skipped
    assert int(ei.value.state.step) == 2
    # without the check the NaN trains on silently (the JAX / Candle default)
    opt2 = O.AdamW()
    m2, _, loss = opt2.backward_step(_mse, ei.value.model, opt2.init(ei.value.model), bad, y)
    assert np.isnan(np.asarray(loss)) and np.isnan(np.asarray(m2["w"].jax)).all()


def test_bad_arguments():
    with pytest.raises(cj.Error, match="learning rate"):
        O.SGD(-1.0)
    with pytest.raises(cj.Error, match="beta1"):
        O.ParamsAdamW(beta1=1.0)
    with pytest.raises(cj.Error, match="ParamsAdamW"):
        O.AdamW(0.1)  # type: ignore[arg-type]
    with pytest.raises(cj.Error, match="no trainable parameters"):
        O.SGD(0.1).init({"ids": wrap(jnp.arange(3))})
    opt = O.from_optax(optax.adam(1e-3))
    with pytest.raises(cj.Error, match="inside the optax transform"):
        opt.set_learning_rate(0.1)
    model = {"w": _var(np.ones(3, np.float32), "w")}
    with pytest.raises(cj.Error, match="wrong shape"):
        O.SGD(0.1).step(model, O.SGD(0.1).init(model), {"w": wrap(jnp.ones(4))})
    with pytest.raises(cj.Error, match="scalar"):
        opt = O.SGD(0.1)
        opt.backward_step(lambda m: m["w"], model, opt.init(model))


# --- with cj.nn Modules ----------------------------------------------------------------------------
def test_issue_example_trains_saves_and_reloads(tmp_path, rng):
    nn = pytest.importorskip("candlejax.nn")
    data = pytest.importorskip("candlejax.data")
    from candlejax import Device, DType
    from candlejax.nn import Module, VarBuilder, VarMap, linear

    class Model(Module):
        def __init__(self, vb):
            self.first = linear(784, 100, vb.pp("first"))
            self.second = linear(100, 10, vb.pp("second"))

        def forward(self, image):
            return self.second.forward(self.first.forward(image).relu())

    protos = rng.random((10, 784)).astype(np.float32)
    y = rng.integers(0, 10, 256).astype(np.uint32)
    x = (protos[y] + 0.3 * rng.random((256, 784))).astype(np.float32)
    train_set = (x, y)

    varmap = VarMap()
    vb = VarBuilder.from_varmap(varmap, DType.F32, Device.Cpu)
    model = Model(vb)
    opt = O.AdamW(O.ParamsAdamW(lr=1e-3))
    state = opt.init(model)

    def loss_fn(m, x, y):
        return nn.loss.cross_entropy(m.forward(x), y)

    losses = []
    for _ in range(3):
        for xb, yb in data.Batcher(train_set, batch_size=64, shuffle=True, seed=0):
            model, state, loss = opt.backward_step(loss_fn, model, state, xb, yb)
            losses.append(float(np.asarray(loss)))
    assert losses[-1] < losses[0] / 4
    assert opt._compiled[(loss_fn, True)]._cache_size() == 1  # the first step's program is reused
    path = tmp_path / "model.safetensors"
    model.save_safetensors(path)
    reloaded = Model(VarBuilder.from_mmaped_safetensors([path], DType.F32, Device.Cpu))
    assert sorted(reloaded.named_vars()) == ["first.bias", "first.weight", "second.bias", "second.weight"]
    xt = cj.Tensor.new(x[:8])
    np.testing.assert_array_equal(np.asarray(reloaded(xt)), np.asarray(model(xt)))


def test_step_with_cj_grad_matches_backward_step(rng):
    pytest.importorskip("candlejax.nn")
    from candlejax import Device, DType
    from candlejax.nn import VarBuilder, VarMap, linear
    from candlejax.transforms import grad

    x = wrap(jnp.asarray(rng.standard_normal((16, 5)).astype(np.float32)))
    y = wrap(jnp.asarray(rng.standard_normal((16, 2)).astype(np.float32)))

    def loss_fn(m, x, y):
        return wrap(jnp.mean((m(x).jax - y.jax) ** 2))

    def fresh():
        return linear(5, 2, VarBuilder.from_varmap(VarMap(seed=3), DType.F32, Device.Cpu).pp("fc"))

    opt_a, opt_b = O.AdamW(O.ParamsAdamW(lr=0.01)), O.AdamW(O.ParamsAdamW(lr=0.01))
    a, b = fresh(), fresh()
    sa, sb = opt_a.init(a), opt_b.init(b)
    for _ in range(5):
        a, sa, _ = opt_a.backward_step(loss_fn, a, sa, x, y)
        b, sb = opt_b.step(b, sb, grad(loss_fn)(b, x, y))
    for k, v in a.named_vars().items():
        np.testing.assert_allclose(np.asarray(v), np.asarray(b.named_vars()[k]), rtol=1e-6, atol=1e-7)


def test_tied_parameters_are_one_parameter():
    v = _var(np.ones(3, np.float32), "shared.weight")
    x, y = wrap(jnp.asarray([1.0, 2.0, 3.0])), wrap(jnp.asarray([10.0, 20.0, 30.0]))

    def loss_fn(m, x, y):
        return wrap(jnp.sum(m["enc"].jax * x.jax) + jnp.sum(m["dec"].jax * y.jax))

    opt = O.SGD(0.01)
    model = {"enc": v, "dec": v}
    m1, s1, _ = opt.backward_step(loss_fn, model, opt.init(model), x, y)
    expect = 1 - 0.01 * np.array([11.0, 22.0, 33.0], np.float32)  # the gradient is summed over both uses
    np.testing.assert_allclose(np.asarray(m1["enc"].jax), expect, rtol=1e-6)
    assert m1["enc"].jax is m1["dec"].jax  # still tied
    m2, _ = opt.step(m1, s1, jax.grad(lambda m: loss_fn(m, x, y).jax)(m1))
    np.testing.assert_allclose(np.asarray(m2["dec"].jax), expect - 0.01 * np.array([11.0, 22.0, 33.0]), rtol=1e-5)
    assert m2["enc"].jax is m2["dec"].jax


def test_bound_step_sums_the_gradients_of_a_tied_var():
    """Candle's ``opt.step(&loss.backward()?)`` with one Var used in two places: its gradient is the
    sum over both uses, as in ``backward_step``. ``cj.grad`` returns one leaf per use; the bound
    ``step(grads)`` used to keep only the first (2 instead of 2 + 3)."""
    from candlejax.nn import Var

    def loss_fn(m):
        return (m["enc"] * 2.0 + m["dec"] * 3.0).sum_all()

    v = Var(np.asarray([1.0, 2.0], np.float32), "shared.weight")
    model = {"enc": v, "dec": v}
    O.SGD([v], 0.5).step(cj.grad(loss_fn)(model))
    assert v.to_vec1() == [1.0 - 0.5 * 5.0, 2.0 - 0.5 * 5.0]
    w = Var(np.asarray([1.0, 2.0], np.float32), "shared.weight")
    O.SGD([w], 0.5).backward_step(loss_fn, {"enc": w, "dec": w})
    assert w.to_vec1() == v.to_vec1()


def test_backward_step_keeps_the_running_statistics_batch_norm_updates(rng):
    """Candle's ``opt.backward_step(&loss)`` over ``bn.forward_t(&x, true)`` moves BatchNorm's running
    statistics once per step (``Var::set`` during the forward). They used to stay at their initial
    values (zeros, ones) under ``backward_step``, bound and functional, while the weights trained."""
    from candlejax import Device, DType, nn

    xs = [rng.standard_normal((8, 3)).astype(np.float32) * 2 + 1 for _ in range(3)]
    w0 = rng.standard_normal((2, 3)).astype(np.float32)

    def loss_fn(m, x):
        return m["lin"](m["bn"].forward_t(x, True)).sqr().mean_all()

    tbn, tlin = torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2)
    with torch.no_grad():
        tlin.weight.copy_(torch.tensor(w0))
        tlin.bias.zero_()
    topt = torch.optim.SGD([*tbn.parameters(), *tlin.parameters()], 0.1)
    for x in xs:
        topt.zero_grad()
        tlin(tbn(torch.tensor(x))).pow(2).mean().backward()
        topt.step()

    for functional in (False, True):
        vm = nn.VarMap()
        vb = nn.VarBuilder.from_varmap(vm, DType.F32, Device.Cpu)
        model = {"bn": nn.batch_norm(3, nn.BatchNormConfig(), vb.pp("bn")), "lin": nn.linear(3, 2, vb.pp("lin"))}
        model["lin"].weight.set(cj.Tensor.new(w0))
        model["lin"].bias.set(cj.Tensor.new(np.zeros(2, np.float32)))
        opt = O.SGD(0.1) if functional else O.SGD(vm.all_vars(), 0.1)
        state = opt.init(model) if functional else None
        for x in xs:
            xt = cj.Tensor.new(x)
            if functional:
                model, state, _ = opt.backward_step(loss_fn, model, state, xt)
            else:
                opt.backward_step(loss_fn, model, xt)
        bn = model["bn"]
        for got, want in ((bn.running_mean, tbn.running_mean), (bn.running_var, tbn.running_var),
                          (bn.weight, tbn.weight), (model["lin"].weight, tlin.weight)):  # fmt: skip
            np.testing.assert_allclose(np.asarray(got._a), want.detach().numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{got.name} functional={functional}")  # fmt: skip
        if not functional:  # the VarMap holds the layer's Buffers: varmap.save writes the new statistics
            np.testing.assert_array_equal(np.asarray(vm.data()["bn.running_mean"]._a), np.asarray(bn.running_mean._a))


def test_backward_step_refuses_a_loss_that_reads_trained_vars_from_outside_the_model():
    """Candle's ``backward_step(&loss)`` differentiates every Var the loss reads. A loss function that
    closes over a Var instead of reading it from its model argument had it compiled in as a constant:
    silently untrained (``b`` below stayed 0.5) and deaf to ``Var.set`` (the loss kept using 0.5)."""
    from candlejax import errors
    from candlejax.nn import Var

    w = Var(np.asarray([[1.0], [2.0]], np.float32), "w")
    b = Var(np.asarray([0.5], np.float32), "b")
    x = cj.Tensor.new(np.ones((1, 2), np.float32))
    opt = O.SGD([w, b], 0.1)
    with pytest.raises(errors.OptimizerUsage, match=r"reads the Var\(s\) \['b'\] from outside"):
        opt.backward_step(lambda m, x: x.matmul(m).broadcast_add(b).sum_all(), w, x)
    assert b.to_vec1() == [0.5] and w.to_vec2() == [[1.0], [2.0]]
    loss = opt.backward_step(lambda m, x: x.matmul(m[0]).broadcast_add(m[1]).sum_all(), (w, b), x)
    assert loss.to_scalar() == 3.5 and b.to_vec1() == [np.float32(0.5) - np.float32(0.1)]
    # the functional form: the loss reads the model it closes over instead of the one it is given
    model = {"w": w, "b": b}
    fopt = O.SGD(0.1, donate=False)
    with pytest.raises(errors.OptimizerUsage, match=r"reads the Var\(s\) \['w', 'b'\] from outside"):
        fopt.backward_step(lambda m, x: x.matmul(model["w"]).broadcast_add(model["b"]).sum_all(), model,
                           fopt.init(model), x)  # fmt: skip


def test_compiler_options_reach_the_training_step_and_keep_its_results():
    from candlejax import Device, DType
    from candlejax.demo import Cnn
    from candlejax.nn import VarBuilder, VarMap, loss
    from candlejax.xla import XLA_CONVOLUTION_OPTIONS

    rng = np.random.default_rng(0)
    x = cj.Tensor(rng.standard_normal((16, 64)).astype(np.float32))
    y = cj.Tensor(rng.integers(0, 10, 16).astype(np.uint32))
    init = {k: np.asarray(v.jax) for k, v in Cnn(VarBuilder.from_varmap(VarMap(), DType.F32, Device.Cpu))
            .named_tensors().items()}  # fmt: skip

    def loss_fn(m, xb, yb):
        return loss.cross_entropy(m.forward(xb), yb)

    def train(**kw):
        net = Cnn(VarBuilder.from_tensors(dict(init), DType.F32, Device.Cpu))
        opt = O.AdamW(O.ParamsAdamW(lr=1e-2), **kw)
        state = opt.init(net)
        losses = []
        for _ in range(4):
            net, state, lv = opt.backward_step(loss_fn, net, state, x, y)
            losses.append(float(lv.to_scalar()))
        return opt, losses

    _, plain = train()
    opt, with_options = train(compiler_options=XLA_CONVOLUTION_OPTIONS)
    np.testing.assert_allclose(with_options, plain, rtol=1e-4)
    (step,) = opt._compiled.values()
    assert step._opts is not None  # compiled with the options (XLA accepted them)
    _, refused = train(compiler_options={"xla_cpu_not_a_flag": "1"})  # refused: a plain compile
    np.testing.assert_allclose(refused, plain, rtol=1e-6)


def test_candle_nn_optim_module_path():
    """``candle_nn::optim::{AdamW, ParamsAdamW, SGD, Optimizer}`` by their module path."""
    import candlejax.optim
    from candlejax.nn import optim as nn_optim

    for name in ("AdamW", "ParamsAdamW", "SGD", "Optimizer"):
        assert getattr(nn_optim, name) is getattr(candlejax.optim, name)


def test_adamw_skips_vars_the_loss_does_not_use(rng):
    """Candle's optimizers update only the Vars that have a gradient: two heads under one AdamW,
    trained in turns, against Candle's AdamW in float64 (one global step count, weight decay and
    moments only for the head in the loss). A zero gradient of a Var the loss reads is still one."""
    from candlejax import Device, DType, nn

    vm = nn.VarMap()
    vb = nn.VarBuilder.from_varmap(vm, DType.F32, Device.Cpu)
    heads = {"a": nn.linear(3, 2, vb.pp("a")), "b": nn.linear(3, 2, vb.pp("b"))}
    lr, b1, b2, eps, wd = 0.05, 0.9, 0.999, 1e-8, 0.3
    opt = O.AdamW(vm.all_vars(), O.ParamsAdamW(lr=lr, weight_decay=wd))

    def loss_a(m, x, y):
        return nn.loss.mse(m["a"](x), y)

    def loss_b(m, x, y):
        return nn.loss.mse(m["b"](x), y)

    names = ("weight", "bias")
    theta = {(h, n): np.asarray(getattr(heads[h], n)._a, np.float64) for h in "ab" for n in names}
    m = {k: np.zeros_like(v) for k, v in theta.items()}
    v = {k: np.zeros_like(x) for k, x in theta.items()}
    for t, h in enumerate("aabba", start=1):
        x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
        opt.backward_step(loss_a if h == "a" else loss_b, heads, wrap(jnp.asarray(x, jnp.float32)),
                          wrap(jnp.asarray(y, jnp.float32)))  # fmt: skip
        w, bias = theta[(h, "weight")], theta[(h, "bias")]
        r = 2 * (x @ w.T + bias - y) / y.size  # d mse / d output
        for n, g in (("weight", r.T @ x), ("bias", r.sum(0))):
            k = (h, n)
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            step = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            theta[k] = theta[k] * (1 - lr * wd) - lr * step
        for (hh, n), want in theta.items():
            np.testing.assert_allclose(np.asarray(getattr(heads[hh], n)._a), want, rtol=1e-5, atol=1e-6,
                                       err_msg=f"step {t}, head {hh}.{n}")  # fmt: skip


def test_bound_adamw_steps_on_sub_models_in_any_order_as_candle(rng):
    """Candle's ``opt.backward_step(&loss)`` takes no model: one AdamW over ``varmap.all_vars()`` may step on a
    loss over one head, then the other, then both in another order (candle-nn/src/optim.rs: moments of every
    Var from construction, one global ``step_t``, only the Vars with a gradient updated). Against that formula
    in float64. It raised "this step trains a different set of Vars" after the first step."""
    from candlejax import Device, DType, nn

    vm = nn.VarMap()
    vb = nn.VarBuilder.from_varmap(vm, DType.F32, Device.Cpu)
    heads = {"a": nn.linear(3, 2, vb.pp("a")), "b": nn.linear(3, 2, vb.pp("b"))}
    lr, b1, b2, eps, wd = 0.05, 0.9, 0.999, 1e-8, 0.3
    opt = O.AdamW(vm.all_vars(), O.ParamsAdamW(lr=lr, weight_decay=wd))

    def loss_one(m, x, y):
        return nn.loss.mse(m(x), y)

    def loss_two(m, x, y):
        return nn.loss.mse(m[0](x) + m[1](x), y)

    theta = {f"{h}.{n}": np.asarray(getattr(heads[h], n)._a, np.float64) for h in "ab" for n in ("weight", "bias")}
    m = {k: np.zeros_like(v) for k, v in theta.items()}
    v = {k: np.zeros_like(x) for k, x in theta.items()}
    for t, hs in enumerate(["a", "b", "ba", "a", "ab"], start=1):
        x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
        xt, yt = wrap(jnp.asarray(x, jnp.float32)), wrap(jnp.asarray(y, jnp.float32))
        if len(hs) == 1:
            opt.backward_step(loss_one, heads[hs], xt, yt)
        else:
            opt.backward_step(loss_two, (heads[hs[0]], heads[hs[1]]), xt, yt)
        r = sum(x @ theta[f"{h}.weight"].T + theta[f"{h}.bias"] for h in hs) - y
        r = 2 * r / y.size
        for h in hs:
            for k, g in ((f"{h}.weight", r.T @ x), (f"{h}.bias", r.sum(0))):
                m[k] = b1 * m[k] + (1 - b1) * g
                v[k] = b2 * v[k] + (1 - b2) * g * g
                step = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
                theta[k] = theta[k] * (1 - lr * wd) - lr * step
        for k, want in theta.items():
            np.testing.assert_allclose(np.asarray(vm.data()[k]._a), want, rtol=1e-5, atol=1e-6, err_msg=f"{t} {k}")
    assert int(opt.state.step) == 5
    # opt.step(grads) with gradients of a head the state already covers, and then of both
    x, y = (wrap(jnp.asarray(rng.standard_normal(s), jnp.float32)) for s in ((4, 3), (4, 2)))
    opt.step(cj.grad(loss_one)(heads["b"], x, y))
    assert int(opt.state.step) == 6
    # a fresh optimizer stepped on head a, then given the gradients of head b: b's moments start at zero at
    # Candle's global step 2
    opt2 = O.AdamW(vm.all_vars(), O.ParamsAdamW(lr=lr, weight_decay=wd))
    opt2.backward_step(loss_one, heads["a"], x, y)
    wb = np.asarray(heads["b"].weight._a, np.float64)
    gw = cj.grad(loss_one)(heads["b"], x, y).weight
    g = np.asarray(gw._a, np.float64)
    opt2.step({"b": {"weight": gw}})
    step = ((1 - b1) * g / (1 - b1**2)) / (np.sqrt((1 - b2) * g * g / (1 - b2**2)) + eps)
    want = wb * (1 - lr * wd) - lr * step
    np.testing.assert_allclose(np.asarray(heads["b"].weight._a), want, rtol=1e-5, atol=1e-6)
    assert int(opt2.state.step) == 2


def test_adamw_skips_vars_the_loss_reads_only_detached_or_through_comparisons():
    """A Var read only through ``detach()`` (Candle's way to freeze a layer), a comparison or an
    argmax gets no gradient in Candle (its backward does not walk through them) nor in PyTorch
    (``.grad`` stays None): AdamW leaves it and its state alone. It used to take weight decay."""
    from candlejax import DType, nn

    w0, f0, c0, a0 = [1.0, 2.0], [3.0, -4.0], [0.5, -1.5], [0.25, 2.5]
    w, f, c, a = (nn.Var(np.asarray(v, np.float32), n) for v, n in ((w0, "w"), (f0, "f"), (c0, "c"), (a0, "a")))
    model = {"w": w, "f": f, "c": c, "a": a}
    opt = O.AdamW([w, f, c, a], O.ParamsAdamW(lr=0.1, weight_decay=0.5))

    def loss_fn(m, x):
        mask = m["c"].ge(0.0).to_dtype(DType.F32)
        pick = m["a"].argmax(0).to_dtype(DType.F32)
        return ((m["w"] * x + m["f"].detach()) * mask).sqr().sum_all() + m["w"].sum_all() * pick

    x = cj.Tensor.new(np.asarray([1.0, 1.0], np.float32))
    for _ in range(3):
        opt.backward_step(loss_fn, model, x)

    tw, tf, tc, ta = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (w0, f0, c0, a0))
    topt = torch.optim.AdamW([tw, tf, tc, ta], lr=0.1, weight_decay=0.5)
    for _ in range(3):
        topt.zero_grad()
        mask = (tc >= 0).double()
        pick = ta.argmax(0).double()
        (((tw * 1.0 + tf.detach()) * mask) ** 2).sum().add(tw.sum() * pick).backward()
        topt.step()
    for v, t in ((w, tw), (f, tf), (c, tc), (a, ta)):
        np.testing.assert_allclose(np.asarray(v._a), t.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=v.name)
    assert f.to_vec1() == f0 and c.to_vec1() == c0 and a.to_vec1() == a0


def test_adamw_skips_a_var_read_only_through_a_scalar_multiply_by_zero():
    """Candle's ``x * 0.`` is ``affine(0., 0.)``, which its backward does not walk through
    (candle-core/src/backprop.rs, ``Op::Affine { mul, .. }`` with ``*mul == 0.``): the Var gets no gradient
    and AdamW leaves it and its state alone (no weight decay). A Var the loss reads otherwise is trained."""
    from candlejax import nn

    w, f, g = (nn.Var(np.asarray(v, np.float32), n) for v, n in (([1.0, 2.0], "w"), ([3.0, -4.0], "f"),
                                                                 ([0.5, 1.5], "g")))  # fmt: skip
    opt = O.AdamW([w, f, g], O.ParamsAdamW(lr=0.1, weight_decay=0.5))

    def loss_fn(m, x):
        return (m["w"] * x).sqr().sum_all() + (m["f"] * 0.0).sum_all() + m["g"].affine(0.0, 1.0).sum_all()

    x = cj.Tensor.new(np.asarray([1.0, 1.0], np.float32))
    for _ in range(3):
        opt.backward_step(loss_fn, {"w": w, "f": f, "g": g}, x)
    assert f.to_vec1() == [3.0, -4.0] and g.to_vec1() == [0.5, 1.5]
    assert w.to_vec1() != [1.0, 2.0]


def test_functional_state_of_another_model_is_a_named_error():
    """``opt.init(model_a)`` given with ``model_b`` raised JAX's ``TypeError: add got incompatible shapes``
    from inside the compiled step (or a pytree structure error for another count of parameters)."""
    from candlejax import Device, DType, errors, nn

    vm = nn.VarMap()
    vb = nn.VarBuilder.from_varmap(vm, DType.F32, Device.Cpu)
    a, b, c = nn.linear(3, 2, vb.pp("a")), nn.linear(3, 4, vb.pp("b")), nn.linear_no_bias(3, 2, vb.pp("c"))
    x = cj.Tensor.new(np.ones((4, 3), np.float32))
    y = cj.Tensor.new(np.zeros((4, 2), np.float32))

    def loss_fn(m, x, y):
        return nn.loss.mse(m(x).narrow(1, 0, 2), y)

    for opt in (O.AdamW(O.ParamsAdamW(lr=0.1), donate=False), O.from_optax(optax.sgd(0.1, momentum=0.9))):
        state = opt.init(a)
        for other in (b, c):
            with pytest.raises(errors.OptimizerUsage, match=r"state does not match the model.*opt\.init\(model\)"):
                opt.backward_step(loss_fn, other, state, x, y)
            with pytest.raises(errors.OptimizerUsage, match=r"state does not match the model"):
                opt.step(other, state, cj.grad(loss_fn)(other, x, y))
        opt.backward_step(loss_fn, a, state, x, y)  # the model it was made for


def test_bound_step_errors_say_what_was_wrong():
    from candlejax import DType, errors, nn

    vm = nn.VarMap()
    lin = nn.linear(2, 1, nn.VarBuilder.from_varmap(vm, DType.F32, cj.Device.Cpu).pp("lin"))
    opt = O.SGD(vm.all_vars(), 0.1)
    x = cj.Tensor.new(np.ones((1, 2), np.float32))
    # an integer loss raised JAX's "grad requires real-valued outputs"
    with pytest.raises(errors.OptimizerUsage, match="must return a float scalar to differentiate, got dtype U32"):
        opt.backward_step(lambda m, x: m(x).sum_all().to_dtype(DType.U32), lin, x)
    # a Python number or a (loss, aux) pair raised AttributeError: 'float' object has no attribute 'shape'
    with pytest.raises(errors.OptimizerUsage, match=r"loss_fn must return a scalar Tensor, got tuple"):
        opt.backward_step(lambda m, x: (m(x).sum_all(), 1), lin, x)
    with pytest.raises(errors.OptimizerUsage, match=r"loss_fn must return a scalar Tensor, got float"):
        opt.backward_step(lambda m, x: 1.0, lin, x)
    # a dict of plain Tensors said "the gradients of nothing match no Var of this optimizer by name"
    with pytest.raises(errors.OptimizerUsage, match=r"found no named gradient in a dict with keys \['lin.weight'\]"):
        opt.step({"lin.weight": cj.Tensor.new(np.ones((1, 2), np.float32))})


def test_bound_step_updates_only_its_vars_that_have_a_gradient_as_candle(rng):
    """Candle's ``step(&grads)``: ``for var in vars { if let Some(grad) = grads.get(var) { .. } }``. Gradients of
    Vars the optimizer does not hold are ignored; its Vars without a gradient keep value and state (float64
    AdamW by Candle's formula, one global step count)."""
    from candlejax import Device, DType, nn

    vm = nn.VarMap()
    vb = nn.VarBuilder.from_varmap(vm, DType.F32, Device.Cpu)
    model = {"a": nn.linear(3, 2, vb.pp("a")), "b": nn.linear(3, 2, vb.pp("b")), "c": nn.linear(3, 2, vb.pp("c"))}
    frozen = {n: np.asarray(v._a).copy() for n, v in vm.data().items() if n.startswith("c.")}
    ab = [v for n, v in vm.data().items() if not n.startswith("c.")]
    lr, b1, b2, eps, wd = 0.05, 0.9, 0.999, 1e-8, 0.3
    opt = O.AdamW(ab, O.ParamsAdamW(lr=lr, weight_decay=wd))

    def loss(m, x, y, heads):
        return sum((nn.loss.mse(m[h](x), y) for h in heads[1:]), nn.loss.mse(m[heads[0]](x), y))

    theta = {n: np.asarray(v._a, np.float64) for n, v in vm.data().items() if not n.startswith("c.")}
    mom = {k: np.zeros_like(v) for k, v in theta.items()}
    vel = {k: np.zeros_like(v) for k, v in theta.items()}
    for t, heads in enumerate(["abc", "ac", "bc", "a"], start=1):
        x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
        sub = {h: model[h] for h in heads}  # gradients for the heads in the loss only (c's are ignored)
        opt.step(cj.grad(loss)(sub, wrap(jnp.asarray(x, jnp.float32)), wrap(jnp.asarray(y, jnp.float32)), heads))
        for h in heads.replace("c", ""):
            w, bias = theta[f"{h}.weight"], theta[f"{h}.bias"]
            r = 2 * (x @ w.T + bias - y) / y.size
            for k, g in ((f"{h}.weight", r.T @ x), (f"{h}.bias", r.sum(0))):
                mom[k] = b1 * mom[k] + (1 - b1) * g
                vel[k] = b2 * vel[k] + (1 - b2) * g * g
                step = (mom[k] / (1 - b1**t)) / (np.sqrt(vel[k] / (1 - b2**t)) + eps)
                theta[k] = theta[k] * (1 - lr * wd) - lr * step
        for k, want in theta.items():
            np.testing.assert_allclose(np.asarray(vm.data()[k]._a), want, rtol=1e-5, atol=1e-6, err_msg=f"{t} {k}")
        for k, want in frozen.items():
            np.testing.assert_array_equal(np.asarray(vm.data()[k]._a), want)
    assert int(opt.state.step) == 4


def test_bound_step_subset_optimizer_then_backward_step_and_sgd_by_hand(rng):
    from candlejax import Device, DType, nn

    vm = nn.VarMap()
    vb = nn.VarBuilder.from_varmap(vm, DType.F32, Device.Cpu)
    model = (nn.linear(3, 4, vb.pp("l1")), nn.linear(4, 2, vb.pp("l2")))
    x = wrap(jnp.asarray(rng.standard_normal((5, 3)), jnp.float32))
    y = wrap(jnp.asarray(rng.standard_normal((5, 2)), jnp.float32))

    def loss_fn(m, x, y):
        return nn.loss.mse(m[1](m[0](x).relu()), y)

    before = {n: np.asarray(v._a).copy() for n, v in vm.data().items()}
    opt = O.SGD([v for n, v in vm.data().items() if n.startswith("l2.")], 0.1)  # fine-tune the head
    grads = cj.grad(loss_fn)(model, x, y)  # gradients of l1 too: ignored
    opt.step(grads)
    gv = nn.module.named_vars(grads)
    for n, v in vm.data().items():
        want = before[n] - 0.1 * np.asarray(gv[n]._a, np.float64) if n.startswith("l2.") else before[n]
        np.testing.assert_allclose(np.asarray(v._a), want, rtol=1e-6, atol=1e-7)
    opt.backward_step(loss_fn, model, x, y)  # the same Vars in the model's order: one state
    np.testing.assert_array_equal(np.asarray(vm.data()["l1.weight"]._a), before["l1.weight"])


def test_bound_step_refuses_unnamed_lists_and_other_dtypes():
    from candlejax import errors
    from candlejax.nn.module import Var

    a, b = Var(np.zeros((2,), np.float32), "a"), Var(np.zeros((2,), np.float32), "b")
    opt = O.SGD([a, b], 1.0)
    g = [wrap(jnp.ones(2)), wrap(jnp.full(2, 2.0))]
    with pytest.raises(errors.OptimizerUsage, match=r"a list of 2 unnamed arrays \(not matched by position\)"):
        opt.step(g)  # equal shapes: by position it would silently update the wrong Vars
    one = O.SGD([Var(np.zeros((2,), np.float32), "w")], 1.0)
    one.step([wrap(jnp.ones(2))])  # the one gradient of a one-Var optimizer
    assert one.vars[0].to_vec1() == [-1.0, -1.0]
    g16 = {"a": Var(np.ones(2, np.float16), "a"), "b": Var(np.ones(2, np.float16), "b")}
    with pytest.raises(errors.UnexpectedDType, match=r"SGD.step: gradient of a has another dtype .* got: F16"):
        opt.step(g16)
    model = {"w": Var(np.zeros(2, np.float32), "w")}
    with pytest.raises(errors.UnexpectedDType, match=r"gradient of w has another dtype"):
        O.SGD(0.1).step(model, O.SGD(0.1).init(model), {"w": wrap(jnp.ones(2, jnp.float16))})
    assert a.to_vec1() == [0.0, 0.0]


def test_bound_learning_rate_with_a_schedule_reads_its_own_state():
    from candlejax.nn.module import Var

    w = Var(np.ones(2, np.float32), "w")
    opt = O.SGD([w], optax.linear_schedule(1.0, 0.0, 4))
    assert opt.learning_rate() == 1.0  # Candle's learning_rate() takes no argument
    opt.backward_step(lambda m: m["w"].sum_all(), {"w": w})
    assert opt.learning_rate() == pytest.approx(0.75)
    with pytest.raises(cj.Error, match=r"built without Vars\); pass the state: learning_rate\(state\)"):
        O.SGD(optax.linear_schedule(1.0, 0.0, 4)).learning_rate()


def test_sgd_empty_push_and_into_inner():
    """Candle's ``let mut sgd = SGD::empty(lr)?; sgd.push(&w); sgd.step(&grads)?; sgd.into_inner()``."""
    from candlejax.nn.module import Var

    w, b = Var(np.array([1.0, 2.0], np.float32), "w"), Var(np.array([3.0], np.float32), "b")
    sgd = O.SGD.empty(0.5)
    sgd.push(w)
    sgd.push(w)  # already trained: not added twice (its gradient would be applied twice)
    assert sgd.into_inner() == [w] and sgd.into_inner()[0] is w
    model = {"w": w, "b": b}

    def loss_fn(m):
        return (m["w"] * m["w"]).sum() + m["b"].sum() * 4.0

    sgd.backward_step(loss_fn, model)  # only w is trained: d/dw = 2w
    np.testing.assert_allclose(w.to_vec1(), [0.0, 0.0])
    assert b.to_vec1() == [3.0]
    sgd.push(b)  # after a step: SGD's state is only its step count
    sgd.backward_step(loss_fn, model)
    np.testing.assert_allclose(b.to_vec1(), [1.0])
    assert [v.name for v in sgd.into_inner()] == ["w", "b"]


def test_deepcopy_of_a_trained_model_and_its_bound_optimizer_steps_independently():
    """``copy.deepcopy((model, opt))`` after some steps (as ``copy.deepcopy`` of a torch model and its
    optimizer): the copy trains its own Vars from the same state; the originals stay as they were."""
    import copy

    import torch

    vm = cj.nn.VarMap()
    lin = cj.nn.linear(2, 1, cj.nn.VarBuilder.from_varmap(vm, cj.f32, cj.Device.Cpu).pp("l"))
    w0, b0 = np.asarray(lin.weight), np.asarray(lin.bias)
    xs = np.array([[1.0, 2.0], [-1.0, 0.5], [0.0, 3.0]], np.float32)
    ys = np.array([[1.0], [0.0], [2.0]], np.float32)
    x, y = cj.Tensor(xs), cj.Tensor(ys)
    opt = cj.nn.AdamW(vm.all_vars(), cj.nn.ParamsAdamW(lr=0.1))

    def loss_fn(m, x, y):
        return ((m.forward(x) - y) ** 2).mean_all()

    tl = torch.nn.Linear(2, 1)
    with torch.no_grad():
        tl.weight.copy_(torch.tensor(w0))
        tl.bias.copy_(torch.tensor(b0))
    topt = torch.optim.AdamW(tl.parameters(), lr=0.1, weight_decay=0.01)

    def torch_step(m, o):
        o.zero_grad()
        ((m(torch.tensor(xs)) - torch.tensor(ys)) ** 2).mean().backward()
        o.step()

    for _ in range(2):
        opt.backward_step(loss_fn, lin, x, y)
        torch_step(tl, topt)
    lin2, opt2 = copy.deepcopy((lin, opt))
    tl2, topt2 = copy.deepcopy((tl, topt))
    w_after2 = np.asarray(lin.weight).copy()
    for _ in range(2):
        opt2.backward_step(loss_fn, lin2, x, y)
        torch_step(tl2, topt2)
    np.testing.assert_array_equal(np.asarray(lin.weight), w_after2)
    np.testing.assert_allclose(np.asarray(lin2.weight), tl2.weight.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(lin2.bias), tl2.bias.detach().numpy(), rtol=1e-4, atol=1e-5)
    assert lin2.weight is not lin.weight and {id(v) for v in opt2.vars} == {id(lin2.weight), id(lin2.bias)}
    opt.backward_step(loss_fn, lin, x, y)  # the original still trains
