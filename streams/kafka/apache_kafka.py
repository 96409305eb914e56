"""A real Apache Kafka broker (KRaft, no ZooKeeper, no Docker) started by the project itself.

The broker jars are pinned in ``deploy/kafka/pom.xml`` (property ``kafka.version``) and
copied once into a cache (``$FEEDRANK_KAFKA_CACHE`` or
``~/.cache/feedrank/kafka/<version>/libs``) by Maven; after that nothing is downloaded.
What it needs: a Java >= 17 runtime, and ``mvn`` until the cache is filled.

``LocalKafka(brokers=1)`` is one combined broker+controller JVM; ``LocalKafka(brokers=3)``
is three combined nodes forming one controller quorum (so one node can be killed and the
cluster keeps working). Everything a node owns lives under ``data_dir/node-<i>/``
(``server.properties``, ``data/``, ``server.log``, ``stdout.log``) and ``data_dir/cluster.json``
keeps the cluster id and ports, so a later ``start()`` on the same ``data_dir`` comes back
with the same data on the same ports (storage is formatted only when ``meta.properties``
is missing).

Broker settings are tuned for tests on a small machine: 2 network / 2 I/O threads,
``group.initial.rebalance.delay.ms=0``, internal topics (consumer offsets, transactions,
share-group state) replicated ``min(3, brokers)`` times with ``min.isr = min(2, brokers)``.
``auto.create.topics.enable`` keeps Kafka's default (true; auto-created topics get
``num.partitions=1`` and replication factor 1); create topics explicitly when the
partition count or replication matters. Retention and flush settings are Kafka's defaults.

Command line::

    python -m streams.kafka.apache_kafka [--brokers 1|3] [--data-dir DIR]

This module uses the standard library only (and ``streams.kafka.procutil``).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
import weakref
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from streams.kafka.procutil import pdeathsig


log = logging.getLogger(__name__)

#: ``deploy/kafka/pom.xml`` of this checkout: the one place the Kafka version is pinned.
POM_PATH = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "pom.xml"
MIN_JAVA = 17
MAVEN_TIMEOUT_S = 900.0
_MARKER = ".feedrank-complete"
_FALLBACK_VERSION = "4.4.0"  # only when the pom is absent (a non-editable install)


class KafkaUnavailable(RuntimeError):
    """Kafka cannot be run here; ``reason`` is one operator-facing line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KafkaStartError(RuntimeError):
    """The broker JVMs were started but the cluster did not come up (see the node logs)."""


# --------------------------------------------------------------------------- version, jars


def _read_pom_version(pom: Path = POM_PATH) -> str:
    try:
        root = ET.parse(pom).getroot()
    except (OSError, ET.ParseError):
        return _FALLBACK_VERSION
    node = root.find("{http://maven.apache.org/POM/4.0.0}properties/{http://maven.apache.org/POM/4.0.0}kafka.version")
    if node is None:
        node = root.find("properties/kafka.version")  # a pom without the namespace
    text = (node.text or "").strip() if node is not None else ""
    return text or _FALLBACK_VERSION


KAFKA_VERSION: str = _read_pom_version()


