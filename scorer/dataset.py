"""Training and evaluation rows from the synthetic world, assembled like online requests.

``simulate`` replays world traffic through ``ReplayState`` (the offline twin of the
stream tables) and calls ``features.assembly.assemble`` for every request, so
rows carry exactly the serving features. ``downsample`` builds the training set
the way the home feed post describes: rows are stratified by their strongest
action and each stratum kept at its own rate, so positives are over-represented
and raw model scores are NOT probabilities (calibration fixes that).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from features.assembly import CAND_KEYS, USER_KEYS, FeatureSpec, assemble
from features.content import content_table
from features.events import ACTIONS
from features.state import Candidate
from features.world import HOUR_MS, World

from .progress import Progress
from .replay_state import ReplayState

log = logging.getLogger(__name__)

#: Strata, strongest first: a row's class is its first positive action in this order.
CLASS_ORDER: tuple[str, ...] = ("hide", "repin", "long_click", "closeup", "click", "video_view_10s", "none")
DEFAULT_RATES: Mapping[str, float] = {"hide": 1.0, "repin": 1.0, "long_click": 1.0, "closeup": 0.6,
                                      "click": 0.5, "video_view_10s": 0.6, "none": 0.12}
VIDEO_TASK = ACTIONS.index("video_view_10s")
#: ``RowSet.keys``: the world's user and item index, context codes, position and time of each row, in the
#: argument order of ``World.true_prob_matrix``
WORLD_KEYS: tuple[str, ...] = ("user", "item", "country", "gender", "app", "device", "position", "ts")


@dataclass
class RowSet:
    """Rows = shown impressions. User part per request ``[Q, ...]``, the rest per row ``[R, ...]``."""

    user: dict[str, np.ndarray]
    cand: dict[str, np.ndarray]
    req_index: np.ndarray  # [R] -> row of ``user``
    labels: np.ndarray  # [R, T] float32
    mask: np.ndarray  # [R, T] float32, 0 where the task cannot happen
    true_probs: np.ndarray  # [R, T]
    ts: np.ndarray  # [R] epoch ms
    klass: np.ndarray  # [R] index in CLASS_ORDER
    summary: dict[str, object] = field(default_factory=dict)
    #: the catalogue's item content table ``[item_buckets, D + 1]`` (``features.content``), trained into the model
    content: np.ndarray | None = None
    #: the world's indices behind each row (``WORLD_KEYS``, ``[R]`` each), to ask the world for other truths
    keys: dict[str, np.ndarray] | None = None
    #: ranking requests of the same period (``simulate(rank_every=...)``): N candidates each, labels unused
    ranking: "RowSet | None" = None

    def __len__(self) -> int:
        return len(self.req_index)

    def batch(self, idx: np.ndarray, dedupe: bool = True) -> dict[str, np.ndarray]:
        """Model input arrays for rows ``idx``.

        With ``dedupe`` the user part has one row per distinct request and
        ``user_row`` ``[len(idx)]`` maps each candidate to it; otherwise the user
        part is repeated per row.
        """
        q = self.req_index[idx]
        if dedupe:
            uq, inv = np.unique(q, return_inverse=True)
            out = {k: v[uq] for k, v in self.user.items()}
            out["user_row"] = inv.astype(np.int64)
        else:
            out = {k: v[q] for k, v in self.user.items()}
        out.update({k: v[idx] for k, v in self.cand.items()})
        return out

    def request_batches(self, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Row indices in shuffled batches that keep a request's rows together (about ``batch_size`` each)."""
        order = np.argsort(rng.permutation(int(self.req_index.max()) + 1)[self.req_index], kind="stable")
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def select(self, keep: np.ndarray) -> "RowSet":
        """Rows where ``keep`` (bool ``[R]``) holds; the user part is shared, not copied."""
        return RowSet(self.user, {k: v[keep] for k, v in self.cand.items()}, self.req_index[keep],
                      self.labels[keep], self.mask[keep], self.true_probs[keep], self.ts[keep], self.klass[keep],
                      dict(self.summary), self.content,
                      None if self.keys is None else {k: v[keep] for k, v in self.keys.items()})


def row_class(labels: np.ndarray) -> np.ndarray:
    """Index in ``CLASS_ORDER`` of each row's strongest action (``none`` when no action)."""
    klass = np.full(len(labels), len(CLASS_ORDER) - 1, dtype=np.int64)
    for ci in range(len(CLASS_ORDER) - 2, -1, -1):
        klass[labels[:, ACTIONS.index(CLASS_ORDER[ci])] > 0] = ci
    return klass


