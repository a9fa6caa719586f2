"""Bearer-token authentication and the who-may-call-what table of API.md."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
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


# With mTLS, a terminal's client certificate names its institution in a URI subject alternative name
# of this form (urn:gongji:institution:H61010300001). The certificate authority vouches for the
# institution; the bearer token for the terminal. A token of another institution is refused.
INSTITUTION_URI_PREFIX = "urn:gongji:institution:"


def certificate_institution(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """The institution the client certificate names, from its URI SANs (gRPC's `peer_uri` property);
    None when it names none, or more than one."""
    named = {
        uri.decode("utf-8", "replace").removeprefix(INSTITUTION_URI_PREFIX)
        for uri in auth_context.get("peer_uri", ())
        if uri.startswith(INSTITUTION_URI_PREFIX.encode())
    }
    return named.pop() if len(named) == 1 else None


def check_certificate(principal: Principal, auth_context: Mapping[str, Iterable[bytes]]) -> None:
    """With mTLS on, a terminal's institution is the one its client certificate names."""
    if principal.kind is not Kind.TERMINAL:
        return
    certified = certificate_institution(auth_context)
    if certified is None:
        raise errors.InstitutionMismatch(f"the client certificate names no institution ({INSTITUTION_URI_PREFIX}<id>)")
    if certified != principal.institution_id:
        raise errors.InstitutionMismatch("the credential belongs to another institution than the client certificate")


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
