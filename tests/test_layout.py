"""The package's shape, read from its source: vllm is imported only in ral_dist/vllm/, no import cycle between
modules or between sub-packages, the pure packages stay free of Ray, and modules and actor methods stay small."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ral_dist"
MAX_MODULE_LINES = 400
MAX_ACTOR_FUNCTION_LINES = 60
PURE = ("algorithms", "models", "data", "rewards", "messages")  # no Ray, no DeepSpeed, no vllm


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every module an ``import`` anywhere in the file names (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES)
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the ral_dist modules importing it executes (a dotted import runs every package on the way)."""
    graph = {}
    for name, path in MODULES.items():
        targets = set()
        for imported in _imports(path):
            parts = imported.split(".")
            if parts[0] != "ral_dist":
                continue
            for k in range(2, len(parts) + 1):
                target = ".".join(parts[:k])
                if target in MODULES and target != name and not name.startswith(target + "."):
                    targets.add(target)
        graph[name] = targets
    return graph


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "ral_dist"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
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

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_only_the_vllm_package_imports_vllm():
    offenders = {name: sorted(i for i in _imports(path) if i == "vllm" or i.startswith("vllm."))
                 for name, path in MODULES.items() if not name.startswith("ral_dist.vllm")}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert any(i.startswith("vllm") for i in _imports(PACKAGE / "vllm" / "engine.py"))  # the check sees imports


def test_no_import_cycle_between_modules_or_subpackages():
    graph = _graph()
    assert _cycles(graph) == []
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(_subpackage(module), set()).update(
            _subpackage(t) for t in targets if _subpackage(t) != _subpackage(module))
    assert _cycles(packages) == [], packages


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", PURE)
def test_pure_packages_run_without_ray(package):
    heavy = {name: sorted(i for i in _imports(path) if i.split(".")[0] in ("ray", "deepspeed", "vllm"))
             for name, path in MODULES.items() if _subpackage(name) == package}
    assert {k: v for k, v in heavy.items() if v} == {}


def test_modules_and_actor_methods_stay_small():
    long_modules = {name: n for name, path in MODULES.items()
                    if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long_modules == {}
    long_functions = []
    for name, path in MODULES.items():
        if _subpackage(name) not in ("actors", "distill"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_ACTOR_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name}: {lines} lines")
    assert long_functions == []
