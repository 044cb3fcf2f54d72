from __future__ import annotations

from marshmallow import EXCLUDE, RAISE, Schema, fields, validate

from app.api.validation import RequestSchema


class ProgressSchema(Schema):
    done = fields.Integer(required=True)
    total = fields.Integer(required=True)


class TimelineEntrySchema(Schema):
    """Dumps a ``ProvisioningStep``."""

    name = fields.String(required=True)
    state = fields.String(required=True)
    attempts = fields.Integer(required=True)
    startedAt = fields.DateTime(allow_none=True, attribute="started_at")
    finishedAt = fields.DateTime(allow_none=True, attribute="finished_at")
    lastError = fields.String(allow_none=True, attribute="last_error")


class BoxEventSchema(Schema):
    """Dumps a ``BoxEvent``."""

    at = fields.DateTime(required=True, attribute="created_at")
    kind = fields.String(
        required=True,
        metadata={
            "description": "start, stop, restart, daemon_down, daemon_restarted, "
            "daemon_gave_up, daemon_recovered"
        },
    )
    message = fields.String(required=True)


class ConnectionInfoSchema(Schema):
    """Dumps a ``status_document.ConnectionInfo``."""

    happyWebUrl = fields.String(required=True, attribute="happy_web_url")


class VibeBoxSchema(Schema):
    """The owner's status document: dumps a ``status_document.BoxStatusView``."""

    id = fields.UUID(required=True, attribute="box.id")
    status = fields.String(required=True, attribute="box.status")
    step = fields.String(
        allow_none=True, attribute="box.step", metadata={"description": "Current or next step"}
    )
    progress = fields.Nested(ProgressSchema, required=True)
    attempts = fields.Integer(required=True, attribute="box.attempts")
    lastError = fields.String(allow_none=True, attribute="box.last_error")
    nextRetryAt = fields.DateTime(allow_none=True, attribute="box.next_retry_at")
    planId = fields.String(required=True, attribute="box.plan_id")
    region = fields.String(
        required=True,
        allow_none=True,
        attribute="box.region",
        metadata={
            "description": "Region the box runs in (its servers and Happy server); "
            "null when regions are not configured"
        },
    )
    createdAt = fields.DateTime(required=True, attribute="box.created_at")
    updatedAt = fields.DateTime(required=True, attribute="box.updated_at")
    action = fields.String(
        allow_none=True,
        attribute="box.action",
        metadata={"description": "The owner's control action in progress, or the one that failed"},
    )
    timeline = fields.List(fields.Nested(TimelineEntrySchema), required=True, attribute="box.steps")
    events = fields.List(
        fields.Nested(BoxEventSchema),
        required=True,
        metadata={"description": "What happened to the box besides its steps, oldest first"},
    )
    degraded = fields.Boolean(
        required=True,
        attribute="box.degraded",
        metadata={"description": "The box's server fails health checks or its daemon is down"},
    )
    degradedSince = fields.DateTime(allow_none=True, attribute="box.degraded_since")
    degradedReason = fields.String(allow_none=True, attribute="box.degraded_reason")
    connectionInfo = fields.Nested(
        ConnectionInfoSchema, allow_none=True, attribute="connection_info"
    )


class VibeBoxEnvelopeSchema(Schema):
    vibeBox = fields.Nested(VibeBoxSchema, required=True)


class VibeBoxListSchema(Schema):
    vibeBoxes = fields.List(fields.Nested(VibeBoxSchema), required=True)


class WaitArgsSchema(RequestSchema):
    """Query of ``GET /api/vibeboxes/<id>``."""

    class Meta:
        unknown = EXCLUDE  # cache busters and the like are ignored, as before

    wait = fields.Integer(
        validate=validate.Range(min=1, max=30),
        metadata={
            "description": "Long poll: with `If-None-Match`, wait up to this many seconds "
            "(1-30) for the box to change; 304 if it did not"
        },
    )


class ConnectRequestSchema(RequestSchema):
    """Optional body of ``POST /api/vibeboxes/<id>/connect``."""

    class Meta:
        unknown = RAISE

    deviceLink = fields.String(
        metadata={
            "description": "The `happy:///account?<key>` link (QR code) a Happy app shows under "
            '"Login with mobile app" / "Link or restore account". Sent: that device is signed '
            'in to your Happy account and the answer is `{"linked": true}`. Omitted (or no '
            "body): the answer is the web URL and the secret key.",
            "example": "happy:///account?fY5D6e5FneF8fzl5omztEbWtXQk7bkz0tnOUksJB8Fk",
        }
    )


class ConnectResponseSchema(Schema):
    """Without ``deviceLink``: ``happyWebUrl`` and ``secretKey`` (dumps a
    ``connect.ConnectInfo``); with it: ``linked``."""

    happyWebUrl = fields.String(
        attribute="happy_web_url",
        metadata={
            "description": "Happy web app URL carrying the credentials, for clients that embed "
            "it (the released Happy web app does not read them). Keep it private."
        },
    )
    secretKey = fields.String(
        attribute="secret_key",
        metadata={
            "description": "Your Happy account's secret key in the Happy app's backup format "
            "(XXXXX-XXXXX-...): paste it into the Happy app's Restore account (\"Restore with "
            'Secret Key Instead"). Anyone holding it owns the account: never store or log it.',
            "example": "AAAQE-AYEAU-DAOCA-JBIFQ-YDIOB-4IBCE-QTCQK-RMFYY-DENBW-HA5DY-PQ",
        },
    )
    linked = fields.Boolean(
        metadata={"description": "True: the device of `deviceLink` is now signed in."}
    )


class ProvisionRequestSchema(RequestSchema):
    userId = fields.UUID(required=True)
    planId = fields.String(required=True, validate=validate.Length(min=1, max=32))
    region = fields.String(
        validate=validate.Length(min=1, max=32),
        metadata={"description": "One of the plan's regions; default: the plan's default"},
    )


class ControlRequestSchema(RequestSchema):
    action = fields.String(required=True, validate=validate.OneOf(("start", "stop", "restart")))


class ControlResponseSchema(Schema):
    status = fields.String(required=True)
    vibeBox = fields.Nested(VibeBoxSchema, required=True)
