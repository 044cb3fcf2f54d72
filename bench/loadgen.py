"""A small HTTP load generator: N threads, each with its own keep-alive connection
(``http.client``, reconnecting when the server closes it), recording every request's latency
and status. Used by ``stack.py`` for the status-poll (P3) and webhook-burst (P4) benchmarks.

Two modes: ``duration`` (every thread repeats one request until the deadline) and a fixed
list of requests shared by the threads (each request sent exactly once). Both the system and
its baseline are driven by the same generator in the same process, so its own cost (it shares
the machine's cores with the servers) weighs on both sides alike.
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadResult:
    connections: int
    elapsed_s: float
    latencies_s: list[float]
    statuses: Counter[int]
    errors: list[str]
    reconnects: int

    @property
    def count(self) -> int:
        return len(self.latencies_s)

    @property
    def rps(self) -> float:
        return self.count / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def summary(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "requests": self.count,
            "elapsed_s": round(self.elapsed_s, 3),
            "rps": round(self.rps, 1),
            **latency_summary(self.latencies_s),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": len(self.errors),
            "first_errors": self.errors[:5],
            "reconnects": self.reconnects,
        }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank on a sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in latencies_s)
    if not ms:
        return {}
    return {
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(ms[-1], 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def merge(results: Sequence[LoadResult]) -> LoadResult:
    """Several runs of the same load as one (repetitions of an interleaved benchmark)."""
    statuses: Counter[int] = Counter()
    for r in results:
        statuses.update(r.statuses)
    return LoadResult(
        connections=results[0].connections,
        elapsed_s=sum(r.elapsed_s for r in results),
        latencies_s=[v for r in results for v in r.latencies_s],
        statuses=statuses,
        errors=[e for r in results for e in r.errors],
        reconnects=sum(r.reconnects for r in results),
    )


def run_load(
    host: str,
    port: int,
    *,
    connections: int,
    request: Request | None = None,
    duration_s: float | None = None,
    requests: Sequence[Request] | None = None,
    timeout_s: float = 30.0,
) -> LoadResult:
    """Send ``request`` from ``connections`` threads for ``duration_s`` seconds, or each of
    ``requests`` once, spread over the threads; all threads start together."""
    if (request is None) == (requests is None):
        raise ValueError("give either request (with duration_s) or requests")
    if request is not None and duration_s is None:
        raise ValueError("request needs duration_s")
    lock = threading.Lock()
    queue = list(reversed(requests or []))
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    reconnects = [0]
    start = threading.Barrier(connections + 1)
    deadline = [0.0]

    def next_request() -> Request | None:
        if request is not None:
            return request if time.perf_counter() < deadline[0] else None
        with lock:
            return queue.pop() if queue else None

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
        mine: list[float] = []
        my_status: Counter[int] = Counter()
        my_errors: list[str] = []
        fresh = 0
        start.wait()
        try:
            while (req := next_request()) is not None:
                t0 = time.perf_counter()
                try:
                    conn.request(req.method, req.path, body=req.body, headers=req.headers)
                    response = conn.getresponse()
                    response.read()
                    status = response.status
                    closing = response.will_close
                except (OSError, http.client.HTTPException) as exc:
                    my_errors.append(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
                    fresh += 1
                    continue
                mine.append(time.perf_counter() - t0)
                my_status[status] += 1
                if closing:  # the server ends the connection after this response
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
                    fresh += 1
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)
                statuses.update(my_status)
                errors.extend(my_errors)
                reconnects[0] += fresh

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    deadline[0] = t0 + (duration_s or 0.0)
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return LoadResult(connections, elapsed, latencies, statuses, errors, reconnects[0])
