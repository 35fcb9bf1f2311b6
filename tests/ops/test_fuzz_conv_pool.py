"""A deterministic differential fuzz of convolution, pooling and resizing: random small
configurations (fixed seeds) of ``conv1d`` / ``conv2d`` / ``conv_transpose1d`` / ``conv_transpose2d``
/ ``max_pool2d_with_stride`` / ``avg_pool2d_with_stride`` / ``upsample_nearest1d/2d`` /
``upsample_bilinear2d``, values and shapes against ``torch.nn.functional`` in float64, gradients of
input and kernel (``jax.grad``) against torch autograd, f32 / f64 / f16 / bf16 inputs and
non-contiguous (transposed, narrowed) inputs and kernels; candle-pyo3 0.4.2's pooling (it has no
convolutions or resizing)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import candlejax as cj
from candlejax import DType, errors
from candlejax.tensor.conv import conv_out_len
from candlejax.xla import XLA_CONVOLUTION_OPTIONS

torch = pytest.importorskip("torch")
from helpers import from_candle, to_candle  # noqa: E402

F = torch.nn.functional

BF16 = np.dtype(jnp.bfloat16)
#: (dtype name, numpy dtype, rtol, atol) of a result vs the float64 reference of the same (rounded) inputs
DTYPES = [
    ("f32", np.dtype(np.float32), 1e-4, 1e-4),
    ("f64", np.dtype(np.float64), 1e-10, 1e-10),
    ("f16", np.dtype(np.float16), 1e-2, 2e-2),
    ("bf16", BF16, 4e-2, 1e-1),
]
SEEDS = range(4)
LAYOUTS = ("contiguous", "transposed", "narrowed")


def _dtypes_layouts(seed: int) -> list[tuple[tuple[str, np.dtype, float, float], str]]:
    """One (dtype, layout) pair per seed, rotating so that the seeds together cover each dtype and
    each layout (each pair compiles its own kernels: every dtype on every seed would take minutes)."""
    return [(DTYPES[seed % 4], LAYOUTS[seed % 3])]


def _f64(a) -> np.ndarray:
    a = np.asarray(a.jax if isinstance(a, cj.Tensor) else a)
    return a.astype(np.float32).astype(np.float64) if a.dtype == BF16 else a.astype(np.float64)


def _tensor(a: np.ndarray, layout: str) -> cj.Tensor:
    """``a`` as a Tensor, contiguous or made non-contiguous by a view that keeps its values."""
    if layout == "transposed":  # the last two dims swapped in memory, then swapped back
        return cj.Tensor.from_numpy(np.ascontiguousarray(np.swapaxes(a, -1, -2))).transpose(-1, -2)
    if layout == "narrowed":  # a slice of a wider tensor along the last dim
        pad = np.zeros((*a.shape[:-1], 2), a.dtype)
        return cj.Tensor.from_numpy(np.concatenate([pad, a, pad], axis=-1)).narrow(-1, 2, a.shape[-1])
    return cj.Tensor.from_numpy(a)


def _compare(got: cj.Tensor, ref, rtol: float, atol: float, what: str) -> None:
    ref = ref.detach().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    assert tuple(got.shape) == tuple(ref.shape), what
    np.testing.assert_allclose(_f64(got), ref, rtol=rtol, atol=atol, err_msg=what)


def _check_grads(cj_fn, torch_fn, arrays: list[np.ndarray], rng, what: str) -> None:
    """Gradients of every input (``jax.grad`` in float64) against torch autograd."""
    t_in = [torch.tensor(a.astype(np.float64), requires_grad=True) for a in arrays]
    ref = torch_fn(*t_in)
    cot = rng.standard_normal(tuple(ref.shape))
    (ref * torch.tensor(cot)).sum().backward()

    def loss(*arrs):
        return jnp.sum(cj_fn(*[cj.Tensor.from_jax(a) for a in arrs]).jax * cot)

    grads = jax.grad(loss, argnums=tuple(range(len(arrays))))(*[jnp.asarray(a.astype(np.float64)) for a in arrays])
    for i, (g, t) in enumerate(zip(grads, t_in)):
        np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), rtol=1e-9, atol=1e-9, err_msg=f"{what} grad {i}")


def _conv_case(rng, nd: int, transpose: bool):
    """A random valid configuration: (x shape, k shape, padding, stride, dilation, groups, output_padding)."""
    while True:
        g = int(rng.integers(1, 4))
        c_in = g * int(rng.integers(1, 3))
        c_out = g * int(rng.integers(1, 3))
        b = int(rng.integers(1, 4))
        ks = tuple(int(v) for v in rng.integers(1, 6, nd))
        size = tuple(int(v) for v in rng.integers(1, 10, nd))
        s = int(rng.integers(1, 4))
        d = int(rng.integers(1, 4))
        p = int(rng.integers(0, 4))
        op_ = int(rng.integers(0, max(s, d))) if transpose else 0
        if transpose:
            out = [(n - 1) * s - 2 * p + d * (k - 1) + op_ + 1 for n, k in zip(size, ks)]
            kshape = (c_in, c_out // g, *ks)
        else:
            out = [(n + 2 * p - d * (k - 1) - 1) // s + 1 if n + 2 * p - d * (k - 1) - 1 >= 0 else 0
                   for n, k in zip(size, ks)]  # fmt: skip
            kshape = (c_out, c_in // g, *ks)
        if min(out) >= 1:
            return (b, c_in, *size), kshape, p, s, d, g, op_


def _conv_fns(nd: int, transpose: bool, p: int, s: int, d: int, g: int, op_: int):
    if transpose:
        name = f"conv_transpose{nd}d"
        tf = F.conv_transpose1d if nd == 1 else F.conv_transpose2d

        def cj_fn(x, k):
            return getattr(x, name)(k, p, op_, s, d, g)

        def torch_fn(x, k):
            return tf(x, k, stride=s, padding=p, output_padding=op_, groups=g, dilation=d)
    else:
        name = f"conv{nd}d"
        tf = F.conv1d if nd == 1 else F.conv2d

        def cj_fn(x, k):
            return getattr(x, name)(k, p, s, d, g)

        def torch_fn(x, k):
            return tf(x, k, stride=s, padding=p, dilation=d, groups=g)

    return cj_fn, torch_fn


@pytest.mark.parametrize("transpose", [False, True], ids=["conv", "conv_transpose"])
@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_conv(seed, nd, transpose, x64):
    rng = np.random.default_rng(1000 * seed + 10 * nd + transpose)
    xs, kshape, p, s, d, g, op_ = _conv_case(rng, nd, transpose)
    cj_fn, torch_fn = _conv_fns(nd, transpose, p, s, d, g, op_)
    x64_ = rng.standard_normal(xs)
    k64 = rng.standard_normal(kshape)
    what = f"x {xs} k {kshape} p {p} s {s} d {d} g {g} op {op_}"
    for (dname, dt, rtol, atol), layout in _dtypes_layouts(seed):
        x, k = x64_.astype(dt), k64.astype(dt)
        ref = torch_fn(torch.tensor(_f64(x)), torch.tensor(_f64(k)))
        scale = float(np.abs(ref.numpy()).max()) + 1.0
        got = cj_fn(_tensor(x, layout), _tensor(k, "narrowed" if layout == "transposed" else layout))
        assert got.dtype == cj.Tensor.from_numpy(x).dtype
        _compare(got, ref, rtol, atol * scale, f"{what} {dname} {layout}")
    # compiled, on odd seeds with the options some models compile convolutions with (XLA's own kernels)
    options = XLA_CONVOLUTION_OPTIONS if seed % 2 else None
    got = jax.jit(cj_fn, compiler_options=options)(_tensor(x, "contiguous"), _tensor(k, "contiguous"))
    _compare(got, ref, rtol, atol * scale, f"{what} {dname} jit {options}")
    _check_grads(cj_fn, torch_fn, [x64_, k64], rng, what)


# --- pooling ---------------------------------------------------------------------------------------
def _pool_case(rng):
    b, c = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    k = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    h, w = int(rng.integers(k[0], 10)), int(rng.integers(k[1], 10))
    return (b, c, h, w), k, s


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_pool(seed, kind, x64):
    rng = np.random.default_rng(2000 + seed + (kind == "max") * 100)
    xs, k, s = _pool_case(rng)
    tf = F.max_pool2d if kind == "max" else F.avg_pool2d

    def cj_fn(x):
        return getattr(x, f"{kind}_pool2d_with_stride")(k, s)

    def torch_fn(x):
        return tf(x, k, stride=s)

    x64_ = rng.standard_normal(xs)
    what = f"{kind} x {xs} k {k} s {s}"
    for (dname, dt, rtol, atol), layout in _dtypes_layouts(seed):
        x = x64_.astype(dt)
        ref = torch_fn(torch.tensor(_f64(x)))
        _compare(cj_fn(_tensor(x, layout)), ref, rtol, atol, f"{what} {dname} {layout}")
    if k == s:  # the Tensor method with one argument: stride = kernel
        got = getattr(cj.Tensor.from_numpy(x64_), f"{kind}_pool2d")(k)
        _compare(got, torch_fn(torch.tensor(x64_)), 1e-12, 1e-12, what)
    _check_grads(cj_fn, torch_fn, [x64_], rng, what)


@pytest.mark.parametrize("seed", range(2))
def test_fuzz_max_pool_ties_gradient(seed, x64):
    """Tied maxima (values from a small integer set): the whole gradient goes to the first maximum
    of each window, as PyTorch (the documented difference from Candle's mask average)."""
    rng = np.random.default_rng(3000 + seed)
    xs, k, s = _pool_case(rng)
    x = rng.integers(0, 2, xs).astype(np.float64)

    def cj_fn(x):
        return x.max_pool2d_with_stride(k, s)

    _check_grads(cj_fn, lambda x: F.max_pool2d(x, k, stride=s), [x], rng, f"ties x {xs} k {k} s {s}")


@pytest.mark.parametrize("seed", range(2))
def test_fuzz_pool_candle_pyo3(seed):
    candle = pytest.importorskip("candle")
    rng = np.random.default_rng(4000 + seed)
    xs, (k, _), (s, _) = _pool_case(rng)  # candle-pyo3 0.4.2 takes one int for both dims
    x = rng.standard_normal(xs).astype(np.float32)
    cx, tx = to_candle(x), cj.Tensor.from_numpy(x)
    for kind in ("max", "avg"):
        r = getattr(candle.functional, f"{kind}_pool2d")(cx, k, stride=s)
        ref = from_candle(r.flatten_all()).reshape(r.shape)
        _compare(getattr(tx, f"{kind}_pool2d_with_stride")(k, s), ref, 1e-6, 1e-6, f"{kind} {xs} {k} {s}")


# --- resizing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_upsample_nearest(seed, x64):
    rng = np.random.default_rng(5000 + seed)
    b, c = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    n, m = int(rng.integers(1, 8)), int(rng.integers(1, 8))
    tn, tm = int(rng.integers(1, 15)), int(rng.integers(1, 15))
    x1 = rng.standard_normal((b, c, n))
    x2 = rng.standard_normal((b, c, n, m))
    for (dname, dt, _, _), layout in _dtypes_layouts(seed):
        got = _tensor(x1.astype(dt), layout).upsample_nearest1d(tm)
        _compare(got, F.interpolate(torch.tensor(_f64(x1.astype(dt))), size=tm, mode="nearest"), 0, 0,
                 f"1d {x1.shape} -> {tm} {dname} {layout}")  # fmt: skip
        got = _tensor(x2.astype(dt), layout).upsample_nearest2d(tn, tm)
        ref = F.interpolate(torch.tensor(_f64(x2.astype(dt))), size=(tn, tm), mode="nearest")
        _compare(got, ref, 0, 0, f"2d {x2.shape} -> {(tn, tm)} {dname} {layout}")
    _check_grads(lambda x: x.upsample_nearest1d(tm), lambda x: F.interpolate(x, size=tm, mode="nearest"), [x1], rng,
                 f"1d {x1.shape} -> {tm}")  # fmt: skip
    _check_grads(lambda x: x.interpolate2d(tn, tm), lambda x: F.interpolate(x, size=(tn, tm), mode="nearest"), [x2],
                 rng, f"2d {x2.shape} -> {(tn, tm)}")  # fmt: skip


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("seed", range(2))
def test_fuzz_upsample_bilinear(seed, align_corners, x64):
    rng = np.random.default_rng(6000 + seed + 100 * align_corners)
    b, c = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    h, w = int(rng.integers(1, 8)), int(rng.integers(1, 8))
    th, tw = int(rng.integers(1, 15)), int(rng.integers(1, 15))
    x64_ = rng.standard_normal((b, c, h, w))

    def torch_fn(x):
        return F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=align_corners)

    what = f"{x64_.shape} -> {(th, tw)} align_corners {align_corners}"
    for (dname, dt, rtol, atol), layout in _dtypes_layouts(seed + 2 * align_corners):
        x = x64_.astype(dt)
        got = _tensor(x, layout).upsample_bilinear2d(th, tw, align_corners)
        assert got.dtype == cj.Tensor.from_numpy(x).dtype
        _compare(got, torch_fn(torch.tensor(_f64(x))), rtol, atol, f"{what} {dname} {layout}")
    _check_grads(lambda x: x.upsample_bilinear2d(th, tw, align_corners), torch_fn, [x64_], rng, what)


