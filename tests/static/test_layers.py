"""The layers of docs/ARCHITECTURE.md, read from the source: imports run one way.

- the product (``include/dicom_relay``) never imports the development tooling (``tests``, ``scripts``);
- only ``dicom_relay.airflow`` imports Airflow (the library works and is tested without it);
- no module of the product imports, directly or through others, a module that imports it back.

Function-level imports count: a circle hidden in a function is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
INCLUDE = ROOT / "include"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(INCLUDE.rglob("*.py")):
        parts = path.relative_to(INCLUDE).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module named by an import anywhere in the file (absolute names; relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = {f"{module}.{alias.name}" for alias in node.names} & set(MODULES)
            # ``from pkg import sub`` names the submodule; ``from pkg import thing`` names the package.
            names |= submodules if len(submodules) == len(node.names) else submodules | {module}
    return names


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _graph(keep) -> dict[str, set[str]]:
    return {m: {i for i in IMPORTS[m] if i in MODULES and i != m and keep(i)} for m in MODULES if keep(m)}


def test_the_product_never_imports_development_tooling():
    assert len(MODULES) > 30 and "dicom_relay.pipeline" in MODULES
    offenders = {m: sorted(i for i in names if i.split(".")[0] in ("tests", "scripts"))
                 for m, names in IMPORTS.items()}
    assert not {m: v for m, v in offenders.items() if v}


def test_only_the_airflow_package_imports_airflow():
    offenders = sorted(m for m, names in IMPORTS.items()
                       if not m.startswith("dicom_relay.airflow") and any(i.split(".")[0] == "airflow" for i in names))
    assert not offenders


def test_no_import_circle_outside_deid():
    assert not _cycles(_graph(lambda m: not m.startswith("dicom_relay.deid")))


def test_no_import_circle_in_deid():
    assert not _cycles(_graph(lambda m: m.startswith("dicom_relay.deid")))


def test_the_circle_check_finds_a_circle():
    """Positive control: the check sees a circle where there is one."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
