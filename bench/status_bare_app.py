"""The P3 baseline: a bare Flask + SQLAlchemy endpoint that decodes the bearer token with
PyJWT and reads one box by primary key (``bench/status_poll.py`` serves it with the same
gunicorn config as the API)."""

from __future__ import annotations

import os
import uuid

import jwt
from flask import Flask, abort, jsonify, request
from sqlalchemy import create_engine, text

from app.config import normalize_database_url

app = Flask(__name__)
_engine = create_engine(normalize_database_url(os.environ["DATABASE_URL"]), pool_size=5)
_secret = os.environ["JWT_SECRET_KEY"]
_query = text("SELECT id, status, step, attempts, updated_at FROM vibeboxes WHERE id = :id")


@app.get("/bare/<uuid:box_id>")
def bare(box_id: uuid.UUID):  # type: ignore[no-untyped-def]
    token = (request.headers.get("Authorization") or "").removeprefix("Bearer ")
    try:
        claims = jwt.decode(token, _secret, algorithms=["HS256"])
    except jwt.PyJWTError:
        abort(401)
    with _engine.connect() as conn:
        row = conn.execute(_query, {"id": box_id}).one_or_none()
    if row is None:
        abort(404)
    return jsonify(
        {
            "sub": claims["sub"],
            "id": str(row.id),
            "status": row.status,
            "step": row.step,
            "attempts": row.attempts,
            "updatedAt": row.updated_at.isoformat(),
        }
    )
