"""The README's promises, statement by statement: Candle's "Familiar" slide and the seed's training example.

Each test runs the code exactly as issue 2 ("Familiar" slide) and issue 3 (training example) show
it, then checks the results against numpy: values of every tensor-valued line, and a float64 numpy
replay of the whole training epoch (forward, backward, AdamW with Candle's defaults).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import candlejax as cj
from candlejax import D, Device, DType, Tensor


def npa(x) -> np.ndarray:
    return np.asarray(x)


# ------------------------------------------------------------------------------------------------
# Candle's "Familiar" slide (issue 2)
# ------------------------------------------------------------------------------------------------
def test_familiar_slide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the slide writes "model.safetensors" in the working directory
    a = Tensor.new([[1.0, 2.0], [3.0, 4.0]], Device.Cpu)
    b = Tensor.new([[5.0, 6.0], [7.0, 8.0]], Device.Cpu)
    bias = Tensor.new([10.0, 20.0], Device.Cpu)
    ref = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)

    t = Tensor.new([[1.0, 2.0], [3.0, 4.0]], Device.Cpu)  # torch.Tensor([[1, 2], [3, 4]])
    assert (t.dtype, t.shape, t.device, t.rank) == (DType.F32, (2, 2), Device.Cpu, 2)
    np.testing.assert_array_equal(npa(t), ref)

    z = Tensor.zeros((2, 2), DType.F32, Device.Cpu)  # torch.zeros((2, 2))
    assert z.dtype == DType.F32
    np.testing.assert_array_equal(npa(z), np.zeros((2, 2), np.float32))

    r1 = t.i((slice(None), slice(None, 1)))
    r2 = t[:, :1]  # tensor[:, :1]
    np.testing.assert_array_equal(npa(r1), ref[:, :1])
    np.testing.assert_array_equal(npa(r2), ref[:, :1])

    r1 = t.reshape((4,))
    r2 = t.reshape((2, ()))  # hole, like Candle's ()
    np.testing.assert_array_equal(npa(r1), ref.reshape(4))
    np.testing.assert_array_equal(npa(r2), ref.reshape(2, -1))
    assert r2.shape == (2, 2)

    r1 = a.matmul(b)
    r2 = a + b
    r3 = a.broadcast_add(bias)  # strict method, broadcasting operator
    np.testing.assert_allclose(npa(r1), npa(a).astype(np.float64) @ npa(b), rtol=1e-6)
    np.testing.assert_array_equal(npa(r2), npa(a) + npa(b))
    np.testing.assert_array_equal(npa(r3), npa(a) + npa(bias))
    with pytest.raises(cj.Error, match="broadcast_add"):
        a.add(bias)  # the strict op names the fix

    r1 = t.to_device(Device.cuda_if_available(0))
    r2 = t.to_dtype(DType.F16)
    np.testing.assert_array_equal(npa(r1), ref)
    assert r2.dtype == DType.F16 and npa(r2).dtype == np.float16
    np.testing.assert_array_equal(npa(r2).astype(np.float32), ref)

    cj.safetensors.save({"A": t}, "model.safetensors")
    loaded = cj.safetensors.load("model.safetensors", Device.Cpu)
    assert sorted(loaded) == ["A"] and loaded["A"].dtype == DType.F32
    np.testing.assert_array_equal(npa(loaded["A"]), ref)

    r1 = t.zeros_like()
    r2 = t.ones_like()
    r3 = t.rand_like(0.0, 1.0)
    r4 = Tensor.randn(0.0, 1.0, (100, 784), Device.Cpu)
    np.testing.assert_array_equal(npa(r1), np.zeros_like(ref))
    np.testing.assert_array_equal(npa(r2), np.ones_like(ref))
    assert r3.shape == (2, 2) and r3.dtype == DType.F32 and ((npa(r3) >= 0) & (npa(r3) < 1)).all()
    assert r4.shape == (100, 784) and r4.dtype == DType.F32
    assert abs(npa(r4).mean()) < 0.05 and abs(npa(r4).std() - 1.0) < 0.05

    assert t.to_vec2() == ref.tolist()
    with pytest.raises(cj.Error, match=r"to_scalar: unexpected rank, expected: 0, got: 2"):
        t.to_scalar()  # a rank-2 tensor has no scalar value, as in Candle
    assert t.i((1, 0)).to_scalar() == 3.0 and isinstance(t.i((1, 0)).to_scalar(), float)
    assert t.dims2() == (2, 2)
    r1 = t.sum_keepdim(1)
    np.testing.assert_array_equal(npa(r1), ref.sum(1, keepdims=True))
    r2 = t.argmax(D.Minus1)
    assert r2.dtype == DType.U32
    np.testing.assert_array_equal(npa(r2), ref.argmax(-1))
    np.testing.assert_array_equal(npa(t.argmax(-1)), ref.argmax(-1))  # plain negative ints too

    # np.asarray / jnp.asarray give the values back
    np.testing.assert_array_equal(np.asarray(jnp.asarray(t)), ref)


def test_familiar_slide_under_jit_grad_vmap():
    """The tensor-valued lines of the slide give the same values inside jax.jit, grad and vmap."""
    t = Tensor.new([[1.0, 2.0], [3.0, 4.0]], Device.Cpu)
    bias = Tensor.new([10.0, 20.0], Device.Cpu)

    def slide(t, bias):
        return (
            t.i((slice(None), slice(None, 1))),
            t[:, :1],
            t.reshape((4,)),
            t.reshape((2, ())),
            t.matmul(t),
            t + t,
            t.broadcast_add(bias),
            t.to_dtype(DType.F16),
            t.zeros_like(),
            t.ones_like(),
            t.sum_keepdim(1),
            t.argmax(D.Minus1),
        )

    eager = slide(t, bias)
    jitted = jax.jit(slide)(t, bias)
    for e, j in zip(eager, jitted, strict=True):
        assert isinstance(j, Tensor) and (e.dtype, e.shape) == (j.dtype, j.shape)
        np.testing.assert_array_equal(npa(e), npa(j))

    g = jax.grad(lambda x: x.matmul(x).sum_all().jax)(t)  # d/dX sum(X @ X) = 1 X^T + X^T 1
    x = npa(t).astype(np.float64)
    ones = np.ones_like(x)
    np.testing.assert_allclose(npa(g), ones @ x.T + x.T @ ones, rtol=1e-6)

    rows = jax.vmap(lambda row: row.broadcast_add(bias).sum_all())(t)
    np.testing.assert_allclose(npa(rows), (npa(t) + npa(bias)).sum(1))


# ------------------------------------------------------------------------------------------------
# The seed's training example (issue 3)
# ------------------------------------------------------------------------------------------------
def _digits_784(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` real 8x8 digits, zero-padded to 28x28 and flattened to 784 values, with u32 labels."""
    ds = cj.data.load_digits()
    x = np.asarray(ds.train_images)[:n].reshape(n, 8, 8)
    x = np.pad(x, ((0, 0), (10, 10), (10, 10))).reshape(n, 784)
    return x.astype(np.float32), np.asarray(ds.train_labels)[:n].astype(np.uint32)


