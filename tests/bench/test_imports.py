"""Every benchmark script imports (they run rarely, by hand or `make bench`: a rename elsewhere
must not leave one broken until the next benchmark run)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCH.glob("*.py")))
def test_bench_script_imports(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # status_bare_app.py is a gunicorn app: it reads its settings when imported
    monkeypatch.setenv("JWT_SECRET_KEY", "bench-import-test")
    module = importlib.import_module(f"bench.{name}")
    assert module.__file__ is not None and Path(module.__file__).parent == BENCH
