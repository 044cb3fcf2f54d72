"""README.md and .env.example document every environment variable the code reads."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    *ROOT.glob("app/**/*.py"),
    *ROOT.glob("workers/*.py"),
    ROOT / "celery_config.py",
    *ROOT.glob("scripts/*.py"),
]
READS = re.compile(
    r"""(?:_env|_int|_float|_bool|_positive|_non_negative|_value|_port|_networks|secret|_env_port|environ\.get|env\.get|getenv|_setting_or_file|_pem)\(\s*
        (?:env,\s*)?["']([A-Z][A-Z0-9_]+)["']""",
    re.VERBOSE,
)
PROVIDER_NAMES = re.compile(r"""["']((?:STRIPE|WECHAT_PAY|ALIPAY)_[A-Z0-9_]+)["']""")
# Read by tools, not by VibeBox settings.
NOT_SETTINGS = {
    "PATH",
    "DEBIAN_FRONTEND",
    "LC_ALL",
    "PYTHONUNBUFFERED",
    "PYTEST_ARGS",
    "PG_VERSION",
    "PGPORT",  # scripts/services.py sets it from VIBEBOX_PG_PORT for the embedded server
}


def variables_read_by_the_code() -> set[str]:
    names: set[str] = set()
    for source in SOURCES:
        text = source.read_text()
        names |= set(READS.findall(text)) | set(PROVIDER_NAMES.findall(text))
    return names - NOT_SETTINGS


def test_every_variable_is_in_env_example_and_readme():
    names = variables_read_by_the_code()
    assert {"DATABASE_URL", "STRIPE_SECRET_KEY", "WECHAT_PAY_MCHID", "ALIPAY_APP_ID"} <= names
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    missing_example = sorted(n for n in names if not re.search(rf"^{n}=", example, re.M))
    missing_readme = sorted(
        n for n in names if f"`{n}`" not in readme and f"`{n}` (or" not in readme
    )
    assert missing_example == [], f".env.example lacks {missing_example}"
    assert missing_readme == [], f"README.md lacks {missing_readme}"


def test_every_setting_of_the_settings_object_is_in_env_example_and_readme():
    """The settings object (app/config.py) is the list of what VibeBox reads: each variable
    it declares has a line in .env.example and a row in the README."""
    from app.config import Settings, variables

    names = set(variables(Settings))
    assert {"PROVISION_MAX_ATTEMPTS", "CELERY_TASK_TIME_LIMIT", "LOG_FORMAT"} <= names
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    assert sorted(n for n in names if not re.search(rf"^{n}=", example, re.M)) == []
    assert sorted(n for n in names if f"`{n}`" not in readme) == []


READ_BY_THE_PROCFILE = {
    "WEB_CONCURRENCY": "gunicorn's own variable (its worker processes)",
    "WORKER_CONCURRENCY": "the Procfile's and compose's provisioning worker",
    "MAINTENANCE_CONCURRENCY": "the Procfile's and compose's maintenance worker",
}


def test_every_line_of_env_example_is_a_setting_or_a_named_exception():
    """Nothing in .env.example is left over: each variable is declared by the settings
    object, read by a provider (STRIPE_/WECHAT_PAY_/ALIPAY_), or read before the settings
    exist (the run scripts, gunicorn, the secrets and URLs the settings derive)."""
    from app.config import Settings, variables

    example = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", example, re.M))
    known = set(variables(Settings)) | variables_read_by_the_code() | set(READ_BY_THE_PROCFILE)
    known |= {f"{name}_FILE" for name in known}  # a provider key's value, or a file holding it
    assert sorted(listed - known) == []


# --- the repository is self-contained ------------------------------------------------------

TEXT_SUFFIXES = {".py", ".md", ".toml", ".yml", ".yaml", ".json", ".ini", ".mako", ".example", ""}
SKIPPED_DIRS = {".git", ".venv", "var", "__pycache__", ".mypy_cache", ".ruff_cache", "results"}
# Design notes kept outside the repository; what the code relies on lives in docs/.
OUTSIDE_REFERENCES = re.compile(
    r"\.\./shared/|/work/shared|\bseed/|vibebox-architecture|happy-contract\.md|the seed's"
)
DOC_CITATION = re.compile(r"\bdocs/[\w.-]+\.md\b")


def repository_text_files() -> list[Path]:
    files = []
    for path in ROOT.rglob("*"):
        if SKIPPED_DIRS & set(path.relative_to(ROOT).parts) or not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES or path.name in {"Makefile", "Procfile", "Dockerfile"}:
            files.append(path)
    return files


def test_no_file_cites_documents_outside_the_repository() -> None:
    files = repository_text_files()
    assert ROOT / "README.md" in files and ROOT / "docs" / "happy.md" in files
    citing = [
        str(path.relative_to(ROOT))
        for path in files
        if path != Path(__file__).resolve()
        and OUTSIDE_REFERENCES.search(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert citing == []


def test_every_cited_docs_page_exists() -> None:
    cited = {
        (str(path.relative_to(ROOT)), match)
        for path in repository_text_files()
        for match in DOC_CITATION.findall(path.read_text(encoding="utf-8", errors="replace"))
    }
    assert {m for _, m in cited} >= {"docs/happy.md", "docs/payments.md"}
    assert sorted((where, m) for where, m in cited if not (ROOT / m).is_file()) == []