def simulate(world: World, start_ms: int, hours: float, requests_per_s: float, spec: FeatureSpec,
             feed_size: int = 10, n_candidates: int = 30, progress: bool = False, rank_every: int = 0,
             rank_candidates: int = 100, rank_from_ms: int | None = None) -> RowSet:
    """Replay ``hours`` of world traffic (random logging policy: shuffled candidates).

    ``rank_every`` > 0: every that many requests from ``rank_from_ms`` on, also assemble a ranking
    request of ``rank_candidates`` fresh candidates at position 0 (as serving scores them) with the
    user state of that moment, shown to nobody; they come back as ``rows.ranking`` (true
    probabilities at position 0, labels 0). Their candidates come from a generator of their own,
    so the simulated traffic is the same with or without them.
    """
    state = ReplayState(seq_len=spec.history_len)
    rank_rng = np.random.default_rng(world.seed + 13)
    rank_from = start_ms if rank_from_ms is None else rank_from_ms
    rk: dict[str, list[np.ndarray]] = {k: [] for k in (*USER_KEYS, *CAND_KEYS, *WORLD_KEYS)}
    rank_q = 0
    keys: dict[str, list[np.ndarray]] = {k: [] for k in WORLD_KEYS}
    end = start_ms + int(hours * HOUR_MS)
    users: dict[str, list[np.ndarray]] = {k: [] for k in USER_KEYS}
    cands: dict[str, list[np.ndarray]] = {k: [] for k in CAND_KEYS}
    req_index, labels, probs, ts_rows = [], [], [], []
    rng = np.random.default_rng(world.seed + 7)
    t0 = time.perf_counter()
    bar = Progress("simulate", (end - start_ms) / 1000, "simulated s", enabled=progress)
    q = 0
    for req in world.requests(start_ms, requests_per_s, n_candidates):
        if req.ts >= end:
            break
        state.advance(req.ts)
        order = rng.permutation(len(req.candidates))[:feed_size]
        shown = [Candidate(req.candidates[i].item_id, req.candidates[i].item_type, j, req.candidates[i].features)
                 for j, i in enumerate(order)]
        ctx = req.context
        user_state, feedback = state.user_state(req.user_id, req.ts), state.feedback(req.ts, ctx.country, ctx.gender)
        inputs = assemble(user_state, feedback, ctx, shown, spec).arrays()
        codes = world.context_codes(ctx)
        if rank_every > 0 and req.ts >= rank_from and q % rank_every == 0:
            pool = [Candidate(c.item_id, c.item_type, 0, c.features)
                    for c in world.candidates_for(req.user, req.ts, rank_candidates, rng=rank_rng)]
            r_in = assemble(user_state, feedback, ctx, pool, spec).arrays()
            for k in USER_KEYS:
                rk[k].append(r_in[k])
            for k in CAND_KEYS:
                rk[k].append(r_in[k])
            _append_keys(rk, req.user, [c.item_id for c in pool], codes, np.zeros(len(pool), np.int64), req.ts)
            rk.setdefault("req", []).append(np.full(len(pool), rank_q))
            rank_q += 1
        _append_keys(keys, req.user, [c.item_id for c in shown], codes, np.arange(len(shown)), req.ts)
        result = world.show(req, [c.item_id for c in shown])
        for imp, engs in zip(result.impressions, result.engagements):
            state.add_impression(imp)
            state.add_engagements(engs)
        for k in USER_KEYS:
            users[k].append(inputs[k])
        for k in CAND_KEYS:
            cands[k].append(inputs[k])
        req_index.append(np.full(len(shown), q))
        labels.append(result.labels)
        probs.append(result.true_probs)
        ts_rows.append(np.full(len(shown), req.ts))
        q += 1
        if progress and q % 200 == 0:
            bar.update((req.ts - start_ms) / 1000, f"{q:,} requests, {q / (time.perf_counter() - t0):.0f} req/s")
    bar.update((end - start_ms) / 1000)
    bar.close()
    lab = np.concatenate(labels).astype(np.float32)
    cand = {k: np.concatenate(v) for k, v in cands.items()}
    mask = np.ones_like(lab)
    mask[:, VIDEO_TASK] = (cand["cand_type"] == 2).astype(np.float32)
    table = content_table(*world.catalogue_content(), spec.item_buckets)
    rows = RowSet({k: np.stack(v) for k, v in users.items()}, cand, np.concatenate(req_index), lab, mask,
                  np.concatenate(probs), np.concatenate(ts_rows), row_class(lab), content=table,
                  keys={k: np.concatenate(v) for k, v in keys.items()})
    if rank_q:
        rkeys = {k: np.concatenate(rk[k]) for k in WORLD_KEYS}
        r_cand = {k: np.concatenate(rk[k]) for k in CAND_KEYS}
        r_mask = np.ones((len(rkeys["item"]), len(ACTIONS)), dtype=np.float32)
        r_mask[:, VIDEO_TASK] = (r_cand["cand_type"] == 2).astype(np.float32)
        truth = world.true_prob_matrix(*[rkeys[k] for k in WORLD_KEYS])
        zeros = np.zeros_like(r_mask)
        rows.ranking = RowSet({k: np.stack(rk[k]) for k in USER_KEYS}, r_cand, np.concatenate(rk["req"]), zeros,
                              r_mask, truth, rkeys["ts"], row_class(zeros), {"requests": rank_q}, table, rkeys)
    rows.summary = {"requests": q, "impressions": len(rows), "start_ms": start_ms, "hours": hours,
                    "action_rates": {a: float(lab[:, i].mean()) for i, a in enumerate(ACTIONS)}}
    log.info("simulated %d requests, %d impressions in %.1fs", q, len(rows), time.perf_counter() - t0)
    return rows


