"""The API as ``make run`` serves it (gunicorn, ``app:create_app()``), in a process of its own.

Used where a test needs the app on other backing services than the suite's (its own Redis)
without rebinding the process-wide extensions the in-process ``app`` fixture uses. Loopback
only; stopped by the PID it started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests


class ApiServer:
    @staticmethod
    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    def __init__(self, log_dir: Path, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        """``args``: more gunicorn options, e.g. ``("-c", "python:app.gunicorn_config")``
        for the shipped configuration (gthread workers)."""
        self.args = args
        self.port = self.free_port()
        self.env = {**os.environ, **env}
        self.log_path = log_dir / f"gunicorn-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = requests.Session()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ApiServer:
        gunicorn = Path(sys.executable).parent / "gunicorn"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(gunicorn),
                    *("--bind", f"127.0.0.1:{self.port}", "--workers", "1"),
                    *("--timeout", "60", "--no-control-socket", *self.args, "app:create_app()"),
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.tail()}")
            try:
                if self.http.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the API did not answer within {timeout}s:\n{self.tail()}")

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 30)
        kw.setdefault("allow_redirects", False)
        try:
            return self.http.request(method, f"{self.base}{path}", **kw)
        finally:
            self.http.cookies.clear()  # sessions travel as Bearer headers only

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
