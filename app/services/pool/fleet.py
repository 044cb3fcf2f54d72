"""Fleet operations over the pool with Fabric: run a command on many servers, roll a new
Happy CLI out server by server.

No Flask here. :func:`exec_on_servers` only reads the database. :func:`upgrade_happy` changes
server states (a free server is ``draining`` while its CLI is replaced, so no box is
allocated to it mid-install: drained before the live-box check, never after; one that fails
is quarantined) and calls ``commit`` after each change, because the rollout takes minutes
and other processes must see those states at once; the caller (the CLI command) owns the
session.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import BootstrapSettings
from app.errors import IntegrationError
from app.integrations import fabric_ssh
from app.integrations.bootstrap import bootstrap_host, spec_version
from app.integrations.ssh import SSHTarget
from app.models import Server
from app.services import pool

log = logging.getLogger(__name__)


def select_servers(
    session: Session, server_ids: Sequence[uuid.UUID] = (), *, all_servers: bool = False
) -> list[Server]:
    """The servers named (404 ``server_not_found`` for an unknown id), or with
    ``all_servers`` every server that is not retired, oldest first."""
    if all_servers:
        return list(
            session.scalars(
                select(Server)
                .where(Server.state != "retired")
                .order_by(Server.created_at, Server.id)
            )
        )
    return [pool.get_server(session, server_id) for server_id in dict.fromkeys(server_ids)]


def exec_on_servers(
    servers: Sequence[Server],
    command: str,
    *,
    encryption_key: bytes,
    parallel: int = 5,
    timeout: float = 60.0,
    connect_timeout: float = 10.0,
) -> list[fabric_ssh.HostResult]:
    """Run ``command`` as each server's pool login (a Fabric ``ThreadingGroup``,
    ``parallel`` hosts at a time); one result per server, named by the server id."""
    hosts = [(str(s.id), pool.ssh_target_for(s, encryption_key)) for s in servers]
    return fabric_ssh.run_on_hosts(
        hosts, command, parallel=parallel, timeout=timeout, connect_timeout=connect_timeout
    )


# --- rolling upgrade of the Happy CLI -----------------------------------------------------


@dataclass(frozen=True)
class UpgradeOutcome:
    server_id: uuid.UUID
    host: str
    status: str  # "upgraded" | "unchanged" | "skipped_busy" | "failed" | "not_reached"
    detail: str = ""
    version: str | None = None


@dataclass(frozen=True)
class UpgradeReport:
    outcomes: tuple[UpgradeOutcome, ...]

    @property
    def ok(self) -> bool:
        return not any(o.status in ("failed", "not_reached") for o in self.outcomes)


def _where(server: Server) -> str:
    via = f" via {server.gateway_host}" if server.gateway_host else ""
    return f"{server.ssh_user}@{server.host}:{server.ssh_port}{via}"


def package_for(version: str | None, settings: BootstrapSettings) -> tuple[str, str]:
    """(npm spec, VB_WANT) for ``--version``: ``happy-coder@V`` and ``=V``; without a
    version HAPPY_CODER_PACKAGE, and ``=<its version>`` when it names one (else always)."""
    spec = f"happy-coder@{version}" if version else settings.happy_coder_package
    wanted = spec_version(spec)
    return spec, f"={wanted}" if wanted else "always"


def _drain_free(session: Session, server_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """``available`` -> ``draining`` in one conditional UPDATE: atomic against allocation
    (which takes only ``available`` servers, locking the row), so no box can be given a
    server between our decision and the drain. Returns the ids drained."""
    if not server_ids:
        return set()
    drained = set(
        session.scalars(
            update(Server)
            .where(Server.id.in_(server_ids), Server.state == "available")
            .values(state="draining")
            .returning(Server.id)
            .execution_options(synchronize_session=False)
        )
    )
    for server_id in drained:
        log.info("fleet: server %s draining for upgrade-happy", server_id)
    return drained


def upgrade_happy(
    session: Session,
    *,
    encryption_key: bytes,
    settings: BootstrapSettings,
    version: str | None = None,
    include_busy: bool = False,
    parallel: int = 1,
    commit: Callable[[], None],
    progress: Callable[[UpgradeOutcome], None] = lambda outcome: None,
    connect_timeout: float = 10.0,
    command_timeout: float = 60.0,
) -> UpgradeReport:
    """Install ``happy-coder@version`` (default HAPPY_CODER_PACKAGE) on every non-retired
    server, ``parallel`` at a time, re-verifying each (happy on PATH, HAPPY_SERVER_URL
    reachable). A free server is drained for the install (before the live-box check, in one
    UPDATE, so no box is allocated to it in between) and put back after; a server with a
    live box is skipped (undrained) unless ``include_busy``. The rollout stops after the
    first batch with a failure; the failed servers without a box are quarantined with the
    reason."""
    spec, want = package_for(version, settings)
    settings = replace(settings, happy_coder_package=spec)
    servers = select_servers(session, all_servers=True)
    outcomes: list[UpgradeOutcome] = []
    parallel = max(1, parallel)
    queue = list(servers)
    while queue:
        batch, queue = queue[:parallel], queue[parallel:]
        work: list[tuple[Server, SSHTarget, bool]] = []  # server, target, drained by us
        # Drain first, then look for a box: checking first would leave a window in which a
        # box is allocated the free server we then drain and upgrade under it.
        drained_ids = _drain_free(session, [s.id for s in batch])
        commit()
        busy = pool.live_box_ids(session, [s.id for s in batch])
        for server in batch:
            session.refresh(server)
            drained = server.id in drained_ids
            if server.id in busy and not include_busy:
                if drained:  # not ours to upgrade after all: undrain (allocated, as it hosts)
                    pool.update_server(session, server.id, state="available")
                outcome = UpgradeOutcome(
                    server.id, _where(server), "skipped_busy", f"hosts box {busy[server.id]}"
                )
                outcomes.append(outcome)
                progress(outcome)
                continue
            work.append((server, pool.ssh_target_for(server, encryption_key), drained))
        commit()

        def upgrade_one(item: tuple[Server, SSHTarget, bool]) -> tuple[str, str, str | None]:
            _, target, _ = item
            try:
                report = bootstrap_host(
                    target,
                    happy_server_url=None,  # keep the server's own URL; verify it
                    settings=settings,
                    happy_want=want,
                    connect_timeout=connect_timeout,
                    command_timeout=command_timeout,
                )
            except IntegrationError as exc:
                return "failed", exc.safe_message or str(exc), None
            step = report.step("happy")
            status = "upgraded" if step is not None and step.status == "done" else "unchanged"
            return status, "verified", report.happy_version

        with ThreadPoolExecutor(max_workers=len(work) or 1) as executor:
            results = list(executor.map(upgrade_one, work))
        failed = False
        for (server, _, drained), (status, detail, got) in zip(work, results, strict=True):
            session.refresh(server)
            if status == "failed":
                failed = True
                if server.id not in busy:
                    pool.quarantine_server(session, server.id, f"upgrade-happy: {detail}")
            elif drained and server.state == "draining":
                pool.update_server(session, server.id, state="available")
            outcome = UpgradeOutcome(server.id, _where(server), status, detail, got)
            outcomes.append(outcome)
            progress(outcome)
        commit()
        if failed:
            for server in queue:
                outcome = UpgradeOutcome(
                    server.id, _where(server), "not_reached", "stopped after a failure"
                )
                outcomes.append(outcome)
                progress(outcome)
            break
    log.info(
        "fleet: upgrade-happy %s: %s",
        spec,
        ", ".join(f"{o.server_id} {o.status}" for o in outcomes) or "no servers",
    )
    return UpgradeReport(tuple(outcomes))


__all__ = [
    "UpgradeOutcome",
    "UpgradeReport",
    "exec_on_servers",
    "select_servers",
    "upgrade_happy",
]
