"""The fast test tier's guard: it never starts a worker, beat, sshd box or RabbitMQ node.

`make test-fast` deselects the markers e2e, sshd, rabbitmq, ops and fuzz and sets
``VIBEBOX_TEST_TIER=fast``. The markers are applied in tests/conftest.py from the fixtures
a test uses; a test that starts one of these processes without its marker fails here, with
the marker to add, instead of silently making the fast tier slow.
"""

from __future__ import annotations

import os

TIER_ENV = "VIBEBOX_TEST_TIER"


class TierViolation(RuntimeError):
    """A fast-tier test tried to start what only the full suite starts."""


def require_full_tier(what: str, marker: str) -> None:
    if os.environ.get(TIER_ENV) == "fast":
        raise TierViolation(
            f"the fast test tier does not start {what}: mark the test @pytest.mark.{marker} "
            "(or use the fixture that tests/conftest.py marks)"
        )
