"""Convolutions, pooling and resizing (NCL / NCHW, PyTorch's layouts, as Candle).

requires: candlejax.tensor._core (TensorBase, unwrap, checks), candlejax._dispatch.op
provides: ConvMixin (conv1d, conv2d, conv_transpose1d, conv_transpose2d, avg_pool2d[_with_stride],
max_pool2d[_with_stride], interpolate1d/upsample_nearest1d, interpolate2d/upsample_nearest2d,
upsample_bilinear2d[_with_scale]), conv2d_with_primal (a 2D convolution valued by another kernel)

Each op is one jitted function over ``lax.conv_general_dilated`` / ``lax.reduce_window`` / static
gathers, so every op here is differentiable (Candle has no backward for conv_transpose1d, for
pooling with stride != kernel, for non-integer nearest upsampling or for bilinear upsampling).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from candlejax import errors
from candlejax._dispatch import op
from candlejax.shape import check_elem_count
from candlejax.tensor._core import TensorBase, check_float, check_same_device, int_arg, wrap

if TYPE_CHECKING:  # Tensor joins the mixins: candlejax.tensor sets this name at runtime (get_type_hints)
    from candlejax.tensor import Tensor

IntOrPair = int | tuple[int, int]

_DN1 = ("NCH", "OIH", "NCH")
_DN2 = ("NCHW", "OIHW", "NCHW")


# --- argument helpers ----------------------------------------------------------------------------
def _int(v: Any, name: str, op_name: str, minimum: int) -> int:
    i = int_arg(v, op_name, name)
    if i < minimum:
        raise errors.Msg(f"{op_name}: {name} must be >= {minimum}, got {i}")
    return i


def to_usize2(v: Any, name: str, op_name: str, minimum: int) -> tuple[int, int]:
    """Candle's ``ToUsize2``: an int ``k`` means ``(k, k)``; a pair is taken as is."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise errors.Msg(f"{op_name}: {name} must be an int or a pair of ints, got {v!r}")
        return (_int(v[0], name, op_name, minimum), _int(v[1], name, op_name, minimum))
    i = _int(v, name, op_name, minimum)
    return (i, i)


def _fmt(p: tuple[int, ...]) -> str:
    return str(p[0]) if len(set(p)) == 1 else "(" + ", ".join(map(str, p)) + ")"


def _dimsn(t: TensorBase, n: int, op_name: str, what: str = "input") -> tuple[int, ...]:
    s = t.shape
    if len(s) != n:
        raise errors.UnexpectedNumberOfDims(n, len(s), s, f"{op_name} {what}")
    return s


_STORAGE_OP = {"conv_transpose1d": "conv-transpose1d"}  # the op Candle's storage dtype check names


def _check_kernel(op_name: str, x: TensorBase, kernel: Any) -> None:
    if not isinstance(kernel, TensorBase):
        raise errors.Msg(f"{op_name}: expected a Tensor kernel, got {type(kernel).__name__}")
    if x._a.dtype != kernel._a.dtype:
        raise errors.DTypeMismatchBinaryOp(x.dtype, kernel.dtype, _STORAGE_OP.get(op_name, op_name))
    if 0 in tuple(kernel._a.shape)[2:]:
        raise errors.Msg(f"{op_name}: the kernel {errors.fmt_shape(kernel._a.shape)} has a zero-size window"
                         " (kernel sizes must be positive, as in PyTorch)")  # fmt: skip
    check_same_device(op_name, x, kernel)


def _check_resizable(t: TensorBase, nd: int, op_name: str) -> None:
    """A resize reads its last ``nd`` dims: none may be empty (PyTorch: "Input and output sizes
    should be greater than 0"; Candle's nearest kernel underflows ``src - 1``)."""
    if 0 in t.shape[-nd:]:
        raise errors.Msg(f"{op_name}: cannot resize an empty input {errors.fmt_shape(t.shape)} (the resized"
                         " dims must be non-empty)")  # fmt: skip


def conv_out_len(n: int, k: int, p: int, s: int, d: int) -> int:
    """``(n + 2p - d(k-1) - 1) / s + 1`` (floor), or <= 0 when the kernel does not fit."""
    span = n + 2 * p - d * (k - 1) - 1
    return -1 if span < 0 else span // s + 1


def _tconv_out(n: int, k: int, p: int, op_: int, s: int, d: int) -> int:
    return (n - 1) * s - 2 * p + d * (k - 1) + op_ + 1


def _memory_limit(a: Any) -> int | None:
    """The bytes ``a``'s device can hold (an accelerator's memory, the host's RAM for the CPU), or None."""
    try:
        dev = next(iter(a.devices()))
    except (AttributeError, TypeError, RuntimeError, StopIteration):  # traced: the default device
        dev = jax.devices()[0]
    return _device_memory(dev)


@functools.lru_cache(maxsize=64)
def _device_memory(dev: Any) -> int | None:
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if dev.platform == "cpu" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None
    return None


def _check_fits_memory(op_name: str, shape: tuple[int, ...], a: Any) -> None:
    """``OutOfMemory`` before compiling an op whose result cannot fit the device: XLA compiles a transposed
    convolution in time proportional to its output, so a huge stride would compile for minutes first."""
    n_bytes = math.prod(shape) * a.dtype.itemsize
    limit = _memory_limit(a)
    if limit is not None and n_bytes > limit:
        raise errors.OutOfMemory(
            op_name, f"the result {errors.fmt_shape(shape)} needs {n_bytes} bytes, the device has {limit}"
        )


# --- jitted kernels ------------------------------------------------------------------------------
#: Depthwise kernels of at most this many taps run as a sum of shifted products on XLA:CPU
DEPTHWISE_MAX_TAPS = 64


