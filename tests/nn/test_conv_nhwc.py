"""``Conv2d.forward_nhwc`` (channels-last convolutions: 1x1 products, stacked-tap products, XLA's
convolution, the native few-row product and the native convolution) against torch's convolution on
the NCHW transpose, values and gradients; ``nhwc_kernel`` / ``with_nhwc_kernels`` and their errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import candlejax.nn as nn
from candlejax import Device, DType, Tensor
from candlejax.nn.conv import IM2COL_MAX_POSITIONS, nhwc_kernel, nhwc_kernel_layout, with_nhwc_kernels
from candlejax.quantized import native

torch = pytest.importorskip("torch")
from test_nn_layers import _vb, _x, check  # noqa: E402

#: (c_in, c_out, kernel, stride, padding, dilation, (H, W))
CASES = {
    "1x1": (8, 16, 1, 1, 0, 1, (7, 7)),
    "1x1 stride 2": (8, 16, 1, 2, 0, 1, (9, 8)),
    "3x3 stacked taps": (8, 16, 3, 1, 1, 1, (7, 6)),
    "3x3 stride 2 stacked taps": (8, 16, 3, 2, 1, 1, (9, 9)),
    "3x3 XLA convolution": (4, 8, 3, 1, 1, 1, (20, 20)),
    "7x7 stride 2 stem": (3, 8, 7, 2, 3, 1, (23, 21)),
    "3x3 dilated": (4, 8, 3, 1, 2, 2, (8, 8)),
    "(h, w) padding": (4, 6, 3, 1, (1, 0), 1, (6, 7)),
    "3x3 native rows": (64, 64, 3, 1, 1, 1, (6, 6)),
    "1x1 native rows": (256, 128, 1, 1, 0, 1, (7, 7)),
    # more than 64 output rows: the native convolution where it is built (else XLA's)
    "3x3 native convolution": (16, 40, 3, 1, 1, 1, (12, 11)),
    "3x3 stride 2 dilated native convolution": (16, 24, 3, 2, 2, 2, (17, 15)),
    "5x5 (h, w) padding native convolution": (20, 33, 5, 1, (2, 1), 1, (10, 12)),
}

#: whether maps of more than IM2COL_MAX_POSITIONS positions run the native convolution here
NATIVE_CONV = native.conv_available() and jax.device_count() == 1
#: whether NCHW ``Conv2d.forward`` on such maps takes its kernel gradient from the native library
NATIVE_KERNEL_GRAD = NATIVE_CONV and native.conv_kernel_grad_available()


def _torch_nhwc(m, tx):
    return m(tx.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("bias", [True, False])
def test_forward_nhwc_matches_torch(case, bias):
    cin, cout, k, stride, pad, dil, (h, w) = CASES[case]
    t = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dil, bias=bias)
    cfg = nn.Conv2dConfig(padding=pad, stride=stride, dilation=dil)
    conv = (nn.conv2d if bias else nn.conv2d_no_bias)(cin, cout, k, cfg, _vb(t))
    x = _x(2 if cin < 64 else 1, h, w, cin)
    # values, and gradients of the input and both parameters, through jit
    out = check(conv, t, x, fwd=lambda m, xv: m.forward_nhwc(xv), tfwd=_torch_nhwc, atol=1e-4)
    # the same with the kernel handed in, eager
    kern = nhwc_kernel(conv, (h, w))
    with torch.no_grad():
        ref = _torch_nhwc(t, torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(conv.forward_nhwc(jnp.asarray(x), kern).numpy(), ref, atol=1e-4, rtol=1e-4)
    assert out.shape == ref.shape


def test_kernel_layouts_follow_the_path():
    vb = nn.VarBuilder.from_varmap(nn.VarMap(), DType.F32, Device.Cpu)
    c3 = nn.conv2d(8, 16, 3, nn.Conv2dConfig(padding=1), vb.pp("a"))
    c1 = nn.conv2d(8, 16, 1, nn.Conv2dConfig(), vb.pp("b"))
    side = int(IM2COL_MAX_POSITIONS**0.5)
    assert nhwc_kernel_layout(c1, (56, 56)) is None and nhwc_kernel(c1, (56, 56)) is None
    assert nhwc_kernel_layout(c3, (side, side)) == "OHWI"
    assert nhwc_kernel(c3, (side, side)).shape == (16, 3, 3, 8)
    if NATIVE_CONV:  # the native convolution reads OHWI kernels at every size
        assert nhwc_kernel_layout(c3, (side + 1, side)) == "OHWI"
        assert nhwc_kernel(c3, (side + 1, side)).shape == (16, 3, 3, 8)
    else:
        assert nhwc_kernel_layout(c3, (side + 1, side)) == "HWIO"
        assert nhwc_kernel(c3, (side + 1, side)).shape == (3, 3, 8, 16)
    assert nhwc_kernel(c3, (4, 4)) is nhwc_kernel(c3, (5, 5))  # one copy per weight array and layout


def test_with_nhwc_kernels_and_bad_input():
    vb = nn.VarBuilder.from_varmap(nn.VarMap(), DType.F32, Device.Cpu)
    convs = [
        nn.conv2d(4, 8, 3, nn.Conv2dConfig(padding=1), vb.pp("a")),
        nn.conv2d(8, 8, 1, nn.Conv2dConfig(), vb.pp("b")),
    ]
    x = jnp.asarray(_x(1, 6, 6, 4))
    ks = [nhwc_kernel(convs[0], (6, 6)), nhwc_kernel(convs[1], (6, 6))]

    def run(cs, x):
        return cs[1].forward_nhwc(cs[0].forward_nhwc(x).relu())

    fwd = jax.jit(lambda cs, ks, x: run(with_nhwc_kernels(cs, ks), x).jax)
    np.testing.assert_allclose(np.asarray(fwd(convs, ks, x)), run(convs, x).numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(Exception, match="call forward_nhwc on"):
        with_nhwc_kernels(convs, ks)[0].forward(x)
    with pytest.raises(Exception, match="fewer kernels than Conv2d layers"):
        with_nhwc_kernels(convs, ks[:1])
    if NATIVE_CONV:
        with pytest.raises(Exception, match=r"kernel \(3, 3, 4, 8\) is not the OHWI kernel"):
            convs[0].forward_nhwc(jnp.zeros((1, 20, 20, 4)), jnp.zeros((3, 3, 4, 8)))  # an HWIO kernel
    else:
        with pytest.raises(Exception, match=r"kernel \(8, 3, 3, 4\) is not the HWIO kernel"):
            convs[0].forward_nhwc(jnp.zeros((1, 20, 20, 4)), ks[0])  # a 20x20 map reads HWIO
    with pytest.raises(nn.LayerInputShape, match=r"Conv2d 'a'.*\[batch, H, W, 4\] \(channels last\).*\[1, 4, 6, 6\]"):
        convs[0].forward_nhwc(jnp.zeros((1, 4, 6, 6)))  # NCHW handed in
    unpadded = nn.conv2d(4, 8, 3, nn.Conv2dConfig(), vb.pp("u"))
    with pytest.raises(Exception, match=r"forward_nhwc invalid args the dilated kernel \(3\) is larger than the"):
        unpadded.forward_nhwc(jnp.zeros((1, 6, 2, 4)))  # 2 columns < 3 taps
    with pytest.raises(Exception, match=r"dtype mismatch in conv2d, lhs: BF16, rhs: F32"):
        convs[0].forward_nhwc(jnp.zeros((1, 6, 6, 4), jnp.bfloat16))
    grouped = nn.conv2d(4, 8, 3, nn.Conv2dConfig(groups=2), vb.pp("g"))
    with pytest.raises(Exception, match=r"grouped convolutions.*use forward"):
        grouped.forward_nhwc(x)


@pytest.mark.skipif(not (native.f32_available() and native.isa() == "avx512"), reason="native f32 product not used")
def test_few_rows_run_the_native_product():
    vb = nn.VarBuilder.from_varmap(nn.VarMap(), DType.F32, Device.Cpu)
    conv = nn.conv2d(64, 64, 3, nn.Conv2dConfig(padding=1), vb.pp("a"))
    hlo = jax.jit(lambda x: conv.forward_nhwc(x).jax).lower(jnp.zeros((1, 7, 7, 64))).as_text()
    assert "candlejax_f32_matmul" in hlo
    hlo = jax.jit(lambda x: conv.forward_nhwc(x).jax).lower(jnp.zeros((2, 7, 7, 64))).as_text()  # 98 rows
    assert "candlejax_f32_matmul" not in hlo


@pytest.mark.skipif(not NATIVE_CONV, reason="native f32 convolution not built for this CPU")
def test_larger_maps_run_the_native_convolution():
    vb = nn.VarBuilder.from_varmap(nn.VarMap(), DType.F32, Device.Cpu)
    conv = nn.conv2d(16, 32, 3, nn.Conv2dConfig(padding=1), vb.pp("a"))
    hlo = jax.jit(lambda x: conv.forward_nhwc(x).jax).lower(jnp.zeros((2, 7, 7, 16))).as_text()  # 98 rows
    assert native.F32_CONV_TARGET in hlo
    hlo = jax.jit(lambda x: conv.forward_nhwc(x).jax).lower(jnp.zeros((1, 7, 7, 16))).as_text()  # 49: few rows
    assert native.F32_CONV_TARGET not in hlo


@pytest.mark.parametrize("case", ["3x3 native convolution", "3x3 stacked taps", "3x3 XLA convolution", "1x1"])
def test_forward_nhwc_relu_matches_torch(case):
    """``relu=True`` equals ``forward_nhwc(x).relu()`` on every path (fused in the native convolution),
    values and gradients against torch."""
    cin, cout, k, stride, pad, dil, (h, w) = CASES[case]
    t = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dil)
    conv = nn.conv2d(cin, cout, k, nn.Conv2dConfig(padding=pad, stride=stride, dilation=dil), _vb(t))
    check(conv, t, _x(2, h, w, cin), fwd=lambda m, xv: m.forward_nhwc(xv, relu=True),
          tfwd=lambda m, tx: torch.relu(_torch_nhwc(m, tx)), atol=1e-4)  # fmt: skip


@pytest.mark.skipif(not NATIVE_CONV, reason="native f32 convolution not built for this CPU")
def test_reduced_precision_keeps_xlas_convolution():
    """``set_gemm_reduced_precision_f32(True)`` (products of XLA's default precision): large maps read
    HWIO kernels and run XLA's convolution, as without the native library."""
    import candlejax as cj

    t = torch.nn.Conv2d(16, 32, 3, padding=1)
    conv = nn.conv2d(16, 32, 3, nn.Conv2dConfig(padding=1), _vb(t))
    x = _x(2, 12, 11, 16)
    cj.set_gemm_reduced_precision_f32(True)
    try:
        assert nhwc_kernel_layout(conv, (12, 11)) == "HWIO"
        hlo = jax.jit(lambda x: conv.forward_nhwc(x).jax).lower(jnp.asarray(x)).as_text()
        assert native.F32_CONV_TARGET not in hlo
        y = conv.forward_nhwc(jnp.asarray(x), nhwc_kernel(conv, (12, 11))).numpy()
    finally:
        cj.set_gemm_reduced_precision_f32(False)
    with torch.no_grad():
        np.testing.assert_allclose(y, _torch_nhwc(t, torch.from_numpy(x)).numpy(), atol=1e-4, rtol=1e-4)
    assert nhwc_kernel_layout(conv, (12, 11)) == "OHWI"


#: NCHW ``Conv2d.forward`` cases of more than 64 output positions: (c_in, c_out, kernel, stride,
#: padding, dilation, (H, W), batch); the digits CNN's 16 -> 32 at batch 128 takes its kernel gradient over chunks
NCHW_CASES = {
    "3x3": (16, 40, 3, 1, 1, 1, (12, 11), 2),
    "3x3 stride 2 dilated": (16, 24, 3, 2, 2, 2, (17, 15), 2),
    "5x5 (h, w) padding": (20, 33, 5, 1, (2, 1), 1, (10, 12), 1),
    "one input channel": (1, 16, 3, 1, 1, 1, (8, 8), 4),
    "digits CNN batch 128": (16, 32, 3, 1, 1, 1, (8, 8), 128),
}


@pytest.mark.parametrize("case", list(NCHW_CASES))
def test_nchw_forward_runs_the_native_convolution_with_xlas_derivatives(case):
    """``Conv2d.forward`` on NCHW input: the value from the native convolution (transposed in and
    out) where it is built, the kernel gradient from the native kernel gradient, the other
    derivatives (reverse and forward mode) from XLA's convolutions; against torch."""
    cin, cout, k, stride, pad, dil, (h, w), batch = NCHW_CASES[case]
    t = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dil)
    conv = nn.conv2d(cin, cout, k, nn.Conv2dConfig(padding=pad, stride=stride, dilation=dil), _vb(t))
    x = np.random.default_rng(0).standard_normal((batch, cin, h, w)).astype(np.float32)
    hlo = jax.jit(lambda x: conv.forward(x).jax).lower(jnp.asarray(x)).as_text()
    assert (native.F32_CONV_TARGET in hlo) == NATIVE_CONV
    grad_hlo = jax.jit(jax.grad(lambda m: m.forward(jnp.asarray(x)).jax.sum())).lower(conv).as_text()
    assert (native.F32_CONV_KERNEL_GRAD_TARGET in grad_hlo) == NATIVE_KERNEL_GRAD
    check(conv, t, x, fwd=lambda m, xv: m.forward(xv), atol=1e-4)
    with torch.no_grad():
        ref = t(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(conv.forward(jnp.asarray(x)).numpy(), ref, atol=1e-4, rtol=1e-4)  # eager
    tx = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    _, ty = jax.jvp(lambda v: conv.forward(v).jax, (jnp.asarray(x),), (jnp.asarray(tx),))
    with torch.no_grad():
        tref = torch.nn.functional.conv2d(torch.from_numpy(tx), t.weight, None, stride, pad, dil).numpy()
    np.testing.assert_allclose(np.asarray(ty), tref, atol=1e-4, rtol=1e-4)


def test_nchw_native_kernel_gradient_under_vmap_jvp_and_second_order():
    """The native route's kernel term: per-example gradients (``vmap`` of ``grad``), forward mode in
    the weights, and a Hessian-vector product in the weights, against torch in float64."""
    t = torch.nn.Conv2d(6, 10, 3, padding=1)
    conv = nn.conv2d(6, 10, 3, nn.Conv2dConfig(padding=1), _vb(t))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6, 9, 8)).astype(np.float32)
    v = rng.standard_normal(tuple(t.weight.shape)).astype(np.float32)
    w0 = conv.weight.jax

    def loss(w, xb):
        return jnp.sum(jnp.tanh(conv.replace(weight=Tensor.from_jax(w)).forward(xb).jax) ** 2)

    t64 = t.double()
    tw = t64.weight

    def tloss(xb):
        return (torch.tanh(torch.nn.functional.conv2d(xb, tw, t64.bias, padding=1)) ** 2).sum()

    # per-example gradients
    per = jax.jit(jax.vmap(lambda xi: jax.grad(loss)(w0, xi[None])))(jnp.asarray(x))
    for i in range(len(x)):
        (gi,) = torch.autograd.grad(tloss(torch.tensor(x[i : i + 1], dtype=torch.float64)), tw)
        np.testing.assert_allclose(np.asarray(per[i]), gi.numpy(), rtol=1e-4, atol=1e-4)
    tx = torch.tensor(x, dtype=torch.float64)
    # forward mode in the weights: d loss . v
    _, dl = jax.jvp(lambda w: loss(w, jnp.asarray(x)), (w0,), (jnp.asarray(v),))
    (g,) = torch.autograd.grad(tloss(tx), tw, create_graph=True)
    np.testing.assert_allclose(float(dl), float((g * torch.from_numpy(v).double()).sum().detach()), rtol=1e-4)
    # Hessian-vector product in the weights
    hvp = jax.jit(jax.grad(lambda w: jnp.vdot(jax.grad(loss)(w, jnp.asarray(x)), jnp.asarray(v))))(w0)
    (h,) = torch.autograd.grad((g * torch.from_numpy(v).double()).sum(), tw)
    np.testing.assert_allclose(np.asarray(hvp), h.numpy(), rtol=1e-3, atol=1e-3 * float(h.abs().max()))


