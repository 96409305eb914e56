"""The vectorized candidate features equal the per-candidate reference on random requests.

Training, replay and serving all call the one vectorized path; this pins it to the
one-candidate-at-a-time definition it replaced (``reference_features``).
"""

from __future__ import annotations

import numpy as np
import pytest

from features.assembly import FeatureSpec, assemble, calibration_features
from features.calibration_features import set_positions
from features.candidates import CandidateColumns
from features.events import ACTIONS
from features.state import Candidate, Counts, FeedbackSnapshot, ScoreContext, SeqAction, UserState

from reference_features import reference_calibration_features, reference_candidate_inputs

TS = 1_704_067_200_000 + 5 * 3_600_000


def _random_request(seed: int):
    rng = np.random.default_rng(seed)
    n_items = int(rng.integers(5, 60))
    n_actions = int(rng.integers(0, 50))
    types = ("organic", "video", "other")
    acts = tuple(SeqAction(f"i{int(rng.integers(n_items))}", ACTIONS[int(rng.integers(len(ACTIONS)))],
                           TS - int(rng.integers(0, 10**8)), "home", types[int(rng.integers(3))])
                 for _ in range(n_actions))
    acts = tuple(sorted(acts, key=lambda a: a.ts))
    user = UserState("u1", acts, Counts(int(rng.integers(0, 50)), {"click": int(rng.integers(0, 5))}),
                     Counts(int(rng.integers(0, 500)), {"hide": 1, "repin": int(rng.integers(0, 9))}))
    fb = FeedbackSnapshot({"all": Counts(5000, {a: int(rng.integers(0, 300)) for a in ACTIONS}),
                           "c:US": Counts(int(rng.integers(0, 900)), {"click": 30})})
    ctx = ScoreContext("home", "US", "f", "ios", "phone", TS)
    cands = []
    for _ in range(int(rng.integers(1, 80))):
        f: dict[str, float] = {}
        if rng.random() < 0.6:
            f["item_ctr_prior"] = float(rng.choice([0.0, 1.0, rng.random()]))
        if rng.random() < 0.4:
            f["item_impressions_1d"] = float(rng.integers(0, 5000))
            for a in ACTIONS:
                if rng.random() < 0.5:
                    f[f"item_actions_1d:{a}"] = float(rng.integers(0, 300))
        if rng.random() < 0.2:
            f["unrelated"] = 3.0
        cands.append(Candidate(f"i{int(rng.integers(n_items))}", types[int(rng.integers(3))],
                               int(rng.integers(0, 200)), f))
    logits = rng.normal(0, 4, size=(len(cands), len(ACTIONS)))
    return user, fb, ctx, cands, logits


@pytest.mark.parametrize("seed", range(40))
def test_vectorized_path_equals_the_per_candidate_reference(seed: int) -> None:
    user, fb, ctx, cands, logits = _random_request(seed)
    spec = FeatureSpec(seq_len=16)
    got = assemble(user, fb, ctx, cands, spec).arrays()
    want = reference_candidate_inputs(user, ctx, cands, spec)
    for k in ("cand_item", "cand_type", "cand_pos"):
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    np.testing.assert_allclose(got["cand_dense"], want["cand_dense"], rtol=1e-6, atol=1e-6)
    # columns in and a Candidate list in give the same inputs (serving passes columns, training lists)
    cols = assemble(user, fb, ctx, CandidateColumns.of(cands), spec).arrays()
    for k, v in got.items():
        np.testing.assert_array_equal(cols[k], v, err_msg=k)

    X = calibration_features(logits, user, fb, ctx, cands)
    np.testing.assert_allclose(X, reference_calibration_features(logits, user, fb, ctx, cands), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", range(10))
def test_rows_reread_at_their_rank_equal_features_computed_at_that_rank(seed: int) -> None:
    user, fb, ctx, cands, logits = _random_request(seed)
    X = calibration_features(logits, user, fb, ctx, cands)
    order = np.random.default_rng(seed).permutation(len(cands))[: max(1, len(cands) // 2)]
    ranked = [Candidate(cands[i].item_id, cands[i].item_type, r, cands[i].features) for r, i in enumerate(order)]
    moved = set_positions(X[order].copy(), np.arange(len(order)))
    np.testing.assert_array_equal(moved, calibration_features(logits[order], user, fb, ctx, ranked))
    taken = CandidateColumns.of(cands).take(order, position=np.arange(len(order)))
    np.testing.assert_array_equal(moved, calibration_features(logits[order], user, fb, ctx, taken))


@pytest.mark.parametrize("n_actions", [0, 5, 16, 40, 256])
def test_decoding_only_the_newest_actions_gives_the_same_features(n_actions: int) -> None:
    from features.seqcodec import ActionSequence, EncodedUserState

    seq = ActionSequence()
    for k in range(n_actions):
        seq.add(event_id=f"e{k}", item_id=f"i{k % 23}", action=ACTIONS[k % len(ACTIONS)], ts=TS - 10_000 * (300 - k),
                surface="home", item_type="video" if k % 3 else "organic")
    enc = EncodedUserState("u1", seq.encode() if n_actions else b"", Counts(9, {"click": 1}), Counts(50, {}))
    spec = FeatureSpec(seq_len=16)
    full, cut = enc.decode(), enc.decode(spec.seq_len)
    assert full.n_actions == cut.n_actions == n_actions and len(cut.actions) == min(n_actions, 16)
    _, fb, ctx, cands, logits = _random_request(n_actions)
    a, b = assemble(full, fb, ctx, cands, spec).arrays(), assemble(cut, fb, ctx, cands, spec).arrays()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    np.testing.assert_array_equal(calibration_features(logits, full, fb, ctx, cands),
                                  calibration_features(logits, cut, fb, ctx, cands))
