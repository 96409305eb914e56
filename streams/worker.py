"""Build and run a feedrank worker: broker, topics, Faust app, engine, serving, web.

Faust hosts the web server, the app lifecycle and the CLI here; the hot path
(every table update) is the project's own engine (``streams.engine``), run as
a ``mode.Service`` of the app. Measured on 2 cores, a Faust agent moves 2,000
to 3,300 events/s with one table write per event, the engine 25,000 to 38,000
with all its tables (docs/faust-decision.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from streams.kafka.broker import ResolvedBroker, resolve_broker
from streams.kafka.producer import one_record_per_batch
from streams.settings import Settings
from streams.kafka.topics import ensure_system_topics
from streams.engine.engine import TableEngine
from streams.engine.feedback_view import FeedbackViewService
from streams.engine.views import NotLocalError, StreamViews

log = logging.getLogger(__name__)


def bootstrap_of(app: Any) -> str:
    """``host:port,...`` from a Faust app's broker URLs."""
    return ",".join(f"{u.host}:{u.port or 9092}" for u in app.conf.broker)


def install_tables(app: Any, settings: Settings, bootstrap: str | None = None) -> StreamViews:
    """Start the table engine and the global feedback view with ``app``; add the ``/tables/*`` pages.

    - ``GET /tables/user/{user_id}``  the user's state (404 + owner partition when not local)
    - ``GET /tables/feedback``        the global 30-minute feedback snapshot
    - ``GET /tables/stats``           partitions, counters, freshness percentiles
    """
    bootstrap = bootstrap or bootstrap_of(app)
    engine = TableEngine(settings, bootstrap)
    feedback = FeedbackViewService(settings, bootstrap)
    views = StreamViews(engine, feedback)

    @app.task
    async def _start_tables() -> None:  # pragma: no cover - exercised by broker tests
        await app.add_runtime_dependency(feedback)
        await app.add_runtime_dependency(engine)

    @app.page("/tables/user/{user_id}")
    async def user_state(web, request, user_id: str):  # pragma: no cover - broker tests
        try:
            st = views.get_user_state(user_id)
        except NotLocalError as exc:
            return web.json({"error": str(exc), "partition": exc.partition}, status=404)
        return web.json(dataclasses.asdict(st))

    @app.page("/tables/feedback")
    async def feedback_snapshot(web, request):  # pragma: no cover - broker tests
        snap = views.get_feedback_snapshot()
        return web.json({k: dataclasses.asdict(v) for k, v in snap.segments.items()})

    @app.page("/tables/stats")
    async def table_stats(web, request):  # pragma: no cover - broker tests
        return web.json(views.stats())

    return views


def build_worker_app(settings: Settings, bootstrap: str):
    """The worker's Faust app with the table engine, serving, calibration loop and web API."""
    from streams.app import create_app
    from streams.engine.calibration_loop import CalibrationLoop
    from streams.serving.auth import install_auth
    from streams.serving.routing import OwnerDirectory
    from streams.serving.serving import Serving
    from streams.serving.web import install_web

    ensure_system_topics(bootstrap, settings)
    single = one_record_per_batch(settings, bootstrap)
    app = create_app(settings, bootstrap, single_record_batches=single)
    views = install_tables(app, settings, bootstrap)
    install_auth(app, settings)
    serving = Serving.load(settings)
    serving.log_producer = lambda: views.engine.producer
    directory = OwnerDirectory(settings.app_id, bootstrap, settings.url, lambda: set(views.engine.tables))
    calibration = CalibrationLoop(settings, bootstrap, serving, is_leader=lambda: 0 in views.engine.tables)
    consistency = None
    if settings.consistency_check:
        from streams.engine.consistency_monitor import ConsistencyMonitor

        consistency = ConsistencyMonitor(settings, bootstrap, serving, is_leader=lambda: 0 in views.engine.tables)

    @app.task
    async def _start_services() -> None:  # pragma: no cover - exercised by broker tests
        await app.add_runtime_dependency(directory)
        await app.add_runtime_dependency(calibration)
        if consistency is not None:
            await app.add_runtime_dependency(consistency)

    @app.task
    async def _connect_score_process() -> None:  # pragma: no cover - exercised by broker tests
        serving.connect()  # from the start, so a model published while no request comes is loaded

    @app.task
    async def _loop_monitor() -> None:  # pragma: no cover - exercised by broker tests
        from streams.serving.loopmon import install_gc_monitor, trim_heap, tune_runtime, watch_loop_lag

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
