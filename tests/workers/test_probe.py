"""The readiness probe's worker check, round-tripped through Redis to a real worker."""

from __future__ import annotations

from tests.conftest import METRICS_AUTH


def test_readyz_with_workers_round_trips_a_task_through_a_real_worker(client, celery_worker):
    response = client.get("/readyz?workers=1", headers=METRICS_AUTH)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["checks"] == {"database": "ok", "redis": "ok", "worker": "ok"}


def test_probe_task_reports_the_workers_database_view(celery_worker):
    from workers.maintenance import probe_worker

    answer = probe_worker.apply_async().get(timeout=15)
    assert answer["database"] == "ok"
    assert answer["worker"]


def test_probe_task_answers_under_its_old_name_during_a_rolling_deploy(celery_worker):
    from workers import celery_app

    answer = celery_app.send_task("maintenance.probe").get(timeout=15)
    assert answer["database"] == "ok"
    assert answer["worker"]


def test_readyz_reports_503_when_no_worker_consumes(client, celery_worker):
    celery_worker.stop()
    try:
        response = client.get("/readyz?workers=1", headers=METRICS_AUTH)
        assert response.status_code == 503
        body = response.get_json()
        assert body["status"] == "unavailable"
        assert body["checks"]["worker"] == "no worker answered"
        assert body["checks"]["database"] == "ok"
    finally:
        celery_worker.start()
