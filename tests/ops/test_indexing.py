"""Indexing ops vs numpy (eager and under jax.jit), gradients vs jax.numpy, candle-pyo3 parity,
the under-jit index clamping, and one bad-input test per Candle error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from candlejax import D, DType, Tensor, errors

candle = pytest.importorskip("candle")

BF16 = np.dtype(jnp.bfloat16)
DTYPES = [np.float32, BF16, np.int32]


def tt(x) -> Tensor:
    return Tensor._wrap(jnp.asarray(x))


def ids(v, dtype=np.uint32) -> Tensor:
    return tt(np.asarray(v, dtype))


def rand(rng, shape, dtype=np.float32) -> np.ndarray:
    x = rng.standard_normal(shape) * 10
    return x.astype(dtype) if np.dtype(dtype).kind == "f" or dtype is BF16 else np.abs(x).astype(dtype)


def assert_same(got, want, dtype):
    got = np.asarray(got)
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))


# --- numpy references ---------------------------------------------------------------------------


def np_scatter(x, i, src, axis, add=False):
    out = x.copy()
    grids = list(np.indices(i.shape, sparse=False))
    grids[axis] = i
    if add:
        np.add.at(out, tuple(grids), src)
    else:
        out[tuple(grids)] = src
    return out


def np_index_add(x, i, src, axis):
    out = x.copy()
    np.add.at(out, (slice(None),) * axis + (i,), src)
    return out


def np_gather(x, i, axis):
    sub = tuple(slice(None) if k == axis else slice(0, n) for k, n in enumerate(i.shape))
    return np.take_along_axis(x[sub], i.astype(np.int64), axis)


I2 = np.array([2, 0, 2], np.uint32)
G = np.array([[0, 3, 1], [2, 2, 0]], np.uint32)  # gather ids for a (4, 5) input along dim 0
P = np.array([[3, 1], [0, 2], [1, 0]], np.int64)  # scatter ids into (4, 2) along dim 0, shape (3, 2)

# (name, input shape, candlejax fn of the input Tensor, numpy fn of the input array). Extra operands
# derive from the input so that one jax.jit can run every case.
CASES = [
    ("get_int", (4, 3), lambda t: t[1], lambda x: x[1]),
    ("get_neg", (4, 3), lambda t: t[-1], lambda x: x[-1]),
    ("get_np_int", (4, 3), lambda t: t[np.int64(2)], lambda x: x[2]),
    ("get_slice", (4, 5), lambda t: t[:, 1:3], lambda x: x[:, 1:3]),
    ("get_clamped", (4, 5), lambda t: t[-10:10, 3:], lambda x: x[-10:10, 3:]),
    ("get_empty", (4, 5), lambda t: t[3:1], lambda x: x[3:1]),
    ("get_step", (7, 5), lambda t: t[1::3, ::2], lambda x: x[1::3, ::2]),
    ("get_negstep", (7, 5), lambda t: t[::-1, 4:0:-2], lambda x: x[::-1, 4:0:-2]),
    ("get_negstep_empty", (7, 5), lambda t: t[2:5:-1], lambda x: x[2:5:-1]),
    ("get_ellipsis", (2, 3, 4), lambda t: t[..., 0], lambda x: x[..., 0]),
    ("get_ellipsis_mid", (2, 3, 4), lambda t: t[1, ..., 1:], lambda x: x[1, ..., 1:]),
    ("get_none", (2, 3), lambda t: t[None, :, None, 1], lambda x: x[None, :, None, 1]),
    ("get_mixed", (3, 4, 5), lambda t: t[1:, ::-2, None, ...], lambda x: x[1:, ::-2, None, ...]),
    ("get_list", (4, 3), lambda t: t[[2, 0, -1]], lambda x: x[[2, 0, -1]]),
    ("get_list_dim1", (4, 3), lambda t: t[1:, [1, 1, 0]], lambda x: x[1:, [1, 1, 0]]),
    ("get_tensor", (4, 3), lambda t: t[..., ids([2, 0])], lambda x: x[..., [2, 0]]),
    ("get_tensor_i32", (4, 3), lambda t: t[ids([3, 1], np.int32)], lambda x: x[[3, 1]]),
    ("get_tensor0", (4, 3), lambda t: t[:, ids(2)], lambda x: x[:, 2]),
    ("get_empty_tuple", (4, 3), lambda t: t[()], lambda x: x),
    ("get_rank0", (), lambda t: t[...], lambda x: x),
    ("i_int", (4, 3), lambda t: t.i(2), lambda x: x[2]),
    ("i_neg", (4, 3), lambda t: t.i(-2), lambda x: x[-2]),
    ("i_col", (4, 3), lambda t: t.i((slice(None), 0)), lambda x: x[:, 0]),
    ("i_varargs", (4, 3, 2), lambda t: t.i(slice(1, 3), 1), lambda x: x[1:3, 1]),
    ("i_range", (5, 3), lambda t: t.i(range(0, 5, 2)), lambda x: x[0:5:2]),
    ("i_upto", (5, 3), lambda t: t.i((slice(None, 2), slice(1, None))), lambda x: x[:2, 1:]),
    ("i_tensor", (5, 3), lambda t: t.i(ids([4, 0])), lambda x: x[[4, 0]]),
    ("i_list", (5, 3), lambda t: t.i((slice(None), [2, 2])), lambda x: x[:, [2, 2]]),
    ("i_orthogonal", (5, 3), lambda t: t.i(([0, 4], [2, 1])), lambda x: x[np.ix_([0, 4], [2, 1])]),
    ("i_then_tensor", (3, 4, 5), lambda t: t.i((1, ids([3, 0]))), lambda x: x[1][[3, 0]]),
    ("index_select0", (4, 3), lambda t: t.index_select(ids(I2), 0), lambda x: x[I2]),
    ("index_select1", (4, 3), lambda t: t.index_select(ids(I2, np.uint8), D.Minus1), lambda x: x[:, I2]),
    ("index_select_i32", (2, 3, 4), lambda t: t.index_select(ids([3, 3], np.int32), 2), lambda x: x[:, :, [3, 3]]),
    ("index_select_empty", (4, 3), lambda t: t.index_select(ids([]), 0), lambda x: x[:0]),
    ("gather0", (4, 5), lambda t: t.gather(ids(G), 0), lambda x: np_gather(x, G, 0)),
    ("gather1", (4, 5), lambda t: t.gather(ids(G.T[:, :2] + 1), 1), lambda x: np_gather(x, G.T[:, :2] + 1, 1)),
    (
        "gather_full",
        (2, 3),
        lambda t: t.gather(ids([[2, 0, 1], [1, 1, 1]]), 1),
        lambda x: np.take_along_axis(x, np.array([[2, 0, 1], [1, 1, 1]]), 1),
    ),
    ("scatter", (4, 2), lambda t: t.scatter(ids(P, np.int32), t[1:], 0), lambda x: np_scatter(x, P, x[1:], 0)),
    (
        "scatter_dim1",
        (2, 4),
        lambda t: t.scatter(ids(P.T, np.int32), t[:, 1:], 1),
        lambda x: np_scatter(x, P.T, x[:, 1:], 1),
    ),
    (
        "scatter_add",
        (4, 2),
        lambda t: t.scatter_add(ids([[1, 1], [1, 0], [3, 1]]), t[1:], 0),
        lambda x: np_scatter(x, np.array([[1, 1], [1, 0], [3, 1]]), x[1:], 0, True),
    ),
    (
        "index_add",
        (4, 3),
        lambda t: t.index_add(ids([2, 2, 0, 3, 2]), t.repeat(2, 1)[:5], 0),
        lambda x: np_index_add(x, [2, 2, 0, 3, 2], np.tile(x, (2, 1))[:5], 0),
    ),
    (
        "index_add1",
        (2, 4),
        lambda t: t.index_add(ids([1, 1]), t[:, :2], 1),
        lambda x: np_index_add(x, [1, 1], x[:, :2], 1),
    ),
    (
        "slice_scatter",
        (4, 5),
        lambda t: t.slice_scatter(t[:, :2], 1, 3),
        lambda x: np.concatenate([x[:, :3], x[:, :2]], 1),
    ),
    (
        "slice_scatter0",
        (4, 5),
        lambda t: t.slice_scatter0(t[2:], 1),
        lambda x: np.concatenate([x[:1], x[2:], x[3:]], 0),
    ),
    ("slice_set", (4, 5), lambda t: t.slice_set(t[:2], 0, 2), lambda x: np.concatenate([x[:2], x[:2]], 0)),
    (
        "slice_assign",
        (4, 5),
        lambda t: t.slice_assign([slice(1, 3), range(2, 4)], t[:2, :2]),
        lambda x: _assign(x, (slice(1, 3), slice(2, 4)), x[:2, :2]),
    ),
    (
        "slice_assign_full",
        (4, 5),
        lambda t: t.slice_assign([slice(None), slice(4, None)], t[:, :1]),
        lambda x: _assign(x, (slice(None), slice(4, None)), x[:, :1]),
    ),
    (
        "embedding",
        (5, 3),
        lambda t: t.embedding(ids([[4, 0], [1, 1], [2, 3]])),
        lambda x: x[np.array([[4, 0], [1, 1], [2, 3]])],
    ),
    ("embedding1", (5, 3), lambda t: t.embedding(ids([3])), lambda x: x[[3]]),
    (
        "where_cond",
        (3, 4),
        lambda t: ids(_MASK, np.uint8).where_cond(t, t[::-1]),
        lambda x: np.where(_MASK != 0, x, x[::-1]),
    ),
    (
        "where_cond_i32",
        (3, 4),
        lambda t: ids(_MASK * 3, np.int32).where_cond(t[::-1], t),
        lambda x: np.where(_MASK != 0, x[::-1], x),
    ),
    (
        "masked_fill",
        (3, 4),
        lambda t: t.masked_fill(ids(_MASK[:1], np.uint8), 7),
        lambda x: np.where(_MASK[:1] != 0, np.array(7).astype(x.dtype), x),
    ),
]

_MASK = np.array([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 0, 0]], np.uint8)


def _assign(x, idx, src):
    out = x.copy()
    out[idx] = src
    return out


OTHER_DTYPES = {"get_slice", "get_negstep", "get_mixed", "get_tensor", "i_col", "i_orthogonal", "index_select1"}
OTHER_DTYPES |= {"gather0", "scatter", "scatter_add", "index_add", "slice_set", "slice_assign", "embedding"}
OTHER_DTYPES |= {"where_cond", "masked_fill"}
PARAMS = [(c, d) for d in DTYPES for c in CASES if d is np.float32 or c[0] in OTHER_DTYPES]


def _cases_for(dtype):
    return [c for c in CASES if dtype is np.float32 or c[0] in OTHER_DTYPES]


@pytest.mark.parametrize(("case", "dtype"), PARAMS, ids=[f"{c[0]}-{np.dtype(d).name}" for c, d in PARAMS])
def test_eager_vs_numpy(case, dtype, rng):
    _, shape, f, ref = case
    x = rand(rng, shape, dtype)
    assert_same(f(tt(x)), ref(x), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_jit_vs_numpy(dtype, rng):
    """Every case under one jax.jit (one compile) against numpy."""
    cases = _cases_for(dtype)
    xs = {c[0]: rand(rng, c[1], dtype) for c in cases}
    out = jax.jit(lambda ts: {c[0]: c[2](ts[c[0]]) for c in cases})({k: tt(v) for k, v in xs.items()})
    for name, _, _, ref in cases:
        assert_same(out[name], ref(xs[name]), dtype)


def test_traced_index():
    """A rank-0 index that is traced (a loop position) selects under jit."""
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    f = jax.jit(lambda t, i: (t[i], t.i((slice(None), Tensor._wrap(i)))))
    for k in range(3):
        row, col = f(tt(x), jnp.asarray(k, jnp.int32))
        np.testing.assert_array_equal(np.asarray(row), x[k])
        np.testing.assert_array_equal(np.asarray(col), x[:, k])


def test_iteration_and_noop():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    t = tt(x)
    rows = list(t)
    assert len(rows) == 3
    np.testing.assert_array_equal(np.asarray(rows[2]), x[2])
    assert t[:] is t and t[...] is t and t.i(slice(None)) is t


def test_index_tensor_dtypes(rng):
    x = rand(rng, (6, 2))
    for dt in (np.uint8, np.uint32, np.int32, np.int16):
        np.testing.assert_array_equal(np.asarray(tt(x).index_select(ids([5, 0], dt), 0)), x[[5, 0]])
        np.testing.assert_array_equal(np.asarray(tt(x).gather(ids([[5, 1]], dt), 0)), np.array([[x[5, 0], x[1, 1]]]))


def test_under_jit_out_of_range_ids_clamp_and_drop():
    """Index values can't be checked under jit: gathers clamp, scatters drop (documented)."""
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    bad = ids([7, -1, 2], np.int32)
    got = jax.jit(lambda t, i: t.index_select(i, 0))(tt(x), bad)
    np.testing.assert_array_equal(np.asarray(got), x[[3, 0, 2]])
    got = jax.jit(lambda t, i: t.embedding(i))(tt(x), bad)
    np.testing.assert_array_equal(np.asarray(got), x[[3, 0, 2]])
    got = jax.jit(lambda t, i: t[i])(tt(x), bad)
    np.testing.assert_array_equal(np.asarray(got), x[[3, 0, 2]])
    gi = ids([[5, -2]], np.int32)
    got = jax.jit(lambda t, i: t.gather(i, 0))(tt(x), gi)
    np.testing.assert_array_equal(np.asarray(got), [[x[3, 0], x[0, 1]]])
    src = tt(np.full((3, 2), 100, np.float32))
    got = jax.jit(lambda t, i, s: t.index_add(i, s, 0))(tt(x), bad, src)
    want = x.copy()
    want[2] += 100
    np.testing.assert_array_equal(np.asarray(got), want)
    si = ids([[7, -1], [0, 9], [1, 1]], np.int32)
    got = jax.jit(lambda t, i, s: t.scatter(i, s, 0))(tt(x), si, src)
    want = x.copy()
    want[0, 0] = want[1, 0] = want[1, 1] = 100
    np.testing.assert_array_equal(np.asarray(got), want)


