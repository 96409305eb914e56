"""The demo's first-run pieces (issue 27): true summary lines, clean state, resumable set-up, progress lines."""

from __future__ import annotations

import io
from pathlib import Path

from scorer.progress import Progress
from streams.metrics import Scrape, parse_text
from streams.settings import Settings
from streams.tools.demo import Demo

CAL = {"drift": None}
ALL_STEPS = ("train", "calibration-log", "replay", "calibration-log-live", "replay-live")


def test_no_ranking_figure_before_a_request_is_scored_and_the_rate_is_measured() -> None:
    sim = {"requests": 40, "scored": 0, "failed": 0, "unavailable": 40, "gain_captured": 0.23}
    line = Demo.summary_line(12, 1000, 400, 0.04, sim, CAL, req_rate=4.5)
    assert "gain - (nothing scored yet)" in line and "0.23" not in line
    assert " req 0 ok 4.5/s (40 answered 503" in line and "failed" not in line
    # the 503s before the model are not failures once requests are scored
    sim = {"requests": 80, "scored": 30, "failed": 2, "unavailable": 48, "gain_captured": 0.31, "score_p50_ms": 8.0,
           "score_p99_ms": 21.0}
    line = Demo.summary_line(30, 5000, 400, 0.04, sim, CAL, req_rate=4.4)
    assert " req 30 ok 4.4/s (2 failed)" in line and "gain 0.31" in line
    sim["gain_interval"] = [0.27, 0.35]  # the whole run's 95 % interval rides along as ± its half-width
    assert "gain 0.31±0.04 " in Demo.summary_line(30, 5000, 400, 0.04, sim, CAL, req_rate=4.4)


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
    assert "the set-up's train shares the" in Demo.freshness_reason(Scrape(), prev, 2.4, setup="train")


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
    assert [n for n, _ in steps] == ["calibration-log", "replay", "calibration-log-live", "replay-live"]


def test_the_start_calibrators_are_refit_on_cold_start_episodes_at_the_loops_rate(tmp_path: Path) -> None:
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", model_dir=tmp_path / "models",
                        calibrator_dir=tmp_path / "calibrators")
    steps = dict(Demo(settings, 7, 300, 60, run_dir=tmp_path / "demo").setup_steps())
    live = steps["calibration-log-live"]
    # served by the calibrators the replay step writes, at the simulator's rate, from empty tables
    assert live[live.index("--calibrators") + 1] == str(tmp_path / "calibrators")
    assert live[live.index("--requests-per-s") + 1] == "7" and live[live.index("--explore-frac") + 1] == "0"
    assert int(live[live.index("--episodes") + 1]) > 1
    assert float(live[live.index("--background-rate") + 1]) == 300
    replay_live = steps["replay-live"]
    assert replay_live[replay_live.index("--log") + 1] == live[live.index("--out") + 1]
    assert replay_live[replay_live.index("--out") + 1] == str(tmp_path / "calibrators")


def test_the_first_run_trains_on_every_hour_of_the_clock(tmp_path: Path) -> None:
    # a live loop may start at any hour: a model that never saw the evening mis-read video views there
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", model_dir=tmp_path / "models",
                        calibrator_dir=tmp_path / "calibrators")
    train = dict(Demo(settings, 7, 300, 60, run_dir=tmp_path / "demo").setup_steps())["train"]
    assert float(train[train.index("--train-hours") + 1]) >= 24


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
    for step in ALL_STEPS:
        (run / "setup" / f"{step}.done").touch()  # marked done, but no model was left behind
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", model_dir=tmp_path / "models",
                        calibrator_dir=tmp_path / "calibrators")
    steps = Demo(settings, 10, 0, 60, run_dir=run).setup_steps()
    assert [n for n, _ in steps] == list(ALL_STEPS)


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


