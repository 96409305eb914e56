"""``feedrank chaos``: crashes, rebalances, a broker outage, bad input and sustained load.

Each scenario runs real ``feedrank worker`` subprocesses against a broker,
prints what it did and what it found, and returns a result dict whose
``problems`` list is empty when every property held:

- ``crash``: SIGKILL a worker at random points while events stream, several
  times; after the last restart every table equals the from-scratch
  recomputation (``streams.tools.recompute``) and ``labeled-impressions`` holds each
  impression exactly once after dedup by ``example_id`` (raw re-emits counted).
- ``rebalance``: two workers; SIGKILL one; the survivor takes its partitions,
  restores their state and serves ``/score`` for every user; the dead one
  comes back and partitions move again without loss.
- ``outage``: a private embedded broker stopped for ``--outage-s`` and
  restarted on the same port (memory storage: every topic is gone); the
  producers must recover, the running worker must detect the broker reset,
  keep its state, re-seed the changelog and process new events, stop on
  SIGTERM in time, and a worker with no local state must restore everything
  from the re-seeded changelog. See docs/reliability.md.
- ``fuzz``: bad events on both event topics and bad requests on ``/score``,
  interleaved with good ones: every bad event dead-lettered with a reason,
  every bad request answered 4xx, every good one processed.
- ``load``: steady events at 80% of the maximum sustained rate (measured first
  on this box, or ``--max-rate``) plus ``/score`` traffic for ``--minutes``;
  prints RSS, RocksDB memory and size and lag over time; checks nothing is lost
  and that memory, disk and lag stay bounded.

The tests (``tests/test_reliability_*.py``) call the same functions with
small streams. Run: ``feedrank chaos`` or ``python -m streams.tools.chaos``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from streams.tools.loadgen import LoadProducer, child_pids, cpu_seconds as _cpu_s
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("crash", "rebalance", "fuzz", "outage", "load")


class ChaosError(AssertionError):
    """A wait ran out or a property the scenario relies on did not hold."""


# -- workers as processes ----------------------------------------------------------

def make_settings(work: Path, bootstrap: str, **overrides: Any) -> Settings:
    """Settings with a unique app id, topic names and state dir under ``work``."""
    from streams.kafka.broker import free_port

    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = dict(
        app_id=f"chaos{tag}", partitions=2, data_dir=work / f"data-{tag}", log_dir=work / "log",
        web_port=free_port(), topic_impressions=f"impressions-{tag}", topic_engagements=f"engagements-{tag}",
        topic_dlq=f"events-dlq-{tag}", topic_predictions=f"predictions-{tag}", topic_labeled=f"labeled-{tag}",
        topic_feedback_deltas=f"feedback-deltas-{tag}", topic_calibrators=f"calibrators-{tag}",
        topic_drift=f"calibration-drift-{tag}", log_level="INFO", model_dir=work / "no-model",
        calibrator_dir=work / "no-calibrators",
    )
    values.update(overrides)
    return Settings(KAFKA_BOOTSTRAP_SERVERS=bootstrap, **values)


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


class Worker:
    """A ``feedrank worker`` subprocess (own process group) with its web port."""

    def __init__(self, settings: Settings, log_path: Path, name: str = "worker") -> None:
        self.settings = settings
        self.log_path = log_path
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.settings.url

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = 90.0) -> "Worker":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], cwd=ROOT,
                                     env=settings_env(self.settings), stdout=logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        logf.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ChaosError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/metrics", timeout=1.0)
                return self
            except OSError:
                time.sleep(0.2)
        raise ChaosError(f"{self.name}: web port never answered:\n{self.log_tail()}")

    def get(self, path: str, timeout: float = 5.0) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return resp.read()

    def get_json(self, path: str, timeout: float = 5.0) -> Any:
        return json.loads(self.get(path, timeout))

    def post(self, path: str, body: bytes, timeout: float = 10.0) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw or b"null")
            except ValueError:
                return exc.code, raw[:200]

    def stats(self) -> dict[str, Any]:
        return self.get_json("/tables/stats")

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(self.get("/metrics").decode()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def rss_mb(self) -> float:
        """Resident set size of the worker process and its score process (MiB), 0 when it is gone."""
        if not self.alive:
            return 0.0
        return _rss_mb(self.proc.pid) + self.child_rss_mb()  # type: ignore[union-attr]

    def child_rss_mb(self) -> float:
        """Resident set size of the worker's children (its score process), MiB; 0 when it is gone."""
        if not self.alive:
            return 0.0
        return sum(_rss_mb(c) for c in child_pids(self.proc.pid))  # type: ignore[union-attr]

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Graceful stop (SIGTERM: final checkpoint, stores closed)."""
        self.kill(signal.SIGTERM)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str,
               detail: Callable[[], Any] | None = None, interval_s: float = 0.2) -> float:
    """Wait for ``predicate`` (exceptions count as not yet); returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            if predicate():
                return time.monotonic() - t0
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(interval_s)
    extra = ""
    if detail is not None:
        try:
            extra = f"; state: {detail()}"
        except Exception as exc:  # diagnostic only
            extra = f"; state unavailable: {exc}"
    raise ChaosError(f"timed out after {timeout_s:.0f}s waiting for {what}{extra}")


