"""Candle's ``candle::test_utils``: ``to_vec0_round`` ... ``to_vec3_round`` (values rounded to
``digits`` decimals, for comparisons in tests) and ``assert_tensor_eq``; they are
:mod:`candlejax.testing`'s.

>>> from candlejax import Tensor
>>> from candlejax.test_utils import to_vec1_round
>>> to_vec1_round(Tensor.new([1.23456, 2.0]), 2)
[1.23, 2.0]
"""

from candlejax.testing import assert_tensor_eq, to_vec0_round, to_vec1_round, to_vec2_round, to_vec3_round

__all__ = ["assert_tensor_eq", "to_vec0_round", "to_vec1_round", "to_vec2_round", "to_vec3_round"]
