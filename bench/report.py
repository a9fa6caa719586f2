"""The report: targets met or not, the Markdown table, the plot over time."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Any

from common import Result


def targets(by: dict[str, Result], books: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Issue 6's targets and where each stands (reported, never asserted)."""
    edge, db, uniform = by["edge_ceiling"], by["db_ceiling"], by["pharmacy"]
    half, hot = by["pharmacy_half_rate"], by["hot_family"]
    ratio = uniform.throughput_rps / edge.throughput_rps if edge.throughput_rps else 0.0
    hot_ratio = hot.throughput_rps / uniform.throughput_rps if uniform.throughput_rps else 0.0
    errors = sum(r.failures for r in by.values())
    rss = max(r.rss_mb_per_worker for n, r in by.items() if n not in ("edge_ceiling", "db_ceiling"))
    return [
        ("Settle throughput >= 0.5 x edge ceiling", f"{ratio:.2f} x ({uniform.throughput_rps:.0f}/s)", ratio >= 0.5),
        ("p99 <= 50 ms at saturation", f"{uniform.p99_ms:.0f} ms", uniform.p99_ms <= 50),
        ("p99 <= 20 ms at half the saturating rate", f"{half.p99_ms:.0f} ms", half.p99_ms <= 20),
        ("hot family >= 0.8 x uniform", f"{hot_ratio:.2f} x ({hot.throughput_rps:.0f}/s)", hot_ratio >= 0.8),
        ("zero errors", f"{errors} failed requests", errors == 0),
        ("zero audit differences", f"{len(books['audit_differences'])}", books["audit_exit_code"] == 0),
        (
            "every answered success exactly once in the books",
            f"{books['seen_settlements_in_books']} of {books['settlements_answered']} settlements, "
            f"{books['seen_refunds_in_books']} of {books['refunds_answered']} refunds",
            bool(books["exactly_once"]),
        ),
        ("server RSS <= 200 MB per worker", f"{rss:.0f} MB", rss <= 200),
        ("(for scale) DB ceiling, settlements/s", f"{db.throughput_rps:.0f}/s", True),
    ]


def markdown(meta: dict[str, Any], results: list[Result], checks: list[tuple[str, str, bool]]) -> str:
    edge = next(r.throughput_rps for r in results if r.scenario == "edge_ceiling") or 1.0
    db = next(r.throughput_rps for r in results if r.scenario == "db_ceiling") or 1.0
    lines = [
        f"Run {meta['started']} on {meta['machine']}; {meta['people']} people, {meta['users']} Locust users, "
        f"{meta['seconds']} s per scenario. Command: `{meta['command']}`.",
        "",
        "| scenario | workers | req/s | p50 ms | p99 ms | p99.9 ms | server p50 / p99 ms | failures |"
        " RSS MB/worker | x edge | x DB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        server = (
            f"{r.server_p50_ms:.1f} / {r.server_p99_ms:.1f}"
            if r.server_p50_ms is not None and r.server_p99_ms is not None
            else ""
        )
        lines.append(
            f"| {r.scenario} | {r.workers} | {r.throughput_rps:.0f} | {r.p50_ms:.0f} | {r.p99_ms:.0f} | "
            f"{r.p999_ms:.0f} | {server} | {r.failures} | {r.rss_mb_per_worker:.0f} | "
            f"{r.throughput_rps / edge:.2f} | {r.throughput_rps / db:.2f} |"
        )
    lines += ["", "| target | where it stands | met |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in checks]
    return "\n".join(lines) + "\n"


def _history(path: Path) -> tuple[list[int], list[float], list[float]]:
    """Seconds, Settle (or all) requests per second, and current p99 from a Locust history CSV.

    Per-name rows carry cumulative counts only: the rate is their change per second. The current
    p99 is on the aggregated rows."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    name = "Settle" if any(r["Name"] == "Settle" for r in rows) else "Aggregated"
    counted = [r for r in rows if r["Name"] == name]
    p99 = {r["Timestamp"]: r["99%"] for r in rows if r["Name"] == "Aggregated"}
    xs: list[int] = []
    rates: list[float] = []
    tails: list[float] = []
    for before, now in itertools.pairwise(counted):
        seconds = int(now["Timestamp"]) - int(before["Timestamp"])
        if seconds <= 0:
            continue
        xs.append(int(now["Timestamp"]) - int(counted[0]["Timestamp"]))
        rates.append((int(now["Total Request Count"]) - int(before["Total Request Count"])) / seconds)
        value = p99.get(now["Timestamp"], "")
        tails.append(float(value) if value not in ("", "N/A") else 0.0)
    return xs, rates, tails


def plot(out: Path, scenarios: list[str]) -> None:
    """Throughput and p99 over time, one line per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for scenario in scenarios:
        path = out / f"{scenario}_stats_history.csv"
        if path.exists():
            xs, rates, tails = _history(path)
            top.plot(xs, rates, label=scenario)
            bottom.plot(xs, tails, label=scenario)
    top.set_ylabel("Settle/s (app: requests/s)")
    bottom.set_ylabel("p99 ms (all requests)")
    bottom.set_xlabel("seconds into the scenario")
    top.legend(fontsize=8)
    top.set_title("gongji under Locust: throughput and p99 over time")
    fig.tight_layout()
    fig.savefig(out / "throughput_p99.png", dpi=100)
