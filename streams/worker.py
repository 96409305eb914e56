"""Build and run a feedrank worker: broker, topics, Faust app, engine, serving, web."""

from __future__ import annotations

import asyncio
import logging

from .broker import ResolvedBroker, resolve_broker
from .producer import one_record_per_batch
from .settings import Settings
from .topics import ensure_topics, topic_specs

log = logging.getLogger(__name__)


def build_worker_app(settings: Settings, bootstrap: str):
    """The worker's Faust app with the table engine, serving, calibration loop and web API."""
    from .app import create_app
    from .calibration_loop import CalibrationLoop
    from .ingest import install_ingest
    from .routing import OwnerDirectory
    from .serving import Serving
    from .web import install_web

    ensure_topics(bootstrap, topic_specs(settings), settings.replication_factor)
    single = one_record_per_batch(settings, bootstrap)
    app = create_app(settings, bootstrap, single_record_batches=single)
    views = install_ingest(app, settings, [], bootstrap=bootstrap)
    serving = Serving.load(settings)
    serving.app = app
    directory = OwnerDirectory(settings.app_id, bootstrap, settings.url, lambda: set(views.engine.tables))
    calibration = CalibrationLoop(settings, bootstrap, serving, is_leader=lambda: 0 in views.engine.tables)

    @app.task
    async def _start_services() -> None:  # pragma: no cover - exercised by broker tests
        await app.add_runtime_dependency(directory)
        await app.add_runtime_dependency(calibration)

    @app.task
    async def _loop_monitor() -> None:  # pragma: no cover - exercised by broker tests
        from .loopmon import install_gc_monitor, trim_heap, tune_runtime, watch_loop_lag

        install_gc_monitor()
        tune_runtime()
        await asyncio.gather(watch_loop_lag(), trim_heap(settings.heap_trim_interval_s))

    install_web(app, settings, views, serving, directory)
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
