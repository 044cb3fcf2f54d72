"""The plots of ``make bench`` (matplotlib, PNG) from a ``stack.py`` result:

- ``ratios.png``: each benchmark's ratio against its target (time ratios: lower is better;
  throughput ratios: higher is better);
- ``p3_latency.png``: status-poll latency distributions (CDF), system vs baseline, per
  connection count;
- ``p4_latency.png``: webhook-burst latency distributions (CDF);
- ``p2_throughput.png``: boxes per second against the number of boxes (and servers).

    .venv/bin/python bench/plots.py [bench/results/latest.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SYSTEM, BASELINE = "#d1495b", "#2e86ab"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cdf(ax: Any, values: list[float], label: str, color: str) -> None:
    ordered = sorted(values)
    if not ordered:
        return
    n = len(ordered)
    ax.plot(ordered, [(i + 1) / n for i in range(n)], label=label, color=color)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_ratios(results: dict[str, Any], out: Path) -> Path:
    plt = _plt()
    rows = results["rows"]
    groups = [
        ("time", "time ratio: system / baseline (lower is better)"),
        ("rate", "throughput ratio: system / baseline (higher is better)"),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (kind, title) in zip(axes, groups, strict=True):
        chosen = [r for r in rows if r["kind"] == kind]
        names = [r["key"] for r in chosen]
        ratios = [r["ratio"] for r in chosen]
        colors = ["#3c9d5d" if r["met"] else SYSTEM for r in chosen]
        bars = ax.bar(names, ratios, color=colors)
        for i, r in enumerate(chosen):
            ax.hlines(r["target_value"], i - 0.4, i + 0.4, colors="black", linestyles="--")
        for bar, value in zip(bars, ratios, strict=True):
            ax.annotate(
                f"{value:.2f}x",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_title(title, fontsize=10)
        ax.axhline(1.0, color="grey", linewidth=0.5)
        ax.set_ylabel("ratio")
    fig.suptitle(
        f"Issue 13 benchmarks on the make-run stack ({results['timestamp']}); "
        "dashed: target; green: target met",
        fontsize=10,
    )
    return _save(plt, fig, out / "ratios.png")


def plot_p3(results: dict[str, Any], out: Path) -> Path:
    plt = _plt()
    levels = results["p3"]["levels"]
    fig, axes = plt.subplots(1, len(levels), figsize=(4.5 * len(levels), 4), squeeze=False)
    for ax, (conns, level) in zip(axes[0], levels.items(), strict=True):
        s, b = level["system"], level["baseline"]
        _cdf(ax, level["system_latencies_ms"], f"system {s['rps']:.0f} req/s", SYSTEM)
        _cdf(ax, level["baseline_latencies_ms"], f"baseline {b['rps']:.0f} req/s", BASELINE)
        ax.set_xscale("log")
        ax.axhline(0.99, color="grey", linewidth=0.5, linestyle=":")
        ax.set_title(f"{conns} connection(s): p99 {s['p99_ms']:.0f} vs {b['p99_ms']:.0f} ms")
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("fraction of requests")
        ax.legend(fontsize=8)
    fig.suptitle("P3 status poll latency (CDF)", fontsize=10)
    return _save(plt, fig, out / "p3_latency.png")


def plot_p4(results: dict[str, Any], out: Path) -> Path:
    plt = _plt()
    p = results["p4"]
    fig, ax = plt.subplots(figsize=(6, 4))
    s, b = p["system"], p["baseline"]
    _cdf(
        ax, p["system_latencies_ms"], f"system {s['rps']:.0f} req/s, p99 {s['p99_ms']:.0f}", SYSTEM
    )
    _cdf(
        ax,
        p["baseline_latencies_ms"],
        f"baseline {b['rps']:.0f} req/s, p99 {b['p99_ms']:.0f}",
        BASELINE,
    )
    ax.axvline(100, color="black", linestyle="--", linewidth=0.8, label="target p99 100 ms")
    ax.axhline(0.99, color="grey", linewidth=0.5, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_title(
        f"P4 webhook burst: {p['deliveries']} deliveries ({p['duplicates']} duplicates), "
        f"{p['connections']} conn",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    return _save(plt, fig, out / "p4_latency.png")


def plot_p2(results: dict[str, Any], out: Path) -> Path:
    plt = _plt()
    parts = sorted((v for k, v in results.items() if k.startswith("p2_")), key=lambda v: v["boxes"])
    counts = [p["boxes"] for p in parts]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(counts, [p["system_boxes_per_s"] for p in parts], "o-", color=SYSTEM, label="system")
    ax.plot(
        counts,
        [p["baseline_boxes_per_s"] for p in parts],
        "o-",
        color=BASELINE,
        label=f"baseline ({parts[0]['concurrency']}-thread pool)" if parts else "baseline",
    )
    ax.set_xlabel("boxes (each on its own sshd server)")
    ax.set_ylabel("boxes running per second")
    ax.set_xticks(counts)
    ax.set_ylim(bottom=0)
    ax.set_title("P2 provisioning throughput against box count", fontsize=10)
    ax.legend(fontsize=8)
    return _save(plt, fig, out / "p2_throughput.png")


def plot_fleet(results: dict[str, Any], out: Path) -> Path:
    """Issue 15's fleet run (``bench/fleet.py``): boxes running over time, the paid-to-running
    distribution (CDF), and where the time of a box goes (mean wait and run per step)."""
    plt = _plt()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.5))
    times = results["running_over_time_s"]
    ax1.step(times, range(1, len(times) + 1), where="post", color=SYSTEM, label="running")
    samples = results.get("samples") or []
    busy = [(s["t"], s["machine_busy_cores"]) for s in samples if s.get("machine_busy_cores")]
    if busy:
        ax1b = ax1.twinx()
        ax1b.plot([t for t, _ in busy], [c for _, c in busy], color=BASELINE, alpha=0.6, lw=1)
        ax1b.set_ylabel("machine CPU busy (cores, all processes)", color=BASELINE)
        ax1b.set_ylim(bottom=0)
    ax1.set_xlabel("seconds since the webhook burst began")
    ax1.set_ylabel("boxes running")
    tp = results["throughput"]
    ax1.set_title(f"{results['running']}/{results['boxes']} boxes, {tp['boxes_per_s']} boxes/s")
    latencies = results["paid_to_running_samples_s"]
    _cdf(ax2, latencies, "paid -> running", SYSTEM)
    p = results["paid_to_running_s"]
    for key, style in (("p50", "--"), ("p99", ":")):
        if key in p:
            ax2.axvline(p[key], color="grey", ls=style, label=f"{key} {p[key]:.1f} s")
    ax2.set_xlabel("seconds (payment_events.received_at -> mark_running finished)")
    ax2.set_ylabel("share of boxes")
    ax2.set_title("paid-to-running")
    ax2.legend(loc="lower right")
    steps = results["steps"]
    names = list(steps)
    waits = [steps[n]["wait"].get("mean", 0.0) for n in names]
    runs = [steps[n]["run"].get("mean", 0.0) for n in names]
    ax3.barh(names, waits, color=BASELINE, label="wait (queue, hop)")
    ax3.barh(names, runs, left=waits, color=SYSTEM, label="run")
    ax3.invert_yaxis()
    ax3.set_xlabel("mean seconds per box")
    ax3.set_title("where the time goes")
    ax3.legend(loc="lower right")
    return _save(plt, fig, out)


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    written = []
    if results.get("rows"):
        written.append(plot_ratios(results, out))
    if "p3" in results:
        written.append(plot_p3(results, out))
    if "p4" in results:
        written.append(plot_p4(results, out))
    if any(k.startswith("p2_") for k in results):
        written.append(plot_p2(results, out))
    return written


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results" / "latest.json"
    for written_path in write_plots(json.loads(source.read_text()), source.parent):
        print(written_path)
