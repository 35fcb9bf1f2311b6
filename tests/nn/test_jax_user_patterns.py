"""What a JAX / Equinox user writes around candlejax Modules: label and mask trees for optax,
checked against torch.optim on the same weights."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import optax
import pytest
import torch

import candlejax.nn as nn
from candlejax import Device, DType, Tensor, errors
from candlejax.nn import Module, VarBuilder, VarMap


class _Mlp(Module):
    def __init__(self, vb):
        self.l1 = nn.linear(4, 8, vb.pp("l1"))
        self.l2 = nn.linear(8, 2, vb.pp("l2"))

    def forward(self, x):
        return self.l2(self.l1(x).relu())


def _mlp_and_torch():
    m = _Mlp(VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu))
    t = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).double()
    sd = {k: torch.tensor(np.asarray(v), dtype=torch.float64) for k, v in m.named_vars().items()}
    with torch.no_grad():
        for i, name in ((0, "l1"), (2, "l2")):
            t[i].weight.copy_(sd[f"{name}.weight"])
            t[i].bias.copy_(sd[f"{name}.bias"])
    return m, t


def _loss(m, x, y):
    d = m(x) - y
    return (d * d).mean_all().jax


def test_multi_transform_with_a_label_module_freezes_like_torch():
    """``optax.multi_transform(transforms, labels)`` with ``labels`` a Module-shaped tree of strings
    (``jax.tree_util.tree_map(lambda _: "train", model)``): optax calls a callable label tree with the
    parameters, and a Module is callable, so the label tree must answer with itself."""
    m, t = _mlp_and_torch()
    labels = jax.tree_util.tree_map(lambda _: "train", m)
    labels = labels.replace(l1=jax.tree_util.tree_map(lambda _: "freeze", m.l1))
    opt = optax.multi_transform({"train": optax.adam(1e-2), "freeze": optax.set_to_zero()}, labels)
    state = opt.init(m)
    topt = torch.optim.Adam(list(t[2].parameters()), lr=1e-2)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 4)).astype(np.float32), rng.standard_normal((16, 2)).astype(np.float32)

    @jax.jit
    def step(m, state, x, y):
        grads = jax.grad(_loss)(m, x, y)
        updates, state = opt.update(grads, state, m)
        return optax.apply_updates(m, updates), state

    for _ in range(4):
        m, state = step(m, state, Tensor(x), Tensor(y))
        topt.zero_grad()
        ((t(torch.tensor(x, dtype=torch.float64)) - torch.tensor(y, dtype=torch.float64)) ** 2).mean().backward()
        topt.step()
    for name, tp in (("l1", t[0]), ("l2", t[2])):
        np.testing.assert_allclose(np.asarray(getattr(m, name).weight), tp.weight.detach().numpy(), atol=2e-6)
        np.testing.assert_allclose(np.asarray(getattr(m, name).bias), tp.bias.detach().numpy(), atol=2e-6)


def test_label_and_mask_trees_print():
    m, _ = _mlp_and_torch()
    labels = jax.tree_util.tree_map(lambda _: "train", m)
    assert "'train'" in repr(labels) and "l1.weight" in repr(labels)
    mask = jax.tree_util.tree_map(lambda a: a.ndim > 1, m)
    assert "True" in repr(mask) and "False" in repr(mask)


def test_a_model_donated_to_a_jitted_function_raises_deleted_buffer():
    """``jax.jit(step, donate_argnums=0)(model)`` consumes the model's buffers; running the old model
    again (its layer already compiled) raises DeletedBuffer, not XLA's INVALID_ARGUMENT ValueError."""
    m, _ = _mlp_and_torch()
    x = Tensor(np.ones((3, 4), np.float32))
    m(x)
    new = jax.jit(lambda m: jax.tree_util.tree_map(lambda a: a * 2, m), donate_argnums=0)(m)
    np.testing.assert_allclose(np.asarray(new.l1.weight), 2 * np.asarray(_mlp_and_torch()[0].l1.weight))
    with pytest.raises(errors.DeletedBuffer, match="donate"):
        m(x)


def test_vmap_of_linear_over_single_examples_names_the_fix():
    """Candle's Linear needs a batch dimension (its matmul refuses rank 1, candle-nn/src/linear.rs), so
    ``jax.vmap(lin)(xs)`` over rank-1 examples raises, naming the vmap spelling that works."""
    m, t = _mlp_and_torch()
    xs = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    with pytest.raises(errors.UnexpectedShape, match=r"x\[None\]"):
        jax.vmap(m.l1)(Tensor(xs))
    out = jax.vmap(lambda x: m(x[None])[0])(Tensor(xs))
    ref = t(torch.tensor(xs, dtype=torch.float64)).detach().numpy()
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


def test_traced_train_flag_raises_naming_static_argnames():
    """``jax.jit(step)(model, x, True)`` traces the training flag; Dropout and BatchNorm choose their
    branch in Python (as Candle's ``forward_t(xs, train: bool)``), so a traced flag raises a candlejax
    error naming ``static_argnames``, and the static flag gives the eager result."""
    vb = VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu)
    bn = nn.batch_norm(3, nn.BatchNormConfig(), vb.pp("bn"))
    x = Tensor(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))
    key = jax.random.key(0)
    cases = ((bn, lambda m, x, t: m.forward_t(x, t)), (nn.Dropout(0.5), lambda m, x, t: m.forward_t(x, t, key)))
    for layer, call in cases:
        with pytest.raises(errors.TracingError, match="static_argnames"):
            jax.jit(call)(layer, x, True)
        for train in (True, False):
            with warnings.catch_warnings():  # raw jax.jit keeps BatchNorm's statistics (LostUpdateWarning says so)
                warnings.simplefilter("ignore", errors.LostUpdateWarning)
                got = jax.jit(call, static_argnames="t")(layer, x, t=train)
            np.testing.assert_allclose(np.asarray(got), np.asarray(call(layer, x, train)), atol=1e-6)


def test_rotary_length_past_its_tables_raises_under_jit():
    """More positions than the tables hold (Candle: ``cos.narrow(0, index_pos, seq_len)`` fails) with a
    traced offset: the length is a shape, named under jit too (was XLA's 'slice_sizes must be less than
    or equal to operand shape' TypeError, or, with ``inv_freq`` tables, a silent result)."""
    x = Tensor(np.ones((1, 2, 6, 8), np.float32))
    for r in (nn.RotaryEmbedding(8, 4), nn.RotaryEmbedding(8, 4, precompute=False)):
        with pytest.raises(errors.Msg, match=r"6 positions exceed max_position_embeddings 4"):
            jax.jit(lambda x, o, r=r: r.apply_one(x, o))(x, np.int32(0))
    r = nn.RotaryEmbedding(8, 8)
    got = jax.jit(lambda x, o: r.apply_one(x, o))(x, np.int32(1))
    np.testing.assert_allclose(np.asarray(got), np.asarray(r.apply_one(x, 1)), atol=1e-6)
