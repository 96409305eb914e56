"""``feedrank bench peers`` end to end on the session's broker: every peer reads the whole (small) input."""

from __future__ import annotations

import argparse

import pytest

from streams.tools.bench_peers import add_arguments, peers_python, print_table, run

pytestmark = pytest.mark.broker


def test_bench_peers_counts_every_event(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    # Quix runs when an interpreter with quixstreams is there (``--setup``); Faust is a dependency of ours
    peers = ["raw", "faust", "feedrank"] + (["quix"] if peers_python() else [])
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--events", "3000", "--users", "300", "--faust-events", "1000", "--timeout", "60",
                         "--peers", ",".join(peers)])
    result = run(args)
    assert set(result["peers"]) == set(peers)
    for peer, r in result["peers"].items():
        assert "error" not in r, (peer, r)
        assert r["events"] == (1000 if peer == "faust" else 3000), (peer, r)
        assert r["events_per_s"] > 0 and r["events_per_cpu_s"] > 0
    print_table(result)
    assert "feedrank" in capsys.readouterr().out
