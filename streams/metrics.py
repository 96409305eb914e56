"""Process metrics in Prometheus form (served at ``GET /metrics``), and the one reader of that text (``parse_text``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

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
FEATURE_MISMATCH = Gauge("feedrank_feature_mismatch_ratio", "Share of a feature's served values that differ from the "
                         "replay's at the same event time (online/offline consistency, FEEDRANK_CONSISTENCY_CHECK)",
                         ["feature"], registry=REGISTRY)
FEATURE_REL_ERROR = Gauge("feedrank_feature_relative_error", "Mean relative error of a feature's served values against "
                          "the replay's", ["feature"], registry=REGISTRY)
CONSISTENCY_REQUESTS = Gauge("feedrank_consistency_requests", "Sampled requests the consistency check has compared",
                             registry=REGISTRY)
SCORE_THREADS = Gauge("feedrank_score_threads", "Torch intra-op threads per scoring call (FEEDRANK_SCORE_THREADS, "
                      "or picked from the usable cores when 0)", ["source"], registry=REGISTRY)
MODEL_INFO = Gauge("feedrank_model_info", "1 for the model a worker serves: its version and the number format "
                   "of its expert GEMMs", ["version", "precision"], registry=REGISTRY)


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Scrape:
    """One scrape of Prometheus text, parsed by ``prometheus_client``'s own parser, with lookup helpers.

    Sample names are as exposed (a counter ``x`` reads as ``x_total``; a histogram ``h`` as ``h_bucket``,
    ``h_count``, ``h_sum``). Label arguments select the samples carrying those labels; other labels
    are summed over.
    """

    samples: tuple[Sample, ...] = ()

    def select(self, name: str, **labels: str) -> list[Sample]:
        """The samples named ``name`` whose labels include ``labels``."""
        return [s for s in self.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, default: float = 0.0, **labels: str) -> float:
        """Sum of the matching samples' values; ``default`` when none match."""
        got = self.select(name, **labels)
        return sum(s.value for s in got) if got else default

    def has(self, name: str, **labels: str) -> bool:
        return bool(self.select(name, **labels))

    def label_values(self, name: str, label: str) -> list[str]:
        """The values ``label`` takes among samples named ``name`` (in order of appearance, once each)."""
        return list(dict.fromkeys(s.labels[label] for s in self.samples if s.name == name and label in s.labels))

    def buckets(self, histogram: str, **labels: str) -> list[tuple[float, float]]:
        """``[(le, cumulative count)]`` of a histogram, sorted by bound, summed over unselected labels."""
        acc: dict[float, float] = {}
        for s in self.select(f"{histogram}_bucket", **labels):
            le = float(s.labels["le"])
            acc[le] = acc.get(le, 0.0) + s.value
        return sorted(acc.items())

    def quantile(self, histogram: str, q: float, since: "Scrape | None" = None, **labels: str) -> float | None:
        """The ``q`` quantile (the bucket's upper bound) of a histogram, of the observations after ``since``;
        None without observations."""
        before = dict(since.buckets(histogram, **labels)) if since is not None else {}
        buckets = [(le, c - before.get(le, 0.0)) for le, c in self.buckets(histogram, **labels)]
        if not buckets or buckets[-1][1] <= 0:
            return None
        total = buckets[-1][1]
        return next((le for le, cum in buckets if cum >= q * total), None)

    def delta(self, since: "Scrape", name: str, **labels: str) -> float:
        """How much a counter (or a histogram's ``_count``/``_sum``) grew since an earlier scrape."""
        return self.value(name, **labels) - since.value(name, **labels)


def parse_text(text: str) -> Scrape:
    """Prometheus text exposition -> :class:`Scrape` (``prometheus_client.parser``; no hand parsing)."""
    from prometheus_client.parser import text_string_to_metric_families

    return Scrape(tuple(Sample(s.name, dict(s.labels), float(s.value))
                        for family in text_string_to_metric_families(text) for s in family.samples))


def scrape(url: str, timeout: float = 2.0) -> Scrape:
    """``parse_text`` of a worker's ``<url>/metrics``."""
    import urllib.request

    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout) as resp:
        return parse_text(resp.read().decode())
