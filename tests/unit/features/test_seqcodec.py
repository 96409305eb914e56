"""The compact sequence codec: round-trip, event-time order, dedup, bound, order independence."""

from __future__ import annotations

import random

import pytest

from features.events import ACTIONS
from features.seqcodec import ADDED, DUPLICATE, TOO_OLD, ActionSequence, SeqCodecError, decode, encode

T0 = 1_764_000_000_000


def add(seq: ActionSequence, i: int, ts: int, action: str = "click", **kw) -> bool:
    return seq.add(event_id=f"e{i}", item_id=f"item{i}", action=action, ts=ts, surface=kw.get("surface", "home"),
                   item_type=kw.get("item_type", "organic"), dwell_ms=kw.get("dwell_ms", 0)) == ADDED


def test_round_trip_keeps_every_field() -> None:
    seq = ActionSequence(16)
    for i, a in enumerate(ACTIONS):
        add(seq, i, T0 + i * 1000, a, surface=f"s{i}", item_type="video" if i % 2 else "organic", dwell_ms=i * 7)
    blob = encode(seq)
    back = decode(blob, 16)
    assert back == seq
    assert back.actions() == seq.actions()
    acts = back.actions()
    assert [a.action for a in acts] == list(ACTIONS)
    assert acts[3].surface == "s3" and acts[3].item_type == "video" and acts[3].dwell_ms == 21
    # compact: far below a JSON encoding
    assert len(blob) < 40 * len(ACTIONS)


def test_empty_round_trip_and_corrupt_blobs() -> None:
    assert len(decode(encode(ActionSequence(4)))) == 0
    with pytest.raises(SeqCodecError):
        decode(b"\x01")
    with pytest.raises(SeqCodecError):
        decode(b"\x09\x00\x00\x00\x00")
    blob = encode_one()
    with pytest.raises(SeqCodecError):
        decode(blob[:-12])


def encode_one() -> bytes:
    s = ActionSequence(4)
    add(s, 1, T0)
    add(s, 2, T0 + 1)
    return encode(s)


def test_out_of_order_events_land_in_order_and_duplicates_apply_once() -> None:
    seq = ActionSequence(10)
    assert add(seq, 1, T0 + 300)
    assert add(seq, 2, T0 + 100)
    assert add(seq, 3, T0 + 200)
    assert not add(seq, 2, T0 + 100)  # same event id again
    assert add(seq, 4, T0 + 200)  # same ts, other event
    assert not add(seq, 4, T0 + 200)
    ts = [a.ts for a in seq.actions()]
    assert ts == sorted(ts) and len(ts) == 4


def test_bounded_keeps_the_newest() -> None:
    seq = ActionSequence(5)
    for i in range(20):
        add(seq, i, T0 + i)
    assert len(seq) == 5
    assert [a.item_id for a in seq.actions()] == [f"item{i}" for i in range(15, 20)]
    assert seq.add(event_id="old", item_id="x", action="click", ts=T0 - 5, surface="", item_type="organic") == TOO_OLD
    assert seq.add(event_id="e19", item_id="x", action="click", ts=T0 + 19, surface="", item_type="organic") == DUPLICATE
    assert len(decode(encode(seq), 3)) == 3


def test_final_content_is_independent_of_arrival_order() -> None:
    rng = random.Random(7)
    events = [(i, T0 + rng.randrange(0, 50)) for i in range(60)]
    events += events[:10]  # duplicates
    want = None
    for _ in range(5):
        rng.shuffle(events)
        seq = ActionSequence(16)
        for i, ts in events:
            add(seq, i, ts)
        got = encode(seq)
        want = want or got
        assert got == want


def test_set_context_fills_surface_and_type() -> None:
    seq = ActionSequence(4)
    seq.add(event_id="x", item_id="i", action="click", ts=T0, surface="", item_type="unknown")
    assert seq.actions()[0].item_type == "unknown"
    assert seq.set_context("x", "home", "video")
    assert not seq.set_context("nope", "home", "video")
    a = decode(encode(seq)).actions()[0]
    assert (a.surface, a.item_type) == ("home", "video")


def test_score_path_decode_keeps_the_whole_historys_hides() -> None:
    """The score process decodes only the newest actions the model reads, but the long-term hide profile is
    over the whole stored history: ``EncodedUserState.decode(newest)`` carries every hidden item, newest first,
    equal to what the full decode gives (the replay's and training's path)."""
    from features.seqcodec import EncodedUserState

    seq = ActionSequence(256)
    for i in range(200):
        add(seq, i, T0 + i * 1000, "hide" if i % 9 == 0 else "click")
    enc = EncodedUserState("u1", encode(seq))
    full, cut = enc.decode(), enc.decode(32)
    assert len(cut.actions) == 32 and cut.n_actions == 200 and cut.actions == full.actions[-32:]
    hides = tuple(f"item{i}" for i in range(198, -1, -1) if i % 9 == 0)
    assert full.hidden_items(100) == cut.hidden_items(100) == hides  # 23 hides, most older than the newest 32
    assert cut.hidden_items(5) == hides[:5] and enc.decode(32, hidden=3).hidden_items(5) == hides[:3]
    assert EncodedUserState("u2").decode(32).hidden_items(8) == ()
