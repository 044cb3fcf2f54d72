#!/usr/bin/env python3
"""SSH paths: Fabric ``Connection.run`` vs our paramiko ``BoxSession.run`` for the per-box
hot path, on the same real sshd box, interleaved run by run (the order alternates).

Scenarios (the same command lines on both paths):

- ``true``: a trivial command on an open connection (the health probe);
- ``stdin``: ``cat > file`` fed ~200 bytes on stdin, on an open connection (how
  ``write_credentials`` sends the key file: never on a command line);
- ``step``: the pool login check script :meth:`BoxHost.check_operator` runs (a real step's
  shell work, sudo included);
- ``connect``: open a new connection (pinned key, ed25519 login) and run ``true``, then close.

Both paths use pinned host keys and no SSH config (Fabric via
:func:`app.integrations.fabric_ssh.fabric_connection`). Reports medians, p90 and the ratio
fabric / paramiko per scenario; writes ``bench/results/ssh_paths-<UTC>.json``. Needs root
(the sshd test box). No database. Timings are reported, never asserted.

    .venv/bin/python bench/ssh_paths.py [--runs 200] [--connect-runs 30]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS_DIR = ROOT / "bench" / "results"
PAYLOAD = ('{"secret": "' + "A+/b" * 11 + '=", "token": "' + "x" * 140 + '"}').encode()
STDIN_CMD = 'umask 077; cat > "$HOME/.bench-stdin"'


def _cmd(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "?"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def machine_info() -> dict[str, Any]:
    import fabric
    import paramiko

    cpu_model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": _cmd(["nproc"]),
        "cpu_model": cpu_model,
        "mem_total_gb": _cmd(["sh", "-c", "free -g | awk '/Mem:/ {print $2}'"]),
        "python": platform.python_version(),
        "openssh": _cmd(["ssh", "-V"]),
        "paramiko": paramiko.__version__,
        "fabric": fabric.__version__,
    }


def summarize(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median_ms": statistics.median(ordered) * 1000,
        "p90_ms": ordered[int(0.9 * (len(ordered) - 1))] * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
    }


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="per open-connection scenario")
    parser.add_argument("--connect-runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    from app.integrations import fabric_ssh
    from app.integrations.box_host import BoxHost
    from app.integrations.ssh import BoxSession
    from tests.support.sshd import BoxFleet

    step_cmd: str
    results: dict[str, dict[str, Any]] = {}
    with BoxFleet("http://127.0.0.1:9") as fleet:
        box = fleet.new_box()
        target = box.target()
        paramiko_session = BoxSession(target, command_timeout=30)
        paramiko_session.connect()
        fabric_conn = fabric_ssh.fabric_connection(target)
        fabric_conn.open()

        # The exact command line check_operator sends, captured from a real call.
        probe = BoxSession(target)
        BoxHost(probe).check_operator()
        step_cmd = probe.commands[-1]
        probe.close()

        def p_run(command: str, stdin: bytes | None = None) -> Callable[[], object]:
            def go() -> object:
                result = paramiko_session.run(command, stdin=stdin)
                assert result.exit_status == 0, result.output
                return result

            return go

        def f_run(command: str, stdin: bytes | None = None) -> Callable[[], object]:
            def go() -> object:
                stream = io.StringIO(stdin.decode()) if stdin is not None else False
                result = fabric_conn.run(
                    command, hide=True, warn=True, timeout=30, in_stream=stream
                )
                assert result.exited == 0, result.stderr
                return result

            return go

        def p_connect() -> object:
            with BoxSession(target) as session:
                return session.run("true")

        def f_connect() -> object:
            conn = fabric_ssh.fabric_connection(target)
            try:
                return conn.run("true", hide=True, warn=True, timeout=30, in_stream=False)
            finally:
                conn.close()

        scenarios: list[tuple[str, Callable[[], object], Callable[[], object], int]] = [
            ("true", p_run("true"), f_run("true"), args.runs),
            (
                "stdin",
                p_run(STDIN_CMD, PAYLOAD),
                f_run(STDIN_CMD, PAYLOAD),
                max(20, args.runs // 5),
            ),
            ("step", p_run(step_cmd), f_run(step_cmd), max(20, args.runs // 4)),
            ("connect", p_connect, f_connect, args.connect_runs),
        ]
        for name, paramiko_fn, fabric_fn, runs in scenarios:
            for _ in range(args.warmup):
                paramiko_fn()
                fabric_fn()
            p_samples: list[float] = []
            f_samples: list[float] = []
            for i in range(runs):
                if i % 2 == 0:
                    p_samples.append(timed(paramiko_fn))
                    f_samples.append(timed(fabric_fn))
                else:
                    f_samples.append(timed(fabric_fn))
                    p_samples.append(timed(paramiko_fn))
            p, f = summarize(p_samples), summarize(f_samples)
            results[name] = {
                "paramiko": p,
                "fabric": f,
                "ratio_median": f["median_ms"] / p["median_ms"],
            }
            print(
                f"{name:<8} paramiko median {p['median_ms']:7.2f} ms (p90 {p['p90_ms']:7.2f})"
                f"   fabric median {f['median_ms']:7.2f} ms (p90 {f['p90_ms']:7.2f})"
                f"   fabric/paramiko {results[name]['ratio_median']:.2f}x",
                flush=True,
            )
        paramiko_session.close()
        fabric_conn.close()

    machine = machine_info()
    print(
        f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), {machine['mem_total_gb']} GB,"
        f" python {machine['python']}, {machine['openssh']}, paramiko {machine['paramiko']},"
        f" fabric {machine['fabric']}"
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS_DIR / f"ssh_paths-{stamp}.json"
    out.write_text(
        json.dumps({"machine": machine, "args": vars(args), "results": results}, indent=2)
    )
    print(f"written {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VIBEBOX_ENV", "development")
    sys.exit(main())
