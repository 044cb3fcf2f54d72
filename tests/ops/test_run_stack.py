"""`make run`'s stack for real: API, worker, beat and Flower start, answer, and stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(
    url: str, timeout: float, proc: subprocess.Popen[bytes], log: Path
) -> requests.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"stack exited early:\n{log.read_text()[-3000:]}"
        try:
            response = requests.get(url, timeout=10)
            if response.status_code < 500:
                return response
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_run_serves_api_docs_and_flower_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    port, flower_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "FLOWER_PORT": str(flower_port),
        "VIBEBOX_ENV": "development",
        "VIBEBOX_DEMO": "0",  # the offline demo has its own test (test_offline_demo.py)
        "WEB_CONCURRENCY": "1",
        "WORKER_CONCURRENCY": "1",
        # the stack's own metric files; a stale one from an "earlier run" must be cleared
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
    }
    (tmp_path / "prometheus").mkdir()
    (tmp_path / "prometheus" / "counter_1.db").write_bytes(b"stale, not a metrics file")
    env.pop("METRICS_TOKEN", None)  # development without a token: /readyz?workers=1 is open
    log = tmp_path / "stack.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "scripts/run.py", "serve"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        assert _wait_http(f"{base}/healthz", 90, proc, log).json() == {"status": "ok"}
        docs = requests.get(f"{base}/docs", timeout=5)
        assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text
        assert requests.get(f"{base}/docs/assets/swagger-ui-bundle.js", timeout=5).ok
        spec = requests.get(f"{base}/openapi.json", timeout=5).json()
        assert "/api/vibeboxes/{box_id}/control" in spec["paths"]
        ready = _wait_http(f"{base}/readyz?workers=1", 60, proc, log)
        assert ready.status_code == 200, ready.text
        # gunicorn's worker counted the requests in the shared directory; /metrics merges it
        metrics = requests.get(f"{base}/metrics", timeout=10)
        assert metrics.status_code == 200, metrics.text
        assert 'vibebox_http_requests_total{endpoint="health.' in metrics.text
        assert "vibebox_boxes{" in metrics.text
        flower = _wait_http(f"http://127.0.0.1:{flower_port}/", 60, proc, log)
        assert flower.status_code == 200 and "Flower" in flower.text
        banner = log.read_text()
        assert f"{base}/docs" in banner and f":{flower_port}" in banner
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert _port_closed(port) and _port_closed(flower_port)
    leftover = subprocess.run(
        ["pgrep", "-s", str(proc.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert leftover == [], f"processes left in the stack's session: {leftover}"
