"""The one interceptor around every gongji RPC: authenticate, admit, read the request, run, map
GongjiError to a status, count.

Written by hand rather than taken from a package: the released Python gRPC-Prometheus interceptors lose
cancelled calls and calls past their deadline, and authentication needs our own credential store.
Health and reflection pass through untouched (no credentials, no metrics).

Every gongji method but one is unary, yet the interceptor serves it as a stream-unary handler (the bytes
on the wire are the same); the server-streaming one (EventService.StreamEvents) as a stream-stream
handler. grpc.aio runs a unary handler only once the request message has arrived, and counts the call
from its headers: a client could hold any number of calls open by sending headers and never a
message. Served as a stream, the call is authenticated as soon as its headers arrive (a caller without
valid credentials is refused at once and holds nothing), admitted against its caller's fair share
(gongji.api.admission), and only then is its one message read, within REQUEST_MESSAGE_WAIT_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import traceback
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError

from gongji import errors, limits, logs, metrics
from gongji.api.admission import Admission
from gongji.api.app import Context
from gongji.api.auth import Authenticator, check_certificate, current_principal
from gongji.api.status import to_status
from gongji.store import db
from gongji.store.credentials import Principal

log = logging.getLogger(__name__)
# One line per RPC, under a name of its own so that it can be routed or silenced apart.
rpc_log = logging.getLogger("gongji.rpc")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]+")

_PREFIX = "/gongji.v1."
# What ServicerContext.read() answers once the client has half-closed (missing from grpc-stubs 1.53).
_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]


class _Undecodable:
    """Stands in for a request whose bytes are not a valid message (say, a string that is not UTF-8)."""


Behavior = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior = Callable[[AsyncIterator[Any], Context], Awaitable[Any]]
Streaming = Callable[[Any, Context], AsyncGenerator[Any, None]]


class GongjiInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self, authenticator: Authenticator, admission: Admission, request_wait_s: float, *, mtls: bool
    ) -> None:
        self._auth = authenticator
        self._admission = admission
        self._request_wait_s = request_wait_s
        self._mtls = mtls  # client certificates are required: they name a terminal's institution
        # method -> how it is served, built on its first call (grpc asks the interceptor at every call).
        # One entry per registered gongji method at most: only a method grpc has a handler for gets one.
        self._methods: dict[str, _Method] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        method: str = details.method
        served = self._methods.get(method)
        if served is not None and served.source is handler:
            return served.handler
        if handler is None or not method.startswith(_PREFIX) or handler.request_deserializer is None:
            return handler
        if handler.unary_unary is None and handler.unary_stream is None:
            raise TypeError(f"{method}: gongji serves unary and server-streaming methods only")
        served = self._methods[method] = self._serve(method, handler)
        return served.handler

    def _serve(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> _Method:
        """How `method` is served: the same for every call (nothing of a call is in it; the behavior reads
        the call's metadata from its context), so built once. A unary method is served as stream-unary, a
        server-streaming one as stream-stream: either way its one request is read once admitted."""
        service, name = method[1:].split("/", 1)
        streaming = handler.unary_unary is None
        served = _Method(method, name, handler, ("server_stream" if streaming else "unary", service, name))
        deserialize = handler.request_deserializer
        assert deserialize is not None

        async def behavior(_requests: AsyncIterator[Any], context: Context) -> Any:
            call = _Call(served)
            metrics.GRPC_STARTED.labels(*served.labels).inc()
            try:
                return await self._run(cast(Behavior, handler.unary_unary), context, call)
            finally:
                call.finish(context)

        async def stream_behavior(_requests: AsyncIterator[Any], context: Context) -> None:
            call = _Call(served)
            metrics.GRPC_STARTED.labels(*served.labels).inc()
            try:
                await self._run_stream(cast(Streaming, handler.unary_stream), context, call)
            finally:
                call.finish(context)

        # grpc answers UNKNOWN for a request it cannot parse; it is the client's fault, so let the
        # wrapped behavior refuse it with INVALID_ARGUMENT (and count it) instead.
        def tolerant_deserializer(data: bytes) -> Any:
            try:
                return deserialize(data)
            except DecodeError:
                return _Undecodable()

        if streaming:
            served.handler = grpc.stream_stream_rpc_method_handler(
                stream_behavior,
                request_deserializer=tolerant_deserializer,
                response_serializer=handler.response_serializer,
            )
        else:
            served.handler = grpc.stream_unary_rpc_method_handler(
                behavior,
                request_deserializer=tolerant_deserializer,
                response_serializer=handler.response_serializer,
            )
        return served

    async def _run(self, inner: Behavior, context: Context, call: _Call) -> Any:
        """Authenticate, admit, read the request, run the servicer, and turn whatever it raises into one
        status."""
        try:
            async with self._admitted(context, call) as request:
                return await inner(request, context)
        except BaseException as exc:
            await self._failed(context, call, exc)

    async def _run_stream(self, inner: Streaming, context: Context, call: _Call) -> None:
        """As _run, for a server-streaming method: its answers are written as they come, and whatever it
        raises, before its first answer or after its last, ends the stream with one status.

        A coroutine that writes, not a generator handed to grpc: a client that goes away cancels it at its
        write, here, and the servicer's generator is closed then (aclosing), in the call's own task while
        the call is alive; nothing is left for the garbage collector to close later, in another task."""
        try:
            async with self._admitted(context, call) as request:
                answers = inner(request, context)
                async with contextlib.aclosing(answers):
                    async for response in answers:
                        await context.write(response)
        except BaseException as exc:
            await self._failed(context, call, exc)

    @contextlib.asynccontextmanager
    async def _admitted(self, context: Context, call: _Call) -> AsyncIterator[Any]:
        """The call authenticated, admitted against its caller's share, and its request read: the request,
        with the caller as current_principal while the servicer runs."""
        metadata: Any = context.invocation_metadata()  # (key, value) pairs, as HandlerCallDetails has them
        call.principal = await self._auth.authenticate(metadata, call.method)
        if self._mtls:
            check_certificate(call.principal, context.auth_context())
        with self._admission.admit(call.principal):
            call.request = request = await self._request(context)
            if isinstance(request, _Undecodable):
                raise errors.InvalidArgument.one("request", f"not a valid {call.served.name} request message")
            token = current_principal.set(call.principal)
            try:
                yield request
            finally:
                current_principal.reset(token)

    async def _failed(self, context: Context, call: _Call, exc: BaseException) -> None:
        """End the call with the status for `exc` (re-raising what must go on up: a cancellation, an abort
        already sent)."""
        if isinstance(exc, errors.GongjiError):
            await call.abort(context, exc)
        if isinstance(exc, asyncio.CancelledError):
            # grpc.aio cancels the handler both when the client cancels and when the deadline
            # passes; the remaining time tells them apart.
            call.code = _cut_off_code(context)
            raise exc
        if not isinstance(exc, Exception) or isinstance(exc, grpc.aio.AbortError):
            raise exc
        database = db.as_gongji_error(exc)  # the store reads the driver's errors, in one place
        if database is not None:
            log.warning("%s during %s: %s", database.reason, call.method, type(exc).__name__)
            await call.abort(context, database)
        # The class and frames only, to the log and never to the client: messages of database
        # errors and failed assertions can quote row values (PII, balances).
        frames = "".join(traceback.format_tb(exc.__traceback__))
        log.error("unhandled %s in %s\n%s", type(exc).__name__, call.method, frames)
        await call.abort(context, errors.Internal("internal error"))

    async def _request(self, context: Context) -> Any:
        """The call's one request message, which must come within the wait. A unary client sends exactly
        one; anything it sends after the first is not read. (The context's reader, not the request
        iterator grpc passes: the same message without an async generator per call.)"""
        try:
            async with asyncio.timeout(self._request_wait_s):
                request = await context.read()
        except TimeoutError:
            raise errors.RequestMessageTimeout(
                f"no request message within {self._request_wait_s:g} s of the call's headers"
            ) from None
        if request is _EOF:
            # gRPC answers EOF both when the client half-closed without a message and when the call was
            # cancelled or its deadline passed; in those cases gRPC cancels this task a moment later,
            # and the call is counted as cut off, not as the client's bad request.
            await asyncio.sleep(limits.CANCELLATION_GRACE_S)
            raise errors.InvalidArgument.one("request", "the call ended without a request message")
        return request


class _Method:
    """One gongji method as the interceptor serves it: grpc's handler (`source`), the handler that wraps
    it, and the labels of its grpc_server_* series."""

    __slots__ = ("handler", "labels", "name", "path", "source")

    def __init__(
        self, path: str, name: str, source: grpc.RpcMethodHandler[Any, Any], labels: tuple[str, str, str]
    ) -> None:
        self.path = path  # /gongji.v1.SettlementService/Settle
        self.name = name  # Settle
        self.source = source
        self.labels = labels  # ("unary", service, method): metrics' Counter keeps the children by them
        self.handler: grpc.RpcMethodHandler[Any, Any] = source  # until _serve sets the wrapping one


class _Call:
    """What the interceptor learns about one RPC on the way, for its metrics and its log line."""

    __slots__ = ("code", "finished", "method", "principal", "reason", "request", "served", "started")

    def __init__(self, served: _Method) -> None:
        self.served = served
        self.method = served.path
        self.request: Any = None  # until it has been read
        self.started = time.perf_counter()
        self.code = "OK"
        self.reason = ""
        self.principal: Principal | None = None
        self.finished = False

    async def abort(self, context: Context, exc: errors.GongjiError) -> None:
        self.code, self.reason = exc.code, exc.reason
        if isinstance(exc, errors.Overloaded):
            metrics.EDGE_REFUSALS.labels(exc.reason).inc()
        status = to_status(exc)
        # Counted and logged before the status leaves: grpc.aio's abort sends it at once, and whoever
        # receives it (an operator, a test) must find the line and the counts already there.
        self.finish(context)
        await context.abort(status.code, status.details, status.trailing_metadata)

    def finish(self, context: Context) -> None:
        if self.finished:
            return
        self.finished = True
        request = self.request
        if self.code == "OK" and context.cancelled():
            self.code = _cut_off_code(context)
        duration_s = time.perf_counter() - self.started
        labels = self.served.labels
        metrics.GRPC_HANDLED.labels(*labels, self.code).inc()
        metrics.GRPC_HANDLING_SECONDS.labels(*labels).observe(duration_s)
        fields = {
            "method": self.method,
            "code": self.code,
            "reason": self.reason,
            "duration_ms": round(duration_s * 1000, 3),
            "institution": self.principal.institution_id if self.principal else None,
            "terminal": self.principal.terminal_id if self.principal else None,
            "request_id": _request_id(request),
        }
        logs.emit(rpc_log, "rpc", fields)


def _request_id(request: Any) -> str | None:
    """The request's idempotency key when it has one and it is well formed (a client-chosen string:
    anything else is not worth a log line's trust)."""
    value = getattr(request, "request_id", None)
    if isinstance(value, str) and len(value) <= limits.REQUEST_ID_LEN_MAX and _REQUEST_ID.fullmatch(value):
        return value
    return None


def _cut_off_code(context: Context) -> str:
    """Why a call ended before its answer: its deadline passed, or else the client cancelled it.

    The client's copy of the deadline runs out first and it cancels the stream; the server hears of it
    a network trip later, with a little time still left on its own copy (see DEADLINE_SLACK_S)."""
    remaining = context.time_remaining()
    expired = remaining is not None and remaining <= limits.DEADLINE_SLACK_S
    return "DEADLINE_EXCEEDED" if expired else "CANCELLED"
