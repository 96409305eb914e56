"""``feedrank chaos --scenarios rebalance``: when one of two workers dies the survivor takes its partitions,
restores their state and serves every user; when it returns, partitions move back without loss.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from streams.tools.chaos.common import (_input_ends, _read_all_inputs, ChaosError, PacedProducer, Worker, _caught_up, _check_labeled,
                                        _compare_partition, _dump_partition, _Out, _verdict, make_settings,
                                        score_body, wait_until)


def _get_retry(w: Worker, path: str, timeout_s: float = 60.0) -> Any:
    """GET a JSON path, retrying 503s (no ready owner yet: the directory learns owners within seconds)."""
    box: list[Any] = []
    wait_until(lambda: box.append(w.get_json(path)) is None, timeout_s, f"GET {path} on {w.name}")
    return box[-1]


def _owned(w: Worker) -> set[int]:
    return set(w.stats()["partitions"])


def run_rebalance(bootstrap: str, work: Path, model_dir: Path, calibrator_dir: Path, *, users: int = 60,
                  requests: int = 600, partitions: int = 4, seed: int = 1,
                  echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Two workers; SIGKILL one; the survivor takes over and serves every user; the other returns."""
    from streams.kafka.procutil import free_port
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
