"""Shared fixtures: one broker per test session, factories for settings and workers.

The broker comes from ``streams.kafka.broker.resolve_broker``: KAFKA_BOOTSTRAP_SERVERS,
else testcontainers when Docker answers, else a local Apache Kafka that the suite
starts itself (Java 17+, jars from ``deploy/kafka/pom.xml``), else the embedded tansu
broker. Tests marked ``embedded`` also run on the embedded broker (``embedded_bootstrap``),
so the no-Java fallback stays proven. Each test gets its own app id, topic names
and state directory, so tests never see each other's data on the shared broker.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from streams.kafka.broker import ResolvedBroker, resolve_broker

from streams.kafka.procutil import free_port
from streams.tools.chaos.common import Worker
from streams.tools.chaos.common import wait_until as chaos_wait_until
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ResolvedBroker]:
    """The session's broker (see the module doc) and its kind."""
    broker = resolve_broker(allow_container=True, log_dir=tmp_path_factory.mktemp("broker-log"))
    print(f"\nbroker tests run on: {broker.kind} at {broker.bootstrap}")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: ResolvedBroker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture(scope="session")
def embedded_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An embedded (tansu) broker for the tests that prove the no-Java fallback."""
    broker = resolve_broker(log_dir=tmp_path_factory.mktemp("embedded-log"), kind="embedded")
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(params=["session", "embedded"])
def each_broker(request: pytest.FixtureRequest) -> str:
    """The session's broker, then the embedded one: for the ``embedded``-marked contract tests."""
    if request.param == "embedded":
        request.applymarker(pytest.mark.embedded)
        return request.getfixturevalue("embedded_bootstrap")
    return request.getfixturevalue("kafka_bootstrap")


def make_settings(tmp_dir: Path, bootstrap: str, **overrides: Any) -> Settings:
    """Settings with a unique app id, unique topic names and a state dir under ``tmp_dir``."""
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = dict(
        app_id=f"t{tag}",
        partitions=2,
        data_dir=tmp_dir / f"data-{tag}",
        log_dir=tmp_dir / "log",
        web_port=free_port(),
        topic_impressions=f"impressions-{tag}",
        topic_engagements=f"engagements-{tag}",
        topic_dlq=f"events-dlq-{tag}",
        topic_predictions=f"predictions-{tag}",
        topic_labeled=f"labeled-{tag}",
        topic_feedback_deltas=f"feedback-deltas-{tag}",
        topic_calibrators=f"calibrators-{tag}",
        topic_drift=f"calibration-drift-{tag}",
        log_level="INFO",
    )
    values.update(overrides)
    return Settings(KAFKA_BOOTSTRAP_SERVERS=bootstrap, **values)


@pytest.fixture
def settings_factory(tmp_path: Path, kafka_bootstrap: str) -> Callable[..., Settings]:
    """Settings with a unique app id, unique topic names and a tmp state dir."""
    return lambda **overrides: make_settings(tmp_path, kafka_bootstrap, **overrides)


#: A ``feedrank worker`` subprocess with its web port (shared with ``feedrank chaos``).
WorkerProcess = Worker


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    """Start ``feedrank worker`` subprocesses; all are killed at teardown."""
    started: list[WorkerProcess] = []

    def make(settings: Settings) -> WorkerProcess:
        w = WorkerProcess(settings, tmp_path / f"worker-{len(started)}.log")
        started.append(w)
        return w.start()

    yield make
    for w in started:
        try:
            w.stop()
        except Exception:
            w.kill()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 60.0, interval_s: float = 0.2,
               what: str = "condition", detail: Callable[[], str] | None = None) -> None:
    """Wait for ``predicate`` (an exception counts as not yet); fails the test with ``detail`` on timeout."""
    chaos_wait_until(predicate, timeout_s, what, detail, interval_s)


#: The synthetic world the tiny test model is trained on (and the e2e tests query).
TINY_WORLD = {"seed": 0, "users": 300, "items": 400}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model artifact trained once per session with the real CLI, with replay-fit calibrators.

    ``<dir>/models`` is the artifact root (``latest``), ``<dir>/calibrators`` the calibrator store.
    """
    root = tmp_path_factory.mktemp("tiny-model")
    world = ["--seed", str(TINY_WORLD["seed"]), "--users", str(TINY_WORLD["users"]),
             "--items", str(TINY_WORLD["items"])]
    steps = [
        ["train", "--out", str(root / "models"), *world, "--train-hours", "3", "--holdout-hours", "1",
         "--epochs", "2", "--requests-per-s", "0.5"],
        # 40 candidates a request instead of 100: the forward pass is the log's cost, and the tests need
        # calibrators that exist and were fit by the real path, not the last digit of their quality
        ["calibration", "log", "--model", str(root / "models"), "--out", str(root / "log.npz"), "--hours", "1",
         "--candidates", "40", *world],
        ["replay", "--model", str(root / "models"), "--log", str(root / "log.npz"), "--out",
         str(root / "calibrators")],
    ]
    for args in steps:
        proc = subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, f"feedrank {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    assert (root / "models" / "latest").exists()
    return root
