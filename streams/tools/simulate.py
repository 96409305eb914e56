"""``feedrank simulate``: closed-loop feed traffic against a running worker.

Simulated users of the synthetic world ask ``POST /score`` for a ranking of
their candidates, are shown the top items, and react with the world's true
probabilities: their impressions are produced at once and each engagement at
its own event time, so event time tracks wall time. Ranking quality is
measured against the truth: the share of the achievable gain in true expected
utility over a random pick that the shown items capture (0 = random, 1 = the
world's best possible pick).
Stats go to a JSON file every few seconds for the demo's summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import collections
import heapq
import itertools
import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: a request due this long ago is skipped, not sent late (the simulator fell behind its rate)
MAX_LATE_MS = 2_000


def true_utility(world, req, item_ids: list[str], weights) -> np.ndarray:
    """True expected utility of each item for ``req``'s user and context (blender weights, position 0)."""
    from features.events import ACTIONS

    k = len(item_ids)
    items = np.array([int(i[1:]) for i in item_ids], dtype=np.int64)
    ctx = world.context_codes(req.context)
    probs = world.true_prob_matrix(np.full(k, req.user), items, *[np.full(k, c) for c in ctx],
                                   np.zeros(k, dtype=np.int64), np.full(k, req.ts))
    w = np.array([[weights.get("video" if world.item_video[i] else "organic", {}).get(a, 0.0) for a in ACTIONS]
                  for i in items])
    return (probs * w).sum(axis=1)


def ranking_quality(world, req, ranked_ids: list[str], weights) -> tuple[float, float, float]:
    """(ranked, random, best): true utility summed over the top ``k`` as ranked, in expectation for a
    random pick of ``k`` candidates, and for the best possible ``k`` (the world's truth)."""
    k = len(ranked_ids)
    u = dict(zip((c.item_id for c in req.candidates),
                 true_utility(world, req, [c.item_id for c in req.candidates], weights)))
    values = np.array(sorted(u.values(), reverse=True))
    return float(sum(u[i] for i in ranked_ids)), float(values.mean() * k), float(values[:k].sum())


def gain_captured(ranked: float, random_: float, best: float) -> float | None:
    """Share of the achievable gain over random that the ranking captured (0 = random, 1 = perfect)."""
    return (ranked - random_) / (best - random_) if best > random_ else None


def gain_interval(n: int, sa: float, sb: float, saa: float, sbb: float, sab: float,
                  z: float = 1.96) -> tuple[float, float] | None:
    """95 % interval (``z``) of the gain ``sum a / sum b`` over ``n`` requests, from running sums only: per
    request ``a`` = ranked - random, ``b`` = best - random; ``sa``, ``sb`` their sums, ``saa``, ``sbb``,
    ``sab`` the sums of ``a²``, ``b²``, ``a·b``. The ratio estimator's standard error (delta method):
    sqrt(sum (a - R b)² / (n (n - 1))) / mean b. None under 2 requests or without a gain to capture."""
    if n < 2 or sb <= 0:
        return None
    r = sa / sb
    resid = max(saa - 2 * r * sab + r * r * sbb, 0.0)
    se = math.sqrt(resid / (n * (n - 1))) / (sb / n)
    return r - z * se, r + z * se


