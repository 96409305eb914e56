"""Every topic feedrank touches, created explicitly with its partition count.

The embedded broker auto-creates unknown topics with 4 partitions whatever the
app declared, which breaks co-partitioning (Faust raises PartitionsMismatch),
so nothing may produce to or consume from a topic before ``ensure_topics``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from streams.settings import Settings
from streams.kafka.security import KafkaSecurity, KafkaSecurityError, explain_connection_failure, kafka_options, probe

#: how long a secured first connection is probed with librdkafka before the admin client tries it
PROBE_S = 5.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False
    #: retention for non-compacted topics (ms); None = broker default
    retention_ms: int | None = None
    #: how often a partition rolls a new segment (ms; retention deletes whole segments); None = broker default
    segment_ms: int | None = None


def repartition_topic(app_id: str, input_topic: str) -> str:
    """The internal topic that forwards ``input_topic``'s records sent to the wrong partition."""
    return f"{app_id}-repartition-{input_topic}"


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """All topics of the system. User-keyed topics share one partition count."""
    p = settings.partitions
    return [
        TopicSpec(settings.topic_impressions, p),
        TopicSpec(settings.topic_engagements, p),
        TopicSpec(settings.topic_dlq, p),
        # stream tables (issue 3): co-partitioned with the event topics
        TopicSpec(settings.topic_predictions, p),
        TopicSpec(settings.topic_labeled, p),
        TopicSpec(settings.topic_feedback_deltas, p, retention_ms=6 * 3600 * 1000),
        TopicSpec(f"{settings.app_id}-state-changelog", p, compacted=True),
        # records a producer sent to another partition than their user's, forwarded (streams/engine/repartition.py)
        TopicSpec(repartition_topic(settings.app_id, settings.topic_impressions), p),
        TopicSpec(repartition_topic(settings.app_id, settings.topic_engagements), p),
        # serving side (issues 5 and 6): one partition each, read whole by every worker
        TopicSpec(settings.topic_calibrators, 1, compacted=True),
        TopicSpec(settings.topic_drift, 1, retention_ms=7 * 24 * 3600 * 1000),
        TopicSpec(f"{settings.app_id}-owners", 1, compacted=True),
    ]


def ensure_topics(bootstrap: str, specs: list[TopicSpec], replication_factor: int = 1,
                  timeout_s: float = 30.0, min_insync_replicas: int | None = None,
                  settings: Settings | None = None) -> None:
    """Create missing topics and check existing ones have the declared partitions.

    ``settings`` gives the Kafka security settings (default: the process's ``FEEDRANK_*`` environment);
    a first connection that fails because of them raises ``KafkaSecurityError`` saying which to check."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    if settings is None:
        from streams.settings import get_settings

        settings = get_settings()
    sec = KafkaSecurity.of(settings)
    if sec.protocol != "PLAINTEXT":
        # librdkafka names a refused login or a failed TLS handshake in its log at once, where kafka-python's
        # client only times out after request_timeout_ms (30 s): ask it first, for a few seconds
        why = probe(bootstrap, sec, timeout_s=min(timeout_s, PROBE_S))
        if why is not None:
            raise KafkaSecurityError(why)
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000),
                                 **kafka_options("kafka-python", settings))
    except Exception as exc:
        why = explain_connection_failure(exc, bootstrap, settings)
        if why is None:
            raise
        raise KafkaSecurityError(why) from exc
    try:
        existing = set(admin.list_topics())
        new = []
        for spec in specs:
            if spec.name in existing:
                continue
            configs: dict[str, str] = {}
            if spec.compacted:
                configs["cleanup.policy"] = "compact"
            if spec.retention_ms is not None:
                configs["retention.ms"] = str(spec.retention_ms)
            if spec.segment_ms is not None:
                configs["segment.ms"] = str(spec.segment_ms)
            if min_insync_replicas is not None:
                configs["min.insync.replicas"] = str(min_insync_replicas)
            new.append(NewTopic(spec.name, spec.partitions, replication_factor, topic_configs=configs))
        for topic in new:
            try:
                admin.create_topics([topic])
            except TopicAlreadyExistsError:
                pass
        deadline = time.monotonic() + timeout_s
        wanted = {s.name: s.partitions for s in specs}
        while True:
            described = {
                d.get("name") or d.get("topic"): len(d.get("partitions") or [])
                for d in admin.describe_topics(list(wanted))
                if not d.get("error_code")
            }
            missing = {n for n, k in wanted.items() if described.get(n, 0) == 0}
            if not missing:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics not visible after {timeout_s:.0f}s: {sorted(missing)}")
            time.sleep(0.1)
        wrong = {n: (described[n], k) for n, k in wanted.items() if described[n] != k}
        if wrong:
            detail = ", ".join(f"{n} has {have} partitions, expected {want}" for n, (have, want) in wrong.items())
            raise RuntimeError(
                f"partition counts disagree: {detail}. Delete and recreate these topics or set "
                "FEEDRANK_PARTITIONS to match."
            )
        if new:
            log.info("created topics %s", [t.name for t in new])
    finally:
        admin.close()


def ensure_system_topics(bootstrap: str, settings: Settings) -> None:
    """Every topic of ``topic_specs(settings)``, with the settings' replication and min.insync.replicas."""
    ensure_topics(bootstrap, topic_specs(settings), settings.replication_factor,
                  min_insync_replicas=settings.min_insync_replicas, settings=settings)
