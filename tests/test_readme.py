"""Every ```python block in README.md and docs/**/*.md runs as written, in a fresh process, from an
empty temporary directory. A block that cannot run here is marked, visibly, by the line
``<!-- no-run: reason -->`` right before it (used sparingly; the reason is shown in the docs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_BLOCK = re.compile(r"(?:<!--\s*no-run:\s*(?P<why>.*?)\s*-->\s*\n)?^```python[ \t]*\n(?P<code>.*?)^```", re.M | re.S)


def blocks() -> list:
    out = []
    for f in FILES:
        text = f.read_text(encoding="utf-8")
        for m in _BLOCK.finditer(text):
            line = text[: m.start("code")].count("\n")
            rel = f.relative_to(ROOT).as_posix()
            marks = [pytest.mark.skip(reason=f"no-run: {m['why']}")] if m["why"] else []
            out.append(pytest.param(m["code"], id=f"{rel}:{line}", marks=marks))
    return out


BLOCKS = blocks()


def test_readme_has_python_blocks():
    assert sum(p.id.startswith("README.md") for p in BLOCKS) >= 3
    assert all(not p.marks for p in BLOCKS if p.id.startswith("README.md")), "every README block runs"


@pytest.mark.parametrize("code", BLOCKS)
def test_code_block_runs(code: str, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"block failed:\n{code}\n--- stderr ---\n{r.stderr[-3000:]}"
