"""Serving before ingestion (``streams.priority``): the engine's slices wait for a score in flight."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from streams.agents_runtime import TableEngine
from streams.priority import ServingGate


def test_step_aside_returns_at_once_when_nothing_is_served() -> None:
    async def main() -> float:
        gate = ServingGate(max_pause_s=1.0)
        t0 = time.perf_counter()
        await gate.step_aside()
        return time.perf_counter() - t0

    assert asyncio.run(main()) < 0.05


def test_step_aside_waits_for_the_score_to_finish() -> None:
    async def main() -> tuple[float, float, int]:
        gate = ServingGate(max_pause_s=5.0)
        done_at: list[float] = []

        async def score() -> None:
            with gate.serving():
                await asyncio.sleep(0.2)
            done_at.append(time.perf_counter())

        task = asyncio.ensure_future(score())
        await asyncio.sleep(0)  # the score is in flight
        assert gate.busy
        await gate.step_aside()
        resumed = time.perf_counter()
        await task
        return resumed, done_at[0], gate.pauses

    resumed, done, pauses = asyncio.run(main())
    assert resumed >= done - 0.001  # not before the score ended
    assert resumed - done < 0.1  # and soon after it
    assert pauses == 1


def test_step_aside_is_bounded_so_ingestion_always_advances() -> None:
    async def main() -> tuple[float, bool]:
        gate = ServingGate(max_pause_s=0.05)
        with gate.serving():  # a score that outlives the bound
            t0 = time.perf_counter()
            await gate.step_aside()
            waited = time.perf_counter() - t0
            busy = gate.busy
        return waited, busy and not gate.busy

    waited, was_busy = asyncio.run(main())
    assert 0.04 <= waited < 0.5
    assert was_busy


def test_overlapping_scores_keep_the_gate_closed_until_the_last_ends() -> None:
    gate = ServingGate()
    with gate.serving():
        with gate.serving():
            pass
        assert gate.busy
    assert not gate.busy


def test_the_engine_between_slices_waits_for_a_score_in_flight() -> None:
    """``TableEngine._yield`` (called after every slice of a batch) honours the worker's gate."""

    async def main(with_gate: bool) -> float:
        gate = ServingGate(max_pause_s=5.0)
        engine = SimpleNamespace(gate=gate if with_gate else None, _slice_t0=time.perf_counter())

        async def score() -> None:
            with gate.serving():
                await asyncio.sleep(0.15)

        task = asyncio.ensure_future(score())
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        await TableEngine._yield(engine)  # type: ignore[arg-type]
        waited = time.perf_counter() - t0
        await task
        return waited

    assert asyncio.run(main(True)) >= 0.14
    assert asyncio.run(main(False)) < 0.05

