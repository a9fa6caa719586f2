"""`gongji health`: the container HEALTHCHECK asks the server's grpc.health.v1 service on its own port."""

from __future__ import annotations

import subprocess

from e2e_support import GONGJI, ROOT, free_port, serve, stop


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
