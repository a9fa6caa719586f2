"""`gongji serve --workers N`: N server processes on one port, in grpc's fork-before-start pattern.

The parent prepares what must happen once (the embedded PostgreSQL, migrations, the demo data), then
forks the workers before it has created any gRPC object (grpcio does not survive a fork once it is
running). Each worker opens its own pool and server on the same port with SO_REUSEPORT; the kernel
spreads connections among them. The parent serves the metrics of all workers, aggregated by
prometheus-client's multiprocess mode, and on SIGTERM/SIGINT passes the signal on and waits for them.

PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is first imported, so the CLI calls
`prepare_metrics_dir` before importing anything that imports the metrics.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from pydantic import SecretStr

from gongji.config import Settings

log = logging.getLogger(__name__)


def prepare_metrics_dir() -> Path:
    """A fresh directory for the workers' metric files, announced to prometheus-client."""
    path = Path(tempfile.mkdtemp(prefix="gongji-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def _worker(settings: Settings) -> None:
    import uvloop

    from gongji import runtime

    uvloop.run(runtime.serve_worker(settings))


def serve(settings: Settings, *, load_demo: bool, workers: int, metrics_dir: Path) -> int:
    import uvloop
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

    from gongji import metrics, runtime
    from gongji.config import host_port

    if host_port(settings.grpc_listen)[1] == 0:
        raise SystemExit("--workers needs a fixed port in GONGJI_GRPC_LISTEN: port 0 would differ per worker")
    # Once, in the parent: the voucher key (generated on first use) and the database (and its URL, so
    # the workers do not start another embedded server).
    settings.voucher_key_bytes()
    url = uvloop.run(runtime.prepare(settings, load_demo=load_demo))
    worker_settings = settings.model_copy(update={"database_url": SecretStr(url)})
    context = multiprocessing.get_context("fork")
    procs = [
        context.Process(target=_worker, args=(worker_settings,), name=f"gongji-worker-{i}") for i in range(workers)
    ]
    for p in procs:
        p.start()
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    metrics.serve_http(settings.metrics_listen, registry)
    log.info("serving gRPC on %s with %d workers", settings.grpc_listen, workers)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set() and all(p.is_alive() for p in procs):
        stop.wait(0.5)
    for p in procs:
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        p.join(settings.grace_period_s + 5)
        if p.is_alive():
            p.kill()
            p.join()
        if p.pid is not None:
            mark_process_dead(p.pid)  # type: ignore[no-untyped-call]
    shutil.rmtree(metrics_dir, ignore_errors=True)
    failed = [p.name for p in procs if p.exitcode not in (0, -signal.SIGTERM)]
    log.info("stopped")
    return 1 if failed else 0
