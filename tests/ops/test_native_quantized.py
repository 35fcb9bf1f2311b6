"""The native block-weight kernel (candlejax.quantized.native) against float64 numpy on the dequantised weights."""

import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from candlejax import errors
from candlejax.nn.quantized import QLinear, scan_layers
from candlejax.quantized import GgmlDType, PackedWeight, QMatMul, QTensor, dequantize_np, native

from helpers import each_native_isa  # isort: skip

X86_LINUX = platform.machine().lower() in ("x86_64", "amd64") and sys.platform == "linux"
BLOCK_TYPES = [GgmlDType.Q4_0, GgmlDType.Q4_1, GgmlDType.Q8_0]  # the block types the kernel reads


def test_native_kernel_is_built_here():
    """`pip install` compiles csrc/quantized_matmul.cc on x86-64 Linux; a silent fallback would hide it."""
    if not X86_LINUX:
        pytest.skip("the native kernel is built on x86-64 Linux")
    assert native.available(), "candlejax/quantized/_native*.so is missing: reinstall with `pip install -e .`"
    assert native.isa() in native.ISA_NAMES


needs_native = pytest.mark.skipif(not native.available(), reason="native kernel not built on this platform")


def _weight(rng, dt, n, k, scale=2.0):
    w = (rng.standard_normal((n, k)) * scale).astype(np.float32)
    q = QTensor.quantize(w, dt)
    raw = np.asarray(q.raw).reshape(n, -1)
    return raw, dequantize_np(np.asarray(q.raw), dt, (n, k)).astype(np.float64)


@needs_native
@pytest.mark.parametrize("dt", BLOCK_TYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("m,n,k", [(1, 70, 64), (1, 512, 576), (3, 131, 96), (13, 66, 64), (32, 256, 160)])
def test_native_matmul_matches_float64_on_every_instruction_set(rng, dt, m, n, k):
    raw, wd = _weight(rng, dt, n, k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    ref = x.astype(np.float64) @ wd.T
    f = jax.jit(lambda x, r: native.matmul(x, r, dt))
    for isa in each_native_isa():
        y = np.asarray(f(x, raw))
        assert y.shape == (m, n) and y.dtype == np.float32
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=2e-5 * np.abs(ref).max(), err_msg=isa)


@needs_native
def test_native_matmul_reads_one_layer_of_a_stack_in_place(rng):
    dt = GgmlDType.Q4_1
    parts = [_weight(rng, dt, 96, 64) for _ in range(3)]
    stack = np.stack([p[0] for p in parts])
    x = rng.standard_normal((2, 64)).astype(np.float32)
    f = jax.jit(lambda x, r, i: native.matmul(x, r, dt, i))
    for i, (_, wd) in enumerate(parts):
        np.testing.assert_allclose(np.asarray(f(x, stack, i)), x.astype(np.float64) @ wd.T, rtol=1e-5, atol=1e-4)
    with pytest.raises(Exception, match="layer 5 out of range"):
        np.asarray(f(x, stack, 5))  # traced: the kernel's own check
    with pytest.raises(errors.Error, match=r"layer 3 out of range for a weight of 3 layer\(s\), shape \(3, 96,"):
        native.matmul(x, stack, dt, 3)  # a concrete index: checked before the call
    with pytest.raises(errors.Error, match="layer -1 out of range"):
        native.matmul(x, stack, dt, np.int32(-1))
    with pytest.raises(errors.Error, match="needs layer"):
        native.matmul(x, stack, dt)
    with pytest.raises(errors.UnsupportedDTypeForOp):
        native.matmul(x, stack[0], GgmlDType.Q5_0)
    with pytest.raises(errors.Error, match="unknown instruction set"):
        native.set_isa("sse9")


@needs_native
@pytest.mark.parametrize("dt", BLOCK_TYPES, ids=lambda d: d.name)
def test_qmatmul_holds_q4_weights_packed_and_matches_the_blocked_layout(rng, dt, monkeypatch):
    w = (rng.standard_normal((80, 128)) * 3).astype(np.float32)
    q = QTensor.quantize(w, dt)
    m = QMatMul.from_qtensor(q)
    assert isinstance(m.weight, PackedWeight) and m.is_quantized() and m.shape == (80, 128)
    assert m.weight.storage_size_in_bytes() == np.asarray(q.raw).size  # the file's bytes, ~0.6 per value
    ref_w = dequantize_np(np.asarray(q.raw), dt, q.shape)
    np.testing.assert_array_equal(np.asarray(m.weight.dequantize()), ref_w)
    np.testing.assert_array_equal(np.asarray(m.weight.to_blocked().dequantize()), ref_w)  # the layout for meshes
    np.testing.assert_array_equal(np.asarray(m.embedding(np.array([0, 79, 5]))), ref_w[[0, 79, 5]])
    x = rng.standard_normal((2, 3, 128)).astype(np.float32)
    ref = x.astype(np.float64) @ ref_w.astype(np.float64).T
    y = np.asarray(m.forward(x))
    yj = np.asarray(jax.jit(lambda mm, xx: mm.forward(xx).jax)(m, jnp.asarray(x)))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(yj, ref, rtol=1e-5, atol=1e-4)
    xb = jnp.asarray(x).astype(jnp.bfloat16)
    assert m.forward(xb).jax.dtype == jnp.bfloat16
    # the pure-JAX fallback (no kernel) gives the same values
    monkeypatch.setattr(native, "available", lambda: False)
    blocked = QMatMul.from_qtensor(q)
    assert not isinstance(blocked.weight, PackedWeight)
    np.testing.assert_allclose(np.asarray(blocked.forward(x)), y, rtol=1e-5, atol=1e-4)
    # PackedWeight without kernel (a GPU process): the pure-JAX product, which dequantises the weight
    # (a new input shape: the compiled program for x's shape holds the kernel's product)
    calls = []
    dequantize = PackedWeight.dequantize
    monkeypatch.setattr(PackedWeight, "dequantize", lambda self, *a: calls.append(1) or dequantize(self, *a))
    np.testing.assert_allclose(np.asarray(m.forward(x[:1])), ref[:1], rtol=1e-5, atol=1e-4)
    assert calls, "the product without the kernel did not run"


@needs_native
def test_packed_product_gradient_is_dy_times_w(rng):
    raw, wd = _weight(rng, GgmlDType.Q4_1, 48, 64)
    pw = PackedWeight(jnp.asarray(raw), GgmlDType.Q4_1, (48, 64))
    x = rng.standard_normal((3, 64)).astype(np.float32)
    c = rng.standard_normal((3, 48)).astype(np.float32)
    g = jax.grad(lambda x: jnp.sum(pw.matmul(x) * c))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(g), c.astype(np.float64) @ wd, rtol=1e-5, atol=1e-4)


