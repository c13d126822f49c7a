"""The package's layers, read from its source: every import runs down the layer order, and no module
imports itself back through others. The order is written here once (and shown in docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "mini_internvl_adapt"

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS: list[set[str]] = [
    {"errors", "fileio"},
    {"data_format", "schema"},
    {"metrics", "registry", "png", "parallel"},
    {"preview", "models"},
    {"processing"},
    {"tuning"},
    {"runs"},
    {"inference"},
    {"training"},
    {"evaluation"},
    {"bench"},
    {"export"},
    {"cli"},
]
# Domain plugins reach the core only through the shared format, errors, metrics and image writers.
DOMAIN_MAY_IMPORT = {
    "errors",
    "fileio",
    "data_format",
    "schema",
    "metrics",
    "registry",
    "png",
    "parallel",
    "domains",
}


def _module_name(path: Path) -> str:
    if path.is_relative_to(REPO / "domains"):
        parts = ("domains", *path.relative_to(REPO / "domains").with_suffix("").parts)
    else:
        parts = path.relative_to(REPO / PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def _imports(path: Path) -> set[str]:
    """Modules of the package `path` imports (anywhere in the file), as dotted names below the package."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and node.module.startswith(PACKAGE + "."):
                target = node.module[len(PACKAGE) + 1 :]
            elif node.module == PACKAGE:
                found.update(alias.name for alias in node.names)
                continue
            else:
                continue
            found.add(target)
        elif isinstance(node, ast.Import):
            found.update(a.name[len(PACKAGE) + 1 :] for a in node.names if a.name.startswith(PACKAGE + "."))
    return found - {name}


def _sources() -> dict[str, set[str]]:
    files = [*(REPO / PACKAGE).rglob("*.py"), *(REPO / "domains").rglob("*.py")]
    return {_module_name(f): _imports(f) for f in files if _module_name(f)}


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"{module}: in no layer; add its top-level name to LAYERS and docs/architecture.md")


def test_every_core_import_runs_down_the_layer_order() -> None:
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in _sources().items()
        if not module.startswith("domains")
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert not upward, "imports up the layer order:\n" + "\n".join(sorted(upward))


def test_domains_import_only_the_plugin_surface() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in _sources().items()
        if module.startswith("domains")
        for target in targets
        if target.split(".")[0] not in DOMAIN_MAY_IMPORT
    ]
    assert not wrong, "\n".join(sorted(wrong))


def _resolve(target: str, modules: set[str]) -> str | None:
    """The module an import names: itself, or the package holding a name imported from it."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def test_no_import_cycle() -> None:
    graph = _sources()
    modules = set(graph)
    edges = {m: {t for t in (_resolve(x, modules) for x in ts) if t and t != m} for m, ts in graph.items()}
    # A package's __init__ re-exporting its submodules is not a cycle with them.
    edges = {m: {t for t in ts if not (m.startswith(t + ".") and t in modules)} for m, ts in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("root", [PACKAGE, "domains"])
def test_no_function_over_120_lines(root: str) -> None:
    long = []
    for path in (REPO / root).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > 120:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, "\n".join(long)


def test_the_command_line_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, mini_internvl_adapt.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
