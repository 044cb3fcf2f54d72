"""The arithmetic of the fleet run (``bench/fleet.py``): percentiles, where each box's time
went (step run times and the waits between them), CPU seconds per process kind from /proc,
and memory (RSS and PSS) of a set of processes. No database, no stack: unit-tested in
``tests/bench/test_fleet_stats.py``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentiles(values: Iterable[float]) -> dict[str, Any]:
    """Seconds: n, mean, p50, p90, p99, min, max (inclusive method, 3 decimals)."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    if len(ordered) == 1:
        q = [ordered[0]] * 99
    else:
        q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "n": len(ordered),
        "mean": round(statistics.fmean(ordered), 3),
        "p50": round(q[49], 3),
        "p90": round(q[89], 3),
        "p99": round(q[98], 3),
        "min": round(ordered[0], 3),
        "max": round(ordered[-1], 3),
    }


def step_breakdown(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Where the time of the boxes went, per step in workflow order: ``wait`` (the previous
    step finished - or the payment was received, for the first step - until this step was
    claimed: commit, publish, queue, pickup) and ``run`` (claimed -> finished), each as
    percentiles over the boxes that finished the step; ``attempts`` summed. Rows are
    ``{"received": epoch, "steps": {name: {"started", "finished", "attempts"}}}``."""
    out: dict[str, Any] = {}
    for index, name in enumerate(names):
        runs, waits, attempts = [], [], 0
        for row in rows:
            step = row["steps"].get(name) or {}
            attempts += int(step.get("attempts") or 0)
            started, finished = step.get("started"), step.get("finished")
            if started is None or finished is None:
                continue
            runs.append(finished - started)
            if index == 0:
                before = row.get("received")
            else:
                before = (row["steps"].get(names[index - 1]) or {}).get("finished")
            if before is not None:
                waits.append(started - before)
        out[name] = {"wait": percentiles(waits), "run": percentiles(runs), "attempts": attempts}
    return out


# --- /proc ---------------------------------------------------------------------------------


def _stat(pid: str) -> tuple[int, int, float] | None:
    """(parent pid, session, CPU seconds incl. reaped children) of one process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return int(fields[1]), int(fields[3]), ticks / _CLK_TCK


def _cmdline(pid: str) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def classify_command(cmdline: str) -> str:
    """The kind of a process of the stack's (or an extra worker's) session, by its command."""
    if "respawn" in cmdline or "honcho" in cmdline or cmdline.startswith(("sh ", "/bin/sh ")):
        return "supervisors"
    if "gunicorn" in cmdline:
        return "web"
    if "celery" in cmdline:
        if " beat" in cmdline:
            return "beat"
        if " flower" in cmdline:
            return "flower"
        if "-Q maintenance" in cmdline:
            return "maintenance_worker"
        if " worker" in cmdline:
            return "workers"
    if "flower" in cmdline:
        return "flower"
    return "supervisors"


def cpu_by_kind(ctx: dict[str, Any]) -> dict[str, float]:
    """CPU seconds used so far (own + reaped children) by the live processes of each kind:
    web, workers, maintenance_worker, beat, flower, supervisors (the stack's sessions, by
    command), sshd (the fleet's sshd and everything below them: sessions, sudo, useradd),
    happy_daemons (processes of the product's box users), happy_server, postgres, redis
    (the embedded servers on this run's ports, with their children) and bench (this
    process: the webhook burst and the sampler).

    ``ctx``: ``sids`` (name -> session id), ``happy_pid``, ``fleet_marker`` (the fleet's
    directory, in each sshd's command line), ``prefix`` (box user prefix), ``pg_port``,
    ``redis_port``."""
    sessions = set(ctx["sids"].values())
    box_uids = {e.pw_uid for e in pwd.getpwall() if e.pw_name.startswith(ctx["prefix"])}
    procs: dict[int, tuple[int, int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(entry.name)
            if stat is not None:
                procs[int(entry.name)] = stat
    kinds: dict[int, str | None] = {}

    def root_kind(pid: int) -> str | None:
        """The kind a process gives its descendants (None: not one we measure)."""
        _ppid, session, _cpu = procs[pid]
        if pid == os.getpid():
            return "bench"
        if pid == ctx["happy_pid"]:
            return "happy_server"
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}").st_uid in box_uids:
                return "happy_daemons"
        if session in sessions:
            return "stack"
        cmd = _cmdline(str(pid))
        if "sshd" in cmd and ctx["fleet_marker"] in cmd:
            return "sshd"
        if ctx["pg_port"] and "postgres" in cmd and f"-p {ctx['pg_port']}" in cmd:
            return "postgres"
        if ctx["redis_port"] and "redis-server" in cmd and f":{ctx['redis_port']}" in cmd:
            return "redis"
        return None

    def kind_of(pid: int) -> str | None:
        chain = []
        kind: str | None = None
        while pid in procs and pid > 1:
            if pid in kinds:
                kind = kinds[pid]
                break
            chain.append(pid)
            kind = root_kind(pid)
            if kind is not None:
                break
            pid = procs[pid][0]
        for p in chain:
            kinds[p] = kind
        return kind

    totals: dict[str, float] = {}
    for pid, (_ppid, _session, cpu) in procs.items():
        kind = kind_of(pid)
        if kind == "stack":  # the stack's processes (and the extra workers), by command
            kind = classify_command(_cmdline(str(pid)))
        if kind is not None:
            totals[kind] = totals.get(kind, 0.0) + cpu
    return totals


def memory_of(pids: Iterable[int]) -> dict[str, Any]:
    """Processes, summed RSS and PSS (MiB; PSS shares shared pages out) and PSS per process."""
    count, rss_kb, pss_kb = 0, 0, 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        count += 1
        rss_kb += _field_kb(status, "VmRSS:")
        pss_kb += _field_kb(rollup, "Pss:")
    return {
        "processes": count,
        "rss_mb": round(rss_kb / 1024, 1),
        "pss_mb": round(pss_kb / 1024, 1),
        "pss_mb_per_process": round(pss_kb / 1024 / count, 2) if count else None,
        "rss_mb_per_process": round(rss_kb / 1024 / count, 2) if count else None,
    }


def _field_kb(text: str, name: str) -> int:
    for line in text.splitlines():
        if line.startswith(name):
            return int(line.split()[1])
    return 0
