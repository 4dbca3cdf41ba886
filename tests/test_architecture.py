"""The package's import graph: no cycle, and no import from a lower layer up to a higher one.

Every import counts, also one inside a function (a deferred import still ties the two modules together).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sparsebench"

# Lowest first. A module may import from its own layer or any layer below it, never from one above.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"_version", "errors", "environment"}),
    ("domain", {"patterns", "measure", "impls", "serving"}),  # what a pattern is, how a call is measured, the kernels
    ("plugins", {"plugins"}),  # user code: registers into the domain's registries
    ("resolve", {"resolve"}),  # names (user code included) to patterns and implementations
    ("results", {"results"}),  # the schema, its files and result sets
    ("logic", {"runner", "gate", "paired", "gate_report", "gate_quality", "machine", "export", "plots",
               "plots_quality", "plots_serving", "history", "merge"}),
    ("services", {"services", "api", "train"}),  # workflows under the commands, and the library's entry points
    ("interface", {"cli", "__init__", "__main__"}),  # commands: options and printing
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (names as written: `from a import b` is a.b when b is a module)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names)
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def layer_of(module: str) -> int:
    """The layer index of a package module, by its first component under `sparsebench`."""
    part = module.split(".")[1] if "." in module else "__init__"
    for index, (_, members) in enumerate(LAYERS):
        if part in members:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

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
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_no_module_imports_from_a_higher_layer():
    upward = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
              for a, targets in import_graph().items() for b in targets if layer_of(b) > layer_of(a)]
    assert upward == []


def test_the_check_sees_a_cycle_and_an_upward_import():
    """The checks can fail: a deferred import back up (as the registries once made to load plugins) is caught."""
    graph = import_graph()
    graph["sparsebench.impls"] = graph["sparsebench.impls"] | {"sparsebench.plugins"}
    assert any("sparsebench.impls" in c and "sparsebench.plugins" in c for c in cycles(graph))
    assert layer_of("sparsebench.impls") < layer_of("sparsebench.plugins")


# cli/ modules that are no command: shared options, plumbing and printing
CLI_SHARED = {"sparsebench.cli", "sparsebench.cli.common", "sparsebench.cli.options", "sparsebench.cli.progress",
              "sparsebench.cli.output", "sparsebench.cli.scale"}


def test_commands_do_not_import_each_other():
    """A command's module holds its options and printing; what two commands share lives below them."""
    graph = import_graph()
    commands = {m for m in graph if m.startswith("sparsebench.cli.") and m not in CLI_SHARED}
    assert {"sparsebench.cli.run", "sparsebench.cli.gate", "sparsebench.cli.export"} <= commands
    assert [f"{a} imports {b}" for a in sorted(commands) for b in sorted(graph[a] & commands)] == []
