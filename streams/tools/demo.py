"""``feedrank demo``: the whole product on the embedded broker, in a closed loop.

1. A model: trained on first run and cached under ``var/models`` (then its
   calibrators are fit by replaying a logged hour of the synthetic world), so
   later runs start in seconds. The set-up steps keep their outputs in
   ``var/demo/setup``: a run stopped mid set-up resumes at the step it was in.
   ``--duration`` counts from the model's publication.
2. The embedded broker, a worker (tables, scorer, online calibration, web API)
   and the closed-loop simulator: simulated users ask ``/score``, see the top
   items and engage with the world's true probabilities; impressions join
   their engagements, the calibrators learn online, drift is published.
3. A live summary every few seconds (only what was measured) and a final
   report; Ctrl-C (or SIGTERM) stops every process it started in dependency
   order: traffic, worker, then the broker. Each child runs in a session of
   its own, so the terminal's Ctrl-C reaches only the demo. Children also die
   with the demo (PR_SET_PDEATHSIG), so even a SIGKILL leaves no orphan.

Each run starts from a clean state (tables, logs) unless ``--keep-state``: the
embedded broker starts empty, so state kept from a previous run does not match it.
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

from scorer.consistency import format_report
from scorer.drift import format_interval
from streams.kafka.embedded import EmbeddedBroker

from streams.kafka.procutil import free_port, pdeathsig
from streams.metrics import Scrape, scrape
from streams.settings import Settings
from streams.kafka.topics import ensure_system_topics

log = logging.getLogger(__name__)

WORLD = {"--users": "1000", "--items": "1000", "--seed": "0"}
#: the first run's set-up (train, calibration log, replay) on a 2-core box: 4.4 minutes in issue 27's report;
#: 22 (train 6, calibration log 15, replay 0.5) on 2026-12-07 with the box shared (load 6 to 12); 11.4
#: (train 2.9, calibration log 8.1, replay 0.5) the same day, the box otherwise idle, the stream beside it;
#: 4.9 with the episodes (train 0.45, log 2.7, replay 0.2, episodes 1.4, replay 0.2) that evening, idle
#: 5.0 with 24 hours of training (train 0.9, log 2.5, replay 0.1, episodes 1.3, replay 0.2), real Kafka, idle
SETUP_MINUTES = "5 to 20"
#: the first run's cold-start episodes (``feedrank calibration log --episodes``) the start calibrators are refit on
LIVE_EPISODES, LIVE_EPISODE_MINUTES = 4, 5.0
#: the background producer's traffic (other users of the platform)
BACKGROUND = {"--users": "20000", "--seed": "1"}
#: hours of simulated traffic the first run trains on: a whole day, so every hour of the clock is seen
TRAIN_HOURS = 24


def http_get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


class Demo:
    """Supervises the demo's processes."""

    label = "demo"

    def __init__(self, settings: Settings, requests_per_s: float, background_rate: float,
                 duration_s: float | None, run_dir: Path = Path("var/demo"), keep_state: bool = False) -> None:
        self.settings = settings
        self.keep_state = keep_state
        self.published_at: float | None = None  # monotonic time the model was there (cached or published)
        self.first_scored_at: float | None = None
        self.hinted_user = False
        self.requests_per_s = requests_per_s
        self.background_rate = background_rate
        self.duration_s = duration_s
        self.run_dir = run_dir
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.broker: Any = None
        self._stop = False
        self.pending_steps: list[tuple[str, list[str]]] = []
        self.current_step, self.step_started = "", 0.0
        self.env: dict[str, str] = {}

    @property
    def setup_dir(self) -> Path:
        return self.run_dir / "setup"

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        path = self.setup_dir / "setup.log" if name == "setup" else self.run_dir / f"{name}.log"
        logf = open(path, "ab" if name == "setup" else "wb")
        # a session of its own: the terminal's Ctrl-C reaches the demo only, which stops children in order
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", *args], env=env, stdout=logf,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=pdeathsig,
                                start_new_session=True)
        logf.close()
        self.children.append((name, proc))
        return proc

    def setup_steps(self) -> list[tuple[str, list[str]]]:
        """First run only: train into a staging root, fit calibrators by replay, then publish.

        The worker hot-swaps the model when ``<model_dir>/latest`` appears, so the
        stream runs from the start and scoring begins once the model is ready,
        the same order as a production rollout (train, replay, publish).
        """
        from scorer.artifact import stale_reason

        s = self.settings
        stale = stale_reason(s.model_dir) if (s.model_dir / "latest").exists() else None
        if stale:  # a model of an older format (e.g. before item content): the worker would refuse it
            print(f"model: the cached model under {s.model_dir} is stale ({stale}): retraining", flush=True)
            (s.model_dir / "latest").unlink()
            for done in self.setup_dir.glob("*.done"):
                done.unlink()
        if (s.model_dir / "latest").exists():
            print(f"model: cached under {s.model_dir} (delete it to retrain)", flush=True)
            return []
        staging = self.setup_dir / "models"
        world = [x for kv in WORLD.items() for x in kv]
        log_path = self.setup_dir / "replay-log.npz"
        live_log_path = self.setup_dir / "replay-log-live.npz"
        # The calibration log stands in for the serving logs the calibrators are fit on, so it must
        # look like what the worker will serve: the same score path and policy (top 10 of 100 by
        # blended utility, recalibrated at the shown rank) and the same tables, which the background
        # producer's traffic feeds too. A log of other picks mis-calibrated the served items 1.5-2.8x.
        background = ["--background-rate", str(self.background_rate),
                      "--background-users", BACKGROUND["--users"], "--background-seed", BACKGROUND["--seed"]]
        steps = [
            # a whole day: a model trained on 12 h from midnight UTC never saw the afternoon and evening, and a
            # loop started then read video views 0.90-0.91 in its twin's first 300 s (1.00 with 24 h; docs/calibration.md)
            ("train", ["train", "--out", str(staging), *world, "--train-hours", str(TRAIN_HOURS), "--epochs", "2"]),
            ("calibration-log", ["calibration", "log", "--model", str(staging), "--out", str(log_path),
                                 "--hours", "1", *world, *background]),
            ("replay", ["replay", "--model", str(staging), "--log", str(log_path), "--out", str(s.calibrator_dir)]),
            # The loop starts cold and is served by these calibrators until its first online snapshot: refit
            # them on cold-start episodes at the loop's own rate and policy (no exploration), served by them
            # (issue 28: in the offline twin of the loop's first 200 s, 0.84-1.18x became 0.97-1.02x;
            # docs/calibration.md)
            ("calibration-log-live", ["calibration", "log", "--model", str(staging), "--calibrators", str(s.calibrator_dir),
                                      "--out", str(live_log_path), "--episodes", str(LIVE_EPISODES),
                                      "--hours", f"{LIVE_EPISODE_MINUTES / 60:.4f}",
                                      "--requests-per-s", f"{max(self.requests_per_s, 1.0):g}", "--explore-frac", "0",
                                      *world, *background]),
            ("replay-live", ["replay", "--model", str(staging), "--log", str(live_log_path),
                             "--out", str(s.calibrator_dir)]),
        ]
        outputs = {"train": staging / "latest", "calibration-log": log_path, "calibration-log-live": live_log_path}
        # a step is redone when it is not marked done or its output is gone, and so is every step after it
        first = next((i for i, (n, _) in enumerate(steps) if not (self.setup_dir / f"{n}.done").exists()
                      or (n in outputs and not outputs[n].exists())), len(steps))
        todo = steps[first:]
        done = [n for n, _ in steps if (n, _) not in todo]
        if done:
            print(f"model: set-up resumed from {self.setup_dir} ({', '.join(done)} done by an earlier run)", flush=True)
        if todo:
            print(f"model: first run, set-up ({', '.join(n for n, _ in todo)}) while the stream starts: "
                  f"about {SETUP_MINUTES} minutes on a 2-core box, more when it is busy. /score answers 503 "
                  "until the model is published; --duration counts from then. A stopped set-up resumes on the "
                  "next run.", flush=True)
        return todo

    def publish_model(self) -> None:
        """Copy the staged artifact into ``model_dir`` and point ``latest`` at it (atomic)."""
        import shutil

        staging = self.setup_dir / "models"
        version = (staging / "latest").read_text().strip()
        target = self.settings.model_dir / version
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copytree(staging / version, target)
        tmp = self.settings.model_dir / ".latest.tmp"
        tmp.write_text(version + "\n")
        os.replace(tmp, self.settings.model_dir / "latest")
        self.published_at = time.monotonic()
        print(f"model {version} published with its calibrators; the worker swaps it in"
              + (f" (the demo runs {self.duration_s:g} s from now)" if self.duration_s else ""), flush=True)

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.keep_state:
            self.clean_state()
        self.setup_dir.mkdir(parents=True, exist_ok=True)
        try:
            return self._run()
        finally:
            self.shutdown()

    def clean_state(self) -> None:
        """Remove the previous run's tables and logs (the broker starts empty too); keep ``setup/``."""
        import shutil

        for entry in self.run_dir.iterdir():
            if entry.name == "setup":
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def _on_signal(self, *_: object) -> None:
        if not self._stop:
            print("\nstopping: traffic, then the worker, then the broker ...", flush=True)
        self._stop = True

    def _run(self) -> int:
        s = self.settings
        env = {**os.environ}
        self.pending_steps = self.setup_steps()
        if not self.pending_steps and (self.setup_dir / "models" / "latest").exists() and not (
                s.model_dir / "latest").exists():
            self.publish_model()  # every set-up step was done by an earlier run
        elif not self.pending_steps:
            self.published_at = time.monotonic()
        self.broker = self.start_broker()
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
                   FEEDRANK_CALIBRATION_SNAPSHOT_S=os.environ.get("FEEDRANK_CALIBRATION_SNAPSHOT_S", "20"),
                   # the online/offline consistency check beside the stream, on a tenth of the requests
                   FEEDRANK_CONSISTENCY_CHECK=os.environ.get("FEEDRANK_CONSISTENCY_CHECK", "true"),
                   FEEDRANK_FEATURE_LOG_SAMPLE=os.environ.get("FEEDRANK_FEATURE_LOG_SAMPLE", "0.1"))
        self.env = env
        self._spawn("worker", ["worker"], env)
        print(f"worker            {url}   (log {self.run_dir / 'worker.log'})", flush=True)
        stats_path = self.run_dir / "simulate.json"
        stats_path.unlink(missing_ok=True)
        world = [x for kv in WORLD.items() for x in kv]
        self._spawn("simulate", ["simulate", "--url", url, "--requests-per-s", str(self.requests_per_s),
                                 "--stats", str(stats_path), *world, *self.simulate_args()], env)
        print(f"simulated users   asking for {self.requests_per_s:g} feed requests/s in a closed loop; the summary "
              f"shows the rate measured (log {self.run_dir / 'simulate.log'})", flush=True)
        if self.background_rate > 0:
            self._spawn("producer", ["produce", "--rate", str(self.background_rate), "--users", BACKGROUND["--users"],
                                     "--duration", str(10 ** 9), "--seed", BACKGROUND["--seed"]], env)
            print(f"background events {self.background_rate:g}/s from other users", flush=True)
        print(f"\ninspect:  {url}/status   {url}/feedback-loop   {url}/calibration   {url}/metrics\n"
              f"port {web_port}: change it with FEEDRANK_WEB_PORT=<port> (0 = any free one)\n"
              + self.legend + "Ctrl-C stops everything.\n", flush=True)
        return self._loop(url, stats_path)

    legend = ("          a user with data is suggested once requests are scored\n"
              "summary: events (rate), freshness p99 (produce -> visible), /score rate measured and latency,\n"
              "         gain = share of the achievable ranking gain (scored requests only), calibration error\n"
              "         per task (sum p / sum y; 1 = calibrated; meaningful after ~5 minutes of labels)\n")

    def start_broker(self) -> Any:
        """The demo's broker (the embedded one: it starts in a second); anything with ``bootstrap`` and ``stop()``."""
        broker = EmbeddedBroker(port=self.settings.embedded_broker_port, log_path=self.run_dir / "broker.log",
                                new_session=True).start()
        print(f"\nembedded broker   {broker.bootstrap}   (log {broker.log_path})", flush=True)
        return broker

    def simulate_args(self) -> list[str]:
        """Extra ``feedrank simulate`` arguments (the live calibration benchmark's shift)."""
        return []

    def _advance_setup(self) -> None:
        """Run the first-run set-up steps one after the other, then publish the model."""
        running = [(n, p) for n, p in self.children if n == "setup"]
        if running:
            _name, proc = running[0]
            if proc.poll() is None:
                return
            self.children.remove(running[0])
            if proc.returncode != 0:
                raise RuntimeError(f"set-up step failed (exit {proc.returncode}); see {self.setup_dir / 'setup.log'}")
            (self.setup_dir / f"{self.current_step}.done").touch()
            took = time.monotonic() - self.step_started
            print(f"  set-up: {self.current_step} done in {took:.0f} s", flush=True)
            if not self.pending_steps:
                self.publish_model()
                return
        if self.pending_steps:
            name, args = self.pending_steps.pop(0)
            self.current_step, self.step_started = name, time.monotonic()
            print(f"  set-up: {name} (feedrank {' '.join(args[:2])} ...; progress in {self.setup_dir / 'setup.log'})",
                  flush=True)
            self._spawn("setup", args, self.env)

    def _loop(self, url: str, stats_path: Path) -> int:
        start = time.monotonic()
        last = Scrape()
        last_sim: dict[str, Any] = {}
        last_t = start
        while not self._stop:
            time.sleep(0.5)
            try:
                self._advance_setup()
            except RuntimeError as exc:
                print(exc)
                return 1
            failed = self.child_failure()
            if failed:
                print(failed)
                return 1
            now = time.monotonic()
            if self.duration_s is not None and self.published_at is not None and now - self.published_at > self.duration_s:
                break
            if now - last_t < 5.0:
                continue
            try:
                m = scrape(url)
                cal = json.loads(http_get(url + "/calibration"))
            except OSError:
                print(f"[{now - start:5.0f}s] waiting for the worker to start ...", flush=True)
                last_t = now
                continue
            sim = json.loads(stats_path.read_text()) if stats_path.exists() else {}
            dt = now - last_t
            consumed = m.value("feedrank_events_valid_total")
            rate = m.delta(last, "feedrank_events_valid_total") / dt
            req_rate = (sim.get("requests", 0) - last_sim.get("requests", 0)) / dt
            fresh = m.quantile("feedrank_freshness_seconds", 0.99, since=last)
            setup = self.current_step if any(n == "setup" and p.poll() is None for n, p in self.children) else ""
            why = self.freshness_reason(m, last, fresh, setup)
            if sim.get("scored", 0) > 0 and self.first_scored_at is None:
                self.first_scored_at = now
                ref = self.published_at if self.published_at is not None else start
                print(f"[{now - start:5.0f}s] first feed request scored ({now - start:.0f} s after start, "
                      f"{max(0.0, now - ref):.0f} s after the model was there)", flush=True)
            print(self.summary_line(now - start, consumed, rate, fresh, sim, cal, req_rate, why), flush=True)
            if not self.hinted_user and sim.get("busiest_user") and sim.get("scored", 0) > 0:
                u = sim["busiest_user"]
                print(f"          a user with data: {url}/users/{u}/sequence   feedrank inspect user {u} --url {url}",
                      flush=True)
                self.hinted_user = True
            last, last_sim, last_t = m, sim, now
        self.final_report(url, stats_path)
        return 0

    def child_failure(self) -> str:
        """Which long-running child exited with an error, if one did ("" when none)."""
        for name, proc in self.children:
            if name != "setup" and proc.poll() is not None and proc.returncode != 0:
                return f"{name} exited with {proc.returncode}; see {self.run_dir / (name + '.log')}"
        return ""

    @staticmethod
    def freshness_reason(m: Scrape, prev: Scrape, fresh_s: float | None, setup: str = "") -> str:
        """Why freshness p99 is over 1 s, from what was measured: start-up, consumer lag, a blocked loop, box load,
        the first run's set-up step (``setup``: its name while it runs beside the stream)."""
        if fresh_s is None or fresh_s <= 1.0:
            return ""
        if not prev.value("feedrank_events_valid_total"):
            return "start-up backlog: events produced before the worker was up"
        reasons = []
        lag = m.value("feedrank_consumer_lag")
        if lag > 100:
            reasons.append(f"backlog {lag:,.0f} events behind")
        loop = m.quantile("feedrank_event_loop_lag_seconds", 0.99, since=prev)
        if loop is not None and loop > 0.1:
            reasons.append(f"lag: event loop blocked p99 {'>10s' if loop == float('inf') else f'{loop * 1000:.0f}ms'}")
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        if setup:
            reasons.append(f"the set-up's {setup} shares the {cores} cores")
        if load > cores:
            reasons.append(f"load {load:.1f} on {cores} cores")
        return "; ".join(reasons) or "not lag, backlog or load (see the worker log)"

    @staticmethod
    def summary_line(t: float, consumed: float, rate: float, fresh_s: float | None, sim: dict[str, Any],
                     cal: dict[str, Any], req_rate: float | None = None, fresh_why: str = "") -> str:
        """One line of what was measured: events, freshness p99 (this interval), /score, ranking, calibration."""
        drift = cal.get("drift") or {}
        ce = ""
        if drift:
            window = drift["alert_config"]["window"]
            tasks = drift["windows"][window]["tasks"]
            gathering = {a for a, st in drift.get("alerts", {}).items() if st.get("gathering")}
            # `?`: fewer positives than the alert needs (the 99.9 % interval decides alerts until then)
            ce = " ".join(f"{a[:6]}={tasks[a]['calibration_error']:.2f}{'?' if a in gathering else ''}" for a in tasks
                          if tasks[a].get("calibration_error") is not None)
            alerts = [a for a, st in drift.get("alerts", {}).items() if st["state"] != "ok"]
            ce += f" alerts={','.join(alerts) or 'none'}"
        scored, failed, unavailable = sim.get("scored", 0), sim.get("failed", 0), sim.get("unavailable", 0)
        fresh = f"<{fresh_s * 1000:.0f}ms" if fresh_s is not None and fresh_s != float("inf") else (
            ">10s" if fresh_s is not None else "-")
        if fresh_why:
            fresh += f" ({fresh_why})"
        rate_txt = f" {req_rate:.1f}/s" if req_rate is not None else ""
        if scored:
            score = (f"req {scored:,} ok{rate_txt} ({failed:,} failed) p50 {sim.get('score_p50_ms', float('nan')):.1f}"
                     f" p99 {sim.get('score_p99_ms', float('nan')):.1f}ms")
            gain, ci = sim.get("gain_captured"), sim.get("gain_interval")
            ranking = (f"gain {gain:.2f}" + (f"±{(ci[1] - ci[0]) / 2:.2f}" if ci else "")) if gain is not None else "gain -"
        else:
            score = f"req 0 ok{rate_txt}" + (f" ({unavailable:,} answered 503: no model yet)" if unavailable else "") + (
                f" ({failed:,} failed)" if failed else "")
            ranking = "gain - (nothing scored yet)"
        return (f"[{t:5.0f}s] events {consumed:>8,.0f} ({rate:>6,.0f}/s) fresh p99 {fresh:>7} | {score} | {ranking}"
                f" | calib {ce or 'waiting for labels'}")

    @staticmethod
    def freshness_text(fresh_ms: dict[str, Any]) -> str:
        """The whole run's produce-to-visible delay, in the unit that reads best."""
        def fmt(ms: float) -> str:
            return f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms"

        if fresh_ms.get("p50") is None or fresh_ms.get("p99") is None:
            return ""
        return (f"; freshness over the whole run (start-up backlog included): p50 {fmt(fresh_ms['p50'])}, "
                f"p99 {fmt(fresh_ms['p99'])}")

    @staticmethod
    def calibrators_text(info: dict[str, Any]) -> str:
        if not info.get("model_version"):
            return f"none ({info.get('error') or 'no model yet'})"
        return (f"version {info.get('version')} of model {info['model_version']} ({info.get('source')}, "
                f"trained on {info.get('trained_examples') or 0:,} examples)")

    def final_report(self, url: str, stats_path: Path) -> dict[str, Any]:
        """Prints the run's report; returns the ``/calibration`` JSON it read ({} when the worker is gone)."""
        print("\nfinal report", flush=True)
        try:
            sim = json.loads(stats_path.read_text()) if stats_path.exists() else {}
            cal = json.loads(http_get(url + "/calibration"))
            tables = json.loads(http_get(url + "/tables/stats"))
        except (OSError, ValueError) as exc:
            print(f"  (worker not reachable for the report: {exc})")
            return {}
        scored = sim.get("scored", 0)
        unavailable = sim.get("unavailable", 0)
        print(f"  feed requests scored {scored:,}, failed {sim.get('failed', 0):,}"
              + (f", answered 503 before the model was there {unavailable:,}" if unavailable else "")
              + (f", /score p50 {sim.get('score_p50_ms', float('nan')):.1f} ms p99 "
                 f"{sim.get('score_p99_ms', float('nan')):.1f} ms" if scored else ""))
        if self.first_scored_at is not None and self.published_at is not None:
            print(f"  first request scored {max(0.0, self.first_scored_at - self.published_at):.0f} s after the model "
                  "was there")
        gain, ci = sim.get("gain_captured"), sim.get("gain_interval")
        if scored and gain is not None:
            print(f"  ranking quality: {gain:.2f}" + (f" (95 % interval {ci[0]:.2f} to {ci[1]:.2f})" if ci else "")
                  + " of the achievable true-utility gain over a random pick "
                  f"(0 = random, 1 = perfect; over the {scored:,} scored requests)")
        else:
            print("  ranking quality: - (no request was scored)")
        if sim.get("busiest_user"):
            print(f"  a user with data: {url}/users/{sim['busiest_user']}/sequence (while the demo runs)")
        print(f"  events applied {tables.get('processed', 0):,}, dead-lettered {tables.get('dead_lettered', 0)}"
              + self.freshness_text(tables.get("freshness_ms") or {}))
        print("  calibrators: " + self.calibrators_text(cal.get("calibrators") or {}))
        consistency = cal.get("consistency")
        if consistency and consistency.get("requests"):
            print("  " + format_report(consistency, top=6).replace("\n", "\n  "))
        drift = cal.get("drift")
        if drift:
            window = drift["alert_config"]["window"]
            need = drift["alert_config"]["min_positives"]
            for a, s in drift["windows"][window]["tasks"].items():
                ce, iv = s.get("calibration_error"), s.get("interval")
                ce_txt = "-" if ce is None else f"{ce:.3f}"
                iv_txt = f" (99.9 % interval {format_interval(iv)})" if iv else ""
                ece = s.get("ece")
                state = drift["alerts"][a]["state"]
                gathering = f", gathering labels ({s.get('positives')} of {need} positives)" if drift["alerts"][a].get(
                    "gathering") else ""
                print(f"  {a:>15}: calibration error {ce_txt}{iv_txt}, ECE {'-' if ece is None else f'{ece:.4f}'}, "
                      f"n {s.get('n')}, positives {s.get('positives')}, alert {state}{gathering}")
        return cal

    def _stop_group(self, names: set[str], timeout_s: float) -> None:
        procs = [p for n, p in self.children if n in names and p.poll() is None]
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def shutdown(self) -> None:
        """Stop in dependency order: traffic (and set-up), then the worker, then the broker."""
        self._stop_group({"simulate", "producer", "setup"}, 10)
        self._stop_group({"worker"}, 20)
        self._stop_group({n for n, _ in self.children}, 5)
        if self.broker is not None:
            self.broker.stop()
        print(f"{self.label} stopped: every process it started is down.", flush=True)


