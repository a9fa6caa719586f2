"""Hostile input on every RPC: malformed protobuf bytes and hypothesis-generated field values.

Whatever arrives, gongji answers with a status it means (never INTERNAL or UNKNOWN, always exactly one
gongji ErrorInfo), a refused call writes nothing (a fingerprint of every table is compared around each
call), the server keeps serving, and the process's memory stays bounded.

The server is one of this module's own, over a database of its own: generated input may legitimately
succeed (a valid Enroll, a SetRegionPolicy, a Reverse of an unknown request id), and none of that may
leak into the rest of the suite.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import os
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2
from harness import CODEC, Served, fingerprint, logs_not_kept, own_loop_server, reason_of, rss_kib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import CHILD, INSTITUTION_A, INSTITUTION_B, RESIDENT, SUSPENDED, TERMINATED, bearer, cancel, new_person_id

from gongji import limits
from gongji.api import pages
from gongji.api.validate import china_today
from gongji.v1 import account_pb2, family_pb2, settlement_pb2, types_pb2, wallet_pb2

S = grpc.StatusCode
FieldDescriptor = pb_descriptor.FieldDescriptor

# CI size; GONGJI_HOSTILE_EXAMPLES raises it for a full run (docs/reliability.md).
EXAMPLES = int(os.environ.get("GONGJI_HOSTILE_EXAMPLES", "300"))
# Memory. Over a whole run the process grows with hypothesis' own bookkeeping (it remembers every
# example), so that bound is only generous. The sharp one: replaying a sample of the run's requests,
# again and again, grows the process by less than REPLAY_GROWTH_KIB_MAX once warm. A leak per call
# (a cache keyed by bad tokens, violations kept per request, a request kept per failure) fails it.
RSS_GROWTH_KIB_MAX = 512 * 1024
REPLAY_GROWTH_KIB_MAX = 32 * 1024
REPLAY_SAMPLE = 400
REPLAY_ROUNDS = int(os.environ.get("GONGJI_HOSTILE_REPLAY_ROUNDS", "3"))

# The codes gongji answers on purpose. INTERNAL and UNKNOWN mean a defect; UNAVAILABLE and ABORTED
# would mean the database failed under a single caller.
ANSWERED = {
    S.OK,
    S.INVALID_ARGUMENT,
    S.NOT_FOUND,
    S.FAILED_PRECONDITION,
    S.PERMISSION_DENIED,
    S.ALREADY_EXISTS,
    S.RESOURCE_EXHAUSTED,
}

SERVICES = {
    "gongji.v1.SettlementService": settlement_pb2.DESCRIPTOR.services_by_name["SettlementService"],
    "gongji.v1.FamilyService": family_pb2.DESCRIPTOR.services_by_name["FamilyService"],
    "gongji.v1.AccountService": account_pb2.DESCRIPTOR.services_by_name["AccountService"],
    "gongji.v1.WalletService": wallet_pb2.DESCRIPTOR.services_by_name["WalletService"],
}
METHODS: list[tuple[str, pb_descriptor.MethodDescriptor]] = [
    (f"/{full}/{m.name}", m) for full, service in SERVICES.items() for m in service.methods
]


def _token_for(served: Served, method: str) -> str:
    """The credential each method expects, so that input reaches validation and the store."""
    if "SettlementService" in method:
        return served.tokens.terminal_a
    if "FamilyService" in method or "WalletService" in method or method.endswith("/PayPremium"):
        return served.tokens.app
    return served.tokens.operator


# Strings no honest client sends. Hypothesis adds arbitrary text (NUL, controls, non-BMP) to these.
ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\t\r\n",
    "\u202e610100",  # right-to-left override
    "\ufeff",
    "𠀀𠀁𪚥",  # CJK extension B: outside the BMP
    "😀" * 16,
    "Ａ１２３",  # full-width
    "６１０１００",
    "²³",  # str.isdigit() but not int()
    "١٢٣٤",  # Arabic-Indic digits
    "Ⅻ",  # str.isalnum()
    "'; drop table person; --",
    "%s%n%x",
    "${jndi:ldap://127.0.0.1/a}",
    "-0",
    "1e309",
    "NaN",
    "null",
    "610102199203154021\x00",
    "61010219920315402x",
]
HUGE_STRINGS = ["9" * 1_000, "A" * 70_000, "王" * 20_000, "\x00" * 5_000, "𠀀" * 30_000]


def _text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(ODD_STRINGS), st.text(max_size=80), st.sampled_from(HUGE_STRINGS))


def _ints(bits: int) -> st.SearchStrategy[int]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    edges = [0, 1, -1, low, high, low + 1, high - 1, limits.AMOUNT_FEN_MAX, limits.AMOUNT_FEN_MAX + 1, 2**31, -(2**31)]
    return st.sampled_from([e for e in edges if low <= e <= high]) | st.integers(low, high)


@dataclass
class World:
    """Real rows the generated requests can name: people of every kind, settlements of institution A
    and of institution B, genuine and doctored vouchers. Indexed by request field name."""

    values: dict[str, list[Any]] = field(default_factory=dict)

    def plausible(self, name: str) -> list[Any]:
        return self.values.get(name, [])


_PERSON_FIELDS = (
    "person_id",
    "patient_id",
    "authorizer_id",
    "beneficiary_id",
    "holder_id",
    "member_id",
    "requester_id",
    "payer_id",
    "sender_id",
    "recipient_id",
)


async def _world(served: Served) -> World:
    api = served.api
    old, young = dt.date(1960, 1, 1), dt.date(1990, 1, 1)
    authorizer = await api.enroll(balance_fen=50_000, birth=old, name="王小明")
    patient = await api.enroll(balance_fen=2_000, birth=young, name="李小丽")
    resident = await api.enroll(scheme=RESIDENT, birth=dt.date(2019, 9, 8), name="王小宝")
    suspended = await api.enroll(balance_fen=1_000, status=SUSPENDED)
    terminated = await api.enroll(balance_fen=1_000, status=TERMINATED)
    await api.grant(authorizer, patient, CHILD)
    await api.grant(authorizer, resident, CHILD)
    await api.bind(authorizer, resident, face_verification_ref="")
    people = [authorizer, patient, resident, suspended, terminated]
    unknown = new_person_id()
    s_a = (await api.settle(patient, 300, request_id="hostile-a-1")).settlement
    s_b = (await api.settle(patient, 300, request_id="hostile-b-1", token=api.tokens.terminal_b)).settlement
    # Refunds of A's settlement, whose Cancels a Reverse with ORIGINAL_KIND_CANCEL may name: one under
    # the settlement's own request id, one under an id of its own.
    await cancel(api, str(s_a.settlement_id), 50, request_id="hostile-a-1")
    await cancel(api, str(s_a.settlement_id), 50, request_id="hostile-cancel-1")
    # A premium rate of the world's 统筹区 for next year, open today, and one payment of it.
    this_year = china_today().year
    await api.set_premium_rate("610100", this_year + 1, 40_000, dt.date(this_year, 1, 1), dt.date(this_year, 12, 31))
    paid = (await api.pay_premium(authorizer, resident, this_year + 1)).payment
    # A wallet, and a transfer waiting for it (the 统筹区's policy has no quiet hours: the server keeps
    # the machine's clock).
    wallet = account_pb2.WalletPolicy(quiet_from="00:00", quiet_until="00:00")
    close = [types_pb2.RELATIONSHIP_SPOUSE, types_pb2.RELATIONSHIP_PARENT, CHILD, types_pb2.RELATIONSHIP_SIBLING]
    close += [types_pb2.RELATIONSHIP_GRANDPARENT, types_pb2.RELATIONSHIP_GRANDCHILD]
    await api.set_policy("610100", types_pb2.GRANT_SCOPE_PROVINCE, close, wallet=wallet)
    app = bearer(api.tokens.app)
    await api.wallet.OpenWallet(wallet_pb2.OpenWalletRequest(person_id=patient), metadata=app)
    send = wallet_pb2.SendTransferRequest(
        request_id="hostile-w-1", sender_id=authorizer, recipient_id=patient, relationship=CHILD, amount_fen=100
    )
    transfer_id = (await api.wallet.SendTransfer(send, metadata=app)).transfer.transfer_id
    genuine = [await api.voucher(p, ttl_seconds=limits.VOUCHER_TTL_S_MAX) for p in (patient, resident, authorizer)]
    genuine.append(await api.voucher(resident, requester_id=authorizer, ttl_seconds=limits.VOUCHER_TTL_S_MAX))
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    head, payload, mac = genuine[0].rsplit(".", 2)
    doctored = [
        CODEC.issue(uuid.uuid4(), int(past.timestamp()), patient, None),
        CODEC.issue(uuid.uuid4(), 253_402_300_799, patient, 2**63 - 1),  # genuine signature, extreme claims
        f"{head}.{payload}.{'A' * len(mac)}",
        f"{head}.{payload[::-1]}.{mac}",
        genuine[0].replace("GJ2.k1.", "GJ2.k2."),
        genuine[0].replace("GJ2.", "GJ1."),
        genuine[0] + "=",
        "GJ2." * 64,
    ]
    day = dt.datetime.now(dt.UTC).date()
    ids = [str(s_a.settlement_id), str(s_b.settlement_id)]
    world = World()
    for name in _PERSON_FIELDS:
        world.values[name] = [*people, unknown, patient.lower(), patient + " "]
    world.values |= {
        "request_id": ["hostile-a-1", "hostile-b-1", "x" * limits.REQUEST_ID_LEN_MAX, "a:b.c-d_e", "hostile-w-1"],
        "original_request_id": ["hostile-a-1", "hostile-b-1", "hostile-cancel-1", "never-sent-1"],
        "settlement_id": [*ids, str(uuid.UUID(int=0)), ids[1].upper(), "{" + ids[1][1:35] + "}", "-" * 36],
        "voucher": genuine + doctored,
        "date": [day.isoformat(), "1900-01-01", "2024-02-29", "2023-02-29", "2024-W01-1", "0001-01-01", "9999-12-31"],
        "birth_date": [young.isoformat(), "2019-09-08", "1900-01-01", (day + dt.timedelta(days=2)).isoformat()],
        "institution_id": [INSTITUTION_A, INSTITUTION_B, "H" + "9" * 40, "Ⅻ", "医院", "１２"],
        "region_code": ["610100", "440100", "610000", "000000", "61"],
        "region_key": ["61", "610100", "44", "610000", "00", "6101000"],
        "page_token": [
            pages.encode("²"),
            pages.encode("9" * 19),
            pages.encode("0"),
            pages.encode("-1"),
            pages.encode("1", "2"),
            pages.encode("0001-01-01T00:00:00", ids[0]),
            pages.encode("9999-12-31T23:59:59-23:59", ids[0]),
            pages.encode("0001-01-01T00:00:00+23:59", ids[0]),
            pages.encode(dt.datetime.now(dt.UTC).isoformat(), "not-a-uuid"),
            pages.encode("2024-01-01", ids[1]),
            "p1",
            "x" * (limits.PAGE_TOKEN_LEN_MAX + 1),
        ],
        "member_name": ["王小宝", " 王小宝 ", "王小寶"],
        "name": ["王小明", "ANNA·MARIA"],
        "document_number": [resident, "E12345678"],
        "phone": ["13800138000", "+8613800138000", "1" * 21],
        "face_verification_ref": ["face-ok-1", "abc", "x" * 65],
        "memo": ["划入"],
        "reason": ["代孩子出示医保码"],
        "payment_id": [str(paid.payment_id), str(uuid.uuid4()), str(paid.payment_id).upper()],
        "transfer_id": [transfer_id, str(uuid.uuid4()), transfer_id.upper()],
        "start_date": [china_today().isoformat(), (china_today() - dt.timedelta(days=30)).isoformat(), "2024-02-30"],
        "end_date": [china_today().isoformat(), (china_today() + dt.timedelta(days=1)).isoformat(), "1900-01-01"],
        "group": ["", "310", "390", "311"],
        "from_date": [day.isoformat(), "2024-01-01", (day - dt.timedelta(days=91)).isoformat()],
        "to_date": [day.isoformat(), "2024-04-01", (day + dt.timedelta(days=1)).isoformat()],
        "opens_on": [f"{this_year}-01-01", f"{this_year}-09-01", f"{this_year + 3}-01-01"],
        "closes_on": [f"{this_year}-12-31", f"{this_year - 2}-12-31", "2024-02-30"],
        # Numbers: tame requests take these (a contribution year that validates, or one at its edges).
        "year": [this_year + 1, this_year, this_year + 2, limits.PREMIUM_YEAR_MIN - 1],
    }
    return world


def _value(f: FieldDescriptor, world: World, depth: int, tame: bool) -> st.SearchStrategy[Any]:
    """Values for one field. Tame: the kind an honest but careless client sends (real ids, known enum
    numbers, small amounts), so that requests get past validation into the store; else anything."""
    if f.type == FieldDescriptor.TYPE_STRING:
        plausible = world.plausible(f.name)
        if plausible:
            return st.sampled_from(plausible) if tame else st.sampled_from(plausible) | _text()
        return _text()
    if f.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if f.type == FieldDescriptor.TYPE_ENUM:
        known = st.sampled_from([v.number for v in f.enum_type.values])
        return known if tame else known | _ints(32)
    if f.type == FieldDescriptor.TYPE_UINT32:
        return st.integers(0, 400) if tame else st.integers(0, 2**32 - 1)
    bits = 64 if f.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64) else 32
    if f.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_INT32):
        plausible_ints = st.sampled_from(world.plausible(f.name)) if world.plausible(f.name) else st.nothing()
        return plausible_ints | st.integers(0, 5_000) if tame else plausible_ints | _ints(bits)
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        return _message(f.message_type, world, depth + 1, tame)
    raise AssertionError(f"no strategy for {f.full_name} (type {f.type})")


def _request(descriptor: pb_descriptor.Descriptor, world: World) -> st.SearchStrategy[Message]:
    return st.booleans().flatmap(lambda tame: _message(descriptor, world, 0, tame))


def _message(descriptor: pb_descriptor.Descriptor, world: World, depth: int, tame: bool) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 2:
        return st.just(cls())
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for f in descriptor.fields:
        value = _value(f, world, depth, tame)
        if f.is_repeated:
            few = st.lists(value, max_size=12)
            value = few if tame else few | st.lists(value, min_size=200, max_size=400)
        optional[f.name] = value

    def build(values: dict[str, Any]) -> Message:
        msg = cls()
        for name, v in values.items():
            f = descriptor.fields_by_name[name]
            if f.is_repeated and f.type == FieldDescriptor.TYPE_MESSAGE:
                for item in v:
                    getattr(msg, name).add().CopyFrom(item)
            elif f.is_repeated:
                getattr(msg, name).extend(v)
            elif f.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(msg, name).CopyFrom(v)
            else:
                setattr(msg, name, v)
        return msg

    return st.fixed_dictionaries({}, optional=optional).map(build)


@dataclass
class Tally:
    """What a hostile run tried, for the figures printed at its end."""

    calls: int = 0
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    writes_by_ok_calls: int = 0
    sample: list[tuple[str, bytes, str | None]] = field(default_factory=list)
    _rng: random.Random = field(default_factory=lambda: random.Random(7))

    def keep(self, method: str, payload: bytes, token: str | None) -> None:
        """A uniform sample of the calls made (reservoir sampling), for the replay rounds."""
        if len(self.sample) < REPLAY_SAMPLE:
            self.sample.append((method, payload, token))
        elif (at := self._rng.randrange(self.calls)) < REPLAY_SAMPLE:
            self.sample[at] = (method, payload, token)

    def line(self, what: str, rss_growth_kib: int, replay_growth_kib: int) -> str:
        codes = ", ".join(f"{code} {n}" for code, n in self.codes.most_common())
        return (
            f"hostile {what}: {self.calls} calls ({codes}); successful calls that wrote: "
            f"{self.writes_by_ok_calls}; RSS growth {rss_growth_kib // 1024} MiB over the run, "
            f"{replay_growth_kib // 1024} MiB over {REPLAY_ROUNDS} replays of {len(self.sample)}; violations: 0"
        )


async def _raw(served: Served, method: str, payload: bytes, token: str | None) -> bytes:
    """The call as bytes in and out: nothing between the test and the server's own parsing."""
    reply: bytes = await served.channel.unary_unary(method)(
        payload, metadata=bearer(token) if token else None, timeout=30
    )
    return reply