def test_nchw_wide_layers_keep_xlas_kernel_gradient():
    """Kernels of more than NATIVE_KERNEL_GRAD_MAX_VALUES values take XLA's kernel gradient."""
    vb = nn.VarBuilder.from_varmap(nn.VarMap(), DType.F32, Device.Cpu)

    def native_grad(conv, shape):
        f = jax.grad(lambda m: m.forward(jnp.ones(shape, jnp.float32)).jax.sum())
        return native.F32_CONV_KERNEL_GRAD_TARGET in jax.jit(f).lower(conv).as_text()

    cfg = nn.Conv2dConfig(padding=1)
    assert native_grad(nn.conv2d(64, 64, 3, cfg, vb.pp("a")), (2, 64, 9, 9)) == NATIVE_KERNEL_GRAD
    assert not native_grad(nn.conv2d(64, 65, 3, cfg, vb.pp("b")), (2, 64, 9, 9))


def test_nchw_forward_keeps_the_tensor_op_elsewhere():
    """Few output positions, 1x1 and patch (stride = kernel) convolutions, groups and bf16 keep the
    Tensor op's convolution."""
    vb = nn.VarBuilder.from_varmap(nn.VarMap(), DType.F32, Device.Cpu)

    def runs_native(conv, shape, dtype=jnp.float32):
        return native.F32_CONV_TARGET in jax.jit(lambda x: conv.forward(x).jax).lower(jnp.zeros(shape, dtype)).as_text()

    c3 = nn.conv2d(16, 32, 3, nn.Conv2dConfig(padding=1), vb.pp("a"))
    assert runs_native(c3, (2, 16, 7, 7)) == NATIVE_CONV  # 98 positions
    assert not runs_native(c3, (1, 16, 8, 8))  # 64
    assert not runs_native(nn.conv2d(16, 32, 1, nn.Conv2dConfig(), vb.pp("b")), (2, 16, 12, 12))
    assert not runs_native(nn.conv2d(16, 32, 4, nn.Conv2dConfig(stride=4), vb.pp("c")), (2, 16, 40, 40))
    assert not runs_native(nn.conv2d(16, 32, 3, nn.Conv2dConfig(groups=2), vb.pp("d")), (2, 16, 12, 12))
    assert not runs_native(c3.to_dtype(DType.BF16), (2, 16, 12, 12), jnp.bfloat16)


