"""Fixtures: one Happy double and one fleet of real sshd boxes per test session (per xdist
worker), a fresh box per test that needs one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.integrations.happy import HappyClient, HappyCredentials
from tests.support.happy_double import HappyDouble, make_secret


@pytest.fixture(autouse=True)
def _clear_happy_faults(happy_double: HappyDouble) -> Iterator[None]:
    """Fault switches never leak from one test into the next."""
    happy_double.reset_faults()
    yield
    happy_double.reset_faults()


@pytest.fixture
def happy_client(happy_double: HappyDouble) -> HappyClient:
    return HappyClient(happy_double.url, timeout=(1.0, 2.0))


@pytest.fixture
def credentials(happy_client: HappyClient) -> HappyCredentials:
    """A new Happy account on the double (secret chosen as :func:`make_secret` says)."""
    secret = make_secret()
    return HappyCredentials(secret, happy_client.create_account(secret))
