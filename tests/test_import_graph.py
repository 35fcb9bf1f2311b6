"""The package's import structure: no import cycles (function-local imports included), private JAX
(``jax._src``) in one shim module only, and no reaching into other candlejax packages' privates from
models and applications.

Every ``.py`` under ``candlejax/`` and ``models/`` (installed as ``candlejax.models``) is parsed with
``ast``; imports under ``if TYPE_CHECKING:`` and ``if __name__ == "__main__":`` are left out. An
import of ``a.b.c`` is an edge to module ``a.b.c``; ``from pkg import name`` is an edge to
``pkg.name`` where that is a module, else to ``pkg`` (parent packages that Python also runs are not
counted: every module would then depend on ``candlejax/__init__``).
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"candlejax": ROOT / "candlejax", "candlejax.models": ROOT / "models"}

#: Import cycles allowed among model files: none (a model file holds the model only; command lines
#: and serving code live in candlejax.cli / candlejax.pipelines). Never add one.
KNOWN_MODEL_CYCLES: list[frozenset[str]] = []

#: The one module allowed to import ``jax._src``.
JAX_PRIVATE_SHIM = "candlejax._jax_private"

#: Code that must use other candlejax packages through their public API only (no ``._a``, no
#: private modules or names).
PUBLIC_API_ONLY = ("candlejax.models", "candlejax.cli", "candlejax.pipelines", "candlejax.vision",
                   "candlejax.audio", "candlejax.distributed")  # fmt: skip

#: Modules without a leading underscore that are internal to their package.
PRIVATE_MODULES = frozenset({"candlejax.quantized.blocked"})


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    line: int
    target: str  # the imported module, as written (``a.b`` of ``import a.b`` / ``from a.b import c``)
    names: tuple[str, ...]  # the names of a ``from ... import``; () for ``import a.b``


def _module_files() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for prefix, base in SOURCES.items():
        for dirpath, dirnames, filenames in os.walk(base):
            here = Path(dirpath)  # not into the symlink candlejax/models (-> models/)
            pkgs = [d for d in dirnames if (here / d / "__init__.py").is_file() and not (here / d).is_symlink()]
            dirnames[:] = sorted(pkgs)
            if here != base and not (here / "__init__.py").exists():
                continue
            rel = here.relative_to(base).parts
            for f in sorted(filenames):
                if not f.endswith(".py"):
                    continue
                parts = (*rel, f[:-3]) if f != "__init__.py" else rel
                out[".".join((prefix, *parts))] = here / f
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_main_guard(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, *test.comparators]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and any(
        isinstance(s, ast.Constant) and s.value == "__main__" for s in sides
    )


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool):
        self.module, self.package = module, module if is_package else module.rpartition(".")[0]
        self.imports: list[Import] = []
        self.private_attrs: list[tuple[int, str]] = []  # (line, attribute) of ``x._a`` / ``jax._src``

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test) or _is_main_guard(node.test):
            for n in node.orelse:
                self.visit(n)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.imports.append(Import(self.module, node.lineno, a.name, ()))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join([*base, node.module] if node.module else base)
        else:
            target = node.module or ""
        self.imports.append(Import(self.module, node.lineno, target, tuple(a.name for a in node.names)))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr == "_a":
            self.private_attrs.append((node.lineno, "._a"))
        if node.attr == "_src" and isinstance(node.value, ast.Name) and node.value.id == "jax":
            self.private_attrs.append((node.lineno, "jax._src"))
        self.generic_visit(node)


_CACHE: dict[str, object] = {}


def _scan() -> tuple[dict[str, Path], dict[str, _Collector]]:
    if not _CACHE:
        files = _module_files()
        found = {}
        for mod, path in files.items():
            c = _Collector(mod, path.name == "__init__.py")
            c.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
            found[mod] = c
        _CACHE["files"], _CACHE["found"] = files, found
    return _CACHE["files"], _CACHE["found"]  # type: ignore[return-value]


def _edges(imp: Import, modules: dict[str, Path]) -> list[str]:
    """The candlejax modules an import statement loads (see the module docstring)."""
    if not imp.names:
        t = imp.target
        while t and t not in modules:
            t = t.rpartition(".")[0]
        return [t] if t else []
    out = []
    for n in imp.names:
        sub = f"{imp.target}.{n}"
        if sub in modules:
            out.append(sub)
        elif imp.target in modules:
            out.append(imp.target)
    return list(dict.fromkeys(out))


def _graph() -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    """module -> {imported module: first line}."""
    modules, found = _scan()
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for mod, c in found.items():
        for imp in c.imports:
            for t in _edges(imp, modules):
                if t != mod:
                    graph[mod].setdefault(t, imp.line)
    return graph, modules


def _strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[v] = min(low[v], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _describe(comp: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> str:
    members = set(comp)
    lines = [f"  import cycle among {len(comp)} modules:"]
    for m in comp:
        for t, line in sorted(graph[m].items()):
            if t in members:
                lines.append(f"    {m} -> {t}  ({modules[m].relative_to(ROOT)}:{line})")
    return "\n".join(lines)


def test_no_import_cycles():
    graph, modules = _graph()
    comps = _strongly_connected(graph)
    known = [c for c in comps if any(set(c) <= k for k in KNOWN_MODEL_CYCLES)]
    new = [c for c in comps if c not in known]
    assert not new, "import cycles (move the shared code to a lower module both sides import):\n" + "\n".join(
        _describe(c, graph, modules) for c in new
    )
    stale = [sorted(k) for k in KNOWN_MODEL_CYCLES if not any(set(c) <= k for c in known)]
    assert not stale, f"no longer cycles, remove them from KNOWN_MODEL_CYCLES: {stale}"


def test_function_local_imports_are_counted():
    """The detector sees an import inside a function (which only delays a cycle, not breaks it)."""
    c = _Collector("candlejax.x", False)
    c.visit(ast.parse("def f():\n    from candlejax.nn import ops\n    import candlejax.random\n"))
    assert [(i.target, i.names) for i in c.imports] == [("candlejax.nn", ("ops",)), ("candlejax.random", ())]
    modules = {"candlejax.nn": Path(), "candlejax.nn.ops": Path(), "candlejax.random": Path()}
    assert _edges(c.imports[0], modules) == ["candlejax.nn.ops"]
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert _strongly_connected(graph) == [["a", "b", "c"]]


def test_jax_private_only_in_the_shim():
    _, found = _scan()
    bad = []
    for mod, c in found.items():
        if mod == JAX_PRIVATE_SHIM:
            continue
        bad += [f"{mod}:{i.line} imports {i.target}" for i in c.imports if i.target.split(".")[:2] == ["jax", "_src"]]
        bad += [f"{mod}:{line} uses jax._src" for line, what in c.private_attrs if what == "jax._src"]
    assert not bad, f"jax._src is used only through {JAX_PRIVATE_SHIM}:\n" + "\n".join(bad)


def _top_package(mod: str) -> str:
    return ".".join(mod.split(".")[:2])


def _private(module: str, name: str | None = None) -> bool:
    parts = module.split(".")[1:] + ([name] if name else [])
    return module in PRIVATE_MODULES or any(p.startswith("_") and not p.startswith("__") for p in parts)


def test_models_and_apps_use_public_api_only():
    modules, found = _scan()
    bad = []
    for mod, c in found.items():
        if not mod.startswith(PUBLIC_API_ONLY):
            continue
        bad += [f"{mod}:{line}: x._a (use the Tensor's .jax or candlejax.tensor.unwrap)"
                for line, what in c.private_attrs if what == "._a"]  # fmt: skip
        for imp in c.imports:
            if not imp.target.startswith("candlejax") or _top_package(imp.target) == _top_package(mod):
                continue
            for n in imp.names or (None,):
                sub = f"{imp.target}.{n}" if n else imp.target
                target, name = (sub, None) if sub in modules else (imp.target, n)
                if _private(target, name):
                    bad.append(f"{mod}:{imp.line}: imports {target}{'.' + name if name else ''}")
    assert not bad, "private parts of other candlejax packages:\n" + "\n".join(bad)
