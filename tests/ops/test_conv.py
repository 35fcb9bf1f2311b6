"""Convolution, pooling and resizing against torch.nn.functional (float64 references), with
gradients, eagerly and under jax.jit."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import candlejax as cj
from candlejax import errors

torch = pytest.importorskip("torch")
F = torch.nn.functional


def T(a) -> cj.Tensor:  # noqa: N802
    return cj.Tensor._wrap(jnp.asarray(a))


def check(cj_fn, torch_fn, arrays, rng, atol=2e-5, rtol=2e-4, grad=True, jit=False):
    """Forward (eager, and jitted when ``jit``) and gradients (under jax.jit) of every input against
    torch in float64."""
    tensors = [T(a) for a in arrays]
    out = cj_fn(*tensors)
    t_in = [torch.tensor(a.astype(np.float64), requires_grad=True) for a in arrays]
    ref = torch_fn(*t_in)
    assert out.shape == tuple(ref.shape)
    assert out.dtype == tensors[0].dtype
    np.testing.assert_allclose(np.asarray(out), ref.detach().numpy(), atol=atol, rtol=rtol)
    if jit:
        jitted = jax.jit(cj_fn)(*tensors)
        assert isinstance(jitted, cj.Tensor)
        np.testing.assert_allclose(np.asarray(jitted), ref.detach().numpy(), atol=atol, rtol=rtol)
    if not grad:
        return
    cot = rng.standard_normal(ref.shape).astype(np.float32)
    (ref * torch.tensor(cot.astype(np.float64))).sum().backward()

    def loss(*arrs):
        return jnp.sum(cj_fn(*[cj.Tensor._wrap(a) for a in arrs]).jax * cot)

    grads = jax.jit(jax.grad(loss, argnums=tuple(range(len(arrays)))))(*[jnp.asarray(a) for a in arrays])
    for g, t in zip(grads, t_in):
        np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), atol=10 * atol, rtol=10 * rtol)


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# --- conv1d / conv2d -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "p,s,d,g", [(0, 1, 1, 1), (2, 2, 1, 1), (1, 3, 2, 1), (3, 2, 3, 4)]
)
def test_conv1d(rng, p, s, d, g):
    x, k = randn(rng, 2, 8, 17), randn(rng, 12, 8 // g, 3)
    check(
        lambda x, k: x.conv1d(k, p, s, d, g),
        lambda x, k: F.conv1d(x, k, padding=p, stride=s, dilation=d, groups=g),
        [x, k],
        rng,
    )


@pytest.mark.parametrize(
    "p,s,d,g",
    [(0, 1, 1, 1), (1, 2, 1, 2), ((1, 2), (2, 1), (1, 2), 1), (0, 2, 1, 4)],
)
def test_conv2d(rng, p, s, d, g):
    x, k = randn(rng, 2, 4, 9, 10), randn(rng, 8, 4 // g, 3, 2)
    check(
        lambda x, k: x.conv2d(k, padding=p, stride=s, dilation=d, groups=g),
        lambda x, k: F.conv2d(x, k, padding=p, stride=s, dilation=d, groups=g),
        [x, k],
        rng,
    )


def test_conv_defaults_match_candle_python_signature(rng):
    x, k = randn(rng, 1, 3, 6, 6), randn(rng, 2, 3, 3, 3)
    np.testing.assert_allclose(
        np.asarray(T(x).conv2d(T(k))), F.conv2d(torch.tensor(x), torch.tensor(k)).numpy(), atol=1e-5
    )
    y = T(x).conv2d_with_algo(T(k), 1, 1, 1, 1, None)
    assert y.shape == (1, 2, 6, 6)
    # candle::conv::CudnnFwdAlgo: a hint, the result is the plain convolution's
    ref = F.conv2d(torch.tensor(x), torch.tensor(k), padding=1).numpy()
    algo = cj.conv.CudnnFwdAlgo.ImplicitGemm
    np.testing.assert_allclose(np.asarray(T(x).conv2d_with_algo(T(k), 1, 1, 1, 1, algo)), ref, atol=1e-5)
    conv = cj.nn.conv2d(3, 2, 3, cj.nn.Conv2dConfig(padding=1, cudnn_fwd_algo=cj.conv.CudnnFwdAlgo.Winograd),
                        cj.nn.VarBuilder.from_tensors({"weight": T(k), "bias": T(np.zeros(2, np.float32))}))
    np.testing.assert_allclose(np.asarray(conv.forward(T(x))), ref, atol=1e-5)
    assert [a.name for a in cj.conv.CudnnFwdAlgo][-1] == "Count" and len(cj.conv.CudnnFwdAlgo) == 9


@pytest.mark.parametrize("nd,ks,p,s,d", [(2, (3, 3), 1, 1, 1), (2, (3, 2), (1, 0), 2, 1), (2, (3, 3), 2, 1, 2),
                                          (1, (3,), 1, 1, 1), (1, (5,), 2, 2, 1)])  # fmt: skip
def test_depthwise_conv_matches_torch(rng, nd, ks, p, s, d):
    """One filter per channel (groups == channels): the shifted-product path on the CPU."""
    x, k = randn(rng, 2, 6, *((9, 10)[:nd])), randn(rng, 6, 1, *ks)
    if nd == 2:
        ours, ref = (lambda x, k: x.conv2d(k, padding=p, stride=s, dilation=d, groups=6)), F.conv2d
    else:
        ours, ref = (lambda x, k: x.conv1d(k, padding=p, stride=s, dilation=d, groups=6)), F.conv1d
    check(ours, lambda x, k: ref(x, k, padding=p, stride=s, dilation=d, groups=6), [x, k], rng, jit=True)


@pytest.mark.parametrize("nd,s", [(2, 1), (2, 2), (2, (2, 1)), (1, 1), (1, 3)])
def test_pointwise_conv_matches_torch(rng, nd, s):
    """1x1 kernels (no padding, one group): the channel-product path on the CPU."""
    x, k = randn(rng, 2, 5, *((9, 10)[:nd])), randn(rng, 7, 5, *((1, 1)[:nd]))
    if nd == 2:
        ours, ref = (lambda x, k: x.conv2d(k, stride=s)), F.conv2d
    else:
        ours, ref = (lambda x, k: x.conv1d(k, stride=s)), F.conv1d
    check(ours, lambda x, k: ref(x, k, stride=s), [x, k], rng, jit=True)


@pytest.mark.parametrize("size,ks", [((8, 8), (4, 4)), ((9, 11), (3, 2)), ((7, 7), (7, 7))])
def test_patch_conv_matches_torch(rng, size, ks):
    """Stride = kernel, no padding (a ViT's patch embedding; rows/columns that do not fill a patch
    are dropped): one product per patch on XLA:CPU, the convolution's values and gradients."""
    from candlejax.tensor.conv import is_patch_conv

    assert is_patch_conv(ks, (0, 0), ks, (1, 1), 1) and not is_patch_conv(ks, (1, 1), ks, (1, 1), 1)
    x, k = randn(rng, 2, 3, *size), randn(rng, 5, 3, *ks)
    check(lambda x, k: x.conv2d(k, 0, ks, 1, 1), lambda x, k: F.conv2d(x, k, stride=ks), [x, k], rng, jit=True)
    jaxpr = str(jax.make_jaxpr(lambda x, k: T(x).conv2d(T(k), 0, ks, 1, 1).jax)(x, k))
    assert "dot_general" in jaxpr and "conv_general_dilated" not in jaxpr