def jar_cache_dir() -> Path:
    """Where the broker jars live: ``$FEEDRANK_KAFKA_CACHE`` or ``~/.cache/feedrank/kafka/<v>/libs``."""
    env = os.environ.get("FEEDRANK_KAFKA_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "feedrank" / "kafka" / KAFKA_VERSION / "libs"


def _java_bin() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home:
        cand = Path(home) / "bin" / "java"
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return shutil.which("java")


def java_version() -> int | None:
    """The major version of the ``java`` that would run the broker (``$JAVA_HOME`` or PATH), or None."""
    java = _java_bin()
    if java is None:
        return None
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        return None
    major = int(m.group(1))
    if major == 1 and m.group(2):  # "1.8.0_392" style
        major = int(m.group(2))
    return major


def _pom_digest() -> str:
    try:
        return hashlib.sha256(POM_PATH.read_bytes()).hexdigest()
    except OSError:
        return KAFKA_VERSION


def _jars_cached(libs: Path) -> bool:
    marker = libs / _MARKER
    try:
        return marker.read_text().strip() == _pom_digest() and any(libs.glob("kafka_2.13-*.jar"))
    except OSError:
        return False


def _check_java() -> None:
    v = java_version()
    if v is None:
        raise KafkaUnavailable(
            f"no java found (JAVA_HOME or PATH); Apache Kafka {KAFKA_VERSION} needs Java >= {MIN_JAVA}"
        )
    if v < MIN_JAVA:
        raise KafkaUnavailable(
            f"java {v} found, Apache Kafka {KAFKA_VERSION} needs Java >= {MIN_JAVA} (set JAVA_HOME)"
        )


def available() -> tuple[bool, str]:
    """Whether a real broker can be started here, without downloading anything; (ok, why)."""
    try:
        _check_java()
    except KafkaUnavailable as e:
        return False, e.reason
    libs = jar_cache_dir()
    if _jars_cached(libs):
        return True, f"java {java_version()}, Kafka {KAFKA_VERSION} jars cached in {libs}"
    if shutil.which("mvn") is None:
        return False, f"Kafka {KAFKA_VERSION} jars not cached in {libs} and no mvn to fetch them"
    if not POM_PATH.is_file():
        return False, f"Kafka jars not cached in {libs} and {POM_PATH} is missing"
    return True, f"java {java_version()}, Kafka {KAFKA_VERSION} jars will be fetched with mvn into {libs}"


def ensure_jars(progress: Callable[[str], Any] = print, timeout_s: float = MAVEN_TIMEOUT_S) -> Path:
    """The directory holding every broker jar, fetching them with Maven the first time.

    Raises ``KafkaUnavailable`` when java (>= 17) or mvn is missing or Maven fails.
    Safe to call from several processes at once (a file lock serialises the fetch).
    """
    _check_java()
    libs = jar_cache_dir()
    if _jars_cached(libs):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaUnavailable(
            f"Kafka {KAFKA_VERSION} jars are not cached in {libs} and mvn is not installed to fetch them"
        )
    if not POM_PATH.is_file():
        raise KafkaUnavailable(f"cannot fetch Kafka jars: {POM_PATH} is missing")
    libs.parent.mkdir(parents=True, exist_ok=True)
    with open(libs.parent / f".{libs.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _jars_cached(libs):  # another process filled it while we waited
            return libs
        progress(f"kafka: fetching Apache Kafka {KAFKA_VERSION} jars with maven into {libs} (one time, ~55 MB)")
        tmp = libs.parent / f".{libs.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            mvn, "-B", "-q", "-f", str(POM_PATH),
            "dependency:copy-dependencies", f"-DoutputDirectory={tmp}",
        ]
        started = time.monotonic()
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            shutil.rmtree(tmp, ignore_errors=True)
            raise KafkaUnavailable(f"maven did not fetch the Kafka jars within {timeout_s:.0f} s") from None
        except OSError as e:
            raise KafkaUnavailable(f"cannot run mvn: {e}") from None
        if out.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
            shutil.rmtree(tmp, ignore_errors=True)
            lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
            errors = [ln for ln in lines if "ERROR" in ln] or lines or ["no output"]
            detail = re.sub(r"\x1b\[[0-9;]*m", "", errors[0])[:300]
            raise KafkaUnavailable(f"maven could not fetch the Kafka {KAFKA_VERSION} jars (exit {out.returncode}): {detail}")
        libs.mkdir(parents=True, exist_ok=True)
        for old in list(libs.glob("*.jar")) + [libs / _MARKER]:
            old.unlink(missing_ok=True)
        for jar in tmp.iterdir():
            os.replace(jar, libs / jar.name)
        tmp.rmdir()
        (libs / _MARKER).write_text(_pom_digest() + "\n")
        log.info("kafka jars fetched into %s in %.1f s", libs, time.monotonic() - started)
        return libs


# --------------------------------------------------------------------------- small helpers


def _free_ports(host: str, n: int) -> list[int]:
    """``n`` distinct free ports (all held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _kafka_uuid() -> str:
    """A Kafka ``Uuid`` string (22 url-safe base64 chars), as ``kafka-storage random-uuid`` makes."""
    while True:
        s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not s.startswith("-"):
            return s




def _die_with_parent() -> None:  # runs in the child between fork and exec
    pdeathsig(signal.SIGKILL)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)


def _request(sock: socket.socket, api_key: int, version: int, body: bytes, corr: int) -> bytes:
    client_id = b"feedrank-probe"
    header = struct.pack(">hhih", api_key, version, corr, len(client_id)) + client_id
    msg = header + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    data = _recv_exact(sock, size)
    if struct.unpack(">i", data[:4])[0] != corr:
        raise ConnectionError("unexpected correlation id")
    return data[4:]


def probe_brokers(host: str, port: int, timeout_s: float = 2.0) -> list[int] | None:
    """Ask one node, with raw ApiVersions + Metadata requests, which brokers are alive.

    Returns the broker ids that node's metadata lists, or None when it does not answer.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            resp = _request(sock, 18, 0, b"", 1)  # ApiVersions v0
            (err, count) = struct.unpack(">hi", resp[:6])
            versions = {}
            for i in range(count):
                k, lo, hi = struct.unpack(">hhh", resp[6 + 6 * i: 12 + 6 * i])
                versions[k] = (lo, hi)
            if err != 0 or 3 not in versions:
                return None
            lo, hi = versions[3]
            v = max(lo, 4)
            if v > min(hi, 8):  # no non-flexible Metadata version left: liveness is all we know
                return []
            body = struct.pack(">ib", 0, 0)  # no topics, allow_auto_topic_creation=false
            if v >= 8:
                body += struct.pack(">bb", 0, 0)
            resp = _request(sock, 3, v, body, 2)
            off = 4  # throttle_time_ms
            (n,) = struct.unpack(">i", resp[off: off + 4])
            off += 4
            ids = []
            for _ in range(n):
                (node_id,) = struct.unpack(">i", resp[off: off + 4])
                off += 4
                (hlen,) = struct.unpack(">h", resp[off: off + 2])
                off += 2 + hlen + 4  # host, port
                (rlen,) = struct.unpack(">h", resp[off: off + 2])
                off += 2 + max(rlen, 0)
                ids.append(node_id)
            return sorted(ids)
    except (OSError, ConnectionError, struct.error):
        return None


# --------------------------------------------------------------------------- the cluster


_LIVE: "weakref.WeakSet[LocalKafka]" = weakref.WeakSet()


def _stop_all_at_exit() -> None:
    for k in list(_LIVE):
        try:
            k.stop(timeout_s=10)
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass


atexit.register(_stop_all_at_exit)


def _default_data_dir() -> Path:
    return Path("var/kafka") / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _log4j_config(log_file: Path) -> str:
    return "\n".join([
        "status = warn",
        "appender.file.type = File",
        "appender.file.name = FILE",
        f"appender.file.fileName = {log_file}",
        "appender.file.append = true",
        "appender.file.layout.type = PatternLayout",
        "appender.file.layout.pattern = [%d] %p %m (%c)%n",
        "rootLogger.level = INFO",
        "rootLogger.appenderRef.file.ref = FILE",
        "logger.state.name = state.change.logger",
        "logger.state.level = WARN",
        "logger.cleaner.name = kafka.log.LogCleaner",
        "logger.cleaner.level = WARN",
        "",
    ])


class LocalKafka:
    """Apache Kafka nodes (combined broker+controller, KRaft) running as child JVMs on loopback.

    ``brokers`` nodes form one controller quorum; ``bootstrap`` lists every node.
    ``extra_config`` entries are added to (and override) every node's ``server.properties``.
    The JVMs are killed if this Python process dies (``PR_SET_PDEATHSIG``; note Linux sends it
    when the *thread* that started them exits, so start and restart nodes from a long-lived
    thread) and are stopped at interpreter exit.
    """

    def __init__(
        self,
        brokers: int = 1,
        data_dir: Path | str | None = None,
        host: str = "127.0.0.1",
        heap: str = "512m",
        extra_config: Mapping[str, Any] | None = None,
        jvm_opts: Sequence[str] = (),
        secured: Any = None,
    ) -> None:
        """``secured``: a ``streams.kafka.secured.SecuredListener`` to add a SASL_SSL listener (new data dirs only)."""
        if brokers < 1:
            raise ValueError("brokers must be >= 1")
        self.brokers = brokers
        self.data_dir = Path(data_dir) if data_dir is not None else _default_data_dir()
        self.host = host
        self.heap = heap
        self.extra_config = dict(extra_config or {})
        self.jvm_opts = list(jvm_opts)
        self.secured = secured
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * brokers
        self._nodes: list[dict[str, Any]] = []
        self._cluster_id = ""
        self._libs: Path | None = None
        self._lock = threading.RLock()

    # ---- layout

    @property
    def cluster_id(self) -> str:
        return self._cluster_id

    @property
    def bootstrap(self) -> str:
        """``host:port,host:port,...`` of every node's client listener."""
        if not self._nodes:
            raise RuntimeError("LocalKafka not started")
        return ",".join(f"{self.host}:{n['broker_port']}" for n in self._nodes)

    def node_bootstrap(self, i: int) -> str:
        return f"{self.host}:{self._nodes[i]['broker_port']}"

    @property
    def secured_bootstrap(self) -> str:
        """``host:port,...`` of every node's SASL_SSL listener (``secured=`` only)."""
        if not self._nodes or "secured_port" not in self._nodes[0]:
            raise RuntimeError("LocalKafka has no secured listener")
        return ",".join(f"{self.host}:{n['secured_port']}" for n in self._nodes)

    @property
    def pids(self) -> list[int | None]:
        """The JVM pid of each node (index = node id), None where the node is not running."""
        return [p.pid if p is not None and p.poll() is None else None for p in self._procs]

    def node_dir(self, i: int) -> Path:
        return self.data_dir / f"node-{i}"

    def log_file(self, i: int) -> Path:
        """The node's log4j log (its stdout/stderr go to ``stdout.log`` beside it)."""
        return self.node_dir(i) / "server.log"

    def _load_or_create_layout(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        meta = self.data_dir / "cluster.json"
        if meta.exists():
            saved = json.loads(meta.read_text())
            if len(saved["nodes"]) != self.brokers:
                raise ValueError(
                    f"{self.data_dir} holds a {len(saved['nodes'])}-node cluster, not {self.brokers}"
                )
            if saved.get("host", self.host) != self.host:
                raise ValueError(f"{self.data_dir} was created for host {saved['host']}, not {self.host}")
            self._cluster_id = saved["cluster_id"]
            self._nodes = saved["nodes"]
            if self.secured is not None and "secured_port" not in self._nodes[0]:
                raise ValueError(f"{self.data_dir} was created without a secured listener; use a new data dir")
            return
        ports = _free_ports(self.host, 3 * self.brokers)
        self._cluster_id = _kafka_uuid()
        self._nodes = [
            {
                "id": i,
                "broker_port": ports[3 * i],
                "controller_port": ports[3 * i + 1],
                "directory_id": _kafka_uuid(),
                **({"secured_port": ports[3 * i + 2]} if self.secured is not None else {}),
            }
            for i in range(self.brokers)
        ]
        meta.write_text(json.dumps(
            {"kafka_version": KAFKA_VERSION, "host": self.host, "cluster_id": self._cluster_id, "nodes": self._nodes},
            indent=2,
        ) + "\n")

    def _server_config(self, i: int) -> dict[str, Any]:
        n = self.brokers
        node = self._nodes[i]
        rf = min(3, n)
        isr = min(2, n)
        quorum = ",".join(f"{self.host}:{x['controller_port']}" for x in self._nodes)
        cfg: dict[str, Any] = {
            "process.roles": "broker,controller",
            "node.id": i,
            "listeners": f"PLAINTEXT://{self.host}:{node['broker_port']},CONTROLLER://{self.host}:{node['controller_port']}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{node['broker_port']},CONTROLLER://{self.host}:{node['controller_port']}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "controller.quorum.bootstrap.servers": quorum,
            "log.dirs": str((self.node_dir(i) / "data").resolve()),
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "true",
            "num.network.threads": 2,
            "num.io.threads": 2,
            "background.threads": 4,
            "num.recovery.threads.per.data.dir": 1,
            "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
        }
        if self.secured is not None and "secured_port" in node:
            from streams.kafka.secured import LISTENER

            extra = f"{LISTENER}://{self.host}:{node['secured_port']}"
            cfg["listeners"] += "," + extra
            cfg["advertised.listeners"] += "," + extra
            cfg["listener.security.protocol.map"] += f",{LISTENER}:SASL_SSL"
            cfg.update(self.secured.server_config(self.host, node["secured_port"]))
        cfg.update(self.extra_config)
        return cfg

    def _write_node_files(self, i: int) -> Path:
        d = self.node_dir(i)
        (d / "data").mkdir(parents=True, exist_ok=True)
        props = d / "server.properties"
        lines = ["# written by streams.kafka.apache_kafka; rewritten at every start"]
        lines += [f"{k}={v}" for k, v in self._server_config(i).items()]
        props.write_text("\n".join(lines) + "\n")
        (d / "log4j2.properties").write_text(_log4j_config(self.log_file(i).resolve()))
        return props

    def _java_cmd(self, main: str, *args: str, heap: str, log4j: Path) -> list[str]:
        java = _java_bin()
        assert java is not None and self._libs is not None
        return [
            java, f"-Xmx{heap}", "-Xms64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j.resolve()}",
            f"-Dkafka.logs.dir={log4j.parent.resolve()}",
            *self.jvm_opts,
            "-cp", f"{self._libs.resolve()}/*", main, *args,
        ]

    def _format(self) -> None:
        """Format every node whose storage has no ``meta.properties`` yet (in parallel)."""
        voters = ",".join(
            f"{n['id']}@{self.host}:{n['controller_port']}:{n['directory_id']}" for n in self._nodes
        )
        running: list[tuple[int, subprocess.Popen[bytes], Path]] = []
        for i in range(self.brokers):
            props = self._write_node_files(i)
            if (self.node_dir(i) / "data" / "meta.properties").exists():
                continue
            mode = ["--standalone"] if self.brokers == 1 else ["--initial-controllers", voters]
            if self.secured is not None:
                mode += ["--add-scram", self.secured.scram_format_arg()]
            cmd = self._java_cmd(
                "kafka.tools.StorageTool", "format", "--config", str(props.resolve()),
                "--cluster-id", self._cluster_id, *mode,
                heap="256m", log4j=self.node_dir(i) / "log4j2.properties",
            )
            out = self.node_dir(i) / "format.log"
            with open(out, "wb") as f:
                running.append((i, subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent), out))
        for i, p, out in running:
            try:
                rc = p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                rc = -9
            if rc != 0:
                tail = out.read_text(errors="replace").strip().splitlines()[-5:]
                raise KafkaStartError(f"formatting node {i} failed (exit {rc}): {' | '.join(tail)}")
        if self.brokers > 1 and running:
            # With --initial-controllers the voter set names each node's directory id; the
            # tool must have used ours, or the quorum never forms.
            for i, _, _ in running:
                text = (self.node_dir(i) / "data" / "meta.properties").read_text()
                if f"directory.id={self._nodes[i]['directory_id']}" not in text:
                    raise KafkaStartError(f"node {i}: storage formatted with an unexpected directory id")

    # ---- lifecycle

    def start(self, timeout_s: float = 60.0, progress: Callable[[str], Any] = print) -> "LocalKafka":
        """Fetch jars if needed, format storage if new, start every node, wait until all serve."""
        with self._lock:
            self._libs = ensure_jars(progress)
            self._load_or_create_layout()
            self._format()
            for i in range(self.brokers):
                if self._procs[i] is None or self._procs[i].poll() is not None:
                    self._spawn(i)
            _LIVE.add(self)
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop(timeout_s=10)
            raise
        return self

    def _spawn(self, i: int) -> None:
        node = self._nodes[i]
        for port in (node["broker_port"], node["controller_port"]):
            if not _port_free(self.host, port):
                raise KafkaStartError(
                    f"node {i}: port {self.host}:{port} (recorded in {self.data_dir / 'cluster.json'}) is in use"
                )
        props = self._write_node_files(i)
        cmd = self._java_cmd(
            "kafka.Kafka", str(props.resolve()), heap=self.heap, log4j=self.node_dir(i) / "log4j2.properties"
        )
        with open(self.node_dir(i) / "stdout.log", "ab") as out:
            self._procs[i] = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent, start_new_session=True,
            )
        log.info("kafka node %d started (pid %d, %s)", i, self._procs[i].pid, self.node_bootstrap(i))

    def _alive(self) -> list[int]:
        return [i for i, p in enumerate(self._procs) if p is not None and p.poll() is None]

    def wait_ready(self, timeout_s: float = 60.0, nodes: Sequence[int] | None = None) -> None:
        """Until each running node (or ``nodes``) answers Metadata listing every running broker."""
        deadline = time.monotonic() + timeout_s
        while True:
            alive = self._alive()
            targets = list(nodes) if nodes is not None else alive
            dead = [i for i in targets if i not in alive]
            if dead:
                raise KafkaStartError(f"kafka node {dead[0]} exited: {self._tail(dead[0])}")
            ok = True
            for i in targets:
                seen = probe_brokers(self.host, self._nodes[i]["broker_port"])
                if seen is None or (seen and not set(alive) <= set(seen)):
                    ok = False
                    break
            if ok:
                return
            if time.monotonic() > deadline:
                raise KafkaStartError(
                    f"kafka ({len(targets)} node(s)) not ready within {timeout_s:.0f} s; see {self.data_dir}/node-*/server.log"
                )
            time.sleep(0.2)

    def _tail(self, i: int, lines: int = 3) -> str:
        for f in (self.node_dir(i) / "stdout.log", self.log_file(i)):
            try:
                text = [ln for ln in f.read_text(errors="replace").splitlines() if ln.strip()]
            except OSError:
                continue
            errs = [ln for ln in text if "ERROR" in ln or "Exception" in ln]
            if errs or text:
                return " | ".join((errs or text)[-lines:])[:600]
        return "no log output"

    def stop_node(self, i: int, timeout_s: float = 30.0) -> None:
        """SIGTERM node ``i`` (controlled shutdown), SIGKILL after ``timeout_s``."""
        p = self._procs[i]
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("kafka node %d ignored SIGTERM for %.0f s; killing it", i, timeout_s)
            p.kill()
            p.wait()

    def kill_node(self, i: int) -> None:
        """SIGKILL node ``i`` (a crash: no controlled shutdown); its data stays."""
        p = self._procs[i]
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()

    def start_node(self, i: int, timeout_s: float = 60.0) -> None:
        """Restart a stopped or killed node with its data, and wait until it is back in the cluster."""
        with self._lock:
            if self._libs is None or not self._nodes:
                raise RuntimeError("start() the cluster first")
            p = self._procs[i]
            if p is not None and p.poll() is None:
                return
            self._spawn(i)
        self.wait_ready(timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop every node: SIGTERM all at once, SIGKILL whatever is left after ``timeout_s``."""
        with self._lock:
            procs = [p for p in self._procs if p is not None and p.poll() is None]
            for p in procs:
                p.terminate()
            deadline = time.monotonic() + timeout_s
            for p in procs:
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            self._procs = [None] * self.brokers
            _LIVE.discard(self)

    def __enter__(self) -> "LocalKafka":
        if not self._alive():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        boot = self.bootstrap if self._nodes else "not started"
        return f"LocalKafka(brokers={self.brokers}, {boot}, data_dir={str(self.data_dir)!r})"


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m streams.kafka.apache_kafka",
        description=f"Run Apache Kafka {KAFKA_VERSION} (KRaft) in the foreground until Ctrl-C / SIGTERM.",
    )
    ap.add_argument("--brokers", type=int, default=1, help="combined broker+controller nodes (1 or 3)")
    ap.add_argument("--data-dir", type=Path, default=None, help="keep data here (reused when it exists)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--heap", default="512m", help="max heap per node JVM")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the cluster")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def on_term(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop is enough; PDEATHSIG covers a SIGKILL
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    kafka = LocalKafka(brokers=args.brokers, data_dir=args.data_dir, host=args.host, heap=args.heap)
    try:
        t0 = time.monotonic()
        kafka.start(timeout_s=args.timeout, progress=say)
    except (KafkaUnavailable, KafkaStartError, ValueError) as e:
        say(f"kafka: {e}")
        return 1
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM while starting (start() already stopped the nodes)
        kafka.stop()
        return 130
    say(f"kafka {KAFKA_VERSION}: {args.brokers} node(s) up in {time.monotonic() - t0:.1f} s, data in {kafka.data_dir}")
    print(kafka.bootstrap, flush=True)
    rc = 0
    try:
        while True:
            time.sleep(1.0)
            if len(kafka._alive()) < kafka.brokers:
                dead = [i for i in range(kafka.brokers) if i not in kafka._alive()]
                say(f"kafka: node {dead[0]} exited: {kafka._tail(dead[0])}")
                rc = 1
                break
    except KeyboardInterrupt:
        pass
    say("kafka: stopping")
    kafka.stop()
    return rc


if __name__ == "__main__":
    sys.exit(main())