@op(static=("padding", "stride", "dilation", "groups", "dn"))
def _conv(x: Any, k: Any, *, padding: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...],
          groups: int, dn: tuple[str, str, str]) -> Any:
    taps = math.prod(k.shape[2:])
    on_cpu = jax.default_backend() == "cpu"
    if taps == 1 and groups == 1 and not any(padding) and on_cpu:
        return _pointwise(x, k, stride)
    if (groups > 1 and groups == x.shape[1] == k.shape[0] and k.shape[1] == 1 and taps <= DEPTHWISE_MAX_TAPS
            and on_cpu):  # fmt: skip
        return _depthwise_shifted(x, k, padding, stride, dilation)
    if on_cpu and is_patch_conv(k.shape[2:], padding, stride, dilation, groups) and dn[0] == "NCHW":
        return _patch_conv(x, k)
    params = _ConvParams(stride, tuple((p, p) for p in padding), dilation, dn, groups)
    # one device only: on a mesh the batch is split over devices already, and slicing it into
    # chunks makes the partitioner move data (2 simulated devices, digits CNN: 191 -> 156 steps/s)
    single = on_cpu and jax.device_count() == 1
    chunk = _weight_grad_chunk(x, k, params) if single else x.shape[dn[0].index("N")]
    if chunk < x.shape[dn[0].index("N")]:
        return _conv_batch_chunked_grad(x, k, params, chunk, None, None)
    return _plain_conv(x, k, params)


def conv2d_with_primal(x: Any, k: Any, primal: Any, *, padding: tuple[int, int], stride: tuple[int, int],
                       dilation: tuple[int, int], kernel_grad: Any = None) -> Any:  # fmt: skip
    """A one-group ``(B, C, H, W)`` x ``(O, C, kh, kw)`` convolution whose value is
    ``primal(x, k, padding, stride, dilation)``, another kernel computing the same convolution (the
    native library's, ``nn.Conv2d.forward``), and whose derivatives are :meth:`conv2d`'s: XLA's
    convolutions, the kernel gradient over batch chunks on a one-device CPU process. With
    ``kernel_grad(x, dy, (kh, kw), padding, stride, dilation) -> (O, C, kh, kw)`` (a kernel computing the
    kernel gradient for the output gradient ``dy``), reverse mode takes the kernel gradient from it."""
    params = _ConvParams(tuple(stride), tuple((p, p) for p in padding), tuple(dilation), _DN2, 1)
    single = jax.default_backend() == "cpu" and jax.device_count() == 1
    chunk = _weight_grad_chunk(x, k, params) if single and kernel_grad is None else x.shape[0]
    return _conv_batch_chunked_grad(x, k, params, chunk, primal, kernel_grad)


class _ConvParams(NamedTuple):
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    dn: tuple[str, str, str]
    groups: int


def _plain_conv(x: Any, k: Any, p: _ConvParams) -> Any:
    return lax.conv_general_dilated(x, k, window_strides=p.stride, padding=p.padding, rhs_dilation=p.dilation,
                                    dimension_numbers=p.dn, feature_group_count=p.groups)  # fmt: skip


#: On XLA:CPU a 2D convolution's kernel gradient runs over batch chunks (see
#: :func:`_conv_batch_chunked_grad`): for small feature maps (< ``WEIGHT_GRAD_SMALL_MAP`` output
#: positions) chunks of about ``WEIGHT_GRAD_CHUNK_POSITIONS`` positions, for larger ones the
#: smallest chunks that keep at most ``WEIGHT_GRAD_MAX_CHUNKS`` convolutions
WEIGHT_GRAD_CHUNK_POSITIONS = 4096
WEIGHT_GRAD_SMALL_MAP = 256
WEIGHT_GRAD_MAX_CHUNKS = 16
#: kernel gradients below this many multiply-adds keep XLA's single convolution
WEIGHT_GRAD_MIN_MACS = 20_000_000


def _weight_grad_chunk(x: Any, k: Any, p: _ConvParams) -> int:
    """The batch chunk for a 2D convolution's kernel gradient (the whole batch: no chunking).

    Measured on the 2-core Intel host (kernel gradient alone; docs/performance.md): chunks of ~4,096
    positions on 8x8 and 14x14 maps, the smallest chunks (1-4 samples) from 16x16 up; 1D
    convolutions gained or lost depending on the stride, so they keep XLA's form."""
    batch = x.shape[p.dn[0].index("N")]
    spatial = [x.shape[p.dn[0].index(c)] for c in p.dn[0] if c not in "NC"]
    if len(spatial) != 2 or batch < 2:
        return batch
    kspatial = [k.shape[p.dn[1].index(c)] for c in p.dn[1] if c not in "OI"]
    dims = zip(spatial, kspatial, p.padding, p.stride, p.dilation)
    positions = math.prod(max(1, conv_out_len(n, kk, lo, st, d)) for n, kk, (lo, _), st, d in dims)
    if batch * positions * math.prod(k.shape) < WEIGHT_GRAD_MIN_MACS:
        return batch
    fits = [c for c in range(1, batch + 1) if batch % c == 0 and batch // c <= WEIGHT_GRAD_MAX_CHUNKS]
    if positions >= WEIGHT_GRAD_SMALL_MAP:
        return fits[0]
    want = max(1, WEIGHT_GRAD_CHUNK_POSITIONS // positions)
    return min(fits, key=lambda c: (abs(math.log(c / want)), -c))


def _conv_value(x: Any, k: Any, p: _ConvParams, primal: Any) -> Any:
    if primal is None:
        return _plain_conv(x, k, p)
    return primal(x, k, tuple(lo for lo, _ in p.padding), p.stride, p.dilation)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5))
def _conv_batch_chunked_grad(x: Any, k: Any, p: _ConvParams, chunk: int, primal: Any, kernel_grad: Any) -> Any:
    """A convolution whose kernel derivative is the sum of the batch chunks' (``chunk`` samples
    each). Values (``primal(x, k, padding, stride, dilation)`` where given) and the input derivative
    are the plain convolution's. XLA:CPU computes a
    kernel gradient over a large batch as one convolution with the batch as contraction, 1.5-3x
    slower than over a few chunks (the digits CNN at batch 256: 3.2 -> 1.9 ms; 64 -> 64 channels
    at 32x32, batch 64: 149 -> 42 ms; ResNet's 7x7 stem at batch 16: 150 -> 62 ms). With
    ``kernel_grad`` (see :func:`conv2d_with_primal`) the kernel gradient is that kernel's, in one
    call over the batch."""
    return _conv_value(x, k, p, primal)


