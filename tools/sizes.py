"""Line counts per Python file without docstrings, comments or blank lines, against soft budgets.

    python tools/sizes.py            # table of the files over half their budget, exit 1 if a model file is over 600
    python tools/sizes.py --all      # every file

Budgets: model files (``models/**``) 600 lines, counted with docstrings too (hard: the check
fails), other package files 600 code lines (soft: reported), tests and benches 800 (soft).
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = [("models/", 600, True), ("candlejax/", 600, False), ("tests/", 800, False), ("bench/", 800, False)]


def code_lines(path: Path) -> int:
    """Lines holding code: no blank lines, comments or docstrings."""
    src = path.read_text(encoding="utf-8")
    doc_lines: set[int] = set()
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return len(src.splitlines())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            value = getattr(first, "value", None)
            if isinstance(first, ast.Expr) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                doc_lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    code: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                        tokenize.ENDMARKER):  # fmt: skip
            continue
        for ln in range(tok.start[0], tok.end[0] + 1):
            if ln not in doc_lines:
                code.add(ln)
    return len(code)


def main(argv: list[str]) -> int:
    show_all = "--all" in argv
    rows, failed = [], False
    for prefix, budget, hard in BUDGETS:
        for p in sorted((ROOT / prefix).rglob("*.py")):
            if p.is_symlink() or any(part.startswith(".") for part in p.parts):
                continue
            n = code_lines(p)
            raw = len(p.read_text(encoding="utf-8").splitlines())
            over = (raw if hard else n) > budget
            failed |= over and hard
            if show_all or hard or n > budget // 2:
                flag = ("OVER (hard)" if hard else "over (soft)") if over else ""
                rows.append((str(p.relative_to(ROOT)), n, raw, budget, flag))
    width = max((len(r[0]) for r in rows), default=10)
    print(f"{'file':<{width}}  code lines  all lines  budget")
    for name, n, raw, budget, flag in sorted(rows, key=lambda r: -r[1]):
        print(f"{name:<{width}}  {n:>10}  {raw:>9}  {budget:>6}  {flag}")
    if failed:
        print("a model file is over its 600-line budget", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
