"""Helpers for the end-to-end tests: a `gongji serve --demo` subprocess on free loopback ports."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
GONGJI = str(Path(sys.executable).with_name("gongji"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_serving(target: str, proc: subprocess.Popen[bytes], limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "gongji serve exited early"
        try:
            with grpc.insecure_channel(target) as ch:
                reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise AssertionError("gongji serve did not become SERVING")


def serve(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([GONGJI, "serve", "--demo", *args], env=env, cwd=ROOT, stderr=subprocess.PIPE)
    wait_serving(env["GONGJI_GRPC_LISTEN"], proc)
    return proc


def client(env: dict[str, str], *args: str) -> dict[str, object]:
    """`gongji client ...` against the server of `env`; its JSON answer."""
    out = subprocess.run(
        [GONGJI, "client", "--target", env["GONGJI_GRPC_LISTEN"], *args],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def first_call_split(env: dict[str, str]) -> tuple[object, object, object]:
    """The README's first call (李小丽 pays 35.00 yuan) against `gongji serve --demo`: own, mutual aid, cash."""
    s = client(env, "settle", "--patient", "demo:xiaoli", "--amount-fen", "3500")["settlement"]
    assert isinstance(s, dict)
    return s["acct_pay_fen"], s["acct_mulaid_pay_fen"], s["psn_cash_pay_fen"]


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    return err.decode()
