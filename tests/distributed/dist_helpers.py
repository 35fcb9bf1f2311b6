"""Helpers for the many-device tests: run Python in a child process with simulated CPU devices."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def run_child(args: list[str], timeout: float = 600, devices: int | None = 8) -> subprocess.CompletedProcess:
    """``python args...`` from the repository root; ``devices``: simulated CPU devices (None: the child's choice)."""
    env = dict(os.environ)
    if devices is not None:
        # simulated devices share the CPU: on a loaded machine a collective can wait longer than XLA's 40 s default
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
                            " --xla_cpu_collective_call_terminate_timeout_seconds=600").strip()  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
