"""The event contract: impressions and engagements as they travel on Kafka.

JSON on the wire, UTF-8, message key = ``user_id``. Every field is bounded so a
bad producer cannot poison state: ids are short printable strings, timestamps
are epoch milliseconds in a sane range, positions are non-negative and whole
messages are capped in size. ``decode_event`` is the single entry point for
bytes from a topic; it either returns a model or raises ``EventDecodeError``
carrying a reason that ends up in the dead-letter topic.
"""

from __future__ import annotations

import json
from typing import Annotated, Final, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

#: Actions a user can take on an impression; one model task per action.
ACTIONS: Final[tuple[str, ...]] = (
    "click",
    "long_click",
    "closeup",
    "repin",
    "hide",
    "video_view_10s",
)
Action = Literal["click", "long_click", "closeup", "repin", "hide", "video_view_10s"]
ItemType = Literal["organic", "video"]
ITEM_TYPES: Final[tuple[str, ...]] = ("organic", "video")

MAX_MESSAGE_BYTES: Final[int] = 4096
#: 2020-01-01T00:00:00Z .. 2100-01-01T00:00:00Z in epoch milliseconds.
MIN_TS_MS: Final[int] = 1_577_836_800_000
MAX_TS_MS: Final[int] = 4_102_444_800_000
MAX_POSITION: Final[int] = 10_000
MAX_DWELL_MS: Final[int] = 24 * 3600 * 1000

Id = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")
]
Token = Annotated[
    str, StringConstraints(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_\-]+$")
]
TsMs = Annotated[int, Field(ge=MIN_TS_MS, le=MAX_TS_MS, strict=True)]


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    event_id: Id
    user_id: Id
    item_id: Id
    request_id: Id
    ts: TsMs


class Impression(_Event):
    """An item shown to a user at a position of a feed response."""

    kind: Literal["impression"] = "impression"
    surface: Token
    position: Annotated[int, Field(ge=0, le=MAX_POSITION, strict=True)]
    item_type: ItemType
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
    gender: Literal["f", "m", "u"]
    app_type: Token
    device_type: Token


class Engagement(_Event):
    """A user action on an impressed item (joined by user, item and request)."""

    kind: Literal["engagement"] = "engagement"
    action: Action
    dwell_ms: Annotated[int, Field(ge=0, le=MAX_DWELL_MS, strict=True)] | None = None


Event = Union[Impression, Engagement]


class EventDecodeError(ValueError):
    """Bytes that are not a valid event; ``reason`` names what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _validation_reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "<root>"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def decode_event(raw: bytes | None, expect: type[_Event] | None = None) -> Event:
    """Decode one wire message into an ``Impression`` or ``Engagement``.

    ``expect`` restricts the kind (a topic carries one kind). Raises
    ``EventDecodeError`` with a human-readable reason on any defect.
    """
    if raw is None:
        raise EventDecodeError("empty message (null value)")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise EventDecodeError(f"message too large: {len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventDecodeError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise EventDecodeError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise EventDecodeError(f"not a JSON object: got {type(obj).__name__}")
    kind = obj.get("kind")
    if kind is None:  # the topic says what it carries; else infer from the fields
        if expect is not None:
            kind = "impression" if expect is Impression else "engagement"
        else:
            kind = "engagement" if "action" in obj else "impression"
    model: type[_Event]
    if kind == "impression":
        model = Impression
    elif kind == "engagement":
        model = Engagement
    else:
        raise EventDecodeError(f"kind: unknown event kind {str(kind)[:32]!r}")
    if expect is not None and model is not expect:
        raise EventDecodeError(f"kind: expected {expect.__name__.lower()}, got {kind}")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise EventDecodeError(_validation_reason(exc)) from None


def decode_event_fast(raw: bytes | None, expect: type[_Event]) -> Event:
    """``decode_event`` for a topic that carries one kind, with the same result and reasons.

    The fast path is pydantic's JSON validation straight from the bytes (no
    ``json.loads``, no intermediate dict), about 3x cheaper per event. Its
    acceptance implies ``decode_event``'s: the same model validates the same
    fields (a present ``kind`` must equal the model's literal, a missing one is
    decided by ``expect`` in both). Anything it refuses goes through
    ``decode_event`` so every bad input gets exactly the reason the contract
    gives it. ``tests/test_events.py`` checks both agree on a corpus.
    """
    if raw is not None and len(raw) <= MAX_MESSAGE_BYTES:
        try:
            # the model's core validator straight away: what ``model_validate_json`` calls after ~0.6 us of
            # Python of its own per event (measured 4.6 -> 4.0 us an impression)
            return expect.__pydantic_validator__.validate_json(raw)  # type: ignore[no-any-return]
        except ValueError:  # ValidationError (bad JSON included): let the contract say why
            pass
    return decode_event(raw, expect)


def encode_event(event: Event) -> bytes:
    """Serialize an event to its wire form (compact JSON, UTF-8)."""
    return event.model_dump_json(exclude_none=True).encode("utf-8")
