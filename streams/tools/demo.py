"""``feedrank demo``: the whole product on the embedded broker, in a closed loop.

1. A model: trained on first run and cached under ``var/models`` (then its
   calibrators are fit by replaying a logged hour of the synthetic world), so
   later runs start in seconds.
2. The embedded broker, a worker (tables, scorer, online calibration, web API)
   and the closed-loop simulator: simulated users ask ``/score``, see the top
   items and engage with the world's true probabilities; impressions join
   their engagements, the calibrators learn online, drift is published.
3. A live summary every few seconds and a final report; Ctrl-C (or SIGTERM)
   stops every process it started, broker included. Children also die with
   the demo (PR_SET_PDEATHSIG), so even a SIGKILL leaves no orphan.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from streams.kafka.embedded import EmbeddedBroker

from streams.kafka.procutil import free_port, pdeathsig
from streams.metrics import Scrape, scrape
from streams.settings import Settings
from streams.kafka.topics import ensure_system_topics

log = logging.getLogger(__name__)

WORLD = {"--users": "1000", "--items": "1000", "--seed": "0"}
#: the background producer's traffic (other users of the platform)
BACKGROUND = {"--users": "20000", "--seed": "1"}


def _get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


class Demo:
    """Supervises the demo's processes."""

    def __init__(self, settings: Settings, requests_per_s: float, background_rate: float,
                 duration_s: float | None, run_dir: Path = Path("var/demo")) -> None:
        self.settings = settings
        self.requests_per_s = requests_per_s
        self.background_rate = background_rate
        self.duration_s = duration_s
        self.run_dir = run_dir
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.broker: EmbeddedBroker | None = None
        self._stop = False
        self.pending_steps: list[tuple[str, list[str]]] = []
        self.env: dict[str, str] = {}

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        logf = open(self.run_dir / f"{name}.log", "ab" if name == "setup" else "wb")
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", *args], env=env, stdout=logf,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=pdeathsig)
        logf.close()
        self.children.append((name, proc))
        return proc

    def setup_steps(self) -> list[tuple[str, list[str]]]:
        """First run only: train into a staging root, fit calibrators by replay, then publish.

        The worker hot-swaps the model when ``<model_dir>/latest`` appears, so the
        stream runs from the start and scoring begins once the model is ready,
        the same order as a production rollout (train, replay, publish).
        """
        s = self.settings
        if (s.model_dir / "latest").exists():
            print(f"model: cached under {s.model_dir} (delete it to retrain)", flush=True)
            return []
        staging = self.run_dir / "staging-models"
        world = [x for kv in WORLD.items() for x in kv]
        log_path = self.run_dir / "replay-log.npz"
        print("model: first run, training one on the synthetic world while the stream starts "
              "(a few minutes on 2 cores); /score answers 503 until it is published", flush=True)
        # The calibration log stands in for the serving logs the calibrators are fit on, so it must
        # look like what the worker will serve: the same score path and policy (top 10 of 100 by
        # blended utility, recalibrated at the shown rank) and the same tables, which the background
        # producer's traffic feeds too. A log of other picks mis-calibrated the served items 1.5-2.8x.
        background = ["--background-rate", str(self.background_rate),
                      "--background-users", BACKGROUND["--users"], "--background-seed", BACKGROUND["--seed"]]
        return [
            ("train", ["train", "--out", str(staging), *world, "--train-hours", "12", "--epochs", "2"]),
            ("calibration-log", ["calibration", "log", "--model", str(staging), "--out", str(log_path),
                                 "--hours", "1", *world, *background]),
            ("replay", ["replay", "--model", str(staging), "--log", str(log_path), "--out", str(s.calibrator_dir)]),
        ]

    def publish_model(self) -> None:
        """Copy the staged artifact into ``model_dir`` and point ``latest`` at it (atomic)."""
        import shutil

        staging = self.run_dir / "staging-models"
        version = (staging / "latest").read_text().strip()
        target = self.settings.model_dir / version
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copytree(staging / version, target)
        tmp = self.settings.model_dir / ".latest.tmp"
        tmp.write_text(version + "\n")
        os.replace(tmp, self.settings.model_dir / "latest")
        print(f"model {version} published with its calibrators; the worker swaps it in", flush=True)

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
        env = {**os.environ}
        self.pending_steps = self.setup_steps()
        self.broker = EmbeddedBroker(port=s.embedded_broker_port, log_path=self.run_dir / "broker.log").start()
        print(f"\nembedded broker   {self.broker.bootstrap}   (log {self.broker.log_path})", flush=True)
        ensure_system_topics(self.broker.bootstrap, s)
        web_port = s.web_port or free_port()
        url = f"http://{s.web_host}:{web_port}"
        env.update(KAFKA_BOOTSTRAP_SERVERS=self.broker.bootstrap, FEEDRANK_WEB_PORT=str(web_port),
                   FEEDRANK_DATA_DIR=str(self.run_dir / "data"),
                   # shorter event-time windows so the demo shows labels and drift within minutes
                   # (150 s still covers the world's slowest engagement: a long click after a 2-minute dwell)
                   FEEDRANK_ATTRIBUTION_WINDOW_S=os.environ.get("FEEDRANK_ATTRIBUTION_WINDOW_S", "150"),
                   FEEDRANK_ALLOWED_LATENESS_S=os.environ.get("FEEDRANK_ALLOWED_LATENESS_S", "5"),
                   FEEDRANK_DRIFT_INTERVAL_S=os.environ.get("FEEDRANK_DRIFT_INTERVAL_S", "10"),
                   FEEDRANK_CALIBRATION_SNAPSHOT_S=os.environ.get("FEEDRANK_CALIBRATION_SNAPSHOT_S", "20"))
        self.env = env
        self._spawn("worker", ["worker"], env)
        print(f"worker            {url}   (log {self.run_dir / 'worker.log'})", flush=True)
        stats_path = self.run_dir / "simulate.json"
        stats_path.unlink(missing_ok=True)
        world = [x for kv in WORLD.items() for x in kv]
        self._spawn("simulate", ["simulate", "--url", url, "--requests-per-s", str(self.requests_per_s),
                                 "--stats", str(stats_path), *world], env)
        print(f"simulated users   {self.requests_per_s:g} feed requests/s in a closed loop "
              f"(log {self.run_dir / 'simulate.log'})", flush=True)
        if self.background_rate > 0:
            self._spawn("producer", ["produce", "--rate", str(self.background_rate), "--users", BACKGROUND["--users"],
                                     "--duration", str(10 ** 9), "--seed", BACKGROUND["--seed"]], env)
            print(f"background events {self.background_rate:g}/s from other users", flush=True)
        print(f"\ninspect:  {url}/status   {url}/feedback-loop   {url}/calibration   {url}/metrics\n"
              f"          {url}/users/u1/sequence   feedrank inspect user u1 --url {url}\n"
              "Ctrl-C stops everything.\n", flush=True)
        return self._loop(url, stats_path)

    def _advance_setup(self) -> None:
        """Run the first-run set-up steps one after the other, then publish the model."""
        running = [(n, p) for n, p in self.children if n == "setup"]
        if running:
            _name, proc = running[0]
            if proc.poll() is None:
                return
            self.children.remove(running[0])
            if proc.returncode != 0:
                raise RuntimeError(f"set-up step failed (exit {proc.returncode}); see {self.run_dir / 'setup.log'}")
            if not self.pending_steps:
                self.publish_model()
                return
        if self.pending_steps:
            name, args = self.pending_steps.pop(0)
            print(f"  set-up: {name} (feedrank {' '.join(args[:2])} ...; log {self.run_dir / 'setup.log'})", flush=True)
            self._spawn("setup", args, self.env)

    def _loop(self, url: str, stats_path: Path) -> int:
        start = time.monotonic()
        last = Scrape()
        last_t = start
        while not self._stop:
            time.sleep(0.5)
            try:
                self._advance_setup()
            except RuntimeError as exc:
                print(exc)
                return 1
            for name, proc in self.children:
                if name != "setup" and proc.poll() is not None and proc.returncode != 0:
                    print(f"{name} exited with {proc.returncode}; see {self.run_dir / (name + '.log')}")
                    return 1
            now = time.monotonic()
            if self.duration_s is not None and now - start > self.duration_s:
                break
            if now - last_t < 5.0:
                continue
            try:
                m = scrape(url)
                cal = json.loads(_get(url + "/calibration"))
            except OSError:
                print(f"[{now - start:5.0f}s] waiting for the worker to start ...", flush=True)
                last_t = now
                continue
            sim = json.loads(stats_path.read_text()) if stats_path.exists() else {}
            consumed = m.value("feedrank_events_valid_total")
            rate = m.delta(last, "feedrank_events_valid_total") / (now - last_t)
            fresh = m.quantile("feedrank_freshness_seconds", 0.99, since=last)
            print(self.summary_line(now - start, consumed, rate, fresh, sim, cal), flush=True)
            last, last_t = m, now
        self.final_report(url, stats_path)
        return 0

    @staticmethod
    def summary_line(t: float, consumed: float, rate: float, fresh_s: float | None, sim: dict[str, Any],
                     cal: dict[str, Any]) -> str:
        """One line: events, freshness p99 (this interval, histogram bucket bound), /score, ranking, calibration."""
        drift = cal.get("drift") or {}
        ce = ""
        if drift:
            window = drift["alert_config"]["window"]
            tasks = drift["windows"][window]["tasks"]
            ce = " ".join(f"{a[:6]}={tasks[a]['calibration_error']:.2f}" for a in tasks
                          if tasks[a].get("calibration_error") is not None)
            alerts = [a for a, st in drift.get("alerts", {}).items() if st["state"] != "ok"]
            ce += f" alerts={','.join(alerts) or 'none'}"
        gain = sim.get("gain_captured")
        fresh = f"<{fresh_s * 1000:.0f}ms" if fresh_s is not None and fresh_s != float("inf") else (
            ">10s" if fresh_s is not None else "-")
        return (f"[{t:5.0f}s] events {consumed:>8,.0f} ({rate:>6,.0f}/s) fresh p99 {fresh:>7} | score p50 {sim.get('score_p50_ms', float('nan')):5.1f}"
                f" p99 {sim.get('score_p99_ms', float('nan')):5.1f}ms req {sim.get('scored', 0):,} "
                f"gain {gain if gain is not None else float('nan'):.2f} | calib {ce or 'waiting for labels'}")

    def final_report(self, url: str, stats_path: Path) -> None:
        print("\nfinal report", flush=True)
        try:
            sim = json.loads(stats_path.read_text()) if stats_path.exists() else {}
            cal = json.loads(_get(url + "/calibration"))
            tables = json.loads(_get(url + "/tables/stats"))
        except (OSError, ValueError) as exc:
            print(f"  (worker not reachable for the report: {exc})")
            return
        print(f"  feed requests scored {sim.get('scored', 0):,} (failed {sim.get('failed', 0)}), "
              f"/score p50 {sim.get('score_p50_ms', float('nan')):.1f} ms p99 {sim.get('score_p99_ms', float('nan')):.1f} ms")
        print(f"  ranking quality: {sim.get('gain_captured') or float('nan'):.2f} of the achievable true-utility gain "
              "over a random pick (0 = random, 1 = perfect)")
        print(f"  events applied {tables.get('processed', 0):,}, dead-lettered {tables.get('dead_lettered', 0)}, "
              f"freshness p50/p99 ms over the whole run, start-up backlog included: {tables.get('freshness_ms', {})}")
        print(f"  calibrators {cal.get('calibrators')}")
        drift = cal.get("drift")
        if drift:
            window = drift["alert_config"]["window"]
            for a, s in drift["windows"][window]["tasks"].items():
                print(f"  {a:>15}: calibration error {s.get('calibration_error')}, ECE {s.get('ece')}, "
                      f"n {s.get('n')}, positives {s.get('positives')}, alert {drift['alerts'][a]['state']}")

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
        print("demo stopped: every process it started is down.", flush=True)


def _cmd_demo(args: argparse.Namespace) -> int:
    settings = Settings()
    duration = float(args.duration) if args.duration else None
    return Demo(settings, float(args.requests_per_s), float(args.background_rate), duration,
                run_dir=Path(args.run_dir)).run()


def register(sub) -> None:
    from streams.cli import env_flag

    p = sub.add_parser("demo", help="the whole pipeline in a closed loop on the embedded broker, with a live summary")
    env_flag(p, "--requests-per-s", envvar="FEEDRANK_DEMO_RPS", default=10, help="simulated feed requests per second")
    env_flag(p, "--background-rate", envvar="FEEDRANK_DEMO_RATE", default=300,
             help="extra synthetic events per second from other users (0 = none)")
    env_flag(p, "--duration", envvar="FEEDRANK_DEMO_DURATION", default=None, help="stop after N seconds")
    env_flag(p, "--run-dir", envvar="FEEDRANK_DEMO_DIR", default="var/demo",
             help="logs, state and the first run's staging files (models and calibrators: FEEDRANK_MODEL_DIR, "
                  "FEEDRANK_CALIBRATOR_DIR)")
    p.set_defaults(func=_cmd_demo)
