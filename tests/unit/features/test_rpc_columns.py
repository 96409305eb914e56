"""The column parse of a score request accepts exactly what the pydantic model accepts, with the same
values, and a bad request still gets the error naming the field; the encoded response is the model's."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from features.candidates import CandidateColumns
from features.events import ACTIONS
from features.rpc import (RequestError, ResponseBody, ScoredItem, ScoreResponse, encode_items, parse_score_columns,
                          parse_score_request)

BASE = {"user_id": "u1", "request_id": "r-1", "top_k": 3,
        "context": {"surface": "home", "country": "US", "gender": "f", "app_type": "ios", "device_type": "phone",
                    "ts": 1_764_000_000_000},
        "weights": {"video": {"click": 2}},
        "candidates": [{"item_id": "i1", "item_type": "video", "position": 2,
                        "features": {"item_ctr_prior": 0.1, "item_impressions_1d": 40, "item_actions_1d:click": 3}},
                       {"item_id": "i2", "item_type": "organic"},
                       {"item_id": "a.b:c-d_e", "item_type": "organic", "features": {}}]}


def _same_columns(a: CandidateColumns, b: CandidateColumns) -> None:
    assert a.item_ids == b.item_ids
    for f in ("type_code", "position", "has_ctr_prior", "ctr_prior", "has_counts", "impressions", "actions"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


def _outcome(body: bytes):
    """(error field, status) or the parsed request, from one parser."""
    try:
        return parse_score_columns(body)
    except RequestError as exc:
        return (exc.field, exc.status)


def _reference(body: bytes):
    try:
        return parse_score_request(body)
    except RequestError as exc:
        return (exc.field, exc.status)


def _check(body: bytes) -> None:
    got, want = _outcome(body), _reference(body)
    if isinstance(want, tuple):
        assert got == want, body[:200]
        return
    assert not isinstance(got, tuple), (got, body[:200])
    assert (got.user_id, got.request_id, got.context, got.weights, got.top_k) == \
        (want.user_id, want.request_id, want.context, want.weights, want.top_k)
    _same_columns(got.columns(), want.columns())
    _same_columns(got.columns(), CandidateColumns.of(want.to_candidates()))


def test_a_good_request_parses_to_the_same_columns() -> None:
    _check(json.dumps(BASE).encode())


MUTATIONS = [
    ("candidates", 1, "item_id", ""), ("candidates", 1, "item_id", "a b"), ("candidates", 1, "item_id", "a\nb"),
    ("candidates", 1, "item_id", "x" * 65), ("candidates", 1, "item_id", 7), ("candidates", 1, "item_id", None),
    ("candidates", 1, "item_type", "story"), ("candidates", 1, "item_type", True), ("candidates", 1, "item_type", None),
    ("candidates", 1, "position", -1), ("candidates", 1, "position", 10_001), ("candidates", 1, "position", 1.0),
    ("candidates", 1, "position", True), ("candidates", 1, "position", None), ("candidates", 1, "position", "3"),
    ("candidates", 1, "features", None), ("candidates", 1, "features", []), ("candidates", 1, "features", {"": 1.0}),
    ("candidates", 1, "features", {"a b": 1.0}), ("candidates", 1, "features", {"a": True}),
    ("candidates", 1, "features", {"a": "1"}), ("candidates", 1, "features", {"a": None}),
    ("candidates", 1, "features", {f"f{i}": 1.0 for i in range(33)}), ("candidates", 1, "features", {"a\nb": 1.0}),
    ("candidates", 1, "features", {"a": 1}), ("candidates", 1, "features", {"a": 1e308}),
    ("candidates", 1, "extra", 1), ("candidates", 2, "position", 10_000), ("candidates", 0, "item_type", "story"),
]


@pytest.mark.parametrize("where", MUTATIONS, ids=[f"{m[0]}.{m[1]}.{m[2]}={m[3]!r}"[:60] for m in MUTATIONS])
def test_each_candidate_mutation_gets_the_models_answer(where) -> None:
    _, i, key, value = where
    doc = copy.deepcopy(BASE)
    doc["candidates"][i][key] = value
    _check(json.dumps(doc).encode())


@pytest.mark.parametrize("body", [
    b"", b"{", b"[]", b"null", b'{"user_id": "u1"}', b"NaN",
    json.dumps({**BASE, "candidates": []}).encode(), json.dumps({**BASE, "candidates": [1]}).encode(),
    json.dumps({**BASE, "candidates": [[]]}).encode(), json.dumps({**BASE, "candidates": {"a": 1}}).encode(),
    json.dumps({**BASE, "candidates": BASE["candidates"] * 334}).encode(),  # 1,002 > 1,000
    json.dumps({**BASE, "top_k": 0}).encode(), json.dumps({**BASE, "extra": 1}).encode(),
    json.dumps({**BASE, "user_id": ""}).encode(), json.dumps({**BASE, "weights": {"video": {"x": 1}}}).encode(),
    json.dumps({**BASE, "candidates": [{"item_id": "i1", "item_type": "video", "features": {"a": 1e400}}]})
    .encode().replace(b"Infinity", b"1e400"),
    b'{"user_id": "u1", "user_id": "u2"}' + json.dumps(BASE).encode()[1:].replace(b'"user_id": "u1", ', b"", 1),
    b"x" * (1 << 20 + 1),
])
def test_bad_and_odd_bodies_get_the_models_answer(body: bytes) -> None:
    _check(body)


def test_random_requests_parse_the_same(seed_count: int = 30) -> None:
    rng = np.random.default_rng(0)
    for _ in range(seed_count):
        n = int(rng.integers(1, 60))
        cands = []
        for j in range(n):
            c: dict = {"item_id": f"i{int(rng.integers(1000))}", "item_type": ["video", "organic"][int(rng.integers(2))]}
            if rng.random() < 0.5:
                c["position"] = int(rng.integers(0, 10_001))
            if rng.random() < 0.7:
                c["features"] = {k: float(rng.normal()) if rng.random() < 0.8 else int(rng.integers(100))
                                 for k in rng.choice(["item_ctr_prior", "item_impressions_1d", "item_actions_1d:click",
                                                      "item_actions_1d:hide", "x.y"], int(rng.integers(0, 4)),
                                                     replace=False).tolist()}
            cands.append(c)
        _check(json.dumps({**BASE, "candidates": cands}).encode())


def test_encoded_items_and_response_equal_the_models() -> None:
    rng = np.random.default_rng(1)
    k = 40
    ids = [f"i{i}" for i in range(k)]
    types = ["video" if i % 3 == 0 else "organic" for i in range(k)]
    util, cal, raw = rng.normal(size=k), rng.random((k, len(ACTIONS))), rng.random((k, len(ACTIONS)))
    cal[:, -1] = 0.0
    body = ResponseBody("r1", "u1", "m1", "m1#3", 12, encode_items(ids, types, util, cal, raw), 1.5)
    want = ScoreResponse(request_id="r1", user_id="u1", model_version="m1", calibrator_version="m1#3",
                         items=[ScoredItem(item_id=ids[r], item_type=types[r], rank=r, utility=float(util[r]),
                                           calibrated=dict(zip(ACTIONS, cal[r].tolist())),
                                           raw=dict(zip(ACTIONS, raw[r].tolist()))) for r in range(k)],
                         served_by="http://w1", history_len=12, latency_ms=7.25)
    assert json.loads(body.to_json("http://w1", 7.25)) == json.loads(want.model_dump_json())
    assert list(json.loads(body.to_json("http://w1", 7.25))) == list(json.loads(want.model_dump_json()))  # key order
    assert body.to_response("http://w1", 7.25) == want
    # a non-finite value takes the plain path and stays valid JSON
    util[0] = np.nan
    assert len(json.loads(encode_items(ids, types, util, cal, raw))) == k
    assert encode_items([], [], util[:0], cal[:0], raw[:0]) == b"[]"
    assert json.loads(encode_items(['a"b\\c'], ["video"], util[1:2], cal[:1], raw[:1]))[0]["item_id"] == 'a"b\\c'
