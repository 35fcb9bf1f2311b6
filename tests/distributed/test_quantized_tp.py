"""Runs cases_quantized.py (tensor-parallel GGUF LLaMA) in a child process with 8 simulated CPU
devices; each case is reported here as its own test."""

from __future__ import annotations

import pytest

from dist_helpers import HERE, case_names, run_cases  # isort: skip

CASES = HERE / "cases_quantized.py"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, list[str]]:
    return run_cases(CASES, tmp_path_factory.mktemp("qcases") / "junit.xml")


@pytest.mark.parametrize("case", case_names(CASES))
def test_case(results, case):
    assert case in results, f"{case} did not run (collected: {sorted(results)})"
    if results[case]:
        pytest.fail("\n".join(results[case])[-6000:], pytrace=False)