@needs_native
def test_scan_layers_reads_stacked_packed_weights_without_slicing_them(rng):
    dt, n_layers = GgmlDType.Q4_0, 4
    parts = [_weight(rng, dt, 64, 64, scale=0.1) for _ in range(n_layers)]
    stacked = QLinear(PackedWeight(jnp.asarray(np.stack([p[0] for p in parts])), dt, (64, 64)))
    x = rng.standard_normal((1, 64)).astype(np.float32)

    def run(layers, x):
        return scan_layers(lambda h, layer, i: jnp.tanh(layer(h).jax), x, layers)

    got = np.asarray(jax.jit(run)(stacked, x))
    ref = x.astype(np.float64)
    for _, wd in parts:
        ref = np.tanh(ref @ wd.T)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    hlo = jax.jit(run).lower(stacked, x).compile().as_text()
    assert "u8[4,64,36]" in hlo and "u8[64,36]" not in hlo  # the stack goes to the kernel whole, no per-layer copy


@needs_native
def test_packed_product_forward_mode_and_second_derivatives(rng):
    """jax.jvp / jacfwd / hessian / grad of grad / per-example grads through the native product: the
    derivatives of ``tanh(x @ Wᵀ)`` with W dequantised, in float64."""
    raw, wd = _weight(rng, GgmlDType.Q8_0, 48, 64, scale=0.1)
    pw = PackedWeight(jnp.asarray(raw), GgmlDType.Q8_0, (48, 64))
    x = rng.standard_normal((2, 64)).astype(np.float32)
    t = rng.standard_normal((2, 64)).astype(np.float32)

    def f(x):
        return jnp.sum(jnp.tanh(pw.matmul(x)))

    x64, t64 = x.astype(np.float64), t.astype(np.float64)
    y = np.tanh(x64 @ wd.T)
    sech2 = 1 - y * y
    grad = sech2 @ wd  # (2, 64)
    jvp = np.sum(sech2 * (t64 @ wd.T))
    hvp = (-2 * y * sech2 * (t64 @ wd.T)) @ wd
    _, got_jvp = jax.jvp(f, (jnp.asarray(x),), (jnp.asarray(t),))
    np.testing.assert_allclose(float(got_jvp), jvp, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(jax.jacfwd(f)(jnp.asarray(x))), grad, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.linearize(f, jnp.asarray(x))[1](jnp.asarray(t))), jvp, rtol=1e-4)
    gg = jax.grad(lambda x: jnp.vdot(jax.grad(f)(x), jnp.asarray(t)))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(gg), hvp, rtol=1e-4, atol=1e-5)
    h = np.asarray(jax.hessian(f)(jnp.asarray(x[:1])))  # (1, 64, 1, 64)
    want = np.einsum("o,oi,oj->ij", -2 * y[0] * sech2[0], wd, wd)
    np.testing.assert_allclose(h.reshape(64, 64), want, rtol=1e-4, atol=1e-5)
    per_example = jax.vmap(jax.grad(lambda x: f(x[None])))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(per_example), grad, rtol=1e-4, atol=1e-5)
