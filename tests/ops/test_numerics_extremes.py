"""Values and gradients at the numeric extremes (zero norms, constant rows), against PyTorch float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from candlejax import Tensor

from helpers import T  # isort: skip

torch = pytest.importorskip("torch")


def _grad(f, x: np.ndarray) -> np.ndarray:
    """Gradient of the scalar ``f(Tensor)`` with respect to ``x``, eagerly through jax.grad."""
    return np.asarray(jax.grad(lambda a: f(Tensor._wrap(a)).jax.reshape(()))(jnp.asarray(x)), np.float64)


def _torch_grad(f, x: np.ndarray) -> np.ndarray:
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    f(xt).backward()
    return xt.grad.numpy()


@pytest.mark.parametrize("x", [np.zeros(3), np.array([3.0, 0.0, -4.0])], ids=["zero", "nonzero"])
def test_norm_grad_of_zero_vector_is_zero(x):
    # sqrt(sum(x²)) differentiated naively is inf·0 = NaN at the zero vector; torch.linalg.norm gives 0
    x = x.astype(np.float32)
    got = _grad(lambda t: t.norm(), x)
    want = _torch_grad(lambda t: torch.linalg.norm(t), x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(T(x).norm().jax), np.linalg.norm(x.astype(np.float64)), rtol=1e-6)


@pytest.mark.parametrize("dim", [None, 1])
def test_std_of_constant_row_and_its_grad(dim):
    # a constant row: std 0, and PyTorch's std backward gives a zero gradient there (not NaN)
    x = np.array([[2.0, 2.0, 2.0], [1.0, 2.0, 4.0]], np.float32)
    xt = torch.tensor(x.astype(np.float64))
    want = xt.std() if dim is None else xt.std(dim)
    got = T(x).std() if dim is None else T(x).std(dim)
    np.testing.assert_allclose(np.asarray(got.jax, np.float64), want.numpy(), rtol=1e-6)
    w = np.array([1.0, 3.0], np.float32)
    if dim is None:
        x = x[:1]
        g, gt = _grad(lambda t: t.std(), x), _torch_grad(lambda t: t.std(), x)
    else:
        g = _grad(lambda t: (t.std(dim) * T(w)).sum_all(), x)
        gt = _torch_grad(lambda t: (t.std(dim) * torch.tensor(w, dtype=torch.float64)).sum(), x)
    np.testing.assert_allclose(g, gt, rtol=1e-5, atol=1e-6)


def test_std_of_one_element_is_nan_as_torch():
    # unbiased (n - 1) rule: 0 / 0
    assert np.isnan(np.asarray(T(np.array([[3.0]], np.float32)).std(1).jax)).all()


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16], ids=["f16", "bf16"])
def test_half_std_whose_variance_overflows(dtype):
    # f16: the variance 120000 is past f16's max (65504) while the std 346.4 is not; computed in f32 and
    # rounded once, as PyTorch (the variance rounded to f16 first gave inf)
    x = np.array([[300.0, -300.0, 300.0, -300.0], [1.0, 2.0, 3.0, 4.0]], np.float32).astype(dtype)
    want = torch.tensor(x.astype(np.float64)).std(1).numpy()
    got = np.asarray(T(x).std(1).jax).astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=8e-3)
    np.testing.assert_allclose(np.asarray(jax.jit(lambda t: t.std(1))(T(x)).jax).astype(np.float64), want, rtol=8e-3)