def _conv_batch_chunked_grad_jvp(p: _ConvParams, chunk: int, primal: Any, kernel_grad: Any, primals: tuple[Any, Any],
                                 tangents: tuple[Any, Any]) -> tuple[Any, Any]:  # fmt: skip
    (x, k), (tx, tk) = primals, tangents
    y = _conv_batch_chunked_grad(x, k, p, chunk, primal, kernel_grad)  # itself: its value has derivatives too
    parts = []
    if type(tx) is not SymbolicZero:
        parts.append(_plain_conv(tx, k, p))
    if type(tk) is not SymbolicZero and kernel_grad is not None:  # transposed by kernel_grad
        parts.append(_conv_in_kernel_p.bind(x, tk, params=p, kernel_grad=kernel_grad))
    elif type(tk) is not SymbolicZero:  # linear in tk: its transpose is a sum of per-chunk kernel gradients
        axis = p.dn[0].index("N")
        chunks = [lax.slice_in_dim(x, i, i + chunk, axis=axis) for i in range(0, x.shape[axis], chunk)]
        parts.append(jnp.concatenate([_plain_conv(c, tk, p) for c in chunks], axis=p.dn[2].index("N")))
    if not parts:
        return y, jnp.zeros_like(y)
    return y, parts[0] if len(parts) == 1 else parts[0] + parts[1]


_conv_batch_chunked_grad.defjvp(_conv_batch_chunked_grad_jvp, symbolic_zeros=True)


# --- a convolution as a linear map of its kernel, with its own kernel gradient --------------------
# ``conv(x, k)`` for a known ``x``, linear in ``k``: evaluated (forward mode, other backends) as XLA's
# convolution; transposed (reverse mode) by the ``kernel_grad`` it carries. JAX transposes a
# convolution's kernel term into a convolution contracting over the batch, which XLA:CPU runs on
# copies of ``x`` and the output gradient transposed batch-minor; a custom call cannot be
# transposed by JAX, hence a primitive with its own rules.
_conv_in_kernel_p = Primitive("candlejax_conv_in_kernel")


def _conv_in_kernel_impl(x: Any, k: Any, *, params: _ConvParams, kernel_grad: Any) -> Any:
    return _plain_conv(x, k, params)


def _conv_in_kernel_abstract(x: Any, k: Any, *, params: _ConvParams, kernel_grad: Any) -> Any:
    out = jax.eval_shape(functools.partial(_plain_conv, p=params), x, k)
    return jax.core.ShapedArray(out.shape, out.dtype)


def _conv_in_kernel_transpose(ct: Any, x: Any, k: Any, *, params: _ConvParams, kernel_grad: Any) -> list[Any]:
    if ad.is_undefined_primal(x) or not ad.is_undefined_primal(k):
        raise NotImplementedError("candlejax_conv_in_kernel is linear in its kernel only")
    if type(ct) is ad.Zero:
        return [None, ad.Zero(k.aval)]
    return [None, _kernel_gradient(x, ct, tuple(k.aval.shape), params, kernel_grad).astype(k.aval.dtype)]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _kernel_gradient(x: Any, ct: Any, kernel_shape: tuple[int, ...], params: _ConvParams, kernel_grad: Any) -> Any:
    """``kernel_grad``'s kernel gradient for the output gradient ``ct``, with derivatives (it is
    bilinear in ``x`` and ``ct``) from XLA's form, so that gradients of gradients work."""
    padding = tuple(lo for lo, _ in params.padding)
    return kernel_grad(x, ct, kernel_shape[2:], padding, params.stride, params.dilation)


def _xla_kernel_gradient(x: Any, ct: Any, kernel_shape: tuple[int, ...], params: _ConvParams) -> Any:
    kernel = jax.ShapeDtypeStruct(kernel_shape, ct.dtype)
    (g,) = jax.linear_transpose(functools.partial(_plain_conv, x, p=params), kernel)(ct)
    return g


@_kernel_gradient.defjvp
def _kernel_gradient_jvp(kernel_shape: tuple[int, ...], params: _ConvParams, kernel_grad: Any, primals: Any,
                         tangents: Any) -> tuple[Any, Any]:  # fmt: skip
    (x, ct), (tx, tct) = primals, tangents
    y = _kernel_gradient(x, ct, kernel_shape, params, kernel_grad)
    return y, _xla_kernel_gradient(tx, ct, kernel_shape, params) + _xla_kernel_gradient(x, tct, kernel_shape, params)


def _conv_in_kernel_jvp(primals: Any, tangents: Any, *, params: _ConvParams, kernel_grad: Any) -> tuple[Any, Any]:
    (x, k), (tx, tk) = primals, tangents  # bilinear: d conv(x, k) = conv(dx, k) + conv(x, dk)
    y = _conv_in_kernel_p.bind(x, k, params=params, kernel_grad=kernel_grad)
    parts = []
    if type(tx) is not ad.Zero:
        parts.append(_plain_conv(tx, k, params))
    if type(tk) is not ad.Zero:
        parts.append(_conv_in_kernel_p.bind(x, tk, params=params, kernel_grad=kernel_grad))
    return y, functools.reduce(jnp.add, parts) if parts else jnp.zeros_like(y)


def _conv_in_kernel_batch(args: Any, dims: Any, *, params: _ConvParams, kernel_grad: Any) -> tuple[Any, int]:
    return jax.vmap(functools.partial(_plain_conv, p=params), in_axes=tuple(dims))(*args), 0


_conv_in_kernel_p.def_impl(_conv_in_kernel_impl)
_conv_in_kernel_p.def_abstract_eval(_conv_in_kernel_abstract)
mlir.register_lowering(_conv_in_kernel_p, mlir.lower_fun(_conv_in_kernel_impl, multiple_results=False))
ad.primitive_jvps[_conv_in_kernel_p] = _conv_in_kernel_jvp
ad.primitive_transposes[_conv_in_kernel_p] = _conv_in_kernel_transpose
batching.primitive_batchers[_conv_in_kernel_p] = _conv_in_kernel_batch


