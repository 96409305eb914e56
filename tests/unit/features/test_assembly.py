"""The one feature-assembly function: shapes, ordering, determinism, calibration features."""

from __future__ import annotations

import numpy as np

from features.assembly import CAND_DENSE_NAMES, USER_DENSE_NAMES, FeatureSpec, assemble, calibration_features
from features.state import Candidate, Counts, FeedbackSnapshot, ScoreContext, SeqAction, UserState, stable_hash

SPEC = FeatureSpec(seq_len=8)
CTX = ScoreContext(surface="home", country="US", gender="f", app_type="ios", device_type="phone",
                   ts=1_704_067_200_000 + 3_600_000)


def _user(n: int) -> UserState:
    acts = tuple(SeqAction(f"i{k}", "click" if k % 2 else "repin", CTX.ts - (n - k) * 10_000, "home",
                           "video" if k % 3 == 0 else "organic") for k in range(n))
    return UserState("u1", acts, Counts(10, {"click": 2}), Counts(40, {"click": 5}))


def _cands() -> list[Candidate]:
    return [Candidate("i11", "organic", 0, {"item_ctr_prior": 0.05}), Candidate("i99", "video", 40)]


def test_shapes_and_dtypes() -> None:
    x = assemble(_user(12), FeedbackSnapshot({"all": Counts(1000, {"click": 40})}), CTX, _cands(), SPEC).arrays()
    assert x["user_id"].shape == (1,) and x["ctx"].shape == (6,)
    assert x["user_dense"].shape == (len(USER_DENSE_NAMES),) and x["user_dense"].dtype == np.float32
    for k in ("seq_item", "seq_action", "seq_type", "seq_age"):
        assert x[k].shape == (8,) and x[k].dtype == np.int64
    assert x["seq_mask"].dtype == np.bool_ and x["seq_mask"].all()  # 12 actions, 8 slots
    assert x["cand_dense"].shape == (2, len(CAND_DENSE_NAMES))
    assert x["cand_pos"].tolist() == [0, SPEC.position_buckets - 1]  # clipped
    assert x["cand_type"].tolist() == [1, 2]
    assert np.isfinite(x["user_dense"]).all() and np.isfinite(x["cand_dense"]).all()


def test_sequence_is_newest_first_and_padded() -> None:
    x = assemble(_user(3), FeedbackSnapshot(), CTX, _cands(), SPEC)
    assert x.seq_mask.tolist() == [True] * 3 + [False] * 5
    assert x.seq_item[0] == stable_hash("i2", SPEC.item_buckets - 1) + 1
    assert (x.seq_item[3:] == 0).all() and (x.seq_action[3:] == 0).all()
    assert list(x.seq_age[:3]) == sorted(x.seq_age[:3])  # older actions, larger age buckets


def test_empty_user_and_cross_features() -> None:
    x = assemble(UserState("u2"), FeedbackSnapshot(), CTX, _cands(), SPEC)
    assert not x.seq_mask.any()
    y = assemble(_user(12), FeedbackSnapshot(), CTX, _cands(), SPEC)
    hits = CAND_DENSE_NAMES.index("log_seq_item_hits")
    assert y.cand_dense[0, hits] > 0 and y.cand_dense[1, hits] == 0  # i11 is in the sequence


def test_deterministic() -> None:
    a = assemble(_user(5), FeedbackSnapshot(), CTX, _cands(), SPEC).arrays()
    b = assemble(_user(5), FeedbackSnapshot(), CTX, _cands(), SPEC).arrays()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_calibration_features_delegate() -> None:
    from features.calibration_features import CALIBRATION_FEATURE_NAMES

    m = calibration_features(np.zeros((2, 6), dtype=np.float32), _user(4), FeedbackSnapshot(), CTX, _cands())
    assert m.shape == (2, len(CALIBRATION_FEATURE_NAMES))


def test_hide_profile_reads_the_whole_history() -> None:
    """``hide_item``: the items hidden anywhere in the stored history (not only among the ``seq_len`` newest
    actions), newest first, at most ``hide_len``, hashed like ``seq_item``; zeros when the user never hid."""
    spec = FeatureSpec(seq_len=8, hide_len=4)
    acts = tuple(SeqAction(f"i{k}", "hide" if k in (1, 3, 5, 7, 9) else "click", CTX.ts - (40 - k) * 10_000, "home",
                           "organic") for k in range(40))
    x = assemble(UserState("u1", acts), FeedbackSnapshot(), CTX, _cands(), spec)
    assert not (x.seq_action == 5).any()  # no hide among the 8 newest actions
    assert x.hide_item.tolist() == [stable_hash(f"i{k}", spec.item_buckets - 1) + 1 for k in (9, 7, 5, 3)]
    assert not assemble(_user(12), FeedbackSnapshot(), CTX, _cands(), spec).hide_item.any()
