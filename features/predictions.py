"""The ``predictions`` topic record: what the scorer logged for one request.

The scorer produces one ``PredictionLog`` per score request to the
``predictions`` topic, message key = ``user_id`` (so it lands on the partition
that owns the user, beside the impressions it will be joined with), JSON
UTF-8 value. Log the items that were returned (the ones that can become
impressions), not every candidate. The label join in ``streams`` keeps each
log until the attribution windows of its request close and copies the item's
entry into the labeled example.

Fields per item: ``raw`` = the model's raw per-task scores (task = action
name), ``calibrated`` = the calibrators' outputs (optional), ``features`` =
the calibration features the calibrators saw, ``position`` the rank returned.
"""

from __future__ import annotations

from typing import Annotated, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .events import MAX_TS_MS, MIN_TS_MS, Id, Token

MAX_PREDICTION_BYTES = 1 << 20


class PredictionDecodeError(ValueError):
    """Bytes that are not a valid prediction log; ``reason`` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ItemPrediction(BaseModel):
    """The scorer's output for one returned item."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    item_id: Id
    position: Annotated[int, Field(ge=0)] = 0
    raw: dict[Token, float] = Field(default_factory=dict)
    calibrated: dict[Token, float] = Field(default_factory=dict)
    features: dict[str, float] = Field(default_factory=dict)


class ServedItemInputs(BaseModel):
    """What a logged item was scored with: the request's candidate (type, position, features) and the model's
    candidate dense features (``features.assembly.CAND_DENSE_NAMES`` order)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    item_type: str
    position: int
    features: dict[str, float] = Field(default_factory=dict)
    cand_dense: list[float] = Field(default_factory=list)


class ServedInputs(BaseModel):
    """The exact model inputs of a sampled request (``FEEDRANK_FEATURE_LOG_SAMPLE``), for the online/offline
    consistency check (``scorer.consistency``): the feature spec, the request context, the user side as the
    model saw it (dense features in ``USER_DENSE_NAMES`` order, the sequence's and the hide profile's present entries newest first),
    the feedback-loop counts it was computed from and, per logged item (same order as ``items``), its
    candidate inputs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: dict[str, int]
    context: dict[str, str | int]
    user_dense: list[float]
    seq_item: list[int]
    seq_action: list[int]
    seq_type: list[int]
    seq_age: list[int]
    items: list[ServedItemInputs]
    #: the long-term hide profile's present entries, newest first (``hide_item``)
    hide_item: list[int] = Field(default_factory=list)
    #: the 30-minute feedback-loop counts served, per segment key: [impressions, then each action's count]
    feedback: dict[str, list[int]] = Field(default_factory=dict)
    #: how far the tables serving the request were behind their input (ms; 0 = read to the end): events
    #: produced within that much before the request were not in them yet (in flight, not a mismatch)
    behind_ms: int = Field(0, ge=0)


class PredictionLog(BaseModel):
    """One score request's logged predictions (``predictions`` topic, key = user_id)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str = "prediction"
    request_id: Id
    user_id: Id
    ts: Annotated[int, Field(ge=MIN_TS_MS, le=MAX_TS_MS, strict=True)]
    model_version: str = ""
    calibrator_version: str = ""
    items: list[ItemPrediction] = Field(default_factory=list)
    #: present on sampled requests only (``ServedInputs``)
    inputs: ServedInputs | None = None

    def item(self, item_id: str) -> ItemPrediction | None:
        for it in self.items:
            if it.item_id == item_id:
                return it
        return None


def encode_prediction(log: PredictionLog) -> bytes:
    return log.model_dump_json().encode("utf-8")


def decode_prediction(raw: bytes | None) -> PredictionLog:
    """Parse one ``predictions`` message; raises ``PredictionDecodeError``."""
    return _validate(PredictionLog, raw)


class PredictionHeader(BaseModel):
    """What the join needs of a log to key and age it; the rest is validated when joined.

    Full validation (``decode_prediction``, items, scores, features) costs tens of
    microseconds for a big log; the engine validates only this header per record
    and the whole log lazily, once, when a window that uses it closes.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    request_id: Id
    user_id: Id
    ts: Annotated[int, Field(ge=MIN_TS_MS, le=MAX_TS_MS, strict=True)]


def decode_prediction_header(raw: bytes | None) -> PredictionHeader:
    """Parse the key fields of one ``predictions`` message; raises ``PredictionDecodeError``."""
    return _validate(PredictionHeader, raw)


_M = TypeVar("_M", PredictionLog, PredictionHeader)


def _validate(model: type[_M], raw: bytes | None) -> _M:
    """``model`` from the JSON of one ``predictions`` message; raises ``PredictionDecodeError``."""
    if raw is None:
        raise PredictionDecodeError("empty message (null value)")
    if len(raw) > MAX_PREDICTION_BYTES:
        raise PredictionDecodeError(f"message too large: {len(raw)} bytes")
    try:
        return model.__pydantic_validator__.validate_json(raw)  # as ``model_validate_json``, less its Python
    except ValidationError as exc:
        err = exc.errors()[:3]
        raise PredictionDecodeError(
            "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in err)
        ) from None


def prediction_fields(log: PredictionLog | None, item_id: str) -> Mapping[str, object] | None:
    """What a labeled example carries about one item's prediction (None if not logged)."""
    if log is None:
        return None
    it = log.item(item_id)
    if it is None:
        return None
    return {
        "request_ts": log.ts,
        "model_version": log.model_version,
        "calibrator_version": log.calibrator_version,
        "position": it.position,
        "raw": dict(it.raw),
        "calibrated": dict(it.calibrated),
        "features": dict(it.features),
    }


__all__ = [
    "ItemPrediction",
    "PredictionDecodeError",
    "PredictionHeader",
    "decode_prediction_header",
    "PredictionLog",
    "ServedInputs",
    "ServedItemInputs",
    "decode_prediction",
    "encode_prediction",
    "prediction_fields",
]
