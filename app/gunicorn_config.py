"""gunicorn settings of the web process (``gunicorn -c python:app.gunicorn_config``).

gunicorn answers some requests itself, before the Flask app sees them: a request line longer
than ``limit_request_line`` (414), more than ``limit_request_fields`` headers or one longer
than ``limit_request_field_size`` (431), and a request it cannot parse (400: bad request line,
method, HTTP version, header or chunk framing; 501 for an unsupported transfer coding). Its
own answers are HTML; here they get the API's JSON error shape instead,
``{"code", "message"}`` with the codes of ``app.api.errors.HTTP_CODES`` (``uri_too_long``,
``headers_too_large``, ``bad_request``, ...), by replacing the one function gunicorn writes
them with (``gunicorn.util.write_error``) in each worker.

Workers are ``gthread``: each of the ``--workers`` processes (WEB_CONCURRENCY) serves
WEB_THREADS requests at once, so a long poll (``GET /api/vibeboxes/<id>?wait=N``) holds one
thread, not a whole process; at most WEB_MAX_WAITERS threads per process wait (README, API).
"""

from __future__ import annotations

import json
from typing import Any

from app.config import web_threads

worker_class = "gthread"
threads = web_threads()

# gunicorn's defaults, stated so that the README's numbers are the ones in force.
limit_request_line = 4094  # bytes of "METHOD /path?query HTTP/1.1"
limit_request_fields = 100  # header count
limit_request_field_size = 8190  # bytes of one header line


def json_error(status_int: int, reason: str, mesg: str) -> bytes:
    """The raw HTTP response gunicorn sends for an error it answers itself."""
    from app.api.errors import HTTP_CODES

    body = json.dumps(
        {"code": HTTP_CODES.get(status_int, "error"), "message": mesg or reason}
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """Drop-in for ``gunicorn.util.write_error`` (same signature), writing JSON."""
    from gunicorn import util

    util.write_nonblock(sock, json_error(status_int, reason, mesg))


def post_worker_init(worker: Any) -> None:
    from gunicorn import util

    util.write_error = write_json_error


def child_exit(server: Any, worker: Any) -> None:
    """A gunicorn worker that exits leaves its counters; prometheus_client drops its live
    gauges (multiprocess mode)."""
    from app.config import prometheus_multiproc_dir

    if prometheus_multiproc_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
