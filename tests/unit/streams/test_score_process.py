"""The score process: the same answers as scoring beside the event loop, calibrator swaps in order,
bad requests still named, and a child that dies is replaced."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest

from features.events import ACTIONS
from features.rpc import RequestError, parse_score_request
from features.seqcodec import ActionSequence, EncodedUserState
from features.state import Counts, FeedbackSnapshot
from scorer.calibration.calset import CalibratorSet
from streams.serving import score_process
from streams.serving.score_process import ScoreProcess, ScoreUnavailable
from streams.serving.serving import Serving
from streams.settings import Settings

#: trains models or fits calibrators on simulated traffic (seconds to a minute): not in the fast tier
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def settings(tiny_model_dir) -> Settings:
    return Settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", model_dir=tiny_model_dir / "models",
                    calibrator_dir=tiny_model_dir / "calibrators", score_process=False, score_nice=0)


def _body(n: int = 60, **extra) -> bytes:
    body = {"user_id": "u7", "request_id": "r1", "top_k": 20,
            "context": {"surface": "home", "country": "US", "gender": "f", "app_type": "ios", "device_type": "phone",
                        "ts": 1_764_000_000_000},
            "candidates": [{"item_id": f"i{i}", "item_type": "video" if i % 3 == 0 else "organic",
                            "features": {"item_ctr_prior": 0.02 + 0.001 * i}} for i in range(n)], **extra}
    return json.dumps(body).encode()


def _user() -> EncodedUserState:
    seq = ActionSequence()
    for k in range(40):
        seq.add(event_id=f"e{k}", item_id=f"i{k % 25}", action=ACTIONS[k % len(ACTIONS)], ts=1_763_999_000_000 + k,
                surface="home", item_type="video" if k % 2 else "organic")
    return EncodedUserState("u7", seq.encode(), Counts(30, {"click": 4}), Counts(90, {"click": 9, "hide": 1}))


FEEDBACK = FeedbackSnapshot({"all": Counts(5000, {a: 150 for a in ACTIONS})})


def _same(a, b) -> None:
    assert a.model_dump(exclude={"latency_ms"}) == b.model_dump(exclude={"latency_ms"})


def test_the_score_process_answers_as_the_thread_does_and_takes_swaps_in_order(settings, monkeypatch) -> None:
    local = Serving.load(settings)
    body, user = _body(), _user()
    expected, expected_log, *_ = local.score_and_encode(parse_score_request(body), user.decode(), FEEDBACK)
    assert user.decode().actions and len(user.decode().actions) == 40  # the blob carries the whole sequence

    current = [local.holder.current]
    proc = ScoreProcess(settings, lambda: current[0]).start()
    monkeypatch.setattr(score_process, "RESTART_BACKOFF_S", 0.0)

    async def scenario() -> None:
        response, log_value, t0, t1, cpu, _ = await proc.score(body, user, FEEDBACK)
        response = response.to_response()
        _same(response, expected.response)
        assert log_value == expected_log
        assert t1 > t0 and cpu > 0
        assert proc.ready and proc.model_version == local.model_version

        # a swap queued before a request is in force for it (here: identity calibrators)
        identity = CalibratorSet.identity(local.model_version)
        swapped = local.holder.current.next_version(calibrators=identity.calibrators, source="online")
        assert local.install_calibrators(swapped)
        expected_after, *_ = local.score_and_encode(parse_score_request(body), user.decode(), FEEDBACK)
        proc.install(swapped)
        after, *_ = await proc.score(body, user, FEEDBACK)
        after = after.to_response()
        _same(after, expected_after.response)
        assert after.calibrator_version == f"{swapped.model_version}#{swapped.version}"
        assert [it.calibrated for it in after.items] != [it.calibrated for it in response.items]

        # a request only the full validation rejects is still a 4xx naming the field
        with pytest.raises(RequestError) as bad:
            await proc.score(_body(n=0), user, FEEDBACK)
        assert bad.value.field == "candidates" and bad.value.status == 422

        # the child dies: the request in flight answers "retry", a new child starts with the current set
        current[0] = swapped
        old_pid = proc.pid
        os.kill(old_pid, signal.SIGKILL)
        with pytest.raises(ScoreUnavailable):
            await proc.score(body, user, FEEDBACK)
        assert proc.restarts == 1 and proc.pid != old_pid
        again, *_ = await proc.score(body, user, FEEDBACK)
        _same(again.to_response(), after)

    try:
        asyncio.run(scenario())
    finally:
        proc.close()
    assert not proc._proc.is_alive()


def test_a_shorter_stored_history_than_the_model_read_is_a_warning(settings, caplog) -> None:
    """Tables that keep fewer actions than the model's training history (``FeatureSpec.history_len``) show the
    model fewer hides than it learned from: the worker serves, and says which setting to change."""
    from streams.serving.model_slot import ModelSlot

    with caplog.at_level("WARNING", logger="streams.serving.model_slot"):
        assert ModelSlot(settings).reload()
    assert "FEEDRANK_SEQUENCE_LEN" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="streams.serving.model_slot"):
        assert ModelSlot(settings.model_copy(update={"sequence_len": 16})).reload()
    assert "keep 16 actions" in caplog.text and "FEEDRANK_SEQUENCE_LEN=256" in caplog.text
