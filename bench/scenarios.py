"""The gongji scenarios under Locust, and the profile of the server while one runs."""

from __future__ import annotations

import argparse
import csv
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common import BIN, ROOT, Result, RssSampler, free_port, process, wait_for_port
from cost import CostMeter
from prometheus_client.parser import text_string_to_metric_families


@contextmanager
def profiled(enabled: bool, pid: int, out: Path, scenario: str, seconds: int) -> Iterator[None]:
    """With --profile: py-spy samples the server process while the scenario runs (idle threads left
    out); its collapsed stacks go to <scenario>.folded and a summary to <scenario>.profile.txt."""
    if not enabled:
        yield
        return
    folded = out / f"{scenario}.folded"
    command = [str(BIN / "py-spy"), "record", "--pid", str(pid), "--rate", "250", "--duration", str(seconds)]
    spy = subprocess.Popen(
        [*command, "--format", "raw", "--nonblocking", "--output", str(folded)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        try:
            spy.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
    if folded.exists():
        summary = profile_summary(folded.read_text())
        (out / f"{scenario}.profile.txt").write_text(summary)
        print("\n".join("    " + line for line in summary.splitlines()[:8]), flush=True)


def profile_summary(folded: str, top: int = 25) -> str:
    """The functions most often on top of the stack (self) and anywhere on it (inclusive), as shares of
    all samples, from py-spy's collapsed stacks ("frame;frame;frame count" per line)."""
    own: dict[str, int] = {}
    anywhere: dict[str, int] = {}
    total = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r" \(.*?:\d+\)$", "", f.strip()) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            anywhere[frame] = anywhere.get(frame, 0) + count
    if not total:
        return "no samples\n"

    def rows(counts: dict[str, int]) -> list[str]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [f"{100 * n / total:5.1f} %  {frame}" for frame, n in ranked]

    lines = [f"{total} samples; self (on top of the stack):", *rows(own), ""]
    return "\n".join([*lines, "inclusive (anywhere on the stack):", *rows(anywhere)]) + "\n"


def locust(
    scenario: str,
    user_class: str,
    *,
    host: str,
    users: int,
    seconds: int,
    out: Path,
    env: dict[str, str],
    rss: RssSampler | None,
    rate: float = 0.0,
) -> dict[str, dict[str, str]]:
    """Run one headless Locust scenario; return its stats rows by name."""
    args = [
        str(BIN / "locust"),
        "-f",
        str(ROOT / "bench" / "locustfile.py"),
        "--headless",
        "--only-summary",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{seconds}s",
        "--stop-timeout",
        "5",
        "--host",
        host,
        "--csv",
        str(out / scenario),
        "--csv-full-history",
        "--html",
        str(out / f"{scenario}.html"),
        "--exit-code-on-error",
        "0",
        user_class,
    ]
    run_env = env | {
        "BENCH_RATE": str(rate),
        "BENCH_USERS": str(users),
        "BENCH_SEEN_FILE": str(out / f"{scenario}.seen.json"),
    }
    with process(args, env=run_env, log=out / f"{scenario}.locust.log") as proc:
        deadline = time.monotonic() + seconds + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if rss is not None:
                rss.sample()
            time.sleep(0.5)
    with (out / f"{scenario}_stats.csv").open() as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def result_from(scenario: str, rows: dict[str, dict[str, str]], name: str, users: int, workers: int) -> Result:
    row = rows.get(name) or {}
    return Result(
        scenario=scenario,
        users=users,
        workers=workers,
        requests=int(row.get("Request Count", 0) or 0),
        failures=int(row.get("Failure Count", 0) or 0),
        throughput_rps=float(row.get("Requests/s", 0) or 0),
        p50_ms=float(row.get("50%", 0) or 0),
        p99_ms=float(row.get("99%", 0) or 0),
        p999_ms=float(row.get("99.9%", 0) or 0),
        extra={k: int(r.get("Request Count", 0) or 0) - int(r.get("Failure Count", 0) or 0) for k, r in rows.items()},
    )


def gongji_env(db_url: str, port: int, metrics_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GONGJI_")}
    return env | {
        "GONGJI_DATABASE_URL": db_url,
        "GONGJI_GRPC_LISTEN": f"127.0.0.1:{port}",
        "GONGJI_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "GONGJI_VOUCHER_KEY": secrets.token_urlsafe(48),
        "GONGJI_LOG_FORMAT": "json",
    }


def _settle_histogram(metrics_port: int) -> dict[float, float]:
    """Cumulative counts per upper bound of the server's Settle latency histogram (all workers)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    counts: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "grpc_server_handling_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("grpc_method") == "Settle":
                le = float(sample.labels["le"])
                counts[le] = counts.get(le, 0.0) + sample.value
    return counts


def _quantile_ms(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """Prometheus' histogram_quantile over what happened between two scrapes: linear within the
    bucket the quantile falls in, so only as fine as the buckets (1, 2.5, 5, 10, 25, 50, 100 ms...)."""
    bounds = sorted(after)
    cumulative = [after[b] - before.get(b, 0.0) for b in bounds]
    if not cumulative or cumulative[-1] <= 0:
        return None
    rank = q * cumulative[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return lower * 1000
            return (lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)) * 1000
        lower, below = bound, count
    return None


def server_command(cfg: argparse.Namespace, workers: int) -> tuple[list[str], Path]:
    """`gongji serve` of this tree, or of the checkout whose interpreter --server-python names (its
    own `gongji.cli`, run from that checkout): the same bench against another revision's server."""
    serve = ["serve", "--workers", str(workers)]
    if not cfg.server_python:
        return [str(BIN / "gongji"), *serve], ROOT
    code = "import sys; from gongji.cli import main; sys.exit(main())"
    return [cfg.server_python, "-c", code, *serve], server_checkout(cfg.server_python)


def server_checkout(python: str) -> Path:
    """The checkout an interpreter's gongji comes from (installed editable: <checkout>/src/gongji)."""
    code = "import gongji, pathlib; print(pathlib.Path(gongji.__file__).resolve().parents[2])"
    found = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    return Path(found.stdout.strip())


def run_gongji_scenarios(cfg: argparse.Namespace, db_url: str, out: Path, env: dict[str, str]) -> list[Result]:
    results: list[Result] = []
    for workers in (1, 2):
        port, metrics_port = free_port(), free_port()
        server_env = gongji_env(db_url, port, metrics_port)
        args, cwd = server_command(cfg, workers)
        with process(args, env=server_env, log=out / f"gongji-{workers}w.log", cwd=cwd) as server:
            wait_for_port(port, server)
            host = f"127.0.0.1:{port}"
            plan = [("pharmacy", "PharmacyUser", "Settle")]
            if workers == 1:
                plan += [("app", "AppUser", "Aggregated"), ("hot_family", "HotFamilyUser", "Settle")]
            for name, user_class, row_name in plan:
                scenario = name if workers == 1 else f"{name}_{workers}w"
                rss = RssSampler(server.pid)
                histogram = _settle_histogram(metrics_port)
                with (
                    profiled(cfg.profile and workers == 1, server.pid, out, scenario, cfg.seconds),
                    CostMeter(db_url, server_pid=server.pid, metrics_port=metrics_port) as meter,
                ):
                    rows = locust(
                        scenario, user_class, host=host, users=cfg.users, seconds=cfg.seconds, out=out, env=env, rss=rss
                    )
                r = result_from(scenario, rows, row_name, cfg.users, workers)
                r.rss_mb_per_worker, r.cost = round(rss.max_mb, 1), meter.cost
                if name == "app":
                    r.cost.settlements = None  # reads only: per RPC
                _server_latency(r, histogram, _settle_histogram(metrics_port))
                results.append(r)
                print(
                    f"  {scenario}: {r.throughput_rps:.0f}/s p99 {r.p99_ms:.0f} ms, {r.failures} failures", flush=True
                )
                if scenario == "pharmacy":
                    # The same traffic at half the saturating rate: latency when not at the limit.
                    half = round(r.throughput_rps / 2, 1)
                    rss = RssSampler(server.pid)
                    histogram = _settle_histogram(metrics_port)
                    with (
                        profiled(cfg.profile, server.pid, out, "pharmacy_half_rate", cfg.seconds),
                        CostMeter(db_url, server_pid=server.pid, metrics_port=metrics_port) as meter,
                    ):
                        rows = locust(
                            "pharmacy_half_rate",
                            user_class,
                            host=host,
                            users=cfg.users,
                            seconds=cfg.seconds,
                            out=out,
                            env=env,
                            rss=rss,
                            rate=half,
                        )
                    h = result_from("pharmacy_half_rate", rows, "Settle", cfg.users, workers)
                    h.rss_mb_per_worker, h.note = round(rss.max_mb, 1), f"paced at {half}/s"
                    h.cost = meter.cost
                    _server_latency(h, histogram, _settle_histogram(metrics_port))
                    results.append(h)
                    print(f"  pharmacy_half_rate: {h.throughput_rps:.0f}/s p99 {h.p99_ms:.0f} ms", flush=True)
    return results


def _server_latency(r: Result, before: dict[float, float], after: dict[float, float]) -> None:
    """Settle's server-side p50 and p99 over the scenario (None for scenarios without Settle)."""
    r.server_p50_ms, r.server_p99_ms = _quantile_ms(before, after, 0.5), _quantile_ms(before, after, 0.99)
