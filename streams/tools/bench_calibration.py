"""``feedrank bench calibration``: calibration in the live closed loop, minute by minute, through a shift.

The demo's closed loop (broker, worker, simulated users who ask ``/score`` and
engage with the world's true probabilities, background traffic) on the broker
that ``FEEDRANK_BROKER`` resolves (a local Apache Kafka when Java is there), run
for ``--minutes``. At ``--shift-minute`` one country's users start to click and
close up more (``WorldParams.shift_*``: ``--shift-logit`` 0.7 is about twice as
often); ``--shift-minute 0`` runs without a shift, to count false alerts.

Every ``--poll-s`` it reads the worker's ``GET /calibration`` (the latest drift
record: each task's calibration error sum(p)/sum(y) over the alert window, its
99.9 % interval, ECE and alert state) and prints one line a minute. At the end
it prints the per-minute table per task and the figures issue 28 asks for, and
writes them to ``<out>/results.json``:

- the time from the first labels until each task with enough positives is in
  the band (0.9 to 1.1) and stays there, and ECE then;
- after the shift: the time to the first alert and to recovery (every task back
  to ``ok``);
- alerts raised where nothing changed (before the shift, or in a run without one).

A model is needed: the demo's cached one (``FEEDRANK_MODEL_DIR``), or the
demo's first-run set-up runs first (train, calibration log, replay).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from features.events import ACTIONS
from features.world import COUNTRIES
from streams.settings import Settings
from streams.tools.demo import Demo, http_get

#: the band issue 28's goals use (the alert band is the drift monitor's, 0.85 to 1.15 by default)
GOAL_BAND = (0.9, 1.1)
GOAL_MIN_POSITIVES = 100
GOAL_ECE = 0.02
GOAL_AFTER_S = 180


@dataclass(frozen=True)
class LiveCalibrationConfig:
    minutes: float = 25.0
    #: minutes after the traffic starts that the shift begins (0 = no shift)
    shift_minute: float = 10.0
    shift_country: str = "US"
    shift_logit: float = 0.7
    requests_per_s: float = 10.0
    background_rate: float = 300.0
    poll_s: float = 10.0

    def __post_init__(self) -> None:
        if self.shift_country not in COUNTRIES:
            raise ValueError(f"--shift-country {self.shift_country!r}: use one of {', '.join(COUNTRIES)}")
        if self.shift_minute and not 0 < self.shift_minute < self.minutes:
            raise ValueError(f"--shift-minute {self.shift_minute:g} must fall inside the run ({self.minutes:g} min)")


@dataclass
class Sample:
    """One poll of ``/calibration``: seconds since the traffic started, and per task what the drift record said."""

    t: float
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_record(cls, t: float, record: dict[str, Any] | None) -> "Sample":
        if not record:
            return cls(t)
        window = record["alert_config"]["window"]
        tasks = {}
        for a, s in record["windows"][window]["tasks"].items():
            st = record["alerts"].get(a, {})
            tasks[a] = {"n": s.get("n", 0), "positives": s.get("positives", 0),
                        "calibration_error": s.get("calibration_error"), "interval": s.get("interval"),
                        "ece": s.get("ece"), "state": st.get("state", "ok"), "gathering": bool(st.get("gathering"))}
        return cls(t, tasks)

    def labelled(self) -> bool:
        return any(v["n"] for v in self.tasks.values())


def _in_band(v: dict[str, Any]) -> bool:
    ce = v.get("calibration_error")
    return ce is not None and GOAL_BAND[0] <= ce <= GOAL_BAND[1]


def summarize(samples: Sequence[Sample], shift_s: float | None, shift_alert: str = "under") -> dict[str, Any]:
    """The benchmark's figures from the polled samples (pure: the unit tests feed it made-up polls).

    ``band_entry_s[task]``: seconds from the first labels to the first poll from which the task stays in
    ``GOAL_BAND`` with at least ``GOAL_MIN_POSITIVES`` positives until the shift (or the end); None if it never
    does. ``goal_met``: at the first poll ``GOAL_AFTER_S`` after the first labels, every task with at least
    ``GOAL_MIN_POSITIVES`` positives is in the band with ECE <= ``GOAL_ECE`` (issue 28's goal). ``alerts``: every change of a task's alert state, with its time; ``false_alerts``: those that left
    ``ok`` before the shift. ``alert_after_shift_s``/``recovered_after_shift_s``: from the shift to the first
    alert in its direction (``shift_alert``: ``under`` when the shift makes users act more than predicted),
    and from the shift to the first poll after that alert with every task ``ok`` again."""
    first = next((s.t for s in samples if s.labelled()), None)
    before = [s for s in samples if shift_s is None or s.t < shift_s]
    entry: dict[str, float | None] = {}
    ece_at_entry: dict[str, float | None] = {}
    for a in ACTIONS:
        since = None
        for s in before:
            v = s.tasks.get(a)
            ok = v is not None and v["positives"] >= GOAL_MIN_POSITIVES and _in_band(v)
            since = (since if since is not None else s) if ok else None
        entry[a] = None if since is None or first is None else round(since.t - first, 1)
        ece_at_entry[a] = since.tasks[a]["ece"] if since is not None else None
    alerts, states = [], {a: "ok" for a in ACTIONS}
    for s in samples:
        for a, v in s.tasks.items():
            if v["state"] != states.get(a, "ok"):
                alerts.append({"t": s.t, "task": a, "from": states.get(a, "ok"), "to": v["state"],
                               "calibration_error": v["calibration_error"], "positives": v["positives"]})
                states[a] = v["state"]
    false_alerts = [x for x in alerts if x["to"] != "ok" and (shift_s is None or x["t"] < shift_s)]
    out: dict[str, Any] = {"first_labels_s": first, "band_entry_s": entry, "ece_at_entry": ece_at_entry,
                           "alerts": alerts, "false_alerts": len(false_alerts),
                           "alert_after_shift_s": None, "recovered_after_shift_s": None}
    if shift_s is not None:
        raised = next((x for x in alerts if x["to"] == shift_alert and x["t"] >= shift_s), None)
        if raised is not None:
            out["alert_after_shift_s"] = round(raised["t"] - shift_s, 1)
            out["alert_task"] = raised["task"]
            back = next((s for s in samples if s.t > raised["t"] and s.tasks
                         and all(v["state"] == "ok" for v in s.tasks.values())), None)
            if back is not None:
                out["recovered_after_shift_s"] = round(back.t - shift_s, 1)
    # the goal, read 3 minutes after the first labels: every task with enough positives then is in band
    at = next((x for x in samples if first is not None and x.t >= first + GOAL_AFTER_S and x.tasks), None)
    goal = [a for a in ACTIONS if at is not None and at.tasks.get(a, {}).get("positives", 0) >= GOAL_MIN_POSITIVES]
    out["goal_sample_s"] = at.t if at is not None else None
    out["goal_tasks"] = goal
    # with its positives and 99.9 % interval: at 3 minutes a task has 100 to 1,500 positives, and chance alone
    # moves the reading by ~1/sqrt(positives) (docs/calibration.md: sd 0.03 to 0.08 over cold starts)
    out["goal_at"] = {a: {k: at.tasks[a].get(k) for k in ("calibration_error", "ece", "positives", "interval")}
                      for a in goal} if at is not None else {}
    out["goal_met"] = bool(goal) and all(_in_band(at.tasks[a]) and (at.tasks[a]["ece"] or 0.0) <= GOAL_ECE
                                         for a in goal)
    return out


def minute_rows(samples: Sequence[Sample]) -> list[Sample]:
    """The last poll of each whole minute (the table's rows)."""
    rows: dict[int, Sample] = {}
    for s in samples:
        if s.tasks:
            rows[int(s.t // 60)] = s
    return [rows[k] for k in sorted(rows)]


def _cell(v: dict[str, Any] | None) -> str:
    if not v or v.get("calibration_error") is None:
        return "-"
    mark = {"ok": "", "over": "!", "under": "!"}.get(v["state"], "!") + ("?" if v["gathering"] else "")
    ece = v.get("ece")
    return f"{v['calibration_error']:.2f}/{'-' if ece is None else f'{ece:.3f}'}{mark}"


def format_table(samples: Sequence[Sample], shift_s: float | None) -> str:
    """Per minute and task: calibration error / ECE over the alert window (``!`` alert, ``?`` gathering)."""
    head = "| min | " + " | ".join(ACTIONS) + " |"
    lines = [head, "|---" * (len(ACTIONS) + 1) + "|"]
    for s in minute_rows(samples):
        m = int(s.t // 60)
        tag = " (shift)" if shift_s is not None and m == int(shift_s // 60) else ""
        lines.append(f"| {m}{tag} | " + " | ".join(_cell(s.tasks.get(a)) for a in ACTIONS) + " |")
    return "\n".join(lines)


def _interval(iv: Sequence[float | None]) -> str:
    """``lo..hi`` of a calibration error's interval (``hi`` None: unbounded, no prediction mass yet)."""
    lo, hi = iv
    return f"{lo or 0.0:.2f}..{'inf' if hi is None else f'{hi:.2f}'}"


def format_summary(res: dict[str, Any], cfg: LiveCalibrationConfig) -> str:
    def sec(v: float | None) -> str:
        return "never" if v is None else f"{v:.0f} s"

    lines = [f"first labels {sec(res['first_labels_s'])} after the traffic started"]
    for a in ACTIONS:
        ece = res["ece_at_entry"][a]
        lines.append(f"  {a:>15}: in band {GOAL_BAND[0]}-{GOAL_BAND[1]} (>= {GOAL_MIN_POSITIVES} positives) "
                     f"{sec(res['band_entry_s'][a])} after the first labels"
                     + (f", ECE {ece:.4f}" if ece is not None else ""))
    at = ", ".join(f"{a} {v['calibration_error']:.2f}/{v['ece']:.3f} on {v.get('positives') or 0} positives"
                   + (f" (99.9 % {_interval(v['interval'])})" if v.get("interval") else "")
                   for a, v in res["goal_at"].items())
    lines.append(f"goal ({GOAL_AFTER_S} s after the first labels, every task with >= {GOAL_MIN_POSITIVES} positives "
                 f"in band, ECE <= {GOAL_ECE}): {'met' if res['goal_met'] else 'not met'} "
                 f"({at or 'no task had enough positives'})")
    lines.append(f"alerts where nothing had changed: {res['false_alerts']}")
    if cfg.shift_minute:
        lines.append(f"shift ({cfg.shift_country} click/closeup logit {cfg.shift_logit:+g} at minute "
                     f"{cfg.shift_minute:g}): first alert {sec(res['alert_after_shift_s'])} after it"
                     + (f" ({res.get('alert_task')})" if res.get("alert_task") else "")
                     + f", every task ok again {sec(res['recovered_after_shift_s'])} after it")
    for x in res["alerts"]:
        ce = x["calibration_error"]
        lines.append(f"  [{x['t']:5.0f} s] {x['task']}: {x['from']} -> {x['to']} (error "
                     f"{'-' if ce is None else f'{ce:.2f}'}, {x['positives']} positives)")
    return "\n".join(lines)


class LiveCalibrationBench(Demo):
    """The demo's processes, on the resolved broker, with the shift and a per-minute calibration record."""

    label = "bench calibration"
    legend = ("a line a minute: each task's calibration error / ECE over the alert window (5 minutes of labels; "
              "! alert, ? gathering labels);\nthe table and the figures at the end\n")

    def __init__(self, settings: Settings, cfg: LiveCalibrationConfig, run_dir: Path) -> None:
        super().__init__(settings, cfg.requests_per_s, cfg.background_rate, cfg.minutes * 60, run_dir=run_dir)
        self.cfg = cfg
        self.samples: list[Sample] = []
        self.t0: float | None = None  # monotonic time the simulated traffic started
        self.results: dict[str, Any] = {}

    def start_broker(self) -> Any:
        from streams.kafka.broker import resolve_broker

        broker = resolve_broker(log_dir=self.run_dir, kind=self.settings.broker)
        print(f"\nbroker            {broker.bootstrap}   ({broker.kind})", flush=True)
        return broker

    def simulate_args(self) -> list[str]:
        self.t0 = time.monotonic()
        if not self.cfg.shift_minute:
            return []
        at_ms = int(time.time() * 1000 + self.cfg.shift_minute * 60_000)
        return ["--shift-country", self.cfg.shift_country, "--shift-at-ms", str(at_ms),
                "--shift-logit", str(self.cfg.shift_logit)]

    def run_setup_first(self) -> None:
        """No cached model: the demo's set-up steps (its own mechanism: resume markers, then publish), waited
        for before the loop (minutes)."""
        if (self.settings.model_dir / "latest").exists():
            return  # the demo's loop says so
        self.env = dict(os.environ)
        self.pending_steps = self.setup_steps()
        while self.pending_steps or any(n == "setup" for n, _ in self.children):
            self._advance_setup()
            time.sleep(0.5)

    def run(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.setup_dir.mkdir(parents=True, exist_ok=True)
        self.run_setup_first()
        return super().run()

    def _loop(self, url: str, stats_path: Path) -> int:
        assert self.t0 is not None
        shift_s = self.cfg.shift_minute * 60 if self.cfg.shift_minute else None
        end = self.t0 + self.cfg.minutes * 60
        next_poll, printed = self.t0, -1
        while not self._stop and time.monotonic() < end:
            time.sleep(0.5)
            failed = self.child_failure()
            if failed:
                print(failed)
                return 1
            now = time.monotonic()
            if now < next_poll:
                continue
            next_poll = now + self.cfg.poll_s
            try:
                record = json.loads(http_get(url + "/calibration", timeout=5)).get("drift")
            except OSError:
                continue
            sample = Sample.from_record(now - self.t0, record)
            self.samples.append(sample)
            with open(self.run_dir / "samples.jsonl", "a") as f:  # kept as it goes: a stopped run keeps its polls
                f.write(json.dumps(asdict(sample)) + "\n")
            minute = int(sample.t // 60)
            if minute > printed and sample.tasks:
                printed = minute
                cells = " ".join(f"{a[:6]}={_cell(sample.tasks.get(a))}" for a in ACTIONS)
                print(f"[min {minute:3d}] error/ECE over the alert window: {cells}", flush=True)
        cal = self.final_report(url, stats_path)  # prints the consistency check's report too, when it ran
        self.results = summarize(self.samples, shift_s, "under" if self.cfg.shift_logit > 0 else "over")
        self.results["consistency"] = cal.get("consistency")
        self.results.update(config=asdict(self.cfg), broker=getattr(self.broker, "kind", "?"),
                            samples=[asdict(s) for s in self.samples])
        (self.run_dir / "results.json").write_text(json.dumps(self.results, indent=1))
        print("\ncalibration error / ECE over the alert window, per minute (! alert, ? gathering labels)")
        print(format_table(self.samples, shift_s))
        print()
        print(format_summary(self.results, self.cfg))
        print(f"\nresults: {self.run_dir / 'results.json'}", flush=True)
        return 0


def _cmd(args: argparse.Namespace) -> int:
    from streams.tools.chaos.common import machine_load

    try:
        cfg = LiveCalibrationConfig(minutes=float(args.minutes), shift_minute=float(args.shift_minute),
                                    shift_country=args.shift_country, shift_logit=float(args.shift_logit),
                                    requests_per_s=float(args.requests_per_s),
                                    background_rate=float(args.background_rate), poll_s=float(args.poll_s))
    except ValueError as exc:
        print(f"feedrank bench calibration: error: {exc}", file=sys.stderr)
        return 2
    print(f"bench calibration: {cfg.minutes:g} min, load {machine_load()}", flush=True)
    rc = LiveCalibrationBench(Settings(), cfg, Path(args.out)).run()
    print(f"load at the end {machine_load()}", flush=True)
    return rc


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = LiveCalibrationConfig()
    p.add_argument("--minutes", type=float, default=d.minutes, help="how long the traffic runs")
    p.add_argument("--shift-minute", type=float, default=d.shift_minute,
                   help="minute the injected shift starts (0 = no shift: counts false alerts)")
    p.add_argument("--shift-country", default=d.shift_country, choices=COUNTRIES,
                   help="country whose users change behaviour")
    p.add_argument("--shift-logit", type=float, default=d.shift_logit,
                   help="logit added to that country's click and closeup (0.7: about twice as often)")
    p.add_argument("--requests-per-s", type=float, default=d.requests_per_s, help="simulated feed requests per second")
    p.add_argument("--background-rate", type=float, default=d.background_rate,
                   help="extra synthetic events per second from other users")
    p.add_argument("--poll-s", type=float, default=d.poll_s, help="how often /calibration is read")
    p.add_argument("--out", default="var/bench-calibration", help="run directory: logs, state, results.json")


def register_bench(bench: Any) -> None:
    """Adds ``feedrank bench calibration``."""
    p = bench.add_parser("calibration", help="calibration in the live closed loop per minute, through an injected shift")
    add_arguments(p)
    p.set_defaults(func=_cmd)
