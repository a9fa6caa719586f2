"""Labelled series counted through kept children are the series prometheus_client exports."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry

from gongji import metrics


def test_kept_children_count_the_exported_series() -> None:
    registry = CollectorRegistry()
    counter = metrics.Counter("test_kept_total", "A test counter.", ["reason"], registry=registry)
    histogram = metrics.Histogram("test_kept_seconds", "A test histogram.", ["lock"], registry=registry, buckets=(1.0,))
    counter.labels("A").inc()
    counter.labels("A").inc(2)
    counter.labels(reason="A").inc()
    histogram.labels("grant").observe(0.5)
    assert counter.labels("A") is counter.labels(reason="A")
    assert registry.get_sample_value("test_kept_total", {"reason": "A"}) == 4
    assert registry.get_sample_value("test_kept_seconds_count", {"lock": "grant"}) == 1
    # A removed or cleared series is not counted through a stale child: it starts again from 0.
    counter.remove("A")
    counter.labels("A").inc()
    assert registry.get_sample_value("test_kept_total", {"reason": "A"}) == 1
    counter.clear()
    counter.labels("A").inc()
    assert registry.get_sample_value("test_kept_total", {"reason": "A"}) == 1
    counter.remove_by_labels({"reason": "A"})
    assert registry.get_sample_value("test_kept_total", {"reason": "A"}) is None
    counter.labels("A").inc()
    assert registry.get_sample_value("test_kept_total", {"reason": "A"}) == 1


def test_the_grpc_families_keep_their_children() -> None:
    """The interceptor counts every RPC through labels(...): the same child each time, in the registry."""
    labels = ("unary", "gongji.v1.SettlementService", "Settle")
    assert metrics.GRPC_STARTED.labels(*labels) is metrics.GRPC_STARTED.labels(*labels)
    assert metrics.GRPC_HANDLING_SECONDS.labels(*labels) is metrics.GRPC_HANDLING_SECONDS.labels(*labels)
    assert metrics.GRPC_HANDLED.labels(*labels, "ABORTED") is metrics.GRPC_HANDLED.labels(*labels, "ABORTED")
    handled = {"grpc_type": "unary", "grpc_service": "gongji.v1.SettlementService", "grpc_method": "Settle"}
    before = REGISTRY.get_sample_value("grpc_server_handled_total", handled | {"grpc_code": "ABORTED"})
    metrics.GRPC_HANDLED.labels(*labels, "ABORTED").inc()
    assert REGISTRY.get_sample_value("grpc_server_handled_total", handled | {"grpc_code": "ABORTED"}) == before + 1
