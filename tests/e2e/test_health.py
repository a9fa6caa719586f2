"""`gongji health`: the container HEALTHCHECK asks the server's grpc.health.v1 service, on the gRPC port
while it is plaintext, on the plaintext health listener (GONGJI_HEALTH_LISTEN) under TLS and mTLS."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from e2e_support import GONGJI, ROOT, free_port, serve, stop, wait_serving
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pki import issue


def _health(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GONGJI, "health", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_health_is_0_while_serving_and_1_when_nothing_answers(env: dict[str, str]) -> None:
    port = env["GONGJI_GRPC_LISTEN"].rpartition(":")[2]
    proc = serve(env)
    try:
        # The server listens on the wildcard address in a container; the check reaches it on loopback.
        served = _health(env | {"GONGJI_GRPC_LISTEN": f"0.0.0.0:{port}"})
        assert served.returncode == 0, served.stderr
        assert served.stdout.strip() == f"127.0.0.1:{port}: SERVING"
        one = _health(env, "--service", "gongji.v1.SettlementService")
        assert one.returncode == 0, one.stderr
        unknown = _health(env, "--service", "no.such.Service")
        assert unknown.returncode == 1
        assert "NOT_FOUND" in unknown.stderr
    finally:
        stop(proc)
    nobody = _health(env, "--target", f"127.0.0.1:{free_port()}", "--timeout-s", "1")
    assert nobody.returncode == 1
    assert "UNAVAILABLE" in nobody.stderr or "DEADLINE_EXCEEDED" in nobody.stderr


def _tls_env(env: dict[str, str], tmp: Path, *, mtls: bool) -> tuple[dict[str, str], bytes]:
    """`env` with a server certificate (and, with mTLS, a client CA) and a health listener; the CA."""
    ca, ca_name, ca_key = issue("gongji test CA", None, ca=True)
    server = issue("localhost", (ca_name, ca_key), ca=False)[0]
    (tmp / "server.pem").write_bytes(server.cert)
    (tmp / "server.key").write_bytes(server.key)
    (tmp / "ca.pem").write_bytes(ca.cert)
    tls = {"GONGJI_TLS_CERT_FILE": str(tmp / "server.pem"), "GONGJI_TLS_KEY_FILE": str(tmp / "server.key")}
    if mtls:
        tls["GONGJI_TLS_CLIENT_CA_FILE"] = str(tmp / "ca.pem")
    return env | tls | {"GONGJI_HEALTH_LISTEN": f"0.0.0.0:{free_port()}"}, ca.cert


def _answers_plaintext(target: str, rpc: str) -> grpc.StatusCode:
    """The code of one plaintext call of `rpc` (a Health method, or a money call) at `target`."""
    with grpc.insecure_channel(target) as ch:
        try:
            if rpc == "health":
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
            else:
                ch.unary_unary(rpc)(b"", timeout=3)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.parametrize("mtls", [False, True], ids=["tls", "mtls"])
def test_under_tls_health_answers_on_its_own_plaintext_port_and_nothing_else_does(
    env: dict[str, str], tmp_path: Path, mtls: bool
) -> None:
    """With TLS (and mTLS: no client certificate here) the check asks the health listener; the gRPC port
    refuses plaintext, and the health port serves grpc.health.v1 alone, not the money calls."""
    tls_env, ca = _tls_env(env, tmp_path, mtls=mtls)
    health = tls_env["GONGJI_HEALTH_LISTEN"].replace("0.0.0.0", "127.0.0.1")
    proc = subprocess.Popen([GONGJI, "serve", "--demo"], env=tls_env, cwd=ROOT, stderr=subprocess.PIPE)
    try:
        wait_serving(health, proc)
        served = _health(tls_env)
        assert served.returncode == 0, served.stderr
        assert served.stdout.strip() == f"{health}: SERVING"
        assert _health(tls_env, "--service", "gongji.v1.SettlementService").returncode == 0
        assert _answers_plaintext(tls_env["GONGJI_GRPC_LISTEN"], "health") == grpc.StatusCode.UNAVAILABLE
        assert _answers_plaintext(health, "/gongji.v1.SettlementService/Settle") == grpc.StatusCode.UNIMPLEMENTED
        if not mtls:  # the gRPC port itself, over TLS, answers the same
            creds = grpc.ssl_channel_credentials(root_certificates=ca)
            with grpc.secure_channel(tls_env["GONGJI_GRPC_LISTEN"], creds) as ch:
                reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        stop(proc)
    gone = _health(tls_env, "--timeout-s", "1")
    assert gone.returncode == 1


def test_under_tls_without_a_health_listener_the_check_says_what_to_set(env: dict[str, str], tmp_path: Path) -> None:
    tls_env, _ = _tls_env(env, tmp_path, mtls=True)
    del tls_env["GONGJI_HEALTH_LISTEN"]
    done = _health(tls_env)
    assert done.returncode == 1
    assert "GONGJI_HEALTH_LISTEN" in done.stderr
