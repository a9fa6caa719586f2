"""Bearer-token authentication and the who-may-call-what table of API.md."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextvars import ContextVar

import asyncpg

from gongji import errors, limits
from gongji.store import credentials
from gongji.store.credentials import Kind, Principal

# The authenticated caller of the RPC being handled, set by the interceptor.
current_principal: ContextVar[Principal] = ContextVar("current_principal")

_SERVICE_KINDS: dict[str, frozenset[Kind]] = {
    "gongji.v1.SettlementService": frozenset({Kind.TERMINAL}),
    "gongji.v1.FamilyService": frozenset({Kind.APP}),
    "gongji.v1.AccountService": frozenset({Kind.OPERATOR}),
}
# Operators reconcile any institution (a terminal reconciles its own). The app backend reads a person's
# balance and history (交易记录) for the app; everything else of AccountService is for operators.
_METHOD_KINDS: dict[str, frozenset[Kind]] = {
    "/gongji.v1.SettlementService/Reconcile": frozenset({Kind.TERMINAL, Kind.OPERATOR}),
    "/gongji.v1.AccountService/GetAccount": frozenset({Kind.OPERATOR, Kind.APP}),
    "/gongji.v1.AccountService/ListLedger": frozenset({Kind.OPERATOR, Kind.APP}),
}


def allowed_kinds(method: str) -> frozenset[Kind]:
    if method in _METHOD_KINDS:
        return _METHOD_KINDS[method]
    service = method.strip("/").split("/", 1)[0]
    return _SERVICE_KINDS.get(service, frozenset())


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise errors.CredentialsInvalid("authorization must be 'Bearer <token>'")
            return token.strip()
    raise errors.CredentialsMissing("missing 'authorization: Bearer <token>' metadata")


class Authenticator:
    """Resolves tokens to principals, caching results (misses too) for a short, bounded time."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._cache: dict[bytes, tuple[Principal | None, float]] = {}

    async def authenticate(self, metadata: Sequence[tuple[str, str | bytes]] | None, method: str) -> Principal:
        token = bearer_token(metadata)
        key = credentials.token_hash(token)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            principal = hit[0]
        else:
            principal = await credentials.lookup(self._pool, token)
            if len(self._cache) >= limits.CREDENTIAL_CACHE_ENTRIES_MAX:
                self._cache.clear()
            self._cache[key] = (principal, now + limits.CREDENTIAL_CACHE_TTL_S)
        if principal is None:
            raise errors.CredentialsInvalid("unknown or revoked credentials")
        if principal.kind not in allowed_kinds(method):
            raise errors.NotAllowed(f"{principal.kind.lower()} credentials may not call {method}")
        return principal
