"""The event contract: valid events round-trip, every kind of bad input is refused with a reason."""

from __future__ import annotations

import json

import pytest

from features.events import (
    MAX_MESSAGE_BYTES,
    Engagement,
    EventDecodeError,
    Impression,
    decode_event,
    encode_event,
)

TS = 1_764_000_000_000

IMPRESSION = dict(event_id="e1", user_id="u1", item_id="i1", request_id="r1", ts=TS, surface="home",
                  position=3, item_type="video", country="US", gender="f", app_type="ios",
                  device_type="phone")
ENGAGEMENT = dict(event_id="e2", user_id="u1", item_id="i1", request_id="r1", ts=TS + 5, action="repin",
                  dwell_ms=1200)


def raw(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_round_trip() -> None:
    imp = Impression(**IMPRESSION)
    eng = Engagement(**ENGAGEMENT)
    assert decode_event(encode_event(imp)) == imp
    assert decode_event(encode_event(eng)) == eng
    assert decode_event(raw(IMPRESSION), Impression) == imp  # kind inferred from the fields


BAD: list[tuple[str, bytes | None, str]] = [
    ("garbage bytes", b"\xff\xfe\x00garbage", "not UTF-8"),
    ("truncated JSON", raw(IMPRESSION)[:-7], "not JSON"),
    ("JSON array", b"[1, 2]", "not a JSON object"),
    ("null value", None, "empty message"),
    ("deep nesting", b"[" * 3000 + b"]" * 3000, "too large"),
    ("oversize", raw({**IMPRESSION, "surface": "x" * MAX_MESSAGE_BYTES}), "too large"),
    ("wrong type position", raw({**IMPRESSION, "position": "3"}), "position"),
    ("float ts", raw({**IMPRESSION, "ts": 1.5e12}), "ts"),
    ("negative position", raw({**IMPRESSION, "position": -1}), "position"),
    ("ts far past", raw({**IMPRESSION, "ts": 1000}), "ts"),
    ("ts far future", raw({**IMPRESSION, "ts": 9_999_999_999_999}), "ts"),
    ("unknown action", raw({**ENGAGEMENT, "action": "like"}), "action"),
    ("missing field", raw({k: v for k, v in IMPRESSION.items() if k != "country"}), "country"),
    ("empty id", raw({**ENGAGEMENT, "user_id": ""}), "user_id"),
    ("id too long", raw({**ENGAGEMENT, "item_id": "i" * 65}), "item_id"),
    ("unicode id", raw({**ENGAGEMENT, "user_id": "u\u202e1"}), "user_id"),
    ("unknown item type", raw({**IMPRESSION, "item_type": "ad"}), "item_type"),
    ("extra field", raw({**IMPRESSION, "debug": True}), "debug"),
    ("unknown kind", raw({**IMPRESSION, "kind": "purchase"}), "kind"),
    ("bool as int", raw({**IMPRESSION, "position": True}), "position"),
]


@pytest.mark.parametrize("name,payload,reason", BAD, ids=[b[0] for b in BAD])
def test_bad_events_are_refused_with_a_reason(name: str, payload: bytes | None, reason: str) -> None:
    with pytest.raises(EventDecodeError) as info:
        decode_event(payload)
    assert reason in info.value.reason


def test_expected_kind_is_enforced() -> None:
    with pytest.raises(EventDecodeError, match="expected impression"):
        decode_event(raw({**ENGAGEMENT, "kind": "engagement"}), Impression)
    # without a kind the topic decides: an engagement body is an incomplete impression
    with pytest.raises(EventDecodeError, match="surface: Field required"):
        decode_event(raw(ENGAGEMENT), Impression)
