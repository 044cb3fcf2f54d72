"""Fabric over our SSH rules: bootstrap and fleet operations (``vibebox pool exec``).

A Fabric ``Connection`` made here behaves like :class:`app.integrations.ssh.BoxSession`
where it matters:

- the host key is pinned: Fabric's own ``AutoAddPolicy`` is replaced by
  :class:`~app.integrations.ssh.PinnedHostKeyPolicy` (no known_hosts is loaded, so every key
  goes through it, and a mismatch is refused before any credential is offered);
- no SSH config is read (an explicit empty ``SSHConfig`` and ``load_ssh_configs=False``:
  ``~/.ssh/config`` and ``/etc/ssh/ssh_config`` never change where or how we connect), no
  agent, no ``~/.ssh`` keys; the credential goes in ``connect_kwargs``, never on a command
  line;
- a target's gateway becomes Fabric's ``gateway=`` (a ``direct-tcpip`` channel on the
  gateway's own pinned connection).

Fleet commands run with :class:`fabric.ThreadingGroup` in batches of ``parallel`` hosts, each
command with its own timeout; every host gets a :class:`HostResult`, exceptions included.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import paramiko
from fabric import Config, Connection, ThreadingGroup
from fabric.exceptions import GroupException
from invoke.exceptions import CommandTimedOut, UnexpectedExit

from app.errors import HostKeyMismatchError, PermanentError, SSHAuthError
from app.integrations.ssh import (
    PinnedHostKeyPolicy,
    SSHTarget,
    command_errors,
    load_private_key,
    login_errors,
)

log = logging.getLogger(__name__)


def fabric_config() -> Config:
    """A Fabric config that reads no SSH config file and no Fabric/Invoke config file."""
    return Config(
        ssh_config=paramiko.SSHConfig(),  # explicit object: no file is loaded
        lazy=True,
        overrides={"load_ssh_configs": False, "run": {"in_stream": False}},
    )


def fabric_connection(
    target: SSHTarget, *, connect_timeout: float = 10.0, allow_unpinned: bool = False
) -> Connection:
    """A (not yet opened) Fabric ``Connection`` to ``target`` with its pin and gateway."""
    if target.host_key_fingerprint is None and not allow_unpinned:
        raise PermanentError(
            f"ssh {target.where}: no pinned host key",
            safe_message="The server is not set up correctly.",
        )
    if not target.password and not target.private_key:
        raise SSHAuthError(
            f"ssh {target.where}: no password or key configured",
            safe_message="The server's login credentials are invalid.",
        )
    connect_kwargs: dict[str, Any] = {
        "allow_agent": False,
        "look_for_keys": False,
        "banner_timeout": connect_timeout,
        "auth_timeout": connect_timeout,
        "channel_timeout": connect_timeout,
    }
    if target.private_key:
        connect_kwargs["pkey"] = load_private_key(target.private_key)
    else:
        connect_kwargs["password"] = target.password
    gateway = (
        fabric_connection(target.gateway, connect_timeout=connect_timeout)
        if target.gateway is not None
        else False  # False, not None: "no gateway", whatever a config says
    )
    connection = Connection(
        target.host,
        user=target.user,
        port=target.port,
        config=fabric_config(),
        gateway=gateway,
        connect_timeout=max(1, round(connect_timeout)),
        connect_kwargs=connect_kwargs,
    )
    # Fabric installs AutoAddPolicy: replace it, the pin is the only trust.
    connection.client.set_missing_host_key_policy(PinnedHostKeyPolicy(target.host_key_fingerprint))
    return connection


def open_connection(connection: Connection, where: str) -> None:
    """``connection.open()`` with failures turned into our domain errors."""
    with login_errors(where, connection.close):
        connection.open()


@dataclass(frozen=True)
class FabricResult:
    exit_status: int
    stdout: str
    stderr: str


def run(connection: Connection, command: str, *, timeout: float, where: str = "") -> FabricResult:
    """Run ``command`` on an open or openable Fabric connection; a non-zero exit status is
    returned, a timeout or a lost connection raised as a domain error."""
    where = where or f"{connection.user}@{connection.host}:{connection.port}"
    if not connection.is_connected:
        open_connection(connection, where)
    with command_errors(where, command, timeout, connection.close, timed_out=CommandTimedOut):
        result = connection.run(command, hide=True, warn=True, timeout=timeout, in_stream=False)
    return FabricResult(result.exited, result.stdout, result.stderr)


# --- fleet ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostResult:
    """What one host did with a fleet command."""

    name: str  # how the operator knows the host (server id or user@host:port)
    exit_status: int | None  # None: the command did not run to completion (see error)
    output: str  # stdout then stderr
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_status == 0


def run_on_hosts(
    hosts: Sequence[tuple[str, SSHTarget]],
    command: str,
    *,
    parallel: int = 5,
    timeout: float = 60.0,
    connect_timeout: float = 10.0,
) -> list[HostResult]:
    """Run ``command`` on every host, ``parallel`` at a time (a ``ThreadingGroup`` per
    batch), each with its own ``timeout``; one :class:`HostResult` per host, in order."""
    results: list[HostResult] = []
    parallel = max(1, parallel)
    for start in range(0, len(hosts), parallel):
        batch = hosts[start : start + parallel]
        results.extend(_run_batch(batch, command, timeout, connect_timeout))
    return results


def _run_batch(
    batch: Sequence[tuple[str, SSHTarget]], command: str, timeout: float, connect_timeout: float
) -> list[HostResult]:
    connections: list[Connection | None] = []
    early: dict[int, HostResult] = {}
    for index, (name, target) in enumerate(batch):
        try:
            connections.append(fabric_connection(target, connect_timeout=connect_timeout))
        except (PermanentError, SSHAuthError) as exc:
            early[index] = HostResult(name, None, "", str(exc), 0.0)
            connections.append(None)
    # A GroupResult is a dict keyed by Connection, and Connections with the same user, host
    # and port are equal (e.g. one address behind two gateways): such twins go in separate
    # groups, run one after the other.
    groups: list[list[int]] = []
    for index, connection in enumerate(connections):
        if connection is None:
            continue
        group_for = next((g for g in groups if all(connections[i] != connection for i in g)), None)
        if group_for is None:
            groups.append([index])
        else:
            group_for.append(index)
    started = time.monotonic()
    values: dict[int, Any] = {}
    for indexes in groups:
        members = [connections[i] for i in indexes]
        group = ThreadingGroup.from_connections(members)
        try:
            outcome = dict(
                group.run(command, hide=True, warn=True, timeout=timeout, in_stream=False)
            )
        except GroupException as exc:
            outcome = dict(exc.result)
        finally:
            group.close()
        for i, member in zip(indexes, members, strict=True):
            values[i] = outcome.get(member)
    seconds = time.monotonic() - started
    results = []
    for index, (name, target) in enumerate(batch):
        if index in early:
            results.append(early[index])
            continue
        results.append(_host_result(name, target, values.get(index), timeout, seconds))
    return results


def _host_result(
    name: str, target: SSHTarget, value: Any, timeout: float, seconds: float
) -> HostResult:
    if isinstance(value, UnexpectedExit):  # only with warn=False; kept for safety
        value = value.result
    if isinstance(value, CommandTimedOut):
        return HostResult(name, None, _output(value.result), f"timed out after {timeout}s", seconds)
    if isinstance(value, BaseException):
        return HostResult(name, None, "", _describe(value, target), seconds)
    if value is None:
        return HostResult(name, None, "", "no result", seconds)
    return HostResult(name, value.exited, _output(value), None, seconds)


def _output(result: Any) -> str:
    return (result.stdout or "") + (result.stderr or "")


def _describe(exc: BaseException, target: SSHTarget) -> str:
    if isinstance(exc, HostKeyMismatchError):
        return f"host key mismatch: {exc}"
    if isinstance(exc, paramiko.AuthenticationException):
        return f"authentication failed for {target.user}"
    return f"{type(exc).__name__}: {exc}"