def test_nchw_native_convolution_has_second_derivatives():
    """The gradient of a gradient through the native route (its value's own derivatives are XLA's
    convolution too), against torch's double backward."""
    t = torch.nn.Conv2d(3, 5, 3, padding=1)
    conv = nn.conv2d(3, 5, 3, nn.Conv2dConfig(padding=1), _vb(t))
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 8)).astype(np.float32)

    def f(v):
        return jnp.sum(jnp.tanh(conv.forward(v).jax))

    got = jax.jit(jax.grad(lambda v: jnp.sum(jax.grad(f)(v) ** 2)))(jnp.asarray(x))
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    t = t.double()
    (g,) = torch.autograd.grad(torch.tanh(t(tx)).sum(), tx, create_graph=True)
    (g**2).sum().backward()
    np.testing.assert_allclose(np.asarray(got), tx.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_torch_reference_weights_are_the_same_in_every_run(request):
    """torch seeds its global generator randomly in each process, and the references here take their
    weights from ``torch.nn.Conv2d``'s initialiser: the suite seeds it from each test's id, so a run (or
    a ``pytest -n`` worker) compares the same weights every time."""
    import zlib

    assert torch.initial_seed() == zlib.crc32(request.node.nodeid.encode())
    w = torch.nn.Conv2d(2, 3, 3).weight.detach().numpy()
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    np.testing.assert_array_equal(torch.nn.Conv2d(2, 3, 3).weight.detach().numpy(), w)
