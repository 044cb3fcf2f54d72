"""ops/grafana-dashboard.json and ops/prometheus-alerts.yml parse, and query only metrics
that VibeBox exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

OPS = Path(__file__).resolve().parents[2] / "ops"
EXPORTED = {
    "vibebox_http_requests_total",
    "vibebox_http_request_duration_seconds_bucket",
    "vibebox_box_step_outcomes_total",
    "vibebox_box_step_duration_seconds_bucket",
    "vibebox_paid_to_running_seconds_bucket",
    "vibebox_boxes",
    "vibebox_servers",
    "vibebox_degraded_boxes",
    "vibebox_oldest_in_progress_box_age_seconds",
    "vibebox_oldest_waiting_for_capacity_age_seconds",
    "vibebox_cloud_servers_total",
    "vibebox_cloud_orphans_total",
}
METRIC = re.compile(r"\bvibebox_[a-z_]+")


def test_the_dashboard_is_valid_json_with_the_promised_panels():
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    panels = dashboard["panels"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used <= EXPORTED, used - EXPORTED
    for needed in (
        "vibebox_http_requests_total",
        "vibebox_http_request_duration_seconds_bucket",
        "vibebox_box_step_outcomes_total",
        "vibebox_paid_to_running_seconds_bucket",
        "vibebox_boxes",
        "vibebox_degraded_boxes",
    ):
        assert needed in used
    assert len({p["id"] for p in panels}) == len(panels)


def test_the_alert_rules_are_valid_yaml_and_cover_the_promised_alerts():
    rules = yaml.safe_load((OPS / "prometheus-alerts.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    for rule in alerts.values():
        assert set(rule) >= {"alert", "expr", "labels", "annotations"}
        assert set(METRIC.findall(rule["expr"])) <= EXPORTED, rule["expr"]
    exprs = {name: rule["expr"] for name, rule in alerts.items()}
    assert "vibebox_oldest_in_progress_box_age_seconds" in exprs["VibeBoxStuckProvisioning"]
    assert 'outcome="failed"' in exprs["VibeBoxStepFailures"]
    assert "waiting_for_capacity" in exprs["VibeBoxCapacityExhausted"]
    assert 'status="400"' in exprs["VibeBoxWebhookRejects"]
    assert "vibebox_cloud_orphans_total" in exprs["VibeBoxCloudOrphans"]
