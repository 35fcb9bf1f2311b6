"""candlejax.xla: compiler options chosen by input size and CPU, and SizeJit's choice of program."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from candlejax import xla


def test_large_input_options_depend_on_the_cpu_vendor(monkeypatch):
    monkeypatch.setattr(xla, "_cpu_vendor", lambda: "GenuineIntel")
    assert xla.large_input_options() == {}
    monkeypatch.setattr(xla, "_cpu_vendor", lambda: "AuthenticAMD")
    assert xla.large_input_options() == xla.LARGE_INPUT_OPTIONS
    assert xla.large_input_options() is not xla.LARGE_INPUT_OPTIONS  # a copy: callers may not change the constant


def test_size_jit_picks_the_program_by_token_count():
    def f(scale, ids):
        return (ids * scale).sum()

    sj = xla.SizeJit(f, xla.LARGE_INPUT_OPTIONS, threshold=8)
    small, large = jnp.ones((2, 3)), jnp.ones((4, 4))
    assert sj._pick((2.0, small)) is sj._plain
    assert sj._pick((2.0, large)) is sj._large
    assert float(sj(2.0, small)) == 12.0 and float(sj(2.0, large)) == 32.0
    plain_only = xla.SizeJit(f, {}, threshold=8)
    assert plain_only._large is None and plain_only._pick((2.0, large)) is plain_only._plain
    np.testing.assert_allclose(float(plain_only(2.0, large)), 32.0)
