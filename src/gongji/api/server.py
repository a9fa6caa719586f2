"""Build the grpc.aio server and run it until SIGTERM/SIGINT, then shut down gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from gongji import limits, metrics
from gongji.api.account import AccountService
from gongji.api.admission import Admission
from gongji.api.app import App
from gongji.api.auth import Authenticator
from gongji.api.credential_watch import CredentialWatch
from gongji.api.events import EventService
from gongji.api.family import FamilyService
from gongji.api.interceptor import GongjiInterceptor
from gongji.api.outbox import Outbox
from gongji.api.settlement import SettlementService
from gongji.api.wallet import WalletService
from gongji.api.wallet_expiry import WalletExpiry
from gongji.config import CannotListen, Settings
from gongji.store import db
from gongji.v1 import (
    account_pb2,
    account_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    family_pb2,
    family_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
    wallet_pb2,
    wallet_pb2_grpc,
)

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    settlement_pb2.DESCRIPTOR.services_by_name["SettlementService"].full_name,
    family_pb2.DESCRIPTOR.services_by_name["FamilyService"].full_name,
    wallet_pb2.DESCRIPTOR.services_by_name["WalletService"].full_name,
    account_pb2.DESCRIPTOR.services_by_name["AccountService"].full_name,
    events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
)


SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", limits.GRPC_MESSAGE_BYTES_MAX),
    ("grpc.max_send_message_length", limits.GRPC_MESSAGE_BYTES_MAX),
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", limits.GRPC_KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", limits.GRPC_KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", limits.GRPC_CLIENT_PING_INTERVAL_MS_MIN),
    ("grpc.http2.max_ping_strikes", limits.GRPC_PING_STRIKES_MAX),
    ("grpc.max_connection_idle_ms", limits.GRPC_CONNECTION_IDLE_MS_MAX),
    ("grpc.max_connection_age_ms", limits.GRPC_CONNECTION_AGE_MS_MAX),
    ("grpc.max_connection_age_grace_ms", limits.GRPC_CONNECTION_AGE_GRACE_MS),
    # The edge (gongji.api.admission for the rest): streams per connection, connections per process,
    # the time to finish a handshake, and the size of a call's headers.
    ("grpc.max_concurrent_streams", limits.GRPC_STREAMS_PER_CONNECTION_MAX),
    ("grpc.server.max_pending_requests", limits.GRPC_PENDING_CALLS_SOFT_MAX),
    ("grpc.server.max_pending_requests_hard_limit", limits.GRPC_PENDING_CALLS_MAX),
    ("grpc.max_allowed_incoming_connections", limits.GRPC_CONNECTIONS_MAX),
    ("grpc.server_handshake_timeout_ms", limits.GRPC_HANDSHAKE_TIMEOUT_MS),
    ("grpc.max_metadata_size", limits.GRPC_METADATA_BYTES_MAX),
]


def tls_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS when a certificate is configured; mTLS, with a client certificate required, when a client CA
    is configured too. None: plaintext (loopback and development only)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    pair = (settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


@dataclass
class Running:
    server: grpc.aio.Server
    port: int
    health: HealthServicer
    watch: asyncio.Task[None]
    credentials: CredentialWatch
    # The plaintext health-only listener (GONGJI_HEALTH_LISTEN), when configured.
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None
    wallet_expiry: WalletExpiry | None = None
    outbox: Outbox | None = None

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, stop accepting, let in-flight RPCs finish within `grace_s`; then stop
        listening for credential changes and write the credentials' last uses. The health listener
        closes last, so probes see NOT_SERVING while the calls drain."""
        self.watch.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        if self.wallet_expiry is not None:
            await self.wallet_expiry.close()
        if self.outbox is not None:
            await self.outbox.close()
        if self.health_server is not None:
            await self.health_server.stop(0)
        await self.credentials.close()


def _options(reuse_port: bool) -> list[tuple[str, int]]:
    return [(k, int(reuse_port) if k == "grpc.so_reuseport" else v) for k, v in SERVER_OPTIONS]


async def start_health_listener(
    listen: str, health_servicer: HealthServicer, *, reuse_port: bool
) -> tuple[grpc.aio.Server, int]:
    """A plaintext server on `listen` with grpc.health.v1 alone, answering from the same servicer as
    the gRPC port: for `gongji health` and Kubernetes' gRPC probes, which cannot speak TLS or present a
    client certificate. No other service is reachable there, so the money port can stay TLS-only."""
    health_server = grpc.aio.server(options=_options(reuse_port))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
    port = health_server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen} (GONGJI_HEALTH_LISTEN)")
    await health_server.start()
    return health_server, port


