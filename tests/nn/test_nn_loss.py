"""Losses against torch (values and gradients) and Candle's error messages."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from candlejax import errors
from candlejax.nn import loss, ops

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _cmp(cj_fn, torch_fn, *arrays, diff=(0,), atol=1e-5):
    val = cj_fn(*arrays)
    assert val.shape == ()
    targs = [torch.tensor(a, requires_grad=i in diff) for i, a in enumerate(arrays)]
    tval = torch_fn(*targs)
    tval.backward()
    np.testing.assert_allclose(np.asarray(val._a), tval.detach().numpy(), atol=atol)
    grads = jax.jit(jax.grad(lambda *a: cj_fn(*a)._a, argnums=diff))(*[jnp.asarray(a) for a in arrays])
    for i, g in zip(diff, grads):
        np.testing.assert_allclose(np.asarray(g), targs[i].grad.numpy(), atol=atol)


def test_cross_entropy_and_nll():
    logits = _x(6, 5) * 3
    y = np.array([0, 4, 2, 2, 1, 3], np.uint32)
    _cmp(loss.cross_entropy, lambda a, t: F.cross_entropy(a, t.long()), logits, y)
    lp = np.asarray(ops.log_softmax(logits, 1)._a)
    _cmp(loss.nll, lambda a, t: F.nll_loss(a, t.long()), lp, y.astype(np.int32))


def test_cross_entropy_errors():
    with pytest.raises(Exception, match="cross_entropy expects an input tensor of rank 2"):
        loss.cross_entropy(_x(2, 3, 4), np.zeros(2, np.uint32))
    with pytest.raises(Exception, match=r"batch size mismatch between inp \(4\) and target \(3\)"):
        loss.nll(_x(4, 3), np.zeros(3, np.uint32))
    with pytest.raises(Exception, match=r"the target tensor should have a single dimension \(\[4, 1\]\)"):
        loss.nll(_x(4, 3), np.zeros((4, 1), np.uint32))
    with pytest.raises(Exception, match="class ids"):
        loss.cross_entropy(_x(4, 3), np.zeros(4, np.float32))


def test_mse_bce_huber():
    a, b = _x(4, 3), _x(4, 3, seed=1)
    _cmp(loss.mse, F.mse_loss, a, b, diff=(0, 1))
    t = (np.random.default_rng(2).random((4, 3)) > 0.5).astype(np.float32)
    _cmp(loss.binary_cross_entropy_with_logit, F.binary_cross_entropy_with_logits, a * 5, t)
    # logits at exactly 0 (a zero-initialised head's first step): the gradient is (sigmoid(0) - t) / n
    zero = np.zeros((2, 3), np.float32)
    zero[0, 0] = 2.0
    soft = np.random.default_rng(3).random((2, 3)).astype(np.float32)
    _cmp(loss.binary_cross_entropy_with_logit, F.binary_cross_entropy_with_logits, zero, soft, diff=(0, 1))
    _cmp(lambda x, y: loss.huber(x, y, 0.7), lambda x, y: F.huber_loss(x, y, delta=0.7), a, b, diff=(0, 1))
    with pytest.raises(Exception, match=r"shape mismatch in sub, lhs: \[4, 3\], rhs: \[3\] \(in mse\)"):
        loss.mse(a, b[0])


def test_bce_with_logit_is_stable_for_large_logits():
    x = np.array([[100.0, -100.0]], np.float32)
    t = np.array([[0.0, 1.0]], np.float32)
    v = float(loss.binary_cross_entropy_with_logit(x, t)._a)
    assert np.isfinite(v) and abs(v - 100.0) < 1e-3


def test_bce_with_logit_keeps_the_digits_of_confident_predictions():
    # softplus(x) - x·t cancels for a large positive logit with target 1 (12: 5.72e-6 for 6.14e-6);
    # the loss of confident, correct predictions on either side keeps f32's relative precision
    x = np.array([[12.0, 15.0, -12.0, -15.0, 10.0, 0.0]], np.float32)
    t = np.array([[1.0, 1.0, 0.0, 0.0, 1.0, 0.25]], np.float32)
    for cols in (slice(0, 2), slice(2, 4), slice(0, 6)):
        xs, ts = x[:, cols], t[:, cols]
        got = float(loss.binary_cross_entropy_with_logit(xs, ts)._a)
        want = F.binary_cross_entropy_with_logits(torch.tensor(xs).double(), torch.tensor(ts).double()).item()
        np.testing.assert_allclose(got, want, rtol=1e-5)
    _cmp(loss.binary_cross_entropy_with_logit, F.binary_cross_entropy_with_logits, x, t, diff=(0, 1))


@pytest.mark.parametrize("fn", ["cross_entropy", "nll"])
@pytest.mark.parametrize(
    "dt,bad", [(np.int32, -1), (np.int32, -3), (np.int32, 3), (np.int32, 7), (np.uint32, 3), (np.uint32, 2**31),
               (np.uint8, 3)]
)  # fmt: skip
def test_traced_out_of_range_targets_give_nan(fn, dt, bad):
    # eagerly they raise (tests/unit/test_robust_inputs.py); traced, -1 used to pick the last class
    x = _x(2, 3)
    f = jax.jit(lambda a, t: getattr(loss, fn)(a, t)._a)
    assert np.isnan(float(f(jnp.asarray(x), jnp.asarray(np.array([bad, 0], dt)))))
    assert np.isfinite(float(f(jnp.asarray(x), jnp.asarray(np.array([2, 0], dt)))))


@pytest.mark.parametrize("dt", [np.uint32, np.int32, np.uint8])
def test_no_index_target_counts_zero_like_candle_gather(dt):
    # Candle: nll = -inp.gather(target, 1).sum_all() / b, and gather gives 0 for the dtype's max ("no index")
    x = _x(3, 4)
    tgt = np.array([1, np.iinfo(dt).max, 3], dt)
    ref = F.cross_entropy(torch.tensor(x[[0, 2]]), torch.tensor([1, 3]), reduction="sum").item() / 3
    for f in (loss.cross_entropy, jax.jit(loss.cross_entropy)):
        np.testing.assert_allclose(float(f(x, jnp.asarray(tgt))._a), ref, rtol=1e-5)


@pytest.mark.parametrize("delta", [0.0, -1.0, float("nan")])
def test_huber_refuses_non_positive_delta(delta):
    a = _x(2, 3)
    if not np.isnan(delta):
        with pytest.raises(RuntimeError, match="non-positive values for delta"):
            F.huber_loss(torch.tensor(a), torch.tensor(a), delta=delta)
    with pytest.raises(errors.InvalidArgument, match=r"huber: delta must be positive, got"):
        loss.huber(a, a, delta)  # -1.0 returned -0.5
