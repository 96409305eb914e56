"""The synthetic world: reproducible, contract-valid events, statistics that match its parameters."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from features.events import ACTIONS, Engagement, Impression, decode_event, encode_event
from features.world import COUNTRIES, DEFAULT_START_MS, HOUR_MS, TASK_INDEX, World, WorldParams

T = TASK_INDEX


@pytest.fixture(scope="module")
def world() -> World:
    return World(seed=3, n_users=400, n_items=1500)


def _sample(world: World, n: int, seed: int = 0, **fixed: object) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, world.n_users, n)
    cols = dict(users=u, items=rng.integers(0, world.n_items, n), country=world.user_country[u],
                gender=world.user_gender[u], app=world.user_app[u], device=world.user_device[u],
                position=rng.integers(0, 20, n), ts=DEFAULT_START_MS + rng.integers(0, 24 * HOUR_MS, n))
    for k, v in fixed.items():
        cols[k] = np.full(n, v)
    return cols


def test_same_seed_same_events() -> None:
    a = list(itertools.islice(World(seed=5, n_users=50, n_items=200).stream(), 200))
    b = list(itertools.islice(World(seed=5, n_users=50, n_items=200).stream(), 200))
    c = list(itertools.islice(World(seed=6, n_users=50, n_items=200).stream(), 200))
    assert a == b
    assert a != c


def test_stream_events_follow_the_contract(world: World) -> None:
    last_ts = 0
    n_eng = 0
    for imp, engs in itertools.islice(world.stream(impressions_per_s=50.0), 3000):
        assert isinstance(imp, Impression)
        assert decode_event(encode_event(imp)) == imp
        assert imp.ts >= last_ts  # impressions arrive in event-time order
        last_ts = imp.ts
        actions = {e.action for e in engs}
        for e in engs:
            assert isinstance(e, Engagement) and decode_event(encode_event(e)) == e
            assert (e.user_id, e.item_id, e.request_id) == (imp.user_id, imp.item_id, imp.request_id)
            assert e.ts >= imp.ts
        assert "long_click" not in actions or "click" in actions
        assert "repin" not in actions or "closeup" in actions
        assert "hide" not in actions or actions == {"hide"}
        assert "video_view_10s" not in actions or imp.item_type == "video"
        n_eng += len(engs)
    assert n_eng > 0


def test_empirical_rates_match_true_probabilities(world: World) -> None:
    cols = _sample(world, 200_000)
    labels, probs = world.sample_labels(*cols.values())
    for a, i in T.items():
        p = probs[:, i]
        se = np.sqrt((p * (1 - p)).sum()) / len(p)
        assert abs(labels[:, i].mean() - p.mean()) < 4 * se + 1e-4, a
    video = world.item_video[cols["items"]]
    assert labels[~video, T["video_view_10s"]].sum() == 0 and probs[~video, T["video_view_10s"]].max() == 0
    assert np.all(labels[:, T["long_click"]] <= labels[:, T["click"]])
    assert np.all(labels[:, T["repin"]] <= labels[:, T["closeup"]])
    hidden = labels[:, T["hide"]] == 1
    assert labels[hidden].sum() == hidden.sum()  # nothing else after a hide
    assert abs(video.mean() - world.p.video_share) < 0.03


def test_true_probs_follow_parameters(world: World) -> None:
    n = 20_000
    base = _sample(world, n, seed=1)
    click = T["click"]

    def mean_click(**over: object) -> float:
        cols = dict(base)
        cols.update({k: np.full(n, v) for k, v in over.items()})
        return float(world.true_prob_matrix(*cols.values())[:, click].mean())

    # country and gender base rates are ordered as their biases
    by_country = [mean_click(country=c) for c in range(len(COUNTRIES))]
    assert np.argsort(by_country).tolist() == np.argsort(world.p.country_bias).tolist()
    by_gender = [mean_click(gender=g) for g in range(3)]
    assert np.argsort(by_gender).tolist() == np.argsort(world.p.gender_bias).tolist()
    # position bias: strictly decreasing with position
    by_pos = [mean_click(position=p) for p in (0, 1, 3, 10)]
    assert by_pos == sorted(by_pos, reverse=True)
    # diurnal: local peak hour beats the local trough (US is UTC-5)
    peak = DEFAULT_START_MS + int((world.p.diurnal_peak_h + 5) % 24) * HOUR_MS
    trough = DEFAULT_START_MS + int((world.p.diurnal_peak_h + 5 + 12) % 24) * HOUR_MS
    assert mean_click(country=0, ts=peak) > 1.2 * mean_click(country=0, ts=trough)


def test_session_intent_drifts_smoothly(world: World) -> None:
    users = np.arange(200)
    t0 = np.full(200, DEFAULT_START_MS)
    a = world.intent(users, t0)
    b = world.intent(users, t0 + 60_000)
    c = world.intent(users, t0 + 2 * world.p.session_slot_ms)
    assert np.abs(a - b).sum(1).mean() < 0.2 * np.abs(a - c).sum(1).mean()
    assert np.abs(a - c).sum(1).mean() > 0.3


def test_hides_concentrate_on_unwanted_topic(world: World) -> None:
    cols = _sample(world, 50_000, seed=2)
    probs = world.true_prob_matrix(*cols.values())
    unwanted = world.item_topic[cols["items"], world.user_unwanted[cols["users"]]] > 0.7
    assert probs[unwanted, T["hide"]].mean() > 5 * probs[~unwanted, T["hide"]].mean()


def test_show_and_true_probs_api(world: World) -> None:
    req = world.new_request(user=7, ts=DEFAULT_START_MS + 3 * HOUR_MS, n_candidates=40)
    assert req.candidates and all(c.features["item_ctr_prior"] > 0 for c in req.candidates)
    shown = world.show(req, [c.item_id for c in req.candidates[:5]])
    assert [i.position for i in shown.impressions] == list(range(5))
    one = world.true_probs(req.user_id, req.candidates[2].item_id, req.context, 2, req.ts)
    assert set(one) == set(ACTIONS)
    assert np.allclose([one[a] for a in ACTIONS], shown.true_probs[2])


def test_params_change_the_world() -> None:
    loud = World(seed=1, n_users=100, n_items=300, params=WorldParams(position_decay=0.0))
    n = 5000
    cols = _sample(loud, n)
    p0 = loud.true_prob_matrix(*{**cols, "position": np.zeros(n, dtype=np.int64)}.values())
    p9 = loud.true_prob_matrix(*{**cols, "position": np.full(n, 9)}.values())
    assert np.allclose(p0[:, T["click"]], p9[:, T["click"]])


def test_injected_shift_moves_one_country_from_its_time_on() -> None:
    at = DEFAULT_START_MS + HOUR_MS
    base = World(seed=1, n_users=200, n_items=300)
    shifted = World(seed=1, n_users=200, n_items=300,
                    params=WorldParams(shift_country="US", shift_from_ms=at, shift_logit=0.7))
    n = 4000
    cols = _sample(base, n)
    for ts, moved in ((at - 1, False), (at, True)):
        cols["ts"] = np.full(n, ts)
        p0, p1 = base.true_prob_matrix(*cols.values()), shifted.true_prob_matrix(*cols.values())
        us = cols["country"] == COUNTRIES.index("US")
        assert us.any() and (~us).any()
        assert np.allclose(p0[~us], p1[~us])  # other countries never move
        for task in ("click", "closeup"):
            ratio = p1[us, T[task]].mean() / p0[us, T[task]].mean()
            assert (1.6 < ratio < 2.1) if moved else ratio == pytest.approx(1.0)
        assert np.allclose(p0[us, T["hide"]], p1[us, T["hide"]])
    with pytest.raises(ValueError, match="shift_country"):
        WorldParams(shift_country="XX")


def test_batch_ceiling_is_the_truth_without_session_state() -> None:
    quiet = World(seed=3, n_users=100, n_items=400, params=WorldParams(session_strength=0.0, video_mood_weight=0.0))
    c = _sample(quiet, 3000, seed=4)
    args = [c[k] for k in ("users", "items", "country", "gender", "app", "device", "position", "ts")]
    # no session intent and no mood: knowing everything stable is knowing everything
    assert np.allclose(quiet.batch_prob_matrix(*args, draws=4), quiet.true_prob_matrix(*args))
    w = World(seed=3, n_users=100, n_items=400)
    c = _sample(w, 3000, seed=4)
    args = [c[k] for k in ("users", "items", "country", "gender", "app", "device", "position", "ts")]
    truth, batch = w.true_prob_matrix(*args), w.batch_prob_matrix(*args, draws=32)
    assert np.array_equal(batch, w.batch_prob_matrix(*args, draws=32))  # seeded, the world's stream untouched
    assert batch.shape == truth.shape and not np.allclose(batch, truth, atol=1e-3)
    click = T["click"]
    # the batch ceiling is a smoothed truth: less spread, still ordered with it
    assert batch[:, click].std() < truth[:, click].std()
    assert np.corrcoef(batch[:, click], truth[:, click])[0, 1] > 0.5
    # hide's driver (the unwanted topic) is stable: the ceiling keeps most of it
    hide = T["hide"]
    assert np.corrcoef(batch[:, hide], truth[:, hide])[0, 1] > 0.9


def test_conflict_preset_pulls_click_and_save_apart() -> None:
    from features.world import preset_params

    d = World(seed=3, n_users=200, n_items=600)
    cf = World(seed=3, n_users=200, n_items=600, params=preset_params("conflict"))
    c = _sample(d, 4000, seed=5)
    args = [c[k] for k in ("users", "items", "country", "gender", "app", "device", "position", "ts")]
    cb = cf.item_clickbait[c["items"]]
    pd, pc = d.true_prob_matrix(*args), cf.true_prob_matrix(*args)
    # clickbait raises clicks and lowers saves given a closeup
    assert np.corrcoef(cb, np.log(pc[:, T["click"]] / pd[:, T["click"]]))[0, 1] > 0.9
    save_rate = pc[:, T["repin"]] / pc[:, T["closeup"]]
    assert np.corrcoef(cb, np.log(save_rate))[0, 1] < -0.3
    with pytest.raises(ValueError, match="conflict"):
        preset_params("nope")