class Simulator:
    def __init__(self, url: str, bootstrap: str, settings, users: int, items: int, seed: int,
                 requests_per_s: float, feed_size: int, candidates: int, stats_path: Path | None,
                 params=None) -> None:
        from features.world import World
        from scorer.blender import DEFAULT_WEIGHTS

        from streams.serving.client import ScorerClient
        from streams.kafka.producer import EventProducer

        self.world = World(seed=seed, n_users=users, n_items=items, params=params)
        self.client = ScorerClient(url, timeout_s=2.0, retries=2)
        self.producer = EventProducer(bootstrap, settings)
        self.requests_per_s = requests_per_s
        self.feed_size = feed_size
        self.candidates = candidates
        self.stats_path = stats_path
        self.weights = {k: dict(v) for k, v in DEFAULT_WEIGHTS.items()}
        self.latencies: list[float] = []
        self.stats: dict[str, Any] = {"requests": 0, "scored": 0, "failed": 0, "unavailable": 0, "skipped_late": 0,
                                      "impressions": 0,
                                      "engagements": 0, "utility_ranked": 0.0, "utility_random": 0.0,
                                      "utility_best": 0.0, "gain_aa": 0.0, "gain_bb": 0.0, "gain_ab": 0.0}
        self.engaged: collections.Counter[str] = collections.Counter()  # engagements sent, by user
        self._stop = False

    def stop(self, *_: object) -> None:
        self._stop = True

    def _request_body(self, req) -> dict[str, Any]:
        c = req.context
        return {"user_id": req.user_id, "request_id": req.request_id, "top_k": self.feed_size,
                "context": {"surface": c.surface, "country": c.country, "gender": c.gender, "app_type": c.app_type,
                            "device_type": c.device_type, "ts": req.ts},
                "candidates": [{"item_id": x.item_id, "item_type": x.item_type, "position": 0,
                                "features": dict(x.features)} for x in req.candidates]}

    def run(self, duration_s: float) -> dict[str, Any]:
        from streams.serving.client import ScorerError

        start_wall = time.time()
        start_ms = int(start_wall * 1000)
        pending: list[tuple[int, int, Any]] = []
        seq = itertools.count()
        last_write = 0.0
        from scorer.progress import Progress

        bar = Progress("simulate", duration_s, "s", enabled=duration_s < 10 ** 8)  # the demo's runs are open-ended
        for req in self.world.requests(start_ms=start_ms, requests_per_s=self.requests_per_s,
                                       n_candidates=self.candidates):
            if self._stop or time.time() - start_wall > duration_s:
                break
            # event time is wall time: wait for the request's moment, sending due engagements
            while True:
                now_ms = int(time.time() * 1000)
                while pending and pending[0][0] <= now_ms:
                    self.producer.send(heapq.heappop(pending)[2])
                    self.stats["engagements"] += 1
                if now_ms >= req.ts or self._stop:
                    break
                time.sleep(min(0.01, (req.ts - now_ms) / 1000))
            if now_ms - req.ts > MAX_LATE_MS:
                # a user does not wait for a feed: a simulator that fell behind (a busy box) skips the request
                # instead of sending a burst to catch up (seen on a first run: 10/s asked, 15-30/s sent)
                self.stats["skipped_late"] += 1
                continue
            if now_ms > req.ts:
                # stamped with the time it is sent, as a feed server stamps a request: a late simulator's
                # engagements sent meanwhile are older than it (else they were served "from the future")
                req = dataclasses.replace(req, ts=now_ms, context=dataclasses.replace(req.context, ts=now_ms))
            self.stats["requests"] += 1
            t0 = time.perf_counter()
            try:
                resp = self.client.score(self._request_body(req))
                ranked = [it.item_id for it in resp.items]
                self.latencies.append((time.perf_counter() - t0) * 1000)
                self.stats["scored"] += 1
            except ScorerError as exc:
                # 503: no model served yet (the first run's set-up); anything else is a failure
                self.stats["unavailable" if exc.status == 503 else "failed"] += 1
                log.debug("score failed: %s", exc)
                ranked = None
            shown_ids = (ranked if ranked is not None else [c.item_id for c in req.candidates])[: self.feed_size]
            if ranked is not None:  # ranking quality is the ranker's: only requests it scored count
                got, rand, best = ranking_quality(self.world, req, shown_ids, self.weights)
                self.stats["utility_ranked"] += got
                self.stats["utility_random"] += rand
                self.stats["utility_best"] += best
                a, b = got - rand, best - rand  # for the gain's interval over requests (``gain_interval``)
                self.stats["gain_aa"] += a * a
                self.stats["gain_bb"] += b * b
                self.stats["gain_ab"] += a * b
            shown = self.world.show(req, shown_ids)
            for imp, engs in zip(shown.impressions, shown.engagements):
                self.producer.send(imp)
                self.stats["impressions"] += 1
                self.engaged[req.user_id] += len(engs)
                for e in engs:
                    heapq.heappush(pending, (e.ts, next(seq), e))
            bar.update(time.time() - start_wall, f"{self.stats['scored']:,} scored, {self.stats['failed']:,} failed")
            if self.stats_path and time.monotonic() - last_write > 2.0:
                last_write = time.monotonic()
                self._write_stats()
        self.producer.flush()
        bar.close()
        self._write_stats()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latencies) if self.latencies else np.array([np.nan])
        s = dict(self.stats)
        s["score_p50_ms"] = float(np.nanpercentile(lat, 50))
        s["score_p99_ms"] = float(np.nanpercentile(lat, 99))
        s["gain_captured"] = gain_captured(s["utility_ranked"], s["utility_random"], s["utility_best"])
        s["gain_interval"] = gain_interval(s["scored"], s["utility_ranked"] - s["utility_random"],
                                           s["utility_best"] - s["utility_random"], s["gain_aa"], s["gain_bb"],
                                           s["gain_ab"])
        busiest = self.engaged.most_common(1)
        s["busiest_user"] = busiest[0][0] if busiest else None  # a user whose sequence has data
        return s

    def _write_stats(self) -> None:
        if not self.stats_path:
            return
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.summary()))
        os.replace(tmp, self.stats_path)


