"""The native f32 product (candlejax.quantized.native.f32_matmul: few-row and blocked paths) and
nn.Linear's use of it, against float64 numpy and torch."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import candlejax as cj
from candlejax import errors
from candlejax.quantized import native

from helpers import each_native_isa  # isort: skip

torch = pytest.importorskip("torch")

linear_mod = importlib.import_module("candlejax.nn.linear")  # (candlejax.nn.linear is also a function)
needs_f32 = pytest.mark.skipif(not native.f32_available(), reason="native kernel not built on this platform")


@needs_f32
@pytest.mark.parametrize("m,k,n", [(1, 64, 64), (3, 17, 5), (5, 100, 37), (16, 384, 1536), (17, 257, 130),
                                   (48, 96, 4),
                                   # blocked (more than 48 rows): one worker; workers split the weight
                                   # panels; they split the rows; one panel per packed group (long K)
                                   (49, 33, 70), (100, 300, 130), (600, 17, 33), (530, 1100, 65), (61, 9000, 70),
                                   (77, 1, 40)])  # fmt: skip
def test_f32_matmul_matches_float64_on_every_instruction_set(rng, m, k, n):
    """Tails of K (masked loads), of N (groups of four weight rows; 32-row panels, masked stores) and
    of M (blocks of four rows; tiles of 12, 4 and 1 rows)."""
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    f = jax.jit(native.f32_matmul)
    for isa in each_native_isa():
        y = np.asarray(f(x, w))
        assert y.shape == (m, n) and y.dtype == np.float32
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(), err_msg=isa)


@needs_f32
@pytest.mark.parametrize("m,k,n", [(49, 3, 40), (50, 13, 45), (51, 64, 48), (52, 7, 57), (53, 31, 96), (59, 16, 8),
                                   (301, 100, 700), (64, 1, 33)])  # fmt: skip
def test_f32_blocked_product_tails_on_avx2_match_the_portable_loop(rng, m, k, n):
    """The AVX2 tiles (6 rows x 16 columns): 1 to 5 rows left after the tiles of six, a panel whose
    second half has no column (N % 32 <= 16) or a few, K of any length; several groups of panels.
    Equal to the portable loop up to rounding, and both to float64."""
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    panels = native.pack_f32_panels(jnp.asarray(w))
    plain, packed = jax.jit(native.f32_matmul), jax.jit(native.f32_matmul_packed, static_argnums=2)
    got = {}
    for isa in each_native_isa():
        got[isa] = np.asarray(plain(x, w)), np.asarray(packed(x, panels, n))
    if "avx2" not in got:
        pytest.skip("this CPU has no AVX2")
    tol = {"rtol": 1e-5, "atol": 1e-5 * np.abs(ref).max()}
    for y in (*got["avx2"], *got["portable"]):
        np.testing.assert_allclose(y, ref, **tol)
    for y, p in zip(got["avx2"], got["portable"], strict=True):
        np.testing.assert_allclose(y, p, **tol)


@needs_f32
def test_f32_matmul_rejects_other_shapes_and_dtypes():
    x = jnp.ones((2, 8), jnp.float32)
    with pytest.raises(errors.Error, match=r"x must be \(M, K\) and w \(N, K\)"):
        native.f32_matmul(x, jnp.ones((3, 9), jnp.float32))
    with pytest.raises(errors.Error, match="both f32"):
        native.f32_matmul(x.astype(jnp.bfloat16), jnp.ones((3, 8), jnp.bfloat16))


def _calls_native(fn, *args) -> bool:
    return native.F32_TARGET in str(jax.jit(fn).lower(*args).as_text())


@needs_f32
@pytest.mark.parametrize("shape", [(1, 384), (2, 8, 384), (48, 384), (4, 128, 384)])
def test_linear_with_few_or_many_rows_uses_the_native_product_and_matches_torch(rng, shape):
    """Values and gradients (XLA's products in the backward pass) against torch.nn.Linear."""
    if native.isa() != "avx512":
        pytest.skip("nn.Linear takes the native product on AVX-512 CPUs only")
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((96, 384)).astype(np.float32) / 20
    b = rng.standard_normal(96).astype(np.float32)
    lin = cj.nn.Linear(cj.Tensor(w), cj.Tensor(b))

    def f(m, x):
        return m.forward(cj.Tensor(x)).jax

    assert _calls_native(f, lin, x)
    tl = torch.nn.Linear(384, 96).double()
    with torch.no_grad():
        tl.weight.copy_(torch.tensor(w, dtype=torch.float64))
        tl.bias.copy_(torch.tensor(b, dtype=torch.float64))
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ref = tl(xt)
    np.testing.assert_allclose(np.asarray(jax.jit(f)(lin, x)), ref.detach().numpy(), rtol=1e-5, atol=1e-5)
    cot = rng.standard_normal(ref.shape)
    (ref * torch.tensor(cot)).sum().backward()
    gm, gx = jax.jit(jax.grad(lambda m, x: jnp.sum(f(m, x) * cot.astype(np.float32)), argnums=(0, 1)))(lin, x)
    np.testing.assert_allclose(np.asarray(gx), xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(gm.weight.jax), tl.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(gm.bias.jax), tl.bias.grad.numpy(), rtol=1e-4, atol=1e-4)


@needs_f32
def test_linear_with_few_rows_has_forward_mode_derivatives(rng):
    """jax.jvp / jacfwd (and a Hessian) through the native product: XLA's products as its tangent map."""
    if native.isa() != "avx512":
        pytest.skip("nn.Linear takes the native product on AVX-512 CPUs only")
    w = rng.standard_normal((80, 384)).astype(np.float32) / 20
    lin = cj.nn.Linear(cj.Tensor(w))
    x = rng.standard_normal((2, 384)).astype(np.float32)
    tx = rng.standard_normal((2, 384)).astype(np.float32)

    def f(x):
        return lin.forward(cj.Tensor(x)).jax

    assert _calls_native(f, x)
    y, ty = jax.jit(lambda x, t: jax.jvp(f, (x,), (t,)))(x, tx)
    np.testing.assert_allclose(np.asarray(y), x.astype(np.float64) @ w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ty), tx.astype(np.float64) @ w.T, rtol=1e-5, atol=1e-5)
    jac = jax.jit(jax.jacfwd(f))(x)
    assert jac.shape == (2, 80, 2, 384)
    np.testing.assert_allclose(np.asarray(jac[1, :, 1, :]), w, rtol=1e-6)
    hess = jax.hessian(lambda x: jnp.sum(jnp.tanh(f(x))))(x)
    assert hess.shape == (2, 384, 2, 384) and np.isfinite(np.asarray(hess)).all()


