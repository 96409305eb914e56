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


# -- the fast decoder (features.events.decode_event_fast) agrees with decode_event ------------------

def _corpus() -> list[bytes | None]:
    import random

    good = [raw(IMPRESSION), raw(ENGAGEMENT), raw({**ENGAGEMENT, "dwell_ms": None}),
            raw({k: v for k, v in ENGAGEMENT.items() if k != "dwell_ms"}),
            encode_event(Impression(**IMPRESSION)), encode_event(Engagement(**ENGAGEMENT)),
            raw({**IMPRESSION, "kind": "impression"}), raw({**ENGAGEMENT, "kind": "engagement"}),
            b" \n\t" + raw(IMPRESSION) + b"\r\n "]
    out: list[bytes | None] = [p for _n, p, _r in BAD] + good
    out += [
        raw({**IMPRESSION, "kind": "engagement"}), raw({**ENGAGEMENT, "kind": "impression"}),
        raw({**IMPRESSION, "kind": None}), raw({**ENGAGEMENT, "kind": 3}),
        raw({**IMPRESSION, "ts": float(TS)}), raw({**IMPRESSION, "position": 3.0}),
        raw({**IMPRESSION, "ts": str(TS)}), raw({**ENGAGEMENT, "dwell_ms": -1}),
        raw({**ENGAGEMENT, "dwell_ms": True}), raw({**IMPRESSION, "country": "us"}),
        raw({**IMPRESSION, "country": "US\n"}), raw({**IMPRESSION, "gender": "x"}),
        raw({**IMPRESSION, "ts": 10**30}), raw({**IMPRESSION, "user_id": None}),
        raw(IMPRESSION).replace(b'"position": 3', b'"position": -0'),
        raw(IMPRESSION).replace(b'"position": 3', b'"position": 3e0'),
        raw(IMPRESSION).replace(b'"position": 3', b'"position": NaN'),
        raw(IMPRESSION).replace(b'"position": 3', b'"position": Infinity'),
        raw(IMPRESSION).replace(b'"home"', b'"ho\\u006de"'),
        raw(IMPRESSION).replace(b'"home"', b'"ho\tme"'),
        raw(IMPRESSION).replace(b'"home"', b'"ho\\ud800me"'),
        raw(IMPRESSION).replace(b'"home"', b'"ho\xffme"'),
        raw(IMPRESSION).replace(b'"home"', b'"h\xc3\xa9me"'),
        raw(IMPRESSION)[:-1] + b', "surface": "feed"}',  # duplicate key: the last one wins in both
        b"\xef\xbb\xbf" + raw(IMPRESSION), b"\x0c" + raw(IMPRESSION), raw(IMPRESSION) + b" x",
        raw(IMPRESSION) + raw(IMPRESSION), b"", b"null", b"{}", b'"x"', b"1",
        # the fast path's own checks, at and past each bound
        raw({**IMPRESSION, "user_id": "u1\n"}), raw({**IMPRESSION, "surface": "ho me"}),
        raw({**IMPRESSION, "item_id": "i" * 64}), raw({**IMPRESSION, "item_id": "i" * 65}),
        raw({**IMPRESSION, "app_type": "a" * 32}), raw({**IMPRESSION, "app_type": "a" * 33}),
        raw({**IMPRESSION, "device_type": ""}), raw({**IMPRESSION, "position": 10_000}),
        raw({**IMPRESSION, "position": 10_001}), raw({**IMPRESSION, "ts": 1_577_836_800_000}),
        raw({**IMPRESSION, "ts": 1_577_836_799_999}), raw({**IMPRESSION, "ts": 4_102_444_800_001}),
        raw({**IMPRESSION, "item_type": ["video"]}), raw({**IMPRESSION, "gender": "F"}),
        raw({**IMPRESSION, "country": "USA"}), raw({**IMPRESSION, "request_id": "r:1.2-3_x"}),
        raw({**IMPRESSION, "event_id": 7}), raw({**ENGAGEMENT, "dwell_ms": 86_400_001}),
        raw({**ENGAGEMENT, "dwell_ms": 86_400_000}), raw({**ENGAGEMENT, "dwell_ms": 1.0}),
        raw({**ENGAGEMENT, "action": "Click"}), raw({**ENGAGEMENT, "action": None}),
        raw({k: v for k, v in ENGAGEMENT.items() if k != "action"}),
        raw({k: v for k, v in IMPRESSION.items() if k != "ts"}), raw({**ENGAGEMENT, "surface": "home"}),
        raw({**ENGAGEMENT, "kind": "engagement", "dwell_ms": None}), raw({**IMPRESSION, "ts": 2**64}),
    ]
    rng = random.Random(7)
    base = [raw(IMPRESSION), raw(ENGAGEMENT)]
    for _ in range(400):  # byte-level mutations of good events
        b = bytearray(rng.choice(base))
        for _k in range(rng.randint(1, 3)):
            i = rng.randrange(len(b))
            op = rng.random()
            if op < 0.4:
                b[i] = rng.randrange(256)
            elif op < 0.7:
                del b[i]
            else:
                b.insert(i, rng.choice(b'{}[]",:0123456789 aeZ\\'))
        out.append(bytes(b))
    return out


@pytest.mark.parametrize("expect", [Impression, Engagement], ids=["impression", "engagement"])
def test_fast_decoder_agrees_with_decode_event(expect: type) -> None:
    from features.events import decode_event_fast

    corpus = _corpus()
    n_ok = 0
    for payload in corpus:
        try:
            want: object = decode_event(payload, expect)
        except EventDecodeError as exc:
            want = ("error", exc.reason)
        try:
            got: object = decode_event_fast(payload, expect)
        except EventDecodeError as exc:
            got = ("error", exc.reason)
        assert got == want, payload
        assert type(got) is type(want), payload
        if not isinstance(want, tuple):  # the model built without validation is the validated one
            assert got.model_fields_set == want.model_fields_set, payload  # type: ignore[attr-defined]
            assert got.model_dump_json() == want.model_dump_json(), payload  # type: ignore[attr-defined]
            assert list(vars(got)) == list(vars(want)), payload
        n_ok += not isinstance(want, tuple)
    assert n_ok >= 5  # the corpus holds good events of both kinds too
