"""The report: targets met or not, the Markdown table, the plot over time."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Any

from common import Result


def targets(by: dict[str, Result], books: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """Issues 6's and 16's targets and where each stands (reported, never asserted; None: not measured)."""
    edge, db, uniform = by["edge_ceiling"], by["db_ceiling"], by["pharmacy"]
    half, hot = by["pharmacy_half_rate"], by["hot_family"]
    ratio = uniform.throughput_rps / edge.throughput_rps if edge.throughput_rps else 0.0
    hot_ratio = hot.throughput_rps / uniform.throughput_rps if uniform.throughput_rps else 0.0
    errors = sum(r.failures for r in by.values())
    rss = max(r.rss_mb_per_worker for n, r in by.items() if n not in ("edge_ceiling", "db_ceiling"))
    half_server = f" (server's own: {half.server_p99_ms:.0f} ms)" if half.server_p99_ms is not None else ""
    cost = _per(uniform)
    return [
        ("Settle throughput >= 0.5 x edge ceiling", f"{ratio:.2f} x ({uniform.throughput_rps:.0f}/s)", ratio >= 0.5),
        ("p99 <= 50 ms at saturation", f"{uniform.p99_ms:.0f} ms", uniform.p99_ms <= 50),
        ("p99 <= 20 ms at half the saturating rate", f"{half.p99_ms:.0f} ms{half_server}", half.p99_ms <= 20),
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
        *_cost_targets(cost, server_cpu_ratio(by)),
        ("(for scale) DB ceiling, settlements/s", f"{db.throughput_rps:.0f}/s", True),
    ]


def _cost_targets(cost: dict[str, float | None], cpu_ratio: float | None) -> list[tuple[str, str, bool | None]]:
    """Issue 16's, on the pharmacy scenario."""
    pg, trips, writing = cost.get("postgres_us"), cost.get("round_trips"), cost.get("writing_commits")
    trips_per_rpc = cost.get("round_trips_per_rpc")

    def met(value: float | None, limit: float) -> bool | None:
        return None if value is None else value <= limit

    return [
        (
            "server CPU per settlement <= 2.0 x the bare server's (moonshot 1.5 x)",
            "not measured" if cpu_ratio is None else f"{cpu_ratio:.2f} x",
            met(cpu_ratio, 2.0),
        ),
        (
            "PostgreSQL CPU per settlement <= 1,200 µs (moonshot 800 µs)",
            "unavailable" if pg is None else f"{pg:,.0f} µs",
            met(pg, 1200),
        ),
        # A settlement is two RPCs (IssueVoucher, Settle) plus its share of Quote and Cancel: one round
        # trip per RPC is the target, which per settlement reads as 2 plus that share.
        (
            "round trips per settlement <= 2 (one per RPC)",
            f"{_num(trips, 2)} per settlement, {_num(trips_per_rpc, 2)} per RPC",
            met(trips_per_rpc, 1.0),
        ),
        # The pharmacy mix refunds 5 calls in 85 settlements, each refund a writing commit of its own.
        (
            "writing commits per settlement = 1 (refunds' own on top: 5 per 85 settlements)",
            _num(writing, 2),
            met(writing, 1 + 5 / 85 + 0.01),
        ),
    ]


def _per(r: Result | None) -> dict[str, float | None]:
    return r.cost.per_settlement() if r is not None and r.cost is not None else {}


def server_cpu_ratio(by: dict[str, Result]) -> float | None:
    """The server's CPU per settlement in `pharmacy` over the bare server's in `edge_ceiling`."""
    gongji, bare = _per(by.get("pharmacy")).get("server_us"), _per(by.get("edge_ceiling")).get("server_us")
    return gongji / bare if gongji is not None and bare else None


def _num(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def cost_table(results: list[Result]) -> list[str]:
    """The second table: CPU and database work per settlement, and what the figures mean."""
    lines = [
        "CPU and database work per settlement (CPU in µs of user + system time; `app` per RPC):",
        "",
        "| scenario | server µs/settle | server µs/RPC | PostgreSQL µs/settle | PG background µs/settle |"
        " load generator µs/settle | round trips/settle | round trips/RPC | commits/settle |"
        " writing commits/settle | WAL bytes/settle |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    sources: set[str] = set()
    unavailable: set[str] = set()
    for r in results:
        if r.cost is None:
            continue
        c = r.cost.per_settlement()
        sources |= {r.cost.round_trips_source} - {""}
        unavailable |= {r.cost.postgres_unavailable} - {""}
        name = r.scenario + (" (per RPC)" if r.cost.settlements is None else "")
        lines.append(
            f"| {name} | {_num(c['server_us'])} | {_num(c['server_us_per_rpc'])} | {_num(c['postgres_us'])} | "
            f"{_num(c['postgres_background_us'])} | {_num(c['load_us'])} | {_num(c['round_trips'], 2)} | "
            f"{_num(c['round_trips_per_rpc'], 2)} | "
            f"{_num(c['commits'], 2)} | {_num(c['writing_commits'], 2)} | {_num(c['wal_bytes'])} |"
        )
    ratio = server_cpu_ratio({r.scenario: r for r in results})
    lines += [
        "",
        f"Server CPU x bare server: {_num(ratio, 2) or 'not measured'} (pharmacy's server µs per settlement over"
        " the bare server's in edge_ceiling, this run).",
        "",
        "- A settlement in the pharmacy scenarios is IssueVoucher + Settle, with its share of the Quote and"
        " Cancel calls; in edge_ceiling the same calls answered at once; in db_ceiling one pgbench transaction"
        " (read what issuing a voucher reads, settle). Settlements are the Settle calls the server counted"
        " (grpc_server_handled_total), Locust's for edge_ceiling, pgbench's for db_ceiling.",
        "- Server: `gongji serve` and its workers (the bare server for edge_ceiling). PostgreSQL: the client"
        " backends of the bench database; PG background: checkpointer, walwriter, autovacuum and the other"
        " non-client processes, cluster-wide. Load generator: Locust (with its start-up) or pgbench.",
        f"- Round trips are {' / '.join(sorted(sources)) or 'not measured'}; every gongji statement runs outside"
        " a transaction block, so a transaction is a round trip (a connection's reset on release is one too).",
        "- Writing commits (transaction ids assigned) and WAL bytes are cluster-wide: they include anything else"
        " the cluster did in the window.",
    ]
    lines += [f"- PostgreSQL's CPU is unavailable: {why}." for why in sorted(unavailable)]
    return lines


def markdown(meta: dict[str, Any], results: list[Result], checks: list[tuple[str, str, bool | None]]) -> str:
    edge = next(r.throughput_rps for r in results if r.scenario == "edge_ceiling") or 1.0
    db = next(r.throughput_rps for r in results if r.scenario == "db_ceiling") or 1.0
    lines = [
        f"Run {meta['started']} on {meta['machine']}; {meta['people']} people, {meta['users']} Locust users, "
        f"{meta['seconds']} s per scenario. Command: `{meta['command']}`. Server: {meta['server']}.",
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
    lines += ["", *cost_table(results)]
    lines += ["", "| target | where it stands | met |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {_met(ok)} |" for name, value, ok in checks]
    return "\n".join(lines) + "\n"


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else "yes" if ok else "**no**"


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
