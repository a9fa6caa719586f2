"""The deployment files, checked without a container engine: they parse, and every setting, command,
flag, port and probe they name is one gongji has, read from gongji's own code (Settings, the CLI's
argparse parser, the health service names), never from a copied list."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tomllib
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from deploy_support import (
    DEPLOY,
    ROOT,
    compose,
    containers,
    dockerfile_env,
    documents,
    k8s_object,
    k8s_objects,
    pod_specs,
    yaml_files,
)

from gongji import cli
from gongji.api.server import SERVICE_NAMES
from gongji.config import Settings, host_port

PREFIX = str(Settings.model_config.get("env_prefix", ""))
SETTINGS_ENV = {f"{PREFIX}{name}".upper() for name in Settings.model_fields}


def _defaults(parser: argparse.ArgumentParser) -> Iterator[tuple[str, object]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {k}", v) for k, v in _defaults(sub))
        else:
            yield action.dest, action.default


def _cli_env_names(candidates: set[str]) -> set[str]:
    """The GONGJI_ names the CLI's parser reads for its defaults: those that change a default when set."""
    baseline = dict(_defaults(cli._parser()))
    found = set()
    for name in candidates:
        before = os.environ.get(name)
        os.environ[name] = "3"  # valid for every kind of default the parser has (ints, choices 1..32, text)
        try:
            if dict(_defaults(cli._parser())) != baseline:
                found.add(name)
        finally:
            if before is None:
                del os.environ[name]
            else:
                os.environ[name] = before
    return found


def _known_env(names: set[str]) -> set[str]:
    gongji = {n for n in names if n.startswith(PREFIX.upper())}
    return gongji - SETTINGS_ENV - _cli_env_names(gongji - SETTINGS_ENV)


def _compose_env() -> dict[str, dict[str, str]]:
    env = {}
    for name, service in compose()["services"].items():
        e = service.get("environment", {})
        env[name] = dict(x.split("=", 1) for x in e) if isinstance(e, list) else {k: str(v) for k, v in e.items()}
    return env


# Secrets the pods load that are created by hand (deploy/README.md), never kept in the repository, and
# the variables each provides.
SECRETS = {"gongji-voucher-key": {"GONGJI_VOUCHER_KEY": "<from a secret>"}}


def test_no_secret_is_kept_in_the_manifests() -> None:
    """An apply would overwrite the real key with whatever the repository holds."""
    assert [o["metadata"]["name"] for o in k8s_objects() if o["kind"] == "Secret"] == []


def _k8s_env() -> dict[str, dict[str, str]]:
    """Per pod spec: the env of its containers, with the ConfigMaps and Secrets it loads (envFrom)."""
    config = k8s_object("ConfigMap", "gongji")
    maps = {("ConfigMap", "gongji"): config["data"]} | {("Secret", name): keys for name, keys in SECRETS.items()}
    env: dict[str, dict[str, str]] = {}
    for owner, spec in pod_specs():
        for c in containers(spec):
            e: dict[str, str] = {}
            for source in c.get("envFrom", []):
                kind, ref = (
                    ("ConfigMap", source["configMapRef"])
                    if "configMapRef" in source
                    else ("Secret", source["secretRef"])
                )
                e |= maps[(kind, ref["name"])]
            e |= {v["name"]: v.get("value", "<from a secret>") for v in c.get("env", [])}
            env[f"{owner}/{c['name']}"] = e
    return env


def _parses(argv: list[str]) -> argparse.Namespace:
    try:
        return cli._parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"gongji {' '.join(argv)}: not a command gongji accepts") from exc


def _dockerfile_instruction(name: str) -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text()
    (line,) = re.findall(rf"^{name} (.*)$", text, re.MULTILINE)
    return list(yaml.safe_load(line[line.index("[") :]))  # the exec form is a JSON array


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    assert documents(path), f"{path} has no documents"


def test_every_gongji_environment_variable_is_a_setting_or_read_by_the_cli() -> None:
    sources = {"Dockerfile": dockerfile_env()} | _compose_env() | _k8s_env()
    unknown = {where: _known_env(set(env)) for where, env in sources.items()}
    assert {w: u for w, u in unknown.items() if u} == {}
    assert _cli_env_names({"GONGJI_WORKERS"}) == {"GONGJI_WORKERS"}, "serve --workers reads GONGJI_WORKERS"


