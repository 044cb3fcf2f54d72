"""The arithmetic of the fleet benchmark (bench/fleet_stats.py): percentiles, where each
box's time went, and which process kind a command line belongs to."""

from __future__ import annotations

import os

import pytest

from bench.fleet_stats import classify_command, memory_of, percentiles, step_breakdown


def test_percentiles_of_one_to_a_hundred() -> None:
    result = percentiles(float(v) for v in range(1, 101))
    assert result["n"] == 100
    assert result["min"] == 1.0 and result["max"] == 100.0
    assert result["p50"] == pytest.approx(50.5)
    assert result["p90"] == pytest.approx(90.1)
    assert result["p99"] == pytest.approx(99.01)
    assert result["mean"] == pytest.approx(50.5)


def test_percentiles_of_nothing_and_of_one_value() -> None:
    assert percentiles([]) == {"n": 0}
    one = percentiles([2.5])
    assert one["p50"] == one["p99"] == one["min"] == 2.5


def test_step_breakdown_waits_run_from_the_payment_then_from_the_previous_step() -> None:
    rows = [
        {
            "received": 100.0,
            "steps": {
                "a": {"started": 101.0, "finished": 103.0, "attempts": 1},
                "b": {"started": 103.5, "finished": 107.5, "attempts": 2},
            },
        },
        {  # b never started: counted in a only
            "received": 200.0,
            "steps": {
                "a": {"started": 203.0, "finished": 204.0, "attempts": 1},
                "b": {"started": None, "finished": None, "attempts": 0},
            },
        },
    ]
    out = step_breakdown(rows, ["a", "b"])
    assert out["a"]["wait"]["n"] == 2 and out["a"]["wait"]["mean"] == pytest.approx(2.0)
    assert out["a"]["run"]["mean"] == pytest.approx(1.5)
    assert out["b"]["wait"]["n"] == 1 and out["b"]["wait"]["p50"] == pytest.approx(0.5)
    assert out["b"]["run"]["p50"] == pytest.approx(4.0)
    assert (out["a"]["attempts"], out["b"]["attempts"]) == (2, 2)


@pytest.mark.parametrize(
    ("cmdline", "kind"),
    [
        ("/v/bin/python /v/bin/gunicorn -c python:app.gunicorn_config app:create_app()", "web"),
        ("/v/bin/python /v/bin/celery -A workers worker -Q provisioning -n worker2@%h", "workers"),
        (
            "/v/bin/python /v/bin/celery -A workers worker -Q maintenance --pool prefork",
            "maintenance_worker",
        ),
        ("/v/bin/python /v/bin/celery -A workers beat --loglevel=INFO", "beat"),
        ("/v/bin/python /v/bin/celery -A workers flower --port=5555", "flower"),
        ("python scripts/run.py respawn worker -- celery -A workers worker", "supervisors"),
        ("/v/bin/python /v/bin/honcho start -f Procfile", "supervisors"),
    ],
)
def test_classify_command(cmdline: str, kind: str) -> None:
    assert classify_command(cmdline) == kind


def test_memory_of_this_process_counts_it_once() -> None:
    result = memory_of([os.getpid(), 2**31 - 1])  # the second one does not exist
    assert result["processes"] == 1
    assert result["rss_mb"] > 0 and 0 < result["pss_mb"] <= result["rss_mb"]
