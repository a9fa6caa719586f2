"""`gongji serve --workers 2`: two processes on one port (and on one health port), one set of metrics,
one clean stop."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request

import psutil
from e2e_support import GONGJI, ROOT, free_port, serve, stop


def test_two_workers_share_the_port_and_their_metrics(env: dict[str, str]) -> None:
    env = env | {"GONGJI_HEALTH_LISTEN": f"127.0.0.1:{free_port()}"}
    proc = serve(env, "--workers", "2")
    try:
        workers = [c for c in psutil.Process(proc.pid).children() if "gongji" in " ".join(c.cmdline())]
        assert len(workers) == 2
        # Both bound the health port too (SO_REUSEPORT, like the gRPC port), and it answers.
        health = subprocess.run([GONGJI, "health"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert health.returncode == 0, health.stderr
        assert all(w.is_running() for w in workers)
        calls = 8
        for _ in range(calls):  # a new connection each time: the kernel spreads them over the workers
            out = subprocess.run(
                [GONGJI, "client", "--target", env["GONGJI_GRPC_LISTEN"], "settle", "--patient", "demo:xiaoli",
                 "--amount-fen", "10"],
                env=env, cwd=ROOT, check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            assert json.loads(out.stdout)["settlement"]["amount_fen"] == "10"
        text = urllib.request.urlopen(f"http://{env['GONGJI_METRICS_LISTEN']}/metrics", timeout=5).read().decode()
    finally:
        stop(proc)
    handled = re.findall(r'grpc_server_handled_total\{[^}]*grpc_code="OK"[^}]*grpc_method="Settle"[^}]*\} (\S+)', text)
    assert sum(float(v) for v in handled) == calls, "every worker's calls are counted once"
    assert re.search(r"gongji_db_pool_max_connections \S+", text), "pool gauges summed over the workers"
    assert all(not w.is_running() for w in workers)
