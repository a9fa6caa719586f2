"""`gongji health`: ask a local server's grpc.health.v1 service; the container's HEALTHCHECK.

Where it asks: `--target` when given; else the health listener (GONGJI_HEALTH_LISTEN), a plaintext port
that serves grpc.health.v1 alone, so the check needs neither the server's CA nor, under mTLS, a client
certificate; else the gRPC port (GONGJI_GRPC_LISTEN), which the check can reach only while it is
plaintext. Listening on the wildcard address, a server is reached on loopback.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from gongji.config import Settings, host_port

# What `gongji health` prints when TLS is on and there is no plaintext health port to ask.
NO_HEALTH_LISTENER = (
    "GONGJI_TLS_CERT_FILE is set, so the gRPC port speaks TLS only, and GONGJI_HEALTH_LISTEN is not: "
    "set GONGJI_HEALTH_LISTEN (e.g. 127.0.0.1:50052) to serve health in plaintext on a port of its own"
)


def local_target(listen: str) -> str:
    """The address to reach a server listening on `listen` from the same host (0.0.0.0 is not one)."""
    host, port = host_port(listen)
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - read, not bound: a wildcard listen is reached on loopback
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def default_target(settings: Settings) -> str | None:
    """The health listener, else the gRPC port while it is plaintext; None: nothing to ask in plaintext."""
    if settings.health_listen:
        return local_target(settings.health_listen)
    if settings.tls_cert_file is not None:
        return None
    return local_target(settings.grpc_listen)


@dataclass(frozen=True)
class Result:
    target: str
    status: str  # a ServingStatus name (SERVING, NOT_SERVING, ...) or the gRPC code of a failed call
    serving: bool
    answered: bool  # False: the call failed (nothing listening, NOT_FOUND for an unknown service, ...)


def check(target: str, service: str = "", timeout_s: float = 3.0) -> Result:
    """One grpc.health.v1 Check over a plaintext channel."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
    except grpc.RpcError as exc:
        return Result(target, exc.code().name, serving=False, answered=False)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return Result(target, status, serving=reply.status == health_pb2.HealthCheckResponse.SERVING, answered=True)


def run(settings: Settings, target: str | None, service: str, timeout_s: float) -> int:
    """Check and print the outcome (a status on stdout, a failed call on stderr); 0 when SERVING, else 1."""
    target = target or default_target(settings)
    if target is None:
        print(NO_HEALTH_LISTENER, file=sys.stderr)
        return 1
    result = check(target, service, timeout_s)
    print(f"{result.target}: {result.status}", file=sys.stdout if result.answered else sys.stderr)
    return 0 if result.serving else 1
