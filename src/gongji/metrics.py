"""Prometheus metrics. Labels never carry personal data: only methods, codes, reasons, sources, lock kinds
and institution ids (an institution is a pharmacy or hospital, not a person).

The README's "Operating gongji" section says what each family means and which alert reads it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Iterator
from typing import Any, Self

import asyncpg
import prometheus_client
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from gongji import errors
from gongji.config import CannotListen, host_port
from gongji.domain.waterfall import Limit


class _KeptChildren(MetricWrapperBase):
    """`labels(...)` answered from the children it already made, by the values as given:
    prometheus_client's takes a lock, checks its arguments and builds a tuple of strings at every call,
    and a settlement counts through a dozen labelled series. Safe: a child is the very series
    `labels(...)` answers for as long as it is registered, and every way of unregistering one (remove,
    remove_by_labels, clear) forgets the kept ones too. Bounded as prometheus_client's own map is: one
    entry per label set in use (gongji's label values are method names, codes, reasons and the like,
    and institution ids)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._kept: dict[tuple[object, ...], Self] = {}
        super().__init__(*args, **kwargs)

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Self:
        if labelkwargs:
            return super().labels(*labelvalues, **labelkwargs)
        child = self._kept.get(labelvalues)
        if child is None:
            child = self._kept[labelvalues] = super().labels(*labelvalues)
        return child

    def remove(self, *labelvalues: Any) -> None:
        self._kept = {}
        super().remove(*labelvalues)

    def remove_by_labels(self, labels: dict[str, str]) -> None:
        self._kept = {}
        super().remove_by_labels(labels)

    def clear(self) -> None:
        self._kept = {}
        super().clear()


class Counter(_KeptChildren, prometheus_client.Counter):
    """A prometheus_client Counter whose `labels(...)` is a dict look-up once a label set is in use."""


class Histogram(_KeptChildren, prometheus_client.Histogram):
    """A prometheus_client Histogram whose `labels(...)` is a dict look-up once a label set is in use."""


# The grpc-ecosystem server families (names and labels as go-grpc-prometheus exports them).
GRPC_STARTED = Counter(
    "grpc_server_started_total", "RPCs started on the server.", ["grpc_type", "grpc_service", "grpc_method"]
)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, regardless of success or failure.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Response latency of RPCs handled by the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

# Calls refused at the edge so that no caller takes the service from the others (gongji.api.admission):
# SERVER_BUSY, CALLER_BUSY, REQUEST_MESSAGE_TIMEOUT. A rise means a caller misbehaves or the limits are
# too tight; grpc_server_handled_total counts the same calls as RESOURCE_EXHAUSTED.
EDGE_REFUSALS = Counter(
    "gongji_edge_refusals_total", "Calls refused at the edge to protect the other callers, by reason.", ["reason"]
)

# Settlement outcomes and money.
SETTLEMENTS = Counter(
    "gongji_settlements_total", "Settle calls by outcome: OK, REPLAYED, or the refusal reason.", ["outcome"]
)
SETTLED_FEN = Counter(
    "gongji_settled_fen_total", "Money settled, in fen, by source: own, mutual_aid, wallet, cash.", ["source"]
)
SETTLEMENTS_BY_CARE = Counter(
    "gongji_settlements_by_care_total",
    "Settlements made, by where care happened against the patient's insured region: LOCAL, OUT_OF_REGION"
    " (another 统筹区 of the province), OUT_OF_PROVINCE.",
    ["care_scope"],
)
SETTLED_FEN_BY_CARE = Counter(
    "gongji_settled_fen_by_care_total",
    "Money settled from personal accounts (own, mutual aid and the wallet), in fen, by care scope as in"
    " gongji_settlements_by_care_total.",
    ["care_scope"],
)
SETTLED_FEN_BY_PART = Counter(
    "gongji_settled_fen_by_part_total",
    "Money settled, in fen, by source as in gongji_settled_fen_total and by part of the bill: in_scope,"
    " over_limit, wholly_self_paid (a bill sent as its amount only is all in_scope).",
    ["source", "part"],
)
MUTUAL_AID_LIMITED = Counter(
    "gongji_mutual_aid_limited_total",
    "Settlements in which a limit made mutual aid pay less than the bill needed, by limit: GRANT_CAP,"
    " BENEFICIARY_CAP, AUTHORIZER_FLOOR, CARE_REGION.",
    ["limit"],
)
IDEMPOTENT_REPLAYS = Counter(
    "gongji_idempotent_replays_total",
    "Retried requests answered with the original result, moving nothing again, by method.",
    ["method"],
)