@needs_f32
def test_linear_keeps_xlas_product_between_the_bounds_for_small_weights_and_other_dtypes(rng):
    lin = cj.nn.Linear(cj.Tensor(rng.standard_normal((96, 384)).astype(np.float32)))

    def f(m, x):
        return m.forward(cj.Tensor(x)).jax

    assert not _calls_native(f, lin, np.zeros((linear_mod.NATIVE_MAX_ROWS + 1, 384), np.float32))
    assert not _calls_native(f, lin, np.zeros((linear_mod.NATIVE_BLOCKED_MIN_ROWS - 1, 384), np.float32))
    small = cj.nn.Linear(cj.Tensor(rng.standard_normal((8, 16)).astype(np.float32)))
    assert not _calls_native(f, small, np.zeros((2, 16), np.float32))
    half = cj.nn.Linear(cj.Tensor(rng.standard_normal((96, 384)).astype(np.float32)).to_dtype(cj.DType.BF16))
    assert not _calls_native(f, half, np.zeros((2, 384), jnp.bfloat16))


needs_conv = pytest.mark.skipif(not native.conv_available(), reason="native f32 convolution not built for this CPU")


def _vector_isas():
    """Each vector path of the convolution kernels this CPU has (AVX2, then AVX-512), capped with
    ``native.set_isa``: an AVX-512 host checks the AVX2 code too."""
    for isa in each_native_isa():
        if isa != "portable":
            yield isa


