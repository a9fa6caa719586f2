"""Helpers for the end-to-end tests: a `gongji serve --demo` subprocess on free loopback ports."""

from __future__ import annotations

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


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    return err.decode()
