"""Runs the many-device cases (cases_*.py) in a child process with 8 simulated CPU devices.

``--xla_force_host_platform_device_count`` only works before JAX starts, so the cases run in
their own pytest process (once per module); each case is reported here as its own test.
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dist_helpers import HERE, run_child  # isort: skip

CASES = HERE / "cases_mesh.py"


def _case_names(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]


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
