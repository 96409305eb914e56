"""A seeded synthetic engagement world: the workload for training, the demo and benchmarks.

Users have a stable interest vector plus a session intent that drifts over time,
and a session "video mood" (wants videos / wants organic) that drifts too (both
deterministic functions of user and event time, so the truth is a pure
function); items are organic or video with sparse topic vectors. Engagement
probabilities depend on user x item affinity, country and gender base rates,
app/device, position bias, a diurnal cycle in the country's local time, item
quality, and hides for each user's unwanted topic. Actions are correlated
(long_click only after click, repin only after closeup, nothing after a hide) and
video_view_10s happens only on videos. The world knows the true marginal
probability of every action for every impression (``true_probs``), so ranking
and calibration can be measured against the truth.

Events are the contract's ``Impression`` and ``Engagement`` models; ids are
``u<idx>``, ``i<idx>``, ``r<n>``.
"""

from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from features.numeric import sigmoid

from .events import ACTIONS, Engagement, Impression
from .state import Candidate, ScoreContext

log = logging.getLogger(__name__)

TASK_INDEX: Mapping[str, int] = {a: i for i, a in enumerate(ACTIONS)}
COUNTRIES: tuple[str, ...] = ("US", "GB", "DE", "FR", "BR", "JP", "IN", "MX")
#: Hours added to UTC to get local time (for the diurnal cycle).
COUNTRY_UTC_OFFSET_H: tuple[float, ...] = (-5.0, 0.0, 1.0, 1.0, -3.0, 9.0, 5.5, -6.0)
COUNTRY_SHARE: tuple[float, ...] = (0.35, 0.1, 0.1, 0.08, 0.12, 0.08, 0.1, 0.07)
GENDERS: tuple[str, ...] = ("f", "m", "u")
GENDER_SHARE: tuple[float, ...] = (0.55, 0.35, 0.10)
APP_TYPES: tuple[str, ...] = ("ios", "android", "web")
DEVICE_TYPES: tuple[str, ...] = ("phone", "tablet", "desktop")
SURFACE = "home"
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
#: 2024-01-01T00:00:00Z, the default start of simulated time.
DEFAULT_START_MS = 1_704_067_200_000

