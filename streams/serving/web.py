"""The worker's HTTP API: ``POST /score`` plus read-only inspection.

- ``POST /score``                 rank candidates for a user (routed to the owner of the user's partition)
- ``GET /users/{user_id}/sequence`` the user's real-time action sequence and counters (routed)
- ``GET /feedback-loop``          30-minute action rates per segment (``?segment=c:US``)
- ``GET /calibration``            the latest calibration-drift record per task
- ``GET /calibration/report``     reliability diagrams (HTML, inline SVG) of that record: its windows side by side
- ``GET /metrics``                Prometheus text
- ``GET /ready``                  200 once this worker's partitions are recovered, else 503
- ``GET /``                       a small HTML status page

Bad requests get a 4xx whose JSON body names the field; nothing a client sends
can produce a 5xx or kill the worker. A request for a user whose partition
another worker owns is forwarded there (one hop, never re-forwarded).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from typing import Any

from features.events import ACTIONS
from features.rpc import RequestError, parse_score_columns, peek_user_id

from streams.metrics import SCORE_LATENCY, SCORE_REQUESTS, SCORE_STAGE_SECONDS, render
from streams.serving.auth import HEADER as AUTH_HEADER, api_token
from streams.serving.score_process import ScoreUnavailable
from streams.engine.views import NotLocalError, StreamViews, partition_for

log = logging.getLogger(__name__)

ROUTED_HEADER = "X-Feedrank-Routed"


def _json(web, body: Any, status: int = 200):
    return web.json(body, status=status)


def _error(web, status: int, field: str, message: str, **extra: Any):
    return web.json({"error": "bad_request" if status < 500 else "unavailable", "field": field,
                     "message": message, **extra}, status=status)


class WebApi:
    """Handlers over the worker's services (views, serving, directory)."""

    def __init__(self, app, settings, views: StreamViews, serving, directory) -> None:
        self.app = app
        self.settings = settings
        self.views = views
        self.serving = serving  # streams.serving.serving.Serving
        self.directory = directory  # streams.serving.routing.OwnerDirectory
        self._token = api_token(settings)  # forwarded requests carry it to the owner

    # -- routing -------------------------------------------------------------------
    async def _forward(self, web, request, partition: int, body: bytes | None):
        """Forward to the owner of ``partition``; 503 when unknown or already routed."""
        owner = self.directory.owner(partition) if self.directory else None
        if request.headers.get(ROUTED_HEADER) or owner is None or owner == self.directory.url:
            return _error(web, 503, "user_id",
                          f"partition {partition} has no ready owner yet (rebalancing or recovering); retry",
                          partition=partition)
        url = owner.rstrip("/") + request.path_qs
        headers = {"Content-Type": "application/json", ROUTED_HEADER: "1"}
        if self._token is not None:
            headers[AUTH_HEADER] = f"Bearer {self._token}"
        try:
            async with self.app.http_client.request(
                method=request.method, url=url, data=body, headers=headers,
                timeout=_client_timeout(2.0),
            ) as resp:
                data = await resp.read()
                return web.bytes(data, content_type=resp.content_type or "application/json", status=resp.status)
        except (OSError, asyncio.TimeoutError) as exc:
            return _error(web, 503, "user_id", f"owner {owner} of partition {partition} unreachable: {exc}; retry",
                          partition=partition)

    # -- POST /score ---------------------------------------------------------------
    async def score(self, web, request):
        t0 = time.perf_counter()
        try:
            body = await request.read()
        except Exception as exc:  # aiohttp raises HTTPRequestEntityTooLarge etc.
            status = int(getattr(exc, "status", 400) or 400)
            return _error(web, status if 400 <= status < 500 else 400, "<body>", f"cannot read body: {exc}")
        isolated = self.serving is not None and self.serving.proc is not None
        try:  # the score process validates the request itself: here only what routing needs
            req = None if isolated else parse_score_columns(body)
            user_id = peek_user_id(body) if req is None else req.user_id
        except RequestError as exc:
            SCORE_REQUESTS.labels(str(exc.status)).inc()
            return web.json(exc.to_json(), status=exc.status)
        t_parsed = time.perf_counter()
        partition = partition_for(user_id, self.settings.partitions)
        try:
            user = (self.serving.read_user(self.views, user_id) if self.serving is not None
                    else self.views.get_user_state(user_id))
        except NotLocalError:
            return await self._forward(web, request, partition, body)
        if self.serving is None or self.serving.scorer is None:
            return _error(web, 503, "model", "no model loaded on this worker yet; run `feedrank train`: the worker "
                          "loads a published model within model_check_interval_s, no restart needed")
        feedback = self.views.get_feedback_snapshot()
        SCORE_STAGE_SECONDS.labels("parse").observe(t_parsed - t0)
        SCORE_STAGE_SECONDS.labels("state").observe(time.perf_counter() - t_parsed)
        try:
            response = await self.serving.score(req, body, user, feedback)
        except RequestError as exc:
            SCORE_REQUESTS.labels(str(exc.status)).inc()
            return web.json(exc.to_json(), status=exc.status)
        except ScoreUnavailable as exc:
            SCORE_REQUESTS.labels("503").inc()
            return _error(web, 503, "model", str(exc))
        served_by = self.directory.url if self.directory else ""
        elapsed = time.perf_counter() - t0
        SCORE_LATENCY.observe(elapsed)
        SCORE_REQUESTS.labels("200").inc()
        return web.bytes(response.to_json(served_by, elapsed * 1000.0), content_type="application/json")

    # -- inspection ----------------------------------------------------------------
    async def user_sequence(self, web, request, user_id: str):
        if not user_id or len(user_id) > 64:
            return _error(web, 400, "user_id", "user_id must be 1..64 characters")
        try:
            st = self.views.get_user_state(user_id)
        except NotLocalError as exc:
            return await self._forward(web, request, exc.partition, None)
        return _json(web, {
            "user_id": user_id,
            "partition": partition_for(user_id, self.settings.partitions),
            "length": len(st.actions),
            "actions": [dataclasses.asdict(a) for a in st.actions],
            "counts_3h": _counts(st.counts_3h),
            "counts_1d": _counts(st.counts_1d),
        })

    async def feedback_loop(self, web, request):
        snap = self.views.get_feedback_snapshot()
        segment = request.query.get("segment")
        segments = {k: _counts(v) for k, v in sorted(snap.segments.items()) if segment in (None, k)}
        if segment is not None and not segments:
            return _error(web, 404, "segment", f"no data for segment {segment!r} in the last 30 minutes",
                          known=sorted(snap.segments)[:50])
        return _json(web, {"window_minutes": self.settings.feedback_window_min, "segments": segments})

    async def calibration(self, web, request):
        record = self.serving.latest_drift() if self.serving else None
        cal = self.serving.calibrator_info() if self.serving else None
        consistency = self.serving.latest_consistency() if self.serving else None
        return _json(web, {"drift": record, "calibrators": cal, "consistency": consistency})

    async def calibration_report(self, web, request):
        """Reliability diagrams of the latest drift record, drawn off the event loop (matplotlib: the plots extra)."""
        record = self.serving.latest_drift() if self.serving else None
        cal = self.serving.calibrator_info() if self.serving else None
        page, status = await asyncio.get_running_loop().run_in_executor(None, render_calibration_report, record, cal)
        return web.html(page, status=status)

    async def metrics(self, web, request):
        await self._update_lag()
        return web.bytes(render(), content_type="text/plain; version=0.0.4")

    async def _update_lag(self) -> None:
        """Consumer lag per assigned input partition: the last fetched high watermark minus the position."""
        from streams.metrics import CONSUMER_LAG

        consumer = getattr(self.views.engine, "consumer", None)
        if consumer is None:
            return
        try:
            for tp in consumer.assignment():
                high = consumer.highwater(tp)
                if high is None:
                    continue
                position = await consumer.position(tp)
                CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - position))
        except Exception as exc:  # lag is informational; a rebalance in progress must not fail the scrape
            log.debug("consumer lag unavailable: %s", exc)

    async def ready(self, web, request):
        engine = self.views.engine
        serving_ok = self.serving is None or self.serving.ready()
        ok = engine.caught_up.is_set() and serving_ok
        body = {"ready": ok, "partitions": sorted(engine.tables), "caught_up": engine.caught_up.is_set(),
                "model_version": self.serving.served_version if self.serving is not None else None}
        return _json(web, body, status=200 if ok else 503)

    async def status_page(self, web, request):
        from streams.serving.status_page import render_status

        return web.html(render_status(self))