async def _call(
    served: Served, method: str, payload: bytes, token: str | None, tally: Tally, *, answered: set[S] = ANSWERED
) -> S:
    """One raw call, checked: a code gongji means, one ErrorInfo when refused, no write when refused."""
    before = await fingerprint(served.pool)
    failure: grpc.aio.AioRpcError | None = None
    try:
        await _raw(served, method, payload, token)
    except grpc.aio.AioRpcError as error:
        failure = error
    code = S.OK if failure is None else failure.code()
    if failure is not None:
        assert code in answered, (method, code, failure.details())
        # A request beyond the receive limit (a page of many rows of huge strings) is the transport's
        # refusal, before any gongji code runs: no ErrorInfo (test_oversized_messages_are_refused_by_the_transport).
        if not (code == S.RESOURCE_EXHAUSTED and len(payload) > limits.GRPC_MESSAGE_BYTES_MAX):
            reason_of(failure)
    after = await fingerprint(served.pool)
    if code != S.OK:
        assert after == before, (method, code, {k: (before[k], v) for k, v in after.items() if before[k] != v})
    elif after != before:
        tally.writes_by_ok_calls += 1
    tally.calls += 1
    tally.codes[code.name] += 1
    tally.keep(method, payload, token)
    return code


_HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def _after_the_run(runner: asyncio.Runner, served: Served, tally: Tally, what: str, rss_before_kib: int) -> None:
    """The server still serves and does real work; the refused calls wrote nothing (checked per call);
    memory is bounded, and flat when the same hostile calls come again."""
    assert runner.run(served.health()) == health_pb2.HealthCheckResponse.SERVING
    assert runner.run(served.api.enroll()) != ""
    growth = rss_kib() - rss_before_kib
    assert growth < RSS_GROWTH_KIB_MAX, growth
    sample = list(tally.sample)
    replayed = Tally()

    def replay() -> None:
        for method, payload, token in sample:
            runner.run(_call(served, method, payload, token, replayed))

    replay()  # warm: caches and pools reach their size
    warm = rss_kib()
    for _ in range(REPLAY_ROUNDS):
        replay()
    replay_growth = rss_kib() - warm
    assert replay_growth < REPLAY_GROWTH_KIB_MAX, replay_growth
    assert runner.run(served.health()) == health_pb2.HealthCheckResponse.SERVING
    print(tally.line(what, growth, replay_growth))


