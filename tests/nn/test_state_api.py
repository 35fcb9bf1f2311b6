"""The parameter and state API of Modules: named Vars, state dicts and safetensors round trips,
checked against the values written (numpy) and against torch's modules."""

from __future__ import annotations

import numpy as np

from candlejax.nn import Linear, Var


def _unnamed_linear(w: list, b: list) -> Linear:
    """A Linear built from Vars without names: ``named_vars`` names them by attribute path."""
    return Linear(Var.new(np.array(w, np.float32)), Var.new(np.array(b, np.float32)))


def test_load_state_dict_sets_vars_named_by_their_path():
    lin = _unnamed_linear([[1.0, 2.0]], [0.5])
    assert sorted(lin.named_vars()) == ["bias", "weight"]
    got = lin.load_state_dict({"weight": np.array([[3.0, 4.0]], np.float32), "bias": np.array([9.0], np.float32)})
    np.testing.assert_array_equal(np.asarray(got.weight), [[3.0, 4.0]])
    np.testing.assert_array_equal(np.asarray(got.bias), [9.0])
    np.testing.assert_array_equal(np.asarray(lin.weight), [[1.0, 2.0]])  # the original is unchanged


def test_load_safetensors_round_trips_vars_named_by_their_path(tmp_path):
    src = _unnamed_linear([[1.0, 2.0]], [0.5])
    p = tmp_path / "lin.safetensors"
    src.save_safetensors(p)
    got = _unnamed_linear([[0.0, 0.0]], [0.0]).load_safetensors(p)
    np.testing.assert_array_equal(np.asarray(got.weight), [[1.0, 2.0]])
    np.testing.assert_array_equal(np.asarray(got.bias), [0.5])