def _dir_mb(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total / (1 << 20)


def machine_load() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" ({os.cpu_count()} cores)"
    except OSError:
        return "unknown"


class _Out:
    def __init__(self, echo: Callable[[str], None] | None) -> None:
        self.echo = echo or (lambda line: print(line, flush=True))

    def __call__(self, line: str) -> None:
        self.echo(line)


# -- producing ---------------------------------------------------------------------

class PacedProducer(threading.Thread):
    """Sends predictions then events at about ``rate`` records/s; counts acked records per topic/partition."""

    def __init__(self, bootstrap: str, settings: Settings, events: list[Any], preds: list[Any],
                 rate: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.settings, self.events, self.preds, self.rate = bootstrap, settings, events, preds, rate
        self.counts: dict[str, dict[int, int]] = {}
        self.error: BaseException | None = None
        self.sent = 0

    def run(self) -> None:
        from features.predictions import encode_prediction

        from streams.kafka.producer import EventProducer

        try:
            with EventProducer(self.bootstrap, self.settings) as producer:
                futs = [producer.send_raw(self.settings.topic_predictions, encode_prediction(p), p.user_id.encode())
                        for p in self.preds]
                t0 = time.monotonic()
                for i, e in enumerate(self.events):
                    futs.append(producer.send(e))
                    self.sent = i + 1
                    if i % 100 == 99:
                        wait = t0 + (i + 1) / self.rate - time.monotonic()
                        if wait > 0:  # one clock read: a second could make the wait negative
                            time.sleep(wait)
                producer.flush()
                for f in futs:
                    md = f.get(timeout=60)
                    self.counts.setdefault(md.topic, {}).setdefault(md.partition, 0)
                    self.counts[md.topic][md.partition] += 1
        except BaseException as exc:  # reported by the scenario
            self.error = exc


def _caught_up(stats: dict[str, Any], counts: dict[str, dict[int, int]], partitions: Iterable[int]) -> bool:
    offs = stats["offsets"]
    return all(offs.get(str(p), {}).get(t, -1) >= n - 1
               for t, per in counts.items() for p, n in per.items() if p in set(partitions))


def _compare_partition(p: int, got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    problems = []
    for store, content in want.items():
        if store == "meta":
            continue
        if got.get(store) != content:
            missing = len(set(content) - set(got.get(store, {})))
            problems.append(f"partition {p} store {store} differs from the recomputation "
                            f"({len(got.get(store, {}))} keys vs {len(content)}, {missing} missing)")
    g, w = got["meta"], want["meta"]
    if g["offsets"] != w["offsets"]:
        problems.append(f"partition {p}: stored offsets {g['offsets']} != {w['offsets']}")
    g_flat = {**{k: v for k, v in g["extra"].items() if k != "stats"}, **g["extra"].get("stats", {})}
    w_flat = {**{k: v for k, v in w["extra"].items() if k != "stats"}, **w["extra"].get("stats", {})}
    diff = {k: (g_flat.get(k), w_flat.get(k)) for k in set(g_flat) | set(w_flat) if g_flat.get(k) != w_flat.get(k)}
    if diff:
        problems.append(f"partition {p}: watermarks/counters (worker, recomputation) differ: {diff}")
    return problems


def _dump_partition(data_dir: Path, app_id: str, p: int) -> dict[str, Any]:
    from streams.tools.recompute import dump_state
    from streams.engine.state import PartitionState, open_backend

    state = PartitionState(open_backend("rocksdb://", Path(data_dir) / "tables" / app_id, f"p{p}"), p)
    try:
        return dump_state(state)
    finally:
        state.close()


def _check_labeled(bootstrap: str, settings: Settings, want: dict[str, Any], out: _Out) -> tuple[dict[str, Any], list[str]]:
    from streams.tools.recompute import labeled_records

    lab = labeled_records(bootstrap, settings, expect_ids=len(want["examples"]))
    got = lab["examples"]
    missing = set(want["examples"]) - set(got)
    extra = set(got) - set(want["examples"])
    differ = [k for k in set(got) & set(want["examples"]) if got[k] != want["examples"][k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} impressions have no labeled example (e.g. {sorted(missing)[:3]})")
    if extra:
        problems.append(f"{len(extra)} labeled examples for impressions the recomputation does not label")
    if lab["conflicts"]:
        problems.append(f"{len(lab['conflicts'])} example ids emitted with different content")
    if differ:
        problems.append(f"{len(differ)} labeled examples differ from the recomputation")
    figures = {"labeled_expected": len(want["examples"]), "labeled_distinct": len(got),
               "labeled_raw_records": lab["raw"], "labeled_raw_re_emits": lab["re_emits"],
               "labeled_duplicates_after_dedup": len(lab["conflicts"]) + len(extra),
               "labeled_missing": len(missing)}
    out(f"  labeled-impressions: {lab['raw']} records, {len(got)} distinct example ids "
        f"(expected {len(want['examples'])}), raw re-emits {lab['re_emits']} (at-least-once replay), "
        f"duplicates after dedup {figures['labeled_duplicates_after_dedup']}, missing {len(missing)}")
    return figures, problems


# -- (a) crash ---------------------------------------------------------------------

def run_crash(bootstrap: str, work: Path, *, kills: int = 3, users: int = 200, requests: int = 3000,
              seed: int = 0, stream_s: float | None = None, echo: Callable[[str], None] | None = None,
              ) -> dict[str, Any]:
    """SIGKILL a worker ``kills`` times at random points while events stream; check recomputation equality."""
    from streams.tools.recompute import read_inputs, recompute, scenario
    from streams.kafka.topics import ensure_topics, topic_specs

    out = _Out(echo)
    rng = random.Random(seed)
    settings = make_settings(work, bootstrap, sequence_len=16, checkpoint_interval_s=0.1,
                             attribution_window_s=60.0, allowed_lateness_s=5.0)
    ensure_topics(bootstrap, topic_specs(settings))
    events, preds = scenario(n_users=users, n_requests=requests, seed=seed)
    total = len(events) + len(preds)
    stream_s = stream_s or 20.0 * kills  # each restart takes ~15 s (group session timeout 10 s)
    rate = len(events) / stream_s
    out(f"[crash] {len(events)} events + {len(preds)} prediction logs over ~{stream_s:.0f}s ({rate:,.0f}/s), "
        f"{kills} SIGKILLs at random points; app {settings.app_id}")
    producer = PacedProducer(bootstrap, settings, events, preds, rate)
    producer.start()
    kill_log = []
    for k in range(kills):
        w = Worker(settings, work / "log" / f"{settings.app_id}-crash.log", f"worker#{k}").start()
        try:
            # kill while it processes; if the stream is over and it has caught up, kill it idle anyway
            wait_until(lambda: w.stats()["processed"] > 0 or (
                not producer.is_alive() and _caught_up(w.stats(), producer.counts, range(settings.partitions))),
                180, "the worker to process events", detail=lambda: w.log_tail(600))
            delay = rng.uniform(0.2, 3.0)
            time.sleep(delay)
            try:
                processed = int(w.stats()["processed"])
            except OSError:
                processed = -1
            streaming = producer.is_alive()
        finally:
            w.kill()
        kill_log.append({"after_s": round(delay, 2), "processed_by_this_process": processed,
                         "producer_running": streaming, "exit": w.proc.returncode if w.proc else None})
        out(f"  kill {k + 1}: SIGKILL {delay:.2f}s into processing, this process had processed {processed} "
            f"records, producer {'still streaming' if streaming else 'done'}, exit code {kill_log[-1]['exit']}")
    producer.join(timeout=300)
    problems: list[str] = []
    if producer.error is not None or producer.is_alive():
        raise ChaosError(f"producer failed: {producer.error!r}")
    produced = sum(sum(v.values()) for v in producer.counts.values())
    if produced != total:
        problems.append(f"producer acked {produced} of {total} records")
    w = Worker(settings, work / "log" / f"{settings.app_id}-crash.log", "worker#final").start()
    try:
        waited = wait_until(lambda: _caught_up(w.stats(), producer.counts, range(settings.partitions)), 240,
                            "the restarted worker to catch up", detail=w.log_tail)
        out(f"  restarted after kill {kills}: caught up in {waited:.1f}s")
    finally:
        w.stop()
    if w.proc is not None and w.proc.returncode not in (0, -signal.SIGTERM):
        problems.append(f"graceful stop exited with {w.proc.returncode}")
    want = recompute(settings, read_inputs(bootstrap, settings, producer.counts))
    accounted = 0
    for p in range(settings.partitions):
        got = _dump_partition(settings.data_dir, settings.app_id, p)
        problems += _compare_partition(p, got, want["dumps"][p])
        accounted += sum(o + 1 for o in got["meta"]["offsets"].values())
    figures, lab_problems = _check_labeled(bootstrap, settings, want, out)
    problems += lab_problems
    result = {"scenario": "crash", "kills_survived": kills, "records_in": total, "records_accounted": accounted,
              "events_in": len(events), "kills": kill_log, **figures,
              "tables_equal_recomputation": not any("store" in p or "offsets" in p for p in problems),
              "problems": problems}
    if accounted != total:
        problems.append(f"stored offsets account for {accounted} of {total} input records")
    out(f"  records in {total} (events {len(events)}), accounted for by the stored offsets {accounted}; "
        f"tables equal the recomputation: {result['tables_equal_recomputation']}")
    _verdict(out, "crash", problems)
    return result


def _verdict(out: _Out, name: str, problems: list[str]) -> None:
    if problems:
        out(f"  [{name}] FAILED:")
        for p in problems:
            out(f"    - {p}")
    else:
        out(f"  [{name}] ok")


# -- (b) rebalance -------------------------------------------------------------------

def score_body(user_id: str, n: int = 10, ts: int | None = None) -> dict[str, Any]:
    """A valid ``/score`` request for ``user_id`` (items need not be known to the model)."""
    ctx: dict[str, Any] = {"surface": "home", "country": "US", "gender": "f", "app_type": "ios",
                           "device_type": "phone"}
    if ts is not None:
        ctx["ts"] = ts
    return {"user_id": user_id, "context": ctx,
            "candidates": [{"item_id": f"i{k}", "item_type": "video" if k % 3 else "organic"} for k in range(n)]}


def _get_retry(w: Worker, path: str, timeout_s: float = 60.0) -> Any:
    """GET a JSON path, retrying 503s (no ready owner yet: the directory learns owners within seconds)."""
    box: list[Any] = []
    wait_until(lambda: box.append(w.get_json(path)) is None, timeout_s, f"GET {path} on {w.name}")
    return box[-1]


def _owned(w: Worker) -> set[int]:
    return set(w.stats()["partitions"])


def _read_all_inputs(bootstrap: str, settings: Settings, counts: dict[str, dict[int, int]]) -> dict[str, list[Any]]:
    """Every record of the three inputs (the producer's plus the prediction logs ``/score`` wrote)."""
    from streams.tools.recompute import read_topic

    out = {}
    for topic in (settings.topic_predictions, settings.topic_impressions, settings.topic_engagements):
        total = sum(counts.get(topic, {}).values())
        out[topic] = read_topic(bootstrap, topic, settings.partitions, total, drain=True)
    return out


def _input_ends(inputs: dict[str, list[Any]]) -> dict[str, dict[int, int]]:
    ends: dict[str, dict[int, int]] = {}
    for topic, recs in inputs.items():
        for r in recs:
            ends.setdefault(topic, {})[r.partition] = max(ends.get(topic, {}).get(r.partition, 0), r.offset + 1)
    return ends


def run_rebalance(bootstrap: str, work: Path, model_dir: Path, calibrator_dir: Path, *, users: int = 60,
                  requests: int = 600, partitions: int = 4, seed: int = 1,
                  echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Two workers; SIGKILL one; the survivor takes over and serves every user; the other returns."""
    from streams.kafka.broker import free_port
    from streams.serving.client import ScorerClient
    from streams.tools.recompute import recompute, scenario
    from streams.kafka.topics import ensure_topics, topic_specs

    out = _Out(echo)
    base = make_settings(work, bootstrap, partitions=partitions, model_dir=Path(model_dir).resolve(),
                         calibrator_dir=Path(calibrator_dir).resolve(), attribution_window_s=60.0,
                         allowed_lateness_s=5.0, checkpoint_interval_s=0.2)
    sa = base.model_copy(update={"data_dir": work / f"{base.app_id}-a", "web_port": free_port()})
    sb = base.model_copy(update={"data_dir": work / f"{base.app_id}-b", "web_port": free_port()})
    ensure_topics(bootstrap, topic_specs(base))
    events, preds = scenario(n_users=users, n_requests=requests, seed=seed)
    user_ids = sorted({e.user_id for e in events})
    half = len(events) // 2
    problems: list[str] = []
    out(f"[rebalance] {partitions} partitions, {len(user_ids)} users, {len(events)} events in two phases; "
        f"app {base.app_id}")
    phase1 = PacedProducer(bootstrap, base, events[:half], preds, rate=1e9)
    phase1.run()
    if phase1.error:
        raise ChaosError(f"producer failed: {phase1.error!r}")
    a = Worker(sa, work / "log" / f"{base.app_id}-a.log", "worker-a").start()
    b = Worker(sb, work / "log" / f"{base.app_id}-b.log", "worker-b").start()
    everything = set(range(partitions))
    try:
        def split_ok() -> bool:
            pa, pb = _owned(a), _owned(b)
            return bool(pa) and bool(pb) and pa | pb == everything and not pa & pb

        wait_until(split_ok, 120, "both workers to own partitions", detail=lambda: (_owned(a), _owned(b)))
        pa0, pb0 = _owned(a), _owned(b)
        wait_until(lambda: _caught_up(a.stats(), phase1.counts, pa0) and _caught_up(b.stats(), phase1.counts, pb0),
                   120, "phase 1 processed")
        out(f"  worker-a owns {sorted(pa0)}, worker-b owns {sorted(pb0)}; phase 1 ({half} events) processed")
        before = {u: _get_retry(a, f"/users/{u}/sequence") for u in user_ids}  # routed to b for b's users
        b_users = [u for u in user_ids if before[u]["partition"] in pb0]
        b.kill()
        t_kill = time.monotonic()
        waited = wait_until(lambda: _owned(a) == everything, 120, "worker-a to take over every partition",
                            detail=lambda: _owned(a))
        out(f"  SIGKILLed worker-b; worker-a owned all {partitions} partitions {waited:.1f}s later "
            f"(consumer session timeout 10 s)")
        client = ScorerClient(a.url, timeout_s=10.0, retries=5, backoff_s=0.2)
        served = restored = 0
        for u in user_ids:
            after = _get_retry(a, f"/users/{u}/sequence")
            if after == before[u]:
                restored += 1
            else:
                problems.append(f"{u}: sequence after takeover differs ({after['length']} vs {before[u]['length']})")
            resp = client.score(score_body(u))
            if resp.served_by.rstrip("/") == a.url.rstrip("/") and resp.history_len == before[u]["length"]:
                served += 1
            else:
                problems.append(f"{u}: /score served_by={resp.served_by} history_len={resp.history_len} "
                                f"(want {a.url}, {before[u]['length']})")
        client.close()
        out(f"  after the takeover worker-a served /score for {served}/{len(user_ids)} users "
            f"({len(b_users)} of them on worker-b's partitions); state equal to before the kill for "
            f"{restored}/{len(user_ids)}; takeover+checks {time.monotonic() - t_kill:.1f}s")
        phase2 = PacedProducer(bootstrap, base, events[half:], [], rate=1e9)
        phase2.run()
        if phase2.error:
            raise ChaosError(f"producer failed: {phase2.error!r}")
        b = Worker(sb, work / "log" / f"{base.app_id}-b.log", "worker-b").start()
        wait_until(split_ok, 120, "partitions to move back to worker-b", detail=lambda: (_owned(a), _owned(b)))
        pa1, pb1 = _owned(a), _owned(b)
        out(f"  phase 2 ({len(events) - half} events) produced while worker-b was down; worker-b back: "
            f"worker-a owns {sorted(pa1)}, worker-b owns {sorted(pb1)}")
        client_b = ScorerClient(b.url, timeout_s=10.0, retries=8, backoff_s=0.25)
        ok_b = sum(1 for u in user_ids if client_b.score(score_body(u)).items)
        client_b.close()
        out(f"  via worker-b (forwarding to worker-a where needed): {ok_b}/{len(user_ids)} users served")
        if ok_b != len(user_ids):
            problems.append(f"only {ok_b}/{len(user_ids)} users served via worker-b")
        time.sleep(1.0)  # the last prediction logs of /score reach the topic
        counts = {t: {p: phase1.counts.get(t, {}).get(p, 0) + phase2.counts.get(t, {}).get(p, 0)
                      for p in range(partitions)} for t in set(phase1.counts) | set(phase2.counts)}
        inputs = _read_all_inputs(bootstrap, base, counts)
        ends = _input_ends(inputs)
        wait_until(lambda: _caught_up(a.stats(), ends, pa1) and _caught_up(b.stats(), ends, pb1), 120,
                   "both workers to catch up", detail=lambda: (a.stats()["offsets"], b.stats()["offsets"]))
    finally:
        a.stop()
        b.stop()
    want = recompute(base, inputs)
    for p in range(partitions):
        owner = sa if p in pa1 else sb
        problems += _compare_partition(p, _dump_partition(owner.data_dir, base.app_id, p), want["dumps"][p])
    figures, lab_problems = _check_labeled(bootstrap, base, want, out)
    problems += lab_problems
    n_in = sum(len(v) for v in inputs.values())
    out(f"  {n_in} input records (events + prediction logs, /score's included); every partition equals the "
        f"recomputation on its final owner: {not any('partition' in p for p in problems)}")
    _verdict(out, "rebalance", problems)
    return {"scenario": "rebalance", "users": len(user_ids), "users_on_killed_worker": len(b_users),
            "served_after_takeover": served, "restored_after_takeover": restored, "served_after_return": ok_b,
            "takeover_s": round(waited, 1), "records_in": n_in, **figures, "problems": problems}


# -- (d) fuzz ------------------------------------------------------------------------

_T_FUZZ = 1_764_000_000_000
_IMP = dict(kind="impression", event_id="e", user_id="u1", item_id="i1", request_id="r1", ts=_T_FUZZ,
            surface="home", position=3, item_type="video", country="US", gender="f", app_type="ios",
            device_type="phone")
_ENG = dict(kind="engagement", event_id="g", user_id="u1", item_id="i1", request_id="r1", ts=_T_FUZZ + 5,
            action="repin", dwell_ms=1200)
_UNICODE = ["😀", "\u202e", "\u0000", "\u200b", "é", "\ufeff", "Ω" * 40, "a\nb", "\U0010ffff"]


def _j(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def fuzz_events(n_bad: int, n_good: int, seed: int = 0) -> list[tuple[str, str, bytes | None, bytes | None, bool]]:
    """``(category, kind, key, value, meant_bad)`` rows: bad events of every category interleaved with good ones."""
    from features.events import MAX_MESSAGE_BYTES, MAX_TS_MS, MIN_TS_MS

    rng = random.Random(seed)

    def base(kind: str, i: int) -> dict[str, Any]:
        d = dict(_IMP if kind == "imp" else _ENG)
        d.update(event_id=f"fz{i}", user_id=f"fu{i % 97}", item_id=f"i{i % 13}", request_id=f"r{i % 31}")
        return d

    def random_bytes(kind: str, i: int) -> tuple[bytes | None, bytes | None]:
        return f"fu{i % 97}".encode(), bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))

    def truncated(kind: str, i: int) -> tuple[bytes | None, bytes | None]:
        raw = _j(base(kind, i))
        return f"fu{i % 97}".encode(), raw[:rng.randrange(1, len(raw) - 1)]

    def nested(kind: str, i: int) -> tuple[bytes | None, bytes | None]:
        depth = rng.choice([50, 500, 1000, 1500, 5000])
        if rng.random() < 0.5:
            raw = ("[" * depth + "]" * depth).encode()
        else:
            raw = ('{"a":' * depth + "1" + "}" * depth).encode()
        return f"fu{i % 97}".encode(), raw

    def wrong_types(kind: str, i: int) -> tuple[bytes | None, bytes | None]:
        d = base(kind, i)
        field, value = rng.choice([("ts", str(_T_FUZZ)), ("ts", 1.5e12), ("user_id", 42), ("event_id", None),
                                   ("position" if kind == "imp" else "dwell_ms", "3"), ("item_id", ["x"]),
                                   ("ts", True), ("request_id", {"a": 1}),
                                   ("country" if kind == "imp" else "action", 7)])
        d[field] = value
        if rng.random() < 0.2:
            return f"fu{i % 97}".encode(), _j([d])  # an array, not an object
        return str(d["user_id"]).encode(), _j(d)

    def unicode(kind: str, i: int) -> tuple[bytes | None, bytes | None]:
        d = base(kind, i)
        s = rng.choice(_UNICODE)
        field = rng.choice(["user_id", "item_id", "event_id", "request_id"])
        d[field] = f"x{s}y"
        raw = json.dumps(d, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        if rng.random() < 0.3:  # lone surrogate / overlong UTF-8 inside otherwise valid JSON
            raw = raw.replace(b'"fz', rng.choice([b'"\\ud800fz', b'"\xc0\xaffz', b'"\xed\xa0\x80fz']), 1)
        key = d["user_id"].encode("utf-8", "surrogatepass")
        return key, raw

    def huge(kind: str, i: int) -> tuple[bytes | None, bytes | None]:
        d = base(kind, i)
        d[rng.choice(["surface" if kind == "imp" else "action", "item_id", "event_id"])] = "s" * rng.choice(
            [MAX_MESSAGE_BYTES, 20_000, 200_000])
        return d["user_id"].encode(), _j(d)

    def bad_ts(kind: str, i: int) -> tuple[bytes | None, bytes | None]:
        d = base(kind, i)
        d["ts"] = rng.choice([-1, 0, MIN_TS_MS - 1, MAX_TS_MS + 1, 10 ** 19, -(10 ** 19), 2 ** 63, 10 ** 400])
        return d["user_id"].encode(), _j(d)

    def null_or_wrong_kind(kind: str, i: int) -> tuple[bytes | None, bytes | None]:
        d = base("eng" if kind == "imp" else "imp", i)
        return d["user_id"].encode(), rng.choice([None, b"", _j(d), b"null", b"{}"])

    bad_makers = [("random bytes", random_bytes), ("truncated JSON", truncated), ("nested JSON", nested),
                  ("wrong types", wrong_types), ("unicode", unicode), ("huge strings", huge),
                  ("timestamps out of range", bad_ts), ("null/empty/wrong kind", null_or_wrong_kind)]
    rows: list[tuple[str, str, bytes | None, bytes | None, bool]] = []
    for i in range(n_bad):
        cat, make = bad_makers[i % len(bad_makers)]
        kind = rng.choice(["imp", "eng"])
        key, value = make(kind, 10_000 + i)
        rows.append((cat, kind, key, value, True))
    for i in range(n_good):
        kind = "imp" if i % 2 == 0 else "eng"
        d = base(kind, i)
        r = rng.random()
        if r < 0.1:
            d["ts"] = MIN_TS_MS + rng.randrange(1000)  # far in the past, inside the contract
            cat = "good: ts far past"
        elif r < 0.2:
            d["ts"] = MAX_TS_MS - rng.randrange(1000)  # far in the future, inside the contract
            cat = "good: ts far future"
        elif r < 0.3:
            d["item_id"] = "I" * 64
            cat = "good: longest ids"
        else:
            cat = "good"
        rows.append((cat, kind, d["user_id"].encode(), _j(d), False))
    goods = [r for r in rows if not r[4]]
    bads = [r for r in rows if r[4]]
    rng.shuffle(bads)
    mixed: list[tuple[str, str, bytes | None, bytes | None, bool]] = []
    while goods or bads:  # interleave, keeping the good ones in order
        pick = bads if bads and (not goods or rng.random() < len(bads) / (len(bads) + len(goods))) else goods
        mixed.append(pick.pop(0))
    return mixed


def fuzz_requests(n_bad: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``(category, body)`` of bad ``/score`` bodies (each must get a 4xx)."""
    from features.events import MAX_TS_MS, MIN_TS_MS
    from features.rpc import MAX_BODY_BYTES

    rng = random.Random(seed)
    good = score_body("fu1", n=5)

    def random_bytes() -> bytes:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 500)))

    def truncated() -> bytes:
        raw = _j(good)
        return raw[:rng.randrange(0, len(raw) - 1)]

    def nested() -> bytes:
        depth = rng.choice([100, 1000, 10_000, 100_000])
        if rng.random() < 0.5:
            return ("[" * depth + "]" * depth).encode()
        d = json.loads(_j(good))
        inner: Any = 1
        for _ in range(depth // 10):
            inner = {"a": inner}
        d["candidates"][0]["features"] = {"f": inner}
        try:
            return _j(d)
        except RecursionError:
            return ('{"user_id":' + "[" * depth + "]" * depth + "}").encode()

    def wrong_types() -> bytes:
        d = json.loads(_j(good))
        path, value = rng.choice([(("user_id",), 42), (("candidates",), {"a": 1}), (("context",), "home"),
                                  (("candidates", 0, "item_id"), None), (("top_k",), "ten"), (("top_k",), 0),
                                  (("candidates", 0, "features"), [1, 2]), (("context", "country"), 1),
                                  (("weights",), [1]), (("candidates", 0, "item_type"), "ad")])
        target = d
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = value
        return _j(d) if rng.random() < 0.8 else _j([d])

    def unicode() -> bytes:
        d = json.loads(_j(good))
        s = rng.choice(_UNICODE)
        d[rng.choice(["user_id", "request_id"])] = f"x{s}y"
        raw = json.dumps(d, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        if rng.random() < 0.3:
            raw = raw.replace(b'"fu1', rng.choice([b'"\\ud800fu1', b'"\xc0\xaf', b'"\xed\xa0\x80']), 1)
            raw = raw.replace(b'"x', b'"\xff', 1)
        return raw

    def huge() -> bytes:
        d = json.loads(_j(good))
        d[rng.choice(["user_id", "request_id"])] = "u" * rng.choice([65, 10_000, 500_000])
        return _j(d)

    def bad_ts() -> bytes:
        d = json.loads(_j(good))
        d["context"]["ts"] = rng.choice([-1, 0, MIN_TS_MS - 1, MAX_TS_MS + 1, 10 ** 19, 10 ** 400, "now"])
        return _j(d)

    def oversize() -> bytes:
        return b'{"user_id":"' + b"u" * (MAX_BODY_BYTES + rng.choice([1, 1000, 4 << 20])) + b'"}'

    makers = [("random bytes", random_bytes), ("truncated JSON", truncated), ("nested JSON", nested),
              ("wrong types", wrong_types), ("unicode", unicode), ("huge strings", huge),
              ("timestamps out of range", bad_ts), ("oversize body", oversize)]
    return [(makers[i % len(makers)][0], makers[i % len(makers)][1]()) for i in range(n_bad)]


def raw_post(url: str, body: bytes, *, chunks: int = 1, pause_s: float = 0.0, timeout_s: float = 30.0,
             content_length: int | None = None) -> int:
    """POST ``body`` to ``url + /score`` over a raw socket (optionally slowly); the HTTP status, or -1."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    head = (f"POST /score HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) if content_length is None else content_length}\r\n"
            f"Connection: close\r\n\r\n").encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s) as s:
        try:
            s.sendall(head)
            step = max(1, -(-len(body) // chunks))
            for k in range(0, len(body), step):
                s.sendall(body[k:k + step])
                if pause_s:
                    time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (413) before the whole body was sent
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return -1


def run_fuzz(bootstrap: str, work: Path, model_dir: Path, calibrator_dir: Path, *, bad_events: int = 400,
             good_events: int = 400, bad_requests: int = 160, good_requests: int = 80, slow_requests: int = 6,
             seed: int = 2, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Bad events on both topics and bad ``/score`` bodies, interleaved with good traffic."""
    from collections import Counter

    from features.events import Engagement, Impression

    from streams.engine.ingest import DeadLetter, decode_message
    from streams.kafka.producer import EventProducer
    from streams.tools.recompute import read_topic
    from streams.kafka.topics import ensure_topics, topic_specs

    out = _Out(echo)
    settings = make_settings(work, bootstrap, model_dir=Path(model_dir).resolve(),
                             calibrator_dir=Path(calibrator_dir).resolve())
    ensure_topics(bootstrap, topic_specs(settings))
    topics = {"imp": settings.topic_impressions, "eng": settings.topic_engagements}
    rows = fuzz_events(bad_events, good_events, seed)
    problems: list[str] = []
    # the contract's own decoder is the oracle: a row meant bad that it accepts is a finding
    expect_bad = []
    for cat, kind, key, value, meant_bad in rows:
        d = decode_message(topics[kind], 0, 0, key, value, Impression if kind == "imp" else Engagement)
        is_bad = isinstance(d, DeadLetter)
        if is_bad != meant_bad:
            problems.append(f"decoder {'refuses' if is_bad else 'accepts'} a {cat!r} event: {value[:120]!r}")
        expect_bad.append(is_bad)
    n_bad, n_good = sum(expect_bad), len(rows) - sum(expect_bad)
    out(f"[fuzz] events: {len(rows)} ({n_bad} bad in {len(set(r[0] for r in rows if r[4]))} categories, "
        f"{n_good} good) interleaved on both event topics; app {settings.app_id}")
    w = Worker(settings, work / "log" / f"{settings.app_id}-fuzz.log", "worker").start()
    try:
        with EventProducer(bootstrap, settings, max_request_size=4 << 20) as producer:
            futs = [producer.send_raw(topics[kind], value, key) for _c, kind, key, value, _b in rows]
            producer.flush()
            for f in futs:
                f.get(timeout=60)
        wait_until(lambda: w.metric("feedrank_events_valid_total") + w.metric("feedrank_events_dead_lettered_total")
                   >= len(rows), 120, "every fuzzed event handled", detail=lambda: w.get("/tables/stats")[:500])
        time.sleep(1.0)  # nothing more arrives
        valid = int(w.metric("feedrank_events_valid_total"))
        dead = int(w.metric("feedrank_events_dead_lettered_total"))
        out(f"  worker: {valid} valid, {dead} dead-lettered (expected {n_good} and {n_bad})")
        if valid != n_good or dead != n_bad:
            problems.append(f"worker counted {valid} valid / {dead} dead-lettered, expected {n_good} / {n_bad}")
        dlq = read_topic(bootstrap, settings.topic_dlq, settings.partitions, n_bad, timeout_s=60, drain=True)
        reasons: Counter[str] = Counter()
        no_reason = 0
        for r in dlq:
            h = dict(r.headers)
            reason = h.get("feedrank.error", b"").decode("utf-8", "replace")
            if not reason:
                no_reason += 1
            reasons[reason.split(":", 1)[0][:40]] += 1
        want_values = Counter(v for (_c, _k, _key, v, _b), bad in zip(rows, expect_bad) if bad)
        got_values = Counter(r.value for r in dlq)
        if got_values != want_values or no_reason:
            problems.append(f"dead-letter topic: {len(dlq)} records, {sum((want_values - got_values).values())} "
                            f"bad events missing, {sum((got_values - want_values).values())} unexpected, "
                            f"{no_reason} without a reason")
        out(f"  dead-letter topic: {len(dlq)} records, each with its original bytes and a reason; by reason: "
            + ", ".join(f"{k} {v}" for k, v in reasons.most_common(8)))
        by_cat = Counter(r[0] for r in rows if r[4])
        out("  bad events by category: " + ", ".join(f"{k} {v}" for k, v in sorted(by_cat.items())))

        # the RPC door
        bad = fuzz_requests(bad_requests, seed)
        statuses: Counter[str] = Counter()
        bad_not_4xx: list[tuple[str, int]] = []
        good_ok = good_sent = 0
        every = max(1, len(bad) // max(1, good_requests))
        users = [f"fu{i}" for i in range(97)]
        for i, (cat, body) in enumerate(bad):
            st = raw_post(w.url, body)
            statuses[f"{cat}: {st}"] += 1
            if not 400 <= st < 500:
                bad_not_4xx.append((cat, st))
            if i % every == 0 and good_sent < good_requests:
                good_sent += 1
                st, _ = w.post("/score", _j(score_body(users[i % len(users)])))
                good_ok += st == 200
        while good_sent < good_requests:
            good_sent += 1
            st, _ = w.post("/score", _j(score_body(users[good_sent % len(users)])))
            good_ok += st == 200
        # slow bodies: trickled over ~2 s each, several at once, while good requests keep flowing
        slow_results: list[tuple[str, int]] = []

        def slow(kind: str, body: bytes) -> None:
            slow_results.append((kind, raw_post(w.url, body, chunks=8, pause_s=0.25)))

        slow_threads = []
        for k in range(slow_requests):
            body = _j(score_body(users[k])) if k % 2 == 0 else bad[k % len(bad)][1][:50_000]
            t = threading.Thread(target=slow, args=("good" if k % 2 == 0 else "bad", body))
            t.start()
            slow_threads.append(t)
        during = sum(w.post("/score", _j(score_body(users[k])))[0] == 200 for k in range(10))
        for t in slow_threads:
            t.join(timeout=60)
        slow_good = sum(1 for kind, st in slow_results if kind == "good" and st == 200)
        slow_bad = sum(1 for kind, st in slow_results if kind == "bad" and 400 <= st < 500)
        n_slow_good = sum(1 for k in range(slow_requests) if k % 2 == 0)
        # a body that never completes: the client gives up; the worker must keep serving
        stalled = raw_post(w.url, b'{"user_id":', content_length=1000, timeout_s=3.0)
        after_stall = w.post("/score", _j(score_body("fu1")))[0]
        out(f"  /score: {len(bad)} bad bodies, {len(bad) - len(bad_not_4xx)} answered 4xx, "
            f"{len(bad_not_4xx)} not ({bad_not_4xx[:5]}); {good_ok}/{good_sent} good interleaved answered 200")
        out("  statuses: " + ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items())))
        out(f"  slow bodies (8 chunks over 2 s, {slow_requests} at once): {slow_good}/{n_slow_good} good -> 200, "
            f"{slow_bad}/{slow_requests - n_slow_good} bad -> 4xx; {during}/10 other requests answered 200 "
            f"meanwhile; an unfinished body: client gave up (status {stalled}), next request {after_stall}")
        if bad_not_4xx:
            problems.append(f"{len(bad_not_4xx)} bad requests not answered 4xx: {bad_not_4xx[:10]}")
        if good_ok != good_sent or during != 10 or after_stall != 200:
            problems.append(f"good requests failed: {good_ok}/{good_sent} interleaved, {during}/10 during slow "
                            f"bodies, {after_stall} after a stalled body")
        if slow_good != n_slow_good or slow_bad != slow_requests - n_slow_good:
            problems.append(f"slow bodies: {slow_results}")
        if not w.alive:
            problems.append(f"worker died: {w.log_tail()}")
    finally:
        w.stop()
    _verdict(out, "fuzz", problems)
    return {"scenario": "fuzz", "bad_events": n_bad, "good_events": n_good, "valid_counted": valid,
            "dead_lettered": dead, "dlq_records": len(dlq), "bad_requests": len(bad),
            "bad_requests_4xx": len(bad) - len(bad_not_4xx), "good_requests": good_sent, "good_requests_200": good_ok,
            "slow_requests": slow_requests, "problems": problems}


# -- (c) broker outage -----------------------------------------------------------------

class _TrickleProducer(threading.Thread):
    """Sends one event every ``interval_s`` until stopped; records how each send ended and when."""

    def __init__(self, bootstrap: str, settings: Settings, interval_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.settings, self.interval_s = bootstrap, settings, interval_s
        self.stop_flag = threading.Event()
        #: (seconds from send to outcome, "ok" | error class, monotonic time of the send)
        self.outcomes: list[tuple[float, str, float]] = []
        self.pending = 0
        self.send_errors: list[str] = []
        self.close_s: float | None = None
        self.recreated = 0
        self.restarted_at: float | None = None

    def run(self) -> None:
        from features.events import Impression

        from streams.kafka.producer import EventProducer

        producer = EventProducer(self.bootstrap, self.settings, request_timeout_ms=10_000, max_block_ms=15_000,
                                 retries=2_147_483_647, delivery_timeout_ms=60_000) if _kp_has_delivery_timeout() \
            else EventProducer(self.bootstrap, self.settings, request_timeout_ms=10_000, max_block_ms=15_000)
        i = 0
        while not self.stop_flag.is_set():
            t0 = time.monotonic()
            ev = Impression(event_id=f"trickle{i}", user_id=f"tu{i % 50}", item_id="i1", request_id=f"tr{i}",
                            ts=int(time.time() * 1000), surface="home", position=0, item_type="organic",
                            country="US", gender="f", app_type="ios", device_type="phone")
            i += 1
            try:
                fut = producer.send(ev)
                self.pending += 1
                fut.add_callback(lambda _md, t0=t0: self._done(t0, "ok"))
                fut.add_errback(lambda exc, t0=t0: self._done(t0, type(exc).__name__))
            except Exception as exc:  # send() itself refused (buffer full / metadata timeout): loud
                self.send_errors.append(type(exc).__name__)
                self.outcomes.append((time.monotonic() - t0, f"send() raised {type(exc).__name__}", t0))
            self.recreated = producer.recreated
            time.sleep(self.interval_s)
        t = time.monotonic()
        try:
            producer.close()
        except Exception as exc:
            self.send_errors.append(f"close: {type(exc).__name__}")
        self.close_s = time.monotonic() - t
        self.recreated = producer.recreated

    def _done(self, t0: float, what: str) -> None:
        self.pending -= 1
        self.outcomes.append((time.monotonic() - t0, what, t0))


_CLIENT_NOISE = ("Heartbeat", "oordinator", "Unable connect", "NodeNotReady", "etadata", "OffsetCommit",
                 "Connection", "produce response", "Failed fetch", "topic_id changed")


def _last_warnings(log_text: str, n: int = 8) -> list[str]:
    """The last ``n`` WARNING/ERROR/CRITICAL lines of a worker log that are not client reconnection noise."""
    lines = [ln[:300] for ln in log_text.splitlines()
             if ("[WARNING]" in ln or _is_error_line(ln)) and not any(m in ln for m in _CLIENT_NOISE)]
    return lines[-n:]


def _is_error_line(ln: str) -> bool:
    return any(m in ln for m in (" ERROR ", "[ERROR]", "Traceback", "CRITICAL"))


def _timed_stop(w: Worker, wait_s: float) -> tuple[float, int | None]:
    """SIGTERM, wait up to ``wait_s``, then SIGKILL; (seconds, exit code: -9 means it had to be killed)."""
    if w.proc is None or w.proc.poll() is not None:
        return 0.0, (w.proc.returncode if w.proc else None)
    t = time.monotonic()
    os.killpg(w.proc.pid, signal.SIGTERM)
    try:
        w.proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        os.killpg(w.proc.pid, signal.SIGKILL)
        w.proc.wait(timeout=30)
    return round(time.monotonic() - t, 1), w.proc.returncode


def _kp_has_delivery_timeout() -> bool:
    from kafka import KafkaProducer

    return "delivery_timeout_ms" in KafkaProducer.DEFAULT_CONFIG


def _topic_partitions(bootstrap: str, topics: list[str]) -> dict[str, int | None]:
    from kafka import KafkaConsumer

    c = KafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        existing = c.topics()
        return {t: (len(c.partitions_for_topic(t) or ()) if t in existing else None) for t in topics}
    finally:
        c.close()


def py_spy_dump(pid: int, path: Path) -> list[str]:
    """Stack of a live process via py-spy (when installed); the frames from this project."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return []
    try:
        text = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    path.write_text(text)
    return [ln.strip() for ln in text.splitlines() if "streams/" in ln or "aiokafka/" in ln][:12]


def run_outage(work: Path, *, outage_s: float = 30.0, events: int = 300, observe_s: float = 45.0,
               restart_wait_s: float = 150.0, stop_wait_s: float = 60.0, new_wait_s: float = 30.0,
               echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Stop a private embedded broker for ``outage_s`` and restart it on the same port; record what happens.

    Memory storage: the restarted broker is empty. Checked: producers deliver or fail with an error (none
    hangs) and recover after the restart; the running worker survives the outage, detects the broker reset,
    keeps its state, re-seeds the changelog and processes the events produced afterwards; SIGTERM stops it
    in time; a worker restarted on the same state owns its partitions with every event in its tables; a
    worker with no local state restores the same tables from the re-seeded changelog alone.

    The worker uses 4 partitions, tansu's count for auto-created topics: after the restart, a client that
    still has a topic's metadata (here the trickle producer) re-creates it by touching it before anyone runs
    ``ensure_topics``, with 4 partitions whatever was declared. With another count the engine stops with a
    ``TopologyError`` naming the topic (tests/test_broker_reset.py).
    """
    from features.events import Impression

    from streams.kafka.broker import EmbeddedBroker
    from streams.kafka.producer import EventProducer
    from streams.kafka.topics import ensure_topics, topic_specs

    out = _Out(echo)
    broker = EmbeddedBroker(log_path=work / "log" / "outage-broker.log").start()
    settings = make_settings(work, broker.bootstrap, checkpoint_interval_s=0.2, partitions=4)
    ensure_topics(broker.bootstrap, topic_specs(settings))
    problems: list[str] = []
    timeline: list[str] = []
    res: dict[str, Any] = {"scenario": "outage", "outage_s": outage_s, "events": events}
    users = [f"ou{u}" for u in range(40)]

    def note(line: str) -> None:
        timeline.append(line)
        out("  " + line)

    def imps(prefix: str, n: int) -> list[Any]:
        now = int(time.time() * 1000)
        return [Impression(event_id=f"{prefix}{i}", user_id=users[i % 40], item_id=f"i{i}", request_id=f"{prefix}r{i}",
                           ts=now + i, surface="home", position=0, item_type="organic", country="US", gender="f",
                           app_type="ios", device_type="phone") for i in range(n)]

    def send_counted(evs: list[Any]) -> tuple[int, dict[str, int]]:
        """Send and wait for every outcome: (acknowledged, {error class: count})."""
        futs = []
        with EventProducer(broker.bootstrap, settings) as p:
            for e in evs:
                futs.append(p.send(e))
            p.flush(timeout_s=60)
        ok, failed = 0, {}
        for f in futs:
            try:
                f.get(timeout=30)
                ok += 1
            except Exception as exc:
                failed[type(exc).__name__] = failed.get(type(exc).__name__, 0) + 1
        return ok, failed

    def impressions_in_state(w: Worker) -> int:
        """Impressions of the 40 users in the worker's tables (1-day counters)."""
        return sum(int(w.get_json(f"/tables/user/{u}")["counts_1d"]["impressions"]) for u in users)

    out(f"[outage] private embedded broker at {broker.bootstrap}; worker app {settings.app_id}; "
        f"outage {outage_s:.0f}s")
    w = Worker(settings, work / "log" / f"{settings.app_id}-outage.log", "worker").start()
    trickle: _TrickleProducer | None = None
    w2: Worker | None = None
    w3: Worker | None = None
    try:
        pre_ok, pre_failed = send_counted(imps("pre", events))
        if pre_ok != events:
            raise ChaosError(f"{events - pre_ok} of {events} events failed before the outage: {pre_failed}")
        wait_until(lambda: w.metric("feedrank_events_valid_total") >= events, 120, "the first events processed",
                   detail=w.log_tail)
        note(f"before: worker processed {events} events")
        trickle = _TrickleProducer(broker.bootstrap, settings)
        trickle.start()
        time.sleep(1.0)
        broker.stop()
        t_down = time.monotonic()
        note("broker stopped (SIGTERM); a producer keeps sending 10 events/s")
        web_ok = web_fail = 0
        while time.monotonic() - t_down < outage_s:
            try:
                w.get("/metrics", timeout=2.0)
                web_ok += 1
            except OSError:
                web_fail += 1
            time.sleep(1.0)
        alive_during = w.alive
        note(f"during the outage: worker alive={alive_during}, its web server answered {web_ok}/"
             f"{web_ok + web_fail} probes; producer: {len(trickle.outcomes)} sends resolved, {trickle.pending} "
             f"pending, errors {sorted(set(o for _t, o, _s in trickle.outcomes if o != 'ok'))}")
        broker = EmbeddedBroker(port=broker.port, log_path=work / "log" / "outage-broker.log").start()
        t_up = time.monotonic()
        trickle.restarted_at = t_up
        note(f"broker restarted on the same port after {t_up - t_down:.0f}s: empty (memory storage)")
        time.sleep(3.0)
        found = _topic_partitions(broker.bootstrap, [settings.topic_impressions, settings.topic_engagements,
                                                      settings.topic_predictions, f"{settings.app_id}-state-changelog"])
        note(f"3 s after restart, topics found (partitions; None = absent): {found}")
        res["topics_after_restart"] = found
        try:
            ensure_topics(broker.bootstrap, topic_specs(settings))
            note("topics re-created by ensure_topics (as an operator or the next worker start would)")
        except Exception as exc:
            note(f"ensure_topics failed: {type(exc).__name__}: {exc}")
            problems.append(f"ensure_topics after restart: {exc}")
        res["topics_after_recreate"] = _topic_partitions(broker.bootstrap, list(found))
        time.sleep(1.0)  # a few more sends into the restarted broker
        trickle.stop_flag.set()
        trickle.join(timeout=120)
        res["producer_hung"] = trickle.is_alive()
        outcomes = [o for _t, o, _s in trickle.outcomes]
        res["producer_sent"] = len(outcomes) + trickle.pending
        res["producer_ok"] = outcomes.count("ok")
        res["producer_failed_loudly"] = len(outcomes) - outcomes.count("ok")
        res["producer_unresolved"] = trickle.pending
        res["producer_slowest_outcome_s"] = round(max((t for t, _o, _s in trickle.outcomes), default=0.0), 1)
        during = [o for _t, o, s in trickle.outcomes if t_down <= s < t_up]
        after = [o for _t, o, s in trickle.outcomes if s >= t_up]
        res["producer_outage_sent"], res["producer_outage_ok"] = len(during), during.count("ok")
        res["producer_after_restart_sent"], res["producer_after_restart_ok"] = len(after), after.count("ok")
        res["producer_recreated"] = trickle.recreated
        note(f"producer: {res['producer_sent']} sends, {res['producer_ok']} acknowledged, "
             f"{res['producer_failed_loudly']} failed with an error "
             f"({dict((o, outcomes.count(o)) for o in set(outcomes) if o != 'ok')}), {trickle.pending} unresolved, "
             f"slowest outcome {res['producer_slowest_outcome_s']}s; of them sent during the outage "
             f"{len(during)} ({during.count('ok')} delivered after the restart), after the restart {len(after)} "
             f"({after.count('ok')} delivered); producer replaced {trickle.recreated}x; close took "
             f"{trickle.close_s if trickle.close_s is None else round(trickle.close_s, 1)}s")
        if trickle.is_alive() or trickle.pending:
            problems.append(f"producer hung: alive={trickle.is_alive()} pending={trickle.pending}")
        if after and not after.count("ok"):
            problems.append("the producer did not deliver anything after the broker restart")
        # what the running worker does now
        try:
            wait_until(lambda: w.metric("feedrank_broker_resets_total") > 0 or not w.alive, observe_s,
                       "the running worker to detect the broker reset")
            res["reset_detected_s"] = round(time.monotonic() - t_up, 1)
        except ChaosError:
            res["reset_detected_s"] = None
        res["worker_alive_after_restart"] = w.alive
        res["web_probes_ok"], res["web_probes"] = web_ok, web_ok + web_fail
        res["worker_alive_during"] = alive_during
        res["worker_exit_code"] = w.proc.returncode if w.proc else None
        log_text = w.log_tail(2_000_000)
        errors = [ln for ln in log_text.splitlines() if _is_error_line(ln)]
        res["worker_error_lines"] = len(errors)
        res["worker_reset_warnings"] = sum("BROKER RESET" in ln for ln in log_text.splitlines())
        before_valid = None
        if w.alive:
            try:
                res["broker_resets_metric"] = {
                    what: w.metric("feedrank_broker_resets_total", what=what) for what in ("changelog", "input")}
                before_valid = w.metric("feedrank_events_valid_total")
                try:
                    w.get("/ready")
                    res["ready_after_restart"] = 200
                except urllib.error.HTTPError as exc:
                    res["ready_after_restart"] = exc.code
                web = f"answers, /ready {res['ready_after_restart']}"
            except OSError:
                web = "does not answer"
            note(f"after the restart: worker running, web {web}; broker reset detected "
                 f"{res['reset_detected_s']}s after the restart (feedrank_broker_resets_total "
                 f"{res.get('broker_resets_metric')}), {res['worker_reset_warnings']} BROKER RESET warnings, "
                 f"{len(errors)} error lines logged" + (f"; last: {errors[-1][:200]}" if errors else ""))
        else:
            note(f"worker exited with code {w.proc.returncode if w.proc else None} after the restart, "
                 f"{len(errors)} error lines logged" + (f"; last: {errors[-1][:200]}" if errors else ""))
            problems.append(f"the running worker exited (code {w.proc.returncode if w.proc else None}) after the "
                            "broker restart")
        # new traffic after the restart
        post_ok, post_failed = send_counted(imps("post", events))
        res["post_sent"], res["post_ok"], res["post_failed"] = events, post_ok, post_failed
        want = events + post_ok  # impressions of the 40 users the tables must hold: before + delivered after
        res["impressions_expected"] = want
        note(f"produced {events} new events to the re-created topics: {post_ok} acknowledged, failed: {post_failed}"
             + (" (tansu: records a client produced while the topic did not exist yet become part of it when it is "
                "created, and as many produces after that collide with them and fail)" if post_failed else ""))
        res["running_worker_processed_new"] = False
        if w.alive and before_valid is not None:
            try:
                # by the tables, not the events count: a re-created input read from its start (a reset found
                # after ``before_valid`` was read) counts its records again without adding impressions twice
                took = wait_until(lambda: w.metric("feedrank_events_valid_total") >= before_valid + post_ok
                                  and impressions_in_state(w) >= want, new_wait_s,
                                  "the running worker to process the new events", interval_s=0.5)
                res["running_worker_processed_new"] = True
                res["running_worker_new_s"] = round(took, 1)
                time.sleep(1.0)  # anything counted twice shows by now
            except ChaosError:
                pass
            got = w.metric("feedrank_events_valid_total") - before_valid
            res["running_worker_new_processed"] = int(got)
            try:
                res["running_worker_impressions"] = impressions_in_state(w)
            except (OSError, KeyError, ValueError) as exc:
                res["running_worker_impressions"] = f"{type(exc).__name__}: {exc}"
            try:
                w.get("/ready")
                res["ready_after_new"] = 200
            except urllib.error.HTTPError as exc:
                res["ready_after_new"] = exc.code
            except OSError:
                res["ready_after_new"] = None
            note(f"the running worker processed {got:.0f} records in {res.get('running_worker_new_s', new_wait_s)} s; "
                 f"its tables hold {res['running_worker_impressions']} impressions of the {want} acknowledged "
                 f"before and after the outage; /ready {res['ready_after_new']}")
            if not res["running_worker_processed_new"] and w.proc is not None:
                frames = py_spy_dump(w.proc.pid, work / "log" / "outage-worker-stack.txt")
                if frames:
                    note("its stack (py-spy): " + " | ".join(frames[:6]))
        if not res["running_worker_processed_new"]:
            problems.append("the running worker did not process the events produced after the restart")
        elif res.get("running_worker_impressions") != want:
            problems.append(f"the running worker's tables hold {res.get('running_worker_impressions')} impressions, "
                            f"not {want}")
        if problems:
            note("the running worker's last warnings: " + " | ".join(_last_warnings(w.log_tail(2_000_000))))
        # stop it: must not hang
        res["stop_s"], res["stop_code"] = _timed_stop(w, stop_wait_s)
        note(f"SIGTERM: worker {'stopped' if res['stop_code'] != -9 else 'did NOT stop, SIGKILLed'} after "
             f"{res['stop_s']}s (exit code {res['stop_code']})")
        if res["stop_code"] != 0:
            problems.append(f"SIGTERM after the outage: exit code {res['stop_code']} after {res['stop_s']}s")
        # a worker restarted on the same local state, then one with no local state (changelog only)
        for key, state_dir in (("restarted", settings.data_dir), ("fresh", work / f"data-fresh-{settings.app_id}")):
            s2 = settings.model_copy(update={"data_dir": state_dir})
            wk = Worker(s2, work / "log" / f"{settings.app_id}-outage-{key}.log", f"worker-{key}")
            if key == "restarted":
                w2 = wk
            else:
                w3 = wk
            what = "on the same state" if key == "restarted" else "with no local state (restores the changelog)"
            try:
                wk.start()
                wait_until(lambda: len(wk.stats()["partitions"]) == settings.partitions or not wk.alive,
                           restart_wait_s, f"the {key} worker to own its partitions", detail=lambda: wk.log_tail(600))
                if not wk.alive:
                    raise ChaosError(f"exited with code {wk.proc.returncode if wk.proc else None}")
                st = wk.stats()
                res[f"{key}_partitions"] = st["partitions"]
                res[f"{key}_impressions"] = impressions_in_state(wk)
                res[f"{key}_resets"] = wk.metric("feedrank_broker_resets_total")
                note(f"{key} worker ({what}): owns {st['partitions']}, its tables hold {res[f'{key}_impressions']} "
                     f"impressions of the {want}; broker resets it detected: {res[f'{key}_resets']:.0f}")
                if res[f"{key}_impressions"] != want:
                    problems.append(f"{key} worker: {res[f'{key}_impressions']} impressions, not {want}")
            except (ChaosError, OSError, KeyError, ValueError) as exc:
                note(f"{key} worker ({what}) failed: {str(exc)[:300]}; exit code "
                     f"{wk.proc.poll() if wk.proc else None}; its last warnings: "
                     + " | ".join(_last_warnings(wk.log_tail(2_000_000))))
                res[f"{key}_partitions"] = None
                res[f"{key}_alive"] = wk.alive
                problems.append(f"{key} worker: {str(exc)[:200]}")
            finally:
                res[f"{key}_stop_s"], res[f"{key}_stop_code"] = _timed_stop(wk, stop_wait_s)
                note(f"{key} worker: SIGTERM -> {'stopped' if res[f'{key}_stop_code'] != -9 else 'did NOT stop, SIGKILLed'}"
                     f" after {res[f'{key}_stop_s']}s (exit code {res[f'{key}_stop_code']})")
    finally:
        if trickle is not None and trickle.is_alive():
            trickle.stop_flag.set()
        for wk in (w, w2, w3):
            if wk is not None:
                wk.kill()
        broker.stop()
    res["timeline"] = timeline
    res["problems"] = problems
    _verdict(out, "outage", problems)
    return res


# -- (e) sustained load ----------------------------------------------------------------

def _rss_mb(pid: int | None) -> float:
    """Resident set size of a process (MiB); 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return 0.0


def _stored_ends(stats: dict[str, Any], topics: Iterable[str]) -> dict[str, dict[int, int]]:
    """Records the worker's stored offsets cover, per topic and partition (offset + 1; none listed: 0)."""
    topics = set(topics)
    out: dict[str, dict[int, int]] = {}
    for p, per in stats["offsets"].items():
        for t, o in per.items():
            if t in topics and o >= 0:
                out.setdefault(t, {})[int(p)] = o + 1
    return out


def _lag(stats: dict[str, Any], acked: dict[str, dict[int, int]]) -> int:
    stored = _stored_ends(stats, acked)
    return sum(max(0, n - stored.get(t, {}).get(p, 0)) for t, per in acked.items() for p, n in per.items())


def _applied(stats: dict[str, Any], topics: Iterable[str]) -> int:
    """Event records the worker's stored offsets cover (offset + 1 per partition)."""
    return sum(sum(per.values()) for per in _stored_ends(stats, topics).values())


def _end_offsets(bootstrap: str, topics: Iterable[str], partitions: int) -> dict[str, dict[int, int]]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        ends = c.end_offsets([TopicPartition(t, p) for t in topics for p in range(partitions)])
    finally:
        c.close()
    out: dict[str, dict[int, int]] = {}
    for tp, n in ends.items():
        if n:
            out.setdefault(tp.topic, {})[tp.partition] = n
    return out


class _ScoreLoad(threading.Thread):
    """``/score`` requests (``n`` candidates, random user) at ``rps`` until stopped; client-side latencies."""

    def __init__(self, url: str, rps: float, users: int, seed: int, n: int = 50) -> None:
        super().__init__(daemon=True)
        self.url, self.rps, self.users, self.seed, self.n = url, rps, users, seed, n
        self.stop_flag = threading.Event()
        self.ok = 0
        self.failed = 0
        self.latency_ms: list[float] = []

    def run(self) -> None:
        from streams.serving.client import ScorerClient, ScorerError

        client = ScorerClient(self.url, timeout_s=10.0, retries=3, backoff_s=0.2)
        rng = random.Random(self.seed)
        t0 = time.monotonic()
        k = 0
        while not self.stop_flag.is_set():
            k += 1
            t = time.monotonic()
            try:
                client.score(score_body(f"u{rng.randrange(self.users)}", n=self.n))
                self.ok += 1
                self.latency_ms.append((time.monotonic() - t) * 1000)
            except (ScorerError, OSError):
                self.failed += 1
            delay = t0 + k / self.rps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        client.close()

    def percentiles(self) -> tuple[float | None, float | None]:
        lat = sorted(self.latency_ms)
        if not lat:
            return None, None
        return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]


#: one-record batches per partition above which the embedded broker's fetches collapse (memory storage
#: engine; measured on one partition, 240-byte records: 46k records/s read at 50k batches, 5k/s at 80k,
#: 0 at 110k; the same 160k batches over 8 partitions still read at 49k/s): long runs spread over partitions
EMBEDDED_PARTITION_BATCHES = 50_000
#: how far the load producer may run ahead of the worker's stored offsets while the maximum rate is
#: measured (``measure_max_rate``): ~2 to 3 s of traffic at the rates this box reaches
MAX_RATE_LAG_WINDOW = 40_000
#: how long the load scenario's producer lets a partition's batch fill: longer than ``LOAD_LINGER_MS`` (the
#: RPC bench, at 2,000 events/s) because the embedded broker lists every batch a partition holds on each
#: fetch. At 16,600 events/s over 2 x 16 partitions, 200 ms took the broker from 0.14 of a core at 2 minutes
#: to 0.45 at 10 and 0.5 to 0.78 from 35; 1 s (~500 records a batch) kept it at 0.07 at 5 minutes, 0.15 at
#: 12, 0.3 to 0.48 at 35 (docs/reliability.md). Records and bytes are the same; real Kafka indexes offsets
LOAD_SCENARIO_LINGER_MS = 1000
#: partitions of the load scenario: 10 minutes at ~1,000 events/s stay under half that per partition
LOAD_PARTITIONS = 16


def _load_settings(work: Path, bootstrap: str, model_dir: Path, calibrator_dir: Path,
                   partitions: int = LOAD_PARTITIONS) -> Settings:
    # caps reached early in the run, so that the RSS slope of its second half measures leaks, not state
    # still filling up to its bounds: windows short enough that pending impressions close after ~1 minute
    # (not the 11 minutes of the default 600 s + 60 s), and sequences of 64 actions (200 users at ~80
    # engagements/s fill 64 in under 3 minutes; the default 256 took the whole 10 minutes: measured with
    # tracemalloc, the retained growth of a run was sequences still filling and the trainer's id window)
    return make_settings(work, bootstrap, model_dir=Path(model_dir).resolve(),
                         calibrator_dir=Path(calibrator_dir).resolve(), partitions=partitions,
                         attribution_window_s=60.0, allowed_lateness_s=5.0, sequence_len=64)


def rocksdb_memory_mb(w: Worker) -> float | None:
    """RocksDB's native memory in the worker (memtables + table readers + block cache), from /metrics."""
    try:
        return w.metric("feedrank_rocksdb_memory_bytes") / (1 << 20)
    except (OSError, ValueError):
        return None


def measure_max_rate(bootstrap: str, work: Path, model_dir: Path, calibrator_dir: Path, *, seconds: float = 60.0,
                     warmup_s: float | None = None, score_rps: float = 10.0, users: int = 200, clients: int = 1,
                     partitions: int = LOAD_PARTITIONS, seed: int = 3, batches: bool = True,
                     linger_ms: int = LOAD_SCENARIO_LINGER_MS, lag_window: int = MAX_RATE_LAG_WINDOW,
                     echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The highest event rate this box sustains with producer, worker, broker and ``/score`` traffic together.

    A throwaway worker (own app, topics and state) with ``/score`` at ``score_rps``; the load producer
    sends as fast as it can for ``warmup_s`` + ``seconds``, but never more than ``lag_window`` records
    ahead of the worker's stored offsets; over the last ``seconds``: the rate the broker acknowledged
    and the rate the worker applied. The window keeps the measurement at a lag the load scenario
    passes with: with the load producer unbounded (librdkafka and a replayed pool send ~170,000
    records/s), the worker caught up on a backlog of 24 million records at 17,917/s, a rate its
    bigger fetches reach only when far behind. The maximum sustained rate is the smaller of
    the two (if the worker applies less than is delivered, lag grows without bound at that offered
    rate). ``warmup_s`` None: the attribution window + allowed lateness + 30 s, so the measured span
    has the join in its steady state (windows closing and labeled examples going out as fast as
    impressions come in). Measured with a 20 s warm-up, before any window had closed, the maximum
    was 13,281/s, and 80% of it (10,625/s) built a lag of 537k records in 10 minutes.
    """
    out = _Out(echo)
    settings = _load_settings(work, bootstrap, model_dir, calibrator_dir, partitions)
    if warmup_s is None:
        warmup_s = settings.attribution_window_s + settings.allowed_lateness_s + 30.0
    from streams.kafka.topics import ensure_topics, topic_specs

    ensure_topics(bootstrap, topic_specs(settings))
    events = (settings.topic_impressions, settings.topic_engagements)
    out(f"[load] measuring the maximum rate: producer ({clients} clients, unpaced, at most {lag_window:,} records "
        f"ahead of the worker) + worker + broker + /score "
        f"{score_rps:g}/s on this box for {warmup_s + seconds:g}s (the first {warmup_s:g}s, until the join's windows "
        f"close at the rate they open, not counted); load {machine_load()}")
    w = Worker(settings, work / "log" / f"{settings.app_id}-maxrate.log", "max-rate worker").start()
    producer = None
    scorer = _ScoreLoad(w.url, score_rps, users, seed)
    held = threading.Event()

    def hold_to_window() -> None:  # the producer's cap follows the worker's progress
        while not held.wait(0.2):
            try:
                producer.cap(_applied(w.stats(), events) + lag_window)  # type: ignore[union-attr]
            except (OSError, ValueError):
                pass

    try:
        wait_until(lambda: w.get("/ready", timeout=2) is not None, 120, "worker ready", detail=w.log_tail)
        producer = LoadProducer(bootstrap, settings, users=users, seed=seed + 100, world_rate=3000.0, rate=None,
                                clients=clients, batches=batches, linger_ms=linger_ms).start()
        producer.cap(lag_window)
        threading.Thread(target=hold_to_window, name="max-rate-window", daemon=True).start()
        scorer.start()
        producer.go()
        t0 = time.monotonic()
        time.sleep(warmup_s)
        wpid, ppid = w.proc.pid if w.proc else None, producer.proc.pid
        a0, p0, ta = producer.acked(), _applied(w.stats(), events), time.monotonic()
        cw0, cp0 = _cpu_s(wpid), _cpu_s(ppid)
        time.sleep(max(1.0, seconds))
        a1, p1, tb = producer.acked(), _applied(w.stats(), events), time.monotonic()
        cw, cp = (_cpu_s(wpid) - cw0) / (tb - ta), (_cpu_s(ppid) - cp0) / (tb - ta)
        lag = a1 - p1
        acked_rate, applied_rate = (a1 - a0) / (tb - ta), (p1 - p0) / (tb - ta)
        res = {"acked_rate": round(acked_rate), "applied_rate": round(applied_rate),
               "max_rate": round(min(acked_rate, applied_rate)), "lag_end": lag, "seconds": round(tb - t0),
               "rss_mb": round(w.rss_mb()), "load1": round(os.getloadavg()[0], 2), "score_ok": scorer.ok,
               "worker_cpu": round(cw, 2), "producer_cpu": round(cp, 2),
               # held at the window (lag near it) or falling behind: the worker sets the pace
               "bound_by": "worker" if applied_rate < 0.97 * acked_rate or lag >= lag_window // 2 else "producer/broker"}
        out(f"  delivered {acked_rate:,.0f}/s, applied by the worker {applied_rate:,.0f}/s (lag {lag:,} at the "
            f"end), /score {scorer.ok} ok; CPU: worker {cw:.2f} cores, producer {cp:.2f} cores (of "
            f"{os.cpu_count()}; the broker and anything else on the box take the rest); maximum sustained rate of "
            f"this setup = {res['max_rate']:,}/s, bound by the {res['bound_by']}; load {machine_load()}")
        return res
    finally:
        held.set()
        scorer.stop_flag.set()
        if producer is not None:
            producer.stop()
        w.kill()
        shutil.rmtree(settings.data_dir, ignore_errors=True)


def _imp_ahead_s(st: dict[str, Any]) -> float:
    """How far (event-time seconds) the impressions input of the most skewed partition is ahead of its engagements."""
    gaps = [(j.get("wm_impressions", 0) - j.get("wm_engagements", 0)) / 1000.0
            for j in (st.get("join") or {}).values() if j.get("wm_engagements")]
    return max(gaps, default=0.0)


def _slope_per_min(samples: list[dict[str, Any]], key: str) -> float:
    """Least-squares slope of ``key`` over ``t`` (per minute)."""
    xs = [s["t"] / 60.0 for s in samples]
    ys = [s[key] for s in samples]
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def run_load(bootstrap: str, work: Path, model_dir: Path, calibrator_dir: Path, *, minutes: float = 10.0,
             max_rate: float | None = None, load_factor: float = 0.8, calibrate_s: float = 60.0,
             score_rps: float = 10.0, users: int = 200, clients: int = 1, sample_s: float = 10.0,
             rss_slope_mb_per_min: float = 4.0, check_bounds: bool | None = None, min_rate_fraction: float = 0.9,
             partitions: int = LOAD_PARTITIONS, seed: int = 3, batches: bool = True,
             linger_ms: int = LOAD_SCENARIO_LINGER_MS, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Events at ``load_factor`` of the maximum rate plus ``/score`` traffic for ``minutes``.

    ``max_rate`` None: measure it first (``measure_max_rate``). Prints sent/acked events, lag, worker
    RSS, RocksDB memory and size every ``sample_s``. ``batches``: the producer batches records as feed
    servers do against real Kafka (else one record per batch on the embedded broker). Checks: nothing
    lost (per partition: acked records = the true end offset, i.e. the highest acknowledged offset + 1,
    and the broker's own end offset too when records travel one per batch = the worker's stored
    offsets; valid + dead-lettered = events + prediction logs), the lag drains and
    stays below 30 s of traffic, the delivered rate reaches ``min_rate_fraction`` of the target, and
    (runs of 3 minutes or more, or ``check_bounds``) RSS and RocksDB are bounded: the RSS slope over
    the second half of the run is below ``rss_slope_mb_per_min`` and neither the RSS nor the RocksDB
    peak of the last third exceeds the middle third's by more than 10% + 32 MiB (RSS) or 50% + 32 MiB
    (RocksDB on disk, which saws with compactions).
    """
    from streams.kafka.topics import ensure_topics, topic_specs

    out = _Out(echo)
    measured: dict[str, Any] | None = None
    if max_rate is None:
        measured = measure_max_rate(bootstrap, work, model_dir, calibrator_dir, seconds=calibrate_s,
                                    score_rps=score_rps, users=users, clients=clients, partitions=partitions,
                                    seed=seed, batches=batches, linger_ms=linger_ms, echo=echo)
        max_rate = float(measured["max_rate"])
        basis = "measured just now on this box with producer + worker + broker + /score together"
    else:
        basis = "given (--max-rate)"
    rate = load_factor * max_rate
    settings = _load_settings(work, bootstrap, model_dir, calibrator_dir, partitions)
    ensure_topics(bootstrap, topic_specs(settings))
    events = (settings.topic_impressions, settings.topic_engagements)
    out(f"[load] {minutes:g} min: events at {rate:,.0f}/s ({load_factor:.0%} of the maximum {max_rate:,.0f}/s, "
        f"{basis}), /score (50 candidates) at {score_rps:g}/s, {users} users, {partitions} partitions, attribution "
        f"window 60 s; load {machine_load()}; app {settings.app_id}")
    per_partition = rate * minutes * 60 / partitions
    if per_partition > EMBEDDED_PARTITION_BATCHES and not batches:
        out(f"  note: ~{per_partition:,.0f} records per partition by the end; the embedded broker's fetches collapse "
            f"beyond ~{EMBEDDED_PARTITION_BATCHES:,} one-record batches in a partition (docs/reliability.md): on it, "
            f"give more --load-partitions")
    w = Worker(settings, work / "log" / f"{settings.app_id}-load.log", "worker").start()
    problems: list[str] = []
    samples: list[dict[str, Any]] = []
    producer: LoadProducer | None = None
    scorer = _ScoreLoad(w.url, score_rps, users, seed)
    n_acked = accounted = preds = valid = dead = 0
    p50 = p99 = None
    figures: dict[str, Any] = {}
    try:
        wait_until(lambda: w.get("/ready", timeout=2) is not None, 120, "worker ready", detail=w.log_tail)
        producer = LoadProducer(bootstrap, settings, users=users, seed=seed, world_rate=rate, rate=rate,
                                clients=clients, batches=batches, linger_ms=linger_ms).start()
        out(f"  producer: {'one record per batch' if producer.single else f'batches (linger {linger_ms} ms)'}")
        data_dir = Path(settings.data_dir) / "tables"
        rss0 = w.rss_mb()
        out(f"  worker RSS before traffic {rss0:.0f} MiB")
        from streams.kafka.broker import embedded_broker_pid

        bpid = embedded_broker_pid(bootstrap)
        out(f"  {'t':>6} {'sent':>10} {'acked':>10} {'rate/s':>7} {'lag':>7} {'RSS MiB':>8} {'score':>6} {'RDB mem':>8} "
            f"{'RDB disk':>8} {'score ok':>8} {'cpu w/p/b':>14} {'broker MiB':>10} {'load':>5} {'held':>7} "
            f"{'deadlines':>9} {'imp-eng s':>9}")
        scorer.start()
        producer.go()
        t_start = time.monotonic()
        prev_acked, prev_t = 0, t_start
        wpid, ppid = w.proc.pid if w.proc else None, producer.proc.pid
        cpu_start = prev_cpu = (_cpu_s(wpid), _cpu_s(ppid), _cpu_s(bpid))
        while time.monotonic() - t_start < minutes * 60:
            time.sleep(sample_s)
            try:
                st = w.stats()
            except OSError as exc:
                problems.append(f"worker web failed at {time.monotonic() - t_start:.0f}s: {exc}")
                continue
            acked = producer.snapshot()
            now = time.monotonic()
            n = sum(sum(v.values()) for v in acked.values())
            mem = rocksdb_memory_mb(w)
            cpu = (_cpu_s(wpid), _cpu_s(ppid), _cpu_s(bpid))
            smp = {"t": round(now - t_start), "sent": producer.sent, "acked": n,
                   "rate": round((n - prev_acked) / (now - prev_t)), "lag": _lag(st, acked),
                   "rss_mb": round(w.rss_mb(), 1), "score_rss_mb": round(w.child_rss_mb(), 1),
                   "rocksdb_mem_mb": None if mem is None else round(mem, 1),
                   "rocksdb_mb": round(_dir_mb(data_dir), 1), "score_ok": scorer.ok,
                   "worker_cpu": round((cpu[0] - prev_cpu[0]) / (now - prev_t), 2),
                   "producer_cpu": round((cpu[1] - prev_cpu[1]) / (now - prev_t), 2),
                   "broker_cpu": round((cpu[2] - prev_cpu[2]) / (now - prev_t), 2) if bpid else None,
                   "broker_rss_mb": round(_rss_mb(bpid)) if bpid else None,
                   "load1": round(os.getloadavg()[0], 2), "held": int(st.get("held_engagements", 0)),
                   "deadlines": int(st.get("open_deadlines", 0)), "imp_ahead_s": _imp_ahead_s(st)}
            prev_acked, prev_t, prev_cpu = n, now, cpu
            samples.append(smp)
            out(f"  {smp['t']:>5}s {smp['sent']:>10,} {smp['acked']:>10,} {smp['rate']:>7,} {smp['lag']:>7,} "
                f"{smp['rss_mb']:>8.1f} {smp['score_rss_mb']:>6.0f} {(mem or 0):>8.1f} {smp['rocksdb_mb']:>8.1f} {smp['score_ok']:>8,} "
                f"{smp['worker_cpu']:>4.2f}/{smp['producer_cpu']:.2f}/{smp['broker_cpu'] or 0:<4.2f} "
                f"{smp['broker_rss_mb'] or 0:>10,} {smp['load1']:>5.2f} {smp['held']:>7,} {smp['deadlines']:>9,} {smp['imp_ahead_s']:>9.1f}")
            if not w.alive:
                problems.append(f"worker died: {w.log_tail()}")
                break
        elapsed = time.monotonic() - t_start
        cpu_w, cpu_p = ((_cpu_s(wpid) - cpu_start[0]) / elapsed, (_cpu_s(ppid) - cpu_start[1]) / elapsed)
        cpu_b = (_cpu_s(bpid) - cpu_start[2]) / elapsed if bpid else None
        producer.stop()
        scorer.stop_flag.set()
        scorer.join(timeout=60)
        if producer.errors:
            problems.append(f"producer: {'; '.join(producer.errors[:3])}")
        acked = producer.snapshot()
        n_acked = sum(sum(v.values()) for v in acked.values())
        drained: float | None
        try:
            drained = wait_until(lambda: _lag(w.stats(), acked) == 0, 300, "the worker to drain its lag",
                                 detail=lambda: _lag(w.stats(), acked))
        except ChaosError as exc:  # reported; the figures below still come out
            drained = None
            problems.append(f"lag did not drain: {exc}")
        counts: dict[str, int] = {}

        def settled() -> bool:
            # the valid counter is bumped a moment after the offsets move (the engine awaits its sends in
            # between), and the last prediction logs of /score may still be on their way: read until both agree
            st = w.stats()
            counts.update(accounted=_applied(st, events), preds=_applied(st, (settings.topic_predictions,)),
                          valid=int(w.metric("feedrank_events_valid_total")),
                          dead=int(w.metric("feedrank_events_dead_lettered_total")))
            return counts["valid"] + counts["dead"] == counts["accounted"] + counts["preds"]

        try:
            wait_until(settled, 30, "the worker's counters to settle", detail=lambda: counts)
        except ChaosError:
            pass  # reported as a mismatch below
        accounted, preds, valid, dead = counts["accounted"], counts["preds"], counts["valid"], counts["dead"]
        ends = _end_offsets(bootstrap, events, settings.partitions)
        true_ends = producer.ends()
        stored = _stored_ends(w.stats(), events)
        achieved = n_acked / elapsed
        figures.update(achieved_rate=round(achieved), worker_cpu=round(cpu_w, 2), producer_cpu=round(cpu_p, 2),
                       broker_cpu=None if cpu_b is None else round(cpu_b, 2),
                       lag_drained_s=None if drained is None else round(drained, 1),
                       end_offsets=sum(sum(v.values()) for v in ends.values()),
                       true_end_offsets=sum(sum(v.values()) for v in true_ends.values()),
                       producer_batches=not producer.single)
        if achieved < min_rate_fraction * rate:
            problems.append(f"offered rate not reached: {achieved:,.0f}/s delivered, target {rate:,.0f}/s "
                            f"(the producer or this box could not keep up)")
        drain = "not drained" if drained is None else f"drained {drained:.1f}s after the producer stopped"
        out(f"  done: {producer.sent:,} events sent, {n_acked:,} acked ({achieved:,.0f}/s delivered over "
            f"{elapsed:.0f}s = {achieved / max_rate:.0%} of the maximum; CPU worker {cpu_w:.2f}, producer "
            f"{cpu_p:.2f}{'' if cpu_b is None else f', embedded broker {cpu_b:.2f}'} cores), {producer.failed} failed; true end "
            f"offsets (highest acked + 1) sum to {figures['true_end_offsets']:,}, the broker's to {figures['end_offsets']:,}"
            f"{'' if producer.single else ' (batched records: not exact on the embedded broker)'}; "
            f"lag {drain}; the worker's stored offsets account for {accounted:,} events and {preds:,} prediction "
            f"logs (from /score); it counted {valid:,} valid records (events + logs) and {dead} dead-lettered")
        if accounted != n_acked or valid + dead != n_acked + preds or producer.failed or producer.sent != n_acked:
            st = w.stats()
            by_kind = {k: int(w.metric("feedrank_events_valid_total", kind=k))
                       for k in ("impression", "engagement", "prediction")}
            by_topic = {t: _applied(st, (t,)) for t in (*events, settings.topic_predictions)}
            problems.append(f"events lost or double-counted: sent {producer.sent}, acked {n_acked}, offsets "
                            f"{accounted} + {preds} logs, valid {valid}, dead {dead}, producer failures "
                            f"{producer.failed}; valid by kind {by_kind}, stored offsets by topic {by_topic}, "
                            f"join stats {st.get('join')}")
        if true_ends != acked:
            problems.append(f"acknowledged offsets have gaps or repeats: true ends {true_ends}, records acked {acked}")
        if stored != true_ends:
            problems.append(f"the worker's stored offsets {stored} differ from the topics' true ends {true_ends}")
        if producer.single and ends != acked:
            problems.append(f"topic end offsets {ends} differ from the acknowledged records {acked} "
                            "(multi-record batches on the embedded broker?)")
        p50, p99 = scorer.percentiles()
        out(f"  /score during load: {scorer.ok:,} ok, {scorer.failed} failed; latency p50 {p50 or 0:.0f} ms, "
            f"p99 {p99 or 0:.0f} ms (client side, retries included)")
        if scorer.failed:
            problems.append(f"{scorer.failed} /score requests failed")
        if len(samples) >= 2:
            lag_bound = rate * 30  # 30 s of traffic
            lag_max = max(s["lag"] for s in samples)
            broker_peak = max((s["broker_cpu"] or 0.0) for s in samples)
            if lag_max > lag_bound:
                why = ""
                if broker_peak >= 0.9:  # tansu's storage work runs on about one core
                    why = (f" (the embedded broker peaked at {broker_peak:.2f} cores: it saturates as it holds more "
                           f"records; the worker used {max(s['worker_cpu'] for s in samples):.2f})")
                problems.append(f"lag exceeded 30 s of traffic: {lag_max:,} > {lag_bound:,.0f}{why}")
            out(f"  max lag {lag_max:,} records ({lag_max / rate:.1f} s of traffic; bound 30 s); embedded broker CPU "
                f"peak {broker_peak:.2f} cores")
            figures["lag_max"] = lag_max
            figures["broker_cpu_peak"] = broker_peak
        if check_bounds is None:
            check_bounds = minutes >= 3
        if len(samples) >= 6:
            third, half = len(samples) // 3, len(samples) // 2
            mid, last = samples[third:2 * third], samples[2 * third:]
            rss_mid, rss_last = max(s["rss_mb"] for s in mid), max(s["rss_mb"] for s in last)
            db_mid, db_last = max(s["rocksdb_mb"] for s in mid), max(s["rocksdb_mb"] for s in last)
            slope = _slope_per_min(samples[half:], "rss_mb")
            db_slope = _slope_per_min(samples[half:], "rocksdb_mb")
            figures.update(rss_slope_mb_per_min=round(slope, 1), rss_peak_mid_mb=rss_mid, rss_peak_last_mb=rss_last,
                           rocksdb_peak_mid_mb=db_mid, rocksdb_peak_last_mb=db_last,
                           rocksdb_peak_mb=max(s["rocksdb_mb"] for s in samples))
            out(f"  bounded? RSS slope over the second half {slope:+.1f} MiB/min (limit {rss_slope_mb_per_min:g}); "
                f"RSS peak middle third {rss_mid:.0f} MiB, last third {rss_last:.0f} MiB; RocksDB on disk peak "
                f"{db_mid:.1f} -> {db_last:.1f} MiB (slope {db_slope:+.1f} MiB/min)"
                + ("" if check_bounds else " [not checked: run too short]"))
            if check_bounds:
                if slope > rss_slope_mb_per_min:
                    problems.append(f"RSS keeps growing: {slope:+.1f} MiB/min over the second half "
                                    f"(limit {rss_slope_mb_per_min:g})")
                if rss_last > rss_mid * 1.1 + 32:
                    problems.append(f"RSS peak of the last third {rss_last:.0f} MiB > middle third {rss_mid:.0f} "
                                    f"MiB + 10% + 32 MiB")
                if db_last > db_mid * 1.5 + 32:
                    problems.append(f"RocksDB keeps growing: peak {db_mid:.1f} -> {db_last:.1f} MiB")
    finally:
        scorer.stop_flag.set()
        if producer is not None and producer.proc.is_alive():
            producer.stop()
        w.stop()
    peak = max((s["rss_mb"] for s in samples), default=0.0)
    _verdict(out, "load", problems)
    return {"scenario": "load", "minutes": minutes, "rate": rate, "max_rate": max_rate, "max_rate_basis": basis,
            "max_rate_measurement": measured, "events_sent": producer.sent if producer else 0,
            "prediction_logs": preds, "events_acked": n_acked, "valid": valid, "dead_lettered": dead,
            "accounted": accounted, "score_ok": scorer.ok, "score_failed": scorer.failed, "score_p50_ms": p50,
            "score_p99_ms": p99, "peak_rss_mb": peak, **figures, "samples": samples, "problems": problems}


# -- the command -----------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    """Run the chosen scenarios and print a summary; exit status 1 when any property failed."""
    from streams.kafka.broker import resolve_broker

    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        print(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    work = Path(args.work_dir or (Path("var/chaos") / time.strftime("%Y%m%dT%H%M%S"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model_dir, cal_dir = Path(args.model_dir).resolve(), Path(args.calibrator_dir).resolve()
    serving = sorted(set(names) & {"rebalance", "fuzz", "load"})
    if serving and not (model_dir / "latest").exists():
        print(f"scenarios {', '.join(serving)} serve /score and need a model: none under {model_dir}. Run "
              f"`make demo` once (it trains and caches one there), or `feedrank train --out {model_dir}`, or pass "
              f"--model-dir", file=sys.stderr)
        return 2
    print(f"feedrank chaos: {', '.join(names)}; work dir {work}; uptime load {machine_load()}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    broker = None
    t0 = time.monotonic()
    try:
        if set(names) - {"outage"}:
            broker = resolve_broker(log_dir=work / "log")
            print(f"broker: {broker.bootstrap} ({broker.kind})", flush=True)
        for name in names:
            t = time.monotonic()
            try:
                if name == "crash":
                    results[name] = run_crash(broker.bootstrap, work, kills=args.kills, seed=args.seed)
                elif name == "rebalance":
                    results[name] = run_rebalance(broker.bootstrap, work, model_dir, cal_dir, seed=args.seed + 1)
                elif name == "fuzz":
                    results[name] = run_fuzz(broker.bootstrap, work, model_dir, cal_dir, seed=args.seed + 2)
                elif name == "outage":
                    results[name] = run_outage(work, outage_s=args.outage_s)
                elif name == "load":
                    results[name] = run_load(broker.bootstrap, work, model_dir, cal_dir, minutes=args.minutes,
                                             max_rate=args.max_rate, calibrate_s=args.calibrate_s,
                                             clients=args.load_clients, partitions=args.load_partitions,
                                             seed=args.seed + 3, batches=args.load_batches == "on",
                                             linger_ms=args.load_linger_ms)
            except Exception as exc:  # one scenario failing must not stop the others
                results[name] = {"scenario": name, "problems": [f"aborted: {type(exc).__name__}: {exc}"]}
                print(f"  [{name}] ABORTED: {str(exc)[:2000]}", flush=True)
            results[name]["seconds"] = round(time.monotonic() - t, 1)
    finally:
        if broker is not None:
            broker.stop()
    print(f"\nsummary ({time.monotonic() - t0:.0f}s; load {machine_load()}):")
    r = results
    if "crash" in r and "kills_survived" in r["crash"]:
        c = r["crash"]
        print(f"  kills survived {c['kills_survived']}; records in {c['records_in']:,}, accounted for "
              f"{c['records_accounted']:,}; labeled duplicates after dedup {c['labeled_duplicates_after_dedup']} "
              f"(raw re-emits {c['labeled_raw_re_emits']}), missing {c['labeled_missing']}")
    if "rebalance" in r and "users" in r["rebalance"]:
        b = r["rebalance"]
        print(f"  rebalance: takeover {b['takeover_s']}s, {b['served_after_takeover']}/{b['users']} users served by "
              f"the survivor, {b['served_after_return']}/{b['users']} after the return; labeled duplicates "
              f"{b['labeled_duplicates_after_dedup']}, missing {b['labeled_missing']}")
    if "fuzz" in r and "bad_events" in r["fuzz"]:
        f = r["fuzz"]
        print(f"  bad events {f['bad_events']}, dead-lettered {f['dead_lettered']}; good {f['good_events']}, processed "
              f"{f['valid_counted']}; bad requests {f['bad_requests']}, answered 4xx {f['bad_requests_4xx']}; good "
              f"requests {f['good_requests_200']}/{f['good_requests']} answered 200")
    if "outage" in r and "producer_sent" in r["outage"]:
        o = r["outage"]
        print(f"  outage {o['outage_s']:.0f}s: producer {o['producer_ok']} acked / {o['producer_failed_loudly']} failed "
              f"loudly / {o['producer_unresolved']} unresolved ({o.get('producer_after_restart_ok')}/"
              f"{o.get('producer_after_restart_sent')} sent after the restart delivered); broker reset detected "
              f"{o.get('reset_detected_s')}s after the restart; running worker processed the new events: "
              f"{o.get('running_worker_processed_new')} ({o.get('running_worker_impressions')} of "
              f"{o.get('impressions_expected')} impressions in its tables); SIGTERM -> exit {o.get('stop_code')} after "
              f"{o.get('stop_s')}s; restarted worker: {o.get('restarted_impressions')}, fresh worker from the "
              f"changelog: {o.get('fresh_impressions')} impressions")
    if "load" in r and "events_acked" in r["load"]:
        ld = r["load"]
        print(f"  load {ld['minutes']:g} min at {ld['rate']:,.0f}/s (80% of {ld['max_rate']:,.0f}/s, "
              f"{ld['max_rate_basis']}): {ld['events_acked']:,} events in, {ld['accounted']:,} accounted; "
              f"/score {ld['score_ok']:,} ok / {ld['score_failed']} failed; peak RSS {ld['peak_rss_mb']:.0f} MiB")
    failed = {n: x["problems"] for n, x in results.items() if x.get("problems")}
    for n, probs in failed.items():
        print(f"  {n}: {len(probs)} problem(s): " + "; ".join(p[:300] for p in probs[:5]))
    (work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"  results: {work / 'results.json'}")
    return 1 if failed else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated subset of {', '.join(SCENARIOS)} (default: all)")
    p.add_argument("--kills", type=int, default=3, help="SIGKILLs in the crash scenario")
    p.add_argument("--outage-s", type=float, default=30.0, help="seconds the broker stays down")
    p.add_argument("--minutes", type=float, default=10.0, help="duration of the sustained-load scenario")
    p.add_argument("--max-rate", type=float, default=None,
                   help="maximum sustained event rate (events/s); load runs at 80%% of it. Default: measure it "
                        "first on this box (producer + worker + broker + /score together, --calibrate-s)")
    p.add_argument("--calibrate-s", type=float, default=60.0,
                   help="seconds of unpaced production that measure the maximum rate (when --max-rate is unset), "
                        "after a warm-up of the attribution window + lateness + 30 s")
    p.add_argument("--load-partitions", type=int, default=LOAD_PARTITIONS,
                   help="partitions of the load scenario's topics (the embedded broker's fetches collapse beyond "
                        f"~{EMBEDDED_PARTITION_BATCHES:,} one-record batches in a partition)")
    p.add_argument("--load-batches", choices=("on", "off"), default="on",
                   help=f"on: the load producer batches records (linger {LOAD_SCENARIO_LINGER_MS} ms) as feed "
                        "servers do "
                        "against real Kafka; the checks use each partition's highest acknowledged offset, not the "
                        "embedded broker's end offsets (wrong for multi-record batches). off: one record per "
                        "batch, which costs the embedded broker ~150 us of CPU per event")
    p.add_argument("--load-linger-ms", type=int, default=LOAD_SCENARIO_LINGER_MS,
                   help="how long the load producer lets a partition's batch fill (with --load-batches on). The "
                        "embedded broker lists every batch a partition holds on each fetch of it, so its CPU grows "
                        "with the number of batches stored, not the records")
    p.add_argument("--load-clients", type=int, default=1,
                   help="aiokafka producers in the load producer process (each "
                        "topic-partition written by one of them)")
    p.add_argument("--seed", type=int, default=0, help="seed of streams, kill points and fuzz inputs")
    p.add_argument("--model-dir", default=os.environ.get("FEEDRANK_MODEL_DIR", "var/models"),
                   help="model artifacts root for the workers that serve /score")
    p.add_argument("--calibrator-dir", default=os.environ.get("FEEDRANK_CALIBRATOR_DIR", "var/calibrators"),
                   help="calibrator store for those workers")
    p.add_argument("--work-dir", default=None, help="state, logs and results.json (default var/chaos/<time>)")
    p.set_defaults(func=run)


def register(subparsers: Any) -> None:
    """Add ``feedrank chaos`` (called by ``streams.cli``)."""
    p = subparsers.add_parser("chaos", help="crash, rebalance, broker-outage, fuzz and sustained-load scenarios")
    add_arguments(p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="feedrank chaos", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
