"""candlejax._jax_private: JAX internals behind one flag, with public-API fallbacks that give the
same results (the eager trace check, the shape buckets through the Python gate)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from candlejax import Device, Tensor, _dispatch, _jax_private, errors, random


def test_public_trace_check_agrees_with_the_private_one():
    checks = [_jax_private.is_eager_public, _jax_private.is_eager]
    for check in checks:
        assert check() is True
        seen: list[bool] = []

        def f(x, check=check, seen=seen):
            seen.append(check())
            return x * 2

        jax.jit(f)(1.0)
        jax.grad(f)(1.0)
        jax.vmap(f)(jnp.ones(3))
        assert seen == [False, False, False]
        assert check() is True


def test_fallback_flag_turns_the_cpp_copy_off_with_the_same_results(monkeypatch):
    monkeypatch.setattr(_jax_private, "AVAILABLE", False)
    assert _jax_private.rebuild_jit(jax.jit(lambda a: a + 1), lambda args, kwargs: (None, False)) is None

    @_dispatch.op(elementwise=True)
    def cube_plus_one(a):
        return a * a * a + 1

    assert not hasattr(cube_plus_one.jitted, "_cache_size")  # the Python gate, not a C++ jit object
    a = np.linspace(-2, 2, 3 * 1237, dtype=np.float32).reshape(3, 1237)  # a new shape: bucketed
    x = jax.device_put(a)
    for _ in range(_dispatch.EXACT_AFTER + 2):  # bucketed calls, then the exact executable
        got = np.asarray(cube_plus_one(x))
        assert got.shape == a.shape
        np.testing.assert_allclose(got, a.astype(np.float64) ** 3 + 1, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(jax.jit(cube_plus_one)(x)), got)  # traced: the plain function


def test_rebuilt_jit_sends_misses_to_the_hook():
    if not _jax_private.AVAILABLE:
        pytest.skip("this JAX's internals differ: the Python gate is used")
    calls: list[tuple[int, ...]] = []

    def hook(args, kwargs):
        calls.append(args[0].shape)
        return (jnp.zeros(args[0].shape), False) if args[0].shape == (2,) else (None, False)

    f = _jax_private.rebuild_jit(jax.jit(lambda a: a + 1), hook)
    assert f is not None
    np.testing.assert_array_equal(np.asarray(f(jnp.ones(2))), 0.0)  # the hook's answer
    np.testing.assert_array_equal(np.asarray(f(jnp.ones(2))), 0.0)  # not cached: the hook again
    np.testing.assert_array_equal(np.asarray(f(jnp.ones(3))), 2.0)  # JAX's own miss handler
    np.testing.assert_array_equal(np.asarray(f(jnp.ones(3))), 2.0)  # cached: no hook call
    assert calls == [(2,), (2,), (3,)]


def test_a_process_without_jax_internals_gives_the_same_answers(tmp_path):
    code = textwrap.dedent(
        """
        import jax, numpy as np
        import candlejax as cj
        from candlejax import Device, Tensor, _dispatch, _jax_private, errors
        assert _jax_private.AVAILABLE is False and _dispatch.is_eager is _jax_private.is_eager_public
        a = np.arange(2 * 2111, dtype=np.float32).reshape(2, 2111) / 1000
        x = Tensor.new(a)
        for _ in range(4):
            np.testing.assert_allclose(np.asarray((x * 2 + 1).exp()), np.exp(a * 2 + 1), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(x.softmax(-1)).sum(-1), 1.0, rtol=1e-5)
        Device.Cpu.set_seed(7)
        r = np.asarray(Tensor.randn(0.0, 1.0, (5,), Device.Cpu))
        print(" ".join(f"{v:.6f}" for v in r))
        try:
            jax.jit(lambda t: t + Tensor.randn(0.0, 1.0, (5,), Device.Cpu))(Tensor.new(r))
        except errors.TracingError:
            print("tracing error")
        """
    )
    env = {**os.environ, "CANDLEJAX_JAX_PRIVATE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split("\n")
    state = random.get_state(Device.Cpu)
    try:
        Device.Cpu.set_seed(7)
        want = " ".join(f"{v:.6f}" for v in np.asarray(Tensor.randn(0.0, 1.0, (5,), Device.Cpu)))
    finally:
        random.set_state(Device.Cpu, state)
    assert lines[0] == want  # same seed, same numbers with or without JAX internals
    assert lines[1] == "tracing error"
    with pytest.raises(errors.TracingError):
        jax.jit(lambda t: t + Tensor.randn(0.0, 1.0, (5,), Device.Cpu))(Tensor.new(np.zeros(5, np.float32)))


def test_drop_tracing_caches_keeps_what_jitted_functions_run(jax_compiles, monkeypatch):
    """``candlejax.xla.drop_tracing_caches`` empties JAX's tracing caches (a function traced inside a
    new trace is traced again) while a jitted function that has run neither traces nor compiles again."""
    from candlejax import xla

    traced: list[str] = []

    @jax.jit
    def inner(x):
        traced.append("inner")
        return jnp.sin(x) * 3

    @jax.jit
    def outer(x):
        traced.append("outer")
        return inner(x) + 1

    x = jnp.arange(4.0)
    want_inner, want_outer = np.asarray(inner(x)), np.asarray(outer(x))
    assert traced == ["inner", "outer"]  # inner's trace is cached, and reused inside outer's
    if not _jax_private.AVAILABLE:
        pytest.skip("CANDLEJAX_JAX_PRIVATE=0: drop_tracing_caches does nothing")
    assert xla.drop_tracing_caches() is True
    jax_compiles.clear()
    np.testing.assert_array_equal(inner(x), want_inner)
    np.testing.assert_array_equal(outer(x), want_outer)
    assert jax_compiles == [] and traced == ["inner", "outer"]  # both still run their programs
    jax.jit(lambda a: inner(a) * 2)(x)  # a new trace calling inner: its cached trace was dropped
    assert traced == ["inner", "outer", "inner"]
    monkeypatch.setattr(_jax_private, "AVAILABLE", False)
    assert xla.drop_tracing_caches() is False
