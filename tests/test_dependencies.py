"""Every third-party package the project imports is declared in pyproject.toml (tests may also use the
`test` extra), so no import works only because another package happened to pull it in."""
from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCAL = {"mftasks", "flows", "tests", "bench", "examples", "conftest", "common", "_rank"}
MINDFORMERS_ENV = REPO / "tests" / "fixtures" / "mindformers_llama"
"""A user's MindFormers entry point: it runs in MindFormers' own environment (the Makefile's MINDFORMERS pin),
never in the project's, so it is checked against what that environment holds."""
MINDFORMERS_ENV_PROVIDES = {"mindformers", "mindspore", "numpy", "yaml"}


def _declared(names: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ;]", n, maxsplit=1)[0].lower().replace("_", "-") for n in names}


def _absolute_imports(folder: Path):
    """(file, line, module) for every absolute import under folder, lazy ones inside functions included."""
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                yield path, node.lineno, name


def _imports(folder: Path) -> dict[str, str]:
    """Top-level module -> the first file importing it, for every absolute import under folder."""
    local = LOCAL | {p.stem for p in folder.rglob("*.py")}
    found: dict[str, str] = {}
    for path, _, name in _absolute_imports(folder):
        if path.is_relative_to(MINDFORMERS_ENV) and folder != MINDFORMERS_ENV:
            continue
        top = name.split(".")[0]
        if top not in sys.stdlib_module_names and top not in local:
            found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_import_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = _declared(project["dependencies"])
    test = runtime | _declared(project["optional-dependencies"]["test"])
    distributions = md.packages_distributions()
    problems = []
    for folder, allowed in (("mftasks", runtime), ("flows", runtime), ("bench", runtime), ("examples", runtime),
                            ("tests", test)):
        for module, where in _imports(REPO / folder).items():
            if module == "no_such_module_for_the_launcher_test":  # a fixture that must fail to import
                continue
            dists = {d.lower().replace("_", "-") for d in distributions.get(module, [])}
            if not dists & allowed:
                problems.append(f"{where} imports {module} (from {sorted(dists) or 'no installed package'}), "
                                "which pyproject.toml does not declare")
    assert not problems, "\n".join(problems)


def test_the_library_imports_no_orchestration_client():
    """mftasks/ never imports Prefect, its HTTP client or the parameter schemas' validator, nor the Prefect
    layer above it (flows/): a Prefect client belongs in flows/."""
    forbidden = {"prefect", "httpx", "jsonschema", "flows"}
    found = [f"{path.relative_to(REPO)}:{line} imports {name}"
             for path, line, name in _absolute_imports(REPO / "mftasks") if name.split(".")[0] in forbidden]
    assert not found, "\n".join(found)


def test_the_mindformers_entry_point_imports_only_what_its_environment_holds():
    assert set(_imports(MINDFORMERS_ENV)) <= MINDFORMERS_ENV_PROVIDES
