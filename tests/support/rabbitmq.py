"""A RabbitMQ node of the test session's own (Debian's ``rabbitmq-server``), never the
machine's.

It runs as a separate Erlang node (``vbx-<pid>@localhost``) on free ports, with its database,
logs, config, plugins file and Erlang cookie (``HOME``) under a temporary directory, in its own
process group; ``stop()`` ends it by PID. ``restart()`` keeps the directory and the ports, so
durable queues and persistent messages survive it, as on a production broker restart.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.tiers import require_full_tier

# The real start script: /usr/sbin/rabbitmq-server is a wrapper that switches to the
# system's ``rabbitmq`` user and its /var/lib/rabbitmq.
SERVER_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RabbitMQServer:
    """One RabbitMQ node on 127.0.0.1 for the tests; ``url`` is its ``amqp://`` URL."""

    def __init__(self, base_dir: Path | None = None):
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="vibebox-rabbitmq-"))
        self.port = _free_port()
        self.dist_port = _free_port()
        self.nodename = f"vbx-{os.getpid()}-{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.base / "server.out"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        home = self.base / "home"
        for sub in ("home", "mnesia", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.default = 127.0.0.1:{self.port}",
                    "loopback_users = none",
                    # RabbitMQ's default, explicit: the limit our countdown policy stays under
                    "consumer_timeout = 1800000",
                    # test machines have small disks; do not block publishers at 50 MB free
                    "disk_free_limit.absolute = 10MB",
                    "",
                ]
            )
        )
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RABBITMQ_", "ERL_")) and k != "NOTIFY_SOCKET"
        }
        env.update(
            {
                "HOME": str(home),  # the Erlang cookie
                "RABBITMQ_NODENAME": self.nodename,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.base / "log"),
                "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
                "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
                "RABBITMQ_PID_FILE": str(self.base / "rabbitmq.pid"),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            }
        )
        return env

    def start(self, timeout: float = 120.0) -> RabbitMQServer:
        require_full_tier("RabbitMQ", "rabbitmq")
        if not SERVER_SCRIPT.exists():
            raise RuntimeError(
                f"{SERVER_SCRIPT} is missing: install Debian's rabbitmq-server "
                "(`make deps` does when run as root)"
            )
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(SERVER_SCRIPT)],
            env=self._env(),
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our own process group: stop() reaches only this node
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited early:\n{self.tail()}")
            if self.ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"rabbitmq-server not ready within {timeout}s:\n{self.tail()}")

    def ready(self) -> bool:
        """True once the node accepts an AMQP connection (not just a TCP one)."""
        from kombu import Connection

        try:
            with Connection(self.url, connect_timeout=2) as conn:
                conn.ensure_connection(max_retries=1)
            return True
        except Exception:  # not up yet, whatever the reason
            return False

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the node by PID (SIGTERM: a clean shutdown that keeps durable queues)."""
        if not self.proc or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # helpers the VM started in its group (erl_child_setup, inet_gethost) go with it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RabbitMQServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.cleanup()
