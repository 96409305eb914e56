"""Calibrators bootstrapped by the world replay log are calibrated on what serving then shows.

The demo fits its first calibrators on a replay log of the synthetic world
(``scorer.replay_world.world_replay_log``) served by the serving score function
itself. What matters to a feed team is the ratio of predicted to observed rates
on the items serving *shows*, under its own ranking policy; a log of other
picks over-predicted 1.5-2.2x there (issue #6). This test runs the bootstrap
(explore, then refit every 5 minutes of event time) on the tiny world for two
hours and checks every task with enough positives on the served rows after
the second refit. One hour was not enough for the rarest task: with a model
retrained after a change that only moved float rounding (the expert softmax
written out by hand), `hide` came out at 1.258 on 389 served positives after
one hour and at 1.084 on 937 after two (the other tasks within 0.99-1.03 both
times): its early calibrators are fit on few positives and their error is
shared by every row they score.

Its cost is the model's forward pass (~80 % of the time). Scoring 40 candidates
per request instead of 100, on one torch thread (two threads spin against
each other on a busy 2-core box), keeps the served rows and the positives per
task: on 2026-12-07, same box and load (~3), 73,210 served rows vs 70,150,
positives 1,173 (hide) to 8,753 per task vs 947 to 10,195, ratios 0.98-1.05 vs
0.99-1.06, in 121 s instead of 239 s (83 s in the suite; 564 s in issue 27's run).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from features.events import ACTIONS
from features.world import DEFAULT_START_MS, World

from conftest import TINY_WORLD

#: two hours of simulated traffic served by the model (about 1.5 minutes): in `make test-long`
pytestmark = [pytest.mark.slow, pytest.mark.long]

#: positives a task needs on the evaluated rows for its ratio to be checked (Poisson noise ~1/sqrt(n))
MIN_POSITIVES = 150
#: candidates scored per request (the feed shows 10 of them): the forward pass's cost
CANDIDATES = 40


@pytest.mark.timeout(900)
def test_bootstrapped_calibrators_match_observed_rates_on_served_items(tiny_model_dir: Path) -> None:
    from scorer.artifact import load_artifact
    from scorer.replay_world import SERVE, world_replay_log

    artifact = load_artifact(tiny_model_dir / "models")
    world = World(seed=TINY_WORLD["seed"], n_users=TINY_WORLD["users"], n_items=TINY_WORLD["items"])
    refit_s = 300.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        log = world_replay_log(world, artifact, None, hours=2.0, requests_per_s=1.0, refit_every_s=refit_s,
                               n_candidates=CANDIDATES)
    finally:
        torch.set_num_threads(threads)
    b = log.batch
    served = b.extras["served"]
    rows = (b.extras["policy"] == SERVE) & (b.ts >= DEFAULT_START_MS + 2 * refit_s * 1000)
    assert rows.sum() > 1000, "too few served rows to judge calibration"
    ratios: dict[str, float] = {}
    for t, task in enumerate(ACTIONS):
        m = rows & (b.mask[:, t] > 0) & ~np.isnan(served[:, t])
        positives = float(b.y[m, t].sum())
        if positives < MIN_POSITIVES:
            continue
        ratios[task] = float(served[m, t].sum()) / positives
    assert len(ratios) >= 3, f"too few tasks with {MIN_POSITIVES}+ positives to judge: {ratios}"
    off = {k: round(v, 3) for k, v in ratios.items() if not 0.85 <= v <= 1.15}
    assert not off, f"predicted/observed outside 0.85-1.15 on served items: {off} (all: {ratios})"
    # the policy shows what it ranks highest: served rows are not a random sample of the candidates
    assert np.mean(b.extras["policy"] == SERVE) > 0.5
