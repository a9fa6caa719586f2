"""The edge ceiling: a bare grpc.aio server with gongji's contract that answers at once.

    python bench/bare_server.py --listen 127.0.0.1:50551

Same generated stubs, same load generator, no interceptor, no database: the throughput Locust reaches
against it on this machine is the most gongji could reach here, whatever it did inside.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
import uvloop

from gongji.v1 import (
    family_pb2,
    family_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
    types_pb2,
)

_SETTLEMENT = types_pb2.Settlement(settlement_id="00000000-0000-0000-0000-000000000000", amount_fen=1, acct_pay_fen=1)


class Family(family_pb2_grpc.FamilyServiceServicer):
    async def IssueVoucher(self, request: Any, context: Any) -> family_pb2.IssueVoucherResponse:
        return family_pb2.IssueVoucherResponse(voucher="GJ1.bare.voucher", person_id=request.person_id)


class Settlement(settlement_pb2_grpc.SettlementServiceServicer):
    async def Settle(self, request: Any, context: Any) -> settlement_pb2.SettleResponse:
        return settlement_pb2.SettleResponse(settlement=_SETTLEMENT)

    async def Quote(self, request: Any, context: Any) -> settlement_pb2.QuoteResponse:
        return settlement_pb2.QuoteResponse(psn_cash_pay_fen=request.amount_fen)

    async def Cancel(self, request: Any, context: Any) -> settlement_pb2.CancelResponse:
        return settlement_pb2.CancelResponse()


async def main(listen: str) -> None:
    server = grpc.aio.server()
    family_pb2_grpc.add_FamilyServiceServicer_to_server(Family(), server)
    settlement_pb2_grpc.add_SettlementServiceServicer_to_server(Settlement(), server)
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="127.0.0.1:50551")
    uvloop.run(main(parser.parse_args().listen))
