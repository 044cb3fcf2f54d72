"""Cloud provider documents. Credentials are load-only: no schema here can dump them."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from app.api.admin.schemas import PageArgsSchema
from app.api.validation import RequestSchema
from app.models.cloud import CLOUD_DRIVERS

INT32_MAX = 2**31 - 1
NAME_RE = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
USER_RE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"


class SizeRuleSchema(RequestSchema):
    size = fields.String(required=True, validate=validate.Length(min=1, max=64))
    cpu = fields.Integer(required=True, validate=validate.Range(min=1, max=1024))
    ramGb = fields.Integer(required=True, validate=validate.Range(min=1, max=65536))
    diskGb = fields.Integer(required=True, validate=validate.Range(min=1, max=1_000_000))


class CloudProviderSchema(Schema):
    """A provider as operators see it (dumps ``cloud_providers.ProviderView``)."""

    id = fields.UUID(attribute="provider.id", dump_only=True)
    name = fields.String(attribute="provider.name", dump_only=True)
    driver = fields.String(attribute="provider.driver", dump_only=True)
    region = fields.String(attribute="provider.region", dump_only=True)
    boxRegion = fields.String(
        attribute="provider.box_region",
        dump_only=True,
        allow_none=True,
        metadata={"description": "The VibeBox region (REGIONS) its servers serve"},
    )
    image = fields.String(attribute="provider.image", dump_only=True)
    planSizes = fields.Dict(attribute="provider.plan_sizes", dump_only=True)
    sizeRules = fields.List(fields.Dict(), attribute="provider.size_rules", dump_only=True)
    sizePrices = fields.Dict(attribute="provider.size_prices", dump_only=True)
    warmSize = fields.String(attribute="provider.warm_size", dump_only=True, allow_none=True)
    sshPort = fields.Integer(attribute="provider.ssh_port", dump_only=True)
    loginUser = fields.String(attribute="provider.login_user", dump_only=True)
    apiBaseUrl = fields.String(attribute="provider.api_base_url", dump_only=True, allow_none=True)
    warmTarget = fields.Integer(attribute="provider.warm_target", dump_only=True)
    maxServers = fields.Integer(attribute="provider.max_servers", dump_only=True)
    monthlyBudgetCents = fields.Integer(
        attribute="provider.monthly_budget_cents", dump_only=True, allow_none=True
    )
    idleRetireSeconds = fields.Integer(attribute="provider.idle_retire_seconds", dump_only=True)
    bootSeconds = fields.Integer(attribute="provider.boot_seconds", dump_only=True)
    sshPublicKey = fields.String(attribute="provider.ssh_public_key", dump_only=True)
    sshKeyId = fields.String(attribute="provider.ssh_key_id", dump_only=True, allow_none=True)
    enabled = fields.Boolean(attribute="provider.enabled", dump_only=True)
    servers = fields.Integer(
        dump_only=True, metadata={"description": "Servers of this provider that exist now"}
    )
    createdAt = fields.DateTime(attribute="provider.created_at", dump_only=True)


class CloudProviderPageSchema(Schema):
    items = fields.List(fields.Nested(CloudProviderSchema), required=True)
    total = fields.Integer(required=True)


class CloudProviderListArgsSchema(PageArgsSchema):
    pass


class _ProviderFields(RequestSchema):
    region = fields.String(validate=validate.Length(min=1, max=64))
    box_region = fields.String(
        data_key="boxRegion",
        allow_none=True,
        validate=validate.Length(min=1, max=64),
        metadata={
            "description": "The VibeBox region (one of REGIONS) the servers serve; "
            "null: boxes of any region (regions off)"
        },
    )
    image = fields.String(validate=validate.Length(min=1, max=128))
    plan_sizes = fields.Dict(
        data_key="planSizes",
        keys=fields.String(validate=validate.Length(min=1, max=32)),
        values=fields.String(validate=validate.Length(min=1, max=64)),
        metadata={"description": "Plan id -> size slug"},
    )
    size_rules = fields.List(
        fields.Nested(SizeRuleSchema),
        data_key="sizeRules",
        metadata={"description": "Smallest size whose resources cover the plan's"},
    )
    size_prices = fields.Dict(
        data_key="sizePrices",
        keys=fields.String(validate=validate.Length(min=1, max=64)),
        values=fields.Integer(validate=validate.Range(min=0, max=INT32_MAX)),
        metadata={"description": "Size slug -> monthly price in cents (budget cap)"},
    )
    warm_size = fields.String(
        data_key="warmSize", allow_none=True, validate=validate.Length(max=64)
    )
    ssh_port = fields.Integer(data_key="sshPort", validate=validate.Range(min=1, max=65535))
    login_user = fields.String(data_key="loginUser", validate=validate.Regexp(USER_RE))
    api_base_url = fields.Url(
        data_key="apiBaseUrl",
        allow_none=True,
        require_tld=False,
        schemes={"http", "https"},
        validate=validate.Length(max=255),
    )
    warm_target = fields.Integer(data_key="warmTarget", validate=validate.Range(min=0, max=1000))
    max_servers = fields.Integer(data_key="maxServers", validate=validate.Range(min=0, max=10000))
    monthly_budget_cents = fields.Integer(
        data_key="monthlyBudgetCents",
        allow_none=True,
        validate=validate.Range(min=0, max=INT32_MAX),
    )
    idle_retire_seconds = fields.Integer(
        data_key="idleRetireSeconds", validate=validate.Range(min=0, max=INT32_MAX)
    )
    boot_seconds = fields.Integer(data_key="bootSeconds", validate=validate.Range(min=1, max=3600))
    enabled = fields.Boolean()
    credentials = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        load_only=True,
        metadata={"description": '{"key": token} or {"key", "secret"}; never returned'},
    )


class CloudProviderCreateSchema(_ProviderFields):
    name = fields.String(required=True, validate=validate.Regexp(NAME_RE))
    driver = fields.String(required=True, validate=validate.OneOf(CLOUD_DRIVERS))
    region = fields.String(required=True, validate=validate.Length(min=1, max=64))
    image = fields.String(required=True, validate=validate.Length(min=1, max=128))
    credentials = fields.Dict(
        keys=fields.String(), values=fields.String(), load_only=True, required=True
    )

    @validates_schema
    def _sizes(self, data: dict[str, Any], **_: Any) -> None:
        if not data.get("plan_sizes") and not data.get("size_rules"):
            raise ValidationError("Give planSizes or sizeRules.", "planSizes")


class CloudProviderUpdateSchema(_ProviderFields):
    pass
