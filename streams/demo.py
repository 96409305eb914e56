"""``feedrank demo``: the whole pipeline on the embedded broker, with a live summary.

Starts the embedded broker, a worker and a synthetic producer as child
processes, prints what flows every few seconds, and on Ctrl-C (or SIGTERM)
stops every process it started, broker included. Children are also told to
die with the demo (PR_SET_PDEATHSIG), so even a SIGKILL leaves no orphan.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .broker import EmbeddedBroker, _pdeathsig, free_port
from .settings import Settings
from .topics import ensure_topics, topic_specs

log = logging.getLogger(__name__)


def _metrics(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=2) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


class Demo:
    """Supervises the demo's processes."""

    def __init__(self, settings: Settings, rate: float, users: int, duration_s: float | None) -> None:
        self.settings = settings
        self.rate = rate
        self.users = users
        self.duration_s = duration_s
        self.run_dir = Path("var/demo")
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.broker: EmbeddedBroker | None = None
        self._stop = False

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        logf = open(self.run_dir / f"{name}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", *args], env=env, stdout=logf,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_pdeathsig)
        logf.close()
        self.children.append((name, proc))
        return proc

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            return self._run()
        finally:
            self.shutdown()

    def _on_signal(self, *_: object) -> None:
        self._stop = True

    def _run(self) -> int:
        s = self.settings
        self.broker = EmbeddedBroker(port=s.embedded_broker_port, log_path=self.run_dir / "broker.log").start()
        print(f"embedded broker   {self.broker.bootstrap}   (log {self.broker.log_path})", flush=True)
        ensure_topics(self.broker.bootstrap, topic_specs(s), s.replication_factor)
        web_port = s.web_port or free_port()
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap, "FEEDRANK_WEB_PORT": str(web_port),
               "FEEDRANK_DATA_DIR": str(self.run_dir / "data")}
        url = f"http://{s.web_host}:{web_port}"
        self._spawn("worker", ["worker"], env)
        print(f"worker            {url}/metrics   (log {self.run_dir / 'worker.log'})", flush=True)
        self._spawn("producer", ["produce", "--rate", str(self.rate), "--users", str(self.users),
                                 "--duration", str(self.duration_s or 10 ** 9)], env)
        print(f"producer          {self.rate:.0f} events/s over {self.users} users   "
              f"(log {self.run_dir / 'producer.log'})", flush=True)
        print("Ctrl-C stops everything.\n", flush=True)
        start = time.monotonic()
        last: dict[str, float] = {}
        last_t = start
        while not self._stop:
            time.sleep(0.5)
            for name, proc in self.children:
                if proc.poll() is not None and not (name == "producer" and proc.returncode == 0):
                    print(f"{name} exited with {proc.returncode}; see {self.run_dir / (name + '.log')}")
                    return 1
            now = time.monotonic()
            if self.duration_s is not None and now - start > self.duration_s + 5:
                break
            if now - last_t < 3.0:
                continue
            try:
                m = _metrics(url)
            except OSError:
                print(f"[{now - start:5.0f}s] waiting for the worker to start ...", flush=True)
                last_t = now
                continue
            dt = now - last_t
            consumed = m.get("feedrank_events_consumed_total", 0.0)
            rate = (consumed - last.get("feedrank_events_consumed_total", 0.0)) / dt
            print(f"[{now - start:5.0f}s] consumed {consumed:>9,.0f} events ({rate:>7,.0f}/s)   valid "
                  f"{m.get('feedrank_events_valid_total', 0):>9,.0f}   dead-lettered "
                  f"{m.get('feedrank_events_dead_lettered_total', 0):,.0f}", flush=True)
            last, last_t = m, now
        return 0

    def shutdown(self) -> None:
        for _name, proc in reversed(self.children):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 15
        for _name, proc in self.children:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.broker is not None:
            self.broker.stop()
        print("demo stopped: worker, producer and broker are down.", flush=True)


def _cmd_demo(args: argparse.Namespace) -> int:
    settings = Settings()
    duration = float(args.duration) if args.duration else None
    return Demo(settings, float(args.rate), int(args.users), duration).run()


def register(sub) -> None:
    from .cli import env_flag

    p = sub.add_parser("demo", help="run broker, worker and producer together with a live summary")
    env_flag(p, "--rate", envvar="FEEDRANK_DEMO_RATE", default=500, help="events per second")
    env_flag(p, "--users", envvar="FEEDRANK_DEMO_USERS", default=2000, help="simulated users")
    env_flag(p, "--duration", envvar="FEEDRANK_DEMO_DURATION", default=None, help="stop after N seconds")
    p.set_defaults(func=_cmd_demo)
