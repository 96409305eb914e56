"""``streams.metrics.parse_text``: the one reader of Prometheus text (prometheus_client's parser) and its lookups."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from streams.metrics import Scrape, parse_text


def _registry() -> tuple[CollectorRegistry, Counter, Histogram]:
    reg = CollectorRegistry()
    c = Counter("t_events", "events", ["kind"], registry=reg)
    h = Histogram("t_latency_seconds", "latency", ["stage"], buckets=(0.01, 0.1, 1.0), registry=reg)
    return reg, c, h


def test_values_labels_and_deltas() -> None:
    reg, c, h = _registry()
    c.labels("view").inc(3)
    c.labels("click").inc(2)
    before = parse_text(generate_latest(reg).decode())
    c.labels("click").inc(5)
    after = parse_text(generate_latest(reg).decode())
    assert after.value("t_events_total") == 10
    assert after.value("t_events_total", kind="click") == 7
    assert after.value("t_events_total", kind="nope") == 0.0 and after.value("nope", default=-1.0) == -1.0
    assert after.delta(before, "t_events_total", kind="click") == 5
    assert set(after.label_values("t_events_total", "kind")) == {"view", "click"}
    assert after.has("t_events_total") and not Scrape().has("t_events_total")


def test_histogram_quantile_between_scrapes() -> None:
    reg, _, h = _registry()
    for _ in range(10):
        h.labels("parse").observe(0.005)
    before = parse_text(generate_latest(reg).decode())
    for _ in range(99):
        h.labels("parse").observe(0.05)
    h.labels("parse").observe(0.5)
    h.labels("score").observe(5.0)
    after = parse_text(generate_latest(reg).decode())
    assert after.quantile("t_latency_seconds", 0.5, stage="parse") == 0.1
    assert after.quantile("t_latency_seconds", 0.99, since=before, stage="parse") == 0.1
    assert after.quantile("t_latency_seconds", 1.0, since=before, stage="parse") == 1.0
    assert after.quantile("t_latency_seconds", 1.0, stage="score") == float("inf")
    assert after.quantile("t_latency_seconds", 0.5, since=after) is None  # nothing observed in between
    assert after.delta(before, "t_latency_seconds_count", stage="parse") == 100
