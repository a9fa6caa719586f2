"""Write deploy/k8s/prometheusrule.yaml from deploy/prometheus/gongji-rules.yml, or check it is current.

The alert and recording rules have one source, gongji-rules.yml: the compose Prometheus loads it as a
rule file, promtool checks and unit-tests it, and the Prometheus operator gets the same groups as a
PrometheusRule (monitoring.coreos.com/v1), whose `spec` is a rule file's content. The groups are
copied as text, comments and all, indented under `spec:`. `--check` fails when the committed
PrometheusRule differs from what this script writes (tests/unit/deploy runs it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "gongji-rules.yml"
PROMETHEUS_RULE = ROOT / "deploy" / "k8s" / "prometheusrule.yaml"

_HEADER = """\
# Generated from deploy/prometheus/gongji-rules.yml by scripts/gen_prometheusrule.py: edit that file,
# then run the script (tests/unit/deploy fails while the two differ). The same groups the compose
# Prometheus loads, for the Prometheus operator; kustomization.yaml adds the `release` label that
# kube-prometheus-stack selects rules by.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: gongji
  labels: {app.kubernetes.io/name: gongji}
spec:
"""


def render(rules_text: str) -> str:
    """The PrometheusRule for a rule file's text: everything from its `groups:` line, under `spec:`."""
    lines = rules_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = [f"  {line}" if line.strip() else "" for line in lines[start:]]
    return _HEADER + "\n".join(body) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the committed file is not current")
    args = parser.parse_args()
    wanted = render(RULES.read_text())
    if args.check:
        if PROMETHEUS_RULE.read_text() != wanted:
            print(f"{PROMETHEUS_RULE.relative_to(ROOT)} is stale: run python scripts/gen_prometheusrule.py")
            return 1
        return 0
    PROMETHEUS_RULE.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