def _conv_nhwc_f64(xp, w4, stride, dilation):
    """Reference: float64 convolution of a padded NHWC input with an (O, kh, kw, C) kernel."""
    b, h, w, _ = xp.shape
    o, kh, kw, _ = w4.shape
    (sh, sw), (dh, dw) = stride, dilation
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((b, ho, wo, o))
    for r in range(kh):
        for q in range(kw):
            patch = xp[:, r * dh : r * dh + sh * (ho - 1) + 1 : sh, q * dw : q * dw + sw * (wo - 1) + 1 : sw, :]
            y += patch.astype(np.float64) @ w4[:, r, q, :].astype(np.float64).T
    return y


@needs_conv
@pytest.mark.parametrize("b,h,w,c,o,k,stride,dilation,padding,bias,relu", [
    (1, 9, 9, 16, 64, (3, 3), (1, 1), (1, 1), (0, 0), False, False),  # one worker (small)
    (2, 30, 28, 32, 70, (3, 3), (1, 1), (1, 1), (1, 1), True, True),  # panel tail (70 = 2 x 32 + 6), tiles 12/4/1
    (1, 40, 37, 3, 8, (7, 7), (2, 2), (1, 1), (3, 3), True, False),  # a stem: 3 channels, 49 taps, stride 2
    (3, 17, 19, 20, 33, (3, 5), (2, 1), (2, 3), (2, 0), False, True),  # rectangular kernel, mixed geometry
    (1, 70, 66, 64, 128, (3, 3), (1, 1), (1, 1), (1, 1), True, True),  # input over the packed-bytes budget
    (1, 4, 5, 8, 40, (3, 3), (1, 1), (1, 1), (4, 4), True, False),  # padding wider than the kernel's reach
    (1, 5, 11, 6, 20, (3, 3), (1, 1), (1, 1), (1, 1), True, True),  # AVX2: 55 rows (tiles of 6, 1 left), 16 + 4 columns
])  # fmt: skip
def test_f32_conv_nhwc_matches_float64(rng, b, h, w, c, o, k, stride, dilation, padding, bias, relu):
    """Taps in the padding read zeros; bias and ReLU are applied before the store."""
    x = rng.standard_normal((b, h, w, c)).astype(np.float32)
    w4 = rng.standard_normal((o, *k, c)).astype(np.float32)
    bv = rng.standard_normal(o).astype(np.float32) * 3 if bias else None
    xp = np.pad(x, ((0, 0), (padding[0], padding[0]), (padding[1], padding[1]), (0, 0)))
    ref = _conv_nhwc_f64(xp, w4, stride, dilation) + (0 if bv is None else bv.astype(np.float64))
    ref = np.maximum(ref, 0) if relu else ref
    f = jax.jit(native.f32_conv_nhwc, static_argnums=(2, 3, 4, 5, 7))
    for isa in _vector_isas():
        y = np.asarray(f(x, w4.reshape(o, -1), k, stride, dilation, padding, bv, relu))
        assert y.shape == ref.shape and y.dtype == np.float32
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(), err_msg=isa)


@needs_conv
def test_f32_conv_nhwc_rejects_bad_shapes():
    x = jnp.ones((1, 5, 5, 4), jnp.float32)
    with pytest.raises(errors.Error, match=r"kernel \(O, 3\*3\*C\)"):
        native.f32_conv_nhwc(x, jnp.ones((8, 35), jnp.float32), (3, 3))
    with pytest.raises(errors.Error, match="all f32"):
        native.f32_conv_nhwc(x.astype(jnp.bfloat16), jnp.ones((8, 36), jnp.bfloat16), (3, 3))
    with pytest.raises(errors.Error, match="does not fit the padded input"):
        native.f32_conv_nhwc(x, jnp.ones((8, 4 * 36), jnp.float32), (6, 6))
    with pytest.raises(errors.Error, match=r"bias \(7,\)"):
        native.f32_conv_nhwc(x, jnp.ones((8, 36), jnp.float32), (3, 3), bias=jnp.ones(7, jnp.float32))


needs_kernel_grad = pytest.mark.skipif(not native.conv_kernel_grad_available(),
                                       reason="native f32 convolution kernel gradient not built for this CPU")


