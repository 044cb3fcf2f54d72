"""Hostile input gets a clear JSON error with a stable code, never a 500, and writes nothing.

Each reproducer of the "Hardening" issue is a test here (they answered 500 before): deep
JSON, NUL and lone surrogates reaching PostgreSQL, integers past PostgreSQL's range, bodies
of any size, an OpenAPI document that contradicted every error answer, gunicorn's HTML
errors, and pool servers anywhere on the network.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from flask_jwt_extended import create_access_token
from marshmallow import fields, validate
from sqlalchemy import func, select

from app.api.request_guard import MAX_JSON_DEPTH, JSONBodyError, loads
from app.api.validation import RequestSchema
from app.config import ConfigError, LimitSettings
from app.models import Order, PaymentEvent, Server, User, VibeBox
from app.services import pool
from tests.factories import TEST_PASSWORD, AdminFactory, UserFactory
from tests.pool_fixtures import FakeCheck, make_server

REPO = Path(__file__).resolve().parents[2]
TABLES = (User, Order, PaymentEvent, VibeBox, Server)


def bearer(app: Any, user: Any) -> dict[str, str]:
    with app.app_context():
        return {"Authorization": f"Bearer {create_access_token(identity=user)}"}


@pytest.fixture
def user(app):
    return UserFactory()


@pytest.fixture
def user_auth(app, user):
    return bearer(app, user)


@pytest.fixture
def admin_auth(app):
    return bearer(app, AdminFactory())


@pytest.fixture
def rows(session):
    """Row counts of the tables a request could write: call it before and after."""

    def count() -> dict[str, int]:
        session.expire_all()
        return {t.__name__: session.scalar(select(func.count()).select_from(t)) for t in TABLES}

    return count


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return body


# --- JSON nested 1000 deep (RecursionError) ----------------------------------------------


def _deep_json_requests(user_id: str) -> list[tuple[str, str, str]]:
    """(route, auth role, body) for each reproducer: a valid-looking body with one field
    nested 1000 deep."""
    deep = nested(1000)
    return [
        ("/api/auth/register", "anonymous", f'{{"email": "a@b.co", "username": {deep}}}'),
        ("/api/auth/login", "anonymous", f'{{"username": {deep}, "password": "x"}}'),
        (
            "/api/subscriptions/checkout",
            "user",
            f'{{"planId": {deep}, "billingCycle": "monthly", "provider": "dev"}}',
        ),
        ("/api/admin/provision", "admin", f'{{"userId": "{user_id}", "planId": {deep}}}'),
        ("/api/subscriptions/webhook/dev", "anonymous", f'{{"orderId": {deep}}}'),
    ]


@pytest.mark.parametrize("index", range(5))
def test_json_nested_1000_deep_is_400_invalid_json(
    client, user, user_auth, admin_auth, rows, index
):
    route, role, body = _deep_json_requests(str(user.id))[index]
    headers = {"anonymous": {}, "user": user_auth, "admin": admin_auth}[role]
    before = rows()
    response = client.post(route, data=body, content_type="application/json", headers=headers)
    assert "nested deeper than 32" in error_of(response, 400, "invalid_json")["message"]
    assert rows() == before


def test_webhook_json_is_checked_whatever_its_declared_type(client, rows):
    before = rows()
    response = client.post(
        "/api/subscriptions/webhook/dev", data=nested(5000), content_type="text/plain"
    )
    error_of(response, 400, "invalid_json")
    assert rows() == before


def test_json_parser_limits():
    assert loads(nested(MAX_JSON_DEPTH)) == loads(nested(MAX_JSON_DEPTH))
    assert loads(b'{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}
    for bad in (
        nested(MAX_JSON_DEPTH + 1),
        '{"a": ' * 40 + "1" + "}" * 40,
        nested(100_000),  # far past the interpreter's recursion limit
        "NaN",
        '{"a": Infinity}',
        "1e999",
        "1" * 5000,  # more digits than Python converts
        b"\xff\xfe{}",  # not UTF-8
        "{",
    ):
        with pytest.raises(JSONBodyError):
            loads(bad)


def test_malformed_json_is_400_invalid_json_everywhere(client, user_auth):
    for route, headers in (
        ("/api/auth/login", {}),
        ("/api/subscriptions/checkout", user_auth),
        ("/api/vibeboxes", user_auth),  # a GET with a JSON body is parsed too
    ):
        method = client.get if route == "/api/vibeboxes" else client.post
        response = method(
            route, data=b'{"a": NaN}', content_type="application/json", headers=headers
        )
        error_of(response, 400, "invalid_json")


# --- NUL bytes (psycopg.DataError) ------------------------------------------------------


def test_nul_in_login_username_is_422(client, user, rows):
    before = rows()
    response = client.post(
        "/api/auth/login", json={"username": user.username + "\x00", "password": TEST_PASSWORD}
    )
    assert "username" in error_of(response, 422, "validation_error")["errors"]
    assert rows() == before


def test_nul_in_checkout_plan_is_422(client, user_auth, rows):
    before = rows()
    response = client.post(
        "/api/subscriptions/checkout",
        json={"planId": "basic\x00", "billingCycle": "monthly", "provider": "dev"},
        headers=user_auth,
    )
    assert "planId" in error_of(response, 422, "validation_error")["errors"]
    assert rows() == before


def test_nul_in_admin_provision_plan_is_422(client, user, admin_auth, rows):
    before = rows()
    response = client.post(
        "/api/admin/provision",
        json={"userId": str(user.id), "planId": "ba\x00sic"},
        headers=admin_auth,
    )
    assert "planId" in error_of(response, 422, "validation_error")["errors"]
    assert rows() == before


def test_nul_in_admin_server_label_is_422_and_the_server_unchanged(client, session, admin_auth):
    server = make_server(session, label="before")
    session.commit()
    response = client.patch(
        f"/api/admin/servers/{server.id}", json={"label": "x\x00y"}, headers=admin_auth
    )
    assert "label" in error_of(response, 422, "validation_error")["errors"]
    session.expire_all()
    assert session.get(Server, server.id).label == "before"


def test_nul_in_query_args_and_keys_is_422(client, admin_auth):
    response = client.get("/api/admin/servers?state=available%00", headers=admin_auth)
    assert "state" in error_of(response, 422, "validation_error")["errors"]
    response = client.post("/api/auth/login", json={"username": "u", "password": "p", "x\x00": 1})
    assert "x\\u0000" in error_of(response, 422, "validation_error")["errors"]


# --- lone surrogates (UnicodeEncodeError) ---------------------------------------------


def test_lone_surrogate_in_register_password_is_422(client, rows):
    before = rows()
    response = client.post(
        "/api/auth/register",
        json={"email": "s@example.com", "username": "surrogate", "password": "abcdefgh\ud800"},
    )
    assert "password" in error_of(response, 422, "validation_error")["errors"]
    assert rows() == before


@pytest.mark.parametrize("field", ["username", "password"])
def test_lone_surrogate_in_login_is_422(client, user, field):
    body = {"username": user.username, "password": TEST_PASSWORD}
    body[field] += "\udfff"
    response = client.post("/api/auth/login", json=body)
    assert field in error_of(response, 422, "validation_error")["errors"]


def test_lone_surrogate_in_checkout_plan_is_422(client, user_auth, rows):
    before = rows()
    response = client.post(
        "/api/subscriptions/checkout",
        json={"planId": "\ud800", "billingCycle": "monthly", "provider": "dev"},
        headers=user_auth,
    )
    assert "planId" in error_of(response, 422, "validation_error")["errors"]
    assert rows() == before


def test_a_real_surrogate_pair_is_a_character_not_an_error(client, rows):
    """JSON's escaped pair for U+1F600 is one character: only unpaired ones are refused."""
    response = client.post(
        "/api/auth/login",
        data='{"username": "\\ud83d\\ude00nobody", "password": "whatever-it-is"}',
        content_type="application/json",
    )
    error_of(response, 401, "invalid_credentials")


