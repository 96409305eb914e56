"""The demo's first-run pieces (issue 27): true summary lines, clean state, resumable set-up, progress lines."""

from __future__ import annotations

import io
from pathlib import Path

from scorer.progress import Progress
from streams.metrics import Scrape, parse_text
from streams.settings import Settings
from streams.tools.demo import Demo

CAL = {"drift": None}


def test_no_ranking_figure_before_a_request_is_scored_and_the_rate_is_measured() -> None:
    sim = {"requests": 40, "scored": 0, "failed": 40, "gain_captured": 0.23}
    line = Demo.summary_line(12, 1000, 400, 0.04, sim, CAL, req_rate=4.5)
    assert "gain - (nothing scored yet)" in line and "0.23" not in line
    assert " req 0 ok 4.5/s (40 answered 503" in line
    sim = {"requests": 80, "scored": 30, "failed": 50, "gain_captured": 0.31, "score_p50_ms": 8.0,
           "score_p99_ms": 21.0}
    line = Demo.summary_line(30, 5000, 400, 0.04, sim, CAL, req_rate=4.4)
    assert " req 30 ok 4.4/s (50 failed)" in line and "gain 0.31" in line


def test_degraded_freshness_says_why() -> None:
    m = parse_text('# TYPE feedrank_consumer_lag gauge\n'
                   'feedrank_consumer_lag{topic="impressions",partition="0"} 3000.0\n'
                   'feedrank_consumer_lag{topic="impressions",partition="1"} 2000.0\n')
    prev = parse_text("# TYPE feedrank_events_valid counter\nfeedrank_events_valid_total 100.0\n")
    assert Demo.freshness_reason(m, prev, 0.04) == ""
    why = Demo.freshness_reason(m, prev, 5.0)
    assert "backlog 5,000 events behind" in why
    assert Demo.freshness_reason(Scrape(), prev, 5.0)  # never silent when degraded
    assert Demo.freshness_reason(m, Scrape(), 5.0).startswith("start-up backlog")  # the first events the worker saw


def test_each_run_starts_clean_but_keeps_the_set_up(tmp_path: Path) -> None:
    run = tmp_path / "demo"
    (run / "data" / "t0").mkdir(parents=True)
    (run / "worker.log").write_text("old")
    (run / "setup").mkdir()
    (run / "setup" / "train.done").touch()
    (run / "setup" / "models").mkdir()
    (run / "setup" / "models" / "latest").write_text("v1")
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", model_dir=tmp_path / "models",
                        calibrator_dir=tmp_path / "calibrators")
    demo = Demo(settings, 10, 0, 60, run_dir=run)
    demo.clean_state()
    assert sorted(p.name for p in run.iterdir()) == ["setup"]
    steps = demo.setup_steps()  # train was done by the earlier run: resumed after it
    assert [n for n, _ in steps] == ["calibration-log", "replay"]


def test_progress_lines_give_percent_and_eta() -> None:
    out = io.StringIO()
    p = Progress("train", 200, "steps", every_s=0, stream=out)
    p.t0 -= 10  # 10 s in
    p.update(50)
    p.update(200)
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[train]  25% (50/200 steps) 10s elapsed, ETA 30s"), lines
    assert "100%" in lines[-1] and "ETA 0s" in lines[-1]


def test_a_set_up_step_whose_output_is_gone_is_redone(tmp_path: Path) -> None:
    run = tmp_path / "demo"
    (run / "setup").mkdir(parents=True)
    for step in ("train", "calibration-log", "replay"):
        (run / "setup" / f"{step}.done").touch()  # marked done, but no model was left behind
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", model_dir=tmp_path / "models",
                        calibrator_dir=tmp_path / "calibrators")
    steps = Demo(settings, 10, 0, 60, run_dir=run).setup_steps()
    assert [n for n, _ in steps] == ["train", "calibration-log", "replay"]


def test_produce_failures_are_summed_up_not_logged_one_by_one() -> None:
    import logging

    from streams.kafka.producer import CollapseProduceFailures

    f = CollapseProduceFailures(every_s=3600)

    def rec(i: int) -> logging.LogRecord:
        return logging.LogRecord("kafka.producer.producer_batch", logging.WARNING, "x", 1,
                                 "Failed to produce messages to topic-partition %s with base offset %s: %s",
                                 (f"tp{i}", None, "KafkaTimeoutError"), None)

    assert f.filter(rec(0))  # the first one passes as it is
    assert not any(f.filter(rec(i)) for i in range(1, 1000))
    f.every_s = 0
    last = rec(1000)
    assert f.filter(last) and last.getMessage().startswith("1000 more records failed to produce")
    other = logging.LogRecord("kafka.producer.producer_batch", logging.WARNING, "x", 1, "something else", (), None)
    assert f.filter(other)


def test_status_page_shows_the_served_model_and_calibrators_as_tables() -> None:
    from types import SimpleNamespace

    from features.state import Counts, FeedbackSnapshot
    from streams.serving.status_page import render_status

    cal = {"model_version": "m1", "version": 3, "source": "online", "trained_examples": 1200, "watermark_ms": 5}
    serving = SimpleNamespace(served_version="m1", calibrator_info=lambda: cal, latest_drift=lambda: None)
    views = SimpleNamespace(engine=SimpleNamespace(tables={0: None}, processed=10, dead_lettered=0),
                            get_feedback_snapshot=lambda: FeedbackSnapshot({"all": Counts(10, {"click": 1})}))
    api = SimpleNamespace(views=views, serving=serving,
                          settings=SimpleNamespace(url="http://127.0.0.1:1", feedback_window_min=30))
    page = render_status(api)
    assert "{&#x27;" not in page and "{'" not in page  # no Python dict repr
    assert "<td>m1</td><td>3</td><td>online</td><td>1200</td>" in page
    serving.served_version, serving.calibrator_info = None, lambda: {"model": None, "error": "no model under x"}
    page = render_status(api)
    assert "none yet: /score answers 503" in page and "no model under x" in page
