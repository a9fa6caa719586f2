"""Chaos: for a bounded time, concurrent POS terminals, the app backend and an operator run mixed
traffic (settlements, refunds, reversals, credits, 医保钱包 transfers sent, accepted and declined,
settlements the wallets pay, some of them refunded, and splits held at the till by a Quote, then
captured by their Settle, released, or left to run out) on a few hot families against a real `gongji
serve` process, while the suite injects faults: client cancellations and tiny deadlines,
pg_terminate_backend on the server's database connections, and gongji restarts (SIGTERM mid-load, then
start again). Then every request left without an answer is retried with the same request id until it
has one, and the suite checks:

- every request converged to exactly one outcome: one settlement, refund, credit, transfer or hold for
  an answered OK (the same one every time it was answered), none for a refusal; an accepted transfer
  is in its wallet, a declined one back with its sender; a captured hold is the settlement that
  captured it, exactly, a released one released, one refused HOLD_EXPIRED expired;
- `gongji audit` finds no difference; no balance is negative; no settlement is half-written (each has
  its ledger entries and its idempotency key, each key its settlement) and no voucher settled twice;
  the money that moved adds up from the settlement, refund, credit, transfer and hold tables alone,
  the wallets' too (what pending holds set aside is out of the balances);
- no call was ever answered INTERNAL or UNKNOWN;
- a downstream system reading the event stream all the while, killed and resumed many times (and cut
  off by every restart and terminated connection), ends with every event exactly once after
  deduplication, and each person's events in the order of their ledger and wallet entries
  (tests/chaos/event_consumer.py).

The figures are printed at the end. `make chaos` runs it with CHAOS_SECONDS of load (CI: a few).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import uvloop
from conftest import VOUCHER_KEY
from event_consumer import EventConsumer
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import error_infos, fresh_database, make_tokens
from support import CHILD, INSTITUTION_A, INSTITUTION_B, PARENT, RESIDENT, Api, Tokens, bearer

from gongji.domain.eligibility import DEFAULT_POLICY
from gongji.store import audit
from gongji.v1 import account_pb2, family_pb2, settlement_pb2, types_pb2, wallet_pb2

S = grpc.StatusCode
SIBLING = types_pb2.RELATIONSHIP_SIBLING
GONGJI = str(Path(sys.executable).with_name("gongji"))

SECONDS = float(os.environ.get("CHAOS_SECONDS", "8"))
CLIENTS = int(os.environ.get("CHAOS_CLIENTS", "12"))
FAMILIES = int(os.environ.get("CHAOS_FAMILIES", "3"))
SEED = int(os.environ.get("CHAOS_SEED", str(random.SystemRandom().randrange(10**6))))
# Bounds on everything, whatever CHAOS_SECONDS says.
OPS_PER_CLIENT_MAX = 100_000
RETRY_ATTEMPTS_MAX = 40
# A restart (of gongji here, of PostgreSQL in test_database_restart) every this many seconds of load,
# at least one per run: a full run of 300 s restarts five times, CI's few seconds once.
RESTART_EVERY_S = max(SECONDS / 5, 20.0)

# How long the load may go on beyond CHAOS_SECONDS while a fault (a database outage) is not over yet.
LOAD_OVERRUN_S_MAX = 120.0

# Answers that settle a request for good. Anything else (DEADLINE_EXCEEDED, CANCELLED, UNAVAILABLE,
# ABORTED) leaves it unanswered: the POS retries with the same request id.
DEFINITIVE = {
    S.OK,
    S.INVALID_ARGUMENT,
    S.NOT_FOUND,
    S.FAILED_PRECONDITION,
    S.PERMISSION_DENIED,
    S.ALREADY_EXISTS,
    S.RESOURCE_EXHAUSTED,
}
DEFECTS = {S.INTERNAL, S.UNKNOWN, S.DATA_LOSS, S.UNIMPLEMENTED}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class GongjiProcess:
    """`gongji serve` as operators run it, over the chaos database, on a fixed loopback port so that
    clients reconnect to it across restarts. Only the process this class started is ever signalled."""

    def __init__(self, db_url: str, workdir: Path) -> None:
        self.target = f"127.0.0.1:{_free_port()}"
        self.log = workdir / "gongji.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GONGJI_")} | {
            "GONGJI_DATABASE_URL": db_url,
            "GONGJI_DATA_DIR": str(workdir),
            "GONGJI_GRPC_LISTEN": self.target,
            "GONGJI_METRICS_LISTEN": f"127.0.0.1:{_free_port()}",
            "GONGJI_VOUCHER_KEY": VOUCHER_KEY.decode(),
            "GONGJI_VOUCHER_TTL_S": "300",
            "GONGJI_GRACE_PERIOD_S": "2",
            "GONGJI_DB_COMMAND_TIMEOUT_S": "5",
            "GONGJI_POOL_MAX_SIZE": "10",
            "GONGJI_LOG_LEVEL": "WARNING",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_codes: list[int] = []

    async def start(self) -> None:
        self.proc = self._spawn()
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(600):  # bounded: 60 s for a Python process to start and migrate
                assert self.proc.poll() is None, f"gongji serve exited early:\n{self.log_tail()}"
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                await asyncio.sleep(0.1)
        raise AssertionError(f"gongji serve did not become SERVING:\n{self.log_tail()}")

    def _spawn(self) -> subprocess.Popen[bytes]:
        """Popen returns at once; the wait for SERVING is asynchronous."""
        with self.log.open("ab") as log:
            return subprocess.Popen([GONGJI, "serve"], env=self.env, stdout=log, stderr=log)

    async def stop(self) -> int:
        """SIGTERM, as an orchestrator stops it; its exit code (0 when it stopped gracefully)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        for _ in range(300):  # bounded: the 2 s grace period and the pool's closing, with room to spare
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        else:
            self.proc.kill()
            self.proc.wait(10)
        self.exit_codes.append(self.proc.returncode)
        return self.proc.returncode

    async def audit(self) -> list[str]:
        """`gongji audit` as an operator runs it, with the server's own settings: nothing if clean."""
        done = await asyncio.to_thread(
            subprocess.run, [GONGJI, "audit"], env=self.env, capture_output=True, timeout=120, check=False
        )
        if done.returncode == 0:
            return []
        return [f"gongji audit exited {done.returncode}: {(done.stdout + done.stderr).decode(errors='replace')}"]

    def unhandled(self) -> list[str]:
        """Each error the server logged as unhandled (an INTERNAL answer), with its frames."""
        lines = self.log.read_text(errors="replace").splitlines()
        return ["\n".join(lines[i : i + 16]) for i, line in enumerate(lines) if "unhandled" in line]

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Request:
    """One logical request as a POS (or the operator) sent it, with every answer it got."""

    kind: str  # settle, cancel, credit, reverse, send, accept, decline, hold, release; read (not kept)
    # (institution or "", request id); a send: (sender, request id); an accept or decline: (transfer id,
    # a name of its own); a hold (a holding Quote): (institution, request id); a release: (hold id, a
    # name of its own).
    key: tuple[str, str]
    method: Callable[..., Any]  # the stub's method
    message: Message
    token: str
    answers: list[tuple[S, str, Any]] = field(default_factory=list)  # (code, reason, reply)

    async def send(self, deadline_s: float) -> Any:
        return await self.method(self.message, metadata=bearer(self.token), timeout=deadline_s)

    @property
    def final(self) -> tuple[S, str, Any] | None:
        definitive = [a for a in self.answers if a[0] in DEFINITIVE]
        return definitive[-1] if definitive else None


