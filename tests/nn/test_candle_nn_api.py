"""candle-nn names and call forms that Candle code ports with: builder statements, config fields,
accessor calls, module paths and the layers' Candle-specific input forms."""

from __future__ import annotations

import numpy as np
import pytest

import candlejax.nn as nn
from candlejax import Tensor, errors


def _t(a):
    return Tensor(np.asarray(a, np.float32))


def test_sequential_add_as_a_statement_raises_instead_of_adding_nothing():
    s = nn.seq()
    with pytest.raises(errors.InPlaceStatement, match=r"s = s\.add\(\.\.\.\)"):
        s.add(lambda x: x * 2)
    with pytest.raises(errors.InPlaceStatement, match=r"s = s\.add_fn\(\.\.\.\)"):
        s.add_fn(lambda x: x + 1)
    assert s.len() == 0  # unchanged, and said so
    s = s.add(lambda x: x * 2)  # rebinding and chaining work
    s = s.add_fn(lambda x: x + 1).add(nn.Activation.Relu)
    assert s.len() == 3
    np.testing.assert_array_equal(np.asarray(s(_t([1.0, -3.0]))._a), [3.0, 0.0])
