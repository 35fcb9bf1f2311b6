"""The native CPU kernels, called from compiled programs: GGML block weights (Q4_0, Q4_1, Q8_0), and
f32 products, convolutions and attention.

``matmul(x, raw, dtype)`` computes ``x @ Wᵀ`` for a weight kept in its file layout (the GGML
blocks' bytes: 0.56 / 0.63 / 1.06 bytes per value), through an XLA FFI custom call (``jax.ffi``) into
``csrc/quantized_matmul.cc``, which the package's build step compiles (``pip install``; AVX-512, AVX2
or portable code chosen at run time, rows split over XLA's CPU thread pool). Activations stay f32:
the result equals the dequantised product up to summation order (no Q8 rounding of ``x``).

:func:`available` says whether the kernel was built and loads; ``CANDLEJAX_NATIVE=0`` turns it off
(the pure-JAX blocked layout is then used, as on other platforms). llama.cpp's ``ggml_vec_dot`` is the
closest equivalent. :func:`f32_matmul` is the same library's f32 product (``nn.Linear`` calls it for
at most 48 or at least 512 rows on AVX-512 CPUs), :func:`f32_conv_nhwc` its channels-last
convolution (``Conv2d.forward_nhwc``), :func:`f32_conv_kernel_grad_nhwc` that convolution's kernel
gradient (``Conv2d.forward``'s reverse mode) and :func:`f32_attention` its attention (``ops.sdpa``);
they are built from ``csrc/f32_matmul.cc``.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import math
import os
from functools import cache, lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax._config import env_off
from candlejax.quantized.ggml_types import GgmlDType
from candlejax.tensor.conv import conv_out_len

TARGET = "candlejax_quantized_matmul"
#: the f32 product (:func:`f32_matmul`)
F32_TARGET = "candlejax_f32_matmul"
#: the f32 product over a weight packed once (:func:`f32_matmul_packed`)
F32_PACKED_TARGET = "candlejax_f32_matmul_packed"
#: rows per panel of the packed weight layout (:func:`pack_f32_panels`)
PANEL_ROWS = 32
#: the f32 channels-last convolution (:func:`f32_conv_nhwc`)
F32_CONV_TARGET = "candlejax_f32_conv_nhwc"
#: the kernel gradient of the f32 channels-last convolution (:func:`f32_conv_kernel_grad_nhwc`)
F32_CONV_KERNEL_GRAD_TARGET = "candlejax_f32_conv_kernel_grad_nhwc"
#: the f32 attention (:func:`f32_attention`)
F32_ATTENTION_TARGET = "candlejax_f32_attention"
#: Candle's softmax and rand's WeightedIndex draw (:func:`candle_softmax`, :func:`weighted_index`)
CANDLE_SOFTMAX_TARGET = "candlejax_candle_softmax"
WEIGHTED_INDEX_TARGET = "candlejax_weighted_index"
#: block types the kernel reads, with the ``kind`` code the C++ handler expects
KINDS = {GgmlDType.Q4_0: 2, GgmlDType.Q4_1: 3, GgmlDType.Q8_0: 8}
ISA_NAMES = ("portable", "avx2", "avx512")


def _library_path() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(here, "_native" + suffix)
        if os.path.isfile(path):
            return path
    return None


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    if env_off("CANDLEJAX_NATIVE"):
        return None
    path = _library_path()
    if path is None:
        return None
    try:
        # the CPU backend first: a target registered before it exists is only queued, and a handler
        # XLA refuses then (a library built against a newer jaxlib's FFI API than the one running)
        # fails the backend's start, i.e. every JAX computation; once it exists, refusal raises here
        jax.devices("cpu")
        lib = ctypes.CDLL(path)
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.CandlejaxQMatmul), platform="cpu")
    except (OSError, AttributeError, RuntimeError):
        return None
    lib.candlejax_native_isa.restype = ctypes.c_int
    lib.candlejax_native_set_isa.argtypes = [ctypes.c_int]
    return lib


@cache
def _registered(target: str, symbol: str) -> bool:
    """Register the library's handler ``symbol`` as ``target``; False where the library lacks it (one
    built before that kernel) or is not loaded."""
    lib = _library()
    if lib is None or not hasattr(lib, symbol):
        return False
    try:
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    except (AttributeError, RuntimeError):
        return False
    return True


def _f32_registered() -> bool:
    return _registered(F32_TARGET, "CandlejaxF32Matmul")


def _packed_registered() -> bool:
    return _registered(F32_PACKED_TARGET, "CandlejaxF32MatmulPacked")


def _conv_registered() -> bool:
    return _registered(F32_CONV_TARGET, "CandlejaxF32ConvNhwc")


def _conv_kernel_grad_registered() -> bool:
    return _registered(F32_CONV_KERNEL_GRAD_TARGET, "CandlejaxF32ConvKernelGradNhwc")


def _sampling_registered() -> bool:
    return _registered(CANDLE_SOFTMAX_TARGET, "CandlejaxCandleSoftmax") and _registered(
        WEIGHTED_INDEX_TARGET, "CandlejaxWeightedIndex"
    )


def available() -> bool:
    """Whether the native kernel is built, loads, is not turned off (``CANDLEJAX_NATIVE=0``), and
    JAX computes on the CPU (the kernel is registered for the CPU backend only)."""
    return _library() is not None and jax.default_backend() == "cpu"


def isa() -> str:
    """The instruction set the kernel runs on this CPU: ``"avx512"``, ``"avx2"`` or ``"portable"``."""
    lib = _library()
    if lib is None:
        raise errors.Msg("the native quantized kernel is not available (not built, or CANDLEJAX_NATIVE=0)")
    return ISA_NAMES[lib.candlejax_native_isa()]


def set_isa(name: str | None) -> None:
    """Cap the kernel's instruction set (``"portable"``, ``"avx2"``, ``"avx512"``; ``None``: detect).

    For tests and comparisons: every path the CPU supports gives the same result up to rounding.
    Programs already compiled keep calling the same handler, which reads the setting on each call."""
    lib = _library()
    if lib is None:
        raise errors.Msg("the native quantized kernel is not available (not built, or CANDLEJAX_NATIVE=0)")
    if name is not None and name not in ISA_NAMES:
        raise errors.Msg(f"set_isa: unknown instruction set {name!r}; expected one of {ISA_NAMES} or None")
    lib.candlejax_native_set_isa(-1 if name is None else ISA_NAMES.index(name))


def matmul(x: Any, raw: Any, dtype: GgmlDType, layer: Any = None) -> Any:
    """``x (M, K) f32 @ Wᵀ -> (M, N) f32`` for ``raw`` = ``W``'s GGML block bytes ``(N, K/32*size)``,
    or ``(L, N, ...)`` with ``layer`` (an int32 scalar, may be traced) choosing one matrix in place."""
    if not available():
        raise errors.Msg("the native quantized kernel is not available (not built, or CANDLEJAX_NATIVE=0)")
    kind = KINDS.get(dtype)
    if kind is None:
        names = sorted(k.name for k in KINDS)
        raise errors.UnsupportedDTypeForOp(dtype.name, "native matmul", f"supported: {names}")
    x = jnp.asarray(x, jnp.float32)
    if raw.ndim == 3 and layer is None:
        raise errors.Msg("native.matmul: a stacked (L, N, B) weight needs layer=")
    if layer is not None and not isinstance(layer, jax.core.Tracer):
        n_layers = raw.shape[0] if raw.ndim == 3 else 1
        li = int(np.asarray(layer))
        if not 0 <= li < n_layers:
            raise errors.Msg(f"native.matmul: layer {li} out of range for a weight of {n_layers} layer(s), shape "
                             f"{tuple(raw.shape)}")  # fmt: skip
    layer = jnp.zeros((), jnp.int32) if layer is None else jnp.asarray(layer, jnp.int32).reshape(())
    out = jax.ShapeDtypeStruct((x.shape[0], raw.shape[-2]), jnp.float32)
    call = jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")
    return call(x, raw, layer, kind=np.int32(kind))


def _attention_registered() -> bool:
    return _registered(F32_ATTENTION_TARGET, "CandlejaxF32Attention")


def attention_available() -> bool:
    """Whether :func:`f32_attention` can run: the library has it, on the CPU backend, on an AVX-512 or
    AVX2 CPU."""
    return available() and _attention_registered() and isa() in ("avx2", "avx512")


def f32_attention(q: Any, k: Any, v: Any, bias: Any = None, scale: float | None = None, layout: str = "bhsd",
                  keys_transposed: bool = False, layer: Any = None) -> Any:  # fmt: skip
    """``softmax(q kᵀ * scale + bias) v`` per batch and head, f32: q ``(B, H, S, D)``, k ``(B, H, Skv, D)``,
    v ``(B, H, Skv, Dv)`` (``layout="bshd"``: ``(B, S, H, D)`` each, the output too), ``bias`` an
    additive ``(B, Skv)`` or ``(1, Skv)`` mask (padding), ``scale`` ``1/√D`` by default.
    ``keys_transposed=True`` takes k as ``(B, H, D, Skv)`` (``bhsd`` only), as a decoding cache stores
    it: read in place, not copied back. ``layer`` (an int or traced int32 scalar; ``bhsd``, keys not
    transposed): k and v are every layer's buffers ``(L, B, H, Skv, D)`` of a stacked cache, and the
    attention reads layer ``layer`` in place (``k[layer]`` without the copy). PyTorch:
    ``F.scaled_dot_product_attention`` with a float mask broadcast over heads and queries. No
    derivative of its own (``ops.sdpa`` wraps it in one that uses its XLA form)."""
    if not attention_available():
        raise errors.Msg("the native f32 attention is not available (not built, no AVX2, or CANDLEJAX_NATIVE=0)")
    if layer is not None:
        if k.ndim != 5 or v.ndim != 5 or k.shape[0] != v.shape[0] or layout != "bhsd" or keys_transposed:
            raise errors.Msg(f"native.f32_attention: with layer=, k {tuple(k.shape)} and v {tuple(v.shape)} must be "
                             "stacked (L, B, H, Skv, D) buffers in the bhsd layout, keys not transposed")  # fmt: skip
        if not isinstance(layer, jax.core.Tracer):  # a concrete layer, read once explicitly
            li = int(jax.device_get(layer))
            if not 0 <= li < k.shape[0]:
                raise errors.Msg(f"native.f32_attention: layer {li} out of range for {k.shape[0]} stacked layers, "
                                 f"k {tuple(k.shape)}")  # fmt: skip
            layer = np.int32(li)
        stacked_k, stacked_v = k, v
        k, v = jax.ShapeDtypeStruct(k.shape[1:], k.dtype), jax.ShapeDtypeStruct(v.shape[1:], v.dtype)
    bshd = layout == "bshd"
    b, h, s = (q.shape[0], q.shape[2], q.shape[1]) if bshd else q.shape[:3]
    kt = bool(keys_transposed)
    skv = k.shape[3] if kt else k.shape[1] if bshd else k.shape[2]
    kdim = k.shape[2] if kt else k.shape[3]
    bias = jnp.zeros((0,), jnp.float32) if bias is None else bias
    ok = (layout in ("bhsd", "bshd") and not (kt and bshd) and q.ndim == k.ndim == v.ndim == 4
          and k.shape[:2] == v.shape[:2] and v.shape[2 if not bshd else 1] == skv and (kt or k.shape[:3] == v.shape[:3])
          and k.shape[0] == b and (k.shape[2] if bshd else k.shape[1]) == h and kdim == q.shape[3]
          and bias.ndim in (1, 2) and bias.shape in ((0,), (b, skv), (1, skv))
          and all(t.dtype == jnp.float32 for t in (q, k, v, bias)))  # fmt: skip
    if not ok:
        what = f"{layout}, keys transposed" if kt else layout
        raise errors.Msg(f"native.f32_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         f"({what}) and bias {tuple(bias.shape)} must be f32 with matching batch, heads, keys "
                         "and dims")  # fmt: skip
    out = jax.ShapeDtypeStruct((b, s, h, v.shape[3]) if bshd else (b, h, s, v.shape[3]), jnp.float32)
    call = jax.ffi.ffi_call(F32_ATTENTION_TARGET, out, vmap_method="sequential")
    sc = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    attrs = {"scale": np.float32(sc), "bshd": np.int64(int(bshd)), "keys_t": np.int64(int(kt))}
    if layer is not None:  # the stacked buffers as they are: a reshape would make XLA copy them
        index = jnp.asarray(layer, jnp.int32) if isinstance(layer, jax.core.Tracer) else np.asarray(layer, np.int32)
        return call(q, stacked_k, stacked_v, bias, index.reshape(()), **attrs)
    if not bshd and (b == 1 or h == 1):
        # without the size-1 batch / head dimensions: a decoding cache stores its buffers so, and XLA
        # copies a buffer written in place in the same program that a reshape hands to a custom call
        lead = tuple(n for n in (b, h) if n != 1)
        k, v = k.reshape(*lead, *k.shape[2:]), v.reshape(*lead, *v.shape[2:])
    return call(q, k, v, bias, np.zeros((), np.int32), **attrs)


def conv_available() -> bool:
    """Whether :func:`f32_conv_nhwc` can run: the library has it, on the CPU backend, on an AVX-512 or
    AVX2 CPU."""
    return available() and _conv_registered() and isa() in ("avx2", "avx512")


def f32_conv_nhwc(x: Any, kernel: Any, kernel_hw: tuple[int, int], stride: tuple[int, int] = (1, 1),
                  dilation: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0), bias: Any = None,
                  relu: bool = False) -> Any:  # fmt: skip
    """The convolution of a channels-last ``x (B, H, W, C)`` f32 with ``kernel (O, kh * kw * C)`` (OHWI
    order, flattened), zero ``padding`` (h, w), then ``+ bias (O,)`` and ReLU if asked ->
    ``(B, Ho, Wo, O)``: the blocked product over each output position's taps, read in place (no
    im2col or padded copy). PyTorch: ``F.relu(F.conv2d(x, w, b, stride, padding, dilation))`` on
    ``channels_last`` tensors. Equal to XLA's convolution up to summation order; no derivative of its
    own (``Conv2d.forward_nhwc`` wraps it in one that uses XLA's)."""
    if not conv_available():
        raise errors.Msg("the native f32 convolution is not available (not built, no AVX2, or CANDLEJAX_NATIVE=0)")
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = kernel_hw, stride, dilation, padding
    bias = jnp.zeros((0,), jnp.float32) if bias is None else bias
    if (x.ndim != 4 or kernel.ndim != 2 or kernel.shape[1] != kh * kw * x.shape[3] or x.dtype != jnp.float32
            or kernel.dtype != jnp.float32 or bias.dtype != jnp.float32 or bias.shape not in ((0,), (kernel.shape[0],))
            or min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0):  # fmt: skip
        raise errors.Msg(f"native.f32_conv_nhwc: x must be (B, H, W, C), kernel (O, {kh}*{kw}*C) and bias (O,), all "
                         f"f32, with positive geometry; got {tuple(x.shape)} {x.dtype}, {tuple(kernel.shape)} "
                         f"{kernel.dtype}, bias {tuple(bias.shape)}, stride {stride}, dilation {dilation}, padding "
                         f"{padding}")  # fmt: skip
    ho, wo = conv_out_len(x.shape[1], kh, ph, sh, dh), conv_out_len(x.shape[2], kw, pw, sw, dw)
    if ho < 1 or wo < 1:
        raise errors.Msg(f"native.f32_conv_nhwc: the dilated kernel does not fit the padded input {tuple(x.shape)}")
    out = jax.ShapeDtypeStruct((x.shape[0], ho, wo, kernel.shape[0]), jnp.float32)
    call = jax.ffi.ffi_call(F32_CONV_TARGET, out, vmap_method="sequential")
    attrs = {"kh": kh, "kw": kw, "sh": sh, "sw": sw, "dh": dh, "dw": dw, "ph": ph, "pw": pw, "act": int(relu)}
    return call(x, kernel, bias, **{name: np.int64(v) for name, v in attrs.items()})


def conv_kernel_grad_available() -> bool:
    """Whether :func:`f32_conv_kernel_grad_nhwc` can run (as :func:`conv_available`)."""
    return conv_available() and _conv_kernel_grad_registered()


def f32_conv_kernel_grad_nhwc(x: Any, dy: Any, kernel_hw: tuple[int, int], stride: tuple[int, int] = (1, 1),
                              dilation: tuple[int, int] = (1, 1),
                              padding: tuple[int, int] = (0, 0)) -> Any:  # fmt: skip
    """The kernel gradient of :func:`f32_conv_nhwc`'s convolution: for a channels-last ``x (B, H, W,
    C)`` and the output gradient ``dy (B, Ho, Wo, O)``, both f32, the ``(O, kh * kw * C)`` (OHWI,
    flattened) sum over the batch and output positions of ``dy`` times the input values under each
    tap. PyTorch: ``torch.nn.grad.conv2d_weight`` (on channels-last tensors, OHWI result). Both are
    read in place; XLA's form of this gradient is a convolution contracting over the batch, with
    ``x`` and ``dy`` first transposed batch-minor. Equal to it up to summation order."""
    if not conv_kernel_grad_available():
        raise errors.Msg("the native f32 convolution kernel gradient is not available (not built, no AVX2, or "
                         "CANDLEJAX_NATIVE=0)")  # fmt: skip
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = kernel_hw, stride, dilation, padding
    if (x.ndim != 4 or dy.ndim != 4 or x.dtype != jnp.float32 or dy.dtype != jnp.float32 or x.shape[0] != dy.shape[0]
            or min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0):  # fmt: skip
        raise errors.Msg(f"native.f32_conv_kernel_grad_nhwc: x must be (B, H, W, C) and dy (B, Ho, Wo, O), both f32, "
                         f"with positive geometry; got {tuple(x.shape)} {x.dtype}, {tuple(dy.shape)} {dy.dtype}, "
                         f"kernel {kernel_hw}, stride {stride}, dilation {dilation}, padding {padding}")  # fmt: skip
    ho, wo = conv_out_len(x.shape[1], kh, ph, sh, dh), conv_out_len(x.shape[2], kw, pw, sw, dw)
    if (ho, wo) != tuple(dy.shape[1:3]):
        raise errors.Msg(f"native.f32_conv_kernel_grad_nhwc: dy {tuple(dy.shape)} must be (B, {ho}, {wo}, O) for x "
                         f"{tuple(x.shape)}, kernel {kernel_hw}, stride {stride}, dilation {dilation}, padding "
                         f"{padding}")  # fmt: skip
    out = jax.ShapeDtypeStruct((dy.shape[3], kh * kw * x.shape[3]), jnp.float32)
    call = jax.ffi.ffi_call(F32_CONV_KERNEL_GRAD_TARGET, out, vmap_method="sequential")
    attrs = {"kh": kh, "kw": kw, "sh": sh, "sw": sw, "dh": dh, "dw": dw, "ph": ph, "pw": pw}
    return call(x, dy, **{name: np.int64(v) for name, v in attrs.items()})


def f32_available() -> bool:
    """Whether :func:`f32_matmul` can run: the native library loads and has it, on the CPU backend."""
    return available() and _f32_registered()


def f32_matmul(x: Any, w: Any) -> Any:
    """``x (M, K) f32 @ Wᵀ -> (M, N) f32`` for an f32 weight ``W (N, K)`` (PyTorch's Linear layout).

    Few rows (at most 48: a single sentence's tokens, a decode step): each weight row is read once
    and multiplied with the rows held in cache. More rows: register tiles of 12 x 32 results (AVX-512;
    6 x 16 on AVX2) over 32-row weight panels packed per call. Equal to ``x @ W.T`` up to summation order.
    No derivative of its own (``nn.Linear`` wraps it in one that uses XLA's products)."""
    if not f32_available():
        raise errors.Msg("the native f32 product is not available (not built, or CANDLEJAX_NATIVE=0)")
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1] or x.dtype != jnp.float32 or w.dtype != jnp.float32:
        raise errors.Msg(f"native.f32_matmul: x must be (M, K) and w (N, K), both f32, got {tuple(x.shape)} "
                         f"{x.dtype} and {tuple(w.shape)} {w.dtype}")  # fmt: skip
    out = jax.ShapeDtypeStruct((x.shape[0], w.shape[0]), jnp.float32)
    return jax.ffi.ffi_call(F32_TARGET, out, vmap_method="sequential")(x, w)


