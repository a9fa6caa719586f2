"""The one interceptor around every gongji RPC: authenticate, run, map GongjiError to a status, count.

Written by hand rather than taken from a package: the released Python gRPC-Prometheus interceptors lose
cancelled calls and calls past their deadline, and authentication needs our own credential store.
Health and reflection pass through untouched (no credentials, no metrics).
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, cast

import asyncpg
import grpc
from google.protobuf.message import DecodeError

from gongji import errors, metrics
from gongji.api.app import Context
from gongji.api.auth import Authenticator, current_principal
from gongji.api.status import to_status

log = logging.getLogger(__name__)

_PREFIX = "/gongji.v1."

# The database is unreachable, restarting, full or read-only (a failover): the client may retry.
_DB_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown, query cancelled
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    # Connecting failed at the socket: refused, reset, timed out, or a Unix socket that is not there
    # (FileNotFoundError, while a local PostgreSQL restarts). Serving a call does no other I/O.
    OSError,
)


def _connection_lost(exc: BaseException) -> bool:
    """Whether the call failed because its database connection did, though asyncpg reported something
    else. A connection lost inside a transaction surfaces as the failure of the rollback that followed
    (InterfaceError: the underlying connection is closed, caused by the loss); a connection lost or a
    call cancelled mid-operation can leave asyncpg's protocol in a state it reports as its own internal
    error. Either way the statement may or may not have committed: the client retries with the same
    request id. An InterfaceError with no such cause (a misuse: a defect of ours) stays INTERNAL."""
    seen: BaseException | None = exc
    for _ in range(8):  # bounded: exception chains are short
        if seen is None:
            return False
        if isinstance(seen, (*_DB_UNAVAILABLE, asyncpg.exceptions.InternalClientError, asyncio.CancelledError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _Undecodable:
    """Stands in for a request whose bytes are not a valid message (say, a string that is not UTF-8)."""


Behavior = Callable[[Any, Context], Awaitable[Any]]


class GongjiInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        method: str = details.method
        if (
            handler is None
            or not method.startswith(_PREFIX)
            or handler.unary_unary is None
            or handler.request_deserializer is None
        ):
            return handler
        wrapped = self._wrap(cast(Behavior, handler.unary_unary), method, details.invocation_metadata)
        deserialize = handler.request_deserializer

        # grpc answers UNKNOWN for a request it cannot parse; it is the client's fault, so let the
        # wrapped behavior refuse it with INVALID_ARGUMENT (and count it) instead.
        def tolerant_deserializer(data: bytes) -> Any:
            try:
                return deserialize(data)
            except DecodeError:
                return _Undecodable()

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=tolerant_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap(self, inner: Behavior, method: str, metadata: Any) -> Behavior:
        service, name = method[1:].split("/", 1)
        labels = ("unary", service, name)

        async def behavior(request: Any, context: Context) -> Any:
            metrics.GRPC_STARTED.labels(*labels).inc()
            started = time.perf_counter()
            code = "OK"
            try:
                principal = await self._auth.authenticate(metadata, method)
                if isinstance(request, _Undecodable):
                    raise errors.InvalidArgument.one("request", f"not a valid {name} request message")
                token = current_principal.set(principal)
                try:
                    return await inner(request, context)
                finally:
                    current_principal.reset(token)
            except errors.GongjiError as exc:
                code = exc.code
                await _abort(context, exc)
            except _DB_UNAVAILABLE as exc:
                code = "UNAVAILABLE"
                log.warning("database unavailable during %s: %s", method, type(exc).__name__)
                await _abort(context, errors.DatabaseUnavailable("the database is unavailable; retry"))
            except asyncpg.exceptions.TransactionRollbackError as exc:
                # Deadlock or serialization failure: nothing was written; the same request may be retried.
                code = "ABORTED"
                log.warning("transaction rolled back during %s: %s", method, type(exc).__name__)
                await _abort(context, errors.TransactionAborted("the transaction was rolled back; retry"))
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                if _connection_lost(exc):
                    code = "UNAVAILABLE"
                    log.warning("database connection lost during %s: %s", method, type(exc).__name__)
                    await _abort(context, errors.DatabaseUnavailable("the database is unavailable; retry"))
                code = "INTERNAL"
                # The class and frames only, to the log and never to the client: messages of database
                # errors and failed assertions can quote row values (PII, balances).
                frames = "".join(traceback.format_tb(exc.__traceback__))
                log.error("unhandled %s in %s\n%s", type(exc).__name__, method, frames)
                await _abort(context, errors.Internal("internal error"))
            finally:
                if code == "OK" and context.cancelled():
                    code = "CANCELLED"
                metrics.GRPC_HANDLED.labels(*labels, code).inc()
                metrics.GRPC_HANDLING_SECONDS.labels(*labels).observe(time.perf_counter() - started)

        return behavior


async def _abort(context: Context, exc: errors.GongjiError) -> None:
    status = to_status(exc)
    await context.abort(status.code, status.details, status.trailing_metadata)
