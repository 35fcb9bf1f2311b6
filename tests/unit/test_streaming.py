"""candle-core/src/streaming.rs: ``StreamTensor``, ``StreamingBinOp``, ``Map`` (used by mimi's
streaming convolutions), checked against numpy on the frames they hold."""

from __future__ import annotations

import numpy as np
import pytest

import candlejax as cj
from candlejax import D, StreamingBinOp, StreamTensor, Tensor, errors
from candlejax.streaming import BinOp, Map


def _st(a: np.ndarray) -> StreamTensor:
    return StreamTensor.from_tensor(Tensor.new(a.astype(np.float32)))


def _np(st: StreamTensor):
    t = st.as_option()
    return None if t is None else np.asarray(t.numpy())


def test_stream_tensor_basics():
    x = np.arange(2 * 5, dtype=np.float32).reshape(2, 5)
    st, empty = _st(x), StreamTensor.empty()
    assert st.shape() == (2, 5) and empty.shape() is None and empty.as_option() is None
    assert repr(empty) == "Empty" and repr(st) == "[2, 5]"
    assert StreamTensor(None).as_option() is None and cj.streaming.StreamTensor is StreamTensor
    assert (st.seq_len(D.Minus1), st.seq_len(0), empty.seq_len(1)) == (5, 2, 0)
    # cat2: an empty side is skipped (Candle: StreamTensor::cat2(&prev, &xs, dim), also unbound)
    np.testing.assert_array_equal(_np(StreamTensor.cat2(st, st, D.Minus1)), np.concatenate([x, x], -1))
    np.testing.assert_array_equal(_np(empty.cat2(st, 1)), x)
    np.testing.assert_array_equal(_np(st.cat2(empty, 1)), x)
    assert empty.cat2(StreamTensor.empty(), 0).as_option() is None
    # narrow: clipped to the end; empty at or past it
    np.testing.assert_array_equal(_np(st.narrow(1, 3, 10)), x[:, 3:])
    np.testing.assert_array_equal(_np(st.narrow(D.Minus1, 1, 2)), x[:, 1:3])
    assert st.narrow(1, 5, 1).as_option() is None and empty.narrow(1, 0, 1).as_option() is None
    # split: (first lhs_len, rest); a side with no entries is empty
    lhs, rhs = st.split(1, 2)
    np.testing.assert_array_equal(_np(lhs), x[:, :2])
    np.testing.assert_array_equal(_np(rhs), x[:, 2:])
    lhs, rhs = st.split(1, 0)
    assert lhs.as_option() is None and _np(rhs).shape == (2, 5)
    lhs, rhs = st.split(1, 9)
    assert _np(lhs).shape == (2, 5) and rhs.as_option() is None
    assert all(s.as_option() is None for s in empty.split(0, 3))
    # apply: a Module or a function; empty stays empty
    np.testing.assert_array_equal(_np(st.apply(lambda t: t * 2.0)), 2 * x)
    assert empty.apply(lambda t: t * 2.0).as_option() is None
    np.testing.assert_array_equal(_np(Map(lambda t: t + 1.0).step(st)), x + 1)
    # reset empties in place (Candle: &mut self)
    st.reset()
    assert st.as_option() is None
    with pytest.raises(errors.Error):
        StreamTensor.from_tensor(None)
    with pytest.raises(errors.Error):
        StreamTensor(np.zeros(3))


@pytest.mark.parametrize("op, ref", [(BinOp.Add, np.add), (BinOp.Mul, np.multiply), (BinOp.Sub, np.subtract),
                                     (BinOp.Div, np.divide)])
def test_streaming_bin_op_buffers_the_longer_side(op, ref):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 7)).astype(np.float32)
    b = rng.standard_normal((2, 7)).astype(np.float32) + 3.0
    m = StreamingBinOp.new(op, D.Minus1)
    np.testing.assert_allclose(m.forward(Tensor.new(a), Tensor.new(b)).numpy(), ref(a, b), rtol=1e-6)
    # lhs arrives in chunks 3, 1, 3 and rhs in 1, 4, 2: each step yields the frames both sides have
    outs = [m.step(_st(a[:, :3]), _st(b[:, :1])), m.step(_st(a[:, 3:4]), _st(b[:, 1:5])),
            m.step(StreamTensor.empty(), StreamTensor.empty()), m.step(_st(a[:, 4:]), _st(b[:, 5:]))]
    assert [o.seq_len(1) for o in outs] == [1, 3, 0, 3]
    assert outs[2].as_option() is None
    got = np.concatenate([_np(o) for o in outs if o.as_option() is not None], axis=1)
    np.testing.assert_allclose(got, ref(a, b), rtol=1e-6)
    # reset_state drops the buffered surplus
    m.step(_st(a[:, :4]), _st(b[:, :1]))
    m.reset_state()
    out = m.step(_st(a[:, :2]), _st(b[:, :2]))
    np.testing.assert_allclose(_np(out), ref(a[:, :2], b[:, :2]), rtol=1e-6)
    with pytest.raises(errors.Error):
        StreamingBinOp("add", D.Minus1)