def test_every_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The values too: Settings validates each environment as gongji would at start."""
    sources = {"Dockerfile": dockerfile_env()} | _compose_env() | _k8s_env()
    for where, env in sources.items():
        for name in [n for n in os.environ if n.startswith(PREFIX.upper())]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            if name in SETTINGS_ENV and not value.startswith(("${", "<")):
                monkeypatch.setenv(name, value)
        try:
            Settings()
        except ValueError as exc:
            raise AssertionError(f"{where}: {exc}") from exc


def test_every_command_and_flag_is_one_the_cli_accepts() -> None:
    entrypoint, cmd = _dockerfile_instruction("ENTRYPOINT"), _dockerfile_instruction("CMD")
    assert entrypoint == ["gongji"]
    assert _parses(cmd).command == "serve"
    assert re.search(r"^HEALTHCHECK .* CMD \[", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    healthcheck = _dockerfile_instruction("HEALTHCHECK")
    assert healthcheck[0] == "gongji"
    assert _parses(healthcheck[1:]).command == "health"
    commands = {name: s["command"] for name, s in compose()["services"].items() if "build" in s}
    assert {name: _parses(argv).command for name, argv in commands.items()} == {"migrate": "migrate", "gongji": "serve"}
    for owner, spec in pod_specs():
        for c in containers(spec):
            assert "command" not in c, f"{owner}: keep the image's entrypoint (gongji)"
            _parses(c["args"])
    spec = k8s_object("Deployment", "gongji")["spec"]["template"]["spec"]
    assert [_parses(c["args"]).command for c in spec["initContainers"]] == ["migrate"]


def _port(listen: str) -> int:
    return host_port(listen)[1]


def test_ports_agree_with_the_listen_settings() -> None:
    env = dockerfile_env()
    grpc_port, metrics_port = _port(env["GONGJI_GRPC_LISTEN"]), _port(env["GONGJI_METRICS_LISTEN"])
    exposed = re.findall(r"^EXPOSE (.*)$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert {int(p) for p in exposed[0].split()} == {grpc_port, metrics_port}
    published = {int(p.rsplit(":", 1)[1]) for p in compose()["services"]["gongji"]["ports"]}
    assert published == {grpc_port, metrics_port}
    (prometheus,) = documents(DEPLOY / "prometheus" / "prometheus.yml")
    targets = [t for c in prometheus["scrape_configs"] for s in c["static_configs"] for t in s["targets"]]
    assert targets == [f"gongji:{metrics_port}"]

    config = k8s_object("ConfigMap", "gongji")["data"]
    k8s_grpc, k8s_metrics = _port(config["GONGJI_GRPC_LISTEN"]), _port(config["GONGJI_METRICS_LISTEN"])
    (container,) = k8s_object("Deployment", "gongji")["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": k8s_grpc, "metrics": k8s_metrics, "health": _port(config["GONGJI_HEALTH_LISTEN"])}
    service = k8s_object("Service", "gongji")["spec"]
    assert service["clusterIP"] == "None", "headless: clients balance over the pods"
    assert {p["targetPort"] for p in service["ports"]} <= set(ports)
    monitor = k8s_object("ServiceMonitor", "gongji")["spec"]
    assert [e["port"] for e in monitor["endpoints"]] == ["metrics"]
    assert {p["name"] for p in service["ports"]} >= {"metrics"}


def test_probes_ask_the_grpc_health_service_on_the_health_port() -> None:
    """The kubelet's gRPC probes speak neither TLS nor mTLS: they ask the plaintext health listener,
    which the pod's IP reaches (not loopback), on the container port named health."""
    config = k8s_object("ConfigMap", "gongji")["data"]
    host, health_port = host_port(config["GONGJI_HEALTH_LISTEN"])
    assert host not in ("127.0.0.1", "localhost", "::1")
    (container,) = k8s_object("Deployment", "gongji")["spec"]["template"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["health"] == health_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = container[probe]["grpc"]
        assert grpc_probe["port"] == health_port, probe
        assert grpc_probe.get("service", "") in {"", *SERVICE_NAMES}, probe
    assert {p["targetPort"] for p in k8s_object("Service", "gongji")["spec"]["ports"]} <= {"grpc", "metrics"}


def test_the_image_health_check_asks_the_loopback_health_listener() -> None:
    """HEALTHCHECK runs `gongji health` inside the container: the health listener on loopback answers
    it whether or not GONGJI_TLS_* are set, and is reachable from nowhere else."""
    host, port = host_port(dockerfile_env()["GONGJI_HEALTH_LISTEN"])
    assert host == "127.0.0.1"
    assert port not in {_port(dockerfile_env()["GONGJI_GRPC_LISTEN"]), _port(dockerfile_env()["GONGJI_METRICS_LISTEN"])}


def test_termination_outlasts_the_servers_grace_period() -> None:
    config = k8s_object("ConfigMap", "gongji")["data"]
    grace_s = float(config["GONGJI_GRACE_PERIOD_S"])
    spec = k8s_object("Deployment", "gongji")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > float(pre_stop[1]) + grace_s
    service = compose()["services"]["gongji"]
    stop_s = float(service["stop_grace_period"].removesuffix("s"))
    assert stop_s > float(service["environment"]["GONGJI_GRACE_PERIOD_S"])


def test_connections_fit_the_pooler_and_the_pooler_fits_postgresql() -> None:
    config = k8s_object("ConfigMap", "gongji")["data"]
    hpa = k8s_object("HorizontalPodAutoscaler", "gongji")["spec"]
    pooler = k8s_object("Pooler")["spec"]
    cluster = k8s_object("Cluster")["spec"]
    clients = hpa["maxReplicas"] * int(config["GONGJI_WORKERS"]) * int(config["GONGJI_POOL_MAX_SIZE"])
    params = pooler["pgbouncer"]["parameters"]
    assert clients <= int(params["max_client_conn"])
    servers = pooler["instances"] * int(params["default_pool_size"])
    assert servers < int(cluster["postgresql"]["parameters"]["max_connections"])
    assert k8s_object("PodDisruptionBudget", "gongji")["spec"]["minAvailable"] < hpa["minReplicas"]


def test_pgbouncer_in_transaction_mode_and_migrations_past_it() -> None:
    pooler = k8s_object("Pooler")
    pgbouncer = pooler["spec"]["pgbouncer"]
    assert pgbouncer["poolMode"] == "transaction"
    assert int(pgbouncer["parameters"]["max_prepared_statements"]) > 0
    ignored = set(pgbouncer["parameters"]["ignore_startup_parameters"].split(","))
    assert "default_transaction_isolation" in ignored  # asyncpg sends it (gongji.store.db)
    cluster = k8s_object("Cluster")
    assert cluster["spec"]["postgresql"]["parameters"]["default_transaction_isolation"] == "read committed"
    assert cluster["spec"]["instances"] >= 3
    assert cluster["spec"]["postgresql"]["synchronous"]["number"] >= 1

    def host(url: str) -> str:
        return urllib.parse.urlsplit(url).hostname or ""

    env = _k8s_env()
    serve, job = env["gongji/gongji"], env["gongji/migrate"]
    assert host(serve["GONGJI_DATABASE_URL"]) == pooler["metadata"]["name"]
    assert host(serve["GONGJI_MIGRATE_DATABASE_URL"]) == f"{cluster['metadata']['name']}-rw"
    # LISTEN needs a session of its own, which the pooler would not keep (gongji.api.credential_watch).
    assert host(serve["GONGJI_LISTEN_DATABASE_URL"]) == f"{cluster['metadata']['name']}-rw"
    assert host(job["GONGJI_DATABASE_URL"]) == f"{cluster['metadata']['name']}-rw"
    assert int(serve["GONGJI_DB_STATEMENT_CACHE_SIZE"]) <= int(pgbouncer["parameters"]["max_prepared_statements"])


def test_postgresql_replicates_synchronously_even_after_a_failover() -> None:
    """What docs/reliability.md measured: with asynchronous replication a failover loses acknowledged
    settlements, with synchronous replication none (tests/chaos/test_failover.py). So every commit
    waits for a replica (never downgraded to asynchronous when none answers: dataDurability
    required), and with the primary lost one synchronous replica and one more instance remain, so
    commits keep a synchronous replica after the failover too."""
    spec = k8s_object("Cluster")["spec"]
    synchronous = spec["postgresql"]["synchronous"]
    assert synchronous["method"] in ("any", "first")
    assert synchronous["number"] >= 1
    assert synchronous.get("dataDurability", "required") == "required"
    assert spec["instances"] >= synchronous["number"] + 2
    # Left at PostgreSQL's default (on); were it set, only a level that waits for the replica's flush.
    assert spec["postgresql"]["parameters"].get("synchronous_commit", "on") in ("on", "remote_apply")


def test_dockerfile_is_multi_stage_non_root_with_the_pinned_generators() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2
    (user,) = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert not user.startswith(("0", "root"))
    assert "gen_proto.py --check" in text, "stale committed stubs fail the build"
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    for generator in ("grpcio-tools", "mypy-protobuf"):
        (pin,) = [d for d in dev if d.startswith(f"{generator}==")]
        assert f'"{pin}"' in text, f"the Dockerfile pins {generator} as pyproject.toml does ({pin})"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_accepts_the_compose_prometheus_config_and_its_rules() -> None:
    done = subprocess.run(
        ["promtool", "check", "config", "prometheus.yml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
