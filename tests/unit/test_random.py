"""Randomness: seeded per-device generators, explicit keys under jit, key_scope, rand/randn."""

from __future__ import annotations

import subprocess
import sys

import jax
import numpy as np
import pytest

from candlejax import Device, DType, Tensor, errors, random

CPU = Device.Cpu


def _draw(seed: int) -> list[float]:
    CPU.set_seed(seed)
    return Tensor.randn(0.0, 1.0, (4,), CPU).to_vec1() + Tensor.rand(0.0, 1.0, (4,), CPU).to_vec1()


def test_same_seed_same_numbers_different_seeds_differ():
    a, b = _draw(42), _draw(42)
    assert a == b
    assert _draw(43) != a
    assert _draw(2**40) != _draw(0)  # all 64 bits of the seed count
    CPU.set_seed(7)
    x = Tensor.randn(0.0, 1.0, (4,), CPU).to_vec1()
    y = Tensor.randn(0.0, 1.0, (4,), CPU).to_vec1()
    assert x != y  # the generator advances
    assert CPU.get_current_seed() == 7


def test_same_seed_same_numbers_in_fresh_process():
    code = (
        "from candlejax import Tensor, Device; Device.Cpu.set_seed(123);"
        "print(Tensor.randn(0.0, 1.0, (3,), Device.Cpu).to_vec1(), Tensor.rand(-1.0, 1.0, (2,)).to_vec1())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    CPU.set_seed(123)
    here = f"{Tensor.randn(0.0, 1.0, (3,), CPU).to_vec1()} {Tensor.rand(-1.0, 1.0, (2,)).to_vec1()}"
    assert out.strip() == here


def test_state_roundtrip():
    CPU.set_seed(5)
    Tensor.rand(0.0, 1.0, (2,), CPU)
    st = random.get_state(CPU)
    a = Tensor.rand(0.0, 1.0, (2,), CPU).to_vec1()
    random.set_state(CPU, st)
    assert Tensor.rand(0.0, 1.0, (2,), CPU).to_vec1() == a


def test_statistics_and_bounds():
    u = np.asarray(Tensor.rand(-2.0, 3.0, (20000,), CPU, key=1), np.float64)
    assert u.min() >= -2.0 and u.max() < 3.0 and abs(u.mean() - 0.5) < 0.05
    n = np.asarray(Tensor.randn(1.0, 2.0, (20000,), CPU, key=2), np.float64)
    assert abs(n.mean() - 1.0) < 0.05 and abs(n.std() - 2.0) < 0.05
    t = Tensor.randn(0.0, 1.0, (100, 784), CPU)
    assert t.shape == (100, 784) and t.dtype is DType.F32


def test_integer_bounds_beyond_int32():
    """Integer bounds above 2**31 - 1 raised jax's OverflowError, and numpy int64 bounds were
    truncated to int32 without x64 mode (rand(np.int64(2**40), ...) drew around 1e9)."""
    lo, up = 2**40, 2**40 + 2**30
    for a, b in ((lo, up), (np.int64(lo), np.int64(up))):
        x = np.asarray(Tensor.rand(a, b, (64,), CPU, key=0), np.float64)
        assert (x >= lo).all() and (x <= up).all()
    assert Tensor.randn(2**31, 0, (2,), CPU, key=0).to_vec1() == [2.0**31] * 2
    assert Tensor.zeros((2,)).randn_like(np.int64(2**40), 0, key=1).to_vec1() == [2.0**40] * 2
    # an int bound draws the same numbers as its float
    assert Tensor.rand(0, 1, (3,), CPU, key=5).to_vec1() == Tensor.rand(0.0, 1.0, (3,), CPU, key=5).to_vec1()


def test_key_is_pure_and_works_under_jit():
    a = Tensor.randn(0.0, 1.0, (3,), CPU, key=jax.random.key(0)).to_vec1()
    b = Tensor.randn(0.0, 1.0, (3,), CPU, key=jax.random.key(0)).to_vec1()
    assert a == b
    assert Tensor.randn(0.0, 1.0, (3,), CPU, key=jax.random.PRNGKey(0)).to_vec1() == a  # raw uint32 key

    @jax.jit
    def f(k):
        return Tensor.randn(0.0, 1.0, (3,), CPU, key=k), Tensor.rand(0.0, 1.0, (2,), CPU, key=k)

    n, u = f(jax.random.key(0))
    assert n.to_vec1() == pytest.approx(a, rel=1e-6)
    assert u.shape == (2,)
    x = Tensor.zeros((2, 2), DType.BF16)
    r = jax.jit(lambda t, k: t.randn_like(0.0, 1.0, key=k))(x, jax.random.key(3))
    assert r.dtype is DType.BF16 and r.shape == (2, 2)


def test_tracing_error_without_key():
    with pytest.raises(errors.TracingError, match="key_scope"):
        jax.jit(lambda: Tensor.randn(0.0, 1.0, (2,), CPU))()
    with pytest.raises(errors.TracingError):
        jax.jit(lambda t: t.rand_like(0.0, 1.0))(Tensor.zeros(2))


def test_key_scope_under_jit():
    @jax.jit
    def f(x, k):
        with random.key_scope(k):
            a = Tensor.randn(0.0, 1.0, x.shape, CPU)
            b = x.rand_like(0.0, 1.0)
        return a, b

    a1, b1 = f(Tensor.zeros(3), jax.random.key(1))
    a2, _ = f(Tensor.zeros(3), jax.random.key(1))
    a3, _ = f(Tensor.zeros(3), jax.random.key(2))
    assert a1.to_vec1() == a2.to_vec1() != a3.to_vec1()
    assert a1.to_vec1() != b1.to_vec1()
    with random.key_scope(5):  # eagerly too, without touching the device generator
        e = Tensor.randn(0.0, 1.0, (3,), CPU).to_vec1()
    with random.key_scope(5):
        assert Tensor.randn(0.0, 1.0, (3,), CPU).to_vec1() == e


def test_rand_like_and_dtypes():
    x = Tensor.zeros((2, 3), DType.F16)
    assert x.rand_like(0.0, 1.0).dtype is DType.F16 and x.randn_like(0.0, 1.0).shape == (2, 3)
    assert Tensor.rand(0.0, 1.0, (2,), CPU, dtype="bf16").dtype is DType.BF16
    with pytest.raises(errors.UnsupportedDTypeForOp, match="U32"):
        Tensor.rand(0.0, 1.0, (2,), CPU, dtype=DType.U32)
    with pytest.raises(errors.UnsupportedDTypeForOp):
        Tensor([1, 2]).rand_like(0.0, 1.0)
    with pytest.raises(errors.UnsupportedDTypeForOp):
        Tensor([1, 2]).randn_like(0.0, 1.0)
    with pytest.raises(errors.UnsupportedDTypeForOp, match="x64"):
        Tensor.randn(0.0, 1.0, (2,), CPU, dtype=DType.F64)


@pytest.mark.parametrize("dt", [DType.BF16, DType.F16], ids=str)
def test_half_precision_samples_are_drawn_in_f32(dt):
    # jax draws a bf16 from 7 random bits: 128 distinct values, normal samples never beyond 2.5
    # standard deviations; rand(5, 6) rounded 1.5% of its bf16 samples up to the excluded 6.0
    n = np.asarray(Tensor.randn(0.0, 1.0, (200_000,), CPU, key=0, dtype=dt).to_dtype(DType.F32))
    assert len(np.unique(n)) > 1000 and np.abs(n).max() > 4.0
    assert abs(n.mean()) < 0.01 and abs(n.std() - 1.0) < 0.01
    u = np.asarray(Tensor.rand(5.0, 6.0, (200_000,), CPU, key=1, dtype=dt).to_dtype(DType.F32))
    assert u.min() >= 5.0 and u.max() < 6.0
    z = Tensor.zeros((200_000,), dt)
    r = np.asarray(z.rand_like(0.0, 1.0, key=2).to_dtype(DType.F32))
    assert r.max() < 1.0 and len(np.unique(r)) > 1000
    assert Tensor.rand(2.0, 2.0, (3,), CPU, key=0, dtype=dt).to_vec1() == [2.0, 2.0, 2.0]


def test_bad_arguments():
    with pytest.raises(errors.Msg, match="lo must not exceed up"):
        Tensor.rand(1.0, 0.0, (2,), CPU)
    with pytest.raises(errors.Msg, match="std must be non-negative"):
        Tensor.randn(0.0, -1.0, (2,), CPU)
    with pytest.raises(errors.Msg, match="seed"):
        CPU.set_seed(-1)
    with pytest.raises(errors.Msg, match="random key"):
        Tensor.rand(0.0, 1.0, (2,), CPU, key="abc")
    assert random.split(0, 3).shape == (3,)


def test_a_test_draws_from_fresh_generators_whatever_ran_before():
    """Every test starts from the device generators of a fresh process (the tests before this one drew
    and reseeded): the numbers a test draws are the same in every run and under ``pytest -n``, whichever
    worker runs it after whichever tests."""
    assert random.get_state(CPU) == (random.DEFAULT_SEED, 0)
    assert Tensor.randn(0.0, 1.0, (4,), CPU).to_vec1() == _draw(random.DEFAULT_SEED)[:4]
