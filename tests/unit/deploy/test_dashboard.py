"""The Grafana dashboard as an export for sharing: it imports into any Grafana (the data source is an
`__inputs` entry and a `datasource` variable, never a literal uid), every panel filters by the `job`
and `namespace` variables, its structure is one Grafana's dashboard model knows, and the bundled
Grafana of compose.yaml still provisions it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import DASHBOARD, DEPLOY, compose, dashboard_queries, documents, metric_names

# What the dashboard model of Grafana 11.1 (grafana-foundation-sdk, generated from Grafana's schema
# kinds) does not carry, although Grafana writes it: a query variable's `definition` (the query as
# the variable editor shows it).
_UI_ONLY = {"definition"}
_SELECTOR = re.compile(r"\b((?:gongji|grpc_server)_\w+)(\{[^}]*\})?")


def _board() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def _variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in _board()["templating"]["list"]}


def _datasource_refs(node: object) -> list[dict[str, Any]]:
    """Every `datasource` object in the dashboard, wherever it is."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            found.append(node["datasource"])
        for value in node.values():
            found += _datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            found += _datasource_refs(value)
    return found


def test_the_data_source_is_an_input_and_a_variable_never_a_literal_uid() -> None:
    board = _board()
    (ds_input,) = board["__inputs"]
    assert ds_input["type"] == "datasource" and ds_input["pluginId"] == "prometheus"
    assert ds_input["name"] == "DS_PROMETHEUS"
    text = DASHBOARD.read_text()
    assert set(re.findall(r"\$\{(DS_\w+)\}", text)) == {i["name"] for i in board["__inputs"]}, "inputs = references"
    datasource = _variables()["datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    # Imported through the UI or the HTTP API, the chosen data source replaces ${DS_PROMETHEUS} and so
    # becomes the variable's default; provisioned, the variable takes its first option instead.
    assert datasource["current"]["value"] == "${DS_PROMETHEUS}"
    refs = _datasource_refs(board)
    assert len(refs) >= len(board["panels"]) + len(dashboard_queries())
    assert all(r == {"type": "prometheus", "uid": "${datasource}"} for r in refs), refs


def test_job_and_namespace_variables_filter_every_query() -> None:
    variables = _variables()
    for name in ("job", "namespace"):
        v = variables[name]
        assert v["type"] == "query" and v["datasource"]["uid"] == "${datasource}"
        query = v["query"]["query"]
        assert re.fullmatch(rf"label_values\((\w+)(\{{[^}}]*\}})?, {name}\)", query), query
        assert re.match(r"label_values\((gongji_\w+)", query), "a gongji metric: only gongji's jobs are offered"
        # All by default; All matches series without the label too (compose has no namespace).
        assert v["includeAll"] and v["allValue"] == ".*"
    for expr in dashboard_queries():
        selectors = _SELECTOR.findall(expr)
        assert {name for name, _ in selectors} == metric_names(expr), expr
        for name, matchers in selectors:
            assert 'job=~"$job"' in matchers and 'namespace=~"$namespace"' in matchers, f"{name} in {expr}"


def test_requires_name_grafana_the_data_source_and_every_panel_type() -> None:
    board = _board()
    required = {(r["type"], r["id"]) for r in board["__requires"]}
    assert ("grafana", "grafana") in required and ("datasource", "prometheus") in required
    assert {("panel", p["type"]) for p in board["panels"]} <= required
    assert board["id"] is None, "an export carries no instance's numeric id"


def _lost(ours: object, kept: object, path: str = "") -> list[str]:
    """The keys of `ours` that `kept` (the same dashboard after a trip through the model) dropped."""
    if isinstance(ours, dict) and isinstance(kept, dict):
        lost = [f"{path}/{k}" for k, v in ours.items() if k not in kept and v is not None and k not in _UI_ONLY]
        return lost + [x for k, v in ours.items() if k in kept for x in _lost(v, kept[k], f"{path}/{k}")]
    if isinstance(ours, list) and isinstance(kept, list):
        assert len(ours) == len(kept), path
        return [x for i, (a, b) in enumerate(zip(ours, kept, strict=True)) for x in _lost(a, b, f"{path}[{i}]")]
    assert ours == kept, f"{path}: {ours!r} became {kept!r}"
    return []


def test_grafanas_dashboard_model_knows_every_field() -> None:
    """Grafana's own dashboard model (grafana-foundation-sdk for Grafana 11.1, generated from the
    dashboard schema kinds, with the timeseries panel and Prometheus query models) decodes the
    dashboard and encodes it again; a field it does not know (a typo, a field of another panel type or
    version) is dropped on the way and named here. The export envelope (`__inputs`, `__requires`,
    `__elements`) is what import strips before the model sees the dashboard."""
    pytest.importorskip("grafana_foundation_sdk", reason="not installed (pyproject's test extra installs it)")
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    plugins.register_default_plugins()
    ours = {k: v for k, v in _board().items() if not k.startswith("__")}
    kept = json.loads(json.dumps(Dashboard.from_json(ours), cls=JSONEncoder))
    assert _lost(ours, kept) == []


def test_the_bundled_grafana_provisions_it() -> None:
    """compose.yaml's Grafana loads the file as it is (provisioning does not resolve `__inputs`): the
    datasource variable takes its first option, the one Prometheus provisioned there."""
    mounts = compose()["services"]["grafana"]["volumes"]
    (board_mount,) = [m for m in mounts if m.startswith("./grafana/gongji.json:")]
    (provider,) = documents(DEPLOY / "grafana" / "provisioning" / "dashboards" / "gongji.yml")[0]["providers"]
    assert Path(board_mount.split(":")[1]).parent == Path(provider["options"]["path"])
    (datasource,) = documents(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")[0]["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    queries = dashboard_queries()
    assert len(queries) >= 8
    assert all(metric_names(q) for q in queries), "every panel reads a gongji metric"
    assert yaml.safe_load(DASHBOARD.read_text())["uid"] == "gongji"
