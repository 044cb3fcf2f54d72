"""The layout stays legible: a module of the product over 400 lines says at its top why."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 400


def _modules() -> list[Path]:
    return [
        *sorted((ROOT / "app").rglob("*.py")),
        *sorted((ROOT / "workers").rglob("*.py")),
        ROOT / "celery_config.py",
    ]


def test_a_module_over_400_lines_states_why_at_its_top() -> None:
    unexplained = []
    for path in _modules():
        text = path.read_text()
        if text.count("\n") <= LIMIT:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if "over 400 lines" not in doc.lower():
            unexplained.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert unexplained == [], "split these, or say at their top why they are one module"


def test_scripts_stay_small() -> None:
    lines = sum(p.read_text().count("\n") for p in (ROOT / "scripts").glob("*.py"))
    assert lines < 400, f"scripts/ has {lines} lines: the dev stack belongs in libraries"
