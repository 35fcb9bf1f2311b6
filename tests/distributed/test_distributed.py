"""Runs the many-device cases (cases_*.py) in a child process with 8 simulated CPU devices.

``--xla_force_host_platform_device_count`` only works before JAX starts, so the cases run in
their own pytest process (once per module); each case is reported here as its own test.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
CASES = HERE / "cases_mesh.py"


def _case_names(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]


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


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, list[str]]:
    xml = tmp_path_factory.mktemp("cases") / "junit.xml"
    proc = run_child(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", str(CASES),
                      f"--junitxml={xml}", "-o", "junit_family=xunit1"])  # fmt: skip
    if not xml.exists():
        pytest.fail(f"the many-device cases did not run:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    out: dict[str, list[str]] = {}
    for tc in ET.parse(xml).getroot().iter("testcase"):
        name = tc.get("name", "")
        failures = out.setdefault(name.split("[")[0], [])
        for c in tc:
            if c.tag in ("failure", "error", "skipped"):
                failures.append(f"{name}: {c.tag}: {c.get('message', '')}\n{c.text or ''}")
    return out


@pytest.mark.parametrize("case", _case_names(CASES))
def test_case(results, case):
    assert case in results, f"{case} did not run (collected: {sorted(results)})"
    if results[case]:
        pytest.fail("\n".join(results[case])[-6000:], pytrace=False)
