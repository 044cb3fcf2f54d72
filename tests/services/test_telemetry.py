"""Counters and histograms recorded by the engine's runner (real database, scripted remote
side), read back from prometheus_client's multiprocess files as /metrics reads them."""

from __future__ import annotations

import pytest

from app.services.boxes.provisioning import STEPS
from app.services.boxes.statuses import BoxStatus as S
from tests.services.engine_harness import TRANSIENT, Harness
from tests.support.metrics import key, process_samples


@pytest.fixture
def h(session, settings):
    harness = Harness(session, settings)
    yield harness
    harness.close()


def _outcome(samples, step: str, outcome: str) -> float:
    return samples.get(key("vibebox_box_step_outcomes_total", step=step, outcome=outcome), 0.0)


def test_provisioning_a_box_moves_step_counters_and_the_paid_to_running_histogram(h):
    before = process_samples()
    h.add_server()
    box = h.pay()
    assert h.drive(box.id).status == S.RUNNING
    after = process_samples()
    for step in STEPS:
        assert _outcome(after, step, "succeeded") == _outcome(before, step, "succeeded") + 1
        count = key("vibebox_box_step_duration_seconds_count", step=step)
        assert after[count] == before.get(count, 0) + 1
    paid = key("vibebox_paid_to_running_seconds_count")
    assert after[paid] == before.get(paid, 0) + 1
    assert after[key("vibebox_paid_to_running_seconds_sum")] >= before.get(
        key("vibebox_paid_to_running_seconds_sum"), 0
    )


def test_a_retry_is_counted_and_the_count_survives_the_step_succeeding(h):
    step = "create_happy_account"
    h.add_server()
    box = h.pay()
    h.world.script[step] = [TRANSIENT, TRANSIENT]
    before = process_samples()
    assert h.drive(box.id).status == S.RUNNING  # two retries, then it succeeds
    after = process_samples()
    assert _outcome(after, step, "retry") == _outcome(before, step, "retry") + 2
    assert _outcome(after, step, "succeeded") == _outcome(before, step, "succeeded") + 1
    # the retries stay counted once the step succeeded (a counter, not a database view)
    again = process_samples()
    assert _outcome(again, step, "retry") == _outcome(after, step, "retry")
