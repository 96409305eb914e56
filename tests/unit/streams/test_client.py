"""``ScorerClient.score`` request encoding (pure: the HTTP call is replaced by a recorder)."""

from __future__ import annotations

import numpy as np
import pytest

from features.rpc import RequestError, parse_score_request
from streams.serving.client import ScorerClient, ScorerError


def _body(features: dict) -> dict:
    return {"user_id": "u1", "top_k": 5,
            "context": {"surface": "home", "country": "US", "gender": "f", "app_type": "ios", "device_type": "phone"},
            "candidates": [{"item_id": "i1", "item_type": "organic", "features": features}]}


class _Recorder(ScorerClient):
    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9", retries=0)
        self.sent: list[bytes] = []

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        assert method == "POST" and path == "/score" and body is not None
        self.sent.append(body)
        try:
            parse_score_request(body)
        except RequestError as exc:  # what the worker would answer
            import orjson

            return exc.status, orjson.dumps(exc.to_json())
        return 599, b"{}"  # parsed: good enough for this test


def test_dict_requests_with_numpy_values_and_int_keys_encode_like_json() -> None:
    c = _Recorder()
    with pytest.raises(ScorerError) as err:
        c.score(_body({"item_ctr_prior": np.float32(0.25), 7: 1.0}))
    assert err.value.status == 599  # the body parsed: numpy floats and an int key were encoded
    assert b'"7":1.0' in c.sent[0] and b'"item_ctr_prior":0.25' in c.sent[0]


def test_nan_feature_values_are_rejected_naming_the_field() -> None:
    c = _Recorder()
    with pytest.raises(ScorerError) as err:
        c.score(_body({"item_ctr_prior": float("nan")}))
    assert err.value.status == 422
    assert "candidates.0.features.item_ctr_prior" in str(err.value)