def test_generated_field_values_on_every_rpc(server_url: str) -> None:
    with own_loop_server(server_url, "gongji_hostile") as (runner, served):
        world = runner.run(_world(served))
        strategies = {method: _request(m.input_type, world) for method, m in METHODS}
        tally = Tally()
        rss_before = rss_kib()

        @_HYPOTHESIS
        @given(st.sampled_from(sorted(strategies)), st.data())
        def one(method: str, data: st.DataObject) -> None:
            payload = data.draw(strategies[method], label="request").SerializeToString()
            if len(payload) <= limits.GRPC_MESSAGE_BYTES_MAX:  # beyond it: test_oversized_messages
                runner.run(_call(served, method, payload, _token_for(served, method), tally))

        one()
        _after_the_run(runner, served, tally, "field values", rss_before)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# Byte sequences that are not valid messages of any gongji request, whatever their fields.
BROKEN = [
    b"\xff\xff\xff\xff",
    b"\x0a",  # a tag, then nothing
    b"\x0a\x05ab",  # a length beyond the end
    b"\x0a\xff\xff\xff\xff\x0f",  # a length of 4 GiB
    b"\x0a\x02\xff\xfe",  # field 1 as a string that is not UTF-8
    b"\x12\x03\xc3\x28\x41",  # field 2: an invalid two-byte sequence
    b"\x0a\x03\xed\xa0\x80",  # field 1: a UTF-16 surrogate encoded as UTF-8
    b"\x08" + b"\xff" * 10 + b"\x7f",  # an overlong varint
    b"\x0b" * 200,  # start-group tags, never ended
    b"\x0b" * 120 + b"\x0c" * 120,  # groups nested deeper than the parser allows
    b"\x07",  # wire type 7 does not exist
    b"\x00\x00",  # field number 0
    _tag(536_870_911, 2) + b"\x01x",  # the largest field number, unknown
]


