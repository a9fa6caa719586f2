"""Locust users for gongji over gRPC, in Locust's own gRPC pattern: gevent-patched grpcio and a client
interceptor that fires a request event per call.

Scenarios (pick one by its user class on the command line; bench/run.py does):
- PharmacyUser: the patient's app issues an e-voucher, the terminal settles; a few quotes and partial
  refunds; patients with a grant, without one, and resident-insured, as seeded.
- AppUser: the app backend's reads: ListFamily, GetAccount, ListLedger.
- HotFamilyUser: many members of one family settling against one authorizer at once.

Configuration comes from the environment: BENCH_POPULATION (the JSON bench/seed.py wrote) and
BENCH_RATE (settlements per second for all users together; unset: as fast as they can).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
import uuid
from typing import Any

import gevent
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, constant, constant_throughput, events, task
from locust.exception import StopUser

grpc_gevent.init_gevent()

from gongji.v1 import (  # noqa: E402  (after gevent is initialised, as grpcio requires)
    account_pb2,
    account_pb2_grpc,
    family_pb2,
    family_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
)

POPULATION: dict[str, Any] = json.loads(open(os.environ["BENCH_POPULATION"]).read())  # noqa: SIM115
RATE = float(os.environ.get("BENCH_RATE", "0"))
USERS = int(os.environ.get("BENCH_USERS", "64"))
_terminal_ids = itertools.count()

# Every settlement and refund a user got an answer for, written out when Locust quits: bench/run.py
# proves each is in the books exactly once. (Locust's own counts stop at the time limit, while calls
# already sent still complete on the server.)
SEEN: dict[str, list[str]] = {"settlements": [], "refunds": []}


@events.quitting.add_listener
def _write_seen(environment: Any, **_kwargs: Any) -> None:
    path = os.environ.get("BENCH_SEEN_FILE")
    if path:
        with open(path, "w") as f:
            json.dump(SEEN, f)


class EventInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Report every call to Locust: name, latency, and the gRPC code as the failure when not OK."""

    def __init__(self, environment: Any) -> None:
        self._events = environment.events

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        started = time.perf_counter()
        exception = None
        response = None
        try:
            call = continuation(details, request)
            response = call.result()
        except grpc.RpcError as exc:
            exception = exc
        self._events.request.fire(
            request_type="grpc",
            name=details.method.rsplit("/", 1)[-1],
            response_time=(time.perf_counter() - started) * 1000,
            response_length=response.ByteSize() if response is not None else 0,
            exception=exception,
            context=None,
        )
        if exception is not None:
            raise exception
        return call


class GongjiUser(User):  # type: ignore[misc]
    abstract = True
    # Paced (BENCH_RATE settlements per second for all users together) or as fast as they can.
    wait_time = constant_throughput(RATE / USERS) if RATE else constant(0)

    def on_start(self) -> None:
        if RATE:
            # Users all start at once; paced at one period each, they would fire together, every
            # period, in bursts of USERS calls, and the scenario would measure a queue, not the
            # latency below saturation it is for. A random start within one period spreads them.
            gevent.sleep(random.uniform(0, USERS / RATE))
        channel = grpc.intercept_channel(grpc.insecure_channel(self.host), EventInterceptor(self.environment))
        self.settlement = settlement_pb2_grpc.SettlementServiceStub(channel)
        self.family = family_pb2_grpc.FamilyServiceStub(channel)
        self.account = account_pb2_grpc.AccountServiceStub(channel)
        terminals = POPULATION["terminals"]
        self.terminal = (("authorization", f"Bearer {terminals[next(_terminal_ids) % len(terminals)]}"),)
        self.app = (("authorization", f"Bearer {POPULATION['app']}"),)
        self.recent: list[tuple[str, int]] = []  # (settlement id, amount) for partial refunds

    def settle(self, patient: str, amount_fen: int) -> None:
        try:
            voucher = self.family.IssueVoucher(
                family_pb2.IssueVoucherRequest(person_id=patient, requester_id=patient), metadata=self.app, timeout=10
            ).voucher
            reply = self.settlement.Settle(
                settlement_pb2.SettleRequest(
                    request_id=f"b-{uuid.uuid4().hex}", voucher=voucher, patient_id=patient, amount_fen=amount_fen
                ),
                metadata=self.terminal,
                timeout=10,
            )
        except grpc.RpcError:
            return  # counted by the interceptor
        SEEN["settlements"].append(reply.settlement.settlement_id)
        if len(self.recent) < 20:
            self.recent.append((reply.settlement.settlement_id, amount_fen))


class PharmacyUser(GongjiUser):
    @task(85)
    def settle_a_bill(self) -> None:
        self.settle(random.choice(POPULATION["patients"]), random.randint(100, 30_000))

    @task(10)
    def quote(self) -> None:
        patient = random.choice(POPULATION["patients"])
        try:
            voucher = self.family.IssueVoucher(
                family_pb2.IssueVoucherRequest(person_id=patient, requester_id=patient), metadata=self.app, timeout=10
            ).voucher
            self.settlement.Quote(
                settlement_pb2.QuoteRequest(voucher=voucher, patient_id=patient, amount_fen=5_000),
                metadata=self.terminal,
                timeout=10,
            )
        except grpc.RpcError:
            return

    @task(5)
    def refund_part(self) -> None:
        if not self.recent:
            return
        settlement_id, amount_fen = self.recent.pop()
        try:
            reply = self.settlement.Cancel(
                settlement_pb2.CancelRequest(
                    request_id=f"c-{uuid.uuid4().hex}", settlement_id=settlement_id, amount_fen=max(1, amount_fen // 3)
                ),
                metadata=self.terminal,
                timeout=10,
            )
        except grpc.RpcError:
            return
        SEEN["refunds"].append(reply.refund.refund_id)


class AppUser(GongjiUser):
    @task(2)
    def list_family(self) -> None:
        person = random.choice(POPULATION["patients"])
        try:
            self.family.ListFamily(family_pb2.ListFamilyRequest(person_id=person), metadata=self.app, timeout=10)
        except grpc.RpcError:
            return

    @task(1)
    def get_account(self) -> None:
        person = random.choice(POPULATION["patients"])
        try:
            self.account.GetAccount(account_pb2.GetAccountRequest(person_id=person), metadata=self.app, timeout=10)
        except grpc.RpcError:
            return

    @task(2)
    def list_ledger(self) -> None:
        person = random.choice(POPULATION["patients"])
        try:
            self.account.ListLedger(
                account_pb2.ListLedgerRequest(person_id=person, page_size=20), metadata=self.app, timeout=10
            )
        except grpc.RpcError:
            return


class HotFamilyUser(GongjiUser):
    """Every user is another member of one family; the authorizer's account row is the hot spot."""

    def on_start(self) -> None:
        super().on_start()
        members = POPULATION["hot_members"]
        if not members:
            raise StopUser()
        self.member = members[next(_terminal_ids) % len(members)]

    @task
    def settle_against_the_authorizer(self) -> None:
        self.settle(self.member, random.randint(100, 5_000))
