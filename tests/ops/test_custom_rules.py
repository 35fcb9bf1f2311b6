"""Derivatives through the ops with their own differentiation rules or numerics (attention's softmax
guards, f64 attention): jax.test_util.check_grads in float64, values against torch float64."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.test_util import check_grads

from candlejax import Tensor
from candlejax.nn import ops


def _torch_sdpa(q, k, v, **kw):
    g = q.shape[1] // k.shape[1]
    k, v = (torch.from_numpy(np.repeat(a, g, axis=1)) for a in (k, v))
    return torch.nn.functional.scaled_dot_product_attention(torch.from_numpy(q), k, v, **kw).numpy()


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_in_float64_is_computed_in_float64(x64, rng, causal):
    """f64 attention keeps f64 scores and softmax (torch's sdpa in f64), so its derivatives pass
    check_grads; only f16 / bf16 are upcast (to f32)."""
    q, k, v = rng.standard_normal((1, 2, 3, 4)), rng.standard_normal((1, 1, 3, 4)), rng.standard_normal((1, 1, 3, 4))
    got = ops.sdpa(Tensor(jnp.asarray(q)), Tensor(jnp.asarray(k)), Tensor(jnp.asarray(v)), do_causal=causal)
    assert got.jax.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got.jax), _torch_sdpa(q, k, v, is_causal=causal), rtol=1e-12, atol=1e-13)

    def f(q, k, v):
        return ops.sdpa(Tensor(q), Tensor(k), Tensor(v), do_causal=causal).jax

    args = tuple(jnp.asarray(a) for a in (q, k, v))
    check_grads(f, args, order=2, modes=["rev"])
    check_grads(f, args, order=2, modes=["fwd"])


def test_sdpa_in_float64_with_a_mask_and_transposed_keys(x64, rng):
    q, k, v = rng.standard_normal((2, 2, 3, 4)), rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((2, 2, 5, 4))
    mask = rng.standard_normal((2, 1, 1, 5))
    want = _torch_sdpa(q, k, v, attn_mask=torch.from_numpy(mask))
    kt = jnp.asarray(np.swapaxes(k, 2, 3))
    got = ops.sdpa(Tensor(jnp.asarray(q)), Tensor(kt), Tensor(jnp.asarray(v)), Tensor(jnp.asarray(mask)),
                   keys_transposed=True)  # fmt: skip
    np.testing.assert_allclose(np.asarray(got.jax), want, rtol=1e-12, atol=1e-13)
    got = ops.sdpa(Tensor(jnp.asarray(np.swapaxes(q, 1, 2))), Tensor(jnp.asarray(np.swapaxes(k, 1, 2))),
                   Tensor(jnp.asarray(np.swapaxes(v, 1, 2))), Tensor(jnp.asarray(mask)), layout="bshd")  # fmt: skip
    np.testing.assert_allclose(np.swapaxes(np.asarray(got.jax), 1, 2), want, rtol=1e-12, atol=1e-13)