def _cmd_demo(args: argparse.Namespace) -> int:
    settings = Settings()
    duration = float(args.duration) if args.duration else None
    return Demo(settings, float(args.requests_per_s), float(args.background_rate), duration,
                run_dir=Path(args.run_dir), keep_state=bool(args.keep_state)).run()


def register(sub) -> None:
    from streams.cli import env_flag

    p = sub.add_parser(
        "demo", help="the whole pipeline in a closed loop on the embedded broker, with a live summary",
        description="The whole pipeline in a closed loop on the embedded broker, with a live summary. The first "
                    f"run trains a model (about {SETUP_MINUTES} minutes on a 2-core box; kept and resumed in "
                    "<run-dir>/setup); later runs start in under a minute. The worker's web server listens on "
                    "FEEDRANK_WEB_HOST:FEEDRANK_WEB_PORT (default 127.0.0.1:6066): set FEEDRANK_WEB_PORT=<port> "
                    "when 6066 is taken.")
    env_flag(p, "--requests-per-s", envvar="FEEDRANK_DEMO_RPS", default=10, help="simulated feed requests per second")
    env_flag(p, "--background-rate", envvar="FEEDRANK_DEMO_RATE", default=300,
             help="extra synthetic events per second from other users (0 = none)")
    env_flag(p, "--duration", envvar="FEEDRANK_DEMO_DURATION", default=None,
             help="stop N seconds after the model is there (set-up on a first run is not counted)")
    env_flag(p, "--run-dir", envvar="FEEDRANK_DEMO_DIR", default="var/demo",
             help="logs, state and the first run's set-up files in <run-dir>/setup (models and calibrators: "
                  "FEEDRANK_MODEL_DIR, FEEDRANK_CALIBRATOR_DIR)")
    p.add_argument("--keep-state", action="store_true",
                   help="keep the previous run's tables (default: each run starts clean, as its broker does)")
    p.set_defaults(func=_cmd_demo)
