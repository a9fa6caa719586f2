"""`gongji serve|migrate|seed|audit|health|credential|client`: the command line of the server and its operators."""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import sys
import uuid
import warnings
from collections.abc import Callable, Coroutine
from typing import Any

from gongji import logs
from gongji.config import Settings


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    import uvloop

    return uvloop.run(coro)


Command = Callable[[Settings, argparse.Namespace], int]


def _needs_database(command: Command) -> Command:
    """Exit 1 with one line, not a traceback, when the database stayed out of reach at start or an
    address to listen on is taken."""

    @functools.wraps(command)
    def run(settings: Settings, args: argparse.Namespace) -> int:
        from gongji.config import CannotListen
        from gongji.store.db import DatabaseUnreachable

        try:
            return command(settings, args)
        except (DatabaseUnreachable, CannotListen) as exc:
            print(f"gongji: {exc}", file=sys.stderr)
            return 1

    return run


@_needs_database
def _serve(settings: Settings, args: argparse.Namespace) -> int:
    if args.workers > 1:
        from gongji import workers

        metrics_dir = workers.prepare_metrics_dir()  # before anything imports prometheus_client
        return workers.serve(settings, load_demo=args.demo, workers=args.workers, metrics_dir=metrics_dir)
    from gongji import runtime

    _run(runtime.serve(settings, load_demo=args.demo))
    return 0


@_needs_database
def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from gongji import runtime

    async def go() -> None:
        async with runtime.database(settings):
            pass

    _run(go())
    print("migrations applied")
    return 0


def _seed(settings: Settings, args: argparse.Namespace) -> int:
    from gongji import demo, runtime

    async def go() -> dict[str, str]:
        async with runtime.database(settings) as pool:
            return await demo.seed(pool, settings.data_dir)

    _run(go())
    print(f"demo data loaded; tokens in {settings.data_dir / 'demo-tokens.json'}")
    return 0


@_needs_database
def _audit(settings: Settings, args: argparse.Namespace) -> int:
    """Check the books: every balance against its ledger, every settlement and refund against theirs;
    with --chain, every ledger's hash chain too (which reads every entry)."""
    from gongji import checkpoints, runtime
    from gongji.store import audit

    try:
        taken = [_opened_checkpoint(settings, path, args.public_key) for path in args.checkpoint]
    except (OSError, ValueError, checkpoints.CheckpointInvalid) as exc:
        print(f"gongji: {exc}", file=sys.stderr)
        return 2

    async def go() -> list[str]:
        async with runtime.database(settings, migrate_schema=False) as pool:
            found = await audit.differences(pool)
            if args.chain or taken:
                found += await audit.chain_breaks(pool)
            for checkpoint in taken:
                found += await checkpoints.misfits(pool, checkpoint)
            return found

    found: list[str] = _run(go())
    for line in found:
        print(line)
    print(f"audit: {len(found)} differences", file=sys.stderr)
    return 1 if found else 0


def _opened_checkpoint(settings: Settings, path: str, public_keys: list[str]) -> dict[str, Any]:
    """The checkpoint in the file at `path`, its signature verified with the given public keys, or by
    default with this configuration's own key."""
    from gongji import checkpoints

    keys = (
        checkpoints.public_keys(public_keys) if public_keys else _checkpoint_signer(settings, create=False).verifiers()
    )
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past any checkpoint's depth
        raise checkpoints.CheckpointInvalid(f"{path}: not a JSON checkpoint") from None
    try:
        return checkpoints.opened(document, keys)
    except checkpoints.CheckpointInvalid as exc:
        raise checkpoints.CheckpointInvalid(f"{path}: {exc}") from None


def _checkpoint_signer(settings: Settings, *, create: bool = True) -> Any:
    from gongji import checkpoints

    return checkpoints.Signer.from_bytes(settings.checkpoint_key_id, settings.checkpoint_key_bytes(create=create))


@_needs_database
def _checkpoint(settings: Settings, args: argparse.Namespace) -> int:
    """Take a signed checkpoint of every hash chain's head and write it (JSON) to --out or stdout."""
    from gongji import checkpoints, runtime

    signer = _checkpoint_signer(settings)
    if args.public_key:
        print(signer.public_key_text())
        return 0

    async def go() -> dict[str, Any]:
        async with runtime.database(settings, migrate_schema=False) as pool, pool.acquire() as conn:
            return await checkpoints.take(conn, signer)

    document = _run(go())
    text = json.dumps(document, ensure_ascii=False) + "\n"
    if args.out:
        with open(args.out, "x", encoding="utf-8") as f:  # never over an older checkpoint
            f.write(text)
    else:
        sys.stdout.write(text)
    c = document["checkpoint"]
    print(f"checkpoint: {c['chains']} chains, {c['entries']} entries, root {c['root']}", file=sys.stderr)
    return 0


