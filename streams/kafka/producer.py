"""The event-producer API for apps and feed servers (kafka-python).

    from streams.kafka.producer import EventProducer
    with EventProducer(bootstrap) as p:
        p.send(impression)          # key = user_id, JSON value
        p.send(engagement)

Against the embedded broker every record travels in its own batch (its end
offsets are wrong for multi-record batches); against real Kafka it batches.

Broker outages: sends are buffered and retried (``retries``, bounded by
``delivery_timeout_ms``); every future ends in success or an error, none
hangs. Against the embedded broker the producer is not idempotent: tansu
forgets producer ids when it restarts and answers kafka-python's epoch bump
(KIP-360 InitProducerId) with an unknown error, which kafka-python treats as
fatal; without idempotence the buffered records are simply retried into the
restarted broker. Should the underlying producer still reach a fatal state
(any broker), the next ``send`` replaces it with a new one (its unfinished
sends fail with an error) and logs a WARNING: ``feedrank produce`` keeps going.
"""

from __future__ import annotations

import logging
from typing import Any

from features.events import Engagement, Event, Impression, encode_event

from streams.kafka.embedded import one_record_per_batch
from streams.settings import Settings, get_settings
from streams.kafka.security import kafka_options

log = logging.getLogger(__name__)


#: lz4 level of the batches our aiokafka producers (the engine's, Faust's) compress. aiokafka 0.14 has no
#: setting for it and hard-codes 9 (LZ4-HC): measured here on labeled-example JSON, 2.9 us of CPU per record
#: at 9 against 0.16 at 1, compressed 10.7x against 8.3x; at 9 it was 9% of the table engine's CPU. librdkafka
#: (the load and bench producers, feed servers) compresses lz4 at its fast default too.
LZ4_LEVEL = 1


def use_lz4_level(level: int = LZ4_LEVEL) -> None:
    """Make aiokafka's record-batch builders (Cython and pure Python) compress lz4 at ``level``."""
    import functools
    import importlib

    from aiokafka import codec

    fast = functools.partial(codec.lz4_encode, level=level)
    for name in ("aiokafka.record._crecords.default_records", "aiokafka.record.default_records",
                 "aiokafka.record._crecords.legacy_records", "aiokafka.record.legacy_records"):
        try:
            module = importlib.import_module(name)
        except ImportError:  # no C extensions (AIOKAFKA_NO_EXTENSIONS): the pure-Python builders only
            continue
        if hasattr(module, "lz4_encode"):
            setattr(module, "lz4_encode", fast)


def compression_type(settings: Settings) -> str | None:
    """The aiokafka/Faust ``compression_type`` of ``settings.compression`` (None: uncompressed).

    lz4 comes at ``LZ4_LEVEL`` (installed into aiokafka here, before any producer of ours is built).
    """
    if settings.compression == "lz4":
        use_lz4_level()
    return None if settings.compression == "none" else settings.compression


def kafka_python_batch_config(single: bool) -> dict[str, Any]:
    """kafka-python producer settings for batching on or off."""
    if single:
        return {"batch_size": 0, "linger_ms": 0}
    return {"batch_size": 64 * 1024, "linger_ms": 5, "compression_type": None}


class CollapseProduceFailures(logging.Filter):
    """kafka-python logs one WARNING per failed batch (one record each against the embedded broker): an
    overloaded broker then floods the log (450,000 lines in a 23-minute demo). The first failure
    passes; later ones are counted and summed up in one WARNING every ``every_s`` seconds."""

    def __init__(self, every_s: float = 10.0) -> None:
        super().__init__()
        self.every_s = every_s
        self.count = 0
        self.since: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        import time

        if not str(record.msg).startswith("Failed to produce"):
            return True
        now = time.monotonic()
        if self.since is None:
            self.since = now
            return True
        self.count += 1
        if now - self.since < self.every_s:
            return False
        record.msg, record.args = ("%d more records failed to produce in the last %.0f s (the broker did not "
                                   "take them in time: overloaded or down); the latest: %s",
                                   (self.count, now - self.since, record.getMessage()))
        self.count, self.since = 0, now
        return True


