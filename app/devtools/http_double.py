"""DEVELOPMENT TOOL: the threaded HTTP server lifecycle shared by the local service doubles
(the development Happy server here, the payment doubles of the tests).

Every double (Happy, Stripe, WeChat Pay, Alipay) is a real HTTP server on 127.0.0.1 run by a
daemon thread, so the code under test, a Celery worker process or an SSH box reaches it as it
would reach the real service. :class:`ThreadedHTTPDouble` owns that lifecycle; a double adds
its own state, fault switches and helpers and supplies its request handler class::

    class MyDouble(ThreadedHTTPDouble):
        _thread_name = "my-double"

        def _handler_class(self) -> type[BaseHTTPRequestHandler]:
            return _handler_for(self)

    with MyDouble() as double:
        double.url

:class:`DoubleRequestHandler` is the common base of the handlers: HTTP/1.1 keep-alive (as a
real server behind ``requests``), no access log (tokens, API keys and signatures stay out of
test output), and the body read/write every double does. :class:`InjectedFaults` holds the
``fail_next``/``hang`` switches the path-routed doubles share.
"""

from __future__ import annotations

import signal
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self


class ThreadedHTTPDouble(ABC):
    """A ``ThreadingHTTPServer`` on ``(host, port)`` served by a daemon thread.

    ``start()`` returns the double (``double = MyDouble().start()``); ``stop()`` is idempotent
    and never waits on a handler that hangs. Handlers that simulate a slow service sleep with
    ``self._stopping.wait(seconds)``: ``stop()`` sets that event so they wake at once, and
    ``start()`` clears it again.
    """

    _thread_name: ClassVar[str] = "http-double"
    """The name of the serving thread (seen in thread dumps)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """``port=0``: the kernel picks a free port; :attr:`url` tells which."""
        self._address = (host, port)
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @abstractmethod
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        """The request handler class, bound to this double (called by ``start()``)."""

    def start(self) -> Self:
        server = ThreadingHTTPServer(self._address, self._handler_class())
        server.daemon_threads = True
        server.block_on_close = False  # a hanging handler must not block stop()
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(
            target=server.serve_forever,
            name=self._thread_name,
            kwargs={"poll_interval": 0.1},
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes hanging handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        assert self._server is not None, "start() the double first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve_until_signalled(self) -> None:
        """Block until SIGTERM or SIGINT, then ``stop()`` (for a standalone ``main()``)."""
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        stop.wait()
        self.stop()


@dataclass
class InjectedFaults:
    """The ``fail_next`` and ``hang`` switches of a double (guard them with the double's lock).

    A double subclasses it for its own defaults (``fail_status``, ``fail_path``) and its
    service-specific switches; ``reset_faults()`` is then ``self._faults = _Faults()``.
    """

    fail_count: int = 0
    fail_status: int = 500
    fail_path: str = "/"
    hang: float = 0.0  # seconds to sleep (on ``_stopping``) before answering; 0 = off

    def fail_next(self, n: int, status: int, path: str) -> None:
        """Answer the next ``n`` requests whose path starts with ``path`` with ``status``."""
        self.fail_count = n
        self.fail_status = status
        self.fail_path = path

    def take_failure(self, path: str) -> int | None:
        """The status to answer a request for ``path`` with, if a failure is armed for it
        (and count it off); ``None`` to answer normally."""
        if self.fail_count > 0 and path.startswith(self.fail_path):
            self.fail_count -= 1
            return self.fail_status
        return None


class DoubleRequestHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, no access log, and the body plumbing every double shares."""

    protocol_version = "HTTP/1.1"  # keep-alive, like a real server behind requests

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tokens, API keys and signatures stay out of test output

    def read_body(self) -> bytes:
        """The request body (``Content-Length`` bytes; empty without one)."""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_body(
        self,
        status: int,
        body: bytes,
        content_type: str | None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer ``status`` with ``body``: ``Content-Type`` (when given), ``Content-Length``,
        then ``headers`` in order. Connection errors propagate to the caller."""
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(body)
