"""A real Prometheus scrapes a real `gongji serve` under a short load; the queries an SRE writes, and
the alert rules, are checked through Prometheus's own HTTP API and promtool."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e_support import ROOT, free_port, serve, stop
from support import bearer

from gongji import demo
from gongji.v1 import family_pb2, family_pb2_grpc, settlement_pb2, settlement_pb2_grpc

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
RULES = ROOT / "deploy" / "prometheus"
_MISSING = "not installed (Debian package prometheus; .ci/run installs it)"

Series = list[dict[str, Any]]


@pytest.mark.skipif(PROMTOOL is None, reason=f"promtool {_MISSING}")
@pytest.mark.parametrize(
    "command", [["check", "rules", "gongji-rules.yml"], ["test", "rules", "gongji-rules.test.yml"]]
)
def test_promtool_accepts_the_alert_rules(command: list[str]) -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *command], cwd=RULES, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def prometheus(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """Prometheus on a free loopback port, scraping gongji's metrics port every second, with the rules."""
    assert PROMETHEUS is not None
    config = {  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES / "gongji-rules.yml")],
        "scrape_configs": [{"job_name": "gongji", "static_configs": [{"targets": [env["GONGJI_METRICS_LISTEN"]]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    url = f"http://127.0.0.1:{free_port()}"
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address={url.removeprefix('http://')}",
            ],
            stdout=log,
            stderr=log,
        )
    try:
        _wait_ready(url, proc, tmp_path / "prometheus.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(150):  # bounded: at most about 30 s
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("prometheus did not become ready:\n" + log.read_text())


def _api(url: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}/api/v1/{path}{query}", timeout=10) as reply:
        body = json.loads(reply.read())
    assert body["status"] == "success", body
    return body["data"]


def _query_until(url: str, promql: str, wanted: Callable[[Series], bool]) -> Series:
    """Query until the result is what we want; bounded (about 30 s) because scrapes come every second."""
    result: Series = []
    for _ in range(60):
        result = _api(url, "query", query=promql)["result"]
        if wanted(result):
            return result
        time.sleep(0.5)
    raise AssertionError(f"{promql} never gave the expected series: {result}")


def _load(env: dict[str, str], *, calls_max: int = 60, seconds_max: float = 10.0) -> int:
    """A short POS load, bounded in calls and time, spread over several scrapes: settlements, quotes,
    and now and then someone else's e-voucher (a real-name mismatch)."""
    tokens = json.loads((Path(env["GONGJI_DATA_DIR"]) / "demo-tokens.json").read_text())
    patient, other = demo.XIAOLI.person_id, demo.XIAOMING.person_id
    sent = 0
    started = time.monotonic()
    with grpc.insecure_channel(env["GONGJI_GRPC_LISTEN"]) as ch:
        family = family_pb2_grpc.FamilyServiceStub(ch)
        settlement = settlement_pb2_grpc.SettlementServiceStub(ch)

        def voucher(person: str) -> str:
            request = family_pb2.IssueVoucherRequest(person_id=person, requester_id=person)
            return str(family.IssueVoucher(request, metadata=bearer(tokens["app"]), timeout=10).voucher)

        while sent < calls_max and time.monotonic() - started < seconds_max:
            holder = other if sent % 10 == 9 else patient
            request = settlement_pb2.SettleRequest(
                request_id=f"load-{uuid.uuid4()}", voucher=voucher(holder), patient_id=patient, amount_fen=1
            )
            code = grpc.StatusCode.OK
            try:
                settlement.Settle(request, metadata=bearer(tokens["terminal"]), timeout=10)
            except grpc.RpcError as exc:
                code = exc.code()
            assert code == (grpc.StatusCode.OK if holder == patient else grpc.StatusCode.PERMISSION_DENIED)
            sent += 1
            time.sleep(0.1)
    return sent


def _has(series: Series, *, positive: bool = False, **labels: str) -> bool:
    """A series with these labels and a finite value (above zero, if asked)."""
    for s in series:
        value = float(s["value"][1])
        matches = all(s["metric"].get(k) == v for k, v in labels.items())
        if matches and math.isfinite(value) and (value > 0 or not positive):
            return True
    return False


@pytest.mark.skipif(PROMETHEUS is None, reason=f"prometheus {_MISSING}")
def test_prometheus_answers_the_sre_queries(env: dict[str, str], prometheus: str) -> None:
    url = prometheus
    proc = serve(env)
    try:
        assert _load(env) >= 20
        # Settlements went on through every scrape, so their rate is positive; refusals came now and
        # then, so their series is there but its rate may be zero at the moment of the query.
        _query_until(
            url,
            "sum by (grpc_method, grpc_code)"
            ' (rate(grpc_server_handled_total{grpc_service="gongji.v1.SettlementService"}[1m]))',
            lambda s: (
                _has(s, grpc_method="Settle", grpc_code="OK", positive=True)
                and _has(s, grpc_method="Settle", grpc_code="PERMISSION_DENIED")
            ),
        )
        _query_until(
            url,
            "histogram_quantile(0.99, sum by (le, grpc_method)"
            ' (rate(grpc_server_handling_seconds_bucket{grpc_service="gongji.v1.SettlementService"}[1m])))',
            lambda s: _has(s, grpc_method="Settle"),
        )
        _query_until(
            url,
            "sum by (institution) (increase(gongji_real_name_mismatches_total[1m])) > 0",
            lambda s: _has(s, institution=demo.INSTITUTION_ID),
        )
        _query_until(url, "gongji:settle_lock_wait_seconds:p99_rate5m", lambda s: _has(s, lock="account"))
        _query_until(url, "gongji_db_pool_max_connections", lambda s: _has(s, job="gongji"))
        rules = [r for g in _api(url, "rules")["groups"] for r in g["rules"]]
        assert len(rules) == 20
        assert {r["health"] for r in rules} == {"ok"}, [(r["name"], r.get("lastError")) for r in rules]
    finally:
        stop(proc)