# --- sizes with an empty output -------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_fuzz_empty_output_raises(seed):
    """A kernel that does not fit the padded input (torch: "Kernel size can't be greater than actual
    input size") is a candlejax error, never an empty tensor or an XLA traceback."""
    rng = np.random.default_rng(7000 + seed)
    nd = 1 + seed % 2
    k = int(rng.integers(3, 6))
    d = int(rng.integers(1, 3))
    p = int(rng.integers(0, 2)) if d * (k - 1) > 2 else 0
    n = int(rng.integers(1, d * (k - 1) + 1 - 2 * p))
    x = cj.Tensor.zeros((1, 2, *(n,) * nd), DType.F32)
    kern = cj.Tensor.zeros((3, 2, *(k,) * nd), DType.F32)
    with pytest.raises(errors.Error):
        getattr(x, f"conv{nd}d")(kern, p, 1, d, 1)
    with pytest.raises(RuntimeError):
        (F.conv1d if nd == 1 else F.conv2d)(torch.zeros((1, 2, *(n,) * nd)), torch.zeros((3, 2, *(k,) * nd)),
                                             padding=p, dilation=d)  # fmt: skip


# --- nn.Conv2d: the native NCHW convolution and the channels-last paths -------------------------------
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("nhwc", [False, True], ids=["forward", "forward_nhwc"])
def test_fuzz_nn_conv2d_f32(seed, nhwc):
    """``nn.Conv2d.forward`` (f32 maps of more than 64 output rows run the native convolution where it
    is built, with its kernel gradient) and ``forward_nhwc`` (1x1 products, stacked taps, the native
    convolution or XLA's), one group, non-square kernels and (h, w) geometry, against torch."""
    import candlejax.nn as nn

    rng = np.random.default_rng(8000 + seed + 100 * nhwc)
    while True:
        c_in, c_out, b = int(rng.integers(1, 6)), int(rng.integers(1, 6)), int(rng.integers(1, 3))
        ks = tuple(int(v) for v in rng.integers(1, 6, 2))
        hw = tuple(int(v) for v in rng.integers(3, 16, 2))
        p, s, d = (tuple(int(v) for v in rng.integers(lo, hi, 2)) for lo, hi in ((0, 4), (1, 4), (1, 3)))
        if seed % 3 == 0:  # Candle's single usize geometry
            p, s, d = (p[0], p[0]), (s[0], s[0]), (d[0], d[0])
        if nhwc and ks == (1, 1):
            p = (0, 0)
        out = [conv_out_len(n, k, pp, ss, dd) for n, k, pp, ss, dd in zip(hw, ks, p, s, d)]
        if min(out) >= 1:
            break
    x = rng.standard_normal((b, c_in, *hw))
    w = rng.standard_normal((c_out, c_in, *ks))
    bias = rng.standard_normal(c_out)
    cfg = nn.Conv2dConfig(padding=p, stride=s, dilation=d)
    what = f"x {x.shape} w {w.shape} p {p} s {s} d {d}"

    def cj_fn(x, w, bias):
        conv = nn.Conv2d(w, bias, cfg)
        return conv.forward_nhwc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) if nhwc else conv.forward(x)

    def torch_fn(x, w, bias):
        return F.conv2d(x, w, bias, stride=s, padding=p, dilation=d)

    arrays = [a.astype(np.float32) for a in (x, w, bias)]
    t_in = [torch.tensor(a.astype(np.float64), requires_grad=True) for a in arrays]
    ref = torch_fn(*t_in)
    cot = rng.standard_normal(tuple(ref.shape))
    (ref * torch.tensor(cot)).sum().backward()
    scale = float(ref.detach().abs().max()) + 1.0
    _compare(cj_fn(*[cj.Tensor.from_numpy(a) for a in arrays]), ref, 1e-4, 1e-4 * scale, what)

    def loss(*arrs):
        return jnp.sum(cj_fn(*[cj.Tensor.from_jax(a) for a in arrs]).jax * cot.astype(np.float32))

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*[jnp.asarray(a) for a in arrays])
    for i, (g, t) in enumerate(zip(grads, t_in)):
        gs = float(t.grad.abs().max()) + 1.0
        np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), rtol=1e-4, atol=1e-4 * gs, err_msg=f"{what} grad {i}")
