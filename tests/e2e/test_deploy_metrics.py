"""The Grafana dashboard and the alert rules read only series that a real `gongji serve` exports, as
its /metrics page shows them after a settlement."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request

from deploy_support import DASHBOARD, DEPLOY, dashboard_queries, documents, metric_names
from e2e_support import GONGJI, ROOT, serve, stop

_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}


def _exported(text: str) -> set[str]:
    """Every series name the scrape offers: its samples, and for each family declared by `# TYPE` the
    names of its samples (a labelled family declares itself before its first observation)."""
    names = {m for m in re.findall(r"^([a-zA-Z_:][\w:]*)[{ ]", text, re.MULTILINE)}
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        base = family.removesuffix("_total") if kind == "counter" else family
        names |= {family} | {base + s for s in _SUFFIXES.get(kind, ())}
    return names


def test_dashboard_and_rules_read_only_what_gongji_exports(env: dict[str, str]) -> None:
    proc = serve(env)
    try:
        subprocess.run(
            [GONGJI, "client", "--target", env["GONGJI_GRPC_LISTEN"], "settle", "--patient", "demo:xiaoli",
             "--amount-fen", "100"],
            env=env, cwd=ROOT, check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        with urllib.request.urlopen(f"http://{env['GONGJI_METRICS_LISTEN']}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    finally:
        stop(proc)
    exported = _exported(text)
    assert "gongji_settle_lock_wait_seconds_bucket" in exported

    used = {name for q in dashboard_queries() for name in metric_names(q)}
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    used |= {re.findall(r"label_values\((\w+)", v["query"]["query"])[0] for v in variables if v["type"] == "query"}
    assert used, "the dashboard reads metrics"
    assert used - exported == set()

    (rules,) = documents(DEPLOY / "prometheus" / "gongji-rules.yml")
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    read = {name for g in rules["groups"] for r in g["rules"] for name in metric_names(r["expr"])}
    assert read - recorded - exported == set()
