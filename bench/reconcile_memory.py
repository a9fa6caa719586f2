"""The server's memory during a detail check (3202) of a large hospital's day: 100,000 settlements and
1,000 refunds, with a day's worth of history either side, checked through `gongji client check-detail`
from a CSV export with seeded differences. The server runs as a process of its own (`gongji serve`),
and its peak resident set (VmHWM, from /proc) is read before and after the check.

    .venv/bin/python bench/reconcile_memory.py [--server-url postgresql://...]

Prints one line: the rows, the time, the differences found (and whether they are exactly the seeded
ones), and the server's resident memory before and at its peak. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg
from common import BIN, DEFAULT_SERVER_URL, free_port, fresh_database, process, wait_for_port

from gongji.store import credentials
from gongji.store.credentials import Kind

DAY_ROWS = 100_000
INSTITUTION = "HBENCH0001"
_SEED = """
insert into settlement (settlement_id, institution_id, terminal_id, request_id, patient_id, voucher_id, amount_fen,
                        acct_pay_fen, acct_mulaid_pay_fen, psn_cash_pay_fen, balc_fen, created_at)
select gen_random_uuid(), $1, 'P1', $2 || lpad(i::text, 7, '0'), 'BENCH-PATIENT', gen_random_uuid(), 1000 + i % 977,
       (1000 + i % 977) / 2, 0, (1000 + i % 977) - (1000 + i % 977) / 2, 0,
       $3::timestamptz + (i % 36000) * interval '1 second'
  from generate_series(1, $4) as i"""
_SEED_REFUNDS = """
insert into refund (refund_id, settlement_id, institution_id, request_id, kind, amount_fen, acct_pay_fen,
                    acct_mulaid_pay_fen, psn_cash_pay_fen, created_at)
select gen_random_uuid(), s.settlement_id, s.institution_id, 'c-' || substr(s.request_id, 3), 'CANCEL', 100, 0, 0, 100,
       s.created_at + interval '1 minute'
  from settlement s
 where s.institution_id = $1 and s.request_id like 's-%' and substr(s.request_id, 3)::int % 100 = 0
   and s.created_at >= $2 and s.created_at < $2 + interval '1 day'"""
# Seeded differences: rows the books lack, rows gongji lacks, amounts that differ.
LACKING = {f"s-{i:07d}" for i in (1, 500, 50_000, 99_999, 100_000)} | {"c-0042000"}
EXTRA = ["settlement,s-2000000,0.05,0.00,0.00,0.05", "reversal,s-0000777,1.00,0.00,0.00,1.00"]
DIFFER = {"s-0000002", "s-0070000", "c-0000100"}


async def _seed(url: str, day: dt.date) -> str:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        token = await credentials.create(pool, Kind.TERMINAL, "bench", institution_id=INSTITUTION, terminal_id="P1")
        start = dt.datetime(day.year, day.month, day.day, 1, tzinfo=dt.timezone(dt.timedelta(hours=8)))
        await pool.execute(_SEED, INSTITUTION, "s-", start, DAY_ROWS)
        await pool.execute(_SEED_REFUNDS, INSTITUTION, start)
        for offset, prefix in ((-1, "s-0"), (1, "s-1")):  # history either side, interleaved ids
            await pool.execute(_SEED, INSTITUTION, prefix, start + dt.timedelta(days=offset), DAY_ROWS // 5)
        await pool.execute("analyze settlement; analyze refund")
    finally:
        await pool.close()
    return token


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _write_books(path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write("kind,request_id,amount,acct_pay,acct_mulaid_pay,psn_cash_pay\n")
        for i in range(1, DAY_ROWS + 1):
            amount = 1000 + i % 977
            rows = [("settlement", f"s-{i:07d}", amount, amount // 2, amount - amount // 2)]
            if i % 100 == 0:
                rows.append(("cancel", f"c-{i:07d}", 100, 0, 100))
            for kind, rid, total, own, cash in rows:
                if rid in LACKING:
                    continue
                bump = 1 if rid in DIFFER else 0
                f.write(f"{kind},{rid},{_yuan(total + bump)},{_yuan(own)},0.00,{_yuan(cash + bump)}\n")
        f.write("\n".join(EXTRA) + "\n")


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise SystemExit(f"no {field} for process {pid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server-url", default=os.environ.get("GONGJI_BENCH_SERVER_URL", DEFAULT_SERVER_URL))
    cfg = parser.parse_args()
    url = asyncio.run(fresh_database(cfg.server_url, "gongji_bench_reconcile"))
    day = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date() - dt.timedelta(days=1)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = os.environ | {
            "GONGJI_DATABASE_URL": url, "GONGJI_GRPC_LISTEN": f"127.0.0.1:{port}",
            "GONGJI_METRICS_LISTEN": f"127.0.0.1:{free_port()}", "GONGJI_DATA_DIR": tmp,
        }  # fmt: skip
        with process([str(BIN / "gongji"), "serve"], env=env, log=Path(tmp) / "serve.log") as server:
            wait_for_port(port, server)
            token = asyncio.run(_seed(url, day))
            books = Path(tmp) / "books.csv"
            _write_books(books)
            before_kib, before_peak_kib = _kib(server.pid, "VmRSS"), _kib(server.pid, "VmHWM")
            started = time.perf_counter()
            ran = subprocess.run(
                [str(BIN / "gongji"), "client", "--target", f"127.0.0.1:{port}", "--terminal-token", token,
                 "--timeout-s", "60", "check-detail", "--csv", str(books), "--start-date", day.isoformat()],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            elapsed_s = time.perf_counter() - started
            peak_kib, after_kib = _kib(server.pid, "VmHWM"), _kib(server.pid, "VmRSS")
    found = json.loads(ran.stdout)
    got = {d["key"]["request_id"] for d in found["differences"]}
    exact = got == LACKING | DIFFER | {e.split(",")[1] for e in EXTRA}
    print(
        f"check-detail of {found['institution_rows']} rows against {found['gongji_rows']} of gongji's: "
        f"{elapsed_s:.1f} s, {len(got)} differences ({'exactly' if exact else 'NOT'} the seeded ones); "
        f"server RSS {before_kib // 1024} MiB before (peak so far {before_peak_kib // 1024} MiB), "
        f"peak (VmHWM) {peak_kib // 1024} MiB after the check, RSS {after_kib // 1024} MiB after"
    )


if __name__ == "__main__":
    main()
