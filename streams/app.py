"""The Faust app factory: one place that turns Settings into a configured app.

Against the embedded broker Faust's own producer (changelogs, sinks) must send
one record per batch, or the broker's end offsets lie and table recovery drops
the tail of a changelog (docs/brokers.md). ``create_app`` does that when asked.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from streams.kafka.producer import compression_type
from streams.settings import Settings
from streams.kafka.security import kafka_options

log = logging.getLogger(__name__)


def faust_broker_url(bootstrap: str) -> str:
    """``host1:9092,host2:9092`` -> ``kafka://host1:9092;kafka://host2:9092``."""
    hosts = [h.strip() for h in bootstrap.split(",") if h.strip()]
    return ";".join(h if "://" in h else f"kafka://{h}" for h in hosts)


def create_app(settings: Settings, bootstrap: str, *, single_record_batches: bool,
               **overrides: Any) -> faust.App:
    """A Faust app for ``settings`` talking to ``bootstrap``."""
    config: dict[str, Any] = dict(
        broker=faust_broker_url(bootstrap),
        store="rocksdb://",
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        broker_commit_interval=settings.commit_interval_s,
        web_enabled=True,
        web_host=settings.web_host,
        web_bind=settings.web_host,  # Faust binds 0.0.0.0 unless told: listen exactly where the settings say
        web_port=settings.web_port,
        web_in_thread=False,
        # Rebalances after a kill without leave take the session timeout.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        stream_wait_empty=False,
        producer_compression_type=compression_type(settings),
    )
    if single_record_batches:
        config["producer_max_batch_size"] = 1
    config.update(kafka_options("faust", settings))
    config.update(overrides)
    app = faust.App(settings.app_id, **config)
    log.info("faust app %s on %s (one record per batch: %s)", settings.app_id, bootstrap, single_record_batches)
    return app
