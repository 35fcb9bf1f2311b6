"""Moving data between candlejax and torch / numpy / candle-pyo3, checked against what torch and
candle-pyo3 give for the same data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from candlejax import DType, Tensor, errors


def test_tensor_of_a_torch_tensor_is_a_copy_as_torch_tensor():
    """``Tensor(x)`` / ``Tensor.new(x)`` copy, as ``torch.tensor(x)``: writing into ``x`` afterwards
    leaves the Tensor as it was (JAX arrays are immutable; a shared buffer would change under it)."""
    for make in (Tensor, Tensor.new):
        x = torch.zeros(3)
        ref = x.detach().clone()  # what torch.tensor(x) gives
        t = make(x)
        x[0] = 5.0
        assert t.to_vec1() == ref.tolist() == [0.0, 0.0, 0.0]
    x = torch.zeros(2, 3).t()  # non-contiguous (one copy from .contiguous())
    t = Tensor(x)
    x[0, 0] = 5.0
    assert t.to_vec2() == [[0.0, 0.0]] * 3


def test_torch_negative_and_conjugate_views_keep_their_values():
    """A torch tensor with the negative bit set (a lazy ``neg``) reads as its values, as
    ``x.resolve_neg().numpy()`` does; DLPack alone exports the buffer without the sign."""
    x = torch.arange(1.0, 4.0)._neg_view()
    assert x.is_neg()
    want = x.resolve_neg().tolist()
    assert want == [-1.0, -2.0, -3.0]
    assert Tensor(x).to_vec1() == want
    assert Tensor.from_torch(x).to_vec1() == want
    assert Tensor(x.conj()).to_vec1() == want


def test_torch_tensors_without_data_raise_candlejax_errors():
    """A meta tensor has no values (torch: ``Cannot copy out of meta tensor``), a sparse one no strided
    buffer: both raise a candlejax error naming the tensor kind, not torch's NotImplementedError."""
    with pytest.raises(errors.Error, match="meta"):
        Tensor(torch.ones(3, device="meta"))
    with pytest.raises(errors.Error, match="meta"):
        Tensor.from_torch(torch.ones(3, device="meta"))
    with pytest.raises(errors.Error, match="to_dense"):
        Tensor(torch.eye(2).to_sparse())