def _health(settings: Settings, args: argparse.Namespace) -> int:
    """The container HEALTHCHECK: exit 0 when the local server answers SERVING, 1 otherwise (gongji.healthcheck)."""
    from gongji import healthcheck

    return healthcheck.run(settings, args.target, args.service, args.timeout_s)


def _local_target(listen: str) -> str:
    """The address to reach a server listening on `listen` from the same host (0.0.0.0 is not one)."""
    from gongji.config import host_port

    host, port = host_port(listen)
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - read, not bound: a wildcard listen is reached on loopback
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@_needs_database
def _credential_create(settings: Settings, args: argparse.Namespace) -> int:
    from gongji import runtime
    from gongji.store import credentials

    kind = credentials.Kind(args.kind.upper())
    if (kind is credentials.Kind.TERMINAL) != bool(args.institution and args.terminal):
        print("--institution and --terminal go with --kind terminal, and only with it", file=sys.stderr)
        return 2
    region = args.institution_region
    if region is not None and not (kind is credentials.Kind.TERMINAL and len(region) == 6 and region.isascii()
                                   and region.isdigit() and region[0] != "0"):  # fmt: skip
        print("--institution-region is a 6-digit region code, and goes with --kind terminal", file=sys.stderr)
        return 2

    async def go() -> str:
        async with runtime.database(settings) as pool:
            return await credentials.create(
                pool,
                kind,
                args.label or f"{kind.lower()} {args.terminal or ''}".strip(),
                institution_id=args.institution,
                institution_name=args.institution_name,
                institution_region=args.institution_region,
                terminal_id=args.terminal,
            )

    token = _run(go())
    print("token (shown once, stored only as its hash):", file=sys.stderr)
    print(token)
    return 0


_LIST_COLUMNS = ("id", "label", "kind", "institution", "terminal", "created", "last used", "revoked")


@_needs_database
def _credential_list(settings: Settings, args: argparse.Namespace) -> int:
    """Every credential, oldest first; never a token nor its hash (the database holds no token)."""
    from gongji import runtime
    from gongji.store import credentials

    async def go() -> list[credentials.Listed]:
        async with runtime.database(settings) as pool:
            return await credentials.list_all(pool)

    rows = [
        (str(c.credential_id), c.label, c.kind.lower(), c.institution_id or "-", c.terminal_id or "-",
         _when(c.created_at), _when(c.last_used_at), _when(c.revoked_at))
        for c in _run(go())
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in [_LIST_COLUMNS, *rows]) for i in range(len(_LIST_COLUMNS))]
    for row in [_LIST_COLUMNS, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _when(at: dt.datetime | None) -> str:
    """A timestamp in UTC to the second, or '-' for never."""
    return "-" if at is None else f"{at.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"


@_needs_database
def _credential_revoke(settings: Settings, args: argparse.Namespace) -> int:
    """Revoke at once: money calls refuse it in their own transaction, every server's cache drops it
    within about a second (see gongji.api.auth.Authenticator)."""
    from gongji import runtime
    from gongji.store import credentials

    async def go() -> int:
        async with runtime.database(settings) as pool:
            return await credentials.revoke(pool, args.credential)

    try:
        credential_id = _run(go())
    except credentials.NotRevoked as exc:
        print(f"gongji: not revoked: {exc}", file=sys.stderr)
        return 1
    print(f"revoked credential {credential_id}")
    return 0


def _client(settings: Settings, args: argparse.Namespace) -> int:
    """One RPC: its answer as JSON on stdout, or one line on stderr and an exit status of its kind."""
    import grpc

    from gongji import client

    try:
        result = _run(client.run(args, client.tokens(settings.data_dir, args)))
    except grpc.aio.AioRpcError as exc:
        status, line = client.failure(exc, client.target(args))
        print(line, file=sys.stderr)
        return status
    except client.ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130  # as a shell reports SIGINT; the user knows why
    if result is not None:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


def _add_books_commands(sub: Any) -> None:
    """`gongji audit` and `gongji checkpoint`."""
    a = sub.add_parser("audit", help="check the books; exit 1 naming each difference")
    a.add_argument(
        "--chain",
        action="store_true",
        help="also verify every ledger's hash chain, naming the first entry that breaks it",
    )
    a.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="FILE",
        help="also check that the books still hold every chain head of this signed checkpoint (implies --chain; "
        "repeatable)",
    )
    a.add_argument(
        "--public-key",
        action="append",
        default=[],
        metavar="ID:BASE64",
        help="a key that verifies checkpoints (repeatable; default: this configuration's own)",
    )
    a.set_defaults(func=_audit)
    k = sub.add_parser("checkpoint", help="take a signed checkpoint of the ledger's hash chains (JSON)")
    k.add_argument("--out", metavar="FILE", help="write it to this new file (default: stdout)")
    k.add_argument("--public-key", action="store_true", help="print the public key that verifies them, and exit")
    k.set_defaults(func=_checkpoint)


