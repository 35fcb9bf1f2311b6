"""Model files hold the model only: no file under models/ imports candlejax.cli or
candlejax.pipelines (serving code imports the models, never the other way round). Imports inside an
``if __name__ == "__main__":`` block, and ``__main__.py`` entry points, are the exception."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
FORBIDDEN = ("candlejax.cli", "candlejax.pipelines")
FILES = sorted(p for p in MODELS.rglob("*.py") if p.name != "__main__.py")


def _is_main_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    t = node.test
    names = [t.left, *t.comparators]
    return (len(t.ops) == 1 and isinstance(t.ops[0], ast.Eq)
            and any(isinstance(n, ast.Name) and n.id == "__name__" for n in names)
            and any(isinstance(n, ast.Constant) and n.value == "__main__" for n in names))  # fmt: skip


def _module_of(path: Path) -> str:
    rel = path.relative_to(MODELS).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["candlejax", "models", *parts])


def imported_modules(source: str, package: list[str]) -> list[tuple[int, str]]:
    """(line, module) for every import outside ``if __name__ == "__main__":`` blocks; relative
    imports resolved against ``package`` (the parts of the file's package)."""
    tree = ast.parse(source)
    out: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if _is_main_block(node):
            for child in node.orelse:  # the else branch of `if __name__ == "__main__"` runs on import
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            out.extend((node.lineno, f"{base}.{a.name}") for a in node.names)
            out.append((node.lineno, base))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _imports(path: Path) -> list[tuple[int, str]]:
    mod = _module_of(path).split(".")
    return imported_modules(path.read_text(encoding="utf-8"), mod if path.name == "__init__.py" else mod[:-1])


def test_the_check_sees_imports():
    assert len(FILES) > 10
    assert any(m == "candlejax.models.blip_text" for _, m in _imports(MODELS / "blip.py"))
    src = (
        "import x\ndef f():\n    from candlejax.cli import main\n"
        'if __name__ == "__main__":\n    import candlejax.pipelines.zzz\nelse:\n    from ..pipelines import y\n'
    )
    mods = [m for _, m in imported_modules(src, ["candlejax", "models"])]
    assert "candlejax.cli.main" in mods and "candlejax.pipelines.y" in mods and "candlejax.pipelines.zzz" not in mods


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(MODELS)))
def test_model_files_import_no_cli_or_pipeline(path):
    bad = [(line, m) for line, m in _imports(path) if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    where = f"models/{path.relative_to(MODELS)}"
    hint = "serving code belongs in candlejax.cli / candlejax.pipelines, which import the model"
    assert not bad, "\n".join(f"{where}:{line} imports {m} ({hint})" for line, m in bad)
