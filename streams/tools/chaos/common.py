"""What several ``feedrank chaos`` scenarios share: workers as subprocesses, waits, paced producing,
the recomputation checks of the crash and rebalance scenarios, and the report helpers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from streams.kafka.procutil import pdeathsig
from streams.settings import Settings
from streams.tools.loadgen import child_pids

if TYPE_CHECKING:
    from streams.metrics import Scrape

#: the repository root: the working directory of the ``python -m streams.cli worker`` subprocesses
ROOT = Path(__file__).resolve().parents[3]


class ChaosError(AssertionError):
    """A wait ran out or a property the scenario relies on did not hold."""


# -- workers as processes ----------------------------------------------------------

def make_settings(work: Path, bootstrap: str, **overrides: Any) -> Settings:
    """Settings with a unique app id, topic names and state dir under ``work``."""
    from streams.kafka.procutil import free_port

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
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
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
                                     start_new_session=True, preexec_fn=pdeathsig)  # (gone with the harness)
        logf.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ChaosError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/metrics", timeout=1.0)
                return self
            except urllib.error.HTTPError:
                return self  # it answers (401 when the API wants a token)
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

    def scrape(self) -> Scrape:
        """The worker's ``/metrics`` (``streams.metrics.parse_text``)."""
        from streams.metrics import parse_text

        return parse_text(self.get("/metrics").decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` carrying ``labels`` (0 when none)."""
        return self.scrape().value(name, **labels)

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


def _rss_mb(pid: int | None) -> float:
    """Resident set size of a process (MiB); 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return 0.0


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
        where = Path(settings.data_dir).parent / "labeled-differences.jsonl"
        with open(where, "wb") as f:
            for k in sorted(differ):
                f.write(json.dumps({"example_id": k, "worker": got[k], "recomputation": want["examples"][k]},
                                   default=str).encode() + b"\n")
        fields = sorted({f for k in differ for f in set(got[k]) | set(want["examples"][k])
                         if got[k].get(f) != want["examples"][k].get(f)})
        problems.append(f"{len(differ)} labeled examples differ from the recomputation (in {', '.join(fields)}; "
                        f"both versions of each in {where})")
    figures = {"labeled_expected": len(want["examples"]), "labeled_distinct": len(got),
               "labeled_raw_records": lab["raw"], "labeled_raw_re_emits": lab["re_emits"],
               "labeled_duplicates_after_dedup": len(lab["conflicts"]) + len(extra),
               "labeled_missing": len(missing)}
    out(f"  labeled-impressions: {lab['raw']} records, {len(got)} distinct example ids "
        f"(expected {len(want['examples'])}), raw re-emits {lab['re_emits']} (at-least-once replay), "
        f"duplicates after dedup {figures['labeled_duplicates_after_dedup']}, missing {len(missing)}")
    return figures, problems


# -- reporting and requests ------------------------------------------------------

def _verdict(out: _Out, name: str, problems: list[str]) -> None:
    if problems:
        out(f"  [{name}] FAILED:")
        for p in problems:
            out(f"    - {p}")
    else:
        out(f"  [{name}] ok")


def score_body(user_id: str, n: int = 10, ts: int | None = None) -> dict[str, Any]:
    """A valid ``/score`` request for ``user_id`` (items need not be known to the model)."""
    ctx: dict[str, Any] = {"surface": "home", "country": "US", "gender": "f", "app_type": "ios",
                           "device_type": "phone"}
    if ts is not None:
        ctx["ts"] = ts
    return {"user_id": user_id, "context": ctx,
            "candidates": [{"item_id": f"i{k}", "item_type": "video" if k % 3 else "organic"} for k in range(n)]}


def _read_all_inputs(bootstrap: str, settings: Settings, counts: dict[str, dict[int, int]]) -> dict[str, list[Any]]:
    """Every record of the inputs (the producer's, the prediction logs ``/score`` wrote, the forwards)."""
    from streams.tools.recompute import input_kinds, read_topic

    out = {}
    for topic in input_kinds(settings):
        total = sum(counts.get(topic, {}).values())
        out[topic] = read_topic(bootstrap, topic, settings.partitions, total, drain=True)
    return out


def _input_ends(inputs: dict[str, list[Any]]) -> dict[str, dict[int, int]]:
    ends: dict[str, dict[int, int]] = {}
    for topic, recs in inputs.items():
        for r in recs:
            ends.setdefault(topic, {})[r.partition] = max(ends.get(topic, {}).get(r.partition, 0), r.offset + 1)
    return ends


def check_against_recomputation(bootstrap: str, settings: Settings, inputs: dict[str, list[Any]], total: int,
                                out: _Out) -> tuple[dict[str, Any], list[str]]:
    """Every partition's stored state against the from-scratch recomputation of ``inputs``, the stored
    offsets against the ``total`` input records, and the labeled examples exactly once: figures, problems."""
    from streams.tools.recompute import recompute

    want = recompute(settings, inputs)
    problems: list[str] = [f"{len(want['unforwarded'])} records of another partition's users were not forwarded "
                           f"(lost), e.g. {want['unforwarded'][:3]}"] if want["unforwarded"] else []
    accounted = 0
    sources = {settings.topic_predictions, settings.topic_impressions, settings.topic_engagements}
    for p in range(settings.partitions):
        got = _dump_partition(settings.data_dir, settings.app_id, p)
        problems += _compare_partition(p, got, want["dumps"][p])
        accounted += sum(o + 1 for t, o in got["meta"]["offsets"].items() if t in sources)
    figures, lab_problems = _check_labeled(bootstrap, settings, want, out)
    problems += lab_problems
    equal = not any("store" in p or "offsets" in p for p in problems)
    if accounted != total:
        problems.append(f"stored offsets account for {accounted} of {total} input records")
    return {"records_accounted": accounted, "tables_equal_recomputation": equal, **figures}, problems