def _mutations(world: World) -> st.SearchStrategy[tuple[str, bytes]]:
    """A method and bytes for it: pure noise, a known broken sequence, or a valid request broken in
    one place (cut short, a byte flipped, a broken sequence spliced in, a field of the wrong type)."""
    requests = {method: _request(m.input_type, world) for method, m in METHODS}

    @st.composite
    def one(draw: st.DrawFn) -> tuple[str, bytes]:
        method = draw(st.sampled_from(sorted(requests)), label="method")
        valid = draw(requests[method], label="request").SerializeToString()
        kind = draw(st.sampled_from(["noise", "broken", "cut", "flip", "splice", "wrong_type"]), label="kind")
        if kind == "noise":
            return method, draw(st.binary(max_size=512))
        if kind == "broken":
            return method, draw(st.sampled_from(BROKEN))
        if kind == "cut":
            return method, valid[: draw(st.integers(0, max(0, len(valid) - 1)))]
        if kind == "flip" and valid:
            at = draw(st.integers(0, len(valid) - 1))
            return method, valid[:at] + bytes([valid[at] ^ draw(st.integers(1, 255))]) + valid[at + 1 :]
        if kind == "splice":
            at = draw(st.integers(0, len(valid)))
            return method, valid[:at] + draw(st.sampled_from(BROKEN)) + valid[at:]
        number = draw(st.integers(1, 12))
        wire = draw(st.sampled_from([0, 1, 2, 5]))
        body = {0: _varint(draw(st.integers(0, 2**64 - 1))), 1: b"\xff" * 8, 2: b"\x02\xff\xfe", 5: b"\xff" * 4}
        return method, valid + _tag(number, wire) + body[wire]

    return one()