def is_patch_conv(kernel: tuple[int, ...], padding: Any, stride: Any, dilation: Any, groups: int) -> bool:
    """Whether a 2D convolution cuts its input into non-overlapping patches (stride = kernel size,
    no padding or dilation, one group): a ViT's patch embedding."""
    return (len(kernel) == 2 and groups == 1 and tuple(stride) == tuple(kernel) and max(kernel) > 1
            and not any(padding) and set(dilation) == {1})  # fmt: skip


def _patch_conv(x: Any, k: Any) -> Any:
    """A patch embedding (stride = kernel, NCHW) as one product over each patch's pixels: XLA:CPU
    runs it 1.4-2.4x faster than its convolution (CLIP's 32x32 patches of a 224² image: 3.9 ->
    1.6 ms; SAM ViT-B's 16x16 of 1024²: 27 -> 17 ms). Rows and columns that do not fill a patch are
    dropped, as the convolution does."""
    return jnp.einsum("nchkwl,ockl->nohw", _windows(x, k.shape[2:]), k, preferred_element_type=x.dtype)


def _pointwise(x: Any, k: Any, stride: tuple[int, ...]) -> Any:
    """A 1x1 convolution (no padding, one group) as a product over the channels: XLA:CPU runs it
    3-11x faster than its convolution path on NCHW inputs (MobileNet / MobileSAM / YOLO 1x1 layers)."""
    nd = k.ndim - 2
    if any(st != 1 for st in stride):
        x = x[(slice(None), slice(None), *(slice(None, None, st) for st in stride))]
    dims = "hwd"[:nd]
    return jnp.einsum(f"nc{dims},oc->no{dims}", x, k.reshape(k.shape[0], k.shape[1]),
                      preferred_element_type=x.dtype)  # fmt: skip


def _depthwise_shifted(x: Any, k: Any, padding: tuple[int, ...], stride: tuple[int, ...],
                       dilation: tuple[int, ...], channels_last: bool = False) -> Any:
    """A depthwise convolution (one filter per channel) as the sum over its taps of a strided slice of
    the padded input times that tap's per-channel weight. XLA:CPU runs grouped convolutions with one
    channel per group on a slow path (10-50x slower than this elementwise form on MobileSAM's and
    MobileNet's 3x3 layers); the sum is fused into one loop. Low-precision inputs accumulate in f32.
    ``channels_last``: ``x`` is ``(N, *spatial, C)`` (the weights broadcast along the last axis)."""
    spatial = k.shape[2:]
    nd = len(spatial)
    acc = jnp.float32 if x.dtype in (jnp.bfloat16, jnp.float16) else x.dtype
    sizes = x.shape[1:-1] if channels_last else x.shape[2:]
    pads = [(p, p) for p in padding]
    xp = jnp.pad(x.astype(acc), [(0, 0), *pads, (0, 0)] if channels_last else [(0, 0), (0, 0), *pads])
    out = [(n + 2 * p - d * (kk - 1) - 1) // st + 1
           for n, p, d, kk, st in zip(sizes, padding, dilation, spatial, stride)]  # fmt: skip
    w = k.astype(acc)
    if channels_last:
        # the weights tap-major, (*K, C): each tap's row is then read along the vectorised channel
        # axis. Sliced from (C, 1, *K) inside the fused loop they are strided loads, ~2.4x slower on
        # XLA:CPU (a 3x3 over 1x256x256x256: 27.6 -> 11.4 ms); XLA fuses a transpose into the loop
        # but not a gather, which makes the (tiny) copy as its own kernel
        c, taps = k.shape[0], math.prod(spatial)
        order = np.arange(c)[None, :] * taps + np.arange(taps)[:, None]
        w = w.reshape(-1)[order].reshape((*spatial, c))
    y = None
    for tap in itertools.product(*(range(kk) for kk in spatial)):
        sl = tuple(slice(t * d, t * d + (o - 1) * st + 1, st) for t, d, o, st in zip(tap, dilation, out, stride))
        if channels_last:
            term = xp[(slice(None), *sl, slice(None))] * w[tap]
        else:
            term = xp[(slice(None), slice(None), *sl)] * w[(slice(None), 0, *tap)].reshape((1, -1) + (1,) * nd)
        y = term if y is None else y + term
    return y.astype(x.dtype)


@op(static=("padding", "stride", "dilation"))
def depthwise_conv2d_nhwc_op(x: Any, k: Any, *, padding: tuple[int, int], stride: tuple[int, int],
                           dilation: tuple[int, int]) -> Any:
    """Depthwise 2D convolution of an ``(N, H, W, C)`` input with a PyTorch ``(C, 1, KH, KW)`` kernel."""
    if jax.default_backend() == "cpu" and math.prod(k.shape[2:]) <= DEPTHWISE_MAX_TAPS:
        return _depthwise_shifted(x, k, padding, stride, dilation, channels_last=True)
    return lax.conv_general_dilated(
        x, k, window_strides=stride, padding=[(p, p) for p in padding], rhs_dilation=dilation,
        dimension_numbers=("NHWC", "OIHW", "NHWC"), feature_group_count=x.shape[-1],
    )


