"""Unbound extension objects; ``create_app`` binds them."""

from __future__ import annotations

from typing import Any

import redis
from flask import request
from flask_jwt_extended import JWTManager
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from app.api.openapi import ErrorResponsesPlugin, VibeBoxApi

api = VibeBoxApi(spec_kwargs={"extra_plugins": [ErrorResponsesPlugin()]})
jwt = JWTManager()


def _rate_limit_key() -> str:
    # Behind proxies set TRUSTED_PROXIES (ProxyFix) so remote_addr is the client's address.
    return get_remote_address() or request.remote_addr or "unknown"


limiter = Limiter(key_func=_rate_limit_key)


_redis_clients: dict[str, Any] = {}


def redis_client_options() -> dict[str, Any]:
    """Options of every Redis client of the API (ours and the rate limiter's storage).

    Short connect timeout and a single quick retry: the retry reconnects a pooled connection
    that a Redis restart closed, and while Redis is down a request learns it in milliseconds
    instead of sitting in redis-py's default backoff (3 retries, up to ~14 s).
    """
    return {
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1),
    }


def get_redis(url: str | None = None) -> redis.Redis:
    """A shared Redis client (connection pool) for the given URL, per process."""
    if url is None:
        from app import get_settings

        url = get_settings().redis_url
    client = _redis_clients.get(url)
    if client is None:
        client = redis.Redis.from_url(url, **redis_client_options())
        _redis_clients[url] = client
    return client