def packed_available() -> bool:
    """Whether :func:`f32_matmul_packed` runs its AVX-512 register tiles: the library has it, on an
    AVX-512 CPU (its AVX2 tiles are level with XLA's product, not faster; without AVX2 a plain loop)."""
    return available() and _packed_registered() and isa() == "avx512"


def pack_f32_panels(w: Any) -> Any:
    """An f32 weight ``W (N, K)`` in the panel layout of :func:`f32_matmul_packed`: ``(P, K, 32)`` with
    ``P = ceil(N / 32)``, ``panels[p, c, i] = W[32 p + i, c]`` and zeros past row ``N``. A relayout
    (no rounding); :func:`unpack_f32_panels` inverts it."""
    if w.ndim != 2:
        raise errors.Msg(f"native.pack_f32_panels: the weight must be (N, K), got shape {tuple(w.shape)}")
    if isinstance(w, jax.Array) and not isinstance(w, jax.core.Tracer) and w.is_fully_addressable:
        # a concrete weight: relaid out by NumPy on the host (no program to compile per shape)
        return jax.device_put(_pack_panels(np.asarray(w), np), w.sharding)
    return _pack_panels(w, jnp)


def _pack_panels(w: Any, xp: Any) -> Any:
    """The relayout with ``xp`` (NumPy or jax.numpy)."""
    n, k = w.shape
    p = -(-n // PANEL_ROWS)
    if p * PANEL_ROWS > n:
        w = xp.pad(w, ((0, p * PANEL_ROWS - n), (0, 0)))
    panels = w.reshape(p, PANEL_ROWS, k).transpose(0, 2, 1)
    return np.ascontiguousarray(panels) if xp is np else panels


def panels_hold(shape: tuple[int, ...], n: int) -> bool:
    """Whether panels of ``shape`` are the layout of a weight with ``n`` rows: ``(ceil(n / 32), K, 32)``."""
    return len(shape) == 3 and shape[2] == PANEL_ROWS and (shape[0] - 1) * PANEL_ROWS < n <= shape[0] * PANEL_ROWS


def unpack_f32_panels(panels: Any, n: int) -> Any:
    """The weight ``W (n, K)`` back from its panel layout (:func:`pack_f32_panels`)."""
    if not panels_hold(panels.shape, n):
        raise errors.Msg(f"native.unpack_f32_panels: panels {tuple(panels.shape)} do not hold {n} weight rows "
                         f"(expected ({-(-n // PANEL_ROWS)}, K, {PANEL_ROWS}))")  # fmt: skip
    p, k, _ = panels.shape
    return panels.transpose(0, 2, 1).reshape(p * PANEL_ROWS, k)[:n]


def f32_matmul_packed(x: Any, panels: Any, n: int) -> Any:
    """``x (M, K) f32 @ Wᵀ -> (M, n) f32`` for a weight packed once by :func:`pack_f32_panels`: the
    blocked product of :func:`f32_matmul` without packing the panels at each call, for any number
    of rows (16 rows: 10-40% faster than :func:`f32_matmul`; 128 rows: ~5%). Equal to ``x @ W.T``
    up to summation order; no derivative of its own (``nn.PackedLinear`` gives it XLA's)."""
    if not available() or not _packed_registered():
        raise errors.Msg("the native packed f32 product is not available (not built, or CANDLEJAX_NATIVE=0)")
    if (x.ndim != 2 or not panels_hold(panels.shape, n) or panels.shape[1] != x.shape[1]
            or x.dtype != jnp.float32 or panels.dtype != jnp.float32):  # fmt: skip
        raise errors.Msg(f"native.f32_matmul_packed: x must be (M, K) and the panels (ceil(n / {PANEL_ROWS}), K, "
                         f"{PANEL_ROWS}), both f32, for n = {n}; got {tuple(x.shape)} {x.dtype} and "
                         f"{tuple(panels.shape)} {panels.dtype}")  # fmt: skip
    out = jax.ShapeDtypeStruct((x.shape[0], int(n)), jnp.float32)
    return jax.ffi.ffi_call(F32_PACKED_TARGET, out, vmap_method="sequential")(x, panels)


__all__ = ["KINDS", "PANEL_ROWS", "attention_available", "available", "conv_available", "f32_attention",
           "f32_available", "f32_conv_nhwc", "f32_matmul", "f32_matmul_packed", "isa", "matmul", "pack_f32_panels",
           "packed_available", "panels_hold", "set_isa", "unpack_f32_panels"]


def sampling_available() -> bool:
    """Whether :func:`candle_softmax` and :func:`weighted_index` can run (the library has them, on the
    CPU backend)."""
    return available() and _sampling_registered()


def candle_softmax(x: Any) -> Any:
    """Candle's CPU softmax over the last axis of f32 ``x``: the row's max, libm's ``expf``, the sum in
    index order, a division (``candle_nn::ops::softmax_last_dim``), bit for bit."""
    if not sampling_available():
        raise errors.Msg("the native sampling kernels are not available (not built, or CANDLEJAX_NATIVE=0)")
    if x.ndim < 1 or x.dtype != jnp.float32:
        raise errors.Msg(f"native.candle_softmax: x must be f32 (..., n), got {tuple(x.shape)} {x.dtype}")
    out = jax.ShapeDtypeStruct(x.shape, jnp.float32)
    return jax.ffi.ffi_call(CANDLE_SOFTMAX_TARGET, out, vmap_method="broadcast_all")(x)


def weighted_index(w: Any, u: Any) -> Any:
    """rand's ``WeightedIndex<f32>`` draw per row of ``w (..., n)`` (weights >= 0) at the uniform
    ``u (...)`` in ``[0, 1)``: the number of running sums (in index order, the total excluded) at or
    below ``u * total``; ``-1`` for a row whose weights sum to 0. int32."""
    if not sampling_available():
        raise errors.Msg("the native sampling kernels are not available (not built, or CANDLEJAX_NATIVE=0)")
    if w.ndim < 1 or w.dtype != jnp.float32 or u.dtype != jnp.float32 or u.shape != w.shape[:-1]:
        raise errors.Msg(f"native.weighted_index: w must be f32 (..., n) and u f32 (...), got {tuple(w.shape)} "
                         f"{w.dtype} and {tuple(u.shape)} {u.dtype}")  # fmt: skip
    out = jax.ShapeDtypeStruct(w.shape[:-1], jnp.int32)
    return jax.ffi.ffi_call(WEIGHTED_INDEX_TARGET, out, vmap_method="broadcast_all")(w, u)