# Holds at the till (Quote with hold_seconds), counted once per event: HELD, CAPTURED (a Settle took it),
# RELEASED (its terminal gave it back), EXPIRED (nobody captured it in time). A replay is not counted.
HOLDS = Counter(
    "gongji_holds_total", "Holds at the till by event: HELD, CAPTURED, RELEASED, EXPIRED, each counted once.", ["event"]
)
HOLDS_PENDING = Gauge(
    "gongji_holds_pending",
    "Holds PENDING (their money out of the accounts and wallets), as the expiry work last read them.",
    multiprocess_mode="max",
)
HELD_FEN = Gauge(
    "gongji_held_fen",
    "Money held at the till by PENDING holds, in fen, as the expiry work last read it.",
    multiprocess_mode="max",
)

# Refunds (Cancel, 2208) and reversals (Reverse, 2601), counted once each: a replayed Cancel or a
# repeated Reverse moves nothing and is not counted again. A reversal's money is in REFUNDED_FEN too.
REFUNDS = Counter("gongji_refunds_total", "Refunds (Cancel) committed.")
REFUNDED_FEN = Counter(
    "gongji_refunded_fen_total", "Money refunded, in fen, by source: own, mutual_aid, wallet, cash.", ["source"]
)
REVERSALS = Counter("gongji_reversals_total", "Reversals (Reverse) that undid a settlement.")
# Reversals of a Cancel (Reverse with ORIGINAL_KIND_CANCEL) that took a refund back, counted once, and the
# money they took back, by the source it had been refunded to. Net refunded: REFUNDED_FEN less this.
REFUND_REVERSALS = Counter("gongji_refund_reversals_total", "Reversals (Reverse) that undid a refund.")
REFUND_REVERSED_FEN = Counter(
    "gongji_refund_reversed_fen_total",
    "Money taken back by reversals of refunds, in fen, by source: own, mutual_aid, wallet, cash.",
    ["source"],
)

# Resident premiums paid from a relative's personal account (PayPremium, RefundPremium), recorded by the
# servicer. A replay moves nothing: counted as REPLAYED, its money not again.
PREMIUM_PAYMENTS = Counter(
    "gongji_premium_payments_total", "PayPremium calls by outcome: OK, REPLAYED, or the refusal reason.", ["outcome"]
)
PREMIUM_PAID_FEN = Counter("gongji_premium_paid_fen_total", "Premiums paid from personal accounts, in fen.")
PREMIUM_REFUNDS = Counter("gongji_premium_refunds_total", "Premium payments refunded (RefundPremium), counted once.")
PREMIUM_REFUNDED_FEN = Counter("gongji_premium_refunded_fen_total", "Premiums refunded to personal accounts, in fen.")

# The 医保钱包: transfers by what happened to them, and what the expiry work sees. The gauges are set
# by each replica's expiry work from the database, so any replica's figure is the whole service's:
# `max` across a server's worker processes.
WALLET_TRANSFERS = Counter(
    "gongji_wallet_transfers_total",
    "Wallet transfers by event: SENT, ACCEPTED, DECLINED, EXPIRED (returned by the expiry work or at an"
    " accept or decline past the due time); refused sends and calls by their reason.",
    ["event"],
)
WALLET_TRANSFERRED_FEN = Counter(
    "gongji_wallet_transferred_fen_total", "Money of wallet transfers, in fen, by event as above.", ["event"]
)
WALLET_PENDING = Gauge(
    "gongji_wallet_pending_transfers",
    "Wallet transfers PENDING (out of the sender's account, not yet accepted), as the expiry work last saw.",
    multiprocess_mode="max",
)
WALLET_PENDING_FEN = Gauge(
    "gongji_wallet_pending_fen",
    "Money in PENDING wallet transfers, in fen, as the expiry work last saw.",
    multiprocess_mode="max",
)
WALLET_OVERDUE_SECONDS = Gauge(
    "gongji_wallet_expiry_overdue_seconds",
    "How far past its due time the oldest PENDING wallet transfer was when the expiry work last looked"
    " (0: none was due). Above a few minutes: the expiry work is late or failing.",
    multiprocess_mode="max",
)
# The outbox (docs/events.md). Events are counted when sequenced: committed, and in the stream.
EVENTS_WRITTEN = Counter("gongji_events_written_total", "Events sequenced into the stream, by type.", ["type"])
EVENTS_UNSEQUENCED_SECONDS = Gauge(
    "gongji_events_unsequenced_seconds",
    "How long ago the oldest event still waiting for its position occurred (a fraction of a second when well).",
    multiprocess_mode="max",
)
EVENT_CONSUMER_LAG_EVENTS = Gauge(
    "gongji_event_consumer_lag_events",
    "Events sequenced that a named consumer has not read yet, by consumer (credential label/name).",
    ["consumer"],
    multiprocess_mode="max",
)
EVENT_CONSUMER_LAG_SECONDS = Gauge(
    "gongji_event_consumer_lag_seconds",
    "How long ago the oldest event a named consumer has not read occurred; 0 when it is caught up.",
    ["consumer"],
    multiprocess_mode="max",
)
OUTBOX_RUNS = Counter(
    "gongji_outbox_runs_total",
    "Runs of the outbox's upkeep, by work (sequence, prune, lag) and outcome (ok; skipped: another server"
    " held the head; failed).",
    ["work", "outcome"],
)
WALLET_EXPIRY_RUNS = Counter(
    "gongji_wallet_expiry_runs_total", "Runs of the wallet expiry work, by outcome: ok, failed.", ["outcome"]
)

