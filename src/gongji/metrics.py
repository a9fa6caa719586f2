"""Prometheus metrics. Labels never carry personal data: only methods, codes, reasons and sources."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# The grpc-ecosystem server families (names and labels as go-grpc-prometheus exports them).
GRPC_STARTED = Counter(
    "grpc_server_started_total", "RPCs started on the server.", ["grpc_type", "grpc_service", "grpc_method"]
)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, regardless of success or failure.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Response latency of RPCs handled by the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

# Domain.
SETTLEMENTS = Counter(
    "gongji_settlements_total", "Settle calls by outcome: OK, REPLAYED, or the refusal reason.", ["outcome"]
)
SETTLED_FEN = Counter(
    "gongji_settled_fen_total", "Money settled, in fen, by source: own, mutual_aid, cash.", ["source"]
)
MIGRATIONS_APPLIED = Counter("gongji_migrations_applied_total", "Schema migrations applied by this process.")
