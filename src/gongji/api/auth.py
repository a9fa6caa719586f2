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
    """Resolves tokens to principals, caching results (misses too) for a short, bounded time.

    How a revocation reaches the calls (issue 12), and why two mechanisms:
    - Money calls (Settle, Cancel, Reverse, Credit) check the credential inside their own transaction
      (gongji.store.settlements, .lifecycle, .credits): refused at once, on every replica, whatever
      this cache holds and whether or not any notification arrives. Moving money after a revocation
      is the harm that matters, so it depends on nothing that can be lost.
    - Every other call trusts this cache, which bounds the load on the database. A change of a
      credential row is announced by the database (NOTIFY, migration 0005) to one listening connection
      per server process (gongji.api.credential_watch), which calls `credential_changed`: entries are
      dropped within milliseconds. Notifications can be lost while that connection is down, so then
      (`listening(False)`) the cache is cleared and answers are trusted for at most
      CREDENTIAL_CACHE_UNLISTENED_TTL_S; while it is up, for at most CREDENTIAL_CACHE_TTL_S.

    It also remembers when each credential was last used, for `take_last_used` to write in batches.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._cache: dict[bytes, tuple[Principal | None, float]] = {}
        self._ttl_s: float = limits.CREDENTIAL_CACHE_UNLISTENED_TTL_S  # until the listener is up
        # Bumped by every change announced: a lookup that was in flight across one may have read
        # the row before the change, so its answer is used once and not cached.
        self._generation = 0
        self._last_used: dict[int, float] = {}  # credential_id -> time.time() of its last use

    async def authenticate(self, metadata: Sequence[tuple[str, str | bytes]] | None, method: str) -> Principal:
        token = bearer_token(metadata)
        key = credentials.token_hash(token)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            principal = hit[0]
        else:
            generation = self._generation
            principal = await credentials.lookup(self._pool, token)
            if generation == self._generation:
                if len(self._cache) >= limits.CREDENTIAL_CACHE_ENTRIES_MAX:
                    self._cache.clear()
                self._cache[key] = (principal, now + self._ttl_s)
        if principal is None:
            raise errors.CredentialsInvalid("unknown or revoked credentials")
        self._note_use(principal.credential_id)
        if principal.kind not in allowed_kinds(method):
            raise errors.NotAllowed(f"{principal.kind.lower()} credentials may not call {method}")
        return principal

    def listening(self, up: bool) -> None:
        """The listener connected (every change from now on will be announced) or lost its
        connection (changes may go unannounced): either way what is cached may be stale, so forget it;
        then trust new answers for as long as the state allows."""
        self._ttl_s = limits.CREDENTIAL_CACHE_TTL_S if up else limits.CREDENTIAL_CACHE_UNLISTENED_TTL_S
        self._forget_all()

    def credential_changed(self, payload: str) -> None:
        """A credential was revoked, deleted or changed: drop its entries ('*' or anything that is
        not an id: all of them)."""
        self._generation += 1
        if not payload.isdigit():
            self._forget_all()
            return
        credential_id = int(payload)
        stale = [k for k, (p, _) in self._cache.items() if p is not None and p.credential_id == credential_id]
        for key in stale:
            del self._cache[key]

    def _forget_all(self) -> None:
        self._generation += 1
        self._cache.clear()

    def _note_use(self, credential_id: int) -> None:
        """In memory only (a dict store per call): `take_last_used` hands them to one batched write."""
        uses = self._last_used
        if credential_id in uses or len(uses) < limits.CREDENTIAL_LAST_USED_ENTRIES_MAX:
            uses[credential_id] = time.time()

    def take_last_used(self) -> dict[int, float]:
        """The uses remembered since the last call (credential_id -> Unix time), now forgotten."""
        taken, self._last_used = self._last_used, {}
        return taken

    def give_back_last_used(self, uses: dict[int, float]) -> None:
        """Uses a flush could not write, kept for the next one (newer uses win; still bounded)."""
        for credential_id, at in uses.items():
            if credential_id not in self._last_used and len(self._last_used) < limits.CREDENTIAL_LAST_USED_ENTRIES_MAX:
                self._last_used[credential_id] = at
