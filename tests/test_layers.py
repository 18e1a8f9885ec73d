"""The layer contract of ARCHITECTURE.md, checked over the package's source: each floor
imports only the floors below it (or its own), no import circle anywhere, and every import
deferred into a function says why (start-up cost, or an optional extra)."""

import ast
import shutil
from pathlib import Path

import necropool

# Bottom to top. ``necropool/__init__.py`` and ``__main__.py`` are the entry, above all.
FLOORS = ("ground", "git", "slot", "store", "pool", "lease", "fleet", "admin", "health",
          "manager", "cli")
ENTRY = len(FLOORS)
PACKAGE = Path(necropool.__file__).parent


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def floor(module: str) -> int:
    parts = module.split(".")
    return FLOORS.index(parts[1]) if len(parts) > 1 and parts[1] in FLOORS else ENTRY


class Import:
    def __init__(self, source: str, target: str, line: int, lazy: bool, reason: bool):
        self.source, self.target, self.line = source, target, line
        self.lazy, self.reason = lazy, reason


def imports(root: Path) -> list[Import]:
    """Every import of a module of the package ``root``, module-level or deferred."""
    names = {module_name(p, root) for p in root.rglob("*.py")}
    found = []
    for path in sorted(root.rglob("*.py")):
        source = module_name(path, root)
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        deferred = {id(n) for f in ast.walk(tree)
                    if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                    for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" for a in node.names]
                targets = [t if t in names else node.module for t in targets]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            lazy = id(node) in deferred
            reason = "#" in lines[node.lineno - 1] or _headed(lines, node.lineno - 1)
            for target in dict.fromkeys(targets):
                ours = target.split(".")[0] == root.name
                if (ours and target != source) or (lazy and not ours):
                    found.append(Import(source, target, node.lineno, lazy, reason))
    return found


def _headed(lines: list[str], index: int) -> bool:
    """Whether the block of imports holding line ``index`` says why: a comment above it, or
    on one of its lines."""
    while index > 0 and lines[index - 1].strip().startswith(("from ", "import ")):
        index -= 1
        if "#" in lines[index]:
            return True
    return index > 0 and lines[index - 1].strip().startswith("#")


def upward(found: list[Import]) -> list[str]:
    return [f"{i.source}:{i.line} imports {i.target} ({FLOORS[floor(i.source)]} < "
            f"{FLOORS[floor(i.target)]})" for i in found
            if i.target.startswith(f"{PACKAGE.name}.") and floor(i.target) > floor(i.source)]


def circles(found: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for i in found:
        if i.target.split(".")[0] == PACKAGE.name:
            graph.setdefault(i.source, set()).add(i.target)
            graph.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_sits_on_a_floor():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(FLOORS)
    loose = {p.name for p in PACKAGE.glob("*.py")}
    assert loose == {"__init__.py", "__main__.py"}


def test_no_import_runs_up_a_floor():
    assert upward(imports(PACKAGE)) == []


def test_no_import_circle():
    assert circles(imports(PACKAGE)) == []


def test_every_deferred_import_says_why():
    unexplained = [f"{i.source}:{i.line} {i.target}" for i in imports(PACKAGE)
                   if i.lazy and not i.reason]
    assert unexplained == []




def test_the_checks_catch_a_planted_upward_import_and_circle(tmp_path):
    copy = tmp_path / PACKAGE.name
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    clock = copy / "ground" / "clock.py"
    clock.write_text(clock.read_text() + "\nfrom necropool.lease import renew  # planted\n"
                     "\n\ndef planted():\n    import json\n    return json\n")
    found = imports(copy)
    assert [(i.target, i.reason) for i in found
            if i.source == "necropool.ground.clock" and i.lazy] == [("json", False)]
    assert any("necropool.ground.clock:" in v and "necropool.lease.renew" in v
               for v in upward(found))
    assert any("necropool.ground.clock" in c and "necropool.lease.renew" in c
               for c in circles(found))
