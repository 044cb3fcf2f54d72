"""The supervisor ``make run``, ``make test`` and ``scripts/services.py exec`` run their
command under: signals forwarded (a terminal's Ctrl-C reaches the child by itself), the
child's whole process tree ended (psutil) when it does not stop in time. Development only."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

FORWARDED = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
SI_KERNEL = 0x80  # si_code of a signal from the kernel, e.g. Ctrl-C on the terminal


def log(message: str) -> None:
    print(f"[services] {message}", file=sys.stderr, flush=True)


def kill_tree(pid: int, grace: float = 5.0) -> None:
    """SIGTERM ``pid`` and its descendants (listed first: orphans could not be found), then
    SIGKILL what still runs after ``grace`` seconds."""
    with contextlib.suppress(psutil.NoSuchProcess):
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        for proc in psutil.wait_procs(procs, timeout=grace)[1]:
            with contextlib.suppress(psutil.Error):
                proc.kill()


def supervise(
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    *,
    kill_after: float = 30.0,
) -> int:
    """Run ``cmd``; return its exit status (128+N if killed by signal N). SIGTERM/SIGHUP are
    forwarded, SIGINT only if sent to us alone (a terminal's Ctrl-C reached the child too).
    ``kill_after`` seconds after the first signal, or on a second Ctrl-C, the child's whole
    process tree is terminated."""
    waited = FORWARDED | {signal.SIGCHLD}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    try:
        try:
            restore = lambda: signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)  # noqa: E731
            child = subprocess.Popen(list(cmd), env=env, cwd=cwd, preexec_fn=restore)
        except OSError as exc:
            log(f"cannot run {cmd[0]!r}: {exc}")
            return 127
        stopping: float | None = None
        while child.poll() is None:
            if stopping is not None and time.monotonic() - stopping > kill_after:
                log(f"{cmd[0]} still runs {kill_after:.0f}s after the stop signal; terminating it")
                kill_tree(child.pid)
                break
            info = signal.sigtimedwait(waited, 0.5)
            if info is None or info.si_signo == signal.SIGCHLD:
                continue
            if stopping is None:
                stopping = time.monotonic()
            elif info.si_signo == signal.SIGINT:
                log("interrupted again: terminating all processes now")
                kill_tree(child.pid, grace=3.0)
                break
            if not (info.si_signo == signal.SIGINT and info.si_code == SI_KERNEL):
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(info.si_signo)
        returncode = child.wait()
        return 128 - returncode if returncode < 0 else returncode
    finally:
        while signal.sigtimedwait(FORWARDED, 0):
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
