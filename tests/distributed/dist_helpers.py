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


def run_cases(path: Path, junit: Path, timeout: float = 900) -> dict[str, list[str]]:
    """Run the pytest cases in ``path`` in a child with 8 simulated devices: test name -> its failures."""
    import xml.etree.ElementTree as ET

    proc = run_child(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", str(path),
                      f"--junitxml={junit}", "-o", "junit_family=xunit1"], timeout=timeout)  # fmt: skip
    if not junit.exists():
        raise AssertionError(f"the many-device cases did not run:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    out: dict[str, list[str]] = {}
    for tc in ET.parse(junit).getroot().iter("testcase"):
        name = tc.get("name", "")
        failures = out.setdefault(name.split("[")[0], [])
        for c in tc:
            if c.tag in ("failure", "error", "skipped"):
                failures.append(f"{name}: {c.tag}: {c.get('message', '')}\n{c.text or ''}")
    return out


def case_names(path: Path) -> list[str]:
    """The ``test_*`` functions defined in ``path``."""
    import ast

    tree = ast.parse(path.read_text())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
