"""Build and run a feedrank worker: broker, topics, Faust app, agents, web."""

from __future__ import annotations

import logging
from typing import Sequence

from .broker import ResolvedBroker, resolve_broker
from .ingest import Decoded, install_ingest
from .producer import one_record_per_batch
from .settings import Settings
from .topics import ensure_topics, topic_specs

log = logging.getLogger(__name__)


class ConsumedLog:
    """The foundation's processor: counts good events per kind and logs progress."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {"impression": 0, "engagement": 0}
        self._last_logged = 0

    async def __call__(self, batch: Sequence[Decoded]) -> None:
        for d in batch:
            self.counts[d.event.kind] += 1
        total = sum(self.counts.values())
        if total - self._last_logged >= 1000:
            self._last_logged = total
            log.info("consumed %d impressions, %d engagements", self.counts["impression"],
                     self.counts["engagement"])


def build_worker_app(settings: Settings, bootstrap: str):
    """The worker's Faust app with every agent and web route installed."""
    from .app import create_app
    from .metrics import render

    ensure_topics(bootstrap, topic_specs(settings), settings.replication_factor)
    single = one_record_per_batch(settings, bootstrap)
    app = create_app(settings, bootstrap, single_record_batches=single)
    consumed = ConsumedLog()
    install_ingest(app, settings, [consumed])

    @app.page("/metrics")
    async def metrics(web, request):  # pragma: no cover - exercised by broker tests
        return web.bytes(render(), content_type="text/plain; version=0.0.4")

    app.feedrank_consumed = consumed  # type: ignore[attr-defined]
    return app


def run_worker(settings: Settings, broker: ResolvedBroker | None = None) -> None:
    """Run a worker in the foreground until SIGINT/SIGTERM."""
    import faust

    broker = broker or resolve_broker(log_dir=settings.log_dir)
    log.info("worker using broker %s (%s)", broker.bootstrap, broker.kind)
    try:
        app = build_worker_app(settings, broker.bootstrap)
        worker = faust.Worker(app, loglevel=settings.log_level, quiet=True)
        worker.execute_from_commandline()
    finally:
        broker.stop()
