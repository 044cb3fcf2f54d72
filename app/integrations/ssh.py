"""SSH to a pool server: pinned host keys, one connection reused per server, commands
with their own timeouts and secrets over stdin. What runs on the server for a box (its Unix
user, credentials, daemon, teardown) is in :mod:`app.integrations.box_host`.

The per-box hot path is plain paramiko, not ``fabric.Connection.run``: measured on the
same sshd box (``bench/ssh_paths.py``, BENCHMARKS.md "SSH paths"), Fabric's runner costs
~10x on a trivial command (~44 ms vs ~4 ms: its I/O threads poll) and ~100x on a command
fed through stdin (invoke reads ``in_stream`` one character per 10 ms poll), against a raw
``exec_command`` on a connection with TCP_NODELAY (the ~95 ms once measured without it were
Nagle's algorithm). Fabric is used for bootstrap and fleet operations
(:mod:`app.integrations.fabric_ssh`), with the same pinned-key policy and no SSH config.

A target may name a gateway (bastion): the connection is then a ``direct-tcpip`` channel
opened on the gateway's own pinned connection, for every path here (and Fabric's).

Every failure leaves this module as a domain error: ``HostUnreachableError`` (transient:
refused, timed out, dropped), ``SSHAuthError`` / ``HostKeyMismatchError`` (permanent), or
``TransientError`` / ``PermanentError`` for what a command reported.

Commands run in the pool login's shell and environment (the server's sshd provides ``PATH``
and ``HAPPY_SERVER_URL``), so ``happy`` is looked up on ``PATH``, never at a fixed path.

Size (over 400 lines, on purpose): connection set-up, host-key pinning, the per-server
connection pool and command execution with timeouts share one lock discipline and one fault
mapping; split, each part would need the others' internals.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self, TypeVar

import paramiko

from app.errors import (
    HostKeyMismatchError,
    HostUnreachableError,
    PermanentError,
    SSHAuthError,
    TransientError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Expanded by the remote shell: the Happy CLI honours HAPPY_HOME_DIR, and so do we.
_HAPPY_DIR = 'd="${HAPPY_HOME_DIR:-$HOME/.happy}"'
_UNREACHABLE = "The server could not be reached."


@contextlib.contextmanager
def login_errors(where: str, close: Callable[[], object]) -> Iterator[None]:
    """Opening an SSH connection (paramiko, or Fabric on top of it): its failures as our
    domain errors, after closing what was opened. A host key mismatch passes unchanged."""
    try:
        yield
    except HostKeyMismatchError:
        close()
        raise
    except paramiko.AuthenticationException as exc:
        close()
        raise SSHAuthError(
            f"ssh {where}: authentication failed: {exc}",
            safe_message="The server refused our login.",
        ) from exc
    except (paramiko.SSHException, OSError, EOFError) as exc:
        close()
        raise HostUnreachableError(
            f"ssh {where}: {type(exc).__name__}: {exc}", safe_message=_UNREACHABLE
        ) from exc


@contextlib.contextmanager
def command_errors(
    where: str,
    command: str,
    timeout: float,
    close: Callable[[], object],
    timed_out: type[BaseException] | tuple[type[BaseException], ...] = TimeoutError,
) -> Iterator[None]:
    """Running a command on an open connection (paramiko, or Fabric on top of it): after
    closing the connection (its state is unknown), ``timed_out`` becomes a
    ``TransientError`` and a lost connection a ``HostUnreachableError``."""
    try:
        yield
    except timed_out:
        close()
        raise TransientError(
            f"ssh {where}: `{command[:60]}` timed out after {timeout}s",
            safe_message="The server did not answer in time.",
        ) from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        close()
        raise HostUnreachableError(
            f"ssh {where}: connection lost: {exc}", safe_message=_UNREACHABLE
        ) from exc


@dataclass(frozen=True)
class SSHTarget:
    """Where and how to log in to a box. Secrets are kept out of ``repr``."""

    host: str
    port: int = 22
    user: str = "root"
    password: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)  # PEM / OpenSSH text
    host_key_fingerprint: str | None = None  # "SHA256:<base64 without padding>"
    # A bastion to reach ``host`` through (its own login and pinned key): the connection is
    # a ``direct-tcpip`` channel opened on the gateway's SSH connection (ProxyJump).
    gateway: SSHTarget | None = None

    @property
    def where(self) -> str:
        via = f" via {self.gateway.where}" if self.gateway is not None else ""
        return f"{self.user}@{self.host}:{self.port}{via}"

    def key(self) -> tuple[object, ...]:
        """Identity of a connection to this target (pins and gateway included)."""
        gateway = self.gateway.key() if self.gateway is not None else None
        return (self.host, self.port, self.user, self.host_key_fingerprint, gateway)


@dataclass(frozen=True)
class CommandResult:
    """The outcome of one remote command (stdout and stderr interleaved)."""

    command: str
    exit_status: int
    output: str
    seconds: float


def host_key_fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style fingerprint, as ``ssh-keygen -lf`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def fetch_host_key_fingerprint(
    host: str, port: int = 22, timeout: float = 10.0, *, gateway: SSHTarget | None = None
) -> str:
    """Fingerprint of the host key ``host`` presents (no login), to pin when it joins the pool.

    It is the key of the type paramiko negotiates, the same one :class:`BoxSession` checks.
    With ``gateway`` (pinned, logged in) the host is reached through it, as connections will.
    """
    where = f"{host}:{port}"
    gateway_client: paramiko.SSHClient | None = None
    sock: socket.socket | paramiko.Channel
    if gateway is not None:
        gateway_client = connect_client(gateway, timeout=timeout)
        sock = open_tunnel(gateway_client, gateway, host, port, timeout=timeout)
    else:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise HostUnreachableError(f"ssh {where}: {exc}", safe_message=_UNREACHABLE) from exc
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        transport.start_client(timeout=timeout)
        return host_key_fingerprint(transport.get_remote_server_key())
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise HostUnreachableError(
            f"ssh {where}: handshake failed: {exc}", safe_message=_UNREACHABLE
        ) from exc
    finally:
        transport.close()
        if gateway_client is not None:
            gateway_client.close()


class PinnedHostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Accept exactly the pinned key. paramiko asks this before authenticating, so a
    mismatch means we never offer credentials and never run anything."""

    def __init__(self, expected: str | None) -> None:
        self.expected = expected

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        actual = host_key_fingerprint(key)
        if self.expected is None:
            log.warning("ssh %s: no pinned host key, accepting %s", hostname, actual)
            return
        if not hmac.compare_digest(actual, self.expected):
            raise HostKeyMismatchError(
                f"ssh {hostname}: host key {actual} does not match pinned {self.expected}",
                safe_message="The server's identity changed; it was not used.",
            )