@needs_kernel_grad
@pytest.mark.parametrize("b,h,w,c,o,k,stride,dilation,padding", [
    (3, 8, 8, 16, 32, (3, 3), (1, 1), (1, 1), (1, 1)),  # the digits CNN's second layer: 8 + 8 channels, 32 outputs
    (2, 9, 7, 5, 19, (3, 2), (2, 1), (1, 2), (1, 0)),  # channel and output tails, mixed geometry
    (4, 8, 8, 1, 16, (3, 3), (1, 1), (1, 1), (1, 1)),  # one input channel
    (1, 20, 21, 20, 70, (3, 3), (1, 1), (1, 1), (1, 1)),  # 70 = 2 x 32 + 6 outputs, rows in several blocks
    (2, 12, 11, 3, 8, (7, 7), (2, 2), (1, 1), (3, 3)),  # a stem: 49 taps, stride 2
    (1, 4, 5, 8, 40, (3, 3), (1, 1), (1, 1), (4, 4)),  # padding wider than the kernel's reach
    (9, 6, 6, 24, 48, (1, 1), (1, 1), (1, 1), (0, 0)),  # 1x1, more images than chunks
])  # fmt: skip
def test_f32_conv_kernel_grad_nhwc_matches_float64(rng, b, h, w, c, o, k, stride, dilation, padding):
    """The kernel gradient of the channels-last convolution: taps in the padding contribute nothing."""
    x = rng.standard_normal((b, h, w, c)).astype(np.float32)
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = k, stride, dilation, padding
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    dy = rng.standard_normal((b, ho, wo, o)).astype(np.float32)
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0))).astype(np.float64)
    ref = np.zeros((o, kh, kw, c))
    for r in range(kh):
        for q in range(kw):
            patch = xp[:, r * dh : r * dh + sh * (ho - 1) + 1 : sh, q * dw : q * dw + sw * (wo - 1) + 1 : sw, :]
            ref[:, r, q, :] = np.einsum("bhwo,bhwc->oc", dy.astype(np.float64), patch)
    f = jax.jit(native.f32_conv_kernel_grad_nhwc, static_argnums=(2, 3, 4, 5))
    for isa in _vector_isas():
        g = np.asarray(f(x, dy, k, stride, dilation, padding))
        assert g.shape == (o, kh * kw * c) and g.dtype == np.float32
        np.testing.assert_allclose(g, ref.reshape(o, -1), rtol=1e-5, atol=1e-5 * np.abs(ref).max(), err_msg=isa)


@needs_kernel_grad
def test_f32_conv_kernel_grad_nhwc_rejects_bad_shapes():
    x = jnp.ones((2, 5, 5, 4), jnp.float32)
    with pytest.raises(errors.Error, match=r"dy \(2, 5, 5, 8\) must be \(B, 3, 3, O\)"):
        native.f32_conv_kernel_grad_nhwc(x, jnp.ones((2, 5, 5, 8), jnp.float32), (3, 3))
    with pytest.raises(errors.Error, match="both f32"):
        native.f32_conv_kernel_grad_nhwc(x, jnp.ones((2, 3, 3, 8), jnp.bfloat16), (3, 3))
    with pytest.raises(errors.Error, match="x must be"):
        native.f32_conv_kernel_grad_nhwc(x, jnp.ones((3, 3, 3, 8), jnp.float32), (3, 3))


needs_attention = pytest.mark.skipif(not native.attention_available(), reason="native f32 attention not built")


def _attention_f64(q, k, v, bias, scale, layout):
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    if layout == "bshd":
        q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    s = q @ k.transpose(0, 1, 3, 2) * scale
    if bias is not None:
        s = s + bias.astype(np.float64)[:, None, None, :]
    e = np.exp(s - s.max(-1, keepdims=True))
    o = (e / e.sum(-1, keepdims=True)) @ v
    return o.transpose(0, 2, 1, 3) if layout == "bshd" else o


