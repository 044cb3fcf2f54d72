"""``vibebox boxes``: list, inspect, retry and terminate VibeBoxes (operator tools; the same
services as the admin API, and the lifecycle engine for every change of status)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import click
from flask.cli import AppGroup

from app.cli_pool import _ago, _domain_errors, _table

boxes_cli = AppGroup("boxes", help="VibeBoxes: list, show, retry, terminate.")


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a {what} id (UUID)") from None


def _status_choices() -> list[str]:
    from app.services.boxes.statuses import BoxStatus

    return [s.value for s in BoxStatus]


@boxes_cli.command("list")
@click.option("--status", type=click.Choice(_status_choices()), help="Only boxes in this status.")
@click.option("--degraded", is_flag=True, help="Only degraded boxes (server or daemon down).")
@click.option("--waiting", is_flag=True, help="Only boxes waiting for capacity.")
@click.option("--user", "user_id", metavar="ID", help="Only this user's boxes.")
@click.option("--server", "server_id", metavar="ID", help="Only boxes on this server.")
@click.option("--plan", "plan_id", metavar="PLAN", help="Only boxes of this plan.")
@click.option("--region", metavar="REGION", help="Only boxes of this region.")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="At most N rows."
)
def boxes_list(
    status: str | None,
    degraded: bool,
    waiting: bool,
    user_id: str | None,
    server_id: str | None,
    plan_id: str | None,
    region: str | None,
    limit: int,
) -> None:
    """Boxes, newest first: status, step, progress, degraded, plan, user, server."""
    from app.api.admin.schemas import AdminBoxSummarySchema
    from app.db import db_session
    from app.services.boxes import admin_boxes

    f = admin_boxes.BoxFilter(
        status=status,
        degraded=True if degraded else None,
        waiting=True if waiting else None,
        user_id=_uuid(user_id, "user") if user_id else None,
        server_id=_uuid(server_id, "server") if server_id else None,
        plan_id=plan_id,
        region=region,
    )
    boxes, total = admin_boxes.list_boxes(db_session(), f, limit=limit)
    if not boxes:
        click.echo("no boxes")
        return
    now = datetime.now(UTC)
    rows = [["ID", "STATUS", "STEP", "PROGRESS", "DEGRADED", "PLAN", "USER", "SERVER", "UPDATED"]]
    for row in AdminBoxSummarySchema(many=True).dump(boxes):  # what the admin API lists
        rows.append(
            [
                row["id"],
                row["status"],
                row["step"] or "-",
                f"{row['progress']['done']}/{row['progress']['total']}",
                "yes" if row["degraded"] else "-",
                row["planId"],
                row["userId"],
                row["serverId"] or "-",
                _ago(_datetime(row["updatedAt"]), now),
            ]
        )
    _table(rows, click.echo)
    if total > len(boxes):
        click.echo(f"({len(boxes)} of {total}; use --limit or filters to see more)")


def _datetime(value: str) -> datetime:
    """A date-time as the schemas dump it (ISO 8601)."""
    return datetime.fromisoformat(value)


def _when(value: str | None) -> str:
    return _datetime(value).strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


@boxes_cli.command("show")
@click.argument("box_id")
def boxes_show(box_id: str) -> None:
    """One box: status, step, progress, last error, degraded reason, timeline, events."""
    from app import get_settings
    from app.api.admin.schemas import AdminBoxSchema
    from app.db import db_session
    from app.services.boxes import admin_boxes, provisioning

    session = db_session()
    with _domain_errors():
        box = provisioning.get_box(session, _uuid(box_id, "box"))
    # what the admin API shows
    doc: dict[str, Any] = AdminBoxSchema().dump(admin_boxes.describe(session, get_settings(), box))
    progress = doc["progress"]
    lines = [
        ("box", doc["id"]),
        ("status", doc["status"] + (f" (action {doc['action']})" if doc["action"] else "")),
        ("step", doc["step"] or "-"),
        ("progress", f"{progress['done']}/{progress['total']}"),
        ("attempts", str(doc["attempts"])),
        ("next retry", _when(doc["nextRetryAt"])),
        ("last error", doc["lastError"] or "-"),
        (
            "degraded",
            f"since {_when(doc['degradedSince'])}: {doc['degradedReason'] or '-'}"
            if doc["degraded"]
            else "no",
        ),
        ("plan", doc["planId"]),
        ("user", doc["userId"]),
        ("server", doc["serverId"] or "-"),
        ("unix user", doc["unixUser"] or "-"),
        ("created", _when(doc["createdAt"])),
        ("updated", _when(doc["updatedAt"])),
    ]
    for name, value in lines:
        click.echo(f"{name + ':':<12} {value}")
    click.echo("timeline:")
    rows = [["  STEP", "STATE", "ATTEMPTS", "STARTED", "FINISHED", "LAST ERROR"]]
    for t in doc["timeline"]:
        rows.append(
            [
                f"  {t['name']}",
                t["state"],
                str(t["attempts"]),
                _when(t["startedAt"]),
                _when(t["finishedAt"]),
                t["lastError"] or "",
            ]
        )
    _table(rows, click.echo)
    click.echo("events:" if doc["events"] else "events: none")
    for e in doc["events"]:
        click.echo(f"  {_when(e['at'])}  {e['kind']}: {e['message']}")


@boxes_cli.command("retry")
@click.argument("box_id")
def boxes_retry(box_id: str) -> None:
    """Resume a box in error: the workflow that failed, from its failed step."""
    from app.db import db_session
    from app.services.boxes import engine

    session = db_session()
    with _domain_errors():
        box = engine.retry_failed_box(session, _uuid(box_id, "box"), by="cli")
        status, step = box.status, box.step
        session.commit()
    click.echo(f"box {box_id} is {status}, resuming from {step}")


@boxes_cli.command("terminate")
@click.argument("box_id")
@click.confirmation_option(prompt="Tear this box down now (forced, not undone by a renewal)?")
def boxes_terminate(box_id: str) -> None:
    """Tear a box down now (forced: a renewal never cancels it; its subscription is left as
    it is)."""
    from app.db import db_session
    from app.services.boxes import engine, provisioning

    session = db_session()
    with _domain_errors():
        box_uuid = _uuid(box_id, "box")
        before = provisioning.get_box(session, box_uuid).status
        started = engine.start_teardown(
            session, box_uuid, reason="terminated from the CLI", cancellable=False
        )
        session.commit()
        after = provisioning.get_box(session, box_uuid).status
    if started:
        click.echo(f"box {box_id} is {after}: teardown started")
    elif before != after:
        click.echo(f"box {box_id} is {after} (it never had a server: nothing to tear down)")
    else:
        raise click.ClickException(f"box {box_id} is {after}; it cannot be terminated now")