# E-vouchers. Every refusal is counted by reason; the real-name mismatch (a voucher naming someone else
# than the patient: the fraud signal) also has a family of its own, per institution, so that an alert
# and an investigator see where it happens without digging through the other reasons.
VOUCHER_REFUSALS = Counter(
    "gongji_voucher_refusals_total",
    "E-vouchers refused, by method and reason (VOUCHER_INVALID, VOUCHER_EXPIRED, VOUCHER_ALREADY_USED, "
    "VOUCHER_PATIENT_MISMATCH).",
    ["method", "reason"],
)
REAL_NAME_MISMATCHES = Counter(
    "gongji_real_name_mismatches_total",
    "E-vouchers presented for another patient than the one they name (real-name rule), by institution.",
    ["institution"],
)

# Time inside the database. Lock waits are measured by gongji_settle itself around each locking
# statement (store/sql/settle.sql), so they exclude network and pool time.
_DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SETTLE_LOCK_WAIT_SECONDS = Histogram(
    "gongji_settle_lock_wait_seconds",
    "Time a settlement waited for its locks, by lock: idempotency, voucher, grant, account.",
    ["lock"],
    buckets=_DB_BUCKETS,
)
SETTLE_TRANSACTION_SECONDS = Histogram(
    "gongji_settle_transaction_seconds",
    "Time of the settlement transaction (the one gongji_settle call), connection already acquired.",
    buckets=_DB_BUCKETS,
)
POOL_ACQUIRE_SECONDS = Histogram(
    "gongji_db_pool_acquire_seconds",
    "Time a settlement waited for a pooled database connection.",
    buckets=_DB_BUCKETS,
)

SETTLE_RETRIES = Counter(
    "gongji_settle_retries_total",
    "gongji_settle runs repeated because a concurrent settlement of the same patient changed the "
    "balance it peeked at (rare; nothing is written by the repeated run).",
)
MIGRATIONS_APPLIED = Counter("gongji_migrations_applied_total", "Schema migrations applied by this process.")

# The credential listener (api/credential_watch.py): 1 per process while it listens, summed over the live
# workers. Below the number of processes for long, revocations reach those caches only by their 1 s TTL
# (and the database answers more credential lookups).
CREDENTIAL_LISTENERS = Gauge(
    "gongji_credential_listeners_connected",
    "Server processes listening for credential changes (one connection each).",
    multiprocess_mode="livesum",
)
CREDENTIAL_LISTENER_LOSSES = Counter(
    "gongji_credential_listener_losses_total", "Times a credential listener lost its connection."
)
CREDENTIAL_CHANGES = Counter(
    "gongji_credential_changes_total", "Credential changes (revocations, deletions) announced to this process."
)

LOCK_KINDS = ("idempotency", "voucher", "grant", "account")


# Every series an alert or a dashboard may read exists from the start, at 0: `increase()` and `rate()`
# see the first event only when the series was there before it. Fixed label values are created here;
# the gRPC method families (all codes of every method, as go-grpc-prometheus initialises them) when the
# server registers its services; an institution's real-name series on its first settlement.
_SETTLE_OUTCOMES = (
    "OK",
    "REPLAYED",
    *(
        e.reason
        for e in (
            errors.InvalidArgument, errors.InvalidAmount, errors.PersonNotFound, errors.PersonNotActive,
            errors.VoucherInvalid, errors.VoucherExpired, errors.VoucherAlreadyUsed,
            errors.VoucherPatientMismatch, errors.IdempotencyKeyReused, errors.TransactionAborted,
            errors.DatabaseUnavailable, errors.Internal,
        )
    ),
)  # fmt: skip
_VOUCHER_REASONS = tuple(
    e.reason
    for e in (errors.VoucherInvalid, errors.VoucherExpired, errors.VoucherAlreadyUsed, errors.VoucherPatientMismatch)
)
GRPC_CODES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip


def _zero_fixed_series() -> None:
    for outcome in _SETTLE_OUTCOMES:
        SETTLEMENTS.labels(outcome)
    for method in ("Quote", "Settle"):
        for reason in _VOUCHER_REASONS:
            VOUCHER_REFUSALS.labels(method, reason)
    for source in ("own", "mutual_aid", "wallet", "cash"):
        SETTLED_FEN.labels(source)
        REFUNDED_FEN.labels(source)
        REFUND_REVERSED_FEN.labels(source)
    for limit in Limit:
        MUTUAL_AID_LIMITED.labels(limit.value)
    for event in ("HELD", "CAPTURED", "RELEASED", "EXPIRED"):
        HOLDS.labels(event)
    for reason in (errors.ServerBusy.reason, errors.CallerBusy.reason, errors.RequestMessageTimeout.reason):
        EDGE_REFUSALS.labels(reason)
    for method in ("Settle", "Cancel", "Credit", "PayPremium", "RefundPremium"):
        IDEMPOTENT_REPLAYS.labels(method)
    for outcome in ("OK", "REPLAYED"):
        PREMIUM_PAYMENTS.labels(outcome)
    for lock in LOCK_KINDS:
        SETTLE_LOCK_WAIT_SECONDS.labels(lock)


def zero_grpc_series(methods: Iterable[tuple[str, str, str]]) -> None:
    """Create the grpc_server_* series of every (type, service, method) at 0, every code for handled."""
    for labels in methods:
        GRPC_STARTED.labels(*labels)
        GRPC_HANDLING_SECONDS.labels(*labels)
        for code in GRPC_CODES:
            GRPC_HANDLED.labels(*labels, code)


_zero_fixed_series()


def _waiting(pool: asyncpg.Pool) -> int:
    """Callers waiting for a connection. asyncpg has no public count, so read its holder queue's
    waiters (an asyncio.Queue); tests/integration/test_metrics.py proves it against a real wait."""
    queue = getattr(pool, "_queue", None)
    getters: Iterable[object] = getattr(queue, "_getters", ())
    return sum(1 for g in getters if not getattr(g, "done", lambda: True)())


class PoolCollector(Collector):
    """Pool gauges read at scrape time, so that they are never stale and cost nothing between scrapes."""

    def __init__(self) -> None:
        self.pool: asyncpg.Pool | None = None

    def collect(self) -> Iterator[Metric]:
        pool = self.pool
        if pool is None:
            return
        size, idle = pool.get_size(), pool.get_idle_size()
        yield GaugeMetricFamily(
            "gongji_db_pool_max_connections", "Configured maximum size of the pool.", pool.get_max_size()
        )
        yield GaugeMetricFamily("gongji_db_pool_connections", "Connections open in the pool.", size)
        yield GaugeMetricFamily("gongji_db_pool_connections_in_use", "Connections lent out.", size - idle)
        yield GaugeMetricFamily("gongji_db_pool_waiting", "Callers waiting for a connection.", _waiting(pool))


POOL = PoolCollector()

# With `gongji serve --workers N`, every worker writes its metrics to files in PROMETHEUS_MULTIPROC_DIR
# and the parent process serves their aggregate. A collector read at scrape time cannot work across
# processes, so there the pool gauges are ordinary gauges that each worker refreshes, summed over the
# live workers (prometheus-client's "livesum").
MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ
POOL_REFRESH_S = 1.0
if MULTIPROCESS:
    _POOL_GAUGES = {
        name: Gauge(name, doc, multiprocess_mode="livesum")
        for name, doc in (
            ("gongji_db_pool_max_connections", "Configured maximum size of the pools, summed over workers."),
            ("gongji_db_pool_connections", "Connections open in the pools."),
            ("gongji_db_pool_connections_in_use", "Connections lent out."),
            ("gongji_db_pool_waiting", "Callers waiting for a connection."),
        )
    }
else:
    REGISTRY.register(POOL)


def serve_http(listen: str, registry: CollectorRegistry = REGISTRY) -> None:
    """Serve /metrics on `listen` (GONGJI_METRICS_LISTEN) from a daemon thread."""
    host, port = host_port(listen)
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise CannotListen("metrics", listen, "GONGJI_METRICS_LISTEN", exc.strerror or str(exc)) from None


def watch_pool(pool: asyncpg.Pool) -> None:
    """Report this pool's gauges from now on (the server's pool; one per process)."""
    POOL.pool = pool


async def publish_pool_gauges(pool: asyncpg.Pool) -> None:
    """In a worker process: copy the pool's readings into the shared gauges, every POOL_REFRESH_S."""
    assert MULTIPROCESS
    while True:
        size, idle = pool.get_size(), pool.get_idle_size()
        _POOL_GAUGES["gongji_db_pool_max_connections"].set(pool.get_max_size())
        _POOL_GAUGES["gongji_db_pool_connections"].set(size)
        _POOL_GAUGES["gongji_db_pool_connections_in_use"].set(size - idle)
        _POOL_GAUGES["gongji_db_pool_waiting"].set(_waiting(pool))
        await asyncio.sleep(POOL_REFRESH_S)
