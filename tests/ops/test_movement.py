"""Shape/movement ops vs numpy (eager and under jax.jit), gradients vs jax.numpy, candle-pyo3 parity,
and one bad-input test per Candle error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from candlejax import D, Shape, Tensor, errors

candle = pytest.importorskip("candle")

BF16 = np.dtype(jnp.bfloat16)
DTYPES = [np.float32, BF16, np.int32, np.uint8]


def tt(x) -> Tensor:
    return Tensor._wrap(jnp.asarray(x))


def rand(rng, shape, dtype=np.float32) -> np.ndarray:
    x = rng.standard_normal(shape) * 10
    return x.astype(dtype) if np.dtype(dtype).kind == "f" or dtype is BF16 else np.abs(x).astype(dtype)


def assert_same(got, want, dtype):
    """got (numpy or list of numpy) equals want exactly, with dtype kept."""
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w, dtype)
        return
    got = np.asarray(got)
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))


def to_np(r):
    return [np.asarray(x) for x in r] if isinstance(r, (list, tuple)) else np.asarray(r)


# (name, shapes, candlejax fn, numpy fn)
CASES = [
    ("reshape_hole", [(2, 3, 4), (6,)], lambda t: t.reshape((2, ())), lambda x: x.reshape(2, -1)),
    ("reshape_varargs", [(2, 3, 4), (4, 6)], lambda t: t.reshape(-1, 2), lambda x: x.reshape(-1, 2)),
    ("reshape_shape", [(2, 3, 4)], lambda t: t.reshape(Shape((4, 6))), lambda x: x.reshape(4, 6)),
    ("transpose", [(2, 3, 4), (3, 5)], lambda t: t.transpose(0, -1), lambda x: np.swapaxes(x, 0, -1)),
    ("transpose_same", [(2, 3)], lambda t: t.transpose(1, D.Minus1), lambda x: x),
    ("t", [(2, 3, 4), (3, 5)], lambda t: t.t(), lambda x: np.swapaxes(x, -1, -2)),
    ("permute", [(2, 3, 4)], lambda t: t.permute((2, 0, 1)), lambda x: x.transpose(2, 0, 1)),
    ("permute_varargs", [(2, 3, 4, 1)], lambda t: t.permute(3, D.Minus2, 0, 1), lambda x: x.transpose(3, 2, 0, 1)),
    ("squeeze", [(2, 1, 4)], lambda t: t.squeeze(1), lambda x: x.squeeze(1)),
    ("squeeze_noop", [(2, 3, 4)], lambda t: t.squeeze(1), lambda x: x),
    ("squeeze_D", [(2, 3, 1)], lambda t: t.squeeze(D.Minus1), lambda x: x[..., 0]),
    ("unsqueeze0", [(2, 3), ()], lambda t: t.unsqueeze(0), lambda x: x[None]),
    ("unsqueeze_end", [(2, 3)], lambda t: t.unsqueeze(D.Minus1), lambda x: x[..., None]),
    ("unsqueeze_neg", [(2, 3)], lambda t: t.unsqueeze(-1), lambda x: x[..., None]),
    ("unsqueeze_rank", [(2, 3)], lambda t: t.unsqueeze(2), lambda x: x[..., None]),
    ("flatten", [(2, 3, 4, 5)], lambda t: t.flatten(1, 2), lambda x: x.reshape(x.shape[0], -1, x.shape[-1])),
    ("flatten_to", [(2, 3, 4)], lambda t: t.flatten_to(1), lambda x: x.reshape(-1, x.shape[-1])),
    ("flatten_from", [(2, 3, 4)], lambda t: t.flatten_from(1), lambda x: x.reshape(x.shape[0], -1)),
    ("flatten_all", [(2, 3, 4), ()], lambda t: t.flatten_all(), lambda x: x.reshape(-1)),
    ("flatten_noop", [(2, 3, 4)], lambda t: t.flatten(2, 1), lambda x: x),
    ("narrow", [(5, 6)], lambda t: t.narrow(1, 2, 3), lambda x: x[:, 2:5]),
    ("narrow_neg", [(5, 6)], lambda t: t.narrow(D.Minus2, -3, 2), lambda x: x[-3:-1]),
    ("narrow_full", [(5, 6)], lambda t: t.narrow(0, 0, 5), lambda x: x),
    ("narrow_empty", [(5, 6)], lambda t: t.narrow(0, 5, 0), lambda x: x[5:5]),
    ("chunk", [(10, 3)], lambda t: t.chunk(4, 0), lambda x: [x[0:3], x[3:6], x[6:8], x[8:10]]),
    ("chunk_small", [(2, 3)], lambda t: t.chunk(4, 0), lambda x: [x[0:1], x[1:2]]),
    ("chunk_even", [(3, 6)], lambda t: t.chunk(3, -1), lambda x: np.split(x, 3, axis=-1)),
    ("split_int", [(7, 2)], lambda t: t.split(3), lambda x: [x[0:3], x[3:6], x[6:7]]),
    ("split_list", [(2, 7)], lambda t: t.split([2, 5], 1), lambda x: [x[:, :2], x[:, 2:]]),
    ("get", [(4, 3)], lambda t: t.get(2), lambda x: x[2]),
    ("get_neg", [(4, 3)], lambda t: t.get(-1), lambda x: x[-1]),
    ("get_rank0", [()], lambda t: t.get(0), lambda x: x),
    ("get_on_dim", [(4, 3, 2)], lambda t: t.get_on_dim(1, 2), lambda x: x[:, 2]),
    ("broadcast_as", [(3, 1)], lambda t: t.broadcast_as((2, 3, 4)), lambda x: np.broadcast_to(x, (2, 3, 4))),
    ("broadcast_as_var", [(1, 4)], lambda t: t.broadcast_as(3, 4), lambda x: np.broadcast_to(x, (3, 4))),
    ("expand", [(3, 1)], lambda t: t.expand((2, 3, 4)), lambda x: np.broadcast_to(x, (2, 3, 4))),
    ("expand_minus1", [(3, 1)], lambda t: t.expand(2, -1, 5), lambda x: np.broadcast_to(x, (2, 3, 5))),
    (
        "broadcast_left",
        [(3,), (2, 3)],
        lambda t: t.broadcast_left((4, 2)),
        lambda x: np.broadcast_to(x, (4, 2, *x.shape)),
    ),
    ("contiguous", [(2, 3)], lambda t: t.contiguous(), lambda x: x),
    ("force_contiguous", [(2, 3)], lambda t: t.force_contiguous(), lambda x: x),
    ("pad_zeros", [(3, 4)], lambda t: t.pad_with_zeros(1, 2, 1), lambda x: np.pad(x, ((0, 0), (2, 1)))),
    ("pad_zeros_left", [(3, 4)], lambda t: t.pad_with_zeros(0, 1, 0), lambda x: np.pad(x, ((1, 0), (0, 0)))),
    ("pad_same", [(3, 4)], lambda t: t.pad_with_same(D.Minus1, 2, 3), lambda x: np.pad(x, ((0, 0), (2, 3)), "edge")),
    ("pad_same_right", [(3, 4)], lambda t: t.pad_with_same(0, 0, 2), lambda x: np.pad(x, ((0, 2), (0, 0)), "edge")),
    ("repeat", [(2, 3)], lambda t: t.repeat((2, 3)), lambda x: np.tile(x, (2, 3))),
    ("repeat_extend", [(2, 3)], lambda t: t.repeat(2, 1, 2), lambda x: np.tile(x, (2, 1, 2))),
    ("repeat_zero", [(2, 3)], lambda t: t.repeat((0, 1)), lambda x: x[:0]),
    ("repeat_fewer", [(2, 3)], lambda t: t.repeat((3,)), lambda x: np.tile(x, (3, 1))),
    ("roll", [(5, 3)], lambda t: t.roll(2, 0), lambda x: np.roll(x, 2, 0)),
    ("roll_neg", [(5, 3)], lambda t: t.roll(-4, D.Minus1), lambda x: np.roll(x, -4, -1)),
    ("roll_zero", [(5, 3)], lambda t: t.roll(5, 0), lambda x: x),
    ("flip", [(3, 4, 2)], lambda t: t.flip([0, 2]), lambda x: x[::-1, :, ::-1]),
    ("flip_int", [(3, 4)], lambda t: t.flip(-1), lambda x: x[:, ::-1]),
    ("unfold", [(7, 3)], lambda t: t.unfold(0, 3, 2), lambda x: np.stack([x[i : i + 3].T for i in range(0, 5, 2)])),
    ("unfold_last", [(2, 6)], lambda t: t.unfold(1, 2, 1), lambda x: np.lib.stride_tricks.sliding_window_view(x, 2, 1)),
]


OTHER_DTYPES = {"reshape_hole", "permute", "narrow", "chunk", "get", "broadcast_as", "pad_zeros", "pad_same", "repeat"}
OTHER_DTYPES |= {"roll", "flip", "unfold", "unsqueeze0", "flatten"}
PARAMS = [(c, d) for d in DTYPES for c in CASES if d is np.float32 or c[0] in OTHER_DTYPES]


def _cases_for(dtype):
    return [c for c in CASES if dtype is np.float32 or c[0] in OTHER_DTYPES]


@pytest.mark.parametrize(("case", "dtype"), PARAMS, ids=[f"{c[0]}-{np.dtype(d).name}" for c, d in PARAMS])
def test_eager_vs_numpy(case, dtype, rng):
    _, shapes, f, ref = case
    for shape in shapes:
        x = rand(rng, shape, dtype)
        assert_same(to_np(f(tt(x))), ref(x), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_jit_vs_numpy(dtype, rng):
    """Every case under one jax.jit (one compile) against numpy."""
    cases = _cases_for(dtype)
    xs = {c[0]: [rand(rng, s, dtype) for s in c[1]] for c in cases}
    ts = {k: [tt(x) for x in v] for k, v in xs.items()}
    out = jax.jit(lambda ts: {c[0]: [c[2](t) for t in ts[c[0]]] for c in cases})(ts)
    for name, _shapes, _, ref in cases:
        for got, x in zip(out[name], xs[name]):
            assert_same(to_np(got), ref(x), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_cat_stack(dtype, rng):
    xs = [rand(rng, (2, n, 3), dtype) for n in (1, 4, 2)]
    ts = [tt(x) for x in xs]
    ys = [rand(rng, (2, 3), dtype) for _ in range(3)]
    us = [tt(y) for y in ys]
    stack_dims = [(0, 0), (2, 2), (-1, 2), (D.Minus1, 2), (D.Minus2, 1)]

    def f(ts, us):
        return [Tensor.cat(ts, 1), Tensor.cat(ts, D.Minus2)] + [Tensor.stack(us, d) for d, _ in stack_dims]

    want = [np.concatenate(xs, 1)] * 2 + [np.stack(ys, d) for _, d in stack_dims]
    assert_same(to_np(f(ts, us)), want, dtype)
    assert_same(to_np(jax.jit(f)(ts, us)), want, dtype)
    assert Tensor.cat([us[0]], 0) is us[0]
    assert Tensor.stack([us[0]], 0).shape == (1, 2, 3)


def test_stride_and_layout():
    t = tt(np.zeros((2, 3, 4), np.float32))
    assert t.stride() == (12, 4, 1)
    assert t.transpose(0, 2).stride() == (6, 2, 1)
    assert tt(np.zeros((), np.float32)).stride() == ()
    assert t.is_contiguous() and t.contiguous() is t
    assert not t.is_fortran_contiguous()
    assert tt(np.zeros((1, 5, 1), np.float32)).is_fortran_contiguous()
    c = candle.Tensor(np.zeros((2, 3, 4), np.float32))
    assert tuple(c.stride) == t.stride()
    # candle-pyo3's `stride` is a getter giving a tuple: the attribute form reads the same values
    assert t.stride == c.stride == (12, 4, 1) and t.stride[0] == c.stride[0] == 12
    assert isinstance(t.stride, tuple) and list(t.stride) == list(c.stride)


def test_noops_return_self():
    t = tt(np.zeros((2, 3), np.float32))
    assert t.squeeze(0) is t
    assert t.reshape(2, 3) is t
    assert t.transpose(0, 0) is t
    assert t.narrow(1, 0, 3) is t
    assert t.pad_with_zeros(0, 0, 0) is t
    assert t.permute(0, 1) is t
    assert t.chunk(1, 0)[0] is t


def test_reshape_rank0_and_scalar():
    t = tt(np.float32(3.0))
    assert t.reshape(1).shape == (1,)
    assert t.reshape(1).reshape(()).shape == ()
    assert t.unsqueeze(0).shape == (1,)


# --- gradients ----------------------------------------------------------------------------------

GRAD_CASES = [
    ("reshape", (2, 3, 4), lambda t: t.reshape(4, ()), lambda x: x.reshape(4, -1)),
    ("transpose", (2, 3, 4), lambda t: t.transpose(0, 2), lambda x: jnp.swapaxes(x, 0, 2)),
    ("permute", (2, 3, 4), lambda t: t.permute(1, 2, 0), lambda x: x.transpose(1, 2, 0)),
    ("squeeze", (2, 1, 4), lambda t: t.squeeze(1).unsqueeze(0), lambda x: x[None, :, 0]),
    ("flatten", (2, 3, 4), lambda t: t.flatten_from(1), lambda x: x.reshape(2, -1)),
    ("narrow", (4, 5), lambda t: t.narrow(1, 1, 3), lambda x: x[:, 1:4]),
    ("chunk", (5, 3), lambda t: t.chunk(2, 0)[1], lambda x: x[3:]),
    ("get", (4, 3), lambda t: t.get(2), lambda x: x[2]),
    ("broadcast", (3, 1), lambda t: t.broadcast_as((2, 3, 4)), lambda x: jnp.broadcast_to(x, (2, 3, 4))),
    ("broadcast_left", (3,), lambda t: t.broadcast_left(2), lambda x: jnp.broadcast_to(x, (2, 3))),
    ("pad_zeros", (3, 4), lambda t: t.pad_with_zeros(0, 1, 2), lambda x: jnp.pad(x, ((1, 2), (0, 0)))),
    ("pad_same", (3, 4), lambda t: t.pad_with_same(1, 2, 2), lambda x: jnp.pad(x, ((0, 0), (2, 2)), "edge")),
    ("repeat", (2, 3), lambda t: t.repeat(2, 2), lambda x: jnp.tile(x, (2, 2))),
    ("roll", (5, 2), lambda t: t.roll(2, 0), lambda x: jnp.roll(x, 2, 0)),
    ("flip", (3, 4), lambda t: t.flip([1]), lambda x: x[:, ::-1]),
    ("unfold", (7, 2), lambda t: t.unfold(0, 3, 2), lambda x: jnp.stack([x[i : i + 3].T for i in range(0, 5, 2)])),
    ("force_contiguous", (2, 3), lambda t: t.force_contiguous(), lambda x: x),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_grad(case, rng):
    _, shape, f, ref = case
    x = jnp.asarray(rand(rng, shape))
    w = jnp.asarray(rng.standard_normal(np.shape(ref(x))).astype(np.float32))
    g = jax.jit(jax.grad(lambda t: (f(t).jax * w).sum()))(tt(x))
    want = jax.jit(jax.grad(lambda a: (ref(a) * w).sum()))(x)
    np.testing.assert_allclose(np.asarray(g.jax), np.asarray(want), rtol=1e-6)


def test_grad_cat_stack(rng):
    xs = [jnp.asarray(rand(rng, (2, n))) for n in (1, 3)]
    w = jnp.asarray(rng.standard_normal((2, 4)).astype(np.float32))
    g = jax.jit(jax.grad(lambda ts: (Tensor.cat(ts, 1).jax * w).sum()))([tt(x) for x in xs])
    np.testing.assert_allclose(np.asarray(g[0].jax), np.asarray(w[:, :1]))
    np.testing.assert_allclose(np.asarray(g[1].jax), np.asarray(w[:, 1:]))
    w2 = jnp.asarray(rng.standard_normal((2, 2, 3)).astype(np.float32))
    ys = [jnp.asarray(rand(rng, (2, 3))) for _ in range(2)]
    g = jax.jit(jax.grad(lambda ts: (Tensor.stack(ts, 1).jax * w2).sum()))([tt(y) for y in ys])
    np.testing.assert_allclose(np.asarray(g[1].jax), np.asarray(w2[:, 1]))


# --- candle-pyo3 parity -------------------------------------------------------------------------

PYO3 = [
    ("reshape", lambda t: t.reshape((4, 6))),
    ("narrow", lambda t: t.narrow(1, 1, 2)),
    ("narrow_neg", lambda t: t.narrow(-1, -3, 2)),
    ("squeeze", lambda t: t.narrow(1, 0, 1).squeeze(1)),
    ("unsqueeze", lambda t: t.unsqueeze(1)),
    ("transpose", lambda t: t.transpose(0, 2)),
    ("t", lambda t: t.t()),
    ("flatten_from", lambda t: t.flatten_from(1)),
    ("flatten_to", lambda t: t.flatten_to(1)),
    ("flatten_all", lambda t: t.flatten_all()),
    ("broadcast_as", lambda t: t.broadcast_as((3, 2, 3, 4))),
    ("broadcast_left", lambda t: t.broadcast_left((2,))),
    ("get", lambda t: t.get(1)),
    ("get_neg", lambda t: t.get(-1)),
    ("contiguous", lambda t: t.transpose(0, 1).contiguous()),
]


def _np(c) -> np.ndarray:
    """A candle-pyo3 tensor as numpy (its values() stops at rank 3, so go through flatten_all)."""
    return np.asarray(c.flatten_all().values(), np.float32).reshape(c.shape)


@pytest.mark.parametrize("case", PYO3, ids=[c[0] for c in PYO3])
def test_vs_candle_pyo3(case, rng):
    _, f = case
    x = rand(rng, (2, 3, 4))
    want = _np(f(candle.Tensor(x)))
    got = np.asarray(f(tt(x)))
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_cat_stack_vs_candle_pyo3(rng):
    xs = [rand(rng, (2, n, 3)) for n in (1, 2)]
    want = _np(candle.cat([candle.Tensor(x) for x in xs], 1))
    np.testing.assert_array_equal(np.asarray(Tensor.cat([tt(x) for x in xs], 1)), want)
    want = _np(candle.cat([candle.Tensor(x) for x in xs], -2))
    np.testing.assert_array_equal(np.asarray(Tensor.cat([tt(x) for x in xs], -2)), want)
    ys = [rand(rng, (2, 3)) for _ in range(3)]
    for d in (0, 1, 2):
        want = _np(candle.stack([candle.Tensor(y) for y in ys], d))
        np.testing.assert_array_equal(np.asarray(Tensor.cat([tt(y) for y in ys[:1]], d - 1)), ys[0])
        np.testing.assert_array_equal(np.asarray(Tensor.stack([tt(y) for y in ys], d)), want)
    # one tensor: the dim is checked all the same, as candle-pyo3 and PyTorch do
    for d in (2, -3):
        with pytest.raises(ValueError):
            candle.cat([candle.Tensor(ys[0])], d)
        with pytest.raises(errors.DimOutOfRange, match=f"cat: dimension index {d} out of range"):
            Tensor.cat([tt(ys[0])], d)


# --- errors -------------------------------------------------------------------------------------


def _t(*shape, dtype=np.float32):
    return tt(np.zeros(shape, dtype))


ERRORS = [
    ("reshape_count", lambda: _t(2, 3).reshape(4, 4), errors.ShapeMismatch, "Shape mismatch, got buffer of size 6"),
    ("reshape_hole", lambda: _t(7).reshape((2, ())), errors.Msg, "cannot reshape tensor with 7 elements to (2, ())"),
    (
        "transpose_dim",
        lambda: _t(2, 3).transpose(0, 2),
        errors.DimOutOfRange,
        "transpose: dimension index 2 out of range for shape [2, 3]",
    ),
    ("t_rank", lambda: _t(3).t(), errors.UnexpectedNumberOfDims, "unexpected rank, expected: 2, got: 1 ([3])"),
    (
        "permute_not_perm",
        lambda: _t(2, 3, 4).permute(0, 1),
        errors.Msg,
        "dimension mismatch in permute, tensor [2, 3, 4], dims: [0, 1]",
    ),
    ("permute_dup", lambda: _t(2, 3).permute(0, 0), errors.DuplicateDimIndex, "permute: duplicate dim index [0, 0]"),
    ("squeeze_dim", lambda: _t(2, 3).squeeze(2), errors.DimOutOfRange, "squeeze: dimension index 2"),
    ("unsqueeze_dim", lambda: _t(2, 3).unsqueeze(3), errors.DimOutOfRange, "unsqueeze: dimension index 3"),
    ("unsqueeze_neg", lambda: _t(2, 3).unsqueeze(-4), errors.DimOutOfRange, "unsqueeze"),
    ("flatten_dim", lambda: _t(2, 3).flatten(0, 5), errors.DimOutOfRange, "flatten"),
    (
        "narrow_len",
        lambda: _t(2, 2).narrow(1, 1, 3),
        errors.NarrowInvalidArgs,
        "narrow invalid args start + len > dim_len: [2, 2], dim: 1, start: 1, len:3",
    ),
    ("narrow_start", lambda: _t(2, 2).narrow(1, 3, 0), errors.NarrowInvalidArgs, "start > dim_len"),
    ("narrow_dim", lambda: _t(2, 2).narrow(2, 0, 1), errors.DimOutOfRange, "narrow: dimension index 2"),
    ("narrow_neglen", lambda: _t(2, 2).narrow(0, 0, -1), errors.NarrowInvalidArgs, "len < 0"),
    ("chunk_zero", lambda: _t(4).chunk(0, 0), errors.Msg, "chunk"),
    ("split_sum", lambda: _t(4).split([1, 2]), errors.Msg, "sum to the size 4"),
    (
        "get_oob",
        lambda: _t(3, 2).get(3),
        errors.NarrowInvalidArgs,
        "start + len > dim_len: [3, 2], dim: 0, start: 3, len:1",
    ),
    (
        "get_on_dim_oob",
        lambda: _t(3, 2).get_on_dim(1, -3),
        errors.InvalidIndex,
        "get_on_dim invalid index -3 with dim size 2",
    ),
    ("cat_empty", lambda: Tensor.cat([], 0), errors.OpRequiresAtLeastOneTensor, "cat expects at least one tensor"),
    (
        "stack_empty",
        lambda: Tensor.stack([], 0),
        errors.OpRequiresAtLeastOneTensor,
        "stack expects at least one tensor",
    ),
    (
        "cat_shape",
        lambda: Tensor.cat([_t(2, 3), _t(2, 4)], 0),
        errors.ShapeMismatchCat,
        "shape mismatch in cat for dim 1, shape for arg 1: [2, 3] shape for arg 2: [2, 4]",
    ),
    ("cat_rank", lambda: Tensor.cat([_t(2, 3), _t(2, 3, 1)], 0), errors.UnexpectedNumberOfDims, "expected: 2, got: 3"),
    (
        "cat_dtype",
        lambda: Tensor.cat([_t(2), _t(2, dtype=np.int32)], 0),
        errors.DTypeMismatchBinaryOp,
        "dtype mismatch in cat, lhs: F32, rhs: I32",
    ),
    ("cat_dim", lambda: Tensor.cat([_t(2), _t(2)], 1), errors.DimOutOfRange, "cat: dimension index 1"),
    ("cat_not_list", lambda: Tensor.cat(_t(2), 0), errors.Msg, "list of tensors"),
    ("stack_shape", lambda: Tensor.stack([_t(2, 3), _t(3, 2)], 0), errors.ShapeMismatchCat, "shape mismatch in cat"),
    ("stack_dtype", lambda: Tensor.stack([_t(2), _t(2, dtype=np.int32)], 0), errors.DTypeMismatchBinaryOp, "stack"),
    ("stack_dim", lambda: Tensor.stack([_t(2), _t(2)], 3), errors.DimOutOfRange, "stack"),
    (
        "broadcast",
        lambda: _t(2, 3).broadcast_as((4, 3)),
        errors.BroadcastIncompatibleShapes,
        "cannot broadcast [2, 3] to [4, 3]",
    ),
    (
        "broadcast_rank",
        lambda: _t(2, 3).broadcast_as((3,)),
        errors.BroadcastIncompatibleShapes,
        "cannot broadcast [2, 3] to [3]",
    ),
    ("expand", lambda: _t(2, 3).expand(2, 4), errors.BroadcastIncompatibleShapes, "expand: cannot broadcast"),
    (
        "pad_same_empty",
        lambda: _t(0, 3).pad_with_same(0, 1, 1),
        errors.Msg,
        "cannot use pad_with_same on an empty tensor",
    ),
    ("pad_neg", lambda: _t(2).pad_with_zeros(0, -1, 0), errors.Msg, "non-negative"),
    ("pad_dim", lambda: _t(2).pad_with_zeros(1, 1, 0), errors.DimOutOfRange, "pad_with_zeros"),
    ("roll_dim", lambda: _t(2).roll(1, 1), errors.DimOutOfRange, "roll"),
    ("flip_dup", lambda: _t(2, 3).flip([0, 0]), errors.DuplicateDimIndex, "flip"),
    (
        "unfold_size",
        lambda: _t(3).unfold(0, 4, 1),
        errors.Msg,
        "unfold: maximum size for tensor at dimension 0 is 3 but size is 4",
    ),
    ("unfold_step", lambda: _t(3).unfold(0, 2, 0), errors.Msg, "step must be positive"),
]


@pytest.mark.parametrize("case", ERRORS, ids=[c[0] for c in ERRORS])
def test_errors(case):
    _, f, exc, msg = case
    with pytest.raises(exc) as e:
        f()
    assert msg in str(e.value)


def test_errors_under_jit():
    with pytest.raises(errors.NarrowInvalidArgs):
        jax.jit(lambda t: t.narrow(0, 1, 5))(_t(3))
    with pytest.raises(errors.ShapeMismatchCat):
        jax.jit(lambda a, b: Tensor.cat([a, b], 0))(_t(2, 3), _t(2, 4))


# --- positions, lengths and counts are integers: floats, bools, strings and None raise -------------
BAD_INTS = [
    ("narrow_len", lambda x: x.narrow(0, 0, 1.5), "narrow: len must be an int, got 1.5 (float)"),
    ("narrow_start", lambda x: x.narrow(0, 0.9, 1), "narrow: start must be an int, got 0.9 (float)"),
    ("narrow_start_bool", lambda x: x.narrow(0, True, 1), "narrow: start must be an int, got True (bool)"),
    ("get", lambda x: x.get(1.9), "get: index must be an int, got 1.9"),
    ("get_on_dim", lambda x: x.get_on_dim(0, 1.9), "get_on_dim: index must be an int, got 1.9"),
    ("chunk", lambda x: x.chunk(2.5, 0), "chunk: chunks must be an int, got 2.5"),
    ("split", lambda x: x.split(1.5, 0), "split: split_size must be an int, got 1.5"),
    ("split_sections", lambda x: x.split([1.5, 1.5], 0), "split: section size must be an int, got 1.5"),
    ("roll", lambda x: x.roll(1.5, 0), "roll: shift must be an int, got 1.5"),
    ("roll_str", lambda x: x.roll("1", 0), "roll: shift must be an int, got '1' (str)"),
    ("roll_none", lambda x: x.roll(None, 0), "roll: shift must be an int, got None"),
    ("pad_zeros", lambda x: x.pad_with_zeros(0, 1.5, 0), "pad_with_zeros: left must be an int, got 1.5"),
    ("pad_same", lambda x: x.pad_with_same(0, 0, 1.5), "pad_with_same: right must be an int, got 1.5"),
    ("unfold", lambda x: x.unfold(1, 1.5, 1), "unfold: size must be an int, got 1.5"),
    ("expand", lambda x: x.expand(2.5, 3, 4), "expand: size must be an int, got 2.5"),
]


@pytest.mark.parametrize("case", BAD_INTS, ids=[c[0] for c in BAD_INTS])
def test_positions_lengths_counts_must_be_ints(case):
    _, f, msg = case
    with pytest.raises(errors.NotAnInteger) as e:
        f(_t(3, 4))
    assert isinstance(e.value, TypeError) and isinstance(e.value, errors.InvalidArgument)
    assert msg in str(e.value)


def _arange34():
    return Tensor(np.arange(12, dtype=np.float32).reshape(3, 4))


def test_integer_like_positions_still_accepted():
    x = _arange34()
    ref = np.asarray(x)[1:3]
    for start in (np.int64(1), np.array(1, np.int32), jnp.asarray(1), Tensor(np.array(1, np.uint32))):
        np.testing.assert_array_equal(np.asarray(x.narrow(0, start, np.int32(2))), ref)
    np.testing.assert_array_equal(np.asarray(x.get(np.int64(-1))), np.asarray(x)[-1])
    assert [c.shape for c in x.chunk(np.int64(2), 0)] == [(2, 4), (1, 4)]
    assert [c.shape for c in x.split(np.array([1, 2]), 0)] == [(1, 4), (2, 4)]
    np.testing.assert_array_equal(np.asarray(x.roll(np.int64(1), 0)), np.roll(np.asarray(x), 1, 0))


def test_traced_narrow_start_must_be_an_integer_scalar():
    x = _arange34()
    f = jax.jit(lambda t, s: t.narrow(0, s, 2))
    np.testing.assert_array_equal(np.asarray(f(x, jnp.int32(1))), np.asarray(x)[1:3])
    np.testing.assert_array_equal(np.asarray(f(x, Tensor(np.array(1, np.int32)))), np.asarray(x)[1:3])
    with pytest.raises(errors.NotAnInteger, match=r"narrow: start must be an int, got a traced float32\[\] value"):
        f(x, jnp.float32(1))
    with pytest.raises(errors.NotAnInteger, match="roll: shift must be an int, got a traced int32"):
        jax.jit(lambda t, s: t.roll(s, 0))(x, jnp.int32(1))


def test_reshape_takes_numpy_integers_and_their_hole():
    """numpy integers in a shape, -1 among them, as PyTorch and Candle's usize take them (the hole
    check compared a numpy int with () and raised numpy's ValueError)."""
    t = Tensor(np.arange(4.0, dtype=np.float32))
    assert t.reshape((np.int64(4),)).dims() == (4,)
    assert t.reshape((2, np.int64(2))).dims() == (2, 2)
    assert t.reshape((np.int64(2), -1)).dims() == (2, 2)
    assert t.reshape((2, np.int64(-1))).dims() == (2, 2)
    assert t.reshape([np.int32(1), np.int64(4)]).dims() == (1, 4)
    assert t.view((np.int64(2), np.int64(2))).dims() == (2, 2)
    with pytest.raises(errors.Error, match="dims must be integers"):
        t.reshape((2.0, -1))