@op(static=("padding", "output_padding", "stride", "dilation", "groups", "dn"))
def _conv_transpose(x: Any, k: Any, *, padding: tuple[int, ...], output_padding: tuple[int, ...],
                    stride: tuple[int, ...], dilation: tuple[int, ...], groups: int,
                    dn: tuple[str, str, str]) -> Any:
    """The transposed convolution as the gradient of a convolution: dilate the input by the stride,
    pad by ``d(k-1) - p`` (+ output_padding on the right), convolve with the flipped kernel whose
    in/out channels are swapped per group. ``k`` is ``(C_in, C_out/groups, *K)`` as in PyTorch."""
    c_in, c_out_g = k.shape[0], k.shape[1]
    spatial = k.shape[2:]
    nd = len(spatial)
    if tuple(stride) == tuple(spatial) and not any(padding) and not any(output_padding) and set(dilation) == {1}:
        return _patch_transpose(x, k, groups)
    k = k.reshape((groups, c_in // groups, c_out_g, *spatial))
    k = jnp.swapaxes(k, 1, 2).reshape((groups * c_out_g, c_in // groups, *spatial))
    k = jnp.flip(k, axis=tuple(range(2, 2 + nd)))
    pads = [
        (d * (ks - 1) - p, d * (ks - 1) - p + o)
        for ks, p, o, d in zip(spatial, padding, output_padding, dilation)
    ]
    # a negative pad (padding wider than the dilated kernel) crops the output instead: XLA:CPU's
    # grouped f32 convolution with one got its kernel gradient wrong (jax 0.10.2)
    y = lax.conv_general_dilated(
        x, k, window_strides=(1,) * nd, padding=[(max(lo, 0), max(hi, 0)) for lo, hi in pads],
        lhs_dilation=stride, rhs_dilation=dilation, dimension_numbers=dn, feature_group_count=groups,
    )
    if all(lo >= 0 and hi >= 0 for lo, hi in pads):
        return y
    crop = [slice(None)] * y.ndim
    for letter, (lo, hi) in zip((c for c in dn[0] if c not in "NC"), pads):
        axis = dn[2].index(letter)
        crop[axis] = slice(max(-lo, 0), y.shape[axis] - max(-hi, 0))
    return y[tuple(crop)]


def _patch_transpose(x: Any, k: Any, groups: int) -> Any:
    """A transposed convolution whose stride equals its kernel (no padding, no dilation): each input
    pixel writes its own ``K`` output patch, so it is one product ``x . k`` and a reshape. XLA:CPU
    runs this 2-6x faster than the input-dilated convolution (SAM's and U-Nets' 2x2 / stride-2
    upsampling)."""
    n, c_in, *size = x.shape
    c_out_g, spatial = k.shape[1], k.shape[2:]
    xg = x.reshape((n, groups, c_in // groups, *size))
    kg = k.reshape((groups, c_in // groups, c_out_g, *spatial))
    if len(spatial) == 1:
        y = jnp.einsum("ngch,gcok->ngohk", xg, kg)
    else:
        y = jnp.einsum("ngchw,gcokl->ngohkwl", xg, kg)
    return y.reshape((n, groups * c_out_g, *(d * s for d, s in zip(size, spatial))))


@op(static=("kernel", "stride"))
def _avg_pool2d(x: Any, *, kernel: tuple[int, int], stride: tuple[int, int]) -> Any:
    # bf16/f16 windows are summed in f32 and rounded once, as PyTorch (and every candlejax reduction):
    # summed in the half dtype a 16x16 bf16 window of values in [1, 2) was ~17 units in the last place off
    acc = jnp.float32 if x.dtype in (jnp.bfloat16, jnp.float16) else x.dtype
    s = lax.reduce_window(x.astype(acc), np.array(0, acc), lax.add, (1, 1, *kernel), (1, 1, *stride), "VALID")
    return (s / (kernel[0] * kernel[1])).astype(x.dtype)


@op(static=("kernel", "stride"))
def _max_pool2d(x: Any, *, kernel: tuple[int, int], stride: tuple[int, int]) -> Any:
    dt = np.dtype(x.dtype)
    if kernel == stride and jnp.issubdtype(dt, jnp.floating):
        return _max_pool_tiles(x, kernel)
    init = np.array(-np.inf, dt) if jnp.issubdtype(dt, jnp.floating) else np.array(np.iinfo(dt).min, dt)
    return lax.reduce_window(x, init, lax.max, (1, 1, *kernel), (1, 1, *stride), "VALID")


def _windows(x: Any, kernel: tuple[int, ...]) -> Any:
    """``(B, C, H, W)`` -> ``(B, C, H // kh, kh, W // kw, kw)``: the non-overlapping windows (the
    rows and columns past the last whole window dropped, as floor-mode pooling and a convolution
    with stride = kernel do)."""
    b, c, h, w = x.shape
    kh, kw = kernel
    ho, wo = h // kh, w // kw
    return x[:, :, : ho * kh, : wo * kw].reshape(b, c, ho, kh, wo, kw)


def _tiles(x: Any, kernel: tuple[int, int]) -> Any:
    """``(B, C, H, W)`` -> ``(B, C, H // kh, W // kw, kh * kw)``: each window's values on the last axis."""
    win = _windows(x, kernel)
    b, c, ho, kh, wo, kw = win.shape
    return win.transpose(0, 1, 2, 4, 3, 5).reshape(b, c, ho, wo, kh * kw)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _max_pool_tiles(x: Any, kernel: tuple[int, int]) -> Any:
    """Max pooling with stride = kernel as a max over each window's values. The derivative goes to
    the first maximum of each window, as ``reduce_window``'s (and PyTorch's) does; XLA:CPU runs
    this ~3x faster than ``reduce_window`` with its select-and-scatter gradient (digits CNN,
    (256, 32, 8, 8): 2.6 -> 0.8 ms forward and backward), with bit-identical values and gradients."""
    return _tiles(x, kernel).max(axis=-1)


@_max_pool_tiles.defjvp
def _max_pool_tiles_jvp(kernel: tuple[int, int], primals: tuple[Any], tangents: tuple[Any]) -> tuple[Any, Any]:
    (x,), (t,) = primals, tangents
    windows = _tiles(x, kernel)
    value, index = _max_and_first_index(windows)
    first = index[..., None] == jnp.arange(windows.shape[-1])
    picked = jnp.where(first, _tiles(t, kernel), jnp.zeros((), t.dtype))
    return value, picked.sum(axis=-1)


@jax.custom_jvp
def _max_and_first_index(windows: Any) -> tuple[Any, Any]:
    """The maximum over the last axis and the index of its first occurrence (NaN counts as the
    largest value, as in ``jnp.max`` / ``jnp.argmax``), as one reduction. Separate ``max`` and
    ``argmax`` are two reductions on XLA:CPU, the first over a transposed copy of the windows (the
    digits CNN's pooling at batch 256: ~0.23 ms of its step). Differentiable (the maximum's
    derivative is the first maximum's), so max pooling has second derivatives."""
    axis = windows.ndim - 1
    iota = lax.broadcasted_iota(jnp.int32, windows.shape, axis)

    def pick(a: tuple[Any, Any], b: tuple[Any, Any]) -> tuple[Any, Any]:
        (av, ai), (bv, bi) = a, b
        a_nan, b_nan = av != av, bv != bv
        ties = (av == bv) | (a_nan & b_nan)
        take_a_index = (av > bv) | (a_nan & ~b_nan) | (ties & (ai < bi))
        return lax.select((av > bv) | a_nan, av, bv), lax.select(take_a_index, ai, bi)

    init = (jnp.array(-jnp.inf, windows.dtype), jnp.array(0, jnp.int32))
    value, index = lax.reduce((windows, iota), init, pick, (axis,))
    return value, index


@_max_and_first_index.defjvp
def _max_and_first_index_jvp(primals: tuple[Any], tangents: tuple[Any]) -> tuple[Any, Any]:
    (windows,), (t,) = primals, tangents
    value, index = _max_and_first_index(windows)
    first = index[..., None] == jnp.arange(windows.shape[-1])
    picked = jnp.where(first, t, jnp.zeros((), t.dtype)).sum(axis=-1)
    return (value, index), (picked, np.zeros(index.shape, jax.dtypes.float0))


def _nearest_index(src: int, dst: int) -> np.ndarray:
    """Candle's (and PyTorch's) nearest source index: ``min(src - 1, floor(i * src / dst))``."""
    scale = src / dst
    return np.minimum(src - 1, np.floor(np.arange(dst, dtype=np.float64) * scale)).astype(np.int32)


@op(static=("sizes",))
def _upsample_nearest(x: Any, *, sizes: tuple[int, ...]) -> Any:
    nd = len(sizes)
    for i, dst in enumerate(sizes):
        axis = x.ndim - nd + i
        x = jnp.take(x, _nearest_index(x.shape[axis], dst), axis=axis)
    return x


def _bilinear_weights(src: int, dst: int, align_corners: bool, scale: float | None):
    """PyTorch's ``area_pixel_compute_source_index``: two source indices and their weights."""
    if align_corners:
        ratio = (src - 1) / (dst - 1) if dst > 1 else 0.0
    else:
        ratio = 1.0 / scale if scale is not None and scale > 0 else src / dst
    i = np.arange(dst, dtype=np.float64)
    pos = ratio * i if align_corners else np.maximum(ratio * (i + 0.5) - 0.5, 0.0)
    i0 = np.minimum(np.floor(pos).astype(np.int64), src - 1)
    i1 = np.where(i0 < src - 1, i0 + 1, i0)
    l1 = pos - i0
    return i0.astype(np.int32), i1.astype(np.int32), 1.0 - l1, l1


@op(static=("sizes", "align_corners", "scales"))
def _upsample_bilinear2d(x: Any, *, sizes: tuple[int, int], align_corners: bool,
                         scales: tuple[float | None, float | None]) -> Any:
    out_dtype = x.dtype
    cdt = jnp.float32 if x.dtype in (jnp.bfloat16, jnp.float16) else x.dtype
    y = x.astype(cdt)
    for axis, dst, scale in ((2, sizes[0], scales[0]), (3, sizes[1], scales[1])):
        i0, i1, w0, w1 = _bilinear_weights(y.shape[axis], dst, align_corners, scale)
        shape = (dst, 1) if axis == 2 else (dst,)
        w0 = jnp.asarray(w0.reshape(shape), cdt)
        w1 = jnp.asarray(w1.reshape(shape), cdt)
        y = jnp.take(y, i0, axis=axis) * w0 + jnp.take(y, i1, axis=axis) * w1
    return y.astype(out_dtype)


# --- the mixin -----------------------------------------------------------------------------------
class ConvMixin(TensorBase):
    """Tensor methods for convolutions, pooling and resizing (Candle's ``Tensor::conv1d``, ``conv2d``,
    ``max_pool2d``, ...)."""

    __slots__ = ()

    # convolutions ------------------------------------------------------------------------------
    def conv1d(self, kernel: Any, padding: int = 0, stride: int = 1, dilation: int = 1, groups: int = 1) -> Tensor:
        """1D convolution, Candle's ``conv1d`` (PyTorch ``F.conv1d``).

        ``self``: ``(B, C_in, L)``, ``kernel``: ``(C_out, C_in / groups, K)`` ->
        ``(B, C_out, (L + 2p - d(K-1) - 1) / s + 1)``. Zero padding on both sides.
        """
        name = "conv1d"
        _check_kernel(name, self, kernel)
        _, c_in, l_in = _dimsn(self, 3, name)
        c_out, c_in_k, k_size = _dimsn(kernel, 3, name, "kernel")
        p = _int(padding, "padding", name, 0)
        s = _int(stride, "stride", name, 1)
        d = _int(dilation, "dilation", name, 1)
        g = _int(groups, "groups", name, 1)
        if c_in != c_in_k * g:
            raise errors.Conv1dInvalidArgs(
                "the number of in-channels on the input doesn't match the kernel size", self.shape, kernel.shape, p, s
            )
        if c_out % g != 0:
            raise errors.Conv1dInvalidArgs(
                f"the number of out-channels {c_out} is not divisible by groups {g}", self.shape, kernel.shape, p, s
            )
        if conv_out_len(l_in, k_size, p, s, d) <= 0:
            raise errors.Conv1dInvalidArgs(
                f"the dilated kernel ({d * (k_size - 1) + 1}) is larger than the padded input ({l_in + 2 * p})",
                self.shape, kernel.shape, p, s,
            )
        check_elem_count((self.shape[0], c_out, conv_out_len(l_in, k_size, p, s, d)), name)
        return wrap(_conv(self._a, kernel._a, padding=(p,), stride=(s,), dilation=(d,), groups=g, dn=_DN1))

    def conv1d_with_algo(self, kernel: Any, padding: int = 0, stride: int = 1, dilation: int = 1,
                         groups: int = 1, cudnn_fwd_algo: Any = None) -> Tensor:
        """``conv1d``; the cuDNN algorithm hint is ignored (XLA picks the algorithm)."""
        return self.conv1d(kernel, padding, stride, dilation, groups)

    def conv2d(self, kernel: Any, padding: IntOrPair = 0, stride: IntOrPair = 1, dilation: IntOrPair = 1,
               groups: int = 1) -> Tensor:
        """2D convolution, Candle's ``conv2d`` (PyTorch ``F.conv2d``).

        ``self``: ``(B, C_in, H, W)``, ``kernel``: ``(C_out, C_in / groups, KH, KW)``.
        ``padding``/``stride``/``dilation`` are ints as in Candle, or ``(h, w)`` pairs (extension).
        """
        name = "conv2d"
        _check_kernel(name, self, kernel)
        _, c_in, i_h, i_w = _dimsn(self, 4, name)
        c_out, c_in_k, k_h, k_w = _dimsn(kernel, 4, name, "kernel")
        p = to_usize2(padding, "padding", name, 0)
        s = to_usize2(stride, "stride", name, 1)
        d = to_usize2(dilation, "dilation", name, 1)
        g = _int(groups, "groups", name, 1)
        if c_in != c_in_k * g:
            raise errors.Msg(f"in_channel mismatch between input ({c_in}, groups {g}) and kernel ({c_in_k})")
        if c_out % g != 0:
            raise errors.Msg(f"conv2d: out_channel {c_out} is not divisible by groups {g}")
        for n, k, pp, ss, dd in ((i_h, k_h, p[0], s[0], d[0]), (i_w, k_w, p[1], s[1], d[1])):
            if conv_out_len(n, k, pp, ss, dd) <= 0:
                raise errors.Conv1dInvalidArgs(
                    f"the dilated kernel ({dd * (k - 1) + 1}) is larger than the padded input ({n + 2 * pp})",
                    self.shape, kernel.shape, _fmt(p), _fmt(s), op="conv2d",
                )
        out_hw = (conv_out_len(i_h, k_h, p[0], s[0], d[0]), conv_out_len(i_w, k_w, p[1], s[1], d[1]))
        check_elem_count((self.shape[0], c_out, *out_hw), name)
        return wrap(_conv(self._a, kernel._a, padding=p, stride=s, dilation=d, groups=g, dn=_DN2))

    def conv2d_with_algo(self, kernel: Any, padding: IntOrPair = 0, stride: IntOrPair = 1,
                         dilation: IntOrPair = 1, groups: int = 1, cudnn_fwd_algo: Any = None) -> Tensor:
        """``conv2d``; the cuDNN algorithm hint is ignored (XLA picks the algorithm)."""
        return self.conv2d(kernel, padding, stride, dilation, groups)

    def _conv_transpose(self, name: str, nd: int, kernel: Any, padding: Any, output_padding: Any,
                        stride: Any, dilation: Any, groups: Any) -> Any:
        _check_kernel(name, self, kernel)
        xs = _dimsn(self, 2 + nd, name)
        ks = _dimsn(kernel, 2 + nd, name, "kernel")
        conv = to_usize2 if nd == 2 else (lambda v, n, o, m: (_int(v, n, o, m),))
        p = conv(padding, "padding", name, 0)
        op_ = conv(output_padding, "output_padding", name, 0)
        s = conv(stride, "stride", name, 1)
        d = conv(dilation, "dilation", name, 1)
        g = _int(groups, "groups", name, 1)
        c_in, c_in_k = xs[1], ks[0]
        if c_in != c_in_k:
            raise errors.Msg(f"in_channel mismatch between input ({c_in}) and kernel ({c_in_k})")
        if c_in % g != 0:
            raise errors.Msg(f"in_channel {c_in} is not divisible by the number of groups")
        for o, ss, dd in zip(op_, s, d):
            if o >= max(ss, dd):
                raise errors.Msg(
                    f"{name}: output_padding ({_fmt(op_)}) must be smaller than either stride ({_fmt(s)})"
                    f" or dilation ({_fmt(d)})"
                )
        for n, k, pp, o, ss, dd in zip(xs[2:], ks[2:], p, op_, s, d):
            if _tconv_out(n, k, pp, o, ss, dd) <= 0:
                raise errors.Conv1dInvalidArgs(
                    f"the padding is too large, the output would be empty ({_tconv_out(n, k, pp, o, ss, dd)})",
                    self.shape, kernel.shape, _fmt(p), _fmt(s), op=name,
                )
        out = tuple(_tconv_out(n, k, pp, o, ss, dd) for n, k, pp, o, ss, dd in zip(xs[2:], ks[2:], p, op_, s, d))
        _check_fits_memory(name, check_elem_count((xs[0], ks[1] * g, *out), name), self._a)
        dn = _DN1 if nd == 1 else _DN2
        return wrap(_conv_transpose(self._a, kernel._a, padding=p, output_padding=op_, stride=s, dilation=d,
                                    groups=g, dn=dn))

    def conv_transpose1d(self, kernel: Any, padding: int = 0, output_padding: int = 0, stride: int = 1,
                         dilation: int = 1, groups: int = 1) -> Tensor:
        """1D transposed convolution, Candle's ``conv_transpose1d`` (PyTorch ``F.conv_transpose1d``).

        ``self``: ``(B, C_in, L)``, ``kernel``: ``(C_in, C_out / groups, K)`` ->
        ``(B, C_out, (L-1)s - 2p + d(K-1) + output_padding + 1)``. Differentiable (Candle's is not).
        """
        return self._conv_transpose("conv_transpose1d", 1, kernel, padding, output_padding, stride, dilation, groups)

    def conv_transpose2d(self, kernel: Any, padding: IntOrPair = 0, output_padding: IntOrPair = 0,
                         stride: IntOrPair = 1, dilation: IntOrPair = 1, groups: int = 1) -> Tensor:
        """2D transposed convolution, Candle's ``conv_transpose2d`` (PyTorch ``F.conv_transpose2d``).

        ``self``: ``(B, C_in, H, W)``, ``kernel``: ``(C_in, C_out / groups, KH, KW)``. ``groups`` and
        ``(h, w)`` pairs are extensions over Candle.
        """
        return self._conv_transpose("conv_transpose2d", 2, kernel, padding, output_padding, stride, dilation, groups)

    # pooling -----------------------------------------------------------------------------------
    def _pool_args(self, name: str, kernel_size: Any, stride: Any) -> tuple[tuple[int, int], tuple[int, int]]:
        k = to_usize2(kernel_size, "kernel-size", name, 1)
        s = to_usize2(stride, "stride", name, 1)
        _, _, h, w = _dimsn(self, 4, name)
        if h < k[0] or w < k[1]:
            raise errors.Msg(f"kernel-size ({k[0]}, {k[1]}) is larger than the input size {h},{w}")
        return k, s

    def avg_pool2d(self, kernel_size: IntOrPair) -> Tensor:
        """2D average pooling with stride = kernel size, no padding, floor (PyTorch ``F.avg_pool2d``)."""
        return self.avg_pool2d_with_stride(kernel_size, kernel_size)

    def avg_pool2d_with_stride(self, kernel_size: IntOrPair, stride: IntOrPair) -> Tensor:
        """2D average pooling of ``(B, C, H, W)`` -> ``(B, C, (H-kh)/sh + 1, (W-kw)/sw + 1)``."""
        name = "avg_pool2d"
        k, s = self._pool_args(name, kernel_size, stride)
        check_float(name, self)
        return wrap(_avg_pool2d(self._a, kernel=k, stride=s))

    def max_pool2d(self, kernel_size: IntOrPair) -> Tensor:
        """2D max pooling with stride = kernel size, no padding, floor (PyTorch ``F.max_pool2d``)."""
        return self.max_pool2d_with_stride(kernel_size, kernel_size)

    def max_pool2d_with_stride(self, kernel_size: IntOrPair, stride: IntOrPair) -> Tensor:
        """2D max pooling of ``(B, C, H, W)`` -> ``(B, C, (H-kh)/sh + 1, (W-kw)/sw + 1)``."""
        k, s = self._pool_args("max_pool2d", kernel_size, stride)
        return wrap(_max_pool2d(self._a, kernel=k, stride=s))

    # resizing ----------------------------------------------------------------------------------
    def interpolate1d(self, target_size: int) -> Tensor:
        """Nearest-neighbour resize of ``(B, C, L)`` to ``(B, C, target_size)``
        (PyTorch ``F.interpolate(mode="nearest")``): source index ``floor(i * L / target_size)``."""
        _dimsn(self, 3, "interpolate1d")
        _check_resizable(self, 1, "interpolate1d")
        n = _int(target_size, "target_size", "interpolate1d", 1)
        check_elem_count((*self.shape[:2], n), "interpolate1d")
        return wrap(_upsample_nearest(self._a, sizes=(n,)))

    def upsample_nearest1d(self, target_size: int) -> Tensor:
        """Alias of ``interpolate1d``."""
        return self.interpolate1d(target_size)

    def interpolate2d(self, target_h: int, target_w: int) -> Tensor:
        """Nearest-neighbour resize of ``(B, C, H, W)`` to ``(B, C, target_h, target_w)``."""
        _dimsn(self, 4, "interpolate2d")
        _check_resizable(self, 2, "interpolate2d")
        h = _int(target_h, "target_h", "interpolate2d", 1)
        w = _int(target_w, "target_w", "interpolate2d", 1)
        check_elem_count((*self.shape[:2], h, w), "interpolate2d")
        return wrap(_upsample_nearest(self._a, sizes=(h, w)))

    def upsample_nearest2d(self, target_h: int, target_w: int) -> Tensor:
        """Alias of ``interpolate2d``."""
        return self.interpolate2d(target_h, target_w)

    def upsample_bilinear2d(self, target_h: int, target_w: int, align_corners: bool = False) -> Tensor:
        """Bilinear resize of ``(B, C, H, W)`` to ``(B, C, target_h, target_w)``, as PyTorch's
        ``F.interpolate(mode="bilinear", size=..., align_corners=...)``. Differentiable."""
        name = "upsample_bilinear2d"
        _dimsn(self, 4, name)
        check_float(name, self)
        _check_resizable(self, 2, name)
        h = _int(target_h, "target_h", name, 1)
        w = _int(target_w, "target_w", name, 1)
        check_elem_count((*self.shape[:2], h, w), name)
        return wrap(_upsample_bilinear2d(self._a, sizes=(h, w), align_corners=bool(align_corners),
                                         scales=(None, None)))

    def upsample_bilinear2d_with_scale(self, scale_h: float, scale_w: float, align_corners: bool = False) -> Tensor:
        """Bilinear resize by scale factors, as ``F.interpolate(scale_factor=(sh, sw), mode="bilinear")``:
        output size ``floor(H * sh)``; the input itself when the size does not change."""
        name = "upsample_bilinear2d_with_scale"
        _, _, h, w = _dimsn(self, 4, name)
        check_float(name, self)
        _check_resizable(self, 2, name)
        try:
            sh, sw = float(scale_h), float(scale_w)
        except (TypeError, ValueError):
            raise errors.Msg(f"{name}: scale factors must be numbers, got {scale_h!r}, {scale_w!r}") from None
        if not (sh > 0 and sw > 0 and math.isfinite(sh) and math.isfinite(sw)):
            raise errors.Msg(f"{name}: scale factors must be positive, got ({sh}, {sw})")
        oh, ow = math.floor(h * sh), math.floor(w * sw)
        if oh < 1 or ow < 1:
            raise errors.Msg(f"{name}: scale ({sh}, {sw}) gives an empty output ({oh}, {ow}) for input ({h}, {w})")
        if (oh, ow) == (h, w):
            return self
        check_elem_count((*self.shape[:2], oh, ow), name)
        return wrap(_upsample_bilinear2d(self._a, sizes=(oh, ow), align_corners=bool(align_corners),
                                         scales=(sh, sw)))


__all__ = ["ConvMixin", "conv_out_len", "depthwise_conv2d_nhwc_op", "to_usize2"]
