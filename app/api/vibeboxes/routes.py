"""A user's VibeBoxes: status polling (with ETag), connect, control."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from flask import Response, current_app, jsonify, request
from flask.views import MethodView
from flask_jwt_extended import current_user, jwt_required
from flask_smorest import Blueprint
from flask_smorest.exceptions import NotModified
from werkzeug.exceptions import UnsupportedMediaType

from app import get_settings
from app.api.vibeboxes.documents import RenderedDocuments
from app.api.vibeboxes.schemas import (
    ConnectRequestSchema,
    ConnectResponseSchema,
    ControlRequestSchema,
    ControlResponseSchema,
    VibeBoxEnvelopeSchema,
    VibeBoxListSchema,
    WaitArgsSchema,
)
from app.config import Settings
from app.db import autocommit_reads, db_session
from app.errors import LongPollBusyError
from app.extensions import limiter
from app.integrations.happy import HappyClient
from app.outage import revocation_unverified
from app.services.boxes import box_watch, connect, engine, provisioning, status_document

blp = Blueprint("vibeboxes", __name__, url_prefix="/api/vibeboxes", description="VibeBoxes")
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}]
# Running boxes' documents carry the connect URL: never in shared caches; revalidate by ETag.
PRIVATE = {"Cache-Control": "private, no-cache"}
NO_STORE = {"Cache-Control": "no-store"}
CONNECT_ENDPOINT = "vibeboxes.VibeBoxConnect"

_happy_clients = threading.local()  # per thread: a requests.Session is not thread-safe
_rendered = RenderedDocuments()  # per process: the last document of each polled box
_envelope_schema = VibeBoxEnvelopeSchema()


def happy_client(settings: Settings, region: str | None = None) -> HappyClient:
    """The API process's Happy client for ``region``'s Happy server (one HTTP session per
    thread and server URL), with the timeouts the workers use."""
    timeout = settings.provisioning.happy_timeout_seconds
    key = (settings.happy_url_for(region), timeout)
    cache: dict[tuple[str, float], HappyClient] = _happy_clients.__dict__.setdefault("by_url", {})
    client = cache.get(key)
    if client is None:
        client = HappyClient(key[0], timeout=(min(3.05, timeout), timeout))
        cache[key] = client
    return client


def _status_document(session: Any, settings: Settings, box: Any) -> status_document.BoxStatusView:
    """The polled status; without ``connectionInfo`` (credentials) when the session token
    could not be checked against the blocklist (Redis outage, see app.outage): then the
    credentials are not even decrypted."""
    return status_document.describe_box(
        session, settings, box, with_connection_info=not revocation_unverified()
    )


def status_limit() -> str:
    """STATUS_RATELIMIT: per client address, for the status polls (instead of the default)."""
    return get_settings().status_ratelimit


def _box_envelope(box_id: uuid.UUID, owner_id: uuid.UUID) -> dict[str, Any]:
    session = autocommit_reads(db_session())
    box = provisioning.get_box(session, box_id, owner_id=owner_id)
    return {"vibeBox": _status_document(session, get_settings(), box)}


def _rendered_envelope(box_id: uuid.UUID, owner_id: uuid.UUID, version: list[Any]) -> Response:
    """The JSON answer for ``version`` of the box: rendered once per version in this process
    (``documents.RenderedDocuments``), the same bytes the response schema would give."""
    body = _rendered.get(box_id, version)
    if body is None:
        dumped = _envelope_schema.dump(_box_envelope(box_id, owner_id))
        response = jsonify(dumped)
        _rendered.put(box_id, version, response.get_data())
        return response
    return current_app.response_class(body, mimetype="application/json")


def _version(box_id: uuid.UUID, owner_id: uuid.UUID) -> list[Any]:
    """What the ETag of the box's document hashes (``status_document.box_version``, plus whether
    this answer leaves out the credentials): read before any document is built. Reads run
    without a transaction (``autocommit_reads``): a poll is one statement when nothing
    changed, and its connection goes back to the pool right after it (a poll that holds it
    to the end of the request makes the pool open and close overflow connections under
    load; a changed box's document is read with the next checkout)."""
    try:
        session = autocommit_reads(db_session())
        return [
            *status_document.box_version(session, box_id, owner_id=owner_id),
            revocation_unverified(),
        ]
    finally:
        db_session.remove()


def _wait_for_change(
    box_id: uuid.UUID, owner_id: uuid.UUID, seen: list[Any], seconds: int
) -> list[Any] | None:
    """The box's new version once it changes, or None after ``seconds`` (or at once while
    Redis is down, app/outage.py). 429 ``long_poll_busy`` when this process already holds
    WEB_MAX_WAITERS long polls."""

    def read() -> list[Any]:
        return _version(box_id, owner_id)  # no connection or transaction held while waiting

    watcher: box_watch.BoxWatcher = current_app.extensions["vibebox.box_watcher"]
    try:
        return watcher.wait_for_change(box_id, read, lambda now: now == seen, float(seconds))
    except box_watch.WaitersExhaustedError:
        raise LongPollBusyError(
            "Too many clients are waiting on this server; poll without wait for now",
            retry_after=max(int(watcher.recheck_seconds), 1),
        ) from None


@blp.after_request
def _connect_is_never_stored(response: Response) -> Response:
    """Every answer of the connect route (errors too) is ``no-store``: it carries credentials."""
    if request.endpoint == CONNECT_ENDPOINT:
        response.headers["Cache-Control"] = "no-store"
    return response


@blp.after_request
def _not_modified_names_its_etag(response: Response) -> Response:
    """A 304 carries the ETag it confirms (RFC 9110), so a long-poll loop can always send the
    last ETag it got; with one ETag in If-None-Match that is the current one."""
    if response.status_code == 304 and "ETag" not in response.headers:
        tags = request.if_none_match.as_set()
        if len(tags) == 1:
            response.set_etag(next(iter(tags)))
        response.headers.update(PRIVATE)
    return response


@blp.route("")
class VibeBoxes(MethodView):
    decorators = [limiter.limit(status_limit, override_defaults=True), jwt_required()]

    @blp.etag
    @blp.response(200, VibeBoxListSchema)
    @blp.doc(security=SECURITY)
    def get(self):
        """List my VibeBoxes with their status"""
        session, settings = db_session(), get_settings()
        boxes = provisioning.list_boxes(session, current_user.id)
        documents = [_status_document(session, settings, b) for b in boxes]
        return {"vibeBoxes": documents}, 200, PRIVATE


@blp.route("/<uuid:box_id>")
class VibeBoxDetail(MethodView):
    decorators = [limiter.limit(status_limit, override_defaults=True), jwt_required()]

    @blp.etag
    @blp.arguments(WaitArgsSchema, location="query", as_kwargs=True)
    @blp.response(200, VibeBoxEnvelopeSchema)
    @blp.alt_response(404, description="No such box (or not yours)")
    @blp.alt_response(
        429,
        description="`rate_limited` (STATUS_RATELIMIT), or `long_poll_busy`: this server "
        "holds its maximum of waiting long polls (poll without `wait` after `Retry-After`)",
    )
    @blp.doc(security=SECURITY)
    def get(self, box_id: uuid.UUID, wait: int | None = None):
        """One VibeBox: status, step, progress, timeline; connection info once running.

        Send `If-None-Match` with the last ETag to get 304 while nothing changed. With
        `?wait=N` (1-30 s) and `If-None-Match`, the answer waits until the box changes
        (200 with the new document and ETag) or N seconds pass (304, same ETag)."""
        owner_id = current_user.id
        version = _version(box_id, owner_id)
        try:
            blp.set_etag(version)  # 304 when the client has this version: no document built
        except NotModified:
            changed = _wait_for_change(box_id, owner_id, version, wait) if wait else None
            if changed is None:
                raise
            version = changed
            blp.set_etag(version)
        return _rendered_envelope(box_id, owner_id, version), 200, PRIVATE


@blp.route("/<uuid:box_id>/connect")
class VibeBoxConnect(MethodView):
    decorators = [jwt_required()]

    @blp.arguments(ConnectRequestSchema, required=False)
    @blp.response(200, ConnectResponseSchema)
    @blp.alt_response(404, description="No such box (or not yours)")
    @blp.alt_response(409, description="The box is not running (`vibebox_not_running`)")
    @blp.alt_response(415, description="A body that is not JSON")
    @blp.alt_response(422, description="Malformed `deviceLink` or unknown fields")
    @blp.alt_response(
        502,
        description="Happy refused the link (`happy_link_failed`, e.g. no pending request for "
        "that device) or could not be reached (`happy_unavailable`)",
    )
    @blp.doc(security=SECURITY)
    def post(self, data: dict[str, Any], box_id: uuid.UUID):
        """Get into the box's Happy account from the Happy apps (answers are credentials)

        No body (or `{}`): `happyWebUrl` (embedded web app) and `secretKey` (the Happy app's
        "Restore with Secret Key"). `{"deviceLink": "happy:///account?..."}`: sign in the
        Happy app that shows that link (its "Login with mobile app" / "Link or restore
        account" screen); answers `{"linked": true}`."""
        if request.content_length and not request.is_json:  # would be silently ignored
            raise UnsupportedMediaType("Send the body as application/json (or no body).")
        session, settings = db_session(), get_settings()
        box = provisioning.get_box(session, box_id, owner_id=current_user.id)
        if "deviceLink" in data:
            connect.link_device(
                session, settings, box, data["deviceLink"], happy_client(settings, box.region)
            )
            return {"linked": True}, 200, NO_STORE
        return connect.connect_info(session, settings, box), 200, NO_STORE


@blp.route("/<uuid:box_id>/control")
class VibeBoxControl(MethodView):
    decorators = [jwt_required()]

    @blp.arguments(ControlRequestSchema)
    @blp.response(202, ControlResponseSchema)
    @blp.alt_response(409, description="Not allowed in the current status, or busy")
    @blp.doc(security=SECURITY)
    def post(self, data: dict[str, Any], box_id: uuid.UUID):
        """Start, stop or restart a box; poll the box until it is running or stopped"""
        session = db_session()
        engine.request_action(session, box_id, owner_id=current_user.id, action=data["action"])
        db_session.commit()
        box = provisioning.get_box(session, box_id)
        document = status_document.describe_box(session, get_settings(), box)
        return {"status": box.status, "vibeBox": document}
