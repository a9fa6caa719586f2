"""`gongji serve` started twice on the same addresses: one line naming the address and the setting."""

from __future__ import annotations

import subprocess

from e2e_support import GONGJI, ROOT, free_port, serve, stop


def test_a_second_serve_names_the_busy_address_in_one_line(env: dict[str, str]) -> None:
    proc = serve(env)
    try:
        second = env | {"GONGJI_GRPC_LISTEN": f"127.0.0.1:{free_port()}"}  # only the metrics port is taken
        metrics_busy = subprocess.run(
            [GONGJI, "serve"], env=second, cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        third = env | {"GONGJI_METRICS_LISTEN": f"127.0.0.1:{free_port()}"}  # only the gRPC port is taken
        grpc_busy = subprocess.run([GONGJI, "serve"], env=third, cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        stop(proc)
    for done, setting, listen in (
        (metrics_busy, "GONGJI_METRICS_LISTEN", env["GONGJI_METRICS_LISTEN"]),
        (grpc_busy, "GONGJI_GRPC_LISTEN", env["GONGJI_GRPC_LISTEN"]),
    ):
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("gongji: cannot listen"), done.stderr
        assert listen in last and setting in last, last
