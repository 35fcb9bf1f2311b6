"""Which candlejax a bench script measures: the tree it imports and whether its native kernels are built.

A checkout without ``candlejax/quantized/_native*.so`` (a fresh worktree, ``git archive``) or a run with
``CANDLEJAX_NATIVE=0`` silently takes the pure-JAX paths, and a script run from another checkout without
``PYTHONPATH`` imports the editable install's tree: the scripts print :func:`describe` beside their tables.
Found without importing candlejax (no JAX in a parent process that only starts workers, which see the
same path).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path


def describe() -> str:
    """``candlejax from <folder> (commit <hash>), native kernels: built | NOT BUILT ... | off ...``."""
    spec = importlib.util.find_spec("candlejax")
    if spec is None or spec.origin is None:
        return "candlejax: not importable"
    pkg = Path(spec.origin).resolve().parent
    if os.environ.get("CANDLEJAX_NATIVE") == "0":
        native = "off (CANDLEJAX_NATIVE=0: pure-JAX paths)"
    elif any(pkg.glob("quantized/_native*.so")):
        native = "built"
    else:
        native = "NOT BUILT (pure-JAX paths)"
    try:
        commit = subprocess.run(["git", "-C", str(pkg.parent), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "?"  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    return f"candlejax from {pkg} (commit {commit}), native kernels: {native}"
