"""A small synthetic traffic generator for calibration tests and benchmarks.

It knows the true action probabilities, produces raw model logits the way a
model trained on down-sampled negatives would (odds inflated by ``1/r``, blind to
country, gender, app and position effects), keeps the 30-minute feedback-loop
counts per segment from its own labels, and can shift the world (for example
double one country's click rate) at a point in event time. Each ``step()`` is
one minute of traffic through the real ``calibration_feature_matrix``.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from features.calibration_features import calibration_feature_matrix
from features.events import ACTIONS
from features.state import Candidate, Counts, FeedbackSnapshot, ScoreContext, UserState

from .data import LabeledBatch
from features.numeric import sigmoid

log = logging.getLogger(__name__)

T = len(ACTIONS)
COUNTRIES = ("US", "BR", "DE", "JP")
GENDERS = ("f", "m", "u")
APPS = ("ios", "android", "web")
DEVICES = ("phone", "tablet", "desktop")
MINUTE_MS = 60_000
VIDEO_TASK = ACTIONS.index("video_view_10s")
_ITEM_IDS = tuple(f"item{i}" for i in range(1000))


@dataclass(frozen=True)
class SimConfig:
    seed: int = 0
    impressions_per_min: int = 4000
    slate: int = 25
    n_users: int = 4000
    video_share: float = 0.3
    start_ms: int = 1_700_000_000_000
    feedback_minutes: int = 30
    base_logit: Mapping[str, float] = field(default_factory=lambda: {
        "click": -2.0, "long_click": -2.5, "closeup": -2.2, "repin": -2.6, "hide": -2.6, "video_view_10s": -1.0})
    #: fraction of negatives kept in the model's training data, per task
    negative_keep: Mapping[str, float] = field(default_factory=lambda: {
        "click": 0.1, "long_click": 0.1, "closeup": 0.1, "repin": 0.05, "hide": 0.02, "video_view_10s": 0.2})
    country_share: tuple[float, ...] = (0.3, 0.45, 0.1, 0.15)
    country_effect: tuple[float, ...] = (0.0, -0.2, 0.3, -0.6)
    position_slope: float = 0.06
    model_noise: float = 0.25


@dataclass(frozen=True)
class SimStep:
    """One minute of labeled traffic plus what only the simulator knows."""

    batch: LabeledBatch
    raw_logits: np.ndarray  # [N, T]
    true_p: np.ndarray  # [N, T] (after any shift)
    country: np.ndarray  # [N] index into COUNTRIES
    end_ms: int


class CalibrationSim:
    def __init__(self, config: SimConfig = SimConfig()) -> None:
        self.cfg = c = config
        self.rng = rng = np.random.default_rng(c.seed)
        self.now_ms = c.start_ms
        self.base = np.asarray([c.base_logit[a] for a in ACTIONS])
        self.country_eff = np.asarray(c.country_effect)[:, None] + rng.normal(0, 0.1, (len(COUNTRIES), T))
        self.gender_eff = rng.normal(0, 0.15, (len(GENDERS), T))
        self.app_eff = rng.normal(0, 0.1, (len(APPS), T))
        self.device_eff = rng.normal(0, 0.1, (len(DEVICES), T))
        self.video_eff = np.asarray([-0.3, 0.0, 0.2, -0.5, 0.1, 0.0])
        self.shift_log = np.log(1.0 / np.asarray([c.negative_keep[a] for a in ACTIONS]))
        u = c.n_users
        self.u_country = rng.choice(len(COUNTRIES), size=u, p=np.asarray(c.country_share))
        self.u_gender = rng.choice(len(GENDERS), size=u, p=[0.5, 0.4, 0.1])
        self.u_app = rng.choice(len(APPS), size=u, p=[0.45, 0.4, 0.15])
        self.u_device = rng.choice(len(DEVICES), size=u, p=[0.7, 0.15, 0.15])
        self.u_eff = rng.normal(0, 0.5, (u, 1)) + rng.normal(0, 0.2, (u, T))
        self.mult = np.ones((len(COUNTRIES), T))
        self.prev_mult = np.ones((len(COUNTRIES), T))
        self.shift_ms: int | None = None
        self.tiles: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=c.feedback_minutes)
        n_seg = 1 + len(COUNTRIES) * (1 + len(GENDERS))
        self._n_seg = n_seg

    # -- world changes -------------------------------------------------
    def shift(self, country: str, actions: tuple[str, ...], mult: float) -> None:
        """From now on, ``country``'s true rates of ``actions`` are multiplied by ``mult``."""
        self.prev_mult = self.mult.copy()
        ci = COUNTRIES.index(country)
        for a in actions:
            self.mult[ci, ACTIONS.index(a)] = mult
        self.shift_ms = self.now_ms

    # -- internals -----------------------------------------------------
    def _seg(self, ci: np.ndarray, gi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return 1 + ci, 1 + len(COUNTRIES) + ci * len(GENDERS) + gi

    def _feedback(self) -> dict[tuple[int, int], FeedbackSnapshot]:
        imps = np.zeros(self._n_seg)
        acts = np.zeros((self._n_seg, T))
        for i, a in self.tiles:
            imps += i
            acts += a
        snaps = {}
        for ci, cc in enumerate(COUNTRIES):
            for gi, g in enumerate(GENDERS):
                s_c, s_gc = 1 + ci, 1 + len(COUNTRIES) + ci * len(GENDERS) + gi
                snaps[(ci, gi)] = FeedbackSnapshot({
                    key: Counts(int(imps[s]), {a: int(acts[s, t]) for t, a in enumerate(ACTIONS)})
                    for key, s in (("all", 0), (f"c:{cc}", s_c), (f"gc:{g}:{cc}", s_gc))
                })
        return snaps

    def _mult_lagged(self, window_ms: int) -> np.ndarray:
        if self.shift_ms is None:
            return self.mult
        frac = min(max((self.now_ms - self.shift_ms) / window_ms, 0.0), 1.0)
        return self.prev_mult + (self.mult - self.prev_mult) * frac

    def _user_counts(self, u: int, n_imps: int, window_ms: int) -> Counts:
        ci, gi = self.u_country[u], self.u_gender[u]
        logit = self.base + self.country_eff[ci] + self.gender_eff[gi] + self.u_eff[u] - 0.06 * 8
        p = np.minimum(sigmoid(logit) * self._mult_lagged(window_ms)[ci], 0.95)
        acts = self.rng.binomial(n_imps, p)
        return Counts(n_imps, {a: int(acts[t]) for t, a in enumerate(ACTIONS)})

    # -- one minute ----------------------------------------------------
    def step(self) -> SimStep:
        c, rng = self.cfg, self.rng
        n_req = max(1, c.impressions_per_min // c.slate)
        fb = self._feedback()
        xs, raws, trues, countries, genders, ts_all, videos = [], [], [], [], [], [], []
        for _ in range(n_req):
            u = int(rng.integers(c.n_users))
            ci, gi = int(self.u_country[u]), int(self.u_gender[u])
            ts = self.now_ms + int(rng.integers(MINUTE_MS))
            ctx = ScoreContext("home", COUNTRIES[ci], GENDERS[gi], APPS[self.u_app[u]], DEVICES[self.u_device[u]], ts)
            user = UserState(
                f"u{u}",
                counts_3h=self._user_counts(u, int(rng.poisson(25)), 3 * 3600_000),
                counts_1d=self._user_counts(u, int(rng.poisson(150)), 24 * 3600_000),
            )
            is_video = rng.random(c.slate) < c.video_share
            pos = np.arange(c.slate)
            q = rng.normal(0, 0.5, (c.slate, 1))
            item = q * np.asarray([1, 1, 1, 1, -1, 1]) + rng.normal(0, 0.3, (c.slate, T))
            known = self.base + self.u_eff[u] + item + is_video[:, None] * self.video_eff
            hidden = (self.country_eff[ci] + self.gender_eff[gi] + self.app_eff[self.u_app[u]]
                      + self.device_eff[self.u_device[u]])[None, :] - c.position_slope * pos[:, None]
            true_p = np.minimum(sigmoid(known + hidden) * self.mult[ci], 0.95)
            raw = known + self.shift_log + rng.normal(0, c.model_noise, (c.slate, T))
            cands = [Candidate(_ITEM_IDS[i], "video" if v else "organic", i) for i, v in enumerate(is_video.tolist())]
            xs.append(calibration_feature_matrix(raw, user, fb[(ci, gi)], ctx, cands))
            raws.append(raw)
            trues.append(true_p)
            countries.append(np.full(c.slate, ci))
            genders.append(np.full(c.slate, gi))
            ts_all.append(np.full(c.slate, ts, dtype=np.int64))
            videos.append(is_video)
        true_p = np.concatenate(trues)
        y = (rng.random(true_p.shape) < true_p).astype(np.int8)
        mask = np.ones_like(y, dtype=bool)
        is_video = np.concatenate(videos)
        mask[:, VIDEO_TASK] = is_video
        y[~mask] = 0
        country = np.concatenate(countries)
        # the minute's labels feed the 30-minute feedback loop
        imps = np.zeros(self._n_seg)
        acts = np.zeros((self._n_seg, T))
        s_c, s_gc = self._seg(country, np.concatenate(genders))
        for seg in (np.zeros_like(country), s_c, s_gc):
            imps += np.bincount(seg, minlength=self._n_seg)
            for t in range(T):
                acts[:, t] += np.bincount(seg, weights=y[:, t], minlength=self._n_seg)
        self.tiles.append((imps, acts))
        batch = LabeledBatch(np.concatenate(xs), y, mask, np.concatenate(ts_all),
                             {"country": country, "is_video": is_video})
        self.now_ms += MINUTE_MS
        return SimStep(batch, np.concatenate(raws), true_p, country, self.now_ms)

    def run(self, minutes: int) -> list[SimStep]:
        return [self.step() for _ in range(minutes)]
