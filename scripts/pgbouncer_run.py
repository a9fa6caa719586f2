"""Run a command with the test suite pointed at PgBouncer in transaction mode, in front of PostgreSQL.

    python scripts/pgbouncer_run.py -- pytest tests/integration

Starts the `pgbouncer` binary (Debian's package; never its system service) as an unprivileged user
with a temporary configuration on a free loopback port, runs the command with
GONGJI_TEST_DATABASE_URL pointing at it, GONGJI_TEST_DIRECT_DATABASE_URL at PostgreSQL (databases
are created and migrated there: migrations never go through the pooler) and
GONGJI_DB_STATEMENT_CACHE_SIZE=0 (PgBouncer before 1.21 cannot route named prepared statements),
then stops PgBouncer and exits with the command's status.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# pgbouncer refuses to run as root; Debian's postgresql package provides this user.
UNPRIVILEGED_USER = "postgres"

CONFIG = """\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {dir}/userlist.txt
pool_mode = transaction
max_client_conn = 400
default_pool_size = 40
; asyncpg sends these as startup parameters; PgBouncer 1.18 tracks neither. gongji needs READ
; COMMITTED, which is PostgreSQL's default: keep it the server's (or the role's) default.
ignore_startup_parameters = extra_float_digits, default_transaction_isolation
logfile = {dir}/pgbouncer.log
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(100):  # bounded: about 20 s
        if proc.poll() is not None:
            raise SystemExit("pgbouncer exited:\n" + (log.read_text() if log.exists() else ""))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("pgbouncer did not listen")


def _start(dir_: Path, server_url: str, listen_port: int) -> subprocess.Popen[bytes]:
    url = urllib.parse.urlsplit(server_url)
    user = url.username or "postgres"
    (dir_ / "userlist.txt").write_text(f'"{user}" ""\n')
    (dir_ / "pgbouncer.ini").write_text(
        CONFIG.format(host=url.hostname or "127.0.0.1", port=url.port or 5432, listen_port=listen_port, dir=dir_)
    )
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    command = [binary, str(dir_ / "pgbouncer.ini")]
    if os.geteuid() == 0:
        shutil.chown(dir_, UNPRIVILEGED_USER)
        for f in dir_.iterdir():
            shutil.chown(f, UNPRIVILEGED_USER)
        # setpriv execs pgbouncer itself, so the PID we hold is pgbouncer's.
        command = ["setpriv", f"--reuid={UNPRIVILEGED_USER}", f"--regid={UNPRIVILEGED_USER}", "--init-groups", *command]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # noqa: S603 - our argv
    _wait_listening(listen_port, proc, dir_ / "pgbouncer.log")
    return proc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server-url", default=os.environ.get("GONGJI_TEST_DATABASE_URL", DEFAULT_SERVER_URL))
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args()
    command = [c for c in args.command if c != "--"] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command to run after --")
    with tempfile.TemporaryDirectory(prefix="gongji-pgbouncer-") as tmp:
        dir_ = Path(tmp)
        port = _free_port()
        proc = _start(dir_, args.server_url, port)
        url = urllib.parse.urlsplit(args.server_url)
        pooled = url._replace(netloc=f"{url.username or 'postgres'}@127.0.0.1:{port}").geturl()
        env = os.environ | {
            "GONGJI_TEST_DATABASE_URL": pooled,
            "GONGJI_TEST_DIRECT_DATABASE_URL": args.server_url,
            "GONGJI_DB_STATEMENT_CACHE_SIZE": "0",
        }
        print(f"pgbouncer (transaction mode) on 127.0.0.1:{port} in front of {url.hostname}:{url.port}", flush=True)
        code = 1
        try:
            code = subprocess.run(command, env=env, check=False).returncode  # noqa: S603 - the caller's argv
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
            log = dir_ / "pgbouncer.log"
            if code != 0 and log.exists():
                print(log.read_text()[-20_000:], file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
