"""Broker resolution: one function used by the CLI, the demo, the benches and the tests.

Order (``resolve_broker``), each choice logged with its reason:

1. ``KAFKA_BOOTSTRAP_SERVERS`` when set: the cluster you run;
2. a testcontainers Kafka container when the caller allows it (tests) and a
   Docker engine answers;
3. a local Apache Kafka that feedrank starts itself (``streams.kafka.apache_kafka``:
   KRaft, the jars pinned in ``deploy/kafka/pom.xml``) when Java 17+ is there
   and the jars are cached or Maven can fetch them;
4. the embedded broker (``streams.kafka.embedded``: tansu, memory only), the
   no-Java fallback.

``FEEDRANK_BROKER=kafka`` or ``embedded`` forces 3 or 4 (``auto``, the default,
tries them in order); a forced choice that cannot start is an error, not a
fallback.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from streams.kafka.procutil import BrokerError, free_port

log = logging.getLogger(__name__)

#: values of ``FEEDRANK_BROKER``
BROKER_KINDS = ("auto", "kafka", "embedded")


def docker_available() -> bool:
    """True when a Docker engine answers (about 0.1 s to say no)."""
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@dataclass
class ResolvedBroker:
    """A bootstrap address and how to release what was started for it."""

    bootstrap: str
    kind: str  # "external" | "testcontainers" | "kafka" | "embedded"
    _stop: Callable[[], None] = field(default=lambda: None, repr=False)
    #: the broker's process when it runs on this box (for CPU figures), else None
    pid: int | None = None
    #: where a broker started here keeps its data (the local Apache Kafka's log dirs), else None
    data_dir: Path | None = None

    def stop(self) -> None:
        self._stop()


def resolve_broker(
    *, allow_container: bool = False, port: int = 0, log_dir: Path | None = None, kind: str | None = None,
) -> ResolvedBroker:
    """Find or start a broker, in the order of the module doc; ``kind`` defaults to ``$FEEDRANK_BROKER``."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or os.environ.get("FEEDRANK_BOOTSTRAP_SERVERS")
    if external:
        log.info("broker: %s (KAFKA_BOOTSTRAP_SERVERS)", external)
        return ResolvedBroker(external, "external")
    kind = (kind or os.environ.get("FEEDRANK_BROKER") or "auto").strip().lower()
    if kind not in BROKER_KINDS:
        raise BrokerError(f"FEEDRANK_BROKER={kind!r}: use one of {', '.join(BROKER_KINDS)}")
    log_dir = log_dir or Path("var/log")
    if kind == "auto" and allow_container and docker_available():
        from testcontainers.community.kafka import KafkaContainer  # type: ignore[import-not-found]

        container = KafkaContainer().with_kraft()
        container.start()
        log.info("broker: testcontainers Kafka at %s (a Docker engine answered)", container.get_bootstrap_server())
        return ResolvedBroker(container.get_bootstrap_server(), "testcontainers", container.stop)
    if kind in ("auto", "kafka"):
        started = _start_local_kafka(log_dir, forced=kind == "kafka")
        if started is not None:
            return started
    port = port or free_port()
    from streams.kafka.embedded import EmbeddedBroker

    broker = EmbeddedBroker(port=port, log_path=log_dir / f"tansu-{port}.log").start()
    return ResolvedBroker(broker.bootstrap, "embedded", broker.stop, broker.proc.pid if broker.proc else None)


def _start_local_kafka(log_dir: Path, *, forced: bool) -> ResolvedBroker | None:
    """A single-node Apache Kafka under ``log_dir`` (its data removed at stop); None to fall back."""
    from streams.kafka import apache_kafka

    ok, reason = apache_kafka.available()
    if ok:
        data_dir = log_dir / f"kafka-{uuid.uuid4().hex[:8]}"
        try:
            kafka = apache_kafka.LocalKafka(brokers=1, data_dir=data_dir).start(progress=log.info)
        except (apache_kafka.KafkaUnavailable, apache_kafka.KafkaStartError) as exc:
            ok, reason = False, str(exc)
        else:
            log.info("broker: local Apache Kafka %s at %s (%s; log %s)", apache_kafka.KAFKA_VERSION, kafka.bootstrap,
                     reason, kafka.log_file(0))

            def stop() -> None:
                kafka.stop()
                for node in range(kafka.brokers):  # the log stays for a post-mortem, the data goes
                    shutil.rmtree(kafka.node_dir(node) / "data", ignore_errors=True)

            return ResolvedBroker(kafka.bootstrap, "kafka", stop, kafka.pids[0], kafka.data_dir)
    if forced:
        raise BrokerError(f"FEEDRANK_BROKER=kafka but no local Apache Kafka can start: {reason}")
    log.info("broker: no local Apache Kafka (%s); starting the embedded broker", reason)
    return None