def _append_keys(out: dict[str, list[np.ndarray]], user: int, item_ids: list[str], codes: tuple[int, int, int, int],
                 position: np.ndarray, ts: int) -> None:
    n = len(item_ids)
    out["user"].append(np.full(n, user, dtype=np.int64))
    out["item"].append(np.fromiter((int(i[1:]) for i in item_ids), dtype=np.int64, count=n))
    for name, code in zip(("country", "gender", "app", "device"), codes):
        out[name].append(np.full(n, code, dtype=np.int64))
    out["position"].append(np.asarray(position, dtype=np.int64))
    out["ts"].append(np.full(n, ts, dtype=np.int64))


def downsample(rows: RowSet, rates: Mapping[str, float] = DEFAULT_RATES, seed: int = 0) -> RowSet:
    """Stratified down-sampling: keep each row with its class's rate; records the rates in ``summary``."""
    rng = np.random.default_rng(seed)
    keep_p = np.asarray([rates[c] for c in CLASS_ORDER])[rows.klass]
    out = rows.select(rng.random(len(rows)) < keep_p)
    before = np.bincount(rows.klass, minlength=len(CLASS_ORDER))
    after = np.bincount(out.klass, minlength=len(CLASS_ORDER))
    out.summary.update(sampling={"scheme": "stratified by strongest action, kept with per-class rate",
                                 "rates": dict(rates),
                                 "rows_before": {c: int(n) for c, n in zip(CLASS_ORDER, before)},
                                 "rows_after": {c: int(n) for c, n in zip(CLASS_ORDER, after)}},
                       rows=len(out))
    return out




@dataclass(frozen=True)
class WorldSplit:
    """Training rows (down-sampled) and held-out rows from a later period of the same world."""

    train: RowSet
    holdout: RowSet


def make_split(world: World, spec: FeatureSpec, train_hours: float, holdout_hours: float, requests_per_s: float,
               start_ms: int, rates: Mapping[str, float] = DEFAULT_RATES, seed: int = 0,
               progress: bool = False, rank_every: int = 0, rank_candidates: int = 100,
               history_hours: float = 0.0) -> WorldSplit:
    """Simulate ``train_hours`` then ``holdout_hours`` in one replay (state carries over); the
    training part is stratified-down-sampled, the later hold-out is kept whole. ``rank_every`` > 0:
    the hold-out also carries ranking requests (``holdout.ranking``, see ``simulate``).
    ``history_hours`` > 0: the replay starts that long before ``start_ms`` and its rows are dropped, so users
    come to the training day with a history (as in a system that has run for a while), not empty."""
    cut = start_ms + int(train_hours * HOUR_MS)
    first = start_ms - int(history_hours * HOUR_MS)
    rows = simulate(world, first, history_hours + train_hours + holdout_hours, requests_per_s, spec,
                    progress=progress, rank_every=rank_every, rank_candidates=rank_candidates, rank_from_ms=cut)
    if history_hours > 0:
        ranking, rows = rows.ranking, rows.select(rows.ts >= start_ms)
        rows.ranking = ranking
    train = downsample(rows.select(rows.ts < cut), rates, seed)
    holdout = rows.select(rows.ts >= cut)
    holdout.ranking = rows.ranking
    for part in (train, holdout):
        part.summary = {"simulated": {k: part.summary.pop(k) for k in ("requests", "impressions", "start_ms", "hours",
                                                       "action_rates")},
                        **part.summary}
    holdout.summary.update(rows=len(holdout), period="hold-out (later)", hours=holdout_hours)
    train.summary.update(period="train", hours=train_hours, history_hours=history_hours,
                         world={"seed": world.seed, "n_users": world.n_users, "n_items": world.n_items,
                                "requests_per_s": requests_per_s})
    return WorldSplit(train, holdout)


__all__ = ["CLASS_ORDER", "DEFAULT_RATES", "RowSet", "WORLD_KEYS", "WorldSplit", "downsample", "make_split", "row_class", "simulate"]