def collapse_produce_failures() -> None:
    """Install ``CollapseProduceFailures`` on kafka-python's batch logger once per process."""
    logger = logging.getLogger("kafka.producer.producer_batch")
    if not any(isinstance(f, CollapseProduceFailures) for f in logger.filters):
        logger.addFilter(CollapseProduceFailures())


class EventProducer:
    """Sends contract events to their topics, keyed by user_id."""

    def __init__(self, bootstrap: str, settings: Settings | None = None, *,
                 single_record_batches: bool | None = None, **producer_config: Any) -> None:
        from kafka import KafkaProducer

        collapse_produce_failures()
        self.settings = settings or get_settings()
        if single_record_batches is None:
            single_record_batches = one_record_per_batch(self.settings, bootstrap)
        self.single_record_batches = single_record_batches
        config: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "acks": "all",
            # retry until delivery_timeout_ms, like Kafka's Java producer: a leader failover (the dead
            # broker's session timeout, ~9 s, plus an election) outlasts a fixed count of retries
            "delivery_timeout_ms": 120_000,
            "retry_backoff_ms": 200,
            "max_in_flight_requests_per_connection": 1,
            "request_timeout_ms": 30_000,
            **kafka_python_batch_config(single_record_batches),
        }
        if single_record_batches:  # the embedded-broker mode (module doc); real Kafka keeps the default (on)
            config["enable_idempotence"] = False
        config.update(kafka_options("kafka-python", self.settings))
        config.update(producer_config)
        self._config = config
        self._producer = KafkaProducer(**config)
        self.sent = 0
        self.recreated = 0

    def topic_for(self, event: Event) -> str:
        if isinstance(event, Impression):
            return self.settings.topic_impressions
        if isinstance(event, Engagement):
            return self.settings.topic_engagements
        raise TypeError(f"not a contract event: {type(event).__name__}")

    def send(self, event: Event) -> Any:
        """Queue one event; returns the kafka-python future."""
        self.sent += 1
        return self._live().send(self.topic_for(event), key=event.user_id.encode(), value=encode_event(event))

    def send_raw(self, topic: str, value: bytes | None, key: bytes | None = None) -> Any:
        """Send arbitrary bytes (tests and fuzzing of the consumer side)."""
        return self._live().send(topic, key=key, value=value)

    def is_fatal(self) -> bool:
        """Whether the underlying kafka-python producer is in its fatal state (it would fail every send)."""
        tm = getattr(self._producer, "_transaction_manager", None)
        try:
            return bool(tm is not None and tm.has_fatal_error())
        except Exception:  # a kafka-python without that API: never replace
            return False

    def _live(self) -> Any:
        """The underlying producer; a fatal one is replaced first (its unfinished sends fail with an error)."""
        if self.is_fatal():
            from kafka import KafkaProducer

            old = self._producer
            try:
                reason = old._transaction_manager.last_error()
            except Exception:
                reason = None
            log.warning("the kafka producer hit a fatal error (%s); replacing it with a new one (its unfinished "
                        "sends fail with an error)", reason or "see the kafka.producer log")
            try:  # a fatal producer aborts its batches at once: the flush inside close() is short
                old.close(timeout=2)
            except Exception as exc:
                log.warning("closing the failed producer: %s; forcing it", exc)
                try:
                    old._sender.force_close()
                except Exception:
                    pass
            self._producer = KafkaProducer(**self._config)
            self.recreated += 1
        return self._producer

    def flush(self, timeout_s: float | None = 30.0) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self) -> None:
        self._producer.flush(timeout=30)
        self._producer.close(timeout=10)

    def __enter__(self) -> "EventProducer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