@dataclass
class Figures:
    requests: int = 0  # logical requests
    calls: int = 0  # RPCs sent, retries included
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    tiny_deadlines: int = 0
    cancellations: int = 0
    kill_rounds: int = 0
    backends_killed: int = 0
    restarts: int = 0
    database_restarts: int = 0
    database_kills: collections.Counter[str] = field(default_factory=collections.Counter)  # by kind
    promotions: int = 0
    acknowledged: int = 0  # writes answered OK, looked up in the books after the load
    lost: collections.Counter[str] = field(default_factory=collections.Counter)  # of those, missing, by kind
    outage_answers: collections.Counter[str] = field(default_factory=collections.Counter)
    retries: int = 0
    replays_checked: int = 0
    violations: list[str] = field(default_factory=list)
    # 医保钱包 requests by how they ended ("send OK", "send TRANSFER_PENDING", "accept OK", ...).
    wallet: collections.Counter[str] = field(default_factory=collections.Counter)
    # Holds at the till by how their requests ended ("hold OK", "capture HOLD_EXPIRED", "release OK"),
    # and how the holds stand at the end ("holds CAPTURED").
    holds: collections.Counter[str] = field(default_factory=collections.Counter)

    def faults(self) -> int:
        database = self.restarts + self.database_restarts + sum(self.database_kills.values())
        return self.tiny_deadlines + self.cancellations + self.backends_killed + database

    def lines(self, seconds: float) -> list[str]:
        codes = ", ".join(f"{c} {n}" for c, n in self.codes.most_common())
        return [
            f"chaos: {seconds:.0f} s of load, {CLIENTS} clients on {FAMILIES} hot families, seed {SEED}",
            f"chaos: requests sent: {self.requests} ({self.calls} calls: {codes})",
            f"chaos: faults injected: {self.faults()} ({self.tiny_deadlines} tiny deadlines, {self.cancellations}"
            f" client cancellations, {self.backends_killed} server connections terminated in {self.kill_rounds}"
            f" rounds, {self.restarts} gongji restarts, {self.database_restarts} PostgreSQL restarts,"
            f" {sum(self.database_kills.values())} PostgreSQL kills)",
            *(
                [f"chaos: PostgreSQL killed: {dict(self.database_kills)}, standbys promoted: {self.promotions}"]
                if self.database_kills
                else []
            ),
            f"chaos: acknowledged writes checked: {self.acknowledged}, lost: {sum(self.lost.values())}"
            + (f" {dict(self.lost)}" if self.lost else ""),
            f"chaos: retries: {self.retries} (and {self.replays_checked} answered requests sent again)",
            f"chaos: 医保钱包 requests: {', '.join(f'{what} {n}' for what, n in sorted(self.wallet.items()))}",
            f"chaos: holds at the till: {', '.join(f'{what} {n}' for what, n in sorted(self.holds.items()))}",
            *(
                [f"chaos: while PostgreSQL was down: health NOT_SERVING, calls answered {dict(self.outage_answers)}"]
                if self.database_restarts or self.database_kills
                else []
            ),
            f"chaos: violations: {len(self.violations)}",
        ]


