"""``GET /calibration/report`` (reliability diagrams of the latest drift record) and its link on ``/status``."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import numpy as np
import pytest

from features.events import ACTIONS
from scorer.drift import DriftMonitor
from streams.serving.status_page import render_status
from streams.serving.web import WebApi, render_calibration_report

pytest.importorskip("matplotlib", reason="matplotlib is in the plots and test extras")


def _record() -> dict:
    rng = np.random.default_rng(2)
    n = 3000
    ts = 1_700_000_000_000 + np.sort(rng.integers(0, 20 * 60_000, n))
    p = rng.uniform(0.0, 0.4, size=(n, len(ACTIONS)))
    mon = DriftMonitor(model_version="m-page")
    mon.observe(ts, p, (rng.uniform(size=p.shape) < p).astype(float))
    return json.loads(json.dumps(mon.record()))


class _Web:
    def html(self, value: str, status: int = 200) -> tuple[str, int]:
        return value, status


def _api(record: dict | None) -> WebApi:
    serving = SimpleNamespace(latest_drift=lambda: record, calibrator_info=lambda: {"version": 4},
                              served_version="m-page")
    views = SimpleNamespace(engine=SimpleNamespace(tables={0: None}, processed=10, dead_lettered=0),
                            get_feedback_snapshot=lambda: SimpleNamespace(segments={}))
    settings = SimpleNamespace(url="http://localhost:0", feedback_window_min=30)
    return WebApi(None, settings, views, serving, None)


def test_report_page_draws_the_latest_record_and_status_links_it() -> None:
    record = _record()
    api = _api(record)
    page, status = asyncio.run(api.calibration_report(_Web(), None))
    assert status == 200 and page.count("<svg") == 1
    assert all(a in page for a in ACTIONS) and "observed rate" in page and "m-page" in page
    assert "[5m]" in page and "[1h]" in page and "href='/status'" in page
    assert render_calibration_report(record, {"version": 4})[0] is page  # cached until the record changes
    assert "href='/calibration/report'" in render_status(api)


def test_report_page_before_the_first_record() -> None:
    page, status = asyncio.run(_api(None).calibration_report(_Web(), None))
    assert status == 404 and "No calibration-drift record yet" in page
