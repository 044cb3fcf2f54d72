"""The baselines of the HTTP benchmarks (``stack.py`` P3, P4): a bare Flask + SQLAlchemy app
served by the same gunicorn command and settings as the web process
(``gunicorn -c python:app.gunicorn_config --workers WEB_CONCURRENCY bench.bare_app:app``).

- ``GET /bare/vibeboxes/<id>``: the least a status poll must do: decode the bearer token
  with PyJWT (same secret and algorithm as the API) and one primary-key SELECT.
- ``POST /bare/webhook/dev``: the least webhook intake must do: check the dev provider's HMAC
  (same secret and message as ``DevProvider.sign``) and one ``INSERT ... ON CONFLICT DO
  NOTHING`` into ``bench_webhook_events`` (created by ``stack.py``).

Reads DATABASE_URL, and the API's JWT and secret keys through ``app.config`` (so both sides
use the same values).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import uuid
from typing import Any

import jwt
from flask import Flask, Response, request
from sqlalchemy import create_engine, text

from app.config import Settings, normalize_database_url

_settings = Settings.from_env()
_engine = create_engine(normalize_database_url(os.environ["DATABASE_URL"]))
_jwt_secret = _settings.jwt_secret_key
_hmac_secret = _settings.secret_key.encode()

app = Flask(__name__)


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


@app.get("/bare/vibeboxes/<uuid:box_id>")
def status(box_id: uuid.UUID) -> Response:
    header = request.headers.get("Authorization", "")
    try:
        claims = jwt.decode(header.removeprefix("Bearer "), _jwt_secret, algorithms=["HS256"])
    except jwt.PyJWTError:
        return _json({"code": "unauthorized"}, 401)
    with _engine.connect() as conn:
        row = conn.execute(
            text("SELECT id, user_id, status, step FROM vibeboxes WHERE id = :id"), {"id": box_id}
        ).first()
    if row is None or str(row.user_id) != claims.get("sub"):
        return _json({"code": "not_found"}, 404)
    return _json({"vibeBox": {"id": str(row.id), "status": row.status, "step": row.step}})


@app.post("/bare/webhook/dev")
def webhook() -> Response:
    try:
        data = json.loads(request.get_data())
        order_id = str(uuid.UUID(str(data["orderId"])))
        signature = str(data["signature"])
    except (ValueError, KeyError, TypeError):
        return _json({"code": "bad_request"}, 400)
    expected = hmac.new(_hmac_secret, f"dev-checkout:{order_id}".encode(), hashlib.sha256)
    if not hmac.compare_digest(signature, expected.hexdigest()):
        return _json({"code": "bad_signature"}, 400)
    with _engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO bench_webhook_events (provider, event_id, order_id)"
                " VALUES ('dev', :event_id, :order_id) ON CONFLICT DO NOTHING"
            ),
            {"event_id": f"dev:{order_id}", "order_id": order_id},
        )
    return _json({"received": True})