@needs_attention
@pytest.mark.parametrize("b,h,s,skv,d,dv,layout,bias", [
    (2, 3, 17, 17, 32, 32, "bhsd", None),  # query tiles of 12, 4 and 1
    (2, 3, 130, 129, 64, 64, "bshd", "per batch"),  # key panels with a tail, (B, S, H, D) in place
    (1, 2, 5, 40, 8, 33, "bhsd", "shared"),  # value columns over one panel (33 = 32 + 1)
    (3, 4, 1, 70, 16, 16, "bshd", "per batch"),  # one query (a decode step against a cache)
])  # fmt: skip
def test_f32_attention_matches_float64(rng, b, h, s, skv, d, dv, layout, bias):
    """Padding positions masked with finfo.min (as ops.padding_mask makes them) get no weight."""
    shape = (lambda n, dd: (b, n, h, dd)) if layout == "bshd" else (lambda n, dd: (b, h, n, dd))
    q, k = rng.standard_normal(shape(s, d)).astype(np.float32), rng.standard_normal(shape(skv, d)).astype(np.float32)
    v = rng.standard_normal(shape(skv, dv)).astype(np.float32)
    rows = {None: 0, "shared": 1, "per batch": b}[bias]
    bv = np.where(rng.random((rows, skv)) < 0.25, np.finfo(np.float32).min, 0).astype(np.float32) if rows else None
    ref = _attention_f64(q, k, v, bv, 1 / np.sqrt(d), layout)
    f = jax.jit(native.f32_attention, static_argnums=(4, 5))
    for isa in _vector_isas():  # query tiles of 12 (AVX-512) or 6 (AVX2) rows and their tails
        y = np.asarray(f(q, k, v, bv, None, layout))
        assert y.shape == ref.shape
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=2e-6, err_msg=isa)


@needs_attention
@pytest.mark.parametrize("b,h,s,skv,d,dv,bias", [
    (1, 6, 1, 1500, 64, 64, None),  # a decode step over keys cached transposed: panels read in place
    (2, 3, 5, 70, 48, 40, "per batch"),  # key and value panels with tails (packed), in-place value panel
    (1, 2, 12, 64, 64, 96, "shared"),  # one full pass of 12 query rows, three in-place value panels
    (2, 2, 13, 33, 16, 16, None),  # more than one pass: every panel packed
])  # fmt: skip
def test_f32_attention_takes_transposed_keys(rng, b, h, s, skv, d, dv, bias):
    """Keys ``(B, H, D, Skv)`` (``keys_transposed=True``) give the attention of the same keys stored
    ``(B, H, Skv, D)``, against float64."""
    q, k = rng.standard_normal((b, h, s, d)).astype(np.float32), rng.standard_normal((b, h, skv, d)).astype(np.float32)
    v = rng.standard_normal((b, h, skv, dv)).astype(np.float32)
    rows = {None: 0, "shared": 1, "per batch": b}[bias]
    bv = np.where(rng.random((rows, skv)) < 0.25, np.finfo(np.float32).min, 0).astype(np.float32) if rows else None
    kt = np.ascontiguousarray(k.transpose(0, 1, 3, 2))
    f = jax.jit(lambda q, kt, v: native.f32_attention(q, kt, v, bv, keys_transposed=True))
    for isa in _vector_isas():
        y = np.asarray(f(q, kt, v))
        np.testing.assert_allclose(y, _attention_f64(q, k, v, bv, 1 / np.sqrt(d), "bhsd"), rtol=1e-5, atol=2e-6,
                                   err_msg=isa)  # fmt: skip
    with pytest.raises(errors.Error, match=r"bshd, keys transposed"):
        native.f32_attention(q, kt, v, layout="bshd", keys_transposed=True)
    with pytest.raises(errors.Error, match=r"must be f32 with matching"):
        native.f32_attention(q, k, v, keys_transposed=True) if d != skv else native.f32_attention(q, kt[..., 1:], v)