# --- gradients ----------------------------------------------------------------------------------

GRAD_CASES = [
    ("get_slice", (5, 4), lambda t: t[1:4, ::-2], lambda x: x[1:4, ::-2]),
    ("get_list", (5, 4), lambda t: t[:, [3, 3, 0]], lambda x: x[:, jnp.array([3, 3, 0])]),
    ("i", (5, 4), lambda t: t.i((2, slice(1, 3))), lambda x: x[2, 1:3]),
    ("index_select", (5, 4), lambda t: t.index_select(ids([4, 4, 1]), 0), lambda x: x[jnp.array([4, 4, 1])]),
    ("embedding", (5, 4), lambda t: t.embedding(ids([[4, 4], [0, 1]])), lambda x: x[jnp.array([[4, 4], [0, 1]])]),
    (
        "gather",
        (4, 5),
        lambda t: t.gather(ids(G), 0),
        lambda x: jnp.take_along_axis(x[:, :3], jnp.asarray(G, jnp.int32), 0),
    ),
    ("scatter", (4, 2), lambda t: t.scatter(ids(P, np.int32), t[1:] * 2, 0), lambda x: _jscatter(x, x[1:] * 2)),
    (
        "scatter_add",
        (4, 2),
        lambda t: t.scatter_add(ids(P, np.int32), t[1:] * 2, 0),
        lambda x: _jscatter(x, x[1:] * 2, True),
    ),
    (
        "index_add",
        (4, 3),
        lambda t: t.index_add(ids([1, 1]), t[2:] * 3, 0),
        lambda x: x.at[jnp.array([1, 1])].add(x[2:] * 3),
    ),
    ("slice_scatter", (4, 5), lambda t: t.slice_scatter(t[:, :2] * 2, 1, 2), lambda x: x.at[:, 2:4].set(x[:, :2] * 2)),
    ("slice_set", (4, 5), lambda t: t.slice_set(t[:1] * 2, 0, 3), lambda x: x.at[3:].set(x[:1] * 2)),
    (
        "slice_assign",
        (4, 5),
        lambda t: t.slice_assign([slice(0, 2), slice(1, 2)], t[2:, :1] * 2),
        lambda x: x.at[0:2, 1:2].set(x[2:, :1] * 2),
    ),
    (
        "where_cond",
        (3, 4),
        lambda t: ids(_MASK, np.uint8).where_cond(t * 2, t[::-1]),
        lambda x: jnp.where(_MASK != 0, x * 2, x[::-1]),
    ),
    (
        "masked_fill",
        (3, 4),
        lambda t: t.masked_fill(ids(_MASK, np.uint8), 0.0),
        lambda x: jnp.where(_MASK != 0, 0.0, x),
    ),
]


