"""The native f32 product over a weight packed once (candlejax.quantized.native.f32_matmul_packed),
its panel layout, and nn.PackedLinear / nn.pack_linears, against float64 numpy and torch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import candlejax as cj
from candlejax import errors
from candlejax.quantized import native

from helpers import each_native_isa  # isort: skip

torch = pytest.importorskip("torch")

needs_packed = pytest.mark.skipif(
    not (native.available() and native._packed_registered()), reason="native kernel not built on this platform"
)


def test_panel_layout_round_trips_and_pads_with_zeros(rng):
    w = rng.standard_normal((70, 9)).astype(np.float32)
    panels = np.asarray(native.pack_f32_panels(jnp.asarray(w)))
    assert panels.shape == (3, 9, 32)
    np.testing.assert_array_equal(panels[1, 4, 5], w[37, 4])  # panels[p, c, i] = W[32 p + i, c]
    np.testing.assert_array_equal(panels[2, :, 6:], 0.0)  # rows past N
    np.testing.assert_array_equal(np.asarray(native.unpack_f32_panels(panels, 70)), w)
    np.testing.assert_array_equal(np.asarray(jax.jit(native.pack_f32_panels)(w)), panels)  # traced: jax.numpy
    np.testing.assert_array_equal(np.asarray(native.pack_f32_panels(np.asarray(w))), panels)  # a NumPy weight
    with pytest.raises(errors.Error, match=r"do not hold 100 weight rows"):
        native.unpack_f32_panels(panels, 100)
    with pytest.raises(errors.Error, match=r"must be \(N, K\)"):
        native.pack_f32_panels(jnp.ones((2, 3, 4)))


@needs_packed
@pytest.mark.parametrize("m,k,n", [(1, 64, 64), (3, 17, 5), (16, 384, 1536), (17, 257, 130), (48, 96, 4),
                                   (128, 768, 96), (600, 17, 33), (530, 1100, 65), (61, 9000, 70), (77, 1, 40),
                                   (300, 300, 1100)])  # fmt: skip
def test_f32_matmul_packed_matches_float64_on_every_instruction_set(rng, m, k, n):
    """Tails of M (tiles of 12, 4 and 1 rows), of N (the last panel's zero rows, masked stores) and of K;
    one worker or two splitting the panels or the rows; several groups of panels (read ahead) and one
    panel per group (long K)."""
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    panels = native.pack_f32_panels(jnp.asarray(w))
    f = jax.jit(native.f32_matmul_packed, static_argnums=2)
    for isa in each_native_isa():
        y = np.asarray(f(x, panels, n))
        assert y.shape == (m, n) and y.dtype == np.float32
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(), err_msg=isa)


@needs_packed
def test_f32_matmul_packed_rejects_other_shapes_and_dtypes():
    x = jnp.ones((2, 8), jnp.float32)
    panels = native.pack_f32_panels(jnp.ones((40, 8), jnp.float32))
    with pytest.raises(errors.Error, match=r"panels \(ceil\(n / 32\), K, 32\)"):
        native.f32_matmul_packed(x, panels, 70)  # two panels hold 33..64 rows
    with pytest.raises(errors.Error, match=r"panels \(ceil\(n / 32\), K, 32\)"):
        native.f32_matmul_packed(jnp.ones((2, 9), jnp.float32), panels, 40)
    with pytest.raises(errors.Error, match="both f32"):
        native.f32_matmul_packed(x.astype(jnp.bfloat16), panels.astype(jnp.bfloat16), 40)


def _torch_linear(w, b):
    tl = torch.nn.Linear(w.shape[1], w.shape[0]).double()
    with torch.no_grad():
        tl.weight.copy_(torch.tensor(w, dtype=torch.float64))
        tl.bias.copy_(torch.tensor(b, dtype=torch.float64))
    return tl


@pytest.mark.parametrize("shape", [(1, 384), (2, 8, 384), (4, 128, 384), (3, 2, 5, 384)])
def test_packed_linear_matches_torch_with_gradients(rng, shape):
    """Values, and gradients for the input, the panels (the weight's gradient, packed) and the bias."""
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((70, 384)).astype(np.float32) / 20
    b = rng.standard_normal(70).astype(np.float32)
    packed = cj.nn.PackedLinear.from_linear(cj.nn.Linear(cj.Tensor(w), cj.Tensor(b)))
    assert packed.in_dim() == 384 and packed.out_dim() == 70 and packed.panels.shape == (3, 384, 32)
    np.testing.assert_array_equal(packed.weight.numpy(), w)

    def f(m, x):
        return m.forward(cj.Tensor(x)).jax

    if native.packed_available():
        assert native.F32_PACKED_TARGET in jax.jit(f).lower(packed, x).as_text()
    tl = _torch_linear(w, b)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ref = tl(xt)
    np.testing.assert_allclose(np.asarray(jax.jit(f)(packed, x)), ref.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed(cj.Tensor(x)).numpy(), ref.detach().numpy(), rtol=1e-5, atol=1e-5)  # eager
    cot = rng.standard_normal(ref.shape)
    (ref * torch.tensor(cot)).sum().backward()
    gm, gx = jax.jit(jax.grad(lambda m, x: jnp.sum(f(m, x) * cot.astype(np.float32)), argnums=(0, 1)))(packed, x)
    np.testing.assert_allclose(np.asarray(gx), xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(native.unpack_f32_panels(gm.panels.jax, 70)), tl.weight.grad.numpy(),
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    np.testing.assert_allclose(np.asarray(gm.bias.jax), tl.bias.grad.numpy(), rtol=1e-4, atol=1e-4)
    tx = rng.standard_normal(shape).astype(np.float32)
    _, ty = jax.jvp(lambda x: f(packed, x), (x,), (tx,))
    np.testing.assert_allclose(np.asarray(ty), tx.astype(np.float64) @ w.T, rtol=1e-5, atol=1e-5)


def test_packed_linear_keeps_xlas_product_where_the_native_one_does_not_run(rng):
    """bf16 input (error, as Linear), and reduced f32 precision: the unpacked weight in XLA's product."""
    w = rng.standard_normal((40, 64)).astype(np.float32)
    packed = cj.nn.PackedLinear.from_linear(cj.nn.Linear(cj.Tensor(w)))
    x = rng.standard_normal((5, 64)).astype(np.float32)
    with pytest.raises(errors.Error, match="dtype mismatch"):
        packed(cj.Tensor(x).to_dtype(cj.DType.BF16))
    with pytest.raises(errors.Error, match=r"PackedLinear.*\[batch, 64\]"):
        packed(cj.Tensor(np.ones((5, 63), np.float32)))
    cj.set_gemm_reduced_precision_f32(True)
    try:
        text = jax.jit(lambda m, x: m.forward(cj.Tensor(x)).jax).lower(packed, x).as_text()
        y = packed(cj.Tensor(x)).numpy()
    finally:
        cj.set_gemm_reduced_precision_f32(False)
    assert native.F32_PACKED_TARGET not in text
    np.testing.assert_allclose(y, x.astype(np.float64) @ w.T, rtol=1e-4, atol=1e-4)
    with pytest.raises(errors.Error, match="must be f32"):
        cj.nn.PackedLinear.from_linear(cj.nn.Linear(cj.Tensor(w).to_dtype(cj.DType.BF16)))


def test_pack_linears_replaces_every_f32_linear_of_a_model(rng):
    big = cj.nn.Linear(cj.Tensor(rng.standard_normal((160, 128)).astype(np.float32)))
    small = cj.nn.Linear(cj.Tensor(rng.standard_normal((4, 8)).astype(np.float32)))  # under NATIVE_MIN_WEIGHT
    half = cj.nn.Linear(cj.Tensor(rng.standard_normal((160, 128)).astype(np.float32)).to_dtype(cj.DType.BF16))
    norm = cj.nn.LayerNorm(cj.Tensor(np.ones(128, np.float32)), cj.Tensor(np.zeros(128, np.float32)), 1e-5)
    model = cj.nn.seq().add(big).add(cj.nn.Activation.Relu)
    tree = {"model": model, "layers": [big, small, half, norm]}
    out = cj.nn.pack_linears(tree, force=True)
    assert isinstance(out["layers"][0], cj.nn.PackedLinear)
    assert [type(m) for m in out["layers"][1:]] == [cj.nn.Linear, cj.nn.Linear, cj.nn.LayerNorm]
    assert out["layers"][2].weight.jax is half.weight.jax  # other layers keep their arrays
    assert tree["layers"][0] is big  # the input is not modified
    x = cj.Tensor(rng.standard_normal((3, 128)).astype(np.float32))
    np.testing.assert_allclose(out["model"].forward(x).numpy(), model.forward(x).numpy(), rtol=1e-5, atol=1e-5)
    if not native.packed_available():
        assert cj.nn.pack_linears(tree) is tree  # nothing to gain where the packed product does not run
    np.testing.assert_array_equal(out["layers"][0].to_linear().weight.numpy(), big.weight.numpy())


def test_packed_linear_has_second_derivatives(rng):
    w = rng.standard_normal((40, 64)).astype(np.float32) / 8
    packed = cj.nn.PackedLinear.from_linear(cj.nn.Linear(cj.Tensor(w)))
    x = rng.standard_normal((3, 64)).astype(np.float32)

    def f(v):
        return jnp.sum(jnp.tanh(packed.forward(cj.Tensor(v)).jax))

    got = jax.jit(jax.grad(lambda v: jnp.sum(jax.grad(f)(v) ** 2)))(x)
    tw = torch.tensor(w, dtype=torch.float64)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(torch.tanh(tx @ tw.T).sum(), tx, create_graph=True)
    (g**2).sum().backward()
    np.testing.assert_allclose(np.asarray(got), tx.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_packed_linear_rejects_panels_of_another_size():
    with pytest.raises(errors.Error, match=r"do not hold 70 weight rows \(expected \(3, in, 32\)\)"):
        cj.nn.PackedLinear(cj.Tensor(np.zeros((2, 8, 32), np.float32)), 70)
    assert native.panels_hold((3, 8, 32), 70) and not native.panels_hold((3, 8, 16), 70)
