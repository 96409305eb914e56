"""Wires the stream tables into the Faust app: services, read API, web views.

``install_tables(app, settings, bootstrap)`` starts the table engine and the
global feedback view with the app and adds:

- ``GET /tables/user/{user_id}``  the user's state (404 + owner partition when not local)
- ``GET /tables/feedback``        the global 30-minute feedback snapshot
- ``GET /tables/stats``           partitions, counters, freshness percentiles
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

from .agents_feedback import FeedbackViewService
from .agents_runtime import Processor, TableEngine
from .settings import Settings
from .views import NotLocalError, StreamViews, install

log = logging.getLogger(__name__)


def bootstrap_of(app: Any) -> str:
    """``host:port,...`` from a Faust app's broker URLs."""
    return ",".join(f"{u.host}:{u.port or 9092}" for u in app.conf.broker)


def install_tables(app: Any, settings: Settings, bootstrap: str | None = None,
                   processors: Sequence[Processor] = ()) -> StreamViews:
    bootstrap = bootstrap or bootstrap_of(app)
    engine = TableEngine(settings, bootstrap, processors=processors)
    feedback = FeedbackViewService(settings, bootstrap)
    views = StreamViews(engine, feedback)
    install(views)

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

    app.feedrank_views = views  # type: ignore[attr-defined]
    return views