def _decodes(cls: type[Message], payload: bytes) -> bool:
    try:
        cls.FromString(payload)
    except DecodeError:
        return False
    return True


def test_malformed_protobuf_bytes_on_every_rpc(server_url: str) -> None:
    with own_loop_server(server_url, "gongji_hostile") as (runner, served):
        world = runner.run(_world(served))
        tally = Tally()
        rss_before = rss_kib()

        @_HYPOTHESIS
        @given(_mutations(world))
        def one(case: tuple[str, bytes]) -> None:
            method, payload = case
            runner.run(_call(served, method, payload, _token_for(served, method), tally))

        for method, m in METHODS:  # every known broken sequence on every RPC, before the random ones
            cls = message_factory.GetMessageClass(m.input_type)
            for payload in BROKEN:
                code = runner.run(_call(served, method, payload, _token_for(served, method), tally))
                if not _decodes(cls, payload):  # some are valid unknown fields of a message without them
                    assert code == S.INVALID_ARGUMENT, (method, payload, code)
        one()
        _after_the_run(runner, served, tally, "protobuf bytes", rss_before)


def test_oversized_messages_are_refused_by_the_transport(server_url: str) -> None:
    """Beyond the 1 MiB receive limit grpc itself answers RESOURCE_EXHAUSTED, before any gongji code
    runs (so without an ErrorInfo); nothing is written, the server goes on serving, and sending them
    again and again does not grow the process."""
    payload = b"\x0a" + _varint(limits.GRPC_MESSAGE_BYTES_MAX) + b"9" * limits.GRPC_MESSAGE_BYTES_MAX
    with own_loop_server(server_url, "gongji_hostile") as (runner, served):
        before = runner.run(fingerprint(served.pool))
        # Every RPC once, then one of each service again and again (a megabyte each is slow to send).
        again = [m for m, _ in METHODS if m.endswith(("/Quote", "/Bind", "/Enroll"))]
        rounds = [[m for m, _ in METHODS], *([again] * (1 + REPLAY_ROUNDS))]
        rss: list[int] = []
        for methods in rounds:
            for method in methods:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    runner.run(_raw(served, method, payload, _token_for(served, method)))
                assert caught.value.code() == S.RESOURCE_EXHAUSTED, (method, caught.value.details())
            rss.append(rss_kib())
        calls = sum(len(m) for m in rounds)
        assert runner.run(fingerprint(served.pool)) == before
        assert runner.run(served.health()) == health_pb2.HealthCheckResponse.SERVING
        assert rss[-1] - rss[1] < REPLAY_GROWTH_KIB_MAX, rss
        print(f"hostile oversized messages: {calls} calls (RESOURCE_EXHAUSTED {calls}); violations: 0")


