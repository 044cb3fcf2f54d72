"""The shared mapping of ``requests`` faults (app/integrations/http.py), against real sockets
on loopback: nothing of the URL (which may carry a signed request) reaches a message."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import requests

from app.errors import PermanentError, TransientError
from app.integrations.http import is_transient_status, request_faults

SIGNED = "sign=c2VjcmV0LXNpZ25hdHVyZQ"


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unusable_url_is_the_operators_to_fix() -> None:
    with (
        pytest.raises(PermanentError) as raised,
        request_faults("Svc GET /x", "Svc", timeout=1, url_setting="SVC_URL"),
    ):
        requests.get(f"ftp//nowhere?{SIGNED}", timeout=1)
    assert "bad SVC_URL" in str(raised.value)
    assert raised.value.safe_message == "Svc is misconfigured."
    assert SIGNED not in str(raised.value)


def test_a_refused_connection_is_transient_and_quotes_nothing_of_the_url() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/gateway?{SIGNED}"
    with (
        pytest.raises(TransientError) as raised,
        request_faults("Svc GET /gateway", "Svc", timeout=2, url_setting="SVC_URL"),
    ):
        requests.get(url, timeout=2)
    assert raised.value.safe_message == "Svc is unreachable."
    assert SIGNED not in str(raised.value) and raised.value.__cause__ is None
    assert raised.value.__suppress_context__


def test_a_server_that_never_answers_times_out_as_transient(silent_port: int) -> None:
    with (
        pytest.raises(TransientError) as raised,
        request_faults("Svc GET /slow", "Svc", timeout=(2, 0.3), url_setting="SVC_URL"),
    ):
        requests.get(f"http://127.0.0.1:{silent_port}/slow?{SIGNED}", timeout=(2, 0.3))
    assert "timed out" in str(raised.value)
    assert raised.value.safe_message == "Svc did not answer in time."
    assert SIGNED not in str(raised.value)


@pytest.mark.parametrize(
    ("status", "transient"),
    [(500, True), (503, True), (429, True), (400, False), (401, False), (404, False)],
)
def test_5xx_and_429_are_transient_other_4xx_are_not(status: int, transient: bool) -> None:
    assert is_transient_status(status) is transient
