"""HTTP request counters by endpoint and status, request ids, JSON log lines."""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
from pathlib import Path

from app import logging as app_logging
from tests.conftest import METRICS_AUTH, PROMETHEUS_DIR
from tests.support.metrics import key, parse


def _metrics(client):
    response = client.get("/metrics", headers=METRICS_AUTH)
    assert response.status_code == 200
    return parse(response.get_data(as_text=True))


def test_requests_are_counted_by_endpoint_method_and_status(client):
    before = _metrics(client)
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    missing = f"/api/vibeboxes/{uuid.uuid4()}"
    assert client.get(missing).status_code == 401
    after = _metrics(client)

    endpoint = next(
        dict(labels)["endpoint"]
        for (name, labels) in after
        if name == "vibebox_http_requests_total" and "health" in dict(labels)["endpoint"]
    )
    ok = key("vibebox_http_requests_total", endpoint=endpoint, method="GET", status="200")
    assert after[ok] == before.get(ok, 0) + 3
    latency = key("vibebox_http_request_duration_seconds_count", endpoint=endpoint, method="GET")
    assert after[latency] == before.get(latency, 0) + 3
    # by the route's endpoint name, never the raw path (no id in a label)
    refused = [
        (labels, v)
        for (name, labels), v in after.items()
        if name == "vibebox_http_requests_total" and dict(labels)["status"] == "401"
    ]
    assert refused and all(missing not in dict(labels)["endpoint"] for labels, _ in refused)
    assert not any(str(uuid.UUID(missing.rsplit("/", 1)[1])) in str(k) for k in after)


def test_the_metrics_endpoint_serves_fleet_gauges_and_process_metrics(client):
    samples = _metrics(client)
    # multiprocess mode, as under `make run`: the counters live in per-process files
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == PROMETHEUS_DIR
    assert list(Path(PROMETHEUS_DIR).glob("counter_*.db"))
    assert ("vibebox_degraded_boxes", ()) in samples
    assert samples[("vibebox_oldest_waiting_for_capacity_age_seconds", ())] >= 0
    assert any(name == "vibebox_http_requests_total" for name, _ in samples)
    # the old "counter" computed from the database is gone
    assert not any(name.startswith("vibebox_provisioning_step_failures") for name, _ in samples)


def test_a_request_id_is_echoed_generated_when_absent_and_replaced_when_invalid(client):
    given = "abc-123.XYZ_9"
    assert client.get("/healthz", headers={"X-Request-ID": given}).headers["X-Request-ID"] == given

    generated = client.get("/healthz").headers["X-Request-ID"]
    assert generated and app_logging.valid_request_id(generated) == generated
    assert client.get("/healthz").headers["X-Request-ID"] != generated

    for bad in ("x" * 65, "bad id", "a\\nb", "<script>", "id;rm"):
        echoed = client.get("/healthz", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
        assert echoed != bad and app_logging.valid_request_id(echoed) == echoed


def test_a_log_line_of_a_request_is_json_with_the_request_id_and_no_secret(app, db):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(app_logging.json_formatter())
    handler.addFilter(app_logging.ContextFilter())
    handler.addFilter(app_logging.RedactingFilter())
    logger = logging.getLogger("vibebox.test.observability")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with app.test_request_context("/healthz", headers={"X-Request-ID": "req-json-1"}):
            app.preprocess_request()  # the app's before_request hooks bind the request id
            logger.info("handled with token=%s", "s3cr3t-value", extra={"box_id": "b-1"})
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue().strip()
    record = json.loads(line)
    assert record["request_id"] == "req-json-1"
    assert record["box_id"] == "b-1"
    assert record["level"] == "INFO" and record["logger"] == "vibebox.test.observability"
    assert "timestamp" in record and record["message"].startswith("handled with token=")
    assert "s3cr3t-value" not in line


def test_log_format_defaults_to_text_in_development_and_json_elsewhere():
    assert app_logging.log_format({"VIBEBOX_ENV": "development"}) == "text"
    assert app_logging.log_format({"VIBEBOX_ENV": "production"}) == "json"
    assert app_logging.log_format({"VIBEBOX_ENV": "production", "LOG_FORMAT": "text"}) == "text"


def test_the_webhook_alert_matches_the_webhook_endpoints(app):
    import re

    import yaml

    from tests.ops.test_dashboards import OPS

    rules = yaml.safe_load((OPS / "prometheus-alerts.yml").read_text())
    expr = next(
        r["expr"]
        for g in rules["groups"]
        for r in g["rules"]
        if r["alert"] == "VibeBoxWebhookRejects"
    )
    pattern = re.search(r'endpoint=~"([^"]+)"', expr).group(1)
    matched = {r.endpoint for r in app.url_map.iter_rules() if re.fullmatch(pattern, r.endpoint)}
    assert matched and all("webhook" in e.lower() for e in matched)
