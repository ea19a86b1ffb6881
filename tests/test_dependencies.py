"""Every package the code imports is declared, in pyproject.toml and in conda.yaml alike: an
environment built from either (`pip install .`, `mlflow run .` with any --env-manager) runs
every command."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

import yaml

from helpers.stores import PROJECT_ROOT

CODE = ("mnist_pipeline", "benchmarks")  # the folders whose imports must be declared


def _name(requirement: str) -> str:
    """The distribution a requirement names, normalized (PEP 503): 'mlflow[auth]>=3' -> 'mlflow'."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement)[0]).lower()


def _pyproject() -> list[str]:
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def _conda_pip() -> list[str]:
    environment = yaml.safe_load((PROJECT_ROOT / "conda.yaml").read_text())
    [pip] = [entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict)]
    return pip


def imported() -> dict[str, str]:
    """{top-level module: a file that imports it} of every module the code imports from
    outside the standard library and the package (those inside functions too)."""
    found = {}
    for path in sorted(p for folder in CODE for p in (PROJECT_ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top not in CODE:
                    found.setdefault(top, str(path.relative_to(PROJECT_ROOT)))
    return found


def test_conda_yaml_lists_pyproject_s_dependencies():
    assert _conda_pip() == _pyproject()


def test_every_package_the_code_imports_is_declared():
    declared = {_name(requirement) for requirement in _pyproject()}
    distributions = importlib.metadata.packages_distributions()
    modules = imported()
    assert {"mlflow", "tensorflow", "uvicorn", "requests", "sqlalchemy"} <= modules.keys()  # the walk finds them
    undeclared = {
        module: (where, distributions.get(module))
        for module, where in modules.items()
        if not declared & {_name(d) for d in distributions.get(module, [module])}
    }
    assert not undeclared, f"imported (in the file named) but in no dependency: {undeclared}"