@pytest.mark.parametrize("ks,p,s,d", [((3, 3), 1, 1, 1), ((3, 2), (1, 0), 2, 1), ((3, 3), 2, 1, 2), ((1, 1), 0, 2, 1)])
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_nn_ops_depthwise_conv2d_matches_torch(rng, ks, p, s, d, layout):
    """``nn.ops.depthwise_conv2d``: channels-last input and output (no transposes) or NCHW."""
    from candlejax.nn import ops

    x, k = randn(rng, 2, 9, 10, 6), randn(rng, 6, 1, *ks)
    if layout == "nchw":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def ref(x, k):
        xt = x.permute(0, 3, 1, 2) if layout == "nhwc" else x
        y = F.conv2d(xt, k, padding=p, stride=s, dilation=d, groups=6)
        return y.permute(0, 2, 3, 1) if layout == "nhwc" else y

    check(lambda x, k: ops.depthwise_conv2d(x, k, p, s, d, layout=layout), ref, [x, k], rng, jit=True)


def test_nn_ops_depthwise_conv2d_errors(rng):
    from candlejax.nn import ops

    x, k = T(randn(rng, 1, 5, 5, 4)), T(randn(rng, 4, 1, 3, 3))
    with pytest.raises(errors.Error, match=r"kernel must be \(4, 1, KH, KW\)"):
        ops.depthwise_conv2d(x, T(randn(rng, 3, 1, 3, 3)), layout="nhwc")
    with pytest.raises(errors.Error, match="layout must be"):
        ops.depthwise_conv2d(x, k, layout="nwhc")
    with pytest.raises(errors.Error, match="larger than the padded input"):
        ops.depthwise_conv2d(T(randn(rng, 1, 2, 2, 4)), k, layout="nhwc")
    with pytest.raises(errors.Error, match="dtype mismatch"):
        ops.depthwise_conv2d(x, k.to_dtype(cj.DType.BF16), 1, layout="nhwc")
    with pytest.raises(errors.Error, match="stride must be >= 1"):
        ops.depthwise_conv2d(x, k, 1, 0, layout="nhwc")
    with pytest.raises(errors.Error, match="input must be 4-D"):
        ops.depthwise_conv2d(T(randn(rng, 5, 5, 4)), k, layout="nhwc")


def test_depthwise_conv_low_precision_accumulates_in_f32(rng):
    x, k = randn(rng, 1, 8, 12, 12), randn(rng, 8, 1, 3, 3)
    ref = F.conv2d(torch.tensor(x, dtype=torch.float64), torch.tensor(k, dtype=torch.float64), padding=1, groups=8)
    out = T(x).to_dtype(cj.DType.BF16).conv2d(T(k).to_dtype(cj.DType.BF16), padding=1, groups=8)
    assert out.dtype == cj.DType.BF16
    np.testing.assert_allclose(np.asarray(out.to_dtype(cj.DType.F32)), ref.numpy(), atol=0.1, rtol=0.02)


# --- transposed convolutions ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "p,op,s,d,g",
    [(0, 0, 1, 1, 1), (1, 1, 2, 1, 1), (2, 0, 3, 2, 1), (1, 1, 2, 2, 2), (0, 2, 3, 1, 4), (5, 0, 1, 3, 1)],
)
def test_conv_transpose1d(rng, p, op, s, d, g):
    x, k = randn(rng, 2, 8, 7), randn(rng, 8, 6 // g if g < 4 else 3, 3)
    check(
        lambda x, k: x.conv_transpose1d(k, p, op, s, d, g),
        lambda x, k: F.conv_transpose1d(x, k, padding=p, output_padding=op, stride=s, dilation=d, groups=g),
        [x, k],
        rng,
    )


@pytest.mark.parametrize(
    "p,op,s,d,g",
    [(0, 0, 1, 1, 1), (1, 1, 2, 1, 1), (1, 0, 2, 2, 1), ((1, 0), (1, 0), (2, 1), 1, 1), (1, 0, 2, 1, 2)],
)
def test_conv_transpose2d(rng, p, op, s, d, g):
    x, k = randn(rng, 2, 4, 5, 6), randn(rng, 4, 6 // g, 3, 2)
    check(
        lambda x, k: x.conv_transpose2d(k, p, op, s, d, g),
        lambda x, k: F.conv_transpose2d(x, k, padding=p, output_padding=op, stride=s, dilation=d, groups=g),
        [x, k],
        rng,
    )


@pytest.mark.parametrize("nd,ks,g", [(2, (2, 2), 1), (2, (3, 2), 2), (1, (3,), 2), (1, (1,), 1)])
def test_conv_transpose_stride_equal_to_kernel(rng, nd, ks, g):
    """The product path (stride == kernel, no padding / dilation: SAM's 2x2 upsampling) against torch."""
    x, k = randn(rng, 2, 4, *((5, 6)[:nd])), randn(rng, 4, 6 // g, *ks)
    stride = ks if nd == 2 else ks[0]
    if nd == 2:
        ours, ref = (lambda x, k: x.conv_transpose2d(k, stride=stride, groups=g)), F.conv_transpose2d
    else:
        ours, ref = (lambda x, k: x.conv_transpose1d(k, stride=stride, groups=g)), F.conv_transpose1d
    check(ours, lambda x, k: ref(x, k, stride=stride, groups=g), [x, k], rng)


# --- kernel gradients over batch chunks (XLA:CPU) -----------------------------------------------------
@pytest.mark.parametrize("case", ["plain", "stride-pad", "groups", "1d"])
def test_large_convolutions_take_kernel_gradients_over_batch_chunks(rng, case):
    """Convolutions large enough for the chunked kernel gradient: values, input and kernel
    gradients against torch in float64, forward mode too, and the chunk actually used."""
    from candlejax.tensor import conv as conv_mod

    groups, stride, pad = (2, 1, 1) if case == "groups" else (1, 2, 0) if case == "stride-pad" else (1, 1, 1)
    if case == "1d":
        x, k = randn(rng, 32, 16, 512), randn(rng, 32, 16, 5)
        ours, ref = (lambda x, k: x.conv1d(k, 2, 1)), (lambda x, k: F.conv1d(x, k, padding=2))
        params = conv_mod._ConvParams((1,), ((2, 2),), (1,), ("NCH", "OIH", "NCH"), 1)
    else:
        x, k = randn(rng, 32, 16, 32, 32), randn(rng, 32, 16 // groups, 3, 3)
        ours = lambda x, k: x.conv2d(k, pad, stride, 1, groups)  # noqa: E731
        ref = lambda x, k: F.conv2d(x, k, stride=stride, padding=pad, groups=groups)  # noqa: E731
        params = conv_mod._ConvParams((stride,) * 2, ((pad, pad),) * 2, (1, 1), ("NCHW", "OIHW", "NCHW"), groups)
    chunk = conv_mod._weight_grad_chunk(x, k, params)
    assert chunk == 32 if case == "1d" else 1 < chunk < 32  # 1D convolutions keep XLA's form
    check(ours, ref, [x, k], rng, atol=1e-4, rtol=1e-4)
    # forward mode (jvp) agrees with the reverse-mode gradient
    cot = rng.standard_normal(np.asarray(ours(T(x), T(k))).shape).astype(np.float32)
    tx, tk = randn(rng, *x.shape), randn(rng, *k.shape)

    def f(a, b):
        return jnp.sum(ours(cj.Tensor._wrap(a), cj.Tensor._wrap(b)).jax * cot)

    gx, gk = jax.grad(f, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(k))
    _, fwd = jax.jvp(f, (jnp.asarray(x), jnp.asarray(k)), (jnp.asarray(tx), jnp.asarray(tk)))
    want = float(np.sum(np.asarray(gx, np.float64) * tx) + np.sum(np.asarray(gk, np.float64) * tk))
    np.testing.assert_allclose(float(fwd), want, rtol=1e-3)
    # only the kernel's gradient (the input a constant), as in training
    gk_only = jax.grad(lambda b: f(jnp.asarray(x), b))(jnp.asarray(k))
    np.testing.assert_allclose(np.asarray(gk_only), np.asarray(gk), rtol=1e-5, atol=1e-4)


def test_weight_grad_chunk_choice():
    from candlejax.tensor import conv as conv_mod

    dn = ("NCHW", "OIHW", "NCHW")
    p = conv_mod._ConvParams((1, 1), ((1, 1), (1, 1)), (1, 1), dn, 1)
    small = conv_mod._weight_grad_chunk(np.zeros((256, 1, 8, 8)), np.zeros((16, 1, 3, 3)), p)
    assert small == 256  # a small kernel gradient keeps the one convolution
    assert conv_mod._weight_grad_chunk(np.zeros((256, 16, 8, 8)), np.zeros((32, 16, 3, 3)), p) == 64
    assert conv_mod._weight_grad_chunk(np.zeros((64, 64, 32, 32)), np.zeros((64, 64, 3, 3)), p) == 4
    big = conv_mod._weight_grad_chunk(np.zeros((32, 64, 56, 56)), np.zeros((64, 64, 3, 3)), p)
    assert big == 2  # the smallest chunks with at most WEIGHT_GRAD_MAX_CHUNKS convolutions
    assert conv_mod._weight_grad_chunk(np.zeros((32, 256, 14, 14)), np.zeros((256, 256, 3, 3)), p) == 16
    assert conv_mod._weight_grad_chunk(np.zeros((32, 512, 7, 7)), np.zeros((512, 512, 3, 3)), p) == 32
    assert conv_mod._weight_grad_chunk(np.zeros((7, 64, 56, 56)), np.zeros((64, 64, 3, 3)), p) in (1, 7)


# --- pooling ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("k,s", [(2, None), ((2, 3), None), (3, 1), ((3, 2), (1, 2))])
def test_pools(rng, k, s):
    x = randn(rng, 2, 3, 8, 9)
    if s is None:
        check(lambda x: x.avg_pool2d(k), lambda x: F.avg_pool2d(x, k), [x], rng)
        check(lambda x: x.max_pool2d(k), lambda x: F.max_pool2d(x, k), [x], rng)
    else:
        check(lambda x: x.avg_pool2d_with_stride(k, s), lambda x: F.avg_pool2d(x, k, s), [x], rng)
        check(lambda x: x.max_pool2d_with_stride(k, s), lambda x: F.max_pool2d(x, k, s), [x], rng)


@pytest.mark.parametrize("k", [2, (2, 3)])
def test_max_pool_gradient_goes_to_the_first_maximum_of_tied_windows(rng, k):
    """Stride = kernel pools take a max over each window's values; with ties (ReLU zeros, rounded
    values) the gradient still goes to the first maximum only, as PyTorch's; forward mode works."""
    x = np.maximum(np.round(rng.standard_normal((2, 3, 8, 9)) * 2) / 2, 0).astype(np.float32)
    c = rng.standard_normal(F.max_pool2d(torch.from_numpy(x), k).shape).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    (F.max_pool2d(xt, k) * torch.from_numpy(c)).sum().backward()

    def f(a):
        return (T(a).max_pool2d(k).jax * c).sum()

    np.testing.assert_array_equal(np.asarray(jax.grad(f)(jnp.asarray(x))), xt.grad.numpy())
    tangent = rng.standard_normal(x.shape).astype(np.float32)
    _, forward = jax.jvp(f, (jnp.asarray(x),), (jnp.asarray(tangent),))
    np.testing.assert_allclose(float(forward), float((xt.grad.numpy() * tangent).sum()), rtol=1e-5)


@pytest.mark.parametrize("k", [2, (3, 2)])
def test_max_pool_second_derivative_matches_torch(rng, k):
    """The stride = kernel pool's derivative is itself differentiable (grad of a function of the
    gradient, and the Hessian-vector product), in float64 against PyTorch's double backward."""
    x = rng.standard_normal((2, 2, 6, 6))

    def g(a):
        return jax.grad(lambda b: (T(b).max_pool2d(k).sqr() * 3).sum_all().jax)(a)

    with jax.enable_x64():
        ours = jax.grad(lambda a: (g(a) ** 3).sum())(jnp.asarray(x))
    xt = torch.from_numpy(x).requires_grad_(True)
    (gt,) = torch.autograd.grad((F.max_pool2d(xt, k) ** 2 * 3).sum(), xt, create_graph=True)
    (want,) = torch.autograd.grad((gt**3).sum(), xt)
    np.testing.assert_allclose(np.asarray(ours), want.numpy(), rtol=1e-12)
    assert np.abs(want.numpy()).max() > 1


def test_max_pool_value_under_differentiation(rng):
    """Differentiated, the pool's value comes from the reduction that finds each window's first
    maximum: it must equal the plain forward's and PyTorch's, NaN and infinite windows included."""
    x = rng.standard_normal((2, 3, 6, 8)).astype(np.float32)
    x[0, 0, 0, 1] = np.nan
    x[0, 1, 2:4, 2:4] = -np.inf
    x[1, 2, 0, 0], x[1, 2, 1, 1] = np.inf, np.nan
    ref = F.max_pool2d(torch.from_numpy(x), 2).numpy()
    tangent = jnp.ones(x.shape, jnp.float32)
    value, _ = jax.jvp(lambda a: T(a).max_pool2d(2).jax, (jnp.asarray(x),), (tangent,))
    np.testing.assert_array_equal(np.asarray(value), ref)
    np.testing.assert_array_equal(np.asarray(T(x).max_pool2d(2)), ref)


def test_pools_match_candle_pyo3(rng):
    candle = pytest.importorskip("candle")
    x = randn(rng, 1, 2, 6, 7)
    ct = candle.Tensor(x[0].tolist()).reshape((1, 2, 6, 7))  # candle-pyo3 takes <= 3 nesting levels

    def values(t):
        return np.array(t.reshape(t.shape[1:]).values())[None]

    ref_max = values(candle.functional.max_pool2d(ct, 2, stride=2))
    ref_avg = values(candle.functional.avg_pool2d(ct, 3, stride=1))
    np.testing.assert_allclose(np.asarray(T(x).max_pool2d(2)), ref_max, atol=1e-6)
    np.testing.assert_allclose(np.asarray(T(x).avg_pool2d_with_stride(3, 1)), ref_avg, atol=1e-6)


def test_max_pool_integers():
    x = np.arange(2 * 16, dtype=np.uint32).reshape(1, 2, 4, 4)
    y = T(x).max_pool2d(2)
    assert y.dtype == cj.DType.U32
    np.testing.assert_array_equal(np.asarray(y), F.max_pool2d(torch.tensor(x.astype(np.float32)), 2).numpy())


# --- resizing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 5, 14, 21])
def test_upsample_nearest1d(rng, n):
    x = randn(rng, 2, 3, 7)
    check(lambda x: x.upsample_nearest1d(n), lambda x: F.interpolate(x, size=n, mode="nearest"), [x], rng)
    np.testing.assert_array_equal(np.asarray(T(x).interpolate1d(n)), np.asarray(T(x).upsample_nearest1d(n)))


@pytest.mark.parametrize("h,w", [(8, 10), (3, 2), (12, 7)])
def test_upsample_nearest2d(rng, h, w):
    x = randn(rng, 2, 3, 4, 5)
    check(lambda x: x.upsample_nearest2d(h, w), lambda x: F.interpolate(x, size=(h, w), mode="nearest"), [x], rng)


@pytest.mark.parametrize("h,w", [(8, 10), (3, 2), (13, 1)])
@pytest.mark.parametrize("align", [False, True])
def test_upsample_bilinear2d(rng, h, w, align):
    x = randn(rng, 2, 3, 4, 5)
    check(
        lambda x: x.upsample_bilinear2d(h, w, align),
        lambda x: F.interpolate(x, size=(h, w), mode="bilinear", align_corners=align),
        [x],
        rng,
    )


@pytest.mark.parametrize("sh,sw", [(2.0, 2.0), (1.5, 2.7), (0.5, 0.75)])
def test_upsample_bilinear2d_with_scale(rng, sh, sw):
    x = randn(rng, 1, 2, 6, 8)
    check(
        lambda x: x.upsample_bilinear2d_with_scale(sh, sw, False),
        lambda x: F.interpolate(x, scale_factor=(sh, sw), mode="bilinear", align_corners=False),
        [x],
        rng,
    )
    t = T(x)
    assert t.upsample_bilinear2d_with_scale(1.0, 1.0) is t


def _candle_bilinear_rows(src: int, dst: int, scale: float) -> np.ndarray:
    """Candle's CPU kernel (``align_corners=False``, scale given): ``(dst, src)`` interpolation weights."""
    m = np.zeros((dst, src))
    for i in range(dst):
        pos = max((i + 0.5) / scale - 0.5, 0.0)
        i0 = int(np.floor(pos))
        i1 = min(i0 + 1, src - 1)
        m[i, i0] += 1 - (pos - i0)
        m[i, i1] += pos - i0
    return m


def test_upsample_bilinear2d_with_scale_resamples_an_unchanged_dim_as_candle(rng):
    # H: 6 -> floor(6 * 1.1) = 6 keeps its size but Candle still reads rows at (i + 0.5) / 1.1 - 0.5
    # (PyTorch's CPU kernel copies such a dim: docs/differences/conv-io.md)
    x = randn(rng, 1, 2, 6, 8)
    want = np.einsum("hH,nchw,wW->ncHW", _candle_bilinear_rows(6, 6, 1.1).T, x, _candle_bilinear_rows(8, 16, 2.0).T)
    got = np.asarray(T(x).upsample_bilinear2d_with_scale(1.1, 2.0, False))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_all_ops_under_jit(rng):
    """Every op inside one jax.jit, Tensors passed as pytrees, against the eager results."""
    x1, k1, x2, k2 = randn(rng, 1, 4, 9), randn(rng, 4, 2, 3), randn(rng, 1, 4, 8, 9), randn(rng, 4, 2, 3, 2)

    def f(x1, k1, x2, k2):
        return [
            x1.conv1d(k1, 1, 2, 1, 2), x1.conv_transpose1d(k1, 1, 1, 2), x2.conv2d(k2, 1, 2, 1, 2),
            x2.conv_transpose2d(k2, 1, 0, 2), x2.avg_pool2d_with_stride(3, 2), x2.max_pool2d((2, 3)),
            x1.interpolate1d(13), x2.interpolate2d(5, 11), x2.upsample_bilinear2d(5, 11, True),
            x2.upsample_bilinear2d_with_scale(1.5, 0.5),
        ]

    args = [T(a) for a in (x1, k1, x2, k2)]
    for e, j in zip(f(*args), jax.jit(f)(*args)):
        assert isinstance(j, cj.Tensor) and j.shape == e.shape
        np.testing.assert_allclose(np.asarray(j), np.asarray(e), atol=1e-5, rtol=1e-5)


# --- dtypes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_dtype_preserved(rng, dt):
    x = T(jnp.asarray(randn(rng, 1, 2, 6, 6), dt))
    k = T(jnp.asarray(randn(rng, 2, 2, 3, 3), dt))
    k_t = T(jnp.asarray(randn(rng, 2, 2, 3), dt))
    x1 = T(jnp.asarray(randn(rng, 1, 2, 6), dt))
    outs = [
        x.conv2d(k, 1), x.conv_transpose2d(k, 1), x1.conv1d(k_t), x1.conv_transpose1d(k_t, 0, 1, 2),
        x.avg_pool2d(2), x.max_pool2d(2), x.upsample_nearest2d(9, 9), x.upsample_bilinear2d(9, 4),
        x1.upsample_nearest1d(3),
    ]
    for o in outs:
        assert o.jax.dtype == dt


def test_bf16_close_to_f32(rng):
    x, k = randn(rng, 1, 4, 8, 8), randn(rng, 3, 4, 3, 3)
    ref = np.asarray(T(x).conv2d(T(k), 1))
    got = T(jnp.asarray(x, jnp.bfloat16)).conv2d(T(jnp.asarray(k, jnp.bfloat16)), 1)
    np.testing.assert_allclose(np.asarray(got.jax.astype(jnp.float32)), ref, atol=0.15, rtol=0.05)


@pytest.mark.parametrize("dt, tdt", [(jnp.bfloat16, "bfloat16"), (jnp.float16, "float16")])
def test_half_avg_pool_sums_in_f32(rng, dt, tdt):
    """A bf16/f16 window is summed in f32 and rounded once, as PyTorch: summed in bf16, a 16x16 window
    of values in [1, 2) was 0.21 off (17 units in the last place), PyTorch 0.004."""
    x = (rng.random((1, 4, 16, 16)) + 1).astype(np.float32)
    xt = torch.from_numpy(x).to(getattr(torch, tdt))
    for k, s in ((16, 16), (8, 1)):
        want = F.avg_pool2d(xt.float(), k, s).to(xt.dtype).float().numpy()
        got = T(jnp.asarray(x, dt)).avg_pool2d_with_stride(k, s)
        assert got.jax.dtype == dt
        ulp = 2.0**-7 if dt == jnp.bfloat16 else 2.0**-10  # one unit in the last place on [1, 2)
        np.testing.assert_allclose(np.asarray(got.jax.astype(jnp.float32)), want, rtol=0, atol=ulp)


# --- errors ------------------------------------------------------------------------------------------
def test_conv1d_errors(rng):
    x = T(randn(rng, 1, 4, 10))
    with pytest.raises(errors.Conv1dInvalidArgs, match=r"conv1d invalid args the number of in-channels on the input"
                       r" doesn't match the kernel size: inp: \[1, 4, 10\], k: \[2, 3, 3\], pad: 0, stride: 1"):
        x.conv1d(T(randn(rng, 2, 3, 3)))
    with pytest.raises(errors.Conv1dInvalidArgs, match="larger than the padded input"):
        x.conv1d(T(randn(rng, 2, 4, 11)))
    with pytest.raises(errors.UnexpectedNumberOfDims, match=r"expected: 3, got: 4"):
        T(randn(rng, 1, 1, 4, 10)).conv1d(T(randn(rng, 2, 4, 3)))
    with pytest.raises(errors.DTypeMismatchBinaryOp, match="dtype mismatch in conv1d, lhs: F32, rhs: BF16"):
        x.conv1d(T(jnp.zeros((2, 4, 3), jnp.bfloat16)))
    with pytest.raises(errors.Msg, match="stride must be >= 1"):
        x.conv1d(T(randn(rng, 2, 4, 3)), stride=0)
    with pytest.raises(errors.Conv1dInvalidArgs, match="not divisible by groups"):
        x.conv1d(T(randn(rng, 3, 2, 3)), groups=2)


def test_conv2d_errors(rng):
    x = T(randn(rng, 1, 3, 5, 5))
    with pytest.raises(errors.Msg, match=r"in_channel mismatch between input \(3, groups 1\) and kernel \(4\)"):
        x.conv2d(T(randn(rng, 2, 4, 3, 3)))
    with pytest.raises(errors.Conv1dInvalidArgs, match="conv2d invalid args"):
        x.conv2d(T(randn(rng, 2, 3, 7, 3)))
    with pytest.raises(errors.Msg, match=r"in_channel mismatch between input \(3\) and kernel \(4\)"):
        x.conv_transpose2d(T(randn(rng, 4, 2, 3, 3)))
    with pytest.raises(errors.Msg, match="in_channel 3 is not divisible by the number of groups"):
        T(randn(rng, 1, 3, 5)).conv_transpose1d(T(randn(rng, 3, 2, 3)), groups=2)
    with pytest.raises(errors.Msg, match="output_padding"):
        x.conv_transpose2d(T(randn(rng, 3, 2, 3, 3)), output_padding=1)
    with pytest.raises(errors.Msg, match="expected a Tensor kernel"):
        x.conv2d(np.zeros((2, 3, 3, 3)))


def test_pool_errors(rng):
    x = T(randn(rng, 1, 1, 2, 2))
    with pytest.raises(errors.Msg, match=r"kernel-size \(3, 3\) is larger than the input size 2,2"):
        x.max_pool2d(3)
    with pytest.raises(errors.Msg, match=r"kernel-size \(1, 3\) is larger than the input size 2,2"):
        x.avg_pool2d((1, 3))
    with pytest.raises(errors.UnsupportedDTypeForOp, match="avg_pool2d"):
        T(np.ones((1, 1, 4, 4), np.uint8)).avg_pool2d(2)
    with pytest.raises(errors.UnexpectedNumberOfDims):
        T(randn(rng, 2, 2, 2)).max_pool2d(2)
    with pytest.raises(errors.UnexpectedNumberOfDims):
        T(randn(rng, 2, 2, 2)).upsample_nearest2d(4, 4)
    # a bool or a float is not a size (True was read as 1)
    for k, shown in ((True, "True (bool)"), (1.5, "1.5 (float)")):
        msg = re.escape(f"max_pool2d: kernel-size must be an int, got {shown}")
        with pytest.raises(errors.NotAnInteger, match=msg):
            T(randn(rng, 1, 1, 4, 4)).max_pool2d(k)
    assert T(randn(rng, 1, 1, 4, 4)).max_pool2d(np.int64(2)).shape == (1, 1, 2, 2)


def test_resizing_an_empty_dim_is_refused():
    """Resizing a 0-length spatial dim to a non-empty one has no source to read: PyTorch refuses it
    ("Input and output sizes should be greater than 0"), Candle's nearest kernel underflows
    ``src - 1``; a candlejax error naming the op, not jnp.take's IndexError."""
    for name, x, args in (
        ("interpolate1d", np.ones((1, 2, 0), np.float32), (4,)),
        ("upsample_nearest1d", np.ones((1, 2, 0), np.float32), (4,)),
        ("interpolate2d", np.ones((1, 2, 0, 3), np.float32), (4, 4)),
        ("upsample_nearest2d", np.ones((1, 2, 3, 0), np.float32), (4, 4)),
        ("upsample_bilinear2d", np.ones((1, 2, 0, 3), np.float32), (4, 4)),
        ("upsample_bilinear2d", np.ones((1, 2, 3, 0), np.float32), (4, 4, True)),
    ):
        with pytest.raises(errors.Msg, match=r"cannot resize an empty input \[1, 2, [0-9, ]*\] "):
            getattr(T(x), name)(*args)
        with pytest.raises(RuntimeError):
            F.interpolate(torch.from_numpy(x), size=args[0] if x.ndim == 3 else args[:2], mode="nearest")
    # an empty batch or channel dim is fine: nothing to resize
    assert T(np.ones((0, 2, 3, 3), np.float32)).upsample_bilinear2d(5, 4).shape == (0, 2, 5, 4)
    assert T(np.ones((1, 0, 3), np.float32)).interpolate1d(5).shape == (1, 0, 5)
    with pytest.raises(errors.Msg, match="scale factors must be numbers, got 'a', 2"):
        T(np.ones((1, 1, 3, 3), np.float32)).upsample_bilinear2d_with_scale("a", 2)


def test_errors_raised_under_jit(rng):
    x, k = T(randn(rng, 1, 3, 5, 5)), T(randn(rng, 2, 4, 3, 3))
    with pytest.raises(errors.Msg, match="in_channel mismatch"):
        jax.jit(lambda x, k: x.conv2d(k))(x, k)


@pytest.mark.parametrize("nd", [1, 2])
def test_conv_transpose_padding_wider_than_the_dilated_kernel_grads(nd):
    """padding < output_padding with a 1-tap dilated kernel makes the equivalent convolution's low pad
    negative; XLA:CPU's grouped f32 convolution got the kernel gradient of such a pad wrong, so the
    output is cropped instead. Values and both gradients against torch."""
    rng = np.random.default_rng(0)
    size = (8,) * nd
    x = rng.standard_normal((1, 2, *size)).astype(np.float32)
    k = rng.standard_normal((2, 1, *(1,) * nd)).astype(np.float32)
    args = dict(padding=1, output_padding=2, stride=1, dilation=3, groups=2)
    op = "conv_transpose1d" if nd == 1 else "conv_transpose2d"
    xt, kt = torch.tensor(x, requires_grad=True), torch.tensor(k, requires_grad=True)
    yt = getattr(torch.nn.functional, op)(xt, kt, None, args["stride"], args["padding"], args["output_padding"],
                                         args["groups"], args["dilation"])  # fmt: skip
    cot = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    (yt * torch.tensor(cot)).sum().backward()

    def f(a, b):
        y = getattr(cj.Tensor._wrap(a), op)(cj.Tensor._wrap(b), args["padding"], args["output_padding"], args["stride"],
                                         args["dilation"], args["groups"]).jax  # fmt: skip
        return (y * cot).sum(), y

    (_, y), (gx, gk) = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(x, k)
    np.testing.assert_allclose(np.asarray(y), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gx), xt.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gk), kt.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_zero_size_kernel_window_is_refused():
    x = cj.Tensor(np.ones((1, 2, 5, 5), np.float32))
    with pytest.raises(errors.Error, match=r"conv2d: the kernel \[2, 2, 0, 3\] has a zero-size window"):
        x.conv2d(cj.Tensor(np.zeros((2, 2, 0, 3), np.float32)))
    with pytest.raises(errors.Error, match=r"conv_transpose1d: the kernel .* zero-size window"):
        cj.Tensor(np.ones((1, 2, 5), np.float32)).conv_transpose1d(cj.Tensor(np.zeros((2, 2, 0), np.float32)))
