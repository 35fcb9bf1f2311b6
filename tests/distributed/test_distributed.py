"""Runs the many-device cases (cases_*.py) in a child process with 8 simulated CPU devices.

``--xla_force_host_platform_device_count`` only works before JAX starts, so the cases run in
their own pytest process (once per module); each case is reported here as its own test.
"""

from __future__ import annotations

import pytest

from dist_helpers import HERE, case_names, run_cases  # isort: skip

CASES = HERE / "cases_mesh.py"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, list[str]]:
    return run_cases(CASES, tmp_path_factory.mktemp("cases") / "junit.xml")


@pytest.mark.parametrize("case", case_names(CASES))
def test_case(results, case):
    assert case in results, f"{case} did not run (collected: {sorted(results)})"
    if results[case]:
        pytest.fail("\n".join(results[case])[-6000:], pytrace=False)
