"""Reading the deployment files under deploy/ for the tests: YAML documents, containers, env names, and
the metric names a PromQL expression reads."""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "gongji.json"


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in documents(p) if "kind" in d and "apiVersion" in d]


def k8s_object(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in k8s_objects() if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} found"
    return found[0]


def tool(name: str) -> str | None:
    """A command-line tool: the one the virtual environment installs (pyproject's test extra), else PATH's."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """A pod spec's init containers, then its containers."""
    return [*spec.get("initContainers", []), *spec["containers"]]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec in deploy/k8s, with the name of the object that holds it."""
    for o in k8s_objects():
        template = o.get("spec", {}).get("template", {})
        if "containers" in template.get("spec", {}):
            yield o["metadata"]["name"], template["spec"]


def compose() -> dict[str, Any]:
    (doc,) = documents(DEPLOY / "compose.yaml")
    assert isinstance(doc, dict)
    return doc


def dockerfile_env() -> dict[str, str]:
    """The ENV of the runtime stage (the last one)."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    last_stage = text.rsplit("\nFROM ", 1)[1]
    env: dict[str, str] = {}
    for line in last_stage.splitlines():
        if line.startswith("ENV "):
            env |= dict(re.findall(r"(\w+)=(\S+)", line))
    return env


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


def metric_names(promql: str) -> set[str]:
    """The series names an expression reads: identifiers that are not functions, aggregation labels,
    keywords, label matchers, ranges, strings or numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', promql)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, $__rate_interval
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if not call and name not in _KEYWORDS and not re.fullmatch(r"(?i)inf|nan|e\d*", name):
            names.add(name)
    return names
