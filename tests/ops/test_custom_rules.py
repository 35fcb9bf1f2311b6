"""Derivatives through the ops with their own differentiation rules or numerics (attention's softmax
guards, f64 attention): jax.test_util.check_grads in float64, values against torch float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.test_util import check_grads

from candlejax import Tensor
from candlejax.nn import Linear, ops
from candlejax.quantized import native


def linear_forward(x, w):
    return Linear(Tensor(w)).forward(Tensor(x)).jax


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


def _ref_attention(q, k, v, mask):
    s = jnp.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1]) + mask
    m = jnp.max(s, -1, keepdims=True)
    e = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0))
    den = e.sum(-1, keepdims=True)
    return jnp.einsum("bhqk,bhkd->bhqd", e / jnp.where(den == 0, 1, den), v)  # a row that sees no key: zeros


@pytest.mark.skipif(not (native.attention_available() and native.f32_available()),
                    reason="the native f32 library is not built here")  # fmt: skip
def test_native_f32_attention_and_linear_forward_mode_and_per_example_grads(x64, rng):
    """f32 ops with native values and derivative rules (the native attention with a batch entry that
    sees no key, the native few-row product): jax.jvp, jax.hessian and per-example gradients against
    the same functions in float64."""
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((2, 2, 3, 8), (2, 2, 4, 8), (2, 2, 4, 8)))
    mask = np.zeros((2, 1, 1, 4), np.float32)
    mask[0, ..., -1] = mask[1] = -np.inf
    w = (rng.standard_normal((128, 128)) * 0.1).astype(np.float32)
    c = rng.standard_normal((3, 8)).astype(np.float32)

    def f(q, k, v, m, w, dt):
        y = ops.sdpa(Tensor(q), Tensor(k), Tensor(v), Tensor(m)).jax if dt == np.float32 else _ref_attention(q, k, v, m)
        h = jnp.tile(y.reshape(-1, y.shape[-2], 8), (1, 1, 16))  # (B * H, 3, 128)
        h = linear_forward(h, w) if dt == np.float32 else h @ w.T
        return jnp.sum(jnp.tanh(h[..., :8]) * c.astype(dt))

    def run(dt, transform):
        args = tuple(jnp.asarray(a, dt) for a in (q, k, v, mask, w))
        return jax.jit(lambda *a: transform(lambda *b: f(*b, dt), a))(*args)

    def jvp(fn, args):
        tangents = tuple(jnp.ones_like(a) * 0.1 for a in args[:3]) + tuple(jnp.zeros_like(a) for a in args[3:])
        return jax.jvp(fn, args, tangents)[1]

    def hessian(fn, args):
        return jax.hessian(lambda q0: fn(args[0].at[0, 0, 0].set(q0), *args[1:]))(args[0][0, 0, 0])

    def per_example(fn, args):
        one = lambda q, k, v, m: fn(q[None], k[None], v[None], m[None], args[4])  # noqa: E731
        return jax.vmap(jax.grad(one, (0, 1, 2)))(*args[:4])

    for transform in (jvp, hessian, per_example):
        got, want = run(np.float32, transform), run(np.float64, transform)
        for g, r in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=2e-4, atol=2e-5)
