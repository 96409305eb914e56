"""Process metrics in Prometheus form (served at ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_CONSUMED = Counter(
    "feedrank_events_consumed", "Events read from the event topics", ["topic"], registry=REGISTRY
)
EVENTS_DEAD_LETTERED = Counter(
    "feedrank_events_dead_lettered", "Events sent to the dead-letter topic", ["topic", "kind"], registry=REGISTRY
)
CONSUMER_LAG = Gauge(
    "feedrank_consumer_lag", "Records behind the end of each assigned partition", ["topic", "partition"],
    registry=REGISTRY,
)
EVENTS_VALID = Counter(
    "feedrank_events_valid", "Events that decoded and validated", ["kind"], registry=REGISTRY
)
FRESHNESS_SECONDS = Histogram(
    "feedrank_freshness_seconds", "Produce-to-visible delay of events in their tables",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=REGISTRY,
)


def render() -> bytes:
    """The registry in Prometheus text exposition format."""
    return generate_latest(REGISTRY)

SCORE_LATENCY = Histogram(
    "feedrank_score_latency_seconds", "POST /score latency inside the worker",
    buckets=(0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1), registry=REGISTRY,
)
SCORE_REQUESTS = Counter("feedrank_score_requests", "POST /score requests by HTTP status", ["status"],
                         registry=REGISTRY)
CALIBRATION_ERROR = Gauge("feedrank_calibration_error", "sum(p)/sum(y) over the short drift window",
                          ["task"], registry=REGISTRY)
CALIBRATION_ALERT = Gauge("feedrank_calibration_alert", "1 while a task's calibration is out of band",
                          ["task"], registry=REGISTRY)
