"""Calibrator units: fit, FTRL, serialization, persistence and the atomic hot swap."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import numpy as np
import pytest

from features.calibration_features import N_CALIBRATION_FEATURES, SHARED_OFFSET, TASK_BLOCK_WIDTH
from features.events import ACTIONS
from scorer.calibration import (
    CalibratorHolder,
    CalibratorSet,
    CalibratorStateError,
    CalibratorStore,
    FtrlCalibrator,
    FtrlConfig,
    IncompatibleCalibratorError,
    LabeledBatch,
    LogisticCalibrator,
    OnlineCalibration,
    fit_calibrator_set,
)
from features.numeric import sigmoid

T = len(ACTIONS)


def _synthetic(n: int, seed: int = 0, keep: float = 0.1) -> tuple[LabeledBatch, np.ndarray]:
    """Rows whose raw logits are the true logits plus log(1/keep) (negatives down-sampled)."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, N_CALIBRATION_FEATURES), dtype=np.float32)
    X[:, SHARED_OFFSET:SHARED_OFFSET + 10] = rng.integers(0, 2, (n, 10))
    true_logit = rng.normal(-2.5, 1.0, (n, T)) + 0.3 * X[:, SHARED_OFFSET:SHARED_OFFSET + 1]
    raw = true_logit - 0.3 * X[:, SHARED_OFFSET:SHARED_OFFSET + 1] + np.log(1 / keep)
    for t in range(T):
        X[:, t * TASK_BLOCK_WIDTH] = raw[:, t]
    y = (rng.random((n, T)) < sigmoid(true_logit)).astype(np.int8)
    ts = 1_700_000_000_000 + np.arange(n, dtype=np.int64)
    return LabeledBatch(X, y, np.ones((n, T), dtype=bool), ts), true_logit


def test_identity_passes_raw_scores_through() -> None:
    batch, _ = _synthetic(100)
    P = CalibratorSet.identity("m").calibrate(batch.X)
    for t in range(T):
        np.testing.assert_allclose(P[:, t], sigmoid(batch.X[:, t * TASK_BLOCK_WIDTH]), rtol=1e-6)


def test_fit_learns_the_prior_correction_in_the_intercept() -> None:
    batch, true_logit = _synthetic(40_000)
    cs = fit_calibrator_set(batch, "m")
    for a in ACTIONS:
        ru = cs.calibrators[a].raw_units()
        assert ru[f"logit:{a}"] == pytest.approx(1.0, abs=0.1)
        assert ru["intercept"] == pytest.approx(np.log(0.1), abs=0.3)  # log(keep rate)
    P = cs.calibrate(batch.X)
    assert P.sum() / sigmoid(true_logit).sum() == pytest.approx(1.0, abs=0.02)


def test_set_round_trips_through_json_bytes() -> None:
    batch, _ = _synthetic(5000)
    cs = fit_calibrator_set(batch, "m-7", version=3)
    back = CalibratorSet.from_bytes(cs.to_bytes())
    assert (back.model_version, back.version, back.source) == ("m-7", 3, "offline-fit")
    np.testing.assert_allclose(back.calibrate(batch.X), cs.calibrate(batch.X))
    d = json.loads(cs.to_bytes())
    d["feature_layout"] = "0000"
    with pytest.raises(IncompatibleCalibratorError, match="refit"):
        CalibratorSet.from_dict(d)
    with pytest.raises(CalibratorStateError):
        CalibratorSet.from_bytes(b"\xff not json")
    with pytest.raises(IncompatibleCalibratorError):
        cs.calibrate(np.zeros((2, 5), dtype=np.float32))


def test_ftrl_warm_start_keeps_weights_and_learns_a_shift() -> None:
    batch, _ = _synthetic(20_000)
    cs = fit_calibrator_set(batch, "m")
    f = FtrlCalibrator(cs.calibrators["click"], FtrlConfig())
    np.testing.assert_allclose(f.snapshot().weights, cs.calibrators["click"].weights, atol=1e-12)
    # the world doubles its click odds: labels drawn from sigmoid(calibrated logit + log 2)
    rng = np.random.default_rng(1)
    base = cs.calibrators["click"].logit(batch.X)
    y = (rng.random(len(base)) < sigmoid(base + np.log(2))).astype(float)
    before = f.snapshot().predict(batch.X).sum() / y.sum()
    for _ in range(3):
        f.update(batch.X, y)
    after = f.snapshot().predict(batch.X).sum() / y.sum()
    assert before < 0.7 and 0.9 < after < 1.1


