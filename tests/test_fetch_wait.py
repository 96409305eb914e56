"""The table engine's fetch wait on the embedded broker (``streams.agents_runtime.fetch_wait_ms``)."""

from __future__ import annotations


def test_the_embedded_brokers_fetch_wait_follows_the_backlog() -> None:
    """Short waits while caught up (freshness); the long one through a backlog (short ones fetch little)."""
    from streams.agents_runtime import EMBEDDED_BACKLOG_WAIT_MS, EMBEDDED_LIVE_WAIT_MS, fetch_wait_ms

    assert EMBEDDED_LIVE_WAIT_MS < EMBEDDED_BACKLOG_WAIT_MS
    assert fetch_wait_ms(0, 0, 4000) == EMBEDDED_LIVE_WAIT_MS  # idle
    assert fetch_wait_ms(200, 50, 4000) == EMBEDDED_LIVE_WAIT_MS  # live traffic, caught up
    assert fetch_wait_ms(4000, 0, 4000) == EMBEDDED_BACKLOG_WAIT_MS  # a full poll
    assert fetch_wait_ms(30, 90_000, 4000) == EMBEDDED_BACKLOG_WAIT_MS  # a small fetch far behind the end
