"""candlejax's import-time CPU async-dispatch setting and the environment variables that override it."""

import os
import subprocess
import sys

import pytest

CODE = "import candlejax, jax; print(jax.config.read('jax_cpu_enable_async_dispatch'))"


def _read(env: dict[str, str]) -> str:
    names = ("JAX_CPU_ENABLE_ASYNC_DISPATCH", "CANDLEJAX_ASYNC_DISPATCH")
    base = {k: v for k, v in os.environ.items() if k not in names}
    out = subprocess.run([sys.executable, "-c", CODE], env={**base, **env}, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "False"),  # candlejax's default: off
        ({"CANDLEJAX_ASYNC_DISPATCH": "1"}, "True"),  # JAX's default kept
        ({"JAX_CPU_ENABLE_ASYNC_DISPATCH": "0"}, "False"),  # JAX does not read this variable; candlejax does
        ({"JAX_CPU_ENABLE_ASYNC_DISPATCH": "1"}, "True"),
    ],
)
def test_async_dispatch_setting(env, expected):
    assert _read(env) == expected