def _np_forward(p: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pre = x @ p["first.weight"].T + p["first.bias"]
    h = np.maximum(pre, 0.0)
    return h @ p["second.weight"].T + p["second.bias"], h, pre


def _np_loss_and_grads(p: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
    logits, h, pre = _np_forward(p, x)
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    n = len(y)
    loss = -logp[np.arange(n), y].mean()
    dlogits = np.exp(logp)
    dlogits[np.arange(n), y] -= 1.0
    dlogits /= n
    dh = dlogits @ p["second.weight"] * (pre > 0)
    grads = {
        "second.weight": dlogits.T @ h,
        "second.bias": dlogits.sum(0),
        "first.weight": dh.T @ x,
        "first.bias": dh.sum(0),
    }
    return float(loss), grads


def test_training_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example writes "model.safetensors" in the working directory
    train_set = _digits_784(256)  # a small train set: 4 batches of 64, one epoch

    # ---- the example, as written in issue 3 -----------------------------------------------------
    from candlejax.nn import Linear, Module, VarBuilder, VarMap, linear

    class Model(Module):
        def __init__(self, vb):
            self.first = linear(784, 100, vb.pp("first"))
            self.second = linear(100, 10, vb.pp("second"))

        def forward(self, image):
            return self.second.forward(self.first.forward(image).relu())

    varmap = VarMap()  # deterministic init from a seed
    vb = VarBuilder.from_varmap(varmap, DType.F32, Device.Cpu)
    model = Model(vb)
    opt = cj.optim.AdamW(cj.optim.ParamsAdamW(lr=1e-3))  # Candle's defaults
    state = opt.init(model)

    def loss_fn(m, x, y):
        return cj.nn.loss.cross_entropy(m.forward(x), y)

    losses = []
    for x, y in cj.data.Batcher(train_set, batch_size=64, shuffle=True, seed=0):
        model, state, loss = opt.backward_step(loss_fn, model, state, x, y)  # one jitted step
        losses.append(float(npa(loss)))
    model.save_safetensors("model.safetensors")  # names: first.weight, first.bias, ...
    trained = {k: npa(v) for k, v in model.named_vars().items()}
    vb = VarBuilder.from_mmaped_safetensors(["model.safetensors"], DType.F32, Device.Cpu)
    model = Model(vb)  # the same class loads trained weights

    # ---- checks ---------------------------------------------------------------------------------
    assert len(losses) == 4 and all(np.isfinite(losses))
    names = ["first.bias", "first.weight", "second.bias", "second.weight"]
    assert sorted(model.named_vars()) == names
    assert sorted(cj.safetensors.load("model.safetensors")) == names
    for k, v in model.named_vars().items():
        assert v.dtype == DType.F32
        np.testing.assert_array_equal(npa(v), trained[k], err_msg=k)

    # numpy replay in float64: the same initial weights (VarMap init is a pure function of seed and
    # name), the same batches (the Batcher's shuffle is a pure function of seed and epoch), Candle's
    # AdamW (lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 0.01).
    init = Model(VarBuilder.from_varmap(VarMap(), DType.F32, Device.Cpu))
    p = {k: npa(v).astype(np.float64) for k, v in init.named_vars().items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    lr, b1, b2, eps, wd = 1e-3, 0.9, 0.999, 1e-8, 0.01
    ref_losses = []
    for step, (x, y) in enumerate(cj.data.Batcher(train_set, batch_size=64, shuffle=True, seed=0), start=1):
        loss, g = _np_loss_and_grads(p, npa(x).astype(np.float64), npa(y).astype(np.int64))
        ref_losses.append(loss)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
            mhat, vhat = m[k] / (1 - b1**step), v2[k] / (1 - b2**step)
            p[k] = p[k] * (1 - lr * wd) - lr * mhat / (np.sqrt(vhat) + eps)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    for k in names:
        # Adam's first steps move each weight by about lr * sign(grad); a gradient that is nearly 0
        # can flip sign between f32 and f64, so compare with a tolerance of a fraction of lr.
        np.testing.assert_allclose(trained[k], p[k], atol=3e-4, err_msg=k)
        assert np.mean(np.abs(trained[k] - p[k]) < 1e-5) > 0.99, k

    # the reloaded model computes what numpy computes with the trained weights
    x, y = _digits_784(64)
    logits = model(Tensor.new(x))  # model(x) is model.forward(x)
    np.testing.assert_allclose(npa(logits), _np_forward({k: v.astype(np.float64) for k, v in trained.items()}, x)[0],
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    np.testing.assert_array_equal(npa(logits), npa(model.forward(Tensor.new(x))))

    # Linear(weight, bias) and Linear.new(weight, bias) build a layer from tensors (the "Simple" slide)
    first = Linear(model.first.weight, model.first.bias)
    second = Linear.new(model.second.weight, model.second.bias)
    np.testing.assert_allclose(npa(second.forward(first.forward(Tensor.new(x)).relu())), npa(logits), rtol=1e-6)
