"""Bearer-token authentication and the who-may-call-what table of docs/api.md."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar

from gongji import errors, limits
from gongji.store import credentials, db
from gongji.store.credentials import Kind, Principal

# The authenticated caller of the RPC being handled, set by the interceptor.
current_principal: ContextVar[Principal] = ContextVar("current_principal")

_SERVICE_KINDS: dict[str, frozenset[Kind]] = {
    "gongji.v1.SettlementService": frozenset({Kind.TERMINAL}),
    "gongji.v1.FamilyService": frozenset({Kind.APP}),
    "gongji.v1.WalletService": frozenset({Kind.APP}),
    "gongji.v1.AccountService": frozenset({Kind.OPERATOR}),
    # Events: a downstream system (ID numbers masked), the app backend (which tells people of their
    # family's use of their account) and operators; a terminal sees no one else's business.
    "gongji.v1.EventService": frozenset({Kind.CONSUMER, Kind.APP, Kind.OPERATOR}),
}
# Operators reconcile any institution (a terminal reconciles its own). The app backend reads a person's
# balance and history (交易记录) for the app, and pays a relative's resident premium: the insured person
# asks for it in the app, and only the app backend may (an operator sets rates and refunds, and moves no
# one's money on their behalf). Everything else of AccountService is for operators.
_METHOD_KINDS: dict[str, frozenset[Kind]] = {
    "/gongji.v1.SettlementService/Reconcile": frozenset({Kind.TERMINAL, Kind.OPERATOR}),
    "/gongji.v1.SettlementService/CheckTotals": frozenset({Kind.TERMINAL, Kind.OPERATOR}),
    "/gongji.v1.SettlementService/CheckDetail": frozenset({Kind.TERMINAL, Kind.OPERATOR}),
    "/gongji.v1.AccountService/GetAccount": frozenset({Kind.OPERATOR, Kind.APP}),
    "/gongji.v1.AccountService/ListLedger": frozenset({Kind.OPERATOR, Kind.APP}),
    "/gongji.v1.AccountService/PayPremium": frozenset({Kind.APP}),
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
    """Resolves tokens to principals, caching results (misses too) for a short, bounded time.

    How a revocation reaches the calls (issue 12), and why two mechanisms:
    - Money calls (Settle, Cancel, Reverse, Credit, PayPremium, RefundPremium) check the credential
      inside their own transaction (gongji.store.settlements, .lifecycle, .credits, .premiums): refused
      at once, on every replica, whatever this cache holds and whether or not any notification
      arrives. Moving money after a revocation is the harm that matters, so it depends on nothing
      that can be lost.
    - Every other call trusts this cache, which bounds the load on the database. A change of a
      credential row is announced by the database (NOTIFY, store/sql/credentials.sql) to one listening connection
      per server process (gongji.api.credential_watch), which calls `forget_credentials`: entries are
      dropped within milliseconds. Notifications can be lost while that connection is down, so then
      (`listening(False)`) the cache is cleared and answers are trusted for at most
      CREDENTIAL_CACHE_UNLISTENED_TTL_S; while it is up, for at most CREDENTIAL_CACHE_TTL_S.

    No caller without a valid credential may take the database from the others: while listening, the
    process also holds the hash of every live token (`know`, kept current by the same notifications),
    so a made-up token is refused without a query (a few a second are still looked up, for a
    credential created a moment ago); calls that miss the cache with the same token share one look-up;
    and at most CREDENTIAL_LOOKUPS_IN_FLIGHT_MAX look-ups run at once. Known and unknown tokens are
    cached apart, so a flood of unknown ones never evicts a working terminal's entry.

    It also remembers when each credential was last used, for `take_last_used` to write in batches.
    """

    def __init__(self, pool: db.Pool) -> None:
        self._pool = pool
        # Known tokens and unknown ones apart: a flood of random tokens fills (and, when full, clears)
        # only the misses, never evicting the entries of the terminals at work.
        self._cache: dict[bytes, tuple[Principal | None, float]] = {}
        self._misses: dict[bytes, tuple[Principal | None, float]] = {}
        self._ttl_s: float = limits.CREDENTIAL_CACHE_UNLISTENED_TTL_S  # until the listener is up
        # Bumped by every change announced: a lookup that was in flight across one may have read
        # the row before the change, so its answer is used once and not cached.
        self._generation = 0
        self._last_used: dict[int, float] = {}  # credential_id -> time.time() of its last use
        self._lookups = asyncio.Semaphore(limits.CREDENTIAL_LOOKUPS_IN_FLIGHT_MAX)
        self._in_flight: dict[bytes, tuple[asyncio.Future[Principal | None], int]] = {}
        # The hash of every live token (hash -> credential id) while the listener keeps it current; None
        # when it does not (not listening, or too many credentials): then every cache miss is looked up.
        self._known: dict[bytes, int] | None = None
        self._known_hash: dict[int, bytes] = {}
        self._unknown_lookups = _Allowance(limits.UNKNOWN_TOKEN_LOOKUPS_PER_S)

    async def authenticate(self, metadata: Sequence[tuple[str, str | bytes]] | None, method: str) -> Principal:
        token = bearer_token(metadata)
        key = credentials.token_hash(token)
        now = time.monotonic()
        hit = self._cache.get(key) or self._misses.get(key)
        if hit is not None and hit[1] > now:
            principal = hit[0]
        else:
            if self._unknown(key) and not self._unknown_lookups.take(now):
                # No live credential has this token (a flood of made-up ones is refused here, without
                # the database); a few a second are still looked up, for a credential just created.
                raise errors.CredentialsInvalid("unknown or revoked credentials")
            principal, generation = await self._lookup_once(key, token)
            if principal is not None and self._known is not None and key not in self._known:
                # Live, by the database's word, before its announcement arrived: known from now on, so
                # that the rest of a new terminal's first burst does not spend the allowance.
                self.known_changed(principal.credential_id, key)
            if generation == self._generation:
                entries = self._cache if principal is not None else self._misses
                if len(entries) >= limits.CREDENTIAL_CACHE_ENTRIES_MAX:
                    entries.clear()
                entries[key] = (principal, now + self._ttl_s)
        if principal is None:
            raise errors.CredentialsInvalid("unknown or revoked credentials")
        self._note_use(principal.credential_id)
        if principal.kind not in allowed_kinds(method):
            raise errors.NotAllowed(f"{principal.kind.lower()} credentials may not call {method}")
        return principal

    def _unknown(self, key: bytes) -> bool:
        """Whether no live credential has this token hash, as far as the set of them tells: False when
        the set is not held, or a look-up of this very token is in flight (the call joins it)."""
        if self._known is None or key in self._known:
            return False
        shared = self._in_flight.get(key)
        return shared is None or shared[1] != self._generation

    async def _lookup_once(self, key: bytes, token: str) -> tuple[Principal | None, int]:
        """Calls with the same token that miss the cache together share one look-up (a terminal's
        burst right after its entry expired is one query, not hundreds). With the answer, the
        generation the look-up started in: only an answer no change overtook may be cached."""
        shared = self._in_flight.get(key)
        if shared is None or shared[1] != self._generation:  # one overtaken by a change is not joined
            shared = (asyncio.ensure_future(self._lookup(token)), self._generation)
            self._in_flight[key] = shared
            shared[0].add_done_callback(functools.partial(self._looked_up, key, shared))
        return await asyncio.shield(shared[0]), shared[1]

    def _looked_up(
        self, key: bytes, shared: tuple[asyncio.Future[Principal | None], int], future: asyncio.Future[Principal | None]
    ) -> None:
        if self._in_flight.get(key) is shared:  # not a newer look-up of the same token
            del self._in_flight[key]
        if not future.cancelled():
            future.exception()  # retrieved, even when every caller has gone

    async def _lookup(self, token: str) -> Principal | None:
        """One credential look-up in the database, at most CREDENTIAL_LOOKUPS_IN_FLIGHT_MAX at once: a
        flood of unknown tokens (each a cache miss) queues here, not on the pool that settlements need,
        and a call that cannot get a turn within CREDENTIAL_LOOKUP_WAIT_S is refused as SERVER_BUSY."""
        try:
            async with asyncio.timeout(limits.CREDENTIAL_LOOKUP_WAIT_S):
                await self._lookups.acquire()
        except TimeoutError:
            raise errors.ServerBusy("too many credential look-ups in flight; retry shortly") from None
        try:
            return await credentials.lookup(self._pool, token)
        finally:
            self._lookups.release()

    def listening(self, up: bool) -> None:
        """The listener connected (every change from now on will be announced) or lost its
        connection (changes may go unannounced): either way what is cached may be stale, so forget it;
        then trust new answers for as long as the state allows."""
        self._ttl_s = limits.CREDENTIAL_CACHE_TTL_S if up else limits.CREDENTIAL_CACHE_UNLISTENED_TTL_S
        self._forget_all()
        self.know(None)  # until loaded afresh (gongji.api.credential_watch)

    @property
    def knows_tokens(self) -> bool:
        return self._known is not None

    def changing(self) -> None:
        """A change was announced: a look-up in flight may have read the row before it, so its answer
        must not be cached (the change itself is applied a moment later, by `forget_credentials`)."""
        self._generation += 1

    def know(self, hashes: dict[bytes, int] | None) -> None:
        """Every live token's hash, as loaded after the listener connected; None: unknown."""
        self._known = hashes
        self._known_hash = {} if hashes is None else {c: h for h, c in hashes.items()}

    def known_changed(self, credential_id: int, token_hash: bytes | None) -> None:
        """One credential as it now is: live with this token hash, or (None) revoked or gone."""
        if self._known is None:
            return
        old = self._known_hash.pop(credential_id, None)
        if old is not None:
            self._known.pop(old, None)
        if token_hash is None:
            return
        if len(self._known) >= limits.CREDENTIALS_IN_MEMORY_MAX:
            self.know(None)  # a set that misses a live credential must not refuse anything
            return
        self._known[token_hash] = credential_id
        self._known_hash[credential_id] = token_hash

    def forget_credentials(self, credential_ids: set[int] | None) -> None:
        """These credentials were revoked, deleted or changed (None: any of them may have been): drop
        what is cached of them, in one pass over the cache. (In-flight look-ups were already kept from
        caching by `changing`.)"""
        if credential_ids is None:
            self._forget_all()
            return
        self._misses.clear()  # cheap, and a token unknown a moment ago may be a new credential's
        stale = [k for k, (p, _) in self._cache.items() if p is not None and p.credential_id in credential_ids]
        for key in stale:
            del self._cache[key]

    def _forget_all(self) -> None:
        self._generation += 1
        self._cache.clear()
        self._misses.clear()

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


class _Allowance:
    """At most `per_s` a second, in bursts of at most a second's worth (a token bucket)."""

    def __init__(self, per_s: int) -> None:
        self._per_s = per_s
        self._left = float(per_s)
        self._at = time.monotonic()

    def take(self, now: float) -> bool:
        self._left = min(float(self._per_s), self._left + (now - self._at) * self._per_s)
        self._at = now
        if self._left < 1:
            return False
        self._left -= 1
        return True
