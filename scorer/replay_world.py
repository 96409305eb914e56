"""Write a replay log from the synthetic world: what serving showed, with labels and model inputs.

Stands in for the production logs in demos and tests. World requests go through
``ReplayState`` (the offline twin of the stream tables) and through the serving
score function itself (``scorer.service.Scorer.score``: the same assembly, the
same blender ranking of all candidates, the same top-k recalibrated at the rank
it is shown at, the same prediction log), and every shown item becomes the
labeled record the label join would emit; rows are read with the online
trainer's ``batch_from_records``. So the log holds the rows serving produces,
under the serving policy, not a hand-made approximation of them.

Why the policy matters (measured on the demo, issue #6): calibrators fit on a
log whose items were picked another way (top 10 of 30 by raw click score: 3.6 %
videos) over-predicted click 1.7-2.2x, long click 2.0-2.8x and video views
1.9-2.2x on what serving then showed (top 10 of 100 by blended utility: 99.6 %
videos). Even a randomized log (26 % videos) missed by 2-3x: the calibrators
are linear in ~70 features, and serving picks exactly the items where their
extrapolation is highest. A log of the serving policy fits where serving acts.

``calibrators`` are the serving model's calibrators (production: the logs of
the model that served). A model that never served has none: then the log
bootstraps the way a canary would, ``refit_every_s`` of event time at a time:
the first period shows a random ``feed_size`` of the candidates (exploration,
ranked among themselves by the serving path with identity calibrators), then
calibrators are refit on everything logged so far and serving continues with
them. ``explore_frac`` of the requests keep a random candidate subset in any
case, so the log also covers items the policy rarely shows.

``background`` is an optional event-time-ordered stream of other users'
``Impression``/``Engagement`` events (the demo's background producer): they
reach the state twin as they reach the live tables, so the feedback-loop and
user features of the log have the live system's levels.
``feedrank replay --model NEW`` then re-scores this log with a new model.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from features.assembly import CAND_KEYS, USER_KEYS, assemble
from features.events import ACTIONS, Event, Impression
from features.predictions import prediction_fields
from features.rpc import ScoreRequest
from features.state import Candidate
from features.world import DEFAULT_START_MS, HOUR_MS, FeedRequest, World

from .calibration import CalibratorHolder, CalibratorSet, LabeledBatch, fit_calibrator_set
from .calibration.records import batch_from_records
from .progress import Progress
from .replay import ReplayLog
from .replay_state import ReplayState

log = logging.getLogger(__name__)

VIDEO_TASK = ACTIONS.index("video_view_10s")
#: ``extras["policy"]`` of a logged row: shown from a random candidate subset, or by the serving policy.
EXPLORE, SERVE = 0, 1


def score_request(req: FeedRequest, candidates: list[Candidate], top_k: int) -> ScoreRequest:
    """The ``POST /score`` body a feed server sends for ``req`` (what ``feedrank simulate`` sends)."""
    c = req.context
    return ScoreRequest.model_validate({
        "user_id": req.user_id, "request_id": req.request_id, "top_k": top_k,
        "context": {"surface": c.surface, "country": c.country, "gender": c.gender, "app_type": c.app_type,
                    "device_type": c.device_type, "ts": req.ts},
        "candidates": [{"item_id": x.item_id, "item_type": x.item_type, "position": x.position,
                        "features": dict(x.features)} for x in candidates]})


class _Background:
    """Feeds an event-time-ordered event stream into the state twin up to a given time."""

    def __init__(self, events: Iterable[Event] | None) -> None:
        self._it: Iterator[Event] | None = iter(events) if events is not None else None
        self._next: Event | None = None
        self.applied = 0

    def until(self, state: ReplayState, ts: int) -> None:
        while self._it is not None:
            if self._next is None:
                self._next = next(self._it, None)
                if self._next is None:
                    self._it = None
                    return
            if self._next.ts > ts:
                return
            if isinstance(self._next, Impression):
                state.add_impression(self._next)
            else:
                state.add_engagements([self._next])
            self._next = None
            self.applied += 1


def _utc(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def episode_starts(start_ms: int, episodes: int) -> list[int]:
    """Where ``episodes`` cold-start episodes begin: spread evenly over the day from ``start_ms``, so their
    clock phases cover the world's diurnal cycle (a live loop may start at any hour)."""
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, not {episodes}")
    return [start_ms + i * (24 * HOUR_MS // episodes) for i in range(episodes)]


def world_replay_episodes(world: World, artifact: Any, calibrators: CalibratorSet | None, episodes: int,
                          background: Callable[[int], Iterable[Event]] | None = None, start_ms: int = DEFAULT_START_MS,
                          seed: int = 0, progress: bool = False, **kwargs: Any) -> ReplayLog:
    """``episodes`` logs of ``world_replay_log`` (``kwargs``: its knobs), each from empty state at one of
    ``episode_starts``, served by ``calibrators``, in one log.

    What it is for (issue 28): a live loop that starts cold (the demo, a fresh cluster) is served
    with the calibrators it starts with while every table fills. Calibrators fit on an hour of
    slower traffic, served by the calibrators bootstrapped on it, missed the loop's first 200 s
    by 0.84x (repins) to 1.18x (video views) in its offline twin; refit on four such episodes at
    the loop's rate and policy (no exploration), served by them, they came within 0.97-1.02
    (docs/calibration.md).
    ``background(start_ms)``: the other users' event stream of an episode from its start. One episode
    is ``world_replay_log`` itself (``calibrators`` None: bootstrapped in it).
    """
    logs = []
    for i, t0 in enumerate(episode_starts(start_ms, episodes)):
        if progress and episodes > 1:
            print(f"episode {i + 1} of {episodes} from {_utc(t0)}", flush=True)
        logs.append(world_replay_log(world, artifact, calibrators, start_ms=t0, seed=seed + i, progress=progress,
                                     background=background(t0) if background else None, **kwargs))
    return ReplayLog.concat(logs)


def first_window_calibration(batch: LabeledBatch, starts: list[int], window_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Sums of the served probabilities and of the labels ``[episodes, tasks]`` over the rows served within
    ``window_s`` of each episode's start (``starts``, ascending), on the rows where a task applies."""
    ts = batch.ts.astype(np.int64)
    predicted = np.zeros((len(starts), len(ACTIONS)))
    observed = np.zeros((len(starts), len(ACTIONS)))
    served = np.nan_to_num(batch.extras["served"])
    for i, t0 in enumerate(starts):
        rows = (ts >= t0) & (ts < t0 + int(window_s * 1000))
        m = batch.mask & rows[:, None]
        predicted[i] = (served * m).sum(0)
        observed[i] = (batch.y * m).sum(0)
    return predicted, observed


def format_first_window(predicted: np.ndarray, observed: np.ndarray, starts: list[int]) -> str:
    """Markdown table: predicted / observed (positives) per task, one row per episode (by its clock) and pooled."""
    def row(label: str, p: np.ndarray, y: np.ndarray) -> str:
        return f"| {label} | " + " | ".join(f"{pk / yk:.2f} ({int(yk)})" if yk else "-" for pk, yk in zip(p, y)) + " |"

    lines = ["| start (UTC clock) | " + " | ".join(ACTIONS) + " |", "|---" * (len(ACTIONS) + 1) + "|"]
    for t0, p, y in zip(starts, predicted, observed):
        lines.append(row(_utc(t0)[11:16], p, y))
    lines.append(row("pooled", predicted.sum(0), observed.sum(0)))
    return "\n".join(lines)


def world_replay_log(world: World, artifact: Any, calibrators: CalibratorSet | None = None, hours: float = 1.0,
                     requests_per_s: float = 1.0, feed_size: int = 10, n_candidates: int = 100,
                     start_ms: int = DEFAULT_START_MS, explore_frac: float = 0.1, refit_every_s: float = 300.0,
                     background: Iterable[Event] | None = None, blender: Any = None, seed: int = 0,
                     progress: bool = False) -> ReplayLog:
    """``hours`` of world traffic served by ``artifact`` (``scorer.artifact.Artifact``) through the serving path.

    ``extras`` of the rows: ``served`` (the calibrated probabilities serving logged),
    ``request`` and ``policy`` (``EXPLORE`` / ``SERVE``).
    """
    from .blender import Blender
    from .service import Scorer

    bootstrap = calibrators is None
    holder = CalibratorHolder(calibrators or CalibratorSet.identity(artifact.version))
    scorer = Scorer(artifact, holder, blender or Blender(None))
    state = ReplayState(seq_len=artifact.spec.history_len)
    feed = _Background(background)
    rng = np.random.default_rng(seed + 17)
    end = start_ms + int(hours * HOUR_MS)
    next_refit = start_ms + int(refit_every_s * 1000) if bootstrap else None
    user: dict[str, list[np.ndarray]] = {k: [] for k in USER_KEYS}
    cand: dict[str, list[np.ndarray]] = {k: [] for k in CAND_KEYS}
    parts: list[LabeledBatch] = []
    policy, req_index = [], []
    q = 0
    bar = Progress("calibration log", (end - start_ms) / 1000, "simulated s", enabled=progress)
    for req in world.requests(start_ms, requests_per_s, n_candidates):
        if req.ts >= end:
            break
        if q % 50 == 0:
            bar.update((req.ts - start_ms) / 1000, f"{q:,} requests")
        if next_refit is not None and req.ts >= next_refit and parts:
            # a model that never served: refit on what was logged so far and serve with it
            fitted = fit_calibrator_set(LabeledBatch.concat(parts), artifact.version, version=holder.current.version + 1,
                                        source="replay-log-bootstrap")
            holder.swap(fitted)
            next_refit += int(refit_every_s * 1000)
        feed.until(state, req.ts)
        state.advance(req.ts)
        ctx = req.context
        us, fb = state.user_state(req.user_id, req.ts), state.feedback(req.ts, ctx.country, ctx.gender)
        explore = (bootstrap and holder.current.source == "identity") or rng.random() < explore_frac
        offered = req.candidates
        if explore:
            offered = [req.candidates[i] for i in rng.permutation(len(req.candidates))[:feed_size]]
        scored = scorer.score(score_request(req, offered, feed_size), us, fb, now_ms=req.ts)
        plog = scored.prediction_log
        shown_ids = [it.item_id for it in scored.response.items]
        result = world.show(req, shown_ids)
        records = [{"example_id": imp.event_id, "impression": {"user_id": imp.user_id, "request_id": imp.request_id,
                                                               "item_type": imp.item_type, "ts": imp.ts},
                    "labels": {a: int(v) for a, v in zip(ACTIONS, result.labels[j])},
                    "prediction": prediction_fields(plog, imp.item_id)}
                   for j, imp in enumerate(result.impressions)]
        batch, _ = batch_from_records(records)
        for imp, engs in zip(result.impressions, result.engagements):
            state.add_impression(imp)
            state.add_engagements(engs)
        # the model inputs serving scored the shown items with (re-scoring reproduces the logged logits)
        by_id = {c.item_id: c for c in offered}
        inputs = assemble(us, fb, ctx, [by_id[i] for i in shown_ids], artifact.spec).arrays()
        for k in USER_KEYS:
            user[k].append(inputs[k])
        for k in CAND_KEYS:
            cand[k].append(inputs[k])
        parts.append(batch)
        policy.append(np.full(len(batch), EXPLORE if explore else SERVE, dtype=np.int8))
        req_index.append(np.full(len(batch), q))
        q += 1
    bar.update((end - start_ms) / 1000, f"{q:,} requests")
    bar.close()
    if q == 0:
        raise ValueError("no requests in the window; raise --hours or --requests-per-s")
    batch = LabeledBatch.concat(parts)
    batch = LabeledBatch(batch.X, batch.y, batch.mask, batch.ts, dict(batch.extras, policy=np.concatenate(policy)))
    log.info("replay log: %d requests, %d shown items (%.0f %% explored, %.0f %% videos), %d background events",
             q, len(batch), 100 * float(np.mean(batch.extras["policy"] == EXPLORE)),
             100 * float(batch.mask[:, VIDEO_TASK].mean()), feed.applied)
    return ReplayLog(batch, {k: np.stack(v) for k, v in user.items()}, {k: np.concatenate(v) for k, v in cand.items()},
                     np.concatenate(req_index))