_REPORT_LOCK = threading.Lock()  # matplotlib's rc settings are process-wide: one drawing at a time
_REPORT_CACHE: dict[str, Any] = {}  # the last page, by drift record timestamp and calibrator version


def render_calibration_report(record: dict[str, Any] | None, calibrators: Any = None) -> tuple[str, int]:
    """``(html, status)`` of ``GET /calibration/report``: 200 with the diagrams, 404 before the first drift
    record, 503 without matplotlib (the page says what to install)."""
    import html as _html

    from scorer.plots import PlotsUnavailable, html_page

    if not record:
        return html_page("Calibration report", "", "No calibration-drift record yet: the drift monitor publishes one "
                         "a minute once labeled examples arrive.") + "<p><a href='/status'>status</a></p>", 404
    key = f"{record.get('ts')}:{calibrators}"
    with _REPORT_LOCK:
        if _REPORT_CACHE.get("key") == key:
            return _REPORT_CACHE["page"], 200
        from scorer.report import render_html, record_title, windows_from_record

        try:
            page = render_html(windows_from_record(record), record_title(record))
        except PlotsUnavailable as exc:
            return html_page("Calibration report", "", str(exc)), 503
        cal = f"<h3>Calibrators</h3><pre>{_html.escape(str(calibrators))}</pre>" if calibrators else ""
        page = page.replace("</body>", f"{cal}<p><a href='/status'>status</a> · <a href='/calibration'>JSON</a></p>"
                                       "</body>")
        _REPORT_CACHE.update(key=key, page=page)
        return page, 200