class Chaos:
    def __init__(self, api: Api, tokens: Tokens, check: asyncpg.Pool, server: GongjiProcess) -> None:
        self.api = api
        self.tokens = tokens
        self.check = check
        self.server = server
        self.rng = random.Random(SEED)
        self.figures = Figures()
        self.requests: list[Request] = []
        self.settled: list[Request] = []  # settle requests answered OK, to refund
        self.wallet_settled: list[Request] = []  # of those, the ones a wallet paid part of
        self.sent: list[Request] = []  # 医保钱包 sends answered OK, to accept or decline
        self.held: list[Request] = []  # holding Quotes answered OK, to capture or release later
        # Acknowledged writes may be lost (a failover with asynchronous replication): so may the one write
        # of a refusal (a capture refused HOLD_EXPIRED gives the hold back).
        self.lost_allowed = False
        self.families: list[tuple[str, list[str]]] = []
        self.health: health_pb2_grpc.HealthStub | None = None  # the server's, through the clients' channel
        # A downstream system reading the events meanwhile (operator's token: ID numbers whole, to hold the
        # stream to the books), killed and resumed many times.
        self.consumer = EventConsumer(api, tokens.operator, random.Random(SEED + 1))

    # ---- one call, maybe cut off -----------------------------------------------------------------
    async def _attempt(self, request: Request, *, faults: bool) -> None:
        mode = self.rng.choices(["plain", "tiny", "cancel"], [70, 15, 15])[0] if faults else "plain"
        self.figures.calls += 1
        try:
            if mode == "tiny":
                self.figures.tiny_deadlines += 1
                reply = await request.send(self.rng.uniform(0.001, 0.03))
            elif mode == "cancel":
                reply = await self._cancelled_soon(request)
            else:
                reply = await request.send(15.0)
            request.answers.append((S.OK, "", reply))
            self.figures.codes["OK"] += 1
        except grpc.aio.AioRpcError as error:
            infos = error_infos(error)
            reason = infos[0].reason if len(infos) == 1 else ""
            request.answers.append((error.code(), reason, None))
            self.figures.codes[error.code().name] += 1
            if error.code() in DEFECTS:
                self.figures.violations.append(f"{request.kind} {request.key}: {error.code().name} {error.details()}")
            elif error.code() in DEFINITIVE and len(infos) != 1:
                self.figures.violations.append(f"{request.kind} {request.key}: {error.code().name} without ErrorInfo")
            elif error.code() == S.UNAVAILABLE:
                await asyncio.sleep(self.rng.uniform(0.02, 0.1))  # a POS backs off before its next call
        except asyncio.CancelledError:
            request.answers.append((S.CANCELLED, "", None))
            self.figures.codes["CANCELLED"] += 1

    async def _cancelled_soon(self, request: Request) -> Any:
        """The client gives up after a few milliseconds, whatever the server is doing."""
        task = asyncio.ensure_future(request.send(15.0))
        await asyncio.sleep(self.rng.uniform(0, 0.03))
        if not task.done():
            self.figures.cancellations += 1
            task.cancel()
        return await task

    # ---- the requests ----------------------------------------------------------------------------
    def _new(
        self, kind: str, key: tuple[str, str], method: Callable[..., Any], message: Message, token: str
    ) -> Request:
        request = Request(kind, key, method, message, token)
        self.requests.append(request)
        self.figures.requests += 1
        return request

    def _terminal(self, institution: str) -> str:
        return self.tokens.terminal_a if institution == "A" else self.tokens.terminal_b

    async def _voucher(self, patient: str) -> str | None:
        """The patient's fresh e-voucher from the app backend (not idempotent: a lost answer only
        leaves an unused voucher behind)."""
        request = Request(
            "voucher",
            ("", ""),
            self.api.family.IssueVoucher,
            family_pb2.IssueVoucherRequest(person_id=patient),
            self.tokens.app,
        )
        await self._attempt(request, faults=False)
        final = request.final
        return str(final[2].voucher) if final and final[0] == S.OK else None

    async def settle(self) -> None:
        _, members = self.rng.choice(self.families)
        await self._settle(self.rng.choice(members), self.rng.randint(1, 4_000))

    async def _settle(self, patient: str, amount_fen: int) -> None:
        voucher = await self._voucher(patient)
        if voucher is None:
            return
        institution = self.rng.choice(["A", "B"])
        message = settlement_pb2.SettleRequest(
            request_id=f"chaos-s-{uuid.uuid4()}",
            voucher=voucher,
            patient_id=patient,
            amount_fen=amount_fen,
        )
        key = (institution, message.request_id)
        request = self._new("settle", key, self.api.settlement.Settle, message, self._terminal(institution))
        await self._attempt(request, faults=True)
        if request.final and request.final[0] == S.OK:
            self.settled.append(request)
            if request.final[2].settlement.wallet_pay_fen:
                self.wallet_settled.append(request)

    async def _read(self, method: Callable[..., Any], message: Message, token: str) -> Any | None:
        """A read's answer, or None when it got none (a fault cut it off: the caller does without)."""
        request = Request("read", ("", ""), method, message, token)
        await self._attempt(request, faults=True)
        final = request.final
        return final[2] if final and final[0] == S.OK else None

    async def settle_from_the_wallet(self) -> None:
        """A member whose 医保钱包 holds money settles about what it holds (a fen less, all of it, a fen
        more), or about what it and their own account hold together (the resident-insured member has
        none): the wallet pays after the own account (the default place), alone or with the own account,
        mutual aid and cash, while transfers into it are accepted and other settlements draw on the
        family's accounts."""
        _, members = self.rng.choice(self.families)
        patient = self.rng.choice([members[2], *members])  # the resident-insured one, twice as often
        wallet = await self._read(
            self.api.wallet.GetWallet, wallet_pb2.GetWalletRequest(person_id=patient), self.tokens.app
        )
        account = await self._read(
            self.api.account.GetAccount, account_pb2.GetAccountRequest(person_id=patient), self.tokens.operator
        )
        if wallet is None or account is None or not wallet.wallet.balance_fen:
            return
        held = wallet.wallet.balance_fen + self.rng.choice([0, account.account.balance_fen])
        await self._settle(patient, max(1, held + self.rng.choice([-1, 0, 1])))

    async def cancel(self) -> None:
        if self.settled:
            original = self.rng.choice(self.settled)
            s = original.final[2].settlement  # type: ignore[index]
            await self._cancel(original, self.rng.choice([0, self.rng.randint(1, max(1, s.amount_fen // 2))]))

    async def refund_to_the_wallet(self) -> None:
        """A settlement a wallet paid part of, refunded: all that is left, or past what cash and mutual
        aid paid, so that the refund reaches the wallet (refused when earlier refunds left less)."""
        if self.wallet_settled:
            original = self.rng.choice(self.wallet_settled)
            s = original.final[2].settlement  # type: ignore[index]
            await self._cancel(original, self.rng.choice([0, s.psn_cash_pay_fen + s.acct_mulaid_pay_fen + 1]))

    async def _cancel(self, original: Request, amount_fen: int) -> None:
        s = original.final[2].settlement  # type: ignore[index]
        message = settlement_pb2.CancelRequest(
            request_id=f"chaos-c-{uuid.uuid4()}", settlement_id=s.settlement_id, amount_fen=amount_fen
        )
        institution = original.key[0]
        key = (institution, message.request_id)
        request = self._new("cancel", key, self.api.settlement.Cancel, message, self._terminal(institution))
        await self._attempt(request, faults=True)

    async def reverse(self) -> None:
        originals = [r for r in self.requests if r.kind == "settle"]
        if not originals:
            return
        original = self.rng.choice(originals)
        message = settlement_pb2.ReverseRequest(original_request_id=original.key[1])
        token = self._terminal(original.key[0])
        await self._attempt(
            self._new("reverse", original.key, self.api.settlement.Reverse, message, token), faults=True
        )

    async def credit(self) -> None:
        authorizer, members = self.rng.choice(self.families)
        message = account_pb2.CreditRequest(
            request_id=f"chaos-k-{uuid.uuid4()}",
            person_id=self.rng.choice([authorizer, *members]),
            amount_fen=self.rng.randint(1_000, 50_000),
        )
        key = ("", message.request_id)
        await self._attempt(
            self._new("credit", key, self.api.account.Credit, message, self.tokens.operator), faults=True
        )

    async def send(self) -> None:
        """A 医保钱包 transfer within a family: the authorizer to a member, a member to the authorizer or
        to another member; now and then over the limit of one transfer. While the sender's last one
        waits for its recipient, or past the day's count, or in the quiet hours where the published
        limits apply, it is refused: an outcome like any other, converged on like any other."""
        authorizer, members = self.rng.choice(self.families)
        senders = [authorizer, *members[:2]]  # the employee-insured
        sender = self.rng.choice(senders)
        recipient = self.rng.choice([p for p in (authorizer, *members) if p != sender])
        relationship = CHILD if sender == authorizer else PARENT if recipient == authorizer else SIBLING
        amount = self.rng.choice([self.rng.randint(1, 3_000)] * 9 + [200_001])
        message = wallet_pb2.SendTransferRequest(
            request_id=f"chaos-w-{uuid.uuid4()}",
            sender_id=sender,
            recipient_id=recipient,
            relationship=relationship,
            amount_fen=amount,
        )
        request = self._new(
            "send", (sender, message.request_id), self.api.wallet.SendTransfer, message, self.tokens.app
        )
        await self._attempt(request, faults=True)
        if request.final and request.final[0] == S.OK:
            self.sent.append(request)

    async def resolve(self) -> None:
        """The recipient accepts (mostly) or declines a transfer sent in this run, maybe one answered
        already or raced by another client: each resolves once."""
        if not self.sent:
            return
        t = self.rng.choice(self.sent).final[2].transfer  # type: ignore[index]
        if self.rng.random() < 0.7:
            kind, method, message = (
                "accept",
                self.api.wallet.AcceptTransfer,
                wallet_pb2.AcceptTransferRequest(transfer_id=t.transfer_id, recipient_id=t.recipient_id),
            )
        else:
            kind, method, message = (
                "decline",
                self.api.wallet.DeclineTransfer,
                wallet_pb2.DeclineTransferRequest(transfer_id=t.transfer_id, recipient_id=t.recipient_id),
            )
        request = self._new(kind, (t.transfer_id, str(uuid.uuid4())), method, message, self.tokens.app)
        await self._attempt(request, faults=True)

    async def hold(self) -> None:
        """A member's bill held at the till by a Quote (2206 with a hold): for a second or two (which
        may run out before its capture under load), a few seconds, or minutes; then mostly captured at
        once by the Settle presenting the same code, now and then released, or left to another client
        (hold_later) or to its time. Held money is out of reach of every other settlement meanwhile."""
        _, members = self.rng.choice(self.families)
        patient = self.rng.choice(members)
        voucher = await self._voucher(patient)
        if voucher is None:
            return
        institution = self.rng.choice(["A", "B"])
        message = settlement_pb2.QuoteRequest(
            request_id=f"chaos-h-{uuid.uuid4()}",
            voucher=voucher,
            patient_id=patient,
            amount_fen=self.rng.randint(1, 4_000),
            hold_seconds=self.rng.choice([1, 2, 5, 60, 120]),
        )
        key = (institution, message.request_id)
        request = self._new("hold", key, self.api.settlement.Quote, message, self._terminal(institution))
        await self._attempt(request, faults=True)
        if not (request.final and request.final[0] == S.OK):
            return
        self.held.append(request)
        then = self.rng.choices(["capture", "release", "leave"], [6, 1, 2])[0]
        if then == "capture":
            await self._capture(request, voucher)
        elif then == "release":
            await self._release(request)

    async def hold_later(self) -> None:
        """A hold of this run captured (mostly) or released by another client, maybe one ended already,
        run out, or raced by another client: each hold ends once."""
        if self.held:
            held = self.rng.choice(self.held)
            await (self._capture(held, None) if self.rng.random() < 0.7 else self._release(held))

    async def _capture(self, held: Request, voucher: str | None) -> None:
        """The Settle naming the hold, asking what its Quote asked (now and then a fen more: refused
        HOLD_MISMATCH), with the code the Quote was asked with or a fresh one."""
        quote = held.message
        assert isinstance(quote, settlement_pb2.QuoteRequest)
        voucher = voucher or await self._voucher(quote.patient_id)
        if voucher is None:
            return
        message = settlement_pb2.SettleRequest(
            request_id=f"chaos-s-{uuid.uuid4()}",
            voucher=voucher,
            patient_id=quote.patient_id,
            amount_fen=quote.amount_fen + (1 if self.rng.random() < 0.05 else 0),
            hold_id=held.final[2].hold.hold_id,  # type: ignore[index]
        )
        institution = held.key[0]
        key = (institution, message.request_id)
        request = self._new("settle", key, self.api.settlement.Settle, message, self._terminal(institution))
        await self._attempt(request, faults=True)
        if request.final and request.final[0] == S.OK:
            self.settled.append(request)
            if request.final[2].settlement.wallet_pay_fen:
                self.wallet_settled.append(request)

    async def _release(self, held: Request) -> None:
        hold_id = held.final[2].hold.hold_id  # type: ignore[index]
        message = settlement_pb2.ReleaseHoldRequest(hold_id=hold_id)
        request = self._new(
            "release",
            (hold_id, str(uuid.uuid4())),
            self.api.settlement.ReleaseHold,
            message,
            self._terminal(held.key[0]),
        )
        await self._attempt(request, faults=True)

    async def read(self) -> None:
        """A quote or a balance: nothing to converge, but never INTERNAL either."""
        _, members = self.rng.choice(self.families)
        patient = self.rng.choice(members)
        if self.rng.random() < 0.5:
            message: Message = account_pb2.GetAccountRequest(person_id=patient)
            request = Request("read", ("", ""), self.api.account.GetAccount, message, self.tokens.operator)
        else:
            voucher = await self._voucher(patient)
            if voucher is None:
                return
            message = settlement_pb2.QuoteRequest(voucher=voucher, patient_id=patient, amount_fen=500)
            request = Request("read", ("", ""), self.api.settlement.Quote, message, self.tokens.terminal_a)
        await self._attempt(request, faults=True)

    # ---- the load and the faults -----------------------------------------------------------------
    async def client(self, until: float, faults_done: asyncio.Event) -> None:
        """Until `until`, and on while faults are still being injected (a database outage that began
        late is still met by load), but never beyond LOAD_OVERRUN_S_MAX."""
        ops = [self.settle] * 6 + [self.cancel] * 2 + [self.reverse, self.credit, self.read, self.read]
        ops += [self.send] * 2 + [self.resolve] * 2 + [self.settle_from_the_wallet] * 2 + [self.refund_to_the_wallet]
        ops += [self.hold] * 2 + [self.hold_later]
        for _ in range(OPS_PER_CLIENT_MAX):
            now = time.monotonic()
            if now >= until + LOAD_OVERRUN_S_MAX or (now >= until and faults_done.is_set()):
                return
            await self.rng.choice(ops)()

    async def kill_connections(self, until: float) -> None:
        """pg_terminate_backend on every connection of the server (application_name 'gongji')."""
        while time.monotonic() < until:
            await asyncio.sleep(self.rng.uniform(0.3, 1.2))
            killed = await self.check.fetchval(
                "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity"
                " where datname = current_database() and application_name = 'gongji') as t"
            )
            self.figures.kill_rounds += 1
            self.figures.backends_killed += killed

    async def restart_server(self, started: float, until: float) -> None:
        """SIGTERM mid-load and start again, every RESTART_EVERY_S (at least once)."""
        at = started + min(RESTART_EVERY_S, SECONDS) / 2
        while at < until:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            code = await self.server.stop()
            if code != 0:
                self.figures.violations.append(f"gongji exited {code} on SIGTERM:\n{self.server.log_tail()}")
            await self.server.start()
            self.figures.restarts += 1
            at += RESTART_EVERY_S

    # ---- then: retry, and check ------------------------------------------------------------------
    async def retry_unanswered(self) -> None:
        for request in self.requests:
            for attempt in range(RETRY_ATTEMPTS_MAX):
                if request.final is not None:
                    break
                self.figures.retries += 1
                if request.kind in ("settle", "hold"):
                    await self._rescan(request)
                await self._attempt(request, faults=False)
                if request.final is None:
                    await asyncio.sleep(0.05 * (attempt + 1))
            if request.final is None:
                self.figures.violations.append(f"{request.kind} {request.key}: no answer after retries")

    async def _rescan(self, request: Request) -> None:
        """A POS retrying a settlement (or a holding Quote) rescans the patient's code: the same request
        with a fresh voucher (the voucher is a credential, not content, so a committed original replays;
        one that never committed settles, or holds, now)."""
        assert isinstance(request.message, settlement_pb2.SettleRequest | settlement_pb2.QuoteRequest)
        voucher = await self._voucher(request.message.patient_id)
        if voucher is not None:
            request.message.voucher = voucher

    async def replay_answered(self) -> None:
        """Send a sample of answered settlements, refunds and holding Quotes again: the same answer,
        nothing moved."""
        answered = [
            r for r in self.requests if r.kind in ("settle", "cancel", "hold") and r.final and r.final[0] == S.OK
        ]
        for request in self.rng.sample(answered, min(len(answered), 200)):
            before = request.final
            await self._attempt(request, faults=False)
            self.figures.replays_checked += 1
            after = request.final
            assert before is not None and after is not None
            if request.kind == "settle":
                same = after[0] == S.OK and after[2].settlement.settlement_id == before[2].settlement.settlement_id
                reversed_since = after[1] == "ALREADY_REVERSED"
                if not (same and after[2].replayed) and not reversed_since:
                    self.figures.violations.append(f"settle {request.key}: answered {before[:2]}, then {after[:2]}")
            elif request.kind == "hold":
                if not (after[0] == S.OK and after[2].hold.hold_id == before[2].hold.hold_id):
                    self.figures.violations.append(f"hold {request.key}: answered {before[:2]}, then {after[:2]}")
            elif not (
                after[0] == S.OK and after[2].refund.refund_id == before[2].refund.refund_id and after[2].replayed
            ):
                self.figures.violations.append(f"cancel {request.key}: answered {before[:2]}, then {after[:2]}")

    async def setup(self) -> None:
        """Hot families: an authorizer with money and three members holding grants from them (two
        employees with a little of their own, one resident-insured), all in one province, each with a
        医保钱包 open. The last family lives where the published wallet limits apply (3 sends a day,
        none from 22:00 to 06:00 China time: on the machine's clock, as the server runs); the others
        where the region's policy allows 100 sends a day at any hour, so that transfers are sent,
        accepted and declined under load whenever the suite runs; there, the resident-insured member's
        wallet starts with money the authorizer sent and the member accepted, so that wallets pay at the
        till from the first second."""
        await self.check.execute(WALLET_LIMITS_LIFTED, RELAXED_REGION)
        for i in range(FAMILIES):
            region = PUBLISHED_REGION if i == FAMILIES - 1 else RELAXED_REGION
            authorizer = await self.api.enroll(balance_fen=500_000, birth=dt.date(1960, 1, 1), region=region)
            members = [
                await self.api.enroll(balance_fen=5_000, birth=dt.date(1990, 1, 1), region=region) for _ in range(2)
            ]
            members.append(await self.api.enroll(scheme=RESIDENT, birth=dt.date(2015, 1, 1), region=region))
            for member in members:
                await self.api.grant(authorizer, member, CHILD)
            for person in (authorizer, *members):
                opened = wallet_pb2.OpenWalletRequest(person_id=person)
                await self.api.wallet.OpenWallet(opened, metadata=bearer(self.tokens.app))
            if region == RELAXED_REGION:
                await self._fund(authorizer, members[2], 2_000)
            self.families.append((authorizer, members))

    async def _fund(self, sender: str, recipient: str, amount_fen: int) -> None:
        sent = wallet_pb2.SendTransferRequest(
            request_id=f"chaos-setup-{uuid.uuid4()}",
            sender_id=sender,
            recipient_id=recipient,
            relationship=CHILD,
            amount_fen=amount_fen,
        )
        reply = await self.api.wallet.SendTransfer(sent, metadata=bearer(self.tokens.app))
        accepted = wallet_pb2.AcceptTransferRequest(transfer_id=reply.transfer.transfer_id, recipient_id=recipient)
        await self.api.wallet.AcceptTransfer(accepted, metadata=bearer(self.tokens.app))

    async def check_acknowledged(self) -> list[Request]:
        """Every write any client saw answered OK, looked up in the books as they are after the load (on
        the new primary after a failover), before any retry could write it again: those missing."""
        lost: list[Request] = []
        for kind, query in ACKNOWLEDGED.items():
            requests = [r for r in self.requests if r.kind == kind and any(a[0] == S.OK for a in r.answers)]
            ids = [_written_id(kind, next(a[2] for a in r.answers if a[0] == S.OK), r) for r in requests]
            found = {row[0] for row in await self.check.fetch(query, ids)}
            self.figures.acknowledged += len(requests)
            for request, id_ in zip(requests, ids, strict=True):
                if id_ not in found:
                    lost.append(request)
                    self.figures.lost[kind] += 1
        return lost

    def set_aside(self, lost: list[Request]) -> None:
        """Leave requests out of the retries and convergence checks (acknowledged writes that a failover
        with asynchronous replication lost: counted, and the books checked without them)."""
        gone = {id(r) for r in lost}
        # An accept or decline of a transfer whose send was lost goes with it.
        lost_transfers = {_written_id("send", r.final[2], r) for r in lost if r.kind == "send" and r.final}
        gone |= {id(r) for r in self.requests if r.kind in ("accept", "decline") and r.key[0] in lost_transfers}
        # And a capture or release of a hold that was lost, or whose capture or release was.
        lost_holds = {_written_id("hold", r.final[2], r) for r in lost if r.kind in ("hold", "release") and r.final}
        lost_holds |= {getattr(r.message, "hold_id", "") for r in lost if r.kind == "settle"} - {""}
        gone |= {
            id(r)
            for r in self.requests
            if (r.kind == "release" and r.key[0] in lost_holds)
            or (r.kind == "settle" and getattr(r.message, "hold_id", "") in lost_holds)
        }
        self.requests = [r for r in self.requests if id(r) not in gone]
        self.settled = [r for r in self.settled if id(r) not in gone]
        self.wallet_settled = [r for r in self.wallet_settled if id(r) not in gone]
        self.sent = [r for r in self.sent if id(r) not in gone]
        self.held = [r for r in self.held if id(r) not in gone]

    async def check_convergence(self) -> None:
        """Each request has exactly one outcome: what its answers say is what the store holds."""
        for request in self.requests:
            final = request.final
            if final is None:
                continue  # already a violation: no answer after retries
            oks = [a[2] for a in request.answers if a[0] == S.OK]
            if request.kind in ("send", "accept", "decline"):
                self.figures.wallet[f"{request.kind} {final[1] or final[0].name}"] += 1
            elif request.kind in ("hold", "release"):
                self.figures.holds[f"{request.kind} {final[1] or final[0].name}"] += 1
            elif request.kind == "settle" and getattr(request.message, "hold_id", ""):
                self.figures.holds[f"capture {final[1] or final[0].name}"] += 1
            elif request.kind == "settle" and final[0] == S.OK and final[2].settlement.wallet_pay_fen:
                self.figures.wallet["settlements a wallet paid"] += 1
            elif request.kind == "cancel" and final[0] == S.OK and final[2].refund.wallet_pay_fen:
                self.figures.wallet["refunds back to a wallet"] += 1
            problem = await getattr(self, f"_converged_{request.kind}")(request, final, oks)
            if problem:
                self.figures.violations.append(f"{request.kind} {request.key}: {problem}")

    async def _converged_settle(self, request: Request, final: tuple[S, str, Any], oks: list[Any]) -> str | None:
        institution = INSTITUTIONS[request.key[0]]
        rows = await self.check.fetch(
            "select settlement_id::text as id, amount_fen, refunded_fen, reversed_at from settlement"
            " where institution_id = $1 and request_id = $2",
            institution,
            request.key[1],
        )
        ids = {reply.settlement.settlement_id for reply in oks}
        if len(ids) > 1:
            return f"answered with {len(ids)} different settlements"
        reversed_ = await self.check.fetchval(
            "select count(*) from reversal where institution_id = $1 and request_id = $2", institution, request.key[1]
        )
        if final[0] == S.OK:
            if len(rows) != 1 or rows[0]["id"] not in ids:
                return f"answered OK, but the store holds {len(rows)} settlements for it"
        elif final[1] == "ALREADY_REVERSED":
            if not reversed_:
                return "answered ALREADY_REVERSED without a reversal"
            if rows and (rows[0]["reversed_at"] is None or rows[0]["refunded_fen"] != rows[0]["amount_fen"]):
                return "reversed, but not undone whole"
            if oks and not rows:
                return "answered OK once, but the store holds no settlement"
        elif rows or oks:
            return f"finally refused ({final[1]}), but {len(rows)} settlements are stored"
        if getattr(request.message, "hold_id", ""):
            return await self._converged_capture(request, final, rows[0]["id"] if rows else None)
        return None

    async def _converged_capture(self, request: Request, final: tuple[S, str, Any], settled: str | None) -> str | None:
        """A capture answered OK left its hold CAPTURED by that settlement (that it took exactly the split
        held is HALF_WRITTEN's to say); one refused HOLD_EXPIRED found it past its time and gave it back
        (or, retried, found it so: HOLD_RESOLVED); any other refusal left the hold as it was."""
        hold = await self.check.fetchrow(
            "select state, settlement_id::text as settlement_id from settlement_hold where hold_id::text = $1",
            request.message.hold_id,  # type: ignore[attr-defined]
        )
        state = hold["state"] if hold else None
        if final[0] != S.OK and state == "PENDING" and self.lost_allowed:
            return None  # the refusal's write, or the capture or release that ended the hold, was lost
        if final[0] == S.OK and (state != "CAPTURED" or hold["settlement_id"] != settled):  # type: ignore[index]
            return f"answered OK; its hold is {state}, by {hold and hold['settlement_id']}"
        if final[1] == "HOLD_EXPIRED" and state != "EXPIRED":
            return f"refused HOLD_EXPIRED; its hold is {state}"
        if final[1] == "HOLD_RESOLVED" and state == "PENDING":
            return "refused HOLD_RESOLVED; its hold is PENDING"
        return None

    async def _converged_hold(self, request: Request, final: tuple[S, str, Any], oks: list[Any]) -> str | None:
        rows = await self.check.fetch(
            "select hold_id::text as id from settlement_hold where institution_id = $1 and request_id = $2",
            INSTITUTIONS[request.key[0]],
            request.key[1],
        )
        ids = {reply.hold.hold_id for reply in oks}
        if len(ids) > 1:
            return f"answered with {len(ids)} different holds"
        if final[0] == S.OK:
            return None if len(rows) == 1 and rows[0]["id"] in ids else f"answered OK; {len(rows)} holds stored"
        return None if not rows and not oks else f"finally refused ({final[1]}); {len(rows)} holds stored"

    async def _converged_release(self, request: Request, final: tuple[S, str, Any], oks: list[Any]) -> str | None:
        """A release answered OK left its hold RELEASED (EXPIRED when its time was over); one refused
        HOLD_RESOLVED found it CAPTURED."""
        state = await self.check.fetchval("select state from settlement_hold where hold_id::text = $1", request.key[0])
        if final[0] == S.OK:
            answered = settlement_pb2.HoldState.Name(final[2].hold.state).removeprefix("HOLD_STATE_")
            return None if state in ("RELEASED", "EXPIRED") and answered == state else f"answered OK; it is {state}"
        if final[1] == "HOLD_RESOLVED":
            return None if state == "CAPTURED" else f"refused HOLD_RESOLVED; it is {state}"
        return f"refused {final[1]}; it is {state}"

    async def _converged_cancel(self, request: Request, final: tuple[S, str, Any], oks: list[Any]) -> str | None:
        rows = await self.check.fetch(
            "select refund_id::text as id from refund"
            " where institution_id = $1 and request_id = $2 and kind = 'CANCEL'",
            INSTITUTIONS[request.key[0]],
            request.key[1],
        )
        ids = {reply.refund.refund_id for reply in oks}
        if len(ids) > 1:
            return f"answered with {len(ids)} different refunds"
        if final[0] == S.OK:
            return None if len(rows) == 1 and rows[0]["id"] in ids else f"answered OK; {len(rows)} refunds stored"
        return None if not rows and not oks else f"finally refused ({final[1]}); {len(rows)} refunds stored"

    async def _converged_credit(self, request: Request, final: tuple[S, str, Any], oks: list[Any]) -> str | None:
        rows = await self.check.fetch("select credit_id::text as id from credit where request_id = $1", request.key[1])
        ids = {reply.credit_id for reply in oks}
        if len(ids) > 1:
            return f"answered with {len(ids)} different credits"
        if final[0] == S.OK:
            return None if len(rows) == 1 and rows[0]["id"] in ids else f"answered OK; {len(rows)} credits stored"
        return None if not rows and not oks else f"finally refused ({final[1]}); {len(rows)} credits stored"

    async def _converged_reverse(self, request: Request, final: tuple[S, str, Any], oks: list[Any]) -> str | None:
        if final[0] != S.OK:
            return f"a reversal was refused: {final[1]}"
        undone = await self.check.fetchval(
            "select settlement_id is not null from reversal where institution_id = $1 and request_id = $2",
            INSTITUTIONS[request.key[0]],
            request.key[1],
        )
        if undone is None:
            return "answered OK, but no reversal is stored"
        if {reply.undone for reply in oks} != {undone}:
            return f"answered undone={sorted({r.undone for r in oks})}, stored {undone}"
        return None

    async def _converged_send(self, request: Request, final: tuple[S, str, Any], oks: list[Any]) -> str | None:
        rows = await self.check.fetch(
            "select transfer_id::text as id from wallet_transfer where sender_id = $1 and request_id = $2",
            *request.key,
        )
        ids = {reply.transfer.transfer_id for reply in oks}
        if len(ids) > 1:
            return f"answered with {len(ids)} different transfers"
        if final[0] == S.OK:
            return None if len(rows) == 1 and rows[0]["id"] in ids else f"answered OK; {len(rows)} transfers stored"
        return None if not rows and not oks else f"finally refused ({final[1]}); {len(rows)} transfers stored"

    async def _converged_accept(self, request: Request, final: tuple[S, str, Any], oks: list[Any]) -> str | None:
        return await self._converged_resolve(request, final, {"POSTED"}, {"VOIDED", "EXPIRED"})

    async def _converged_decline(self, request: Request, final: tuple[S, str, Any], oks: list[Any]) -> str | None:
        return await self._converged_resolve(request, final, {"VOIDED", "EXPIRED"}, {"POSTED"})

    async def _converged_resolve(
        self, request: Request, final: tuple[S, str, Any], done: set[str], other: set[str]
    ) -> str | None:
        """An accept (decline) answered OK left its transfer accepted (returned); one refused
        TRANSFER_RESOLVED found it ended the other way. The books of each state are the audit's."""
        state = await self.check.fetchval(
            "select state from wallet_transfer where transfer_id::text = $1", request.key[0]
        )
        if final[0] == S.OK:
            return None if state in done and final[2].transfer.state == _STATE[state] else f"answered OK; it is {state}"
        if final[1] == "TRANSFER_RESOLVED":
            return None if state in other else f"refused TRANSFER_RESOLVED; it is {state}"
        return f"refused {final[1]}; it is {state}"

    async def check_books(self) -> None:
        v = self.figures.violations
        v += [f"audit: {d}" for d in await audit.differences(self.check)]
        v += [f"audit --chain: {d}" for d in await audit.chain_breaks(self.check)]
        for name, query in HALF_WRITTEN.items():
            n = await self.check.fetchval(query)
            if n:
                v.append(f"{n} {name}")
        money = await self.check.fetchrow(MONEY)
        assert money is not None
        accounts = money["credited"] - money["spent"] + money["returned"] - money["transferred"] - money["held"]
        if money["balances"] != accounts:
            v.append(f"money does not add up: {dict(money)}")
        held = await self.check.fetch("select state, count(*) as n from settlement_hold group by state")
        self.figures.holds.update({f"holds {row['state']} at the end": row["n"] for row in held})
        if (
            money["wallets"]
            != money["posted"] - money["wallets_spent"] + money["wallets_returned"] - money["wallets_held"]
        ):
            v.append(
                "the wallets do not hold what was accepted, less what they paid, plus refunds, less what is held:"
                f" {dict(money)}"
            )
        if await self.check.fetchval("select count(*) from account where balance_fen < 0"):
            v.append("a negative balance")


INSTITUTIONS = {"A": INSTITUTION_A, "B": INSTITUTION_B}

# Where the hot families live: two 统筹区 of one province, one with the published 医保钱包 limits and one
# whose region policy lifts the daily count and the quiet hours (so that a run at any hour sends). The
# policy is written into its columns (0016_wallets.sql) as SetRegionPolicy's RegionPolicy.wallet stores
# them, with the chaos data set up before the load; the grant rules are the built-in ones, as where no
# policy is set.
RELAXED_REGION, PUBLISHED_REGION = "610100", "610200"
WALLET_LIMITS_LIFTED = f"""
insert into region_policy (region_key, scope, allowed_relationships, wallet_sends_per_day, wallet_quiet_from,
                           wallet_quiet_until)
values ($1, '{DEFAULT_POLICY.scope.value}', array[{", ".join(f"'{r.value}'" for r in sorted(DEFAULT_POLICY.allowed))}],
        100, time '00:00', time '00:00')"""

# Where an acknowledged write must be found, by the id its answer gave (a reversal: by its request).
ACKNOWLEDGED = {
    "settle": "select settlement_id::text from settlement where settlement_id::text = any($1::text[])",
    "cancel": "select refund_id::text from refund where refund_id::text = any($1::text[])",
    "credit": "select credit_id::text from credit where credit_id::text = any($1::text[])",
    "reverse": "select request_id from reversal where request_id = any($1::text[])",
    "send": "select transfer_id::text from wallet_transfer where transfer_id::text = any($1::text[])",
    # An accept answered OK left its transfer POSTED, a decline VOIDED or EXPIRED (or found it so). Not
    # just "ended": a decline a failover lost leaves the transfer PENDING on the new primary, and a later
    # accept there may end it the other way; that decline is lost, not found.
    "accept": "select transfer_id::text from wallet_transfer where transfer_id::text = any($1::text[])"
    " and state = 'POSTED'",
    "decline": "select transfer_id::text from wallet_transfer where transfer_id::text = any($1::text[])"
    " and state in ('VOIDED', 'EXPIRED')",
    "hold": "select hold_id::text from settlement_hold where hold_id::text = any($1::text[])",
    # A release answered OK left its hold RELEASED, or EXPIRED (its time was over, or it was found so).
    "release": "select hold_id::text from settlement_hold where hold_id::text = any($1::text[])"
    " and state in ('RELEASED', 'EXPIRED')",
}


def _written_id(kind: str, reply: Any, request: Request) -> str:
    if kind == "settle":
        return str(reply.settlement.settlement_id)
    if kind == "cancel":
        return str(reply.refund.refund_id)
    if kind == "credit":
        return str(reply.credit_id)
    if kind in ("send", "accept", "decline"):
        return str(reply.transfer.transfer_id)
    if kind in ("hold", "release"):
        return str(reply.hold.hold_id)
    return request.key[1]


# Anything a crash between two statements of one transaction could leave behind, were it not one.
HALF_WRITTEN = {
    "settlements without their idempotency key": """
        select count(*) from settlement s where not exists (
            select 1 from idempotency_key k where k.scope = 'settle/' || s.institution_id
               and k.request_id = s.request_id and k.resource_id = s.settlement_id)""",
    "settle idempotency keys without their settlement": """
        select count(*) from idempotency_key k where k.scope like 'settle/%'
           and not exists (select 1 from settlement s where s.settlement_id = k.resource_id)""",
    "refunds without their idempotency key": """
        select count(*) from refund r where r.kind = 'CANCEL' and not exists (
            select 1 from idempotency_key k where k.scope = 'cancel/' || r.institution_id
               and k.request_id = r.request_id and k.resource_id = r.refund_id)""",
    "cancel idempotency keys without their refund": """
        select count(*) from idempotency_key k where k.scope like 'cancel/%'
           and not exists (select 1 from refund r where r.refund_id = k.resource_id)""",
    "credits without their idempotency key": """
        select count(*) from credit c where not exists (
            select 1 from idempotency_key k where k.scope = 'credit' and k.request_id = c.request_id
               and k.resource_id = c.credit_id)""",
    "reversed settlements not undone whole or without their reversal": """
        select count(*) from settlement s where s.reversed_at is not null and (s.refunded_fen <> s.amount_fen
            or not exists (select 1 from reversal r where r.settlement_id = s.settlement_id))""",
    "vouchers used by more than one settlement": """
        select count(*) from (select voucher_id from settlement group by voucher_id having count(*) > 1) as twice""",
    "holds captured otherwise than by a settlement of exactly their split": """
        select count(*) from settlement_hold h left join settlement s on s.settlement_id = h.settlement_id
         where (h.state = 'CAPTURED') <> (h.settlement_id is not null)
            or (h.state = 'CAPTURED' and (s.settlement_id is null
                or (s.patient_id, s.amount_fen, s.acct_pay_fen, s.acct_mulaid_pay_fen, s.wallet_pay_fen,
                    s.psn_cash_pay_fen, s.institution_id)
                   is distinct from (h.patient_id, h.amount_fen, h.acct_pay_fen, h.acct_mulaid_pay_fen,
                                     h.wallet_pay_fen, h.psn_cash_pay_fen, h.institution_id)))""",
    "holds ended without a time, or pending with one": """
        select count(*) from settlement_hold h where (h.state = 'PENDING') = (h.resolved_at is not null)""",
}

# The money of the personal accounts, from the settlement, refund, credit, transfer and hold tables (not
# the ledger): what is in the accounts is what was credited, less what settlements took, plus what
# refunds gave back, less the transfers that did not come back (pending or accepted), less what pending
# holds set aside; and what is in the wallets is what was accepted, less what settlements took from
# them, plus what refunds gave back, less what pending holds set aside (the run reverses no refund:
# every refund stands; a captured hold's money is its settlement's, a released or expired one's back).
MONEY = """
select (select coalesce(sum(balance_fen), 0) from account)::bigint as balances,
       (select coalesce(sum(amount_fen), 0) from credit)::bigint as credited,
       (select coalesce(sum(acct_pay_fen + acct_mulaid_pay_fen), 0) from settlement)::bigint as spent,
       (select coalesce(sum(acct_pay_fen + acct_mulaid_pay_fen), 0) from refund)::bigint as returned,
       (select coalesce(sum(amount_fen), 0) from wallet_transfer
         where state in ('PENDING', 'POSTED'))::bigint as transferred,
       (select coalesce(sum(amount_fen), 0) from wallet_transfer where state = 'POSTED')::bigint as posted,
       (select coalesce(sum(balance_fen), 0) from wallet)::bigint as wallets,
       (select coalesce(sum(wallet_pay_fen), 0) from settlement)::bigint as wallets_spent,
       (select coalesce(sum(wallet_pay_fen), 0) from refund)::bigint as wallets_returned,
       (select coalesce(sum(acct_pay_fen + acct_mulaid_pay_fen), 0) from settlement_hold
         where state = 'PENDING')::bigint as held,
       (select coalesce(sum(wallet_pay_fen), 0) from settlement_hold where state = 'PENDING')::bigint as wallets_held"""
_STATE = {name.removeprefix("TRANSFER_STATE_"): number for name, number in wallet_pb2.TransferState.items()}


@contextlib.asynccontextmanager
async def _checker(url: str) -> AsyncIterator[asyncpg.Pool]:
    """The suite's own connections, under another application_name than the server's, so that the
    kills spare them."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4, server_settings={"application_name": "gongji-chaos"})
    try:
        yield pool
    finally:
        await pool.close()


Fault = Callable[["Chaos", float, float], Awaitable[None]]


async def kills_and_restarts(chaos: Chaos, started: float, until: float) -> None:
    await asyncio.gather(chaos.kill_connections(until), chaos.restart_server(started, until))


async def _load(chaos: Chaos, faults: Fault) -> float:
    """CLIENTS clients for SECONDS (longer while `faults` are not done), with `faults`; how long it took."""
    started = time.monotonic()
    until = started + SECONDS
    faults_done = asyncio.Event()

    async def inject() -> None:
        try:
            await faults(chaos, started, until)
        finally:
            faults_done.set()

    await asyncio.gather(
        *(chaos.client(until, faults_done) for _ in range(CLIENTS)), inject(), chaos.consumer.run(until)
    )
    return time.monotonic() - started


async def _chaos(
    server_url: str, workdir: Path, faults: Fault = kills_and_restarts, *, lost_allowed: bool = False
) -> Figures:
    """Set up, load with `faults` injected, retry, check; the figures (violations included). With
    `lost_allowed` (a failover with asynchronous replication), acknowledged writes missing after the
    load are a figure, not a violation, and are left out of the later checks."""
    async with fresh_database(server_url, "gongji_chaos") as url, _checker(url) as check:
        tokens = await make_tokens(check)
        server = GongjiProcess(url, workdir)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.target) as channel:
                chaos = Chaos(Api(channel, tokens), tokens, check, server)
                chaos.lost_allowed = lost_allowed
                chaos.health = health_pb2_grpc.HealthStub(channel)
                await chaos.setup()
                load_s = await _load(chaos, faults)
                lost = await chaos.check_acknowledged()
                if not lost_allowed:
                    chaos.figures.violations += [f"{r.kind} {r.key}: answered OK, not in the books" for r in lost]
                chaos.set_aside(lost)
                await chaos.retry_unanswered()
                await chaos.replay_answered()
                await chaos.check_convergence()
                await chaos.check_books()
                chaos.figures.violations += await server.audit()
                if not lost_allowed:  # after a failover that lost commits, a consumer's cursor may be ahead
                    await chaos.consumer.catch_up(check)
                    chaos.figures.violations += await chaos.consumer.check(check)
        finally:
            if server.proc is not None and server.proc.poll() is None and await server.stop() != 0:
                chaos.figures.violations.append(f"gongji exited badly at the end:\n{server.log_tail()}")
        chaos.figures.violations += server.unhandled()
    for line in chaos.figures.lines(load_s):
        print(line)
    print(chaos.consumer.line())
    return chaos.figures


def run_chaos(
    server_url: str,
    faults: Fault = kills_and_restarts,
    *,
    lost_allowed: bool = False,
    before: Callable[[], Awaitable[None]] | None = None,
) -> Figures:
    """`_chaos` in an event loop of its own (uvloop, as production), in a scratch directory; `before`
    runs first in that loop (a test's own PostgreSQL to start)."""
    with (
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
        tempfile.TemporaryDirectory(prefix="gongji-chaos-") as workdir,
    ):
        if before is not None:
            runner.run(before())
        return runner.run(_chaos(server_url, Path(workdir), faults, lost_allowed=lost_allowed))


def test_chaos_converges_with_nothing_lost(server_url: str) -> None:
    figures = run_chaos(server_url)
    assert figures.violations == [], "\n".join(figures.violations[-10:])
    assert figures.restarts >= 1 and figures.backends_killed > 0
    assert figures.tiny_deadlines > 0 and figures.cancellations > 0
