"""``feedrank chaos --scenarios outage``: a broker that goes away and comes back empty: producers recover,
the worker detects the reset, keeps and re-seeds its state, stops in time, and a fresh worker restores it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any, Callable

from streams.settings import Settings
from streams.tools.chaos.common import ChaosError, Worker, _Out, _verdict, make_settings, wait_until
from streams.kafka.security import kafka_options


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

    c = KafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=10_000, **kafka_options("kafka-python"))
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

    from streams.kafka.embedded import EmbeddedBroker
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