def _jscatter(x, src, add=False):
    grids = list(jnp.indices(P.shape))
    grids[0] = jnp.asarray(P)
    ref = x.at[tuple(grids)]
    return ref.add(src) if add else ref.set(src)


@pytest.mark.parametrize("case", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_grad(case, rng):
    _, shape, f, ref = case
    x = jnp.asarray(rand(rng, shape))
    w = jnp.asarray(rng.standard_normal(np.shape(ref(x))).astype(np.float32))
    g = jax.jit(jax.grad(lambda t: (f(t).jax * w).sum()))(tt(x))
    want = jax.jit(jax.grad(lambda a: (ref(a) * w).sum()))(x)
    np.testing.assert_allclose(np.asarray(g.jax), np.asarray(want), rtol=1e-6)


# --- candle-pyo3 parity -------------------------------------------------------------------------


def _np(c) -> np.ndarray:
    return np.asarray(c.flatten_all().values(), np.float32).reshape(c.shape)


PYO3 = [
    ("int", lambda t: t[1]),
    ("neg", lambda t: t[-1, -2]),
    ("slice", lambda t: t[:, 1:]),
    ("neg_slice", lambda t: t[-1:, -3:-1]),
    ("clamped", lambda t: t[0:10]),
    ("ellipsis", lambda t: t[..., 2]),
    ("none", lambda t: t[None, 1]),
    ("list", lambda t: t[:, [2, 0]]),
    ("get", lambda t: t.get(1)),
]


@pytest.mark.parametrize("case", PYO3, ids=[c[0] for c in PYO3])
def test_getitem_vs_candle_pyo3(case, rng):
    x = rand(rng, (2, 3, 4))
    want = _np(case[1](candle.Tensor(x)))
    got = np.asarray(case[1](tt(x)))
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_ops_vs_candle_pyo3(rng):
    x = rand(rng, (4, 5))
    cx, jx = candle.Tensor(x), tt(x)
    i = np.array([3, 0, 3], np.uint32)
    ci = candle.Tensor(i).to_dtype(candle.u32)
    for d in (0, 1):
        np.testing.assert_array_equal(np.asarray(jx.index_select(ids(i), d)), _np(cx.index_select(ci, d)))
    # candle-pyo3 0.4.2 wants ids of self's shape (current Candle also accepts smaller ids)
    for d, n in ((0, 4), (1, 5)):
        g = rng.integers(0, n, (4, 5)).astype(np.uint32)
        np.testing.assert_array_equal(np.asarray(jx.gather(ids(g), d)), _np(cx.gather(candle.Tensor(g), d)))
    m = (rng.random((4, 5)) > 0.5).astype(np.uint8)
    y = rand(rng, (4, 5))
    want = _np(candle.Tensor(m).to_dtype(candle.u8).where_cond(cx, candle.Tensor(y)))
    np.testing.assert_array_equal(np.asarray(ids(m, np.uint8).where_cond(jx, tt(y))), want)


def test_candle_pyo3_ignores_slice_steps(rng):
    """Documented difference: candle-pyo3 0.4.2 ignores the step of a slice; candlejax applies it."""
    x = rand(rng, (6, 2))
    assert candle.Tensor(x)[::2].shape == (6, 2)
    assert tt(x)[::2].shape == (3, 2)


# --- errors -------------------------------------------------------------------------------------


def _t(*shape, dtype=np.float32):
    return tt(np.zeros(shape, dtype))


ERRORS = [
    # i()
    (
        "i_oob",
        lambda: _t(3, 2).i(3),
        errors.NarrowInvalidArgs,
        "narrow invalid args start + len > dim_len: [3, 2], dim: 0, start: 3, len:1",
    ),
    (
        "i_oob_cur",
        lambda: _t(3, 2).i((0, 5)),
        errors.NarrowInvalidArgs,
        "start > dim_len: [2], dim: 0, start: 5, len:1",
    ),
    ("i_neg_oob", lambda: _t(3, 2).i(-4), errors.InvalidIndex, "i invalid index -4 with dim size 3"),
    (
        "i_slice_oob",
        lambda: _t(2, 2).i((slice(None), slice(1, 4))),
        errors.NarrowInvalidArgs,
        "start + len > dim_len: [2, 2], dim: 1, start: 1, len:3",
    ),
    ("i_slice_start", lambda: _t(2, 2).i(slice(3, None)), errors.NarrowInvalidArgs, "start > dim_len"),
    ("i_too_many", lambda: _t(2, 2).i((0, 0, 0)), errors.Msg, "provided too many indices"),
    ("i_none", lambda: _t(2).i(None), errors.Msg, "use t[None]"),
    ("i_ellipsis", lambda: _t(2).i(...), errors.Msg, "use t[...]"),
    ("i_negstep", lambda: _t(4).i(slice(None, None, -1)), errors.Msg, "step must be positive"),
    ("i_2d", lambda: _t(4).i(ids([[0]])), errors.Msg, "multi-dimensional tensor indexing is not supported"),
    (
        "i_float_ids",
        lambda: _t(4).i(tt(np.zeros(2, np.float32))),
        errors.UnexpectedDType,
        "i: index tensor must have an integer dtype",
    ),
    ("i_ids_oob", lambda: _t(4).i(ids([1, 4])), errors.InvalidIndex, "i invalid index 4 with dim size 4"),
    ("i_bad_type", lambda: _t(4).i("a"), errors.Msg, "unsupported indexer"),
    # []
    ("get_oob", lambda: _t(3, 2)[3], errors.InvalidIndex, "index invalid index 3 with dim size 3"),
    ("get_oob_neg", lambda: _t(3, 2)[:, -3], errors.InvalidIndex, "index invalid index -3 with dim size 2"),
    ("get_too_many", lambda: _t(3)[0, 0], errors.Msg, "provided too many indices"),
    ("get_two_lists", lambda: _t(3, 3)[[0, 1], [1, 2]], errors.Msg, "more than one tensor/list indexer"),
    ("get_bool", lambda: _t(3)[np.array([True, False, True])], errors.Msg, "boolean masks are not supported"),
    ("get_bool_scalar", lambda: _t(3)[True], errors.Msg, "unsupported indexer"),
    ("get_two_ellipsis", lambda: _t(3, 3)[..., 0, ...], errors.Msg, "single ellipsis"),
    ("get_list_oob", lambda: _t(3)[[0, 3]], errors.InvalidIndex, "index invalid index 3 with dim size 3"),
    ("get_float_list", lambda: _t(3)[[0.5]], errors.UnexpectedDType, "index list must hold integers"),
    ("get_step0", lambda: _t(3)[::0], errors.Msg, "invalid slice"),
    # index_select / embedding / gather
    (
        "select_float",
        lambda: _t(3).index_select(_t(2), 0),
        errors.UnexpectedDType,
        "index-select: index tensor must have an integer dtype",
    ),
    (
        "select_2d",
        lambda: _t(3).index_select(ids([[0]]), 0),
        errors.ShapeMismatchBinaryOp,
        "shape mismatch in index-select, lhs: [3], rhs: [1, 1]",
    ),
    (
        "select_oob",
        lambda: _t(3, 2).index_select(ids([0, 5]), 0),
        errors.InvalidIndex,
        "index-select invalid index 5 with dim size 3",
    ),
    (
        "select_neg",
        lambda: _t(3, 2).index_select(ids([-1], np.int32), 1),
        errors.InvalidIndex,
        "index-select invalid index -1 with dim size 2",
    ),
    ("select_dim", lambda: _t(3).index_select(ids([0]), 1), errors.DimOutOfRange, "index-select: dimension index 1"),
    ("select_not_tensor", lambda: _t(3).index_select([0], 0), errors.Msg, "expected a Tensor of indexes"),
    (
        "embedding_rank",
        lambda: _t(3, 2, 1).embedding(ids([0])),
        errors.ShapeMismatchBinaryOp,
        "shape mismatch in embedding, lhs: [3, 2, 1], rhs: [1]",
    ),
    (
        "embedding_oob",
        lambda: _t(3, 2).embedding(ids([[0, 3]])),
        errors.InvalidIndex,
        "index-select invalid index 3 with dim size 3",
    ),
    ("embedding_float", lambda: _t(3, 2).embedding(_t(2)), errors.UnexpectedDType, "embedding"),
    (
        "gather_rank",
        lambda: _t(3, 2).gather(ids([0]), 0),
        errors.ShapeMismatchBinaryOp,
        "shape mismatch in gather, lhs: [3, 2], rhs: [1]",
    ),
    (
        "gather_big",
        lambda: _t(3, 2).gather(ids([[0, 0, 0]]), 0),
        errors.ShapeMismatchBinaryOp,
        "shape mismatch in gather",
    ),
    (
        "gather_oob",
        lambda: _t(2, 3).gather(ids([[2, 0, 1]]), 0),
        errors.InvalidIndex,
        "gather invalid index 2 with dim size 2",
    ),
    ("gather_float", lambda: _t(2, 3).gather(_t(1, 3), 0), errors.UnexpectedDType, "gather"),
    # scatter family
    (
        "scatter_src",
        lambda: _t(3, 2).scatter(ids(np.zeros((1, 3))), _t(1, 3), 0),
        errors.ShapeMismatchBinaryOp,
        "shape mismatch in scatter (self, src), lhs: [3, 2], rhs: [1, 3]",
    ),
    (
        "scatter_ids",
        lambda: _t(3, 2).scatter(ids(np.zeros((1, 1))), _t(1, 2), 0),
        errors.ShapeMismatchBinaryOp,
        "shape mismatch in scatter (indexes, src), lhs: [1, 1], rhs: [1, 2]",
    ),
    (
        "scatter_dtype",
        lambda: _t(3, 2).scatter(ids(np.zeros((1, 2))), _t(1, 2, dtype=np.int32), 0),
        errors.DTypeMismatchBinaryOp,
        "dtype mismatch in scatter, lhs: F32, rhs: I32",
    ),
    (
        "scatter_oob",
        lambda: _t(3, 2).scatter(ids([[0, 3]]), _t(1, 2), 0),
        errors.InvalidIndex,
        "scatter invalid index 3 with dim size 3",
    ),
    ("scatter_float_ids", lambda: _t(3, 2).scatter(_t(1, 2), _t(1, 2), 0), errors.UnexpectedDType, "scatter"),
    (
        "scatter_add_oob",
        lambda: _t(3, 2).scatter_add(ids([[0, 5]]), _t(1, 2), 0),
        errors.InvalidIndex,
        "scatter-add invalid index 5",
    ),
    (
        "index_add_rank",
        lambda: _t(3, 2).index_add(ids([[0]]), _t(1, 2), 0),
        errors.UnexpectedNumberOfDims,
        "index-add: unexpected rank, expected: 1, got: 2",
    ),
    (
        "index_add_len",
        lambda: _t(3, 2).index_add(ids([0, 1]), _t(1, 2), 0),
        errors.ShapeMismatchBinaryOp,
        "shape mismatch in index-add (ids, source)",
    ),
    (
        "index_add_src",
        lambda: _t(3, 2).index_add(ids([0]), _t(1, 3), 0),
        errors.ShapeMismatchBinaryOp,
        "shape mismatch in index-add (self, source)",
    ),
    (
        "index_add_oob",
        lambda: _t(3, 2).index_add(ids([3]), _t(1, 2), 0),
        errors.InvalidIndex,
        "index-add invalid index 3 with dim size 3",
    ),
    (
        "index_add_dtype",
        lambda: _t(3, 2).index_add(ids([0]), _t(1, 2, dtype=np.int32), 0),
        errors.DTypeMismatchBinaryOp,
        "index-add",
    ),
    # slices
    (
        "slice_scatter_shape",
        lambda: _t(3, 2).slice_scatter(_t(2, 2), 0, 2),
        errors.ShapeMismatchBinaryOp,
        "shape mismatch in slice-scatter (self, src), lhs: [3, 2], rhs: [2, 2]",
    ),
    (
        "slice_scatter_rank",
        lambda: _t(3, 2).slice_scatter(_t(2), 0, 0),
        errors.UnexpectedNumberOfDims,
        "expected: 2, got: 1",
    ),
    (
        "slice_scatter_dtype",
        lambda: _t(3, 2).slice_scatter(_t(1, 2, dtype=np.int32), 0, 0),
        errors.DTypeMismatchBinaryOp,
        "slice-scatter",
    ),
    (
        "slice_set_target",
        lambda: _t(3, 2).slice_set(_t(2, 2), 0, 2),
        errors.Msg,
        "shape mismatch on target dim, dst: 3, src: 2 + 2",
    ),
    ("slice_set_dim", lambda: _t(3, 2).slice_set(_t(1, 3), 0, 0), errors.Msg, "shape mismatch on dim 1, 2 <> 3"),
    ("slice_set_rank", lambda: _t(3, 2).slice_set(_t(2), 0, 0), errors.UnexpectedNumberOfDims, "slice-set"),
    (
        "slice_set_dtype",
        lambda: _t(3, 2).slice_set(_t(1, 2, dtype=np.int32), 0, 0),
        errors.DTypeMismatchBinaryOp,
        "dtype mismatch in slice-set",
    ),
    (
        "assign_rank",
        lambda: _t(3, 2).slice_assign([slice(0, 1)], _t(1)),
        errors.Msg,
        "slice-assign requires input with the same rank 2 <> 1",
    ),
    (
        "assign_ranges",
        lambda: _t(3, 2).slice_assign([slice(0, 1)], _t(1, 2)),
        errors.Msg,
        "same rank as there are ranges 2 <> 1",
    ),
    (
        "assign_empty",
        lambda: _t(3, 2).slice_assign([slice(1, 1), slice(None)], _t(0, 2)),
        errors.Msg,
        "slice-assign: empty range for dim 0, 1 1",
    ),
    (
        "assign_upper",
        lambda: _t(3, 2).slice_assign([slice(2, 4), slice(None)], _t(2, 2)),
        errors.Msg,
        "upper bound is out of range for dim 0, 4 3",
    ),
    (
        "assign_size",
        lambda: _t(3, 2).slice_assign([slice(0, 2), slice(None)], _t(1, 2)),
        errors.Msg,
        "the range for dim 0 (0..2) does not match the size of src 1",
    ),
    ("assign_step", lambda: _t(3, 2).slice_assign([slice(0, 2, 2), slice(None)], _t(1, 2)), errors.Msg, "step 1"),
    (
        "assign_dtype",
        lambda: _t(3, 2).slice_assign([slice(0, 1), slice(None)], _t(1, 2, dtype=np.int32)),
        errors.DTypeMismatchBinaryOp,
        "slice-assign",
    ),
    # where_cond / masked_fill
    (
        "where_shape",
        lambda: _t(3, dtype=np.uint8).where_cond(_t(3), _t(2)),
        errors.ShapeMismatchBinaryOp,
        "shape mismatch in where_cond, lhs: [3], rhs: [2]",
    ),
    (
        "where_pred",
        lambda: _t(3).where_cond(_t(3), _t(3)),
        errors.UnsupportedDTypeForOp,
        "unsupported dtype F32 for op where_cond",
    ),
    (
        "where_dtype",
        lambda: _t(3, dtype=np.uint8).where_cond(_t(3), _t(3, dtype=np.int32)),
        errors.DTypeMismatchBinaryOp,
        "dtype mismatch in where, lhs: F32, rhs: I32",
    ),
    (
        "where_not_tensor",
        lambda: _t(3, dtype=np.uint8).where_cond(1.0, _t(3)),
        errors.Msg,
        "expected a Tensor as on_true",
    ),
    ("masked_fill_float", lambda: _t(3).masked_fill(_t(3), 0.0), errors.UnexpectedDType, "masked_fill"),
    (
        "masked_fill_shape",
        lambda: _t(3).masked_fill(_t(2, dtype=np.uint8), 0.0),
        errors.BroadcastIncompatibleShapes,
        "masked_fill: cannot broadcast [2] to [3]",
    ),
]


@pytest.mark.parametrize("case", ERRORS, ids=[c[0] for c in ERRORS])
def test_errors(case):
    _, f, exc, msg = case
    with pytest.raises(exc) as e:
        f()
    assert msg in str(e.value)


def test_errors_are_index_errors_and_raise_under_jit():
    with pytest.raises(IndexError):
        _t(3)[5]
    with pytest.raises(errors.NarrowInvalidArgs):
        jax.jit(lambda t: t.i(7))(_t(3))
    with pytest.raises(errors.ShapeMismatchBinaryOp):
        jax.jit(lambda t, i: t.gather(i, 0))(_t(3, 2), ids([0]))
    with pytest.raises(errors.UnexpectedDType):
        jax.jit(lambda t, i: t.index_select(i, 0))(_t(3, 2), _t(2))


def test_cached_plan_still_checks_index_values():
    t = _t(4, 2)
    assert t[ids([1, 3])].shape == (2, 2)
    with pytest.raises(errors.InvalidIndex, match="index invalid index 4 with dim size 4"):
        t[ids([1, 4])]
    assert t.i((slice(None), ids([1]))).shape == (4, 1)
    with pytest.raises(errors.InvalidIndex, match="i invalid index 2 with dim size 2"):
        t.i((slice(None), ids([2])))


def test_orthogonal_i_matches_candle_pyo3_getitem(rng):
    """candle-pyo3 indexes each list on its own dim; candlejax's i() does the same ([] raises)."""
    x = rand(rng, (3, 4))
    want = _np(candle.Tensor(x)[[0, 2], [1, 3, 3]])
    np.testing.assert_array_equal(np.asarray(tt(x).i(([0, 2], [1, 3, 3]))), want)


def test_traced_offsets_kv_cache_style(rng):
    """narrow / slice_set / slice_scatter with a traced position: one compiled step for every offset;
    an offset that would overflow is clamped so that src fits (lax.dynamic_update_slice)."""
    cache = np.zeros((2, 6, 3), np.float32)
    k = rand(rng, (2, 1, 3))
    step = jax.jit(lambda c, k, pos: (c.slice_set(k, 1, pos), c.slice_scatter(k, 1, pos), c.narrow(1, pos, 2)))
    for pos in (0, 3, 5, 9):
        a, b, n = step(tt(cache + 1), tt(k), jnp.asarray(pos, jnp.int32))
        want = cache + 1
        want[:, min(pos, 5) : min(pos, 5) + 1] = k
        np.testing.assert_array_equal(np.asarray(a), want)
        np.testing.assert_array_equal(np.asarray(b), want)
        assert n.shape == (2, 2, 3)
    g = jax.jit(lambda c, p: c.narrow(0, Tensor._wrap(p), 2))(tt(np.arange(5.0)), jnp.asarray(2))
    np.testing.assert_array_equal(np.asarray(g), [2.0, 3.0])
    with pytest.raises(errors.NarrowInvalidArgs):
        jax.jit(lambda c, p: c.narrow(0, p, 6))(tt(np.arange(5.0)), jnp.asarray(0))
    with pytest.raises(errors.Msg, match="shape mismatch on target dim"):
        jax.jit(lambda c, k, p: c.slice_set(k, 1, p))(tt(cache), tt(np.zeros((2, 7, 3), np.float32)), jnp.asarray(0))


def test_eager_loops_over_indexes_compile_once_per_pattern(jax_compiles):
    # an eager loop over rows must not compile a program per index value
    t = Tensor.new(np.arange(600, dtype=np.float32).reshape(60, 10))
    want = np.arange(600, dtype=np.float32).reshape(60, 10)
    ones = Tensor.ones((1, 10))
    forms = {
        "i": (lambda i: t.i(i), lambda i: want[i]),
        "get": (lambda i: t.get(i), lambda i: want[i]),
        "get_on_dim": (lambda i: t.get_on_dim(1, i % 10), lambda i: want[:, i % 10]),
        "narrow": (lambda i: t.narrow(0, i, 3), lambda i: want[i : i + 3]),
        "getitem": (lambda i: t[i - 60], lambda i: want[i - 60]),
        "i slices": (lambda i: t.i((slice(i, i + 2), slice(1, 9))), lambda i: want[i : i + 2, 1:9]),
        "strided": (lambda i: t[i : i + 6 : 2, ::-3], lambda i: want[i : i + 6 : 2, ::-3]),
        "roll": (lambda i: t.roll(i, 0), lambda i: np.roll(want, i, axis=0)),
        "slice_set": (lambda i: t.slice_set(ones, 0, i), lambda i: np.where(np.arange(60)[:, None] == i, 1, want)),
    }
    for name, (f, ref) in forms.items():
        f(1)
        jax_compiles.clear()
        for i in range(2, 50):
            np.testing.assert_array_equal(np.asarray(f(i)), ref(i), err_msg=f"{name} {i}")
        assert not jax_compiles, (name, jax_compiles[:2])


def test_narrow_index_dtypes_gather_from_longer_dims():
    """u8 ids into 300 rows and i16 ids into 40,000 (the clamp of unchecked gathers overflowed the
    id dtype: a raw OverflowError); Candle and PyTorch take the rows."""
    x = np.arange(300 * 2, dtype=np.float32).reshape(300, 2)
    t = Tensor(x)
    ids = np.array([254, 3, 0], np.uint8)
    np.testing.assert_array_equal(np.asarray(t.index_select(Tensor(ids), 0)), x[ids.astype(np.int64)])
    np.testing.assert_array_equal(np.asarray(t.gather(Tensor(np.stack([ids, ids], 1)), 0)), x[ids.astype(np.int64)])
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda a, i: a.index_select(i, 0))(t, Tensor(ids))),
                                  x[ids.astype(np.int64)])  # fmt: skip
    big = Tensor(np.arange(40_000, dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(big.index_select(Tensor(np.array([32_000, 7], np.int16)), 0)),
                                  [32_000.0, 7.0])  # fmt: skip


def test_masked_fill_refuses_values_the_dtype_cannot_hold():
    """As PyTorch: 300 into u8, NaN into i32, 1e6 into f16 raise (they wrapped or overflowed
    silently); -1 into u8 is 255 and 1.5 into i32 is 1, as in PyTorch."""
    m = Tensor(np.ones(3, np.uint8))
    for dt, v, what in ((np.uint8, 300, "does not fit"), (np.int32, float("nan"), "does not fit"),
                        (np.float16, 1e6, "overflows")):  # fmt: skip
        with pytest.raises(errors.Error, match=f"masked_fill: the value .* {what} the tensor's dtype"):
            Tensor(np.zeros(3, dt)).masked_fill(m, v)
    np.testing.assert_array_equal(np.asarray(Tensor(np.zeros(3, np.uint8)).masked_fill(m, -1)), [255] * 3)
    np.testing.assert_array_equal(np.asarray(Tensor(np.zeros(3, np.int32)).masked_fill(m, 1.5)), [1] * 3)
    assert np.isinf(np.asarray(Tensor(np.zeros(3, np.float16)).masked_fill(m, float("inf")))).all()


def test_masked_fill_values_beyond_int32():
    """A Python int above 2**31 - 1 (a U32 value, 2**40 for F32) raised jax's OverflowError; PyTorch
    fills it."""
    m = Tensor(np.array([1, 0], np.uint8))
    u = Tensor(np.array([1, 2], np.uint32)).masked_fill(m, 4_294_967_295)
    assert u.dtype is DType.U32 and u.to_vec1() == [4_294_967_295, 2]
    assert Tensor(np.array([1, 2], np.float32)).masked_fill(m, 2**40).to_vec1() == [2.0**40, 2.0]
    assert jax.jit(lambda t: t.masked_fill(m, 3_000_000_000))(Tensor(np.zeros(2, np.uint32))).to_vec1() == [
        3_000_000_000, 0]  # fmt: skip


def test_slice_positions_must_be_ints():
    """A float or bool position is refused, never truncated (candle-pyo3: ``'float' object cannot be
    interpreted as an integer``); numpy integers and traced integer offsets still work."""
    x = tt(np.arange(12, dtype=np.float32).reshape(3, 4))
    row = tt(np.ones((1, 4), np.float32))
    cases = [
        (lambda: x.i(slice(0.5, 2)), "i: slice start must be an int, got 0.5"),
        (lambda: x.i((slice(None), slice(0, 2.0))), "i: slice stop must be an int, got 2.0"),
        (lambda: x.slice_scatter(row, 0, 0.5), "slice-scatter: start must be an int, got 0.5"),
        (lambda: x.slice_set(row, 0, 1.5), "slice-set: offset must be an int, got 1.5"),
        (lambda: x.slice_set(row, 0, True), "slice-set: offset must be an int, got True (bool)"),
        (lambda: x.slice_assign([slice(0.5, 1), slice(None)], row), "slice-assign: range start for dim 0"),
    ]
    for f, msg in cases:
        with pytest.raises(errors.NotAnInteger) as e:
            f()
        assert isinstance(e.value, TypeError) and msg in str(e.value)
    want = np.asarray(x).copy()
    want[1] = 1
    np.testing.assert_array_equal(np.asarray(x.slice_set(row, 0, np.int64(1))), want)
    np.testing.assert_array_equal(np.asarray(x.i(slice(np.int32(1), np.int64(2)))), np.asarray(x)[1:2])
    with pytest.raises(errors.NotAnInteger, match=r"slice-set: offset must be an int, got a traced float32\[\]"):
        jax.jit(lambda c, k, p: c.slice_set(k, 0, p))(x, row, jnp.float32(1))
    with pytest.raises(errors.NotAnInteger, match="slice-scatter: start must be an int, got a traced int32"):
        jax.jit(lambda c, k, p: c.slice_scatter(k, 0, p))(x, row, jnp.zeros((2,), jnp.int32))