# More than the credential cache holds (limits.CREDENTIAL_CACHE_ENTRIES_MAX), so it must let go.
UNKNOWN_TOKENS = int(os.environ.get("GONGJI_HOSTILE_TOKENS", str(limits.CREDENTIAL_CACHE_ENTRIES_MAX + 2_000)))


def test_a_flood_of_unknown_tokens_keeps_memory_bounded(server_url: str) -> None:
    """Every unknown token is looked up once and remembered (misses too) for a while: a client that
    sends endless fresh tokens must not grow the server without bound. Two floods, each beyond the
    cache's size: the second grows the process no more than a warm replay may."""
    with own_loop_server(server_url, "gongji_hostile") as (runner, served):
        before = runner.run(fingerprint(served.pool))

        async def flood() -> collections.Counter[str]:
            seen: collections.Counter[str] = collections.Counter()
            rpc = served.channel.unary_unary("/gongji.v1.AccountService/ListRegionPolicies")

            async def one(i: int) -> None:
                try:
                    await rpc(b"", metadata=bearer(f"gj_flood_{uuid.uuid4().hex}{i}"), timeout=60)
                    seen["OK"] += 1
                except grpc.aio.AioRpcError as error:
                    seen[f"{error.code().name}/{reason_of(error)}"] += 1

            for start in range(0, UNKNOWN_TOKENS, 200):  # bounded: 200 calls in flight at most
                await asyncio.gather(*(one(i) for i in range(start, min(start + 200, UNKNOWN_TOKENS))))
            return seen

        with logs_not_kept():  # no ID number in these lines: nothing for the leak check to miss
            first = runner.run(flood())
            warm = rss_kib()
            second = runner.run(flood())
            growth = rss_kib() - warm
        assert first == second == {"UNAUTHENTICATED/CREDENTIALS_INVALID": UNKNOWN_TOKENS}
        assert growth < REPLAY_GROWTH_KIB_MAX, growth
        assert runner.run(fingerprint(served.pool)) == before
        assert runner.run(served.health()) == health_pb2.HealthCheckResponse.SERVING
        print(f"hostile unknown tokens: {2 * UNKNOWN_TOKENS} calls; RSS growth {growth // 1024} MiB; violations: 0")