def _cmd(args: argparse.Namespace) -> int:
    from features.world import WorldParams
    from streams.kafka.broker import resolve_broker
    from streams.settings import Settings

    settings = Settings()
    params = WorldParams(shift_country=args.shift_country, shift_from_ms=int(args.shift_at_ms),
                         shift_logit=float(args.shift_logit)) if args.shift_country else None
    broker = resolve_broker(log_dir=settings.log_dir)
    try:
        sim = Simulator(args.url or settings.url, broker.bootstrap, settings, int(args.users), int(args.items),
                        int(args.seed), float(args.requests_per_s), int(args.feed_size), int(args.candidates),
                        Path(args.stats) if args.stats else None, params)
        signal.signal(signal.SIGTERM, sim.stop)
        signal.signal(signal.SIGINT, sim.stop)
        print(json.dumps(sim.run(float(args.duration)), indent=2))
    finally:
        broker.stop()
    return 0


def register(sub) -> None:
    from features.world import COUNTRIES
    from streams.cli import env_flag

    p = sub.add_parser("simulate", help="closed-loop feed traffic: score, show, engage (needs a running worker)")
    env_flag(p, "--url", envvar="FEEDRANK_SIMULATE_URL", default=None, help="worker URL (default: this worker's)")
    env_flag(p, "--requests-per-s", envvar="FEEDRANK_SIMULATE_RPS", default=10, help="feed requests per second")
    env_flag(p, "--users", envvar="FEEDRANK_WORLD_USERS", default=1000, help="users in the synthetic world")
    env_flag(p, "--items", envvar="FEEDRANK_WORLD_ITEMS", default=1000, help="items in the synthetic world")
    env_flag(p, "--seed", envvar="FEEDRANK_SEED", default=0, help="world seed")
    env_flag(p, "--feed-size", envvar="FEEDRANK_FEED_SIZE", default=10, help="items shown per request")
    env_flag(p, "--candidates", envvar="FEEDRANK_CANDIDATES", default=100, help="candidates per request")
    env_flag(p, "--duration", envvar="FEEDRANK_SIMULATE_DURATION", default=10 ** 9, help="seconds to run")
    env_flag(p, "--stats", envvar="FEEDRANK_SIMULATE_STATS", default=None, help="write running stats to this JSON file")
    p.add_argument("--shift-country", default="", choices=("", *COUNTRIES), help="inject a behaviour shift: this country's users click and "
                   "close up more (or less) from --shift-at-ms on (the live calibration benchmark's shift)")
    p.add_argument("--shift-at-ms", default=0, type=int, help="event time (epoch ms) the shift starts")
    p.add_argument("--shift-logit", default=0.7, type=float, help="logit added to click and closeup (0.7: about 2x)")
    p.set_defaults(func=_cmd)
