"""Pool server documents. Requests load into snake_case keys (``data_key`` is the camelCase
wire name) so they map straight onto ``ServerSpec`` / ``update_server`` arguments. The
credential is load-only: no schema here can dump it."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from app.api.admin.schemas import PageArgsSchema
from app.api.validation import RequestSchema
from app.models.server import SERVER_STATES
from app.services.pool import FINGERPRINT_RE, OPERATOR_STATES, PRIVATE_KEY_RE, GatewaySpec

HOST_RE = r"^[A-Za-z0-9_.:\-\[\]]+$"  # DNS name, IPv4 or IPv6 literal; no spaces, no user@
USER_RE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"

_cpu = validate.Range(min=1, max=1024)
_ram = validate.Range(min=1, max=65536)
_disk = validate.Range(min=1, max=1_000_000)


class ServerSchema(Schema):
    """A pool server as operators see it (dumps a ``pool.ServerView``)."""

    id = fields.UUID(attribute="server.id", dump_only=True)
    host = fields.String(attribute="server.host", dump_only=True)
    port = fields.Integer(attribute="server.ssh_port", dump_only=True)
    user = fields.String(attribute="server.ssh_user", dump_only=True)
    authMethod = fields.String(
        attribute="server.auth_method", dump_only=True, metadata={"enum": ["key", "password"]}
    )
    hostKeyFingerprint = fields.String(attribute="server.host_key_fingerprint", dump_only=True)
    cpuCores = fields.Integer(attribute="server.cpu_cores", dump_only=True)
    ramGb = fields.Integer(attribute="server.ram_gb", dump_only=True)
    diskGb = fields.Integer(attribute="server.disk_gb", dump_only=True)
    region = fields.String(attribute="server.region", dump_only=True, allow_none=True)
    label = fields.String(attribute="server.label", dump_only=True, allow_none=True)
    state = fields.String(
        attribute="server.state", dump_only=True, metadata={"enum": list(SERVER_STATES)}
    )
    consecutiveFailures = fields.Integer(attribute="server.consecutive_failures", dump_only=True)
    lastCheckedAt = fields.DateTime(
        attribute="server.last_checked_at", dump_only=True, allow_none=True
    )
    lastLatencyMs = fields.Integer(
        attribute="server.last_latency_ms", dump_only=True, allow_none=True
    )
    lastError = fields.String(attribute="server.last_error", dump_only=True, allow_none=True)
    gateway = fields.Method(
        "_gateway",
        dump_only=True,
        allow_none=True,
        metadata={"description": "Bastion the server is reached through (no credential)"},
    )
    allocatedBoxId = fields.UUID(
        attribute="allocated_box_id",
        dump_only=True,
        allow_none=True,
        metadata={"description": "The live (not terminated) box on this server, if any"},
    )
    cloudProviderId = fields.UUID(
        attribute="server.cloud_provider_id",
        dump_only=True,
        allow_none=True,
        metadata={"description": "The cloud provider that created it (None: added by hand)"},
    )
    cloudNodeId = fields.String(attribute="server.cloud_node_id", dump_only=True, allow_none=True)
    cloudSize = fields.String(attribute="server.cloud_size", dump_only=True, allow_none=True)
    priceMonthlyCents = fields.Integer(
        attribute="server.price_monthly_cents", dump_only=True, allow_none=True
    )
    idleSince = fields.DateTime(attribute="server.idle_since", dump_only=True, allow_none=True)
    createdAt = fields.DateTime(attribute="server.created_at", dump_only=True)

    def _gateway(self, view: Any) -> dict[str, Any] | None:
        server = view.server
        if server.gateway_host is None:
            return None
        return {
            "host": server.gateway_host,
            "port": server.gateway_port,
            "user": server.gateway_user,
            "authMethod": server.gateway_auth_method,
            "hostKeyFingerprint": server.gateway_host_key_fingerprint,
        }


class EnvironmentChecksSchema(Schema):
    """What the admission preflight found (``pool.EnvironmentChecks``)."""

    skipped = fields.Boolean(
        dump_only=True, metadata={"description": "true: added with skipChecks"}
    )
    happyPath = fields.String(attribute="happy_path", dump_only=True, allow_none=True)
    happyVersion = fields.String(
        attribute="happy_version",
        dump_only=True,
        metadata={"description": "happy-coder version from its package.json, or unknown"},
    )
    happyServerUrl = fields.String(
        attribute="happy_server_url",
        dump_only=True,
        allow_none=True,
        metadata={"description": "The Happy server the server's box daemons will use"},
    )
    happyServerUrlSource = fields.String(
        attribute="happy_server_url_source",
        dump_only=True,
        allow_none=True,
        metadata={
            "enum": ["login", "backend"],
            "description": "login: HAPPY_SERVER_URL of the login environment; backend: "
            "the login has none, box users get the backend's",
        },
    )
    happyServerReach = fields.String(
        attribute="happy_server_reach",
        dump_only=True,
        allow_none=True,
        metadata={"description": "ok, unreachable: <error>, or unknown"},
    )
    notes = fields.List(fields.String(), dump_only=True)


class ServerAddedSchema(ServerSchema):
    """A server just added, with its admission preflight."""

    checks = fields.Nested(EnvironmentChecksSchema, dump_only=True)


class ServerPageSchema(Schema):
    items = fields.List(fields.Nested(ServerSchema), required=True)
    total = fields.Integer(required=True)


class ServerListArgsSchema(PageArgsSchema):
    state = fields.String(validate=validate.OneOf(SERVER_STATES))


class GatewayCreateSchema(RequestSchema):
    """A bastion (SSH gateway): its own login and its host key, which must be given."""

    host = fields.String(
        required=True, validate=[validate.Length(min=1, max=255), validate.Regexp(HOST_RE)]
    )
    port = fields.Integer(load_default=22, validate=validate.Range(min=1, max=65535))
    user = fields.String(required=True, validate=validate.Regexp(USER_RE))
    password = fields.String(load_only=True, validate=validate.Length(min=1, max=1024))
    private_key = fields.String(
        data_key="privateKey", load_only=True, validate=validate.Length(min=1, max=32768)
    )
    host_key_fingerprint = fields.String(
        data_key="hostKeyFingerprint",
        required=True,
        validate=validate.Regexp(FINGERPRINT_RE, error="Must look like SHA256:<base64>."),
    )

    @validates_schema(skip_on_field_errors=False)
    def _one_credential(self, data: dict[str, Any], **_: Any) -> None:
        if ("password" in data) == ("private_key" in data):
            raise ValidationError("Give exactly one of password and privateKey.", "password")
        if "private_key" in data and not PRIVATE_KEY_RE.search(data["private_key"]):
            raise ValidationError("Not a PEM or OpenSSH private key.", "privateKey")

    @post_load
    def _spec(self, data: dict[str, Any], **_: Any) -> GatewaySpec:
        return GatewaySpec(**data)


class ServerCreateSchema(RequestSchema):
    host = fields.String(
        required=True, validate=[validate.Length(min=1, max=255), validate.Regexp(HOST_RE)]
    )
    port = fields.Integer(load_default=22, validate=validate.Range(min=1, max=65535))
    user = fields.String(required=True, validate=validate.Regexp(USER_RE))
    password = fields.String(load_only=True, validate=validate.Length(min=1, max=1024))
    private_key = fields.String(
        data_key="privateKey",
        load_only=True,
        validate=validate.Length(min=1, max=32768),
        metadata={"description": "PEM or OpenSSH private key text (unencrypted)"},
    )
    host_key_fingerprint = fields.String(
        data_key="hostKeyFingerprint",
        validate=validate.Regexp(FINGERPRINT_RE, error="Must look like SHA256:<base64>."),
        metadata={"description": "Expected host key; omitted = pin the key the host shows"},
    )
    cpu_cores = fields.Integer(data_key="cpuCores", required=True, validate=_cpu)
    ram_gb = fields.Integer(data_key="ramGb", required=True, validate=_ram)
    disk_gb = fields.Integer(data_key="diskGb", required=True, validate=_disk)
    region = fields.String(allow_none=True, validate=validate.Length(max=64))
    label = fields.String(allow_none=True, validate=validate.Length(max=128))
    gateway = fields.Nested(
        GatewayCreateSchema,
        allow_none=True,
        metadata={"description": "Reach the server through this SSH bastion (ProxyJump)"},
    )
    skip_checks = fields.Boolean(
        data_key="skipChecks",
        load_default=False,
        metadata={
            "description": "Skip the environment preflight (root/sudo, `happy` on the PATH, "
            "route to the Happy server). The host key is still pinned and the login still "
            "proven. Logged as a warning."
        },
    )

    @validates_schema(skip_on_field_errors=False)
    def _one_credential(self, data: dict[str, Any], **_: Any) -> None:
        has_password, has_key = "password" in data, "private_key" in data
        if has_password and has_key:
            raise ValidationError("Give either password or privateKey, not both.", "password")
        if not has_password and not has_key:
            message = "One of password and privateKey is required."
            raise ValidationError({"password": [message], "privateKey": [message]})
        if has_key and not PRIVATE_KEY_RE.search(data["private_key"]):
            raise ValidationError("Not a PEM or OpenSSH private key.", "privateKey")


class ServerUpdateSchema(RequestSchema):
    label = fields.String(allow_none=True, validate=validate.Length(max=128))
    region = fields.String(allow_none=True, validate=validate.Length(max=64))
    cpu_cores = fields.Integer(data_key="cpuCores", validate=_cpu)
    ram_gb = fields.Integer(data_key="ramGb", validate=_ram)
    disk_gb = fields.Integer(data_key="diskGb", validate=_disk)
    state = fields.String(
        validate=validate.OneOf(OPERATOR_STATES),
        metadata={"description": "Operator states; `allocated` is set only by allocation"},
    )
