"""The prediction-log contract: a log decodes to the validated model, a bad one is refused with a reason."""

from __future__ import annotations

import json

import pytest

from features.predictions import (
    MAX_PREDICTION_BYTES,
    ItemPrediction,
    PredictionDecodeError,
    PredictionHeader,
    PredictionLog,
    decode_prediction,
    decode_prediction_header,
    encode_prediction,
)

TS = 1_764_000_000_000
LOG = PredictionLog(request_id="r1", user_id="u1", ts=TS, model_version="m", calibrator_version="c",
                    items=[ItemPrediction(item_id=f"i{k}", position=k, raw={"click": 0.1 * k},
                                          calibrated={"click": 0.05}, features={"x": 1.0}) for k in range(3)])


def test_a_log_decodes_to_the_model_and_its_header() -> None:
    raw = encode_prediction(LOG)
    got = decode_prediction(raw)
    assert got == LOG == PredictionLog.model_validate_json(raw)
    assert got.item("i2") == LOG.items[2] and got.item("zz") is None
    head = decode_prediction_header(raw)
    assert isinstance(head, PredictionHeader)
    assert (head.user_id, head.request_id, head.ts) == ("u1", "r1", TS)


def _bad(**change: object) -> bytes:
    obj = json.loads(encode_prediction(LOG))
    obj.update(change)
    return json.dumps(obj).encode()


@pytest.mark.parametrize("raw,reason", [
    (None, "empty message"),
    (b"x" * (MAX_PREDICTION_BYTES + 1), "too large"),
    (b"{not json", "json"),
    (_bad(ts="1764000000000"), "ts"),
    (_bad(ts=1000), "ts"),
    (_bad(user_id=None), "user_id"),
    (_bad(items=[{"item_id": "i1", "position": -1}]), "position"),
    (_bad(items=[{"item_id": "i1", "raw": {"click": "high"}}]), "raw"),
])
def test_a_bad_log_is_refused_with_a_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(PredictionDecodeError) as info:
        decode_prediction(raw)
    assert reason in info.value.reason.lower()
    if reason not in ("position", "raw"):  # the header reads no items
        with pytest.raises(PredictionDecodeError):
            decode_prediction_header(raw)
