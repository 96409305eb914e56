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
EVENTS_REPARTITIONED = Counter(
    "feedrank_events_repartitioned", "Events that arrived on another partition than their user's and were forwarded "
    "through the repartition topic (a producer not on the murmur2 partitioner)", ["topic"], registry=REGISTRY
)
EVENTS_VALID = Counter(
    "feedrank_events_valid", "Events that decoded and validated", ["kind"], registry=REGISTRY
)
FRESHNESS_SECONDS = Histogram(
    "feedrank_freshness_seconds", "Produce-to-visible delay of events in their tables",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=REGISTRY,
)

LOOP_LAG_SECONDS = Histogram(
    "feedrank_event_loop_lag_seconds", "How late a 10 ms event-loop tick ran (time the loop was blocked)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1), registry=REGISTRY,
)
GC_PAUSE_SECONDS = Histogram(
    "feedrank_gc_pause_seconds", "Python garbage-collector pauses by generation",
    ["generation"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25), registry=REGISTRY,
)
SCORE_THREAD_SECONDS = Histogram(
    "feedrank_score_thread_seconds", "The score stage split on the score thread: cpu (running), runnable "
    "(ready, waiting for a core), blocked (the rest: mostly waiting for the GIL)",
    ["part"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.1, 0.25, 1),
    registry=REGISTRY,
)
HEAP_TRIM_SECONDS = Histogram(
    "feedrank_heap_trim_seconds", "How long giving free heap pages back to the kernel took (malloc_trim)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25), registry=REGISTRY,
)
HEAP_RELEASED_BYTES = Counter(
    "feedrank_heap_released_bytes", "Resident bytes of free heap given back to the kernel (malloc_trim)",
    registry=REGISTRY,
)
BROKER_RESETS = Counter(
    "feedrank_broker_resets",
    "Broker data losses the table engine detected (what = changelog | input | retention), by policy action",
    ["what", "action"], registry=REGISTRY,
)
STOP_ABANDONED = Counter(
    "feedrank_stop_steps_abandoned", "Waits of a stop or revocation that ran out of time and were abandoned",
    ["step"], registry=REGISTRY,
)

SCORE_STAGE_SECONDS = Histogram(
    "feedrank_score_stage_seconds", "Where POST /score time goes: read+parse, state, wait (score thread busy), "
    "score (model, calibration, blend), log (prediction log handed to the producer)",
    ["stage"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.1, 0.25, 1),
    registry=REGISTRY,
)


def render() -> bytes:
    """The registry in Prometheus text exposition format."""
    return generate_latest(REGISTRY)

SCORE_LATENCY = Histogram(
    "feedrank_score_latency_seconds", "POST /score latency inside the worker",
    buckets=(0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.1, 0.25, 0.5, 1), registry=REGISTRY,
)
SCORE_REQUESTS = Counter("feedrank_score_requests", "POST /score requests by HTTP status", ["status"],
                         registry=REGISTRY)
CALIBRATION_ERROR = Gauge("feedrank_calibration_error", "sum(p)/sum(y) over the short drift window",
                          ["task"], registry=REGISTRY)
CALIBRATION_ALERT = Gauge("feedrank_calibration_alert", "1 while a task's calibration is out of band",
                          ["task"], registry=REGISTRY)
MODEL_INFO = Gauge("feedrank_model_info", "1 for the model a worker serves: its version and the number format "
                   "of its expert GEMMs", ["version", "precision"], registry=REGISTRY)


def parse_text(text: str) -> dict[str, float]:
    """Prometheus text -> ``{"name{k=v,...}": value}`` plus ``{"name": sum over labels}``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else "")
            out[key] = out.get(key, 0.0) + s.value
            out[s.name] = out.get(s.name, 0.0) + s.value if s.labels else out[key]
    return out


def scrape(url: str, timeout: float = 2.0) -> dict[str, float]:
    """``parse_text`` of a worker's ``<url>/metrics``."""
    import urllib.request

    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout) as resp:
        return parse_text(resp.read().decode())


def hist_quantile(now: dict[str, float], prev: dict[str, float], name: str, q: float,
                  labels: dict[str, str] | None = None) -> float | None:
    """The ``q`` quantile (upper bucket bound) of a histogram between two scrapes, for one label set."""
    prefix = f"{name}_bucket{{"
    want = labels or {}
    buckets = []
    for key, value in now.items():
        if not key.startswith(prefix):
            continue
        got = dict(kv.split("=", 1) for kv in key[len(prefix):-1].split(","))
        if any(got.get(k) != v for k, v in want.items()) or len(got) != len(want) + 1:
            continue
        buckets.append((float(got["le"]), value - prev.get(key, 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    for le, cum in buckets:
        if cum >= q * total:
            return le
    return None
