"""Shared test fixtures: numpy RNG with a printed seed, float64 references."""

from __future__ import annotations

import os
import sys
import zlib

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# the command-line tools keep compiled programs on disk; tests that want that turn it on themselves
os.environ.setdefault("CANDLEJAX_COMPILATION_CACHE", "0")

import candlejax


@pytest.fixture
def rng(request) -> np.random.Generator:
    seed = zlib.crc32(request.node.nodeid.encode())  # stable across processes (str hash is salted)
    print(f"numpy seed: {seed}")
    return np.random.default_rng(seed)


def _reset_global_generators(seed: int) -> None:
    candlejax.random._state.clear()  # every device's generator as in a fresh process (seed 299792458)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


@pytest.fixture(autouse=True)
def _seeded_global_generators(request):
    """torch's global generator seeded per test, candlejax's devices' generators fresh, before and after
    each test: torch seeds its generator randomly in every process (module initialisers, ``torch.randn``),
    and under ``pytest -n`` the tests a worker ran before this one change from run to run."""
    _reset_global_generators(zlib.crc32(request.node.nodeid.encode()))
    yield
    _reset_global_generators(0)


@pytest.fixture
def x64():
    """JAX's 64-bit mode on for one test (i64/f64 tensors), restored afterwards."""
    prev = candlejax.x64_enabled()
    candlejax.enable_x64(True)
    try:
        yield
    finally:
        candlejax.enable_x64(prev)


@pytest.fixture
def jax_compiles():
    """A list that collects JAX's "Compiling ..." log messages while the test runs (``jax.log_compiles``)."""
    import logging

    import jax

    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("Compiling "):
                seen.append(record.getMessage())

    handler = Collect()
    log = logging.getLogger("jax")
    log.addHandler(handler)
    try:
        with jax.log_compiles(True):
            yield seen
    finally:
        log.removeHandler(handler)