@needs_attention
@pytest.mark.parametrize("mask", [None, "bool keys", "float padding"])
def test_sdpa_reads_transposed_keys_in_place(rng, mask):
    """``ops.sdpa(q, kᵀ, v, keys_transposed=True)`` runs the native attention on the keys as given (no
    transpose in the program), equals ``sdpa_slow`` on ``k``, gradients included; key-only bool masks
    (a decoding cache's ``attn_mask(1)``) take the native path too."""
    b, h, d, skv = 2, 3, 16, 40
    q = rng.standard_normal((b, h, 1, d)).astype(np.float32)
    k, v = (rng.standard_normal((b, h, skv, d)).astype(np.float32) for _ in range(2))
    kt = np.ascontiguousarray(k.transpose(0, 1, 3, 2))
    keep = rng.random((b, 1, 1, skv)) > 0.3
    m = {None: None, "bool keys": keep, "float padding": np.where(keep, 0, -1e9).astype(np.float32)}[mask]

    def f(q, kt, v):
        return cj.nn.ops.sdpa(q, kt, v, m, keys_transposed=True).jax

    text = jax.jit(f).lower(q, kt, v).as_text()
    assert native.F32_ATTENTION_TARGET in text and "transpose" not in text
    ref = cj.nn.ops.sdpa_slow(q, k, v, m).numpy()
    np.testing.assert_allclose(np.asarray(jax.jit(f)(q, kt, v)), ref, rtol=1e-5, atol=2e-6)
    slow_t = cj.nn.ops.sdpa_slow(q, kt, v, m, keys_transposed=True).numpy()
    np.testing.assert_allclose(slow_t, ref, rtol=1e-6, atol=1e-6)
    cot = rng.standard_normal(ref.shape).astype(np.float32)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * cot), argnums=(0, 1, 2)))(q, kt, v)
    want = jax.grad(lambda q, k, v: jnp.sum(cj.nn.ops.sdpa_slow(q, k, v, m).jax * cot), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(np.asarray(grads[1]), np.asarray(want[1]).transpose(0, 1, 3, 2), rtol=1e-4, atol=1e-5)
    for g, w in ((grads[0], want[0]), (grads[2], want[2])):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)


def test_sdpa_transposed_keys_on_xlas_path_and_errors(rng):
    """Where the native attention does not apply (causal positions, grouped heads), transposed keys
    give XLA's attention of the same keys; a transposed k with ``kv_layout="bshd"`` or of the wrong
    shape is refused with the shapes named."""
    q = rng.standard_normal((1, 4, 3, 8)).astype(np.float32)
    k, v = rng.standard_normal((1, 2, 7, 8)).astype(np.float32), rng.standard_normal((1, 2, 7, 8)).astype(np.float32)
    kt = np.ascontiguousarray(k.transpose(0, 1, 3, 2))
    sdpa = cj.nn.ops.sdpa
    for kw in ({"do_causal": True}, {}, {"mask": np.tril(np.ones((3, 7), bool), 4)}):
        np.testing.assert_allclose(sdpa(q, kt, v, keys_transposed=True, **kw).numpy(),
                                   cj.nn.ops.sdpa_slow(q, k, v, **kw).numpy(), rtol=1e-5, atol=2e-6)  # fmt: skip
    with pytest.raises(errors.Error, match=r"keys_transposed=True takes k as \(batch, heads, head_dim, kv_len\)"):
        sdpa(q, kt, v, kv_layout="bshd", keys_transposed=True)
    with pytest.raises(errors.Error, match=r"incompatible shapes"):
        sdpa(q, kt[:, :, :4], v, keys_transposed=True)


@needs_attention
@pytest.mark.parametrize("b,h,s,skv,d,dv,bias", [
    (1, 3, 3, 160, 64, 64, "shared"),  # SmolLM2's decode step: 3 query heads per key head as rows
    (2, 2, 1, 37, 16, 24, "per batch"),  # panel tails, a batch of two
    (1, 1, 7, 33, 8, 8, None),  # one head: no size-1 dimension dropped from the stack
])  # fmt: skip
def test_f32_attention_reads_a_layer_of_stacked_buffers(rng, b, h, s, skv, d, dv, bias):
    """``layer=`` reads layer ``l`` of ``(L, B, H, Skv, D)`` buffers in place: the attention of
    ``k[l]``, ``v[l]``, for a concrete or a traced layer, on every vector path."""
    n_layers = 3
    q = rng.standard_normal((b, h, s, d)).astype(np.float32)
    k = rng.standard_normal((n_layers, b, h, skv, d)).astype(np.float32)
    v = rng.standard_normal((n_layers, b, h, skv, dv)).astype(np.float32)
    rows = {None: 0, "shared": 1, "per batch": b}[bias]
    bv = np.where(rng.random((rows, skv)) < 0.25, -np.inf, 0).astype(np.float32) if rows else None
    if rows:
        bv[:, 0] = 0  # every row sees a key
    traced = jax.jit(lambda q, k, v, layer: native.f32_attention(q, k, v, bv, layer=layer))
    for isa in _vector_isas():
        for layer in range(n_layers):
            ref = _attention_f64(q, k[layer], v[layer], bv, 1 / np.sqrt(d), "bhsd")
            np.testing.assert_allclose(np.asarray(traced(q, k, v, np.int32(layer))), ref, rtol=1e-5, atol=2e-6,
                                       err_msg=f"{isa}, layer {layer}")  # fmt: skip
            y = np.asarray(native.f32_attention(q, k, v, bv, layer=layer))
            np.testing.assert_allclose(y, ref, rtol=1e-5, atol=2e-6, err_msg=f"{isa}, layer {layer}")