_IDX = TASK_INDEX
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """Vectorized splitmix64 finalizer on uint64 arrays (wrapping arithmetic)."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    return x


@dataclass(frozen=True)
class WorldParams:
    """Knobs of the world; the defaults give realistic (low) engagement rates."""

    n_topics: int = 16
    video_share: float = 0.25
    #: weight of the drifting session intent against the stable interest, in [0, 1]
    session_strength: float = 0.7
    #: the session intent moves from one topic to the next over this period
    session_slot_ms: int = 60 * 60 * 1000
    #: base logits of the raw per-action models (see ``true_prob_matrix``)
    base_logit: Mapping[str, float] = field(default_factory=lambda: {
        "click": -2.6, "long_click": -0.6, "closeup": -3.0, "repin": -1.2,
        "hide": -5.6, "video_view_10s": -1.6})
    #: weight of user x item affinity (centred) per action
    affinity_weight: Mapping[str, float] = field(default_factory=lambda: {
        "click": 3.5, "long_click": 2.0, "closeup": 3.0, "repin": 2.5,
        "hide": -1.5, "video_view_10s": 3.0})
    affinity_centre: float = 0.25
    unwanted_weight: float = 5.0
    country_bias: tuple[float, ...] = (0.2, 0.0, -0.2, -0.1, 0.35, -0.4, 0.1, 0.25)
    gender_bias: tuple[float, ...] = (0.25, -0.2, 0.0)
    app_bias: tuple[float, ...] = (0.15, 0.0, -0.25)
    device_bias: tuple[float, ...] = (0.0, 0.1, -0.15)
    position_decay: float = 0.35
    diurnal_amplitude: float = 0.5
    #: local hour of the diurnal engagement peak
    diurnal_peak_h: float = 20.0
    item_quality_sd: float = 0.5
    user_activity_sd: float = 0.3
    video_click_shift: float = -0.3
    #: logit swing of the session's video mood: +w on videos (-w/2 on organic) in a video
    #: session, the opposite in an organic one; the mood drifts like the session topic
    video_mood_weight: float = 1.0
    #: mean requests per session and mean gap between a session's requests
    requests_per_session: float = 8.0
    request_gap_ms: int = 30_000
    #: dimension of the catalogue's item content embeddings (``World.item_content``)
    content_dim: int = 16
    #: noise of the content embedding: per-component sd (x 1/sqrt(content_dim)) added to the rotated topic vector
    content_noise: float = 0.3
    #: conflicting task drivers (the ``conflict`` preset): an item's clickbait score adds this much to the
    #: click and closeup logits and takes it (x1.5 for repin) from long_click and repin
    clickbait_weight: float = 0.0
    #: saves (repin) follow the user's stable interest, not the session intent
    save_from_stable: bool = False
    #: an injected behaviour shift (the live calibration benchmark's): from event time ``shift_from_ms`` on,
    #: users of country ``shift_country`` (a ``COUNTRIES`` code; "" = no shift) click and close up with
    #: ``shift_logit`` added to the logit (+0.7: about twice as often at these rates)
    shift_country: str = ""
    shift_from_ms: int = 0
    shift_logit: float = 0.0

    def __post_init__(self) -> None:
        if self.shift_country and self.shift_country not in COUNTRIES:
            raise ValueError(f"shift_country {self.shift_country!r}: use one of {', '.join(COUNTRIES)}")


@dataclass(frozen=True)
class FeedRequest:
    """A simulated feed request: who asks, when, in what context, with which candidates."""

    request_id: str
    user: int
    ts: int
    context: ScoreContext
    candidates: list[Candidate]

    @property
    def user_id(self) -> str:
        return f"u{self.user}"


@dataclass(frozen=True)
class Shown:
    """The outcome of showing items for a request: events plus the truth behind them."""

    impressions: list[Impression]
    engagements: list[list[Engagement]]  # per impression, in time order
    true_probs: np.ndarray  # [k, T] marginal probabilities
    labels: np.ndarray  # [k, T] sampled outcomes (0/1)


Ranker = Callable[[FeedRequest], Sequence[str]]


class World:
    """The seeded world. ``World(seed, n_users, n_items)`` is fully reproducible."""

    def __init__(self, seed: int = 0, n_users: int = 2000, n_items: int = 5000,
                 params: WorldParams | None = None) -> None:
        self.seed = seed
        self.n_users = n_users
        self.n_items = n_items
        self.p = p = params or WorldParams()
        rng = np.random.default_rng(seed)
        d = p.n_topics
        self.user_country = rng.choice(len(COUNTRIES), n_users, p=np.asarray(COUNTRY_SHARE))
        self.user_gender = rng.choice(len(GENDERS), n_users, p=np.asarray(GENDER_SHARE))
        self.user_app = rng.integers(0, len(APP_TYPES), n_users)
        self.user_device = np.where(self.user_app == 2, 2, rng.integers(0, 2, n_users))
        self.user_interest = _unit_rows(rng.dirichlet(np.full(d, 0.3), n_users))
        self.user_unwanted = rng.integers(0, d, n_users)
        self.user_activity = rng.normal(0.0, p.user_activity_sd, n_users)
        self.user_phase = rng.integers(0, p.session_slot_ms, n_users)
        self.item_topic = _unit_rows(rng.dirichlet(np.full(d, 0.2), n_items))
        self.item_video = rng.random(n_items) < p.video_share
        self.item_quality = rng.normal(0.0, p.item_quality_sd, n_items)
        self.item_save_quality = rng.normal(0.0, p.item_quality_sd, n_items)
        main_topic = self.item_topic.argmax(axis=1)
        self._topic_order = np.argsort(main_topic, kind="stable")
        self._topic_size = np.bincount(main_topic, minlength=d)
        self._topic_start = np.concatenate([[0], np.cumsum(self._topic_size)[:-1]])
        self._base = np.array([p.base_logit[a] for a in ACTIONS])
        self._aff_w = np.array([p.affinity_weight[a] for a in ACTIONS])
        noise = rng.random(n_items) - 0.5
        self.item_ctr_prior = sigmoid(self._base[0] + self.item_quality + 0.4 * noise)
        self._rng = np.random.default_rng(seed + 1)
        self._next_request = 0
        self.item_content = self._content(np.random.default_rng(seed + 2))
        self.item_clickbait = np.random.default_rng(seed + 3).normal(0.0, 1.0, n_items)

    def _content(self, rng: np.random.Generator) -> np.ndarray:
        """[n_items, content_dim] float32 unit rows: each item's topic vector seen by a content model.

        A fixed random linear map of the topic vector plus noise, so the content
        embedding carries the topic (and nothing else) but not on the topic axes.
        Drawn from its own generator: the rest of the world is unchanged by it.
        """
        p = self.p
        rot = rng.normal(0.0, 1.0, (p.n_topics, p.content_dim))
        rot /= np.linalg.norm(rot, axis=1, keepdims=True)
        noise = rng.normal(0.0, p.content_noise / math.sqrt(p.content_dim), (self.n_items, p.content_dim))
        return _unit_rows(self.item_topic @ rot + noise).astype(np.float32)

    def catalogue_content(self) -> tuple[list[str], np.ndarray]:
        """Every item's id and content embedding ``[n_items, content_dim]``: what the catalogue exposes."""
        return [f"i{i}" for i in range(self.n_items)], self.item_content

    # ----- the truth -------------------------------------------------------------------

    def session_topics(self, users: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Current and next session topic and progress in [0, 1) for each (user, ts)."""
        slot_ms = self.p.session_slot_ms
        t = ts.astype(np.int64) + self.user_phase[users]
        slot = (t // slot_ms).astype(np.uint64)
        frac = (t % slot_ms) / slot_ms
        key = users.astype(np.uint64) * np.uint64(1_000_003) + np.uint64(self.seed) * np.uint64(7_919)
        d = np.uint64(self.p.n_topics)
        a = _splitmix(key ^ _splitmix(slot)) % d
        b = _splitmix(key ^ _splitmix(slot + np.uint64(1))) % d
        return a.astype(np.int64), b.astype(np.int64), frac

    def video_mood(self, users: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """[N] session mood in [-1, 1]: +1 = wants videos, -1 = wants organic; drifts between slots."""
        slot_ms = self.p.session_slot_ms
        t = ts.astype(np.int64) + self.user_phase[users]
        slot = (t // slot_ms).astype(np.uint64)
        frac = (t % slot_ms) / slot_ms
        key = users.astype(np.uint64) * np.uint64(2_000_029) + np.uint64(self.seed) * np.uint64(104_729)
        a = (_splitmix(key ^ _splitmix(slot)) >> np.uint64(40)) % np.uint64(2)
        b = (_splitmix(key ^ _splitmix(slot + np.uint64(1))) >> np.uint64(40)) % np.uint64(2)
        return (2.0 * a.astype(np.float64) - 1.0) * (1.0 - frac) + (2.0 * b.astype(np.float64) - 1.0) * frac

    def intent(self, users: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """[N, D] current interest: stable interest mixed with a drifting session topic."""
        a, b, frac = self.session_topics(users, ts)
        s = self.p.session_strength
        out = (1.0 - s) * self.user_interest[users]
        rows = np.arange(len(users))
        out[rows, a] += s * (1.0 - frac)
        out[rows, b] += s * frac
        return out

    def diurnal(self, country: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Logit shift from the local hour of day, in [-amplitude, amplitude]."""
        local_h = (ts / HOUR_MS + np.asarray(COUNTRY_UTC_OFFSET_H)[country]) % 24.0
        return self.p.diurnal_amplitude * np.cos(2 * np.pi * (local_h - self.p.diurnal_peak_h) / 24.0)

    def raw_logits(self, users: np.ndarray, items: np.ndarray, country: np.ndarray, gender: np.ndarray,
                   app: np.ndarray, device: np.ndarray, position: np.ndarray, ts: np.ndarray,
                   session: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """[N, T] logits of the raw per-action models (conditional for long_click and repin).

        ``session`` = (intent ``[N, D]``, video mood ``[N]``) replaces the user's true
        session state (``batch_prob_matrix`` averages over draws of it).
        """
        p = self.p
        intent, mood_now = session if session is not None else (self.intent(users, ts), self.video_mood(users, ts))
        aff = np.einsum("nd,nd->n", intent, self.item_topic[items]) - p.affinity_centre
        unwanted = self.item_topic[items, self.user_unwanted[users]]
        ctx = (np.asarray(p.country_bias)[country] + np.asarray(p.gender_bias)[gender]
               + np.asarray(p.app_bias)[app] + np.asarray(p.device_bias)[device])
        diurnal = self.diurnal(country, ts)
        pos = -p.position_decay * np.log1p(position)
        video = self.item_video[items]
        q, sq, act = self.item_quality[items], self.item_save_quality[items], self.user_activity[users]
        z = self._base[None, :] + aff[:, None] * self._aff_w[None, :]
        mood = p.video_mood_weight * mood_now * np.where(video, 1.0, -0.5)
        z[:, _IDX["click"]] += ctx + diurnal + pos + q + act + p.video_click_shift * video + mood
        z[:, _IDX["long_click"]] += 0.5 * q
        z[:, _IDX["closeup"]] += ctx + 0.7 * diurnal + 0.8 * pos + q + act + p.video_click_shift * video + mood
        z[:, _IDX["repin"]] += sq
        if p.save_from_stable:  # saves outside the current intent: the stable interest's affinity instead
            stable = np.einsum("nd,nd->n", self.user_interest[users], self.item_topic[items]) - p.affinity_centre
            z[:, _IDX["repin"]] += self._aff_w[_IDX["repin"]] * (stable - aff)
        if p.clickbait_weight:  # clicked, not saved
            cb = p.clickbait_weight * self.item_clickbait[items]
            z[:, _IDX["click"]] += cb
            z[:, _IDX["closeup"]] += cb
            z[:, _IDX["long_click"]] -= cb
            z[:, _IDX["repin"]] -= 1.5 * cb
        z[:, _IDX["hide"]] += p.unwanted_weight * unwanted + 0.3 * pos - 0.5 * q
        z[:, _IDX["video_view_10s"]] += diurnal + 0.5 * pos + q + act + mood
        if p.shift_country and p.shift_logit:
            shifted = p.shift_logit * ((country == COUNTRIES.index(p.shift_country)) & (ts >= p.shift_from_ms))
            z[:, _IDX["click"]] += shifted
            z[:, _IDX["closeup"]] += shifted
        return z

    def true_prob_matrix(self, users: np.ndarray, items: np.ndarray, country: np.ndarray, gender: np.ndarray,
                         app: np.ndarray, device: np.ndarray, position: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """[N, T] true marginal probability of each action (columns in ``ACTIONS`` order)."""
        r = sigmoid(self.raw_logits(users, items, country, gender, app, device, position, ts))
        return _marginals(r, self.item_video[items])

    def batch_prob_matrix(self, users: np.ndarray, items: np.ndarray, country: np.ndarray, gender: np.ndarray,
                          app: np.ndarray, device: np.ndarray, position: np.ndarray, ts: np.ndarray,
                          draws: int = 32, seed: int = 0) -> np.ndarray:
        """[N, T] the batch-knowledge ceiling: the true marginals averaged over the session state.

        What perfect knowledge of everything stable (user interest and unwanted
        topic, item, context, position, time of day) predicts when the session
        intent and video mood, which only recent behaviour reveals, are unknown:
        ``E[p | stable]`` with the session topics drawn uniformly (as the world
        draws them), the progress through the slot uniform and the mood's two ends
        fair coins. ``draws`` Monte-Carlo draws per row from a generator seeded by
        ``seed`` (the world's own random stream is not touched).
        """
        rng = np.random.default_rng(seed)
        n, d, s = len(users), self.p.n_topics, self.p.session_strength
        rows = np.arange(n)
        video = self.item_video[items]
        out = np.zeros((n, len(ACTIONS)))
        for _ in range(draws):
            a, b, frac = rng.integers(0, d, n), rng.integers(0, d, n), rng.random(n)
            intent = (1.0 - s) * self.user_interest[users]
            intent[rows, a] += s * (1.0 - frac)
            intent[rows, b] += s * frac
            ends = 2.0 * rng.integers(0, 2, (2, n)) - 1.0
            mood = ends[0] * (1.0 - frac) + ends[1] * frac
            z = self.raw_logits(users, items, country, gender, app, device, position, ts, session=(intent, mood))
            out += _marginals(sigmoid(z), video)
        return out / draws

    def true_probs(self, user: str, item: str, context: ScoreContext, position: int, ts: int) -> dict[str, float]:
        """True probability of every action for one impression (see ``true_prob_matrix``)."""
        ctx = self.context_codes(context)
        m = self.true_prob_matrix(np.array([_idx(user)]), np.array([_idx(item)]), *[np.array([c]) for c in ctx],
                                  np.array([position]), np.array([ts]))
        return {a: float(m[0, i]) for i, a in enumerate(ACTIONS)}

    def sample_labels(self, users: np.ndarray, items: np.ndarray, country: np.ndarray, gender: np.ndarray,
                      app: np.ndarray, device: np.ndarray, position: np.ndarray,
                      ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sample correlated outcomes; returns (labels [N, T] int8, true marginals [N, T])."""
        r = sigmoid(self.raw_logits(users, items, country, gender, app, device, position, ts))
        video = self.item_video[items]
        u = self._rng.random(r.shape)
        hit = u < r
        hide = hit[:, _IDX["hide"]]
        alive = ~hide
        lab = np.zeros(r.shape, dtype=np.int8)
        lab[:, _IDX["hide"]] = hide
        click = hit[:, _IDX["click"]] & alive
        closeup = hit[:, _IDX["closeup"]] & alive
        lab[:, _IDX["click"]] = click
        lab[:, _IDX["long_click"]] = click & hit[:, _IDX["long_click"]]
        lab[:, _IDX["closeup"]] = closeup
        lab[:, _IDX["repin"]] = closeup & hit[:, _IDX["repin"]]
        lab[:, _IDX["video_view_10s"]] = alive & video & hit[:, _IDX["video_view_10s"]]
        return lab, _marginals(r, video)

    # ----- requests and events ---------------------------------------------------------

    def context_codes(self, ctx: ScoreContext) -> tuple[int, int, int, int]:
        """(country, gender, app, device) indices of a score context."""
        return (_index_or(COUNTRIES, ctx.country), _index_or(GENDERS, ctx.gender, 2),
                _index_or(APP_TYPES, ctx.app_type), _index_or(DEVICE_TYPES, ctx.device_type))

    def context_for(self, user: int, ts: int) -> ScoreContext:
        return ScoreContext(surface=SURFACE, country=COUNTRIES[self.user_country[user]],
                            gender=GENDERS[self.user_gender[user]], app_type=APP_TYPES[self.user_app[user]],
                            device_type=DEVICE_TYPES[self.user_device[user]], ts=int(ts))

    def candidates_for(self, user: int, ts: int, n: int = 50, rng: np.random.Generator | None = None) -> list[Candidate]:
        """Retrieval stand-in: half the candidates from the user's interest topics, half random.

        ``rng``: draw from this generator instead of the world's own (the world's
        event stream then stays as it would be without the call).
        """
        rng = self._rng if rng is None else rng
        weights = self.user_interest[user] ** 2
        cdf = np.cumsum(weights)
        topics = np.minimum(np.searchsorted(cdf, rng.random(n // 2) * cdf[-1]), self.p.n_topics - 1)
        topics = topics[self._topic_size[topics] > 0]
        pos = self._topic_start[topics] + (rng.random(len(topics)) * self._topic_size[topics]).astype(np.int64)
        picked = np.concatenate([self._topic_order[pos], rng.integers(0, self.n_items, n - len(topics))])
        return [self.candidate(i) for i in dict.fromkeys(picked.tolist())]

    def candidate(self, item: int) -> Candidate:
        """Item ``item`` as a candidate: its id, type and the catalogue's features."""
        video = self.item_video[item]
        return Candidate(item_id=f"i{item}", item_type="video" if video else "organic",
                         features={"item_ctr_prior": float(self.item_ctr_prior[item]), "item_is_video": float(video)})

    def new_request(self, user: int | None = None, ts: int = DEFAULT_START_MS, n_candidates: int = 50) -> FeedRequest:
        """A feed request for ``user`` (random when None) at event time ``ts``."""
        u = int(self._rng.integers(0, self.n_users)) if user is None else int(user)
        rid = f"r{self.seed}-{self._next_request}"
        self._next_request += 1
        return FeedRequest(rid, u, int(ts), self.context_for(u, ts), self.candidates_for(u, ts, n_candidates))

    def show(self, request: FeedRequest, item_ids: Sequence[str]) -> Shown:
        """Show ``item_ids`` at positions 0..k-1 and sample the user's engagements."""
        k = len(item_ids)
        items = np.array([_idx(i) for i in item_ids], dtype=np.int64)
        u = request.user
        users = np.full(k, u)
        ts = np.full(k, request.ts, dtype=np.int64)
        pos = np.arange(k)
        c = self.context_codes(request.context)
        codes = [np.full(k, x) for x in c]
        labels, probs = self.sample_labels(users, items, *codes, pos, ts)
        ctx = request.context
        imps, engs = [], []
        delays = self._rng.integers(1_000, 20_000, size=(k, 2))
        dwell = self._rng.integers(10_000, 120_000, size=k)
        for j, item_id in enumerate(item_ids):
            eid = f"{request.request_id}:{j}"
            imps.append(Impression(event_id=eid, user_id=f"u{u}", item_id=item_id, request_id=request.request_id,
                                   ts=request.ts, surface=ctx.surface, position=j,
                                   item_type="video" if self.item_video[items[j]] else "organic",
                                   country=ctx.country, gender=ctx.gender, app_type=ctx.app_type,
                                   device_type=ctx.device_type))
            engs.append(self._engagements(eid, f"u{u}", item_id, request.request_id, request.ts,
                                          labels[j], int(delays[j, 0]), int(delays[j, 1]), int(dwell[j])))
        return Shown(imps, engs, probs, labels)

    def _engagements(self, eid: str, user_id: str, item_id: str, rid: str, ts: int, lab: np.ndarray,
                     d1: int, d2: int, dwell: int) -> list[Engagement]:
        if not lab.any():
            return []
        out: list[tuple[int, str, int | None]] = []
        if lab[_IDX["hide"]]:
            out.append((ts + d1, "hide", None))
        if lab[_IDX["click"]]:
            out.append((ts + d1, "click", None))
            if lab[_IDX["long_click"]]:
                out.append((ts + d1 + dwell, "long_click", dwell))
        if lab[_IDX["closeup"]]:
            out.append((ts + d2, "closeup", None))
            if lab[_IDX["repin"]]:
                out.append((ts + d2 + 3_000, "repin", None))
        if lab[_IDX["video_view_10s"]]:
            out.append((ts + 10_000, "video_view_10s", 10_000))
        out.sort(key=lambda x: x[0])
        return [Engagement(event_id=f"{eid}:{a}", user_id=user_id, item_id=item_id, request_id=rid, ts=t,
                           action=a, dwell_ms=dw) for t, a, dw in out]  # type: ignore[arg-type]

    def request_times(self, start_ms: int, requests_per_s: float) -> Iterator[tuple[int, int]]:
        """Endless (ts, user) request arrivals in event-time order, grouped in user sessions.

        Sessions start as a Poisson process (rate = requests_per_s / requests_per_session,
        modulated by the time of day of the user's country); each session sends a
        geometric number of requests separated by exponential gaps.
        """
        p = self.p
        rng = self._rng
        rate_ms = requests_per_s / p.requests_per_session / 1000.0
        heap: list[tuple[int, int, int]] = []  # (ts, user, requests left)
        t_next = float(start_ms)
        while True:
            t_next += rng.exponential(1.0 / (rate_ms * 1.5))
            while heap and heap[0][0] <= t_next:
                ts, u, left = heapq.heappop(heap)
                yield ts, u
                if left > 1:
                    heapq.heappush(heap, (ts + int(rng.exponential(p.request_gap_ms)) + 1, u, left - 1))
            u = int(rng.integers(0, self.n_users))
            local_h = (t_next / HOUR_MS + COUNTRY_UTC_OFFSET_H[self.user_country[u]]) % 24.0
            if rng.random() * 1.5 < 1.0 + 0.5 * math.cos(2 * math.pi * (local_h - p.diurnal_peak_h) / 24.0):
                heapq.heappush(heap, (int(t_next), u, int(rng.geometric(1.0 / p.requests_per_session))))

    def requests(self, start_ms: int = DEFAULT_START_MS, requests_per_s: float = 10.0,
                 n_candidates: int = 50) -> Iterator[FeedRequest]:
        """Endless feed requests in event-time order (see ``request_times``)."""
        for ts, u in self.request_times(start_ms, requests_per_s):
            yield self.new_request(u, ts, n_candidates)

    def stream(self, start_ms: int = DEFAULT_START_MS, impressions_per_s: float = 100.0, feed_size: int = 10,
               n_candidates: int = 30, ranker: Ranker | None = None) -> Iterator[tuple[Impression, list[Engagement]]]:
        """Endless (Impression, [Engagement...]) pairs at an event-time impression rate.

        ``ranker`` orders a request's candidates (default: retrieval order); the
        top ``feed_size`` are shown. Engagement timestamps trail their impression.
        """
        for req in self.requests(start_ms, impressions_per_s / feed_size, n_candidates):
            order = list(ranker(req)) if ranker else [c.item_id for c in req.candidates]
            shown = self.show(req, order[:feed_size])
            yield from zip(shown.impressions, shown.engagements)


#: named worlds: ``default``, and ``conflict`` where the tasks' drivers pull apart (clickbait is clicked and
#: not saved; saves follow the stable interest while clicks follow the session), so shared capacity binds
PRESETS: Mapping[str, WorldParams] = {
    "default": WorldParams(),
    "conflict": WorldParams(clickbait_weight=1.5, save_from_stable=True),
}


def preset_params(name: str) -> WorldParams:
    """The ``WorldParams`` of preset ``name`` (``PRESETS``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"world preset {name!r}: expected one of {', '.join(PRESETS)}") from None


def _marginals(r: np.ndarray, video: np.ndarray) -> np.ndarray:
    """Marginals of the correlated sampling process in ``World.sample_labels``."""
    ph = r[:, _IDX["hide"]]
    alive = 1.0 - ph
    m = np.empty_like(r)
    m[:, _IDX["hide"]] = ph
    m[:, _IDX["click"]] = alive * r[:, _IDX["click"]]
    m[:, _IDX["long_click"]] = m[:, _IDX["click"]] * r[:, _IDX["long_click"]]
    m[:, _IDX["closeup"]] = alive * r[:, _IDX["closeup"]]
    m[:, _IDX["repin"]] = m[:, _IDX["closeup"]] * r[:, _IDX["repin"]]
    m[:, _IDX["video_view_10s"]] = alive * r[:, _IDX["video_view_10s"]] * video
    return m


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _idx(entity_id: str) -> int:
    """``u12`` / ``i345`` -> 12 / 345."""
    return int(entity_id[1:])


def _index_or(values: Sequence[str], value: str, default: int = 0) -> int:
    try:
        return values.index(value)
    except ValueError:
        return default


__all__ = ["COUNTRIES", "FeedRequest", "GENDERS", "PRESETS", "Shown", "TASK_INDEX", "World", "WorldParams",
           "preset_params"]