def test_a_task_still_gathering_labels_is_marked_in_the_summary_and_on_the_status_page() -> None:
    """Issue 28: the summary and /status say which tasks have too few positives for their figure to mean much."""
    from types import SimpleNamespace

    import numpy as np

    from features.events import ACTIONS
    from features.state import Counts, FeedbackSnapshot
    from scorer.drift import AlertConfig, DriftMonitor
    from streams.serving.status_page import render_status

    mon = DriftMonitor(alert=AlertConfig(min_positives=200))
    n, t0 = 20_000, 1_700_000_000_000
    p = np.full((n, len(ACTIONS)), 0.02)  # 400 predicted per task
    y = np.zeros_like(p)
    y[:400, ACTIONS.index("click")] = 1  # click: 400 positives, calibrated
    y[:60, ACTIONS.index("hide")] = 1  # hide: 60 positives, 6.7x over-predicted: alerts while gathering
    y[:380, [i for i, a in enumerate(ACTIONS) if a not in ("click", "hide")]] = 1
    mon.observe(np.full(n, t0), p, y)
    drift = mon.record(t0)
    line = Demo.summary_line(300, 1000, 400, 0.04, {"scored": 0}, {"drift": drift})
    assert "click=1.00 " in line and "hide=6.67?" in line and "alerts=hide" in line, line
    serving = SimpleNamespace(served_version="m1", calibrator_info=lambda: {}, latest_drift=lambda: drift)
    views = SimpleNamespace(engine=SimpleNamespace(tables={0: None}, processed=10, dead_lettered=0),
                            get_feedback_snapshot=lambda: FeedbackSnapshot({"all": Counts(10, {"click": 1})}))
    page = render_status(SimpleNamespace(views=views, serving=serving,
                                         settings=SimpleNamespace(url="http://127.0.0.1:1", feedback_window_min=30)))
    assert "over (gathering labels: 60 of 200 positives)" in page
    assert "<td>click</td><td>1.0000</td><td>0.8" in page  # ratio, then the interval from ~0.8


def test_the_final_report_prints_figures_not_python_reprs() -> None:
    text = Demo.freshness_text({"p50": 40374.45361328125, "p99": 60962.930908203125})
    assert text.endswith("p50 40.4 s, p99 61.0 s") and "{" not in text
    assert Demo.freshness_text({"p50": 12.3, "p99": 95.0}).endswith("p50 12 ms, p99 95 ms")
    assert Demo.freshness_text({}) == ""
    none = Demo.calibrators_text({"model": None, "error": "no model under var/models: run `feedrank train`"})
    assert none == "none (no model under var/models: run `feedrank train`)"
    some = Demo.calibrators_text({"model_version": "m1", "version": 8, "source": "online", "trained_examples": 12000,
                                  "watermark_ms": 5})
    assert some == "version 8 of model m1 (online, trained on 12,000 examples)"


def test_a_stale_cached_model_is_retrained(tmp_path: Path) -> None:
    import json

    from scorer.artifact import CARD_FORMAT

    models = tmp_path / "models"
    (models / "v-old").mkdir(parents=True)
    (models / "v-old" / "card.json").write_text(json.dumps({"format": "feedrank-model/1", "version": "v-old"}))
    (models / "latest").write_text("v-old\n")
    run = tmp_path / "demo"
    (run / "setup").mkdir(parents=True)
    for n in ALL_STEPS:
        (run / "setup" / f"{n}.done").touch()
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", model_dir=models, calibrator_dir=tmp_path / "cal")
    demo = Demo(settings, 10, 0, 60, run_dir=run)
    steps = demo.setup_steps()  # the old model would be refused by the worker: every step again
    assert [n for n, _ in steps] == list(ALL_STEPS)
    assert not (models / "latest").exists() and not (run / "setup" / "train.done").exists()
    # a current cached model is kept
    (models / "v-new").mkdir()
    (models / "v-new" / "card.json").write_text(json.dumps({"format": CARD_FORMAT, "version": "v-new"}))
    (models / "latest").write_text("v-new\n")
    assert demo.setup_steps() == []
