"""`feedrank bench rpc` argument parsing (the benchmark itself prints numbers; it is not timed in tests)."""

from __future__ import annotations

import pytest

from streams.tools.bench_rpc import _clients


def test_clients_lists_the_closed_loops_and_empty_means_paced_only() -> None:
    assert _clients("1,2,4") == [1, 2, 4]
    assert _clients(" 2 , 8 ") == [2, 8]
    assert _clients("") == []
    with pytest.raises(SystemExit, match="comma-separated client counts"):
        _clients("1,two")
    with pytest.raises(SystemExit, match="at least 1"):
        _clients("0,2")
