from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from app.services.boxes import provisioning
from tests.conftest import METRICS_AUTH
from tests.factories import UserFactory


def _samples(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics", headers=METRICS_AUTH)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    out = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_report_boxes_by_status_from_the_database(client, session):
    before = _samples(client)
    user = UserFactory()
    provisioning.create_vibebox(session, user_id=user.id, plan_id="basic")
    session.commit()
    after = _samples(client)
    key = ("vibebox_boxes", (("status", "pending"),))
    assert after[key] == before[key] + 1
    assert ("vibebox_servers", (("state", "available"),)) in after
    assert after[("vibebox_oldest_in_progress_box_age_seconds", ())] >= 0
