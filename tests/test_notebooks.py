"""The notebooks run top to bottom without an error, in a fresh kernel of this Python, in a temp dir.

Notebooks are kept in git with their outputs (so they read well on GitHub); a test checks that every
code cell was executed, in order, without an error. ``CANDLEJAX_WRITE_NOTEBOOKS=1`` writes the
outputs of this run back into notebooks/ (the only way they change).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("jupyter_client.kernelspec")

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
KERNEL = "python3"
CELL_TIMEOUT_S = 120


def _runs_this_python(argv0: str) -> bool:
    """Whether a kernelspec's ``argv[0]`` starts ``sys.executable`` (jupyter_client substitutes
    ``sys.executable`` for a bare ``python``, ``python3`` or ``python3.X``)."""
    major, minor = sys.version_info[:2]
    if argv0 in ("python", f"python{major}", f"python{major}.{minor}"):
        return True
    return os.path.abspath(argv0) == os.path.abspath(sys.executable)


@pytest.fixture
def kernel_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``python3`` if it starts this interpreter; otherwise a ``python3`` kernelspec written to a temp
    dir that does, found first through ``JUPYTER_PATH``."""
    try:
        spec = kernelspec.KernelSpecManager().get_kernel_spec(KERNEL)
        if _runs_this_python(spec.argv[0]):
            return KERNEL
    except kernelspec.NoSuchKernel:
        pass
    d = tmp_path / "jupyter" / "kernels" / KERNEL
    d.mkdir(parents=True)
    spec_json = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python {sys.version_info.major} (test)",
        "language": "python",
    }
    (d / "kernel.json").write_text(json.dumps(spec_json))
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join([str(tmp_path / "jupyter"), os.environ.get("JUPYTER_PATH", "")]))
    spec = kernelspec.KernelSpecManager().get_kernel_spec(KERNEL)
    assert spec.argv[0] == sys.executable, spec.argv
    return KERNEL


def _errors(nb) -> list[str]:
    out = []
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                out.append(f"cell {i}: {o.get('ename')}: {o.get('evalue')}")
    return out


def test_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    assert names[:3] == ["01_tensors.ipynb", "02_training.ipynb", "03_models.ipynb"]
    for name in ("04_vision.ipynb", "05_whisper.ipynb", "06_segment_anything.ipynb"):
        assert name in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_saved_with_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: run it top to bottom (CANDLEJAX_WRITE_NOTEBOOKS=1)"
    assert any(c.outputs for c in nb.cells if c.cell_type == "code"), f"{path.name} was saved without outputs"
    assert not _errors(nb), f"{path.name} was saved with an error output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path, kernel_name: str):
    nb = nbformat.read(path, as_version=4)
    work = tmp_path / "work"
    work.mkdir()
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=kernel_name,
        allow_errors=False,
        resources={"metadata": {"path": str(work)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    assert not _errors(nb)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells)
    if os.environ.get("CANDLEJAX_WRITE_NOTEBOOKS") == "1":
        nb.metadata.pop("widgets", None)
        nbformat.write(nb, path)
    if path.stem == "02_training":
        images = sum("image/png" in o.get("data", {}) for c in code_cells for o in c.outputs)
        assert images >= 3, "the training notebook draws the digits, the loss curve and the weights"
        assert (work / "model.safetensors").exists()
    if path.stem == "04_vision":
        assert any("image/png" in o.get("data", {}) for o in code_cells[-1].outputs), "the annotated photo"
    if path.stem == "06_segment_anything":
        images = sum("image/png" in o.get("data", {}) for c in code_cells for o in c.outputs)
        assert images >= 4, "the SAM notebook draws the point, box and automatic masks"