def _load_private_key(text: str) -> paramiko.PKey:
    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise SSHAuthError(
        "SSH private key could not be read",
        safe_message="The server's login credentials are invalid.",
    )


def load_private_key(text: str) -> paramiko.PKey:
    """The private key object for a PEM / OpenSSH key text (``SSHAuthError`` if unreadable)."""
    return _load_private_key(text)


def connect_client(
    target: SSHTarget,
    *,
    timeout: float = 10.0,
    sock: socket.socket | paramiko.Channel | None = None,
    allow_unpinned: bool = False,
) -> paramiko.SSHClient:
    """A logged-in paramiko client for ``target`` (not its gateway: see ``sock``), the host
    key checked against the pin before any credential is offered; no known_hosts, no agent,
    no ~/.ssh keys or config. Failures leave as domain errors."""
    where = target.where
    if target.host_key_fingerprint is None and not allow_unpinned:
        raise PermanentError(
            f"ssh {where}: no pinned host key", safe_message="The server is not set up correctly."
        )
    if not target.password and not target.private_key:
        raise SSHAuthError(
            f"ssh {where}: no password or key configured",
            safe_message="The server's login credentials are invalid.",
        )
    pkey = _load_private_key(target.private_key) if target.private_key else None
    client = paramiko.SSHClient()  # no known_hosts: the pin is the only trust
    client.set_missing_host_key_policy(PinnedHostKeyPolicy(target.host_key_fingerprint))
    with login_errors(where, client.close):
        client.connect(
            target.host,
            port=target.port,
            username=target.user,
            password=target.password,
            pkey=pkey,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
            allow_agent=False,
            look_for_keys=False,
            sock=sock,
        )
    transport = client.get_transport()
    if transport is not None and isinstance(transport.sock, socket.socket):
        # Without it, Nagle + delayed ACKs hold a command's stdin packets ~40 ms each:
        # write_credentials on an open connection takes ~90 ms instead of ~8 ms.
        transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def open_tunnel(
    gateway_client: paramiko.SSHClient,
    gateway: SSHTarget,
    host: str,
    port: int,
    *,
    timeout: float = 10.0,
) -> paramiko.Channel:
    """A ``direct-tcpip`` channel from the gateway to ``host:port`` (what ProxyJump does)."""
    transport = gateway_client.get_transport()
    try:
        if transport is None or not transport.is_active():
            raise EOFError("gateway connection is closed")
        return transport.open_channel(
            "direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout
        )
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise HostUnreachableError(
            f"ssh {host}:{port} via {gateway.where}: the gateway could not connect: {exc}",
            safe_message=_UNREACHABLE,
        ) from exc