def _counts(c) -> dict[str, Any]:
    return {"impressions": c.impressions, "actions": dict(c.actions),
            "rates": {a: (c.actions.get(a, 0) / c.impressions if c.impressions else None) for a in ACTIONS}}


def _client_timeout(seconds: float):
    import aiohttp

    return aiohttp.ClientTimeout(total=seconds)


def install_web(app, settings, views: StreamViews, serving, directory) -> WebApi:
    """Register every route on the Faust app's web server."""
    from faust.web import View

    api = WebApi(app, settings, views, serving, directory)

    @app.page("/score")
    class Score(View):  # pragma: no cover - exercised by broker tests
        async def post(self, request):
            return await _guard(self, api.score, request)

        async def get(self, request):
            return _error(self, 405, "<method>", "use POST with a JSON body")

    @app.page("/users/{user_id}/sequence")
    async def user_sequence(web, request, user_id: str):  # pragma: no cover
        return await _guard(web, api.user_sequence, request, user_id)

    @app.page("/feedback-loop")
    async def feedback_loop(web, request):  # pragma: no cover
        return await _guard(web, api.feedback_loop, request)

    @app.page("/calibration")
    async def calibration(web, request):  # pragma: no cover
        return await _guard(web, api.calibration, request)

    @app.page("/calibration/report")
    async def calibration_report(web, request):  # pragma: no cover
        return await _guard(web, api.calibration_report, request)

    @app.page("/metrics")
    async def metrics(web, request):  # pragma: no cover
        return await api.metrics(web, request)

    @app.page("/ready")
    async def ready(web, request):  # pragma: no cover
        return await api.ready(web, request)

    @app.page("/status")
    async def status(web, request):  # pragma: no cover
        return await _guard(web, api.status_page, request)

    return api


async def _guard(web, handler, request, *args):
    """Run a handler; an unexpected error is logged with context and answered 500 with a reason."""
    try:
        return await handler(web, request, *args)
    except Exception as exc:  # the worker must survive anything a request triggers
        log.exception("%s %s failed", request.method, request.path)
        return web.json({"error": "internal", "message": f"{type(exc).__name__}: {exc}"}, status=500)


__all__ = ["WebApi", "install_web", "json"]
