"""Shared fixtures: one broker per test session, factories for settings and workers.

The broker comes from ``streams.broker.resolve_broker`` (KAFKA_BOOTSTRAP_SERVERS,
else testcontainers when Docker answers, else the embedded tansu broker). Each
test gets its own app id, topic names and state directory, so tests never see
each other's data on the shared broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from streams.broker import free_port, resolve_broker
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    broker = resolve_broker(allow_container=True, log_dir=tmp_path_factory.mktemp("broker-log"))
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


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


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces ``settings`` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDRANK_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if name == "bootstrap_servers":
            env["KAFKA_BOOTSTRAP_SERVERS"] = str(value)
        else:
            env[f"FEEDRANK_{name.upper()}"] = str(value)
    return env


class WorkerProcess:
    """A ``feedrank worker`` subprocess with its web port."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}"

    def start(self, timeout_s: float = 60.0) -> "WorkerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"], cwd=ROOT, env=settings_env(self.settings),
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
        )
        logf.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/metrics", timeout=1.0)
                return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"worker web port never answered:\n{self.log_tail()}")

    def get(self, path: str, timeout: float = 5.0) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return resp.read()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a Prometheus sample (``name``) over series matching ``labels``."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(self.get("/metrics").decode()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


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
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    extra = ""
    if detail is not None:
        try:
            extra = f"; state: {detail()}"
        except Exception as exc:  # the detail is a diagnostic only
            extra = f"; state unavailable: {exc}"
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}{extra}")


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
        ["calibration", "log", "--model", str(root / "models"), "--out", str(root / "log.npz"), "--hours", "1",
         *world],
        ["replay", "--model", str(root / "models"), "--log", str(root / "log.npz"), "--out",
         str(root / "calibrators")],
    ]
    for args in steps:
        proc = subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, f"feedrank {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    assert (root / "models" / "latest").exists()
    return root