def test_online_state_resumes_after_restart(tmp_path) -> None:
    batch, _ = _synthetic(6000)
    cs = fit_calibrator_set(batch, "m")
    first, second = batch.take(slice(0, 3000)), batch.take(slice(3000, 6000))
    a = OnlineCalibration(cs)
    a.update_batch(first)
    store = CalibratorStore(tmp_path)
    store.save(a.snapshot())  # snapshot, then persist the online state that produced it
    store.save_online("m", a.to_bytes())
    # "restart": a fresh process reads both back
    served = store.load("m")
    assert served is not None and served.version == 2 and served.source == "online"
    b = OnlineCalibration.resume_or_start(store.load_online("m"), served)
    assert b.examples == 3000 and b.watermark_ms == a.watermark_ms and b.version == a.version
    a.update_batch(second)
    b.update_batch(second)
    np.testing.assert_allclose(a.snapshot().calibrate(batch.X), b.snapshot().calibrate(batch.X), rtol=1e-9)
    # state of another model is not resumed
    other = OnlineCalibration.resume_or_start(store.load_online("m"), replace(cs, model_version="m2"))
    assert other.examples == 0 and other.model_version == "m2"
    with pytest.raises(CalibratorStateError):
        store.load("../etc")


def test_swap_rules() -> None:
    cs = CalibratorSet.identity("m1")
    holder = CalibratorHolder(cs)
    v2 = cs.next_version(source="online")
    assert holder.swap(v2) is cs and holder.current is v2
    with pytest.raises(IncompatibleCalibratorError, match="roll"):
        holder.swap(cs)
    with pytest.raises(IncompatibleCalibratorError, match="together"):
        holder.swap(CalibratorSet.identity("m2"))
    holder.swap(CalibratorSet.identity("m2"), allow_model_change=True)
    assert holder.current.model_version == "m2"


def test_scoring_continues_across_concurrent_swaps() -> None:
    """A scoring thread runs while another thread swaps calibrator sets 200 times."""
    batch, _ = _synthetic(500)
    sets = [fit_calibrator_set(batch, "m", version=1)]
    for i in range(2, 5):
        shifted = {a: LogisticCalibrator(c.task, c.weights, c.bias + 0.1 * i, c.center, c.scale) for a, c in sets[0].calibrators.items()}
        sets.append(replace(sets[0], calibrators=shifted, version=i))
    expected = {s.version: s.calibrate(batch.X) for s in sets}
    holder = CalibratorHolder(sets[0])
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: set[int] = set()
    scored = 0

    def score() -> None:
        nonlocal scored
        try:
            while not stop.is_set():
                cur = holder.current  # one consistent set per request
                out = cur.calibrate(batch.X)
                np.testing.assert_allclose(out, expected[cur.version])
                seen.add(cur.version)
                scored += 1
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    th = threading.Thread(target=score)
    th.start()
    version = 1
    for i in range(200):
        nxt = sets[(i + 1) % len(sets)]
        version += 1
        holder.swap(replace(nxt, version=version))
        expected[version] = expected[nxt.version]
        if i % 20 == 0:
            threading.Event().wait(0.002)
    stop.set()
    th.join(timeout=30)
    assert not errors, errors[0]
    assert scored > 0 and holder.swaps == 200 and len(seen) >= 2


def test_seen_ids_drops_repeats_within_its_window_and_stays_bounded():
    from streams.engine.calibration_loop import SeenIds

    seen = SeenIds(capacity=3)
    assert [seen.add(k) for k in ("a", "b", "a", "c", "d")] == [True, True, False, True, True]
    assert len(seen) == 3  # "a" forgotten first
    assert seen.add("a") is True and seen.add("d") is False
    assert len(seen) == 3
