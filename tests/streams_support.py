"""Helpers of the stream-table tests; the logic lives in ``streams.recompute`` (shared with ``feedrank chaos``)."""

from __future__ import annotations

from streams.recompute import (  # noqa: F401  (re-exported for the tests)
    META_KEY,
    T0,
    dump_state,
    dump_worker_state,
    encode_event,
    labeled_examples,
    labeled_records,
    partition_for,
    produce,
    read_inputs,
    read_topic,
    recompute,
    scenario,
    table_settings,
)
