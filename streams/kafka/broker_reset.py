"""Detecting that the broker lost data a worker's state depends on (a *broker reset*), and what to say.

A worker's RocksDB state records, per input partition, the last offset it
processed and, per changelog partition, the offset of the last checkpoint
marker it wrote. A durable Kafka cluster never goes below either. The
embedded broker (tansu, memory storage) does: stopped and restarted, it comes
back empty, so every topic is re-created from offset 0 while the worker's
state still points at the old offsets. The signals, from most to least
certain:

- changelog: a checkpoint's first record lands at or below the last committed
  marker, the changelog ends at or below that marker, or the record at the
  marker's offset is not that marker (``streams.engine.state.recovery``). Only this
  worker writes that changelog partition, so this is proof.
- input, out of range: the broker answers a fetch with OFFSET_OUT_OF_RANGE
  (real Kafka; the engine's consumer runs with ``auto_offset_reset="none"``);
  a position below the log start means retention deleted unread records,
  above the end means the log was truncated or re-created.
- input, behind the high watermark: the fetch responses' high watermark stays
  at or below the stored offset (tansu answers an out-of-range fetch with an
  empty response instead of an error). Real Kafka's high watermark may lag
  for a moment after a leader change, so this signal is trusted at once only
  for a partition whose changelog reset was already proven, else after it
  persisted ``INPUT_RESET_CONFIRM_S``.

``FEEDRANK_ON_BROKER_RESET`` decides what follows: ``reseed`` keeps the local
state (after such a loss it is the only copy), re-seeds the changelog from it
and reads a re-created input from its start; ``fail`` stops the worker with a
non-zero exit and the reason. See docs/reliability.md.

Not detectable by offsets: an input re-created and refilled *past* the stored
offset before the worker fetches it again. Its first records would look
processed and be skipped, so every checkpoint also records the topic ids
(KIP-516) its offsets refer to, and a changed id on assignment is a reset.
A running worker that finds a partition's changelog reset pauses that
partition's inputs until it has compared their ids too.

The high-watermark signal assumes true end offsets. The embedded broker
reports them only for one-record batches (docs/brokers.md), which is why every
producer to it must send one record per batch: a batching producer would make
inputs look reset.
"""

from __future__ import annotations

from typing import Hashable, Literal

#: an input's high watermark must stay at or below its stored offset this long before it counts as reset
#: (unless the partition's changelog was already found reset)
INPUT_RESET_CONFIRM_S = 15.0

LOST = ("Lost with the broker: every record it held (input events this worker had not processed yet, outputs "
        "such as labeled-impressions, dead letters and feedback deltas not yet read downstream, consumer-group "
        "offsets, producer ids)")


class InputWatch:
    """Per input partition: is its stored offset beyond the end of the log (a reset), confirmed?"""

    def __init__(self, confirm_s: float = INPUT_RESET_CONFIRM_S) -> None:
        self.confirm_s = confirm_s
        self._since: dict[Hashable, float] = {}

    def observe(self, tp: Hashable, stored: int | None, highwater: int | None, now: float,
                proven: bool = False) -> bool:
        """True when ``tp`` must be treated as reset: ``stored`` (last processed offset) is not below the
        ``highwater`` (next offset to be written) of the latest fetch response, and that is either ``proven``
        (the partition's changelog was found reset) or has lasted ``confirm_s``."""
        if stored is None or highwater is None or stored < highwater:
            self._since.pop(tp, None)
            return False
        since = self._since.setdefault(tp, now)
        return proven or now - since >= self.confirm_s

    def forget(self, tp: Hashable) -> None:
        self._since.pop(tp, None)

    def suspects(self) -> list[Hashable]:
        return list(self._since)


def classify_out_of_range(position: int, log_start: int) -> Literal["retention", "reset"]:
    """An OFFSET_OUT_OF_RANGE answer: below the log start = retention deleted unread records; else the log
    ends below the position (truncated or re-created)."""
    return "retention" if position < log_start else "reset"


def consequence(what: str) -> str:
    """What ``on_broker_reset=reseed`` does about a reset of ``what`` (changelog | input)."""
    if what == "changelog":
        return ("keeping this worker's local state (the only copy left) and re-seeding the changelog from it, so "
                "a later restart or another worker can restore it; inputs whose stored offsets lie beyond their "
                "new end are read from their start once a fetch shows it. " + LOST)
    return ("reading it from the start of the re-created topic (its offsets restart at 0: they are new records); "
            "the state built before the reset is kept. " + LOST)


def fail_advice(app_id: str) -> str:
    return (f"FEEDRANK_ON_BROKER_RESET=fail: the worker stops. To go on, either restart it with "
            f"FEEDRANK_ON_BROKER_RESET=reseed (keeps this state and re-seeds the changelog from it), or delete "
            f"<data_dir>/tables/{app_id} and replay the inputs from their source")
