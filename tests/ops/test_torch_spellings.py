"""PyTorch spellings Candle has no name for (x.sum(), dim=/keepdim=, .T, view, float(), ...) give
torch's results; the others raise an error naming the Candle spelling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import candlejax as cj
from candlejax import DType, Tensor, errors

A = np.array([[0.5, -1.0, 3.0], [2.0, 7.0, -4.0]], np.float32)

# (spelling, candlejax fn, torch fn)
SAME = [
    ("x.sum()", lambda x: x.sum(), lambda t: t.sum()),
    ("x.mean()", lambda x: x.mean(), lambda t: t.mean()),
    ("x.max()", lambda x: x.max(), lambda t: t.max()),
    ("x.min()", lambda x: x.min(), lambda t: t.min()),
    ("x.sum(dim=1)", lambda x: x.sum(dim=1), lambda t: t.sum(dim=1)),
    ("x.sum(1, keepdim=True)", lambda x: x.sum(1, keepdim=True), lambda t: t.sum(1, keepdim=True)),
    ("x.sum((0, 1))", lambda x: x.sum((0, 1)), lambda t: t.sum((0, 1))),
    ("x.sum(keepdim=True)", lambda x: x.sum(keepdim=True), lambda t: t.sum((0, 1), keepdim=True)),
    ("x.mean(dim=0, keepdim=True)", lambda x: x.mean(dim=0, keepdim=True), lambda t: t.mean(dim=0, keepdim=True)),
    ("x.max(1)", lambda x: x.max(1), lambda t: t.amax(1)),
    ("x.max_keepdim(1)", lambda x: x.max_keepdim(1), lambda t: t.amax(dim=1, keepdim=True)),
    ("x.min(0)", lambda x: x.min(0), lambda t: t.amin(0)),
    ("x.amax(1)", lambda x: x.amax(1), lambda t: t.amax(1)),
    ("x.amin(1, keepdim=True)", lambda x: x.amin(1, keepdim=True), lambda t: t.amin(1, keepdim=True)),
    ("x.argmax()", lambda x: x.argmax(), lambda t: t.argmax()),
    ("x.argmin()", lambda x: x.argmin(), lambda t: t.argmin()),
    ("x.argmax(dim=1)", lambda x: x.argmax(dim=1), lambda t: t.argmax(dim=1)),
    ("x.argmax(1, keepdim=True)", lambda x: x.argmax(1, keepdim=True), lambda t: t.argmax(1, keepdim=True)),
    ("x.argmax(keepdim=True)", lambda x: x.argmax(keepdim=True), lambda t: t.argmax().reshape(1, 1)),
    ("x.var()", lambda x: x.var(), lambda t: t.var()),
    ("x.var(1, keepdim=True)", lambda x: x.var(1, keepdim=True), lambda t: t.var(1, keepdim=True)),
    ("x.std()", lambda x: x.std(), lambda t: t.std()),
    ("x.std(0)", lambda x: x.std(0), lambda t: t.std(0)),
    ("x.T", lambda x: x.T, lambda t: t.T),
    ("x.view(3, 2)", lambda x: x.view(3, 2), lambda t: t.view(3, 2)),
    ("x.view(-1)", lambda x: x.view(-1), lambda t: t.view(-1)),
    ("x.view((3, -1))", lambda x: x.view((3, -1)), lambda t: t.view((3, -1))),
    ("x.float()", lambda x: x.half().float(), lambda t: t.half().float()),
    ("x.half()", lambda x: x.half(), lambda t: t.half()),
    ("x.bfloat16()", lambda x: x.bfloat16().float(), lambda t: t.bfloat16().float()),
    ("x.int()", lambda x: x.int(), lambda t: t.int()),
    ("x.softmax(1)", lambda x: x.softmax(1), lambda t: t.softmax(1)),
    ("x.softmax(dim=0)", lambda x: x.softmax(dim=0), lambda t: t.softmax(dim=0)),
    ("x.log_softmax(-1)", lambda x: x.log_softmax(-1), lambda t: t.log_softmax(-1)),
    ("x.mm(x.T)", lambda x: x.mm(x.T), lambda t: t.mm(t.T)),
    ("x @ x.T", lambda x: x @ x.T, lambda t: t @ t.T),
    ("x.clamp(min=0)", lambda x: x.clamp(min=0.0), lambda t: t.clamp(min=0.0)),
    ("x.clamp(max=1)", lambda x: x.clamp(max=1.0), lambda t: t.clamp(max=1.0)),
    ("x.clamp(-1, 1)", lambda x: x.clamp(-1.0, 1.0), lambda t: t.clamp(-1.0, 1.0)),
    ("x.unsqueeze(0).squeeze()", lambda x: x.unsqueeze(0).unsqueeze(2).squeeze(), lambda t: t[None, :, None].squeeze()),
    ("x.clone()", lambda x: x.clone(), lambda t: t.clone()),
    ("x.cpu()", lambda x: x.cpu(), lambda t: t.cpu()),
]


@pytest.mark.parametrize("case", SAME, ids=[c[0] for c in SAME])
def test_torch_spelling_matches_torch(case):
    _, f, g = case
    got, want = f(Tensor.new(A)), g(torch.tensor(A))
    assert got.shape == tuple(want.shape)
    np.testing.assert_allclose(np.asarray(got).astype(np.float64), want.double().numpy(), rtol=1e-5, atol=1e-6)


def test_int_clamp_one_sided_and_ints_in_size():
    x = Tensor.new(np.array([[-3, 5], [2, 9]], np.int32))
    t = torch.tensor(np.array([[-3, 5], [2, 9]], np.int32))
    np.testing.assert_array_equal(np.asarray(x.clamp(min=0)), t.clamp(min=0).numpy())
    np.testing.assert_array_equal(np.asarray(x.clamp(max=4)), t.clamp(max=4).numpy())
    y, u = Tensor.new(A), torch.tensor(A)
    assert y.size() == tuple(u.size()) and y.size(1) == u.size(1) and y.size(-1) == u.size(-1)
    assert y.numel() == u.numel() and y.dim() == u.dim() and y.dim(0) == 2  # Candle's dim(d) unchanged


def test_dtype_compares_to_names():
    x = Tensor.new(A)
    assert x.dtype == "f32" and x.dtype == "float32" and x.dtype != "f16" and x.dtype == DType.F32
    assert x.int().dtype == "i32" and not (x.dtype == "i32")
    assert {DType.F32: 1}[x.dtype] == 1  # still hashable


def test_shape_mistakes():
    with pytest.raises(errors.Error, match=r"the shape is a tuple: write Tensor\.zeros\(\(2, 3\)\)"):
        Tensor.zeros(2, 3)
    with pytest.raises(errors.Error, match="shape is a tuple"):
        Tensor.ones(2, 3)
    with pytest.raises(errors.Error, match=r"dims must be integers, got 2\.5"):
        Tensor.zeros((2.5, 3))
    with pytest.raises(errors.Error, match="dims must be integers"):
        Tensor.zeros((True, 3))
    with pytest.raises(TypeError):  # torch refuses floats too
        torch.zeros((2.5, 3))
    assert Tensor.zeros(4).shape == (4,) and Tensor.zeros((np.int64(2), 3)).shape == (2, 3)


def test_torch_rand_spellings_raise_instead_of_drawing_another_shape():
    """torch.randn(2, 3, 4) is a (2, 3, 4) draw; Candle's Tensor::randn(mean, std, shape, &dev) takes float
    mean / std (FloatDType), so the same call here must not draw 4 values of N(2, 3²)."""
    assert tuple(torch.randn(2, 3, 4).shape) == (2, 3, 4) and tuple(torch.rand(2, 3).shape) == (2, 3)
    for name in ("randn", "rand"):
        f = getattr(Tensor, name)
        fix = rf"torch\.{name}\(2, 3, 4\) write Tensor\.{name}\(0\.0, 1\.0, \(2, 3, 4\)\)"
        with pytest.raises(errors.Error, match=fix):
            f(2, 3, 4)
        with pytest.raises(errors.Error, match=rf"torch\.{name}\(2, 3\)"):
            f(2, 3)
        with pytest.raises(errors.Error, match=rf"torch\.{name}\(\(2, 3\)\)"):
            f((2, 3))
        with pytest.raises(errors.Error, match=rf"torch\.{name}\(2, 3, 4\)"):
            getattr(cj.nn.Var, name)(2, 3, 4)
    # Candle's spellings keep working, ints for the bounds included when the shape is a tuple
    assert Tensor.randn(0.0, 1.0, 4).shape == (4,) and Tensor.rand(0, 1, (3,)).shape == (3,)
    assert Tensor.randn(2.0, 3.0, 4, key=0).shape == (4,) and cj.nn.Var.randn(0.0, 1.0, (2, 2)).shape == (2, 2)
    # a device makes it Candle's (mean, std, shape, &dev) form, int bounds and an int shape included
    assert Tensor.randn(0, 1, 5, cj.Device.Cpu).shape == (5,) and Tensor.rand(0, 1, 5, "cpu").shape == (5,)
    assert cj.nn.Var.rand(0, 1, 3, cj.Device.Cpu).shape == (3,)


def test_boolean_mask_indexing_points_to_where_cond():
    x = Tensor.new(A)
    with pytest.raises(errors.Error, match="where_cond"):
        x[x > 1.0]
    with pytest.raises(errors.Error, match="where_cond"):
        x.flatten_all()[x.flatten_all() > 1.0]  # 1-D u8 mask: not taken as ids
    kept = (x > 1.0).where_cond(x, x.zeros_like())  # the suggested spelling
    t = torch.tensor(A)
    np.testing.assert_array_equal(np.asarray(kept), torch.where(t > 1.0, t, 0.0).numpy())


POINTERS = [
    ("zero_", "x = x.zeros_like()"), ("add_", "x = x.add"), ("type", "to_dtype"), ("logsumexp", "log_sum_exp"),
    ("sort", "sort_last_dim"), ("topk", "sort_last_dim"), ("where", "where_cond"), ("masked_select", "where_cond"),
    ("nonzero", "where_cond"), ("all", "min_all"), ("any", "max_all"), ("bool", "ne(0)"), ("new_zeros", "zeros_like"),
    ("cuda", "to_device"), ("prod", "Candle has no prod"), ("clip", "clamp"), ("square", "sqr()"),
    ("reciprocal", "recip()"), ("rsqrt", "sqrt().recip()"), ("bmm", "matmul"), ("expand_as", "broadcast_as(y.shape)"),
    ("unbind", "get_on_dim(dim, i)"), ("logical_not", "eq(0)"), ("is_floating_point", "dtype.is_float()"),
    ("element_size", "dtype.size_in_bytes()"), ("ndimension", "rank"),
]


@pytest.mark.parametrize("name,hint", POINTERS, ids=[p[0] for p in POINTERS])
def test_other_torch_names_point_to_candle(name, hint):
    x = Tensor.new(A)
    assert hasattr(torch.tensor(A), name)
    with pytest.raises(errors.TorchName, match=hint.replace("(", r"\(").replace(")", r"\)")):
        getattr(x, name)
    assert isinstance(errors.TorchName("x", "y"), AttributeError)
    assert not hasattr(x, "not_a_method") and not hasattr(x, "_private_")


def test_gather_argument_order():
    x = Tensor.new(A)
    with pytest.raises(errors.Error, match=r"Candle's order is gather\(ids, dim\)"):
        x.gather(1, Tensor.new(np.array([[0], [1]], np.uint32)))


def test_reductions_accept_dims_once():
    with pytest.raises(errors.Error, match="pass the dims once"):
        Tensor.new(A).sum(0, dim=1)
    assert cj.Tensor.new(A).argmax(1, True).shape == (2, 1)  # positional keepdim also works


def test_mask_sum_without_dims_counts_like_torch():
    # torch's x.sum() promotes integers (int64); Candle's u8 sum_all wraps at 256 (300 -> 44)
    a = np.ones((20, 15), np.float32)
    m, tm = Tensor.new(a) > 0.0, torch.tensor(a) > 0.0
    got = m.sum()
    assert int(got.item()) == int(tm.sum()) == 300 and got.dtype == DType.U32
    assert m.sum(keepdim=True).shape == (1, 1) and int(m.sum(keepdim=True).item()) == 300
    assert int(m.sum_all().item()) == 44  # Candle's sum_all keeps u8 and wraps
    # the PyTorch-only spellings (dim=, keepdim) count too; Candle's sum(dims) keeps u8
    mt, tmt = m.reshape((300, 1)), tm.reshape(300, 1)
    for got, want in ((mt.sum(dim=0), tmt.sum(dim=0)), (mt.sum(0, keepdim=True), tmt.sum(0, keepdim=True)),
                      (mt.sum(0, False), tmt.sum(0, False)), (mt.sum(dim=(0, 1)), tmt.sum(dim=(0, 1)))):
        assert got.dtype == DType.U32 and got.shape == tuple(want.shape)
        np.testing.assert_array_equal(np.asarray(got), want.numpy())
    assert m.T.sum(0).dtype == DType.U8 and m.T.sum_keepdim(0).dtype == DType.U8
    assert int(Tensor.new(np.full((300,), 200, np.uint8)).sum().item()) == 60000


def test_mt_swaps_the_last_two_dims():
    x, t = Tensor.new(np.arange(24, dtype=np.float32).reshape(2, 3, 4)), torch.arange(24.0).reshape(2, 3, 4)
    assert x.mT.shape == tuple(t.mT.shape)
    np.testing.assert_array_equal(np.asarray(x.mT), t.mT.numpy())
    with pytest.raises(errors.UnexpectedNumberOfDims):  # torch: "tensor.mT is only supported on matrices"
        _ = Tensor.new(np.ones(3, np.float32)).mT


@pytest.mark.parametrize(
    "call,hint",
    [
        (lambda x, ids: x.index_select(0, ids[:, 0]), r"Candle's order is index_select\(ids, dim\)"),
        (lambda x, ids: x.scatter_add(1, ids, x[:, :2]), r"Candle's order is scatter_add\(ids, src, dim\)"),
        (lambda x, ids: x.scatter(1, ids, x[:, :2]), r"Candle's order is scatter\(ids, src, dim\)"),
        (lambda x, ids: x.index_add(0, ids[:, 0], x), r"Candle's order is index_add\(ids, src, dim\)"),
        (lambda x, ids: x.max(x), r"use x\.maximum\(other\)"),
        (lambda x, ids: x.min(x.zeros_like()), r"use x\.minimum\(other\)"),
    ],
)
def test_torch_argument_orders_name_candles(call, hint):
    x = Tensor.new(A)
    ids = Tensor.new(np.array([[0, 2], [1, 0]], np.uint32))
    with pytest.raises(errors.Error, match=hint):
        call(x, ids)


_FD = np.random.default_rng(7)
_FA = (_FD.standard_normal((4, 5)) * 5).astype(np.float32)
_FB = (_FD.uniform(0.5, 3.0, (4, 5)) * _FD.choice([-1.0, 1.0], (4, 5))).astype(np.float32)
_IA = _FD.integers(-20, 20, (4, 5)).astype(np.int32)
_IB = (_FD.integers(1, 6, (4, 5)) * _FD.choice([-1, 1], (4, 5))).astype(np.int32)

FLOOR_MOD = [
    ("x // 0.7", lambda x, y: x // 0.7), ("x % 0.7", lambda x, y: x % 0.7),
    ("x // -0.7", lambda x, y: x // -0.7), ("x % -0.7", lambda x, y: x % -0.7),
    ("x // y", lambda x, y: x // y), ("x % y", lambda x, y: x % y),
    ("3.0 // y", lambda x, y: 3.0 // y), ("3.0 % y", lambda x, y: 3.0 % y),
    ("x % y[0] (broadcast)", lambda x, y: x % y[0]),
]


@pytest.mark.parametrize("case", FLOOR_MOD, ids=[c[0] for c in FLOOR_MOD])
@pytest.mark.parametrize("ints", [False, True], ids=["f32", "i32"])
def test_floor_division_and_remainder_match_torch(case, ints):
    _, f = case
    a, b = (_IA, _IB) if ints else (_FA, _FB)
    if ints and ("0.7" in case[0] or "3.0" in case[0]):
        f = {"x // 0.7": lambda x, y: x // 3, "x % 0.7": lambda x, y: x % 3, "x // -0.7": lambda x, y: x // -3,
             "x % -0.7": lambda x, y: x % -3, "3.0 // y": lambda x, y: 7 // y, "3.0 % y": lambda x, y: 7 % y}[case[0]]
    got, want = f(Tensor.new(a), Tensor.new(b)), f(torch.tensor(a), torch.tensor(b))
    assert got.shape == tuple(want.shape) and got.dtype == (DType.I32 if ints else DType.F32)
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "call,hint",
    [
        (lambda m: ~m, r"m\.eq\(0\)"),
        (lambda m: m & m, r"a\.minimum\(b\)"),
        (lambda m: m | m, r"a\.maximum\(b\)"),
        (lambda m: m ^ m, r"a\.ne\(b\)"),
    ],
)
def test_mask_logic_operators_name_candles(call, hint):
    # u8 masks stand in for torch's bool: ~ would be bitwise (~1 == 254), so these raise
    m = Tensor.new(A) > 0.0
    with pytest.raises(errors.Error, match=hint):
        call(m)


@pytest.mark.parametrize("dt,tdt", [(DType.BF16, torch.bfloat16), (DType.F16, torch.float16)], ids=["bf16", "f16"])
def test_half_floor_division_and_remainder_round_as_torch(dt, tdt):
    # torch divides by the f32 scalar for // (opmath) but takes the scalar rounded to the dtype for %
    a = (np.random.default_rng(1).standard_normal(2000) * 10).astype(np.float32)
    y = np.abs(a[::-1].copy()) + 0.5
    x, t = Tensor.new(a).to_dtype(dt), torch.tensor(a).to(tdt)
    xy, ty = Tensor.new(y).to_dtype(dt), torch.tensor(y).to(tdt)
    for f in (lambda u, v: u // 0.1, lambda u, v: u % 0.1, lambda u, v: u // -1.3, lambda u, v: u % 0.7,
              lambda u, v: u // v, lambda u, v: u % v, lambda u, v: 3.0 // v):
        np.testing.assert_array_equal(np.asarray(f(x, xy).to_dtype(DType.F32)), f(t, ty).float().numpy())


def test_mask_cumsum_counts_like_torch():
    # Candle's cumsum is a matmul, which refuses u8 (UnsupportedDTypeForOp(U8, "matmul")); torch counts
    # in int64: a u8 cumsum that wrapped at 256 matched neither (attention_mask.cumsum(-1) positions)
    a = np.ones((2, 300), np.float32)
    a[1, ::3] = 0.0
    m, tm = Tensor.new(a) > 0.0, torch.tensor(a) > 0.0
    got = m.cumsum(-1)
    assert got.dtype == DType.U32
    np.testing.assert_array_equal(np.asarray(got), tm.cumsum(-1).numpy())


def test_type_as_converts_to_the_others_dtype():
    i = np.array([[-3, 5], [2, 9]], np.int32)
    got, want = Tensor.new(i).type_as(Tensor.new(A)), torch.tensor(i).type_as(torch.tensor(A))
    assert got.dtype == DType.F32 and want.dtype == torch.float32
    np.testing.assert_array_equal(np.asarray(got), want.numpy())
    with pytest.raises(errors.Error, match="type_as: expected a Tensor"):
        Tensor.new(A).type_as(DType.F16)


def test_item_assignment_names_the_functional_spellings():
    x = Tensor.new(A)
    with pytest.raises(errors.Error, match=r"immutable.*slice_assign.*masked_fill"):
        x[0] = 1.0
    with pytest.raises(TypeError):  # still a TypeError, as Python's own "does not support item assignment"
        x[x > 0.0] = 0.0
    # Candle-style out-buffers: a Tensor is still refused as one (its __setitem__ only raises)
    from candlejax.quantized import k_quants

    xs = k_quants.BlockQ4_0.from_float(np.ones(32, np.float32))
    with pytest.raises(errors.Error, match=r"cannot write into a Tensor in place; call BlockQ4_0\.to_float\(xs\)"):
        k_quants.BlockQ4_0.to_float(xs, Tensor.new(np.zeros(32, np.float32)))


@pytest.mark.parametrize(
    "call",
    [
        lambda x: x.max(dim=1), lambda x: x.max(1, keepdim=True), lambda x: x.max(1, True),
        lambda x: x.min(dim=0), lambda x: x.min(-1, keepdim=False),
    ],
)
def test_max_min_with_torch_keywords_raise(call):
    # torch's x.max(dim=1) is (values, indices): x.max(dim=1)[0] / x.max(-1, keepdim=True)[0] would index
    # Candle's values-only result silently, so the PyTorch-only keyword spellings raise
    x, t = Tensor.new(A), torch.tensor(A)
    assert isinstance(call(t), tuple)
    with pytest.raises(errors.Error, match=r"\(values, indices\).*a(max|min).*arg(max|min)"):
        call(x)


def test_empty_dim_keyword_reduces_everything_as_torch():
    # torch: sum(dim=()) / mean(dim=[]) reduce every dim; Candle's sum(()) reduces none (positional kept)
    x, t = Tensor.new(A), torch.tensor(A)
    for got, want in ((x.sum(dim=()), t.sum(dim=())), (x.mean(dim=[]), t.mean(dim=[])),
                      (x.sum(dim=[], keepdim=True), t.sum(dim=[], keepdim=True))):
        assert got.shape == tuple(want.shape)
        np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-6)
    assert x.sum(()).shape == (2, 3)