class BoxSession:
    """One SSH connection to one box, reused for consecutive operations on it.

    Use as a context manager. ``commands`` records every command line sent; by design it
    never holds a secret (secrets travel over stdin), which tests assert.
    """

    def __init__(
        self,
        target: SSHTarget,
        *,
        connect_timeout: float = 10.0,
        command_timeout: float = 30.0,
        daemon_timeout: float = 30.0,
        allow_unpinned: bool = False,
    ) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.daemon_timeout = daemon_timeout
        self.allow_unpinned = allow_unpinned
        self.commands: list[str] = []
        self._client: paramiko.SSHClient | None = None
        self._gateway: paramiko.SSHClient | None = None

    @property
    def _where(self) -> str:
        return self.target.where

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> None:
        """Open the connection (idempotent): verify the pinned host key(s), then log in.
        Through the target's gateway, when it has one (the gateway's key is pinned too)."""
        if self._client is not None:
            return
        target = self.target
        sock: paramiko.Channel | None = None
        if target.gateway is not None:
            self._gateway = connect_client(
                target.gateway, timeout=self.connect_timeout, allow_unpinned=False
            )
            try:
                sock = open_tunnel(
                    self._gateway,
                    target.gateway,
                    target.host,
                    target.port,
                    timeout=self.connect_timeout,
                )
                self._client = connect_client(
                    target,
                    timeout=self.connect_timeout,
                    sock=sock,
                    allow_unpinned=self.allow_unpinned,
                )
            except BaseException:
                self._gateway.close()
                self._gateway = None
                raise
            return
        self._client = connect_client(
            target, timeout=self.connect_timeout, allow_unpinned=self.allow_unpinned
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._gateway is not None:
            self._gateway.close()
            self._gateway = None

    def is_open(self) -> bool:
        """Connected, with a live transport (a closed or dropped one is not reused)."""
        if self._client is None:
            return False
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def run(
        self, command: str, *, stdin: bytes | None = None, timeout: float | None = None
    ) -> CommandResult:
        """Run ``command`` in the login shell; ``stdin`` is streamed to it, never put in argv.

        ``timeout`` bounds the whole command (open, run, read). A non-zero exit status is
        returned, not raised: the operations below decide what it means.
        """
        self.connect()
        assert self._client is not None
        limit = self.command_timeout if timeout is None else timeout
        self.commands.append(command)
        started = time.monotonic()
        deadline = started + limit
        with command_errors(self._where, command, limit, self.close):  # socket.timeout too
            transport = self._client.get_transport()
            if transport is None or not transport.is_active():
                raise EOFError("connection is closed")
            channel = transport.open_session(timeout=limit)
            try:
                channel.set_combine_stderr(True)
                channel.settimeout(limit)
                channel.exec_command(command)
                if stdin:
                    channel.sendall(stdin)
                channel.shutdown_write()  # EOF for `cat`
                chunks = []
                while True:
                    channel.settimeout(max(deadline - time.monotonic(), 0.001))
                    chunk = channel.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                if not channel.status_event.wait(max(deadline - time.monotonic(), 0.0)):
                    raise TimeoutError
                exit_status = channel.recv_exit_status()
            finally:
                channel.close()
        seconds = time.monotonic() - started
        output = b"".join(chunks).decode("utf-8", errors="replace")
        log.debug(
            "ssh %s `%s` -> %s in %.0f ms", self._where, command[:60], exit_status, seconds * 1000
        )
        return CommandResult(command, exit_status, output, seconds)

    # --- the login's own Happy state (boxes from before per-box users) -------------------
    # Box work goes through app.integrations.box_host (one Unix user per box).

    def daemon_status(self) -> bool:
        """True when ``happy daemon status`` says the daemon runs."""
        result = self.run("happy daemon status")
        self._require_happy(result)
        if "not running" in result.output:
            return False
        if "Daemon is running" in result.output:
            return True
        raise TransientError(
            f"ssh {self._where}: unexpected `happy daemon status` output "
            f"(exit {result.exit_status}): {_last_line(result.output)}",
            safe_message="Could not read the Happy daemon's status.",
        )

    def stop_daemon(self) -> None:
        """Stop the Happy daemon (a no-op when none runs)."""
        result = self.run("happy daemon stop", timeout=self.daemon_timeout)
        self._require_happy(result)
        if result.exit_status != 0:
            raise TransientError(
                f"ssh {self._where}: `happy daemon stop` exited {result.exit_status}: "
                f"{_last_line(result.output)}",
                safe_message="The Happy daemon did not stop.",
            )

    def wipe_credentials(self, *, forget_machine: bool = True) -> None:
        """Remove the credentials and daemon state (stop the daemon first). Idempotent.

        ``forget_machine`` also drops settings.json (the machine id) and the CLI's logs, so
        the next owner of this server starts as a new machine and sees nothing of the last.
        """
        names = [
            '"$d/access.key"',
            '"$d"/access.key.tmp.*',
            '"$d/daemon.state.json"',
            '"$d/daemon.state.json.lock"',
        ]
        if forget_machine:
            names += ['"$d/settings.json"', '"$d/settings.json.lock"', '"$d/logs"']
        result = self.run(f"{_HAPPY_DIR} && rm -rf {' '.join(names)}")
        if result.exit_status != 0:
            raise TransientError(
                f"ssh {self._where}: wiping credentials failed (exit {result.exit_status}): "
                f"{_last_line(result.output)}",
                safe_message="Could not clean the server.",
            )

    def probe(self) -> float:
        """Round-trip latency (seconds) of a trivial command: the pool health check."""
        result = self.run("true", timeout=min(self.command_timeout, 10.0))
        if result.exit_status != 0:
            raise TransientError(
                f"ssh {self._where}: `true` exited {result.exit_status}", safe_message=_UNREACHABLE
            )
        return result.seconds

    def _require_happy(self, result: CommandResult) -> None:
        if result.exit_status == 127:
            raise PermanentError(
                f"ssh {self._where}: `happy` is not on PATH",
                safe_message="The server is missing the Happy CLI.",
            )


def _last_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


class SessionPool:
    """Open connections kept per target for a short while, so consecutive steps of one box
    that land in the same worker process skip the ~110 ms connect + first-command cost.

    Shared by the threads of a worker process (a lock guards the idle map; a connection is
    used by one thread at a time: checked out, it is nobody else's). ``run`` executes an
    idempotent ``work``;
    when a *reused* connection turns out to be dead it is replaced and ``work`` runs once
    more on a fresh one, so a stale pooled connection is never mistaken for a dead server.
    """

    def __init__(
        self,
        factory: Callable[[SSHTarget], BoxSession],
        *,
        max_idle: float = 10.0,
        max_size: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.factory = factory
        self.max_idle = max_idle
        self.max_size = max_size
        self.clock = clock
        self._idle: dict[tuple[object, ...], tuple[BoxSession, float]] = {}
        self._lock = threading.Lock()
        self.reused = 0  # for tests and benchmarks

    @staticmethod
    def _key(target: SSHTarget) -> tuple[object, ...]:
        # The pin is part of the key: a re-pinned server never gets an old connection.
        return target.key()

    def _close_expired(self) -> None:
        """Idle connections are closed once stale, not kept open until their next use."""
        now = self.clock()
        for key in [k for k, (_, used) in self._idle.items() if now - used > self.max_idle]:
            self._idle.pop(key)[0].close()

    def _checkout(self, target: SSHTarget) -> tuple[BoxSession, bool]:
        with self._lock:
            self._close_expired()
            entry = self._idle.pop(self._key(target), None)
            if entry is not None:
                session, last_used = entry
                if self.clock() - last_used <= self.max_idle and session.is_open():
                    self.reused += 1
                    return session, True
        if entry is not None:
            entry[0].close()
        return self.factory(target), False  # connecting happens outside the lock

    def _checkin(self, target: SSHTarget, session: BoxSession) -> None:
        if not session.is_open():
            return
        with self._lock:
            self._close_expired()
            replaced = self._idle.pop(self._key(target), None)
            self._idle[self._key(target)] = (session, self.clock())
            while len(self._idle) > self.max_size:  # drop the least recently used
                oldest = min(self._idle, key=lambda k: self._idle[k][1])
                self._idle.pop(oldest)[0].close()
        if replaced is not None:  # two threads used the same server at once: keep one
            replaced[0].close()

    def run(self, target: SSHTarget, work: Callable[[BoxSession], T]) -> T:
        session, reused = self._checkout(target)
        try:
            try:
                result = work(session)
            except HostUnreachableError:
                if not reused:
                    raise
                log.info("ssh %s: pooled connection was dead; reconnecting", target.host)
                session.close()
                session = self.factory(target)
                result = work(session)
        except BaseException:
            session.close()
            raise
        self._checkin(target, session)
        return result

    def close(self) -> None:
        with self._lock:
            idle, self._idle = list(self._idle.values()), {}
        for session, _ in idle:
            session.close()
