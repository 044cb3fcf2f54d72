"""Schemathesis over every operation of /openapi.json, in-process (WSGI) against the real
PostgreSQL and Redis of the test run, as an anonymous client, a logged-in user and an admin.

Each response must not be a 5xx and must match the document: a documented status (or the
``default`` error response), a documented content type, a body valid against the documented
schema, and invalid input (schemathesis' negative mode) must be refused with a 4xx.

Bounded for CI: ``MAX_EXAMPLES`` valid and as many invalid requests per operation and role,
no deadline, derandomized (the same cases on every run). A failure names the operation and
the check, with a curl line to replay the case against ``make run``.

Schemathesis' own pytest integration (``schemathesis.pytest.from_fixture``) does not run on
pytest 9.2 (it sets ``Node._nodeid``), so the cases come from its public Hypothesis strategies
(``APIOperation.as_strategy``) and are sent and checked with ``Case.call_and_validate``.

Pool servers: POOL_ALLOWED_NETWORKS=127.0.0.0/8 (tests/conftest.py) refuses every other
address before any connection; names are resolved from a loopback-only table here (no DNS
query leaves the machine), and the SSH port of a generated server is one that is bound but
not listening, so an admitted loopback address is refused at once (nothing else on this
machine is ever dialled).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator
from itertools import count
from typing import Any

import pytest
import schemathesis
from flask_jwt_extended import create_access_token
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from marshmallow import ValidationError
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from app.api.servers.schemas import ServerCreateSchema
from app.services import pool
from tests.factories import AdminFactory, UserFactory

MAX_EXAMPLES = 20  # per operation, role and mode (valid / invalid input)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
LOOPBACK_NAMES = {"localhost": ("127.0.0.1",)}

_addresses = count(1)


def _loopback_only_resolver(host: str, port: int) -> list[Any]:
    """Names resolve from a fixed loopback table; anything else does not resolve."""
    addresses = LOOPBACK_NAMES.get(host.lower())
    if addresses is None:
        raise socket.gaierror(socket.EAI_NONAME, "not resolved in the fuzz run")
    return [ipaddress.ip_address(a) for a in addresses]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: a connection is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
def fuzz(app: Any, db: Any, monkeypatch: pytest.MonkeyPatch, closed_port: int):  # type: ignore[no-untyped-def]
    """``fuzz(headers)``: every operation, valid and invalid input, checked; one report."""
    monkeypatch.setattr(pool.networks, "resolve_addresses", _loopback_only_resolver)
    api_schema = schemathesis.openapi.from_wsgi("/openapi.json", app)

    def run(headers: Callable[[], dict[str, str]]) -> None:
        failures: list[str] = []
        operations = 0
        for result in api_schema.get_all_operations():
            operation = result.ok()
            operations += 1
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    _fuzz_operation(operation, mode, headers, closed_port)
                except Unsatisfiable:
                    assert mode is GenerationMode.NEGATIVE, operation.label
                    # Nothing in this operation can be made invalid (no parameters or body).
                except (Exception, BaseExceptionGroup) as exc:  # FailureGroup is the latter
                    failures.append(f"{operation.label} ({mode.value}): {exc}")
        assert operations >= 20, "the OpenAPI document lost its operations"
        assert not failures, "\n\n".join(failures)

    return run


def _fuzz_operation(
    operation: Any, mode: GenerationMode, headers: Callable[[], dict[str, str]], port: int
) -> None:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def send(case: Any) -> None:
        _confine_pool_servers(case, port)
        n = next(_addresses)
        # Each request from its own address: per-IP rate limits never turn the run into 429s.
        remote = f"10.{200 + (n >> 16) % 50}.{(n >> 8) & 255}.{n & 255}"
        case.call_and_validate(
            headers=_role_headers(case, headers),
            checks=CHECKS,
            environ_base={"REMOTE_ADDR": remote},
        )

    send()


def _role_headers(case: Any, headers: Callable[[], dict[str, str]]) -> dict[str, str]:
    """The role's session, unless this invalid case is about the session itself (it left
    out or mangled ``Authorization``): then the case goes as generated."""
    components = case.meta.components if case.meta is not None else {}
    modes = {getattr(where, "value", where): info.mode for where, info in components.items()}
    if modes.get("header") is GenerationMode.NEGATIVE:
        generated = {name.lower() for name in (case.headers or {})}
        if "authorization" in generated or not generated:
            return {}
    return headers()


def _confine_pool_servers(case: Any, port: int) -> None:
    """A generated pool server never makes the SSH check dial a port something listens on:
    any port the API would accept (22 when left out, "22", 22.0, ...) becomes ``port``."""
    if case.method.upper() == "POST" and case.operation.path == "/api/admin/servers":
        body = case.body
        if isinstance(body, dict):
            try:
                ServerCreateSchema().fields["port"].deserialize(body.get("port", 22))
            except ValidationError:
                return  # refused by the schema: nothing is dialled
            body["port"] = port


def _bearer(app: Any, user: Any) -> Callable[[], dict[str, str]]:
    def headers() -> dict[str, str]:
        # A fresh token per request: a fuzzed POST /api/auth/logout revokes only its own.
        with app.app_context():
            return {"Authorization": f"Bearer {create_access_token(identity=user)}"}

    return headers


@pytest.mark.timeout(180)  # bounded: ~15 s each on a CI machine
def test_every_operation_as_an_anonymous_client(fuzz):
    fuzz(dict)


@pytest.mark.timeout(180)  # bounded: ~15 s each on a CI machine
def test_every_operation_as_a_user(app, fuzz):
    fuzz(_bearer(app, UserFactory()))


@pytest.mark.timeout(180)  # bounded: ~15 s each on a CI machine
def test_every_operation_as_an_admin(app, fuzz):
    fuzz(_bearer(app, AdminFactory()))
