"""Seeded fuzz of the indexing family (``[]``/``i()``, ``index_select``, ``gather``, the scatter and
slice writes, ``where_cond``/``masked_fill``, ``argmax``/``argmin``, ``narrow``/``chunk``/``split``,
``roll``/``flip``, ``cumsum``) against candle-pyo3 where the binding has the op, numpy float64 otherwise;
contiguous and strided (transposed / narrowed) inputs, u8/u32/i32/i64 ids, out-of-range ids."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from candlejax import D, DType, Tensor, errors

candle = pytest.importorskip("candle")

SEEDS = range(3)
ID_DTYPES = [np.uint8, np.uint32, np.int32]


def tt(x) -> Tensor:
    return Tensor._wrap(jnp.asarray(x))


def _np(t) -> np.ndarray:
    """A candle-pyo3 tensor as numpy (``values()`` gives nested lists)."""
    return np.asarray(t.values(), np.float64).reshape(t.shape)


def _cids(v: np.ndarray, dtype) -> object:
    return candle.Tensor(np.asarray(v, np.uint32)).to_dtype(dtype)


def _pair(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, Tensor, object]:
    """(numpy f64 reference, candlejax tensor, candle-pyo3 tensor) holding the same values; half the
    time the candlejax input is a strided view (built transposed, then transposed back)."""
    x = rng.integers(-50, 50, shape).astype(np.float32)
    if len(shape) >= 2 and rng.random() < 0.5:
        j = tt(np.ascontiguousarray(np.swapaxes(x, 0, 1))).transpose(0, 1)
    else:
        j = tt(x)
    return x.astype(np.float64), j, candle.Tensor(x)


def _shape(rng: np.random.Generator, rank: int | None = None) -> tuple[int, ...]:
    rank = int(rng.integers(1, 4)) if rank is None else rank
    return tuple(int(s) for s in rng.integers(1, 5, rank))


# --- [] and i() -----------------------------------------------------------------------------------


def _rand_slice(rng: np.random.Generator, size: int, steps: bool) -> slice:
    def pos():
        return None if rng.random() < 0.3 else int(rng.integers(-size - 2, size + 3))

    step = None
    if steps and rng.random() < 0.6:
        step = int(rng.choice([-3, -2, -1, 1, 2, 3]))
    return slice(pos(), pos(), step)


def _rand_index(rng: np.random.Generator, shape: tuple[int, ...], id_dtype) -> tuple[list, int | None]:
    """Random ``[]`` indexers: ints (negative too), slices with any step, ``...``, ``None`` and at most
    one list / integer Tensor. Returns (indexers, position of the list indexer among them)."""
    n = len(shape)
    k = int(rng.integers(0, n + 1))  # indexers that consume a dim
    ell = int(rng.integers(0, k + 1)) if rng.random() < 0.3 else None
    dims = list(range(k)) if ell is None else list(range(ell)) + list(range(n - (k - ell), n))
    idx: list = []
    have_list = False
    for d in dims:
        size = shape[d]
        r = rng.random()
        if r < 0.3:
            idx.append(int(rng.integers(-size, size)))
        elif r < 0.55 and not have_list:
            have_list = True
            v = rng.integers(0, size, int(rng.integers(0, 4)))
            if rng.random() < 0.4:
                idx.append([int(i) - (size if rng.random() < 0.3 else 0) for i in v])  # negatives count back
            else:
                idx.append(tt(v.astype(id_dtype)))
        else:
            idx.append(_rand_slice(rng, size, True))
    if ell is not None:
        idx.insert(ell, Ellipsis)
    for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.3 else 0):
        idx.insert(int(rng.integers(0, len(idx) + 1)), None)
    list_at = next((i for i, e in enumerate(idx) if isinstance(e, (list, Tensor))), None)
    return idx, list_at


def _np_getitem(x: np.ndarray, idx: list, list_at: int | None) -> np.ndarray:
    """Candle's (candle-pyo3's) ``[]``: numpy basic indexing, the one list/tensor indexer applied on its
    own dim (orthogonally, where numpy would move it to the front next to an int)."""
    if list_at is None:
        return x[tuple(idx)]
    ids = idx[list_at]
    ids = np.asarray(ids).astype(np.int64) if isinstance(ids, Tensor) else np.asarray(ids, np.int64)
    basic = list(idx)
    basic[list_at] = slice(None)
    out = x[tuple(basic)]
    axis = 0  # the output axis of the list: what the indexers before it leave
    for e in idx[:list_at]:
        if e is None or isinstance(e, slice):
            axis += 1
        elif e is Ellipsis:
            n_consuming = sum(1 for e2 in idx if e2 is not None and e2 is not Ellipsis)
            axis += x.ndim - n_consuming
    size = out.shape[axis]
    return np.take(out, np.where(ids < 0, ids + size, ids), axis=axis)


@pytest.mark.parametrize("seed", SEEDS)
def test_getitem_fuzz_vs_numpy(seed):
    rng = np.random.default_rng(1000 + seed)
    for case in range(12):
        shape = _shape(rng)
        x, j, _ = _pair(rng, shape)
        idx, list_at = _rand_index(rng, shape, ID_DTYPES[case % 3])
        want = _np_getitem(x, idx, list_at)
        got = j[tuple(idx)]
        assert got.shape == want.shape, (shape, idx)
        assert got.dtype == DType.F32
        np.testing.assert_array_equal(np.asarray(got, np.float64), want, err_msg=f"{shape} {idx}")


@pytest.mark.parametrize("seed", SEEDS)
def test_getitem_fuzz_vs_candle_pyo3(seed):
    """Step-free slices, ints, ``...`` and one id list or tensor: candle-pyo3 0.4.2's own ``[]`` (it
    ignores slice steps and mishandles ``None`` next to ``...``, so those stay in the numpy fuzz)."""
    rng = np.random.default_rng(2000 + seed)
    for case in range(10):
        shape = _shape(rng)
        _, j, c = _pair(rng, shape)
        idx: list = []
        cidx: list = []
        have_list = False
        for d, size in enumerate(shape):
            r = rng.random()
            if r < 0.15:
                break
            if r < 0.4:
                k = int(rng.integers(-size, size))
                idx.append(k)
                cidx.append(k)
            elif r < 0.6 and not have_list and d == 0:  # candle-pyo3 gathers only contiguous views
                have_list = True
                v = rng.integers(0, size, int(rng.integers(1, 4)))
                dt = [(np.uint8, candle.u8), (np.uint32, candle.u32), (np.uint32, candle.i64)][case % 3]
                idx.append(tt(v.astype(dt[0])))
                cidx.append(_cids(v, dt[1]))
            else:
                s = _rand_slice(rng, size, False)
                idx.append(s)
                cidx.append(s)
        if idx and rng.random() < 0.3 and len(idx) < len(shape):
            idx.insert(0, Ellipsis)
            cidx.insert(0, Ellipsis)
        want = _np(c[tuple(cidx)])
        got = j[tuple(idx)]
        assert got.shape == want.shape, (shape, idx)
        np.testing.assert_array_equal(np.asarray(got, np.float64), want, err_msg=f"{shape} {idx}")


@pytest.mark.parametrize("seed", SEEDS)
def test_i_fuzz_vs_numpy(seed):
    """``i()``: positive-step slices that must lie in range (Candle's ``narrow``), ints, id lists,
    several id indexers applied one dim at a time."""
    rng = np.random.default_rng(3000 + seed)
    for case in range(10):
        shape = _shape(rng)
        x, j, _ = _pair(rng, shape)
        idx: list = []
        want = x
        axis = 0
        for size in shape:
            r = rng.random()
            if r < 0.15:
                break
            if r < 0.4:
                k = int(rng.integers(-size, size))
                idx.append(k)
                want = np.take(want, k, axis=axis)
            elif r < 0.65:
                v = rng.integers(0, size, int(rng.integers(0, 4)))
                idx.append(tt(v.astype(ID_DTYPES[case % 3])) if rng.random() < 0.5 else [int(i) for i in v])
                want = np.take(want, v, axis=axis)
                axis += 1
            else:
                a = int(rng.integers(0, size + 1))
                b = int(rng.integers(a, size + 1))
                step = int(rng.integers(1, 4))
                idx.append(slice(a, b, step))
                want = np.take(want, np.arange(a, b, step), axis=axis)
                axis += 1
        got = j.i(tuple(idx))
        assert got.shape == want.shape, (shape, idx)
        np.testing.assert_array_equal(np.asarray(got, np.float64), want, err_msg=f"{shape} {idx}")


def test_index_plan_cache_keys_only_int_slice_bounds():
    """A cached ``x[1:3]`` does not make ``x[1.0:3]`` (equal hash) pass, and a concrete jax scalar
    bound (unhashable) still indexes."""
    x = tt(np.arange(12, dtype=np.float32).reshape(3, 4))
    want = np.asarray(x)[1:3]
    np.testing.assert_array_equal(np.asarray(x[1:3]), want)
    np.testing.assert_array_equal(np.asarray(x.i(slice(1, 3))), want)
    with pytest.raises(errors.ArgumentType, match="invalid slice"):  # a TypeError, as through i()
        x[1.0:3]
    with pytest.raises(TypeError, match=r"unsupported indexer 1\.0"):
        x[1.0]
    with pytest.raises(errors.NotAnInteger, match=r"i: slice start must be an int, got 1\.0"):
        x.i(slice(1.0, 3))
    with pytest.raises(errors.NotAnInteger, match="got True"):
        x.i(slice(True, 3))
    np.testing.assert_array_equal(np.asarray(x[jnp.int32(1) : 3]), want)
    np.testing.assert_array_equal(np.asarray(x.i(slice(jnp.int32(1), 3))), want)
    np.testing.assert_array_equal(np.asarray(x[np.int64(1) : 3]), want)


# --- index_select / gather / where_cond / argmax / narrow vs candle-pyo3 ---------------------------

CANDLE_IDS = [(np.uint8, "u8"), (np.uint32, "u32")]


@pytest.mark.parametrize("seed", SEEDS)
def test_select_gather_where_vs_candle_pyo3(seed):
    rng = np.random.default_rng(4000 + seed)
    for case in range(3):
        shape = _shape(rng, int(rng.integers(1, 4)))
        x, j, c = _pair(rng, shape)
        npdt, cdt = CANDLE_IDS[case % 2]
        dim = int(rng.integers(0, len(shape)))
        jdim = [dim, dim - len(shape), D.Minus1 if dim == len(shape) - 1 else dim][case % 3]
        v = rng.integers(0, shape[dim], int(rng.integers(0, 5)))
        got = j.index_select(tt(v.astype(npdt)), jdim)
        want = _np(c.index_select(_cids(v, getattr(candle, cdt)), dim))
        assert got.shape == want.shape and got.dtype == DType.F32
        np.testing.assert_array_equal(np.asarray(got, np.float64), want)
        np.testing.assert_array_equal(np.asarray(got, np.float64), np.take(x, v, axis=dim))
        # gather: candle-pyo3 0.4.2 wants ids of self's shape; smaller ids vs numpy take_along_axis
        g = rng.integers(0, shape[dim], shape)
        got = j.gather(tt(g.astype(npdt)), jdim)
        np.testing.assert_array_equal(np.asarray(got, np.float64), _np(c.gather(_cids(g, getattr(candle, cdt)), dim)))
        small = tuple(int(rng.integers(1, s + 1)) for s in shape)
        g = rng.integers(0, shape[dim], small)
        sl = tuple(slice(0, s) if k != dim else slice(None) for k, s in enumerate(small))
        got = j.gather(tt(g.astype(npdt)), jdim)
        assert got.shape == small
        np.testing.assert_array_equal(np.asarray(got, np.float64), np.take_along_axis(x[sl], g, axis=dim))
        # where_cond (pred u8 / u32), strided pred
        m = (rng.random(shape) < 0.5).astype(np.uint32) * rng.integers(1, 3, shape).astype(np.uint32)
        y = rng.integers(-9, 9, shape).astype(np.float32)
        jp = tt(m.astype(npdt))
        if len(shape) >= 2:
            jp = tt(np.ascontiguousarray(np.swapaxes(m, 0, 1)).astype(npdt)).transpose(0, 1)
        got = jp.where_cond(j, tt(y))
        want = _np(_cids(m, getattr(candle, cdt)).where_cond(c, candle.Tensor(y)))
        np.testing.assert_array_equal(np.asarray(got, np.float64), want)
        # masked_fill (candle-nn): mask broadcast to self, value where mask != 0
        mb = m[..., :1] if rng.random() < 0.5 else m
        got = j.masked_fill(tt(mb.astype(npdt)), -100.0)
        np.testing.assert_array_equal(np.asarray(got, np.float64), np.where(np.broadcast_to(mb, shape) != 0, -100.0, x))
        # argmax / argmin keepdim and not (ties: the first index, as Candle's reduce)
        xt = np.round(x / 40)  # many ties
        jt, ct = tt(xt.astype(np.float32)), candle.Tensor(xt.astype(np.float32))
        for name in ("argmax", "argmin"):
            want = _np(getattr(ct, f"{name}_keepdim")(dim))
            got = getattr(jt, f"{name}_keepdim")(jdim)
            assert got.dtype == DType.U32 and got.shape == want.shape
            np.testing.assert_array_equal(np.asarray(got, np.float64), want)
            got = getattr(jt, name)(jdim)
            assert got.dtype == DType.U32 and got.shape == want.shape[:dim] + want.shape[dim + 1 :]
            np.testing.assert_array_equal(np.asarray(got, np.float64), want.reshape(got.shape))
        # narrow
        start = int(rng.integers(0, shape[dim]))  # candle-pyo3 refuses start == size even for len 0
        n = int(rng.integers(0, shape[dim] - start + 1))
        np.testing.assert_array_equal(np.asarray(j.narrow(jdim, start, n), np.float64), _np(c.narrow(dim, start, n)))


def test_i64_ids_vs_candle_pyo3(x64):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    c = candle.Tensor(x)
    v = np.array([2, 0, 2])
    jid = tt(v.astype(np.int64))
    assert jid.dtype == DType.I64
    cid = _cids(v, candle.i64)
    np.testing.assert_array_equal(np.asarray(tt(x).index_select(jid, 0)), _np(c.index_select(cid, 0)))
    np.testing.assert_array_equal(np.asarray(tt(x)[jid]), _np(c[cid]))
    g = np.array([[2, 0, 1, 1], [0, 0, 2, 1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(np.asarray(tt(x).gather(tt(g), 0)), _np(c.gather(_cids(g, candle.i64), 0)))
    p = _cids(np.array([1, 0, 2, 0]), candle.i64)
    want = _np(p.where_cond(c[0], c[1]))
    np.testing.assert_array_equal(np.asarray(tt(np.array([1, 0, 2, 0], np.int64)).where_cond(tt(x)[0], tt(x)[1])), want)
    with pytest.raises(errors.InvalidIndex, match="index-select invalid index 3 with dim size 3"):
        tt(x).index_select(tt(np.array([3], np.int64)), 0)
    with pytest.raises(errors.InvalidIndex, match="index-select invalid index -1"):
        tt(x).index_select(tt(np.array([-1], np.int64)), 0)


# --- scatter family and slice writes vs numpy -------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_scatter_index_add_slice_writes_vs_numpy(seed):
    rng = np.random.default_rng(5000 + seed)
    for case in range(3):
        shape = _shape(rng, int(rng.integers(1, 4)))
        x, j, _ = _pair(rng, shape)
        npdt = ID_DTYPES[case % 3]
        dim = int(rng.integers(0, len(shape)))
        jdim = dim - len(shape) if case % 2 else dim
        # Candle's scatter: ids and src share a shape that equals self's off the dim
        small = tuple(int(rng.integers(1, 4)) if k == dim else s for k, s in enumerate(shape))
        g = rng.integers(0, shape[dim], small)
        src = rng.integers(-9, 9, small).astype(np.float32)
        want_add = x.copy()
        for pos in np.ndindex(*small):
            tgt = list(pos)
            tgt[dim] = g[pos]
            want_add[tuple(tgt)] += src[pos]
        got = j.scatter_add(tt(g.astype(npdt)), tt(src), jdim)
        np.testing.assert_array_equal(np.asarray(got, np.float64), want_add)
        # scatter (set) with distinct ids along the dim (duplicates: an unspecified winner on XLA)
        k = min(small[dim], shape[dim])
        perm = np.argsort(rng.random(shape), axis=dim)
        g = np.take(perm, np.arange(k), axis=dim)
        src = np.take(src, np.arange(k), axis=dim)
        want_set = x.copy()
        np.put_along_axis(want_set, g, src, axis=dim)
        got = j.scatter(tt(g.astype(npdt)), tt(src), jdim)
        np.testing.assert_array_equal(np.asarray(got, np.float64), want_set)
        # index_add: 1-D ids, source of self's shape but len(ids) on dim
        v = rng.integers(0, shape[dim], int(rng.integers(0, 4)))
        srcshape = tuple(len(v) if k == dim else s for k, s in enumerate(shape))
        s2 = rng.integers(-9, 9, srcshape).astype(np.float32)
        want = x.copy()
        np.add.at(np.moveaxis(want, dim, 0), v, np.moveaxis(s2, dim, 0))
        got = j.index_add(tt(v.astype(npdt)), tt(s2), jdim)
        np.testing.assert_array_equal(np.asarray(got, np.float64), want)
        # slice_scatter / slice_set / slice_assign
        start = int(rng.integers(0, shape[dim]))
        n = int(rng.integers(1, shape[dim] - start + 1))
        srcshape = tuple(n if k == dim else s for k, s in enumerate(shape))
        s3 = rng.integers(-9, 9, srcshape).astype(np.float32)
        want = x.copy()
        sl = tuple(slice(start, start + n) if k == dim else slice(None) for k in range(len(shape)))
        want[sl] = s3
        np.testing.assert_array_equal(np.asarray(j.slice_scatter(tt(s3), jdim, start), np.float64), want)
        np.testing.assert_array_equal(np.asarray(j.slice_set(tt(s3), jdim, start), np.float64), want)
        np.testing.assert_array_equal(np.asarray(j.slice_assign(list(sl), tt(s3)), np.float64), want)


# --- out-of-range and float ids: a candlejax error, never a clamp or a wrap -------------------------

_X = np.zeros((3, 4), np.float32)


def _ids_cases(dt):
    def i(v):
        return tt(np.asarray(v).astype(dt))

    src = tt(np.ones((1, 4), np.float32))
    return [
        ("index_select", lambda: tt(_X).index_select(i([0, 3]), 0)),
        ("index_select dim1", lambda: tt(_X).t().index_select(i([4]), 0)),
        ("getitem", lambda: tt(_X)[:, i([4])]),
        ("i", lambda: tt(_X).i(i([3]))),
        ("embedding", lambda: tt(_X).embedding(i([[1, 3]]))),
        ("gather", lambda: tt(_X).gather(i([[3, 0, 0, 0]]), 0)),
        ("gather neg dim", lambda: tt(_X).gather(i([[4], [0], [0]]), -1)),
        ("scatter", lambda: tt(_X).scatter(i([[3, 0, 0, 0]]), src, 0)),
        ("scatter_add", lambda: tt(_X).scatter_add(i([[0, 3, 0, 0]]), src, 0)),
        ("index_add", lambda: tt(_X).index_add(i([3]), src, 0)),
    ]


@pytest.mark.parametrize("dt", [np.uint8, np.uint32, np.int32, np.int16])
def test_out_of_range_ids_raise_invalid_index(dt):
    for name, f in _ids_cases(dt):
        with pytest.raises(errors.InvalidIndex):
            f()
        assert name


def test_float_ids_are_refused():
    for name, f in _ids_cases(np.float32):
        with pytest.raises(errors.UnexpectedDType, match=r"integer dtype|index") as e:
            f()
        assert isinstance(e.value, errors.Error), name


# --- movement and creation vs numpy ----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(2))
def test_roll_flip_chunk_split_cumsum_vs_numpy(seed):
    rng = np.random.default_rng(6000 + seed)
    for _ in range(5):
        shape = _shape(rng, int(rng.integers(1, 4)))
        x, j, _ = _pair(rng, shape)
        dim = int(rng.integers(0, len(shape)))
        jdim = dim - len(shape) if rng.random() < 0.5 else dim
        shift = int(rng.integers(-7, 8))
        np.testing.assert_array_equal(np.asarray(j.roll(shift, jdim), np.float64), np.roll(x, shift, dim))
        np.testing.assert_array_equal(np.asarray(j.flip([jdim]), np.float64), np.flip(x, dim))
        np.testing.assert_array_equal(np.asarray(j.cumsum(jdim), np.float64), np.cumsum(x, dim))
        n = int(rng.integers(1, 6))
        size = shape[dim]
        # Candle's chunk: min(n, size) chunks, the first size % n one longer (not PyTorch's ceil sizes)
        sizes = [1] * size if size < n else [size // n + (i < size % n) for i in range(n)]
        want = np.split(x, np.cumsum(sizes)[:-1], axis=dim)
        got = j.chunk(n, jdim)
        assert [g.shape for g in got] == [w.shape for w in want]
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g, np.float64), w)
        k = int(rng.integers(1, size + 1))
        got = j.split(k, jdim)
        want = np.split(x, range(k, size, k), axis=dim)
        assert [g.shape for g in got] == [w.shape for w in want]


def test_arange_step_vs_candle_rules():
    """Candle's arange_step: repeated ``current + step`` while ``current < end`` (``> end`` for a
    negative step), in the start's type; step 0 is refused."""
    for start, end, step in [(5, 0, -2), (0, 7, 3), (0.0, 1.0, 0.3), (1.0, 0.0, -0.3), (2.0, -1.0, -0.7), (0, 5, -1)]:
        want, cur = [], np.float32(start) if isinstance(start, float) else start
        while (step > 0 and cur < end) or (step < 0 and cur > end):
            want.append(cur)
            cur = np.float32(cur + np.float32(step)) if isinstance(start, float) else cur + step
        got = Tensor.arange_step(start, end, step)
        assert got.dtype == (
            DType.F32 if isinstance(start, float) else DType.U32 if min(start, end) >= 0 else got.dtype
        )
        np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=1e-6)
    with pytest.raises(errors.Error, match="step cannot be zero"):
        Tensor.arange_step(0, 5, 0)


def test_one_hot_tril_triu_vs_numpy():
    from candlejax.nn.encoding import one_hot

    v = np.array([[2, 0], [1, 2]], np.uint32)
    got = one_hot(tt(v), 3, 1.0, 0.0)
    assert got.shape == (2, 2, 3) and got.dtype == DType.F32
    np.testing.assert_array_equal(np.asarray(got), np.eye(3, dtype=np.float32)[v])
    with pytest.raises(errors.Error, match="one_hot: index value 3 exceeds depth 3"):
        one_hot(tt(np.array([3], np.uint8)), 3, 1.0, 0.0)
    with pytest.raises(errors.Error, match="one_hot: invalid negative index value -2"):
        one_hot(tt(np.array([-2], np.int32)), 3, 1.0, 0.0)
    np.testing.assert_array_equal(np.asarray(one_hot(tt(np.array([-1], np.int32)), 3, 1.0, 0.0)), [[0, 0, 0]])
    for n in (0, 1, 4):
        np.testing.assert_array_equal(np.asarray(Tensor.tril2(n)), np.tril(np.ones((n, n), np.float32)))
        np.testing.assert_array_equal(np.asarray(Tensor.triu2(n, DType.U8)), np.triu(np.ones((n, n), np.uint8)))