@needs_attention
@pytest.mark.parametrize("layout,keys_t,stacked", [("bhsd", False, False), ("bshd", False, False),
                                                   ("bhsd", True, False), ("bhsd", False, True)])  # fmt: skip
def test_f32_attention_does_not_read_keys_past_the_last_unmasked_one(rng, layout, keys_t, stacked):
    """A decoding cache's slots past the position (-inf in every bias row) are not read: NaN there
    changes nothing, and the result is float64's attention of the slots before them. Rows of a
    per-batch bias that see fewer keys keep their own mask."""
    b, h, s, skv, d, n_layers, layer = 2, 3, 3, 300, 16, 2, 1
    shape = (lambda n: (b, n, h, d)) if layout == "bshd" else (lambda n: (b, h, n, d))
    q = rng.standard_normal(shape(s)).astype(np.float32)
    k = rng.standard_normal((n_layers, *shape(skv))).astype(np.float32)
    v = rng.standard_normal((n_layers, *shape(skv))).astype(np.float32)
    bias = np.zeros((b, skv), np.float32)
    bias[0, 41:] = -np.inf  # batch 0 sees 41 keys, batch 1 sees 70
    bias[1, 70:] = -np.inf
    k_read, v_read = k.copy(), v.copy()
    (k_read if layout == "bhsd" else k_read.swapaxes(2, 3))[:, :, :, 70:] = np.nan
    (v_read if layout == "bhsd" else v_read.swapaxes(2, 3))[:, :, :, 70:] = np.nan
    ref = _attention_f64(q, k[layer], v[layer], bias, 1 / np.sqrt(d), layout)
    for isa in _vector_isas():
        if stacked:
            y = native.f32_attention(q, k_read, v_read, bias, layer=layer)
        elif keys_t:
            y = native.f32_attention(q, k_read[layer].swapaxes(2, 3), v_read[layer], bias, keys_transposed=True)
        else:
            y = native.f32_attention(q, k_read[layer], v_read[layer], bias, None, layout)
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=2e-6, err_msg=isa)


@needs_attention
def test_f32_attention_rejects_a_layer_out_of_range_or_unstacked_buffers():
    q = jnp.ones((1, 2, 1, 8), jnp.float32)
    k = jnp.ones((3, 1, 2, 5, 8), jnp.float32)
    with pytest.raises(errors.Error, match="layer 3 out of range for 3 stacked layers"):
        native.f32_attention(q, k, k, layer=3)
    with pytest.raises(errors.Error, match="layer -1 out of range"):
        native.f32_attention(q, k, k, layer=-1)
    with pytest.raises(Exception, match="layer 5 out of range for 3 stacked layers"):  # checked by the kernel
        jax.jit(lambda layer: native.f32_attention(q, k, k, layer=layer))(np.int32(5)).block_until_ready()
    with pytest.raises(errors.Error, match=r"must be stacked \(L, B, H, Skv, D\)"):
        native.f32_attention(q, k[0], k[0], layer=0)
    with pytest.raises(errors.Error, match="must be stacked"):
        native.f32_attention(q, k, k, layout="bshd", layer=0)


@needs_attention
def test_f32_attention_rejects_bad_shapes():
    q = jnp.ones((1, 2, 4, 8), jnp.float32)
    with pytest.raises(errors.Error, match=r"must be f32 with matching"):
        native.f32_attention(q, jnp.ones((1, 3, 4, 8), jnp.float32), jnp.ones((1, 3, 4, 8), jnp.float32))
    with pytest.raises(errors.Error, match=r"bias \(2, 4\)"):
        native.f32_attention(q, q, q, jnp.zeros((2, 4), jnp.float32))


