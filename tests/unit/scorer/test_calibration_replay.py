"""Replay (three-step simulation), labeled-record conversion, reports and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from features.calibration_features import CALIBRATION_FEATURE_NAMES
from features.events import ACTIONS
from scorer import calibration_cli
from scorer.calibration import CalibratorSet, CalibratorStore, LabeledBatch, fit_calibrator_set
from scorer.calibration.records import batch_from_records
from scorer.calibration.synthetic import CalibrationSim, SimConfig
from scorer.drift import AlertConfig, DriftMonitor
from scorer.replay import ReplayLog, artifact_score_fn, format_replay_report, replay
from scorer.report import render_html, render_png, summaries_from_batch, summaries_from_record, write_report

#: trains models or fits calibrators on simulated traffic (seconds to a minute): not in the fast tier
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def logged() -> dict:
    sim = CalibrationSim(SimConfig(seed=3, impressions_per_min=2000))
    sim.run(30)
    steps = sim.run(40)
    batch = LabeledBatch.concat([s.batch for s in steps])
    raw = np.concatenate([s.raw_logits for s in steps])
    served = fit_calibrator_set(batch, "old").calibrate(batch.X)
    batch = LabeledBatch(batch.X, batch.y, batch.mask, batch.ts, dict(batch.extras, served=served))
    return {"batch": batch, "raw": raw}


def _records(batch: LabeledBatch, n: int) -> list[dict]:
    recs = []
    for i in range(n):
        recs.append({
            "example_id": f"e{i}",
            "impression": {"user_id": "u", "request_id": f"r{i // 10}", "item_type": "video" if batch.mask[i, -1] else "organic",
                           "ts": int(batch.ts[i])},
            "labels": {a: int(batch.y[i, t]) for t, a in enumerate(ACTIONS)},
            "prediction": {"model_version": "old", "features": dict(zip(CALIBRATION_FEATURE_NAMES, map(float, batch.X[i]))),
                           "calibrated": {a: float(batch.extras["served"][i, t]) for t, a in enumerate(ACTIONS)}},
        })
    recs.append({"example_id": "x", "impression": {}, "labels": {}, "prediction": None})
    return recs


def test_replay_fits_a_new_models_calibrators_before_it_serves(logged: dict) -> None:
    batch, raw = logged["batch"], logged["raw"]
    # the new model: a different down-sampling rate (scores shifted by +1) and a steeper slope
    new_logits = 1.3 * raw + 1.0
    cs = replay(lambda b: new_logits, batch, model_version="new", holdout_frac=0.25)
    assert cs.model_version == "new" and cs.source == "replay"
    rep = cs.meta["replay"]
    text = format_replay_report(cs)
    print("\n" + text)
    for a in ("click", "closeup", "hide"):
        assert rep["holdout_raw"][a]["calibration_error"] > 3  # the new raw scores are far off
        assert 0.93 <= rep["holdout"][a]["calibration_error"] <= 1.07
        assert rep["holdout"][a]["ece"] <= 0.01
    assert "holdout_served" in rep
    json.dumps(cs.to_dict())


def test_replay_log_round_trip_and_artifact_score_fn(logged: dict, tmp_path) -> None:
    batch = logged["batch"].take(slice(0, 50))
    req = np.repeat(np.arange(5), 10)
    rlog = ReplayLog(batch, {"user_id": np.arange(5)[:, None]}, {"cand_pos": np.tile(np.arange(10), 5)}, req)
    rlog.save(tmp_path / "log.npz")
    back = ReplayLog.load(tmp_path / "log.npz")
    assert back.user["user_id"].shape == (5, 1) and len(back.batch) == 50

    class FakeArtifact:  # scores = user id + position, per task
        def score(self, inputs) -> np.ndarray:
            return np.repeat((inputs.user_id[0] + inputs.cand_pos)[:, None].astype(float), len(ACTIONS), axis=1)

    import features.assembly as asm

    fields = asm.ModelInputs.__dataclass_fields__
    full_user = {k: back.user.get(k, np.zeros((5, 1))) for k in asm.USER_KEYS}
    full_cand = {k: back.cand.get(k, np.zeros(50)) for k in asm.CAND_KEYS}
    assert set(full_user) | set(full_cand) == set(fields)
    out = artifact_score_fn(FakeArtifact(), ReplayLog(back.batch, full_user, full_cand, back.req_index))(back.batch)
    assert out[13, 0] == 1 + 3


def test_records_to_rows(logged: dict) -> None:
    batch = logged["batch"]
    rows, stats = batch_from_records(_records(batch, 30))
    assert stats.rows == 30 and stats.no_prediction == 1 and len(rows) == 30
    np.testing.assert_allclose(rows.X, batch.X[:30])
    assert (rows.mask == batch.mask[:30]).all() and (rows.y == batch.y[:30]).all()
    assert len(np.unique(rows.extras["request"])) == 3


def test_reports_from_rows_and_from_a_drift_record(logged: dict, tmp_path) -> None:
    batch = logged["batch"]
    summ = summaries_from_batch(batch, batch.extras["served"])
    html = render_html(summ)
    assert html.count("<svg") == 1 and all(a in html for a in ACTIONS) and "calibration error" in html
    png = render_png(summ)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    mon = DriftMonitor(alert=AlertConfig(window="1h"))
    mon.observe(batch.ts, batch.extras["served"], batch.y, batch.mask)
    rec = json.loads(json.dumps(mon.record()))
    assert summaries_from_record(rec)["click"]["n"] == int(batch.mask[:, 0].sum())
    write_report(tmp_path / "r.png", summaries_from_record(rec, "5m"))
    assert (tmp_path / "r.png").stat().st_size > 100


def test_cli_fit_report_and_tune(logged: dict, tmp_path, capsys, monkeypatch) -> None:
    batch = logged["batch"]
    jsonl = tmp_path / "labeled.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in _records(batch, 3000)))
    monkeypatch.setenv("FEEDRANK_CALIBRATOR_DIR", str(tmp_path / "cal"))
    assert calibration_cli.main(["calibration", "fit", "--input", str(jsonl), "--model-version", "old"]) == 0
    cs = CalibratorStore(tmp_path / "cal").load("old")
    assert isinstance(cs, CalibratorSet)
    out = tmp_path / "rep.html"
    assert calibration_cli.main(["calibration", "report", "--input", str(jsonl), "--out", str(out),
                                 "--calibrators", str(tmp_path / "cal" / "old" / "calibrators.json")]) == 0
    assert out.read_text().count("<svg") == 1 and all(a in out.read_text() for a in ACTIONS)
    drift = tmp_path / "drift.jsonl"
    mon = DriftMonitor()
    mon.observe(batch.ts, batch.extras["served"], batch.y, batch.mask)
    drift.write_text(json.dumps(mon.record()) + "\n")
    assert calibration_cli.main(["calibration", "report", "--input", str(drift), "--out", str(tmp_path / "d.png")]) == 0
    tune_out = tmp_path / "tune.json"
    assert calibration_cli.main(["tune-blend", "--input", str(jsonl), "--samples", "20", "--out", str(tune_out),
                                 "--learn", str(tmp_path / "blend_model.json")]) == 0
    assert json.loads(tune_out.read_text())["evaluated"] == 21
    assert "objective" in capsys.readouterr().out


def test_cli_help_names_env_vars(capsys) -> None:
    with pytest.raises(SystemExit):
        calibration_cli.main(["tune-blend", "--help"])
    assert "FEEDRANK_TUNE_HIDE_CAP" in capsys.readouterr().out


def test_replay_cli_with_real_artifacts(tmp_path, capsys) -> None:
    """calibration log (world served by model A) -> replay --model B -> calibrators for B in the store."""
    import torch

    from features.assembly import FeatureSpec
    from scorer.artifact import save_artifact
    from scorer.model import ModelConfig, build_model

    spec = FeatureSpec(user_buckets=101, item_buckets=211, ctx_buckets=53, seq_len=6)
    cfg = ModelConfig(expert_dims=[16, 8], tower_hidden=8, summary_dim=16, item_dim=8, seq_ffn=16, n_experts=3)
    for name, seed in (("A", 1), ("B", 2)):
        save_artifact(tmp_path / "models", build_model(spec, cfg, seed=seed).eval(), spec, cfg, {"seed": seed}, {}, {},
                      version=f"model-{name}", set_latest=False)
    rlog_path = tmp_path / "log.npz"
    threads = torch.get_num_threads()
    try:
        assert calibration_cli.main(["calibration", "log", "--model", str(tmp_path / "models" / "model-A"),
                                     "--out", str(rlog_path), "--hours", "0.25", "--requests-per-s", "0.5",
                                     "--users", "50", "--items", "300", "--threads", "1"]) == 0
        assert calibration_cli.main(["replay", "--model", str(tmp_path / "models" / "model-B"), "--log", str(rlog_path),
                                     "--out", str(tmp_path / "cal"), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    cs = CalibratorStore(tmp_path / "cal").load("model-B")
    assert cs is not None and cs.source == "replay" and cs.meta["replay"]["rows"] > 1000
    assert "replay of model model-B" in capsys.readouterr().out
    # the live-shaped log: cold-start episodes served by B's calibrators, then B's calibrators refit on it
    assert calibration_cli.main(["calibration", "log", "--model", str(tmp_path / "models" / "model-B"),
                                 "--out", str(tmp_path / "live.npz"), "--episodes", "2", "--hours", "0.1",
                                 "--users", "50", "--items", "300", "--threads", "1"]) == 2  # needs calibrators
    assert calibration_cli.main(["calibration", "log", "--model", str(tmp_path / "models" / "model-B"),
                                 "--out", str(tmp_path / "live.npz"), "--episodes", "0"]) == 2
    try:
        assert calibration_cli.main(["calibration", "log", "--model", str(tmp_path / "models" / "model-B"),
                                     "--calibrators", str(tmp_path / "cal"), "--out", str(tmp_path / "live.npz"),
                                     "--episodes", "2", "--hours", "0.1", "--requests-per-s", "2",
                                     "--background-rate", "20", "--users", "50", "--items", "300",
                                     "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    live = ReplayLog.load(tmp_path / "live.npz")
    from features.world import DEFAULT_START_MS, HOUR_MS

    second = live.batch.ts >= DEFAULT_START_MS + 12 * HOUR_MS  # the second episode starts half a day later
    assert 0 < second.sum() < len(second) and live.batch.ts.max() < DEFAULT_START_MS + 12.2 * HOUR_MS
    assert not (live.batch.ts[~second] >= DEFAULT_START_MS + 0.11 * HOUR_MS).any()
    # each episode starts from empty tables: its first request sees no impressions of its user that day (with
    # the tables shared, the first episode had shown every one of the 50 users items 12 hours before)
    impressions = live.batch.X[:, CALIBRATION_FEATURE_NAMES.index("user_1d:log_impressions")]
    first_of_second = int(np.argmax(second))
    assert impressions[0] == 0 and impressions[first_of_second] == 0 and impressions.max() > 0
    assert live.req_index[first_of_second] == live.req_index[first_of_second - 1] + 1  # requests renumbered
    assert (np.diff(live.req_index) >= 0).all()
    # served by B's calibrators throughout (not bootstrapped: no identity phase, no refit)
    served = live.batch.extras["served"]
    ok = ~np.isnan(served) & live.batch.mask  # a task that does not apply (a video view of a pin) logs 0
    np.testing.assert_allclose(served[ok], CalibratorStore(tmp_path / "cal").load("model-B").calibrate(live.batch.X)[ok],
                               rtol=1e-4, atol=1e-6)
    assert calibration_cli.main(["replay", "--model", str(tmp_path / "models" / "model-B"),
                                 "--log", str(tmp_path / "live.npz"), "--out", str(tmp_path / "cal")]) == 0
    assert CalibratorStore(tmp_path / "cal").load("model-B").meta["replay"]["rows"] == len(live.batch)
    capsys.readouterr()
    # the offline twin of a live loop's first minutes, served by those calibrators
    assert calibration_cli.main(["calibration", "twin", "--model", str(tmp_path / "models" / "model-B"),
                                 "--calibrators", str(tmp_path / "cal"), "--episodes", "2", "--minutes", "2",
                                 "--window-s", "100", "--requests-per-s", "2", "--users", "50", "--items", "300"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert "2 cold starts at 2 requests/s" in out and len(table) == 2 + 2 + 1, out
    assert table[2].startswith("| 02:00 |") and table[3].startswith("| 14:00 |") and table[4].startswith("| pooled |")
    assert calibration_cli.main(["calibration", "twin", "--model", str(tmp_path / "models" / "model-B")]) == 2