def test_a_login_password_over_bcrypts_72_bytes_is_a_wrong_password(client, user):
    """72 characters pass the length rule, but 144 bytes made bcrypt raise (500). No stored
    password is that long, so it is simply wrong: 401, like any other wrong password."""
    response = client.post(
        "/api/auth/login", json={"username": user.username, "password": "é" * 72}
    )
    error_of(response, 401, "invalid_credentials")


# --- integers past PostgreSQL's range (NumericValueOutOfRange) ---------------------------


@pytest.mark.parametrize(
    "query",
    ["offset=9223372036854775808", "offset=2147483648", "limit=9223372036854775808", "offset=-1"],
)
def test_out_of_range_paging_is_422(client, admin_auth, query):
    response = client.get(f"/api/admin/users?{query}", headers=admin_auth)
    field = query.split("=")[0]
    assert field in error_of(response, 422, "validation_error")["errors"]


def test_unknown_query_arguments_are_422(client, admin_auth):
    response = client.get("/api/admin/users?ofset=5", headers=admin_auth)
    assert "ofset" in error_of(response, 422, "validation_error")["errors"]


def _request_schemas() -> list[type]:
    import app.api  # noqa: F401 - every route module's schemas

    seen, todo = set(), list(RequestSchema.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.add(cls)
            todo.extend(cls.__subclasses__())
    return sorted(seen, key=lambda c: c.__name__)


def test_every_argument_schema_is_a_request_schema_with_bounded_integers(app):
    """Every schema a route loads client input with inherits RequestSchema (NUL and
    surrogates refused) and bounds each of its integers on both sides."""
    spec_schemas = set()
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        for method in ("get", "post", "put", "patch", "delete"):
            func = getattr(getattr(view, "view_class", None), method, None)
            for param in getattr(func, "_apidoc", {}).get("arguments", {}).get("parameters", []):
                schema = param["schema"]
                spec_schemas.add(schema if isinstance(schema, type) else type(schema))
    assert spec_schemas, "no @blp.arguments schemas found"
    not_guarded = sorted(s.__name__ for s in spec_schemas if not issubclass(s, RequestSchema))
    assert not_guarded == []
    for schema in _request_schemas():
        for name, field in schema().load_fields.items():
            if isinstance(field, fields.Integer):
                ranges = [v for v in field.validators if isinstance(v, validate.Range)]
                assert ranges and ranges[0].min is not None and ranges[0].max is not None, (
                    f"{schema.__name__}.{name} is an unbounded integer"
                )
                assert ranges[0].max <= 2**31 - 1


# --- request size -----------------------------------------------------------------------


def test_a_20_mb_body_is_413_before_it_is_read(client, rows):
    before = rows()
    body = b'{"email": "' + b"a" * (20 * 1024 * 1024) + b'"}'
    response = client.post("/api/auth/register", data=body, content_type="application/json")
    assert error_of(response, 413, "payload_too_large")["maxBytes"] == 1024 * 1024
    assert rows() == before


def test_a_streamed_body_without_content_length_is_cut_off_at_the_limit(client):
    def streamed(body: bytes) -> Any:
        return client.post(
            "/api/auth/login",
            input_stream=io.BytesIO(body),
            content_type="application/json",
            headers={"Transfer-Encoding": "chunked"},  # no usable Content-Length
            environ_overrides={"wsgi.input_terminated": True},  # as gunicorn sets it
        )

    response = streamed(b"[" + b"1," * (1024 * 1024) + b"1]")
    assert response.request.content_length is None
    assert error_of(response, 413, "payload_too_large")["maxBytes"] == 1024 * 1024
    exactly = b'{"username": "u", "password": "' + b"p" * 1024 * 1024
    exactly = exactly[: 1024 * 1024 - 2] + b'"}'
    assert len(exactly) == 1024 * 1024
    response = streamed(exactly)  # at the limit: read whole, then refused by the schema
    assert error_of(response, 422, "validation_error")["errors"]


def test_webhooks_have_their_own_smaller_limit(client, rows):
    before = rows()
    body = json.dumps({"orderId": "x" * (300 * 1024)})  # under 1 MiB, over 256 KiB
    response = client.post(
        "/api/subscriptions/webhook/dev", data=body, content_type="application/json"
    )
    assert error_of(response, 413, "payload_too_large")["maxBytes"] == 256 * 1024
    assert rows() == before
    small = client.post(
        "/api/subscriptions/webhook/dev",
        data=json.dumps({"orderId": str(uuid.uuid4()), "signature": "y" * 1000}),
        content_type="application/json",
    )
    assert small.status_code == 400 and small.get_json() == {"error": "invalid notification"}


def test_limit_settings_are_validated(monkeypatch):
    monkeypatch.setenv("MAX_CONTENT_LENGTH", "0")
    with pytest.raises(ConfigError, match="MAX_CONTENT_LENGTH"):
        LimitSettings.from_env()
    monkeypatch.setenv("MAX_CONTENT_LENGTH", "2048")
    monkeypatch.setenv("WEBHOOK_MAX_BYTES", "1024")
    monkeypatch.setenv("POOL_ALLOWED_NETWORKS", "10.0.0.0/8, 192.168.1.7 fd00::/8")
    limits = LimitSettings.from_env()
    assert (limits.max_content_length, limits.webhook_max_bytes) == (2048, 1024)
    assert [str(n) for n in limits.pool_allowed_networks] == [
        "10.0.0.0/8",
        "192.168.1.7/32",
        "fd00::/8",
    ]
    monkeypatch.setenv("POOL_ALLOWED_NETWORKS", "10.0.0.0/33")
    with pytest.raises(ConfigError, match="POOL_ALLOWED_NETWORKS"):
        LimitSettings.from_env()


# --- the OpenAPI document -------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi(app) -> dict[str, Any]:
    return app.test_client().get("/openapi.json").get_json()


def _resolve(doc: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in item:
        section, name = item["$ref"].split("/")[-2:]
        item = doc["components"][section][name]
    return item


def test_the_error_schema_is_the_body_the_api_sends(openapi):
    error = openapi["components"]["schemas"]["Error"]
    assert error["properties"]["code"]["type"] == "string"
    assert error["properties"]["message"]["type"] == "string"
    assert error["properties"]["errors"]["type"] == "object"
    assert error["properties"]["status"]["type"] == "string"
    assert set(error["required"]) == {"code", "message"}
    assert error["additionalProperties"] is True


def test_every_error_response_is_documented_with_the_error_schema(openapi):
    error_ref = {"$ref": "#/components/schemas/Error"}
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            assert "default" in responses, (method, path)
            for status, response in responses.items():
                if status != "default" and int(status) < 400:
                    continue
                if (path, status) == ("/readyz", "503"):
                    continue  # the probe's own body: {"status": "unavailable", "checks": ...}
                schema = _resolve(openapi, response)["content"]["application/json"]["schema"]
                assert schema == error_ref or error_ref in schema.get("anyOf", []), (
                    method,
                    path,
                    status,
                )


def test_size_rate_and_auth_errors_are_documented_where_they_happen(openapi):
    paths = openapi["paths"]
    for path, method in (
        ("/api/auth/register", "post"),
        ("/api/subscriptions/checkout", "post"),
        ("/api/admin/servers", "post"),
        ("/api/subscriptions/webhook/{provider_name}", "post"),
    ):
        assert {"400", "413", "422"} <= set(paths[path][method]["responses"]) or path.endswith(
            "{provider_name}"
        )
        assert "413" in paths[path][method]["responses"]
    assert "429" in paths["/api/auth/login"]["post"]["responses"]
    assert "429" not in paths["/api/subscriptions/webhook/{provider_name}"]["post"]["responses"]
    assert {"401", "403"} <= set(paths["/api/admin/users"]["get"]["responses"])
    assert "503" in paths["/readyz"]["get"]["responses"]
    assert "415" in paths["/api/vibeboxes/{box_id}/connect"]["post"]["responses"]


def test_hidden_dev_checkout_routes_are_not_in_the_document(client, openapi):
    assert not [p for p in openapi["paths"] if "/dev/" in p]
    assert "hide" not in json.dumps(openapi)
    # ... and they still work (404 without a valid signature, as before).
    response = client.get(f"/api/subscriptions/dev/checkout/{uuid.uuid4()}?sig=x")
    error_of(response, 404, "not_found")


def test_optional_session_is_documented_as_optional(openapi):
    assert {} in openapi["paths"]["/api/auth/session"]["get"]["security"]


# --- pool servers: POOL_ALLOWED_NETWORKS --------------------------------------------------


def server_body(**extra: Any) -> dict[str, Any]:
    body = {
        "host": "127.0.0.1",
        "port": 1,
        "user": "root",
        "password": "pw-not-used",
        "cpuCores": 2,
        "ramGb": 4,
        "diskGb": 40,
    }
    body.update(extra)
    return body


@pytest.mark.parametrize("host", ["::1", "[::1]", "0.0.0.0"])
def test_a_server_outside_the_allowed_networks_is_refused_before_any_connection(
    client, admin_auth, rows, host
):
    """The tests allow 127.0.0.0/8 only: [::1] is loopback, but not in it; 0.0.0.0 never is.
    (Before, these were dialled: both are this machine, so nothing left it.)"""
    before = rows()
    response = client.post("/api/admin/servers", json=server_body(host=host), headers=admin_auth)
    body = error_of(response, 422, "server_host_not_allowed")
    assert "host" in body["errors"]
    assert rows() == before


def test_an_allowed_address_is_dialled(client, admin_auth):
    with socket.socket() as closed:  # bound, not listening: refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        response = client.post(
            "/api/admin/servers", json=server_body(host="127.0.0.1", port=port), headers=admin_auth
        )
    error_of(response, 422, "server_unreachable")


def fake_resolver(table: dict[str, list[str]]):
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[Any]:
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(a) for a in table[host]]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def test_every_resolved_address_of_a_name_must_be_allowed(session):
    loopback = [ipaddress.ip_network("127.0.0.0/8")]
    resolve = fake_resolver({"good.test": ["127.0.0.5"], "mixed.test": ["127.0.0.5", "10.1.2.3"]})
    spec = pool.ServerSpec(
        host="mixed.test", user="u", password="p", cpu_cores=1, ram_gb=1, disk_gb=1
    )
    check = FakeCheck()
    with pytest.raises(pool.HostNotAllowedError) as info:
        pool.add_server(
            session,
            spec,
            encryption_key=bytes(32),
            connect_check=check,
            allowed_networks=loopback,
            resolve=resolve,
        )
    assert (info.value.code, info.value.status_code) == ("server_host_not_allowed", 422)
    assert check.calls == []  # refused before any connection
    good = pool.ServerSpec(
        host="good.test", user="u", password="p", cpu_cores=1, ram_gb=1, disk_gb=1
    )
    server = pool.add_server(
        session,
        good,
        encryption_key=bytes(32),
        connect_check=check,
        allowed_networks=loopback,
        resolve=resolve,
    )
    assert server.host == "good.test" and len(check.calls) == 1


