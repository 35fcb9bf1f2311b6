"""Candle's in-place Tensor APIs: written as Candle writes them they fail at once, naming the rebinding."""

import re

import jax
import numpy as np
import pytest

import candlejax as cj
from candlejax import errors
from candlejax._discarded import caller_discards_result


def _ids() -> cj.Tensor:
    return cj.Tensor.new(np.array([[0, 1, 2, 0]], np.uint32))


def test_slice_set_as_a_statement_raises_and_names_the_rebinding():
    a = cj.Tensor.zeros((3, 4))
    with pytest.raises(errors.InPlaceStatement, match=r"t = t\.slice_set\(src, dim, offset\)"):
        a.slice_set(cj.Tensor.ones((1, 4)), 0, 1)
    assert a.sum_all().to_scalar() == 0.0


def test_slice_set_with_its_result_used_is_functional():
    a = cj.Tensor.zeros((3, 4))
    b = a.slice_set(cj.Tensor.ones((1, 4)), 0, 1)
    np.testing.assert_array_equal(np.asarray(b), np.array([[0] * 4, [1] * 4, [0] * 4], np.float32))
    out = [a.slice_set(cj.Tensor.ones((1, 4)), 0, 2)][0]  # inside an expression: used
    assert out.sum_all().to_scalar() == 4.0


def test_argument_errors_come_before_the_statement_error():
    with pytest.raises(errors.Msg, match="shape mismatch on dim 1"):
        cj.Tensor.zeros((3, 4)).slice_set(cj.Tensor.ones((1, 3)), 0, 1)


def test_scatter_set_pair_as_statements_raise():
    a = cj.Tensor.zeros((3, 4))
    src = cj.Tensor.ones((1, 4))
    with pytest.raises(errors.InPlaceStatement, match="scatter_set"):
        a.scatter_set(_ids(), src, 0)
    with pytest.raises(errors.InPlaceStatement, match="scatter_add_set"):
        a.scatter_add_set(_ids(), src, 0)
    assert a.scatter_add_set(_ids(), src, 0).sum_all().to_scalar() == 4.0


def test_slice_set_statement_under_jit_raises_and_the_functional_form_traces():
    cache, k = cj.Tensor.zeros((2, 6)), cj.Tensor.ones((2, 1))

    def as_candle(c, x, pos):
        c.slice_set(x, 1, pos)
        return c

    with pytest.raises(errors.InPlaceStatement):
        jax.jit(as_candle)(cache, k, 3)
    out = jax.jit(lambda c, x, pos: c.slice_set(x, 1, pos))(cache, k, 3)
    assert np.asarray(out)[:, 3].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("name, spelling", [("zero_set", "zeros_like"), ("one_set", "ones_like"),
                                            ("const_set", "full_like"), ("inplace_op1", "t = f(t)")])
def test_candle_in_place_names_point_to_the_functional_spelling(name, spelling):
    t = cj.Tensor.zeros((2,))
    with pytest.raises(errors.CandleInPlaceName, match=re.escape(spelling)) as info:
        getattr(t, name)
    assert isinstance(info.value, AttributeError)  # hasattr() stays False


def test_discard_detection_sees_only_bare_statements():
    seen = []

    class Probe:
        def call(self) -> int:
            seen.append(caller_discards_result())
            return 1

    p = Probe()
    p.call()
    x = p.call()
    y = (p.call(), 2)
    for _ in range(1):
        p.call()
    assert x == 1 and y[1] == 2
    assert seen == [True, False, False, True]


@pytest.mark.parametrize("make", [lambda: cj.nn.KvCache.new(2, 8), lambda: cj.nn.ConcatKvCache.new(2),
                                  lambda: cj.nn.RotatingKvCache.new(2, 4)])
def test_kv_cache_append_ported_as_candles_pair_fails_at_first_use(make):
    k = cj.Tensor.ones((1, 2, 1, 4))
    (k_all, v_all), cache = make().append(k, k)  # candlejax's spelling
    assert k_all.shape == v_all.shape and cache.current_seq_len() is not None
    k_wrong, v_wrong = make().append(k, k)  # Candle's `let (k, v) = cache.append(&k, &v)?`
    with pytest.raises(errors.Msg, match=re.escape("(k, v), cache = cache.append(k, v)")):
        k_wrong.t()
    with pytest.raises(errors.Msg, match=r"got KeysValues .*cache\.append"):
        k.matmul(k_wrong)
    for arith in (lambda: k_wrong * 2, lambda: k_wrong + 1, lambda: 2 * k_wrong, lambda: k @ k_wrong):
        with pytest.raises(errors.Msg, match="arithmetic on it"):
            arith()
    assert len(k_wrong + ("x",)) == 3  # noqa: RUF005 - still a tuple for tuple concatenation
    with pytest.raises(errors.Msg, match=r"KvCache .*cache\.append"):
        k.matmul(v_wrong)
    out = jax.jit(lambda c, x: c.append(x, x))(make(), k)  # the pair is a pytree
    assert out[0][0].shape == k_all.shape