def _parser() -> argparse.ArgumentParser:
    from gongji import client

    p = argparse.ArgumentParser(prog="gongji", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve gRPC and metrics until SIGTERM/SIGINT")
    s.add_argument("--demo", action="store_true", help="load the demo data set on first start")
    s.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("GONGJI_WORKERS", "1")),
        choices=range(1, 33),
        metavar="N",
        help="server processes sharing the port (default 1, or GONGJI_WORKERS)",
    )
    s.set_defaults(func=_serve)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=_migrate)
    sub.add_parser("seed", help="load the demo data set").set_defaults(func=_seed)
    _add_books_commands(sub)

    h = sub.add_parser("health", help="check the local server's gRPC health; exit 0 when SERVING, else 1")
    h.add_argument(
        "--target",
        help="host:port, plaintext (default: GONGJI_HEALTH_LISTEN's port on this host, else GONGJI_GRPC_LISTEN's)",
    )
    h.add_argument("--service", default="", help="a service name; default: the server as a whole")
    h.add_argument("--timeout-s", type=float, default=3.0, help="deadline of the check (default 3)")
    h.set_defaults(func=_health)

    cred = sub.add_parser("credential", help="manage bearer-token credentials")
    cred_sub = cred.add_subparsers(dest="credential_command", required=True)
    c = cred_sub.add_parser("create", help="create a bearer token (printed once, stored hashed)")
    c.add_argument("--kind", choices=["terminal", "app", "operator", "consumer"], required=True)
    c.add_argument("--institution", help="institution id (terminals only)")
    c.add_argument("--institution-name", help="institution name, when it is new")
    c.add_argument(
        "--institution-region",
        help="the institution's 统筹区, 6 digits (default: the one in its national code, H61010300101 is 610100)",
    )
    c.add_argument("--terminal", help="terminal id (terminals only)")
    c.add_argument("--label", help="what the token is for")
    c.set_defaults(func=_credential_create)
    cred_sub.add_parser(
        "list", help="list credentials: id, label, kind, institution, terminal, created, last used, revoked"
    ).set_defaults(func=_credential_list)
    r = cred_sub.add_parser("revoke", help="revoke a credential at once, on every server")
    r.add_argument("credential", help="its id (all digits), or its label when one live credential has it")
    r.set_defaults(func=_credential_revoke)

    cl = sub.add_parser(
        "client",
        help="call a running server: one subcommand per RPC (demo tokens, or GONGJI_*_TOKEN)",
        description=client.DESCRIPTION,
        epilog=client.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[client.common_options(top=True)],
    )
    client.add_arguments(
        cl.add_subparsers(dest="client_command", required=True, metavar="COMMAND"), client.common_options(top=False)
    )
    cl.set_defaults(func=_client)
    return p


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv)[:1] == ["client"] and "grpc" not in sys.modules:
        # A failure is one line: gRPC core's own log lines (a failed TLS handshake, an unreadable
        # certificate) would add to it. Read when grpc is imported; GONGJI users may set it to see them.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    args = _parser().parse_args(argv)
    settings = Settings()
    if args.command != "client":  # the client logs nothing: its stderr is the one line of a failure
        logs.configure(settings.log_level, settings.log_format)
    warnings.filterwarnings("ignore", module="platformdirs")
    if getattr(args, "request_id", "") is None:
        args.request_id = f"cli-{uuid.uuid4()}"
    code: int = args.func(settings, args)
    return code


if __name__ == "__main__":
    sys.exit(main())
