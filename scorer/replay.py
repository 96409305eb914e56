"""Replay: fit a new model's calibrators on logged calibration data before it serves.

The home feed post's three-step simulation:

1. re-score the logged calibration rows (what serving showed, with labels) with
   the NEW model, replacing the logit columns of their calibration features;
2. fit the new model's calibrators on the earlier part of the log;
3. evaluate on the later, held-out part: the new model's calibrated
   probabilities against the labels, beside what the serving model's
   calibrators predicted for the same rows (``extras["served"]`` when logged).

The calibrator set that ships is then refit on the whole log and carries the
held-out report in ``meta["replay"]``. ``replay`` takes any ``score_fn`` (rows in,
raw logits ``[N, T]`` out), so it is tested without a model; ``artifact_score_fn``
wires a model artifact (``scorer.artifact``) over a ``ReplayLog`` that keeps
each logged request's model inputs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from features.numeric import sigmoid

from features.calibration_features import TASK_BLOCK_WIDTH, set_logits
from features.events import ACTIONS

from . import metrics as m
from .calibration import CalibratorSet, LabeledBatch, fit_calibrator_set
from .calibration.errors import CalibratorStateError

log = logging.getLogger(__name__)

ScoreFn = Callable[[LabeledBatch], np.ndarray]


def _task_report(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    return {"n": int(len(y)), "positives": int(y.sum()), "calibration_error": m.calibration_error(p, y),
            "ece": m.expected_calibration_error(p, y), "log_loss": m.log_loss(p, y), "auc": m.auc(p, y)}


def evaluate_set(cs: CalibratorSet, batch: LabeledBatch) -> dict[str, dict[str, Any]]:
    """Held-out metrics per task of ``cs`` on ``batch`` (rows where the task applies)."""
    P = cs.calibrate(batch.X)
    return {a: _task_report(P[batch.mask[:, t], t], batch.y[batch.mask[:, t], t].astype(np.float64))
            for t, a in enumerate(ACTIONS)}


def replay(score_fn: ScoreFn, logged: LabeledBatch, model_version: str = "replayed", holdout_frac: float = 0.25,
           l2: float = 1e-3, min_positives: int = 20, version: int = 1) -> CalibratorSet:
    """Re-score ``logged`` with the new model, fit and check its calibrators; returns the set to ship."""
    if len(logged) == 0:
        raise CalibratorStateError("replay needs logged calibration rows; none were given")
    logits = np.asarray(score_fn(logged), dtype=np.float64)
    rescored = logged.with_X(set_logits(logged.X.copy(), logits))
    train, held = rescored.split_by_time(1.0 - holdout_frac)
    report: dict[str, Any] = {"rows": len(logged), "train_rows": len(train), "holdout_rows": len(held)}
    if len(held) and len(train):
        trial = fit_calibrator_set(train, model_version, l2=l2, min_positives=min_positives)
        report["holdout"] = evaluate_set(trial, held)
        raw = {}
        for t, a in enumerate(ACTIONS):
            rows = held.mask[:, t]
            raw[a] = _task_report(sigmoid(held.X[rows, t * TASK_BLOCK_WIDTH]), held.y[rows, t].astype(np.float64))
        report["holdout_raw"] = raw
        if "served" in held.extras:
            served = held.extras["served"]
            report["holdout_served"] = {a: _task_report(served[held.mask[:, t], t], held.y[held.mask[:, t], t].astype(np.float64))
                                        for t, a in enumerate(ACTIONS)}
    final = fit_calibrator_set(rescored, model_version, l2=l2, min_positives=min_positives, version=version, source="replay")
    meta = dict(final.meta)
    meta["replay"] = report
    log.info("replay fit calibrators for model %s on %d logged rows", model_version, len(logged))
    return CalibratorSet(final.model_version, final.calibrators, version=final.version, source="replay",
                         trained_examples=final.trained_examples, watermark_ms=final.watermark_ms, meta=meta)


def format_replay_report(cs: CalibratorSet) -> str:
    """Text table of the held-out step: raw vs new calibrated (vs served when logged)."""
    rep = cs.meta.get("replay", {})
    lines = [f"replay of model {cs.model_version}: {rep.get('rows', 0)} logged rows, "
             f"fit on {rep.get('train_rows', 0)}, held out {rep.get('holdout_rows', 0)}",
             f"{'task':15s} {'positives':>9s} {'raw CE':>8s} {'new CE':>8s} {'new ECE':>8s} {'new LL':>8s} {'served CE':>10s}"]
    fmt = lambda v, w=8: f"{v:{w}.3f}" if isinstance(v, (int, float)) else f"{'-':>{w}s}"  # noqa: E731
    for a in ACTIONS:
        h = rep.get("holdout", {}).get(a, {})
        r = rep.get("holdout_raw", {}).get(a, {})
        s = rep.get("holdout_served", {}).get(a, {})
        lines.append(f"{a:15s} {h.get('positives', 0):9d} {fmt(r.get('calibration_error'))} {fmt(h.get('calibration_error'))} "
                     f"{fmt(h.get('ece'))} {fmt(h.get('log_loss'))} {fmt(s.get('calibration_error'), 10)}")
    return "\n".join(lines)


@dataclass(frozen=True)
class ReplayLog:
    """Logged calibration rows plus the model inputs of each logged request, so a new model can re-score them.

    ``user[k]`` is ``[Q, ...]`` per request, ``cand[k]`` is ``[N, ...]`` per row and
    ``req_index`` ``[N]`` maps a row to its request (rows of a request are contiguous).
    """

    batch: LabeledBatch
    user: dict[str, np.ndarray]
    cand: dict[str, np.ndarray]
    req_index: np.ndarray

    def save(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        extras = {f"user__{k}": v for k, v in self.user.items()}
        extras.update({f"cand__{k}": v for k, v in self.cand.items()})
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, X=self.batch.X, y=self.batch.y, mask=self.batch.mask, ts=self.batch.ts,
                            req_index=self.req_index, actions=np.asarray(ACTIONS),
                            **{f"extra__{k}": v for k, v in self.batch.extras.items()}, **extras)
        os.replace(tmp, path)

    @staticmethod
    def concat(logs: "list[ReplayLog]") -> "ReplayLog":
        """One log of ``logs`` in order (request indices renumbered so each log's follow the last's)."""
        if not logs:
            raise ValueError("no replay logs to concatenate")
        offsets = np.cumsum([0] + [len(rl.user["user_id"]) for rl in logs[:-1]])
        return ReplayLog(LabeledBatch.concat([rl.batch for rl in logs]),
                         {k: np.concatenate([rl.user[k] for rl in logs]) for k in logs[0].user},
                         {k: np.concatenate([rl.cand[k] for rl in logs]) for k in logs[0].cand},
                         np.concatenate([rl.req_index + o for rl, o in zip(logs, offsets)]))

    @staticmethod
    def load(path: str | os.PathLike[str]) -> "ReplayLog":
        try:
            with np.load(path, allow_pickle=False) as z:
                if tuple(str(a) for a in z["actions"]) != ACTIONS:
                    raise CalibratorStateError(f"{path}: logged with other actions; re-log the calibration data")
                batch = LabeledBatch(z["X"], z["y"], z["mask"].astype(bool), z["ts"].astype(np.int64),
                                     {k[7:]: z[k] for k in z.files if k.startswith("extra__")})
                return ReplayLog(batch, {k[6:]: z[k] for k in z.files if k.startswith("user__")},
                                 {k[6:]: z[k] for k in z.files if k.startswith("cand__")}, z["req_index"])
        except (OSError, KeyError, ValueError) as exc:
            raise CalibratorStateError(f"cannot read replay log {path}: {exc}; write one with `feedrank calibration log`") from exc


def artifact_score_fn(artifact: Any, rlog: ReplayLog, progress: bool = False) -> ScoreFn:
    """A ``score_fn`` that re-scores ``rlog``'s requests with ``artifact`` (``scorer.artifact.Artifact``).

    The returned function ignores its batch argument's rows beyond their count and
    scores the whole log, request by request (the serving module takes one request).
    """
    from features.assembly import ModelInputs

    from .progress import Progress

    def score(batch: LabeledBatch) -> np.ndarray:
        if len(batch) != len(rlog.batch):
            raise ValueError("artifact_score_fn scores its own replay log; pass rlog.batch to replay()")
        out = np.zeros((len(batch), len(ACTIONS)))
        starts = np.r_[0, np.flatnonzero(np.diff(rlog.req_index)) + 1]
        ends = np.r_[starts[1:], len(rlog.req_index)]
        bar = Progress("replay", len(starts), "requests re-scored", enabled=progress)
        for n, (s, e) in enumerate(zip(starts, ends)):
            q = int(rlog.req_index[s])
            inputs = ModelInputs(**{k: v[q] for k, v in rlog.user.items()}, **{k: v[s:e] for k, v in rlog.cand.items()})
            out[s:e] = artifact.score(inputs)
            if n % 50 == 0:
                bar.update(n)
        bar.update(len(starts))
        bar.close()
        return out

    return score
