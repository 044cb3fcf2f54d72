"""`vibebox plans`: where plans are sold and their per-user box limit."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.config import RegionSettings
from app.models import Plan


@pytest.fixture
def run(app, db):
    runner = app.test_cli_runner()

    def invoke(*args: str):
        return runner.invoke(args=["plans", *args])

    return invoke


@pytest.fixture
def regional(app, settings, monkeypatch):
    regions = RegionSettings(regions=("intl", "cn"), default_region="intl")
    monkeypatch.setitem(app.config, "VIBEBOX_SETTINGS", replace(settings, regions=regions))


def test_update_sets_and_clears_regions_default_and_limit(run, regional, session):
    result = run("update", "pro", "--regions", "cn,intl", "--default-region", "cn")
    assert result.exit_code == 0, result.output
    result = run("update", "pro", "--max-live-boxes", "1")
    assert result.exit_code == 0, result.output
    plan = session.get(Plan, "pro", populate_existing=True)
    assert (plan.regions, plan.default_region, plan.max_live_boxes_per_user) == (
        ["cn", "intl"],
        "cn",
        1,
    )
    listing = run("list").output.splitlines()
    pro = next(line.split() for line in listing if line.startswith("pro "))
    assert pro[:5] == ["pro", "yes", "intl,cn", "cn", "1"]

    assert run("update", "pro", "--regions", "", "--default-region", "", "--max-live-boxes", "")
    plan = session.get(Plan, "pro", populate_existing=True)
    assert (plan.regions, plan.default_region, plan.max_live_boxes_per_user) == (None, None, None)


def test_update_refuses_unknown_regions_and_negative_limits(run, regional, session):
    result = run("update", "pro", "--regions", "intl,mars")
    assert result.exit_code == 1 and "mars" in result.output
    result = run("update", "pro", "--regions", "intl", "--default-region", "cn")
    assert result.exit_code == 1 and "not one of the plan's regions" in result.output
    result = run("update", "pro", "--max-live-boxes", "-1")
    assert result.exit_code == 1 and "0 (no limit) or more" in result.output
    assert run("update", "pro", "--max-live-boxes", "x").exit_code == 2
    assert run("update", "pro").exit_code == 2
    assert run("update", "gold", "--max-live-boxes", "1").exit_code == 1
    plan = session.get(Plan, "pro", populate_existing=True)
    assert (plan.regions, plan.default_region, plan.max_live_boxes_per_user) == (None, None, None)