async def watch_database(pool: db.Pool, health: HealthServicer) -> None:
    """Health follows the database: NOT_SERVING while it does not answer (a load balancer then sends
    terminals elsewhere; calls that still come answer UNAVAILABLE), SERVING again once it does. The
    pool reconnects by itself, so gongji recovers without a restart. The probe goes through the pool,
    like every call, so it sees what calls see."""
    serving = True
    while True:
        await asyncio.sleep(limits.HEALTH_CHECK_INTERVAL_S)
        answers = await db.answers(pool, limits.HEALTH_CHECK_TIMEOUT_S)
        if answers == serving:
            continue
        serving = answers
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await health.set(name, status)
        log.warning(
            "the database %s: health %s",
            "answers again" if serving else "does not answer",
            health_pb2.HealthCheckResponse.ServingStatus.Name(status),
        )


# Every (service, method) of the contract, for the metrics that exist before the first call.
_METHODS = tuple(
    ("server_stream" if method.server_streaming else "unary", service.full_name, method.name)
    for module in (settlement_pb2, family_pb2, account_pb2, wallet_pb2, events_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
)


async def start(app: App, listen: str, *, reuse_port: bool = False) -> Running:
    """Serve `app` on `listen`. With `reuse_port`, several worker processes bind the same port and the
    kernel spreads connections among them (SO_REUSEPORT)."""
    metrics.watch_pool(app.pool)
    admission = Admission(app.settings.max_concurrent_rpcs)
    authenticator = Authenticator(app.pool)
    server = grpc.aio.server(
        interceptors=[
            GongjiInterceptor(
                authenticator,
                admission,
                app.settings.request_message_wait_s,
                mtls=app.settings.tls_client_ca_file is not None,
            )
        ],
        # gongji's admission answers first, with an ErrorInfo; grpc's own limit, counted from the
        # headers, is only a backstop (beyond it grpc answers RESOURCE_EXHAUSTED "Concurrent RPC limit
        # exceeded!" by itself, without an ErrorInfo).
        maximum_concurrent_rpcs=app.settings.max_concurrent_rpcs * limits.GRPC_STREAMS_BACKSTOP_FACTOR,
        options=_options(reuse_port),
    )
    settlement_pb2_grpc.add_SettlementServiceServicer_to_server(SettlementService(app), server)
    family_pb2_grpc.add_FamilyServiceServicer_to_server(FamilyService(app), server)
    wallet_pb2_grpc.add_WalletServiceServicer_to_server(WalletService(app), server)
    account_pb2_grpc.add_AccountServiceServicer_to_server(AccountService(app), server)
    events_pb2_grpc.add_EventServiceServicer_to_server(EventService(app), server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    metrics.zero_grpc_series(_METHODS)
    credentials = tls_credentials(app.settings)
    try:
        port = server.add_insecure_port(listen) if credentials is None else server.add_secure_port(listen, credentials)
    except RuntimeError:  # grpcio raises this when it cannot bind, without saying why
        port = 0
    if port == 0:
        raise CannotListen("gRPC", listen, "GONGJI_GRPC_LISTEN", "address in use or not of this host")
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_server, health_port = None, None
    if app.settings.health_listen:
        try:
            health_server, health_port = await start_health_listener(
                app.settings.health_listen, health_servicer, reuse_port=reuse_port
            )
        except BaseException:
            await server.stop(0)
            raise
    watch = asyncio.create_task(watch_database(app.pool, health_servicer), name="gongji-health-watch")
    credential_watch = CredentialWatch(authenticator, app.pool, app.settings.listen_url())
    credential_watch.start()
    wallet_expiry = WalletExpiry(app.pool, app.clock, app.settings.wallet_expiry_interval_s)
    wallet_expiry.start()
    outbox = Outbox(app.pool, app.settings.events_retention_days)
    outbox.start()
    return Running(
        server, port, health_servicer, watch, credential_watch, health_server, health_port, wallet_expiry, outbox
    )


async def run_until_signalled(running: Running, grace_s: float, on_stop: Callable[[], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: finishing in-flight RPCs for up to %.1f s", grace_s)
    await running.stop(grace_s)
    await on_stop()
    log.info("stopped")