def test_host_checks():
    resolve = fake_resolver({"mapped.test": ["::ffff:10.0.0.1"]})
    anywhere: list[Any] = []
    lan = [ipaddress.ip_network("10.0.0.0/8")]
    assert pool.check_host_allowed("10.0.0.9", 22, lan, resolve=resolve)
    assert pool.check_host_allowed("203.0.113.9", 22, anywhere, resolve=resolve)  # any address
    assert pool.check_host_allowed("mapped.test", 22, lan, resolve=resolve)  # ::ffff:10.0.0.1
    for host, networks in (
        ("0.0.0.0", anywhere),  # unspecified: never a server
        ("::", anywhere),
        ("224.0.0.1", anywhere),  # multicast
        ("192.168.0.1", lan),
        ("[fe80::1]", lan),
    ):
        with pytest.raises(pool.HostNotAllowedError):
            pool.check_host_allowed(host, 22, networks, resolve=resolve)
    with pytest.raises(pool.ServerUnreachableError):
        pool.check_host_allowed("nowhere.test", 22, lan, resolve=resolve)
    # idna refuses an empty label: still a clear 422, not a 500
    with pytest.raises(pool.ServerUnreachableError):
        pool.check_host_allowed("a..b", 22, lan)


# --- gunicorn's own errors ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def gunicorn_url(tmp_path_factory, payment_doubles):
    """The web process as the Procfile starts it (its gunicorn config), on loopback."""
    port = _free_port()
    log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "-c",
                "python:app.gunicorn_config",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
                "--no-control-socket",
                "app:create_app()",
            ],
            cwd=REPO,
            env={**os.environ},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            if _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200"):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"gunicorn did not start:\n{log.read_text()[-3000:]}")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _raw(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send ``request`` (from a thread: the server may answer before it has read it all)
    and read the answer."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        return b""

    def send() -> None:
        with contextlib.suppress(OSError):  # the server stopped reading: it answered
            sock.sendall(request)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    chunks: list[bytes] = []
    with sock, contextlib.suppress(OSError):
        while not _complete(b"".join(chunks)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    sender.join(timeout)
    return b"".join(chunks)


def _complete(data: bytes) -> bool:
    if b"\r\n\r\n" not in data:
        return False
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _json_answer(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body)


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(150))
            + b"\r\n",
            431,
            "headers_too_large",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n",
            431,
            "headers_too_large",
        ),
        (b"NOT A REQUEST LINE\r\n\r\n", 400, "bad_request"),
    ],
    ids=["414-uri", "431-count", "431-size", "400-request-line"],
)
def test_gunicorn_errors_are_json(gunicorn_url, request_bytes, status, code):
    answer_status, body = _json_answer(_raw(gunicorn_url, request_bytes))
    assert (answer_status, body["code"]) == (status, code)
    assert body["message"]


def test_a_chunked_body_past_the_limit_is_413_json_behind_gunicorn(gunicorn_url):
    chunk = b"[" + b"1," * 300_000
    body = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    request = (
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + body * 4 + b"0\r\n\r\n"
    )
    status, answer = _json_answer(_raw(gunicorn_url, request))
    assert (status, answer["code"]) == (413, "payload_too_large")