@needs_attention
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("mask", [None, "padding", "shared"])
def test_sdpa_runs_the_native_attention_with_values_and_gradients(rng, layout, mask):
    """ops.sdpa takes the native path for plain attention (float padding masks included) and equals
    its reference ops.sdpa_slow, gradients too (XLA's form as the derivative)."""
    b, h, s, d = 2, 3, 20, 16
    shape = (b, s, h, d) if layout == "bshd" else (b, h, s, d)
    q, k, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    m = None
    if mask is not None:
        keep = rng.random((b if mask == "padding" else 1, s)) > 0.3
        m = np.where(keep, 0, np.finfo(np.float32).min).astype(np.float32)[:, None, None, :]

    def f(q, k, v):
        return cj.nn.ops.sdpa(q, k, v, m, layout=layout).jax

    assert native.F32_ATTENTION_TARGET in jax.jit(f).lower(q, k, v).as_text()
    ref = cj.nn.ops.sdpa_slow(q, k, v, m, layout=layout).numpy()
    np.testing.assert_allclose(np.asarray(jax.jit(f)(q, k, v)), ref, rtol=1e-5, atol=2e-6)
    cot = rng.standard_normal(ref.shape).astype(np.float32)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * cot), argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(lambda *a: jnp.sum(cj.nn.ops.sdpa_slow(*a, m, layout=layout).jax * cot), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(grads, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)


@needs_attention
def test_sdpa_keeps_xlas_attention_where_the_native_one_does_not_apply(rng):
    q = rng.standard_normal((1, 4, 6, 8)).astype(np.float32)
    kv2 = rng.standard_normal((1, 2, 6, 8)).astype(np.float32)
    sdpa = cj.nn.ops.sdpa
    cases = {
        "causal": lambda q: sdpa(q, q, q, do_causal=True),
        "grouped heads": lambda q: sdpa(q, kv2, kv2),
        "bool mask": lambda q: sdpa(q, q, q, np.ones((1, 1, 1, 6), bool)),  # keys a cache's transposed view
        "per-query bool mask": lambda q: sdpa(q, q, q, np.tril(np.ones((6, 6), bool))),
        "per-query mask": lambda q: sdpa(q, q, q, np.zeros((1, 1, 6, 6), np.float32)),
        "softcapping": lambda q: sdpa(q, q, q, softcapping=30.0),
        "bf16": lambda q: sdpa(q.astype(jnp.bfloat16), q.astype(jnp.bfloat16), q.astype(jnp.bfloat16)),
    }
    for name, fn in cases.items():
        assert native.F32_ATTENTION_TARGET not in jax.jit(lambda q, fn=fn: fn(q).jax).lower(q).as_text(), name


@needs_attention
def test_f32_attention_gives_masked_keys_no_weight_and_keeps_nans(rng):
    """A masked key's value never leaks into the output (even a huge one), and a NaN query stays NaN
    (no silent repair)."""
    q, k = rng.standard_normal((1, 2, 3, 8)).astype(np.float32), rng.standard_normal((1, 2, 20, 8)).astype(np.float32)
    v = rng.standard_normal((1, 2, 20, 8)).astype(np.float32)
    bias = np.zeros((1, 20), np.float32)
    for isa in _vector_isas():
        for fill in (np.finfo(np.float32).min, -np.inf):
            bias[0, 5:9] = fill
            v_big = v.copy()
            v_big[:, :, 5:9] = 1e30
            y = np.asarray(native.f32_attention(q, k, v_big, bias))
            ref = _attention_f64(q, k, v, np.where(bias < -1e30, -1e38, 0), 1 / np.sqrt(8), "bhsd")
            np.testing.assert_allclose(y, ref, rtol=1e-5, atol=2e-6, err_msg=isa)
        q_nan = q.copy()
        q_nan[0, 1, 2, 0] = np.nan
        y = np.asarray(native.f32_attention(q_nan, k, v))
        assert np.isnan(y[0, 1, 2]).all() and np.isfinite(np.delete(y.reshape(6, 8), 5, axis=0)).all(), isa
