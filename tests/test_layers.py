"""The layers, read from the source: what each may import, no cycles, small modules and functions.

    cli.py  ->  flows/  ->  tracking/  ->  core/        (names.py: imported by all, imports nothing)
    benchmarks/  ->  the package, never the other way

Every import counts, inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import benchmarks
import mnist_pipeline

ROOTS = [Path(package.__file__).parent for package in (mnist_pipeline, benchmarks)]
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 50


def _module_name(root: Path, path: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(root, path): path for root in ROOTS for path in sorted(root.rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports: package modules by their full name, others by their top name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from package import module` imports the module; `from module import name` the module
            names = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                for alias in node.names
            ]
        else:
            continue
        found |= {
            name if name.split(".")[0] in ("mnist_pipeline", "benchmarks") else name.split(".")[0] for name in names
        }
    return found


IMPORTS = {name: _imports(path) for name, path in MODULES.items()}


def _layer(module: str) -> str:
    top, *rest = module.split(".")
    return top if top == "benchmarks" else rest[0] if rest else "package"


def _broken(rule) -> list[str]:
    return [
        f"{module} imports {imported}"
        for module, imports in IMPORTS.items()
        for imported in sorted(imports)
        if rule(module, imported)
    ]


def test_the_walk_sees_the_layers():
    """The rules below only mean something if the walk finds what is there."""
    assert {"core", "tracking", "flows", "cli", "names", "benchmarks"} <= {_layer(m) for m in MODULES}
    assert "mnist_pipeline.core.config" in IMPORTS["mnist_pipeline.core.training"]
    assert "mlflow" in IMPORTS["mnist_pipeline.tracking.run_lifecycle"]
    assert "mnist_pipeline.tracking.training_dispatch" in IMPORTS["mnist_pipeline.flows.train"]  # inside run()
    assert "mnist_pipeline.tracking.track_training" in IMPORTS["benchmarks.bench"]


def test_core_knows_nothing_of_mlflow_optuna_or_the_other_layers():
    assert (
        _broken(
            lambda m, i: (
                _layer(m) == "core" and (i in ("mlflow", "optuna") or _layer(i) in ("tracking", "flows", "cli"))
            )
        )
        == []
    )


def test_tracking_never_imports_the_commands():
    assert _broken(lambda m, i: _layer(m) == "tracking" and (i == "optuna" or _layer(i) in ("flows", "cli"))) == []


def test_commands_reach_mlflow_only_through_the_tracking_layer():
    assert _broken(lambda m, i: _layer(m) == "flows" and (i == "mlflow" or _layer(i) == "cli")) == []


def test_nothing_imports_the_cli_but_the_entry_points():
    """`python -m mnist_pipeline`'s, and the benchmark's (benchmarks/__init__.py: its command line is the package's)."""
    entry_points = ("mnist_pipeline.__main__", "benchmarks")
    assert _broken(lambda m, i: i == "mnist_pipeline.cli" and m not in entry_points) == []


def test_the_package_never_imports_the_benchmarks():
    """What users install and run holds no benchmark code (benchmarks/ is not in the wheel)."""
    assert _broken(lambda m, i: _layer(m) != "benchmarks" and _layer(i) == "benchmarks") == []


def test_names_imports_nothing():
    assert IMPORTS["mnist_pipeline.names"] == set()


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every import cycle a depth-first walk of ``graph`` (module -> modules it imports) meets."""
    done, found = set(), []

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            found.append(" -> ".join([*path[path.index(module) :], module]))
            return
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return found


def test_no_import_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]  # the walk finds one
    assert cycles({m: {i for i in imports if i in MODULES and i != m} for m, imports in IMPORTS.items()}) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_are_small(module):
    source = MODULES[module].read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []
